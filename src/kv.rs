//! `capstan kv`: the store from the command line.

use std::path::PathBuf;

use anyhow::{Context, Result};
use bytes::Bytes;
use storage::{Config, DeleteRequest, KeyRange, RangeRequest, Store};

use crate::KvOp;
use crate::common::shard_count;

fn show(b: &Bytes) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub async fn kv(data_dir: PathBuf, shards: Option<usize>, unsafe_no_fsync: bool, op: KvOp) -> Result<()> {
    let mut cfg = Config::new(&data_dir);
    cfg.shards = shard_count(&data_dir, shards);
    cfg.fsync = !unsafe_no_fsync;
    let store = Store::open(cfg).with_context(|| format!("opening the store in {}", data_dir.display()))?;
    match op {
        KvOp::Put { key, value } => {
            let r = store.put(key, value).await?;
            println!("OK revision {}", r.revision);
        }
        KvOp::Get { key, revision } => {
            let mut req = RangeRequest::key(key.clone());
            req.revision = revision;
            let r = store.range(req).await?;
            match r.kvs.first() {
                Some(kv) => println!(
                    "{}\t{}\t(create_revision {}, mod_revision {}, version {})",
                    key,
                    show(&kv.value),
                    kv.create_revision,
                    kv.mod_revision,
                    kv.version
                ),
                None => anyhow::bail!("{key} not found at revision {}", r.revision),
            }
        }
        KvOp::Range { prefix, limit, keys_only } => {
            let mut req = RangeRequest::prefix(prefix).limit(limit);
            req.keys_only = keys_only;
            let r = store.range(req).await?;
            for kv in &r.kvs {
                if keys_only {
                    println!("{}", show(&kv.key));
                } else {
                    println!("{}\t{}", show(&kv.key), show(&kv.value));
                }
            }
            eprintln!("{} of {} keys at revision {}{}", r.kvs.len(), r.count, r.revision, if r.more { " (more)" } else { "" });
        }
        KvOp::Del { key, prefix } => {
            let range = if prefix { KeyRange::Prefix(key.into()) } else { KeyRange::Key(key.into()) };
            let r = store.delete(DeleteRequest { range, prev_kv: false }).await?;
            println!("deleted {} at revision {}", r.deleted, r.revision);
        }
        KvOp::Compact { revision } => {
            store.compact(revision).await?;
            println!("compacted to revision {revision}");
        }
        KvOp::Snapshot => {
            let rev = store.snapshot().await?;
            println!("snapshot at revision {rev}");
        }
        KvOp::Stats => {
            let s = store.stats().await;
            println!("revision              {}", s.revision);
            println!("compact revision      {}", s.compact_revision);
            println!("shards                {}", store.shards());
            println!("live keys             {}", s.live_keys);
            println!("indexed keys          {}", s.indexed_keys);
            println!("retained revisions    {}", s.retained_revisions);
            println!("key bytes             {}", s.key_bytes);
            println!("value bytes           {}", s.value_bytes);
            println!("index overhead bytes  {}", s.index_overhead_bytes);
            println!("index bytes per key   {:.1}", s.index_bytes_per_key());
            println!("leases                {}", s.leases);
            println!("log bytes since snap  {}", s.wal_bytes_since_snapshot);
        }
    }
    Ok(())
}
