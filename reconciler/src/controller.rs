//! The Application controller: source → render → plan (server-side dry-run) → apply (staged)
//! → prune (guarded) → health → status, history and audit. Level-triggered: every reconcile
//! starts from Git and the live objects, so a missed event only delays, never loses, a change.
//!
//! Triggers: the Application changing (spec or the requested-at annotation), any managed object
//! changing (one watch per kind in use, filtered by the application label: drift is seen within
//! a second), and the polling interval.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kelson_common::events::{Recorder, Reporter};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::ApiResource;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, warn};

use crate::api::{
    APP_LABEL, Application, ApplicationStatus, Condition, HealthStatus, HistoryEntry,
    InventoryEntry, PRUNE_ANNOTATION, REQUESTED_AT_ANNOTATION, SYNC_WAVE_ANNOTATION, SyncStatus,
    TRACKING_ANNOTATION,
};
use crate::apply::{self, Kinds};
use crate::audit::AuditLog;
use crate::health::{self, Health, Verdict};
use crate::inventory::{ObjectId, PrunePlan, plan_prune};
use crate::metrics::Metrics;
use crate::render::{self, Manifest, RenderError};
use crate::source::{CommitInfo, Sources};
use crate::triggers::Triggers;

/// Threads doing Git work at once.
const GIT_THREADS: usize = 4;
/// Applications reconciled at once.
const CONCURRENT_RECONCILES: u16 = 16;

/// History entries kept in status (the audit log keeps all).
pub const HISTORY_IN_STATUS: usize = 10;

/// The reconciler's settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Repository caches and the audit log live here.
    pub data_dir: PathBuf,
    /// Polling interval of Applications that set none.
    pub default_interval: Duration,
    /// Where to serve webhooks and metrics (None: not at all).
    pub listen: Option<std::net::SocketAddr>,
    /// Namespace of the webhook Secret.
    pub namespace: String,
    /// Counts the requests of the reconciler's API client (served with its metrics).
    pub client_metrics: Arc<kelson_common::client_metrics::ClientMetrics>,
    /// The ServiceAccount (of each Application's namespace) Applications that name none sync
    /// as (Flux's `--default-service-account`); `None`: the reconciler's own identity.
    pub default_service_account: Option<String>,
}

impl Config {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            default_interval: Duration::from_secs(60),
            listen: None,
            namespace: "kube-system".into(),
            client_metrics: Arc::default(),
            default_service_account: None,
        }
    }

    pub fn audit_path(&self) -> PathBuf {
        self.data_dir.join("audit.log")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Other(String),
}

type RenderKey = (String, String, String, String);

/// Shared state of all reconciles.
pub struct Context {
    /// The cluster the Applications live in.
    home: Arc<Target>,
    /// Other clusters Applications deploy to, by the digest of their kubeconfig.
    remotes: Mutex<HashMap<String, Arc<Target>>>,
    /// Targets acting as a ServiceAccount, by cluster and user.
    impersonated: Mutex<HashMap<(String, String), Arc<Target>>>,
    sources: Sources,
    audit: AuditLog,
    recorder: Recorder,
    config: Config,
    renders: Mutex<HashMap<RenderKey, Arc<Vec<Manifest>>>>,
    triggers: Arc<Triggers>,
    metrics: Arc<Metrics>,
    verifier: Arc<crate::verify::Verifier>,
    /// Git work (fetch, tree reads, exports, verification) runs on at most this many threads:
    /// each libgit2 thread keeps its own allocator arena and pack windows.
    git_slots: tokio::sync::Semaphore,
}

/// A cluster objects are applied to: its kinds and the watches of its managed objects.
struct Target {
    /// `home`, or the digest of the kubeconfig of another cluster.
    cluster: String,
    kinds: Kinds,
    drift: Arc<DriftWatches>,
}

impl Target {
    fn new(
        cluster: String,
        client: Client,
        trigger: tokio::sync::mpsc::UnboundedSender<ObjectRef<Application>>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            cluster,
            kinds: Kinds::new(client.clone()),
            drift: Arc::new(DriftWatches {
                client,
                watching: Mutex::new(HashSet::new()),
                trigger,
                shutdown,
            }),
        })
    }

    /// The same cluster, acting as `user` (drift is still watched with this target's own
    /// client: the watches only wake Applications).
    fn impersonating(&self, user: &str) -> Arc<Self> {
        Arc::new(Self {
            cluster: self.cluster.clone(),
            kinds: Kinds::new(impersonating(self.kinds.client(), user)),
            drift: self.drift.clone(),
        })
    }
}

/// A client that sends every request of `client` as `user` (`Impersonate-User`): the API
/// server checks that `client` may impersonate, then authorizes each request as `user`.
fn impersonating(client: &Client, user: &str) -> Client {
    let base = client.clone();
    let value = http::HeaderValue::from_str(user).ok();
    let service = tower::service_fn(move |mut request: http::Request<kube::client::Body>| {
        let base = base.clone();
        if let Some(value) = &value {
            request
                .headers_mut()
                .insert("impersonate-user", value.clone());
        }
        async move { base.send(request).await }
    });
    Client::new(service, client.default_namespace().to_owned())
}

impl Context {
    /// The state shared by reconciles: `data_dir` holds repository caches and the audit log;
    /// drift and pushes wake Applications through `trigger`.
    fn new(
        client: Client,
        config: Config,
        controller: &str,
        triggers: Arc<Triggers>,
        metrics: Arc<Metrics>,
        trigger: tokio::sync::mpsc::UnboundedSender<ObjectRef<Application>>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            home: Target::new("home".into(), client.clone(), trigger, shutdown),
            remotes: Mutex::new(HashMap::new()),
            impersonated: Mutex::new(HashMap::new()),
            sources: Sources::new(config.data_dir.join("repositories")),
            audit: AuditLog::open(config.audit_path())?,
            recorder: Recorder::new(
                client,
                Reporter {
                    controller: controller.into(),
                    instance: None,
                },
            ),
            renders: Mutex::new(HashMap::new()),
            triggers,
            metrics,
            verifier: Arc::default(),
            git_slots: tokio::sync::Semaphore::new(GIT_THREADS),
            config,
        })
    }
}

/// Watches of managed objects, one per kind in use.
struct DriftWatches {
    client: Client,
    watching: Mutex<HashSet<String>>,
    trigger: tokio::sync::mpsc::UnboundedSender<ObjectRef<Application>>,
    shutdown: CancellationToken,
}

impl DriftWatches {
    /// Starts watching objects of `resource` carrying the application label, once.
    fn ensure(&self, resource: &ApiResource) {
        let key = format!("{}/{}", resource.api_version, resource.plural);
        if !self.watching.lock().insert(key) {
            return;
        }
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), resource);
        let trigger = self.trigger.clone();
        let shutdown = self.shutdown.clone();
        let config = watcher::Config::default().labels(APP_LABEL);
        tokio::spawn(async move {
            let mut events = std::pin::pin!(
                watcher(api, config)
                    .default_backoff()
                    .touched_objects()
                    .take_until(shutdown.cancelled_owned())
            );
            while let Some(event) = events.next().await {
                let Ok(object) = event else { continue };
                if let Some(app) = owner_of(object.annotations().get(TRACKING_ANNOTATION)) {
                    let _ = trigger.send(app);
                }
            }
        });
    }
}

/// The Application named by a tracking annotation `APPNS/APPNAME:…`.
fn owner_of(tracking: Option<&String>) -> Option<ObjectRef<Application>> {
    let (app, _) = tracking?.split_once(':')?;
    let (namespace, name) = app.split_once('/')?;
    Some(ObjectRef::new(name).within(namespace))
}

