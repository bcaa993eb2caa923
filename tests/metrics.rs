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
    let jobs: String = targets
        .iter()
        .map(|(job, address)| {
            format!("  - job_name: {job}\n    static_configs:\n      - targets: ['{address}']\n")
        })
        .collect();
    prometheus_with(dir, &jobs)
}

/// A real Prometheus with these scrape jobs (YAML list items), scraping every second.
fn prometheus_with(dir: &Path, jobs: &str) -> (ChildGuard, u16) {
    let port = free_port();
    let config =
        format!("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n{jobs}");
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
    // blackbox-style probes through the node exporter's /probe: one answering target, one not
    let closed = free_port();
    let jobs = format!(
        "  - job_name: node-exporter\n    static_configs:\n      - targets: ['{address}']\n\
         \x20 - job_name: blackbox\n    metrics_path: /probe\n    params: {{module: [http_2xx]}}\n    \
         static_configs:\n      - targets: ['http://{address}/metrics', 'http://127.0.0.1:{closed}/']\n    \
         relabel_configs:\n      - {{source_labels: [__address__], target_label: __param_target}}\n      \
         - {{source_labels: [__param_target], target_label: instance}}\n      \
         - {{target_label: __address__, replacement: '{address}'}}\n"
    );
    let (_prometheus, prometheus_port) = prometheus_with(dir.path(), &jobs);

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

    let probes = query_until(
        prometheus_port,
        "probe_success{job=\"blackbox\"}",
        |result| result.len() == 2,
    );
    for probe in &probes {
        let expected = if probe["metric"]["instance"]
            .as_str()
            .unwrap()
            .ends_with("/metrics")
        {
            1.0
        } else {
            0.0
        };
        assert_eq!(number(probe), expected, "{probes:?}");
    }
    let status = query(
        prometheus_port,
        "probe_http_status_code{job=\"blackbox\"} == 200",
    );
    assert_eq!(status.len(), 1, "{status:?}");

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
        ports:
        - {name: http, containerPort: 8080}
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
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

    // the scheduler counted the pods it placed, as kube-scheduler does
    let scheduler: u16 = std::fs::read_to_string(data.join("scheduler/address"))
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let (status, text) = get(scheduler, "/metrics");
    assert_eq!(status, 200);
    let scheduled = parse(&text)
        .unwrap()
        .into_iter()
        .find(|f| f.name == "scheduler_schedule_attempts_total")
        .and_then(|f| {
            f.samples
                .into_iter()
                .find(|s| s.labels.contains(&("result".into(), "scheduled".into())))
        })
        .map_or(0.0, |s| s.value);
    assert!(scheduled >= 3.0, "{text}");
    assert!(text.contains("scheduler_pod_scheduling_sli_duration_seconds_bucket"));

    let address = server.state_metrics_address();
    let port: u16 = address.rsplit(':').next().unwrap().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let state = loop {
        let state = scrape(port);
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
    // the Service's endpoints, as Endpoints and as EndpointSlices
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = scrape(port);
        let addresses = values(
            &state,
            "kube_endpoint_address",
            &[
                ("endpoint", "web"),
                ("port_number", "8080"),
                ("ready", "true"),
            ],
        );
        let slices = values(
            &state,
            "kube_endpointslice_endpoints",
            &[("ready", "true"), ("targetref_kind", "Pod")],
        );
        if addresses.len() == 3 && slices.len() >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "endpoints not exported: {addresses:?} {slices:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Kelson's Applications too, whatever their state
    kubectl.ok_with(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: gitops.kelson.dev/v1alpha1\nkind: Application\nmetadata:\n  name: demo\n\
             spec:\n  source:\n    repoURL: file:///nonexistent/repo.git\n    path: apps\n\
             \x20 destination:\n    namespace: default\n",
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = scrape(port);
        let info = values(
            &state,
            "kelson_application_info",
            &[
                ("application", "demo"),
                ("repo", "file:///nonexistent/repo.git"),
            ],
        );
        let ready = values(
            &state,
            "kelson_application_status_condition",
            &[
                ("application", "demo"),
                ("condition", "Ready"),
                ("status", "false"),
            ],
        );
        if info == [1.0] && ready == [1.0] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no Application metrics: {info:?} {ready:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

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
        let state = scrape(port);
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
    // promtool reads the certificates the configuration names: point it at a real server's
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    std::fs::create_dir_all(&data).unwrap();
    let _server = KelsonProcess::server(Path::new(KELSON), &data, &[]).unwrap();
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/manifests/prometheus.yml"
    ))
    .unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        shipped.replace("/var/lib/kelson", data.to_str().unwrap()),
    )
    .unwrap();
    let output = std::process::Command::new("/usr/bin/promtool")
        .args(["check", "config"])
        .arg(&config)
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
    fn data(&self) -> std::path::PathBuf {
        self._dir.path().join("server")
    }

    fn start(prefix: &str) -> Self {
        Self::start_with(prefix, &[])
    }

    fn start_with(prefix: &str, args: &[&str]) -> Self {
        let node = format!("e2e-{prefix}-{}", std::process::id());
        let cleanup = RuntimeCleanup::new(&node);
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("server");
        std::fs::create_dir_all(&data).unwrap();
        let node_arg = format!("--node-name={node}");
        let mut all = vec![node_arg.as_str()];
        all.extend(args);
        let server = KelsonProcess::server(Path::new(KELSON), &data, &all).unwrap();
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
    // the kubelet's resource metrics, as metrics-server reads them
    let resource = kubectl.ok(&[
        "get",
        "--raw",
        &format!("/api/v1/nodes/{node}/proxy/metrics/resource"),
    ]);
    let families = parse(&resource).expect("the resource metrics parse");
    let family = |name: &str| {
        families
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("no {name} in {resource}"))
    };
    let busy_cpu = family("container_cpu_usage_seconds_total")
        .samples
        .iter()
        .find(|s| s.labels.contains(&("pod".into(), "busy".into())))
        .expect("the busy container's CPU");
    assert_eq!(busy_cpu.labels[0], ("container".into(), "main".into()));
    assert!(busy_cpu.value > 0.0);
    assert!(resource.contains("pod_memory_working_set_bytes{namespace=\"default\",pod=\"busy\"} "));
    assert!(family("node_memory_working_set_bytes").samples[0].value > 0.0);
    // samples carry the time they were read: value then a millisecond timestamp
    let line = resource
        .lines()
        .find(|l| l.starts_with("node_cpu_usage_seconds_total "))
        .unwrap();
    let stamp: i64 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(stamp > 1_700_000_000_000, "{line}");
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

#[test]
fn container_metrics_match_what_runs_and_feed_kubernetes_mixin_rules() {
    let cluster = RealNode::start("cadvisor");
    let (node, kubectl) = (cluster.node.as_str(), &cluster.kubectl);
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "burn"},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": "busybox:1.35",
                "command": ["sh", "-c", "while :; do :; done"],
                "resources": {"requests": {"cpu": "100m", "memory": "16Mi"},
                              "limits": {"cpu": "200m", "memory": "64Mi"}}}]},
    });
    kubectl.ok_with(&["apply", "-f", "-"], Some(&pod.to_string()));
    kubectl_until(
        kubectl,
        &["wait", "--for=condition=Ready", "pod/burn", "--timeout=5s"],
        60,
    );
    // through the API server's node proxy, as kubectl reaches the kubelet
    let path = format!("/api/v1/nodes/{node}/proxy/metrics/cadvisor");
    let deadline = Instant::now() + Duration::from_secs(30);
    let families = loop {
        let families = parse(&kubectl.ok(&["get", "--raw", &path])).expect("the exposition parses");
        let throttled = families.iter().any(|f| {
            f.name == "container_cpu_cfs_throttled_periods_total"
                && f.samples.iter().any(|s| s.value > 0.0)
        });
        if throttled {
            break families;
        }
        assert!(Instant::now() < deadline, "no throttling reported");
        std::thread::sleep(Duration::from_secs(1));
    };
    let sample = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        let family = families.iter().find(|f| f.name == name)?;
        family.sample(labels).map(|s| s.value)
    };
    let main = [
        ("container", "main"),
        ("pod", "burn"),
        ("namespace", "default"),
    ];
    let cpu = sample(
        "container_cpu_usage_seconds_total",
        &[main[0], main[1], main[2], ("cpu", "total")],
    )
    .expect("cpu usage of the container");
    assert!(cpu > 0.0);
    assert!(sample("container_memory_working_set_bytes", &main).unwrap() > 0.0);
    assert_eq!(sample("container_spec_cpu_quota", &main), Some(20000.0));
    assert_eq!(sample("container_spec_cpu_period", &main), Some(100_000.0));
    assert_eq!(
        sample("container_spec_memory_limit_bytes", &main),
        Some(67_108_864.0)
    );
    // its writable layer, on the filesystem of containerd's snapshots
    let layer = families
        .iter()
        .find(|f| f.name == "container_fs_usage_bytes")
        .and_then(|f| f.sample(&main))
        .expect("the container's filesystem usage");
    let device = layer
        .labels
        .iter()
        .find(|(k, _)| k == "device")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    assert!(!device.is_empty(), "a device label");
    let limit = sample("container_fs_limit_bytes", &main).unwrap();
    assert!(limit > layer.value, "{limit} > {}", layer.value);
    let info = families
        .iter()
        .find(|f| f.name == "container_cpu_usage_seconds_total")
        .unwrap();
    let labels: Vec<&str> = info.samples[0]
        .labels
        .iter()
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(
        labels,
        [
            "container",
            "cpu",
            "id",
            "image",
            "name",
            "namespace",
            "pod"
        ]
    );
    let container = info
        .samples
        .iter()
        .find(|s| {
            s.labels
                .iter()
                .any(|(k, v)| k == "container" && v == "main")
        })
        .unwrap();
    let id = &container.labels[2].1;
    assert!(id.starts_with("/kubepods/burstable/pod"), "{id}");
    assert!(
        container.labels[3].1.contains("busybox"),
        "{:?}",
        container.labels
    );
    // the pod's own cgroup, and its network on the sandbox row
    assert!(
        sample(
            "container_memory_working_set_bytes",
            &[("container", ""), ("image", ""), ("pod", "burn")]
        )
        .is_some()
    );
    assert!(
        sample(
            "container_network_receive_bytes_total",
            &[("pod", "burn"), ("interface", "eth0")]
        )
        .is_some()
    );
    assert!(sample("container_memory_working_set_bytes", &[("id", "/")]).unwrap() > 0.0);

    // a real Prometheus scrapes it through the API server (job "cadvisor", as the mixin names it)
    let token = std::fs::read_to_string(cluster.data().join("tokens.csv")).unwrap();
    let token = token.split(',').next().unwrap();
    let address = cluster.server.url.trim_start_matches("https://").to_owned();
    let jobs = format!(
        "  - job_name: cadvisor\n    scheme: https\n    metrics_path: {path}\n    \
         authorization: {{credentials: {token}}}\n    tls_config: {{ca_file: {ca}}}\n    \
         static_configs:\n      - targets: ['{address}']\n",
        ca = cluster.data().join("tls/ca.crt").display()
    );
    let (_prometheus, port) = prometheus_with(&cluster.data().join("prometheus"), &jobs);
    // node_namespace_pod_container:container_cpu_usage_seconds_total:sum_irate's expression
    let rate = query_until(
        port,
        "sum by (namespace, pod, container) (irate(container_cpu_usage_seconds_total{job=\"cadvisor\", image!=\"\"}[1m]))",
        |result| result.iter().any(|r| r["metric"]["pod"] == "burn"),
    );
    let burn = rate.iter().find(|r| r["metric"]["pod"] == "burn").unwrap();
    let cores = number(burn);
    assert!(
        (0.05..=0.3).contains(&cores),
        "burn at {cores} cores: {rate:?}"
    );
    // CPUThrottlingHigh: most periods throttled
    let throttling = query_until(
        port,
        "sum by (container, pod, namespace) (increase(container_cpu_cfs_throttled_periods_total{container!=\"\"}[1m])) / sum by (container, pod, namespace) (increase(container_cpu_cfs_periods_total[1m]))",
        |result| result.iter().any(|r| r["metric"]["pod"] == "burn"),
    );
    let burn = throttling
        .iter()
        .find(|r| r["metric"]["pod"] == "burn")
        .unwrap();
    assert!(number(burn) > 0.25, "{throttling:?}");
}

