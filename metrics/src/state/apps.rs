//! apps/v1 kinds: Deployments, ReplicaSets, StatefulSets and DaemonSets.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt as _;

use super::{Allow, Family, Lines, Object, created, gauge};

const GENERATION: &str =
    "[STABLE] Sequence number representing a specific generation of the desired state.";

impl Object for Deployment {
    const RESOURCE: &'static str = "deployments";
    const FAMILIES: &'static [Family] = &[
        gauge(
            "kube_deployment_owner",
            "Information about the Deployment's owner.",
        ),
        created!("kube_deployment_created"),
        gauge(
            "kube_deployment_status_replicas",
            "[STABLE] The number of replicas per deployment.",
        ),
        gauge(
            "kube_deployment_status_replicas_ready",
            "[STABLE] The number of ready replicas per deployment.",
        ),
        gauge(
            "kube_deployment_status_replicas_available",
            "[STABLE] The number of available replicas per deployment.",
        ),
        gauge(
            "kube_deployment_status_replicas_unavailable",
            "[STABLE] The number of unavailable replicas per deployment.",
        ),
        gauge(
            "kube_deployment_status_replicas_updated",
            "[STABLE] The number of updated replicas per deployment.",
        ),
        gauge(
            "kube_deployment_status_terminating_replicas",
            "The number of terminating replicas per deployment.",
        ),
        gauge(
            "kube_deployment_status_observed_generation",
            "[STABLE] The generation observed by the deployment controller.",
        ),
        gauge(
            "kube_deployment_status_condition",
            "[STABLE] The current status conditions of a deployment.",
        ),
        gauge(
            "kube_deployment_spec_replicas",
            "[STABLE] Number of desired pods for a deployment.",
        ),
        gauge(
            "kube_deployment_spec_paused",
            "[STABLE] Whether the deployment is paused and will not be processed by the deployment controller.",
        ),
        gauge(
            "kube_deployment_spec_strategy_rollingupdate_max_unavailable",
            "[STABLE] Maximum number of unavailable replicas during a rolling update of a deployment.",
        ),
        gauge(
            "kube_deployment_spec_strategy_rollingupdate_max_surge",
            "[STABLE] Maximum number of replicas that can be scheduled above the desired number of replicas during a rolling update of a deployment.",
        ),
        gauge("kube_deployment_metadata_generation", GENERATION),
        gauge(
            "kube_deployment_deletion_timestamp",
            "Unix deletion timestamp",
        ),
        gauge(
            "kube_deployment_annotations",
            "Kubernetes annotations converted to Prometheus labels.",
        ),
        gauge(
            "kube_deployment_labels",
            "[STABLE] Kubernetes labels converted to Prometheus labels.",
        ),
    ];

    fn render(&self, out: &mut Lines, allow: &Allow) {
        let (namespace, name) = (self.namespace().unwrap_or_default(), self.name_any());
        let labels = [
            ("namespace", namespace.as_str()),
            ("deployment", name.as_str()),
        ];
        out.identify(&labels);
        let owners = self.owner_references();
        if owners.is_empty() {
            out.add(
                "kube_deployment_owner",
                &[labels[0], labels[1], ("owner_kind", ""), ("owner_name", "")],
                1.0,
            );
        }
        for owner in owners {
            out.add(
                "kube_deployment_owner",
                &[
                    labels[0],
                    labels[1],
                    ("owner_kind", &owner.kind),
                    ("owner_name", &owner.name),
                ],
                1.0,
            );
        }
        out.metadata("kube_deployment", &labels, &self.metadata, allow);
        let status = self.status.clone().unwrap_or_default();
        let spec = self.spec.clone().unwrap_or_default();
        for (name, value) in [
            ("kube_deployment_status_replicas", status.replicas),
            (
                "kube_deployment_status_replicas_ready",
                status.ready_replicas,
            ),
            (
                "kube_deployment_status_replicas_available",
                status.available_replicas,
            ),
            (
                "kube_deployment_status_replicas_unavailable",
                status.unavailable_replicas,
            ),
            (
                "kube_deployment_status_replicas_updated",
                status.updated_replicas,
            ),
        ] {
            out.add(name, &labels, f64::from(value.unwrap_or(0)));
        }
        out.some(
            "kube_deployment_status_terminating_replicas",
            &labels,
            status.terminating_replicas,
        );
        out.add(
            "kube_deployment_status_observed_generation",
            &labels,
            status.observed_generation.unwrap_or(0) as f64,
        );
        for condition in status.conditions.iter().flatten() {
            let reason = condition.reason.as_deref().unwrap_or("");
            let reason = if DEPLOYMENT_REASONS.contains(&reason) {
                reason
            } else {
                "unknown"
            };
            out.condition(
                "kube_deployment_status_condition",
                &[
                    labels[0],
                    labels[1],
                    ("reason", reason),
                    ("condition", &condition.type_),
                ],
                "status",
                &condition.status,
            );
        }
        out.some("kube_deployment_spec_replicas", &labels, spec.replicas);
        out.flag(
            "kube_deployment_spec_paused",
            &labels,
            spec.paused == Some(true),
        );
        if let (Some(rolling), Some(replicas)) = (
            spec.strategy
                .as_ref()
                .and_then(|s| s.rolling_update.as_ref()),
            spec.replicas,
        ) {
            if let Some(value) = scaled(rolling.max_unavailable.as_ref(), replicas, false) {
                out.add(
                    "kube_deployment_spec_strategy_rollingupdate_max_unavailable",
                    &labels,
                    value,
                );
            }
            if let Some(value) = scaled(rolling.max_surge.as_ref(), replicas, true) {
                out.add(
                    "kube_deployment_spec_strategy_rollingupdate_max_surge",
                    &labels,
                    value,
                );
            }
        }
        out.add(
            "kube_deployment_metadata_generation",
            &labels,
            self.metadata.generation.unwrap_or(0) as f64,
        );
    }
}

