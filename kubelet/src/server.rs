//! The kubelet's HTTP endpoint (on loopback): what the API server proxies to.
//! - `GET /containerLogs/{namespace}/{pod}/{container}?follow&previous&timestamps&tailLines&limitBytes&sinceSeconds`
//!   (the real kubelet's path), streamed as text.
//! - `GET /stats/capstan`: usage of every node and pod this process hosts, in one document
//!   (one request per kubelet process rather than one per node: a process hosts thousands
//!   of hollow nodes).
//! - `GET|POST /exec/{namespace}/{pod}/{container}?command=...&stdin&stdout&stderr&tty`:
//!   `kubectl exec` (`stream/`); `/attach/...` for `kubectl attach`; `/portForward/{namespace}/{pod}`
//!   for `kubectl port-forward`.
//! - `GET /healthz`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::Runtime;
use crate::logs::{self, LogOptions};

pub fn router(rt: Arc<dyn Runtime>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/stats/capstan", get(stats))
        .route("/containerLogs/{ns}/{pod}/{container}", get(container_logs))
        .route("/exec/{ns}/{pod}/{container}", get(crate::stream::exec).post(crate::stream::exec))
        .route("/attach/{ns}/{pod}/{container}", get(crate::stream::attach).post(crate::stream::attach))
        .route("/portForward/{ns}/{pod}", get(crate::stream::port_forward).post(crate::stream::port_forward))
        .with_state(rt)
}

async fn stats(State(rt): State<Arc<dyn Runtime>>) -> Response {
    let mut r = (StatusCode::OK, serde_json::to_vec(&rt.stats()).unwrap_or_default()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    r
}

fn bad(code: StatusCode, msg: String) -> Response {
    (code, msg).into_response()
}

/// The newest pod directory for `ns`/`pod` (a pod recreated under one name has a new uid).
fn pod_dir(root: &Path, ns: &str, pod: &str) -> Option<PathBuf> {
    let prefix = format!("{ns}_{pod}_");
    std::fs::read_dir(root)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

fn parse_opts(q: &HashMap<String, String>) -> Result<LogOptions, String> {
    let b = |k: &str| q.get(k).is_some_and(|v| v == "true" || v == "1");
    let n = |k: &str| -> Result<Option<u64>, String> {
        match q.get(k) {
            None => Ok(None),
            Some(v) => v.parse::<i64>().map_err(|_| format!("{k} must be an integer, not {v:?}")).and_then(|x| {
                if x < 0 { Err(format!("{k} must be non-negative")) } else { Ok(Some(x as u64)) }
            }),
        }
    };
    Ok(LogOptions {
        follow: b("follow"),
        previous: b("previous"),
        timestamps: b("timestamps"),
        tail_lines: n("tailLines")?.map(|x| x as usize),
        limit_bytes: n("limitBytes")?.map(|x| x as usize),
        since_seconds: n("sinceSeconds")?,
    })
}

async fn container_logs(State(rt): State<Arc<dyn Runtime>>, UrlPath((ns, pod, container)): UrlPath<(String, String, String)>, Query(q): Query<HashMap<String, String>>) -> Response {
    let opts = match parse_opts(&q) {
        Ok(o) => o,
        Err(e) => return bad(StatusCode::BAD_REQUEST, e),
    };
    let Some(root) = rt.log_root() else {
        // Hollow pods run nothing and so print nothing.
        return (StatusCode::OK, "").into_response();
    };
    let Some(dir) = pod_dir(&root, &ns, &pod) else {
        return bad(StatusCode::NOT_FOUND, format!("container \"{container}\" in pod \"{pod}\" is waiting to start: ContainerCreating"));
    };
    let starts = logs::starts(&dir.join(&container));
    let pick = if opts.previous { starts.len().checked_sub(2) } else { starts.len().checked_sub(1) };
    let Some(path) = pick.map(|i| starts[i].1.clone()) else {
        return bad(
            StatusCode::BAD_REQUEST,
            if opts.previous {
                format!("previous terminated container \"{container}\" in pod \"{pod}\" not found")
            } else {
                format!("container \"{container}\" in pod \"{pod}\" is waiting to start: ContainerCreating")
            },
        );
    };
    let now_unix = jiff::Timestamp::now().as_second();
    let (first, offset) = match logs::read_existing(&path, &opts, now_unix) {
        Ok(x) => x,
        Err(e) => return bad(StatusCode::INTERNAL_SERVER_ERROR, format!("reading {}: {e}", path.display())),
    };
    let live = if opts.follow && !opts.previous { rt.live_log(&path) } else { None };
    let Some(sink) = live else {
        return text(Body::from(first));
    };
    // Follow: send what exists, then each append, until the container exits and its output
    // is drained. The channel bounds what waits for a slow reader.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(16);
    let timestamps = opts.timestamps;
    tokio::spawn(async move {
        let mut progress = sink.subscribe();
        if !first.is_empty() && tx.send(Ok(first)).await.is_err() {
            return;
        }
        let mut off = offset;
        loop {
            let done = progress.borrow_and_update().1;
            let p = path.clone();
            let read = tokio::task::spawn_blocking(move || logs::read_from(&p, off, timestamps)).await;
            let Ok(Ok((chunk, next))) = read else { return };
            off = next;
            if !chunk.is_empty() && tx.send(Ok(chunk)).await.is_err() {
                return;
            }
            if done {
                return;
            }
            tokio::select! {
                r = progress.changed() => if r.is_err() { return },
                _ = tx.closed() => return,
            }
        }
    });
    text(Body::from_stream(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))))
}

fn text(body: Body) -> Response {
    let mut r = Response::new(body);
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain"));
    r
}
