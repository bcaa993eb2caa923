//! End-to-end GitOps: the `kelson` binary (server plus hollow nodes) follows a real Git
//! repository pushed to with the real git CLI, checked with real kubectl and `kelson app`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kelson_testing::git::{
    GitDaemon, GitRepo, free_port, git, github_signature as sign, http, wait_listening,
};
use kelson_testing::{KelsonProcess, Kubectl};

const KELSON: &str = env!("CARGO_BIN_EXE_kelson");

/// `kelson server` with its data directory `ROOT/NAME`.
fn start_server(root: &Path, name: &str, args: &[&str]) -> (KelsonProcess, std::path::PathBuf) {
    let data = root.join(name);
    std::fs::create_dir_all(&data).unwrap();
    let server = KelsonProcess::server(Path::new(KELSON), &data, args).unwrap();
    (server, data)
}

/// `nodes` hollow nodes whose pods become ready `delay_ms` after binding, so Deployments
/// become available.
fn sim(kubeconfig: &Path, nodes: usize, delay_ms: u64) -> Process {
    Process(
        Command::new(KELSON)
            .arg("sim")
            .arg(format!("--nodes={nodes}"))
            .arg(format!("--start-delay-ms={delay_ms}"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("kelson sim starts"),
    )
}

fn deployment(replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
      - name: web
        image: busybox:1.35
        command: [httpd, -f, -p, '8080']
"
    )
}

const CONFIG: &str = "# settings of the web app
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
data:
  color: blue
---
apiVersion: v1
kind: Secret
metadata:
  name: credentials
stringData:
  password: hunter2-in-git
";

fn application(name: &str, origin: &Path, path: &str, automated: bool) -> String {
    let policy = if automated {
        "  syncPolicy:\n    automated: {prune: true, selfHeal: true}\n"
    } else {
        ""
    };
    format!(
        "apiVersion: gitops.kelson.dev/v1alpha1
kind: Application
metadata:
  name: {name}
  namespace: default
spec:
  source:
    repoURL: file://{}
    targetRevision: main
    path: {path}
  interval: 2s
{policy}",
        origin.display()
    )
}

/// One field of one object, by JSONPath.
fn field(k: &Kubectl, kind: &str, name: &str, path: &str) -> String {
    k.ok(&["get", kind, name, "-o", &format!("jsonpath={path}")])
}

/// Polls kubectl's jsonpath output until `check` holds.
fn wait_for(k: &Kubectl, what: &str, args: &[&str], check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let output = k.run(args, None);
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() && check(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: last saw {text:?} {}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ready(k: &Kubectl, app: &str) -> String {
    field(
        k,
        "application",
        app,
        r#"{.status.conditions[?(@.type=="Ready")].status}/{.status.conditions[?(@.type=="Ready")].reason}/{.status.conditions[?(@.type=="Ready")].message}"#,
    )
}

/// The Ready condition's reason once the Application has one.
fn first_ready_reason(k: &Kubectl, app: &str, what: &str) -> String {
    let path = r#"jsonpath={.status.conditions[?(@.type=="Ready")].reason}"#;
    wait_for(k, what, &["get", "app", app, "-o", path], |t| !t.is_empty())
}

/// The Ready condition's message once the Application has one.
fn first_ready_message(k: &Kubectl, app: &str, what: &str) -> String {
    let path = r#"jsonpath={.status.conditions[?(@.type=="Ready")].message}"#;
    wait_for(k, what, &["get", "app", app, "-o", path], |t| !t.is_empty())
}

fn kelson_app(kubeconfig: &Path, data_dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(KELSON)
        .arg("app")
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env("KELSON_DATA_DIR", data_dir)
        .env("KELSON_LOG", "warn")
        .output()
        .expect("kelson app runs")
}

#[test]
fn the_cluster_follows_git() {
    let dir = tempfile::tempdir().unwrap();
    let (server, data) = start_server(dir.path(), "server", &[]);
    let kubeconfig = server.kubeconfig();
    let _sim = sim(&kubeconfig, 2, 100);
    let k = Kubectl::new(33, &kubeconfig);
    let repo = GitRepo::new(dir.path(), "origin");

    // a commit is applied and the Application becomes Ready
    repo.write("apps/web/deploy.yaml", &deployment(2));
    repo.write("apps/web/config.yaml", CONFIG);
    repo.write("apps/web/README.md", "not a manifest");
    let first = repo.commit("Add web (#41)");
    k.ok_within(
        Duration::from_secs(20),
        &["apply", "-f", "-"],
        Some(&application("web", &repo.origin, "apps/web", true)),
    );
    k.ok(&[
        "wait",
        "--for=condition=Ready",
        "application/web",
        "--timeout=60s",
    ]);
    assert_eq!(
        field(&k, "app", "web", "{.status.lastAppliedRevision}"),
        first
    );
    assert_eq!(field(&k, "configmap", "settings", "{.data.color}"), "blue");
    assert_eq!(
        field(&k, "secret", "credentials", "{.data.password}"),
        "aHVudGVyMi1pbi1naXQ=",
        "stringData lands in data"
    );
    let table = k.ok(&["get", "applications"]);
    assert!(
        table.contains("Synced") && table.contains("Healthy") && table.contains("True"),
        "{table}"
    );
    assert!(
        field(
            &k,
            "configmap",
            "settings",
            "{.metadata.managedFields[*].manager}"
        )
        .contains("kelson-gitops"),
        "applied server-side under the kelson-gitops field manager"
    );

    // a changed manifest rolls out
    repo.write("apps/web/deploy.yaml", &deployment(3));
    let second = repo.commit("Scale web to 3");
    wait_for(
        &k,
        "the new revision",
        &[
            "get",
            "app",
            "web",
            "-o",
            "jsonpath={.status.lastAppliedRevision}",
        ],
        |t| t == second,
    );
    assert_eq!(field(&k, "deployment", "web", "{.spec.replicas}"), "3");
    k.ok(&[
        "wait",
        "--for=condition=Ready",
        "application/web",
        "--timeout=60s",
    ]);

    // an out-of-band change is reverted by selfHeal within seconds
    let started = Instant::now();
    k.ok(&["scale", "deployment", "web", "--replicas=1"]);
    wait_for(
        &k,
        "self-heal",
        &[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.spec.replicas}",
        ],
        |t| t == "3",
    );
    let healed = started.elapsed();
    assert!(
        healed < Duration::from_secs(10),
        "self-heal took {healed:?}"
    );

    // a deleted file is pruned
    repo.remove("apps/web/config.yaml");
    repo.write("apps/web/secret.yaml", "apiVersion: v1\nkind: Secret\nmetadata:\n  name: credentials\nstringData:\n  password: hunter2-in-git\n");
    let third = repo.commit("Drop the settings");
    wait_for(
        &k,
        "the prune",
        &[
            "get",
            "app",
            "web",
            "-o",
            "jsonpath={.status.lastAppliedRevision}",
        ],
        |t| t == third,
    );
    let gone = k.run(&["get", "configmap", "settings"], None);
    assert!(!gone.status.success(), "settings was pruned");
    k.ok(&["get", "secret", "credentials"]);

    // invalid YAML: the cluster stays on the last good revision, the condition names file and line
    repo.write(
        "apps/web/broken.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [oops\n",
    );
    let broken = repo.commit("Break the YAML");
    let status = wait_for(
        &k,
        "the build failure",
        &[
            "get",
            "app",
            "web",
            "-o",
            "jsonpath={.status.lastAttemptedRevision}",
        ],
        |t| t == broken,
    );
    assert_eq!(status, broken);
    let condition = wait_for(
        &k,
        "Ready=False",
        &[
            "get",
            "app",
            "web",
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="Ready")].reason}"#,
        ],
        |t| t == "BuildFailed",
    );
    assert_eq!(condition, "BuildFailed");
    let message = ready(&k, "web");
    assert!(message.contains("apps/web/broken.yaml:4"), "{message}");
    assert_eq!(
        field(&k, "app", "web", "{.status.lastAppliedRevision}"),
        third
    );
    assert_eq!(field(&k, "deployment", "web", "{.spec.replicas}"), "3");

    // a revision that renders nothing prunes nothing
    for file in [
        "apps/web/broken.yaml",
        "apps/web/deploy.yaml",
        "apps/web/secret.yaml",
    ] {
        repo.remove(file);
    }
    let empty = repo.commit("Oops, everything is gone");
    wait_for(
        &k,
        "the refused prune",
        &[
            "get",
            "app",
            "web",
            "-o",
            r#"jsonpath={.status.lastAttemptedRevision}/{.status.conditions[?(@.type=="Ready")].reason}"#,
        ],
        |t| t == format!("{empty}/PruneRefused"),
    );
    k.ok(&["get", "deployment", "web"]);
    k.ok(&["get", "secret", "credentials"]);

    // back to a good revision: Ready again
    repo.write("apps/web/deploy.yaml", &deployment(2));
    let fixed = repo.commit("Merge pull request #42 from dana/restore\n\nRestore web");
    wait_for(
        &k,
        "the restored revision",
        &[
            "get",
            "app",
            "web",
            "-o",
            "jsonpath={.status.lastAppliedRevision}",
        ],
        |t| t == fixed,
    );
    k.ok(&[
        "wait",
        "--for=condition=Ready",
        "application/web",
        "--timeout=60s",
    ]);

    // a kustomize overlay renders and applies
    repo.write(
        "kustomize/base/kustomization.yaml",
        "resources:\n- settings.yaml\n",
    );
    repo.write(
        "kustomize/base/settings.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  env: base\n",
    );
    repo.write("kustomize/prod/kustomization.yaml", "resources:\n- ../base\nnamePrefix: prod-\npatches:\n- patch: |-\n    - op: replace\n      path: /data/env\n      value: prod\n  target:\n    kind: ConfigMap\n");
    repo.commit("Add a kustomize overlay");
    k.ok_with(
        &["apply", "-f", "-"],
        Some(&application("prod", &repo.origin, "kustomize/prod", true)),
    );
    k.ok(&[
        "wait",
        "--for=condition=Ready",
        "application/prod",
        "--timeout=60s",
    ]);
    assert_eq!(
        field(&k, "configmap", "prod-settings", "{.data.env}"),
        "prod"
    );

    // a manual Application reports OutOfSync until `kelson app sync`; diff shows the change first
    repo.write(
        "manual/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: manual\ndata:\n  k: v1\n",
    );
    repo.commit("Add a manual app");
    k.ok_with(
        &["apply", "-f", "-"],
        Some(&application("manual", &repo.origin, "manual", false)),
    );
    wait_for(
        &k,
        "OutOfSync",
        &[
            "get",
            "app",
            "manual",
            "-o",
            "jsonpath={.status.sync.status}",
        ],
        |t| t == "OutOfSync",
    );
    assert!(
        !k.run(&["get", "configmap", "manual"], None)
            .status
            .success(),
        "manual apps wait for a sync"
    );
    let diff = kelson_app(&kubeconfig, &data, &["diff", "manual"]);
    let diff_text = String::from_utf8_lossy(&diff.stdout);
    assert!(
        diff.status.success()
            && diff_text.contains("ConfigMap default/manual")
            && diff_text.contains("+ kind: ConfigMap"),
        "{diff_text}"
    );
    let sync = kelson_app(&kubeconfig, &data, &["sync", "manual"]);
    assert!(
        sync.status.success(),
        "{}",
        String::from_utf8_lossy(&sync.stderr)
    );
    assert_eq!(field(&k, "configmap", "manual", "{.data.k}"), "v1");
    // preview of a local work tree: the diff of an uncommitted change
    repo.write(
        "manual/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: manual\ndata:\n  k: v2\n",
    );
    let local = kelson_app(
        &kubeconfig,
        &data,
        &[
            "diff",
            "manual",
            "--path",
            repo.work.join("manual").to_str().unwrap(),
        ],
    );
    let local_text = String::from_utf8_lossy(&local.stdout);
    assert!(
        local_text.contains("- /data/k: \"v1\"") && local_text.contains("+ /data/k: \"v2\""),
        "{local_text}"
    );

    // rollback pins an earlier commit (new commits wait); resume follows main again
    let rolled = kelson_app(&kubeconfig, &data, &["rollback", "web", &third]);
    assert!(
        rolled.status.success(),
        "{}",
        String::from_utf8_lossy(&rolled.stderr)
    );
    wait_for(
        &k,
        "the rollback",
        &[
            "get",
            "app",
            "web",
            "-o",
            "jsonpath={.status.lastAppliedRevision}",
        ],
        |t| t == third,
    );
    assert_eq!(field(&k, "deployment", "web", "{.spec.replicas}"), "3");
    let resumed = kelson_app(&kubeconfig, &data, &["resume", "web"]);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let head = git(&repo.work, &["rev-parse", "HEAD"]);
    wait_for(
        &k,
        "following main again",
        &[
            "get",
            "app",
            "web",
            "-o",
            "jsonpath={.status.lastAppliedRevision}",
        ],
        |t| t == head,
    );
    assert_eq!(
        field(&k, "app", "web", "{.spec.source.targetRevision}"),
        "main"
    );
    assert_eq!(field(&k, "deployment", "web", "{.spec.replicas}"), "2");

    // history: every step, with authors and the pull request; Secret values never recorded
    let history = kelson_app(&kubeconfig, &data, &["history", "web"]);
    let history_text = String::from_utf8_lossy(&history.stdout);
    assert!(
        history.status.success(),
        "{}",
        String::from_utf8_lossy(&history.stderr)
    );
    for (sha, result) in [
        (&first, "Succeeded"),
        (&second, "Succeeded"),
        (&third, "Succeeded"),
        (&broken, "Failed"),
        (&empty, "PruneRefused"),
        (&fixed, "Succeeded"),
    ] {
        assert!(
            history_text
                .lines()
                .any(|l| l.contains(&sha[..12]) && l.contains(result)),
            "history lacks {result} of {sha}:\n{history_text}"
        );
    }
    assert!(history_text.contains("DriftFixed"), "{history_text}");
    assert!(
        history_text.contains("#41")
            && history_text.contains("#42")
            && history_text.contains("Dana Developer"),
        "{history_text}"
    );
    let events = k.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=web,involvedObject.kind=Application",
    ]);
    assert!(
        events.contains("Synced")
            && events.contains("SyncFailed")
            && events.contains("DriftCorrected"),
        "{events}"
    );
    let audit_path = data.join("gitops/audit.log");
    let audit = std::fs::read_to_string(&audit_path).unwrap();
    assert!(
        !audit.contains("hunter2") && !audit.contains("aHVudGVyMi1pbi1naXQ="),
        "secret values leaked into the audit log"
    );

    // the audit log verifies, and stops verifying after one byte of it changes
    let verified = kelson_app(&kubeconfig, &data, &["verify-history"]);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    drop(server);
    let mut bytes = std::fs::read(&audit_path).unwrap();
    let at = audit
        .find("Scale web to 3")
        .expect("the subject is recorded")
        + 1;
    bytes[at] = b'k';
    std::fs::write(&audit_path, bytes).unwrap();
    let tampered = kelson_app(&kubeconfig, &data, &["verify-history"]);
    assert!(
        !tampered.status.success(),
        "a changed byte must fail verification"
    );
    assert!(
        String::from_utf8_lossy(&tampered.stderr).contains("does not match its hash"),
        "{}",
        String::from_utf8_lossy(&tampered.stderr)
    );
}

