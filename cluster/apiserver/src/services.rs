//! Service address allocation: cluster IPs from the service CIDR and node ports from the node-port
//! range, as kube-apiserver hands them out.
//!
//! Every allocated value is a storage key (`/registry/ranges/serviceips/<ip>`,
//! `/registry/ranges/servicenodeports/<port>`) created atomically, so API servers sharing one etcd
//! never hand the same address to two Services. A Service keeps its values across updates that
//! leave them out (`kubectl replace` of a manifest without `clusterIP`); deleting the Service, or
//! changing its type so that it no longer needs them, releases them. A repair pass frees
//! reservations that no Service holds (left by a crash between reserving and storing).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kelson_storage::ListRequest;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::ApiServer;
use crate::error::{ApiError, ApiResult, Cause};

const IP_PREFIX: &str = "/registry/ranges/serviceips/";
const PORT_PREFIX: &str = "/registry/ranges/servicenodeports/";

/// An IPv4 network in CIDR notation (`10.96.0.0/12`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Cidr {
    network: u32,
    prefix: u8,
}

impl Ipv4Cidr {
    /// The network address.
    #[must_use]
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network)
    }

    /// The prefix length.
    #[must_use]
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    /// Whether `ip` lies in the network.
    #[must_use]
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        };
        u32::from(ip) & mask == self.network
    }

    /// The `n`th usable address (0 is the first after the network address).
    #[must_use]
    pub fn host(&self, n: u32) -> Option<Ipv4Addr> {
        let usable = self.size().saturating_sub(2);
        (u64::from(n) < usable).then(|| Ipv4Addr::from(self.network + 1 + n))
    }

    fn usable(&self) -> u32 {
        u32::try_from(self.size().saturating_sub(2)).unwrap_or(u32::MAX)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (ip, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not in CIDR notation (like 10.96.0.0/12)"))?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (1..=30).contains(p))
            .ok_or_else(|| format!("prefix length {prefix:?} must be between 1 and 30"))?;
        let mask = u32::MAX << (32 - u32::from(prefix));
        if u32::from(ip) & !mask != 0 {
            return Err(format!("{text} has host bits set"));
        }
        Ok(Self {
            network: u32::from(ip),
            prefix,
        })
    }
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

/// Parses a node-port range (`30000-32767`).
///
/// # Errors
/// When the text is not `LOW-HIGH` with `0 < LOW <= HIGH`.
pub fn parse_port_range(text: &str) -> Result<RangeInclusive<u16>, String> {
    let (low, high) = text
        .split_once('-')
        .ok_or_else(|| format!("{text:?} is not a port range (like 30000-32767)"))?;
    let low: u16 = low
        .trim()
        .parse()
        .map_err(|_| format!("{low:?} is not a port"))?;
    let high: u16 = high
        .trim()
        .parse()
        .map_err(|_| format!("{high:?} is not a port"))?;
    if low == 0 || low > high {
        return Err(format!("{text:?} is not a port range"));
    }
    Ok(low..=high)
}

/// Where Service addresses come from.
#[derive(Clone, Debug)]
pub struct Ranges {
    /// `--service-cluster-ip-range`.
    pub cluster_ips: Ipv4Cidr,
    /// `--service-node-port-range`.
    pub node_ports: RangeInclusive<u16>,
}

impl Default for Ranges {
    fn default() -> Self {
        Self {
            cluster_ips: "10.96.0.0/12".parse().expect("valid"),
            node_ports: 30000..=32767,
        }
    }
}

impl Ranges {
    /// The address of the `default/kubernetes` Service: the first of the range.
    #[must_use]
    pub fn api_service_ip(&self) -> Ipv4Addr {
        self.cluster_ips
            .host(0)
            .expect("a range holds at least two hosts")
    }

    /// The conventional address of the cluster DNS Service (the tenth of the range).
    #[must_use]
    pub fn dns_service_ip(&self) -> Ipv4Addr {
        self.cluster_ips
            .host(9)
            .unwrap_or_else(|| self.api_service_ip())
    }

    /// Addresses below this offset are only handed out on request (as Kubernetes keeps the start
    /// of the range for well-known Services).
    fn static_band(&self) -> u32 {
        (self.cluster_ips.usable() / 16)
            .clamp(16, 256)
            .min(self.cluster_ips.usable() / 2)
    }
}

fn needs_cluster_ip(spec: &Value) -> bool {
    spec.get("type").and_then(Value::as_str) != Some("ExternalName")
        && spec.get("clusterIP").and_then(Value::as_str) != Some("None")
}

fn needs_node_ports(spec: &Value) -> bool {
    matches!(
        spec.get("type").and_then(Value::as_str),
        Some("NodePort" | "LoadBalancer")
    )
}

/// Carries allocated values over an update that leaves them out, as Kubernetes does: the cluster
/// IP, and each port's node port when a port with the same number and protocol (or name) had one.
pub fn keep_allocated(object: &mut Value, old: &Value) {
    let Some(old_spec) = old.get("spec") else {
        return;
    };
    let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let empty = |v: Option<&Value>| v.and_then(Value::as_str).is_none_or(str::is_empty);
    let same_type = spec.get("type") == old_spec.get("type")
        || (needs_cluster_ip(&Value::Object(spec.clone())) && needs_cluster_ip(old_spec));
    if same_type && empty(spec.get("clusterIP")) && !empty(old_spec.get("clusterIP")) {
        spec.insert("clusterIP".into(), old_spec["clusterIP"].clone());
        if let Some(ips) = old_spec.get("clusterIPs") {
            spec.insert("clusterIPs".into(), ips.clone());
        }
    }
    if !needs_node_ports(&Value::Object(spec.clone())) || !needs_node_ports(old_spec) {
        return;
    }
    let old_ports = old_spec
        .get("ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports {
            if port.get("nodePort").and_then(Value::as_i64).unwrap_or(0) != 0 {
                continue;
            }
            let matching = old_ports.iter().find(|old| {
                let same_number = old.get("port") == port.get("port")
                    && old.get("protocol") == port.get("protocol");
                let same_name = port
                    .get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| !n.is_empty())
                    && old.get("name") == port.get("name");
                same_number || same_name
            });
            if let Some(node_port) = matching.and_then(|old| old.get("nodePort")) {
                port["nodePort"] = node_port.clone();
            }
        }
    }
}

