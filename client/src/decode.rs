//! Decoding what the API server sends, without `metadata.managedFields`.
//!
//! No component reads managedFields (they serve server-side apply, which the API server does),
//! yet they are about half of a pod's JSON once a controller, the scheduler and a kubelet have
//! written it. Every informer, the scheduler and the kubelets decode every watch event, so the
//! field is skipped while parsing (scanned, never allocated) — client-go users get the same by
//! an informer transform that strips it. Updates stay correct: the API server keeps an
//! object's managedFields when a write leaves them out, as Kubernetes does.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// A response body, a list, or a watch event, with every object's managedFields left out.
pub fn decode(bytes: &[u8]) -> serde_json::Result<Value> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    match Shape::Object.deserialize(&mut de).and_then(|v| de.end().map(|()| v)) {
        Ok(v) => Ok(v),
        // Not an object at the top (never the case for the API server): plain JSON.
        Err(_) => serde_json::from_slice(bytes),
    }
}

/// A document decoded as `decode` decodes one, for a field of a typed struct: a watch event
/// read as `{"type": String, "object": Lean}` builds its object without managedFields.
#[derive(Debug, Clone, PartialEq)]
pub struct Lean(pub Value);

impl<'de> serde::Deserialize<'de> for Lean {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Lean, D::Error> {
        Shape::Object.deserialize(d).map(Lean)
    }
}

/// For `#[serde(deserialize_with)]` on a field that is an object in the objects a reader wants
/// and may be something else in a watch's ERROR event, whose object is a `Status` (its
/// `status` is a string): a map decodes as `T`, a string or `null` as none, so the event
/// still decodes and its reader sees the ERROR.
pub fn object_or_none<'de, D: Deserializer<'de>, T: serde::Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    struct V<T>(std::marker::PhantomData<T>);
    impl<'de, T: serde::Deserialize<'de>> Visitor<'de> for V<T> {
        type Value = Option<T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object, or a Status's status string")
        }
        fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<Option<T>, A::Error> {
            T::deserialize(serde::de::value::MapAccessDeserializer::new(m)).map(Some)
        }
        fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }
    }
    d.deserialize_any(V(std::marker::PhantomData))
}

/// Where in the document the parser is: which keys get special treatment. `obj::Obj`'s
/// decoding follows the same places (`child`, `element`).
#[derive(Clone, Copy)]
pub(crate) enum Shape {
    /// An object, a list or a watch event: `metadata`, `items` and `object` are looked into.
    Object,
    /// An object's metadata: `managedFields` is skipped.
    Metadata,
    /// A list's items: each is an `Object`.
    Items,
}

/// What the value of a key is, in an object at some `Shape`.
pub(crate) enum Child {
    /// Looked into, at this place.
    At(Shape),
    /// Left out (scanned, never built).
    Skipped,
    /// Kept whole.
    Whole,
}

impl Shape {
    /// The rule itself: lists' items, events' objects and objects' metadata are looked into,
    /// and metadata's managedFields left out.
    pub(crate) fn child(self, key: &str) -> Child {
        match (self, key) {
            (Shape::Object, "metadata") => Child::At(Shape::Metadata),
            (Shape::Object, "object") => Child::At(Shape::Object),
            (Shape::Object, "items") => Child::At(Shape::Items),
            (Shape::Metadata, "managedFields") => Child::Skipped,
            _ => Child::Whole,
        }
    }

    /// Where an array's elements are: a list's items are objects; any other array (where an
    /// object was expected) is kept whole.
    pub(crate) fn element(self) -> Option<Shape> {
        match self {
            Shape::Items => Some(Shape::Object),
            Shape::Object | Shape::Metadata => None,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Shape {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Shape {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
        let mut m = Map::new();
        while let Some(k) = a.next_key::<String>()? {
            let v = match self.child(&k) {
                Child::At(shape) => a.next_value_seed(shape)?,
                Child::Skipped => {
                    a.next_value::<IgnoredAny>()?;
                    continue;
                }
                Child::Whole => a.next_value::<Value>()?,
            };
            m.insert(k, v);
        }
        Ok(Value::Object(m))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
        let Some(item) = self.element() else {
            return serde::Deserialize::deserialize(serde::de::value::SeqAccessDeserializer::new(a));
        };
        let mut v = Vec::with_capacity(a.size_hint().unwrap_or(0));
        while let Some(x) = a.next_element_seed(item)? {
            v.push(x);
        }
        Ok(Value::Array(v))
    }

    // Anything else where an object was expected (null items, a string...) is kept as it is.
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(n.into())
    }
    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(n.into())
    }
    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }
    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MF: &str = r#"[{"manager":"m","operation":"Update","fieldsV1":{"f:spec":{"f:x":{}}}}]"#;

    #[test]
    fn managed_fields_are_left_out_of_objects_lists_and_events() {
        let obj = format!(r#"{{"kind":"Pod","metadata":{{"name":"a","managedFields":{MF},"labels":{{"k":"v"}}}},"spec":{{"managedFields":1}}}}"#);
        let v = decode(obj.as_bytes()).unwrap();
        assert_eq!(v, json!({"kind": "Pod", "metadata": {"name": "a", "labels": {"k": "v"}}, "spec": {"managedFields": 1}}));
        let list = format!(r#"{{"kind":"PodList","metadata":{{"resourceVersion":"5"}},"items":[{obj},{obj}]}}"#);
        let v = decode(list.as_bytes()).unwrap();
        assert_eq!(v["items"].as_array().unwrap().len(), 2);
        assert!(v["items"].as_array().unwrap().iter().all(|i| i["metadata"].get("managedFields").is_none() && i["metadata"]["name"] == "a"));
        let ev = format!(r#"{{"type":"MODIFIED","object":{obj}}}"#);
        let v = decode(ev.as_bytes()).unwrap();
        assert_eq!(v["type"], "MODIFIED");
        assert_eq!(v["object"]["metadata"], json!({"name": "a", "labels": {"k": "v"}}));
    }

    #[test]
    fn a_lean_field_leaves_managed_fields_out() {
        #[derive(serde::Deserialize)]
        struct Event {
            #[serde(rename = "type")]
            ty: String,
            object: Lean,
        }
        let ev: Event = serde_json::from_str(&format!(r#"{{"type":"ADDED","object":{{"metadata":{{"name":"a","managedFields":{MF}}},"spec":{{"x":[1]}}}}}}"#)).unwrap();
        assert_eq!(ev.ty, "ADDED");
        assert_eq!(ev.object.0, json!({"metadata": {"name": "a"}, "spec": {"x": [1]}}));
    }

    #[test]
    fn everything_else_decodes_as_plain_json() {
        for doc in [r#"{"items":null,"metadata":null,"object":"x"}"#, r#"{"items":[1,"a",null,[2]]}"#, r#"[1,2]"#, r#""s""#, "3", r#"{"a":1.5,"b":-2,"c":true}"#] {
            assert_eq!(decode(doc.as_bytes()).unwrap(), serde_json::from_str::<Value>(doc).unwrap(), "{doc}");
        }
        assert!(decode(b"{\"a\":").is_err());
        assert!(decode(b"{} trailing").is_err());
    }
}
