//! Eviction, as the kubelet's eviction manager does it:
//!
//! - **Local storage limits**, every 30 s (walking volumes and logs costs) and every 10 s
//!   under disk pressure: a pod whose disk-backed `emptyDir` outgrows its `sizeLimit`, or
//!   whose containers' writable layers and logs outgrow their `ephemeral-storage` limits (each,
//!   or summed for the pod), is evicted with the kubelet's message.
//! - **Node pressure**, every 10 s: when `memory.available` falls under 100Mi,
//!   `nodefs.available` under 10% or free pids under 10% (the node's pressure conditions), one
//!   pod per round is evicted, then none for 30 s while it goes —
//!   for memory and disk, pods using more than they requested first, then lower priority, then
//!   the largest use above the request (so BestEffort pods, which request nothing, go first);
//!   for pids, lower priority, then the most processes. Critical pods (static and mirror pods,
//!   priority of `system-cluster-critical` and above) are never evicted, for any reason.
//!   Without the runtime's statistics a round evicts nobody.
//!
//! The evicted pod is marked `Failed` with reason `Evicted`; its worker then stops it and
//! removes its volumes (so emptyDirs free their disk), and its controller replaces it. Unlike the kubelet, no node-level reclaim (image garbage collection)
//! is tried before evicting under disk pressure: images here come from local imports, with
//! no registry to pull them back from.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kelson_common::quantity;
use kube::api::{Api, Patch, PatchParams};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::host;
use crate::pods::PodContext;
use crate::pods::spec::{NODE_LABEL, POD_UID_LABEL, PodKey};

/// Priority from which pods are critical (`system-cluster-critical`).
const CRITICAL_PRIORITY: i32 = 2_000_000_000;

/// A resource whose shortage makes the node evict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// `memory.available`.
    Memory,
    /// `nodefs.available`.
    NodeFs,
    /// `pid.available`.
    Pids,
}

impl Signal {
    /// The signal's name, as in `kubelet_evictions{eviction_signal}`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory.available",
            Self::NodeFs => "nodefs.available",
            Self::Pids => "pid.available",
        }
    }

    /// The resource named in the eviction message and requested by containers.
    fn resource(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::NodeFs => "ephemeral-storage",
            Self::Pids => "pids",
        }
    }
}

/// What a pod uses, as the eviction manager measures it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodUsage {
    /// Working set, bytes.
    pub memory: u64,
    /// Disk: writable layers, logs and disk-backed volumes, bytes.
    pub disk: u64,
    /// Processes.
    pub processes: u64,
    /// Disk used by each disk-backed emptyDir, by volume name.
    pub empty_dirs: BTreeMap<String, u64>,
    /// Writable layer plus logs of each container, by name.
    pub containers: BTreeMap<String, u64>,
}

impl PodUsage {
    fn of(&self, signal: Signal) -> u64 {
        match signal {
            Signal::Memory => self.memory,
            Signal::NodeFs => self.disk,
            Signal::Pids => self.processes,
        }
    }
}

/// What a pod's containers request of `resource`, summed.
#[must_use]
pub fn request(pod: &Pod, resource: &str) -> u64 {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .filter_map(|c| c.resources.as_ref()?.requests.as_ref()?.get(resource))
        .map(|q| u64::try_from(quantity::units(q)).unwrap_or(0))
        .sum()
}

/// Static and mirror pods, and those of `system-cluster-critical` priority and above.
#[must_use]
pub fn is_critical(pod: &Pod) -> bool {
    let annotations = pod.metadata.annotations.as_ref();
    let static_pod = annotations.is_some_and(|a| {
        a.contains_key(crate::static_pods::MIRROR_ANNOTATION)
            || a.get(crate::static_pods::SOURCE_ANNOTATION)
                .is_some_and(|s| s != "api")
    });
    static_pod
        || pod
            .spec
            .as_ref()
            .and_then(|s| s.priority)
            .is_some_and(|p| p >= CRITICAL_PRIORITY)
}

