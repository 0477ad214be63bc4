//! How objects are stored and served without re-encoding.
//!
//! An object is stored as its JSON with `metadata.resourceVersion` left out, written so that
//! `"metadata":{"resourceVersion":"` comes first and the byte offset where the version's digits
//! belong is known. The stored value is `[offset u32 LE][json]`. Serving an object at revision
//! R is three slices: `json[..offset]`, R's digits, `json[offset..]`: no parse, no encode.

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Map, Value};

const OFFSET_BYTES: usize = 4;

fn put_field(out: &mut Vec<u8>, k: &str, v: &Value) {
    serde_json::to_writer(&mut *out, k).expect("a string serializes");
    out.push(b':');
    serde_json::to_writer(&mut *out, v).expect("a JSON value serializes");
}

thread_local! {
    /// Where `encode_stored` and `value_at` build an object's bytes: kept between calls, so an
    /// encoding neither starts small and grows by doubling nor leaves its slack behind.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A scratch buffer grown past this by one large object is not kept.
const SCRATCH_KEPT_BYTES_MAX: usize = 1 << 20;

fn with_scratch<T>(f: impl FnOnce(&mut Vec<u8>) -> T) -> T {
    SCRATCH.with(|cell| {
        // Taken out while in use, so that a nested call (none today) gets its own buffer.
        let mut buf = std::mem::take(&mut *cell.borrow_mut());
        buf.clear();
        let out = f(&mut buf);
        if buf.capacity() <= SCRATCH_KEPT_BYTES_MAX {
            *cell.borrow_mut() = buf;
        }
        out
    })
}

/// Encodes `obj` (a JSON object with `apiVersion`, `kind`, `metadata`) for the store, in an
/// allocation of exactly its size: the store's history and the watch cache keep these
/// bytes, so slack left by a growing buffer (up to half of it) would stay with them.
pub fn encode_stored(obj: &Value) -> Bytes {
    let map = obj.as_object().expect("objects are JSON objects");
    with_scratch(|out| {
        out.extend_from_slice(&[0; OFFSET_BYTES]);
        out.push(b'{');
        for k in ["apiVersion", "kind"] {
            if let Some(v) = map.get(k) {
                put_field(out, k, v);
                out.push(b',');
            }
        }
        out.extend_from_slice(b"\"metadata\":{\"resourceVersion\":\"");
        let offset = (out.len() - OFFSET_BYTES) as u32;
        out.push(b'"');
        if let Some(Value::Object(meta)) = map.get("metadata") {
            for (k, v) in meta {
                if k != "resourceVersion" {
                    out.push(b',');
                    put_field(out, k, v);
                }
            }
        }
        out.push(b'}');
        for (k, v) in map {
            if k != "apiVersion" && k != "kind" && k != "metadata" {
                out.push(b',');
                put_field(out, k, v);
            }
        }
        out.push(b'}');
        out[0..OFFSET_BYTES].copy_from_slice(&offset.to_le_bytes());
        Bytes::copy_from_slice(out)
    })
}

/// A stored object, ready to be served at a revision.
#[derive(Clone, Debug)]
pub struct Stored {
    json: Bytes,
    offset: usize,
}

impl Stored {
    /// A value as read from the store: opened first when encryption at rest is configured
    /// (`encryption`), since its key decides how.
    pub fn from_kv(kv: &storage::KeyValue) -> Result<Stored, String> {
        Stored::parse(&crate::encryption::open(&kv.key, &kv.value)?)
    }

    /// A plaintext value (as `encode_stored` makes it).
    pub fn parse(value: &Bytes) -> Result<Stored, String> {
        if value.len() < OFFSET_BYTES + 2 {
            return Err("stored object too short".into());
        }
        let offset = u32::from_le_bytes(value[..4].try_into().unwrap()) as usize;
        let json = value.slice(OFFSET_BYTES..);
        if offset > json.len() {
            return Err("stored object's version offset is past its end".into());
        }
        Ok(Stored { json, offset })
    }

    /// The JSON without the revision's digits (a slice of the stored value: its allocation
    /// is shared, not copied), and the byte offset where they belong.
    pub fn parts(&self) -> (&Bytes, usize) {
        (&self.json, self.offset)
    }

    /// Appends the object at `rev` to `out`.
    pub fn write_at(&self, rev: u64, out: &mut impl BufMut) {
        out.put_slice(&self.json[..self.offset]);
        if rev != 0 {
            out.put_slice(itoa::Buffer::new().format(rev).as_bytes());
        }
        out.put_slice(&self.json[self.offset..]);
    }

    pub fn at(&self, rev: u64) -> Bytes {
        let mut out = BytesMut::with_capacity(self.json.len() + 20);
        self.write_at(rev, &mut out);
        out.freeze()
    }

    /// The object as a JSON value at `rev` (for the paths that must look inside it).
    pub fn value_at(&self, rev: u64) -> Result<Value, String> {
        with_scratch(|buf| {
            self.write_at(rev, buf);
            serde_json::from_slice(buf).map_err(|e| format!("stored object is not JSON: {e}"))
        })
    }
}

/// `obj.metadata`, created if absent.
pub fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    let map = obj.as_object_mut().expect("object");
    let m = map.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    if !m.is_object() {
        *m = Value::Object(Map::new());
    }
    m.as_object_mut().unwrap()
}

pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

/// RFC 3339 at second precision, as Kubernetes writes timestamps.
pub fn now_rfc3339() -> String {
    let now = jiff::Timestamp::now();
    jiff::Timestamp::from_second(now.as_second()).unwrap_or(now).to_string()
}

pub fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// generateName's suffix: 5 characters of Kubernetes' alphabet (no vowels, no confusables).
pub fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5).map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stored_objects_are_served_at_any_revision_without_reencoding() {
        let obj = json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "p", "resourceVersion": "7", "labels": {"a": "b"}}, "spec": {"x": 1}});
        let stored = encode_stored(&obj);
        let s = Stored::parse(&stored).unwrap();
        let v: Value = serde_json::from_slice(&s.at(42)).unwrap();
        assert_eq!(v["metadata"]["resourceVersion"], "42");
        assert_eq!(v["metadata"]["name"], "p");
        assert_eq!(v["metadata"]["labels"]["a"], "b");
        assert_eq!(v["spec"]["x"], 1);
        assert_eq!(v["kind"], "Pod");
    }

    #[test]
    fn an_annotation_named_resource_version_does_not_confuse_the_offset() {
        let obj = json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "c", "annotations": {"resourceVersion": ""}}});
        let s = Stored::parse(&encode_stored(&obj)).unwrap();
        let v: Value = serde_json::from_slice(&s.at(5)).unwrap();
        assert_eq!(v["metadata"]["resourceVersion"], "5");
        assert_eq!(v["metadata"]["annotations"]["resourceVersion"], "");
    }

    #[test]
    fn a_stored_object_takes_no_more_memory_than_its_bytes() {
        // Objects of 5 KB and of 2 MB (past the scratch buffer's bound), then a small one.
        for n in [5_000, 2 << 20, 10] {
            let obj = json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "c"}, "data": {"k": "x".repeat(n)}});
            let stored = encode_stored(&obj);
            let v: Value = serde_json::from_slice(&Stored::parse(&stored).unwrap().at(3)).unwrap();
            assert_eq!(v["data"]["k"].as_str().map(str::len), Some(n));
            let bytes = Vec::<u8>::from(stored);
            assert_eq!(bytes.capacity(), bytes.len(), "an object of {n} bytes keeps slack");
        }
    }

    #[test]
    fn uids_look_like_uuid_v4() {
        let u = new_uid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }
}
