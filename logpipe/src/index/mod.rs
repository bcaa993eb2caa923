//! The log index: tantivy indexes, one per time partition (a partition takes what arrives
//! during `partition_secs`), each knowing the time span of its lines so queries skip the
//! others, and retention drops whole partitions by age and by total size. Every commit
//! carries, in tantivy's commit payload, the source offsets its documents complete: the index
//! is its own position database, so a crash can neither lose nor repeat a line.
//!
//! Start with [`LogIndex::open`]; [`writer`] is the sink that fills it, [`query`] answers
//! searches and histograms.

pub mod query;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, JsonObjectOptions, STORED, STRING, Schema, TEXT,
    TextFieldIndexing,
};
use tantivy::{Index, IndexReader, ReloadPolicy};

use crate::record::{Checkpoint, LogRecord};

/// What went wrong with the index.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// tantivy failed.
    #[error("index {path}: {source}")]
    Tantivy {
        /// The partition.
        path: PathBuf,
        /// What failed.
        #[source]
        source: tantivy::TantivyError,
    },
    /// The file system failed.
    #[error("index {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

/// The fields of every partition.
#[derive(Clone, Copy, Debug)]
pub struct Fields {
    /// Nanoseconds since the epoch (indexed for ranges, fast for sorting).
    pub ts: Field,
    /// The line, tokenized for full-text search.
    pub message: Field,
    /// The routing tag.
    pub tag: Field,
    /// Pod namespace.
    pub namespace: Field,
    /// Pod name.
    pub pod: Field,
    /// Container name.
    pub container: Field,
    /// Node name.
    pub node: Field,
    /// stdout or stderr.
    pub stream: Field,
    /// Severity found in the line.
    pub level: Field,
    /// Pod labels (JSON, exact values).
    pub labels: Field,
    /// Other attributes from the source (JSON, exact values).
    pub fields: Field,
}

/// The schema of a partition.
#[must_use]
pub fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let exact = STRING | STORED;
    let fields = Fields {
        ts: builder.add_i64_field("ts", INDEXED | FAST | STORED),
        message: builder.add_text_field("message", TEXT | STORED),
        tag: builder.add_text_field("tag", STRING | STORED),
        namespace: builder.add_text_field("namespace", exact.clone()),
        pod: builder.add_text_field("pod", exact.clone()),
        container: builder.add_text_field("container", exact.clone()),
        node: builder.add_text_field("node", exact.clone()),
        stream: builder.add_text_field("stream", exact.clone()),
        level: builder.add_text_field("level", exact),
        labels: builder.add_json_field("labels", exact_json()),
        fields: builder.add_json_field("fields", exact_json()),
    };
    (builder.build(), fields)
}

fn exact_json() -> JsonObjectOptions {
    JsonObjectOptions::default()
        .set_stored()
        .set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("raw")
                .set_index_option(IndexRecordOption::Basic),
        )
}

/// The time span and checkpoint a partition's last commit recorded.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Payload {
    /// Format version (1).
    pub version: u32,
    /// Source offsets every committed document up to here completes.
    pub checkpoint: Checkpoint,
    /// Oldest line timestamp (ns), `i64::MAX` when empty.
    pub min_ts: i64,
    /// Newest line timestamp (ns), `i64::MIN` when empty.
    pub max_ts: i64,
}

/// One time partition.
pub struct Partition {
    /// Directory name, ordered by creation.
    pub id: String,
    /// Its directory.
    pub dir: PathBuf,
    /// The tantivy index.
    pub index: Index,
    /// Its reader, reloaded after each commit.
    pub reader: IndexReader,
    /// Span of its committed lines.
    span: RwLock<(i64, i64)>,
}

impl Partition {
    /// Oldest and newest committed line (ns); min > max when empty.
    #[must_use]
    pub fn span(&self) -> (i64, i64) {
        *self.span.read()
    }

    /// Whether lines in `[start, end)` may be in this partition.
    #[must_use]
    pub fn overlaps(&self, start: i64, end: i64) -> bool {
        let (min, max) = self.span();
        min <= max && max >= start && min < end
    }
}

/// Every partition of one index directory.
pub struct LogIndex {
    root: PathBuf,
    fields: Fields,
    schema: Schema,
    partitions: RwLock<Vec<Arc<Partition>>>,
    /// Records as they are added, for live tails.
    live: crate::live::Feed,
    /// Counts commits, for live tails that read history first.
    commits: tokio::sync::watch::Sender<u64>,
    /// Whether records wait for a commit.
    uncommitted: std::sync::atomic::AtomicBool,
}

