//! etcd's v3 API on `capstan up`, through the `etcd-client` crate (the client `etcd-perf`
//! uses): what etcdctl 3.4 cannot ask for — count-only reads, revision filters, compares on a
//! lease, progress notifications, keep-alive streams — and etcd's error codes.

mod common;

use common::*;
use etcd_client::{Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity, PutOptions, SortOrder, SortTarget, TlsOptions, Txn, TxnOp, WatchOptions};

fn start(extra: &[&str]) -> (Cluster, String) {
    let mut all = vec!["--no-local-node", "--no-controllers", "--no-scheduler", "--etcd-listen", "127.0.0.1:0"];
    all.extend_from_slice(extra);
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &all);
    let url = c.printed("etcd API:").split_whitespace().nth(2).unwrap().to_string();
    (c, url)
}

async fn connect(c: &Cluster, url: &str) -> Client {
    let pki = c.dir.path().join("pki");
    let read = |f: &str| std::fs::read_to_string(pki.join(f)).unwrap();
    let tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read("ca.crt"))).identity(Identity::from_pem(read("apiserver-etcd-client.crt"), read("apiserver-etcd-client.key")));
    Client::connect([url], Some(ConnectOptions::new().with_tls(tls))).await.expect("connect to capstan's etcd API")
}

/// The gRPC code and message of a failed call.
fn status(e: etcd_client::Error) -> (tonic::Code, String) {
    match e {
        etcd_client::Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("not a gRPC status: {other}"),
    }
}

/// `f`, or a failure naming what it waited for after a minute.
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f).await.unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}"))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn reads_compares_on_leases_and_etcds_errors() {
    let (c, url) = start(&["--etcd-max-request-bytes", "65536"]);
    rt().block_on(async {
        let mut e = connect(&c, &url).await;
        let first = e.put("r/a", "3", None).await.unwrap().header().unwrap().revision();
        e.put("r/b", "1", None).await.unwrap();
        let last = e.put("r/c", "2", None).await.unwrap().header().unwrap().revision();
        // Count only, and the revision filters.
        let n = e.get("r/", Some(GetOptions::new().with_prefix().with_count_only())).await.unwrap();
        assert_eq!((n.count(), n.kvs().len()), (3, 0));
        let newest = e.get("r/", Some(GetOptions::new().with_prefix().with_min_mod_revision(last))).await.unwrap();
        assert_eq!(newest.kvs().iter().map(|kv| kv.key_str().unwrap()).collect::<Vec<_>>(), ["r/c"]);
        let oldest = e.get("r/", Some(GetOptions::new().with_prefix().with_max_create_revision(first))).await.unwrap();
        assert_eq!(oldest.kvs().iter().map(|kv| kv.key_str().unwrap()).collect::<Vec<_>>(), ["r/a"]);
        let by_value = e.get("r/", Some(GetOptions::new().with_prefix().with_sort(SortTarget::Value, SortOrder::Descend).with_limit(2))).await.unwrap();
        assert_eq!(by_value.kvs().iter().map(|kv| kv.value_str().unwrap()).collect::<Vec<_>>(), ["3", "2"]);
        assert!(by_value.more());
        // A compare on a key's lease: the txn runs the branch its compares choose.
        let lease = e.lease_grant(60, None).await.unwrap().id();
        e.put("held", "x", Some(PutOptions::new().with_lease(lease))).await.unwrap();
        let on_lease = Txn::new().when([Compare::lease("held", CompareOp::Equal, lease)]).and_then([TxnOp::put("held-ok", "yes", None)]).or_else([TxnOp::put("held-ok", "no", None)]);
        assert!(e.txn(on_lease).await.unwrap().succeeded());
        let off_lease = Txn::new().when([Compare::lease("held", CompareOp::Equal, lease + 1), Compare::version("held", CompareOp::Equal, 1)]).and_then([TxnOp::put("held-ok", "yes2", None)]).or_else([TxnOp::put("held-ok", "no", None)]);
        assert!(!e.txn(off_lease).await.unwrap().succeeded());
        assert_eq!(e.get("held-ok", None).await.unwrap().kvs()[0].value_str().unwrap(), "no");
        // Compares over a range, and a txn in a txn (its compares decided before any op).
        let all_first = Txn::new().when([Compare::version("r/", CompareOp::Equal, 1).with_prefix()]).and_then([TxnOp::put("ranged", "every r/ key at version 1", None)]);
        assert!(e.txn(all_first).await.unwrap().succeeded());
        let not_all_three = Txn::new().when([Compare::value("r/", CompareOp::Equal, "3").with_range("r0")]);
        assert!(!e.txn(not_all_three).await.unwrap().succeeded(), "r/b and r/c are not 3");
        let inner = Txn::new().when([Compare::version("r/a", CompareOp::Equal, 2)]).and_then([TxnOp::put("inner", "then", None)]).or_else([TxnOp::put("inner", "else", None), TxnOp::get("r/a", None)]);
        let outer = Txn::new().and_then([TxnOp::put("r/a", "4", None), TxnOp::txn(inner)]);
        let r = e.txn(outer).await.unwrap();
        match &r.op_responses()[1] {
            etcd_client::TxnOpResponse::Txn(t) => {
                assert!(!t.succeeded(), "r/a was at version 1 when the compares were decided");
                match &t.op_responses()[1] {
                    etcd_client::TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].value_str().unwrap(), "4", "the nested read sees the outer put"),
                    other => panic!("a get's answer, not {other:?}"),
                }
            }
            other => panic!("a nested txn's answer, not {other:?}"),
        }
        assert_eq!(e.get("inner", None).await.unwrap().kvs()[0].value_str().unwrap(), "else");
        // etcd's errors: codes and messages.
        let ops: Vec<TxnOp> = (0..129).map(|i| TxnOp::put(format!("m{i}"), "x", None)).collect();
        use tonic::Code;
        assert_eq!(status(e.txn(Txn::new().and_then(ops)).await.unwrap_err()), (Code::InvalidArgument, "etcdserver: too many operations in txn request".into()));
        assert_eq!(status(e.put("big", vec![b'x'; 70_000], None).await.unwrap_err()), (Code::InvalidArgument, "etcdserver: request is too large".into()));
        let huge = status(e.put("huge", vec![b'x'; 700_000], None).await.unwrap_err());
        assert_eq!(huge.0, Code::ResourceExhausted, "past the gRPC message limit: {huge:?}");
        assert_eq!(status(e.put("", "v", None).await.unwrap_err()), (Code::InvalidArgument, "etcdserver: key is not provided".into()));
        assert_eq!(status(e.put("k", "v", Some(PutOptions::new().with_lease(12345))).await.unwrap_err()), (Code::NotFound, "etcdserver: requested lease not found".into()));
        let dup = Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]);
        assert_eq!(status(e.txn(dup).await.unwrap_err()), (Code::InvalidArgument, "etcdserver: duplicate key given in txn request".into()));
        let err = status(e.get("r/a", Some(GetOptions::new().with_revision(last + 100))).await.unwrap_err());
        assert_eq!(err, (Code::OutOfRange, "etcdserver: mvcc: required revision is a future revision".into()));
        assert_eq!(e.get("d", None).await.unwrap().count(), 0, "nothing half-applied");
        // Leases: keep-alive over a stream, the list, time to live with keys.
        let (mut keeper, mut answers) = e.lease_keep_alive(lease).await.unwrap();
        keeper.keep_alive().await.unwrap();
        let a = within("a keep-alive answer", answers.message()).await.unwrap().unwrap();
        assert_eq!((a.id(), a.ttl()), (lease, 60));
        assert!(e.leases().await.unwrap().leases().iter().any(|l| l.id() == lease));
        let ttl = e.lease_time_to_live(lease, Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys())).await.unwrap();
        assert_eq!(ttl.keys(), [b"held".to_vec()]);
        e.lease_revoke(lease).await.unwrap();
        keeper.keep_alive().await.unwrap();
        assert_eq!(within("a keep-alive answer", answers.message()).await.unwrap().unwrap().ttl(), 0, "a revoked lease keeps alive with TTL 0");
    });
}

