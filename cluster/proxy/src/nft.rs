//! The nftables ruleset for a set of Service ports, and the `nft -f` scripts that install it:
//! whole (at start, or after a failure) or as the difference from what is installed.
//!
//! One table (`ip kelson-proxy` by default), shaped like kube-proxy's nftables mode:
//! - `services` looks the destination up in the `service-ips` map (cluster IP . protocol . port)
//!   and, for local destinations other than loopback, in `service-nodeports` (protocol . port);
//!   each element jumps to the Service port's chain;
//! - a Service port chain marks traffic from outside the pod network for masquerading, keeps
//!   ClientIP affinity, and picks an endpoint at random (`numgen random mod N`);
//! - an endpoint chain marks hairpin traffic and DNATs to the endpoint;
//! - `nat-postrouting` masquerades what was marked; filter chains reject new connections to
//!   Service ports that have no endpoints (as kube-proxy does, rather than letting them time out).
//!
//! Conntrack keeps established connections on their endpoint when rules change or the proxy is
//! gone, so a restart never breaks them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::model::ServicePort;

/// The fixed part of the table: maps, sets and chains every ruleset has.
const MARK: &str = "0x4000";

/// What the proxy needs to know about the node and network.
#[derive(Clone, Debug)]
pub struct RulesConfig {
    /// nftables table name (family `ip`).
    pub table: String,
    /// The pod network; traffic from elsewhere to a Service is masqueraded.
    pub cluster_cidr: String,
    /// This node's name, for `externalTrafficPolicy: Local`.
    pub node: String,
}

/// A whole ruleset: named chains with their rules, the verdict maps' elements and the
/// affinity sets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Chains built from Services (name → rules).
    pub chains: BTreeMap<String, Vec<String>>,
    /// Map name → (key → verdict).
    pub maps: BTreeMap<&'static str, BTreeMap<String, String>>,
    /// Affinity sets (name → timeout seconds).
    pub sets: BTreeMap<String, i32>,
}

const MAPS: [(&str, &str); 4] = [
    (
        "service-ips",
        "ipv4_addr . inet_proto . inet_service : verdict",
    ),
    ("service-nodeports", "inet_proto . inet_service : verdict"),
    (
        "no-endpoint-services",
        "ipv4_addr . inet_proto . inet_service : verdict",
    ),
    (
        "no-endpoint-nodeports",
        "inet_proto . inet_service : verdict",
    ),
];

fn service_chain(port: &ServicePort) -> String {
    format!("svc-{}", port.id())
}

fn external_chain(port: &ServicePort) -> String {
    format!("ext-{}", port.id())
}

fn endpoint_chain(port: &ServicePort, ip: Ipv4Addr, number: u16) -> String {
    format!("sep-{}__{ip}/{number}", port.id())
}

fn affinity_set(port: &ServicePort, ip: Ipv4Addr, number: u16) -> String {
    format!("affinity-{}__{ip}/{number}", port.id())
}

/// Picks one of `targets` at random (`goto` each).
fn load_balance(targets: &[String]) -> String {
    if targets.len() == 1 {
        return format!("goto {}", targets[0]);
    }
    let arms: Vec<String> = targets
        .iter()
        .enumerate()
        .map(|(i, t)| format!("{i} : goto {t}"))
        .collect();
    format!(
        "numgen random mod {} vmap {{ {} }}",
        targets.len(),
        arms.join(", ")
    )
}

