//! `kubectl exec` on the kubelet endpoint (`/exec/{namespace}/{pod}/{container}`, proxied by
//! the API server's `pods/exec`), over Kubernetes' WebSocket channel protocol, versions
//! `v5.channel.k8s.io` (kubectl 1.30 and later) and `v4.channel.k8s.io` (client libraries).
//!
//! Every WebSocket message is one byte naming a channel, then data: 0 stdin (client to
//! server), 1 stdout, 2 stderr, 3 the final `Status` (JSON: `Success`, or `Failure` with
//! reason `NonZeroExitCode` and the code as a cause, from which kubectl takes its own exit
//! code), 4 terminal resize (`{"Width":W,"Height":H}`); v5 adds 255: the client closed a
//! channel (`[255, 0]`: end of stdin, what `kubectl cp` needs).
//!
//! The command runs in the container's namespaces (`sandbox::Join`) with its environment, in
//! its own process group (a session with the terminal as its controlling one under `tty`).
//! Output is read only as fast as the client takes it (a bounded queue of messages), and a
//! client that goes away takes the command with it (SIGKILL to its group).
//!
//! SPDY (kubectl 1.29 and older) is not spoken: such a request gets a 400 that says so.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::Runtime;

/// What an exec needs of a running container.
pub struct ExecTarget {
    /// The container's main process (its namespaces are joined).
    pub pid: i32,
    pub env: Vec<(String, String)>,
    /// The working directory, as a path in the container.
    pub cwd: PathBuf,
}

/// The protocols spoken, in order of preference.
const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;
/// Messages queued towards the client before the command's output is no longer read.
const QUEUE: usize = 16;
const CHUNK: usize = 32 * 1024;

/// The options of an exec request (`command` repeated, `stdin`, `stdout`, `stderr`, `tty`).
#[derive(Debug, Default, PartialEq)]
pub struct Options {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// Parses and checks the query as the API server does (same messages).
pub fn options(query: &str) -> Result<Options, String> {
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
    if o.command.is_empty() || o.command[0].is_empty() {
        return Err("you must specify at least 1 command".into());
    }
    if !(o.stdin || o.stdout || o.stderr) {
        return Err("you must specify at least one of stdin, stdout, stderr".into());
    }
    if o.tty && o.stderr {
        // kubectl sends stderr=false with a terminal; the stream would be the same one.
        o.stderr = false;
    }
    Ok(o)
}

fn bad(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, msg.into()).into_response()
}

/// `GET|POST /exec/{namespace}/{pod}/{container}`.
pub async fn exec(
    State(rt): State<Arc<dyn Runtime>>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let opts = match options(query.as_deref().unwrap_or("")) {
        Ok(o) => o,
        Err(e) => return bad(StatusCode::BAD_REQUEST, e),
    };
    let ws = match upgrade(ws, &headers) {
        Ok(ws) => ws,
        Err(r) => return r,
    };
    let Some(proto) = ws.selected_protocol().and_then(|p| p.to_str().ok()).map(String::from) else {
        return bad(StatusCode::BAD_REQUEST, format!("no supported WebSocket subprotocol: this kubelet speaks {}", PROTOCOLS.join(", ")));
    };
    let target = match rt.exec_target(&ns, &pod, &container) {
        Ok(t) => t,
        Err(e) => return bad(StatusCode::NOT_FOUND, e),
    };
    ws.max_message_size(1 << 20).on_upgrade(move |socket| session(socket, proto == PROTOCOLS[0], target, opts))
}

/// The command's standard streams: pipes, or one terminal.
enum Io {
    Pipes { stdin: Option<tokio::process::ChildStdin>, stdout: Option<tokio::process::ChildStdout>, stderr: Option<tokio::process::ChildStderr> },
    Tty { master: OwnedFd },
}

fn status_message(code: Option<i32>, command: &[String], spawn_error: Option<String>) -> Bytes {
    let status = match (spawn_error, code) {
        (Some(e), _) => json!({"metadata": {}, "status": "Failure", "message": format!("Internal error occurred: error executing command in container: {e}"), "reason": "InternalError", "code": 500}),
        (None, Some(0)) => json!({"metadata": {}, "status": "Success"}),
        (None, code) => {
            let c = code.unwrap_or(-1);
            json!({"metadata": {}, "status": "Failure", "message": format!("command terminated with non-zero exit code: error executing command {command:?}, exit code {c}"),
                "reason": "NonZeroExitCode", "details": {"causes": [{"reason": "ExitCode", "message": c.to_string()}]}})
        }
    };
    let mut b = vec![ERROR];
    b.extend_from_slice(&serde_json::to_vec(&status).unwrap_or_default());
    Bytes::from(b)
}