/// The tracking annotation of object `id` applied by `app`.
fn tracking_id(app: &Application, id: &ObjectId) -> String {
    format!(
        "{}/{}:{}/{}:{}/{}",
        app.namespace().unwrap_or_default(),
        app.name_any(),
        id.group,
        id.kind,
        id.namespace,
        id.name
    )
}

/// The application label's value: `NAMESPACE.NAME`, or a digest when too long for a label.
fn app_label(app: &Application) -> String {
    let value = format!("{}.{}", app.namespace().unwrap_or_default(), app.name_any());
    if value.len() <= 63 {
        value
    } else {
        render::digest(&[Value::from(value)])[7..30].to_owned()
    }
}

/// Parses `90s`, `5m`, `1h`, `1h30m`, `250ms`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    kelson_common::duration::parse(text, false)
}

fn now() -> String {
    jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Sets a condition, keeping its transition time when the status did not change.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    time: &str,
) {
    let status = if status { "True" } else { "False" };
    let transition = conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| time.to_owned());
    conditions.retain(|c| c.type_ != type_);
    conditions.push(Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        observed_generation: generation,
        last_transition_time: transition,
    });
    conditions.sort_by_key(|c| match c.type_.as_str() {
        "Ready" => 0,
        "Reconciling" => 1,
        _ => 2,
    });
}

/// Where an Application stands, in kstatus's terms.
#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// Ready=True.
    Ready,
    /// Ready=False, Reconciling=True: working on it, or retrying.
    Reconciling,
    /// Ready=False, Stalled=True: stays so until the spec or the repository changes.
    Stalled,
    /// Ready=False and neither: suspended, or waiting for a manual sync.
    Idle,
}

/// Sets Ready, Reconciling and Stalled for `state`; the message goes on Ready and on the
/// condition that is True.
fn set_kstatus(
    conditions: &mut Vec<Condition>,
    state: State,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    time: &str,
) {
    let ready = state == State::Ready;
    set_condition(
        conditions, "Ready", ready, reason, message, generation, time,
    );
    let reconciling = state == State::Reconciling;
    let retrying = if reconciling && reason != "Progressing" {
        "ProgressingWithRetry"
    } else {
        reason
    };
    let text = |on: bool| if on { message } else { "" };
    set_condition(
        conditions,
        "Reconciling",
        reconciling,
        retrying,
        text(reconciling),
        generation,
        time,
    );
    let stalled = state == State::Stalled;
    set_condition(
        conditions,
        "Stalled",
        stalled,
        reason,
        text(stalled),
        generation,
        time,
    );
}

/// One object to apply.
struct Desired {
    id: ObjectId,
    resource: ApiResource,
    object: Value,
    location: String,
    wave: i64,
}

/// What a reconcile found and did.
#[derive(Default)]
struct Attempt {
    commit: Option<CommitInfo>,
    digest: String,
    /// Ready=False with this reason and message, and whether it is Stalled.
    failure: Option<(String, String, bool)>,
    out_of_sync: Vec<String>,
    applied: Vec<String>,
    pruned: Vec<String>,
    changes: Vec<String>,
    inventory: Option<Vec<InventoryEntry>>,
    health: Option<Verdict>,
    synced: bool,
    drift_corrected: bool,
}

impl Context {
    /// Renders `commit` of the Application's source (cached by commit, path and options).
    #[tracing::instrument(name = "render", skip_all, fields(commit = %commit.sha))]
    async fn render(
        &self,
        app: &Application,
        commit: &CommitInfo,
    ) -> Result<Arc<Vec<Manifest>>, RenderError> {
        let source = &app.spec.source;
        let path = source.path.clone().unwrap_or_default();
        let directory = source.directory.clone().unwrap_or_default();
        let key = (
            source.repo_url.clone(),
            commit.sha.clone(),
            path.clone(),
            serde_json::to_string(&directory).unwrap_or_default(),
        );
        if let Some(found) = self.renders.lock().get(&key) {
            return Ok(found.clone());
        }
        let label = if path.is_empty() {
            ".".to_owned()
        } else {
            path.clone()
        };
        let sources = self.sources.clone();
        let (url, sha) = (source.repo_url.clone(), commit.sha.clone());
        let recurse = directory.recurse.unwrap_or(true);
        let read_path = path.clone();
        let failed = |message: String| RenderError {
            file: label.clone(),
            line: 0,
            message,
        };
        let _slot = self.git_slots.acquire().await;
        let files =
            tokio::task::spawn_blocking(move || sources.read(&url, &sha, &read_path, recurse))
                .await
                .map_err(|e| failed(e.to_string()))?
                .map_err(|e| failed(e.to_string()))?;
        let manifests = if render::is_kustomization(&files) {
            let work = tempfile::tempdir().map_err(|e| failed(e.to_string()))?;
            let sources = self.sources.clone();
            let (url, sha, dir) = (
                source.repo_url.clone(),
                commit.sha.clone(),
                work.path().to_owned(),
            );
            tokio::task::spawn_blocking(move || sources.export(&url, &sha, &dir))
                .await
                .map_err(|e| failed(e.to_string()))?
                .map_err(|e| failed(e.to_string()))?;
            render_files(&files, &path, &directory, Some(&work.path().join(&path))).await?
        } else {
            render_files(&files, &path, &directory, None).await?
        };
        let manifests = Arc::new(manifests);
        let mut renders = self.renders.lock();
        if renders.len() >= 256 {
            renders.clear();
        }
        renders.insert(key, manifests.clone());
        Ok(manifests)
    }

    /// The cluster `app` deploys to, as the identity it syncs as: its ServiceAccount when it
    /// names one, else the reconciler's.
    async fn target_for(&self, app: &Application) -> Result<Arc<Target>, String> {
        let cluster = self.cluster_for(app).await?;
        Ok(self.acting_as(app, &cluster))
    }

    /// `cluster` as the Application's ServiceAccount, when it names one.
    fn acting_as(&self, app: &Application, cluster: &Arc<Target>) -> Arc<Target> {
        let Some(account) = app
            .spec
            .service_account_name
            .as_deref()
            .or(self.config.default_service_account.as_deref())
            .filter(|a| !a.is_empty())
        else {
            return cluster.clone();
        };
        let user = format!(
            "system:serviceaccount:{}:{account}",
            app.namespace().unwrap_or_default()
        );
        let key = (cluster.cluster.clone(), user);
        let mut impersonated = self.impersonated.lock();
        impersonated
            .entry(key)
            .or_insert_with_key(|(_, user)| cluster.impersonating(user))
            .clone()
    }

    /// The cluster `app` deploys to: this one, or the one of the kubeconfig in the Secret its
    /// destination names (clients cached by the kubeconfig's digest).
    async fn cluster_for(&self, app: &Application) -> Result<Arc<Target>, String> {
        let Some(reference) = &app.spec.destination.kube_config else {
            return Ok(self.home.clone());
        };
        let namespace = app.namespace().unwrap_or_default();
        let name = &reference.secret_ref.name;
        let data = secret_data(self, app, name, "the destination's kubeconfig").await?;
        let key = reference.key.as_deref();
        let bytes = match key {
            Some(key) => data.get(key),
            None => data.get("value").or_else(|| data.get("value.yaml")),
        }
        .ok_or_else(|| {
            format!(
                "Secret {namespace}/{name} has no kubeconfig under {}",
                key.unwrap_or("value or value.yaml")
            )
        })?;
        let digest = render::digest(&[Value::from(String::from_utf8_lossy(&bytes.0).into_owned())]);
        if let Some(found) = self.remotes.lock().get(&digest) {
            return Ok(found.clone());
        }
        let kubeconfig: kube::config::Kubeconfig = serde_yaml::from_slice(&bytes.0)
            .map_err(|e| format!("Secret {namespace}/{name}: not a kubeconfig: {e}"))?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .map_err(|e| format!("Secret {namespace}/{name}: {e}"))?;
        let client =
            Client::try_from(config).map_err(|e| format!("Secret {namespace}/{name}: {e}"))?;
        let target = Target::new(
            digest.clone(),
            client,
            self.home.drift.trigger.clone(),
            self.home.drift.shutdown.clone(),
        );
        self.remotes.lock().insert(digest, target.clone());
        Ok(target)
    }

