//! What a replicated store's log carries: the client's *requests* (txns with their compares,
//! lease grants and revocations, compactions), not their effects. Every replica evaluates them
//! in log order against the same state, so every replica assigns the same revisions and gives
//! the same answers (`DESIGN.md`, "Replicated mode").
//!
//! The encoding is a plain little-endian binary format, versioned by its first byte. Decoding
//! is total: any byte string either decodes or gives an error naming what is wrong; lengths
//! and counts are checked against the bytes that remain before anything is allocated, so a
//! hostile or damaged buffer cannot make the decoder allocate more than the buffer's size.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::StoreError;
use crate::types::*;

/// One request to a replicated store, as its log carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Txn(TxnRequest),
    /// `id` is never 0 here: the proposer picks one before the command enters the log.
    LeaseGrant { id: LeaseId, ttl_seconds: i64 },
    LeaseRevoke { id: LeaseId },
    Compact { revision: Revision },
}

/// What applying one command answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    Txn(Result<TxnResponse, StoreError>),
    LeaseGrant(Result<LeaseGrant, StoreError>),
    LeaseRevoke(Result<Revision, StoreError>),
    Compact(Result<(), StoreError>),
}

impl Applied {
    /// The error, if the command failed.
    pub fn error(&self) -> Option<&StoreError> {
        match self {
            Applied::Txn(Err(e)) | Applied::LeaseGrant(Err(e)) | Applied::LeaseRevoke(Err(e)) | Applied::Compact(Err(e)) => Some(e),
            _ => None,
        }
    }
}

const FORMAT: u8 = 1;

/// Largest count of anything (commands, ops, keys) a decoder accepts before reading it.
const COUNT_MAX: usize = 1 << 24;

// ---------------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------------

fn bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u32_le(b.len() as u32);
    out.put_slice(b);
}

fn range(out: &mut BytesMut, r: &KeyRange) {
    match r {
        KeyRange::Key(k) => {
            out.put_u8(0);
            bytes(out, k);
        }
        KeyRange::Prefix(p) => {
            out.put_u8(1);
            bytes(out, p);
        }
        KeyRange::Range { start, end } => {
            out.put_u8(2);
            bytes(out, start);
            bytes(out, end);
        }
    }
}

fn range_request(out: &mut BytesMut, r: &RangeRequest) {
    range(out, &r.range);
    out.put_u64_le(r.revision.map_or(u64::MAX, |v| v));
    out.put_u64_le(r.limit as u64);
    out.put_u8(r.count_only as u8 | (r.keys_only as u8) << 1);
}

fn ops(out: &mut BytesMut, ops: &[TxnOp]) {
    out.put_u32_le(ops.len() as u32);
    for op in ops {
        match op {
            TxnOp::Range(r) => {
                out.put_u8(0);
                range_request(out, r);
            }
            TxnOp::Put(p) => {
                out.put_u8(1);
                bytes(out, &p.key);
                bytes(out, &p.value);
                out.put_i64_le(p.lease);
                out.put_u8(p.prev_kv as u8);
            }
            TxnOp::Delete(d) => {
                out.put_u8(2);
                range(out, &d.range);
                out.put_u8(d.prev_kv as u8);
            }
            TxnOp::Txn(t) => {
                out.put_u8(3);
                txn(out, t);
            }
        }
    }
}

/// How deep txns may nest in a log entry or a result (a hostile entry must not overflow the
/// reader's stack); etcd's clients nest one or two deep.
pub const NESTING_MAX: usize = 16;

