//! The scheduler's Prometheus metrics, named as kube-scheduler names them (so the mixin's
//! scheduler dashboard works): attempts and their latency by result, the end-to-end scheduling
//! latency of pods, pending pods by queue, and process_*.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
    exponential_buckets,
};

use crate::scheduler::DEFAULT_SCHEDULER;

/// The scheduler's metrics.
pub struct SchedulerMetrics {
    registry: Registry,
    attempts: IntCounterVec,
    attempt_duration: HistogramVec,
    sli_duration: HistogramVec,
    pending: IntGaugeVec,
}

impl std::fmt::Debug for SchedulerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SchedulerMetrics")
    }
}

impl Default for SchedulerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// How a scheduling attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Bound to a node.
    Scheduled,
    /// No node fits.
    Unschedulable,
    /// Binding failed.
    Error,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Scheduled => "scheduled",
            Outcome::Unschedulable => "unschedulable",
            Outcome::Error => "error",
        }
    }
}

impl SchedulerMetrics {
    /// Registers the metrics.
    ///
    /// # Panics
    /// Never in practice: names are static and unique.
    #[must_use]
    pub fn new() -> Self {
        let registry = Registry::new();
        let attempts = IntCounterVec::new(
            Opts::new(
                "scheduler_schedule_attempts_total",
                "[STABLE] Number of attempts to schedule pods, by the result. 'unschedulable' means a pod could not be scheduled, while 'error' means an internal scheduler problem.",
            ),
            &["profile", "result"],
        )
        .expect("valid metric");
        let attempt_duration = HistogramVec::new(
            HistogramOpts::new(
                "scheduler_scheduling_attempt_duration_seconds",
                "[STABLE] Scheduling attempt latency in seconds (scheduling algorithm + binding)",
            )
            .buckets(exponential_buckets(0.001, 2.0, 15).expect("valid buckets")),
            &["profile", "result"],
        )
        .expect("valid metric");
        let sli_duration = HistogramVec::new(
            HistogramOpts::new(
                "scheduler_pod_scheduling_sli_duration_seconds",
                "[BETA] E2e latency for a pod being scheduled, from the time the pod enters the scheduling queue and might involve multiple scheduling attempts.",
            )
            .buckets(exponential_buckets(0.01, 2.0, 20).expect("valid buckets")),
            &["attempts"],
        )
        .expect("valid metric");
        let pending = IntGaugeVec::new(
            Opts::new(
                "scheduler_pending_pods",
                "[STABLE] Number of pending pods, by the queue type. 'active' means number of pods in activeQ; 'backoff' means number of pods in backoffQ; 'unschedulable' means number of pods in unschedulablePods that the scheduler attempted to schedule and failed; 'gated' is the number of unschedulable pods that the scheduler never attempted to schedule because they are gated.",
            ),
            &["queue"],
        )
        .expect("valid metric");
        for metric in [
            Box::new(attempts.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(attempt_duration.clone()),
            Box::new(sli_duration.clone()),
            Box::new(pending.clone()),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ] {
            registry.register(metric).expect("unique metric");
        }
        for queue in ["active", "backoff", "unschedulable", "gated"] {
            pending.with_label_values(&[queue]).set(0);
        }
        Self {
            registry,
            attempts,
            attempt_duration,
            sli_duration,
            pending,
        }
    }

    /// Records one attempt that took `took`.
    pub fn attempt(&self, outcome: Outcome, took: Duration) {
        let labels = [DEFAULT_SCHEDULER, outcome.label()];
        self.attempts.with_label_values(&labels).inc();
        self.attempt_duration
            .with_label_values(&labels)
            .observe(took.as_secs_f64());
    }

    /// Records a pod scheduled `since` it was first queued, after `attempts` attempts.
    pub fn scheduled(&self, attempts: u32, since: Duration) {
        self.sli_duration
            .with_label_values(&[&attempts.to_string()])
            .observe(since.as_secs_f64());
    }

    /// Sets the pending pods per queue.
    pub fn pending(&self, active: usize, backoff: usize, unschedulable: usize) {
        for (queue, count) in [
            ("active", active),
            ("backoff", backoff),
            ("unschedulable", unschedulable),
        ] {
            self.pending
                .with_label_values(&[queue])
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// The exposition text.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_and_queues_render_as_kube_scheduler_names_them() {
        let metrics = SchedulerMetrics::new();
        metrics.attempt(Outcome::Scheduled, Duration::from_millis(3));
        metrics.attempt(Outcome::Unschedulable, Duration::from_millis(1));
        metrics.scheduled(2, Duration::from_millis(1500));
        metrics.pending(1, 2, 3);
        let text = metrics.render();
        assert!(text.contains(
            "scheduler_schedule_attempts_total{profile=\"default-scheduler\",result=\"scheduled\"} 1"
        ));
        assert!(text.contains("scheduler_pending_pods{queue=\"unschedulable\"} 3"));
        assert!(text.contains("scheduler_pending_pods{queue=\"gated\"} 0"));
        assert!(
            text.contains("scheduler_pod_scheduling_sli_duration_seconds_count{attempts=\"2\"} 1")
        );
        assert!(text.contains("process_cpu_seconds_total"));
    }
}
