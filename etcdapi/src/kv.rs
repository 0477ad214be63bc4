//! The KV service: Range, Put, DeleteRange, Txn, Compact, with etcd's semantics on top of
//! the store's (which has etcd's revisions, compares and txns already). What etcd does after
//! reading — sorting, the min/max revision filters, `ignore_value` / `ignore_lease` — is done
//! here. Every compare, a lease's included, is the store's.

use std::sync::Arc;

use bytes::Bytes;
use tonic::{Request, Response, Status};

use crate::pb::{self, compare, range_request, request_op, response_op};
use crate::{Ctx, errors, key_range, kv_out};

pub struct Kv(pub Arc<Ctx>);

/// What is done to a read after the store answers it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Post {
    limit: usize,
    keys_only: bool,
    count_only: bool,
    order: i32,
    target: i32,
    min_mod: i64,
    max_mod: i64,
    min_create: i64,
    max_create: i64,
}

impl Post {
    fn filters(&self) -> bool {
        self.min_mod != 0 || self.max_mod != 0 || self.min_create != 0 || self.max_create != 0
    }

    /// etcd sorts ascending by the target when an order is not given for a target other
    /// than the key (the store's order).
    fn order(&self) -> range_request::SortOrder {
        let o = range_request::SortOrder::try_from(self.order).unwrap_or(range_request::SortOrder::None);
        if o == range_request::SortOrder::None && self.target != range_request::SortTarget::Key as i32 { range_request::SortOrder::Ascend } else { o }
    }

    fn sorts(&self) -> bool {
        match self.order() {
            range_request::SortOrder::None => false,
            range_request::SortOrder::Ascend => self.target != range_request::SortTarget::Key as i32,
            range_request::SortOrder::Descend => true,
        }
    }
}

/// The store's read for `r`, and what to do after it.
pub(crate) fn range_in(r: &pb::RangeRequest) -> Result<(storage::RangeRequest, Post), Status> {
    if r.key.is_empty() {
        return Err(errors::empty_key());
    }
    let post = Post {
        limit: r.limit.max(0) as usize,
        keys_only: r.keys_only,
        count_only: r.count_only,
        order: r.sort_order,
        target: r.sort_target,
        min_mod: r.min_mod_revision,
        max_mod: r.max_mod_revision,
        min_create: r.min_create_revision,
        max_create: r.max_create_revision,
    };
    let whole = post.sorts() || post.filters();
    let mut req = storage::RangeRequest::new(key_range(&r.key, &r.range_end));
    req.revision = (r.revision > 0).then_some(r.revision as u64);
    req.limit = if whole { 0 } else { post.limit };
    req.count_only = r.count_only;
    // Sorting by value needs the values.
    req.keys_only = r.keys_only && r.sort_target != range_request::SortTarget::Value as i32;
    Ok((req, post))
}

/// The store's answer, sorted, filtered and cut as etcd does.
pub(crate) fn range_out(ctx: &Ctx, resp: storage::RangeResponse, post: &Post) -> pb::RangeResponse {
    let count = resp.count as i64;
    let revision = resp.revision;
    let (kvs, more) = arrange(resp.kvs, resp.more, post);
    let kvs = if post.count_only {
        Vec::new()
    } else {
        kvs.into_iter()
            .map(|kv| {
                let mut out = kv_out(kv);
                if post.keys_only {
                    out.value.clear();
                }
                out
            })
            .collect()
    };
    pb::RangeResponse { header: ctx.header(ctx.store.revision().max(revision)), kvs, more, count }
}

