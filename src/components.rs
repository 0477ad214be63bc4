//! The scheduler and the controllers as parts of a capstan process: built, served on a
//! components port, run alone (`capstan scheduler`, `capstan controllers`), or run by whichever
//! replica holds their leases (`capstan server`).

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::common::{hostname, shutdown_signal};

/// The scheduler, as `creds` (its own certificate) when given, else with the process's
/// default credentials.
pub fn new_scheduler(server: &str, config: Option<&std::path::Path>, creds: Option<&client::tls::Credentials>) -> Result<scheduler::Scheduler> {
    let profiles = match config {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            scheduler::config::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
        }
        None => vec![scheduler::framework::Profile::default()],
    };
    Ok(match creds {
        Some(c) => scheduler::Scheduler::start_with(client::Client::with_credentials(server, "capstan-scheduler/0.1", c).map_err(anyhow::Error::msg)?, profiles),
        None => scheduler::Scheduler::start(server, profiles),
    })
}

/// The scheduler as the dashboard sees it.
struct SchedulerView(std::sync::Arc<scheduler::Scheduler>);

impl apiserver::dashboard::SchedulerView for SchedulerView {
    fn summary(&self) -> serde_json::Value {
        self.0.summary()
    }

    fn attempts(&self, pod: &str) -> Option<serde_json::Value> {
        self.0.attempts_json(pod)
    }
}

/// Lends the dashboard this process's scheduler (none: it does not run here).
pub fn show_scheduler(hooks: &apiserver::dashboard::Hooks, s: Option<std::sync::Arc<scheduler::Scheduler>>) {
    hooks.set_running("scheduler", s.is_some());
    hooks.set_scheduler(s.map(|s| std::sync::Arc::new(SchedulerView(s)) as std::sync::Arc<dyn apiserver::dashboard::SchedulerView>));
}

/// Lends the dashboard the process's CPU profiler (flame graphs as SVG).
pub fn lend_profiler(hooks: &apiserver::dashboard::Hooks) {
    hooks.set_profiler(std::sync::Arc::new(|seconds| {
        Box::pin(async move {
            scheduler::cpuprof::profile(seconds, scheduler::cpuprof::Format::Svg).await.map_err(|e| match e {
                scheduler::cpuprof::ProfileError::Busy => "another profile is being taken; try again when it is done".to_string(),
                scheduler::cpuprof::ProfileError::Invalid(m) | scheduler::cpuprof::ProfileError::Failed(m) => m,
            })
        })
    }));
}

/// One listener for the in-process components: `/metrics` (scheduler and controllers), the
/// scheduler's `/debug/scheduler/pods/<ns>/<name>`, and `/debug/pprof/profile` (CPU
/// profiles of the whole process).
///
/// With `pki` (a cluster on TLS) the port serves HTTPS with a certificate of the cluster CA
/// and admits what the API server authorizes (`kubelet::secure`: client certificates of the
/// cluster CA, `get` on the path as a non-resource URL, `/healthz` open), as
/// kube-scheduler's secure port; plain HTTP otherwise. Returns the address and the scheme.
pub async fn serve_components(listen: &str, s: Option<std::sync::Arc<scheduler::Scheduler>>, c: Option<std::sync::Arc<controllers::Controllers>>, tls: Option<(&crate::pki::Pki, &str)>) -> Result<(std::net::SocketAddr, &'static str)> {
    let l = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("components: listening on {listen}"))?;
    let addr = l.local_addr()?;
    let guard = match tls {
        Some((pki, api)) => {
            let cert = pki.components_serving(&crate::pki::hosts_for(&addr))?;
            let g = kubelet::secure::Guard::for_paths(&pki.ca_pem, &cert.cert_pem, &cert.key_pem, kubelet::client::Client::with_agent(api, "capstan-components-authz/0.1")).map_err(anyhow::Error::msg)?;
            Some(std::sync::Arc::new(g))
        }
        None => None,
    };
    let scheme = if guard.is_some() { "https" } else { "http" };
    let (s2, c2) = (s.clone(), c.clone());
    let mut app = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" })).route(
        "/metrics",
        axum::routing::get(move || {
            let (s, c) = (s2.clone(), c2.clone());
            async move {
                let mut t = s.map(|s| s.metrics_text()).unwrap_or_default();
                t.push_str(&c.map(|c| c.metrics_text()).unwrap_or_default());
                ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], t)
            }
        }),
    );
    match &s {
        Some(s) => app = app.merge(s.debug_router()),
        None => app = app.merge(scheduler::cpuprof::router()),
    }
    tokio::spawn(kubelet::secure::serve(l, app, guard));
    Ok((addr, scheme))
}

