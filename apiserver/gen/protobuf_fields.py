#!/usr/bin/env python3
"""Generates apiserver/src/protobuf/fields.rs: the protobuf field table of every built-in
Kubernetes kind a client may send as a request body, so that the server decodes any of them
into the JSON it handles (`protobuf::to_json`).

Sources, both read, neither copied:
- the `k8s-pb` crate (a dependency, found with `cargo metadata`): its prost-generated
  structs give each message's fields, their protobuf tags and wire types, and the message each
  field holds (Kubernetes' `generated.proto` files, compiled);
- the PyPI package `kubernetes-validate`'s JSON schema definitions (as patch_meta.py): the JSON
  name of each field (protobuf names differ from JSON ones: `uID` is `uid`, `ref` is `$ref`)
  and each kind's group-version-kinds.

- the Go types of `k8s.io/api` and `k8s.io/apimachinery` (checkouts given with --k8s-api and
  --k8s-apimachinery): for each field, by its protobuf tag, whether it is a pointer and
  `omitempty`. Go's protobuf writes a non-pointer field even when it is zero, and Go's JSON
  leaves a zero `omitempty` field out; a pointer field set to zero (`replicas: 0`,
  `allowPrivilegeEscalation: false`) is written by both. Such fields are marked so that
  the decoder leaves their zero values out, as a Go client's JSON would.

Only facts are written: message and field names, tags, types, the zero rule. Messages are
those reachable from a kind (an object with ObjectMeta, or DeleteOptions) of a group-version
the schemas know.

Usage (from the repository root):
    python3 -m pip install kubernetes-validate==1.37.0
    git clone https://github.com/kubernetes/api K8S_API; git clone https://github.com/kubernetes/apimachinery K8S_AM
    python3 apiserver/gen/protobuf_fields.py --k8s-api K8S_API --k8s-apimachinery K8S_AM
    python3 apiserver/gen/protobuf_fields.py ... --check   # exits 1 if the file is out of date
"""

import argparse
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from patch_meta import MODULE, PACKAGE, SCHEMA_VERSION, definitions_path, rust_str  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent.parent
OUTPUT = ROOT / "apiserver" / "src" / "protobuf" / "fields.rs"
COMMAND = "python3 apiserver/gen/protobuf_fields.py"

# k8s-pb's top-level modules and the OpenAPI name prefixes of the Go packages they hold.
PREFIXES = {
    "api": "io.k8s.api",
    "apimachinery": "io.k8s.apimachinery",
    "apiextensions_apiserver": "io.k8s.apiextensions-apiserver",
    "kube_aggregator": "io.k8s.kube-aggregator",
}

# Messages whose JSON form is not an object of their fields (Go types with their own JSON
# marshalling), by OpenAPI name -> the decoder's `Special` variant.
SPECIAL = {
    "io.k8s.apimachinery.pkg.api.resource.Quantity": "Quantity",
    "io.k8s.apimachinery.pkg.apis.meta.v1.Time": "Time",
    "io.k8s.apimachinery.pkg.apis.meta.v1.MicroTime": "MicroTime",
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": "IntOrString",
    "io.k8s.apimachinery.pkg.runtime.RawExtension": "Raw",
    "io.k8s.apimachinery.pkg.apis.meta.v1.FieldsV1": "Raw",
    "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSON": "Raw",
    "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrArray": "SchemaOrArray",
    "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrBool": "SchemaOrBool",
    "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrStringArray": "SchemaOrStrings",
}
# Go types with their own JSON form that no kind holds today: the decoder has no case for
# them, so the generator stops if one becomes reachable.
UNHANDLED = {"io.k8s.apimachinery.pkg.apis.meta.v1.Duration"}
# Go slice types (`type ExtraValue []string`) that protobuf wraps as `{ repeated items = 1 }`:
# their JSON is the list itself. Recognised by shape: a message whose only field is `items`
# and whose JSON schema is an array (or that the schemas do not list).

SCALARS = {"string": "Str", "bytes": "Bytes", "int32": "I32", "int64": "I64", "bool": "Bool", "double": "F64"}

STRUCT = re.compile(r"^pub struct (\w+) \{$")
EMPTY = re.compile(r"^pub struct (\w+) \{\}$")
ATTR = re.compile(r"^\s*#\[prost\((.*)\)\]$")
FIELD = re.compile(r"^\s*pub (r#)?(\w+): (.*),$")
FIELD_START = re.compile(r"^\s*pub (r#)?(\w+):")


def crate_src():
    meta = json.loads(subprocess.check_output(["cargo", "metadata", "--format-version", "1"], cwd=ROOT))
    for p in meta["packages"]:
        if p["name"] == "k8s-pb":
            return Path(p["manifest_path"]).parent / "src", p["version"]
    sys.exit("k8s-pb is not a dependency of this workspace")


