//! End-to-end: workloads on `kelson server` with hollow nodes, driven by the real kubectl.
//!
//! A CronJob fires on schedule (the next minute), its Job completes, `kubectl get cronjobs` and
//! the events show it, `kubectl create job --from=cronjob/…` runs it by hand, suspend stops it,
//! and a bad schedule is refused with the field named. `kubectl drain` cordons a node and evicts
//! its pods only as far as their PodDisruptionBudget allows.

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
    k.ok(&["uncordon", &node]);
}