    /// Resolves each manifest's kind and fills in namespace, label and tracking annotation.
    /// Kinds the server does not know yet (their definition comes in this same revision) are
    /// returned separately, to be resolved after the definitions are applied.
    async fn prepare<'m>(
        &self,
        kinds: &Kinds,
        app: &Application,
        manifests: &'m [Manifest],
    ) -> Result<(Vec<Desired>, Vec<&'m Manifest>), Error> {
        let namespace = destination_namespace(app);
        let mut desired = Vec::new();
        let mut unknown = Vec::new();
        for manifest in manifests {
            match kinds
                .resolve(manifest.api_version(), manifest.kind())
                .await?
            {
                Some((resource, namespaced)) => {
                    desired.push(prepared(app, manifest, resource, namespaced, &namespace));
                }
                None => unknown.push(manifest),
            }
        }
        Ok((desired, unknown))
    }
}

/// Renders the files of `path`: a kustomization (built in `kustomize_dir`, where the tree is
/// on disk) or a plain directory. File names in errors are relative to the repository.
async fn render_files(
    files: &crate::source::Files,
    path: &str,
    directory: &crate::api::Directory,
    kustomize_dir: Option<&std::path::Path>,
) -> Result<Vec<Manifest>, RenderError> {
    if render::is_kustomization(files) {
        let kustomization = render::KUSTOMIZATION_FILES
            .iter()
            .find(|f| files.contains_key(**f))
            .copied()
            .unwrap_or("kustomization.yaml");
        let shown = if path.is_empty() {
            kustomization.to_owned()
        } else {
            format!("{path}/{kustomization}")
        };
        let Some(dir) = kustomize_dir else {
            return Err(RenderError {
                file: shown,
                line: 0,
                message: "kustomization without a directory".into(),
            });
        };
        return render::render_kustomize(dir, &shown).await;
    }
    let selection =
        render::Selection::new(directory.include.as_deref(), directory.exclude.as_deref())?;
    let mut manifests = render::render_directory(files, &selection).map_err(|mut error| {
        if !path.is_empty() {
            error.file = format!("{path}/{}", error.file);
        }
        error
    })?;
    if !path.is_empty() {
        for m in &mut manifests {
            m.file = format!("{path}/{}", m.file);
        }
    }
    Ok(manifests)
}

/// What a sync of an Application would change: per object the redacted diff, and what would
/// be pruned. From a local directory (a work tree: "preview my change") or a revision.
#[derive(Debug, Default)]
pub struct Preview {
    /// The commit rendered, or the local directory.
    pub revision: String,
    /// (object, diff) for every object that would change.
    pub changes: Vec<(String, String)>,
    /// Objects that would be pruned (or left, when pruning is off or refused: see `prune_note`).
    pub prune: Vec<String>,
    pub prune_note: Option<String>,
    /// Objects that render and match the cluster.
    pub unchanged: usize,
}

/// Computes a [`Preview`] of `app`: from `local` (a directory on this machine holding the
/// Application's path) or from `revision` (default: the Application's target revision).
pub async fn preview(
    client: Client,
    app: &Application,
    local: Option<&std::path::Path>,
    revision: Option<&str>,
    cache_dir: &std::path::Path,
) -> anyhow::Result<Preview> {
    let (trigger, _triggers) = tokio::sync::mpsc::unbounded_channel();
    let ctx = Context::new(
        client,
        Config::new(cache_dir),
        "kelson-cli",
        Triggers::new(trigger.clone()),
        Arc::new(Metrics::new()),
        trigger,
        CancellationToken::new(),
    )?;
    let directory = app.spec.source.directory.clone().unwrap_or_default();
    let mut preview = Preview::default();
    let manifests = match local {
        Some(dir) => {
            let files = crate::source::read_local(dir, directory.recurse.unwrap_or(true))?;
            preview.revision = dir.display().to_string();
            render_files(&files, "", &directory, Some(dir)).await?
        }
        None => {
            let sources = ctx.sources.clone();
            let url = app.spec.source.repo_url.clone();
            let rev = revision
                .map(str::to_owned)
                .or_else(|| app.spec.source.target_revision.clone())
                .unwrap_or_else(|| "HEAD".into());
            let credentials = credentials_of(app, &ctx)
                .await
                .map_err(anyhow::Error::msg)?;
            let _slot = ctx.git_slots.acquire().await;
            let commit = tokio::task::spawn_blocking(move || {
                sources.resolve(&url, &rev, credentials.as_ref())
            })
            .await??;
            preview.revision = commit.sha.clone();
            ctx.render(app, &commit).await?.as_ref().clone()
        }
    };
    let target = ctx.target_for(app).await.map_err(anyhow::Error::msg)?;
    let (desired, unknown) = ctx.prepare(&target.kinds, app, &manifests).await?;
    for m in unknown {
        preview.changes.push((
            format!("{} {}", m.kind(), m.name()),
            format!(
                "(the server has no kind {} in {} yet)\n",
                m.kind(),
                m.api_version()
            ),
        ));
    }
    let mut rendered = BTreeSet::new();
    for d in &desired {
        rendered.insert(d.id.inventory_id());
        let api = target.kinds.api(&d.resource, &d.id.namespace);
        let live = api
            .get_opt(&d.id.name)
            .await?
            .map(|l| serde_json::to_value(l).unwrap_or_default());
        let object = with_ignored(app, d, live.as_ref());
        let planned = match apply::apply(&api, &d.id.name, &object, true).await {
            Ok(planned) => planned,
            Err(error) => {
                preview.changes.push((
                    d.id.display(),
                    format!("! {}: {}\n", d.location, kube_message(&error)),
                ));
                continue;
            }
        };
        if apply::changes(live.as_ref(), &planned).is_empty() {
            preview.unchanged += 1;
        } else {
            preview
                .changes
                .push((d.id.display(), apply::render_diff(live.as_ref(), &planned)));
        }
    }
    let inventory = app.status.clone().unwrap_or_default().inventory;
    let max_percent = app.spec.sync_policy.max_prune_percent.unwrap_or(50);
    match plan_prune(&inventory, &rendered, max_percent) {
        PrunePlan::Delete(stale) => {
            preview.prune = stale.iter().map(|e| display_id(&e.id)).collect()
        }
        PrunePlan::Refused(reason) => preview.prune_note = Some(reason),
    }
    if !app
        .spec
        .sync_policy
        .automated
        .as_ref()
        .is_some_and(|a| a.prune)
        && !preview.prune.is_empty()
    {
        preview.prune_note =
            Some("pruning is off for this Application: these would be left in place".into());
    }
    Ok(preview)
}

fn destination_namespace(app: &Application) -> String {
    app.spec
        .destination
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| app.namespace().unwrap_or_else(|| "default".into()))
}

