//! core/v1 kinds: Pods, Nodes, Namespaces, Services, PersistentVolumeClaims and
//! PersistentVolumes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerStatus, Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod,
    PodCondition, Service,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt as _;

use super::{Allow, Family, Lines, Object, created, gauge};

/// A quantity as a number (`250m` → 0.25, `1Gi` → 1073741824, `1e3` → 1000).
#[must_use]
pub fn quantity(value: &Quantity) -> Option<f64> {
    kelson_common::quantity::parse_millis(&value.0).map(|millis| millis as f64 / 1000.0)
}

/// The `resource` and `unit` labels kube-state-metrics gives a resource name; `None` for the
/// names it leaves out. `pods` only counts for nodes.
fn resource_unit(name: &str, node: bool) -> Option<(String, &'static str)> {
    let sanitized: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let unit = match name {
        "cpu" => "core",
        "memory" | "ephemeral-storage" | "storage" => "byte",
        "pods" if node => "integer",
        _ if name.starts_with("hugepages-") || name.starts_with("attachable-volumes-") => "byte",
        _ if name.contains('/')
            && !name.contains("kubernetes.io/")
            && !name.starts_with("requests.") =>
        {
            "integer"
        }
        _ => return None,
    };
    Some((sanitized, unit))
}

/// Samples of a resource list (requests, limits, capacity), each with `resource` and `unit`.
fn resources(
    out: &mut Lines,
    family: &str,
    labels: &[(&str, &str)],
    list: Option<&BTreeMap<String, Quantity>>,
    node: bool,
) {
    for (name, value) in list.into_iter().flatten() {
        let (Some((resource, unit)), Some(mut number)) =
            (resource_unit(name, node), quantity(value))
        else {
            continue;
        };
        if unit != "core" {
            // integers are rounded up, as Quantity.Value() does
            number = number.ceil();
        }
        let mut series = labels.to_vec();
        series.extend([("resource", resource.as_str()), ("unit", unit)]);
        out.add(family, &series, number);
    }
}

const POD_REASONS: &[&str] = &[
    "Evicted",
    "NodeAffinity",
    "NodeLost",
    "PreemptionByScheduler",
    "SchedulingGated",
    "Shutdown",
    "TerminationByKubelet",
    "UnexpectedAdmissionError",
];

