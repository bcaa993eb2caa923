//! The DaemonSet controller: one pod on every node the template fits (node selector, required
//! node affinity, taints the pod tolerates), none on nodes it stops fitting, failed pods
//! replaced, and template changes rolled out node by node — `RollingUpdate` within
//! `maxUnavailable` (or `maxSurge`, starting the new pod before the old one goes), or
//! `OnDelete`. Pods are pinned to their node by a `metadata.name` node affinity field and placed
//! by the scheduler, as in Kubernetes. Templates are kept as ControllerRevisions for `kubectl
//! rollout history/undo`; status is what `kubectl rollout status` and `kubectl get ds` read.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodSpec, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kelson_common::{node, pod, selector};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::info;

use crate::context::{Context, Error, Result};
use crate::revision::{self, HASH_LABEL};

/// What the DaemonSet controller reads.
pub struct Shared {
    /// Context.
    pub context: Arc<Context>,
    /// Pod cache.
    pub pods: Store<Pod>,
    /// Node cache.
    pub nodes: Store<Node>,
    /// ControllerRevision cache.
    pub revisions: Store<ControllerRevision>,
}

/// The tolerations Kubernetes adds to every daemon pod, so that node conditions and cordons
/// do not keep (or drive) it off its node.
#[must_use]
pub fn tolerations(spec: &PodSpec) -> Vec<Toleration> {
    let mut tolerations = spec.tolerations.clone().unwrap_or_default();
    let mut add = |key: &str, effect: &str| {
        let wanted = Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some(effect.into()),
            ..Toleration::default()
        };
        if !tolerations.contains(&wanted) {
            tolerations.push(wanted);
        }
    };
    add("node.kubernetes.io/not-ready", "NoExecute");
    add("node.kubernetes.io/unreachable", "NoExecute");
    add("node.kubernetes.io/disk-pressure", "NoSchedule");
    add("node.kubernetes.io/memory-pressure", "NoSchedule");
    add("node.kubernetes.io/pid-pressure", "NoSchedule");
    add("node.kubernetes.io/unschedulable", "NoSchedule");
    if spec.host_network == Some(true) {
        add("node.kubernetes.io/network-unavailable", "NoSchedule");
    }
    tolerations
}

/// Whether a daemon pod belongs on a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// A pod should be started there.
    pub should_run: bool,
    /// A pod already there may stay (false: delete it).
    pub should_continue: bool,
}

/// Where the pod spec fits: its node selector and required node affinity must match, and a
/// `NoSchedule` taint it does not tolerate keeps new pods off while a `NoExecute` one also
/// evicts running pods.
#[must_use]
pub fn placement(spec: &PodSpec, node: &Node) -> Placement {
    let name = node.name_any();
    let labels = node.labels();
    let selected = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    let affine = required.is_none_or(|r| {
        r.node_selector_terms
            .iter()
            .any(|term| selector::node_term_matches(term, labels, &name))
    });
    if !selected || !affine || node.metadata.deletion_timestamp.is_some() {
        return Placement::default();
    }
    let tolerations = tolerations(spec);
    let taints: &[Taint] = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    let untolerated = |effect: &str| {
        taints
            .iter()
            .any(|t| t.effect == effect && !node::tolerated(&tolerations, t))
    };
    let evicted = untolerated("NoExecute");
    Placement {
        should_run: !evicted && !untolerated("NoSchedule"),
        should_continue: !evicted,
    }
}

/// The node a daemon pod is for: where it runs, or (before scheduling) the node its
/// `metadata.name` affinity field names.
#[must_use]
pub fn node_of(p: &Pod) -> Option<String> {
    let spec = p.spec.as_ref()?;
    if let Some(name) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(name.clone());
    }
    spec.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == "metadata.name" && r.operator == "In")
        .and_then(|r| r.values.as_ref()?.first().cloned())
}

/// How template changes reach the pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Only pods deleted by hand are replaced.
    OnDelete,
    /// Node by node.
    RollingUpdate {
        /// New pods started next to old ones at most.
        max_surge: i32,
        /// Nodes without an available pod at most (when not surging).
        max_unavailable: i32,
    },
}

/// Percentages of the desired count round up, as Kubernetes does for DaemonSets.
fn scaled(value: Option<&IntOrString>, total: i32) -> i32 {
    match value {
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => {
            let percent: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            i32::try_from((i64::from(total) * percent + 99) / 100).unwrap_or(i32::MAX)
        }
        None => 0,
    }
}

