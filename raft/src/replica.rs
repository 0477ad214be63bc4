//! One replica: a store member, its raft node, its peer server, and the paths a write and a
//! read take through them.
//!
//! **A write** (`Store::txn` on any replica) becomes a proposal. On the leader it joins the
//! proposer's queue: the proposer takes everything queued into one entry (up to
//! `batch_commands_max` / `batch_bytes_max`), keeps at most `entries_in_flight` entries in the
//! log uncommitted, and hands each command its answer when the entry is applied. On a
//! follower the forwarder does the same into one request to the leader. A proposal that
//! openraft refused before appending it (this node is not the leader) is retried against the
//! new leader; one whose fate is unknown (the leader changed after appending it, or no answer
//! in `write_timeout`) is answered `Unavailable`, never retried, so no write is applied twice
//! by this layer.
//!
//! **A read** waits on a read barrier first: on the leader a read index confirmed by a quorum
//! (openraft's `ensure_linearizable`), on a follower the leader's read index and then its own
//! apply reaching it. Concurrent barriers share one round, and a caller never shares a round
//! that began before it called.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use openraft::async_runtime::watch::WatchReceiver;
use openraft::error::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::{ReadPolicy, ServerState};
use storage::command::{BatchBuilder, decode_error, encode_error};
use storage::replicated::BoxFuture;
use storage::{Applied, Command, LeaseId, Replication, Revision, Store, StoreError};
use tokio::sync::{mpsc, oneshot};

use crate::cluster::{self, Identity};
use crate::codec;
use crate::faults::Faults;
use crate::log_store::{Corruption, LogConfig, LogReader, LogStore};
use crate::network::{self, Body, Connector, FrameReader, PeerClient, PeerError, PeerNetworkFactory, Wire};
use crate::state_machine::{Snapshot, SnapshotFiles, StateMachineStore};
use crate::types::*;

pub type Raft = openraft::Raft<TypeConfig, StateMachineStore>;

/// The cluster as one replica sees it now: what etcd's Status and MemberList report.
#[derive(Clone, Debug)]
pub struct View {
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: u64,
    pub applied: u64,
    /// Every member: its id, what it is, and whether it votes (a learner does not).
    pub members: Vec<(NodeId, crate::types::Member, bool)>,
}

mod membership;

pub use membership::{Change, ChangeError, MembershipHandle, Op as ChangeOp};

/// What `raft` knows of the cluster now.
pub fn view(raft: &Raft) -> View {
    let m = raft.metrics().borrow_watched().clone();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    View {
        term: m.current_term,
        leader: m.current_leader,
        last_log_index: m.last_log_index.unwrap_or(0),
        applied: m.last_applied.map(|l| l.index).unwrap_or(0),
        members: membership.nodes().map(|(id, n)| (*id, n.clone(), voters.contains(id))).collect(),
    }
}

