//! Behaviour of the whole pipeline on files written by the tests: tail → index → query.

use std::io::Write;
use std::path::{Path, PathBuf};
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