/// Orders candidate pods (with their use of `signal`'s resource) for eviction, first to go
/// first; critical pods are left out.
#[must_use]
pub fn rank_for(signal: Signal, candidates: &[(Pod, u64)]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..candidates.len())
        .filter(|&i| !is_critical(&candidates[i].0))
        .collect();
    order.sort_by_key(|&i| {
        let (pod, usage) = &candidates[i];
        let priority = pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
        match signal {
            Signal::Pids => (Reverse(false), priority, Reverse(*usage)),
            Signal::Memory | Signal::NodeFs => {
                let request = request(pod, signal.resource());
                (
                    Reverse(*usage > request),
                    priority,
                    Reverse(usage.saturating_sub(request)),
                )
            }
        }
    });
    order
}

/// Why `pod` must go for outgrowing its local storage limits, in the kubelet's words.
#[must_use]
pub fn storage_violation(pod: &Pod, usage: &PodUsage) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    for volume in spec.volumes.iter().flatten() {
        let Some(empty_dir) = &volume.empty_dir else {
            continue;
        };
        if empty_dir.medium.as_deref() == Some("Memory") {
            // a tmpfs of that size: the kernel holds the limit
            continue;
        }
        if let Some(limit) = &empty_dir.size_limit
            && let Some(used) = usage.empty_dirs.get(&volume.name)
            && quantity::units(limit) > 0
            && *used > u64::try_from(quantity::units(limit)).unwrap_or(u64::MAX)
        {
            return Some(format!(
                "Usage of EmptyDir volume {:?} exceeds the limit {:?}. ",
                volume.name, limit.0
            ));
        }
    }
    // the pod's limit: the sum of its containers' (those that have one), as the kubelet sums
    let mut total_limit = 0u64;
    for container in &spec.containers {
        let limit = container
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get("ephemeral-storage"));
        let Some(limit) = limit else { continue };
        let bytes = u64::try_from(quantity::units(limit)).unwrap_or(u64::MAX);
        if bytes == 0 {
            continue;
        }
        total_limit = total_limit.saturating_add(bytes);
        if usage.containers.get(&container.name).copied().unwrap_or(0) > bytes {
            return Some(format!(
                "Container {} exceeded its local ephemeral storage limit {:?}. ",
                container.name, limit.0
            ));
        }
    }
    if total_limit > 0 && usage.disk > total_limit {
        return Some(format!(
            "Pod ephemeral local storage usage exceeds the total limit of containers {}. ",
            binary_quantity(total_limit)
        ));
    }
    None
}

