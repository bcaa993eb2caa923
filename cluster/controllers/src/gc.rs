//! The garbage collector: deletes dependents whose owners are all gone (background
//! propagation), deletes dependents first and then releases owners deleted with
//! `propagationPolicy: Foreground` (finalizer `foregroundDeletion`), and strips owner references
//! from the dependents of owners deleted with `Orphan` (finalizer `orphan`).
//!
//! It watches every resource type discovery lists (custom resources included, rediscovered
//! every 30 s), reading metadata only; an owner of a kind it does not track is never assumed
//! gone. The decision is [`Graph::take_plan`], a pure function over the cached graph that looks
//! at the objects whose decision may have changed (and at everything every 30 s); the loop
//! re-plans whenever a watch reports a change and applies the plan idempotently. Before it
//! deletes a dependent whose owners look gone, it reads them from the API server: a cache can
//! lag (an owner's watch event may come after its dependent's), a deletion cannot be undone.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use kube::ResourceExt;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PropagationPolicy,
};
use kube::core::PartialObjectMeta;
use kube::discovery::{Discovery, verbs};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::sync::mpsc;
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
    /// Its owner references.
    pub owners: Vec<Owner>,
    /// Being deleted.
    pub deleting: bool,
    /// Finalizers.
    pub finalizers: Vec<String>,
}

/// One owner reference, reduced to what the collector needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The owner's uid.
    pub uid: String,
    /// Its apiVersion and kind, to look it up.
    pub api_version: String,
    /// Its kind.
    pub kind: String,
    /// Its name (in the dependent's namespace when the kind is namespaced).
    pub name: String,
    /// Whether the reference blocks the owner's foreground deletion.
    pub blocks: bool,
}

/// A kind the API serves, as the collector tracks it.
#[derive(Clone, Debug)]
pub struct Served {
    /// How to address it.
    pub resource: ApiResource,
    /// Whether its objects live in namespaces.
    pub namespaced: bool,
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

/// The collector's view of the cluster: every tracked object by uid, the dependents of each
/// owner uid, and the objects whose decision may have changed since the last pass (an object
/// changed, one of its owners or dependents came or went), so that a pass looks only at those.
#[derive(Default)]
pub struct Graph {
    nodes: HashMap<String, Node>,
    dependents: HashMap<String, HashSet<String>>,
    dirty: HashSet<String>,
}

impl Graph {
    /// Adds or replaces an object; an identical one changes nothing.
    pub fn insert(&mut self, node: Node) {
        let uid = node.uid.clone();
        if self.nodes.get(&uid) == Some(&node) {
            return;
        }
        match self.nodes.remove(&uid) {
            Some(old) => self.unlink(&old),
            // dependents seen before their owner no longer miss it
            None => self.mark_dependents(&uid),
        }
        for owner in &node.owners {
            self.dependents
                .entry(owner.uid.clone())
                .or_default()
                .insert(uid.clone());
            self.dirty.insert(owner.uid.clone());
        }
        self.dirty.insert(uid.clone());
        self.nodes.insert(uid, node);
    }

    /// Removes an object: its owners and dependents are looked at again.
    pub fn remove(&mut self, uid: &str) {
        if let Some(old) = self.nodes.remove(uid) {
            self.unlink(&old);
            self.mark_dependents(uid);
        }
    }

    /// Replaces every object of one kind (after a full list of it).
    pub fn replace_kind(&mut self, kind: usize, nodes: Vec<Node>) {
        let listed: HashSet<&str> = nodes.iter().map(|n| n.uid.as_str()).collect();
        let gone: Vec<String> = self
            .nodes
            .values()
            .filter(|n| n.kind == kind && !listed.contains(n.uid.as_str()))
            .map(|n| n.uid.clone())
            .collect();
        for uid in gone {
            self.remove(&uid);
        }
        for node in nodes {
            self.insert(node);
        }
    }

    /// Looks at everything again at the next pass.
    pub fn mark_all(&mut self) {
        self.dirty.extend(self.nodes.keys().cloned());
    }

