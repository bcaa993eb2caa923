//! The service proxy: what kube-proxy does in nftables mode. Every node watches Services and
//! EndpointSlices and programs one nftables table so that a Service's cluster IP (and node port)
//! reaches its ready endpoints, from pods on the bridge network and from the host.
//!
//! The node's cluster DNS ([`dns`]) answers from the same caches.
//!
//! Start reading at [`run`]: two reflectors ([`Caches`]) feed a sync loop that turns the cluster's state into a
//! [`model::ServicePort`] list ([`model::service_ports`]), plans a [`nft::Ruleset`] from it
//! ([`nft::plan`], pure) and installs it with `nft -f` — the whole table at start and after a
//! failure, otherwise only the difference from what is installed. Where nftables cannot be used,
//! [`userspace`] relays the traffic from sockets instead ([`Mode`]).

pub mod dns;
pub mod ingress;
pub mod model;
pub mod nft;
pub mod userspace;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, Opts, Registry, TextEncoder};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Errors of the proxy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `nft` could not be run or refused the rules.
    #[error("nft failed: {0}")]
    Nft(String),
    /// `ip` could not be run or refused a change (the userspace mode).
    #[error("ip failed: {0}")]
    Ip(String),
}

/// How the proxy steers Service traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// nftables when the node has it, else userspace.
    #[default]
    Auto,
    /// Rules in one nftables table ([`nft`]).
    Nftables,
    /// Relays from sockets on the cluster IPs and node ports ([`userspace`]).
    Userspace,
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(Self::Auto),
            "nftables" => Ok(Self::Nftables),
            "userspace" => Ok(Self::Userspace),
            other => Err(format!(
                "unknown proxy mode {other:?}: expected auto, nftables or userspace"
            )),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Nftables => "nftables",
            Self::Userspace => "userspace",
        })
    }
}

/// How the proxy runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Table, pod network and node name.
    pub rules: nft::RulesConfig,
    /// nftables, userspace, or whichever works.
    pub mode: Mode,
    /// The `nft` program.
    pub nft: PathBuf,
    /// The `ip` program (userspace mode).
    pub ip: PathBuf,
    /// Changes arriving within this interval are applied together.
    pub min_sync_period: Duration,
    /// The whole table is rewritten at least this often (repairing anything changed behind
    /// the proxy's back).
    pub sync_period: Duration,
}

impl Config {
    /// Defaults for node `node`: table `kelson-proxy`, pod network 10.88.0.0/16.
    #[must_use]
    pub fn new(node: impl Into<String>) -> Self {
        Self {
            rules: nft::RulesConfig {
                table: "kelson-proxy".into(),
                cluster_cidr: "10.88.0.0/16".into(),
                node: node.into(),
            },
            mode: Mode::Auto,
            nft: PathBuf::from("nft"),
            ip: PathBuf::from("ip"),
            min_sync_period: Duration::from_millis(100),
            sync_period: Duration::from_secs(3600),
        }
    }
}

/// The proxy's metrics, named as kube-proxy's.
pub struct Metrics {
    registry: Registry,
    sync: Histogram,
    full: Histogram,
    partial: Histogram,
    last: prometheus::Gauge,
    failures: IntCounter,
    mode: prometheus::IntGaugeVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers the families.
    ///
    /// # Panics
    /// Never: the definitions are static.
    #[must_use]
    pub fn new() -> Self {
        let registry = Registry::new();
        let buckets = prometheus::exponential_buckets(0.001, 2.0, 15).expect("valid buckets");
        let histogram = |name: &str, help: &str| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.clone()))
                .expect("valid metric");
            registry.register(Box::new(h.clone())).expect("unique");
            h
        };
        let sync = histogram(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
        );
        let full = histogram(
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
        );
        let partial = histogram(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
        );
        let last = prometheus::Gauge::with_opts(Opts::new(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
        ))
        .expect("valid metric");
        registry.register(Box::new(last.clone())).expect("unique");
        let failures = IntCounter::with_opts(Opts::new(
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
            "Total number of nftables syncs that failed",
        ))
        .expect("valid metric");
        registry
            .register(Box::new(failures.clone()))
            .expect("unique");
        let mode = prometheus::IntGaugeVec::new(
            Opts::new(
                "kelson_proxy_mode",
                "The mode the service proxy runs in (1 for the mode in use)",
            ),
            &["mode"],
        )
        .expect("valid metric");
        registry.register(Box::new(mode.clone())).expect("unique");
        Self {
            registry,
            sync,
            full,
            partial,
            last,
            failures,
            mode,
        }
    }

    /// The registry, for more families (the cluster DNS's).
    #[must_use]
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Prometheus text format.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Runs `script` through `nft -f -`.
///
/// # Errors
/// When `nft` cannot be started or refuses the script (its message is returned).
pub async fn apply(nft: &std::path::Path, script: &str) -> Result<(), Error> {
    let mut child = tokio::process::Command::new(nft)
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::Nft(format!("cannot run {}: {e}", nft.display())))?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin
        .write_all(script.as_bytes())
        .await
        .map_err(|e| Error::Nft(format!("writing the rules: {e}")))?;
    drop(stdin);
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| Error::Nft(e.to_string()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::Nft(
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ))
    }
}

