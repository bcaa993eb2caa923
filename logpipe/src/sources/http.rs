//! The `http` source, as fluentd's HTTP input: `POST /<tag>` with a JSON object, a JSON array
//! of objects, or newline-delimited JSON. Each object's `message` (or `log`, `msg`) is the
//! line, `time`/`timestamp` (RFC 3339 or seconds since the epoch) its time, `level` its level,
//! and its other keys fields. The answer comes once every sink that took the records made them
//! durable: 200 `{"accepted": N}`; 400 names what did not parse; 503 when a sink failed (send
//! again).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::SourceContext;
use crate::record::{LogRecord, detect_level, normalize_level};

/// Configuration of the `http` source.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Prefix added to every tag (`<prefix>.<tag>`).
    #[serde(default)]
    pub tag_prefix: Option<String>,
    /// Largest request body accepted, in bytes (413 beyond).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
}

fn default_listen() -> String {
    "0.0.0.0:9880".to_owned()
}
const fn default_max_body_bytes() -> usize {
    16 << 20
}

const MESSAGE_KEYS: [&str; 4] = ["message", "log", "msg", "MESSAGE"];

/// The record of one JSON object sent with `tag`.
fn record_from_json(
    tag: &Arc<str>,
    object: &serde_json::Map<String, Value>,
    cx: &SourceContext,
) -> LogRecord {
    let text = |value: &Value| match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut message = None;
    let mut timestamp = None;
    let mut level = "";
    let mut fields = BTreeMap::new();
    for (key, value) in object {
        if message.is_none() && MESSAGE_KEYS.contains(&key.as_str()) {
            message = Some(text(value));
            continue;
        }
        if timestamp.is_none() && matches!(key.as_str(), "time" | "timestamp") {
            timestamp = match value {
                Value::Number(n) => n.as_f64().map(|s| (s * 1e9) as i64),
                Value::String(s) => crate::format::parse_time(s.as_bytes()),
                _ => None,
            };
            if timestamp.is_some() {
                continue;
            }
        }
        if matches!(key.as_str(), "level" | "severity") {
            level = normalize_level(&text(value));
        }
        if fields.len() < 64 {
            fields.insert(key.clone(), text(value));
        }
    }
    let message = message.unwrap_or_else(|| Value::Object(object.clone()).to_string());
    if level.is_empty() {
        level = detect_level(&message);
    }
    LogRecord {
        tag: tag.clone(),
        timestamp: timestamp.unwrap_or_else(|| cx.now()),
        message,
        node: cx.node.clone(),
        level,
        fields: Arc::new(fields),
        ..LogRecord::default()
    }
}

/// Parses a body: one object, an array of objects, or one object per line.
fn objects(body: &[u8]) -> Result<Vec<serde_json::Map<String, Value>>, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("body is not UTF-8: {e}"))?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(object)) => Ok(vec![object]),
        Ok(Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::Object(object) => Ok(object),
                _ => Err(format!("item {i} is not an object")),
            })
            .collect(),
        Ok(_) => Err("the body is neither an object nor an array of objects".to_owned()),
        Err(whole) => text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(number, line)| match serde_json::from_str::<Value>(line) {
                Ok(Value::Object(object)) => Ok(object),
                Ok(_) => Err(format!("line {} is not an object", number + 1)),
                Err(error) if number == 0 => Err(format!("invalid JSON: {whole}; line 1: {error}")),
                Err(error) => Err(format!("line {}: {error}", number + 1)),
            })
            .collect(),
    }
}

#[derive(Clone)]
struct HttpState {
    config: Arc<HttpConfig>,
    cx: Arc<SourceContext>,
}

async fn receive(
    State(state): State<HttpState>,
    Path(tag): Path<String>,
    body: Bytes,
) -> impl IntoResponse {
    let cx = &state.cx;
    cx.metrics.received(0, body.len() as u64);
    let objects = match objects(&body) {
        Ok(objects) => objects,
        Err(error) => {
            cx.metrics.error("invalid_json");
            return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": error})));
        }
    };
    let tag = tag.trim_matches('/').replace('/', ".");
    let tag: Arc<str> = match &state.config.tag_prefix {
        Some(prefix) => format!("{prefix}.{tag}").into(),
        None => tag.into(),
    };
    let records: Vec<LogRecord> = objects
        .iter()
        .map(|o| record_from_json(&tag, o, cx))
        .collect();
    let count = records.len();
    match cx.deliver(records).await {
        Ok(()) => (StatusCode::OK, axum::Json(json!({"accepted": count}))),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"error": error})),
        ),
    }
}

/// Serves the source until shutdown.
pub(crate) async fn run(config: HttpConfig, cx: SourceContext, listener: tokio::net::TcpListener) {
    let shutdown = cx.shutdown.clone();
    let limit = config.max_body_bytes;
    let state = HttpState {
        config: Arc::new(config),
        cx: Arc::new(cx),
    };
    let router = axum::Router::new()
        .route("/{*tag}", axum::routing::post(receive))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(state);
    let _ = axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
}

#[cfg(test)]
mod tests {
    use super::objects;

    #[test]
    fn bodies() {
        assert_eq!(objects(br#"{"message":"a"}"#).unwrap().len(), 1);
        assert_eq!(
            objects(br#"[{"message":"a"},{"message":"b"}]"#)
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            objects(b"{\"message\":\"a\"}\n\n{\"message\":\"b\"}\n")
                .unwrap()
                .len(),
            2
        );
        assert!(
            objects(b"{\"message\":\"a\"}\n{broken\n")
                .unwrap_err()
                .contains("line 2")
        );
        assert!(objects(b"[1]").unwrap_err().contains("item 0"));
        assert!(objects(b"\xff").is_err());
    }
}
