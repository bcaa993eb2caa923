//! The `kelson` binary: a thin CLI over the Kelson crates.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kelson_common::client_metrics::ClientMetrics;
use tokio_util::sync::CancellationToken;

mod app;
mod logs;
mod node_exporter;
mod state_metrics;
mod telemetry;

/// mimalloc (its v2, which returns freed memory within milliseconds) rather than glibc's
/// allocator, whose per-thread arenas contend and fragment under the control plane's many
/// small, short-lived allocations on async worker threads: a third of the CPU went to
/// malloc and free with 1000 hollow nodes, and scheduling runs 1.6× faster without that
/// (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Kelson: a Kubernetes distribution whose desired state comes from Git.
#[derive(Parser)]
#[command(name = "kelson", version, about)]
struct Cli {
    /// Log filter, e.g. `info` or `kelson_apiserver=debug`.
    #[arg(long, env = "KELSON_LOG", default_value = "info", global = true)]
    log: String,
    /// Export traces (API requests, controller reconciles, GitOps syncs, pod starts) to this
    /// OTLP/gRPC endpoint, e.g. `http://127.0.0.1:4317`; log lines then carry trace ids.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", global = true)]
    otlp_endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane: the Kubernetes API server over embedded storage or etcd, with
    /// the scheduler, the controllers and the GitOps reconciler (each under leader election),
    /// the cluster-state exporter (:8080), and a node agent that runs pods on this machine's
    /// containerd and serves its node metrics (:9100) (unless --disable-agent).
    Server(ServerArgs),
    /// Start the whole stack on this machine after preflight checks: the control plane and this
    /// machine's node agent (as `kelson server`), then print how to use it.
    Up(UpArgs),
    /// Join this machine to a cluster as a node: the kubelet on the local containerd, with the
    /// token `kelson server` printed (the cluster CA is pinned by the token's hash).
    Agent(AgentArgs),
    /// Run simulated ("hollow") nodes against a cluster: they register, heartbeat and run the
    /// pods bound to them on a fake runtime.
    Sim(SimArgs),
    /// Run only the GitOps reconciler, against any Kubernetes cluster: installs the Application
    /// definition there and keeps its Applications synced (leader-elected, so several may run).
    Reconciler(ReconcilerArgs),
    /// Look at and steer GitOps Applications: list, get, diff, sync, history, verify-history,
    /// rollback, suspend, resume.
    App(app::AppArgs),
    /// Serve this machine's metrics as Prometheus' node_exporter does (same metric names and
    /// flags); `kelson server` and `kelson agent` already serve them on :9100.
    NodeExporter(node_exporter::NodeExporterArgs),
    /// Serve a cluster's state as kube-state-metrics does (same metric families), watching it
    /// through a kubeconfig; `kelson server` already serves its own on :8080.
    StateMetrics(state_metrics::StateMetricsArgs),
    /// Run a log pipeline from a configuration file (sources, tag routing, the tantivy index
    /// and its query API); `kelson server` and `kelson agent` already run one for their node.
    Logpipe(logs::LogpipeArgs),
    /// Search and follow the logs indexed on a node: `kelson logs search QUERY`, `kelson logs
    /// tail`.
    Logs(logs::LogsArgs),
}

impl Command {
    /// The OpenTelemetry service name of this command's spans.
    fn service_name(&self) -> &'static str {
        match self {
            Command::Server(_) | Command::Up(_) => "kelson-server",
            Command::Agent(_) | Command::Sim(_) => "kelson-agent",
            Command::Reconciler(_) => "kelson-reconciler",
            Command::App(_) | Command::Logs(_) => "kelson-cli",
            Command::NodeExporter(_) => "kelson-node-exporter",
            Command::StateMetrics(_) => "kelson-state-metrics",
            Command::Logpipe(_) => "kelson-logpipe",
        }
    }
}

#[derive(clap::Args)]
struct UpArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Preflight checks whose errors to ignore (names as printed, or `all`).
    #[arg(long, value_delimiter = ',')]
    ignore_preflight_errors: Vec<String>,
    /// Do not create the example GitOps repository (DATA_DIR/gitops/example.git) and its
    /// Application `example`.
    #[arg(long)]
    no_example: bool,
}

#[derive(clap::Args)]
struct ReconcilerArgs {
    /// Kubeconfig of the cluster (default: $KUBECONFIG, else ~/.kube/config, else in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Directory for repository caches and the audit log.
    #[arg(
        long,
        env = "KELSON_GITOPS_DIR",
        default_value = "/var/lib/kelson-gitops"
    )]
    data_dir: PathBuf,
    /// Address of the webhook and metrics listener.
    #[arg(long, default_value = "0.0.0.0:9780")]
    listen: SocketAddr,
    /// Namespace of the leader-election Lease and of the webhook Secret.
    #[arg(long, default_value = "kube-system")]
    namespace: String,
    /// ServiceAccount (in each Application's namespace) that Applications naming none sync
    /// as; without it they sync as the reconciler itself.
    #[arg(long)]
    default_service_account: Option<String>,
}

