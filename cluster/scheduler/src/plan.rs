//! The scheduling decision as pure functions: filters say whether a pod fits a node (and why
//! not, in kube-scheduler's words), scores rank the nodes that fit. No I/O happens here; the
//! loop in `crate::scheduler` feeds these functions from its cache.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::{Node, NodeAffinity, Pod, Taint, Toleration};
use kelson_common::{node, pod, selector};
use rand::Rng;

/// Resource amounts: CPU in millicores, memory and ephemeral storage in bytes, pods in count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// Millicores.
    pub cpu: i64,
    /// Bytes.
    pub memory: i64,
    /// Bytes.
    pub ephemeral_storage: i64,
    /// Count.
    pub pods: i64,
}

impl Resources {
    fn from_map(map: &BTreeMap<String, i64>, pods: i64) -> Self {
        Self {
            cpu: map.get("cpu").copied().unwrap_or(0),
            memory: map.get("memory").copied().unwrap_or(0),
            ephemeral_storage: map.get("ephemeral-storage").copied().unwrap_or(0),
            pods,
        }
    }

    /// Adds another amount.
    pub fn add(&mut self, other: &Resources) {
        self.cpu += other.cpu;
        self.memory += other.memory;
        self.ephemeral_storage += other.ephemeral_storage;
        self.pods += other.pods;
    }

    /// Subtracts another amount.
    pub fn sub(&mut self, other: &Resources) {
        self.cpu -= other.cpu;
        self.memory -= other.memory;
        self.ephemeral_storage -= other.ephemeral_storage;
        self.pods -= other.pods;
    }
}

/// What the scheduler needs to know about a pod that is placed on a node.
#[derive(Clone, Debug, PartialEq)]
pub struct PlacedPod {
    /// `namespace/name`.
    pub key: String,
    /// Namespace.
    pub namespace: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Requests.
    pub requests: Resources,
    /// Host ports in use: (protocol, port).
    pub host_ports: Vec<(String, i32)>,
    /// The controller's uid, for spreading.
    pub owner: Option<String>,
    /// Priority.
    pub priority: i32,
}

impl PlacedPod {
    /// The summary of a pod.
    #[must_use]
    pub fn of(p: &Pod) -> Self {
        let namespace = p.metadata.namespace.clone().unwrap_or_default();
        let name = p.metadata.name.clone().unwrap_or_default();
        let host_ports = p
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|port| {
                let host = port.host_port.filter(|h| *h > 0)?;
                Some((port.protocol.clone().unwrap_or_else(|| "TCP".into()), host))
            })
            .collect();
        Self {
            key: format!("{namespace}/{name}"),
            namespace,
            labels: p.metadata.labels.clone().unwrap_or_default(),
            requests: Resources::from_map(&pod::requests(p), 1),
            host_ports,
            owner: pod::controller_of(&p.metadata).map(|o| o.uid.clone()),
            priority: p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0),
        }
    }
}

/// A node and what is placed on it.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// Node name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Taints.
    pub taints: Vec<Taint>,
    /// Cordoned.
    pub unschedulable: bool,
    /// Allocatable resources.
    pub allocatable: Resources,
    /// Sum of the requests of placed pods.
    pub requested: Resources,
    /// Placed pods by key.
    pub pods: BTreeMap<String, PlacedPod>,
}

