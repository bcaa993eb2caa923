//! Hot reload: a pipeline whose configuration file is watched, and restarted when the file
//! changes to a valid configuration.
//!
//! A change is read when the file's content differs (inotify on its directory, so editors
//! that replace the file are seen, plus a poll every two seconds). An invalid file is
//! reported — the error names the line, and `logpipe_config_last_reload_successful` drops to
//! 0 — while the running pipeline carries on. A valid one stops the running pipeline, which
//! drains (sinks finish, the index commits and keeps each file's position), then starts the
//! new one, which resumes every file where the old one stopped: no record is lost or repeated.
//! If the new one cannot start (a port taken, say), the last good configuration starts again.
//! The query API always answers from the pipeline running now.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::config::PipelineConfig;
use crate::{Environment, Pipeline, start};

/// The outcome of reloads, for `/metrics`.
#[derive(Default)]
struct Reloads {
    successful: std::sync::atomic::AtomicBool,
    last_success: std::sync::atomic::AtomicI64,
    reloads: std::sync::atomic::AtomicU64,
    failures: std::sync::atomic::AtomicU64,
}

impl Reloads {
    fn render(&self) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        format!(
            "# HELP logpipe_config_last_reload_successful Whether the last configuration reload attempt was successful.\n\
             # TYPE logpipe_config_last_reload_successful gauge\n\
             logpipe_config_last_reload_successful {}\n\
             # HELP logpipe_config_last_reload_success_timestamp_seconds Timestamp of the last successful configuration reload.\n\
             # TYPE logpipe_config_last_reload_success_timestamp_seconds gauge\n\
             logpipe_config_last_reload_success_timestamp_seconds {}\n\
             # HELP logpipe_config_reloads_total Configuration changes the pipeline restarted with.\n\
             # TYPE logpipe_config_reloads_total counter\n\
             logpipe_config_reloads_total {}\n\
             # HELP logpipe_config_reload_failures_total Configuration reloads refused (invalid file) or failed to start.\n\
             # TYPE logpipe_config_reload_failures_total counter\n\
             logpipe_config_reload_failures_total {}\n",
            u8::from(self.successful.load(Relaxed)),
            self.last_success.load(Relaxed),
            self.reloads.load(Relaxed),
            self.failures.load(Relaxed),
        )
    }

    fn succeeded(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.successful.store(true, Relaxed);
        self.last_success
            .store(jiff::Timestamp::now().as_second(), Relaxed);
    }

    fn failed(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.successful.store(false, Relaxed);
        self.failures.fetch_add(1, Relaxed);
    }
}

/// A pipeline that follows its configuration file.
pub struct Reloading {
    /// The query API of whichever pipeline runs (with the reload metrics on `/metrics`).
    pub router: axum::Router,
    /// Ends when the pipeline has drained after shutdown.
    pub done: tokio::task::JoinHandle<()>,
    /// The pipeline running now (tests and the caller's address reporting read it).
    pub current: Arc<RwLock<Current>>,
}

/// What the running pipeline offers.
#[derive(Clone)]
pub struct Current {
    /// Its query API.
    pub router: axum::Router,
    /// Where its network sources listen.
    pub listening: std::collections::BTreeMap<String, std::net::SocketAddr>,
    /// Its index.
    pub index: Option<Arc<crate::index::LogIndex>>,
}

impl Current {
    fn of(pipeline: &Pipeline) -> Self {
        Self {
            router: crate::api::router(pipeline.index.clone(), pipeline.metrics.clone()),
            listening: pipeline.listening.clone(),
            index: pipeline.index.clone(),
        }
    }
}

/// Starts the pipeline of the file at `path` and follows the file until `shutdown`.
///
/// # Errors
/// When the file is not a valid configuration, or its pipeline cannot start.
pub async fn start_reloading(
    path: PathBuf,
    environment: Environment,
    shutdown: CancellationToken,
) -> anyhow::Result<Reloading> {
    let text = std::fs::read_to_string(&path)?;
    let config = PipelineConfig::parse(&text, &path.display().to_string())?;
    let run = shutdown.child_token();
    let pipeline = start(config.clone(), environment.clone(), run.clone()).await?;
    let reloads = Arc::new(Reloads::default());
    reloads.succeeded();
    let current = Arc::new(RwLock::new(Current::of(&pipeline)));
    let router = swapping_router(current.clone(), reloads.clone());
    let done = tokio::spawn(follow(
        path,
        text,
        config,
        environment,
        Running { pipeline, run },
        current.clone(),
        reloads,
        shutdown,
    ));
    Ok(Reloading {
        router,
        done,
        current,
    })
}

struct Running {
    pipeline: Pipeline,
    run: CancellationToken,
}

