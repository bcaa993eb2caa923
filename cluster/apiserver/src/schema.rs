//! Schemas of API objects: the built-in Kubernetes 1.33 definitions (vendored data, see
//! `schemas/README.md`) and CustomResourceDefinition schemas, with one validator for both.
//!
//! The validator checks types, required fields, enums and the common OpenAPI limits, and finds
//! unknown fields, which `fieldValidation` turns into errors (Strict), warnings (Warn) or silent
//! pruning (Ignore). Patch code walks the same schemas to find list merge keys and list types.

use std::io::Read;
use std::sync::OnceLock;

use serde_json::{Map, Value};

use crate::error::Cause;

static DEFINITIONS_GZ: &[u8] = include_bytes!("../schemas/definitions-v1.33.json.gz");

/// The built-in definitions, keyed by name such as `io.k8s.api.core.v1.Pod`.
pub struct Definitions {
    defs: Map<String, Value>,
}

/// The definitions, decoded once.
///
/// # Panics
/// If the vendored file is corrupt (a build defect caught by tests).
pub fn definitions() -> &'static Definitions {
    static DEFINITIONS: OnceLock<Definitions> = OnceLock::new();
    DEFINITIONS.get_or_init(|| {
        let mut text = String::new();
        flate2::read::GzDecoder::new(DEFINITIONS_GZ)
            .read_to_string(&mut text)
            .expect("vendored definitions decompress");
        let mut root: Value = serde_json::from_str(&text).expect("vendored definitions parse");
        let Some(Value::Object(defs)) = root.get_mut("$defs").map(Value::take) else {
            panic!("vendored definitions have no $defs");
        };
        Definitions { defs }
    })
}

impl Definitions {
    /// One definition.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.defs.get(name)
    }

    /// Every definition.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.defs.iter()
    }
}

/// The name a `$ref` points to (`#/$defs/<name>`), if the node is a reference.
#[must_use]
pub fn ref_name(node: &Value) -> Option<&str> {
    let reference = node.get("$ref").or_else(|| {
        node.get("allOf")
            .and_then(Value::as_array)
            .and_then(|all| all.first())
            .and_then(|n| n.get("$ref"))
    })?;
    reference.as_str()?.rsplit('/').next()
}

/// A position in a schema: a node plus the definitions its references resolve against.
#[derive(Clone, Copy)]
pub struct Node<'a> {
    value: &'a Value,
    defs: Option<&'a Definitions>,
}