impl NodeInfo {
    /// The scheduling view of a node (no pods yet).
    #[must_use]
    pub fn of(n: &Node) -> Self {
        let allocatable = n
            .status
            .as_ref()
            .and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()));
        let amount = |name: &str| {
            allocatable.and_then(|a| a.get(name)).map_or(0, |q| {
                if name == "cpu" {
                    kelson_common::quantity::cpu_millis(q)
                } else {
                    kelson_common::quantity::units(q)
                }
            })
        };
        let mut taints = n
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        // a node that is not Ready carries the not-ready taint even before the lifecycle
        // controller adds it (Kubernetes' TaintNodesByCondition)
        if !node::is_ready(n)
            && !taints
                .iter()
                .any(|t| t.key.starts_with("node.kubernetes.io/"))
        {
            taints.push(Taint {
                key: "node.kubernetes.io/not-ready".into(),
                effect: "NoSchedule".into(),
                value: None,
                time_added: None,
            });
        }
        Self {
            name: n.metadata.name.clone().unwrap_or_default(),
            labels: n.metadata.labels.clone().unwrap_or_default(),
            taints,
            unschedulable: n
                .spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false),
            allocatable: Resources {
                cpu: amount("cpu"),
                memory: amount("memory"),
                ephemeral_storage: amount("ephemeral-storage"),
                pods: amount("pods"),
            },
            requested: Resources::default(),
            pods: BTreeMap::new(),
        }
    }

    /// Places a pod (idempotent by key).
    pub fn add_pod(&mut self, placed: PlacedPod) {
        if let Some(old) = self.pods.insert(placed.key.clone(), placed.clone()) {
            self.requested.sub(&old.requests);
        }
        self.requested.add(&placed.requests);
    }

    /// Removes a pod.
    pub fn remove_pod(&mut self, key: &str) {
        if let Some(old) = self.pods.remove(key) {
            self.requested.sub(&old.requests);
        }
    }
}

/// What a pod asks of a node.
#[derive(Clone, Debug)]
pub struct PodRequest {
    /// The pod as placed.
    pub placed: PlacedPod,
    /// `spec.nodeName` (when preset, only that node fits).
    pub node_name: Option<String>,
    /// `spec.nodeSelector`.
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations.
    pub tolerations: Vec<Toleration>,
    /// The pod (for affinity terms).
    pub pod: Pod,
    /// What the pod's PersistentVolumeClaims require of a node.
    pub volumes: VolumeFit,
}

/// What a pod's claims require of a node (Kubernetes' VolumeBinding and VolumeRestrictions).
#[derive(Clone, Debug, Default, PartialEq)]
pub enum VolumeFit {
    /// Any node (no claims, or claims bound to volumes usable everywhere).
    #[default]
    Any,
    /// Nodes matching every one of these (node affinities of bound volumes).
    Nodes(Vec<k8s_openapi::api::core::v1::NodeSelector>),
    /// No node, for this reason (a missing claim, an unbound immediate claim).
    Never(Reason),
}

impl PodRequest {
    /// The request of a pod.
    #[must_use]
    pub fn of(p: &Pod) -> Self {
        let spec = p.spec.clone().unwrap_or_default();
        Self {
            placed: PlacedPod::of(p),
            node_name: spec.node_name.clone().filter(|n| !n.is_empty()),
            node_selector: spec.node_selector.clone().unwrap_or_default(),
            tolerations: spec.tolerations.unwrap_or_default(),
            pod: p.clone(),
            volumes: VolumeFit::Any,
        }
    }
}

/// The claims, volumes and storage classes the scheduler knows, by name.
#[derive(Default)]
pub struct Volumes {
    /// Claims by `namespace/name`.
    pub claims: HashMap<String, k8s_openapi::api::core::v1::PersistentVolumeClaim>,
    /// Volumes by name.
    pub volumes: HashMap<String, k8s_openapi::api::core::v1::PersistentVolume>,
    /// `volumeBindingMode` of each StorageClass.
    pub binding_modes: HashMap<String, String>,
}

