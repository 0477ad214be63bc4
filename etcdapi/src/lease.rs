//! The Lease service: grant, revoke, keep-alive (a stream), time-to-live (with the keys
//! attached) and the list, on the store's leases. Answers for a lease that is gone are
//! etcd's: a keep-alive says TTL 0, a time-to-live says TTL -1.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::pb;
use crate::{Ctx, errors};

pub struct Lease(pub Arc<Ctx>);

/// etcd's longest lease (`MaxLeaseTTL`, 9,000,000,000 s).
const MAX_TTL: i64 = 9_000_000_000;
/// etcd's shortest with its default election timeout: shorter asks get this.
const MIN_TTL: i64 = 2;

pub type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::lease_server::Lease for Lease {
    async fn lease_grant(&self, r: Request<pb::LeaseGrantRequest>) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let r = r.into_inner();
        if r.ttl > MAX_TTL {
            return Err(errors::lease_ttl_too_large());
        }
        if r.id < 0 {
            return Err(Status::invalid_argument("etcdserver: lease ID must be positive"));
        }
        let g = self.0.store.lease_grant(r.id, r.ttl.max(MIN_TTL)).await.map_err(|e| self.0.noted(e))?;
        Ok(Response::new(pb::LeaseGrantResponse { header: self.0.header_now(), id: g.id, ttl: g.ttl_seconds, error: String::new() }))
    }

    async fn lease_revoke(&self, r: Request<pb::LeaseRevokeRequest>) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let rev = self.0.store.lease_revoke(r.into_inner().id).await.map_err(errors::store)?;
        Ok(Response::new(pb::LeaseRevokeResponse { header: self.0.header(rev) }))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(&self, r: Request<Streaming<pb::LeaseKeepAliveRequest>>) -> Result<Response<KeepAliveStream>, Status> {
        let ctx = self.0.clone();
        let mut inbound = r.into_inner();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = inbound.message() => m,
                    _ = tx.closed() => return,
                };
                let Ok(Some(req)) = msg else { return };
                let ttl = match ctx.store.lease_keep_alive(req.id).await {
                    Ok(ttl) => ttl,
                    Err(storage::StoreError::LeaseNotFound(_)) => 0,
                    Err(e) => {
                        let _ = tx.send(Err(errors::store(e))).await;
                        return;
                    }
                };
                if tx.send(Ok(pb::LeaseKeepAliveResponse { header: ctx.header_now(), id: req.id, ttl })).await.is_err() {
                    return;
                }
            }
        });
        let out = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
        Ok(Response::new(Box::pin(out)))
    }

    async fn lease_time_to_live(&self, r: Request<pb::LeaseTimeToLiveRequest>) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let r = r.into_inner();
        let (granted, left) = match self.0.store.lease_time_to_live(r.id).await {
            Ok(t) => t,
            Err(storage::StoreError::LeaseNotFound(_)) => {
                return Ok(Response::new(pb::LeaseTimeToLiveResponse { header: self.0.header_now(), id: r.id, ttl: -1, granted_ttl: 0, keys: vec![] }));
            }
            Err(e) => return Err(errors::store(e)),
        };
        let keys = if r.keys { self.0.store.lease_keys(r.id).await.map_err(errors::store)?.into_iter().map(|k| k.to_vec()).collect() } else { vec![] };
        Ok(Response::new(pb::LeaseTimeToLiveResponse { header: self.0.header_now(), id: r.id, ttl: left, granted_ttl: granted, keys }))
    }

    async fn lease_leases(&self, _r: Request<pb::LeaseLeasesRequest>) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        let ids = self.0.store.lease_ids().await.map_err(errors::store)?;
        Ok(Response::new(pb::LeaseLeasesResponse { header: self.0.header_now(), leases: ids.into_iter().map(|id| pb::LeaseStatus { id }).collect() }))
    }
}