/// Bytes as a quantity with the largest binary suffix that divides them (`15Mi`).
fn binary_quantity(bytes: u64) -> String {
    for (suffix, unit) in [
        ("Ti", 1u64 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ] {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// Bytes a directory tree takes on its own file system (as `du -sx`): files, not what is
/// mounted under it.
#[must_use]
pub fn disk_usage(root: &Path) -> u64 {
    disk_usage_without(root, None)
}

/// [`disk_usage`] leaving out the tree at `skip` (already counted elsewhere).
fn disk_usage_without(root: &Path, skip: Option<&Path>) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(top) = std::fs::symlink_metadata(root) else {
        return 0;
    };
    let device = top.dev();
    let mut total = top.blocks() * 512;
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if metadata.dev() != device || skip.is_some_and(|skip| entry.path() == skip) {
                continue;
            }
            total += metadata.blocks() * 512;
            if metadata.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    total
}

/// Storage limits are checked every this many rounds (walking volumes and logs costs), and
/// every round under disk pressure.
const STORAGE_PERIOD: u32 = 3;
/// After a node-pressure eviction, the evicted pod gets this long to go before another.
const EVICTION_PAUSE: Duration = Duration::from_secs(30);

/// Checks every 10 s: node pressure (one pod per round), and storage limits every 30 s.
pub async fn run(ctx: Arc<PodContext>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    let mut rounds: u32 = 0;
    let mut last_eviction: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        rounds = rounds.wrapping_add(1);
        let storage = rounds.is_multiple_of(STORAGE_PERIOD);
        let paused = last_eviction.is_some_and(|at| at.elapsed() < EVICTION_PAUSE);
        match round(&ctx, storage, paused).await {
            Ok(true) => last_eviction = Some(std::time::Instant::now()),
            Ok(false) => {}
            Err(error) => warn!(%error, "eviction failed"),
        }
    }
}

/// One round; returns whether a pod was evicted for node pressure.
async fn round(ctx: &PodContext, storage: bool, paused: bool) -> kube::Result<bool> {
    let readings = host::readings();
    let (memory, disk, pids) = readings.pressures();
    let pressure = (memory || disk || pids) && !paused;
    if !(storage || disk || pressure) {
        return Ok(false);
    }
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let pods = api
        .list(&kube::api::ListParams::default().fields(&format!("spec.nodeName={}", ctx.node.name)))
        .await?;
    // critical pods are never evicted, whatever the reason (the kubelet refuses them too)
    let pods: Vec<Pod> = pods
        .items
        .into_iter()
        .filter(|p| {
            !kelson_common::pod::is_terminal(p)
                && p.metadata.deletion_timestamp.is_none()
                && !is_critical(p)
        })
        .collect();
    let Some(usages) = measure(ctx, &pods, disk).await else {
        // without the runtime's statistics nobody's usage is known: no guessing
        return Ok(false);
    };
    let mut evicted = false;
    for (pod, usage) in pods.iter().zip(&usages) {
        if let Some(message) = storage_violation(pod, usage) {
            evict(ctx, pod, "ephemeralpodfs.limit", message).await?;
            evicted = true;
        }
    }
    if evicted || !pressure {
        return Ok(false);
    }
    let (signal, available, threshold) = if memory {
        (
            Signal::Memory,
            readings.memory_available,
            "100Mi".to_owned(),
        )
    } else if disk {
        (Signal::NodeFs, readings.disk_available, "10%".to_owned())
    } else {
        (
            Signal::Pids,
            readings.pid_max.saturating_sub(readings.processes),
            "10%".to_owned(),
        )
    };
    let candidates: Vec<(Pod, u64)> = pods
        .iter()
        .zip(&usages)
        .map(|(pod, usage)| (pod.clone(), usage.of(signal)))
        .collect();
    let Some(&victim) = rank_for(signal, &candidates).first() else {
        return Ok(false);
    };
    let (pod, usage) = &candidates[victim];
    let (available, used) = match signal {
        Signal::Pids => (available.to_string(), usage.to_string()),
        _ => (
            format!("{}Ki", available / 1024),
            format!("{}Ki", usage / 1024),
        ),
    };
    let message = format!(
        "The node was low on resource: {}. Threshold quantity: {threshold}, available: {available}. Pod used {used}.",
        signal.resource()
    );
    evict(ctx, pod, signal.name(), message).await?;
    Ok(true)
}

fn has_storage_limits(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|spec| {
        spec.volumes.iter().flatten().any(|v| {
            v.empty_dir
                .as_ref()
                .is_some_and(|e| e.size_limit.is_some() && e.medium.as_deref() != Some("Memory"))
        }) || spec.containers.iter().any(|c| {
            c.resources
                .as_ref()
                .and_then(|r| r.limits.as_ref())
                .is_some_and(|l| l.contains_key("ephemeral-storage"))
        })
    })
}

/// What each of `pods` uses (`None` when the runtime gives no statistics); disk usage of pods
/// with storage limits, and of every pod under disk pressure (walking directories costs).
async fn measure(ctx: &PodContext, pods: &[Pod], disk: bool) -> Option<Vec<PodUsage>> {
    let labels = [(NODE_LABEL, ctx.node.name.as_str())];
    let stats = match ctx.cri.list_pod_sandbox_stats(&labels).await {
        Ok(stats) => stats,
        Err(error) => {
            warn!(%error, "no sandbox statistics for eviction");
            return None;
        }
    };
    let mut usages = Vec::with_capacity(pods.len());
    for pod in pods {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let mut usage = PodUsage::default();
        let mut layers: BTreeMap<String, u64> = BTreeMap::new();
        for sandbox in stats.iter().filter(|s| {
            s.attributes
                .as_ref()
                .and_then(|a| a.labels.get(POD_UID_LABEL))
                == Some(&uid)
        }) {
            let Some(linux) = &sandbox.linux else {
                continue;
            };
            if let Some(memory) = linux
                .memory
                .as_ref()
                .and_then(|m| m.working_set_bytes.as_ref())
            {
                usage.memory = usage.memory.max(memory.value);
            }
            if let Some(count) = linux
                .process
                .as_ref()
                .and_then(|p| p.process_count.as_ref())
            {
                usage.processes = usage.processes.max(count.value);
            }
            for container in &linux.containers {
                let name = container
                    .attributes
                    .as_ref()
                    .and_then(|a| a.metadata.as_ref())
                    .map(|m| m.name.clone())
                    .unwrap_or_default();
                let used = container
                    .writable_layer
                    .as_ref()
                    .and_then(|w| w.used_bytes.as_ref())
                    .map_or(0, |b| b.value);
                *layers.entry(name).or_default() += used;
            }
        }
        if usage.processes == 0 {
            let cgroups = crate::cadvisor::Cgroups::default();
            usage.processes = crate::cadvisor::pod_cgroup(&cgroups, &uid)
                .and_then(|cgroup| cgroups.processes(&cgroup))
                .unwrap_or(0);
        }
        if disk || has_storage_limits(pod) {
            let pod_directory = ctx.pod_directory(&uid);
            let logs = PodKey::of(pod).log_directory();
            let (empty_dirs, containers, total) = tokio::task::spawn_blocking({
                let pod = pod.clone();
                move || disk_of(&pod, &pod_directory, Path::new(&logs), layers)
            })
            .await
            .unwrap_or_default();
            usage.empty_dirs = empty_dirs;
            usage.containers = containers;
            usage.disk = total;
        }
        usages.push(usage);
    }
    Some(usages)
}