#[derive(clap::Args)]
struct AgentArgs {
    /// Preflight checks whose errors to ignore (names as printed, or `all`).
    #[arg(long, value_delimiter = ',')]
    ignore_preflight_errors: Vec<String>,
    /// URL of the API server, e.g. https://10.0.0.1:6443.
    #[arg(long, env = "KELSON_SERVER")]
    server: String,
    /// Join token printed by `kelson server` (also in its DATA_DIR/node-token).
    #[arg(long, env = "KELSON_TOKEN")]
    token: String,
    /// Directory for the agent's pod volumes.
    #[arg(
        long,
        env = "KELSON_AGENT_DIR",
        default_value = "/var/lib/kelson-agent"
    )]
    data_dir: PathBuf,
    #[command(flatten)]
    node: NodeArgs,
}

/// The node agent's flags, shared by `server`, `up` and `agent`.
#[derive(clap::Args)]
struct NodeArgs {
    /// Name of this machine's node (default: the host name).
    #[arg(long, env = "KELSON_NODE_NAME")]
    node_name: Option<String>,
    /// Address of this node (default: the source address of the default route).
    #[arg(long)]
    node_ip: Option<std::net::IpAddr>,
    /// Port of the kubelet API (logs, exec, port-forward); 0 picks a free port.
    #[arg(long, default_value_t = 10250)]
    kubelet_port: u16,
    /// Rotate a container's log when it grows past this many bytes.
    #[arg(long, default_value_t = 10 << 20)]
    container_log_max_size: u64,
    /// Log files kept per container, the live one included.
    #[arg(long, default_value_t = 5)]
    container_log_max_files: usize,
    /// Directory of static pod manifests (default: the agent directory's `manifests`).
    #[arg(long)]
    pod_manifest_path: Option<PathBuf>,
    /// containerd's CRI socket.
    #[arg(long, default_value = kelson_kubelet::cri::DEFAULT_SOCKET)]
    container_runtime_endpoint: PathBuf,
    /// Address of the node exporter (node_exporter's metrics at /metrics); port 0 picks one
    /// (written to the agent directory's node-exporter/address).
    #[arg(long, default_value = "0.0.0.0:9100")]
    node_exporter_listen: SocketAddr,
    /// Do not serve node metrics (run `kelson node-exporter` with its own flags instead).
    #[arg(long)]
    disable_node_exporter: bool,
    #[command(flatten)]
    logs: logs::NodeLogArgs,
    /// Do not run the service proxy (nftables rules for Service cluster IPs and node ports).
    #[arg(long)]
    disable_proxy: bool,
    /// How the service proxy steers Service traffic: `nftables` (rules in the kernel, as
    /// kube-proxy's nftables mode), `userspace` (the node holds the cluster IPs and relays from
    /// sockets; for nodes without nftables) or `auto` (nftables when it works).
    #[arg(long, default_value = "auto")]
    proxy_mode: kelson_proxy::Mode,
    /// The pod network; traffic to Services from elsewhere is masqueraded.
    #[arg(long, default_value = "10.88.0.0/16")]
    cluster_cidr: String,
    /// Address of the service proxy's metrics (kube-proxy's kubeproxy_* families, and the
    /// cluster DNS's coredns_* ones); port 0 picks one (written to the agent directory's
    /// proxy/address).
    #[arg(long, default_value = "127.0.0.1:10249")]
    proxy_metrics_listen: SocketAddr,
    /// Do not serve cluster DNS on this node (it runs with the proxy).
    #[arg(long)]
    disable_cluster_dns: bool,
    /// Port of this node's DNS server, on the node's address (0 picks one: the agent
    /// directory's dns/address); the proxy sends the cluster DNS Service's traffic to it.
    #[arg(long, default_value_t = 53)]
    cluster_dns_port: u16,
    /// The cluster DNS Service's address, written into pods' resolv.conf (used while this
    /// node runs the proxy; otherwise pods get the node's resolver).
    #[arg(long, default_value = "10.96.0.10")]
    cluster_dns: std::net::IpAddr,
    /// The cluster's DNS zone.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Do not run the Ingress controller (class `kelson`; it runs with the proxy).
    #[arg(long)]
    disable_ingress: bool,
    /// The Ingress controller's HTTP listener (port 0 picks one: the agent directory's
    /// ingress/address).
    #[arg(long, default_value = "0.0.0.0:80")]
    ingress_http_listen: SocketAddr,
    /// The Ingress controller's HTTPS listener.
    #[arg(long, default_value = "0.0.0.0:443")]
    ingress_https_listen: SocketAddr,
}