/// The revision filters, the sort and the limit, in etcd's order: the key-values left and
/// whether more were cut.
fn arrange(mut kvs: Vec<storage::KeyValue>, more: bool, post: &Post) -> (Vec<storage::KeyValue>, bool) {
    if post.filters() {
        kvs.retain(|kv| {
            let (m, c) = (kv.mod_revision as i64, kv.create_revision as i64);
            (post.min_mod == 0 || m >= post.min_mod)
                && (post.max_mod == 0 || m <= post.max_mod)
                && (post.min_create == 0 || c >= post.min_create)
                && (post.max_create == 0 || c <= post.max_create)
        });
    }
    if post.sorts() {
        use range_request::SortTarget as T;
        match T::try_from(post.target).unwrap_or(T::Key) {
            T::Key => {}
            T::Version => kvs.sort_by_key(|kv| kv.version),
            T::Create => kvs.sort_by_key(|kv| kv.create_revision),
            T::Mod => kvs.sort_by_key(|kv| kv.mod_revision),
            T::Value => kvs.sort_by(|a, b| a.value.cmp(&b.value)),
        }
        if post.order() == range_request::SortOrder::Descend {
            kvs.reverse();
        }
    }
    let mut more = more;
    if post.limit > 0 && kvs.len() > post.limit {
        kvs.truncate(post.limit);
        more = true;
    }
    (kvs, more)
}

pub(crate) async fn range(ctx: &Ctx, r: pb::RangeRequest) -> Result<pb::RangeResponse, Status> {
    let (req, post) = range_in(&r)?;
    let resp = if r.serializable { ctx.store.range_serializable(req).await } else { ctx.store.range(req).await };
    Ok(range_out(ctx, resp.map_err(errors::store)?, &post))
}

fn put_in(ctx: &Ctx, p: pb::PutRequest) -> Result<storage::PutRequest, Status> {
    if p.key.is_empty() {
        return Err(errors::empty_key());
    }
    if p.key.len() + p.value.len() > ctx.limits.request_bytes {
        return Err(errors::too_large());
    }
    Ok(storage::PutRequest { key: p.key.into(), value: p.value.into(), lease: p.lease, prev_kv: p.prev_kv })
}

async fn put(ctx: &Ctx, p: pb::PutRequest) -> Result<pb::PutResponse, Status> {
    if p.ignore_value && !p.value.is_empty() {
        return Err(errors::value_provided());
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(errors::lease_provided());
    }
    let (ignore_value, ignore_lease) = (p.ignore_value, p.ignore_lease);
    let req = put_in(ctx, p)?;
    if !ignore_value && !ignore_lease {
        let r = ctx.store.put_with(req).await.map_err(|e| ctx.noted(e))?;
        return Ok(pb::PutResponse { header: ctx.header(r.revision), prev_kv: r.prev_kv.map(kv_out) });
    }
    // Keep the key's value or lease: read it, then write only if it is still what was read.
    for _ in 0..64 {
        let Some(cur) = ctx.store.get(req.key.clone()).await.map_err(errors::store)? else {
            return Err(errors::key_not_found());
        };
        let put = storage::PutRequest {
            key: req.key.clone(),
            value: if ignore_value { cur.value.clone() } else { req.value.clone() },
            lease: if ignore_lease { cur.lease } else { req.lease },
            prev_kv: req.prev_kv,
        };
        let txn = storage::TxnRequest {
            compare: vec![storage::Compare { key: req.key.clone(), op: storage::CompareOp::Equal, target: storage::CompareTarget::ModRevision(cur.mod_revision), range_end: None }],
            success: vec![storage::TxnOp::Put(put)],
            failure: vec![],
        };
        let r = ctx.store.txn(txn).await.map_err(|e| ctx.noted(e))?;
        if r.succeeded {
            let prev = match r.responses.into_iter().next() {
                Some(storage::TxnOpResponse::Put(p)) => p.prev_kv,
                _ => None,
            };
            return Ok(pb::PutResponse { header: ctx.header(r.revision), prev_kv: prev.map(kv_out) });
        }
    }
    Err(Status::unavailable("etcdserver: the key changed under every attempt; retry"))
}

fn delete_in(d: pb::DeleteRangeRequest) -> Result<storage::DeleteRequest, Status> {
    if d.key.is_empty() {
        return Err(errors::empty_key());
    }
    Ok(storage::DeleteRequest { range: key_range(&d.key, &d.range_end), prev_kv: d.prev_kv })
}

fn delete_out(ctx: &Ctx, r: storage::DeleteResponse) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse { header: ctx.header(r.revision), deleted: r.deleted as i64, prev_kvs: r.prev_kvs.into_iter().map(kv_out).collect() }
}