/// The strategy of a DaemonSet for `desired` nodes.
#[must_use]
pub fn strategy(ds: &DaemonSet, desired: i32) -> Strategy {
    let update = ds.spec.as_ref().and_then(|s| s.update_strategy.as_ref());
    if update.and_then(|u| u.type_.as_deref()) == Some("OnDelete") {
        return Strategy::OnDelete;
    }
    let rolling = update.and_then(|u| u.rolling_update.as_ref());
    let max_surge = scaled(rolling.and_then(|r| r.max_surge.as_ref()), desired).max(0);
    let mut max_unavailable = scaled(
        Some(
            rolling
                .and_then(|r| r.max_unavailable.clone())
                .unwrap_or(IntOrString::Int(1)),
        )
        .as_ref(),
        desired,
    )
    .max(0);
    if max_surge == 0 && max_unavailable == 0 {
        max_unavailable = 1;
    }
    Strategy::RollingUpdate {
        max_surge,
        max_unavailable,
    }
}

/// One node and the DaemonSet's pods on it (not being deleted), oldest first.
#[derive(Clone, Debug)]
pub struct NodePods {
    /// Node name.
    pub node: String,
    /// Where the template fits.
    pub placement: Placement,
    /// The pods.
    pub pods: Vec<Arc<Pod>>,
}

/// What to do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Nodes to start a pod on.
    pub create: Vec<String>,
    /// Pods to delete (name, uid).
    pub delete: Vec<(String, String)>,
    /// Failed pods among `delete` (replaced on a later pass).
    pub failed: usize,
}

fn has_hash(p: &Pod, hash: &str) -> bool {
    p.labels().get(HASH_LABEL).map(String::as_str) == Some(hash)
}

fn key(p: &Pod) -> (String, String) {
    (p.name_any(), p.metadata.uid.clone().unwrap_or_default())
}

/// The pure decision over every node: start missing pods, remove extra, misplaced and failed
/// ones, and advance a rolling update by as much as its bounds allow.
#[must_use]
pub fn plan(
    nodes: &[NodePods],
    hash: &str,
    strategy: Strategy,
    min_ready: i32,
    now: &Time,
) -> Plan {
    let mut plan = Plan::default();
    let available = |p: &Pod| pod::is_available(p, min_ready, now);
    let mut unavailable = 0;
    let mut surged = 0;
    // nodes whose only pod is old and available: the rolling update's candidates
    let mut candidates: Vec<(&str, &Arc<Pod>)> = Vec::new();
    for node in nodes {
        let (failed, live): (Vec<&Arc<Pod>>, Vec<&Arc<Pod>>) =
            node.pods.iter().partition(|p| pod::is_terminal(p));
        for p in &failed {
            plan.delete.push(key(p));
            plan.failed += 1;
        }
        if !node.placement.should_continue {
            plan.delete.extend(live.iter().map(|p| key(p)));
            continue;
        }
        if live.is_empty() {
            // a failed pod is replaced once its deletion has been seen
            if node.placement.should_run && failed.is_empty() {
                plan.create.push(node.node.clone());
            }
            if node.placement.should_run {
                unavailable += 1;
            }
            continue;
        }
        let (new, old): (Vec<&Arc<Pod>>, Vec<&Arc<Pod>>) =
            live.iter().partition(|p| has_hash(p, hash));
        // one pod per node (one old and one new while surging)
        plan.delete.extend(new.iter().skip(1).map(|p| key(p)));
        let surging =
            matches!(strategy, Strategy::RollingUpdate { max_surge, .. } if max_surge > 0);
        let old_kept = if !new.is_empty() && !surging {
            plan.delete.extend(old.iter().map(|p| key(p)));
            None
        } else {
            plan.delete.extend(old.iter().skip(1).map(|p| key(p)));
            old.first().copied()
        };
        if !node.placement.should_run {
            continue;
        }
        let new_kept = new.first().copied();
        let Strategy::RollingUpdate { .. } = strategy else {
            if !new_kept.or(old_kept).is_some_and(|p| available(p)) {
                unavailable += 1;
            }
            continue;
        };
        match (old_kept, new_kept) {
            (Some(old), Some(new)) => {
                // surging: the old pod goes once its successor is available
                if available(new) {
                    plan.delete.push(key(old));
                } else {
                    surged += 1;
                }
            }
            (None, Some(new)) => {
                if !available(new) {
                    unavailable += 1;
                }
            }
            (Some(old), None) if !available(old) => {
                // nothing to lose: replace it at once
                unavailable += 1;
                if surging {
                    plan.create.push(node.node.clone());
                } else {
                    plan.delete.push(key(old));
                }
            }
            (Some(old), None) => candidates.push((&node.node, old)),
            (None, None) => {}
        }
    }
    if let Strategy::RollingUpdate {
        max_surge,
        max_unavailable,
    } = strategy
    {
        for (node, old) in candidates {
            if max_surge > 0 {
                if surged < max_surge {
                    plan.create.push(node.to_owned());
                    surged += 1;
                }
            } else if unavailable < max_unavailable {
                plan.delete.push(key(old));
                unavailable += 1;
            }
        }
    }
    plan
}

