//! GitOps reconciler (`cargo bench --bench gitops`): the real `kelson server` binary and real
//! git. Measures commit → applied latency through inotify (a local repository), through a
//! webhook (a repository served by `git daemon`) and through polling; one Application with
//! 1000 objects (first sync, no-change resync, a one-object change); and 1000 small
//! Applications from one repository to all Ready, with the server's memory.
//!
//! Knobs (env): `BENCH_COMMITS` (commits per trigger, default 20), `BENCH_OBJECTS` (1000),
//! `BENCH_APPS` (1000), `BENCH_POLL` (polling interval in seconds, 5).

use std::path::Path;
use std::time::{Duration, Instant};

use kelson_testing::KelsonProcess;
use kelson_testing::bench::{cpu_seconds, env_or as env, percentile, rss_mib};
use kelson_testing::git::{GitDaemon, GitRepo as Repo, git, github_signature as sign, http};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

/// The `kelson` binary's allocator, so what runs in this process is measured as it runs there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn configmap(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  value: \"{value}\"\n"
    )
}

fn application(name: &str, url: &str, path: &str, interval: &str) -> Value {
    json!({
        "apiVersion": "gitops.kelson.dev/v1alpha1",
        "kind": "Application",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "source": {"repoURL": url, "targetRevision": "main", "path": path},
            "interval": interval,
            "syncPolicy": {"automated": {"prune": true, "selfHeal": true}},
        },
    })
}

fn applications(client: &kube::Client) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gitops.kelson.dev", "v1alpha1", "Application"),
        "applications",
    );
    Api::namespaced_with(client.clone(), "default", &resource)
}

async fn apply_app(client: &kube::Client, app: &Value) {
    let name = app["metadata"]["name"].as_str().unwrap().to_owned();
    applications(client)
        .patch(
            &name,
            &PatchParams::apply("bench").force(),
            &Patch::Apply(app),
        )
        .await
        .expect("application applied");
}