impl<'a> Node<'a> {
    /// The root of a built-in definition.
    #[must_use]
    pub fn builtin(name: &str) -> Option<Node<'static>> {
        let defs = definitions();
        defs.get(name).map(|value| Node {
            value,
            defs: Some(defs),
        })
    }

    /// The root of a self-contained schema (a CRD's `openAPIV3Schema`).
    #[must_use]
    pub fn custom(value: &'a Value) -> Node<'a> {
        Node { value, defs: None }
    }

    /// This node with references followed.
    #[must_use]
    pub fn resolve(self) -> Node<'a> {
        let mut value = self.value;
        for _ in 0..8 {
            let Some(defs) = self.defs else { break };
            let Some(name) = ref_name(value) else { break };
            match defs.get(name) {
                Some(target) => value = target,
                None => break,
            }
        }
        Node {
            value,
            defs: self.defs,
        }
    }

    /// The raw JSON of this node (unresolved).
    #[must_use]
    pub fn raw(self) -> &'a Value {
        self.value
    }

    fn get(self, key: &str) -> Option<&'a Value> {
        self.value.get(key)
    }

    /// The schema of property `key` of an object node.
    #[must_use]
    pub fn property(self, key: &str) -> Option<Node<'a>> {
        let node = self.resolve();
        if let Some(property) = node.get("properties").and_then(|p| p.get(key)) {
            return Some(Node {
                value: property,
                defs: self.defs,
            });
        }
        match node.get("additionalProperties") {
            Some(Value::Object(_)) => Some(Node {
                value: node.get("additionalProperties")?,
                defs: self.defs,
            }),
            _ => None,
        }
    }

    /// The schema of the items of an array node.
    #[must_use]
    pub fn items(self) -> Option<Node<'a>> {
        let node = self.resolve();
        node.get("items").map(|value| Node {
            value,
            defs: self.defs,
        })
    }

    /// A string-valued extension or keyword of this node (unresolved first, then resolved).
    #[must_use]
    pub fn str_field(self, key: &str) -> Option<&'a str> {
        self.get(key)
            .or_else(|| self.resolve().get(key))
            .and_then(Value::as_str)
    }

    /// `x-kubernetes-list-map-keys`, or the patch merge key as a single key.
    #[must_use]
    pub fn list_map_keys(self) -> Vec<String> {
        let keys = self
            .get("x-kubernetes-list-map-keys")
            .and_then(Value::as_array);
        match keys {
            Some(keys) => keys
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            None => self
                .str_field("x-kubernetes-patch-merge-key")
                .map(str::to_owned)
                .into_iter()
                .collect(),
        }
    }

    fn preserves_unknown(self) -> bool {
        let node = self.resolve();
        node.get("x-kubernetes-preserve-unknown-fields")
            .and_then(Value::as_bool)
            == Some(true)
    }

    fn types(self) -> Vec<&'a str> {
        match self.resolve().get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts
                .iter()
                .filter_map(Value::as_str)
                .filter(|t| *t != "null")
                .collect(),
            _ => Vec::new(),
        }
    }
}

const QUANTITY: &str = "io.k8s.apimachinery.pkg.api.resource.Quantity";

/// Whether text is a Kubernetes quantity (`100m`, `1Gi`, `1e3`, `0.5`).
#[must_use]
pub fn is_quantity(text: &str) -> bool {
    static PATTERN: OnceLock<regex::Regex> = OnceLock::new();
    let pattern = PATTERN.get_or_init(|| {
        regex::Regex::new(
            r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)(([KMGTPE]i)|[numkMGTPE]|[eE][+-]?[0-9]+)?$",
        )
        .expect("valid regex")
    });
    pattern.is_match(text)
}

/// How unknown fields are treated (the `fieldValidation` query parameter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValidation {
    /// Unknown and duplicate fields fail the request.
    Strict,
    /// Unknown fields are dropped with a warning.
    Warn,
    /// Unknown fields are dropped silently.
    Ignore,
}

impl FieldValidation {
    /// Parses the query parameter; Kubernetes' default is `Warn`.
    ///
    /// # Errors
    /// On any other value.
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        match value {
            None | Some("") | Some("Warn") => Ok(Self::Warn),
            Some("Strict") => Ok(Self::Strict),
            Some("Ignore") => Ok(Self::Ignore),
            Some(other) => Err(format!(
                "fieldValidation must be one of \"Ignore\", \"Warn\", or \"Strict\", got \"{other}\""
            )),
        }
    }
}

/// What validation found.
#[derive(Debug, Default)]
pub struct Findings {
    /// Type, required-field and limit violations.
    pub causes: Vec<Cause>,
    /// Paths of unknown fields (already removed from the object).
    pub unknown: Vec<String>,
}

/// Validates `value` against `schema`, removing unknown fields from it.
pub fn validate(value: &mut Value, schema: Node<'_>) -> Findings {
    let mut findings = Findings::default();
    walk(value, schema, &mut String::new(), &mut findings, 0);
    findings
}

