//! The scheduling loop: watches nodes and pods into a cache of [`NodeInfo`], takes unscheduled
//! pods of `default-scheduler` from a queue, asks [`crate::plan`] for a node, assumes the pod
//! there at once (so the next decision sees it) and binds it through `pods/binding` in the
//! background. Pods that fit nowhere get `PodScheduled=False`/`Unschedulable` with
//! kube-scheduler's message and a `FailedScheduling` event, and are retried with backoff or as
//! soon as the cluster changes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    Binding, Node, ObjectReference, PersistentVolume, PersistentVolumeClaim, Pod,
};
use k8s_openapi::api::storage::v1::StorageClass;
use kelson_common::events::{Event, EventType, Recorder, Reporter};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use parking_lot::Mutex;
use rand::SeedableRng;
use serde_json::json;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::plan::{self, NodeInfo, PlacedPod, PodRequest};

/// The scheduler name pods ask for.
pub const DEFAULT_SCHEDULER: &str = "default-scheduler";

/// Scheduler configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The `schedulerName` of the pods this scheduler places (kube-scheduler's profile name).
    pub scheduler_name: String,
    /// Binding requests in flight at once.
    pub max_concurrent_binds: usize,
    /// First retry delay of an unschedulable pod.
    pub initial_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// Where to count attempts, latencies and pending pods.
    pub metrics: Option<Arc<crate::metrics::SchedulerMetrics>>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            scheduler_name: DEFAULT_SCHEDULER.to_owned(),
            max_concurrent_binds: 64,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            metrics: None,
        }
    }
}

/// A pod waiting for a node.
struct Waiting {
    pod: Pod,
    attempts: u32,
    /// When it may be tried again (unschedulable pods wait here).
    not_before: Option<Instant>,
    /// The last unschedulable message written to its status.
    reported: Option<String>,
    /// When the scheduler first saw it.
    since: Instant,
}

#[derive(Default)]
struct State {
    /// The `schedulerName` this scheduler serves.
    name: String,
    nodes: HashMap<String, NodeInfo>,
    /// Node of every placed pod (observed or assumed).
    placement: HashMap<String, String>,
    /// Pods we bound but have not yet seen bound.
    assumed: HashSet<String>,
    /// Unscheduled pods by key.
    waiting: HashMap<String, Waiting>,
    /// Keys ready to be tried, in order.
    queue: VecDeque<String>,
    queued: HashSet<String>,
    /// Where the next search over the nodes starts.
    next_start: usize,
    /// Claims, volumes and classes (for pods with PersistentVolumeClaims).
    volumes: plan::Volumes,
    /// Pods that preempted others, by key: the room they wait for on their node is kept from
    /// pods of lower priority.
    nominations: HashMap<String, Nomination>,
}

/// A preemptor's claim on a node while its victims terminate.
struct Nomination {
    node: String,
    placed: PlacedPod,
    since: Instant,
}

/// How long a nomination holds before the pod may preempt again.
const NOMINATION_TIMEOUT: Duration = Duration::from_secs(30);

/// One scheduling decision, carried out after the state lock is released.
struct Decision {
    key: String,
    pod: Pod,
    result: Result<String, plan::Unschedulable>,
    attempts: u32,
    since: Instant,
    attempt_started: Instant,
    claims_to_place: Vec<String>,
    preemption: Option<plan::Preemption>,
}

impl State {
    fn enqueue(&mut self, key: &str) {
        if self.queued.insert(key.to_owned()) {
            self.queue.push_back(key.to_owned());
        }
    }

    /// Something changed that may make unschedulable pods fit: try them again.
    fn flush_unschedulable(&mut self) {
        let keys: Vec<String> = self
            .waiting
            .iter()
            .filter(|(_, w)| w.not_before.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            if let Some(waiting) = self.waiting.get_mut(&key) {
                waiting.not_before = None;
            }
            self.enqueue(&key);
        }
    }

