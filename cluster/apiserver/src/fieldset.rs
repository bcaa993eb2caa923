//! Field ownership (`metadata.managedFields`, format `FieldsV1`) for server-side apply.
//!
//! Each manager owns a set of field paths. A path is a list of tokens as FieldsV1 spells them:
//! `f:<field>` for a struct or map field, `k:{"name":"c"}` for an item of a map-list,
//! `v:"x"` for a set item, and `.` for an item itself. Non-apply writes (operation `Update`)
//! take ownership of the fields they change; apply (operation `Apply`) owns exactly the fields
//! in its configuration, conflicts with other owners of a field unless the values agree or
//! `force` is set, and removes fields it owned before but no longer sends, unless someone else
//! still owns them.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::patch::apply::{ListType, atomic_map, item_key, list_type};
use crate::schema::Node;

/// One field path.
pub type Path = Vec<String>;

/// Metadata fields the server owns, never recorded.
const SERVER_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// One `managedFields` entry.
#[derive(Clone, Debug, PartialEq)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: String,
    subresource: Option<String>,
    fields: BTreeSet<Path>,
    /// The form it was read in, with its field count and time then: written back as it was
    /// while those are unchanged (fields are only ever removed from an entry that keeps this;
    /// an entry that gains fields drops it).
    stored: Option<(Value, usize, String)>,
}

impl Entry {
    fn to_json(&self) -> Value {
        if let Some((stored, count, time)) = &self.stored
            && *count == self.fields.len()
            && *time == self.time
        {
            return stored.clone();
        }
        let mut entry = json!({
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": to_tree(&self.fields),
        });
        if let Some(subresource) = &self.subresource {
            entry["subresource"] = json!(subresource);
        }
        entry
    }

    fn from_json(value: &Value) -> Option<Entry> {
        Some(Entry {
            manager: value.get("manager")?.as_str()?.to_owned(),
            operation: value
                .get("operation")
                .and_then(Value::as_str)
                .unwrap_or("Update")
                .to_owned(),
            api_version: value
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            time: value
                .get("time")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            subresource: value
                .get("subresource")
                .and_then(Value::as_str)
                .map(str::to_owned),
            fields: value.get("fieldsV1").map(from_tree).unwrap_or_default(),
            stored: None,
        })
        .map(|mut entry| {
            entry.stored = Some((value.clone(), entry.fields.len(), entry.time.clone()));
            entry
        })
    }
}

fn entries_of(object: Option<&Value>) -> Vec<Entry> {
    object
        .and_then(|o| o.pointer("/metadata/managedFields"))
        .and_then(Value::as_array)
        .map(|entries| entries.iter().filter_map(Entry::from_json).collect())
        .unwrap_or_default()
}

fn store_entries(object: &mut Value, entries: &[Entry]) {
    let metadata = crate::meta::meta_mut(object);
    let entries: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(Entry::to_json)
        .collect();
    if entries.is_empty() {
        metadata.remove("managedFields");
    } else {
        metadata.insert("managedFields".into(), Value::Array(entries));
    }
}

/// Converts a path set to the nested FieldsV1 form.
#[must_use]
pub fn to_tree(paths: &BTreeSet<Path>) -> Value {
    let mut root = Map::new();
    for path in paths {
        let mut node = &mut root;
        for token in path {
            node = node
                .entry(token.clone())
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("tree nodes are objects");
        }
    }
    Value::Object(root)
}

/// Converts FieldsV1 to a path set (every leaf, and every `.` marker, is a path).
#[must_use]
pub fn from_tree(tree: &Value) -> BTreeSet<Path> {
    fn walk(node: &Value, prefix: &mut Path, out: &mut BTreeSet<Path>) {
        let Some(map) = node.as_object() else { return };
        for (token, child) in map {
            prefix.push(token.clone());
            if child.as_object().is_none_or(Map::is_empty) {
                out.insert(prefix.clone());
            } else {
                walk(child, prefix, out);
            }
            prefix.pop();
        }
    }
    let mut out = BTreeSet::new();
    walk(tree, &mut Vec::new(), &mut out);
    out
}

