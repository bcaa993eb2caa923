//! The userspace proxy, for nodes where nftables cannot be used (no `nft`, or a kernel without
//! nf_tables): the node takes every cluster IP as its own address, on an interface of its own
//! kept down (as kube-proxy's IPVS mode does with `kube-ipvs0`), and relays each Service port's
//! TCP connections and UDP datagrams to its endpoints from sockets bound to the cluster IP and
//! to the node port.
//!
//! What differs from the nftables mode: endpoints see the node as the client (its address on the
//! pod bridge), not the client itself; established connections end when the proxy stops; SCTP is
//! not relayed. A Service port without endpoints has no socket, so the kernel refuses
//! connections at once, as the nftables mode's reject does.
//!
//! [`plan`] (pure) turns the Service ports into the addresses and sockets the node should have;
//! [`Userspace::sync`] makes it so.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::model::{Protocol, ServicePort};

/// The interface that holds the cluster IPs.
pub const INTERFACE: &str = "kelson-svc";

/// How long a UDP client keeps its endpoint without sending or receiving.
const UDP_IDLE: Duration = Duration::from_secs(30);

/// Tries of different endpoints for one TCP connection.
const CONNECT_TRIES: usize = 4;

/// Where the node listens for one Service port: the cluster IP's port, or the node port on
/// every address (`0.0.0.0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The address to bind.
    pub address: SocketAddrV4,
}

impl std::fmt::Display for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.protocol.nft())
    }
}

/// Where a frontend's traffic goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backends {
    /// The Service port, `namespace/name/protocol/port`.
    pub service: String,
    /// Endpoint addresses, in a stable order.
    pub endpoints: Vec<SocketAddrV4>,
    /// `sessionAffinity: ClientIP` timeout.
    pub affinity: Option<Duration>,
}

/// What the node should have: the cluster IPs as local addresses and one socket per frontend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Every cluster IP, also of Services without endpoints (so that connections are refused
    /// rather than routed off the node).
    pub addresses: BTreeSet<Ipv4Addr>,
    /// Frontends of Service ports that have endpoints.
    pub frontends: BTreeMap<Frontend, Backends>,
    /// Service ports the userspace proxy cannot relay (SCTP).
    pub skipped: Vec<String>,
}

/// The plan for `ports` on node `node`.
#[must_use]
pub fn plan(ports: &[ServicePort], node: &str) -> Plan {
    let mut plan = Plan::default();
    for port in ports {
        plan.addresses.insert(port.cluster_ip);
        if port.protocol == Protocol::Sctp {
            plan.skipped.push(port.id());
            continue;
        }
        let endpoints: Vec<SocketAddrV4> = port
            .endpoints
            .iter()
            .map(|e| SocketAddrV4::new(e.ip, e.port))
            .collect();
        let affinity = port
            .affinity_seconds
            .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0)));
        if !endpoints.is_empty() {
            plan.frontends.insert(
                Frontend {
                    protocol: port.protocol,
                    address: SocketAddrV4::new(port.cluster_ip, port.port),
                },
                Backends {
                    service: port.id(),
                    endpoints: endpoints.clone(),
                    affinity,
                },
            );
        }
        if let Some(node_port) = port.node_port {
            let endpoints: Vec<SocketAddrV4> = if port.external_local {
                port.endpoints
                    .iter()
                    .filter(|e| e.node.as_deref() == Some(node))
                    .map(|e| SocketAddrV4::new(e.ip, e.port))
                    .collect()
            } else {
                endpoints
            };
            if !endpoints.is_empty() {
                plan.frontends.insert(
                    Frontend {
                        protocol: port.protocol,
                        address: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, node_port),
                    },
                    Backends {
                        service: port.id(),
                        endpoints,
                        affinity,
                    },
                );
            }
        }
    }
    plan
}

/// Picks endpoints for clients: round robin, or the client's earlier endpoint under
/// ClientIP affinity.
#[derive(Debug)]
pub struct Balancer {
    backends: Backends,
    next: usize,
    sticky: HashMap<IpAddr, (SocketAddrV4, Instant)>,
}

impl Balancer {
    /// A balancer over `backends`.
    #[must_use]
    pub fn new(backends: Backends) -> Self {
        Self {
            backends,
            next: 0,
            sticky: HashMap::new(),
        }
    }

