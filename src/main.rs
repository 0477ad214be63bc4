//! `capstan`: the one binary. Today it has the store's command-line client; later issues add
//! `up`, `apiserver`, `scheduler`, `controllers` and `kubelet`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use storage::{Config, DeleteRequest, KeyRange, RangeRequest, Store};

#[derive(Parser)]
#[command(name = "capstan", version, about = "A Kubernetes-compatible control plane, built datastore-first")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Use the key-value store directly (the store capstan keeps every object in).
    Kv {
        /// The store's data directory.
        #[arg(long, default_value = "./capstan-data/store")]
        data_dir: PathBuf,
        /// Shards (one thread each); must match what the directory was created with.
        #[arg(long)]
        shards: Option<usize>,
        /// Acknowledge writes before they are durable. Loses data on a crash.
        #[arg(long)]
        unsafe_no_fsync: bool,
        #[command(subcommand)]
        op: KvOp,
    },
}

#[derive(Subcommand)]
enum KvOp {
    /// Write a key.
    Put { key: String, value: String },
    /// Read a key (optionally at an older revision).
    Get {
        key: String,
        #[arg(long)]
        revision: Option<u64>,
    },
    /// List keys under a prefix.
    Range {
        prefix: String,
        #[arg(long, default_value_t = 0)]
        limit: usize,
        #[arg(long)]
        keys_only: bool,
    },
    /// Delete a key, or every key under a prefix with --prefix.
    Del {
        key: String,
        #[arg(long)]
        prefix: bool,
    },
    /// Drop history older than a revision.
    Compact { revision: u64 },
    /// Write a snapshot now.
    Snapshot,
    /// Revision, key counts and the index's memory per key.
    Stats,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Kv { data_dir, shards, unsafe_no_fsync, op } => rt.block_on(kv(data_dir, shards, unsafe_no_fsync, op)),
    }
}

fn shard_count(data_dir: &std::path::Path, flag: Option<usize>) -> usize {
    if let Some(n) = flag {
        return n;
    }
    // An existing store keeps its shard count; a new one gets one shard per core.
    match std::fs::read_dir(data_dir.join("wal")) {
        Ok(rd) => rd.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("shard-")).count().max(1),
        Err(_) => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

fn show(b: &Bytes) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn kv(data_dir: PathBuf, shards: Option<usize>, unsafe_no_fsync: bool, op: KvOp) -> Result<()> {
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
