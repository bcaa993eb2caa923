//! The ResourceQuota controller: recounts what each quota's namespace uses of the resources it
//! limits, listing the objects from the API server (a cache could lag behind a charge the
//! quota already shows), and writes
//! `status.hard` and `status.used` as `kubectl describe quota` shows them. Admission in the API
//! server charges new objects at once; this recount returns what deleted objects freed and
//! corrects charges for writes that then failed.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ResourceQuota;
use kelson_common::quota::{self, Usage};
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use tracing::debug;

use crate::context::{Context, Error, Result};

/// What the quota controller reads.
pub struct Shared {
    /// Context.
    pub context: Arc<Context>,
}

/// How often usage is recounted without a trigger (what deleting objects other than pods
/// frees shows after at most this long).
const RESYNC: Duration = Duration::from_secs(30);

/// The kind (group, plural) whose objects a quota resource counts.
#[must_use]
pub fn counted_kind(resource: &str) -> Option<(String, String)> {
    if let Some(counted) = resource.strip_prefix("count/") {
        return Some(match counted.split_once('.') {
            Some((plural, group)) => (group.to_owned(), plural.to_owned()),
            None => (String::new(), counted.to_owned()),
        });
    }
    let core = |plural: &str| Some((String::new(), plural.to_owned()));
    match resource {
        "pods" | "cpu" | "memory" | "ephemeral-storage" => core("pods"),
        r if r.starts_with("requests.") && r != "requests.storage" => core("pods"),
        r if r.starts_with("limits.") => core("pods"),
        "services" | "services.nodeports" | "services.loadbalancers" => core("services"),
        "persistentvolumeclaims" | "requests.storage" => core("persistentvolumeclaims"),
        r if r.contains(".storageclass.storage.k8s.io/") => core("persistentvolumeclaims"),
        "configmaps" | "secrets" | "replicationcontrollers" | "resourcequotas" => core(resource),
        _ => None,
    }
}

/// The usage the objects give of the resources in `hard` (every limited resource appears, at
/// zero when unused).
#[must_use]
pub fn used(quota: &Value, hard: &Usage, objects: &[(String, String, Vec<Value>)]) -> Usage {
    let mut total: Usage = hard.keys().map(|k| (k.clone(), 0)).collect();
    for (group, plural, items) in objects {
        for object in items {
            if !quota::covers(quota, group, plural, object) {
                continue;
            }
            for (resource, amount) in quota::usage(group, plural, object) {
                if let Some(sum) = total.get_mut(&resource) {
                    *sum += amount;
                }
            }
        }
    }
    total
}

async fn list(
    client: &kube::Client,
    namespace: &str,
    group: &str,
    plural: &str,
) -> Result<Vec<Value>> {
    let resource = if group.is_empty() {
        ApiResource {
            group: String::new(),
            version: "v1".into(),
            api_version: "v1".into(),
            kind: String::new(),
            plural: plural.into(),
        }
    } else {
        let discovered = kube::discovery::group(client, group)
            .await
            .map_err(Error::api(format!("discover the API group {group}")))?;
        let Some((resource, _)) = discovered
            .recommended_resources()
            .into_iter()
            .find(|(r, _)| r.plural == plural)
        else {
            return Ok(Vec::new());
        };
        resource
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let items = api
        .list(&ListParams::default())
        .await
        .map_err(Error::api(format!("list {plural} in {namespace}")))?
        .items;
    Ok(items
        .into_iter()
        .filter_map(|o| serde_json::to_value(o).ok())
        .collect())
}

/// Reconciles one quota.
///
/// # Errors
/// When an API call fails (retried by the error policy).
pub async fn reconcile(rq: Arc<ResourceQuota>, ctx: Arc<Shared>) -> Result<Action> {
    if rq.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = rq.namespace().unwrap_or_default();
    let name = rq.name_any();
    let value = serde_json::to_value(&*rq).unwrap_or_default();
    let hard = quota::parse(value.pointer("/spec/hard")).unwrap_or_default();
    let mut kinds: Vec<(String, String)> = hard.keys().filter_map(|r| counted_kind(r)).collect();
    kinds.sort();
    kinds.dedup();
    let mut objects = Vec::new();
    for (group, plural) in kinds {
        let items = list(&ctx.context.client, &namespace, &group, &plural).await?;
        objects.push((group, plural, items));
    }
    let used = used(&value, &hard, &objects);
    let status = json!({"hard": value.pointer("/spec/hard"), "used": quota::to_value(&used)});
    let current = value.get("status").cloned().unwrap_or(Value::Null);
    if same(&current, &status) {
        return Ok(Action::requeue(RESYNC));
    }
    debug!(quota = %format!("{namespace}/{name}"), ?used, "recounted");
    let api: Api<ResourceQuota> = Api::namespaced(ctx.context.client.clone(), &namespace);
    // conditional on the version read: a charge admitted meanwhile wins, and is recounted
    let patch =
        json!({"metadata": {"resourceVersion": rq.metadata.resource_version}, "status": status});
    match api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(Action::requeue(RESYNC)),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            Ok(Action::requeue(Duration::from_millis(200)))
        }
        Err(error) => Err(Error::Api {
            action: format!("update status of resourcequota {namespace}/{name}"),
            source: error,
        }),
    }
}

/// Statuses compare by amount, not spelling (`1Gi` and `1073741824` are the same).
fn same(current: &Value, next: &Value) -> bool {
    let parse = |v: &Value, key: &str| quota::parse(v.get(key));
    parse(current, "hard") == parse(next, "hard") && parse(current, "used") == parse(next, "used")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_resources_name_the_kinds_they_count() {
        assert_eq!(
            counted_kind("requests.cpu"),
            Some((String::new(), "pods".into()))
        );
        assert_eq!(
            counted_kind("requests.storage"),
            Some((String::new(), "persistentvolumeclaims".into()))
        );
        assert_eq!(
            counted_kind("count/deployments.apps"),
            Some(("apps".into(), "deployments".into()))
        );
        assert_eq!(
            counted_kind("count/secrets"),
            Some((String::new(), "secrets".into()))
        );
        assert_eq!(
            counted_kind("gold.storageclass.storage.k8s.io/requests.storage"),
            Some((String::new(), "persistentvolumeclaims".into()))
        );
        assert_eq!(counted_kind("hugepages-2Mi"), None);
    }

    #[test]
    fn usage_sums_what_the_quota_covers() {
        let quota =
            json!({"spec": {"hard": {"pods": "10", "requests.memory": "1Gi", "configmaps": "5"}}});
        let hard = quota::parse(quota.pointer("/spec/hard")).unwrap();
        let pod = |memory: &str, phase: &str| json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"memory": memory}}}]}, "status": {"phase": phase}});
        let objects = vec![
            (
                String::new(),
                "pods".to_owned(),
                vec![
                    pod("100Mi", "Running"),
                    pod("28Mi", "Pending"),
                    pod("1Gi", "Failed"),
                ],
            ),
            (
                String::new(),
                "configmaps".to_owned(),
                vec![json!({}), json!({})],
            ),
        ];
        let used = used(&quota, &hard, &objects);
        assert_eq!(
            quota::to_value(&used),
            json!({"pods": "2", "requests.memory": "128Mi", "configmaps": "2"})
        );
    }
}
