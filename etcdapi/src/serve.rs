//! The endpoint: a listener, TLS with client certificates required (etcd's
//! `--client-cert-auth`), and every call checked for `system:masters` before it reaches a
//! service; or plain, under `--insecure-http`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Status};

use crate::pb::{auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer, maintenance_server::MaintenanceServer, watch_server::WatchServer};
use crate::{Ctx, cluster::Cluster, errors, kv::Kv, lease::Lease, maintenance::Maintenance, watch::Watch};

/// How long a client has to finish its TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// Connections waiting for the server to take them (past it, accepting waits).
const PENDING: usize = 64;
/// TLS handshakes in progress at once.
const HANDSHAKES: usize = 256;
/// The group whose members may use the endpoint (kube-apiserver's own client certificate
/// for etcd is in it; so is the admin's).
const MASTERS: &str = "system:masters";
/// What gRPC adds to a request's payload (etcd allows the same above its request limit).
pub(crate) const GRPC_OVERHEAD: usize = 512 * 1024;

/// A running endpoint.
pub struct Listening {
    pub addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Listening {
    /// Stops accepting and serving (before the process lets its store go).
    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Whether a connection's client certificate is in `system:masters` (read from its O).
fn masters(req: &Request<()>) -> bool {
    let Some(info) = req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>() else { return false };
    let Some(certs) = info.peer_certs() else { return false };
    let Some(leaf) = certs.first() else { return false };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else { return false };
    // A connection outliving its certificate is let in no more.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    now <= cert.validity().not_after.timestamp() && cert.subject().iter_organization().any(|o| o.as_str() == Ok(MASTERS))
}

/// Serves the etcd API on `listener`: over `tls` (which must require client certificates of
/// the cluster CA) with calls limited to `system:masters`, or plain without.
pub fn serve(listener: TcpListener, ctx: Arc<Ctx>, tls: Option<Arc<rustls::ServerConfig>>) -> std::io::Result<Listening> {
    let addr = listener.local_addr()?;
    let secure = tls.is_some();
    let check = move |req: Request<()>| -> Result<Request<()>, Status> {
        if !secure || masters(&req) { Ok(req) } else { Err(errors::permission_denied()) }
    };
    // Messages up to twice etcd's gRPC limit are decoded so that `check_size` answers them as
    // etcd does; past that tonic refuses them (OutOfRange) without reading them whole.
    let max = 2 * (ctx.limits.request_bytes + GRPC_OVERHEAD);
    let router = tonic::transport::Server::builder()
        .add_service(InterceptedService::new(KvServer::new(Kv(ctx.clone())).max_decoding_message_size(max), check))
        .add_service(InterceptedService::new(WatchServer::new(Watch(ctx.clone())).max_decoding_message_size(max), check))
        .add_service(InterceptedService::new(LeaseServer::new(Lease(ctx.clone())).max_decoding_message_size(max), check))
        .add_service(InterceptedService::new(ClusterServer::new(Cluster(ctx.clone())).max_decoding_message_size(max), check))
        .add_service(InterceptedService::new(MaintenanceServer::new(Maintenance(ctx.clone())).max_decoding_message_size(max), check))
        .add_service(InterceptedService::new(AuthServer::new(crate::auth::Auth(ctx.clone())).max_decoding_message_size(max), check));
    let tasks = match tls {
        Some(cfg) => {
            let mut cfg = (*cfg).clone();
            cfg.alpn_protocols = vec![b"h2".to_vec()];
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
            let (tx, rx) = mpsc::channel::<Result<tokio_rustls::server::TlsStream<TcpStream>, std::io::Error>>(PENDING);
            let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES));
            let accept = tokio::spawn(async move {
                loop {
                    let accepted = tokio::select! {
                        a = listener.accept() => a,
                        _ = tx.closed() => return,
                    };
                    let (tcp, peer) = match accepted {
                        Ok(c) => c,
                        Err(e) => {
                            // Out of descriptors, say: wait a little rather than spin.
                            tracing::warn!(error = %e, "etcd endpoint: accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    // Handshakes in progress are bounded; past the bound a connection is closed.
                    let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                        tracing::debug!(%peer, "etcd endpoint: too many TLS handshakes in progress; connection closed");
                        continue;
                    };
                    let _ = tcp.set_nodelay(true);
                    let (acceptor, tx) = (acceptor.clone(), tx.clone());
                    tokio::spawn(async move {
                        let _permit = permit;
                        match tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await {
                            Ok(Ok(s)) => {
                                let _ = tx.send(Ok(s)).await;
                            }
                            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "etcd endpoint: TLS handshake failed"),
                            Err(_) => tracing::debug!(%peer, "etcd endpoint: TLS handshake timed out"),
                        }
                    });
                }
            });
            let incoming = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
            let serving = tokio::spawn(async move {
                if let Err(e) = router.serve_with_incoming(incoming).await {
                    tracing::error!(error = %e, "etcd endpoint stopped");
                }
            });
            vec![accept, serving]
        }
        None => {
            let incoming = futures_util::stream::unfold(listener, |l| async move {
                loop {
                    match l.accept().await {
                        Ok((s, _)) => {
                            let _ = s.set_nodelay(true);
                            return Some((Ok::<_, std::io::Error>(s), l));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "etcd endpoint: accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            });
            vec![tokio::spawn(async move {
                if let Err(e) = router.serve_with_incoming(incoming).await {
                    tracing::error!(error = %e, "etcd endpoint stopped");
                }
            })]
        }
    };
    Ok(Listening { addr, tasks })
}
