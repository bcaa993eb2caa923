//! The `file` sink: records as JSON lines appended to a file (the stdout sink's format),
//! synced to disk before a batch counts as delivered, rotated by size (`path` → `path.1` → …,
//! `max_files` kept). A failed write is counted and retried with backoff while the batch waits,
//! so the bounded channel in front holds the sources back instead of losing records.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::ComponentMetrics;
use crate::record::Batch;

/// Configuration of the `file` sink.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// Tags to take, fluentd-style (default `**`).
    #[serde(rename = "match", default = "crate::sinks::match_all")]
    pub pattern: String,
    /// The file.
    pub path: PathBuf,
    /// Rotate when the file grows past this many bytes (0: never).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Files kept, the live one included.
    #[serde(default = "default_max_files")]
    pub max_files: usize,
    /// A buffer in front of the sink (see [`crate::buffer`]).
    #[serde(default)]
    pub buffer: Option<crate::buffer::BufferConfig>,
}

const fn default_max_bytes() -> u64 {
    100 << 20
}
const fn default_max_files() -> usize {
    5
}

fn rotate(path: &Path, keep: usize) -> std::io::Result<()> {
    let numbered = |n: usize| PathBuf::from(format!("{}.{n}", path.display()));
    let keep = keep.max(1);
    let _ = std::fs::remove_file(numbered(keep - 1));
    for n in (1..keep.saturating_sub(1)).rev() {
        if numbered(n).exists() {
            std::fs::rename(numbered(n), numbered(n + 1))?;
        }
    }
    if keep > 1 {
        std::fs::rename(path, numbered(1))?;
    } else {
        std::fs::remove_file(path)?;
    }
    Ok(())
}

/// Appends `lines` to the file, rotating first when it is full; synced before returning.
fn append(config: &FileSinkConfig, lines: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = config.path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if config.max_bytes > 0
        && std::fs::metadata(&config.path)
            .is_ok_and(|m| m.len() > 0 && m.len() + lines.len() as u64 > config.max_bytes)
    {
        rotate(&config.path, config.max_files)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&config.path)?;
    file.write_all(lines)?;
    file.sync_data()
}

/// Runs the sink until its input ends.
pub(crate) async fn run(
    config: FileSinkConfig,
    mut input: mpsc::Receiver<Batch>,
    metrics: ComponentMetrics,
    shutdown: CancellationToken,
) {
    let config = std::sync::Arc::new(config);
    while let Some(batch) = input.recv().await {
        metrics.received(batch.records.len() as u64, 0);
        if batch.records.is_empty() {
            continue;
        }
        let mut lines = Vec::new();
        for record in &batch.records {
            let _ = serde_json::to_writer(&mut lines, &super::record_json(record));
            lines.push(b'\n');
        }
        let lines = std::sync::Arc::new(lines);
        let mut failures = 0u32;
        loop {
            let (target, content) = (config.clone(), lines.clone());
            let written = tokio::task::spawn_blocking(move || append(&target, &content)).await;
            match written {
                Ok(Ok(())) => {
                    metrics.sent(batch.records.len() as u64);
                    break;
                }
                Ok(Err(error)) => {
                    failures += 1;
                    metrics.error("write_failed");
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::error!(path = %config.path.display(), %error, "file sink write failed; retrying");
                    }
                }
                Err(_) => metrics.error("write_failed"),
            }
            if shutdown.is_cancelled() {
                // the batch is not delivered: its senders hear so
                if let Some(ack) = &batch.ack {
                    ack.fail();
                }
                metrics.discarded("shutdown", batch.records.len() as u64);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100 << failures.min(6))).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let config = FileSinkConfig {
            pattern: "**".into(),
            path: dir.path().join("out/records.ndjson"),
            max_bytes: 10,
            max_files: 3,
            buffer: None,
        };
        for n in 0..5 {
            append(&config, format!("line {n}\n").as_bytes()).unwrap();
        }
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(&config.path), "line 4\n");
        assert_eq!(read(&dir.path().join("out/records.ndjson.1")), "line 3\n");
        assert_eq!(read(&dir.path().join("out/records.ndjson.2")), "line 2\n");
        assert!(!dir.path().join("out/records.ndjson.3").exists());
    }
}
