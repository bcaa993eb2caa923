//! The `tail` source: follows files matching globs (new ones found by a periodic scan), in the
//! CRI, Docker json-file or raw format, reassembling CRI partial lines. It resumes from the
//! offsets its sinks made durable, so a restart neither loses nor repeats lines; it follows a
//! rotated (renamed) file to its end before letting go, and starts over on a truncated one.
//! File IO blocks, so the source runs on its own thread.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use globset::{GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

use super::SourceContext;
use crate::format::{self, Format};
use crate::kubernetes;
use crate::multiline::{Joined, MultilineConfig, Rule};
use crate::record::{Batch, LogRecord, Position, detect_level};

/// Configuration of the `tail` source.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TailConfig {
    /// Glob patterns of the files to follow (`*` stays within a directory, `**` crosses them).
    pub include: Vec<String>,
    /// Glob patterns of files to leave alone.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// How lines are framed: `cri` (default), `docker` or `raw`.
    #[serde(default)]
    pub format: Format,
    /// Read pod, namespace and container from kubelet log paths and add the pod's labels;
    /// records are then tagged `kube.<namespace>.<pod>.<container>`.
    #[serde(default)]
    pub kubernetes: bool,
    /// Tag of the records (default: the source's name); ignored with `kubernetes`.
    #[serde(default)]
    pub tag: Option<String>,
    /// Milliseconds between scans for new files.
    #[serde(default = "default_scan_interval_ms")]
    pub scan_interval_ms: u64,
    /// Milliseconds to wait when no file has grown.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Longest record kept whole, in bytes; longer ones are cut there (and counted).
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// Milliseconds a rotated or deleted file is still followed after it stopped growing.
    #[serde(default = "default_rotate_wait_ms")]
    pub rotate_wait_ms: u64,
    /// Join lines into one record (stack traces): see [`crate::multiline`].
    #[serde(default)]
    pub multiline: Option<MultilineConfig>,
}

const fn default_scan_interval_ms() -> u64 {
    1000
}
const fn default_poll_interval_ms() -> u64 {
    100
}
const fn default_max_line_bytes() -> usize {
    4 << 20
}
const fn default_rotate_wait_ms() -> u64 {
    5000
}

/// Records per batch sent downstream.
const BATCH_RECORDS: usize = 2048;
/// Bytes read per file before moving to the next one.
const READ_CHUNK: usize = 256 << 10;

