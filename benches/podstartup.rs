//! Pod startup on the local containerd (`cargo bench --bench podstartup`, as root after
//! scripts/setup.sh): an in-process API server, controllers, scheduler and node agent; the time from the
//! create request until a watch sees the pod Running, for 1 pod at a time and for a burst,
//! with host network and with the CNI pod network. The raw CRI floor (RunPodSandbox,
//! CreateContainer, StartContainer with no Kubernetes in between) is measured in the same run
//! for the ratio. Then the cost at rest with 50 pods running: of the whole in-process stack,
//! and of the kubelet alone as its own process (`kelson agent` without the log pipeline, node
//! exporter and service proxy, joined to a `kelson server --disable-agent`).
//!
//! Knobs (env): `BENCH_SINGLE` (sequential pods per network, default 10), `BENCH_BURST` (30).

use kelson_testing::bench::{env_or as env, percentile};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kelson_kubelet::cri::Cri;
use kelson_testing::{RuntimeCleanup, TestServer};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use parking_lot::Mutex;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// The `kelson` binary's allocator, so what runs in this process is measured as it runs there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn process_stat() -> (f64, f64) {
    process_stat_of("self")
}

/// Resident MiB and CPU seconds so far of process `pid` (`self` for this one).
fn process_stat_of(pid: &str) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 after the name
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    (rss, ticks / 100.0)
}

/// Running times observed by one watch, by pod name.
type Seen = Arc<Mutex<HashMap<String, Instant>>>;

fn pod(name: &str, host_network: bool) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"bench": "startup"}},
        "spec": {
            "hostNetwork": host_network,
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "c", "image": "busybox:1.35", "command": ["sleep", "3600"]}],
        },
    }))
    .expect("valid pod")
}

