//! Behaviour of the whole pipeline on files written by the tests: tail → index → query.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::PipelineConfig;
use crate::index::query::SearchRequest;
use crate::{Environment, Pipeline, start};

fn config(dir: &Path) -> PipelineConfig {
    let text = format!(
        "sources:\n  pods:\n    type: tail\n    include: ['{}/pods/*/*/*.log']\n    kubernetes: true\n    poll_interval_ms: 20\n    scan_interval_ms: 100\n    rotate_wait_ms: 300\nsinks:\n  index:\n    type: index\n    path: {}/index\n    commit_interval_ms: 100\n    writer_threads: 1\n    writer_memory_mib: 16\n",
        dir.display(),
        dir.display()
    );
    PipelineConfig::parse(&text, "test").unwrap()
}

fn log_file(dir: &Path) -> PathBuf {
    let path = dir.join("pods/shop_web-1_uid-1/nginx/0.log");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    path
}

fn append(path: &Path, lines: &[String]) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for line in lines {
        writeln!(file, "{line}").unwrap();
    }
}

fn cri(n: usize, text: &str) -> String {
    format!("2026-11-23T05:00:{:02}.{n:09}Z stdout F {text}", n % 60)
}

async fn run(dir: &Path) -> (Pipeline, CancellationToken) {
    let shutdown = CancellationToken::new();
    let environment = Environment {
        data_dir: dir.to_path_buf(),
        node: "node-a".into(),
        ..Environment::default()
    };
    let pipeline = start(config(dir), environment, shutdown.clone())
        .await
        .unwrap();
    (pipeline, shutdown)
}

/// A free TCP port on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A pipeline receiving with a `kind` source on `port` into an index under `root/central`.
fn receiver_config(root: &Path, kind: &str, port: u16) -> String {
    format!(
        "sources:\n  input:\n    type: {kind}\n    listen: 127.0.0.1:{port}\nsinks:\n  index:\n    type: index\n    path: {}/central\n    commit_interval_ms: 100\n    writer_threads: 1\n    writer_memory_mib: 16\n",
        root.display()
    )
}

/// Starts the pipeline configured by `text`, with no node name and no cluster.
async fn start_text(text: &str) -> (Pipeline, CancellationToken) {
    let config = PipelineConfig::parse(text, "test").unwrap();
    let shutdown = CancellationToken::new();
    let pipeline = start(config, Environment::default(), shutdown.clone())
        .await
        .unwrap();
    (pipeline, shutdown)
}

fn request(query: &str) -> SearchRequest {
    SearchRequest {
        query: query.into(),
        limit: 10_000,
        ..SearchRequest::default()
    }
}

/// Waits until `query` finds `count` lines; returns what it last found.
async fn wait_for(pipeline: &Pipeline, query: &str, count: u64) -> u64 {
    let index = pipeline.index.clone().unwrap();
    let mut found = 0;
    for _ in 0..200 {
        found = index.search(&request(query)).unwrap().total;
        if found >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    found
}

#[tokio::test]
async fn lines_are_searchable_with_their_pod() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_file(dir.path());
    append(
        &path,
        &[
            cri(1, "GET /index.html 200"),
            "2026-11-23T05:00:02.000000000Z stderr P first half, ".into(),
            "2026-11-23T05:00:02.100000000Z stderr F second half level=error".into(),
            "binary junk \u{1}\u{2}".into(),
        ],
    );
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"2026-11-23T05:00:03Z stdout F bad \xff utf8\n")
        .unwrap();
    let (pipeline, shutdown) = run(dir.path()).await;
    assert_eq!(wait_for(&pipeline, "", 4).await, 4);
    let index = pipeline.index.clone().unwrap();
    let hits = index.search(&request("half")).unwrap().hits;
    assert_eq!(hits.len(), 1, "partial lines are joined into one record");
    let hit = &hits[0];
    assert_eq!(hit.message, "first half, second half level=error");
    assert_eq!(
        (
            hit.namespace.as_str(),
            hit.pod.as_str(),
            hit.container.as_str()
        ),
        ("shop", "web-1", "nginx")
    );
    assert_eq!(
        (hit.stream.as_str(), hit.level.as_str()),
        ("stderr", "error")
    );
    assert_eq!(hit.node, "node-a");
    assert_eq!(hit.tag, "kube.shop.web-1.nginx");
    assert_eq!(hit.timestamp, "2026-11-23T05:00:02Z");
    let mut filtered = request("");
    filtered.filters = vec![("level".into(), "error".into())];
    assert_eq!(index.search(&filtered).unwrap().total, 1);
    filtered.filters = vec![("pod".into(), "web-2".into())];
    assert_eq!(index.search(&filtered).unwrap().total, 0);
    // `namespaces`: any of them (how the API server narrows a user's query)
    let everything = index.search(&request("")).unwrap().total;
    let narrowed = |list: &str| {
        let mut params = vec![("namespaces".to_owned(), list.to_owned())];
        params.push(("query".to_owned(), String::new()));
        let request = crate::api::request_from_params(&params).unwrap();
        index.search(&request).unwrap().total
    };
    let in_shop = narrowed("shop");
    assert!(in_shop > 0);
    assert_eq!(narrowed("elsewhere,shop"), in_shop);
    assert_eq!(narrowed("elsewhere"), 0);
    assert_eq!(narrowed(""), 0, "no namespace granted: no line");
    assert!(in_shop <= everything);
    assert_eq!(index.search(&request("junk")).unwrap().total, 1);
    assert_eq!(
        index.search(&request("utf8")).unwrap().hits[0].message,
        "bad \u{fffd} utf8"
    );
    assert_eq!(index.search(&request("level:error")).unwrap().total, 1);
    assert!(index.search(&request("AND (")).is_err());
    // newest first
    let all = index.search(&request("")).unwrap().hits;
    assert!(
        all.windows(2)
            .all(|w| w[0].timestamp_ns >= w[1].timestamp_ns)
    );
    // a histogram per second
    let buckets = index.histogram(&request(""), 1_000_000_000).unwrap();
    assert_eq!(buckets.values().sum::<u64>(), 4);
    let metrics = pipeline.metrics.render();
    assert!(
        metrics.contains(r#"logpipe_component_errors_total{component_id="pods",component_type="tail",error_type="parse_failed"} 1"#),
        "{metrics}"
    );
    shutdown.cancel();
    pipeline.wait().await;
}

