//! `kubectl port-forward` on the kubelet (`/portForward/{namespace}/{pod}`): the
//! `portforward.k8s.io` protocol over a SPDY session. For each local connection the client
//! opens an error stream and then a data stream, both naming the `port` and a `requestid`;
//! the data stream is joined to a TCP connection to that port of the pod, and a failure to
//! connect is written on the error stream (kubectl prints it; the session and its other
//! connections go on).

use std::collections::HashMap;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::spdy;

/// Serves the streams of one port-forward session to the pod at `host` (its IP: loopback
/// while pods share the host's network).
pub async fn serve(mut streams: mpsc::Receiver<spdy::Stream>, host: Target, pod: String) {
    let mut errors: HashMap<String, spdy::Sender> = HashMap::new();
    while let Some(s) = streams.recv().await {
        let request = s.header("requestid").unwrap_or("").to_string();
        let port = s.header("port").and_then(|p| p.parse::<u16>().ok());
        match s.header("streamtype") {
            Some("error") => {
                errors.insert(request, s.tx.clone());
            }
            Some("data") => {
                let error = errors.remove(&request);
                let Some(port) = port.filter(|p| *p > 0) else {
                    if let Some(e) = error {
                        let _ = e.data(Bytes::from(format!("invalid port {:?}", s.header("port").unwrap_or("")))).await;
                        e.fin().await;
                    }
                    s.tx.reset().await;
                    continue;
                };
                tokio::spawn(forward(s, error, host.clone(), port, pod.clone()));
            }
            _ => s.tx.reset().await,
        }
        // Error streams whose data stream never came are dropped with their request.
        if errors.len() > 1024 {
            errors.clear();
        }
    }
}

/// Where a pod's ports are: an address, and its network namespace when it has one.
pub type Target = (String, Option<std::path::PathBuf>);

async fn connect(t: &Target, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    match &t.1 {
        None => tokio::net::TcpStream::connect((t.0.as_str(), port)).await,
        Some(ns) => {
            let ip: std::net::IpAddr = t.0.parse().map_err(|_| std::io::Error::other("not an address"))?;
            crate::network::connect_in(ns, (ip, port).into()).await
        }
    }
}

async fn forward(mut s: spdy::Stream, error: Option<spdy::Sender>, target: Target, port: u16, pod: String) {
    let host = target.0.clone();
    let tcp = match connect(&target, port).await {
        Ok(t) => t,
        Err(e) => {
            if let Some(err) = &error {
                let msg = format!("error forwarding port {port} to pod {pod}: failed to connect to {host}:{port}: {e}");
                let _ = err.data(Bytes::from(msg)).await;
                err.fin().await;
            }
            s.tx.fin().await;
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    let (mut rd, mut wr) = tcp.into_split();
    let tx = s.tx.clone();
    let up = async {
        while let Some(b) = s.rx.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
        // The client closed its side: so do we, towards the pod.
        let _ = wr.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; 32 << 10];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if !tx.data(Bytes::copy_from_slice(&buf[..n])).await {
                        break;
                    }
                }
            }
        }
        tx.fin().await;
    };
    tokio::join!(up, down);
    if let Some(err) = error {
        err.fin().await;
    }
}

/// Port-forward over WebSocket channels (`v4.channel.k8s.io`, what client libraries such as
/// the Python client's `portforward` speak): the ports are in the query (`ports=80,8080`);
/// port `i` has data channel `2i` and error channel `2i+1`, each opened by a frame holding
/// the port number (two bytes, little-endian); one TCP connection per port for the session.
pub async fn channels(socket: axum::extract::ws::WebSocket, target: Target, pod: String, ports: Vec<u16>) {
    let host = target.0.clone();
    use axum::extract::ws::Message;
    use futures_util::{SinkExt, StreamExt};
    let (mut sink, mut stream) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(super::job::QUEUE);
    let mut writers = Vec::new();
    for (i, &port) in ports.iter().enumerate() {
        let (data, error) = (2 * i as u8, 2 * i as u8 + 1);
        for chan in [data, error] {
            if sink.send(Message::Binary(Bytes::from(vec![chan, port as u8, (port >> 8) as u8]))).await.is_err() {
                return;
            }
        }
        match connect(&target, port).await {
            Ok(tcp) => {
                let (mut rd, wr) = tcp.into_split();
                writers.push(Some(wr));
                let tx = out_tx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 32 << 10];
                    loop {
                        match rd.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                let mut m = Vec::with_capacity(n + 1);
                                m.push(data);
                                m.extend_from_slice(&buf[..n]);
                                if tx.send(Bytes::from(m)).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
            Err(e) => {
                writers.push(None);
                let mut m = vec![error];
                m.extend_from_slice(format!("error forwarding port {port} to pod {pod}: failed to connect to {host}:{port}: {e}").as_bytes());
                let _ = out_tx.send(Bytes::from(m)).await;
            }
        }
    }
    drop(out_tx);
    // The session lasts until the client closes it, also after the pod closed every
    // connection (a client reading the last bytes must not find the socket gone first).
    let mut pod_open = true;
    loop {
        tokio::select! {
            m = out_rx.recv(), if pod_open => match m {
                Some(m) => if sink.send(Message::Binary(m)).await.is_err() { return },
                None => pod_open = false,
            },
            m = stream.next() => {
                let data = match m {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => continue,
                };
                let Some((&chan, rest)) = data.split_first() else { continue };
                if chan % 2 == 0
                    && let Some(Some(w)) = writers.get_mut(chan as usize / 2)
                    && w.write_all(rest).await.is_err()
                {
                    writers[chan as usize / 2] = None;
                }
            }
        }
    }
}

/// The `ports` of a WebSocket port-forward query (repeated or comma-separated).
pub fn ports(query: &str) -> Result<Vec<u16>, String> {
    let mut out = Vec::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if k == "ports" {
            for p in v.split(',').filter(|p| !p.is_empty()) {
                out.push(p.trim().parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| format!("invalid port {p:?}"))?);
            }
        }
    }
    if out.is_empty() {
        return Err("at least one port must be specified".into());
    }
    if out.len() > 64 {
        return Err(format!("{} ports: at most 64 in one session", out.len()));
    }
    Ok(out)
}