fn prepared(
    app: &Application,
    manifest: &Manifest,
    resource: ApiResource,
    namespaced: bool,
    namespace: &str,
) -> Desired {
    let mut object = manifest.object.clone();
    let metadata = object
        .as_object_mut()
        .and_then(|o| o.get_mut("metadata"))
        .and_then(Value::as_object_mut)
        .expect("render checked metadata");
    if namespaced {
        if metadata
            .get("namespace")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            metadata.insert("namespace".into(), Value::from(namespace));
        }
    } else {
        metadata.remove("namespace");
    }
    let id = ObjectId {
        group: resource.group.clone(),
        kind: resource.kind.clone(),
        namespace: metadata
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        name: manifest.name().to_owned(),
    };
    let wave = metadata
        .get("annotations")
        .and_then(|a| a.get(SYNC_WAVE_ANNOTATION))
        .and_then(Value::as_str)
        .and_then(|w| w.trim().parse().ok())
        .unwrap_or(0);
    let labels = metadata.entry("labels").or_insert_with(|| json!({}));
    if let Some(labels) = labels.as_object_mut() {
        labels.insert(APP_LABEL.into(), Value::from(app_label(app)));
    }
    let annotations = metadata.entry("annotations").or_insert_with(|| json!({}));
    if let Some(annotations) = annotations.as_object_mut() {
        annotations.insert(
            TRACKING_ANNOTATION.into(),
            Value::from(tracking_id(app, &id)),
        );
    }
    Desired {
        id,
        resource,
        object,
        location: manifest.location(),
        wave,
    }
}

/// The object to apply: `d` with the Application's ignored fields as the cluster has them.
fn with_ignored(app: &Application, d: &Desired, live: Option<&Value>) -> Value {
    let pointers: Vec<String> = app
        .spec
        .ignore_differences
        .iter()
        .filter(|rule| {
            rule.kind == d.id.kind
                && rule.group.as_deref().unwrap_or("") == d.id.group
                && rule.name.as_ref().is_none_or(|n| *n == d.id.name)
                && rule.namespace.as_ref().is_none_or(|n| *n == d.id.namespace)
        })
        .flat_map(|rule| rule.json_pointers.iter().cloned())
        .collect();
    let mut object = d.object.clone();
    if !pointers.is_empty() {
        apply::respect_ignored(&mut object, live, &pointers);
    }
    object
}

/// Why `app` must wait for the Applications it depends on, if it must.
async fn dependency_pending(app: &Application, ctx: &Context) -> Result<Option<String>, Error> {
    let namespace = app.namespace().unwrap_or_default();
    let api: Api<Application> = Api::namespaced(ctx.home.kinds.client().clone(), &namespace);
    for name in &app.spec.depends_on {
        let ready = api.get_opt(name).await?.is_some_and(|other| {
            other.status.as_ref().is_some_and(|s| {
                s.observed_generation == other.metadata.generation
                    && s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
            })
        });
        if !ready {
            return Ok(Some(format!(
                "waiting for Application {namespace}/{name} to be Ready"
            )));
        }
    }
    Ok(None)
}

