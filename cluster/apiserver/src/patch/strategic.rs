//! Strategic merge patch, the patch `kubectl apply` (client-side), `kubectl set`, `rollout
//! restart` and `cordon` send for built-in kinds. Merge keys and strategies come from the
//! Kubernetes schema (`x-kubernetes-patch-merge-key`, `x-kubernetes-patch-strategy`).
//!
//! Directives: `$patch: replace|delete|merge` (on maps and list items), `$retainKeys`,
//! `$setElementOrder/<list>` and `$deleteFromPrimitiveList/<list>`.

use serde_json::{Map, Value};

use crate::schema::Node;

const MAX_DEPTH: usize = 100;

/// Applies `patch` to `target` in place.
///
/// # Errors
/// With a message when the patch is malformed.
pub fn apply(target: &mut Value, patch: &Value, schema: Option<Node<'_>>) -> Result<(), String> {
    let Value::Object(patch) = patch else {
        return Err("the patch must be an object".into());
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target_map) = target else {
        unreachable!()
    };
    merge_map(target_map, patch, schema, 0)?;
    Ok(())
}

fn directive<'a>(map: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    map.get(name).and_then(Value::as_str)
}

/// Strips directives from a value that is being inserted as new.
fn clean(value: &Value) -> Option<Value> {
    match value {
        Value::Object(map) => {
            if directive(map, "$patch") == Some("delete") {
                return None;
            }
            let mut out = Map::new();
            for (k, v) in map {
                if k.starts_with('$') {
                    continue;
                }
                if v.is_null() {
                    continue;
                }
                if let Some(v) = clean(v) {
                    out.insert(k.clone(), v);
                }
            }
            Some(Value::Object(out))
        }
        Value::Array(items) => Some(Value::Array(items.iter().filter_map(clean).collect())),
        other => Some(other.clone()),
    }
}

fn merge_map(
    target: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    schema: Option<Node<'_>>,
    depth: usize,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err("patch is nested too deeply".into());
    }
    match directive(patch, "$patch") {
        Some("replace") => {
            let Some(Value::Object(replacement)) = clean(&Value::Object(patch.clone())) else {
                unreachable!()
            };
            *target = replacement;
            return Ok(());
        }
        Some("delete") => {
            target.clear();
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => return Err(format!("unknown patch directive {other:?}")),
    }
    for (key, value) in patch {
        if key.starts_with('$') {
            continue;
        }
        let child_schema = schema.and_then(|s| s.property(key));
        if value.is_null() {
            target.remove(key);
            continue;
        }
        match (target.get_mut(key), value) {
            (Some(Value::Object(existing)), Value::Object(patch_map)) => {
                let atomic = child_schema.and_then(|s| s.str_field("x-kubernetes-map-type"))
                    == Some("atomic");
                if directive(patch_map, "$patch") == Some("delete") {
                    target.remove(key);
                } else if atomic {
                    if let Some(v) = clean(value) {
                        target.insert(key.clone(), v);
                    }
                } else {
                    merge_map(existing, patch_map, child_schema, depth + 1)?;
                }
            }
            (Some(Value::Array(existing)), Value::Array(patch_items)) => {
                merge_list(existing, patch_items, child_schema, depth)?;
            }
            (_, Value::Object(patch_map)) if directive(patch_map, "$patch") == Some("delete") => {
                target.remove(key);
            }
            (_, value) => {
                if let Some(v) = clean(value) {
                    target.insert(key.clone(), v);
                }
            }
        }
    }
    // directives that refer to sibling lists
    for (key, value) in patch {
        if let Some(list) = key.strip_prefix("$deleteFromPrimitiveList/") {
            let remove = value.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(items)) = target.get_mut(list) {
                items.retain(|item| !remove.contains(item));
            }
        }
    }
    for (key, value) in patch {
        if let Some(list) = key.strip_prefix("$setElementOrder/") {
            let merge_key = schema
                .and_then(|s| s.property(list))
                .and_then(|s| s.str_field("x-kubernetes-patch-merge-key"));
            if let (Some(Value::Array(items)), Some(order)) =
                (target.get_mut(list), value.as_array())
            {
                reorder(items, order, merge_key);
            }
        }
    }
    if let Some(Value::Array(retain)) = patch.get("$retainKeys") {
        let keep: Vec<&str> = retain.iter().filter_map(Value::as_str).collect();
        target.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(())
}

fn matches_key(item: &Value, other: &Value, merge_key: &str) -> bool {
    item.get(merge_key).is_some() && item.get(merge_key) == other.get(merge_key)
}

