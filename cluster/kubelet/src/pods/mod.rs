//! The pods bound to this node: one watch (field selector `spec.nodeName`), one worker task per
//! pod ([`worker`]), deciding through the pure [`plan`] with CRI configs from [`spec`]. After the
//! first list, and every minute after it, what this node holds for pods that no longer exist
//! is collected: sandboxes and their containers, volume directories, log directories and
//! cgroups. Sandboxes of pods that still exist are adopted, so a restarted agent leaves running
//! containers alone.

pub mod plan;
pub mod probes;
pub mod spec;
pub mod volumes;
mod worker;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kelson_common::events::Recorder;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::cri::Cri;
use spec::{NODE_LABEL, POD_UID_LABEL, PodKey};

/// What workers know about the node.
#[derive(Clone, Debug)]
pub struct NodeContext {
    /// Node name.
    pub name: String,
    /// The node's address (hostNetwork pods' IP).
    pub host_ip: String,
    /// Memory capacity in bytes (for oom_score_adj).
    pub memory_capacity: i64,
    /// Allocatable resources (cpu in millicores, others in units), for resourceFieldRef.
    pub allocatable: BTreeMap<String, i64>,
    /// How pods resolve names.
    pub dns: spec::DnsSettings,
}

/// Shared by every pod worker.
pub struct PodContext {
    /// API client.
    pub client: kube::Client,
    /// The container runtime.
    pub cri: Cri,
    /// This node.
    pub node: NodeContext,
    /// Event recorder (`kubelet`).
    pub recorder: Recorder,
    /// The agent's directory; pod volumes live under `pods/<uid>`.
    pub root_dir: std::path::PathBuf,
    /// The kubelet's metrics.
    pub metrics: Arc<crate::metrics::KubeletMetrics>,
    /// This machine's cgroup hierarchy.
    pub cgroups: crate::cadvisor::Cgroups,
}

impl PodContext {
    /// The directory of a pod's volumes and managed files.
    #[must_use]
    pub fn pod_directory(&self, uid: &str) -> std::path::PathBuf {
        self.root_dir.join("pods").join(uid)
    }
}

/// How long a stopping agent waits for pod workers to finish the sync they are in.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(10);
/// How often what deleted pods left behind is collected.
const HOUSEKEEPING: std::time::Duration = std::time::Duration::from_secs(60);
/// The cgroup file system.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Removes what the runtime leaves behind for a deleted pod: its log directory and its empty
/// cgroups.
pub fn cleanup_pod_files(key: &PodKey) {
    let log_directory = key.log_directory();
    if let Err(error) = std::fs::remove_dir_all(&log_directory)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        debug!(%error, directory = %log_directory, "failed to remove a pod log directory");
    }
    remove_pod_cgroups(std::path::Path::new(CGROUP_ROOT), &key.uid);
}

