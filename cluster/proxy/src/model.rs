//! Services and EndpointSlices reduced to what the data path needs: one [`ServicePort`] per port
//! of every proxied Service, with the endpoints traffic may go to.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// A transport protocol of a Service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    fn parse(text: Option<&str>) -> Option<Self> {
        match text.unwrap_or("TCP") {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }

    /// The name nftables uses.
    #[must_use]
    pub fn nft(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }
}

/// One place traffic for a Service port may go.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    /// The pod (or host) address.
    pub ip: Ipv4Addr,
    /// The port on it.
    pub port: u16,
    /// The node it runs on, when known.
    pub node: Option<String>,
}

/// A port of a Service, with where its traffic goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// Namespace of the Service.
    pub namespace: String,
    /// Name of the Service.
    pub name: String,
    /// Name of the port (empty for a single unnamed port).
    pub port_name: String,
    /// Protocol.
    pub protocol: Protocol,
    /// The cluster IP.
    pub cluster_ip: Ipv4Addr,
    /// The Service port.
    pub port: u16,
    /// The node port, for NodePort and LoadBalancer Services.
    pub node_port: Option<u16>,
    /// `externalTrafficPolicy: Local`: node-port traffic only to this node's endpoints, with the
    /// client address kept.
    pub external_local: bool,
    /// `sessionAffinity: ClientIP`: seconds a client sticks to its endpoint.
    pub affinity_seconds: Option<i32>,
    /// Ready endpoints, or the serving terminating ones while none is ready (so connections
    /// drain as in kube-proxy).
    pub endpoints: Vec<Endpoint>,
}

impl ServicePort {
    /// `namespace/name/protocol/port-name` (the port number for an unnamed port): unique per
    /// Service port, used in nftables chain names.
    #[must_use]
    pub fn id(&self) -> String {
        let port = if self.port_name.is_empty() {
            format!("p{}", self.port)
        } else {
            self.port_name.clone()
        };
        format!(
            "{}/{}/{}/{port}",
            self.namespace,
            self.name,
            self.protocol.nft()
        )
    }
}

fn slice_service(slice: &EndpointSlice) -> Option<(&str, &str)> {
    let namespace = slice.metadata.namespace.as_deref()?;
    let service = slice
        .metadata
        .labels
        .as_ref()?
        .get("kubernetes.io/service-name")?;
    Some((namespace, service.as_str()))
}

/// The Service ports to proxy: every Service with a cluster IP (headless and ExternalName
/// Services have none), each with its endpoints from `slices`.
#[must_use]
pub fn service_ports<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> Vec<ServicePort> {
    // (namespace, service) -> slices
    let mut by_service: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        if slice.address_type != "IPv4" {
            continue;
        }
        if let Some(key) = slice_service(slice) {
            by_service.entry(key).or_default().push(slice);
        }
    }
    let mut out = Vec::new();
    for service in services {
        let (Some(namespace), Some(name), Some(spec)) = (
            service.metadata.namespace.as_deref(),
            service.metadata.name.as_deref(),
            service.spec.as_ref(),
        ) else {
            continue;
        };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let Some(cluster_ip) = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        let slices = by_service
            .get(&(namespace, name))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let node_ports = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
        let affinity_seconds = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(10800)
        });
        for port in spec.ports.iter().flatten() {
            let Some(protocol) = Protocol::parse(port.protocol.as_deref()) else {
                continue;
            };
            let Ok(number) = u16::try_from(port.port) else {
                continue;
            };
            let port_name = port.name.clone().unwrap_or_default();
            out.push(ServicePort {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                port_name: port_name.clone(),
                protocol,
                cluster_ip,
                port: number,
                node_port: port
                    .node_port
                    .filter(|_| node_ports)
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p != 0),
                external_local: node_ports
                    && spec.external_traffic_policy.as_deref() == Some("Local"),
                affinity_seconds,
                endpoints: endpoints_of(slices, &port_name, protocol),
            });
        }
    }
    out
}

