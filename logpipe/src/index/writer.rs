//! The `index` sink: adds records to the newest partition and commits every
//! `commit_interval_ms` (so a line is searchable about a second after it is read), with the
//! source offsets in the commit. A failed commit (a full or unwritable disk) is counted,
//! rolled back and retried with backoff while the bounded channel holds the sources back:
//! buffering, not loss. Records of sources that can read them again (files) are not held
//! for a retry: the sink asks those sources to go back to the committed offsets
//! ([`Rewind`]), so memory does not grow with the commit interval. Records of other sources
//! (network inputs, events) wait in memory until committed. Writing blocks, so the sink runs
//! on its own thread.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tantivy::{IndexWriter, TantivyDocument};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Error, LogIndex, Partition, Payload};
use crate::metrics::{ComponentMetrics, Metrics};
use crate::record::{Batch, Checkpoint, LogRecord, Rewind};

/// Configuration of the `index` sink.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IndexSinkConfig {
    /// Tags to take, fluentd-style (`kube.**`; default `**`, everything).
    #[serde(rename = "match", default = "crate::sinks::match_all")]
    pub pattern: String,
    /// Directory of the index (default: `<data_dir>/index`).
    #[serde(default)]
    pub path: Option<std::path::PathBuf>,
    /// Milliseconds between commits; a line is searchable after at most about this long.
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// Memory the writer may use before it flushes a segment, in MiB (at least 15 per thread).
    #[serde(default = "default_writer_memory_mib")]
    pub writer_memory_mib: usize,
    /// Indexing threads (0: one per core, at most 4).
    #[serde(default)]
    pub writer_threads: usize,
    /// Segments merged at once (more: less merging while ingesting, more segments to search).
    #[serde(default = "default_merge_segments")]
    pub merge_segments: usize,
    /// Commit early once this many bytes of records are held for a commit (bounds memory).
    /// Records of files are not held (a failed commit has the files read again), except
    /// while live tails listen; records of network inputs and events are.
    #[serde(default = "default_commit_bytes")]
    pub commit_bytes: usize,
    /// Seconds of arrivals one partition takes before a new one starts.
    #[serde(default = "default_partition_secs")]
    pub partition_secs: u64,
    /// Drop partitions whose newest line is older than this many seconds (0: keep).
    #[serde(default = "default_retention_secs")]
    pub retention_secs: u64,
    /// Drop the oldest partitions while the index is larger than this many bytes (0: no limit).
    #[serde(default)]
    pub retention_bytes: u64,
}

const fn default_commit_interval_ms() -> u64 {
    1000
}
const fn default_writer_memory_mib() -> usize {
    64
}
const fn default_merge_segments() -> usize {
    16
}
const fn default_commit_bytes() -> usize {
    32 << 20
}
const fn default_partition_secs() -> u64 {
    3600
}
const fn default_retention_secs() -> u64 {
    7 * 24 * 3600
}

impl Default for IndexSinkConfig {
    fn default() -> Self {
        Self {
            pattern: crate::sinks::match_all(),
            path: None,
            commit_interval_ms: default_commit_interval_ms(),
            writer_memory_mib: default_writer_memory_mib(),
            writer_threads: 0,
            merge_segments: default_merge_segments(),
            commit_bytes: default_commit_bytes(),
            partition_secs: default_partition_secs(),
            retention_secs: default_retention_secs(),
            retention_bytes: 0,
        }
    }
}

/// What the pipeline hands a sink besides its input.
pub(crate) struct SinkContext {
    /// The sink's name.
    pub id: String,
    /// Its counters.
    pub component: ComponentMetrics,
    /// The pipeline's metrics.
    pub metrics: Metrics,
    /// Stop retrying when cancelled.
    pub shutdown: CancellationToken,
    /// Where file sources learn of commits and rewinds.
    pub rewind: Arc<Rewind>,
}