fn txn(out: &mut BytesMut, t: &TxnRequest) {
    out.put_u32_le(t.compare.len() as u32);
    for c in &t.compare {
        bytes(out, &c.key);
        out.put_u8(match c.op {
            CompareOp::Equal => 0,
            CompareOp::NotEqual => 1,
            CompareOp::Less => 2,
            CompareOp::Greater => 3,
        });
        // A compare over a range sets the target's bit 3, then gives its end after the target
        // (single-key compares encode as before this existed).
        let ranged = if c.range_end.is_some() { 8 } else { 0 };
        match &c.target {
            CompareTarget::ModRevision(r) => {
                out.put_u8(ranged);
                out.put_u64_le(*r);
            }
            CompareTarget::CreateRevision(r) => {
                out.put_u8(1 | ranged);
                out.put_u64_le(*r);
            }
            CompareTarget::Version(v) => {
                out.put_u8(2 | ranged);
                out.put_u64_le(*v);
            }
            CompareTarget::Value(v) => {
                out.put_u8(3 | ranged);
                bytes(out, v);
            }
            CompareTarget::Lease(l) => {
                out.put_u8(4 | ranged);
                out.put_i64_le(*l);
            }
        }
        if let Some(end) = &c.range_end {
            bytes(out, end);
        }
    }
    ops(out, &t.success);
    ops(out, &t.failure);
}

impl Command {
    /// Bytes this command adds to a batch (an estimate that is never below the real size by
    /// more than a few bytes per op: batches are cut by it).
    pub fn encoded_len_hint(&self) -> usize {
        match self {
            Command::Txn(t) => {
                fn txn_len(t: &TxnRequest) -> usize {
                    let op_len = |op: &TxnOp| match op {
                        TxnOp::Put(p) => 18 + p.key.len() + p.value.len(),
                        TxnOp::Delete(d) => 10 + d.range.start().len() * 2,
                        TxnOp::Range(r) => 30 + r.range.start().len() * 2,
                        TxnOp::Txn(t) => 1 + txn_len(t),
                    };
                    16 + t.compare.iter().map(|c| 22 + c.key.len() + c.range_end.as_ref().map_or(0, |e| e.len())).sum::<usize>()
                        + t.success.iter().chain(&t.failure).map(op_len).sum::<usize>()
                }
                txn_len(t)
            }
            _ => 17,
        }
    }

    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Command::Txn(t) => {
                out.put_u8(1);
                txn(out, t);
            }
            Command::LeaseGrant { id, ttl_seconds } => {
                out.put_u8(2);
                out.put_i64_le(*id);
                out.put_i64_le(*ttl_seconds);
            }
            Command::LeaseRevoke { id } => {
                out.put_u8(3);
                out.put_i64_le(*id);
            }
            Command::Compact { revision } => {
                out.put_u8(4);
                out.put_u64_le(*revision);
            }
        }
    }
}

/// Encodes a batch of commands: what one raft entry carries.
pub fn encode_batch(cmds: &[Command]) -> Bytes {
    let mut out = BytesMut::with_capacity(8 + cmds.iter().map(|c| c.encoded_len_hint()).sum::<usize>());
    out.put_u8(FORMAT);
    out.put_u32_le(cmds.len() as u32);
    for c in cmds {
        c.encode(&mut out);
    }
    out.freeze()
}

