//! `Obj`: a read-only JSON object as informers keep it, a third of a `serde_json::Value`'s size.
//!
//! An informer holds every object of its resource for the life of the process: at 150,000
//! pods, the controllers' pod informer alone held 1.5-2.5 GB of `Value` trees (each map a
//! B-tree node of 11 slots whatever its length, every string its own allocation). `Obj`
//! stores a map as one boxed slice of its fields, sorted by key, and strings of up to 24
//! bytes inline (`compact_str`): a running density pod is 5.0 KB in 43 allocations against
//! 16.6 KB in 179 as a `Value` (bench/RESULTS.md). Reading mirrors `Value` (`obj["spec"]
//! ["nodeName"] == name`, `get`, `pointer`, `as_str`...), so controller code reads the same;
//! what a controller writes is built as a `Value` (`to_value`), since objects are not
//! changed in place.

use std::fmt;

use compact_str::CompactString;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Number, Value};

use crate::decode::{Child, Shape};

/// A JSON value whose maps are sorted slices and whose short strings are inline.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Obj {
    #[default]
    Null,
    Bool(bool),
    Number(Number),
    String(CompactString),
    Array(Box<[Obj]>),
    Object(Fields),
}

/// An object's fields, sorted by key (no key twice), as `serde_json::Map` iterates them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fields(Box<[(CompactString, Obj)]>);

static NULL: Obj = Obj::Null;

/// An object's fields as (key, value), in key order.
pub type FieldsIter<'a> = std::iter::Map<std::slice::Iter<'a, (CompactString, Obj)>, fn(&'a (CompactString, Obj)) -> (&'a str, &'a Obj)>;

impl<'a> IntoIterator for &'a Fields {
    type Item = (&'a str, &'a Obj);
    type IntoIter = FieldsIter<'a>;
    fn into_iter(self) -> FieldsIter<'a> {
        self.iter()
    }
}

