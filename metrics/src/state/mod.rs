//! The cluster-state exporter: kube-state-metrics v2's families (names, help, types, labels and
//! label order) from watches on the API server, so kubernetes-mixin rules and alerts work.
//!
//! It keeps kube-state-metrics' design: each object's samples are rendered to text when the
//! object changes, one string per family ([`Lines`]), and a scrape only concatenates them —
//! family by family, kinds in resource-name order, each family's `# HELP`/`# TYPE` written once
//! (also when it has no samples, as long as its kind has objects). A kind is one module with
//! its family list and a `render` function ([`Object`]).
//!
//! Kelson's GitOps Applications are exported too (`kelson_application_*`: source, sync status,
//! health, conditions, last sync).
//!
//! `*_labels` and `*_annotations` families carry series only for the keys allowed per kind
//! ([`Allow`]), as kube-state-metrics' `--metric-labels-allowlist` does.

mod apps;
mod batch;
mod core;
mod gitops;
mod other;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::Arc;

use futures::StreamExt as _;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt as _};
use parking_lot::RwLock;
use serde::de::DeserializeOwned;

use crate::exposition::{Kind, write_sample};

/// One family of a kind: its name, `# HELP` text and type.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    /// The metric name.
    pub name: &'static str,
    /// The help text, as kube-state-metrics writes it (`[STABLE] ` prefix included).
    pub help: &'static str,
    /// Gauge, or counter for restart counts.
    pub kind: Kind,
}

impl Family {
    /// Writes the family's `# HELP` and `# TYPE` lines.
    fn write_header(&self, out: &mut String) {
        out.push_str("# HELP ");
        out.push_str(self.name);
        out.push(' ');
        out.push_str(self.help);
        out.push_str("\n# TYPE ");
        out.push_str(self.name);
        out.push(' ');
        out.push_str(self.kind.as_str());
        out.push('\n');
    }
}

/// A gauge family.
pub(crate) const fn gauge(name: &'static str, help: &'static str) -> Family {
    Family {
        name,
        help,
        kind: Kind::Gauge,
    }
}

/// A counter family.
pub(crate) const fn counter(name: &'static str, help: &'static str) -> Family {
    Family {
        name,
        help,
        kind: Kind::Counter,
    }
}

/// Which Kubernetes labels and annotations become `label_*` / `annotation_*` series, per
/// resource (`pods`, `nodes`, ...; `*` for all): the keys, or `*` for every key.
#[derive(Debug, Clone, Default)]
pub struct Allow {
    /// `--metric-labels-allowlist`.
    pub labels: BTreeMap<String, Vec<String>>,
    /// `--metric-annotations-allowlist`.
    pub annotations: BTreeMap<String, Vec<String>>,
}

impl Allow {
    /// Parses kube-state-metrics' syntax: `pods=[app,team],namespaces=[*]`.
    ///
    /// # Errors
    /// Text that is not a list of `resource=[key,...]`.
    pub fn parse_list(text: &str) -> Result<BTreeMap<String, Vec<String>>, String> {
        let mut out = BTreeMap::new();
        let mut rest = text.trim();
        while !rest.is_empty() {
            let (resource, after) = rest
                .split_once("=[")
                .ok_or_else(|| format!("expected resource=[keys] in {text:?}"))?;
            let (keys, after) = after
                .split_once(']')
                .ok_or_else(|| format!("unclosed [ in {text:?}"))?;
            let keys: Vec<String> = keys
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_owned)
                .collect();
            out.insert(
                resource.trim().trim_start_matches(',').trim().to_owned(),
                keys,
            );
            rest = after.trim_start_matches(',').trim();
        }
        Ok(out)
    }

    fn keys<'a>(
        lists: &'a BTreeMap<String, Vec<String>>,
        resource: &str,
    ) -> Option<&'a Vec<String>> {
        lists.get(resource).or_else(|| lists.get("*"))
    }
}

/// kube-state-metrics' label name for a Kubernetes key: non-`[a-zA-Z0-9_]` to `_`, camelCase
/// to snake_case, lower-cased, after `prefix_`.
#[must_use]
pub fn label_name(prefix: &str, key: &str) -> String {
    let sanitized: Vec<char> = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let mut name = String::with_capacity(prefix.len() + 1 + key.len() + 4);
    name.push_str(prefix);
    name.push('_');
    for (i, c) in sanitized.iter().enumerate() {
        if c.is_ascii_uppercase()
            && i > 0
            && (sanitized[i - 1].is_ascii_lowercase() || sanitized[i - 1].is_ascii_digit())
        {
            name.push('_');
        }
        name.push(c.to_ascii_lowercase());
    }
    name
}