impl Volumes {
    /// What the pod's claims require of a node, and the claims that wait for their first
    /// consumer's node (to be told it once the pod has one).
    #[must_use]
    pub fn fit(&self, p: &Pod) -> (VolumeFit, Vec<String>) {
        let namespace = p.metadata.namespace.as_deref().unwrap_or_default();
        let mut selectors = Vec::new();
        let mut waiting = Vec::new();
        let claims = p
            .spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .filter_map(|v| v.persistent_volume_claim.as_ref());
        for source in claims {
            let key = format!("{namespace}/{}", source.claim_name);
            let Some(claim) = self.claims.get(&key) else {
                return (
                    VolumeFit::Never(format!(
                        "persistentvolumeclaim \"{}\" not found",
                        source.claim_name
                    )),
                    Vec::new(),
                );
            };
            if claim.metadata.deletion_timestamp.is_some() {
                return (
                    VolumeFit::Never(format!(
                        "persistentvolumeclaim \"{}\" is being deleted",
                        source.claim_name
                    )),
                    Vec::new(),
                );
            }
            let bound = claim
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.as_deref())
                .filter(|n| !n.is_empty());
            match bound {
                Some(name) => {
                    let required = self
                        .volumes
                        .get(name)
                        .and_then(|v| v.spec.as_ref()?.node_affinity.as_ref()?.required.clone());
                    selectors.extend(required);
                }
                None => {
                    let class = claim
                        .spec
                        .as_ref()
                        .and_then(|s| s.storage_class_name.as_deref())
                        .unwrap_or_default();
                    let mode = self.binding_modes.get(class).map(String::as_str);
                    if mode == Some("WaitForFirstConsumer") {
                        if !claim
                            .metadata
                            .annotations
                            .as_ref()
                            .is_some_and(|a| a.contains_key("volume.kubernetes.io/selected-node"))
                        {
                            waiting.push(source.claim_name.clone());
                        }
                    } else {
                        return (
                            VolumeFit::Never(
                                "pod has unbound immediate PersistentVolumeClaims".into(),
                            ),
                            Vec::new(),
                        );
                    }
                }
            }
        }
        let fit = if selectors.is_empty() {
            VolumeFit::Any
        } else {
            VolumeFit::Nodes(selectors)
        };
        (fit, waiting)
    }
}

/// Why a node does not fit, in kube-scheduler's words (used as a count key).
pub type Reason = String;

/// Checks every filter; the first failing one explains the misfit.
///
/// # Errors
/// The reason the node does not fit.
pub fn filter(request: &PodRequest, node: &NodeInfo) -> Result<(), Reason> {
    if let Some(name) = &request.node_name
        && *name != node.name
    {
        return Err("node(s) didn't match the requested node name".into());
    }
    if node.unschedulable
        && !request.tolerations.iter().any(|t| {
            node::tolerates(
                t,
                &Taint {
                    key: "node.kubernetes.io/unschedulable".into(),
                    effect: "NoSchedule".into(),
                    value: None,
                    time_added: None,
                },
            )
        })
    {
        return Err("node(s) were unschedulable".into());
    }
    if let Some(taint) = node
        .taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .find(|t| !node::tolerated(&request.tolerations, t))
    {
        return Err(format!(
            "node(s) had untolerated taint {{{}: {}}}",
            taint.key,
            taint.value.as_deref().unwrap_or("")
        ));
    }
    if !node_affinity_fits(request, node) {
        return Err("node(s) didn't match Pod's node affinity/selector".into());
    }
    match &request.volumes {
        VolumeFit::Any => {}
        VolumeFit::Never(reason) => return Err(reason.clone()),
        VolumeFit::Nodes(selectors) => {
            let fits = selectors.iter().all(|required| {
                required
                    .node_selector_terms
                    .iter()
                    .any(|term| selector::node_term_matches(term, &node.labels, &node.name))
            });
            if !fits {
                return Err("node(s) had volume node affinity conflict".into());
            }
        }
    }
    let requested = &request.placed.requests;
    let free = |allocatable: i64, used: i64| allocatable - used;
    if requested.pods + node.requested.pods > node.allocatable.pods {
        return Err("Too many pods".into());
    }
    if requested.cpu > 0 && requested.cpu > free(node.allocatable.cpu, node.requested.cpu) {
        return Err("Insufficient cpu".into());
    }
    if requested.memory > 0
        && requested.memory > free(node.allocatable.memory, node.requested.memory)
    {
        return Err("Insufficient memory".into());
    }
    if requested.ephemeral_storage > 0
        && requested.ephemeral_storage
            > free(
                node.allocatable.ephemeral_storage,
                node.requested.ephemeral_storage,
            )
    {
        return Err("Insufficient ephemeral-storage".into());
    }
    if !request.placed.host_ports.is_empty() {
        let used: BTreeSet<&(String, i32)> = node
            .pods
            .values()
            .flat_map(|p| p.host_ports.iter())
            .collect();
        if request.placed.host_ports.iter().any(|p| used.contains(p)) {
            return Err("node(s) didn't have free ports for the requested pod ports".into());
        }
    }
    inter_pod_affinity_fits(request, node)?;
    Ok(())
}