impl Object for Pod {
    const RESOURCE: &'static str = "pods";
    const FAMILIES: &'static [Family] = &[
        gauge(
            "kube_pod_completion_time",
            "[STABLE] Completion time in unix timestamp for a pod.",
        ),
        gauge(
            "kube_pod_container_info",
            "[STABLE] Information about a container in a pod.",
        ),
        gauge(
            "kube_pod_container_resource_limits",
            "[STABLE] The number of requested limit resource by a container. It is recommended to use the kube_pod_resource_limits metric exposed by kube-scheduler instead, as it is more precise.",
        ),
        gauge(
            "kube_pod_container_resource_requests",
            "[STABLE] The number of requested request resource by a container. It is recommended to use the kube_pod_resource_requests metric exposed by kube-scheduler instead, as it is more precise.",
        ),
        gauge(
            "kube_pod_container_state_started",
            "[STABLE] Start time in unix timestamp for a pod container.",
        ),
        gauge(
            "kube_pod_container_status_last_terminated_reason",
            "Describes the last reason the container was in terminated state.",
        ),
        gauge(
            "kube_pod_container_status_last_terminated_exitcode",
            "Describes the exit code for the last container in terminated state.",
        ),
        gauge(
            "kube_pod_container_status_last_terminated_timestamp",
            "Last terminated time for a pod container in unix timestamp.",
        ),
        gauge(
            "kube_pod_container_status_ready",
            "[STABLE] Describes whether the containers readiness check succeeded.",
        ),
        super::counter(
            "kube_pod_container_status_restarts_total",
            "[STABLE] The number of container restarts per container.",
        ),
        gauge(
            "kube_pod_container_status_running",
            "[STABLE] Describes whether the container is currently in running state.",
        ),
        gauge(
            "kube_pod_container_status_terminated",
            "[STABLE] Describes whether the container is currently in terminated state.",
        ),
        gauge(
            "kube_pod_container_status_terminated_reason",
            "Describes the reason the container is currently in terminated state.",
        ),
        gauge(
            "kube_pod_container_status_waiting",
            "[STABLE] Describes whether the container is currently in waiting state.",
        ),
        gauge(
            "kube_pod_container_status_waiting_reason",
            "[STABLE] Describes the reason the container is currently in waiting state.",
        ),
        created!("kube_pod_created"),
        gauge("kube_pod_deletion_timestamp", "Unix deletion timestamp"),
        gauge("kube_pod_info", "[STABLE] Information about pod."),
        gauge("kube_pod_ips", "Pod IP addresses"),
        gauge(
            "kube_pod_init_container_info",
            "[STABLE] Information about an init container in a pod.",
        ),
        gauge(
            "kube_pod_init_container_resource_limits",
            "The number of requested limit resource by an init container.",
        ),
        gauge(
            "kube_pod_init_container_resource_requests",
            "The number of requested request resource by an init container.",
        ),
        gauge(
            "kube_pod_init_container_state_started",
            "Start time in unix timestamp for a pod init container.",
        ),
        gauge(
            "kube_pod_init_container_status_last_terminated_reason",
            "Describes the last reason the init container was in terminated state.",
        ),
        gauge(
            "kube_pod_init_container_status_last_terminated_exitcode",
            "Describes the exit code for the last init container in terminated state.",
        ),
        gauge(
            "kube_pod_init_container_status_last_terminated_timestamp",
            "Last terminated time for a pod init container in unix timestamp.",
        ),
        gauge(
            "kube_pod_init_container_status_ready",
            "[STABLE] Describes whether the init containers readiness check succeeded.",
        ),
        super::counter(
            "kube_pod_init_container_status_restarts_total",
            "[STABLE] The number of restarts for the init container.",
        ),
        gauge(
            "kube_pod_init_container_status_running",
            "[STABLE] Describes whether the init container is currently in running state.",
        ),
        gauge(
            "kube_pod_init_container_status_terminated",
            "[STABLE] Describes whether the init container is currently in terminated state.",
        ),
        gauge(
            "kube_pod_init_container_status_terminated_reason",
            "Describes the reason the init container is currently in terminated state.",
        ),
        gauge(
            "kube_pod_init_container_status_waiting",
            "[STABLE] Describes whether the init container is currently in waiting state.",
        ),
        gauge(
            "kube_pod_init_container_status_waiting_reason",
            "Describes the reason the init container is currently in waiting state.",
        ),
        gauge(
            "kube_pod_annotations",
            "Kubernetes annotations converted to Prometheus labels.",
        ),
        gauge(
            "kube_pod_labels",
            "[STABLE] Kubernetes labels converted to Prometheus labels.",
        ),
        gauge(
            "kube_pod_overhead_cpu_cores",
            "The pod overhead in regards to cpu cores associated with running a pod.",
        ),
        gauge(
            "kube_pod_overhead_memory_bytes",
            "The pod overhead in regards to memory associated with running a pod.",
        ),
        gauge(
            "kube_pod_owner",
            "[STABLE] Information about the Pod's owner.",
        ),
        gauge(
            "kube_pod_restart_policy",
            "[STABLE] Describes the restart policy in use by this pod.",
        ),
        gauge(
            "kube_pod_runtimeclass_name_info",
            "The runtimeclass associated with the pod.",
        ),
        gauge(
            "kube_pod_spec_volumes_persistentvolumeclaims_info",
            "[STABLE] Information about persistentvolumeclaim and ephemeral volumes in a pod.",
        ),
        gauge(
            "kube_pod_spec_volumes_persistentvolumeclaims_readonly",
            "[STABLE] Describes whether a persistentvolumeclaim is mounted read only. Ephemeral volumes always report 0 since the ephemeral volume source does not support a read-only flag.",
        ),
        gauge(
            "kube_pod_start_time",
            "[STABLE] Start time in unix timestamp for a pod.",
        ),
        gauge("kube_pod_status_phase", "[STABLE] The pods current phase."),
        gauge("kube_pod_status_qos_class", "The pods current qosClass."),
        gauge(
            "kube_pod_status_ready",
            "[STABLE] Describes whether the pod is ready to serve requests.",
        ),
        gauge(
            "kube_pod_status_ready_time",
            "Readiness achieved time in unix timestamp for a pod.",
        ),
        gauge(
            "kube_pod_status_initialized_time",
            "Initialized time in unix timestamp for a pod.",
        ),
        gauge(
            "kube_pod_status_container_ready_time",
            "Readiness achieved time in unix timestamp for a pod containers.",
        ),
        gauge("kube_pod_status_reason", "The pod status reasons"),
        gauge(
            "kube_pod_status_scheduled",
            "[STABLE] Describes the status of the scheduling process for the pod.",
        ),
        gauge(
            "kube_pod_status_scheduled_time",
            "[STABLE] Unix timestamp when pod moved into scheduled status",
        ),
        gauge(
            "kube_pod_status_unschedulable",
            "[STABLE] Describes the unschedulable status for the pod.",
        ),
        gauge(
            "kube_pod_status_unscheduled_time",
            "Unix timestamp when pod moved into unscheduled status",
        ),
        gauge(
            "kube_pod_tolerations",
            "Information about the pod tolerations",
        ),
        gauge("kube_pod_service_account", "The service account for a pod."),
        gauge("kube_pod_scheduler", "The scheduler for a pod."),
    ];

    fn render(&self, out: &mut Lines, allow: &Allow) {
        let namespace = self.namespace().unwrap_or_default();
        let name = self.name_any();
        let uid = self.metadata.uid.clone().unwrap_or_default();
        let labels = [
            ("namespace", namespace.as_str()),
            ("pod", name.as_str()),
            ("uid", uid.as_str()),
        ];
        out.identify(&labels);
        let spec = self.spec.clone().unwrap_or_default();
        let status = self.status.clone().unwrap_or_default();
        let node = spec.node_name.as_deref().unwrap_or("");
        let controller = self
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true));
        out.add(
            "kube_pod_info",
            &[
                labels[0],
                labels[1],
                labels[2],
                ("host_ip", status.host_ip.as_deref().unwrap_or("")),
                ("pod_ip", status.pod_ip.as_deref().unwrap_or("")),
                ("node", node),
                (
                    "created_by_kind",
                    controller.map_or("", |o| o.kind.as_str()),
                ),
                (
                    "created_by_name",
                    controller.map_or("", |o| o.name.as_str()),
                ),
                (
                    "priority_class",
                    spec.priority_class_name.as_deref().unwrap_or(""),
                ),
                (
                    "host_network",
                    if spec.host_network == Some(true) {
                        "true"
                    } else {
                        "false"
                    },
                ),
            ],
            1.0,
        );
        out.metadata("kube_pod", &labels, &self.metadata, allow);
        out.owners("kube_pod_owner", &labels, self.owner_references());
        for ip in status.pod_ips.iter().flatten() {
            let Ok(address) = ip.ip.parse::<std::net::IpAddr>() else {
                continue;
            };
            let family = match address {
                std::net::IpAddr::V4(_) => "4",
                std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => "4",
                std::net::IpAddr::V6(_) => "6",
            };
            out.add(
                "kube_pod_ips",
                &[
                    labels[0],
                    labels[1],
                    labels[2],
                    ("ip", &ip.ip),
                    ("ip_family", family),
                ],
                1.0,
            );
        }
        containers(
            out,
            "kube_pod_container",
            &labels,
            node,
            &spec.containers,
            status.container_statuses.as_deref().unwrap_or_default(),
            None,
        );
        containers(
            out,
            "kube_pod_init_container",
            &labels,
            node,
            spec.init_containers.as_deref().unwrap_or_default(),
            status
                .init_container_statuses
                .as_deref()
                .unwrap_or_default(),
            Some(()),
        );
        let finished = status
            .container_statuses
            .iter()
            .flatten()
            .filter_map(|s| s.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
            .max_by_key(|t| t.0);
        out.time("kube_pod_completion_time", &labels, finished);
        if let Some(overhead) = &spec.overhead {
            out.some(
                "kube_pod_overhead_cpu_cores",
                &labels,
                overhead.get("cpu").and_then(quantity),
            );
            out.some(
                "kube_pod_overhead_memory_bytes",
                &labels,
                overhead.get("memory").and_then(quantity),
            );
        }
        out.add(
            "kube_pod_restart_policy",
            &[
                labels[0],
                labels[1],
                labels[2],
                ("type", spec.restart_policy.as_deref().unwrap_or("Always")),
            ],
            1.0,
        );
        if let Some(class) = &spec.runtime_class_name {
            out.add(
                "kube_pod_runtimeclass_name_info",
                &[
                    labels[0],
                    labels[1],
                    labels[2],
                    ("runtimeclass_name", class),
                ],
                1.0,
            );
        }
        for volume in spec.volumes.iter().flatten() {
            let (claim, ephemeral, read_only) = if let Some(claim) = &volume.persistent_volume_claim
            {
                (
                    claim.claim_name.clone(),
                    "false",
                    claim.read_only == Some(true),
                )
            } else if volume.ephemeral.is_some() {
                (format!("{name}-{}", volume.name), "true", false)
            } else {
                continue;
            };
            let series = [
                labels[0],
                labels[1],
                labels[2],
                ("volume", volume.name.as_str()),
                ("persistentvolumeclaim", claim.as_str()),
                ("ephemeral", ephemeral),
            ];
            out.add(
                "kube_pod_spec_volumes_persistentvolumeclaims_info",
                &series,
                1.0,
            );
            out.flag(
                "kube_pod_spec_volumes_persistentvolumeclaims_readonly",
                &series,
                read_only,
            );
        }
        out.time("kube_pod_start_time", &labels, status.start_time.as_ref());
        if let Some(phase) = status.phase.as_deref().filter(|p| !p.is_empty()) {
            for value in ["Pending", "Succeeded", "Failed", "Unknown", "Running"] {
                out.flag(
                    "kube_pod_status_phase",
                    &[labels[0], labels[1], labels[2], ("phase", value)],
                    phase == value,
                );
            }
        }
        if let Some(qos) = status.qos_class.as_deref().filter(|q| !q.is_empty()) {
            for value in ["BestEffort", "Burstable", "Guaranteed"] {
                out.flag(
                    "kube_pod_status_qos_class",
                    &[labels[0], labels[1], labels[2], ("qos_class", value)],
                    qos == value,
                );
            }
        }
        let conditions = status.conditions.clone().unwrap_or_default();
        let condition = |kind: &str| conditions.iter().find(|c| c.type_ == kind);
        if let Some(ready) = condition("Ready") {
            out.condition("kube_pod_status_ready", &labels, "condition", &ready.status);
        }
        let true_since = |c: Option<&PodCondition>| {
            c.filter(|c| c.status == "True")
                .and_then(|c| c.last_transition_time.clone())
        };
        out.time(
            "kube_pod_status_ready_time",
            &labels,
            true_since(condition("Ready")).as_ref(),
        );
        out.time(
            "kube_pod_status_initialized_time",
            &labels,
            true_since(condition("Initialized")).as_ref(),
        );
        out.time(
            "kube_pod_status_container_ready_time",
            &labels,
            true_since(condition("ContainersReady")).as_ref(),
        );
        let mut reasons: Vec<&str> = Vec::new();
        reasons.extend(status.reason.as_deref());
        reasons.extend(conditions.iter().filter_map(|c| c.reason.as_deref()));
        reasons.extend(
            status
                .container_statuses
                .iter()
                .flatten()
                .filter_map(|s| s.state.as_ref()?.terminated.as_ref()?.reason.as_deref()),
        );
        for reason in POD_REASONS {
            if reasons.contains(reason) {
                out.add(
                    "kube_pod_status_reason",
                    &[labels[0], labels[1], labels[2], ("reason", reason)],
                    1.0,
                );
            }
        }
        if let Some(reason) = status.reason.as_deref()
            && !reason.is_empty()
            && !POD_REASONS.contains(&reason)
        {
            out.add(
                "kube_pod_status_reason",
                &[labels[0], labels[1], labels[2], ("reason", "Other")],
                1.0,
            );
        }
        if let Some(scheduled) = condition("PodScheduled") {
            out.condition(
                "kube_pod_status_scheduled",
                &labels,
                "condition",
                &scheduled.status,
            );
            if scheduled.status == "True" {
                out.time(
                    "kube_pod_status_scheduled_time",
                    &labels,
                    scheduled.last_transition_time.as_ref(),
                );
            } else if scheduled.status == "False" {
                out.add("kube_pod_status_unschedulable", &labels, 1.0);
                out.time(
                    "kube_pod_status_unscheduled_time",
                    &labels,
                    scheduled.last_transition_time.as_ref(),
                );
            }
        }
        let mut seen = Vec::new();
        for toleration in spec.tolerations.iter().flatten() {
            let seconds = toleration
                .toleration_seconds
                .map(|s| s.to_string())
                .unwrap_or_default();
            let fields = [
                toleration.key.clone().unwrap_or_default(),
                toleration.operator.clone().unwrap_or_default(),
                toleration.value.clone().unwrap_or_default(),
                toleration.effect.clone().unwrap_or_default(),
                seconds,
            ];
            if seen.contains(&fields) {
                continue;
            }
            out.add(
                "kube_pod_tolerations",
                &[
                    labels[0],
                    labels[1],
                    labels[2],
                    ("key", &fields[0]),
                    ("operator", &fields[1]),
                    ("value", &fields[2]),
                    ("effect", &fields[3]),
                    ("toleration_seconds", &fields[4]),
                ],
                1.0,
            );
            seen.push(fields);
        }
        out.add(
            "kube_pod_service_account",
            &[
                labels[0],
                labels[1],
                labels[2],
                (
                    "service_account",
                    spec.service_account_name.as_deref().unwrap_or(""),
                ),
            ],
            1.0,
        );
        out.add(
            "kube_pod_scheduler",
            &[
                labels[0],
                labels[1],
                labels[2],
                ("name", spec.scheduler_name.as_deref().unwrap_or("")),
            ],
            1.0,
        );
    }
}