/// Marks a stored sample line whose metric name and identifying labels are left out (they are
/// the same for every line of the family and the object): the scrape writes them back.
const SHORT: char = '\u{1}';

/// Keys that sanitise to the same label name (`app-name`, `app_name`) would repeat a label,
/// which fails the whole scrape: as kube-state-metrics does, each such name gets a
/// `_conflictN` suffix, in key order.
fn resolve_conflicts(labels: &mut [(String, &str)]) {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for (name, _) in labels.iter() {
        *counts.entry(name.clone()).or_default() += 1;
    }
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (name, _) in labels.iter_mut() {
        if counts.get(name.as_str()).copied().unwrap_or(0) > 1 {
            let n = seen.entry(name.clone()).or_default();
            *n += 1;
            *name = format!("{name}_conflict{n}");
        }
    }
}

/// One object's rendered samples, one string per family of its kind.
#[derive(Debug)]
pub struct Lines {
    families: &'static [Family],
    text: Vec<String>,
    resource: &'static str,
    /// The object's identifying labels (`namespace`, `pod`, `uid`) and their text.
    identity: Option<(Vec<(String, String)>, String)>,
}

impl Lines {
    fn new(families: &'static [Family], resource: &'static str) -> Self {
        Self {
            families,
            text: vec![String::new(); families.len()],
            resource,
            identity: None,
        }
    }

    /// Declares the labels that identify the object and lead most of its samples' label sets;
    /// samples that start with them are stored without them (and without the metric name).
    pub fn identify(&mut self, labels: &[(&str, &str)]) {
        let mut text = String::new();
        write_sample(&mut text, "", labels, 0.0);
        // `{a="1",b="2"} 0\n` → `a="1",b="2"`
        let inner = text
            .strip_prefix('{')
            .and_then(|t| t.strip_suffix("} 0\n"))
            .unwrap_or("")
            .to_owned();
        self.identity = Some((
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            inner,
        ));
    }

    /// Whether the kind declares family `name`.
    fn declares(&self, name: &str) -> bool {
        self.families.iter().any(|f| f.name == name)
    }

    /// Adds a sample to family `name` (which the kind must declare).
    pub fn add(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let Some(i) = self.families.iter().position(|f| f.name == name) else {
            debug_assert!(false, "family {name} is not declared");
            return;
        };
        let out = &mut self.text[i];
        let identified = self.identity.as_ref().filter(|(identity, _)| {
            !identity.is_empty()
                && labels.len() >= identity.len()
                && identity
                    .iter()
                    .zip(labels)
                    .all(|((k, v), (lk, lv))| k == lk && v == lv)
        });
        match identified {
            Some((identity, _)) => {
                // stored as SHORT + the remaining labels + value: `\u{1},container="app"} 1`
                out.push(SHORT);
                let mut rest = String::new();
                write_sample(&mut rest, "", &labels[identity.len()..], value);
                match rest.strip_prefix('{') {
                    Some(labelled) => {
                        out.push(',');
                        out.push_str(labelled);
                    }
                    None => {
                        out.push('}');
                        out.push_str(&rest);
                    }
                }
            }
            None => write_sample(out, name, labels, value),
        }
    }

    /// A `0`/`1` sample.
    pub fn flag(&mut self, name: &str, labels: &[(&str, &str)], on: bool) {
        self.add(name, labels, if on { 1.0 } else { 0.0 });
    }

    /// A timestamp sample in Unix seconds, when the time is set.
    pub fn time(&mut self, name: &str, labels: &[(&str, &str)], time: Option<&Time>) {
        if let Some(time) = time {
            self.add(name, labels, time.0.as_second() as f64);
        }
    }

    /// A number sample, when the number is set.
    pub fn some<N: Into<f64>>(&mut self, name: &str, labels: &[(&str, &str)], value: Option<N>) {
        if let Some(value) = value {
            self.add(name, labels, value.into());
        }
    }