fn node_affinity(pod: &Pod) -> Option<&NodeAffinity> {
    pod.spec.as_ref()?.affinity.as_ref()?.node_affinity.as_ref()
}

fn node_affinity_fits(request: &PodRequest, node: &NodeInfo) -> bool {
    if request
        .node_selector
        .iter()
        .any(|(k, v)| node.labels.get(k) != Some(v))
    {
        return false;
    }
    let required = node_affinity(&request.pod).and_then(|a| {
        a.required_during_scheduling_ignored_during_execution
            .as_ref()
    });
    match required {
        Some(selector) => selector
            .node_selector_terms
            .iter()
            .any(|term| selector::node_term_matches(term, &node.labels, &node.name)),
        None => true,
    }
}

/// Required pod affinity and anti-affinity on the hostname topology (each node is its own
/// domain), for pods in the term's namespaces (the pod's own by default).
fn inter_pod_affinity_fits(request: &PodRequest, node: &NodeInfo) -> Result<(), Reason> {
    let Some(affinity) = request.pod.spec.as_ref().and_then(|s| s.affinity.as_ref()) else {
        return Ok(());
    };
    let matching = |term: &k8s_openapi::api::core::v1::PodAffinityTerm| {
        let namespaces = term
            .namespaces
            .clone()
            .unwrap_or_else(|| vec![request.placed.namespace.clone()]);
        node.pods.values().any(|p| {
            namespaces.contains(&p.namespace)
                && term
                    .label_selector
                    .as_ref()
                    .is_some_and(|s| selector::matches(s, &p.labels))
        })
    };
    let hostname = |term: &k8s_openapi::api::core::v1::PodAffinityTerm| {
        term.topology_key == "kubernetes.io/hostname"
    };
    if let Some(anti) = affinity.pod_anti_affinity.as_ref()
        && anti
            .required_during_scheduling_ignored_during_execution
            .iter()
            .flatten()
            .filter(|t| hostname(t))
            .any(matching)
    {
        return Err("node(s) didn't match pod anti-affinity rules".into());
    }
    if let Some(affinity) = affinity.pod_affinity.as_ref()
        && !affinity
            .required_during_scheduling_ignored_during_execution
            .iter()
            .flatten()
            .filter(|t| hostname(t))
            .all(matching)
    {
        return Err("node(s) didn't match pod affinity rules".into());
    }
    Ok(())
}