async fn wait_running(seen: &Seen, names: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while names.iter().any(|n| !seen.lock().contains_key(n)) {
        assert!(Instant::now() < deadline, "pods did not start within 120 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn delete_all(api: &Api<Pod>) {
    let _ = api
        .delete_collection(
            &DeleteParams::default().grace_period(0),
            &ListParams::default().labels("bench=startup"),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !api
        .list(&ListParams::default().labels("bench=startup"))
        .await
        .map(|l| l.items.is_empty())
        .unwrap_or(false)
    {
        assert!(Instant::now() < deadline, "pods were not deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The raw CRI floor: `runs` pods, each one sandbox plus one container started back to back;
/// `concurrent` starts them all at once. Returns each pod's time to running.
async fn cri_floor(
    cri: &Cri,
    host_network: bool,
    runs: usize,
    concurrent: bool,
    node: &str,
) -> Vec<f64> {
    if concurrent {
        let started = Instant::now();
        let results = futures::future::join_all(
            (0..runs).map(|run| cri_start(cri, host_network, run, node, started)),
        )
        .await;
        let mut samples = Vec::new();
        for (elapsed, sandbox, uid) in results {
            samples.push(elapsed);
            cri_remove(cri, &sandbox, &uid).await;
        }
        return samples;
    }
    let mut samples = Vec::new();
    for run in 0..runs {
        let (elapsed, sandbox, uid) = cri_start(cri, host_network, run, node, Instant::now()).await;
        samples.push(elapsed);
        cri_remove(cri, &sandbox, &uid).await;
    }
    samples
}

async fn cri_remove(cri: &Cri, sandbox: &str, uid: &str) {
    let _ = cri.stop_pod_sandbox(sandbox).await;
    let _ = cri.remove_pod_sandbox(sandbox).await;
    let _ = std::fs::remove_dir_all(format!("/var/log/pods/bench_{uid}_{uid}"));
}

/// Starts one raw pod; returns the milliseconds from `started` and the sandbox id and uid.
async fn cri_start(
    cri: &Cri,
    host_network: bool,
    run: usize,
    node: &str,
    started: Instant,
) -> (f64, String, String) {
    {
        let uid = format!(
            "floor-{}-{}-{run}",
            std::process::id(),
            u8::from(host_network)
        );
        let pod = serde_json::from_value::<Pod>(json!({
            "metadata": {"name": uid, "namespace": "bench", "uid": uid},
            "spec": {"hostNetwork": host_network, "containers": [{"name": "c", "image": "busybox:1.35"}]},
            "status": {"qosClass": "BestEffort"},
        }))
        .expect("valid pod");
        let sandbox_config = kelson_kubelet::pods::spec::sandbox_config(
            &pod,
            node,
            &kelson_kubelet::pods::spec::DnsSettings::default(),
            0,
        );
        let container = &pod.spec.as_ref().expect("spec").containers[0].clone();
        let mut config = kelson_kubelet::pods::spec::container_config(
            &pod,
            container,
            0,
            "busybox:1.35",
            &[],
            node,
            1 << 30,
        );
        config.command = vec!["sleep".into(), "3600".into()];
        let sandbox = cri
            .run_pod_sandbox(sandbox_config.clone())
            .await
            .expect("sandbox");
        let id = cri
            .create_container(&sandbox, config, sandbox_config)
            .await
            .expect("create");
        cri.start_container(&id).await.expect("start");
        (started.elapsed().as_secs_f64() * 1000.0, sandbox, uid)
    }
}

#[tokio::main]
async fn main() {
    // the agent's warnings (a pod that cannot start says why)
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let single = env("BENCH_SINGLE", 10);
    let burst = env("BENCH_BURST", 30);
    let node = format!("bench-{}", std::process::id());
    let _cleanup = RuntimeCleanup::new(&node);
    let server = TestServer::start().await;
    let client = server.in_process_client("bench");
    let shutdown = CancellationToken::new();
    tokio::spawn(kelson_scheduler::run(
        client.clone(),
        kelson_scheduler::Config::default(),
        shutdown.clone(),
    ));
    // the controllers publish kube-root-ca.crt and create the default ServiceAccount, which
    // every pod's kube-api-access volume needs
    let root_ca = server
        .kubeconfig()
        .parent()
        .and_then(|dir| std::fs::read_to_string(dir.join("tls/ca.crt")).ok());
    tokio::spawn(kelson_controllers::run_with(
        server.in_process_client("system:kube-controller-manager"),
        kelson_controllers::Options {
            root_ca,
            ..Default::default()
        },
        shutdown.clone(),
    ));
    let root = tempfile::tempdir().expect("temp dir");
    let agent = kelson_kubelet::agent::AgentConfig {
        node_name: node.clone(),
        root_dir: root.path().to_owned(),
        ..Default::default()
    };
    tokio::spawn(kelson_kubelet::agent::run(
        client.clone(),
        agent,
        shutdown.clone(),
    ));
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let seen: Seen = Arc::new(Mutex::new(HashMap::new()));
    {
        let seen = seen.clone();
        let pods = api.clone();
        tokio::spawn(async move {
            let config = watcher::Config::default().labels("bench=startup");
            let mut events = std::pin::pin!(watcher(pods, config).applied_objects());
            while let Some(Ok(pod)) = events.next().await {
                if kelson_common::pod::phase(&pod) == "Running" {
                    let name = pod.metadata.name.clone().unwrap_or_default();
                    seen.lock().entry(name).or_insert_with(Instant::now);
                }
            }
        });
    }
    // the node must be up before timing starts
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    while nodes.get_opt(&node).await.ok().flatten().is_none() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cri = Cri::connect(Path::new(kelson_kubelet::cri::DEFAULT_SOCKET))
        .await
        .expect("containerd");
    // warm-up: one pod of each kind
    for (i, host) in [true, false].into_iter().enumerate() {
        let name = format!("warm-{i}");
        api.create(&PostParams::default(), &pod(&name, host))
            .await
            .expect("create");
        wait_running(&seen, &[name]).await;
    }
    delete_all(&api).await;

    println!(
        "## Pod startup on containerd (in-process API server, controllers, scheduler and agent, 2 CPUs)\n"
    );
    println!(
        "| case | p50 ms | p99 ms | raw CRI floor p50 / p99 ms | p99 / floor p50 | p99 / floor p99 |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for host in [true, false] {
        let network = if host { "host network" } else { "pod network" };
        let mut floor = cri_floor(&cri, host, single, false, &node).await;
        let (floor_p50, floor_p99) = (percentile(&mut floor, 50.0), percentile(&mut floor, 99.0));
        // one pod at a time
        let mut samples = Vec::new();
        for i in 0..single {
            let name = format!("one-{}-{i}", u8::from(host));
            let started = Instant::now();
            api.create(&PostParams::default(), &pod(&name, host))
                .await
                .expect("create");
            wait_running(&seen, std::slice::from_ref(&name)).await;
            let running = seen.lock()[&name];
            samples.push(running.duration_since(started).as_secs_f64() * 1000.0);
        }
        delete_all(&api).await;
        let p50 = percentile(&mut samples, 50.0);
        let p99 = percentile(&mut samples, 99.0);
        println!(
            "| 1 pod, {network} (n={single}) | {p50:.0} | {p99:.0} | {floor_p50:.0} / {floor_p99:.0} | {:.2} | {:.2} |",
            p99 / floor_p50,
            p99 / floor_p99
        );
        let mut floor = cri_floor(&cri, host, burst, true, &node).await;
        let (floor_p50, floor_p99) = (percentile(&mut floor, 50.0), percentile(&mut floor, 99.0));
        // a burst created at once
        let names: Vec<String> = (0..burst)
            .map(|i| format!("burst-{}-{i}", u8::from(host)))
            .collect();
        let started = Instant::now();
        futures::future::join_all(names.iter().map(|name| {
            let api = api.clone();
            let pod = pod(name, host);
            async move {
                api.create(&PostParams::default(), &pod)
                    .await
                    .expect("create")
            }
        }))
        .await;
        wait_running(&seen, &names).await;
        let mut samples: Vec<f64> = names
            .iter()
            .map(|n| seen.lock()[n].duration_since(started).as_secs_f64() * 1000.0)
            .collect();
        let p50 = percentile(&mut samples, 50.0);
        let p99 = percentile(&mut samples, 99.0);
        println!(
            "| {burst} pods at once, {network} | {p50:.0} | {p99:.0} | {floor_p50:.0} / {floor_p99:.0} | {:.2} | {:.2} |",
            p99 / floor_p50,
            p99 / floor_p99
        );
        delete_all(&api).await;
    }

    // the agent at rest with 50 pods
    let (rss_before, _) = process_stat();
    let names: Vec<String> = (0..50).map(|i| format!("rest-{i}")).collect();
    for name in &names {
        api.create(&PostParams::default(), &pod(name, false))
            .await
            .expect("create");
    }
    wait_running(&seen, &names).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (rss_after, cpu_before) = process_stat();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let (_, cpu_after) = process_stat();
    println!(
        "\n- With 50 pods running: process RSS {rss_after:.0} MiB ({:+.0} MiB for the pods), \
         CPU at rest {:.1}% of one core (API server, controllers, scheduler and agent together, 20 s)",
        rss_after - rss_before,
        (cpu_after - cpu_before) / 20.0 * 100.0
    );
    delete_all(&api).await;
    shutdown.cancel();
    kubelet_at_rest().await;
}

/// The kubelet alone, as its own process, with 50 pods running: its RSS, and its CPU over 20 s.
async fn kubelet_at_rest() {
    let binary = env!("CARGO_BIN_EXE_kelson");
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("server");
    std::fs::create_dir_all(&data).expect("server dir");
    let server = kelson_testing::KelsonProcess::server(Path::new(binary), &data, &[])
        .expect("kelson server");
    let node = format!("bench-kubelet-{}", std::process::id());
    let _cleanup = RuntimeCleanup::new(&node);
    let token = std::fs::read_to_string(data.join("node-token")).expect("join token");
    let agent_dir = dir.path().join("agent");
    let agent = kelson_testing::ChildGuard::spawn(
        binary,
        &[
            "agent",
            "--server",
            &server.url,
            "--token",
            token.trim(),
            "--node-name",
            &node,
            "--kubelet-port=0",
            "--disable-logpipe",
            "--disable-node-exporter",
            "--disable-proxy",
            "--data-dir",
            agent_dir.to_str().expect("UTF-8 path"),
        ],
    );
    let pid = agent.0.id().to_string();
    let client = kelson_testing::client_for(&server.kubeconfig()).await;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    while nodes.get_opt(&node).await.ok().flatten().is_none() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss_empty, _) = process_stat_of(&pid);
    let api: Api<Pod> = Api::namespaced(client, "default");
    for i in 0..50 {
        let mut pod = pod(&format!("rest-{i}"), false);
        pod.spec.as_mut().expect("spec").node_name = Some(node.clone());
        api.create(&PostParams::default(), &pod)
            .await
            .expect("create");
    }
    loop {
        let pods = api.list(&ListParams::default()).await.expect("list");
        let running = pods
            .items
            .iter()
            .filter(|p| kelson_common::pod::phase(p) == "Running")
            .count();
        if running == 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (rss, cpu_before) = process_stat_of(&pid);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let (_, cpu_after) = process_stat_of(&pid);
    println!(
        "- The kubelet alone (`kelson agent --disable-logpipe --disable-node-exporter \
         --disable-proxy`, its own process) with 50 pods running: RSS {rss:.0} MiB ({rss_empty:.0} \
         MiB with none), CPU at rest {:.1}% of one core (20 s)",
        (cpu_after - cpu_before) / 20.0 * 100.0
    );
    delete_all(&api).await;
    drop(agent);
}