impl LogIndex {
    /// Opens (or creates) the index under `root`; returns it with the checkpoint of its
    /// newest commit.
    ///
    /// # Errors
    /// When the directory cannot be created or a partition does not open.
    pub fn open(root: &Path) -> Result<(Arc<Self>, Checkpoint), Error> {
        std::fs::create_dir_all(root).map_err(|source| Error::Io {
            path: root.to_path_buf(),
            source,
        })?;
        let (schema, fields) = schema();
        let mut ids: Vec<String> = std::fs::read_dir(root)
            .map_err(|source| Error::Io {
                path: root.to_path_buf(),
                source,
            })?
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| name.starts_with("p-"))
            .collect();
        ids.sort();
        let mut partitions = Vec::new();
        let mut checkpoint = Checkpoint::new();
        for id in ids {
            let dir = root.join(&id);
            if !dir.join("meta.json").exists() {
                // created but never committed: nothing in it
                let _ = std::fs::remove_dir_all(&dir);
                continue;
            }
            let (partition, payload) = open_partition(&id, &dir)?;
            if partition.index.schema() != schema {
                // written by another version: left on disk, not searched or written
                tracing::warn!(partition = %id, "index partition has another schema; skipping it");
                continue;
            }
            if let Some(payload) = payload {
                checkpoint = payload.checkpoint;
            }
            partitions.push(Arc::new(partition));
        }
        let index = Arc::new(Self {
            root: root.to_path_buf(),
            fields,
            schema,
            partitions: RwLock::new(partitions),
            live: tokio::sync::broadcast::Sender::new(4096),
            commits: tokio::sync::watch::Sender::new(0),
            uncommitted: std::sync::atomic::AtomicBool::new(false),
        });
        Ok((index, checkpoint))
    }

    /// Whether any live tail listens.
    pub fn has_live_tails(&self) -> bool {
        self.live.receiver_count() > 0
    }

    /// Records added from now on (see [`crate::live`]).
    #[must_use]
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<LogRecord>> {
        self.live.subscribe()
    }

    /// Commits from now on. The index sink holds records for live tails only while one
    /// listens, so a tail that shows history first reads it once the commits that follow its
    /// subscription have made everything added before it searchable.
    #[must_use]
    pub fn commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.commits.subscribe()
    }

    /// Counts a commit.
    pub(crate) fn committed(&self) {
        self.uncommitted
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.commits.send_modify(|n| *n += 1);
    }

    /// Whether records wait for a commit.
    pub fn uncommitted(&self) -> bool {
        self.uncommitted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Records are about to be added.
    pub(crate) fn adding(&self) {
        self.uncommitted
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Hands committed records to live tails, when there are any.
    pub(crate) fn publish(&self, records: &[LogRecord]) {
        if self.live.receiver_count() == 0 {
            return;
        }
        for record in records {
            let _ = self.live.send(Arc::new(record.clone()));
        }
    }

    /// The schema's fields.
    #[must_use]
    pub fn fields(&self) -> Fields {
        self.fields
    }

    /// The partitions, oldest first.
    #[must_use]
    pub fn partitions(&self) -> Vec<Arc<Partition>> {
        self.partitions.read().clone()
    }

    /// Creates a new (newest) partition.
    ///
    /// # Errors
    /// When its directory or index cannot be created.
    pub fn create_partition(&self) -> Result<Arc<Partition>, Error> {
        let millis = jiff::Timestamp::now().as_millisecond();
        let mut id = format!("p-{millis:015}");
        let mut n = 0;
        while self.root.join(&id).exists() {
            n += 1;
            id = format!("p-{millis:015}-{n}");
        }
        let dir = self.root.join(&id);
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
        let tantivy = |source| Error::Tantivy {
            path: dir.clone(),
            source,
        };
        let index = Index::builder()
            .schema(self.schema.clone())
            .create_in_dir(&dir)
            .map_err(tantivy)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(tantivy)?;
        let partition = Arc::new(Partition {
            id,
            dir,
            index,
            reader,
            span: RwLock::new((i64::MAX, i64::MIN)),
        });
        self.partitions.write().push(partition.clone());
        Ok(partition)
    }

    /// Removes partition `id` and its files.
    pub fn drop_partition(&self, id: &str) {
        let removed = {
            let mut partitions = self.partitions.write();
            let position = partitions.iter().position(|p| p.id == id);
            position.map(|i| partitions.remove(i))
        };
        if let Some(partition) = removed {
            tracing::info!(partition = %partition.id, "dropping index partition");
            if let Err(error) = std::fs::remove_dir_all(&partition.dir) {
                tracing::warn!(dir = %partition.dir.display(), %error, "failed to remove an index partition");
            }
        }
    }

    /// Bytes under the index directory.
    #[must_use]
    pub fn size_bytes(&self) -> u64 {
        dir_size(&self.root)
    }

    /// Documents in every partition.
    #[must_use]
    pub fn documents(&self) -> u64 {
        self.partitions()
            .iter()
            .map(|p| p.reader.searcher().num_docs())
            .sum()
    }
}

fn open_partition(id: &str, dir: &Path) -> Result<(Partition, Option<Payload>), Error> {
    let tantivy = |source| Error::Tantivy {
        path: dir.to_path_buf(),
        source,
    };
    let index = Index::open_in_dir(dir).map_err(tantivy)?;
    let payload: Option<Payload> = index
        .load_metas()
        .map_err(tantivy)?
        .payload
        .and_then(|text| serde_json::from_str(&text).ok());
    let reader = index
        .reader_builder()
        .reload_policy(ReloadPolicy::Manual)
        .try_into()
        .map_err(tantivy)?;
    let span = payload
        .as_ref()
        .map_or((i64::MAX, i64::MIN), |p| (p.min_ts, p.max_ts));
    Ok((
        Partition {
            id: id.to_owned(),
            dir: dir.to_path_buf(),
            index,
            reader,
            span: RwLock::new(span),
        },
        payload,
    ))
}

pub(crate) fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => dir_size(&entry.path()),
            Ok(_) => entry.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}