impl Fields {
    /// Fields from pairs in any order; of a key given twice the last is kept, as JSON
    /// parsers (and `serde_json::Map`) do.
    pub fn from_pairs(mut v: Vec<(CompactString, Obj)>) -> Fields {
        v.sort_by(|a, b| a.0.cmp(&b.0));
        // Consecutive equal keys: the earlier slot is kept and takes the later value.
        v.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                std::mem::swap(&mut later.1, &mut kept.1);
            }
            same
        });
        Fields(v.into_boxed_slice())
    }

    pub fn get(&self, key: &str) -> Option<&Obj> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key)).ok().map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn iter(&self) -> FieldsIter<'_> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn keys(&self) -> impl ExactSizeIterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }

    pub fn values(&self) -> impl ExactSizeIterator<Item = &Obj> {
        self.0.iter().map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Obj {
    /// A field of an object (`&str`) or an element of an array (`usize`); none for anything
    /// else, as `Value::get`.
    pub fn get<I: At>(&self, at: I) -> Option<&Obj> {
        at.at(self)
    }

    /// The value at a JSON pointer (RFC 6901), as `Value::pointer`.
    pub fn pointer(&self, pointer: &str) -> Option<&Obj> {
        if pointer.is_empty() {
            return Some(self);
        }
        let rest = pointer.strip_prefix('/')?;
        let mut at = self;
        for token in rest.split('/') {
            let token: std::borrow::Cow<str> = if token.contains('~') { token.replace("~1", "/").replace("~0", "~").into() } else { token.into() };
            at = match at {
                Obj::Object(f) => f.get(&token)?,
                Obj::Array(a) => {
                    // RFC 6901: decimal digits, no leading zero.
                    if token.is_empty() || (token.len() > 1 && token.starts_with('0')) || !token.bytes().all(|b| b.is_ascii_digit()) {
                        return None;
                    }
                    a.get(token.parse::<usize>().ok()?)?
                }
                _ => return None,
            };
        }
        Some(at)
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Obj::String(s) => Some(s.as_str()),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Obj::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Obj::Number(n) => n.as_i64(),
            _ => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Obj::Number(n) => n.as_u64(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Obj::Number(n) => n.as_f64(),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Obj]> {
        match self {
            Obj::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&Fields> {
        match self {
            Obj::Object(f) => Some(f),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Obj::Null)
    }

    pub fn is_object(&self) -> bool {
        matches!(self, Obj::Object(_))
    }

    pub fn is_array(&self) -> bool {
        matches!(self, Obj::Array(_))
    }

    pub fn is_string(&self) -> bool {
        matches!(self, Obj::String(_))
    }

    pub fn is_number(&self) -> bool {
        matches!(self, Obj::Number(_))
    }

    pub fn is_boolean(&self) -> bool {
        matches!(self, Obj::Bool(_))
    }

    /// The same document as a `serde_json::Value`, to build a write from.
    pub fn to_value(&self) -> Value {
        match self {
            Obj::Null => Value::Null,
            Obj::Bool(b) => Value::Bool(*b),
            Obj::Number(n) => Value::Number(n.clone()),
            Obj::String(s) => Value::String(s.as_str().to_owned()),
            Obj::Array(a) => Value::Array(a.iter().map(Obj::to_value).collect()),
            Obj::Object(f) => Value::Object(f.0.iter().map(|(k, v)| (k.as_str().to_owned(), v.to_value())).collect()),
        }
    }

    /// The document from its JSON, every object's `metadata.managedFields` left out, as
    /// `decode::decode` (and with the same limits: anything else is kept whole).
    pub fn decode(bytes: &[u8]) -> serde_json::Result<Obj> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let v = Place::OBJECT.deserialize(&mut de)?;
        de.end()?;
        Ok(v)
    }
}

/// The shared helpers of `api` (selectors, quota scopes) read an `Obj` as they read a `Value`.
impl api::json::Json for Obj {
    fn get(&self, key: &str) -> Option<&Obj> {
        key.at(self)
    }
    fn as_str(&self) -> Option<&str> {
        Obj::as_str(self)
    }
    fn as_i64(&self) -> Option<i64> {
        Obj::as_i64(self)
    }
    fn as_bool(&self) -> Option<bool> {
        Obj::as_bool(self)
    }
    fn as_array(&self) -> Option<&[Obj]> {
        Obj::as_array(self)
    }
    fn entries(&self) -> Option<impl Iterator<Item = (&str, &Obj)>> {
        Some(self.as_object()?.iter())
    }
    fn is_object(&self) -> bool {
        Obj::is_object(self)
    }
    fn is_null(&self) -> bool {
        Obj::is_null(self)
    }
}

/// What `Obj::get` and indexing accept: a key or a position.
pub trait At {
    fn at(self, o: &Obj) -> Option<&Obj>;
}

impl At for &str {
    fn at(self, o: &Obj) -> Option<&Obj> {
        o.as_object()?.get(self)
    }
}

impl At for &String {
    fn at(self, o: &Obj) -> Option<&Obj> {
        o.as_object()?.get(self)
    }
}

impl At for usize {
    fn at(self, o: &Obj) -> Option<&Obj> {
        o.as_array()?.get(self)
    }
}

/// `obj["key"]`: the field, or null when `obj` is not an object or has no such field.
impl std::ops::Index<&str> for Obj {
    type Output = Obj;
    fn index(&self, key: &str) -> &Obj {
        key.at(self).unwrap_or(&NULL)
    }
}

impl std::ops::Index<&String> for Obj {
    type Output = Obj;
    fn index(&self, key: &String) -> &Obj {
        key.at(self).unwrap_or(&NULL)
    }
}

/// `obj[i]`: the element, or null when `obj` is not an array or is shorter.
impl std::ops::Index<usize> for Obj {
    type Output = Obj;
    fn index(&self, i: usize) -> &Obj {
        i.at(self).unwrap_or(&NULL)
    }
}

impl PartialEq<str> for Obj {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == Some(other)
    }
}

impl PartialEq<&str> for Obj {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == Some(*other)
    }
}

impl PartialEq<String> for Obj {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == Some(other.as_str())
    }
}

