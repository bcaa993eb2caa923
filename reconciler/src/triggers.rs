//! What starts a reconcile besides the Application itself changing: pushes announced by
//! GitHub, GitLab and Gitea webhooks (signature or token checked, every delivery counted),
//! commits to local repositories seen through inotify, and `kelson app sync`.
//!
//! [`Triggers`] remembers which Applications follow which repository and revision, so a push
//! wakes exactly those.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use notify::{RecursiveMode, Watcher};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value;
use sha2::Sha256;
use tokio::sync::mpsc::UnboundedSender;
use tracing::{info, warn};

use crate::api::Application;

/// A repository URL in a form that compares equal across https, ssh and scp-like spellings:
/// `host/path` in lower case, without user, port, `.git` or trailing slash. Local paths keep
/// their path (`file:///srv/r.git` and `/srv/r.git` are equal).
pub fn normalize_repo(url: &str) -> String {
    let url = url.trim();
    if let Some(path) = url.strip_prefix("file://") {
        return path.trim_end_matches('/').to_owned();
    }
    if url.starts_with('/') {
        return url.trim_end_matches('/').to_owned();
    }
    let without_scheme = url.split_once("://").map(|(_, rest)| rest);
    let (host, path) = match without_scheme {
        Some(rest) => rest.split_once('/').unwrap_or((rest, "")),
        // scp-like: user@host:path
        None => url.split_once(':').unwrap_or((url, "")),
    };
    let host = host.rsplit('@').next().unwrap_or(host);
    let host = host.split(':').next().unwrap_or(host);
    let path = path.trim_end_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    format!("{host}/{path}").to_lowercase()
}

/// One push, as a forge reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Push {
    /// Normalized URLs of the repository (a forge gives several spellings).
    pub repositories: Vec<String>,
    /// `refs/heads/main`, `refs/tags/v1.2.0`.
    pub reference: String,
    pub default_branch: Option<String>,
}

/// The record of a webhook delivery kept for the Applications it woke.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Delivery {
    pub provider: String,
    pub id: String,
    pub time: String,
    pub reference: String,
}

/// Why a delivery was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejection {
    /// No secret configured for this provider: deliveries cannot be authenticated.
    Unconfigured,
    InvalidSignature,
    BadRequest(String),
}

type HmacSha256 = Hmac<Sha256>;

