//! Pods with networks of their own on the real node of `capstan up`, checked with kubectl.

mod common;

use common::*;

const NODE: &str = "node-n";

fn jsonpath(c: &Cluster, pod: &str, path: &str) -> String {
    c.ok(&["get", "pod", pod, "-o", &format!("jsonpath={path}")])
}

/// A pod of the real node that only waits (a client to exec from), as a manifest document.
fn idle_pod(name: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {NODE}\n  terminationGracePeriodSeconds: 1\n  containers: [{{name: c, image: busybox, command: [sh, -c, 'while :; do sleep 1; done']}}]\n")
}

/// Fails with the install hint when iproute2's `ip` is missing (the node would then run pods
/// in its own network, and the checks below would fail less clearly).
fn need_ip() {
    let ok = std::process::Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success());
    assert!(ok, "iproute2's `ip` is needed for pod networks: apt-get install -y iproute2 (.ci/run installs it)");
}

/// The network namespaces on this host (`ip netns list`).
fn namespaces() -> String {
    let out = std::process::Command::new("ip").args(["netns", "list"]).output().expect("iproute2's ip (CI installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn pods_get_their_own_addresses_reach_each_other_and_the_api_and_leave_nothing_behind() {
    need_ip();
    let range = pod_range();
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--node-name", NODE, "--cluster-cidr", &range]);
    let server = |name: &str| {
        format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {NODE}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: python
    command: ["python3", "-m", "http.server", "8080"]
    readinessProbe: {{httpGet: {{port: 8080}}, periodSeconds: 1}}
"#
        )
    };
    let host_net = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: hostnet}}\nspec:\n  nodeName: {NODE}\n  hostNetwork: true\n  terminationGracePeriodSeconds: 1\n  containers: [{{name: c, image: busybox, command: [sh, -c, 'while :; do sleep 1; done']}}]\n"
    );
    let m = c.write("pods.yaml", &format!("{}---\n{}---\n{host_net}", server("a"), server("b")));
    c.ok(&["apply", "-f", path_str(&m)]);
    // Both listen on 8080: each in its own namespace. Their readiness probes reach them at
    // their addresses.
    c.ok(&["wait", "--for=condition=Ready", "pod/a", "pod/b", "pod/hostnet", "--timeout=60s"]);
    let (ip_a, ip_b) = (jsonpath(&c, "a", "{.status.podIP}"), jsonpath(&c, "b", "{.status.podIP}"));
    let prefix = range.split('.').take(2).collect::<Vec<_>>().join(".") + ".";
    assert!(ip_a.starts_with(&prefix) && ip_b.starts_with(&prefix) && ip_a != ip_b, "{ip_a} {ip_b} in {range}");
    assert_eq!(jsonpath(&c, "hostnet", "{.status.podIP}"), jsonpath(&c, "hostnet", "{.status.hostIP}"), "hostNetwork keeps the node's");
    // a reaches b by address.
    let fetch = format!("import urllib.request; print(urllib.request.urlopen('http://{ip_b}:8080/', timeout=10).status)");
    assert_eq!(c.ok(&["exec", "a", "--", "python3", "-c", &fetch]).trim(), "200");
    // Its /etc/hosts names it at its address.
    let hosts = c.ok(&["exec", "a", "--", "cat", "/etc/hosts"]);
    assert!(hosts.contains(&format!("{ip_a}\ta\n")), "{hosts}");
    // The API, which listens on the node's loopback, is relayed to the pod's gateway.
    let api = "import os, ssl, urllib.request; u = 'https://%s:%s/version' % (os.environ['KUBERNETES_SERVICE_HOST'], os.environ['KUBERNETES_SERVICE_PORT']); print(urllib.request.urlopen(u, context=ssl._create_unverified_context(), timeout=10).status)";
    assert_eq!(c.ok(&["exec", "a", "--", "python3", "-c", api]).trim(), "200");
    // Deleting the pods removes their namespaces.
    let uid_a = jsonpath(&c, "a", "{.metadata.uid}");
    assert!(namespaces().contains(&uid_a), "{}", namespaces());
    c.ok(&["delete", "pod", "a", "b", "hostnet", "--wait=true", "--timeout=60s"]);
    wait_until("pod a's network namespace to be removed", || !namespaces().contains(&uid_a));
}

