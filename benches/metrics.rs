//! Exporters (`cargo bench --bench metrics`).
//!
//! Node exporter against its peer: `kelson node-exporter` and Debian's prometheus-node-exporter
//! run side by side on this machine and are scraped in turn, each over a new connection as
//! Prometheus' first scrape is, plain and gzip-compressed. Reports families, samples and bytes
//! per scrape, median and p90 scrape latency, CPU time per scrape and resident memory.
//!
//! Cluster-state exporter at scale: `kelson server` with hollow nodes (`kelson sim`) running
//! `BENCH_STATE_PODS` pods; the exporter inside the server and a standalone
//! `kelson state-metrics --kubeconfig` are scraped in turn. Reports series, bytes, scrape
//! latency and the standalone exporter's memory. (kube-state-metrics itself is not packaged
//! here; its published figures are in docs/benchmarks.md.)
//!
//! Knobs (env): `BENCH_SCRAPES` (node exporter scrapes per encoding, default 200),
//! `BENCH_STATE_PODS` (10000), `BENCH_STATE_SCRAPES` (20), `BENCH_ONLY` (`node` or `state`).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use kelson_testing::bench::{cpu_seconds, env_or as env, percentile, rss_mib};
use kelson_testing::git::{free_port, wait_listening};
use kelson_testing::{ChildGuard, KelsonProcess};

/// The `kelson` binary's allocator, so what runs in this process is measured as it runs there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const KELSON: &str = env!("CARGO_BIN_EXE_kelson");
const PEER: &str = "/usr/bin/prometheus-node-exporter";

/// One scrape: the body's size (as sent) and the time to the last byte.
fn scrape(port: u16, gzip: bool) -> (usize, Duration, Vec<u8>) {
    let started = Instant::now();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let encoding = if gzip {
        "Accept-Encoding: gzip\r\n"
    } else {
        ""
    };
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n{encoding}\r\n").as_bytes())
        .expect("request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("response");
    let elapsed = started.elapsed();
    let body = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| response[i + 4..].to_vec())
        .unwrap_or_default();
    (body.len(), elapsed, body)
}

struct Exporter {
    name: &'static str,
    port: u16,
    process: ChildGuard,
}

/// Anonymous resident memory (heap, stacks: what a process allocated, without its mapped
/// executable) of process `pid` in MiB.
fn anon_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn main() {
    // BENCH_ONLY=node or BENCH_ONLY=state runs one of the two
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "node" {
        node_exporter();
    }
    if only.is_empty() || only == "state" {
        state_metrics();
    }
}