/// Asks `raft` (the leader) to hand leadership to `to`: what etcd's MoveLeader does. Returns
/// once the request is made; the caller watches `view` for the new leader.
pub async fn transfer_leader(raft: &Raft, to: NodeId) -> Result<(), String> {
    raft.trigger().transfer_leader(to).await.map_err(|e| e.to_string())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitialState {
    /// The members of `initial_cluster` start a new cluster together.
    New,
    /// This member joins a running cluster that has added it (`capstan member add`).
    Existing,
}

#[derive(Clone)]
pub struct ReplicaConfig {
    pub name: String,
    pub data_dir: PathBuf,
    /// Where peers connect (`host:port`; port 0 picks one).
    pub peer_listen: String,
    /// The URL peers use for this member; empty: `http://` + the bound peer address.
    pub peer_url: String,
    /// This member's Kubernetes API URL, recorded in the membership (empty if none).
    pub api_url: String,
    pub initial_cluster: Vec<(String, String)>,
    pub initial_state: InitialState,
    pub cluster_token: String,
    /// The store's configuration (its `data_dir` and `shards` are set here).
    pub store: storage::Config,
    pub log_io: storage::disk::LogIo,
    pub fsync: bool,
    pub heartbeat: Duration,
    pub election_timeout: (Duration, Duration),
    pub write_timeout: Duration,
    pub read_timeout: Duration,
    pub batch_commands_max: usize,
    pub batch_bytes_max: usize,
    pub entries_in_flight: usize,
    /// Snapshot (and trim the log) once it holds this many bytes of entries.
    pub snapshot_log_bytes: u64,
    pub segment_bytes: u64,
    pub on_corruption: Corruption,
    pub connector: Arc<dyn Connector>,
    /// TLS on the peer listener (its client-certificate verifier admits peers); plain
    /// HTTP/2 when none.
    pub peer_tls: Option<Arc<rustls::ServerConfig>>,
    pub faults: Option<Arc<Faults>>,
}

impl ReplicaConfig {
    pub fn new(name: &str, data_dir: impl Into<PathBuf>, initial_cluster: Vec<(String, String)>) -> ReplicaConfig {
        let data_dir = data_dir.into();
        let mut store = storage::Config::new(data_dir.join("store"));
        store.shards = 1;
        ReplicaConfig {
            name: name.to_string(),
            data_dir,
            peer_listen: "127.0.0.1:0".into(),
            peer_url: String::new(),
            api_url: String::new(),
            initial_cluster,
            initial_state: InitialState::New,
            cluster_token: "capstan".into(),
            store,
            log_io: storage::disk::LogIo::Uring,
            fsync: true,
            heartbeat: Duration::from_millis(100),
            election_timeout: (Duration::from_millis(300), Duration::from_millis(600)),
            write_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(3),
            batch_commands_max: 4096,
            batch_bytes_max: 1 << 20,
            entries_in_flight: 8,
            snapshot_log_bytes: 512 << 20,
            segment_bytes: 64 << 20,
            on_corruption: Corruption::Truncate,
            connector: Arc::new(network::TcpConnector),
            peer_tls: None,
            faults: None,
        }
    }
}

/// Why a replica did not start: each names what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Mismatch(String),
    #[error("opening the raft log in {path}: {source}")]
    Log { path: PathBuf, source: std::io::Error },
    #[error("opening the store: {0}")]
    Store(#[from] storage::OpenError),
    #[error("starting raft: {0}")]
    Raft(String),
    #[error("listening for peers on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
}

struct Proposal {
    cmd: Command,
    reply: oneshot::Sender<Result<Applied, StoreError>>,
}

/// The answer openraft gives when this node is not (or no longer) the leader before the
/// entry was appended: safe to retry elsewhere.
const NOT_LEADER: &str = "not-leader";

fn not_leader() -> StoreError {
    StoreError::Unavailable(NOT_LEADER.into())
}

fn is_not_leader(e: &StoreError) -> bool {
    matches!(e, StoreError::Unavailable(m) if m == NOT_LEADER)
}

struct Inner {
    id: NodeId,
    name: String,
    cfg: ReplicaConfig,
    wire: Wire,
    net: PeerNetworkFactory,
    raft: OnceLock<Raft>,
    sm: OnceLock<StateMachineStore>,
    store: OnceLock<Store>,
    log: OnceLock<LogReader>,
    proposals: mpsc::Sender<Proposal>,
    forwards: mpsc::Sender<Proposal>,
    barrier: Mutex<BarrierState>,
    /// Set once this member learns it was removed from the cluster: it serves nothing more.
    removed: AtomicBool,
    /// Set when raft stopped on its own (a storage error: a failed sync, a corrupt entry read
    /// back): this replica is no longer a member in any useful sense; its process should
    /// exit and be restarted, which checks the log (cutting a corruption) and catches up.
    failed: OnceLock<String>,
    identity_written: AtomicBool,
    /// Where this member serves etcd's API, once it does (`Replica::advertise_client_url`):
    /// recorded in the membership, as etcd members publish their client URLs.
    client_url: OnceLock<String>,
    forwarded: AtomicU64,
    /// Entries proposed, commands in them, and microseconds from proposal to answer (summed).
    entries: AtomicU64,
    commands: AtomicU64,
    write_us: AtomicU64,
    /// Turns true when the replica stops: the peer server closes every connection.
    stop: tokio::sync::watch::Sender<bool>,
    /// When a leader's AppendEntries (stream or heartbeat) last arrived, in ms since `epoch`.
    last_append_ms: AtomicU64,
    /// A leader's replication stream broke (its connection reset: the process died, most
    /// likely): `fast_failover` starts an election as soon as leases allow.
    stream_broke: Arc<tokio::sync::Notify>,
    epoch: Instant,
}

#[derive(Default)]
struct BarrierState {
    running: bool,
    next: Vec<oneshot::Sender<Result<(), StoreError>>>,
}

/// A running replica. Dropping it stops nothing: call `shutdown`.
pub struct Replica {
    inner: Arc<Inner>,
    pub store: Store,
    pub peer_addr: std::net::SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Replica {
    /// Opens the data directory (refusing another member's or another cluster's), starts raft,
    /// the peer server and the background tasks. With `InitialState::New` and an empty log,
    /// initializes the cluster with `initial_cluster` (every initial member does the same).
    pub async fn start(cfg: ReplicaConfig) -> Result<Replica, StartError> {
        let listener = tokio::net::TcpListener::bind(&cfg.peer_listen)
            .await
            .map_err(|source| StartError::Listen { addr: cfg.peer_listen.clone(), source })?;
        Replica::start_on(cfg, listener).await
    }

    /// As `start`, serving peers on a listener bound already.
    pub async fn start_on(cfg: ReplicaConfig, listener: tokio::net::TcpListener) -> Result<Replica, StartError> {
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| StartError::Config(format!("creating {}: {e}", cfg.data_dir.display())))?;
        let peer_addr = listener.local_addr().map_err(|source| StartError::Listen { addr: cfg.peer_listen.clone(), source })?;
        let mut cfg = cfg;
        if cfg.peer_url.is_empty() {
            cfg.peer_url = format!("http://{peer_addr}");
        }
        let (cluster_id, id) = match check_identity(&cfg)? {
            Some(known) => known,
            None => membership::join(&cfg).await?,
        };
        let wire = Wire { cluster: Arc::new(AtomicU64::new(cluster_id)), me: id, left_out_at: Arc::new(AtomicU64::new(0)) };
        let net = PeerNetworkFactory::new(wire.clone(), cfg.connector.clone(), cfg.faults.clone());
        let raft_dir = cfg.data_dir.join("raft");
        let mut lc = LogConfig::new(&raft_dir);
        lc.segment_bytes = cfg.segment_bytes;
        lc.fsync = cfg.fsync;
        lc.io = cfg.log_io.clone();
        lc.on_corruption = cfg.on_corruption;
        let (log, opened) = LogStore::open(lc).map_err(|source| StartError::Log { path: raft_dir.clone(), source })?;
        if let Some(what) = &opened.cut_at_corruption {
            tracing::error!(member = %cfg.name, damage = %what, "started with a raft log cut at a corruption; catching up from the leader");
        }
        let (ptx, prx) = mpsc::channel(65536);
        let (ftx, frx) = mpsc::channel(65536);
        let inner = Arc::new(Inner {
            id,
            name: cfg.name.clone(),
            cfg: cfg.clone(),
            wire,
            net: net.clone(),
            raft: OnceLock::new(),
            sm: OnceLock::new(),
            store: OnceLock::new(),
            log: OnceLock::new(),
            proposals: ptx,
            forwards: ftx,
            barrier: Mutex::new(BarrierState::default()),
            removed: AtomicBool::new(false),
            failed: OnceLock::new(),
            identity_written: AtomicBool::new(cluster_id != 0),
            client_url: OnceLock::new(),
            forwarded: AtomicU64::new(0),
            entries: AtomicU64::new(0),
            commands: AtomicU64::new(0),
            write_us: AtomicU64::new(0),
            stop: tokio::sync::watch::channel(false).0,
            last_append_ms: AtomicU64::new(0),
            stream_broke: Arc::new(tokio::sync::Notify::new()),
            epoch: Instant::now(),
        });
        let _ = inner.log.set(log.reader());
        let mut scfg = cfg.store.clone();
        scfg.data_dir = cfg.data_dir.join("store");
        scfg.shards = 1;
        scfg.fsync = cfg.fsync;
        let (store, sm) = Store::open_replica(scfg, Arc::new(Handle(Arc::downgrade(&inner))))?;
        let sm = StateMachineStore::new(sm).map_err(|e| StartError::Raft(e.to_string()))?;
        let rc = openraft::Config {
            cluster_name: "capstan".into(),
            heartbeat_interval: cfg.heartbeat.as_millis() as u64,
            election_timeout_min: cfg.election_timeout.0.as_millis() as u64,
            election_timeout_max: cfg.election_timeout.1.as_millis() as u64,
            enable_pre_vote: Some(true),
            broadcast_submitted_on_append: Some(true),
            // A follower whose damaged log was cut at the damage comes back with less than it
            // had acknowledged: the leader resets its progress instead of stopping (raft/DESIGN.md,
            // "Corruption", has what this gives up).
            allow_log_reversion: Some(cfg.on_corruption == Corruption::Truncate),
            // openraft 0.10 lets a leader that restarts quickly resume its old term without an
            // election. That is not raft, and not safe here: the leader sends entries to its
            // followers while its own write of them is still queued, so a killed leader comes
            // back without its log's tail and would write different entries under the same
            // log ids its followers already hold (replicas then apply different commands at
            // the same index). A restarted leader stands for election in a new term instead.
            enable_leader_restore: Some(false),
            snapshot_policy: openraft::SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: 256,
            max_payload_entries: 32,
            install_snapshot_timeout: 120_000,
            ..Default::default()
        };
        let rc = Arc::new(rc.validate().map_err(|e| StartError::Raft(e.to_string()))?);
        let raft = Raft::new(id, rc, net, log, sm.clone()).await.map_err(|e| StartError::Raft(e.to_string()))?;
        let _ = inner.raft.set(raft.clone());
        let _ = inner.sm.set(sm);
        let _ = inner.store.set(store.clone());
        if cfg.initial_state == InitialState::New && !raft.is_initialized().await.map_err(|e| StartError::Raft(e.to_string()))? {
            let members: BTreeMap<NodeId, Member> = cfg
                .initial_cluster
                .iter()
                .map(|(n, u)| (cluster::member_id(n), Member { name: n.clone(), peer_url: u.clone(), api_url: if *n == cfg.name { cfg.api_url.clone() } else { String::new() }, client_url: String::new() }))
                .collect();
            if let Err(e) = raft.initialize(members).await {
                tracing::info!(error = %e, "initializing the cluster: another member did it first");
            }
        }
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(serve_peers(listener, cfg.peer_tls.clone(), Arc::downgrade(&inner), inner.stop.subscribe())));
        tasks.push(tokio::spawn(proposer(Arc::downgrade(&inner), prx)));
        tasks.push(tokio::spawn(forwarder(Arc::downgrade(&inner), frx)));
        tasks.push(tokio::spawn(monitor(Arc::downgrade(&inner))));
        tasks.push(tokio::spawn(snapshot_trigger(Arc::downgrade(&inner))));
        tasks.push(tokio::spawn(fast_failover(Arc::downgrade(&inner))));
        tasks.push(tokio::spawn(membership::announce(Arc::downgrade(&inner))));
        tracing::info!(member = %cfg.name, id, peer = %peer_addr, cluster = format!("{:016x}", inner.wire.cluster()), "replica started");
        Ok(Replica { inner, store, peer_addr, tasks })
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn raft(&self) -> &Raft {
        self.inner.raft()
    }

    /// A handle for membership changes (etcd's Cluster service).
    pub fn membership_handle(&self) -> MembershipHandle {
        MembershipHandle { inner: self.inner.clone() }
    }

    pub fn cluster_id(&self) -> u64 {
        self.inner.wire.cluster()
    }

    pub fn is_leader(&self) -> bool {
        self.inner.leader() == Some(self.inner.id)
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.inner.leader()
    }

    /// Records `url`, where this member serves etcd's API, in the membership (etcd's
    /// MemberList answers it as the member's client URL). Set once; later calls are ignored.
    pub fn advertise_client_url(&self, url: &str) {
        let _ = self.inner.client_url.set(url.to_string());
    }

    pub fn removed(&self) -> bool {
        self.inner.removed.load(Ordering::SeqCst)
    }

    /// Why raft stopped by itself, if it did (see `Inner::failed`).
    pub fn failed(&self) -> Option<String> {
        self.inner.failed.get().cloned()
    }

    /// Proposals this replica forwarded to a leader.
    pub fn forwarded(&self) -> u64 {
        self.inner.forwarded.load(Ordering::Relaxed)
    }

    /// The status document `/raft/status` serves.
    pub fn status(&self) -> serde_json::Value {
        self.inner.status()
    }

    /// `status`, for whoever outlives a borrow of the replica (the dashboard).
    pub fn status_source(&self) -> impl Fn() -> serde_json::Value + Send + Sync + 'static {
        let inner = self.inner.clone();
        move || inner.status()
    }

    /// Stops: a leader first hands leadership to the most caught-up voter (so a rolling
    /// restart does not wait for an election timeout), then raft and the tasks stop.
    pub async fn shutdown(self) {
        let raft = self.inner.raft().clone();
        if self.is_leader()
            && let Some(to) = self.inner.transfer_target()
        {
            let _ = raft.trigger().transfer_leader(to).await;
            let deadline = Instant::now() + Duration::from_secs(3);
            let mut m = raft.metrics();
            while Instant::now() < deadline && m.borrow_watched().current_leader == Some(self.inner.id) {
                let _ = tokio::time::timeout(Duration::from_millis(50), m.changed()).await;
            }
            let now = m.borrow_watched().current_leader;
            tracing::info!(to, leader = ?now, "leadership handed over before shutdown");
        }
        self.stop_all().await;
    }

    /// Stops at once, as a crash would (no leadership transfer). For tests.
    pub async fn kill(self) {
        self.stop_all().await;
    }

    async fn stop_all(&self) {
        let _ = self.inner.stop.send(true);
        let _ = self.inner.raft().shutdown().await;
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Checks the data directory belongs to this member of this cluster; records it if new.
/// Returns the cluster id and this member's id; `None` for a member joining a running cluster
/// for the first time (`join` finds out both).
fn check_identity(cfg: &ReplicaConfig) -> Result<Option<(u64, NodeId)>, StartError> {
    let me = cfg.initial_cluster.iter().find(|(n, _)| *n == cfg.name);
    if cfg.initial_state == InitialState::New {
        match me {
            None => {
                return Err(StartError::Config(format!(
                    "--name {} is not in --initial-cluster ({})",
                    cfg.name,
                    cfg.initial_cluster.iter().map(|(n, u)| format!("{n}={u}")).collect::<Vec<_>>().join(",")
                )));
            }
            Some((_, url)) if network::authority(url) != network::authority(&cfg.peer_url) => {
                return Err(StartError::Config(format!(
                    "--initial-cluster gives {} the peer URL {url}, but it listens for peers at {}",
                    cfg.name, cfg.peer_url
                )));
            }
            _ => {}
        }
    }
    let derived = match cfg.initial_state {
        InitialState::New => cluster::cluster_id(&cfg.cluster_token, &cfg.initial_cluster),
        InitialState::Existing => 0,
    };
    let found = Identity::read(&cfg.data_dir).map_err(StartError::Config)?;
    match found {
        Some(id) => {
            if id.name != cfg.name {
                return Err(StartError::Mismatch(format!(
                    "data directory {} belongs to member {} (of cluster {:016x}), not to {}",
                    cfg.data_dir.display(),
                    id.name,
                    id.cluster,
                    cfg.name
                )));
            }
            if derived != 0 && id.cluster != derived {
                return Err(StartError::Mismatch(format!(
                    "data directory {} belongs to cluster {:016x}, but --initial-cluster and --initial-cluster-token describe cluster {derived:016x}",
                    cfg.data_dir.display(),
                    id.cluster
                )));
            }
            Ok(Some((id.cluster, id.id())))
        }
        None => {
            let has_data = cfg.data_dir.join("raft").join("log").exists() || cfg.data_dir.join("store").exists();
            if has_data {
                return Err(StartError::Mismatch(format!(
                    "data directory {} holds raft or store data but no CLUSTER file: it is not a replica's, or it is damaged",
                    cfg.data_dir.display()
                )));
            }
            if derived == 0 {
                return Ok(None);
            }
            let me = Identity::named(derived, &cfg.name);
            me.write(&cfg.data_dir).map_err(|e| StartError::Config(format!("writing {}/CLUSTER: {e}", cfg.data_dir.display())))?;
            Ok(Some((derived, me.id())))
        }
    }
}

impl Inner {
    fn raft(&self) -> &Raft {
        self.raft.get().expect("raft is started before anything uses it")
    }

    fn store(&self) -> &Store {
        self.store.get().expect("the store is opened before anything uses it")
    }

    fn leader(&self) -> Option<NodeId> {
        self.raft.get()?.metrics().borrow_watched().current_leader
    }

    fn member(&self, id: NodeId) -> Option<Member> {
        self.raft.get()?.metrics().borrow_watched().membership_config.membership().get_node(&id).cloned()
    }

    /// The voter with the most of the log replicated, to hand leadership to.
    fn transfer_target(&self) -> Option<NodeId> {
        let m = self.raft().metrics().borrow_watched().clone();
        let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().filter(|v| *v != self.id).collect();
        let repl = m.replication.clone().unwrap_or_default();
        voters.into_iter().max_by_key(|v| repl.get(v).cloned().flatten().map(|l| l.index))
    }

    /// Waits (up to `until`) for a known leader.
    async fn wait_leader(&self, until: Instant) -> Option<NodeId> {
        let mut m = self.raft().metrics();
        loop {
            if let Some(l) = m.borrow_watched().current_leader {
                return Some(l);
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, m.changed()).await.is_err() {
                return None;
            }
        }
    }

    fn client_of(&self, id: NodeId) -> Option<Arc<PeerClient>> {
        let m = self.member(id)?;
        Some(self.net.client(id, &m.peer_url))
    }

    /// Learns the cluster id from a peer (a member that joined an existing cluster).
    fn adopt_cluster(&self, cluster: u64) {
        if self.wire.cluster.compare_exchange(0, cluster, Ordering::SeqCst, Ordering::SeqCst).is_ok() && !self.identity_written.swap(true, Ordering::SeqCst) {
            match (Identity { cluster, name: self.name.clone(), id: self.id }).write(&self.cfg.data_dir) {
                Ok(()) => tracing::info!(cluster = format!("{cluster:016x}"), "joined the cluster"),
                Err(e) => tracing::error!(error = %e, "recording the cluster id failed"),
            }
        }
    }

    async fn propose(self: Arc<Self>, cmd: Command) -> Result<Applied, StoreError> {
        let deadline = Instant::now() + self.cfg.write_timeout;
        loop {
            if self.removed.load(Ordering::SeqCst) {
                return Err(StoreError::NoQuorum(format!("member {} was removed from the cluster", self.name)));
            }
            if let Some(why) = self.failed.get() {
                return Err(StoreError::NoQuorum(format!("this replica's raft stopped: {why}")));
            }
            let Some(leader) = self.wait_leader(deadline).await else {
                return Err(StoreError::NoQuorum(format!("no leader within {:?}", self.cfg.write_timeout)));
            };
            let (tx, rx) = oneshot::channel();
            let queue = if leader == self.id { &self.proposals } else { &self.forwards };
            if queue.send(Proposal { cmd: cmd.clone(), reply: tx }).await.is_err() {
                return Err(StoreError::Shutdown);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, rx).await {
                Ok(Ok(Err(e))) if is_not_leader(&e) && Instant::now() < deadline => {
                    // Refused before it entered any log: safe to send again, to the new leader.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                Ok(Ok(Err(e))) if is_not_leader(&e) => return Err(StoreError::NoQuorum("leadership is changing".into())),
                Ok(Ok(r)) => return r,
                Ok(Err(_)) => return Err(StoreError::Shutdown),
                Err(_) => {
                    return Err(StoreError::Unavailable(format!(
                        "the write was not committed within {:?} (no quorum?); it may still be",
                        self.cfg.write_timeout
                    )));
                }
            }
        }
    }

    /// Whether this replica still leads with a quorum behind it (a read index round).
    async fn leadership_confirmed(&self) -> bool {
        matches!(tokio::time::timeout(self.cfg.read_timeout, self.raft().get_read_linearizer(ReadPolicy::ReadIndex)).await, Ok(Ok(_)))
    }

    async fn read_barrier(self: Arc<Self>) -> Result<(), StoreError> {
        if self.removed.load(Ordering::SeqCst) {
            return Err(StoreError::NoQuorum(format!("member {} was removed from the cluster", self.name)));
        }
        if let Some(why) = self.failed.get() {
            return Err(StoreError::NoQuorum(format!("this replica's raft stopped: {why}")));
        }
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut b = self.barrier.lock().unwrap();
            b.next.push(tx);
            !std::mem::replace(&mut b.running, true)
        };
        if start {
            let me = self.clone();
            tokio::spawn(async move {
                loop {
                    let waiters = {
                        let mut b = me.barrier.lock().unwrap();
                        if b.next.is_empty() {
                            b.running = false;
                            return;
                        }
                        std::mem::take(&mut b.next)
                    };
                    let r = me.clone().barrier_round().await;
                    for w in waiters {
                        let _ = w.send(r.clone());
                    }
                }
            });
        }
        rx.await.map_err(|_| StoreError::Shutdown)?
    }

    /// One read index: everything committed before it started is applied here after it.
    async fn barrier_round(self: Arc<Self>) -> Result<(), StoreError> {
        let timeout = self.cfg.read_timeout;
        let deadline = Instant::now() + timeout;
        let unavailable = |why: String| StoreError::NoQuorum(format!("no read index: {why}"));
        loop {
            let Some(leader) = self.wait_leader(deadline).await else {
                return Err(unavailable(format!("no leader within {timeout:?} (no quorum)")));
            };
            let index = if leader == self.id {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, self.raft().get_read_linearizer(ReadPolicy::ReadIndex)).await {
                    Err(_) => return Err(unavailable(format!("leadership not confirmed by a quorum within {timeout:?}"))),
                    Ok(Ok(l)) => l.read_log_id().index(),
                    Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(_)))) => continue,
                    Ok(Err(e)) => return Err(unavailable(e.to_string())),
                }
            } else {
                let Some(c) = self.client_of(leader) else {
                    // A member that just joined learns the leader's address with the log.
                    if Instant::now() >= deadline {
                        return Err(unavailable(format!("leader {leader:016x} is not in this member's membership yet")));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let left = deadline.saturating_duration_since(Instant::now());
                match c.unary("/raft/read-index", Bytes::new(), left).await {
                    Ok(b) => codec::decode_all(&b, |r| r.u64()).map_err(unavailable)?,
                    Err(PeerError::Remote(m)) if m == NOT_LEADER && Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                    Err(e) => return Err(unavailable(e.to_string())),
                }
            };
            let left = deadline.saturating_duration_since(Instant::now());
            return self
                .raft()
                .wait(Some(left))
                .applied_index_at_least(Some(index), "read index")
                .await
                .map(|_| ())
                .map_err(|e| unavailable(format!("this replica did not apply up to the read index {index} in time: {e}")));
        }
    }

    async fn lease_call(self: Arc<Self>, op: u8, id: LeaseId) -> Result<(i64, i64), StoreError> {
        let deadline = Instant::now() + self.cfg.write_timeout;
        loop {
            let Some(leader) = self.wait_leader(deadline).await else {
                return Err(StoreError::NoQuorum("no leader".into()));
            };
            if leader == self.id {
                // A keep-alive is acknowledged only by a leader a quorum still follows: one
                // cut off from the others (which have elected another) would otherwise
                // promise a life the real leader does not know of (sim/FOUND.md).
                if op == 1 && !self.leadership_confirmed().await {
                    if Instant::now() >= deadline {
                        return Err(StoreError::NoQuorum("leadership not confirmed by a quorum".into()));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                let store = self.store();
                return match op {
                    1 => store.local_lease_keep_alive(id).await.map(|t| (t, t)),
                    _ => store.local_lease_time_to_live(id).await,
                };
            }
            let Some(c) = self.client_of(leader) else {
                if Instant::now() >= deadline {
                    return Err(StoreError::NoQuorum("the leader's address is not known yet".into()));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let mut b = BytesMut::new();
            b.put_u8(op);
            b.put_i64_le(id);
            let left = deadline.saturating_duration_since(Instant::now());
            return match c.unary("/raft/lease", b.freeze(), left).await {
                Ok(bytes) => codec::decode_all(&bytes, |r| match r.u8()? {
                    0 => Ok(Ok((r.i64()?, r.i64()?))),
                    _ => Ok(Err(decode_error(r)?)),
                })
                .map_err(StoreError::Io)?,
                Err(PeerError::Remote(m)) if m == NOT_LEADER => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                Err(e) => Err(StoreError::Unavailable(e.to_string())),
            };
        }
    }

    async fn snapshot(self: Arc<Self>) -> Result<Revision, StoreError> {
        let raft = self.raft();
        let applied = raft.metrics().borrow_watched().last_applied;
        raft.trigger().snapshot().await.map_err(|e| StoreError::Io(e.to_string()))?;
        let want = applied.map(|l| l.index);
        raft.wait(Some(Duration::from_secs(120)))
            .metrics(|m| m.snapshot.map(|l| l.index) >= want, "the snapshot")
            .await
            .map_err(|e| StoreError::Io(format!("snapshot: {e}")))?;
        Ok(self.store().revision())
    }

    fn status(&self) -> serde_json::Value {
        let m = self.raft().metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members: Vec<serde_json::Value> = membership
            .nodes()
            .map(|(id, n)| {
                serde_json::json!({
                    "id": format!("{id:016x}"), "name": n.name, "peerURL": n.peer_url, "apiURL": n.api_url, "clientURL": n.client_url,
                    "voter": voters.contains(id), "leader": m.current_leader == Some(*id),
                })
            })
            .collect();
        serde_json::json!({
            "id": format!("{:016x}", self.id),
            "name": self.name,
            "cluster": format!("{:016x}", self.wire.cluster()),
            "state": format!("{:?}", m.state),
            "leader": m.current_leader.and_then(|l| membership.get_node(&l)).map(|n| n.name.clone()),
            "term": m.current_term,
            "lastLogIndex": m.last_log_index,
            "committed": m.cluster_committed.map(|l| l.index),
            "applied": m.last_applied.map(|l| l.index),
            "snapshot": m.snapshot.map(|l| l.index),
            "revision": self.store.get().map(|s| s.revision()),
            "removed": self.removed.load(Ordering::SeqCst),
            "failed": self.failed.get(),
            "members": members,
            // On the leader: each member's last log index known replicated to it.
            "matched": m.replication.as_ref().map(|r| r.iter().map(|(id, l)| (format!("{id:016x}"), serde_json::json!(l.as_ref().map(|l| l.index)))).collect::<serde_json::Map<String, serde_json::Value>>()),
            "proposed": {
                "entries": self.entries.load(Ordering::Relaxed),
                "commands": self.commands.load(Ordering::Relaxed),
                "meanEntryMicros": self.write_us.load(Ordering::Relaxed) / self.entries.load(Ordering::Relaxed).max(1),
                "forwardedCommands": self.forwarded.load(Ordering::Relaxed),
            },
            "apply": self.sm.get().map(|sm| serde_json::json!({
                "calls": sm.stats.calls.load(Ordering::Relaxed),
                "entries": sm.stats.entries.load(Ordering::Relaxed),
                "decodeMicros": sm.stats.decode_us.load(Ordering::Relaxed),
                "storeMicros": sm.stats.store_us.load(Ordering::Relaxed),
            })),
        })
    }
}

/// The store's view of replication. Holds the replica weakly: a stopped replica's store
/// answers `Shutdown`.
struct Handle(Weak<Inner>);

impl Handle {
    fn inner(&self) -> Result<Arc<Inner>, StoreError> {
        self.0.upgrade().ok_or(StoreError::Shutdown)
    }
}

impl Replication for Handle {
    fn propose(&self, cmd: Command) -> BoxFuture<Result<Applied, StoreError>> {
        let inner = self.inner();
        Box::pin(async move { inner?.propose(cmd).await })
    }
    fn read_barrier(&self) -> BoxFuture<Result<(), StoreError>> {
        let inner = self.inner();
        Box::pin(async move { inner?.read_barrier().await })
    }
    fn lease_keep_alive(&self, id: LeaseId) -> BoxFuture<Result<i64, StoreError>> {
        let inner = self.inner();
        Box::pin(async move { inner?.lease_call(1, id).await.map(|(t, _)| t) })
    }
    fn lease_time_to_live(&self, id: LeaseId) -> BoxFuture<Result<(i64, i64), StoreError>> {
        let inner = self.inner();
        Box::pin(async move { inner?.lease_call(2, id).await })
    }
    fn snapshot(&self) -> BoxFuture<Result<Revision, StoreError>> {
        let inner = self.inner();
        Box::pin(async move { inner?.snapshot().await })
    }
}

// ---------------------------------------------------------------------------------------------
// Background tasks
// ---------------------------------------------------------------------------------------------

/// Takes what is queued (up to a batch), waiting for a free in-flight slot first so that the
/// batch grows while earlier entries commit.
async fn next_batch(rx: &mut mpsc::Receiver<Proposal>, max_cmds: usize, max_bytes: usize, first: Proposal) -> Vec<Proposal> {
    let mut batch = vec![first];
    let mut bytes = batch[0].cmd.encoded_len_hint();
    while batch.len() < max_cmds && bytes < max_bytes {
        match rx.try_recv() {
            Ok(p) => {
                bytes += p.cmd.encoded_len_hint();
                batch.push(p);
            }
            Err(_) => break,
        }
    }
    batch
}

async fn proposer(inner: Weak<Inner>, mut rx: mpsc::Receiver<Proposal>) {
    let Some((max_cmds, max_bytes, in_flight)) = inner.upgrade().map(|i| (i.cfg.batch_commands_max, i.cfg.batch_bytes_max, i.cfg.entries_in_flight)) else { return };
    let slots = Arc::new(tokio::sync::Semaphore::new(in_flight));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let batch = next_batch(&mut rx, max_cmds, max_bytes, first).await;
        let mut bb = BatchBuilder::with_capacity(16 + batch.iter().map(|p| p.cmd.encoded_len_hint()).sum::<usize>());
        let Some(i) = inner.upgrade() else { return };
        let raft = i.raft().clone();
        i.entries.fetch_add(1, Ordering::Relaxed);
        i.commands.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let stats = Arc::downgrade(&i);
        drop(i);
        for p in &batch {
            bb.push(&p.cmd);
        }
        let payload = bb.take();
        tokio::spawn(async move {
            let t = Instant::now();
            let r = raft.client_write(Batch::new(payload)).await;
            drop(permit);
            if let Some(i) = stats.upgrade() {
                i.write_us.fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
            let answer_all = |batch: Vec<Proposal>, e: StoreError| {
                for p in batch {
                    let _ = p.reply.send(Err(e.clone()));
                }
            };
            match r {
                Ok(resp) => {
                    let n = batch.len();
                    let answers = resp.data.0;
                    if answers.len() != n {
                        answer_all(batch, StoreError::Io(format!("an entry of {n} commands was answered {} times", answers.len())));
                        return;
                    }
                    for (p, a) in batch.into_iter().zip(answers) {
                        let _ = p.reply.send(Ok(a));
                    }
                }
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => answer_all(batch, not_leader()),
                Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_))) => answer_all(
                    batch,
                    StoreError::Unavailable("the leader changed before the write was committed; it may or may not have been applied".into()),
                ),
                // Raft stopped under a pending write: the entry may already be on a follower and
                // commit under the next leader. Not knowing is not "not applied".
                Err(e) => answer_all(batch, StoreError::Unavailable(format!("raft: {e}; the write may or may not have been applied"))),
            }
        });
    }
}

/// Sends what is queued on a follower to the leader, one request per batch.
async fn forwarder(inner: Weak<Inner>, mut rx: mpsc::Receiver<Proposal>) {
    let Some((max_cmds, max_bytes, in_flight, timeout)) =
        inner.upgrade().map(|i| (i.cfg.batch_commands_max, i.cfg.batch_bytes_max, i.cfg.entries_in_flight, i.cfg.write_timeout))
    else {
        return;
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(in_flight));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let batch = next_batch(&mut rx, max_cmds, max_bytes, first).await;
        let Some(i) = inner.upgrade() else { return };
        let client = match i.leader() {
            Some(l) if l != i.id => i.client_of(l),
            _ => None,
        };
        i.forwarded.fetch_add(batch.len() as u64, Ordering::Relaxed);
        drop(i);
        let Some(client) = client else {
            for p in batch {
                let _ = p.reply.send(Err(not_leader()));
            }
            continue;
        };
        let mut body = BytesMut::new();
        body.put_u32_le(batch.len() as u32);
        for p in &batch {
            p.cmd.encode(&mut body);
        }
        let body = body.freeze();
        let weak = inner.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + timeout;
            let r = client.unary("/raft/propose", body, timeout).await;
            drop(permit);
            let fail = |batch: Vec<Proposal>, e: StoreError| {
                for p in batch {
                    let _ = p.reply.send(Err(e.clone()));
                }
            };
            match r {
                Ok(b) => match decode_answers(&b, batch.len()) {
                    Ok((applied, answers)) => {
                        // Answered once applied here too, so that this replica's own reads
                        // (serializable ones, its watch cache) see the write, as etcd's do.
                        let raft = weak.upgrade().map(|i| i.raft().clone());
                        if let Some(raft) = raft {
                            let left = deadline.saturating_duration_since(Instant::now());
                            if let Err(e) = raft.wait(Some(left)).applied_index_at_least(Some(applied), "a forwarded write").await {
                                fail(batch, StoreError::Unavailable(format!("the write was committed at log index {applied} but this replica did not apply it in time: {e}")));
                                return;
                            }
                        }
                        for (p, a) in batch.into_iter().zip(answers) {
                            let _ = p.reply.send(a);
                        }
                    }
                    Err(e) => fail(batch, StoreError::Io(format!("the leader's answer: {e}"))),
                },
                Err(PeerError::Remote(m)) if m == NOT_LEADER => fail(batch, not_leader()),
                Err(e @ PeerError::NotSent(_)) => fail(batch, StoreError::NoQuorum(format!("forwarding to the leader: {e}"))),
                Err(e) => fail(batch, StoreError::Unavailable(format!("forwarding to the leader: {e}; the write may or may not have been applied"))),
            }
        });
    }
}

