//! What an exec or an attach does, whatever carries it (WebSocket channels or SPDY streams):
//! output goes out as `(channel, bytes)` on a bounded queue, input arrives as [`In`] events,
//! and the job ends with the exit code (or why the command could not start). A transport
//! that loses its client drops the input sender: the job then stops its command.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use bytes::Bytes;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{AttachTarget, ExecTarget, Options};

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
/// Output messages queued towards the client before the command's output is not read.
pub const QUEUE: usize = 16;
const CHUNK: usize = 32 * 1024;

/// What the client sends.
pub enum In {
    Stdin(Bytes),
    /// The client closed its stdin.
    StdinEnd,
    /// A terminal size, as JSON `{"Width":W,"Height":H}`.
    Resize(Bytes),
}

pub type Output = mpsc::Sender<(u8, Bytes)>;

/// How a job ended: the command's exit code, or why it could not start.
pub type Outcome = Result<Option<i32>, String>;

/// The final `Status` as the error channel carries it (v4 and later): `Success`, or `Failure`
/// with reason `NonZeroExitCode` and the code as a cause (kubectl exits with it).
pub fn status(outcome: &Outcome, command: &[String]) -> Bytes {
    let v = match outcome {
        Err(e) => json!({"metadata": {}, "status": "Failure", "message": format!("Internal error occurred: error executing command in container: {e}"), "reason": "InternalError", "code": 500}),
        Ok(Some(0)) => json!({"metadata": {}, "status": "Success"}),
        Ok(code) => {
            let c = code.unwrap_or(-1);
            json!({"metadata": {}, "status": "Failure", "message": format!("command terminated with non-zero exit code: error executing command {command:?}, exit code {c}"),
                "reason": "NonZeroExitCode", "details": {"causes": [{"reason": "ExitCode", "message": c.to_string()}]}})
        }
    };
    Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
}

/// The command's standard streams: pipes, or one terminal.
enum Io {
    Pipes { stdin: Option<tokio::process::ChildStdin>, stdout: Option<tokio::process::ChildStdout>, stderr: Option<tokio::process::ChildStderr> },
    Tty { master: OwnedFd },
}