/// A standalone component's port: with `creds` (a kubeconfig with the cluster's CA), HTTPS
/// with a self-signed certificate, client certificates of that CA, and each request
/// authorized by the API server (`kubelet::secure`, `/healthz` open), as kube-scheduler's and
/// kube-controller-manager's secure ports; plain HTTP against a cluster that is itself plain
/// (`--insecure-http`). Returns the address and the scheme.
async fn serve_standalone(listen: &str, server: &str, app: axum::Router, creds: Option<&client::tls::Credentials>, name: &str) -> Result<(std::net::SocketAddr, &'static str)> {
    let l = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("{name}: listening on {listen}"))?;
    let addr = l.local_addr()?;
    let guard = match creds {
        Some(c) => {
            let api = kubelet::client::Client::with_agent(server, "capstan-components-authz/0.1");
            Some(std::sync::Arc::new(kubelet::secure::Guard::self_signed_for_paths(&c.ca_pem, name, api).map_err(anyhow::Error::msg)?))
        }
        None => None,
    };
    let scheme = if guard.is_some() { "https" } else { "http" };
    let app = app.route("/healthz", axum::routing::get(|| async { "ok" }));
    tokio::spawn(kubelet::secure::serve(l, app, guard));
    Ok((addr, scheme))
}

/// `capstan controllers`: with `credentials` (the kubeconfig's certificate), as
/// kube-controller-manager with `--use-service-account-credentials`, each controller writes as
/// its own ServiceAccount, requested with them.
pub async fn run_controllers(server: String, listen: String, identity: Option<String>, credentials: Option<client::tls::Credentials>, node_ranges: Option<controllers::ipam::Ranges>) -> Result<()> {
    // One handler for the whole run (see `shutdown_signal`).
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let me = identity.unwrap_or_else(|| format!("{}_{}", hostname(), std::process::id()));
    let slot: std::sync::Arc<std::sync::OnceLock<std::sync::Arc<controllers::Controllers>>> = Default::default();
    let s2 = slot.clone();
    let app = axum::Router::new().route("/metrics", axum::routing::get(move || {
        let c = s2.get().cloned();
        async move { c.map(|c| c.metrics_text()).unwrap_or_default() }
    }));
    let (addr, scheme) = serve_standalone(&listen, &server, app, credentials.as_ref(), "capstan-controllers").await?;
    println!("capstan controllers for {server} as {me}: metrics at {scheme}://{addr}/metrics; waiting to lead; stop with Ctrl-C");
    let c = kubelet::client::Client::with_agent(&server, "capstan-controllers/0.1");
    tokio::select! {
        _ = controllers::leader::lead(c, "kube-system", crate::server::CONTROLLERS_LEASE, &me) => {}
        _ = &mut shutdown => return Ok(()),
    }
    println!("leading: controllers running");
    let settings = controllers::run::Settings { credentials: credentials.filter(|c| c.cert_pem.is_some()), node_ranges, ..Default::default() };
    let ctrl = std::sync::Arc::new(controllers::Controllers::start(&server, settings).await);
    let _ = slot.set(ctrl);
    shutdown.await;
    Ok(())
}

pub async fn run_scheduler(server: String, listen: String, config: Option<PathBuf>, credentials: Option<client::tls::Credentials>) -> Result<()> {
    let s = new_scheduler(&server, config.as_deref(), None)?;
    let (addr, scheme) = serve_standalone(&listen, &server, s.router(), credentials.as_ref(), "capstan-scheduler").await?;
    println!("capstan scheduler for {server}: metrics at {scheme}://{addr}/metrics; stop with Ctrl-C");
    shutdown_signal().await;
    drop(s);
    Ok(())
}
