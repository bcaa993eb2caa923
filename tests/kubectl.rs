//! End-to-end: the `kelson server` binary driven by the real kubectl binaries 1.27, 1.30 and
//! 1.33 (`/usr/lib/google-cloud-sdk/bin/kubectl.1.XX`), each against its own server.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use kelson_testing::{KelsonProcess, Kubectl};

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: c
        image: busybox:1.36
        env: [{name: A, value: "0"}, {name: B, value: "x"}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, labels: {app: web}}
data: {a: "1"}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"#;

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.kelson.dev}
spec:
  group: example.kelson.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer, minimum: 1}
              color: {type: string, enum: [red, blue]}
          status:
            type: object
            properties:
              ready: {type: boolean}
"#;

fn start(name: &str) -> (KelsonProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join(name);
    std::fs::create_dir_all(&data).unwrap();
    let server =
        KelsonProcess::server(Path::new(env!("CARGO_BIN_EXE_kelson")), &data, &[]).unwrap();
    (server, dir)
}

fn exercise(minor: u32) {
    let (server, _dir) = start(&format!("kubectl-{minor}"));
    let k = Kubectl::new(minor, &server.kubeconfig());

    let resources = k.ok(&["api-resources"]);
    for expected in [
        "deployments",
        "customresourcedefinitions",
        "horizontalpodautoscalers",
    ] {
        assert!(
            resources.contains(expected),
            "api-resources lacks {expected}:\n{resources}"
        );
    }

    // client-side apply: create, then update
    let out = k.ok_with(&["apply", "-f", "-"], Some(DEPLOYMENT));
    assert!(out.contains("deployment.apps/web created"), "{out}");
    let updated = DEPLOYMENT
        .replace("busybox:1.36", "busybox:1.37")
        .replace("{name: B, value: \"x\"}", "{name: C, value: \"y\"}");
    let out = k.ok_with(&["apply", "-f", "-"], Some(&updated));
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    assert!(out.contains("configmap/settings unchanged"), "{out}");
    let env = k.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].env[*].name} {.metadata.generation}"]);
    assert_eq!(env, "busybox:1.37 A C 2");
    // server-side apply
    let out = k.ok_with(
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        Some(&updated),
    );
    assert!(
        out.contains("deployment.apps/web serverside-applied"),
        "{out}"
    );

    // get in its forms
    let table = k.ok(&["get", "deployments"]);
    assert!(
        table.starts_with("NAME") && table.contains("READY") && table.contains("UP-TO-DATE"),
        "{table}"
    );
    assert!(table.contains("web"), "{table}");
    let wide = k.ok(&["get", "deploy", "-o", "wide"]);
    assert!(
        wide.contains("SELECTOR") && wide.contains("app=web") && wide.contains("busybox:1.37"),
        "{wide}"
    );
    let yaml = k.ok(&["get", "deploy", "web", "-o", "yaml"]);
    assert!(
        yaml.contains("kind: Deployment") && yaml.contains("resourceVersion:"),
        "{yaml}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "cm", "settings", "-o", "json"])).unwrap();
    assert_eq!(json["data"]["a"], "1");
    let all_namespaces = k.ok(&["get", "cm", "-A"]);
    assert!(
        all_namespaces.contains("NAMESPACE") && all_namespaces.contains("settings"),
        "{all_namespaces}"
    );
    let selected = k.ok(&["get", "cm,svc", "-l", "app=web", "--show-labels"]);
    assert!(
        selected.contains("configmap/settings")
            && selected.contains("app=web")
            && !selected.contains("service/web"),
        "{selected}"
    );
    let services = k.ok(&["get", "svc", "web"]);
    assert!(
        services.contains("ClusterIP") && services.contains("80/TCP"),
        "{services}"
    );
    let all = k.ok(&["get", "all"]);
    assert!(
        all.contains("deployment.apps/web") && all.contains("service/web"),
        "{all}"
    );
    let description = k.ok(&["describe", "deploy", "web"]);
    assert!(
        description.contains("Replicas:") && description.contains("busybox:1.37"),
        "{description}"
    );

    // label, annotate, patch, scale
    k.ok(&["label", "cm", "settings", "tier=backend"]);
    k.ok(&["annotate", "cm", "settings", "note=hello"]);
    k.ok(&[
        "patch",
        "cm",
        "settings",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/data/b","value":"2"}]"#,
    ]);
    k.ok(&[
        "patch",
        "cm",
        "settings",
        "--type=merge",
        "-p",
        r#"{"data":{"c":"3"}}"#,
    ]);
    k.ok(&[
        "patch",
        "deploy",
        "web",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"c","image":"busybox:1.38"}]}}}}"#,
    ]);
    let cm = k.ok(&[
        "get",
        "cm",
        "settings",
        "-o",
        "jsonpath={.metadata.labels.tier} {.metadata.annotations.note} {.data.b}{.data.c}",
    ]);
    assert_eq!(cm, "backend hello 23");
    let image = k.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].env[0].name}"]);
    assert_eq!(
        image, "busybox:1.38 A",
        "strategic merge keeps other fields"
    );
    k.ok(&["scale", "deploy", "web", "--replicas=5"]);
    assert_eq!(
        k.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]),
        "5"
    );

    // create commands (kubectl 1.32+ sends protobuf bodies for these)
    k.ok(&["create", "namespace", "team-a"]);
    k.ok(&[
        "create",
        "configmap",
        "made",
        "-n",
        "team-a",
        "--from-literal=k=v",
    ]);
    k.ok(&[
        "create",
        "secret",
        "generic",
        "token",
        "-n",
        "team-a",
        "--from-literal=password=s3cret",
    ]);
    k.ok(&[
        "create",
        "deployment",
        "made",
        "-n",
        "team-a",
        "--image=busybox:1.36",
        "--replicas=2",
        "--port=8080",
    ]);
    k.ok(&[
        "create",
        "job",
        "once",
        "-n",
        "team-a",
        "--image=busybox:1.36",
        "--",
        "echo",
        "hi",
    ]);
    let secret = k.ok(&[
        "get",
        "secret",
        "token",
        "-n",
        "team-a",
        "-o",
        "jsonpath={.data.password}",
    ]);
    assert_eq!(secret, "czNjcmV0");
    let made = k.ok(&["get", "deploy", "made", "-n", "team-a", "-o", "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].ports[0].containerPort}"]);
    assert_eq!(made, "2 busybox:1.36 8080");
    let job = k.ok(&[
        "get",
        "job",
        "once",
        "-n",
        "team-a",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].command} {.spec.template.spec.restartPolicy}",
    ]);
    assert_eq!(job, r#"["echo","hi"] Never"#);
    assert_eq!(
        k.ok(&[
            "get",
            "cm",
            "made",
            "-n",
            "team-a",
            "-o",
            "jsonpath={.data.k}"
        ]),
        "v"
    );

    // explain reads the served OpenAPI schemas
    let explain = k.ok(&["explain", "deployment.spec.replicas"]);
    assert!(
        explain.contains("replicas") && explain.contains("integer"),
        "{explain}"
    );

    // a CRD and its custom resources
    k.ok_with(&["apply", "-f", "-"], Some(CRD));
    k.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/widgets.example.kelson.dev",
        "--timeout=20s",
    ]);
    let widget = "apiVersion: example.kelson.dev/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 3, color: red}\n";
    // kubectl may need a moment to rediscover the new type
    k.ok_within(Duration::from_secs(20), &["apply", "-f", "-"], Some(widget));
    // explain serves the CRD's schema, and follows a change to it
    let explain = k.ok(&["explain", "widget.spec.size"]);
    assert!(explain.contains("integer"), "{explain}");
    k.ok_with(
        &["apply", "-f", "-"],
        Some(&CRD.replace(
            "color: {type: string, enum: [red, blue]}",
            "color: {type: string, enum: [red, blue]}\n              shape: {type: string}",
        )),
    );
    k.ok_within(
        Duration::from_secs(20),
        &["explain", "widget.spec.shape"],
        None,
    );
    let widgets = k.ok(&["get", "widgets"]);
    assert!(
        widgets.contains("SIZE") && widgets.contains("w1") && widgets.contains('3'),
        "{widgets}"
    );
    assert!(k.ok(&["get", "wd", "w1", "-o", "jsonpath={.spec.color}"]) == "red");
    let error = k.fails(&["apply", "-f", "-"], Some("apiVersion: example.kelson.dev/v1\nkind: Widget\nmetadata: {name: w2}\nspec: {size: 0, color: green}\n"));
    assert!(
        error.contains("Invalid") || error.contains("invalid"),
        "{error}"
    );
    k.ok(&[
        "patch",
        "widget",
        "w1",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"ready":true}}"#,
    ]);
    assert_eq!(
        k.ok(&["get", "widget", "w1", "-o", "jsonpath={.status.ready}"]),
        "true"
    );

    // bad input is refused with a clear reason
    let error = k.fails(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bad, bogus: 1}\ndata: {a: \"1\"}\n",
        ),
    );
    assert!(error.contains("bogus"), "{error}");
    let error = k.fails(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: Not_Valid}\n"),
    );
    assert!(
        error.contains("Invalid value") && error.contains("Not_Valid"),
        "{error}"
    );

    // deletion: propagation policies become finalizers that the garbage collector honours;
    // kubectl waits until the object is gone
    let sets_before = k.ok(&["get", "rs", "-l", "app=web", "-o", "name"]);
    assert!(
        !sets_before.trim().is_empty(),
        "the deployment controller made ReplicaSets"
    );
    k.ok(&[
        "delete",
        "deploy",
        "web",
        "--cascade=orphan",
        "--timeout=30s",
    ]);
    let orphaned = k.ok(&[
        "get",
        "rs",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].metadata.ownerReferences}",
    ]);
    assert!(
        !orphaned.contains("uid"),
        "orphaned ReplicaSets lose their owner: {orphaned}"
    );
    k.ok_with(&["apply", "-f", "-"], Some(&updated));
    k.ok(&[
        "delete",
        "deploy",
        "web",
        "--cascade=foreground",
        "--timeout=30s",
    ]);
    k.ok(&[
        "delete",
        "cm",
        "settings",
        "--cascade=orphan",
        "--timeout=30s",
    ]);
    let error = k.fails(&["get", "cm", "settings"], None);
    assert!(error.contains("NotFound"), "{error}");
    k.ok(&["delete", "svc", "web"]);
    let error = k.fails(&["get", "svc", "web"], None);
    assert!(error.contains("NotFound"), "{error}");

    watch_prints_changes(&k);
}

/// `kubectl get -w` prints rows as objects change.
fn watch_prints_changes(k: &Kubectl) {
    let mut watch = k
        .command(&["get", "configmaps", "-w", "--output-watch-events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    k.ok_with(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: watched}\n"),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|l: &String| l.contains("ADDED") && l.contains("watched"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "kubectl get -w printed no ADDED row: {seen:?}"
        );
        if let Ok(line) = rx.recv_timeout(left) {
            seen.push(line);
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
}

#[test]
fn kubectl_1_27() {
    exercise(27);
}

#[test]
fn kubectl_1_30() {
    exercise(30);
}

#[test]
fn kubectl_1_33() {
    exercise(33);
}