fn configmap(value: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: hooked\ndata:\n  value: {value}\n")
}

#[test]
fn pushes_wake_applications_through_webhooks_and_local_watches() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = start_server(dir.path(), "server", &[]);
    let k = Kubectl::new(33, &server.kubeconfig());
    let hooks = server.gitops_address();

    // a remote repository (git://), polled only hourly: only a webhook makes it sync sooner
    let remote = GitRepo::new(dir.path(), "origin");
    remote.write("app/cm.yaml", &configmap("v1"));
    remote.commit("v1");
    let daemon = GitDaemon::start(dir.path());
    let url = format!("git://127.0.0.1:{}/origin.git", daemon.port);
    let app = application("hooked", Path::new("/unused"), "app", true)
        .replace("file:///unused", &url)
        .replace("interval: 2s", "interval: 1h");
    k.ok_within(Duration::from_secs(20), &["apply", "-f", "-"], Some(&app));
    k.ok(&[
        "wait",
        "--for=condition=Ready",
        "application/hooked",
        "--timeout=60s",
    ]);
    assert_eq!(field(&k, "configmap", "hooked", "{.data.value}"), "v1");

    // no secret configured yet: deliveries are refused
    let payload = serde_json::json!({
        "ref": "refs/heads/main",
        "repository": {"clone_url": format!("https://127.0.0.1/origin.git"), "default_branch": "main"},
    })
    .to_string();
    let (status, _) = http(
        &hooks,
        "POST",
        "/hooks/github",
        &[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", &sign(b"s3cret", payload.as_bytes())),
        ],
        payload.as_bytes(),
    );
    assert_eq!(status, 403);
    k.ok(&[
        "create",
        "secret",
        "generic",
        "kelson-gitops-webhook",
        "-n",
        "kube-system",
        "--from-literal=github=s3cret",
        "--from-literal=gitlab=t0ken",
    ]);

    // let the reconciles that follow the Application's creation finish before committing
    std::thread::sleep(Duration::from_secs(2));
    remote.write("app/cm.yaml", &configmap("v2"));
    let v2 = remote.commit("v2");
    // a bad signature is rejected and changes nothing
    let (status, body) = http(
        &hooks,
        "POST",
        "/hooks/github",
        &[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", &sign(b"wrong", payload.as_bytes())),
        ],
        payload.as_bytes(),
    );
    assert_eq!(status, 401, "{body}");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(field(&k, "configmap", "hooked", "{.data.value}"), "v1");

    // a signed push syncs the application within seconds
    let sent = Instant::now();
    let (status, body) = http(
        &hooks,
        "POST",
        "/hooks/github",
        &[
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", "delivery-1"),
            ("X-Hub-Signature-256", &sign(b"s3cret", payload.as_bytes())),
        ],
        payload.as_bytes(),
    );
    assert_eq!(status, 202, "{body}");
    assert!(body.contains("default/hooked"), "{body}");
    wait_for(
        &k,
        "the webhook-triggered sync",
        &["get", "configmap", "hooked", "-o", "jsonpath={.data.value}"],
        |t| t == "v2",
    );
    let latency = sent.elapsed();
    assert!(
        latency < Duration::from_secs(5),
        "webhook to applied took {latency:?}"
    );
    assert_eq!(
        field(&k, "app", "hooked", "{.status.lastAppliedRevision}"),
        v2
    );

    // GitLab: the token must match
    remote.write("app/cm.yaml", &configmap("v3"));
    remote.commit("v3");
    let gitlab = serde_json::json!({
        "ref": "refs/heads/main",
        "project": {"git_http_url": "http://127.0.0.1/origin.git", "default_branch": "main"},
    })
    .to_string();
    let (status, _) = http(
        &hooks,
        "POST",
        "/hooks/gitlab",
        &[("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Token", "nope")],
        gitlab.as_bytes(),
    );
    assert_eq!(status, 401);
    let (status, _) = http(
        &hooks,
        "POST",
        "/hooks/gitlab",
        &[("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Token", "t0ken")],
        gitlab.as_bytes(),
    );
    assert_eq!(status, 202);
    wait_for(
        &k,
        "the GitLab-triggered sync",
        &["get", "configmap", "hooked", "-o", "jsonpath={.data.value}"],
        |t| t == "v3",
    );
    wait_for(
        &k,
        "the delivery in status",
        &[
            "get",
            "app",
            "hooked",
            "-o",
            "jsonpath={.status.lastWebhook.provider}",
        ],
        |t| t == "gitlab",
    );

    // a push to an unrelated repository is accepted but wakes nothing; junk is a bad request
    let other = payload.replace("origin.git", "other.git");
    let (status, body) = http(
        &hooks,
        "POST",
        "/hooks/github",
        &[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", &sign(b"s3cret", other.as_bytes())),
        ],
        other.as_bytes(),
    );
    assert_eq!((status, body.as_str()), (200, r#"{"applications":[]}"#));
    let (status, _) = http(
        &hooks,
        "POST",
        "/hooks/github",
        &[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", &sign(b"s3cret", b"{not json")),
        ],
        b"{not json",
    );
    assert_eq!(status, 400);

    // every delivery is counted
    let (status, metrics) = http(&hooks, "GET", "/metrics", &[], b"");
    assert_eq!(status, 200);
    for line in [
        r#"kelson_webhook_deliveries_total{provider="github",result="unconfigured"} 1"#,
        r#"kelson_webhook_deliveries_total{provider="github",result="invalid_signature"} 1"#,
        r#"kelson_webhook_deliveries_total{provider="github",result="accepted"} 1"#,
        r#"kelson_webhook_deliveries_total{provider="github",result="unmatched"} 1"#,
        r#"kelson_webhook_deliveries_total{provider="github",result="bad_request"} 1"#,
        r#"kelson_webhook_deliveries_total{provider="gitlab",result="invalid_signature"} 1"#,
        r#"kelson_webhook_deliveries_total{provider="gitlab",result="accepted"} 1"#,
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    assert!(
        metrics.contains(
            "gotk_reconcile_duration_seconds_bucket{kind=\"Application\",name=\"hooked\""
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "kelson_app_sync_total{name=\"hooked\",namespace=\"default\",result=\"Succeeded\"} 3"
        ),
        "{metrics}"
    );
    drop(daemon);

    // a local repository is watched: a commit applies within a second or two, no polling
    let local_root = dir.path().join("local");
    std::fs::create_dir_all(&local_root).unwrap();
    let local = GitRepo::new(&local_root, "origin");
    local.write(
        "app/cm.yaml",
        &configmap("local-1").replace("hooked", "local"),
    );
    local.commit("local 1");
    let app =
        application("local", &local.origin, "app", true).replace("interval: 2s", "interval: 1h");
    k.ok_with(&["apply", "-f", "-"], Some(&app));
    k.ok(&[
        "wait",
        "--for=condition=Ready",
        "application/local",
        "--timeout=60s",
    ]);
    local.write(
        "app/cm.yaml",
        &configmap("local-2").replace("hooked", "local"),
    );
    let committed = Instant::now();
    local.commit("local 2");
    wait_for(
        &k,
        "the watched commit",
        &["get", "configmap", "local", "-o", "jsonpath={.data.value}"],
        |t| t == "local-2",
    );
    let latency = committed.elapsed();
    assert!(
        latency < Duration::from_secs(5),
        "commit to applied took {latency:?}"
    );
}

#[test]
fn unsigned_commits_are_refused_when_verification_is_on() {
    let dir = tempfile::tempdir().unwrap();
    let (server, data) = start_server(dir.path(), "server", &[]);
    let kubeconfig = server.kubeconfig();
    let k = Kubectl::new(33, &kubeconfig);
    let key = dir.path().join("signing");
    let made = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "release@example.com",
            "-f",
        ])
        .arg(&key)
        .status()
        .unwrap();
    assert!(made.success());
    k.ok(&[
        "create",
        "secret",
        "generic",
        "trusted-keys",
        &format!("--from-file=release.pub={}.pub", key.display()),
    ]);

    let repo = GitRepo::new(dir.path(), "origin");
    repo.write(
        "app/cm.yaml",
        &configmap("unsigned").replace("hooked", "signed"),
    );
    let unsigned = repo.commit("Unsigned change");
    let app = application("signed", &repo.origin, "app", true).replace(
        "    path: app\n",
        "    path: app\n    verify:\n      secretRef: {name: trusted-keys}\n",
    );
    k.ok_within(Duration::from_secs(20), &["apply", "-f", "-"], Some(&app));
    let reason = first_ready_reason(&k, "signed", "the refusal");
    assert_eq!(reason, "VerificationFailed");
    let message = ready(&k, "signed");
    assert!(
        message.contains(&format!(
            "commit {unsigned} (Unsigned change) is not signed"
        )),
        "{message}"
    );
    assert!(
        !k.run(&["get", "configmap", "signed"], None)
            .status
            .success(),
        "nothing from an unsigned commit is applied"
    );

    repo.write(
        "app/cm.yaml",
        &configmap("signed").replace("hooked", "signed"),
    );
    let signing_key = format!("user.signingkey={}.pub", key.display());
    repo.commit_only(
        "Signed change",
        &[
            "-c",
            "gpg.format=ssh",
            "-c",
            &signing_key,
            "-c",
            "commit.gpgsign=true",
        ],
    );
    repo.push();
    k.ok(&[
        "wait",
        "--for=condition=Ready",
        "application/signed",
        "--timeout=60s",
    ]);
    assert_eq!(field(&k, "configmap", "signed", "{.data.value}"), "signed");
    let audit = std::fs::read_to_string(data.join("gitops/audit.log")).unwrap();
    assert!(
        audit.contains(r#""signer":"ssh ED25519 key SHA256:"#),
        "{audit}"
    );
    assert!(audit.contains("VerificationFailed"), "{audit}");
}

/// A child process killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_standalone_reconciler_honours_dependencies_ignored_fields_and_version_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    std::fs::create_dir_all(&data).unwrap();
    // a cluster without a reconciler of its own: `kelson reconciler` treats it as any cluster
    let server = KelsonProcess::server(Path::new(KELSON), &data, &["--disable-gitops"]).unwrap();
    let kubeconfig = server.kubeconfig();
    let _reconciler = Process(
        Command::new(KELSON)
            .arg("reconciler")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--data-dir")
            .arg(dir.path().join("gitops"))
            .arg("--listen=127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let k = Kubectl::new(33, &kubeconfig);
    let repo = GitRepo::new(dir.path(), "origin");
    repo.write(
        "base/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: base\ndata:\n  tier: base\n",
    );
    repo.write(
        "web/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\ndata:\n  color: blue\n  tuned: from-git\n",
    );
    repo.commit("v1.0.0 content");
    git(&repo.work, &["tag", "v1.0.0"]);
    git(&repo.work, &["push", "-q", "origin", "v1.0.0"]);

    // web depends on base, follows the highest 1.x tag and leaves data.tuned to the cluster
    let web = application("web", &repo.origin, "web", true)
        .replace("targetRevision: main", "targetRevision: '>=1.0.0 <2.0.0'")
        + "  dependsOn: [base]\n  ignoreDifferences:\n  - kind: ConfigMap\n    name: web\n    jsonPointers: [/data/tuned]\n";
    k.ok_within(Duration::from_secs(30), &["apply", "-f", "-"], Some(&web));
    let reason = first_ready_reason(&k, "web", "the dependency wait");
    assert_eq!(reason, "DependencyNotReady");
    assert!(!k.run(&["get", "configmap", "web"], None).status.success());
    k.ok_with(
        &["apply", "-f", "-"],
        Some(&application("base", &repo.origin, "base", true)),
    );
    k.ok(&[
        "wait",
        "--for=condition=Ready",
        "application/base",
        "application/web",
        "--timeout=60s",
    ]);
    assert_eq!(field(&k, "configmap", "web", "{.data.color}"), "blue");

    // a field changed in the cluster and ignored stays; the app stays in sync
    k.ok(&[
        "patch",
        "configmap",
        "web",
        "-p",
        r#"{"data":{"tuned":"by-hand","color":"red"}}"#,
    ]);
    wait_for(
        &k,
        "color reverted",
        &["get", "configmap", "web", "-o", "jsonpath={.data.color}"],
        |t| t == "blue",
    );
    assert_eq!(field(&k, "configmap", "web", "{.data.tuned}"), "by-hand");
    assert_eq!(field(&k, "app", "web", "{.status.sync.status}"), "Synced");

    // a new tag inside the range is followed; one outside is not
    repo.write("web/cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\ndata:\n  color: green\n  tuned: from-git\n");
    let v11 = repo.commit("v1.1.0 content");
    git(&repo.work, &["tag", "v1.1.0"]);
    repo.write(
        "web/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\ndata:\n  color: purple\n",
    );
    repo.commit("v2.0.0 content");
    git(&repo.work, &["tag", "v2.0.0"]);
    git(&repo.work, &["push", "-q", "origin", "--tags"]);
    wait_for(
        &k,
        "the v1.1.0 tag",
        &[
            "get",
            "app",
            "web",
            "-o",
            "jsonpath={.status.lastAppliedRevision}",
        ],
        |t| t == v11,
    );
    assert_eq!(field(&k, "configmap", "web", "{.data.color}"), "green");
    assert_eq!(field(&k, "configmap", "web", "{.data.tuned}"), "by-hand");
}

#[test]
fn private_repositories_are_read_with_the_credentials_of_the_secret_ref() {
    let dir = tempfile::tempdir().unwrap();
    let (server, data) = start_server(dir.path(), "server", &[]);
    let k = Kubectl::new(33, &server.kubeconfig());
    let served = dir.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    let repo = GitRepo::new(&served, "private");
    repo.write(
        "app/cm.yaml",
        &configmap("private").replace("hooked", "private"),
    );
    repo.commit("A private change");
    let port = free_port();
    let _forge = Process(
        Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/python/git_http_server.py"
            ))
            .arg(&served)
            .arg(port.to_string())
            .args(["dana", "s3cret-token"])
            .spawn()
            .unwrap(),
    );
    wait_listening(port, "the git server did not start");
    let url = format!("http://127.0.0.1:{port}/private.git");
    let app =
        application("private", Path::new("/unused"), "app", true).replace("file:///unused", &url);
    k.ok_within(Duration::from_secs(20), &["apply", "-f", "-"], Some(&app));
    let reason = first_ready_reason(&k, "private", "the refused fetch");
    assert_eq!(reason, "GitOperationFailed");
    assert!(
        !k.run(&["get", "configmap", "private"], None)
            .status
            .success()
    );

    k.ok(&[
        "create",
        "secret",
        "generic",
        "repo-credentials",
        "--from-literal=username=dana",
        "--from-literal=password=s3cret-token",
    ]);
    k.ok(&[
        "patch",
        "application",
        "private",
        "--type=merge",
        "-p",
        r#"{"spec":{"source":{"secretRef":{"name":"repo-credentials"}}}}"#,
    ]);
    k.ok(&[
        "wait",
        "--for=condition=Ready",
        "application/private",
        "--timeout=60s",
    ]);
    assert_eq!(
        field(&k, "configmap", "private", "{.data.value}"),
        "private"
    );
    let audit = std::fs::read_to_string(data.join("gitops/audit.log")).unwrap();
    assert!(
        !audit.contains("s3cret-token"),
        "credentials leaked into the audit log"
    );
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap_or_default();
    assert!(
        !log.contains("s3cret-token"),
        "credentials leaked into the server log"
    );
}

#[test]
fn an_application_can_deploy_to_another_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let (home_data, away_data) = (dir.path().join("home"), dir.path().join("away"));
    std::fs::create_dir_all(&home_data).unwrap();
    std::fs::create_dir_all(&away_data).unwrap();
    let home = KelsonProcess::server(Path::new(KELSON), &home_data, &[]).unwrap();
    let away = KelsonProcess::server(Path::new(KELSON), &away_data, &["--disable-gitops"]).unwrap();
    let (k_home, k_away) = (
        Kubectl::new(33, &home.kubeconfig()),
        Kubectl::new(33, &away.kubeconfig()),
    );
    k_home.ok(&[
        "create",
        "secret",
        "generic",
        "away-cluster",
        &format!("--from-file=value={}", away.kubeconfig().display()),
    ]);

    let repo = GitRepo::new(dir.path(), "origin");
    repo.write("app/cm.yaml", &configmap("far").replace("hooked", "far"));
    let sha = repo.commit("Deploy far away");
    let app = application("far", &repo.origin, "app", true).replace(
        "    path: app\n",
        "    path: app\n  destination:\n    namespace: remote-team\n    kubeConfig:\n      secretRef: {name: away-cluster}\n",
    ) + "    syncOptions: [CreateNamespace=true]\n";
    k_home.ok_within(Duration::from_secs(20), &["apply", "-f", "-"], Some(&app));
    k_home.ok(&[
        "wait",
        "--for=condition=Ready",
        "application/far",
        "--timeout=60s",
    ]);
    assert_eq!(
        field(&k_home, "app", "far", "{.status.lastAppliedRevision}"),
        sha
    );
    assert_eq!(
        k_away.ok(&[
            "get",
            "configmap",
            "far",
            "-n",
            "remote-team",
            "-o",
            "jsonpath={.data.value}"
        ]),
        "far"
    );
    assert!(
        !k_home
            .run(&["get", "configmap", "far", "-n", "remote-team"], None)
            .status
            .success(),
        "nothing lands at home"
    );
    // drift in the other cluster is seen and corrected there
    k_away.ok(&[
        "patch",
        "configmap",
        "far",
        "-n",
        "remote-team",
        "-p",
        r#"{"data":{"value":"changed"}}"#,
    ]);
    wait_for(
        &k_away,
        "the remote self-heal",
        &[
            "get",
            "configmap",
            "far",
            "-n",
            "remote-team",
            "-o",
            "jsonpath={.data.value}",
        ],
        |t| t == "far",
    );
}

