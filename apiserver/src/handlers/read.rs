//! GET and LIST: served from the watch cache (a list's snapshot streamed in chunks, kept
//! for its later pages), or from the store's history for an exact or too-old revision; and
//! the continue tokens that carry a paged list's revision and next key.

use super::*;

/// Objects read per store round trip while filtering a list.
const LIST_CHUNK_ITEMS: usize = 500;

impl Req<'_> {
    /// A Table of `values`: a custom resource's columns read them at the version asked for
    /// (converted first, for a CRD of several versions), a built-in kind's as they are.
    async fn table_of(&self, mut values: Vec<Value>, rev: u64, cont: Option<&str>) -> ApiResult {
        if let Some(c) = &self.info.conversion {
            crate::crd_conversion::convert(self.st, c, values.iter_mut().collect(), &self.info.api_version()).await?;
        }
        let rows = values.iter().map(|v| custom_columns::row_for(self.info, v)).collect();
        Ok(json_value(StatusCode::OK, &custom_columns::table_for(self.info, rows, &rev.to_string(), cont)))
    }

    pub(super) async fn get(&self) -> ApiResult {
        let (cache, _) = self.cache().await?;
        let (_, snap) = cache.snapshot();
        let Some(o) = snap.get(self.key().as_bytes()) else {
            // Not cached: absent, or stored as something the cache could not decode (a value
            // encrypted with a key this server lacks): the store says which.
            return match self.st.store.get(self.key()).await? {
                None => Err(self.not_found()),
                Some(kv) => {
                    let stored = Stored::from_kv(&kv).map_err(|e| ApiError::internal(format!("{} {:?}: {e}", self.info.resource, self.name())))?;
                    Ok(json_response(StatusCode::OK, stored.at(kv.mod_revision)))
                }
            };
        };
        if table::wants_table(self.accept) {
            let v: Value = serde_json::from_slice(&o.json()).map_err(|e| ApiError::internal(e.to_string()))?;
            return self.table_of(vec![v], o.revision, None).await;
        }
        Ok(json_response(StatusCode::OK, o.json()))
    }

    pub(super) fn selectors(&self) -> Result<(LabelSelector, FieldSelector), ApiError> {
        let ls = LabelSelector::parse(q(self.query, "labelSelector").unwrap_or("")).map_err(ApiError::bad_request)?;
        let fs = FieldSelector::parse(q(self.query, "fieldSelector").unwrap_or(""), self.info.kind).map_err(ApiError::bad_request)?;
        Ok((ls, fs))
    }

    pub(super) async fn list(&self) -> ApiResult {
        let exact = q(self.query, "resourceVersionMatch") == Some("Exact");
        if exact {
            // A list at an exact past revision reads the store's history.
            return self.list_store().await;
        }
        if let Some(tok) = q(self.query, "continue") {
            // A later page: from the snapshot the first page was cut from, if the cache still
            // keeps it, else from the store at its revision.
            let (start, rev) = decode_continue(tok, &self.info.prefix(self.namespace.as_deref()))?;
            let cache = self.st.caches.get(&self.st.store, self.info).await?;
            return match cache.kept_snapshot(rev) {
                Some(snap) => self.list_cached(Some((rev, snap, Bytes::from(start)))).await,
                None => self.list_store().await,
            };
        }
        self.list_cached(None).await
    }

    /// A list from the cache's snapshot: items are copied from the cached bytes (parsed only
    /// to filter by selector or render a Table). A limit cuts the list; the snapshot is kept a
    /// while so the continue token's pages come from it (`page`: a later page's snapshot and
    /// first key).
    pub(super) async fn list_cached(&self, page: Option<(u64, imbl::OrdMap<Bytes, Arc<watchcache::Object>>, Bytes)>) -> ApiResult {
        let (ls, fs) = self.selectors()?;
        let limit: usize = match q(self.query, "limit") {
            Some(l) => l.parse().map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
            None => 0,
        };
        if let Some(rv) = q(self.query, "resourceVersion") {
            let n: u64 = rv.parse().map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?;
            if n > self.st.store.revision() {
                return Err(ApiError::from(storage::StoreError::FutureRevision { requested: n, current: self.st.store.revision() }));
            }
        }
        let cache = match &page {
            Some(_) => self.st.caches.get(&self.st.store, self.info).await?,
            None => self.cache().await?.0,
        };
        let prefix = self.info.prefix(self.namespace.as_deref());
        let (rev, snap, start) = match page {
            Some(p) => p,
            None => {
                let (r, s) = cache.snapshot();
                (r, s, Bytes::from(prefix.clone()))
            }
        };
        let as_table = table::wants_table(self.accept);
        if limit == 0 && !as_table {
            // Streamed: the snapshot is shared, the response goes out in chunks, so the memory
            // a list takes does not grow with the list.
            let head = list_body(self.info, rev, None, b"");
            let head = head.slice(..head.len() - 2); // without the closing "]}"
            let state = ListStream { snap, cursor: std::ops::Bound::Included(start), prefix: Bytes::from(prefix), ls, fs, head: Some(head), first: true, done: false };
            let stream = futures_util::stream::unfold(state, |mut s| async move {
                let chunk = s.next_chunk()?;
                Some((Ok::<_, std::convert::Infallible>(chunk), s))
            });
            return Ok(stream_response(stream));
        }
        let filtering = !ls.is_empty() || !fs.is_empty();
        let mut items = BytesMut::with_capacity(4096);
        let mut table_values = Vec::new();
        let mut n = 0usize;
        let mut next: Option<Bytes> = None;
        for (k, o) in snap.range(start..) {
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            if limit != 0 && n == limit {
                next = Some(k.clone());
                break;
            }
            let value = if filtering || as_table { Some(serde_json::from_slice::<Value>(&o.json()).map_err(|e| ApiError::internal(e.to_string()))?) } else { None };
            if let Some(v) = &value {
                let labels = v.get("metadata").and_then(|m| m.get("labels")).and_then(|l| l.as_object());
                if !ls.matches(labels) || !fs.matches(v) {
                    continue;
                }
            }
            if as_table {
                table_values.push(value.unwrap());
            } else {
                if n > 0 {
                    items.put_u8(b',');
                }
                o.write_json(&mut items);
            }
            n += 1;
        }
        if next.is_some() {
            cache.keep_snapshot(rev, snap.clone());
        }
        let cont = next.map(|k| encode_continue(rev, &k));
        if as_table {
            return self.table_of(table_values, rev, cont.as_deref()).await;
        }
        Ok(json_response(StatusCode::OK, list_body(self.info, rev, cont.as_deref(), &items)))
    }

    /// A list page read from the store at the continue token's revision.
    pub(super) async fn list_store(&self) -> ApiResult {
        let (ls, fs) = self.selectors()?;
        let limit: usize = match q(self.query, "limit") {
            Some(l) => l.parse().map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
            None => 0,
        };
        let prefix = self.info.prefix(self.namespace.as_deref());
        let end = prefix_end(prefix.as_bytes());
        // Continue tokens name the revision and the next key; `resourceVersion` as Kubernetes
        // defines it (unset: newest; "0": any; N: not older than N) is served at the newest.
        let (mut start, rev) = match q(self.query, "continue") {
            Some(tok) => decode_continue(tok, &prefix)?,
            None => (prefix.clone().into_bytes(), 0),
        };
        let mut rev = rev;
        if rev == 0 && q(self.query, "resourceVersionMatch") == Some("Exact") {
            rev = match q(self.query, "resourceVersion") {
                Some(r) => r.parse().map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {r:?}")))?,
                None => return Err(ApiError::bad_request("resourceVersionMatch=Exact needs a resourceVersion")),
            };
            if rev == 0 {
                return Err(ApiError::bad_request("resourceVersionMatch=Exact is not allowed with resourceVersion 0"));
            }
        }
        if let Some(rv) = q(self.query, "resourceVersion") {
            let n: u64 = rv.parse().map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?;
            if n > self.st.store.revision() && q(self.query, "continue").is_none() {
                return Err(ApiError::from(storage::StoreError::FutureRevision { requested: n, current: self.st.store.revision() }));
            }
        }
        let as_table = table::wants_table(self.accept);
        let mut items = BytesMut::with_capacity(4096);
        let mut table_values = Vec::new();
        let mut n = 0usize;
        let mut next: Option<Vec<u8>> = None;
        // A metadata.name selector with a namespace is a point read.
        let filtering = !ls.is_empty() || !fs.is_empty();
        loop {
            let chunk = if limit == 0 { 0 } else { (limit - n).max(LIST_CHUNK_ITEMS).min(10 * LIST_CHUNK_ITEMS) };
            let mut req = RangeRequest::new(KeyRange::Range { start: Bytes::from(start.clone()), end: Bytes::from(end.clone()) }).limit(chunk);
            if rev != 0 {
                req = req.at(rev);
            }
            let resp = match self.st.store.range(req).await {
                Ok(r) => r,
                Err(storage::StoreError::Compacted { .. }) => {
                    return Err(ApiError::gone("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter."));
                }
                Err(e) => return Err(e.into()),
            };
            rev = resp.revision;
            let got = resp.kvs.len();
            for kv in &resp.kvs {
                if limit != 0 && n == limit {
                    next = Some(kv.key.to_vec());
                    break;
                }
                let stored = Stored::from_kv(kv).map_err(ApiError::internal)?;
                let value = if filtering || as_table { Some(stored.value_at(kv.mod_revision).map_err(ApiError::internal)?) } else { None };
                if let Some(v) = &value {
                    let labels = v.get("metadata").and_then(|m| m.get("labels")).and_then(|l| l.as_object());
                    if !ls.matches(labels) || !fs.matches(v) {
                        continue;
                    }
                }
                if as_table {
                    table_values.push(value.unwrap());
                } else {
                    if n > 0 {
                        items.put_u8(b',');
                    }
                    stored.write_at(kv.mod_revision, &mut items);
                }
                n += 1;
            }
            if next.is_some() || !resp.more || got == 0 {
                break;
            }
            let last = resp.kvs.last().unwrap().key.to_vec();
            start = last;
            start.push(0);
        }
        let cont = next.map(|k| encode_continue(rev, &k));
        if as_table {
            return self.table_of(table_values, rev, cont.as_deref()).await;
        }
        Ok(json_response(StatusCode::OK, list_body(self.info, rev, cont.as_deref(), &items)))
    }
}