/// Disk use of a pod: its disk-backed emptyDirs, each container's writable layer plus logs,
/// and the total with its other volumes.
fn disk_of(
    pod: &Pod,
    pod_directory: &Path,
    logs: &Path,
    layers: BTreeMap<String, u64>,
) -> (BTreeMap<String, u64>, BTreeMap<String, u64>, u64) {
    let mut empty_dirs = BTreeMap::new();
    for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        if volume
            .empty_dir
            .as_ref()
            .is_some_and(|e| e.medium.as_deref() != Some("Memory"))
        {
            let directory =
                crate::pods::volumes::volume_directory(pod_directory, "empty-dir", &volume.name);
            empty_dirs.insert(volume.name.clone(), disk_usage(&directory));
        }
    }
    let mut containers = layers;
    for container in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        *containers.entry(container.name.clone()).or_default() +=
            disk_usage(&logs.join(&container.name));
    }
    // the pod directory holds the emptyDirs, walked above, and the other volumes (tmpfs ones
    // not counted)
    let empty_dir_root = pod_directory
        .join("volumes")
        .join("kubernetes.io~empty-dir");
    let total = containers.values().sum::<u64>()
        + empty_dirs.values().sum::<u64>()
        + disk_usage_without(pod_directory, Some(&empty_dir_root));
    (empty_dirs, containers, total)
}

