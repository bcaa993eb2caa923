//! Container logs as `kubectl logs` reads them, from the CRI log files containerd writes
//! (`<RFC3339Nano> <stdout|stderr> <P|F> <message>`): partial lines are joined, and the
//! options of `pods/log` apply — `timestamps`, `sinceSeconds`/`sinceTime`, `tailLines`,
//! `limitBytes` — with `follow` streaming new lines until the container stops.

use std::collections::VecDeque;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use jiff::Timestamp;
use tokio::io::{AsyncBufReadExt, AsyncSeekExt, BufReader};
use tokio::sync::mpsc;

/// One line of a CRI log file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CriLine<'a> {
    /// When the runtime read it.
    pub time: Timestamp,
    /// The timestamp as written.
    pub time_text: &'a str,
    /// `stdout` or `stderr`.
    pub stream: &'a str,
    /// Whether the line continues in the next record (`P`).
    pub partial: bool,
    /// The text, without the newline.
    pub message: &'a str,
}

/// Parses one record; `None` for malformed lines (which are skipped, as the kubelet does).
#[must_use]
pub fn parse_line(line: &str) -> Option<CriLine<'_>> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let mut parts = line.splitn(4, ' ');
    let time_text = parts.next()?;
    let stream = parts.next()?;
    let tag = parts.next()?;
    let message = parts.next().unwrap_or("");
    let time: Timestamp = time_text.parse().ok()?;
    if !matches!(stream, "stdout" | "stderr") {
        return None;
    }
    Some(CriLine {
        time,
        time_text,
        stream,
        partial: tag.split(':').next() == Some("P"),
        message,
    })
}

/// Options of a log request (the `pods/log` query).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Prefix each line with its RFC3339Nano time.
    pub timestamps: bool,
    /// Only lines at or after this time.
    pub since: Option<Timestamp>,
    /// Only the last N lines.
    pub tail_lines: Option<usize>,
    /// Stop after this many bytes.
    pub limit_bytes: Option<usize>,
    /// Keep streaming new lines.
    pub follow: bool,
    /// The previous (terminated) instance of the container.
    pub previous: bool,
}

impl LogOptions {
    /// Reads the options from a query string; `now` resolves `sinceSeconds`.
    ///
    /// # Errors
    /// A message for a malformed value.
    pub fn from_query(query: Option<&str>, now: Timestamp) -> Result<Self, String> {
        let mut options = Self::default();
        for (key, value) in form_pairs(query.unwrap_or_default()) {
            let flag = || value.is_empty() || value == "true" || value == "1";
            match key.as_str() {
                "timestamps" => options.timestamps = flag(),
                "follow" => options.follow = flag(),
                "previous" => options.previous = flag(),
                "tailLines" => {
                    let lines: i64 = value
                        .parse()
                        .map_err(|_| format!("invalid tailLines {value}"))?;
                    options.tail_lines = Some(usize::try_from(lines.max(0)).unwrap_or(0));
                }
                "limitBytes" => {
                    let bytes: i64 = value
                        .parse()
                        .map_err(|_| format!("invalid limitBytes {value}"))?;
                    if bytes < 1 {
                        return Err("limitBytes must be greater than zero".into());
                    }
                    options.limit_bytes = usize::try_from(bytes).ok();
                }
                "sinceSeconds" => {
                    let seconds: i64 = value
                        .parse()
                        .map_err(|_| format!("invalid sinceSeconds {value}"))?;
                    if seconds < 1 {
                        return Err("sinceSeconds must be greater than zero".into());
                    }
                    options.since = now
                        .checked_sub(jiff::SignedDuration::from_secs(seconds))
                        .ok();
                }
                "sinceTime" => {
                    options.since = Some(
                        value
                            .parse()
                            .map_err(|_| format!("invalid sinceTime {value}"))?,
                    );
                }
                _ => {}
            }
        }
        Ok(options)
    }
}

/// `key=value` pairs of a query string, percent-decoded.
#[must_use]
pub fn form_pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Joins partial records into whole lines and renders them as `kubectl logs` shows them.
#[derive(Debug, Default)]
pub struct Renderer {
    pending: String,
    pending_time: Option<String>,
}

impl Renderer {
    /// Feeds one record; returns the rendered line once it is complete.
    pub fn push(&mut self, record: &CriLine<'_>, options: &LogOptions) -> Option<String> {
        if self.pending_time.is_none() {
            self.pending_time = Some(record.time_text.to_owned());
        }
        self.pending.push_str(record.message);
        if record.partial {
            return None;
        }
        let time = self.pending_time.take().unwrap_or_default();
        let message = std::mem::take(&mut self.pending);
        if options.since.is_some_and(|since| record.time < since) {
            return None;
        }
        Some(if options.timestamps {
            format!("{time} {message}\n")
        } else {
            format!("{message}\n")
        })
    }
}