/// The endpoints of a Service port across its slices: the ready ones, or, while none is ready,
/// the serving terminating ones.
fn endpoints_of(slices: &[&EndpointSlice], port_name: &str, protocol: Protocol) -> Vec<Endpoint> {
    let mut ready = BTreeSet::new();
    let mut draining = BTreeSet::new();
    for slice in slices {
        let Some(port) = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == port_name
                && Protocol::parse(p.protocol.as_deref()) == Some(protocol)
        }) else {
            continue;
        };
        let Some(number) = port.port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let conditions = endpoint.conditions.as_ref();
            let is_ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let serving = conditions.and_then(|c| c.serving).unwrap_or(is_ready);
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            for address in &endpoint.addresses {
                let Ok(ip) = address.parse::<Ipv4Addr>() else {
                    continue;
                };
                let entry = Endpoint {
                    ip,
                    port: number,
                    node: endpoint.node_name.clone(),
                };
                if is_ready && !terminating {
                    ready.insert(entry);
                } else if serving && terminating {
                    draining.insert(entry);
                }
            }
        }
    }
    if ready.is_empty() {
        draining.into_iter().collect()
    } else {
        ready.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(spec: serde_json::Value) -> Service {
        serde_json::from_value(
            json!({"metadata": {"namespace": "shop", "name": "web"}, "spec": spec}),
        )
        .unwrap()
    }

    fn slice(name: &str, endpoints: serde_json::Value, ports: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": name, "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "endpoints": endpoints, "ports": ports}))
        .unwrap()
    }

    #[test]
    fn ports_get_ready_endpoints_across_slices() {
        let services = [service(
            json!({"type": "NodePort", "clusterIP": "10.96.0.50",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080},
                      {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}]}),
        )];
        let slices = [
            slice(
                "web-a",
                json!([
                    {"addresses": ["10.88.0.5"], "conditions": {"ready": true}, "nodeName": "n1"},
                    {"addresses": ["10.88.0.6"], "conditions": {"ready": false, "serving": false}},
                ]),
                json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
            ),
            slice(
                "web-b",
                json!([
                    {"addresses": ["10.88.0.7"], "conditions": {"ready": true}},
                ]),
                json!([{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}]),
            ),
        ];
        let ports = service_ports(&services, &slices);
        assert_eq!(ports.len(), 2);
        let http = &ports[0];
        assert_eq!(http.id(), "shop/web/tcp/http");
        assert_eq!(http.node_port, Some(30080));
        let ips: Vec<_> = http
            .endpoints
            .iter()
            .map(|e| (e.ip.to_string(), e.port))
            .collect();
        assert_eq!(
            ips,
            [("10.88.0.5".into(), 8080), ("10.88.0.7".into(), 8080)]
        );
        let dns = &ports[1];
        assert_eq!(dns.protocol, Protocol::Udp);
        assert_eq!(dns.endpoints.len(), 1);
        assert_eq!(dns.endpoints[0].port, 5353);
    }

    #[test]
    fn terminating_endpoints_serve_only_while_nothing_is_ready() {
        let services = [service(
            json!({"clusterIP": "10.96.0.50", "ports": [{"port": 80}]}),
        )];
        let draining = json!({"addresses": ["10.88.0.9"], "conditions": {"ready": false, "serving": true, "terminating": true}});
        let ports = json!([{"port": 80, "protocol": "TCP"}]);
        let only_draining = [slice("a", json!([draining]), ports.clone())];
        let found = service_ports(&services, &only_draining);
        assert_eq!(
            found[0].endpoints.len(),
            1,
            "drains while nothing else serves"
        );
        assert_eq!(found[0].id(), "shop/web/tcp/p80");
        let with_ready = [slice(
            "a",
            json!([draining, {"addresses": ["10.88.0.10"], "conditions": {"ready": true}}]),
            ports,
        )];
        let found = service_ports(&services, &with_ready);
        assert_eq!(found[0].endpoints.len(), 1);
        assert_eq!(found[0].endpoints[0].ip, Ipv4Addr::new(10, 88, 0, 10));
    }

    #[test]
    fn headless_and_external_name_services_are_not_proxied() {
        let services = [
            service(json!({"clusterIP": "None", "ports": [{"port": 80}]})),
            service(json!({"type": "ExternalName", "externalName": "example.org"})),
        ];
        assert!(service_ports(&services, &[]).is_empty());
    }
}