/// `GET path` on `addr` (host:port): the body, or the connection error.
fn get(addr: &str, path: &str) -> Result<String, std::io::Error> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), std::time::Duration::from_secs(5))?;
    s.set_read_timeout(Some(WAIT))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.split("\r\n\r\n").nth(1).unwrap_or("").trim().to_string())
}

#[test]
fn services_route_to_ready_endpoints_from_the_node_and_from_pods() {
    need_ip();
    let services = service_range();
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--node-name", NODE, "--service-cluster-ip-range", &services]);
    let flags = c.dir.path().to_path_buf();
    let pod = |name: &str| {
        format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: web}}}}
spec:
  nodeName: {NODE}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: python
    command: ["sh", "-c", "cd $(mktemp -d) && hostname > name && exec python3 -m http.server 8080"]
    readinessProbe: {{exec: {{command: ["test", "-e", "{flags}/ready-{name}"]}}, periodSeconds: 1}}
"#,
            flags = flags.display()
        )
    };
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  type: NodePort\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: empty}\nspec:\n  selector: {app: nothing}\n  ports: [{port: 80}]\n";
    for n in ["web-1", "web-2"] {
        std::fs::write(flags.join(format!("ready-{n}")), "").unwrap();
    }
    let m = c.write("web.yaml", &format!("{}---\n{}---\n{svc}", pod("web-1"), pod("web-2")));
    c.ok(&["apply", "-f", path_str(&m)]);
    c.ok(&["wait", "--for=condition=Ready", "pod/web-1", "pod/web-2", "--timeout=60s"]);
    // Before any traffic: the Service range is routed to nothing on the node.
    let routes = String::from_utf8_lossy(&std::process::Command::new("ip").args(["route", "show", &services]).output().unwrap().stdout).into_owned();
    assert!(routes.contains("blackhole"), "no blackhole route for {services}: {routes:?}");
    let ip = c.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let node_port = c.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.ports[0].nodePort}"]);
    let cluster = format!("{ip}:80");
    // Both ready endpoints answer, from the node.
    let mut seen = std::collections::BTreeSet::new();
    wait_until("both endpoints to answer at the cluster IP", || {
        if let Ok(n) = get(&cluster, "/name") {
            seen.insert(n);
        }
        seen.len() == 2
    });
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["web-1", "web-2"]);
    assert!(get(&format!("127.0.0.1:{node_port}"), "/name").unwrap().starts_with("web-"), "NodePort");
    // From a pod, by the cluster IP.
    let fetch = format!("import urllib.request; print(urllib.request.urlopen('http://{ip}/name', timeout=10).read().decode().strip())");
    assert!(c.ok(&["exec", "web-1", "--", "python3", "-c", &fetch]).trim().starts_with("web-"));
    // An endpoint that turns unready gets no more connections.
    std::fs::remove_file(flags.join("ready-web-2")).unwrap();
    c.ok(&["wait", "--for=condition=Ready=false", "pod/web-2", "--timeout=60s"]);
    let mut streak = 0;
    wait_until("only web-1 to answer, 20 times in a row", || {
        streak = if get(&cluster, "/name").ok().as_deref() == Some("web-1") { streak + 1 } else { 0 };
        streak >= 20
    });
    // A Service without endpoints refuses at once, on the node.
    let empty = c.ok(&["get", "svc", "empty", "-o", "jsonpath={.spec.clusterIP}"]);
    let e = get(&format!("{empty}:80"), "/").unwrap_err();
    assert!(matches!(e.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::InvalidInput | std::io::ErrorKind::NetworkUnreachable | std::io::ErrorKind::HostUnreachable) || e.raw_os_error() == Some(22), "{e:?}");
}

