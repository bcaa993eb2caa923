//! Cluster DNS, answering as CoreDNS's kubernetes plugin does, on a hickory-dns server:
//!
//! - `<service>.<namespace>.svc.<domain>`: A with the cluster IP; for a headless Service one A
//!   per ready endpoint; for an ExternalName Service a CNAME;
//! - `<endpoint>.<service>.<namespace>.svc.<domain>` (the endpoint's hostname, or its address
//!   with dashes) for headless Services;
//! - `_<port>._<protocol>.<service>.<namespace>.svc.<domain>`: SRV for named ports (and SRV for
//!   every named port at the Service's own name), with the targets' A records as additionals;
//! - `a-b-c-d.<namespace>.pod.<domain>`: A a.b.c.d;
//! - PTR for cluster IPs and headless endpoints;
//! - NXDOMAIN for other names in the zone, NOERROR without records (and the zone's SOA) for a
//!   name that exists with other types; every other name forwarded to the node's resolvers.
//!
//! [`answer`] is the pure lookup; [`Handler`] serves it with forwarding; [`serve`] binds UDP and
//! TCP on one port.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Message, MessageType, Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, CNAME, PTR, SOA, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::Store;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The record data cluster names have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Data {
    /// An IPv4 address.
    A(Ipv4Addr),
    /// An alias.
    Cname(String),
    /// A service location.
    Srv {
        /// Weight among the targets.
        weight: u16,
        /// Port.
        port: u16,
        /// Target name.
        target: String,
    },
    /// A reverse name.
    Ptr(String),
}

/// One answer record: a name (without the final dot) and its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rr {
    /// Owner name.
    pub name: String,
    /// Data.
    pub data: Data,
}

/// What a query gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Records, with additional records (the A records of SRV targets).
    Records(Vec<Rr>, Vec<Rr>),
    /// The name exists, without records of this type.
    NoData,
    /// The name does not exist in the cluster zone.
    NxDomain,
    /// Not a cluster name: forward it.
    Elsewhere,
}

/// The query types the cluster zone distinguishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qtype {
    /// A.
    A,
    /// SRV.
    Srv,
    /// PTR.
    Ptr,
    /// CNAME.
    Cname,
    /// ANY.
    Any,
    /// Anything else (AAAA, TXT, ...): no such records in an IPv4 cluster.
    Other,
}

impl Qtype {
    fn of(record_type: RecordType) -> Self {
        match record_type {
            RecordType::A => Self::A,
            RecordType::SRV => Self::Srv,
            RecordType::PTR => Self::Ptr,
            RecordType::CNAME => Self::Cname,
            RecordType::ANY => Self::Any,
            _ => Self::Other,
        }
    }

    fn wants(self, data: &Data) -> bool {
        matches!(
            (self, data),
            (Self::Any, _)
                | (Self::A, Data::A(_))
                | (Self::Srv, Data::Srv { .. })
                | (Self::Ptr, Data::Ptr(_))
                | (Self::Cname | Self::A, Data::Cname(_))
        )
    }
}

fn dashed(ip: Ipv4Addr) -> String {
    ip.to_string().replace('.', "-")
}

/// A ready endpoint of a headless Service: its DNS label and address.
fn headless_endpoints(
    slices: &[Arc<EndpointSlice>],
    namespace: &str,
    service: &str,
) -> Vec<(String, Ipv4Addr)> {
    let mut out = BTreeSet::new();
    for slice in slices {
        let owner = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"));
        if slice.metadata.namespace.as_deref() != Some(namespace)
            || owner.map(String::as_str) != Some(service)
            || slice.address_type != "IPv4"
        {
            continue;
        }
        for endpoint in &slice.endpoints {
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            if !ready {
                continue;
            }
            for address in &endpoint.addresses {
                if let Ok(ip) = address.parse::<Ipv4Addr>() {
                    let label = endpoint.hostname.clone().unwrap_or_else(|| dashed(ip));
                    out.insert((label, ip));
                }
            }
        }
    }
    out.into_iter().collect()
}

