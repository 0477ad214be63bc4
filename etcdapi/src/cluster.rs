//! The Cluster service, and who this member is: answered from a `Membership`, which a
//! replicated capstan fills from raft and a single one (`SingleMember`) from itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::pb;
use crate::{Ctx, errors};

/// One member, as `etcdctl member list` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub learner: bool,
}

pub type Fut<'a, T> = Pin<Box<dyn Future<Output = Result<T, Status>> + Send + 'a>>;

/// The cluster as the etcd API reports and changes it.
pub trait Membership: Send + Sync + 'static {
    fn cluster_id(&self) -> u64;
    fn member_id(&self) -> u64;
    fn raft_term(&self) -> u64;
    /// The leader's id, and the raft index and applied index; `None` for a store that is
    /// its own log (then the leader is this member and the indexes are the revision).
    fn raft_status(&self) -> Option<(u64, u64, u64)>;
    fn members(&self) -> Fut<'_, Vec<Member>>;
    fn add(&self, _peer_urls: Vec<String>, _learner: bool) -> Fut<'_, Member> {
        Box::pin(async { Err(Status::failed_precondition("etcdserver: this capstan is not replicated: members cannot be added (run capstan server)")) })
    }
    fn remove(&self, _id: u64) -> Fut<'_, ()> {
        Box::pin(async { Err(Status::failed_precondition("etcdserver: this capstan is not replicated: its one member cannot be removed")) })
    }
    fn promote(&self, _id: u64) -> Fut<'_, ()> {
        Box::pin(async { Err(errors::member_not_found()) })
    }
    /// Gives member `id` new peer URLs (etcd's MemberUpdate).
    fn update(&self, _id: u64, _peer_urls: Vec<String>) -> Fut<'_, ()> {
        Box::pin(async { Err(Status::failed_precondition("etcdserver: this capstan is not replicated: its one member has no peer URLs")) })
    }
    /// Hands leadership to member `to`, answered once it leads (etcd's MoveLeader).
    fn move_leader(&self, _to: u64) -> Fut<'_, ()> {
        Box::pin(async { Err(Status::failed_precondition("etcdserver: this capstan is not replicated: it has no other member to lead")) })
    }
}

/// A capstan that is not replicated: one member, its own leader.
pub struct SingleMember {
    pub member: Member,
}

impl SingleMember {
    pub fn new(name: &str, client_urls: Vec<String>) -> SingleMember {
        SingleMember { member: Member { id: id_of(name.as_bytes()), name: name.to_string(), peer_urls: vec![], client_urls, learner: false } }
    }
}

/// A stable nonzero id from a name (FNV-1a), as etcd derives member ids from their URLs.
pub fn id_of(name: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
}

impl Membership for SingleMember {
    fn cluster_id(&self) -> u64 {
        id_of(format!("capstan/{}", self.member.name).as_bytes())
    }
    fn member_id(&self) -> u64 {
        self.member.id
    }
    fn raft_term(&self) -> u64 {
        1
    }
    fn raft_status(&self) -> Option<(u64, u64, u64)> {
        None
    }
    fn members(&self) -> Fut<'_, Vec<Member>> {
        let m = self.member.clone();
        Box::pin(async move { Ok(vec![m]) })
    }
}

fn member_out(m: Member) -> pb::Member {
    pb::Member { id: m.id, name: m.name, peer_ur_ls: m.peer_urls, client_ur_ls: m.client_urls, is_learner: m.learner }
}

pub struct Cluster(pub Arc<Ctx>);

impl Cluster {
    async fn list(&self) -> Result<Vec<pb::Member>, Status> {
        Ok(self.0.membership.members().await?.into_iter().map(member_out).collect())
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for Cluster {
    async fn member_add(&self, r: Request<pb::MemberAddRequest>) -> Result<Response<pb::MemberAddResponse>, Status> {
        let r = r.into_inner();
        let m = self.0.membership.add(r.peer_ur_ls, r.is_learner).await?;
        Ok(Response::new(pb::MemberAddResponse { header: self.0.header_now(), member: Some(member_out(m)), members: self.list().await? }))
    }

    async fn member_remove(&self, r: Request<pb::MemberRemoveRequest>) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        self.0.membership.remove(r.into_inner().id).await?;
        Ok(Response::new(pb::MemberRemoveResponse { header: self.0.header_now(), members: self.list().await? }))
    }

    async fn member_update(&self, r: Request<pb::MemberUpdateRequest>) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        let r = r.into_inner();
        self.0.membership.update(r.id, r.peer_ur_ls).await?;
        Ok(Response::new(pb::MemberUpdateResponse { header: self.0.header_now(), members: self.list().await? }))
    }

    async fn member_list(&self, _r: Request<pb::MemberListRequest>) -> Result<Response<pb::MemberListResponse>, Status> {
        Ok(Response::new(pb::MemberListResponse { header: self.0.header_now(), members: self.list().await? }))
    }

    async fn member_promote(&self, r: Request<pb::MemberPromoteRequest>) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        self.0.membership.promote(r.into_inner().id).await?;
        Ok(Response::new(pb::MemberPromoteResponse { header: self.0.header_now(), members: self.list().await? }))
    }
}