    /// The three `true`/`false`/`unknown` samples of a condition under label `label`.
    pub fn condition(&mut self, name: &str, labels: &[(&str, &str)], label: &str, status: &str) {
        let status = status.to_ascii_lowercase();
        let mut all = labels.to_vec();
        all.push((label, ""));
        for value in ["true", "false", "unknown"] {
            if let Some(last) = all.last_mut() {
                *last = (label, value);
            }
            self.flag(name, &all, status == value);
        }
    }

    /// The `_created`, `_deletion_timestamp` and (as allowed) `_labels`/`_annotations` samples
    /// every kind has, named `<prefix>_created` and so on.
    pub fn metadata(
        &mut self,
        prefix: &str,
        labels: &[(&str, &str)],
        meta: &ObjectMeta,
        allow: &Allow,
    ) {
        self.time(
            &format!("{prefix}_created"),
            labels,
            meta.creation_timestamp.as_ref(),
        );
        let deletion = format!("{prefix}_deletion_timestamp");
        if self.declares(&deletion) {
            self.time(&deletion, labels, meta.deletion_timestamp.as_ref());
        }
        for (lists, source, family, label_prefix) in [
            (&allow.labels, &meta.labels, "labels", "label"),
            (
                &allow.annotations,
                &meta.annotations,
                "annotations",
                "annotation",
            ),
        ] {
            let Some(keys) = Allow::keys(lists, self.resource) else {
                continue;
            };
            let empty = BTreeMap::new();
            let source = source.as_ref().unwrap_or(&empty);
            let all = keys.first().is_some_and(|k| k == "*");
            let mut chosen: Vec<(String, &str)> = source
                .iter()
                .filter(|(k, _)| all || keys.contains(k))
                .map(|(k, v)| (label_name(label_prefix, k), v.as_str()))
                .collect();
            resolve_conflicts(&mut chosen);
            let mut series = labels.to_vec();
            series.extend(chosen.iter().map(|(k, v)| (k.as_str(), *v)));
            self.add(&format!("{prefix}_{family}"), &series, 1.0);
        }
    }

    /// `<prefix>_owner` samples: one per owner reference, or one with empty values.
    pub fn owners(&mut self, name: &str, labels: &[(&str, &str)], owners: &[OwnerReference]) {
        if owners.is_empty() {
            let mut series = labels.to_vec();
            series.extend([
                ("owner_kind", ""),
                ("owner_name", ""),
                ("owner_is_controller", ""),
            ]);
            self.add(name, &series, 1.0);
        }
        for owner in owners {
            let mut series = labels.to_vec();
            let controller = if owner.controller == Some(true) {
                "true"
            } else {
                "false"
            };
            series.extend([
                ("owner_kind", owner.kind.as_str()),
                ("owner_name", owner.name.as_str()),
                ("owner_is_controller", controller),
            ]);
            self.add(name, &series, 1.0);
        }
    }
}

/// A kind the exporter watches.
pub trait Object:
    Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static
{
    /// Its resource name (`pods`): kinds are written in this order, and allow lists use it.
    const RESOURCE: &'static str;
    /// Its families, in the order kube-state-metrics writes them.
    const FAMILIES: &'static [Family];
    /// Adds the object's samples.
    fn render(&self, lines: &mut Lines, allow: &Allow);
}

/// One object's rendered text: every family's samples in one allocation, with the end offset
/// of each family's part (a store holds one per object, so this layout saves dozens of
/// allocations per pod).
#[derive(Debug)]
struct Rendered {
    text: Box<str>,
    ends: Box<[u32]>,
    /// The identifying labels' text that shortened lines leave out.
    identity: Box<str>,
}

impl Rendered {
    fn new(parts: Vec<String>, identity: Option<String>) -> Self {
        let mut text = String::with_capacity(parts.iter().map(String::len).sum());
        let mut ends = Vec::with_capacity(parts.len());
        for part in parts {
            text.push_str(&part);
            ends.push(u32::try_from(text.len()).unwrap_or(u32::MAX));
        }
        Self {
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
            identity: identity.unwrap_or_default().into_boxed_str(),
        }
    }

