//! The `loki` source: Loki's push API, `POST /loki/api/v1/push`, so promtail, Grafana Alloy
//! and Loki client libraries can ship to the pipeline. Bodies are JSON
//! (`{"streams":[{"stream":{labels},"values":[["<ns>","line"],...]}]}`, gzip allowed) or
//! protobuf `PushRequest` compressed with snappy (what promtail sends). Stream labels
//! `namespace`, `pod`, `container`, `node`/`node_name`, `stream`, `level` fill those record
//! fields; the others (and structured metadata) become fields. Records are tagged
//! `<tag>.<job>` (or `<tag>` without a `job` label). The answer, 204, comes once every sink
//! that took the records made them durable; 400 says what did not parse.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::SourceContext;
use crate::record::{LogRecord, detect_level, normalize_level};

/// Configuration of the `loki` source.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LokiConfig {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Tag prefix: records are tagged `<tag>.<job>`.
    #[serde(default = "default_tag")]
    pub tag: String,
    /// Largest request body accepted, in bytes (after decompression).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
}

fn default_listen() -> String {
    "0.0.0.0:3101".to_owned()
}
fn default_tag() -> String {
    "loki".to_owned()
}
const fn default_max_body_bytes() -> usize {
    16 << 20
}

/// Loki's push protobuf messages (logproto), the fields a push carries.
mod proto {
    /// `logproto.PushRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PushRequest {
        /// The streams.
        #[prost(message, repeated, tag = "1")]
        pub streams: Vec<Stream>,
    }

    /// `logproto.StreamAdapter`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Stream {
        /// Labels in Prometheus form, `{a="b", c="d"}`.
        #[prost(string, tag = "1")]
        pub labels: String,
        /// The lines.
        #[prost(message, repeated, tag = "2")]
        pub entries: Vec<Entry>,
    }

    /// `logproto.EntryAdapter`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Entry {
        /// When.
        #[prost(message, optional, tag = "1")]
        pub timestamp: Option<Timestamp>,
        /// The line.
        #[prost(string, tag = "2")]
        pub line: String,
        /// Structured metadata.
        #[prost(message, repeated, tag = "3")]
        pub structured_metadata: Vec<LabelPair>,
    }

    /// `google.protobuf.Timestamp`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Timestamp {
        /// Seconds.
        #[prost(int64, tag = "1")]
        pub seconds: i64,
        /// Nanoseconds.
        #[prost(int32, tag = "2")]
        pub nanos: i32,
    }

    /// `logproto.LabelPairAdapter`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LabelPair {
        /// Name.
        #[prost(string, tag = "1")]
        pub name: String,
        /// Value.
        #[prost(string, tag = "2")]
        pub value: String,
    }
}

/// Parses Prometheus-style labels, `{a="b", c="d\"e"}`.
///
/// # Errors
/// When the text is not a label set.
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let inner = text
        .trim()
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .ok_or_else(|| format!("labels {text:?} are not {{name=\"value\", ...}}"))?;
    let mut labels = BTreeMap::new();
    let mut rest = inner.trim();
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once('=')
            .ok_or_else(|| format!("labels {text:?}: a name without a value"))?;
        let after = after
            .trim_start()
            .strip_prefix('"')
            .ok_or_else(|| format!("labels {text:?}: values must be quoted"))?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => {}
                },
                '"' => {
                    end = Some(i + 1);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end.ok_or_else(|| format!("labels {text:?}: unterminated value"))?;
        labels.insert(name.trim().to_owned(), value);
        rest = after[end..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Ok(labels)
}

fn record(
    config: &LokiConfig,
    labels: &BTreeMap<String, String>,
    timestamp: i64,
    line: String,
    metadata: &[(String, String)],
    cx: &SourceContext,
) -> LogRecord {
    let mut fields = BTreeMap::new();
    let mut record = LogRecord {
        tag: match labels.get("job") {
            Some(job) => format!("{}.{job}", config.tag).into(),
            None => config.tag.as_str().into(),
        },
        timestamp: if timestamp == 0 { cx.now() } else { timestamp },
        node: cx.node.clone(),
        ..LogRecord::default()
    };
    for (name, value) in labels.iter().chain(metadata.iter().map(|(k, v)| (k, v))) {
        match name.as_str() {
            "namespace" => record.namespace = value.as_str().into(),
            "pod" => record.pod = value.as_str().into(),
            "container" => record.container = value.as_str().into(),
            "node" | "node_name" => record.node = value.as_str().into(),
            "stream" if value == "stderr" => record.stream = "stderr",
            "stream" if value == "stdout" => record.stream = "stdout",
            "level" | "severity" | "detected_level" => {
                record.level = normalize_level(value);
                fields.insert(name.clone(), value.clone());
            }
            _ => {
                if fields.len() < 64 {
                    fields.insert(name.clone(), value.clone());
                }
            }
        }
    }
    if record.level.is_empty() {
        record.level = detect_level(&line);
    }
    record.message = line;
    record.fields = Arc::new(fields);
    record
}

/// The records of a JSON push body.
fn from_json(
    body: &[u8],
    config: &LokiConfig,
    cx: &SourceContext,
) -> Result<Vec<LogRecord>, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let streams = value["streams"]
        .as_array()
        .ok_or_else(|| "no \"streams\" array".to_owned())?;
    let mut records = Vec::new();
    for (number, stream) in streams.iter().enumerate() {
        let labels: BTreeMap<String, String> = stream["stream"]
            .as_object()
            .ok_or_else(|| format!("streams[{number}] has no \"stream\" labels"))?
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                )
            })
            .collect();
        for (index, entry) in stream["values"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let where_ = || format!("streams[{number}].values[{index}]");
            let timestamp: i64 = entry[0]
                .as_str()
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| format!("{}: the time is not a string of nanoseconds", where_()))?;
            let line = entry[1]
                .as_str()
                .ok_or_else(|| format!("{}: the line is not a string", where_()))?;
            let metadata: Vec<(String, String)> = entry[2]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                    )
                })
                .collect();
            records.push(record(
                config,
                &labels,
                timestamp,
                line.to_owned(),
                &metadata,
                cx,
            ));
        }
    }
    Ok(records)
}

