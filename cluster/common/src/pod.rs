//! Pod state as Kubernetes defines it: readiness, availability, phase, requests, ownership.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};

use crate::quantity;

/// The condition of a type, if present.
#[must_use]
pub fn condition<'a>(pod: &'a Pod, type_: &str) -> Option<&'a PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

/// `Ready` condition is True.
#[must_use]
pub fn is_ready(pod: &Pod) -> bool {
    condition(pod, "Ready").is_some_and(|c| c.status == "True")
}

/// Ready for at least `min_ready_seconds` at `now` (Kubernetes' `IsPodAvailable`).
#[must_use]
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: &Time) -> bool {
    let Some(ready) = condition(pod, "Ready").filter(|c| c.status == "True") else {
        return false;
    };
    if min_ready_seconds <= 0 {
        return true;
    }
    ready.last_transition_time.as_ref().is_some_and(|since| {
        now.0.as_second() - since.0.as_second() >= i64::from(min_ready_seconds)
    })
}

/// The pod phase (`Pending` when unset).
#[must_use]
pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// Succeeded or Failed.
#[must_use]
pub fn is_terminal(pod: &Pod) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

/// Being deleted.
#[must_use]
pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// Counted by controllers: not terminal and not being deleted.
#[must_use]
pub fn is_active(pod: &Pod) -> bool {
    !is_terminal(pod) && !is_terminating(pod)
}

/// The controller owner reference, if any.
#[must_use]
pub fn controller_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// Requested resources of a pod: the larger of the sum of containers and the largest init
/// container, per resource, plus overhead (Kubernetes' `PodRequests`). Keys: `cpu` in
/// millicores, everything else in units.
#[must_use]
pub fn requests(pod: &Pod) -> BTreeMap<String, i64> {
    let Some(spec) = pod.spec.as_ref() else {
        return BTreeMap::new();
    };
    let amount = |name: &str, q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity| {
        if name == "cpu" {
            quantity::cpu_millis(q)
        } else {
            quantity::units(q)
        }
    };
    let mut total: BTreeMap<String, i64> = BTreeMap::new();
    for container in &spec.containers {
        let resources = container.resources.as_ref();
        let requested = resources
            .and_then(|r| r.requests.as_ref())
            .or_else(|| resources.and_then(|r| r.limits.as_ref()));
        for (name, q) in requested.into_iter().flatten() {
            *total.entry(name.clone()).or_default() += amount(name, q);
        }
    }
    for container in spec.init_containers.iter().flatten() {
        let resources = container.resources.as_ref();
        let requested = resources
            .and_then(|r| r.requests.as_ref())
            .or_else(|| resources.and_then(|r| r.limits.as_ref()));
        for (name, q) in requested.into_iter().flatten() {
            let value = amount(name, q);
            let entry = total.entry(name.clone()).or_default();
            *entry = (*entry).max(value);
        }
    }
    for (name, q) in spec.overhead.iter().flatten() {
        *total.entry(name.clone()).or_default() += amount(name, q);
    }
    total
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn requests_take_the_max_of_init_and_sum_of_containers() {
        let pod: Pod = serde_json::from_value(json!({"spec": {
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "2"}}}],
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "500m", "memory": "64Mi"}}},
                {"name": "b", "resources": {"limits": {"cpu": "700m", "memory": "64Mi"}}}
            ]
        }}))
        .unwrap();
        let requested = requests(&pod);
        assert_eq!(requested["cpu"], 2000);
        assert_eq!(requested["memory"], 128 << 20);
    }
}
