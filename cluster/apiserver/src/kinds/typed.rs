//! The last admission check of built-in kinds: the object must decode as its `k8s-openapi`
//! type, the types kube-rs clients (our own controllers among them) read it with. This catches
//! what a JSON schema cannot express, such as malformed timestamps.

use serde::Deserialize;
use serde_json::Value;

use crate::error::Cause;

fn check<'a, T: Deserialize<'a>>(value: &'a Value) -> Option<Cause> {
    let result: Result<T, _> = serde_path_to_error::deserialize(value);
    result.err().map(|error| {
        let path = error.path().to_string();
        let field = if path == "." { String::new() } else { path };
        Cause::new("FieldValueInvalid", field, error.into_inner().to_string())
    })
}

macro_rules! typed {
    ($group:expr, $kind:expr, $value:expr, { $(($g:literal, $k:literal) => $ty:ty),* $(,)? }) => {
        match ($group, $kind) {
            $(($g, $k) => check::<$ty>($value),)*
            _ => None,
        }
    };
}

/// Checks that a built-in object decodes as its typed form.
#[must_use]
pub fn check_decodes(group: &str, kind: &str, value: &Value) -> Option<Cause> {
    use k8s_openapi::api::{
        apps, autoscaling, batch, coordination, core, discovery, events, networking, policy, rbac,
        scheduling, storage,
    };
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions;
    typed!(group, kind, value, {
        ("", "Namespace") => core::v1::Namespace,
        ("", "Pod") => core::v1::Pod,
        ("", "Service") => core::v1::Service,
        ("", "Endpoints") => core::v1::Endpoints,
        ("", "ConfigMap") => core::v1::ConfigMap,
        ("", "Secret") => core::v1::Secret,
        ("", "ServiceAccount") => core::v1::ServiceAccount,
        ("", "Node") => core::v1::Node,
        ("", "Event") => core::v1::Event,
        ("", "PersistentVolume") => core::v1::PersistentVolume,
        ("", "PersistentVolumeClaim") => core::v1::PersistentVolumeClaim,
        ("", "ResourceQuota") => core::v1::ResourceQuota,
        ("", "LimitRange") => core::v1::LimitRange,
        ("events.k8s.io", "Event") => events::v1::Event,
        ("apps", "Deployment") => apps::v1::Deployment,
        ("apps", "ReplicaSet") => apps::v1::ReplicaSet,
        ("apps", "DaemonSet") => apps::v1::DaemonSet,
        ("apps", "StatefulSet") => apps::v1::StatefulSet,
        ("apps", "ControllerRevision") => apps::v1::ControllerRevision,
        ("batch", "Job") => batch::v1::Job,
        ("batch", "CronJob") => batch::v1::CronJob,
        ("coordination.k8s.io", "Lease") => coordination::v1::Lease,
        ("discovery.k8s.io", "EndpointSlice") => discovery::v1::EndpointSlice,
        ("networking.k8s.io", "Ingress") => networking::v1::Ingress,
        ("networking.k8s.io", "IngressClass") => networking::v1::IngressClass,
        ("networking.k8s.io", "NetworkPolicy") => networking::v1::NetworkPolicy,
        ("rbac.authorization.k8s.io", "Role") => rbac::v1::Role,
        ("rbac.authorization.k8s.io", "ClusterRole") => rbac::v1::ClusterRole,
        ("rbac.authorization.k8s.io", "RoleBinding") => rbac::v1::RoleBinding,
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => rbac::v1::ClusterRoleBinding,
        ("storage.k8s.io", "StorageClass") => storage::v1::StorageClass,
        ("policy", "PodDisruptionBudget") => policy::v1::PodDisruptionBudget,
        ("autoscaling", "HorizontalPodAutoscaler") => autoscaling::v2::HorizontalPodAutoscaler,
        ("scheduling.k8s.io", "PriorityClass") => scheduling::v1::PriorityClass,
        ("apiextensions.k8s.io", "CustomResourceDefinition") => apiextensions::v1::CustomResourceDefinition,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn malformed_times_are_found() {
        let good = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "creationTimestamp": "2024-01-01T00:00:00Z"}});
        assert!(check_decodes("", "Pod", &good).is_none());
        let bad = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "status": {"startTime": "yesterday"}});
        let cause = check_decodes("", "Pod", &bad).unwrap();
        assert_eq!(cause.field, "status.startTime");
    }
}