/// Runs the sink until its input closes; commits what it has, then returns.
pub(crate) fn run(
    index: &Arc<LogIndex>,
    config: &IndexSinkConfig,
    committed: Checkpoint,
    mut input: mpsc::Receiver<Batch>,
    cx: &SinkContext,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a timer-only runtime builds");
    let mut sink = Sink {
        index: index.clone(),
        config: config.clone(),
        active: None,
        checkpoint: committed.clone(),
        committed,
        uncommitted: Vec::new(),
        uncommitted_bytes: 0,
        rewindable: false,
        added: 0,
        newest: None,
        forgotten: Vec::new(),
        rewind: cx.rewind.clone(),
        span: (i64::MAX, i64::MIN),
        dirty_since: None,
        last_batch: Instant::now(),
        component: cx.component.clone(),
        metrics: cx.metrics.clone(),
        failures: 0,
    };
    let interval = Duration::from_millis(sink.config.commit_interval_ms.max(10));
    let mut last_retention = Instant::now() - Duration::from_secs(3600);
    loop {
        if sink.failures > 0 {
            // the disk refused the last commit: retry before taking more
            let backoff = Duration::from_millis(100 << sink.failures.min(6));
            runtime.block_on(async {
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = cx.shutdown.cancelled() => {}
                }
            });
            sink.commit();
            if sink.failures > 0 {
                if cx.shutdown.is_cancelled() {
                    tracing::warn!(
                        records = sink.added,
                        "index not writable at shutdown; the sources will resend"
                    );
                    return;
                }
                continue;
            }
        }
        let wait = sink.dirty_since.map_or(interval, |since| {
            interval.saturating_sub(since.elapsed()).min(IDLE_COMMIT)
        });
        let received = runtime.block_on(async { tokio::time::timeout(wait, input.recv()).await });
        match received {
            Ok(Some(batch)) => {
                sink.last_batch = Instant::now();
                cx.metrics
                    .buffer_events
                    .with_label_values(&[&cx.id])
                    .set(i64::try_from(input.len()).unwrap_or(0));
                sink.add(batch);
            }
            Ok(None) => {
                sink.commit();
                sink.finish();
                return;
            }
            Err(_elapsed) => {}
        }
        let due = sink.dirty_since.is_some_and(|since| since.elapsed() >= interval)
            // a burst is over: make it searchable now rather than at the interval
            || (sink.dirty_since.is_some() && input.is_empty() && sink.idle_for(IDLE_COMMIT))
            // bound the memory held for a retry
            || sink.uncommitted_bytes >= sink.config.commit_bytes;
        if due {
            sink.commit();
        }
        if last_retention.elapsed() >= Duration::from_secs(30) {
            last_retention = Instant::now();
            sink.retention();
        }
    }
}

struct Active {
    partition: Arc<Partition>,
    writer: IndexWriter,
    started: Instant,
}

struct Sink {
    index: Arc<LogIndex>,
    config: IndexSinkConfig,
    active: Option<Active>,
    /// Offsets of everything added (committed or not).
    checkpoint: Checkpoint,
    /// Offsets of everything committed.
    committed: Checkpoint,
    /// Records added since the last commit that no source can read again, kept to add again
    /// if the commit fails (and, while live tails listen, every record, to publish).
    uncommitted: Vec<Batch>,
    /// Their approximate size in memory.
    uncommitted_bytes: usize,
    /// Whether records a source can read again were added since the last commit.
    rewindable: bool,
    /// Records added since the last commit, held or not.
    added: u64,
    /// The newest of their timestamps.
    newest: Option<i64>,
    /// Files let go of since the last commit.
    forgotten: Vec<String>,
    rewind: Arc<Rewind>,
    /// Span of the active partition's lines, committed or not.
    span: (i64, i64),
    dirty_since: Option<Instant>,
    /// When the last batch arrived.
    last_batch: Instant,
    component: ComponentMetrics,
    metrics: Metrics,
    failures: u32,
}

/// Commit this long after the last batch when nothing else arrived.
const IDLE_COMMIT: Duration = Duration::from_millis(200);
/// Memory a record takes besides its message, roughly.
const RECORD_OVERHEAD: usize = 256;

