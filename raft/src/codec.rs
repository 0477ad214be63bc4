//! The binary encodings of raft's messages and log records, on the disk and on the wire.
//!
//! Little-endian, length-prefixed, decoded through `storage::command::Reader` (every length
//! and count checked against what remains, so a damaged or hostile buffer is an error, never
//! a panic or an allocation larger than itself). An entry always travels with the crc32c of
//! its bytes, computed once where it is first encoded: a follower refuses an entry whose
//! checksum does not match, and the log store checks it again when it reads an entry back.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{BufMut, Bytes, BytesMut};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, StreamAppendError, StreamAppendResult, VoteRequest, VoteResponse};
use openraft::raft::{TransferLeaderRequest, TransferLeaderResponse};
use openraft::{EntryPayload, LogId as OLogId};
use storage::command::Reader;

use crate::types::*;

pub type DecodeResult<T> = Result<T, String>;

pub fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u32_le(b.len() as u32);
    out.put_slice(b);
}

pub fn put_str(out: &mut BytesMut, s: &str) {
    put_bytes(out, s.as_bytes());
}

pub fn log_id(out: &mut BytesMut, id: &LogId) {
    out.put_u64_le(id.leader_id.term);
    out.put_u64_le(id.leader_id.node_id);
    out.put_u64_le(id.index);
}

pub fn read_log_id(r: &mut Reader) -> DecodeResult<LogId> {
    let term = r.u64()?;
    let node_id = r.u64()?;
    let index = r.u64()?;
    Ok(OLogId::new(LeaderId { term, node_id }, index))
}

pub fn opt_log_id(out: &mut BytesMut, id: &Option<LogId>) {
    match id {
        Some(id) => {
            out.put_u8(1);
            log_id(out, id);
        }
        None => out.put_u8(0),
    }
}

pub fn read_opt_log_id(r: &mut Reader) -> DecodeResult<Option<LogId>> {
    Ok(if r.bool()? { Some(read_log_id(r)?) } else { None })
}

pub fn vote(out: &mut BytesMut, v: &Vote) {
    out.put_u64_le(v.leader_id.term);
    out.put_u64_le(v.leader_id.node_id);
    out.put_u8(v.committed as u8);
}

pub fn read_vote(r: &mut Reader) -> DecodeResult<Vote> {
    let term = r.u64()?;
    let node_id = r.u64()?;
    let committed = r.bool()?;
    Ok(Vote { leader_id: LeaderId { term, node_id }, committed })
}

/// A member: name, peer URL, and its API URL, followed (after a NUL, which no URL contains)
/// by its etcd client URL when it has one. The client URL came later: a member without one is
/// encoded byte for byte as before, and logs and snapshots written before it read unchanged.
pub fn member(out: &mut BytesMut, m: &Member) {
    put_str(out, &m.name);
    put_str(out, &m.peer_url);
    if m.client_url.is_empty() {
        put_str(out, &m.api_url);
    } else {
        put_str(out, &format!("{}\0{}", m.api_url, m.client_url));
    }
}

pub fn read_member(r: &mut Reader) -> DecodeResult<Member> {
    let (name, peer_url, urls) = (r.string()?, r.string()?, r.string()?);
    let (api_url, client_url) = match urls.split_once('\0') {
        Some((api, client)) => (api.to_string(), client.to_string()),
        None => (urls, String::new()),
    };
    Ok(Member { name, peer_url, api_url, client_url })
}

pub fn membership(out: &mut BytesMut, m: &Membership) {
    let configs = m.get_joint_config();
    out.put_u32_le(configs.len() as u32);
    for c in configs {
        out.put_u32_le(c.len() as u32);
        for id in c {
            out.put_u64_le(*id);
        }
    }
    let nodes: Vec<_> = m.nodes().collect();
    out.put_u32_le(nodes.len() as u32);
    for (id, n) in nodes {
        out.put_u64_le(*id);
        member(out, n);
    }
}