/// The per-container families of containers (`prefix` `kube_pod_container`) or init
/// containers (`kube_pod_init_container`, which also carry `restart_policy` in their info).
fn containers(
    out: &mut Lines,
    prefix: &str,
    pod: &[(&str, &str); 3],
    node: &str,
    specs: &[Container],
    statuses: &[ContainerStatus],
    init: Option<()>,
) {
    let family = |suffix: &str| format!("{prefix}_{suffix}");
    for container in specs {
        let with_container = [
            pod[0],
            pod[1],
            pod[2],
            ("container", container.name.as_str()),
        ];
        let mut node_labels = with_container.to_vec();
        node_labels.push(("node", node));
        let resources = container.resources.as_ref();
        self::resources(
            out,
            &family("resource_requests"),
            &node_labels,
            resources.and_then(|r| r.requests.as_ref()),
            false,
        );
        self::resources(
            out,
            &family("resource_limits"),
            &node_labels,
            resources.and_then(|r| r.limits.as_ref()),
            false,
        );
        let Some(status) = statuses.iter().find(|s| s.name == container.name) else {
            continue;
        };
        let mut info = with_container.to_vec();
        info.extend([
            ("image_spec", container.image.as_deref().unwrap_or("")),
            ("image", status.image.as_str()),
            ("image_id", status.image_id.as_str()),
            ("container_id", status.container_id.as_deref().unwrap_or("")),
        ]);
        if init.is_some() {
            info.push((
                "restart_policy",
                container.restart_policy.as_deref().unwrap_or(""),
            ));
        }
        out.add(&family("info"), &info, 1.0);
    }
    for status in statuses {
        let labels = [pod[0], pod[1], pod[2], ("container", status.name.as_str())];
        let state = status.state.clone().unwrap_or_default();
        let started = state
            .running
            .as_ref()
            .and_then(|r| r.started_at.clone())
            .or_else(|| state.terminated.as_ref().and_then(|t| t.started_at.clone()));
        out.time(&family("state_started"), &labels, started.as_ref());
        if let Some(last) = status
            .last_state
            .as_ref()
            .and_then(|l| l.terminated.as_ref())
        {
            let mut with_reason = labels.to_vec();
            with_reason.push(("reason", last.reason.as_deref().unwrap_or("")));
            out.add(&family("status_last_terminated_reason"), &with_reason, 1.0);
            out.add(
                &family("status_last_terminated_exitcode"),
                &labels,
                f64::from(last.exit_code),
            );
            out.time(
                &family("status_last_terminated_timestamp"),
                &labels,
                last.finished_at.as_ref(),
            );
        }
        out.flag(&family("status_ready"), &labels, status.ready);
        out.add(
            &family("status_restarts_total"),
            &labels,
            f64::from(status.restart_count),
        );
        out.flag(&family("status_running"), &labels, state.running.is_some());
        out.flag(
            &family("status_terminated"),
            &labels,
            state.terminated.is_some(),
        );
        if let Some(terminated) = &state.terminated {
            let mut with_reason = labels.to_vec();
            with_reason.push(("reason", terminated.reason.as_deref().unwrap_or("")));
            out.add(&family("status_terminated_reason"), &with_reason, 1.0);
        }
        out.flag(&family("status_waiting"), &labels, state.waiting.is_some());
        if let Some(waiting) = &state.waiting {
            let mut with_reason = labels.to_vec();
            with_reason.push(("reason", waiting.reason.as_deref().unwrap_or("")));
            out.add(&family("status_waiting_reason"), &with_reason, 1.0);
        }
    }
}