fn node_exporter() {
    let scrapes = env("BENCH_SCRAPES", 200);
    let (peer_port, our_port) = (free_port(), free_port());
    let spawn = |program: &str, args: Vec<String>| ChildGuard::spawn(program, &args);
    let exporters = [
        Exporter {
            name: "kelson node-exporter",
            port: our_port,
            process: spawn(
                KELSON,
                vec![
                    "node-exporter".into(),
                    format!("--web.listen-address=127.0.0.1:{our_port}"),
                ],
            ),
        },
        Exporter {
            name: "prometheus-node-exporter",
            port: peer_port,
            process: spawn(
                PEER,
                vec![
                    format!("--web.listen-address=127.0.0.1:{peer_port}"),
                    "--no-collector.systemd".into(),
                ],
            ),
        },
    ];
    for exporter in &exporters {
        wait_listening(exporter.port, exporter.name);
        // warm up: first scrapes open files and fill caches
        for _ in 0..5 {
            scrape(exporter.port, false);
        }
    }
    println!("node exporter, {scrapes} scrapes of each, alternating, new connection per scrape");
    println!(
        "| exporter | families | samples | bytes | median ms | p90 ms | gzip bytes | gzip median ms | CPU ms/scrape | RSS MiB | anonymous MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut rows: Vec<Vec<String>> = exporters.iter().map(|_| Vec::new()).collect();
    let mut latencies: Vec<[Vec<f64>; 2]> = exporters.iter().map(|_| [vec![], vec![]]).collect();
    let mut sizes = vec![[0usize; 2]; exporters.len()];
    let cpu_before: Vec<f64> = exporters
        .iter()
        .map(|e| cpu_seconds(e.process.0.id()))
        .collect();
    let mut body = vec![Vec::new(); exporters.len()];
    for _ in 0..scrapes {
        for (i, exporter) in exporters.iter().enumerate() {
            for (g, gzip) in [false, true].into_iter().enumerate() {
                let (size, elapsed, bytes) = scrape(exporter.port, gzip);
                latencies[i][g].push(elapsed.as_secs_f64() * 1000.0);
                sizes[i][g] = size;
                if !gzip {
                    body[i] = bytes;
                }
            }
        }
    }
    for (i, exporter) in exporters.iter().enumerate() {
        let pid = exporter.process.0.id();
        let cpu_ms = (cpu_seconds(pid) - cpu_before[i]) * 1000.0 / (2 * scrapes) as f64;
        let text = String::from_utf8_lossy(&body[i]);
        let families = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        let samples = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .count();
        let [plain, gzip] = &mut latencies[i];
        rows[i] = vec![
            exporter.name.to_owned(),
            families.to_string(),
            samples.to_string(),
            sizes[i][0].to_string(),
            format!("{:.2}", percentile(plain, 50.0)),
            format!("{:.2}", percentile(plain, 90.0)),
            sizes[i][1].to_string(),
            format!("{:.2}", percentile(gzip, 50.0)),
            format!("{cpu_ms:.2}"),
            format!("{:.1}", rss_mib(pid)),
            format!("{:.1}", anon_mib(pid)),
        ];
        println!("| {} |", rows[i].join(" | "));
    }
    let ratio = |column: usize| {
        let ours: f64 = rows[0][column].parse().unwrap_or(f64::NAN);
        let peer: f64 = rows[1][column].parse().unwrap_or(f64::NAN);
        peer / ours
    };
    println!(
        "\nprometheus-node-exporter / kelson: median latency {:.1}x, gzip median {:.1}x, CPU per scrape {:.1}x, RSS {:.1}x, anonymous memory {:.1}x",
        ratio(4),
        ratio(7),
        ratio(8),
        ratio(9),
        ratio(10)
    );
}

fn pod(name: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench", "tier": "web"}},
        "spec": {"containers": [{"name": "app", "image": "busybox:1.36", "command": ["sleep", "3600"],
                 "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "32Mi"}}}]}
    })
}

/// Series (sample lines) and `kube_pod_info` samples in an exposition.
fn count(body: &[u8]) -> (usize, usize) {
    let text = String::from_utf8_lossy(body);
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    let pods = text
        .lines()
        .filter(|l| l.starts_with("kube_pod_info{"))
        .count();
    (series, pods)
}

fn state_metrics() {
    use futures::StreamExt as _;
    let pods = env("BENCH_STATE_PODS", 10_000);
    let scrapes = env("BENCH_STATE_SCRAPES", 20);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    std::fs::create_dir_all(&data).unwrap();
    let server = KelsonProcess::server(std::path::Path::new(KELSON), &data, &[]).unwrap();
    let kubeconfig = server.kubeconfig();
    let nodes = pods.div_ceil(100).max(1);
    let _nodes = ChildGuard::spawn(
        KELSON,
        &[
            "sim".to_owned(),
            format!("--nodes={nodes}"),
            "--pods=110".to_owned(),
            "--kubeconfig".to_owned(),
            kubeconfig.display().to_string(),
        ],
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let created = Instant::now();
    runtime.block_on(async {
        let client = kelson_testing::client_for(&kubeconfig).await;
        let api: kube::Api<kube::core::DynamicObject> = kube::Api::namespaced_with(
            client,
            "default",
            &kube::core::ApiResource::erase::<k8s_openapi::api::core::v1::Pod>(&()),
        );
        futures::stream::iter(0..pods)
            .map(|i| {
                let api = api.clone();
                async move {
                    let object: kube::core::DynamicObject =
                        serde_json::from_value(pod(&format!("bench-{i}"))).unwrap();
                    api.create(&kube::api::PostParams::default(), &object)
                        .await
                        .expect("pod created");
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
    });
    let created = created.elapsed();
    let standalone_port = free_port();
    let standalone = ChildGuard::spawn(
        KELSON,
        &[
            "state-metrics".to_owned(),
            format!("--listen=127.0.0.1:{standalone_port}"),
            "--kubeconfig".to_owned(),
            kubeconfig.display().to_string(),
        ],
    );
    wait_listening(standalone_port, "kelson state-metrics");
    let server_port: u16 = server
        .state_metrics_address()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // wait until both see every pod running on a hollow node
    let started = Instant::now();
    let running = |port: u16| {
        let (_, _, body) = scrape(port, false);
        String::from_utf8_lossy(&body)
            .lines()
            .filter(|l| {
                l.starts_with("kube_pod_status_phase{") && l.contains("phase=\"Running\"} 1")
            })
            .count()
    };
    loop {
        let (a, b) = (running(server_port), running(standalone_port));
        if a >= pods && b >= pods {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "only {a}/{b} of {pods} pods running after 10 minutes"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    println!(
        "\ncluster-state exporter, {pods} pods running on {nodes} hollow nodes \
         (created in {:.1} s, all running {:.1} s later), {scrapes} scrapes each",
        created.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "| exporter | series | pods | bytes | median ms | p90 ms | max ms | RSS MiB | anonymous MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (name, port, pid) in [
        ("in kelson server", server_port, None),
        (
            "kelson state-metrics (standalone)",
            standalone_port,
            Some(standalone.0.id()),
        ),
    ] {
        let mut latencies = Vec::new();
        let mut last = Vec::new();
        for _ in 0..scrapes {
            let (_, elapsed, body) = scrape(port, false);
            latencies.push(elapsed.as_secs_f64() * 1000.0);
            last = body;
        }
        let (series, pod_count) = count(&last);
        let max = latencies.iter().copied().fold(0.0, f64::max);
        println!(
            "| {name} | {series} | {pod_count} | {} | {:.1} | {:.1} | {max:.1} | {} | {} |",
            last.len(),
            percentile(&mut latencies, 50.0),
            percentile(&mut latencies, 90.0),
            pid.map_or("(the server's)".to_owned(), |pid| format!(
                "{:.1}",
                rss_mib(pid)
            )),
            pid.map_or("(the server's)".to_owned(), |pid| format!(
                "{:.1}",
                anon_mib(pid)
            )),
        );
    }
}