pub fn read_membership(r: &mut Reader) -> DecodeResult<Membership> {
    let n = r.count(4)?;
    let mut configs = Vec::with_capacity(n);
    for _ in 0..n {
        let k = r.count(8)?;
        let mut c = BTreeSet::new();
        for _ in 0..k {
            c.insert(r.u64()?);
        }
        configs.push(c);
    }
    let n = r.count(20)?;
    let mut nodes = BTreeMap::new();
    for _ in 0..n {
        let id = r.u64()?;
        nodes.insert(id, read_member(r)?);
    }
    Membership::new(configs, nodes).map_err(|e| format!("invalid membership: {e}"))
}

pub fn stored_membership(out: &mut BytesMut, m: &StoredMembership) {
    opt_log_id(out, m.log_id());
    membership(out, m.membership());
}

pub fn read_stored_membership(r: &mut Reader) -> DecodeResult<StoredMembership> {
    let id = read_opt_log_id(r)?;
    Ok(StoredMembership::new(id, read_membership(r)?))
}

/// An entry's head: its log id and payload type (and the payload's length when it has one).
/// The payload follows it.
const HEAD_BYTES: usize = 24 + 1 + 4;

fn entry_head(out: &mut BytesMut, e: &Entry) {
    log_id(out, &e.log_id);
    match &e.payload {
        EntryPayload::Blank => out.put_u8(0),
        EntryPayload::Normal(b) => {
            out.put_u8(1);
            out.put_u32_le(b.bytes.len() as u32);
        }
        EntryPayload::Membership(m) => {
            out.put_u8(2);
            membership(out, m);
        }
    }
}

/// `[crc32c u32][length u32][head][payload]`: how an entry travels and is stored, as parts —
/// the header (everything before the payload) and the payload, which is not copied. The
/// checksum covers head and payload; the payload's own is the batch's, computed once.
pub fn entry_parts(e: &Entry) -> (Bytes, Option<Bytes>) {
    let mut head = BytesMut::with_capacity(8 + HEAD_BYTES);
    head.put_u32_le(0);
    head.put_u32_le(0);
    entry_head(&mut head, e);
    let head_crc = crc32c::crc32c(&head[8..]);
    let (crc, payload) = match &e.payload {
        EntryPayload::Normal(b) => (crate::crc::combine(head_crc, b.crc, b.bytes.len()), Some(b.bytes.clone())),
        _ => (head_crc, None),
    };
    let len = (head.len() - 8 + payload.as_ref().map_or(0, |p| p.len())) as u32;
    head[0..4].copy_from_slice(&crc.to_le_bytes());
    head[4..8].copy_from_slice(&len.to_le_bytes());
    (head.freeze(), payload)
}

/// Writes a checksummed entry into `out` (a copy of its payload).
pub fn entry(out: &mut BytesMut, e: &Entry) {
    let (head, payload) = entry_parts(e);
    out.put_slice(&head);
    if let Some(p) = payload {
        out.put_slice(&p);
    }
}

/// Bytes `entry` writes.
pub fn entry_len(e: &Entry) -> usize {
    8 + HEAD_BYTES + match &e.payload {
        EntryPayload::Normal(b) => b.bytes.len(),
        EntryPayload::Membership(_) => 256,
        EntryPayload::Blank => 0,
    }
}

/// Reads a checksummed entry; a checksum mismatch is an error (the entry is corrupt).
pub fn read_entry(r: &mut Reader) -> DecodeResult<Entry> {
    let crc = r.u32()?;
    let body = r.bytes()?;
    let mut br = Reader::new(&body);
    let log_id = read_log_id(&mut br)?;
    let (payload, got) = match br.u8()? {
        0 => (EntryPayload::Blank, crc32c::crc32c(&body)),
        1 => {
            let p = br.bytes()?;
            let head_len = body.len() - p.len();
            let pcrc = crc32c::crc32c(&p);
            let got = crate::crc::combine(crc32c::crc32c(&body[..head_len]), pcrc, p.len());
            (EntryPayload::Normal(Batch { bytes: p, crc: pcrc }), got)
        }
        2 => (EntryPayload::Membership(read_membership(&mut br)?), crc32c::crc32c(&body)),
        t => return Err(format!("unknown entry payload type {t}")),
    };
    if got != crc {
        return Err("entry checksum mismatch (the entry is corrupt)".into());
    }
    if !br.at_end() {
        return Err("trailing bytes in an entry".into());
    }
    Ok(Entry { log_id, payload })
}

