//! The disruption controller: keeps each PodDisruptionBudget's status — how many of its pods
//! are expected, must stay healthy, are healthy now, and so how many may be disrupted — as
//! kube-controller-manager does. The API server's eviction subresource reads that status, takes
//! one allowed disruption per eviction and records the pod in `disruptedPods`; this controller
//! stops counting such pods as healthy until they are gone (or two minutes have passed).
//!
//! [`budget`] is the pure computation; [`reconcile`] writes it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kelson_common::pod;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use serde_json::json;

use crate::context::{Error, Result};

/// How long an evicted pod is not counted as healthy while it has not yet gone.
pub const DELETION_TIMEOUT: Duration = Duration::from_secs(120);

/// What the disruption controller reads.
pub struct Shared {
    /// Context.
    pub context: Arc<crate::Context>,
    /// Pod cache.
    pub pods: Store<Pod>,
    /// ReplicaSet cache (the scale behind a pod).
    pub replicasets: Store<ReplicaSet>,
    /// Deployment cache (the scale behind a ReplicaSet).
    pub deployments: Store<Deployment>,
}

/// A budget's figures, as its status shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Pods the budget expects (matching pods, or its controllers' replicas).
    pub expected: i32,
    /// Pods that must stay healthy.
    pub desired_healthy: i32,
    /// Ready pods that are neither deleting nor being evicted.
    pub current_healthy: i32,
    /// `current_healthy - desired_healthy`, at least 0.
    pub disruptions_allowed: i32,
    /// Evicted pods not yet gone, with when they were evicted.
    pub disrupted: BTreeMap<String, Timestamp>,
}

/// The pods `pdb` covers among `pods` (all of its namespace): a null selector covers none, an
/// empty one all.
#[must_use]
pub fn covered<'a>(pdb: &PodDisruptionBudget, pods: &[&'a Pod]) -> Vec<&'a Pod> {
    let Some(selector) = pdb.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return Vec::new();
    };
    pods.iter()
        .copied()
        .filter(|p| kelson_common::selector::matches(selector, p.labels()))
        .collect()
}

/// `value` of `total` (an integer, or a percentage rounded up).
fn scaled(value: &IntOrString, total: i32) -> Option<i32> {
    match value {
        IntOrString::Int(n) => Some(*n),
        IntOrString::String(text) => {
            let percent: i64 = text.strip_suffix('%')?.parse().ok()?;
            i32::try_from((percent * i64::from(total) + 99) / 100).ok()
        }
    }
}

/// The figures for `pdb` over the pods it covers. `scale` names a pod's top controller and its
/// replicas (Deployment, else ReplicaSet), `None` for a pod without one (counted as one).
#[must_use]
pub fn budget(
    pdb: &PodDisruptionBudget,
    pods: &[&Pod],
    scale: impl Fn(&Pod) -> Option<(String, i32)>,
    now: Timestamp,
) -> Budget {
    let spec = pdb.spec.clone().unwrap_or_default();
    let by_name: BTreeMap<String, &Pod> = pods.iter().map(|p| (p.name_any(), *p)).collect();
    let disrupted: BTreeMap<String, Timestamp> = pdb
        .status
        .as_ref()
        .and_then(|s| s.disrupted_pods.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|(name, since)| {
            by_name
                .get(name)
                .is_some_and(|p| p.metadata.deletion_timestamp.is_none())
                && since.0 + DELETION_TIMEOUT > now
        })
        .map(|(name, since)| (name, since.0))
        .collect();
    let current_healthy = i32::try_from(
        pods.iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && pod::is_ready(p))
            .filter(|p| !disrupted.contains_key(&p.name_any()))
            .count(),
    )
    .unwrap_or(i32::MAX);
    let pod_count = i32::try_from(pods.len()).unwrap_or(i32::MAX);
    let controllers_scale = || {
        let mut controllers: BTreeMap<String, i32> = BTreeMap::new();
        let mut loose = 0;
        for p in pods {
            match scale(p) {
                Some((controller, replicas)) => {
                    controllers.insert(controller, replicas);
                }
                None => loose += 1,
            }
        }
        controllers.values().sum::<i32>() + loose
    };
    let (expected, desired_healthy) = match (&spec.min_available, &spec.max_unavailable) {
        (Some(IntOrString::Int(min)), _) => (pod_count, *min),
        (Some(min), _) => {
            let expected = controllers_scale();
            (expected, scaled(min, expected).unwrap_or(expected))
        }
        (None, Some(max)) => {
            let expected = controllers_scale();
            let unavailable = scaled(max, expected).unwrap_or(0);
            (expected, (expected - unavailable).max(0))
        }
        // neither: no disruption allowed beyond what is unhealthy already
        (None, None) => (pod_count, pod_count),
    };
    Budget {
        expected,
        desired_healthy,
        current_healthy,
        disruptions_allowed: (current_healthy - desired_healthy).max(0),
        disrupted,
    }
}

