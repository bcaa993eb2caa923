//! Health of live objects: Argo CD's per-kind rules for the core kinds, kstatus's generic rules
//! (observedGeneration, Ready, Stalled, Reconciling) for everything else. An Application is as
//! healthy as its worst object.

use serde_json::Value;

/// Health states, ordered from best to worst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Health {
    Healthy,
    Suspended,
    Progressing,
    Missing,
    Degraded,
    Unknown,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "Healthy",
            Health::Suspended => "Suspended",
            Health::Progressing => "Progressing",
            Health::Missing => "Missing",
            Health::Degraded => "Degraded",
            Health::Unknown => "Unknown",
        }
    }
}

/// A verdict and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub health: Health,
    pub message: String,
}

fn verdict(health: Health, message: impl Into<String>) -> Verdict {
    Verdict {
        health,
        message: message.into(),
    }
}

fn healthy() -> Verdict {
    verdict(Health::Healthy, "")
}

fn int(v: &Value, pointer: &str) -> i64 {
    v.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn condition<'a>(v: &'a Value, type_: &str) -> Option<&'a Value> {
    v.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

fn generation_stale(v: &Value) -> bool {
    let generation = int(v, "/metadata/generation");
    let observed = v
        .pointer("/status/observedGeneration")
        .and_then(Value::as_i64);
    matches!(observed, Some(o) if generation > o)
        || (observed.is_none() && generation > 0 && v.get("status").is_none())
}

/// The health of one live object.
pub fn assess(object: &Value) -> Verdict {
    if object.pointer("/metadata/deletionTimestamp").is_some() {
        return verdict(Health::Progressing, "pending deletion");
    }
    let group = crate::render::group_of(text(object, "/apiVersion"));
    let kind = text(object, "/kind");
    match (group, kind) {
        ("apps", "Deployment") => deployment(object),
        ("apps", "StatefulSet") => statefulset(object),
        ("apps", "DaemonSet") => daemonset(object),
        ("apps", "ReplicaSet") => replicaset(object),
        ("", "Pod") => pod(object),
        ("batch", "Job") => job(object),
        ("batch", "CronJob") => cronjob(object),
        ("", "PersistentVolumeClaim") => pvc(object),
        ("", "Service") => service(object),
        ("networking.k8s.io", "Ingress") => ingress(object),
        ("autoscaling", "HorizontalPodAutoscaler") => hpa(object),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => crd(object),
        ("policy", "PodDisruptionBudget") => pdb(object),
        (
            "",
            "ConfigMap" | "Secret" | "ServiceAccount" | "Namespace" | "LimitRange"
            | "ResourceQuota",
        )
        | ("rbac.authorization.k8s.io", _) => healthy(),
        _ => generic(object),
    }
}

/// The worst of several verdicts (Healthy when there are none).
pub fn worst<'a>(verdicts: impl IntoIterator<Item = &'a Verdict>) -> Verdict {
    verdicts
        .into_iter()
        .max_by_key(|v| v.health)
        .cloned()
        .unwrap_or_else(healthy)
}

fn deployment(d: &Value) -> Verdict {
    if d.pointer("/spec/paused").and_then(Value::as_bool) == Some(true) {
        return verdict(Health::Suspended, "deployment is paused");
    }
    if generation_stale(d) {
        return verdict(
            Health::Progressing,
            "waiting for the rollout to be observed",
        );
    }
    if let Some(c) = condition(d, "Progressing")
        && c["reason"] == "ProgressDeadlineExceeded"
    {
        return verdict(
            Health::Degraded,
            format!(
                "deployment exceeded its progress deadline: {}",
                text(c, "/message")
            ),
        );
    }
    let wanted = d
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let updated = int(d, "/status/updatedReplicas");
    let replicas = int(d, "/status/replicas");
    let available = int(d, "/status/availableReplicas");
    if updated < wanted {
        return verdict(
            Health::Progressing,
            format!("{updated} of {wanted} updated replicas are available"),
        );
    }
    if replicas > updated {
        return verdict(
            Health::Progressing,
            format!(
                "{} old replicas are pending termination",
                replicas - updated
            ),
        );
    }
    if available < updated {
        return verdict(
            Health::Progressing,
            format!("{available} of {updated} updated replicas are available"),
        );
    }
    healthy()
}

