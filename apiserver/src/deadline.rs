//! Request deadlines, as kube-apiserver has them: a request that is not long-running must be
//! answered within `--request-timeout` (60 s by default), or within its `timeout` query
//! parameter (`kubectl --request-timeout`) when that is shorter; past it, the client gets
//! Kubernetes' 504 `Status` and whatever the request was doing is dropped (a write not yet
//! proposed is not made; one already in the store stays, as in Kubernetes). Reading the
//! body is part of the request, so a client that announces a body and never sends it is
//! cut at the deadline instead of holding its connection.
//!
//! Long-running requests are exempt, as Kubernetes' default check makes them: watches, and
//! the streaming subresources (`log`, `exec`, `attach`, `portforward`, `proxy`). A watch has
//! its own end (`timeoutSeconds`, `handlers/watch.rs`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};

use crate::status::ApiError;

/// Kubernetes' default `--request-timeout`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Requests answered 504 because their deadline passed (`/metrics`).
pub static TIMEOUTS: AtomicU64 = AtomicU64::new(0);

/// Whether a request is long-running (no deadline): a watch or a stream.
pub fn long_running(path: &str, query: Option<&str>) -> bool {
    let watch_param = query.is_some_and(|q| q.split('&').any(|kv| matches!(kv, "watch=true" | "watch=1" | "watch=True")));
    if watch_param {
        return true;
    }
    let mut segs = path.split('/').filter(|s| !s.is_empty());
    // /api/v1/watch/... and /apis/GROUP/VERSION/watch/...
    let watch_path = match segs.next() {
        Some("api") => segs.nth(1) == Some("watch"),
        Some("apis") => segs.nth(2) == Some("watch"),
        _ => false,
    };
    // The dashboard's live stream and its CPU profile (which takes the seconds asked for).
    if path == "/ui/events" || path == "/ui/scheduler/flamegraph.svg" {
        return true;
    }
    watch_path || path.split('/').any(|s| matches!(s, "log" | "exec" | "attach" | "portforward" | "proxy"))
}

/// A Go duration (`30s`, `1m30s`, `1.5h`, `250ms`), as `timeout=` carries it.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid timeout specified in the request URL: time: invalid duration {s:?}");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() || rest.starts_with('-') {
        return Err(bad());
    }
    rest = rest.strip_prefix('+').unwrap_or(rest);
    while !rest.is_empty() {
        let n_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let n: f64 = rest[..n_end].parse().map_err(|_| bad())?;
        rest = &rest[n_end..];
        let u_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = match &rest[..u_end] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += n * unit;
        rest = &rest[u_end..];
    }
    if !total.is_finite() || total > 1e9 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(total))
}

/// The `timeout` query parameter, if any.
fn requested(query: Option<&str>) -> Result<Option<Duration>, String> {
    let Some(q) = query else { return Ok(None) };
    match form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "timeout") {
        Some((_, v)) => parse_go_duration(&v).map(Some),
        None => Ok(None),
    }
}

/// The step (`pipeline`): runs a request that is not long-running under its deadline.
pub async fn deadline<F: std::future::Future<Output = Response>>(limit: Duration, req: Request, next: impl FnOnce(Request) -> F) -> Response {
    if long_running(req.uri().path(), req.uri().query()) {
        return next(req).await;
    }
    let limit = match requested(req.uri().query()) {
        // Zero (kubectl's "no timeout") or more than the server allows: the server's limit.
        Ok(Some(d)) if !d.is_zero() => d.min(limit),
        Ok(_) => limit,
        Err(msg) => return ApiError::bad_request(msg).into_response(),
    };
    match tokio::time::timeout(limit, next(req)).await {
        Ok(r) => r,
        Err(_) => {
            TIMEOUTS.fetch_add(1, Ordering::Relaxed);
            ApiError::timeout().into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_and_streams_are_long_running_and_the_rest_is_not() {
        for (path, query, want) in [
            ("/api/v1/pods", Some("watch=true"), true),
            ("/api/v1/pods", Some("limit=5&watch=1"), true),
            ("/api/v1/watch/pods", None, true),
            ("/apis/apps/v1/watch/namespaces/d/deployments", None, true),
            ("/api/v1/namespaces/d/pods/p/log", Some("follow=true"), true),
            ("/api/v1/namespaces/d/pods/p/exec", None, true),
            ("/api/v1/namespaces/d/services/s/proxy/x", None, true),
            ("/api/v1/pods", Some("watch=false"), false),
            ("/ui/events", Some("path=/ui/"), true),
            ("/ui/pods", None, false),
            ("/api/v1/namespaces/watch/pods", None, false),
            ("/apis/apps/v1/deployments", None, false),
            ("/api/v1/namespaces/d/pods/p/status", None, false),
        ] {
            assert_eq!(long_running(path, query), want, "{path}?{query:?}");
        }
    }

    #[test]
    fn go_durations_parse_as_go_parses_them() {
        for (s, ms) in [("5s", 5000), ("1m30s", 90_000), ("1.5h", 5_400_000), ("250ms", 250), ("0", 0), ("2m", 120_000)] {
            assert_eq!(parse_go_duration(s).unwrap(), Duration::from_millis(ms), "{s}");
        }
        for s in ["", "5", "5x", "-5s", "s", "1e9h"] {
            assert!(parse_go_duration(s).is_err(), "{s}");
        }
        assert_eq!(requested(Some("a=b&timeout=10s")).unwrap(), Some(Duration::from_secs(10)));
        assert!(requested(Some("timeout=ten")).unwrap_err().contains("invalid timeout"));
    }
}
