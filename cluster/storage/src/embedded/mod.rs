//! The embedded backend: a write log in a `redb` database plus an in-memory revision index.
//!
//! Every write becomes one record in the `log` table, keyed by its revision (kine's design,
//! with redb instead of SQLite). One writer thread takes every pending write off a bounded
//! queue, applies the batch in a single transaction and commits it durably once (group commit),
//! then updates the [`index`] and wakes watchers. Reads consult the index, then fetch the record
//! by revision. Watches replay the log after their start revision and then follow a broadcast
//! of committed events; a watcher that falls behind the broadcast re-reads the log.

mod index;
mod record;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::RwLock;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, error, info};

use self::index::{Index, Version};
use self::record::{Record, decode_header};
use crate::{
    Error, Event, KeyValue, ListRequest, ListResponse, Result, Revision, Storage, WatchMessage,
    WatchStream,
};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
const META_CURRENT: &str = "current_revision";
const META_COMPACTED: &str = "compacted_revision";

/// Options of the embedded backend.
#[derive(Clone, Debug)]
#[must_use]
pub struct EmbeddedOptions {
    /// Database file; `None` keeps everything in memory (tests).
    pub path: Option<PathBuf>,
    /// Page cache size of the database.
    pub cache_size_bytes: usize,
    /// Most writes committed in one transaction.
    pub max_batch: usize,
    /// Under concurrent writes (the last commit held more than one), how long at most the
    /// writer waits for more while they keep arriving before committing: fewer, larger
    /// commits (each one costs a sync of the file) for a little more latency. A write that
    /// comes alone after a concurrent burst waits one quiet step (100 µs); sequential writes
    /// never wait.
    pub gather: Duration,
    /// How often watchers report progress when nothing happens.
    pub progress_interval: Duration,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            path: None,
            cache_size_bytes: 64 << 20,
            max_batch: 1024,
            gather: Duration::from_millis(1),
            progress_interval: Duration::from_secs(1),
        }
    }
}

impl EmbeddedOptions {
    /// Options for a database file at `path`.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self {
            path: Some(path.into()),
            ..Self::default()
        }
    }
}

/// The embedded storage backend. Cheap to clone; all clones share one database.
#[derive(Clone)]
pub struct Embedded {
    shared: Arc<Shared>,
    writes: mpsc::Sender<WriteOp>,
}

struct Shared {
    db: Database,
    index: RwLock<Index>,
    events: broadcast::Sender<Arc<Event>>,
    /// The revision of the latest event sent on `events`.
    broadcast_revision: AtomicI64,
    progress_interval: Duration,
    /// Write transactions committed since the store opened.
    commits: AtomicU64,
}

enum WriteOp {
    Create {
        key: String,
        value: Bytes,
        reply: oneshot::Sender<Result<KeyValue>>,
    },
    Update {
        key: String,
        value: Bytes,
        expected: Revision,
        reply: oneshot::Sender<Result<KeyValue>>,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
        reply: oneshot::Sender<Result<(KeyValue, Revision)>>,
    },
    Compact {
        revision: Revision,
        reply: oneshot::Sender<Result<()>>,
    },
}

fn backend<E: std::fmt::Display>(error: E) -> Error {
    Error::Backend(error.to_string())
}

