//! Talking to the cluster: kinds resolved through discovery (cached), server-side apply under
//! the `kelson-gitops` field manager (dry-run first, so the diff is the server's own answer with
//! every default filled in), apply order, and diffs with Secret values redacted.

use std::collections::HashMap;

use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use parking_lot::Mutex;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::api::FIELD_MANAGER;

/// Kinds known to the server, resolved once (a kind that is missing is asked again, since a
/// CustomResourceDefinition applied meanwhile may have added it).
pub struct Kinds {
    client: Client,
    cache: Mutex<HashMap<(String, String), (ApiResource, bool)>>,
}

impl Kinds {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The resource and whether it is namespaced; None when the server has no such kind.
    pub async fn resolve(
        &self,
        api_version: &str,
        kind: &str,
    ) -> Result<Option<(ApiResource, bool)>, kube::Error> {
        let key = (api_version.to_owned(), kind.to_owned());
        if let Some(found) = self.cache.lock().get(&key) {
            return Ok(Some(found.clone()));
        }
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        let gvk = GroupVersionKind::gvk(group, version, kind);
        match kube::discovery::pinned_kind(&self.client, &gvk).await {
            Ok((resource, capabilities)) => {
                let namespaced = capabilities.scope == kube::discovery::Scope::Namespaced;
                self.cache
                    .lock()
                    .insert(key, (resource.clone(), namespaced));
                Ok(Some((resource, namespaced)))
            }
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
            Err(kube::Error::Discovery(_)) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// The API for objects of `resource` in `namespace` ("" for cluster-scoped).
    pub fn api(&self, resource: &ApiResource, namespace: &str) -> Api<DynamicObject> {
        if namespace.is_empty() {
            Api::all_with(self.client.clone(), resource)
        } else {
            Api::namespaced_with(self.client.clone(), namespace, resource)
        }
    }
}

/// Server-side apply parameters of the reconciler.
pub fn apply_params(dry_run: bool) -> PatchParams {
    let mut params = PatchParams::apply(FIELD_MANAGER).force();
    params.dry_run = dry_run;
    params
}

/// Applies `object` (dry-run or for real) and returns what the server stored or would store.
#[tracing::instrument(name = "apply", skip_all, fields(object = name, dry_run))]
pub async fn apply(
    api: &Api<DynamicObject>,
    name: &str,
    object: &Value,
    dry_run: bool,
) -> Result<Value, kube::Error> {
    let stored = api
        .patch(name, &apply_params(dry_run), &Patch::Apply(object))
        .await?;
    Ok(serde_json::to_value(stored).unwrap_or(Value::Null))
}

/// An object without what changes on every write (resourceVersion, managedFields, generation),
/// so a dry-run answer and the live object compare equal when nothing would change.
pub fn normalize(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in ["resourceVersion", "managedFields", "generation"] {
            metadata.remove(field);
        }
    }
    object
}

/// Secret values replaced by a digest of each, so diffs, history and logs never show them.
pub fn redact(object: &Value) -> Value {
    let mut object = object.clone();
    let is_secret = object["kind"] == "Secret" && object["apiVersion"] == "v1";
    if is_secret {
        for field in ["data", "stringData"] {
            if let Some(map) = object.get_mut(field).and_then(Value::as_object_mut) {
                for value in map.values_mut() {
                    let digest = Sha256::digest(value.to_string().as_bytes());
                    *value =
                        Value::from(format!("<redacted sha256:{}>", &hex::encode(digest)[..12]));
                }
            }
        }
        if let Some(annotations) = object
            .pointer_mut("/metadata/annotations")
            .and_then(Value::as_object_mut)
        {
            annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
    }
    object
}

/// The changes from `live` to `desired` as JSON-patch paths with the operation, redacted:
/// `replace /spec/replicas`, `add /data/b`, …; everything when the object is new.
pub fn changes(live: Option<&Value>, desired: &Value) -> Vec<String> {
    let Some(live) = live else {
        return vec!["create".into()];
    };
    let patch = json_patch::diff(&normalize(&redact(live)), &normalize(&redact(desired)));
    patch
        .0
        .iter()
        .map(|op| match op {
            json_patch::PatchOperation::Add(a) => format!("add {}", a.path),
            json_patch::PatchOperation::Remove(r) => format!("remove {}", r.path),
            json_patch::PatchOperation::Replace(r) => format!("replace {}", r.path),
            json_patch::PatchOperation::Move(m) => format!("move {}", m.path),
            json_patch::PatchOperation::Copy(c) => format!("copy {}", c.path),
            json_patch::PatchOperation::Test(t) => format!("test {}", t.path),
        })
        .collect()
}

/// A unified-style listing of the differences, Secret values redacted: `- path: old` and
/// `+ path: new` lines.
pub fn render_diff(live: Option<&Value>, desired: &Value) -> String {
    let desired = normalize(&redact(desired));
    let Some(live) = live else {
        return serde_yaml::to_string(&desired)
            .unwrap_or_default()
            .lines()
            .map(|l| format!("+ {l}\n"))
            .collect();
    };
    let live = normalize(&redact(live));
    let patch = json_patch::diff(&live, &desired);
    let mut out = String::new();
    for op in &patch.0 {
        let (path, old, new) = match op {
            json_patch::PatchOperation::Add(a) => (a.path.to_string(), None, Some(a.value.clone())),
            json_patch::PatchOperation::Remove(r) => (
                r.path.to_string(),
                live.pointer(r.path.as_str()).cloned(),
                None,
            ),
            json_patch::PatchOperation::Replace(r) => (
                r.path.to_string(),
                live.pointer(r.path.as_str()).cloned(),
                Some(r.value.clone()),
            ),
            _ => continue,
        };
        if let Some(old) = old {
            out.push_str(&format!("- {path}: {old}\n"));
        }
        if let Some(new) = new {
            out.push_str(&format!("+ {path}: {new}\n"));
        }
    }
    out
}

/// Leaves the fields at `pointers` as the cluster has them, with Flux's server-side-apply
/// semantics: a field another server-side applier owns is stripped from what we send (it stays
/// theirs and is not deleted); any other field present in the cluster is applied back with its
/// live value (adopted: neither changed nor deleted); a field the cluster lacks is not sent.
pub fn respect_ignored(desired: &mut Value, live: Option<&Value>, pointers: &[String]) {
    for pointer in pointers {
        let Some(value) = live.and_then(|l| l.pointer(pointer)) else {
            remove_pointer(desired, pointer);
            continue;
        };
        if live.is_some_and(|l| owned_by_another_applier(l, pointer)) {
            remove_pointer(desired, pointer);
        } else {
            set_pointer(desired, pointer, value.clone());
        }
    }
}

/// Whether a manager other than ours owns the field at `pointer` through server-side apply
/// (per the live object's managedFields; pointers into lists are never counted as owned).
pub fn owned_by_another_applier(live: &Value, pointer: &str) -> bool {
    let tokens: Vec<String> = pointer.split('/').skip(1).map(unescape).collect();
    if tokens.is_empty() || tokens.iter().any(|t| t.parse::<usize>().is_ok()) {
        return false;
    }
    live.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|entry| entry["operation"] == "Apply" && entry["manager"] != FIELD_MANAGER)
        .any(|entry| {
            let mut node = &entry["fieldsV1"];
            tokens.iter().all(|token| {
                node = &node[format!("f:{token}").as_str()];
                !node.is_null()
            })
        })
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// Sets `value` at `pointer`, creating objects on the way (arrays must have the index).
pub fn set_pointer(target: &mut Value, pointer: &str, value: Value) {
    let tokens: Vec<String> = pointer.split('/').skip(1).map(unescape).collect();
    let Some((last, parents)) = tokens.split_last() else {
        return;
    };
    let mut node = target;
    for token in parents {
        node = match node {
            Value::Object(map) => map
                .entry(token.clone())
                .or_insert_with(|| Value::Object(Default::default())),
            Value::Array(items) => match token.parse::<usize>().ok().and_then(|i| items.get_mut(i))
            {
                Some(item) => item,
                None => return,
            },
            _ => return,
        };
    }
    match node {
        Value::Object(map) => {
            map.insert(last.clone(), value);
        }
        Value::Array(items) => {
            if let Some(item) = last.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                *item = value;
            }
        }
        _ => {}
    }
}

/// Removes the value at `pointer`, if any.
pub fn remove_pointer(target: &mut Value, pointer: &str) {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    let last = unescape(last);
    match target.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.remove(&last);
        }
        Some(Value::Array(items)) => {
            if let Some(index) = last.parse::<usize>().ok().filter(|i| *i < items.len()) {
                items.remove(index);
            }
        }
        _ => {}
    }
}

