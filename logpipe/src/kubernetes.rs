//! Kubernetes metadata for pod logs: namespace, pod, uid and container from the kubelet's log
//! path (`/var/log/pods/<namespace>_<pod>_<uid>/<container>/<restart>.log`), and the pod's
//! labels from a watch of the pods on this node (kept a while after a pod is deleted, so its
//! last lines are still enriched).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;

/// A container's identity, as its log path tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogPath {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The pod's uid.
    pub uid: String,
    /// The container's name.
    pub container: String,
}

/// Reads the pod and container from a kubelet log path; `None` for other paths.
#[must_use]
pub fn parse_log_path(path: &Path) -> Option<LogPath> {
    let mut parts = path.iter().rev();
    let _file = parts.next()?;
    let container = parts.next()?.to_str()?;
    let pod_dir = parts.next()?.to_str()?;
    let mut fields = pod_dir.splitn(3, '_');
    let (namespace, pod, uid) = (fields.next()?, fields.next()?, fields.next()?);
    if namespace.is_empty() || pod.is_empty() || uid.is_empty() || container.is_empty() {
        return None;
    }
    Some(LogPath {
        namespace: namespace.to_owned(),
        pod: pod.to_owned(),
        uid: uid.to_owned(),
        container: container.to_owned(),
    })
}

/// Pod metadata the pipeline adds to records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodMeta {
    /// The pod's labels.
    pub labels: Arc<BTreeMap<String, String>>,
}

/// Pods by uid, filled by [`watch_pods`]; deleted pods stay for [`PodCache::KEEP_DELETED`].
#[derive(Clone, Default)]
pub struct PodCache {
    pods: Arc<RwLock<HashMap<String, Entry>>>,
}

#[derive(Clone)]
struct Entry {
    meta: PodMeta,
    deleted: Option<Instant>,
}

impl PodCache {
    /// How long a deleted pod's metadata stays.
    pub const KEEP_DELETED: Duration = Duration::from_secs(600);

    /// The metadata of the pod with `uid`, if known.
    #[must_use]
    pub fn get(&self, uid: &str) -> Option<PodMeta> {
        self.pods.read().get(uid).map(|entry| entry.meta.clone())
    }

    /// Records a pod (or its update).
    pub fn insert(&self, uid: &str, labels: BTreeMap<String, String>) {
        self.pods.write().insert(
            uid.to_owned(),
            Entry {
                meta: PodMeta {
                    labels: Arc::new(labels),
                },
                deleted: None,
            },
        );
    }

    fn mark_deleted(&self, uid: &str) {
        let now = Instant::now();
        let mut pods = self.pods.write();
        if let Some(entry) = pods.get_mut(uid) {
            entry.deleted = Some(now);
        }
        pods.retain(|_, entry| {
            entry
                .deleted
                .is_none_or(|at| now.duration_since(at) < Self::KEEP_DELETED)
        });
    }
}

/// Keeps `cache` filled with the pods bound to `node` (every pod when `node` is `None`) until
/// `shutdown`.
pub async fn watch_pods(
    client: kube::Client,
    node: Option<String>,
    cache: PodCache,
    shutdown: CancellationToken,
) {
    let api: kube::Api<Pod> = kube::Api::all(client);
    let mut config = watcher::Config::default();
    if let Some(node) = node {
        config = config.fields(&format!("spec.nodeName={node}"));
    }
    let mut events = watcher::watcher(api, config).boxed();
    let mut seen = std::collections::HashSet::new();
    let mut relisting = std::collections::HashSet::new();
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => return,
            event = events.next() => event,
        };
        let Some(event) = event else { return };
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                tracing::debug!(%error, "pod watch failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let apply = |pod: Pod| -> Option<String> {
            let uid = pod.metadata.uid?;
            cache.insert(&uid, pod.metadata.labels.unwrap_or_default());
            Some(uid)
        };
        match event {
            watcher::Event::Apply(pod) => {
                seen.extend(apply(pod));
            }
            watcher::Event::Delete(pod) => {
                if let Some(uid) = pod.metadata.uid {
                    cache.mark_deleted(&uid);
                    seen.remove(&uid);
                }
            }
            watcher::Event::Init => relisting.clear(),
            watcher::Event::InitApply(pod) => {
                relisting.extend(apply(pod));
            }
            watcher::Event::InitDone => {
                for gone in seen.difference(&relisting) {
                    cache.mark_deleted(gone);
                }
                seen = std::mem::take(&mut relisting);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_paths() {
        assert_eq!(
            parse_log_path(Path::new("/var/log/pods/shop_web-1_0a1b-2c/nginx/0.log")),
            Some(LogPath {
                namespace: "shop".into(),
                pod: "web-1".into(),
                uid: "0a1b-2c".into(),
                container: "nginx".into(),
            })
        );
        assert_eq!(parse_log_path(Path::new("/var/log/syslog")), None);
        assert_eq!(parse_log_path(Path::new("/var/log/pods/x/c/0.log")), None);
    }

    #[test]
    fn deleted_pods_stay_a_while() {
        let cache = PodCache::default();
        cache.insert("u1", BTreeMap::from([("app".into(), "web".into())]));
        cache.mark_deleted("u1");
        assert_eq!(cache.get("u1").unwrap().labels["app"], "web");
        assert!(cache.get("u2").is_none());
    }
}
