//! `capstan migrate --from-etcd URL --data-dir D`: a new store made from a real etcd's keys.
//! Every key and value is read at one revision (the source's newest when the copy starts,
//! read in pages at that revision), so the copy is one consistent cut; if the source compacts
//! past that revision during the copy, it cannot be read consistently and the copy is refused
//! and removed. The keys are written in key order into a fresh store: their revisions (and so
//! Kubernetes resourceVersions) are new, and leases are not carried (a leased key is copied
//! without its lease). Values are copied byte for byte: objects kube-apiserver stored (protobuf,
//! under Kubernetes' own key layout) are not converted to capstan's API server's JSON.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};

use crate::snapshot::channel;

/// Keys per read of the source (a value is at most etcd's 1.5 MiB request limit, so a page
/// is at most about 150 MiB), and the bytes per txn into the new store (under its 1.5 MiB
/// request bound; a single larger key-value goes alone).
const PAGE: i64 = 100;
const WRITE_BYTES: usize = 1 << 20;

#[derive(clap::Args)]
pub struct MigrateArgs {
    /// The etcd to copy (http://HOST:2379 or https://...).
    #[arg(long)]
    from_etcd: String,
    /// The new data directory (must not hold a store).
    #[arg(long)]
    data_dir: PathBuf,
    #[command(flatten)]
    tls: crate::snapshot::ClientTls,
}

pub async fn run(a: MigrateArgs) -> Result<()> {
    let store_dir = a.data_dir.join("store");
    if store_dir.exists() {
        bail!("{} already holds a store: migrate makes a new data directory", a.data_dir.display());
    }
    let ch = channel(&a.from_etcd, &a.tls).await?;
    let mut kv = etcdapi::pb::kv_client::KvClient::new(ch).max_decoding_message_size(256 << 20);
    // The cut: the source's newest revision now.
    let head = kv.range(etcdapi::pb::RangeRequest { key: vec![0], range_end: vec![0], count_only: true, ..Default::default() }).await.with_context(|| format!("reading {}", a.from_etcd))?.into_inner();
    let revision = head.header.map_or(0, |h| h.revision);
    let total = head.count;
    std::fs::create_dir_all(&a.data_dir).with_context(|| format!("creating {}", a.data_dir.display()))?;
    crate::datadir::prepare(&a.data_dir, crate::datadir::Kind::Single)?;
    let mut cfg = storage::Config::new(&store_dir);
    cfg.shards = crate::common::shard_count(&store_dir, None);
    let store = tokio::task::block_in_place(|| storage::Store::open(cfg)).with_context(|| format!("creating the store in {}", store_dir.display()))?;
    let copied = copy(&mut kv, &store, revision).await;
    drop(store);
    match copied {
        Ok(n) => {
            if n as i64 != total {
                let _ = std::fs::remove_dir_all(&store_dir);
                bail!("the source counted {total} keys at revision {revision} but {n} were read: refused");
            }
            println!("migrated {n} keys of {} (its revision {revision}) into {}; revisions are new, leases are not carried; start it with: capstan up --data-dir {}", a.from_etcd, a.data_dir.display(), a.data_dir.display());
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&store_dir);
            Err(e)
        }
    }
}

/// Copies every key at `revision`, page by page, in key order; the number copied.
async fn copy(kv: &mut etcdapi::pb::kv_client::KvClient<etcdapi::tonic::transport::Channel>, store: &storage::Store, revision: i64) -> Result<u64> {
    let mut from = vec![0u8];
    let mut n = 0u64;
    loop {
        let req = etcdapi::pb::RangeRequest { key: from.clone(), range_end: vec![0], revision, limit: PAGE, ..Default::default() };
        let page = match kv.range(req).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.message().contains("compacted") => {
                return Err(anyhow!("the source compacted past revision {revision} during the copy, so it cannot be read consistently; nothing was kept (run again, or pause its compaction)"));
            }
            Err(s) => return Err(anyhow!("reading the source: {s}")),
        };
        let mut batch: Vec<storage::TxnOp> = Vec::new();
        let mut bytes = 0;
        for (i, kv) in page.kvs.iter().enumerate() {
            bytes += kv.key.len() + kv.value.len();
            batch.push(storage::TxnOp::Put(storage::PutRequest { key: kv.key.clone().into(), value: kv.value.clone().into(), lease: 0, prev_kv: false }));
            let next = page.kvs.get(i + 1).map_or(0, |k| k.key.len() + k.value.len());
            if next == 0 || bytes + next > WRITE_BYTES {
                let success = std::mem::take(&mut batch);
                n += success.len() as u64;
                store.txn(storage::TxnRequest { compare: vec![], success, failure: vec![] }).await.map_err(|e| anyhow!("writing the new store: {e}"))?;
                bytes = 0;
            }
        }
        match page.kvs.last() {
            Some(last) if page.more => {
                from = last.key.clone();
                from.push(0);
            }
            _ => return Ok(n),
        }
    }
}
