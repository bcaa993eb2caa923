//! The kubelet on a real container runtime: connects to containerd over CRI, registers the node,
//! renews its Lease and posts its readiness, and runs the pods bound to it ([`crate::pods`]).
//! Stopping the agent leaves containers running; the next start adopts them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kelson_common::events::{Recorder, Reporter};
use kelson_common::quantity;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cri::{self, Cri};
use crate::pods::{self, NodeContext, PodContext};
use crate::{host, node};

/// Configuration of the node agent.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Node name (defaults to the host name).
    pub node_name: String,
    /// containerd's CRI socket.
    pub runtime_socket: PathBuf,
    /// The node's address; the default route's source address when unset.
    pub address: Option<IpAddr>,
    /// Lease renewal period.
    pub lease_period: Duration,
    /// Lease duration the node controller waits before marking the node unreachable.
    pub lease_duration_seconds: i32,
    /// Node status period when nothing changes.
    pub status_period: Duration,
    /// The agent's directory (pod volumes).
    pub root_dir: PathBuf,
    /// Address of the kubelet API (port 0 picks a free port); with `tls` only.
    pub listen: std::net::SocketAddr,
    /// TLS material of the kubelet API; without it the API is not served.
    pub tls: Option<crate::server::KubeletTls>,
    /// A container log is rotated when it grows past this many bytes.
    pub container_log_max_size: u64,
    /// Log files kept per container, the live one included.
    pub container_log_max_files: usize,
    /// Directory of static pod manifests (default: `<root_dir>/manifests`).
    pub manifest_dir: Option<PathBuf>,
    /// The node's log query API, served under `/logs` of the kubelet API (so the API server
    /// reaches it, authenticated, for cluster-wide log queries).
    pub logs: Option<axum::Router>,
    /// The cluster DNS Service's address (`--cluster-dns`); `None` gives pods the node's
    /// resolver.
    pub cluster_dns: Option<IpAddr>,
    /// The cluster zone (`--cluster-domain`).
    pub cluster_domain: String,
    /// Counts the requests of the agent's API client; the kubelet serves them on `/metrics`.
    pub client_metrics: Arc<kelson_common::client_metrics::ClientMetrics>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            node_name: host::hostname(),
            runtime_socket: PathBuf::from(cri::DEFAULT_SOCKET),
            address: None,
            lease_period: Duration::from_secs(10),
            lease_duration_seconds: 40,
            status_period: Duration::from_secs(60),
            root_dir: PathBuf::from("/var/lib/kelson/agent"),
            listen: std::net::SocketAddr::from(([0, 0, 0, 0], 10250)),
            tls: None,
            container_log_max_size: 10 << 20,
            container_log_max_files: 5,
            manifest_dir: None,
            logs: None,
            cluster_dns: None,
            cluster_domain: "cluster.local".into(),
            client_metrics: Arc::default(),
        }
    }
}