/// The ruleset for `ports`.
#[must_use]
pub fn plan(ports: &[ServicePort], config: &RulesConfig) -> Ruleset {
    let mut rules = Ruleset::default();
    for (name, _) in MAPS {
        rules.maps.insert(name, BTreeMap::new());
    }
    for port in ports {
        let proto = port.protocol.nft();
        let ip_key = format!("{} . {proto} . {}", port.cluster_ip, port.port);
        let node_key = port.node_port.map(|n| format!("{proto} . {n}"));
        if port.endpoints.is_empty() {
            rules
                .maps
                .get_mut("no-endpoint-services")
                .expect("declared")
                .insert(ip_key, "goto reject-chain".into());
            if let Some(key) = node_key {
                rules
                    .maps
                    .get_mut("no-endpoint-nodeports")
                    .expect("declared")
                    .insert(key, "goto reject-chain".into());
            }
            continue;
        }
        let chain = service_chain(port);
        let mut endpoint_chains = Vec::new();
        let mut affinity = Vec::new();
        for endpoint in &port.endpoints {
            let name = endpoint_chain(port, endpoint.ip, endpoint.port);
            let mut body = vec![format!("ip saddr {} jump mark-for-masquerade", endpoint.ip)];
            if let Some(timeout) = port.affinity_seconds {
                let set = affinity_set(port, endpoint.ip, endpoint.port);
                body.push(format!("update @{set} {{ ip saddr }}"));
                affinity.push(format!("ip saddr @{set} goto {name}"));
                rules.sets.insert(set, timeout);
            }
            body.push(format!(
                "meta l4proto {proto} dnat to {}:{}",
                endpoint.ip, endpoint.port
            ));
            rules.chains.insert(name.clone(), body);
            endpoint_chains.push(name);
        }
        let mut body = vec![format!(
            "ip daddr {} {proto} dport {} ip saddr != {} jump mark-for-masquerade",
            port.cluster_ip, port.port, config.cluster_cidr
        )];
        body.extend(affinity.iter().cloned());
        body.push(load_balance(&endpoint_chains));
        rules.chains.insert(chain.clone(), body);
        rules
            .maps
            .get_mut("service-ips")
            .expect("declared")
            .insert(ip_key, format!("goto {chain}"));

        let Some(node_key) = node_key else {
            continue;
        };
        let external = external_chain(port);
        let body = if port.external_local {
            // the client address is kept, and only this node's endpoints serve
            let local: Vec<String> = port
                .endpoints
                .iter()
                .filter(|e| e.node.as_deref() == Some(config.node.as_str()))
                .map(|e| endpoint_chain(port, e.ip, e.port))
                .collect();
            if local.is_empty() {
                vec!["drop".to_owned()]
            } else {
                vec![load_balance(&local)]
            }
        } else {
            vec![
                "jump mark-for-masquerade".to_owned(),
                format!("goto {chain}"),
            ]
        };
        rules.chains.insert(external.clone(), body);
        rules
            .maps
            .get_mut("service-nodeports")
            .expect("declared")
            .insert(node_key, format!("goto {external}"));
    }
    rules
}

/// The chains and maps that do not depend on Services.
/// The whole table as one block (nft resolves forward references to chains within it): much
/// faster to load than one command per rule.
fn table_block(table: &str, rules: &Ruleset) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "table ip {table} {{");
    for (name, kind) in MAPS {
        let elements = rules.maps.get(name).filter(|e| !e.is_empty());
        match elements {
            None => {
                let _ = writeln!(out, "  map {name} {{ type {kind}; }}");
            }
            Some(elements) => {
                let _ = writeln!(out, "  map {name} {{ type {kind}; elements = {{");
                for (key, verdict) in elements {
                    let _ = writeln!(out, "    {key} : {verdict},");
                }
                let _ = writeln!(out, "  }} }}");
            }
        }
    }
    for (name, timeout) in &rules.sets {
        let _ = writeln!(
            out,
            "  set {name} {{ type ipv4_addr; flags dynamic,timeout; timeout {timeout}s; }}"
        );
    }
    for (name, body) in &rules.chains {
        let _ = writeln!(out, "  chain {name} {{");
        for rule in body {
            let _ = writeln!(out, "    {rule}");
        }
        let _ = writeln!(out, "  }}");
    }
    let base = [
        (
            "nat-prerouting",
            "type nat hook prerouting priority dstnat; policy accept;",
            vec!["jump services"],
        ),
        (
            "nat-output",
            "type nat hook output priority -100; policy accept;",
            vec!["jump services"],
        ),
        (
            "nat-postrouting",
            "type nat hook postrouting priority srcnat; policy accept;",
            vec!["jump masquerading"],
        ),
        (
            "filter-forward",
            "type filter hook forward priority -110; policy accept;",
            vec!["ct state new jump endpoints-check"],
        ),
        (
            "filter-output",
            "type filter hook output priority -110; policy accept;",
            vec!["ct state new jump endpoints-check"],
        ),
        (
            "filter-input",
            "type filter hook input priority -110; policy accept;",
            vec!["ct state new jump nodeport-endpoints-check"],
        ),
    ];
    let masquerading = format!(
        "meta mark & {MARK} == 0 return; meta mark set meta mark ^ {MARK}; masquerade fully-random"
    );
    let mark = format!("meta mark set meta mark | {MARK}");
    let regular: [(&str, Vec<&str>); 6] = [
        (
            "services",
            vec![
                "ip daddr . meta l4proto . th dport vmap @service-ips",
                "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports",
            ],
        ),
        ("masquerading", masquerading.split("; ").collect()),
        ("mark-for-masquerade", vec![mark.as_str()]),
        (
            "endpoints-check",
            vec![
                "ip daddr . meta l4proto . th dport vmap @no-endpoint-services",
                "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports",
            ],
        ),
        (
            "nodeport-endpoints-check",
            vec!["ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports"],
        ),
        ("reject-chain", vec!["reject"]),
    ];
    for (name, hook, body) in base {
        let _ = writeln!(out, "  chain {name} {{");
        let _ = writeln!(out, "    {hook}");
        for rule in body {
            let _ = writeln!(out, "    {rule}");
        }
        let _ = writeln!(out, "  }}");
    }
    for (name, body) in regular {
        let _ = writeln!(out, "  chain {name} {{");
        for rule in body {
            let _ = writeln!(out, "    {rule}");
        }
        let _ = writeln!(out, "  }}");
    }
    let _ = writeln!(out, "}}");
    out
}