/// The values a Service holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// Its cluster IP.
    pub ip: Option<Ipv4Addr>,
    /// Its node ports.
    pub ports: BTreeSet<u16>,
}

/// The values `service` holds, as stored.
#[must_use]
pub fn held(service: &Value) -> Held {
    let spec = service.get("spec").unwrap_or(&Value::Null);
    let ip = if needs_cluster_ip(spec) {
        spec.get("clusterIP")
            .and_then(Value::as_str)
            .and_then(|ip| ip.parse().ok())
    } else {
        None
    };
    let ports = if needs_node_ports(spec) {
        spec.get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("nodePort").and_then(Value::as_u64))
            .filter_map(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .collect()
    } else {
        BTreeSet::new()
    };
    Held { ip, ports }
}

fn owner_of(service: &Value) -> String {
    format!(
        "{}/{}",
        crate::meta::meta_str(service, "namespace").unwrap_or(""),
        crate::meta::name(service)
    )
}

fn reservation(owner: &str) -> Bytes {
    Bytes::from(
        json!({"service": owner, "reserved": jiff::Timestamp::now().as_second()}).to_string(),
    )
}

/// What a write reserved, to release if the write fails.
#[derive(Debug, Default)]
#[must_use]
pub struct Reserved {
    keys: Vec<String>,
}

impl Reserved {
    /// Frees the reservations (the write they were for did not happen).
    pub async fn release(self, server: &ApiServer) {
        for key in self.keys {
            let _ = server.objects.storage().delete(&key, None).await;
        }
    }
}

enum Claim {
    Taken,
    Mine,
    Fresh(String),
}

