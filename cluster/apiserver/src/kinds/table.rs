//! Server-side `Table` columns for `kubectl get`, as Kubernetes' printers define them
//! (`pkg/printers/internalversion/printers.go`). Priority-1 columns show only with `-o wide`.

use std::borrow::Cow;

use serde_json::{Value, json};

use crate::meta::{age, human_duration, parse_time};
use crate::registry::ResourceType;

/// One column definition.
#[derive(Clone, Debug)]
pub struct Column {
    /// Header.
    pub name: Cow<'static, str>,
    /// OpenAPI type: `string`, `integer`, ...
    pub type_: Cow<'static, str>,
    /// `name` for the name column.
    pub format: &'static str,
    /// 0 or 1 (wide).
    pub priority: i64,
}

const fn col(name: &'static str, type_: &'static str, priority: i64) -> Column {
    Column {
        name: Cow::Borrowed(name),
        type_: Cow::Borrowed(type_),
        format: "",
        priority,
    }
}

const NAME: Column = Column {
    name: Cow::Borrowed("Name"),
    type_: Cow::Borrowed("string"),
    format: "name",
    priority: 0,
};
const AGE: Column = col("Age", "string", 0);

/// Column definitions as JSON.
#[must_use]
pub fn column_definitions(columns: &[Column]) -> Value {
    Value::Array(
        columns
            .iter()
            .map(|c| {
                json!({"name": c.name, "type": c.type_, "format": c.format,
                       "description": column_description(&c.name), "priority": c.priority})
            })
            .collect(),
    )
}

fn column_description(name: &str) -> &'static str {
    match name {
        "Name" => {
            "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names"
        }
        "Age" => {
            "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC."
        }
        _ => "",
    }
}

