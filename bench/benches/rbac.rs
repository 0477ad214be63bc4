//! The cost of one RBAC decision with 10,000 bindings in the cluster (issue 15's target:
//! <= 5 µs). 10,000 RoleBindings, each binding one user to `edit` in one of 1,000 namespaces,
//! over the default roles; decisions for a bound user (allowed, and refused in another
//! namespace), for an unbound user, and for a member of system:masters.

use apiserver::authn::UserInfo;
use apiserver::default_roles::defaults;
use apiserver::rbac::{Index, attributes, authorized};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;

fn index() -> Index {
    let of = |kind: &str| defaults().into_iter().filter(|(k, _)| *k == kind).map(|(_, v)| v).collect::<Vec<_>>();
    let bindings: Vec<_> = (0..10_000)
        .map(|i| {
            json!({"metadata": {"namespace": format!("ns-{}", i % 1000), "name": format!("b-{i}")},
                   "roleRef": {"kind": "ClusterRole", "name": "edit"},
                   "subjects": [{"kind": "User", "name": format!("user-{i}")}]})
        })
        .collect();
    Index::build(&of("clusterroles"), &[], &of("clusterrolebindings"), &bindings)
}

fn bench(c: &mut Criterion) {
    let ix = index();
    let user = |name: &str, groups: &[&str]| UserInfo::new(name, groups.iter().map(|g| g.to_string()).collect());
    let bound = user("user-4242", &["system:authenticated"]);
    let stranger = user("nobody", &["system:authenticated", "team-a", "team-b"]);
    let admin = user("kubernetes-admin", &["system:masters", "system:authenticated"]);
    let create = attributes("POST", "/apis/apps/v1/namespaces/ns-242/deployments", "");
    let elsewhere = attributes("POST", "/apis/apps/v1/namespaces/ns-1/deployments", "");
    assert!(authorized(&ix, &bound, &create) && !authorized(&ix, &bound, &elsewhere) && !authorized(&ix, &stranger, &create));
    let mut g = c.benchmark_group("rbac_10k_bindings");
    g.bench_function("allowed", |b| b.iter(|| authorized(&ix, &bound, &create)));
    g.bench_function("refused_other_namespace", |b| b.iter(|| authorized(&ix, &bound, &elsewhere)));
    g.bench_function("refused_unbound_user", |b| b.iter(|| authorized(&ix, &stranger, &create)));
    g.bench_function("masters", |b| b.iter(|| authorized(&ix, &admin, &create)));
    g.bench_function("attributes_and_decision", |b| b.iter(|| authorized(&ix, &bound, &attributes("POST", "/apis/apps/v1/namespaces/ns-242/deployments", ""))));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