/// A batch being built command by command (the proposer's buffer).
pub struct BatchBuilder {
    buf: BytesMut,
    count: u32,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchBuilder {
    pub fn new() -> Self {
        Self::with_capacity(64 << 10)
    }
    /// A builder whose buffer holds `bytes` without growing (`Command::encoded_len_hint`).
    pub fn with_capacity(bytes: usize) -> Self {
        let mut buf = BytesMut::with_capacity(bytes.max(8));
        buf.put_u8(FORMAT);
        buf.put_u32_le(0);
        BatchBuilder { buf, count: 0 }
    }
    pub fn push(&mut self, c: &Command) {
        c.encode(&mut self.buf);
        self.count += 1;
    }
    pub fn len(&self) -> usize {
        self.count as usize
    }
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }
    /// The encoded batch; the builder is empty afterwards.
    pub fn take(&mut self) -> Bytes {
        self.buf[1..5].copy_from_slice(&self.count.to_le_bytes());
        let out = std::mem::replace(&mut self.buf, BytesMut::with_capacity(64 << 10)).freeze();
        self.buf.put_u8(FORMAT);
        self.buf.put_u32_le(0);
        self.count = 0;
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Reader
// ---------------------------------------------------------------------------------------------

/// A bounds-checked cursor over an encoded buffer. Byte strings are slices of the buffer.
pub struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a Bytes) -> Self {
        Reader { buf, pos: 0 }
    }
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub fn at_end(&self) -> bool {
        self.pos == self.buf.len()
    }
    fn take(&mut self, n: usize) -> Result<std::ops::Range<usize>, String> {
        if self.remaining() < n {
            return Err(format!("truncated at byte {} (wanted {n} more)", self.pos));
        }
        let r = self.pos..self.pos + n;
        self.pos += n;
        Ok(r)
    }
    pub fn u8(&mut self) -> Result<u8, String> {
        Ok(self.buf[self.take(1)?.start])
    }
    pub fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.buf[self.take(4)?].try_into().unwrap()))
    }
    pub fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.buf[self.take(8)?].try_into().unwrap()))
    }
    pub fn i64(&mut self) -> Result<i64, String> {
        Ok(self.u64()? as i64)
    }
    pub fn bool(&mut self) -> Result<bool, String> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(format!("byte {b} is not a boolean")),
        }
    }
    pub fn bytes(&mut self) -> Result<Bytes, String> {
        let n = self.u32()? as usize;
        Ok(self.buf.slice(self.take(n)?))
    }
    pub fn string(&mut self) -> Result<String, String> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| "string is not UTF-8".to_string())
    }
    /// A count of items each at least `min_item_bytes` long: refused if the rest of the buffer
    /// could not hold them.
    pub fn count(&mut self, min_item_bytes: usize) -> Result<usize, String> {
        let n = self.u32()? as usize;
        if n > COUNT_MAX || n.saturating_mul(min_item_bytes.max(1)) > self.remaining() {
            return Err(format!("count {n} is impossible with {} bytes left", self.remaining()));
        }
        Ok(n)
    }
}

fn read_range(r: &mut Reader) -> Result<KeyRange, String> {
    Ok(match r.u8()? {
        0 => KeyRange::Key(r.bytes()?),
        1 => KeyRange::Prefix(r.bytes()?),
        2 => KeyRange::Range { start: r.bytes()?, end: r.bytes()? },
        t => return Err(format!("unknown key range type {t}")),
    })
}

fn read_range_request(r: &mut Reader) -> Result<RangeRequest, String> {
    let range = read_range(r)?;
    let revision = match r.u64()? {
        u64::MAX => None,
        v => Some(v),
    };
    let limit = r.u64()? as usize;
    let flags = r.u8()?;
    if flags > 3 {
        return Err(format!("unknown range flags {flags}"));
    }
    Ok(RangeRequest { range, revision, limit, count_only: flags & 1 != 0, keys_only: flags & 2 != 0 })
}

fn read_ops(r: &mut Reader, depth: usize) -> Result<Vec<TxnOp>, String> {
    let n = r.count(6)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(match r.u8()? {
            0 => TxnOp::Range(read_range_request(r)?),
            1 => TxnOp::Put(PutRequest { key: r.bytes()?, value: r.bytes()?, lease: r.i64()?, prev_kv: r.bool()? }),
            2 => TxnOp::Delete(DeleteRequest { range: read_range(r)?, prev_kv: r.bool()? }),
            3 => TxnOp::Txn(Box::new(read_txn_at(r, depth + 1)?)),
            t => return Err(format!("unknown txn op {t}")),
        });
    }
    Ok(out)
}

fn read_txn(r: &mut Reader) -> Result<TxnRequest, String> {
    read_txn_at(r, 0)
}

