//! Storage benchmarks (`cargo bench --bench storage`): durable writes per second with group
//! commit, embedded (redb) beside a real etcd (Debian's etcd-server) in the same run, and
//! recovery time of `kelson server` after `kill -9` with many objects stored.
//!
//! Knobs (env): `BENCH_WRITES` (default 20000), `BENCH_OBJECTS` (100000).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kelson_storage::test_support::EtcdProcess;
use kelson_storage::{Embedded, EmbeddedOptions, Etcd, EtcdOptions, Storage};
use kelson_testing::{KelsonProcess, client_for};
use kube::api::{Api, PostParams};
use serde_json::json;

/// The `kelson` binary's allocator, so what runs in this process is measured as it runs there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn writes_per_second(
    storage: Arc<dyn Storage>,
    label: &str,
    total: usize,
    concurrency: usize,
) -> f64 {
    let value = Bytes::from(vec![b'x'; 1024]);
    let started = Instant::now();
    futures::stream::iter(0..total)
        .map(|i| {
            let storage = storage.clone();
            let value = value.clone();
            async move {
                storage
                    .create(
                        &format!("/registry/bench/{label}/c{concurrency}/{i:08}"),
                        value,
                    )
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await;
    total as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let writes = env("BENCH_WRITES", 20_000);
    let objects = env("BENCH_OBJECTS", 100_000);
    println!("## Storage\n");
    println!("### Durable writes per second (1 KiB values, creates)\n");
    println!("| backend | concurrency 1 | concurrency 16 | concurrency 64 |");
    println!("| --- | --- | --- | --- |");
    let dir = tempfile::tempdir().unwrap();
    let embedded: Arc<dyn Storage> =
        Arc::new(Embedded::open(EmbeddedOptions::at(dir.path().join("bench.redb"))).unwrap());
    let etcd_process = EtcdProcess::start();
    let etcd: Arc<dyn Storage> = Arc::new(
        Etcd::connect(EtcdOptions::new([etcd_process.client_url()]))
            .await
            .unwrap(),
    );
    for (label, storage) in [
        ("embedded (redb, fsync per batch)", embedded.clone()),
        ("etcd 3.4 (Debian)", etcd.clone()),
    ] {
        let mut row = format!("| {label} |");
        for concurrency in [1, 16, 64] {
            let total = if concurrency == 1 {
                writes / 10
            } else {
                writes
            };
            let rate = writes_per_second(storage.clone(), &label[..4], total, concurrency).await;
            row.push_str(&format!(" {rate:.0} |"));
        }
        println!("{row}");
    }

    println!("\n### Recovery after kill -9 with {objects} objects\n");
    let data = dir.path().join("server");
    std::fs::create_dir_all(&data).unwrap();
    let binary = Path::new(env!("CARGO_BIN_EXE_kelson"));
    let mut server = KelsonProcess::server(binary, &data, &[]).unwrap();
    let port = server.port();
    let maps: Api<ConfigMap> = Api::namespaced(client_for(&server.kubeconfig()).await, "default");
    let started = Instant::now();
    futures::stream::iter(0..objects)
        .map(|i| {
            let maps = maps.clone();
            async move {
                let cm: ConfigMap = serde_json::from_value(
                    json!({"metadata": {"name": format!("cm-{i:07}")}, "data": {"k": "v"}}),
                )
                .unwrap();
                maps.create(&PostParams::default(), &cm).await.unwrap();
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    let load = started.elapsed();
    println!(
        "- loaded {objects} ConfigMaps through the API in {:.1} s ({:.0}/s)",
        load.as_secs_f64(),
        objects as f64 / load.as_secs_f64()
    );
    server.kill();
    let restarted = Instant::now();
    let server =
        KelsonProcess::server(binary, &data, &[&format!("--listen=127.0.0.1:{port}")]).unwrap();
    let ready = restarted.elapsed();
    let maps: Api<ConfigMap> = Api::namespaced(client_for(&server.kubeconfig()).await, "default");
    // the bench's own: the server adds kube-root-ca.crt to every namespace
    let count = maps
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|cm| {
            cm.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("cm-"))
        })
        .count();
    assert_eq!(count, objects);
    println!(
        "- kill -9, restart: serving again after {} ms (all {count} objects present)",
        ready.as_millis()
    );
    let db = data.join("storage/state.redb");
    println!(
        "- database file: {:.0} MiB",
        std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0) as f64 / (1 << 20) as f64
    );
    drop(server);
    let t = Instant::now();
    let reopened = Embedded::open(EmbeddedOptions::at(&db)).unwrap();
    println!(
        "- reopening that database in-process (index rebuild): {} ms",
        t.elapsed().as_millis()
    );
    let _ = reopened;
    tokio::time::sleep(Duration::from_millis(10)).await;
}