fn merge_list(
    target: &mut Vec<Value>,
    patch: &[Value],
    schema: Option<Node<'_>>,
    depth: usize,
) -> Result<(), String> {
    let strategy = schema
        .and_then(|s| s.str_field("x-kubernetes-patch-strategy"))
        .unwrap_or("");
    // `{"$patch": "replace"}` as an element replaces the whole list
    if patch
        .iter()
        .any(|item| item.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *target = patch
            .iter()
            .filter(|item| item.get("$patch").is_none())
            .filter_map(clean)
            .collect();
        return Ok(());
    }
    if !strategy.split(',').any(|s| s == "merge") {
        *target = patch.iter().filter_map(clean).collect();
        return Ok(());
    }
    let merge_key = schema.and_then(|s| s.str_field("x-kubernetes-patch-merge-key"));
    let item_schema = schema.and_then(Node::items);
    match merge_key {
        Some(merge_key) => {
            for item in patch {
                let Value::Object(item_map) = item else {
                    return Err(format!(
                        "list items must be objects with the merge key {merge_key:?}"
                    ));
                };
                let position = target
                    .iter()
                    .position(|existing| matches_key(existing, item, merge_key));
                match (directive(item_map, "$patch"), position) {
                    (Some("delete"), Some(i)) => {
                        target.remove(i);
                    }
                    (Some("delete"), None) => {}
                    (_, Some(i)) => {
                        if let Value::Object(existing) = &mut target[i] {
                            merge_map(existing, item_map, item_schema, depth + 1)?;
                        }
                    }
                    (_, None) => {
                        if let Some(v) = clean(item) {
                            target.push(v);
                        }
                    }
                }
            }
        }
        None => {
            for item in patch {
                if !target.contains(item) {
                    target.push(item.clone());
                }
            }
        }
    }
    Ok(())
}

/// Orders `items` as `order` lists them; items it does not list keep their place at the end.
fn reorder(items: &mut [Value], order: &[Value], merge_key: Option<&str>) {
    let rank = |item: &Value| {
        order.iter().position(|o| match merge_key {
            Some(key) => matches_key(item, o, key),
            None => item == o,
        })
    };
    items.sort_by_key(|item| rank(item).unwrap_or(usize::MAX));
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod_spec() -> Option<Node<'static>> {
        Node::builtin("io.k8s.api.apps.v1.Deployment")
    }

    #[test]
    fn kubectl_apply_patch_from_the_reference() {
        let mut live = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "c", "image": "nginx:1.26", "env": [{"name": "A", "value": "0"}, {"name": "B", "value": "x"}]},
            {"name": "side", "image": "busybox"}
        ]}}}});
        let patch = json!({"spec":{"template":{"spec":{"$setElementOrder/containers":[{"name":"c"},{"name":"side2"}],"containers":[{"$setElementOrder/env":[{"name":"A"}],"env":[{"name":"A","value":"1"},{"$patch":"delete","name":"B"}],"image":"nginx:1.27","name":"c"},{"image":"busybox","name":"side2"},{"$patch":"delete","name":"side"}]}}}});
        apply(&mut live, &patch, pod_spec()).unwrap();
        assert_eq!(
            live,
            json!({"spec": {"template": {"spec": {"containers": [
                {"name": "c", "image": "nginx:1.27", "env": [{"name": "A", "value": "1"}]},
                {"name": "side2", "image": "busybox"}
            ]}}}})
        );
    }

    #[test]
    fn atomic_lists_are_replaced_and_nulls_delete() {
        let mut live = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x"]}, "spec": {"replicas": 1}});
        let patch = json!({"metadata": {"labels": {"a": null, "c": "3"}, "finalizers": ["y"]}, "spec": {"replicas": 3}});
        apply(&mut live, &patch, pod_spec()).unwrap();
        // finalizers merge (strategy `merge` in the schema); labels are a map
        assert_eq!(
            live,
            json!({"metadata": {"labels": {"b": "2", "c": "3"}, "finalizers": ["x", "y"]}, "spec": {"replicas": 3}})
        );
        let mut live = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "command": ["a", "b"]}]}}}});
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "command": ["z"]}]}}}});
        apply(&mut live, &patch, pod_spec()).unwrap();
        assert_eq!(
            live["spec"]["template"]["spec"]["containers"][0]["command"],
            json!(["z"])
        );
    }

    #[test]
    fn replace_and_retain_keys_directives() {
        let mut live = json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null}}});
        apply(&mut live, &patch, pod_spec()).unwrap();
        assert_eq!(live, json!({"spec": {"strategy": {"type": "Recreate"}}}));
        let mut live = json!({"spec": {"selector": {"matchLabels": {"a": "1"}}}});
        apply(
            &mut live,
            &json!({"spec": {"selector": {"$patch": "replace", "matchLabels": {"b": "2"}}}}),
            pod_spec(),
        )
        .unwrap();
        assert_eq!(
            live,
            json!({"spec": {"selector": {"matchLabels": {"b": "2"}}}})
        );
    }

    #[test]
    fn primitive_lists_with_merge_strategy_union_and_delete() {
        let mut live = json!({"metadata": {"finalizers": ["a", "b"]}});
        // finalizers are a merge list of strings in the schema
        let patch = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"], "finalizers": ["c"]}});
        apply(&mut live, &patch, pod_spec()).unwrap();
        let finalizers = live["metadata"]["finalizers"].as_array().unwrap().clone();
        assert!(
            finalizers.contains(&json!("c")) && !finalizers.contains(&json!("a")),
            "{finalizers:?}"
        );
    }
}