/// The score of a node that fits (higher is better), kube-scheduler's default plugins:
/// least allocated, balanced allocation, preferred node affinity, PreferNoSchedule taints and
/// spreading of one owner's pods.
#[must_use]
pub fn score(request: &PodRequest, node: &NodeInfo) -> i64 {
    let fraction = |requested: i64, allocatable: i64| {
        if allocatable <= 0 {
            1.0
        } else {
            (requested as f64 / allocatable as f64).min(1.0)
        }
    };
    let cpu = fraction(
        node.requested.cpu + request.placed.requests.cpu,
        node.allocatable.cpu,
    );
    let memory = fraction(
        node.requested.memory + request.placed.requests.memory,
        node.allocatable.memory,
    );
    let least_allocated = ((1.0 - cpu) + (1.0 - memory)) / 2.0 * 100.0;
    let balanced = (1.0 - (cpu - memory).abs()) * 100.0;
    let preferred = node_affinity(&request.pod)
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map_or(0, |terms| {
            terms
                .iter()
                .filter(|t| selector::node_term_matches(&t.preference, &node.labels, &node.name))
                .map(|t| i64::from(t.weight))
                .sum::<i64>()
        });
    let prefer_no_schedule = node
        .taints
        .iter()
        .filter(|t| t.effect == "PreferNoSchedule" && !node::tolerated(&request.tolerations, t))
        .count() as i64;
    let siblings = request.placed.owner.as_ref().map_or(0, |owner| {
        node.pods
            .values()
            .filter(|p| p.owner.as_ref() == Some(owner))
            .count() as i64
    });
    least_allocated as i64 + balanced as i64 + preferred - prefer_no_schedule * 100 - siblings * 20
}

/// Why no node fits: the counts of reasons.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unschedulable {
    /// Number of nodes considered.
    pub nodes: usize,
    /// Reason → number of nodes.
    pub reasons: BTreeMap<Reason, usize>,
}

impl std::fmt::Display for Unschedulable {
    /// kube-scheduler's form: `0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had ...`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut reasons: Vec<(&Reason, &usize)> = self.reasons.iter().collect();
        reasons.sort_by(|a, b| a.0.cmp(b.0));
        let parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
        if parts.is_empty() {
            write!(f, "0/{} nodes are available.", self.nodes)
        } else {
            write!(
                f,
                "0/{} nodes are available: {}.",
                self.nodes,
                parts.join(", ")
            )
        }
    }
}

/// Picks a node for the pod among `nodes`, breaking ties at random.
///
/// # Errors
/// When no node fits, with the reasons.
pub fn select<'a, R: Rng>(
    request: &PodRequest,
    nodes: impl IntoIterator<Item = &'a NodeInfo>,
    rng: &mut R,
) -> Result<String, Unschedulable> {
    select_among(request, nodes, usize::MAX, rng)
}

/// How many feasible nodes are enough to pick from in a cluster of `nodes` (kube-scheduler's
/// adaptive `percentageOfNodesToScore`: 50% minus one point per 125 nodes, at least 5%, and
/// never fewer than 100 nodes).
#[must_use]
pub fn feasible_nodes_to_find(nodes: usize) -> usize {
    const MIN: usize = 100;
    if nodes < MIN {
        return nodes;
    }
    let percent = 50usize.saturating_sub(nodes / 125).max(5);
    (nodes * percent / 100).max(MIN)
}

/// Like [`select`], but stops looking once `enough` nodes fit (callers rotate where the search
/// starts, so every node gets its turn).
///
/// # Errors
/// When no node fits, with the reasons.
pub fn select_among<'a, R: Rng>(
    request: &PodRequest,
    nodes: impl IntoIterator<Item = &'a NodeInfo>,
    enough: usize,
    rng: &mut R,
) -> Result<String, Unschedulable> {
    let mut best: Vec<&NodeInfo> = Vec::new();
    let mut best_score = i64::MIN;
    let mut reasons: BTreeMap<Reason, usize> = BTreeMap::new();
    let mut count = 0;
    let mut feasible = 0;
    for node in nodes {
        if feasible >= enough {
            break;
        }
        count += 1;
        match filter(request, node) {
            Err(reason) => *reasons.entry(reason).or_default() += 1,
            Ok(()) => {
                feasible += 1;
                let score = score(request, node);
                if score > best_score {
                    best_score = score;
                    best.clear();
                }
                if score == best_score {
                    best.push(node);
                }
            }
        }
    }
    if best.is_empty() {
        return Err(Unschedulable {
            nodes: count,
            reasons,
        });
    }
    Ok(best[rng.random_range(0..best.len())].name.clone())
}

