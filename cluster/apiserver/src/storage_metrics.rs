//! Storage metrics, named as kube-apiserver's storage layer names them, whichever backend is
//! behind (embedded or etcd): `etcd_request_duration_seconds`, `etcd_requests_total` and
//! `etcd_request_errors_total` by operation and object type, `apiserver_storage_objects` by
//! resource (recounted every minute, -1 when a count fails) and `apiserver_storage_size_bytes`
//! for the embedded database file.
//!
//! [`Metered`] wraps a [`Storage`] and times every call; the type label is the resource the key
//! belongs to (`pods`, `applications.gitops.kelson.dev`). Only backend failures count as errors:
//! a create that finds the key, or a compare-and-swap that loses, is an answer, as in etcd.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use kelson_storage::{
    Error, KeyValue, ListRequest, ListResponse, Result, Revision, Storage, WatchStream,
};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use tokio_util::sync::CancellationToken;

use crate::ApiServer;

/// kube-apiserver's buckets for storage latency.
const BUCKETS: &[f64] = &[
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
    10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
];

/// The storage families.
#[derive(Clone)]
pub struct StorageMetrics {
    duration: HistogramVec,
    requests: IntCounterVec,
    errors: IntCounterVec,
    objects: IntGaugeVec,
    size: IntGaugeVec,
}

impl StorageMetrics {
    /// Registers the families in `registry`.
    ///
    /// # Panics
    /// Never in practice: names are static and unique.
    #[must_use]
    pub fn register(registry: &Registry) -> Self {
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "etcd_request_duration_seconds",
                "[ALPHA] Etcd request latency in seconds for each operation and object type.",
            )
            .buckets(BUCKETS.to_vec()),
            &["operation", "type"],
        )
        .expect("valid metric");
        let requests = IntCounterVec::new(
            Opts::new(
                "etcd_requests_total",
                "[ALPHA] Etcd request counts for each operation and object type.",
            ),
            &["operation", "type"],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "etcd_request_errors_total",
                "[ALPHA] Etcd failed request counts for each operation and object type.",
            ),
            &["operation", "type"],
        )
        .expect("valid metric");
        let objects = IntGaugeVec::new(
            Opts::new(
                "apiserver_storage_objects",
                "[STABLE] Number of stored objects at the time of last check split by kind. In case of a fetching error, the value will be -1.",
            ),
            &["resource"],
        )
        .expect("valid metric");
        let size = IntGaugeVec::new(
            Opts::new(
                "apiserver_storage_size_bytes",
                "[STABLE] Size of the storage database file physically allocated in bytes.",
            ),
            &["storage_cluster_id"],
        )
        .expect("valid metric");
        for metric in [
            Box::new(duration.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(requests.clone()),
            Box::new(errors.clone()),
            Box::new(objects.clone()),
            Box::new(size.clone()),
        ] {
            registry.register(metric).expect("unique metric");
        }
        Self {
            duration,
            requests,
            errors,
            objects,
            size,
        }
    }

    fn record<T>(&self, operation: &str, key: &str, started: Instant, result: &Result<T>) {
        let kind = object_type(key);
        let labels = [operation, kind.as_str()];
        self.requests.with_label_values(&labels).inc();
        self.duration
            .with_label_values(&labels)
            .observe(started.elapsed().as_secs_f64());
        if matches!(result, Err(Error::Backend(_) | Error::Closed)) {
            self.errors.with_label_values(&labels).inc();
        }
    }
}

/// The resource a storage key or prefix belongs to: `/registry/pods/default/web` is `pods`,
/// `/registry/gitops.kelson.dev/applications/…` (a custom resource) is
/// `applications.gitops.kelson.dev`.
#[must_use]
pub fn object_type(key: &str) -> String {
    let mut segments = key
        .strip_prefix("/registry/")
        .unwrap_or(key)
        .split('/')
        .filter(|s| !s.is_empty());
    match (segments.next(), segments.next()) {
        (Some(group), Some(plural)) if group.contains('.') => format!("{plural}.{group}"),
        // Kubernetes' historical key layout
        (Some("services"), Some("endpoints")) => "endpoints".to_owned(),
        (Some("services"), Some("specs")) => "services".to_owned(),
        (Some("minions"), _) => "nodes".to_owned(),
        (Some(first), _) => first.to_owned(),
        _ => String::new(),
    }
}

/// A [`Storage`] whose every call is counted and timed.
pub struct Metered {
    inner: Arc<dyn Storage>,
    metrics: StorageMetrics,
}

impl Metered {
    /// Wraps `inner`.
    #[must_use]
    pub fn new(inner: Arc<dyn Storage>, metrics: StorageMetrics) -> Self {
        Self { inner, metrics }
    }
}