    /// Writes family `i`'s samples, named `name`, restoring shortened lines.
    fn write_family(&self, i: usize, name: &str, out: &mut String) {
        let text = self.family(i);
        if !text.contains(SHORT) {
            out.push_str(text);
            return;
        }
        for line in text.split_inclusive('\n') {
            match line.strip_prefix(SHORT) {
                Some(rest) => {
                    out.push_str(name);
                    out.push('{');
                    out.push_str(&self.identity);
                    out.push_str(rest);
                }
                None => out.push_str(line),
            }
        }
    }

    /// Family `i`'s samples.
    fn family(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        self.text.get(start..self.ends[i] as usize).unwrap_or("")
    }
}

/// The rendered objects of one kind.
#[derive(Debug)]
struct Store {
    resource: &'static str,
    families: &'static [Family],
    objects: RwLock<HashMap<String, Rendered>>,
}

impl Store {
    /// Writes family `i` (header and every object's samples) to `out`.
    fn write_family(&self, i: usize, objects: &HashMap<String, Rendered>, out: &mut String) {
        let family = &self.families[i];
        family.write_header(out);
        for rendered in objects.values() {
            rendered.write_family(i, family.name, out);
        }
    }

    fn write(&self, out: &mut String) {
        let objects = self.objects.read();
        if objects.is_empty() {
            return;
        }
        for i in 0..self.families.len() {
            self.write_family(i, &objects, out);
        }
    }

    fn size(&self) -> usize {
        let objects = self.objects.read();
        objects.values().map(|r| r.text.len()).sum::<usize>() + self.families.len() * 160
    }
}

fn key<K: Object>(object: &K) -> String {
    match object.meta().uid.as_deref() {
        Some(uid) if !uid.is_empty() => uid.to_owned(),
        _ => format!(
            "{}/{}",
            object.namespace().unwrap_or_default(),
            object.name_any()
        ),
    }
}

fn render<K: Object>(object: &K, allow: &Allow) -> Rendered {
    let mut lines = Lines::new(K::FAMILIES, K::RESOURCE);
    object.render(&mut lines, allow);
    Rendered::new(lines.text, lines.identity.map(|(_, text)| text))
}

/// The cluster-state exporter: a store per kind, filled by watches.
#[derive(Debug, Default, Clone)]
pub struct StateMetrics {
    stores: Arc<RwLock<Vec<Arc<Store>>>>,
}

impl StateMetrics {
    /// Renders every kind, in resource-name order.
    #[must_use]
    pub fn scrape(&self) -> String {
        let stores = self.stores.read().clone();
        let mut out = String::with_capacity(stores.iter().map(|s| s.size()).sum());
        for store in stores {
            store.write(&mut out);
        }
        out
    }

    /// Renders every kind as a stream of chunks of about `CHUNK` bytes, sent into the returned
    /// channel from a blocking thread. A store's lock is held only while one family is copied,
    /// never while waiting for the scraper, and the whole exposition is never in memory at
    /// once (at 10 000 pods it is over 50 MB).
    #[must_use]
    pub fn scrape_chunks(&self) -> tokio::sync::mpsc::Receiver<bytes::Bytes> {
        const CHUNK: usize = 256 * 1024;
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        let stores = self.stores.read().clone();
        tokio::task::spawn_blocking(move || {
            let mut out = String::with_capacity(CHUNK * 2);
            for store in stores {
                for i in 0..store.families.len() {
                    let mut chunks = Vec::new();
                    {
                        let objects = store.objects.read();
                        if objects.is_empty() {
                            break;
                        }
                        let family = &store.families[i];
                        family.write_header(&mut out);
                        for rendered in objects.values() {
                            rendered.write_family(i, family.name, &mut out);
                            if out.len() >= CHUNK {
                                chunks.push(bytes::Bytes::from(std::mem::replace(
                                    &mut out,
                                    String::with_capacity(CHUNK * 2),
                                )));
                            }
                        }
                    }
                    for chunk in chunks {
                        if sender.blocking_send(chunk).is_err() {
                            return;
                        }
                    }
                }
            }
            if !out.is_empty() {
                let _ = sender.blocking_send(bytes::Bytes::from(out));
            }
        });
        receiver
    }

    fn store<K: Object>(&self) -> Arc<Store> {
        let mut stores = self.stores.write();
        if let Some(store) = stores.iter().find(|s| s.resource == K::RESOURCE) {
            return store.clone();
        }
        let store = Arc::new(Store {
            resource: K::RESOURCE,
            families: K::FAMILIES,
            objects: RwLock::new(HashMap::new()),
        });
        stores.push(store.clone());
        stores.sort_by_key(|s| s.resource);
        store
    }

