//! One pod's worker: observes what the runtime shows for the pod, asks [`super::plan`] what to
//! do, does it through CRI, and reports the pod's status. Deletion stops the containers within
//! the grace period, removes the sandbox and confirms the deletion to the API server.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use jiff::Timestamp;
use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ObjectReference, PersistentVolume, PersistentVolumeClaim, Pod, Secret,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, warn};

use super::PodContext;
use super::plan::{
    self, ContainerState, Exit, Observed, RuntimeState, SandboxState, StartFailure, Step,
};
use super::probes::{self, Outcome};
use super::spec::{self, EnvSources, NODE_LABEL, POD_UID_LABEL, PodKey};
use super::volumes::{self, VolumeSources};
use crate::status::pod_status_with_init;

/// How often a pod is looked at when nothing happens (the kubelet's relist period).
const RESYNC: Duration = Duration::from_secs(1);
/// How often configMap, secret and projected volumes of running pods are refreshed.
const VOLUME_REFRESH: Duration = Duration::from_secs(10);
/// Grace period for containers of pods that vanished from the API.
const ORPHAN_GRACE_SECONDS: i64 = 2;

/// Image pull back-off of one image.
#[derive(Clone, Debug)]
struct PullBackoff {
    delay: Duration,
    until: Timestamp,
}

/// The worker of one pod.
pub(crate) struct Worker {
    ctx: Arc<PodContext>,
    key: PodKey,
    failures: BTreeMap<String, StartFailure>,
    pulls: HashMap<String, PullBackoff>,
    exits: HashMap<String, Exit>,
    sandbox_ips: HashMap<String, Option<String>>,
    last_status: Option<serde_json::Value>,
    terminated: bool,
    volumes: Option<BTreeMap<String, std::path::PathBuf>>,
    volumes_refreshed: Option<std::time::Instant>,
    volume_error: Option<String>,
    probes: probes::Tracker,
    /// Containers this worker killed (failed probes), whose SIGKILL is no OOM.
    killed: std::collections::HashSet<String>,
    /// The pod's service-account token: value, when issued, when it expires.
    token: Option<(String, Timestamp, Timestamp)>,
    /// OOM kills counted in the pod's cgroup, and which of them exits explain.
    oom: OomLedger,
    /// Per container name, the attempt its current run of crashes started at.
    backoff_from: HashMap<String, u32>,
    /// Containers whose back-off was announced with a BackOff event.
    backoff_reported: std::collections::HashSet<String>,
    /// When this worker first saw the pod.
    first_seen: std::time::Instant,
    /// How long the pod took to run all its containers, once it did.
    start_observed: Option<Duration>,
    /// The `pod start` span, open from when the worker first saw the pod until all its
    /// containers run; each sync until then is a child of it.
    start_span: Option<tracing::Span>,
}

