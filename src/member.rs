//! `capstan member list|add|promote|remove`: the membership of a replicated cluster, through
//! any member's peer endpoint (changes are made on the leader; the answer of another member
//! names it, and this command follows). New members join as learners (`add`), catch up, and
//! become voters (`promote`); raft changes voters by joint consensus.

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct MemberArgs {
    /// Peer URLs of members to ask (comma-separated; the first that answers is used).
    #[arg(long, global = true, default_value = "http://127.0.0.1:2380")]
    pub endpoints: String,
    /// For `https://` endpoints (a cluster on TLS): the cluster CA to trust...
    #[arg(long, global = true)]
    pub cacert: Option<std::path::PathBuf>,
    /// ...and a certificate of the peers' group to present, with its key (`up --replicas`
    /// writes `D/pki/member.crt` and `member.key`), as etcdctl's flags.
    #[arg(long, global = true, requires = "key")]
    pub cert: Option<std::path::PathBuf>,
    #[arg(long, global = true, requires = "cert")]
    pub key: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub op: MemberOp,
}

#[derive(clap::Subcommand)]
pub enum MemberOp {
    /// The members, their URLs, and which one leads.
    List,
    /// Add a member as a learner (it gets the log, it does not vote yet).
    Add {
        name: String,
        /// Where the others will reach it.
        #[arg(long)]
        peer_url: String,
    },
    /// Make a learner a voter.
    Promote { name: String },
    /// Remove a member (it then refuses to serve).
    Remove { name: String },
}

/// TLS for `https://` endpoints, from the flags.
fn tls(a: &MemberArgs) -> Result<Option<std::sync::Arc<rustls::ClientConfig>>> {
    let read = |p: &std::path::Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let Some(ca) = &a.cacert else { return Ok(None) };
    let pair = match (&a.cert, &a.key) {
        (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
        _ => None,
    };
    Ok(Some(crate::peer_tls::client(&read(ca)?, pair.as_ref().map(|(c, k)| (c.as_str(), k.as_str())))?))
}

async fn http(tls: Option<&std::sync::Arc<rustls::ClientConfig>>, method: &str, url: &str, body: Option<&Value>) -> Result<(u16, Value)> {
    use http_body_util::BodyExt;
    let authority = raft::network::authority(url).split('/').next().unwrap_or("").to_string();
    let connect = async {
        let tcp = tokio::net::TcpStream::connect(&authority).await?;
        let io: Box<dyn raft::network::Io> = if url.starts_with("https://") {
            let cfg = tls.ok_or_else(|| anyhow!("{url} is TLS: give --cacert (and --cert, --key)"))?;
            let host = authority.rsplit_once(':').map_or(authority.as_str(), |(h, _)| h).trim_matches(['[', ']']).to_string();
            let name = rustls::pki_types::ServerName::try_from(host)?;
            Box::new(tokio_rustls::TlsConnector::from(cfg.clone()).connect(name, tcp).await.with_context(|| format!("TLS with {authority}"))?)
        } else {
            Box::new(tcp)
        };
        Ok::<_, anyhow::Error>(io)
    };
    let stream = tokio::time::timeout(std::time::Duration::from_secs(5), connect).await.map_err(|_| anyhow!("connecting to {authority} timed out"))??;
    let (mut send, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let bytes = body.map(|b| serde_json::to_vec(b).unwrap_or_default()).unwrap_or_default();
    let req = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(bytes)))?;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(30), send.send_request(req)).await.map_err(|_| anyhow!("{url} did not answer in 30 s"))??;
    let code = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    let v = serde_json::from_slice(&body).unwrap_or_else(|_| json!({"error": String::from_utf8_lossy(&body)}));
    Ok((code, v))
}

fn print_members(status: &Value) {
    println!("{:<18} {:<16} {:<8} {:<7} {:<32} API", "ID", "NAME", "ROLE", "LEADER", "PEER URL");
    for m in status["members"].as_array().into_iter().flatten() {
        println!(
            "{:<18} {:<16} {:<8} {:<7} {:<32} {}",
            m["id"].as_str().unwrap_or(""),
            m["name"].as_str().unwrap_or(""),
            if m["voter"].as_bool().unwrap_or(false) { "voter" } else { "learner" },
            if m["leader"].as_bool().unwrap_or(false) { "yes" } else { "" },
            m["peerURL"].as_str().unwrap_or(""),
            m["apiURL"].as_str().unwrap_or(""),
        );
    }
}

pub async fn run(a: MemberArgs) -> Result<()> {
    let endpoints: Vec<String> = a.endpoints.split(',').map(|e| e.trim().trim_end_matches('/').to_string()).filter(|e| !e.is_empty()).collect();
    if endpoints.is_empty() {
        bail!("--endpoints is empty");
    }
    let tls = tls(&a)?;
    let tls = tls.as_ref();
    let (op, name, peer_url) = match &a.op {
        MemberOp::List => {
            let mut last = None;
            for e in &endpoints {
                match http(tls, "GET", &format!("{e}/raft/members"), None).await {
                    Ok((200, v)) => {
                        print_members(&v);
                        return Ok(());
                    }
                    Ok((code, v)) => last = Some(anyhow!("{e} answered {code}: {v}")),
                    Err(err) => last = Some(err.context(format!("asking {e}"))),
                }
            }
            return Err(last.unwrap());
        }
        MemberOp::Add { name, peer_url } => ("add", name.clone(), peer_url.clone()),
        MemberOp::Promote { name } => ("promote", name.clone(), String::new()),
        MemberOp::Remove { name } => ("remove", name.clone(), String::new()),
    };
    let body = json!({"op": op, "name": name, "peerURL": peer_url});
    let mut targets = endpoints.clone();
    let mut tried = 0;
    while let Some(e) = targets.first().cloned() {
        targets.remove(0);
        tried += 1;
        if tried > 8 {
            break;
        }
        let (code, v) = match http(tls, "POST", &format!("{e}/raft/members"), Some(&body)).await {
            Ok(r) => r,
            Err(err) => {
                eprintln!("{e}: {err:#}");
                continue;
            }
        };
        match code {
            200 => {
                println!("member {name}: {op} done");
                print_members(&v["status"]);
                if op == "add" {
                    let initial: Vec<String> = v["status"]["members"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|m| format!("{}={}", m["name"].as_str().unwrap_or(""), m["peerURL"].as_str().unwrap_or("")))
                        .collect();
                    println!("start it with:");
                    println!(
                        "  capstan server --name {name} --initial-cluster-state existing --initial-cluster {} --peer-listen {} --data-dir DIR --listen ADDR",
                        initial.join(","),
                        raft::network::authority(&peer_url)
                    );
                    let flags = match (&a.cacert, &a.cert, &a.key) {
                        (Some(ca), Some(c), Some(k)) => format!(" --cacert {} --cert {} --key {}", ca.display(), c.display(), k.display()),
                        _ => String::new(),
                    };
                    println!("then, once it has caught up: capstan member promote {name} --endpoints {}{flags}", a.endpoints);
                }
                return Ok(());
            }
            421 => match v["leaderPeerURL"].as_str() {
                Some(l) if !l.is_empty() => targets.insert(0, l.to_string()),
                _ => bail!("{e} is not the leader and knows no leader (no quorum?)"),
            },
            _ => bail!("{op} {name}: {}", v["error"].as_str().map(String::from).unwrap_or_else(|| v.to_string())),
        }
    }
    Err(anyhow!("no member of {} could {op} {name}", a.endpoints)).context("changing the membership")
}