/// The `conntrack -D` calls that clear UDP flows a change leaves stale: flows to endpoints that
/// are gone (UDP has no connection to break, so a client would keep sending to the old endpoint)
/// and flows to Service ports that had no endpoints. As kube-proxy does.
#[must_use]
pub fn stale_udp_flows(old: &[model::ServicePort], new: &[model::ServicePort]) -> Vec<Vec<String>> {
    let mut calls = Vec::new();
    let udp =
        |ports: &[model::ServicePort]| -> std::collections::BTreeMap<String, model::ServicePort> {
            ports
                .iter()
                .filter(|p| p.protocol == model::Protocol::Udp)
                .map(|p| (p.id(), p.clone()))
                .collect()
        };
    let (before, after) = (udp(old), udp(new));
    let delete = |filter: &[String]| {
        let mut call = vec!["-D".to_owned(), "-p".to_owned(), "udp".to_owned()];
        call.extend(filter.iter().cloned());
        call
    };
    for (id, port) in &after {
        let had = before
            .get(id)
            .map(|p| p.endpoints.as_slice())
            .unwrap_or_default();
        if had.is_empty() && !port.endpoints.is_empty() {
            calls.push(delete(&["--orig-dst".into(), port.cluster_ip.to_string()]));
            if let Some(node_port) = port.node_port {
                calls.push(delete(&["--dport".into(), node_port.to_string()]));
            }
        }
    }
    for (id, port) in &before {
        let now = after
            .get(id)
            .map(|p| p.endpoints.as_slice())
            .unwrap_or_default();
        for gone in port
            .endpoints
            .iter()
            .filter(|e| !now.iter().any(|n| n.ip == e.ip && n.port == e.port))
        {
            calls.push(delete(&[
                "--orig-dst".into(),
                port.cluster_ip.to_string(),
                "--dst-nat".into(),
                gone.ip.to_string(),
            ]));
            if let Some(node_port) = port.node_port {
                calls.push(delete(&[
                    "--dport".into(),
                    node_port.to_string(),
                    "--dst-nat".into(),
                    gone.ip.to_string(),
                ]));
            }
        }
    }
    calls
}

/// Runs the `conntrack` calls; a missing tool is reported once.
async fn clear_flows(calls: Vec<Vec<String>>, warned: &mut bool) {
    for call in calls {
        match tokio::process::Command::new("conntrack")
            .args(&call)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await
        {
            // exit status 1 means no flow matched
            Ok(_) => debug!(?call, "cleared UDP flows"),
            Err(error) if !*warned => {
                *warned = true;
                warn!(%error, "cannot run conntrack: stale UDP flows to removed endpoints stay until they time out");
            }
            Err(_) => {}
        }
    }
}

/// Removes the proxy's table (`kelson proxy --cleanup`); established connections keep flowing.
///
/// # Errors
/// When `nft` fails for another reason than the table being absent.
pub async fn cleanup(nft: &std::path::Path, table: &str) -> Result<(), Error> {
    apply(
        nft,
        &format!("add table ip {table}\ndelete table ip {table}\n"),
    )
    .await
}