/// The status the nodes and pods give (Kubernetes reads the oldest pod of each node).
#[must_use]
pub fn status(
    ds: &DaemonSet,
    nodes: &[NodePods],
    hash: &str,
    collision_count: i32,
    now: &Time,
) -> DaemonSetStatus {
    let min_ready = ds
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let mut status = DaemonSetStatus {
        observed_generation: ds.metadata.generation,
        collision_count: (collision_count > 0).then_some(collision_count),
        conditions: ds.status.as_ref().and_then(|s| s.conditions.clone()),
        ..DaemonSetStatus::default()
    };
    let mut ready = 0;
    let mut available = 0;
    let mut updated = 0;
    for node in nodes {
        let oldest = node.pods.iter().find(|p| !pod::is_terminal(p));
        if node.placement.should_run {
            status.desired_number_scheduled += 1;
            let Some(p) = oldest else { continue };
            status.current_number_scheduled += 1;
            if pod::is_ready(p) {
                ready += 1;
                if pod::is_available(p, min_ready, now) {
                    available += 1;
                }
            }
            if node
                .pods
                .iter()
                .any(|p| !pod::is_terminal(p) && has_hash(p, hash))
            {
                updated += 1;
            }
        } else if oldest.is_some() {
            status.number_misscheduled += 1;
        }
    }
    status.number_ready = ready;
    status.number_available = Some(available);
    status.number_unavailable = Some(status.desired_number_scheduled - available);
    status.updated_number_scheduled = Some(updated);
    status
}

/// The pod for `node`: the template, its tolerations, pinned to the node by affinity.
#[must_use]
pub fn pod_for(ds: &DaemonSet, node: &str, hash: &str) -> Pod {
    let template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let metadata = template.metadata.unwrap_or_default();
    let mut labels = metadata.labels.unwrap_or_default();
    labels.insert(HASH_LABEL.into(), hash.into());
    let mut spec = template.spec.unwrap_or_default();
    spec.tolerations = Some(tolerations(&spec));
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let node_affinity = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    node_affinity.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".into(),
                operator: "In".into(),
                values: Some(vec![node.into()]),
            }]),
            match_expressions: None,
        }],
    });
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", ds.name_any())),
            namespace: ds.namespace(),
            labels: Some(labels),
            annotations: metadata.annotations,
            owner_references: ds.controller_owner_ref(&()).map(|r| vec![r]),
            finalizers: metadata.finalizers,
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// Every node with the DaemonSet's pods on it, sorted by node name.
fn nodes_with_pods(ds: &DaemonSet, nodes: &Store<Node>, pods: &[Arc<Pod>]) -> Vec<NodePods> {
    let spec = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .unwrap_or_default();
    let mut by_node: BTreeMap<String, Vec<Arc<Pod>>> = BTreeMap::new();
    for p in pods {
        if let Some(name) = node_of(p) {
            by_node.entry(name).or_default().push(p.clone());
        }
    }
    let mut result: Vec<NodePods> = nodes
        .state()
        .iter()
        .map(|n| {
            let name = n.name_any();
            let mut pods = by_node.remove(&name).unwrap_or_default();
            pods.sort_by_key(|p| {
                (
                    p.metadata
                        .creation_timestamp
                        .as_ref()
                        .map_or(0, |t| t.0.as_second()),
                    p.name_any(),
                )
            });
            NodePods {
                node: name,
                placement: placement(&spec, n),
                pods,
            }
        })
        .collect();
    // pods on nodes that are gone are left to pod garbage collection, as in Kubernetes
    result.sort_by(|a, b| a.node.cmp(&b.node));
    result
}