impl Object for Node {
    const RESOURCE: &'static str = "nodes";
    const FAMILIES: &'static [Family] = &[
        gauge(
            "kube_node_annotations",
            "Kubernetes annotations converted to Prometheus labels.",
        ),
        created!("kube_node_created"),
        gauge("kube_node_deletion_timestamp", "Unix deletion timestamp"),
        gauge(
            "kube_node_info",
            "[STABLE] Information about a cluster node.",
        ),
        gauge(
            "kube_node_labels",
            "[STABLE] Kubernetes labels converted to Prometheus labels.",
        ),
        gauge("kube_node_role", "The role of a cluster node."),
        gauge(
            "kube_node_spec_pod_cidrs",
            "The pod CIDRs of a cluster node.",
        ),
        gauge(
            "kube_node_spec_taint",
            "[STABLE] The taint of a cluster node.",
        ),
        gauge(
            "kube_node_spec_unschedulable",
            "[STABLE] Whether a node can schedule new pods.",
        ),
        gauge(
            "kube_node_status_allocatable",
            "[STABLE] The allocatable for different resources of a node that are available for scheduling.",
        ),
        gauge(
            "kube_node_status_capacity",
            "[STABLE] The capacity for different resources of a node.",
        ),
        gauge(
            "kube_node_status_condition",
            "[STABLE] The condition of a cluster node.",
        ),
        gauge("kube_node_status_addresses", "Node address information."),
    ];

    fn render(&self, out: &mut Lines, allow: &Allow) {
        let name = self.name_any();
        let labels = [("node", name.as_str())];
        out.identify(&labels);
        out.metadata("kube_node", &labels, &self.metadata, allow);
        let spec = self.spec.clone().unwrap_or_default();
        let status = self.status.clone().unwrap_or_default();
        let info = status.node_info.clone().unwrap_or_default();
        let internal_ip = status
            .addresses
            .iter()
            .flatten()
            .rfind(|a| a.type_ == "InternalIP")
            .map_or("", |a| a.address.as_str());
        out.add(
            "kube_node_info",
            &[
                labels[0],
                ("kernel_version", &info.kernel_version),
                ("os_image", &info.os_image),
                ("container_runtime_version", &info.container_runtime_version),
                ("kubelet_version", &info.kubelet_version),
                ("kubeproxy_version", "deprecated"),
                ("provider_id", spec.provider_id.as_deref().unwrap_or("")),
                ("pod_cidr", spec.pod_cidr.as_deref().unwrap_or("")),
                ("system_uuid", &info.system_uuid),
                ("internal_ip", internal_ip),
            ],
            1.0,
        );
        for key in self.labels().keys() {
            if let Some(role) = key.strip_prefix("node-role.kubernetes.io/") {
                out.add("kube_node_role", &[labels[0], ("role", role)], 1.0);
            }
        }
        for cidr in spec.pod_cidrs.iter().flatten() {
            out.add(
                "kube_node_spec_pod_cidrs",
                &[labels[0], ("pod_cidr", cidr)],
                1.0,
            );
        }
        for taint in spec.taints.iter().flatten() {
            out.add(
                "kube_node_spec_taint",
                &[
                    labels[0],
                    ("key", &taint.key),
                    ("value", taint.value.as_deref().unwrap_or("")),
                    ("effect", &taint.effect),
                ],
                1.0,
            );
        }
        out.flag(
            "kube_node_spec_unschedulable",
            &labels,
            spec.unschedulable == Some(true),
        );
        resources(
            out,
            "kube_node_status_allocatable",
            &labels,
            status.allocatable.as_ref(),
            true,
        );
        resources(
            out,
            "kube_node_status_capacity",
            &labels,
            status.capacity.as_ref(),
            true,
        );
        for condition in status.conditions.iter().flatten() {
            out.condition(
                "kube_node_status_condition",
                &[labels[0], ("condition", &condition.type_)],
                "status",
                &condition.status,
            );
        }
        for address in status.addresses.iter().flatten() {
            out.add(
                "kube_node_status_addresses",
                &[
                    labels[0],
                    ("type", &address.type_),
                    ("address", &address.address),
                ],
                1.0,
            );
        }
    }
}

