//! A small Chrome DevTools Protocol client for page tests: headless Chromium (Debian's
//! `chromium`) driven over its DevTools WebSocket: open a page, evaluate script in it, wait
//! for a condition, take a screenshot, and collect what it logged as errors (console errors,
//! uncaught exceptions, failed loads, CSP refusals).

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::Path;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

pub const CHROMIUM: &str = "/usr/bin/chromium";
const WAIT: Duration = Duration::from_secs(60);

pub struct Browser {
    child: Child,
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// Events not yet looked at, with their session.
    events: Vec<Value>,
    _profile: tempfile::TempDir,
}

/// A tab, attached in flat mode (commands carry its session id).
pub struct Page {
    session: String,
    target: String,
}

impl Page {
    pub fn session(&self) -> &str {
        &self.session
    }
}

/// Closes the browser and every process of it before its profile directory is removed:
/// killing only the main process left its helpers writing to the profile while the
/// directory was being removed, and so left the directory behind.
impl Drop for Browser {
    fn drop(&mut self) {
        let close = json!({"id": self.next_id, "method": "Browser.close"});
        let _ = self.ws.send(Message::text(close.to_string()));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Whatever is left of its process group (a browser that did not close in time).
        // SAFETY: a signal to the process group this test started.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Browser {
    /// Starts Chromium headless with a fresh profile; `extra` flags after the usual ones
    /// (no sandbox as root, no background network: this machine has no route out).
    pub fn launch(extra: &[&str]) -> Browser {
        assert!(Path::new(CHROMIUM).exists(), "page tests need Chromium: apt-get install -y chromium (.ci/run installs it)");
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(CHROMIUM)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-default-apps", "--remote-debugging-port=0", "--window-size=1400,1000"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("start chromium");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.split_whitespace().find(|w| w.starts_with("ws://")) {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        let url = rx.recv_timeout(WAIT).expect("chromium to print its DevTools address");
        let (ws, _) = tungstenite::connect(&url).expect("connect to chromium's DevTools");
        if let MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        }
        Browser { child, ws, next_id: 1, events: Vec::new(), _profile: profile }
    }

    /// The browser's profile directory (removed when the browser is dropped).
    pub fn profile(&self) -> &Path {
        self._profile.path()
    }

    fn read(&mut self) -> Option<Value> {
        match self.ws.read() {
            Ok(Message::Text(t)) => serde_json::from_str(t.as_str()).ok(),
            Ok(_) => None,
            Err(tungstenite::Error::Io(e)) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => None,
            Err(e) => panic!("DevTools connection: {e}"),
        }
    }

    /// Sends a command and waits for its answer; events met meanwhile are kept.
    pub fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws.send(Message::text(msg.to_string())).expect("send a DevTools command");
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "timed out after {WAIT:?} waiting for the answer to {method}");
            let Some(v) = self.read() else { continue };
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    panic!("{method}: {e}");
                }
                return v["result"].clone();
            }
            if v.get("method").is_some() {
                self.events.push(v);
            }
        }
    }

    /// Reads events until `pred` matches one (of `page`), failing with `what` after a while.
    pub fn wait_event(&mut self, page: &Page, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(i) = self.events.iter().position(|e| e["sessionId"] == page.session.as_str() && pred(e)) {
                return self.events.remove(i);
            }
            assert!(Instant::now() < deadline, "timed out after {WAIT:?} waiting for {what}");
            if let Some(v) = self.read()
                && v.get("method").is_some()
            {
                self.events.push(v);
            }
        }
    }

    /// A new tab at `url`, once its load event fired.
    pub fn open(&mut self, url: &str) -> Page {
        let target = self.call(None, "Target.createTarget", json!({"url": "about:blank"}))["targetId"].as_str().unwrap().to_string();
        let session = self.call(None, "Target.attachToTarget", json!({"targetId": target, "flatten": true}))["sessionId"].as_str().unwrap().to_string();
        let page = Page { session, target };
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            self.call(Some(&page.session), domain, json!({}));
        }
        self.navigate(&page, url);
        page
    }

    pub fn navigate(&mut self, page: &Page, url: &str) {
        self.events.retain(|e| !(e["sessionId"] == page.session.as_str() && e["method"] == "Page.loadEventFired"));
        self.call(Some(&page.session), "Page.navigate", json!({"url": url}));
        self.wait_event(page, &format!("{url} to load"), |e| e["method"] == "Page.loadEventFired");
    }

    /// The value of a JavaScript expression in the page.
    pub fn eval(&mut self, page: &Page, expr: &str) -> Value {
        let r = self.call(Some(&page.session), "Runtime.evaluate", json!({"expression": expr, "returnByValue": true, "awaitPromise": true}));
        if let Some(e) = r.get("exceptionDetails") {
            panic!("evaluating {expr}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is true, failing with `what` after `WAIT`. An expression that
    /// throws (the document is between two pages) counts as not yet.
    pub fn wait_for(&mut self, page: &Page, what: &str, expr: &str) {
        let deadline = Instant::now() + WAIT;
        let guarded = format!("(() => {{ try {{ return ({expr}); }} catch (e) {{ return false; }} }})()");
        while self.eval(page, &guarded) != json!(true) {
            assert!(Instant::now() < deadline, "timed out after {WAIT:?} waiting for {what} ({expr})");
            // Events arrive meanwhile; read them rather than sleeping.
            if let Some(v) = self.read()
                && v.get("method").is_some()
            {
                self.events.push(v);
            }
        }
    }

    /// Chooses `file` in the page's file input that `selector` finds.
    pub fn set_file(&mut self, page: &Page, selector: &str, file: &Path) {
        let root = self.call(Some(&page.session), "DOM.getDocument", json!({}))["root"]["nodeId"].clone();
        let node = self.call(Some(&page.session), "DOM.querySelector", json!({"nodeId": root, "selector": selector}))["nodeId"].clone();
        assert_ne!(node, json!(0), "no element matches {selector}");
        self.call(Some(&page.session), "DOM.setFileInputFiles", json!({"nodeId": node, "files": [file.to_str().unwrap()]}));
    }

    pub fn screenshot(&mut self, page: &Page, path: &Path) {
        use base64::Engine;
        let r = self.call(Some(&page.session), "Page.captureScreenshot", json!({"format": "png", "captureBeyondViewport": true}));
        let png = base64::engine::general_purpose::STANDARD.decode(r["data"].as_str().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// What the page logged as errors so far: uncaught exceptions, `console.error`, and the
    /// browser's own error entries (failed loads, refused scripts).
    pub fn errors(&mut self, page: &Page) -> Vec<String> {
        while let Some(v) = self.read() {
            if v.get("method").is_some() {
                self.events.push(v);
            }
        }
        self.events
            .iter()
            .filter(|e| e["sessionId"] == page.session.as_str())
            .filter_map(|e| match e["method"].as_str() {
                Some("Runtime.exceptionThrown") => Some(format!("exception: {}", e["params"]["exceptionDetails"])),
                Some("Runtime.consoleAPICalled") if e["params"]["type"] == "error" => Some(format!("console.error: {}", e["params"]["args"])),
                Some("Log.entryAdded") if e["params"]["entry"]["level"] == "error" => Some(format!("{}: {} ({})", e["params"]["entry"]["source"], e["params"]["entry"]["text"], e["params"]["entry"]["url"])),
                _ => None,
            })
            .collect()
    }

    pub fn close(&mut self, page: Page) {
        self.call(None, "Target.closeTarget", json!({"targetId": page.target}));
        self.events.retain(|e| e["sessionId"] != page.session.as_str());
    }
}
