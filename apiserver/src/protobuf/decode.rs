//! Protobuf wire bytes to JSON, by the field table: the same JSON a Go client would have sent
//! for the object it encoded.
//!
//! Bounded: nesting deeper than `MAX_DEPTH` messages is refused (the body's size is bounded
//! by the HTTP layer); a truncated varint or length, a wire type the field cannot have, or
//! text that is not UTF-8 is an error naming the message and field. Unknown tags are
//! skipped, as Go's decoder skips them.

use base64::Engine;
use serde_json::{Map, Number, Value};

use super::table::{Field, Message, Special, Ty, message};

/// Deeper than any Kubernetes object (a CRD's schema nests about four messages per level).
pub const MAX_DEPTH: usize = 100;

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

struct Wire<'a> {
    b: &'a [u8],
}

impl<'a> Wire<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for (i, byte) in self.b.iter().enumerate().take(10) {
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.b = &self.b[i + 1..];
                return Ok(v);
            }
        }
        Err("a truncated or overlong varint".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.b.len() {
            return Err(format!("a length of {n} bytes where {} remain", self.b.len()));
        }
        let (x, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(x)
    }

    fn len_delimited(&mut self) -> Result<&'a [u8], String> {
        let n = self.varint()?;
        self.take(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// The next field's tag and wire type, or None at the end.
    fn key(&mut self) -> Result<Option<(u32, u8)>, String> {
        if self.b.is_empty() {
            return Ok(None);
        }
        let k = self.varint()?;
        let tag = u32::try_from(k >> 3).map_err(|_| format!("field number {} out of range", k >> 3))?;
        if tag == 0 {
            return Err("field number 0".into());
        }
        Ok(Some((tag, (k & 7) as u8)))
    }

    fn skip(&mut self, wire_type: u8) -> Result<(), String> {
        match wire_type {
            VARINT => self.varint().map(drop),
            FIXED64 => self.take(8).map(drop),
            LEN => self.len_delimited().map(drop),
            FIXED32 => self.take(4).map(drop),
            w => Err(format!("wire type {w}")),
        }
    }
}

fn wrong(m: &Message, f: &Field, wire_type: u8) -> String {
    format!("{}.{} (field {}) has wire type {wire_type}, not that of {:?}", short(m.name), f.json, f.tag, f.ty)
}

fn short(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

/// Why a scalar could not be read.
enum ScalarError {
    /// The field's type cannot come with this wire type.
    WireType,
    /// The bytes are bad (truncated, not UTF-8, a number JSON cannot hold).
    Bad(String),
}

impl From<String> for ScalarError {
    fn from(e: String) -> ScalarError {
        ScalarError::Bad(e)
    }
}

/// One value of a scalar field (one element, for a repeated one).
fn scalar(ty: Ty, w: &mut Wire, wire_type: u8) -> Result<Value, ScalarError> {
    Ok(match (ty, wire_type) {
        (Ty::Str, LEN) => Value::String(String::from_utf8(w.len_delimited()?.to_vec()).map_err(|_| "a string that is not UTF-8".to_string())?),
        (Ty::Bytes, LEN) => Value::String(base64::engine::general_purpose::STANDARD.encode(w.len_delimited()?)),
        (Ty::I32, VARINT) => Value::from(w.varint()? as i64 as i32),
        (Ty::I64, VARINT) => Value::from(w.varint()? as i64),
        (Ty::Bool, VARINT) => Value::Bool(w.varint()? != 0),
        (Ty::F64, FIXED64) => {
            let x = f64::from_le_bytes(w.take(8)?.try_into().expect("8 bytes"));
            Value::Number(Number::from_f64(x).ok_or_else(|| format!("a number JSON cannot hold ({x})"))?)
        }
        _ => return Err(ScalarError::WireType),
    })
}

/// Calls `each` with every value the message's bytes hold, field by field in wire order: a
/// map entry as a one-key object, each element of a repeated field on its own.
fn walk(b: &[u8], m: &'static Message, depth: usize, mut each: impl FnMut(&'static Field, Value)) -> Result<(), String> {
    let mut w = Wire { b };
    while let Some((tag, wt)) = w.key()? {
        let Some(f) = m.field(tag) else {
            w.skip(wt)?;
            continue;
        };
        match f.ty {
            Ty::Msg(i) => {
                if wt != LEN {
                    return Err(wrong(m, f, wt));
                }
                let v = decode(w.len_delimited()?, message(i), depth + 1).map_err(|e| within(m, f, e))?;
                each(f, v);
            }
            Ty::MapStr | Ty::MapBytes | Ty::MapMsg(_) => {
                if wt != LEN {
                    return Err(wrong(m, f, wt));
                }
                let (k, v) = entry(w.len_delimited()?, f.ty, depth).map_err(|e| within(m, f, e))?;
                let mut one = Map::new();
                one.insert(k, v);
                each(f, Value::Object(one));
            }
            ty if f.repeated && wt == LEN && ty != Ty::Str && ty != Ty::Bytes => {
                // Packed numbers (Go writes them unpacked; protobuf allows either).
                let mut p = Wire { b: w.len_delimited()? };
                let elem = if ty == Ty::F64 { FIXED64 } else { VARINT };
                while !p.b.is_empty() {
                    each(f, scalar(ty, &mut p, elem).map_err(|e| scalar_error(m, f, wt, e))?);
                }
            }
            ty => each(f, scalar(ty, &mut w, wt).map_err(|e| scalar_error(m, f, wt, e))?),
        }
    }
    Ok(())
}

fn scalar_error(m: &Message, f: &Field, wire_type: u8, e: ScalarError) -> String {
    match e {
        ScalarError::WireType => wrong(m, f, wire_type),
        ScalarError::Bad(e) => within(m, f, e),
    }
}

fn map_value_error(e: ScalarError) -> String {
    match e {
        ScalarError::WireType => "a map value of the wrong wire type".into(),
        ScalarError::Bad(e) => e,
    }
}

fn within(m: &Message, f: &Field, e: String) -> String {
    if e.starts_with("in ") { e } else { format!("in {}.{}: {e}", short(m.name), if f.json.is_empty() { "(inline)" } else { f.json }) }
}

/// A map entry: key at tag 1, value at tag 2 (either may be absent: "" and the zero value).
fn entry(b: &[u8], ty: Ty, depth: usize) -> Result<(String, Value), String> {
    let mut w = Wire { b };
    let (mut key, mut value) = (String::new(), None);
    while let Some((tag, wt)) = w.key()? {
        match (tag, wt) {
            (1, LEN) => key = String::from_utf8(w.len_delimited()?.to_vec()).map_err(|_| "a map key that is not UTF-8".to_string())?,
            (2, LEN) => {
                value = Some(match ty {
                    Ty::MapStr => scalar(Ty::Str, &mut w, wt).map_err(map_value_error)?,
                    Ty::MapBytes => scalar(Ty::Bytes, &mut w, wt).map_err(map_value_error)?,
                    Ty::MapMsg(i) => decode(w.len_delimited()?, message(i), depth + 1)?,
                    _ => unreachable!("entry of a map type"),
                })
            }
            (1 | 2, wt) => return Err(format!("a map entry's field {tag} with wire type {wt}")),
            (_, wt) => w.skip(wt)?,
        }
    }
    let value = match (value, ty) {
        (Some(v), _) => v,
        (None, Ty::MapMsg(i)) => decode(&[], message(i), depth + 1)?,
        (None, _) => Value::String(String::new()),
    };
    Ok((key, value))
}

/// A message as JSON.
pub fn decode(b: &[u8], m: &'static Message, depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!("messages nested deeper than {MAX_DEPTH}"));
    }
    match m.special {
        Special::Object => object(b, m, depth).map(Value::Object),
        Special::Raw => raw(b),
        special => {
            let mut by_tag: Vec<(u32, Value)> = Vec::new();
            walk(b, m, depth, |f, v| by_tag.push((f.tag, v)))?;
            let last = |tag: u32| by_tag.iter().rev().find(|(t, _)| *t == tag).map(|(_, v)| v.clone());
            let all = |tag: u32| by_tag.iter().filter(|(t, _)| *t == tag).map(|(_, v)| v.clone()).collect::<Vec<_>>();
            let int = |tag: u32| last(tag).and_then(|v| v.as_i64()).unwrap_or(0);
            Ok(match special {
                Special::Quantity => match last(1) {
                    Some(Value::String(s)) if !s.is_empty() => Value::String(s),
                    _ => Value::String("0".into()),
                },
                Special::Time | Special::MicroTime => time(int(1), int(2), special == Special::MicroTime)?,
                Special::IntOrString => match int(1) {
                    1 => last(3).unwrap_or_else(|| Value::String(String::new())),
                    _ => Value::from(int(2)),
                },
                Special::Items => Value::Array(all(1)),
                Special::SchemaOrArray => {
                    let list = all(2);
                    if list.is_empty() { last(1).unwrap_or(Value::Null) } else { Value::Array(list) }
                }
                Special::SchemaOrBool => last(2).or_else(|| last(1)).unwrap_or(Value::Bool(false)),
                Special::SchemaOrStrings => {
                    let list = all(2);
                    if list.is_empty() { last(1).unwrap_or(Value::Null) } else { Value::Array(list) }
                }
                Special::Object | Special::Raw => unreachable!("decoded above"),
            })
        }
    }
}