/// The cgroup directories of pod `uid` under `root`: `kubepods[/burstable|/besteffort]/pod<uid>`
/// in the unified hierarchy (cgroup v2, at the root) and in each controller's (v1).
fn pod_cgroups(root: &std::path::Path, uid: &str) -> Vec<std::path::PathBuf> {
    let mut hierarchies = vec![root.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(root) {
        hierarchies.extend(
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
    }
    let mut found = Vec::new();
    for hierarchy in hierarchies {
        for candidate in spec::pod_cgroup_candidates(uid) {
            let pod = hierarchy.join(candidate.trim_start_matches('/'));
            if pod.is_dir() {
                found.push(pod);
            }
        }
    }
    found
}

/// Removes pod `uid`'s cgroups under `root`, leftover container cgroups first. Only empty
/// ones go: the kernel refuses a cgroup that still has processes.
fn remove_pod_cgroups(root: &std::path::Path, uid: &str) {
    for pod in pod_cgroups(root, uid) {
        if let Ok(children) = std::fs::read_dir(&pod) {
            for child in children.flatten() {
                if child.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir(child.path());
                }
            }
        }
        if let Err(error) = std::fs::remove_dir(&pod) {
            debug!(%error, cgroup = %pod.display(), "a pod cgroup stays");
        }
    }
}

/// The log directories of pod `uid` under `root` (`<namespace>_<name>_<uid>`).
fn pod_log_directories(root: &std::path::Path, uid: &str) -> Vec<std::path::PathBuf> {
    let suffix = format!("_{uid}");
    std::fs::read_dir(root)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(&suffix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs the pods bound to `ctx.node` until `shutdown`, then lets each worker finish the sync
/// it is in (so no container is left half started). Containers keep running when it stops.
pub async fn run(ctx: Arc<PodContext>, shutdown: CancellationToken) {
    let mut tasks = tokio::task::JoinSet::new();
    watch_pods(&ctx, &mut tasks, &shutdown).await;
    let pending = tasks.len();
    let drained =
        tokio::time::timeout(DRAIN, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        warn!(
            workers = tasks.len(),
            "pod workers still busy at shutdown; stopping them"
        );
    } else if pending > 0 {
        debug!(workers = pending, "pod workers drained");
    }
}

async fn watch_pods(
    ctx: &Arc<PodContext>,
    tasks: &mut tokio::task::JoinSet<()>,
    shutdown: &CancellationToken,
) {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.node.name));
    let mut events = std::pin::pin!(watcher(api, config).default_backoff());
    let mut workers: HashMap<String, watch::Sender<Option<Arc<Pod>>>> = HashMap::new();
    // workers of deleted pods still tearing down: housekeeping leaves their pods alone
    let mut retiring: HashMap<String, watch::Sender<Option<Arc<Pod>>>> = HashMap::new();
    let mut listed: HashSet<String> = HashSet::new();
    let mut first_list = true;
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => return,
            event = events.next() => event,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            _ = housekeeping.tick(), if !first_list => {
                retiring.retain(|_, worker| !worker.is_closed());
                let live: HashSet<String> = workers.keys().chain(retiring.keys()).cloned().collect();
                remove_orphans(ctx, &live).await;
                continue;
            }
        };
        let Some(event) = event else { return };
        match event {
            Ok(watcher::Event::Init) => listed.clear(),
            Ok(watcher::Event::InitApply(pod)) => {
                listed.insert(pod.metadata.uid.clone().unwrap_or_default());
                dispatch(ctx, &mut workers, tasks, pod, shutdown);
            }
            Ok(watcher::Event::Apply(pod)) => dispatch(ctx, &mut workers, tasks, pod, shutdown),
            Ok(watcher::Event::Delete(pod)) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                if let Some(worker) = workers.remove(&uid) {
                    let _ = worker.send(None);
                    retiring.insert(uid, worker);
                }
            }
            Ok(watcher::Event::InitDone) => {
                // pods deleted while the watch was down
                let gone: Vec<String> = workers
                    .keys()
                    .filter(|uid| !listed.contains(*uid))
                    .cloned()
                    .collect();
                for uid in gone {
                    if let Some(worker) = workers.remove(&uid) {
                        let _ = worker.send(None);
                        retiring.insert(uid, worker);
                    }
                }
                if first_list {
                    first_list = false;
                    remove_orphans(ctx, &listed).await;
                    housekeeping.reset();
                }
            }
            Err(error) => warn!(%error, "pod watch failed"),
        }
    }
}

fn dispatch(
    ctx: &Arc<PodContext>,
    workers: &mut HashMap<String, watch::Sender<Option<Arc<Pod>>>>,
    tasks: &mut tokio::task::JoinSet<()>,
    pod: Pod,
    shutdown: &CancellationToken,
) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let pod = Arc::new(pod);
    if let Some(worker) = workers.get(&uid)
        && !worker.is_closed()
    {
        let _ = worker.send(Some(pod));
        return;
    }
    let key = PodKey::of(&pod);
    let (sender, receiver) = watch::channel(Some(pod));
    workers.insert(uid, sender);
    tasks.spawn(worker::run(ctx.clone(), key, receiver, shutdown.clone()));
}