/// Every field path set in `value`.
#[must_use]
pub fn leaves(value: &Value, schema: Option<Node<'_>>) -> BTreeSet<Path> {
    let mut out = BTreeSet::new();
    let Some(map) = value.as_object() else {
        return out;
    };
    for (key, child) in map {
        if key == "apiVersion" || key == "kind" {
            continue;
        }
        let child_schema = schema.and_then(|s| s.property(key));
        let mut prefix = vec![format!("f:{key}")];
        if key == "metadata" {
            if let Some(metadata) = child.as_object() {
                for (field, v) in metadata {
                    if SERVER_METADATA.contains(&field.as_str()) {
                        continue;
                    }
                    prefix.push(format!("f:{field}"));
                    collect(
                        v,
                        child_schema.and_then(|s| s.property(field)),
                        &mut prefix,
                        &mut out,
                    );
                    prefix.pop();
                }
            }
            continue;
        }
        collect(child, child_schema, &mut prefix, &mut out);
    }
    out
}

fn collect(value: &Value, schema: Option<Node<'_>>, prefix: &mut Path, out: &mut BTreeSet<Path>) {
    match value {
        Value::Object(map) if !map.is_empty() && !atomic_map(schema) => {
            for (key, child) in map {
                prefix.push(format!("f:{key}"));
                collect(child, schema.and_then(|s| s.property(key)), prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) if !items.is_empty() => match list_type(schema) {
            ListType::Atomic => {
                out.insert(prefix.clone());
            }
            ListType::Set => {
                for item in items {
                    prefix.push(format!("v:{item}"));
                    out.insert(prefix.clone());
                    prefix.pop();
                }
            }
            ListType::Map(keys) => {
                let item_schema = schema.and_then(Node::items);
                for item in items {
                    prefix.push(format!("k:{}", item_key(item, &keys)));
                    prefix.push(".".into());
                    out.insert(prefix.clone());
                    prefix.pop();
                    collect_item_fields(item, item_schema, prefix, out);
                    prefix.pop();
                }
            }
        },
        _ => {
            out.insert(prefix.clone());
        }
    }
}

fn collect_item_fields(
    item: &Value,
    schema: Option<Node<'_>>,
    prefix: &mut Path,
    out: &mut BTreeSet<Path>,
) {
    if let Value::Object(map) = item {
        for (key, child) in map {
            prefix.push(format!("f:{key}"));
            collect(child, schema.and_then(|s| s.property(key)), prefix, out);
            prefix.pop();
        }
    }
}

fn find_item<'a>(items: &'a [Value], token: &str) -> Option<(usize, &'a Value)> {
    if let Some(key) = token.strip_prefix("k:") {
        let key: Value = serde_json::from_str(key).ok()?;
        let names: Vec<String> = key.as_object()?.keys().cloned().collect();
        return items
            .iter()
            .enumerate()
            .find(|(_, item)| item_key(item, &names) == key);
    }
    if let Some(value) = token.strip_prefix("v:") {
        let value: Value = serde_json::from_str(value).ok()?;
        return items.iter().enumerate().find(|(_, item)| **item == value);
    }
    None
}

/// The value at a path, if present.
#[must_use]
pub fn value_at<'a>(object: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut node = object;
    for token in path {
        if token == "." {
            continue;
        }
        node = match token.strip_prefix("f:") {
            Some(field) => node.get(field)?,
            None => find_item(node.as_array()?, token)?.1,
        };
    }
    Some(node)
}

/// Removes the field (or list item) at a path.
pub fn remove_at(object: &mut Value, path: &[String]) {
    let (last, parents) = match path.split_last() {
        Some((last, parents)) if last == "." => match parents.split_last() {
            Some((item, parents)) => (item, parents),
            None => return,
        },
        Some(split) => split,
        None => return,
    };
    let mut node = object;
    for token in parents {
        let next = match token.strip_prefix("f:") {
            Some(field) => node.get_mut(field),
            None => {
                let Some(items) = node.as_array_mut() else {
                    return;
                };
                let Some((index, _)) = find_item(items, token) else {
                    return;
                };
                items.get_mut(index)
            }
        };
        match next {
            Some(next) => node = next,
            None => return,
        }
    }
    match last.strip_prefix("f:") {
        Some(field) => {
            if let Some(map) = node.as_object_mut() {
                map.remove(field);
            }
        }
        None => {
            if let Some(items) = node.as_array_mut()
                && let Some((index, _)) = find_item(items, last)
            {
                items.remove(index);
            }
        }
    }
}