/// The ports named in a headless Service's slices (the Service's own ports otherwise).
fn slice_port(
    slices: &[Arc<EndpointSlice>],
    namespace: &str,
    service: &str,
    name: &str,
    protocol: &str,
) -> Option<u16> {
    slices
        .iter()
        .filter(|s| {
            s.metadata.namespace.as_deref() == Some(namespace)
                && s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("kubernetes.io/service-name"))
                    .map(String::as_str)
                    == Some(service)
        })
        .flat_map(|s| s.ports.iter().flatten())
        .find(|p| {
            p.name.as_deref() == Some(name)
                && p.protocol
                    .as_deref()
                    .unwrap_or("TCP")
                    .eq_ignore_ascii_case(protocol)
        })
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok())
}

/// Answers `name` (lower case, without the final dot) of type `qtype` from the cluster's
/// Services and EndpointSlices, for the zone `domain` (`cluster.local`).
#[must_use]
pub fn answer(
    name: &str,
    qtype: Qtype,
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    domain: &str,
) -> Answer {
    if let Some(reversed) = name.strip_suffix(".in-addr.arpa") {
        return reverse(reversed, qtype, services, slices, domain);
    }
    let inside = if name == domain {
        ""
    } else if let Some(inside) = name.strip_suffix(&format!(".{domain}")) {
        inside
    } else {
        return Answer::Elsewhere;
    };
    let labels: Vec<&str> = if inside.is_empty() {
        Vec::new()
    } else {
        inside.split('.').collect()
    };
    let records = match labels.as_slice() {
        [] | ["svc" | "pod"] | [_, "svc" | "pod"] => return Answer::NoData,
        [pod, _, "pod"] => {
            let Ok(ip) = pod.replace('-', ".").parse::<Ipv4Addr>() else {
                return Answer::NxDomain;
            };
            (
                vec![Rr {
                    name: name.to_owned(),
                    data: Data::A(ip),
                }],
                Vec::new(),
            )
        }
        [service, namespace, "svc"] => {
            match service_records(name, namespace, service, services, slices, domain) {
                Some(records) => records,
                None => return Answer::NxDomain,
            }
        }
        [port, protocol, service, namespace, "svc"]
            if port.starts_with('_') && protocol.starts_with('_') =>
        {
            let Some(service_object) = find(services, namespace, service) else {
                return Answer::NxDomain;
            };
            let srv = srv_records(
                name,
                service_object,
                namespace,
                service,
                slices,
                domain,
                Some((&port[1..], &protocol[1..])),
            );
            if srv.0.is_empty() {
                return Answer::NxDomain;
            }
            srv
        }
        [endpoint, service, namespace, "svc"] => {
            let Some(service_object) = find(services, namespace, service) else {
                return Answer::NxDomain;
            };
            if !is_headless(service_object) {
                return Answer::NxDomain;
            }
            let found: Vec<Rr> = headless_endpoints(slices, namespace, service)
                .into_iter()
                .filter(|(label, _)| label == endpoint)
                .map(|(_, ip)| Rr {
                    name: name.to_owned(),
                    data: Data::A(ip),
                })
                .collect();
            if found.is_empty() {
                return Answer::NxDomain;
            }
            (found, Vec::new())
        }
        _ => return Answer::NxDomain,
    };
    let (answers, additionals) = records;
    let answers: Vec<Rr> = answers
        .into_iter()
        .filter(|r| qtype.wants(&r.data))
        .collect();
    if answers.is_empty() {
        Answer::NoData
    } else {
        let additionals = if qtype == Qtype::Srv || qtype == Qtype::Any {
            additionals
        } else {
            Vec::new()
        };
        Answer::Records(answers, additionals)
    }
}