/// Removes the sandboxes this node started for pods that no longer exist (`live` holds the
/// uids of those that do), and the volume directories, log directories and cgroups of such
/// pods (their tmpfs volumes unmounted). A removal that fails is tried again next time.
async fn remove_orphans(ctx: &PodContext, live: &HashSet<String>) {
    let pods_root = ctx.root_dir.join("pods");
    if let Ok(entries) = std::fs::read_dir(&pods_root) {
        for entry in entries.flatten() {
            let uid = entry.file_name().to_string_lossy().into_owned();
            if !uid.is_empty() && !live.contains(&uid) {
                info!(%uid, "removing the volumes and logs of a deleted pod");
                // log directories only of pods this agent ran: others on this machine (a
                // second agent) keep theirs
                for directory in pod_log_directories(std::path::Path::new(spec::LOG_ROOT), &uid) {
                    if let Err(error) = std::fs::remove_dir_all(&directory) {
                        debug!(%error, directory = %directory.display(), "failed to remove a pod log directory");
                    }
                }
                remove_pod_cgroups(std::path::Path::new(CGROUP_ROOT), &uid);
                volumes::remove_pod_directory(&entry.path());
            }
        }
    }
    let sandboxes = match ctx
        .cri
        .list_pod_sandboxes(&[(NODE_LABEL, ctx.node.name.as_str())])
        .await
    {
        Ok(sandboxes) => sandboxes,
        Err(error) => {
            warn!(%error, "failed to list sandboxes");
            return;
        }
    };
    for sandbox in sandboxes {
        let uid = sandbox
            .labels
            .get(POD_UID_LABEL)
            .cloned()
            .unwrap_or_default();
        if uid.is_empty() || live.contains(&uid) {
            // without a pod uid there is nothing to match (and no directory to remove)
            continue;
        }
        let metadata = sandbox.metadata.clone().unwrap_or_default();
        info!(pod = %metadata.name, namespace = %metadata.namespace, "removing the sandbox of a deleted pod");
        if let Err(error) = ctx.cri.stop_pod_sandbox(&sandbox.id).await {
            warn!(%error, "failed to stop an orphaned sandbox");
            continue;
        }
        if let Err(error) = ctx.cri.remove_pod_sandbox(&sandbox.id).await {
            warn!(%error, "failed to remove an orphaned sandbox");
        }
        volumes::remove_pod_directory(&ctx.pod_directory(&uid));
        cleanup_pod_files(&PodKey {
            namespace: metadata.namespace,
            name: metadata.name,
            uid,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_cgroups_in_either_hierarchy() {
        let root = tempfile::tempdir().unwrap();
        let v2 = root.path().join("kubepods/burstable/podu1");
        let v1 = root.path().join("memory/kubepods/podu1");
        let other = root.path().join("cpu/kubepods/besteffort/podu2");
        for dir in [&v2, &v1, &other] {
            std::fs::create_dir_all(dir.join("container-id")).unwrap();
        }
        let mut found = pod_cgroups(root.path(), "u1");
        found.sort();
        assert_eq!(found, vec![v2.clone(), v1.clone()]);
        // a cgroup with a process in it stays (a file stands in for it here)
        std::fs::write(v1.join("container-id/busy"), "").unwrap();
        remove_pod_cgroups(root.path(), "u1");
        assert!(!v2.exists(), "the unified hierarchy's pod cgroup goes");
        assert!(v1.join("container-id").exists());
        assert!(other.exists(), "other pods' cgroups stay");
    }

    #[test]
    fn log_directories_by_uid() {
        let root = tempfile::tempdir().unwrap();
        for name in ["ns_web_u1", "ns_web_u10", "ns_other_u2"] {
            std::fs::create_dir_all(root.path().join(name)).unwrap();
        }
        assert_eq!(
            pod_log_directories(root.path(), "u1"),
            vec![root.path().join("ns_web_u1")]
        );
        assert!(pod_log_directories(&root.path().join("absent"), "u1").is_empty());
    }
}
