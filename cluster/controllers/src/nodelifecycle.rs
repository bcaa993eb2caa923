//! The node lifecycle controller: a node whose Lease is not renewed within the grace period is
//! marked `Ready=Unknown` and tainted `node.kubernetes.io/unreachable` (a node reporting
//! `Ready=False` is tainted `not-ready`); pods on a node with a `NoExecute` taint are evicted at
//! once unless they tolerate it, or after their `tolerationSeconds`. The controllers of those
//! pods then replace them elsewhere.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::Store;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::context::Context;

/// Timing of the node lifecycle controller.
#[derive(Clone, Debug)]
pub struct Config {
    /// How long a node may go without renewing its Lease before it is unreachable
    /// (kube-controller-manager's `--node-monitor-grace-period`, 40 s).
    pub grace_period: Duration,
    /// How often nodes are checked.
    pub period: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            grace_period: Duration::from_secs(40),
            period: Duration::from_secs(1),
        }
    }
}

const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
const NOT_READY: &str = "node.kubernetes.io/not-ready";

/// The taints a node should carry for its readiness (`None` = Ready).
#[must_use]
pub fn wanted_taint_key(ready: Option<&str>) -> Option<&'static str> {
    match ready {
        Some("True") => None,
        Some("False") => Some(NOT_READY),
        _ => Some(UNREACHABLE),
    }
}

/// When a pod must leave a node with these taints: `Some(0)` now, `Some(n)` after `n` seconds
/// since the taint was added, `None` never.
#[must_use]
pub fn eviction_delay(pod: &Pod, taints: &[Taint]) -> Option<i64> {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let mut delay: Option<i64> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let tolerating: Vec<_> = tolerations
            .iter()
            .filter(|t| kelson_common::node::tolerates(t, taint))
            .collect();
        if tolerating.is_empty() {
            return Some(0);
        }
        // the shortest limit of the tolerations that match decides
        if let Some(seconds) = tolerating.iter().filter_map(|t| t.toleration_seconds).min() {
            delay = Some(delay.map_or(seconds, |d| d.min(seconds)));
        }
    }
    delay
}

fn seconds_since(time: Option<&Time>, now: &Time) -> i64 {
    time.map_or(i64::MAX, |t| now.0.as_second() - t.0.as_second())
}

/// Runs the controller until `shutdown`.
pub async fn run(
    ctx: Arc<Context>,
    config: Config,
    nodes: Store<Node>,
    leases: Store<Lease>,
    pods: Store<Pod>,
    shutdown: CancellationToken,
) {
    let node_api: Api<Node> = Api::all(ctx.client.clone());
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(config.period) => {}
        }
        let now = Time(jiff::Timestamp::now());
        let leases: BTreeMap<String, Arc<Lease>> = leases
            .state()
            .into_iter()
            .filter(|l| l.namespace().as_deref() == Some("kube-node-lease"))
            .map(|l| (l.name_any(), l))
            .collect();
        let mut node_taints: BTreeMap<String, Vec<Taint>> = BTreeMap::new();
        for node in nodes.state() {
            let name = node.name_any();
            let renewed = leases
                .get(&name)
                .and_then(|l| l.spec.as_ref())
                .and_then(|s| s.renew_time.as_ref())
                .map(|t| Time(t.0));
            let ready = kelson_common::node::condition(&node, "Ready");
            let heartbeat = ready.and_then(|c| c.last_heartbeat_time.clone());
            // the newest sign of life: the lease or the status heartbeat
            let last_seen = [renewed, heartbeat, node.metadata.creation_timestamp.clone()]
                .into_iter()
                .flatten()
                .max_by_key(|t| t.0);
            let silent = seconds_since(last_seen.as_ref(), &now)
                > i64::try_from(config.grace_period.as_secs()).unwrap_or(40);
            let mut status = ready.map(|c| c.status.clone());
            if silent && status.as_deref() != Some("Unknown") {
                info!(node = %name, "node stopped posting status; marking it unreachable");
                let conditions: Vec<NodeCondition> =
                    ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"]
                        .iter()
                        .map(|type_| NodeCondition {
                            type_: (*type_).into(),
                            status: "Unknown".into(),
                            reason: Some("NodeStatusUnknown".into()),
                            message: Some("Kubelet stopped posting node status.".into()),
                            last_heartbeat_time: kelson_common::node::condition(&node, type_)
                                .and_then(|c| c.last_heartbeat_time.clone()),
                            last_transition_time: Some(now.clone()),
                        })
                        .collect();
                let patch = json!({"status": {"conditions": conditions}});
                if let Err(error) = node_api
                    .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                    .await
                {
                    debug!(node = %name, %error, "failed to mark node unreachable");
                }
                status = Some("Unknown".into());
            }
            let wanted = wanted_taint_key(status.as_deref());
            let mut taints = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default();
            let before = taints.clone();
            taints.retain(|t| {
                !((t.key == UNREACHABLE || t.key == NOT_READY) && Some(t.key.as_str()) != wanted)
            });
            if let Some(key) = wanted {
                for effect in ["NoSchedule", "NoExecute"] {
                    if !taints.iter().any(|t| t.key == key && t.effect == effect) {
                        taints.push(Taint {
                            key: key.into(),
                            effect: effect.into(),
                            value: None,
                            time_added: Some(now.clone()),
                        });
                    }
                }
            }
            if taints != before {
                let patch = json!({"spec": {"taints": taints}});
                if let Err(error) = node_api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    debug!(node = %name, %error, "failed to update node taints");
                }
            }
            // only NoExecute taints evict
            if taints.iter().any(|t| t.effect == "NoExecute") {
                node_taints.insert(name, taints);
            }
        }
        if !node_taints.is_empty() {
            evict(&ctx, &pods, &node_taints, &now).await;
        }
    }
}

