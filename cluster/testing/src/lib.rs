//! Test harness for Kelson: an in-process API server ([`TestServer`]) that kube-rs clients talk
//! to over real HTTPS, the `kelson` binary as a child process ([`KelsonProcess`]), and the
//! versioned kubectl binaries ([`Kubectl`]). The etcd helper lives in
//! `kelson_storage::test_support`.

pub mod bench;
pub mod git;

/// A child process killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct ChildGuard(pub std::process::Child);

impl ChildGuard {
    /// Starts `program` with `args`, its output discarded.
    ///
    /// # Panics
    /// When the program is missing (set-up installs every peer the tests run) or cannot start.
    #[must_use]
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(program: &str, args: &[S]) -> Self {
        assert!(
            Path::new(program).exists(),
            "{program} is missing (scripts/setup.sh installs it)"
        );
        Self(
            Command::new(program)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("{program}: {e}")),
        )
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kelson_apiserver::{Config, Running};
use kelson_storage::{Embedded, EmbeddedOptions, Storage};
use tokio_util::sync::CancellationToken;

/// An API server running in this process on 127.0.0.1 with its own data directory.
pub struct TestServer {
    /// The storage the server uses (kept across restarts).
    pub storage: Arc<dyn Storage>,
    /// The data directory (TLS material, kubeconfig).
    pub dir: PathBuf,
    /// Where it listens.
    pub addr: SocketAddr,
    running: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
    api: Option<Arc<kelson_apiserver::ApiServer>>,
    _temp: Option<tempfile::TempDir>,
}

impl TestServer {
    /// Starts a server over a fresh embedded store in a temporary directory.
    ///
    /// # Panics
    /// When the server does not start.
    pub async fn start() -> Self {
        let temp = tempfile::tempdir().expect("temp dir");
        let storage: Arc<dyn Storage> = Arc::new(
            Embedded::open(EmbeddedOptions::at(temp.path().join("storage/state.redb")))
                .expect("open storage"),
        );
        Self::start_in(storage, temp).await
    }

    /// Starts a server over the given storage (e.g. etcd).
    ///
    /// # Panics
    /// When the server does not start.
    pub async fn with_storage(storage: Arc<dyn Storage>) -> Self {
        Self::start_in(storage, tempfile::tempdir().expect("temp dir")).await
    }

    async fn start_in(storage: Arc<dyn Storage>, temp: tempfile::TempDir) -> Self {
        let dir = temp.path().to_owned();
        let mut server = Self {
            storage,
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            running: None,
            api: None,
            _temp: Some(temp),
        };
        server.restart().await;
        server
    }

    /// Stops the server (connections are closed; storage stays).
    pub async fn stop(&mut self) {
        if let Some((token, handle)) = self.running.take() {
            token.cancel();
            let _ = handle.await;
        }
    }

    /// (Re)starts the server on the same address.
    ///
    /// # Panics
    /// When the server does not start.
    pub async fn restart(&mut self) {
        self.stop().await;
        let mut config = Config::new(&self.dir);
        config.listen = self.addr;
        let token = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<Running>();
        let storage = self.storage.clone();
        let shutdown = token.clone();
        let handle = tokio::spawn(async move {
            if let Err(error) =
                kelson_apiserver::run_with_storage(config, storage, shutdown, Some(tx)).await
            {
                eprintln!("test server failed: {error}");
            }
        });
        let running = tokio::time::timeout(Duration::from_secs(20), rx)
            .await
            .expect("server starts")
            .expect("server runs");
        self.api = Some(running.server.clone());
        let port: u16 = running
            .url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port in url");
        self.addr = SocketAddr::from(([127, 0, 0, 1], port));
        self.running = Some((token, handle));
    }

    /// The running server, for calls tests make in-process.
    ///
    /// # Panics
    /// When the server is not running.
    #[must_use]
    pub fn api(&self) -> Arc<kelson_apiserver::ApiServer> {
        self.api.clone().expect("server running")
    }

    /// An in-process client to the running server as `user`.
    ///
    /// # Panics
    /// When the server is not running.
    #[must_use]
    pub fn in_process_client(&self, user: &str) -> kube::Client {
        let api = self.api.as_ref().expect("server running");
        api.client(kelson_apiserver::auth::User::new(
            user,
            vec!["system:masters".into()],
        ))
    }

    /// The admin kubeconfig path.
    #[must_use]
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig.yaml")
    }

    /// A kube client authenticated as the admin.
    ///
    /// # Panics
    /// When the kubeconfig is unusable.
    pub async fn client(&self) -> kube::Client {
        client_for(&self.kubeconfig()).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some((token, _)) = &self.running {
            token.cancel();
        }
    }
}