impl Sink {
    fn idle_for(&self, quiet: Duration) -> bool {
        self.last_batch.elapsed() >= quiet
    }

    fn pending_records(&self) -> usize {
        self.uncommitted.iter().map(|b| b.records.len()).sum()
    }

    /// The writer of the active partition, opening or rolling it as needed.
    fn writer(&mut self) -> Result<&mut Active, Error> {
        let roll = self.active.as_ref().is_some_and(|active| {
            active.started.elapsed() >= Duration::from_secs(self.config.partition_secs.max(1))
        }) && self.dirty_since.is_none();
        if roll
            && let Some(active) = self.active.take()
            && let Err(error) = active.writer.wait_merging_threads()
        {
            tracing::warn!(%error, "failed to finish merges of a closed partition");
        }
        if self.active.is_none() {
            // reuse the newest partition after a restart when it is young enough
            let newest = self.index.partitions().last().cloned();
            let partition = match newest {
                Some(p)
                    if !roll
                        && partition_age(&p)
                            < Duration::from_secs(self.config.partition_secs.max(1)) =>
                {
                    p
                }
                _ => self.index.create_partition()?,
            };
            let threads = match self.config.writer_threads {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
                n => n,
            };
            let budget = (self.config.writer_memory_mib << 20).max(threads * (16 << 20));
            let writer = partition
                .index
                .writer_with_num_threads(threads, budget)
                .map_err(|source| Error::Tantivy {
                    path: partition.dir.clone(),
                    source,
                })?;
            let mut policy = tantivy::merge_policy::LogMergePolicy::default();
            policy.set_min_num_segments(self.config.merge_segments.max(2));
            writer.set_merge_policy(Box::new(policy));
            self.span = partition.span();
            self.active = Some(Active {
                partition,
                writer,
                started: Instant::now(),
            });
        }
        Ok(self.active.as_mut().expect("opened above"))
    }

    fn add(&mut self, mut batch: Batch) {
        if batch
            .generation
            .is_some_and(|generation| generation < self.rewind.generation())
        {
            // read before a rewind: the source sends these again
            return;
        }
        if !batch.records.is_empty() {
            self.index.adding();
        }
        self.component
            .received(batch.records.len() as u64, batch.bytes);
        for key in &batch.reset {
            self.checkpoint.remove(&**key);
        }
        // drop what an earlier run already committed (a source resuming from older offsets);
        // a batch holds runs of records from one file, so look each file up once per run
        let before = batch.records.len();
        let mut run: Option<(Arc<str>, Option<u64>)> = None;
        batch.records.retain(|record| {
            let Some(position) = &record.position else {
                return true;
            };
            let done = match &run {
                Some((key, done)) if Arc::ptr_eq(key, &position.key) => *done,
                _ => {
                    let done = self.checkpoint.get(&*position.key).copied();
                    run = Some((position.key.clone(), done));
                    done
                }
            };
            done.is_none_or(|done| position.offset > done)
        });
        let duplicates = before - batch.records.len();
        if duplicates > 0 {
            self.component.discarded("duplicate", duplicates as u64);
        }
        let rewindable = batch.generation.is_some() && !batch.records.is_empty();
        self.rewindable |= rewindable;
        let generation = self.rewind.generation();
        if let Err(error) = self.add_documents(&batch) {
            self.fail(&error);
            if self.rewind.generation() != generation {
                // rolled back: the sources send this batch again
                return;
            }
        }
        self.added += batch.records.len() as u64;
        self.newest = self
            .newest
            .max(batch.records.iter().map(|r| r.timestamp).max());
        // the last offset of each run
        let mut previous: Option<&crate::record::Position> = None;
        for position in batch.records.iter().filter_map(|r| r.position.as_ref()) {
            if let Some(last) = previous
                && !Arc::ptr_eq(&last.key, &position.key)
            {
                self.checkpoint.insert(last.key.to_string(), last.offset);
            }
            previous = Some(position);
        }
        if let Some(last) = previous {
            self.checkpoint.insert(last.key.to_string(), last.offset);
        }
        for key in &batch.forgotten {
            self.checkpoint.remove(&**key);
            self.forgotten.push(key.to_string());
        }
        self.dirty_since.get_or_insert_with(Instant::now);
        if rewindable && !self.index.has_live_tails() {
            // the source reads these again if the commit fails
            return;
        }
        self.uncommitted_bytes += batch
            .records
            .iter()
            .map(|r| r.message.len() + RECORD_OVERHEAD)
            .sum::<usize>();
        self.uncommitted.push(batch);
    }

