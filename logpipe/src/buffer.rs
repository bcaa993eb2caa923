//! Buffers in front of an output (`buffer:` on any sink but the index), so that a slow or
//! unreachable receiver holds back neither the sources nor the other sinks:
//!
//! - `type: file` keeps records in chunk files under `<data_dir>/buffers/<sink>/` (or `path`),
//!   one per batch, written under a temporary name, synced and renamed. A batch counts as
//!   delivered upstream (file positions move on, network senders get their acknowledgement)
//!   once its chunk is on disk; a chunk is deleted only when the sink has delivered it, so its
//!   records survive a restart, a crash, a reload or a sink that gives up at shutdown, and are
//!   sent when the pipeline starts again (at least once).
//! - `type: memory` holds batches in memory with their acknowledgements, so file positions
//!   move on only when the sink has delivered the records or the buffer has dropped them.
//!
//! Both are bounded by `max_bytes`. When full, `when_full: block` (the default) takes nothing
//! more, which holds the sources back; `drop_oldest` drops the oldest waiting chunk to make
//! room, counting its records (`logpipe_component_discarded_events_total{reason="buffer_full"}`).
//! `logpipe_buffer_events` and `logpipe_buffer_bytes` show what waits.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::ComponentMetrics;
use crate::record::{Ack, Batch, LogRecord, Position};

/// How long a memory buffer goes on handing chunks to its sink after shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A buffer's configuration.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BufferConfig {
    /// `memory` or `file`.
    #[serde(rename = "type")]
    pub kind: BufferKind,
    /// Most bytes held (as stored).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// What a full buffer does.
    #[serde(default)]
    pub when_full: WhenFull,
    /// Directory of a file buffer (default `<data_dir>/buffers/<sink>`).
    #[serde(default)]
    pub path: Option<PathBuf>,
}

const fn default_max_bytes() -> u64 {
    256 << 20
}

/// Where a buffer keeps records.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BufferKind {
    /// In memory.
    Memory,
    /// In chunk files.
    File,
}

/// What a full buffer does.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Takes nothing more until there is room (the sources wait).
    #[default]
    Block,
    /// Drops the oldest waiting records, counted.
    DropOldest,
}

/// A record as a file buffer stores it.
#[derive(Deserialize, Serialize)]
struct Stored {
    tag: String,
    ts: i64,
    msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    stream: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    level: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    ns: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pod: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    container: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    node: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    fields: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pos: Option<(String, u64)>,
}

fn encode(records: &[LogRecord]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        let stored = Stored {
            tag: r.tag.to_string(),
            ts: r.timestamp,
            msg: r.message.clone(),
            stream: r.stream.to_owned(),
            level: r.level.to_owned(),
            ns: r.namespace.to_string(),
            pod: r.pod.to_string(),
            container: r.container.to_string(),
            node: r.node.to_string(),
            labels: (*r.labels).clone(),
            fields: (*r.fields).clone(),
            pos: r.position.as_ref().map(|p| (p.key.to_string(), p.offset)),
        };
        if serde_json::to_writer(&mut out, &stored).is_ok() {
            out.push(b'\n');
        }
    }
    out
}

/// The records of a chunk, and how many lines did not decode (a damaged file).
fn decode(bytes: &[u8]) -> (Vec<LogRecord>, u64) {
    let mut records = Vec::new();
    let mut damaged = 0;
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(s) = serde_json::from_slice::<Stored>(line) else {
            damaged += 1;
            continue;
        };
        records.push(LogRecord {
            tag: s.tag.into(),
            timestamp: s.ts,
            message: s.msg,
            stream: match s.stream.as_str() {
                "stdout" => "stdout",
                "stderr" => "stderr",
                _ => "",
            },
            level: crate::record::normalize_level(&s.level),
            namespace: s.ns.into(),
            pod: s.pod.into(),
            container: s.container.into(),
            node: s.node.into(),
            labels: Arc::new(s.labels),
            fields: Arc::new(s.fields),
            position: s.pos.map(|(key, offset)| Position {
                key: key.into(),
                offset,
                replay: false,
            }),
        });
    }
    (records, damaged)
}

