//! Per-kind behaviour of the built-in resources, the way Kubernetes' registry strategies do it:
//! which kinds exist ([`builtin_types`]), their defaults ([`defaults`]), validation
//! ([`validate`]), create/update preparation ([`strategy`]), selectable fields ([`fields`]) and
//! `kubectl get` columns ([`table`]).

pub mod defaults;
pub mod fields;
pub mod strategy;
pub mod table;
pub mod typed;
pub mod validate;

use crate::registry::{ResourceType, STANDARD_VERBS, ScalePaths, SchemaSource, Subresource};

struct Spec {
    group_version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    subresources: &'static [&'static str],
    storage: Option<&'static str>,
    definition: &'static str,
    tracks_generation: bool,
}

const fn spec(
    group_version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    definition: &'static str,
) -> Spec {
    Spec {
        group_version,
        kind,
        plural,
        namespaced,
        short_names: &[],
        categories: &[],
        subresources: &[],
        storage: None,
        definition,
        tracks_generation: false,
    }
}

impl Spec {
    const fn short(mut self, names: &'static [&'static str]) -> Self {
        self.short_names = names;
        self
    }
    const fn all(mut self) -> Self {
        self.categories = &["all"];
        self
    }
    const fn subs(mut self, subresources: &'static [&'static str]) -> Self {
        self.subresources = subresources;
        self
    }
    const fn stored_at(mut self, prefix: &'static str) -> Self {
        self.storage = Some(prefix);
        self
    }
    const fn generation(mut self) -> Self {
        self.tracks_generation = true;
        self
    }
}

