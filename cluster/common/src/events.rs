//! Publishing an event about an object with Kubernetes' reasons; failures are logged, never
//! fatal, since an event is a courtesy to the reader of `kubectl describe`.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};
use tracing::debug;

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