    fn place(&mut self, key: &str, node: &str, placed: PlacedPod) {
        if let Some(previous) = self.placement.insert(key.to_owned(), node.to_owned())
            && previous != node
            && let Some(info) = self.nodes.get_mut(&previous)
        {
            info.remove_pod(key);
        }
        if let Some(info) = self.nodes.get_mut(node) {
            info.add_pod(placed);
        }
    }

    /// Nodes as the pod sees them: with the room reserved for preemptors of at least its
    /// priority (other than itself) taken.
    fn reserved_for(&self, key: &str, priority: i32) -> HashMap<String, NodeInfo> {
        let mut adjusted: HashMap<String, NodeInfo> = HashMap::new();
        for (nominee, nomination) in &self.nominations {
            if nominee == key || nomination.placed.priority < priority {
                continue;
            }
            if let Some(node) = self.nodes.get(&nomination.node) {
                adjusted
                    .entry(nomination.node.clone())
                    .or_insert_with(|| node.clone())
                    .add_pod(nomination.placed.clone());
            }
        }
        adjusted
    }

    fn unplace(&mut self, key: &str) {
        if let Some(node) = self.placement.remove(key)
            && let Some(info) = self.nodes.get_mut(&node)
        {
            info.remove_pod(key);
        }
    }

    fn observe_pod(&mut self, pod: &Pod) {
        let key = pod_key(pod);
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty());
        let terminal = kelson_common::pod::is_terminal(pod);
        match node {
            Some(node) => {
                self.waiting.remove(&key);
                self.assumed.remove(&key);
                self.nominations.remove(&key);
                if terminal {
                    if self.placement.contains_key(&key) {
                        self.unplace(&key);
                        self.flush_unschedulable();
                    }
                } else {
                    self.place(&key, &node, PlacedPod::of(pod));
                }
            }
            None if self.assumed.contains(&key) => {}
            None => {
                let ours = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.scheduler_name.as_deref())
                    .unwrap_or(DEFAULT_SCHEDULER)
                    == self.name;
                if !ours || terminal || kelson_common::pod::is_terminating(pod) {
                    self.waiting.remove(&key);
                    return;
                }
                match self.waiting.get_mut(&key) {
                    Some(waiting) => waiting.pod = pod.clone(),
                    None => {
                        self.waiting.insert(
                            key.clone(),
                            Waiting {
                                pod: pod.clone(),
                                attempts: 0,
                                not_before: None,
                                reported: None,
                                since: Instant::now(),
                            },
                        );
                        self.enqueue(&key);
                    }
                }
            }
        }
    }

    fn forget_pod(&mut self, pod: &Pod) {
        let key = pod_key(pod);
        self.waiting.remove(&key);
        self.nominations.remove(&key);
        self.assumed.remove(&key);
        if self.placement.contains_key(&key) {
            self.unplace(&key);
            self.flush_unschedulable();
        }
    }

    fn observe_node(&mut self, node: &Node) {
        let mut info = NodeInfo::of(node);
        if let Some(existing) = self.nodes.remove(&info.name) {
            info.requested = existing.requested;
            info.pods = existing.pods;
        }
        self.nodes.insert(info.name.clone(), info);
        self.flush_unschedulable();
    }
}

fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

