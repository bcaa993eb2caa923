//! The `elasticsearch` sink: records indexed through Elasticsearch's (or OpenSearch's) bulk API,
//! `POST /_bulk` with newline-delimited JSON, as fluentd's elasticsearch output and Fluent
//! Bit's `es` output do.
//!
//! Documents have `@timestamp` (RFC 3339 with nanoseconds), `message`, `stream`, `level`,
//! `tag`, the record's other fields, and `kubernetes` shaped as Fluent Bit's Kubernetes filter
//! shapes it, so existing Kibana views work. The index name is a strftime pattern over the
//! record's time (`logs-%Y.%m.%d`, logstash's daily indices). Records read from files carry an
//! `_id` derived from their source position and are sent with the `create` action, so a retried
//! request never indexes a line twice (Elasticsearch answers 409 for the copy, counted as
//! delivered). Items the bulk answer marks 429 or 5xx are sent again, alone, with backoff;
//! items refused for their content (a mapping error, 400) are counted as dropped (`rejected`)
//! with the first reason logged; whole requests are retried while the server is unreachable,
//! overloaded or refuses the credentials.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Digest as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::http::{Attempt, HttpAuth, open_or_refuse, retryable, settle, until_done};
use crate::metrics::ComponentMetrics;
use crate::record::{Batch, LogRecord};

/// Configuration of the `elasticsearch` sink.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ElasticsearchSinkConfig {
    /// Tags to take, fluentd-style (default `**`).
    #[serde(rename = "match", default = "super::match_all")]
    pub pattern: String,
    /// The cluster's address (`http://elasticsearch:9200`).
    pub url: String,
    /// Index name, a strftime pattern over the record's time (UTC).
    #[serde(default = "default_index")]
    pub index: String,
    /// An ingest pipeline to run documents through.
    #[serde(default)]
    pub pipeline: Option<String>,
    /// Credentials.
    #[serde(default)]
    pub auth: HttpAuth,
    /// More request headers (`Authorization: ApiKey ...`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A PEM file of CAs to trust besides the system's.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Milliseconds to wait for an answer.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Largest bulk request body; a batch is split to stay under it.
    #[serde(default = "default_max_bulk_bytes")]
    pub max_bulk_bytes: usize,
    /// A buffer in front of the sink (see [`crate::buffer`]).
    #[serde(default)]
    pub buffer: Option<crate::buffer::BufferConfig>,
}

fn default_index() -> String {
    "logs-%Y.%m.%d".to_owned()
}
const fn default_timeout_ms() -> u64 {
    30_000
}
const fn default_max_bulk_bytes() -> usize {
    5 << 20
}

impl ElasticsearchSinkConfig {
    /// Checks what can be checked before starting.
    ///
    /// # Errors
    /// A message naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!("url: {:?} is not an http(s) URL", self.url));
        }
        let example = jiff::fmt::strtime::format(
            &self.index,
            &jiff::Timestamp::UNIX_EPOCH.to_zoned(jiff::tz::TimeZone::UTC),
        )
        .map_err(|e| format!("index: {:?}: {e}", self.index))?;
        if example.is_empty() || example.to_lowercase() != example {
            return Err(format!(
                "index: {:?} must name a lowercase index (it gives {example:?})",
                self.index
            ));
        }
        Ok(())
    }

    fn bulk_url(&self) -> String {
        let base = format!("{}/_bulk", self.url.trim_end_matches('/'));
        match &self.pipeline {
            Some(pipeline) => format!("{base}?pipeline={pipeline}"),
            None => base,
        }
    }
}

/// The document of a record.
#[must_use]
pub fn document(record: &LogRecord) -> Value {
    let timestamp = jiff::Timestamp::from_nanosecond(i128::from(record.timestamp))
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%S%.9fZ").to_string())
        .unwrap_or_default();
    let mut document = serde_json::Map::new();
    for (key, value) in record.fields.iter() {
        document.insert(key.clone(), json!(value));
    }
    document.insert("@timestamp".into(), json!(timestamp));
    document.insert("message".into(), json!(record.message));
    document.insert("tag".into(), json!(&*record.tag));
    for (key, value) in [("stream", record.stream), ("level", record.level)] {
        if !value.is_empty() {
            document.insert(key.into(), json!(value));
        }
    }
    let mut kubernetes = serde_json::Map::new();
    for (key, value) in [
        ("namespace_name", &*record.namespace),
        ("pod_name", &*record.pod),
        ("container_name", &*record.container),
        ("host", &*record.node),
    ] {
        if !value.is_empty() {
            kubernetes.insert(key.into(), json!(value));
        }
    }
    if !record.labels.is_empty() {
        kubernetes.insert("labels".into(), json!(&*record.labels));
    }
    if !kubernetes.is_empty() {
        document.insert("kubernetes".into(), Value::Object(kubernetes));
    }
    Value::Object(document)
}