pub fn encode_entry(e: &Entry) -> Bytes {
    let mut out = BytesMut::with_capacity(entry_len(e));
    entry(&mut out, e);
    out.freeze()
}

pub fn decode_entry(buf: &Bytes) -> DecodeResult<Entry> {
    let mut r = Reader::new(buf);
    let e = read_entry(&mut r)?;
    if !r.at_end() {
        return Err("trailing bytes after an entry".into());
    }
    Ok(e)
}

pub fn payload_len(e: &Entry) -> usize {
    match &e.payload {
        EntryPayload::Normal(b) => b.bytes.len(),
        _ => 64,
    }
}

// ---------------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------------

pub fn append_request(out: &mut BytesMut, req: &AppendEntriesRequest<TypeConfig>) {
    for p in append_request_parts(req) {
        out.put_slice(&p);
    }
}

/// An AppendEntries as parts to send one after the other: small headers between the entries'
/// payloads, which are not copied (the same bytes go to every follower).
pub fn append_request_parts(req: &AppendEntriesRequest<TypeConfig>) -> Vec<Bytes> {
    let mut parts = Vec::with_capacity(2 + req.entries.len() * 2);
    let mut head = BytesMut::with_capacity(64);
    vote(&mut head, &req.vote);
    opt_log_id(&mut head, &req.prev_log_id);
    head.put_u32_le(req.entries.len() as u32);
    parts.push(head.freeze());
    for e in &req.entries {
        let (h, p) = entry_parts(e);
        parts.push(h);
        if let Some(p) = p {
            parts.push(p);
        }
    }
    let mut tail = BytesMut::with_capacity(32);
    opt_log_id(&mut tail, &req.leader_commit);
    parts.push(tail.freeze());
    parts
}

pub fn read_append_request(r: &mut Reader) -> DecodeResult<AppendEntriesRequest<TypeConfig>> {
    let v = read_vote(r)?;
    let prev_log_id = read_opt_log_id(r)?;
    let n = r.count(33)?;
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        entries.push(read_entry(r)?);
    }
    let leader_commit = read_opt_log_id(r)?;
    Ok(AppendEntriesRequest { vote: v, prev_log_id, entries, leader_commit })
}

pub fn append_response(out: &mut BytesMut, resp: &AppendEntriesResponse<TypeConfig>) {
    match resp {
        AppendEntriesResponse::Success => out.put_u8(0),
        AppendEntriesResponse::PartialSuccess(id) => {
            out.put_u8(1);
            opt_log_id(out, id);
        }
        AppendEntriesResponse::Conflict => out.put_u8(2),
        AppendEntriesResponse::HigherVote(v) => {
            out.put_u8(3);
            vote(out, v);
        }
    }
}

pub fn read_append_response(r: &mut Reader) -> DecodeResult<AppendEntriesResponse<TypeConfig>> {
    Ok(match r.u8()? {
        0 => AppendEntriesResponse::Success,
        1 => AppendEntriesResponse::PartialSuccess(read_opt_log_id(r)?),
        2 => AppendEntriesResponse::Conflict,
        3 => AppendEntriesResponse::HigherVote(read_vote(r)?),
        t => return Err(format!("unknown append response {t}")),
    })
}

pub fn stream_result(out: &mut BytesMut, res: &StreamAppendResult<TypeConfig>) {
    match res {
        Ok(id) => {
            out.put_u8(0);
            opt_log_id(out, id);
        }
        Err(StreamAppendError::Conflict(id)) => {
            out.put_u8(1);
            log_id(out, id);
        }
        Err(StreamAppendError::HigherVote(v)) => {
            out.put_u8(2);
            vote(out, v);
        }
    }
}

pub fn read_stream_result(r: &mut Reader) -> DecodeResult<StreamAppendResult<TypeConfig>> {
    Ok(match r.u8()? {
        0 => Ok(read_opt_log_id(r)?),
        1 => Err(StreamAppendError::Conflict(read_log_id(r)?)),
        2 => Err(StreamAppendError::HigherVote(read_vote(r)?)),
        t => return Err(format!("unknown stream append result {t}")),
    })
}

