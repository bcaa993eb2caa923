//! The ReplicaSet controller: keeps `spec.replicas` pods matching the template, adopting
//! orphans that match the selector, deleting the least valuable pods first when scaling down,
//! and reporting `replicas`, `readyReplicas`, `availableReplicas` and `observedGeneration`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kelson_common::pod;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info};

use crate::context::{Context, Error, Result};

/// Pods created per reconcile at most (Kubernetes' burst replicas).
const BURST: usize = 500;

/// What to do to reach the desired count.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Pods to create.
    pub create: usize,
    /// Pods to delete (name, uid), least valuable first.
    pub delete: Vec<(String, String)>,
}

/// Kubernetes' ranking of pods to delete first: unassigned before assigned, pending before
/// running, not ready before ready, more restarts first, newest first.
fn deletion_rank(p: &Pod) -> (u8, u8, u8, i64, i64) {
    let assigned = p
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let phase = match pod::phase(p) {
        "Pending" => 0,
        "Unknown" => 1,
        _ => 2,
    };
    let ready = pod::is_ready(p);
    let restarts: i64 = p
        .status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .map(|c| i64::from(c.restart_count))
        .sum();
    let created = p
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(0, |t| t.0.as_second());
    (
        u8::from(assigned),
        phase,
        u8::from(ready),
        -restarts,
        -created,
    )
}

/// The pure decision: how many pods to create or which to delete.
#[must_use]
pub fn plan(replicas: i32, pods: &[Arc<Pod>]) -> Plan {
    let mut active: Vec<&Arc<Pod>> = pods.iter().filter(|p| pod::is_active(p)).collect();
    let replicas = usize::try_from(replicas.max(0)).unwrap_or(0);
    if active.len() < replicas {
        return Plan {
            create: (replicas - active.len()).min(BURST),
            delete: Vec::new(),
        };
    }
    active.sort_by_key(|p| deletion_rank(p));
    let delete = active
        .iter()
        .take(active.len() - replicas)
        .map(|p| (p.name_any(), p.metadata.uid.clone().unwrap_or_default()))
        .collect();
    Plan { create: 0, delete }
}

