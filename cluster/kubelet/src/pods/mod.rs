//! The pods bound to this node: one watch (field selector `spec.nodeName`), one worker task per
//! pod ([`worker`]), deciding through the pure [`plan`] with CRI configs from [`spec`]. After the
//! first list, sandboxes this node owns whose pod no longer exists are removed; sandboxes of
//! pods that still exist are adopted, so a restarted agent leaves running containers alone.

pub mod plan;
pub mod probes;
pub mod spec;
pub mod volumes;
mod worker;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::events::Recorder;
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
}

impl PodContext {
    /// The directory of a pod's volumes and managed files.
    #[must_use]
    pub fn pod_directory(&self, uid: &str) -> std::path::PathBuf {
        self.root_dir.join("pods").join(uid)
    }
}

/// Removes what the runtime leaves behind for a deleted pod: its log directory and its empty
/// cgroups.
pub fn cleanup_pod_files(key: &PodKey) {
    let log_directory = key.log_directory();
    if let Err(error) = std::fs::remove_dir_all(&log_directory)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        debug!(%error, directory = %log_directory, "failed to remove a pod log directory");
    }
    let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for controller in controllers.flatten() {
        for qos in ["", "burstable/", "besteffort/"] {
            let pod = controller
                .path()
                .join(format!("kubepods/{qos}pod{}", key.uid));
            if pod.is_dir() {
                // only empty directories go; the kernel refuses the rest
                let _ = std::fs::remove_dir(&pod);
            }
        }
    }
}

/// Runs the pods bound to `ctx.node` until `shutdown`. Containers keep running when it stops.
pub async fn run(ctx: Arc<PodContext>, shutdown: CancellationToken) {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.node.name));
    let mut events = std::pin::pin!(watcher(api, config).default_backoff());
    let mut workers: HashMap<String, watch::Sender<Option<Arc<Pod>>>> = HashMap::new();
    let mut listed: HashSet<String> = HashSet::new();
    let mut first_list = true;
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => return,
            event = events.next() => event,
        };
        let Some(event) = event else { return };
        match event {
            Ok(watcher::Event::Init) => listed.clear(),
            Ok(watcher::Event::InitApply(pod)) => {
                listed.insert(pod.metadata.uid.clone().unwrap_or_default());
                dispatch(&ctx, &mut workers, pod, &shutdown);
            }
            Ok(watcher::Event::Apply(pod)) => dispatch(&ctx, &mut workers, pod, &shutdown),
            Ok(watcher::Event::Delete(pod)) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                if let Some(worker) = workers.remove(&uid) {
                    let _ = worker.send(None);
                }
            }
            Ok(watcher::Event::InitDone) => {
                // pods deleted while the watch was down
                workers.retain(|uid, worker| {
                    let keep = listed.contains(uid);
                    if !keep {
                        let _ = worker.send(None);
                    }
                    keep
                });
                if first_list {
                    first_list = false;
                    remove_orphans(&ctx, &listed).await;
                }
            }
            Err(error) => warn!(%error, "pod watch failed"),
        }
    }
}

fn dispatch(
    ctx: &Arc<PodContext>,
    workers: &mut HashMap<String, watch::Sender<Option<Arc<Pod>>>>,
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
    tokio::spawn(worker::run(ctx.clone(), key, receiver, shutdown.clone()));
}

/// Removes the sandboxes this node started for pods that no longer exist, and the volume
/// directories of such pods (their tmpfs volumes unmounted).
async fn remove_orphans(ctx: &PodContext, live: &HashSet<String>) {
    let pods_root = ctx.root_dir.join("pods");
    if let Ok(entries) = std::fs::read_dir(&pods_root) {
        for entry in entries.flatten() {
            let uid = entry.file_name().to_string_lossy().into_owned();
            if !live.contains(&uid) {
                info!(%uid, "removing the volumes of a deleted pod");
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
        if live.contains(&uid) {
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