/// Checks `X-Hub-Signature-256: sha256=HEX` (GitHub, Gitea) or `X-Gitea-Signature: HEX`.
pub fn check_hmac(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let hex_part = signature.strip_prefix("sha256=").unwrap_or(signature);
    let Ok(expected) = hex::decode(hex_part.trim()) else {
        return false;
    };
    let Ok(mut mac) = HmacSha256::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// Compares in constant time (GitLab's token header).
pub fn same_token(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The push a payload describes; None for events that are not pushes.
pub fn parse_push(provider: &str, payload: &Value) -> Result<Option<Push>, Rejection> {
    let reference = payload["ref"].as_str();
    let Some(reference) = reference else {
        return Ok(None);
    };
    let repo = if provider == "gitlab" {
        if payload["project"].is_object() {
            &payload["project"]
        } else {
            &payload["repository"]
        }
    } else {
        &payload["repository"]
    };
    if !repo.is_object() {
        return Err(Rejection::BadRequest(
            "the payload names no repository".into(),
        ));
    }
    let fields = [
        "clone_url",
        "ssh_url",
        "html_url",
        "git_url",
        "git_http_url",
        "git_ssh_url",
        "web_url",
        "http_url",
        "url",
        "homepage",
    ];
    let mut repositories: Vec<String> = fields
        .iter()
        .filter_map(|f| repo[*f].as_str())
        .filter(|u| !u.is_empty())
        .map(normalize_repo)
        .collect();
    repositories.sort();
    repositories.dedup();
    if repositories.is_empty() {
        return Err(Rejection::BadRequest(
            "the payload names no repository URL".into(),
        ));
    }
    Ok(Some(Push {
        repositories,
        reference: reference.to_owned(),
        default_branch: repo["default_branch"].as_str().map(str::to_owned),
    }))
}

/// Whether an Application following `revision` cares about a push of `push.reference`.
pub fn revision_matches(revision: Option<&str>, push: &Push) -> bool {
    let revision = revision.unwrap_or("HEAD");
    let branch = push.reference.strip_prefix("refs/heads/");
    let tag = push.reference.strip_prefix("refs/tags/");
    match revision {
        "" | "HEAD" => match (&push.default_branch, branch) {
            (Some(default), Some(branch)) => default == branch,
            // no default branch in the payload: any branch push may have moved HEAD
            (None, Some(_)) => true,
            _ => false,
        },
        rev if rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit()) => false,
        rev => branch == Some(rev) || tag == Some(rev) || push.reference == rev,
    }
}

/// The Applications of one repository, each with its target revision.
type Followers = HashMap<ObjectRef<Application>, Option<String>>;

/// Which Applications follow which repository, and the local repositories being watched.
pub struct Triggers {
    /// normalized URL → Applications with their target revision.
    followers: Mutex<HashMap<String, Followers>>,
    /// Deliveries that woke an Application, shown in its status.
    deliveries: Mutex<HashMap<ObjectRef<Application>, Delivery>>,
    watchers: Mutex<HashMap<PathBuf, notify::RecommendedWatcher>>,
    /// Local repositories whose wake-up is scheduled.
    pending: Mutex<std::collections::HashSet<String>>,
    runtime: Option<tokio::runtime::Handle>,
    trigger: UnboundedSender<ObjectRef<Application>>,
}

impl Triggers {
    pub fn new(trigger: UnboundedSender<ObjectRef<Application>>) -> Arc<Self> {
        Arc::new(Self {
            followers: Mutex::new(HashMap::new()),
            deliveries: Mutex::new(HashMap::new()),
            watchers: Mutex::new(HashMap::new()),
            pending: Mutex::new(Default::default()),
            runtime: tokio::runtime::Handle::try_current().ok(),
            trigger,
        })
    }

    /// Remembers what `app` follows (called on every reconcile), and watches its repository
    /// when it is on this machine.
    pub fn register(self: &Arc<Self>, app: &Application) {
        let key = key_of(app);
        let url = normalize_repo(&app.spec.source.repo_url);
        {
            let mut followers = self.followers.lock();
            for (other, apps) in followers.iter_mut() {
                if *other != url {
                    apps.remove(&key);
                }
            }
            followers
                .entry(url.clone())
                .or_default()
                .insert(key, app.spec.source.target_revision.clone());
        }
        if url.starts_with('/') {
            self.watch_local(PathBuf::from(url));
        }
    }

    /// Forgets a deleted Application.
    pub fn forget(&self, app: &ObjectRef<Application>) {
        for apps in self.followers.lock().values_mut() {
            apps.remove(app);
        }
        self.deliveries.lock().remove(app);
    }

    /// The last webhook delivery that woke `app`.
    pub fn delivery(&self, app: &ObjectRef<Application>) -> Option<Delivery> {
        self.deliveries.lock().get(app).cloned()
    }

    /// Wakes every Application following `push`; their names.
    pub fn push(&self, push: &Push, delivery: &Delivery) -> Vec<String> {
        let mut woken = Vec::new();
        let followers = self.followers.lock();
        for repository in &push.repositories {
            for (app, revision) in followers.get(repository).into_iter().flatten() {
                if revision_matches(revision.as_deref(), push) {
                    woken.push(app.clone());
                }
            }
        }
        drop(followers);
        let mut deliveries = self.deliveries.lock();
        let mut names = Vec::new();
        for app in woken {
            names.push(format!(
                "{}/{}",
                app.namespace.clone().unwrap_or_default(),
                app.name
            ));
            deliveries.insert(app.clone(), delivery.clone());
            let _ = self.trigger.send(app);
        }
        names
    }

    /// Wakes the Applications of a local repository once for a burst of writes (a push
    /// writes several files): 50 ms after the first.
    fn schedule_local_change(self: &Arc<Self>, repository: &str) {
        let Some(runtime) = &self.runtime else {
            self.local_change(repository);
            return;
        };
        if !self.pending.lock().insert(repository.to_owned()) {
            return;
        }
        let this = self.clone();
        let repository = repository.to_owned();
        runtime.spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            this.pending.lock().remove(&repository);
            this.local_change(&repository);
        });
    }

    /// Wakes every Application of a local repository.
    fn local_change(&self, repository: &str) {
        let apps: Vec<_> = self
            .followers
            .lock()
            .get(repository)
            .map(|apps| apps.keys().cloned().collect())
            .unwrap_or_default();
        for app in apps {
            let _ = self.trigger.send(app);
        }
    }

    /// Watches a repository on this machine: a change of its refs wakes its Applications.
    fn watch_local(self: &Arc<Self>, repository: PathBuf) {
        let mut watchers = self.watchers.lock();
        if watchers.contains_key(&repository) {
            return;
        }
        // a bare repository keeps its refs at the top, a work tree under .git
        let git_dir = if repository.join(".git").is_dir() {
            repository.join(".git")
        } else {
            repository.clone()
        };
        if !git_dir.join("refs").is_dir() {
            return;
        }
        let this = Arc::downgrade(self);
        let key = repository.to_string_lossy().into_owned();
        let handler = move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if is_ref_write(&event)
                && let Some(this) = this.upgrade()
            {
                this.schedule_local_change(&key);
            }
        };
        match notify::recommended_watcher(handler) {
            Ok(mut watcher) => {
                let watched = watcher
                    .watch(&git_dir.join("refs"), RecursiveMode::Recursive)
                    .and_then(|()| watcher.watch(&git_dir, RecursiveMode::NonRecursive));
                match watched {
                    Ok(()) => {
                        info!(repository = %repository.display(), "watching the local repository for commits");
                        watchers.insert(repository, watcher);
                    }
                    Err(error) => {
                        warn!(%error, repository = %repository.display(), "cannot watch the repository; polling only")
                    }
                }
            }
            Err(error) => warn!(%error, "inotify is unavailable; polling only"),
        }
    }
}

