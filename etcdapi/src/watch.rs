//! The Watch service: one bidirectional stream per client carrying many watches, each a
//! store watcher on its own task. The stream's outbound queue is bounded: a client that
//! reads slowly makes its watches wait, their store watchers fall behind and are closed, and
//! each is opened again from where it stopped (`resume_revision`), so nothing is lost or sent
//! twice (etcd's "slow watchers" catch up the same way).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::pb::{self, watch_create_request::FilterType, watch_request};
use crate::{Ctx, key_range, kv_out};

pub struct Watch(pub Arc<Ctx>);

/// Responses a stream holds for its client before its watches wait (each holds at most one
/// store batch of events).
const STREAM_RESPONSES: usize = 256;
/// Watches one stream may hold; more are refused (created and cancelled at once, with a reason).
const STREAM_WATCHES: usize = 10_000;

type Out = mpsc::Sender<Result<pb::WatchResponse, Status>>;

pub type ResponseStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::watch_server::Watch for Watch {
    type WatchStream = ResponseStream;

    async fn watch(&self, r: Request<Streaming<pb::WatchRequest>>) -> Result<Response<ResponseStream>, Status> {
        let (tx, rx) = mpsc::channel(STREAM_RESPONSES);
        tokio::spawn(serve_stream(self.0.clone(), r.into_inner(), tx));
        let out = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
        Ok(Response::new(Box::pin(out)))
    }
}

struct Running {
    task: tokio::task::JoinHandle<()>,
    /// Every event at or below this revision has been queued on the stream.
    delivered: Arc<AtomicU64>,
}

async fn serve_stream(ctx: Arc<Ctx>, mut inbound: Streaming<pb::WatchRequest>, out: Out) {
    let mut watches: HashMap<i64, Running> = HashMap::new();
    // Ids are never reused on a stream, as etcd's (clients route responses by them).
    let mut next_id: i64 = 0;
    loop {
        let msg = tokio::select! {
            m = inbound.message() => m,
            _ = out.closed() => break,
        };
        let msg = match msg {
            Ok(Some(m)) => m,
            // The client closed its side: its watches go on until it goes (as etcd's).
            Ok(None) => {
                out.closed().await;
                break;
            }
            Err(_) => break,
        };
        watches.retain(|_, w| !w.task.is_finished());
        match msg.request_union {
            Some(watch_request::RequestUnion::CreateRequest(c)) => {
                let id = if c.watch_id != 0 {
                    c.watch_id
                } else {
                    while watches.contains_key(&next_id) {
                        next_id += 1;
                    }
                    next_id += 1;
                    next_id - 1
                };
                // The revision the watch starts after is fixed here, before "created" is sent:
                // a write between the answer and the watcher's registration is not lost.
                let now = ctx.store.revision();
                let header = ctx.header(now);
                if watches.contains_key(&id) || c.key.is_empty() || watches.len() >= STREAM_WATCHES {
                    let reason = if c.key.is_empty() {
                        "etcdserver: key is not provided"
                    } else if watches.contains_key(&id) {
                        "etcdserver: duplicate watch ID"
                    } else {
                        "capstan: too many watches on this stream (10,000); open another stream"
                    };
                    let resp = pb::WatchResponse { header, watch_id: id, created: true, canceled: true, cancel_reason: reason.into(), ..Default::default() };
                    if out.send(Ok(resp)).await.is_err() {
                        break;
                    }
                    continue;
                }
                if out.send(Ok(pb::WatchResponse { header, watch_id: id, created: true, ..Default::default() })).await.is_err() {
                    break;
                }
                let start = if c.start_revision > 0 { c.start_revision as u64 } else { now + 1 };
                // Progress never claims a revision the store has not reached.
                let delivered = Arc::new(AtomicU64::new((start - 1).min(now)));
                let task = tokio::spawn(run(ctx.clone(), id, c, start, out.clone(), delivered.clone()));
                watches.insert(id, Running { task, delivered });
            }
            Some(watch_request::RequestUnion::CancelRequest(c)) => {
                if let Some(w) = watches.remove(&c.watch_id) {
                    w.task.abort();
                    let resp = pb::WatchResponse { header: ctx.header_now(), watch_id: c.watch_id, canceled: true, ..Default::default() };
                    if out.send(Ok(resp)).await.is_err() {
                        break;
                    }
                }
            }
            Some(watch_request::RequestUnion::ProgressRequest(_)) => {
                // Every watch on the stream has queued everything at or below this revision.
                let now = ctx.store.revision();
                let rev = watches.values().map(|w| w.delivered.load(Ordering::Acquire)).min().unwrap_or(now).min(now);
                let resp = pb::WatchResponse { header: ctx.header(rev), watch_id: -1, ..Default::default() };
                if out.send(Ok(resp)).await.is_err() {
                    break;
                }
            }
            None => {}
        }
    }
    for (_, w) in watches {
        w.task.abort();
    }
}

