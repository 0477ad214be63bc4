//! etcd's v3 API on a capstan process's store (`etcdapi`): the flags, the listener and its
//! certificates. With TLS (the default) the endpoint serves a certificate of the cluster CA
//! and admits client certificates of that CA in `system:masters` only, as etcd with
//! `--client-cert-auth` and kube-apiserver's `apiserver-etcd-client` certificate; one such
//! certificate is written to `D/pki/apiserver-etcd-client.{crt,key}` for etcdctl.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};

/// The store's own bound on a request (`storage::Config::request_bytes_max`'s default).
const STORE_REQUEST_MAX: usize = 3 * 512 * 1024;

/// Where etcd's default client port is.
const DEFAULT_LISTEN: &str = "127.0.0.1:2379";

#[derive(clap::Args, Clone, Debug)]
pub struct EtcdOpts {
    /// Where etcd's v3 gRPC API is served on this store (`none`: not at all). Without the
    /// flag, 127.0.0.1:2379 when it is free (when it is taken, capstan says so and goes on).
    #[arg(long)]
    pub etcd_listen: Option<String>,
    /// The largest put or txn through it, in bytes (etcd's --max-request-bytes; at most the
    /// store's own bound, 1.5 MiB).
    #[arg(long, default_value_t = 3 * 512 * 1024)]
    pub etcd_max_request_bytes: usize,
    /// The most operations in one txn (etcd's --max-txn-ops).
    #[arg(long, default_value_t = 128)]
    pub etcd_max_txn_ops: usize,
    /// How often a watch with progress_notify hears the revision when nothing changes
    /// (etcd's --experimental-watch-progress-notify-interval).
    #[arg(long, default_value_t = 600)]
    pub etcd_watch_progress_notify_interval_seconds: u64,
}

impl Default for EtcdOpts {
    fn default() -> EtcdOpts {
        EtcdOpts { etcd_listen: None, etcd_max_request_bytes: 3 * 512 * 1024, etcd_max_txn_ops: 128, etcd_watch_progress_notify_interval_seconds: 600 }
    }
}

/// Serves the etcd API for `store` as `o` says: the endpoint's URL and its handle (stop it
/// before letting the store go), or none when it is off (or the default port is taken).
pub async fn start(o: &EtcdOpts, store: &storage::Store, store_dir: &Path, data_dir: &Path, pki: Option<&crate::pki::Pki>, membership: impl FnOnce(&str) -> Arc<dyn etcdapi::Membership>) -> Result<Option<(String, etcdapi::Listening)>> {
    if o.etcd_max_request_bytes > STORE_REQUEST_MAX {
        anyhow::bail!("--etcd-max-request-bytes {} is over what the store takes in one request ({STORE_REQUEST_MAX})", o.etcd_max_request_bytes);
    }
    let (listen, explicit) = match o.etcd_listen.as_deref() {
        Some("none") => return Ok(None),
        Some(l) => (l, true),
        None => (DEFAULT_LISTEN, false),
    };
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) if !explicit => {
            eprintln!("capstan: the etcd API is not served: {listen} is not free ({e}); give --etcd-listen ADDR to serve it elsewhere");
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("etcd API: listening on {listen}")),
    };
    let addr = listener.local_addr()?;
    let (scheme, tls) = match pki {
        Some(p) => {
            let client = p.client("kube-apiserver-etcd-client", "system:masters")?;
            let dir = data_dir.join("pki");
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            crate::pki::write_pair(&dir, "apiserver-etcd-client", &client)?;
            ("https", Some(p.etcd_listener(&crate::pki::hosts_for(&addr))?))
        }
        None => ("http", None),
    };
    let url = format!("{scheme}://{addr}");
    let limits = etcdapi::Limits {
        request_bytes: o.etcd_max_request_bytes,
        txn_ops: o.etcd_max_txn_ops,
        progress_notify: std::time::Duration::from_secs(o.etcd_watch_progress_notify_interval_seconds.max(1)),
        ..Default::default()
    };
    let ctx = etcdapi::Ctx::new(store.clone(), store_dir.to_path_buf(), membership(&url), limits);
    let listening = etcdapi::serve(listener, ctx, tls)?;
    Ok(Some((url, listening)))
}

/// A replica's membership, from raft: members with their peer URLs (learners as learners),
/// the leader, the term and the indexes. Only this member's etcd URL is known (the others'
/// are not in the raft membership). Changes are made by the leader, wherever they are asked;
/// a member added here has no name until it starts (`raft::replica::membership`).
pub struct RaftMembership {
    pub raft: raft::replica::Raft,
    pub handle: raft::replica::MembershipHandle,
    pub id: u64,
    pub cluster: u64,
    pub url: String,
}

