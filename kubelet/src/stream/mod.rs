//! The streaming endpoints of the kubelet, proxied by the API server's `pods/exec`,
//! `pods/attach` and `pods/portforward`:
//! - `/exec/{namespace}/{pod}/{container}?command=...&stdin&stdout&stderr&tty`: a command in
//!   the container's namespaces, with its environment (`job::exec`);
//! - `/attach/{namespace}/{pod}/{container}`: the container's output from now on and, when its
//!   spec asks for one, its stdin (`job::attach`);
//! - `/portForward/{namespace}/{pod}`: TCP connections to the pod's ports (`portforward`).
//!
//! Each speaks what kubectl speaks: exec and attach over WebSocket channels (`ws`,
//! `v5.channel.k8s.io` for kubectl 1.30 and later, `v4.channel.k8s.io` for client libraries)
//! or SPDY streams (`spdy`, kubectl 1.29 and older, `X-Stream-Protocol-Version:
//! v4.channel.k8s.io`); port-forward over SPDY, directly or tunnelled through a WebSocket
//! (`SPDY/3.1+portforward.k8s.io`, kubectl 1.31 and later), or over WebSocket channels
//! (`v4.channel.k8s.io` with `ports=`, client libraries).

pub mod job;
mod portforward;
pub mod spdy;
mod ws;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, Path as UrlPath, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use crate::Runtime;
use job::{In, Outcome, Output};

/// What an exec needs of a running container.
pub struct ExecTarget {
    /// The container's main process (its namespaces are joined).
    pub pid: i32,
    pub env: Vec<(String, String)>,
    /// The working directory, as a path in the container.
    pub cwd: PathBuf,
    /// The container's user, groups and capabilities (None: not sandboxed).
    pub privileges: Option<crate::privileges::Privileges>,
}

/// A container's standard input, for attach (a pipe, or its terminal).
pub type ContainerStdin = Arc<tokio::sync::Mutex<Option<Box<dyn tokio::io::AsyncWrite + Unpin + Send>>>>;

/// What an attach needs of a running container: its output (as the log records it) and,
/// for a container with `stdin: true`, its standard input.
pub struct AttachTarget {
    pub log: Arc<crate::logs::LogSink>,
    pub stdin: Option<ContainerStdin>,
    /// `stdinOnce`: the container's stdin closes when the first attached client closes it.
    pub stdin_once: bool,
    /// A `tty: true` container's terminal: its output as it comes (prompts without a newline
    /// included), and its master for resizes.
    pub tty: Option<Tty>,
}

/// A container's terminal.
#[derive(Clone)]
pub struct Tty {
    pub output: tokio::sync::broadcast::Sender<bytes::Bytes>,
    pub master: Arc<std::os::fd::OwnedFd>,
}

/// WebSocket subprotocols of exec and attach, in order of preference.
const CHANNEL_PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// The SPDY stream protocol of exec and attach (`X-Stream-Protocol-Version`).
const SPDY_CHANNELS: &str = "v4.channel.k8s.io";
const PORT_FORWARD: &str = "portforward.k8s.io";
const PORT_FORWARD_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";
/// How long the client has to open the streams it announced (the kubelet's
/// streamCreationTimeout).
const STREAM_CREATION: Duration = Duration::from_secs(30);