/// What an op's answer needs besides the store's: a read's post-processing, a nested txn's
/// for each of its branches.
#[derive(Default)]
enum OpPost {
    #[default]
    None,
    Range(Post),
    Txn { success: Vec<OpPost>, failure: Vec<OpPost> },
}

/// A txn's ops in the store's terms, with the reads' post-processing.
fn ops_in(ctx: &Ctx, ops: Vec<pb::RequestOp>) -> Result<(Vec<storage::TxnOp>, Vec<OpPost>), Status> {
    let mut out = Vec::with_capacity(ops.len());
    let mut posts = Vec::with_capacity(ops.len());
    for op in ops {
        match op.request {
            Some(request_op::Request::RequestRange(r)) => {
                let (req, post) = range_in(&r)?;
                out.push(storage::TxnOp::Range(req));
                posts.push(OpPost::Range(post));
            }
            Some(request_op::Request::RequestPut(p)) => {
                if p.ignore_value || p.ignore_lease {
                    return Err(errors::unsupported("ignore_value or ignore_lease inside a txn"));
                }
                out.push(storage::TxnOp::Put(put_in(ctx, p)?));
                posts.push(OpPost::None);
            }
            Some(request_op::Request::RequestDeleteRange(d)) => {
                out.push(storage::TxnOp::Delete(delete_in(d)?));
                posts.push(OpPost::None);
            }
            Some(request_op::Request::RequestTxn(t)) => {
                let max = ctx.limits.txn_ops;
                if t.compare.len() > max || t.success.len() > max || t.failure.len() > max {
                    return Err(errors::too_many_ops());
                }
                let compare = t.compare.into_iter().map(compare_in).collect::<Result<Vec<_>, _>>()?;
                let (success, success_posts) = ops_in(ctx, t.success)?;
                let (failure, failure_posts) = ops_in(ctx, t.failure)?;
                out.push(storage::TxnOp::Txn(Box::new(storage::TxnRequest { compare, success, failure })));
                posts.push(OpPost::Txn { success: success_posts, failure: failure_posts });
            }
            None => return Err(Status::invalid_argument("etcdserver: a txn op names no request")),
        }
    }
    Ok((out, posts))
}

/// The store's answers to a txn's ops as etcd's, with their post-processing.
fn responses_out(ctx: &Ctx, responses: Vec<storage::TxnOpResponse>, posts: Vec<OpPost>) -> Vec<pb::ResponseOp> {
    let mut posts = posts.into_iter();
    responses
        .into_iter()
        .map(|r| {
            let post = posts.next().unwrap_or_default();
            pb::ResponseOp {
                response: Some(match r {
                    storage::TxnOpResponse::Range(r) => {
                        let p = if let OpPost::Range(p) = post { p } else { Post::default() };
                        response_op::Response::ResponseRange(range_out(ctx, r, &p))
                    }
                    storage::TxnOpResponse::Put(p) => response_op::Response::ResponsePut(pb::PutResponse { header: ctx.header(p.revision), prev_kv: p.prev_kv.map(kv_out) }),
                    storage::TxnOpResponse::Delete(d) => response_op::Response::ResponseDeleteRange(delete_out(ctx, d)),
                    storage::TxnOpResponse::Txn(t) => {
                        let branch = match post {
                            OpPost::Txn { success, failure } => {
                                if t.succeeded {
                                    success
                                } else {
                                    failure
                                }
                            }
                            _ => Vec::new(),
                        };
                        response_op::Response::ResponseTxn(pb::TxnResponse { header: ctx.header(t.revision), succeeded: t.succeeded, responses: responses_out(ctx, t.responses, branch) })
                    }
                }),
            }
        })
        .collect()
}