/// The Deployment condition reasons kube-state-metrics passes through; others are `unknown`.
const DEPLOYMENT_REASONS: &[&str] = &[
    "ReplicaSetUpdated",
    "ReplicaSetCreateError",
    "NewReplicaSetCreated",
    "FoundNewReplicaSet",
    "NewReplicaSetAvailable",
    "ProgressDeadlineExceeded",
    "DeploymentPaused",
    "DeploymentResumed",
    "MinimumReplicasAvailable",
    "MinimumReplicasUnavailable",
    "",
];

/// An int-or-percent against `total`, percentages rounded up or down. Unset means the
/// Deployment default of 25%.
fn scaled(value: Option<&IntOrString>, total: i32, round_up: bool) -> Option<f64> {
    match value {
        Some(IntOrString::Int(n)) => Some(f64::from(*n)),
        Some(IntOrString::String(text)) => {
            let percent: f64 = text.strip_suffix('%')?.parse().ok()?;
            let exact = percent * f64::from(total) / 100.0;
            Some(if round_up {
                exact.ceil()
            } else {
                exact.floor()
            })
        }
        None => {
            let exact = 25.0 * f64::from(total) / 100.0;
            Some(if round_up {
                exact.ceil()
            } else {
                exact.floor()
            })
        }
    }
}

impl Object for ReplicaSet {
    const RESOURCE: &'static str = "replicasets";
    const FAMILIES: &'static [Family] = &[
        created!("kube_replicaset_created"),
        gauge(
            "kube_replicaset_status_replicas",
            "[STABLE] The number of replicas per ReplicaSet.",
        ),
        gauge(
            "kube_replicaset_status_fully_labeled_replicas",
            "[STABLE] The number of fully labeled replicas per ReplicaSet.",
        ),
        gauge(
            "kube_replicaset_status_ready_replicas",
            "[STABLE] The number of ready replicas per ReplicaSet.",
        ),
        gauge(
            "kube_replicaset_status_terminating_replicas",
            "The number of terminating replicas per ReplicaSet.",
        ),
        gauge(
            "kube_replicaset_status_observed_generation",
            "[STABLE] The generation observed by the ReplicaSet controller.",
        ),
        gauge(
            "kube_replicaset_spec_replicas",
            "[STABLE] Number of desired pods for a ReplicaSet.",
        ),
        gauge("kube_replicaset_metadata_generation", GENERATION),
        gauge(
            "kube_replicaset_owner",
            "[STABLE] Information about the ReplicaSet's owner.",
        ),
        gauge(
            "kube_replicaset_annotations",
            "Kubernetes annotations converted to Prometheus labels.",
        ),
        gauge(
            "kube_replicaset_labels",
            "[STABLE] Kubernetes labels converted to Prometheus labels.",
        ),
    ];

    fn render(&self, out: &mut Lines, allow: &Allow) {
        let (namespace, name) = (self.namespace().unwrap_or_default(), self.name_any());
        let labels = [
            ("namespace", namespace.as_str()),
            ("replicaset", name.as_str()),
        ];
        out.identify(&labels);
        out.metadata("kube_replicaset", &labels, &self.metadata, allow);
        let status = self.status.clone().unwrap_or_default();
        out.add(
            "kube_replicaset_status_replicas",
            &labels,
            f64::from(status.replicas),
        );
        out.add(
            "kube_replicaset_status_fully_labeled_replicas",
            &labels,
            f64::from(status.fully_labeled_replicas.unwrap_or(0)),
        );
        out.add(
            "kube_replicaset_status_ready_replicas",
            &labels,
            f64::from(status.ready_replicas.unwrap_or(0)),
        );
        out.some(
            "kube_replicaset_status_terminating_replicas",
            &labels,
            status.terminating_replicas,
        );
        out.add(
            "kube_replicaset_status_observed_generation",
            &labels,
            status.observed_generation.unwrap_or(0) as f64,
        );
        out.some(
            "kube_replicaset_spec_replicas",
            &labels,
            self.spec.as_ref().and_then(|s| s.replicas),
        );
        out.add(
            "kube_replicaset_metadata_generation",
            &labels,
            self.metadata.generation.unwrap_or(0) as f64,
        );
        out.owners("kube_replicaset_owner", &labels, self.owner_references());
    }
}

