//! The faults: partitions and their healing, processes killed and restarted, power cuts (of
//! one replica or of all), slow disks, failed fsyncs, full disks, wall clocks that jump (within
//! `lease::SKEW_BOUND` of each other) and monotonic clocks that change their drift (within
//! `store_lease::DRIFT_BOUND_PPM`), and a lossy network (drops, duplicates, delays that
//! reorder). Every choice comes from the world's generator.

use std::sync::Arc;
use std::time::Duration;

use crate::cluster::{self, Stop};
use crate::disk::DiskFaults;
use crate::rt::spawn;
use crate::world::{NetRates, World};

/// Restarts replica `id` after `after`, unless the run has already restarted it.
fn restart_later(world: &Arc<World>, id: u64, after: Duration) {
    let w = world.clone();
    spawn(async move {
        tokio::time::sleep(after).await;
        if w.handle(id).is_none() {
            cluster::start(&w, id).await;
        }
    });
}

/// Runs faults until `until`.
pub async fn run(world: Arc<World>, until: tokio::time::Instant) {
    while tokio::time::Instant::now() < until && !world.failed() {
        tokio::time::sleep(Duration::from_millis(world.range(100, 1500))).await;
        // A replica whose raft stopped on a storage error is a process that exits: restart it.
        for id in cluster::stopped_on_error(&world) {
            cluster::stop(&world, id, Stop::Kill).await;
            restart_later(&world, id, Duration::from_millis(world.range(50, 500)));
        }
        let ids = world.ids();
        let n = ids.len() as u64;
        match world.range(0, 100) {
            0..20 => {
                // A partition: one replica, or a random group, against the rest, healed later
                // (none while an aimed one runs).
                if !world.protected.lock().unwrap().is_empty() {
                    continue;
                }
                let mut group = Vec::new();
                let holder = world.checks.lease_holder().filter(|_| world.chance(0.5));
                if let Some(h) = holder {
                    // Aimed: the Lease holder's replica cut off, alive, for longer than a Lease,
                    // while the rest can elect another holder (no process fault meanwhile).
                    group.push(h);
                    world.protected.lock().unwrap().extend(ids.iter().copied());
                    // And the clocks as far apart as the bound allows: the holder's behind,
                    // the others' ahead.
                    let half = crate::lease::SKEW_BOUND.as_micros() as i64 / 2;
                    let mut skews = world.skew_us.lock().unwrap();
                    for id in &ids {
                        skews.insert(*id, if *id == h { -half } else { half });
                    }
                    drop(skews);
                    world.log("fault", format!("wall clocks: n{h}'s {half} µs behind true time, the others' {half} µs ahead"));
                } else if world.chance(0.5) {
                    group.push(ids[world.range(0, n) as usize]);
                } else {
                    for id in &ids {
                        if world.chance(0.4) {
                            group.push(*id);
                        }
                    }
                }
                if group.is_empty() || group.len() == ids.len() {
                    continue;
                }
                let mut pairs = Vec::new();
                for a in &group {
                    for b in ids.iter().filter(|b| !group.contains(b)) {
                        pairs.push((*a.min(b), *a.max(b)));
                    }
                }
                world.net.lock().unwrap().cut.extend(pairs.iter().copied());
                world.log("fault", format!("partition {group:?} from the rest"));
                let w = world.clone();
                // Most partitions are brief; some outlast a Lease (15 s).
                let heal = Duration::from_millis(if holder.is_some() {
                    world.range(15_000, 25_000)
                } else if world.chance(0.25) {
                    world.range(5_000, 25_000)
                } else {
                    world.range(200, 3000)
                });
                spawn(async move {
                    tokio::time::sleep(heal).await;
                    let mut net = w.net.lock().unwrap();
                    for p in &pairs {
                        net.cut.remove(p);
                    }
                    drop(net);
                    if holder.is_some() {
                        w.protected.lock().unwrap().clear();
                    }
                    w.log("fault", format!("partition of {group:?} healed"));
                });
            }
            20..40 => {
                let Some(id) = unprotected(&world) else { continue };
                cluster::stop(&world, id, Stop::Kill).await;
                // Most restarts are quick; some machines stay down longer than a Lease.
                restart_later(&world, id, Duration::from_millis(if world.chance(0.15) { world.range(10_000, 30_000) } else { world.range(100, 2000) }));
            }
            40..52 => {
                let Some(id) = unprotected(&world) else { continue };
                cluster::stop(&world, id, Stop::PowerCut).await;
                restart_later(&world, id, Duration::from_millis(world.range(100, 2000)));
            }
            52..57 => {
                let ids: Vec<u64> = ids.iter().copied().filter(|id| !world.protected.lock().unwrap().contains(id)).collect();
                world.log("fault", format!("power cut of replicas {ids:?}"));
                for id in &ids {
                    cluster::stop(&world, *id, Stop::PowerCut).await;
                }
                for id in &ids {
                    restart_later(&world, *id, Duration::from_millis(world.range(100, 1000)));
                }
            }
            57..77 => {
                let r = if world.chance(0.3) {
                    NetRates::default()
                } else {
                    NetRates {
                        drop: world.range(0, 15) as f64 / 100.0,
                        drop_answer: world.range(0, 10) as f64 / 100.0,
                        duplicate: world.range(0, 10) as f64 / 100.0,
                        delay: world.range(0, 30) as f64 / 100.0,
                        delay_max_ms: world.range(1, 150),
                    }
                };
                world.log("fault", format!("network: {r:?}"));
                world.net.lock().unwrap().rates = r;
            }
            77..82 => {
                // A wall clock jumps (forward or back), within the skew bound.
                let id = ids[world.range(0, n) as usize];
                let skew = random_skew(&world);
                world.log("fault", format!("n{id}'s wall clock jumps to {skew} µs off true time"));
                world.skew_us.lock().unwrap().insert(id, skew);
                // And its monotonic clock's rate changes (it never jumps): drawn from the seed,
                // not the generator, so every other choice of the run stays as it was.
                let ppm = world.drift_ppm_for(id, world.now_us());
                world.log("fault", format!("n{id}'s monotonic clock now runs {ppm} ppm off true time"));
                world.set_drift(id, ppm);
            }
            82..100 => {
                let id = ids[world.range(0, n) as usize];
                let disk = world.replicas.lock().unwrap()[&id].disk.clone();
                let f = match world.range(0, 3) {
                    0 => DiskFaults { slow: true, ..Default::default() },
                    1 => DiskFaults { fail_sync: true, ..Default::default() },
                    _ => DiskFaults { full: true, ..Default::default() },
                };
                world.log("fault", format!("n{id} disk: {f:?}"));
                disk.set_faults(f);
                let w = world.clone();
                let clear = Duration::from_millis(world.range(100, 2000));
                spawn(async move {
                    tokio::time::sleep(clear).await;
                    let mut f = disk.faults();
                    f.slow = false;
                    f.full = false;
                    disk.set_faults(f);
                    w.log("fault", format!("n{id} disk: slow or full cleared"));
                });
            }
            _ => unreachable!(),
        }
    }
}