/// A compare in the store's terms.
fn compare_in(c: pb::Compare) -> Result<storage::Compare, Status> {
    if c.key.is_empty() {
        return Err(errors::empty_key());
    }
    // A range: every key of [key, range_end) must hold (`\0`: every key from `key` on).
    let range_end = match c.range_end.as_slice() {
        [] => None,
        [0] => Some(Bytes::new()),
        end => Some(Bytes::copy_from_slice(end)),
    };
    use compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let op = match R::try_from(c.result).map_err(|_| Status::invalid_argument("etcdserver: unknown compare result"))? {
        R::Equal => storage::CompareOp::Equal,
        R::NotEqual => storage::CompareOp::NotEqual,
        R::Greater => storage::CompareOp::Greater,
        R::Less => storage::CompareOp::Less,
    };
    let num = |u: &Option<U>| -> i64 {
        match u {
            Some(U::Version(v) | U::CreateRevision(v) | U::ModRevision(v) | U::Lease(v)) => *v,
            _ => 0,
        }
    };
    let key: Bytes = c.key.into();
    let target = match T::try_from(c.target).map_err(|_| Status::invalid_argument("etcdserver: unknown compare target"))? {
        T::Version => storage::CompareTarget::Version(num(&c.target_union).max(0) as u64),
        T::Create => storage::CompareTarget::CreateRevision(num(&c.target_union).max(0) as u64),
        T::Mod => storage::CompareTarget::ModRevision(num(&c.target_union).max(0) as u64),
        T::Value => storage::CompareTarget::Value(match c.target_union {
            Some(U::Value(v)) => v.into(),
            _ => Bytes::new(),
        }),
        T::Lease => storage::CompareTarget::Lease(num(&c.target_union)),
    };
    Ok(storage::Compare { key, op, target, range_end })
}

async fn txn(ctx: &Ctx, t: pb::TxnRequest) -> Result<pb::TxnResponse, Status> {
    let max = ctx.limits.txn_ops;
    if t.compare.len() > max || t.success.len() > max || t.failure.len() > max {
        return Err(errors::too_many_ops());
    }
    let compare = t.compare.into_iter().map(compare_in).collect::<Result<Vec<_>, _>>()?;
    let (success, success_posts) = ops_in(ctx, t.success)?;
    let (failure, failure_posts) = ops_in(ctx, t.failure)?;
    let resp = ctx.store.txn(storage::TxnRequest { compare, success, failure }).await.map_err(|e| ctx.noted(e))?;
    let succeeded = resp.succeeded;
    let posts = if succeeded { success_posts } else { failure_posts };
    let responses = responses_out(ctx, resp.responses, posts);
    Ok(pb::TxnResponse { header: ctx.header(resp.revision), succeeded, responses })
}

async fn compact(ctx: &Ctx, c: pb::CompactionRequest) -> Result<pb::CompactionResponse, Status> {
    // The cluster's revision (a follower that lags must not call a valid one future).
    let current = ctx.store.consistent_revision().await.map_err(errors::store)?;
    if c.revision <= 0 || c.revision as u64 > current {
        return Err(errors::future_revision());
    }
    if (c.revision as u64) <= ctx.store.compact_revision() {
        return Err(errors::compacted());
    }
    ctx.store.compact(c.revision as u64).await.map_err(errors::store)?;
    Ok(pb::CompactionResponse { header: ctx.header_now() })
}

#[tonic::async_trait]
impl pb::kv_server::Kv for Kv {
    async fn range(&self, r: Request<pb::RangeRequest>) -> Result<Response<pb::RangeResponse>, Status> {
        range(&self.0, r.into_inner()).await.map(Response::new)
    }

    async fn put(&self, r: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let r = r.into_inner();
        self.0.check_size(prost::Message::encoded_len(&r))?;
        put(&self.0, r).await.map(Response::new)
    }

