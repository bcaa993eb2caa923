//! End-to-end GitOps: the `kelson` binary (server plus hollow nodes) follows a real Git
//! repository pushed to with the real git CLI, checked with real kubectl and `kelson app`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kelson_testing::{KelsonProcess, Kubectl};

const KELSON: &str = env!("CARGO_BIN_EXE_kelson");

/// A bare "origin" and a work tree that commits and pushes to it.
struct Repo {
    origin: PathBuf,
    work: PathBuf,
}

fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "Dana Developer")
        .env("GIT_AUTHOR_EMAIL", "dana@example.com")
        .env("GIT_COMMITTER_NAME", "Dana Developer")
        .env("GIT_COMMITTER_EMAIL", "dana@example.com")
        .output()
        .expect("git runs");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

impl Repo {
    fn new(root: &Path) -> Self {
        let origin = root.join("origin.git");
        let work = root.join("work");
        std::fs::create_dir_all(&work).unwrap();
        git(
            root,
            &[
                "init",
                "-q",
                "--bare",
                "-b",
                "main",
                origin.to_str().unwrap(),
            ],
        );
        git(&work, &["init", "-q", "-b", "main"]);
        git(
            &work,
            &["remote", "add", "origin", origin.to_str().unwrap()],
        );
        Self { origin, work }
    }

    fn write(&self, path: &str, content: &str) {
        let path = self.work.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    fn remove(&self, path: &str) {
        std::fs::remove_file(self.work.join(path)).unwrap();
    }

    /// Commits everything and pushes; the new commit's SHA.
    fn commit(&self, message: &str) -> String {
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "-m", message]);
        git(&self.work, &["push", "-q", "origin", "HEAD:main"]);
        git(&self.work, &["rev-parse", "HEAD"])
    }
}

/// Hollow nodes for the cluster, so Deployments become available; killed on drop.
struct Sim(Child);

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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
    let data = dir.path().join("server");
    std::fs::create_dir_all(&data).unwrap();
    let server = KelsonProcess::server(Path::new(KELSON), &data, &[]).unwrap();
    let kubeconfig = server.kubeconfig();
    let _sim = Sim(Command::new(KELSON)
        .args([
            "sim",
            "--nodes",
            "2",
            "--start-delay-ms",
            "100",
            "--kubeconfig",
        ])
        .arg(&kubeconfig)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    let k = Kubectl::new(33, &kubeconfig);
    let repo = Repo::new(dir.path());

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