impl Embedded {
    /// Opens (or creates) the database and rebuilds the revision index from the log.
    pub fn open(options: EmbeddedOptions) -> Result<Self> {
        let mut builder = Database::builder();
        builder.set_cache_size(options.cache_size_bytes);
        let db = match &options.path {
            Some(path) => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(backend)?;
                }
                builder.create(path).map_err(backend)?
            }
            None => builder
                .create_with_backend(redb::backends::InMemoryBackend::new())
                .map_err(backend)?,
        };
        let started = std::time::Instant::now();
        let index = load_index(&db)?;
        info!(
            revision = index.current,
            compacted = index.compacted,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "opened embedded storage"
        );
        let (events, _) = broadcast::channel(8192);
        let shared = Arc::new(Shared {
            broadcast_revision: AtomicI64::new(index.current),
            db,
            index: RwLock::new(index),
            events,
            progress_interval: options.progress_interval,
            commits: AtomicU64::new(0),
        });
        let (writes, queue) = mpsc::channel(options.max_batch * 4);
        let writer_shared = shared.clone();
        let max_batch = options.max_batch.max(1);
        let gather = options.gather;
        std::thread::Builder::new()
            .name("kelson-storage-writer".into())
            .spawn(move || {
                Writer {
                    shared: writer_shared,
                    queue,
                    max_batch,
                    gather,
                }
                .run()
            })
            .map_err(backend)?;
        Ok(Self { shared, writes })
    }

    /// How many batches of writes were committed since the store opened (each is one sync of
    /// the file); concurrent writes share them.
    #[must_use]
    pub fn commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }

    /// An empty in-memory store (for tests).
    pub fn in_memory() -> Self {
        Self::open(EmbeddedOptions::default()).expect("in-memory storage opens")
    }

    async fn submit<T>(&self, op: impl FnOnce(oneshot::Sender<Result<T>>) -> WriteOp) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.writes
            .send(op(reply))
            .await
            .map_err(|_| Error::Closed)?;
        // the writer drops the reply when the batch could not be committed
        answer
            .await
            .map_err(|_| Error::Backend("the write was not committed".into()))?
    }
}

fn load_index(db: &Database) -> Result<Index> {
    let mut index = Index::default();
    let txn = db.begin_write().map_err(backend)?;
    {
        // make sure both tables exist so that later read transactions can open them
        let log = txn.open_table(LOG).map_err(backend)?;
        let meta = txn.open_table(META).map_err(backend)?;
        let current = meta
            .get(META_CURRENT)
            .map_err(backend)?
            .map_or(0, |v| v.value());
        index.compacted = meta
            .get(META_COMPACTED)
            .map_err(backend)?
            .map_or(0, |v| v.value());
        for entry in log.iter().map_err(backend)? {
            let (revision, bytes) = entry.map_err(backend)?;
            let (header, _) = decode_header(bytes.value())?;
            let revision = revision.value() as Revision;
            index.push(
                &header.key,
                Version {
                    mod_revision: revision,
                    create_revision: header.create_revision,
                    deleted: header.deleted,
                },
            );
            index.current = revision;
        }
        // deletes compacted away may have been the newest writes
        index.current = index.current.max(current);
    }
    txn.commit().map_err(backend)?;
    Ok(index)
}

impl Shared {
    fn read_record(&self, txn: &redb::ReadTransaction, revision: Revision) -> Result<Record> {
        let log = txn.open_table(LOG).map_err(backend)?;
        let Some(bytes) = log.get(revision as u64).map_err(backend)? else {
            let compacted = self.index.read().compacted;
            return Err(if revision <= compacted {
                Error::Compacted {
                    requested: revision,
                    compacted,
                }
            } else {
                Error::Backend(format!("log record {revision} is missing"))
            });
        };
        Record::decode(bytes.value())
    }

    fn kv(key: String, record: Record, version: Version) -> KeyValue {
        KeyValue {
            key,
            value: record.value,
            create_revision: version.create_revision,
            mod_revision: version.mod_revision,
        }
    }

    fn check_revision(&self, revision: Option<Revision>) -> Result<()> {
        let Some(requested) = revision else {
            return Ok(());
        };
        let index = self.index.read();
        if requested < index.compacted {
            return Err(Error::Compacted {
                requested,
                compacted: index.compacted,
            });
        }
        if requested > index.current {
            return Err(Error::FutureRevision {
                requested,
                current: index.current,
            });
        }
        Ok(())
    }

    fn list(&self, request: &ListRequest) -> Result<ListResponse> {
        self.check_revision(request.revision)?;
        let (found, more, revision) = {
            let index = self.index.read();
            let (found, more) = index.range(
                &request.prefix,
                request.start.as_deref(),
                request.revision,
                request.limit,
            );
            (found, more, request.revision.unwrap_or(index.current))
        };
        let txn = self.db.begin_read().map_err(backend)?;
        let mut kvs = Vec::with_capacity(found.len());
        for (key, version) in found {
            let record = self.read_record(&txn, version.mod_revision)?;
            kvs.push(Self::kv(key, record, version));
        }
        Ok(ListResponse {
            kvs,
            revision,
            more,
        })
    }

