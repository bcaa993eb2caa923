//! Scheduler and controller benchmarks (`cargo bench --bench scheduler`): an in-process cluster
//! (API server, scheduler, controllers) with hollow nodes.
//!
//! Three measures: end to end (pods created as fast as the API server takes them while the
//! scheduler binds them), a 1000-replica Deployment until all Running, and the scheduler's own
//! throughput on a backlog: `BENCH_BACKLOG` pods of another `schedulerName` are created first,
//! then a scheduler for that name starts and is timed until it has bound them all (its
//! bindings still go through the API server, and the hollow nodes start the pods meanwhile).
//!
//! Knobs (env): `BENCH_NODES` (default 1000), `BENCH_PODS` (10000), `BENCH_REPLICAS` (1000),
//! `BENCH_BACKLOG` (10000).

use kelson_testing::bench::{cpu_seconds, env_or as env, rss_mib};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kelson_kubelet::hollow::HollowConfig;
use kelson_testing::TestCluster;
use kube::api::{Api, PartialObjectMeta, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use std::collections::HashSet;

/// The `kelson` binary's allocator, so what runs in this process is measured as it runs there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let nodes = env("BENCH_NODES", 1000);
    let pods = env("BENCH_PODS", 10_000);
    let replicas = env("BENCH_REPLICAS", 1000);
    let backlog = env("BENCH_BACKLOG", 10_000);
    let started = Instant::now();
    let cluster = TestCluster::start_with(HollowConfig {
        nodes,
        start_delay: Duration::from_millis(100),
        lease_period: Duration::from_secs(10),
        cpu: "32".into(),
        memory: "128Gi".into(),
        pods: "110".into(),
        ..Default::default()
    })
    .await;
    let client = cluster.server.in_process_client("bench");
    println!("## Scheduler and controllers (in-process cluster, {nodes} hollow nodes)\n");
    println!(
        "- {nodes} hollow nodes registered in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod = |i: usize| -> Pod {
        serde_json::from_value(json!({"metadata": {"name": format!("bench-{i:05}"), "labels": {"bench": "pods"}},
            "spec": {"containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}}))
        .unwrap()
    };
    // count bindings from a watch: polling lists of 10 000 pods would load the very process
    // being measured
    let bound = tokio::spawn(wait_bound(
        Api::namespaced(client.clone(), "default"),
        "bench=pods",
        pods,
    ));
    let created = Instant::now();
    create_all(&api, pods, pod).await;
    let create_time = created.elapsed();
    bound.await.unwrap();
    let bind_time = created.elapsed();
    println!(
        "- {pods} pods created in {:.1} s; all bound {:.1} s after the first create: {:.0} pods/s end to end",
        create_time.as_secs_f64(),
        bind_time.as_secs_f64(),
        pods as f64 / bind_time.as_secs_f64()
    );
    println!(
        "- process RSS (API server, scheduler, controllers, {nodes} hollow nodes): {:.0} MiB",
        rss_mib(std::process::id())
    );

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "big"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "big"}},
                 "template": {"metadata": {"labels": {"app": "big"}},
                              "spec": {"containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": "10m"}}}]}}}
    }))
    .unwrap();
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let running = tokio::spawn(wait_until(pods_api, "app=big", replicas, |p: &Pod| {
        kelson_common::pod::phase(p) == "Running" && kelson_common::pod::is_ready(p)
    }));
    let t = Instant::now();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    running.await.unwrap();
    println!(
        "- a {replicas}-replica Deployment all Running and Ready after {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // the scheduler alone on a backlog
    let waiting = |i: usize| -> Pod {
        serde_json::from_value(json!({"metadata": {"name": format!("backlog-{i:05}"), "labels": {"bench": "backlog"}},
            "spec": {"schedulerName": "bench-backlog",
                     "containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}}))
        .unwrap()
    };
    create_all(&api, backlog, waiting).await;
    // on stderr, for profilers to start sampling at the phase measured
    eprintln!("backlog created; starting its scheduler");
    let bound = tokio::spawn(wait_bound(
        Api::namespaced(client.clone(), "default"),
        "bench=backlog",
        backlog,
    ));
    let stop = tokio_util::sync::CancellationToken::new();
    let cpu_before = cpu_seconds(std::process::id());
    let t = Instant::now();
    tokio::spawn(kelson_scheduler::run(
        cluster.server.in_process_client("system:kube-scheduler"),
        kelson_scheduler::Config {
            scheduler_name: "bench-backlog".into(),
            ..Default::default()
        },
        stop.clone(),
    ));
    bound.await.unwrap();
    let took = t.elapsed();
    let cpu = cpu_seconds(std::process::id()) - cpu_before;
    stop.cancel();
    println!(
        "- scheduler throughput on a backlog of {backlog} pods: all bound {:.1} s after the scheduler started: {:.0} pods/s",
        took.as_secs_f64(),
        backlog as f64 / took.as_secs_f64()
    );
    // steadier than the rate on a shared machine: the work each pod costs this process
    println!(
        "- CPU time meanwhile (API server, scheduler, controllers, hollow nodes): {:.0} ms per 1000 pods bound, {:.2} cores busy",
        cpu * 1_000_000.0 / backlog as f64,
        cpu / took.as_secs_f64()
    );
    println!(
        "- process RSS at the end: {:.0} MiB",
        rss_mib(std::process::id())
    );
}

/// Creates `count` pods made by `make`, 64 requests in flight.
async fn create_all(api: &Api<Pod>, count: usize, make: impl Fn(usize) -> Pod) {
    futures::stream::iter(0..count)
        .map(|i| {
            let api = api.clone();
            let p = make(i);
            async move { api.create(&PostParams::default(), &p).await.unwrap() }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
}

/// Waits (at most 10 minutes) until `count` pods with `labels` are bound to a node, from a
/// watch of their metadata (selected on `spec.nodeName` by the server): the harness decodes
/// little, so the CPU measured is the cluster's.
async fn wait_bound(api: Api<PartialObjectMeta<Pod>>, labels: &'static str, count: usize) {
    let config = watcher::Config::default()
        .labels(labels)
        .fields("spec.nodeName!=");
    count_until(watcher(api, config), count, |_| true).await;
}

/// Waits (at most 10 minutes) until `count` pods with `labels` satisfy `done`, from a watch.
async fn wait_until(api: Api<Pod>, labels: &'static str, count: usize, done: fn(&Pod) -> bool) {
    let config = watcher::Config::default().labels(labels);
    count_until(watcher(api, config), count, done).await;
}

/// Follows `events` until `count` distinct objects satisfied `done` (at most 10 minutes).
async fn count_until<K: kube::ResourceExt>(
    events: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    count: usize,
    done: impl Fn(&K) -> bool,
) {
    let mut events = std::pin::pin!(events);
    let mut finished: HashSet<String> = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    while finished.len() < count {
        let event = tokio::time::timeout_at(deadline, events.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} pods done", finished.len()));
        match event {
            Some(Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p))) if done(&p) => {
                finished.insert(p.name_any());
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => panic!("watch failed: {error}"),
            None => panic!("watch ended"),
        }
    }
}
