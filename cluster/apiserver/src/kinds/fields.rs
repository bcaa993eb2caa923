//! Fields each kind lets clients select on (`fieldSelector`), as Kubernetes'
//! `ToSelectableFields`/`GetAttrs` define them. Unknown fields are refused with 400.

use serde_json::Value;

fn at(object: &Value, pointer: &str) -> String {
    match object.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

/// Where a selectable field lives in the object (a JSON pointer), or `None` when the kind does
/// not support it.
#[must_use]
pub fn field_pointer(group: &str, kind: &str, field: &str) -> Option<&'static str> {
    match field {
        "metadata.name" => return Some("/metadata/name"),
        "metadata.namespace" => return Some("/metadata/namespace"),
        _ => {}
    }
    Some(match (group, kind, field) {
        ("", "Pod", "spec.nodeName") => "/spec/nodeName",
        ("", "Pod", "spec.restartPolicy") => "/spec/restartPolicy",
        ("", "Pod", "spec.schedulerName") => "/spec/schedulerName",
        ("", "Pod", "spec.serviceAccountName") => "/spec/serviceAccountName",
        ("", "Pod", "spec.hostNetwork") => "/spec/hostNetwork",
        ("", "Pod", "status.phase") => "/status/phase",
        ("", "Pod", "status.podIP") => "/status/podIP",
        ("", "Pod", "status.nominatedNodeName") => "/status/nominatedNodeName",
        ("", "Node", "spec.unschedulable") => "/spec/unschedulable",
        ("", "Event", "involvedObject.kind") => "/involvedObject/kind",
        ("", "Event", "involvedObject.namespace") => "/involvedObject/namespace",
        ("", "Event", "involvedObject.name") => "/involvedObject/name",
        ("", "Event", "involvedObject.uid") => "/involvedObject/uid",
        ("", "Event", "involvedObject.apiVersion") => "/involvedObject/apiVersion",
        ("", "Event", "involvedObject.resourceVersion") => "/involvedObject/resourceVersion",
        ("", "Event", "involvedObject.fieldPath") => "/involvedObject/fieldPath",
        ("", "Event", "reason") => "/reason",
        ("", "Event", "reportingComponent") => "/reportingComponent",
        ("", "Event", "source") => "/source/component",
        ("", "Event", "type") => "/type",
        ("events.k8s.io", "Event", "regarding.kind") => "/regarding/kind",
        ("events.k8s.io", "Event", "regarding.name") => "/regarding/name",
        ("events.k8s.io", "Event", "regarding.namespace") => "/regarding/namespace",
        ("events.k8s.io", "Event", "reason") => "/reason",
        ("events.k8s.io", "Event", "type") => "/type",
        ("", "Namespace", "status.phase") => "/status/phase",
        ("", "Secret", "type") => "/type",
        ("", "ReplicationController", "status.replicas") => "/status/replicas",
        ("apps", "ReplicaSet", "status.replicas") => "/status/replicas",
        ("batch", "Job", "status.successful") => "/status/succeeded",
        ("", "PersistentVolumeClaim", "spec.volumeName") => "/spec/volumeName",
        _ => return None,
    })
}

/// The value of a selectable field, or `None` when the kind does not support it.
#[must_use]
pub fn field_value(group: &str, kind: &str, object: &Value, field: &str) -> Option<String> {
    let pointer = field_pointer(group, kind, field)?;
    // booleans Kubernetes defaults to false read as "false" when absent
    if matches!(pointer, "/spec/hostNetwork" | "/spec/unschedulable") {
        let set = object
            .pointer(pointer)
            .and_then(Value::as_bool)
            .unwrap_or(false);
        return Some(set.to_string());
    }
    Some(at(object, pointer))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn pod_fields() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        assert_eq!(
            field_value("", "Pod", &pod, "spec.nodeName").as_deref(),
            Some("n1")
        );
        assert_eq!(
            field_value("", "Pod", &pod, "status.phase").as_deref(),
            Some("Running")
        );
        assert_eq!(
            field_value("", "Pod", &pod, "spec.hostNetwork").as_deref(),
            Some("false")
        );
        assert_eq!(
            field_value("", "Pod", &pod, "metadata.name").as_deref(),
            Some("p")
        );
        assert_eq!(field_value("", "Pod", &pod, "spec.bogus"), None);
        assert_eq!(field_value("", "ConfigMap", &pod, "spec.nodeName"), None);
    }
}
