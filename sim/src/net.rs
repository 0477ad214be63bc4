//! The simulated network between replicas: every message is a call into the target's raft,
//! delivered after a latency drawn from the world's generator, or lost, delivered twice, held
//! back (so that later messages overtake it), or refused by a partition or a stopped process.
//! A message in flight when its link is cut loses its answer.

use std::future::Future;
use std::time::Duration;
use std::sync::Arc;

use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};

use crate::rt::{Cfg, Raft, Vote, spawn};
use crate::state_machine::{SnapData, Snapshot};
use crate::world::World;

pub struct Factory {
    pub me: u64,
    pub world: Arc<World>,
}

impl RaftNetworkFactory<Cfg> for Factory {
    type Network = Conn;

    async fn new_client(&mut self, target: u64, _node: &()) -> Conn {
        Conn { me: self.me, to: target, world: self.world.clone() }
    }
}

pub struct Conn {
    me: u64,
    to: u64,
    world: Arc<World>,
}

enum Fate {
    Refused(&'static str),
    Lost,
    Deliver { there: Duration, back: Duration, duplicate: Option<Duration>, lose_answer: bool },
}

impl Conn {
    fn fate(&self) -> Fate {
        let w = &self.world;
        if !w.connected(self.me, self.to) {
            return Fate::Refused("partitioned");
        }
        if w.handle(self.to).is_none() {
            return Fate::Refused("connection refused (process down)");
        }
        let r = w.net.lock().unwrap().rates;
        if w.chance(r.drop) {
            return Fate::Lost;
        }
        let leg = || {
            let mut us = w.range(100, 1_000);
            if w.chance(r.delay) {
                us += w.range(0, r.delay_max_ms * 1000);
            }
            Duration::from_micros(us)
        };
        let (there, back) = (leg(), leg());
        let duplicate = w.chance(r.duplicate).then(|| Duration::from_micros(w.range(0, 20_000)));
        Fate::Deliver { there, back, duplicate, lose_answer: w.chance(r.drop_answer) }
    }

    /// Delivers `req` to the target's raft through `handle`, with the network's faults.
    async fn call<Q, A, F, Fut>(&self, what: &'static str, req: Q, ttl: Duration, handle: F) -> Result<A, String>
    where
        Q: Clone + Send + 'static,
        A: Send + 'static,
        F: Fn(Raft, Q) -> Fut + Send + Sync + Clone + 'static,
        Fut: Future<Output = Result<A, String>> + Send + 'static,
    {
        let (me, to) = (self.me, self.to);
        match self.fate() {
            Fate::Refused(why) => {
                tokio::time::sleep(Duration::from_micros(self.world.range(100, 1_000))).await;
                Err(format!("{what} n{me}->n{to}: {why}"))
            }
            Fate::Lost => {
                self.world.log("net", format!("{what} n{me}->n{to} lost"));
                tokio::time::sleep(ttl).await;
                Err(format!("{what} n{me}->n{to}: timed out"))
            }
            Fate::Deliver { there, back, duplicate, lose_answer } => {
                if let Some(extra) = duplicate {
                    let (w, h, q) = (self.world.clone(), handle.clone(), req.clone());
                    self.world.log("net", format!("{what} n{me}->n{to} duplicated"));
                    spawn(async move {
                        tokio::time::sleep(there + extra).await;
                        if w.connected(me, to)
                            && let Some((raft, _)) = w.handle(to)
                        {
                            let _ = h(raft, q).await;
                        }
                    });
                }
                tokio::time::sleep(there).await;
                let Some((raft, _)) = self.world.handle(to).filter(|_| self.world.connected(me, to)) else {
                    return Err(format!("{what} n{me}->n{to}: connection reset"));
                };
                let answer = handle(raft, req).await;
                tokio::time::sleep(back).await;
                if lose_answer || !self.world.connected(me, to) {
                    self.world.log("net", format!("{what} n{me}->n{to}: answer lost"));
                    return Err(format!("{what} n{me}->n{to}: answer lost"));
                }
                answer
            }
        }
    }
}

fn unreachable(e: String) -> RPCError<Cfg> {
    RPCError::Unreachable(Unreachable::from_string(e))
}

impl RaftNetworkV2<Cfg> for Conn {
    type SnapshotData = SnapData;

    async fn append_entries(&mut self, rpc: AppendEntriesRequest<Cfg>, option: RPCOption) -> Result<AppendEntriesResponse<Cfg>, RPCError<Cfg>> {
        self.call("append", rpc, option.soft_ttl(), |raft: Raft, q| async move { raft.append_entries(q).await.map_err(|e| e.to_string()) })
            .await
            .map_err(unreachable)
    }

    async fn vote(&mut self, rpc: VoteRequest<Cfg>, option: RPCOption) -> Result<VoteResponse<Cfg>, RPCError<Cfg>> {
        self.call("vote", rpc, option.soft_ttl(), |raft: Raft, q| async move { raft.vote(q).await.map_err(|e| e.to_string()) })
            .await
            .map_err(unreachable)
    }

    async fn pre_vote(&mut self, rpc: VoteRequest<Cfg>, option: RPCOption) -> Result<VoteResponse<Cfg>, RPCError<Cfg>> {
        self.call("pre-vote", rpc, option.soft_ttl(), |raft: Raft, q| async move { raft.pre_vote(q).await.map_err(|e| e.to_string()) })
            .await
            .map_err(unreachable)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<Cfg>, StreamingError<Cfg>> {
        let (meta, data) = (snapshot.meta, snapshot.snapshot);
        let send = self.call("snapshot", (vote, meta, data), option.hard_ttl(), |raft: Raft, (vote, meta, data)| async move {
            raft.install_full_snapshot(vote, Snapshot { meta, snapshot: data }).await.map_err(|e| e.to_string())
        });
        tokio::select! {
            biased;
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = send => r.map_err(|e| StreamingError::Unreachable(Unreachable::from_string(e))),
        }
    }
}
