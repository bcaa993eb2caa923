//! ResourceQuota accounting shared by the API server, whose admission charges each new object
//! against its namespace's quotas, and the controller manager, which recounts what is used:
//! the quota resources an object uses, whether a quota's scopes cover it, the admission verdict
//! with kube-apiserver's messages, and amounts printed as quotas print them.
//!
//! Amounts are thousandths of a unit (millicores for CPU, milli-bytes for memory), so that one
//! type holds every resource.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::quantity;

/// Amounts in thousandths of a unit, by quota resource name.
pub type Usage = BTreeMap<String, i128>;

const ONE: i128 = 1000;

/// Compute resources a pod quota can limit, with the container field each reads.
const COMPUTE: &[(&str, &str, &str)] = &[
    ("requests.cpu", "requests", "cpu"),
    ("cpu", "requests", "cpu"),
    ("requests.memory", "requests", "memory"),
    ("memory", "requests", "memory"),
    (
        "requests.ephemeral-storage",
        "requests",
        "ephemeral-storage",
    ),
    ("ephemeral-storage", "requests", "ephemeral-storage"),
    ("limits.cpu", "limits", "cpu"),
    ("limits.memory", "limits", "memory"),
    ("limits.ephemeral-storage", "limits", "ephemeral-storage"),
];

fn amount(value: Option<&Value>) -> i128 {
    value
        .and_then(Value::as_str)
        .and_then(quantity::parse_millis)
        .unwrap_or(0)
}

fn pod_is_terminal(pod: &Value) -> bool {
    matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    )
}