/// Asks `server` (UDP, or TCP) one question; the answer's records as `type data` strings,
/// or the response code when it is not NOERROR.
fn ask(server: std::net::SocketAddr, name: &str, t: hickory_proto::rr::RecordType, tcp: bool) -> Result<Vec<String>, String> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
    use std::io::{Read, Write};
    let mut m = Message::new(0x5151, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(hickory_proto::rr::Name::from_ascii(name).unwrap(), t));
    let q = m.to_vec().unwrap();
    let bytes = if tcp {
        let mut s = std::net::TcpStream::connect_timeout(&server, std::time::Duration::from_secs(5)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        s.write_all(&(q.len() as u16).to_be_bytes()).and_then(|_| s.write_all(&q)).map_err(|e| e.to_string())?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut buf).map_err(|e| e.to_string())?;
        buf
    } else {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        s.send_to(&q, server).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 4096];
        let n = s.recv(&mut buf).map_err(|e| e.to_string())?;
        buf.truncate(n);
        buf
    };
    let r = Message::from_vec(&bytes).map_err(|e| e.to_string())?;
    assert_eq!(r.metadata.id, 0x5151);
    if r.metadata.response_code != ResponseCode::NoError {
        return Err(r.metadata.response_code.to_string());
    }
    Ok(r.answers.iter().map(|a| format!("{} {}", a.record_type(), a.data)).collect())
}

/// A resolver standing in for the host's: every A question gets 192.0.2.7.
fn fake_upstream() -> (std::net::SocketAddr, std::thread::JoinHandle<()>, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use hickory_proto::op::{Message, OpCode};
    use hickory_proto::rr::{RData, Record, rdata::A};
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_millis(200))).unwrap();
    let addr = s.local_addr().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let st = stop.clone();
    let h = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while !st.load(std::sync::atomic::Ordering::Relaxed) {
            let Ok((n, from)) = s.recv_from(&mut buf) else { continue };
            let Ok(q) = Message::from_vec(&buf[..n]) else { continue };
            let mut r = Message::response(q.metadata.id, OpCode::Query);
            r.add_queries(q.queries.clone());
            for qq in &q.queries {
                r.add_answer(Record::from_rdata(qq.name().clone(), 60, RData::A(A([192, 0, 2, 7].into()))));
            }
            let _ = s.send_to(&r.to_vec().unwrap(), from);
        }
    });
    (addr, h, stop)
}

#[test]
fn cluster_dns_names_services_endpoints_and_pods_and_forwards_the_rest() {
    use hickory_proto::rr::RecordType;
    need_ip();
    let services = service_range();
    let (upstream, upstream_thread, stop) = fake_upstream();
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--node-name", NODE, "--service-cluster-ip-range", &services, "--dns-upstream", &upstream.to_string()]);
    let base: std::net::Ipv4Addr = services.split('/').next().unwrap().parse().unwrap();
    let dns_ip = std::net::Ipv4Addr::from(u32::from(base) + 10);
    // Every cluster has them: the API at the range's first address, DNS at its tenth.
    assert_eq!(c.ok(&["get", "svc", "kubernetes", "-o", "jsonpath={.spec.clusterIP}"]), std::net::Ipv4Addr::from(u32::from(base) + 1).to_string());
    assert_eq!(c.ok(&["get", "svc", "-n", "kube-system", "kube-dns", "-o", "jsonpath={.spec.clusterIP}"]), dns_ip.to_string());
    assert!(!c.ok(&["get", "endpointslice", "kubernetes", "-o", "jsonpath={.endpoints[0].addresses[0]}"]).is_empty());
    let client = idle_pod("client");
    let manifests = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: web-1, labels: {{app: web}}}}
spec:
  nodeName: {NODE}
  hostname: web-1
  subdomain: hl
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: python
    command: ["python3", "-m", "http.server", "8080"]
    readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
---
{client}---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: hl}}
spec:
  clusterIP: None
  selector: {{app: web}}
  ports: [{{name: http, port: 8080}}]