fn find<'a>(services: &'a [Arc<Service>], namespace: &str, name: &str) -> Option<&'a Service> {
    services
        .iter()
        .find(|s| {
            s.metadata.namespace.as_deref() == Some(namespace)
                && s.metadata.name.as_deref() == Some(name)
        })
        .map(AsRef::as_ref)
}

fn is_headless(service: &Service) -> bool {
    service
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .is_none_or(|ip| ip == "None" || ip.is_empty())
        && service.spec.as_ref().and_then(|s| s.type_.as_deref()) != Some("ExternalName")
}

/// All records of a Service's own name (A or CNAME, and SRV for every named port).
fn service_records(
    name: &str,
    namespace: &str,
    service: &str,
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    domain: &str,
) -> Option<(Vec<Rr>, Vec<Rr>)> {
    let object = find(services, namespace, service)?;
    let spec = object.spec.as_ref()?;
    let mut answers = Vec::new();
    if spec.type_.as_deref() == Some("ExternalName") {
        let target = spec.external_name.clone().unwrap_or_default();
        answers.push(Rr {
            name: name.to_owned(),
            data: Data::Cname(target.trim_end_matches('.').to_owned()),
        });
        return Some((answers, Vec::new()));
    }
    if is_headless(object) {
        for (_, ip) in headless_endpoints(slices, namespace, service) {
            answers.push(Rr {
                name: name.to_owned(),
                data: Data::A(ip),
            });
        }
    } else if let Some(ip) = spec.cluster_ip.as_deref().and_then(|ip| ip.parse().ok()) {
        answers.push(Rr {
            name: name.to_owned(),
            data: Data::A(ip),
        });
    }
    let (srv, additionals) = srv_records(name, object, namespace, service, slices, domain, None);
    answers.extend(srv);
    Some((answers, additionals))
}

/// SRV records for the named ports of a Service (only `(port, protocol)` when given).
fn srv_records(
    name: &str,
    object: &Service,
    namespace: &str,
    service: &str,
    slices: &[Arc<EndpointSlice>],
    domain: &str,
    only: Option<(&str, &str)>,
) -> (Vec<Rr>, Vec<Rr>) {
    let mut answers = Vec::new();
    let mut additionals = Vec::new();
    let Some(spec) = object.spec.as_ref() else {
        return (answers, additionals);
    };
    let service_name = format!("{service}.{namespace}.svc.{domain}");
    for port in spec.ports.iter().flatten() {
        let Some(port_name) = port.name.as_deref().filter(|n| !n.is_empty()) else {
            continue;
        };
        let protocol = port.protocol.as_deref().unwrap_or("TCP");
        if let Some((want_port, want_protocol)) = only
            && (want_port != port_name || !want_protocol.eq_ignore_ascii_case(protocol))
        {
            continue;
        }
        if is_headless(object) {
            let endpoints = headless_endpoints(slices, namespace, service);
            let weight = u16::try_from(100 / endpoints.len().max(1)).unwrap_or(1);
            let number = slice_port(slices, namespace, service, port_name, protocol)
                .or_else(|| u16::try_from(port.port).ok())
                .unwrap_or(0);
            for (label, ip) in endpoints {
                let target = format!("{label}.{service_name}");
                answers.push(Rr {
                    name: name.to_owned(),
                    data: Data::Srv {
                        weight,
                        port: number,
                        target: target.clone(),
                    },
                });
                additionals.push(Rr {
                    name: target,
                    data: Data::A(ip),
                });
            }
        } else {
            answers.push(Rr {
                name: name.to_owned(),
                data: Data::Srv {
                    weight: 100,
                    port: u16::try_from(port.port).unwrap_or(0),
                    target: service_name.clone(),
                },
            });
            if let Some(ip) = spec.cluster_ip.as_deref().and_then(|ip| ip.parse().ok())
                && !additionals.iter().any(|r: &Rr| r.name == service_name)
            {
                additionals.push(Rr {
                    name: service_name.clone(),
                    data: Data::A(ip),
                });
            }
        }
    }
    (answers, additionals)
}

