//! Publishing events (`events.k8s.io/v1`) about objects with Kubernetes' reasons. A repeat of
//! an event within six minutes joins its series (`series.count` grows) instead of making a new
//! one, as Kubernetes' recorders do. Failures are logged, never fatal, since an event is a
//! courtesy to the reader of `kubectl describe`.
//!
//! [`Recorder`] takes kube's [`Event`] and [`Reporter`]; unlike kube's recorder, it forgets old
//! events in a sweep every 30 s rather than at every publish, so publishing stays cheap when
//! thousands of events were recorded in the last minutes (a scheduler binding 1000 pods a
//! second records as many `Scheduled` events).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
pub use kube::runtime::events::{Event, EventType, Reporter};
use tracing::debug;

/// How long an event is remembered, so that a repeat joins its series.
const REMEMBER: SignedDuration = SignedDuration::from_mins(6);
/// How often forgotten events are swept from memory.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Publishes events on behalf of one reporting controller.
#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    reporter: Reporter,
    cache: Arc<Mutex<Cache>>,
}

#[derive(Default)]
struct Cache {
    events: HashMap<Key, K8sEvent>,
    swept: Option<Instant>,
}

/// What makes two events the same one (Kubernetes' event key without the reporter, which is
/// one per recorder).
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    warning: bool,
    action: String,
    reason: String,
    regarding: Reference,
    related: Option<Reference>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Reference {
    api_version: Option<String>,
    kind: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    uid: Option<String>,
    /// A container of a pod is a reference of its own (`spec.containers{name}`).
    field_path: Option<String>,
}

impl From<&ObjectReference> for Reference {
    fn from(object: &ObjectReference) -> Self {
        Self {
            api_version: object.api_version.clone(),
            kind: object.kind.clone(),
            namespace: object.namespace.clone(),
            name: object.name.clone(),
            uid: object.uid.clone(),
            field_path: object.field_path.clone(),
        }
    }
}

impl Cache {
    /// Forgets events last seen longer ago than [`REMEMBER`], at most every [`SWEEP_EVERY`].
    fn sweep(&mut self, now: Timestamp) {
        if self.swept.is_some_and(|t| t.elapsed() < SWEEP_EVERY) {
            return;
        }
        self.swept = Some(Instant::now());
        self.events.retain(|_, event| {
            let seen = event
                .series
                .as_ref()
                .map(|s| s.last_observed_time.0)
                .or_else(|| event.event_time.as_ref().map(|t| t.0));
            seen.is_none_or(|seen| seen + REMEMBER > now)
        });
    }
}

impl Recorder {
    /// A recorder reporting as `reporter`.
    #[must_use]
    pub fn new(client: kube::Client, reporter: Reporter) -> Self {
        Self {
            client,
            reporter,
            cache: Arc::default(),
        }
    }

    /// Publishes `event` about `regarding`: a new Event, or the next count of its series when
    /// it was published within the last six minutes.
    ///
    /// # Errors
    /// When the API server refuses the write.
    pub async fn publish(&self, event: &Event, regarding: &ObjectReference) -> kube::Result<()> {
        let now = Timestamp::now();
        let key = Key {
            warning: event.type_ == EventType::Warning,
            action: event.action.clone(),
            reason: event.reason.clone(),
            regarding: regarding.into(),
            related: event.secondary.as_ref().map(Reference::from),
        };
        let next = {
            let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            cache.sweep(now);
            match cache.events.get(&key) {
                Some(previous) => {
                    let mut next = previous.clone();
                    next.series = Some(EventSeries {
                        count: previous.series.as_ref().map_or(2, |s| s.count + 1),
                        last_observed_time: MicroTime(now),
                    });
                    next
                }
                None => self.new_event(event, regarding, now),
            }
        };
        let events: Api<K8sEvent> = Api::namespaced(
            self.client.clone(),
            regarding.namespace.as_deref().unwrap_or("default"),
        );
        if next.series.is_some() {
            events
                .patch(
                    &next.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&next),
                )
                .await?;
        } else {
            events.create(&PostParams::default(), &next).await?;
        }
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .events
            .insert(key, next);
        Ok(())
    }

    fn new_event(&self, event: &Event, regarding: &ObjectReference, now: Timestamp) -> K8sEvent {
        let controller = &self.reporter.controller;
        K8sEvent {
            action: Some(event.action.clone()),
            reason: Some(event.reason.clone()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            related: event.secondary.clone(),
            note: event.note.clone(),
            metadata: ObjectMeta {
                namespace: regarding.namespace.clone(),
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or(controller),
                    now.as_nanosecond()
                )),
                ..ObjectMeta::default()
            },
            reporting_controller: Some(controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| controller.clone()),
            ),
            type_: Some(if event.type_ == EventType::Warning {
                "Warning".into()
            } else {
                "Normal".into()
            }),
            ..K8sEvent::default()
        }
    }
}

/// Records a `Normal` (or `Warning`) event with `reason` and `note` about `object`.
pub async fn publish(
    recorder: &Recorder,
    object: &ObjectReference,
    warning: bool,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.into(),
        note: Some(note),
        action: reason.into(),
        secondary: None,
    };
    if let Err(error) = recorder.publish(&event, object).await {
        debug!(%error, reason, "failed to record an event");
    }
}
