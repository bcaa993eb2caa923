//! Log pipeline (`cargo bench --bench logpipe`).
//!
//! Ingest: `BENCH_LOG_LINES` synthetic logfmt lines (about 130 bytes each, 10 pods, 10% at
//! level=error, spread over one hour) are written as CRI-format container logs under a
//! kubelet-style tree, then `kelson logpipe` with the node's default pipeline (tail → CRI parse
//! → pod metadata → index) indexes the backlog; the bench polls the query API until every line
//! is searchable. Reports lines/s, MB/s of message text, the process' CPU time and peak memory,
//! and index bytes per raw byte. In the same run, the raw baseline: tantivy alone indexing the
//! same lines, already parsed, with the same schema and writer settings.
//!
//! Queries (through the HTTP API, server-side time and client wall time): a needle (one line
//! in all), a needle with no hit, one pod in a 5-minute window, the newest 100 errors, and
//! error counts per minute over the hour; `BENCH_QUERY_RUNS` each.
//!
//! `BENCH_INDEX=commit_bytes=1000000000,writer_memory_mib=48` sets index sink options.
//!
//! Loki is not packaged here; docs/benchmarks.md sets these beside the Loki 2.7.5 figures
//! measured on this machine kind (../shared/reference/logpipe.md).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use kelson_logpipe::record::LogRecord;
use kelson_testing::ChildGuard;
use kelson_testing::bench::{cpu_seconds, env_or as env, percentile};
use kelson_testing::git::get;

/// The `kelson` binary's allocator, so what runs in this process is measured as it runs there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const KELSON: &str = env!("CARGO_BIN_EXE_kelson");
const PODS: usize = 10;
/// 2026-11-23T00:00:00Z
const BASE_NS: i64 = 1_795_392_000_000_000_000;
const HOUR_NS: i64 = 3_600_000_000_000;

/// Line `n` of `total`: (timestamp, pod number, level, message).
fn line(n: usize, total: usize) -> (i64, usize, &'static str, String) {
    let ts = BASE_NS + (HOUR_NS as i128 * n as i128 / total as i128) as i64;
    let pod = n % PODS;
    let level = if n % 10 == 3 { "error" } else { "info" };
    let status = if level == "error" { 500 } else { 200 };
    let message = format!(
        "ts={ts} level={level} msg=\"GET /api/v1/items/{} {status}\" duration_ms={} user=u{} trace=t{n:07} node=worker-{}",
        n % 9973,
        n % 487,
        n % 1009,
        pod % 3
    );
    (ts, pod, level, message)
}

fn write_backlog(root: &Path, total: usize) -> u64 {
    let mut files: Vec<std::io::BufWriter<std::fs::File>> = (0..PODS)
        .map(|p| {
            let dir = root.join(format!("pods/shop_web-{p}_uid-{p}/app"));
            std::fs::create_dir_all(&dir).unwrap();
            std::io::BufWriter::new(std::fs::File::create(dir.join("0.log")).unwrap())
        })
        .collect();
    let mut message_bytes = 0;
    for n in 0..total {
        let (ts, pod, _, message) = line(n, total);
        let time = jiff::Timestamp::from_nanosecond(i128::from(ts)).unwrap();
        message_bytes += message.len() as u64 + 1;
        writeln!(files[pod], "{time} stdout F {message}").unwrap();
    }
    for mut file in files {
        file.flush().unwrap();
    }
    message_bytes
}