/// The options of an exec or attach request (`command` repeated, `stdin`, `stdout`,
/// `stderr`, `tty`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Options {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// Parses and checks the query as the API server does (same messages).
pub fn options(query: &str, need_command: bool) -> Result<Options, String> {
    let mut o = Options::default();
    let flag = |k: &str, v: &str| -> Result<bool, String> {
        match v {
            "1" | "true" | "True" | "TRUE" | "t" | "T" => Ok(true),
            "0" | "false" | "False" | "FALSE" | "f" | "F" | "" => Ok(false),
            _ => Err(format!("{k}: strconv.ParseBool: parsing {v:?}: invalid syntax")),
        }
    };
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "command" => o.command.push(v.into_owned()),
            "stdin" | "input" => o.stdin = flag(&k, &v)?,
            "stdout" | "output" => o.stdout = flag(&k, &v)?,
            "stderr" | "error" => o.stderr = flag(&k, &v)?,
            "tty" => o.tty = flag(&k, &v)?,
            _ => {}
        }
    }
    if need_command && o.command.first().is_none_or(|c| c.is_empty()) {
        return Err("you must specify at least 1 command".into());
    }
    if !(o.stdin || o.stdout || o.stderr) {
        return Err("you must specify at least one of stdin, stdout, stderr".into());
    }
    if o.tty && o.stderr {
        // A terminal has one output stream (kubectl sends stderr=false with -t).
        o.stderr = false;
    }
    Ok(o)
}

fn bad(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, msg.into()).into_response()
}

/// The protocol a request asks to switch to.
enum Upgrade {
    Ws(WebSocketUpgrade),
    /// SPDY/3.1: the connection to take over, and the `X-Stream-Protocol-Version`s offered.
    Spdy(hyper::upgrade::OnUpgrade, Vec<String>),
}

async fn upgrade(req: Request) -> Result<Upgrade, Response> {
    let (mut parts, _) = req.into_parts();
    if let Ok(ws) = WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        return Ok(Upgrade::Ws(ws));
    }
    let spdy = parts.headers.get(header::UPGRADE).is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"SPDY/3.1"));
    if !spdy {
        return Err(bad(StatusCode::BAD_REQUEST, "Upgrade request required"));
    }
    let offered = parts.headers.get_all("x-stream-protocol-version").iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',').map(|s| s.trim().to_string())).collect();
    let on = parts.extensions.remove::<hyper::upgrade::OnUpgrade>().ok_or_else(|| bad(StatusCode::BAD_REQUEST, "this connection cannot be upgraded"))?;
    Ok(Upgrade::Spdy(on, offered))
}

