//! The `loki` sink: records pushed to Grafana Loki's push API (`POST /loki/api/v1/push`, JSON),
//! or to anything that speaks it (another pipeline's `loki` source, Grafana Alloy).
//!
//! Each record's stream is its `label_keys` (by default namespace, pod, container, node and
//! stream — promtail's Kubernetes labels, few enough values to keep Loki's streams cheap) plus
//! the static `labels`; label names are made valid for Loki (`app.kubernetes.io/name` →
//! `app_kubernetes_io_name`) and empty values left out. A push counts as delivered on 2xx;
//! unreachable, 429, 5xx and authentication answers are retried with backoff while the batch
//! waits; other 4xx (Loki refusing entries as too old or too long) are counted as dropped
//! (`rejected`), as promtail does, since sending them again cannot succeed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::http::{Attempt, HttpAuth, open_or_refuse, retryable, settle, until_done};
use crate::metrics::ComponentMetrics;
use crate::record::{Batch, LogRecord};

/// Configuration of the `loki` sink.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LokiSinkConfig {
    /// Tags to take, fluentd-style (default `**`).
    #[serde(rename = "match", default = "super::match_all")]
    pub pattern: String,
    /// Loki's address (`http://loki:3100`); `/loki/api/v1/push` is added unless the URL
    /// already ends in `/push`.
    pub url: String,
    /// Record attributes that become stream labels: `namespace`, `pod`, `container`, `node`,
    /// `stream`, `level`, `tag`, `labels.NAME` (a pod label) or `fields.NAME`.
    #[serde(default = "default_label_keys")]
    pub label_keys: Vec<String>,
    /// Labels every stream gets (`cluster: prod`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `X-Scope-OrgID`, for a multi-tenant Loki.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Credentials.
    #[serde(default)]
    pub auth: HttpAuth,
    /// More request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A PEM file of CAs to trust besides the system's.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Milliseconds to wait for an answer.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// A buffer in front of the sink (see [`crate::buffer`]).
    #[serde(default)]
    pub buffer: Option<crate::buffer::BufferConfig>,
}

fn default_label_keys() -> Vec<String> {
    ["namespace", "pod", "container", "node", "stream"]
        .into_iter()
        .map(str::to_owned)
        .collect()
}

const fn default_timeout_ms() -> u64 {
    10_000
}

impl LokiSinkConfig {
    /// The push URL.
    #[must_use]
    pub fn push_url(&self) -> String {
        let url = self.url.trim_end_matches('/');
        if url.ends_with("/push") {
            url.to_owned()
        } else {
            format!("{url}/loki/api/v1/push")
        }
    }

    /// Checks what can be checked before starting.
    ///
    /// # Errors
    /// A message naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!("url: {:?} is not an http(s) URL", self.url));
        }
        for key in &self.label_keys {
            let known = matches!(
                key.as_str(),
                "namespace" | "pod" | "container" | "node" | "stream" | "level" | "tag"
            ) || key.starts_with("labels.")
                || key.starts_with("fields.");
            if !known {
                return Err(format!(
                    "label_keys: unknown key {key:?} (namespace, pod, container, node, stream, level, tag, labels.NAME, fields.NAME)"
                ));
            }
        }
        Ok(())
    }
}

/// A valid Loki label name: letters, digits and `_`, not starting with a digit.
fn label_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn attribute<'r>(record: &'r LogRecord, key: &str) -> Option<&'r str> {
    let value = match key {
        "namespace" => &*record.namespace,
        "pod" => &*record.pod,
        "container" => &*record.container,
        "node" => &*record.node,
        "stream" => record.stream,
        "level" => record.level,
        "tag" => &*record.tag,
        other => {
            if let Some(label) = other.strip_prefix("labels.") {
                record.labels.get(label)?
            } else {
                record.fields.get(other.strip_prefix("fields.")?)?
            }
        }
    };
    (!value.is_empty()).then_some(value)
}

/// The push body of some records: one stream per label set, entries oldest first.
#[must_use]
pub fn push_body(config: &LokiSinkConfig, records: &[LogRecord]) -> Value {
    let mut streams: BTreeMap<BTreeMap<String, String>, Vec<(i64, &str)>> = BTreeMap::new();
    for record in records {
        let mut labels: BTreeMap<String, String> = config
            .labels
            .iter()
            .map(|(k, v)| (label_name(k), v.clone()))
            .collect();
        for key in &config.label_keys {
            if let Some(value) = attribute(record, key) {
                let name = key
                    .strip_prefix("labels.")
                    .or_else(|| key.strip_prefix("fields."))
                    .unwrap_or(key);
                labels.insert(label_name(name), value.to_owned());
            }
        }
        if labels.is_empty() {
            // Loki refuses a stream without labels
            labels.insert("job".into(), record.tag.to_string());
        }
        streams
            .entry(labels)
            .or_default()
            .push((record.timestamp, &record.message));
    }
    let streams: Vec<Value> = streams
        .into_iter()
        .map(|(labels, mut entries)| {
            entries.sort_by_key(|(timestamp, _)| *timestamp);
            let values: Vec<Value> = entries
                .into_iter()
                .map(|(timestamp, line)| json!([timestamp.to_string(), line]))
                .collect();
            json!({"stream": labels, "values": values})
        })
        .collect();
    json!({ "streams": streams })
}