impl NodeArgs {
    /// The agent's configuration, its pod volumes under `root_dir` and its address resolved.
    fn agent_config(&self, root_dir: PathBuf) -> kelson_kubelet::agent::AgentConfig {
        let mut agent = kelson_kubelet::agent::AgentConfig {
            runtime_socket: self.container_runtime_endpoint.clone(),
            address: Some(
                self.node_ip
                    .unwrap_or_else(kelson_kubelet::host::primary_address),
            ),
            listen: SocketAddr::from(([0, 0, 0, 0], self.kubelet_port)),
            root_dir,
            container_log_max_size: self.container_log_max_size,
            container_log_max_files: self.container_log_max_files,
            manifest_dir: self.pod_manifest_path.clone(),
            cluster_dns: (!self.disable_proxy).then_some(self.cluster_dns),
            cluster_domain: self.cluster_domain.clone(),
            ..Default::default()
        };
        if let Some(name) = &self.node_name {
            agent.node_name.clone_from(name);
        }
        agent
    }

    /// The ports the agent will listen on (for preflight).
    fn ports(&self) -> Vec<SocketAddr> {
        let mut ports: Vec<SocketAddr> = (self.kubelet_port != 0)
            .then(|| SocketAddr::from(([0, 0, 0, 0], self.kubelet_port)))
            .into_iter()
            .collect();
        if !self.disable_node_exporter && self.node_exporter_listen.port() != 0 {
            ports.push(self.node_exporter_listen);
        }
        ports.extend(self.logs.ports());
        if !self.disable_proxy && self.proxy_metrics_listen.port() != 0 {
            ports.push(self.proxy_metrics_listen);
        }
        if !self.disable_proxy && !self.disable_ingress {
            ports.extend(
                [self.ingress_http_listen, self.ingress_https_listen]
                    .into_iter()
                    .filter(|a| a.port() != 0),
            );
        }
        ports
    }

    /// Starts the service proxy and the cluster DNS of node `node` (at `address`) beside the
    /// agent whose directory is `root_dir`.
    async fn start_proxy(
        &self,
        client: kube::Client,
        node: &str,
        address: std::net::IpAddr,
        root_dir: &std::path::Path,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        if self.disable_proxy {
            return Ok(());
        }
        let mut config = kelson_proxy::Config::new(node);
        config.mode = self.proxy_mode;
        config.rules.cluster_cidr.clone_from(&self.cluster_cidr);
        let metrics = Arc::new(kelson_proxy::Metrics::new());
        let caches = kelson_proxy::Caches::watch(&client, &shutdown);
        if !self.disable_cluster_dns {
            use kelson_proxy::dns;
            let listen = SocketAddr::new(address, self.cluster_dns_port);
            let mut dns_config = dns::DnsConfig::new(&self.cluster_domain);
            dns_config.upstreams.retain(|upstream| *upstream != listen);
            let handler = dns::Handler::new(
                caches.services.clone(),
                caches.slices.clone(),
                dns_config,
                Some(dns::DnsMetrics::new(metrics.registry())),
                format!("dns://{listen}"),
            );
            let bound = dns::serve(listen, handler, shutdown.clone())
                .await
                .with_context(|| {
                    format!(
                        "cluster DNS cannot listen on {listen}: use --cluster-dns-port to pick another port, or --disable-cluster-dns"
                    )
                })?;
            let file = root_dir.join("dns/address");
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&file, bound.to_string())?;
            let client = client.clone();
            let node = node.to_owned();
            tokio::spawn(async move {
                // the API may still be coming up (a joining agent): retry until it takes it
                for attempt in 0..30u64 {
                    match dns::publish(client.clone(), &node, bound).await {
                        Ok(()) => return,
                        Err(error) if attempt == 29 => {
                            tracing::error!(%error, "cannot publish this node's DNS endpoint");
                        }
                        Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                    }
                }
            });
        }
        let listener = kelson_metrics::http::bind(
            self.proxy_metrics_listen,
            Some(&root_dir.join("proxy/address")),
            "the service proxy's metrics",
        )
        .await
        .context("use --proxy-metrics-listen to pick another address, or --disable-proxy")?;
        let render = metrics.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let render = kelson_metrics::http::Render::Text(Arc::new(move || render.render()));
            if let Err(error) =
                kelson_metrics::http::serve(listener, stop, "kelson proxy", render, true).await
            {
                tracing::error!(%error, "the service proxy's metrics listener failed");
            }
        });
        if !self.disable_ingress {
            let config = kelson_proxy::ingress::IngressConfig {
                class: "kelson".into(),
                default_class: true,
                http: self.ingress_http_listen,
                https: self.ingress_https_listen,
                node_address: address,
            };
            let (http, https) =
                kelson_proxy::ingress::start(client.clone(), caches.clone(), config, shutdown.clone())
                    .await
                    .context(
                        "the Ingress controller cannot listen: use --ingress-http-listen and --ingress-https-listen to pick other addresses, or --disable-ingress",
                    )?;
            let file = root_dir.join("ingress/address");
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(
                &file,
                serde_json::json!({"http": http.to_string(), "https": https.to_string()})
                    .to_string(),
            )?;
        }
        tokio::spawn(async move {
            if let Err(error) = kelson_proxy::run(caches, config, metrics, shutdown).await {
                tracing::error!(%error, "the service proxy failed");
            }
        });
        Ok(())
    }

    /// Starts the node exporter beside the agent whose directory is `root_dir`.
    async fn start_node_exporter(
        &self,
        root_dir: &std::path::Path,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        if self.disable_node_exporter {
            return Ok(());
        }
        node_exporter::start(
            kelson_metrics::node::Config::default(),
            self.node_exporter_listen,
            Some(&root_dir.join("node-exporter/address")),
            shutdown,
        )
        .await
        .context("use --node-exporter-listen to pick another address, or --disable-node-exporter")
    }
}

