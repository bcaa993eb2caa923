//! The record every component passes on: one log line (or one forwarded event) with its
//! Kubernetes metadata, and where in its source it came from.

use std::collections::BTreeMap;
use std::sync::Arc;

/// One log record.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogRecord {
    /// Routing tag, fluentd-style (`kube.<namespace>.<pod>.<container>` for pod logs).
    pub tag: Arc<str>,
    /// When the line was written, in nanoseconds since the Unix epoch.
    pub timestamp: i64,
    /// The line itself, without its trailing newline.
    pub message: String,
    /// `stdout` or `stderr` for container logs, empty otherwise.
    pub stream: &'static str,
    /// The pod's namespace, empty for records not from a pod.
    pub namespace: Arc<str>,
    /// The pod's name.
    pub pod: Arc<str>,
    /// The container's name.
    pub container: Arc<str>,
    /// The node the line was collected on.
    pub node: Arc<str>,
    /// Severity found in the line (`error`, `warn`, `info`, `debug`, `trace`, `fatal`) or empty.
    pub level: &'static str,
    /// The pod's labels.
    pub labels: Arc<BTreeMap<String, String>>,
    /// Other attributes the source gave (syslog's host and ident, a forwarded record's keys).
    pub fields: Arc<BTreeMap<String, String>>,
    /// Where the record ends in its source, for resuming and deduplication.
    pub position: Option<Position>,
}

/// A point in a source: a file identity and the byte offset just after the record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    /// The source's stable identity for the file (`<source>:<device>:<inode>`).
    pub key: Arc<str>,
    /// Byte offset just after the record.
    pub offset: u64,
    /// Read again after a [`Rewind`]: sinks other than the index saw it already.
    pub replay: bool,
}

/// Offsets per source key that a sink has made durable.
pub type Checkpoint = BTreeMap<String, u64>;

/// What sources send downstream: records plus the positions they complete.
#[derive(Debug, Default)]
pub struct Batch {
    /// The records, in source order.
    pub records: Vec<LogRecord>,
    /// Files the source stopped following (deleted and fully read): their positions are
    /// forgotten once this batch is durable.
    pub forgotten: Vec<Arc<str>>,
    /// Files that were truncated and are read again from the start: their positions start
    /// over (applied before the records).
    pub reset: Vec<Arc<str>>,
    /// Raw bytes read for these records.
    pub bytes: u64,
    /// The [`Rewind`] generation a rewindable source read these records under (`None`: the
    /// source cannot read them again, so the index holds them until they are committed).
    pub generation: Option<u64>,
    /// Told once every sink that took these records made them durable (or failed).
    pub ack: Option<Ack>,
}

/// An acknowledgement shared by the copies of a batch: when the last copy is released it
/// reports `true`, unless a sink marked it failed.
#[derive(Clone, Debug)]
pub struct Ack(Arc<AckState>);

#[derive(Debug)]
struct AckState {
    failed: std::sync::atomic::AtomicBool,
    done: parking_lot::Mutex<Option<tokio::sync::oneshot::Sender<bool>>>,
}

impl Ack {
    /// A new acknowledgement and the receiver of its outcome.
    #[must_use]
    pub fn new() -> (Self, tokio::sync::oneshot::Receiver<bool>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let state = AckState {
            failed: std::sync::atomic::AtomicBool::new(false),
            done: parking_lot::Mutex::new(Some(tx)),
        };
        (Self(Arc::new(state)), rx)
    }