/// One waiting chunk: its file (file buffers) or records and acknowledgement (memory).
struct Chunk {
    file: Option<PathBuf>,
    records: Option<Vec<LogRecord>>,
    ack: Option<Ack>,
    events: u64,
    bytes: u64,
}

/// The waiting chunks, oldest first.
struct Queue {
    dir: Option<PathBuf>,
    chunks: VecDeque<Chunk>,
    next: u64,
    bytes: u64,
    events: u64,
}

fn sync_dir(dir: &Path) {
    if let Ok(handle) = std::fs::File::open(dir) {
        let _ = handle.sync_all();
    }
}

impl Queue {
    fn memory() -> Self {
        Self {
            dir: None,
            chunks: VecDeque::new(),
            next: 0,
            bytes: 0,
            events: 0,
        }
    }

    /// Opens a file buffer: chunks an earlier run left are kept, half-written ones removed.
    fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut found: Vec<(u64, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.ends_with(".tmp") {
                let _ = std::fs::remove_file(&path);
            } else if let Some(seq) = name
                .strip_suffix(".ndjson")
                .and_then(|s| s.parse::<u64>().ok())
            {
                found.push((seq, path));
            }
        }
        found.sort();
        let mut queue = Self {
            dir: Some(dir.to_owned()),
            next: found.last().map_or(0, |(seq, _)| seq + 1),
            ..Self::memory()
        };
        for (_, path) in found {
            let bytes = std::fs::read(&path)?;
            let chunk = Chunk {
                events: bytes.iter().filter(|c| **c == b'\n').count() as u64,
                bytes: bytes.len() as u64,
                file: Some(path),
                records: None,
                ack: None,
            };
            queue.add(chunk);
        }
        Ok(queue)
    }

    fn add(&mut self, chunk: Chunk) {
        self.next += 1;
        self.bytes += chunk.bytes;
        self.events += chunk.events;
        self.chunks.push_back(chunk);
    }

    /// Adds a batch's records (a file buffer writes and syncs them first).
    fn push(&mut self, records: Vec<LogRecord>, ack: Option<Ack>) -> std::io::Result<()> {
        let events = records.len() as u64;
        let chunk = if let Some(dir) = &self.dir {
            let bytes = encode(&records);
            let path = dir.join(format!("{:016}.ndjson", self.next));
            let temporary = path.with_extension("tmp");
            let written = (|| {
                use std::io::Write as _;
                let mut file = std::fs::File::create(&temporary)?;
                file.write_all(&bytes)?;
                file.sync_all()?;
                std::fs::rename(&temporary, &path)
            })();
            if let Err(error) = written {
                let _ = std::fs::remove_file(&temporary);
                return Err(error);
            }
            sync_dir(dir);
            Chunk {
                file: Some(path),
                records: None,
                ack: None,
                events,
                bytes: bytes.len() as u64,
            }
        } else {
            let bytes = records
                .iter()
                .map(|r| (r.message.len() + r.tag.len() + 64) as u64)
                .sum();
            Chunk {
                file: None,
                records: Some(records),
                ack,
                events,
                bytes,
            }
        };
        self.add(chunk);
        Ok(())
    }

    /// Removes chunk `index` (delivered or dropped).
    fn remove(&mut self, index: usize) -> Option<Chunk> {
        let chunk = self.chunks.remove(index)?;
        self.bytes -= chunk.bytes;
        self.events -= chunk.events;
        if let Some(file) = &chunk.file {
            let _ = std::fs::remove_file(file);
        }
        Some(chunk)
    }

    /// The records of the oldest chunk, to hand to the sink.
    fn front_records(&mut self, metrics: &ComponentMetrics) -> Vec<LogRecord> {
        let Some(chunk) = self.chunks.front_mut() else {
            return Vec::new();
        };
        if let Some(records) = chunk.records.take() {
            return records;
        }
        let Some(file) = &chunk.file else {
            return Vec::new();
        };
        match std::fs::read(file) {
            Ok(bytes) => {
                let (records, damaged) = decode(&bytes);
                if damaged > 0 {
                    metrics.error("buffer_damaged");
                    metrics.discarded("buffer_damaged", damaged);
                }
                records
            }
            Err(error) => {
                tracing::warn!(file = %file.display(), %error, "a buffer chunk cannot be read; its records are dropped");
                metrics.error("buffer_damaged");
                metrics.discarded("buffer_damaged", chunk.events);
                Vec::new()
            }
        }
    }
}