fn reverse(
    reversed: &str,
    qtype: Qtype,
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    domain: &str,
) -> Answer {
    let mut octets: Vec<&str> = reversed.split('.').collect();
    if octets.len() != 4 {
        return Answer::Elsewhere;
    }
    octets.reverse();
    let Ok(ip) = octets.join(".").parse::<Ipv4Addr>() else {
        return Answer::Elsewhere;
    };
    let name = format!("{reversed}.in-addr.arpa");
    let mut targets = Vec::new();
    for service in services {
        let (Some(namespace), Some(service_name)) = (
            service.metadata.namespace.as_deref(),
            service.metadata.name.as_deref(),
        ) else {
            continue;
        };
        let cluster_ip = service
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ip.as_deref())
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
        if cluster_ip == Some(ip) {
            targets.push(format!("{service_name}.{namespace}.svc.{domain}"));
        } else if is_headless(service) {
            for (label, address) in headless_endpoints(slices, namespace, service_name) {
                if address == ip {
                    targets.push(format!("{label}.{service_name}.{namespace}.svc.{domain}"));
                }
            }
        }
    }
    if targets.is_empty() {
        return Answer::Elsewhere;
    }
    if !matches!(qtype, Qtype::Ptr | Qtype::Any) {
        return Answer::NoData;
    }
    Answer::Records(
        targets
            .into_iter()
            .map(|target| Rr {
                name: name.clone(),
                data: Data::Ptr(target),
            })
            .collect(),
        Vec::new(),
    )
}

/// How the DNS server runs.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// The cluster zone (`cluster.local`).
    pub domain: String,
    /// TTL of cluster records, seconds (CoreDNS's default is 5).
    pub ttl: u32,
    /// Where other names go (the node's resolvers).
    pub upstreams: Vec<SocketAddr>,
}

impl DnsConfig {
    /// `cluster.local`, TTL 5, upstreams from `/etc/resolv.conf`.
    #[must_use]
    pub fn new(domain: impl Into<String>) -> Self {
        Self {
            domain: domain.into(),
            ttl: 5,
            upstreams: std::fs::read_to_string("/etc/resolv.conf")
                .map(|text| resolv_conf_servers(&text))
                .unwrap_or_default(),
        }
    }
}

/// The `nameserver` addresses of a resolv.conf, as port-53 socket addresses.
#[must_use]
pub fn resolv_conf_servers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// CoreDNS's metrics for the cluster DNS.
#[derive(Clone)]
pub struct DnsMetrics {
    requests: IntCounterVec,
    responses: IntCounterVec,
    duration: HistogramVec,
    forwarded: IntCounterVec,
}

impl DnsMetrics {
    /// Registers the families in `registry`.
    ///
    /// # Panics
    /// When they are registered twice.
    #[must_use]
    pub fn new(registry: &Registry) -> Self {
        let requests = IntCounterVec::new(
            Opts::new(
                "coredns_dns_requests_total",
                "Counter of DNS requests made per zone, protocol and family.",
            ),
            &["server", "zone", "proto", "family", "type"],
        )
        .expect("valid metric");
        let responses = IntCounterVec::new(
            Opts::new(
                "coredns_dns_responses_total",
                "Counter of response status codes.",
            ),
            &["server", "zone", "rcode", "plugin"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "coredns_dns_request_duration_seconds",
                "Histogram of the time (in seconds) each request took per zone.",
            )
            .buckets(prometheus::exponential_buckets(0.00025, 2.0, 16).expect("valid")),
            &["server", "zone", "type"],
        )
        .expect("valid metric");
        let forwarded = IntCounterVec::new(
            Opts::new(
                "coredns_forward_requests_total",
                "Counter of requests made per upstream.",
            ),
            &["to"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(responses.clone()),
            Box::new(duration.clone()),
            Box::new(forwarded.clone()),
        ] {
            registry.register(collector).expect("unique");
        }
        Self {
            requests,
            responses,
            duration,
            forwarded,
        }
    }
}

/// Serves [`answer`] and forwards the rest.
pub struct Handler {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    config: DnsConfig,
    metrics: Option<DnsMetrics>,
    server: String,
}

impl Handler {
    /// A handler over the proxy's caches.
    #[must_use]
    pub fn new(
        services: Store<Service>,
        slices: Store<EndpointSlice>,
        config: DnsConfig,
        metrics: Option<DnsMetrics>,
        server: String,
    ) -> Self {
        Self {
            services,
            slices,
            config,
            metrics,
            server,
        }
    }