fn read_txn_at(r: &mut Reader, depth: usize) -> Result<TxnRequest, String> {
    if depth > NESTING_MAX {
        return Err(format!("txns nested deeper than {NESTING_MAX}"));
    }
    let n = r.count(14)?;
    let mut compare = Vec::with_capacity(n);
    for _ in 0..n {
        let key = r.bytes()?;
        let op = match r.u8()? {
            0 => CompareOp::Equal,
            1 => CompareOp::NotEqual,
            2 => CompareOp::Less,
            3 => CompareOp::Greater,
            o => return Err(format!("unknown compare op {o}")),
        };
        let tag = r.u8()?;
        let target = match tag & !8 {
            0 => CompareTarget::ModRevision(r.u64()?),
            1 => CompareTarget::CreateRevision(r.u64()?),
            2 => CompareTarget::Version(r.u64()?),
            3 => CompareTarget::Value(r.bytes()?),
            4 => CompareTarget::Lease(r.i64()?),
            _ => return Err(format!("unknown compare target {tag}")),
        };
        let range_end = if tag & 8 != 0 { Some(r.bytes()?) } else { None };
        compare.push(Compare { key, op, target, range_end });
    }
    Ok(TxnRequest { compare, success: read_ops(r, depth)?, failure: read_ops(r, depth)? })
}

impl Command {
    pub fn decode(r: &mut Reader) -> Result<Command, String> {
        Ok(match r.u8()? {
            1 => Command::Txn(read_txn(r)?),
            2 => Command::LeaseGrant { id: r.i64()?, ttl_seconds: r.i64()? },
            3 => Command::LeaseRevoke { id: r.i64()? },
            4 => Command::Compact { revision: r.u64()? },
            t => return Err(format!("unknown command type {t}")),
        })
    }
}