"#
    );
    let m = c.write("dns.yaml", &manifests);
    c.ok(&["apply", "-f", path_str(&m)]);
    c.ok(&["wait", "--for=condition=Ready", "pod/web-1", "pod/client", "--timeout=60s"]);
    let web_ip = c.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let pod_ip = jsonpath(&c, "web-1", "{.status.podIP}");
    // The pod is told where the cluster DNS is and which domains to search.
    let resolv = c.ok(&["exec", "client", "--", "cat", "/etc/resolv.conf"]);
    assert!(resolv.contains(&format!("nameserver {dns_ip}\n")) && resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local") && resolv.contains("options ndots:5"), "{resolv}");
    // Before asking: the DNS address is the node's own (nothing leaves the machine).
    let addrs = String::from_utf8_lossy(&std::process::Command::new("ip").args(["-o", "-4", "addr", "show"]).output().unwrap().stdout).into_owned();
    assert!(addrs.contains(&format!(" {dns_ip}/32 ")), "{dns_ip} is not a local address: {addrs}");
    // From the node: A and SRV, over UDP and TCP.
    let server: std::net::SocketAddr = (dns_ip, 53).into();
    wait_until("the DNS to know the endpoint of hl", || ask(server, "web-1.hl.default.svc.cluster.local.", RecordType::A, false).is_ok_and(|a| a == [format!("A {pod_ip}")]));
    assert_eq!(ask(server, "web.default.svc.cluster.local.", RecordType::A, false).unwrap(), [format!("A {web_ip}")]);
    assert_eq!(ask(server, "web.default.svc.cluster.local.", RecordType::A, true).unwrap(), [format!("A {web_ip}")], "over TCP");
    assert_eq!(ask(server, "_http._tcp.web.default.svc.cluster.local.", RecordType::SRV, false).unwrap(), ["SRV 0 100 80 web.default.svc.cluster.local."]);
    assert_eq!(ask(server, "_http._tcp.hl.default.svc.cluster.local.", RecordType::SRV, false).unwrap(), ["SRV 0 100 8080 web-1.hl.default.svc.cluster.local."]);
    assert_eq!(ask(server, "hl.default.svc.cluster.local.", RecordType::A, false).unwrap(), [format!("A {pod_ip}")], "headless: the endpoints");
    assert_eq!(ask(server, "nothing.default.svc.cluster.local.", RecordType::A, false).unwrap_err(), "Non-Existent Domain");
    assert_eq!(ask(server, "outside.example.", RecordType::A, false).unwrap(), ["A 192.0.2.7"], "forwarded to the host's resolver");
    // From a pod, through its resolver and search domains.
    let lookup = |name: &str| c.ok(&["exec", "client", "--", "python3", "-c", &format!("import socket; print(socket.gethostbyname('{name}'))")]).trim().to_string();
    assert_eq!(lookup("web"), web_ip);
    assert_eq!(lookup("web-1.hl"), pod_ip);
    assert_eq!(lookup(&format!("{}.default.pod.cluster.local", pod_ip.replace('.', "-"))), pod_ip);
    assert_eq!(lookup("outside.example"), "192.0.2.7");
    // Reverse: a Service's cluster IP names the Service.
    let reverse = c.ok(&["exec", "client", "--", "python3", "-c", &format!("import socket; print(socket.gethostbyaddr('{web_ip}')[0])")]);
    assert_eq!(reverse.trim(), "web.default.svc.cluster.local");
    // The API by its Service name, through the proxy.
    let api = "import ssl, urllib.request; print(urllib.request.urlopen('https://kubernetes.default.svc/version', context=ssl._create_unverified_context(), timeout=10).status)";
    assert_eq!(c.ok(&["exec", "client", "--", "python3", "-c", api]).trim(), "200");
    // A Service deleted is gone from DNS.
    c.ok(&["delete", "svc", "web"]);
    wait_until("web to leave the DNS", || ask(server, "web.default.svc.cluster.local.", RecordType::A, false).is_err_and(|e| e == "Non-Existent Domain"));
    c.ok(&["delete", "pod", "web-1", "client", "--wait=true", "--timeout=60s"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    upstream_thread.join().unwrap();
}

#[test]
fn proxy_subresources_reach_pods_services_and_nodes_also_through_kubectl_proxy() {
    need_ip();
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--node-name", NODE]);
    let manifests = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: web-1, labels: {{app: web}}}}
spec:
  nodeName: {NODE}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: python
    command: ["sh", "-c", "cd $(mktemp -d) && hostname > name && exec python3 -m http.server 8080"]
    ports: [{{name: http, containerPort: 8080}}]
    readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: empty}}