    fn soa(&self) -> Record {
        let zone =
            Name::from_ascii(format!("{}.", self.config.domain)).unwrap_or_else(|_| Name::root());
        let mname = Name::from_ascii(format!("ns.dns.{}.", self.config.domain))
            .unwrap_or_else(|_| Name::root());
        let rname = Name::from_ascii(format!("hostmaster.{}.", self.config.domain))
            .unwrap_or_else(|_| Name::root());
        Record::from_rdata(
            zone,
            self.config.ttl,
            RData::SOA(SOA::new(
                mname,
                rname,
                1,
                7200,
                1800,
                86400,
                self.config.ttl,
            )),
        )
    }

    fn record(&self, rr: &Rr) -> Option<Record> {
        let name = Name::from_ascii(format!("{}.", rr.name)).ok()?;
        let fqdn = |n: &str| Name::from_ascii(format!("{n}.")).ok();
        let data = match &rr.data {
            Data::A(ip) => RData::A(A(*ip)),
            Data::Cname(target) => RData::CNAME(CNAME(fqdn(target)?)),
            Data::Ptr(target) => RData::PTR(PTR(fqdn(target)?)),
            Data::Srv {
                weight,
                port,
                target,
            } => RData::SRV(SRV::new(0, *weight, *port, fqdn(target)?)),
        };
        Some(Record::from_rdata(name, self.config.ttl, data))
    }