fn statefulset(s: &Value) -> Verdict {
    if int(s, "/status/observedGeneration") == 0 || generation_stale(s) {
        return verdict(
            Health::Progressing,
            "waiting for the statefulset to be observed",
        );
    }
    let wanted = s
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let ready = int(s, "/status/readyReplicas");
    if ready < wanted {
        return verdict(
            Health::Progressing,
            format!("{ready} of {wanted} pods are ready"),
        );
    }
    if text(s, "/spec/updateStrategy/type") == "OnDelete" {
        return healthy();
    }
    if let Some(partition) = s
        .pointer("/spec/updateStrategy/rollingUpdate/partition")
        .and_then(Value::as_i64)
    {
        let updated = int(s, "/status/updatedReplicas");
        if updated < wanted - partition {
            return verdict(
                Health::Progressing,
                format!("{updated} pods of the partition are updated"),
            );
        }
        return healthy();
    }
    if text(s, "/status/updateRevision") != text(s, "/status/currentRevision") {
        return verdict(Health::Progressing, "rolling update in progress");
    }
    healthy()
}

fn daemonset(d: &Value) -> Verdict {
    if generation_stale(d) {
        return verdict(
            Health::Progressing,
            "waiting for the rollout to be observed",
        );
    }
    if text(d, "/spec/updateStrategy/type") == "OnDelete" {
        return healthy();
    }
    let desired = int(d, "/status/desiredNumberScheduled");
    let updated = int(d, "/status/updatedNumberScheduled");
    let available = int(d, "/status/numberAvailable");
    if updated < desired {
        return verdict(
            Health::Progressing,
            format!("{updated} of {desired} pods are updated"),
        );
    }
    if available < desired {
        return verdict(
            Health::Progressing,
            format!("{available} of {desired} pods are available"),
        );
    }
    healthy()
}

fn replicaset(r: &Value) -> Verdict {
    if generation_stale(r) {
        return verdict(
            Health::Progressing,
            "waiting for the replicaset to be observed",
        );
    }
    if let Some(c) = condition(r, "ReplicaFailure")
        && c["status"] == "True"
    {
        return verdict(Health::Degraded, text(c, "/message").to_owned());
    }
    let wanted = r
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let available = int(r, "/status/availableReplicas");
    if available < wanted {
        return verdict(
            Health::Progressing,
            format!("{available} of {wanted} replicas are available"),
        );
    }
    healthy()
}

fn pod(p: &Value) -> Verdict {
    let restart_always = matches!(text(p, "/spec/restartPolicy"), "" | "Always");
    let statuses: Vec<&Value> = ["/status/initContainerStatuses", "/status/containerStatuses"]
        .iter()
        .filter_map(|ptr| p.pointer(ptr).and_then(Value::as_array))
        .flatten()
        .collect();
    if restart_always {
        for s in &statuses {
            let reason = text(s, "/state/waiting/reason");
            if reason.starts_with("Err") || reason.ends_with("Error") || reason.ends_with("BackOff")
            {
                let message = text(s, "/state/waiting/message");
                return verdict(
                    Health::Degraded,
                    format!("{}: {reason} {message}", text(s, "/name"))
                        .trim_end()
                        .to_owned(),
                );
            }
        }
    }
    match text(p, "/status/phase") {
        "Succeeded" => healthy(),
        "Failed" => {
            let message = text(p, "/status/message");
            let reason = statuses
                .iter()
                .find_map(|s| {
                    s.pointer("/state/terminated/reason")
                        .and_then(Value::as_str)
                })
                .unwrap_or("failed");
            verdict(
                Health::Degraded,
                if message.is_empty() { reason } else { message },
            )
        }
        "Running" if restart_always => {
            if condition(p, "Ready").is_some_and(|c| c["status"] == "True") {
                healthy()
            } else if statuses
                .iter()
                .any(|s| s.pointer("/lastState/terminated").is_some())
            {
                verdict(Health::Degraded, "containers are restarting")
            } else {
                verdict(Health::Progressing, "waiting for the pod to be ready")
            }
        }
        "Running" => verdict(Health::Progressing, "running"),
        _ => verdict(Health::Progressing, "pending"),
    }
}