    /// Looks at one object again at the next pass.
    pub fn mark(&mut self, uid: &str) {
        self.dirty.insert(uid.to_owned());
    }

    fn unlink(&mut self, old: &Node) {
        for owner in &old.owners {
            if let Some(set) = self.dependents.get_mut(&owner.uid) {
                set.remove(&old.uid);
                if set.is_empty() {
                    self.dependents.remove(&owner.uid);
                }
            }
            self.dirty.insert(owner.uid.clone());
        }
    }

    fn mark_dependents(&mut self, uid: &str) {
        if let Some(children) = self.dependents.get(uid) {
            self.dirty.extend(children.iter().cloned());
        }
    }

    /// The steps for every object looked at since the last pass; `tracked_kinds` are the kinds
    /// whose caches are complete, so that a missing owner of such a kind is really gone.
    pub fn take_plan(&mut self, tracked_kinds: &HashSet<String>) -> Vec<Step> {
        let mut dirty: Vec<String> = std::mem::take(&mut self.dirty).into_iter().collect();
        dirty.sort_unstable();
        let mut steps = Vec::new();
        for uid in dirty {
            if let Some(node) = self.nodes.get(&uid) {
                self.plan_node(node, tracked_kinds, &mut steps);
            }
        }
        steps
    }

    fn children(&self, uid: &str) -> Vec<&Node> {
        let mut children: Vec<&Node> = self
            .dependents
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|c| self.nodes.get(c))
            .collect();
        children.sort_unstable_by(|a, b| a.uid.cmp(&b.uid));
        children
    }

    fn plan_node(&self, node: &Node, tracked_kinds: &HashSet<String>, steps: &mut Vec<Step>) {
        // owners deleted with Orphan: release their dependents, then the owner
        if node.deleting && node.finalizers.iter().any(|f| f == ORPHAN) {
            let children = self.children(&node.uid);
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
            return;
        }
        // owners deleted with Foreground: dependents go first
        if node.deleting && node.finalizers.iter().any(|f| f == FOREGROUND) {
            let children = self.children(&node.uid);
            let blocking = children
                .iter()
                .filter(|c| c.owners.iter().any(|o| o.uid == node.uid && o.blocks))
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
            return;
        }
        // dependents whose every owner is gone
        if node.owners.is_empty() || node.deleting {
            return;
        }
        let all_gone = node.owners.iter().all(|owner| {
            tracked_kinds.contains(&owner.kind) && !self.nodes.contains_key(owner.uid.as_str())
        });
        if all_gone {
            steps.push(Step::Delete {
                node: node.clone(),
                foreground: false,
            });
        }
    }
}

/// The pure decision over a set of cached objects (all of them looked at).
#[must_use]
pub fn plan(nodes: &[Node], tracked_kinds: &HashSet<String>) -> Vec<Step> {
    let mut graph = Graph::default();
    for node in nodes {
        graph.insert(node.clone());
    }
    graph.take_plan(tracked_kinds)
}

/// Every resource type the API serves that can be listed, watched and deleted, and whether it
/// is namespaced.
async fn discover(client: &kube::Client) -> kube::Result<Vec<Served>> {
    let discovery = Discovery::new(client.clone()).run().await?;
    let mut resources = Vec::new();
    for group in discovery.groups() {
        for (resource, capabilities) in group.recommended_resources() {
            let usable = [verbs::LIST, verbs::WATCH, verbs::DELETE]
                .iter()
                .all(|v| capabilities.supports_operation(v));
            // events are never owners and churn a lot
            if usable && resource.plural != "events" {
                let namespaced = capabilities.scope == kube::discovery::Scope::Namespaced;
                resources.push(Served {
                    resource,
                    namespaced,
                });
            }
        }
    }
    Ok(resources)
}