/// Waits until every object is healthy (or suspended); what is not, at the deadline.
#[tracing::instrument(name = "wait healthy", skip_all, fields(objects = objects.len()))]
async fn wait_healthy(
    kinds: &Kinds,
    objects: &[(ApiResource, ObjectId)],
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut unhealthy = None;
        for (resource, id) in objects {
            let live = kinds.api(resource, &id.namespace).get_opt(&id.name).await;
            let verdict = match live {
                Ok(Some(live)) => health::assess(&serde_json::to_value(live).unwrap_or_default()),
                Ok(None) => Verdict {
                    health: Health::Missing,
                    message: "not found".into(),
                },
                Err(error) => Verdict {
                    health: Health::Unknown,
                    message: error.to_string(),
                },
            };
            if !matches!(verdict.health, Health::Healthy | Health::Suspended) {
                unhealthy = Some(format!(
                    "{}: {} {}",
                    id.display(),
                    verdict.health.as_str(),
                    verdict.message
                ));
                break;
            }
        }
        let Some(message) = unhealthy else {
            return Ok(());
        };
        if Instant::now() > deadline {
            return Err(message);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One reconcile of one Application.
async fn reconcile(app: Arc<Application>, ctx: Arc<Context>) -> Result<Action, Error> {
    // The watch cache can lag behind this controller's own last status write. Deciding from a
    // stale status would take a drift correction for a new revision and write back an older
    // history, so decide from the stored object.
    let api: Api<Application> = Api::namespaced(
        ctx.home.kinds.client().clone(),
        &app.namespace().unwrap_or_default(),
    );
    let app = match api.get(&app.name_any()).await {
        Ok(stored) => Arc::new(stored),
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(Action::await_change()),
        Err(_) => app,
    };
    let started = Instant::now();
    let started_at = now();
    let interval = app
        .spec
        .interval
        .as_deref()
        .and_then(parse_duration)
        .unwrap_or(ctx.config.default_interval)
        .max(Duration::from_secs(1));
    let previous = app.status.clone().unwrap_or_default();
    let requested = app.annotations().get(REQUESTED_AT_ANNOTATION).cloned();
    let sync_requested = requested.is_some() && requested != previous.last_handled_reconcile_at;

    ctx.triggers.register(&app);
    let mut attempt = Attempt::default();
    if !app.spec.suspend {
        let span = tracing::info_span!(
            "gitops sync",
            application = %app.name_any(),
            namespace = %app.namespace().unwrap_or_default(),
            revision = tracing::field::Empty,
            synced = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        kelson_common::trace::record_trace_id(&span);
        let result = sync(&app, &ctx, &previous, sync_requested, &mut attempt)
            .instrument(span.clone())
            .await;
        if let Some(commit) = &attempt.commit {
            span.record("revision", commit.sha.as_str());
        }
        span.record("synced", attempt.synced);
        result?;
    }
    let mut status = next_status(
        &app,
        &previous,
        &attempt,
        &started_at,
        started.elapsed(),
        requested.clone(),
    );

    status.last_webhook = ctx
        .triggers
        .delivery(&crate::triggers::key_of(&app))
        .map(|d| crate::api::WebhookDelivery {
            provider: d.provider,
            id: d.id,
            received_at: d.time,
            reference: d.reference,
        })
        .or(status.last_webhook);
    let (namespace, name) = (app.namespace().unwrap_or_default(), app.name_any());
    ctx.metrics
        .reconcile_duration
        .with_label_values(&["Application", &namespace, &name])
        .observe(started.elapsed().as_secs_f64());
    if !attempt.applied.is_empty() {
        ctx.metrics
            .objects
            .with_label_values(&[&namespace, &name, "apply"])
            .inc_by(attempt.applied.len() as u64);
    }
    if !attempt.pruned.is_empty() {
        ctx.metrics
            .objects
            .with_label_values(&[&namespace, &name, "prune"])
            .inc_by(attempt.pruned.len() as u64);
    }
    if attempt.drift_corrected {
        ctx.metrics
            .drift
            .with_label_values(&[&namespace, &name, "corrected"])
            .inc();
    }

    // history, audit and events only when something happened or the outcome changed
    let entry = status.history.first().cloned();
    let recorded = entry.is_some() && previous.history.first() != entry.as_ref();
    if recorded && let Some(entry) = &entry {
        ctx.metrics
            .syncs
            .with_label_values(&[&namespace, &name, &entry.result])
            .inc();
        if entry.result == "OutOfSync"
            && previous.last_applied_revision.as_deref() == Some(entry.revision.as_str())
        {
            ctx.metrics
                .drift
                .with_label_values(&[&namespace, &name, "reported"])
                .inc();
        }
        record(&app, &ctx, &attempt, entry).await;
    }
    if status != previous {
        let api: Api<Application> = Api::namespaced(
            ctx.home.kinds.client().clone(),
            &app.namespace().unwrap_or_default(),
        );
        let patch = json!([{"op": "add", "path": "/status", "value": status}]);
        api.patch_status(
            &app.name_any(),
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(patch).expect("patch")),
        )
        .await?;
    }
    let progressing = attempt.health.as_ref().is_some_and(|h| {
        matches!(
            h.health,
            Health::Progressing | Health::Degraded | Health::Missing
        )
    });
    if progressing || attempt.failure.as_ref().is_some_and(|f| !f.2) {
        return Ok(Action::requeue(interval.min(Duration::from_secs(5))));
    }
    let jitter = rand::random_range(0.0..0.1) * interval.as_secs_f64();
    Ok(Action::requeue(interval + Duration::from_secs_f64(jitter)))
}

/// Source, render, plan, apply, prune and health into `attempt`.
async fn sync(
    app: &Application,
    ctx: &Context,
    previous: &ApplicationStatus,
    sync_requested: bool,
    attempt: &mut Attempt,
) -> Result<(), Error> {
    if let Some(reason) = dependency_pending(app, ctx).await? {
        attempt.failure = Some(("DependencyNotReady".into(), reason, false));
        return Ok(());
    }
    let source = &app.spec.source;
    let revision = source
        .target_revision
        .clone()
        .unwrap_or_else(|| "HEAD".into());
    let sources = ctx.sources.clone();
    let url = source.repo_url.clone();
    let credentials = match credentials_of(app, ctx).await {
        Ok(credentials) => credentials,
        Err(message) => {
            attempt.failure = Some(("AuthenticationFailed".into(), message, false));
            return Ok(());
        }
    };
    let slot = ctx.git_slots.acquire().await;
    let fetch_started = Instant::now();
    let resolved = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::task::spawn_blocking(move || sources.resolve(&url, &revision, credentials.as_ref())),
    )
    .await;
    drop(slot);
    let ok = matches!(resolved, Ok(Ok(Ok(_))));
    ctx.metrics
        .git_requests
        .with_label_values(&["fetch", if ok { "success" } else { "failure" }])
        .inc();
    ctx.metrics
        .git_duration
        .with_label_values(&["fetch"])
        .observe(fetch_started.elapsed().as_secs_f64());
    let commit = match resolved {
        Ok(Ok(Ok(commit))) => commit,
        Ok(Ok(Err(error))) => {
            attempt.failure = Some(("GitOperationFailed".into(), error.to_string(), false));
            return Ok(());
        }
        Ok(Err(error)) => return Err(Error::Other(error.to_string())),
        Err(_) => {
            attempt.failure = Some((
                "GitOperationFailed".into(),
                "git fetch took longer than 90 s".into(),
                false,
            ));
            return Ok(());
        }
    };
    let mut commit = commit;
    if let Some(verify) = &source.verify {
        match verify_commit(app, ctx, verify, &commit.sha).await {
            Ok(signer) => commit.signer = Some(signer),
            Err(message) => {
                attempt.commit = Some(commit);
                attempt.failure = Some(("VerificationFailed".into(), message, true));
                return Ok(());
            }
        }
    }
    attempt.commit = Some(commit.clone());
    let manifests = match ctx.render(app, &commit).await {
        Ok(manifests) => manifests,
        Err(error) => {
            attempt.failure = Some(("BuildFailed".into(), error.to_string(), true));
            return Ok(());
        }
    };
    attempt.digest = render::digest(
        &manifests
            .iter()
            .map(|m| m.object.clone())
            .collect::<Vec<_>>(),
    );

    let target = match ctx.target_for(app).await {
        Ok(target) => target,
        Err(message) => {
            attempt.failure = Some(("DestinationFailed".into(), message, false));
            return Ok(());
        }
    };
    let automated = app.spec.sync_policy.automated.clone();
    let new_revision = previous.last_applied_revision.as_deref() != Some(commit.sha.as_str());
    let self_heal = automated.as_ref().is_some_and(|a| a.self_heal);
    // automated: apply new revisions, and drift too with selfHeal; manual: only on request
    let may_apply = sync_requested
        || (automated.is_some() && (new_revision || self_heal || previous.failure_pending()));
    let options = &app.spec.sync_policy.sync_options;
    let may_prune = automated.as_ref().is_some_and(|a| a.prune)
        || (sync_requested
            && (options.iter().any(|o| o == "Prune=true")
                || app
                    .annotations()
                    .get(REQUESTED_AT_ANNOTATION)
                    .is_some_and(|r| r.ends_with(";prune"))));

    if may_apply && options.iter().any(|o| o == "CreateNamespace=true") {
        let namespace = destination_namespace(app);
        let api: Api<Namespace> = Api::all(target.kinds.client().clone());
        if api.get_opt(&namespace).await?.is_none() {
            let ns =
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}});
            api.patch(&namespace, &apply::apply_params(false), &Patch::Apply(&ns))
                .await?;
        }
    }

    let (mut desired, unknown) = ctx.prepare(&target.kinds, app, &manifests).await?;
    let mut errors: Vec<String> = Vec::new();
    let defines_kinds = desired
        .iter()
        .any(|d| d.id.kind == "CustomResourceDefinition");
    let deferring = defines_kinds && may_apply;
    if !unknown.is_empty() && !deferring {
        for m in &unknown {
            errors.push(format!(
                "{}: the server has no kind {} in {}",
                m.location(),
                m.kind(),
                m.api_version()
            ));
        }
    }
    desired.sort_by_key(|d| (d.wave, apply::kind_rank(&d.id.group, &d.id.kind)));

    let mut live_objects: Vec<Value> = Vec::new();
    let mut applied_crds = Vec::new();
    let mut pending = desired;
    let mut deferred = if defines_kinds && may_apply {
        unknown
    } else {
        Vec::new()
    };
    let mut inventory: Vec<InventoryEntry> = Vec::new();
    // objects applied in the current sync wave: the next wave waits until they are healthy
    let mut wave: Option<i64> = None;
    let mut wave_applied: Vec<(ApiResource, ObjectId)> = Vec::new();
    let wave_timeout = app
        .spec
        .health_timeout
        .as_deref()
        .and_then(parse_duration)
        .unwrap_or(Duration::from_secs(300));
    loop {
        for d in &pending {
            if wave.is_some_and(|w| w != d.wave) && !wave_applied.is_empty() {
                if let Err(message) = wait_healthy(&target.kinds, &wave_applied, wave_timeout).await
                {
                    errors.push(format!(
                        "sync wave {} did not become healthy within {wave_timeout:?}: {message}",
                        wave.unwrap_or_default()
                    ));
                    break;
                }
                wave_applied.clear();
            }
            wave = Some(d.wave);
            let api = target.kinds.api(&d.resource, &d.id.namespace);
            let live = match api.get_opt(&d.id.name).await {
                Ok(live) => live.map(|l| serde_json::to_value(l).unwrap_or_default()),
                Err(error) => {
                    errors.push(format!("{}: {}: {error}", d.location, d.id.display()));
                    continue;
                }
            };
            if let Some(live) = &live {
                let owner = live.pointer(&format!(
                    "/metadata/annotations/{}",
                    TRACKING_ANNOTATION.replace('/', "~1")
                ));
                if let Some(owner) = owner.and_then(Value::as_str)
                    && owner != tracking_id(app, &d.id)
                {
                    errors.push(format!(
                        "{}: {} is managed by another Application ({owner})",
                        d.location,
                        d.id.display()
                    ));
                    continue;
                }
            }
            inventory.push(InventoryEntry {
                id: d.id.inventory_id(),
                v: d.resource.api_version.clone(),
            });
            target.drift.ensure(&d.resource);
            let object = with_ignored(app, d, live.as_ref());
            let planned = match apply::apply(&api, &d.id.name, &object, true).await {
                Ok(planned) => planned,
                Err(error) => {
                    errors.push(format!(
                        "{}: {}: {}",
                        d.location,
                        d.id.display(),
                        kube_message(&error)
                    ));
                    continue;
                }
            };
            let changes = apply::changes(live.as_ref(), &planned);
            if changes.is_empty() {
                live_objects.push(live.unwrap_or(planned));
                continue;
            }
            attempt.out_of_sync.push(d.id.display());
            if !may_apply {
                live_objects.push(live.unwrap_or(planned));
                continue;
            }
            match apply::apply(&api, &d.id.name, &object, false).await {
                Ok(stored) => {
                    if live.is_some() && !new_revision {
                        attempt.drift_corrected = true;
                    }
                    attempt.applied.push(d.id.display());
                    attempt.changes.push(format!(
                        "{} {}",
                        d.id.display(),
                        if live.is_some() {
                            changes.join(", ")
                        } else {
                            "created".into()
                        }
                    ));
                    if d.id.kind == "CustomResourceDefinition" {
                        applied_crds.push(d.id.name.clone());
                    }
                    wave_applied.push((d.resource.clone(), d.id.clone()));
                    live_objects.push(stored);
                }
                Err(error) => errors.push(format!(
                    "{}: {}: {}",
                    d.location,
                    d.id.display(),
                    kube_message(&error)
                )),
            }
        }
        if deferred.is_empty() {
            break;
        }
        // kinds defined by this revision: wait for their definitions, then resolve again
        crate::wait_established(
            target.kinds.client(),
            &applied_crds,
            Duration::from_secs(30),
        )
        .await;
        let retry: Vec<Manifest> = deferred.drain(..).cloned().collect();
        let (next, still_unknown) = ctx.prepare(&target.kinds, app, &retry).await?;
        for m in still_unknown {
            errors.push(format!(
                "{}: the server has no kind {} in {}",
                m.location(),
                m.kind(),
                m.api_version()
            ));
        }
        pending = next;
    }

    // prune: only after a complete, error-free apply of a non-empty render
    let rendered: BTreeSet<String> = inventory.iter().map(|e| e.id.clone()).collect();
    let mut kept_inventory = inventory.clone();
    if errors.is_empty() {
        let max_percent = app.spec.sync_policy.max_prune_percent.unwrap_or(50);
        match plan_prune(&previous.inventory, &rendered, max_percent) {
            PrunePlan::Delete(stale) => {
                for entry in stale {
                    if !may_prune {
                        attempt
                            .out_of_sync
                            .push(format!("{} (to prune)", display_id(&entry.id)));
                        kept_inventory.push(entry);
                        continue;
                    }
                    match prune(&target, app, &entry).await {
                        Ok(Some(pruned)) => {
                            attempt.pruned.push(pruned.clone());
                            attempt.changes.push(format!("{pruned} pruned"));
                        }
                        Ok(None) => {}
                        Err(message) => {
                            errors.push(message);
                            kept_inventory.push(entry);
                        }
                    }
                }
            }
            PrunePlan::Refused(reason) => {
                kept_inventory.extend(
                    previous
                        .inventory
                        .iter()
                        .filter(|e| !rendered.contains(&e.id))
                        .cloned(),
                );
                attempt.failure = Some(("PruneRefused".into(), reason, true));
            }
        }
    } else {
        // keep tracking what was applied before, so a later prune still knows it
        kept_inventory.extend(
            previous
                .inventory
                .iter()
                .filter(|e| !rendered.contains(&e.id))
                .cloned(),
        );
    }
    kept_inventory.sort_by(|a, b| a.id.cmp(&b.id));
    kept_inventory.dedup();
    attempt.inventory = Some(kept_inventory);

    let verdicts: Vec<Verdict> = live_objects
        .iter()
        .map(|o| {
            let mut v = health::assess(o);
            if v.health != Health::Healthy && !v.message.is_empty() {
                let name = o
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let kind = o
                    .pointer("/kind")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                v.message = format!("{kind} {name}: {}", v.message);
            }
            v
        })
        .collect();
    attempt.health = Some(health::worst(&verdicts));
    if !errors.is_empty() {
        let count = errors.len();
        let mut message = errors.into_iter().take(5).collect::<Vec<_>>().join("; ");
        if count > 5 {
            message.push_str(&format!(" (and {} more)", count - 5));
        }
        attempt.failure = Some(("ApplyFailed".into(), message, true));
    }
    attempt.synced = attempt.failure.is_none() && (attempt.out_of_sync.is_empty() || may_apply);
    Ok(())
}

