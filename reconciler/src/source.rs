//! Git sources: one bare cache repository per remote, a cheap check of the remote's refs
//! before fetching, resolution of a revision to a commit, and reading the files of a path at
//! that commit straight from Git's objects (no work tree; symlinks that leave the repository and
//! oversized trees are refused).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use git2::{Direction, FetchOptions, ObjectType, Oid, Repository, TreeWalkMode, TreeWalkResult};
use sha2::{Digest, Sha256};

use crate::auth::GitCredentials;

/// Largest total size of the files read from one path of one commit.
pub const MAX_TREE_BYTES: usize = 64 << 20;
/// Largest single file read.
pub const MAX_FILE_BYTES: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("git: {0}")]
    Git(#[from] git2::Error),
    #[error("revision {revision:?} not found in {url} (no such branch, tag or commit)")]
    RevisionNotFound { url: String, revision: String },
    #[error("path {path:?} not found at {commit}")]
    PathNotFound { path: String, commit: String },
    #[error("{path}: symlink to {target:?} points outside the repository")]
    EscapingSymlink { path: String, target: String },
    #[error("{path}: {size} bytes is more than the {limit}-byte limit")]
    TooLarge {
        path: String,
        size: usize,
        limit: usize,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Refused(String),
}

/// A commit and what auditors want to know about it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CommitInfo {
    pub sha: String,
    pub author: String,
    pub committer: String,
    /// The first line of the message.
    pub subject: String,
    /// Seconds since the epoch, committer time.
    pub time: i64,
    /// Whether the commit carries a signature (verification is the caller's).
    pub signed: bool,
    /// Who signed it, once verified.
    pub signer: Option<String>,
    /// The pull request a merge commit names ("Merge pull request #12", "(#12)", "!12").
    pub pull_request: Option<String>,
}

/// Files of one path at one commit: path relative to that directory → content.
pub type Files = BTreeMap<String, Vec<u8>>;

/// The local caches of remote repositories under one directory.
#[derive(Clone, Debug)]
pub struct Sources {
    root: PathBuf,
    timeout: Duration,
    /// One lock per cache: fetches into one repository never overlap.
    locks: Arc<Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>>,
}

