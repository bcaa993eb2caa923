//! Exporters against their peers (`cargo bench --bench metrics`): `kelson node-exporter` and
//! Debian's prometheus-node-exporter run side by side on this machine and are scraped in turn,
//! each over a new connection as Prometheus' first scrape is, plain and gzip-compressed.
//! Reports families, samples and bytes per scrape, median and p90 scrape latency, CPU time per
//! scrape and resident memory.
//!
//! Knobs (env): `BENCH_SCRAPES` (scrapes of each exporter per encoding, default 200).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use kelson_testing::ChildGuard;
use kelson_testing::bench::{cpu_seconds, env_or as env, percentile, rss_mib};
use kelson_testing::git::{free_port, wait_listening};

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

fn main() {
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
        "| exporter | families | samples | bytes | median ms | p90 ms | gzip bytes | gzip median ms | CPU ms/scrape | RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
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
        ];
        println!("| {} |", rows[i].join(" | "));
    }
    let ratio = |column: usize| {
        let ours: f64 = rows[0][column].parse().unwrap_or(f64::NAN);
        let peer: f64 = rows[1][column].parse().unwrap_or(f64::NAN);
        peer / ours
    };
    println!(
        "\nprometheus-node-exporter / kelson: median latency {:.1}x, gzip median {:.1}x, CPU per scrape {:.1}x, RSS {:.1}x",
        ratio(4),
        ratio(7),
        ratio(8),
        ratio(9)
    );
}