/// Where a pod that fits nowhere could run by preempting lower-priority pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preemption {
    /// The node.
    pub node: String,
    /// Keys of the pods to remove.
    pub victims: Vec<String>,
}

/// kube-scheduler's preemption (`DefaultPreemption`): on each node, remove every pod of lower
/// priority than the preemptor; if it then fits, give back as many victims as still let it fit
/// (highest priority first), and pick the node whose victims have the lowest highest priority,
/// then the fewest victims, then the lowest sum of priorities. Pods with
/// `preemptionPolicy: Never` preempt nothing.
#[must_use]
pub fn preempt<'a>(
    request: &PodRequest,
    nodes: impl IntoIterator<Item = &'a NodeInfo>,
) -> Option<Preemption> {
    let spec = request.pod.spec.as_ref();
    if spec.and_then(|s| s.preemption_policy.as_deref()) == Some("Never") {
        return None;
    }
    let priority = request.placed.priority;
    let mut best: Option<((i32, usize, i64), Preemption)> = None;
    for node in nodes {
        let mut lower: Vec<&PlacedPod> = node
            .pods
            .values()
            .filter(|p| p.priority < priority)
            .collect();
        if lower.is_empty() {
            continue;
        }
        let mut trial = node.clone();
        for victim in &lower {
            trial.remove_pod(&victim.key);
        }
        if filter(request, &trial).is_err() {
            continue;
        }
        // reprieve: highest priority first, keep whoever still leaves room
        lower.sort_by_key(|p| (std::cmp::Reverse(p.priority), p.key.clone()));
        let mut victims = Vec::new();
        for candidate in lower {
            trial.add_pod(candidate.clone());
            if filter(request, &trial).is_err() {
                trial.remove_pod(&candidate.key);
                victims.push(candidate);
            }
        }
        let rank = (
            victims.iter().map(|v| v.priority).max().unwrap_or(i32::MIN),
            victims.len(),
            victims.iter().map(|v| i64::from(v.priority)).sum::<i64>(),
        );
        if best.as_ref().is_none_or(|(r, _)| rank < *r) {
            best = Some((
                rank,
                Preemption {
                    node: node.name.clone(),
                    victims: victims.iter().map(|v| v.key.clone()).collect(),
                },
            ));
        }
    }
    best.map(|(_, preemption)| preemption)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn node(name: &str, cpu: &str, extra: serde_json::Value) -> NodeInfo {
        let mut n = json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {},
            "status": {"allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]}
        });
        merge(&mut n, extra);
        NodeInfo::of(&serde_json::from_value(n).unwrap())
    }

    fn merge(target: &mut serde_json::Value, patch: serde_json::Value) {
        if let (Some(t), serde_json::Value::Object(p)) = (target.as_object_mut(), patch) {
            for (k, v) in p {
                match t.get_mut(&k) {
                    Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                    _ => {
                        t.insert(k, v);
                    }
                }
            }
        }
    }

    fn request(spec: serde_json::Value) -> PodRequest {
        let mut p = json!({"metadata": {"name": "p", "namespace": "default", "labels": {"app": "web"}},
                           "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}}]}});
        merge(&mut p, json!({"spec": spec}));
        PodRequest::of(&serde_json::from_value(p).unwrap())
    }

    #[test]
    fn filters_explain_misfits_like_kube_scheduler() {
        let small = node("small", "100m", json!({}));
        let tainted = node(
            "tainted",
            "4",
            json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}),
        );
        let cordoned = node("cordoned", "4", json!({"spec": {"unschedulable": true}}));
        let not_ready = node(
            "not-ready",
            "4",
            json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
        );
        let nodes = [small, tainted, cordoned, not_ready];
        let error = select(&request(json!({})), &nodes, &mut rand::rng()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "0/4 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {dedicated: gpu}, 1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }, 1 node(s) were unschedulable."
        );
        let tolerating = request(
            json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}),
        );
        assert_eq!(
            select(&tolerating, &nodes, &mut rand::rng()).unwrap(),
            "tainted"
        );
    }

    #[test]
    fn preemption_takes_the_fewest_least_important_pods() {
        let placed = |key: &str, cpu: i64, priority: i32| PlacedPod {
            key: key.into(),
            namespace: "d".into(),
            labels: BTreeMap::new(),
            requests: Resources {
                cpu,
                pods: 1,
                ..Resources::default()
            },
            host_ports: vec![],
            owner: None,
            priority,
        };
        let mut a = node("a", "4", json!({}));
        a.add_pod(placed("d/a-low", 2000, 10));
        a.add_pod(placed("d/a-mid", 2000, 100));
        let mut b = node("b", "4", json!({}));
        b.add_pod(placed("d/b-low1", 1000, 10));
        b.add_pod(placed("d/b-low2", 1000, 10));
        b.add_pod(placed("d/b-high", 2000, 1000));
        let nodes = [a, b];
        let mut pod = request(
            json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "2"}}}]}),
        );
        pod.placed.priority = 500;
        assert!(
            select(&pod, &nodes, &mut rand::rng()).is_err(),
            "nothing fits as is"
        );
        // a: one victim of priority 10; b: two victims of priority 10 — a wins
        assert_eq!(
            preempt(&pod, &nodes),
            Some(Preemption {
                node: "a".into(),
                victims: vec!["d/a-low".into()]
            })
        );
        pod.placed.priority = 10;
        assert_eq!(
            preempt(&pod, &nodes),
            None,
            "only lower priorities are taken"
        );
        let mut never = pod;
        never.placed.priority = 500;
        never.pod.spec.as_mut().unwrap().preemption_policy = Some("Never".into());
        assert_eq!(preempt(&never, &nodes), None);
    }

    #[test]
    fn claims_decide_where_a_pod_may_go() {
        let mut volumes = Volumes::default();
        let claim = |name: &str, class: &str, bound: Option<&str>| {
            serde_json::from_value::<k8s_openapi::api::core::v1::PersistentVolumeClaim>(json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"storageClassName": class, "volumeName": bound}
            }))
            .unwrap()
        };
        volumes.claims.insert(
            "default/pinned".into(),
            claim("pinned", "local", Some("pv-a")),
        );
        volumes
            .claims
            .insert("default/later".into(), claim("later", "local", None));
        volumes
            .claims
            .insert("default/now".into(), claim("now", "", None));
        volumes
            .binding_modes
            .insert("local".into(), "WaitForFirstConsumer".into());
        volumes.volumes.insert(
            "pv-a".into(),
            serde_json::from_value(json!({"metadata": {"name": "pv-a"}, "spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["a"]}]}]}}}}))
            .unwrap(),
        );
        let pod_with = |claims: &[&str]| {
            let volumes: Vec<serde_json::Value> = claims
                .iter()
                .map(|c| json!({"name": c, "persistentVolumeClaim": {"claimName": c}}))
                .collect();
            let mut p: Pod =
                serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "default"},
                "spec": {"containers": [], "volumes": volumes}}))
                .unwrap();
            p.metadata.namespace = Some("default".into());
            p
        };
        let a = node(
            "a",
            "4",
            json!({"metadata": {"labels": {"kubernetes.io/hostname": "a"}}}),
        );
        let b = node(
            "b",
            "4",
            json!({"metadata": {"labels": {"kubernetes.io/hostname": "b"}}}),
        );
        let nodes = [a, b];

        let (fit, waiting) = volumes.fit(&pod_with(&["pinned", "later"]));
        assert_eq!(waiting, ["later"]);
        let mut request = PodRequest::of(&pod_with(&["pinned", "later"]));
        request.volumes = fit;
        assert_eq!(
            select(&request, &nodes, &mut rand::rng()).unwrap(),
            "a",
            "the bound volume lives on a"
        );

        let (fit, _) = volumes.fit(&pod_with(&["now"]));
        request.volumes = fit;
        assert_eq!(
            select(&request, &nodes, &mut rand::rng())
                .unwrap_err()
                .to_string(),
            "0/2 nodes are available: 2 pod has unbound immediate PersistentVolumeClaims."
        );
        let (fit, _) = volumes.fit(&pod_with(&["missing"]));
        assert_eq!(
            fit,
            VolumeFit::Never("persistentvolumeclaim \"missing\" not found".into())
        );
    }

    #[test]
    fn selectors_affinity_and_ports() {
        let a = node(
            "a",
            "4",
            json!({"metadata": {"labels": {"disk": "ssd", "cores": "8"}}}),
        );
        let b = node(
            "b",
            "4",
            json!({"metadata": {"labels": {"disk": "hdd", "cores": "2"}}}),
        );
        let nodes = [a.clone(), b];
        assert_eq!(
            select(
                &request(json!({"nodeSelector": {"disk": "ssd"}})),
                &nodes,
                &mut rand::rng()
            )
            .unwrap(),
            "a"
        );
        let affinity = json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "cores", "operator": "Lt", "values": ["4"]}]}]}}}});
        assert_eq!(
            select(&request(affinity), &nodes, &mut rand::rng()).unwrap(),
            "b"
        );
        assert_eq!(
            select(&request(json!({"nodeName": "b"})), &nodes, &mut rand::rng()).unwrap(),
            "b"
        );

        let mut busy = a;
        busy.add_pod(PlacedPod {
            key: "x/y".into(),
            namespace: "x".into(),
            labels: BTreeMap::new(),
            requests: Resources::default(),
            host_ports: vec![("TCP".into(), 80)],
            owner: None,
            priority: 0,
        });
        let wants_port = request(
            json!({"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 80}]}]}),
        );
        assert_eq!(
            filter(&wants_port, &busy).unwrap_err(),
            "node(s) didn't have free ports for the requested pod ports"
        );
    }

    #[test]
    fn anti_affinity_spreads_and_resources_are_accounted() {
        let mut a = node("a", "1", json!({}));
        let b = node("b", "1", json!({}));
        let first = request(json!({}));
        a.add_pod(first.placed.clone());
        let anti = request(
            json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}}),
        );
        let nodes = [a.clone(), b];
        for _ in 0..20 {
            assert_eq!(select(&anti, &nodes, &mut rand::rng()).unwrap(), "b");
        }
        let mut second = first;
        second.placed.key = "default/second".into();
        a.add_pod(second.placed);
        assert_eq!(
            filter(&request(json!({})), &a).unwrap_err(),
            "Insufficient cpu"
        );
        a.remove_pod("default/second");
        assert!(filter(&request(json!({})), &a).is_ok());
    }

    #[test]
    fn large_clusters_sample_nodes_like_kube_scheduler() {
        assert_eq!(feasible_nodes_to_find(50), 50);
        assert_eq!(feasible_nodes_to_find(1000), 420);
        assert_eq!(feasible_nodes_to_find(5000), 500);
        assert_eq!(feasible_nodes_to_find(200), 100);
    }

    #[test]
    fn least_allocated_prefers_emptier_nodes() {
        let mut busy = node("busy", "4", json!({}));
        let idle = node("idle", "4", json!({}));
        let mut filler = request(json!({}));
        filler.placed.key = "x/filler".into();
        filler.placed.requests.cpu = 3000;
        busy.add_pod(filler.placed);
        for _ in 0..20 {
            assert_eq!(
                select(&request(json!({})), [&busy, &idle], &mut rand::rng()).unwrap(),
                "idle"
            );
        }
    }
}