/// Runs the sink until its input ends.
pub(crate) async fn run(
    config: LokiSinkConfig,
    mut input: mpsc::Receiver<Batch>,
    metrics: ComponentMetrics,
    shutdown: CancellationToken,
) {
    let Some(endpoint) = open_or_refuse(
        "loki",
        &config.auth,
        &config.headers,
        config.ca_file.as_deref(),
        config.timeout_ms,
        &mut input,
        &metrics,
    )
    .await
    else {
        return;
    };
    let url = config.push_url();
    let tenant: Vec<(&str, &str)> = config
        .tenant_id
        .as_deref()
        .map(|t| ("x-scope-orgid", t))
        .into_iter()
        .collect();
    while let Some(batch) = input.recv().await {
        let count = batch.records.len() as u64;
        metrics.received(count, 0);
        if batch.records.is_empty() {
            continue;
        }
        let body = Bytes::from(push_body(&config, &batch.records).to_string());
        let rejected = AtomicBool::new(false);
        let delivered = until_done(&url, &metrics, &shutdown, || {
            let body = body.clone();
            let (endpoint, url, tenant, rejected) = (&endpoint, &url, &tenant, &rejected);
            async move {
                match endpoint.post(url, "application/json", tenant, body).await {
                    Ok(answer) if answer.status.is_success() => Attempt::Done,
                    Ok(answer) if retryable(answer.status) => Attempt::Again(format!(
                        "{}: {}",
                        answer.status,
                        String::from_utf8_lossy(&answer.body).trim()
                    )),
                    Ok(answer) => {
                        tracing::warn!(
                            %url, status = %answer.status,
                            answer = %String::from_utf8_lossy(&answer.body).trim(),
                            "loki refused the push; its records are dropped"
                        );
                        rejected.store(true, Ordering::Relaxed);
                        Attempt::Done
                    }
                    Err(error) => Attempt::Again(error),
                }
            }
        })
        .await;
        match (delivered, rejected.into_inner()) {
            (false, _) => settle(&batch, &metrics, 0, 0, count),
            (true, true) => settle(&batch, &metrics, 0, count, 0),
            (true, false) => settle(&batch, &metrics, count, 0, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn records_become_streams_of_their_labels() {
        let config: LokiSinkConfig = serde_yaml::from_str(
            "url: http://loki:3100/\nlabels: {cluster: prod}\nlabel_keys: [namespace, pod, stream, labels.app.kubernetes.io/name]\n",
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.push_url(), "http://loki:3100/loki/api/v1/push");
        let record = |pod: &str, timestamp: i64, message: &str| LogRecord {
            tag: "kube.shop".into(),
            timestamp,
            message: message.into(),
            stream: "stdout",
            namespace: "shop".into(),
            pod: pod.into(),
            labels: Arc::new([("app.kubernetes.io/name".to_owned(), "web".to_owned())].into()),
            ..LogRecord::default()
        };
        let body = push_body(
            &config,
            &[
                record("web-1", 3, "third"),
                record("web-2", 2, "other pod"),
                record("web-1", 1, "first"),
            ],
        );
        assert_eq!(
            body,
            json!({"streams": [
                {"stream": {"app_kubernetes_io_name": "web", "cluster": "prod", "namespace": "shop", "pod": "web-1", "stream": "stdout"},
                 "values": [["1", "first"], ["3", "third"]]},
                {"stream": {"app_kubernetes_io_name": "web", "cluster": "prod", "namespace": "shop", "pod": "web-2", "stream": "stdout"},
                 "values": [["2", "other pod"]]},
            ]})
        );
        let bad: LokiSinkConfig =
            serde_yaml::from_str("url: loki:3100\nlabel_keys: [pod]\n").unwrap();
        assert!(bad.validate().unwrap_err().contains("url"));
        let bad: LokiSinkConfig =
            serde_yaml::from_str("url: http://loki\nlabel_keys: [colour]\n").unwrap();
        assert!(bad.validate().unwrap_err().contains("colour"));
    }
}