/// Human form of a path for conflict messages: `.spec.containers[name="c"].image`.
#[must_use]
pub fn display(path: &[String]) -> String {
    let mut out = String::new();
    for token in path {
        if let Some(field) = token.strip_prefix("f:") {
            out.push('.');
            out.push_str(field);
        } else if let Some(key) = token.strip_prefix("k:") {
            let key: Value = serde_json::from_str(key).unwrap_or(Value::Null);
            let parts: Vec<String> = key
                .as_object()
                .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect())
                .unwrap_or_default();
            out.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(value) = token.strip_prefix("v:") {
            out.push_str(&format!("[={value}]"));
        }
    }
    out
}

/// The field paths whose values differ between `new` and `old`: of the paths [`leaves`] finds
/// in either, those that [`value_at`] resolves differently. Both are walked together and equal
/// subtrees are skipped, so the cost follows the change, not the object.
#[must_use]
pub fn changed_paths(new: &Value, old: &Value, schema: Option<Node<'_>>) -> BTreeSet<Path> {
    let mut out = BTreeSet::new();
    let empty = Map::new();
    let new_map = new.as_object().unwrap_or(&empty);
    let old_map = old.as_object().unwrap_or(&empty);
    for key in union_keys(new_map, old_map) {
        if key == "apiVersion" || key == "kind" {
            continue;
        }
        let child_schema = schema.and_then(|s| s.property(key));
        let mut prefix = vec![format!("f:{key}")];
        if key == "metadata" {
            let new_meta = new_map
                .get(key)
                .and_then(Value::as_object)
                .unwrap_or(&empty);
            let old_meta = old_map
                .get(key)
                .and_then(Value::as_object)
                .unwrap_or(&empty);
            for field in union_keys(new_meta, old_meta) {
                if SERVER_METADATA.contains(&field) {
                    continue;
                }
                prefix.push(format!("f:{field}"));
                diff(
                    new_meta.get(field),
                    old_meta.get(field),
                    child_schema.and_then(|s| s.property(field)),
                    &mut prefix,
                    &mut out,
                );
                prefix.pop();
            }
            continue;
        }
        diff(
            new_map.get(key),
            old_map.get(key),
            child_schema,
            &mut prefix,
            &mut out,
        );
    }
    out
}

