//! End-to-end tests of the exporters against the real peers: `kelson node-exporter` beside
//! Debian's prometheus-node-exporter on this machine (same families, help, types, label sets and
//! values), and a real Prometheus scraping it and answering node-mixin rules.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kelson_metrics::exposition::{Kind, ParsedFamily, parse};
use kelson_testing::ChildGuard;
use kelson_testing::git::{free_port, get, wait_listening};

const KELSON: &str = env!("CARGO_BIN_EXE_kelson");
const PEER: &str = "/usr/bin/prometheus-node-exporter";
const PROMETHEUS: &str = "/usr/bin/prometheus";

fn spawn(program: &str, args: &[&str]) -> ChildGuard {
    ChildGuard::spawn(program, args)
}

type Series = BTreeMap<Vec<(String, String)>, f64>;

fn scrape(port: u16) -> BTreeMap<String, (ParsedFamily, Series)> {
    let (status, body) = get(port, "/metrics");
    assert_eq!(status, 200, "{body}");
    parse(&body)
        .expect("the exposition parses")
        .into_iter()
        .map(|family| {
            let series = family
                .samples
                .iter()
                .map(|s| {
                    let mut labels = s.labels.clone();
                    labels.sort();
                    (labels, s.value)
                })
                .collect();
            (family.name.clone(), (family, series))
        })
        .collect()
}

/// Families whose values move too fast between two scrapes to compare (only their presence,
/// help, type and labels are).
fn volatile(name: &str) -> bool {
    name.starts_with("node_memory_")
        && !matches!(
            name,
            "node_memory_MemTotal_bytes" | "node_memory_SwapTotal_bytes"
        )
        || name.starts_with("node_sockstat_")
        || name.starts_with("node_procs_")
        || name.starts_with("node_load")
        || matches!(
            name,
            "node_nf_conntrack_entries"
                | "node_filefd_allocated"
                | "node_entropy_available_bits"
                | "node_netstat_Tcp_CurrEstab"
                | "node_udp_queues"
                | "node_arp_entries"
                | "node_disk_io_now"
                | "node_timex_offset_seconds"
                | "node_timex_frequency_adjustment_ratio"
        )
}

