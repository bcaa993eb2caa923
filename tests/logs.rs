//! End-to-end tests of the log pipeline: a real pod's stdout and stderr searchable within
//! 2 s by word, pod, namespace, label and level, and still after the pod is gone; `kelson
//! logpipe` killed with SIGKILL in the middle of a 100 000-line burst with a rotation, then
//! restarted: every line present exactly once; junk input counted without stopping anything;
//! a full index disk buffering until space returns.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use kelson_testing::git::{get, post};
use kelson_testing::{ChildGuard, KelsonProcess, Kubectl, RuntimeCleanup};

const KELSON: &str = env!("CARGO_BIN_EXE_kelson");

fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// `GET /api/v1/search` with `params`; the JSON answer.
fn search(address: &str, params: &[(&str, &str)]) -> serde_json::Value {
    let port: u16 = address.rsplit(':').next().unwrap().parse().unwrap();
    let query: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    let (status, body) = get(port, &format!("/api/v1/search?{}", query.join("&")));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn total(address: &str, params: &[(&str, &str)]) -> u64 {
    search(address, params)["total"].as_u64().unwrap()
}

fn metrics(address: &str) -> String {
    let port: u16 = address.rsplit(':').next().unwrap().parse().unwrap();
    get(port, "/metrics").1
}

/// The value of the first sample of `metrics` whose line starts with `prefix`.
fn sample(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// `kelson logs ARGS`: its output, after checking it succeeded.
fn kelson_logs(args: &[&str]) -> String {
    let out = std::process::Command::new(KELSON)
        .arg("logs")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kelson logs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn now_ns() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    )
    .unwrap()
}

#[test]
fn pod_logs_are_searchable_within_two_seconds_and_outlive_the_pod() {
    let node = format!("e2e-logs-{}", std::process::id());
    let _cleanup = RuntimeCleanup::new(&node);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    std::fs::create_dir_all(&data).unwrap();
    let node_arg = format!("--node-name={node}");
    let server = KelsonProcess::server(Path::new(KELSON), &data, &[&node_arg]).unwrap();
    let kubectl = Kubectl::new(33, &server.kubeconfig());
    let logs = server.logs_address();
    let marker = format!("m{}", std::process::id());
    let script = format!(
        "i=0; while :; do echo \"tick $i {marker} level=info\"; echo \"oops $i {marker} level=error\" >&2; i=$((i+1)); sleep 0.2; done"
    );
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "chatty", "namespace": "default", "labels": {"app": "chatty", "tier": "back"}},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "talker", "image": "busybox:1.35", "command": ["sh", "-c", script]}]},
    });
    kubectl.ok_with(&["apply", "-f", "-"], Some(&pod.to_string()));

    // freshness: how long after containerd wrote a line it is found
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut lags = Vec::new();
    let mut newest_seen = 0;
    while lags.len() < 10 {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(data.with_extension("log")).unwrap_or_default();
            let pods = kubectl.ok(&["get", "pods", "-o", "wide"]);
            panic!(
                "no lines indexed: {}\n{pods}\n{}",
                metrics(&logs),
                &log[log.len().saturating_sub(4000)..]
            );
        }
        let found = search(&logs, &[("query", &marker), ("limit", "1")]);
        if let Some(hit) = found["hits"].as_array().and_then(|h| h.first()) {
            let written = hit["timestamp_ns"].as_i64().unwrap();
            if written > newest_seen {
                newest_seen = written;
                lags.push(now_ns() - written);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    lags.sort_unstable();
    let worst = lags[lags.len() - 1] as f64 / 1e9;
    println!(
        "seconds from write to searchable: median {:.2}, worst {worst:.2}",
        lags[lags.len() / 2] as f64 / 1e9
    );
    // a line found within 0.1 s of polling was searchable at most ~0.1 s earlier
    assert!(worst < 2.0, "lines took {worst:.2} s to become searchable");

    let hits = search(
        &logs,
        &[("query", &format!("tick {marker}")), ("limit", "5")],
    );
    let hit = &hits["hits"][0];
    assert_eq!(hit["namespace"], "default", "{hit}");
    assert_eq!(hit["pod"], "chatty");
    assert_eq!(hit["container"], "talker");
    assert_eq!(hit["node"], node.as_str());
    assert_eq!(hit["stream"], "stdout");
    assert_eq!(hit["level"], "info");
    assert!(
        hit["message"].as_str().unwrap().starts_with("tick "),
        "{hit}"
    );
    // labels arrive from the pod watch (the first lines may predate it)
    let deadline = Instant::now() + Duration::from_secs(10);
    while total(&logs, &[("selector", "app=chatty,tier=back")]) == 0 {
        assert!(
            Instant::now() < deadline,
            "no line carries the pod's labels"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        total(
            &logs,
            &[
                ("query", &marker),
                ("namespace", "default"),
                ("pod", "chatty")
            ]
        ) > 0
    );
    assert_eq!(total(&logs, &[("query", &marker), ("pod", "other")]), 0);
    assert_eq!(
        total(&logs, &[("query", &marker), ("namespace", "kube-system")]),
        0
    );
    let errors = search(
        &logs,
        &[("query", &marker), ("level", "error"), ("limit", "3")],
    );
    assert!(errors["total"].as_u64().unwrap() > 0);
    for hit in errors["hits"].as_array().unwrap() {
        assert_eq!(hit["stream"], "stderr", "{hit}");
        assert!(
            hit["message"].as_str().unwrap().starts_with("oops"),
            "{hit}"
        );
    }
    // the CLI, as an SRE types it
    let url = format!("http://{logs}");
    let oops = format!("oops AND {marker}");
    let text = kelson_logs(&[
        "search",
        &oops,
        "-n",
        "default",
        "--pod",
        "chatty",
        "-l",
        "app=chatty",
        "--since",
        "5m",
        "--limit",
        "3",
        "--url",
        &url,
    ]);
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(
        text.lines()
            .all(|l| l.contains(" default/chatty/talker oops ")),
        "{text}"
    );
    let out = std::process::Command::new(KELSON)
        .args(["logs", "search", "AND (", "--url"])
        .arg(format!("http://{logs}"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid query"));

    // the whole cluster through the API server (every node's index, merged), and one node
    // through its kubelet, as kubectl reaches them
    let kubeconfig = server.kubeconfig();
    let tick = format!("tick AND {marker}");
    let text = kelson_logs(&[
        "search",
        &tick,
        "-n",
        "default",
        "--limit",
        "2",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
    ]);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.lines()
            .all(|l| l.contains(" default/chatty/talker tick ")),
        "{text}"
    );
    // errors per minute, as an SRE asks
    let counted = kelson_logs(&[
        "count",
        &marker,
        "--level",
        "error",
        "--interval",
        "1m",
        "--since",
        "10m",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
    ]);
    let counted_total: u64 = counted
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("total "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(counted_total > 0, "{counted}");
    let merged: serde_json::Value = serde_json::from_str(&kubectl.ok(&[
        "get",
        "--raw",
        &format!("/kelson/v1/logs/histogram?query={marker}&level=error&interval=1m"),
    ]))
    .unwrap();
    assert_eq!(merged["nodes"], serde_json::json!([node]), "{merged}");
    assert!(
        merged["buckets"][0]["count"].as_u64().unwrap() > 0,
        "{merged}"
    );
    let one: serde_json::Value = serde_json::from_str(&kubectl.ok(&[
        "get",
        "--raw",
        &format!("/api/v1/nodes/{node}/proxy/logs/api/v1/search?query={marker}&limit=1"),
    ]))
    .unwrap();
    assert_eq!(one["hits"][0]["pod"], "chatty", "{one}");
    let refused = kubectl.fails(
        &["get", "--raw", "/kelson/v1/logs/search?query=AND%20("],
        None,
    );
    assert!(refused.contains("invalid query"), "{refused}");

    // the cluster's Events are records too (the server's node pipeline watches them)
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events = search(
            &logs,
            &[
                ("query", "Started"),
                ("pod", "chatty"),
                ("fields", "kind=Pod"),
            ],
        );
        if let Some(hit) = events["hits"].as_array().and_then(|h| h.first()) {
            assert_eq!(hit["tag"], "kube.events", "{hit}");
            assert_eq!(hit["namespace"], "default");
            assert_eq!(hit["fields"]["reason"], "Started", "{hit}");
            break;
        }
        assert!(Instant::now() < deadline, "no Started event indexed");
        std::thread::sleep(Duration::from_millis(300));
    }

    // deleting the pod (and its log files) keeps its lines
    let before = total(&logs, &[("query", &marker)]);
    kubectl.ok(&["delete", "pod", "chatty", "--wait=true", "--timeout=60s"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir("/var/log/pods")
        .unwrap()
        .flatten()
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("default_chatty_")
        })
    {
        assert!(Instant::now() < deadline, "the pod's log directory stayed");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let after = total(&logs, &[("query", &marker)]);
    assert!(
        after >= before,
        "{after} lines after deletion, {before} before"
    );
    assert!(total(&logs, &[("query", &marker), ("pod", "chatty")]) > 0);
    let page = get(
        logs.rsplit(':').next().unwrap().parse().unwrap(),
        "/api/v1/search?colour=red",
    );
    assert_eq!(page.0, 400, "{}", page.1);
}

fn pipeline_config(dir: &Path, extra_sink: &str) -> std::path::PathBuf {
    let config = dir.join("pipeline.yaml");
    std::fs::write(
        &config,
        format!(
            "sources:\n  app:\n    type: tail\n    include: ['{}/logs/*.log']\n    poll_interval_ms: 20\n    scan_interval_ms: 200\n    rotate_wait_ms: 1000\n    max_line_bytes: 2000000\nsinks:\n  index:\n    type: index\n    path: {}\n    commit_interval_ms: 200\n{extra_sink}",
            dir.display(),
            dir.join("index").display()
        ),
    )
    .unwrap();
    config
}

fn start_logpipe(dir: &Path, config: &Path) -> (ChildGuard, String) {
    let address_file = dir.join("data/address");
    let _ = std::fs::remove_file(&address_file);
    let child = ChildGuard::spawn(
        KELSON,
        &[
            "logpipe",
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            dir.join("data").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--node-name",
            "n1",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(address) = std::fs::read_to_string(&address_file)
            && !address.is_empty()
        {
            return (child, address);
        }
        assert!(Instant::now() < deadline, "kelson logpipe did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_total(address: &str, params: &[(&str, &str)], want: u64, seconds: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let found = total(address, params);
        if found >= want || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn kill_9_during_a_burst_with_a_rotation_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("logs")).unwrap();
    let config = pipeline_config(dir.path(), "");
    let (mut pipeline, address) = start_logpipe(dir.path(), &config);
    const LINES: usize = 100_000;
    let path = dir.path().join("logs/app.log");
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let written = written.clone();
        std::thread::spawn(move || {
            let mut file = std::fs::File::create(&path).unwrap();
            for n in 0..LINES {
                if n == LINES * 6 / 10 {
                    // rotate: rename, then carry on in a new file
                    std::fs::rename(&path, path.with_extension("log.1")).unwrap();
                    file = std::fs::File::create(&path).unwrap();
                }
                writeln!(
                    file,
                    "2026-11-23T06:00:00.{n:09}Z stdout F request {n} bkt{} done",
                    n / 1000
                )
                .unwrap();
                if n % 1000 == 0 {
                    written.store(n, std::sync::atomic::Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        })
    };
    // kill -9 while lines are still coming
    let deadline = Instant::now() + Duration::from_secs(60);
    while total(&address, &[]) < 20_000 {
        assert!(Instant::now() < deadline, "nothing indexed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let at_kill = total(&address, &[]);
    let _ = pipeline.0.kill();
    let written_at_kill = written.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        written_at_kill < LINES - 1000,
        "the burst was over before the kill"
    );
    let _ = pipeline.0.wait();
    writer.join().unwrap();
    let (_pipeline, address) = start_logpipe(dir.path(), &config);
    let found = wait_total(&address, &[], LINES as u64, 120);
    println!(
        "{written_at_kill} lines written and {at_kill} indexed at SIGKILL; {found} after the restart"
    );
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        total(&address, &[]),
        LINES as u64,
        "every line exactly once"
    );
    for bucket in 0..LINES / 1000 {
        assert_eq!(
            total(&address, &[("query", &format!("bkt{bucket}"))]),
            1000,
            "lines of bucket {bucket}"
        );
    }
    let metrics = metrics(&address);
    assert!(
        sample(&metrics, "logpipe_index_documents") >= LINES as f64,
        "{metrics}"
    );
}

#[test]
fn junk_input_is_counted_and_does_not_stop_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("logs")).unwrap();
    let config = pipeline_config(dir.path(), "");
    let (_pipeline, address) = start_logpipe(dir.path(), &config);
    let mut file = std::fs::File::create(dir.path().join("logs/junk.log")).unwrap();
    file.write_all(b"\x00\x01\x02\xff\xfe binary junk\n")
        .unwrap();
    file.write_all(b"2026-11-23T06:00:00Z stdout F invalid \xc3\x28 utf8\n")
        .unwrap();
    file.write_all(b"2026-11-23T06:00:01Z stdout F ").unwrap();
    file.write_all(&vec![b'x'; 1_000_000]).unwrap();
    file.write_all(b" megaline\n").unwrap();
    file.write_all(b"2026-11-23T06:00:02Z stdout F ").unwrap();
    file.write_all(&vec![b'y'; 3_000_000]).unwrap();
    file.write_all(b"\n").unwrap();
    file.write_all(b"2026-11-23T06:00:03Z stdout F after the junk\n")
        .unwrap();
    file.flush().unwrap();
    assert_eq!(
        wait_total(&address, &[("query", "after")], 1, 30),
        1,
        "{}",
        metrics(&address)
    );
    assert_eq!(total(&address, &[("query", "binary")]), 1);
    assert_eq!(total(&address, &[("query", "utf8")]), 1);
    // the 1 MB line is kept whole, the 3 MB one cut at max_line_bytes
    assert_eq!(total(&address, &[("query", "megaline")]), 1);
    assert_eq!(total(&address, &[]), 5);
    let metrics = metrics(&address);
    assert_eq!(
        sample(
            &metrics,
            r#"logpipe_component_errors_total{component_id="app",component_type="tail",error_type="parse_failed"}"#
        ),
        1.0,
        "{metrics}"
    );
    assert!(
        sample(
            &metrics,
            r#"logpipe_component_errors_total{component_id="app",component_type="tail",error_type="line_too_long"}"#
        ) >= 1.0,
        "{metrics}"
    );
}

#[test]
fn a_full_index_disk_buffers_until_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("logs")).unwrap();
    let index = dir.path().join("index");
    std::fs::create_dir_all(&index).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=600k", "tmpfs"])
        .arg(&index)
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a tmpfs needs root");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(index.clone());
    // a second sink beside the index: it must get each line once, rewinds or not
    let copy = dir.path().join("copy.jsonl");
    let config = pipeline_config(
        dir.path(),
        &format!("  copy:\n    type: file\n    path: {}\n", copy.display()),
    );
    let (_pipeline, address) = start_logpipe(dir.path(), &config);
    let mut file = std::fs::File::create(dir.path().join("logs/app.log")).unwrap();
    for n in 0..30_000 {
        writeln!(
            file,
            "2026-11-23T06:00:00.{n:09}Z stdout F payload {n} {}",
            "abcdefgh".repeat(8)
        )
        .unwrap();
    }
    file.flush().unwrap();
    let errors = r#"logpipe_component_errors_total{component_id="index",component_type="index",error_type="write_failed"}"#;
    let deadline = Instant::now() + Duration::from_secs(60);
    while sample(&metrics(&address), errors) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "a full disk was not reported: {}",
            metrics(&address)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let during = total(&address, &[]);
    assert!(during < 30_000, "{during} lines fit in 600 KiB?");
    // while the disk is full the file is rotated out of the pattern and, once let go of,
    // deleted: what the index had not committed of it is still read again
    std::fs::rename(
        dir.path().join("logs/app.log"),
        dir.path().join("logs/app.log.1"),
    )
    .unwrap();
    let mut file = std::fs::File::create(dir.path().join("logs/app.log")).unwrap();
    for n in 30_000..35_000 {
        writeln!(
            file,
            "2026-11-23T06:00:01.{n:09}Z stdout F payload {n} {}",
            "abcdefgh".repeat(8)
        )
        .unwrap();
    }
    file.flush().unwrap();
    // rotate_wait_ms is 1 s, the scan 0.2 s
    std::thread::sleep(Duration::from_millis(2500));
    std::fs::remove_file(dir.path().join("logs/app.log.1")).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=200m"])
        .arg(&index)
        .status()
        .unwrap();
    assert!(grown.success());
    let found = wait_total(&address, &[], 35_000, 60);
    println!("{during} lines searchable while the disk was full, {found} once it had room");
    assert_eq!(found, 35_000);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(total(&address, &[]), 35_000);
    let rewinds = sample(
        &metrics(&address),
        r#"logpipe_component_errors_total{component_id="index",component_type="index",error_type="write_failed"}"#,
    );
    // the copy has every line once
    let copied = std::fs::read_to_string(&copy).unwrap();
    let mut seen = std::collections::HashSet::new();
    for line in copied.lines() {
        let n = line
            .split("payload ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .unwrap_or_else(|| panic!("{line}"))
            .to_owned();
        assert!(seen.insert(n), "line repeated in the copy: {line}");
    }
    assert_eq!(seen.len(), 35_000, "after {rewinds} failed writes");
}

#[test]
fn fluent_logger_and_logger_deliver_over_forward_and_syslog() {
    let dir = tempfile::tempdir().unwrap();
    let (forward, udp, tcp) = (
        kelson_testing::git::free_port(),
        kelson_testing::git::free_port(),
        kelson_testing::git::free_port(),
    );
    let config = dir.path().join("pipeline.yaml");
    std::fs::write(
        &config,
        format!(
            "sources:\n  fluent:\n    type: forward\n    listen: 127.0.0.1:{forward}\n  syslog:\n    type: syslog\n    listen: 127.0.0.1:{udp}\n  syslog-tcp:\n    type: syslog\n    mode: tcp\n    listen: 127.0.0.1:{tcp}\nsinks:\n  index:\n    type: index\n    path: {}\n    commit_interval_ms: 200\n",
            dir.path().join("index").display()
        ),
    )
    .unwrap();
    let (_pipeline, address) = start_logpipe(dir.path(), &config);

    // the Python fluent-logger (Debian's python3-fluent-logger), Message mode
    let script = format!(
        r#"
import time
from fluent import sender
plain = sender.FluentSender('app', host='127.0.0.1', port={forward})
assert plain.emit('web', {{'message': 'hello from fluent-logger', 'user': 'alice'}}), plain.last_error
assert plain.emit_with_time('web', int(time.time()), {{'log': 'second line', 'level': 'error'}}), plain.last_error
plain.close()
precise = sender.FluentSender('app', host='127.0.0.1', port={forward}, nanosecond_precision=True)
assert precise.emit('api', {{'msg': 'nanosecond event'}}), precise.last_error
precise.close()
"#
    );
    let out = std::process::Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // util-linux logger: RFC 5424 over UDP, RFC 3164 over UDP, octet-counted RFC 5424 over TCP
    let logger = |args: &[&str]| {
        let status = std::process::Command::new("logger")
            .args(["--server", "127.0.0.1"])
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "logger {args:?}");
    };
    let (udp_port, tcp_port) = (udp.to_string(), tcp.to_string());
    logger(&[
        "--port",
        &udp_port,
        "--udp",
        "--rfc5424",
        "-t",
        "backup",
        "-p",
        "local3.err",
        "disk failing on sdb",
    ]);
    logger(&[
        "--port",
        &udp_port,
        "--udp",
        "--rfc3164",
        "-t",
        "cron",
        "-p",
        "cron.info",
        "job started",
    ]);
    logger(&[
        "--port",
        &tcp_port,
        "--tcp",
        "--octet-count",
        "-t",
        "audit",
        "-p",
        "auth.warning",
        "over tcp",
    ]);

    assert_eq!(wait_total(&address, &[], 6, 30), 6, "{}", metrics(&address));
    let hit = &search(&address, &[("query", "fluent-logger")])["hits"][0];
    assert_eq!(hit["tag"], "app.web", "{hit}");
    assert_eq!(hit["fields"]["user"], "alice");
    let hit = &search(&address, &[("query", "second")])["hits"][0];
    assert_eq!(hit["level"], "error", "{hit}");
    assert_eq!(total(&address, &[("query", "nanosecond")]), 1);
    let hit = &search(&address, &[("query", "disk failing")])["hits"][0];
    assert_eq!(hit["tag"], "syslog.local3.err", "{hit}");
    assert_eq!(hit["level"], "error");
    assert_eq!(hit["fields"]["ident"], "backup");
    let hit = &search(&address, &[("query", "job started")])["hits"][0];
    assert_eq!(hit["tag"], "syslog.cron.info", "{hit}");
    assert_eq!(hit["fields"]["ident"], "cron");
    let hit = &search(&address, &[("fields", "ident=audit")])["hits"][0];
    assert_eq!(hit["message"], "over tcp", "{hit}");
    assert_eq!(hit["level"], "warn");
}

#[test]
fn a_query_through_the_api_server_covers_every_node() {
    // node A: the server's own agent, on this machine's /var/log/pods; node B: a joined agent
    // whose pipeline tails a directory of its own (both share this machine)
    let (node_a, node_b) = (
        format!("e2e-logs-a-{}", std::process::id()),
        format!("e2e-logs-b-{}", std::process::id()),
    );
    let _cleanup = (RuntimeCleanup::new(&node_a), RuntimeCleanup::new(&node_b));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    std::fs::create_dir_all(&data).unwrap();
    let node_arg = format!("--node-name={node_a}");
    let server = KelsonProcess::server(Path::new(KELSON), &data, &[&node_arg]).unwrap();
    let kubectl = Kubectl::new(33, &server.kubeconfig());
    let marker = format!("fan{}", std::process::id());
    std::fs::create_dir_all(dir.path().join("b-logs")).unwrap();
    let config = dir.path().join("b.yaml");
    std::fs::write(
        &config,
        format!(
            "sources:\n  app:\n    type: tail\n    include: ['{}/b-logs/*.log']\n    format: raw\n    tag: app\nsinks:\n  index:\n    type: index\n    commit_interval_ms: 200\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let token = std::fs::read_to_string(data.join("node-token")).unwrap();
    let _agent = ChildGuard(
        std::process::Command::new(KELSON)
            .args(["agent", "--server", &server.url, "--token", token.trim()])
            .arg(format!("--node-name={node_b}"))
            .args(["--kubelet-port=0", "--node-exporter-listen=127.0.0.1:0"])
            .args([
                "--logs-listen=127.0.0.1:0",
                "--disable-proxy",
                "--logpipe-config",
            ])
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path().join("agent-b"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("agent-b.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    std::fs::write(
        dir.path().join("b-logs/app.log"),
        format!("{marker} from node b\n{marker} again from node b\n"),
    )
    .unwrap();
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "speaker", "namespace": "default"},
        "spec": {"nodeName": node_a, "terminationGracePeriodSeconds": 1, "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox:1.35",
                "command": ["sh", "-c", format!("echo '{marker} from node a'; sleep 3600")]}]},
    });
    kubectl.ok_with(&["apply", "-f", "-"], Some(&pod.to_string()));

    let deadline = Instant::now() + Duration::from_secs(90);
    let found = loop {
        let out = std::process::Command::new(KELSON)
            .args(["logs", "search", &marker, "-o", "json", "--kubeconfig"])
            .arg(server.kubeconfig())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.lines().count() == 3 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "not every node's lines: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let hits: Vec<serde_json::Value> = found
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let nodes: std::collections::BTreeSet<&str> =
        hits.iter().map(|h| h["node"].as_str().unwrap()).collect();
    assert_eq!(nodes, [node_a.as_str(), node_b.as_str()].into(), "{found}");
    // newest first across nodes
    assert!(
        hits.windows(2)
            .all(|w| w[0]["timestamp_ns"].as_i64() >= w[1]["timestamp_ns"].as_i64()),
        "{found}"
    );
    let merged: serde_json::Value = serde_json::from_str(&kubectl.ok(&[
        "get",
        "--raw",
        &format!("/kelson/v1/logs/search?query={marker}&limit=1&offset=1"),
    ]))
    .unwrap();
    assert_eq!(merged["total"], 3, "{merged}");
    assert_eq!(merged["hits"].as_array().unwrap().len(), 1, "{merged}");
    assert_eq!(merged["hits"][0], hits[1], "{merged}");

    // reading logs needs `get pods/log`: a user granted it in one namespace sees that
    // namespace's lines only, and is refused the rest
    kubectl.ok(&[
        "create",
        "rolebinding",
        "ann-view",
        "--clusterrole=view",
        "--user=ann",
        "-n",
        "default",
    ]);
    let search = format!("/kelson/v1/logs/search?query={marker}");
    let narrowed: serde_json::Value =
        serde_json::from_str(&kubectl.ok(&["get", "--raw", &search, "--as=ann"])).unwrap();
    assert_eq!(narrowed["total"], 1, "{narrowed}");
    assert_eq!(narrowed["hits"][0]["namespace"], "default", "{narrowed}");
    let refused = kubectl.fails(
        &[
            "get",
            "--raw",
            &format!("{search}&namespace=kube-system"),
            "--as=ann",
        ],
        None,
    );
    assert!(
        refused.contains(
            "cannot get resource \"pods/log\" in API group \"\" in the namespace \"kube-system\""
        ),
        "{refused}"
    );
    let refused = kubectl.fails(&["get", "--raw", &search, "--as=bob"], None);
    assert!(
        refused.contains("Forbidden") || refused.contains("forbidden"),
        "{refused}"
    );

    // a live tail through the API server follows every node as lines arrive
    let live = format!("{marker}live");
    let mut tail = ChildGuard(
        std::process::Command::new(KELSON)
            .args([
                "logs",
                "tail",
                &live,
                "--lines",
                "0",
                "-o",
                "json",
                "--kubeconfig",
            ])
            .arg(server.kubeconfig())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = tail.0.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    // the tail subscribes before it prints anything: give it a moment, then write
    std::thread::sleep(Duration::from_secs(2));
    let live_pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "live-speaker", "namespace": "default"},
        "spec": {"nodeName": node_a, "terminationGracePeriodSeconds": 1, "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox:1.35",
                "command": ["sh", "-c", format!("echo '{live} from node a'; sleep 3600")]}]},
    });
    kubectl.ok_with(&["apply", "-f", "-"], Some(&live_pod.to_string()));
    {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("b-logs/app.log"))
            .unwrap();
        writeln!(file, "{live} from node b").unwrap();
        writeln!(file, "unrelated line from node b").unwrap();
    }
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines_rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("the live tail showed only {seen:?}"));
        let hit: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(hit["message"].as_str().unwrap().contains(&live), "{line}");
        seen.insert(hit["node"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen, [node_a, node_b].into());
}