const MAX_DEPTH: usize = 100;

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn matches_type(value: &Value, ty: &str) -> bool {
    match (ty, value) {
        ("object", Value::Object(_))
        | ("array", Value::Array(_))
        | ("string", Value::String(_))
        | ("boolean", Value::Bool(_))
        | ("number", Value::Number(_)) => true,
        ("integer", Value::Number(n)) => {
            n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => false,
    }
}

fn walk(
    value: &mut Value,
    schema: Node<'_>,
    path: &mut String,
    findings: &mut Findings,
    depth: usize,
) {
    if value.is_null() {
        return;
    }
    if depth > MAX_DEPTH {
        findings.causes.push(Cause::new(
            "FieldValueInvalid",
            path.clone(),
            "nesting is too deep",
        ));
        return;
    }
    if ref_name(schema.value) == Some(QUANTITY)
        && let Value::String(text) = value
        && !is_quantity(text)
    {
        findings.causes.push(Cause::invalid(path.clone(), value, "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"));
        return;
    }
    let node = schema.resolve();
    let field = if path.is_empty() {
        "<root>".to_owned()
    } else {
        path.clone()
    };

    if node
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true)
    {
        if !matches!(value, Value::String(_)) && !matches_type(value, "integer") {
            let detail = format!(
                "{field} in body must be of type int-or-string: \"{}\"",
                type_name(value)
            );
            findings.causes.push(Cause::invalid(
                path.clone(),
                &Value::String(type_name(value).into()),
                detail,
            ));
        }
        return;
    }
    if let Some(Value::Array(alternatives)) = node.get("oneOf") {
        let fits = alternatives.iter().any(|alt| {
            let alt = Node {
                value: alt,
                defs: schema.defs,
            };
            let types = alt.types();
            types.is_empty() || types.iter().any(|t| matches_type(value, t))
        });
        if !fits {
            let detail = format!("{field} has an unexpected type \"{}\"", type_name(value));
            findings
                .causes
                .push(Cause::new("FieldValueTypeInvalid", path.clone(), detail));
        }
        return;
    }
    let types = node.types();
    if !types.is_empty() && !types.iter().any(|t| matches_type(value, t)) {
        let expected = types.join(" or ");
        let detail = format!(
            "{field} in body must be of type {expected}: \"{}\"",
            type_name(value)
        );
        findings.causes.push(Cause::invalid(
            path.clone(),
            &Value::String(type_name(value).into()),
            detail,
        ));
        return;
    }
    check_limits(value, node, path, findings);

    match value {
        Value::Object(map) => {
            let properties = node.get("properties").and_then(Value::as_object);
            let additional = node.get("additionalProperties");
            let preserve = node.preserves_unknown();
            let free_form = properties.is_none() && additional.is_none();
            if let Some(Value::Array(required)) = node.get("required") {
                for name in required.iter().filter_map(Value::as_str) {
                    if map.get(name).is_none_or(Value::is_null) {
                        findings.causes.push(Cause::required(join(path, name)));
                    }
                }
            }
            let mut unknown = Vec::new();
            for (key, child) in map.iter_mut() {
                let child_schema = match properties.and_then(|p| p.get(key)) {
                    Some(property) => Some(Node {
                        value: property,
                        defs: schema.defs,
                    }),
                    None => match additional {
                        Some(Value::Object(_)) => Some(Node {
                            value: additional.expect("checked"),
                            defs: schema.defs,
                        }),
                        Some(Value::Bool(true)) => None,
                        _ if preserve || free_form => None,
                        _ => {
                            unknown.push(key.clone());
                            continue;
                        }
                    },
                };
                if let Some(child_schema) = child_schema {
                    let saved = path.len();
                    *path = join(path, key);
                    walk(child, child_schema, path, findings, depth + 1);
                    path.truncate(saved);
                }
            }
            for key in unknown {
                map.remove(&key);
                findings.unknown.push(join(path, &key));
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = node.get("items") {
                let item_schema = Node {
                    value: item_schema,
                    defs: schema.defs,
                };
                for (i, item) in items.iter_mut().enumerate() {
                    let saved = path.len();
                    path.push_str(&format!("[{i}]"));
                    walk(item, item_schema, path, findings, depth + 1);
                    path.truncate(saved);
                }
            }
        }
        _ => {}
    }
}

fn check_limits(value: &Value, node: Node<'_>, path: &str, findings: &mut Findings) {
    let last_segment = path.rsplit('.').next().unwrap_or(path);
    if let Some(Value::Array(allowed)) = node.get("enum")
        && last_segment != "apiVersion"
        && last_segment != "kind"
        && !allowed.contains(value)
    {
        let supported = allowed
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        findings.causes.push(Cause::new(
            "FieldValueNotSupported",
            path,
            format!("{value}: supported values: {supported}"),
        ));
    }
    let number = |key: &str| node.get(key).and_then(Value::as_f64);
    let count = |key: &str| node.get(key).and_then(Value::as_u64).map(|n| n as usize);
    match value {
        Value::Number(n) => {
            let v = n.as_f64().unwrap_or(0.0);
            if let Some(min) = number("minimum")
                && v < min
            {
                findings.causes.push(Cause::invalid(
                    path,
                    value,
                    format!("should be greater than or equal to {min}"),
                ));
            }
            if let Some(max) = number("maximum")
                && v > max
            {
                findings.causes.push(Cause::invalid(
                    path,
                    value,
                    format!("should be less than or equal to {max}"),
                ));
            }
            let format = node.get("format").and_then(Value::as_str);
            if format == Some("int32") && (v < f64::from(i32::MIN) || v > f64::from(i32::MAX)) {
                findings
                    .causes
                    .push(Cause::invalid(path, value, "must fit in a 32-bit integer"));
            }
        }
        Value::String(s) => {
            if node.get("format").and_then(Value::as_str) == Some("date-time")
                && s.parse::<jiff::Timestamp>().is_err()
            {
                findings
                    .causes
                    .push(Cause::invalid(path, value, "must be an RFC 3339 date-time"));
            }
            let len = s.chars().count();
            if let Some(min) = count("minLength")
                && len < min
            {
                findings.causes.push(Cause::invalid(
                    path,
                    value,
                    format!("should be at least {min} chars long"),
                ));
            }
            if let Some(max) = count("maxLength")
                && len > max
            {
                findings.causes.push(Cause::new(
                    "FieldValueTooLong",
                    path,
                    format!("may not be more than {max} bytes"),
                ));
            }
        }
        Value::Array(items) => {
            if let Some(min) = count("minItems")
                && items.len() < min
            {
                findings.causes.push(Cause::invalid(
                    path,
                    &Value::from(items.len()),
                    format!("should have at least {min} items"),
                ));
            }
            if let Some(max) = count("maxItems")
                && items.len() > max
            {
                findings.causes.push(Cause::new(
                    "FieldValueTooMany",
                    path,
                    format!("must have at most {max} items"),
                ));
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn unknown_fields_are_found_and_pruned() {
        let mut pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "labels": {"a": "b"}, "bogus": 1},
            "spec": {"containers": [{"name": "c", "image": "i", "imagePolicy": "x"}]}
        });
        let findings = validate(&mut pod, Node::builtin("io.k8s.api.core.v1.Pod").unwrap());
        assert!(findings.causes.is_empty(), "{:?}", findings.causes);
        assert_eq!(
            findings.unknown,
            ["metadata.bogus", "spec.containers[0].imagePolicy"]
        );
        assert!(pod["metadata"].get("bogus").is_none());
    }

    #[test]
    fn wrong_types_and_missing_required_fields_are_causes() {
        let mut deployment = json!({
            "spec": {"replicas": "three", "selector": {}, "template": {"spec": {"containers": [{"image": "x"}]}}}
        });
        let findings = validate(
            &mut deployment,
            Node::builtin("io.k8s.api.apps.v1.Deployment").unwrap(),
        );
        let fields: Vec<_> = findings.causes.iter().map(|c| c.field.as_str()).collect();
        assert!(fields.contains(&"spec.replicas"), "{fields:?}");
        assert!(
            fields.contains(&"spec.template.spec.containers[0].name"),
            "{fields:?}"
        );
    }

    #[test]
    fn int_or_string_and_quantities_accept_both_forms() {
        let mut service = json!({"spec": {"ports": [{"port": 80, "targetPort": "http"}, {"port": 81, "targetPort": 8081}]}});
        let findings = validate(
            &mut service,
            Node::builtin("io.k8s.api.core.v1.Service").unwrap(),
        );
        assert!(findings.causes.is_empty(), "{:?}", findings.causes);
        let mut pod = json!({"spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": 1, "memory": "1Gi"}}}]}});
        let findings = validate(&mut pod, Node::builtin("io.k8s.api.core.v1.Pod").unwrap());
        assert!(findings.causes.is_empty(), "{:?}", findings.causes);
    }

    #[test]
    fn custom_schema_limits_are_enforced() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "required": ["size"], "properties": {
            "mode": {"type": "string", "enum": ["fast", "slow"]},
            "size": {"type": "integer", "minimum": 1, "maximum": 10},
            "name": {"type": "string", "maxLength": 3},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
        }}}});
        let mut object = json!({"spec": {"mode": "medium", "size": 11, "name": "long", "free": {"a": {"b": 1}}, "extra": 1}});
        let findings = validate(&mut object, Node::custom(&schema));
        let reasons: Vec<_> = findings
            .causes
            .iter()
            .map(|c| (c.field.as_str(), c.reason))
            .collect();
        assert!(
            reasons.contains(&("spec.mode", "FieldValueNotSupported")),
            "{reasons:?}"
        );
        assert!(
            reasons.contains(&("spec.size", "FieldValueInvalid")),
            "{reasons:?}"
        );
        assert!(
            reasons.contains(&("spec.name", "FieldValueTooLong")),
            "{reasons:?}"
        );
        assert_eq!(findings.unknown, ["spec.extra"]);
        assert_eq!(object["spec"]["free"], json!({"a": {"b": 1}}));
        let mut missing = json!({"spec": {}});
        let findings = validate(&mut missing, Node::custom(&schema));
        assert_eq!(findings.causes[0].reason, "FieldValueRequired");
    }

    #[test]
    fn quantities_and_times_are_checked() {
        for good in ["1", "100m", "1Gi", "0.5", "1e3", "+2", "1.5Ki", ".5"] {
            assert!(is_quantity(good), "{good}");
        }
        for bad in ["abc", "1 Gi", "1GiB", "", "--1"] {
            assert!(!is_quantity(bad), "{bad}");
        }
        let mut pod = json!({"metadata": {"creationTimestamp": "soon"}, "spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": "lots"}}}]}});
        let findings = validate(&mut pod, Node::builtin("io.k8s.api.core.v1.Pod").unwrap());
        let fields: Vec<_> = findings.causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "metadata.creationTimestamp",
                "spec.containers[0].resources.limits.cpu"
            ]
        );
    }

    #[test]
    fn merge_keys_are_found() {
        let containers = Node::builtin("io.k8s.api.core.v1.PodSpec")
            .unwrap()
            .property("containers")
            .unwrap();
        assert_eq!(
            containers.str_field("x-kubernetes-patch-strategy"),
            Some("merge")
        );
        assert_eq!(containers.list_map_keys(), ["name"]);
        let env = containers.items().unwrap().property("env").unwrap();
        assert_eq!(env.list_map_keys(), ["name"]);
    }

    #[test]
    fn free_form_objects_accept_anything() {
        let mut revision = json!({"data": {"spec": {"anything": [1, 2]}}, "revision": 1});
        let findings = validate(
            &mut revision,
            Node::builtin("io.k8s.api.apps.v1.ControllerRevision").unwrap(),
        );
        assert!(
            findings.causes.is_empty() && findings.unknown.is_empty(),
            "{findings:?}"
        );
    }
}
