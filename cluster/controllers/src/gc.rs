//! The garbage collector: deletes dependents whose owners are all gone (background
//! propagation), deletes dependents first and then releases owners deleted with
//! `propagationPolicy: Foreground` (finalizer `foregroundDeletion`), and strips owner references
//! from the dependents of owners deleted with `Orphan` (finalizer `orphan`).
//!
//! It watches every resource type discovery lists (custom resources included, rediscovered
//! every 30 s); an owner of a kind it does not track is never assumed gone. The decision is [`plan`], a pure function over the
//! caches; the loop re-plans whenever a cache changes and applies the plan idempotently.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use kube::ResourceExt;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PropagationPolicy,
};
use kube::discovery::{Discovery, verbs};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The finalizer of foreground deletion.
pub const FOREGROUND: &str = "foregroundDeletion";
/// The finalizer of orphaning deletion.
pub const ORPHAN: &str = "orphan";

/// One cached object, reduced to what the collector needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Index of its kind in the tracked kinds.
    pub kind: usize,
    /// Namespace (empty for cluster-scoped).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Uid.
    pub uid: String,
    /// Owner uids with their kinds and whether they block owner deletion.
    pub owners: Vec<(String, String, bool)>,
    /// Being deleted.
    pub deleting: bool,
    /// Finalizers.
    pub finalizers: Vec<String>,
}

/// An action of the collector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Delete an object (with this propagation policy).
    Delete { node: Node, foreground: bool },
    /// Remove the owner reference to `owner_uid` from an object.
    Orphan { node: Node, owner_uid: String },
    /// Remove a finalizer from an owner: its dependents are handled.
    Release { node: Node, finalizer: &'static str },
}

/// The pure decision over every cached object. `tracked_kinds` are the kinds whose caches are
/// complete, so that a missing owner of such a kind is really gone.
#[must_use]
pub fn plan(nodes: &[Node], tracked_kinds: &HashSet<String>) -> Vec<Step> {
    let by_uid: HashMap<&str, &Node> = nodes.iter().map(|n| (n.uid.as_str(), n)).collect();
    let mut dependents: HashMap<&str, Vec<&Node>> = HashMap::new();
    for node in nodes {
        for (owner, _, _) in &node.owners {
            dependents.entry(owner.as_str()).or_default().push(node);
        }
    }
    let mut steps = Vec::new();
    for node in nodes {
        // owners deleted with Orphan: release their dependents, then the owner
        if node.deleting && node.finalizers.iter().any(|f| f == ORPHAN) {
            let children = dependents
                .get(node.uid.as_str())
                .cloned()
                .unwrap_or_default();
            if children.is_empty() {
                steps.push(Step::Release {
                    node: node.clone(),
                    finalizer: ORPHAN,
                });
            }
            for child in children {
                steps.push(Step::Orphan {
                    node: child.clone(),
                    owner_uid: node.uid.clone(),
                });
            }
            continue;
        }
        // owners deleted with Foreground: dependents go first
        if node.deleting && node.finalizers.iter().any(|f| f == FOREGROUND) {
            let children = dependents
                .get(node.uid.as_str())
                .cloned()
                .unwrap_or_default();
            let blocking = children
                .iter()
                .filter(|c| {
                    c.owners
                        .iter()
                        .any(|(o, _, block)| *o == node.uid && *block)
                })
                .count();
            for child in children.iter().filter(|c| !c.deleting) {
                steps.push(Step::Delete {
                    node: (*child).clone(),
                    foreground: true,
                });
            }
            if blocking == 0 {
                steps.push(Step::Release {
                    node: node.clone(),
                    finalizer: FOREGROUND,
                });
            }
            continue;
        }
        // dependents whose every owner is gone
        if node.owners.is_empty() || node.deleting {
            continue;
        }
        let all_gone = node.owners.iter().all(|(uid, kind, _)| {
            tracked_kinds.contains(kind) && !by_uid.contains_key(uid.as_str())
        });
        if all_gone {
            steps.push(Step::Delete {
                node: node.clone(),
                foreground: false,
            });
        }
    }
    steps
}

/// Every resource type the API serves that can be listed, watched and deleted.
async fn discover(client: &kube::Client) -> kube::Result<Vec<ApiResource>> {
    let discovery = Discovery::new(client.clone()).run().await?;
    let mut resources = Vec::new();
    for group in discovery.groups() {
        for (resource, capabilities) in group.recommended_resources() {
            let usable = [verbs::LIST, verbs::WATCH, verbs::DELETE]
                .iter()
                .all(|v| capabilities.supports_operation(v));
            // events are never owners and churn a lot
            if usable && resource.plural != "events" {
                resources.push(resource);
            }
        }
    }
    Ok(resources)
}