impl Sources {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            timeout: Duration::from_secs(60),
            locks: Arc::default(),
        }
    }

    /// The cache directory of `url`.
    pub fn cache_dir(&self, url: &str) -> PathBuf {
        let digest = hex::encode(Sha256::digest(url.as_bytes()));
        self.root.join(format!("{}.git", &digest[..16]))
    }

    /// Opens (or creates) the cache of `url`.
    fn open(&self, url: &str) -> Result<Repository, SourceError> {
        let dir = self.cache_dir(url);
        let repo = match Repository::open_bare(&dir) {
            Ok(repo) => repo,
            Err(_) => {
                std::fs::create_dir_all(&dir)?;
                let repo = Repository::init_bare(&dir)?;
                repo.remote_with_fetch(
                    "origin",
                    &normalize_url(url),
                    "+refs/heads/*:refs/remotes/origin/*",
                )?;
                repo
            }
        };
        Ok(repo)
    }

    /// Resolves `revision` of `url` to a commit, fetching only when the remote's refs moved
    /// (or the revision is a commit the cache lacks). Blocking: call from a blocking task.
    pub fn resolve(
        &self,
        url: &str,
        revision: &str,
        credentials: Option<&GitCredentials>,
    ) -> Result<CommitInfo, SourceError> {
        let none = GitCredentials::default();
        let credentials = credentials.unwrap_or(&none);
        let lock = self
            .locks
            .lock()
            .entry(self.cache_dir(url))
            .or_default()
            .clone();
        let _held = lock.lock();
        let repo = self.open(url)?;
        let mut remote = repo.find_remote("origin")?;
        let refused = |error: git2::Error| match credentials.take_refusal() {
            Some(reason) => SourceError::Refused(reason),
            None => SourceError::Git(error),
        };
        let connection = remote
            .connect_auth(Direction::Fetch, Some(credentials.callbacks()), None)
            .map_err(refused)?;
        let advertised: Vec<(String, Oid)> = connection
            .list()?
            .iter()
            .map(|head| (head.name().to_owned(), head.oid()))
            .collect();
        let default_branch = connection
            .default_branch()
            .ok()
            .and_then(|b| b.as_str().map(str::to_owned));
        drop(connection);
        let stale = advertised.iter().any(|(name, oid)| {
            let local = local_ref_name(name);
            local.is_some_and(|local| {
                repo.refname_to_id(&local)
                    .map(|have| have != *oid)
                    .unwrap_or(true)
            })
        });
        let wanted_commit = Oid::from_str(revision)
            .ok()
            .filter(|_| revision.len() == 40);
        let missing_commit = wanted_commit.is_some_and(|oid| repo.find_commit(oid).is_err());
        if stale || missing_commit {
            // a transfer that outlives the timeout is cancelled between packets
            let deadline = std::time::Instant::now() + self.timeout;
            let mut callbacks = credentials.callbacks();
            callbacks.transfer_progress(move |_| std::time::Instant::now() < deadline);
            let mut options = FetchOptions::new();
            options.prune(git2::FetchPrune::On);
            options.download_tags(git2::AutotagOption::All);
            options.remote_callbacks(callbacks);
            remote
                .fetch(
                    &[
                        "+refs/heads/*:refs/remotes/origin/*",
                        "+refs/tags/*:refs/tags/*",
                    ],
                    Some(&mut options),
                    None,
                )
                .map_err(refused)?;
        }
        let not_found = || SourceError::RevisionNotFound {
            url: url.to_owned(),
            revision: revision.to_owned(),
        };
        let oid = if let Some(oid) = wanted_commit {
            oid
        } else {
            let branch = if revision.is_empty() || revision == "HEAD" {
                default_branch
                    .as_deref()
                    .and_then(|b| b.strip_prefix("refs/heads/"))
                    .map(str::to_owned)
                    .ok_or_else(not_found)?
            } else {
                revision.to_owned()
            };
            [
                format!("refs/remotes/origin/{branch}"),
                format!("refs/tags/{branch}"),
            ]
            .iter()
            .find_map(|name| repo.find_reference(name).ok())
            .and_then(|r| r.peel_to_commit().ok())
            .map(|c| c.id())
            .or_else(|| {
                let tags = repo.tag_names(None).ok()?;
                let tag = highest_matching(&branch, tags.iter().flatten())?;
                repo.find_reference(&format!("refs/tags/{tag}"))
                    .ok()?
                    .peel_to_commit()
                    .ok()
                    .map(|c| c.id())
            })
            .ok_or_else(not_found)?
        };
        let commit = repo.find_commit(oid).map_err(|_| not_found())?;
        Ok(commit_info(&repo, &commit))
    }

    /// The files under `path` at `sha` (all depths when `recurse`).
    pub fn read(
        &self,
        url: &str,
        sha: &str,
        path: &str,
        recurse: bool,
    ) -> Result<Files, SourceError> {
        let repo = self.open(url)?;
        let commit = repo.find_commit(Oid::from_str(sha)?)?;
        let root = commit.tree()?;
        let path = clean_path(path);
        let tree = if path.is_empty() {
            root.clone()
        } else {
            root.get_path(Path::new(&path))
                .ok()
                .filter(|e| e.kind() == Some(ObjectType::Tree))
                .and_then(|e| repo.find_tree(e.id()).ok())
                .ok_or_else(|| SourceError::PathNotFound {
                    path: path.clone(),
                    commit: sha.to_owned(),
                })?
        };
        let mut files = Files::new();
        let mut total = 0usize;
        let mut failure: Option<SourceError> = None;
        tree.walk(TreeWalkMode::PreOrder, |dir, entry| {
            let Some(name) = entry.name() else {
                return TreeWalkResult::Skip;
            };
            let relative = format!("{dir}{name}");
            match entry.kind() {
                Some(ObjectType::Tree) => {
                    if recurse {
                        TreeWalkResult::Ok
                    } else {
                        TreeWalkResult::Skip
                    }
                }
                Some(ObjectType::Blob) => {
                    let full = join(&path, &relative);
                    let result = if entry.filemode() == 0o120000 {
                        read_symlink(&repo, &root, &full, entry.id())
                    } else {
                        repo.find_blob(entry.id())
                            .map(|b| b.content().to_vec())
                            .map_err(SourceError::from)
                    };
                    match result.and_then(|content| {
                        check_size(&full, content.len(), MAX_FILE_BYTES)?;
                        total += content.len();
                        check_size(&path, total, MAX_TREE_BYTES)?;
                        Ok(content)
                    }) {
                        Ok(content) => {
                            files.insert(relative, content);
                            TreeWalkResult::Ok
                        }
                        Err(error) => {
                            failure = Some(error);
                            TreeWalkResult::Abort
                        }
                    }
                }
                _ => TreeWalkResult::Skip,
            }
        })
        .or_else(|e| if failure.is_some() { Ok(()) } else { Err(e) })?;
        match failure {
            Some(error) => Err(error),
            None => Ok(files),
        }
    }

    /// Writes the whole tree of `sha` into `dir` (for renderers that need files on disk).
    pub fn export(&self, url: &str, sha: &str, dir: &Path) -> Result<(), SourceError> {
        let repo = self.open(url)?;
        let commit = repo.find_commit(Oid::from_str(sha)?)?;
        // refuse escaping symlinks before anything is written
        let root = commit.tree()?;
        let mut failure = None;
        root.walk(TreeWalkMode::PreOrder, |dir, entry| {
            if entry.filemode() == 0o120000 {
                let full = format!("{dir}{}", entry.name().unwrap_or_default());
                if let Err(error) = read_symlink(&repo, &root, &full, entry.id()) {
                    failure = Some(error);
                    return TreeWalkResult::Abort;
                }
            }
            TreeWalkResult::Ok
        })
        .ok();
        if let Some(error) = failure {
            return Err(error);
        }
        let mut checkout = git2::build::CheckoutBuilder::new();
        checkout.target_dir(dir).force();
        repo.checkout_tree(commit.as_object(), Some(&mut checkout))?;
        Ok(())
    }
}