spec:
  selector: {{app: nothing}}
  ports: [{{port: 80}}]
"#
    );
    let m = c.write("proxy.yaml", &manifests);
    c.ok(&["apply", "-f", path_str(&m)]);
    c.ok(&["wait", "--for=condition=Ready", "pod/web-1", "--timeout=60s"]);
    // The pod, by port number and by its first container port.
    assert_eq!(c.ok(&["get", "--raw", "/api/v1/namespaces/default/pods/web-1:8080/proxy/name"]).trim(), "web-1");
    assert_eq!(c.ok(&["get", "--raw", "/api/v1/namespaces/default/pods/web-1/proxy/name"]).trim(), "web-1");
    // The Service, by its port's name, once its endpoint is ready.
    wait_until("the Service proxy to reach web-1", || c.kubectl_with(KUBECTL, &["get", "--raw", "/api/v1/namespaces/default/services/web:http/proxy/name"]).status.success());
    assert_eq!(c.ok(&["get", "--raw", "/api/v1/namespaces/default/services/web:http/proxy/name"]).trim(), "web-1");
    // The node: its kubelet endpoint.
    assert_eq!(c.ok(&["get", "--raw", &format!("/api/v1/nodes/{NODE}/proxy/healthz")]).trim(), "ok");
    // A Service without endpoints: Kubernetes' 503.
    let e = c.fails(&["get", "--raw", "/api/v1/namespaces/default/services/empty/proxy/"]);
    assert!(e.contains("no endpoints available for service \"empty\""), "{e}");
    // Through `kubectl proxy`, as a browser would reach it.
    let (mut child, mut lines) = c.kubectl_spawn(&["proxy", "--port=0"]);
    let line = lines.next("kubectl proxy's address");
    let addr = line.rsplit(' ').next().unwrap_or("").trim().to_string();
    assert!(addr.starts_with("127.0.0.1:"), "{line}");
    assert_eq!(get(&addr, "/api/v1/namespaces/default/services/web:http/proxy/name").unwrap(), "web-1");
    let _ = child.kill();
    let _ = child.wait();
}

/// Fails with the install hint when nftables' `nft` is missing.
fn need_nft() {
    let ok = std::process::Command::new("nft").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(ok, "nftables' `nft` is needed for NetworkPolicy: apt-get install -y nftables (.ci/run installs it)");
}

#[test]
fn network_policies_allow_only_what_they_name_and_go_away_with_their_deletion() {
    need_ip();
    need_nft();
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--node-name", NODE]);
    let pod = |ns: &str, name: &str, labels: &str, server: bool| {
        let cmd = if server { r#"["python3", "-m", "http.server", "8080"]"# } else { r#"["sh", "-c", "while :; do sleep 1; done"]"# };
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\nspec:\n  nodeName: {NODE}\n  terminationGracePeriodSeconds: 1\n  containers: [{{name: c, image: python, command: {cmd}, ports: [{{name: http, containerPort: 8080}}]}}]\n---\n")
    };
    let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: team, labels: {team: a}}\n---\n";
    let svc = |name: &str| format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}-svc}}\nspec:\n  selector: {{app: {name}}}\n  ports: [{{port: 80, targetPort: http}}]\n---\n");
    let m = c.write(
        "pods.yaml",
        &format!(
            "{ns}{}{}{}{}{}{}{}",
            pod("default", "db", "app: db", true),
            pod("default", "web", "app: web", true),
            pod("default", "front", "role: frontend", false),
            pod("default", "stranger", "x: z", false),
            pod("team", "t", "x: z", false),
            svc("db"),
            svc("web")
        ),
    );
    c.ok(&["apply", "-f", path_str(&m)]);
    for (ns, p) in [("default", "db"), ("default", "web"), ("default", "front"), ("default", "stranger"), ("team", "t")] {
        c.ok(&["wait", "-n", ns, "--for=condition=Ready", &format!("pod/{p}"), "--timeout=60s"]);
    }
    let ip = |p: &str| c.ok(&["get", "pod", p, "-o", "jsonpath={.status.podIP}"]);
    let (db, web) = (ip("db"), ip("web"));
    let cluster_ip = |s: &str| c.ok(&["get", "svc", s, "-o", "jsonpath={.spec.clusterIP}"]);
    let (db_svc, web_svc) = (format!("{}:80", cluster_ip("db-svc")), format!("{}:80", cluster_ip("web-svc")));
    // Whether `from` (ns, pod) reaches `to` (an address, port 8080 when none): "200", or how
    // it failed.
    let reach = |ns: &str, from: &str, to: &str| {
        let to = if to.contains(':') { to.to_string() } else { format!("{to}:8080") };
        let code = format!("import urllib.request\ntry:\n  print(urllib.request.urlopen('http://{to}/', timeout=5).status)\nexcept Exception as e:\n  print('refused', type(e).__name__)");
        c.ok(&["exec", "-n", ns, from, "--", "python3", "-c", &code]).trim().to_string()
    };
    // No policy: everyone reaches everyone, directly and through Services.
    assert_eq!(reach("default", "stranger", &db), "200");
    wait_until("the db Service to have its endpoint", || reach("default", "stranger", &db_svc) == "200");
    wait_until("the web Service to have its endpoint", || reach("default", "front", &web_svc) == "200");
    let policy = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-ingress}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - podSelector: {matchLabels: {role: frontend}}
    - namespaceSelector: {matchLabels: {team: a}}
    ports: [{port: http}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: front-egress}