#[tokio::test]
async fn a_restart_neither_loses_nor_repeats_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_file(dir.path());
    append(
        &path,
        &(0..1000)
            .map(|n| cri(n, &format!("line{n}")))
            .collect::<Vec<_>>(),
    );
    let (pipeline, shutdown) = run(dir.path()).await;
    assert_eq!(wait_for(&pipeline, "", 1000).await, 1000);
    shutdown.cancel();
    pipeline.wait().await;
    append(
        &path,
        &(1000..1500)
            .map(|n| cri(n, &format!("line{n}")))
            .collect::<Vec<_>>(),
    );
    let (pipeline, shutdown) = run(dir.path()).await;
    assert_eq!(wait_for(&pipeline, "", 1500).await, 1500);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let index = pipeline.index.clone().unwrap();
    assert_eq!(index.search(&request("")).unwrap().total, 1500);
    for n in [0, 999, 1000, 1499] {
        assert_eq!(
            index.search(&request(&format!("line{n}"))).unwrap().total,
            1,
            "line{n}"
        );
    }
    shutdown.cancel();
    pipeline.wait().await;
}

#[tokio::test]
async fn rotation_and_truncation_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_file(dir.path());
    let (pipeline, shutdown) = run(dir.path()).await;
    append(
        &path,
        &(0..100)
            .map(|n| cri(n, &format!("before{n}")))
            .collect::<Vec<_>>(),
    );
    assert_eq!(wait_for(&pipeline, "", 100).await, 100);
    // rotation by rename: lines written to the old file after the rename still count
    let rotated = path.with_extension("log.20261123-050000");
    std::fs::rename(&path, &rotated).unwrap();
    append(
        &rotated,
        &(100..150)
            .map(|n| cri(n, &format!("late{n}")))
            .collect::<Vec<_>>(),
    );
    append(
        &path,
        &(150..250)
            .map(|n| cri(n, &format!("after{n}")))
            .collect::<Vec<_>>(),
    );
    assert_eq!(wait_for(&pipeline, "", 250).await, 250);
    // copytruncate: the file starts over
    std::fs::write(&path, "").unwrap();
    append(
        &path,
        &(250..260)
            .map(|n| cri(n, &format!("truncated{n}")))
            .collect::<Vec<_>>(),
    );
    assert_eq!(wait_for(&pipeline, "", 260).await, 260);
    let index = pipeline.index.clone().unwrap();
    assert_eq!(index.search(&request("late149")).unwrap().total, 1);
    assert_eq!(index.search(&request("truncated259")).unwrap().total, 1);
    // the rotated file is let go once deleted and read
    std::fs::remove_file(&rotated).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(index.search(&request("")).unwrap().total, 260);
    shutdown.cancel();
    pipeline.wait().await;
}

mod network {
    use std::io::{Read, Write};

    use rmpv::Value;

    use super::*;

    fn event_time(seconds: u32, nanos: u32) -> Value {
        let mut bytes = seconds.to_be_bytes().to_vec();
        bytes.extend_from_slice(&nanos.to_be_bytes());
        Value::Ext(0, bytes)
    }

    fn record(message: &str) -> Value {
        Value::Map(vec![
            (Value::from("message"), Value::from(message)),
            (Value::from("host"), Value::from("web-1")),
            (Value::from("level"), Value::from("WARNING")),
        ])
    }