    async fn delete_range(&self, r: Request<pb::DeleteRangeRequest>) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let req = delete_in(r.into_inner())?;
        let resp = self.0.store.delete(req).await.map_err(|e| self.0.noted(e))?;
        Ok(Response::new(delete_out(&self.0, resp)))
    }

    async fn txn(&self, r: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let r = r.into_inner();
        self.0.check_size(prost::Message::encoded_len(&r))?;
        txn(&self.0, r).await.map(Response::new)
    }

    async fn compact(&self, r: Request<pb::CompactionRequest>) -> Result<Response<pb::CompactionResponse>, Status> {
        compact(&self.0, r.into_inner()).await.map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, create: u64, m: u64, version: u64) -> storage::KeyValue {
        storage::KeyValue { key: Bytes::copy_from_slice(key.as_bytes()), value: Bytes::copy_from_slice(value.as_bytes()), create_revision: create, mod_revision: m, version, lease: 0 }
    }

    fn post(r: pb::RangeRequest) -> Post {
        range_in(&r).unwrap().1
    }

    /// What a read of three keys gives after `arrange`, as keys.
    fn sorted(p: &Post) -> Vec<String> {
        let kvs = vec![kv("a", "3", 2, 9, 1), kv("b", "1", 3, 4, 5), kv("c", "2", 1, 7, 2)];
        arrange(kvs, false, p).0.iter().map(|kv| String::from_utf8(kv.key.to_vec()).unwrap()).collect()
    }

    #[test]
    fn sorting_follows_etcd_defaults() {
        let base = pb::RangeRequest { key: b"a".to_vec(), range_end: vec![0], ..Default::default() };
        assert_eq!(sorted(&post(base.clone())), ["a", "b", "c"], "no order: key order");
        let by_mod = pb::RangeRequest { sort_target: range_request::SortTarget::Mod as i32, ..base.clone() };
        assert_eq!(sorted(&post(by_mod.clone())), ["b", "c", "a"], "a target without an order ascends");
        let desc = pb::RangeRequest { sort_order: range_request::SortOrder::Descend as i32, ..by_mod };
        assert_eq!(sorted(&post(desc)), ["a", "c", "b"]);
        let by_value = pb::RangeRequest { sort_target: range_request::SortTarget::Value as i32, keys_only: true, ..base.clone() };
        let (req, p) = range_in(&by_value).unwrap();
        assert!(!req.keys_only, "values are read to sort by them");
        assert_eq!(sorted(&p), ["b", "c", "a"]);
        let key_desc = pb::RangeRequest { sort_order: range_request::SortOrder::Descend as i32, limit: 2, ..base.clone() };
        let (req, p) = range_in(&key_desc).unwrap();
        assert_eq!(req.limit, 0, "sorted reads are cut after sorting");
        assert_eq!(sorted(&p), ["c", "b"]);
        let kvs = vec![kv("a", "3", 2, 9, 1), kv("b", "1", 3, 4, 5), kv("c", "2", 1, 7, 2)];
        assert!(arrange(kvs, false, &p).1, "a cut says more");
        // The filters: mod revisions from 5 up, created at 2 or before.
        let filtered = pb::RangeRequest { min_mod_revision: 5, max_create_revision: 2, ..base };
        assert_eq!(sorted(&post(filtered)), ["a", "c"]);
    }

    #[test]
    fn compares_map_to_the_store() {
        let c = pb::Compare { key: b"k".to_vec(), target: compare::CompareTarget::Mod as i32, result: compare::CompareResult::Less as i32, target_union: Some(compare::TargetUnion::ModRevision(5)), range_end: vec![] };
        let s = compare_in(c).unwrap();
        assert_eq!((s.op, s.target), (storage::CompareOp::Less, storage::CompareTarget::ModRevision(5)));
        let l = pb::Compare { key: b"k".to_vec(), target: compare::CompareTarget::Lease as i32, result: compare::CompareResult::Equal as i32, target_union: Some(compare::TargetUnion::Lease(7)), range_end: vec![] };
        assert_eq!(compare_in(l).unwrap().target, storage::CompareTarget::Lease(7));
        let ranged = pb::Compare { key: b"k".to_vec(), range_end: b"l".to_vec(), ..Default::default() };
        assert!(matches!(compare_in(ranged).unwrap(), storage::Compare { range_end: Some(ref e), .. } if e.as_ref() == b"l"));
        let from = pb::Compare { key: b"k".to_vec(), range_end: vec![0], ..Default::default() };
        assert!(matches!(compare_in(from).unwrap(), storage::Compare { range_end: Some(ref e), .. } if e.is_empty()), "\\0: to the end");
        let lease_range = pb::Compare { key: b"k".to_vec(), range_end: b"l".to_vec(), target: compare::CompareTarget::Lease as i32, target_union: Some(compare::TargetUnion::Lease(9)), ..Default::default() };
        assert!(matches!(compare_in(lease_range).unwrap(), storage::Compare { target: storage::CompareTarget::Lease(9), range_end: Some(_), .. }));
    }
}
