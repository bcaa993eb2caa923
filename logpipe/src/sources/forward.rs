//! The `forward` source: a fluentd forward protocol v1 server, so fluentd, Fluent Bit and the
//! fluent-logger libraries can send records to the pipeline. It accepts the four modes
//! (Message, Forward, PackedForward, CompressedPackedForward — the mode is the second
//! element's type), EventTime or integer or float times (and Fluent Bit's `[time, metadata]`),
//! and, when a message carries the `chunk` option, answers `{"ack": chunk}` only once every
//! sink has made its records durable, so the sender resends whatever a crash lost. UDP
//! heartbeats on the same port are answered. Broken msgpack closes that connection and is
//! counted; nothing else is affected.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;

use rmpv::Value;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

use super::SourceContext;
use crate::record::{Ack, Batch, LogRecord, detect_level};

/// Configuration of the `forward` source.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ForwardConfig {
    /// Address to listen on (TCP, and UDP for heartbeats).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Prefix added to every tag (`<prefix>.<tag>`).
    #[serde(default)]
    pub tag_prefix: Option<String>,
    /// Largest message accepted, in bytes; a larger one closes the connection (counted).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
}

fn default_listen() -> String {
    "0.0.0.0:24224".to_owned()
}
const fn default_max_message_bytes() -> usize {
    32 << 20
}