#[test]
fn watches_report_progress_and_compaction() {
    let (c, url) = start(&["--etcd-watch-progress-notify-interval-seconds", "1"]);
    rt().block_on(async {
        let mut e = connect(&c, &url).await;
        let start = e.put("w/a", "1", None).await.unwrap().header().unwrap().revision();
        e.put("w/a", "2", None).await.unwrap();
        e.delete("w/a", None).await.unwrap();
        // From a past revision, with previous values, deletes filtered out.
        let mut s = e.watch("w/", Some(WatchOptions::new().with_prefix().with_start_revision(start).with_prev_key().with_filters([etcd_client::WatchFilterType::NoDelete]))).await.unwrap();
        let created = within("the watch to be created", s.message()).await.unwrap().unwrap();
        assert!(created.created());
        let mut events = Vec::new();
        while events.len() < 2 {
            let r = within("the past events", s.message()).await.unwrap().unwrap();
            events.extend(r.events().iter().map(|ev| (ev.event_type(), ev.kv().unwrap().value_str().unwrap().to_string(), ev.prev_kv().map(|p| p.value_str().unwrap().to_string()))));
        }
        assert_eq!(events, [(EventType::Put, "1".into(), None), (EventType::Put, "2".into(), Some("1".into()))]);
        // A progress request: the stream is current through the store's revision.
        s.request_progress().await.unwrap();
        let p = loop {
            let r = within("the progress response", s.message()).await.unwrap().unwrap();
            if r.events().is_empty() && !r.created() && !r.canceled() {
                break r;
            }
        };
        assert!(p.header().unwrap().revision() >= start + 2, "{:?}", p.header());
        // A watch with progress_notify hears the revision with nothing happening.
        let mut quiet = e.watch("nothing-here", Some(WatchOptions::new().with_progress_notify())).await.unwrap();
        assert!(within("the quiet watch to be created", quiet.message()).await.unwrap().unwrap().created());
        let notify = within("a progress notification", quiet.message()).await.unwrap().unwrap();
        assert!(notify.events().is_empty() && !notify.canceled() && notify.header().unwrap().revision() > 0);
        // A watch from a compacted revision is cancelled with the compaction's revision.
        let now = e.put("w/b", "x", None).await.unwrap().header().unwrap().revision();
        e.compact(now, None).await.unwrap();
        let mut old = e.watch("w/", Some(WatchOptions::new().with_prefix().with_start_revision(start))).await.unwrap();
        let gone = loop {
            let r = within("the compacted watch to be cancelled", old.message()).await.unwrap().unwrap();
            if r.canceled() {
                break r;
            }
        };
        assert_eq!(gone.compact_revision(), now);
        assert!(gone.cancel_reason().contains("required revision has been compacted"), "{}", gone.cancel_reason());
    });
}