/// Sets the kernel switches a proxy needs: forwarding, and bridged pod traffic passing through
/// netfilter (so that replies from a pod on the same bridge are translated back).
fn kernel_settings() {
    for (path, value) in [
        ("/proc/sys/net/ipv4/ip_forward", "1"),
        ("/proc/sys/net/bridge/bridge-nf-call-iptables", "1"),
    ] {
        match std::fs::read_to_string(path) {
            Ok(current) if current.trim() == value => {}
            Ok(_) => {
                if let Err(error) = std::fs::write(path, value) {
                    warn!(%path, %error, "cannot set a kernel setting the proxy needs");
                }
            }
            Err(error) => {
                warn!(%path, %error, "kernel setting missing (is br_netfilter loaded?)");
            }
        }
    }
}

/// The cluster state the proxy and the DNS server read: reflector stores of every Service and
/// EndpointSlice, and a signal on each change.
#[derive(Clone)]
pub struct Caches {
    /// Services.
    pub services: Store<Service>,
    /// EndpointSlices.
    pub slices: Store<EndpointSlice>,
    changed: Arc<watch::Sender<u64>>,
    /// Set once both stores hold a first complete list. (A store's own readiness wakes only
    /// one waiter at a time, so the proxy, the DNS server and the Ingress controller wait here.)
    ready: watch::Receiver<Option<bool>>,
}

impl Caches {
    /// Starts watching Services and EndpointSlices through `client` until `shutdown`.
    #[must_use]
    pub fn watch(client: &kube::Client, shutdown: &CancellationToken) -> Self {
        let changed = Arc::new(watch::Sender::new(0));
        let (services, services_writer) = reflector::store::<Service>();
        let (slices, slices_writer) = reflector::store::<EndpointSlice>();
        let watch_config = watcher::Config::default().any_semantic();
        let stream = reflector(
            services_writer,
            watcher(Api::<Service>::all(client.clone()), watch_config.clone()),
        )
        .default_backoff();
        tokio::spawn(forward_changes(stream, changed.clone(), shutdown.clone()));
        let stream = reflector(
            slices_writer,
            watcher(Api::<EndpointSlice>::all(client.clone()), watch_config),
        )
        .default_backoff();
        tokio::spawn(forward_changes(stream, changed.clone(), shutdown.clone()));
        let (ready_tx, ready) = watch::channel(None);
        {
            let (services, slices) = (services.clone(), slices.clone());
            tokio::spawn(async move {
                let ready =
                    tokio::try_join!(services.wait_until_ready(), slices.wait_until_ready())
                        .is_ok();
                let _ = ready_tx.send(Some(ready));
            });
        }
        Self {
            services,
            slices,
            changed,
            ready,
        }
    }

    /// A receiver that sees every change to Services or EndpointSlices.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Waits until both stores hold a first complete list; `false` when a watch ended first.
    pub async fn ready(&self) -> bool {
        let mut ready = self.ready.clone();
        matches!(
            ready.wait_for(Option::is_some).await.map(|r| *r),
            Ok(Some(true))
        )
    }
}

/// The mode to run in: `config.mode`, or for [`Mode::Auto`] nftables when `nft` can create the
/// table, else userspace (with the reason nftables was passed over).
pub async fn choose_mode(config: &Config) -> (Mode, Option<String>) {
    match config.mode {
        Mode::Auto => {
            match apply(
                &config.nft,
                &format!("add table ip {}\n", config.rules.table),
            )
            .await
            {
                Ok(()) => (Mode::Nftables, None),
                Err(error) => (Mode::Userspace, Some(error.to_string())),
            }
        }
        mode => (mode, None),
    }
}

/// What the sync loop drives: the nftables table or the userspace relays.
enum DataPath {
    Nftables {
        installed: Option<nft::Ruleset>,
        installed_ports: Vec<model::ServicePort>,
        conntrack_warned: bool,
    },
    Userspace {
        proxy: userspace::Userspace,
        bind_failures: IntCounter,
        skipped_warned: BTreeSet<String>,
    },
}

