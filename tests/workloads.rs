//! End-to-end: workloads on `kelson server` with hollow nodes, driven by the real kubectl.
//!
//! A CronJob fires on schedule (the next minute), its Job completes, `kubectl get cronjobs` and
//! the events show it, `kubectl create job --from=cronjob/…` runs it by hand, suspend stops it,
//! and a bad schedule is refused with the field named. `kubectl drain` cordons a node and evicts
//! its pods only as far as their PodDisruptionBudget allows, leaving daemon pods in place. A
//! DaemonSet and a StatefulSet (with its claims provisioned) roll out, show their history and
//! roll back with `kubectl rollout`; quotas, storage classes and claims print as kubectl shows
//! them. `kill -9` of the server mid-rollout: after a restart the rollout finishes with no
//! duplicate or orphaned ReplicaSets or pods.

use std::path::Path;
use std::time::{Duration, Instant};

use kelson_testing::{ChildGuard, KelsonProcess, Kubectl, wait_for};

const KELSON: &str = env!("CARGO_BIN_EXE_kelson");

const CRONJOB: &str = r#"
apiVersion: batch/v1
kind: CronJob
metadata: {name: tick}
spec:
  schedule: "* * * * *"
  timeZone: Europe/Berlin
  concurrencyPolicy: Forbid
  jobTemplate:
    metadata: {labels: {app: tick}}
    spec:
      template:
        metadata: {annotations: {kelson.dev/hollow-run-seconds: "0.5"}}
        spec:
          restartPolicy: Never
          containers: [{name: c, image: busybox:1.36, command: [date]}]
"#;

/// `kelson server` with `nodes` hollow nodes; everything ends when dropped.
struct Cluster {
    _nodes: ChildGuard,
    _server: KelsonProcess,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start(nodes: usize) -> (Self, Kubectl) {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("server");
        std::fs::create_dir_all(&data).unwrap();
        let server = KelsonProcess::server(Path::new(KELSON), &data, &[]).unwrap();
        let kubeconfig = server.kubeconfig();
        let nodes = ChildGuard::spawn(
            KELSON,
            &[
                "sim".to_owned(),
                format!("--nodes={nodes}"),
                "--start-delay-ms=100".to_owned(),
                "--kubeconfig".to_owned(),
                kubeconfig.display().to_string(),
            ],
        );
        let k = Kubectl::new(33, &kubeconfig);
        (
            Self {
                _nodes: nodes,
                _server: server,
                _dir: dir,
            },
            k,
        )
    }
}

#[test]
fn a_cronjob_fires_on_schedule() {
    let (_cluster, k) = Cluster::start(1);

    // a bad schedule is refused, naming the field
    let refused = k.fails(
        &[
            "create",
            "cronjob",
            "bad",
            "--image=busybox:1.36",
            "--schedule=61 * * * *",
        ],
        None,
    );
    assert!(
        refused.contains(r#"spec.schedule: Invalid value: "61 * * * *""#),
        "{refused}"
    );

    k.ok_with(&["apply", "-f", "-"], Some(CRONJOB));
    let created = Instant::now();
    let job = wait_for(Duration::from_secs(90), "the first scheduled Job", || {
        let names = k.ok(&[
            "get",
            "jobs",
            "-l",
            "app=tick",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ]);
        (!names.is_empty()).then_some(names)
    });
    eprintln!(
        "{job} started {:?} after the CronJob was made",
        created.elapsed()
    );
    assert!(!job.contains(' '), "one run: {job}");
    let scheduled = k.ok(&[
        "get",
        "job",
        &job,
        "-o",
        "jsonpath={.metadata.annotations.batch\\.kubernetes\\.io/cronjob-scheduled-timestamp}",
    ]);
    assert!(
        scheduled.ends_with(":00+01:00") || scheduled.ends_with(":00+02:00"),
        "a whole minute in Berlin time: {scheduled}"
    );
    k.ok_within(
        Duration::from_secs(60),
        &[
            "wait",
            "--for=condition=Complete",
            &format!("job/{job}"),
            "--timeout=60s",
        ],
        None,
    );
    let listed = wait_for(Duration::from_secs(20), "the CronJob's status", || {
        let line = k.ok(&["get", "cronjob", "tick", "--no-headers"]);
        let fields: Vec<&str> = line.split_whitespace().collect();
        // NAME SCHEDULE(5 words) TIMEZONE SUSPEND ACTIVE LAST-SCHEDULE AGE
        (fields.len() == 11 && fields[9] != "<none>" && fields[8] == "0").then_some(line)
    });
    assert!(
        listed.contains("Europe/Berlin") && listed.contains(" false "),
        "{listed}"
    );
    let succeeded = k.ok(&[
        "get",
        "cronjob",
        "tick",
        "-o",
        "jsonpath={.status.lastSuccessfulTime}",
    ]);
    assert!(!succeeded.is_empty());
    let events = k.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=tick",
        "-o",
        "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
    ]);
    assert!(
        events.contains(&format!("SuccessfulCreate: Created job {job}")),
        "{events}"
    );

    // by hand, as an operator reruns a nightly job
    k.ok(&["create", "job", "--from=cronjob/tick", "rerun"]);
    let owner = k.ok(&[
        "get",
        "job",
        "rerun",
        "-o",
        "jsonpath={.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name} {.metadata.annotations.cronjob\\.kubernetes\\.io/instantiate}",
    ]);
    assert_eq!(owner, "CronJob/tick manual");
    k.ok_within(
        Duration::from_secs(60),
        &[
            "wait",
            "--for=condition=Complete",
            "job/rerun",
            "--timeout=60s",
        ],
        None,
    );

    // suspended: shown, and nothing more starts
    k.ok(&[
        "patch",
        "cronjob",
        "tick",
        "-p",
        r#"{"spec":{"suspend":true}}"#,
    ]);
    let suspended = k.ok(&["get", "cronjob", "tick", "-o", "jsonpath={.spec.suspend}"]);
    assert_eq!(suspended, "true");
}

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: c, image: busybox:1.36, command: [httpd, -f]}]
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web}
spec:
  minAvailable: 2
  selector: {matchLabels: {app: web}}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers: [{name: c, image: busybox:1.36, command: [sleep, "3600"]}]