/// The leader's answer to forwarded commands: the log index it had applied when all were
/// answered, then each command's answer.
fn encode_answers(applied: u64, answers: &[Result<Applied, StoreError>]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u64_le(applied);
    b.put_u32_le(answers.len() as u32);
    for a in answers {
        match a {
            Ok(a) => {
                b.put_u8(0);
                a.encode(&mut b);
            }
            Err(e) => {
                b.put_u8(1);
                encode_error(&mut b, e);
            }
        }
    }
    b.freeze()
}

fn decode_answers(b: &Bytes, want: usize) -> Result<(u64, Vec<Result<Applied, StoreError>>), String> {
    codec::decode_all(b, |r| {
        let applied = r.u64()?;
        let n = r.count(2)?;
        if n != want {
            return Err(format!("{n} answers for {want} commands"));
        }
        (0..n)
            .map(|_| match r.u8()? {
                0 => Ok(Ok(Applied::decode(r)?)),
                1 => Ok(Err(decode_error(r)?)),
                t => Err(format!("unknown answer tag {t}")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|answers| (applied, answers))
    })
}

/// Follows leadership (lease expiry and compaction are the leader's) and membership (a
/// member that finds itself removed stops serving).
async fn monitor(inner: Weak<Inner>) {
    let Some(i) = inner.upgrade() else { return };
    let mut m = i.raft().metrics();
    let extend = i.cfg.election_timeout.1;
    drop(i);
    let mut was_leader = false;
    let mut was_member = false;
    loop {
        let (state, membership, running) = {
            let mm = m.borrow_watched();
            (mm.state, mm.committed_membership_config.clone(), mm.running_state.clone())
        };
        let Some(i) = inner.upgrade() else { return };
        if let Err(fatal) = running
            && !*i.stop.borrow()
        {
            let why = fatal.to_string();
            if i.failed.set(why.clone()).is_ok() {
                tracing::error!(member = %i.name, error = %why, "raft stopped on an error: this replica no longer serves; restart it to recover");
                if let Some(sm) = i.sm.get() {
                    sm.store().set_leader(false, Duration::ZERO);
                }
            }
            return;
        }
        let leader = state == ServerState::Leader;
        if leader != was_leader {
            if let Some(sm) = i.sm.get() {
                sm.store().set_leader(leader, extend);
            }
            tracing::info!(member = %i.name, leader, "leadership changed");
            was_leader = leader;
        }
        let member = membership.membership().get_node(&i.id).is_some();
        let own_index = membership.log_id().map_or(0, |l| l.index);
        let left_out_at = i.wire.left_out_at.load(Ordering::SeqCst);
        if member {
            was_member = true;
        }
        let removed = (was_member && !member && membership.log_id().is_some()) || (left_out_at > own_index && was_member);
        if removed && !i.removed.swap(true, Ordering::SeqCst) {
            tracing::error!(member = %i.name, "this member was removed from the cluster: it serves nothing more");
        }
        drop(i);
        // Woken by raft's metrics, or every half second to look at what peers said.
        if let Ok(Err(_)) = tokio::time::timeout(Duration::from_millis(500), m.changed()).await {
            return; // raft stopped
        }
    }
}

/// When a leader's replication stream breaks (its connection reset: its process died, most
/// likely) and nothing more comes from a leader, starts a (pre-)vote as soon as every member's
/// leader lease has expired (`election_timeout_max` after the last heartbeat any of them can
/// have had), instead of waiting for a randomized timeout that the others' leases would refuse
/// anyway, a whole timeout each time. A pre-vote while the leader is alive is refused and
/// changes nothing.
async fn fast_failover(inner: Weak<Inner>) {
    let Some((notify, wait)) = inner.upgrade().map(|i| {
        (
            i.stream_broke.clone(),
            i.cfg.election_timeout.1 + Duration::from_millis(30),
        )
    }) else {
        return;
    };
    loop {
        notify.notified().await;
        let Some(i) = inner.upgrade() else { return };
        let broke_at = i.epoch.elapsed().as_millis() as u64;
        drop(i);
        tokio::time::sleep(wait).await;
        let Some(i) = inner.upgrade() else { return };
        let heard_since = i.last_append_ms.load(Ordering::SeqCst) > broke_at;
        let leading = i.leader() == Some(i.id);
        if !heard_since && !leading && i.failed.get().is_none() {
            tracing::info!(member = %i.name, "the leader's connection broke and it has been silent since: starting an election");
            let _ = i.raft().trigger().elect(true).await;
        }
    }
}

/// Snapshots once the log holds `snapshot_log_bytes` (openraft then trims the log).
async fn snapshot_trigger(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(i) = inner.upgrade() else { return };
        let Some(log) = i.log.get() else { continue };
        let limit = i.cfg.snapshot_log_bytes;
        let bytes = log.live_bytes();
        // One borrow of the metrics: a second read of the same lock in one statement
        // deadlocks when openraft's writer queues between the two (seen in the suite).
        let building = {
            let m = i.raft().metrics();
            let m = m.borrow_watched();
            m.last_applied.map(|l| l.index) <= m.snapshot.map(|l| l.index)
        };
        if bytes >= limit && !building {
            tracing::info!(bytes, limit, "the raft log is over its size: taking a snapshot");
            let _ = i.raft().trigger().snapshot().await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The peer server
// ---------------------------------------------------------------------------------------------

/// How long a peer has to finish its TLS handshake.
const PEER_HANDSHAKE: Duration = Duration::from_secs(10);

async fn serve_peers(listener: tokio::net::TcpListener, tls: Option<Arc<rustls::ServerConfig>>, inner: Weak<Inner>, stop: tokio::sync::watch::Receiver<bool>) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let Ok((stream, from)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        let inner = inner.clone();
        let mut stop = stop.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let inner = inner.clone();
                async move {
                    let resp = match inner.upgrade() {
                        Some(i) => handle(i, req).await,
                        None => network::status_body(StatusCode::SERVICE_UNAVAILABLE, "replica stopped".into()),
                    };
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let io: Box<dyn network::Io> = match acceptor {
                None => Box::new(stream),
                // Mutual TLS: a peer without a certificate the verifier admits ends here.
                Some(a) => match tokio::time::timeout(PEER_HANDSHAKE, a.accept(stream)).await {
                    Ok(Ok(s)) => Box::new(s),
                    Ok(Err(e)) => {
                        tracing::warn!(%from, error = %e, "a peer connection failed its TLS handshake");
                        return;
                    }
                    Err(_) => {
                        tracing::warn!(%from, "a peer connection did not finish its TLS handshake in time");
                        return;
                    }
                },
            };
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .initial_stream_window_size(8 << 20)
                .initial_connection_window_size(32 << 20)
                .max_frame_size(1 << 20)
                .max_concurrent_streams(1024)
                .serve_connection(TokioIo::new(io), service);
            // A stopped replica drops its connections, so peers reconnect to whoever serves
            // this address next.
            tokio::select! {
                _ = conn => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        });
    }
}

async fn body_bytes(req: Request<Incoming>, max: usize) -> Result<Bytes, Response<Body>> {
    use http_body_util::BodyExt;
    let limited = http_body_util::Limited::new(req.into_body(), max);
    limited
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| network::status_body(StatusCode::PAYLOAD_TOO_LARGE, format!("request body: {e}")))
}

async fn handle(i: Arc<Inner>, req: Request<Incoming>) -> Response<Body> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let theirs = header(network::H_CLUSTER).and_then(|h| u64::from_str_radix(&h, 16).ok());
    let from = header(network::H_FROM).and_then(|h| h.parse::<u64>().ok());
    let path = req.uri().path().to_string();
    let is_admin = path.starts_with("/raft/status") || path.starts_with("/raft/members");
    if !is_admin {
        let Some(theirs) = theirs else {
            return network::status_body(StatusCode::BAD_REQUEST, format!("missing {} header", network::H_CLUSTER));
        };
        let ours = i.wire.cluster();
        if ours == 0 && theirs != 0 {
            i.adopt_cluster(theirs);
        } else if theirs != ours && theirs != 0 {
            let why = format!(
                "member {} (cluster {ours:016x}) refuses a request from node {} of cluster {theirs:016x}: they are different clusters",
                i.name,
                from.map_or("?".into(), |f| format!("{f:016x}"))
            );
            tracing::warn!("{why}");
            return network::status_body(StatusCode::PRECONDITION_FAILED, why);
        }
    }
    let raft = i.raft().clone();
    let bad = |e: String| network::status_body(StatusCode::BAD_REQUEST, e);
    match path.as_str() {
        "/raft/append" => append_stream(i.clone(), raft, req),
        "/raft/snapshot" => receive_snapshot(i, req),
        "/raft/append1" => {
            i.last_append_ms
                .store(i.epoch.elapsed().as_millis() as u64, Ordering::SeqCst);
            let b = match body_bytes(req, network::FRAME_BYTES_MAX).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            match codec::decode_all(&b, codec::read_append_request) {
                Err(e) => bad(format!("append: {e}")),
                Ok(rpc) => match raft.append_entries(rpc).await {
                    Ok(r) => network::ok_body(codec::encode_with(|o| codec::append_response(o, &r))),
                    Err(e) => network::err_body(&e.to_string()),
                },
            }
        }
        "/raft/vote" | "/raft/pre-vote" => {
            let b = match body_bytes(req, 1 << 16).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let rpc = match codec::decode_all(&b, codec::read_vote_request) {
                Ok(r) => r,
                Err(e) => return bad(format!("vote: {e}")),
            };
            // A candidate our committed membership leaves out was removed (or never added):
            // say so, with the membership's index, so that it stops if that is newer than its own.
            if let Some(from) = from {
                let committed = raft.metrics().borrow_watched().committed_membership_config.clone();
                if committed.membership().get_node(&from).is_none()
                    && let Some(at) = committed.log_id()
                {
                    return network::status_body(StatusCode::GONE, format!("{} {}", network::NOT_A_MEMBER, at.index));
                }
            }
            let r = if path == "/raft/vote" { raft.vote(rpc).await } else { raft.pre_vote(rpc).await };
            match r {
                Ok(r) => network::ok_body(codec::encode_with(|o| codec::vote_response(o, &r))),
                Err(e) => network::err_body(&e.to_string()),
            }
        }
        "/raft/transfer-leader" => {
            let b = match body_bytes(req, 1 << 16).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            match codec::decode_all(&b, codec::read_transfer_request) {
                Err(e) => bad(format!("transfer-leader: {e}")),
                Ok(rpc) => match raft.handle_transfer_leader(rpc).await {
                    Ok(r) => network::ok_body(codec::encode_with(|o| codec::transfer_response(o, &r))),
                    Err(e) => network::err_body(&e.to_string()),
                },
            }
        }
        "/raft/propose" => {
            let b = match body_bytes(req, 64 << 20).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let cmds = match codec::decode_all(&b, |r| {
                let n = r.count(9)?;
                (0..n).map(|_| Command::decode(r)).collect::<Result<Vec<_>, _>>()
            }) {
                Ok(c) => c,
                Err(e) => return bad(format!("propose: {e}")),
            };
            if i.leader() != Some(i.id) {
                return network::err_body(NOT_LEADER);
            }
            let mut rxs = Vec::with_capacity(cmds.len());
            for cmd in cmds {
                let (tx, rx) = oneshot::channel();
                if i.proposals.send(Proposal { cmd, reply: tx }).await.is_err() {
                    return network::err_body("shutting down");
                }
                rxs.push(rx);
            }
            let mut answers = Vec::with_capacity(rxs.len());
            for rx in rxs {
                answers.push(rx.await.unwrap_or(Err(StoreError::Shutdown)));
            }
            // Every answered command is applied here by now: the forwarding replica waits until
            // it has applied as far, so that its own reads see the write (as etcd's do).
            let applied = i.sm.get().and_then(|sm| sm.last_applied()).map_or(0, |l| l.index);
            network::ok_body(encode_answers(applied, &answers))
        }
        "/raft/read-index" => match raft.get_read_linearizer(ReadPolicy::ReadIndex).await {
            Ok(l) => network::ok_body(codec::encode_with(|o| o.put_u64_le(l.read_log_id().index()))),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(_))) => network::err_body(NOT_LEADER),
            Err(e) => network::err_body(&e.to_string()),
        },
        "/raft/lease" => {
            let b = match body_bytes(req, 64).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let Ok((op, id)) = codec::decode_all(&b, |r| Ok((r.u8()?, r.i64()?))) else { return bad("lease: malformed".into()) };
            if i.leader() != Some(i.id) || (op == 1 && !i.leadership_confirmed().await) {
                return network::err_body(NOT_LEADER);
            }
            let store = i.store();
            let r = match op {
                1 => store.local_lease_keep_alive(id).await.map(|t| (t, t)),
                _ => store.local_lease_time_to_live(id).await,
            };
            network::ok_body(codec::encode_with(|o| match r {
                Ok((a, b)) => {
                    o.put_u8(0);
                    o.put_i64_le(a);
                    o.put_i64_le(b);
                }
                Err(e) => {
                    o.put_u8(1);
                    encode_error(o, &e);
                }
            }))
        }
        "/raft/status" => json_response(StatusCode::OK, i.status()),
        "/raft/members" => membership::members(i, req).await,
        _ => network::status_body(StatusCode::NOT_FOUND, format!("no such peer endpoint {path}")),
    }
}