/// Runs the source until shutdown.
pub(crate) async fn run(
    id: String,
    config: ForwardConfig,
    cx: SourceContext,
    listener: TcpListener,
) {
    let cx = Arc::new(cx);
    if let Ok(address) = listener.local_addr()
        && let Ok(udp) = UdpSocket::bind(address).await
    {
        tokio::spawn(heartbeats(udp, cx.shutdown.clone()));
    }
    loop {
        let accepted = tokio::select! {
            () = cx.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let (id, config, cx) = (id.clone(), config.clone(), cx.clone());
                tokio::spawn(async move {
                    if let Err(error) = connection(stream, &config, &cx).await {
                        tracing::debug!(source = %id, %peer, %error, "forward connection closed");
                    }
                });
            }
            Err(error) => {
                tracing::debug!(source = %id, %error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn heartbeats(socket: UdpSocket, shutdown: tokio_util::sync::CancellationToken) {
    let mut buffer = [0u8; 64];
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => return,
            received = socket.recv_from(&mut buffer) => received,
        };
        if let Ok((_, peer)) = received {
            let _ = socket.send_to(&[0], peer).await;
        }
    }
}

/// Why a connection ends.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("invalid msgpack: {0}")]
    Msgpack(String),
    #[error("message larger than {0} bytes")]
    TooLarge(usize),
}

async fn connection(
    stream: TcpStream,
    config: &ForwardConfig,
    cx: &SourceContext,
) -> Result<(), ConnectionError> {
    let (mut reader, mut writer) = stream.into_split();
    // acks go out in the order their sinks finish, through one writer
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let replies = tokio::spawn(async move {
        while let Some(reply) = ack_rx.recv().await {
            if writer.write_all(&reply).await.is_err() {
                return;
            }
        }
    });
    let mut buffer: Vec<u8> = Vec::with_capacity(64 << 10);
    let mut chunk = vec![0u8; 64 << 10];
    let result = loop {
        let read = tokio::select! {
            () = cx.shutdown.cancelled() => break Ok(()),
            read = reader.read(&mut chunk) => read?,
        };
        if read == 0 {
            if !buffer.is_empty() {
                // the peer closed in the middle of a value: it was not msgpack
                cx.metrics.error("invalid_msgpack");
            }
            break Ok(());
        }
        buffer.extend_from_slice(&chunk[..read]);
        // decode every complete value in the buffer
        let mut consumed = 0;
        let mut failure = None;
        loop {
            let mut cursor = &buffer[consumed..];
            if cursor.is_empty() {
                break;
            }
            let before = cursor.len();
            match rmpv::decode::read_value(&mut cursor) {
                Ok(value) => {
                    consumed += before - cursor.len();
                    cx.metrics.received(0, (before - cursor.len()) as u64);
                    if let Err(error) = handle(value, config, cx, &ack_tx).await {
                        failure = Some(error);
                        break;
                    }
                }
                Err(error) if incomplete(&error) => break,
                Err(error) => {
                    failure = Some(ConnectionError::Msgpack(error.to_string()));
                    break;
                }
            }
        }
        buffer.drain(..consumed);
        if let Some(error) = failure {
            cx.metrics.error("invalid_msgpack");
            break Err(error);
        }
        if buffer.len() > config.max_message_bytes {
            cx.metrics.error("message_too_large");
            break Err(ConnectionError::TooLarge(config.max_message_bytes));
        }
    };
    drop(ack_tx);
    let _ = replies.await;
    result
}

fn incomplete(error: &rmpv::decode::Error) -> bool {
    match error {
        rmpv::decode::Error::InvalidMarkerRead(io) | rmpv::decode::Error::InvalidDataRead(io) => {
            io.kind() == std::io::ErrorKind::UnexpectedEof
        }
        _ => false,
    }
}

/// Turns one forward message into records, sends them, and arranges its ack.
async fn handle(
    value: Value,
    config: &ForwardConfig,
    cx: &SourceContext,
    acks: &mpsc::UnboundedSender<Vec<u8>>,
) -> Result<(), ConnectionError> {
    let items = match value {
        Value::Array(items) => items,
        // keepalive
        Value::Nil => return Ok(()),
        _ => {
            cx.metrics.error("invalid_event");
            return Ok(());
        }
    };
    let mut items = items.into_iter();
    let tag = match items.next() {
        Some(Value::String(tag)) => tag.into_str().unwrap_or_default(),
        _ => {
            cx.metrics.error("invalid_event");
            return Ok(());
        }
    };
    let tag: Arc<str> = match &config.tag_prefix {
        Some(prefix) => format!("{prefix}.{tag}").into(),
        None => tag.into(),
    };
    let second = items.next();
    let mut events: Vec<(Value, Value)> = Vec::new();
    let option = match second {
        Some(Value::Array(entries)) => {
            for entry in entries {
                push_entry(entry, &mut events, cx);
            }
            items.next()
        }
        Some(Value::Binary(bytes)) => {
            let option = items.next();
            let gzip = option_text(option.as_ref(), "compressed").as_deref() == Some("gzip");
            unpack(&bytes, gzip, &mut events, cx)?;
            option
        }
        Some(Value::String(text)) => {
            let option = items.next();
            unpack(text.as_bytes(), false, &mut events, cx)?;
            option
        }
        Some(time) => {
            let record = items.next().unwrap_or(Value::Nil);
            events.push((time, record));
            items.next()
        }
        None => {
            cx.metrics.error("invalid_event");
            return Ok(());
        }
    };
    let records: Vec<LogRecord> = events
        .into_iter()
        .filter_map(|(time, record)| to_record(&tag, &time, record, cx))
        .collect();
    let chunk = option_text(option.as_ref(), "chunk");
    let (ack, done) = match &chunk {
        Some(_) => {
            let (ack, done) = Ack::new();
            (Some(ack), Some(done))
        }
        None => (None, None),
    };
    let count = records.len() as u64;
    let batch = Batch {
        records,
        ack,
        ..Batch::default()
    };
    cx.metrics.received(count, 0);
    if cx.out.send(batch).await.is_err() {
        return Ok(());
    }
    cx.metrics.sent(count);
    if let (Some(chunk), Some(done)) = (chunk, done) {
        let acks = acks.clone();
        tokio::spawn(async move {
            // no reply when a sink failed: the sender resends
            if done.await == Ok(true) {
                let mut reply = Vec::new();
                let value = Value::Map(vec![(Value::from("ack"), Value::from(chunk))]);
                if rmpv::encode::write_value(&mut reply, &value).is_ok() {
                    let _ = acks.send(reply);
                }
            }
        });
    }
    Ok(())
}

fn option_text(option: Option<&Value>, key: &str) -> Option<String> {
    let Some(Value::Map(entries)) = option else {
        return None;
    };
    entries.iter().find_map(|(k, v)| {
        if k.as_str() != Some(key) {
            return None;
        }
        match v {
            Value::String(text) => text.as_str().map(str::to_owned),
            Value::Binary(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
            _ => None,
        }
    })
}

fn push_entry(entry: Value, events: &mut Vec<(Value, Value)>, cx: &SourceContext) {
    match entry {
        Value::Array(pair) if pair.len() >= 2 => {
            let mut pair = pair.into_iter();
            let time = pair.next().unwrap_or(Value::Nil);
            let record = pair.next().unwrap_or(Value::Nil);
            events.push((time, record));
        }
        _ => cx.metrics.error("invalid_event"),
    }
}

/// Decodes PackedForward entries (gzip members concatenated when compressed).
fn unpack(
    bytes: &[u8],
    gzip: bool,
    events: &mut Vec<(Value, Value)>,
    cx: &SourceContext,
) -> Result<(), ConnectionError> {
    let inflated;
    let mut cursor: &[u8] = if gzip {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| ConnectionError::Msgpack(format!("gzip: {e}")))?;
        inflated = out;
        &inflated
    } else {
        bytes
    };
    while !cursor.is_empty() {
        let entry = rmpv::decode::read_value(&mut cursor)
            .map_err(|e| ConnectionError::Msgpack(e.to_string()))?;
        push_entry(entry, events, cx);
    }
    Ok(())
}

/// Nanoseconds of a forward time: EventTime, integer or float seconds, or `[time, metadata]`.
fn event_time(time: &Value) -> Option<i64> {
    match time {
        Value::Ext(0, bytes) if bytes.len() == 8 => {
            let seconds = u32::from_be_bytes(bytes[..4].try_into().ok()?);
            let nanos = u32::from_be_bytes(bytes[4..].try_into().ok()?);
            Some(i64::from(seconds) * 1_000_000_000 + i64::from(nanos))
        }
        Value::Integer(n) => n.as_i64().map(|s| s.saturating_mul(1_000_000_000)),
        Value::F32(f) => Some((f64::from(*f) * 1e9) as i64),
        Value::F64(f) => Some((f * 1e9) as i64),
        Value::Array(items) => items.first().and_then(event_time),
        _ => None,
    }
}

fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.as_str().map_or_else(
            || String::from_utf8_lossy(text.as_bytes()).into_owned(),
            str::to_owned,
        )),
        Value::Binary(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::Integer(n) => Some(n.to_string()),
        Value::F64(f) => Some(f.to_string()),
        Value::F32(f) => Some(f.to_string()),
        Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The message keys looked up in order.
const MESSAGE_KEYS: [&str; 4] = ["message", "log", "msg", "MESSAGE"];

fn to_record(tag: &Arc<str>, time: &Value, record: Value, cx: &SourceContext) -> Option<LogRecord> {
    let Value::Map(entries) = record else {
        cx.metrics.error("invalid_event");
        return None;
    };
    let timestamp = event_time(time).unwrap_or_else(|| cx.now());
    let mut message = None;
    let mut fields = BTreeMap::new();
    let mut kubernetes = BTreeMap::new();
    let mut level = "";
    for (key, value) in &entries {
        let Some(key) = key.as_str() else { continue };
        if message.is_none() && MESSAGE_KEYS.contains(&key) {
            message = text_of(value).map(|m| m.trim_end_matches('\n').to_owned());
            continue;
        }
        if key == "kubernetes"
            && let Value::Map(meta) = value
        {
            for (k, v) in meta {
                if let (Some(k), Some(v)) = (k.as_str(), text_of(v)) {
                    kubernetes.insert(k.to_owned(), v);
                }
            }
            continue;
        }
        if let Some(text) = text_of(value) {
            if matches!(key, "level" | "severity" | "lvl") {
                level = crate::record::normalize_level(&text);
            }
            if fields.len() < 64 {
                fields.insert(key.to_owned(), text);
            }
        }
    }
    let message = message.unwrap_or_else(|| {
        // no message key: the record itself, as JSON, is the line
        let json: serde_json::Map<String, serde_json::Value> = fields
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        serde_json::Value::Object(json).to_string()
    });
    if level.is_empty() {
        level = detect_level(&message);
    }
    let meta = |key: &str| -> Arc<str> { kubernetes.get(key).map_or("", String::as_str).into() };
    Some(LogRecord {
        tag: tag.clone(),
        timestamp,
        message,
        stream: if fields.get("stream").map(String::as_str) == Some("stderr") {
            "stderr"
        } else if fields.contains_key("stream") {
            "stdout"
        } else {
            ""
        },
        namespace: meta("namespace_name"),
        pod: meta("pod_name"),
        container: meta("container_name"),
        node: cx.node.clone(),
        level,
        fields: Arc::new(fields),
        ..LogRecord::default()
    })
}