    /// Replaces the endpoints; clients stuck to a removed endpoint pick again.
    pub fn update(&mut self, backends: Backends) {
        self.sticky
            .retain(|_, (endpoint, _)| backends.endpoints.contains(endpoint));
        if backends.affinity.is_none() {
            self.sticky.clear();
        }
        self.backends = backends;
    }

    /// Whether `endpoint` still receives traffic.
    #[must_use]
    pub fn has(&self, endpoint: SocketAddrV4) -> bool {
        self.backends.endpoints.contains(&endpoint)
    }

    /// The endpoint for a new connection from `client`, other than those in `failed`.
    pub fn pick(
        &mut self,
        client: IpAddr,
        failed: &[SocketAddrV4],
        now: Instant,
    ) -> Option<SocketAddrV4> {
        if let Some(timeout) = self.backends.affinity
            && let Some((endpoint, last)) = self.sticky.get(&client).copied()
            && now.duration_since(last) < timeout
            && !failed.contains(&endpoint)
        {
            self.sticky.insert(client, (endpoint, now));
            return Some(endpoint);
        }
        let endpoints = &self.backends.endpoints;
        let endpoint = (0..endpoints.len())
            .map(|i| endpoints[(self.next + i) % endpoints.len()])
            .find(|e| !failed.contains(e))?;
        self.next = self.next.wrapping_add(1);
        if self.backends.affinity.is_some() {
            if self.sticky.len() > 65_536 {
                self.sticky.retain(|_, (_, last)| {
                    now.duration_since(*last) < self.backends.affinity.unwrap_or_default()
                });
            }
            self.sticky.insert(client, (endpoint, now));
        }
        Some(endpoint)
    }
}

/// Counters of the relays.
#[derive(Clone, Debug)]
pub struct RelayMetrics {
    /// Connections and UDP flows relayed, by protocol.
    pub relayed: prometheus::IntCounterVec,
    /// Connections no endpoint accepted.
    pub failed: prometheus::IntCounterVec,
}

impl RelayMetrics {
    /// Registers the families in `registry`.
    ///
    /// # Panics
    /// When registered twice in one registry.
    #[must_use]
    pub fn new(registry: &prometheus::Registry) -> Self {
        let relayed = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "kelson_proxy_userspace_relayed_total",
                "Connections (TCP) and client flows (UDP) relayed by the userspace proxy",
            ),
            &["protocol"],
        )
        .expect("valid metric");
        let failed = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "kelson_proxy_userspace_relay_failures_total",
                "Connections the userspace proxy closed because no endpoint accepted them",
            ),
            &["protocol"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(relayed.clone()))
            .expect("unique");
        registry.register(Box::new(failed.clone())).expect("unique");
        Self { relayed, failed }
    }
}

struct Running {
    balancer: Arc<Mutex<Balancer>>,
    stop: CancellationToken,
}

/// The userspace proxy's installed state.
pub struct Userspace {
    ip: PathBuf,
    interface: String,
    addresses: Option<BTreeSet<Ipv4Addr>>,
    running: HashMap<Frontend, Running>,
    metrics: RelayMetrics,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Userspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Userspace")
            .field("interface", &self.interface)
            .field("frontends", &self.running.len())
            .finish_non_exhaustive()
    }
}

/// What one [`Userspace::sync`] did.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Frontends that could not be bound (retried on the next sync), with why.
    pub failed: Vec<(Frontend, String)>,
    /// Whether anything was added, changed or removed.
    pub changed: bool,
}