/// The names the kubelet's serving certificate is valid for.
fn kubelet_certificate_names(agent: &kelson_kubelet::agent::AgentConfig) -> Vec<String> {
    let mut names = vec![
        agent.node_name.clone(),
        "127.0.0.1".to_owned(),
        "localhost".to_owned(),
    ];
    names.extend(agent.address.map(|a| a.to_string()));
    names
}

#[derive(clap::Args)]
struct SimArgs {
    /// Kubeconfig of the cluster (e.g. `<data-dir>/kubeconfig.yaml`).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// API server URL (with --token), instead of a kubeconfig.
    #[arg(long)]
    server: Option<String>,
    /// Bearer token (with --server).
    #[arg(long)]
    token: Option<String>,
    /// CA certificate of the API server (with --server); without it the server is not verified.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Node names are PREFIX0, PREFIX1, ...
    #[arg(long, default_value = "hollow-")]
    name_prefix: String,
    /// Milliseconds from binding until a pod is Running and Ready.
    #[arg(long, default_value_t = 500)]
    start_delay_ms: u64,
    /// CPU capacity of each node.
    #[arg(long, default_value = "4")]
    cpu: String,
    /// Memory capacity of each node.
    #[arg(long, default_value = "16Gi")]
    memory: String,
    /// Pod capacity of each node.
    #[arg(long, default_value = "110")]
    pods: String,
}

#[derive(clap::Args)]
struct ServerArgs {
    /// Directory for storage, TLS material, kubeconfig.yaml and addresses.json.
    #[arg(long, env = "KELSON_DATA_DIR", default_value = "/var/lib/kelson")]
    data_dir: PathBuf,
    /// Address of the HTTPS API listener; port 0 picks a free port (see addresses.json).
    #[arg(long, default_value = "0.0.0.0:6443")]
    listen: SocketAddr,
    /// Use etcd at these client URLs (comma-separated) instead of the embedded store.
    #[arg(long, value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// Extra DNS names or IP addresses for the serving certificate.
    #[arg(long = "tls-san", value_delimiter = ',')]
    tls_sans: Vec<String>,
    /// Seconds between compactions of old revisions.
    #[arg(long, default_value_t = 300)]
    compaction_interval_seconds: u64,
    /// CIDR that Service cluster IPs come from; the first address is the `kubernetes` Service,
    /// the tenth the cluster DNS.
    #[arg(long, default_value = "10.96.0.0/12", value_parser = parse_cidr)]
    service_cluster_ip_range: kelson_apiserver::services::Ipv4Cidr,
    /// Ports that NodePort Services come from.
    #[arg(long, default_value = "30000-32767", value_parser = kelson_apiserver::services::parse_port_range)]
    service_node_port_range: std::ops::RangeInclusive<u16>,
    /// Address the `default/kubernetes` Service points at (default: the listen address, or the
    /// host's primary address when listening on all).
    #[arg(long)]
    advertise_address: Option<std::net::IpAddr>,
    /// Do not run the scheduler.
    #[arg(long)]
    disable_scheduler: bool,
    /// Address of the scheduler's Prometheus metrics (kube-scheduler's scheduler_* families;
    /// port 0 picks one: DATA_DIR/scheduler/address).
    #[arg(long, default_value = "127.0.0.1:10251")]
    scheduler_metrics_listen: SocketAddr,
    /// Do not run the controllers.
    #[arg(long)]
    disable_controller_manager: bool,
    /// Address of the controller manager's Prometheus metrics (client-go's workqueue_* families
    /// per controller; port 0 picks one: DATA_DIR/controller-manager/address).
    #[arg(long, default_value = "127.0.0.1:10252")]
    controller_manager_metrics_listen: SocketAddr,
    /// Do not run the GitOps reconciler (Applications are still served, but not synced).
    #[arg(long)]
    disable_gitops: bool,
    /// Address of the GitOps listener: webhooks at /hooks/github|gitlab|gitea and the
    /// reconciler's Prometheus metrics at /metrics (port 0 picks one: DATA_DIR/gitops/address).
    #[arg(long, default_value = "0.0.0.0:9780")]
    gitops_listen: SocketAddr,
    /// ServiceAccount (in each Application's namespace) that GitOps Applications naming none
    /// sync as; without it they sync as the reconciler, which is cluster-admin.
    #[arg(long)]
    gitops_default_service_account: Option<String>,
    /// Do not run the node agent (kubelet) on this machine.
    #[arg(long)]
    disable_agent: bool,
    /// Address of the cluster-state exporter (kube-state-metrics' families at /metrics); port
    /// 0 picks one (written to DATA_DIR/state-metrics/address).
    #[arg(long, default_value = "0.0.0.0:8080")]
    state_metrics_listen: SocketAddr,
    /// Do not serve cluster-state metrics.
    #[arg(long)]
    disable_state_metrics: bool,
    #[command(flatten)]
    state_metrics: state_metrics::Options,
    #[command(flatten)]
    node: NodeArgs,
}