impl Object for Namespace {
    const RESOURCE: &'static str = "namespaces";
    const FAMILIES: &'static [Family] = &[
        created!("kube_namespace_created"),
        gauge(
            "kube_namespace_annotations",
            "Kubernetes annotations converted to Prometheus labels.",
        ),
        gauge(
            "kube_namespace_labels",
            "[STABLE] Kubernetes labels converted to Prometheus labels.",
        ),
        gauge(
            "kube_namespace_status_phase",
            "[STABLE] kubernetes namespace status phase.",
        ),
        gauge(
            "kube_namespace_status_condition",
            "The condition of a namespace.",
        ),
    ];

    fn render(&self, out: &mut Lines, allow: &Allow) {
        let name = self.name_any();
        let labels = [("namespace", name.as_str())];
        out.identify(&labels);
        out.metadata("kube_namespace", &labels, &self.metadata, allow);
        let status = self.status.clone().unwrap_or_default();
        let phase = status.phase.as_deref().unwrap_or("");
        for value in ["Active", "Terminating"] {
            out.flag(
                "kube_namespace_status_phase",
                &[labels[0], ("phase", value)],
                phase == value,
            );
        }
        for condition in status.conditions.iter().flatten() {
            out.condition(
                "kube_namespace_status_condition",
                &[labels[0], ("condition", &condition.type_)],
                "status",
                &condition.status,
            );
        }
    }
}