    fn add_documents(&mut self, batch: &Batch) -> Result<(), Error> {
        let fields = self.index.fields();
        let mut span = self.span;
        let active = self.writer()?;
        for record in &batch.records {
            span.0 = span.0.min(record.timestamp);
            span.1 = span.1.max(record.timestamp);
            active
                .writer
                .add_document(document(record, &fields))
                .map_err(|source| Error::Tantivy {
                    path: active.partition.dir.clone(),
                    source,
                })?;
        }
        self.span = span;
        Ok(())
    }

    fn fail(&mut self, error: &Error) {
        self.failures += 1;
        self.component.error("write_failed");
        if self.failures == 1 || self.failures.is_power_of_two() {
            tracing::error!(%error, records = self.added, "index write failed; holding records and retrying");
        }
        // the writer may be broken: start a fresh one and add everything uncommitted again
        if let Some(mut active) = self.active.take() {
            let _ = active.writer.rollback();
        }
        if self.rewindable {
            // what file sources sent since the last commit is gone: they send it again
            self.uncommitted.retain(|batch| batch.generation.is_none());
            self.uncommitted_bytes = self
                .uncommitted
                .iter()
                .flat_map(|b| &b.records)
                .map(|r| r.message.len() + RECORD_OVERHEAD)
                .sum();
            self.checkpoint.clone_from(&self.committed);
            self.forgotten.clear();
            self.rewindable = false;
            self.added = self.pending_records() as u64;
            self.newest = newest_of(&self.uncommitted);
            let generation = self.rewind.rewind();
            tracing::info!(
                generation,
                "file sources read again from the committed offsets"
            );
        }
    }

    fn commit(&mut self) {
        if self.dirty_since.is_none() && self.failures == 0 {
            return;
        }
        let started = Instant::now();
        if let Err(error) = self.try_commit() {
            self.fail(&error);
            return;
        }
        // live tails see lines once searches do, so none falls between a tail's history
        // and its live lines
        for batch in &self.uncommitted {
            self.index.publish(&batch.records);
        }
        self.index.committed();
        let records = std::mem::take(&mut self.added);
        let newest = self.newest.take();
        self.uncommitted.clear();
        self.uncommitted_bytes = 0;
        self.committed = self.checkpoint.clone();
        self.rewindable = false;
        self.rewind
            .commit(&self.committed, std::mem::take(&mut self.forgotten));
        self.dirty_since = None;
        if self.failures > 0 {
            tracing::info!("index writable again");
        }
        self.failures = 0;
        self.component.sent(records);
        self.metrics
            .index_commit_seconds
            .observe(started.elapsed().as_secs_f64());
        if let Some(newest) = newest {
            let now = jiff::Timestamp::now().as_nanosecond() as f64;
            self.metrics
                .lag_seconds
                .set(((now - newest as f64) / 1e9).max(0.0));
        }
        self.metrics
            .index_documents
            .set(i64::try_from(self.index.documents()).unwrap_or(i64::MAX));
    }