/// A control-plane component's main loop.
type Work = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        trigger.cancel();
    });
    token
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let telemetry = telemetry::Telemetry::init(
        &cli.log,
        cli.otlp_endpoint.as_deref(),
        cli.command.service_name(),
    )?;
    let result = run(cli).await;
    telemetry.shutdown().await;
    result
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Server(args) => server(args, None).await?,
        Command::Up(args) => {
            let mut ports = vec![args.server.listen];
            if !args.server.disable_gitops && args.server.gitops_listen.port() != 0 {
                ports.push(args.server.gitops_listen);
            }
            if !args.server.disable_state_metrics && args.server.state_metrics_listen.port() != 0 {
                ports.push(args.server.state_metrics_listen);
            }
            if !args.server.disable_scheduler && args.server.scheduler_metrics_listen.port() != 0 {
                ports.push(args.server.scheduler_metrics_listen);
            }
            if !args.server.disable_controller_manager
                && args.server.controller_manager_metrics_listen.port() != 0
            {
                ports.push(args.server.controller_manager_metrics_listen);
            }
            if !args.server.disable_agent {
                ports.extend(args.server.node.ports());
            }
            preflight(
                &args.server.node.container_runtime_endpoint,
                &ports,
                &args.ignore_preflight_errors,
            )
            .await?;
            server(args.server, Some(!args.no_example)).await?;
        }
        Command::Agent(args) => agent(args).await?,
        Command::Sim(args) => sim(args).await?,
        Command::App(args) => app::run(args).await?,
        Command::Reconciler(args) => reconciler(args).await?,
        Command::StateMetrics(args) => {
            let client = kube_client(args.kubeconfig.as_deref()).await?;
            let shutdown = shutdown_signal();
            state_metrics::start(client, &args.options, args.listen, None, shutdown.clone())
                .await?;
            shutdown.cancelled().await;
        }
        Command::NodeExporter(args) => {
            let shutdown = shutdown_signal();
            node_exporter::start(args.config, args.listen, None, shutdown.clone()).await?;
            shutdown.cancelled().await;
        }
        Command::Logpipe(args) => logs::run_pipeline(args, shutdown_signal()).await?,
        Command::Logs(args) => logs::run_logs(args).await?,
    }
    Ok(())
}

/// Runs the node preflight checks; fails with every error not ignored.
async fn preflight(
    socket: &std::path::Path,
    ports: &[SocketAddr],
    ignored: &[String],
) -> anyhow::Result<()> {
    let checks = kelson_kubelet::preflight::run(socket, ports).await;
    let errors = kelson_kubelet::preflight::report(&checks, ignored);
    if errors.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "preflight checks failed:\n{}\n(skip a check with --ignore-preflight-errors=NAME)",
        errors.join("\n")
    )
}

fn parse_cidr(text: &str) -> Result<kelson_apiserver::services::Ipv4Cidr, String> {
    text.parse()
}

/// Serves one component's Prometheus metrics (as job `job`) until `shutdown`, writing the bound
/// address to `address_file`.
async fn serve_component_metrics(
    listen: SocketAddr,
    address_file: &Path,
    job: &'static str,
    render: Arc<dyn Fn() -> String + Send + Sync>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let listener =
        kelson_metrics::http::bind(listen, Some(address_file), &format!("{job}'s metrics")).await?;
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let render = kelson_metrics::http::Render::Text(render);
        if let Err(error) = kelson_metrics::http::serve(listener, stop, job, render, true).await {
            tracing::error!(error = format!("{error:#}"), job, "metrics stopped");
        }
    });
    Ok(())
}

