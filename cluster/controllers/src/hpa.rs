//! The HorizontalPodAutoscaler controller (autoscaling/v2): every 15 s it reads the pods of the
//! scale target from the resource metrics API (`metrics.k8s.io`, which the API server serves),
//! computes the replicas each metric wants as Kubernetes does — usage over target, a 10%
//! tolerance, pods without metrics counted against the direction of the change — takes the
//! largest, applies the scale-up and scale-down behaviour (stabilization windows and rate
//! policies), and sets the target's `scale` subresource. Status and conditions are what
//! `kubectl get hpa` and `kubectl describe hpa` show.
//!
//! Resource metrics (cpu, memory; Utilization or AverageValue) are supported; Pods, Object and
//! External metrics need a custom metrics API and report `ScalingActive=False`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::autoscaling::v2::{
    HPAScalingRules, HorizontalPodAutoscaler, HorizontalPodAutoscalerCondition,
    HorizontalPodAutoscalerStatus, MetricSpec, MetricStatus, MetricValueStatus,
    ResourceMetricStatus,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kelson_common::{pod, quantity, selector};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::context::{Context, Error, Result};

/// How often each autoscaler is evaluated (kube-controller-manager's default).
pub const SYNC_PERIOD: Duration = Duration::from_secs(15);
/// Usage within this ratio of the target changes nothing.
pub const TOLERANCE: f64 = 0.1;
/// The default scale-down stabilization window.
pub const DOWNSCALE_WINDOW: i64 = 300;

/// What the autoscaler controller reads and remembers.
pub struct Shared {
    /// Context.
    pub context: Arc<Context>,
    /// Pod cache.
    pub pods: Store<Pod>,
    /// Recent recommendations per autoscaler (uid): when, and how many replicas.
    pub recommendations: Mutex<HashMap<String, Vec<(i64, i32)>>>,
}

/// One pod's usage and request of the metric's resource (millicores, or bytes).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PodReading {
    /// Usage, when the metrics API has the pod.
    pub usage: Option<i64>,
    /// The sum of its containers' requests.
    pub request: i64,
    /// Ready (unready pods count as using nothing when scaling up).
    pub ready: bool,
}

/// What a metric asks for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// Average utilization, in percent of the request.
    Utilization(i32),
    /// Average value per pod (millicores or bytes).
    AverageValue(i64),
}

/// One metric's recommendation.
#[derive(Clone, Debug, PartialEq)]
pub struct Proposal {
    /// Replicas it wants.
    pub replicas: i32,
    /// The current utilization (percent), for Utilization targets.
    pub utilization: Option<i32>,
    /// The current average value per pod.
    pub average: i64,
}

