//! The API server's own Prometheus metrics, named as kube-apiserver names them.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

/// Request counters and latency histograms.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    sli_duration: HistogramVec,
    /// The storage layer's families.
    pub storage: crate::storage_metrics::StorageMetrics,
}

const BUCKETS: &[f64] = &[
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
    10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
];

impl Metrics {
    /// Registers the metrics.
    ///
    /// # Panics
    /// Never in practice: names are static and unique.
    #[must_use]
    pub fn new() -> Self {
        let registry = Registry::new();
        // process_* (CPU, memory, file descriptors, start time), as every Kubernetes component
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process metrics register once");
        let requests = IntCounterVec::new(
            Opts::new("apiserver_request_total", "Counter of apiserver requests broken out for each verb, group, version, resource and HTTP response code."),
            &["verb", "resource", "code"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "apiserver_request_duration_seconds",
                "Response latency distribution in seconds for each verb and resource.",
            )
            .buckets(BUCKETS.to_vec()),
            &["verb", "resource"],
        )
        .expect("valid metric");
        let sli_duration = HistogramVec::new(
            HistogramOpts::new("apiserver_request_sli_duration_seconds", "Response latency distribution (not counting webhook duration and priority & fairness queue wait times) in seconds for each verb and resource.")
                .buckets(BUCKETS.to_vec()),
            &["verb", "resource"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(requests.clone()))
            .expect("unique");
        registry
            .register(Box::new(duration.clone()))
            .expect("unique");
        registry
            .register(Box::new(sli_duration.clone()))
            .expect("unique");
        let storage = crate::storage_metrics::StorageMetrics::register(&registry);
        Self {
            registry,
            storage,
            requests,
            duration,
            sli_duration,
        }
    }

    /// Records one finished request.
    pub fn observe(&self, verb: &str, resource: &str, code: u16, elapsed: Duration) {
        self.requests
            .with_label_values(&[verb, resource, &code.to_string()])
            .inc();
        if verb != "watch" {
            self.duration
                .with_label_values(&[verb, resource])
                .observe(elapsed.as_secs_f64());
            self.sli_duration
                .with_label_values(&[verb, resource])
                .observe(elapsed.as_secs_f64());
        }
    }

    /// The text exposition format.
    #[must_use]
    pub fn render(&self) -> Response {
        let mut buffer = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        (
            [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            buffer,
        )
            .into_response()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