"#;

#[test]
fn drain_moves_pods_within_their_disruption_budget() {
    let (_cluster, k) = Cluster::start(2);
    k.ok_with(&["apply", "-f", "-"], Some(WEB));
    k.ok_within(
        Duration::from_secs(60),
        &["rollout", "status", "deployment/web", "--timeout=60s"],
        None,
    );
    k.ok_within(
        Duration::from_secs(60),
        &["rollout", "status", "daemonset/agent", "--timeout=60s"],
        None,
    );
    let placed = |k: &Kubectl| -> Vec<String> {
        k.ok(&[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={range .items[*]}{.spec.nodeName}{\"\\n\"}{end}",
        ])
        .lines()
        .map(str::to_owned)
        .collect()
    };
    let node = placed(&k)[0].clone();
    // the budget's status, as kubectl shows it
    let budget = wait_for(Duration::from_secs(20), "the budget's status", || {
        let line = k.ok(&["get", "pdb", "web", "--no-headers"]);
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.len() == 5 && fields[3] == "0").then_some(line)
    });
    assert!(
        budget.starts_with("web ") && budget.contains(" 2 "),
        "{budget}"
    );

    // two must stay available: the drain cordons the node, is refused, and gives up
    let refused = k.fails(
        &["drain", &node, "--ignore-daemonsets", "--timeout=8s"],
        None,
    );
    assert!(
        refused.contains("Cannot evict pod as it would violate the pod's disruption budget"),
        "{refused}"
    );
    assert_eq!(
        k.ok(&["get", "node", &node, "-o", "jsonpath={.spec.unschedulable}"]),
        "true"
    );
    assert_eq!(placed(&k).len(), 2, "nothing was evicted");

    // one may go at a time: the drain evicts, the Deployment replaces on the other node
    k.ok(&[
        "patch",
        "pdb",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"minAvailable":1}}"#,
    ]);
    let drained = k.ok_within(
        Duration::from_secs(120),
        &["drain", &node, "--ignore-daemonsets", "--timeout=110s"],
        None,
    );
    assert!(drained.contains("drained"), "{drained}");
    k.ok_within(
        Duration::from_secs(60),
        &["rollout", "status", "deployment/web", "--timeout=60s"],
        None,
    );
    let now = wait_for(Duration::from_secs(30), "both replicas elsewhere", || {
        let now = placed(&k);
        (now.len() == 2 && !now.contains(&node)).then_some(now)
    });
    eprintln!("drained {node}; replicas now on {now:?}");
    // the daemon pod stays: drain --ignore-daemonsets skips it and the cordon does not move it
    let daemon_pods = k.ok(&[
        "get",
        "pods",
        "-l",
        "app=agent",
        "-o",
        "jsonpath={range .items[*]}{.spec.nodeName}{\"\\n\"}{end}",
    ]);
    assert!(daemon_pods.lines().any(|n| n == node), "{daemon_pods}");
    assert_eq!(daemon_pods.lines().count(), 2, "{daemon_pods}");
    k.ok(&["uncordon", &node]);
}