fn json_response(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(network::full(Bytes::from(serde_json::to_vec_pretty(&v).unwrap_or_default())));
    *r.status_mut() = status;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    r
}

/// The follower's side of `stream_append`: AppendEntries in, their results out, pipelined.
fn append_stream(i: Arc<Inner>, raft: Raft, req: Request<Incoming>) -> Response<Body> {
    let frames = FrameReader::new(req.into_body());
    let watch = Arc::downgrade(&i);
    drop(i);
    let input = futures_util::stream::unfold((frames, watch), |(mut f, watch)| async move {
        let got = f.next().await;
        if let Some(i) = watch.upgrade() {
            match &got {
                Some(Ok(_)) => i
                    .last_append_ms
                    .store(i.epoch.elapsed().as_millis() as u64, Ordering::SeqCst),
                Some(Err(_)) => i.stream_broke.notify_one(),
                None => {}
            }
        }
        match got {
            Some(Ok(b)) => match codec::decode_all(&b, codec::read_append_request) {
                Ok(r) => Some((r, (f, watch))),
                Err(e) => {
                    // A corrupt entry (checksum) or a malformed request is refused: the stream
                    // ends, and the leader sends again from its own log.
                    tracing::warn!(error = %e, "refusing an AppendEntries from the leader");
                    None
                }
            },
            Some(Err(e)) => {
                tracing::debug!(error = %e, "replication stream ended");
                None
            }
            None => None,
        }
    });
    let (tx, body) = network::frame_channel(network::STREAM_QUEUE);
    tokio::spawn(async move {
        let mut output = Box::pin(raft.stream_append(input));
        while let Some(item) = output.next().await {
            match item {
                Ok(r) => {
                    let frame = codec::encode_with(|o| codec::stream_result(o, &r));
                    if tx.send(frame).await.is_err() {
                        return;
                    }
                }
                Err(fatal) => {
                    tx.fail(format!("raft stopped: {fatal}")).await;
                    return;
                }
            }
        }
    });
    Response::new(body)
}