#[async_trait]
impl Storage for Metered {
    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        let started = Instant::now();
        let result = self.inner.create(key, value).await;
        self.metrics.record("create", key, started, &result);
        result
    }

    async fn get(&self, key: &str) -> Result<(Option<KeyValue>, Revision)> {
        let started = Instant::now();
        let result = self.inner.get(key).await;
        self.metrics.record("get", key, started, &result);
        result
    }

    async fn list(&self, request: ListRequest) -> Result<ListResponse> {
        let started = Instant::now();
        let prefix = request.prefix.clone();
        let result = self.inner.list(request).await;
        self.metrics.record("list", &prefix, started, &result);
        result
    }

    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<KeyValue> {
        let started = Instant::now();
        let result = self.inner.update(key, value, expected).await;
        self.metrics.record("update", key, started, &result);
        result
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(KeyValue, Revision)> {
        let started = Instant::now();
        let result = self.inner.delete(key, expected).await;
        self.metrics.record("delete", key, started, &result);
        result
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        let started = Instant::now();
        let result = self.inner.watch(prefix, after).await;
        self.metrics.record("watch", prefix, started, &result);
        result
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let started = Instant::now();
        let result = self.inner.compact(revision).await;
        self.metrics.record("compact", "", started, &result);
        result
    }

    async fn current_revision(&self) -> Result<Revision> {
        self.inner.current_revision().await
    }
}

/// Recounts the stored objects of every served resource, and the embedded database's size,
/// every `every` until `shutdown`. `storage` is the backend itself, so the recount does not
/// show in the request metrics.
pub async fn count_periodically(
    server: Arc<ApiServer>,
    storage: Arc<dyn Storage>,
    database: Option<std::path::PathBuf>,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        count(&server, storage.as_ref(), database.as_deref()).await;
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// One recount (reads keys in pages, as a count-only etcd range would).
pub async fn count(server: &ApiServer, storage: &dyn Storage, database: Option<&std::path::Path>) {
    let metrics = &server.metrics.storage;
    let mut seen = std::collections::HashSet::new();
    for rt in server.registry.all() {
        // several versions of one resource share their storage; reviews are never stored
        if rt.review || !seen.insert(rt.storage_prefix.clone()) {
            continue;
        }
        let resource = if rt.group.is_empty() {
            rt.plural.clone()
        } else {
            format!("{}.{}", rt.plural, rt.group)
        };
        let counted = count_prefix(storage, &rt.storage_prefix).await;
        metrics
            .objects
            .with_label_values(&[&resource])
            .set(counted.unwrap_or(-1));
    }
    if let Some(size) = database
        .and_then(|path| std::fs::metadata(path).ok())
        .map(|m| i64::try_from(m.len()).unwrap_or(i64::MAX))
    {
        metrics.size.with_label_values(&["embedded"]).set(size);
    }
}

async fn count_prefix(storage: &dyn Storage, prefix: &str) -> Result<i64> {
    let mut total = 0_i64;
    let mut start = None;
    let mut revision = None;
    loop {
        let page = storage
            .list(ListRequest {
                prefix: prefix.to_owned(),
                start: start.take(),
                revision,
                limit: 1000,
            })
            .await?;
        total += i64::try_from(page.kvs.len()).unwrap_or(i64::MAX);
        revision = Some(page.revision);
        match page.kvs.last() {
            Some(last) if page.more => start = Some(format!("{}\0", last.key)),
            _ => return Ok(total),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_resource() {
        assert_eq!(object_type("/registry/pods/default/web-0"), "pods");
        assert_eq!(object_type("/registry/pods/"), "pods");
        assert_eq!(object_type("/registry/namespaces/default"), "namespaces");
        assert_eq!(
            object_type("/registry/gitops.kelson.dev/applications/default/demo"),
            "applications.gitops.kelson.dev"
        );
        assert_eq!(object_type(""), "");
        assert_eq!(
            object_type("/registry/services/endpoints/default/web"),
            "endpoints"
        );
        assert_eq!(
            object_type("/registry/services/specs/default/web"),
            "services"
        );
        assert_eq!(object_type("/registry/minions/node-1"), "nodes");
    }

    #[tokio::test]
    async fn every_call_is_counted_and_only_backend_failures_are_errors() {
        let registry = Registry::new();
        let metrics = StorageMetrics::register(&registry);
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn Storage> = Arc::new(
            kelson_storage::Embedded::open(kelson_storage::EmbeddedOptions::at(
                dir.path().join("state.redb"),
            ))
            .unwrap(),
        );
        let storage = Metered::new(inner, metrics);
        storage
            .create("/registry/pods/default/a", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        assert!(
            storage
                .create("/registry/pods/default/a", Bytes::from_static(b"{}"))
                .await
                .is_err()
        );
        storage.get("/registry/pods/default/a").await.unwrap();
        assert_eq!(count_prefix(&storage, "/registry/pods/").await.unwrap(), 1);
        let mut out = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("etcd_requests_total{operation=\"create\",type=\"pods\"} 2"),
            "{text}"
        );
        assert!(text.contains("etcd_requests_total{operation=\"get\",type=\"pods\"} 1"));
        assert!(
            text.contains(
                "etcd_request_duration_seconds_count{operation=\"list\",type=\"pods\"} 1"
            )
        );
        assert!(!text.contains("etcd_request_errors_total{"), "{text}");
    }
}