const SPECS: &[Spec] = &[
    spec(
        "v1",
        "Namespace",
        "namespaces",
        false,
        "io.k8s.api.core.v1.Namespace",
    )
    .short(&["ns"])
    .subs(&["status", "finalize"]),
    spec("v1", "Pod", "pods", true, "io.k8s.api.core.v1.Pod")
        .short(&["po"])
        .all()
        .subs(&[
            "status",
            "binding",
            "eviction",
            "log",
            "exec",
            "attach",
            "portforward",
        ]),
    spec(
        "v1",
        "Service",
        "services",
        true,
        "io.k8s.api.core.v1.Service",
    )
    .short(&["svc"])
    .all()
    .subs(&["status"])
    .stored_at("/registry/services/specs/"),
    spec(
        "v1",
        "Endpoints",
        "endpoints",
        true,
        "io.k8s.api.core.v1.Endpoints",
    )
    .short(&["ep"])
    .stored_at("/registry/services/endpoints/"),
    spec(
        "v1",
        "ConfigMap",
        "configmaps",
        true,
        "io.k8s.api.core.v1.ConfigMap",
    )
    .short(&["cm"]),
    spec("v1", "Secret", "secrets", true, "io.k8s.api.core.v1.Secret"),
    spec(
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        true,
        "io.k8s.api.core.v1.ServiceAccount",
    )
    .short(&["sa"])
    .subs(&["token"]),
    spec("v1", "Node", "nodes", false, "io.k8s.api.core.v1.Node")
        .short(&["no"])
        .subs(&["status", "proxy"])
        .stored_at("/registry/minions/"),
    spec("v1", "Event", "events", true, "io.k8s.api.core.v1.Event").short(&["ev"]),
    spec(
        "v1",
        "PersistentVolume",
        "persistentvolumes",
        false,
        "io.k8s.api.core.v1.PersistentVolume",
    )
    .short(&["pv"])
    .subs(&["status"]),
    spec(
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        true,
        "io.k8s.api.core.v1.PersistentVolumeClaim",
    )
    .short(&["pvc"])
    .subs(&["status"]),
    spec(
        "v1",
        "ResourceQuota",
        "resourcequotas",
        true,
        "io.k8s.api.core.v1.ResourceQuota",
    )
    .short(&["quota"])
    .subs(&["status"]),
    spec(
        "v1",
        "LimitRange",
        "limitranges",
        true,
        "io.k8s.api.core.v1.LimitRange",
    )
    .short(&["limits"]),
    spec(
        "events.k8s.io/v1",
        "Event",
        "events",
        true,
        "io.k8s.api.events.v1.Event",
    )
    // stored with the v1 Events (see `crate::convert`)
    .short(&["ev"]),
    spec(
        "apps/v1",
        "Deployment",
        "deployments",
        true,
        "io.k8s.api.apps.v1.Deployment",
    )
    .short(&["deploy"])
    .all()
    .subs(&["status", "scale"])
    .generation(),
    spec(
        "apps/v1",
        "ReplicaSet",
        "replicasets",
        true,
        "io.k8s.api.apps.v1.ReplicaSet",
    )
    .short(&["rs"])
    .all()
    .subs(&["status", "scale"])
    .generation(),
    spec(
        "apps/v1",
        "DaemonSet",
        "daemonsets",
        true,
        "io.k8s.api.apps.v1.DaemonSet",
    )
    .short(&["ds"])
    .all()
    .subs(&["status"])
    .generation(),
    spec(
        "apps/v1",
        "StatefulSet",
        "statefulsets",
        true,
        "io.k8s.api.apps.v1.StatefulSet",
    )
    .short(&["sts"])
    .all()
    .subs(&["status", "scale"])
    .generation(),
    spec(
        "apps/v1",
        "ControllerRevision",
        "controllerrevisions",
        true,
        "io.k8s.api.apps.v1.ControllerRevision",
    ),
    spec("batch/v1", "Job", "jobs", true, "io.k8s.api.batch.v1.Job")
        .all()
        .subs(&["status"])
        .generation(),
    spec(
        "batch/v1",
        "CronJob",
        "cronjobs",
        true,
        "io.k8s.api.batch.v1.CronJob",
    )
    .short(&["cj"])
    .all()
    .subs(&["status"])
    .generation(),
    spec(
        "coordination.k8s.io/v1",
        "Lease",
        "leases",
        true,
        "io.k8s.api.coordination.v1.Lease",
    ),
    spec(
        "discovery.k8s.io/v1",
        "EndpointSlice",
        "endpointslices",
        true,
        "io.k8s.api.discovery.v1.EndpointSlice",
    ),
    spec(
        "networking.k8s.io/v1",
        "Ingress",
        "ingresses",
        true,
        "io.k8s.api.networking.v1.Ingress",
    )
    .short(&["ing"])
    .subs(&["status"])
    .stored_at("/registry/ingress/")
    .generation(),
    spec(
        "networking.k8s.io/v1",
        "IngressClass",
        "ingressclasses",
        false,
        "io.k8s.api.networking.v1.IngressClass",
    ),
    spec(
        "networking.k8s.io/v1",
        "NetworkPolicy",
        "networkpolicies",
        true,
        "io.k8s.api.networking.v1.NetworkPolicy",
    )
    .short(&["netpol"])
    .generation(),
    spec(
        "rbac.authorization.k8s.io/v1",
        "Role",
        "roles",
        true,
        "io.k8s.api.rbac.v1.Role",
    ),
    spec(
        "rbac.authorization.k8s.io/v1",
        "ClusterRole",
        "clusterroles",
        false,
        "io.k8s.api.rbac.v1.ClusterRole",
    ),
    spec(
        "rbac.authorization.k8s.io/v1",
        "RoleBinding",
        "rolebindings",
        true,
        "io.k8s.api.rbac.v1.RoleBinding",
    ),
    spec(
        "rbac.authorization.k8s.io/v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        false,
        "io.k8s.api.rbac.v1.ClusterRoleBinding",
    ),
    spec(
        "storage.k8s.io/v1",
        "StorageClass",
        "storageclasses",
        false,
        "io.k8s.api.storage.v1.StorageClass",
    )
    .short(&["sc"]),
    spec(
        "policy/v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        true,
        "io.k8s.api.policy.v1.PodDisruptionBudget",
    )
    .short(&["pdb"])
    .subs(&["status"])
    .generation(),
    spec(
        "autoscaling/v2",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        true,
        "io.k8s.api.autoscaling.v2.HorizontalPodAutoscaler",
    )
    .short(&["hpa"])
    .all()
    .subs(&["status"])
    .generation(),
    spec(
        "scheduling.k8s.io/v1",
        "PriorityClass",
        "priorityclasses",
        false,
        "io.k8s.api.scheduling.v1.PriorityClass",
    )
    .short(&["pc"]),
    spec(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition",
    )
    .short(&["crd", "crds"])
    .subs(&["status"])
    .stored_at("/registry/apiextensions.k8s.io/customresourcedefinitions/")
    .generation(),
];

fn subresource(owner: &Spec, group: &str, version: &str, name: &str) -> Subresource {
    let (sub_group, sub_version, kind, verbs): (&str, &str, &str, &[&str]) = match name {
        "status" => (group, version, owner.kind, &["get", "patch", "update"]),
        "scale" => ("autoscaling", "v1", "Scale", &["get", "patch", "update"]),
        "binding" => ("", "v1", "Binding", &["create"]),
        "eviction" => ("policy", "v1", "Eviction", &["create"]),
        "finalize" => ("", "v1", "Namespace", &["update"]),
        "log" => ("", "v1", "Pod", &["get"]),
        "token" => ("authentication.k8s.io", "v1", "TokenRequest", &["create"]),
        "exec" => ("", "v1", "PodExecOptions", &["create", "get"]),
        "attach" => ("", "v1", "PodAttachOptions", &["create", "get"]),
        "portforward" => ("", "v1", "PodPortForwardOptions", &["create", "get"]),
        "proxy" => (
            "",
            "v1",
            "NodeProxyOptions",
            &["create", "delete", "get", "patch", "update"],
        ),
        other => unreachable!("unknown built-in subresource {other}"),
    };
    Subresource {
        name: name.to_owned(),
        group: sub_group.to_owned(),
        version: sub_version.to_owned(),
        kind: kind.to_owned(),
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
    }
}