/// etcd's answer for why a membership change was not made.
fn change_status(e: raft::replica::ChangeError) -> etcdapi::Status {
    use raft::replica::ChangeError as E;
    match e {
        E::NotFound(_) => etcdapi::Status::not_found("etcdserver: member not found"),
        E::PeerUrlTaken(_) => etcdapi::Status::failed_precondition("etcdserver: Peer URLs already exists"),
        E::Exists(m) => etcdapi::Status::failed_precondition(format!("etcdserver: {m}")),
        E::NoLeader => etcdapi::Status::unavailable("etcdserver: no leader"),
        E::Unhealthy(_) => etcdapi::Status::unavailable("etcdserver: unhealthy cluster"),
        E::BadRequest(m) => etcdapi::Status::invalid_argument(format!("etcdserver: {m}")),
        E::TooManyLearners(_) => etcdapi::Status::failed_precondition("etcdserver: too many learner members in cluster"),
        E::NotLearner(_) => etcdapi::Status::failed_precondition("etcdserver: can only promote a learner member"),
        E::LearnerNotReady(_) => etcdapi::Status::failed_precondition("etcdserver: can only promote a learner member which is in sync with leader"),
        E::LastVoter(m) | E::Failed(m) => etcdapi::Status::failed_precondition(format!("etcdserver: {m}")),
    }
}

/// A member's client URLs in MemberList: the etcd URL it recorded in the membership; this
/// member's own before it has (a member not yet started, or not serving etcd's API, has none).
fn client_urls(recorded: &str, is_self: bool, own: &str) -> Vec<String> {
    if !recorded.is_empty() {
        vec![recorded.to_string()]
    } else if is_self {
        vec![own.to_string()]
    } else {
        vec![]
    }
}

/// The one peer URL of a MemberAdd or MemberUpdate (a capstan member has one).
fn one_peer_url(urls: Vec<String>) -> Result<String, etcdapi::Status> {
    match <[String; 1]>::try_from(urls) {
        Ok([u]) => Ok(u),
        Err(v) if v.is_empty() => Err(etcdapi::Status::invalid_argument("etcdserver: a member needs a peer URL")),
        Err(v) => Err(etcdapi::Status::invalid_argument(format!("etcdserver: a capstan member has one peer URL, not {}", v.len()))),
    }
}

impl RaftMembership {
    /// `op` on the member with `id` (done by the leader wherever it is asked).
    async fn change(&self, op: raft::replica::ChangeOp, id: u64) -> Result<(), etcdapi::Status> {
        if !raft::replica::view(&self.raft).members.iter().any(|(mid, _, _)| *mid == id) {
            return Err(etcdapi::Status::not_found("etcdserver: member not found"));
        }
        let done = self.handle.change(&raft::replica::Change::on_id(op, id)).await;
        // A leader that removes itself stops as the change commits, before it can answer:
        // the change is what counts.
        if done.is_err() && op == raft::replica::ChangeOp::Remove && !raft::replica::view(&self.raft).members.iter().any(|(mid, _, _)| *mid == id) {
            return Ok(());
        }
        done.map(|_| ()).map_err(change_status)
    }
}

