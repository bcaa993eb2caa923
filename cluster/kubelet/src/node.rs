//! The Node object a kubelet registers, and its Lease heartbeat in `kube-node-lease`.

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeStatus, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};

/// The kubelet version nodes report.
pub const KUBELET_VERSION: &str = "v1.33.0-kelson";

/// What a node offers and how it presents itself.
#[derive(Clone, Debug)]
pub struct NodeSpecification {
    /// Node name.
    pub name: String,
    /// Extra labels.
    pub labels: BTreeMap<String, String>,
    /// Capacity (cpu, memory, pods, ephemeral-storage).
    pub capacity: BTreeMap<String, Quantity>,
    /// Allocatable (capacity minus reservations).
    pub allocatable: BTreeMap<String, Quantity>,
    /// InternalIP.
    pub internal_ip: String,
    /// Runtime version, e.g. `containerd://1.6.20`.
    pub runtime_version: String,
    /// OS image.
    pub os_image: String,
    /// Kernel version.
    pub kernel_version: String,
    /// Port of the kubelet API, when the node serves one.
    pub kubelet_port: Option<i32>,
}

/// What a node reports about itself in its conditions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// Why the node is not ready (the runtime's reason); `None` when ready.
    pub not_ready: Option<String>,
    /// Available memory is under the eviction threshold.
    pub memory_pressure: bool,
    /// Available disk is under the eviction threshold.
    pub disk_pressure: bool,
    /// Available process ids are under the threshold.
    pub pid_pressure: bool,
}

fn ready_conditions(now: &Time, health: &Health) -> Vec<NodeCondition> {
    let condition = |type_: &str, status: bool, reason: &str, message: &str| NodeCondition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    };
    let pressure = |type_: &str, on: bool, yes: (&str, &str), no: (&str, &str)| {
        let (reason, message) = if on { yes } else { no };
        condition(type_, on, reason, message)
    };
    vec![
        pressure(
            "MemoryPressure",
            health.memory_pressure,
            (
                "KubeletHasInsufficientMemory",
                "kubelet has insufficient memory available",
            ),
            (
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
        ),
        pressure(
            "DiskPressure",
            health.disk_pressure,
            ("KubeletHasDiskPressure", "kubelet has disk pressure"),
            ("KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ),
        pressure(
            "PIDPressure",
            health.pid_pressure,
            (
                "KubeletHasInsufficientPID",
                "kubelet has insufficient PID available",
            ),
            (
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
        ),
        match &health.not_ready {
            None => condition(
                "Ready",
                true,
                "KubeletReady",
                "kubelet is posting ready status",
            ),
            Some(reason) => condition("Ready", false, "KubeletNotReady", reason),
        },
    ]
}

/// The Node object for a specification.
#[must_use]
pub fn node_object(spec: &NodeSpecification, now: &Time) -> Node {
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_owned(), spec.name.clone()),
        ("kubernetes.io/os".to_owned(), "linux".to_owned()),
        ("kubernetes.io/arch".to_owned(), go_arch().to_owned()),
        ("beta.kubernetes.io/os".to_owned(), "linux".to_owned()),
        ("beta.kubernetes.io/arch".to_owned(), go_arch().to_owned()),
    ]);
    labels.extend(spec.labels.clone());
    Node {
        metadata: ObjectMeta {
            name: Some(spec.name.clone()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(NodeStatus {
            capacity: Some(spec.capacity.clone()),
            allocatable: Some(spec.allocatable.clone()),
            conditions: Some(ready_conditions(now, &Health::default())),
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: spec.internal_ip.clone(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: spec.name.clone(),
                },
            ]),
            node_info: Some(NodeSystemInfo {
                architecture: go_arch().into(),
                operating_system: "linux".into(),
                kubelet_version: KUBELET_VERSION.into(),
                kube_proxy_version: KUBELET_VERSION.into(),
                container_runtime_version: spec.runtime_version.clone(),
                os_image: spec.os_image.clone(),
                kernel_version: spec.kernel_version.clone(),
                machine_id: String::new(),
                system_uuid: String::new(),
                boot_id: String::new(),
                ..NodeSystemInfo::default()
            }),
            daemon_endpoints: spec.kubelet_port.map(|port| {
                k8s_openapi::api::core::v1::NodeDaemonEndpoints {
                    kubelet_endpoint: Some(k8s_openapi::api::core::v1::DaemonEndpoint { port }),
                }
            }),
            ..NodeStatus::default()
        }),
    }
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Creates the node, or refreshes the status of an existing one.
///
/// # Errors
/// When the API refuses.
pub async fn register(client: &kube::Client, spec: &NodeSpecification) -> kube::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let now = Time(jiff::Timestamp::now());
    let node = node_object(spec, &now);
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let status = serde_json::json!({"status": node.status});
            nodes
                .patch_status(&spec.name, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .map(|_| ())
        }
        Err(error) => Err(error),
    }
}

/// Posts fresh conditions (Ready and the pressures) with heartbeat times.
///
/// # Errors
/// When the API refuses.
pub async fn post_status(client: &kube::Client, name: &str, health: &Health) -> kube::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let now = Time(jiff::Timestamp::now());
    let patch = serde_json::json!({"status": {"conditions": ready_conditions(&now, health)}});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .map(|_| ())
}

/// Renews (creating if needed) the node's Lease in `kube-node-lease`.
///
/// # Errors
/// When the API refuses.
pub async fn renew_lease(
    client: &kube::Client,
    name: &str,
    duration_seconds: i32,
) -> kube::Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let now = MicroTime(jiff::Timestamp::now());
    let patch = serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": duration_seconds, "renewTime": now},
    });
    let params = PatchParams::apply("kubelet").force();
    leases
        .patch(name, &params, &Patch::Apply(&patch))
        .await
        .map(|_| ())
}
