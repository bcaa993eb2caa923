//! The merge half of server-side apply: an apply configuration is merged into the live object
//! following the schema's list semantics (`x-kubernetes-list-type` map/set/atomic with
//! `x-kubernetes-list-map-keys`; older lists with a patch merge key count as maps). Which fields
//! disappear because a manager stopped sending them is decided in `crate::fieldset`.

use serde_json::{Map, Value};

use crate::schema::Node;

/// How a list merges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListType {
    /// Replaced as a whole.
    Atomic,
    /// Items are unique scalars.
    Set,
    /// Items are objects identified by these keys.
    Map(Vec<String>),
}

/// The list type of a schema node (atomic when unknown).
#[must_use]
pub fn list_type(schema: Option<Node<'_>>) -> ListType {
    let Some(schema) = schema else {
        return ListType::Atomic;
    };
    match schema.str_field("x-kubernetes-list-type") {
        Some("set") => ListType::Set,
        Some("map") => ListType::Map(schema.list_map_keys()),
        Some(_) => ListType::Atomic,
        None => match schema.str_field("x-kubernetes-patch-merge-key") {
            Some(key) => ListType::Map(vec![key.to_owned()]),
            None => ListType::Atomic,
        },
    }
}

/// Whether a map is atomic.
#[must_use]
pub fn atomic_map(schema: Option<Node<'_>>) -> bool {
    schema.and_then(|s| s.str_field("x-kubernetes-map-type")) == Some("atomic")
}

/// The key of a map-list item, as a JSON object of its key fields. A key field the item leaves
/// out takes its schema default, as structured merge does (`protocol` defaults to `TCP` in
/// every list keyed by it).
#[must_use]
pub fn item_key(item: &Value, keys: &[String]) -> Value {
    let mut key = Map::new();
    for name in keys {
        match item.get(name) {
            Some(value) => {
                key.insert(name.clone(), value.clone());
            }
            None if name == "protocol" => {
                key.insert(name.clone(), Value::String("TCP".into()));
            }
            None => {}
        }
    }
    Value::Object(key)
}

/// Merges `applied` into `live`.
pub fn merge(live: &mut Value, applied: &Value, schema: Option<Node<'_>>) {
    match (live, applied) {
        (Value::Object(live_map), Value::Object(applied_map)) if !atomic_map(schema) => {
            for (key, value) in applied_map {
                let child = schema.and_then(|s| s.property(key));
                match live_map.get_mut(key) {
                    Some(existing) if !value.is_null() => merge(existing, value, child),
                    _ => {
                        live_map.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (Value::Array(live_items), Value::Array(applied_items)) => match list_type(schema) {
            ListType::Atomic => *live_items = applied_items.clone(),
            ListType::Set => {
                for item in applied_items {
                    if !live_items.contains(item) {
                        live_items.push(item.clone());
                    }
                }
            }
            ListType::Map(keys) => {
                let item_schema = schema.and_then(Node::items);
                for item in applied_items {
                    let key = item_key(item, &keys);
                    match live_items
                        .iter_mut()
                        .find(|existing| item_key(existing, &keys) == key)
                    {
                        Some(existing) => merge(existing, item, item_schema),
                        None => live_items.push(item.clone()),
                    }
                }
            }
        },
        (live, applied) => *live = applied.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn map_lists_merge_by_key_and_atomic_lists_replace() {
        let schema = Node::builtin("io.k8s.api.apps.v1.Deployment");
        let mut live = json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [
            {"name": "a", "image": "x", "args": ["1", "2"]},
            {"name": "b", "image": "y"}
        ]}}}});
        let applied = json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "z", "args": ["3"]}]}}}});
        merge(&mut live, &applied, schema);
        assert_eq!(
            live,
            json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [
                {"name": "a", "image": "z", "args": ["3"]},
                {"name": "b", "image": "y"}
            ]}}}})
        );
    }
}