impl Object for StatefulSet {
    const RESOURCE: &'static str = "statefulsets";
    const FAMILIES: &'static [Family] = &[
        created!("kube_statefulset_created"),
        gauge(
            "kube_statefulset_status_replicas",
            "[STABLE] The number of replicas per StatefulSet.",
        ),
        gauge(
            "kube_statefulset_status_replicas_available",
            "[STABLE] The number of available replicas per StatefulSet.",
        ),
        gauge(
            "kube_statefulset_status_replicas_current",
            "[STABLE] The number of current replicas per StatefulSet.",
        ),
        gauge(
            "kube_statefulset_status_replicas_ready",
            "[STABLE] The number of ready replicas per StatefulSet.",
        ),
        gauge(
            "kube_statefulset_status_replicas_updated",
            "[STABLE] The number of updated replicas per StatefulSet.",
        ),
        gauge(
            "kube_statefulset_status_observed_generation",
            "[STABLE] The generation observed by the StatefulSet controller.",
        ),
        gauge(
            "kube_statefulset_replicas",
            "[STABLE] Number of desired pods for a StatefulSet.",
        ),
        gauge(
            "kube_statefulset_ordinals_start",
            "[STABLE] Start ordinal of the StatefulSet.",
        ),
        gauge(
            "kube_statefulset_metadata_generation",
            "[STABLE] Sequence number representing a specific generation of the desired state for the StatefulSet.",
        ),
        gauge(
            "kube_statefulset_persistentvolumeclaim_retention_policy",
            "[STABLE] Count of retention policy for StatefulSet template PVCs",
        ),
        gauge(
            "kube_statefulset_annotations",
            "[STABLE] Kubernetes annotations converted to Prometheus labels.",
        ),
        gauge(
            "kube_statefulset_labels",
            "[STABLE] Kubernetes labels converted to Prometheus labels.",
        ),
        gauge(
            "kube_statefulset_status_current_revision",
            "[STABLE] Indicates the version of the StatefulSet used to generate Pods in the sequence [0,currentReplicas).",
        ),
        gauge(
            "kube_statefulset_status_update_revision",
            "[STABLE] Indicates the version of the StatefulSet used to generate Pods in the sequence [replicas-updatedReplicas,replicas)",
        ),
        gauge(
            "kube_statefulset_deletion_timestamp",
            "[STABLE] Unix deletion timestamp",
        ),
    ];

    fn render(&self, out: &mut Lines, allow: &Allow) {
        let (namespace, name) = (self.namespace().unwrap_or_default(), self.name_any());
        let labels = [
            ("namespace", namespace.as_str()),
            ("statefulset", name.as_str()),
        ];
        out.identify(&labels);
        out.metadata("kube_statefulset", &labels, &self.metadata, allow);
        let status = self.status.clone().unwrap_or_default();
        let spec = self.spec.clone().unwrap_or_default();
        for (name, value) in [
            ("kube_statefulset_status_replicas", Some(status.replicas)),
            (
                "kube_statefulset_status_replicas_available",
                status.available_replicas,
            ),
            (
                "kube_statefulset_status_replicas_current",
                status.current_replicas,
            ),
            (
                "kube_statefulset_status_replicas_ready",
                status.ready_replicas,
            ),
            (
                "kube_statefulset_status_replicas_updated",
                status.updated_replicas,
            ),
        ] {
            out.add(name, &labels, f64::from(value.unwrap_or(0)));
        }
        out.add(
            "kube_statefulset_status_observed_generation",
            &labels,
            status.observed_generation.unwrap_or(0) as f64,
        );
        out.some("kube_statefulset_replicas", &labels, spec.replicas);
        out.some(
            "kube_statefulset_ordinals_start",
            &labels,
            spec.ordinals.and_then(|o| o.start),
        );
        out.add(
            "kube_statefulset_metadata_generation",
            &labels,
            self.metadata.generation.unwrap_or(0) as f64,
        );
        if let Some(policy) = &spec.persistent_volume_claim_retention_policy {
            let deleted = policy.when_deleted.as_deref().unwrap_or("");
            let scaled = policy.when_scaled.as_deref().unwrap_or("");
            if !deleted.is_empty() || !scaled.is_empty() {
                out.add(
                    "kube_statefulset_persistentvolumeclaim_retention_policy",
                    &[
                        labels[0],
                        labels[1],
                        ("when_deleted", deleted),
                        ("when_scaled", scaled),
                    ],
                    1.0,
                );
            }
        }
        out.add(
            "kube_statefulset_status_current_revision",
            &[
                labels[0],
                labels[1],
                ("revision", status.current_revision.as_deref().unwrap_or("")),
            ],
            1.0,
        );
        out.add(
            "kube_statefulset_status_update_revision",
            &[
                labels[0],
                labels[1],
                ("revision", status.update_revision.as_deref().unwrap_or("")),
            ],
            1.0,
        );
    }
}