/// Runs the worker of one pod until the pod is gone (a `None` arrives) or `shutdown`.
pub(crate) async fn run(
    ctx: Arc<PodContext>,
    key: PodKey,
    mut pods: watch::Receiver<Option<Arc<Pod>>>,
    shutdown: CancellationToken,
) {
    let start_span = tracing::info_span!(
        "pod start",
        namespace = %key.namespace,
        pod = %key.name,
        uid = %key.uid,
        trace_id = tracing::field::Empty,
    );
    kelson_common::trace::record_trace_id(&start_span);
    let mut worker = Worker {
        ctx,
        key,
        failures: BTreeMap::new(),
        pulls: HashMap::new(),
        exits: HashMap::new(),
        sandbox_ips: HashMap::new(),
        last_status: None,
        terminated: false,
        volumes: None,
        volumes_refreshed: None,
        volume_error: None,
        probes: probes::Tracker::default(),
        killed: std::collections::HashSet::new(),
        token: None,
        oom: OomLedger::default(),
        backoff_from: HashMap::new(),
        backoff_reported: std::collections::HashSet::new(),
        first_seen: std::time::Instant::now(),
        start_observed: None,
        start_span: Some(start_span),
    };
    loop {
        let pod = pods.borrow_and_update().clone();
        let requeue = match pod {
            None => {
                worker.teardown(ORPHAN_GRACE_SECONDS, None).await;
                return;
            }
            Some(pod) if pod.metadata.deletion_timestamp.is_some() => {
                worker.terminate(&pod).await;
                RESYNC
            }
            Some(pod) => {
                let started = std::time::Instant::now();
                let span = worker.start_span.as_ref().map_or_else(
                    tracing::Span::none,
                    |start| tracing::info_span!(parent: start, "sync pod"),
                );
                let result = worker.sync(&pod).instrument(span).await;
                worker
                    .ctx
                    .metrics
                    .pod_worker_duration
                    .with_label_values(&["sync"])
                    .observe(started.elapsed().as_secs_f64());
                match result {
                    Ok(requeue) => requeue,
                    Err(error) => {
                        warn!(pod = %worker.key.name, namespace = %worker.key.namespace, %error, "pod sync failed");
                        RESYNC
                    }
                }
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = pods.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(requeue) => {}
        }
    }
}

fn timestamp(nanos: i64) -> Option<Timestamp> {
    (nanos > 0)
        .then(|| Timestamp::from_nanosecond(i128::from(nanos)).ok())
        .flatten()
}

/// The OOM kills of a pod's cgroup and which of them exits explain. On cgroup v2 the pod's
/// `memory.events` counts its containers' kills; on v1 only a container's own cgroup does, so
/// there the count never moves and only the runtime's reasons tell.
#[derive(Debug, Default)]
struct OomLedger {
    /// The count explained so far (`None` until the cgroup is read).
    explained: Option<f64>,
    /// The count now.
    now: Option<f64>,
    /// Since when a kill waits for an exit to own it.
    unowned_since: Option<std::time::Instant>,
}

impl OomLedger {
    /// Takes a reading of the pod cgroup's count.
    fn count(&mut self, count: Option<f64>) {
        let Some(count) = count else { return };
        // the first reading (before containers start), or a recreated cgroup, starts over
        if self.explained.is_none_or(|explained| count < explained) {
            self.explained = Some(count);
        }
        self.now = Some(count);
    }

    fn unexplained(&self) -> bool {
        matches!((self.now, self.explained), (Some(now), Some(explained)) if now > explained)
    }

    /// Whether an exit by SIGKILL owns an unexplained kill (which it then explains).
    fn take(&mut self) -> bool {
        if !self.unexplained() {
            return false;
        }
        self.explained = self.explained.map(|e| e + 1.0);
        true
    }

    /// The runtime reported an OOM kill itself: one kill is explained.
    fn owned(&mut self) {
        if self.unexplained() {
            self.explained = self.explained.map(|e| e + 1.0);
        }
    }

    /// A kill no exit owns for a while (a process its container survived) stops waiting, so
    /// a later exit is not blamed on it.
    fn settle(&mut self, now: std::time::Instant) {
        if !self.unexplained() {
            self.unowned_since = None;
            return;
        }
        let since = *self.unowned_since.get_or_insert(now);
        if now.duration_since(since) >= OOM_SETTLE.unsigned_abs() {
            self.explained = self.now;
            self.unowned_since = None;
        }
    }
}

/// Whether a service-account token issued at `issued`, expiring at `expires`, is renewed at
/// `now`: past 80% of its life or older than a day, as the kubelet's token manager does.
fn token_due(issued: Timestamp, expires: Timestamp, now: Timestamp) -> bool {
    let life = expires.duration_since(issued);
    let age = now.duration_since(issued);
    age.as_secs_f64() >= life.as_secs_f64() * 0.8 || age >= jiff::SignedDuration::from_hours(24)
}

/// Where a container's termination message goes unless its spec says otherwise.
const TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";
/// The most of a termination message file that is reported, as the kubelet does.
const TERMINATION_MESSAGE_BYTES: u64 = 4096;
/// With `FallbackToLogsOnError`: the last this many lines of the log, at most ...
const FALLBACK_LOG_LINES: usize = 80;
/// ... this many bytes.
const FALLBACK_LOG_BYTES: usize = 2048;

/// The termination message of an exited container, as the kubelet reads it: the file mounted
/// at its `terminationMessagePath`, or with `FallbackToLogsOnError` after a failure and an
/// empty file, the end of its log.
fn termination_message(status: &cri::ContainerStatus, container: Option<&Container>) -> String {
    use std::io::{Read as _, Seek as _};
    let path = container
        .and_then(|c| c.termination_message_path.as_deref())
        .filter(|p| !p.is_empty())
        .unwrap_or(TERMINATION_MESSAGE_PATH);
    let mut message = String::new();
    if let Some(mount) = status.mounts.iter().find(|m| m.container_path == path)
        && let Ok(mut file) = std::fs::File::open(&mount.host_path)
    {
        // the end of the file, as the kubelet reads it
        let length = file.metadata().map_or(0, |m| m.len());
        let start = length.saturating_sub(TERMINATION_MESSAGE_BYTES);
        let mut bytes = Vec::new();
        if file.seek(std::io::SeekFrom::Start(start)).is_ok() {
            let _ = file.read_to_end(&mut bytes);
        }
        message = String::from_utf8_lossy(&bytes).into_owned();
    }
    let fallback = container
        .and_then(|c| c.termination_message_policy.as_deref())
        .is_some_and(|p| p == "FallbackToLogsOnError");
    if message.is_empty() && fallback && status.exit_code != 0 && !status.log_path.is_empty() {
        message = log_end(std::path::Path::new(&status.log_path));
    }
    message
}

/// The last lines of a container log in CRI format, as the fallback termination message.
fn log_end(path: &std::path::Path) -> String {
    use std::io::{Read as _, Seek as _};
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    // the last 80 lines fit in the file's last 64 KiB unless they are very long
    let length = file.metadata().map_or(0, |m| m.len());
    let start = length.saturating_sub(64 << 10);
    let mut bytes = Vec::new();
    if file.seek(std::io::SeekFrom::Start(start)).is_err() || file.read_to_end(&mut bytes).is_err()
    {
        return String::new();
    }
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    if start > 0 {
        // drop the line cut by the window
        text = text
            .split_once('\n')
            .map(|(_, rest)| rest.to_owned())
            .unwrap_or_default();
    }
    let options = crate::logs::LogOptions {
        tail_lines: Some(FALLBACK_LOG_LINES),
        ..Default::default()
    };
    let rendered = crate::logs::render(&text, &options);
    let mut cut = rendered.len().saturating_sub(FALLBACK_LOG_BYTES);
    while !rendered.is_char_boundary(cut) {
        cut += 1;
    }
    rendered[cut..].to_owned()
}

/// Joins the runtime's message and the container's termination message as the kubelet does.
fn with_termination_message(mut exit: Exit, message: String) -> Exit {
    if !message.is_empty() {
        if !exit.message.is_empty() {
            exit.message.push_str(": ");
        }
        exit.message.push_str(&message);
    }
    exit
}

fn exit_of(status: &cri::ContainerStatus) -> Exit {
    let reason = if status.reason.is_empty() {
        if status.exit_code == 0 {
            "Completed".to_owned()
        } else {
            "Error".to_owned()
        }
    } else {
        status.reason.clone()
    };
    Exit {
        code: status.exit_code,
        reason,
        message: status.message.clone(),
        started: timestamp(status.started_at),
        finished: timestamp(status.finished_at).unwrap_or_else(Timestamp::now),
    }
}

/// How long an exit by SIGKILL of a memory-limited container may wait for its OOM reason.
const OOM_SETTLE: jiff::SignedDuration = jiff::SignedDuration::from_secs(5);

/// Whether an exit may still turn out to be an OOM kill: SIGKILL (137) with no reason yet,
/// recently. containerd records the OOM event separately and it can trail the exit. (An OOM in
/// the first instants of a container, before containerd 1.6 watches its cgroup, is never
/// reported by the runtime and shows as `Error` with exit code 137.)
fn may_become_oom(exit: &Exit, now: Timestamp) -> bool {
    exit.code == 137 && exit.reason == "Error" && now.duration_since(exit.finished) < OOM_SETTLE
}

/// The pull policy of a container, defaulted as the API server does.
fn pull_policy(container: &Container) -> &str {
    if let Some(policy) = container.image_pull_policy.as_deref() {
        return policy;
    }
    let image = container.image.as_deref().unwrap_or_default();
    let name = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || (name.contains(':') && !name.ends_with(":latest")) {
        "IfNotPresent"
    } else {
        "Always"
    }
}

fn decode_secret(secret: &Secret) -> BTreeMap<String, String> {
    let mut data: BTreeMap<String, String> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect();
    for (k, v) in secret.string_data.iter().flatten() {
        data.insert(k.clone(), v.clone());
    }
    data
}

fn config_map_data(config_map: &ConfigMap) -> BTreeMap<String, String> {
    let mut data = config_map.data.clone().unwrap_or_default();
    for (k, v) in config_map.binary_data.iter().flatten() {
        data.insert(
            k.clone(),
            base64::engine::general_purpose::STANDARD.encode(&v.0),
        );
    }
    data
}

impl Worker {
    fn reference(&self, container: Option<&str>) -> ObjectReference {
        ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(self.key.name.clone()),
            namespace: Some(self.key.namespace.clone()),
            uid: Some(self.key.uid.clone()),
            field_path: container.map(|c| format!("spec.containers{{{c}}}")),
            ..ObjectReference::default()
        }
    }

    async fn event(&self, container: Option<&str>, warning: bool, reason: &str, note: String) {
        let reference = self.reference(container);
        kelson_common::events::publish(&self.ctx.recorder, &reference, warning, reason, note).await;
    }

    fn labels(&self) -> [(&str, &str); 2] {
        [
            (POD_UID_LABEL, self.key.uid.as_str()),
            (NODE_LABEL, self.ctx.node.name.as_str()),
        ]
    }

    /// What the runtime shows for the pod, plus the sandbox's IP.
    async fn observe(&mut self, pod: &Pod) -> crate::cri::Result<(Observed, Option<String>)> {
        let cri = &self.ctx.cri;
        let sandboxes = cri.list_pod_sandboxes(&self.labels()).await?;
        let Some(latest) = sandboxes.iter().max_by_key(|s| s.created_at) else {
            return Ok((Observed::default(), None));
        };
        let ready = latest.state == cri::PodSandboxState::SandboxReady as i32;
        // OOM kills in the pod's cgroup (counted from before its containers start): containerd
        // 1.6 misses one that comes before it watches the container's cgroup
        let oom_count = self.ctx.cgroups.oom_kills_below(&spec::cgroup_parent(pod));
        self.oom.count(oom_count);
        let sandbox = SandboxState {
            id: latest.id.clone(),
            ready,
            attempt: latest.metadata.as_ref().map_or(0, |m| m.attempt),
        };
        let ip = if ready {
            if let Some(ip) = self.sandbox_ips.get(&latest.id) {
                ip.clone()
            } else {
                let status = cri.pod_sandbox_status(&latest.id).await?;
                let ip = status.network.map(|n| n.ip).filter(|ip| !ip.is_empty());
                self.sandbox_ips.insert(latest.id.clone(), ip.clone());
                ip
            }
        } else {
            None
        };
        let mut by_name: BTreeMap<String, Vec<cri::Container>> = BTreeMap::new();
        for container in cri.list_containers(&self.labels()).await? {
            if container.pod_sandbox_id != latest.id {
                continue;
            }
            let name = container
                .metadata
                .as_ref()
                .map(|m| m.name.clone())
                .unwrap_or_default();
            by_name.entry(name).or_default().push(container);
        }
        let specs: Vec<&Container> = pod
            .spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
            .collect();
        let mut containers = BTreeMap::new();
        for (name, mut attempts) in by_name {
            let container = specs.iter().copied().find(|c| c.name == name);
            attempts.sort_by_key(|c| c.metadata.as_ref().map_or(0, |m| m.attempt));
            let newest = attempts.pop().expect("grouped containers are never empty");
            let attempt = newest.metadata.as_ref().map_or(0, |m| m.attempt);
            let status = cri.container_status(&newest.id).await?;
            let state = match cri::ContainerState::try_from(status.state) {
                Ok(cri::ContainerState::ContainerRunning) => RuntimeState::Running(
                    timestamp(status.started_at).unwrap_or_else(Timestamp::now),
                ),
                Ok(cri::ContainerState::ContainerCreated) => RuntimeState::Created,
                _ => {
                    // an exit is read once (its message file, the log's end) and then kept
                    let exit = if let Some(known) = self.exits.get(&newest.id) {
                        known.clone()
                    } else {
                        let mut exit = with_termination_message(
                            exit_of(&status),
                            termination_message(&status, container),
                        );
                        if exit.reason == "OOMKilled" {
                            self.oom.owned();
                        } else if exit.code == 137
                            && exit.reason == "Error"
                            && !self.killed.contains(&newest.id)
                            && self.oom.take()
                        {
                            exit.reason = "OOMKilled".into();
                        }
                        exit
                    };
                    if !may_become_oom(&exit, Timestamp::now()) {
                        self.exits.insert(newest.id.clone(), exit.clone());
                    }
                    RuntimeState::Exited(exit)
                }
            };
            let previous = match attempts.last() {
                Some(previous) => match self.exits.get(&previous.id) {
                    Some(exit) => Some(exit.clone()),
                    None => {
                        let status = cri.container_status(&previous.id).await?;
                        let exit = with_termination_message(
                            exit_of(&status),
                            termination_message(&status, container),
                        );
                        self.exits.insert(previous.id.clone(), exit.clone());
                        Some(exit)
                    }
                },
                None => None,
            };
            // keep the newest two attempts (for `kubectl logs --previous`)
            if attempts.len() > 1 {
                for old in &attempts[..attempts.len() - 1] {
                    if let Err(error) = cri.remove_container(&old.id).await {
                        debug!(%error, "failed to remove an old container");
                    }
                    self.exits.remove(&old.id);
                }
            }
            // a run of crashes starts when the agent first sees the container and again after
            // an attempt ran for 10 minutes (the kubelet's back-off entry expires)
            let ran_long = matches!(&state, RuntimeState::Exited(exit)
                if exit.started.is_some_and(|s| exit.finished.duration_since(s).unsigned_abs() >= plan::BACKOFF_RESET));
            let backoff_from = self.backoff_from.entry(name.clone()).or_insert(attempt);
            if ran_long || *backoff_from > attempt {
                *backoff_from = attempt;
            }
            let backoff_from = *backoff_from;
            containers.insert(
                name,
                ContainerState {
                    id: newest.id.clone(),
                    attempt,
                    state,
                    image_id: status.image_ref.clone(),
                    previous,
                    backoff_from,
                },
            );
        }
        self.oom.settle(std::time::Instant::now());
        Ok((
            Observed {
                sandbox: Some(sandbox),
                containers,
            },
            ip,
        ))
    }

    /// One sync: observe, plan, act, report. Returns when to look again.
    async fn sync(&mut self, pod: &Pod) -> crate::cri::Result<Duration> {
        let (observed, sandbox_ip) = self.observe(pod).await?;
        let now = Timestamp::now();
        let memory_limited = |name: &str| {
            pod.spec.iter().flat_map(|s| s.containers.iter()).any(|c| {
                c.name == name
                    && c.resources
                        .as_ref()
                        .and_then(|r| r.limits.as_ref())
                        .is_some_and(|l| l.contains_key("memory"))
            })
        };
        let settling = observed.containers.iter().any(|(name, c)| {
            matches!(&c.state, RuntimeState::Exited(exit)
                if may_become_oom(exit, now) && memory_limited(name) && !self.killed.contains(&c.id))
        });
        if settling {
            // containerd may record the OOM kill just after the exit; look again shortly
            return Ok(Duration::from_millis(300));
        }
        let pod_ip = if spec::uses_host_network(pod) {
            observed
                .sandbox
                .as_ref()
                .filter(|s| s.ready)
                .map(|_| self.ctx.node.host_ip.clone())
        } else {
            sandbox_ip.clone()
        };
        if self
            .run_probes(pod, &observed, pod_ip.as_deref().unwrap_or_default())
            .await
        {
            // a container was killed; its exit shows at the next look
            return Ok(Duration::ZERO);
        }
        let containers: Vec<Container> = pod
            .spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
            .cloned()
            .collect();
        let tracker = &self.probes;
        let probed = |name: &str| {
            let container = containers.iter().find(|c| c.name == name);
            let id = observed.containers.get(name).map(|c| c.id.as_str());
            match (container, id) {
                (Some(container), Some(id)) => plan::Probed {
                    started: tracker.has_started(container, id),
                    ready: tracker.ready(container, id),
                },
                _ => plan::Probed::default(),
            }
        };
        let plan = plan::plan(pod, &observed, &self.failures, &probed, now);
        self.report(pod, &plan, pod_ip.as_deref()).await;

        let starts = plan
            .steps
            .iter()
            .any(|s| matches!(s, Step::StartContainer { .. }));
        let refresh_due = self
            .volumes_refreshed
            .is_none_or(|at| at.elapsed() >= VOLUME_REFRESH);
        if (starts && self.volumes.is_none())
            || (refresh_due && !kelson_common::pod::is_terminal(pod))
        {
            self.prepare_volumes(pod).await;
        }
        let mut progressed = false;
        for step in &plan.steps {
            match step {
                Step::CreateSandbox { attempt } => {
                    if let Some(old) = &observed.sandbox {
                        self.remove_sandbox(&old.id).await;
                    }
                    let config = spec::sandbox_config(
                        pod,
                        &self.ctx.node.name,
                        &self.ctx.node.dns,
                        *attempt,
                    );
                    let run = self.ctx.cri.run_pod_sandbox(config);
                    match run.instrument(tracing::info_span!("run sandbox")).await {
                        Ok(id) => {
                            debug!(pod = %self.key.name, sandbox = %id, "sandbox started");
                            progressed = true;
                        }
                        Err(error) => {
                            self.event(
                                None,
                                true,
                                "FailedCreatePodSandBox",
                                format!("Failed to create pod sandbox: {}", error.message()),
                            )
                            .await;
                        }
                    }
                    // containers start once the sandbox is observed
                    break;
                }
                Step::StopSandbox => {
                    if let Some(sandbox) = &observed.sandbox {
                        self.ctx.cri.stop_pod_sandbox(&sandbox.id).await?;
                    }
                    // a finished (or evicted) pod's volumes go now, as the kubelet tears
                    // them down: emptyDirs free their disk and memory; its status is final
                    if kelson_common::pod::is_terminal(pod) {
                        self.volumes = None;
                        let directory = self.ctx.pod_directory(&self.key.uid);
                        tokio::task::spawn_blocking(move || {
                            volumes::remove_pod_directory(&directory);
                        })
                        .await
                        .ok();
                    }
                }
                Step::StartContainer {
                    name,
                    attempt,
                    init,
                } => {
                    let Some(sandbox) = &observed.sandbox else {
                        continue;
                    };
                    if self.volumes.is_none() {
                        // the FailedMount event says why; the pod stays ContainerCreating
                        break;
                    }
                    let spec = pod.spec.clone().unwrap_or_default();
                    let container = if *init {
                        spec.init_containers
                            .iter()
                            .flatten()
                            .find(|c| &c.name == name)
                            .cloned()
                    } else {
                        spec.containers.iter().find(|c| &c.name == name).cloned()
                    };
                    let Some(container) = container else {
                        continue;
                    };
                    let ip = pod_ip.clone().unwrap_or_default();
                    let kind = if *init { "init_container" } else { "container" };
                    match self
                        .start_container(
                            pod,
                            &sandbox.id,
                            sandbox.attempt,
                            &container,
                            *attempt,
                            &ip,
                        )
                        .await
                    {
                        Ok(()) => {
                            self.failures.remove(name);
                            let started = &self.ctx.metrics.started_containers;
                            started.with_label_values(&[kind]).inc();
                            progressed = true;
                        }
                        Err(failure) => {
                            let errors = &self.ctx.metrics.started_container_errors;
                            errors.with_label_values(&[&failure.reason, kind]).inc();
                            self.failures.insert(name.clone(), failure);
                        }
                    }
                    if *init {
                        // init containers run one at a time
                        break;
                    }
                }
            }
        }
        for (name, _) in &plan.backing_off {
            let Some(container) = observed.containers.get(name) else {
                continue;
            };
            if self.backoff_reported.insert(container.id.clone()) {
                self.event(
                    Some(name),
                    true,
                    "BackOff",
                    format!(
                        "Back-off restarting failed container {name} in pod {}_{}({})",
                        self.key.name, self.key.namespace, self.key.uid
                    ),
                )
                .await;
            }
        }
        if self.start_observed.is_none()
            && !plan.reports.is_empty()
            && plan
                .reports
                .iter()
                .all(|r| matches!(r.phase, crate::status::ContainerPhase::Running { .. }))
        {
            let elapsed = self.first_seen.elapsed();
            self.start_observed = Some(elapsed);
            // ends once this sync does
            self.start_span = None;
            self.ctx
                .metrics
                .pod_start_duration
                .observe(elapsed.as_secs_f64());
        }
        if progressed {
            return Ok(Duration::ZERO);
        }
        let soonest = plan
            .backing_off
            .iter()
            .map(|(_, until)| until.duration_since(now).unsigned_abs())
            .min()
            .unwrap_or(RESYNC);
        Ok(soonest.min(RESYNC))
    }

    async fn report(&mut self, pod: &Pod, plan: &plan::Plan, pod_ip: Option<&str>) {
        if kelson_common::pod::is_terminal(pod) {
            return;
        }
        let now = Time(Timestamp::now());
        let status = pod_status_with_init(
            pod,
            &plan.init_reports,
            &plan.reports,
            pod_ip,
            &self.ctx.node.host_ip,
            &now,
        );
        let value = serde_json::json!({ "status": status });
        if self.last_status.as_ref() == Some(&value) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.key.namespace);
        match api
            .patch_status(
                &self.key.name,
                &PatchParams::default(),
                &Patch::Merge(&value),
            )
            .await
        {
            Ok(_) => self.last_status = Some(value),
            Err(error) => debug!(pod = %self.key.name, %error, "failed to write pod status"),
        }
    }

    /// Makes sure the image is present, honouring the pull policy and the pull back-off.
    #[tracing::instrument(name = "ensure image", skip_all, fields(container = %container.name))]
    async fn ensure_image(&mut self, container: &Container) -> Result<String, StartFailure> {
        let image = container.image.clone().unwrap_or_default();
        let name = container.name.as_str();
        let cri = self.ctx.cri.clone();
        let present = cri.image_id(&image).await.map_err(|e| StartFailure {
            reason: "ErrImagePull".into(),
            message: e.message(),
        })?;
        let policy = pull_policy(container);
        match (policy, &present) {
            ("Never", Some(_)) | ("IfNotPresent", Some(_)) => {
                self.event(
                    Some(name),
                    false,
                    "Pulled",
                    format!("Container image \"{image}\" already present on machine"),
                )
                .await;
                return Ok(image);
            }
            ("Never", None) => {
                let message =
                    format!("Container image \"{image}\" is not present with pull policy of Never");
                self.event(Some(name), true, "ErrImageNeverPull", message.clone())
                    .await;
                return Err(StartFailure {
                    reason: "ErrImageNeverPull".into(),
                    message,
                });
            }
            _ => {}
        }
        let now = Timestamp::now();
        if let Some(backoff) = self.pulls.get(&image)
            && backoff.until > now
        {
            let message = format!("Back-off pulling image \"{image}\"");
            return Err(StartFailure {
                reason: "ImagePullBackOff".into(),
                message,
            });
        }
        self.event(
            Some(name),
            false,
            "Pulling",
            format!("Pulling image \"{image}\""),
        )
        .await;
        let started = std::time::Instant::now();
        match cri.pull_image(&image).await {
            Ok(_) => {
                self.pulls.remove(&image);
                self.event(
                    Some(name),
                    false,
                    "Pulled",
                    format!(
                        "Successfully pulled image \"{image}\" in {}ms",
                        started.elapsed().as_millis()
                    ),
                )
                .await;
                Ok(image)
            }
            Err(error) if present.is_some() => {
                // offline machines: the local copy stands in for an unreachable registry
                self.event(
                    Some(name),
                    true,
                    "PullFailedUsingLocal",
                    format!(
                        "Failed to pull image \"{image}\", using the local copy: {}",
                        error.message()
                    ),
                )
                .await;
                Ok(image)
            }
            Err(error) => {
                let delay = self.pulls.get(&image).map_or(plan::INITIAL_BACKOFF, |b| {
                    (b.delay * 2).min(plan::MAX_BACKOFF)
                });
                self.pulls.insert(
                    image.clone(),
                    PullBackoff {
                        delay,
                        until: now + jiff::SignedDuration::try_from(delay).unwrap_or_default(),
                    },
                );
                let message = format!("Failed to pull image \"{image}\": {}", error.message());
                self.event(Some(name), true, "Failed", message.clone())
                    .await;
                Err(StartFailure {
                    reason: "ErrImagePull".into(),
                    message,
                })
            }
        }
    }

    /// Looks up the ConfigMaps and Secrets the container's environment refers to.
    async fn env_sources(&self, container: &Container, pod_ip: &str) -> kube::Result<EnvSources> {
        let mut config_maps = Vec::new();
        let mut secrets = Vec::new();
        for from in container.env_from.iter().flatten() {
            if let Some(cm) = &from.config_map_ref {
                config_maps.push(cm.name.clone());
            }
            if let Some(secret) = &from.secret_ref {
                secrets.push(secret.name.clone());
            }
        }
        for var in container.env.iter().flatten() {
            if let Some(from) = &var.value_from {
                if let Some(key) = &from.config_map_key_ref {
                    config_maps.push(key.name.clone());
                }
                if let Some(key) = &from.secret_key_ref {
                    secrets.push(key.name.clone());
                }
            }
        }
        let mut sources = EnvSources {
            pod_ip: pod_ip.to_owned(),
            host_ip: self.ctx.node.host_ip.clone(),
            ..EnvSources::default()
        };
        let cms: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), &self.key.namespace);
        for name in config_maps {
            if let Some(cm) = cms.get_opt(&name).await? {
                sources.config_maps.insert(name, config_map_data(&cm));
            }
        }
        let secret_api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &self.key.namespace);
        for name in secrets {
            if let Some(secret) = secret_api.get_opt(&name).await? {
                sources.secrets.insert(name, decode_secret(&secret));
            }
        }
        Ok(sources)
    }

    #[tracing::instrument(name = "start container", skip_all, fields(container = %container.name, attempt))]
    async fn start_container(
        &mut self,
        pod: &Pod,
        sandbox_id: &str,
        sandbox_attempt: u32,
        container: &Container,
        attempt: u32,
        pod_ip: &str,
    ) -> Result<(), StartFailure> {
        let name = container.name.as_str();
        let image = self.ensure_image(container).await?;
        let (image_uid, image_user) = self
            .ctx
            .cri
            .image_user(&image)
            .await
            .unwrap_or((None, String::new()));
        if let Err(message) = spec::verify_non_root(pod, container, image_uid, &image_user) {
            self.event(Some(name), true, "Failed", format!("Error: {message}"))
                .await;
            return Err(StartFailure {
                reason: "CreateContainerConfigError".into(),
                message,
            });
        }
        let config_error = |message: String| StartFailure {
            reason: "CreateContainerConfigError".into(),
            message,
        };
        let sources = self
            .env_sources(container, pod_ip)
            .await
            .map_err(|e| config_error(e.to_string()))?;
        let env = match spec::environment(pod, container, &sources, &self.ctx.node.allocatable) {
            Ok(env) => env,
            Err(error) => {
                self.event(Some(name), true, "Failed", format!("Error: {error}"))
                    .await;
                return Err(config_error(error.to_string()));
            }
        };
        let mut config = spec::container_config(
            pod,
            container,
            attempt,
            &image,
            &env,
            &self.ctx.node.name,
            self.ctx.node.memory_capacity,
        );
        let paths = self.volumes.clone().unwrap_or_default();
        config.mounts = volumes::container_mounts(pod, container, &paths)
            .map_err(|error| config_error(error.to_string()))?;
        match self.termination_log(container, attempt) {
            Ok(mount) => config.mounts.push(mount),
            Err(error) => {
                return Err(config_error(format!(
                    "failed to create the termination message file: {error}"
                )));
            }
        }
        if !spec::uses_host_network(pod)
            && !config
                .mounts
                .iter()
                .any(|m| m.container_path == "/etc/hosts")
        {
            match self.hosts_file(pod, pod_ip) {
                Ok(path) => config.mounts.push(cri::Mount {
                    container_path: "/etc/hosts".into(),
                    host_path: path.display().to_string(),
                    ..Default::default()
                }),
                Err(error) => {
                    return Err(config_error(format!("failed to write /etc/hosts: {error}")));
                }
            }
        }
        let sandbox_config = spec::sandbox_config(
            pod,
            &self.ctx.node.name,
            &self.ctx.node.dns,
            sandbox_attempt,
        );
        let cri = self.ctx.cri.clone();
        let id = match cri
            .create_container(sandbox_id, config, sandbox_config)
            .await
        {
            Ok(id) => id,
            Err(error) => {
                let message = error.message();
                self.event(Some(name), true, "Failed", format!("Error: {message}"))
                    .await;
                return Err(StartFailure {
                    reason: "CreateContainerError".into(),
                    message,
                });
            }
        };
        self.event(
            Some(name),
            false,
            "Created",
            format!("Created container {name}"),
        )
        .await;
        if let Err(error) = cri.start_container(&id).await {
            let message = error.message();
            self.event(Some(name), true, "Failed", format!("Error: {message}"))
                .await;
            return Err(StartFailure {
                reason: "RunContainerError".into(),
                message,
            });
        }
        self.event(
            Some(name),
            false,
            "Started",
            format!("Started container {name}"),
        )
        .await;
        if let Some(hook) = container
            .lifecycle
            .as_ref()
            .and_then(|l| l.post_start.as_ref())
        {
            let grace = pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
                .unwrap_or(30);
            let timeout = Duration::from_secs(u64::try_from(grace.max(1)).unwrap_or(30));
            if let Err(message) =
                probes::run_hook(&cri, hook, container, &id, pod_ip, timeout).await
            {
                self.event(
                    Some(name),
                    true,
                    "FailedPostStartHook",
                    format!("PostStartHook failed: {message}"),
                )
                .await;
                // as in Kubernetes, a container whose postStart hook fails is killed
                self.killed.insert(id.clone());
                let _ = cri.stop_container(&id, grace).await;
                return Err(StartFailure {
                    reason: "PostStartHookError".into(),
                    message,
                });
            }
        }
        Ok(())
    }

    /// Runs the probes that are due; kills containers whose liveness or startup probe failed.
    /// Returns whether a container was killed.
    async fn run_probes(&mut self, pod: &Pod, observed: &Observed, pod_ip: &str) -> bool {
        let live: Vec<String> = observed.containers.values().map(|c| c.id.clone()).collect();
        self.probes.retain(&live);
        self.killed.retain(|id| live.contains(id));
        let containers = pod
            .spec
            .as_ref()
            .map(|s| s.containers.clone())
            .unwrap_or_default();
        let grace = pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30);
        let mut killed = false;
        for container in &containers {
            let Some(state) = observed.containers.get(&container.name) else {
                continue;
            };
            let RuntimeState::Running(started) = &state.state else {
                continue;
            };
            let age = Timestamp::now().duration_since(*started).unsigned_abs();
            let now = std::time::Instant::now();
            let since = now.checked_sub(age).unwrap_or(now);
            for kind in self.probes.due(container, &state.id, since, now) {
                let probe = match kind {
                    probes::Kind::Startup => container.startup_probe.as_ref(),
                    probes::Kind::Liveness => container.liveness_probe.as_ref(),
                    probes::Kind::Readiness => container.readiness_probe.as_ref(),
                };
                let Some(probe) = probe else { continue };
                let result =
                    probes::check(&self.ctx.cri, probe, container, &state.id, pod_ip).await;
                if let Err(message) = &result {
                    self.event(
                        Some(&container.name),
                        true,
                        "Unhealthy",
                        format!("{} probe failed: {message}", kind.title()),
                    )
                    .await;
                }
                let outcome = self.probes.record(
                    container,
                    &state.id,
                    kind,
                    result,
                    std::time::Instant::now(),
                );
                if let Some(Outcome::Restart(message)) = outcome {
                    self.event(Some(&container.name), false, "Killing", message)
                        .await;
                    let grace = probe.termination_grace_period_seconds.unwrap_or(grace);
                    self.killed.insert(state.id.clone());
                    if let Err(error) = self.ctx.cri.stop_container(&state.id, grace).await {
                        warn!(container = %container.name, %error, "failed to stop an unhealthy container");
                    }
                    killed = true;
                    break;
                }
            }
        }
        killed
    }

    /// The pod's /etc/hosts: localhost and the pod's own name at its IP.
    /// A fresh, empty file for one attempt's termination message, mounted at the container's
    /// `terminationMessagePath` (the container writes it; [`termination_message`] reads it).
    fn termination_log(&self, container: &Container, attempt: u32) -> std::io::Result<cri::Mount> {
        let directory = self
            .ctx
            .pod_directory(&self.key.uid)
            .join("containers")
            .join(&container.name);
        std::fs::create_dir_all(&directory)?;
        // one file per attempt (a retried create truncates it); this attempt's and the
        // previous one's are kept, for `state` and `lastState`
        let path = directory.join(attempt.to_string());
        std::fs::File::create(&path)?;
        // writable by whichever user the container runs as
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o666))?;
        if let Ok(entries) = std::fs::read_dir(&directory) {
            for entry in entries.flatten() {
                let old = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u32>().ok())
                    .is_none_or(|n| n + 1 < attempt || n > attempt);
                if old {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let container_path = container
            .termination_message_path
            .as_deref()
            .filter(|p| !p.is_empty())
            .unwrap_or(TERMINATION_MESSAGE_PATH);
        Ok(cri::Mount {
            container_path: container_path.to_owned(),
            host_path: path.display().to_string(),
            ..Default::default()
        })
    }

    fn hosts_file(&self, pod: &Pod, pod_ip: &str) -> std::io::Result<std::path::PathBuf> {
        let directory = self.ctx.pod_directory(&self.key.uid);
        std::fs::create_dir_all(&directory)?;
        let path = directory.join("etc-hosts");
        let hostname = pod
            .spec
            .as_ref()
            .and_then(|s| s.hostname.clone())
            .unwrap_or_else(|| self.key.name.clone());
        let mut hosts = String::from(
            "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
        );
        if !pod_ip.is_empty() {
            hosts.push_str(&format!("{pod_ip}\t{hostname}\n"));
        }
        for alias in pod
            .spec
            .iter()
            .flat_map(|s| s.host_aliases.iter().flatten())
        {
            hosts.push_str(&format!(
                "{}\t{}\n",
                alias.ip,
                alias.hostnames.clone().unwrap_or_default().join("\t")
            ));
        }
        std::fs::write(&path, hosts)?;
        Ok(path)
    }

    /// Host paths of the pod's persistentVolumeClaim volumes (hostPath or local PVs).
    async fn claim_paths(&self, pod: &Pod) -> Result<BTreeMap<String, std::path::PathBuf>, String> {
        let mut paths = BTreeMap::new();
        let claims: Api<PersistentVolumeClaim> =
            Api::namespaced(self.ctx.client.clone(), &self.key.namespace);
        let volumes_api: Api<PersistentVolume> = Api::all(self.ctx.client.clone());
        for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let Some(source) = &volume.persistent_volume_claim else {
                continue;
            };
            let claim = claims
                .get_opt(&source.claim_name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| {
                    format!("persistentvolumeclaim \"{}\" not found", source.claim_name)
                })?;
            let Some(bound) = claim
                .spec
                .and_then(|s| s.volume_name)
                .filter(|v| !v.is_empty())
            else {
                return Err(format!(
                    "persistentvolumeclaim \"{}\" is not bound",
                    source.claim_name
                ));
            };
            let pv = volumes_api
                .get_opt(&bound)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("persistentvolume \"{bound}\" not found"))?;
            let spec = pv.spec.unwrap_or_default();
            let path = spec
                .host_path
                .map(|h| h.path)
                .or_else(|| spec.local.map(|l| l.path))
                .ok_or_else(|| {
                    format!("persistentvolume \"{bound}\" is neither hostPath nor local")
                })?;
            paths.insert(volume.name.clone(), std::path::PathBuf::from(path));
        }
        Ok(paths)
    }

    /// Sets up (or refreshes) the pod's volumes; a failure is reported once as FailedMount.
    async fn prepare_volumes(&mut self, pod: &Pod) {
        let result = self.try_prepare_volumes(pod).await;
        self.volumes_refreshed = Some(std::time::Instant::now());
        match result {
            Ok(paths) => {
                self.volumes = Some(paths);
                self.volume_error = None;
            }
            Err(message) => {
                if self.volume_error.as_ref() != Some(&message) {
                    self.event(None, true, "FailedMount", message.clone()).await;
                    self.volume_error = Some(message);
                }
                if self.volumes.is_some() {
                    // a running pod keeps its last good content
                    return;
                }
                self.volumes = None;
            }
        }
    }

    /// The pod's service-account token for projected volumes, renewed after 80% of its life.
    async fn service_account_token(&mut self, pod: &Pod) -> Result<Option<String>, String> {
        let source = pod
            .spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .filter_map(|v| v.projected.as_ref())
            .flat_map(|p| p.sources.iter().flatten())
            .find_map(|s| s.service_account_token.clone());
        let Some(source) = source else {
            return Ok(None);
        };
        if let Some((token, issued, expires)) = &self.token
            && !token_due(*issued, *expires, Timestamp::now())
        {
            return Ok(Some(token.clone()));
        }
        let account = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let seconds = source.expiration_seconds.unwrap_or(3600).max(600);
        let mut spec = serde_json::json!({
            "expirationSeconds": seconds,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.key.name, "uid": self.key.uid},
        });
        if let Some(audience) = source.audience.filter(|a| !a.is_empty()) {
            spec["audiences"] = serde_json::json!([audience]);
        }
        let request = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec,
        });
        let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.ctx.client.clone(), &self.key.namespace);
        let response: serde_json::Value = accounts
            .create_subresource(
                "token",
                &account,
                &kube::api::PostParams::default(),
                &request,
            )
            .await
            .map_err(|e| format!("failed to fetch token for serviceaccount {account}: {e}"))?;
        let token = response
            .pointer("/status/token")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| "the token request returned no token".to_owned())?
            .to_owned();
        let issued = Timestamp::now();
        // the server may grant another lifetime than asked: renew by what it granted
        let expires = response
            .pointer("/status/expirationTimestamp")
            .and_then(serde_json::Value::as_str)
            .and_then(|t| t.parse::<Timestamp>().ok())
            .unwrap_or_else(|| issued + jiff::SignedDuration::from_secs(seconds));
        self.token = Some((token.clone(), issued, expires));
        Ok(Some(token))
    }

    async fn try_prepare_volumes(
        &mut self,
        pod: &Pod,
    ) -> Result<BTreeMap<String, std::path::PathBuf>, String> {
        let (config_map_names, secret_names) = volumes::referenced(pod);
        let mut sources = VolumeSources::default();
        let cms: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), &self.key.namespace);
        for name in config_map_names {
            if let Some(cm) = cms.get_opt(&name).await.map_err(|e| e.to_string())? {
                sources.config_maps.insert(name, cm);
            }
        }
        let secrets: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &self.key.namespace);
        for name in secret_names {
            if let Some(secret) = secrets.get_opt(&name).await.map_err(|e| e.to_string())? {
                sources.secrets.insert(name, secret);
            }
        }
        let claims = self.claim_paths(pod).await?;
        let token = self.service_account_token(pod).await?;
        let directory = self.ctx.pod_directory(&self.key.uid);
        volumes::prepare(pod, &directory, &sources, token.as_deref(), &claims).map_err(
            |(volume, error)| format!("MountVolume.SetUp failed for volume \"{volume}\" : {error}"),
        )
    }

    async fn remove_sandbox(&self, id: &str) {
        let cri = &self.ctx.cri;
        if let Err(error) = cri.stop_pod_sandbox(id).await
            && !error.is_not_found()
        {
            warn!(sandbox = %id, %error, "failed to stop a sandbox");
        }
        if let Err(error) = cri.remove_pod_sandbox(id).await
            && !error.is_not_found()
        {
            warn!(sandbox = %id, %error, "failed to remove a sandbox");
        }
    }

    /// Stops every container of the pod within `grace_seconds` and removes its sandboxes, log
    /// directory and cgroups.
    async fn teardown(&self, grace_seconds: i64, pod: Option<&Pod>) {
        let cri = self.ctx.cri.clone();
        let labels = self.labels();
        match cri.list_containers(&labels).await {
            Ok(containers) => {
                let running: Vec<cri::Container> = containers
                    .into_iter()
                    .filter(|c| c.state == cri::ContainerState::ContainerRunning as i32)
                    .collect();
                let worker = self;
                let stops = running.iter().map(|c| {
                    let cri = cri.clone();
                    let name = c
                        .metadata
                        .as_ref()
                        .map(|m| m.name.clone())
                        .unwrap_or_default();
                    let spec = pod.and_then(|p| {
                        p.spec
                            .as_ref()?
                            .containers
                            .iter()
                            .find(|spec| spec.name == name)
                            .cloned()
                    });
                    let pod_ip = pod
                        .and_then(|p| p.status.as_ref()?.pod_ip.clone())
                        .unwrap_or_default();
                    async move {
                        worker
                            .event(
                                Some(&name),
                                false,
                                "Killing",
                                format!("Stopping container {name}"),
                            )
                            .await;
                        let mut remaining = grace_seconds;
                        if let Some(spec) = &spec
                            && let Some(hook) =
                                spec.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref())
                        {
                            let started = std::time::Instant::now();
                            let timeout = Duration::from_secs(
                                u64::try_from(grace_seconds.max(1)).unwrap_or(1),
                            );
                            if let Err(message) =
                                probes::run_hook(&cri, hook, spec, &c.id, &pod_ip, timeout).await
                            {
                                worker
                                    .event(
                                        Some(&name),
                                        true,
                                        "FailedPreStopHook",
                                        format!("PreStopHook failed: {message}"),
                                    )
                                    .await;
                            }
                            let spent = i64::try_from(started.elapsed().as_secs()).unwrap_or(0);
                            remaining = (grace_seconds - spent).max(2);
                        }
                        if let Err(error) = cri.stop_container(&c.id, remaining).await {
                            warn!(container = %name, %error, "failed to stop a container");
                        }
                    }
                });
                futures::future::join_all(stops).await;
            }
            Err(error) => warn!(%error, "failed to list the pod's containers"),
        }
        match cri.list_pod_sandboxes(&labels).await {
            Ok(sandboxes) => {
                for sandbox in sandboxes {
                    self.remove_sandbox(&sandbox.id).await;
                }
            }
            Err(error) => warn!(%error, "failed to list the pod's sandboxes"),
        }
        volumes::remove_pod_directory(&self.ctx.pod_directory(&self.key.uid));
        super::cleanup_pod_files(&self.key);
    }

    /// Graceful deletion: stop, remove, then confirm to the API server.
    async fn terminate(&mut self, pod: &Pod) {
        if !self.terminated {
            let grace = pod
                .metadata
                .deletion_grace_period_seconds
                .or_else(|| {
                    pod.spec
                        .as_ref()
                        .and_then(|s| s.termination_grace_period_seconds)
                })
                .unwrap_or(30)
                .max(0);
            info!(pod = %self.key.name, namespace = %self.key.namespace, grace, "stopping pod");
            self.teardown(grace, Some(pod)).await;
            self.terminated = true;
        }
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.key.namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.key.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&self.key.name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
            Err(error) => warn!(pod = %self.key.name, %error, "failed to confirm a pod deletion"),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn exited(code: i32, mounts: Vec<cri::Mount>, log: &std::path::Path) -> cri::ContainerStatus {
        cri::ContainerStatus {
            exit_code: code,
            mounts,
            log_path: log.display().to_string(),
            ..Default::default()
        }
    }

    fn container(spec: serde_json::Value) -> Container {
        serde_json::from_value(spec).unwrap()
    }

    #[test]
    fn termination_messages_as_the_kubelet_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("message");
        let log = dir.path().join("0.log");
        let mut text = String::new();
        for i in 0..100 {
            text.push_str(&format!("2026-11-24T00:00:00.{i:09}Z stdout F line {i}\n"));
        }
        text.push_str("2026-11-24T00:00:01.000000000Z stderr P panic: \n");
        text.push_str("2026-11-24T00:00:01.000000001Z stderr F boom\n");
        std::fs::write(&log, text).unwrap();
        let mount = |path: &str| cri::Mount {
            container_path: path.into(),
            host_path: file.display().to_string(),
            ..Default::default()
        };

        // the file at the default path: its last 4096 bytes
        std::fs::write(&file, format!("{}{}", "x".repeat(5000), "y".repeat(96))).unwrap();
        let plain = container(json!({"name": "c"}));
        let status = exited(1, vec![mount("/dev/termination-log")], &log);
        let message = termination_message(&status, Some(&plain));
        assert_eq!(message.len(), 4096);
        assert!(message.ends_with(&"y".repeat(96)));

        // a custom path; the file wins over the logs
        std::fs::write(&file, "disk full").unwrap();
        let custom = container(json!({"name": "c", "terminationMessagePath": "/tmp/why",
            "terminationMessagePolicy": "FallbackToLogsOnError"}));
        let status = exited(1, vec![mount("/tmp/why")], &log);
        assert_eq!(termination_message(&status, Some(&custom)), "disk full");
        // a mount at another path is not the message
        let status = exited(1, vec![mount("/dev/termination-log")], &log);
        let fallback = termination_message(&status, Some(&custom));
        // an empty file after a failure: the log's last 80 lines, partial lines joined
        assert!(fallback.ends_with("line 99\npanic: boom\n"), "{fallback}");
        assert!(fallback.starts_with("line 21\n"), "{fallback}");
        // not after a success, and not without the policy
        let status = exited(0, vec![], &log);
        assert_eq!(termination_message(&status, Some(&custom)), "");
        let status = exited(1, vec![], &log);
        assert_eq!(termination_message(&status, Some(&plain)), "");
    }

    #[test]
    fn oom_kills_are_owned_once() {
        let start = std::time::Instant::now();
        let mut ledger = OomLedger::default();
        // no cgroup yet, then the count before any container runs
        ledger.count(None);
        assert!(!ledger.take());
        ledger.count(Some(2.0));
        assert!(
            !ledger.take(),
            "kills before this agent looked are not blamed"
        );
        // one kill, owned by the first SIGKILL exit only
        ledger.count(Some(3.0));
        assert!(ledger.take());
        assert!(!ledger.take());
        // one the runtime reported itself is not charged to another exit
        ledger.count(Some(4.0));
        ledger.owned();
        assert!(!ledger.take());
        // one no exit owns stops waiting after a while
        ledger.count(Some(5.0));
        ledger.settle(start);
        ledger.settle(start + std::time::Duration::from_secs(6));
        assert!(!ledger.take());
        // a recreated cgroup starts over
        ledger.count(Some(0.0));
        ledger.count(Some(1.0));
        assert!(ledger.take());
    }

    #[test]
    fn tokens_renew_after_80_percent_of_their_life_or_a_day() {
        let at = |seconds: i64| Timestamp::from_second(1_800_000_000 + seconds).unwrap();
        // a ten-minute token
        assert!(!token_due(at(0), at(600), at(479)));
        assert!(token_due(at(0), at(600), at(480)));
        // a year-long one still renews daily
        assert!(!token_due(at(0), at(365 * 86_400), at(86_399)));
        assert!(token_due(at(0), at(365 * 86_400), at(86_400)));
        // one that is already expired (a clock step) at once
        assert!(token_due(at(0), at(0), at(0)));
    }

    #[test]
    fn fallback_keeps_the_last_2048_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        let long = "é".repeat(700);
        let mut text = String::new();
        for _ in 0..3 {
            text.push_str(&format!("2026-11-24T00:00:00Z stdout F {long}\n"));
        }
        std::fs::write(&log, text).unwrap();
        let end = log_end(&log);
        assert!(end.len() <= 2048 && end.len() > 2000, "{}", end.len());
        assert!(end.ends_with("é\n"));
        assert_eq!(
            with_termination_message(
                Exit {
                    code: 1,
                    reason: "Error".into(),
                    message: "runtime says".into(),
                    started: None,
                    finished: Timestamp::UNIX_EPOCH,
                },
                "app says".into()
            )
            .message,
            "runtime says: app says"
        );
    }
}