/// Reconciles one DaemonSet.
///
/// # Errors
/// When an API call fails (retried by the error policy).
pub async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Shared>) -> Result<Action> {
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    // never act on a partial picture: a node missing from the cache would lose its pod
    let _ = ctx.nodes.wait_until_ready().await;
    let _ = ctx.pods.wait_until_ready().await;
    let namespace = ds.namespace().unwrap_or_default();
    let name = ds.name_any();
    let key = format!("daemonset/{namespace}/{name}");
    let uid = ds.metadata.uid.clone().unwrap_or_default();
    let spec = ds.spec.clone().unwrap_or_default();
    let pods = crate::context::owned_by(&ctx.pods, Some(&namespace), &uid);
    let in_use: HashSet<String> = pods
        .iter()
        .filter_map(|p| p.labels().get(HASH_LABEL).cloned())
        .collect();
    let revisions = crate::context::owned_by(&ctx.revisions, Some(&namespace), &uid);
    let owner = revision::Owner::of(
        &*ds,
        &spec.template,
        ds.status.as_ref().and_then(|s| s.collision_count),
        spec.revision_history_limit,
    )?;
    let history = revision::plan(&owner, &revisions, &in_use);
    revision::apply(&ctx.context, &namespace, &history).await?;

    let live: Vec<Arc<Pod>> = pods
        .iter()
        .filter(|p| !pod::is_terminating(p))
        .cloned()
        .collect();
    let nodes = nodes_with_pods(&ds, &ctx.nodes, &live);
    let now = Time(jiff::Timestamp::now());
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let names: HashSet<String> = pods.iter().map(|p| p.name_any()).collect();
    let uids: HashSet<String> = pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
    let mut failed = 0;
    if ctx.context.expectations.satisfied(&key, &names, &uids) {
        let desired = i32::try_from(nodes.iter().filter(|n| n.placement.should_run).count())
            .unwrap_or(i32::MAX);
        let plan = plan(
            &nodes,
            &history.hash,
            strategy(&ds, desired),
            min_ready,
            &now,
        );
        failed = plan.failed;
        apply(&ctx, &ds, &key, &history.hash, plan).await?;
    }

    let status = status(&ds, &nodes, &history.hash, history.collision_count, &now);
    if ds.status.as_ref() != Some(&status) {
        let api: Api<DaemonSet> = Api::namespaced(ctx.context.client.clone(), &namespace);
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status})),
        )
        .await
        .map_err(Error::api(format!("update status of daemonset {key}")))?;
    }
    if failed > 0 {
        // replace failed pods after a pause, not in a hot loop
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    if min_ready > 0 && status.number_ready != status.number_available.unwrap_or(0) {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

async fn apply(ctx: &Shared, ds: &DaemonSet, key: &str, hash: &str, plan: Plan) -> Result<()> {
    let namespace = ds.namespace().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.context.client.clone(), &namespace);
    let reference = ds.object_ref(&());
    if !plan.delete.is_empty() {
        let uids: Vec<String> = plan.delete.iter().map(|(_, uid)| uid.clone()).collect();
        ctx.context.expectations.expect(key, [], uids);
        if plan.failed > 0 {
            let note = format!(
                "Found failed daemon pod {namespace}/{}, will try to kill it",
                plan.delete[0].0
            );
            ctx.context
                .event(&reference, true, "FailedDaemonPod", note)
                .await;
        }
        crate::context::delete_pods(
            &api,
            plan.delete.iter().map(|(name, _)| name.clone()).collect(),
        )
        .await?;
        let note = format!("Deleted pod: {}", plan.delete[0].0);
        ctx.context
            .event(&reference, false, "SuccessfulDelete", note)
            .await;
    }
    if !plan.create.is_empty() {
        let params = PostParams::default();
        let results: Vec<kube::Result<Pod>> = futures::stream::iter(plan.create.clone())
            .map(|node| {
                let (api, params) = (api.clone(), params.clone());
                let template = pod_for(ds, &node, hash);
                async move { api.create(&params, &template).await }
            })
            .buffer_unordered(64)
            .collect()
            .await;
        let mut created = Vec::new();
        let mut failure = None;
        for result in results {
            match result {
                Ok(p) => created.push(p.name_any()),
                Err(error) => failure = Some(error),
            }
        }
        ctx.context.expectations.expect(key, created.clone(), []);
        if let Some(first) = created.first() {
            info!(daemonset = %key, count = created.len(), "created pods");
            ctx.context
                .event(
                    &reference,
                    false,
                    "SuccessfulCreate",
                    format!("Created pod: {first}"),
                )
                .await;
        }
        if let Some(error) = failure {
            ctx.context
                .event(
                    &reference,
                    true,
                    "FailedCreate",
                    format!("Error creating: {error}"),
                )
                .await;
            return Err(Error::Api {
                action: format!("create pods for daemonset {key}"),
                source: error,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::Strategy;
    use super::*;

    fn node(name: &str, extra: serde_json::Value) -> Node {
        let mut value =
            json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}});
        if let (Some(target), Some(extra)) = (value.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                if k == "labels" {
                    target["metadata"]["labels"]
                        .as_object_mut()
                        .unwrap()
                        .extend(v.as_object().unwrap().clone());
                } else {
                    target.insert(k.clone(), v.clone());
                }
            }
        }
        serde_json::from_value(value).unwrap()
    }

    fn daemon_pod(name: &str, hash: &str, phase: &str, ready: bool, age: i64) -> Arc<Pod> {
        let created = jiff::Timestamp::from_second(1_700_000_000 + age).unwrap();
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "uid": name, "labels": {HASH_LABEL: hash}, "creationTimestamp": created.to_string()},
                "spec": {"containers": []},
                "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
            }))
            .unwrap(),
        )
    }

    fn on(node: &str, pods: Vec<Arc<Pod>>) -> NodePods {
        NodePods {
            node: node.into(),
            placement: Placement {
                should_run: true,
                should_continue: true,
            },
            pods,
        }
    }

    fn now() -> Time {
        Time(jiff::Timestamp::now())
    }

    const ROLLING: Strategy = Strategy::RollingUpdate {
        max_surge: 0,
        max_unavailable: 1,
    };

    #[test]
    fn placement_follows_selectors_affinity_and_taints() {
        let spec: PodSpec = serde_json::from_value(json!({
            "containers": [],
            "nodeSelector": {"disk": "ssd"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "logs", "effect": "NoSchedule"}]
        }))
        .unwrap();
        let fits = Placement {
            should_run: true,
            should_continue: true,
        };
        assert_eq!(
            placement(&spec, &node("a", json!({"labels": {"disk": "ssd"}}))),
            fits
        );
        assert_eq!(
            placement(&spec, &node("b", json!({}))),
            Placement::default()
        );
        let cordoned = node(
            "c",
            json!({"labels": {"disk": "ssd"}, "spec": {"unschedulable": true, "taints": [
                {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
                {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"},
                {"key": "dedicated", "value": "logs", "effect": "NoSchedule"}]}}),
        );
        assert_eq!(
            placement(&spec, &cordoned),
            fits,
            "daemon pods tolerate cordons and node conditions"
        );
        let tainted = node(
            "d",
            json!({"labels": {"disk": "ssd"}, "spec": {"taints": [{"key": "gpu", "effect": "NoSchedule"}]}}),
        );
        assert_eq!(
            placement(&spec, &tainted),
            Placement {
                should_run: false,
                should_continue: true
            },
            "NoSchedule keeps new pods off but lets running ones stay"
        );
        let evicting = node(
            "e",
            json!({"labels": {"disk": "ssd"}, "spec": {"taints": [{"key": "gpu", "effect": "NoExecute"}]}}),
        );
        assert_eq!(placement(&spec, &evicting), Placement::default());
        let affine: PodSpec = serde_json::from_value(json!({"containers": [], "affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["a"]}]}]}}}}))
        .unwrap();
        assert!(!placement(&affine, &node("a", json!({}))).should_run);
        assert!(placement(&affine, &node("b", json!({}))).should_run);
    }

    #[test]
    fn pods_are_pinned_to_their_node() {
        let ds: DaemonSet = serde_json::from_value(json!({
            "metadata": {"name": "agent", "namespace": "default", "uid": "u"},
            "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": {
                "metadata": {"labels": {"app": "agent"}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}], "affinity": {"nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "x", "operator": "Exists"}]}]}}}}}}
        }))
        .unwrap();
        let p = pod_for(&ds, "n7", "h1");
        assert_eq!(node_of(&p).as_deref(), Some("n7"));
        assert_eq!(p.labels().get(HASH_LABEL).map(String::as_str), Some("h1"));
        assert_eq!(p.labels().get("app").map(String::as_str), Some("agent"));
        let spec = p.spec.unwrap();
        let terms = &spec
            .affinity
            .unwrap()
            .node_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms;
        assert_eq!(
            terms.len(),
            1,
            "the node name replaces the terms the node already matched"
        );
        assert!(spec.tolerations.unwrap().len() >= 6);
    }

    #[test]
    fn missing_extra_misplaced_and_failed_pods() {
        let nodes = vec![
            on("empty", vec![]),
            on(
                "two",
                vec![
                    daemon_pod("old", "h", "Running", true, 0),
                    daemon_pod("dup", "h", "Running", true, 10),
                ],
            ),
            on(
                "failed",
                vec![daemon_pod("crashed", "h", "Failed", false, 0)],
            ),
            NodePods {
                node: "gone".into(),
                placement: Placement::default(),
                pods: vec![daemon_pod("evict", "h", "Running", true, 0)],
            },
            NodePods {
                node: "tainted".into(),
                placement: Placement {
                    should_run: false,
                    should_continue: true,
                },
                pods: vec![daemon_pod("stays", "h", "Running", true, 0)],
            },
            NodePods {
                node: "unfit".into(),
                placement: Placement::default(),
                pods: vec![],
            },
        ];
        let plan = plan(&nodes, "h", ROLLING, 0, &now());
        assert_eq!(plan.create, vec!["empty".to_owned()]);
        let deleted: Vec<&str> = plan.delete.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(deleted, ["dup", "crashed", "evict"]);
        assert_eq!(plan.failed, 1);
    }

    #[test]
    fn rolling_update_replaces_one_node_at_a_time() {
        let nodes: Vec<NodePods> = (0..4)
            .map(|i| {
                on(
                    &format!("n{i}"),
                    vec![daemon_pod(&format!("p{i}"), "old", "Running", true, 0)],
                )
            })
            .collect();
        let step = plan(&nodes, "new", ROLLING, 0, &now());
        assert_eq!(step.delete.len(), 1, "maxUnavailable 1");
        assert!(
            step.create.is_empty(),
            "the new pod comes once the old one is gone"
        );
        // one node already without a pod: nothing more goes until it has an available one
        let mut gap = nodes.clone();
        gap[0].pods.clear();
        let step = plan(&gap, "new", ROLLING, 0, &now());
        assert_eq!((step.create.len(), step.delete.len()), (1, 0));
        gap[0].pods = vec![daemon_pod("fresh", "new", "Running", false, 20)];
        assert_eq!(
            plan(&gap, "new", ROLLING, 0, &now()),
            Plan::default(),
            "waits for readiness"
        );
        gap[0].pods = vec![daemon_pod("fresh", "new", "Running", true, 20)];
        assert_eq!(plan(&gap, "new", ROLLING, 0, &now()).delete.len(), 1);
        // unavailable old pods are replaced regardless of the budget
        let broken: Vec<NodePods> = (0..3)
            .map(|i| {
                on(
                    &format!("n{i}"),
                    vec![daemon_pod(&format!("p{i}"), "old", "Running", false, 0)],
                )
            })
            .collect();
        assert_eq!(plan(&broken, "new", ROLLING, 0, &now()).delete.len(), 3);
        assert_eq!(
            plan(&nodes, "new", Strategy::OnDelete, 0, &now()),
            Plan::default()
        );
    }

    #[test]
    fn surge_starts_the_new_pod_before_the_old_one_goes() {
        let surge = Strategy::RollingUpdate {
            max_surge: 1,
            max_unavailable: 0,
        };
        let nodes: Vec<NodePods> = (0..3)
            .map(|i| {
                on(
                    &format!("n{i}"),
                    vec![daemon_pod(&format!("p{i}"), "old", "Running", true, 0)],
                )
            })
            .collect();
        let step = plan(&nodes, "new", surge, 0, &now());
        assert_eq!((step.create, step.delete.len()), (vec!["n0".to_owned()], 0));
        let mut both = nodes;
        both[0]
            .pods
            .push(daemon_pod("s0", "new", "Running", false, 30));
        assert_eq!(plan(&both, "new", surge, 0, &now()), Plan::default());
        both[0].pods[1] = daemon_pod("s0", "new", "Running", true, 30);
        let step = plan(&both, "new", surge, 0, &now());
        assert_eq!(step.delete, vec![("p0".to_owned(), "p0".to_owned())]);
        assert_eq!(step.create, vec!["n1".to_owned()]);
    }

    #[test]
    fn status_counts_like_kubectl_reads_them() {
        let ds: DaemonSet =
            serde_json::from_value(json!({"metadata": {"name": "d", "generation": 3}})).unwrap();
        let nodes = vec![
            on("a", vec![daemon_pod("a", "h", "Running", true, 0)]),
            on("b", vec![daemon_pod("b", "old", "Running", false, 0)]),
            on("c", vec![]),
            NodePods {
                node: "d".into(),
                placement: Placement::default(),
                pods: vec![daemon_pod("d", "h", "Running", true, 0)],
            },
        ];
        let status = status(&ds, &nodes, "h", 0, &now());
        assert_eq!(status.desired_number_scheduled, 3);
        assert_eq!(status.current_number_scheduled, 2);
        assert_eq!(status.number_misscheduled, 1);
        assert_eq!(status.number_ready, 1);
        assert_eq!(status.number_available, Some(1));
        assert_eq!(status.number_unavailable, Some(2));
        assert_eq!(status.updated_number_scheduled, Some(1));
        assert_eq!(status.observed_generation, Some(3));
    }

    #[test]
    fn strategies_resolve_percentages_up() {
        let ds = |strategy: serde_json::Value| -> DaemonSet {
            serde_json::from_value(json!({"metadata": {"name": "d"}, "spec": {"selector": {}, "template": {}, "updateStrategy": strategy}})).unwrap()
        };
        assert_eq!(
            strategy(
                &ds(json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "10%"}})),
                15
            ),
            Strategy::RollingUpdate {
                max_surge: 0,
                max_unavailable: 2
            }
        );
        assert_eq!(
            strategy(
                &ds(
                    json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"}})
                ),
                4
            ),
            Strategy::RollingUpdate {
                max_surge: 1,
                max_unavailable: 0
            }
        );
        assert_eq!(
            strategy(&ds(json!({"type": "OnDelete"})), 4),
            Strategy::OnDelete
        );
    }

    proptest! {
        /// However the pods stand, one pass never takes more available nodes out of service
        /// than maxUnavailable allows, and never leaves a fitting empty node without a new pod.
        #[test]
        fn rolling_updates_stay_within_max_unavailable(
            states in proptest::collection::vec(0u8..5, 1..20),
            max_unavailable in 1i32..4,
        ) {
            let nodes: Vec<NodePods> = states.iter().enumerate().map(|(i, state)| {
                let pods = match state {
                    0 => vec![],
                    1 => vec![daemon_pod(&format!("o{i}"), "old", "Running", true, 0)],
                    2 => vec![daemon_pod(&format!("o{i}"), "old", "Running", false, 0)],
                    3 => vec![daemon_pod(&format!("n{i}"), "new", "Running", true, 0)],
                    _ => vec![daemon_pod(&format!("n{i}"), "new", "Running", false, 0)],
                };
                on(&format!("node{i}"), pods)
            }).collect();
            let strategy = Strategy::RollingUpdate { max_surge: 0, max_unavailable };
            let plan = plan(&nodes, "new", strategy, 0, &now());
            let unavailable_before = states.iter().filter(|s| !matches!(s, 1 | 3)).count();
            let available_old_deleted = plan.delete.iter().filter(|(name, _)| {
                nodes.iter().flat_map(|n| n.pods.iter()).any(|p| p.name_any() == *name && pod::is_ready(p))
            }).count();
            let budget = usize::try_from(max_unavailable).unwrap().saturating_sub(unavailable_before);
            prop_assert!(available_old_deleted <= budget);
            let empty = states.iter().filter(|s| **s == 0).count();
            prop_assert_eq!(plan.create.len(), empty);
        }
    }
}
