//! Sinks: where records go. Each takes the records whose tag its `match` pattern accepts; it
//! ends when its input ends (which is how the pipeline drains on shutdown).

pub mod elasticsearch;
pub mod file;
pub mod forward;
pub mod http;
pub mod loki;

use std::io::Write;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::index::writer::IndexSinkConfig;
use crate::metrics::ComponentMetrics;
use crate::record::{Batch, LogRecord};

/// A sink's configuration, by `type`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SinkConfig {
    /// The tantivy index the query API and `kelson logs` search.
    Index(IndexSinkConfig),
    /// One JSON object per line on standard output.
    Stdout(StdoutSinkConfig),
    /// JSON lines appended to a file, synced, rotated by size.
    File(file::FileSinkConfig),
    /// The fluent forward protocol, to fluentd, Fluent Bit or another pipeline.
    Forward(forward::ForwardSinkConfig),
    /// Grafana Loki's push API.
    Loki(loki::LokiSinkConfig),
    /// Elasticsearch's (or OpenSearch's) bulk API.
    Elasticsearch(elasticsearch::ElasticsearchSinkConfig),
}

/// Configuration of the `stdout` sink.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkConfig {
    /// Tags to take, fluentd-style (default `**`, everything).
    #[serde(rename = "match", default = "match_all")]
    pub pattern: String,
    /// A buffer in front of the sink (see [`crate::buffer`]).
    #[serde(default)]
    pub buffer: Option<crate::buffer::BufferConfig>,
}

pub(crate) fn match_all() -> String {
    "**".to_owned()
}

impl SinkConfig {
    /// The `type` name, for metrics.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Index(_) => "index",
            SinkConfig::Stdout(_) => "stdout",
            SinkConfig::File(_) => "file",
            SinkConfig::Forward(_) => "forward",
            SinkConfig::Loki(_) => "loki",
            SinkConfig::Elasticsearch(_) => "elasticsearch",
        }
    }

    /// The buffer in front of the sink, if configured.
    #[must_use]
    pub fn buffer(&self) -> Option<&crate::buffer::BufferConfig> {
        match self {
            SinkConfig::Index(_) => None,
            SinkConfig::Stdout(StdoutSinkConfig { buffer, .. })
            | SinkConfig::File(file::FileSinkConfig { buffer, .. })
            | SinkConfig::Forward(forward::ForwardSinkConfig { buffer, .. })
            | SinkConfig::Loki(loki::LokiSinkConfig { buffer, .. })
            | SinkConfig::Elasticsearch(elasticsearch::ElasticsearchSinkConfig {
                buffer, ..
            }) => buffer.as_ref(),
        }
    }

    /// The tag pattern.
    #[must_use]
    pub fn pattern(&self) -> &str {
        match self {
            SinkConfig::Index(IndexSinkConfig { pattern, .. })
            | SinkConfig::Stdout(StdoutSinkConfig { pattern, .. })
            | SinkConfig::File(file::FileSinkConfig { pattern, .. })
            | SinkConfig::Forward(forward::ForwardSinkConfig { pattern, .. })
            | SinkConfig::Loki(loki::LokiSinkConfig { pattern, .. })
            | SinkConfig::Elasticsearch(elasticsearch::ElasticsearchSinkConfig {
                pattern, ..
            }) => pattern,
        }
    }
}

/// The JSON form of a record, as the stdout sink writes it.
#[must_use]
pub fn record_json(record: &LogRecord) -> serde_json::Value {
    let mut object = serde_json::json!({
        "timestamp": jiff::Timestamp::from_nanosecond(i128::from(record.timestamp)).map(|t| t.to_string()).unwrap_or_default(),
        "tag": &*record.tag,
        "message": record.message,
    });
    let map = object.as_object_mut().expect("an object");
    for (name, value) in [
        ("namespace", &*record.namespace),
        ("pod", &*record.pod),
        ("container", &*record.container),
        ("node", &*record.node),
        ("stream", record.stream),
        ("level", record.level),
    ] {
        if !value.is_empty() {
            map.insert(name.into(), value.into());
        }
    }
    if !record.labels.is_empty() {
        map.insert("labels".into(), serde_json::json!(&*record.labels));
    }
    if !record.fields.is_empty() {
        map.insert("fields".into(), serde_json::json!(&*record.fields));
    }
    object
}

/// Runs the stdout sink until its input ends.
pub(crate) async fn run_stdout(mut input: mpsc::Receiver<Batch>, metrics: ComponentMetrics) {
    while let Some(batch) = input.recv().await {
        let mut out = Vec::new();
        for record in &batch.records {
            let _ = serde_json::to_writer(&mut out, &record_json(record));
            out.push(b'\n');
        }
        let written = tokio::task::spawn_blocking(move || {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&out).and_then(|()| stdout.flush())
        })
        .await;
        match written {
            Ok(Ok(())) => metrics.sent(batch.records.len() as u64),
            _ => {
                metrics.error("write_failed");
                metrics.discarded("write_failed", batch.records.len() as u64);
                if let Some(ack) = &batch.ack {
                    ack.fail();
                }
            }
        }
    }
}