/// Ends every fault: the network heals, disks recover, every replica runs.
pub async fn heal(world: &Arc<World>) {
    {
        let mut net = world.net.lock().unwrap();
        net.cut.clear();
        net.rates = NetRates::default();
    }
    let ids = world.ids();
    for id in &ids {
        let disk = world.replicas.lock().unwrap()[id].disk.clone();
        disk.set_faults(DiskFaults::default());
    }
    for id in cluster::stopped_on_error(world) {
        cluster::stop(world, id, Stop::Kill).await;
    }
    for id in ids {
        if world.handle(id).is_none() {
            cluster::start(world, id).await;
        }
    }
    world.log("fault", "faults stopped: network healed, disks cleared, every replica running".into());
}

/// A wall clock's offset from true time: within half the skew bound either way, so any two
/// differ by at most the bound.
pub fn random_skew(world: &World) -> i64 {
    let half = crate::lease::SKEW_BOUND.as_micros() as i64 / 2;
    world.range(0, 2 * half as u64 + 1) as i64 - half
}

/// A running replica no aimed fault is holding alive.
fn unprotected(world: &World) -> Option<u64> {
    let protected = world.protected.lock().unwrap().clone();
    let ids: Vec<u64> = world.up().into_iter().map(|(id, _, _)| id).filter(|id| !protected.contains(id)).collect();
    world.pick(&ids)
}