pub fn vote_request(out: &mut BytesMut, req: &VoteRequest<TypeConfig>) {
    vote(out, &req.vote);
    opt_log_id(out, &req.last_log_id);
    out.put_u8(req.leadership_transfer as u8);
}

pub fn read_vote_request(r: &mut Reader) -> DecodeResult<VoteRequest<TypeConfig>> {
    let v = read_vote(r)?;
    let last = read_opt_log_id(r)?;
    let mut req = VoteRequest::new(v, last);
    req.leadership_transfer = r.bool()?;
    Ok(req)
}

pub fn vote_response(out: &mut BytesMut, resp: &VoteResponse<TypeConfig>) {
    vote(out, &resp.vote);
    out.put_u8(resp.vote_granted as u8);
    opt_log_id(out, &resp.last_log_id);
}

pub fn read_vote_response(r: &mut Reader) -> DecodeResult<VoteResponse<TypeConfig>> {
    let v = read_vote(r)?;
    let granted = r.bool()?;
    let last = read_opt_log_id(r)?;
    Ok(VoteResponse::new(v, last, granted))
}

pub fn snapshot_meta(out: &mut BytesMut, m: &SnapshotMeta) {
    opt_log_id(out, &m.last_log_id);
    stored_membership(out, &m.last_membership);
}

pub fn read_snapshot_meta(r: &mut Reader) -> DecodeResult<SnapshotMeta> {
    Ok(SnapshotMeta { last_log_id: read_opt_log_id(r)?, last_membership: read_stored_membership(r)? })
}

pub fn transfer_request(out: &mut BytesMut, req: &TransferLeaderRequest<TypeConfig>) {
    vote(out, req.from_leader());
    out.put_u64_le(*req.to_node_id());
    opt_log_id(out, &req.last_log_id().cloned());
}

pub fn read_transfer_request(r: &mut Reader) -> DecodeResult<TransferLeaderRequest<TypeConfig>> {
    let from = read_vote(r)?;
    let to = r.u64()?;
    let last = read_opt_log_id(r)?;
    Ok(TransferLeaderRequest::new(from, to, last))
}

pub fn transfer_response(out: &mut BytesMut, resp: &TransferLeaderResponse<TypeConfig>) {
    use openraft::raft::TransferLeaderError as E;
    match resp {
        Ok(()) => out.put_u8(0),
        Err(E::VoteChanged { expected, actual }) => {
            out.put_u8(1);
            vote(out, expected);
            vote(out, actual);
        }
        Err(E::LogNotFlushed { expected, actual }) => {
            out.put_u8(2);
            opt_log_id(out, expected);
            opt_log_id(out, actual);
        }
    }
}

pub fn read_transfer_response(r: &mut Reader) -> DecodeResult<TransferLeaderResponse<TypeConfig>> {
    use openraft::raft::TransferLeaderError as E;
    Ok(match r.u8()? {
        0 => Ok(()),
        1 => Err(E::VoteChanged { expected: read_vote(r)?, actual: read_vote(r)? }),
        2 => Err(E::LogNotFlushed { expected: read_opt_log_id(r)?, actual: read_opt_log_id(r)? }),
        t => return Err(format!("unknown transfer-leader response {t}")),
    })
}

/// The store's `meta` for an applied position: the last applied log id and membership.
pub fn applied_meta(last: &Option<LogId>, m: &StoredMembership) -> Bytes {
    let mut out = BytesMut::with_capacity(128);
    out.put_u8(1);
    opt_log_id(&mut out, last);
    stored_membership(&mut out, m);
    out.freeze()
}

/// Reads `applied_meta`; an empty blob is "nothing applied yet".
pub fn read_applied_meta(buf: &Bytes) -> DecodeResult<(Option<LogId>, StoredMembership)> {
    if buf.is_empty() {
        return Ok((None, StoredMembership::default()));
    }
    let mut r = Reader::new(buf);
    let v = r.u8()?;
    if v != 1 {
        return Err(format!("unknown applied-position format {v}"));
    }
    let last = read_opt_log_id(&mut r)?;
    let m = read_stored_membership(&mut r)?;
    if !r.at_end() {
        return Err("trailing bytes after an applied position".into());
    }
    Ok((last, m))
}