fn node_of(kind: usize, object: &DynamicObject) -> Node {
    Node {
        kind,
        namespace: object.namespace().unwrap_or_default(),
        name: object.name_any(),
        uid: object.metadata.uid.clone().unwrap_or_default(),
        owners: object
            .owner_references()
            .iter()
            .map(|o| {
                (
                    o.uid.clone(),
                    o.kind.clone(),
                    o.block_owner_deletion.unwrap_or(false),
                )
            })
            .collect(),
        deleting: object.metadata.deletion_timestamp.is_some(),
        finalizers: object.finalizers().to_vec(),
    }
}

/// The caches of every tracked kind, growing as new kinds (custom resources) appear.
struct Graph {
    kinds: Vec<ApiResource>,
    stores: Vec<Store<DynamicObject>>,
    changed: Arc<Notify>,
}

impl Graph {
    fn track(
        &mut self,
        client: &kube::Client,
        resource: ApiResource,
        shutdown: &CancellationToken,
    ) {
        if self
            .kinds
            .iter()
            .any(|k| k.group == resource.group && k.plural == resource.plural)
        {
            return;
        }
        let writer = reflector::store::Writer::new(resource.clone());
        let store = writer.as_reader();
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let changed = self.changed.clone();
        let stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .reflect(writer)
            .for_each(move |event| {
                if let Err(error) = event {
                    warn!(%error, "garbage collector watch failed");
                }
                changed.notify_one();
                futures::future::ready(())
            });
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = stream => {}
            }
        });
        self.kinds.push(resource);
        self.stores.push(store);
    }
}