/// The fields of a message as a JSON object, as Go's JSON encoding writes them: a zero
/// value of a non-pointer `omitempty` field is left out (Go's protobuf writes it, Go's JSON
/// does not: a JSON client never sends `"hostNetwork": false` or `"generation": 0`, and an
/// object that had them would differ from its own copy made by a Go client); a zero time is
/// left out; an inline struct's fields join this object.
fn object(b: &[u8], m: &'static Message, depth: usize) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    walk(b, m, depth, |f, v| {
        if f.json.is_empty() {
            if let Value::Object(inner) = v {
                out.extend(inner);
            }
        } else if matches!(f.ty, Ty::MapStr | Ty::MapBytes | Ty::MapMsg(_)) {
            let slot = out.entry(f.json).or_insert_with(|| Value::Object(Map::new()));
            if let (Value::Object(map), Value::Object(one)) = (slot, v) {
                map.extend(one);
            }
        } else if f.repeated {
            if let Value::Array(a) = out.entry(f.json).or_insert_with(|| Value::Array(Vec::new())) {
                a.push(v);
            }
        } else if v.is_null() || (f.omit_zero && is_zero(&v)) {
            out.remove(f.json);
        } else {
            out.insert(f.json.to_string(), v);
        }
    })?;
    Ok(out)
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::String(s) => s.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        _ => false,
    }
}