/// The files under a local directory (for previews of a work tree), by the same rules as a
/// commit: symlinks must stay inside `dir`, sizes are limited, dot-directories are skipped.
pub fn read_local(dir: &Path, recurse: bool) -> Result<Files, SourceError> {
    fn walk(
        root: &Path,
        dir: &Path,
        recurse: bool,
        files: &mut Files,
        total: &mut usize,
    ) -> Result<(), SourceError> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let relative = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            let meta = std::fs::symlink_metadata(&path)?;
            if meta.file_type().is_symlink() {
                let target = std::fs::canonicalize(&path)?;
                if !target.starts_with(std::fs::canonicalize(root)?) {
                    return Err(SourceError::EscapingSymlink {
                        path: relative,
                        target: std::fs::read_link(&path)?.display().to_string(),
                    });
                }
            }
            let meta = std::fs::metadata(&path)?;
            if meta.is_dir() {
                if recurse && !name.starts_with('.') {
                    walk(root, &path, recurse, files, total)?;
                }
            } else if meta.is_file() {
                check_size(&relative, meta.len() as usize, MAX_FILE_BYTES)?;
                let content = std::fs::read(&path)?;
                *total += content.len();
                check_size(&root.display().to_string(), *total, MAX_TREE_BYTES)?;
                files.insert(relative, content);
            }
        }
        Ok(())
    }
    let mut files = Files::new();
    walk(dir, dir, recurse, &mut files, &mut 0)?;
    Ok(files)
}