/// A `/proc/PID/status` field in MiB (`VmHWM`: peak resident; `RssAnon`: resident heap and
/// stacks, without the index files tantivy maps).
fn status_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        dir_bytes(&e.path())
                    } else {
                        e.metadata().map_or(0, |m| m.len())
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

fn api(port: u16, path: &str) -> serde_json::Value {
    let (status, body) = get(port, path);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Raw tantivy: the same documents, already parsed, same schema and writer settings.
fn raw_tantivy(dir: &Path, total: usize) -> (Duration, u64) {
    let (schema, fields) = kelson_logpipe::index::schema();
    let index = tantivy::Index::create_in_dir(dir, schema).unwrap();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let mut writer: tantivy::IndexWriter = index
        .writer_with_num_threads(threads, (64 << 20).max(threads * (16 << 20)))
        .unwrap();
    let defaults = kelson_logpipe::index::writer::IndexSinkConfig::default();
    let mut policy = tantivy::merge_policy::LogMergePolicy::default();
    policy.set_min_num_segments(defaults.merge_segments);
    writer.set_merge_policy(Box::new(policy));
    let started = Instant::now();
    let node: std::sync::Arc<str> = "worker".into();
    let tag: std::sync::Arc<str> = "kube".into();
    let namespace: std::sync::Arc<str> = "shop".into();
    let container: std::sync::Arc<str> = "app".into();
    let pods: Vec<std::sync::Arc<str>> = (0..PODS).map(|p| format!("web-{p}").into()).collect();
    let mut since_commit = 0;
    for n in 0..total {
        let (ts, pod, level, message) = line(n, total);
        let record = LogRecord {
            tag: tag.clone(),
            timestamp: ts,
            message,
            stream: "stdout",
            namespace: namespace.clone(),
            pod: pods[pod].clone(),
            container: container.clone(),
            node: node.clone(),
            level,
            ..LogRecord::default()
        };
        writer
            .add_document(kelson_logpipe::index::writer::document(&record, &fields))
            .unwrap();
        since_commit += 1;
        // commit about as often as the pipeline does (every second at this rate)
        if since_commit == 150_000 {
            writer.commit().unwrap();
            since_commit = 0;
        }
    }
    writer.commit().unwrap();
    let elapsed = started.elapsed();
    writer.wait_merging_threads().unwrap();
    (elapsed, dir_bytes(dir))
}

/// Extra settings of the index sink from `BENCH_INDEX` (`key=value,...`), to compare
/// configurations on the same backlog.
fn index_settings() -> String {
    std::env::var("BENCH_INDEX")
        .unwrap_or_default()
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| format!("    {}: {}\n", key.trim(), value.trim()))
        .collect()
}

fn main() {
    let total = env("BENCH_LOG_LINES", 1_000_000);
    let runs = env("BENCH_QUERY_RUNS", 50);
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let message_bytes = write_backlog(dir.path(), total);
    let raw_bytes = dir_bytes(&dir.path().join("pods"));
    println!(
        "{total} lines, {:.1} MB of messages ({:.1} MB as CRI files), written in {:.1} s",
        message_bytes as f64 / 1e6,
        raw_bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );

    // the pipeline, as a process, on the backlog
    let config = dir.path().join("pipeline.yaml");
    std::fs::write(
        &config,
        format!(
            "sources:\n  pods:\n    type: tail\n    include: ['{}/pods/*/*/*.log']\n    kubernetes: true\nsinks:\n  index:\n    type: index\n    path: {}\n{}",
            dir.path().display(),
            dir.path().join("index").display(),
            index_settings()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let started = Instant::now();
    let process = ChildGuard::spawn(
        KELSON,
        &[
            "logpipe",
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
    );
    let pid = process.0.id();
    let port: u16 = loop {
        if let Ok(address) = std::fs::read_to_string(data.join("address"))
            && let Some(port) = address.rsplit(':').next().and_then(|p| p.parse().ok())
        {
            break port;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut peak_anon = 0.0f64;
    loop {
        let found = api(port, "/api/v1/search?limit=1")["total"]
            .as_u64()
            .unwrap();
        peak_anon = peak_anon.max(status_mib(pid, "RssAnon:"));
        if found >= total as u64 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "stuck at {found}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let pipeline_time = started.elapsed();
    let cpu = cpu_seconds(pid);
    let peak = status_mib(pid, "VmHWM:");
    let index_bytes = dir_bytes(&dir.path().join("index"));
    let rate = total as f64 / pipeline_time.as_secs_f64();
    println!(
        "pipeline: {:.2} s, {:.0} lines/s, {:.1} MB/s of messages, {cpu:.1} s CPU ({:.2} cores), peak RSS {peak:.0} MiB (anonymous {peak_anon:.0} MiB), index {:.1} MB ({:.2} bytes per message byte)",
        pipeline_time.as_secs_f64(),
        rate,
        message_bytes as f64 / 1e6 / pipeline_time.as_secs_f64(),
        cpu / pipeline_time.as_secs_f64(),
        index_bytes as f64 / 1e6,
        index_bytes as f64 / message_bytes as f64,
    );

    // queries on the pipeline's index
    let needle = format!("t{:07}", total / 2 + 7);
    let window_start = BASE_NS + HOUR_NS / 2;
    let window_end = window_start + 300_000_000_000;
    let queries = [
        (
            "needle (1 line)",
            format!("/api/v1/search?query={needle}&limit=100"),
        ),
        (
            "needle, no hit",
            "/api/v1/search?query=zzznothere&limit=100".to_owned(),
        ),
        (
            "pod + 5 min window, newest 100",
            format!("/api/v1/search?pod=web-3&start={window_start}&end={window_end}&limit=100"),
        ),
        (
            "level=error, newest 100",
            "/api/v1/search?level=error&limit=100".to_owned(),
        ),
        (
            "errors per minute over the hour",
            format!(
                "/api/v1/histogram?level=error&start={BASE_NS}&end={}&interval=1m",
                BASE_NS + HOUR_NS
            ),
        ),
        (
            "full text \"items 42\", newest 100",
            "/api/v1/search?query=%22items%2042%22&limit=100".to_owned(),
        ),
    ];
    println!("| query | server p50 ms | server p99 ms | client p50 ms | result |");
    println!("|---|---|---|---|---|");
    for (name, path) in &queries {
        let mut server = Vec::new();
        let mut client = Vec::new();
        let mut result = String::new();
        for _ in 0..runs {
            let started = Instant::now();
            let answer = api(port, path);
            client.push(started.elapsed().as_secs_f64() * 1000.0);
            server.push(answer["took_ms"].as_f64().unwrap());
            result = match answer.get("buckets") {
                Some(buckets) => format!("{} buckets", buckets.as_array().unwrap().len()),
                None => format!("{} lines", answer["total"]),
            };
        }
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {result} |",
            percentile(&mut server, 50.0),
            percentile(&mut server, 99.0),
            percentile(&mut client, 50.0)
        );
    }
    drop(process);

    // raw tantivy, same run
    let raw_dir = dir.path().join("raw");
    std::fs::create_dir_all(&raw_dir).unwrap();
    let (raw_time, raw_index_bytes) = raw_tantivy(&raw_dir, total);
    let raw_rate = total as f64 / raw_time.as_secs_f64();
    println!(
        "raw tantivy: {:.2} s, {raw_rate:.0} lines/s, {:.1} MB/s of messages, index {:.1} MB",
        raw_time.as_secs_f64(),
        message_bytes as f64 / 1e6 / raw_time.as_secs_f64(),
        raw_index_bytes as f64 / 1e6
    );
    println!("pipeline / raw tantivy throughput: {:.2}", rate / raw_rate);
}
