//! Who is in the cluster, and changes to it: a member joining a running cluster finds itself
//! in the membership (`join`); the leader makes the changes `capstan member` and etcd's Cluster
//! service ask for (`change`, served at `POST /raft/members` and by `MembershipHandle` inside
//! the process); every member keeps its name and API URL recorded (`announce`).
//!
//! Members are named by their name or, for one added by peer URL alone (etcd's MemberAdd
//! carries no name), by their id until they start and announce the name they run under.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use openraft::ChangeMembers;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};

use super::{Inner, ReplicaConfig, StartError, body_bytes, json_response};
use crate::cluster::{self, Identity};
use crate::network::{self, Body, PeerNetworkFactory, Wire};
use crate::types::*;

/// What a change does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    /// A new member, a learner (or a voter at once with `voter`), by name or by peer URL alone.
    Add,
    /// A learner becomes a voter.
    Promote,
    Remove,
    /// A member's peer URL changes (etcd's MemberUpdate); the member restarts on it.
    Update,
    /// A member records its name (if it was added without one), its API URL and its etcd
    /// client URL.
    ApiUrl,
}

/// A membership change, as `POST /raft/members` carries it (JSON).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Change {
    pub op: Op,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The member's id (hex): names a member that has no name yet.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(default, rename = "peerURL", skip_serializing_if = "String::is_empty")]
    pub peer_url: String,
    #[serde(default, rename = "apiURL", skip_serializing_if = "String::is_empty")]
    pub api_url: String,
    /// Where the member serves etcd's API (`api-url` records it with the API URL).
    #[serde(default, rename = "clientURL", skip_serializing_if = "String::is_empty")]
    pub client_url: String,
    /// `add`: a voter at once (etcd's MemberAdd without `--learner`), if the members still
    /// running would be a quorum of the voters with it.
    #[serde(default)]
    pub voter: bool,
}

impl Change {
    pub fn new(op: Op) -> Change {
        Change { op, name: String::new(), id: String::new(), peer_url: String::new(), api_url: String::new(), client_url: String::new(), voter: false }
    }

    pub fn on_id(op: Op, id: NodeId) -> Change {
        Change { id: format!("{id:016x}"), ..Change::new(op) }
    }
}

/// Why a change was not made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error("no leader")]
    NoLeader,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    /// A member with that name (or id) is there already.
    #[error("{0}")]
    Exists(String),
    /// Another member has that peer URL.
    #[error("{0}")]
    PeerUrlTaken(String),
    #[error("{0}")]
    LastVoter(String),
    /// A voter has not answered the leader lately: no member is added (etcd's strict
    /// reconfiguration check).
    #[error("{0}")]
    Unhealthy(String),
    /// A learner is there already (etcd allows one at a time).
    #[error("{0}")]
    TooManyLearners(String),
    /// Promote names a voter.
    #[error("{0}")]
    NotLearner(String),
    /// Promote names a learner that has not caught up with the leader's log.
    #[error("{0}")]
    LearnerNotReady(String),
    /// Raft did not make it (leadership moved, a timeout, an unreachable leader).
    #[error("{0}")]
    Failed(String),
}