impl Running {
    async fn stop(self) {
        self.run.cancel();
        self.pipeline.wait().await;
    }
}

/// Routes each request to the running pipeline's API; `/metrics` adds the reload families.
fn swapping_router(current: Arc<RwLock<Current>>, reloads: Arc<Reloads>) -> axum::Router {
    let metrics_current = current.clone();
    axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let router = metrics_current.read().router.clone();
                let reloads = reloads.clone();
                async move {
                    let request = http::Request::get("/metrics")
                        .body(axum::body::Body::empty())
                        .unwrap_or_default();
                    let response = router.oneshot(request).await.unwrap_or_default();
                    let (mut parts, body) = response.into_parts();
                    parts.headers.remove(http::header::CONTENT_LENGTH);
                    let bytes = axum::body::to_bytes(body, usize::MAX)
                        .await
                        .unwrap_or_default();
                    let mut text = String::from_utf8_lossy(&bytes).into_owned();
                    text.push_str(&reloads.render());
                    axum::response::Response::from_parts(parts, axum::body::Body::from(text))
                }
            }),
        )
        .fallback(move |request: axum::extract::Request| {
            let router = current.read().router.clone();
            async move { router.oneshot(request).await.unwrap_or_default() }
        })
}

#[allow(clippy::too_many_arguments)]
async fn follow(
    path: PathBuf,
    mut text: String,
    mut config: PipelineConfig,
    environment: Environment,
    mut running: Running,
    current: Arc<RwLock<Current>>,
    reloads: Arc<Reloads>,
    shutdown: CancellationToken,
) {
    let (changed_tx, mut changed) = tokio::sync::mpsc::channel::<()>(1);
    // (the sender kept here too: without a watcher, `recv` waits instead of ending at once)
    let _watcher = watch(&path, changed_tx.clone());
    let _keep = changed_tx;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = changed.recv() => {
                // a file written in place is empty or half written for a moment: read it
                // once the writes have been quiet for a little while
                while tokio::time::timeout(Duration::from_millis(200), changed.recv())
                    .await
                    .is_ok_and(|event| event.is_some())
                {}
            }
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        let Ok(new_text) = std::fs::read_to_string(&path) else {
            continue;
        };
        if new_text == text {
            continue;
        }
        text = new_text;
        let new_config = match PipelineConfig::parse(&text, &path.display().to_string()) {
            Ok(new_config) => new_config,
            Err(error) => {
                tracing::error!(%error, "configuration not reloaded; the running pipeline carries on");
                reloads.failed();
                continue;
            }
        };
        tracing::info!(path = %path.display(), "configuration changed; restarting the pipeline");
        running.stop().await;
        let run = shutdown.child_token();
        match start(new_config.clone(), environment.clone(), run.clone()).await {
            Ok(pipeline) => {
                config = new_config;
                reloads.succeeded();
                reloads
                    .reloads
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                *current.write() = Current::of(&pipeline);
                running = Running { pipeline, run };
            }
            Err(error) => {
                // whatever the failed start had set up (a bound port, a watch) goes with it
                run.cancel();
                tracing::error!(
                    error = format!("{error:#}"),
                    "the new configuration failed to start; starting the last good one again"
                );
                reloads.failed();
                let Some(restarted) = restart(&config, &environment, &shutdown).await else {
                    return;
                };
                *current.write() = Current::of(&restarted.pipeline);
                running = restarted;
            }
        }
    }
    running.stop().await;
}

/// Starts `config` again, retrying with backoff (ports a failed start held are released
/// asynchronously) until it starts or `shutdown`.
async fn restart(
    config: &PipelineConfig,
    environment: &Environment,
    shutdown: &CancellationToken,
) -> Option<Running> {
    let mut delay = Duration::from_millis(200);
    loop {
        let run = shutdown.child_token();
        match start(config.clone(), environment.clone(), run.clone()).await {
            Ok(pipeline) => return Some(Running { pipeline, run }),
            Err(error) => {
                run.cancel();
                tracing::error!(
                    error = format!("{error:#}"),
                    "the last good configuration failed to start again; retrying"
                );
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// Wakes `changed` when the file is written, created, renamed or removed; its directory is
/// watched, since editors often replace the file. Reads (ours included) and other files are
/// ignored.
fn watch(
    path: &Path,
    changed: tokio::sync::mpsc::Sender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name()?.to_owned();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else {
            return;
        };
        let ours = event
            .paths
            .iter()
            .any(|p| p.file_name() == Some(name.as_os_str()));
        if ours && !matches!(event.kind, notify::EventKind::Access(_)) {
            let _ = changed.try_send(());
        }
    })
    .ok()?;
    watcher
        .watch(&directory, notify::RecursiveMode::NonRecursive)
        .ok()?;
    Some(watcher)
}