#[test]
fn prometheus_discovers_and_scrapes_every_endpoint() {
    let cluster = RealNode::start("sd");
    let (node, kubectl) = (cluster.node.as_str(), &cluster.kubectl);
    kubectl_until(kubectl, &["get", "node", node], 30);
    let data = cluster.data();
    let token = std::fs::read_to_string(data.join("tokens.csv")).unwrap();
    let token = token.split(',').next().unwrap().to_owned();
    let api = cluster.server.url.trim_start_matches("https://").to_owned();
    let tls = data.join("tls");
    let read = |file: &str| {
        std::fs::read_to_string(data.join(file))
            .unwrap()
            .trim()
            .to_owned()
    };
    let (state, gitops, node_exporter, scheduler, controllers) = (
        read("state-metrics/address"),
        read("gitops/address"),
        read("agent/node-exporter/address"),
        read("scheduler/address"),
        read("controller-manager/address"),
    );
    // the service discovery answers with Prometheus' Kubernetes labels
    let sd = kubectl.ok(&["get", "--raw", "/kelson/v1/prometheus-sd?role=node"]);
    let sd: serde_json::Value = serde_json::from_str(&sd).unwrap();
    assert_eq!(sd[0]["labels"]["__meta_kubernetes_node_name"], node, "{sd}");
    let bad = kubectl.run(
        &["get", "--raw", "/kelson/v1/prometheus-sd?role=ingress"],
        None,
    );
    assert!(!bad.status.success());

    let kubelet_tls = format!(
        "tls_config: {{ca_file: {ca}, cert_file: {cert}, key_file: {key}}}",
        ca = tls.join("ca.crt").display(),
        cert = tls.join("kubelet-client.crt").display(),
        key = tls.join("kubelet-client.key").display(),
    );
    // Prometheus 2.42 sends http_sd credentials without the Bearer scheme unless told
    let sd_config = format!(
        "http_sd_configs:\n      - url: https://{api}/kelson/v1/prometheus-sd?role=node\n        \
         authorization: {{type: Bearer, credentials: {token}}}\n        tls_config: {{ca_file: {ca}}}",
        ca = tls.join("ca.crt").display()
    );
    let jobs = format!(
        "  - job_name: kubelet\n    scheme: https\n    {kubelet_tls}\n    {sd_config}\n\
         \x20   relabel_configs:\n      - {{source_labels: [__meta_kubernetes_node_name], target_label: node}}\n\
         \x20 - job_name: cadvisor\n    scheme: https\n    metrics_path: /metrics/cadvisor\n    {kubelet_tls}\n    {sd_config}\n\
         \x20 - job_name: apiserver\n    scheme: https\n    authorization: {{credentials: {token}}}\n    \
         tls_config: {{ca_file: {ca}}}\n    static_configs:\n      - targets: ['{api}']\n\
         \x20 - job_name: node-exporter\n    static_configs:\n      - targets: ['{node_exporter}']\n\
         \x20 - job_name: kube-state-metrics\n    static_configs:\n      - targets: ['{state}']\n\
         \x20 - job_name: kelson-gitops\n    static_configs:\n      - targets: ['{gitops}']\n\
         \x20 - job_name: kube-scheduler\n    static_configs:\n      - targets: ['{scheduler}']\n\
         \x20 - job_name: kube-controller-manager\n    static_configs:\n      - targets: ['{controllers}']\n",
        ca = tls.join("ca.crt").display()
    );
    let (_prometheus, port) = prometheus_with(&data.join("prometheus"), &jobs);
    let jobs = [
        "kubelet",
        "cadvisor",
        "apiserver",
        "node-exporter",
        "kube-state-metrics",
        "kelson-gitops",
        "kube-scheduler",
        "kube-controller-manager",
    ];
    let up = query_until(port, "up", |result| {
        jobs.iter().all(|job| {
            result
                .iter()
                .any(|r| r["metric"]["job"] == *job && number(r) == 1.0)
        })
    });
    assert_eq!(up.len(), jobs.len(), "{up:?}");
    // the relabelled node label joins kubelet series to the node, as kubernetes-mixin does
    let named = query(port, "kubelet_node_name{job=\"kubelet\"}");
    assert_eq!(named[0]["metric"]["node"], node, "{named:?}");
    // the API server's SLO histogram has the buckets the mixin selects
    let buckets = query(
        port,
        "count by (le) (apiserver_request_sli_duration_seconds_bucket{job=\"apiserver\",le=~\"1|5|30\"})",
    );
    assert_eq!(buckets.len(), 3, "{buckets:?}");
    // with the labels the mixin's availability rules select on (verbs as kube-apiserver
    // writes them, scope, subresource)
    let reads = query(
        port,
        "sum by (verb, scope) (apiserver_request_sli_duration_seconds_count{job=\"apiserver\",\
         verb=~\"LIST|GET\",subresource!~\"proxy|attach|log|exec|portforward\",\
         scope=~\"resource|namespace|cluster\"})",
    );
    assert!(
        reads.iter().any(|r| r["metric"]["verb"] == "LIST")
            && reads.iter().any(|r| r["metric"]["verb"] == "GET"),
        "{reads:?}"
    );
    let api_writes = query(
        port,
        "sum(apiserver_request_total{job=\"apiserver\",verb=~\"POST|PUT|PATCH|APPLY|DELETE\",component=\"apiserver\",code=~\"2..\"})",
    );
    assert!(
        api_writes.first().map_or(0.0, number) > 0.0,
        "{api_writes:?}"
    );
    // the scheduler counted the node's pods it placed (the test's own pods: none here, so the
    // families exist with their queues)
    let pending = query(port, "scheduler_pending_pods{job=\"kube-scheduler\"}");
    assert_eq!(pending.len(), 4, "{pending:?}");
    // the storage layer, as kube-apiserver's (every write timed; objects counted per resource)
    let writes = query(
        port,
        "sum(etcd_requests_total{job=\"apiserver\",operation=\"create\",type=\"namespaces\"})",
    );
    assert!(writes.first().map_or(0.0, number) >= 1.0, "{writes:?}");
    let latency = query(
        port,
        "count(etcd_request_duration_seconds_bucket{job=\"apiserver\",operation=\"get\"})",
    );
    assert!(latency.first().map_or(0.0, number) > 0.0, "{latency:?}");
    let stored = query(
        port,
        "apiserver_storage_objects{job=\"apiserver\",resource=\"namespaces\"}",
    );
    assert!(stored.first().map_or(0.0, number) >= 4.0, "{stored:?}");
    // each controller's workqueue, as kube-controller-manager's (the default ServiceAccount of
    // every namespace went through the serviceaccount queue)
    let adds = query(
        port,
        "workqueue_adds_total{job=\"kube-controller-manager\",name=\"serviceaccount\"}",
    );
    assert!(adds.first().map_or(0.0, number) >= 4.0, "{adds:?}");
    let queues = query(
        port,
        "count(workqueue_depth{job=\"kube-controller-manager\",name=~\"deployment|replicaset|daemonset|statefulset|job|cronjob|endpoint|namespace\"})",
    );
    assert_eq!(queues.first().map_or(0.0, number), 8.0, "{queues:?}");
    // every API client's requests, as client-go counts them (the mixin's KubeClientErrors)
    let clients = query(
        port,
        "count by (job) (rest_client_requests_total{code=~\"2..\",method=\"GET\"})",
    );
    for job in [
        "kubelet",
        "kube-scheduler",
        "kube-controller-manager",
        "kelson-gitops",
    ] {
        assert!(
            clients.iter().any(|c| c["metric"]["job"] == job),
            "no client requests from {job}: {clients:?}"
        );
    }
    // every component reports its process
    let processes = query(port, "count by (job) (process_resident_memory_bytes)");
    for job in [
        "kubelet",
        "apiserver",
        "node-exporter",
        "kelson-gitops",
        "kube-controller-manager",
    ] {
        assert!(
            processes.iter().any(|p| p["metric"]["job"] == job),
            "no process metrics from {job}: {processes:?}"
        );
    }
}