impl Userspace {
    /// A proxy that holds cluster IPs on `interface` (created when missing) using the `ip`
    /// program; its relays stop with `shutdown`.
    #[must_use]
    pub fn new(
        ip: impl Into<PathBuf>,
        interface: impl Into<String>,
        metrics: RelayMetrics,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            ip: ip.into(),
            interface: interface.into(),
            addresses: None,
            running: HashMap::new(),
            metrics,
            shutdown,
        }
    }

    /// Makes the node match `plan`: adds the new cluster IPs, binds new frontends, hands
    /// changed endpoints to running frontends, closes frontends no longer planned and removes
    /// addresses no Service has. With `full`, the interface's addresses are read back first, so
    /// anything changed behind the proxy's back is repaired.
    ///
    /// # Errors
    /// When the interface or its addresses cannot be set up.
    pub async fn sync(&mut self, plan: &Plan, full: bool) -> Result<SyncReport, crate::Error> {
        let report = self.sync_once(plan, full).await;
        if report.is_err() {
            // the interface is in an unknown state: read it back next time
            self.addresses = None;
        }
        report
    }

    /// Whether the next sync reads the interface back (at first, and after a failure).
    #[must_use]
    pub fn needs_full(&self) -> bool {
        self.addresses.is_none()
    }

    async fn sync_once(&mut self, plan: &Plan, full: bool) -> Result<SyncReport, crate::Error> {
        if full || self.addresses.is_none() {
            self.addresses = Some(self.read_addresses().await?);
        }
        let installed = self.addresses.clone().unwrap_or_default();
        let add: Vec<_> = plan.addresses.difference(&installed).copied().collect();
        if !add.is_empty() {
            self.batch(&add, "add").await?;
        }
        let mut report = SyncReport {
            changed: !add.is_empty(),
            ..SyncReport::default()
        };
        self.running.retain(|frontend, running| {
            let keep = plan.frontends.contains_key(frontend);
            if !keep {
                running.stop.cancel();
                report.changed = true;
            }
            keep
        });
        for (frontend, backends) in &plan.frontends {
            if let Some(running) = self.running.get(frontend) {
                let mut balancer = running.balancer.lock();
                if balancer.backends != *backends {
                    balancer.update(backends.clone());
                    report.changed = true;
                }
                continue;
            }
            match self.start(*frontend, backends.clone()).await {
                Ok(running) => {
                    debug!(%frontend, service = %backends.service, "relaying");
                    self.running.insert(*frontend, running);
                    report.changed = true;
                }
                Err(error) => report.failed.push((*frontend, error.to_string())),
            }
        }
        let remove: Vec<_> = installed.difference(&plan.addresses).copied().collect();
        if !remove.is_empty() {
            self.batch(&remove, "del").await?;
            report.changed = true;
        }
        self.addresses = Some(plan.addresses.clone());
        Ok(report)
    }

    async fn start(&self, frontend: Frontend, backends: Backends) -> std::io::Result<Running> {
        let balancer = Arc::new(Mutex::new(Balancer::new(backends)));
        let stop = self.shutdown.child_token();
        let address = SocketAddr::V4(frontend.address);
        match frontend.protocol {
            Protocol::Tcp => {
                let socket = TcpSocket::new_v4()?;
                socket.set_reuseaddr(true)?;
                socket.bind(address)?;
                let listener = socket.listen(1024)?;
                tokio::spawn(serve_tcp(
                    listener,
                    balancer.clone(),
                    self.metrics.clone(),
                    stop.clone(),
                ));
            }
            Protocol::Udp => {
                let socket = UdpSocket::bind(address).await?;
                tokio::spawn(serve_udp(
                    Arc::new(socket),
                    balancer.clone(),
                    self.metrics.clone(),
                    stop.clone(),
                ));
            }
            Protocol::Sctp => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "SCTP is not relayed",
                ));
            }
        }
        Ok(Running { balancer, stop })
    }

    /// The cluster IPs the interface holds now, creating it when missing.
    async fn read_addresses(&self) -> Result<BTreeSet<Ipv4Addr>, crate::Error> {
        let show = run_ip(&self.ip, &["link", "show", &self.interface]).await;
        if show.is_err() {
            // a dummy interface where the kernel has them, else a bridge with no ports
            let dummy = run_ip(&self.ip, &["link", "add", &self.interface, "type", "dummy"]).await;
            if let Err(error) = dummy {
                debug!(%error, "no dummy interfaces; holding cluster IPs on an empty bridge");
                run_ip(
                    &self.ip,
                    &["link", "add", &self.interface, "type", "bridge"],
                )
                .await?;
            }
        }
        let listing = run_ip(
            &self.ip,
            &["-4", "-o", "address", "show", "dev", &self.interface],
        )
        .await?;
        Ok(parse_addresses(&listing))
    }

    async fn batch(&self, addresses: &[Ipv4Addr], verb: &str) -> Result<(), crate::Error> {
        let mut script = String::new();
        for address in addresses {
            script.push_str(&format!(
                "address {verb} {address}/32 dev {}\n",
                self.interface
            ));
        }
        run_ip_batch(&self.ip, &script).await
    }

    /// Stops every relay (the addresses stay until [`cleanup`]).
    pub fn stop(&mut self) {
        for running in self.running.values() {
            running.stop.cancel();
        }
        self.running.clear();
    }
}

/// The IPv4 addresses in `ip -4 -o address show` output.
#[must_use]
pub fn parse_addresses(listing: &str) -> BTreeSet<Ipv4Addr> {
    listing
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|w| *w == "inet")?;
            words.next()?.split('/').next()?.parse().ok()
        })
        .collect()
}