/// A pod's requests or limits of one resource: the larger of the containers' sum and the
/// largest init container, plus overhead (for requests).
fn pod_amount(pod: &Value, field: &str, resource: &str) -> i128 {
    let of = |c: &Value| {
        let direct = c.pointer(&format!("/resources/{field}/{resource}"));
        // a limit without a request is also the request, as the API server defaults it
        let fallback = (field == "requests")
            .then(|| c.pointer(&format!("/resources/limits/{resource}")))
            .flatten();
        amount(direct.or(fallback))
    };
    let list = |key: &str| {
        pod.pointer(&format!("/spec/{key}"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let sum: i128 = list("containers").iter().map(of).sum();
    let init = list("initContainers").iter().map(of).max().unwrap_or(0);
    let overhead = if field == "requests" {
        amount(pod.pointer(&format!("/spec/overhead/{resource}")))
    } else {
        0
    };
    sum.max(init) + overhead
}

/// The quota resources `object` (of `group`/`plural`) uses: its `count/…` and, by kind, pods
/// and compute, services and node ports, claims and storage (per class too), and the object
/// counts of configmaps, secrets and the like. Finished pods use nothing.
#[must_use]
pub fn usage(group: &str, plural: &str, object: &Value) -> Usage {
    let mut usage = Usage::new();
    if group.is_empty() && plural == "pods" && pod_is_terminal(object) {
        return usage;
    }
    let count = if group.is_empty() {
        format!("count/{plural}")
    } else {
        format!("count/{plural}.{group}")
    };
    usage.insert(count, ONE);
    if !group.is_empty() {
        return usage;
    }
    match plural {
        "pods" => {
            usage.insert("pods".into(), ONE);
            for (name, field, resource) in COMPUTE {
                usage.insert((*name).into(), pod_amount(object, field, resource));
            }
        }
        "services" => {
            usage.insert("services".into(), ONE);
            let kind = object.pointer("/spec/type").and_then(Value::as_str);
            if matches!(kind, Some("NodePort" | "LoadBalancer")) {
                let ports = object
                    .pointer("/spec/ports")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                usage.insert(
                    "services.nodeports".into(),
                    i128::try_from(ports).unwrap_or(0) * ONE,
                );
            }
            if kind == Some("LoadBalancer") {
                usage.insert("services.loadbalancers".into(), ONE);
            }
        }
        "persistentvolumeclaims" => {
            let storage = amount(object.pointer("/spec/resources/requests/storage"));
            usage.insert("persistentvolumeclaims".into(), ONE);
            usage.insert("requests.storage".into(), storage);
            if let Some(class) = object
                .pointer("/spec/storageClassName")
                .and_then(Value::as_str)
                .filter(|c| !c.is_empty())
            {
                let prefix = format!("{class}.storageclass.storage.k8s.io");
                usage.insert(format!("{prefix}/persistentvolumeclaims"), ONE);
                usage.insert(format!("{prefix}/requests.storage"), storage);
            }
        }
        "configmaps" | "secrets" | "replicationcontrollers" | "resourcequotas" => {
            usage.insert(plural.into(), ONE);
        }
        _ => {}
    }
    usage
}

/// Whether the quota's `scopes` and `scopeSelector` cover the object. Scoped quotas track pods
/// only (Kubernetes' Terminating, NotTerminating, BestEffort, NotBestEffort, PriorityClass).
#[must_use]
pub fn covers(quota: &Value, group: &str, plural: &str, object: &Value) -> bool {
    let mut scopes: Vec<(String, String, Vec<String>)> = quota
        .pointer("/spec/scopes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|s| (s.to_owned(), "Exists".to_owned(), Vec::new()))
        .collect();
    for expression in quota
        .pointer("/spec/scopeSelector/matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let text = |key: &str| expression[key].as_str().unwrap_or_default().to_owned();
        let values = expression["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect();
        scopes.push((text("scopeName"), text("operator"), values));
    }
    if scopes.is_empty() {
        return true;
    }
    if !(group.is_empty() && plural == "pods") {
        return false;
    }
    let terminating = object.pointer("/spec/activeDeadlineSeconds").is_some();
    let best_effort = COMPUTE
        .iter()
        .all(|(_, field, resource)| pod_amount(object, field, resource) == 0);
    let priority_class = object
        .pointer("/spec/priorityClassName")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty());
    scopes.iter().all(|(scope, operator, values)| {
        let holds = match scope.as_str() {
            "Terminating" => terminating,
            "NotTerminating" => !terminating,
            "BestEffort" => best_effort,
            "NotBestEffort" => !best_effort,
            "PriorityClass" => {
                return match operator.as_str() {
                    "In" => priority_class.is_some_and(|c| values.iter().any(|v| v == c)),
                    "NotIn" => priority_class.is_none_or(|c| values.iter().all(|v| v != c)),
                    "Exists" => priority_class.is_some(),
                    "DoesNotExist" => priority_class.is_none(),
                    _ => false,
                };
            }
            _ => false,
        };
        match operator.as_str() {
            "DoesNotExist" => !holds,
            _ => holds,
        }
    })
}

/// The compute resources a quota limits that some container of the pod does not set, in
/// kube-apiserver's words (`limits.cpu for: app; requests.memory for: app,sidecar`).
#[must_use]
pub fn unspecified(hard: &Usage, pod: &Value) -> Vec<String> {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|key| {
            pod.pointer(&format!("/spec/{key}"))
                .and_then(Value::as_array)
        })
        .flatten()
        .collect();
    let mut missing = Vec::new();
    for (name, field, resource) in COMPUTE {
        if !hard.contains_key(*name) {
            continue;
        }
        let without: Vec<&str> = containers
            .iter()
            .filter(|c| {
                let set = |f: &str| c.pointer(&format!("/resources/{f}/{resource}")).is_some();
                !(set(field) || (*field == "requests" && set("limits")))
            })
            .filter_map(|c| c["name"].as_str())
            .collect();
        if !without.is_empty() {
            missing.push(format!("{name} for: {}", without.join(",")));
        }
    }
    missing
}

/// Parses `spec.hard` or `status.used` of a quota.
#[must_use]
pub fn parse(list: Option<&Value>) -> Option<Usage> {
    let map = list?.as_object()?;
    Some(
        map.iter()
            .map(|(k, v)| (k.clone(), amount(Some(v))))
            .collect(),
    )
}

/// An amount as a quantity: `500m`, `2`, and binary suffixes for bytes (`64Mi`).
#[must_use]
pub fn format(resource: &str, millis: i128) -> String {
    let clamp = |v: i128| i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX });
    let bytes = ["memory", "storage", "ephemeral-storage"]
        .iter()
        .any(|b| resource.ends_with(b));
    if bytes && millis % ONE == 0 {
        return quantity::format_bytes(clamp(millis / ONE)).0;
    }
    quantity::format_cpu(clamp(millis)).0
}

/// Formats a usage as a quota's `status.used`.
#[must_use]
pub fn to_value(usage: &Usage) -> Value {
    Value::Object(
        usage
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(format(k, *v))))
            .collect(),
    )
}