impl ChangeError {
    fn reason(&self) -> &'static str {
        match self {
            ChangeError::NoLeader => "NoLeader",
            ChangeError::BadRequest(_) => "BadRequest",
            ChangeError::NotFound(_) => "NotFound",
            ChangeError::Exists(_) => "Exists",
            ChangeError::PeerUrlTaken(_) => "PeerUrlTaken",
            ChangeError::LastVoter(_) => "LastVoter",
            ChangeError::Unhealthy(_) => "Unhealthy",
            ChangeError::TooManyLearners(_) => "TooManyLearners",
            ChangeError::NotLearner(_) => "NotLearner",
            ChangeError::LearnerNotReady(_) => "LearnerNotReady",
            ChangeError::Failed(_) => "Failed",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ChangeError::NoLeader | ChangeError::Unhealthy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ChangeError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ChangeError::NotFound(_) => StatusCode::NOT_FOUND,
            ChangeError::Exists(_)
            | ChangeError::PeerUrlTaken(_)
            | ChangeError::LastVoter(_)
            | ChangeError::TooManyLearners(_)
            | ChangeError::NotLearner(_)
            | ChangeError::LearnerNotReady(_)
            | ChangeError::Failed(_) => StatusCode::CONFLICT,
        }
    }

    /// The error a leader's answer carries.
    fn from_answer(status: StatusCode, body: &[u8]) -> ChangeError {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let msg = v["error"].as_str().map(str::to_string).unwrap_or_else(|| format!("the leader answered {status}"));
        match v["reason"].as_str().unwrap_or("") {
            "NoLeader" => ChangeError::NoLeader,
            "BadRequest" => ChangeError::BadRequest(msg),
            "NotFound" => ChangeError::NotFound(msg),
            "Exists" => ChangeError::Exists(msg),
            "PeerUrlTaken" => ChangeError::PeerUrlTaken(msg),
            "LastVoter" => ChangeError::LastVoter(msg),
            "Unhealthy" => ChangeError::Unhealthy(msg),
            "TooManyLearners" => ChangeError::TooManyLearners(msg),
            "NotLearner" => ChangeError::NotLearner(msg),
            "LearnerNotReady" => ChangeError::LearnerNotReady(msg),
            _ => ChangeError::Failed(msg),
        }
    }
}

/// Membership changes from inside the process (etcd's Cluster service): done by the leader,
/// forwarded to it from any other member.
#[derive(Clone)]
pub struct MembershipHandle {
    pub(super) inner: Arc<Inner>,
}

impl MembershipHandle {
    /// Makes `c` on the leader; returns the id of the member changed.
    pub async fn change(&self, c: &Change) -> Result<NodeId, ChangeError> {
        let i = &self.inner;
        match i.leader() {
            Some(l) if l == i.id => change(i, c).await.map(|(id, _)| id),
            Some(l) => {
                let client = i.client_of(l).ok_or_else(|| ChangeError::Failed("the leader is not in the membership".into()))?;
                let body = serde_json::to_vec(c).map_err(|e| ChangeError::BadRequest(e.to_string()))?;
                let (status, bytes) = client.unary_raw("/raft/members", Bytes::from(body), Duration::from_secs(10)).await.map_err(|e| ChangeError::Failed(e.to_string()))?;
                if status != StatusCode::OK {
                    return Err(ChangeError::from_answer(status, &bytes));
                }
                let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
                let id = v["id"].as_str().and_then(|h| u64::from_str_radix(h, 16).ok()).ok_or_else(|| ChangeError::Failed("the leader's answer names no member id".into()))?;
                // As etcd, answer once this member knows the change too, so that what it lists
                // next (etcdctl prints the membership from this answer) includes it. The change
                // is committed either way: a member slow to hear of it answers after the wait.
                if let Some(at) = v["membershipIndex"].as_u64() {
                    let _ = i.raft().wait(Some(MEMBERSHIP_ECHO)).metrics(|m| m.membership_config.log_id().is_some_and(|l| l.index >= at), "the membership change to reach this member").await;
                }
                Ok(id)
            }
            None => Err(ChangeError::NoLeader),
        }
    }
}

/// How long a member that forwarded a membership change waits to hear of it before answering.
const MEMBERSHIP_ECHO: Duration = Duration::from_secs(5);

/// How long a member joining a running cluster looks for itself in the membership (the
/// `member add` that names it may still be committing) before it gives up.
const JOIN_LOOKUP: Duration = Duration::from_secs(15);