/// A file being followed.
struct Followed {
    path: PathBuf,
    file: File,
    key: Arc<str>,
    /// Bytes read from the file so far.
    read_offset: u64,
    /// Bytes after the last newline.
    pending: Vec<u8>,
    /// Skip bytes up to the next newline (the rest of an over-long line).
    skipping: bool,
    /// A CRI line being reassembled from partial pieces.
    partial: Option<(i64, &'static str, String)>,
    /// Lines being joined into one record (with `multiline`): its time, stream, and the
    /// position after its last line. One at a time per file, so records leave in file order
    /// and the position kept never passes a line still waiting.
    joining: Option<Joined<(i64, &'static str, u64)>>,
    seen: bool,
    last_growth: Instant,
    meta: FileMeta,
    /// Position of the last record sent.
    emitted: u64,
    /// Records up to here were sent before a rewind (other sinks have them).
    replay_until: u64,
}

struct FileMeta {
    tag: Arc<str>,
    namespace: Arc<str>,
    pod: Arc<str>,
    container: Arc<str>,
    uid: String,
    labels: Arc<std::collections::BTreeMap<String, String>>,
    labels_checked: Option<Instant>,
}

/// Runs the source until shutdown (or until nothing is listening).
pub(crate) fn run(id: &str, config: &TailConfig, mut cx: SourceContext) {
    let (include, exclude, roots) = match globs(config) {
        Ok(globs) => globs,
        Err(error) => {
            tracing::error!(source = id, %error, "invalid glob");
            return;
        }
    };
    let multiline = match config.multiline.as_ref().map(Rule::new).transpose() {
        Ok(rule) => rule,
        Err(error) => {
            tracing::error!(source = id, %error, "invalid multiline rule");
            return;
        }
    };
    let mut tail = Tail {
        id: id.to_owned(),
        config: config.clone(),
        multiline,
        include,
        exclude,
        roots,
        files: HashMap::new(),
        chunk: vec![0; READ_CHUNK],
        batch: Batch::default(),
        orphans: HashMap::new(),
        closing: HashMap::new(),
        generation: cx.rewind.as_ref().map_or(0, |r| r.generation()),
    };
    // files this source was reading when it stopped, by identity: if they were rotated away
    // meanwhile, the first scan finds them under their new name and finishes them
    let prefix = format!("{id}:");
    for key in cx.checkpoint.keys() {
        let identity = key.strip_prefix(&prefix).and_then(|rest| {
            let (dev, ino) = rest.split_once(':')?;
            Some((dev.parse().ok()?, ino.parse().ok()?))
        });
        if let Some(identity) = identity {
            tail.orphans.insert(identity, key.as_str().into());
        }
    }
    let poll = Duration::from_millis(config.poll_interval_ms.max(1));
    let scan_every = Duration::from_millis(config.scan_interval_ms.max(1));
    let mut last_scan: Option<Instant> = None;
    // inotify wakes the source when a file is created (scan now) or written (read now); the
    // periodic scan and poll remain for what it misses (other file systems, overflows)
    let (wake_tx, wake) = std::sync::mpsc::sync_channel::<()>(1);
    let created = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _watcher = watch(&tail.roots, wake_tx, created.clone());
    while !cx.shutdown.is_cancelled() {
        let rescan = created.swap(false, std::sync::atomic::Ordering::SeqCst);
        if rescan || last_scan.is_none_or(|at| at.elapsed() >= scan_every) {
            tail.scan(&mut cx);
            last_scan = Some(Instant::now());
        }
        let read = tail.read_all(&mut cx);
        tail.send_joined(false, &cx);
        if !tail.flush(&cx) {
            return;
        }
        if !read {
            idle(&wake, poll, &cx.shutdown);
        }
    }
}

/// Waits up to `poll` for a wake-up, noticing shutdown within a quarter second.
fn idle(
    wake: &std::sync::mpsc::Receiver<()>,
    poll: Duration,
    shutdown: &tokio_util::sync::CancellationToken,
) {
    let deadline = Instant::now() + poll;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || shutdown.is_cancelled() {
            return;
        }
        match wake.recv_timeout(left.min(Duration::from_millis(250))) {
            Ok(()) => return,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            // no watcher: plain polling
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(left.min(Duration::from_millis(250)));
            }
        }
    }
}

/// Watches `roots` with inotify: any event wakes the source (one pending wake-up at most, so
/// a busy file costs no memory); a created or renamed file also asks for a scan.
fn watch(
    roots: &[PathBuf],
    wake: std::sync::mpsc::SyncSender<()>,
    created: Arc<std::sync::atomic::AtomicBool>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let handler = move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if matches!(
                event.kind,
                notify::EventKind::Create(_)
                    | notify::EventKind::Modify(notify::event::ModifyKind::Name(_))
            ) {
                created.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            let _ = wake.try_send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(watcher) => watcher,
        Err(error) => {
            tracing::debug!(%error, "no inotify; scanning only");
            return None;
        }
    };
    for root in roots {
        let directory = if root.is_dir() {
            root.as_path()
        } else {
            root.parent()?
        };
        if let Err(error) = watcher.watch(directory, notify::RecursiveMode::Recursive) {
            tracing::debug!(root = %directory.display(), %error, "cannot watch; scanning only");
        }
    }
    Some(watcher)
}

fn literal_root(pattern: &str) -> PathBuf {
    let mut root = PathBuf::from("/");
    for part in Path::new(pattern).components().skip(1) {
        let text = part.as_os_str().to_string_lossy();
        if text.contains(['*', '?', '[', '{']) {
            break;
        }
        root.push(part);
    }
    root
}

type Globs = (GlobSet, GlobSet, Vec<PathBuf>);

fn globs(config: &TailConfig) -> Result<Globs, globset::Error> {
    let build = |patterns: &[String]| -> Result<GlobSet, globset::Error> {
        let mut set = GlobSetBuilder::new();
        for pattern in patterns {
            set.add(
                globset::GlobBuilder::new(pattern)
                    .literal_separator(true)
                    .build()?,
            );
        }
        set.build()
    };
    let roots = config.include.iter().map(|p| literal_root(p)).collect();
    Ok((build(&config.include)?, build(&config.exclude)?, roots))
}