/// The data of Secret `name` in the Application's namespace (`what` says what it is for).
async fn secret_data(
    ctx: &Context,
    app: &Application,
    name: &str,
    what: &str,
) -> Result<std::collections::BTreeMap<String, k8s_openapi::ByteString>, String> {
    let namespace = app.namespace().unwrap_or_default();
    // as the Application's account, when it names one: an Application cannot make the
    // reconciler hand over a Secret its account may not read
    let reader = ctx.acting_as(app, &ctx.home);
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(reader.kinds.client().clone(), &namespace);
    let secret = secrets
        .get_opt(name)
        .await
        .map_err(|e| format!("reading Secret {namespace}/{name}: {e}"))?
        .ok_or_else(|| format!("Secret {namespace}/{name} ({what}) does not exist"))?;
    Ok(secret.data.unwrap_or_default())
}

/// The credentials of the Application's secretRef, if it names one.
async fn credentials_of(
    app: &Application,
    ctx: &Context,
) -> Result<Option<crate::auth::GitCredentials>, String> {
    let Some(reference) = &app.spec.source.secret_ref else {
        return Ok(None);
    };
    let data = secret_data(ctx, app, &reference.name, "the repository credentials").await?;
    Ok(Some(crate::auth::GitCredentials::from_entries(
        data.iter().map(|(k, v)| (k.as_str(), v.0.as_slice())),
    )))
}

/// Checks the signature(s) of `sha` against the trusted keys of the Application's Secret;
/// the signer, or why the commit is refused.
#[tracing::instrument(name = "verify commit", skip_all, fields(commit = sha))]
async fn verify_commit(
    app: &Application,
    ctx: &Context,
    verify: &crate::api::Verify,
    sha: &str,
) -> Result<String, String> {
    let namespace = app.namespace().unwrap_or_default();
    let name = &verify.secret_ref.name;
    let data = secret_data(ctx, app, name, "the trusted keys").await?;
    let keys = crate::verify::TrustedKeys::from_entries(
        data.iter().map(|(k, v)| (k.as_str(), v.0.as_slice())),
    );
    if keys.is_empty() {
        return Err(format!(
            "Secret {namespace}/{name} holds no trusted keys (*.asc OpenPGP, *.pub SSH)"
        ));
    }
    let strict = verify
        .mode
        .as_deref()
        .is_some_and(|m| m.eq_ignore_ascii_case("strict"));
    let git_dir = ctx.sources.cache_dir(&app.spec.source.repo_url);
    let verifier = ctx.verifier.clone();
    let sha = sha.to_owned();
    let _slot = ctx.git_slots.acquire().await;
    tokio::task::spawn_blocking(move || verifier.verify(&git_dir, &sha, strict, &keys))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

impl ApplicationStatus {
    /// Whether the last attempt failed, so an automated Application tries again.
    fn failure_pending(&self) -> bool {
        self.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "False" && c.reason != "Progressing")
    }
}