fn job(j: &Value) -> Verdict {
    for (type_, health) in [
        ("Failed", Health::Degraded),
        ("Complete", Health::Healthy),
        ("Suspended", Health::Suspended),
    ] {
        if let Some(c) = condition(j, type_)
            && c["status"] == "True"
        {
            return verdict(health, text(c, "/message").to_owned());
        }
    }
    verdict(Health::Progressing, "job is running")
}

fn cronjob(c: &Value) -> Verdict {
    if c.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true) {
        return verdict(Health::Suspended, "cronjob is suspended");
    }
    let last_schedule = text(c, "/status/lastScheduleTime");
    let last_success = text(c, "/status/lastSuccessfulTime");
    let active = c
        .pointer("/status/active")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    if !last_schedule.is_empty()
        && !active
        && !last_success.is_empty()
        && last_success < last_schedule
    {
        return verdict(Health::Degraded, "the last scheduled job did not succeed");
    }
    healthy()
}

fn pvc(p: &Value) -> Verdict {
    match text(p, "/status/phase") {
        "Bound" => healthy(),
        "Pending" | "" => verdict(Health::Progressing, "waiting for the claim to be bound"),
        "Lost" => verdict(Health::Degraded, "the claim lost its volume"),
        other => verdict(Health::Unknown, format!("phase {other}")),
    }
}

/// Services and Ingresses are healthy once they exist, as kstatus has it: waiting for an
/// address (Argo CD's rule) leaves Applications Progressing forever on clusters without a load
/// balancer, its users' most common health complaint.
fn service(_: &Value) -> Verdict {
    healthy()
}

fn ingress(_: &Value) -> Verdict {
    healthy()
}

fn hpa(h: &Value) -> Verdict {
    let failing = [
        "FailedGetScale",
        "FailedUpdateScale",
        "FailedGetResourceMetric",
        "FailedGetObjectMetric",
        "FailedGetPodsMetric",
        "FailedGetExternalMetric",
        "FailedComputeMetricsReplicas",
        "InvalidSelector",
    ];
    for type_ in ["AbleToScale", "ScalingActive"] {
        if let Some(c) = condition(h, type_)
            && failing.contains(&text(c, "/reason"))
        {
            return verdict(Health::Degraded, text(c, "/message").to_owned());
        }
    }
    if ["AbleToScale", "ScalingLimited"]
        .iter()
        .any(|t| condition(h, t).is_some_and(|c| c["status"] == "True"))
    {
        return healthy();
    }
    verdict(Health::Progressing, "waiting for the autoscaler")
}

fn crd(c: &Value) -> Verdict {
    if condition(c, "NamesAccepted").is_some_and(|c| c["status"] == "False") {
        return verdict(Health::Degraded, "names not accepted");
    }
    if condition(c, "Established").is_some_and(|c| c["status"] == "True") {
        return healthy();
    }
    verdict(
        Health::Progressing,
        "waiting for the definition to be established",
    )
}

fn pdb(p: &Value) -> Verdict {
    let Some(conditions) = p.pointer("/status/conditions").and_then(Value::as_array) else {
        return verdict(Health::Progressing, "waiting for status");
    };
    for c in conditions {
        if c["status"] == "False" && c["reason"] != "InsufficientPods" {
            return verdict(Health::Degraded, text(c, "/message").to_owned());
        }
    }
    healthy()
}

