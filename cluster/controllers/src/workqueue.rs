//! Workqueue metrics and reconcile spans, one [`Queue`] per controller.
//!
//! The families are client-go's, named and labelled as kube-controller-manager exports them
//! (`workqueue_adds_total{name="deployment"}`, `workqueue_depth`, `workqueue_queue_duration_seconds`,
//! `workqueue_work_duration_seconds`, `workqueue_unfinished_work_seconds`,
//! `workqueue_longest_running_processor_seconds`, `workqueue_retries_total`), so the controller
//! manager's dashboards read them unchanged.
//!
//! kube-runtime keeps the queue itself; a [`Queue`] mirrors it from the outside, with client-go's
//! rules: an object waits from its first trigger until its reconcile starts (more triggers while
//! it waits are one add), a trigger while it is being reconciled queues it again, and a failed
//! reconcile is a retry. Each reconcile runs in a `reconcile` span (controller, object), so traces
//! and log lines show which controller acted on what.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use kube::Resource;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use parking_lot::Mutex;
use prometheus::{
    Encoder, GaugeVec, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tracing::Instrument;

/// client-go's buckets for queue and work durations: 10 ns to 10 s by factors of ten.
const BUCKETS: [f64; 10] = [1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0];

/// The workqueue families of every controller, rendered together.
pub struct Metrics {
    registry: Registry,
    adds: IntCounterVec,
    depth: IntGaugeVec,
    queue_duration: HistogramVec,
    work_duration: HistogramVec,
    unfinished: GaugeVec,
    longest: GaugeVec,
    retries: IntCounterVec,
    queues: Mutex<Vec<Arc<Queue>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("workqueue::Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers the families (and process_*, as every Kubernetes component exports them).
    ///
    /// # Panics
    /// Never in practice: names are static and unique.
    #[must_use]
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            IntCounterVec::new(Opts::new(name, help), &["name"]).expect("valid metric")
        };
        let histogram = |name: &str, help: &str| {
            HistogramVec::new(
                prometheus::HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()),
                &["name"],
            )
            .expect("valid metric")
        };
        let adds = counter(
            "workqueue_adds_total",
            "[ALPHA] Total number of adds handled by workqueue",
        );
        let retries = counter(
            "workqueue_retries_total",
            "[ALPHA] Total number of retries handled by workqueue",
        );
        let depth = IntGaugeVec::new(
            Opts::new("workqueue_depth", "[ALPHA] Current depth of workqueue"),
            &["name"],
        )
        .expect("valid metric");
        let queue_duration = histogram(
            "workqueue_queue_duration_seconds",
            "[ALPHA] How long in seconds an item stays in workqueue before being requested.",
        );
        let work_duration = histogram(
            "workqueue_work_duration_seconds",
            "[ALPHA] How long in seconds processing an item from workqueue takes.",
        );
        let unfinished = GaugeVec::new(
            Opts::new(
                "workqueue_unfinished_work_seconds",
                "[ALPHA] How many seconds of work has done that is in progress and hasn't been observed by work_duration. Large values indicate stuck threads. One can deduce the number of stuck threads by observing the rate at which this increases.",
            ),
            &["name"],
        )
        .expect("valid metric");
        let longest = GaugeVec::new(
            Opts::new(
                "workqueue_longest_running_processor_seconds",
                "[ALPHA] How many seconds has the longest running processor for workqueue been running.",
            ),
            &["name"],
        )
        .expect("valid metric");
        for metric in [
            Box::new(adds.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(depth.clone()),
            Box::new(queue_duration.clone()),
            Box::new(work_duration.clone()),
            Box::new(unfinished.clone()),
            Box::new(longest.clone()),
            Box::new(retries.clone()),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ] {
            registry.register(metric).expect("unique metric");
        }
        Self {
            registry,
            adds,
            depth,
            queue_duration,
            work_duration,
            unfinished,
            longest,
            retries,
            queues: Mutex::default(),
        }
    }

    /// The queue named `name` (client-go's queue name for the controller, e.g. `deployment`).
    pub fn queue(&self, name: &'static str) -> Arc<Queue> {
        let queue = Arc::new(Queue {
            name,
            state: Mutex::default(),
            adds: self.adds.with_label_values(&[name]),
            depth: self.depth.with_label_values(&[name]),
            queue_duration: self.queue_duration.with_label_values(&[name]),
            work_duration: self.work_duration.with_label_values(&[name]),
            retries: self.retries.with_label_values(&[name]),
        });
        self.unfinished.with_label_values(&[name]).set(0.0);
        self.longest.with_label_values(&[name]).set(0.0);
        // a controller started again (leadership regained) replaces its queue
        let mut queues = self.queues.lock();
        queues.retain(|q| q.name != name);
        queues.push(queue.clone());
        queue
    }

    /// The exposition text, with the in-progress gauges read now.
    #[must_use]
    pub fn render(&self) -> String {
        let now = Instant::now();
        for queue in self.queues.lock().iter() {
            let (total, longest) = queue.in_progress(now);
            self.unfinished.with_label_values(&[queue.name]).set(total);
            self.longest.with_label_values(&[queue.name]).set(longest);
        }
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

type Key = (Option<String>, String);

#[derive(Default)]
struct State {
    /// Objects triggered and not yet being reconciled, since when.
    waiting: HashMap<Key, Instant>,
    /// Objects being reconciled, since when.
    running: HashMap<Key, Instant>,
}

/// One controller's queue, as its metrics see it.
pub struct Queue {
    name: &'static str,
    state: Mutex<State>,
    adds: prometheus::IntCounter,
    depth: prometheus::IntGauge,
    queue_duration: prometheus::Histogram,
    work_duration: prometheus::Histogram,
    retries: prometheus::IntCounter,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("name", &self.name).finish()
    }
}

fn depth(state: &State) -> i64 {
    i64::try_from(state.waiting.len()).unwrap_or(i64::MAX)
}

impl Queue {
    /// The queue's name.
    #[must_use]
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// An object was triggered: one add unless it is already waiting.
    fn add(&self, key: Key) {
        let mut state = self.state.lock();
        if let std::collections::hash_map::Entry::Vacant(entry) = state.waiting.entry(key) {
            entry.insert(Instant::now());
            self.adds.inc();
            self.depth.set(depth(&state));
        }
    }

    /// A reconcile of `key` starts. One that was not waiting is a requeue whose delay just
    /// ran out (client-go adds those when they fire, and they wait no further).
    fn start(&self, key: Key) {
        let now = Instant::now();
        let mut state = self.state.lock();
        match state.waiting.remove(&key) {
            Some(since) => self
                .queue_duration
                .observe(now.duration_since(since).as_secs_f64()),
            None => {
                self.adds.inc();
                self.queue_duration.observe(0.0);
            }
        }
        state.running.insert(key, now);
        self.depth.set(depth(&state));
    }

    fn finish(&self, key: &Key, failed: bool) {
        if let Some(since) = self.state.lock().running.remove(key) {
            self.work_duration.observe(since.elapsed().as_secs_f64());
        }
        if failed {
            self.retries.inc();
        }
    }

    /// The object went before its reconcile started (kube-runtime skips it).
    fn forget(&self, key: &Key) {
        let mut state = self.state.lock();
        state.waiting.remove(key);
        self.depth.set(depth(&state));
    }

    /// Seconds of work in progress, in all and the longest.
    fn in_progress(&self, now: Instant) -> (f64, f64) {
        let state = self.state.lock();
        state
            .running
            .values()
            .map(|since| now.duration_since(*since).as_secs_f64())
            .fold((0.0, 0.0), |(total, longest), s| {
                (total + s, f64::max(longest, s))
            })
    }

    /// Counts the objects of a trigger stream as adds.
    pub fn objects<K, S>(
        self: &Arc<Self>,
        stream: S,
    ) -> impl Stream<Item = Arc<K>> + Send + use<K, S>
    where
        K: Resource + Send + Sync + 'static,
        S: Stream<Item = Arc<K>> + Send,
    {
        let queue = self.clone();
        stream.inspect(move |object| queue.add(key_of(&**object)))
    }

    /// Counts the references of a trigger stream as adds.
    pub fn refs<K, S>(
        self: &Arc<Self>,
        stream: S,
    ) -> impl Stream<Item = ObjectRef<K>> + Send + use<K, S>
    where
        K: Resource + Send + Sync + 'static,
        K::DynamicType: Send + Sync,
        S: Stream<Item = ObjectRef<K>> + Send,
    {
        let queue = self.clone();
        stream.inspect(move |r| queue.add((r.namespace.clone(), r.name.clone())))
    }

    /// Wraps a reconcile function: each call is timed and runs in a `reconcile` span.
    pub fn reconciler<K, C, E, F, Fut>(
        self: &Arc<Self>,
        mut reconcile: F,
    ) -> impl FnMut(Arc<K>, Arc<C>) -> BoxFuture<'static, Result<Action, E>> + use<K, C, E, F, Fut>
    where
        K: Resource + Send + Sync + 'static,
        C: Send + Sync + 'static,
        E: Send + 'static,
        F: FnMut(Arc<K>, Arc<C>) -> Fut,
        Fut: Future<Output = Result<Action, E>> + Send + 'static,
    {
        let queue = self.clone();
        move |object, context| {
            let key = key_of(&*object);
            let span = tracing::info_span!(
                "reconcile",
                controller = queue.name,
                namespace = key.0.as_deref().unwrap_or(""),
                name = %key.1,
                trace_id = tracing::field::Empty,
            );
            kelson_common::trace::record_trace_id(&span);
            queue.start(key.clone());
            let work = span.in_scope(|| reconcile(object, context));
            let queue = queue.clone();
            async move {
                let result = work.await;
                queue.finish(&key, result.is_err());
                result
            }
            .instrument(span)
            .boxed()
        }
    }

    /// Takes note of a controller's result: an object kube-runtime found gone no longer waits.
    pub fn settle<T, R, Q>(&self, result: &Result<T, kube::runtime::controller::Error<R, Q>>) {
        if let Err(kube::runtime::controller::Error::ObjectNotFound(r)) = result {
            self.forget(&(r.namespace.clone(), r.name.clone()));
        }
    }
}

fn key_of<K: Resource>(object: &K) -> Key {
    let meta = object.meta();
    (
        meta.namespace.clone(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// The owners of kind `Owner` of each object in `stream` (kube-runtime's `owns`, as references
/// so that a [`Queue`] can count them).
pub fn owners<Owner, K, S>(
    stream: S,
) -> impl Stream<Item = ObjectRef<Owner>> + Send + use<Owner, K, S>
where
    Owner: Resource<DynamicType = ()> + Send + Sync + 'static,
    K: Resource + Send + Sync + 'static,
    S: Stream<Item = Arc<K>> + Send,
{
    stream.flat_map(|object| {
        let meta = object.meta();
        let refs: Vec<ObjectRef<Owner>> = meta
            .owner_references
            .iter()
            .flatten()
            .filter_map(|owner| ObjectRef::from_owner_ref(meta.namespace.as_deref(), owner, ()))
            .collect();
        futures::stream::iter(refs)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, line: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{line} missing from\n{text}"))
    }

    /// The sample of `family` for queue `queue`.
    fn of(text: &str, family: &str, queue: &str) -> f64 {
        sample(text, &format!("{family}{{name=\"{queue}\"}}"))
    }

    fn key(name: &str) -> Key {
        (Some("default".to_owned()), name.to_owned())
    }

    #[test]
    fn triggers_while_waiting_are_one_add_and_a_trigger_while_running_queues_again() {
        let metrics = Metrics::new();
        let queue = metrics.queue("deployment");
        queue.add(key("web"));
        queue.add(key("web"));
        queue.add(key("api"));
        let text = metrics.render();
        assert_eq!(of(&text, "workqueue_adds_total", "deployment"), 2.0);
        assert_eq!(of(&text, "workqueue_depth", "deployment"), 2.0);

        queue.start(key("web"));
        queue.add(key("web"));
        let text = metrics.render();
        assert_eq!(of(&text, "workqueue_depth", "deployment"), 2.0);
        assert_eq!(of(&text, "workqueue_adds_total", "deployment"), 3.0);
        assert!(
            of(
                &text,
                "workqueue_longest_running_processor_seconds",
                "deployment"
            ) >= 0.0
        );

        queue.finish(&key("web"), true);
        queue.forget(&key("api"));
        let text = metrics.render();
        assert_eq!(of(&text, "workqueue_depth", "deployment"), 1.0);
        assert_eq!(of(&text, "workqueue_retries_total", "deployment"), 1.0);
        assert_eq!(
            of(&text, "workqueue_work_duration_seconds_count", "deployment"),
            1.0
        );
        assert_eq!(
            of(
                &text,
                "workqueue_queue_duration_seconds_count",
                "deployment"
            ),
            1.0
        );
        assert_eq!(
            of(&text, "workqueue_unfinished_work_seconds", "deployment"),
            0.0
        );
    }

    #[test]
    fn a_requeue_that_fires_is_an_add_that_waited_no_time() {
        let metrics = Metrics::new();
        let queue = metrics.queue("cronjob");
        queue.start(key("nightly"));
        let text = metrics.render();
        assert_eq!(of(&text, "workqueue_adds_total", "cronjob"), 1.0);
        assert_eq!(of(&text, "workqueue_depth", "cronjob"), 0.0);
        assert!(of(&text, "workqueue_unfinished_work_seconds", "cronjob") >= 0.0);
        assert_eq!(
            of(&text, "workqueue_queue_duration_seconds_sum", "cronjob"),
            0.0
        );
        assert_eq!(
            of(&text, "workqueue_queue_duration_seconds_count", "cronjob"),
            1.0
        );
    }

    #[tokio::test]
    async fn the_reconciler_wrapper_times_work_and_counts_failures_as_retries() {
        use k8s_openapi::api::apps::v1::Deployment;
        let metrics = Metrics::new();
        let queue = metrics.queue("deployment");
        let mut reconcile = queue.reconciler(|d: Arc<Deployment>, _ctx: Arc<()>| async move {
            if d.metadata.name.as_deref() == Some("bad") {
                Err(std::fmt::Error)
            } else {
                Ok(Action::await_change())
            }
        });
        let named = |name: &str| {
            let mut d = Deployment::default();
            d.metadata.name = Some(name.to_owned());
            d.metadata.namespace = Some("default".to_owned());
            Arc::new(d)
        };
        let adds = queue.objects(futures::stream::iter([named("good"), named("bad")]));
        assert_eq!(adds.count().await, 2);
        assert!(reconcile(named("good"), Arc::new(())).await.is_ok());
        assert!(reconcile(named("bad"), Arc::new(())).await.is_err());
        let text = metrics.render();
        assert_eq!(of(&text, "workqueue_adds_total", "deployment"), 2.0);
        assert_eq!(of(&text, "workqueue_retries_total", "deployment"), 1.0);
        assert_eq!(
            of(&text, "workqueue_work_duration_seconds_count", "deployment"),
            2.0
        );
        assert_eq!(of(&text, "workqueue_depth", "deployment"), 0.0);
    }
}
