//! End-to-end: `kill -9` of `kelson server` during a storm of writes loses no acknowledged
//! write; SIGTERM shuts down cleanly; two servers on one etcd serve the same objects and both
//! deliver every watch event.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kelson_storage::test_support::EtcdProcess;
use kelson_testing::{KelsonProcess, client_for};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_kelson"))
}

fn config_map(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"n": name}})).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_write_storm_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut server = KelsonProcess::server(binary(), &data, &[]).unwrap();
    let port = server.port();
    let client = client_for(&server.kubeconfig()).await;
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let mut writers = Vec::new();
    for writer in 0..16 {
        let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        let acknowledged = acknowledged.clone();
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let name = format!("w{writer}-{i}");
                match maps
                    .create(&PostParams::default(), &config_map(&name))
                    .await
                {
                    Ok(_) => {
                        acknowledged.lock().unwrap().insert(name);
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill();
    for writer in writers {
        let _ = writer.await;
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() > 50,
        "the storm wrote only {} objects",
        acknowledged.len()
    );

    let server =
        KelsonProcess::server(binary(), &data, &[&format!("--listen=127.0.0.1:{port}")]).unwrap();
    let maps: Api<ConfigMap> = Api::namespaced(client_for(&server.kubeconfig()).await, "default");
    let stored: BTreeSet<String> = maps
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    let lost: Vec<_> = acknowledged.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        lost.iter().take(5).collect::<Vec<_>>()
    );
    eprintln!(
        "{} acknowledged writes, {} stored after kill -9",
        acknowledged.len(),
        stored.len()
    );
}

#[test]
fn sigterm_shuts_down_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut server = KelsonProcess::server(binary(), &data, &[]).unwrap();
    let status = server.terminate().unwrap();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_etcd_share_objects_and_events() {
    let etcd = EtcdProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&data_a).unwrap();
    std::fs::create_dir_all(&data_b).unwrap();
    let endpoints = format!("--etcd-endpoints={}", etcd.client_url());
    let a = KelsonProcess::server(binary(), &data_a, &[&endpoints]).unwrap();
    let b = KelsonProcess::server(binary(), &data_b, &[&endpoints]).unwrap();
    let maps_a: Api<ConfigMap> = Api::namespaced(client_for(&a.kubeconfig()).await, "default");
    let maps_b: Api<ConfigMap> = Api::namespaced(client_for(&b.kubeconfig()).await, "default");

    let watch_a = watcher(maps_a.clone(), watcher::Config::default()).boxed();
    let watch_b = watcher(maps_b.clone(), watcher::Config::default()).boxed();
    let seen = |stream: futures::stream::BoxStream<
        'static,
        Result<watcher::Event<ConfigMap>, watcher::Error>,
    >| {
        tokio::spawn(async move {
            let mut names = BTreeSet::new();
            let mut stream = stream;
            while names.len() < 2 {
                if let Some(Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm))) =
                    stream.next().await
                {
                    let name = cm.metadata.name.unwrap();
                    // the controllers publish ConfigMaps of their own
                    if name.starts_with("from-") {
                        names.insert(name);
                    }
                }
            }
            names
        })
    };
    let (seen_a, seen_b) = (seen(watch_a), seen(watch_b));
    tokio::time::sleep(Duration::from_millis(500)).await;
    maps_a
        .create(&PostParams::default(), &config_map("from-a"))
        .await
        .unwrap();
    maps_b
        .create(&PostParams::default(), &config_map("from-b"))
        .await
        .unwrap();
    assert_eq!(
        maps_b.get("from-a").await.unwrap().data.unwrap()["n"],
        "from-a"
    );
    assert_eq!(
        maps_a.get("from-b").await.unwrap().data.unwrap()["n"],
        "from-b"
    );
    for seen in [seen_a, seen_b] {
        let names = tokio::time::timeout(Duration::from_secs(20), seen)
            .await
            .expect("events within 20 s")
            .unwrap();
        assert_eq!(
            names,
            BTreeSet::from(["from-a".to_owned(), "from-b".to_owned()])
        );
    }
    // one leader per component, and it stays the leader while it renews
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client_for(&a.kubeconfig()).await, "kube-system");
    let holders = || async {
        let mut holders = Vec::new();
        for name in ["kube-scheduler", "kube-controller-manager"] {
            let lease = leases.get(name).await.unwrap();
            holders.push(lease.spec.unwrap().holder_identity.unwrap());
        }
        holders
    };
    let first = holders().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        holders().await,
        first,
        "leadership does not flap between the two servers"
    );
    drop((a, b));
}