/// The columns of a resource type.
#[must_use]
pub fn columns(rt: &ResourceType) -> Vec<Column> {
    if rt.custom {
        let mut columns = vec![NAME];
        for c in &rt.printer_columns {
            columns.push(Column {
                name: Cow::Owned(c.name.clone()),
                type_: Cow::Owned(c.type_.clone()),
                format: "",
                priority: c.priority,
            });
        }
        if !rt.printer_columns.iter().any(|c| c.name == "Age") {
            columns.push(AGE);
        }
        return columns;
    }
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Pod") => vec![
            NAME,
            col("Ready", "string", 0),
            col("Status", "string", 0),
            col("Restarts", "string", 0),
            AGE,
            col("IP", "string", 1),
            col("Node", "string", 1),
            col("Nominated Node", "string", 1),
            col("Readiness Gates", "string", 1),
        ],
        ("apps", "Deployment") => vec![
            NAME,
            col("Ready", "string", 0),
            col("Up-to-date", "integer", 0),
            col("Available", "integer", 0),
            AGE,
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ],
        ("apps", "ReplicaSet") => vec![
            NAME,
            col("Desired", "integer", 0),
            col("Current", "integer", 0),
            col("Ready", "integer", 0),
            AGE,
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ],
        ("apps", "StatefulSet") => vec![
            NAME,
            col("Ready", "string", 0),
            AGE,
            col("Containers", "string", 1),
            col("Images", "string", 1),
        ],
        ("apps", "DaemonSet") => vec![
            NAME,
            col("Desired", "integer", 0),
            col("Current", "integer", 0),
            col("Ready", "integer", 0),
            col("Up-to-date", "integer", 0),
            col("Available", "integer", 0),
            col("Node Selector", "string", 0),
            AGE,
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ],
        ("batch", "Job") => vec![
            NAME,
            col("Status", "string", 0),
            col("Completions", "string", 0),
            col("Duration", "string", 0),
            AGE,
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ],
        ("batch", "CronJob") => vec![
            NAME,
            col("Schedule", "string", 0),
            col("Timezone", "string", 0),
            col("Suspend", "boolean", 0),
            col("Active", "integer", 0),
            col("Last Schedule", "string", 0),
            AGE,
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ],
        ("", "Node") => vec![
            NAME,
            col("Status", "string", 0),
            col("Roles", "string", 0),
            AGE,
            col("Version", "string", 0),
            col("Internal-IP", "string", 1),
            col("External-IP", "string", 1),
            col("OS-Image", "string", 1),
            col("Kernel-Version", "string", 1),
            col("Container-Runtime", "string", 1),
        ],
        ("", "Service") => vec![
            NAME,
            col("Type", "string", 0),
            col("Cluster-IP", "string", 0),
            col("External-IP", "string", 0),
            col("Port(s)", "string", 0),
            AGE,
            col("Selector", "string", 1),
        ],
        ("", "Namespace") => vec![NAME, col("Status", "string", 0), AGE],
        ("networking.k8s.io", "Ingress") => vec![
            NAME,
            col("Class", "string", 0),
            col("Hosts", "string", 0),
            col("Address", "string", 0),
            col("Ports", "string", 0),
            AGE,
        ],
        ("networking.k8s.io", "IngressClass") => vec![
            NAME,
            col("Controller", "string", 0),
            col("Parameters", "string", 0),
            AGE,
        ],
        ("policy", "PodDisruptionBudget") => vec![
            NAME,
            col("Min Available", "string", 0),
            col("Max Unavailable", "string", 0),
            col("Allowed Disruptions", "integer", 0),
            AGE,
        ],
        ("autoscaling", "HorizontalPodAutoscaler") => vec![
            NAME,
            col("Reference", "string", 0),
            col("Targets", "string", 0),
            col("MinPods", "string", 0),
            col("MaxPods", "integer", 0),
            col("Replicas", "integer", 0),
            AGE,
        ],
        ("coordination.k8s.io", "Lease") => vec![NAME, col("Holder", "string", 0), AGE],
        ("", "Event") => vec![
            col("Last Seen", "string", 0),
            col("Type", "string", 0),
            col("Reason", "string", 0),
            col("Object", "string", 0),
            col("Subobject", "string", 1),
            col("Source", "string", 1),
            col("Message", "string", 0),
            col("First Seen", "string", 1),
            col("Count", "string", 1),
            Column {
                priority: 1,
                ..NAME
            },
        ],
        ("", "ConfigMap") => vec![NAME, col("Data", "integer", 0), AGE],
        ("", "Secret") => vec![
            NAME,
            col("Type", "string", 0),
            col("Data", "integer", 0),
            AGE,
        ],
        ("", "ServiceAccount") => vec![NAME, col("Secrets", "integer", 0), AGE],
        ("rbac.authorization.k8s.io", "Role" | "ClusterRole") => {
            vec![NAME, col("Created At", "date", 0)]
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => vec![
            NAME,
            col("Role", "string", 0),
            AGE,
            col("Users", "string", 1),
            col("Groups", "string", 1),
            col("ServiceAccounts", "string", 1),
        ],
        ("", "Endpoints") => vec![NAME, col("Endpoints", "string", 0), AGE],
        ("", "PersistentVolumeClaim") => vec![
            NAME,
            col("Status", "string", 0),
            col("Volume", "string", 0),
            col("Capacity", "string", 0),
            col("Access Modes", "string", 0),
            col("StorageClass", "string", 0),
            col("VolumeAttributesClass", "string", 0),
            AGE,
            col("VolumeMode", "string", 1),
        ],
        ("", "ResourceQuota") => vec![
            NAME,
            AGE,
            col("Request", "string", 0),
            col("Limit", "string", 0),
        ],
        ("storage.k8s.io", "StorageClass") => vec![
            NAME,
            col("Provisioner", "string", 0),
            col("ReclaimPolicy", "string", 0),
            col("VolumeBindingMode", "string", 0),
            col("AllowVolumeExpansion", "string", 0),
            AGE,
        ],
        ("", "PersistentVolume") => vec![
            NAME,
            col("Capacity", "string", 0),
            col("Access Modes", "string", 0),
            col("Reclaim Policy", "string", 0),
            col("Status", "string", 0),
            col("Claim", "string", 0),
            col("StorageClass", "string", 0),
            col("VolumeAttributesClass", "string", 0),
            col("Reason", "string", 0),
            AGE,
            col("VolumeMode", "string", 1),
        ],
        _ => vec![NAME, AGE],
    }
}

fn s<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn int(object: &Value, pointer: &str) -> i64 {
    object.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn or_none(text: String) -> String {
    if text.is_empty() {
        "<none>".into()
    } else {
        text
    }
}

fn created(object: &Value) -> String {
    age(object
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str))
}

fn containers_and_images(spec: Option<&Value>) -> (String, String) {
    let containers = spec
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array);
    let names = containers.map(|c| {
        c.iter()
            .map(|c| s(c, "/name"))
            .collect::<Vec<_>>()
            .join(",")
    });
    let images = containers.map(|c| {
        c.iter()
            .map(|c| s(c, "/image"))
            .collect::<Vec<_>>()
            .join(",")
    });
    (names.unwrap_or_default(), images.unwrap_or_default())
}