/// The stable id of a record read from a source with positions.
fn id_of(record: &LogRecord) -> Option<String> {
    let position = record.position.as_ref()?;
    // the node, the file and offset, and the line itself: a file read again after a truncation
    // or a reused inode gives other lines other ids
    let digest = sha2::Sha256::digest(format!(
        "{}\n{}\n{}\n{}\n{}",
        record.node, position.key, position.offset, record.timestamp, record.message
    ));
    Some(hex::encode(&digest[..16]))
}

/// One bulk item: its action line and document, ready to send.
struct Item {
    lines: Arc<[u8]>,
}

fn items(config: &ElasticsearchSinkConfig, records: &[LogRecord]) -> Vec<Item> {
    records
        .iter()
        .map(|record| {
            let zoned = jiff::Timestamp::from_nanosecond(i128::from(record.timestamp))
                .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
                .to_zoned(jiff::tz::TimeZone::UTC);
            let index = jiff::fmt::strtime::format(&config.index, &zoned)
                .unwrap_or_else(|_| config.index.clone());
            let mut action = json!({"_index": index});
            if let Some(id) = id_of(record) {
                action["_id"] = json!(id);
            }
            let mut lines = serde_json::to_vec(&json!({ "create": action })).unwrap_or_default();
            lines.push(b'\n');
            let _ = serde_json::to_writer(&mut lines, &document(record));
            lines.push(b'\n');
            Item {
                lines: lines.into(),
            }
        })
        .collect()
}

/// What the bulk answer says of each item: delivered, to send again, or refused for good (with
/// the reason).
enum Verdict {
    Delivered,
    Again,
    Refused(String),
}

fn verdicts(answer: &Value, count: usize) -> Result<Vec<Verdict>, String> {
    let items = answer
        .get("items")
        .and_then(Value::as_array)
        .ok_or("the bulk answer has no items")?;
    if items.len() != count {
        return Err(format!(
            "the bulk answer has {} items for {count} sent",
            items.len()
        ));
    }
    Ok(items
        .iter()
        .map(|item| {
            let result = item
                .as_object()
                .and_then(|o| o.values().next())
                .cloned()
                .unwrap_or_default();
            let status = result.get("status").and_then(Value::as_u64).unwrap_or(0);
            match status {
                200..=299 | 409 => Verdict::Delivered,
                429 | 500..=599 | 0 => Verdict::Again,
                _ => Verdict::Refused(
                    result
                        .pointer("/error/reason")
                        .and_then(Value::as_str)
                        .unwrap_or("refused")
                        .to_owned(),
                ),
            }
        })
        .collect())
}

