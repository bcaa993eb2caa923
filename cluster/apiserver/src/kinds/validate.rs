//! Semantic validation of built-in kinds beyond the schema (names, required lists, selectors
//! matching templates, immutable fields), with Kubernetes' field paths and messages.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::error::Cause;
use crate::registry::ResourceType;

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

fn is_label_body(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 label (namespaces, container names).
#[must_use]
pub fn is_dns1123_label(s: &str) -> bool {
    s.len() <= 63 && is_label_body(s)
}

/// RFC 1123 subdomain (most object names).
#[must_use]
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_label_body)
}

/// RFC 1035 label (service names).
#[must_use]
pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

fn is_qualified_name(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    name_ok && prefix.is_none_or(is_dns1123_subdomain)
}

fn is_label_value(value: &str) -> bool {
    value.is_empty()
        || (value.len() <= 63
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// Which name rule a kind uses.
fn name_rule(rt: &ResourceType) -> (fn(&str) -> bool, &'static str) {
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Namespace") => (is_dns1123_label, DNS1123_LABEL_MSG),
        ("", "Service") => (is_dns1035_label, DNS1035_LABEL_MSG),
        ("rbac.authorization.k8s.io", _) => (
            |s: &str| {
                !s.is_empty() && s != "." && s != ".." && !s.contains('/') && !s.contains('%')
            },
            "may not contain '/' or '%'",
        ),
        _ => (is_dns1123_subdomain, DNS1123_SUBDOMAIN_MSG),
    }
}

/// Validates object metadata and the kind's own rules; `old` is set on updates.
pub fn validate(rt: &ResourceType, object: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    validate_metadata(rt, object, &mut causes);
    if !rt.custom {
        validate_kind(rt, object, old, &mut causes);
        if causes.is_empty()
            && let Some(cause) = crate::kinds::typed::check_decodes(&rt.group, &rt.kind, object)
        {
            causes.push(cause);
        }
    }
    causes
}

fn validate_metadata(rt: &ResourceType, object: &Value, causes: &mut Vec<Cause>) {
    let name = crate::meta::name(object);
    if name.is_empty() {
        causes.push(Cause::new(
            "FieldValueRequired",
            "metadata.name",
            "name or generateName is required",
        ));
    } else {
        let (valid, message) = name_rule(rt);
        if !valid(name) {
            causes.push(Cause::invalid(
                "metadata.name",
                &Value::String(name.into()),
                message,
            ));
        }
    }
    if rt.custom && !is_dns1123_subdomain(name) && !name.is_empty() {
        causes.push(Cause::invalid(
            "metadata.name",
            &Value::String(name.into()),
            DNS1123_SUBDOMAIN_MSG,
        ));
    }
    for (key, value) in crate::meta::labels(object) {
        if !is_qualified_name(&key) {
            causes.push(Cause::invalid("metadata.labels", &Value::String(key.clone()), "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
        }
        if !is_label_value(&value) {
            causes.push(Cause::invalid(format!("metadata.labels[{key}]"), &Value::String(value), "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
        }
    }
    let annotations = crate::meta::string_map(object, "annotations");
    let size: usize = annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > 256 * 1024 {
        causes.push(Cause::new(
            "FieldValueTooLong",
            "metadata.annotations",
            "may not be more than 262144 bytes",
        ));
    }
    for key in annotations.keys() {
        if !is_qualified_name(&key.to_lowercase()) {
            causes.push(Cause::invalid("metadata.annotations", &Value::String(key.clone()), "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
        }
    }
}

fn array<'a>(object: &'a Value, pointer: &str) -> &'a [Value] {
    object
        .pointer(pointer)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// A string field that must be one of `allowed` when set.
fn one_of(object: &Value, pointer: &str, field: &str, allowed: &[&str], causes: &mut Vec<Cause>) {
    if let Some(value) = object.pointer(pointer).and_then(Value::as_str)
        && !allowed.contains(&value)
    {
        let supported = allowed
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        causes.push(Cause::new(
            "FieldValueNotSupported",
            field,
            format!("{value:?}: supported values: {supported}"),
        ));
    }
}

fn validate_pod_spec(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    one_of(
        spec,
        "/restartPolicy",
        &format!("{path}.restartPolicy"),
        &["Always", "OnFailure", "Never"],
        causes,
    );
    one_of(
        spec,
        "/dnsPolicy",
        &format!("{path}.dnsPolicy"),
        &["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"],
        causes,
    );
    let containers = array(spec, "/containers");
    if containers.is_empty() {
        causes.push(Cause::required(format!("{path}.containers")));
    }
    let mut names = BTreeSet::new();
    for list in ["initContainers", "containers"] {
        for (i, container) in array(spec, &format!("/{list}")).iter().enumerate() {
            let field = format!("{path}.{list}[{i}]");
            let name = container.get("name").and_then(Value::as_str).unwrap_or("");
            if name.is_empty() {
                // the schema already reports a missing name
            } else if !is_dns1123_label(name) {
                causes.push(Cause::invalid(
                    format!("{field}.name"),
                    &Value::String(name.into()),
                    DNS1123_LABEL_MSG,
                ));
            } else if !names.insert(name.to_owned()) {
                causes.push(Cause::new(
                    "FieldValueDuplicate",
                    format!("{field}.name"),
                    format!("{name:?}"),
                ));
            }
            if container
                .get("image")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                causes.push(Cause::required(format!("{field}.image")));
            }
            one_of(
                container,
                "/imagePullPolicy",
                &format!("{field}.imagePullPolicy"),
                &["Always", "IfNotPresent", "Never"],
                causes,
            );
            for (j, port) in array(container, "/ports").iter().enumerate() {
                one_of(
                    port,
                    "/protocol",
                    &format!("{field}.ports[{j}].protocol"),
                    &["TCP", "UDP", "SCTP"],
                    causes,
                );
                if let Some(number) = port.get("containerPort").and_then(Value::as_i64)
                    && !(1..=65535).contains(&number)
                {
                    causes.push(Cause::invalid(
                        format!("{field}.ports[{j}].containerPort"),
                        &Value::from(number),
                        "must be between 1 and 65535, inclusive",
                    ));
                }
            }
        }
    }
    let mut volume_names = BTreeSet::new();
    for (i, volume) in array(spec, "/volumes").iter().enumerate() {
        let name = volume.get("name").and_then(Value::as_str).unwrap_or("");
        if !name.is_empty() && !volume_names.insert(name.to_owned()) {
            causes.push(Cause::new(
                "FieldValueDuplicate",
                format!("{path}.volumes[{i}].name"),
                format!("{name:?}"),
            ));
        }
    }
}

fn selector_matches_template(object: &Value, causes: &mut Vec<Cause>) {
    let Some(selector) = object.pointer("/spec/selector") else {
        causes.push(Cause::required("spec.selector"));
        return;
    };
    let match_labels = selector.get("matchLabels").and_then(Value::as_object);
    let expressions = selector.get("matchExpressions").and_then(Value::as_array);
    if match_labels.is_none_or(|m| m.is_empty()) && expressions.is_none_or(|e| e.is_empty()) {
        causes.push(Cause::invalid(
            "spec.selector",
            selector,
            "empty selector is invalid for deployment",
        ));
        return;
    }
    let labels = object
        .pointer("/spec/template/metadata/labels")
        .and_then(Value::as_object);
    let template_labels: std::collections::BTreeMap<String, String> = labels
        .map(|l| {
            l.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    if !crate::selectors::label_selector_object_matches(selector, &template_labels) {
        causes.push(Cause::invalid(
            "spec.template.metadata.labels",
            &serde_json::to_value(&template_labels).unwrap_or_default(),
            "`selector` does not match template `labels`",
        ));
    }
}

fn immutable(
    object: &Value,
    old: Option<&Value>,
    pointer: &str,
    field: &str,
    causes: &mut Vec<Cause>,
) {
    if let Some(old) = old
        && old.pointer(pointer) != object.pointer(pointer)
    {
        let value = object.pointer(pointer).cloned().unwrap_or(Value::Null);
        causes.push(Cause::invalid(field, &value, "field is immutable"));
    }
}

fn validate_kind(rt: &ResourceType, object: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Pod") => {
            if let Some(spec) = object.get("spec") {
                validate_pod_spec(spec, "spec", causes);
            }
            if let Some(old) = old {
                pod_update(object, old, causes);
            }
        }
        ("apps", "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet") => {
            selector_matches_template(object, causes);
            if let Some(spec) = object.pointer("/spec/template/spec") {
                validate_pod_spec(spec, "spec.template.spec", causes);
                let restart = spec
                    .get("restartPolicy")
                    .and_then(Value::as_str)
                    .unwrap_or("Always");
                if restart != "Always" {
                    causes.push(Cause::new(
                        "FieldValueNotSupported",
                        "spec.template.spec.restartPolicy",
                        format!("{restart:?}: supported values: \"Always\""),
                    ));
                }
            }
            if let Some(replicas) = object.pointer("/spec/replicas").and_then(Value::as_i64)
                && replicas < 0
            {
                causes.push(Cause::invalid(
                    "spec.replicas",
                    &Value::from(replicas),
                    "must be greater than or equal to 0",
                ));
            }
            immutable(object, old, "/spec/selector", "spec.selector", causes);
        }
        ("batch", "Job") => {
            if let Some(spec) = object.pointer("/spec/template/spec") {
                validate_pod_spec(spec, "spec.template.spec", causes);
                let restart = spec
                    .get("restartPolicy")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if restart != "OnFailure" && restart != "Never" {
                    causes.push(Cause::new(
                        "FieldValueNotSupported",
                        "spec.template.spec.restartPolicy",
                        format!("{restart:?}: supported values: \"OnFailure\", \"Never\""),
                    ));
                }
            }
            immutable(object, old, "/spec/selector", "spec.selector", causes);
            immutable(object, old, "/spec/completions", "spec.completions", causes);
        }
        ("batch", "CronJob") => {
            let schedule = object
                .pointer("/spec/schedule")
                .and_then(Value::as_str)
                .unwrap_or("");
            if schedule.is_empty() {
                causes.push(Cause::required("spec.schedule"));
            } else if let Err(message) = kelson_common::cron::Schedule::parse(schedule, None) {
                causes.push(Cause::invalid(
                    "spec.schedule",
                    &Value::String(schedule.to_owned()),
                    message,
                ));
            }
            if let Some(zone) = object.pointer("/spec/timeZone").and_then(Value::as_str)
                && let Err(message) = kelson_common::cron::Schedule::parse("* * * * *", Some(zone))
            {
                causes.push(Cause::invalid(
                    "spec.timeZone",
                    &Value::String(zone.to_owned()),
                    message,
                ));
            }
            if let Some(spec) = object.pointer("/spec/jobTemplate/spec/template/spec") {
                validate_pod_spec(spec, "spec.jobTemplate.spec.template.spec", causes);
            }
        }
        ("", "Service") => {
            one_of(
                object,
                "/spec/type",
                "spec.type",
                &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
                causes,
            );
            one_of(
                object,
                "/spec/sessionAffinity",
                "spec.sessionAffinity",
                &["ClientIP", "None"],
                causes,
            );
            let ports = array(object, "/spec/ports");
            let service_type = object
                .pointer("/spec/type")
                .and_then(Value::as_str)
                .unwrap_or("ClusterIP");
            let headless =
                object.pointer("/spec/clusterIP").and_then(Value::as_str) == Some("None");
            if ports.is_empty() && service_type != "ExternalName" && !headless {
                causes.push(Cause::required("spec.ports"));
            }
            let mut names = BTreeSet::new();
            let mut numbers = BTreeSet::new();
            for (key, value) in object
                .pointer("/spec/selector")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                let text = value.as_str().unwrap_or("");
                if !is_qualified_name(key) {
                    causes.push(Cause::invalid("spec.selector", &Value::String(key.clone()), "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
                }
                if !is_label_value(text) {
                    causes.push(Cause::invalid(format!("spec.selector[{key}]"), value, "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
                }
            }
            for (i, port) in ports.iter().enumerate() {
                let number = port.get("port").and_then(Value::as_i64).unwrap_or(0);
                let protocol = port
                    .get("protocol")
                    .and_then(Value::as_str)
                    .unwrap_or("TCP");
                if !["TCP", "UDP", "SCTP"].contains(&protocol) {
                    causes.push(Cause::new(
                        "FieldValueNotSupported",
                        format!("spec.ports[{i}].protocol"),
                        format!("\"{protocol}\": supported values: \"SCTP\", \"TCP\", \"UDP\""),
                    ));
                }
                if !numbers.insert((number, protocol.to_owned())) {
                    causes.push(Cause::new(
                        "FieldValueDuplicate",
                        format!("spec.ports[{i}]"),
                        format!("port {number}/{protocol} is listed twice"),
                    ));
                }
                match port.get("targetPort") {
                    Some(Value::Number(target))
                        if !target.as_i64().is_some_and(|t| (1..=65535).contains(&t)) =>
                    {
                        causes.push(Cause::invalid(
                            format!("spec.ports[{i}].targetPort"),
                            &Value::Number(target.clone()),
                            "must be between 1 and 65535, inclusive",
                        ));
                    }
                    Some(Value::String(target))
                        if target.is_empty()
                            || target.len() > 15
                            || !target.chars().all(|c| {
                                c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
                            })
                            || !target.chars().any(|c| c.is_ascii_lowercase()) =>
                    {
                        causes.push(Cause::invalid(
                            format!("spec.ports[{i}].targetPort"),
                            &Value::String(target.clone()),
                            "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-), at most 15 characters, with at least one letter",
                        ));
                    }
                    _ => {}
                }
                if !(1..=65535).contains(&number) {
                    causes.push(Cause::invalid(
                        format!("spec.ports[{i}].port"),
                        &Value::from(number),
                        "must be between 1 and 65535, inclusive",
                    ));
                }
                let name = port.get("name").and_then(Value::as_str).unwrap_or("");
                if ports.len() > 1 && name.is_empty() {
                    causes.push(Cause::required(format!("spec.ports[{i}].name")));
                } else if !name.is_empty() && !names.insert(name.to_owned()) {
                    causes.push(Cause::new(
                        "FieldValueDuplicate",
                        format!("spec.ports[{i}].name"),
                        format!("{name:?}"),
                    ));
                }
            }
            if service_type == "ExternalName"
                && object
                    .pointer("/spec/externalName")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
            {
                causes.push(Cause::required("spec.externalName"));
            }
            if let Some(old) = old {
                let old_ip = old
                    .pointer("/spec/clusterIP")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let new_ip = object
                    .pointer("/spec/clusterIP")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if !old_ip.is_empty() && !new_ip.is_empty() && old_ip != new_ip {
                    causes.push(Cause::invalid(
                        "spec.clusterIPs[0]",
                        &Value::String(new_ip.into()),
                        "may not change once set",
                    ));
                }
            }
        }
        ("", "ConfigMap" | "Secret") => {
            for field in ["data", "binaryData", "stringData"] {
                if let Some(Value::Object(data)) = object.get(field) {
                    for key in data.keys() {
                        let valid = !key.is_empty()
                            && key.len() <= 253
                            && key
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
                        if !valid {
                            causes.push(Cause::invalid(format!("{field}[{key}]"), &Value::String(key.clone()), "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"));
                        }
                    }
                }
            }
            if rt.kind == "Secret"
                && let Some(Value::Object(data)) = object.get("data")
            {
                use base64::Engine;
                for (key, value) in data {
                    let decodes = value.as_str().is_some_and(|v| {
                        base64::engine::general_purpose::STANDARD.decode(v).is_ok()
                    });
                    if !decodes {
                        causes.push(Cause::invalid(
                            format!("data[{key}]"),
                            value,
                            "illegal base64 data",
                        ));
                    }
                }
            }
            if let Some(old) = old
                && old.get("immutable").and_then(Value::as_bool) == Some(true)
            {
                for field in ["data", "binaryData", "immutable"] {
                    if old.get(field) != object.get(field) {
                        causes.push(Cause::new(
                            "FieldValueForbidden",
                            field,
                            "field is immutable when `immutable` is set".to_string(),
                        ));
                    }
                }
            }
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            crate::crd::validate(object, old, causes)
        }
        _ => {}
    }
}

fn pod_update(object: &Value, old: &Value, causes: &mut Vec<Cause>) {
    let mutable = |spec: &Value| {
        let mut spec = spec.clone();
        if let Some(map) = spec.as_object_mut() {
            for field in [
                "activeDeadlineSeconds",
                "tolerations",
                "terminationGracePeriodSeconds",
                "nodeName",
            ] {
                map.remove(field);
            }
            for list in ["containers", "initContainers"] {
                if let Some(Value::Array(items)) = map.get_mut(list) {
                    for item in items.iter_mut().filter_map(Value::as_object_mut) {
                        item.remove("image");
                    }
                }
            }
        }
        spec
    };
    let (new_spec, old_spec) = (object.get("spec"), old.get("spec"));
    // status writes leave the spec as it was: no copies to compare then
    if new_spec != old_spec && new_spec.map(mutable) != old_spec.map(mutable) {
        causes.push(Cause::new("FieldValueForbidden", "spec", "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"));
    }
    let old_node = old
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or("");
    let new_node = object
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !old_node.is_empty() && old_node != new_node {
        causes.push(Cause::new(
            "FieldValueForbidden",
            "spec.nodeName",
            "pod updates may not change the node",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_enums_are_enforced() {
        let rt = crate::kinds::builtin_types()
            .into_iter()
            .find(|t| t.kind == "Pod")
            .unwrap();
        let pod = serde_json::json!({"metadata": {"name": "p"}, "spec": {"restartPolicy": "Sometimes", "containers": [{"name": "c", "image": "i", "imagePullPolicy": "Maybe"}]}});
        let causes = validate(&rt, &pod, None);
        let fields: Vec<_> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            ["spec.restartPolicy", "spec.containers[0].imagePullPolicy"]
        );
    }

    #[test]
    fn name_rules() {
        assert!(is_dns1123_subdomain("web-1.example"));
        assert!(!is_dns1123_subdomain("Web"));
        assert!(!is_dns1123_subdomain("-a"));
        assert!(is_dns1123_label("kube-system"));
        assert!(!is_dns1123_label("a.b"));
        assert!(is_dns1035_label("svc"));
        assert!(!is_dns1035_label("1svc"));
        assert!(is_qualified_name("app.kubernetes.io/name"));
        assert!(!is_qualified_name("bad key"));
    }
}