/// A kube client from a kubeconfig file.
///
/// # Panics
/// When the kubeconfig is unusable.
pub async fn client_for(kubeconfig: &Path) -> kube::Client {
    client_with(kubeconfig, true).await
}

/// A kube client from a kubeconfig file; without `retries`, 429, 503 and 504 answers reach the
/// caller at once instead of being retried (for tests of refusals).
///
/// # Panics
/// When the kubeconfig is unusable.
pub async fn client_with(kubeconfig: &Path, retries: bool) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig).expect("read kubeconfig");
    let mut config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("kubeconfig loads");
    config.default_retry = retries;
    kube::Client::try_from(config).expect("client builds")
}

/// The `kelson` binary running as a child process; killed (SIGKILL) on drop.
pub struct KelsonProcess {
    child: Child,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// `https://127.0.0.1:<port>`.
    pub url: String,
}

impl KelsonProcess {
    /// Runs `kelson server` on 127.0.0.1 (port 0 unless `args` says otherwise) and waits until
    /// it wrote `addresses.json` for this start. The node agent runs only when `args` give a
    /// `--node-name`, since tests share one containerd, and the service proxy only when they give
    /// `--proxy-metrics-listen`, since they share the host's network.
    ///
    /// # Errors
    /// When it exits or does not come up within 30 s.
    pub fn server(binary: &Path, data_dir: &Path, args: &[&str]) -> anyhow::Result<Self> {
        let addresses = data_dir.join("addresses.json");
        let _ = std::fs::remove_file(&addresses);
        let mut command = Command::new(binary);
        command.arg("server").arg("--data-dir").arg(data_dir);
        if !args.iter().any(|a| a.starts_with("--listen")) {
            command.arg("--listen=127.0.0.1:0");
        }
        if !args.iter().any(|a| a.starts_with("--gitops-listen")) {
            command.arg("--gitops-listen=127.0.0.1:0");
        }
        if !args.iter().any(|a| a.starts_with("--node-exporter-listen")) {
            command.arg("--node-exporter-listen=127.0.0.1:0");
        }
        if !args.iter().any(|a| a.starts_with("--state-metrics-listen")) {
            command.arg("--state-metrics-listen=127.0.0.1:0");
        }
        if !args.iter().any(|a| a.starts_with("--logs-listen")) {
            command.arg("--logs-listen=127.0.0.1:0");
        }
        if !args
            .iter()
            .any(|a| a.starts_with("--scheduler-metrics-listen"))
        {
            command.arg("--scheduler-metrics-listen=127.0.0.1:0");
        }
        if !args
            .iter()
            .any(|a| a.starts_with("--controller-manager-metrics-listen"))
        {
            command.arg("--controller-manager-metrics-listen=127.0.0.1:0");
        }
        // tests share the host's network: only a test that gives the proxy's metrics address
        // runs a service proxy
        if !args.iter().any(|a| a.starts_with("--proxy-metrics-listen")) {
            command.arg("--disable-proxy");
        }
        // tests share one containerd: only a test that names its node runs an agent
        if !args.iter().any(|a| a.starts_with("--node-name")) {
            command.arg("--disable-agent");
        } else if !args.iter().any(|a| a.starts_with("--kubelet-port")) {
            command.arg("--kubelet-port=0");
        }
        let log =
            std::fs::File::create(data_dir.with_extension("log")).context("create log file")?;
        command.args(args).stdout(Stdio::null()).stderr(log);
        let mut child = command.spawn().context("spawn kelson")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&addresses)
                && let Ok(value) = serde_json::from_str::<serde_json::Value>(&text)
                && let Some(url) = value["apiserver"].as_str()
            {
                return Ok(Self {
                    child,
                    data_dir: data_dir.to_owned(),
                    url: url.to_owned(),
                });
            }
            if let Some(status) = child.try_wait()? {
                let log =
                    std::fs::read_to_string(data_dir.with_extension("log")).unwrap_or_default();
                bail!("kelson exited with {status}: {log}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("kelson did not start within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The admin kubeconfig.
    #[must_use]
    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir.join("kubeconfig.yaml")
    }

    /// The address of the GitOps listener (webhooks, metrics), once the reconciler runs.
    ///
    /// # Panics
    /// When it does not listen within 30 s.
    #[must_use]
    pub fn gitops_address(&self) -> String {
        self.address("gitops/address", "the GitOps listener")
    }

    /// The address of its cluster-state exporter (waits until it listens).
    ///
    /// # Panics
    /// When it does not start within 30 s.
    #[must_use]
    pub fn state_metrics_address(&self) -> String {
        self.address("state-metrics/address", "the cluster-state exporter")
    }

    /// The address of its node's log query API (waits until it listens; needs the agent).
    ///
    /// # Panics
    /// When it does not start within 30 s.
    #[must_use]
    pub fn logs_address(&self) -> String {
        self.address("agent/logs/address", "the log query API")
    }

    /// The address a listener wrote to `file` under the data directory.
    fn address(&self, file: &str, what: &str) -> String {
        let path = self.data_dir.join(file);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(address) = std::fs::read_to_string(&path)
                && !address.is_empty()
            {
                return address;
            }
            assert!(Instant::now() < deadline, "{what} did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The port it listens on.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }

    /// The process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    ///
    /// # Errors
    /// When it does not exit within 10 s.
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("kelson did not exit within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for KelsonProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One of the installed kubectl versions, with its own discovery cache.
pub struct Kubectl {
    binary: PathBuf,
    kubeconfig: PathBuf,
    cache: tempfile::TempDir,
}

/// Where the versioned kubectl binaries live.
pub const KUBECTL_DIR: &str = "/usr/lib/google-cloud-sdk/bin";

impl Kubectl {
    /// kubectl `1.<minor>` against a kubeconfig.
    ///
    /// # Panics
    /// When that kubectl is not installed.
    #[must_use]
    pub fn new(minor: u32, kubeconfig: &Path) -> Self {
        let binary = PathBuf::from(format!("{KUBECTL_DIR}/kubectl.1.{minor}"));
        assert!(binary.exists(), "{} is not installed", binary.display());
        Self {
            binary,
            kubeconfig: kubeconfig.to_owned(),
            cache: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// The kubectl command with its kubeconfig and cache set, ready for `args`.
    #[must_use]
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.cache.path())
            .arg(format!("--cache-dir={}", self.cache.path().display()))
            .args(args);
        command
    }

    /// Runs kubectl with `args` (and `stdin`), returning its output whatever the exit code.
    ///
    /// # Panics
    /// When kubectl cannot be started.
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut child = self
            .command(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kubectl");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes())
                .expect("write stdin");
        }
        child.wait_with_output().expect("kubectl output")
    }

    /// Runs kubectl and returns stdout, panicking with stderr when it fails.
    ///
    /// # Panics
    /// When kubectl fails.
    pub fn ok(&self, args: &[&str]) -> String {
        self.ok_with(args, None)
    }

    /// Like [`Kubectl::ok`], with standard input.
    ///
    /// # Panics
    /// When kubectl fails.
    pub fn ok_with(&self, args: &[&str], stdin: Option<&str>) -> String {
        let output = self.run(args, stdin);
        assert!(
            output.status.success(),
            "{} {args:?} failed: {}\n{}",
            self.binary.display(),
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Like [`Kubectl::ok_with`], retried until it succeeds or `timeout` passes (for what
    /// kubectl only sees after it rediscovers the server).
    ///
    /// # Panics
    /// When kubectl still fails at the deadline.
    pub fn ok_within(&self, timeout: Duration, args: &[&str], stdin: Option<&str>) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let output = self.run(args, stdin);
            if output.status.success() {
                return String::from_utf8_lossy(&output.stdout).into_owned();
            }
            assert!(
                Instant::now() < deadline,
                "{args:?} still failing after {timeout:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Runs kubectl expecting failure; returns stderr.
    ///
    /// # Panics
    /// When kubectl succeeds.
    #[must_use]
    pub fn fails(&self, args: &[&str], stdin: Option<&str>) -> String {
        let output = self.run(args, stdin);
        assert!(
            !output.status.success(),
            "{args:?} unexpectedly succeeded: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    }
}

/// A whole simulated cluster in this process: API server, scheduler, controllers and hollow
/// nodes.
pub struct TestCluster {
    /// The API server.
    pub server: TestServer,
    /// The hollow nodes.
    pub nodes: kelson_kubelet::hollow::HollowNodes,
    components: CancellationToken,
}

impl TestCluster {
    /// Starts a cluster with `nodes` hollow nodes (pods start after 100 ms; leases renew every
    /// second and a node silent for 4 s is unreachable).
    ///
    /// # Panics
    /// When something does not start.
    pub async fn start(nodes: usize) -> Self {
        Self::start_with(kelson_kubelet::hollow::HollowConfig {
            nodes,
            start_delay: Duration::from_millis(100),
            run_duration: Duration::from_millis(500),
            lease_period: Duration::from_secs(1),
            ..Default::default()
        })
        .await
    }

    /// Starts a cluster with hollow nodes configured by `hollow`.
    ///
    /// # Panics
    /// When something does not start.
    pub async fn start_with(hollow: kelson_kubelet::hollow::HollowConfig) -> Self {
        let server = TestServer::start().await;
        let components = CancellationToken::new();
        let scheduler_client = server.in_process_client("system:kube-scheduler");
        tokio::spawn(kelson_scheduler::run(
            scheduler_client,
            kelson_scheduler::Config::default(),
            components.clone(),
        ));
        let controllers_client = server.in_process_client("system:kube-controller-manager");
        let root_ca = std::fs::read_to_string(server.dir.join("tls/ca.crt")).ok();
        let options = kelson_controllers::Options {
            root_ca,
            node_lifecycle: kelson_controllers::nodelifecycle::Config {
                // a node is unreachable after missing about four lease renewals
                grace_period: (hollow.lease_period * 4).max(Duration::from_secs(4)),
                period: Duration::from_millis(250),
            },
            volumes: kelson_controllers::volume::Config {
                directory: Some(server.dir.join("volumes")),
            },
            ..Default::default()
        };
        tokio::spawn(kelson_controllers::run_with(
            controllers_client,
            options,
            components.clone(),
        ));
        let nodes = kelson_kubelet::hollow::start(
            server.in_process_client("system:node:hollow"),
            hollow,
            components.clone(),
        )
        .await
        .expect("hollow nodes start");
        Self {
            server,
            nodes,
            components,
        }
    }

    /// A kube client over HTTPS as the admin.
    pub async fn client(&self) -> kube::Client {
        self.server.client().await
    }

    /// A kube client over HTTPS as the admin that does not retry 429, 503 and 504 answers.
    pub async fn client_without_retries(&self) -> kube::Client {
        client_with(&self.server.kubeconfig(), false).await
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.components.cancel();
    }
}

/// Polls `check` until it returns `Some`, for at most `timeout`.
///
/// # Panics
/// When the timeout passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `check` until it returns `Some`, for at most `timeout`, blocking the thread (for tests
/// that drive processes rather than a runtime).
///
/// # Panics
/// When the timeout passes.
pub fn wait_for<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes, when dropped, every sandbox (with its containers and log directory) that the agent
/// of node `node` started on this machine's containerd, so a failing test leaves nothing behind.
pub struct RuntimeCleanup {
    node: String,
}

impl RuntimeCleanup {
    /// A guard for the agent of `node`.
    #[must_use]
    pub fn new(node: &str) -> Self {
        Self {
            node: node.to_owned(),
        }
    }

    /// The sandboxes of the node still in containerd.
    ///
    /// # Errors
    /// When containerd cannot be reached.
    pub fn sandboxes(&self) -> anyhow::Result<Vec<String>> {
        let node = self.node.clone();
        on_fresh_runtime(async move {
            let cri =
                kelson_kubelet::cri::Cri::connect(Path::new(kelson_kubelet::cri::DEFAULT_SOCKET))
                    .await?;
            let labels = [(kelson_kubelet::pods::spec::NODE_LABEL, node.as_str())];
            Ok(cri
                .list_pod_sandboxes(&labels)
                .await?
                .into_iter()
                .map(|s| s.id)
                .collect())
        })
    }
}

fn on_fresh_runtime<T: Send + 'static>(
    work: impl std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
) -> anyhow::Result<T> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(work)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("cleanup thread panicked"))?
}

impl Drop for RuntimeCleanup {
    fn drop(&mut self) {
        let node = self.node.clone();
        let _ = on_fresh_runtime(async move {
            let cri =
                kelson_kubelet::cri::Cri::connect(Path::new(kelson_kubelet::cri::DEFAULT_SOCKET))
                    .await?;
            let labels = [(kelson_kubelet::pods::spec::NODE_LABEL, node.as_str())];
            // twice: a sandbox the killed agent asked for may still be in the making
            for pass in 0..2 {
                if pass > 0 {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                for sandbox in cri.list_pod_sandboxes(&labels).await? {
                    let _ = cri.stop_pod_sandbox(&sandbox.id).await;
                    let _ = cri.remove_pod_sandbox(&sandbox.id).await;
                    let metadata = sandbox.metadata.unwrap_or_default();
                    kelson_kubelet::pods::volumes::unmount_pod_volumes(&metadata.uid);
                    kelson_kubelet::pods::cleanup_pod_files(&kelson_kubelet::pods::spec::PodKey {
                        namespace: metadata.namespace,
                        name: metadata.name,
                        uid: metadata.uid,
                    });
                }
            }
            Ok(())
        });
    }
}