/// A list's JSON around items that are already encoded (comma-separated objects).
fn list_body(info: &ResourceInfo, rev: u64, cont: Option<&str>, items: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(items.len() + 256);
    out.put_slice(format!("{{\"kind\":\"{}\",\"apiVersion\":\"{}\",\"metadata\":{{\"resourceVersion\":\"{rev}\"", info.list_kind, info.api_version()).as_bytes());
    if let Some(c) = cont {
        out.put_slice(format!(",\"continue\":\"{c}\"").as_bytes());
    }
    out.put_slice(b"},\"items\":[");
    out.put_slice(items);
    out.put_slice(b"]}");
    out.freeze()
}

/// A list written out from a cache snapshot in chunks of about `LIST_STREAM_CHUNK_BYTES`.
struct ListStream {
    snap: imbl::OrdMap<Bytes, Arc<watchcache::Object>>,
    cursor: std::ops::Bound<Bytes>,
    prefix: Bytes,
    ls: LabelSelector,
    fs: FieldSelector,
    head: Option<Bytes>,
    first: bool,
    done: bool,
}

/// Bytes of items per chunk of a streamed list.
const LIST_STREAM_CHUNK_BYTES: usize = 64 << 10;

impl ListStream {
    fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(h) = self.head.take() {
            return Some(h);
        }
        if self.done {
            return None;
        }
        let filtering = !self.ls.is_empty() || !self.fs.is_empty();
        let mut out = BytesMut::with_capacity(LIST_STREAM_CHUNK_BYTES + 4096);
        let mut last: Option<Bytes> = None;
        for (k, o) in self.snap.range((self.cursor.clone(), std::ops::Bound::Unbounded)) {
            if !k.starts_with(&self.prefix) {
                self.done = true;
                break;
            }
            last = Some(k.clone());
            if filtering {
                let Ok(v) = serde_json::from_slice::<Value>(&o.json()) else { continue };
                let labels = v.get("metadata").and_then(|m| m.get("labels")).and_then(|l| l.as_object());
                if !self.ls.matches(labels) || !self.fs.matches(&v) {
                    continue;
                }
            }
            if !self.first {
                out.put_u8(b',');
            }
            self.first = false;
            o.write_json(&mut out);
            if out.len() >= LIST_STREAM_CHUNK_BYTES {
                break;
            }
        }
        match last {
            Some(k) if !self.done => self.cursor = std::ops::Bound::Excluded(k),
            _ => self.done = true,
        }
        if self.done {
            out.put_slice(b"]}");
        }
        Some(out.freeze())
    }
}

/// The smallest key after every key with this prefix.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// An opaque continue token: the list's revision and the next key.
fn encode_continue(rev: u64, next_key: &[u8]) -> String {
    format!("{rev}-{}", hex(next_key))
}

fn decode_continue(tok: &str, prefix: &str) -> Result<(Vec<u8>, u64), ApiError> {
    let bad = || ApiError::bad_request(format!("invalid continue token {tok:?}"));
    let (rev, key) = tok.split_once('-').ok_or_else(bad)?;
    let rev: u64 = rev.parse().map_err(|_| bad())?;
    let key = unhex(key).ok_or_else(bad)?;
    if !key.starts_with(prefix.as_bytes()) {
        return Err(bad());
    }
    Ok((key, rev))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip_and_are_checked() {
        let tok = encode_continue(42, b"/registry/core/pods/default/b");
        assert_eq!(decode_continue(&tok, "/registry/core/pods/default/").unwrap(), (b"/registry/core/pods/default/b".to_vec(), 42));
        assert!(decode_continue(&tok, "/registry/core/secrets/").is_err());
        assert!(decode_continue("garbage", "/").is_err());
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
    }
}