fn ready(app: &DynamicObject) -> bool {
    app.data["status"]["conditions"]
        .as_array()
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

fn revision(app: &DynamicObject) -> String {
    app.data["status"]["lastAppliedRevision"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Waits until the Application has applied `sha`; the time it took.
async fn wait_applied(client: &kube::Client, name: &str, sha: &str, timeout: Duration) -> Duration {
    let api = applications(client);
    let started = Instant::now();
    loop {
        if let Ok(app) = api.get(name).await
            && revision(&app) == sha
        {
            return started.elapsed();
        }
        if started.elapsed() > timeout {
            let status = api.get(name).await.map(|a| a.data["status"].to_string());
            panic!("{name} did not apply {sha} within {timeout:?}: {status:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn report(label: &str, samples: &mut [f64]) {
    println!(
        "| {label} | {} | {:.0} | {:.0} | {:.0} |",
        samples.len(),
        percentile(samples, 50.0),
        percentile(samples, 99.0),
        percentile(samples, 100.0)
    );
}

/// Commit → applied, `commits` times, the push announced by `announce`.
async fn latency(
    client: &kube::Client,
    repo: &Repo,
    app: &str,
    commits: usize,
    announce: &dyn Fn(),
) -> Vec<f64> {
    let mut samples = Vec::new();
    for i in 0..commits {
        repo.write("app/cm.yaml", &configmap(app, &format!("v{i}")));
        git(&repo.work, &["add", "-A"]);
        git(&repo.work, &["commit", "-q", "-m", &format!("v{i}")]);
        let sha = git(&repo.work, &["rev-parse", "HEAD"]);
        let pushed = Instant::now();
        git(&repo.work, &["push", "-q", "origin", "HEAD:main"]);
        announce();
        let waited = wait_applied(client, app, &sha, Duration::from_secs(120)).await;
        samples.push((pushed.elapsed().max(waited)).as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    samples
}

#[tokio::main]
async fn main() {
    let commits = env("BENCH_COMMITS", 20);
    let objects = env("BENCH_OBJECTS", 1000);
    let apps = env("BENCH_APPS", 1000);
    let poll = env("BENCH_POLL", 5);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    std::fs::create_dir_all(&data).unwrap();
    // the reconciler runs as its own process (`kelson reconciler`), so its memory and CPU are
    // measured apart from the API server's, as Flux's figures are
    let server = KelsonProcess::server(
        Path::new(env!("CARGO_BIN_EXE_kelson")),
        &data,
        &["--disable-scheduler", "--disable-gitops"],
    )
    .unwrap();
    let client = kelson_testing::client_for(&server.kubeconfig()).await;
    let gitops_dir = dir.path().join("gitops");
    let mut reconciler = std::process::Command::new(env!("CARGO_BIN_EXE_kelson"))
        .arg("reconciler")
        .arg("--kubeconfig")
        .arg(server.kubeconfig())
        .arg("--data-dir")
        .arg(&gitops_dir)
        .arg("--listen=127.0.0.1:0")
        .env("KELSON_LOG", "warn")
        .stderr(std::fs::File::create(dir.path().join("reconciler.log")).unwrap())
        .spawn()
        .unwrap();
    let hooks = loop {
        if let Ok(address) = std::fs::read_to_string(gitops_dir.join("address")) {
            break address;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let pid = reconciler.id();
    let server_pid = server.pid();
    let sections = std::env::var("BENCH_SECTIONS").unwrap_or_else(|_| "latency,big,apps".into());

    if sections.contains("latency") {
        println!("## commit → applied (ms)\n");
        println!("| trigger | commits | p50 | p99 | max |");
        println!("| --- | --- | --- | --- | --- |");
        // inotify on a local repository
        let local = Repo::new(dir.path(), "local");
        local.write("app/cm.yaml", &configmap("local", "start"));
        let sha = local.commit("start");
        apply_app(
            &client,
            &application(
                "local",
                &format!("file://{}", local.origin.display()),
                "app",
                "1h",
            ),
        )
        .await;
        wait_applied(&client, "local", &sha, Duration::from_secs(60)).await;
        let mut samples = latency(&client, &local, "local", commits, &|| {}).await;
        report("inotify (file://, interval 1h)", &mut samples);

        // a webhook for a repository served by git daemon
        let served = dir.path().join("served");
        std::fs::create_dir_all(&served).unwrap();
        let remote = Repo::new(&served, "remote");
        remote.write("app/cm.yaml", &configmap("hooked", "start"));
        let sha = remote.commit("start");
        let daemon = GitDaemon::start(&served);
        let secrets: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(client.clone(), "kube-system");
        let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
            "metadata": {"name": "kelson-gitops-webhook"},
            "stringData": {"github": "bench-secret"},
        }))
        .unwrap();
        secrets.create(&Default::default(), &secret).await.unwrap();
        let url = daemon.url("remote");
        apply_app(&client, &application("hooked", &url, "app", "1h")).await;
        wait_applied(&client, "hooked", &sha, Duration::from_secs(60)).await;
        let payload = json!({"ref": "refs/heads/main", "repository": {"clone_url": "https://127.0.0.1/remote.git", "default_branch": "main"}}).to_string();
        let signature = sign(b"bench-secret", payload.as_bytes());
        let announce = || {
            let (status, _) = http(
                &hooks,
                "POST",
                "/hooks/github",
                &[
                    ("X-GitHub-Event", "push"),
                    ("X-Hub-Signature-256", &signature),
                ],
                payload.as_bytes(),
            );
            assert_eq!(status, 202);
        };
        let mut samples = latency(&client, &remote, "hooked", commits, &announce).await;
        report("GitHub webhook (git://, interval 1h)", &mut samples);

        // polling only
        let polled = Repo::new(&served, "polled");
        polled.write("app/cm.yaml", &configmap("polled", "start"));
        let sha = polled.commit("start");
        apply_app(
            &client,
            &application("polled", &daemon.url("polled"), "app", &format!("{poll}s")),
        )
        .await;
        wait_applied(&client, "polled", &sha, Duration::from_secs(60)).await;
        let mut samples = latency(&client, &polled, "polled", commits.min(10), &|| {}).await;
        report(&format!("polling (git://, interval {poll}s)"), &mut samples);
    }
    if sections.contains("big") {
        // one Application with many objects
        println!("\n## one Application with {objects} objects\n");
        println!("| step | seconds |");
        println!("| --- | --- |");
        let big = Repo::new(dir.path(), "big");
        for i in 0..objects {
            big.write(
                &format!("app/cm-{i:04}.yaml"),
                &configmap(&format!("big-{i:04}"), "1"),
            );
        }
        let sha = big.commit("many objects");
        let started = Instant::now();
        apply_app(&client, &application("big", &big.url(), "app", "1h")).await;
        let first = wait_applied(&client, "big", &sha, Duration::from_secs(600)).await;
        println!(
            "| first sync (create {objects}) | {:.2} |",
            first.as_secs_f64().max(started.elapsed().as_secs_f64())
        );
        // a no-change resync: ask for a sync and wait until it is handled
        let api = applications(&client);
        let stamp = "bench-resync";
        let started = Instant::now();
        api.patch(
            "big",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"gitops.kelson.dev/requested-at": stamp}}}),
            ),
        )
        .await
        .unwrap();
        loop {
            let app = api.get("big").await.unwrap();
            if app.data["status"]["lastHandledReconcileAt"] == stamp {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        println!(
            "| no-change resync (dry-run diff of {objects}) | {:.2} |",
            started.elapsed().as_secs_f64()
        );
        big.write("app/cm-0000.yaml", &configmap("big-0000", "2"));
        let sha = big.commit("one change");
        let started = Instant::now();
        wait_applied(&client, "big", &sha, Duration::from_secs(600)).await;
        println!(
            "| commit changing 1 of {objects} | {:.2} |",
            started.elapsed().as_secs_f64()
        );
    }
    if sections.contains("apps") {
        // many small Applications from one repository (Flux's benchmark shape)
        println!(
            "\n## {apps} Applications (Deployment with 0 replicas, ServiceAccount, Service, Ingress each)\n"
        );
        let mono = Repo::new(dir.path(), "mono");
        for i in 0..apps {
            let name = format!("app-{i:04}");
            mono.write(
            &format!("apps/{name}/all.yaml"),
            &format!(
                "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {name}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  selector: {{app: {name}}}\n  ports:\n  - port: 80\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: 0\n  selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n    spec:\n      serviceAccountName: {name}\n      containers:\n      - name: web\n        image: busybox:1.35\n---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\nspec:\n  rules:\n  - host: {name}.example.com\n    http:\n      paths:\n      - path: /\n        pathType: Prefix\n        backend:\n          service: {{name: {name}, port: {{number: 80}}}}\n"
            ),
        );
        }
        mono.commit("many apps");
        let api = applications(&client);
        let (rss_before, cpu_before) = (rss_mib(pid), cpu_seconds(pid));
        let (server_before, server_cpu_before) = (rss_mib(server_pid), cpu_seconds(server_pid));
        let url = mono.url();
        let started = Instant::now();
        let mut peak = rss_before;
        let mut server_peak = server_before;
        for i in 0..apps {
            let name = format!("app-{i:04}");
            apply_app(
                &client,
                &application(&name, &url, &format!("apps/{name}"), "10m"),
            )
            .await;
            if i % 50 == 0 {
                peak = peak.max(rss_mib(pid));
                server_peak = server_peak.max(rss_mib(server_pid));
            }
        }
        let created = started.elapsed();
        loop {
            peak = peak.max(rss_mib(pid));
            server_peak = server_peak.max(rss_mib(server_pid));
            let list = api.list(&Default::default()).await.unwrap();
            let done = list
                .items
                .iter()
                .filter(|a| {
                    a.metadata
                        .name
                        .as_deref()
                        .is_some_and(|n| n.starts_with("app-"))
                        && ready(a)
                })
                .count();
            if done == apps {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(900),
                "only {done} of {apps} Ready after 15 min"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let total = started.elapsed();
        println!("| measure | value |");
        println!("| --- | --- |");
        println!(
            "| Applications created (kube-rs, one at a time) | {:.1} s |",
            created.as_secs_f64()
        );
        println!(
            "| all {apps} Ready, from the first create | {:.1} s |",
            total.as_secs_f64()
        );
        println!(
            "| reconciler (`kelson reconciler`) RSS before → peak | {rss_before:.0} → {peak:.0} MiB |"
        );
        println!(
            "| reconciler CPU during the run | {:.1} s |",
            cpu_seconds(pid) - cpu_before
        );
        println!(
            "| API server and storage (`kelson server`) RSS before → peak | {server_before:.0} → {server_peak:.0} MiB |"
        );
        println!(
            "| API server CPU during the run | {:.1} s |",
            cpu_seconds(server_pid) - server_cpu_before
        );
    }
    let _ = reconciler.kill();
    let _ = reconciler.wait();
    let log = std::fs::read_to_string(dir.path().join("reconciler.log")).unwrap_or_default();
    let failed = log
        .lines()
        .filter(|l| l.contains("reconcile failed"))
        .count();
    println!("\nreconciles that failed and were retried: {failed}");
    if let Some(line) = log.lines().find(|l| l.contains("reconcile failed")) {
        println!("first: {line}");
    }
    drop(server);
}
