//! API server benchmarks (`cargo bench --bench apiserver`): the `kelson server` binary (release
//! build, embedded storage) measured through kube-rs over HTTPS, as a client sees it.
//!
//! Prints a Markdown report; `docs/benchmarks.md` holds the latest run. Knobs (env):
//! `BENCH_PODS` (default 10000), `BENCH_WATCHERS` (500), `BENCH_SECONDS` (10).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kelson_testing::{KelsonProcess, client_for};
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use tokio::sync::Semaphore;

/// The `kelson` binary's allocator, so what runs in this process is measured as it runs there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn config_map(name: &str) -> ConfigMap {
    serde_json::from_value(
        json!({"metadata": {"name": name, "labels": {"bench": "yes"}}, "data": {"key": "value"}}),
    )
    .unwrap()
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "bench", "tier": "web"}},
        "spec": {"containers": [{"name": "app", "image": "busybox:1.36", "command": ["sleep", "3600"],
                                 "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}
    }))
    .unwrap()
}

/// Runs `total` operations with `concurrency` in flight; returns sorted latencies and wall time.
async fn run_concurrent<F, Fut>(
    total: usize,
    concurrency: usize,
    op: F,
) -> (Vec<Duration>, Duration)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let started = Instant::now();
    let latencies: Vec<Duration> = futures::stream::iter(0..total)
        .map(|i| {
            let op = op.clone();
            async move {
                let t = Instant::now();
                op(i).await;
                t.elapsed()
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let wall = started.elapsed();
    let mut latencies = latencies;
    latencies.sort();
    (latencies, wall)
}

/// Issues `rate` requests per second for `seconds`; returns sorted latencies.
async fn run_at_rate<F, Fut>(rate: usize, seconds: usize, op: F) -> Vec<Duration>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let op = Arc::new(op);
    let limit = Arc::new(Semaphore::new(256));
    let mut tasks = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for i in 0..rate * seconds {
        tick.tick().await;
        let op = op.clone();
        let permit = limit.clone().acquire_owned().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            op(i).await;
            drop(permit);
            t.elapsed()
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.push(task.await.unwrap());
    }
    latencies.sort();
    latencies
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

#[tokio::main]
async fn main() {
    let pods = env("BENCH_PODS", 10_000);
    let watchers = env("BENCH_WATCHERS", 500);
    let seconds = env("BENCH_SECONDS", 10);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let server =
        KelsonProcess::server(Path::new(env!("CARGO_BIN_EXE_kelson")), &data, &[]).unwrap();
    let client = client_for(&server.kubeconfig()).await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    println!(
        "## API server (kelson server, embedded storage, {} CPUs)\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    println!("### CRUD latency by concurrency\n");
    println!("| operation | concurrency | ops | p50 ms | p99 ms | ops/s |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for concurrency in [1, 16, 64] {
        let total = if concurrency == 1 { 1000 } else { 4000 };
        let prefix = format!("c{concurrency}");
        let api = maps.clone();
        let p = prefix.clone();
        let (create, wall) = run_concurrent(total, concurrency, move |i| {
            let api = api.clone();
            let name = format!("{p}-{i}");
            async move {
                api.create(&PostParams::default(), &config_map(&name))
                    .await
                    .unwrap();
            }
        })
        .await;
        report("create", concurrency, &create, wall);
        let api = maps.clone();
        let p = prefix.clone();
        let (get, wall) = run_concurrent(total, concurrency, move |i| {
            let api = api.clone();
            let name = format!("{p}-{i}");
            async move {
                api.get(&name).await.unwrap();
            }
        })
        .await;
        report("get", concurrency, &get, wall);
        let api = maps.clone();
        let p = prefix.clone();
        let (update, wall) = run_concurrent(total, concurrency, move |i| {
            let api = api.clone();
            let name = format!("{p}-{i}");
            async move {
                let patch = json!({"data": {"key": format!("v{i}")}});
                api.patch(
                    &name,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&patch),
                )
                .await
                .unwrap();
            }
        })
        .await;
        report("update (merge patch)", concurrency, &update, wall);
        let api = maps.clone();
        let p = prefix.clone();
        let (delete, wall) = run_concurrent(total, concurrency, move |i| {
            let api = api.clone();
            let name = format!("{p}-{i}");
            async move {
                api.delete(&name, &DeleteParams::default()).await.unwrap();
            }
        })
        .await;
        report("delete", concurrency, &delete, wall);
    }

    println!("\n### Steady load: 500 requests/s for {seconds} s\n");
    println!("| operation | requests | p50 ms | p99 ms | max ms |");
    println!("| --- | --- | --- | --- | --- |");
    let api = maps.clone();
    let created = run_at_rate(500, seconds, move |i| {
        let api = api.clone();
        async move {
            api.create(&PostParams::default(), &config_map(&format!("rate-{i}")))
                .await
                .unwrap();
        }
    })
    .await;
    println!(
        "| create | {} | {} | {} | {} |",
        created.len(),
        ms(percentile(&created, 0.5)),
        ms(percentile(&created, 0.99)),
        ms(*created.last().unwrap())
    );
    let api = maps.clone();
    let got = run_at_rate(500, seconds, move |i| {
        let api = api.clone();
        async move {
            api.get(&format!("rate-{i}")).await.unwrap();
        }
    })
    .await;
    println!(
        "| get | {} | {} | {} | {} |",
        got.len(),
        ms(percentile(&got, 0.5)),
        ms(percentile(&got, 0.99)),
        ms(*got.last().unwrap())
    );

    println!("\n### {pods} pods\n");
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let api = pod_api.clone();
    let (_, wall) = run_concurrent(pods, 64, move |i| {
        let api = api.clone();
        async move {
            api.create(&PostParams::default(), &pod(&format!("pod-{i:05}")))
                .await
                .unwrap();
        }
    })
    .await;
    println!(
        "- created {pods} pods in {:.1} s ({:.0} pods/s, concurrency 64)",
        wall.as_secs_f64(),
        pods as f64 / wall.as_secs_f64()
    );
    println!(
        "- server RSS with {pods} pods stored: {:.0} MiB",
        rss_mib(server.pid())
    );
    let mut full = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let list = pod_api.list(&ListParams::default()).await.unwrap();
        assert_eq!(list.items.len(), pods);
        full.push(t.elapsed());
    }
    full.sort();
    let mut raw = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let request = http::Request::get("/api/v1/namespaces/default/pods")
            .body(Vec::new())
            .unwrap();
        let text = client.request_text(request).await.unwrap();
        assert!(text.len() > pods * 100);
        raw.push(t.elapsed());
    }
    raw.sort();
    let mut paged = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let mut count = 0;
        let mut params = ListParams::default().limit(500);
        loop {
            let page = pod_api.list(&params).await.unwrap();
            count += page.items.len();
            match page.metadata.continue_ {
                Some(token) if !token.is_empty() => params = params.continue_token(&token),
                _ => break,
            }
        }
        assert_eq!(count, pods);
        paged.push(t.elapsed());
    }
    paged.sort();
    let mut selected = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        pod_api
            .list(&ListParams::default().labels("app=bench,tier in (web)"))
            .await
            .unwrap();
        selected.push(t.elapsed());
    }
    selected.sort();
    println!(
        "- list all {pods} pods in one request: median {} ms, worst {} ms (5 runs)",
        ms(full[2]),
        ms(full[4])
    );
    println!(
        "- the same list as raw bytes (server and transfer only, no client-side decoding): median {} ms, worst {} ms",
        ms(raw[2]),
        ms(raw[4])
    );
    println!(
        "- list in pages of 500 (kubectl's way): median {} ms, worst {} ms",
        ms(paged[2]),
        ms(paged[4])
    );
    println!(
        "- list with a label selector: median {} ms",
        ms(selected[2])
    );
    println!(
        "- server RSS after those lists: {:.0} MiB",
        rss_mib(server.pid())
    );

    println!("\n### Watch fan-out: {watchers} watchers\n");
    let watch_api: Api<ConfigMap> = Api::namespaced(client.clone(), "watch");
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "watch"}})).unwrap(),
        )
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let start_rv = watch_api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    for _ in 0..watchers {
        let api = watch_api.clone();
        let tx = tx.clone();
        let rv = start_rv.clone();
        tokio::spawn(async move {
            let mut stream = api
                .watch(&WatchParams::default().timeout(290), &rv)
                .await
                .unwrap()
                .boxed();
            while let Ok(Some(event)) = stream.try_next().await {
                if let WatchEvent::Added(cm) | WatchEvent::Modified(cm) = event {
                    let _ = tx.send((cm.metadata.name.unwrap_or_default(), Instant::now()));
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = 100;
    let mut delivery = Vec::new();
    for i in 0..writes {
        let name = format!("w{i}");
        let t = Instant::now();
        watch_api
            .create(&PostParams::default(), &config_map(&name))
            .await
            .unwrap();
        let mut received = 0;
        let mut last = t;
        while received < watchers {
            let (got, at) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .expect("delivery")
                .unwrap();
            if got == name {
                received += 1;
                last = at;
            }
        }
        delivery.push(last - t);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    delivery.sort();
    println!("| writes | watchers | write → last delivery p50 ms | p99 ms | max ms |");
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| {writes} | {watchers} | {} | {} | {} |",
        ms(percentile(&delivery, 0.5)),
        ms(percentile(&delivery, 0.99)),
        ms(*delivery.last().unwrap())
    );
    println!(
        "\n- server RSS with {watchers} watchers open: {:.0} MiB",
        rss_mib(server.pid())
    );
}

fn report(operation: &str, concurrency: usize, latencies: &[Duration], wall: Duration) {
    println!(
        "| {operation} | {concurrency} | {} | {} | {} | {:.0} |",
        latencies.len(),
        ms(percentile(latencies, 0.5)),
        ms(percentile(latencies, 0.99)),
        latencies.len() as f64 / wall.as_secs_f64()
    );
}
