//! Positions of a pipeline without an index: where each tailed file was read up to, kept in
//! `<data_dir>/positions.json` once every sink has delivered the lines before it, as Fluent
//! Bit's tail database keeps them. A restart (or a reload) resumes there: at least once — a
//! crash between a delivery and the next save sends those lines again — where a pipeline with
//! an index keeps its positions inside the index's commits, exactly once.

use std::path::PathBuf;
use std::sync::Arc;

use crate::record::{Batch, Checkpoint};

/// The saved positions.
pub struct Positions {
    path: PathBuf,
    state: parking_lot::Mutex<Checkpoint>,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for Positions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Positions")
            .field("path", &self.path)
            .finish()
    }
}

/// What a delivered batch moves.
struct Moves {
    reset: Vec<Arc<str>>,
    forgotten: Vec<Arc<str>>,
    offsets: Vec<(Arc<str>, u64)>,
}

impl Positions {
    /// Opens the positions at `path` (none yet: empty); call within the runtime.
    #[must_use]
    pub fn open(path: PathBuf) -> (Arc<Self>, Checkpoint) {
        let saved: Checkpoint = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        let positions = Arc::new(Self {
            path,
            state: parking_lot::Mutex::new(saved.clone()),
            runtime: tokio::runtime::Handle::current(),
        });
        (positions, saved)
    }

    /// Gives `batch` an acknowledgement (unless it has one) and saves what it moves once every
    /// sink has delivered it.
    pub fn track(self: &Arc<Self>, batch: &mut Batch) {
        if batch.ack.is_some() {
            return;
        }
        let mut offsets: Vec<(Arc<str>, u64)> = Vec::new();
        for position in batch.records.iter().filter_map(|r| r.position.as_ref()) {
            match offsets.iter_mut().find(|(key, _)| *key == position.key) {
                Some((_, offset)) => *offset = (*offset).max(position.offset),
                None => offsets.push((position.key.clone(), position.offset)),
            }
        }
        if offsets.is_empty() && batch.reset.is_empty() && batch.forgotten.is_empty() {
            return;
        }
        let moves = Moves {
            reset: batch.reset.clone(),
            forgotten: batch.forgotten.clone(),
            offsets,
        };
        let (ack, delivered) = crate::record::Ack::new();
        batch.ack = Some(ack);
        let positions = self.clone();
        self.runtime.spawn(async move {
            if delivered.await == Ok(true) {
                positions.apply(&moves);
            }
        });
    }

    fn apply(&self, moves: &Moves) {
        // the lock is held through the write, so an older state never replaces a newer one
        let mut state = self.state.lock();
        {
            for key in &moves.reset {
                state.insert(key.to_string(), 0);
            }
            for (key, offset) in &moves.offsets {
                let reset = moves.reset.contains(key);
                let entry = state.entry(key.to_string()).or_insert(0);
                *entry = if reset {
                    *offset
                } else {
                    (*entry).max(*offset)
                };
            }
            for key in &moves.forgotten {
                state.remove(&**key);
            }
        }
        let snapshot = serde_json::to_vec(&*state).unwrap_or_default();
        // written whole and renamed, so a crash leaves the old file or the new one
        let temporary = self.path.with_extension("json.tmp");
        let saved = std::fs::write(&temporary, &snapshot)
            .and_then(|()| std::fs::rename(&temporary, &self.path));
        if let Err(error) = saved {
            tracing::warn!(path = %self.path.display(), %error, "failed to save positions");
        }
    }
}