struct Tail {
    id: String,
    config: TailConfig,
    multiline: Option<Rule>,
    include: GlobSet,
    exclude: GlobSet,
    roots: Vec<PathBuf>,
    files: HashMap<(u64, u64), Followed>,
    chunk: Vec<u8>,
    batch: Batch,
    /// Checkpointed files not seen yet (only before the first scan ends).
    orphans: HashMap<(u64, u64), Arc<str>>,
    /// Files let go of whose letting go the index has not committed yet: kept open, so that
    /// a rewind can read them again even once they are deleted.
    closing: HashMap<(u64, u64), Followed>,
    /// The rewind generation this source reads under.
    generation: u64,
}

impl Tail {
    /// Finds new files and lets go of those that are gone and read.
    fn scan(&mut self, cx: &mut SourceContext) {
        for followed in self.files.values_mut() {
            followed.seen = false;
        }
        let mut found = Vec::new();
        let mut others = Vec::new();
        let looking = !self.orphans.is_empty();
        for root in &self.roots {
            walk(root, 0, &mut |path| {
                if self.include.is_match(path) && !self.exclude.is_match(path) {
                    found.push(path.to_path_buf());
                } else if looking {
                    others.push(path.to_path_buf());
                }
            });
        }
        found.sort();
        found.dedup();
        for path in found {
            let Ok(metadata) = std::fs::metadata(&path) else {
                continue;
            };
            if !metadata.is_file() {
                continue;
            }
            let id = (metadata.dev(), metadata.ino());
            self.orphans.remove(&id);
            if let Some(followed) = self.files.get_mut(&id) {
                followed.seen = true;
                if followed.path != path {
                    followed.path = path;
                }
                continue;
            }
            match self.open(&path, &metadata, cx) {
                Ok(followed) => {
                    tracing::debug!(source = %self.id, path = %path.display(), offset = followed.read_offset, "following");
                    self.files.insert(id, followed);
                }
                Err(error) => {
                    cx.metrics.error("open_failed");
                    tracing::debug!(source = %self.id, path = %path.display(), %error, "failed to open");
                }
            }
        }
        if looking {
            self.adopt_orphans(&others, cx);
        }
        let wait = Duration::from_millis(self.config.rotate_wait_ms);
        let done: Vec<(u64, u64)> = self
            .files
            .iter()
            .filter(|(_, f)| {
                !f.seen
                    && f.last_growth.elapsed() >= wait
                    && f.file.metadata().is_ok_and(|m| m.len() <= f.read_offset)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            if let Some(mut followed) = self.files.remove(&id) {
                if let Some(joined) = followed.joining.take() {
                    emit(&mut followed, joined, cx, &mut self.batch);
                }
                tracing::debug!(source = %self.id, path = %followed.path.display(), "let go of a file that is gone");
                self.batch.forgotten.push(followed.key.clone());
                if cx.rewind.is_some() {
                    self.closing.insert(id, followed);
                }
            }
        }
        if let Some(rewind) = &cx.rewind
            && !self.closing.is_empty()
        {
            let released = rewind.take_released(&format!("{}:", self.id));
            self.closing
                .retain(|_, followed| !released.iter().any(|k| **k == *followed.key));
        }
    }

    /// Goes back to the offsets the index committed, after it failed to commit what came
    /// after them: what was read since is dropped and read again.
    fn rewind(&mut self, rewind: &crate::record::Rewind) {
        self.generation = rewind.generation();
        let committed = rewind.committed();
        // records read but not sent yet reached no sink: they are not replays
        let mut unsent: HashMap<Arc<str>, u64> = HashMap::new();
        for position in self
            .batch
            .records
            .iter()
            .filter_map(|r| r.position.as_ref())
        {
            unsent
                .entry(position.key.clone())
                .or_insert(position.offset);
        }
        self.batch = Batch::default();
        for (id, mut followed) in self.closing.drain() {
            followed.seen = false;
            self.files.insert(id, followed);
        }
        for followed in self.files.values_mut() {
            let mut offset = committed.get(&*followed.key).copied().unwrap_or(0);
            if followed.file.metadata().is_ok_and(|m| m.len() < offset) {
                offset = 0;
                self.batch.reset.push(followed.key.clone());
            }
            if followed.file.seek(SeekFrom::Start(offset)).is_err() {
                continue;
            }
            let sent = unsent
                .get(&followed.key)
                .map_or(followed.emitted, |first| first - 1);
            followed.replay_until = followed.replay_until.max(sent);
            followed.read_offset = offset;
            followed.emitted = offset;
            followed.pending.clear();
            followed.partial = None;
            followed.joining = None;
            followed.skipping = false;
        }
        tracing::info!(source = %self.id, generation = self.generation, "reading again from the committed offsets");
    }

    /// Finishes the files this source was reading when it stopped and that were rotated
    /// (renamed out of the globs) meanwhile; forgets the ones that are gone.
    fn adopt_orphans(&mut self, others: &[PathBuf], cx: &mut SourceContext) {
        for path in others {
            let Ok(metadata) = std::fs::metadata(path) else {
                continue;
            };
            let id = (metadata.dev(), metadata.ino());
            if !metadata.is_file() || !self.orphans.contains_key(&id) {
                continue;
            }
            self.orphans.remove(&id);
            match self.open(path, &metadata, cx) {
                Ok(mut followed) => {
                    tracing::debug!(source = %self.id, path = %path.display(), offset = followed.read_offset, "finishing a file rotated while stopped");
                    followed.seen = false;
                    self.files.insert(id, followed);
                }
                Err(error) => {
                    cx.metrics.error("open_failed");
                    tracing::debug!(source = %self.id, path = %path.display(), %error, "failed to open");
                }
            }
        }
        for (_, key) in self.orphans.drain() {
            self.batch.forgotten.push(key);
        }
    }

    fn open(
        &self,
        path: &Path,
        metadata: &std::fs::Metadata,
        cx: &SourceContext,
    ) -> std::io::Result<Followed> {
        let mut file = File::open(path)?;
        let key: Arc<str> = format!("{}:{}:{}", self.id, metadata.dev(), metadata.ino()).into();
        let mut offset = cx.checkpoint.get(&*key).copied().unwrap_or(0);
        if offset > metadata.len() {
            offset = 0;
        }
        file.seek(SeekFrom::Start(offset))?;
        let pod = self
            .config
            .kubernetes
            .then(|| kubernetes::parse_log_path(path))
            .flatten();
        let meta = match pod {
            Some(pod) => FileMeta {
                tag: format!("kube.{}.{}.{}", pod.namespace, pod.pod, pod.container).into(),
                namespace: pod.namespace.into(),
                pod: pod.pod.into(),
                container: pod.container.into(),
                uid: pod.uid,
                labels: Arc::default(),
                labels_checked: None,
            },
            None => FileMeta {
                tag: self.config.tag.as_deref().unwrap_or(&self.id).into(),
                namespace: "".into(),
                pod: "".into(),
                container: "".into(),
                uid: String::new(),
                labels: Arc::default(),
                labels_checked: None,
            },
        };
        Ok(Followed {
            path: path.to_path_buf(),
            file,
            key,
            read_offset: offset,
            pending: Vec::new(),
            skipping: false,
            partial: None,
            joining: None,
            seen: true,
            last_growth: Instant::now(),
            meta,
            emitted: offset,
            replay_until: 0,
        })
    }

    /// Reads what every file has gained; true when anything was read.
    fn read_all(&mut self, cx: &mut SourceContext) -> bool {
        let mut any = false;
        let ids: Vec<(u64, u64)> = self.files.keys().copied().collect();
        for id in ids {
            while let Some(followed) = self.files.get_mut(&id) {
                let read = read_file(
                    followed,
                    &mut self.chunk,
                    &self.config,
                    self.multiline.as_ref(),
                    cx,
                    &mut self.batch,
                );
                if read == 0 {
                    break;
                }
                any = true;
                if self.batch.records.len() >= BATCH_RECORDS && !self.flush(cx) {
                    return any;
                }
                if read < READ_CHUNK {
                    break;
                }
            }
        }
        any
    }

    /// Sends the records whose lines are all in (no line for the rule's `flush_ms`), or all
    /// of them.
    fn send_joined(&mut self, all: bool, cx: &SourceContext) {
        let Some(rule) = &self.multiline else {
            return;
        };
        for followed in self.files.values_mut() {
            let due = followed
                .joining
                .as_ref()
                .is_some_and(|j| all || j.last_line.elapsed() >= rule.flush);
            if due && let Some(joined) = followed.joining.take() {
                emit(followed, joined, cx, &mut self.batch);
            }
        }
    }

    /// Sends the batch downstream; false when nothing listens any more.
    fn flush(&mut self, cx: &SourceContext) -> bool {
        if let Some(rewind) = &cx.rewind
            && rewind.generation() != self.generation
        {
            self.rewind(rewind);
            return true;
        }
        if self.batch.records.is_empty()
            && self.batch.forgotten.is_empty()
            && self.batch.reset.is_empty()
        {
            return true;
        }
        let mut batch = std::mem::take(&mut self.batch);
        batch.generation = cx.rewind.as_ref().map(|_| self.generation);
        if let Some(positions) = &cx.positions {
            positions.track(&mut batch);
        }
        let (records, bytes) = (batch.records.len() as u64, batch.bytes);
        cx.metrics.received(records, bytes);
        let sent = cx.out.blocking_send(batch).is_ok();
        if sent {
            cx.metrics.sent(records);
        }
        sent
    }
}

/// Calls `found` for every file under `dir` (symbolic links to files included).
fn walk(dir: &Path, depth: usize, found: &mut dyn FnMut(&Path)) {
    if depth > 16 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let path = entry.path();
        if kind.is_dir() {
            walk(&path, depth + 1, found);
        } else {
            found(&path);
        }
    }
}