fn spawn(target: &ExecTarget, o: &Options) -> std::io::Result<(tokio::process::Child, Io)> {
    let mut cmd = tokio::process::Command::new(&o.command[0]);
    cmd.args(&o.command[1..]).env_clear().envs(target.env.iter().map(|(k, v)| (k, v))).kill_on_drop(true);
    crate::sandbox::Join::of(target.pid, &target.cwd)?.with_privileges(target.privileges.clone()).install(&mut cmd);
    if o.tty {
        let (master, slave) = pty()?;
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

/// A pseudo-terminal, both ends close-on-exec from the start (another thread forking
/// meanwhile must not inherit someone's terminal).
pub(crate) fn pty() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let last = std::io::Error::last_os_error;
    // SAFETY: posix_openpt returns a descriptor we then own.
    let m = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if m < 0 {
        return Err(last());
    }
    // SAFETY: just opened, owned here alone.
    let master = unsafe { OwnedFd::from_raw_fd(m) };
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: grantpt, unlockpt and ptsname_r on our master, into a buffer on the stack.
    unsafe {
        if libc::grantpt(m) < 0 || libc::unlockpt(m) < 0 || libc::ptsname_r(m, name.as_mut_ptr(), name.len()) != 0 {
            return Err(last());
        }
    }
    // SAFETY: opening the terminal's slave by the NUL-terminated name ptsname_r wrote.
    let s = unsafe { libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if s < 0 {
        return Err(last());
    }
    // SAFETY: just opened, owned here alone.
    Ok((master, unsafe { OwnedFd::from_raw_fd(s) }))
}

/// Copies a stream of the command to the client, one message per read.
async fn pump(mut r: impl tokio::io::AsyncRead + Unpin, chan: u8, tx: Output) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send((chan, Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn resize(master: i32, data: &[u8]) {
    // A SPDY resize stream carries one JSON object after another.
    for v in serde_json::Deserializer::from_slice(data).into_iter::<serde_json::Value>().flatten() {
        let size = |k: &str, d: u64| v[k].as_u64().unwrap_or(d).min(u16::MAX as u64) as u16;
        let ws = libc::winsize { ws_row: size("Height", 24), ws_col: size("Width", 80), ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ on the terminal's master with a winsize on the stack.
        unsafe { libc::ioctl(master, libc::TIOCSWINSZ, &ws) };
    }
}

type Writer = Box<dyn tokio::io::AsyncWrite + Unpin + Send>;

/// Runs the command of an exec; see the module's notes.
pub async fn exec(target: ExecTarget, o: Options, out: Output, mut input: mpsc::Receiver<In>) -> Outcome {
    let (mut child, io) = match spawn(&target, &o) {
        Ok(x) => x,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(format!("exec: {:?}: executable file not found in $PATH", o.command[0])),
        Err(e) => return Err(format!("exec: {:?}: {e}", o.command[0])),
    };
    let pgid = child.id().map(|p| p as i32);
    let mut pumps = Vec::new();
    let mut stdin_w: Option<Writer> = None;
    let mut master_fd = None;
    match io {
        Io::Pipes { stdin, stdout, stderr } => {
            stdin_w = stdin.map(|s| Box::new(s) as Writer);
            if let Some(s) = stdout {
                pumps.push(tokio::spawn(pump(s, STDOUT, out.clone())));
            }
            if let Some(s) = stderr {
                pumps.push(tokio::spawn(pump(s, STDERR, out.clone())));
            }
        }
        Io::Tty { master } => {
            master_fd = Some(master.as_raw_fd());
            let w = std::fs::File::from(master.try_clone().map_err(|e| e.to_string())?);
            if o.stdin {
                stdin_w = Some(Box::new(tokio::fs::File::from_std(w)));
            }
            let r = tokio::fs::File::from_std(std::fs::File::from(master));
            pumps.push(tokio::spawn(pump(r, STDOUT, out.clone())));
        }
    }
    drop(out);
    let tty = master_fd.is_some();
    let feed = async {
        while let Some(ev) = input.recv().await {
            match ev {
                In::Stdin(b) => {
                    if let Some(w) = stdin_w.as_mut()
                        && w.write_all(&b).await.and(w.flush().await).is_err()
                    {
                        stdin_w = None;
                    }
                }
                In::StdinEnd => {
                    if let Some(mut w) = stdin_w.take() {
                        // Under a terminal, end of input is ^D; otherwise the pipe closes.
                        if tty {
                            let _ = w.write_all(&[4]).await;
                            let _ = w.flush().await;
                        } else {
                            let _ = w.shutdown().await;
                        }
                    }
                }
                In::Resize(b) => {
                    if let Some(fd) = master_fd {
                        resize(fd, &b);
                    }
                }
            }
        }
    };
    let finished = async {
        let code = child.wait().await.ok().and_then(|s| {
            use std::os::unix::process::ExitStatusExt;
            s.code().or_else(|| s.signal().map(|sig| 128 + sig))
        });
        for p in &mut pumps {
            let _ = p.await;
        }
        code
    };
    tokio::select! {
        code = finished => Ok(code),
        _ = feed => {
            // The client went away: so does the command.
            if let Some(g) = pgid {
                // SAFETY: the command's own process group (or session) that we started.
                unsafe { libc::killpg(g, libc::SIGKILL) };
            }
            Ok(None)
        }
    }
}

/// Follows a container's output from now on (and feeds its stdin) until it exits.
pub async fn attach(target: AttachTarget, o: Options, out: Output, mut input: mpsc::Receiver<In>) -> Outcome {
    let log = target.log.clone();
    let (want_out, want_err) = (o.stdout, o.stderr);
    let tty_out = target.tty.as_ref().map(|t| t.output.subscribe());
    let follow = async move {
        // A terminal's output as it comes (what the log holds was written before), until the
        // log is finished: the container has exited and its output is all read.
        if let Some(mut rx) = tty_out {
            use tokio::sync::broadcast::error::{RecvError, TryRecvError};
            let mut progress = log.subscribe();
            loop {
                if progress.borrow_and_update().1 {
                    loop {
                        match rx.try_recv() {
                            Ok(b) => {
                                if want_out && out.send((STDOUT, b)).await.is_err() {
                                    return;
                                }
                            }
                            Err(TryRecvError::Lagged(_)) => {}
                            Err(_) => return,
                        }
                    }
                }
                tokio::select! {
                    r = rx.recv() => match r {
                        Ok(b) => {
                            if want_out && out.send((STDOUT, b)).await.is_err() {
                                return;
                            }
                        }
                        Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => return,
                    },
                    changed = progress.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                }
            }
        }
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
                        let mut b = rec.text.to_vec();
                        if rec.full {
                            b.push(b'\n');
                        }
                        frames.push((chan, Bytes::from(b)));
                    }
                });
                next.map(|n| (frames, n))
            })
            .await;
            let Ok(Ok((frames, next))) = read else { return };
            off = next;
            for f in frames {
                if out.send(f).await.is_err() {
                    return;
                }
            }
            if finished || progress.changed().await.is_err() {
                return;
            }
        }
    };
    let stdin = target.stdin.clone().filter(|_| o.stdin);
    let master = target.tty.as_ref().map(|t| t.master.clone());
    let feed = async {
        while let Some(ev) = input.recv().await {
            if let (In::Resize(data), Some(m)) = (&ev, &master) {
                resize(m.as_raw_fd(), data);
                continue;
            }
            let Some(s) = &stdin else { continue };
            match ev {
                In::Stdin(b) => {
                    let mut g = s.lock().await;
                    if let Some(w) = g.as_mut()
                        && (w.write_all(&b).await.is_err() || w.flush().await.is_err())
                    {
                        g.take();
                    }
                }
                // With stdinOnce, the client's end of input is the container's.
                In::StdinEnd if target.stdin_once => {
                    s.lock().await.take();
                }
                _ => {}
            }
        }
        // The client left: so does the session.
    };
    tokio::select! {
        _ = follow => Ok(Some(0)),
        _ = feed => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_final_status_carries_the_exit_code() {
        let v: serde_json::Value = serde_json::from_slice(&status(&Ok(Some(3)), &["sh".into()])).unwrap();
        assert_eq!((v["status"].as_str(), v["reason"].as_str(), v["details"]["causes"][0]["message"].as_str()), (Some("Failure"), Some("NonZeroExitCode"), Some("3")));
        let ok: serde_json::Value = serde_json::from_slice(&status(&Ok(Some(0)), &[])).unwrap();
        assert_eq!(ok["status"], "Success");
        let e: serde_json::Value = serde_json::from_slice(&status(&Err("exec: \"x\": not found".into()), &[])).unwrap();
        assert_eq!(e["reason"], "InternalError");
    }
}