/// Reconciles one PodDisruptionBudget.
///
/// # Errors
/// When the status cannot be written (retried).
pub async fn reconcile(pdb: Arc<PodDisruptionBudget>, ctx: Arc<Shared>) -> Result<Action> {
    if pdb.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = pdb.namespace().unwrap_or_default();
    let name = pdb.name_any();
    let all = ctx.pods.state();
    let in_namespace: Vec<&Pod> = all
        .iter()
        .map(AsRef::as_ref)
        .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()))
        .filter(|p| !pod::is_terminal(p))
        .collect();
    let pods = covered(&pdb, &in_namespace);
    // by uid, built once per reconcile (pods are looked up one by one below)
    let replicasets: BTreeMap<String, Arc<ReplicaSet>> = ctx
        .replicasets
        .state()
        .into_iter()
        .filter_map(|rs| Some((rs.metadata.uid.clone()?, rs)))
        .collect();
    let deployments: BTreeMap<String, Arc<Deployment>> = ctx
        .deployments
        .state()
        .into_iter()
        .filter_map(|d| Some((d.metadata.uid.clone()?, d)))
        .collect();
    let scale = |p: &Pod| -> Option<(String, i32)> {
        let owner = pod::controller_of(&p.metadata)?;
        if owner.kind != "ReplicaSet" {
            return None;
        }
        let rs = replicasets.get(&owner.uid)?;
        if let Some((uid, deployment)) = pod::controller_of(&rs.metadata)
            .filter(|o| o.kind == "Deployment")
            .and_then(|o| deployments.get_key_value(&o.uid))
        {
            return Some((
                uid.clone(),
                deployment
                    .spec
                    .as_ref()
                    .and_then(|s| s.replicas)
                    .unwrap_or(1),
            ));
        }
        Some((
            owner.uid.clone(),
            rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        ))
    };
    let now = Timestamp::now();
    let figures = budget(&pdb, &pods, scale, now);
    let allowed = figures.disruptions_allowed > 0;
    let old = pdb.status.clone().unwrap_or_default();
    let mut disrupted: serde_json::Map<String, serde_json::Value> = figures
        .disrupted
        .iter()
        .map(|(pod, since)| (pod.clone(), json!(Time(*since))))
        .collect();
    // entries that went: null removes them in a merge patch
    for gone in old.disrupted_pods.iter().flatten().map(|(k, _)| k) {
        disrupted
            .entry(gone.clone())
            .or_insert(serde_json::Value::Null);
    }
    let previous = old
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "DisruptionAllowed");
    let status_text = if allowed { "True" } else { "False" };
    let transition = previous
        .filter(|c| c.status == status_text)
        .map_or_else(|| Time(now), |c| c.last_transition_time.clone());
    let generation = pdb.metadata.generation;
    let unchanged = old.observed_generation == generation
        && old.expected_pods == figures.expected
        && old.desired_healthy == figures.desired_healthy
        && old.current_healthy == figures.current_healthy
        && old.disruptions_allowed == figures.disruptions_allowed
        && previous.is_some_and(|c| c.status == status_text)
        && old
            .disrupted_pods
            .iter()
            .flatten()
            .map(|(pod, _)| pod)
            .eq(figures.disrupted.keys());
    if !unchanged {
        let status = json!({
            "observedGeneration": generation,
            "expectedPods": figures.expected,
            "desiredHealthy": figures.desired_healthy,
            "currentHealthy": figures.current_healthy,
            "disruptionsAllowed": figures.disruptions_allowed,
            "disruptedPods": disrupted,
            "conditions": [{
                "type": "DisruptionAllowed",
                "status": status_text,
                "reason": if allowed { "SufficientPods" } else { "InsufficientPods" },
                "message": "",
                "observedGeneration": generation,
                "lastTransitionTime": transition,
            }],
        });
        Api::<PodDisruptionBudget>::namespaced(ctx.context.client.clone(), &namespace)
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({ "status": status })),
            )
            .await
            .map_err(Error::api(format!(
                "update status of poddisruptionbudget {namespace}/{name}"
            )))?;
    }
    // evicted pods stop counting only for a while: look again when the first entry expires
    let requeue = figures
        .disrupted
        .values()
        .map(|since| {
            let expires = *since + DELETION_TIMEOUT;
            Duration::from_millis(
                u64::try_from(expires.as_millisecond() - now.as_millisecond()).unwrap_or(0) + 100,
            )
        })
        .min()
        .unwrap_or(Duration::from_secs(300));
    Ok(Action::requeue(requeue))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdb(spec: serde_json::Value, disrupted: serde_json::Value) -> PodDisruptionBudget {
        serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "default", "generation": 1},
            "spec": spec, "status": {"disruptedPods": disrupted, "currentHealthy": 0, "desiredHealthy": 0,
            "disruptionsAllowed": 0, "expectedPods": 0}}))
        .unwrap()
    }

    fn pod(name: &str, ready: bool, app: &str) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}}))
        .unwrap()
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    const NOW: &str = "2026-11-23T12:00:00Z";

    #[test]
    fn min_available_counts_ready_pods() {
        let pods = [
            pod("a", true, "web"),
            pod("b", true, "web"),
            pod("c", false, "web"),
            pod("x", true, "db"),
        ];
        let refs: Vec<&Pod> = pods.iter().collect();
        let budget_of = |spec| {
            let pdb = pdb(spec, json!({}));
            let covered = covered(&pdb, &refs);
            budget(&pdb, &covered, |_| None, at(NOW))
        };
        let two =
            budget_of(json!({"selector": {"matchLabels": {"app": "web"}}, "minAvailable": 1}));
        assert_eq!(
            (
                two.expected,
                two.desired_healthy,
                two.current_healthy,
                two.disruptions_allowed
            ),
            (3, 1, 2, 1)
        );
        let none =
            budget_of(json!({"selector": {"matchLabels": {"app": "web"}}, "minAvailable": 2}));
        assert_eq!(none.disruptions_allowed, 0);
        let percent =
            budget_of(json!({"selector": {"matchLabels": {"app": "web"}}, "minAvailable": "50%"}));
        assert_eq!(
            (percent.expected, percent.desired_healthy),
            (3, 2),
            "rounded up"
        );
        let everything = budget_of(json!({"selector": {}, "maxUnavailable": 1}));
        assert_eq!(
            (
                everything.expected,
                everything.desired_healthy,
                everything.current_healthy
            ),
            (4, 3, 3)
        );
        let nothing = budget_of(json!({"maxUnavailable": 1}));
        assert_eq!(
            (nothing.expected, nothing.current_healthy),
            (0, 0),
            "null selector"
        );
    }

    #[test]
    fn max_unavailable_uses_the_controllers_scale() {
        let pods = [pod("a", true, "web"), pod("b", true, "web")];
        let refs: Vec<&Pod> = pods.iter().collect();
        let pdb = pdb(
            json!({"selector": {"matchLabels": {"app": "web"}}, "maxUnavailable": "25%"}),
            json!({}),
        );
        // one Deployment of 4 replicas, two of which exist
        let figures = budget(&pdb, &refs, |_| Some(("d1".into(), 4)), at(NOW));
        assert_eq!(
            (
                figures.expected,
                figures.desired_healthy,
                figures.disruptions_allowed
            ),
            (4, 3, 0)
        );
    }

    #[test]
    fn evicted_pods_stop_counting_until_gone_or_expired() {
        let pods = [pod("a", true, "web"), pod("b", true, "web")];
        let refs: Vec<&Pod> = pods.iter().collect();
        let spec = json!({"selector": {"matchLabels": {"app": "web"}}, "minAvailable": 1});
        let fresh = pdb(
            spec.clone(),
            json!({"a": "2026-11-23T11:59:30Z", "gone": "2026-11-23T11:59:30Z"}),
        );
        let figures = budget(&fresh, &refs, |_| None, at(NOW));
        assert_eq!(figures.current_healthy, 1);
        assert_eq!(figures.disruptions_allowed, 0);
        assert_eq!(
            figures.disrupted.keys().collect::<Vec<_>>(),
            ["a"],
            "entries of pods that are gone are dropped"
        );
        let stale = pdb(spec, json!({"a": "2026-11-23T11:57:00Z"}));
        let figures = budget(&stale, &refs, |_| None, at(NOW));
        assert_eq!(
            figures.current_healthy, 2,
            "after two minutes it counts again"
        );
        assert!(figures.disrupted.is_empty());
    }
}