/// Keys of either map, each once, in order.
fn union_keys<'a>(a: &'a Map<String, Value>, b: &'a Map<String, Value>) -> Vec<&'a str> {
    let mut keys: Vec<&str> = a.keys().chain(b.keys()).map(String::as_str).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// How [`collect`] treats a value: a leaf, or the parent of field, set-item or map-item paths.
#[derive(PartialEq)]
enum Shape {
    Leaf,
    Fields,
    SetItems,
    MapItems(Vec<String>),
}

fn shape(value: &Value, schema: Option<Node<'_>>) -> Shape {
    match value {
        Value::Object(map) if !map.is_empty() && !atomic_map(schema) => Shape::Fields,
        Value::Array(items) if !items.is_empty() => match list_type(schema) {
            ListType::Atomic => Shape::Leaf,
            ListType::Set => Shape::SetItems,
            ListType::Map(keys) => Shape::MapItems(keys),
        },
        _ => Shape::Leaf,
    }
}

fn diff(
    new: Option<&Value>,
    old: Option<&Value>,
    schema: Option<Node<'_>>,
    prefix: &mut Path,
    out: &mut BTreeSet<Path>,
) {
    let (new, old) = match (new, old) {
        (Some(new), Some(old)) if new == old => return,
        (Some(new), Some(old)) => (new, old),
        // present on one side only: all of its paths changed
        (Some(one), None) | (None, Some(one)) => return collect(one, schema, prefix, out),
        (None, None) => return,
    };
    let (new_shape, old_shape) = (shape(new, schema), shape(old, schema));
    if new_shape != old_shape || new_shape == Shape::Leaf {
        // no path resolves alike on both sides
        collect(new, schema, prefix, out);
        collect(old, schema, prefix, out);
        return;
    }
    match new_shape {
        Shape::Leaf => {}
        Shape::Fields => {
            let (Some(new_map), Some(old_map)) = (new.as_object(), old.as_object()) else {
                return;
            };
            diff_fields(new_map, old_map, schema, prefix, out);
        }
        Shape::SetItems => {
            let (Some(new_items), Some(old_items)) = (new.as_array(), old.as_array()) else {
                return;
            };
            for (items, others) in [(new_items, old_items), (old_items, new_items)] {
                for item in items.iter().filter(|i| !others.contains(i)) {
                    prefix.push(format!("v:{item}"));
                    out.insert(prefix.clone());
                    prefix.pop();
                }
            }
        }
        Shape::MapItems(keys) => {
            let (Some(new_items), Some(old_items)) = (new.as_array(), old.as_array()) else {
                return;
            };
            let item_schema = schema.and_then(Node::items);
            // a path names the first item with its key, on either side
            let new_keyed = first_by_key(new_items, &keys);
            let old_keyed = first_by_key(old_items, &keys);
            let mut keys_seen: Vec<&Value> = Vec::new();
            for (key, _) in new_keyed.iter().chain(old_keyed.iter()) {
                if keys_seen.contains(&key) {
                    continue;
                }
                keys_seen.push(key);
                let (a, b) = (keyed_item(&new_keyed, key), keyed_item(&old_keyed, key));
                if a == b {
                    continue;
                }
                prefix.push(format!("k:{key}"));
                prefix.push(".".into());
                out.insert(prefix.clone());
                prefix.pop();
                let empty = Map::new();
                let a_map = a.and_then(Value::as_object).unwrap_or(&empty);
                let b_map = b.and_then(Value::as_object).unwrap_or(&empty);
                diff_fields(a_map, b_map, item_schema, prefix, out);
                prefix.pop();
            }
        }
    }
}

/// Each key of a map-list once, with the first item that has it.
fn first_by_key<'v>(items: &'v [Value], keys: &[String]) -> Vec<(Value, &'v Value)> {
    let mut seen: Vec<(Value, &Value)> = Vec::with_capacity(items.len());
    for item in items {
        let key = item_key(item, keys);
        if !seen.iter().any(|(k, _)| *k == key) {
            seen.push((key, item));
        }
    }
    seen
}

fn keyed_item<'v>(items: &[(Value, &'v Value)], key: &Value) -> Option<&'v Value> {
    items.iter().find(|(k, _)| k == key).map(|(_, item)| *item)
}

fn diff_fields(
    new: &Map<String, Value>,
    old: &Map<String, Value>,
    schema: Option<Node<'_>>,
    prefix: &mut Path,
    out: &mut BTreeSet<Path>,
) {
    for key in union_keys(new, old) {
        prefix.push(format!("f:{key}"));
        diff(
            new.get(key),
            old.get(key),
            schema.and_then(|s| s.property(key)),
            prefix,
            out,
        );
        prefix.pop();
    }
}

/// Whether `path` is inside, or contains, one of `paths`.
fn related(path: &Path, paths: &BTreeSet<Path>) -> bool {
    use std::ops::Bound;
    paths
        .range::<[String], _>((Bound::Included(path.as_slice()), Bound::Unbounded))
        .next()
        .is_some_and(|p| p.starts_with(path))
        || (1..=path.len()).any(|n| paths.contains(&path[..n]))
}