async fn evict(ctx: &PodContext, pod: &Pod, signal: &str, message: String) -> kube::Result<()> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    info!(pod = %name, %namespace, signal, %message, "evicting");
    ctx.metrics.evictions.with_label_values(&[signal]).inc();
    let patch =
        serde_json::json!({"status": {"phase": "Failed", "reason": "Evicted", "message": message}});
    Api::<Pod>::namespaced(ctx.client.clone(), &namespace)
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(name),
        namespace: Some(namespace),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    };
    kelson_common::events::publish(&ctx.recorder, &reference, true, "Evicted", message).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(name: &str, request: Option<&str>, priority: i32) -> Pod {
        let resources = request.map_or(json!({}), |r| json!({"requests": {"memory": r}}));
        serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"priority": priority, "containers": [{"name": "c", "resources": resources}]}}))
        .unwrap()
    }

    #[test]
    fn over_request_then_priority_then_excess() {
        let mib = 1 << 20;
        let candidates = vec![
            (pod("guaranteed-under", Some("512Mi"), 0), 100 * mib),
            (pod("besteffort-small", None, 0), 10 * mib),
            (pod("besteffort-big", None, 0), 300 * mib),
            (
                pod("burstable-over-important", Some("64Mi"), 1000),
                200 * mib,
            ),
            (pod("burstable-over", Some("64Mi"), 0), 100 * mib),
        ];
        let order: Vec<&str> = rank_for(Signal::Memory, &candidates)
            .into_iter()
            .map(|i| candidates[i].0.metadata.name.as_deref().unwrap())
            .collect();
        assert_eq!(
            order,
            vec![
                "besteffort-big",
                "burstable-over",
                "besteffort-small",
                "burstable-over-important",
                "guaranteed-under"
            ]
        );
    }

    fn names(candidates: &[(Pod, u64)], order: Vec<usize>) -> Vec<&str> {
        order
            .into_iter()
            .map(|i| candidates[i].0.metadata.name.as_deref().unwrap())
            .collect()
    }

    #[test]
    fn critical_pods_stay_and_pids_go_by_priority_then_count() {
        let mut mirror = pod("mirror", None, 0);
        mirror.metadata.annotations = Some(BTreeMap::from([(
            crate::static_pods::MIRROR_ANNOTATION.to_owned(),
            "abc".to_owned(),
        )]));
        let candidates = vec![
            (pod("dns", None, 2_000_000_000), 900),
            (mirror, 800),
            (pod("few", None, 0), 10),
            (pod("many", None, 0), 500),
            (pod("important", None, 100), 700),
        ];
        assert_eq!(
            names(&candidates, rank_for(Signal::Pids, &candidates)),
            vec!["many", "few", "important"]
        );
        // for memory, every one uses more than it requested (nothing): priority comes next
        assert_eq!(
            names(&candidates, rank_for(Signal::Memory, &candidates)),
            vec!["many", "few", "important"]
        );
    }

    #[test]
    fn disk_pressure_ranks_by_ephemeral_storage_requests() {
        let gib = 1 << 30;
        let storage = |name: &str, request: &str| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"containers": [
                {"name": "c", "resources": {"requests": {"ephemeral-storage": request}}}]}}))
            .unwrap()
        };
        let candidates = vec![
            (storage("within", "10Gi"), 2 * gib),
            (storage("over-a-little", "1Gi"), 2 * gib),
            (pod("unrequested", None, 0), gib / 2),
            (storage("over-a-lot", "1Gi"), 5 * gib),
        ];
        assert_eq!(
            names(&candidates, rank_for(Signal::NodeFs, &candidates)),
            vec!["over-a-lot", "over-a-little", "unrequested", "within"]
        );
    }

    #[test]
    fn storage_limits_in_the_kubelets_words() {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {
            "containers": [
                {"name": "app", "resources": {"limits": {"ephemeral-storage": "10Mi"}}},
                {"name": "side", "resources": {"limits": {"ephemeral-storage": "5Mi"}}}],
            "volumes": [
                {"name": "scratch", "emptyDir": {"sizeLimit": "1Mi"}},
                {"name": "ram", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}]}}))
        .unwrap();
        let mib = 1 << 20;
        let mut usage = PodUsage {
            empty_dirs: BTreeMap::from([("scratch".to_owned(), mib / 2)]),
            containers: BTreeMap::from([("app".to_owned(), 2 * mib)]),
            disk: 3 * mib,
            ..PodUsage::default()
        };
        assert_eq!(storage_violation(&pod, &usage), None);
        usage.empty_dirs.insert("scratch".into(), 2 * mib);
        assert_eq!(
            storage_violation(&pod, &usage).as_deref(),
            Some("Usage of EmptyDir volume \"scratch\" exceeds the limit \"1Mi\". ")
        );
        usage.empty_dirs.insert("scratch".into(), 0);
        usage.containers.insert("side".into(), 6 * mib);
        assert_eq!(
            storage_violation(&pod, &usage).as_deref(),
            Some("Container side exceeded its local ephemeral storage limit \"5Mi\". ")
        );
        usage.containers.insert("side".into(), 0);
        usage.disk = 16 * mib;
        assert_eq!(
            storage_violation(&pod, &usage).as_deref(),
            Some("Pod ephemeral local storage usage exceeds the total limit of containers 15Mi. ")
        );
    }

    #[test]
    fn disk_usage_counts_blocks_in_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(disk_usage(&dir.path().join("absent")), 0);
        let empty = disk_usage(dir.path());
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/data"), vec![1u8; 3 << 20]).unwrap();
        let used = disk_usage(dir.path());
        assert!(used >= empty + (3 << 20), "{used}");
        assert!(used < empty + (4 << 20), "{used}");
        // a skipped subtree is left out
        let without = disk_usage_without(dir.path(), Some(&dir.path().join("a")));
        assert!(without < empty + (1 << 20), "{without}");
    }
}