/// A member joining a running cluster (`--initial-cluster-state existing`, first start): asks
/// the other members of `--initial-cluster` for the membership and finds itself in it by its
/// peer URL (a member added through etcd's MemberAdd has no name yet, and an id derived from
/// that URL) or by its name (`capstan member add`). Records the cluster and its id in
/// `CLUSTER`, and returns them. Refuses, naming the mismatch, when the membership gives its
/// peer URL to another name or its name to another peer URL, and when it is not a member.
pub(super) async fn join(cfg: &ReplicaConfig) -> Result<(u64, NodeId), StartError> {
    let mine = network::authority(&cfg.peer_url);
    let peers: Vec<&String> = cfg.initial_cluster.iter().filter(|(n, u)| *n != cfg.name && network::authority(u) != mine).map(|(_, u)| u).collect();
    if peers.is_empty() {
        return Err(StartError::Config(format!(
            "--initial-cluster-state existing: --initial-cluster names no running member besides {} to join through",
            cfg.name
        )));
    }
    let wire = Wire { cluster: Arc::new(AtomicU64::new(0)), me: 0, left_out_at: Arc::new(AtomicU64::new(0)) };
    let net = PeerNetworkFactory::new(wire, cfg.connector.clone(), None);
    let until = Instant::now() + JOIN_LOOKUP;
    let mut last = String::from("no member answered");
    loop {
        for url in &peers {
            let answer = net.client(0, url).unary_raw("/raft/status", Bytes::new(), Duration::from_secs(3)).await;
            let status: serde_json::Value = match answer {
                Ok((StatusCode::OK, body)) => serde_json::from_slice(&body).unwrap_or_default(),
                Ok((code, _)) => {
                    last = format!("{url} answered {code}");
                    continue;
                }
                Err(e) => {
                    last = format!("{url}: {e}");
                    continue;
                }
            };
            match find_self(&status, &cfg.name, &mine) {
                Ok(Some((cluster, id))) => {
                    let me = Identity { cluster, name: cfg.name.clone(), id };
                    me.write(&cfg.data_dir).map_err(|e| StartError::Config(format!("writing {}/CLUSTER: {e}", cfg.data_dir.display())))?;
                    tracing::info!(member = %cfg.name, id = format!("{id:016x}"), cluster = format!("{cluster:016x}"), "found this member in the cluster's membership");
                    return Ok((cluster, id));
                }
                Ok(None) => last = format!("{url} lists no member named {} or with peer URL {}", cfg.name, cfg.peer_url),
                Err(mismatch) => return Err(StartError::Mismatch(mismatch)),
            }
        }
        if Instant::now() >= until {
            return Err(StartError::Config(format!(
                "member {} (peer URL {}) is not in the membership of the cluster it joins ({last}): add it first (capstan member add {} --peer-url {}, or etcdctl member add {} --peer-urls={})",
                cfg.name, cfg.peer_url, cfg.name, cfg.peer_url, cfg.name, cfg.peer_url
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// This member's cluster and id in a peer's `/raft/status`: the member with its peer URL
/// (nameless: added by URL; or already bearing its name), else the one with its name.
fn find_self(status: &serde_json::Value, name: &str, peer_authority: &str) -> Result<Option<(u64, NodeId)>, String> {
    let Some(cluster) = status["cluster"].as_str().and_then(|c| u64::from_str_radix(c, 16).ok()).filter(|c| *c != 0) else {
        return Ok(None);
    };
    let members = status["members"].as_array().cloned().unwrap_or_default();
    let field = |m: &serde_json::Value, k: &str| m[k].as_str().unwrap_or("").to_string();
    let id_of = |m: &serde_json::Value| u64::from_str_radix(&field(m, "id"), 16).ok().filter(|i| *i != 0);
    if let Some(m) = members.iter().find(|m| network::authority(&field(m, "peerURL")) == peer_authority) {
        let listed = field(m, "name");
        if !listed.is_empty() && listed != name {
            return Err(format!("the cluster {cluster:016x} gives the peer URL {} to member {listed}, not to {name}", field(m, "peerURL")));
        }
        // Added by URL alone: the name it would announce must not be another member's.
        if let Some(other) = members.iter().find(|o| field(o, "name") == name && network::authority(&field(o, "peerURL")) != peer_authority) {
            return Err(format!("the cluster {cluster:016x} already has a member named {name}, at the peer URL {}", field(other, "peerURL")));
        }
        return Ok(id_of(m).map(|id| (cluster, id)));
    }
    if let Some(m) = members.iter().find(|m| field(m, "name") == name) {
        return Err(format!(
            "the cluster {cluster:016x} lists member {name} with the peer URL {}, but it listens for peers at {peer_authority} (update the member's peer URL first: etcdctl member update)",
            field(m, "peerURL")
        ));
    }
    Ok(None)
}


/// Keeps this member's name, API URL and etcd client URL in the membership: a member added by
/// peer URL alone has no name until it says, the member that initializes a cluster knows only
/// its own API URL, and one added by `member add` none. Asks the leader (a membership change) whenever the
/// committed membership says otherwise.
pub(super) async fn announce(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(i) = inner.upgrade() else { return };
        if i.failed.get().is_some() || i.removed.load(Ordering::SeqCst) {
            continue;
        }
        let Some(m) = i.member(i.id) else { continue };
        let api_url_differs = !i.cfg.api_url.is_empty() && m.api_url != i.cfg.api_url;
        let client_url = i.client_url.get().cloned().unwrap_or_default();
        let client_url_differs = !client_url.is_empty() && m.client_url != client_url;
        if !m.name.is_empty() && !api_url_differs && !client_url_differs {
            continue;
        }
        let c = Change { name: i.name.clone(), api_url: i.cfg.api_url.clone(), client_url, ..Change::on_id(Op::ApiUrl, i.id) };
        if let Err(e) = (MembershipHandle { inner: i.clone() }).change(&c).await {
            tracing::debug!(error = %e, "recording this member's name and URLs in the membership failed; retrying");
        }
    }
}

/// `GET /raft/members` lists; `POST` with a `Change` makes it (on the leader; elsewhere the
/// answer, 421, names the leader).
pub(super) async fn members(i: Arc<Inner>, req: Request<Incoming>) -> Response<Body> {
    if req.method() == hyper::Method::GET {
        return json_response(StatusCode::OK, i.status());
    }
    let b = match body_bytes(req, 1 << 16).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let c: Change = match serde_json::from_slice(&b) {
        Ok(c) => c,
        Err(e) => return json_response(StatusCode::BAD_REQUEST, serde_json::json!({"error": format!("not a membership change: {e}"), "reason": "BadRequest"})),
    };
    if i.leader() != Some(i.id) {
        let leader = i.leader().and_then(|l| i.member(l));
        return json_response(
            StatusCode::MISDIRECTED_REQUEST,
            serde_json::json!({"error": "not the leader", "leader": leader.as_ref().map(|m| m.name.clone()), "leaderPeerURL": leader.map(|m| m.peer_url)}),
        );
    }
    match change(&i, &c).await {
        Ok((id, name)) => {
            let at = i.raft().metrics().borrow_watched().membership_config.log_id().map(|l| l.index);
            json_response(StatusCode::OK, serde_json::json!({"ok": true, "member": name, "id": format!("{id:016x}"), "membershipIndex": at, "status": i.status()}))
        }
        Err(e) => json_response(e.status(), serde_json::json!({"error": e.to_string(), "reason": e.reason()})),
    }
}

fn valid_url(what: &str, url: &str) -> Result<(), ChangeError> {
    // No control characters: the membership's encoding separates two URLs with a NUL.
    if (url.starts_with("http://") || url.starts_with("https://")) && network::authority(url).contains(':') && !url.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(ChangeError::BadRequest(format!("{what} {url:?} is not http(s)://HOST:PORT")))
    }
}

/// How a member is called in messages: its name, or its id while it has none.
fn called(id: NodeId, m: &Member) -> String {
    if m.name.is_empty() { format!("{id:016x}") } else { m.name.clone() }
}

/// The member `c` names (by id, else by name), and what the membership says of it.
fn target(i: &Inner, c: &Change) -> Result<(NodeId, Option<Member>), ChangeError> {
    if !c.id.is_empty() {
        let id = u64::from_str_radix(&c.id, 16).map_err(|_| ChangeError::BadRequest(format!("member id {:?} is not hexadecimal", c.id)))?;
        return Ok((id, i.member(id)));
    }
    if c.name.is_empty() {
        return Err(ChangeError::BadRequest("a member name or id is required".into()));
    }
    let nodes = i.raft().metrics().borrow_watched().membership_config.membership().nodes().map(|(id, m)| (*id, m.clone())).collect::<Vec<_>>();
    if let Some((id, m)) = nodes.into_iter().find(|(_, m)| m.name == c.name) {
        return Ok((id, Some(m)));
    }
    let id = cluster::member_id(&c.name);
    Ok((id, i.member(id)))
}

/// Another member than `except` that has `url` as its peer URL.
fn holder_of(i: &Inner, url: &str, except: Option<NodeId>) -> Option<String> {
    let want = network::authority(url);
    let membership = i.raft().metrics().borrow_watched().membership_config.clone();
    membership.membership().nodes().find(|(id, m)| Some(**id) != except && network::authority(&m.peer_url) == want).map(|(id, m)| called(*id, m))
}

/// How recently the leader must have heard from every voter for a member to be added (etcd's
/// `HealthInterval`).
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);

/// etcd's strict reconfiguration check before a member is added (`mayAddMember`), a voter or
/// a learner alike: every voter answers the leader now, so that a new voter, not yet running,
/// cannot cost the quorum, and a learner's catching up does not load a cluster already short
/// of a member (remove a dead member before adding its replacement, as with etcd).
fn ready_for_a_new_member(i: &Inner) -> Result<(), ChangeError> {
    let m = i.raft().metrics().borrow_watched().clone();
    let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
    let heard = m.heartbeat.clone().unwrap_or_default();
    let silent_for = |v: NodeId| if v == i.id { Some(Duration::ZERO) } else { heard.get(&v).cloned().flatten().map(|t| openraft::Instant::elapsed(&*t)) };
    every_voter_heard(&voters, silent_for, HEALTH_INTERVAL)
}

/// `ready_for_a_new_member`'s rule: every voter heard from within `recent`
/// (`silent_for` says how long ago, `None`: never).
fn every_voter_heard(voters: &[NodeId], silent_for: impl Fn(NodeId) -> Option<Duration>, recent: Duration) -> Result<(), ChangeError> {
    let silent: Vec<String> = voters.iter().filter(|v| !silent_for(**v).is_some_and(|d| d < recent)).map(|v| format!("{v:016x}")).collect();
    if !silent.is_empty() {
        return Err(ChangeError::Unhealthy(format!(
            "unhealthy cluster: the leader has not heard from voter(s) {} in the last {recent:?}; remove or restart them before adding a member",
            silent.join(", ")
        )));
    }
    Ok(())
}

/// Makes `id`, a learner just added, a voter (etcd's MemberAdd without `--learner`).
async fn make_voter(raft: &crate::replica::Raft, id: NodeId) -> Result<(), RaftError<TypeConfig, ClientWriteError<TypeConfig>>> {
    // A promotion that fails after its learner was added (tests arm this).
    storage::failpoint!("membership::make_voter", |_e| Err(RaftError::Fatal(openraft::error::Fatal::Stopped)));
    raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false).await.map(|_| ())
}

/// Takes `id`, a learner that could not be made a voter, out of the membership again.
async fn take_out(raft: &crate::replica::Raft, id: NodeId) -> Result<(), RaftError<TypeConfig, ClientWriteError<TypeConfig>>> {
    // The removal failing too (tests arm this).
    storage::failpoint!("membership::take_out", |_e| Err(RaftError::Fatal(openraft::error::Fatal::Stopped)));
    raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false).await.map(|_| ())
}

/// Learners at once (etcd's default `--max-learners`): a learner takes the leader's bandwidth
/// while it catches up, and one at a time keeps that bounded.
const MAX_LEARNERS: usize = 1;

/// Whether a learner that `matched` the leader's log up to that index (none: nothing yet)
/// may become a voter: it holds nine tenths of the leader's `leader_last` entries (etcd's
/// rule), so that as a voter it does not at once hold back the commit.
fn learner_in_sync(matched: Option<u64>, leader_last: u64) -> bool {
    matched.unwrap_or(0) as f64 >= leader_last as f64 * 0.9
}

/// Makes `c` (this member leads). Returns the id and name of the member changed.
async fn change(i: &Arc<Inner>, c: &Change) -> Result<(NodeId, String), ChangeError> {
    let raft = i.raft();
    // Each change waits for the one before it to commit (a member recording its API URL may
    // have one in flight): retried for a while on "in progress".
    let in_progress_until = Instant::now() + Duration::from_secs(10);
    let (id, name) = match c.op {
        Op::Add => {
            valid_url("peerURL", &c.peer_url)?;
            let id = if c.name.is_empty() { cluster::member_id_for_peer_url(&c.peer_url) } else { cluster::member_id(&c.name) };
            if let Some(who) = holder_of(i, &c.peer_url, None) {
                return Err(ChangeError::PeerUrlTaken(format!("peer URL {} is member {who}'s already", c.peer_url)));
            }
            let (_, named) = if c.name.is_empty() { (id, None) } else { target(i, c)? };
            if named.is_some() || i.member(id).is_some() {
                return Err(ChangeError::Exists(format!("member {} already exists", if c.name.is_empty() { format!("{id:016x}") } else { c.name.clone() })));
            }
            ready_for_a_new_member(i)?;
            if !c.voter {
                let m = raft.metrics().borrow_watched().membership_config.clone();
                let learners = m.membership().learner_ids().count();
                if learners >= MAX_LEARNERS {
                    return Err(ChangeError::TooManyLearners(format!("too many learner members in cluster ({learners}; at most {MAX_LEARNERS}: promote or remove it first)")));
                }
            }
            (id, c.name.clone())
        }
        Op::Promote => {
            let (id, known) = target(i, c)?;
            let Some(m) = known else {
                return Err(ChangeError::NotFound(format!("no member {}", if c.id.is_empty() { &c.name } else { &c.id })));
            };
            let metrics = raft.metrics().borrow_watched().clone();
            if metrics.membership_config.membership().voter_ids().any(|v| v == id) {
                return Err(ChangeError::NotLearner(format!("member {} is a voter already: can only promote a learner member", called(id, &m))));
            }
            let matched = metrics.replication.as_ref().and_then(|r| r.get(&id).cloned().flatten()).map(|l| l.index);
            let leader_last = metrics.last_log_index.unwrap_or(0);
            if !learner_in_sync(matched, leader_last) {
                return Err(ChangeError::LearnerNotReady(format!(
                    "can only promote a learner member which is in sync with leader: {} holds the log up to {} of the leader's {leader_last}",
                    called(id, &m),
                    matched.map_or("nothing".to_string(), |i| i.to_string())
                )));
            }
            (id, called(id, &m))
        }
        _ => {
            let (id, known) = target(i, c)?;
            let Some(m) = known else {
                return Err(ChangeError::NotFound(format!("no member {}", if c.id.is_empty() { &c.name } else { &c.id })));
            };
            (id, called(id, &m))
        }
    };
    loop {
        let r = match c.op {
            Op::Add => {
                // Adding a learner that is there already changes nothing, so a retry after
                // "in progress" is safe.
                let added = raft.add_learner(id, Member { name: c.name.clone(), peer_url: c.peer_url.clone(), ..Default::default() }, false).await;
                match added {
                    Ok(_) if c.voter => match make_voter(&raft, id).await {
                        // etcd adds a voter in one step: one that could not be made a voter is
                        // taken out again rather than left behind as a learner nobody asked for
                        // ("in progress" is retried below).
                        Err(e) if !matches!(e, RaftError::APIError(ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(_)))) => {
                            let who = if c.name.is_empty() { format!("{id:016x}") } else { c.name.clone() };
                            return Err(match take_out(&raft, id).await {
                                Ok(_) => ChangeError::Failed(format!("adding member {who} as a voter failed ({e}); it was not added")),
                                Err(again) => ChangeError::Failed(format!(
                                    "member {who} was added as a learner but making it a voter failed ({e}), and taking it out again failed too ({again}): promote or remove it"
                                )),
                            });
                        }
                        r => r,
                    },
                    r => r.map(|_| ()),
                }
            }
            Op::Promote => raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false).await.map(|_| ()),
            Op::Remove => {
                let voters: BTreeSet<NodeId> = raft.metrics().borrow_watched().membership_config.membership().voter_ids().collect();
                if voters.contains(&id) && voters.len() == 1 {
                    return Err(ChangeError::LastVoter("the last voter cannot be removed".into()));
                }
                let r = if voters.contains(&id) { raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false).await.map(|_| ()) } else { Ok(()) };
                match r {
                    Ok(()) => raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false).await.map(|_| ()),
                    e => e,
                }
            }
            // Only the peer URL changes: raft's replication to the member reconnects there.
            Op::Update => {
                valid_url("peerURL", &c.peer_url)?;
                if let Some(who) = holder_of(i, &c.peer_url, Some(id)) {
                    return Err(ChangeError::PeerUrlTaken(format!("peer URL {} is member {who}'s already", c.peer_url)));
                }
                let m = i.member(id).ok_or_else(|| ChangeError::NotFound(format!("no member {id:016x}")))?;
                if network::authority(&m.peer_url) == network::authority(&c.peer_url) {
                    Ok(())
                } else {
                    let r = raft.change_membership(ChangeMembers::SetNodes(BTreeMap::from([(id, Member { peer_url: c.peer_url.clone(), ..m })])), false).await;
                    if r.is_ok() {
                        i.net.moved(id, &c.peer_url).await;
                    }
                    r.map(|_| ())
                }
            }
            // Only the name (of a member that has none) and the API URL change; the peer URL,
            // which raft routes by, stays as it is.
            Op::ApiUrl => {
                if !c.api_url.is_empty() {
                    valid_url("apiURL", &c.api_url)?;
                }
                if !c.client_url.is_empty() {
                    valid_url("clientURL", &c.client_url)?;
                }
                let m = i.member(id).ok_or_else(|| ChangeError::NotFound(format!("no member {id:016x}")))?;
                let mut now = m.clone();
                if now.name.is_empty() && !c.name.is_empty() {
                    let taken = i.raft().metrics().borrow_watched().membership_config.membership().nodes().any(|(other, o)| *other != id && o.name == c.name);
                    if taken {
                        return Err(ChangeError::Exists(format!("another member is named {} already", c.name)));
                    }
                    now.name = c.name.clone();
                }
                if !c.api_url.is_empty() {
                    now.api_url = c.api_url.clone();
                }
                if !c.client_url.is_empty() {
                    now.client_url = c.client_url.clone();
                }
                if now == m {
                    Ok(())
                } else {
                    raft.change_membership(ChangeMembers::SetNodes(BTreeMap::from([(id, now)])), false).await.map(|_| ())
                }
            }
        };
        match r {
            Ok(()) => return Ok((id, if name.is_empty() { format!("{id:016x}") } else { name })),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(_)))) if Instant::now() < in_progress_until => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => return Err(ChangeError::Failed("leadership moved while the change was made".into())),
            Err(e) => return Err(ChangeError::Failed(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(members: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"cluster": "00000000000000ab", "members": members})
    }

    #[test]
    fn a_joining_member_finds_itself_by_peer_url_or_by_name() {
        let by_url = cluster::member_id_for_peer_url("http://127.0.0.1:7");
        let s = status(serde_json::json!([
            {"id": format!("{:016x}", cluster::member_id("a")), "name": "a", "peerURL": "http://127.0.0.1:1"},
            {"id": format!("{by_url:016x}"), "name": "", "peerURL": "http://127.0.0.1:7/"},
        ]));
        // Added by URL alone: its id is the URL's, whatever name it starts under.
        assert_eq!(find_self(&s, "new", "127.0.0.1:7"), Ok(Some((0xab, by_url))));
        // Added by name: found by name and URL.
        assert_eq!(find_self(&s, "a", "127.0.0.1:1"), Ok(Some((0xab, cluster::member_id("a")))));
        // Not a member (yet): none, and the caller keeps asking.
        assert_eq!(find_self(&s, "b", "127.0.0.1:9"), Ok(None));
        // Its URL is another member's, or its name is at another URL: refused, naming both.
        let e = find_self(&s, "b", "127.0.0.1:1").unwrap_err();
        assert!(e.contains("to member a, not to b"), "{e}");
        let e = find_self(&s, "a", "127.0.0.1:2").unwrap_err();
        assert!(e.contains("http://127.0.0.1:1") && e.contains("127.0.0.1:2"), "{e}");
        // Added by URL, it may not take the name of another member.
        let e = find_self(&s, "a", "127.0.0.1:7").unwrap_err();
        assert!(e.contains("already has a member named a"), "{e}");
        // A peer that does not know its cluster tells nothing.
        assert_eq!(find_self(&serde_json::json!({"cluster": "0", "members": []}), "a", "127.0.0.1:1"), Ok(None));
    }

    #[test]
    fn a_voter_is_added_only_while_every_voter_answers() {
        let recent = Duration::from_secs(5);
        let heard = |ago: &'static [(NodeId, u64)]| move |v: NodeId| ago.iter().find(|(id, _)| *id == v).map(|(_, ms)| Duration::from_millis(*ms));
        assert_eq!(every_voter_heard(&[1, 2, 3], heard(&[(1, 0), (2, 100), (3, 100)]), recent), Ok(()));
        assert_eq!(every_voter_heard(&[1], heard(&[(1, 0)]), recent), Ok(()));
        // One silent too long, or never heard: refused, naming it.
        let e = every_voter_heard(&[1, 2, 3], heard(&[(1, 0), (2, 100), (3, 6000)]), recent).unwrap_err();
        assert!(matches!(&e, ChangeError::Unhealthy(m) if m.contains("0000000000000003")), "{e}");
        assert!(matches!(every_voter_heard(&[1, 2, 3], heard(&[(1, 0), (2, 100)]), recent), Err(ChangeError::Unhealthy(_))));
    }

    #[test]
    fn changes_travel_as_json_and_bad_ones_are_refused() {
        let c: Change = serde_json::from_str(r#"{"op": "add", "peerURL": "http://h:1", "voter": true}"#).unwrap();
        assert_eq!((c.op, c.name.as_str(), c.voter), (Op::Add, "", true));
        let c: Change = serde_json::from_str(r#"{"op": "api-url", "name": "a", "apiURL": "https://h:2"}"#).unwrap();
        assert_eq!(c.op, Op::ApiUrl);
        assert!(serde_json::from_str::<Change>(r#"{"op": "rename", "name": "a"}"#).is_err());
        let back: Change = serde_json::from_str(&serde_json::to_string(&Change::on_id(Op::Update, 0x1f)).unwrap()).unwrap();
        assert_eq!((back.op, back.id.as_str()), (Op::Update, "000000000000001f"));
        // An error survives the trip from the leader with its kind.
        for e in [
            ChangeError::NotFound("x".into()),
            ChangeError::Exists("y".into()),
            ChangeError::PeerUrlTaken("u".into()),
            ChangeError::Unhealthy("z".into()),
            ChangeError::NoLeader,
            ChangeError::TooManyLearners("l".into()),
            ChangeError::NotLearner("v".into()),
            ChangeError::LearnerNotReady("r".into()),
        ] {
            let body = serde_json::to_vec(&serde_json::json!({"error": e.to_string(), "reason": e.reason()})).unwrap();
            assert_eq!(ChangeError::from_answer(e.status(), &body), e);
        }
        assert!(valid_url("peerURL", "http://h").is_err());
        assert!(valid_url("peerURL", "ftp://h:1").is_err());
        assert!(valid_url("peerURL", "https://h:1").is_ok());
        assert!(valid_url("clientURL", "https://h:1\0https://x:2").is_err());
    }

    #[test]
    fn a_learner_is_promoted_once_it_holds_nine_tenths_of_the_leaders_log() {
        assert!(learner_in_sync(Some(90), 100));
        assert!(learner_in_sync(Some(100), 100));
        assert!(learner_in_sync(None, 0));
        assert!(!learner_in_sync(Some(89), 100));
        assert!(!learner_in_sync(None, 100));
    }
}