/// Records a non-apply write: the writer takes ownership of every field it changed.
pub fn record_update(
    object: &mut Value,
    current: Option<&Value>,
    manager: &str,
    api_version: &str,
    schema: Option<Node<'_>>,
    status: bool,
) {
    let mut entries = entries_of(current);
    let changed: BTreeSet<Path> = match current {
        None => leaves(object, schema),
        Some(current) => changed_paths(object, current, schema),
    };
    let subresource = status.then(|| "status".to_owned());
    if !changed.is_empty() {
        for entry in &mut entries {
            if entry.manager != manager
                || entry.operation != "Update"
                || entry.subresource != subresource
            {
                entry.fields.retain(|p| !changed.contains(p));
            }
        }
        let now = crate::meta::now();
        match entries.iter_mut().find(|e| {
            e.manager == manager
                && e.operation == "Update"
                && e.subresource == subresource
                && e.api_version == api_version
        }) {
            Some(entry) => {
                entry.fields.extend(changed.iter().cloned());
                entry.time = now;
                entry.stored = None;
            }
            None => entries.push(Entry {
                manager: manager.to_owned(),
                operation: "Update".into(),
                api_version: api_version.to_owned(),
                time: now,
                subresource,
                fields: changed.clone(),
                stored: None,
            }),
        }
    }
    // fields that no longer exist belong to nobody; only what this write touched can have gone
    for entry in &mut entries {
        entry.fields.retain(|p| {
            (current.is_some() && !related(p, &changed)) || value_at(object, p).is_some()
        });
    }
    store_entries(object, &entries);
}

/// Records an apply: ownership, conflicts and removal of fields the manager stopped applying.
///
/// # Errors
/// 409 Conflict listing every conflicting field when `force` is false.
#[allow(clippy::too_many_arguments)]
pub fn record_apply(
    object: &mut Value,
    current: Option<&Value>,
    manager: &str,
    api_version: &str,
    applied: &Value,
    schema: Option<Node<'_>>,
    force: bool,
) -> Result<(), ApiError> {
    let mut entries = entries_of(current);
    let applied_fields = leaves(applied, schema);
    let empty = Value::Null;
    let live = current.unwrap_or(&empty);
    // conflicts: another manager owns a field we set to a different value
    let mut conflicts: BTreeMap<Path, Vec<(String, String)>> = BTreeMap::new();
    for entry in &entries {
        if entry.manager == manager && entry.operation == "Apply" {
            continue;
        }
        for path in entry.fields.intersection(&applied_fields) {
            if path.last().is_some_and(|t| t == ".") {
                continue;
            }
            if value_at(applied, path) != value_at(live, path) {
                conflicts
                    .entry(path.clone())
                    .or_default()
                    .push((entry.manager.clone(), entry.api_version.clone()));
            }
        }
    }
    if !conflicts.is_empty() {
        if !force {
            return Err(conflict_error(&conflicts));
        }
        for entry in &mut entries {
            if entry.manager == manager && entry.operation == "Apply" {
                continue;
            }
            entry.fields.retain(|p| !conflicts.contains_key(p));
        }
    }
    // fields this manager applied before but not now, owned by nobody else, go away
    let previous = entries
        .iter()
        .find(|e| e.manager == manager && e.operation == "Apply" && e.subresource.is_none())
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let others: BTreeSet<Path> = entries
        .iter()
        .filter(|e| !(e.manager == manager && e.operation == "Apply"))
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    let mut dropped: Vec<&Path> = previous
        .iter()
        .filter(|p| !applied_fields.contains(*p) && !others.contains(*p))
        .collect();
    // remove whole items before their fields so that paths stay resolvable
    dropped.sort_by_key(|p| p.len());
    for path in dropped {
        remove_at(object, path);
    }
    let now = crate::meta::now();
    entries
        .retain(|e| !(e.manager == manager && e.operation == "Apply" && e.subresource.is_none()));
    entries.push(Entry {
        manager: manager.to_owned(),
        operation: "Apply".into(),
        api_version: api_version.to_owned(),
        time: now,
        subresource: None,
        fields: applied_fields,
        stored: None,
    });
    for entry in &mut entries {
        entry.fields.retain(|p| value_at(object, p).is_some());
    }
    store_entries(object, &entries);
    Ok(())
}