/// Whether a file event is a write to a repository's refs. Reads do not count: our own fetches
/// open the refs, and waking on them would make every fetch cause the next one.
pub fn is_ref_write(event: &notify::Event) -> bool {
    let written = matches!(
        event.kind,
        notify::EventKind::Create(_) | notify::EventKind::Modify(_) | notify::EventKind::Remove(_)
    );
    written
        && event.paths.iter().any(|p| {
            let text = p.to_string_lossy();
            text.contains("/refs/") || text.ends_with("packed-refs") || text.ends_with("HEAD")
        })
}

/// The key of an Application in the trigger maps.
pub fn key_of(app: &Application) -> ObjectRef<Application> {
    ObjectRef::new(&app.name_any()).within(&app.namespace().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn repository_urls_compare_across_spellings() {
        let forms = [
            "https://github.com/Org/App.git",
            "https://github.com/org/app",
            "ssh://git@github.com/org/app.git",
            "git@github.com:org/app.git",
            "ssh://git@github.com:22/org/app.git",
            "git://github.com/org/app.git",
        ];
        for form in forms {
            assert_eq!(normalize_repo(form), "github.com/org/app", "{form}");
        }
        assert_eq!(normalize_repo("file:///srv/repo.git"), "/srv/repo.git");
        assert_eq!(normalize_repo("/srv/repo.git/"), "/srv/repo.git");
    }

    #[test]
    fn signatures_and_tokens() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let mut mac = HmacSha256::new_from_slice(b"s3cret").unwrap();
        mac.update(body);
        let signature = hex::encode(mac.finalize().into_bytes());
        assert!(check_hmac(b"s3cret", body, &format!("sha256={signature}")));
        assert!(
            check_hmac(b"s3cret", body, &signature),
            "Gitea's bare hex form"
        );
        assert!(!check_hmac(b"other", body, &format!("sha256={signature}")));
        assert!(!check_hmac(b"s3cret", b"changed", &signature));
        assert!(!check_hmac(b"s3cret", body, "sha256=zz"));
        assert!(same_token(b"abc", b"abc"));
        assert!(!same_token(b"abc", b"abd") && !same_token(b"abc", b"ab"));
    }

    #[test]
    fn pushes_from_each_forge() {
        let github = json!({"ref": "refs/heads/main", "repository": {
            "clone_url": "https://github.com/org/app.git", "ssh_url": "git@github.com:org/app.git",
            "html_url": "https://github.com/org/app", "default_branch": "main"}});
        let push = parse_push("github", &github).unwrap().unwrap();
        assert_eq!(push.repositories, ["github.com/org/app"]);
        assert_eq!(push.default_branch.as_deref(), Some("main"));
        let gitlab = json!({"ref": "refs/tags/v1.0.0", "project": {
            "git_http_url": "https://gitlab.example.com/team/app.git",
            "git_ssh_url": "git@gitlab.example.com:team/app.git", "default_branch": "main"}});
        let push = parse_push("gitlab", &gitlab).unwrap().unwrap();
        assert_eq!(push.repositories, ["gitlab.example.com/team/app"]);
        assert!(revision_matches(Some("v1.0.0"), &push));
        assert!(!revision_matches(Some("main"), &push));
        assert_eq!(parse_push("github", &json!({"zen": "ping"})), Ok(None));
        assert!(matches!(
            parse_push("github", &json!({"ref": "refs/heads/x"})),
            Err(Rejection::BadRequest(_))
        ));
    }

    #[test]
    fn revisions() {
        let push = Push {
            repositories: vec![],
            reference: "refs/heads/main".into(),
            default_branch: Some("main".into()),
        };
        assert!(revision_matches(None, &push));
        assert!(revision_matches(Some("main"), &push));
        assert!(!revision_matches(Some("dev"), &push));
        assert!(
            !revision_matches(Some(&"a".repeat(40)), &push),
            "a pinned commit never moves"
        );
        let other = Push {
            reference: "refs/heads/dev".into(),
            ..push
        };
        assert!(!revision_matches(Some("HEAD"), &other));
    }

    #[test]
    fn only_writes_to_refs_wake_applications() {
        use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind};
        let event = |kind, path: &str| notify::Event::new(kind).add_path(path.into());
        let head = "/srv/app.git/refs/heads/main";
        assert!(is_ref_write(&event(
            EventKind::Modify(ModifyKind::Any),
            head
        )));
        assert!(is_ref_write(&event(
            EventKind::Create(CreateKind::File),
            "/srv/app.git/packed-refs"
        )));
        assert!(!is_ref_write(&event(
            EventKind::Access(AccessKind::Open(AccessMode::Read)),
            head
        )));
        assert!(!is_ref_write(&event(
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            head
        )));
        assert!(!is_ref_write(&event(
            EventKind::Modify(ModifyKind::Any),
            "/srv/app.git/objects/ab/cd"
        )));
    }

    #[tokio::test]
    async fn a_push_wakes_its_followers_only() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let triggers = Triggers::new(tx);
        let mut app = Application::new("web", Default::default());
        app.metadata.namespace = Some("team".into());
        app.spec.source.repo_url = "https://github.com/org/app.git".into();
        app.spec.source.target_revision = Some("main".into());
        triggers.register(&app);
        let push = Push {
            repositories: vec!["github.com/org/app".into()],
            reference: "refs/heads/main".into(),
            default_branch: None,
        };
        let delivery = Delivery {
            provider: "github".into(),
            id: "d1".into(),
            ..Default::default()
        };
        assert_eq!(triggers.push(&push, &delivery), ["team/web"]);
        assert_eq!(rx.try_recv().unwrap().name, "web");
        assert_eq!(triggers.delivery(&key_of(&app)).unwrap().id, "d1");
        let elsewhere = Push {
            repositories: vec!["github.com/org/other".into()],
            ..push
        };
        assert!(triggers.push(&elsewhere, &delivery).is_empty());
        triggers.forget(&key_of(&app));
        assert!(triggers.delivery(&key_of(&app)).is_none());
    }
}