def parse_module(path, module):
    """Every struct of one prost-generated file: name -> [(tag, rust name, attr, type)]."""
    structs = {}
    cur = None
    attr = None
    pending = None  # a field whose type rustfmt wrapped over several lines
    for line in path.read_text().splitlines():
        if pending is not None:
            pending += " " + line.strip()
            if pending.count("<") > pending.count(">") or not pending.endswith(","):
                continue
            line, pending = "    " + re.sub(r"<\s+", "<", re.sub(r",\s*>", ">", pending)), None
        elif attr is not None and FIELD_START.match(line) and not FIELD.match(line):
            pending = line.strip()
            continue
        m = EMPTY.match(line)
        if m:
            structs.setdefault(m.group(1), [])
            continue
        m = STRUCT.match(line)
        if m:
            cur = structs.setdefault(m.group(1), [])
            continue
        if line == "}":
            if attr is not None:
                sys.exit(f"{path}: a field after #[prost({attr})] was not understood")
            cur = None
            continue
        if cur is None:
            continue
        m = ATTR.match(line)
        if m:
            if attr is not None:
                sys.exit(f"{path}: a field after #[prost({attr})] was not understood")
            attr = m.group(1)
            continue
        m = FIELD.match(line)
        if m and attr is not None:
            tag = int(re.search(r'tag = "(\d+)"', attr).group(1))
            cur.append((tag, m.group(2), attr, m.group(3)))
            attr = None
    return structs


def resolve(module, ty):
    """The module path and name of the message a field's Rust type names."""
    inner = re.sub(r"^::core::option::Option<|^::prost::alloc::vec::Vec<|>$", "", ty)
    inner = re.sub(r"^::prost::alloc::boxed::Box<|>$", "", inner)
    parts = inner.split("::")
    base = list(module)
    while parts and parts[0] == "super":
        base.pop()
        parts.pop(0)
    if len(parts) == 1:
        return tuple(module), parts[0]
    return tuple(base + parts[:-1]), parts[-1]


def target(module, attr, ty):
    """The message a message field, or a map field's values, hold; None for scalars."""
    kind = attr.split(",")[0].split("=")[0].strip()
    if kind == "message":
        return resolve(module, ty)
    if kind == "btree_map" and '"string, message"' in attr:
        return resolve(module, re.search(r",\s*(.*)>$", ty).group(1))
    return None


GO_STRUCT = re.compile(r"^type (\w+) struct \{")
GO_FIELD = re.compile(r'^\s+\w+\s+(\*?)[\w.\[\]*]+\s+`(.*)`')


def go_facts(roots):
    """(Go package dir, struct, protobuf tag) -> (pointer, omitempty), from the Go sources."""
    facts = {}
    for root, prefix in roots:
        for f in sorted(Path(root).rglob("*.go")):
            if f.name.endswith("_test.go") or f.name.startswith("zz_generated") or f.name.endswith(".pb.go"):
                continue
            pkg = prefix + "/".join(f.relative_to(root).parts[:-1])
            struct = None
            for line in f.read_text(errors="replace").splitlines():
                m = GO_STRUCT.match(line)
                if m:
                    struct = m.group(1)
                    continue
                if line.startswith("}"):
                    struct = None
                    continue
                if struct is None:
                    continue
                m = GO_FIELD.match(line)
                if not m:
                    continue
                tags = m.group(2)
                pb = re.search(r'protobuf:"\w+,(\d+),', tags)
                js = re.search(r'json:"([^"]*)"', tags)
                if pb and js:
                    facts[(pkg, struct, int(pb.group(1)))] = (m.group(1) == "*", "omitempty" in js.group(1).split(",")[1:])
    return facts