fn node_of(kind: usize, object: &PartialObjectMeta<DynamicObject>) -> Node {
    Node {
        kind,
        namespace: object.namespace().unwrap_or_default(),
        name: object.name_any(),
        uid: object.metadata.uid.clone().unwrap_or_default(),
        owners: object
            .owner_references()
            .iter()
            .map(|o| Owner {
                uid: o.uid.clone(),
                api_version: o.api_version.clone(),
                kind: o.kind.clone(),
                name: o.name.clone(),
                blocks: o.block_owner_deletion.unwrap_or(false),
            })
            .collect(),
        deleting: object.metadata.deletion_timestamp.is_some(),
        finalizers: object.finalizers().to_vec(),
    }
}

/// What a kind's watch tells the collector.
enum Message {
    /// A full list of the kind starts.
    Init(usize),
    /// An object of a full list.
    Listed(Node),
    /// The full list of the kind is complete.
    ListDone(usize),
    /// An object was added or changed.
    Applied(Node),
    /// An object is gone.
    Deleted(String),
}

/// The kinds the collector watches, growing as new kinds (custom resources) appear; each one's
/// watch reads metadata only (`PartialObjectMetadata`), as Kubernetes' collector does.
struct Kinds {
    served: Vec<Served>,
    /// Whether the kind's first full list is complete.
    ready: Vec<bool>,
    /// Objects of full lists in progress, by kind.
    listing: HashMap<usize, Vec<Node>>,
    sender: mpsc::Sender<Message>,
}

impl Kinds {
    fn track(&mut self, client: &kube::Client, served: Served, shutdown: &CancellationToken) {
        let resource = &served.resource;
        if (self.served.iter())
            .any(|k| k.resource.group == resource.group && k.resource.plural == resource.plural)
        {
            return;
        }
        let kind = self.served.len();
        let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(client.clone(), resource);
        let sender = self.sender.clone();
        let stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .for_each(move |event| {
                let message = match event {
                    Ok(watcher::Event::Init) => Some(Message::Init(kind)),
                    Ok(watcher::Event::InitApply(object)) => {
                        Some(Message::Listed(node_of(kind, &object)))
                    }
                    Ok(watcher::Event::InitDone) => Some(Message::ListDone(kind)),
                    Ok(watcher::Event::Apply(object)) => {
                        Some(Message::Applied(node_of(kind, &object)))
                    }
                    Ok(watcher::Event::Delete(object)) => {
                        Some(Message::Deleted(object.metadata.uid.unwrap_or_default()))
                    }
                    Err(error) => {
                        warn!(%error, "garbage collector watch failed");
                        None
                    }
                };
                let sender = sender.clone();
                async move {
                    if let Some(message) = message {
                        let _ = sender.send(message).await;
                    }
                }
            });
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = stream => {}
            }
        });
        self.served.push(served);
        self.ready.push(false);
    }

    fn receive(&mut self, graph: &mut Graph, message: Message) {
        match message {
            Message::Init(kind) => {
                self.listing.insert(kind, Vec::new());
            }
            Message::Listed(node) => self.listing.entry(node.kind).or_default().push(node),
            Message::ListDone(kind) => {
                graph.replace_kind(kind, self.listing.remove(&kind).unwrap_or_default());
                self.ready[kind] = true;
            }
            Message::Applied(node) => graph.insert(node),
            Message::Deleted(uid) => graph.remove(&uid),
        }
    }
}

