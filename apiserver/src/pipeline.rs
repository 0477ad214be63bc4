//! A request's way in, before its handler: its deadline, its audit ID, the in-flight count,
//! authentication, auditing, API Priority and Fairness, then authorization (Kubernetes'
//! handler chain, in its order).
//!
//! One axum layer runs them all, each step handing the request to the next as a plain
//! closure. As seven `from_fn` layers they cost every request seven boxed futures and seven
//! boxed services, and each layer cloned the whole stack below it (its services and their
//! shared state's reference counts, touched from both cores) before it ran.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::handlers::AppState;

/// What the steps read.
#[derive(Clone)]
pub struct Checks {
    pub state: Arc<AppState>,
    /// The longest a request that is not long-running may take (`--request-timeout`).
    pub request_timeout: Duration,
}

/// The layer's function: every step, then the handler (`next`).
pub async fn run(State(c): State<Arc<Checks>>, req: Request, next: Next) -> Response {
    let st = &*c.state;
    crate::deadline::deadline(c.request_timeout, req, |req| {
        crate::audit::init(req, |req| {
            inflight(st, req, |req| {
                crate::authn::authenticate(st, req, |req| {
                    crate::audit::audit(st.auditor.as_ref(), req, |req| {
                        crate::apf::limit(st, req, |req| crate::rbac::authorize(st, req, |req| next.run(req)))
                    })
                })
            })
        })
    })
    .await
}

/// Counts the requests being served (`apiserver_current_inflight_requests`).
async fn inflight<F: Future<Output = Response>>(st: &AppState, req: Request, next: impl FnOnce(Request) -> F) -> Response {
    st.metrics.inflight.fetch_add(1, Ordering::Relaxed);
    let r = next(req).await;
    st.metrics.inflight.fetch_sub(1, Ordering::Relaxed);
    r
}
