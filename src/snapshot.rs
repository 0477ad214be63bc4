//! `capstan snapshot save|restore|status`: backups of a store through etcd's API, as
//! etcdctl's and etcdutl's commands of the same names. The file is capstan's own format
//! (`storage::backup`), which `etcdctl snapshot save` also writes from a capstan endpoint; etcd's
//! tools do not read it, nor capstan etcd's.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

/// How a command reaches an etcd endpoint over TLS (as etcdctl's flags).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ClientTls {
    /// The endpoint's CA (a capstan's `D/pki/ca.crt`).
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    /// A client certificate it admits (a capstan's `D/pki/apiserver-etcd-client.crt`).
    #[arg(long)]
    pub cert: Option<PathBuf>,
    #[arg(long)]
    pub key: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
pub enum SnapshotCmd {
    /// Save a snapshot of a running capstan (its etcd endpoint) to FILE.
    Save {
        file: PathBuf,
        /// The etcd endpoint (`capstan up` prints it).
        #[arg(long, default_value = "https://127.0.0.1:2379")]
        endpoint: String,
        #[command(flatten)]
        tls: ClientTls,
    },
    /// Make a new data directory for `capstan up` from a snapshot: the same keys at the same
    /// revisions (resourceVersions); older revisions are compacted away.
    Restore {
        file: PathBuf,
        #[arg(long)]
        data_dir: PathBuf,
        /// Restore one member of a new replicated cluster (`capstan server --name`): every
        /// member of --initial-cluster is restored from the same file, each into its own data
        /// directory, then started with the same flags.
        #[arg(long, requires = "initial_cluster")]
        name: Option<String>,
        /// The new cluster's members: NAME=PEER_URL,... (as `capstan server` takes them).
        #[arg(long, requires = "name")]
        initial_cluster: Option<String>,
        /// As `capstan server --initial-cluster-token`.
        #[arg(long, default_value = "capstan")]
        initial_cluster_token: String,
    },
    /// Check a snapshot file through and say what it holds.
    Status {
        file: PathBuf,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: SnapshotCmd) -> Result<()> {
    match cmd {
        SnapshotCmd::Save { file, endpoint, tls } => save(file, endpoint, &tls).await,
        SnapshotCmd::Restore { file, data_dir, name, initial_cluster, initial_cluster_token } => {
            let store_dir = data_dir.join("store");
            if store_dir.exists() {
                bail!("{} already holds a store: a restore makes a new data directory", data_dir.display());
            }
            std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
            match (name, initial_cluster) {
                (Some(name), Some(initial)) => {
                    let members = raft::cluster::parse_initial_cluster(&initial).map_err(anyhow::Error::msg)?;
                    if !members.iter().any(|(n, _)| *n == name) {
                        bail!("--name {name} is not one of --initial-cluster's members");
                    }
                    crate::datadir::prepare(&data_dir, crate::datadir::Kind::Replica)?;
                    // The summary first (the raft position names the snapshot's revision).
                    let status = tokio::task::block_in_place(|| storage::backup::status(&file))?;
                    let target = storage::backup::Target { shards: Some(1), meta: raft::cluster::restored_meta(&members, status.revision) };
                    let s = tokio::task::block_in_place(|| storage::backup::restore_as(&file, &store_dir, &target))?;
                    raft::cluster::Identity::named(raft::cluster::cluster_id(&initial_cluster_token, &members), &name)
                        .write(&data_dir)
                        .with_context(|| format!("writing {}/CLUSTER", data_dir.display()))?;
                    println!(
                        "restored {} into {} as member {name}: revision {}, {} keys; start it with: capstan server --name {name} --data-dir {} --initial-cluster {initial} (and the others, each restored from the same file)",
                        file.display(),
                        data_dir.display(),
                        s.revision,
                        s.keys,
                        data_dir.display()
                    );
                }
                _ => {
                    crate::datadir::prepare(&data_dir, crate::datadir::Kind::Single)?;
                    let s = tokio::task::block_in_place(|| storage::backup::restore(&file, &store_dir))?;
                    println!("restored {} into {}: revision {}, {} keys; start it with: capstan up --data-dir {}", file.display(), data_dir.display(), s.revision, s.keys, data_dir.display());
                }
            }
            Ok(())
        }
        SnapshotCmd::Status { file, json } => {
            let s = tokio::task::block_in_place(|| storage::backup::status(&file))?;
            if json {
                println!("{}", serde_json::json!({"revision": s.revision, "compactRevision": s.compact_revision, "shards": s.shards, "keys": s.keys, "indexedKeys": s.indexed_keys, "bytes": s.bytes, "checksum": format!("{:08x}", s.checksum)}));
            } else {
                println!("revision {}  keys {}  (with history {})  shards {}  size {}  checksum {:08x}", s.revision, s.keys, s.indexed_keys, s.shards, s.bytes, s.checksum);
            }
            Ok(())
        }
    }
}

/// A gRPC channel to an etcd endpoint, over TLS as `tls` says for `https://`.
pub async fn channel(endpoint: &str, tls: &ClientTls) -> Result<etcdapi::tonic::transport::Channel> {
    let (cacert, cert, key) = (tls.cacert.as_ref(), tls.cert.as_ref(), tls.key.as_ref());
    use etcdapi::tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
    let read = |p: &PathBuf| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let mut ch = Channel::from_shared(endpoint.to_string()).with_context(|| format!("the endpoint {endpoint}"))?;
    if endpoint.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = cacert {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        match (cert, key) {
            (Some(c), Some(k)) => tls = tls.identity(Identity::from_pem(read(c)?, read(k)?)),
            (None, None) => {}
            _ => bail!("--cert and --key go together"),
        }
        ch = ch.tls_config(tls)?;
    }
    ch.connect().await.with_context(|| format!("connecting to {endpoint}"))
}

async fn save(file: PathBuf, endpoint: String, tls: &ClientTls) -> Result<()> {
    let channel = channel(&endpoint, tls).await?;
    let mut client = etcdapi::pb::maintenance_client::MaintenanceClient::new(channel).max_decoding_message_size(8 << 20);
    let mut stream = client.snapshot(etcdapi::pb::SnapshotRequest {}).await.with_context(|| format!("asking {endpoint} for a snapshot"))?.into_inner();
    let part = file.with_extension("part");
    let mut out = std::fs::File::create(&part).with_context(|| format!("creating {}", part.display()))?;
    let mut bytes = 0u64;
    while let Some(piece) = stream.message().await.with_context(|| format!("receiving the snapshot from {endpoint}"))? {
        std::io::Write::write_all(&mut out, &piece.blob).with_context(|| format!("writing {}", part.display()))?;
        bytes += piece.blob.len() as u64;
    }
    out.sync_all()?;
    drop(out);
    // What was received is checked through before it takes the file's name.
    let s = match tokio::task::block_in_place(|| storage::backup::status(&part)) {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            bail!("the snapshot received from {endpoint} is not whole: {e}");
        }
    };
    std::fs::rename(&part, &file).with_context(|| format!("renaming {} to {}", part.display(), file.display()))?;
    println!("Snapshot saved at {} (revision {}, {} keys, {bytes} bytes)", file.display(), s.revision, s.keys);
    Ok(())
}