/// Runs the server; `up` is set for `kelson up` and says whether to install the example.
async fn server(args: ServerArgs, up: Option<bool>) -> anyhow::Result<()> {
    let data_dir = args.data_dir.clone();
    let mut config = kelson_apiserver::Config::new(args.data_dir);
    config.listen = args.listen;
    config.tls_sans = args.tls_sans;
    config.compaction_interval = Duration::from_secs(args.compaction_interval_seconds.max(1));
    config.service_ranges = kelson_apiserver::services::Ranges {
        cluster_ips: args.service_cluster_ip_range,
        node_ports: args.service_node_port_range,
    };
    config.advertise_address = args.advertise_address;
    if !args.etcd_endpoints.is_empty() {
        config.storage = kelson_apiserver::StorageConfig::Etcd {
            endpoints: args.etcd_endpoints,
        };
    }
    let shutdown = shutdown_signal();
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let api = tokio::spawn(kelson_apiserver::run(
        config,
        shutdown.clone(),
        Some(started_tx),
    ));
    let Ok(running) = started.await else {
        return api.await?.context("kelson server failed");
    };
    let identity = format!("{}_{}", hostname(), std::process::id());
    // each component reaches the API server in-process, as its own user, under leader election
    // (its client requests counted in `requests`, client-go's rest_client_* families)
    let lead =
        |component: &str,
         requests: &Arc<ClientMetrics>,
         work: Box<dyn Fn(kube::Client, CancellationToken) -> Work + Send + Sync>| {
            let client = running.server.counted_client(
                kelson_apiserver::auth::User::new(format!("system:{component}"), vec![]),
                Some(requests),
            );
            let election = kelson_common::leader::Election::new(component, &identity);
            tokio::spawn(kelson_common::leader::run_when_leader(
                client.clone(),
                election,
                shutdown.clone(),
                move |leading| work(client.clone(), leading),
            ));
        };
    if !args.disable_scheduler {
        let metrics = Arc::new(kelson_scheduler::metrics::SchedulerMetrics::new());
        let requests = Arc::new(ClientMetrics::new());
        let (render, counted) = (metrics.clone(), requests.clone());
        serve_component_metrics(
            args.scheduler_metrics_listen,
            &data_dir.join("scheduler/address"),
            "kube-scheduler",
            Arc::new(move || render.render() + &counted.render()),
            &shutdown,
        )
        .await
        .context("use --scheduler-metrics-listen to pick another address")?;
        let config = kelson_scheduler::Config {
            metrics: Some(metrics),
            ..Default::default()
        };
        lead(
            "kube-scheduler",
            &requests,
            Box::new(move |client, leading| {
                Box::pin(kelson_scheduler::run(client, config.clone(), leading))
            }),
        );
    }
    if !args.disable_controller_manager {
        let metrics = Arc::new(kelson_controllers::workqueue::Metrics::new());
        let requests = Arc::new(ClientMetrics::new());
        let (render, counted) = (metrics.clone(), requests.clone());
        serve_component_metrics(
            args.controller_manager_metrics_listen,
            &data_dir.join("controller-manager/address"),
            "kube-controller-manager",
            Arc::new(move || render.render() + &counted.render()),
            &shutdown,
        )
        .await
        .context("use --controller-manager-metrics-listen to pick another address")?;
        let options = kelson_controllers::Options {
            root_ca: std::fs::read_to_string(data_dir.join("tls/ca.crt")).ok(),
            volumes: kelson_controllers::volume::Config {
                directory: Some(data_dir.join("volumes")),
            },
            metrics,
            ..Default::default()
        };
        lead(
            "kube-controller-manager",
            &requests,
            Box::new(move |client, leading| {
                Box::pin(kelson_controllers::run_with(
                    client,
                    options.clone(),
                    leading,
                ))
            }),
        );
    }
    {
        // the Application definition is served even when this server does not reconcile
        let client = running.server.client(kelson_apiserver::auth::User::new(
            "system:kelson-gitops".to_owned(),
            vec![],
        ));
        kelson_reconciler::install_crds(&client)
            .await
            .context("failed to install the GitOps definitions")?;
    }
    if !args.disable_state_metrics {
        // read-only, so every server serves it (no leader election)
        let client = running.server.client(kelson_apiserver::auth::User::new(
            "system:kube-state-metrics".to_owned(),
            vec![],
        ));
        state_metrics::start(
            client,
            &args.state_metrics,
            args.state_metrics_listen,
            Some(&data_dir.join("state-metrics/address")),
            shutdown.clone(),
        )
        .await
        .context(
            "use --state-metrics-listen to pick another address, or --disable-state-metrics",
        )?;
    }
    if !args.disable_gitops {
        let mut config = kelson_reconciler::Config::new(data_dir.join("gitops"));
        config.listen = Some(args.gitops_listen);
        config.default_service_account = args.gitops_default_service_account.clone();
        let requests = config.client_metrics.clone();
        lead(
            "kelson-gitops",
            &requests,
            Box::new(move |client, leading| {
                let config = config.clone();
                Box::pin(async move {
                    if let Err(error) = kelson_reconciler::run(client, config, leading).await {
                        tracing::error!(%error, "the GitOps reconciler failed");
                    }
                })
            }),
        );
    }
    tracing::info!(
        "to join another node: kelson agent --server {} --token $(cat {})",
        running.url,
        data_dir.join("node-token").display()
    );
    if let Some(example) = up {
        let kubeconfig = running.kubeconfig.display();
        let mut gitops = String::new();
        if example && !args.disable_gitops {
            let client = running.server.client(kelson_apiserver::auth::User::new(
                "system:kelson-gitops".to_owned(),
                vec![],
            ));
            let repository = kelson_reconciler::example::install(&client, &data_dir.join("gitops"))
                .await
                .context("failed to install the GitOps example")?;
            gitops = format!(
                "\n  GitOps: the Application `example` deploys apps/hello of {repo}\n  git clone {repo} example && cd example\n  sed -i 's/Hello from Git/Hello again/' apps/hello/page.yaml\n  git commit -am 'Say hello again' && git push\n  kubectl get applications -A -w\n  kelson app history example --data-dir {data}\n",
                repo = repository.display(),
                data = data_dir.display()
            );
        }
        println!(
            "\nKelson is up.\n\n  kubeconfig:  {kubeconfig}\n\n  export KUBECONFIG={kubeconfig}\n  kubectl get nodes\n  kubectl create deployment web --image=busybox:1.35 -- httpd -f -p 8080\n  kubectl get pods -o wide\n{gitops}\n  join another machine:\n  kelson agent --server {} --token $(cat {})\n",
            running.url,
            data_dir.join("node-token").display()
        );
    }
    let mut node_agent = None;
    if !args.disable_agent {
        args.node
            .start_node_exporter(&data_dir.join("agent"), shutdown.clone())
            .await?;
        let mut agent = args.node.agent_config(data_dir.join("agent"));
        let (cert, key) = running
            .pki
            .issue(
                &format!("system:node:{}", agent.node_name),
                &["system:nodes"],
                &kubelet_certificate_names(&agent),
                true,
            )
            .context("failed to issue the kubelet certificate")?;
        agent.tls = Some(kelson_kubelet::server::KubeletTls {
            cert,
            key,
            ca: running.pki.ca_cert.clone(),
        });
        let client = running.server.counted_client(
            kelson_apiserver::auth::User::new(
                format!("system:node:{}", agent.node_name),
                vec!["system:nodes".into()],
            ),
            Some(&agent.client_metrics),
        );
        agent.logs = args
            .node
            .logs
            .start(
                &data_dir.join("agent"),
                &agent.node_name,
                client.clone(),
                true,
                shutdown.clone(),
            )
            .await?;
        args.node
            .start_proxy(
                client.clone(),
                &agent.node_name,
                agent
                    .address
                    .unwrap_or_else(kelson_common::net::primary_address),
                &data_dir.join("agent"),
                shutdown.clone(),
            )
            .await?;
        let shutdown = shutdown.clone();
        node_agent = Some(tokio::spawn(async move {
            if let Err(error) = kelson_kubelet::agent::run(client, agent, shutdown).await {
                tracing::error!(%error, "node agent failed");
            }
        }));
    }
    let served = api.await?.context("kelson server failed");
    // the agent finishes the pod syncs it is in (it drains for at most 10 s)
    if let Some(node_agent) = node_agent
        && tokio::time::timeout(Duration::from_secs(15), node_agent)
            .await
            .is_err()
    {
        tracing::warn!("the node agent did not stop in time");
    }
    served
}