async fn run_ip(ip: &Path, args: &[&str]) -> Result<String, crate::Error> {
    let output = tokio::process::Command::new(ip)
        .args(args)
        .output()
        .await
        .map_err(|e| crate::Error::Ip(format!("cannot run {}: {e}", ip.display())))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(crate::Error::Ip(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

async fn run_ip_batch(ip: &Path, script: &str) -> Result<(), crate::Error> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(ip)
        // -force: one address already there (or already gone) does not stop the rest
        .args(["-force", "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| crate::Error::Ip(format!("cannot run {}: {e}", ip.display())))?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin
        .write_all(script.as_bytes())
        .await
        .map_err(|e| crate::Error::Ip(e.to_string()))?;
    drop(stdin);
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| crate::Error::Ip(e.to_string()))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    // "File exists" / "Cannot assign requested address" are the states asked for already
    let real: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            !l.contains("File exists")
                && !l.contains("Cannot assign requested address")
                && !l.starts_with("Command failed")
                && !l.trim().is_empty()
        })
        .collect();
    if output.status.success() || real.is_empty() {
        Ok(())
    } else {
        Err(crate::Error::Ip(real.join("; ")))
    }
}

/// Removes the interface holding the cluster IPs (`kelson proxy --cleanup`, and the nftables
/// mode at start); absent is fine.
///
/// # Errors
/// When `ip` cannot be run.
pub async fn cleanup(ip: &Path, interface: &str) -> Result<(), crate::Error> {
    if run_ip(ip, &["link", "show", interface]).await.is_ok() {
        run_ip(ip, &["link", "delete", interface]).await?;
    }
    Ok(())
}

async fn serve_tcp(
    listener: TcpListener,
    balancer: Arc<Mutex<Balancer>>,
    metrics: RelayMetrics,
    stop: CancellationToken,
) {
    loop {
        let (client, peer) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // out of file descriptors and the like: wait, do not spin
                    warn!(%error, "userspace proxy cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let balancer = balancer.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let Some(upstream) = connect(&balancer, peer.ip()).await else {
                metrics.failed.with_label_values(&["tcp"]).inc();
                // reset rather than close, as a refused connection would look
                let _ = client.set_zero_linger();
                return;
            };
            metrics.relayed.with_label_values(&["tcp"]).inc();
            let (mut client, mut upstream) = (client, upstream);
            let _ = client.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        });
    }
}

/// Connects to an endpoint, trying others (with growing timeouts) when one does not answer.
async fn connect(balancer: &Mutex<Balancer>, client: IpAddr) -> Option<TcpStream> {
    let mut failed = Vec::new();
    let mut timeout = Duration::from_millis(250);
    for _ in 0..CONNECT_TRIES {
        let endpoint = balancer.lock().pick(client, &failed, Instant::now())?;
        match tokio::time::timeout(timeout, TcpStream::connect(endpoint)).await {
            Ok(Ok(stream)) => return Some(stream),
            Ok(Err(error)) => debug!(%endpoint, %error, "endpoint refused"),
            Err(_) => debug!(%endpoint, "endpoint did not answer"),
        }
        failed.push(endpoint);
        timeout *= 2;
    }
    None
}

struct Flow {
    endpoint: SocketAddrV4,
    upstream: Arc<UdpSocket>,
    last: Arc<Mutex<Instant>>,
    stop: CancellationToken,
}

async fn serve_udp(
    socket: Arc<UdpSocket>,
    balancer: Arc<Mutex<Balancer>>,
    metrics: RelayMetrics,
    stop: CancellationToken,
) {
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    let mut buffer = vec![0u8; 65_536];
    let mut sweep = tokio::time::interval(UDP_IDLE / 3);
    loop {
        let (length, client) = tokio::select! {
            () = stop.cancelled() => {
                for flow in flows.values() {
                    flow.stop.cancel();
                }
                return;
            }
            _ = sweep.tick() => {
                let now = Instant::now();
                flows.retain(|_, flow| {
                    let live = now.duration_since(*flow.last.lock()) < UDP_IDLE;
                    if !live {
                        flow.stop.cancel();
                    }
                    live
                });
                continue;
            }
            received = socket.recv_from(&mut buffer) => match received {
                Ok(received) => received,
                Err(error) => {
                    debug!(%error, "userspace proxy UDP receive");
                    continue;
                }
            },
        };
        // a flow to an endpoint that is gone picks again (as conntrack -D does for the kernel)
        if let Some(flow) = flows.get(&client)
            && !balancer.lock().has(flow.endpoint)
        {
            flow.stop.cancel();
            flows.remove(&client);
        }
        let flow = match flows.entry(client) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                match open_flow(&balancer, client, &socket, &metrics, &stop).await {
                    Some(flow) => entry.insert(flow),
                    None => continue,
                }
            }
        };
        *flow.last.lock() = Instant::now();
        if let Err(error) = flow.upstream.send(&buffer[..length]).await {
            debug!(endpoint = %flow.endpoint, %error, "UDP send to endpoint");
        }
    }
}