/// The replicas one resource metric wants for `current` replicas over `pods` (Kubernetes'
/// replica calculator): `None` when no pod has metrics yet.
#[must_use]
pub fn propose(current: i32, pods: &[PodReading], target: Target) -> Option<Proposal> {
    let measured: Vec<&PodReading> = pods
        .iter()
        .filter(|p| p.ready && p.usage.is_some())
        .collect();
    if measured.is_empty() {
        return None;
    }
    let missing = pods.iter().filter(|p| p.usage.is_none()).count();
    let unready = pods
        .iter()
        .filter(|p| !p.ready && p.usage.is_some())
        .count();
    let usage: i64 = measured.iter().filter_map(|p| p.usage).sum();
    let request: i64 = measured.iter().map(|p| p.request).sum();
    let ratio_of = |usage: i64, request: i64, count: usize| match target {
        Target::Utilization(percent) => {
            if request <= 0 {
                return None;
            }
            Some(usage as f64 * 100.0 / request as f64 / f64::from(percent))
        }
        Target::AverageValue(value) => {
            Some(usage as f64 / count.max(1) as f64 / value.max(1) as f64)
        }
    };
    let ratio = ratio_of(usage, request, measured.len())?;
    let utilization = (request > 0).then(|| (usage * 100 / request) as i32);
    let average = usage / measured.len() as i64;
    let proposal = |replicas: i32| Proposal {
        replicas,
        utilization,
        average,
    };
    if missing + unready == 0 {
        if (ratio - 1.0).abs() <= TOLERANCE {
            return Some(proposal(current));
        }
        return Some(proposal((ratio * measured.len() as f64).ceil() as i32));
    }
    // pods without metrics count as idle when scaling up and as at the target when scaling
    // down (unready ones only when scaling up), so they never push further the same way
    let (mut usage, mut request, mut count) = (usage, request, measured.len());
    let scaling_up = ratio > 1.0;
    for pod in pods.iter().filter(|p| p.usage.is_none() || !p.ready) {
        if pod.usage.is_some() && !scaling_up {
            continue;
        }
        count += 1;
        request += pod.request;
        if !scaling_up {
            // as Kubernetes does: at the target, or at the full request when that is more
            usage += match target {
                Target::Utilization(percent) => pod.request * i64::from(percent.max(100)) / 100,
                Target::AverageValue(value) => value,
            };
        }
    }
    let adjusted = ratio_of(usage, request, count)?;
    if (adjusted - 1.0).abs() <= TOLERANCE || (adjusted > 1.0) != scaling_up {
        return Some(proposal(current));
    }
    let replicas = (adjusted * count as f64).ceil() as i32;
    // never move the other way than the measured pods asked
    let replicas = if scaling_up {
        replicas.max(current)
    } else {
        replicas.min(current)
    };
    Some(proposal(replicas))
}

/// Applies the behaviour: the stabilization window (up: the lowest recommendation in it,
/// down: the highest) over `history` (seconds, replicas), then the rate policies, then the
/// bounds. Returns the replicas and, when a bound or policy limited them, why.
#[must_use]
pub fn stabilize(
    current: i32,
    recommended: i32,
    history: &[(i64, i32)],
    now: i64,
    behavior: (&HPAScalingRules, &HPAScalingRules),
    bounds: (i32, i32),
) -> (i32, Option<&'static str>) {
    let (up, down) = behavior;
    let up_window = i64::from(up.stabilization_window_seconds.unwrap_or(0));
    let down_window = i64::from(
        down.stabilization_window_seconds
            .unwrap_or(DOWNSCALE_WINDOW as i32),
    );
    let in_window = |window: i64| {
        history
            .iter()
            .filter(move |(at, _)| now - at < window)
            .map(|(_, r)| *r)
            .chain(std::iter::once(recommended))
    };
    let mut desired = recommended;
    if desired > current {
        desired = in_window(up_window).min().unwrap_or(desired).max(current);
    } else if desired < current {
        desired = in_window(down_window).max().unwrap_or(desired).min(current);
    }
    let mut reason = None;
    if desired > current {
        let limit = policy_limit(up, current, true);
        if desired > limit {
            desired = limit;
            reason = Some("ScaleUpLimit");
        }
    } else if desired < current {
        let limit = policy_limit(down, current, false);
        if desired < limit {
            desired = limit;
            reason = Some("ScaleDownLimit");
        }
    }
    let (min, max) = bounds;
    if desired > max {
        (max, Some("TooManyReplicas"))
    } else if desired < min {
        (min, Some("TooFewReplicas"))
    } else {
        (desired, reason)
    }
}

/// The furthest one step may go: the policies' maximum change (or minimum with
/// `selectPolicy: Min`). Defaults: up by 100% or 4 pods, down by 100%.
fn policy_limit(rules: &HPAScalingRules, current: i32, up: bool) -> i32 {
    if rules.select_policy.as_deref() == Some("Disabled") {
        return current;
    }
    let defaults: &[(&str, i32)] = if up {
        &[("Percent", 100), ("Pods", 4)]
    } else {
        &[("Percent", 100)]
    };
    let policies: Vec<(String, i32)> = match &rules.policies {
        Some(policies) if !policies.is_empty() => policies
            .iter()
            .map(|p| (p.type_.clone(), p.value))
            .collect(),
        _ => defaults
            .iter()
            .map(|(t, v)| ((*t).to_owned(), *v))
            .collect(),
    };
    let changes = policies.iter().map(|(kind, value)| {
        if kind == "Pods" {
            *value
        } else {
            (f64::from(current) * f64::from(*value) / 100.0).ceil() as i32
        }
    });
    let change = if rules.select_policy.as_deref() == Some("Min") {
        changes.min().unwrap_or(0)
    } else {
        changes.max().unwrap_or(0)
    };
    if up {
        current.saturating_add(change)
    } else {
        current.saturating_sub(change).max(0)
    }
}

