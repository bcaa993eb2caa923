#!/usr/bin/env python3
"""Generates cluster/apiserver/schemas/protobuf-fields-v1.33.json.gz: the protobuf field numbers
and types of every Kubernetes API message, keyed by the definition names of the vendored OpenAPI
definitions, with each field's JSON name.

Input: the source of the `k8s-pb` crate (Kubernetes' generated.proto compiled by prost), found in
the cargo registry (run `cargo fetch` first), and the vendored definitions for JSON names.

Usage: scripts/gen-protobuf-fields.py [K8S_PB_SRC_DIR]
"""
import glob
import gzip
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMAS = os.path.join(ROOT, "cluster/apiserver/schemas")

# module path of the crate -> definition name prefix
PREFIXES = [
    ("api/", "io.k8s.api."),
    ("apimachinery/", "io.k8s.apimachinery."),
    ("apiextensions_apiserver/", "io.k8s.apiextensions-apiserver."),
    ("kube_aggregator/", "io.k8s.kube-aggregator."),
    ("metrics/", "io.k8s.metrics."),
]

ATTR = re.compile(r'#\[prost\((?P<kind>[a-z0-9_]+)(?: = "(?P<map>[^"]*)")?(?:, (?P<label>optional|repeated|required))?(?:, packed = "[a-z]+")?, tag = "(?P<tag>\d+)"\)\]')
FIELD = re.compile(r'pub (?:r#)?(?P<name>[a-z0-9_]+): (?P<type>.+),$')
STRUCT = re.compile(r'pub struct (?P<name>[A-Za-z0-9]+) \{')


def module_of(path, src):
    rel = os.path.relpath(os.path.dirname(path), src).replace(os.sep, "/") + "/"
    for crate_prefix, def_prefix in PREFIXES:
        if rel.startswith(crate_prefix):
            return rel[:-1].split("/"), def_prefix + rel[len(crate_prefix):-1].replace("/", ".")
    return None, None


def resolve(type_text, module_parts, canonical):
    """Definition name of a message type referenced from a module."""
    inner = re.sub(r"\s+", "", type_text).replace(",>", ">")
    for wrapper in ("::core::option::Option<", "::prost::alloc::vec::Vec<", "::prost::alloc::boxed::Box<"):
        while inner.startswith(wrapper):
            inner = inner[len(wrapper):-1]
    if inner.startswith("::prost::alloc::collections::BTreeMap<"):
        inner = inner[len("::prost::alloc::collections::BTreeMap<"):-1].split(",", 1)[1]
    parts = inner.split("::")
    base = list(module_parts)
    while parts and parts[0] == "super":
        parts.pop(0)
        base.pop()
    path = base + parts[:-1]
    rel = "/".join(path) + "/"
    for crate_prefix, def_prefix in PREFIXES:
        if rel.startswith(crate_prefix):
            name = def_prefix + ".".join(path[len(crate_prefix.strip('/').split('/')):]) + "." + parts[-1]
            return canonical.get(name.lower(), name)
    return parts[-1]


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else sorted(glob.glob(os.path.expanduser("~/.cargo/registry/src/*/k8s-pb-*/src")))[-1]
    with gzip.open(os.path.join(SCHEMAS, "definitions-v1.33.json.gz")) as f:
        definitions = json.load(f)["$defs"]
    # k8s-pb spells some names differently (PodIp for PodIP): use the definitions' spelling
    canonical = {name.lower(): name for name in definitions}
    messages = {}
    for path in sorted(glob.glob(os.path.join(src, "**/mod.rs"), recursive=True)):
        module_parts, prefix = module_of(path, src)
        if prefix is None:
            continue
        current = None
        pending = None
        partial = ""
        for line in open(path):
            line = line.strip()
            if pending and partial:
                line = partial + " " + line
            if pending and line.startswith("pub ") and (not line.endswith(",") or line.count("<") != line.count(">")):
                partial = line
                continue
            partial = ""
            m = STRUCT.match(line)
            if m:
                current = canonical.get(prefix.lower() + "." + m.group("name").lower(), prefix + "." + m.group("name"))
                messages[current] = {}
                continue
            if line == "}":
                current = None
                continue
            m = ATTR.match(line)
            if m and current:
                pending = m
                continue
            m = FIELD.match(line)
            if m and current and pending:
                kind, mapping, label, tag = pending.group("kind"), pending.group("map"), pending.group("label"), pending.group("tag")
                props = definitions.get(current, {}).get("properties", {})
                wanted = m.group("name").replace("_", "")
                json_name = next((p for p in props if p.lower().replace("_", "") == wanted), None)
                if json_name is None:
                    head, *rest = m.group("name").split("_")
                    json_name = head + "".join(w.capitalize() for w in rest)
                field = {"name": json_name, "kind": kind}
                if kind == "message" and props and not any(p.lower().replace("_", "") == wanted for p in props):
                    # an embedded struct: its fields appear inline in the JSON form
                    field["inline"] = True
                if label == "repeated":
                    field["repeated"] = True
                if kind == "message":
                    field["type"] = resolve(m.group("type"), module_parts, canonical)
                if kind == "btree_map":
                    key, value = mapping.split(", ")
                    field["kind"] = "map"
                    field["value"] = value
                    if value == "message":
                        field["type"] = resolve(m.group("type"), module_parts, canonical)
                messages[current][tag] = field
                pending = None
    out = os.path.join(SCHEMAS, "protobuf-fields-v1.33.json.gz")
    data = json.dumps(messages, sort_keys=True, separators=(",", ":")).encode()
    with gzip.GzipFile(out, "wb", mtime=0) as f:
        f.write(data)
    print(f"{len(messages)} messages -> {out}")


if __name__ == "__main__":
    main()