/// A client from the kubeconfig at `path`, or from the environment ($KUBECONFIG,
/// ~/.kube/config, in-cluster) without one.
pub(crate) async fn kube_client(path: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    Ok(kube::Client::try_from(kube_config(path).await?)?)
}

/// The client settings from the kubeconfig at `path` or from the environment.
async fn kube_config(path: Option<&std::path::Path>) -> anyhow::Result<kube::Config> {
    Ok(match path {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("failed to read {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?
        }
        None => kube::Config::infer().await?,
    })
}

/// A client whose requests `metrics` counts, labelled with the server's `host:port`.
fn counted_client(
    config: kube::Config,
    metrics: &Arc<ClientMetrics>,
) -> anyhow::Result<kube::Client> {
    let host = config
        .cluster_url
        .authority()
        .map_or_else(String::new, ToString::to_string);
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&metrics.layer(&host))
        .build())
}

/// `kelson reconciler`: the GitOps reconciler alone, against any cluster.
async fn reconciler(args: ReconcilerArgs) -> anyhow::Result<()> {
    let mut config = kelson_reconciler::Config::new(args.data_dir);
    config.listen = Some(args.listen);
    config.namespace = args.namespace.clone();
    config.default_service_account = args.default_service_account.clone();
    let client = counted_client(
        kube_config(args.kubeconfig.as_deref()).await?,
        &config.client_metrics,
    )?;
    kelson_reconciler::install_crds(&client)
        .await
        .context("failed to install the Application definition")?;
    let shutdown = shutdown_signal();
    let identity = format!("{}_{}", hostname(), std::process::id());
    let mut election = kelson_common::leader::Election::new("kelson-gitops", &identity);
    election.namespace = args.namespace;
    kelson_common::leader::run_when_leader(client.clone(), election, shutdown, move |leading| {
        let (client, config) = (client.clone(), config.clone());
        async move {
            if let Err(error) = kelson_reconciler::run(client, config, leading).await {
                tracing::error!(%error, "the GitOps reconciler failed");
            }
        }
    })
    .await;
    Ok(())
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "kelson".into())
}

