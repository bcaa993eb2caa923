//! The API server's own Prometheus metrics, named as kube-apiserver names them.

use std::time::Duration;

use axum::response::{IntoResponse, Response};

use crate::rest::RequestInfo;
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

/// kube-apiserver's request labels (`apiserver_request_total`); the latency histograms drop
/// `code`, and the SLI one `dry_run` too.
const LABELS: [&str; 9] = [
    "verb",
    "dry_run",
    "group",
    "version",
    "resource",
    "subresource",
    "scope",
    "component",
    "code",
];
const SLI_LABELS: [&str; 7] = [
    "verb",
    "group",
    "version",
    "resource",
    "subresource",
    "scope",
    "component",
];

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
            &LABELS,
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "apiserver_request_duration_seconds",
                "Response latency distribution in seconds for each verb and resource.",
            )
            .buckets(BUCKETS.to_vec()),
            &LABELS[..8],
        )
        .expect("valid metric");
        let sli_duration = HistogramVec::new(
            HistogramOpts::new("apiserver_request_sli_duration_seconds", "Response latency distribution (not counting webhook duration and priority & fairness queue wait times) in seconds for each verb and resource.")
                .buckets(BUCKETS.to_vec()),
            &SLI_LABELS,
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

    /// Records one finished request, labelled as kube-apiserver labels it: the verb in
    /// capitals as the HTTP method it was, but `LIST`, `WATCH`, `APPLY` and `CONNECT` told
    /// apart; requests that are not for resources under their HTTP method.
    pub fn observe(&self, info: &RequestInfo, code: u16, elapsed: Duration) {
        let verb = match (info.verb, info.apply) {
            ("list", _) => "LIST",
            ("watch", _) => "WATCH",
            ("get", _) | ("", _) => "GET",
            ("create", _) => "POST",
            ("update", _) => "PUT",
            ("patch", true) => "APPLY",
            ("patch", false) => "PATCH",
            ("delete" | "deletecollection", _) => "DELETE",
            ("connect", _) => "CONNECT",
            _ => "UNKNOWN",
        };
        let dry_run = if info.dry_run { "All" } else { "" };
        let code = code.to_string();
        let values = [
            verb,
            dry_run,
            &info.group,
            &info.version,
            &info.resource,
            &info.subresource,
            info.scope,
            "apiserver",
            &code,
        ];
        self.requests.with_label_values(&values).inc();
        // long-running requests are left out of the latency histograms, as kube-apiserver does
        if !matches!(verb, "WATCH" | "CONNECT") {
            let seconds = elapsed.as_secs_f64();
            self.duration
                .with_label_values(&values[..8])
                .observe(seconds);
            // SLI_LABELS: the same without dry_run
            let [
                verb,
                _,
                group,
                version,
                resource,
                subresource,
                scope,
                component,
                _,
            ] = values;
            self.sli_duration
                .with_label_values(&[
                    verb,
                    group,
                    version,
                    resource,
                    subresource,
                    scope,
                    component,
                ])
                .observe(seconds);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_labelled_as_kube_apiserver_labels_them() {
        let metrics = Metrics::new();
        let apply = RequestInfo {
            verb: "patch",
            group: "apps".into(),
            version: "v1".into(),
            resource: "deployments".into(),
            scope: "resource",
            apply: true,
            dry_run: true,
            ..RequestInfo::default()
        };
        metrics.observe(&apply, 200, Duration::from_millis(3));
        let watch = RequestInfo {
            verb: "watch",
            version: "v1".into(),
            resource: "pods".into(),
            scope: "cluster",
            ..RequestInfo::default()
        };
        metrics.observe(&watch, 200, Duration::from_secs(300));
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&metrics.registry.gather(), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(
            "apiserver_request_total{code=\"200\",component=\"apiserver\",dry_run=\"All\",group=\"apps\",resource=\"deployments\",scope=\"resource\",subresource=\"\",verb=\"APPLY\",version=\"v1\"} 1"
        ), "{text}");
        assert!(text.contains(
            "apiserver_request_sli_duration_seconds_count{component=\"apiserver\",group=\"apps\",resource=\"deployments\",scope=\"resource\",subresource=\"\",verb=\"APPLY\",version=\"v1\"} 1"
        ));
        assert!(text.contains("verb=\"WATCH\""));
        assert!(
            !text.contains("apiserver_request_duration_seconds_count{component=\"apiserver\",dry_run=\"\",group=\"\",resource=\"pods\""),
            "watches stay out of the latency histograms"
        );
    }
}
