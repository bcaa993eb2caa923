//! Conversion between the versions of a resource that share storage. `events.k8s.io/v1` Events
//! are stored as `v1` Events, as in Kubernetes, so that `kubectl describe` (which reads core
//! events) shows what controllers record through `events.k8s.io` (kube-rs' event recorder).

use serde_json::{Map, Value};

use crate::registry::ResourceType;

/// Field renames between `events.k8s.io/v1` (left) and `v1` (right).
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn is_events_v1(rt: &ResourceType) -> bool {
    is_events_v1_kind(&rt.group, &rt.kind)
}

fn is_events_v1_kind(group: &str, kind: &str) -> bool {
    group == "events.k8s.io" && kind == "Event"
}

fn rename(object: &mut Value, pairs: impl Iterator<Item = (&'static str, &'static str)>) {
    let Some(map) = object.as_object_mut() else {
        return;
    };
    let mut renamed = Map::new();
    for (from, to) in pairs {
        if let Some(value) = map.remove(from) {
            renamed.insert(to.to_owned(), value);
        }
    }
    map.extend(renamed);
}

/// The stored form of an object written through `rt`.
#[must_use]
pub fn to_storage(rt: &ResourceType, mut object: Value) -> Value {
    if is_events_v1(rt) {
        rename(&mut object, EVENT_FIELDS.iter().copied());
        object["apiVersion"] = Value::String("v1".into());
    }
    object
}

/// Whether `rt` serves objects in another form than storage holds them.
#[must_use]
pub fn converts(rt: &ResourceType) -> bool {
    is_events_v1(rt)
}

/// An object read from storage as `rt` serves it.
#[must_use]
pub fn from_storage(rt: &ResourceType, object: Value) -> Value {
    from_storage_of(&rt.group, &rt.kind, object)
}

/// An object read from storage as the kind `kind` of `group` serves it.
#[must_use]
pub fn from_storage_of(group: &str, kind: &str, mut object: Value) -> Value {
    if is_events_v1_kind(group, kind) {
        rename(&mut object, EVENT_FIELDS.iter().map(|(a, b)| (*b, *a)));
        object["apiVersion"] = Value::String("events.k8s.io/v1".into());
    }
    object
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn events_round_trip_between_versions() {
        let rt = crate::kinds::builtin_types()
            .into_iter()
            .find(|t| t.group == "events.k8s.io")
            .unwrap();
        let event = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"},
                           "regarding": {"kind": "Pod", "name": "p"}, "note": "pulled", "reason": "Pulled",
                           "reportingController": "kelson/kubelet", "type": "Normal"});
        let stored = to_storage(&rt, event.clone());
        assert_eq!(stored["involvedObject"]["name"], "p");
        assert_eq!(stored["message"], "pulled");
        assert_eq!(stored["apiVersion"], "v1");
        assert_eq!(from_storage(&rt, stored), event);
    }
}