const AGENT: &str = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, annotations: {kubernetes.io/change-cause: first}}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers: [{name: c, image: "busybox:1.36", command: [sleep, "3600"]}]
"#;

#[test]
fn a_daemonset_rolls_out_and_back_with_kubectl() {
    let (_cluster, k) = Cluster::start(3);
    k.ok_with(&["apply", "-f", "-"], Some(AGENT));
    let status = k.ok_within(
        Duration::from_secs(60),
        &["rollout", "status", "daemonset/agent", "--timeout=60s"],
        None,
    );
    assert!(status.contains("successfully rolled out"), "{status}");
    let images = |k: &Kubectl| -> Vec<String> {
        let mut images: Vec<String> = k
            .ok(&[
                "get",
                "pods",
                "-l",
                "app=agent",
                "-o",
                "jsonpath={range .items[*]}{.spec.nodeName} {.spec.containers[0].image}{\"\\n\"}{end}",
            ])
            .lines()
            .map(str::to_owned)
            .collect();
        images.sort();
        images
    };
    assert_eq!(
        images(&k),
        [
            "hollow-0 busybox:1.36",
            "hollow-1 busybox:1.36",
            "hollow-2 busybox:1.36"
        ]
    );
    let row = k.ok(&["get", "daemonset", "agent", "--no-headers"]);
    let fields: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&fields[..6], ["agent", "3", "3", "3", "3", "3"], "{row}");

    k.ok(&["set", "image", "daemonset/agent", "c=busybox:1.37"]);
    k.ok(&[
        "annotate",
        "daemonset/agent",
        "--overwrite",
        "kubernetes.io/change-cause=upgrade",
    ]);
    k.ok_within(
        Duration::from_secs(60),
        &["rollout", "status", "daemonset/agent", "--timeout=60s"],
        None,
    );
    let after = wait_for(Duration::from_secs(20), "the new image everywhere", || {
        let now = images(&k);
        (now.len() == 3 && now.iter().all(|l| l.ends_with("busybox:1.37"))).then_some(now)
    });
    eprintln!("rolled out: {after:?}");
    let history = k.ok(&["rollout", "history", "daemonset/agent"]);
    let revisions: Vec<&str> = history
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(revisions.len(), 2, "{history}");
    assert!(
        revisions[0].starts_with('1') && revisions[0].contains("first"),
        "{history}"
    );
    let first = k.ok(&["rollout", "history", "daemonset/agent", "--revision=1"]);
    assert!(first.contains("busybox:1.36"), "{first}");

    let undo = k.ok(&["rollout", "undo", "daemonset/agent"]);
    assert!(undo.contains("rolled back"), "{undo}");
    k.ok_within(
        Duration::from_secs(60),
        &["rollout", "status", "daemonset/agent", "--timeout=60s"],
        None,
    );
    wait_for(
        Duration::from_secs(20),
        "the old image back everywhere",
        || {
            let now = images(&k);
            (now.len() == 3 && now.iter().all(|l| l.ends_with("busybox:1.36"))).then_some(now)
        },
    );
    let history = k.ok(&["rollout", "history", "daemonset/agent"]);
    let numbers: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.chars().all(|c| c.is_ascii_digit()))
        .collect();
    assert_eq!(
        numbers,
        ["2", "3"],
        "the rollback renumbers revision 1: {history}"
    );
}

const CLAIM_AND_POD: &str = r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: Pod
metadata: {name: db}
spec:
  containers: [{name: c, image: busybox:1.36, command: [sleep, "3600"], resources: {requests: {cpu: 100m}}}]
  volumes: [{name: data, persistentVolumeClaim: {claimName: data}}]
"#;