/// One watch: store events, filtered, to the stream, until cancelled, compacted away or the
/// stream ends.
async fn run(ctx: Arc<Ctx>, id: i64, c: pb::WatchCreateRequest, start: u64, out: Out, delivered: Arc<AtomicU64>) {
    let range = key_range(&c.key, &c.range_end);
    let no_put = c.filters.contains(&(FilterType::Noput as i32));
    let no_delete = c.filters.contains(&(FilterType::Nodelete as i32));
    let mut start = Some(start);
    // Progress is told after an interval with nothing sent (each response restarts it).
    let mut tick = tokio::time::interval(ctx.limits.progress_notify);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset();
    loop {
        let mut w = ctx.store.watch(storage::WatchRequest { range: range.clone(), start_revision: start, prev_kv: c.prev_kv });
        loop {
            let item = tokio::select! {
                item = w.next_or_progress() => item,
                _ = tick.tick(), if c.progress_notify => {
                    let rev = delivered.load(Ordering::Acquire).min(ctx.store.revision());
                    let resp = pb::WatchResponse { header: ctx.header(rev), watch_id: id, ..Default::default() };
                    if out.send(Ok(resp)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            match item {
                None | Some(Err(storage::WatchError::Shutdown)) => return,
                Some(Err(storage::WatchError::Compacted { compact_revision, .. })) => {
                    let resp = pb::WatchResponse {
                        header: ctx.header_now(),
                        watch_id: id,
                        canceled: true,
                        compact_revision: compact_revision as i64,
                        cancel_reason: "etcdserver: mvcc: required revision has been compacted".into(),
                        ..Default::default()
                    };
                    let _ = out.send(Ok(resp)).await;
                    return;
                }
                Some(Err(storage::WatchError::SlowWatcher { resume_revision, .. })) => {
                    start = Some(resume_revision);
                    break;
                }
                Some(Ok(events)) => {
                    let through = w.delivered_through();
                    let events: Vec<pb::Event> = events
                        .into_iter()
                        .filter(|e| match e.kind {
                            storage::EventKind::Put => !no_put,
                            storage::EventKind::Delete => !no_delete,
                        })
                        .map(|e| pb::Event {
                            r#type: match e.kind {
                                storage::EventKind::Put => pb::event::EventType::Put as i32,
                                storage::EventKind::Delete => pb::event::EventType::Delete as i32,
                            },
                            kv: Some(kv_out(e.kv)),
                            prev_kv: e.prev_kv.map(kv_out),
                        })
                        .collect();
                    if !events.is_empty() {
                        for resp in responses(&ctx, id, through, events, c.fragment) {
                            if out.send(Ok(resp)).await.is_err() {
                                return;
                            }
                        }
                        tick.reset();
                    }
                    delivered.store(through, Ordering::Release);
                }
            }
        }
    }
}

/// The responses carrying `events`: one, or with `fragment` and more than a request's worth
/// of bytes, several of about that size, all but the last marked as fragments.
fn responses(ctx: &Ctx, id: i64, through: u64, events: Vec<pb::Event>, fragment: bool) -> Vec<pb::WatchResponse> {
    let header = ctx.header(through);
    let resp = |events: Vec<pb::Event>, fragment: bool| pb::WatchResponse { header, watch_id: id, fragment, events, ..Default::default() };
    let size = |e: &pb::Event| prost::Message::encoded_len(e);
    if !fragment || events.iter().map(size).sum::<usize>() <= ctx.limits.request_bytes {
        return vec![resp(events, false)];
    }
    let mut out = Vec::new();
    let mut part = Vec::new();
    let mut bytes = 0;
    for e in events {
        let n = size(&e);
        if !part.is_empty() && bytes + n > ctx.limits.request_bytes {
            out.push(resp(std::mem::take(&mut part), true));
            bytes = 0;
        }
        bytes += n;
        part.push(e);
    }
    out.push(resp(part, false));
    out
}
