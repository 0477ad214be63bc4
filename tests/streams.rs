//! `kubectl exec`, `attach` and `cp` against the real node of `capstan up`, with real kubectl
//! (1.32 and 1.33 speak WebSocket; 1.27 speaks SPDY only).

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::*;

const NODE: &str = "node-s";

/// kubectl `bin` with `input` on its stdin.
fn kubectl_input(c: &Cluster, bin: &str, args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(bin)
        .args(args)
        .env("KUBECONFIG", &c.kubeconfig)
        .env("HOME", c.dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {bin}: {e}"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("kubectl {} did not finish within {WAIT:?}", args.join(" "));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn exec_runs_in_the_container_with_stdin_a_terminal_and_exit_codes_and_cp_copies_both_ways() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--node-name", NODE]);
    let m = c.write(
        "pod.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: box}}
spec:
  nodeName: {NODE}
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", "while :; do sleep 1; done"]
    env: [{{name: GREETING, value: hello}}]
    volumeMounts: [{{name: scratch, mountPath: /scratch}}]
  - name: side
    image: busybox
    command: ["sh", "-c", "while :; do sleep 1; done"]
  volumes: [{{name: scratch, emptyDir: {{}}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: done}}
spec:
  nodeName: {NODE}
  restartPolicy: Never
  containers: [{{name: c, image: busybox, command: ["true"]}}]
"#
        ),
    );
    c.ok(&["apply", "-f", path_str(&m)]);
    c.ok(&["wait", "--for=condition=Ready", "pod/box", "--timeout=60s"]);
    // WebSocket (1.32, 1.33) and SPDY (1.27).
    for bin in [KUBECTL.to_string(), kubectl_version(33), kubectl_version(27)] {
        // The container's view: its volume, hostname and environment.
        let out = c.ok_with(&bin, &["exec", "box", "-c", "main", "--", "sh", "-c", "echo $GREETING from $(hostname); test -d /scratch && echo has-scratch"]);
        assert_eq!(out, "hello from box\nhas-scratch\n", "{bin}");
        // The exit code comes back as kubectl's own, stderr separately.
        let out = c.kubectl_with(&bin, &["exec", "box", "-c", "main", "--", "sh", "-c", "echo out; echo err >&2; exit 3"]);
        assert_eq!(out.status.code(), Some(3), "{bin}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "out\n");
        assert!(text(&out.stderr).contains("err\n") && text(&out.stderr).contains("command terminated with exit code 3"), "{}", text(&out.stderr));
        // Stdin, to its end (v5's close of stdin).
        let out = kubectl_input(&c, &bin, &["exec", "-i", "box", "-c", "main", "--", "sh", "-c", "wc -l"], b"a\nb\nc\n");
        assert!(out.status.success(), "{bin}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), "3");
    }
    // Under a pseudo-terminal (kubectl -it needs one: `script` gives it one).
    let script = format!("{KUBECTL} exec -it box -c main -- sh -c 'tty; read x; echo got:$x'");
    let out = Command::new("script")
        .args(["-qec", &script, "/dev/null"])
        .env("KUBECONFIG", &c.kubeconfig)
        .env("HOME", c.dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut ch| {
            ch.stdin.take().unwrap().write_all(b"typed\n")?;
            ch.wait_with_output()
        })
        .expect("script (util-linux) runs kubectl under a terminal");
    let o = text(&out.stdout);
    assert!(o.contains("/dev/pts/") && o.contains("got:typed"), "{o:?}");
    // kubectl cp, both ways, through tar in the container.
    let src = c.write("src.txt", "copied content\n");
    c.ok(&["cp", path_str(&src), "box:/scratch/in.txt", "-c", "main"]);
    assert_eq!(c.ok(&["exec", "box", "-c", "main", "--", "cat", "/scratch/in.txt"]), "copied content\n");
    let back = c.dir.path().join("back.txt");
    c.ok(&["cp", "box:/scratch/in.txt", path_str(&back), "-c", "main"]);
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "copied content\n");
    // What Kubernetes refuses, with its messages.
    let e = c.fails(&["exec", "box", "-c", "nope", "--", "true"]);
    assert!(e.contains("container nope is not valid for pod box"), "{e}");
    c.ok(&["wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/done", "--timeout=60s"]);
    let e = c.fails(&["exec", "done", "--", "true"]);
    assert!(e.contains("cannot exec into a container in a completed pod; current phase is Succeeded"), "{e}");
    let e = c.fails(&["exec", "box", "-c", "main", "--", "no-such-program"]);
    assert!(e.contains("executable file not found"), "{e}");
}