/// Reads one chunk of `followed` and turns its complete lines into records; returns the bytes read.
fn read_file(
    followed: &mut Followed,
    chunk: &mut [u8],
    config: &TailConfig,
    multiline: Option<&Rule>,
    cx: &mut SourceContext,
    batch: &mut Batch,
) -> usize {
    if let Ok(metadata) = followed.file.metadata()
        && metadata.len() < followed.read_offset
    {
        // copytruncate or a truncation: the file starts over
        tracing::debug!(path = %followed.path.display(), "file truncated; reading from the start");
        cx.metrics.error("truncated");
        if followed.file.seek(SeekFrom::Start(0)).is_err() {
            return 0;
        }
        followed.read_offset = 0;
        batch.reset.push(followed.key.clone());
        followed.pending.clear();
        followed.partial = None;
        followed.joining = None;
        followed.skipping = false;
    }
    let read = match followed.file.read(chunk) {
        Ok(read) => read,
        Err(error) => {
            cx.metrics.error("read_failed");
            tracing::debug!(path = %followed.path.display(), %error, "failed to read");
            return 0;
        }
    };
    if read == 0 {
        return 0;
    }
    followed.last_growth = Instant::now();
    followed.read_offset += read as u64;
    batch.bytes += read as u64;
    followed.pending.extend_from_slice(&chunk[..read]);
    refresh_labels(&mut followed.meta, cx);
    let pending = std::mem::take(&mut followed.pending);
    // offset of pending[0] in the file
    let base = followed.read_offset - pending.len() as u64;
    let mut start = 0;
    while let Some(newline) = pending[start..].iter().position(|b| *b == b'\n') {
        let end = start + newline;
        let offset = base + end as u64 + 1;
        if followed.skipping {
            followed.skipping = false;
        } else {
            let line = &pending[start..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            line_to_record(followed, line, offset, config, multiline, cx, batch);
        }
        start = end + 1;
    }
    let mut rest = pending;
    rest.drain(..start);
    if rest.len() > config.max_line_bytes && !followed.skipping {
        // an over-long line without a newline yet: keep its head, skip the rest
        cx.metrics.error("line_too_long");
        let head = rest[..config.max_line_bytes].to_vec();
        let offset = followed.read_offset;
        rest.clear();
        followed.skipping = true;
        line_to_record(followed, &head, offset, config, multiline, cx, batch);
    } else if followed.skipping {
        rest.clear();
    }
    followed.pending = rest;
    read
}

fn refresh_labels(meta: &mut FileMeta, cx: &SourceContext) {
    let Some(pods) = &cx.pods else { return };
    if meta.uid.is_empty()
        || meta
            .labels_checked
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
    {
        return;
    }
    meta.labels_checked = Some(Instant::now());
    if let Some(pod) = pods.get(&meta.uid) {
        meta.labels = pod.labels;
    }
}

fn line_to_record(
    followed: &mut Followed,
    line: &[u8],
    offset: u64,
    config: &TailConfig,
    multiline: Option<&Rule>,
    cx: &mut SourceContext,
    batch: &mut Batch,
) {
    let (timestamp, stream, text) = match format::parse(config.format, line) {
        Ok(parsed) => {
            if parsed.partial {
                let piece = parsed.text;
                match &mut followed.partial {
                    Some((_, _, text)) => {
                        if text.len() + piece.len() > config.max_line_bytes {
                            cx.metrics.error("line_too_long");
                        } else {
                            text.push_str(&piece);
                        }
                    }
                    None => {
                        followed.partial =
                            Some((parsed.timestamp, parsed.stream, piece.into_owned()));
                    }
                }
                return;
            }
            match followed.partial.take() {
                Some((timestamp, stream, mut text)) => {
                    if text.len() + parsed.text.len() > config.max_line_bytes {
                        cx.metrics.error("line_too_long");
                    } else {
                        text.push_str(&parsed.text);
                    }
                    (timestamp, stream, text)
                }
                None => (parsed.timestamp, parsed.stream, parsed.text.into_owned()),
            }
        }
        Err(_) => {
            // not in the format: kept as it is, counted
            cx.metrics.error("parse_failed");
            (0, "", String::from_utf8_lossy(line).into_owned())
        }
    };
    let timestamp = if timestamp == 0 { cx.now() } else { timestamp };
    let Some(rule) = multiline else {
        push_record(followed, text, timestamp, stream, offset, cx, batch);
        return;
    };
    if let Some(joined) = followed.joining.as_mut() {
        let (_, joined_stream, _) = joined.state;
        if joined_stream == stream
            && joined.lines < rule.max_lines
            && rule.continues(joined.first(), joined.last(), &text)
        {
            let time = joined.state.0;
            if !joined.push(&text, (time, stream, offset), config.max_line_bytes) {
                cx.metrics.error("line_too_long");
            }
            return;
        }
    }
    if let Some(done) = followed.joining.take() {
        emit(followed, done, cx, batch);
    }
    followed.joining = Some(Joined::new(text, (timestamp, stream, offset)));
}

/// Sends a joined record (timed by its first line, placed after its last).
fn emit(
    followed: &mut Followed,
    joined: Joined<(i64, &'static str, u64)>,
    cx: &SourceContext,
    batch: &mut Batch,
) {
    let (timestamp, stream, offset) = joined.state;
    push_record(
        followed,
        joined.into_text(),
        timestamp,
        stream,
        offset,
        cx,
        batch,
    );
}

fn push_record(
    followed: &mut Followed,
    text: String,
    timestamp: i64,
    stream: &'static str,
    offset: u64,
    cx: &SourceContext,
    batch: &mut Batch,
) {
    batch.records.push(LogRecord {
        tag: followed.meta.tag.clone(),
        timestamp,
        level: detect_level(&text),
        message: text,
        stream,
        namespace: followed.meta.namespace.clone(),
        pod: followed.meta.pod.clone(),
        container: followed.meta.container.clone(),
        node: cx.node.clone(),
        labels: followed.meta.labels.clone(),
        fields: Arc::default(),
        position: Some(Position {
            key: followed.key.clone(),
            offset,
            replay: offset <= followed.replay_until,
        }),
    });
    followed.emitted = offset;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_of_globs() {
        assert_eq!(
            literal_root("/var/log/pods/*/*/*.log"),
            Path::new("/var/log/pods")
        );
        assert_eq!(literal_root("/tmp/x/a.log"), Path::new("/tmp/x/a.log"));
        assert_eq!(literal_root("/data/**/*.log"), Path::new("/data"));
    }

    #[test]
    fn config_parses_with_defaults() {
        let config: TailConfig =
            serde_yaml::from_str("include: ['/var/log/pods/*/*/*.log']\nkubernetes: true\n")
                .unwrap();
        assert_eq!(config.format, Format::Cri);
        assert_eq!(config.scan_interval_ms, 1000);
        assert!(serde_yaml::from_str::<TailConfig>("include: []\nbogus: 1\n").is_err());
    }
}