/// Charges `delta` to a quota (`name`, `hard`, `used`): the new `used` of the resources it
/// limits, or nothing when it limits none of them.
///
/// # Errors
/// kube-apiserver's refusal: the quota's usage is not known yet, or the object would exceed it
/// (`exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2`).
pub fn charge(
    name: &str,
    hard: &Usage,
    used: Option<&Usage>,
    delta: &Usage,
) -> Result<Option<Usage>, String> {
    let limited: Vec<&String> = delta.keys().filter(|k| hard.contains_key(*k)).collect();
    if limited.is_empty() {
        return Ok(None);
    }
    let mut next = used.cloned().unwrap_or_default();
    let mut exceeded = Vec::new();
    for resource in limited {
        let Some(current) = used.and_then(|u| u.get(resource)) else {
            return Err(format!(
                "status unknown for quota: {name}, resource: {resource}"
            ));
        };
        let total = current + delta[resource];
        if delta[resource] > 0 && total > hard[resource] {
            exceeded.push(resource);
        }
        next.insert(resource.clone(), total);
    }
    if exceeded.is_empty() {
        return Ok(Some(next));
    }
    let list = |values: &dyn Fn(&String) -> i128| {
        exceeded
            .iter()
            .map(|r| format!("{r}={}", format(r, values(r))))
            .collect::<Vec<_>>()
            .join(",")
    };
    Err(format!(
        "exceeded quota: {name}, requested: {}, used: {}, limited: {}",
        list(&|r| delta[r]),
        list(&|r| used.and_then(|u| u.get(r)).copied().unwrap_or(0)),
        list(&|r| hard[r]),
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": spec})
    }

    #[test]
    fn pods_use_their_requests_and_limits() {
        let p = pod(json!({
            "initContainers": [{"name": "init", "resources": {"requests": {"cpu": "2"}}}],
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}}},
                {"name": "b", "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}}}
            ]
        }));
        let used = usage("", "pods", &p);
        assert_eq!(used["pods"], ONE);
        assert_eq!(used["count/pods"], ONE);
        assert_eq!(used["requests.cpu"], 2000, "the init container is larger");
        assert_eq!(used["requests.memory"], (128i128 << 20) * ONE);
        assert_eq!(used["limits.memory"], (192i128 << 20) * ONE);
        assert_eq!(format("requests.memory", used["requests.memory"]), "128Mi");
        assert_eq!(format("limits.cpu", used["limits.cpu"]), "500m");
        let mut done = p;
        done["status"] = json!({"phase": "Succeeded"});
        assert!(
            usage("", "pods", &done).is_empty(),
            "finished pods use nothing"
        );
    }

    #[test]
    fn other_kinds_count_and_claims_count_storage_per_class() {
        let claim = json!({"spec": {"storageClassName": "fast", "resources": {"requests": {"storage": "5Gi"}}}});
        let used = usage("", "persistentvolumeclaims", &claim);
        assert_eq!(used["requests.storage"], (5i128 << 30) * ONE);
        assert_eq!(
            used["fast.storageclass.storage.k8s.io/persistentvolumeclaims"],
            ONE
        );
        let service = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 443}]}});
        assert_eq!(
            usage("", "services", &service)["services.nodeports"],
            2 * ONE
        );
        assert_eq!(
            usage("apps", "deployments", &json!({}))["count/deployments.apps"],
            ONE
        );
        assert_eq!(usage("", "configmaps", &json!({}))["configmaps"], ONE);
    }

    #[test]
    fn charges_refuse_like_kube_apiserver() {
        let hard = parse(Some(&json!({"pods": "2", "requests.cpu": "1"}))).unwrap();
        let used = parse(Some(&json!({"pods": "1", "requests.cpu": "500m"}))).unwrap();
        let small = usage(
            "",
            "pods",
            &pod(
                json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "500m"}}}]}),
            ),
        );
        let next = charge("compute", &hard, Some(&used), &small)
            .unwrap()
            .unwrap();
        assert_eq!((next["pods"], next["requests.cpu"]), (2 * ONE, 1000));
        let big = usage(
            "",
            "pods",
            &pod(
                json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "600m"}}}]}),
            ),
        );
        assert_eq!(
            charge("compute", &hard, Some(&used), &big).unwrap_err(),
            "exceeded quota: compute, requested: requests.cpu=600m, used: requests.cpu=500m, limited: requests.cpu=1"
        );
        assert_eq!(
            charge("compute", &hard, None, &small).unwrap_err(),
            "status unknown for quota: compute, resource: pods"
        );
        let unrelated = usage("", "configmaps", &json!({}));
        assert_eq!(charge("compute", &hard, Some(&used), &unrelated), Ok(None));
    }

    #[test]
    fn compute_quotas_need_every_container_to_say() {
        let hard = parse(Some(&json!({"limits.cpu": "2", "requests.memory": "1Gi"}))).unwrap();
        let p = pod(json!({"containers": [
            {"name": "app", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}},
            {"name": "sidecar"}
        ]}));
        assert_eq!(
            unspecified(&hard, &p),
            ["requests.memory for: sidecar", "limits.cpu for: sidecar"]
        );
    }

    #[test]
    fn scopes_select_pods() {
        let best_effort = pod(json!({"containers": [{"name": "c"}]}));
        let guaranteed = pod(
            json!({"activeDeadlineSeconds": 30, "priorityClassName": "high",
            "containers": [{"name": "c", "resources": {"limits": {"cpu": "1"}}}]}),
        );
        let quota = |spec: Value| json!({"spec": spec});
        let be = quota(json!({"scopes": ["BestEffort"]}));
        assert!(covers(&be, "", "pods", &best_effort));
        assert!(!covers(&be, "", "pods", &guaranteed));
        assert!(
            !covers(&be, "", "configmaps", &json!({})),
            "scoped quotas count pods only"
        );
        let terminating = quota(json!({"scopes": ["Terminating", "NotBestEffort"]}));
        assert!(covers(&terminating, "", "pods", &guaranteed));
        let high = quota(json!({"scopeSelector": {"matchExpressions": [
            {"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]}}));
        assert!(covers(&high, "", "pods", &guaranteed));
        assert!(!covers(&high, "", "pods", &best_effort));
        assert!(covers(&quota(json!({})), "", "configmaps", &json!({})));
    }
}