/// What a buffer stage needs besides its configuration.
pub struct Stage {
    /// Batches from the router.
    pub input: mpsc::Receiver<Batch>,
    /// The sink's input.
    pub output: mpsc::Sender<Batch>,
    /// The sink's counters (drops are counted there).
    pub metrics: ComponentMetrics,
    /// Gauges of what waits: records and bytes.
    pub gauges: (prometheus::IntGauge, prometheus::IntGauge),
    /// Ends a file buffer's wait for a sink that does not deliver.
    pub shutdown: CancellationToken,
}

/// Runs a buffer between the router and a sink until the router's input ends and, for a
/// memory buffer, everything is handed to the sink (a file buffer keeps what is left for the
/// next start).
pub async fn run(config: BufferConfig, dir: PathBuf, stage: Stage) {
    let Stage {
        mut input,
        output,
        metrics,
        gauges,
        shutdown,
    } = stage;
    let mut queue = match config.kind {
        BufferKind::Memory => Queue::memory(),
        BufferKind::File => match Queue::open(&dir) {
            Ok(queue) => queue,
            Err(error) => {
                tracing::error!(dir = %dir.display(), %error, "the file buffer cannot be opened; records are held in memory instead");
                metrics.error("buffer_failed");
                Queue::memory()
            }
        },
    };
    let show = |queue: &Queue| {
        gauges
            .0
            .set(i64::try_from(queue.events).unwrap_or(i64::MAX));
        gauges.1.set(i64::try_from(queue.bytes).unwrap_or(i64::MAX));
    };
    show(&queue);
    // a file chunk handed to the sink and not yet delivered: always the front one
    let mut in_flight: Option<tokio::sync::oneshot::Receiver<bool>> = None;
    let mut input_open = true;
    // the sink gave up (shutting down) or stopped: nothing more is handed to it, but batches
    // are still taken until the router ends, so none is dropped on the way
    let mut stalled = false;
    let mut failures = 0u32;
    // after shutdown, a memory buffer goes on handing chunks to a sink that keeps up, for a
    // while: past this, what waits is counted as discarded rather than awaited
    let mut give_up_at: Option<tokio::time::Instant> = None;
    loop {
        if !stalled
            && in_flight.is_none()
            && !queue.chunks.is_empty()
            && let Ok(permit) = output.try_reserve()
        {
            let records = queue.front_records(&metrics);
            if queue.dir.is_some() {
                let (ack, outcome) = Ack::new();
                in_flight = Some(outcome);
                permit.send(Batch {
                    records,
                    ack: Some(ack),
                    ..Batch::default()
                });
            } else if let Some(chunk) = queue.remove(0) {
                // memory: the batch's own acknowledgement goes with it to the sink
                permit.send(Batch {
                    records,
                    ack: chunk.ack,
                    ..Batch::default()
                });
            }
            show(&queue);
            continue;
        }
        if !input_open
            && in_flight.is_none()
            && (stalled || queue.chunks.is_empty() || queue.dir.is_some())
        {
            break;
        }
        let room = config.when_full == WhenFull::DropOldest || queue.bytes < config.max_bytes;
        tokio::select! {
            batch = input.recv(), if input_open && (room || stalled) => {
                let Some(batch) = batch else {
                    input_open = false;
                    continue;
                };
                if batch.records.is_empty() {
                    continue;
                }
                let count = batch.records.len() as u64;
                if stalled && queue.dir.is_none() {
                    // shutting down with a sink that no longer takes anything
                    if let Some(ack) = &batch.ack {
                        ack.fail();
                    }
                    metrics.discarded("shutdown", count);
                    continue;
                }
                if let Err(error) = queue.push(batch.records, batch.ack.clone()) {
                    // the disk refused: the batch is not acknowledged, so its records are
                    // read again (files) or resent (network senders) after a restart
                    tracing::warn!(%error, "the file buffer cannot write; the batch is not acknowledged");
                    metrics.error("buffer_write_failed");
                    if let Some(ack) = &batch.ack {
                        ack.fail();
                    }
                    metrics.discarded("buffer_write_failed", count);
                    continue;
                }
                // drop the oldest waiting chunks past the limit, never the one on its way
                let keep = usize::from(in_flight.is_some());
                while config.when_full == WhenFull::DropOldest
                    && queue.bytes > config.max_bytes
                    && queue.chunks.len() > keep + 1
                {
                    if let Some(dropped) = queue.remove(keep) {
                        metrics.discarded("buffer_full", dropped.events);
                    }
                }
                show(&queue);
            }
            outcome = async { in_flight.as_mut().expect("in flight").await }, if in_flight.is_some() => {
                in_flight = None;
                if outcome.unwrap_or(false) {
                    failures = 0;
                    queue.remove(0);
                    show(&queue);
                } else if shutdown.is_cancelled() || output.is_closed() {
                    // the chunk stays on disk for the next start
                    stalled = true;
                } else {
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(100 << failures.min(6))).await;
                }
            }
            permit = output.reserve(), if !stalled && in_flight.is_none() && !queue.chunks.is_empty() => {
                // the sink has room again: loop round to hand it the next chunk
                if permit.is_err() {
                    stalled = true;
                }
            }
            () = shutdown.cancelled(), if give_up_at.is_none() => {
                give_up_at = Some(tokio::time::Instant::now() + SHUTDOWN_GRACE);
            }
            () = tokio::time::sleep_until(give_up_at.unwrap_or_else(tokio::time::Instant::now)), if give_up_at.is_some() && !stalled && queue.dir.is_none() => {
                stalled = true;
            }
        }
    }
    // records still in memory were not delivered: not acknowledged, counted
    for chunk in queue.chunks.iter().filter(|c| c.file.is_none()) {
        if let Some(ack) = &chunk.ack {
            ack.fail();
        }
        metrics.discarded("shutdown", chunk.events);
    }
    show(&queue);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_the_file_format() {
        let record = LogRecord {
            stream: "stderr",
            level: "error",
            ..crate::record::sample()
        };
        let mut bytes = encode(&[record.clone(), LogRecord::default()]);
        bytes.extend_from_slice(b"{broken\n");
        let (decoded, damaged) = decode(&bytes);
        assert_eq!(damaged, 1);
        assert_eq!(decoded.len(), 2);
        assert_eq!(decoded[0], record);
        assert_eq!(decoded[1], LogRecord::default());
    }

    #[test]
    fn a_file_queue_keeps_chunks_across_opens() {
        let dir = tempfile::tempdir().unwrap();
        let record = |n: i64| LogRecord {
            timestamp: n,
            message: format!("line {n}"),
            ..LogRecord::default()
        };
        let mut queue = Queue::open(dir.path()).unwrap();
        queue.push(vec![record(1), record(2)], None).unwrap();
        queue.push(vec![record(3)], None).unwrap();
        std::fs::write(dir.path().join("0000000000000009.tmp"), "half").unwrap();
        drop(queue);
        let mut queue = Queue::open(dir.path()).unwrap();
        assert_eq!((queue.chunks.len(), queue.events), (2, 3));
        assert!(!dir.path().join("0000000000000009.tmp").exists());
        let metrics = crate::metrics::Metrics::new().component("out", "file");
        let first = queue.front_records(&metrics);
        assert_eq!(first.len(), 2);
        queue.remove(0);
        queue.push(vec![record(4)], None).unwrap();
        drop(queue);
        let mut queue = Queue::open(dir.path()).unwrap();
        let messages: Vec<String> = (0..2)
            .flat_map(|_| {
                let records = queue.front_records(&metrics);
                queue.remove(0);
                records.into_iter().map(|r| r.message)
            })
            .collect();
        assert_eq!(
            messages,
            ["line 3", "line 4"],
            "oldest first, delivered ones gone"
        );
        assert_eq!((queue.bytes, queue.events), (0, 0));
    }
}