/// The scale target's API resource (apps/v1 Deployments, ReplicaSets, StatefulSets).
fn target_resource(api_version: &str, kind: &str) -> Option<ApiResource> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let plural = match kind {
        "Deployment" => "deployments",
        "ReplicaSet" => "replicasets",
        "StatefulSet" => "statefulsets",
        _ => return None,
    };
    Some(ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(group, version, kind),
        plural,
    ))
}

fn pod_metrics_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("metrics.k8s.io", "v1beta1", "PodMetrics"),
        "pods",
    )
}

fn condition(kind: &str, status: bool, reason: &str, message: String, now: &Time) -> Value {
    json!({
        "type": kind,
        "status": if status { "True" } else { "False" },
        "reason": reason,
        "message": message,
        "lastTransitionTime": now,
    })
}

/// Keeps each condition's transition time while its status stays.
fn carry_transitions(conditions: &mut [Value], previous: &[HorizontalPodAutoscalerCondition]) {
    for condition in conditions {
        if let Some(old) = previous
            .iter()
            .find(|c| Some(c.type_.as_str()) == condition["type"].as_str())
            && Some(old.status.as_str()) == condition["status"].as_str()
            && let Some(time) = &old.last_transition_time
        {
            condition["lastTransitionTime"] = json!(time);
        }
    }
}

/// How long after a pod starts its CPU usage may be discounted while it is not ready
/// (kube-controller-manager's `--horizontal-pod-autoscaler-cpu-initialization-period`).
const CPU_INITIALIZATION: i64 = 300;

/// Whether a pod's CPU usage counts (Kubernetes' rule): ready pods count; a pod that is not
/// ready counts once it has been running longer than the initialization period and has been
/// ready before. Pods that were never ready, or that are still starting, do not.
fn counts_as_ready(pod: &Pod, now: &Time) -> bool {
    if pod::is_ready(pod) {
        return true;
    }
    let status = pod.status.as_ref();
    let started = status.and_then(|s| s.start_time.as_ref());
    let was_ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_transition_time.as_ref())
        .is_some();
    match started {
        Some(started) => {
            now.0.as_second() - started.0.as_second() > CPU_INITIALIZATION && was_ready
        }
        None => false,
    }
}

/// Sums the requests of a pod's containers for `resource` (millicores for cpu, else bytes).
fn container_requests(pod: &Pod, resource: &str) -> i64 {
    pod.spec
        .iter()
        .flat_map(|s| &s.containers)
        .filter_map(|c| c.resources.as_ref()?.requests.as_ref()?.get(resource))
        .map(|q| {
            if resource == "cpu" {
                quantity::cpu_millis(q)
            } else {
                quantity::units(q)
            }
        })
        .sum()
}