/// The status the pods give.
#[must_use]
pub fn status(rs: &ReplicaSet, pods: &[Arc<Pod>], now: &Time) -> ReplicaSetStatus {
    let active: Vec<&Arc<Pod>> = pods.iter().filter(|p| pod::is_active(p)).collect();
    let min_ready = rs
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let template_labels = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let count = |f: &dyn Fn(&Pod) -> bool| {
        i32::try_from(active.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    let previous = rs.status.clone().unwrap_or_default();
    ReplicaSetStatus {
        replicas: count(&|_| true),
        fully_labeled_replicas: Some(count(&|p| {
            template_labels
                .iter()
                .all(|(k, v)| p.labels().get(k) == Some(v))
        })),
        ready_replicas: Some(count(&pod::is_ready)),
        available_replicas: Some(count(&|p| pod::is_available(p, min_ready, now))),
        observed_generation: rs.metadata.generation,
        conditions: previous.conditions,
        terminating_replicas: None,
    }
}

/// The pod the template describes, owned by the ReplicaSet.
#[must_use]
pub fn pod_from_template(rs: &ReplicaSet) -> Pod {
    let template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let metadata = template.metadata.unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", rs.name_any())),
            namespace: rs.namespace(),
            labels: metadata.labels,
            annotations: metadata.annotations,
            owner_references: rs.controller_owner_ref(&()).map(|r| vec![r]),
            finalizers: metadata.finalizers,
            ..ObjectMeta::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// The pods of a ReplicaSet in the cache: those it controls, and orphans its selector matches.
fn pods_of(rs: &ReplicaSet, pods: &Store<Pod>) -> (Vec<Arc<Pod>>, Vec<Arc<Pod>>) {
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    let namespace = rs.namespace();
    let selector = rs
        .spec
        .as_ref()
        .map(|s| s.selector.clone())
        .unwrap_or_default();
    let mut owned = Vec::new();
    let mut orphans = Vec::new();
    for p in pods.state() {
        if p.namespace() != namespace {
            continue;
        }
        match pod::controller_of(&p.metadata) {
            Some(owner) if owner.uid == uid => owned.push(p),
            Some(_) => {}
            None if !pod::is_terminating(&p)
                && !kelson_common::selector::is_empty(&selector)
                && kelson_common::selector::matches(&selector, p.labels()) =>
            {
                orphans.push(p);
            }
            None => {}
        }
    }
    (owned, orphans)
}

/// Reconciles one ReplicaSet.
///
/// # Errors
/// When an API call fails (retried by the error policy).
pub async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Shared>) -> Result<Action> {
    if rs.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = rs.namespace().unwrap_or_default();
    let key = format!("{namespace}/{}", rs.name_any());
    let api: Api<Pod> = Api::namespaced(ctx.context.client.clone(), &namespace);
    let (mut owned, orphans) = pods_of(&rs, &ctx.pods);
    for orphan in orphans {
        let patch = json!({"metadata": {"ownerReferences": [rs.controller_owner_ref(&())], "uid": orphan.metadata.uid}});
        match api
            .patch(
                &orphan.name_any(),
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
        {
            Ok(adopted) => owned.push(Arc::new(adopted)),
            Err(error) => debug!(pod = %orphan.name_any(), %error, "adoption failed"),
        }
    }
    let names: HashSet<String> = owned.iter().map(|p| p.name_any()).collect();
    let uids: HashSet<String> = owned
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    if ctx.context.expectations.satisfied(&key, &names, &uids) {
        let replicas = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let plan = plan(replicas, &owned);
        apply(&ctx, &rs, &api, &key, plan).await?;
    }
    let now = Time(jiff::Timestamp::now());
    let status = status(&rs, &owned, &now);
    if rs.status.as_ref() != Some(&status) {
        let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.context.client.clone(), &namespace);
        rs_api
            .patch_status(
                &rs.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": status})),
            )
            .await
            .map_err(Error::api(format!("update status of replicaset {key}")))?;
    }
    // pods that are ready but not yet available become available later
    let min_ready = rs
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    if min_ready > 0 && status.ready_replicas != status.available_replicas {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

async fn apply(ctx: &Shared, rs: &ReplicaSet, api: &Api<Pod>, key: &str, plan: Plan) -> Result<()> {
    if plan.create > 0 {
        let template = pod_from_template(rs);
        let params = PostParams::default();
        // slow start, as Kubernetes does: 1, 2, 4, ... so that a broken template fails fast
        let mut created = Vec::new();
        let mut remaining = plan.create;
        let mut batch = 1;
        let mut failure = None;
        while remaining > 0 && failure.is_none() {
            let size = batch.min(remaining);
            let results: Vec<kube::Result<Pod>> = futures::stream::iter(0..size)
                .map(|_| {
                    let (api, params, template) = (api.clone(), params.clone(), template.clone());
                    async move { api.create(&params, &template).await }
                })
                .buffer_unordered(64)
                .collect()
                .await;
            for result in results {
                match result {
                    Ok(p) => created.push(p.name_any()),
                    Err(error) => failure = Some(error),
                }
            }
            remaining -= size;
            batch *= 2;
        }
        ctx.context.expectations.expect(key, created.clone(), []);
        if !created.is_empty() {
            info!(replicaset = %key, count = created.len(), "created pods");
            let note = format!(
                "Created pod: {}",
                created.first().map_or("", String::as_str)
            );
            ctx.context
                .event(&rs.object_ref(&()), false, "SuccessfulCreate", note)
                .await;
        }
        if let Some(error) = failure {
            ctx.context
                .event(
                    &rs.object_ref(&()),
                    true,
                    "FailedCreate",
                    format!("Error creating: {error}"),
                )
                .await;
            return Err(Error::Api {
                action: format!("create pods for replicaset {key}"),
                source: error,
            });
        }
    }
    if !plan.delete.is_empty() {
        let uids: Vec<String> = plan.delete.iter().map(|(_, uid)| uid.clone()).collect();
        ctx.context.expectations.expect(key, [], uids);
        crate::context::delete_pods(
            api,
            plan.delete.iter().map(|(name, _)| name.clone()).collect(),
        )
        .await?;
        let note = format!("Deleted pod: {}", plan.delete[0].0);
        ctx.context
            .event(&rs.object_ref(&()), false, "SuccessfulDelete", note)
            .await;
    }
    Ok(())
}

/// What the ReplicaSet controller reads.
pub struct Shared {
    /// Context.
    pub context: Arc<Context>,
    /// The pod cache.
    pub pods: Store<Pod>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(name: &str, node: Option<&str>, phase: &str, ready: bool, created: &str) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "uid": name, "creationTimestamp": created},
                "spec": {"nodeName": node, "containers": []},
                "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
            }))
            .unwrap(),
        )
    }

    #[test]
    fn scales_up_and_down() {
        let pods = vec![
            pod(
                "ready-old",
                Some("n"),
                "Running",
                true,
                "2024-01-01T00:00:00Z",
            ),
            pod(
                "ready-new",
                Some("n"),
                "Running",
                true,
                "2024-01-02T00:00:00Z",
            ),
            pod(
                "pending",
                Some("n"),
                "Pending",
                false,
                "2024-01-01T00:00:00Z",
            ),
            pod("unassigned", None, "Pending", false, "2024-01-01T00:00:00Z"),
        ];
        assert_eq!(
            plan(6, &pods),
            Plan {
                create: 2,
                delete: vec![]
            }
        );
        assert_eq!(plan(4, &pods), Plan::default());
        let down = plan(1, &pods);
        let names: Vec<&str> = down.delete.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["unassigned", "pending", "ready-new"],
            "least valuable first"
        );
        assert_eq!(plan(2000, &[]).create, BURST);
    }

    #[test]
    fn terminal_and_terminating_pods_do_not_count() {
        let mut terminating =
            (*pod("t", Some("n"), "Running", true, "2024-01-01T00:00:00Z")).clone();
        terminating.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
        let pods = vec![
            Arc::new(terminating),
            pod(
                "done",
                Some("n"),
                "Succeeded",
                false,
                "2024-01-01T00:00:00Z",
            ),
        ];
        assert_eq!(plan(1, &pods).create, 1);
    }
}