#[test]
fn quotas_classes_and_claims_as_kubectl_shows_them() {
    let (_cluster, k) = Cluster::start(1);
    // the default class, as kubectl lists it
    let classes = wait_for(Duration::from_secs(30), "the default storage class", || {
        let out = k.ok(&["get", "storageclass", "--no-headers"]);
        (!out.trim().is_empty()).then_some(out)
    });
    let fields: Vec<&str> = classes.split_whitespace().collect();
    assert_eq!(
        &fields[..6],
        [
            "local-path",
            "(default)",
            "kelson.dev/host-path",
            "Delete",
            "WaitForFirstConsumer",
            "false"
        ],
        "{classes}"
    );
    k.ok(&[
        "create",
        "quota",
        "compute",
        "--hard=pods=2,requests.cpu=150m",
    ]);
    wait_for(Duration::from_secs(20), "the quota counted", || {
        let row = k.ok(&["get", "quota", "compute", "--no-headers"]);
        row.contains("pods: 0/2, requests.cpu: 0/150m")
            .then_some(row)
    });
    // a claim of the default class is provisioned once its pod is scheduled
    k.ok_with(&["apply", "-f", "-"], Some(CLAIM_AND_POD));
    let claim = wait_for(Duration::from_secs(30), "the claim bound", || {
        let row = k.ok(&["get", "pvc", "data", "--no-headers"]);
        row.contains(" Bound ").then_some(row)
    });
    assert!(
        claim.contains("pvc-")
            && claim.contains("1Gi")
            && claim.contains("RWO")
            && claim.contains("local-path"),
        "{claim}"
    );
    let volume = k.ok(&["get", "pv", "--no-headers"]);
    assert!(
        volume.contains("default/data") && volume.contains("Delete") && volume.contains("Bound"),
        "{volume}"
    );
    k.ok_within(
        Duration::from_secs(30),
        &["wait", "--for=condition=Ready", "pod/db", "--timeout=30s"],
        None,
    );
    // the quota has room for one more pod, but not for its cpu
    let refused = k.fails(
        &["run", "extra", "--image=busybox:1.36", "--overrides", r#"{"spec":{"containers":[{"name":"extra","image":"busybox:1.36","resources":{"requests":{"cpu":"100m"}}}]}}"#],
        None,
    );
    assert!(
        refused.contains("forbidden: exceeded quota: compute, requested: requests.cpu=100m, used: requests.cpu=100m, limited: requests.cpu=150m"),
        "{refused}"
    );
    let described = k.ok(&["describe", "quota", "compute"]);
    assert!(
        described.contains("requests.cpu  100m  150m"),
        "{described}"
    );
}

const DB: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{port: 5432}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  replicas: 2
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers: [{name: c, image: "busybox:1.36", command: [sleep, "3600"], volumeMounts: [{name: data, mountPath: /data}]}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
"#;

#[test]
fn a_statefulset_scales_in_order_and_rolls_back_with_kubectl() {
    let (_cluster, k) = Cluster::start(2);
    k.ok_with(&["apply", "-f", "-"], Some(DB));
    let status = k.ok_within(
        Duration::from_secs(60),
        &["rollout", "status", "statefulset/db", "--timeout=60s"],
        None,
    );
    assert!(
        status.contains("partitioned roll out complete: 2 new pods"),
        "{status}"
    );
    let row = k.ok(&["get", "statefulset", "db", "--no-headers"]);
    assert!(row.starts_with("db ") && row.contains(" 2/2 "), "{row}");
    let claims = k.ok(&[
        "get",
        "pvc",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.status.phase} {end}",
    ]);
    assert_eq!(claims.trim(), "data-db-0=Bound data-db-1=Bound", "{claims}");

    k.ok(&["scale", "statefulset/db", "--replicas=3"]);
    k.ok_within(
        Duration::from_secs(60),
        &["rollout", "status", "statefulset/db", "--timeout=60s"],
        None,
    );
    let pods = k.ok(&[
        "get",
        "pods",
        "-l",
        "app=db",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    assert_eq!(pods, "db-0 db-1 db-2");

    k.ok(&["set", "image", "statefulset/db", "c=busybox:1.37"]);
    let done = k.ok_within(
        Duration::from_secs(90),
        &["rollout", "status", "statefulset/db", "--timeout=90s"],
        None,
    );
    // partition defaults to 0, so kubectl reports a partitioned roll out, as against Kubernetes
    assert!(
        done.contains("partitioned roll out complete: 3 new pods have been updated"),
        "{done}"
    );
    let history = k.ok(&["rollout", "history", "statefulset/db"]);
    let revisions: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.chars().all(|c| c.is_ascii_digit()))
        .collect();
    assert_eq!(revisions, ["1", "2"], "{history}");
    let undo = k.ok(&["rollout", "undo", "statefulset/db"]);
    assert!(undo.contains("rolled back"), "{undo}");
    k.ok_within(
        Duration::from_secs(90),
        &["rollout", "status", "statefulset/db", "--timeout=90s"],
        None,
    );
    let images = k.ok(&[
        "get",
        "pods",
        "-l",
        "app=db",
        "-o",
        "jsonpath={.items[*].spec.containers[0].image}",
    ]);
    assert_eq!(images, "busybox:1.36 busybox:1.36 busybox:1.36");
}

const ROLLING: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 6
  selector: {matchLabels: {app: web}}
  strategy: {rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: c, image: "busybox:1.36", command: [httpd, -f]}]
"#;

/// ReplicaSets and live pods of `web`: (replicaset → replicas, pod → owner).
fn web_objects(k: &Kubectl) -> (Vec<String>, Vec<(String, String)>) {
    let sets = k.ok(&[
        "get",
        "replicasets",
        "-l",
        "app=web",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.spec.replicas}{\"\\n\"}{end}",
    ]);
    let pods = k.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.metadata.ownerReferences[0].name} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
    ]);
    // pods being deleted have a third field
    let pods = pods
        .lines()
        .filter(|l| l.split_whitespace().count() == 2)
        .map(|l| {
            let mut fields = l.split_whitespace();
            (
                fields.next().unwrap_or_default().to_owned(),
                fields.next().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    (sets.lines().map(str::to_owned).collect(), pods)
}

#[test]
fn kill_9_mid_rollout_then_the_rollout_finishes_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    std::fs::create_dir_all(&data).unwrap();
    // the same address after the restart, so the hollow nodes find the server again
    let listen = format!("--listen=127.0.0.1:{}", kelson_testing::git::free_port());
    let mut server = KelsonProcess::server(Path::new(KELSON), &data, &[&listen]).unwrap();
    let kubeconfig = server.kubeconfig();
    // pods take a second to become ready, so the rollout is slow enough to interrupt
    let _nodes = ChildGuard::spawn(
        KELSON,
        &[
            "sim".to_owned(),
            "--nodes=3".to_owned(),
            "--start-delay-ms=1000".to_owned(),
            "--kubeconfig".to_owned(),
            kubeconfig.display().to_string(),
        ],
    );
    let k = Kubectl::new(33, &kubeconfig);
    k.ok_with(&["apply", "-f", "-"], Some(ROLLING));
    k.ok_within(
        Duration::from_secs(90),
        &["rollout", "status", "deployment/web", "--timeout=90s"],
        None,
    );
    k.ok(&["set", "image", "deployment/web", "c=busybox:1.37"]);
    // mid-rollout: both ReplicaSets have pods
    let mid = wait_for(Duration::from_secs(30), "the rollout under way", || {
        let (sets, pods) = web_objects(&k);
        let scaled = sets.iter().filter(|s| !s.ends_with("=0")).count();
        (scaled == 2 && pods.len() >= 6).then_some((sets, pods))
    });
    eprintln!("killing the server mid-rollout: {mid:?}");
    server.kill();
    let server = KelsonProcess::server(Path::new(KELSON), &data, &[&listen]).unwrap();
    let k = Kubectl::new(33, &server.kubeconfig());
    k.ok_within(
        Duration::from_secs(120),
        &["rollout", "status", "deployment/web", "--timeout=120s"],
        None,
    );
    // settled: one old ReplicaSet at 0, one new at 6, exactly 6 live pods all owned by the new
    // one, and it stays so
    let new_set = wait_for(Duration::from_secs(30), "the rollout settled", || {
        let (sets, pods) = web_objects(&k);
        let live: Vec<&String> = sets.iter().filter(|s| s.ends_with("=6")).collect();
        let done = sets.len() == 2
            && sets.iter().filter(|s| s.ends_with("=0")).count() == 1
            && live.len() == 1
            && pods.len() == 6;
        done.then(|| live[0].trim_end_matches("=6").to_owned())
    });
    for _ in 0..3 {
        std::thread::sleep(Duration::from_secs(1));
        let (sets, pods) = web_objects(&k);
        assert_eq!(sets.len(), 2, "no duplicate ReplicaSet: {sets:?}");
        assert_eq!(pods.len(), 6, "no duplicate pods: {pods:?}");
        assert!(
            pods.iter().all(|(_, owner)| *owner == new_set),
            "every pod owned by {new_set}: {pods:?}"
        );
    }
    let images = k.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].spec.containers[0].image}",
    ]);
    assert!(
        images.split_whitespace().all(|i| i == "busybox:1.37"),
        "{images}"
    );
}