fn conflict_error(conflicts: &BTreeMap<Path, Vec<(String, String)>>) -> ApiError {
    let mut causes = Vec::new();
    let mut lines = Vec::new();
    for (path, owners) in conflicts {
        for (owner, version) in owners {
            let message = format!("conflict with \"{owner}\" using {version}");
            lines.push(format!("{message}: {}", display(path)));
            causes.push(json!({"reason": "FieldManagerConflict", "message": message, "field": display(path)}));
        }
    }
    let count = causes.len();
    let plural = if count == 1 { "conflict" } else { "conflicts" };
    let mut error = ApiError::new(
        409,
        "Conflict",
        format!("Apply failed with {count} {plural}: {}", lines.join("\n")),
    );
    error.details = Some(json!({"causes": causes}));
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment() -> Option<Node<'static>> {
        Node::builtin("io.k8s.api.apps.v1.Deployment")
    }

    /// The definition [`changed_paths`] computes faster.
    fn changed_by_definition(new: &Value, old: &Value, schema: Option<Node<'_>>) -> BTreeSet<Path> {
        leaves(new, schema)
            .union(&leaves(old, schema))
            .filter(|p| value_at(new, p) != value_at(old, p))
            .cloned()
            .collect()
    }

    #[test]
    fn changed_paths_match_their_definition() {
        let pod = Node::builtin("io.k8s.api.core.v1.Pod");
        assert!(pod.is_some());
        let base = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "uid": "u", "labels": {"app": "a"}, "finalizers": ["x"],
                         "annotations": {}},
            "spec": {"nodeName": "n1", "containers": [
                {"name": "c", "image": "i:1", "args": ["a", "b"],
                 "ports": [{"containerPort": 80}, {"containerPort": 53, "protocol": "UDP"}],
                 "resources": {"requests": {"cpu": "1"}}},
                {"name": "d", "image": "j"}]},
            "status": {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "True"}]}
        });
        let variants = [
            json!({"status": {"phase": "Running", "podIP": "10.0.0.1", "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": "True", "lastTransitionTime": "t"}],
                "containerStatuses": [{"name": "c", "ready": true, "state": {"running": {"startedAt": "t"}}}]}}),
            json!({"metadata": {"labels": {"app": "b", "tier": "web"}, "finalizers": ["x", "y"]}}),
            json!({"metadata": {"labels": {}, "finalizers": [], "annotations": {"k": "v"}}}),
            json!({"spec": {"containers": [
                {"name": "d", "image": "j"},
                {"name": "c", "image": "i:2", "args": ["a"],
                 "ports": [{"containerPort": 80, "protocol": "TCP"}, {"containerPort": 8080}],
                 "resources": {}}]}}),
            json!({"spec": {"containers": [{"name": "c", "image": "i:1"}, {"name": "c", "image": "dup"}]}}),
            json!({"spec": "not an object", "status": null}),
            json!({"metadata": "odd"}),
        ];
        for variant in &variants {
            let mut changed = base.clone();
            crate::patch::apply::merge(&mut changed, variant, pod);
            if variant.get("spec").is_some_and(Value::is_string)
                || variant.get("metadata").is_some_and(Value::is_string)
            {
                changed = base.clone();
                for (k, v) in variant.as_object().unwrap() {
                    changed[k] = v.clone();
                }
            }
            assert!(
                !changed_by_definition(&changed, &base, pod).is_empty(),
                "{variant}"
            );
            for (new, old) in [(&changed, &base), (&base, &changed)] {
                assert_eq!(
                    changed_paths(new, old, pod),
                    changed_by_definition(new, old, pod),
                    "{variant}"
                );
            }
        }
        assert!(changed_paths(&base, &base, pod).is_empty());
    }

    #[test]
    fn ownership_moves_with_changes_and_untouched_entries_stay_as_they_were() {
        let owned = |object: &Value, manager: &str| -> BTreeSet<Path> {
            entries_of(Some(object))
                .into_iter()
                .find(|e| e.manager == manager)
                .map(|e| e.fields)
                .unwrap_or_default()
        };
        let path = |tokens: &[&str]| -> Path { tokens.iter().map(|t| (*t).to_owned()).collect() };
        let entry = |object: &Value, manager: &str| {
            object["metadata"]["managedFields"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["manager"] == manager)
                .cloned()
        };
        let mut v1 = json!({"metadata": {"labels": {"x": "1"}}, "spec": {"replicas": 1}});
        record_update(&mut v1, None, "a", "apps/v1", deployment(), false);
        let mut v2 = v1.clone();
        v2["spec"]["replicas"] = json!(2);
        record_update(&mut v2, Some(&v1), "b", "apps/v1", deployment(), false);
        assert!(!owned(&v2, "a").contains(&path(&["f:spec", "f:replicas"])));
        assert!(owned(&v2, "a").contains(&path(&["f:metadata", "f:labels", "f:x"])));
        assert_eq!(
            owned(&v2, "b"),
            BTreeSet::from([path(&["f:spec", "f:replicas"])])
        );
        // within the same second: one label added, one removed
        let mut v3 = v2.clone();
        v3["metadata"]["labels"] = json!({"y": "2"});
        record_update(&mut v3, Some(&v2), "a", "apps/v1", deployment(), false);
        assert_eq!(
            owned(&v3, "a"),
            BTreeSet::from([path(&["f:metadata", "f:labels", "f:y"])])
        );
        assert_eq!(entry(&v3, "b"), entry(&v2, "b"), "untouched");
    }

    #[test]
    fn trees_round_trip() {
        let object = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "c", "image": "x"}]}}}});
        let fields = leaves(&object, deployment());
        let tree = to_tree(&fields);
        assert_eq!(
            tree["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"c\"}"]["f:image"],
            json!({})
        );
        assert_eq!(from_tree(&tree), fields);
    }

    #[test]
    fn apply_removes_fields_it_stops_sending() {
        let first = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"replicas": 2}});
        let mut object = first.clone();
        record_apply(
            &mut object,
            None,
            "me",
            "apps/v1",
            &first,
            deployment(),
            false,
        )
        .unwrap();
        let second = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"replicas": 2}});
        let current = object.clone();
        let mut merged = current.clone();
        crate::patch::apply::merge(&mut merged, &second, deployment());
        record_apply(
            &mut merged,
            Some(&current),
            "me",
            "apps/v1",
            &second,
            deployment(),
            false,
        )
        .unwrap();
        assert_eq!(merged["metadata"]["labels"], json!({"a": "1"}));
    }

    #[test]
    fn conflicts_with_other_managers_unless_forced() {
        let mut object = json!({"spec": {"replicas": 2}});
        record_update(
            &mut object,
            None,
            "kubectl-edit",
            "apps/v1",
            deployment(),
            false,
        );
        let applied = json!({"spec": {"replicas": 5}});
        let current = object.clone();
        let mut merged = current.clone();
        crate::patch::apply::merge(&mut merged, &applied, deployment());
        let error = record_apply(
            &mut merged.clone(),
            Some(&current),
            "me",
            "apps/v1",
            &applied,
            deployment(),
            false,
        )
        .unwrap_err();
        assert_eq!(error.code, 409);
        assert!(
            error.message.contains(".spec.replicas"),
            "{}",
            error.message
        );
        record_apply(
            &mut merged,
            Some(&current),
            "me",
            "apps/v1",
            &applied,
            deployment(),
            true,
        )
        .unwrap();
        let managers: Vec<_> = merged["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["manager"].clone())
            .collect();
        assert_eq!(managers, vec![json!("me")]);
    }

    #[test]
    fn same_value_is_shared_not_a_conflict() {
        let mut object = json!({"spec": {"replicas": 2}});
        record_update(&mut object, None, "other", "apps/v1", deployment(), false);
        let applied = json!({"spec": {"replicas": 2}});
        let current = object.clone();
        record_apply(
            &mut object,
            Some(&current),
            "me",
            "apps/v1",
            &applied,
            deployment(),
            false,
        )
        .unwrap();
        assert_eq!(
            object["metadata"]["managedFields"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }
}