/// Runs the collector until `shutdown`.
pub async fn run(client: kube::Client, shutdown: CancellationToken) {
    let mut graph = Graph {
        kinds: Vec::new(),
        stores: Vec::new(),
        changed: Arc::new(Notify::new()),
    };
    let mut last_discovery: Option<tokio::time::Instant> = None;
    // steps already taken, so that a lagging cache does not repeat them
    let mut done: HashSet<String> = HashSet::new();
    let mut done_since = tokio::time::Instant::now();
    info!("garbage collector started");
    loop {
        if last_discovery.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
            match discover(&client).await {
                Ok(resources) => {
                    for resource in resources {
                        graph.track(&client, resource, &shutdown);
                    }
                    last_discovery = Some(tokio::time::Instant::now());
                }
                Err(error) => warn!(%error, "garbage collector discovery failed"),
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = graph.changed.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        // a busy cluster notifies constantly, so forget taken steps by age, not by quiet
        if done_since.elapsed() > Duration::from_secs(5) {
            done.clear();
            done_since = tokio::time::Instant::now();
        }
        // let bursts of events settle into one pass
        tokio::time::sleep(Duration::from_millis(50)).await;
        if graph
            .stores
            .iter()
            .any(|s| s.wait_until_ready().now_or_never().is_none())
        {
            continue;
        }
        let tracked_kinds: HashSet<String> = graph.kinds.iter().map(|k| k.kind.clone()).collect();
        let nodes: Vec<Node> = graph
            .stores
            .iter()
            .enumerate()
            .flat_map(|(i, store)| store.state().into_iter().map(move |o| node_of(i, &o)))
            .collect();
        for step in plan(&nodes, &tracked_kinds) {
            let key = format!("{step:?}");
            if !done.insert(key) {
                continue;
            }
            if let Err(error) = apply(&client, &graph.kinds, &step).await {
                debug!(?step, %error, "garbage collection step failed");
                // try again at the next pass
                done.remove(&format!("{step:?}"));
            }
        }
    }
}

fn api_for(client: &kube::Client, kinds: &[ApiResource], node: &Node) -> Api<DynamicObject> {
    let resource = &kinds[node.kind];
    if node.namespace.is_empty() {
        Api::all_with(client.clone(), resource)
    } else {
        Api::namespaced_with(client.clone(), &node.namespace, resource)
    }
}

async fn apply(client: &kube::Client, kinds: &[ApiResource], step: &Step) -> kube::Result<()> {
    let ignore_missing = |result: kube::Result<()>| match result {
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(()),
        other => other,
    };
    match step {
        Step::Delete { node, foreground } => {
            let api = api_for(client, kinds, node);
            let policy = if *foreground {
                PropagationPolicy::Foreground
            } else {
                PropagationPolicy::Background
            };
            let params = DeleteParams {
                propagation_policy: Some(policy),
                preconditions: Some(kube::api::Preconditions {
                    uid: Some(node.uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            debug!(kind = %kinds[node.kind].kind, name = %node.name, "collecting garbage");
            ignore_missing(api.delete(&node.name, &params).await.map(|_| ()))
        }
        Step::Orphan { node, owner_uid } => {
            let api = api_for(client, kinds, node);
            let object = match api.get(&node.name).await {
                Ok(object) => object,
                Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
                Err(error) => return Err(error),
            };
            let remaining: Vec<_> = object
                .owner_references()
                .iter()
                .filter(|o| o.uid != *owner_uid)
                .cloned()
                .collect();
            let patch = json!({"metadata": {"ownerReferences": remaining, "resourceVersion": object.resource_version()}});
            ignore_missing(
                api.patch(&node.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(|_| ()),
            )
        }
        Step::Release { node, finalizer } => {
            let api = api_for(client, kinds, node);
            let object = match api.get(&node.name).await {
                Ok(object) => object,
                Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
                Err(error) => return Err(error),
            };
            let remaining: Vec<&String> = object
                .finalizers()
                .iter()
                .filter(|f| f.as_str() != *finalizer)
                .collect();
            let patch = json!({"metadata": {"finalizers": remaining, "resourceVersion": object.resource_version()}});
            ignore_missing(
                api.patch(&node.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(|_| ()),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(uid: &str, kind: usize, owners: &[(&str, &str, bool)]) -> Node {
        Node {
            kind,
            namespace: "default".into(),
            name: uid.into(),
            uid: uid.into(),
            owners: owners
                .iter()
                .map(|(u, k, b)| ((*u).into(), (*k).into(), *b))
                .collect(),
            deleting: false,
            finalizers: vec![],
        }
    }

    fn tracked() -> HashSet<String> {
        ["Deployment", "ReplicaSet", "Pod"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    }

    #[test]
    fn orphans_of_gone_owners_are_collected() {
        let nodes = vec![
            node("rs", 1, &[("gone-deploy", "Deployment", true)]),
            node("pod", 0, &[("rs", "ReplicaSet", true)]),
        ];
        let steps = plan(&nodes, &tracked());
        assert_eq!(
            steps,
            vec![Step::Delete {
                node: nodes[0].clone(),
                foreground: false
            }]
        );
        let unknown_owner = vec![node("x", 0, &[("cr", "Widget", true)])];
        assert!(
            plan(&unknown_owner, &tracked()).is_empty(),
            "untracked owners are never assumed gone"
        );
        let two_owners = vec![
            node("d", 2, &[]),
            node(
                "x",
                0,
                &[("gone", "Deployment", false), ("d", "Deployment", false)],
            ),
        ];
        assert!(
            plan(&two_owners, &tracked()).is_empty(),
            "one live owner keeps it"
        );
    }

    #[test]
    fn foreground_deletes_dependents_before_the_owner() {
        let mut owner = node("deploy", 2, &[]);
        owner.deleting = true;
        owner.finalizers = vec![FOREGROUND.into()];
        let child = node("rs", 1, &[("deploy", "Deployment", true)]);
        let steps = plan(&[owner.clone(), child.clone()], &tracked());
        assert_eq!(
            steps,
            vec![Step::Delete {
                node: child,
                foreground: true
            }]
        );
        let steps = plan(std::slice::from_ref(&owner), &tracked());
        assert_eq!(
            steps,
            vec![Step::Release {
                node: owner,
                finalizer: FOREGROUND
            }]
        );
    }

    #[test]
    fn orphaning_strips_owner_references_then_releases() {
        let mut owner = node("rs", 1, &[]);
        owner.deleting = true;
        owner.finalizers = vec![ORPHAN.into()];
        let child = node("pod", 0, &[("rs", "ReplicaSet", true)]);
        let steps = plan(&[owner.clone(), child.clone()], &tracked());
        assert_eq!(
            steps,
            vec![Step::Orphan {
                node: child,
                owner_uid: "rs".into()
            }]
        );
        assert_eq!(
            plan(std::slice::from_ref(&owner), &tracked()),
            vec![Step::Release {
                node: owner,
                finalizer: ORPHAN
            }]
        );
    }

    #[test]
    fn foreground_is_blocked_only_by_blocking_dependents() {
        let mut owner = node("deploy", 2, &[]);
        owner.deleting = true;
        owner.finalizers = vec![FOREGROUND.into()];
        let mut leaving = node("rs", 1, &[("deploy", "Deployment", true)]);
        leaving.deleting = true;
        let steps = plan(&[owner.clone(), leaving], &tracked());
        assert!(
            steps.is_empty(),
            "waits for the blocking dependent to be gone"
        );
        let loose = node("rs2", 1, &[("deploy", "Deployment", false)]);
        let steps = plan(&[owner.clone(), loose], &tracked());
        assert!(steps.contains(&Step::Release {
            node: owner,
            finalizer: FOREGROUND
        }));
    }
}