/// Runs the scheduler until `shutdown`.
pub async fn run(client: kube::Client, config: Config, shutdown: CancellationToken) {
    let state = Arc::new(Mutex::new(State {
        name: config.scheduler_name.clone(),
        ..State::default()
    }));
    let wake = Arc::new(Notify::new());
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());

    let node_events = {
        let state = state.clone();
        let wake = wake.clone();
        watcher(nodes, watcher::Config::default())
            .default_backoff()
            .for_each(move |event| {
                let state = state.clone();
                let wake = wake.clone();
                async move {
                    match event {
                        Ok(watcher::Event::Apply(node) | watcher::Event::InitApply(node)) => {
                            state.lock().observe_node(&node)
                        }
                        Ok(watcher::Event::Delete(node)) => {
                            let name = node.metadata.name.unwrap_or_default();
                            let mut state = state.lock();
                            state.nodes.remove(&name);
                            state.placement.retain(|_, n| *n != name);
                        }
                        Ok(_) => {}
                        Err(error) => warn!(%error, "node watch failed"),
                    }
                    wake.notify_one();
                }
            })
    };
    let pod_events = {
        let state = state.clone();
        let wake = wake.clone();
        watcher(pods, watcher::Config::default())
            .default_backoff()
            .for_each(move |event| {
                let state = state.clone();
                let wake = wake.clone();
                async move {
                    match event {
                        Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                            state.lock().observe_pod(&pod)
                        }
                        Ok(watcher::Event::Delete(pod)) => state.lock().forget_pod(&pod),
                        Ok(_) => {}
                        Err(error) => warn!(%error, "pod watch failed"),
                    }
                    wake.notify_one();
                }
            })
    };
    // claims, volumes and classes: a change may let waiting pods fit
    let claim_events = watch_into(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        state.clone(),
        wake.clone(),
        |state, claim, live| {
            let key = format!(
                "{}/{}",
                claim.metadata.namespace.as_deref().unwrap_or_default(),
                claim.metadata.name.as_deref().unwrap_or_default()
            );
            if live {
                state.volumes.claims.insert(key, claim);
            } else {
                state.volumes.claims.remove(&key);
            }
        },
    );
    let volume_events = watch_into(
        Api::<PersistentVolume>::all(client.clone()),
        state.clone(),
        wake.clone(),
        |state, volume, live| {
            let name = volume.metadata.name.clone().unwrap_or_default();
            if live {
                state.volumes.volumes.insert(name, volume);
            } else {
                state.volumes.volumes.remove(&name);
            }
        },
    );
    let class_events = watch_into(
        Api::<StorageClass>::all(client.clone()),
        state.clone(),
        wake.clone(),
        |state, class, live| {
            let name = class.metadata.name.clone().unwrap_or_default();
            if live {
                let mode = class
                    .volume_binding_mode
                    .unwrap_or_else(|| "Immediate".into());
                state.volumes.binding_modes.insert(name, mode);
            } else {
                state.volumes.binding_modes.remove(&name);
            }
        },
    );
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: config.scheduler_name.clone(),
            instance: None,
        },
    );
    let worker = schedule_loop(client, config, state, wake, recorder, shutdown.clone());
    info!("scheduler started");
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = node_events => {}
        () = pod_events => {}
        () = claim_events => {}
        () = volume_events => {}
        () = class_events => {}
        () = worker => {}
    }
    info!("scheduler stopped");
}

/// Watches one kind into the state with `update(state, object, live)`; every change retries
/// the unschedulable pods.
async fn watch_into<K>(
    api: Api<K>,
    state: Arc<Mutex<State>>,
    wake: Arc<Notify>,
    update: fn(&mut State, K, bool),
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        let mut state = state.lock();
        match event {
            Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => {
                update(&mut state, object, true);
            }
            Ok(watcher::Event::Delete(object)) => update(&mut state, object, false),
            Ok(_) => continue,
            Err(error) => {
                warn!(%error, kind = %K::kind(&()), "watch failed");
                continue;
            }
        }
        state.flush_unschedulable();
        drop(state);
        wake.notify_one();
    }
}

