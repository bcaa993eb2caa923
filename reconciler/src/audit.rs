//! The audit log: every sync attempt of every Application, append-only, one JSON record per
//! line, each carrying the SHA-256 of the previous record so that changing, removing or
//! reordering any byte breaks the chain from that record on (`kelson app verify-history`).
//!
//! A record's `hash` is SHA-256 over the previous record's hash, a newline, and the record
//! without its `hash` field serialized with sorted keys and no spaces.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The chain's starting hash.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An open audit log.
pub struct AuditLog {
    path: PathBuf,
    state: Mutex<(u64, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{path}:{line}: {reason}")]
    Broken {
        path: String,
        line: usize,
        reason: String,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn record_hash(previous: &str, record: &Map<String, Value>) -> String {
    let mut body = record.clone();
    body.remove("hash");
    let mut hasher = Sha256::new();
    hasher.update(previous.as_bytes());
    hasher.update(b"\n");
    hasher.update(Value::Object(body).to_string().as_bytes());
    hex::encode(hasher.finalize())
}

impl AuditLog {
    /// Opens the log at `path`, checking the chain it already holds.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, VerifyError> {
        let path = path.into();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let (count, last) = if path.exists() {
            verify(&path)?
        } else {
            (0, GENESIS.to_owned())
        };
        Ok(Self {
            path,
            state: Mutex::new((count, last)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record (a JSON object), adding `seq`, `prev` and `hash`; written and synced
    /// before this returns.
    pub fn append(&self, mut record: Map<String, Value>) -> std::io::Result<()> {
        let mut state = self.state.lock();
        let (count, previous) = &mut *state;
        record.insert("seq".into(), Value::from(*count + 1));
        record.insert("prev".into(), Value::from(previous.clone()));
        let hash = record_hash(previous, &record);
        record.insert("hash".into(), Value::from(hash.clone()));
        let mut line = Value::Object(record).to_string();
        line.push('\n');
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        file.write_all(line.as_bytes())?;
        file.sync_data()?;
        *count += 1;
        *previous = hash;
        Ok(())
    }
}

/// Reads every record of the log at `path` (unverified; see [`verify`]).
pub fn read(path: &Path) -> std::io::Result<Vec<Map<String, Value>>> {
    let file = std::fs::File::open(path)?;
    let mut records = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        if let Ok(Value::Object(record)) = serde_json::from_str(&line?) {
            records.push(record);
        }
    }
    Ok(records)
}

/// Checks the whole chain; the number of records and the last hash when it holds.
pub fn verify(path: &Path) -> Result<(u64, String), VerifyError> {
    let file = std::fs::File::open(path)?;
    let mut previous = GENESIS.to_owned();
    let mut count = 0u64;
    let broken = |line: usize, reason: String| VerifyError::Broken {
        path: path.display().to_string(),
        line,
        reason,
    };
    for (index, line) in std::io::BufReader::new(file).split(b'\n').enumerate() {
        let number = index + 1;
        let line = line?;
        let record: Map<String, Value> = match serde_json::from_slice(&line) {
            Ok(Value::Object(record)) => record,
            _ => return Err(broken(number, "not a JSON record".into())),
        };
        if record.get("seq").and_then(Value::as_u64) != Some(count + 1) {
            return Err(broken(number, format!("expected record {}", count + 1)));
        }
        if record.get("prev").and_then(Value::as_str) != Some(previous.as_str()) {
            return Err(broken(number, "does not follow the previous record".into()));
        }
        let hash = record_hash(&previous, &record);
        if record.get("hash").and_then(Value::as_str) != Some(hash.as_str()) {
            return Err(broken(
                number,
                "content does not match its hash (changed after it was written)".into(),
            ));
        }
        previous = hash;
        count += 1;
    }
    Ok((count, previous))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(n: u64) -> Map<String, Value> {
        json!({"app": "default/web", "revision": format!("{n:040}"), "result": "Succeeded"})
            .as_object()
            .unwrap()
            .clone()
    }

    #[test]
    fn the_chain_verifies_and_any_changed_byte_breaks_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit/audit.log");
        let log = AuditLog::open(&path).unwrap();
        for n in 0..3 {
            log.append(record(n)).unwrap();
        }
        drop(log);
        // reopening continues the chain
        let log = AuditLog::open(&path).unwrap();
        log.append(record(3)).unwrap();
        assert_eq!(verify(&path).unwrap().0, 4);
        assert_eq!(read(&path).unwrap().len(), 4);

        let original = std::fs::read(&path).unwrap();
        let at = original.iter().position(|&b| b == b'S').unwrap();
        for (offset, replacement) in [(at, b's'), (original.len() / 2, b'x')] {
            let mut changed = original.clone();
            changed[offset] = replacement;
            std::fs::write(&path, &changed).unwrap();
            assert!(
                matches!(verify(&path), Err(VerifyError::Broken { .. })),
                "byte {offset}"
            );
        }
        // a removed record breaks it too
        let lines: Vec<&[u8]> = original.split(|&b| b == b'\n').collect();
        let without_second = [lines[0], lines[2], lines[3], lines[4]].join(&b'\n');
        std::fs::write(&path, without_second).unwrap();
        let err = verify(&path).unwrap_err().to_string();
        assert!(err.contains(":2: expected record 2"), "{err}");
        assert!(AuditLog::open(&path).is_err());
    }
}
