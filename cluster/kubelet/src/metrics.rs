//! The kubelet's own Prometheus metrics on `/metrics`, named as the kubelet names them:
//! running pods and containers (read from the runtime at scrape time), started containers and
//! their errors, pod start latency, pod worker sync latency and evictions.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The kubelet's metrics.
pub struct KubeletMetrics {
    registry: Registry,
    /// `kubelet_running_pods`.
    pub running_pods: IntGauge,
    /// `kubelet_running_containers{container_state}`.
    pub running_containers: IntGaugeVec,
    /// `kubelet_started_containers_total{container_type}`.
    pub started_containers: IntCounterVec,
    /// `kubelet_started_containers_errors_total{code,container_type}`.
    pub started_container_errors: IntCounterVec,
    /// `kubelet_pod_start_duration_seconds`: first seen → all containers running.
    pub pod_start_duration: Histogram,
    /// `kubelet_pod_worker_duration_seconds{operation}`.
    pub pod_worker_duration: HistogramVec,
    /// `kubelet_evictions{eviction_signal}`.
    pub evictions: IntCounterVec,
    /// The kubelet's API client requests (client-go's `rest_client_*`).
    requests: std::sync::Arc<kelson_common::client_metrics::ClientMetrics>,
}

impl std::fmt::Debug for KubeletMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KubeletMetrics")
    }
}

const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
];

impl KubeletMetrics {
    /// Registers the metrics, labelled with the node.
    ///
    /// # Panics
    /// Never in practice: names are static and unique.
    #[must_use]
    pub fn new(node: &str) -> Self {
        let registry = Registry::new();
        // process_* (CPU, memory, file descriptors, start time), as every Kubernetes component
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process metrics register once");
        let node_name = IntGaugeVec::new(
            Opts::new(
                "kubelet_node_name",
                "The node's name. The count is always 1.",
            ),
            &["node"],
        )
        .expect("valid metric");
        node_name.with_label_values(&[node]).set(1);
        let running_pods = IntGauge::new(
            "kubelet_running_pods",
            "Number of pods that have a running pod sandbox",
        )
        .expect("valid metric");
        let running_containers = IntGaugeVec::new(
            Opts::new(
                "kubelet_running_containers",
                "Number of containers currently running",
            ),
            &["container_state"],
        )
        .expect("valid metric");
        let started_containers = IntCounterVec::new(
            Opts::new(
                "kubelet_started_containers_total",
                "Cumulative number of containers started",
            ),
            &["container_type"],
        )
        .expect("valid metric");
        let started_container_errors = IntCounterVec::new(
            Opts::new(
                "kubelet_started_containers_errors_total",
                "Cumulative number of errors when starting containers",
            ),
            &["code", "container_type"],
        )
        .expect("valid metric");
        let pod_start_duration = Histogram::with_opts(
            HistogramOpts::new(
                "kubelet_pod_start_duration_seconds",
                "Duration in seconds from kubelet seeing a pod for the first time to the pod starting to run",
            )
            .buckets(BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let pod_worker_duration = HistogramVec::new(
            HistogramOpts::new(
                "kubelet_pod_worker_duration_seconds",
                "Duration in seconds to sync a single pod. Broken down by operation type: create, update, or sync",
            )
            .buckets(BUCKETS.to_vec()),
            &["operation"],
        )
        .expect("valid metric");
        let evictions = IntCounterVec::new(
            Opts::new(
                "kubelet_evictions",
                "Cumulative number of pod evictions by eviction signal",
            ),
            &["eviction_signal"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(node_name) as Box<dyn prometheus::core::Collector>,
            Box::new(running_pods.clone()),
            Box::new(running_containers.clone()),
            Box::new(started_containers.clone()),
            Box::new(started_container_errors.clone()),
            Box::new(pod_start_duration.clone()),
            Box::new(pod_worker_duration.clone()),
            Box::new(evictions.clone()),
        ] {
            registry.register(collector).expect("unique metric");
        }
        Self {
            registry,
            running_pods,
            running_containers,
            started_containers,
            started_container_errors,
            pod_start_duration,
            pod_worker_duration,
            evictions,
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
    #[must_use]
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8(buffer).unwrap_or_default() + &self.requests.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_kubelet_names() {
        let metrics = KubeletMetrics::new("n1");
        metrics.running_pods.set(3);
        metrics
            .started_containers
            .with_label_values(&["container"])
            .inc();
        let text = metrics.render();
        assert!(text.contains("kubelet_running_pods 3"));
        assert!(text.contains("kubelet_node_name{node=\"n1\"} 1"));
        assert!(text.contains("kubelet_started_containers_total{container_type=\"container\"} 1"));
    }
}