/// A `metav1.LabelSelector` in kubectl's text form.
#[must_use]
pub fn selector_text(selector: Option<&Value>) -> String {
    let Some(selector) = selector else {
        return "<none>".into();
    };
    let mut parts = Vec::new();
    if let Some(Value::Object(labels)) = selector.get("matchLabels") {
        for (k, v) in labels {
            parts.push(format!("{k}={}", v.as_str().unwrap_or("")));
        }
    }
    if let Some(Value::Array(expressions)) = selector.get("matchExpressions") {
        for e in expressions {
            let key = s(e, "/key");
            let values: Vec<&str> = e
                .get("values")
                .and_then(Value::as_array)
                .map(|v| v.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            parts.push(match s(e, "/operator") {
                "In" => format!("{key} in ({})", values.join(",")),
                "NotIn" => format!("{key} notin ({})", values.join(",")),
                "Exists" => key.to_owned(),
                "DoesNotExist" => format!("!{key}"),
                other => format!("{key} {other}"),
            });
        }
    }
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}

/// The values a printer column's JSONPath selects: `.a.b`, `[0]`, `[*]`, `['key']` and filters
/// `[?(@.type=="Ready")]` (also `!=`, and single quotes), as CustomResourceDefinitions use them.
pub fn json_path<'a>(object: &'a Value, path: &str) -> Vec<&'a Value> {
    let path = path.trim().trim_start_matches('{').trim_end_matches('}');
    let path = path.strip_prefix('$').unwrap_or(path);
    let mut current = vec![object];
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            let key = &after[..end];
            rest = &after[end..];
            if key.is_empty() {
                continue;
            }
            current = current.into_iter().filter_map(|v| v.get(key)).collect();
        } else if let Some(after) = rest.strip_prefix('[') {
            let Some(close) = matching_bracket(after) else {
                return vec![];
            };
            let inner = after[..close].trim();
            rest = &after[close + 1..];
            current = if inner == "*" {
                current
                    .into_iter()
                    .flat_map(|v| match v {
                        Value::Array(items) => items.iter().collect::<Vec<_>>(),
                        Value::Object(map) => map.values().collect(),
                        _ => vec![],
                    })
                    .collect()
            } else if let Some(filter) = inner.strip_prefix("?(").and_then(|f| f.strip_suffix(')'))
            {
                current
                    .into_iter()
                    .filter_map(Value::as_array)
                    .flatten()
                    .filter(|item| filter_matches(item, filter))
                    .collect()
            } else if let Ok(index) = inner.parse::<i64>() {
                current
                    .into_iter()
                    .filter_map(Value::as_array)
                    .filter_map(|items| {
                        let at = if index < 0 {
                            items.len() as i64 + index
                        } else {
                            index
                        };
                        usize::try_from(at).ok().and_then(|at| items.get(at))
                    })
                    .collect()
            } else {
                let key = inner.trim_matches(|c| c == '\'' || c == '"');
                current.into_iter().filter_map(|v| v.get(key)).collect()
            };
        } else {
            return vec![];
        }
    }
    current
}

fn matching_bracket(text: &str) -> Option<usize> {
    let mut depth = 0;
    let mut quote = None;
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '(') => depth += 1,
            (None, ')') => depth -= 1,
            (None, ']') if depth == 0 => return Some(i),
            (None, ']') => depth -= 1,
            _ => {}
        }
    }
    None
}

/// `@.a.b=="v"`, `@.a!='v'`, `@.n==3`, or `@.a` (present).
fn filter_matches(item: &Value, filter: &str) -> bool {
    let (path, op, literal) = if let Some((p, l)) = filter.split_once("==") {
        (p, "==", Some(l))
    } else if let Some((p, l)) = filter.split_once("!=") {
        (p, "!=", Some(l))
    } else {
        (filter, "", None)
    };
    let path = path.trim().strip_prefix('@').unwrap_or(path.trim());
    let found = json_path(item, path);
    let Some(literal) = literal else {
        return !found.is_empty();
    };
    let literal = literal.trim();
    let wanted = if literal.starts_with(['"', '\'']) {
        json!(literal.trim_matches(|c| c == '"' || c == '\''))
    } else {
        serde_json::from_str(literal).unwrap_or_else(|_| json!(literal))
    };
    let equal = found.first().is_some_and(|v| **v == wanted);
    if op == "==" { equal } else { !equal }
}