    /// Renders `objects` of kind `K` into the exporter, replacing what it had of that kind
    /// (for tests and for callers that list themselves).
    pub fn replace<K: Object>(&self, objects: &[K], allow: &Allow) {
        let store = self.store::<K>();
        let rendered = objects.iter().map(|o| (key(o), render(o, allow))).collect();
        *store.objects.write() = rendered;
    }

    /// Watches kind `K` through `api` until the stream ends (never, normally: the watcher
    /// relists after errors, with back-off).
    pub async fn watch<K: Object>(&self, api: Api<K>, allow: Arc<Allow>) {
        let store = self.store::<K>();
        let stream = watcher(api, watcher::Config::default().any_semantic());
        let mut stream = std::pin::pin!(kube::runtime::WatchStreamExt::default_backoff(stream));
        let mut staging: Option<HashMap<String, Rendered>> = None;
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Init) => staging = Some(HashMap::new()),
                Ok(watcher::Event::InitApply(object)) => {
                    if let Some(staging) = staging.as_mut() {
                        staging.insert(key(&object), render(&object, &allow));
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    if let Some(staging) = staging.take() {
                        *store.objects.write() = staging;
                    }
                }
                Ok(watcher::Event::Apply(object)) => {
                    let lines = render(&object, &allow);
                    store.objects.write().insert(key(&object), lines);
                }
                Ok(watcher::Event::Delete(object)) => {
                    store.objects.write().remove(&key(&object));
                }
                Err(error) => {
                    tracing::debug!(resource = K::RESOURCE, %error, "state metrics watch failed; retrying");
                }
            }
        }
    }

    /// Watches every kind the exporter knows, until `shutdown`.
    pub async fn run(
        &self,
        client: kube::Client,
        allow: Allow,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let allow = Arc::new(allow);
        let mut tasks = tokio::task::JoinSet::new();
        macro_rules! watch {
            ($($kind:ty),* $(,)?) => {$(
                let (this, api, kind_allow) = (self.clone(), Api::<$kind>::all(client.clone()), allow.clone());
                tasks.spawn(async move { this.watch(api, kind_allow).await });
            )*};
        }
        use k8s_openapi::api::{apps, autoscaling, batch, coordination, core, discovery, policy};
        watch!(
            apps::v1::DaemonSet,
            apps::v1::Deployment,
            apps::v1::ReplicaSet,
            apps::v1::StatefulSet,
            autoscaling::v2::HorizontalPodAutoscaler,
            batch::v1::CronJob,
            batch::v1::Job,
            coordination::v1::Lease,
            core::v1::ConfigMap,
            core::v1::Endpoints,
            core::v1::Namespace,
            core::v1::Node,
            core::v1::PersistentVolume,
            core::v1::PersistentVolumeClaim,
            core::v1::Pod,
            core::v1::ResourceQuota,
            core::v1::Secret,
            core::v1::Service,
            discovery::v1::EndpointSlice,
            policy::v1::PodDisruptionBudget,
            gitops::Application,
        );
        shutdown.cancelled().await;
        tasks.abort_all();
    }
}

/// Serves `state` at `/metrics` on `listener` until `shutdown` (gzip only when `gzip` is set,
/// as kube-state-metrics' `--enable-gzip-encoding`: a large cluster's scrape compresses slower
/// than it travels over a local network).
///
/// # Errors
/// The listener fails.
pub async fn serve(
    state: StateMetrics,
    listener: tokio::net::TcpListener,
    shutdown: tokio_util::sync::CancellationToken,
    gzip: bool,
) -> anyhow::Result<()> {
    let render = if gzip {
        crate::http::Render::Text(Arc::new(move || state.scrape()))
    } else {
        crate::http::Render::Chunks(Arc::new(move || state.scrape_chunks()))
    };
    crate::http::serve(listener, shutdown, "Kube State Metrics", render, gzip).await
}

/// The `[STABLE] Unix creation timestamp` family every kind has, named `<prefix>_created`.
macro_rules! created {
    ($name:literal) => {
        $crate::state::gauge($name, "[STABLE] Unix creation timestamp")
    };
}
pub(crate) use created;

#[cfg(test)]
mod tests;