impl PartialEq<bool> for Obj {
    fn eq(&self, other: &bool) -> bool {
        self.as_bool() == Some(*other)
    }
}

impl PartialEq<i64> for Obj {
    fn eq(&self, other: &i64) -> bool {
        self.as_i64() == Some(*other)
    }
}

impl PartialEq<Obj> for str {
    fn eq(&self, other: &Obj) -> bool {
        other == self
    }
}

impl PartialEq<Obj> for &str {
    fn eq(&self, other: &Obj) -> bool {
        other == *self
    }
}

impl PartialEq<Obj> for String {
    fn eq(&self, other: &Obj) -> bool {
        other == self
    }
}

/// The same document, without building either as the other.
impl PartialEq<Value> for Obj {
    fn eq(&self, v: &Value) -> bool {
        match (self, v) {
            (Obj::Null, Value::Null) => true,
            (Obj::Bool(a), Value::Bool(b)) => a == b,
            (Obj::Number(a), Value::Number(b)) => a == b,
            (Obj::String(a), Value::String(b)) => a.as_str() == b.as_str(),
            (Obj::Array(a), Value::Array(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y),
            (Obj::Object(a), Value::Object(b)) => a.len() == b.len() && a.iter().zip(b).all(|((ka, va), (kb, vb))| ka == kb && va == vb),
            _ => false,
        }
    }
}

impl PartialEq<Obj> for Value {
    fn eq(&self, o: &Obj) -> bool {
        o == self
    }
}

impl From<&Value> for Obj {
    fn from(v: &Value) -> Obj {
        match v {
            Value::Null => Obj::Null,
            Value::Bool(b) => Obj::Bool(*b),
            Value::Number(n) => Obj::Number(n.clone()),
            Value::String(s) => Obj::String(CompactString::new(s)),
            Value::Array(a) => Obj::Array(a.iter().map(Obj::from).collect()),
            // A `Map` is already sorted with no key twice.
            Value::Object(m) => Obj::Object(Fields(m.iter().map(|(k, v)| (CompactString::new(k), Obj::from(v))).collect())),
        }
    }
}

impl From<Value> for Obj {
    fn from(v: Value) -> Obj {
        Obj::from(&v)
    }
}

impl fmt::Display for Obj {
    /// The compact JSON text, as `Value`'s `Display`.
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let s = serde_json::to_string(self).map_err(|_| fmt::Error)?;
        f.write_str(&s)
    }
}

impl Serialize for Obj {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Obj::Null => s.serialize_unit(),
            Obj::Bool(b) => s.serialize_bool(*b),
            Obj::Number(n) => n.serialize(s),
            Obj::String(x) => s.serialize_str(x),
            Obj::Array(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for x in a.iter() {
                    seq.serialize_element(x)?;
                }
                seq.end()
            }
            Obj::Object(f) => f.serialize(s),
        }
    }
}

impl Serialize for Fields {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.len()))?;
        for (k, v) in self.iter() {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// The whole document, managedFields included.
impl<'de> serde::Deserialize<'de> for Obj {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Obj, D::Error> {
        Place::WHOLE.deserialize(d)
    }
}

/// For `#[serde(deserialize_with)]`: an object of a list or a watch event decoded as
/// `Obj::decode` decodes one, without `metadata.managedFields`.
pub fn lean<'de, D: Deserializer<'de>>(d: D) -> Result<Obj, D::Error> {
    Place::OBJECT.deserialize(d)
}

/// As `lean`, for a list's `items`.
pub fn lean_items<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Obj>, D::Error> {
    struct Items;
    impl<'de> Visitor<'de> for Items {
        type Value = Vec<Obj>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list's items")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Vec<Obj>, A::Error> {
            // The hint is the parser's guess, bounded so that a hostile one costs nothing.
            let mut v = Vec::with_capacity(a.size_hint().unwrap_or(0).min(4096));
            while let Some(x) = a.next_element_seed(Place::OBJECT)? {
                v.push(x);
            }
            Ok(v)
        }
        fn visit_unit<E>(self) -> Result<Vec<Obj>, E> {
            Ok(Vec::new())
        }
    }
    d.deserialize_any(Items)
}

