//! The reconciler's Prometheus metrics. Names follow Argo CD's (`argocd_app_sync_total`,
//! `argocd_git_request_total`, …) with our prefix, and Flux's `gotk_reconcile_duration_seconds`
//! is kept as it is so Flux dashboards work unchanged.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

/// Every metric of the reconciler, registered in its own registry.
pub struct Metrics {
    pub registry: Registry,
    /// Sync attempts by Application and result (Succeeded, Failed, PruneRefused, OutOfSync).
    pub syncs: IntCounterVec,
    /// Duration of whole reconciles, Flux's name and labels.
    pub reconcile_duration: HistogramVec,
    /// Git requests by type (ls-remote, fetch) and result.
    pub git_requests: IntCounterVec,
    pub git_duration: HistogramVec,
    /// Webhook deliveries by provider and result.
    pub webhooks: IntCounterVec,
    /// Out-of-band changes found on managed objects, by Application and action (corrected,
    /// reported).
    pub drift: IntCounterVec,
    /// Objects applied and pruned, by Application.
    pub objects: IntCounterVec,
    /// The reconciler's API client requests (client-go's rest_client_* families).
    requests: std::sync::Arc<kelson_common::client_metrics::ClientMetrics>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        // process_* (CPU, memory, file descriptors, start time), as every Kubernetes component
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process metrics register once");
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let seconds = vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
        Self {
            syncs: counter(
                "kelson_app_sync_total",
                "Sync attempts of Applications, by result.",
                &["namespace", "name", "result"],
            ),
            reconcile_duration: histogram(
                "gotk_reconcile_duration_seconds",
                "Duration of reconciles, in seconds.",
                &["kind", "namespace", "name"],
                seconds.clone(),
            ),
            git_requests: counter(
                "kelson_git_request_total",
                "Git requests to remotes, by type and result.",
                &["request_type", "result"],
            ),
            git_duration: histogram(
                "kelson_git_request_duration_seconds",
                "Duration of git requests to remotes, in seconds.",
                &["request_type"],
                seconds,
            ),
            webhooks: counter(
                "kelson_webhook_deliveries_total",
                "Webhook deliveries, by provider and result (accepted, unmatched, ignored, invalid_signature, unconfigured, bad_request).",
                &["provider", "result"],
            ),
            drift: counter(
                "kelson_app_drift_total",
                "Out-of-band changes found on managed objects, by action (corrected, reported).",
                &["namespace", "name", "action"],
            ),
            objects: counter(
                "kelson_app_objects_total",
                "Objects applied and pruned by Applications.",
                &["namespace", "name", "operation"],
            ),
            registry,
            requests: std::sync::Arc::default(),
        }
    }

    /// Serves the API client's request counts with the rest.
    #[must_use]
    pub fn with_requests(
        mut self,
        requests: std::sync::Arc<kelson_common::client_metrics::ClientMetrics>,
    ) -> Self {
        self.requests = requests;
        self
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding");
        String::from_utf8(buffer).unwrap_or_default() + &self.requests.render()
    }
}