fn check_size(path: &str, size: usize, limit: usize) -> Result<(), SourceError> {
    if size > limit {
        return Err(SourceError::TooLarge {
            path: path.to_owned(),
            size,
            limit,
        });
    }
    Ok(())
}

/// The content a symlink inside the repository points to; an error when it leaves it.
fn read_symlink(
    repo: &Repository,
    root: &git2::Tree<'_>,
    path: &str,
    blob: Oid,
) -> Result<Vec<u8>, SourceError> {
    let mut current = path.to_owned();
    let mut target_blob = blob;
    for _ in 0..16 {
        let target = String::from_utf8_lossy(repo.find_blob(target_blob)?.content()).into_owned();
        let escaping = || SourceError::EscapingSymlink {
            path: path.to_owned(),
            target: target.clone(),
        };
        if target.starts_with('/') {
            return Err(escaping());
        }
        let parent = current.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        let resolved = resolve_relative(parent, &target).ok_or_else(escaping)?;
        let entry = root
            .get_path(Path::new(&resolved))
            .map_err(|_| escaping())?;
        if entry.filemode() == 0o120000 {
            current = resolved;
            target_blob = entry.id();
            continue;
        }
        return match entry.kind() {
            Some(ObjectType::Blob) => Ok(repo.find_blob(entry.id())?.content().to_vec()),
            _ => Err(escaping()),
        };
    }
    Err(SourceError::EscapingSymlink {
        path: path.to_owned(),
        target: "(too many levels of symlinks)".into(),
    })
}

/// `parent/target` with `.` and `..` resolved; None when it climbs above the root.
pub fn resolve_relative(parent: &str, target: &str) -> Option<String> {
    let mut parts: Vec<&str> = parent.split('/').filter(|p| !p.is_empty()).collect();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            other => parts.push(other),
        }
    }
    Some(parts.join("/"))
}

fn clean_path(path: &str) -> String {
    path.split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect::<Vec<_>>()
        .join("/")
}

fn join(dir: &str, relative: &str) -> String {
    if dir.is_empty() {
        relative.to_owned()
    } else {
        format!("{dir}/{relative}")
    }
}

/// Where a remote ref lands in the cache.
fn local_ref_name(remote: &str) -> Option<String> {
    if let Some(branch) = remote.strip_prefix("refs/heads/") {
        Some(format!("refs/remotes/origin/{branch}"))
    } else if remote.starts_with("refs/tags/") && !remote.ends_with("^{}") {
        Some(remote.to_owned())
    } else {
        None
    }
}

/// The tag with the highest version matching the semver range `range` (`>=1.2 <2`, `~1.4`,
/// `^1`, `1.x`, `*`); tags may carry a `v`. None when `range` is not a range or nothing matches.
pub fn highest_matching<'a>(range: &str, tags: impl Iterator<Item = &'a str>) -> Option<String> {
    let looks_like_range = range.contains(['<', '>', '=', '~', '^', '*', ' ', ','])
        || range.ends_with(".x")
        || range.ends_with(".X");
    if !looks_like_range {
        return None;
    }
    let normalized = range.replace(".X", ".x").replace(".x", ".*");
    let requirement = semver::VersionReq::parse(&normalized.replace(' ', ", ").replace(",,", ","))
        .or_else(|_| semver::VersionReq::parse(&normalized))
        .ok()?;
    tags.filter_map(|tag| {
        let version = semver::Version::parse(tag.strip_prefix('v').unwrap_or(tag)).ok()?;
        requirement
            .matches(&version)
            .then_some((version, tag.to_owned()))
    })
    .max_by(|a, b| a.0.cmp(&b.0))
    .map(|(_, tag)| tag)
}

/// Plain absolute paths become file:// URLs; everything else is given to git as it is.
pub fn normalize_url(url: &str) -> String {
    if url.starts_with('/') {
        format!("file://{url}")
    } else {
        url.to_owned()
    }
}

