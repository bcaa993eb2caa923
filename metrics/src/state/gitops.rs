//! Kelson's own kind: GitOps Applications (`gitops.kelson.dev/v1alpha1`), read as plain JSON so
//! the exporter needs nothing from the reconciler crate.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt as _;
use serde::Deserialize;
use serde_json::Value;

use super::{Allow, Family, Lines, Object, created, gauge};

/// An Application as the exporter reads it.
#[derive(Clone, Debug, Deserialize)]
pub struct Application {
    /// Metadata.
    pub metadata: ObjectMeta,
    /// The spec, as JSON.
    #[serde(default)]
    pub spec: Value,
    /// The status, as JSON.
    #[serde(default)]
    pub status: Value,
}

impl kube::Resource for Application {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Application".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "gitops.kelson.dev".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1alpha1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "applications".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

fn text<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

impl Object for Application {
    const RESOURCE: &'static str = "applications";
    const FAMILIES: &'static [Family] = &[
        gauge(
            "kelson_application_info",
            "Information about a GitOps Application: its source, destination, sync status and health.",
        ),
        created!("kelson_application_created"),
        gauge(
            "kelson_application_status_condition",
            "The current status conditions of a GitOps Application (Ready, Reconciling, Stalled).",
        ),
        gauge(
            "kelson_application_suspended",
            "Whether the Application is suspended (1) or reconciled (0).",
        ),
        gauge(
            "kelson_application_last_sync_timestamp_seconds",
            "Start of the Application's last sync, in unix time.",
        ),
        gauge(
            "kelson_application_last_sync_duration_seconds",
            "How long the Application's last sync took.",
        ),
        gauge(
            "kelson_application_last_sync_success",
            "Whether the Application's last sync succeeded (1) or not (0).",
        ),
        gauge(
            "kelson_application_inventory_objects",
            "The number of objects the Application manages.",
        ),
    ];

    fn render(&self, out: &mut Lines, _allow: &Allow) {
        let (namespace, name) = (self.namespace().unwrap_or_default(), self.name_any());
        let labels = [
            ("namespace", namespace.as_str()),
            ("application", name.as_str()),
        ];
        out.identify(&labels);
        out.time(
            "kelson_application_created",
            &labels,
            self.metadata.creation_timestamp.as_ref(),
        );
        let (spec, status) = (&self.spec, &self.status);
        let sync = match text(status, "/sync/status") {
            "" => "Unknown",
            other => other,
        };
        let health = match text(status, "/health/status") {
            "" => "Unknown",
            other => other,
        };
        out.add(
            "kelson_application_info",
            &[
                labels[0],
                labels[1],
                ("repo", text(spec, "/source/repoURL")),
                ("path", text(spec, "/source/path")),
                ("target_revision", text(spec, "/source/targetRevision")),
                ("dest_namespace", text(spec, "/destination/namespace")),
                ("sync_status", sync),
                ("health_status", health),
                ("revision", text(status, "/lastAppliedRevision")),
            ],
            1.0,
        );
        for condition in status
            .get("conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            out.condition(
                "kelson_application_status_condition",
                &[
                    labels[0],
                    labels[1],
                    ("condition", text(condition, "/type")),
                ],
                "status",
                text(condition, "/status"),
            );
        }
        out.flag(
            "kelson_application_suspended",
            &labels,
            spec.get("suspend").and_then(Value::as_bool) == Some(true),
        );
        let last = status
            .get("history")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .max_by_key(|entry| text(entry, "/startedAt").to_owned());
        if let Some(last) = last {
            if let Ok(started) = text(last, "/startedAt").parse::<jiff::Timestamp>() {
                out.add(
                    "kelson_application_last_sync_timestamp_seconds",
                    &labels,
                    started.as_second() as f64,
                );
            }
            if let Some(milliseconds) = last.get("durationMs").and_then(Value::as_f64) {
                out.add(
                    "kelson_application_last_sync_duration_seconds",
                    &labels,
                    milliseconds / 1000.0,
                );
            }
            out.flag(
                "kelson_application_last_sync_success",
                &labels,
                text(last, "/result") == "Succeeded",
            );
        }
        out.add(
            "kelson_application_inventory_objects",
            &labels,
            status
                .get("inventory")
                .and_then(Value::as_array)
                .map_or(0, Vec::len) as f64,
        );
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::exposition::parse;
    use crate::state::StateMetrics;

    #[test]
    fn applications_report_sync_health_and_the_last_sync() {
        let app: Application = serde_json::from_value(json!({
            "metadata": {"name": "shop", "namespace": "gitops", "creationTimestamp": "2026-11-20T10:00:00Z"},
            "spec": {"source": {"repoURL": "https://git.example/shop.git", "path": "apps/shop", "targetRevision": "main"},
                     "destination": {"namespace": "shop"}},
            "status": {
                "sync": {"status": "Synced"}, "health": {"status": "Healthy"}, "lastAppliedRevision": "main@sha1:abc",
                "conditions": [{"type": "Ready", "status": "True"}],
                "inventory": [{"id": "a", "v": "v1"}, {"id": "b", "v": "v1"}],
                "history": [
                    {"revision": "old", "result": "Failed", "startedAt": "2026-11-20T10:00:00Z", "durationMs": 100},
                    {"revision": "new", "result": "Succeeded", "startedAt": "2026-11-20T11:00:00Z", "durationMs": 1500}
                ]
            }
        }))
        .unwrap();
        let state = StateMetrics::default();
        state.replace(&[app], &Allow::default());
        let families = parse(&state.scrape()).unwrap();
        let value = |name: &str| {
            families
                .iter()
                .find(|f| f.name == name)
                .unwrap_or_else(|| panic!("no {name}"))
                .samples[0]
                .clone()
        };
        let info = value("kelson_application_info");
        assert!(
            info.labels
                .contains(&("sync_status".into(), "Synced".into()))
        );
        assert!(
            info.labels
                .contains(&("health_status".into(), "Healthy".into()))
        );
        assert!(
            info.labels
                .contains(&("dest_namespace".into(), "shop".into()))
        );
        assert_eq!(
            value("kelson_application_last_sync_duration_seconds").value,
            1.5
        );
        assert_eq!(value("kelson_application_last_sync_success").value, 1.0);
        assert_eq!(value("kelson_application_inventory_objects").value, 2.0);
        assert_eq!(
            value("kelson_application_last_sync_timestamp_seconds").value,
            1_795_172_400.0
        );
    }
}
