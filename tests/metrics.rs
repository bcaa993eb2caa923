//! End-to-end tests of the exporters against the real peers: `kelson node-exporter` beside
//! Debian's prometheus-node-exporter on this machine (same families, help, types, label sets and
//! values), a real Prometheus scraping it and answering node-mixin rules, and the server's
//! cluster-state exporter following a Deployment on hollow nodes, queried with
//! kubernetes-mixin expressions.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use kelson_metrics::exposition::{Kind, ParsedFamily, parse};
use kelson_testing::git::{free_port, get, wait_listening};
use kelson_testing::{ChildGuard, KelsonProcess, Kubectl, RuntimeCleanup};

const KELSON: &str = env!("CARGO_BIN_EXE_kelson");
const PEER: &str = "/usr/bin/prometheus-node-exporter";
const PROMETHEUS: &str = "/usr/bin/prometheus";

fn spawn(program: &str, args: &[&str]) -> ChildGuard {
    ChildGuard::spawn(program, args)
}

type Series = BTreeMap<Vec<(String, String)>, f64>;

fn scrape(port: u16) -> BTreeMap<String, (ParsedFamily, Series)> {
    let (status, body) = get(port, "/metrics");
    assert_eq!(status, 200, "{body}");
    parse(&body)
        .expect("the exposition parses")
        .into_iter()
        .map(|family| {
            let series = family
                .samples
                .iter()
                .map(|s| {
                    let mut labels = s.labels.clone();
                    labels.sort();
                    (labels, s.value)
                })
                .collect();
            (family.name.clone(), (family, series))
        })
        .collect()
}

/// Families whose values move too fast between two scrapes to compare (only their presence,
/// help, type and labels are).
fn volatile(name: &str) -> bool {
    name.starts_with("node_memory_")
        && !matches!(
            name,
            "node_memory_MemTotal_bytes" | "node_memory_SwapTotal_bytes"
        )
        || name.starts_with("node_sockstat_")
        || name.starts_with("node_procs_")
        || name.starts_with("node_load")
        || matches!(
            name,
            "node_nf_conntrack_entries"
                | "node_filefd_allocated"
                | "node_entropy_available_bits"
                | "node_netstat_Tcp_CurrEstab"
                | "node_udp_queues"
                | "node_arp_entries"
                | "node_disk_io_now"
                | "node_timex_offset_seconds"
                | "node_timex_frequency_adjustment_ratio"
        )
}

