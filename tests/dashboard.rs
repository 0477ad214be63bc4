//! The dashboard in a real browser: headless Chromium, through `kubectl proxy` as an operator
//! would open it, and directly with a bearer-token login as a limited user. Every page loads
//! without errors in the browser's console and shows the objects made here; a list follows a
//! pod's change of phase without a reload; what objects carry (a log line, a command, an
//! event's message) renders as text. Screenshots of every page are written to the test's
//! temp dir (and to `$CAPSTAN_SCREENSHOTS` when set).

mod common;
#[path = "support/cdp.rs"]
mod cdp;

use common::*;
use serde_json::json;

const HOSTILE: &str = "<script>window.pwned=1</script><img src=x onerror=\"window.pwned=2\">";

fn screenshots() -> std::path::PathBuf {
    match std::env::var_os("CAPSTAN_SCREENSHOTS") {
        Some(d) => {
            std::fs::create_dir_all(&d).unwrap();
            d.into()
        }
        None => std::env::temp_dir(),
    }
}

/// The node that runs pods as processes (not a hollow one).
fn local_node(c: &Cluster) -> String {
    c.ok(&["get", "nodes", "-l", "!capstan.io/hollow", "-o", "jsonpath={.items[0].metadata.name}"]).trim().to_string()
}

/// `kubectl proxy`, stopped when dropped (also when the test fails).
struct Proxy(std::process::Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn proxy(c: &Cluster) -> (Proxy, String) {
    let (child, mut lines) = c.kubectl_spawn(&["proxy", "--port=0"]);
    let child = Proxy(child);
    let line = lines.next("kubectl proxy's address");
    let addr = line.rsplit(' ').next().unwrap_or("").trim().to_string();
    assert!(addr.starts_with("127.0.0.1:"), "{line}");
    (child, addr)
}

#[test]
fn every_page_loads_clean_shows_the_cluster_follows_it_live_and_escapes_what_objects_say() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--hollow-nodes", "2"]);
    let node = local_node(&c);
    c.ok(&["create", "deployment", "web", "--image=busybox", "--replicas=2", "--", "sleep", "3600"]);
    // A pod on the real node whose command and log carry markup.
    let shouty = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "shouty", "namespace": "default", "labels": {"app": "shouty"}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox", "command": ["sh", "-c", format!("echo '{HOSTILE}'; sleep 3600")]}]}
    });
    let f = c.write("shouty.json", &shouty.to_string());
    c.ok(&["apply", "-f", f.to_str().unwrap()]);
    // A Warning event whose message is markup.
    let event = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "shouty.hostile", "namespace": "default"},
        "involvedObject": {"kind": "Pod", "name": "shouty", "namespace": "default"},
        "type": "Warning", "reason": "Hostile", "message": HOSTILE, "count": 1,
        "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2099-01-01T00:00:00Z",
        "source": {"component": "test"}
    });
    let f = c.write("event.json", &event.to_string());
    c.ok(&["create", "-f", f.to_str().unwrap()]);
    // A pod that cannot be scheduled until a node gets the label it asks for.
    let waiting = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "waiting", "namespace": "default", "labels": {"app": "live"}},
        "spec": {"nodeSelector": {"dashboard-test": "yes-please"}, "containers": [{"name": "c", "image": "busybox"}]}
    });
    let f = c.write("waiting.json", &waiting.to_string());
    c.ok(&["apply", "-f", f.to_str().unwrap()]);
    wait_until("shouty to run", || c.ok(&["get", "pod", "shouty", "-o", "jsonpath={.status.phase}"]) == "Running");
    let hollow = c.ok(&["get", "nodes", "-l", "capstan.io/hollow", "-o", "jsonpath={.items[0].metadata.name}"]).trim().to_string();

    let (_proxy, addr) = proxy(&c);
    let base = format!("http://{addr}");
    let shots = screenshots();
    let mut b = cdp::Browser::launch(&[]);
    let pages: [(&str, &str, &str); 10] = [
        ("cluster", "/ui/", "document.querySelector('#live').textContent.includes('Ready') && !document.querySelector('#live').textContent.includes('Counting') && document.querySelector('#live').textContent.includes('Running') && document.querySelectorAll('svg.chart').length >= 3"),
        ("nodes", "/ui/nodes", &format!("document.body.textContent.includes('{hollow}')")),
        ("node", &format!("/ui/nodes/{hollow}"), "document.body.textContent.includes('Conditions')"),
        ("pods", "/ui/pods", "document.body.textContent.includes('shouty') && document.body.textContent.includes('web-')"),
        ("pod", "/ui/pods/default/shouty", "document.querySelector('#log').textContent.includes('window.pwned')"),
        ("workloads", "/ui/workloads", "document.body.textContent.includes('default/web')"),
        ("scheduler", "/ui/scheduler", "document.body.textContent.includes('Extension points') && document.body.textContent.includes('Filter')"),
        ("store", "/ui/store", "document.body.textContent.includes('revision') && document.querySelectorAll('svg.chart').length >= 2"),
        ("loadgen", "/ui/loadgen", "document.querySelector('input[type=file]') !== null"),
        ("filtered", "/ui/pods?namespace=default&labelSelector=app%3Dshouty", "document.body.textContent.includes('1 pods match')"),
    ];
    for (name, path, shows) in pages {
        let p = b.open(&format!("{base}{path}"));
        b.wait_for(&p, &format!("the {name} page to show what was made"), shows);
        let errors = b.errors(&p);
        assert!(errors.is_empty(), "the {name} page logged errors: {errors:#?}");
        // Nothing an object carries ran: no script element from data, no handler fired.
        assert_eq!(b.eval(&p, "typeof window.pwned"), json!("undefined"), "markup from an object ran on the {name} page");
        assert_eq!(b.eval(&p, "document.querySelectorAll('main script, main img:not(#flamegraph)').length"), json!(0), "markup from an object became elements on the {name} page");
        b.screenshot(&p, &shots.join(format!("dashboard-{name}.png")));
        b.screenshot(&p, &c.dir.path().join(format!("dashboard-{name}.png")));
        b.close(p);
    }
    // The hostile text is on the pages as text.
    let p = b.open(&format!("{base}/ui/pods/default/shouty"));
    b.wait_for(&p, "the event's message as text", &format!("document.body.textContent.includes({})", json!(HOSTILE)));
    b.wait_for(&p, "the command as text", "document.body.textContent.includes('<script>window.pwned=1</script>')");
    b.close(p);
    let p = b.open(&format!("{base}/ui/"));
    b.wait_for(&p, "the warning on the cluster page", &format!("document.body.textContent.includes({})", json!(HOSTILE)));
    assert_eq!(b.eval(&p, "typeof window.pwned"), json!("undefined"));
    b.close(p);

    // Live: the list shows the waiting pod Pending, then Running once a node matches, without
    // a reload (the live region was replaced by an update).
    let p = b.open(&format!("{base}/ui/pods?labelSelector=app%3Dlive"));
    b.wait_for(&p, "the waiting pod listed as not running", "document.querySelector('#live').textContent.includes('waiting') && !document.querySelector('#live').textContent.includes('Running')");
    b.eval(&p, "window.notReloaded = true");
    c.ok(&["label", "node", &hollow, "dashboard-test=yes-please"]);
    b.wait_for(&p, "the list to show the pod Running", "document.querySelector('#live').textContent.includes('Running')");
    assert_eq!(b.eval(&p, "window.notReloaded === true && document.querySelector('#live').hasAttribute('data-updated')"), json!(true), "the page changed by a live update, not a reload");
    let errors = b.errors(&p);
    assert!(errors.is_empty(), "the live page logged errors: {errors:#?}");
    b.close(p);

    // A bad filter shows the API's message on the page (a 400, which the browser logs).
    let p = b.open(&format!("{base}/ui/pods?labelSelector=a%20in%20(b"));
    b.wait_for(&p, "the selector error on the page", "document.querySelector('.error') !== null && document.querySelector('.error').textContent.includes('unable to parse requirement')");
    b.screenshot(&p, &c.dir.path().join("dashboard-bad-filter.png"));
    b.close(p);
    let p = b.open(&format!("{base}/ui/pods?namespace=nope"));
    b.wait_for(&p, "the unknown namespace on the page", "document.querySelector('.error').textContent.includes('namespaces \"nope\" not found')");
    b.close(p);

    // The profile button: a CPU profile of the process, drawn as a flame graph.
    let p = b.open(&format!("{base}/ui/scheduler/profile?seconds=1"));
    b.wait_for(&p, "the flame graph to load", "document.querySelector('#flamegraph').complete && document.querySelector('#flamegraph').naturalWidth > 0");
    let errors = b.errors(&p);
    assert!(errors.is_empty(), "the profile page logged errors: {errors:#?}");
    b.screenshot(&p, &c.dir.path().join("dashboard-profile.png"));
    b.close(p);

    // loadgen reports: one uploaded and drawn, then two compared; a file that is not a report
    // is answered with why.
    let report = |rate: f64| {
        json!({
            "workload": "density", "target": "embedded capstan", "nodes": 100, "pods_per_node": 30, "seconds": 10.0,
            "pods": {"expected": 3000, "running": 3000, "running_over_time": [[0.0, 0], [5.0, 1500], [10.0, 3000]]},
            "pods_per_second_created_to_running": rate,
            "api": [{"verb": "create", "resource": "pods", "count": 3000, "errors": 0, "p50_ms": 1.0, "p90_ms": 2.0, "p99_ms": 3.0, "max_ms": 9.0, "buckets": [[1.0, 1500], [2.0, 1200], [5.0, 300]]}],
            "verdicts": [{"name": "SLO: pod startup p99", "measured": 1.2, "limit": 5.0, "pass": true, "source": "Kubernetes SLO"}],
            "over_time": {"cpu_cores": [[1.0, 1.5], [2.0, 1.8]], "rss_bytes": [[1.0, 1.0e9], [2.0, 1.2e9]]}
        })
    };
    let (a, bb, junk) = (c.write("a.json", &report(300.0).to_string()), c.write("b.json", &report(450.0).to_string()), c.write("junk.json", "{\"hello\": 1}"));
    let p = b.open(&format!("{base}/ui/loadgen"));
    b.call(Some(p.session()), "DOM.enable", json!({}));
    b.set_file(&p, "input[name=a]", &a);
    b.eval(&p, "document.querySelector('form').submit()");
    b.wait_for(&p, "the uploaded report drawn", "document.body.textContent.includes('SLO: pod startup p99') && document.querySelectorAll('svg.chart').length >= 3");
    b.set_file(&p, "input[name=a]", &a);
    b.set_file(&p, "input[name=b]", &bb);
    b.eval(&p, "document.querySelector('form').submit()");
    b.wait_for(&p, "the two reports compared", "document.body.textContent.includes('A against B') && document.body.textContent.includes('1.50×')");
    b.screenshot(&p, &c.dir.path().join("dashboard-loadgen-compare.png"));
    b.set_file(&p, "input[name=a]", &junk);
    b.eval(&p, "document.querySelector('form').submit()");
    b.wait_for(&p, "the refusal of a file that is not a report", "document.querySelector('.error') !== null && document.querySelector('.error').textContent.includes('not a loadgen report')");
    let errors = b.errors(&p);
    assert!(errors.is_empty(), "the loadgen page logged errors: {errors:#?}");
    b.close(p);
}