/// The 101 answer to a SPDY upgrade, naming the stream protocol chosen.
fn switching(protocol: &'static str) -> Response {
    let mut r = Response::new(axum::body::Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    h.insert("X-Stream-Protocol-Version", HeaderValue::from_static(protocol));
    r
}

fn negotiate(offered: &[String], ours: &'static str) -> Result<&'static str, Response> {
    if offered.iter().any(|p| p == ours) {
        Ok(ours)
    } else {
        Err(bad(StatusCode::FORBIDDEN, format!("unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts [{ours:?}]")))
    }
}

/// Exec and attach over either transport.
fn serve_channels<F, Fut>(up: Upgrade, o: Options, job: F) -> Response
where
    F: FnOnce(Output, mpsc::Receiver<In>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Outcome> + Send + 'static,
{
    match up {
        Upgrade::Ws(ws) => {
            let ws = ws.protocols(CHANNEL_PROTOCOLS);
            let Some(proto) = ws.selected_protocol().and_then(|p| p.to_str().ok()).map(String::from) else {
                return bad(StatusCode::BAD_REQUEST, format!("no supported WebSocket subprotocol: this kubelet speaks {}", CHANNEL_PROTOCOLS.join(", ")));
            };
            let v5 = proto == CHANNEL_PROTOCOLS[0];
            ws.max_message_size(1 << 20).on_upgrade(move |socket| ws::channels(socket, v5, o.command.clone(), job))
        }
        Upgrade::Spdy(on, offered) => {
            let proto = match negotiate(&offered, SPDY_CHANNELS) {
                Ok(p) => p,
                Err(r) => return r,
            };
            tokio::spawn(async move {
                let Ok(io) = on.await else { return };
                spdy_channels(spdy::serve(TokioIo::new(io)), o, job).await;
            });
            switching(proto)
        }
    }
}

/// Exec and attach over SPDY: one stream per channel (`streamtype` error, stdin, stdout,
/// stderr, resize), all opened by the client before anything runs.
async fn spdy_channels<F, Fut>(mut streams: mpsc::Receiver<spdy::Stream>, o: Options, job: F)
where
    F: FnOnce(Output, mpsc::Receiver<In>) -> Fut,
    Fut: std::future::Future<Output = Outcome> + Send + 'static,
{
    let wanted = 1 + o.stdin as usize + o.stdout as usize + o.stderr as usize + o.tty as usize;
    let mut by_type: std::collections::HashMap<String, spdy::Stream> = Default::default();
    let gathered = tokio::time::timeout(STREAM_CREATION, async {
        while by_type.len() < wanted {
            let s = streams.recv().await?;
            let t = s.header("streamtype").unwrap_or("").to_string();
            by_type.insert(t, s);
        }
        Some(())
    })
    .await;
    let Some(error) = by_type.remove("error") else { return };
    if !matches!(gathered, Ok(Some(()))) {
        let _ = error.tx.data(Bytes::from_static(b"timed out waiting for the client to create streams")).await;
        error.tx.go_away().await;
        return;
    }
    let (out_tx, mut out_rx) = mpsc::channel::<(u8, Bytes)>(job::QUEUE);
    let (in_tx, in_rx) = mpsc::channel::<In>(job::QUEUE);
    let mut inputs = Vec::new();
    for (t, ev_of) in [("stdin", In::Stdin as fn(Bytes) -> In), ("resize", In::Resize as fn(Bytes) -> In)] {
        if let Some(mut s) = by_type.remove(t) {
            let tx = in_tx.clone();
            inputs.push(tokio::spawn(async move {
                while let Some(b) = s.rx.recv().await {
                    if tx.send(ev_of(b)).await.is_err() {
                        return;
                    }
                }
                if t == "stdin" {
                    let _ = tx.send(In::StdinEnd).await;
                }
            }));
        }
    }
    // The input sender lives as long as the connection: its end is the client leaving.
    tokio::spawn(async move {
        while streams.recv().await.is_some() {}
        drop(in_tx);
    });
    let stdout = by_type.remove("stdout").map(|s| s.tx);
    let stderr = by_type.remove("stderr").map(|s| s.tx);
    let command = o.command.clone();
    let task = tokio::spawn(job(out_tx, in_rx));
    while let Some((chan, data)) = out_rx.recv().await {
        let to = if chan == job::STDERR { &stderr } else { &stdout };
        if let Some(tx) = to
            && !tx.data(data).await
        {
            break;
        }
    }
    drop(out_rx);
    let outcome = task.await.unwrap_or(Ok(None));
    let _ = error.tx.data(job::status(&outcome, &command)).await;
    for tx in [Some(&error.tx), stdout.as_ref(), stderr.as_ref()].into_iter().flatten() {
        tx.fin().await;
    }
    error.tx.go_away().await;
    for i in inputs {
        i.abort();
    }
}

/// What exec and attach check before they switch protocols: the options (400), the upgrade,
/// and the container (404).
async fn open<T>(query: Option<String>, need_command: bool, req: Request, target: impl FnOnce() -> Result<T, String>) -> Result<(Upgrade, Options, T), Response> {
    let o = options(query.as_deref().unwrap_or(""), need_command).map_err(|e| bad(StatusCode::BAD_REQUEST, e))?;
    let up = upgrade(req).await?;
    let t = target().map_err(|e| bad(StatusCode::NOT_FOUND, e))?;
    Ok((up, o, t))
}

/// `GET|POST /exec/{namespace}/{pod}/{container}`.
pub async fn exec(State(rt): State<Arc<dyn Runtime>>, UrlPath((ns, pod, container)): UrlPath<(String, String, String)>, RawQuery(query): RawQuery, req: Request) -> Response {
    match open(query, true, req, || rt.exec_target(&ns, &pod, &container)).await {
        Ok((up, o, target)) => serve_channels(up, o.clone(), move |out, input| job::exec(target, o, out, input)),
        Err(r) => r,
    }
}

/// `GET|POST /attach/{namespace}/{pod}/{container}`.
pub async fn attach(State(rt): State<Arc<dyn Runtime>>, UrlPath((ns, pod, container)): UrlPath<(String, String, String)>, RawQuery(query): RawQuery, req: Request) -> Response {
    match open(query, false, req, || rt.attach_target(&ns, &pod, &container)).await {
        Ok((up, o, target)) => serve_channels(up, o.clone(), move |out, input| job::attach(target, o, out, input)),
        Err(r) => r,
    }
}

/// `GET|POST /portForward/{namespace}/{pod}`.
pub async fn port_forward(State(rt): State<Arc<dyn Runtime>>, UrlPath((ns, pod)): UrlPath<(String, String)>, RawQuery(query): RawQuery, req: Request) -> Response {
    let host = match rt.port_forward_target(&ns, &pod) {
        Ok(h) => h,
        Err(e) => return bad(StatusCode::NOT_FOUND, e),
    };
    let name = format!("{ns}/{pod}");
    match upgrade(req).await {
        Err(r) => r,
        Ok(Upgrade::Ws(ws)) => {
            let ws = ws.protocols([PORT_FORWARD_TUNNEL, CHANNEL_PROTOCOLS[0], CHANNEL_PROTOCOLS[1]]);
            match ws.selected_protocol().and_then(|p| p.to_str().ok()) {
                Some(PORT_FORWARD_TUNNEL) => ws.on_upgrade(move |socket| portforward::serve(spdy::serve(ws::bytes(socket)), host, name)),
                Some(_) => match portforward::ports(query.as_deref().unwrap_or("")) {
                    Ok(ports) => ws.on_upgrade(move |socket| portforward::channels(socket, host, name, ports)),
                    Err(e) => bad(StatusCode::BAD_REQUEST, e),
                },
                None => bad(StatusCode::BAD_REQUEST, format!("no supported WebSocket subprotocol: port-forward speaks {PORT_FORWARD_TUNNEL}, {}", CHANNEL_PROTOCOLS.join(", "))),
            }
        }
        Ok(Upgrade::Spdy(on, offered)) => {
            let proto = match negotiate(&offered, PORT_FORWARD) {
                Ok(p) => p,
                Err(r) => return r,
            };
            tokio::spawn(async move {
                let Ok(io) = on.await else { return };
                portforward::serve(spdy::serve(TokioIo::new(io)), host, name).await;
            });
            switching(proto)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_as_the_api_server_checks_them() {
        let o = options("command=sh&command=-c&command=echo%20hi&stdout=true&stderr=1", true).unwrap();
        assert_eq!(o, Options { command: vec!["sh".into(), "-c".into(), "echo hi".into()], stdin: false, stdout: true, stderr: true, tty: false });
        assert_eq!(options("stdout=true", true).unwrap_err(), "you must specify at least 1 command");
        assert!(options("stdout=true", false).is_ok(), "attach has no command");
        assert_eq!(options("command=ls", true).unwrap_err(), "you must specify at least one of stdin, stdout, stderr");
        assert!(options("command=ls&stdout=maybe", true).unwrap_err().contains("invalid syntax"));
        assert!(!options("command=ls&stdout=1&stderr=1&tty=1", true).unwrap().stderr, "a terminal has one output stream");
    }

    #[test]
    fn stream_protocols_are_negotiated() {
        assert_eq!(negotiate(&["v4.channel.k8s.io".into(), "v3.channel.k8s.io".into()], SPDY_CHANNELS).ok(), Some("v4.channel.k8s.io"));
        assert_eq!(negotiate(&["channel.k8s.io".into()], SPDY_CHANNELS).err().map(|r| r.status()), Some(StatusCode::FORBIDDEN));
    }
}