#[test]
fn attach_streams_output_and_takes_stdin() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--node-name", NODE]);
    let m = c.write(
        "pod.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: echo}}
spec:
  nodeName: {NODE}
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox
    stdin: true
    stdinOnce: true
    command: ["sh", "-c", "while read line; do echo \"echo:$line\"; done; echo bye"]
"#
        ),
    );
    c.ok(&["apply", "-f", path_str(&m)]);
    c.ok(&["wait", "--for=condition=Ready", "pod/echo", "--timeout=60s"]);
    // stdinOnce: the client's end of input is the container's; its output reaches kubectl
    // until it exits.
    let out = kubectl_input(&c, KUBECTL, &["attach", "-i", "echo"], b"one\ntwo\n");
    let o = text(&out.stdout);
    assert!(o.contains("echo:one\necho:two\nbye\n"), "{o:?} {}", text(&out.stderr));
    c.ok(&["wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/echo", "--timeout=60s"]);
}

#[test]
fn a_tty_container_has_a_terminal_that_kubectl_attach_it_drives() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--node-name", NODE]);
    let m = c.write(
        "pod.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: term}}
spec:
  nodeName: {NODE}
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox
    stdin: true
    tty: true
    command: ["sh", "-c", "tty; test -t 0 && echo stdin-is-a-terminal; printf 'name? '; read x; echo got:$x; while [ \"$(stty size)\" = '0 0' ]; do sleep 0.1; done; stty size"]
"#
        ),
    );
    c.ok(&["apply", "-f", path_str(&m)]);
    // The container's own view: a terminal on its standard streams, in its log.
    wait_until("the container to say it has a terminal", || {
        let l = c.kubectl_with(KUBECTL, &["logs", "term"]);
        let t = text(&l.stdout);
        t.contains("/dev/pts/") && t.contains("stdin-is-a-terminal")
    });
    // kubectl attach -it under a terminal (`script` gives it one, 33 rows): the prompt without
    // a newline, the line typed, and the size kubectl sent. kubectl sends its size and its
    // input from separate goroutines, so the line may arrive first: the container waits for
    // the size before printing it.
    let mut ch = Command::new("script")
        .args(["-qec", &format!("stty rows 33 cols 101; {KUBECTL} attach -it term"), "/dev/null"])
        .env("KUBECONFIG", &c.kubeconfig)
        .env("HOME", c.dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("script (util-linux) runs kubectl under a terminal");
    ch.stdin.take().unwrap().write_all(b"typed\n").unwrap();
    // The session ends when the container does; a session that does not fails the test.
    let pid = ch.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(ch.wait_with_output());
    });
    let out = rx.recv_timeout(WAIT).unwrap_or_else(|_| {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        panic!("kubectl attach -it did not end within {WAIT:?} of the container's end")
    });
    let out = out.unwrap();
    let o = text(&out.stdout);
    assert!(o.contains("got:typed") && o.contains("33 101"), "{o:?}");
    c.ok(&["wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/term", "--timeout=60s"]);
}