/// A new UDP flow from `client` to an endpoint, with its reply relay running.
async fn open_flow(
    balancer: &Mutex<Balancer>,
    client: SocketAddr,
    frontend: &Arc<UdpSocket>,
    metrics: &RelayMetrics,
    stop: &CancellationToken,
) -> Option<Flow> {
    let endpoint = balancer.lock().pick(client.ip(), &[], Instant::now())?;
    let upstream = match UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await {
        Ok(upstream) => upstream,
        Err(error) => {
            warn!(%error, "userspace proxy cannot open a UDP socket");
            metrics.failed.with_label_values(&["udp"]).inc();
            return None;
        }
    };
    if let Err(error) = upstream.connect(endpoint).await {
        debug!(%endpoint, %error, "UDP endpoint unreachable");
        metrics.failed.with_label_values(&["udp"]).inc();
        return None;
    }
    metrics.relayed.with_label_values(&["udp"]).inc();
    let flow = Flow {
        endpoint,
        upstream: Arc::new(upstream),
        last: Arc::new(Mutex::new(Instant::now())),
        stop: stop.child_token(),
    };
    tokio::spawn(replies(
        flow.upstream.clone(),
        frontend.clone(),
        client,
        flow.last.clone(),
        flow.stop.clone(),
    ));
    Some(flow)
}