impl etcdapi::Membership for RaftMembership {
    fn cluster_id(&self) -> u64 {
        self.cluster
    }
    fn member_id(&self) -> u64 {
        self.id
    }
    fn raft_term(&self) -> u64 {
        raft::replica::view(&self.raft).term
    }
    fn raft_status(&self) -> Option<(u64, u64, u64)> {
        let v = raft::replica::view(&self.raft);
        Some((v.leader.unwrap_or(0), v.last_log_index, v.applied))
    }
    fn members(&self) -> etcdapi::cluster::Fut<'_, Vec<etcdapi::Member>> {
        let v = raft::replica::view(&self.raft);
        let members = v
            .members
            .into_iter()
            .map(|(id, m, voter)| etcdapi::Member { id, name: m.name, peer_urls: vec![m.peer_url], client_urls: client_urls(&m.client_url, id == self.id, &self.url), learner: !voter })
            .collect();
        Box::pin(async move { Ok(members) })
    }
    /// A member by peer URL alone, nameless until it starts (etcd's MemberAdd): a learner, or a
    /// voter at once if the running members stay a quorum (etcd's strict reconfiguration).
    fn add(&self, peer_urls: Vec<String>, learner: bool) -> etcdapi::cluster::Fut<'_, etcdapi::Member> {
        Box::pin(async move {
            let url = one_peer_url(peer_urls)?;
            let c = raft::replica::Change { peer_url: url.clone(), voter: !learner, ..raft::replica::Change::new(raft::replica::ChangeOp::Add) };
            let id = self.handle.change(&c).await.map_err(change_status)?;
            Ok(etcdapi::Member { id, name: String::new(), peer_urls: vec![url], client_urls: vec![], learner })
        })
    }
    fn remove(&self, id: u64) -> etcdapi::cluster::Fut<'_, ()> {
        Box::pin(self.change(raft::replica::ChangeOp::Remove, id))
    }
    fn promote(&self, id: u64) -> etcdapi::cluster::Fut<'_, ()> {
        Box::pin(self.change(raft::replica::ChangeOp::Promote, id))
    }
    /// A member's new peer URL (etcd's MemberUpdate): the leader replicates to it there; the
    /// member restarts listening on it, with `--initial-cluster-state existing`.
    fn update(&self, id: u64, peer_urls: Vec<String>) -> etcdapi::cluster::Fut<'_, ()> {
        Box::pin(async move {
            let url = one_peer_url(peer_urls)?;
            if !raft::replica::view(&self.raft).members.iter().any(|(mid, _, _)| *mid == id) {
                return Err(etcdapi::Status::not_found("etcdserver: member not found"));
            }
            let c = raft::replica::Change { peer_url: url, ..raft::replica::Change::on_id(raft::replica::ChangeOp::Update, id) };
            self.handle.change(&c).await.map(|_| ()).map_err(change_status)
        })
    }
    fn move_leader(&self, to: u64) -> etcdapi::cluster::Fut<'_, ()> {
        Box::pin(async move {
            let v = raft::replica::view(&self.raft);
            if v.leader != Some(self.id) {
                return Err(etcdapi::Status::failed_precondition("etcdserver: not leader"));
            }
            if to == self.id {
                return Ok(());
            }
            if !v.members.iter().any(|(id, _, voter)| *id == to && *voter) {
                return Err(etcdapi::Status::failed_precondition("etcdserver: bad leader transferee"));
            }
            raft::replica::transfer_leader(&self.raft, to).await.map_err(|e| etcdapi::Status::unavailable(format!("etcdserver: {e}")))?;
            // As etcd, answer when the transferee leads (or say it did not in time).
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while raft::replica::view(&self.raft).leader != Some(to) {
                if std::time::Instant::now() > deadline {
                    return Err(etcdapi::Status::unavailable("etcdserver: request timed out, leader transfer took too long"));
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_calls_answer_with_etcds_codes_and_words() {
        use raft::replica::ChangeError as E;
        let code = |s: etcdapi::Status| (s.code(), s.message().to_string());
        assert_eq!(code(change_status(E::PeerUrlTaken("x".into()))), (tonic::Code::FailedPrecondition, "etcdserver: Peer URLs already exists".into()));
        assert_eq!(code(change_status(E::NotFound("x".into()))), (tonic::Code::NotFound, "etcdserver: member not found".into()));
        assert_eq!(code(change_status(E::Unhealthy("x".into()))), (tonic::Code::Unavailable, "etcdserver: unhealthy cluster".into()));
        let precondition = |m: &str| (tonic::Code::FailedPrecondition, m.to_string());
        assert_eq!(code(change_status(E::TooManyLearners("x".into()))), precondition("etcdserver: too many learner members in cluster"));
        assert_eq!(code(change_status(E::NotLearner("x".into()))), precondition("etcdserver: can only promote a learner member"));
        assert_eq!(code(change_status(E::LearnerNotReady("x".into()))), precondition("etcdserver: can only promote a learner member which is in sync with leader"));
        // Client URLs: what the member recorded; this member's own until it has.
        assert_eq!(client_urls("https://b:2379", false, "https://a:2379"), vec!["https://b:2379".to_string()]);
        assert_eq!(client_urls("", true, "https://a:2379"), vec!["https://a:2379".to_string()]);
        assert!(client_urls("", false, "https://a:2379").is_empty());
        assert_eq!(one_peer_url(vec!["http://h:1".into()]).unwrap(), "http://h:1");
        assert_eq!(one_peer_url(vec![]).unwrap_err().code(), tonic::Code::InvalidArgument);
        let two = one_peer_url(vec!["http://h:1".into(), "http://h:2".into()]).unwrap_err();
        assert!(two.code() == tonic::Code::InvalidArgument && two.message().contains("one peer URL, not 2"), "{two:?}");
    }
}