#[test]
fn kubectl_debug_adds_ephemeral_containers_that_run_once_in_the_pod() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--node-name", NODE]);
    let m = c.write(
        "pod.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: target}}
spec:
  nodeName: {NODE}
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", "while :; do sleep 1; done"]
"#
        ),
    );
    c.ok(&["apply", "-f", path_str(&m)]);
    c.ok(&["wait", "--for=condition=Ready", "pod/target", "--timeout=60s"]);
    // One that stays up, reached by exec; one that exits and is not restarted.
    c.ok(&["debug", "target", "--image=busybox", "-c", "dbg", "--", "sh", "-c", "echo from-the-debugger; while :; do sleep 1; done"]);
    c.ok(&["debug", "target", "--image=busybox", "-c", "once", "--", "sh", "-c", "echo ran-once; exit 3"]);
    let state = |name: &str, path: &str| c.ok(&["get", "pod", "target", "-o", &format!("jsonpath={{.status.ephemeralContainerStatuses[?(@.name==\"{name}\")].{path}}}")]);
    wait_until("the debug container running", || !state("dbg", "state.running.startedAt").is_empty());
    wait_until("the one-shot container terminated", || state("once", "state.terminated.exitCode") == "3");
    wait_until("the debugger's output in its log", || c.ok(&["logs", "target", "-c", "dbg"]).contains("from-the-debugger"));
    assert!(c.ok(&["logs", "target", "-c", "once"]).contains("ran-once"));
    // It runs in the pod: exec reaches it, and it sees the pod's hostname.
    assert_eq!(c.ok(&["exec", "target", "-c", "dbg", "--", "hostname"]).trim(), "target");
    // Ephemeral containers are neither restarted nor part of the pod's phase or readiness.
    assert_eq!(state("once", "restartCount"), "0");
    assert_eq!(c.ok(&["get", "pod", "target", "-o", "jsonpath={.status.phase} {.status.conditions[?(@.type==\"Ready\")].status}"]), "Running True");
    // Names are unique in the pod; existing ones may not change; none on create.
    let e = c.fails(&["debug", "target", "--image=busybox", "-c", "main", "--", "true"]);
    assert!(e.contains("spec.ephemeralContainers[2].name: Duplicate value: \"main\""), "{e}");
    let patch = |ops: &str| {
        let (code, body) = http(&c.addr, "PATCH", "/api/v1/namespaces/default/pods/target/ephemeralcontainers", &[("Content-Type", "application/json-patch+json")], ops.as_bytes());
        (code, text(&body))
    };
    let (code, e) = patch(r#"[{"op":"replace","path":"/spec/ephemeralContainers/0/image","value":"other"}]"#);
    assert!(code == 422 && e.contains(r#"existing ephemeral containers \"dbg\" may not be changed"#), "{code} {e}");
    let (code, e) = patch(r#"[{"op":"add","path":"/spec/ephemeralContainers/-","value":{"name":"p","image":"busybox","ports":[{"containerPort":80}]}}]"#);
    assert!(code == 422 && e.contains("spec.ephemeralContainers[2].ports: Forbidden: cannot be set for an Ephemeral Container"), "{code} {e}");
    // The main resource keeps them whatever a write to it says.
    let (code, e) = http(&c.addr, "PATCH", "/api/v1/namespaces/default/pods/target", &[("Content-Type", "application/json-patch+json")], br#"[{"op":"remove","path":"/spec/ephemeralContainers"}]"#);
    assert_eq!(code, 200, "{}", text(&e));
    assert_eq!(c.ok(&["get", "pod", "target", "-o", "jsonpath={.spec.ephemeralContainers[*].name}"]), "dbg once");
    let created = c.write("eph.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: early}\nspec:\n  containers: [{name: c, image: busybox}]\n  ephemeralContainers: [{name: e, image: busybox}]\n");
    let e = c.fails(&["create", "-f", path_str(&created)]);
    assert!(e.contains("spec.ephemeralContainers: Forbidden: cannot be set on create"), "{e}");
}

/// A free loopback port (bound and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET /` on a local port: the status line.
fn get_status_line(port: u16) -> String {
    use std::io::{BufRead, BufReader};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line.trim().to_string()
}

/// `bin port-forward pod/web :PORT`, and the local port it chose ("Forwarding from
/// 127.0.0.1:LOCAL -> PORT").
fn port_forward(c: &Cluster, bin: &str, port: u16) -> (std::process::Child, u16) {
    let mut child = Command::new(bin)
        .args(["port-forward", "pod/web", &format!(":{port}")])
        .env("KUBECONFIG", &c.kubeconfig)
        .env("HOME", c.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = first_line(&mut child);
    let local = line.split("127.0.0.1:").nth(1).and_then(|r| r.split(' ').next()).and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("{bin}: {line:?}"));
    (child, local)
}

#[test]
fn port_forward_reaches_the_pod_over_websocket_and_spdy() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--node-name", NODE]);
    let port = free_port();
    let m = c.write(
        "pod.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: web}}
spec:
  nodeName: {NODE}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: python
    command: ["python3", "-m", "http.server", "{port}"]
    readinessProbe: {{tcpSocket: {{port: {port}}}, periodSeconds: 1}}
"#
        ),
    );
    c.ok(&["apply", "-f", path_str(&m)]);
    c.ok(&["wait", "--for=condition=Ready", "pod/web", "--timeout=60s"]);
    // kubectl 1.33 tunnels SPDY through a WebSocket; 1.27 speaks SPDY.
    for bin in [kubectl_version(33), kubectl_version(27)] {
        let (mut child, local) = port_forward(&c, &bin, port);
        // Two connections in one session, one after the other.
        assert_eq!(get_status_line(local), "HTTP/1.0 200 OK", "{bin}");
        assert_eq!(get_status_line(local), "HTTP/1.0 200 OK", "{bin}");
        let _ = child.kill();
        let _ = child.wait();
    }
    // The official Python client: exec (v4 channels) and port-forward over WebSocket channels.
    let script = source_dir().join("tests/python/streams_e2e.py");
    let out = Command::new("python3")
        .arg(&script)
        .args([path_str(&c.kubeconfig), "web", &port.to_string()])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("python3 with the kubernetes package (CI installs it)");
    assert!(out.status.success() && text(&out.stdout).trim() == "ok", "{}:\n{}\n{}", script.display(), text(&out.stdout), text(&out.stderr));
    // A port nothing listens on: the error reaches kubectl on the session's error stream.
    let closed = free_port();
    let (mut child, local) = port_forward(&c, KUBECTL, closed);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", local)).unwrap();
    let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
    // kubectl ends the session on such an error (client-go's choice); bounded here.
    let deadline = std::time::Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "kubectl port-forward did not report the refused connection within {WAIT:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert!(err.contains(&format!("error forwarding port {closed} to pod default/web")) && err.contains("Connection refused"), "{err}");
}