/// Sends an endpoint's replies back to the client, from the frontend's address.
async fn replies(
    upstream: Arc<UdpSocket>,
    frontend: Arc<UdpSocket>,
    client: SocketAddr,
    last: Arc<Mutex<Instant>>,
    stop: CancellationToken,
) {
    let mut buffer = vec![0u8; 65_536];
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            received = upstream.recv(&mut buffer) => match received {
                Ok(length) => {
                    *last.lock() = Instant::now();
                    let _ = frontend.send_to(&buffer[..length], client).await;
                }
                // ICMP unreachable from the endpoint and the like: the client retries
                Err(error) => debug!(%error, "UDP receive from endpoint"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Endpoint;

    fn port(protocol: Protocol, endpoints: &[([u8; 4], &str)]) -> ServicePort {
        ServicePort {
            namespace: "shop".into(),
            name: "web".into(),
            port_name: "http".into(),
            protocol,
            cluster_ip: Ipv4Addr::new(10, 96, 0, 50),
            port: 80,
            node_port: Some(30080),
            external_local: false,
            affinity_seconds: None,
            endpoints: endpoints
                .iter()
                .map(|(ip, node)| Endpoint {
                    ip: Ipv4Addr::from(*ip),
                    port: 8080,
                    node: Some((*node).into()),
                })
                .collect(),
        }
    }

    fn frontend(ip: [u8; 4], port: u16) -> Frontend {
        Frontend {
            protocol: Protocol::Tcp,
            address: SocketAddrV4::new(Ipv4Addr::from(ip), port),
        }
    }

    #[test]
    fn plan_binds_cluster_ip_and_node_port() {
        let plan = plan(
            &[port(
                Protocol::Tcp,
                &[([10, 88, 0, 5], "n1"), ([10, 88, 0, 6], "n2")],
            )],
            "n1",
        );
        assert_eq!(
            plan.addresses.iter().collect::<Vec<_>>(),
            [&Ipv4Addr::new(10, 96, 0, 50)]
        );
        let keys: Vec<_> = plan.frontends.keys().copied().collect();
        assert_eq!(
            keys,
            [frontend([0, 0, 0, 0], 30080), frontend([10, 96, 0, 50], 80)]
        );
        assert_eq!(plan.frontends[&keys[0]].endpoints.len(), 2);
        assert_eq!(plan.frontends[&keys[1]].service, "shop/web/tcp/http");
    }

    #[test]
    fn empty_services_keep_their_address_but_no_socket() {
        let plan = plan(&[port(Protocol::Tcp, &[])], "n1");
        assert_eq!(
            plan.addresses.len(),
            1,
            "refused by the node, not routed away"
        );
        assert!(plan.frontends.is_empty());
    }

    #[test]
    fn local_traffic_policy_uses_this_nodes_endpoints_on_the_node_port() {
        let mut local = port(
            Protocol::Tcp,
            &[([10, 88, 0, 5], "n1"), ([10, 88, 0, 6], "n2")],
        );
        local.external_local = true;
        let on_n2 = plan(std::slice::from_ref(&local), "n2");
        assert_eq!(
            on_n2.frontends[&frontend([0, 0, 0, 0], 30080)].endpoints,
            [SocketAddrV4::new(Ipv4Addr::new(10, 88, 0, 6), 8080)]
        );
        assert_eq!(
            on_n2.frontends[&frontend([10, 96, 0, 50], 80)]
                .endpoints
                .len(),
            2
        );
        let on_n3 = plan(&[local], "n3");
        assert!(!on_n3.frontends.contains_key(&frontend([0, 0, 0, 0], 30080)));
    }

    #[test]
    fn sctp_is_reported_not_relayed() {
        let plan = plan(&[port(Protocol::Sctp, &[([10, 88, 0, 5], "n1")])], "n1");
        assert!(plan.frontends.is_empty());
        assert_eq!(plan.skipped, ["shop/web/sctp/http"]);
    }

    fn backends(endpoints: &[u8], affinity: Option<u64>) -> Backends {
        Backends {
            service: "s".into(),
            endpoints: endpoints
                .iter()
                .map(|last| SocketAddrV4::new(Ipv4Addr::new(10, 88, 0, *last), 80))
                .collect(),
            affinity: affinity.map(Duration::from_secs),
        }
    }

    #[test]
    fn balancer_rotates_and_skips_failed_endpoints() {
        let mut balancer = Balancer::new(backends(&[1, 2, 3], None));
        let client: IpAddr = Ipv4Addr::new(10, 88, 0, 100).into();
        let now = Instant::now();
        let picked: Vec<u8> = (0..6)
            .map(|_| balancer.pick(client, &[], now).unwrap().ip().octets()[3])
            .collect();
        assert_eq!(picked, [1, 2, 3, 1, 2, 3]);
        let failed = [SocketAddrV4::new(Ipv4Addr::new(10, 88, 0, 1), 80)];
        assert_ne!(balancer.pick(client, &failed, now), Some(failed[0]));
        let all = backends(&[1, 2, 3], None).endpoints;
        assert_eq!(balancer.pick(client, &all, now), None);
    }

    #[test]
    fn affinity_sticks_until_timeout_or_removal() {
        let mut balancer = Balancer::new(backends(&[1, 2, 3], Some(10)));
        let (a, b): (IpAddr, IpAddr) = (
            Ipv4Addr::new(10, 88, 0, 100).into(),
            Ipv4Addr::new(10, 88, 0, 101).into(),
        );
        let now = Instant::now();
        let first = balancer.pick(a, &[], now).unwrap();
        assert_ne!(balancer.pick(b, &[], now).unwrap(), first);
        for _ in 0..5 {
            assert_eq!(balancer.pick(a, &[], now).unwrap(), first);
        }
        let later = now + Duration::from_secs(11);
        // after the timeout the round robin goes on (b took the second endpoint)
        assert_ne!(balancer.pick(a, &[], later).unwrap(), first);
        let sticky = balancer.pick(a, &[], later).unwrap();
        let remaining: Vec<u8> = [1, 2, 3]
            .into_iter()
            .filter(|n| *n != sticky.ip().octets()[3])
            .collect();
        balancer.update(backends(&remaining, Some(10)));
        assert_ne!(balancer.pick(a, &[], later).unwrap(), sticky);
    }

    #[test]
    fn addresses_are_read_from_ip_output() {
        let listing = "5: kelson-svc    inet 10.96.0.1/32 scope global kelson-svc\\       valid_lft forever preferred_lft forever\n5: kelson-svc    inet 10.96.0.10/32 scope global kelson-svc\\       valid_lft forever preferred_lft forever\n";
        assert_eq!(
            parse_addresses(listing).into_iter().collect::<Vec<_>>(),
            [Ipv4Addr::new(10, 96, 0, 1), Ipv4Addr::new(10, 96, 0, 10)]
        );
    }
}