    /// Sends the query to the upstreams in turn; the first answer wins.
    async fn forward(&self, raw: &[u8]) -> Option<Message> {
        for upstream in &self.config.upstreams {
            if let Some(metrics) = &self.metrics {
                metrics
                    .forwarded
                    .with_label_values(&[&upstream.to_string()])
                    .inc();
            }
            let bind: SocketAddr = if upstream.is_ipv4() {
                "0.0.0.0:0".parse().expect("valid")
            } else {
                "[::]:0".parse().expect("valid")
            };
            let Ok(socket) = tokio::net::UdpSocket::bind(bind).await else {
                continue;
            };
            if socket.send_to(raw, upstream).await.is_err() {
                continue;
            }
            let mut buffer = vec![0u8; 4096];
            match tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buffer)).await {
                Ok(Ok(n)) => match Message::from_vec(&buffer[..n]) {
                    Ok(message) => return Some(message),
                    Err(error) => debug!(%upstream, %error, "bad answer from upstream"),
                },
                _ => debug!(%upstream, "upstream did not answer"),
            }
        }
        None
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let started = Instant::now();
        let builder = MessageResponseBuilder::from_message_request(request);
        let fail = |code: ResponseCode| {
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.response_code = code;
            metadata
        };
        let Ok(info) = request.request_info() else {
            let metadata = fail(ResponseCode::FormErr);
            return send(&mut response, builder.build_no_records(metadata), request).await;
        };
        let query = info.query;
        let name = query.name().to_string().to_ascii_lowercase();
        let name = name.trim_end_matches('.');
        let record_type = query.query_type();
        let services = self.services.state();
        let slices = self.slices.state();
        let result = answer(
            name,
            Qtype::of(record_type),
            &services,
            &slices,
            &self.config.domain,
        );
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.message_type = MessageType::Response;
        metadata.recursion_available = true;
        let zone = if matches!(result, Answer::Elsewhere) {
            "."
        } else {
            self.config.domain.as_str()
        };
        if let Some(metrics) = &self.metrics {
            let proto = if matches!(info.protocol, hickory_server::net::xfer::Protocol::Tcp) {
                "tcp"
            } else {
                "udp"
            };
            let family = if info.src.is_ipv4() { "1" } else { "2" };
            metrics
                .requests
                .with_label_values(&[&self.server, zone, proto, family, &record_type.to_string()])
                .inc();
        }
        let sent = match result {
            Answer::Records(answers, additionals) => {
                metadata.authoritative = true;
                let answers: Vec<Record> = answers.iter().filter_map(|r| self.record(r)).collect();
                let additionals: Vec<Record> =
                    additionals.iter().filter_map(|r| self.record(r)).collect();
                send(
                    &mut response,
                    builder.build(metadata, answers.iter(), [], [], additionals.iter()),
                    request,
                )
                .await
            }
            Answer::NoData | Answer::NxDomain => {
                metadata.authoritative = true;
                if result == Answer::NxDomain {
                    metadata.response_code = ResponseCode::NXDomain;
                }
                let soa = [self.soa()];
                send(
                    &mut response,
                    builder.build(metadata, [], soa.iter(), [], []),
                    request,
                )
                .await
            }
            Answer::Elsewhere => match self.forward(request.as_slice()).await {
                Some(upstream) => {
                    metadata.response_code = upstream.metadata.response_code;
                    metadata.authoritative = false;
                    send(
                        &mut response,
                        builder.build(
                            metadata,
                            upstream.answers.iter(),
                            upstream.authorities.iter(),
                            [],
                            upstream.additionals.iter(),
                        ),
                        request,
                    )
                    .await
                }
                None => {
                    let metadata = fail(ResponseCode::ServFail);
                    send(&mut response, builder.build_no_records(metadata), request).await
                }
            },
        };
        if let Some(metrics) = &self.metrics {
            let rcode = sent_rcode(&sent);
            metrics
                .responses
                .with_label_values(&[&self.server, zone, &rcode, "kubernetes"])
                .inc();
            metrics
                .duration
                .with_label_values(&[&self.server, zone, &record_type.to_string()])
                .observe(started.elapsed().as_secs_f64());
        }
        sent
    }
}

fn sent_rcode(info: &ResponseInfo) -> String {
    format!("{}", info.response_code).to_ascii_uppercase()
}

async fn send<'a, R: ResponseHandler>(
    response: &mut R,
    message: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    request: &Request,
) -> ResponseInfo {
    match response.send_response(message).await {
        Ok(info) => info,
        Err(error) => {
            warn!(%error, "failed to send a DNS response");
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.response_code = ResponseCode::ServFail;
            hickory_server::proto::op::Header {
                metadata,
                counts: hickory_server::proto::op::HeaderCounts::default(),
            }
            .into()
        }
    }
}

/// Serves `handler` over UDP and TCP on `listen` (port 0 picks one port free for both) until
/// `shutdown`; returns the address once bound.
///
/// # Errors
/// When the sockets cannot be bound.
pub async fn serve(
    listen: SocketAddr,
    handler: Handler,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let (udp, tcp) = bind_pair(listen).await?;
    let address = udp.local_addr()?;
    let mut server = hickory_server::Server::new(handler);
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(5), 65_535);
    let token = server.shutdown_token().clone();
    tokio::spawn(async move {
        tokio::select! {
            () = shutdown.cancelled() => token.cancel(),
            result = server.block_until_done() => {
                if let Err(error) = result {
                    warn!(%error, "cluster DNS stopped");
                }
                return;
            }
        }
        let _ = server.block_until_done().await;
    });
    info!(%address, "cluster DNS listening");
    Ok(address)
}

