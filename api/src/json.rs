//! `Json`: reading a JSON document whatever holds it, so that the helpers here serve the API
//! server (`serde_json::Value`) and the controllers' informers (`client::obj::Obj`, compact
//! and read-only) with one body. The methods are named as `Value`'s, so a helper's body
//! reads as it would over a `Value`.

use std::ops::Index;

use serde_json::Value;

pub trait Json: Sized + for<'a> Index<&'a str, Output = Self> + Index<usize, Output = Self> {
    /// A field of an object; none for anything else.
    fn get(&self, key: &str) -> Option<&Self>;
    fn as_str(&self) -> Option<&str>;
    fn as_i64(&self) -> Option<i64>;
    fn as_bool(&self) -> Option<bool>;
    fn as_array(&self) -> Option<&[Self]>;
    /// An object's fields in key order; none for anything else.
    fn entries(&self) -> Option<impl Iterator<Item = (&str, &Self)>>;
    fn is_object(&self) -> bool;
    fn is_null(&self) -> bool;
}

impl Json for Value {
    fn get(&self, key: &str) -> Option<&Value> {
        self.as_object()?.get(key)
    }
    fn as_str(&self) -> Option<&str> {
        Value::as_str(self)
    }
    fn as_i64(&self) -> Option<i64> {
        Value::as_i64(self)
    }
    fn as_bool(&self) -> Option<bool> {
        Value::as_bool(self)
    }
    fn as_array(&self) -> Option<&[Value]> {
        Value::as_array(self).map(Vec::as_slice)
    }
    fn entries(&self) -> Option<impl Iterator<Item = (&str, &Value)>> {
        Some(self.as_object()?.iter().map(|(k, v)| (k.as_str(), v)))
    }
    fn is_object(&self) -> bool {
        Value::is_object(self)
    }
    fn is_null(&self) -> bool {
        Value::is_null(self)
    }
}