spec:
  podSelector: {matchLabels: {role: frontend}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: db}}}]
"#;
    let m = c.write("policy.yaml", policy);
    c.ok(&["apply", "-f", path_str(&m)]);
    assert!(c.ok(&["get", "netpol"]).contains("db-ingress"));
    // Before any judgement: the rules are in db's own namespace.
    let uid = c.ok(&["get", "pod", "db", "-o", "jsonpath={.metadata.uid}"]);
    let netns = namespaces().lines().find(|l| l.contains(&uid)).map(|l| l.split_whitespace().next().unwrap_or("").to_string()).expect("db's network namespace");
    wait_until("db's policy table", || {
        let out = std::process::Command::new("ip").args(["netns", "exec", &netns, "nft", "list", "table", "inet", "capstan_policy"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).contains("chain input")
    });
    wait_until("the stranger to be refused by db", || reach("default", "stranger", &db).starts_with("refused"));
    assert_eq!(reach("default", "front", &db), "200", "a frontend of db's namespace");
    assert_eq!(reach("team", "t", &db), "200", "any pod of a namespace labelled team=a");
    assert_eq!(reach("default", "stranger", &web), "200", "web is selected by no policy");
    assert!(reach("default", "front", &web).starts_with("refused"), "front's egress goes to db only");
    // Through Services, the same: the node's proxy judges each connection as if it were
    // made to the endpoint.
    wait_until("the stranger to be refused by db's Service", || reach("default", "stranger", &db_svc).starts_with("refused"));
    assert_eq!(reach("default", "front", &db_svc), "200", "a frontend, through db's Service");
    assert_eq!(reach("default", "stranger", &web_svc), "200", "web's Service: web is selected by no policy");
    assert!(reach("default", "front", &web_svc).starts_with("refused"), "front's egress goes to db only, Services too");
    // The node is always allowed (the readiness of db's port, seen from the host).
    assert!(std::net::TcpStream::connect_timeout(&format!("{db}:8080").parse().unwrap(), std::time::Duration::from_secs(5)).is_ok(), "from the node");
    // Deleted: open again.
    c.ok(&["delete", "netpol", "db-ingress", "front-egress"]);
    wait_until("the stranger to reach db again", || reach("default", "stranger", &db) == "200");
    assert_eq!(reach("default", "front", &web), "200");
    wait_until("the stranger to reach db's Service again", || reach("default", "stranger", &db_svc) == "200");
}

#[test]
fn udp_service_ports_relay_datagrams_both_ways() {
    need_ip();
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--node-name", NODE]);
    let client = idle_pod("client");
    let echo = "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('0.0.0.0', 9999))\nwhile True:\n  d, a = s.recvfrom(2048)\n  s.sendto(socket.gethostname().encode() + b':' + d, a)\n";
    let manifests = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: echo, labels: {{app: echo}}}}