/// The cells of one row.
#[must_use]
pub fn cells(rt: &ResourceType, object: &Value) -> Vec<Value> {
    let name = json!(s(object, "/metadata/name"));
    if rt.custom {
        let mut cells = vec![name];
        for c in &rt.printer_columns {
            let values = json_path(object, &c.json_path);
            let value = match values.as_slice() {
                [] => Value::Null,
                [one] => (*one).clone(),
                many => json!(
                    many.iter()
                        .map(|v| v
                            .as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| v.to_string()))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            };
            let cell = if c.type_ == "date" {
                json!(age(value.as_str()))
            } else {
                value
            };
            cells.push(cell);
        }
        if !rt.printer_columns.iter().any(|c| c.name == "Age") {
            cells.push(json!(created(object)));
        }
        return cells;
    }
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Pod") => pod_cells(object),
        ("apps", "Deployment") => {
            let (containers, images) = containers_and_images(object.pointer("/spec/template/spec"));
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    int(object, "/status/readyReplicas"),
                    int(object, "/spec/replicas")
                )),
                json!(int(object, "/status/updatedReplicas")),
                json!(int(object, "/status/availableReplicas")),
                json!(created(object)),
                json!(containers),
                json!(images),
                json!(selector_text(object.pointer("/spec/selector"))),
            ]
        }
        ("apps", "ReplicaSet") => {
            let (containers, images) = containers_and_images(object.pointer("/spec/template/spec"));
            vec![
                name,
                json!(int(object, "/spec/replicas")),
                json!(int(object, "/status/replicas")),
                json!(int(object, "/status/readyReplicas")),
                json!(created(object)),
                json!(containers),
                json!(images),
                json!(selector_text(object.pointer("/spec/selector"))),
            ]
        }
        ("apps", "StatefulSet") => {
            let (containers, images) = containers_and_images(object.pointer("/spec/template/spec"));
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    int(object, "/status/readyReplicas"),
                    int(object, "/spec/replicas")
                )),
                json!(created(object)),
                json!(containers),
                json!(images),
            ]
        }
        ("apps", "DaemonSet") => {
            let (containers, images) = containers_and_images(object.pointer("/spec/template/spec"));
            let node_selector = object
                .pointer("/spec/template/spec/nodeSelector")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            vec![
                name,
                json!(int(object, "/status/desiredNumberScheduled")),
                json!(int(object, "/status/currentNumberScheduled")),
                json!(int(object, "/status/numberReady")),
                json!(int(object, "/status/updatedNumberScheduled")),
                json!(int(object, "/status/numberAvailable")),
                json!(or_none(node_selector)),
                json!(created(object)),
                json!(containers),
                json!(images),
                json!(selector_text(object.pointer("/spec/selector"))),
            ]
        }
        ("batch", "Job") => job_cells(object),
        ("policy", "PodDisruptionBudget") => {
            let bound = |pointer: &str| match object.pointer(pointer) {
                Some(Value::String(text)) => text.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => "N/A".to_owned(),
            };
            vec![
                name,
                json!(bound("/spec/minAvailable")),
                json!(bound("/spec/maxUnavailable")),
                json!(int(object, "/status/disruptionsAllowed")),
                json!(created(object)),
            ]
        }
        ("autoscaling", "HorizontalPodAutoscaler") => vec![
            name,
            json!(format!(
                "{}/{}",
                s(object, "/spec/scaleTargetRef/kind"),
                s(object, "/spec/scaleTargetRef/name")
            )),
            json!(autoscaler_targets(object)),
            json!(
                object
                    .pointer("/spec/minReplicas")
                    .and_then(Value::as_i64)
                    .map_or_else(|| "<unset>".to_owned(), |m| m.to_string())
            ),
            json!(int(object, "/spec/maxReplicas")),
            json!(int(object, "/status/currentReplicas")),
            json!(created(object)),
        ],
        ("batch", "CronJob") => {
            let (containers, images) =
                containers_and_images(object.pointer("/spec/jobTemplate/spec/template/spec"));
            let last = object
                .pointer("/status/lastScheduleTime")
                .and_then(Value::as_str);
            vec![
                name,
                json!(s(object, "/spec/schedule")),
                json!(or_none(s(object, "/spec/timeZone").to_owned())),
                json!(
                    object
                        .pointer("/spec/suspend")
                        .and_then(Value::as_bool)
                        .unwrap_or(false)
                ),
                json!(
                    object
                        .pointer("/status/active")
                        .and_then(Value::as_array)
                        .map_or(0, Vec::len)
                ),
                json!(if last.is_some() {
                    age(last)
                } else {
                    "<none>".into()
                }),
                json!(created(object)),
                json!(containers),
                json!(images),
                json!(selector_text(
                    object.pointer("/spec/jobTemplate/spec/selector")
                )),
            ]
        }
        ("", "Node") => node_cells(object),
        ("", "Service") => service_cells(object),
        ("networking.k8s.io", "Ingress") => ingress_cells(object),
        ("networking.k8s.io", "IngressClass") => vec![
            name,
            json!(s(object, "/spec/controller")),
            json!("<none>"),
            json!(created(object)),
        ],
        ("", "Namespace") => vec![
            name,
            json!(s(object, "/status/phase")),
            json!(created(object)),
        ],
        ("coordination.k8s.io", "Lease") => vec![
            name,
            json!(s(object, "/spec/holderIdentity")),
            json!(created(object)),
        ],
        ("", "Event") => {
            let last = [
                "/lastTimestamp",
                "/eventTime",
                "/metadata/creationTimestamp",
            ]
            .iter()
            .find_map(|p| {
                object
                    .pointer(p)
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
            });
            let first = [
                "/firstTimestamp",
                "/eventTime",
                "/metadata/creationTimestamp",
            ]
            .iter()
            .find_map(|p| {
                object
                    .pointer(p)
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
            });
            let kind = s(object, "/involvedObject/kind").to_lowercase();
            let source = [
                s(object, "/source/component"),
                s(object, "/reportingComponent"),
            ]
            .into_iter()
            .find(|c| !c.is_empty())
            .unwrap_or("")
            .to_owned();
            vec![
                json!(age(last)),
                json!(s(object, "/type")),
                json!(s(object, "/reason")),
                json!(format!("{kind}/{}", s(object, "/involvedObject/name"))),
                json!(s(object, "/involvedObject/fieldPath")),
                json!(source),
                json!(s(object, "/message").trim()),
                json!(age(first)),
                json!(int(object, "/count").max(1).to_string()),
                name,
            ]
        }
        ("", "ConfigMap") => {
            let count = ["data", "binaryData"]
                .iter()
                .map(|f| {
                    object
                        .get(*f)
                        .and_then(Value::as_object)
                        .map_or(0, serde_json::Map::len)
                })
                .sum::<usize>();
            vec![name, json!(count), json!(created(object))]
        }
        ("", "Secret") => {
            let count = object
                .get("data")
                .and_then(Value::as_object)
                .map_or(0, serde_json::Map::len);
            vec![
                name,
                json!(s(object, "/type")),
                json!(count),
                json!(created(object)),
            ]
        }
        ("rbac.authorization.k8s.io", "Role" | "ClusterRole") => {
            vec![name, json!(s(object, "/metadata/creationTimestamp"))]
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            let subjects = |kind: &str| {
                object
                    .get("subjects")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|subject| s(subject, "/kind") == kind)
                    .map(|subject| match s(subject, "/namespace") {
                        "" => s(subject, "/name").to_owned(),
                        namespace => format!("{namespace}/{}", s(subject, "/name")),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    s(object, "/roleRef/kind"),
                    s(object, "/roleRef/name")
                )),
                json!(created(object)),
                json!(subjects("User")),
                json!(subjects("Group")),
                json!(subjects("ServiceAccount")),
            ]
        }
        ("", "ServiceAccount") => {
            let count = object
                .get("secrets")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            vec![name, json!(count), json!(created(object))]
        }
        ("", "Endpoints") => {
            let mut endpoints = Vec::new();
            for subset in object
                .get("subsets")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let ports: Vec<i64> = subset
                    .get("ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p.get("port").and_then(Value::as_i64))
                    .collect();
                for address in subset
                    .get("addresses")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let ip = s(address, "/ip");
                    if ports.is_empty() {
                        endpoints.push(ip.to_owned());
                    }
                    for port in &ports {
                        endpoints.push(format!("{ip}:{port}"));
                    }
                }
            }
            let shown = if endpoints.len() > 3 {
                format!(
                    "{} + {} more...",
                    endpoints[..3].join(","),
                    endpoints.len() - 3
                )
            } else {
                endpoints.join(",")
            };
            vec![name, json!(or_none(shown)), json!(created(object))]
        }
        ("", "PersistentVolumeClaim") => {
            let modes = access_modes(object.pointer("/spec/accessModes"));
            vec![
                name,
                json!(s(object, "/status/phase")),
                json!(s(object, "/spec/volumeName")),
                json!(s(object, "/status/capacity/storage")),
                json!(modes),
                json!(or_none(s(object, "/spec/storageClassName").to_owned())),
                json!(or_none(
                    s(object, "/spec/volumeAttributesClassName").to_owned()
                )),
                json!(created(object)),
                json!(s(object, "/spec/volumeMode")),
            ]
        }
        ("", "ResourceQuota") => {
            // `resource: used/hard`, limits apart from the rest, as kubectl prints them
            let (mut requests, mut limits) = (Vec::new(), Vec::new());
            if let Some(hard) = object.pointer("/spec/hard").and_then(Value::as_object) {
                let mut names: Vec<&String> = hard.keys().collect();
                names.sort();
                for resource in names {
                    let used = object
                        .pointer("/status/used")
                        .and_then(|u| u.get(resource))
                        .and_then(Value::as_str)
                        .unwrap_or("0");
                    let entry = format!(
                        "{resource}: {used}/{}",
                        hard[resource].as_str().unwrap_or_default()
                    );
                    if resource.starts_with("limits") {
                        limits.push(entry);
                    } else {
                        requests.push(entry);
                    }
                }
            }
            vec![
                name,
                json!(created(object)),
                json!(requests.join(", ")),
                json!(limits.join(", ")),
            ]
        }
        ("storage.k8s.io", "StorageClass") => {
            let default = object
                .pointer("/metadata/annotations/storageclass.kubernetes.io~1is-default-class")
                == Some(&json!("true"));
            let shown = if default {
                format!("{} (default)", name.as_str().unwrap_or_default())
            } else {
                name.as_str().unwrap_or_default().to_owned()
            };
            let or = |pointer: &str, default: &str| match s(object, pointer) {
                "" => default.to_owned(),
                set => set.to_owned(),
            };
            vec![
                json!(shown),
                json!(s(object, "/provisioner")),
                json!(or("/reclaimPolicy", "Delete")),
                json!(or("/volumeBindingMode", "Immediate")),
                json!(
                    object
                        .pointer("/allowVolumeExpansion")
                        .and_then(Value::as_bool)
                        .unwrap_or(false)
                ),
                json!(created(object)),
            ]
        }
        ("", "PersistentVolume") => {
            let claim = match object.pointer("/spec/claimRef") {
                Some(claim) => format!("{}/{}", s(claim, "/namespace"), s(claim, "/name")),
                None => String::new(),
            };
            vec![
                name,
                json!(s(object, "/spec/capacity/storage")),
                json!(access_modes(object.pointer("/spec/accessModes"))),
                json!(s(object, "/spec/persistentVolumeReclaimPolicy")),
                json!(s(object, "/status/phase")),
                json!(claim),
                json!(s(object, "/spec/storageClassName")),
                json!(or_none(
                    s(object, "/spec/volumeAttributesClassName").to_owned()
                )),
                json!(s(object, "/status/reason")),
                json!(created(object)),
                json!(s(object, "/spec/volumeMode")),
            ]
        }
        _ => vec![name, json!(created(object))],
    }
}

