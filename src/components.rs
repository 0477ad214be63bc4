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

async fn start_scheduler(server: &str, listen: &str, config: Option<&std::path::Path>) -> Result<(scheduler::Scheduler, std::net::SocketAddr)> {
    let s = new_scheduler(server, config, None)?;
    let l = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("scheduler: listening on {listen}"))?;
    let addr = l.local_addr()?;
    let app = s.router();
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    Ok((s, addr))
}

/// `capstan controllers`: with `credentials` (the kubeconfig's certificate), as
/// kube-controller-manager with `--use-service-account-credentials`, each controller writes as
/// its own ServiceAccount, requested with them.
pub async fn run_controllers(server: String, listen: String, identity: Option<String>, credentials: Option<client::tls::Credentials>) -> Result<()> {
    // One handler for the whole run (see `shutdown_signal`).
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let me = identity.unwrap_or_else(|| format!("{}_{}", hostname(), std::process::id()));
    let l = tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("controllers: listening on {listen}"))?;
    let addr = l.local_addr()?;
    println!("capstan controllers for {server} as {me}: metrics at http://{addr}/metrics; waiting to lead; stop with Ctrl-C");
    let c = kubelet::client::Client::with_agent(&server, "capstan-controllers/0.1");
    tokio::select! {
        _ = controllers::leader::lead(c, "kube-system", crate::server::CONTROLLERS_LEASE, &me) => {}
        _ = &mut shutdown => return Ok(()),
    }
    println!("leading: controllers running");
    let settings = controllers::run::Settings { credentials: credentials.filter(|c| c.cert_pem.is_some()), ..Default::default() };
    let ctrl = std::sync::Arc::new(controllers::Controllers::start(&server, settings).await);
    let c2 = ctrl.clone();
    let app = axum::Router::new().route("/metrics", axum::routing::get(move || {
        let c = c2.clone();
        async move { c.metrics_text() }
    }));
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    shutdown.await;
    drop(ctrl);
    Ok(())
}

pub async fn run_scheduler(server: String, listen: String, config: Option<PathBuf>) -> Result<()> {
    let (s, addr) = start_scheduler(&server, &listen, config.as_deref()).await?;
    println!("capstan scheduler for {server}: metrics at http://{addr}/metrics; stop with Ctrl-C");
    shutdown_signal().await;
    drop(s);
    Ok(())
}