#[test]
fn the_node_exporter_matches_prometheus_node_exporter() {
    let (peer_port, our_port) = (free_port(), free_port());
    let _peer = spawn(
        PEER,
        &[
            &format!("--web.listen-address=127.0.0.1:{peer_port}"),
            "--no-collector.systemd",
        ],
    );
    let _ours = spawn(
        KELSON,
        &[
            "node-exporter",
            &format!("--web.listen-address=127.0.0.1:{our_port}"),
        ],
    );
    wait_listening(peer_port, "prometheus-node-exporter");
    wait_listening(our_port, "kelson node-exporter");

    // ours is scraped between two scrapes of the peer: counters must fall in between
    let before = scrape(peer_port);
    let ours = scrape(our_port);
    let after = scrape(peer_port);

    let mut problems = Vec::new();
    let mut compared = 0;
    for (name, (family, series)) in &ours {
        if name.starts_with("node_scrape_collector_") || name.starts_with("process_") {
            continue;
        }
        let Some((peer, peer_series)) = before.get(name) else {
            problems.push(format!(
                "{name}: prometheus-node-exporter has no such family"
            ));
            continue;
        };
        if family.help != peer.help {
            problems.push(format!("{name}: help {:?} != {:?}", family.help, peer.help));
        }
        if family.kind != peer.kind {
            problems.push(format!("{name}: type {:?} != {:?}", family.kind, peer.kind));
        }
        let keys = |s: &Series| s.keys().cloned().collect::<BTreeSet<_>>();
        let after_series = after.get(name).map(|(_, s)| s.clone()).unwrap_or_default();
        if keys(series) != keys(peer_series) && keys(series) != keys(&after_series) {
            problems.push(format!(
                "{name}: series {:?} != {:?}",
                keys(series),
                keys(peer_series)
            ));
            continue;
        }
        if volatile(name) {
            continue;
        }
        for (labels, value) in series {
            let (Some(low), Some(high)) = (peer_series.get(labels), after_series.get(labels))
            else {
                continue;
            };
            let (low, high) = (low.min(*high), low.max(*high));
            let slack = match (name.as_str(), family.kind) {
                ("node_time_seconds", _) => 5.0,
                (_, Kind::Counter | Kind::Untyped) => 1.0 + high.abs() * 0.005,
                _ => 1e-6 + high.abs() * 0.05,
            };
            if *value < low - slack || *value > high + slack {
                problems.push(format!(
                    "{name}{labels:?}: {value} outside prometheus-node-exporter's {low}..{high}"
                ));
            }
            compared += 1;
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(compared > 300, "only {compared} series compared");
    // the families the node-mixin's rules and alerts need are all there
    for name in [
        "node_cpu_seconds_total",
        "node_memory_MemAvailable_bytes",
        "node_memory_MemTotal_bytes",
        "node_filesystem_avail_bytes",
        "node_filesystem_size_bytes",
        "node_filesystem_files_free",
        "node_network_receive_bytes_total",
        "node_network_transmit_errs_total",
        "node_load1",
        "node_disk_io_time_seconds_total",
        "node_disk_io_time_weighted_seconds_total",
        "node_vmstat_pgmajfault",
        "node_filefd_maximum",
        "node_nf_conntrack_entries_limit",
        "node_timex_sync_status",
        "node_textfile_scrape_error",
        "node_uname_info",
        "node_netstat_Tcp_RetransSegs",
        "process_resident_memory_bytes",
    ] {
        assert!(ours.contains_key(name), "no {name}");
    }
}

/// Runs a PromQL instant query; the result vector.
fn query(port: u16, promql: &str) -> Vec<serde_json::Value> {
    let encoded: String = form_urlencoded::byte_serialize(promql.as_bytes()).collect();
    let (status, body) = get(port, &format!("/api/v1/query?query={encoded}"));
    assert_eq!(status, 200, "{promql}: {body}");
    let response: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    response["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn number(sample: &serde_json::Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

#[test]
fn prometheus_scrapes_the_node_exporter_and_answers_node_mixin_rules() {
    let dir = tempfile::tempdir().unwrap();
    let (our_port, prometheus_port) = (free_port(), free_port());
    let _ours = spawn(
        KELSON,
        &[
            "node-exporter",
            &format!("--web.listen-address=127.0.0.1:{our_port}"),
        ],
    );
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  \
             - job_name: node-exporter\n    static_configs:\n      - targets: ['127.0.0.1:{our_port}']\n"
        ),
    )
    .unwrap();
    let _prometheus = spawn(
        PROMETHEUS,
        &[
            &format!("--config.file={}", config.display()),
            &format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            &format!("--web.listen-address=127.0.0.1:{prometheus_port}"),
        ],
    );
    wait_listening(prometheus_port, "prometheus");
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(prometheus_port, "/-/ready").0 != 200 {
        assert!(
            Instant::now() < deadline,
            "prometheus is not ready after 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // CPU utilisation needs two scrapes of the counters: wait until the rule has a value
    let cpu = "instance:node_cpu_utilisation:rate5m";
    let rule = "1 - avg without (cpu) (sum without (mode) (rate(node_cpu_seconds_total{job=\"node-exporter\", mode=~\"idle|iowait|steal\"}[1m])))";
    let deadline = Instant::now() + Duration::from_secs(60);
    let utilisation = loop {
        let result = query(prometheus_port, rule);
        if let Some(sample) = result.first() {
            break number(sample);
        }
        assert!(Instant::now() < deadline, "no value for {cpu} after 60 s");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!((0.0..=1.0).contains(&utilisation), "{cpu} = {utilisation}");

    let up = query(prometheus_port, "up{job=\"node-exporter\"}");
    assert_eq!(up.len(), 1);
    assert_eq!(number(&up[0]), 1.0, "the target is down: {up:?}");
    let samples = query(
        prometheus_port,
        "scrape_samples_scraped{job=\"node-exporter\"}",
    );
    assert!(number(&samples[0]) > 300.0, "{samples:?}");

    // node-mixin's memory and filesystem rules
    let memory = query(
        prometheus_port,
        "1 - (node_memory_MemAvailable_bytes{job=\"node-exporter\"} / node_memory_MemTotal_bytes{job=\"node-exporter\"})",
    );
    assert!((0.0..1.0).contains(&number(&memory[0])), "{memory:?}");
    let filesystems = query(
        prometheus_port,
        "node_filesystem_avail_bytes{job=\"node-exporter\",fstype!=\"\",mountpoint=\"/\"} / node_filesystem_size_bytes{job=\"node-exporter\",fstype!=\"\",mountpoint=\"/\"}",
    );
    assert_eq!(filesystems.len(), 1, "{filesystems:?}");
    assert!((0.0..=1.0).contains(&number(&filesystems[0])));
    let cpus = query(
        prometheus_port,
        "count without (cpu, mode) (node_cpu_seconds_total{job=\"node-exporter\",mode=\"idle\"})",
    );
    let expected = std::fs::read_to_string("/proc/stat")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .count();
    assert_eq!(number(&cpus[0]) as usize, expected, "{cpus:?}");
}