    /// Marks the records as not delivered: the outcome will be `false`.
    pub fn fail(&self) {
        self.0
            .failed
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for AckState {
    fn drop(&mut self) {
        if let Some(done) = self.done.get_mut().take() {
            let _ = done.send(!self.failed.load(std::sync::atomic::Ordering::SeqCst));
        }
    }
}

/// How the index asks sources that can read their records again (files) to do so after a
/// failed commit, instead of holding those records in memory until a commit succeeds.
///
/// A failed commit rolls back and bumps the generation. A source stamps each batch with the
/// generation it read under; the index drops batches of an older generation, and the source,
/// once it notices the new one, goes back to the committed offsets. A source also keeps a
/// file it let go of open until the index has committed letting go of it, so a rewind can
/// still read a deleted file's last lines.
#[derive(Debug, Default)]
pub struct Rewind {
    generation: std::sync::atomic::AtomicU64,
    committed: parking_lot::Mutex<Checkpoint>,
    released: parking_lot::Mutex<std::collections::HashSet<String>>,
}

impl Rewind {
    /// Starts at the offsets the index committed last.
    #[must_use]
    pub fn new(committed: Checkpoint) -> Self {
        Self {
            committed: parking_lot::Mutex::new(committed),
            ..Self::default()
        }
    }

    /// The current generation.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The offsets committed last, where a source goes back to.
    pub fn committed(&self) -> Checkpoint {
        self.committed.lock().clone()
    }

    /// A commit succeeded with `checkpoint`, letting go of the files `forgotten`.
    pub fn commit(&self, checkpoint: &Checkpoint, forgotten: impl IntoIterator<Item = String>) {
        self.committed.lock().clone_from(checkpoint);
        self.released.lock().extend(forgotten);
    }

    /// A commit failed: sources read again from the committed offsets.
    pub fn rewind(&self) -> u64 {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1
    }

    /// The keys starting with `prefix` whose letting go is committed (each handed out once).
    pub fn take_released(&self, prefix: &str) -> Vec<String> {
        let mut released = self.released.lock();
        let mine: Vec<String> = released
            .iter()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        for key in &mine {
            released.remove(key);
        }
        mine
    }
}

/// Now, in nanoseconds since the epoch.
#[must_use]
pub fn now_ns() -> i64 {
    i64::try_from(jiff::Timestamp::now().as_nanosecond()).unwrap_or(i64::MAX)
}

/// The severity found in a line: `level=`/`"level":` fields first, then a leading keyword
/// or klog's one-letter prefix.
#[must_use]
pub fn detect_level(message: &str) -> &'static str {
    let head = &message.as_bytes()[..message.len().min(256)];
    // one pass: a `level`, `lvl` or `severity` key followed by `=` or `:` (quotes allowed)
    let mut i = 0;
    while i < head.len() {
        let lower = head[i] | 0x20;
        if lower == b'l' || lower == b's' {
            for key in [&b"level"[..], b"lvl", b"severity"] {
                let end = i + key.len();
                if end <= head.len()
                    && head[i..end].eq_ignore_ascii_case(key)
                    && (i == 0 || !head[i - 1].is_ascii_alphanumeric())
                {
                    let rest = &head[end..];
                    let skip = rest
                        .iter()
                        .position(|b| !matches!(b, b'"' | b'\'' | b' '))
                        .unwrap_or(rest.len());
                    if matches!(rest.get(skip), Some(b'=' | b':')) {
                        let value = &rest[skip + 1..];
                        let start = value
                            .iter()
                            .position(|b| !matches!(b, b'"' | b'\'' | b' '))
                            .unwrap_or(value.len());
                        let level = normalize(&value[start..]);
                        if !level.is_empty() {
                            return level;
                        }
                    }
                }
            }
        }
        i += 1;
    }
    // klog: "E1123 05:38:27.123456 ..." and friends
    if head.len() > 5
        && matches!(head[0], b'E' | b'W' | b'I' | b'F')
        && head[1..5].iter().all(u8::is_ascii_digit)
    {
        return match head[0] {
            b'E' => "error",
            b'W' => "warn",
            b'F' => "fatal",
            _ => "info",
        };
    }
    for word in head
        .split(|b| !b.is_ascii_alphabetic())
        .filter(|w| !w.is_empty())
        .take(4)
    {
        // only shouted keywords: "an error occurred" is not an error line
        if word.iter().all(u8::is_ascii_uppercase) {
            let level = normalize(word);
            if !level.is_empty() {
                return level;
            }
        }
    }
    ""
}

/// The level a severity word names (`WARNING` → `warn`), or empty.
#[must_use]
pub fn normalize_level(word: &str) -> &'static str {
    normalize(word.trim().as_bytes())
}

fn normalize(word: &[u8]) -> &'static str {
    let end = word
        .iter()
        .position(|b| !b.is_ascii_alphabetic())
        .unwrap_or(word.len());
    let word = &word[..end];
    let is = |name: &str| word.eq_ignore_ascii_case(name.as_bytes());
    if is("error") || is("err") || is("eror") {
        "error"
    } else if is("warn") || is("warning") || is("wrn") {
        "warn"
    } else if is("info") || is("inf") || is("notice") {
        "info"
    } else if is("debug") || is("dbg") {
        "debug"
    } else if is("trace") || is("trc") {
        "trace"
    } else if is("fatal") || is("panic") || is("critical") || is("crit") || is("emerg") {
        "fatal"
    } else {
        ""
    }
}

/// A container log record with every field set (a test fixture).
#[cfg(test)]
#[must_use]
pub(crate) fn sample() -> LogRecord {
    LogRecord {
        tag: "kube.shop.web.nginx".into(),
        timestamp: 1_795_000_000_123_456_789,
        message: "GET / 200".into(),
        stream: "stdout",
        level: "info",
        namespace: "shop".into(),
        pod: "web".into(),
        container: "nginx".into(),
        node: "n1".into(),
        labels: Arc::new([("app".to_owned(), "web".to_owned())].into()),
        fields: Arc::new([("status".to_owned(), "200".to_owned())].into()),
        position: Some(Position {
            key: "pods:1:2".into(),
            offset: 42,
            replay: false,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::detect_level;

    #[test]
    fn levels_from_fields_keywords_and_klog() {
        assert_eq!(detect_level("ts=1 level=error msg=boom"), "error");
        assert_eq!(detect_level(r#"{"level":"warning","msg":"x"}"#), "warn");
        assert_eq!(detect_level("ERROR something broke"), "error");
        assert_eq!(
            detect_level("2026-11-23 05:00:00 WARN disk almost full"),
            "warn"
        );
        assert_eq!(detect_level("[INFO] started"), "info");
        assert_eq!(
            detect_level("E1123 05:38:27.123456       1 main.go:10] failed"),
            "error"
        );
        assert_eq!(
            detect_level("I1123 05:38:27.123456       1 main.go:10] ok"),
            "info"
        );
        assert_eq!(detect_level("hello world"), "");
        assert_eq!(detect_level("the level of water rose"), "");
        assert_eq!(detect_level("sublevel=error"), "");
        assert_eq!(detect_level("msg=x severity: WARNING"), "warn");
        assert_eq!(detect_level("level = debug"), "debug");
        assert_eq!(detect_level("an error occurred"), "");
        assert_eq!(detect_level(""), "");
    }
}