    /// Events with revisions in `(after, until]` under `prefix`, read from the log.
    fn replay(&self, prefix: &str, after: Revision, until: Revision) -> Result<Vec<Event>> {
        let txn = self.db.begin_read().map_err(backend)?;
        let log = txn.open_table(LOG).map_err(backend)?;
        let mut events = Vec::new();
        for entry in log
            .range((after + 1) as u64..=until as u64)
            .map_err(backend)?
        {
            let (revision, bytes) = entry.map_err(backend)?;
            let (header, _) = decode_header(bytes.value())?;
            if !header.key.starts_with(prefix) {
                continue;
            }
            let record = Record::decode(bytes.value())?;
            let revision = revision.value() as Revision;
            let prev = if record.prev_revision > 0 {
                let prev = self.read_record(&txn, record.prev_revision)?;
                Some(KeyValue {
                    key: record.key.clone(),
                    value: prev.value,
                    create_revision: prev.create_revision,
                    mod_revision: record.prev_revision,
                })
            } else {
                None
            };
            events.push(match (record.deleted, prev) {
                (true, Some(prev)) => Event::Deleted { prev, revision },
                (true, None) => {
                    return Err(Error::Backend(format!(
                        "delete record {revision} has no prior"
                    )));
                }
                (false, prev) => {
                    let kv = KeyValue {
                        key: record.key,
                        value: record.value,
                        create_revision: record.create_revision,
                        mod_revision: revision,
                    };
                    match prev {
                        Some(prev) => Event::Updated { kv, prev },
                        None => Event::Created(kv),
                    }
                }
            });
        }
        Ok(events)
    }
}

#[async_trait]
impl Storage for Embedded {
    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        let key = key.to_owned();
        self.submit(|reply| WriteOp::Create { key, value, reply })
            .await
    }

    async fn get(&self, key: &str) -> Result<(Option<KeyValue>, Revision)> {
        let (version, current) = {
            let index = self.shared.index.read();
            (index.get(key, None), index.current)
        };
        let Some(version) = version else {
            return Ok((None, current));
        };
        let txn = self.shared.db.begin_read().map_err(backend)?;
        let record = self.shared.read_record(&txn, version.mod_revision)?;
        Ok((Some(Shared::kv(key.to_owned(), record, version)), current))
    }

    async fn list(&self, request: ListRequest) -> Result<ListResponse> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.list(&request))
            .await
            .map_err(backend)?
    }

    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<KeyValue> {
        let key = key.to_owned();
        self.submit(|reply| WriteOp::Update {
            key,
            value,
            expected,
            reply,
        })
        .await
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(KeyValue, Revision)> {
        let key = key.to_owned();
        self.submit(|reply| WriteOp::Delete {
            key,
            expected,
            reply,
        })
        .await
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        let compacted = self.shared.index.read().compacted;
        if after < compacted {
            return Err(Error::Compacted {
                requested: after,
                compacted,
            });
        }
        let (tx, rx) = mpsc::channel(256);
        let watcher = Watcher {
            shared: self.shared.clone(),
            prefix: prefix.to_owned(),
            last: after,
        };
        tokio::spawn(watcher.run(tx));
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.submit(|reply| WriteOp::Compact { revision, reply })
            .await
    }

    async fn current_revision(&self) -> Result<Revision> {
        Ok(self.shared.index.read().current)
    }
}

/// The single writer: drains the queue, commits batches, publishes events.
struct Writer {
    shared: Arc<Shared>,
    queue: mpsc::Receiver<WriteOp>,
    max_batch: usize,
    gather: Duration,
}

/// What a batch did to one key, visible to later operations of the same batch.
#[derive(Clone)]
struct Staged {
    version: Option<Version>,
    value: Bytes,
}