/// The built-in resource types.
#[must_use]
pub fn builtin_types() -> Vec<ResourceType> {
    SPECS
        .iter()
        .map(|spec| {
            let (group, version) = match spec.group_version.split_once('/') {
                Some((group, version)) => (group, version),
                None => ("", spec.group_version),
            };
            let scale = spec.subresources.contains(&"scale").then(|| ScalePaths {
                spec_replicas: "/spec/replicas".into(),
                status_replicas: "/status/replicas".into(),
                label_selector: None,
            });
            ResourceType {
                group: group.to_owned(),
                version: version.to_owned(),
                kind: spec.kind.to_owned(),
                plural: spec.plural.to_owned(),
                singular: spec.kind.to_lowercase(),
                namespaced: spec.namespaced,
                short_names: spec.short_names.iter().map(|s| (*s).to_owned()).collect(),
                categories: spec.categories.iter().map(|s| (*s).to_owned()).collect(),
                verbs: STANDARD_VERBS.iter().map(|s| (*s).to_owned()).collect(),
                subresources: spec
                    .subresources
                    .iter()
                    .map(|name| subresource(spec, group, version, name))
                    .collect(),
                storage_prefix: spec
                    .storage
                    .map_or_else(|| format!("/registry/{}/", spec.plural), str::to_owned),
                schema: Some(SchemaSource::Builtin(spec.definition)),
                tracks_generation: spec.tracks_generation,
                scale,
                printer_columns: Vec::new(),
                custom: false,
                review: false,
            }
        })
        .chain(
            crate::rbac::review::RESOURCES
                .iter()
                .map(|(group, plural, kind, namespaced)| ResourceType {
                    group: (*group).to_owned(),
                    version: "v1".into(),
                    kind: (*kind).to_owned(),
                    plural: (*plural).to_owned(),
                    singular: kind.to_lowercase(),
                    namespaced: *namespaced,
                    short_names: Vec::new(),
                    categories: Vec::new(),
                    verbs: vec!["create".into()],
                    subresources: Vec::new(),
                    storage_prefix: format!("/registry/{plural}/"),
                    schema: Some(SchemaSource::Builtin(match *kind {
                        "SelfSubjectAccessReview" => {
                            "io.k8s.api.authorization.v1.SelfSubjectAccessReview"
                        }
                        "SubjectAccessReview" => "io.k8s.api.authorization.v1.SubjectAccessReview",
                        "LocalSubjectAccessReview" => {
                            "io.k8s.api.authorization.v1.LocalSubjectAccessReview"
                        }
                        "SelfSubjectRulesReview" => {
                            "io.k8s.api.authorization.v1.SelfSubjectRulesReview"
                        }
                        "SelfSubjectReview" => "io.k8s.api.authentication.v1.SelfSubjectReview",
                        _ => "io.k8s.api.authentication.v1.TokenReview",
                    })),
                    tracks_generation: false,
                    scale: None,
                    printer_columns: Vec::new(),
                    custom: false,
                    review: true,
                }),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_definition_exists() {
        for t in builtin_types() {
            let Some(SchemaSource::Builtin(name)) = t.schema else {
                panic!()
            };
            assert!(
                crate::schema::definitions().get(name).is_some(),
                "missing definition {name}"
            );
        }
    }

    #[test]
    fn storage_keys_follow_kubernetes_layout() {
        let types = builtin_types();
        let find = |plural: &str, group: &str| {
            types
                .iter()
                .find(|t| t.plural == plural && t.group == group)
                .unwrap()
                .clone()
        };
        assert_eq!(
            find("pods", "").key(Some("default"), "web"),
            "/registry/pods/default/web"
        );
        assert_eq!(find("nodes", "").key(None, "n1"), "/registry/minions/n1");
        assert_eq!(
            find("services", "").key(Some("a"), "b"),
            "/registry/services/specs/a/b"
        );
        assert_eq!(
            find("deployments", "apps").list_prefix(Some("x")),
            "/registry/deployments/x/"
        );
    }
}
