//! The `kubernetes_events` source: the cluster's Events as records, so an SRE finds
//! `FailedScheduling`, `BackOff` or `OOMKilling` next to the container lines they explain.
//! Each Event becomes one record per occurrence count: the message is `<reason>: <message>`,
//! namespace and pod come from the involved object (pod only when it is a Pod), `Warning`
//! events are level `warn`, and `kind`, `name`, `reason`, `type`, `count` and `component` are
//! fields. The event's uid and count are the record's position, so a restart (which lists
//! every event again) indexes nothing twice.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Event;
use kube::runtime::watcher;
use serde::{Deserialize, Serialize};

use super::SourceContext;
use crate::record::{Batch, LogRecord, Position};

/// Configuration of the `kubernetes_events` source.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// Tag of the records.
    #[serde(default = "default_tag")]
    pub tag: String,
    /// Only this namespace (default: all).
    #[serde(default)]
    pub namespace: Option<String>,
}

fn default_tag() -> String {
    "kube.events".to_owned()
}

fn nanos(time: &jiff::Timestamp) -> i64 {
    i64::try_from(time.as_nanosecond()).unwrap_or(0)
}

/// The record of one event occurrence; `None` for an event without a uid.
fn to_record(id: &str, config: &EventsConfig, event: &Event, node: &Arc<str>) -> Option<LogRecord> {
    let uid = event.metadata.uid.as_deref()?;
    let object = &event.involved_object;
    let kind = object.kind.clone().unwrap_or_default();
    let reason = event.reason.clone().unwrap_or_default();
    let text = event.message.clone().unwrap_or_default();
    let count = u64::try_from(event.count.unwrap_or(1)).unwrap_or(1).max(1);
    let timestamp = event
        .last_timestamp
        .as_ref()
        .map(|t| nanos(&t.0))
        .or_else(|| event.event_time.as_ref().map(|t| nanos(&t.0)))
        .or_else(|| event.first_timestamp.as_ref().map(|t| nanos(&t.0)))
        .or_else(|| {
            event
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| nanos(&t.0))
        })
        .unwrap_or_else(crate::record::now_ns);
    let event_type = event.type_.clone().unwrap_or_else(|| "Normal".to_owned());
    let mut fields = BTreeMap::new();
    fields.insert("kind".to_owned(), kind.clone());
    fields.insert("name".to_owned(), object.name.clone().unwrap_or_default());
    fields.insert("reason".to_owned(), reason.clone());
    fields.insert("type".to_owned(), event_type.clone());
    fields.insert("count".to_owned(), count.to_string());
    let component = event
        .source
        .as_ref()
        .and_then(|s| s.component.clone())
        .or_else(|| event.reporting_component.clone())
        .unwrap_or_default();
    if !component.is_empty() {
        fields.insert("component".to_owned(), component);
    }
    let namespace = object
        .namespace
        .clone()
        .or_else(|| event.metadata.namespace.clone())
        .unwrap_or_default();
    Some(LogRecord {
        tag: config.tag.as_str().into(),
        timestamp,
        message: format!("{reason}: {text}"),
        namespace: namespace.into(),
        pod: if kind == "Pod" {
            object.name.as_deref().unwrap_or_default().into()
        } else {
            "".into()
        },
        node: node.clone(),
        level: if event_type == "Warning" {
            "warn"
        } else {
            "info"
        },
        fields: Arc::new(fields),
        position: Some(Position {
            key: format!("{id}:{uid}").into(),
            offset: count,
            replay: false,
        }),
        ..LogRecord::default()
    })
}

/// Runs the source until shutdown.
pub(crate) async fn run(id: String, config: EventsConfig, cx: SourceContext, client: kube::Client) {
    let api: kube::Api<Event> = match &config.namespace {
        Some(namespace) => kube::Api::namespaced(client, namespace),
        None => kube::Api::all(client),
    };
    let mut events = watcher::watcher(api, watcher::Config::default()).boxed();
    loop {
        let next = tokio::select! {
            () = cx.shutdown.cancelled() => return,
            next = events.next() => next,
        };
        let Some(next) = next else { return };
        let batch = match next {
            Ok(watcher::Event::Apply(event) | watcher::Event::InitApply(event)) => {
                let Some(record) = to_record(&id, &config, &event, &cx.node) else {
                    continue;
                };
                // skip what the index already has (the sink drops it too; this saves the work)
                let key = record.position.as_ref().map(|p| p.key.clone());
                if let Some(key) = &key
                    && cx.checkpoint.get(&**key).is_some_and(|done| {
                        *done >= record.position.as_ref().map_or(0, |p| p.offset)
                    })
                {
                    continue;
                }
                Batch {
                    records: vec![record],
                    ..Batch::default()
                }
            }
            Ok(watcher::Event::Delete(event)) => {
                // an expired event: its position is no longer needed
                let Some(uid) = event.metadata.uid else {
                    continue;
                };
                Batch {
                    forgotten: vec![format!("{id}:{uid}").into()],
                    ..Batch::default()
                }
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => continue,
            Err(error) => {
                cx.metrics.error("watch_failed");
                tracing::debug!(source = %id, %error, "event watch failed; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        let count = batch.records.len() as u64;
        cx.metrics.received(count, 0);
        if cx.out.send(batch).await.is_err() {
            return;
        }
        cx.metrics.sent(count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_becomes_a_record() {
        let event: Event = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web.1", "namespace": "shop", "uid": "e1"},
            "involvedObject": {"kind": "Pod", "name": "web", "namespace": "shop"},
            "reason": "BackOff", "message": "Back-off restarting failed container",
            "type": "Warning", "count": 3, "source": {"component": "kubelet"},
            "lastTimestamp": "2026-11-23T05:38:27Z"
        }))
        .unwrap();
        let config = EventsConfig {
            tag: default_tag(),
            namespace: None,
        };
        let record = to_record("events", &config, &event, &"n1".into()).unwrap();
        assert_eq!(
            record.message,
            "BackOff: Back-off restarting failed container"
        );
        assert_eq!((&*record.namespace, &*record.pod), ("shop", "web"));
        assert_eq!(record.level, "warn");
        assert_eq!(record.fields["component"], "kubelet");
        assert_eq!(record.timestamp, 1_795_412_307_000_000_000);
        assert_eq!(record.position.unwrap().offset, 3);
    }
}