async fn claim(server: &ApiServer, key: String, owner: &str) -> ApiResult<Claim> {
    let storage = server.objects.storage();
    match storage.create(&key, reservation(owner)).await {
        Ok(_) => Ok(Claim::Fresh(key)),
        Err(kelson_storage::Error::AlreadyExists { .. }) => {
            let (current, _) = storage.get(&key).await?;
            let holder = current
                .and_then(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
                .and_then(|v| v.get("service").and_then(Value::as_str).map(str::to_owned));
            Ok(if holder.as_deref() == Some(owner) {
                Claim::Mine
            } else {
                Claim::Taken
            })
        }
        Err(error) => Err(error.into()),
    }
}

/// Claims a requested value for `owner` (only checks it with `dry_run`); whether it is free.
async fn request(
    server: &ApiServer,
    key: String,
    owner: &str,
    dry_run: bool,
    reserved: &mut Reserved,
) -> ApiResult<bool> {
    if dry_run {
        return is_free(server, &key, owner).await;
    }
    Ok(match claim(server, key, owner).await? {
        Claim::Taken => false,
        Claim::Mine => true,
        Claim::Fresh(key) => {
            reserved.keys.push(key);
            true
        }
    })
}

async fn is_free(server: &ApiServer, key: &str, owner: &str) -> ApiResult<bool> {
    let (current, _) = server.objects.storage().get(key).await?;
    Ok(current
        .and_then(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
        .is_none_or(|v| v.get("service").and_then(Value::as_str) == Some(owner)))
}

/// Gives `service` the cluster IP and node ports it needs, checking requested values against the
/// ranges and other Services. With `dry_run` nothing is reserved. `old` is the stored Service on
/// updates.
///
/// # Errors
/// 422 naming the field for a value out of range or held by another Service; 500 when a range is
/// full or storage fails.
pub async fn allocate(
    server: &ApiServer,
    service: &mut Value,
    dry_run: bool,
) -> ApiResult<Reserved> {
    let ranges = server.service_ranges.read().clone();
    let owner = owner_of(service);
    let mut reserved = Reserved::default();
    let mut causes = Vec::new();
    let result = allocate_into(
        server,
        &ranges,
        service,
        &owner,
        dry_run,
        &mut reserved,
        &mut causes,
    )
    .await;
    if result.is_err() || !causes.is_empty() {
        reserved.release(server).await;
        result?;
        return Err(ApiError::invalid(
            "Service",
            "",
            crate::meta::name(service),
            causes,
        ));
    }
    Ok(reserved)
}

async fn allocate_into(
    server: &ApiServer,
    ranges: &Ranges,
    service: &mut Value,
    owner: &str,
    dry_run: bool,
    reserved: &mut Reserved,
    causes: &mut Vec<Cause>,
) -> ApiResult<()> {
    let Some(spec) = service.get_mut("spec") else {
        return Ok(());
    };
    let requested = spec
        .get("clusterIP")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if !needs_cluster_ip(spec) {
        if spec.get("type").and_then(Value::as_str) == Some("ExternalName") {
            if !requested.is_empty() {
                causes.push(Cause::new(
                    "FieldValueForbidden",
                    "spec.clusterIPs",
                    "may not be set for ExternalName services",
                ));
            }
        } else {
            spec["clusterIPs"] = json!(["None"]);
        }
    } else if requested.is_empty() {
        let ip = pick_ip(server, ranges, owner, dry_run, reserved).await?;
        spec["clusterIP"] = json!(ip.to_string());
        spec["clusterIPs"] = json!([ip.to_string()]);
    } else {
        match requested.parse::<Ipv4Addr>() {
            Err(_) => causes.push(Cause::invalid(
                "spec.clusterIPs[0]",
                &json!(requested),
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            )),
            Ok(ip) if !ranges.cluster_ips.contains(ip) || ip == ranges.cluster_ips.network() => {
                causes.push(Cause::invalid(
                    "spec.clusterIPs",
                    &json!([requested]),
                    format!(
                        "failed to allocate IP {requested}: provided IP is not in the valid range. The range of valid IPs is {}",
                        ranges.cluster_ips
                    ),
                ));
            }
            Ok(ip) => {
                let key = format!("{IP_PREFIX}{ip}");
                let free = request(server, key, owner, dry_run, reserved).await?;
                if free {
                    spec["clusterIPs"] = json!([requested]);
                } else {
                    causes.push(Cause::invalid(
                        "spec.clusterIPs",
                        &json!([requested]),
                        format!(
                            "failed to allocate IP {requested}: provided IP is already allocated"
                        ),
                    ));
                }
            }
        }
    }

    let node_ports = needs_node_ports(spec);
    let service_type = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_owned();
    let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) else {
        return Ok(());
    };
    // one node port may serve a port number over several protocols, never two port numbers
    let mut used: BTreeMap<u16, (i64, String)> = BTreeMap::new();
    for (i, port) in ports.iter_mut().enumerate() {
        let field = format!("spec.ports[{i}].nodePort");
        let number = port.get("nodePort").and_then(Value::as_i64).unwrap_or(0);
        if !node_ports {
            if number != 0 {
                causes.push(Cause::new(
                    "FieldValueForbidden",
                    field,
                    format!("may not be used when `type` is '{service_type}'"),
                ));
            }
            continue;
        }
        let protocol = port
            .get("protocol")
            .and_then(Value::as_str)
            .unwrap_or("TCP")
            .to_owned();
        let service_port = port.get("port").and_then(Value::as_i64).unwrap_or(0);
        if number == 0 {
            // reuse the node port of the same port number over another protocol
            if let Some((&node_port, _)) = used
                .iter()
                .find(|(_, (p, proto))| *p == service_port && *proto != protocol)
            {
                port["nodePort"] = json!(node_port);
                continue;
            }
            let node_port = pick_port(server, ranges, owner, dry_run, reserved, &used).await?;
            port["nodePort"] = json!(node_port);
            used.insert(node_port, (service_port, protocol));
            continue;
        }
        let in_range = u16::try_from(number)
            .ok()
            .filter(|n| ranges.node_ports.contains(n));
        let Some(node_port) = in_range else {
            causes.push(Cause::invalid(
                field,
                &json!(number),
                format!(
                    "provided port is not in the valid range. The range of valid ports is {}-{}",
                    ranges.node_ports.start(),
                    ranges.node_ports.end()
                ),
            ));
            continue;
        };
        if let Some((other_port, other_protocol)) = used.get(&node_port) {
            if *other_port != service_port || *other_protocol == protocol {
                causes.push(Cause::new(
                    "FieldValueDuplicate",
                    field,
                    format!("{number}"),
                ));
            }
            continue;
        }
        let key = format!("{PORT_PREFIX}{node_port}");
        let free = request(server, key, owner, dry_run, reserved).await?;
        if free {
            used.insert(node_port, (service_port, protocol));
        } else {
            causes.push(Cause::invalid(
                field,
                &json!(number),
                "provided port is already allocated",
            ));
        }
    }
    Ok(())
}

async fn pick_ip(
    server: &ApiServer,
    ranges: &Ranges,
    owner: &str,
    dry_run: bool,
    reserved: &mut Reserved,
) -> ApiResult<Ipv4Addr> {
    let usable = ranges.cluster_ips.usable();
    let band = ranges.static_band();
    // the dynamic band first, from a random start, then the static band
    let dynamic = usable - band;
    let start = rand::random_range(0..dynamic.max(1));
    let candidates = (0..dynamic)
        .map(|k| band + (start + k) % dynamic)
        .chain(0..band);
    for (tries, n) in candidates.enumerate() {
        if tries > 64 {
            return pick_ip_by_listing(server, ranges, owner, dry_run, reserved).await;
        }
        let Some(ip) = ranges.cluster_ips.host(n) else {
            continue;
        };
        if let Some(ip) = try_ip(server, ip, owner, dry_run, reserved).await? {
            return Ok(ip);
        }
    }
    Err(ApiError::internal(
        "failed to allocate a serviceIP: range is full",
    ))
}

async fn try_ip(
    server: &ApiServer,
    ip: Ipv4Addr,
    owner: &str,
    dry_run: bool,
    reserved: &mut Reserved,
) -> ApiResult<Option<Ipv4Addr>> {
    let key = format!("{IP_PREFIX}{ip}");
    if dry_run {
        return Ok(is_free(server, &key, owner).await?.then_some(ip));
    }
    Ok(match claim(server, key, owner).await? {
        Claim::Taken | Claim::Mine => None,
        Claim::Fresh(key) => {
            reserved.keys.push(key);
            Some(ip)
        }
    })
}

/// A nearly full range: find the gaps from the list of reservations.
async fn pick_ip_by_listing(
    server: &ApiServer,
    ranges: &Ranges,
    owner: &str,
    dry_run: bool,
    reserved: &mut Reserved,
) -> ApiResult<Ipv4Addr> {
    let taken: BTreeSet<Ipv4Addr> = list_keys(server, IP_PREFIX)
        .await?
        .keys()
        .filter_map(|ip| ip.parse().ok())
        .collect();
    let band = ranges.static_band();
    let usable = ranges.cluster_ips.usable();
    for n in (band..usable).chain(0..band) {
        let Some(ip) = ranges.cluster_ips.host(n) else {
            continue;
        };
        if taken.contains(&ip) {
            continue;
        }
        if let Some(ip) = try_ip(server, ip, owner, dry_run, reserved).await? {
            return Ok(ip);
        }
    }
    Err(ApiError::internal(
        "failed to allocate a serviceIP: range is full",
    ))
}

async fn pick_port(
    server: &ApiServer,
    ranges: &Ranges,
    owner: &str,
    dry_run: bool,
    reserved: &mut Reserved,
    used: &BTreeMap<u16, (i64, String)>,
) -> ApiResult<u16> {
    let low = *ranges.node_ports.start();
    let count = u32::from(*ranges.node_ports.end() - low) + 1;
    let start = rand::random_range(0..count);
    for k in 0..count {
        let port = low + u16::try_from((start + k) % count).expect("within the range");
        if used.contains_key(&port) {
            continue;
        }
        let key = format!("{PORT_PREFIX}{port}");
        if dry_run {
            if is_free(server, &key, owner).await? {
                return Ok(port);
            }
            continue;
        }
        if let Claim::Fresh(key) = claim(server, key, owner).await? {
            reserved.keys.push(key);
            return Ok(port);
        }
    }
    Err(ApiError::internal(
        "failed to allocate a nodePort: range is full",
    ))
}

/// Frees what `old` held and `new` (the stored successor, or `None` once deleted) no longer holds.
pub async fn release_unused(server: &ApiServer, old: &Value, new: Option<&Value>) {
    let before = held(old);
    let after = new.map(held).unwrap_or_default();
    let owner = owner_of(old);
    let mut keys = Vec::new();
    if let Some(ip) = before.ip.filter(|ip| after.ip != Some(*ip)) {
        keys.push(format!("{IP_PREFIX}{ip}"));
    }
    for port in before.ports.difference(&after.ports) {
        keys.push(format!("{PORT_PREFIX}{port}"));
    }
    for key in keys {
        release_if_owned(server, &key, &owner).await;
    }
}

async fn release_if_owned(server: &ApiServer, key: &str, owner: &str) {
    let storage = server.objects.storage();
    let Ok((Some(kv), _)) = storage.get(key).await else {
        return;
    };
    let holder = serde_json::from_slice::<Value>(&kv.value)
        .ok()
        .and_then(|v| v.get("service").and_then(Value::as_str).map(str::to_owned));
    if holder.as_deref() == Some(owner) {
        let _ = storage.delete(key, Some(kv.mod_revision)).await;
    }
}

async fn list_keys(server: &ApiServer, prefix: &str) -> ApiResult<BTreeMap<String, Value>> {
    let storage = server.objects.storage();
    let mut out = BTreeMap::new();
    let mut start: Option<String> = None;
    loop {
        let request = ListRequest {
            prefix: prefix.to_owned(),
            start: start.clone(),
            revision: None,
            limit: 1000,
        };
        let page = storage.list(request).await?;
        let last = page.kvs.last().map(|kv| kv.key.clone());
        for kv in page.kvs {
            let value = serde_json::from_slice(&kv.value).unwrap_or(Value::Null);
            out.insert(kv.key[prefix.len()..].to_owned(), value);
        }
        match (page.more, last) {
            (true, Some(last)) => start = Some(format!("{last}\0")),
            _ => return Ok(out),
        }
    }
}

/// Frees reservations that no stored Service holds and that are older than `grace` (a create in
/// flight reserves before it stores). Returns how many were freed.
///
/// # Errors
/// On storage failure.
pub async fn repair(server: &ApiServer, grace: Duration) -> ApiResult<usize> {
    let services = server
        .registry
        .lookup("", "v1", "services")
        .expect("services are built in");
    let page = server
        .objects
        .list(
            &services,
            &services.list_prefix(None),
            None,
            None,
            0,
            |_| true,
        )
        .await?;
    let mut holding: BTreeMap<String, String> = BTreeMap::new();
    for service in &page.items {
        let owner = owner_of(service);
        let held = held(service);
        if let Some(ip) = held.ip {
            holding.insert(format!("{IP_PREFIX}{ip}"), owner.clone());
        }
        for port in held.ports {
            holding.insert(format!("{PORT_PREFIX}{port}"), owner.clone());
        }
    }
    let now = jiff::Timestamp::now().as_second();
    let grace = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
    let mut freed = 0;
    for prefix in [IP_PREFIX, PORT_PREFIX] {
        for (value, reservation) in list_keys(server, prefix).await? {
            let key = format!("{prefix}{value}");
            let owner = reservation
                .get("service")
                .and_then(Value::as_str)
                .unwrap_or("");
            let reserved_at = reservation
                .get("reserved")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if holding.get(&key).map(String::as_str) == Some(owner) || now - reserved_at < grace {
                continue;
            }
            warn!(%key, %owner, "freeing a service address no Service holds");
            let _ = server.objects.storage().delete(&key, None).await;
            freed += 1;
        }
    }
    Ok(freed)
}

/// Runs [`repair`] now and every few minutes until `shutdown`.
pub async fn repair_periodically(server: Arc<ApiServer>, shutdown: CancellationToken) {
    loop {
        match repair(&server, Duration::from_secs(60)).await {
            Ok(0) => {}
            Ok(freed) => info!(freed, "service address repair"),
            Err(error) => warn!(error = %error.message, "service address repair failed"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(180)) => {}
        }
    }
}

/// Creates or corrects the `default/kubernetes` Service (the first address of the range, port
/// 443 named `https`) and its Endpoints and EndpointSlice pointing at `address:port`, as
/// kube-apiserver maintains them.
///
/// # Errors
/// When the API refuses the objects.
pub async fn ensure_api_service(
    server: &Arc<ApiServer>,
    address: std::net::IpAddr,
    port: u16,
) -> Result<(), kube::Error> {
    use kube::api::{Api, Patch, PatchParams};
    let client = server.client(crate::auth::User::new(
        "system:apiserver",
        vec!["system:masters".into()],
    ));
    let params = PatchParams::apply("kube-apiserver").force();
    let ip = server.service_ranges.read().api_service_ip().to_string();
    let labels = json!({"component": "apiserver", "provider": "kubernetes"});
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": labels},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "sessionAffinity": "None",
                 "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]}
    });
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk("", "v1", "Service")),
    );
    api.patch("kubernetes", &params, &Patch::Apply(&service))
        .await?;
    let endpoints = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": address.to_string()}],
                     "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]
    });
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk("", "v1", "Endpoints")),
    );
    api.patch("kubernetes", &params, &Patch::Apply(&endpoints))
        .await?;
    let address_type = if address.is_ipv4() { "IPv4" } else { "IPv6" };
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": address_type,
        "endpoints": [{"addresses": [address.to_string()], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}]
    });
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client,
        "default",
        &kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
            "discovery.k8s.io",
            "v1",
            "EndpointSlice",
        )),
    );
    api.patch("kubernetes", &params, &Patch::Apply(&slice))
        .await?;
    Ok(())
}

