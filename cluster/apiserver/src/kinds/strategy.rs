//! What the server itself sets on create and update, per kind (Kubernetes' registry strategies):
//! the initial status, `generation` and when it changes, and which parts of an object a write
//! to the main resource or to `/status` may change.

use serde_json::{Value, json};

use crate::meta::meta_mut;
use crate::registry::ResourceType;

/// Prepares a new object: initial status, generation and kind-specific fields.
/// `uid` has already been assigned.
pub fn prepare_create(rt: &ResourceType, object: &mut Value) {
    if rt.has_status() {
        let status = match (rt.group.as_str(), rt.kind.as_str()) {
            ("", "Node") => object.get("status").cloned(),
            ("", "Pod") => {
                let mut status = object.get("status").cloned().unwrap_or_else(|| json!({}));
                if status.get("phase").is_none() {
                    status["phase"] = json!("Pending");
                }
                status["qosClass"] = json!(qos_class(object));
                Some(status)
            }
            ("", "Namespace") => Some(json!({"phase": "Active"})),
            ("", "PersistentVolume" | "PersistentVolumeClaim") => Some(json!({"phase": "Pending"})),
            ("", "Service") => Some(json!({"loadBalancer": {}})),
            _ => None,
        };
        match status {
            Some(status) => object["status"] = status,
            None => {
                if let Some(map) = object.as_object_mut() {
                    map.remove("status");
                }
            }
        }
    }
    if rt.tracks_generation || rt.custom {
        meta_mut(object).insert("generation".into(), json!(1));
    }
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Namespace") => {
            let name = crate::meta::name(object).to_owned();
            let meta = meta_mut(object);
            let labels = meta.entry("labels").or_insert_with(|| json!({}));
            labels["kubernetes.io/metadata.name"] = json!(name);
        }
        ("batch", "Job") => generate_job_selector(object),
        _ => {}
    }
}

/// Prepares an update of the main resource: status kept, generation bumped on spec changes.
pub fn prepare_update(rt: &ResourceType, object: &mut Value, old: &Value) {
    if rt.group.is_empty() && rt.kind == "Service" {
        crate::services::keep_allocated(object, old);
    }
    if rt.has_status() {
        match old.get("status") {
            Some(status) => object["status"] = status.clone(),
            None => {
                if let Some(map) = object.as_object_mut() {
                    map.remove("status");
                }
            }
        }
    }
    let old_generation = old.pointer("/metadata/generation").and_then(Value::as_i64);
    if let Some(old_generation) = old_generation {
        let changed = if rt.custom {
            let strip = |v: &Value| {
                let mut v = v.clone();
                if let Some(map) = v.as_object_mut() {
                    map.remove("metadata");
                    if rt.has_status() {
                        map.remove("status");
                    }
                }
                v
            };
            strip(object) != strip(old)
        } else {
            let annotations_changed = rt.kind == "Deployment"
                && object.pointer("/metadata/annotations") != old.pointer("/metadata/annotations");
            object.get("spec") != old.get("spec") || annotations_changed
        };
        let generation = if changed {
            old_generation + 1
        } else {
            old_generation
        };
        meta_mut(object).insert("generation".into(), json!(generation));
    }
    if rt.group.is_empty() && rt.kind == "Namespace" {
        let name = crate::meta::name(object).to_owned();
        let meta = meta_mut(object);
        let labels = meta.entry("labels").or_insert_with(|| json!({}));
        if labels.is_object() {
            labels["kubernetes.io/metadata.name"] = json!(name);
        }
    }
}

/// Prepares a write to `/status`. Everything but the status comes from the stored object,
/// except, for built-in kinds, labels and annotations (Kubernetes' status strategies reset only
/// the spec and the lifecycle metadata; the Deployment controller records its revision
/// annotation this way without bumping `generation`). Custom resources keep all metadata
/// (`ResetObjectMetaForStatus`).
pub fn prepare_status_update(rt: &ResourceType, object: &mut Value, old: &Value) {
    let Some(map) = object.as_object_mut() else {
        return;
    };
    let status = map.remove("status");
    let new_meta = map.remove("metadata").unwrap_or_else(|| json!({}));
    let mut carried = vec!["resourceVersion", "managedFields"];
    if !rt.custom {
        carried.push("annotations");
        if rt.kind != "Deployment" {
            carried.push("labels");
        }
    }
    // the stored object, less what the request replaces; fields the request left as they
    // were are moved over rather than copied
    let mut result = serde_json::Map::new();
    for (key, value) in old.as_object().into_iter().flatten() {
        match (key.as_str(), value) {
            ("status", _) => {}
            ("metadata", Value::Object(metadata)) => {
                let kept = metadata
                    .iter()
                    .filter(|(field, _)| !carried.contains(&field.as_str()))
                    .map(|(field, value)| (field.clone(), value.clone()));
                result.insert(key.clone(), Value::Object(kept.collect()));
            }
            _ => {
                let value = match map.remove(key) {
                    Some(same) if same == *value => same,
                    _ => value.clone(),
                };
                result.insert(key.clone(), value);
            }
        }
    }
    if let Some(status) = status {
        result.insert("status".into(), status);
    }
    let mut result = Value::Object(result);
    let meta = meta_mut(&mut result);
    for field in carried {
        if let Some(value) = new_meta.get(field) {
            meta.insert(field.into(), value.clone());
        }
    }
    *object = result;
}