/// Position of a kind in the apply order (Argo CD's order within a wave): namespaces and
/// definitions first, then what pods need, then workloads, then custom resources.
pub fn kind_rank(group: &str, kind: &str) -> usize {
    const ORDER: [&str; 30] = [
        "Namespace",
        "CustomResourceDefinition",
        "NetworkPolicy",
        "ResourceQuota",
        "LimitRange",
        "PodDisruptionBudget",
        "ServiceAccount",
        "Secret",
        "ConfigMap",
        "StorageClass",
        "PersistentVolume",
        "PersistentVolumeClaim",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "DaemonSet",
        "Pod",
        "ReplicationController",
        "ReplicaSet",
        "Deployment",
        "HorizontalPodAutoscaler",
        "StatefulSet",
        "Job",
        "CronJob",
        "IngressClass",
        "Ingress",
        "APIService",
        "PriorityClass",
    ];
    let builtin = group.is_empty() || group.ends_with(".k8s.io") || !group.contains('.');
    match ORDER.iter().position(|k| *k == kind) {
        Some(position) if builtin => position,
        _ => ORDER.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_never_show_their_values() {
        let live = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"password": "aHVudGVyMg=="}});
        let desired = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"password": "c2VjcmV0"}});
        let diff = render_diff(Some(&live), &desired);
        assert!(
            !diff.contains("aHVudGVyMg==") && !diff.contains("c2VjcmV0"),
            "{diff}"
        );
        assert!(diff.contains("/data/password"), "{diff}");
        assert_eq!(changes(Some(&live), &desired), ["replace /data/password"]);
        let created = render_diff(None, &desired);
        assert!(
            !created.contains("c2VjcmV0") && created.contains("+ kind: Secret"),
            "{created}"
        );
    }

    #[test]
    fn bookkeeping_fields_are_not_changes() {
        let live = json!({"metadata": {"name": "a", "resourceVersion": "5", "generation": 2, "managedFields": [{}]}, "spec": {"replicas": 1}});
        let desired =
            json!({"metadata": {"name": "a", "resourceVersion": "6"}, "spec": {"replicas": 1}});
        assert!(changes(Some(&live), &desired).is_empty());
        let scaled = json!({"metadata": {"name": "a"}, "spec": {"replicas": 2}});
        assert_eq!(changes(Some(&live), &scaled), ["replace /spec/replicas"]);
        assert_eq!(
            render_diff(Some(&live), &scaled),
            "- /spec/replicas: 1\n+ /spec/replicas: 2\n"
        );
    }

    #[test]
    fn ignored_fields_keep_the_cluster_value() {
        let live = json!({"spec": {"replicas": 7, "template": {"metadata": {"annotations": {"a/b": "x"}}}}});
        let mut desired = json!({"spec": {"replicas": 2, "paused": true}});
        respect_ignored(
            &mut desired,
            Some(&live),
            &[
                "/spec/replicas".into(),
                "/spec/paused".into(),
                "/spec/template/metadata/annotations/a~1b".into(),
            ],
        );
        assert_eq!(
            desired,
            json!({"spec": {"replicas": 7, "template": {"metadata": {"annotations": {"a/b": "x"}}}}})
        );
        // nothing live yet: the field is simply not sent
        let mut new = json!({"spec": {"replicas": 2, "containers": [{"image": "a"}]}});
        respect_ignored(
            &mut new,
            None,
            &["/spec/replicas".into(), "/spec/containers/0/image".into()],
        );
        assert_eq!(new, json!({"spec": {"containers": [{}]}}));
    }

    #[test]
    fn fields_another_applier_owns_are_stripped_not_adopted() {
        let live = json!({
            "metadata": {"managedFields": [
                {"manager": "kelson-gitops", "operation": "Apply", "fieldsV1": {"f:spec": {"f:replicas": {}, "f:paused": {}}}},
                {"manager": "autoscaler", "operation": "Apply", "fieldsV1": {"f:spec": {"f:replicas": {}}}},
                {"manager": "kubectl-edit", "operation": "Update", "fieldsV1": {"f:spec": {"f:paused": {}}}}
            ]},
            "spec": {"replicas": 7, "paused": true}
        });
        assert!(owned_by_another_applier(&live, "/spec/replicas"));
        assert!(
            !owned_by_another_applier(&live, "/spec/paused"),
            "updates are not appliers"
        );
        assert!(!owned_by_another_applier(&live, "/spec/minReadySeconds"));
        let mut desired = json!({"spec": {"replicas": 2, "paused": false}});
        respect_ignored(
            &mut desired,
            Some(&live),
            &["/spec/replicas".into(), "/spec/paused".into()],
        );
        assert_eq!(desired, json!({"spec": {"paused": true}}));
    }

    #[test]
    fn namespaces_and_definitions_go_first_custom_resources_last() {
        assert!(
            kind_rank("", "Namespace")
                < kind_rank("apiextensions.k8s.io", "CustomResourceDefinition")
        );
        assert!(kind_rank("", "ConfigMap") < kind_rank("apps", "Deployment"));
        assert!(kind_rank("apps", "Deployment") < kind_rank("example.com", "Deployment"));
        assert!(
            kind_rank("networking.k8s.io", "Ingress")
                < kind_rank("gitops.kelson.dev", "Application")
        );
    }
}