/// Runs the sink until its input ends.
pub(crate) async fn run(
    config: ElasticsearchSinkConfig,
    mut input: mpsc::Receiver<Batch>,
    metrics: ComponentMetrics,
    shutdown: CancellationToken,
) {
    let Some(endpoint) = open_or_refuse(
        "elasticsearch",
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
    let url = config.bulk_url();
    while let Some(batch) = input.recv().await {
        let count = batch.records.len() as u64;
        metrics.received(count, 0);
        if batch.records.is_empty() {
            continue;
        }
        let mut pending = items(&config, &batch.records);
        let (mut delivered, mut refused) = (0u64, 0u64);
        let mut stopped = false;
        while !pending.is_empty() && !stopped {
            // one request's worth, at least one item
            let mut size = 0;
            let take = pending
                .iter()
                .take_while(|item| {
                    size += item.lines.len();
                    size <= config.max_bulk_bytes
                })
                .count()
                .max(1);
            let mut request: Vec<Item> = pending.drain(..take).collect();
            let mut item_retries = 0u32;
            loop {
                let body: Vec<u8> = request
                    .iter()
                    .flat_map(|i| i.lines.iter().copied())
                    .collect();
                let body = Bytes::from(body);
                let outcome = std::sync::Mutex::new(None);
                let sent = until_done(&url, &metrics, &shutdown, || {
                    let (endpoint, url, body, outcome) = (&endpoint, &url, body.clone(), &outcome);
                    let count = request.len();
                    async move {
                        let answer =
                            match endpoint.post(url, "application/x-ndjson", &[], body).await {
                                Ok(answer) => answer,
                                Err(error) => return Attempt::Again(error),
                            };
                        if retryable(answer.status) {
                            return Attempt::Again(format!(
                                "{}: {}",
                                answer.status,
                                String::from_utf8_lossy(&answer.body).trim()
                            ));
                        }
                        let verdicts = if answer.status.is_success() {
                            serde_json::from_slice::<Value>(&answer.body)
                                .map_err(|e| e.to_string())
                                .and_then(|value| verdicts(&value, count))
                        } else {
                            Err(format!(
                                "{}: {}",
                                answer.status,
                                String::from_utf8_lossy(&answer.body).trim()
                            ))
                        };
                        if let Ok(mut slot) = outcome.lock() {
                            *slot = Some(verdicts);
                        }
                        Attempt::Done
                    }
                })
                .await;
                if !sent {
                    stopped = true;
                    break;
                }
                let verdicts = match outcome.into_inner().ok().flatten() {
                    Some(Ok(verdicts)) => verdicts,
                    Some(Err(error)) => {
                        // the whole request was refused (400, 413): nothing in it can succeed
                        tracing::warn!(%url, %error, "elasticsearch refused a bulk request; its records are dropped");
                        refused += request.len() as u64;
                        break;
                    }
                    None => break,
                };
                let mut again = Vec::new();
                let mut first_reason = None;
                for (item, verdict) in request.into_iter().zip(verdicts) {
                    match verdict {
                        Verdict::Delivered => delivered += 1,
                        Verdict::Again => again.push(item),
                        Verdict::Refused(reason) => {
                            refused += 1;
                            first_reason.get_or_insert(reason);
                        }
                    }
                }
                if let Some(reason) = first_reason {
                    tracing::warn!(%url, %reason, "elasticsearch refused documents; they are dropped");
                }
                if again.is_empty() {
                    break;
                }
                metrics.error("send_failed");
                item_retries += 1;
                let pause = std::time::Duration::from_millis(200 << item_retries.min(5));
                tokio::select! {
                    () = shutdown.cancelled() => { stopped = true; break; }
                    () = tokio::time::sleep(pause) => {}
                }
                request = again;
            }
        }
        let given_up = if stopped {
            count - delivered - refused
        } else {
            0
        };
        settle(&batch, &metrics, delivered, refused, given_up);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_items_carry_index_id_and_a_fluent_bit_shaped_document() {
        let config: ElasticsearchSinkConfig =
            serde_yaml::from_str("url: http://es:9200\npipeline: logs\n").unwrap();
        config.validate().unwrap();
        assert_eq!(config.bulk_url(), "http://es:9200/_bulk?pipeline=logs");
        let record = crate::record::sample();
        let items = items(&config, &[record.clone(), record.clone()]);
        let text = String::from_utf8(items[0].lines.to_vec()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["create"]["_index"], "logs-2026.11.18");
        assert_eq!(lines[0]["create"]["_id"].as_str().unwrap().len(), 32);
        assert_eq!(
            lines[1],
            json!({"@timestamp": "2026-11-18T11:06:40.123456789Z", "message": "GET / 200",
                   "tag": "kube.shop.web.nginx", "stream": "stdout", "level": "info", "status": "200",
                   "kubernetes": {"namespace_name": "shop", "pod_name": "web", "container_name": "nginx",
                                  "host": "n1", "labels": {"app": "web"}}})
        );
        // the same position: the same id, so a retried copy is refused as a duplicate
        assert_eq!(items[0].lines, items[1].lines);
        let without = LogRecord {
            position: None,
            ..record
        };
        let other = super::items(&config, &[without]);
        assert!(!String::from_utf8_lossy(&other[0].lines).contains("_id"));

        let answer = json!({"errors": true, "items": [
            {"create": {"status": 201}}, {"create": {"status": 409}},
            {"create": {"status": 429}}, {"create": {"status": 400, "error": {"reason": "mapper_parsing_exception"}}},
        ]});
        let verdicts = verdicts(&answer, 4).unwrap();
        assert!(matches!(verdicts[0], Verdict::Delivered));
        assert!(matches!(verdicts[1], Verdict::Delivered));
        assert!(matches!(verdicts[2], Verdict::Again));
        assert!(matches!(&verdicts[3], Verdict::Refused(r) if r == "mapper_parsing_exception"));
        assert!(super::verdicts(&answer, 3).is_err());
        let bad: ElasticsearchSinkConfig =
            serde_yaml::from_str("url: http://es\nindex: Logs\n").unwrap();
        assert!(bad.validate().unwrap_err().contains("index"));
    }
}