/// The records of a snappy-compressed protobuf push body.
fn from_protobuf(
    body: &[u8],
    config: &LokiConfig,
    cx: &SourceContext,
) -> Result<Vec<LogRecord>, String> {
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| format!("invalid snappy: {e}"))?;
    if raw.len() > config.max_body_bytes {
        return Err(format!("body larger than {} bytes", config.max_body_bytes));
    }
    let request = <proto::PushRequest as prost::Message>::decode(raw.as_slice())
        .map_err(|e| format!("invalid PushRequest: {e}"))?;
    let mut records = Vec::new();
    for stream in request.streams {
        let labels = parse_labels(&stream.labels)?;
        for entry in stream.entries {
            let timestamp = entry.timestamp.map_or(0, |t| {
                t.seconds.saturating_mul(1_000_000_000) + i64::from(t.nanos)
            });
            let metadata: Vec<(String, String)> = entry
                .structured_metadata
                .into_iter()
                .map(|p| (p.name, p.value))
                .collect();
            records.push(record(
                config, &labels, timestamp, entry.line, &metadata, cx,
            ));
        }
    }
    Ok(records)
}

#[derive(Clone)]
struct LokiState {
    config: Arc<LokiConfig>,
    cx: Arc<SourceContext>,
}

fn refuse(status: StatusCode, message: String) -> Response {
    (status, axum::Json(json!({"error": message}))).into_response()
}

async fn push(State(state): State<LokiState>, headers: HeaderMap, body: Bytes) -> Response {
    let (config, cx) = (&state.config, &state.cx);
    cx.metrics.received(0, body.len() as u64);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase()
    };
    let mut body = body.to_vec();
    if header("content-encoding") == "gzip" {
        let mut inflated = Vec::new();
        let read = flate2::read::GzDecoder::new(body.as_slice())
            .take(config.max_body_bytes as u64 + 1)
            .read_to_end(&mut inflated);
        if let Err(error) = read {
            cx.metrics.error("invalid_body");
            return refuse(StatusCode::BAD_REQUEST, format!("invalid gzip: {error}"));
        }
        body = inflated;
    }
    let parsed = if header("content-type").starts_with("application/json") {
        from_json(&body, config, cx)
    } else {
        from_protobuf(&body, config, cx)
    };
    let records = match parsed {
        Ok(records) => records,
        Err(error) => {
            cx.metrics.error("invalid_body");
            return refuse(StatusCode::BAD_REQUEST, error);
        }
    };
    match cx.deliver(records).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => refuse(StatusCode::SERVICE_UNAVAILABLE, error.to_owned()),
    }
}

/// Serves the source until shutdown.
pub(crate) async fn run(config: LokiConfig, cx: SourceContext, listener: tokio::net::TcpListener) {
    let shutdown = cx.shutdown.clone();
    let limit = config.max_body_bytes;
    let state = LokiState {
        config: Arc::new(config),
        cx: Arc::new(cx),
    };
    let router = axum::Router::new()
        .route("/loki/api/v1/push", axum::routing::post(push))
        .route("/api/prom/push", axum::routing::post(push))
        .route("/ready", axum::routing::get(|| async { "ready" }))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(state);
    let _ = axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
}

/// A protobuf push body (before snappy) of one line, for tests.
#[cfg(test)]
pub(crate) fn proto_request(labels: &str, seconds: i64, line: &str) -> Vec<u8> {
    prost::Message::encode_to_vec(&proto::PushRequest {
        streams: vec![proto::Stream {
            labels: labels.to_owned(),
            entries: vec![proto::Entry {
                timestamp: Some(proto::Timestamp { seconds, nanos: 0 }),
                line: line.to_owned(),
                structured_metadata: Vec::new(),
            }],
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_sets() {
        let labels =
            parse_labels(r#"{job="web", namespace="shop", note="a \"quoted\" value"}"#).unwrap();
        assert_eq!(labels["job"], "web");
        assert_eq!(labels["note"], "a \"quoted\" value");
        assert!(parse_labels("{}").unwrap().is_empty());
        assert!(parse_labels("job=web").is_err());
        assert!(parse_labels("{job=web}").is_err());
        assert!(parse_labels(r#"{job="web}"#).is_err());
    }

    #[test]
    fn protobuf_round_trip() {
        let request = proto::PushRequest {
            streams: vec![proto::Stream {
                labels: r#"{job="api", namespace="shop", pod="web-1"}"#.into(),
                entries: vec![proto::Entry {
                    timestamp: Some(proto::Timestamp {
                        seconds: 1_795_412_307,
                        nanos: 5,
                    }),
                    line: "level=error msg=boom".into(),
                    structured_metadata: vec![proto::LabelPair {
                        name: "trace_id".into(),
                        value: "t1".into(),
                    }],
                }],
            }],
        };
        let raw = prost::Message::encode_to_vec(&request);
        let decoded = <proto::PushRequest as prost::Message>::decode(raw.as_slice()).unwrap();
        assert_eq!(decoded, request);
    }
}