async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    preflight(
        &args.node.container_runtime_endpoint,
        &args.node.ports(),
        &args.ignore_preflight_errors,
    )
    .await?;
    let Some((hash, secret)) = kelson_apiserver::join::parse_token(args.token.trim()) else {
        anyhow::bail!(
            "invalid --token: expected K10<ca-hash>::<secret> as kelson server prints it"
        );
    };
    let url: http::Uri = args.server.parse().context("invalid --server URL")?;
    // fetch the CA without trusting anyone yet, then pin it by the token's hash
    let mut insecure = kube::Config::new(url.clone());
    insecure.accept_invalid_certs = true;
    let probe = kube::Client::try_from(insecure)?;
    let ca = probe
        .request_text(http::Request::get("/cacerts").body(Vec::new())?)
        .await
        .with_context(|| format!("failed to fetch the cluster CA from {url}"))?;
    let actual = kelson_apiserver::join::ca_hash(&ca);
    if actual != hash {
        anyhow::bail!(
            "the cluster CA at {url} does not match the token (token pins sha256 {hash}, server has {actual}); refusing to join"
        );
    }
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let roots = CertificateDer::pem_slice_iter(ca.as_bytes())
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .context("the cluster CA does not parse")?;
    let mut config = kube::Config::new(url.clone());
    config.root_cert = Some(roots);
    config.auth_info.token = Some(secret.to_owned().into());

    let shutdown = shutdown_signal();
    args.node
        .start_node_exporter(&args.data_dir, shutdown.clone())
        .await?;
    let mut agent = args.node.agent_config(args.data_dir);
    let client = counted_client(config, &agent.client_metrics)?;
    let request = serde_json::json!({
        "nodeName": agent.node_name,
        "addresses": kubelet_certificate_names(&agent),
    });
    let issued: serde_json::Value = client
        .request(
            http::Request::post("/kelson/v1/kubelet-certificate")
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&request)?)?,
        )
        .await
        .context("the server refused a kubelet certificate (is the token right?)")?;
    let field = |name: &str| {
        issued[name]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("the kubelet certificate response lacks {name}"))
    };
    agent.tls = Some(kelson_kubelet::server::KubeletTls {
        cert: field("certificate")?,
        key: field("key")?,
        ca,
    });
    agent.logs = args
        .node
        .logs
        .start(
            &agent.root_dir,
            &agent.node_name,
            client.clone(),
            false,
            shutdown.clone(),
        )
        .await?;
    args.node
        .start_proxy(
            client.clone(),
            &agent.node_name,
            agent
                .address
                .unwrap_or_else(kelson_common::net::primary_address),
            &agent.root_dir,
            shutdown.clone(),
        )
        .await?;
    tracing::info!(node = %agent.node_name, server = %url, "joining");
    kelson_kubelet::agent::run(client, agent, shutdown)
        .await
        .context("node agent failed")
}

async fn sim(args: SimArgs) -> anyhow::Result<()> {
    let client = match (&args.server, &args.token) {
        (Some(server), Some(token)) => {
            let mut config = kube::Config::new(server.parse().context("invalid --server URL")?);
            config.auth_info.token = Some(token.clone().into());
            match &args.ca_file {
                Some(ca) => {
                    let pem = std::fs::read(ca)
                        .with_context(|| format!("failed to read {}", ca.display()))?;
                    use rustls::pki_types::{CertificateDer, pem::PemObject};
                    let ders = CertificateDer::pem_slice_iter(&pem)
                        .map(|c| c.map(|c| c.to_vec()))
                        .collect::<Result<Vec<_>, _>>()
                        .context("invalid --ca-file")?;
                    config.root_cert = Some(ders);
                }
                None => config.accept_invalid_certs = true,
            }
            kube::Client::try_from(config)?
        }
        _ => {
            let path = args
                .kubeconfig
                .as_deref()
                .context("give --kubeconfig, or --server with --token")?;
            kube_client(Some(path)).await?
        }
    };
    let shutdown = shutdown_signal();
    let config = kelson_kubelet::hollow::HollowConfig {
        nodes: args.nodes,
        name_prefix: args.name_prefix,
        start_delay: Duration::from_millis(args.start_delay_ms),
        cpu: args.cpu,
        memory: args.memory,
        pods: args.pods,
        ..Default::default()
    };
    kelson_kubelet::hollow::start(client, config, shutdown.clone())
        .await
        .context("failed to start hollow nodes")?;
    shutdown.cancelled().await;
    Ok(())
}
