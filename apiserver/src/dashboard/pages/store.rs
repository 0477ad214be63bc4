//! The store's page: shards' commits and fsync latency, and raft's view in `capstan server`.

use super::*;

pub(super) async fn store(st: &Arc<AppState>, v: &Viewer) -> Result<Markup, UiError> {
    // The store holds every object: as much as listing the cluster's pods.
    v.must("list", "", "pods", None)?;
    let stats = st.store.stats().await;
    let io = st.store.shard_io();
    let samples = st.ui.ring.snapshot();
    let per_shard: Vec<Vec<(f64, f64)>> = (0..io.len()).map(|i| sampler::rate(&samples, |s| s.shard_commits.get(i).map(|c| *c as f64))).collect();
    let names: Vec<String> = (0..io.len()).map(|i| format!("shard {i}")).collect();
    let series: Vec<Series> = names.iter().zip(&per_shard).map(|(n, p)| Series { name: n, points: p }).collect();
    // Per second over the last ten seconds of samples.
    let window = |f: &dyn Fn(&sampler::Sample) -> Option<u64>| -> f64 {
        let w: Vec<&sampler::Sample> = samples.iter().rev().take(11).collect();
        match (w.first(), w.last()) {
            (Some(b), Some(a)) if b.t > a.t => (f(b).unwrap_or(0).saturating_sub(f(a).unwrap_or(0))) as f64 / (b.t - a.t),
            _ => 0.0,
        }
    };
    let writes = sampler::rate(&samples, |s| Some(s.revision as f64));
    Ok(html! {
        (ui::page::facts(&[
            ("revision", stats.revision.to_string()),
            ("compacted through", stats.compact_revision.to_string()),
            ("last snapshot at revision", stats.snapshot_revision.to_string()),
            ("keys (live / with history)", format!("{} / {}", stats.live_keys, stats.indexed_keys)),
            ("revisions retained", stats.retained_revisions.to_string()),
            ("keys and values", ui::bytes((stats.key_bytes + stats.value_bytes) as f64)),
            ("of which history (until compaction)", ui::bytes(stats.history_value_bytes as f64)),
            ("log since the last snapshot", ui::bytes(stats.wal_bytes_since_snapshot as f64)),
            ("watchers", stats.watchers.to_string()),
            ("leases", stats.leases.to_string()),
            ("replicated", if st.store.is_replicated() { "yes (raft: the log is raft's; shards below apply it)".to_string() } else { "no (each shard writes its own log)".to_string() }),
        ]))
        div.charts {
            (svg::line_chart(&LineChart { title: "Writes", x_unit: "s", y_unit: "revisions per second", series: &[Series { name: "revisions", points: &writes }], width: 560, height: 220 }))
            (svg::line_chart(&LineChart { title: "Group commits per shard", x_unit: "s", y_unit: "per second", series: &series, width: 560, height: 220 }))
        }
        h2 { "Shards" }
        table {
            tr { th { "shard" } th { "commits" } th { "commits/s (10 s)" } th { "written" } th { "bytes/s (10 s)" } th { "append+fdatasync p50" } th { "p99" } }
            @for (i, s) in io.iter().enumerate() {
                tr {
                    td { (i) }
                    td.n { (s.commits) }
                    td.n { (format!("{:.1}", window(&|x| x.shard_commits.get(i).copied()))) }
                    td.n { (ui::bytes(s.bytes as f64)) }
                    td.n { (ui::bytes(window(&|x| x.shard_bytes.get(i).copied()))) }
                    td.n { (s.sync_quantile_us(0.5).map_or("-".into(), |u| format!("≤ {}", ui::micros(u as f64)))) }
                    td.n { (s.sync_quantile_us(0.99).map_or("-".into(), |u| format!("≤ {}", ui::micros(u as f64)))) }
                }
            }
        }
        p.muted { "Append latencies are counted in power-of-two buckets since the process started; a bound is the bucket's upper edge." }
        @if let Some(r) = st.ui.hooks.replication().map(|f| f()) {
            (replication(&r, &st.ui.ring.elections()))
        }
    })
}

/// The replica's raft view: its state, the leader and term, each member's replication (on
/// the leader: how far behind the leader's log each is), and the leader changes seen.
pub(super) fn replication(r: &Value, elections: &[(f64, u64, String)]) -> Markup {
    let last = r["lastLogIndex"].as_u64().unwrap_or(0);
    html! {
        h2 { "Replication" }
        (ui::page::facts(&[
            ("this replica", format!("{} ({})", r["name"].as_str().unwrap_or(""), r["state"].as_str().unwrap_or(""))),
            ("leader", r["leader"].as_str().unwrap_or("(none)").to_string()),
            ("term", r["term"].to_string()),
            ("log: last / committed / applied / snapshot", format!("{} / {} / {} / {}", r["lastLogIndex"], r["committed"], r["applied"], r["snapshot"])),
            ("entries proposed (commands)", format!("{} ({}), mean {} µs", r["proposed"]["entries"], r["proposed"]["commands"], r["proposed"]["meanEntryMicros"])),
        ]))
        table {
            tr { th { "member" } th { "peer URL" } th { "role" } th { "matched index" } th { "behind the leader" } }
            @for m in r["members"].as_array().into_iter().flatten() {
                @let matched = r["matched"][m["id"].as_str().unwrap_or("")].as_u64();
                tr {
                    td { (m["name"].as_str().unwrap_or("")) }
                    td { (m["peerURL"].as_str().unwrap_or("")) }
                    td { (if m["leader"].as_bool() == Some(true) { "leader" } else if m["voter"].as_bool() == Some(true) { "voter" } else { "learner" }) }
                    td.n { (matched.map_or("-".to_string(), |x| x.to_string())) }
                    td.n { (matched.map_or("-".to_string(), |x| last.saturating_sub(x).to_string())) }
                }
            }
        }
        @if r["matched"].is_null() { p.muted { "Each member's lag is known on the leader; this replica is not it." } }
        h3 { "Leader changes seen" }
        table {
            tr { th { "at" } th { "term" } th { "leader" } }
            @for (t, term, leader) in elections {
                tr { td { (jiff::Timestamp::from_second(*t as i64).map(|x| x.to_string()).unwrap_or_default()) } td.n { (term) } td { (leader) } }
            }
        }
    }
}