fn valid_file_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 64 && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.') && !n.starts_with('.')
}

/// Receives a snapshot (header, then each file's bytes), checks it, and installs it.
fn receive_snapshot(i: Arc<Inner>, req: Request<Incoming>) -> Response<Body> {
    let mut frames = FrameReader::new(req.into_body());
    let (tx, body) = network::frame_channel(2);
    tokio::spawn(async move {
        let r = async {
            let header = frames.next().await.ok_or("no snapshot header")?.map_err(|e| e.to_string())?;
            let (vote, meta, files) = codec::decode_all(&header, |r| {
                let v = codec::read_vote(r)?;
                let m = codec::read_snapshot_meta(r)?;
                let n = r.count(12)?;
                if n > 100_000 {
                    return Err(format!("{n} files"));
                }
                let files = (0..n).map(|_| Ok((r.string()?, r.u64()?))).collect::<Result<Vec<_>, String>>()?;
                Ok((v, m, files))
            })?;
            if let Some((bad, _)) = files.iter().find(|(n, _)| !valid_file_name(n)) {
                return Err(format!("snapshot file name {bad:?} is not allowed"));
            }
            let sm = i.sm.get().ok_or("no state machine")?.clone();
            let (id, dir) = sm.store().receive_dir().await.map_err(|e| e.to_string())?;
            let mut total = 0u64;
            for (name, len) in &files {
                let path = dir.join(name);
                let mut f = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                let mut got = 0u64;
                while got < *len {
                    let chunk = frames.next().await.ok_or("the snapshot stream ended early")?.map_err(|e| e.to_string())?;
                    got += chunk.len() as u64;
                    if got > *len {
                        return Err(format!("file {name} is longer than announced"));
                    }
                    std::io::Write::write_all(&mut f, &chunk).map_err(|e| e.to_string())?;
                }
                tokio::task::spawn_blocking(move || f.sync_all()).await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
                total += len;
            }
            let names = files.into_iter().map(|(n, _)| n).collect();
            let snapshot = Snapshot { meta, snapshot: SnapshotFiles { id, dir, files: names, revision: 0 } };
            let started = Instant::now();
            let resp = i.raft().install_full_snapshot(vote, snapshot).await.map_err(|e| e.to_string())?;
            tracing::info!(bytes = total, install_secs = started.elapsed().as_secs_f64(), "snapshot received and installed");
            Ok::<_, String>(resp.vote)
        }
        .await;
        let frame = codec::encode_with(|o| match r {
            Ok(v) => {
                o.put_u8(0);
                codec::vote(o, &v);
            }
            Err(e) => {
                tracing::warn!(error = %e, "receiving a snapshot failed");
                o.put_u8(1);
                codec::put_str(o, &e);
            }
        });
        let _ = tx.send(frame).await;
    });
    Response::new(body)
}