fn display_id(id: &str) -> String {
    ObjectId::parse(id)
        .map(|i| i.display())
        .unwrap_or_else(|| id.to_owned())
}

fn kube_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

/// Deletes one inventory entry if it is still ours and not protected; the deleted object's
/// display name, None when there was nothing (left) to delete.
#[tracing::instrument(name = "prune", skip_all, fields(object = %entry.id))]
async fn prune(
    target: &Target,
    app: &Application,
    entry: &InventoryEntry,
) -> Result<Option<String>, String> {
    let Some(id) = ObjectId::parse(&entry.id) else {
        return Ok(None);
    };
    let resource = match target.kinds.resolve(&entry.v, &id.kind).await {
        Ok(Some((resource, _))) => resource,
        Ok(None) => return Ok(None),
        Err(error) => return Err(format!("{}: {error}", id.display())),
    };
    let api = target.kinds.api(&resource, &id.namespace);
    let live = match api.get_opt(&id.name).await {
        Ok(Some(live)) => live,
        Ok(None) => return Ok(None),
        Err(error) => return Err(format!("{}: {error}", id.display())),
    };
    // never delete what this Application did not apply (a copied label is not enough)
    if live.annotations().get(TRACKING_ANNOTATION) != Some(&tracking_id(app, &id)) {
        info!(object = %id.display(), "not pruning an object this application does not own");
        return Ok(None);
    }
    let annotation = live.annotations().get(PRUNE_ANNOTATION).map(String::as_str);
    if annotation == Some("false") || (id.is_protected() && annotation != Some("true")) {
        info!(object = %id.display(), "prune protection: left in place");
        return Ok(None);
    }
    match api.delete(&id.name, &DeleteParams::background()).await {
        Ok(_) => Ok(Some(id.display())),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
        Err(error) => Err(format!("{}: {}", id.display(), kube_message(&error))),
    }
}

/// The status after `attempt` (pure).
fn next_status(
    app: &Application,
    previous: &ApplicationStatus,
    attempt: &Attempt,
    time: &str,
    elapsed: Duration,
    requested: Option<String>,
) -> ApplicationStatus {
    let generation = app.metadata.generation;
    let mut status = previous.clone();
    status.observed_generation = generation;
    status.last_handled_reconcile_at = requested.or(status.last_handled_reconcile_at);
    let mut set = |state: State, reason: &str, message: &str| {
        set_kstatus(
            &mut status.conditions,
            state,
            reason,
            message,
            generation,
            time,
        );
    };
    if app.spec.suspend {
        set(State::Idle, "Suspended", "reconciliation is suspended");
        return status;
    }
    let sha = attempt.commit.as_ref().map(|c| c.sha.clone());
    let revision_label = |sha: &str| {
        let rev = app.spec.source.target_revision.as_deref().unwrap_or("HEAD");
        format!("{rev}@sha1:{sha}")
    };
    let mut out_of_sync = attempt.out_of_sync.clone();
    out_of_sync.truncate(20);
    let health = attempt.health.clone();
    let result;
    let message;
    match &attempt.failure {
        Some((reason, text, stalled)) => {
            set(
                if *stalled {
                    State::Stalled
                } else {
                    State::Reconciling
                },
                reason,
                text,
            );
            if reason != "GitOperationFailed" {
                let state = if reason == "BuildFailed" {
                    "Unknown"
                } else {
                    "OutOfSync"
                };
                status.sync = Some(SyncStatus {
                    status: state.into(),
                    revision: sha.clone(),
                    out_of_sync,
                });
            }
            result = if reason == "PruneRefused" {
                "PruneRefused"
            } else {
                "Failed"
            };
            message = format!("{reason}: {text}");
        }
        None => {
            let sha = sha.clone().unwrap_or_default();
            let h = health.clone().unwrap_or(Verdict {
                health: Health::Healthy,
                message: String::new(),
            });
            let timeout = app
                .spec
                .health_timeout
                .as_deref()
                .and_then(parse_duration)
                .unwrap_or(Duration::from_secs(300));
            let since_apply = previous
                .history
                .iter()
                .find(|e| e.result == "Succeeded")
                .and_then(|e| e.started_at.parse::<jiff::Timestamp>().ok())
                .map(|t| jiff::Timestamp::now().duration_since(t).unsigned_abs())
                .unwrap_or_default();
            if !attempt.synced {
                let text = format!(
                    "{} objects differ from {}; run `kelson app sync {}`",
                    attempt.out_of_sync.len(),
                    revision_label(&sha),
                    app.name_any()
                );
                set(State::Idle, "OutOfSync", &text);
                result = "OutOfSync";
                message = text;
            } else if matches!(h.health, Health::Healthy | Health::Suspended) {
                let text = format!("Applied revision: {}", revision_label(&sha));
                set(State::Ready, "ReconciliationSucceeded", &text);
                result = "Succeeded";
                message = text;
            } else {
                let stalled =
                    since_apply > timeout && !attempt.drift_corrected && attempt.applied.is_empty();
                let text = format!("{}: {}", h.health.as_str(), h.message);
                if stalled {
                    set(State::Stalled, "HealthCheckFailed", &text);
                } else {
                    set(State::Reconciling, "Progressing", &text);
                }
                result = "Succeeded";
                message = format!("Applied revision: {}", revision_label(&sha));
            }
            status.sync = Some(SyncStatus {
                status: if attempt.synced {
                    "Synced"
                } else {
                    "OutOfSync"
                }
                .into(),
                revision: Some(sha.clone()),
                out_of_sync: if attempt.synced { vec![] } else { out_of_sync },
            });
            if attempt.synced {
                status.last_applied_revision = Some(sha);
            }
        }
    }
    if let Some(sha) = &sha {
        status.last_attempted_revision = Some(sha.clone());
    }
    if let Some(inventory) = &attempt.inventory {
        status.inventory = inventory.clone();
    }
    if let Some(h) = &health {
        status.health = Some(HealthStatus {
            status: h.health.as_str().into(),
            message: h.message.clone(),
        });
    }
    let Some(sha) = sha else {
        return status;
    };
    let entry = HistoryEntry {
        revision: sha,
        result: result.into(),
        message,
        digest: attempt.digest.clone(),
        applied: attempt.applied.len() as u32,
        pruned: attempt.pruned.len() as u32,
        started_at: time.to_owned(),
        duration_ms: elapsed.as_millis() as u64,
    };
    let same = previous.history.first().is_some_and(|last| {
        last.revision == entry.revision
            && last.result == entry.result
            && last.digest == entry.digest
            && last.message == entry.message
    });
    if !same || entry.applied > 0 || entry.pruned > 0 {
        status.history.insert(0, entry);
        status.history.truncate(HISTORY_IN_STATUS);
    }
    status
}