impl Object for Service {
    const RESOURCE: &'static str = "services";
    const FAMILIES: &'static [Family] = &[
        gauge("kube_service_info", "[STABLE] Information about service."),
        created!("kube_service_created"),
        gauge("kube_service_spec_type", "[STABLE] Type about service."),
        gauge(
            "kube_service_annotations",
            "Kubernetes annotations converted to Prometheus labels.",
        ),
        gauge(
            "kube_service_labels",
            "[STABLE] Kubernetes labels converted to Prometheus labels.",
        ),
        gauge(
            "kube_service_spec_external_ip",
            "[STABLE] Service external ips. One series for each ip",
        ),
        gauge(
            "kube_service_status_load_balancer_ingress",
            "[STABLE] Service load balancer ingress status",
        ),
        gauge("kube_service_deletion_timestamp", "Unix deletion timestamp"),
    ];

    fn render(&self, out: &mut Lines, allow: &Allow) {
        let namespace = self.namespace().unwrap_or_default();
        let name = self.name_any();
        let uid = self.metadata.uid.clone().unwrap_or_default();
        let labels = [
            ("namespace", namespace.as_str()),
            ("service", name.as_str()),
            ("uid", uid.as_str()),
        ];
        out.identify(&labels);
        out.metadata("kube_service", &labels, &self.metadata, allow);
        let spec = self.spec.clone().unwrap_or_default();
        out.add(
            "kube_service_info",
            &[
                labels[0],
                labels[1],
                labels[2],
                ("cluster_ip", spec.cluster_ip.as_deref().unwrap_or("")),
                ("external_name", spec.external_name.as_deref().unwrap_or("")),
                (
                    "load_balancer_ip",
                    spec.load_balancer_ip.as_deref().unwrap_or(""),
                ),
                (
                    "external_traffic_policy",
                    spec.external_traffic_policy.as_deref().unwrap_or(""),
                ),
            ],
            1.0,
        );
        out.add(
            "kube_service_spec_type",
            &[
                labels[0],
                labels[1],
                labels[2],
                ("type", spec.type_.as_deref().unwrap_or("ClusterIP")),
            ],
            1.0,
        );
        for ip in spec.external_ips.iter().flatten() {
            out.add(
                "kube_service_spec_external_ip",
                &[labels[0], labels[1], labels[2], ("external_ip", ip)],
                1.0,
            );
        }
        let ingress = self
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.clone())
            .unwrap_or_default();
        for entry in &ingress {
            out.add(
                "kube_service_status_load_balancer_ingress",
                &[
                    labels[0],
                    labels[1],
                    labels[2],
                    ("ip", entry.ip.as_deref().unwrap_or("")),
                    ("hostname", entry.hostname.as_deref().unwrap_or("")),
                ],
                1.0,
            );
        }
    }
}