/// The Job selector Kubernetes generates: pods are labelled with the job's uid and name.
fn generate_job_selector(object: &mut Value) {
    if object
        .pointer("/spec/manualSelector")
        .and_then(Value::as_bool)
        == Some(true)
    {
        return;
    }
    let uid = crate::meta::meta_str(object, "uid")
        .unwrap_or_default()
        .to_owned();
    let name = crate::meta::name(object).to_owned();
    let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    spec.insert(
        "selector".into(),
        json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
    );
    let template = spec.entry("template").or_insert_with(|| json!({}));
    let metadata = template
        .as_object_mut()
        .map(|t| t.entry("metadata").or_insert_with(|| json!({})));
    if let Some(metadata) = metadata {
        let labels = metadata
            .as_object_mut()
            .map(|m| m.entry("labels").or_insert_with(|| json!({})));
        if let Some(Value::Object(labels)) = labels {
            labels.insert("batch.kubernetes.io/controller-uid".into(), json!(uid));
            labels.insert("controller-uid".into(), json!(uid));
            labels.insert("batch.kubernetes.io/job-name".into(), json!(name));
            labels.insert("job-name".into(), json!(name));
        }
    }
}

/// The QoS class of a pod from its containers' requests and limits.
#[must_use]
pub fn qos_class(pod: &Value) -> &'static str {
    let mut containers = Vec::new();
    for list in ["containers", "initContainers"] {
        if let Some(Value::Array(items)) = pod.pointer(&format!("/spec/{list}")) {
            containers.extend(items.iter());
        }
    }
    let resources = |c: &Value, kind: &str, name: &str| {
        c.pointer(&format!("/resources/{kind}/{name}"))
            .filter(|v| !v.is_null())
            .cloned()
    };
    let mut any = false;
    let mut guaranteed = !containers.is_empty();
    for c in &containers {
        for name in ["cpu", "memory"] {
            let limit = resources(c, "limits", name);
            let request = resources(c, "requests", name).or_else(|| limit.clone());
            if limit.is_some() || request.is_some() {
                any = true;
            }
            if limit.is_none() || request != limit {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qos_classes() {
        let pod = |resources: Value| json!({"spec": {"containers": [{"name": "c", "resources": resources}]}});
        assert_eq!(qos_class(&pod(json!({}))), "BestEffort");
        assert_eq!(
            qos_class(&pod(json!({"limits": {"cpu": "1", "memory": "1Gi"}}))),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(&pod(json!({"requests": {"cpu": "1"}}))),
            "Burstable"
        );
    }

    #[test]
    fn status_writes_change_only_status() {
        let types = crate::kinds::builtin_types();
        let deployments = types.iter().find(|t| t.kind == "Deployment").unwrap();
        let old = json!({"metadata": {"name": "d", "labels": {"a": "1"}, "generation": 3, "resourceVersion": "5"}, "spec": {"replicas": 1}, "status": {"replicas": 0}});
        let mut new = json!({"metadata": {"name": "d", "labels": {"a": "2"}, "annotations": {"deployment.kubernetes.io/revision": "2"}, "generation": 9, "resourceVersion": "5"}, "spec": {"replicas": 9}, "status": {"replicas": 1}});
        prepare_status_update(deployments, &mut new, &old);
        assert_eq!(new["spec"]["replicas"], 1);
        assert_eq!(new["metadata"]["labels"]["a"], "1");
        assert_eq!(new["metadata"]["generation"], 3);
        assert_eq!(
            new["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
            "2"
        );
        assert_eq!(new["status"]["replicas"], 1);
        let mut custom = deployments.clone();
        custom.custom = true;
        let mut new = json!({"metadata": {"name": "d", "labels": {"a": "2"}, "annotations": {"x": "y"}}, "status": {"replicas": 1}});
        prepare_status_update(&custom, &mut new, &old);
        assert_eq!(new["metadata"]["labels"]["a"], "1");
        assert!(new["metadata"].get("annotations").is_none());
    }
}
