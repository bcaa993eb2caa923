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
}

/// The severity found in a line: `level=`/`"level":` fields first, then a leading keyword
/// or klog's one-letter prefix.
#[must_use]
pub fn detect_level(message: &str) -> &'static str {
    let head = &message.as_bytes()[..message.len().min(256)];
    for key in [&b"level"[..], b"lvl", b"severity"] {
        if let Some(found) = find(head, key) {
            let rest = &head[found + key.len()..];
            let rest = rest
                .iter()
                .position(|b| !matches!(b, b'"' | b'\'' | b':' | b'=' | b' '))
                .map_or(&[][..], |start| &rest[start..]);
            let level = normalize(rest);
            if !level.is_empty() {
                return level;
            }
        }
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

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
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
        assert_eq!(detect_level("an error occurred"), "");
        assert_eq!(detect_level(""), "");
    }
}
