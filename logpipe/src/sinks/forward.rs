//! The `forward` sink: records sent to a fluentd, Fluent Bit or another Kelson pipeline over
//! the fluent forward protocol v1, in Forward mode (one message per tag and batch), each event
//! timed with EventTime (nanoseconds).
//!
//! A record is shaped as Fluent Bit's Kubernetes filter shapes it: `log`, `stream`, `level`,
//! the record's own fields, and a `kubernetes` map (`namespace_name`, `pod_name`,
//! `container_name`, `host`, `labels`), so the receiving side's configuration for Fluent Bit
//! works unchanged. With `require_ack` (the default) every message carries a `chunk` id and
//! counts as delivered only when the receiver answers `{"ack": id}`; until then — a refused
//! connection, a timeout, a wrong answer — it is sent again with backoff while the batch waits,
//! so the bounded channel in front holds the sources back instead of losing records (the
//! receiver may see a message twice after a lost answer, as with fluentd: at least once).

use std::sync::Arc;
use std::time::Duration;

use rmpv::Value;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::ComponentMetrics;
use crate::record::{Batch, LogRecord};

/// Configuration of the `forward` sink.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ForwardSinkConfig {
    /// Tags to take, fluentd-style (default `**`).
    #[serde(rename = "match", default = "super::match_all")]
    pub pattern: String,
    /// `HOST:PORT` of the receiver (fluentd's `in_forward`, Fluent Bit's `forward` input).
    pub address: String,
    /// Wait for the receiver's acknowledgement of every message (fluentd's
    /// `require_ack_response`).
    #[serde(default = "default_require_ack")]
    pub require_ack: bool,
    /// Milliseconds to wait for a connection, a write or an acknowledgement.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Prefix added to every tag sent (`remote` sends `remote.kube.shop…`).
    #[serde(default)]
    pub tag_prefix: Option<String>,
    /// Largest message sent, in bytes: a batch's events are split to stay under it (a
    /// receiver closes the connection on larger ones; Fluent Bit's default buffer is 6 MB).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// A buffer in front of the sink (see [`crate::buffer`]).
    #[serde(default)]
    pub buffer: Option<crate::buffer::BufferConfig>,
}

const fn default_require_ack() -> bool {
    true
}
const fn default_timeout_ms() -> u64 {
    10_000
}
const fn default_max_message_bytes() -> usize {
    4 << 20
}

/// EventTime: msgpack extension 0, seconds and nanoseconds as big-endian u32.
fn event_time(nanos: i64) -> Value {
    let seconds = u32::try_from(nanos.div_euclid(1_000_000_000)).unwrap_or(0);
    let fraction = u32::try_from(nanos.rem_euclid(1_000_000_000)).unwrap_or(0);
    let mut bytes = Vec::with_capacity(8);
    bytes.extend_from_slice(&seconds.to_be_bytes());
    bytes.extend_from_slice(&fraction.to_be_bytes());
    Value::Ext(0, bytes)
}

fn text(value: &str) -> Value {
    Value::from(value)
}

/// One record as a forward event's map.
#[must_use]
pub fn event_record(record: &LogRecord) -> Value {
    let mut entries: Vec<(Value, Value)> = vec![(text("log"), text(&record.message))];
    if !record.stream.is_empty() {
        entries.push((text("stream"), text(record.stream)));
    }
    if !record.level.is_empty() {
        entries.push((text("level"), text(record.level)));
    }
    for (key, value) in record.fields.iter() {
        if !matches!(key.as_str(), "log" | "stream" | "level" | "kubernetes") {
            entries.push((text(key), text(value)));
        }
    }
    let mut kubernetes: Vec<(Value, Value)> = Vec::new();
    for (key, value) in [
        ("namespace_name", &*record.namespace),
        ("pod_name", &*record.pod),
        ("container_name", &*record.container),
        ("host", &*record.node),
    ] {
        if !value.is_empty() {
            kubernetes.push((text(key), text(value)));
        }
    }
    if !record.labels.is_empty() {
        let labels = record
            .labels
            .iter()
            .map(|(k, v)| (text(k), text(v)))
            .collect();
        kubernetes.push((text("labels"), Value::Map(labels)));
    }
    if !kubernetes.is_empty() {
        entries.push((text("kubernetes"), Value::Map(kubernetes)));
    }
    Value::Map(entries)
}