/// Renders a whole log file's text with `options` (no follow).
#[must_use]
pub fn render(text: &str, options: &LogOptions) -> String {
    let mut renderer = Renderer::default();
    let mut lines: VecDeque<String> = VecDeque::new();
    for record in text.lines().filter_map(parse_line) {
        if let Some(line) = renderer.push(&record, options) {
            lines.push_back(line);
            if let Some(tail) = options.tail_lines
                && lines.len() > tail
            {
                lines.pop_front();
            }
        }
    }
    let mut out: String = lines.into_iter().collect();
    if let Some(limit) = options.limit_bytes
        && out.len() > limit
    {
        let mut cut = limit;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

/// Streams the log at `path`: first what `render` gives, then, with `follow`, each new line
/// until `running` says the container stopped and the file has no more data. Lines go to
/// `out`; the stream ends when the receiver is dropped.
pub async fn stream(
    path: PathBuf,
    options: LogOptions,
    out: mpsc::Sender<Result<Bytes, std::io::Error>>,
    running: impl Fn() -> futures::future::BoxFuture<'static, bool> + Send,
) {
    let Ok(mut file) = tokio::fs::File::open(&path).await else {
        let _ = out
            .send(Err(std::io::Error::other(format!(
                "failed to open log file {}",
                path.display()
            ))))
            .await;
        return;
    };
    let mut existing = String::new();
    if tokio::io::AsyncReadExt::read_to_string(&mut file, &mut existing)
        .await
        .is_err()
    {
        return;
    }
    // only complete records count as read; a record still being written is read again
    let complete = existing.rfind('\n').map_or(0, |i| i + 1);
    let first = render(&existing[..complete], &options);
    let mut sent = first.len();
    if !first.is_empty() && out.send(Ok(Bytes::from(first))).await.is_err() {
        return;
    }
    if !options.follow {
        return;
    }
    let limit = options.limit_bytes.unwrap_or(usize::MAX);
    if sent >= limit {
        return;
    }
    if file
        .seek(std::io::SeekFrom::Start(complete as u64))
        .await
        .is_err()
    {
        return;
    }
    let mut inode = file.metadata().await.map(|m| m.ino()).unwrap_or(0);
    let mut reader = BufReader::new(file);
    let mut renderer = Renderer::default();
    let mut buffer = String::new();
    let mut idle_checks = 0u32;
    loop {
        let read = reader.read_line(&mut buffer).await.unwrap_or(0);
        if read > 0 && buffer.ends_with('\n') {
            idle_checks = 0;
            if let Some(record) = parse_line(&buffer)
                && let Some(line) = renderer.push(&record, &options)
            {
                let line = if sent + line.len() > limit {
                    line[..limit - sent].to_owned()
                } else {
                    line
                };
                sent += line.len();
                if out.send(Ok(Bytes::from(line))).await.is_err() || sent >= limit {
                    return;
                }
            }
            buffer.clear();
            continue;
        }
        if out.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        idle_checks += 1;
        // every second without data: follow a rotation to the new file, or stop once the
        // container has stopped
        if idle_checks.is_multiple_of(10)
            && let Ok(metadata) = tokio::fs::metadata(&path).await
            && metadata.ino() != inode
            && let Ok(next) = tokio::fs::File::open(&path).await
        {
            inode = metadata.ino();
            reader = BufReader::new(next);
            continue;
        }
        if idle_checks.is_multiple_of(10) && !running().await {
            // one last read for what arrived meanwhile
            if reader.read_line(&mut buffer).await.unwrap_or(0) == 0 {
                return;
            }
        }
    }
}

/// The rotated siblings of a log file (`0.log.<stamp>`), oldest first.
#[must_use]
pub fn rotated_files(path: &std::path::Path) -> Vec<PathBuf> {
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Vec::new();
    };
    let Some(directory) = path.parent() else {
        return Vec::new();
    };
    let prefix = format!("{name}.");
    let mut files: Vec<PathBuf> = std::fs::read_dir(directory)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}

/// Renames a log that grew past `max_size` to `<path>.<UTC stamp>` and removes the oldest
/// rotated files so that at most `max_files` (the live one included) remain. Returns whether
/// it rotated; the caller then asks the runtime to reopen the log.
///
/// # Errors
/// On file system failures.
pub fn rotate_if_large(
    path: &std::path::Path,
    max_size: u64,
    max_files: usize,
    now: Timestamp,
) -> std::io::Result<bool> {
    let size = match std::fs::metadata(path) {
        Ok(metadata) => metadata.len(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(error) => return Err(error),
    };
    if size < max_size {
        return Ok(false);
    }
    let stamp = now.strftime("%Y%m%d-%H%M%S%.6f").to_string();
    let mut rotated = path.as_os_str().to_owned();
    rotated.push(format!(".{stamp}"));
    std::fs::rename(path, &rotated)?;
    let files = rotated_files(path);
    let keep = max_files.saturating_sub(1).max(1);
    if files.len() > keep {
        for old in &files[..files.len() - keep] {
            std::fs::remove_file(old)?;
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "2026-11-22T18:05:17.203367313Z stderr F err 0\n\
2026-11-22T18:05:18.203395465Z stdout F hello 0\n\
2026-11-22T18:06:23.215950504Z stdout P first half \n\
2026-11-22T18:06:23.216043682Z stdout F second half\n\
garbage line\n\
2026-11-22T18:06:30.000000000Z stdout F last\n";

    #[test]
    fn parses_records() {
        let record = parse_line("2026-11-22T18:06:23.215950504Z stdout P xx yy\n").unwrap();
        assert!(record.partial);
        assert_eq!(record.stream, "stdout");
        assert_eq!(record.message, "xx yy");
        assert_eq!(parse_line("nonsense"), None);
        let empty = parse_line("2026-11-22T18:06:23.215950504Z stdout F").unwrap();
        assert_eq!(empty.message, "");
    }

    #[test]
    fn renders_with_options() {
        let all = render(LOG, &LogOptions::default());
        assert_eq!(all, "err 0\nhello 0\nfirst half second half\nlast\n");
        let tail = render(
            LOG,
            &LogOptions {
                tail_lines: Some(2),
                timestamps: true,
                ..LogOptions::default()
            },
        );
        assert_eq!(
            tail,
            "2026-11-22T18:06:23.215950504Z first half second half\n2026-11-22T18:06:30.000000000Z last\n"
        );
        let since = LogOptions::from_query(
            Some("sinceTime=2026-11-22T18%3A06%3A00Z&limitBytes=7"),
            Timestamp::now(),
        )
        .unwrap();
        assert_eq!(render(LOG, &since), "first h");
        let recent = LogOptions::from_query(
            Some("sinceSeconds=10"),
            "2026-11-22T18:06:35Z".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(render(LOG, &recent), "last\n");
        assert!(LogOptions::from_query(Some("tailLines=x"), Timestamp::now()).is_err());
        assert!(
            LogOptions::from_query(Some("follow=true"), Timestamp::now())
                .unwrap()
                .follow
        );
    }

    #[test]
    fn rotation_keeps_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let base: Timestamp = "2026-11-22T18:00:00Z".parse().unwrap();
        std::fs::write(&path, "small").unwrap();
        assert!(!rotate_if_large(&path, 100, 3, base).unwrap());
        for i in 0..4 {
            std::fs::write(&path, "x".repeat(200)).unwrap();
            let now = base + jiff::SignedDuration::from_secs(i);
            assert!(rotate_if_large(&path, 100, 3, now).unwrap());
        }
        assert!(!path.exists(), "the runtime reopens the live file");
        let rotated = rotated_files(&path);
        assert_eq!(rotated.len(), 2, "{rotated:?}");
        assert!(
            rotated[1]
                .to_string_lossy()
                .ends_with("20261122-180003.000000")
        );
    }

    #[tokio::test]
    async fn follows_until_the_container_stops() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(&path, "2026-11-22T18:05:17.2Z stdout F one\n").unwrap();
        let (sender, mut receiver) = mpsc::channel(16);
        let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = running.clone();
        let task = tokio::spawn(stream(
            path.clone(),
            LogOptions {
                follow: true,
                ..LogOptions::default()
            },
            sender,
            move || {
                let flag = flag.clone();
                Box::pin(async move { flag.load(std::sync::atomic::Ordering::SeqCst) })
            },
        ));
        assert_eq!(receiver.recv().await.unwrap().unwrap(), "one\n");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut file, b"2026-11-22T18:05:18.2Z stdout F two\n").unwrap();
        assert_eq!(receiver.recv().await.unwrap().unwrap(), "two\n");
        // a rotation: the file is renamed and the runtime writes a new one
        std::fs::rename(&path, dir.path().join("0.log.1")).unwrap();
        std::fs::write(&path, "2026-11-22T18:05:19.2Z stdout F three\n").unwrap();
        assert_eq!(receiver.recv().await.unwrap().unwrap(), "three\n");
        running.store(false, std::sync::atomic::Ordering::SeqCst);
        task.await.unwrap();
        assert!(
            receiver.recv().await.is_none(),
            "the stream ends with the container"
        );
    }
}
