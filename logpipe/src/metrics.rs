//! The pipeline's own metrics, one set per component as every component reports them:
//! records and bytes received, records sent, records dropped (with the reason), errors (with
//! their type); plus the index's size, commits and end-to-end lag.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Every metric of one pipeline.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    received_events: IntCounterVec,
    received_bytes: IntCounterVec,
    sent_events: IntCounterVec,
    discarded_events: IntCounterVec,
    errors: IntCounterVec,
    /// Records in the buffer in front of each sink.
    pub buffer_events: IntGaugeVec,
    /// Bytes in the buffer (`buffer:`) in front of each sink.
    pub buffer_bytes: IntGaugeVec,
    /// Documents in the index.
    pub index_documents: IntGauge,
    /// Bytes the index takes on disk.
    pub index_bytes: IntGauge,
    /// Index partitions.
    pub index_partitions: IntGauge,
    /// Time each commit took.
    pub index_commit_seconds: Histogram,
    /// Seconds from a line's timestamp to its commit, for the newest committed line.
    pub lag_seconds: prometheus::Gauge,
}

const COMPONENT: [&str; 2] = ["component_id", "component_type"];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    ///
    /// # Panics
    /// Only on a bug: the names below are valid and distinct.
    #[must_use]
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let vec = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(vec.clone()))
                .expect("unique metric");
            vec
        };
        let gauge = |name: &str, help: &str| {
            let gauge = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(gauge.clone()))
                .expect("unique metric");
            gauge
        };
        let received_events = counter(
            "logpipe_component_received_events_total",
            "Records a component received.",
            &COMPONENT,
        );
        let received_bytes = counter(
            "logpipe_component_received_bytes_total",
            "Raw bytes a component received.",
            &COMPONENT,
        );
        let sent_events = counter(
            "logpipe_component_sent_events_total",
            "Records a component sent on (or, for a sink, made durable).",
            &COMPONENT,
        );
        let discarded_events = counter(
            "logpipe_component_discarded_events_total",
            "Records a component dropped, by reason.",
            &["component_id", "component_type", "reason"],
        );
        let errors = counter(
            "logpipe_component_errors_total",
            "Errors a component met, by type (a record that did not parse is kept and counted here).",
            &["component_id", "component_type", "error_type"],
        );
        let buffer_events = IntGaugeVec::new(
            Opts::new(
                "logpipe_buffer_events",
                "Records waiting in the buffer in front of a sink.",
            ),
            &["component_id"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(buffer_events.clone()))
            .expect("unique metric");
        let buffer_bytes = IntGaugeVec::new(
            Opts::new(
                "logpipe_buffer_bytes",
                "Bytes waiting in the buffer (buffer:) in front of a sink.",
            ),
            &["component_id"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(buffer_bytes.clone()))
            .expect("unique metric");
        let index_commit_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "logpipe_index_commit_duration_seconds",
                "Time an index commit took.",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
        )
        .expect("valid metric");
        registry
            .register(Box::new(index_commit_seconds.clone()))
            .expect("unique metric");
        let lag_seconds = prometheus::Gauge::new(
            "logpipe_index_lag_seconds",
            "Seconds from the newest committed line's timestamp to its commit.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(lag_seconds.clone()))
            .expect("unique metric");
        Self {
            received_events,
            received_bytes,
            sent_events,
            discarded_events,
            errors,
            buffer_events,
            buffer_bytes,
            index_documents: gauge("logpipe_index_documents", "Documents in the index."),
            index_bytes: gauge("logpipe_index_bytes", "Bytes the index takes on disk."),
            index_partitions: gauge("logpipe_index_partitions", "Time partitions of the index."),
            index_commit_seconds,
            lag_seconds,
            registry,
        }
    }

    /// The counters of component `id` of type `kind`.
    #[must_use]
    pub fn component(&self, id: &str, kind: &'static str) -> ComponentMetrics {
        let labels = [id, kind];
        ComponentMetrics {
            id: id.into(),
            kind,
            received_events: self.received_events.with_label_values(&labels),
            received_bytes: self.received_bytes.with_label_values(&labels),
            sent_events: self.sent_events.with_label_values(&labels),
            discarded: self.discarded_events.clone(),
            errors: self.errors.clone(),
        }
    }

    /// The text exposition of every metric.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(error) = encoder.encode_utf8(&self.registry.gather(), &mut out) {
            tracing::warn!(%error, "failed to encode metrics");
        }
        out
    }
}

/// One component's counters.
#[derive(Clone)]
pub struct ComponentMetrics {
    id: std::sync::Arc<str>,
    kind: &'static str,
    received_events: IntCounter,
    received_bytes: IntCounter,
    sent_events: IntCounter,
    discarded: IntCounterVec,
    errors: IntCounterVec,
}

impl ComponentMetrics {
    /// Counts records received.
    pub fn received(&self, events: u64, bytes: u64) {
        self.received_events.inc_by(events);
        self.received_bytes.inc_by(bytes);
    }

    /// Counts records sent on.
    pub fn sent(&self, events: u64) {
        self.sent_events.inc_by(events);
    }

    /// Counts records dropped for `reason`.
    pub fn discarded(&self, reason: &str, events: u64) {
        self.discarded
            .with_label_values(&[&*self.id, self.kind, reason])
            .inc_by(events);
    }

    /// Counts one error of `error_type`.
    pub fn error(&self, error_type: &str) {
        self.errors
            .with_label_values(&[&*self.id, self.kind, error_type])
            .inc();
    }
}