/// One span as an OTLP collector received it.
#[derive(Clone, Debug)]
struct ReceivedSpan {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attributes: BTreeMap<String, String>,
}

/// An OTLP/gRPC trace collector on 127.0.0.1 keeping what it receives.
#[derive(Clone, Default)]
struct Collector(std::sync::Arc<parking_lot::Mutex<Vec<ReceivedSpan>>>);

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService
    for Collector
{
    async fn export(
        &self,
        request: tonic::Request<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
        >,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
        >,
        tonic::Status,
    > {
        use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value::Value};
        let text = |attributes: &[KeyValue]| -> BTreeMap<String, String> {
            attributes
                .iter()
                .filter_map(|kv| {
                    let value = match kv.value.as_ref()?.value.as_ref()? {
                        Value::StringValue(s) => s.clone(),
                        Value::BoolValue(b) => b.to_string(),
                        Value::IntValue(i) => i.to_string(),
                        Value::DoubleValue(d) => d.to_string(),
                        _ => return None,
                    };
                    Some((kv.key.clone(), value))
                })
                .collect()
        };
        let mut received = self.0.lock();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .as_ref()
                .map(|r| text(&r.attributes))
                .and_then(|a| a.get("service.name").cloned())
                .unwrap_or_default();
            for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                received.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name.clone(),
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent: hex::encode(&span.parent_span_id),
                    attributes: text(&span.attributes),
                });
            }
        }
        Ok(tonic::Response::new(
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse {
                partial_success: None,
            },
        ))
    }
}