    fn try_commit(&mut self) -> Result<(), Error> {
        if self.active.is_none() || self.failures > 0 {
            // after a failure: a fresh writer gets every uncommitted record again
            let batches = std::mem::take(&mut self.uncommitted);
            self.span = self
                .index
                .partitions()
                .last()
                .map_or((i64::MAX, i64::MIN), |p| p.span());
            let result = batches
                .iter()
                .try_for_each(|batch| self.add_documents(batch));
            self.uncommitted = batches;
            result?;
        }
        let payload = Payload {
            version: 1,
            checkpoint: self.checkpoint.clone(),
            min_ts: self.span.0,
            max_ts: self.span.1,
        };
        let text = serde_json::to_string(&payload).expect("payload serializes");
        let active = self.writer()?;
        let tantivy = |source| Error::Tantivy {
            path: active.partition.dir.clone(),
            source,
        };
        let mut prepared = active.writer.prepare_commit().map_err(tantivy)?;
        prepared.set_payload(&text);
        prepared.commit().map_err(tantivy)?;
        active.partition.reader.reload().map_err(tantivy)?;
        *active.partition.span.write() = (payload.min_ts, payload.max_ts);
        Ok(())
    }

    /// Drops partitions past the age or size limits (never the one being written).
    fn retention(&mut self) {
        let partitions = self.index.partitions();
        let active = self.active.as_ref().map(|a| a.partition.id.clone());
        let now = crate::record::now_ns();
        if self.config.retention_secs > 0 {
            let horizon = now.saturating_sub(
                i64::try_from(self.config.retention_secs).unwrap_or(i64::MAX / 2) * 1_000_000_000,
            );
            for partition in &partitions {
                let (min, max) = partition.span();
                if Some(&partition.id) != active.as_ref() && min <= max && max < horizon {
                    self.index.drop_partition(&partition.id);
                }
            }
        }
        let mut size = self.index.size_bytes();
        if self.config.retention_bytes > 0 {
            for partition in self.index.partitions() {
                if size <= self.config.retention_bytes {
                    break;
                }
                if Some(&partition.id) == active.as_ref() {
                    continue;
                }
                let freed = super::dir_size(&partition.dir);
                self.index.drop_partition(&partition.id);
                size = size.saturating_sub(freed);
            }
        }
        self.metrics
            .index_bytes
            .set(i64::try_from(size).unwrap_or(i64::MAX));
        self.metrics
            .index_partitions
            .set(i64::try_from(self.index.partitions().len()).unwrap_or(0));
    }

    fn finish(mut self) {
        if let Some(active) = self.active.take()
            && let Err(error) = active.writer.wait_merging_threads()
        {
            tracing::warn!(%error, "failed to finish index merges");
        }
    }
}

/// The newest timestamp among `batches`' records.
fn newest_of(batches: &[Batch]) -> Option<i64> {
    batches
        .iter()
        .flat_map(|b| &b.records)
        .map(|r| r.timestamp)
        .max()
}

fn partition_age(partition: &Partition) -> Duration {
    let created = partition
        .id
        .trim_start_matches("p-")
        .split('-')
        .next()
        .and_then(|millis| millis.parse::<i64>().ok())
        .unwrap_or(0);
    let now = jiff::Timestamp::now().as_millisecond();
    Duration::from_millis(u64::try_from(now - created).unwrap_or(0))
}

/// The tantivy document of a record.
pub fn document(record: &LogRecord, fields: &super::Fields) -> TantivyDocument {
    let mut doc = TantivyDocument::new();
    doc.add_i64(fields.ts, record.timestamp);
    doc.add_text(fields.message, &record.message);
    doc.add_text(fields.tag, &*record.tag);
    let exact = [
        (fields.namespace, &*record.namespace),
        (fields.pod, &*record.pod),
        (fields.container, &*record.container),
        (fields.node, &*record.node),
        (fields.stream, record.stream),
        (fields.level, record.level),
    ];
    for (field, value) in exact {
        if !value.is_empty() {
            doc.add_text(field, value);
        }
    }
    for (field, map) in [
        (fields.labels, &record.labels),
        (fields.fields, &record.fields),
    ] {
        if !map.is_empty() {
            let object: BTreeMap<String, tantivy::schema::OwnedValue> = map
                .iter()
                .map(|(k, v)| (k.clone(), tantivy::schema::OwnedValue::Str(v.clone())))
                .collect();
            doc.add_object(field, object);
        }
    }
    doc
}
