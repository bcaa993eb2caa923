//! The generated scripts against the real kernel, each run in a network namespace of its own
//! (`unshare --net`), so the host's rules are never touched: the whole table loads, and a
//! difference applied over one state yields exactly the table the new state loads to.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use kelson_proxy::model::{Endpoint, Protocol, ServicePort};
use kelson_proxy::nft::{self, RulesConfig, Ruleset};

fn port(name: &str, ip: [u8; 4], endpoints: &[[u8; 4]]) -> ServicePort {
    ServicePort {
        namespace: "shop".into(),
        name: name.into(),
        port_name: "http".into(),
        protocol: Protocol::Tcp,
        cluster_ip: Ipv4Addr::from(ip),
        port: 80,
        node_port: None,
        external_local: false,
        affinity_seconds: None,
        endpoints: endpoints
            .iter()
            .map(|ip| Endpoint {
                ip: Ipv4Addr::from(*ip),
                port: 8080,
                node: Some("n1".into()),
            })
            .collect(),
    }
}

fn config() -> RulesConfig {
    RulesConfig {
        table: "kelson-test".into(),
        cluster_cidr: "10.88.0.0/16".into(),
        node: "n1".into(),
    }
}

/// Runs the scripts one after another in a fresh network namespace; returns the table listing.
fn in_namespace(scripts: &[String]) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let mut shell = String::from("set -e\n");
    for (i, script) in scripts.iter().enumerate() {
        let path = dir.path().join(format!("{i}.nft"));
        std::fs::write(&path, script).unwrap();
        shell.push_str(&format!("nft -f {}\n", path.display()));
    }
    shell.push_str("nft list table ip kelson-test\n");
    let mut child = Command::new("unshare")
        .args(["--net", "sh", "-s"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare (util-linux) runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(shell.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// The maps, sets and chains of a listing, in name order (the kernel lists them in creation
/// order).
fn blocks(listing: &str) -> Vec<String> {
    let body = listing
        .trim()
        .trim_start_matches("table ip kelson-test {")
        .trim_end_matches('}');
    let mut blocks: Vec<String> = body.split("\n\n").map(|b| b.trim().to_owned()).collect();
    blocks.sort();
    assert!(blocks.len() > 10, "{listing}");
    blocks
}

fn full(rules: &Ruleset) -> String {
    nft::render_full(rules, "kelson-test")
}

fn states() -> Vec<Vec<ServicePort>> {
    let mut web = port("web", [10, 96, 0, 50], &[[10, 88, 0, 5], [10, 88, 0, 6]]);
    web.node_port = Some(30080);
    let mut sticky = port("sticky", [10, 96, 0, 51], &[[10, 88, 0, 7]]);
    sticky.affinity_seconds = Some(600);
    let empty = port("empty", [10, 96, 0, 52], &[]);
    let mut dns = port("dns", [10, 96, 0, 10], &[[10, 88, 0, 9]]);
    dns.protocol = Protocol::Udp;
    dns.port = 53;

    let mut web2 = web.clone();
    web2.endpoints.remove(0);
    web2.external_local = true;
    let mut sticky2 = sticky.clone();
    sticky2.affinity_seconds = Some(60);
    sticky2.endpoints.push(Endpoint {
        ip: Ipv4Addr::new(10, 88, 0, 8),
        port: 8080,
        node: None,
    });
    let mut empty2 = empty.clone();
    empty2.endpoints = web.endpoints.clone();
    vec![
        vec![web.clone(), sticky.clone(), empty.clone(), dns.clone()],
        vec![web2, sticky2, empty2],
        vec![],
        vec![web, sticky, empty, dns],
    ]
}

#[test]
fn whole_tables_load_and_differences_converge() {
    let config = config();
    let plans: Vec<Ruleset> = states().iter().map(|s| nft::plan(s, &config)).collect();
    for plan in &plans {
        in_namespace(&[full(plan)]).unwrap_or_else(|e| panic!("{e}\n{}", full(plan)));
    }
    // walk through every state by differences; each step must list like a fresh load
    let mut scripts = vec![full(&plans[0])];
    for pair in plans.windows(2) {
        let mut diff = String::new();
        nft::render_diff(&pair[0], &pair[1], "kelson-test", &mut diff);
        scripts.push(diff);
        let walked = in_namespace(&scripts).unwrap_or_else(|e| panic!("{e}\n{scripts:#?}"));
        let fresh = in_namespace(&[full(&pair[1])]).unwrap();
        assert_eq!(blocks(&walked), blocks(&fresh), "after {scripts:#?}");
    }
}

#[test]
fn a_refused_script_is_reported_with_nft_s_message() {
    let error = in_namespace(&["add rule ip kelson-test nowhere accept\n".to_owned()]).unwrap_err();
    assert!(error.contains("No such file or directory"), "{error}");
}