impl Collector {
    /// Starts one on a free port; the runtime serving it and the port.
    fn start() -> (Self, tokio::runtime::Runtime, u16) {
        use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
        let collector = Self::default();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let port = free_port();
        let service = TraceServiceServer::new(collector.clone());
        runtime.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve(([127, 0, 0, 1], port).into())
                .await
        });
        wait_listening(port, "the trace collector");
        (collector, runtime, port)
    }

    /// Waits until `found` picks something out of the spans received so far.
    fn until<T>(&self, what: &str, found: impl Fn(&[ReceivedSpan]) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(value) = found(&self.0.lock()) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} among {:#?}",
                self.0
                    .lock()
                    .iter()
                    .map(|s| &s.name)
                    .collect::<BTreeSet<_>>()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

#[test]
fn traces_follow_requests_reconciles_gitops_syncs_and_pod_starts() {
    let (collector, _runtime, port) = Collector::start();
    let endpoint = format!("--otlp-endpoint=http://127.0.0.1:{port}");
    let cluster = RealNode::start_with(
        "traces",
        &[&endpoint, "--log=info,kelson_apiserver::rest=debug"],
    );
    let (node, kubectl) = (cluster.node.as_str(), &cluster.kubectl);
    kubectl_until(kubectl, &["get", "node", node], 30);

    // a request that names its caller's trace joins it
    let data = cluster.data();
    let token = std::fs::read_to_string(data.join("tokens.csv")).unwrap();
    let token = token.split(',').next().unwrap().to_owned();
    let caller_trace = "0af7651916cd43dd8448eb211c80319c";
    let caller_span = "b7ad6b7169203331";
    let curl = std::process::Command::new("curl")
        .args(["-sSf", "--cacert"])
        .arg(data.join("tls/ca.crt"))
        .arg("-H")
        .arg(format!("Authorization: Bearer {token}"))
        .arg("-H")
        .arg(format!("traceparent: 00-{caller_trace}-{caller_span}-01"))
        .arg(format!(
            "{}/api/v1/namespaces/default/configmaps",
            cluster.server.url
        ))
        .output()
        .unwrap();
    assert!(curl.status.success(), "{curl:?}");
    let joined = collector.until("span of the traced request", |spans| {
        spans
            .iter()
            .find(|s| s.trace_id == caller_trace && s.parent == caller_span)
            .cloned()
    });
    assert_eq!(joined.service, "kelson-server");
    assert_eq!(joined.name, "list configmaps");
    assert_eq!(joined.attributes["http.response.status_code"], "200");
    // and its log line names the trace
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("trace_id={caller_trace}")) && l.contains("request")),
        "no log line with the trace id"
    );

    // a Deployment: its creation, the controllers' reconciles (their API calls inside their
    // traces), and its pod's start on the node
    let deployment = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "traced"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "traced"}},
            "template": {"metadata": {"labels": {"app": "traced"}},
                "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "main",
                    "image": "busybox:1.35", "command": ["sleep", "3600"]}]}}}});
    kubectl.ok_with(&["apply", "-f", "-"], Some(&deployment.to_string()));
    kubectl_until(
        kubectl,
        &["rollout", "status", "deployment/traced", "--timeout=5s"],
        90,
    );
    collector.until("span of the Deployment's creation", |spans| {
        spans
            .iter()
            .find(|s| s.name == "patch deployments" || s.name == "create deployments")
            .cloned()
    });
    let (reconcile, call) = collector.until("ReplicaSet reconcile creating a pod", |spans| {
        spans
            .iter()
            .filter(|s| s.name == "reconcile" && s.attributes["controller"] == "replicaset")
            .find_map(|r| {
                let call = spans
                    .iter()
                    .find(|s| s.parent == r.span_id && s.name == "create pods")?;
                Some((r.clone(), call.clone()))
            })
    });
    assert_eq!(reconcile.trace_id, call.trace_id);
    let started = collector.until("pod start", |spans| {
        spans
            .iter()
            .find(|s| {
                s.name == "pod start"
                    && s.attributes
                        .get("pod")
                        .is_some_and(|p| p.starts_with("traced-"))
            })
            .cloned()
    });
    collector.until("container start inside the pod start", |spans| {
        spans
            .iter()
            .find(|s| s.name == "start container" && s.trace_id == started.trace_id)
            .cloned()
    });

    // a GitOps sync: the source rendered and applied, inside one trace
    let repo = kelson_testing::git::GitRepo::new(cluster._dir.path(), "app");
    repo.write(
        "apps/settings.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: traced-settings\ndata:\n  color: blue\n",
    );
    let sha = repo.commit("settings");
    let application = format!(
        "apiVersion: gitops.kelson.dev/v1alpha1\nkind: Application\nmetadata:\n  name: traced\n  \
         namespace: default\nspec:\n  source:\n    repoURL: {}\n    targetRevision: main\n    \
         path: apps\n  syncPolicy:\n    automated: {{prune: true}}\n",
        repo.url()
    );
    kubectl.ok_with(&["apply", "-f", "-"], Some(&application));
    let sync = collector.until("GitOps sync", |spans| {
        spans
            .iter()
            .find(|s| {
                s.name == "gitops sync"
                    && s.attributes["application"] == "traced"
                    && s.attributes.get("revision") == Some(&sha)
            })
            .cloned()
    });
    collector.until("apply inside the sync", |spans| {
        spans
            .iter()
            .find(|s| {
                s.name == "apply"
                    && s.trace_id == sync.trace_id
                    && s.attributes.get("object").map(String::as_str) == Some("traced-settings")
            })
            .cloned()
    });
}