/// The Forward-mode messages of a batch, one per tag (split to stay under `max_bytes`), with
/// their chunk ids.
fn messages(
    records: &[LogRecord],
    prefix: Option<&str>,
    require_ack: bool,
    max_bytes: usize,
) -> Vec<(Option<String>, Vec<u8>)> {
    // (tag, events, their encoded size)
    let mut by_tag: Vec<(Arc<str>, Vec<Value>, usize)> = Vec::new();
    for record in records {
        let event = Value::Array(vec![event_time(record.timestamp), event_record(record)]);
        let mut size = Vec::new();
        let _ = rmpv::encode::write_value(&mut size, &event);
        let size = size.len();
        match by_tag.iter_mut().rev().find(|(tag, events, bytes)| {
            *tag == record.tag && (events.is_empty() || bytes + size <= max_bytes)
        }) {
            Some((_, events, bytes)) => {
                events.push(event);
                *bytes += size;
            }
            None => by_tag.push((record.tag.clone(), vec![event], size)),
        }
    }
    by_tag
        .into_iter()
        .map(|(tag, events, _)| {
            let tag = match prefix {
                Some(prefix) => format!("{prefix}.{tag}"),
                None => tag.to_string(),
            };
            let size = events.len();
            let chunk = require_ack.then(|| {
                let id: [u8; 16] = rand::random();
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, id)
            });
            let mut options = vec![(text("size"), Value::from(size))];
            if let Some(chunk) = &chunk {
                options.push((text("chunk"), text(chunk)));
            }
            let message = Value::Array(vec![text(&tag), Value::Array(events), Value::Map(options)]);
            let mut bytes = Vec::new();
            let _ = rmpv::encode::write_value(&mut bytes, &message);
            (chunk, bytes)
        })
        .collect()
}

/// Sends one message and, with a chunk id, waits for its acknowledgement.
async fn deliver(
    connection: &mut Option<TcpStream>,
    config: &ForwardSinkConfig,
    chunk: Option<&str>,
    bytes: &[u8],
) -> Result<(), String> {
    let timeout = Duration::from_millis(config.timeout_ms.max(1));
    if connection.is_none() {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(&config.address))
            .await
            .map_err(|_| "connection timed out".to_owned())?
            .map_err(|e| format!("cannot connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        *connection = Some(stream);
    }
    let stream = connection.as_mut().ok_or("no connection")?;
    tokio::time::timeout(timeout, stream.write_all(bytes))
        .await
        .map_err(|_| "write timed out".to_owned())?
        .map_err(|e| format!("write failed: {e}"))?;
    let Some(chunk) = chunk else {
        return Ok(());
    };
    // the answer is one small msgpack map: read until it decodes
    let mut answer = Vec::new();
    let mut buffer = [0u8; 256];
    let value = loop {
        let read = tokio::time::timeout(timeout, stream.read(&mut buffer))
            .await
            .map_err(|_| "no acknowledgement in time".to_owned())?
            .map_err(|e| format!("read failed: {e}"))?;
        if read == 0 {
            return Err("the receiver closed the connection before acknowledging".into());
        }
        answer.extend_from_slice(&buffer[..read]);
        if let Ok(value) = rmpv::decode::read_value(&mut answer.as_slice()) {
            break value;
        }
        if answer.len() > 4096 {
            return Err("the answer is not an acknowledgement".into());
        }
    };
    let acked = value
        .as_map()
        .and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some("ack")))
        .and_then(|(_, v)| v.as_str());
    match acked {
        Some(id) if id == chunk => Ok(()),
        _ => Err(format!("unexpected answer {value}")),
    }
}

