//! Scheduler and controller benchmarks (`cargo bench --bench scheduler`): an in-process cluster
//! (API server, scheduler, controllers) with hollow nodes.
//!
//! Knobs (env): `BENCH_NODES` (default 1000), `BENCH_PODS` (10000), `BENCH_REPLICAS` (1000).

use kelson_testing::bench::{env_or as env, rss_mib};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kelson_kubelet::hollow::HollowConfig;
use kelson_testing::TestCluster;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

#[tokio::main]
async fn main() {
    let nodes = env("BENCH_NODES", 1000);
    let pods = env("BENCH_PODS", 10_000);
    let replicas = env("BENCH_REPLICAS", 1000);
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
    let created = Instant::now();
    futures::stream::iter(0..pods)
        .map(|i| {
            let api = api.clone();
            let p = pod(i);
            async move { api.create(&PostParams::default(), &p).await.unwrap() }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    let create_time = created.elapsed();
    loop {
        let list = api
            .list(&ListParams::default().labels("bench=pods"))
            .await
            .unwrap();
        let bound = list
            .items
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
            .count();
        if bound == pods {
            break;
        }
        assert!(
            created.elapsed() < Duration::from_secs(600),
            "only {bound} of {pods} pods bound"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    let t = Instant::now();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    loop {
        let list = pods_api
            .list(&ListParams::default().labels("app=big"))
            .await
            .unwrap();
        let running = list
            .items
            .iter()
            .filter(|p| {
                kelson_common::pod::phase(p) == "Running" && kelson_common::pod::is_ready(p)
            })
            .count();
        if running == replicas {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "only {running} of {replicas} running"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "- a {replicas}-replica Deployment all Running and Ready after {:.1} s",
        t.elapsed().as_secs_f64()
    );
    println!(
        "- process RSS at the end: {:.0} MiB",
        rss_mib(std::process::id())
    );
}