impl Object for DaemonSet {
    const RESOURCE: &'static str = "daemonsets";
    const FAMILIES: &'static [Family] = &[
        created!("kube_daemonset_created"),
        gauge(
            "kube_daemonset_status_current_number_scheduled",
            "[STABLE] The number of nodes running at least one daemon pod and are supposed to.",
        ),
        gauge(
            "kube_daemonset_status_desired_number_scheduled",
            "[STABLE] The number of nodes that should be running the daemon pod.",
        ),
        gauge(
            "kube_daemonset_status_number_available",
            "[STABLE] The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available",
        ),
        gauge(
            "kube_daemonset_status_number_misscheduled",
            "[STABLE] The number of nodes running a daemon pod but are not supposed to.",
        ),
        gauge(
            "kube_daemonset_status_number_ready",
            "[STABLE] The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready.",
        ),
        gauge(
            "kube_daemonset_status_number_unavailable",
            "[STABLE] The number of nodes that should be running the daemon pod and have none of the daemon pod running and available",
        ),
        gauge(
            "kube_daemonset_status_observed_generation",
            "[STABLE] The most recent generation observed by the daemon set controller.",
        ),
        gauge(
            "kube_daemonset_status_updated_number_scheduled",
            "[STABLE] The total number of nodes that are running updated daemon pod",
        ),
        gauge("kube_daemonset_metadata_generation", GENERATION),
        gauge(
            "kube_daemonset_deletion_timestamp",
            "Unix deletion timestamp",
        ),
        gauge(
            "kube_daemonset_annotations",
            "Kubernetes annotations converted to Prometheus labels.",
        ),
        gauge(
            "kube_daemonset_labels",
            "[STABLE] Kubernetes labels converted to Prometheus labels.",
        ),
    ];

    fn render(&self, out: &mut Lines, allow: &Allow) {
        let (namespace, name) = (self.namespace().unwrap_or_default(), self.name_any());
        let labels = [
            ("namespace", namespace.as_str()),
            ("daemonset", name.as_str()),
        ];
        out.identify(&labels);
        out.metadata("kube_daemonset", &labels, &self.metadata, allow);
        let status = self.status.clone().unwrap_or_default();
        for (name, value) in [
            (
                "kube_daemonset_status_current_number_scheduled",
                Some(status.current_number_scheduled),
            ),
            (
                "kube_daemonset_status_desired_number_scheduled",
                Some(status.desired_number_scheduled),
            ),
            (
                "kube_daemonset_status_number_available",
                status.number_available,
            ),
            (
                "kube_daemonset_status_number_misscheduled",
                Some(status.number_misscheduled),
            ),
            (
                "kube_daemonset_status_number_ready",
                Some(status.number_ready),
            ),
            (
                "kube_daemonset_status_number_unavailable",
                status.number_unavailable,
            ),
            (
                "kube_daemonset_status_updated_number_scheduled",
                status.updated_number_scheduled,
            ),
        ] {
            out.add(name, &labels, f64::from(value.unwrap_or(0)));
        }
        out.add(
            "kube_daemonset_status_observed_generation",
            &labels,
            status.observed_generation.unwrap_or(0) as f64,
        );
        out.add(
            "kube_daemonset_metadata_generation",
            &labels,
            self.metadata.generation.unwrap_or(0) as f64,
        );
    }
}
