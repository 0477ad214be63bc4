//! Txn compares on a key's lease through the KV service, as etcd decides them: at the top
//! level, inside a nested txn and over a key range (etcdctl 3.4 cannot send one: its parser
//! panics on `lease(...)`, so the generated client speaks for it).

mod support;

use etcdapi::pb::{self, compare, kv_client::KvClient, lease_client::LeaseClient, request_op};

fn lease_cmp(key: &str, end: &str, result: compare::CompareResult, lease: i64) -> pb::Compare {
    pb::Compare {
        key: key.as_bytes().to_vec(),
        range_end: end.as_bytes().to_vec(),
        target: compare::CompareTarget::Lease as i32,
        result: result as i32,
        target_union: Some(compare::TargetUnion::Lease(lease)),
    }
}

fn put(key: &str) -> pb::RequestOp {
    pb::RequestOp { request: Some(request_op::Request::RequestPut(pb::PutRequest { key: key.as_bytes().to_vec(), value: b"1".to_vec(), ..Default::default() })) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_compares_hold_at_any_depth_and_over_ranges() {
    let s = support::server().await;
    let ch = support::channel(&s.url).await;
    let (mut kv, mut leases) = (KvClient::new(ch.clone()), LeaseClient::new(ch));
    let id = leases.lease_grant(pb::LeaseGrantRequest { ttl: 60, id: 0 }).await.unwrap().into_inner().id;
    for k in ["l/a", "l/b"] {
        kv.put(pb::PutRequest { key: k.as_bytes().to_vec(), value: b"v".to_vec(), lease: id, ..Default::default() }).await.unwrap();
    }
    kv.put(pb::PutRequest { key: b"l/c".to_vec(), value: b"v".to_vec(), ..Default::default() }).await.unwrap();
    let txn = |compare: Vec<pb::Compare>| pb::TxnRequest { compare, success: vec![], failure: vec![] };
    let mut holds = async |t: pb::TxnRequest| kv.txn(t).await.unwrap().into_inner().succeeded;
    use compare::CompareResult::{Equal, Greater};
    assert!(holds(txn(vec![lease_cmp("l/a", "", Equal, id)])).await);
    assert!(!holds(txn(vec![lease_cmp("l/a", "", Equal, id + 1)])).await);
    assert!(holds(txn(vec![lease_cmp("l/c", "", Equal, 0)])).await, "a key without a lease: 0");
    assert!(holds(txn(vec![lease_cmp("l/a", "l/c", Equal, id)])).await, "[l/a, l/c): both on the lease");
    assert!(!holds(txn(vec![lease_cmp("l/", "l0", Equal, id)])).await, "l/c is on none");
    // Nested: the inner txn's lease compare decides its branch.
    let nested = pb::TxnRequest {
        compare: vec![],
        success: vec![pb::RequestOp {
            request: Some(request_op::Request::RequestTxn(pb::TxnRequest { compare: vec![lease_cmp("l/b", "", Greater, 0)], success: vec![put("then")], failure: vec![put("else")] })),
        }],
        failure: vec![],
    };
    let r = kv.txn(nested).await.unwrap().into_inner();
    match &r.responses[0].response {
        Some(pb::response_op::Response::ResponseTxn(t)) => assert!(t.succeeded, "l/b is on a lease"),
        other => panic!("a nested txn's answer, not {other:?}"),
    }
    let got = kv.range(pb::RangeRequest { key: b"then".to_vec(), ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(got.count, 1);
}