/// Reconciles one autoscaler.
///
/// # Errors
/// API failures (retried by the error policy).
pub async fn reconcile(hpa: Arc<HorizontalPodAutoscaler>, shared: Arc<Shared>) -> Result<Action> {
    let context = &shared.context;
    let namespace = hpa.namespace().unwrap_or_default();
    let name = hpa.name_any();
    let Some(spec) = hpa.spec.clone() else {
        return Ok(Action::await_change());
    };
    let now = Time(jiff::Timestamp::now());
    let previous = hpa.status.clone().unwrap_or_default();
    let previous_conditions = previous.conditions.clone().unwrap_or_default();
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(context.client.clone(), &namespace);
    let reference = &spec.scale_target_ref;
    let write_status = |status: Value| {
        let api = api.clone();
        let name = name.clone();
        async move {
            api.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await
            .map_err(Error::api("update autoscaler status"))
        }
    };
    let fail = |reason: &str, message: String| {
        let mut conditions = vec![
            condition(
                "AbleToScale",
                reason != "FailedGetScale",
                if reason == "FailedGetScale" {
                    reason
                } else {
                    "SucceededGetScale"
                },
                if reason == "FailedGetScale" {
                    message.clone()
                } else {
                    "the HPA controller was able to get the target's current scale".into()
                },
                &now,
            ),
            condition("ScalingActive", false, reason, message, &now),
        ];
        carry_transitions(&mut conditions, &previous_conditions);
        json!({
            "currentReplicas": previous.current_replicas.unwrap_or(0),
            "desiredReplicas": previous.desired_replicas,
            "conditions": conditions,
        })
    };
    let Some(resource) = target_resource(
        reference.api_version.as_deref().unwrap_or("apps/v1"),
        &reference.kind,
    ) else {
        write_status(fail(
            "FailedGetScale",
            format!("the HPA controller cannot scale a {}", reference.kind),
        ))
        .await?;
        return Ok(Action::requeue(SYNC_PERIOD));
    };
    let targets: Api<DynamicObject> =
        Api::namespaced_with(context.client.clone(), &namespace, &resource);
    let target = match targets.get(&reference.name).await {
        Ok(target) => target,
        Err(error) => {
            write_status(fail(
                "FailedGetScale",
                format!("the HPA controller was unable to get the target's current scale: {error}"),
            ))
            .await?;
            return Ok(Action::requeue(SYNC_PERIOD));
        }
    };
    let current = target.data["spec"]["replicas"].as_i64().unwrap_or(1) as i32;
    let selector: Option<LabelSelector> =
        serde_json::from_value(target.data["spec"]["selector"].clone()).ok();
    let Some(selector) = selector.filter(|s| !selector::is_empty(s)) else {
        write_status(fail(
            "InvalidSelector",
            "the target has no label selector".into(),
        ))
        .await?;
        return Ok(Action::requeue(SYNC_PERIOD));
    };
    let min = spec.min_replicas.unwrap_or(1);
    let max = spec.max_replicas;
    if current == 0 && min > 0 {
        let mut conditions = vec![
            condition(
                "AbleToScale",
                true,
                "SucceededGetScale",
                "the HPA controller was able to get the target's current scale".into(),
                &now,
            ),
            condition(
                "ScalingActive",
                false,
                "ScalingDisabled",
                "scaling is disabled since the replica count of the target is zero".into(),
                &now,
            ),
        ];
        carry_transitions(&mut conditions, &previous_conditions);
        write_status(json!({"currentReplicas": 0, "desiredReplicas": 0, "conditions": conditions}))
            .await?;
        return Ok(Action::requeue(SYNC_PERIOD));
    }

    // the target's pods and their usage
    let pods: Vec<Arc<Pod>> = shared
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()))
        .filter(|p| selector::matches(&selector, p.labels()))
        .filter(|p| !pod::is_terminating(p) && !matches!(pod::phase(p), "Succeeded" | "Failed"))
        .collect();
    let metrics_api: Api<DynamicObject> =
        Api::namespaced_with(context.client.clone(), &namespace, &pod_metrics_resource());
    let metrics = metrics_api
        .list(&ListParams::default())
        .await
        .map(|list| list.items)
        .unwrap_or_default();
    let usage_of = |pod: &str, resource: &str| -> Option<i64> {
        let item = metrics.iter().find(|m| m.name_any() == pod)?;
        let containers = item.data["containers"].as_array()?;
        Some(
            containers
                .iter()
                .filter_map(|c| c["usage"][resource].as_str())
                .filter_map(quantity::parse_millis)
                .map(|millis| {
                    if resource == "cpu" {
                        millis as i64
                    } else {
                        ((millis + 999) / 1000) as i64
                    }
                })
                .sum(),
        )
    };

    let default_metric = MetricSpec {
        type_: "Resource".into(),
        resource: Some(k8s_openapi::api::autoscaling::v2::ResourceMetricSource {
            name: "cpu".into(),
            target: k8s_openapi::api::autoscaling::v2::MetricTarget {
                type_: "Utilization".into(),
                average_utilization: Some(80),
                ..Default::default()
            },
        }),
        ..Default::default()
    };
    let metric_specs = spec
        .metrics
        .clone()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| vec![default_metric]);
    let mut proposals: Vec<(i32, String)> = Vec::new();
    let mut statuses: Vec<MetricStatus> = Vec::new();
    let mut problem: Option<(String, String)> = None;
    for metric in &metric_specs {
        let Some(source) = metric
            .resource
            .as_ref()
            .filter(|_| metric.type_ == "Resource")
        else {
            problem = Some((
                "FailedGetExternalMetric".into(),
                format!(
                    "{} metrics need a custom metrics API, which this cluster does not serve",
                    metric.type_
                ),
            ));
            continue;
        };
        let resource = source.name.as_str();
        let target = match (
            source.target.type_.as_str(),
            source.target.average_utilization,
            source.target.average_value.as_ref(),
        ) {
            ("Utilization", Some(percent), _) => Target::Utilization(percent),
            ("AverageValue", _, Some(value)) => Target::AverageValue(if resource == "cpu" {
                quantity::cpu_millis(value)
            } else {
                quantity::units(value)
            }),
            _ => {
                problem = Some((
                    "InvalidMetricSourceType".into(),
                    format!("the {resource} metric has no usable target"),
                ));
                continue;
            }
        };
        let readings: Vec<PodReading> = pods
            .iter()
            .map(|p| PodReading {
                usage: usage_of(&p.name_any(), resource),
                request: container_requests(p, resource),
                ready: resource != "cpu" || counts_as_ready(p, &now),
            })
            .collect();
        if matches!(target, Target::Utilization(_)) && readings.iter().any(|r| r.request == 0) {
            problem = Some((
                "FailedGetResourceMetric".into(),
                format!(
                    "failed to get {resource} utilization: missing request for {resource} in a pod of {}",
                    reference.name
                ),
            ));
            continue;
        }
        let Some(proposal) = propose(current, &readings, target) else {
            problem = Some((
                "FailedGetResourceMetric".into(),
                format!(
                    "failed to get {resource} utilization: unable to get metrics for resource {resource}: no metrics returned from resource metrics API"
                ),
            ));
            continue;
        };
        let describe = match target {
            Target::Utilization(_) => {
                format!("{resource} resource utilization (percentage of request)")
            }
            Target::AverageValue(_) => format!("{resource} resource"),
        };
        proposals.push((proposal.replicas, describe));
        statuses.push(MetricStatus {
            type_: "Resource".into(),
            resource: Some(ResourceMetricStatus {
                name: resource.to_owned(),
                current: MetricValueStatus {
                    average_utilization: proposal.utilization,
                    average_value: Some(if resource == "cpu" {
                        quantity::format_cpu(proposal.average)
                    } else {
                        quantity::format_bytes(proposal.average)
                    }),
                    value: None,
                },
            }),
            ..Default::default()
        });
    }
    let Some((recommended, why)) = proposals.iter().max_by_key(|(r, _)| *r).cloned() else {
        let (reason, message) =
            problem.unwrap_or_else(|| ("FailedGetResourceMetric".into(), "no metrics".into()));
        context
            .event(&hpa.object_ref(&()), true, &reason, message.clone())
            .await;
        let mut status = fail(&reason, message);
        status["currentReplicas"] = json!(current);
        write_status(status).await?;
        return Ok(Action::requeue(SYNC_PERIOD));
    };

    // Kubernetes never scales down on the metrics that work while another one fails
    let recommended = if problem.is_some() {
        recommended.max(current)
    } else {
        recommended
    };
    let behavior = spec.behavior.clone().unwrap_or_default();
    let (up, down) = (
        behavior.scale_up.unwrap_or_default(),
        behavior.scale_down.unwrap_or_default(),
    );
    let seconds = now.0.as_second();
    let uid = hpa.uid().unwrap_or_default();
    let (desired, limit) = {
        let mut all = shared.recommendations.lock();
        // a restarted controller starts the scale-down window from the current size, so it
        // does not shrink a workload the moment it starts
        let history = all.entry(uid).or_insert_with(|| vec![(seconds, current)]);
        let decision = stabilize(
            current,
            recommended,
            history,
            seconds,
            (&up, &down),
            (min, max),
        );
        history.push((seconds, recommended));
        let keep = i64::from(
            down.stabilization_window_seconds
                .unwrap_or(DOWNSCALE_WINDOW as i32)
                .max(up.stabilization_window_seconds.unwrap_or(0)),
        );
        history.retain(|(at, _)| seconds - at <= keep);
        decision
    };
    let mut last_scale = previous.last_scale_time.clone();
    if desired != current {
        targets
            .patch_scale(
                &reference.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": desired}})),
            )
            .await
            .map_err(Error::api("scale the target"))?;
        let direction = if desired > current { "above" } else { "below" };
        context
            .event(
                &hpa.object_ref(&()),
                false,
                "SuccessfulRescale",
                format!("New size: {desired}; reason: {why} {direction} target"),
            )
            .await;
        last_scale = Some(now.clone());
    }
    let limited = limit.is_some();
    let (limit_reason, limit_message) = match limit {
        Some("TooManyReplicas") => (
            "TooManyReplicas",
            "the desired replica count is more than the maximum replica count".to_owned(),
        ),
        Some("TooFewReplicas") => (
            "TooFewReplicas",
            "the desired replica count is less than the minimum replica count".to_owned(),
        ),
        Some(policy) => (
            policy,
            "the desired replica count is limited by the scaling policy".to_owned(),
        ),
        None => (
            "DesiredWithinRange",
            "the desired count is within the acceptable range".to_owned(),
        ),
    };
    let mut conditions = vec![
        condition(
            "AbleToScale",
            true,
            if desired != current {
                "SucceededRescale"
            } else {
                "ReadyForNewScale"
            },
            if desired != current {
                format!("the HPA controller was able to update the target scale to {desired}")
            } else {
                "recommended size matches current size".to_owned()
            },
            &now,
        ),
        condition(
            "ScalingActive",
            true,
            "ValidMetricFound",
            format!("the HPA was able to successfully calculate a replica count from {why}"),
            &now,
        ),
        condition("ScalingLimited", limited, limit_reason, limit_message, &now),
    ];
    carry_transitions(&mut conditions, &previous_conditions);
    let status = HorizontalPodAutoscalerStatus {
        current_replicas: Some(current),
        desired_replicas: desired,
        current_metrics: Some(statuses),
        last_scale_time: last_scale,
        observed_generation: hpa.metadata.generation,
        conditions: None,
    };
    let mut value = serde_json::to_value(&status).unwrap_or_else(|_| json!({}));
    value["conditions"] = json!(conditions);
    write_status(value).await?;
    Ok(Action::requeue(SYNC_PERIOD))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readings(values: &[(Option<i64>, i64, bool)]) -> Vec<PodReading> {
        values
            .iter()
            .map(|(usage, request, ready)| PodReading {
                usage: *usage,
                request: *request,
                ready: *ready,
            })
            .collect()
    }

    #[test]
    fn utilization_over_target_scales_up_proportionally() {
        // two pods at 200% of a 50% target: 4x → 8 replicas
        let pods = readings(&[(Some(200), 100, true), (Some(200), 100, true)]);
        let proposal = propose(2, &pods, Target::Utilization(50)).unwrap();
        assert_eq!(proposal.replicas, 8);
        assert_eq!(proposal.utilization, Some(200));
        assert_eq!(proposal.average, 200);
    }

    #[test]
    fn usage_within_tolerance_keeps_the_replicas() {
        let pods = readings(&[(Some(54), 100, true), (Some(52), 100, true)]);
        assert_eq!(
            propose(2, &pods, Target::Utilization(50)).unwrap().replicas,
            2
        );
    }

    #[test]
    fn idle_pods_scale_down() {
        let pods = readings(&[
            (Some(1), 100, true),
            (Some(0), 100, true),
            (Some(2), 100, true),
        ]);
        assert_eq!(
            propose(3, &pods, Target::Utilization(50)).unwrap().replicas,
            1
        );
    }

    #[test]
    fn pods_without_metrics_hold_back_the_change() {
        // scaling up: the new pod without metrics counts as idle
        let pods = readings(&[(Some(100), 100, true), (None, 100, true)]);
        assert_eq!(
            propose(2, &pods, Target::Utilization(50)).unwrap().replicas,
            2
        );
        // 600% of the target measured, 300% once the pod without metrics counts as idle
        let pods = readings(&[(Some(300), 100, true), (None, 100, false)]);
        assert_eq!(
            propose(2, &pods, Target::Utilization(50)).unwrap().replicas,
            6
        );
        // scaling down: a pod without metrics counts as using its whole request (at least the
        // target), so one idle pod and one unmeasured pod stay two, as in Kubernetes
        let pods = readings(&[(Some(0), 100, true), (None, 100, true)]);
        assert_eq!(
            propose(2, &pods, Target::Utilization(50)).unwrap().replicas,
            2
        );
        let pods = readings(&[
            (Some(0), 100, true),
            (Some(0), 100, true),
            (Some(0), 100, true),
            (None, 100, true),
        ]);
        assert_eq!(
            propose(4, &pods, Target::Utilization(50)).unwrap().replicas,
            2
        );
        // no metrics at all: no proposal
        assert!(propose(2, &readings(&[(None, 100, true)]), Target::Utilization(50)).is_none());
    }

    #[test]
    fn average_values_divide_the_total() {
        let pods = readings(&[(Some(900), 0, true), (Some(900), 0, true)]);
        assert_eq!(
            propose(2, &pods, Target::AverageValue(300))
                .unwrap()
                .replicas,
            6
        );
    }

    #[test]
    fn scale_down_waits_for_the_window_and_up_is_rate_limited() {
        let rules = HPAScalingRules::default();
        let behaviour = (&rules, &rules);
        // a higher recommendation 100 s ago holds a scale-down for the default 300 s
        assert_eq!(
            stabilize(5, 2, &[(900, 5)], 1000, behaviour, (1, 10)),
            (5, None)
        );
        assert_eq!(
            stabilize(5, 2, &[(600, 5)], 1000, behaviour, (1, 10)),
            (2, None)
        );
        // up: at most double or +4 per step
        assert_eq!(
            stabilize(1, 20, &[], 1000, behaviour, (1, 30)),
            (5, Some("ScaleUpLimit"))
        );
        // bounds
        assert_eq!(
            stabilize(2, 8, &[], 1000, behaviour, (1, 3)),
            (3, Some("TooManyReplicas"))
        );
        assert_eq!(
            stabilize(
                2,
                0,
                &[],
                1000,
                (
                    &rules,
                    &HPAScalingRules {
                        stabilization_window_seconds: Some(0),
                        ..Default::default()
                    }
                ),
                (1, 3)
            ),
            (1, Some("TooFewReplicas"))
        );
    }

    #[test]
    fn disabled_policies_never_move() {
        let disabled = HPAScalingRules {
            select_policy: Some("Disabled".into()),
            ..Default::default()
        };
        let rules = HPAScalingRules::default();
        assert_eq!(
            stabilize(2, 6, &[], 1000, (&disabled, &rules), (1, 10)),
            (2, Some("ScaleUpLimit"))
        );
    }
}
