//! The Maintenance service: Status (what `etcdctl endpoint status` and kube-apiserver read),
//! alarms, defragmentation, hashes, and leadership moves.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::Stream;
use tonic::{Request, Response, Status};

use crate::pb::{self, alarm_request::AlarmAction};
use crate::{Ctx, ETCD_VERSION, errors};

pub struct Maintenance(pub Arc<Ctx>);

pub type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

/// How long a snapshot's reader may stop taking pieces before the stream is dropped.
const SNAPSHOT_STALL: std::time::Duration = std::time::Duration::from_secs(60);

/// Bytes of the files under `dir` (the store's log and snapshots: its "database size").
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// A hash of every key's newest version at `revision`: key, mod revision and value, in key
/// order (crc32c). Equal on replicas that applied the same log.
async fn hash_at(ctx: &Ctx, revision: Option<u64>) -> Result<(u32, u64), Status> {
    let mut req = storage::RangeRequest::new(storage::KeyRange::Range { start: bytes::Bytes::from_static(b"\0"), end: bytes::Bytes::new() });
    req.revision = revision;
    let r = ctx.store.range(req).await.map_err(errors::store)?;
    let mut h = 0u32;
    for kv in &r.kvs {
        h = crc32c::crc32c_append(h, &kv.key);
        h = crc32c::crc32c_append(h, &kv.mod_revision.to_be_bytes());
        h = crc32c::crc32c_append(h, &kv.value);
    }
    Ok((h, r.revision))
}

#[tonic::async_trait]
impl pb::maintenance_server::Maintenance for Maintenance {
    async fn alarm(&self, r: Request<pb::AlarmRequest>) -> Result<Response<pb::AlarmResponse>, Status> {
        let r = r.into_inner();
        let me = self.0.membership.member_id();
        let nospace = pb::AlarmType::Nospace as i32;
        let alarms = match AlarmAction::try_from(r.action).unwrap_or(AlarmAction::Get) {
            AlarmAction::Get => {
                if self.0.nospace.load(Ordering::Relaxed) {
                    vec![pb::AlarmMember { member_id: me, alarm: nospace }]
                } else {
                    vec![]
                }
            }
            AlarmAction::Activate if r.alarm == nospace => {
                self.0.nospace.store(true, Ordering::Relaxed);
                vec![pb::AlarmMember { member_id: me, alarm: nospace }]
            }
            AlarmAction::Activate => vec![],
            AlarmAction::Deactivate if r.alarm == nospace || r.alarm == pb::AlarmType::None as i32 => {
                if self.0.nospace.swap(false, Ordering::Relaxed) { vec![pb::AlarmMember { member_id: me, alarm: nospace }] } else { vec![] }
            }
            AlarmAction::Deactivate => vec![],
        };
        Ok(Response::new(pb::AlarmResponse { header: self.0.header_now(), alarms }))
    }

    async fn status(&self, _r: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let ctx = &self.0;
        let rev = ctx.store.revision();
        let (leader, index, applied) = ctx.membership.raft_status().unwrap_or((ctx.membership.member_id(), rev, rev));
        let stats = ctx.store.stats().await;
        let mut errors = Vec::new();
        if ctx.nospace.load(Ordering::Relaxed) {
            errors.push(format!("memberID:{} alarm:NOSPACE", ctx.membership.member_id()));
        }
        Ok(Response::new(pb::StatusResponse {
            header: ctx.header(rev),
            version: ETCD_VERSION.into(),
            db_size: dir_bytes(&ctx.data_dir) as i64,
            leader,
            raft_index: index,
            raft_term: ctx.membership.raft_term(),
            raft_applied_index: applied,
            errors,
            db_size_in_use: (stats.key_bytes + stats.value_bytes + stats.index_overhead_bytes) as i64,
            is_learner: false,
            storage_version: ETCD_VERSION.into(),
            db_size_quota: 0,
        }))
    }

    async fn defragment(&self, _r: Request<pb::DefragmentRequest>) -> Result<Response<pb::DefragmentResponse>, Status> {
        // capstan has no B-tree pages to compact: what frees space here is a snapshot, after
        // which the log before it is dropped.
        self.0.store.snapshot().await.map_err(errors::store)?;
        Ok(Response::new(pb::DefragmentResponse { header: self.0.header_now() }))
    }

    async fn hash(&self, _r: Request<pb::HashRequest>) -> Result<Response<pb::HashResponse>, Status> {
        let (hash, rev) = hash_at(&self.0, None).await?;
        Ok(Response::new(pb::HashResponse { header: self.0.header(rev), hash }))
    }

    async fn hash_kv(&self, r: Request<pb::HashKvRequest>) -> Result<Response<pb::HashKvResponse>, Status> {
        let at = r.into_inner().revision;
        let (hash, rev) = hash_at(&self.0, (at > 0).then_some(at as u64)).await?;
        Ok(Response::new(pb::HashKvResponse { header: self.0.header_now(), hash, compact_revision: self.0.store.compact_revision() as i64, hash_revision: rev as i64 }))
    }

    type SnapshotStream = SnapshotStream;

    /// A snapshot taken now, streamed as capstan's backup file (`storage::backup`: what
    /// `etcdctl snapshot save` writes and `capstan snapshot restore` reads) in pieces of about
    /// 1 MiB, read from disk on a blocking thread, four pieces ahead at most.
    async fn snapshot(&self, _r: Request<pb::SnapshotRequest>) -> Result<Response<SnapshotStream>, Status> {
        let stream = self.0.store.snapshot_stream().await.map_err(errors::store)?;
        let header = self.0.header(stream.revision());
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut left = stream.len();
            let mut stream = Some(stream);
            loop {
                // Pieces are read on a blocking thread; a client that stops reading for a
                // minute is given up on, and the snapshot's files are let go.
                let mut s = stream.take().expect("the stream is back after each piece");
                let (s, piece) = match tokio::task::spawn_blocking(move || {
                    let p = s.next_piece();
                    (s, p)
                })
                .await
                {
                    Ok(x) => x,
                    Err(_) => return,
                };
                stream = Some(s);
                let piece = match piece {
                    Ok(Some(p)) => p,
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(Status::internal(format!("etcdserver: reading the snapshot: {e}")))).await;
                        return;
                    }
                };
                left = left.saturating_sub(piece.len() as u64);
                let resp = pb::SnapshotResponse { header, remaining_bytes: left, blob: piece, version: ETCD_VERSION.into() };
                match tokio::time::timeout(SNAPSHOT_STALL, tx.send(Ok(resp))).await {
                    Ok(Ok(())) => {}
                    _ => return,
                }
            }
        });
        let out = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
        Ok(Response::new(Box::pin(out)))
    }

    async fn move_leader(&self, r: Request<pb::MoveLeaderRequest>) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        self.0.membership.move_leader(r.into_inner().target_id).await?;
        Ok(Response::new(pb::MoveLeaderResponse { header: self.0.header_now() }))
    }
}