def norm(name):
    return re.sub(r"[^a-z0-9]", "", name.lower())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--k8s-api", required=True, help="a checkout of github.com/kubernetes/api")
    ap.add_argument("--k8s-apimachinery", required=True, help="a checkout of github.com/kubernetes/apimachinery")
    args = ap.parse_args()
    facts = go_facts([(args.k8s_api, "api/"), (args.k8s_apimachinery, "apimachinery/")])
    if len(facts) < 3000:
        sys.exit(f"only {len(facts)} Go fields found under {args.k8s_api} and {args.k8s_apimachinery}")

    src, pb_version = crate_src()
    defs_file = definitions_path(SCHEMA_VERSION)
    defs = json.loads(defs_file.read_text())["$defs"]
    by_norm = {}
    for name in defs:
        pkg, _, short = name.rpartition(".")
        by_norm[(pkg, short.lower())] = name

    # Every message of the crate, keyed by (module path, struct name).
    messages = {}
    for f in sorted(src.rglob("mod.rs")):
        rel = f.relative_to(src).parts[:-1]
        if not rel or rel[0] not in PREFIXES:
            continue
        for name, fields in parse_module(f, rel).items():
            messages[(rel, name)] = fields

    def openapi_name(key):
        module, name = key
        pkg = PREFIXES[module[0]] + "." + ".".join(module[1:])
        return by_norm.get((pkg, name.lower()), pkg + "." + name)

    # The kinds: messages whose definition carries group-version-kinds and that are objects
    # (ObjectMeta at tag 1) or DeleteOptions.
    kinds = []
    for key, fields in messages.items():
        oname = openapi_name(key)
        d = defs.get(oname)
        if not d or "x-kubernetes-group-version-kind" not in d:
            continue
        meta = any(t == 1 and n == "metadata" and "ObjectMeta" in ty for t, n, _, ty in fields)
        if not (meta or key[1] == "DeleteOptions") or key[1].endswith("List"):
            continue
        for gvk in d["x-kubernetes-group-version-kind"]:
            av = gvk["version"] if not gvk["group"] else gvk["group"] + "/" + gvk["version"]
            kinds.append((av, gvk["kind"], key))

    # The closure of messages reachable from the kinds, numbered in a stable order.
    order = []
    index = {}
    todo = sorted({k for _, _, k in kinds})
    while todo:
        key = todo.pop(0)
        if key in index:
            continue
        if key not in messages:
            sys.exit(f"message {key} is referenced but not found")
        if openapi_name(key) in UNHANDLED:
            sys.exit(f"{openapi_name(key)} is now reachable from a kind: give the decoder a case for it")
        index[key] = len(order)
        order.append(key)
        if openapi_name(key) in SPECIAL:
            continue
        for _, _, attr, ty in messages[key]:
            t = target(key[0], attr, ty)
            if t is not None:
                todo.append(t)

    def flat_names(key):
        """A message's field names, with those of messages it embeds inline (by the same rule)."""
        props = {norm(p) for p in (defs.get(openapi_name(key), {}).get("properties") or {})}
        out = []
        for _, n, attr, ty in messages[key]:
            inner = target(key[0], attr, ty)
            if norm(n) not in props and inner is not None and attr.startswith("message"):
                sub = flat_names(inner)
                if sub and 2 * sum(x in props for x in sub) > len(sub):
                    out.extend(sub)
                    continue
            out.append(norm(n))
        return out

    def go_package(module):
        """k8s-pb's module path as the Go package directory the facts are keyed by."""
        if module[0] == "api":
            return "api/" + "/".join(module[1:])
        if module[0] == "apimachinery":
            return "apimachinery/" + "/".join(module[1:])
        return None

    def go_name(key):
        """The Go type of a message: its OpenAPI name's last part (prost renames acronyms)."""
        return openapi_name(key).rpartition(".")[2]

    # A Go struct embedded inline has no definition of its own (VolumeSource, ProbeHandler):
    # its fields are named by the definition of the struct that embeds it.
    adopted = {}

    def props_of(key):
        return (defs.get(openapi_name(key), {}).get("properties") or {}) or adopted.get(key, {})

    for _ in range(3):
        for key in order:
            props = props_of(key)
            pn = {norm(p) for p in props}
            for _, n, attr, ty in messages[key]:
                inner = target(key[0], attr, ty)
                if not props or norm(n) in pn or inner is None or not attr.startswith("message"):
                    continue
                names = flat_names(inner)
                if names and 2 * sum(x in pn for x in names) > len(names) and openapi_name(inner) not in defs:
                    adopted.setdefault(inner, {}).update(props)

    unmatched = []
    rows = []
    for key in order:
        oname = openapi_name(key)
        d = defs.get(oname, {})
        props = props_of(key)
        pnorm = {norm(p): p for p in props}
        special = SPECIAL.get(oname)
        fields = []
        for tag, rname, attr, ty in sorted(messages[key]):
            kind = attr.split(",")[0].split("=")[0].strip()
            repeated = ", repeated" in attr
            if kind == "message":
                t = f"T::Msg({index[target(key[0], attr, ty)]})"
            elif kind == "btree_map":
                mv = re.search(r'btree_map = "string, (\w+)"', attr).group(1)
                t = {"string": "T::MapStr", "bytes": "T::MapBytes"}.get(mv) or f"T::MapMsg({index[target(key[0], attr, ty)]})"
            else:
                t = "T::" + SCALARS[kind]
            json_name = pnorm.get(norm(rname))
            inline = False
            if json_name is None and kind == "message" and props:
                # Go structs embedded with `json:",inline"` (a Volume's VolumeSource, a
                # Probe's ProbeHandler) are one nested message in protobuf, flat in JSON.
                # Recognised by the inner message's fields being (nearly all: some are newer
                # than the schemas) the outer one's.
                names = flat_names(target(key[0], attr, ty))
                inline = bool(names) and 2 * sum(n in pnorm for n in names) > len(names)
                if inline:
                    json_name = ""
            if json_name is None:
                if props and not special:
                    # A field newer than the API served (the crate follows a later Kubernetes):
                    # left out, so it is skipped as an unknown tag, as Kubernetes of the
                    # served version skips it.
                    unmatched.append(f"{oname}.{rname}")
                    continue
                # Messages the schemas do not list (Time, IntOrString, ...): lowerCamelCase
                # of the protobuf name; their decoders read them by tag anyway.
                parts = rname.split("_")
                json_name = parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])
            # Zero values left out: of a Go non-pointer `omitempty` field; without Go facts
            # (messages of other repositories), of strings only.
            go = facts.get((go_package(key[0]), go_name(key), tag))
            scalar = t in ("T::Str", "T::Bytes", "T::I32", "T::I64", "T::Bool", "T::F64")
            omit_zero = scalar and not repeated and (go == (False, True) if go is not None else t == "T::Str")
            fields.append((tag, json_name, t, repeated, omit_zero))
        if special is None and len(fields) == 1 and fields[0][1] == "items" and fields[0][3] and d.get("type") in (None, "array"):
            special = "Items"
        rows.append((oname, special or "Object", fields))

    if unmatched:
        print(f"{len(unmatched)} fields left out (not in the {SCHEMA_VERSION} schemas): " + ", ".join(unmatched))

    kinds.sort()
    text = render(rows, kinds, index, pb_version, importlib.metadata.version(PACKAGE))
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT} is out of date: run {COMMAND}")
            sys.exit(1)
        return
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}: {len(rows)} messages, {sum(len(f) for _, _, f in rows)} fields, {len(kinds)} kinds")