/// Runs the collector until `shutdown`.
pub async fn run(client: kube::Client, shutdown: CancellationToken) {
    let (sender, mut receiver) = mpsc::channel(4096);
    let mut kinds = Kinds {
        served: Vec::new(),
        ready: Vec::new(),
        listing: HashMap::new(),
        sender,
    };
    let mut graph = Graph::default();
    let mut last_discovery: Option<tokio::time::Instant> = None;
    // steps already taken, so that a lagging cache does not repeat them
    let mut done: HashSet<String> = HashSet::new();
    let mut done_since = tokio::time::Instant::now();
    // owner uids the API server confirmed gone (a uid never comes back)
    let mut absent: HashSet<String> = HashSet::new();
    info!("garbage collector started");
    loop {
        if last_discovery.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
            match discover(&client).await {
                Ok(resources) => {
                    for resource in resources {
                        kinds.track(&client, resource, &shutdown);
                    }
                    last_discovery = Some(tokio::time::Instant::now());
                    // level-triggered: every object is looked at again now and then, and
                    // whenever a new kind may have made owners known
                    graph.mark_all();
                }
                Err(error) => warn!(%error, "garbage collector discovery failed"),
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            message = receiver.recv() => match message {
                Some(message) => kinds.receive(&mut graph, message),
                None => return,
            },
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        // a busy cluster sends constantly, so forget taken steps by age, not by quiet
        if done_since.elapsed() > Duration::from_secs(5) {
            done.clear();
            done_since = tokio::time::Instant::now();
        }
        // let bursts of events settle into one pass
        tokio::time::sleep(Duration::from_millis(50)).await;
        while let Ok(message) = receiver.try_recv() {
            kinds.receive(&mut graph, message);
        }
        if kinds.ready.iter().any(|ready| !ready) {
            continue;
        }
        let tracked_kinds: HashSet<String> = kinds
            .served
            .iter()
            .map(|k| k.resource.kind.clone())
            .collect();
        for step in graph.take_plan(&tracked_kinds) {
            let key = format!("{step:?}");
            if !done.insert(key.clone()) {
                continue;
            }
            match apply(&client, &kinds, &mut absent, &step).await {
                Ok(false) => {}
                // not taken: planned again as soon as the owner changes or goes
                Ok(true) => {
                    done.remove(&key);
                }
                Err(error) => {
                    debug!(?step, %error, "garbage collection step failed");
                    // try again at the next pass: the object, and its owners, whose planning
                    // gives the Orphan and foreground steps
                    done.remove(&key);
                    let node = step_node(&step);
                    graph.mark(&node.uid);
                    for owner in &node.owners {
                        graph.mark(&owner.uid);
                    }
                }
            }
        }
    }
}

fn step_node(step: &Step) -> &Node {
    match step {
        Step::Delete { node, .. } | Step::Orphan { node, .. } | Step::Release { node, .. } => node,
    }
}

fn api_for(client: &kube::Client, kinds: &[Served], node: &Node) -> Api<DynamicObject> {
    let resource = &kinds[node.kind].resource;
    if node.namespace.is_empty() {
        Api::all_with(client.clone(), resource)
    } else {
        Api::namespaced_with(client.clone(), &node.namespace, resource)
    }
}

/// Whether an owner of `node` still exists, asked of the API server rather than the cache (as
/// Kubernetes' collector does before deleting a dependent): the watch may not have delivered a
/// new owner yet, and a deletion made on a stale cache cannot be undone.
///
/// `absent` remembers the owners found gone, so that the dependents of one owner cost one
/// lookup; it is emptied when it grows large.
async fn an_owner_exists(
    client: &kube::Client,
    kinds: &Kinds,
    absent: &mut HashSet<String>,
    node: &Node,
) -> kube::Result<bool> {
    for owner in &node.owners {
        if absent.contains(&owner.uid) {
            continue;
        }
        if owner_exists(client, &kinds.served, &node.namespace, owner).await? {
            return Ok(true);
        }
        if absent.len() >= 10_000 {
            absent.clear();
        }
        absent.insert(owner.uid.clone());
    }
    Ok(false)
}

/// Whether `owner` (a reference of an object in `namespace`) exists: looked up among the
/// `served` kinds and read from the API server. An object of another uid under the owner's
/// name replaced it, so the owner is gone. An owner that cannot be looked up counts as
/// existing: its kind (group and kind) is not served, or it is a namespaced kind referenced by
/// a cluster-scoped object.
///
/// # Errors
/// When the API server does not answer the lookup.
pub async fn owner_exists(
    client: &kube::Client,
    served: &[Served],
    namespace: &str,
    owner: &Owner,
) -> kube::Result<bool> {
    let group = owner
        .api_version
        .rsplit_once('/')
        .map_or("", |(group, _)| group);
    let Some(kind) =
        (served.iter()).find(|k| k.resource.kind == owner.kind && k.resource.group == group)
    else {
        return Ok(true);
    };
    let api: Api<DynamicObject> = match (kind.namespaced, namespace) {
        (true, "") => return Ok(true),
        (true, namespace) => Api::namespaced_with(client.clone(), namespace, &kind.resource),
        (false, _) => Api::all_with(client.clone(), &kind.resource),
    };
    let found = api.get_metadata_opt(&owner.name).await?;
    Ok(found.is_some_and(|found| found.metadata.uid.as_deref() == Some(owner.uid.as_str())))
}

/// Takes one step; `Ok(true)` when it was not taken because an owner exists after all.
async fn apply(
    client: &kube::Client,
    kinds: &Kinds,
    absent: &mut HashSet<String>,
    step: &Step,
) -> kube::Result<bool> {
    let resources = &kinds.served;
    // a deletion's 409 is its uid precondition (the object was replaced): nothing to do; a
    // patch's 409 is its resourceVersion (the object changed): an error, so it is tried again
    let ignore_replaced = |result: kube::Result<()>| match result {
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(false),
        other => other.map(|()| false),
    };
    let ignore_missing = |result: kube::Result<()>| match result {
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        other => other.map(|()| false),
    };
    match step {
        Step::Delete { node, foreground } => {
            // a dependent of owners that look gone; a foreground owner's children are deleted
            // because their owner is (it is there, being deleted)
            if !*foreground && an_owner_exists(client, kinds, absent, node).await? {
                debug!(name = %node.name, "an owner the cache lacks exists: kept");
                return Ok(true);
            }
            let api = api_for(client, resources, node);
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
            debug!(kind = %resources[node.kind].resource.kind, name = %node.name, "collecting garbage");
            ignore_replaced(api.delete(&node.name, &params).await.map(|_| ()))
        }
        Step::Orphan { node, owner_uid } => {
            let api = api_for(client, resources, node);
            let object = match api.get(&node.name).await {
                Ok(object) => object,
                Err(kube::Error::Api(status)) if status.code == 404 => return Ok(false),
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
            let api = api_for(client, resources, node);
            let object = match api.get(&node.name).await {
                Ok(object) => object,
                Err(kube::Error::Api(status)) if status.code == 404 => return Ok(false),
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
                .map(|(u, k, b)| Owner {
                    uid: (*u).into(),
                    api_version: "v1".into(),
                    kind: (*k).into(),
                    name: (*u).into(),
                    blocks: *b,
                })
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
    fn a_pass_looks_at_what_changed_and_its_neighbours() {
        let mut graph = Graph::default();
        graph.insert(node("deploy", 2, &[]));
        graph.insert(node("rs", 1, &[("deploy", "Deployment", true)]));
        graph.insert(node("pod", 0, &[("rs", "ReplicaSet", true)]));
        assert!(graph.take_plan(&tracked()).is_empty());
        graph.insert(node("pod", 0, &[("rs", "ReplicaSet", true)]));
        assert!(
            graph.dirty.is_empty(),
            "an unchanged object is not looked at"
        );

        graph.remove("deploy");
        let rs = node("rs", 1, &[("deploy", "Deployment", true)]);
        assert_eq!(
            graph.take_plan(&tracked()),
            vec![Step::Delete {
                node: rs,
                foreground: false
            }],
            "a gone owner's dependents are looked at"
        );

        let mut orphaning = node("rs", 1, &[]);
        orphaning.deleting = true;
        orphaning.finalizers = vec![ORPHAN.into()];
        graph.insert(orphaning.clone());
        assert_eq!(
            graph.take_plan(&tracked()),
            vec![Step::Orphan {
                node: node("pod", 0, &[("rs", "ReplicaSet", true)]),
                owner_uid: "rs".into()
            }]
        );
        graph.insert(node("pod", 0, &[]));
        assert_eq!(
            graph.take_plan(&tracked()),
            vec![Step::Release {
                node: orphaning,
                finalizer: ORPHAN
            }],
            "the owner is looked at when its last dependent lets go"
        );

        graph.replace_kind(0, vec![]);
        assert!(
            !graph.nodes.contains_key("pod"),
            "a new list drops the unlisted"
        );
        assert!(graph.nodes.contains_key("rs"), "other kinds stay");
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
