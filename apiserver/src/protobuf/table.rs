//! The shape of the generated field table (`fields.rs`): for each protobuf message a kind may
//! hold, its fields by tag with their JSON names and types.

use super::fields::{KINDS, MESSAGES};

/// What a field holds on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    Str,
    Bytes,
    I32,
    I64,
    Bool,
    F64,
    /// A message, by index in `MESSAGES`.
    Msg(u16),
    /// `map<string, string>`
    MapStr,
    /// `map<string, bytes>`
    MapBytes,
    /// `map<string, message>`
    MapMsg(u16),
}

/// How a message becomes JSON: an object of its fields, or a Go type with its own JSON form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Special {
    Object,
    /// `resource.Quantity`: its string.
    Quantity,
    /// `meta/v1.Time`: RFC 3339 to the second.
    Time,
    /// `meta/v1.MicroTime`: RFC 3339 to the microsecond.
    MicroTime,
    /// `intstr.IntOrString`: a number or a string.
    IntOrString,
    /// `RawExtension`, `FieldsV1`, apiextensions' `JSON`: the JSON document in its bytes.
    Raw,
    /// `JSONSchemaPropsOrArray`: a schema or a list of them.
    SchemaOrArray,
    /// `JSONSchemaPropsOrBool`: a schema or a boolean.
    SchemaOrBool,
    /// `JSONSchemaPropsOrStringArray`: a schema or a list of strings.
    SchemaOrStrings,
    /// A Go slice type wrapped as `{ repeated items = 1 }` (`ExtraValue`): the list.
    Items,
}

#[derive(Debug)]
pub struct Field {
    pub tag: u32,
    /// The JSON name; empty for a Go struct embedded inline (its fields join the outer object).
    pub json: &'static str,
    pub ty: Ty,
    pub repeated: bool,
    /// A zero value is left out: a Go non-pointer `omitempty` field, which Go's protobuf
    /// writes even when zero and Go's JSON leaves out (a pointer field set to zero, such as
    /// `replicas: 0`, is kept).
    pub omit_zero: bool,
}

#[derive(Debug)]
pub struct Message {
    /// The OpenAPI definition's name (`io.k8s.api.core.v1.Pod`).
    pub name: &'static str,
    pub special: Special,
    /// In tag order.
    pub fields: &'static [Field],
}

impl Message {
    pub fn field(&self, tag: u32) -> Option<&'static Field> {
        let fields: &'static [Field] = self.fields;
        fields.binary_search_by_key(&tag, |f| f.tag).ok().map(|i| &fields[i])
    }
}

pub fn message(i: u16) -> &'static Message {
    &MESSAGES[i as usize]
}

/// The message of a kind a client may send, by its envelope's apiVersion and kind.
pub fn kind(api_version: &str, kind: &str) -> Option<&'static Message> {
    KINDS.binary_search_by(|(a, k, _)| (*a, *k).cmp(&(api_version, kind))).ok().map(|i| message(KINDS[i].2))
}