async fn bind_pair(
    listen: SocketAddr,
) -> std::io::Result<(tokio::net::UdpSocket, tokio::net::TcpListener)> {
    let mut last = None;
    for _ in 0..20 {
        let udp = tokio::net::UdpSocket::bind(listen).await?;
        let address = udp.local_addr()?;
        match tokio::net::TcpListener::bind(address).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(error) if listen.port() == 0 => last = Some(error),
            Err(error) => return Err(error),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no port free for UDP and TCP")))
}

/// Publishes this node's DNS server as an endpoint of `kube-system/kube-dns`: an EndpointSlice
/// `kube-dns-<node>` with the address it listens on (so the cluster DNS Service reaches every
/// node's server through the proxy).
///
/// # Errors
/// When the API refuses the slice.
pub async fn publish(
    client: kube::Client,
    node: &str,
    address: SocketAddr,
) -> Result<(), kube::Error> {
    use kube::api::{Api, Patch, PatchParams};
    let slice = serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("kube-dns-{node}"), "namespace": "kube-system",
                     "labels": {"kubernetes.io/service-name": "kube-dns",
                                "endpointslice.kubernetes.io/managed-by": "kelson-dns"}},
        "addressType": if address.is_ipv4() { "IPv4" } else { "IPv6" },
        "endpoints": [{"addresses": [address.ip().to_string()], "nodeName": node,
                       "conditions": {"ready": true, "serving": true, "terminating": false}}],
        "ports": [{"name": "dns", "port": address.port(), "protocol": "UDP"},
                  {"name": "dns-tcp", "port": address.port(), "protocol": "TCP"}]
    });
    let api: Api<EndpointSlice> = Api::namespaced(client, "kube-system");
    api.patch(
        &format!("kube-dns-{node}"),
        &PatchParams::apply("kelson-dns").force(),
        &Patch::Apply(&slice),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn services() -> Vec<Arc<Service>> {
        [
            json!({"metadata": {"namespace": "shop", "name": "web"},
                   "spec": {"clusterIP": "10.96.5.5", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"port": 9}]}}),
            json!({"metadata": {"namespace": "shop", "name": "db"},
                   "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]}}),
            json!({"metadata": {"namespace": "shop", "name": "ext"},
                   "spec": {"type": "ExternalName", "externalName": "example.org"}}),
        ]
        .into_iter()
        .map(|v| Arc::new(serde_json::from_value(v).unwrap()))
        .collect()
    }

    fn slices() -> Vec<Arc<EndpointSlice>> {
        vec![Arc::new(
            serde_json::from_value(json!({
                "metadata": {"namespace": "shop", "name": "db-x", "labels": {"kubernetes.io/service-name": "db"}},
                "addressType": "IPv4",
                "endpoints": [
                    {"addresses": ["10.88.0.7"], "hostname": "db-0", "conditions": {"ready": true}},
                    {"addresses": ["10.88.0.8"], "conditions": {"ready": true}},
                    {"addresses": ["10.88.0.9"], "conditions": {"ready": false}}],
                "ports": [{"name": "pg", "port": 5433, "protocol": "TCP"}]}))
            .unwrap(),
        )]
    }

    fn ask(name: &str, qtype: Qtype) -> Answer {
        answer(name, qtype, &services(), &slices(), "cluster.local")
    }

    fn a(name: &str, ip: [u8; 4]) -> Rr {
        Rr {
            name: name.into(),
            data: Data::A(Ipv4Addr::from(ip)),
        }
    }

    #[test]
    fn services_resolve_to_cluster_ips_or_ready_endpoints() {
        assert_eq!(
            ask("web.shop.svc.cluster.local", Qtype::A),
            Answer::Records(
                vec![a("web.shop.svc.cluster.local", [10, 96, 5, 5])],
                vec![]
            )
        );
        assert_eq!(
            ask("db.shop.svc.cluster.local", Qtype::A),
            Answer::Records(
                vec![
                    a("db.shop.svc.cluster.local", [10, 88, 0, 8]),
                    a("db.shop.svc.cluster.local", [10, 88, 0, 7])
                ],
                vec![]
            )
        );
        assert_eq!(
            ask("db-0.db.shop.svc.cluster.local", Qtype::A),
            Answer::Records(
                vec![a("db-0.db.shop.svc.cluster.local", [10, 88, 0, 7])],
                vec![]
            )
        );
        assert_eq!(
            ask("10-88-0-8.db.shop.svc.cluster.local", Qtype::A),
            Answer::Records(
                vec![a("10-88-0-8.db.shop.svc.cluster.local", [10, 88, 0, 8])],
                vec![]
            )
        );
        assert_eq!(
            ask("10-88-0-9.db.shop.svc.cluster.local", Qtype::A),
            Answer::NxDomain
        );
        assert_eq!(
            ask("ext.shop.svc.cluster.local", Qtype::A),
            Answer::Records(
                vec![Rr {
                    name: "ext.shop.svc.cluster.local".into(),
                    data: Data::Cname("example.org".into())
                }],
                vec![]
            )
        );
        assert_eq!(
            ask("web.shop.svc.cluster.local", Qtype::Other),
            Answer::NoData
        );
        assert_eq!(
            ask("nope.shop.svc.cluster.local", Qtype::A),
            Answer::NxDomain
        );
        assert_eq!(ask("shop.svc.cluster.local", Qtype::A), Answer::NoData);
        assert_eq!(ask("example.org", Qtype::A), Answer::Elsewhere);
        assert_eq!(
            ask("10-1-2-3.shop.pod.cluster.local", Qtype::A),
            Answer::Records(
                vec![a("10-1-2-3.shop.pod.cluster.local", [10, 1, 2, 3])],
                vec![]
            )
        );
    }

    #[test]
    fn srv_records_name_ports_and_targets() {
        let Answer::Records(answers, additionals) =
            ask("_http._tcp.web.shop.svc.cluster.local", Qtype::Srv)
        else {
            panic!("no SRV")
        };
        assert_eq!(
            answers[0].data,
            Data::Srv {
                weight: 100,
                port: 80,
                target: "web.shop.svc.cluster.local".into()
            }
        );
        assert_eq!(
            additionals,
            [a("web.shop.svc.cluster.local", [10, 96, 5, 5])]
        );
        let Answer::Records(answers, additionals) =
            ask("_pg._tcp.db.shop.svc.cluster.local", Qtype::Srv)
        else {
            panic!("no SRV")
        };
        assert_eq!(answers.len(), 2);
        assert_eq!(
            answers[0].data,
            Data::Srv {
                weight: 50,
                port: 5433,
                target: "10-88-0-8.db.shop.svc.cluster.local".into()
            }
        );
        assert_eq!(additionals.len(), 2);
        assert_eq!(
            ask("_pg._udp.db.shop.svc.cluster.local", Qtype::Srv),
            Answer::NxDomain
        );
    }

    #[test]
    fn reverse_lookups_name_services_and_endpoints() {
        assert_eq!(
            ask("5.5.96.10.in-addr.arpa", Qtype::Ptr),
            Answer::Records(
                vec![Rr {
                    name: "5.5.96.10.in-addr.arpa".into(),
                    data: Data::Ptr("web.shop.svc.cluster.local".into())
                }],
                vec![]
            )
        );
        assert!(matches!(
            ask("7.0.88.10.in-addr.arpa", Qtype::Ptr),
            Answer::Records(..)
        ));
        assert_eq!(
            ask("1.1.168.192.in-addr.arpa", Qtype::Ptr),
            Answer::Elsewhere
        );
    }

    #[test]
    fn resolv_conf_servers_are_read() {
        let servers = resolv_conf_servers("# x\nsearch a b\nnameserver 10.0.0.2\nnameserver ::1\n");
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[0].to_string(), "10.0.0.2:53");
    }
}