#[test]
fn a_token_login_sees_what_its_roles_let_it_list_and_gets_the_page_403_for_the_rest() {
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--hollow-nodes", "1", "--no-local-node"]);
    c.ok(&["create", "namespace", "team"]);
    c.ok(&["create", "deployment", "app", "-n", "team", "--image=busybox", "--", "sleep", "3600"]);
    c.ok(&["create", "deployment", "other", "--image=busybox", "--", "sleep", "3600"]);
    c.ok(&["create", "serviceaccount", "viewer", "-n", "team"]);
    c.ok(&["create", "rolebinding", "viewer", "-n", "team", "--clusterrole=view", "--serviceaccount=team:viewer"]);
    let token = c.ok(&["create", "token", "viewer", "-n", "team"]).trim().to_string();
    wait_until("team's pod", || c.ok(&["get", "pods", "-n", "team", "-o", "name"]).contains("pod/app-"));

    // Straight to the API server's port, as a browser on the network would (its certificate
    // is the cluster CA's, which this browser does not know).
    let base = format!("https://{}", c.addr);
    let mut b = cdp::Browser::launch(&["--ignore-certificate-errors"]);
    let p = b.open(&format!("{base}/ui/pods?namespace=team"));
    b.wait_for(&p, "the login page", "document.querySelector('textarea[name=token]') !== null");
    b.eval(&p, &format!("document.querySelector('textarea[name=token]').value = {}", json!(token)));
    b.eval(&p, "document.querySelector('form').submit()");
    b.wait_for(&p, "the cluster page after logging in", "document.body.textContent.includes('system:serviceaccount:team:viewer')");
    b.navigate(&p, &format!("{base}/ui/pods?namespace=team"));
    b.wait_for(&p, "team's pods", "document.body.textContent.includes('app-') && !document.body.textContent.includes('other-')");
    b.screenshot(&p, &c.dir.path().join("dashboard-login-pods.png"));
    // All namespaces, nodes and the scheduler are not this user's to see.
    for path in ["/ui/pods", "/ui/nodes", "/ui/scheduler", "/ui/pods?namespace=default"] {
        b.navigate(&p, &format!("{base}{path}"));
        b.wait_for(&p, &format!("the 403 page at {path}"), "document.querySelector('h1').textContent.startsWith('403') && document.querySelector('.error').textContent.includes('cannot list resource')");
        assert!(!b.eval(&p, "document.body.textContent").as_str().unwrap().contains("other-"), "{path} showed another namespace's pod");
    }
    // A token the API refuses sends the browser back to log in.
    b.navigate(&p, &format!("{base}/ui/logout"));
    b.wait_for(&p, "the login page after logging out", "document.querySelector('textarea[name=token]') !== null");
    b.eval(&p, "document.querySelector('textarea[name=token]').value = 'not-a-token'");
    b.eval(&p, "document.querySelector('form').submit()");
    b.wait_for(&p, "the refusal on the login page", "document.body.textContent.includes('did not accept that token')");
    b.close(p);
    // Closing the browser ends all of its processes before its profile is removed.
    let profile = b.profile().to_path_buf();
    drop(b);
    assert!(!profile.exists(), "the browser's profile {} was left behind", profile.display());
}