async fn connect(config: &AgentConfig, shutdown: &CancellationToken) -> Option<Cri> {
    let mut warned = false;
    loop {
        match Cri::connect(&config.runtime_socket).await {
            Ok(cri) => match cri.version().await {
                Ok(_) => return Some(cri),
                Err(error) if !warned => {
                    warn!(%error, "container runtime not answering; retrying");
                    warned = true;
                }
                Err(_) => {}
            },
            Err(error) if !warned => {
                warn!(%error, "container runtime unreachable; retrying");
                warned = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// A node agent failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The node could not be registered.
    #[error("failed to register the node: {0}")]
    Register(#[from] kube::Error),
    /// The kubelet API could not start.
    #[error("failed to serve the kubelet API on {listen}: {reason}")]
    Serve {
        /// Address.
        listen: std::net::SocketAddr,
        /// Why.
        reason: String,
    },
}

/// Runs the node agent until `shutdown`.
///
/// # Errors
/// When the node cannot be registered or the kubelet API cannot listen.
pub async fn run(
    client: kube::Client,
    config: AgentConfig,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let Some(cri) = connect(&config, &shutdown).await else {
        return Ok(());
    };
    let version = cri.version().await.map_or_else(
        |_| "containerd://unknown".to_owned(),
        |v| format!("{}://{}", v.runtime_name, v.runtime_version),
    );
    let address = config.address.unwrap_or_else(host::primary_address);
    let serve_error = |reason: String| Error::Serve {
        listen: config.listen,
        reason,
    };
    let api = match &config.tls {
        Some(tls) => {
            let tls = tls
                .server_config()
                .map_err(|e| serve_error(e.to_string()))?;
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .map_err(|e| serve_error(e.to_string()))?;
            let port = listener
                .local_addr()
                .map_err(|e| serve_error(e.to_string()))?
                .port();
            Some((listener, tls, port))
        }
        None => None,
    };
    let mut specification = host::node_specification(&config.node_name, address, &version);
    specification.kubelet_port = api.as_ref().map(|(_, _, port)| i32::from(*port));
    let allocatable: BTreeMap<String, i64> = specification
        .allocatable
        .iter()
        .map(|(name, q)| {
            let value = if name == "cpu" {
                quantity::cpu_millis(q)
            } else {
                quantity::units(q)
            };
            (name.clone(), value)
        })
        .collect();
    node::register(&client, &specification).await?;
    info!(node = %config.node_name, %address, runtime = %version, "node registered");
    tokio::spawn(heartbeats(
        client.clone(),
        cri.clone(),
        config.clone(),
        shutdown.clone(),
    ));
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "kubelet".into(),
            instance: Some(config.node_name.clone()),
        },
    );
    let ctx = Arc::new(PodContext {
        client,
        cri,
        node: NodeContext {
            name: config.node_name.clone(),
            host_ip: address.to_string(),
            memory_capacity: i64::try_from(host::memory_total()).unwrap_or(i64::MAX),
            allocatable,
            dns: crate::pods::spec::DnsSettings::new(
                config.cluster_dns.iter().map(ToString::to_string).collect(),
                &config.cluster_domain,
                &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
            ),
        },
        recorder,
        root_dir: config.root_dir.clone(),
        metrics: Arc::new(
            crate::metrics::KubeletMetrics::new(&config.node_name)
                .with_requests(config.client_metrics.clone()),
        ),
        cgroups: crate::cadvisor::Cgroups::default(),
    });
    if let Some((listener, tls, port)) = api {
        info!(port, "kubelet API listening");
        let mut router = crate::server::router(ctx.clone());
        if let Some(logs) = &config.logs {
            router = router.nest("/logs", logs.clone());
        }
        tokio::spawn(crate::server::serve(
            listener,
            tls,
            router,
            shutdown.clone(),
        ));
    }
    tokio::spawn(crate::eviction::run(ctx.clone(), shutdown.clone()));
    let manifests = config
        .manifest_dir
        .clone()
        .unwrap_or_else(|| config.root_dir.join("manifests"));
    if let Err(error) = std::fs::create_dir_all(&manifests) {
        warn!(directory = %manifests.display(), %error, "cannot create the static pod directory");
    }
    info!(directory = %manifests.display(), "static pod manifests");
    tokio::spawn(crate::static_pods::run(
        ctx.clone(),
        manifests,
        shutdown.clone(),
    ));
    tokio::spawn(rotate_logs(
        ctx.clone(),
        config.container_log_max_size,
        config.container_log_max_files,
        shutdown.clone(),
    ));
    pods::run(ctx, shutdown).await;
    Ok(())
}

/// Rotates the logs of this node's running containers by size and count, every 10 s.
async fn rotate_logs(
    ctx: Arc<PodContext>,
    max_size: u64,
    max_files: usize,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let labels = [(crate::pods::spec::NODE_LABEL, ctx.node.name.as_str())];
        let Ok(containers) = ctx.cri.list_containers(&labels).await else {
            continue;
        };
        for container in containers {
            if container.state != k8s_cri::v1::ContainerState::ContainerRunning as i32 {
                continue;
            }
            let Ok(status) = ctx.cri.container_status(&container.id).await else {
                continue;
            };
            let path = PathBuf::from(&status.log_path);
            let rotated = tokio::task::spawn_blocking(move || {
                crate::logs::rotate_if_large(&path, max_size, max_files, jiff::Timestamp::now())
            })
            .await;
            match rotated {
                Ok(Ok(true)) => {
                    if let Err(error) = ctx.cri.reopen_container_log(&container.id).await {
                        warn!(container = %container.id, %error, "failed to reopen a rotated log");
                    }
                }
                Ok(Ok(false)) => {}
                Ok(Err(error)) => warn!(log = %status.log_path, %error, "failed to rotate a log"),
                Err(error) => warn!(%error, "log rotation task failed"),
            }
        }
    }
}

async fn heartbeats(
    client: kube::Client,
    cri: Cri,
    config: AgentConfig,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(config.lease_period);
    let mut last: Option<node::Health> = None;
    let mut last_status = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(error) =
            node::renew_lease(&client, &config.node_name, config.lease_duration_seconds).await
        {
            warn!(%error, "failed to renew the node lease");
        }
        let not_ready = match cri.ready().await {
            Ok(Ok(())) => None,
            Ok(Err(reason)) => {
                warn!(%reason, "container runtime not ready");
                Some(format!("container runtime is not ready: {reason}"))
            }
            Err(error) => {
                warn!(%error, "container runtime status failed");
                Some(format!("container runtime is down: {error}"))
            }
        };
        let (memory_pressure, disk_pressure, pid_pressure) = host::readings().pressures();
        let health = node::Health {
            not_ready,
            memory_pressure,
            disk_pressure,
            pid_pressure,
        };
        if last.as_ref() != Some(&health) || last_status.elapsed() >= config.status_period {
            match node::post_status(&client, &config.node_name, &health).await {
                Ok(()) => {
                    last = Some(health);
                    last_status = tokio::time::Instant::now();
                }
                Err(error) => warn!(%error, "failed to post the node status"),
            }
        }
    }
}