/// kstatus's generic rules.
fn generic(o: &Value) -> Verdict {
    if generation_stale(o) && o.pointer("/status/observedGeneration").is_some() {
        return verdict(
            Health::Progressing,
            "waiting for the latest generation to be observed",
        );
    }
    if let Some(c) = condition(o, "Stalled")
        && c["status"] == "True"
    {
        return verdict(Health::Degraded, text(c, "/message").to_owned());
    }
    if let Some(c) = condition(o, "Reconciling")
        && c["status"] == "True"
    {
        return verdict(Health::Progressing, text(c, "/message").to_owned());
    }
    if let Some(c) = condition(o, "Ready") {
        return if c["status"] == "True" {
            healthy()
        } else {
            verdict(Health::Progressing, text(c, "/message").to_owned())
        };
    }
    healthy()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deployments() {
        let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"generation": 2}, "spec": {"replicas": 3},
            "status": {"observedGeneration": 1}});
        assert_eq!(assess(&d).health, Health::Progressing);
        d["status"] = json!({"observedGeneration": 2, "replicas": 4, "updatedReplicas": 3, "availableReplicas": 3});
        assert_eq!(assess(&d).message, "1 old replicas are pending termination");
        d["status"]["replicas"] = json!(3);
        assert_eq!(assess(&d), healthy());
        d["status"]["conditions"] = json!([{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "slow"}]);
        assert_eq!(assess(&d).health, Health::Degraded);
        d["spec"]["paused"] = json!(true);
        assert_eq!(assess(&d).health, Health::Suspended);
        d["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        assert_eq!(assess(&d).health, Health::Progressing);
    }

    #[test]
    fn pods() {
        let crash = json!({"apiVersion": "v1", "kind": "Pod", "spec": {}, "status": {"phase": "Running",
            "containerStatuses": [{"name": "app", "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}}}]}});
        assert_eq!(assess(&crash).health, Health::Degraded);
        let ready = json!({"apiVersion": "v1", "kind": "Pod", "spec": {}, "status": {"phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}]}});
        assert_eq!(assess(&ready).health, Health::Healthy);
        let failed = json!({"apiVersion": "v1", "kind": "Pod", "spec": {"restartPolicy": "Never"}, "status": {"phase": "Failed",
            "containerStatuses": [{"name": "app", "state": {"terminated": {"reason": "OOMKilled"}}}]}});
        assert_eq!(assess(&failed), verdict(Health::Degraded, "OOMKilled"));
    }

    #[test]
    fn jobs_claims_services_and_custom_resources() {
        let job = json!({"apiVersion": "batch/v1", "kind": "Job", "status": {"conditions": [{"type": "Complete", "status": "True"}]}});
        assert_eq!(assess(&job).health, Health::Healthy);
        let pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "status": {"phase": "Pending"}});
        assert_eq!(assess(&pvc).health, Health::Progressing);
        let lb = json!({"apiVersion": "v1", "kind": "Service", "spec": {"type": "LoadBalancer"}});
        assert_eq!(
            assess(&lb).health,
            Health::Healthy,
            "no address needed, as in kstatus"
        );
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap"});
        assert_eq!(assess(&cm).health, Health::Healthy);
        let cr = json!({"apiVersion": "example.com/v1", "kind": "Thing", "metadata": {"generation": 3},
            "status": {"observedGeneration": 3, "conditions": [{"type": "Ready", "status": "False", "message": "warming"}]}});
        assert_eq!(assess(&cr), verdict(Health::Progressing, "warming"));
        let stalled = json!({"apiVersion": "example.com/v1", "kind": "Thing",
            "status": {"conditions": [{"type": "Stalled", "status": "True", "message": "bad"}]}});
        assert_eq!(assess(&stalled).health, Health::Degraded);
        assert_eq!(
            assess(&json!({"apiVersion": "example.com/v1", "kind": "Bare"})).health,
            Health::Healthy
        );
    }

    #[test]
    fn the_worst_wins() {
        let all = [
            verdict(Health::Healthy, ""),
            verdict(Health::Degraded, "x"),
            verdict(Health::Progressing, "y"),
        ];
        assert_eq!(worst(&all).health, Health::Degraded);
        assert_eq!(worst(&[]).health, Health::Healthy);
    }
}