fn access_modes(modes: Option<&Value>) -> String {
    let modes: Vec<&str> = modes
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    modes
        .iter()
        .map(|m| match *m {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn pod_cells(pod: &Value) -> Vec<Value> {
    let spec_containers = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let init_count = pod
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let mut reason = s(pod, "/status/phase").to_owned();
    if !s(pod, "/status/reason").is_empty() {
        reason = s(pod, "/status/reason").to_owned();
    }
    let mut restarts = 0i64;
    let mut last_restart: Option<jiff::Timestamp> = None;
    let mut ready = 0;
    let mut initializing = false;
    let statuses = |list: &str| {
        pod.pointer(&format!("/status/{list}"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let note_restart = |status: &Value, last: &mut Option<jiff::Timestamp>| {
        if let Some(finished) = status
            .pointer("/lastState/terminated/finishedAt")
            .and_then(Value::as_str)
            .and_then(parse_time)
            && last.is_none_or(|l| finished > l)
        {
            *last = Some(finished);
        }
    };
    for (i, status) in statuses("initContainerStatuses").iter().enumerate() {
        restarts += int(status, "/restartCount");
        note_restart(status, &mut last_restart);
        if let Some(terminated) = status.pointer("/state/terminated") {
            if int(terminated, "/exitCode") == 0 {
                continue;
            }
            reason = match s(terminated, "/reason") {
                "" if int(terminated, "/signal") != 0 => {
                    format!("Init:Signal:{}", int(terminated, "/signal"))
                }
                "" => format!("Init:ExitCode:{}", int(terminated, "/exitCode")),
                r => format!("Init:{r}"),
            };
        } else if !s(status, "/state/waiting/reason").is_empty()
            && s(status, "/state/waiting/reason") != "PodInitializing"
        {
            reason = format!("Init:{}", s(status, "/state/waiting/reason"));
        } else {
            reason = format!("Init:{i}/{init_count}");
        }
        initializing = true;
        break;
    }
    if !initializing {
        restarts = 0;
        let mut has_running = false;
        for status in statuses("containerStatuses").iter().rev() {
            restarts += int(status, "/restartCount");
            note_restart(status, &mut last_restart);
            if !s(status, "/state/waiting/reason").is_empty() {
                reason = s(status, "/state/waiting/reason").to_owned();
            } else if !s(status, "/state/terminated/reason").is_empty() {
                reason = s(status, "/state/terminated/reason").to_owned();
            } else if let Some(terminated) = status.pointer("/state/terminated") {
                reason = if int(terminated, "/signal") != 0 {
                    format!("Signal:{}", int(terminated, "/signal"))
                } else {
                    format!("ExitCode:{}", int(terminated, "/exitCode"))
                };
            } else if status.get("ready").and_then(Value::as_bool) == Some(true)
                && status.pointer("/state/running").is_some()
            {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            let pod_ready = pod
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|c| s(c, "/type") == "Ready" && s(c, "/status") == "True");
            reason = if pod_ready {
                "Running".into()
            } else {
                "NotReady".into()
            };
        }
    }
    if crate::meta::is_deleting(pod) {
        reason = if s(pod, "/status/reason") == "NodeLost" {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    let restarts_text = match last_restart {
        Some(last) if restarts > 0 => {
            let ago = jiff::Timestamp::now().as_second() - last.as_second();
            format!("{restarts} ({} ago)", human_duration(ago.max(0)))
        }
        _ => restarts.to_string(),
    };
    let gates = pod
        .pointer("/spec/readinessGates")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let gates_text = if gates == 0 {
        "<none>".to_owned()
    } else {
        format!("0/{gates}")
    };
    vec![
        json!(s(pod, "/metadata/name")),
        json!(format!("{ready}/{spec_containers}")),
        json!(reason),
        json!(restarts_text),
        json!(created(pod)),
        json!(or_none(s(pod, "/status/podIP").to_owned())),
        json!(or_none(s(pod, "/spec/nodeName").to_owned())),
        json!(or_none(s(pod, "/status/nominatedNodeName").to_owned())),
        json!(gates_text),
    ]
}

/// An autoscaler's metrics as kubectl prints them: `cpu: 200%/50%`, current `<unknown>` until
/// measured.
fn autoscaler_targets(hpa: &Value) -> String {
    let specs = hpa
        .pointer("/spec/metrics")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let current = hpa
        .pointer("/status/currentMetrics")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let parts: Vec<String> = specs
        .iter()
        .filter(|m| s(m, "/type") == "Resource")
        .map(|metric| {
            let resource = s(metric, "/resource/name");
            let now = current
                .iter()
                .find(|c| s(c, "/resource/name") == resource)
                .map(|c| c["resource"]["current"].clone());
            match metric.pointer("/resource/target/averageUtilization") {
                Some(target) => format!(
                    "{resource}: {}/{target}%",
                    now.as_ref()
                        .and_then(|c| c.get("averageUtilization"))
                        .map_or_else(|| "<unknown>".to_owned(), |u| format!("{u}%"))
                ),
                None => format!(
                    "{resource}: {}/{}",
                    now.as_ref()
                        .and_then(|c| c.get("averageValue"))
                        .and_then(Value::as_str)
                        .unwrap_or("<unknown>"),
                    s(metric, "/resource/target/averageValue")
                ),
            }
        })
        .collect();
    if parts.is_empty() {
        "<none>".to_owned()
    } else {
        parts.join(", ")
    }
}

fn job_cells(job: &Value) -> Vec<Value> {
    let (containers, images) = containers_and_images(job.pointer("/spec/template/spec"));
    let conditions: Vec<&Value> = job
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    let has = |t: &str| {
        conditions
            .iter()
            .any(|c| s(c, "/type") == t && s(c, "/status") == "True")
    };
    let status = if has("Complete") {
        "Complete"
    } else if has("Failed") {
        "Failed"
    } else if has("FailureTarget") {
        "FailureTarget"
    } else if has("SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else if has("Suspended") {
        "Suspended"
    } else {
        "Running"
    };
    let completions = match job.pointer("/spec/completions").and_then(Value::as_i64) {
        Some(c) => format!("{}/{c}", int(job, "/status/succeeded")),
        None => format!(
            "{}/1 of {}",
            int(job, "/status/succeeded"),
            int(job, "/spec/parallelism").max(1)
        ),
    };
    let start = job
        .pointer("/status/startTime")
        .and_then(Value::as_str)
        .and_then(parse_time);
    let end = job
        .pointer("/status/completionTime")
        .and_then(Value::as_str)
        .and_then(parse_time);
    let duration = match (start, end) {
        (Some(start), Some(end)) => human_duration(end.as_second() - start.as_second()),
        (Some(start), None) => {
            human_duration(jiff::Timestamp::now().as_second() - start.as_second())
        }
        _ => String::new(),
    };
    vec![
        json!(s(job, "/metadata/name")),
        json!(status),
        json!(completions),
        json!(duration),
        json!(created(job)),
        json!(containers),
        json!(images),
        json!(selector_text(job.pointer("/spec/selector"))),
    ]
}

fn node_cells(node: &Value) -> Vec<Value> {
    let conditions: Vec<&Value> = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    let ready = conditions.iter().find(|c| s(c, "/type") == "Ready");
    let mut status = match ready.map(|c| s(c, "/status")) {
        Some("True") => "Ready".to_owned(),
        Some("False") => "NotReady".to_owned(),
        _ => "Unknown".to_owned(),
    };
    if node.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    let mut roles: Vec<String> = crate::meta::labels(node)
        .into_iter()
        .filter_map(|(k, v)| {
            if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                Some(role.to_owned())
            } else if k == "kubernetes.io/role" {
                Some(v)
            } else {
                None
            }
        })
        .filter(|r| !r.is_empty())
        .collect();
    roles.sort();
    let address = |t: &str| {
        node.pointer("/status/addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|a| s(a, "/type") == t)
            .map(|a| s(a, "/address").to_owned())
            .unwrap_or_else(|| "<none>".into())
    };
    vec![
        json!(s(node, "/metadata/name")),
        json!(status),
        json!(or_none(roles.join(","))),
        json!(created(node)),
        json!(s(node, "/status/nodeInfo/kubeletVersion")),
        json!(address("InternalIP")),
        json!(address("ExternalIP")),
        json!(s(node, "/status/nodeInfo/osImage")),
        json!(s(node, "/status/nodeInfo/kernelVersion")),
        json!(s(node, "/status/nodeInfo/containerRuntimeVersion")),
    ]
}

/// kubectl's Ingress columns: class, hosts (`*` for a rule without one), the status
/// addresses, `80` or `80, 443` with TLS.
fn ingress_cells(ingress: &Value) -> Vec<Value> {
    let class = match s(ingress, "/spec/ingressClassName") {
        "" => "<none>",
        class => class,
    };
    let rules = ingress
        .pointer("/spec/rules")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let mut hosts: Vec<&str> = rules
        .iter()
        .map(|r| r.get("host").and_then(Value::as_str).unwrap_or("*"))
        .collect();
    hosts.dedup();
    let hosts = if hosts.is_empty() {
        "*".to_owned()
    } else if hosts.len() > 4 {
        format!("{} + {} more...", hosts[..4].join(","), hosts.len() - 4)
    } else {
        hosts.join(",")
    };
    let addresses: Vec<&str> = ingress
        .pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|i| {
            i.get("ip")
                .or_else(|| i.get("hostname"))
                .and_then(Value::as_str)
        })
        .collect();
    let tls = ingress
        .pointer("/spec/tls")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty());
    vec![
        json!(s(ingress, "/metadata/name")),
        json!(class),
        json!(hosts),
        json!(addresses.join(",")),
        json!(if tls { "80, 443" } else { "80" }),
        json!(created(ingress)),
    ]
}

fn service_cells(service: &Value) -> Vec<Value> {
    let service_type = s(service, "/spec/type");
    let cluster_ip = match s(service, "/spec/clusterIP") {
        "" => "<none>".to_owned(),
        ip => ip.to_owned(),
    };
    let mut external: Vec<String> = service
        .pointer("/spec/externalIPs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    let external_text = match service_type {
        "ExternalName" => s(service, "/spec/externalName").to_owned(),
        "LoadBalancer" => {
            for ingress in service
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let ip = [s(ingress, "/ip"), s(ingress, "/hostname")]
                    .into_iter()
                    .find(|v| !v.is_empty())
                    .unwrap_or("");
                external.push(ip.to_owned());
            }
            if external.is_empty() {
                "<pending>".to_owned()
            } else {
                external.join(",")
            }
        }
        _ => or_none(external.join(",")),
    };
    let ports: Vec<String> = service
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| {
            let port = int(p, "/port");
            let protocol = s(p, "/protocol");
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(node_port) => format!("{port}:{node_port}/{protocol}"),
                None => format!("{port}/{protocol}"),
            }
        })
        .collect();
    let selector = service
        .pointer("/spec/selector")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    vec![
        json!(s(service, "/metadata/name")),
        json!(service_type),
        json!(cluster_ip),
        json!(external_text),
        json!(or_none(ports.join(","))),
        json!(created(service)),
        json!(or_none(selector)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_status_column() {
        let pod = json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
            ]}
        });
        let cells = pod_cells(&pod);
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[2], "CrashLoopBackOff");
        assert_eq!(cells[3], "3");
    }

    #[test]
    fn pending_and_terminating() {
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Pending"}});
        assert_eq!(pod_cells(&pod)[2], "Pending");
        pod["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
        assert_eq!(pod_cells(&pod)[2], "Terminating");
    }

    #[test]
    fn service_ports() {
        let svc = json!({"metadata": {"name": "s"}, "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}]}});
        let cells = service_cells(&svc);
        assert_eq!(cells[4], "80:30080/TCP");
        assert_eq!(cells[3], "<none>");
    }

    #[test]
    fn ingress_columns() {
        let ingress = json!({"metadata": {"name": "sites"}, "spec": {"ingressClassName": "kelson",
            "rules": [{"host": "a.test"}, {"host": "b.test"}], "tls": [{"hosts": ["a.test"]}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.2"}]}}});
        let cells = ingress_cells(&ingress);
        assert_eq!(
            cells[1..5],
            [
                json!("kelson"),
                json!("a.test,b.test"),
                json!("192.0.2.2"),
                json!("80, 443")
            ]
        );
        let bare =
            ingress_cells(&json!({"metadata": {"name": "x"}, "spec": {"defaultBackend": {}}}));
        assert_eq!(
            bare[1..5],
            [json!("<none>"), json!("*"), json!(""), json!("80")]
        );
    }

    #[test]
    fn printer_column_paths() {
        let app = json!({"status": {"conditions": [
            {"type": "Reconciling", "status": "False"},
            {"type": "Ready", "status": "True", "message": "ok"}
        ], "list": [1, 2], "map": {"a.b": "dotted"}}});
        assert_eq!(
            json_path(&app, r#".status.conditions[?(@.type=="Ready")].status"#),
            [&json!("True")]
        );
        assert_eq!(
            json_path(&app, ".status.conditions[?(@.type!='Ready')].type"),
            [&json!("Reconciling")]
        );
        assert_eq!(json_path(&app, ".status.conditions[*].type").len(), 2);
        assert_eq!(json_path(&app, ".status.list[-1]"), [&json!(2)]);
        assert_eq!(json_path(&app, ".status.map['a.b']"), [&json!("dotted")]);
        assert!(json_path(&app, ".status.missing[0]").is_empty());
        assert!(json_path(&app, ".status.conditions[?(@.type==").is_empty());
    }
}