    fn encode(value: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, value).unwrap();
        out
    }

    fn option(chunk: &str, compressed: bool) -> Value {
        let mut entries = vec![(Value::from("chunk"), Value::from(chunk))];
        if compressed {
            entries.push((Value::from("compressed"), Value::from("gzip")));
        }
        Value::Map(entries)
    }

    async fn start_network(dir: &Path) -> (Pipeline, CancellationToken) {
        let text = format!(
            "sources:\n  fwd:\n    type: forward\n    listen: 127.0.0.1:0\n  sysu:\n    type: syslog\n    listen: 127.0.0.1:0\n  syst:\n    type: syslog\n    mode: tcp\n    listen: 127.0.0.1:0\nsinks:\n  index:\n    type: index\n    path: {}/index\n    commit_interval_ms: 100\n    writer_threads: 1\n    writer_memory_mib: 16\n",
            dir.display()
        );
        let config = PipelineConfig::parse(&text, "test").unwrap();
        let shutdown = CancellationToken::new();
        let environment = Environment {
            data_dir: dir.to_path_buf(),
            node: "node-a".into(),
            ..Environment::default()
        };
        (
            start(config, environment, shutdown.clone()).await.unwrap(),
            shutdown,
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forward_modes_acks_and_broken_msgpack() {
        let dir = tempfile::tempdir().unwrap();
        let (pipeline, shutdown) = start_network(dir.path()).await;
        let address = pipeline.listening["fwd"];
        let sent = tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(address).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            // Message mode, EventTime, no ack
            let message = Value::Array(vec![
                Value::from("app.web"),
                event_time(1_795_412_307, 5),
                record("message mode"),
            ]);
            stream.write_all(&encode(&message)).unwrap();
            // Forward mode with an ack, Fluent Bit's [time, metadata] and an integer time
            let forward = Value::Array(vec![
                Value::from("app.web"),
                Value::Array(vec![
                    Value::Array(vec![
                        Value::Array(vec![event_time(1_795_412_308, 0), Value::Map(vec![])]),
                        record("forward one"),
                    ]),
                    Value::Array(vec![Value::from(1_795_412_309), record("forward two")]),
                ]),
                option("Y2h1bmsx", false),
            ]);
            stream.write_all(&encode(&forward)).unwrap();
            // PackedForward, entries as bin, split across writes
            let mut entries = Vec::new();
            for n in 0..3 {
                entries.extend(encode(&Value::Array(vec![
                    event_time(1_795_412_310, n),
                    record(&format!("packed {n}")),
                ])));
            }
            let packed = encode(&Value::Array(vec![
                Value::from("app.batch"),
                Value::Binary(entries.clone()),
                option("Y2h1bmsy", false),
            ]));
            let (head, tail) = packed.split_at(packed.len() / 2);
            stream.write_all(head).unwrap();
            stream.flush().unwrap();
            std::thread::sleep(Duration::from_millis(50));
            stream.write_all(tail).unwrap();
            // CompressedPackedForward
            let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gzip.write_all(&entries).unwrap();
            let compressed = encode(&Value::Array(vec![
                Value::from("app.zipped"),
                Value::Binary(gzip.finish().unwrap()),
                option("Y2h1bmsz", true),
            ]));
            stream.write_all(&compressed).unwrap();
            // three acks, each after its records were committed
            let mut acks = Vec::new();
            while acks.len() < 3 {
                let mut buffer = [0u8; 256];
                let read = stream.read(&mut buffer).unwrap();
                assert!(read > 0, "connection closed before the acks");
                let mut cursor = &buffer[..read];
                while !cursor.is_empty() {
                    let value = rmpv::decode::read_value(&mut cursor).unwrap();
                    acks.push(value["ack"].as_str().unwrap().to_owned());
                }
            }
            acks.sort();
            acks
        })
        .await
        .unwrap();
        assert_eq!(sent, ["Y2h1bmsx", "Y2h1bmsy", "Y2h1bmsz"]);
        let index = pipeline.index.clone().unwrap();
        // every record acked is searchable
        assert_eq!(index.search(&request("")).unwrap().total, 9);
        let hit = &index.search(&request("\"message mode\"")).unwrap().hits[0];
        assert_eq!(hit.tag, "app.web");
        assert_eq!(hit.timestamp_ns, 1_795_412_307_000_000_005);
        assert_eq!(hit.level, "warn");
        assert_eq!(hit.fields["host"], "web-1");
        let mut by_field = request("");
        by_field.fields = vec![("host".into(), "web-1".into())];
        assert_eq!(index.search(&by_field).unwrap().total, 9);
        assert_eq!(index.search(&request("packed")).unwrap().total, 6);
        assert_eq!(
            index.search(&request("forward")).unwrap().hits[1].timestamp_ns,
            1_795_412_308_000_000_000
        );

        // values that are not events are counted and skipped; the connection goes on
        tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(address).unwrap();
            stream.write_all(&[0x93, 0xc1, 0xc1, 0xc1]).unwrap();
            stream.write_all(&encode(&Value::from(42))).unwrap();
            let after = Value::Array(vec![
                Value::from("app.web"),
                Value::from(1_795_412_311),
                record("after the junk"),
            ]);
            stream.write_all(&encode(&after)).unwrap();
            // then a value cut short by the peer closing
            stream
                .write_all(&[0xdb, 0xff, 0xff, 0xff, 0xff, b'x'])
                .unwrap();
        })
        .await
        .unwrap();
        assert_eq!(wait_for(&pipeline, "junk", 1).await, 1);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let metrics = loop {
            let metrics = pipeline.metrics.render();
            if metrics.contains(r#"error_type="invalid_msgpack"} 1"#)
                || std::time::Instant::now() > deadline
            {
                break metrics;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(
            metrics.contains(r#"error_type="invalid_msgpack"} 1"#),
            "{metrics}"
        );
        assert!(
            metrics.contains(r#"error_type="invalid_event"} 2"#),
            "{metrics}"
        );
        shutdown.cancel();
        pipeline.wait().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn syslog_over_udp_and_tcp() {
        let dir = tempfile::tempdir().unwrap();
        let (pipeline, shutdown) = start_network(dir.path()).await;
        let (udp, tcp) = (pipeline.listening["sysu"], pipeline.listening["syst"]);
        tokio::task::spawn_blocking(move || {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            socket
                .send_to(
                    b"<165>1 2026-11-23T05:38:27Z web-1 nginx 42 ID47 - upstream timed out",
                    udp,
                )
                .unwrap();
            socket.send_to(b"garbage without a priority", udp).unwrap();
            let mut stream = std::net::TcpStream::connect(tcp).unwrap();
            let message = "<34>Nov 23 05:38:27 mymachine su[123]: 'su root' failed";
            stream
                .write_all(format!("{} {message}", message.len()).as_bytes())
                .unwrap();
            stream
                .write_all(b"<14>Nov 23 05:38:28 mymachine app: newline framed\n")
                .unwrap();
        })
        .await
        .unwrap();
        assert_eq!(wait_for(&pipeline, "", 4).await, 4);
        let index = pipeline.index.clone().unwrap();
        let hit = &index.search(&request("upstream")).unwrap().hits[0];
        assert_eq!(hit.tag, "syslog.local4.notice");
        assert_eq!(hit.level, "info");
        assert_eq!(hit.fields["host"], "web-1");
        assert_eq!(hit.fields["ident"], "nginx");
        let hit = &index.search(&request("su")).unwrap().hits[0];
        assert_eq!(hit.tag, "syslog.auth.crit");
        assert_eq!(hit.level, "fatal");
        assert_eq!(hit.fields["pid"], "123");
        assert_eq!(index.search(&request("newline")).unwrap().total, 1);
        assert_eq!(
            index.search(&request("garbage")).unwrap().hits[0].tag,
            "syslog.unknown"
        );
        shutdown.cancel();
        pipeline.wait().await;
    }
}

mod loki_push {
    use std::io::{Read, Write};

    use super::*;

    fn post(address: std::net::SocketAddr, content_type: &str, body: &[u8]) -> (u16, String) {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        write!(
            stream,
            "POST /loki/api/v1/push HTTP/1.0\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        stream.write_all(body).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let status = response.split(' ').nth(1).unwrap().parse().unwrap();
        (status, response)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn json_and_protobuf_pushes() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "sources:\n  loki:\n    type: loki\n    listen: 127.0.0.1:0\nsinks:\n  index:\n    type: index\n    path: {}/index\n    commit_interval_ms: 50\n    writer_threads: 1\n    writer_memory_mib: 16\n",
            dir.path().display()
        );
        let config = PipelineConfig::parse(&text, "test").unwrap();
        let shutdown = CancellationToken::new();
        let environment = Environment {
            data_dir: dir.path().to_path_buf(),
            node: "node-a".into(),
            ..Environment::default()
        };
        let pipeline = start(config, environment, shutdown.clone()).await.unwrap();
        let address = pipeline.listening["loki"];
        let json = serde_json::json!({"streams": [{
            "stream": {"job": "web", "namespace": "shop", "pod": "web-1", "env": "prod"},
            "values": [["1795412307000000001", "level=warn json push"], ["1795412307000000002", "second", {"trace_id": "t9"}]],
        }]})
        .to_string();
        let request = crate::sources::loki::proto_request(
            r#"{job="api", namespace="shop", level="error"}"#,
            1_795_412_308,
            "protobuf push",
        );
        let compressed = snap::raw::Encoder::new().compress_vec(&request).unwrap();
        let answers = tokio::task::spawn_blocking(move || {
            (
                post(address, "application/json", json.as_bytes()),
                post(address, "application/x-protobuf", &compressed),
                post(address, "application/json", b"{\"streams\": 3}"),
                post(address, "application/x-protobuf", b"not snappy"),
            )
        })
        .await
        .unwrap();
        assert_eq!(answers.0.0, 204, "{}", answers.0.1);
        assert_eq!(answers.1.0, 204, "{}", answers.1.1);
        assert_eq!(answers.2.0, 400, "{}", answers.2.1);
        assert_eq!(answers.3.0, 400, "{}", answers.3.1);
        // 204 came after the commit
        let index = pipeline.index.clone().unwrap();
        assert_eq!(index.search(&request_all()).unwrap().total, 3);
        let hit = &index.search(&super::request("json")).unwrap().hits[0];
        assert_eq!(
            (hit.tag.as_str(), hit.namespace.as_str(), hit.pod.as_str()),
            ("loki.web", "shop", "web-1")
        );
        assert_eq!(hit.level, "warn");
        assert_eq!(hit.fields["env"], "prod");
        assert_eq!(hit.timestamp_ns, 1_795_412_307_000_000_001);
        assert_eq!(
            index.search(&super::request("second")).unwrap().hits[0].fields["trace_id"],
            "t9"
        );
        let hit = &index.search(&super::request("protobuf")).unwrap().hits[0];
        assert_eq!(
            (hit.tag.as_str(), hit.level.as_str()),
            ("loki.api", "error")
        );
        shutdown.cancel();
        pipeline.wait().await;
    }

    fn request_all() -> SearchRequest {
        super::request("")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_stay_consistent_while_commits_and_merges_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_file(dir.path());
    let text = format!(
        "sources:\n  pods:\n    type: tail\n    include: ['{}/pods/*/*/*.log']\n    poll_interval_ms: 5\nsinks:\n  index:\n    type: index\n    path: {}/index\n    commit_interval_ms: 10\n    merge_segments: 2\n    writer_threads: 1\n    writer_memory_mib: 16\n",
        dir.path().display(),
        dir.path().display()
    );
    let (pipeline, shutdown) = start_text(&text).await;
    let index = pipeline.index.clone().unwrap();
    let writer = std::thread::spawn(move || {
        for round in 0..60 {
            append(
                &path,
                &(0..50)
                    .map(|n| cri(n, &format!("r{round} n{n}")))
                    .collect::<Vec<_>>(),
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let searcher = tokio::task::spawn_blocking(move || {
        let mut searches = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let found = index.search(&SearchRequest {
                limit: 200,
                ..SearchRequest::default()
            });
            let found = found.unwrap_or_else(|e| panic!("search {searches} failed: {e}"));
            searches += 1;
            if found.total == 3000 || std::time::Instant::now() > deadline {
                return (found.total, searches);
            }
        }
    });
    writer.join().unwrap();
    let (total, searches) = searcher.await.unwrap();
    assert_eq!(total, 3000, "after {searches} searches");
    shutdown.cancel();
    pipeline.wait().await;
}

#[tokio::test]
async fn loki_queries_over_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_file(dir.path());
    let other = dir.path().join("pods/shop_api-1_uid-2/app/0.log");
    std::fs::create_dir_all(other.parent().unwrap()).unwrap();
    append(
        &path,
        &[
            cri(1, "GET /cart 200 level=info"),
            cri(2, "GET /pay 503 level=error"),
            cri(3, "POST /pay 201 level=info"),
        ],
    );
    append(&other, &[cri(4, "GET /items 200 level=info")]);
    let (pipeline, shutdown) = run(dir.path()).await;
    assert_eq!(wait_for(&pipeline, "", 4).await, 4);
    let index = pipeline.index.clone().unwrap();
    let (start, end) = (1_795_410_000_000_000_000, 1_795_413_600_000_000_000);
    let query = |text: &str| {
        crate::loki_api::run(
            &index,
            crate::loki_api::parse(text).unwrap(),
            start,
            end,
            100,
            false,
            60_000_000_000,
        )
        .unwrap()
    };
    let logs = query(r#"{namespace="shop", pod=~"web-.*"} |= "GET" !~ "5\\d\\d""#);
    assert_eq!(logs["resultType"], "streams");
    let streams = logs["result"].as_array().unwrap();
    let lines: Vec<&str> = streams
        .iter()
        .flat_map(|s| s["values"].as_array().unwrap())
        .map(|v| v[1].as_str().unwrap())
        .collect();
    assert_eq!(lines, ["GET /cart 200 level=info"], "{logs}");
    assert_eq!(streams[0]["stream"]["pod"], "web-1");
    let volume = query(r#"sum by (level) (count_over_time({namespace="shop"}[1m]))"#);
    assert_eq!(volume["resultType"], "matrix");
    let totals: BTreeMap<String, f64> = volume["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|series| {
            let sum = series["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v[1].as_str().unwrap().parse::<f64>().unwrap())
                .sum();
            (series["metric"]["level"].as_str().unwrap().to_owned(), sum)
        })
        .collect();
    assert_eq!(
        totals,
        BTreeMap::from([("error".to_owned(), 1.0), ("info".to_owned(), 3.0)])
    );
    assert_eq!(index.values("pod", start, end).unwrap(), ["api-1", "web-1"]);
    shutdown.cancel();
    pipeline.wait().await;
}

#[tokio::test]
async fn new_files_are_found_by_inotify_between_scans() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("pods")).unwrap();
    let text = format!(
        "sources:\n  pods:\n    type: tail\n    include: ['{}/pods/*/*/*.log']\n    kubernetes: true\n    scan_interval_ms: 600000\n    poll_interval_ms: 600000\nsinks:\n  index:\n    type: index\n    path: {}/index\n    commit_interval_ms: 100\n    writer_threads: 1\n    writer_memory_mib: 16\n",
        dir.path().display(),
        dir.path().display()
    );
    let (pipeline, shutdown) = start_text(&text).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // a new pod's directory and file, then a line, long before the next scan or poll
    let path = log_file(dir.path());
    append(&path, &[cri(1, "hello from a new pod")]);
    assert_eq!(
        wait_for(&pipeline, "hello", 1).await,
        1,
        "found only by a scan"
    );
    append(&path, &[cri(2, "and a second line")]);
    assert_eq!(
        wait_for(&pipeline, "second", 1).await,
        1,
        "read only by a poll"
    );
    shutdown.cancel();
    pipeline.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_record_to_several_sinks_and_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_file(dir.path());
    append(&path, &[cri(1, "to both sinks"), cri(2, "also both")]);
    let text = format!(
        "sources:\n  pods:\n    type: tail\n    include: ['{0}/pods/*/*/*.log']\n    kubernetes: true\nsinks:\n  index:\n    type: index\n    path: {0}/index\n    commit_interval_ms: 50\n    writer_threads: 1\n    writer_memory_mib: 16\n  archive:\n    type: file\n    match: 'kube.shop.**'\n    path: {0}/archive/records.ndjson\n  elsewhere:\n    type: file\n    match: 'kube.other.**'\n    path: {0}/other.ndjson\n",
        dir.path().display()
    );
    let (pipeline, shutdown) = start_text(&text).await;
    assert_eq!(wait_for(&pipeline, "both", 2).await, 2);
    let archive = dir.path().join("archive/records.ndjson");
    let mut lines = Vec::new();
    for _ in 0..100 {
        lines = std::fs::read_to_string(&archive)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        if lines.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(lines.len(), 2);
    let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["message"], "to both sinks");
    assert_eq!(first["pod"], "web-1");
    assert!(!dir.path().join("other.ndjson").exists());
    shutdown.cancel();
    pipeline.wait().await;
}

#[tokio::test]
async fn stack_traces_become_one_record_and_a_restart_mid_trace_loses_none() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_file(dir.path());
    let text = format!(
        "sources:\n  pods:\n    type: tail\n    include: ['{root}/pods/*/*/*.log']\n    kubernetes: true\n    poll_interval_ms: 20\n    scan_interval_ms: 100\n    multiline:\n      parser: java\n      flush_ms: 300\nsinks:\n  index:\n    type: index\n    path: {root}/index\n    commit_interval_ms: 100\n    writer_threads: 1\n    writer_memory_mib: 16\n",
        root = dir.path().display()
    );
    let line = |n: usize, stream: &str, text: &str| {
        format!("2026-11-23T05:01:{:02}.{n:09}Z {stream} F {text}", n % 60)
    };
    append(
        &path,
        &[
            line(1, "stdout", "GET /cart 200"),
            line(2, "stderr", "java.lang.IllegalStateException: cart empty"),
            line(3, "stderr", "\tat shop.Cart.checkout(Cart.java:42)"),
            line(4, "stderr", "\tat shop.Main.main(Main.java:7)"),
            line(5, "stdout", "GET /health 200"),
            // the start of a second trace, still waiting for its frames
            line(6, "stderr", "java.lang.NullPointerException: price"),
        ],
    );
    let (pipeline, shutdown) = start_text(&text).await;
    assert_eq!(wait_for(&pipeline, "", 3).await, 3);
    let index = pipeline.index.clone().unwrap();
    let trace = index
        .search(&request("IllegalStateException"))
        .unwrap()
        .hits;
    assert_eq!(trace.len(), 1);
    assert_eq!(
        trace[0].message,
        "java.lang.IllegalStateException: cart empty\n\tat shop.Cart.checkout(Cart.java:42)\n\tat shop.Main.main(Main.java:7)"
    );
    assert_eq!(trace[0].stream, "stderr");
    assert_eq!(
        trace[0].timestamp, "2026-11-23T05:01:02.000000002Z",
        "timed by its first line"
    );
    // stopped while the second trace waits: its lines are read again after the restart
    shutdown.cancel();
    pipeline.wait().await;
    append(
        &path,
        &[
            line(7, "stderr", "\tat shop.Price.of(Price.java:9)"),
            line(8, "stdout", "GET /pay 200"),
        ],
    );
    let (pipeline, shutdown) = start_text(&text).await;
    assert_eq!(wait_for(&pipeline, "", 5).await, 5);
    let index = pipeline.index.clone().unwrap();
    let second = index.search(&request("NullPointerException")).unwrap().hits;
    assert_eq!(second.len(), 1, "once, whole");
    assert_eq!(
        second[0].message,
        "java.lang.NullPointerException: price\n\tat shop.Price.of(Price.java:9)"
    );
    assert_eq!(
        index
            .search(&request("IllegalStateException"))
            .unwrap()
            .total,
        1
    );
    // a trace at the end of the file goes out once no line came for flush_ms
    append(
        &path,
        &[
            line(9, "stderr", "java.lang.ArithmeticException: / by zero"),
            line(10, "stderr", "\tat shop.Tax.rate(Tax.java:3)"),
        ],
    );
    assert_eq!(wait_for(&pipeline, "ArithmeticException", 1).await, 1);
    assert_eq!(index.search(&request("")).unwrap().total, 6);
    shutdown.cancel();
    pipeline.wait().await;
}

#[test]
fn a_bad_multiline_rule_names_the_source() {
    let error = PipelineConfig::parse(
        "sources:\n  pods:\n    type: tail\n    include: ['/var/log/pods/*/*/*.log']\n    multiline:\n      start: '('\nsinks:\n  out:\n    type: stdout\n",
        "p.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("sources.pods.multiline"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_configuration_is_reloaded_without_losing_or_repeating_lines() {
    use tower::ServiceExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = log_file(dir.path());
    let config_path = dir.path().join("pipeline.yaml");
    let config = |extra: &str| {
        format!(
            "sources:\n  pods:\n    type: tail\n    include: ['{root}/pods/*/*/*.log']\n    kubernetes: true\n    poll_interval_ms: 20\n    scan_interval_ms: 100\n{extra}sinks:\n  index:\n    type: index\n    path: {root}/index\n    commit_interval_ms: 100\n    writer_threads: 1\n    writer_memory_mib: 16\n",
            root = dir.path().display()
        )
    };
    std::fs::write(&config_path, config("")).unwrap();
    let shutdown = CancellationToken::new();
    let reloading = crate::reload::start_reloading(
        config_path.clone(),
        Environment::default(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let index = || reloading.current.read().index.clone().unwrap();
    let metrics = || {
        let router = reloading.router.clone();
        async move {
            let response = router
                .oneshot(
                    http::Request::get("/metrics")
                        .body(axum::body::Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            String::from_utf8_lossy(&body).into_owned()
        }
    };
    let count = |query: &'static str| {
        let index = index();
        async move { index.search(&request(query)).unwrap().total }
    };
    let until = |query: &'static str, want: u64| async move {
        for _ in 0..400 {
            if count(query).await == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{query:?}: {} lines, not {want}", count(query).await);
    };
    append(
        &path,
        &(0..500)
            .map(|n| cri(n, &format!("before{n}")))
            .collect::<Vec<_>>(),
    );
    until("", 500).await;

    // a new transform, while lines keep coming: the next pipeline adds a field
    let writer = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || {
            for n in 0..20 {
                append(
                    &path,
                    &(0..50)
                        .map(|k| cri(k, &format!("during{}", n * 50 + k)))
                        .collect::<Vec<_>>(),
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    std::fs::write(
        &config_path,
        config("transforms:\n  - name: mark\n    type: record\n    match: '**'\n    set: {release: two}\n"),
    )
    .unwrap();
    writer.await.unwrap();
    for _ in 0..200 {
        if metrics().await.contains("logpipe_config_reloads_total 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(metrics().await.contains("logpipe_config_reloads_total 1"));
    until("", 1500).await;
    for n in [0, 499, 999] {
        let query: &'static str = Box::leak(format!("during{n}").into_boxed_str());
        assert_eq!(count(query).await, 1, "{query}");
    }
    append(&path, &[cri(1, "after reload")]);
    until("after", 1).await;
    let mut marked = request("after");
    marked.fields = vec![("release".into(), "two".into())];
    assert_eq!(
        index().search(&marked).unwrap().total,
        1,
        "the new transform runs"
    );

    // a valid file whose pipeline cannot start (its port is taken): the last good one runs
    // again, with nothing lost
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    std::fs::write(
        &config_path,
        config(&format!(
            "  api:\n    type: http\n    listen: 127.0.0.1:{port}\n"
        )),
    )
    .unwrap();
    for _ in 0..200 {
        if metrics()
            .await
            .contains("logpipe_config_last_reload_successful 0")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    append(&path, &[cri(3, "back on the good one")]);
    until("good", 1).await;

    // an invalid file is refused: the running pipeline carries on, the metric says so
    std::fs::write(&config_path, "sources: [oops").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    append(&path, &[cri(2, "still indexed")]);
    until("still", 1).await;
    let text = metrics().await;
    assert!(
        text.contains("logpipe_config_last_reload_successful 0"),
        "{text}"
    );
    assert!(
        !text.contains("logpipe_config_reload_failures_total 0"),
        "{text}"
    );
    assert!(
        text.contains("logpipe_component_received_events_total"),
        "the pipeline's own families"
    );
    assert_eq!(count("").await, 1503, "nothing lost or repeated");
    drop(taken);
    shutdown.cancel();
    reloading.done.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forward_sink_waits_for_its_receiver_and_delivers_with_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_file(dir.path());
    let port = free_port();
    let sender = format!(
        "sources:\n  pods:\n    type: tail\n    include: ['{root}/pods/*/*/*.log']\n    kubernetes: true\n    poll_interval_ms: 20\n    scan_interval_ms: 100\nsinks:\n  out:\n    type: forward\n    address: 127.0.0.1:{port}\n    timeout_ms: 500\n    tag_prefix: edge\n",
        root = dir.path().display()
    );
    let receiver = receiver_config(dir.path(), "forward", port);
    append(
        &path,
        &(0..100)
            .map(|n| cri(n, &format!("shipped{n}")))
            .collect::<Vec<_>>(),
    );
    // nothing listens yet: the sink keeps the batch and tries again
    let (sending, stop_sending) = start_text(&sender).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (receiving, stop_receiving) = start_text(&receiver).await;
    assert_eq!(wait_for(&receiving, "", 100).await, 100);
    let index = receiving.index.clone().unwrap();
    let hit = &index.search(&request("shipped7")).unwrap().hits[0];
    assert_eq!(
        (
            hit.namespace.as_str(),
            hit.pod.as_str(),
            hit.container.as_str()
        ),
        ("shop", "web-1", "nginx")
    );
    assert_eq!(hit.tag, "edge.kube.shop.web-1.nginx");
    assert_eq!(hit.stream, "stdout");
    assert_eq!(
        hit.timestamp, "2026-11-23T05:00:07.000000007Z",
        "nanoseconds kept"
    );
    let metrics = sending.metrics.render();
    assert!(
        metrics.contains(r#"error_type="send_failed""#),
        "the refused attempts are counted: {metrics}"
    );
    // acknowledged once each: nothing twice
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(index.search(&request("")).unwrap().total, 100);
    stop_sending.cancel();
    sending.wait().await;
    stop_receiving.cancel();
    receiving.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_index_positions_are_kept_so_a_restart_sends_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_file(dir.path());
    let archive = dir.path().join("archive.ndjson");
    let text = format!(
        "data_dir: {root}/data\nsources:\n  pods:\n    type: tail\n    include: ['{root}/pods/*/*/*.log']\n    kubernetes: true\n    poll_interval_ms: 20\n    scan_interval_ms: 100\nsinks:\n  archive:\n    type: file\n    path: {archive}\n",
        root = dir.path().display(),
        archive = archive.display()
    );
    let lines = |range: std::ops::Range<usize>| {
        range
            .map(|n| cri(n, &format!("kept{n}")))
            .collect::<Vec<_>>()
    };
    let archived = || {
        std::fs::read_to_string(&archive)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let until = |want: usize| async move {
        for _ in 0..200 {
            if archived() >= want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        archived()
    };
    append(&path, &lines(0..300));
    let (pipeline, shutdown) = start_text(&text).await;
    assert_eq!(until(300).await, 300);
    // the positions are saved once the file sink has synced
    let saved = dir.path().join("data/positions.json");
    for _ in 0..100 {
        if std::fs::read_to_string(&saved).is_ok_and(|t| t.contains(":")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    pipeline.wait().await;
    append(&path, &lines(300..400));
    let (pipeline, shutdown) = start_text(&text).await;
    assert_eq!(until(400).await, 400);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(archived(), 400, "nothing sent twice after the restart");
    let content = std::fs::read_to_string(&archive).unwrap();
    assert_eq!(content.matches("\"kept0\"").count(), 1);
    assert_eq!(content.matches("\"kept399\"").count(), 1);
    shutdown.cancel();
    pipeline.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loki_sink_pushes_streams_a_loki_receiver_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_file(dir.path());
    let port = free_port();
    let sender = format!(
        "sources:\n  pods:\n    type: tail\n    include: ['{root}/pods/*/*/*.log']\n    kubernetes: true\n    poll_interval_ms: 20\n    scan_interval_ms: 100\nsinks:\n  out:\n    type: loki\n    url: http://127.0.0.1:{port}\n    labels: {{cluster: edge}}\n    tenant_id: team-a\n    timeout_ms: 500\n",
        root = dir.path().display()
    );
    let receiver = receiver_config(dir.path(), "loki", port);
    append(
        &path,
        &(0..100)
            .map(|n| cri(n, &format!("pushed{n}")))
            .collect::<Vec<_>>(),
    );
    // nothing listens yet: the batch waits and is pushed again
    let (sending, stop_sending) = start_text(&sender).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (receiving, stop_receiving) = start_text(&receiver).await;
    assert_eq!(wait_for(&receiving, "", 100).await, 100);
    let index = receiving.index.clone().unwrap();
    let hit = &index.search(&request("pushed7")).unwrap().hits[0];
    assert_eq!(
        (
            hit.namespace.as_str(),
            hit.pod.as_str(),
            hit.container.as_str(),
            hit.stream.as_str()
        ),
        ("shop", "web-1", "nginx", "stdout")
    );
    assert_eq!(hit.timestamp, "2026-11-23T05:00:07.000000007Z");
    let mut by_cluster = request("");
    by_cluster.fields = vec![("cluster".into(), "edge".into())];
    assert_eq!(index.search(&by_cluster).unwrap().total, 100);
    let metrics = sending.metrics.render();
    assert!(metrics.contains(r#"error_type="send_failed""#), "{metrics}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(index.search(&request("")).unwrap().total, 100, "none twice");
    stop_sending.cancel();
    sending.wait().await;
    stop_receiving.cancel();
    receiving.wait().await;
}

/// A stand-in for Elasticsearch's bulk API (none can be installed here): documents by `_id`,
/// `create` conflicts answered 409, the first request's first item answered 429, and documents
/// whose message says `poison` refused with a mapping error, as Elasticsearch answers them.
#[derive(Clone, Default)]
struct FakeBulk {
    documents: Arc<parking_lot::Mutex<Vec<(String, serde_json::Value)>>>,
    requests: Arc<std::sync::atomic::AtomicUsize>,
}

async fn fake_bulk(
    axum::extract::State(state): axum::extract::State<FakeBulk>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::Json<serde_json::Value> {
    use serde_json::{Value, json};
    assert_eq!(headers["content-type"], "application/x-ndjson");
    let first = state
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        == 0;
    let text = String::from_utf8(body.to_vec()).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut items = Vec::new();
    for (n, pair) in lines.chunks(2).enumerate() {
        let action = &pair[0]["create"];
        let id = action["_id"].as_str().unwrap().to_owned();
        let status = if first && n == 0 {
            429
        } else if pair[1]["message"].as_str().unwrap().contains("poison") {
            400
        } else {
            let mut documents = state.documents.lock();
            if documents.iter().any(|(known, _)| *known == id) {
                409
            } else {
                documents.push((id, pair[1].clone()));
                201
            }
        };
        let mut result = json!({"_index": action["_index"], "status": status});
        if status == 400 {
            result["error"] = json!({"type": "mapper_parsing_exception", "reason": "failed to parse field [message]"});
        }
        items.push(json!({ "create": result }));
    }
    axum::Json(json!({"took": 1, "errors": true, "items": items}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_elasticsearch_sink_indexes_each_line_once_through_the_bulk_api() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_file(dir.path());
    let state = FakeBulk::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new()
        .route("/_bulk", axum::routing::post(fake_bulk))
        .with_state(state.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let config = format!(
        "sources:\n  pods:\n    type: tail\n    include: ['{root}/pods/*/*/*.log']\n    kubernetes: true\n    poll_interval_ms: 20\n    scan_interval_ms: 100\nsinks:\n  es:\n    type: elasticsearch\n    url: http://127.0.0.1:{port}\n    index: kube-%Y.%m.%d\n    max_bulk_bytes: 4096\n",
        root = dir.path().display()
    );
    let mut lines: Vec<String> = (0..100).map(|n| cri(n, &format!("bulk{n}"))).collect();
    lines.push(cri(100, "poison pill"));
    append(&path, &lines);
    let (pipeline, stop) = start_text(&config).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while state.documents.lock().len() < 100 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} indexed",
            state.documents.lock().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let documents = state.documents.lock().clone();
    assert_eq!(
        documents.len(),
        100,
        "each line once, the refused one dropped"
    );
    let (_, seventh) = documents
        .iter()
        .find(|(_, d)| d["message"] == "bulk7")
        .unwrap();
    assert_eq!(seventh["@timestamp"], "2026-11-23T05:00:07.000000007Z");
    assert_eq!(seventh["kubernetes"]["namespace_name"], "shop");
    assert_eq!(seventh["kubernetes"]["pod_name"], "web-1");
    assert!(
        state.requests.load(std::sync::atomic::Ordering::SeqCst) > 2,
        "split and retried"
    );
    let metrics = pipeline.metrics.render();
    assert!(
        metrics.contains(r#"logpipe_component_discarded_events_total{component_id="es",component_type="elasticsearch",reason="rejected"} 1"#),
        "{metrics}"
    );
    stop.cancel();
    pipeline.wait().await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_buffer_keeps_what_its_receiver_did_not_take_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_file(dir.path());
    let port = free_port();
    let sender = format!(
        "data_dir: {root}/sender\nsources:\n  pods:\n    type: tail\n    include: ['{root}/pods/*/*/*.log']\n    kubernetes: true\n    poll_interval_ms: 20\n    scan_interval_ms: 100\nsinks:\n  out:\n    type: forward\n    address: 127.0.0.1:{port}\n    timeout_ms: 300\n    buffer: {{type: file}}\n",
        root = dir.path().display()
    );
    let receiver = receiver_config(dir.path(), "forward", port);
    append(
        &path,
        &(0..100)
            .map(|n| cri(n, &format!("kept{n}")))
            .collect::<Vec<_>>(),
    );
    // nobody receives: the lines wait on disk, and the file's position moves on
    let (sending, stop_sending) = start_text(&sender).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = sending.metrics.render();
        if metrics.contains("logpipe_buffer_events{component_id=\"out\"} 100") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_sending.cancel();
    sending.wait().await;
    let chunks = std::fs::read_dir(dir.path().join("sender/buffers/out"))
        .unwrap()
        .count();
    assert!(chunks > 0, "the buffer's chunks stay on disk");
    // started again beside its receiver: each line arrives once (from the buffer, not the file)
    let (receiving, stop_receiving) = start_text(&receiver).await;
    let (sending, stop_sending) = start_text(&sender).await;
    assert_eq!(wait_for(&receiving, "", 100).await, 100);
    append(&path, &[cri(100, "kept100")]);
    assert_eq!(wait_for(&receiving, "", 101).await, 101);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let index = receiving.index.clone().unwrap();
    assert_eq!(index.search(&request("")).unwrap().total, 101, "none twice");
    assert_eq!(
        index.search(&request("kept7")).unwrap().hits[0].pod,
        "web-1"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::fs::read_dir(dir.path().join("sender/buffers/out"))
        .unwrap()
        .count()
        > 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "delivered chunks are deleted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_sending.cancel();
    sending.wait().await;
    stop_receiving.cancel();
    receiving.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_drops_its_oldest_records_and_holds_back_no_other_sink() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_file(dir.path());
    let port = free_port();
    let config = format!(
        "sources:\n  pods:\n    type: tail\n    include: ['{root}/pods/*/*/*.log']\n    kubernetes: true\n    poll_interval_ms: 20\n    scan_interval_ms: 100\nsinks:\n  index:\n    type: index\n    path: {root}/index\n    commit_interval_ms: 100\n    writer_threads: 1\n    writer_memory_mib: 16\n  out:\n    type: forward\n    address: 127.0.0.1:{port}\n    timeout_ms: 200\n    buffer: {{type: memory, max_bytes: 2000, when_full: drop_oldest}}\n",
        root = dir.path().display()
    );
    let (pipeline, stop) = start_text(&config).await;
    for round in 0..20 {
        append(
            &path,
            &(0..50)
                .map(|n| cri(n, &format!("round{round} line{n}")))
                .collect::<Vec<_>>(),
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // the index takes every line although the forward receiver is down
    assert_eq!(wait_for(&pipeline, "", 1000).await, 1000);
    let metrics = pipeline.metrics.render();
    let dropped: f64 = metrics
        .lines()
        .find(|l| {
            l.starts_with("logpipe_component_discarded_events_total")
                && l.contains("component_id=\"out\"")
                && l.contains("reason=\"buffer_full\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(dropped > 0.0, "{metrics}");
    stop.cancel();
    pipeline.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_tail_streams_new_matching_lines_as_they_are_indexed() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let dir = tempfile::tempdir().unwrap();
    let path = log_file(dir.path());
    append(&path, &[cri(0, "wanted but old")]);
    let (pipeline, stop) = run(dir.path()).await;
    wait_for(&pipeline, "", 1).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = crate::api::router(pipeline.index.clone(), pipeline.metrics.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /api/v1/tail?query=wanted&pod=web-1 HTTP/1.1\r\nHost: logs\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    // the headers come first: the subscription is in place
    while !String::from_utf8_lossy(&received).contains("\r\n\r\n") {
        let n = stream.read(&mut buffer).await.unwrap();
        received.extend_from_slice(&buffer[..n]);
    }
    assert!(String::from_utf8_lossy(&received).contains("application/x-ndjson"));
    append(
        &path,
        &[
            cri(1, "wanted one"),
            cri(2, "unrelated"),
            cri(3, "wanted two"),
        ],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while String::from_utf8_lossy(&received)
        .matches("\"message\":")
        .count()
        < 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&received)
        );
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
            .await
            .unwrap()
            .unwrap();
        received.extend_from_slice(&buffer[..n]);
    }
    let text = String::from_utf8_lossy(&received).into_owned();
    assert!(text.contains("\"message\":\"wanted one\""), "{text}");
    assert!(text.contains("\"message\":\"wanted two\""), "{text}");
    assert!(text.contains("\"pod\":\"web-1\""), "{text}");
    assert!(
        !text.contains("unrelated") && !text.contains("but old"),
        "{text}"
    );
    // a query a live tail cannot evaluate is refused up front
    let mut refused = tokio::net::TcpStream::connect(address).await.unwrap();
    refused
        .write_all(b"GET /api/v1/tail?query=a%20OR%20b HTTP/1.1\r\nHost: logs\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    refused.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    server.abort();
    stop.cancel();
    pipeline.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loki_tail_sends_history_then_new_lines_over_a_websocket() {
    use futures::StreamExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = log_file(dir.path());
    append(&path, &[cri(0, "wanted before"), cri(1, "other before")]);
    let (pipeline, stop) = run(dir.path()).await;
    wait_for(&pipeline, "", 2).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = crate::api::router(pipeline.index.clone(), pipeline.metrics.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("query", r#"{namespace="shop", pod=~"web-.*"} |= "wanted""#)
        .append_pair("start", "2026-11-23T00:00:00Z")
        .finish();
    let url = format!("ws://{address}/loki/api/v1/tail?{query}");
    let (mut socket, response) = tokio_tungstenite::connect_async(&url).await.unwrap();
    assert_eq!(response.status(), 101);
    let mut frames = Vec::new();
    let mut next = async || {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a frame in time")
            .unwrap()
            .unwrap();
        serde_json::from_str::<serde_json::Value>(message.to_text().unwrap()).unwrap()
    };
    frames.push(next().await);
    append(&path, &[cri(2, "other after"), cri(3, "wanted after")]);
    frames.push(next().await);
    let lines: Vec<&str> = frames
        .iter()
        .flat_map(|f| f["streams"].as_array().unwrap())
        .flat_map(|s| s["values"].as_array().unwrap())
        .map(|v| v[1].as_str().unwrap())
        .collect();
    assert_eq!(lines, ["wanted before", "wanted after"], "{frames:?}");
    assert_eq!(frames[1]["streams"][0]["stream"]["pod"], "web-1");
    assert_eq!(
        frames[1]["streams"][0]["values"][0][0], "1795410003000000003",
        "{frames:?}"
    );
    server.abort();
    stop.cancel();
    pipeline.wait().await;
}

/// Records read again after a rewind go to the index alone; the rest go everywhere they match.
#[tokio::test]
async fn replays_go_to_the_index_alone() {
    use crate::record::{Batch, LogRecord, Position};
    let (source, input) = tokio::sync::mpsc::channel(4);
    let mut sinks = Vec::new();
    let mut routes = Vec::new();
    for index in [false, true] {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        routes.push(crate::Route {
            pattern: crate::config::TagPattern::parse("**").unwrap(),
            sink: tx,
            index,
        });
        sinks.push(rx);
    }
    let record = |offset: u64, replay: bool| LogRecord {
        tag: "app".into(),
        message: format!("line {offset}"),
        position: Some(Position {
            key: "app:1:2".into(),
            offset,
            replay,
        }),
        ..LogRecord::default()
    };
    tokio::spawn(crate::route(input, Vec::new(), routes));
    source
        .send(Batch {
            records: vec![record(10, true), record(20, true), record(30, false)],
            generation: Some(1),
            ..Batch::default()
        })
        .await
        .unwrap();
    drop(source);
    let offsets = |batch: Batch| {
        assert_eq!(batch.generation, Some(1));
        batch
            .records
            .iter()
            .map(|r| r.position.as_ref().unwrap().offset)
            .collect::<Vec<_>>()
    };
    assert_eq!(offsets(sinks[0].recv().await.unwrap()), [30]);
    assert_eq!(offsets(sinks[1].recv().await.unwrap()), [10, 20, 30]);
}

#[test]
fn rewinds_hand_out_generations_offsets_and_released_files() {
    let rewind = crate::record::Rewind::new(BTreeMap::from([("app:1:2".to_owned(), 5)]));
    assert_eq!(rewind.generation(), 0);
    rewind.commit(
        &BTreeMap::from([("app:1:2".to_owned(), 9)]),
        ["app:1:3".to_owned(), "other:1:4".to_owned()],
    );
    assert_eq!(rewind.committed()["app:1:2"], 9);
    assert_eq!(rewind.rewind(), 1);
    assert_eq!(rewind.generation(), 1);
    // each source takes its own keys, once
    assert_eq!(rewind.take_released("app:"), ["app:1:3"]);
    assert!(rewind.take_released("app:").is_empty());
    assert_eq!(rewind.take_released("other:"), ["other:1:4"]);
}
