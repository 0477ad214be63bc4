//! `/openapi/v2` as protobuf (gnostic's `openapi.v2.Document`), for kubectl before 1.28: its
//! `apply` and `create -f` look there for whether the server validates fields. The document
//! holds, for every kind, a PATCH operation with its group-version-kind and a `fieldValidation`
//! query parameter, so kubectl leaves validation to the server. It carries no definitions:
//! kubectl 1.27's `explain` reads them from here and is not served (newer kubectl uses v3).
//!
//! Encoded by hand with the field numbers of gnostic's `OpenAPIv2.proto` (a few nested
//! messages of strings), rather than generating code for the whole schema.

use crate::registry::Registry;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field.
fn bytes_field(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    varint(out, ((field as u64) << 3) | 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn bool_field(out: &mut Vec<u8>, field: u32, v: bool) {
    varint(out, (field as u64) << 3);
    varint(out, v as u64);
}

fn msg(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut v = Vec::new();
    f(&mut v);
    v
}

fn query_param(name: &str) -> Vec<u8> {
    // ParametersItem{parameter=1: Parameter{non_body_parameter=2: NonBodyParameter{
    //   query_parameter_sub_schema=3: {in=2, name=4, type=6, unique_items=20}}}}
    let sub = msg(|m| {
        bytes_field(m, 2, b"query");
        bytes_field(m, 4, name.as_bytes());
        bytes_field(m, 6, b"string");
        bool_field(m, 20, true);
    });
    let non_body = msg(|m| bytes_field(m, 3, &sub));
    let param = msg(|m| bytes_field(m, 2, &non_body));
    msg(|m| bytes_field(m, 1, &param))
}

/// The protobuf document.
pub fn document(reg: &Registry) -> Vec<u8> {
    let mut paths = Vec::new();
    for r in reg.all() {
        let gv = if r.group.is_empty() { format!("api/{}", r.version) } else { format!("apis/{}/{}", r.group, r.version) };
        let path = if r.namespaced {
            format!("/{gv}/namespaces/{{namespace}}/{}/{{name}}", r.resource)
        } else {
            format!("/{gv}/{}/{{name}}", r.resource)
        };
        let gvk_yaml = format!("group: {:?}\nkind: {}\nversion: {}\n", r.group, r.kind, r.version);
        // NamedAny{name=1, value=2: Any{yaml=2}}
        let ext = msg(|m| {
            bytes_field(m, 1, b"x-kubernetes-group-version-kind");
            bytes_field(m, 2, &msg(|a| bytes_field(a, 2, gvk_yaml.as_bytes())));
        });
        // Operation{operation_id=5, parameters=8 (repeated), vendor_extension=13}
        let op = msg(|m| {
            bytes_field(m, 5, format!("patch{}", r.kind).as_bytes());
            for p in ["fieldValidation", "dryRun", "fieldManager"] {
                bytes_field(m, 8, &query_param(p));
            }
            bytes_field(m, 13, &ext);
        });
        // NamedPathItem{name=1, value=2: PathItem{patch=8}}
        let item = msg(|m| {
            bytes_field(m, 1, path.as_bytes());
            bytes_field(m, 2, &msg(|p| bytes_field(p, 8, &op)));
        });
        paths.push(item);
    }
    msg(|d| {
        bytes_field(d, 1, b"2.0");
        bytes_field(d, 2, &msg(|i| {
            bytes_field(i, 1, b"Kubernetes");
            bytes_field(i, 2, b"v1.33.0");
        }));
        // Paths{path=2 (repeated)}
        bytes_field(d, 8, &msg(|p| {
            for item in &paths {
                bytes_field(p, 2, item);
            }
        }));
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_fields_encode_as_protobuf_does() {
        let mut v = Vec::new();
        varint(&mut v, 300);
        assert_eq!(v, vec![0xac, 0x02]);
        let mut f = Vec::new();
        bytes_field(&mut f, 1, b"2.0");
        assert_eq!(f, vec![0x0a, 3, b'2', b'.', b'0']);
        let doc = document(&Registry::new());
        assert!(doc.starts_with(&[0x0a, 3, b'2', b'.', b'0']));
        assert!(doc.windows(15).any(|w| w == b"fieldValidation"));
    }
}