/// Decodes a batch written by `encode_batch` or `BatchBuilder`.
pub fn decode_batch(buf: &Bytes) -> Result<Vec<Command>, String> {
    let mut r = Reader::new(buf);
    let v = r.u8()?;
    if v != FORMAT {
        return Err(format!("unknown command batch format {v} (this binary knows {FORMAT})"));
    }
    let n = r.count(9)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(Command::decode(&mut r)?);
    }
    if !r.at_end() {
        return Err(format!("{} trailing bytes after a command batch", r.remaining()));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Results (what a forwarded write answers)
// ---------------------------------------------------------------------------------------------

fn kv(out: &mut BytesMut, kv: &KeyValue) {
    bytes(out, &kv.key);
    bytes(out, &kv.value);
    out.put_u64_le(kv.create_revision);
    out.put_u64_le(kv.mod_revision);
    out.put_u64_le(kv.version);
    out.put_i64_le(kv.lease);
}

fn read_kv(r: &mut Reader) -> Result<KeyValue, String> {
    Ok(KeyValue {
        key: r.bytes()?,
        value: r.bytes()?,
        create_revision: r.u64()?,
        mod_revision: r.u64()?,
        version: r.u64()?,
        lease: r.i64()?,
    })
}

fn kvs(out: &mut BytesMut, v: &[KeyValue]) {
    out.put_u32_le(v.len() as u32);
    for k in v {
        kv(out, k);
    }
}

fn read_kvs(r: &mut Reader) -> Result<Vec<KeyValue>, String> {
    let n = r.count(40)?;
    (0..n).map(|_| read_kv(r)).collect()
}

fn opt_kv(out: &mut BytesMut, v: &Option<KeyValue>) {
    match v {
        Some(k) => {
            out.put_u8(1);
            kv(out, k);
        }
        None => out.put_u8(0),
    }
}

fn read_opt_kv(r: &mut Reader) -> Result<Option<KeyValue>, String> {
    Ok(if r.bool()? { Some(read_kv(r)?) } else { None })
}

/// Encodes a store error (every variant keeps its meaning across the wire).
pub fn encode_error(out: &mut BytesMut, e: &StoreError) {
    match e {
        StoreError::TooLarge { bytes: b, max } => {
            out.put_u8(1);
            out.put_u64_le(*b as u64);
            out.put_u64_le(*max as u64);
        }
        StoreError::Compacted { requested, compact_revision } => {
            out.put_u8(2);
            out.put_u64_le(*requested);
            out.put_u64_le(*compact_revision);
        }
        StoreError::FutureRevision { requested, current } => {
            out.put_u8(3);
            out.put_u64_le(*requested);
            out.put_u64_le(*current);
        }
        StoreError::LeaseNotFound(id) => {
            out.put_u8(4);
            out.put_i64_le(*id);
        }
        StoreError::LeaseExists(id) => {
            out.put_u8(5);
            out.put_i64_le(*id);
        }
        StoreError::Invalid(s) => {
            out.put_u8(6);
            bytes(out, s.as_bytes());
        }
        StoreError::NoSpace => out.put_u8(7),
        StoreError::Io(s) => {
            out.put_u8(8);
            bytes(out, s.as_bytes());
        }
        StoreError::Failed(s) => {
            out.put_u8(9);
            bytes(out, s.as_bytes());
        }
        StoreError::Shutdown => out.put_u8(10),
        StoreError::Unavailable(s) => {
            out.put_u8(11);
            bytes(out, s.as_bytes());
        }
        StoreError::NoQuorum(s) => {
            out.put_u8(12);
            bytes(out, s.as_bytes());
        }
    }
}

pub fn decode_error(r: &mut Reader) -> Result<StoreError, String> {
    Ok(match r.u8()? {
        1 => StoreError::TooLarge { bytes: r.u64()? as usize, max: r.u64()? as usize },
        2 => StoreError::Compacted { requested: r.u64()?, compact_revision: r.u64()? },
        3 => StoreError::FutureRevision { requested: r.u64()?, current: r.u64()? },
        4 => StoreError::LeaseNotFound(r.i64()?),
        5 => StoreError::LeaseExists(r.i64()?),
        6 => StoreError::Invalid(r.string()?),
        7 => StoreError::NoSpace,
        8 => StoreError::Io(r.string()?),
        9 => StoreError::Failed(r.string()?),
        10 => StoreError::Shutdown,
        11 => StoreError::Unavailable(r.string()?),
        12 => StoreError::NoQuorum(r.string()?),
        t => return Err(format!("unknown store error {t}")),
    })
}

fn txn_response(out: &mut BytesMut, t: &TxnResponse) {
    out.put_u64_le(t.revision);
    out.put_u8(t.succeeded as u8);
    out.put_u32_le(t.responses.len() as u32);
    for r in &t.responses {
        match r {
            TxnOpResponse::Range(rr) => {
                out.put_u8(0);
                out.put_u64_le(rr.revision);
                kvs(out, &rr.kvs);
                out.put_u8(rr.more as u8);
                out.put_u64_le(rr.count as u64);
            }
            TxnOpResponse::Put(p) => {
                out.put_u8(1);
                out.put_u64_le(p.revision);
                opt_kv(out, &p.prev_kv);
            }
            TxnOpResponse::Delete(d) => {
                out.put_u8(2);
                out.put_u64_le(d.revision);
                out.put_u64_le(d.deleted as u64);
                kvs(out, &d.prev_kvs);
            }
            TxnOpResponse::Txn(t) => {
                out.put_u8(3);
                txn_response(out, t);
            }
        }
    }
}

fn read_txn_response(r: &mut Reader) -> Result<TxnResponse, String> {
    read_txn_response_at(r, 0)
}

fn read_txn_response_at(r: &mut Reader, depth: usize) -> Result<TxnResponse, String> {
    if depth > NESTING_MAX {
        return Err(format!("txn responses nested deeper than {NESTING_MAX}"));
    }
    let revision = r.u64()?;
    let succeeded = r.bool()?;
    let n = r.count(9)?;
    let mut responses = Vec::with_capacity(n);
    for _ in 0..n {
        responses.push(match r.u8()? {
            0 => TxnOpResponse::Range(RangeResponse { revision: r.u64()?, kvs: read_kvs(r)?, more: r.bool()?, count: r.u64()? as usize }),
            1 => TxnOpResponse::Put(PutResponse { revision: r.u64()?, prev_kv: read_opt_kv(r)? }),
            2 => TxnOpResponse::Delete(DeleteResponse { revision: r.u64()?, deleted: r.u64()? as usize, prev_kvs: read_kvs(r)? }),
            3 => TxnOpResponse::Txn(read_txn_response_at(r, depth + 1)?),
            t => return Err(format!("unknown txn op response {t}")),
        });
    }
    Ok(TxnResponse { revision, succeeded, responses })
}

fn result<T>(out: &mut BytesMut, r: &Result<T, StoreError>, ok: impl FnOnce(&mut BytesMut, &T)) {
    match r {
        Ok(v) => {
            out.put_u8(0);
            ok(out, v);
        }
        Err(e) => {
            out.put_u8(1);
            encode_error(out, e);
        }
    }
}

fn read_result<T>(r: &mut Reader, ok: impl FnOnce(&mut Reader) -> Result<T, String>) -> Result<Result<T, StoreError>, String> {
    Ok(match r.u8()? {
        0 => Ok(ok(r)?),
        1 => Err(decode_error(r)?),
        t => return Err(format!("unknown result tag {t}")),
    })
}

impl Applied {
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Applied::Txn(r) => {
                out.put_u8(1);
                result(out, r, txn_response);
            }
            Applied::LeaseGrant(r) => {
                out.put_u8(2);
                result(out, r, |o, g| {
                    o.put_i64_le(g.id);
                    o.put_i64_le(g.ttl_seconds);
                });
            }
            Applied::LeaseRevoke(r) => {
                out.put_u8(3);
                result(out, r, |o, rev| o.put_u64_le(*rev));
            }
            Applied::Compact(r) => {
                out.put_u8(4);
                result(out, r, |_, ()| {});
            }
        }
    }

    pub fn decode(r: &mut Reader) -> Result<Applied, String> {
        Ok(match r.u8()? {
            1 => Applied::Txn(read_result(r, read_txn_response)?),
            2 => Applied::LeaseGrant(read_result(r, |r| Ok(LeaseGrant { id: r.i64()?, ttl_seconds: r.i64()? }))?),
            3 => Applied::LeaseRevoke(read_result(r, |r| r.u64())?),
            4 => Applied::Compact(read_result(r, |_| Ok(()))?),
            t => return Err(format!("unknown applied type {t}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn sample() -> Vec<Command> {
        vec![
            Command::Txn(TxnRequest {
                compare: vec![
                    Compare { key: b("k"), op: CompareOp::Equal, target: CompareTarget::ModRevision(7), range_end: None },
                    Compare { key: b("v"), op: CompareOp::Greater, target: CompareTarget::Value(b("x")), range_end: None },
                    Compare { key: b("a"), op: CompareOp::Less, target: CompareTarget::Version(3), range_end: Some(b("b")) },
                    Compare { key: b("a"), op: CompareOp::Equal, target: CompareTarget::Value(b("y")), range_end: Some(Bytes::new()) },
                    Compare { key: b("l"), op: CompareOp::NotEqual, target: CompareTarget::Lease(0x7fff_0000_0000_0001), range_end: Some(b("m")) },
                ],
                success: vec![
                    TxnOp::Put(PutRequest { key: b("k"), value: b("val"), lease: 3, prev_kv: true }),
                    TxnOp::Delete(DeleteRequest { range: KeyRange::Prefix(b("p/")), prev_kv: false }),
                    TxnOp::Txn(Box::new(TxnRequest {
                        compare: vec![Compare::key(b("n"), CompareOp::Equal, CompareTarget::CreateRevision(0))],
                        success: vec![TxnOp::Put(PutRequest { key: b("n"), value: b("1"), lease: 0, prev_kv: false })],
                        failure: vec![TxnOp::Txn(Box::default())],
                    })),
                ],
                failure: vec![TxnOp::Range(RangeRequest {
                    range: KeyRange::Range { start: b("a"), end: b("") },
                    revision: Some(4),
                    limit: 10,
                    count_only: false,
                    keys_only: true,
                })],
            }),
            Command::LeaseGrant { id: 9, ttl_seconds: 30 },
            Command::LeaseRevoke { id: 9 },
            Command::Compact { revision: 100 },
        ]
    }

    #[test]
    fn batches_round_trip_and_the_builder_writes_the_same_bytes() {
        let cmds = sample();
        let enc = encode_batch(&cmds);
        assert_eq!(decode_batch(&enc).unwrap(), cmds);
        let mut bb = BatchBuilder::new();
        for c in &cmds {
            bb.push(c);
        }
        assert_eq!(bb.take(), enc);
        assert!(bb.is_empty());
        assert_eq!(decode_batch(&bb.take()).unwrap(), vec![]);
    }

    #[test]
    fn every_truncation_and_a_wrong_format_is_an_error_not_a_panic() {
        let enc = encode_batch(&sample());
        for n in 0..enc.len() {
            assert!(decode_batch(&enc.slice(..n)).is_err(), "a batch cut at {n} bytes decoded");
        }
        let mut bad = enc.to_vec();
        bad[0] = 9;
        assert!(decode_batch(&Bytes::from(bad)).unwrap_err().contains("format 9"));
        let mut long = enc.to_vec();
        long.push(0);
        assert!(decode_batch(&Bytes::from(long)).is_err());
    }

    #[test]
    fn txns_nested_too_deep_are_refused_not_recursed_into() {
        let mut t = TxnRequest::default();
        for _ in 0..NESTING_MAX {
            t = TxnRequest { success: vec![TxnOp::Txn(Box::new(t))], ..Default::default() };
        }
        let ok = encode_batch(&[Command::Txn(t.clone())]);
        assert_eq!(decode_batch(&ok).unwrap(), vec![Command::Txn(t.clone())], "as deep as allowed");
        let deeper = TxnRequest { success: vec![TxnOp::Txn(Box::new(t))], ..Default::default() };
        let e = decode_batch(&encode_batch(&[Command::Txn(deeper)])).unwrap_err();
        assert!(e.contains("nested deeper"), "{e}");
    }

    #[test]
    fn a_huge_count_is_refused_before_allocating() {
        let mut buf = BytesMut::new();
        buf.put_u8(FORMAT);
        buf.put_u32_le(u32::MAX);
        let e = decode_batch(&buf.freeze()).unwrap_err();
        assert!(e.contains("impossible"), "{e}");
    }

    #[test]
    fn results_round_trip_with_every_error() {
        let kv = KeyValue { key: b("k"), value: b("v"), create_revision: 1, mod_revision: 2, version: 3, lease: 4 };
        let mut all = vec![
            Applied::Txn(Ok(TxnResponse {
                revision: 5,
                succeeded: false,
                responses: vec![
                    TxnOpResponse::Range(RangeResponse { revision: 5, kvs: vec![kv.clone()], more: true, count: 9 }),
                    TxnOpResponse::Put(PutResponse { revision: 5, prev_kv: Some(kv.clone()) }),
                    TxnOpResponse::Delete(DeleteResponse { revision: 5, deleted: 1, prev_kvs: vec![kv.clone()] }),
                    TxnOpResponse::Txn(TxnResponse { revision: 5, succeeded: true, responses: vec![TxnOpResponse::Delete(DeleteResponse { revision: 5, deleted: 1, prev_kvs: vec![kv] })] }),
                ],
            })),
            Applied::LeaseGrant(Ok(LeaseGrant { id: 1, ttl_seconds: 2 })),
            Applied::LeaseRevoke(Ok(8)),
            Applied::Compact(Ok(())),
        ];
        for e in [
            StoreError::TooLarge { bytes: 1, max: 2 },
            StoreError::Compacted { requested: 1, compact_revision: 2 },
            StoreError::FutureRevision { requested: 1, current: 2 },
            StoreError::LeaseNotFound(1),
            StoreError::LeaseExists(2),
            StoreError::Invalid("i".into()),
            StoreError::NoSpace,
            StoreError::Io("io".into()),
            StoreError::Failed("f".into()),
            StoreError::Shutdown,
            StoreError::Unavailable("u".into()),
            StoreError::NoQuorum("q".into()),
        ] {
            all.push(Applied::Txn(Err(e)));
        }
        for a in all {
            let mut out = BytesMut::new();
            a.encode(&mut out);
            let buf = out.freeze();
            let mut r = Reader::new(&buf);
            assert_eq!(Applied::decode(&mut r).unwrap(), a);
            assert!(r.at_end());
        }
    }
}