async fn schedule_loop(
    client: kube::Client,
    config: Config,
    state: Arc<Mutex<State>>,
    wake: Arc<Notify>,
    recorder: Recorder,
    shutdown: CancellationToken,
) {
    let binds = Arc::new(Semaphore::new(config.max_concurrent_binds));
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let mut last_pending = Instant::now() - Duration::from_secs(1);
    loop {
        let next = {
            let mut state = state.lock();
            let now = Instant::now();
            // unschedulable pods whose backoff ran out join the queue again
            let due: Vec<String> = state
                .waiting
                .iter()
                .filter(|(_, w)| w.not_before.is_some_and(|t| t <= now))
                .map(|(k, _)| k.clone())
                .collect();
            for key in due {
                if let Some(waiting) = state.waiting.get_mut(&key) {
                    waiting.not_before = None;
                }
                state.enqueue(&key);
            }
            let mut decision = None;
            while let Some(key) = state.queue.pop_front() {
                state.queued.remove(&key);
                let Some(waiting) = state.waiting.get(&key) else {
                    continue;
                };
                if waiting.not_before.is_some() {
                    continue;
                }
                let pod = waiting.pod.clone();
                let (attempts, since) = (waiting.attempts, waiting.since);
                let attempt_started = Instant::now();
                let mut request = PodRequest::of(&pod);
                let (volumes, claims_to_place) = state.volumes.fit(&pod);
                request.volumes = volumes;
                // start where the previous search stopped, so every node gets its turn
                let names: Vec<&String> = state.nodes.keys().collect();
                let start = if names.is_empty() {
                    0
                } else {
                    state.next_start % names.len()
                };
                let reserved = if state.nominations.is_empty() {
                    HashMap::new()
                } else {
                    state.reserved_for(&key, request.placed.priority)
                };
                let order = names
                    .iter()
                    .cycle()
                    .skip(start)
                    .take(names.len())
                    .filter_map(|n| reserved.get(*n).or_else(|| state.nodes.get(*n)));
                let enough = plan::feasible_nodes_to_find(names.len());
                let result = plan::select_among(&request, order, enough, &mut rng);
                let next_start = start + enough.min(names.len()).max(1);
                drop(reserved);
                state.next_start = next_start;
                // nothing fits: make room by preempting lower-priority pods, unless this pod
                // already waits for room it made
                let waits_for_room = state
                    .nominations
                    .get(&key)
                    .is_some_and(|n| n.since.elapsed() < NOMINATION_TIMEOUT);
                let preemption = match &result {
                    Err(_) if !waits_for_room => plan::preempt(&request, state.nodes.values()),
                    _ => None,
                };
                if let Some(preemption) = &preemption {
                    state.nominations.insert(
                        key.clone(),
                        Nomination {
                            node: preemption.node.clone(),
                            placed: request.placed.clone(),
                            since: Instant::now(),
                        },
                    );
                }
                if let Ok(node) = &result {
                    state.assumed.insert(key.clone());
                    state.nominations.remove(&key);
                    state.place(&key, node, request.placed.clone());
                }
                decision = Some(Decision {
                    key,
                    pod,
                    result,
                    attempts,
                    since,
                    attempt_started,
                    claims_to_place,
                    preemption,
                });
                break;
            }
            decision
        };
        if let Some(metrics) = &config.metrics
            && last_pending.elapsed() >= Duration::from_millis(500)
        {
            last_pending = Instant::now();
            let state = state.lock();
            let (mut active, mut backoff, mut unschedulable) = (0, 0, 0);
            for waiting in state.waiting.values() {
                match (&waiting.not_before, &waiting.reported) {
                    (None, _) => active += 1,
                    (Some(_), None) => backoff += 1,
                    (Some(_), Some(_)) => unschedulable += 1,
                }
            }
            metrics.pending(active, backoff, unschedulable);
        }
        let Some(Decision {
            key,
            pod,
            result,
            attempts,
            since,
            attempt_started,
            claims_to_place,
            preemption,
        }) = next
        else {
            let earliest = state
                .lock()
                .waiting
                .values()
                .filter_map(|w| w.not_before)
                .min();
            let sleep = earliest.map_or(Duration::from_secs(1), |t| {
                t.saturating_duration_since(Instant::now())
            });
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = wake.notified() => {}
                () = tokio::time::sleep(sleep.max(Duration::from_millis(10))) => {}
            }
            continue;
        };
        match result {
            Ok(node) => {
                let permit = binds.clone().acquire_owned().await.expect("semaphore open");
                let client = client.clone();
                let state = state.clone();
                let wake = wake.clone();
                let recorder = recorder.clone();
                let config = config.clone();
                tokio::spawn(async move {
                    // claims waiting for their first consumer learn its node, then the
                    // provisioner makes their volumes there
                    let mut bound = select_node(&client, &pod, &claims_to_place, &node).await;
                    if bound.is_ok() {
                        bound = bind(&client, &pod, &node).await;
                    }
                    drop(permit);
                    if let Some(metrics) = &config.metrics {
                        let outcome = if bound.is_ok() {
                            metrics.scheduled(attempts + 1, since.elapsed());
                            crate::metrics::Outcome::Scheduled
                        } else {
                            crate::metrics::Outcome::Error
                        };
                        metrics.attempt(outcome, attempt_started.elapsed());
                    }
                    match bound {
                        Ok(()) => {
                            debug!(pod = %key, %node, "bound pod");
                            let reference = object_ref(&pod);
                            let note = format!("Successfully assigned {key} to {node}");
                            let event = Event {
                                type_: EventType::Normal,
                                reason: "Scheduled".into(),
                                note: Some(note),
                                action: "Binding".into(),
                                secondary: None,
                            };
                            if let Err(error) = recorder.publish(&event, &reference).await {
                                debug!(%error, "failed to record the Scheduled event");
                            }
                        }
                        Err(error) => {
                            warn!(pod = %key, %node, %error, "binding failed");
                            let mut state = state.lock();
                            state.assumed.remove(&key);
                            state.unplace(&key);
                            if let Some(waiting) = state.waiting.get_mut(&key) {
                                waiting.attempts += 1;
                                waiting.not_before =
                                    Some(Instant::now() + backoff(&config, waiting.attempts));
                            }
                            wake.notify_one();
                        }
                    }
                });
            }
            Err(unschedulable) => {
                if let Some(metrics) = &config.metrics {
                    metrics.attempt(
                        crate::metrics::Outcome::Unschedulable,
                        attempt_started.elapsed(),
                    );
                }
                let message = unschedulable.to_string();
                if let Some(preemption) = preemption {
                    info!(pod = %key, node = %preemption.node, victims = ?preemption.victims, "preempting");
                    let client = client.clone();
                    let recorder = recorder.clone();
                    let pod = pod.clone();
                    tokio::spawn(
                        async move { preempt(&client, &recorder, &pod, &preemption).await },
                    );
                }
                let report = {
                    let mut state = state.lock();
                    let Some(waiting) = state.waiting.get_mut(&key) else {
                        continue;
                    };
                    waiting.attempts += 1;
                    waiting.not_before = Some(Instant::now() + backoff(&config, waiting.attempts));
                    let changed = waiting.reported.as_deref() != Some(message.as_str());
                    waiting.reported = Some(message.clone());
                    changed
                };
                if report {
                    debug!(pod = %key, %message, "pod is unschedulable");
                    let client = client.clone();
                    let recorder = recorder.clone();
                    tokio::spawn(async move {
                        report_unschedulable(&client, &recorder, &pod, &message).await
                    });
                }
            }
        }
    }
}