/// Decodes a whole buffer with `f`, refusing trailing bytes.
pub fn decode_all<T>(buf: &Bytes, f: impl FnOnce(&mut Reader) -> DecodeResult<T>) -> DecodeResult<T> {
    let mut r = Reader::new(buf);
    let v = f(&mut r)?;
    if !r.at_end() {
        return Err(format!("{} trailing bytes", r.remaining()));
    }
    Ok(v)
}

/// Encodes with `f` into a fresh buffer.
pub fn encode_with(f: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut out = BytesMut::with_capacity(256);
    f(&mut out);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lid(term: u64, node: u64, index: u64) -> LogId {
        OLogId::new(LeaderId { term, node_id: node }, index)
    }

    fn members() -> Membership {
        let nodes: BTreeMap<u64, Member> = (1..=3)
            .map(|i| (i, Member { name: format!("m{i}"), peer_url: format!("http://127.0.0.1:{i}"), ..Default::default() }))
            .collect();
        Membership::new(vec![BTreeSet::from([1, 2]), BTreeSet::from([2, 3])], nodes).unwrap()
    }

    #[test]
    fn entries_and_messages_round_trip() {
        let entries = vec![
            Entry { log_id: lid(1, 1, 1), payload: EntryPayload::Blank },
            Entry { log_id: lid(1, 1, 2), payload: EntryPayload::Normal(Batch::new(Bytes::from_static(b"cmds"))) },
            Entry { log_id: lid(2, 3, 3), payload: EntryPayload::Membership(members()) },
        ];
        for e in &entries {
            assert_eq!(&decode_entry(&encode_entry(e)).unwrap(), e);
        }
        let req = AppendEntriesRequest::<TypeConfig> {
            vote: Vote { leader_id: LeaderId { term: 2, node_id: 3 }, committed: true },
            prev_log_id: Some(lid(1, 1, 0)),
            entries: entries.clone(),
            leader_commit: Some(lid(1, 1, 2)),
        };
        let b = encode_with(|o| append_request(o, &req));
        let back = decode_all(&b, read_append_request).unwrap();
        assert_eq!(back.entries, req.entries);
        assert_eq!((back.vote, back.prev_log_id, back.leader_commit), (req.vote, req.prev_log_id, req.leader_commit));
        let sm = StoredMembership::new(Some(lid(2, 3, 3)), members());
        let meta = applied_meta(&Some(lid(2, 3, 3)), &sm);
        assert_eq!(read_applied_meta(&meta).unwrap(), (Some(lid(2, 3, 3)), sm));
        assert_eq!(read_applied_meta(&Bytes::new()).unwrap().0, None);
    }

    #[test]
    fn a_members_client_url_rides_after_its_api_url_and_older_members_read_unchanged() {
        let plain = Member { name: "a".into(), peer_url: "http://p:1".into(), api_url: "https://h:6443".into(), client_url: String::new() };
        let with_client = Member { client_url: "https://h:2379".into(), ..plain.clone() };
        for m in [&plain, &with_client, &Member::default()] {
            assert_eq!(&decode_all(&encode_with(|o| member(o, m)), read_member).unwrap(), m);
        }
        // What a binary before client URLs wrote: three strings.
        let old = encode_with(|o| {
            put_str(o, "a");
            put_str(o, "http://p:1");
            put_str(o, "https://h:6443");
        });
        assert_eq!(encode_with(|o| member(o, &plain)), old);
        assert_eq!(decode_all(&old, read_member).unwrap(), plain);
    }

    #[test]
    fn a_flipped_bit_in_an_entry_is_refused() {
        let e = Entry { log_id: lid(1, 1, 2), payload: EntryPayload::Normal(Batch::new(Bytes::from_static(b"some commands"))) };
        let good = encode_entry(&e);
        for i in 0..good.len() {
            let mut bad = good.to_vec();
            bad[i] ^= 0x10;
            let r = decode_entry(&Bytes::from(bad));
            assert!(r.is_err() || r.unwrap() != e, "a flipped bit at {i} went unnoticed");
        }
        for n in 0..good.len() {
            assert!(decode_entry(&good.slice(..n)).is_err());
        }
    }
}