/// Writes the audit record and the event of one recorded attempt.
async fn record(app: &Application, ctx: &Context, attempt: &Attempt, entry: &HistoryEntry) {
    let commit = attempt.commit.clone().unwrap_or_default();
    let record = json!({
        "time": entry.started_at,
        "application": format!("{}/{}", app.namespace().unwrap_or_default(), app.name_any()),
        "repoURL": app.spec.source.repo_url,
        "path": app.spec.source.path.clone().unwrap_or_default(),
        "revision": commit.sha,
        "author": commit.author,
        "committer": commit.committer,
        "signed": commit.signed,
        "signer": commit.signer,
        "pullRequest": commit.pull_request,
        "subject": commit.subject,
        "digest": entry.digest,
        "result": entry.result,
        "message": entry.message,
        "applied": attempt.applied,
        "pruned": attempt.pruned,
        "changes": attempt.changes,
        "driftCorrected": attempt.drift_corrected,
        "durationMs": entry.duration_ms,
    });
    if let Value::Object(record) = record
        && let Err(error) = ctx.audit.append(record)
    {
        warn!(%error, "failed to write the audit log");
    }
    let reference = app.object_ref(&());
    let (warning, reason) = match entry.result.as_str() {
        "Succeeded" if attempt.drift_corrected => (false, "DriftCorrected"),
        "Succeeded" => (false, "Synced"),
        "OutOfSync" => (false, "OutOfSync"),
        "PruneRefused" => (true, "PruneRefused"),
        _ => (true, "SyncFailed"),
    };
    let short = &commit.sha[..commit.sha.len().min(12)];
    let note = format!(
        "{} at {short}: {} applied, {} pruned{}",
        entry.message,
        attempt.applied.len(),
        attempt.pruned.len(),
        commit
            .pull_request
            .as_ref()
            .map(|p| format!(" (pull request {p})"))
            .unwrap_or_default()
    );
    info!(app = %app.name_any(), reason, %note, "sync");
    ctx.recorder
        .publish(
            &kube::runtime::events::Event {
                type_: if warning {
                    kube::runtime::events::EventType::Warning
                } else {
                    kube::runtime::events::EventType::Normal
                },
                reason: reason.into(),
                note: Some(note.chars().take(1000).collect()),
                action: "Sync".into(),
                secondary: None,
            },
            &reference,
        )
        .await
        .unwrap_or_else(|error| debug!(%error, "failed to record an event"));
}

fn error_policy(app: Arc<Application>, error: &Error, _ctx: Arc<Context>) -> Action {
    warn!(app = %app.name_any(), %error, "reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

/// Only spec changes and sync requests start a reconcile (not our own status writes).
fn spec_or_request(app: &Application) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    app.metadata.generation.hash(&mut hasher);
    app.annotations()
        .get(REQUESTED_AT_ANNOTATION)
        .hash(&mut hasher);
    Some(hasher.finish())
}

/// Runs the Application controller until `shutdown`.
pub async fn run(
    client: Client,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (trigger, triggers) = tokio::sync::mpsc::unbounded_channel();
    let metrics = Arc::new(Metrics::new().with_requests(config.client_metrics.clone()));
    let push_triggers = Triggers::new(trigger.clone());
    let _ = std::fs::remove_file(config.data_dir.join("address"));
    if let Some(listen) = config.listen {
        let (address, _task) = crate::server::serve(
            listen,
            client.clone(),
            config.namespace.clone(),
            push_triggers.clone(),
            metrics.clone(),
            shutdown.clone(),
        )
        .await?;
        info!(%address, "serving GitOps webhooks (/hooks/github|gitlab|gitea) and /metrics");
        std::fs::create_dir_all(&config.data_dir)?;
        let written = config.data_dir.join("address.tmp");
        std::fs::write(&written, address.to_string())?;
        std::fs::rename(&written, config.data_dir.join("address"))?;
    }
    let ctx = Arc::new(Context::new(
        client.clone(),
        config,
        "kelson-gitops",
        push_triggers,
        metrics,
        trigger,
        shutdown.clone(),
    )?);
    let api: Api<Application> = Api::all(client);
    let (reader, writer) = reflector::store();
    let applications = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(spec_or_request, Default::default());
    let drift = tokio_stream::wrappers::UnboundedReceiverStream::new(triggers);
    Controller::for_stream(applications, reader)
        .reconcile_on(drift)
        .with_config(
            kube::runtime::controller::Config::default()
                .debounce(Duration::from_millis(50))
                .concurrency(CONCURRENT_RECONCILES),
        )
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("3d"), None);
    }

    #[test]
    fn conditions_keep_their_transition_time() {
        let mut conditions = vec![];
        set_condition(&mut conditions, "Stalled", false, "A", "", None, "t1");
        set_condition(&mut conditions, "Ready", true, "A", "", None, "t1");
        set_condition(&mut conditions, "Ready", true, "B", "again", None, "t2");
        assert_eq!(conditions[0].type_, "Ready");
        assert_eq!(conditions[0].last_transition_time, "t1");
        assert_eq!(conditions[0].reason, "B");
        set_condition(&mut conditions, "Ready", false, "C", "", None, "t3");
        assert_eq!(conditions[0].last_transition_time, "t3");
    }

    #[test]
    fn owners_come_from_tracking_ids() {
        let owner = owner_of(Some(&"team/web:apps/Deployment:team/web".to_owned())).unwrap();
        assert_eq!(
            (owner.name.as_str(), owner.namespace.as_deref()),
            ("web", Some("team"))
        );
        assert!(owner_of(Some(&"junk".to_owned())).is_none());
    }

    fn app() -> Application {
        let mut app = Application::new(
            "web",
            crate::api::ApplicationSpec {
                source: crate::api::Source {
                    repo_url: "file:///r".into(),
                    ..Default::default()
                },
                ..Default::default()
            },
        );
        app.metadata.namespace = Some("default".into());
        app.metadata.generation = Some(1);
        app
    }

    fn commit() -> Option<CommitInfo> {
        Some(CommitInfo {
            sha: "a".repeat(40),
            ..Default::default()
        })
    }

    #[test]
    fn a_healthy_sync_is_ready_and_recorded_once() {
        let app = app();
        let attempt = Attempt {
            commit: commit(),
            digest: "sha256:x".into(),
            applied: vec!["ConfigMap default/a".into()],
            inventory: Some(vec![]),
            health: Some(Verdict {
                health: Health::Healthy,
                message: String::new(),
            }),
            synced: true,
            ..Default::default()
        };
        let first = next_status(
            &app,
            &Default::default(),
            &attempt,
            "t1",
            Duration::ZERO,
            None,
        );
        let ready = &first.conditions[0];
        assert_eq!(
            (ready.type_.as_str(), ready.status.as_str()),
            ("Ready", "True")
        );
        assert_eq!(
            first.last_applied_revision.as_deref(),
            Some("a".repeat(40).as_str())
        );
        assert_eq!(first.history.len(), 1);
        // the same outcome with nothing applied adds no history and leaves status equal
        let quiet = Attempt {
            applied: vec![],
            ..attempt
        };
        let second = next_status(&app, &first, &quiet, "t2", Duration::ZERO, None);
        assert_eq!(second.history.len(), 1);
        assert_eq!(second.conditions, first.conditions);
    }

    #[test]
    fn build_failures_keep_the_last_applied_revision() {
        let app = app();
        let good = ApplicationStatus {
            last_applied_revision: Some("b".repeat(40)),
            ..Default::default()
        };
        let attempt = Attempt {
            commit: commit(),
            failure: Some((
                "BuildFailed".into(),
                "apps/web.yaml:3: invalid YAML".into(),
                true,
            )),
            ..Default::default()
        };
        let status = next_status(&app, &good, &attempt, "t", Duration::ZERO, None);
        assert_eq!(status.last_applied_revision, good.last_applied_revision);
        assert_eq!(
            status.last_attempted_revision.as_deref(),
            Some("a".repeat(40).as_str())
        );
        let ready = &status.conditions[0];
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "BuildFailed")
        );
        assert!(ready.message.contains("apps/web.yaml:3"));
        assert!(
            status
                .conditions
                .iter()
                .any(|c| c.type_ == "Stalled" && c.status == "True")
        );
        assert_eq!(status.history[0].result, "Failed");
    }
}