/// Creates or corrects `kube-system/kube-dns`, the cluster DNS Service (the tenth address of
/// the range, port 53 over UDP and TCP, as CoreDNS's). It has no selector: each node's DNS
/// server publishes itself in an EndpointSlice of its own.
///
/// # Errors
/// When the API refuses the Service.
pub async fn ensure_dns_service(server: &Arc<ApiServer>) -> Result<(), kube::Error> {
    use kube::api::{Api, Patch, PatchParams};
    let client = server.client(crate::auth::User::new(
        "system:apiserver",
        vec!["system:masters".into()],
    ));
    let ip = server.service_ranges.read().dns_service_ip().to_string();
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system",
                     "labels": {"k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true",
                                "kubernetes.io/name": "CoreDNS"}},
        "spec": {"type": "ClusterIP", "clusterIP": ip,
                 "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                           {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]}
    });
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client,
        "kube-system",
        &kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk("", "v1", "Service")),
    );
    api.patch(
        "kube-dns",
        &PatchParams::apply("kube-apiserver").force(),
        &Patch::Apply(&service),
    )
    .await?;
    Ok(())
}

/// Creates the `kelson` IngressClass (controller `kelson.dev/ingress`, the cluster's default
/// class) unless it exists; a user's edits to it stay.
///
/// # Errors
/// When the API refuses it.
pub async fn ensure_ingress_class(server: &Arc<ApiServer>) -> Result<(), kube::Error> {
    use kube::api::{Api, PostParams};
    let client = server.client(crate::auth::User::new(
        "system:apiserver",
        vec!["system:masters".into()],
    ));
    let api: Api<k8s_openapi::api::networking::v1::IngressClass> = Api::all(client);
    if api.get_opt("kelson").await?.is_some() {
        return Ok(());
    }
    let class = serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": "kelson",
                     "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}},
        "spec": {"controller": "kelson.dev/ingress"}
    }))
    .expect("a valid IngressClass");
    match api.create(&PostParams::default(), &class).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_and_port_ranges_parse() {
        let cidr: Ipv4Cidr = "10.96.0.0/12".parse().unwrap();
        assert_eq!(cidr.host(0), Some(Ipv4Addr::new(10, 96, 0, 1)));
        assert_eq!(cidr.host(9), Some(Ipv4Addr::new(10, 96, 0, 10)));
        assert!(cidr.contains(Ipv4Addr::new(10, 111, 255, 254)));
        assert!(!cidr.contains(Ipv4Addr::new(10, 112, 0, 1)));
        assert_eq!(cidr.usable(), (1 << 20) - 2);
        assert!("10.96.0.1/12".parse::<Ipv4Cidr>().is_err());
        assert!("10.96.0.0".parse::<Ipv4Cidr>().is_err());
        assert!("10.96.0.0/31".parse::<Ipv4Cidr>().is_err());
        let small: Ipv4Cidr = "192.168.7.0/29".parse().unwrap();
        assert_eq!(small.host(5), Some(Ipv4Addr::new(192, 168, 7, 6)));
        assert_eq!(small.host(6), None);
        assert_eq!(parse_port_range("30000-32767").unwrap(), 30000..=32767);
        assert!(parse_port_range("32767-30000").is_err());
        assert!(parse_port_range("0-10").is_err());
    }

    #[test]
    fn updates_keep_allocated_values() {
        let old = json!({"spec": {"type": "NodePort", "clusterIP": "10.96.3.4", "clusterIPs": ["10.96.3.4"],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080},
                      {"name": "metrics", "port": 9090, "protocol": "TCP", "nodePort": 30090}]}});
        let mut new = json!({"spec": {"type": "NodePort",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                      {"name": "extra", "port": 9090, "protocol": "TCP"},
                      {"name": "other", "port": 7, "protocol": "UDP"}]}});
        keep_allocated(&mut new, &old);
        assert_eq!(new["spec"]["clusterIP"], "10.96.3.4");
        assert_eq!(new["spec"]["ports"][0]["nodePort"], 30080, "same name");
        assert_eq!(new["spec"]["ports"][1]["nodePort"], 30090, "same number");
        assert!(new["spec"]["ports"][2].get("nodePort").is_none());

        // switching to ClusterIP keeps the IP but drops node ports
        let mut cluster_ip =
            json!({"spec": {"type": "ClusterIP", "ports": [{"port": 80, "protocol": "TCP"}]}});
        keep_allocated(&mut cluster_ip, &old);
        assert_eq!(cluster_ip["spec"]["clusterIP"], "10.96.3.4");
        assert!(cluster_ip["spec"]["ports"][0].get("nodePort").is_none());
        assert_eq!(held(&old).ports, BTreeSet::from([30080, 30090]));
        assert_eq!(held(&cluster_ip).ports, BTreeSet::new());

        // an ExternalName Service holds nothing
        let external = json!({"spec": {"type": "ExternalName", "externalName": "example.org"}});
        assert_eq!(held(&external), Held::default());
    }
}
