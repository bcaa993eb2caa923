//! Kelson's key-value storage: the one place cluster state lives.
//!
//! The [`Storage`] trait has etcd v3 semantics, because that is what the Kubernetes API is built
//! on: one global, monotonic [`Revision`] counter (it becomes every object's `resourceVersion`),
//! compare-and-swap updates and deletes on a key's previous revision, lists of a key prefix at a
//! chosen revision with limit/continue, watches that replay history after a revision and then
//! stream live events, and compaction that answers [`Error::Compacted`] for older revisions.
//!
//! Two backends implement it:
//! - [`Embedded`] (the default): a log-structured table in a `redb` database, durable on commit,
//!   with group commit, plus an in-memory revision index (like etcd's) for reads at any
//!   retained revision. Start reading at [`embedded`].
//! - [`Etcd`]: a real etcd v3 cluster through `etcd-client`, with Kubernetes' `/registry/...`
//!   key layout; several API servers can share one etcd.
//!
//! Every backend must pass the one conformance suite in [`conformance`]
//! (`storage_conformance_suite!`).

pub mod conformance;
pub mod embedded;
pub mod etcd;
#[doc(hidden)]
pub mod test_support;

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

pub use embedded::{Embedded, EmbeddedOptions};
pub use etcd::{Etcd, EtcdOptions};

/// A position in the global, monotonic history of writes. `0` means "no revision".
pub type Revision = i64;

/// The result type of every storage operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A key with its value and the revisions that created and last modified it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The full key, for example `/registry/pods/default/web-0`.
    pub key: String,
    /// The stored bytes.
    pub value: Bytes,
    /// The revision at which this key was created (in its current life).
    pub create_revision: Revision,
    /// The revision of the write that produced this value.
    pub mod_revision: Revision,
}

/// One change to one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The key did not exist and now has `kv`.
    Created(KeyValue),
    /// The key had `prev` and now has `kv`.
    Updated {
        /// The new state.
        kv: KeyValue,
        /// The state before this write.
        prev: KeyValue,
    },
    /// The key had `prev` and was deleted at `revision`.
    Deleted {
        /// The last state before deletion.
        prev: KeyValue,
        /// The revision of the delete.
        revision: Revision,
    },
}

impl Event {
    /// The revision of the write this event describes.
    #[must_use]
    pub fn revision(&self) -> Revision {
        match self {
            Event::Created(kv) | Event::Updated { kv, .. } => kv.mod_revision,
            Event::Deleted { revision, .. } => *revision,
        }
    }

    /// The key this event is about.
    #[must_use]
    pub fn key(&self) -> &str {
        match self {
            Event::Created(kv) | Event::Updated { kv, .. } => &kv.key,
            Event::Deleted { prev, .. } => &prev.key,
        }
    }
}

/// What a watch stream delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchMessage {
    /// A change to a key under the watched prefix.
    Event(Event),
    /// Every event up to and including this revision has been delivered (used for bookmarks).
    Progress(Revision),
}

/// A stream of watch messages; it ends with an error (for example [`Error::Compacted`]) or when
/// the backend shuts down.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchMessage>> + Send>>;

/// Parameters of a prefix list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListRequest {
    /// Only keys starting with this prefix are listed.
    pub prefix: String,
    /// Only keys greater than or equal to this key are listed (used for `continue`).
    pub start: Option<String>,
    /// Read the state as of this revision; `None` reads the latest state.
    pub revision: Option<Revision>,
    /// At most this many keys; `0` means no limit.
    pub limit: usize,
}

/// The result of a prefix list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListResponse {
    /// Matching keys in ascending key order.
    pub kvs: Vec<KeyValue>,
    /// The revision of the snapshot that was read.
    pub revision: Revision,
    /// More keys matched than `limit` allowed.
    pub more: bool,
}

/// Storage errors. The API server maps each to a Kubernetes `Status`.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// A create found the key already present.
    #[error("key {key} already exists")]
    AlreadyExists {
        /// The key.
        key: String,
    },
    /// The key does not exist.
    #[error("key {key} not found")]
    NotFound {
        /// The key.
        key: String,
    },
    /// A compare-and-swap precondition failed.
    #[error("key {key} was modified: expected revision {expected}, found {actual}")]
    Conflict {
        /// The key.
        key: String,
        /// The revision the caller expected.
        expected: Revision,
        /// The revision found.
        actual: Revision,
    },
    /// The requested revision is older than the oldest retained one.
    #[error("revision {requested} has been compacted (compacted revision {compacted})")]
    Compacted {
        /// The revision asked for.
        requested: Revision,
        /// The compaction point.
        compacted: Revision,
    },
    /// The requested revision has not happened yet.
    #[error("revision {requested} is newer than the current revision {current}")]
    FutureRevision {
        /// The revision asked for.
        requested: Revision,
        /// The current revision.
        current: Revision,
    },
    /// The backend failed (I/O, database or network error).
    #[error("storage backend failed: {0}")]
    Backend(String),
    /// The storage is shutting down.
    #[error("storage is shut down")]
    Closed,
}

/// A key-value store with etcd v3 semantics. See the crate documentation.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Creates `key`; fails with [`Error::AlreadyExists`] when it exists.
    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue>;

    /// Reads the latest value of `key`, with the current revision of the store.
    async fn get(&self, key: &str) -> Result<(Option<KeyValue>, Revision)>;

    /// Lists keys under a prefix, at the latest or a given revision.
    async fn list(&self, request: ListRequest) -> Result<ListResponse>;

    /// Replaces the value of `key` if its current `mod_revision` equals `expected`.
    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<KeyValue>;

    /// Deletes `key` (if `expected` is set, only when its `mod_revision` equals it); returns the
    /// deleted state and the revision of the delete.
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(KeyValue, Revision)>;

    /// Watches keys under `prefix`, delivering every event with a revision greater than `after`
    /// in revision order, then live events.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream>;

    /// Forgets superseded history at or before `revision`.
    async fn compact(&self, revision: Revision) -> Result<()>;

    /// The revision of the latest write.
    async fn current_revision(&self) -> Result<Revision>;
}

/// The smallest key greater than every key starting with `prefix` (etcd's range end).
#[must_use]
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