/// Writes a key pair with ssh-keygen (`extra` options, e.g. the type); the private key's path.
fn keypair(dir: &Path, name: &str, extra: &[&str]) -> std::path::PathBuf {
    let path = dir.join(name);
    let made = Command::new("ssh-keygen")
        .args(["-q", "-N", ""])
        .args(extra)
        .arg("-f")
        .arg(&path)
        .status()
        .unwrap();
    assert!(made.success());
    path
}

#[test]
fn repositories_over_ssh_need_the_identity_and_a_known_host_key() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = start_server(dir.path(), "server", &[]);
    let k = Kubectl::new(33, &server.kubeconfig());
    let repo = GitRepo::new(dir.path(), "origin");
    repo.write(
        "app/cm.yaml",
        &configmap("over-ssh").replace("hooked", "ssh"),
    );
    repo.commit("Over ssh");

    // an sshd of our own on a free port, trusting one client key
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let host_key = keypair(&keys, "host", &["-t", "ed25519"]);
    let other_host_key = keypair(&keys, "other-host", &["-t", "ed25519"]);
    let identity = keypair(&keys, "identity", &["-t", "ecdsa", "-m", "PEM"]);
    std::fs::copy(identity.with_extension("pub"), keys.join("authorized_keys")).unwrap();
    let port = free_port();
    let config = keys.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nPidFile {}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n",
            host_key.display(),
            keys.join("authorized_keys").display(),
            keys.join("sshd.pid").display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all("/run/sshd").unwrap();
    let _sshd = Process(
        Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stderr(std::fs::File::create(keys.join("sshd.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_listening(port, "sshd did not start");
    let known = |key: &Path| {
        let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        format!("[127.0.0.1]:{port} {}", public.trim())
    };

    // a host key that is not the server's is refused before anything is sent
    let private = identity.display().to_string();
    k.ok(&[
        "create",
        "secret",
        "generic",
        "ssh-credentials",
        &format!("--from-file=identity={private}"),
        &format!("--from-literal=known_hosts={}", known(&other_host_key)),
    ]);
    let url = format!("ssh://root@127.0.0.1:{port}{}", repo.origin.display());
    let app = application("ssh", Path::new("/unused"), "app", true)
        .replace("file:///unused", &url)
        .replace(
            "    path: app\n",
            "    path: app\n    secretRef: {name: ssh-credentials}\n",
        );
    k.ok_within(Duration::from_secs(20), &["apply", "-f", "-"], Some(&app));
    let message = first_ready_message(&k, "ssh", "the refused host key");
    assert!(
        message.contains("host key is not in known_hosts"),
        "{message}"
    );
    assert!(!k.run(&["get", "configmap", "ssh"], None).status.success());

    // the right host key: the identity authenticates and the revision applies
    k.ok(&["delete", "secret", "ssh-credentials"]);
    k.ok(&[
        "create",
        "secret",
        "generic",
        "ssh-credentials",
        &format!("--from-file=identity={private}"),
        &format!("--from-literal=known_hosts={}", known(&host_key)),
    ]);
    k.ok(&[
        "wait",
        "--for=condition=Ready",
        "application/ssh",
        "--timeout=60s",
    ]);
    assert_eq!(field(&k, "configmap", "ssh", "{.data.value}"), "over-ssh");
}

#[test]
fn a_sync_wave_waits_until_the_previous_one_is_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = start_server(dir.path(), "server", &[]);
    let kubeconfig = server.kubeconfig();
    // pods on these hollow nodes take 2 s to become ready
    let _sim = sim(&kubeconfig, 1, 2000);
    let k = Kubectl::new(33, &kubeconfig);
    let repo = GitRepo::new(dir.path(), "origin");
    repo.write("app/deploy.yaml", &deployment(1));
    repo.write(
        "app/after.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: after-web\n  annotations:\n    gitops.kelson.dev/sync-wave: \"1\"\ndata:\n  ready: \"yes\"\n",
    );
    repo.commit("Two waves");
    k.ok_within(
        Duration::from_secs(20),
        &["apply", "-f", "-"],
        Some(&application("waves", &repo.origin, "app", true)),
    );
    k.ok(&[
        "wait",
        "--for=condition=Ready",
        "application/waves",
        "--timeout=60s",
    ]);
    let time = |kind: &str, name: &str| {
        let text = field(&k, kind, name, "{.metadata.creationTimestamp}");
        let output = Command::new("date")
            .args(["-u", "-d", &text, "+%s"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse::<i64>()
            .unwrap()
    };
    let gap = time("configmap", "after-web") - time("deployment", "web");
    assert!(
        gap >= 1,
        "wave 1 was applied {gap} s after wave 0, before its pods were ready"
    );
}

/// Namespaces `team` and `other`, and a ServiceAccount `team/deployer` with edit in `team`.
fn team_with_deployer(k: &Kubectl) {
    for namespace in ["team", "other"] {
        k.ok(&["create", "namespace", namespace]);
    }
    k.ok(&["create", "serviceaccount", "deployer", "-n", "team"]);
    k.ok(&[
        "create",
        "rolebinding",
        "deployer-edit",
        "--clusterrole=edit",
        "--serviceaccount=team:deployer",
        "-n",
        "team",
    ]);
}

/// The Ready message of `team/team-app` once a write was refused.
fn refused_ready_message(k: &Kubectl, what: &str) -> String {
    wait_for(
        k,
        what,
        &[
            "get",
            "app",
            "team-app",
            "-n",
            "team",
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="Ready")].message}"#,
        ],
        |t| t.contains("forbidden"),
    )
}

#[test]
fn an_application_syncs_as_its_service_account() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = start_server(dir.path(), "server", &[]);
    let k = Kubectl::new(33, &server.kubeconfig());
    team_with_deployer(&k);
    let repo = GitRepo::new(dir.path(), "origin");
    repo.write(
        "app/mine.yaml",
        &configmap("mine").replace("hooked", "mine"),
    );
    repo.write(
        "app/theirs.yaml",
        &configmap("theirs")
            .replace("hooked", "theirs")
            .replace("metadata:\n", "metadata:\n  namespace: other\n"),
    );
    repo.commit("A ConfigMap here and one in a namespace the team may not touch");
    let app = application("team-app", &repo.origin, "app", true)
        .replace("  namespace: default\n", "  namespace: team\n")
        .replace(
            "    path: app\n",
            "    path: app\n  destination: {namespace: team}\n  serviceAccountName: deployer\n",
        );
    k.ok_within(Duration::from_secs(20), &["apply", "-f", "-"], Some(&app));
    let message = refused_ready_message(&k, "the sync refused as the service account");
    assert!(
        message.contains("User \"system:serviceaccount:team:deployer\" cannot"),
        "{message}"
    );
    assert!(message.contains("\"other\""), "{message}");
    assert!(
        !k.run(&["get", "configmap", "theirs", "-n", "other"], None)
            .status
            .success(),
        "nothing is written where the account may not write"
    );
    // within what the account may do, the sync goes through
    repo.remove("app/theirs.yaml");
    let sha = repo.commit("Only our own namespace");
    k.ok(&[
        "wait",
        "--for=condition=Ready",
        "application/team-app",
        "-n",
        "team",
        "--timeout=60s",
    ]);
    assert_eq!(
        k.ok(&[
            "get",
            "app",
            "team-app",
            "-n",
            "team",
            "-o",
            "jsonpath={.status.lastAppliedRevision}"
        ]),
        sha
    );
    k.ok(&["get", "configmap", "mine", "-n", "team"]);

    // Secrets an Application names are read as its account too: one that may read none
    // cannot have the reconciler fetch credentials for it
    k.ok(&["create", "serviceaccount", "narrow", "-n", "team"]);
    let narrow = application("narrow-app", &repo.origin, "app", true)
        .replace("  namespace: default\n", "  namespace: team\n")
        .replace(
            "    path: app\n",
            "    path: app\n    secretRef: {name: deploy-key}\n  serviceAccountName: narrow\n",
        );
    k.ok_with(&["apply", "-f", "-"], Some(&narrow));
    let message = wait_for(
        &k,
        "the credentials refused to the account",
        &[
            "get",
            "app",
            "narrow-app",
            "-n",
            "team",
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="Ready")].message}"#,
        ],
        |t| t.contains("forbidden") || t.contains("does not exist"),
    );
    assert!(
        message.contains(
            "secrets \"deploy-key\" is forbidden: User \"system:serviceaccount:team:narrow\""
        ),
        "{message}"
    );
}

#[test]
fn a_default_service_account_narrows_applications_that_name_none() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = start_server(
        dir.path(),
        "server",
        &["--gitops-default-service-account=deployer"],
    );
    let k = Kubectl::new(33, &server.kubeconfig());
    team_with_deployer(&k);
    let repo = GitRepo::new(dir.path(), "origin");
    repo.write(
        "app/theirs.yaml",
        &configmap("theirs")
            .replace("hooked", "theirs")
            .replace("metadata:\n", "metadata:\n  namespace: other\n"),
    );
    repo.commit("A ConfigMap in a namespace the team may not touch");
    let app = application("team-app", &repo.origin, "app", true)
        .replace("  namespace: default\n", "  namespace: team\n");
    k.ok_within(Duration::from_secs(20), &["apply", "-f", "-"], Some(&app));
    let message = refused_ready_message(&k, "the sync refused as the default account");
    assert!(
        message.contains("User \"system:serviceaccount:team:deployer\" cannot"),
        "{message}"
    );
}
