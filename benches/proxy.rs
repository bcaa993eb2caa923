//! Service proxy benchmark (`cargo bench --bench proxy`): nftables rule sync for many Services,
//! in a network namespace of its own (the host's rules are never touched). Needs root and nft.
//!
//! Knobs (env): `BENCH_SERVICES` (default 1000), `BENCH_ENDPOINTS` (10 per Service),
//! `BENCH_RUNS` (5; the median is reported).

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kelson_proxy::model::{Endpoint, Protocol, ServicePort};
use kelson_proxy::nft::{self, RulesConfig};
use kelson_testing::bench::env_or as env;

const TABLE: &str = "kelson-proxy";

struct Namespace(String);

impl Namespace {
    fn new() -> Self {
        let name = format!("kelson-bench-{}", std::process::id());
        let status = Command::new("ip").args(["netns", "add", &name]).status();
        assert!(status.is_ok_and(|s| s.success()), "ip netns add {name}");
        Self(name)
    }

    /// Runs `nft -f -` with `script` in the namespace; returns how long it took.
    fn apply(&self, script: &str) -> Duration {
        let started = Instant::now();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.0, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nft runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        started.elapsed()
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

fn services(count: usize, endpoints: usize, generation: u8) -> Vec<ServicePort> {
    (0..count)
        .map(|i| {
            let i = u32::try_from(i).unwrap();
            ServicePort {
                namespace: format!("ns{}", i % 20),
                name: format!("svc{i}"),
                port_name: "http".into(),
                protocol: Protocol::Tcp,
                cluster_ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 1, 0)) + i),
                port: 80,
                node_port: (i % 10 == 0).then(|| 30000 + u16::try_from(i).unwrap() % 2000),
                external_local: false,
                affinity_seconds: None,
                endpoints: (0..endpoints)
                    .map(|e| Endpoint {
                        ip: Ipv4Addr::from(
                            u32::from(Ipv4Addr::new(10, 88, 0, 0))
                                + i * 16
                                + u32::try_from(e).unwrap()
                                + u32::from(generation),
                        ),
                        port: 8080,
                        node: Some("n1".into()),
                    })
                    .collect(),
            }
        })
        .collect()
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let count = env("BENCH_SERVICES", 1000);
    let per = env("BENCH_ENDPOINTS", 10);
    let runs = env("BENCH_RUNS", 5);
    let config = RulesConfig {
        table: TABLE.into(),
        cluster_cidr: "10.88.0.0/16".into(),
        node: "n1".into(),
    };
    let ports = services(count, per, 0);

    let started = Instant::now();
    let rules = nft::plan(&ports, &config);
    let plan_time = started.elapsed();
    let full = nft::render_full(&rules, TABLE);
    let chains = rules.chains.len();

    let namespace = Namespace::new();
    let first = namespace.apply(&full);
    let resync = median((0..runs).map(|_| namespace.apply(&full)).collect());

    // one endpoint of one Service replaced, then back
    let mut changed = ports.clone();
    changed[count / 2].endpoints[0].ip = Ipv4Addr::new(10, 89, 0, 1);
    let changed_rules = nft::plan(&changed, &config);
    let mut forward = String::new();
    nft::render_diff(&rules, &changed_rules, TABLE, &mut forward);
    let mut back = String::new();
    nft::render_diff(&changed_rules, &rules, TABLE, &mut back);
    let one = median(
        (0..runs)
            .map(|_| {
                let t = namespace.apply(&forward);
                namespace.apply(&back);
                t
            })
            .collect(),
    );

    // every endpoint of a tenth of the Services replaced (a big rollout)
    let mut rollout = ports;
    for port in rollout.iter_mut().step_by(10) {
        for endpoint in &mut port.endpoints {
            endpoint.ip = Ipv4Addr::from(u32::from(endpoint.ip) + 0x0001_0000);
        }
    }
    let rollout_rules = nft::plan(&rollout, &config);
    let mut forward_big = String::new();
    nft::render_diff(&rules, &rollout_rules, TABLE, &mut forward_big);
    let mut back_big = String::new();
    nft::render_diff(&rollout_rules, &rules, TABLE, &mut back_big);
    let big = median(
        (0..runs)
            .map(|_| {
                let t = namespace.apply(&forward_big);
                namespace.apply(&back_big);
                t
            })
            .collect(),
    );

    println!(
        "## Results: service proxy (`cargo bench --bench proxy`, {count} Services × {per} endpoints, 2 CPUs)\n"
    );
    println!("| step | time | script |");
    println!("|---|---|---|");
    println!("| plan ({chains} chains, pure) | {} | |", ms(plan_time));
    println!(
        "| first full sync (empty table) | {} | {} lines, {} KiB |",
        ms(first),
        full.lines().count(),
        full.len() / 1024
    );
    println!(
        "| full resync over the installed table (median of {runs}) | {} | same |",
        ms(resync)
    );
    println!(
        "| partial sync: one endpoint of one Service replaced (median) | {} | {} lines |",
        ms(one),
        forward.lines().count()
    );
    println!(
        "| partial sync: all endpoints of {} Services replaced (median) | {} | {} lines |",
        count / 10,
        ms(big),
        forward_big.lines().count()
    );
}