spec:
  nodeName: {NODE}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: python
    command: ["python3", "-c", {echo:?}]
---
{client}---
apiVersion: v1
kind: Service
metadata: {{name: echo}}
spec:
  selector: {{app: echo}}
  ports: [{{name: dns, port: 53, targetPort: 9999, protocol: UDP}}]
"#
    );
    let m = c.write("udp.yaml", &manifests);
    c.ok(&["apply", "-f", path_str(&m)]);
    c.ok(&["wait", "--for=condition=Ready", "pod/echo", "pod/client", "--timeout=60s"]);
    let ip = c.ok(&["get", "svc", "echo", "-o", "jsonpath={.spec.clusterIP}"]);
    let addr: std::net::SocketAddr = format!("{ip}:53").parse().unwrap();
    // From the node, once the port is programmed.
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_millis(500))).unwrap();
    let mut buf = [0u8; 256];
    wait_until("the UDP Service to answer", || {
        let _ = sock.send_to(b"ping", addr);
        sock.recv_from(&mut buf).is_ok_and(|(n, from)| &buf[..n] == b"echo:ping" && from == addr)
    });
    // From a pod, the answer coming back from the cluster IP.
    let code = format!("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.settimeout(5)\ns.sendto(b'pong', ('{ip}', 53))\nd, a = s.recvfrom(256)\nprint(d.decode(), a[0])");
    assert_eq!(c.ok(&["exec", "client", "--", "python3", "-c", &code]).trim(), format!("echo:pong {ip}"));
}

#[test]
fn pods_get_their_service_account_token_and_reach_the_api_by_its_service_name() {
    need_ip();
    let c = Cluster::start_with(tempfile::tempdir().unwrap(), &["--node-name", NODE]);
    let pod = |name: &str, automount: bool| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {NODE}\n  automountServiceAccountToken: {automount}\n  terminationGracePeriodSeconds: 1\n  containers: [{{name: c, image: busybox, command: [sh, -c, 'while :; do sleep 1; done']}}]\n---\n"
        )
    };
    let m = c.write("sa.yaml", &format!("{}{}", pod("client", true), pod("none", false)));
    c.ok(&["apply", "-f", path_str(&m)]);
    c.ok(&["wait", "--for=condition=Ready", "pod/client", "pod/none", "--timeout=60s"]);
    assert_eq!(c.ok(&["get", "pod", "client", "-o", "jsonpath={.spec.serviceAccountName}"]), "default");
    assert!(c.ok(&["get", "pod", "client", "-o", "jsonpath={.spec.volumes[*].name}"]).starts_with("kube-api-access-"));
    assert_eq!(c.ok(&["get", "pod", "none", "-o", "jsonpath={.spec.volumes}"]), "", "automountServiceAccountToken: false");
    // In the pod: the token, the CA and the namespace, and the API by its Service name,
    // verified against that CA, answering as the pod's ServiceAccount.
    let code = r#"
import json, ssl, urllib.request
d = '/var/run/secrets/kubernetes.io/serviceaccount/'
token = open(d + 'token').read()
ns = open(d + 'namespace').read()
ctx = ssl.create_default_context(cafile=d + 'ca.crt')
body = json.dumps({'apiVersion': 'authentication.k8s.io/v1', 'kind': 'SelfSubjectReview'}).encode()
req = urllib.request.Request('https://kubernetes.default.svc/apis/authentication.k8s.io/v1/selfsubjectreviews', data=body, method='POST',
    headers={'Authorization': 'Bearer ' + token, 'Content-Type': 'application/json'})
r = json.load(urllib.request.urlopen(req, context=ctx, timeout=10))
print(ns, r['status']['userInfo']['username'])
"#;
    // Once the node serves the cluster's names (its DNS address is programmed with the
    // Services it watches).
    wait_until("kubernetes.default.svc to resolve in the pod", || {
        c.kubectl_with(KUBECTL, &["exec", "client", "--", "python3", "-c", "import socket; socket.gethostbyname('kubernetes.default.svc')"]).status.success()
    });
    assert_eq!(c.ok(&["exec", "client", "--", "python3", "-c", code]).trim(), "default system:serviceaccount:default:default");
}