#[test]
fn the_node_exporter_matches_prometheus_node_exporter() {
    let (peer_port, our_port) = (free_port(), free_port());
    let _peer = spawn(
        PEER,
        &[
            &format!("--web.listen-address=127.0.0.1:{peer_port}"),
            "--no-collector.systemd",
        ],
    );
    let _ours = spawn(
        KELSON,
        &[
            "node-exporter",
            &format!("--web.listen-address=127.0.0.1:{our_port}"),
        ],
    );
    wait_listening(peer_port, "prometheus-node-exporter");
    wait_listening(our_port, "kelson node-exporter");

    // ours is scraped between two scrapes of the peer: counters must fall in between
    let before = scrape(peer_port);
    let ours = scrape(our_port);
    let after = scrape(peer_port);

    let mut problems = Vec::new();
    let mut compared = 0;
    for (name, (family, series)) in &ours {
        if name.starts_with("node_scrape_collector_") || name.starts_with("process_") {
            continue;
        }
        let Some((peer, peer_series)) = before.get(name) else {
            problems.push(format!(
                "{name}: prometheus-node-exporter has no such family"
            ));
            continue;
        };
        if family.help != peer.help {
            problems.push(format!("{name}: help {:?} != {:?}", family.help, peer.help));
        }
        if family.kind != peer.kind {
            problems.push(format!("{name}: type {:?} != {:?}", family.kind, peer.kind));
        }
        let keys = |s: &Series| s.keys().cloned().collect::<BTreeSet<_>>();
        let after_series = after.get(name).map(|(_, s)| s.clone()).unwrap_or_default();
        if keys(series) != keys(peer_series) && keys(series) != keys(&after_series) {
            problems.push(format!(
                "{name}: series {:?} != {:?}",
                keys(series),
                keys(peer_series)
            ));
            continue;
        }
        if volatile(name) {
            continue;
        }
        for (labels, value) in series {
            let (Some(low), Some(high)) = (peer_series.get(labels), after_series.get(labels))
            else {
                continue;
            };
            let (low, high) = (low.min(*high), low.max(*high));
            let slack = match (name.as_str(), family.kind) {
                ("node_time_seconds", _) => 5.0,
                (_, Kind::Counter | Kind::Untyped) => 1.0 + high.abs() * 0.005,
                _ => 1e-6 + high.abs() * 0.05,
            };
            if *value < low - slack || *value > high + slack {
                problems.push(format!(
                    "{name}{labels:?}: {value} outside prometheus-node-exporter's {low}..{high}"
                ));
            }
            compared += 1;
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(compared > 300, "only {compared} series compared");
    // the families the node-mixin's rules and alerts need are all there
    for name in [
        "node_cpu_seconds_total",
        "node_memory_MemAvailable_bytes",
        "node_memory_MemTotal_bytes",
        "node_filesystem_avail_bytes",
        "node_filesystem_size_bytes",
        "node_filesystem_files_free",
        "node_network_receive_bytes_total",
        "node_network_transmit_errs_total",
        "node_load1",
        "node_disk_io_time_seconds_total",
        "node_disk_io_time_weighted_seconds_total",
        "node_vmstat_pgmajfault",
        "node_filefd_maximum",
        "node_nf_conntrack_entries_limit",
        "node_timex_sync_status",
        "node_textfile_scrape_error",
        "node_uname_info",
        "node_netstat_Tcp_RetransSegs",
        "process_resident_memory_bytes",
    ] {
        assert!(ours.contains_key(name), "no {name}");
    }
}

/// Runs a PromQL instant query; the result vector.
fn query(port: u16, promql: &str) -> Vec<serde_json::Value> {
    let encoded: String = form_urlencoded::byte_serialize(promql.as_bytes()).collect();
    let (status, body) = get(port, &format!("/api/v1/query?query={encoded}"));
    assert_eq!(status, 200, "{promql}: {body}");
    let response: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    response["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn number(sample: &serde_json::Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// A real Prometheus scraping `targets` (job name, address) every second; its port.
fn prometheus(dir: &Path, targets: &[(&str, &str)]) -> (ChildGuard, u16) {
    let port = free_port();
    let mut config =
        String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
    for (job, address) in targets {
        config.push_str(&format!(
            "  - job_name: {job}\n    static_configs:\n      - targets: ['{address}']\n"
        ));
    }
    std::fs::create_dir_all(dir).unwrap();
    let file = dir.join("prometheus.yml");
    std::fs::write(&file, config).unwrap();
    let process = spawn(
        PROMETHEUS,
        &[
            &format!("--config.file={}", file.display()),
            &format!("--storage.tsdb.path={}", dir.join("data").display()),
            &format!("--web.listen-address=127.0.0.1:{port}"),
        ],
    );
    wait_listening(port, "prometheus");
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(port, "/-/ready").0 != 200 {
        assert!(
            Instant::now() < deadline,
            "prometheus is not ready after 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (process, port)
}

/// Polls a PromQL query until `check` accepts its result.
fn query_until(
    port: u16,
    promql: &str,
    check: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let result = query(port, promql);
        if check(&result) {
            return result;
        }
        assert!(
            Instant::now() < deadline,
            "{promql} still gives {result:?} after 60 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn prometheus_scrapes_the_node_exporter_and_answers_node_mixin_rules() {
    let dir = tempfile::tempdir().unwrap();
    let our_port = free_port();
    let _ours = spawn(
        KELSON,
        &[
            "node-exporter",
            &format!("--web.listen-address=127.0.0.1:{our_port}"),
        ],
    );
    let address = format!("127.0.0.1:{our_port}");
    let (_prometheus, prometheus_port) = prometheus(dir.path(), &[("node-exporter", &address)]);

    // CPU utilisation needs two scrapes of the counters: wait until the rule has a value
    let cpu = "instance:node_cpu_utilisation:rate5m";
    let rule = "1 - avg without (cpu) (sum without (mode) (rate(node_cpu_seconds_total{job=\"node-exporter\", mode=~\"idle|iowait|steal\"}[1m])))";
    let result = query_until(prometheus_port, rule, |result| !result.is_empty());
    let utilisation = number(&result[0]);
    assert!((0.0..=1.0).contains(&utilisation), "{cpu} = {utilisation}");

    let up = query(prometheus_port, "up{job=\"node-exporter\"}");
    assert_eq!(up.len(), 1);
    assert_eq!(number(&up[0]), 1.0, "the target is down: {up:?}");
    let samples = query(
        prometheus_port,
        "scrape_samples_scraped{job=\"node-exporter\"}",
    );
    assert!(number(&samples[0]) > 300.0, "{samples:?}");

    // node-mixin's memory and filesystem rules
    let memory = query(
        prometheus_port,
        "1 - (node_memory_MemAvailable_bytes{job=\"node-exporter\"} / node_memory_MemTotal_bytes{job=\"node-exporter\"})",
    );
    assert!((0.0..1.0).contains(&number(&memory[0])), "{memory:?}");
    let filesystems = query(
        prometheus_port,
        "node_filesystem_avail_bytes{job=\"node-exporter\",fstype!=\"\",mountpoint=\"/\"} / node_filesystem_size_bytes{job=\"node-exporter\",fstype!=\"\",mountpoint=\"/\"}",
    );
    assert_eq!(filesystems.len(), 1, "{filesystems:?}");
    assert!((0.0..=1.0).contains(&number(&filesystems[0])));
    let cpus = query(
        prometheus_port,
        "count without (cpu, mode) (node_cpu_seconds_total{job=\"node-exporter\",mode=\"idle\"})",
    );
    let expected = std::fs::read_to_string("/proc/stat")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .count();
    assert_eq!(number(&cpus[0]) as usize, expected, "{cpus:?}");
}

fn scrape_state(port: u16) -> BTreeMap<String, (ParsedFamily, Series)> {
    scrape(port)
}

fn values(
    families: &BTreeMap<String, (ParsedFamily, Series)>,
    name: &str,
    filter: &[(&str, &str)],
) -> Vec<f64> {
    families.get(name).map_or_else(Vec::new, |(_, series)| {
        series
            .iter()
            .filter(|(labels, _)| {
                filter
                    .iter()
                    .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, v)| *v)
            .collect()
    })
}

const WEB: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: busybox:1.35
        resources:
          requests: {cpu: 100m, memory: 32Mi}
          limits: {memory: 64Mi}
";

#[test]
fn cluster_state_metrics_follow_the_cluster_and_answer_kubernetes_mixin_rules() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    std::fs::create_dir_all(&data).unwrap();
    let server = KelsonProcess::server(
        Path::new(KELSON),
        &data,
        &["--metric-labels-allowlist=deployments=[app]"],
    )
    .unwrap();
    let kubeconfig = server.kubeconfig();
    let _nodes = ChildGuard::spawn(
        KELSON,
        &[
            "sim",
            "--nodes=2",
            "--start-delay-ms=100",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
        ],
    );
    let kubectl = Kubectl::new(33, &kubeconfig);
    kubectl.ok_with(&["apply", "-f", "-"], Some(WEB));
    kubectl.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);

    let address = server.state_metrics_address();
    let port: u16 = address.rsplit(':').next().unwrap().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let state = loop {
        let state = scrape_state(port);
        if values(
            &state,
            "kube_deployment_status_replicas_available",
            &[("deployment", "web")],
        ) == [3.0]
        {
            break state;
        }
        assert!(
            Instant::now() < deadline,
            "the Deployment's metrics never showed 3 available"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(values(&state, "kube_node_info", &[]).len(), 2);
    assert_eq!(
        values(
            &state,
            "kube_node_status_condition",
            &[("condition", "Ready"), ("status", "true")]
        ),
        [1.0, 1.0]
    );
    let pods = &state["kube_pod_info"].1;
    let web: Vec<_> = pods
        .keys()
        .filter(|labels| {
            labels
                .iter()
                .any(|(k, v)| k == "created_by_kind" && v == "ReplicaSet")
        })
        .collect();
    assert_eq!(web.len(), 3, "{pods:?}");
    assert!(
        web.iter().all(|labels| labels
            .iter()
            .any(|(k, v)| k == "node" && v.starts_with("hollow"))),
        "{web:?}"
    );
    assert_eq!(
        values(
            &state,
            "kube_pod_container_resource_requests",
            &[("resource", "cpu")]
        ),
        [0.1, 0.1, 0.1]
    );
    assert_eq!(
        values(
            &state,
            "kube_replicaset_owner",
            &[("owner_kind", "Deployment"), ("owner_name", "web")]
        ),
        [1.0]
    );
    assert_eq!(
        values(
            &state,
            "kube_namespace_status_phase",
            &[("namespace", "default"), ("phase", "Active")]
        ),
        [1.0]
    );
    assert_eq!(
        values(
            &state,
            "kube_deployment_labels",
            &[("deployment", "web"), ("label_app", "web")]
        ),
        [1.0]
    );
    assert!(
        state.contains_key("kube_lease_owner"),
        "leases are exported"
    );

    // a real Prometheus runs kubernetes-mixin expressions over it
    let prometheus_dir = dir.path().join("prometheus");
    let (_prometheus, prometheus_port) =
        prometheus(&prometheus_dir, &[("kube-state-metrics", &address)]);
    query_until(
        prometheus_port,
        "kube_deployment_status_replicas_available{job=\"kube-state-metrics\",deployment=\"web\"}",
        |result| result.len() == 1 && number(&result[0]) == 3.0,
    );
    // KubeDeploymentReplicasMismatch's core: nothing pending
    let mismatch = query(
        prometheus_port,
        "kube_deployment_spec_replicas{job=\"kube-state-metrics\"} != kube_deployment_status_replicas_available{job=\"kube-state-metrics\"}",
    );
    assert!(mismatch.is_empty(), "{mismatch:?}");
    // namespace_workload_pod:kube_pod_owner:relabel for Deployments
    let workload = query(
        prometheus_port,
        "max by (namespace, workload, pod) (label_replace(label_replace(kube_pod_owner{job=\"kube-state-metrics\", owner_kind=\"ReplicaSet\"}, \"replicaset\", \"$1\", \"owner_name\", \"(.*)\") * on (replicaset, namespace) group_left(owner_name) topk by (replicaset, namespace) (1, max by (replicaset, namespace, owner_name) (kube_replicaset_owner{job=\"kube-state-metrics\"})), \"workload\", \"$1\", \"owner_name\", \"(.*)\"))",
    );
    assert_eq!(workload.len(), 3, "{workload:?}");
    assert!(workload.iter().all(|w| w["metric"]["workload"] == "web"));
    // namespace_cpu:kube_pod_container_resource_requests:sum
    let cpu = query(
        prometheus_port,
        "sum by (namespace) (kube_pod_container_resource_requests{job=\"kube-state-metrics\", resource=\"cpu\"} * on (namespace, pod) group_left() max by (namespace, pod) (kube_pod_status_phase{phase=~\"Pending|Running\"} == 1))",
    );
    assert_eq!(cpu.len(), 1, "{cpu:?}");
    assert!((number(&cpu[0]) - 0.3).abs() < 1e-9, "{cpu:?}");

    // scaling down shows within seconds, and deleted pods leave no series
    kubectl.ok(&["scale", "deployment/web", "--replicas=1"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = scrape_state(port);
        let web_pods = state["kube_pod_info"]
            .1
            .keys()
            .filter(|labels| {
                labels
                    .iter()
                    .any(|(k, v)| k == "created_by_kind" && v == "ReplicaSet")
            })
            .count();
        if values(
            &state,
            "kube_deployment_spec_replicas",
            &[("deployment", "web")],
        ) == [1.0]
            && web_pods == 1
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "scaling to 1 did not show: {web_pods} pods"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_shipped_prometheus_configuration_is_valid() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/prometheus.yml");
    let output = std::process::Command::new("/usr/bin/promtool")
        .args(["check", "config", config])
        .output()
        .expect("promtool (from the prometheus package) runs");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Polls `kubectl` until it succeeds; its output.
fn kubectl_until(kubectl: &Kubectl, args: &[&str], seconds: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let output = kubectl.run(args, None);
        if output.status.success() {
            return String::from_utf8_lossy(&output.stdout).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "kubectl {args:?} still fails after {seconds} s: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Millicores from kubectl top's CPU column (`250m`, `1`).
fn millicores(text: &str) -> f64 {
    match text.strip_suffix('m') {
        Some(milli) => milli.parse().unwrap(),
        None => text.parse::<f64>().unwrap() * 1000.0,
    }
}

/// `kelson server` with a node agent on this machine's containerd.
struct RealNode {
    node: String,
    kubectl: Kubectl,
    server: KelsonProcess,
    _cleanup: RuntimeCleanup,
    _dir: tempfile::TempDir,
}

impl RealNode {
    fn start(prefix: &str) -> Self {
        let node = format!("e2e-{prefix}-{}", std::process::id());
        let cleanup = RuntimeCleanup::new(&node);
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("server");
        std::fs::create_dir_all(&data).unwrap();
        let node_arg = format!("--node-name={node}");
        let server = KelsonProcess::server(Path::new(KELSON), &data, &[&node_arg]).unwrap();
        let kubectl = Kubectl::new(33, &server.kubeconfig());
        Self {
            node,
            kubectl,
            server,
            _cleanup: cleanup,
            _dir: dir,
        }
    }
}

#[test]
fn kubectl_top_shows_what_nodes_and_pods_use() {
    let cluster = RealNode::start("top");
    let (node, kubectl) = (cluster.node.as_str(), &cluster.kubectl);
    for (name, script) in [("busy", "while :; do :; done"), ("idle", "exec sleep 3600")] {
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "main", "image": "busybox:1.35", "command": ["sh", "-c", script]}]},
        });
        kubectl.ok_with(&["apply", "-f", "-"], Some(&pod.to_string()));
    }
    kubectl_until(
        kubectl,
        &[
            "wait",
            "--for=condition=Ready",
            "pod/busy",
            "pod/idle",
            "--timeout=5s",
        ],
        60,
    );

    // two samples of the kubelet's Summary are needed for a rate
    let nodes = kubectl_until(kubectl, &["top", "node", node, "--no-headers"], 90);
    let columns: Vec<&str> = nodes.split_whitespace().collect();
    assert_eq!(columns[0], node, "{nodes}");
    assert!(millicores(columns[1]) > 0.0, "{nodes}");
    assert!(columns[3].ends_with("Mi"), "{nodes}");

    let deadline = Instant::now() + Duration::from_secs(60);
    let (busy, idle) = loop {
        let pods = kubectl_until(kubectl, &["top", "pod", "--no-headers"], 60);
        let cpu = |name: &str| {
            pods.lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .map(|l| millicores(l.split_whitespace().nth(1).unwrap()))
        };
        if let (Some(busy), Some(idle)) = (cpu("busy"), cpu("idle")) {
            break (busy, idle);
        }
        assert!(Instant::now() < deadline, "both pods never showed: {pods}");
        std::thread::sleep(Duration::from_secs(1));
    };
    println!("kubectl top node: {nodes}busy pod {busy}m, idle pod {idle}m");
    // a spinning shell uses most of a core, a sleeping one next to nothing
    assert!(busy >= 200.0, "busy pod at {busy}m");
    assert!(idle < 20.0, "idle pod at {idle}m");

    // label selectors, one pod, containers, and the oldest kubectl's v1beta1 client
    let selected = kubectl.ok(&[
        "top",
        "pod",
        "-l",
        "app=idle",
        "--no-headers",
        "--containers",
    ]);
    assert!(
        selected.starts_with("idle") && selected.contains("main"),
        "{selected}"
    );
    assert_eq!(selected.lines().count(), 1, "{selected}");
    let old = Kubectl::new(27, &cluster.server.kubeconfig());
    let one = old.ok(&["top", "pod", "busy", "--no-headers"]);
    assert!(one.starts_with("busy"), "{one}");
    let raw = kubectl.ok(&[
        "get",
        "--raw",
        "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/busy",
    ]);
    let metrics: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(metrics["kind"], "PodMetrics");
    assert_eq!(metrics["containers"][0]["name"], "main");
    let missing = kubectl.run(
        &[
            "get",
            "--raw",
            "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/nope",
        ],
        None,
    );
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("NotFound"),
        "{missing:?}"
    );
}

const BURN: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: burn
spec:
  replicas: 1
  selector:
    matchLabels: {app: burn}
  template:
    metadata:
      labels: {app: burn}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: busybox:1.35
        command: [sh, -c, 'while :; do :; done']
        resources:
          requests: {cpu: 100m}
          limits: {cpu: 200m}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: burn
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: burn}
  minReplicas: 1
  maxReplicas: 3
  metrics:
  - type: Resource
    resource:
      name: cpu
      target: {type: Utilization, averageUtilization: 50}
  behavior:
    scaleDown:
      stabilizationWindowSeconds: 0
";

#[test]
fn an_autoscaler_scales_a_busy_deployment_up_and_back_down() {
    let cluster = RealNode::start("hpa");
    let (node, kubectl) = (cluster.node.as_str(), &cluster.kubectl);
    kubectl_until(kubectl, &["get", "node", node], 30);
    kubectl.ok_with(&["apply", "-f", "-"], Some(BURN));
    let field = |kind: &str, path: &str| {
        kubectl.ok(&["get", kind, "burn", "-o", &format!("jsonpath={{{path}}}")])
    };
    let wait = |what: &str, seconds: u64, check: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        while !check() {
            assert!(
                Instant::now() < deadline,
                "{what} within {seconds} s; autoscaler: {}",
                kubectl.ok(&["get", "hpa", "burn", "-o", "json"])
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    };
    // a pod spinning at its 200m limit uses 200% of its 100m request: 4x the 50% target
    wait("scaled up to the maximum of 3", 150, &|| {
        field("deployment", ".spec.replicas") == "3"
    });
    assert_eq!(field("hpa", ".status.desiredReplicas"), "3");
    let utilization: i64 = field(
        "hpa",
        ".status.currentMetrics[0].resource.current.averageUtilization",
    )
    .parse()
    .unwrap();
    assert!(utilization > 100, "utilization {utilization}%");
    let table = kubectl.ok(&["get", "hpa", "burn", "--no-headers"]);
    let columns: Vec<&str> = table.split_whitespace().collect();
    assert_eq!(columns[1], "Deployment/burn", "{table}");
    assert_eq!(columns[2], "cpu:", "{table}");
    assert!(columns[3].ends_with("%/50%"), "{table}");
    assert_eq!(&columns[4..7], ["1", "3", "3"], "{table}");
    let limited = kubectl.ok(&[
        "get",
        "hpa",
        "burn",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"ScalingLimited\")].reason}",
    ]);
    assert_eq!(limited, "TooManyReplicas");
    let events = kubectl.ok(&[
        "get",
        "events",
        "--field-selector",
        "reason=SuccessfulRescale",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(
        events.contains(
            "New size: 3; reason: cpu resource utilization (percentage of request) above target"
        ),
        "{events}"
    );

    // the same pods at rest: back down to the minimum
    kubectl.ok(&[
        "patch", "deployment", "burn", "--type=json", "-p",
        r#"[{"op": "replace", "path": "/spec/template/spec/containers/0/command", "value": ["sleep", "3600"]}]"#,
    ]);
    wait("scaled back down to 1", 180, &|| {
        field("deployment", ".spec.replicas") == "1"
    });
    assert_eq!(field("hpa", ".status.desiredReplicas"), "1");
}