/// Deletes the victims (each told by a `Preempted` event) and records the preemptor's
/// `nominatedNodeName`.
async fn preempt(
    client: &kube::Client,
    recorder: &Recorder,
    preemptor: &Pod,
    preemption: &plan::Preemption,
) {
    let uid = preemptor.metadata.uid.clone().unwrap_or_default();
    for victim in &preemption.victims {
        let Some((namespace, name)) = victim.split_once('/') else {
            continue;
        };
        let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
        match api.delete(name, &kube::api::DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => continue,
            Err(error) => {
                warn!(pod = %victim, %error, "could not preempt");
                continue;
            }
        }
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            ..ObjectReference::default()
        };
        let event = Event {
            type_: EventType::Normal,
            reason: "Preempted".into(),
            note: Some(format!(
                "Preempted by pod {uid} on node {}",
                preemption.node
            )),
            action: "Preempting".into(),
            secondary: None,
        };
        if let Err(error) = recorder.publish(&event, &reference).await {
            debug!(%error, "failed to record the Preempted event");
        }
    }
    let namespace = preemptor.metadata.namespace.as_deref().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let patch = json!({"status": {"nominatedNodeName": preemption.node}});
    if let Err(error) = api
        .patch_status(
            preemptor.metadata.name.as_deref().unwrap_or_default(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        debug!(%error, "could not record the nominated node");
    }
}