/// Evicts pods from nodes with NoExecute taints they do not (or no longer) tolerate.
async fn evict(
    ctx: &Context,
    pods: &Store<Pod>,
    node_taints: &BTreeMap<String, Vec<Taint>>,
    now: &Time,
) {
    for pod in pods.state() {
        if kelson_common::pod::is_terminating(&pod) || kelson_common::pod::is_terminal(&pod) {
            continue;
        }
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_ref()) else {
            continue;
        };
        let Some(taints) = node_taints.get(node) else {
            continue;
        };
        let Some(delay) = eviction_delay(&pod, taints) else {
            continue;
        };
        let since = taints
            .iter()
            .filter(|t| t.effect == "NoExecute")
            .filter_map(|t| t.time_added.as_ref())
            .map(|t| now.0.as_second() - t.0.as_second())
            .max()
            .unwrap_or(0);
        if since < delay {
            continue;
        }
        let api: Api<Pod> =
            Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
        info!(pod = %pod.name_any(), %node, "evicting pod from a tainted node");
        match api.delete(&pod.name_any(), &DeleteParams::default()).await {
            Ok(_) => {
                let reference = kube::Resource::object_ref(&*pod, &());
                ctx.event(
                    &reference,
                    false,
                    "TaintManagerEviction",
                    format!("Marking for deletion Pod {}", pod.name_any()),
                )
                .await;
            }
            Err(error) => debug!(pod = %pod.name_any(), %error, "eviction failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(tolerations: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": [], "tolerations": tolerations}})).unwrap()
    }

    fn taint(key: &str) -> Taint {
        Taint {
            key: key.into(),
            effect: "NoExecute".into(),
            value: None,
            time_added: None,
        }
    }

    #[test]
    fn eviction_delays_follow_tolerations() {
        let default = pod(
            json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]),
        );
        assert_eq!(eviction_delay(&default, &[taint(UNREACHABLE)]), Some(300));
        assert_eq!(
            eviction_delay(&default, &[taint(NOT_READY)]),
            Some(0),
            "not tolerated: now"
        );
        let forever = pod(json!([{"operator": "Exists"}]));
        assert_eq!(eviction_delay(&forever, &[taint(UNREACHABLE)]), None);
        assert_eq!(eviction_delay(&pod(json!([])), &[]), None);
    }

    #[test]
    fn taints_follow_readiness() {
        assert_eq!(wanted_taint_key(Some("True")), None);
        assert_eq!(wanted_taint_key(Some("False")), Some(NOT_READY));
        assert_eq!(wanted_taint_key(Some("Unknown")), Some(UNREACHABLE));
        assert_eq!(wanted_taint_key(None), Some(UNREACHABLE));
    }
}