impl Object for PersistentVolumeClaim {
    const RESOURCE: &'static str = "persistentvolumeclaims";
    const FAMILIES: &'static [Family] = &[
        gauge(
            "kube_persistentvolumeclaim_labels",
            "[STABLE] Kubernetes labels converted to Prometheus labels.",
        ),
        gauge(
            "kube_persistentvolumeclaim_annotations",
            "Kubernetes annotations converted to Prometheus labels.",
        ),
        gauge(
            "kube_persistentvolumeclaim_info",
            "[STABLE] Information about persistent volume claim.",
        ),
        gauge(
            "kube_persistentvolumeclaim_status_phase",
            "[STABLE] The phase the persistent volume claim is currently in.",
        ),
        gauge(
            "kube_persistentvolumeclaim_resource_requests_storage_bytes",
            "[STABLE] The capacity of storage requested by the persistent volume claim.",
        ),
        gauge(
            "kube_persistentvolumeclaim_access_mode",
            "[STABLE] The access mode(s) specified by the persistent volume claim.",
        ),
        gauge(
            "kube_persistentvolumeclaim_status_condition",
            "Information about status of different conditions of persistent volume claim.",
        ),
        gauge(
            "kube_persistentvolumeclaim_created",
            "Unix creation timestamp",
        ),
        gauge(
            "kube_persistentvolumeclaim_deletion_timestamp",
            "Unix deletion timestamp",
        ),
    ];

    fn render(&self, out: &mut Lines, allow: &Allow) {
        let (namespace, name) = (self.namespace().unwrap_or_default(), self.name_any());
        let labels = [
            ("namespace", namespace.as_str()),
            ("persistentvolumeclaim", name.as_str()),
        ];
        out.identify(&labels);
        out.metadata("kube_persistentvolumeclaim", &labels, &self.metadata, allow);
        let spec = self.spec.clone().unwrap_or_default();
        let status = self.status.clone().unwrap_or_default();
        let class = self
            .annotations()
            .get("volume.beta.kubernetes.io/storage-class")
            .cloned()
            .or_else(|| spec.storage_class_name.clone())
            .unwrap_or_default();
        out.add(
            "kube_persistentvolumeclaim_info",
            &[
                labels[0],
                labels[1],
                ("storageclass", &class),
                ("volumename", spec.volume_name.as_deref().unwrap_or("")),
                ("volumemode", spec.volume_mode.as_deref().unwrap_or("")),
            ],
            1.0,
        );
        if let Some(phase) = status.phase.as_deref().filter(|p| !p.is_empty()) {
            for value in ["Lost", "Bound", "Pending"] {
                out.flag(
                    "kube_persistentvolumeclaim_status_phase",
                    &[labels[0], labels[1], ("phase", value)],
                    phase == value,
                );
            }
        }
        out.some(
            "kube_persistentvolumeclaim_resource_requests_storage_bytes",
            &labels,
            spec.resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("storage"))
                .and_then(quantity),
        );
        for mode in spec.access_modes.iter().flatten() {
            out.add(
                "kube_persistentvolumeclaim_access_mode",
                &[labels[0], labels[1], ("access_mode", mode)],
                1.0,
            );
        }
        for condition in status.conditions.iter().flatten() {
            out.condition(
                "kube_persistentvolumeclaim_status_condition",
                &[labels[0], labels[1], ("condition", &condition.type_)],
                "status",
                &condition.status,
            );
        }
    }
}

