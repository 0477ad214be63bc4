//! Small things every subcommand uses: the kubeconfig it writes, the host's name, the
//! shutdown signal, and the store's shard count.

use std::path::Path;

use anyhow::{Context, Result};

/// The store's history is compacted at five minutes, as kube-apiserver compacts etcd, and
/// whenever it holds more than this many bytes of overwritten and deleted values: on a big
/// cluster five minutes of pod updates is gigabytes (etcd's whole default quota is 2 GiB).
pub const HISTORY_BYTES_MAX: u64 = 512 << 20;

pub fn kubeconfig(server: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: capstan
  cluster:
    server: {server}
contexts:
- name: capstan
  context:
    cluster: capstan
    user: capstan
    namespace: default
current-context: capstan
users:
- name: capstan
  user: {{}}
"
    )
}


/// A kubeconfig with one context per API server (the replicas of one cluster), the first
/// current.
pub fn kubeconfig_multi(servers: &[(String, String)]) -> String {
    let mut s = String::from("apiVersion: v1\nkind: Config\nclusters:\n");
    for (name, url) in servers {
        s += &format!("- name: capstan-{name}\n  cluster:\n    server: {url}\n");
    }
    s += "contexts:\n";
    for (name, _) in servers {
        s += &format!("- name: {name}\n  context:\n    cluster: capstan-{name}\n    user: capstan\n    namespace: default\n");
    }
    s += &format!("current-context: {}\nusers:\n- name: capstan\n  user: {{}}\n", servers.first().map_or("", |(n, _)| n.as_str()));
    s
}

/// Writes `D/kubeconfig` whole (temporary file, rename), returning its absolute path.
pub fn write_kubeconfig(data_dir: &Path, text: &str) -> Result<std::path::PathBuf> {
    let kc = data_dir.join("kubeconfig");
    let tmp = data_dir.join("kubeconfig.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &kc)?;
    Ok(std::fs::canonicalize(&kc).unwrap_or(kc))
}

/// The Kubernetes API on `listener`, until `true` is sent on the returned channel (then it
/// finishes what it is serving and the task ends).
pub fn serve_api(
    listener: tokio::net::TcpListener,
    store: storage::Store,
) -> (tokio::sync::watch::Sender<bool>, tokio::task::JoinHandle<std::io::Result<()>>) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let app = apiserver::router_with_shutdown(store, stop_rx.clone());
    let mut stop_serving = stop_rx;
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_serving.wait_for(|s| *s).await;
            })
            .await
    });
    (stop_tx, task)
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_ascii_lowercase()).ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "capstan-node".into())
}

/// Resolves at the first SIGTERM or SIGINT (Ctrl-C) after it is called: the handlers are
/// registered by the call, not when the future is first polled. Make one for the process and
/// keep it: once tokio handles a signal its default action is gone, so a signal that arrives
/// while no handler future exists (between two calls in a loop) is lost and the process no
/// longer stops on it.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    }
}

pub fn shard_count(data_dir: &std::path::Path, flag: Option<usize>) -> usize {
    if let Some(n) = flag {
        return n;
    }
    // An existing store keeps its shard count; a new one gets one shard per core.
    match std::fs::read_dir(data_dir.join("wal")) {
        Ok(rd) => rd.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("shard-")).count().max(1),
        Err(_) => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