/// What one sync did.
struct Synced {
    /// Something was changed on the node.
    changed: bool,
    /// Part of it failed and is retried soon.
    retry: bool,
}

impl DataPath {
    fn needs_full(&self) -> bool {
        match self {
            Self::Nftables { installed, .. } => installed.is_none(),
            Self::Userspace { proxy, .. } => proxy.needs_full(),
        }
    }

    async fn sync(
        &mut self,
        config: &Config,
        ports: Vec<model::ServicePort>,
        full: bool,
    ) -> Result<Synced, Error> {
        match self {
            Self::Nftables {
                installed,
                installed_ports,
                conntrack_warned,
            } => {
                let desired = nft::plan(&ports, &config.rules);
                let script = match (&*installed, full) {
                    (Some(old), false) => {
                        let mut script = String::new();
                        nft::render_diff(old, &desired, &config.rules.table, &mut script);
                        script
                    }
                    _ => nft::render_full(&desired, &config.rules.table),
                };
                if !script.is_empty() {
                    apply(&config.nft, &script).await.inspect_err(|_| {
                        *installed = None;
                    })?;
                }
                *installed = Some(desired);
                clear_flows(stale_udp_flows(installed_ports, &ports), conntrack_warned).await;
                *installed_ports = ports;
                Ok(Synced {
                    changed: !script.is_empty(),
                    retry: false,
                })
            }
            Self::Userspace {
                proxy,
                bind_failures,
                skipped_warned,
            } => {
                let plan = userspace::plan(&ports, &config.rules.node);
                for id in &plan.skipped {
                    if skipped_warned.insert(id.clone()) {
                        warn!(service_port = %id, "the userspace proxy does not relay SCTP");
                    }
                }
                let report = proxy.sync(&plan, full).await?;
                for (frontend, error) in &report.failed {
                    bind_failures.inc();
                    warn!(%frontend, %error, "userspace proxy cannot listen; retrying");
                }
                Ok(Synced {
                    changed: report.changed,
                    retry: !report.failed.is_empty(),
                })
            }
        }
    }
}

/// Keeps the node's data path (the nftables table, or the userspace relays) in step with
/// `caches` until `shutdown`. The nftables table stays when the proxy stops, so established and
/// new connections keep working while it restarts.
///
/// # Errors
/// Never after the start: failed syncs are logged, counted and retried.
pub async fn run(
    caches: Caches,
    config: Config,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let (mode, reason) = choose_mode(&config).await;
    let mut path = match mode {
        Mode::Userspace => {
            if let Some(reason) = reason {
                warn!(%reason, "nftables cannot be used: the service proxy runs in userspace mode");
            }
            // rules an earlier nftables run left would catch the traffic first
            if let Err(error) = cleanup(&config.nft, &config.rules.table).await {
                debug!(%error, "no nftables table to remove");
            }
            let bind_failures = IntCounter::with_opts(Opts::new(
                "kelson_proxy_userspace_bind_failures_total",
                "Service ports the userspace proxy could not listen on (retried)",
            ))
            .expect("valid metric");
            let _ = metrics.registry.register(Box::new(bind_failures.clone()));
            let relay = userspace::RelayMetrics::new(&metrics.registry);
            DataPath::Userspace {
                proxy: userspace::Userspace::new(
                    &config.ip,
                    userspace::INTERFACE,
                    relay,
                    shutdown.clone(),
                ),
                bind_failures,
                skipped_warned: BTreeSet::new(),
            }
        }
        _ => {
            kernel_settings();
            // cluster IPs an earlier userspace run held would shadow nothing, but go
            if let Err(error) = userspace::cleanup(&config.ip, userspace::INTERFACE).await {
                debug!(%error, "cannot remove the userspace proxy's interface");
            }
            DataPath::Nftables {
                installed: None,
                installed_ports: Vec::new(),
                conntrack_warned: false,
            }
        }
    };
    let mode = match path {
        DataPath::Userspace { .. } => Mode::Userspace,
        DataPath::Nftables { .. } => Mode::Nftables,
    };
    metrics.mode.with_label_values(&[&mode.to_string()]).set(1);
    tokio::select! {
        () = shutdown.cancelled() => return Ok(()),
        ready = caches.ready() => {
            if !ready {
                return Ok(());
            }
        }
    }
    let mut changes = caches.subscribe();
    let Caches {
        services, slices, ..
    } = caches;
    info!(%mode, table = %config.rules.table, "service proxy syncing");
    let mut last_full = Instant::now();
    loop {
        let services = services.state();
        let slices = slices.state();
        let ports = model::service_ports(
            services.iter().map(AsRef::as_ref),
            slices.iter().map(AsRef::as_ref),
        );
        let count = ports.len();
        let full = path.needs_full() || last_full.elapsed() >= config.sync_period;
        let started = Instant::now();
        let retry = match path.sync(&config, ports, full).await {
            Ok(synced) => {
                let took = started.elapsed().as_secs_f64();
                if synced.changed {
                    metrics.sync.observe(took);
                    if full {
                        metrics.full.observe(took);
                    } else {
                        metrics.partial.observe(took);
                    }
                    debug!(ports = count, full, seconds = took, "proxy rules synced");
                }
                if full {
                    last_full = Instant::now();
                }
                metrics.last.set(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs_f64())
                        .unwrap_or_default(),
                );
                synced.retry
            }
            Err(error) => {
                if mode == Mode::Nftables {
                    metrics.failures.inc();
                }
                warn!(%error, full, "proxy rules failed to sync; retrying in full");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
        };
        let mut until_next = config.sync_period.saturating_sub(last_full.elapsed());
        if retry {
            until_next = until_next.min(Duration::from_secs(5));
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = changes.changed() => {}
            () = tokio::time::sleep(until_next) => {}
        }
        // gather the burst of changes that usually follows one
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(config.min_sync_period) => {}
        }
    }
}