impl Object for PersistentVolume {
    const RESOURCE: &'static str = "persistentvolumes";
    const FAMILIES: &'static [Family] = &[
        gauge(
            "kube_persistentvolume_claim_ref",
            "[STABLE] Information about the Persistent Volume Claim Reference.",
        ),
        gauge(
            "kube_persistentvolume_annotations",
            "Kubernetes annotations converted to Prometheus labels.",
        ),
        gauge(
            "kube_persistentvolume_labels",
            "[STABLE] Kubernetes labels converted to Prometheus labels.",
        ),
        gauge(
            "kube_persistentvolume_status_phase",
            "[STABLE] The phase indicates if a volume is available, bound to a claim, or released by a claim.",
        ),
        gauge(
            "kube_persistentvolume_info",
            "[STABLE] Information about persistentvolume.",
        ),
        gauge(
            "kube_persistentvolume_capacity_bytes",
            "[STABLE] Persistentvolume capacity in bytes.",
        ),
        gauge("kube_persistentvolume_created", "Unix creation timestamp"),
        gauge(
            "kube_persistentvolume_deletion_timestamp",
            "Unix deletion timestamp",
        ),
        gauge(
            "kube_persistentvolume_volume_mode",
            "Volume Mode information for the PersistentVolume.",
        ),
        gauge(
            "kube_persistentvolume_access_mode",
            "The access mode(s) specified by the persistent volume.",
        ),
    ];

    fn render(&self, out: &mut Lines, allow: &Allow) {
        let name = self.name_any();
        let labels = [("persistentvolume", name.as_str())];
        out.identify(&labels);
        out.metadata("kube_persistentvolume", &labels, &self.metadata, allow);
        let spec = self.spec.clone().unwrap_or_default();
        if let Some(claim) = &spec.claim_ref {
            out.add(
                "kube_persistentvolume_claim_ref",
                &[
                    labels[0],
                    ("name", claim.name.as_deref().unwrap_or("")),
                    ("claim_namespace", claim.namespace.as_deref().unwrap_or("")),
                ],
                1.0,
            );
        }
        if let Some(phase) = self
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .filter(|p| !p.is_empty())
        {
            for value in ["Pending", "Available", "Bound", "Released", "Failed"] {
                out.flag(
                    "kube_persistentvolume_status_phase",
                    &[labels[0], ("phase", value)],
                    phase == value,
                );
            }
        }
        let nfs = spec.nfs.as_ref();
        let csi = spec.csi.as_ref();
        let local = spec.local.as_ref();
        let host = spec.host_path.as_ref();
        let iscsi = spec.iscsi.as_ref();
        let fc = spec.fc.as_ref();
        let lun = |l: Option<i32>| l.map(|l| l.to_string()).unwrap_or_default();
        let fc_wwids = fc
            .and_then(|f| f.wwids.clone())
            .unwrap_or_default()
            .join(",");
        let fc_targets = fc
            .and_then(|f| f.target_wwns.clone())
            .unwrap_or_default()
            .join(",");
        let fc_lun = lun(fc.and_then(|f| f.lun));
        let iscsi_lun = iscsi.map(|i| i.lun.to_string()).unwrap_or_default();
        out.add(
            "kube_persistentvolume_info",
            &[
                labels[0],
                (
                    "storageclass",
                    spec.storage_class_name.as_deref().unwrap_or(""),
                ),
                (
                    "gce_persistent_disk_name",
                    spec.gce_persistent_disk
                        .as_ref()
                        .map_or("", |g| g.pd_name.as_str()),
                ),
                (
                    "ebs_volume_id",
                    spec.aws_elastic_block_store
                        .as_ref()
                        .map_or("", |e| e.volume_id.as_str()),
                ),
                (
                    "azure_disk_name",
                    spec.azure_disk
                        .as_ref()
                        .map_or("", |a| a.disk_name.as_str()),
                ),
                ("fc_wwids", &fc_wwids),
                ("fc_lun", &fc_lun),
                ("fc_target_wwns", &fc_targets),
                (
                    "iscsi_target_portal",
                    iscsi.map_or("", |i| i.target_portal.as_str()),
                ),
                ("iscsi_iqn", iscsi.map_or("", |i| i.iqn.as_str())),
                ("iscsi_lun", &iscsi_lun),
                (
                    "iscsi_initiator_name",
                    iscsi
                        .and_then(|i| i.initiator_name.as_deref())
                        .unwrap_or(""),
                ),
                ("nfs_server", nfs.map_or("", |n| n.server.as_str())),
                ("nfs_path", nfs.map_or("", |n| n.path.as_str())),
                ("csi_driver", csi.map_or("", |c| c.driver.as_str())),
                (
                    "csi_volume_handle",
                    csi.map_or("", |c| c.volume_handle.as_str()),
                ),
                ("local_path", local.map_or("", |l| l.path.as_str())),
                (
                    "local_fs",
                    local.and_then(|l| l.fs_type.as_deref()).unwrap_or(""),
                ),
                ("host_path", host.map_or("", |h| h.path.as_str())),
                (
                    "host_path_type",
                    host.and_then(|h| h.type_.as_deref()).unwrap_or(""),
                ),
                (
                    "reclaim_policy",
                    spec.persistent_volume_reclaim_policy
                        .as_deref()
                        .unwrap_or(""),
                ),
            ],
            1.0,
        );
        out.add(
            "kube_persistentvolume_capacity_bytes",
            &labels,
            spec.capacity
                .as_ref()
                .and_then(|c| c.get("storage"))
                .and_then(quantity)
                .unwrap_or(0.0),
        );
        out.add(
            "kube_persistentvolume_volume_mode",
            &[
                labels[0],
                (
                    "volumemode",
                    spec.volume_mode.as_deref().unwrap_or("Filesystem"),
                ),
            ],
            1.0,
        );
        for mode in spec.access_modes.iter().flatten() {
            out.add(
                "kube_persistentvolume_access_mode",
                &[labels[0], ("access_mode", mode)],
                1.0,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_as_kubernetes_writes_them() {
        for (text, value) in [
            ("250m", 0.25),
            ("2", 2.0),
            ("1Gi", 1_073_741_824.0),
            ("128974848", 128_974_848.0),
            ("129e6", 129e6),
            ("1.5k", 1500.0),
            ("100Mi", 104_857_600.0),
        ] {
            assert_eq!(quantity(&Quantity(text.into())), Some(value), "{text}");
        }
        assert_eq!(quantity(&Quantity("2E".into())), Some(2e18));
        assert_eq!(quantity(&Quantity("1Ei".into())), Some(1024f64.powi(6)));
        assert_eq!(quantity(&Quantity("12Q".into())), None);
    }

    #[test]
    fn resource_labels_follow_kube_state_metrics() {
        assert_eq!(resource_unit("cpu", false), Some(("cpu".into(), "core")));
        assert_eq!(
            resource_unit("ephemeral-storage", false),
            Some(("ephemeral_storage".into(), "byte"))
        );
        assert_eq!(resource_unit("pods", false), None);
        assert_eq!(
            resource_unit("pods", true),
            Some(("pods".into(), "integer"))
        );
        assert_eq!(
            resource_unit("nvidia.com/gpu", false),
            Some(("nvidia_com_gpu".into(), "integer"))
        );
        assert_eq!(
            resource_unit("hugepages-2Mi", true),
            Some(("hugepages_2Mi".into(), "byte"))
        );
        assert_eq!(resource_unit("example.kubernetes.io/x", false), None);
    }
}