fn commit_info(repo: &Repository, commit: &git2::Commit<'_>) -> CommitInfo {
    let person = |s: git2::Signature<'_>| {
        format!(
            "{} <{}>",
            s.name().unwrap_or_default(),
            s.email().unwrap_or_default()
        )
    };
    let message = commit.message().unwrap_or_default();
    CommitInfo {
        sha: commit.id().to_string(),
        author: person(commit.author()),
        committer: person(commit.committer()),
        subject: message.lines().next().unwrap_or_default().to_owned(),
        time: commit.time().seconds(),
        signed: repo.extract_signature(&commit.id(), None).is_ok(),
        signer: None,
        pull_request: pull_request(message),
    }
}

/// The pull request a merge commit message names: GitHub's "Merge pull request #12 from …",
/// squash merges' "… (#12)", GitLab's "See merge request group/project!12".
pub fn pull_request(message: &str) -> Option<String> {
    let subject = message.lines().next().unwrap_or_default();
    if let Some(rest) = subject.strip_prefix("Merge pull request #") {
        let number: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !number.is_empty() {
            return Some(format!("#{number}"));
        }
    }
    if let Some(open) = subject.rfind("(#")
        && subject.ends_with(')')
    {
        let number = &subject[open + 2..subject.len() - 1];
        if !number.is_empty() && number.chars().all(|c| c.is_ascii_digit()) {
            return Some(format!("#{number}"));
        }
    }
    message
        .lines()
        .find_map(|line| line.trim().strip_prefix("See merge request "))
        .map(|r| r.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_symlinks_resolve_inside_the_repository_only() {
        assert_eq!(
            resolve_relative("a/b", "../c.yaml").as_deref(),
            Some("a/c.yaml")
        );
        assert_eq!(resolve_relative("", "./x").as_deref(), Some("x"));
        assert_eq!(resolve_relative("a", "../../etc/passwd"), None);
    }

    #[test]
    fn pull_requests_are_found_in_merge_messages() {
        assert_eq!(
            pull_request("Merge pull request #42 from dev/feature\n\nAdd web").as_deref(),
            Some("#42")
        );
        assert_eq!(pull_request("Add web (#7)").as_deref(), Some("#7"));
        assert_eq!(
            pull_request("Merge branch 'x' into 'main'\n\nSee merge request team/app!12")
                .as_deref(),
            Some("team/app!12")
        );
        assert_eq!(pull_request("Fix (#abc)"), None);
        assert_eq!(pull_request("plain commit"), None);
    }

    #[test]
    fn semver_ranges_pick_the_highest_matching_tag() {
        let tags = [
            "v1.0.0",
            "v1.2.0",
            "1.2.5",
            "v1.10.1",
            "v2.0.0",
            "v2.1.0-rc.1",
            "latest",
        ];
        let pick = |range: &str| highest_matching(range, tags.iter().copied());
        assert_eq!(pick(">=1.0.0 <2.0.0").as_deref(), Some("v1.10.1"));
        assert_eq!(pick("~1.2").as_deref(), Some("1.2.5"));
        assert_eq!(pick("1.x").as_deref(), Some("v1.10.1"));
        assert_eq!(
            pick("^2").as_deref(),
            Some("v2.0.0"),
            "pre-releases only when asked"
        );
        assert_eq!(pick("*").as_deref(), Some("v2.0.0"));
        assert_eq!(pick(">=3"), None);
        assert_eq!(pick("main"), None, "a branch name is not a range");
        assert_eq!(pick("1.2.0"), None, "an exact version is a tag name");
    }

    #[test]
    fn urls() {
        assert_eq!(normalize_url("/srv/repo.git"), "file:///srv/repo.git");
        assert_eq!(
            normalize_url("git@host:org/repo.git"),
            "git@host:org/repo.git"
        );
        assert_eq!(
            local_ref_name("refs/heads/main").as_deref(),
            Some("refs/remotes/origin/main")
        );
        assert_eq!(local_ref_name("refs/tags/v1^{}"), None);
        assert_eq!(local_ref_name("HEAD"), None);
    }
}
