//! An etcd endpoint over a store in this process, plain on loopback, for the tests.
#![allow(dead_code)]

use std::sync::Arc;

use tonic::transport::Channel;

pub struct Server {
    _dir: tempfile::TempDir,
    pub url: String,
}

pub async fn server() -> Server {
    server_with(etcdapi::Limits::default()).await
}

pub async fn server_with(limits: etcdapi::Limits) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = storage::Config::new(dir.path());
    cfg.shards = 2;
    cfg.fsync = false;
    cfg.pin_threads = false;
    let store = storage::Store::open(cfg).unwrap();
    let ctx = etcdapi::Ctx::new(store, dir.path().to_path_buf(), Arc::new(etcdapi::SingleMember::new("t", vec![])), limits);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    etcdapi::serve(l, ctx, None).unwrap();
    Server { _dir: dir, url: format!("http://{addr}") }
}

pub async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_string()).unwrap().connect().await.unwrap()
}