/// A committed batch: the replies to send, the index entries to add, the new revision.
struct Applied {
    outcomes: Vec<Outcome>,
    versions: Vec<(String, Version)>,
    revision: Revision,
}

/// A write that passed its preconditions, waiting for the commit.
enum Outcome {
    Created(KeyValue, oneshot::Sender<Result<KeyValue>>),
    Updated(KeyValue, KeyValue, oneshot::Sender<Result<KeyValue>>),
    Deleted(
        KeyValue,
        Revision,
        oneshot::Sender<Result<(KeyValue, Revision)>>,
    ),
}

impl Writer {
    fn run(mut self) {
        let mut pending: Option<WriteOp> = None;
        let mut concurrent = false;
        loop {
            let first = match pending.take() {
                Some(op) => op,
                None => match self.queue.blocking_recv() {
                    Some(op) => op,
                    None => break,
                },
            };
            if let WriteOp::Compact { revision, reply } = first {
                let _ = reply.send(self.compact(revision));
                continue;
            }
            if concurrent {
                self.gather_more();
            }
            let mut batch = vec![first];
            while batch.len() < self.max_batch {
                match self.queue.try_recv() {
                    Ok(op @ WriteOp::Compact { .. }) => {
                        pending = Some(op);
                        break;
                    }
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            concurrent = batch.len() > 1;
            self.commit_batch(batch);
        }
        debug!("storage writer stopped");
    }

    /// Waits while more writes keep arriving (a quiet step of up to 100 µs ends it), for at
    /// most `gather` in all or until a full batch waits. Clients that each wait for their
    /// last write are all queued after a step, so they lose little; writers that do not wait
    /// for each other are gathered into fewer commits.
    fn gather_more(&self) {
        if self.gather.is_zero() {
            return;
        }
        let deadline = std::time::Instant::now() + self.gather;
        let mut queued = self.queue.len();
        while queued + 1 < self.max_batch {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(Duration::from_micros(100)));
            let now = self.queue.len();
            if now == queued {
                break;
            }
            queued = now;
        }
    }

    fn commit_batch(&mut self, batch: Vec<WriteOp>) {
        // on failure every reply of the batch is dropped, which callers see as a failed write
        let Applied {
            outcomes,
            versions,
            revision: current,
        } = match self.apply_batch(batch) {
            Ok(applied) => applied,
            Err(error) => {
                error!(%error, "storage commit failed");
                return;
            }
        };
        {
            let mut index = self.shared.index.write();
            for (key, version) in versions {
                index.push(&key, version);
            }
            index.current = current;
        }
        for outcome in outcomes {
            let event = match outcome {
                Outcome::Created(kv, reply) => {
                    let _ = reply.send(Ok(kv.clone()));
                    Event::Created(kv)
                }
                Outcome::Updated(kv, prev, reply) => {
                    let _ = reply.send(Ok(kv.clone()));
                    Event::Updated { kv, prev }
                }
                Outcome::Deleted(prev, revision, reply) => {
                    let _ = reply.send(Ok((prev.clone(), revision)));
                    Event::Deleted { prev, revision }
                }
            };
            let revision = event.revision();
            let _ = self.shared.events.send(Arc::new(event));
            self.shared
                .broadcast_revision
                .store(revision, Ordering::Release);
        }
    }

    /// Checks preconditions, writes the log records and commits; precondition failures are
    /// answered at once and the rest wait in the returned outcomes.
    fn apply_batch(&mut self, batch: Vec<WriteOp>) -> Result<Applied> {
        let mut revision = self.shared.index.read().current;
        let mut staged: HashMap<String, Staged> = HashMap::new();
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut versions = Vec::with_capacity(batch.len());
        let mut txn = self.shared.db.begin_write().map_err(backend)?;
        txn.set_durability(Durability::Immediate).map_err(backend)?;
        {
            let mut log = txn.open_table(LOG).map_err(backend)?;
            for op in batch {
                let (key, value, prev_version, deleted) = match op {
                    WriteOp::Create { key, value, reply } => {
                        let current = self.current(&staged, &log, &key)?;
                        if current.version.is_some() {
                            let _ = reply.send(Err(Error::AlreadyExists { key }));
                            continue;
                        }
                        revision += 1;
                        let kv = KeyValue {
                            key: key.clone(),
                            value: value.clone(),
                            create_revision: revision,
                            mod_revision: revision,
                        };
                        outcomes.push(Outcome::Created(kv, reply));
                        (key, value, None, false)
                    }
                    WriteOp::Update {
                        key,
                        value,
                        expected,
                        reply,
                    } => {
                        let current = self.current(&staged, &log, &key)?;
                        let Some(prev) = current.version else {
                            let _ = reply.send(Err(Error::NotFound { key }));
                            continue;
                        };
                        if prev.mod_revision != expected {
                            let actual = prev.mod_revision;
                            let _ = reply.send(Err(Error::Conflict {
                                key,
                                expected,
                                actual,
                            }));
                            continue;
                        }
                        revision += 1;
                        let kv = KeyValue {
                            key: key.clone(),
                            value: value.clone(),
                            create_revision: prev.create_revision,
                            mod_revision: revision,
                        };
                        let prev_kv = prev.kv(&key, current.value);
                        outcomes.push(Outcome::Updated(kv, prev_kv, reply));
                        (key, value, Some(prev), false)
                    }
                    WriteOp::Delete {
                        key,
                        expected,
                        reply,
                    } => {
                        let current = self.current(&staged, &log, &key)?;
                        let Some(prev) = current.version else {
                            let _ = reply.send(Err(Error::NotFound { key }));
                            continue;
                        };
                        if let Some(expected) = expected
                            && prev.mod_revision != expected
                        {
                            let actual = prev.mod_revision;
                            let _ = reply.send(Err(Error::Conflict {
                                key,
                                expected,
                                actual,
                            }));
                            continue;
                        }
                        revision += 1;
                        let prev_kv = prev.kv(&key, current.value);
                        outcomes.push(Outcome::Deleted(prev_kv, revision, reply));
                        (key, Bytes::new(), Some(prev), true)
                    }
                    WriteOp::Compact { .. } => unreachable!("compactions are never batched"),
                };
                let version = Version {
                    mod_revision: revision,
                    create_revision: prev_version.map_or(revision, |p| p.create_revision),
                    deleted,
                };
                let record = Record {
                    key: key.clone(),
                    value: value.clone(),
                    create_revision: version.create_revision,
                    prev_revision: prev_version.map_or(0, |p| p.mod_revision),
                    deleted,
                };
                log.insert(revision as u64, record.encode().as_slice())
                    .map_err(backend)?;
                let staged_version = (!deleted).then_some(version);
                staged.insert(
                    key.clone(),
                    Staged {
                        version: staged_version,
                        value,
                    },
                );
                versions.push((key, version));
            }
            let mut meta = txn.open_table(META).map_err(backend)?;
            meta.insert(META_CURRENT, revision).map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        self.shared.commits.fetch_add(1, Ordering::Relaxed);
        Ok(Applied {
            outcomes,
            versions,
            revision,
        })
    }

    /// The state of `key` as this batch sees it: staged by an earlier op, else committed.
    fn current(
        &self,
        staged: &HashMap<String, Staged>,
        log: &redb::Table<u64, &[u8]>,
        key: &str,
    ) -> Result<Staged> {
        if let Some(state) = staged.get(key) {
            return Ok(state.clone());
        }
        let Some(version) = self.shared.index.read().get(key, None) else {
            return Ok(Staged {
                version: None,
                value: Bytes::new(),
            });
        };
        let bytes = log
            .get(version.mod_revision as u64)
            .map_err(backend)?
            .ok_or_else(|| {
                Error::Backend(format!("log record {} is missing", version.mod_revision))
            })?;
        let record = Record::decode(bytes.value())?;
        Ok(Staged {
            version: Some(version),
            value: record.value,
        })
    }

    fn compact(&mut self, revision: Revision) -> Result<()> {
        let (current, compacted) = {
            let index = self.shared.index.read();
            (index.current, index.compacted)
        };
        if revision <= compacted {
            return Err(Error::Compacted {
                requested: revision,
                compacted,
            });
        }
        if revision > current {
            return Err(Error::FutureRevision {
                requested: revision,
                current,
            });
        }
        // plan first so that a failed commit leaves the index untouched
        let dropped = self.shared.index.read().compaction_plan(revision);
        let txn = self.shared.db.begin_write().map_err(backend)?;
        {
            let mut log = txn.open_table(LOG).map_err(backend)?;
            for rev in &dropped {
                log.remove(*rev as u64).map_err(backend)?;
            }
            let mut meta = txn.open_table(META).map_err(backend)?;
            meta.insert(META_COMPACTED, revision).map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        self.shared.index.write().compact(revision);
        debug!(revision, dropped = dropped.len(), "compacted storage");
        Ok(())
    }
}

/// One watch: replays the log, then follows the broadcast.
struct Watcher {
    shared: Arc<Shared>,
    prefix: String,
    /// Every event up to this revision has been considered.
    last: Revision,
}

impl Watcher {
    async fn run(mut self, tx: mpsc::Sender<Result<WatchMessage>>) {
        if let Err(error) = self.follow(&tx).await {
            let _ = tx.send(Err(error)).await;
        }
    }

    async fn follow(&mut self, tx: &mpsc::Sender<Result<WatchMessage>>) -> Result<()> {
        let mut tick = tokio::time::interval(self.shared.progress_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        'resubscribe: loop {
            let mut live = self.shared.events.subscribe();
            if !self.catch_up(tx).await? {
                return Ok(());
            }
            loop {
                tokio::select! {
                    () = tx.closed() => return Ok(()),
                    received = live.recv() => match received {
                        Ok(event) => {
                            if !self.deliver(&event, tx).await {
                                return Ok(());
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => continue 'resubscribe,
                        Err(broadcast::error::RecvError::Closed) => return Err(Error::Closed),
                    },
                    _ = tick.tick() => {
                        let published = self.shared.broadcast_revision.load(Ordering::Acquire);
                        // everything up to `published` is already queued on `live`
                        loop {
                            match live.try_recv() {
                                Ok(event) => {
                                    if !self.deliver(&event, tx).await {
                                        return Ok(());
                                    }
                                }
                                Err(broadcast::error::TryRecvError::Lagged(_)) => continue 'resubscribe,
                                Err(_) => break,
                            }
                        }
                        self.last = self.last.max(published);
                        if tx.send(Ok(WatchMessage::Progress(self.last))).await.is_err() {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    /// Replays committed history after `last`; false when the receiver is gone.
    async fn catch_up(&mut self, tx: &mpsc::Sender<Result<WatchMessage>>) -> Result<bool> {
        const CHUNK: Revision = 1000;
        loop {
            let (current, compacted) = {
                let index = self.shared.index.read();
                (index.current, index.compacted)
            };
            if self.last < compacted {
                return Err(Error::Compacted {
                    requested: self.last,
                    compacted,
                });
            }
            if self.last >= current {
                return Ok(true);
            }
            let until = current.min(self.last + CHUNK);
            let shared = self.shared.clone();
            let (prefix, after) = (self.prefix.clone(), self.last);
            let events = tokio::task::spawn_blocking(move || shared.replay(&prefix, after, until))
                .await
                .map_err(backend)??;
            for event in events {
                if tx.send(Ok(WatchMessage::Event(event))).await.is_err() {
                    return Ok(false);
                }
            }
            self.last = until;
        }
    }

    async fn deliver(&mut self, event: &Event, tx: &mpsc::Sender<Result<WatchMessage>>) -> bool {
        let revision = event.revision();
        if revision <= self.last {
            return true;
        }
        self.last = revision;
        if !event.key().starts_with(&self.prefix) {
            return true;
        }
        tx.send(Ok(WatchMessage::Event(event.clone())))
            .await
            .is_ok()
    }
}