def render(rows, kinds, index, pb_version, package_version):
    out = []
    w = out.append
    w(f"// @generated by {COMMAND.split()[-1]} -- do not edit by hand.")
    w("//")
    w(f"// Sources: the crate `k8s-pb` {pb_version} (field tags and types of its prost structs) and the")
    w(f"// PyPI package `{PACKAGE}` {package_version}, `{MODULE}/kubernetes-json-schema/{SCHEMA_VERSION}/_definitions.json`")
    w("// (JSON field names, group-version-kinds), and the Go types of k8s.io/api and k8s.io/apimachinery")
    w("// (which fields are non-pointer `omitempty`). Only names, tags, types and that rule are taken.")
    w("//")
    w("// Regenerate from the repository root with:")
    w(f"//     python3 -m pip install {PACKAGE}=={package_version}")
    w(f"//     {COMMAND} --k8s-api K8S_API --k8s-apimachinery K8S_APIMACHINERY")
    w("")
    w("use super::table::{Field, Message, Special, Ty as T};")
    w("")
    w("const fn f(tag: u32, json: &'static str, ty: T, repeated: bool, omit_zero: bool) -> Field {")
    w("    Field { tag, json, ty, repeated, omit_zero }")
    w("}")
    w("")
    w("/// Every message reachable from a kind, each with its fields in tag order.")
    w("#[rustfmt::skip]")
    w("pub static MESSAGES: &[Message] = &[")
    for oname, special, fields in rows:
        fl = ", ".join(f"f({t}, {rust_str(j)}, {ty}, {'true' if r else 'false'}, {'true' if z else 'false'})" for t, j, ty, r, z in fields)
        w(f"    Message {{ name: {rust_str(oname)}, special: Special::{special}, fields: &[{fl}] }},")
    w("];")
    w("")
    w("/// (apiVersion, kind) -> index in MESSAGES, sorted for binary search.")
    w("#[rustfmt::skip]")
    w("pub static KINDS: &[(&str, &str, u16)] = &[")
    for av, kind, key in kinds:
        w(f"    ({rust_str(av)}, {rust_str(kind)}, {index[key]}),")
    w("];")
    w("")
    w("/// Every kind as the k8s-pb type that decodes it, for the tests that hold the table to the crate.")
    w("#[cfg(test)]")
    w("#[rustfmt::skip]")
    w("macro_rules! for_each_kind {")
    w("    ($m:ident) => {")
    seen = set()
    for av, kind, key in kinds:
        if key in seen:
            continue
        seen.add(key)
        path = "k8s_pb::" + "::".join(key[0]) + "::" + key[1]
        w(f"        $m!({rust_str(av)}, {rust_str(kind)}, {path});")
    w("    };")
    w("}")
    w("#[cfg(test)]")
    w("pub(crate) use for_each_kind;")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
