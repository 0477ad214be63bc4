//! Replicas: started on their disk, crashed (process killed, or power cut), restarted.

use std::collections::BTreeMap;
use std::sync::Arc;

use openraft::ServerState;
use openraft_rt::WatchReceiver;

use crate::Bug;
use crate::disk::Disk;
use crate::log_store::LogStore;
use crate::net::Factory;
use crate::rt::{Raft, spawn};
use crate::state_machine::Sm;
use crate::world::{Replica, World};

/// How a replica stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Killed: the page cache survives.
    Kill,
    /// Power cut: only synced writes (and a random prefix of the rest) survive.
    PowerCut,
}

pub fn raft_config(leader_restore: bool) -> Arc<openraft::Config> {
    let c = openraft::Config {
        cluster_name: "sim".into(),
        heartbeat_interval: 100,
        election_timeout_min: 300,
        election_timeout_max: 600,
        enable_pre_vote: Some(true),
        broadcast_submitted_on_append: Some(true),
        // As capstan's replicas (raft/DESIGN.md, "No leader restore").
        enable_leader_restore: Some(leader_restore),
        // Snapshots and purges happen within a run, so lagging replicas get snapshots.
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(150),
        max_in_snapshot_log_to_keep: 30,
        purge_batch_size: 1,
        max_payload_entries: 32,
        ..Default::default()
    };
    Arc::new(c.validate().expect("the simulation's raft configuration is valid"))
}

/// Adds replicas `1..=n` with empty disks (none started).
pub fn create(world: &World, n: u64) {
    let mut r = world.replicas.lock().unwrap();
    for id in 1..=n {
        r.insert(id, Replica { disk: Arc::new(Disk::default()), up: None, incarnation: 0, starting: false });
    }
}

/// Starts replica `id`'s process on what its disk holds.
pub async fn start(world: &Arc<World>, id: u64) {
    let disk = {
        let mut r = world.replicas.lock().unwrap();
        let rep = r.get_mut(&id).unwrap();
        if rep.up.is_some() || rep.starting {
            return;
        }
        rep.starting = true;
        rep.disk.clone()
    };
    let (generation, image) = disk.open();
    let log = LogStore::open(id, generation, disk.clone(), world.clone());
    let sm = Sm::open(id, generation, disk, world.clone(), image.snapshot.as_ref());
    // openraft's tasks, spawned here, run on the replica's own clock.
    let raft = crate::rt::in_process(world, id, Raft::new(id, raft_config(world.bug(Bug::LeaderRestore)), Factory { me: id, world: world.clone() }, log, sm.clone()))
        .await
        .expect("a replica starts on any disk image");
    let incarnation = {
        let mut r = world.replicas.lock().unwrap();
        let rep = r.get_mut(&id).unwrap();
        rep.incarnation += 1;
        rep.starting = false;
        rep.up = Some((raft.clone(), sm));
        rep.incarnation
    };
    world.log("cluster", format!("n{id} started (incarnation {incarnation}, log {}..={:?}, committed {:?}, snapshot {:?})",
        image.entries.keys().next().copied().unwrap_or(0),
        image.entries.keys().next_back(),
        image.committed.map(|c| c.index),
        image.snapshot.as_ref().and_then(|(m, _)| m.last_log_id.map(|l| l.index))));
    // Who leads which term, as each replica reports it.
    let w = world.clone();
    let mut rx = raft.metrics();
    spawn(async move {
        loop {
            let (term, state, stopped) = {
                let m = rx.borrow_and_update();
                (m.current_term, m.state, m.running_state.as_ref().err().map(|e| e.to_string()))
            };
            if state == ServerState::Leader {
                w.checks.leader(&w, term, id, incarnation);
            }
            if let Some(why) = stopped {
                w.log("cluster", format!("n{id} stopped: {why}"));
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
}

/// Initializes the cluster on replica 1 (all replicas voters).
pub async fn initialize(world: &Arc<World>) {
    let (raft, _) = world.handle(1).expect("replica 1 is up");
    let members: BTreeMap<u64, ()> = world.ids().into_iter().map(|id| (id, ())).collect();
    raft.initialize(members).await.expect("a fresh cluster initializes");
}

/// Stops replica `id`'s process.
pub async fn stop(world: &Arc<World>, id: u64, how: Stop) {
    let (up, disk) = {
        let mut r = world.replicas.lock().unwrap();
        let rep = r.get_mut(&id).unwrap();
        (rep.up.take(), rep.disk.clone())
    };
    let Some((raft, _)) = up else { return };
    let what = match how {
        Stop::Kill => disk.crash(),
        Stop::PowerCut => disk.power_cut(&mut |n| world.range(0, n as u64 + 1) as usize),
    };
    world.log("fault", format!("n{id}: {what}"));
    let _ = raft.shutdown().await;
}

/// Whether a running replica's raft stopped on its own (a storage error).
pub fn stopped_on_error(world: &World) -> Vec<u64> {
    world
        .up()
        .into_iter()
        .filter(|(_, raft, _)| raft.metrics().borrow_watched().running_state.is_err())
        .map(|(id, _, _)| id)
        .collect()
}