#[test]
fn http_input_and_transforms_parse_filter_and_enrich() {
    let dir = tempfile::tempdir().unwrap();
    let port = kelson_testing::git::free_port();
    let config = dir.path().join("pipeline.yaml");
    std::fs::write(
        &config,
        format!(
            r#"sources:
  api:
    type: http
    listen: 127.0.0.1:{port}
transforms:
  - name: json
    type: parser
    match: "app.**"
    format: json
    key: payload
    message_key: msg
  - name: quiet
    type: grep
    exclude: [{{key: message, regex_unused: 1}}]
sinks:
  index:
    type: index
    path: {}
    commit_interval_ms: 200
"#,
            dir.path().join("index").display()
        ),
    )
    .unwrap();
    // an unknown key is refused with its line, before anything starts
    let out = std::process::Command::new(KELSON)
        .args(["logpipe", "--check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(
        error.contains("pipeline.yaml:") && error.contains("regex_unused"),
        "{error}"
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(
            "[{key: message, regex_unused: 1}]",
            "[{key: message, pattern: 'GET /healthz'}]",
        )
        .replace(
            "sinks:",
            "  - name: env\n    type: record\n    set: {env: prod}\n    remove: [payload]\nsinks:",
        );
    std::fs::write(&config, text).unwrap();
    let (_pipeline, address) = start_logpipe(dir.path(), &config);

    let body = concat!(
        r#"{"payload": "{\"msg\":\"payment failed\",\"level\":\"error\",\"order\":42}"}"#,
        "\n",
        r#"{"message": "GET /healthz 200"}"#,
        "\n",
        r#"{"message": "plain line", "time": "2026-11-23T06:00:00Z", "user": "bob"}"#,
        "\n"
    );
    let (status, answer) = post(port, "/app/web", "application/json", body.as_bytes());
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains(r#""accepted":3"#), "{answer}");
    let (status, answer) = post(port, "/app/web", "application/json", b"{not json");
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("invalid JSON"), "{answer}");

    // answered only after the commit: searchable at once
    assert_eq!(total(&address, &[]), 2, "{}", metrics(&address));
    let hit = &search(&address, &[("query", "payment")])["hits"][0];
    assert_eq!(hit["message"], "payment failed", "{hit}");
    assert_eq!(hit["level"], "error");
    assert_eq!(hit["tag"], "app.web");
    assert_eq!(hit["fields"]["order"], "42");
    assert_eq!(hit["fields"]["env"], "prod");
    assert!(hit["fields"].get("payload").is_none(), "{hit}");
    let hit = &search(&address, &[("fields", "user=bob")])["hits"][0];
    assert_eq!(hit["timestamp"], "2026-11-23T06:00:00Z", "{hit}");
    let metrics = metrics(&address);
    assert_eq!(
        sample(
            &metrics,
            r#"logpipe_component_discarded_events_total{component_id="quiet",component_type="grep",reason="grep"}"#
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            r#"logpipe_component_errors_total{component_id="api",component_type="http",error_type="invalid_json"}"#
        ),
        1.0,
        "{metrics}"
    );

    // the file changed: the pipeline restarts with it (the HTTP input's port taken over)
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("set: {env: prod}", "set: {env: staging}");
    std::fs::write(&config, text).unwrap();
    kelson_testing::wait_for(Duration::from_secs(20), "the reload", || {
        self::metrics(&address)
            .contains("logpipe_config_reloads_total 1")
            .then_some(())
    });
    let line = r#"{"message": "after the reload"}"#;
    let (status, answer) = post(port, "/app/web", "application/json", line.as_bytes());
    assert_eq!(status, 200, "{answer}");
    let hit = &search(&address, &[("query", "reload")])["hits"][0];
    assert_eq!(hit["fields"]["env"], "staging", "{hit}");
    assert_eq!(
        total(&address, &[]),
        3,
        "the earlier lines are still there, once"
    );
    // a broken file is refused; the running pipeline carries on
    std::fs::write(&config, "sources: {api: {type: http, listen: nowhere}}\n").unwrap();
    kelson_testing::wait_for(Duration::from_secs(20), "the refusal", || {
        self::metrics(&address)
            .contains("logpipe_config_last_reload_successful 0")
            .then_some(())
    });
    let (status, answer) = post(port, "/app/web", "application/json", line.as_bytes());
    assert_eq!(status, 200, "{answer}");
    assert_eq!(total(&address, &[("query", "reload")]), 2);
}

#[test]
fn a_loki_client_library_pushes_to_the_loki_input() {
    let dir = tempfile::tempdir().unwrap();
    let port = kelson_testing::git::free_port();
    let config = dir.path().join("pipeline.yaml");
    std::fs::write(
        &config,
        format!(
            "sources:\n  loki:\n    type: loki\n    listen: 127.0.0.1:{port}\nsinks:\n  index:\n    type: index\n    path: {}\n    commit_interval_ms: 200\n",
            dir.path().join("index").display()
        ),
    )
    .unwrap();
    let (_pipeline, address) = start_logpipe(dir.path(), &config);
    // python-logging-loki (PyPI), as an application would use it
    let script = format!(
        r#"
import logging, logging_loki
handler = logging_loki.LokiHandler(url="http://127.0.0.1:{port}/loki/api/v1/push", tags={{"job": "checkout", "namespace": "shop"}}, version="1")
logger = logging.getLogger("checkout")
logger.addHandler(handler)
logger.error("card declined for order 77", extra={{"tags": {{"pod": "checkout-1"}}}})
logger.warning("slow payment gateway")
"#
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(wait_total(&address, &[], 2, 30), 2, "{}", metrics(&address));
    let hit = &search(&address, &[("query", "declined")])["hits"][0];
    assert_eq!(hit["tag"], "loki.checkout", "{hit}");
    assert_eq!(hit["namespace"], "shop");
    assert_eq!(hit["pod"], "checkout-1");
    assert_eq!(hit["level"], "error");
    assert_eq!(hit["fields"]["logger"], "checkout");
    let hit = &search(&address, &[("query", "gateway")])["hits"][0];
    assert_eq!(hit["level"], "warn", "{hit}");

    // and read back as Grafana's Loki data source asks
    let port: u16 = address.rsplit(':').next().unwrap().parse().unwrap();
    let logql = encode(r#"{namespace="shop", level=~"err.*"} |= "declined""#);
    let (status, body) = get(
        port,
        &format!("/loki/api/v1/query_range?query={logql}&limit=10"),
    );
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["status"], "success");
    assert_eq!(answer["data"]["resultType"], "streams");
    let stream = &answer["data"]["result"][0];
    assert_eq!(stream["stream"]["pod"], "checkout-1", "{answer}");
    assert_eq!(stream["values"][0][1], "card declined for order 77");
    let volume = encode(r#"sum by (level) (count_over_time({namespace="shop"}[1m]))"#);
    let (status, body) = get(
        port,
        &format!("/loki/api/v1/query_range?query={volume}&step=60"),
    );
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["data"]["resultType"], "matrix", "{answer}");
    assert_eq!(
        answer["data"]["result"].as_array().unwrap().len(),
        2,
        "{answer}"
    );
    let (_, body) = get(port, "/loki/api/v1/label/pod/values");
    assert!(body.contains("checkout-1"), "{body}");
    let (status, body) = get(
        port,
        &format!(
            "/loki/api/v1/query_range?query={}",
            encode("{pod=\"x\"} | json")
        ),
    );
    assert_eq!(status, 400);
    assert!(body.starts_with("parse error"), "{body}");
}