fn set_declaration(table: &str, name: &str, timeout: i32) -> String {
    format!(
        "add set ip {table} {name} {{ type ipv4_addr; flags dynamic,timeout; timeout {timeout}s; }}\n"
    )
}

/// A script that replaces the table with `rules`, whatever was installed.
#[must_use]
pub fn render_full(rules: &Ruleset, table: &str) -> String {
    let mut out = String::new();
    // `add` first so that `delete` succeeds on a host without the table
    let _ = writeln!(out, "add table ip {table}");
    let _ = writeln!(out, "delete table ip {table}");
    out.push_str(&table_block(table, rules));
    out
}

/// Appends to `out` the commands that turn the installed `old` into `new`.
pub fn render_diff(old: &Ruleset, new: &Ruleset, table: &str, out: &mut String) {
    for (name, timeout) in &new.sets {
        if old.sets.get(name) != Some(timeout) {
            if old.sets.contains_key(name) {
                // a changed timeout: the set is recreated below, after its users are flushed
                continue;
            }
            out.push_str(&set_declaration(table, name, *timeout));
        }
    }
    for name in new.chains.keys() {
        if !old.chains.contains_key(name) {
            let _ = writeln!(out, "add chain ip {table} {name}");
        }
    }
    let changed_sets: Vec<&String> = new
        .sets
        .iter()
        .filter(|(name, timeout)| old.sets.get(*name).is_some_and(|t| t != *timeout))
        .map(|(name, _)| name)
        .collect();
    let uses_changed_set = |body: &[String]| {
        changed_sets
            .iter()
            .any(|s| body.iter().any(|r| r.contains(&format!("@{s} "))))
    };
    // flush chains that change or use a recreated set, before recreating sets
    for (name, body) in &new.chains {
        match old.chains.get(name) {
            Some(old_body) if old_body == body && !uses_changed_set(body) => {}
            Some(_) => {
                let _ = writeln!(out, "flush chain ip {table} {name}");
            }
            None => {}
        }
    }
    for name in old.chains.keys() {
        if !new.chains.contains_key(name) {
            let _ = writeln!(out, "flush chain ip {table} {name}");
        }
    }
    for name in &changed_sets {
        let _ = writeln!(out, "delete set ip {table} {name}");
        out.push_str(&set_declaration(table, name, new.sets[*name]));
    }
    for (name, body) in &new.chains {
        let unchanged = old.chains.get(name) == Some(body) && !uses_changed_set(body);
        if unchanged {
            continue;
        }
        for rule in body {
            let _ = writeln!(out, "add rule ip {table} {name} {rule}");
        }
    }
    for (map, elements) in &new.maps {
        let empty = BTreeMap::new();
        let before = old.maps.get(map).unwrap_or(&empty);
        for (key, verdict) in before {
            if elements.get(key) != Some(verdict) {
                let _ = writeln!(out, "delete element ip {table} {map} {{ {key} }}");
            }
        }
        for (key, verdict) in elements {
            if before.get(key) != Some(verdict) {
                let _ = writeln!(out, "add element ip {table} {map} {{ {key} : {verdict} }}");
            }
        }
    }
    for name in old.chains.keys() {
        if !new.chains.contains_key(name) {
            let _ = writeln!(out, "delete chain ip {table} {name}");
        }
    }
    for name in old.sets.keys() {
        if !new.sets.contains_key(name) {
            let _ = writeln!(out, "delete set ip {table} {name}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, Protocol};

    pub fn port(name: &str, ip: [u8; 4], endpoints: &[([u8; 4], u16)]) -> ServicePort {
        ServicePort {
            namespace: "shop".into(),
            name: name.into(),
            port_name: String::new(),
            protocol: Protocol::Tcp,
            cluster_ip: Ipv4Addr::from(ip),
            port: 80,
            node_port: None,
            external_local: false,
            affinity_seconds: None,
            endpoints: endpoints
                .iter()
                .map(|(ip, port)| Endpoint {
                    ip: Ipv4Addr::from(*ip),
                    port: *port,
                    node: Some("n1".into()),
                })
                .collect(),
        }
    }

    fn config() -> RulesConfig {
        RulesConfig {
            table: "kelson-proxy".into(),
            cluster_cidr: "10.88.0.0/16".into(),
            node: "n1".into(),
        }
    }

    #[test]
    fn service_ports_become_maps_and_chains() {
        let mut web = port(
            "web",
            [10, 96, 0, 50],
            &[([10, 88, 0, 5], 8080), ([10, 88, 0, 6], 8080)],
        );
        web.node_port = Some(30080);
        let empty = port("empty", [10, 96, 0, 51], &[]);
        let rules = plan(&[web, empty], &config());
        assert_eq!(
            rules.maps["service-ips"]["10.96.0.50 . tcp . 80"],
            "goto svc-shop/web/tcp/p80"
        );
        assert_eq!(
            rules.maps["service-nodeports"]["tcp . 30080"],
            "goto ext-shop/web/tcp/p80"
        );
        assert_eq!(
            rules.maps["no-endpoint-services"]["10.96.0.51 . tcp . 80"],
            "goto reject-chain"
        );
        let svc = &rules.chains["svc-shop/web/tcp/p80"];
        assert!(svc[0].contains("ip saddr != 10.88.0.0/16 jump mark-for-masquerade"));
        assert_eq!(
            svc.last().unwrap(),
            "numgen random mod 2 vmap { 0 : goto sep-shop/web/tcp/p80__10.88.0.5/8080, 1 : goto sep-shop/web/tcp/p80__10.88.0.6/8080 }"
        );
        assert_eq!(
            rules.chains["sep-shop/web/tcp/p80__10.88.0.6/8080"]
                .last()
                .unwrap(),
            "meta l4proto tcp dnat to 10.88.0.6:8080"
        );
    }

    #[test]
    fn local_traffic_policy_and_affinity() {
        let mut web = port("web", [10, 96, 0, 50], &[([10, 88, 0, 5], 8080)]);
        web.endpoints.push(Endpoint {
            ip: Ipv4Addr::new(10, 88, 1, 5),
            port: 8080,
            node: Some("n2".into()),
        });
        web.node_port = Some(30080);
        web.external_local = true;
        web.affinity_seconds = Some(60);
        let rules = plan(&[web], &config());
        assert_eq!(
            rules.chains["ext-shop/web/tcp/p80"],
            ["goto sep-shop/web/tcp/p80__10.88.0.5/8080"]
        );
        assert_eq!(rules.sets.len(), 2);
        assert!(rules.chains["svc-shop/web/tcp/p80"][1].starts_with("ip saddr @affinity-"));
    }

    #[test]
    fn a_diff_touches_only_what_changed() {
        let a = port("a", [10, 96, 0, 50], &[([10, 88, 0, 5], 8080)]);
        let b = port("b", [10, 96, 0, 60], &[([10, 88, 0, 7], 80)]);
        let old = plan(&[a.clone(), b], &config());
        let mut a2 = a;
        a2.endpoints.push(Endpoint {
            ip: Ipv4Addr::new(10, 88, 0, 6),
            port: 8080,
            node: None,
        });
        let new = plan(&[a2], &config());
        let mut script = String::new();
        render_diff(&old, &new, "t", &mut script);
        assert!(script.contains("add chain ip t sep-shop/a/tcp/p80__10.88.0.6/8080"));
        assert!(script.contains("flush chain ip t svc-shop/a/tcp/p80"));
        assert!(script.contains("delete element ip t service-ips { 10.96.0.60 . tcp . 80 }"));
        assert!(script.contains("delete chain ip t svc-shop/b/tcp/p80"));
        assert!(
            !script.contains("chain ip t sep-shop/a/tcp/p80__10.88.0.5/8080"),
            "an unchanged endpoint is left alone: {script}"
        );
        let mut nothing = String::new();
        render_diff(&new, &new, "t", &mut nothing);
        assert!(nothing.is_empty(), "{nothing}");
    }
}