/// Runs the sink until its input ends.
pub(crate) async fn run(
    config: ForwardSinkConfig,
    mut input: mpsc::Receiver<Batch>,
    metrics: ComponentMetrics,
    shutdown: CancellationToken,
) {
    let mut connection: Option<TcpStream> = None;
    while let Some(batch) = input.recv().await {
        metrics.received(batch.records.len() as u64, 0);
        if batch.records.is_empty() {
            continue;
        }
        let messages = messages(
            &batch.records,
            config.tag_prefix.as_deref(),
            config.require_ack,
            config.max_message_bytes.max(1024),
        );
        let mut failures = 0u32;
        let mut next = 0;
        while next < messages.len() {
            let (chunk, bytes) = &messages[next];
            let sent = tokio::select! {
                sent = deliver(&mut connection, &config, chunk.as_deref(), bytes) => sent,
                () = shutdown.cancelled(), if failures > 0 => Err("shutting down".to_owned()),
            };
            match sent {
                Ok(()) => {
                    next += 1;
                    failures = 0;
                    continue;
                }
                Err(error) => {
                    // a connection that failed once is not trusted again
                    connection = None;
                    failures += 1;
                    metrics.error("send_failed");
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(address = %config.address, %error, "forward sink: sending again");
                    }
                }
            }
            if shutdown.is_cancelled() {
                if let Some(ack) = &batch.ack {
                    ack.fail();
                }
                metrics.discarded("shutdown", batch.records.len() as u64);
                break;
            }
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(Duration::from_millis(100 << failures.min(6))) => {}
            }
        }
        if next == messages.len() {
            metrics.sent(batch.records.len() as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_shaped_as_fluent_bit_shapes_kubernetes_records() {
        let record = crate::record::sample();
        let json = event_record(&record).to_string();
        assert_eq!(
            json,
            r#"{"log": "GET / 200", "stream": "stdout", "level": "info", "status": "200", "kubernetes": {"namespace_name": "shop", "pod_name": "web", "container_name": "nginx", "host": "n1", "labels": {"app": "web"}}}"#
        );
        let sent = messages(
            &[record.clone(), record.clone()],
            Some("remote"),
            true,
            1 << 20,
        );
        assert_eq!(sent.len(), 1, "one message per tag");
        // a size cap splits a tag's events over several messages, each with its own chunk
        let many = vec![record; 10];
        let split = messages(&many, None, true, 400);
        assert!(split.len() > 1, "{}", split.len());
        assert!(split.iter().all(|(_, bytes)| bytes.len() < 600));
        let chunks: std::collections::HashSet<_> = split.iter().map(|(c, _)| c.clone()).collect();
        assert_eq!(chunks.len(), split.len());
        let events: usize = split
            .iter()
            .map(|(_, b)| {
                rmpv::decode::read_value(&mut b.as_slice()).unwrap()[1]
                    .as_array()
                    .unwrap()
                    .len()
            })
            .sum();
        assert_eq!(events, 10);
        let (chunk, bytes) = &sent[0];
        let value = rmpv::decode::read_value(&mut bytes.as_slice()).unwrap();
        assert_eq!(value[0].as_str(), Some("remote.kube.shop.web.nginx"));
        assert_eq!(value[1].as_array().unwrap().len(), 2);
        assert_eq!(
            value[1][0][0],
            Value::Ext(0, vec![0x6a, 0xfd, 0x86, 0xc0, 0x07, 0x5b, 0xcd, 0x15]),
            "EventTime: seconds and nanoseconds"
        );
        let options = value[2].as_map().unwrap();
        assert!(
            options
                .iter()
                .any(|(k, v)| k.as_str() == Some("chunk") && v.as_str() == chunk.as_deref())
        );
    }
}