async fn select_node(
    client: &kube::Client,
    pod: &Pod,
    claims: &[String],
    node: &str,
) -> kube::Result<()> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let patch = json!({"metadata": {"annotations": {"volume.kubernetes.io/selected-node": node}}});
    for claim in claims {
        api.patch(claim, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    Ok(())
}

fn backoff(config: &Config, attempts: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(16));
    (config.initial_backoff * factor).min(config.max_backoff)
}

fn object_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: pod.metadata.name.clone(),
        namespace: pod.metadata.namespace.clone(),
        uid: pod.metadata.uid.clone(),
        resource_version: pod.metadata.resource_version.clone(),
        field_path: None,
    }
}

async fn bind(client: &kube::Client, pod: &Pod, node: &str) -> kube::Result<()> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            uid: pod.metadata.uid.clone(),
            ..ObjectMeta::default()
        },
        target: ObjectReference {
            kind: Some("Node".into()),
            name: Some(node.to_owned()),
            api_version: Some("v1".into()),
            ..ObjectReference::default()
        },
    };
    let body = serde_json::to_vec(&binding).map_err(kube::Error::SerdeError)?;
    let request = kube::core::Request::new(format!("/api/v1/namespaces/{namespace}/pods"))
        .create_subresource("binding", name, &PostParams::default(), body)
        .map_err(kube::Error::BuildRequest)?;
    client.request_text(request).await.map(|_| ())
}

async fn report_unschedulable(
    client: &kube::Client,
    recorder: &Recorder,
    pod: &Pod,
    message: &str,
) {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let status = json!({"status": {"conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
        "lastProbeTime": null, "lastTransitionTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
    }]}});
    if let Err(error) = pods
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(&status))
        .await
    {
        debug!(pod = %name, %error, "failed to write the unschedulable condition");
    }
    let event = Event {
        type_: EventType::Warning,
        reason: "FailedScheduling".into(),
        note: Some(message.to_owned()),
        action: "Scheduling".into(),
        secondary: None,
    };
    if let Err(error) = recorder.publish(&event, &object_ref(pod)).await {
        debug!(%error, "failed to record the FailedScheduling event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let config = Config::default();
        assert_eq!(backoff(&config, 1), Duration::from_secs(1));
        assert_eq!(backoff(&config, 2), Duration::from_secs(2));
        assert_eq!(backoff(&config, 4), Duration::from_secs(8));
        assert_eq!(backoff(&config, 10), Duration::from_secs(10));
    }

    fn pod(name: &str, node: Option<&str>) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "d"},
            "spec": {"nodeName": node, "containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]}}))
        .unwrap()
    }

    #[test]
    fn a_scheduler_takes_only_pods_of_its_name() {
        let mut state = State {
            name: "batch".to_owned(),
            ..State::default()
        };
        state.observe_pod(&pod("default", None));
        assert!(state.queue.is_empty(), "default-scheduler's pod");
        let mut mine = pod("mine", None);
        mine.spec.as_mut().unwrap().scheduler_name = Some("batch".into());
        state.observe_pod(&mine);
        assert_eq!(state.queue.len(), 1);
    }

    #[test]
    fn state_tracks_waiting_and_placed_pods() {
        let mut state = State {
            name: DEFAULT_SCHEDULER.to_owned(),
            ..State::default()
        };
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "n"}, "status": {"allocatable": {"cpu": "2", "memory": "1Gi", "pods": "10"}, "conditions": [{"type": "Ready", "status": "True"}]}})).unwrap();
        state.observe_node(&node);
        state.observe_pod(&pod("a", None));
        assert_eq!(state.queue.len(), 1);
        state.observe_pod(&pod("b", Some("n")));
        assert_eq!(state.nodes["n"].requested.cpu, 1000);
        state.forget_pod(&pod("b", Some("n")));
        assert_eq!(state.nodes["n"].requested.cpu, 0);
        state.observe_pod(&pod("a", Some("n")));
        assert!(state.waiting.is_empty());
        assert_eq!(state.nodes["n"].requested.cpu, 1000);
    }
}