/// Bumps `changed` on every event of a watch stream, until it ends or `shutdown`.
pub(crate) async fn forward_changes<S, K>(
    stream: S,
    changed: Arc<watch::Sender<u64>>,
    shutdown: CancellationToken,
) where
    S: futures::Stream<Item = Result<K, watcher::Error>> + Send,
{
    let mut stream = std::pin::pin!(stream);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            item = stream.next() => match item {
                Some(Ok(_)) => changed.send_modify(|version| *version += 1),
                Some(Err(error)) => debug!(%error, "watch error"),
                None => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::{Endpoint, Protocol, ServicePort};
    use std::net::Ipv4Addr;

    fn dns(endpoints: &[[u8; 4]]) -> ServicePort {
        ServicePort {
            namespace: "kube-system".into(),
            name: "kube-dns".into(),
            port_name: "dns".into(),
            protocol: Protocol::Udp,
            cluster_ip: Ipv4Addr::new(10, 96, 0, 10),
            port: 53,
            node_port: None,
            external_local: false,
            affinity_seconds: None,
            endpoints: endpoints
                .iter()
                .map(|ip| Endpoint {
                    ip: Ipv4Addr::from(*ip),
                    port: 53,
                    node: None,
                })
                .collect(),
        }
    }

    #[test]
    fn udp_flows_to_gone_endpoints_are_cleared() {
        let both = dns(&[[10, 88, 0, 2], [10, 88, 0, 3]]);
        let one = dns(&[[10, 88, 0, 3]]);
        assert_eq!(
            stale_udp_flows(std::slice::from_ref(&both), std::slice::from_ref(&one)),
            [[
                "-D",
                "-p",
                "udp",
                "--orig-dst",
                "10.96.0.10",
                "--dst-nat",
                "10.88.0.2"
            ]]
        );
        assert!(
            stale_udp_flows(std::slice::from_ref(&one), std::slice::from_ref(&both)).is_empty()
        );
        assert_eq!(
            stale_udp_flows(&[dns(&[])], &[one]),
            [["-D", "-p", "udp", "--orig-dst", "10.96.0.10"]]
        );
        let mut tcp = both;
        tcp.protocol = Protocol::Tcp;
        assert!(
            stale_udp_flows(&[tcp], &[]).is_empty(),
            "TCP flows end by themselves"
        );
    }
}