/// Where in the document the parser is: a place `decode::Shape` names (its rule decides
/// which keys are looked into and which left out), or none: anything, kept whole.
#[derive(Clone, Copy)]
struct Place(Option<Shape>);

impl Place {
    const OBJECT: Place = Place(Some(Shape::Object));
    const WHOLE: Place = Place(None);
}

impl<'de> DeserializeSeed<'de> for Place {
    type Value = Obj;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Obj, D::Error> {
        d.deserialize_any(self)
    }
}

/// A key, inline when short; borrowed from the input where the parser can.
struct Key(CompactString);

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E>(self, s: &str) -> Result<Key, E> {
                Ok(Key(CompactString::new(s)))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Visitor<'de> for Place {
    type Value = Obj;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Obj, A::Error> {
        let mut fields = Vec::with_capacity(a.size_hint().unwrap_or(0).min(64));
        while let Some(Key(k)) = a.next_key::<Key>()? {
            let place = match self.0.map(|shape| shape.child(&k)) {
                Some(Child::At(shape)) => Place(Some(shape)),
                Some(Child::Skipped) => {
                    a.next_value::<IgnoredAny>()?;
                    continue;
                }
                Some(Child::Whole) | None => Place::WHOLE,
            };
            let v = a.next_value_seed(place)?;
            fields.push((k, v));
        }
        Ok(Obj::Object(Fields::from_pairs(fields)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Obj, A::Error> {
        let item = Place(self.0.and_then(Shape::element));
        let mut v = Vec::with_capacity(a.size_hint().unwrap_or(0).min(4096));
        while let Some(x) = a.next_element_seed(item)? {
            v.push(x);
        }
        Ok(Obj::Array(v.into_boxed_slice()))
    }

    fn visit_unit<E>(self) -> Result<Obj, E> {
        Ok(Obj::Null)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Obj, E> {
        Ok(Obj::Bool(b))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Obj, E> {
        Ok(Obj::Number(n.into()))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Obj, E> {
        Ok(Obj::Number(n.into()))
    }
    fn visit_f64<E>(self, n: f64) -> Result<Obj, E> {
        Ok(Number::from_f64(n).map_or(Obj::Null, Obj::Number))
    }
    fn visit_str<E>(self, s: &str) -> Result<Obj, E> {
        Ok(Obj::String(CompactString::new(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Value {
        json!({
            "kind": "Pod",
            "metadata": {"name": "a-very-long-pod-name-that-is-not-inline", "namespace": "ns", "labels": {"z": "1", "a": "2"}, "ownerReferences": [{"uid": "u", "controller": true}]},
            "spec": {"nodeName": "n1", "priority": -5, "weight": 2.5, "big": 18446744073709551615u64, "none": null, "containers": [{"name": "c", "ports": [{"containerPort": 80}]}]},
        })
    }

    #[test]
    fn reads_as_the_value_it_came_from() {
        let v = sample();
        let o = Obj::decode(v.to_string().as_bytes()).unwrap();
        assert_eq!(o.to_value(), v, "decode then to_value is the identity");
        assert_eq!(Obj::from(&v), o);
        assert!(o == v && v == o && o["spec"] == v["spec"] && o["spec"] != v["metadata"], "compares with a Value as a Value would");
        assert_eq!(serde_json::to_value(&o).unwrap(), v, "Serialize writes the same document");
        assert_eq!(o.to_string(), v.to_string(), "Display is Value's compact text, keys in the same order");
        assert_eq!(o["metadata"]["name"], "a-very-long-pod-name-that-is-not-inline");
        assert!(o["spec"]["nodeName"] == "n1" && "n1" == o["spec"]["nodeName"] && o["spec"]["nodeName"] == "n1".to_string());
        assert_eq!(o["spec"]["priority"].as_i64(), Some(-5));
        assert_eq!(o["spec"]["weight"].as_f64(), Some(2.5));
        assert_eq!(o["spec"]["big"].as_u64(), Some(u64::MAX));
        assert!(o["spec"]["none"].is_null() && o["spec"]["absent"].is_null() && o["kind"]["not-an-object"].is_null());
        assert_eq!(o["metadata"]["ownerReferences"][0]["controller"], true);
        assert!(o["metadata"]["ownerReferences"][7].is_null());
        assert_eq!(o.pointer("/spec/containers/0/ports/0/containerPort").and_then(Obj::as_u64), Some(80));
        assert!(o.pointer("/spec/containers/00").is_none() && o.pointer("spec").is_none());
        assert_eq!(o.get("spec").and_then(|s| s.get("containers")).and_then(|c| c.get(0)).map(|c| &c["name"]), Some(&Obj::String("c".into())));
        let labels: Vec<(&str, &str)> = o["metadata"]["labels"].as_object().unwrap().iter().map(|(k, v)| (k, v.as_str().unwrap())).collect();
        assert_eq!(labels, [("a", "2"), ("z", "1")], "fields iterate sorted, as Value's");
    }

    #[test]
    fn a_key_given_twice_keeps_the_last_value() {
        let o = Obj::decode(br#"{"b":1,"a":1,"b":2,"c":3,"b":4}"#).unwrap();
        assert_eq!(o.to_value(), json!({"a": 1, "b": 4, "c": 3}));
        assert_eq!(o["b"], 4);
    }

    #[test]
    fn pointer_tokens_are_unescaped() {
        let o = Obj::from(json!({"metadata": {"annotations": {"a/b": "slash", "c~d": "tilde"}}}));
        assert_eq!(o.pointer("/metadata/annotations/a~1b").and_then(Obj::as_str), Some("slash"));
        assert_eq!(o.pointer("/metadata/annotations/c~0d").and_then(Obj::as_str), Some("tilde"));
        assert_eq!(o.pointer(""), Some(&o));
    }

    #[test]
    fn managed_fields_are_left_out_of_objects_lists_and_events_only_where_asked() {
        let obj = r#"{"kind":"Pod","metadata":{"name":"a","managedFields":[{"manager":"m","fieldsV1":{"f:spec":{}}}]},"spec":{"managedFields":1}}"#;
        let lean = json!({"kind": "Pod", "metadata": {"name": "a"}, "spec": {"managedFields": 1}});
        assert_eq!(Obj::decode(obj.as_bytes()).unwrap().to_value(), lean);
        let ev = format!(r#"{{"type":"ADDED","object":{obj}}}"#);
        assert_eq!(Obj::decode(ev.as_bytes()).unwrap()["object"].to_value(), lean);
        #[derive(serde::Deserialize)]
        struct List {
            #[serde(deserialize_with = "lean_items")]
            items: Vec<Obj>,
        }
        let list: List = serde_json::from_str(&format!(r#"{{"items":[{obj},{obj}]}}"#)).unwrap();
        assert!(list.items.len() == 2 && list.items.iter().all(|i| i.to_value() == lean));
        let whole: Obj = serde_json::from_str(obj).unwrap();
        assert!(whole["metadata"].get("managedFields").is_some(), "plain Deserialize keeps everything");
    }

    #[test]
    fn a_value_is_small_and_short_strings_are_inline() {
        assert_eq!(std::mem::size_of::<Obj>(), 24);
        let Obj::String(s) = Obj::from(json!("abcdefghijklmnopqrstuvwx")) else { panic!() };
        assert!(!s.is_heap_allocated(), "24 bytes fit inline");
    }
}