/// A `RawExtension`'s, `FieldsV1`'s or `JSON`'s bytes (tag 1): the JSON document they hold.
fn raw(b: &[u8]) -> Result<Value, String> {
    let mut w = Wire { b };
    let mut doc: &[u8] = &[];
    while let Some((tag, wt)) = w.key()? {
        match (tag, wt) {
            (1, LEN) => doc = w.len_delimited()?,
            (1, wt) => return Err(format!("raw bytes with wire type {wt}")),
            (_, wt) => w.skip(wt)?,
        }
    }
    if doc.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(doc).map_err(|e| format!("embedded bytes that are not JSON ({e})"))
}

/// Kubernetes' `Time` (RFC 3339, whole seconds, UTC) or `MicroTime` (six decimals); the zero
/// time is null, as Go writes it.
fn time(seconds: i64, nanos: i64, micro: bool) -> Result<Value, String> {
    if seconds == 0 && nanos == 0 {
        return Ok(Value::Null);
    }
    let nanos = i32::try_from(nanos).ok().filter(|n| (0..1_000_000_000).contains(n)).ok_or_else(|| format!("a time with {nanos} nanoseconds"))?;
    let t = jiff::Timestamp::new(seconds, if micro { nanos } else { 0 }).map_err(|e| format!("a time out of range ({e})"))?;
    let whole = t.strftime("%Y-%m-%dT%H:%M:%S").to_string();
    Ok(Value::String(if micro { format!("{whole}.{:06}Z", nanos / 1000) } else { format!("{whole}Z") }))
}