fn spawn(target: &ExecTarget, o: &Options) -> std::io::Result<(tokio::process::Child, Io)> {
    let mut cmd = tokio::process::Command::new(&o.command[0]);
    cmd.args(&o.command[1..]).env_clear().envs(target.env.iter().map(|(k, v)| (k, v))).kill_on_drop(true);
    crate::sandbox::Join::of(target.pid, &target.cwd)?.install(&mut cmd);
    if o.tty {
        let (mut m, mut s) = (0, 0);
        // SAFETY: openpty fills two descriptors that we then own.
        if unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: just opened, owned here alone.
        let (master, slave) = unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
        // SAFETY: fcntl on a descriptor we own.
        unsafe { libc::fcntl(master.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        cmd.stdin(std::process::Stdio::from(slave.try_clone()?)).stdout(std::process::Stdio::from(slave.try_clone()?)).stderr(std::process::Stdio::from(slave));
        // SAFETY: setsid and ioctl are async-signal-safe; fd 0 is the terminal by now.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        Ok((child, Io::Tty { master }))
    } else {
        let piped = |on: bool| if on { std::process::Stdio::piped() } else { std::process::Stdio::null() };
        cmd.stdin(piped(o.stdin)).stdout(piped(o.stdout)).stderr(piped(o.stderr)).process_group(0);
        let mut child = cmd.spawn()?;
        let io = Io::Pipes { stdin: child.stdin.take(), stdout: child.stdout.take(), stderr: child.stderr.take() };
        Ok((child, io))
    }
}

/// Copies a stream of the command to the client, one message per read.
async fn pump(mut r: impl tokio::io::AsyncRead + Unpin, chan: u8, tx: mpsc::Sender<Bytes>) {
    let mut buf = vec![0u8; CHUNK + 1];
    loop {
        buf[0] = chan;
        match r.read(&mut buf[1..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(Bytes::copy_from_slice(&buf[..n + 1])).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn resize(master: i32, data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let ws = libc::winsize { ws_row: v["Height"].as_u64().unwrap_or(24).min(u16::MAX as u64) as u16, ws_col: v["Width"].as_u64().unwrap_or(80).min(u16::MAX as u64) as u16, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ on the terminal's master with a winsize on the stack.
    unsafe { libc::ioctl(master, libc::TIOCSWINSZ, &ws) };
}

async fn session(socket: WebSocket, v5: bool, target: ExecTarget, o: Options) {
    let (mut sink, stream) = socket.split();
    let (child, io) = match spawn(&target, &o) {
        Ok(x) => x,
        Err(e) => {
            let what = if e.kind() == std::io::ErrorKind::NotFound { format!("exec: {:?}: executable file not found in $PATH", o.command[0]) } else { format!("exec: {:?}: {e}", o.command[0]) };
            let _ = sink.send(Message::Binary(status_message(None, &o.command, Some(what)))).await;
            let _ = sink.send(Message::Close(Some(axum::extract::ws::CloseFrame { code: axum::extract::ws::close_code::NORMAL, reason: "".into() }))).await;
            return;
        }
    };
    let mut child = child;
    let pgid = child.id().map(|p| p as i32);
    let (tx, rx) = mpsc::channel::<Bytes>(QUEUE);
    let mut pumps = Vec::new();
    // What the client sends: stdin, resizes, the end of stdin.
    let mut stdin_w: Option<Box<dyn tokio::io::AsyncWrite + Unpin + Send>> = None;
    let mut master_fd = None;
    match io {
        Io::Pipes { stdin, stdout, stderr } => {
            stdin_w = stdin.map(|s| Box::new(s) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>);
            if let Some(s) = stdout {
                pumps.push(tokio::spawn(pump(s, STDOUT, tx.clone())));
            }
            if let Some(s) = stderr {
                pumps.push(tokio::spawn(pump(s, STDERR, tx.clone())));
            }
        }
        Io::Tty { master } => {
            master_fd = Some(master.as_raw_fd());
            let w = std::fs::File::from(master.try_clone().expect("dup of the terminal"));
            if o.stdin {
                stdin_w = Some(Box::new(tokio::fs::File::from_std(w)));
            }
            let r = tokio::fs::File::from_std(std::fs::File::from(master));
            pumps.push(tokio::spawn(pump(r, STDOUT, tx.clone())));
        }
    }
    drop(tx);
    let done = async move {
        child.wait().await.ok().and_then(|s| {
            use std::os::unix::process::ExitStatusExt;
            s.code().or_else(|| s.signal().map(|sig| 128 + sig))
        })
    };
    let finished = run(sink, stream, v5, rx, stdin_w, master_fd, done, &o.command).await;
    if !finished && let Some(g) = pgid {
        // SAFETY: the command's own process group (or session) that we started.
        unsafe { libc::killpg(g, libc::SIGKILL) };
    }
    for p in pumps {
        p.abort();
    }
}

type Sink = futures_util::stream::SplitSink<WebSocket, Message>;
type Source = futures_util::stream::SplitStream<WebSocket>;
type Input = Option<Box<dyn tokio::io::AsyncWrite + Unpin + Send>>;

/// One session's traffic: output frames from `rx` to the client until they end and `done`
/// gives the exit code, then the final status and a normal close; the client's stdin,
/// resizes and end of stdin meanwhile. False when the client left first.
#[allow(clippy::too_many_arguments)]
async fn run(mut sink: Sink, mut stream: Source, v5: bool, mut rx: mpsc::Receiver<Bytes>, mut stdin_w: Input, master_fd: Option<i32>, done: impl std::future::Future<Output = Option<i32>>, command: &[String]) -> bool {
    let reader = async {
        while let Some(Ok(msg)) = stream.next().await {
            let data = match msg {
                Message::Binary(b) => b,
                Message::Text(t) => Bytes::copy_from_slice(t.as_bytes()),
                Message::Close(_) => return,
                _ => continue,
            };
            let Some((&chan, rest)) = data.split_first() else { continue };
            match chan {
                STDIN => {
                    if let Some(w) = stdin_w.as_mut()
                        && w.write_all(rest).await.and(w.flush().await).is_err()
                    {
                        stdin_w = None;
                    }
                }
                RESIZE => {
                    if let Some(fd) = master_fd {
                        resize(fd, rest);
                    }
                }
                CLOSE if v5 && rest.first() == Some(&STDIN) => {
                    if let Some(mut w) = stdin_w.take() {
                        // Under a terminal, end of input is ^D; otherwise the pipe closes.
                        if master_fd.is_some() {
                            let _ = w.write_all(&[4]).await;
                            let _ = w.flush().await;
                        } else {
                            let _ = w.shutdown().await;
                        }
                    }
                }
                _ => {}
            }
        }
    };
    let writer = async {
        while let Some(m) = rx.recv().await {
            if sink.send(Message::Binary(m)).await.is_err() {
                return false;
            }
        }
        true
    };
    // Output until every stream ended and the exit code; a client that left stops it all.
    let outcome = tokio::select! {
        r = async { tokio::join!(writer, done) } => Some(r),
        _ = reader => None,
    };
    match outcome {
        Some((true, code)) => {
            let _ = sink.send(Message::Binary(status_message(code, command, None))).await;
            let _ = sink.send(Message::Close(Some(axum::extract::ws::CloseFrame { code: axum::extract::ws::close_code::NORMAL, reason: "".into() }))).await;
            true
        }
        _ => false,
    }
}

/// What an attach needs of a running container: its output (as the log records it) and,
/// for a container with `stdin: true`, its standard input.
pub struct AttachTarget {
    pub log: Arc<crate::logs::LogSink>,
    pub stdin: Option<Arc<tokio::sync::Mutex<Option<tokio::process::ChildStdin>>>>,
    /// `stdinOnce`: the container's stdin closes when the first attached client closes it.
    pub stdin_once: bool,
}

/// `GET|POST /attach/{namespace}/{pod}/{container}`: the container's output from now on,
/// and its stdin when it has one, until it exits.
pub async fn attach(
    State(rt): State<Arc<dyn Runtime>>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // The same flags as exec, without a command.
    let opts = match options(&format!("command=attach&{}", query.as_deref().unwrap_or(""))) {
        Ok(o) => o,
        Err(e) => return bad(StatusCode::BAD_REQUEST, e),
    };
    let ws = match upgrade(ws, &headers) {
        Ok(ws) => ws,
        Err(r) => return r,
    };
    let Some(proto) = ws.selected_protocol().and_then(|p| p.to_str().ok()).map(String::from) else {
        return bad(StatusCode::BAD_REQUEST, format!("no supported WebSocket subprotocol: this kubelet speaks {}", PROTOCOLS.join(", ")));
    };
    let target = match rt.attach_target(&ns, &pod, &container) {
        Ok(t) => t,
        Err(e) => return bad(StatusCode::NOT_FOUND, e),
    };
    ws.max_message_size(1 << 20).on_upgrade(move |socket| attach_session(socket, proto == PROTOCOLS[0], target, opts))
}

/// The checks common to exec and attach: a WebSocket upgrade, with a protocol spoken here.
fn upgrade(ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>, headers: &HeaderMap) -> Result<WebSocketUpgrade, Response> {
    match ws {
        Ok(ws) => Ok(ws.protocols(PROTOCOLS)),
        Err(_) if headers.get("upgrade").is_some_and(|u| u.as_bytes().to_ascii_lowercase().starts_with(b"spdy")) => {
            Err(bad(StatusCode::BAD_REQUEST, "capstan's kubelet speaks the WebSocket streaming protocol (v4/v5.channel.k8s.io, kubectl 1.30 and later), not SPDY"))
        }
        Err(_) => Err(bad(StatusCode::BAD_REQUEST, "Upgrade request required")),
    }
}

/// Writes to a container's shared stdin (an attach).
struct SharedStdin(Arc<tokio::sync::Mutex<Option<tokio::process::ChildStdin>>>, bool);

impl SharedStdin {
    async fn write(&self, data: &[u8]) -> std::io::Result<()> {
        match self.0.lock().await.as_mut() {
            Some(w) => w.write_all(data).await,
            None => Err(std::io::ErrorKind::BrokenPipe.into()),
        }
    }
}

async fn attach_session(socket: WebSocket, v5: bool, target: AttachTarget, o: Options) {
    let (sink, stream) = socket.split();
    let (tx, rx) = mpsc::channel::<Bytes>(QUEUE);
    let log = target.log.clone();
    let (want_out, want_err) = (o.stdout, o.stderr || (o.tty && o.stdout));
    // Output: records appended to the log from now on, until the container exits.
    let follower = tokio::spawn(async move {
        let path = log.path().to_path_buf();
        let mut progress = log.subscribe();
        let mut off = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        loop {
            let finished = progress.borrow_and_update().1;
            let p = path.clone();
            let read = tokio::task::spawn_blocking(move || {
                let mut frames = Vec::new();
                let next = crate::logs::each_record_from(&p, off, |stream, rec| {
                    let chan = if stream == b"stderr" { STDERR } else { STDOUT };
                    if (chan == STDOUT && want_out) || (chan == STDERR && want_err) {
                        let mut b = Vec::with_capacity(rec.text.len() + 2);
                        b.push(chan);
                        b.extend_from_slice(rec.text);
                        if rec.full {
                            b.push(b'\n');
                        }
                        frames.push(Bytes::from(b));
                    }
                });
                next.map(|n| (frames, n))
            })
            .await;
            let Ok(Ok((frames, next))) = read else { return };
            off = next;
            for f in frames {
                if tx.send(f).await.is_err() {
                    return;
                }
            }
            if finished || progress.changed().await.is_err() {
                return;
            }
        }
    });
    // Input: the client's stdin to the container's, when both exist.
    let (input_tx, mut input_rx) = tokio::io::duplex(64 << 10);
    let stdin_w: Input = match (&target.stdin, o.stdin) {
        (Some(_), true) => Some(Box::new(input_tx)),
        _ => None,
    };
    let forward = target.stdin.clone().filter(|_| o.stdin).map(|s| {
        let shared = SharedStdin(s, target.stdin_once);
        tokio::spawn(async move {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match input_rx.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        // The client closed its stdin: with stdinOnce, so is the container's.
                        if shared.1 {
                            shared.0.lock().await.take();
                        }
                        return;
                    }
                    Ok(n) => {
                        if shared.write(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        })
    });
    let stop_following = follower.abort_handle();
    let done = async move {
        let _ = follower.await;
        Some(0)
    };
    run(sink, stream, v5, rx, stdin_w, None, done, &[]).await;
    stop_following.abort();
    if let Some(f) = forward {
        f.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_as_the_api_server_checks_them() {
        let o = options("command=sh&command=-c&command=echo%20hi&stdout=true&stderr=1").unwrap();
        assert_eq!(o, Options { command: vec!["sh".into(), "-c".into(), "echo hi".into()], stdin: false, stdout: true, stderr: true, tty: false });
        assert_eq!(options("stdout=true").unwrap_err(), "you must specify at least 1 command");
        assert_eq!(options("command=ls").unwrap_err(), "you must specify at least one of stdin, stdout, stderr");
        assert!(options("command=ls&stdout=maybe").unwrap_err().contains("invalid syntax"));
        assert!(!options("command=ls&stdout=1&stderr=1&tty=1").unwrap().stderr, "a terminal has one output stream");
    }

    #[test]
    fn the_final_status_carries_the_exit_code() {
        let s = status_message(Some(3), &["sh".into()], None);
        assert_eq!(s[0], ERROR);
        let v: serde_json::Value = serde_json::from_slice(&s[1..]).unwrap();
        assert_eq!((v["status"].as_str(), v["reason"].as_str(), v["details"]["causes"][0]["message"].as_str()), (Some("Failure"), Some("NonZeroExitCode"), Some("3")));
        let ok: serde_json::Value = serde_json::from_slice(&status_message(Some(0), &[], None)[1..]).unwrap();
        assert_eq!(ok["status"], "Success");
    }
}
