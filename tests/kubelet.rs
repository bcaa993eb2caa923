//! End-to-end: `kelson server` with its node agent on this machine's containerd (set up by
//! scripts/setup.sh), driven by kubectl. Pods really run: HTTP is served from the pod network,
//! crashes back off, memory limits OOM-kill, bad input is reported, deletion honours the grace
//! period, and a restarted server adopts running containers.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use kelson_testing::{KelsonProcess, Kubectl, RuntimeCleanup, wait_for};

const WORKLOADS: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: page}
data: {greeting: hello from kelson}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: httpd
        image: busybox:1.35
        env:
        - {name: GREETING, valueFrom: {configMapKeyRef: {name: page, key: greeting}}}
        - {name: POD, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        command: [sh, -c, 'mkdir -p /www && echo "$GREETING ($POD)" > /www/index.html && exec httpd -f -p 8080 -h /www']
        resources:
          requests: {cpu: 50m, memory: 16Mi}
          limits: {cpu: 200m, memory: 64Mi}
---
apiVersion: v1
kind: Pod
metadata: {name: crash}
spec:
  containers:
  - {name: main, image: busybox:1.35, command: [sh, -c, 'echo bye; exit 3']}
---
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: busybox:1.35
    # a moment first: containerd 1.6 misses an OOM that comes before it watches the cgroup
    command: [sh, -c, 'sleep 1; exec dd if=/dev/zero of=/dev/null bs=100M count=1']
    resources: {limits: {memory: 16Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: once}
spec:
  restartPolicy: Never
  initContainers:
  - {name: prepare, image: busybox:1.35, command: ["true"]}
  containers:
  - {name: main, image: busybox:1.35, command: [sh, -c, 'exit 0']}
---
apiVersion: v1
kind: Pod
metadata: {name: noimage}
spec:
  containers:
  - {name: main, image: "registry.invalid/nothing:v1"}
---
apiVersion: v1
kind: Pod
metadata: {name: nocommand}
spec:
  containers:
  - {name: main, image: busybox:1.35, command: [/no/such/binary]}
---
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {password: s3cret}
---
apiVersion: v1
kind: Pod
metadata: {name: volumes, labels: {app: vol}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox:1.35
    command:
    - sh
    - -c
    - |
      cat /secret/password; echo
      cat /info/labels; echo
      grep -q ' /memory tmpfs' /proc/mounts && echo memory-is-tmpfs
      grep -q "$(hostname)" /etc/hosts && echo hosts-has-pod
      echo "namespace: $(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace)"
      grep -q "BEGIN CERTIFICATE" /var/run/secrets/kubernetes.io/serviceaccount/ca.crt && echo ca-mounted
      while true; do echo "page: $(cat /config/greeting) secret: $(cat /secret/password)"; cat /scratch/note 2>/dev/null; sleep 1; done
    volumeMounts:
    - {name: page, mountPath: /config}
    - {name: creds, mountPath: /secret}
    - {name: scratch, mountPath: /scratch}
    - {name: memory, mountPath: /memory}
    - {name: info, mountPath: /info}
  - name: writer
    image: busybox:1.35
    command: [sh, -c, 'echo shared-note > /scratch/note; exec sleep 3600']
    volumeMounts: [{name: scratch, mountPath: /scratch}]
  volumes:
  - {name: page, configMap: {name: page}}
  - {name: creds, secret: {secretName: creds, defaultMode: 0400}}
  - {name: scratch, emptyDir: {}}
  - {name: memory, emptyDir: {medium: Memory, sizeLimit: 8Mi}}
  - {name: info, downwardAPI: {items: [{path: labels, fieldRef: {fieldPath: metadata.labels}}]}}
---
apiVersion: v1
kind: Pod
metadata: {name: hostnet}
spec:
  hostNetwork: true
  restartPolicy: Never
  containers:
  - name: main
    image: busybox:1.35
    imagePullPolicy: Never
    command: [sh, -c, 'echo "password=$PASSWORD greeting=$greeting limit=$LIMIT host=$(hostname)"']
    envFrom: [{configMapRef: {name: page}}]
    env:
    - {name: PASSWORD, valueFrom: {secretKeyRef: {name: creds, key: password}}}
    - {name: LIMIT, valueFrom: {resourceFieldRef: {containerName: main, resource: limits.memory, divisor: 1Mi}}}
    resources: {limits: {memory: 32Mi}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 16Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: keeper}
spec:
  restartPolicy: Never
  containers:
  - {name: main, image: busybox:1.35, command: [sh, -c, 'echo kept > /data/note'], volumeMounts: [{name: data, mountPath: /data}]}
  volumes: [{name: data, persistentVolumeClaim: {claimName: data}}]
---
apiVersion: v1
kind: Pod
metadata: {name: filler}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox:1.35
    command: [sh, -c, 'dd if=/dev/zero of=/scratch/fill bs=1M count=4; exec sleep 3600']
    volumeMounts: [{name: scratch, mountPath: /scratch}]
  volumes: [{name: scratch, emptyDir: {sizeLimit: 1Mi}}]
---
apiVersion: v1
kind: Pod
metadata: {name: farewell}
spec:
  restartPolicy: Never
  containers:
  - {name: custom, image: busybox:1.35, terminationMessagePath: /tmp/why, command: [sh, -c, 'echo "disk full at /data" > /tmp/why; exit 2']}
  - {name: plain, image: busybox:1.35, command: [sh, -c, 'printf done > /dev/termination-log']}
  - {name: fallback, image: busybox:1.35, terminationMessagePolicy: FallbackToLogsOnError, command: [sh, -c, 'echo starting; echo "panic: boom"; exit 1']}
---
apiVersion: v1
kind: Pod
metadata: {name: probed}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: busybox:1.35
    command: [sh, -c, 'mkdir -p /www; (sleep 2; echo ok > /www/healthz) & exec httpd -f -p 8080 -h /www']
    ports: [{name: http, containerPort: 8080}]
    readinessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 1}
    startupProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
  - name: sick
    image: busybox:1.35
    command: [sleep, "3600"]
    livenessProbe: {exec: {command: [cat, /tmp/healthy]}, periodSeconds: 1, failureThreshold: 2}
---
apiVersion: v1
kind: Pod
metadata: {name: secured}
spec:
  securityContext: {runAsUser: 1000, runAsGroup: 3000, runAsNonRoot: true}
  containers:
  - name: main
    image: busybox:1.35
    command: [sh, -c, 'id; touch /x 2>/dev/null || echo read-only-root; grep CapEff /proc/self/status; exec sleep 3600']
    securityContext: {readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
---
apiVersion: v1
kind: Pod
metadata: {name: rootless}
spec:
  containers:
  - {name: main, image: busybox:1.35, command: [sleep, "3600"], securityContext: {runAsNonRoot: true}}
---
apiVersion: v1
kind: Pod
metadata: {name: talk}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: busybox:1.35, stdin: true, command: [sh, -c, 'while read x; do echo "got $x"; done']}
---
apiVersion: v1
kind: Pod
metadata: {name: nomount}
spec:
  containers:
  - {name: main, image: busybox:1.35, command: [sleep, "3600"], volumeMounts: [{name: v, mountPath: /v}]}
  volumes: [{name: v, configMap: {name: absent}}]
---
apiVersion: v1
kind: Pod
metadata: {name: noconfig}
spec:
  containers:
  - name: main
    image: busybox:1.35
    command: [sleep, "3600"]
    env: [{name: X, valueFrom: {configMapKeyRef: {name: missing, key: x}}}]
"#;

fn jsonpath(kubectl: &Kubectl, pod: &str, path: &str) -> String {
    let output = kubectl.run(
        &["get", "pod", pod, "-o", &format!("jsonpath={{{path}}}")],
        None,
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn wait_jsonpath(kubectl: &Kubectl, pod: &str, path: &str, expected: &str) -> String {
    wait_for(
        Duration::from_secs(60),
        &format!("{pod} {path} to contain {expected}"),
        || {
            let value = jsonpath(kubectl, pod, path);
            value.contains(expected).then_some(value)
        },
    )
}

/// A busybox pod bound to `node` running `script`, as JSON for `kubectl apply`.
fn pod_on(node: &str, name: &str, script: &str) -> String {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": "busybox:1.35", "command": ["sh", "-c", script]}]},
    })
    .to_string()
}

/// Waits until `kubectl logs pod` contains `needle`; returns the logs.
fn wait_logs(kubectl: &Kubectl, pod: &str, needle: &str) -> String {
    wait_for(
        Duration::from_secs(20),
        &format!("{needle} in the log of {pod}"),
        || {
            let output = kubectl.run(&["logs", pod], None);
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            text.contains(needle).then_some(text)
        },
    )
}

/// Waits until `node` is Ready.
fn wait_node_ready(kubectl: &Kubectl, node: &str) {
    wait_for(
        Duration::from_secs(30),
        &format!("node {node} to be Ready"),
        || {
            let output = kubectl.run(&["get", "node", node, "--no-headers"], None);
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            text.contains(" Ready ").then_some(text)
        },
    );
}

fn http_get(address: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&address.parse().unwrap(), Duration::from_secs(3))?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// logs, exec (with stdin and an exit code), cp and port-forward through the API server and
/// the kubelet, with kubectl `1.<minor>`. From 1.30 kubectl speaks WebSocket v5 for exec,
/// attach and cp, falling back to SPDY only when the upgrade fails.
fn streaming(kubectl: &Kubectl, minor: u32, pod: &str) {
    if minor >= 30 {
        let verbose = kubectl.run(&["exec", "-v=4", pod, "--", "echo", "over v5"], None);
        let log = String::from_utf8_lossy(&verbose.stderr);
        assert_eq!(
            String::from_utf8_lossy(&verbose.stdout),
            "over v5\n",
            "{log}"
        );
        assert!(
            !log.contains("RemoteCommand fallback"),
            "kubectl 1.{minor} fell back to SPDY: {log}"
        );
        // stdin's end reaches the container (v5's close signal), so `wc` finishes
        let counted = kubectl.ok_with(&["exec", "-i", pod, "--", "wc", "-c"], Some("12345"));
        assert_eq!(counted.trim(), "5");
    }
    let logs = kubectl.ok(&["logs", pod, "--tail=5"]);
    assert_eq!(logs, "", "httpd -f logs nothing");
    let logs = kubectl.ok(&["logs", "deploy/web", "-c", "httpd", "--timestamps"]);
    assert_eq!(logs, "");
    let output = kubectl.ok(&["exec", pod, "--", "cat", "/www/index.html"]);
    assert!(output.starts_with("hello from kelson"), "{output}");
    let output = kubectl.ok_with(
        &["exec", "-i", pod, "--", "tr", "a-z", "A-Z"],
        Some("shout\n"),
    );
    assert_eq!(output, "SHOUT\n");
    // exec -it: kubectl wants a terminal of its own, which `script` gives it; the container
    // gets one too
    let inner = kubectl.command(&["exec", "-it", pod, "--", "tty"]);
    let line: Vec<String> = std::iter::once(inner.get_program())
        .chain(inner.get_args())
        .map(|a| format!("'{}'", a.to_string_lossy()))
        .collect();
    let mut script = std::process::Command::new("script");
    script.args(["-qec", &line.join(" "), "/dev/null"]);
    for (key, value) in inner.get_envs() {
        if let Some(value) = value {
            script.env(key, value);
        }
    }
    let output = script.output().unwrap();
    let terminal = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && terminal.contains("/dev/pts/"),
        "{terminal} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let failed = kubectl.run(&["exec", pod, "--", "sh", "-c", "exit 7"], None);
    assert_eq!(
        failed.status.code(),
        Some(7),
        "the exit code passes through"
    );
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("copied.txt");
    std::fs::write(&local, "copied in\n").unwrap();
    let target = format!("{pod}:/tmp/copied.txt");
    kubectl.ok(&["cp", local.to_str().unwrap(), &target]);
    assert_eq!(
        kubectl.ok(&["exec", pod, "--", "cat", "/tmp/copied.txt"]),
        "copied in\n"
    );
    let back = dir.path().join("back.txt");
    kubectl.ok(&["cp", &target, back.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "copied in\n");
    // 4 MiB of incompressible bytes there and back: many frames each way
    let big: Vec<u8> = (0u32..1 << 20)
        .flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes())
        .collect();
    let local = dir.path().join("big.bin");
    std::fs::write(&local, &big).unwrap();
    let target = format!("{pod}:/tmp/big.bin");
    kubectl.ok(&["cp", local.to_str().unwrap(), &target]);
    let back = dir.path().join("big-back.bin");
    kubectl.ok(&["cp", &target, back.to_str().unwrap()]);
    assert!(std::fs::read(&back).unwrap() == big, "4 MiB copied intact");

    // port-forward to a free local port, then fetch the page through it
    let mut forward = kubectl
        .command(&[
            "port-forward",
            &format!("pod/{pod}"),
            ":8080",
            "--address=127.0.0.1",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(forward.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    // "Forwarding from 127.0.0.1:PORT -> 8080"
    let local_port = line
        .split_whitespace()
        .nth(2)
        .and_then(|a| a.rsplit(':').next())
        .unwrap_or_default()
        .to_owned();
    let page = http_get(&format!("127.0.0.1:{local_port}"));
    let _ = forward.kill();
    let _ = forward.wait();
    let page = page.unwrap_or_else(|e| panic!("port-forward ({line}) failed: {e}"));
    assert!(page.contains("hello from kelson"), "{page}");
}

#[test]
fn pods_run_on_containerd() {
    let node = format!("e2e-kubelet-{}", std::process::id());
    let cleanup = RuntimeCleanup::new(&node);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    std::fs::create_dir_all(&data).unwrap();
    let binary = Path::new(env!("CARGO_BIN_EXE_kelson"));
    let node_arg = format!("--node-name={node}");
    let mut server = KelsonProcess::server(binary, &data, &[&node_arg]).unwrap();
    let kubectl = Kubectl::new(33, &server.kubeconfig());

    // the node registers with this machine's capacity and containerd's version
    wait_node_ready(&kubectl, &node);
    let runtime = kubectl.ok(&[
        "get",
        "node",
        &node,
        "-o",
        "jsonpath={.status.nodeInfo.containerRuntimeVersion}",
    ]);
    assert!(runtime.starts_with("containerd://"), "{runtime}");
    // the pressure conditions come from real readings (this machine has memory to spare)
    let conditions = kubectl.ok(&[
        "get",
        "node",
        &node,
        "-o",
        "jsonpath={range .status.conditions[*]}{.type}={.status}/{.reason} {end}",
    ]);
    assert!(
        conditions.contains("MemoryPressure=False/KubeletHasSufficientMemory"),
        "{conditions}"
    );
    assert!(conditions.contains("DiskPressure="), "{conditions}");
    assert!(conditions.contains("PIDPressure=False"), "{conditions}");

    kubectl.ok_with(&["apply", "-f", "-"], Some(WORKLOADS));
    kubectl.ok_within(
        Duration::from_secs(60),
        &["rollout", "status", "deployment/web", "--timeout=60s"],
        None,
    );

    // each replica serves its page from the pod network, built from the ConfigMap and fieldRef
    let pods = kubectl.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.status.podIP}{\"\\n\"}{end}",
    ]);
    for line in pods.lines() {
        let (name, ip) = line.split_once(' ').unwrap();
        assert!(ip.starts_with("10.88."), "pod IP {ip}");
        let page = wait_for(Duration::from_secs(20), "httpd to answer", || {
            http_get(&format!("{ip}:8080")).ok()
        });
        assert!(page.starts_with("HTTP/1.1 200"), "{page}");
        assert!(
            page.contains(&format!("hello from kelson ({name})")),
            "{page}"
        );
    }
    let qos = jsonpath(
        &kubectl,
        pods.split(' ').next().unwrap(),
        ".status.qosClass",
    );
    assert_eq!(qos, "Burstable");
    let first = pods
        .lines()
        .next()
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
    for minor in [27, 33] {
        streaming(&Kubectl::new(minor, &server.kubeconfig()), minor, &first);
    }
    // the Summary API through nodes/proxy: the node and each running pod with its usage
    let summary = wait_for(Duration::from_secs(20), "pod stats in the summary", || {
        let raw = kubectl.ok(&[
            "get",
            "--raw",
            &format!("/api/v1/nodes/{node}/proxy/stats/summary"),
        ]);
        let summary: serde_json::Value = serde_json::from_str(&raw).ok()?;
        let pods = summary["pods"].as_array()?;
        let web = pods
            .iter()
            .find(|p| p["podRef"]["name"] == first.as_str())?;
        (web["memory"]["workingSetBytes"].as_u64()? > 0).then_some(raw)
    });
    let summary: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(summary["node"]["nodeName"], node.as_str());
    assert!(
        summary["node"]["memory"]["availableBytes"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(summary["node"]["fs"]["capacityBytes"].as_u64().unwrap() > 0);
    // the kubelet's own metrics, named as the kubelet names them
    let metrics = kubectl.ok(&[
        "get",
        "--raw",
        &format!("/api/v1/nodes/{node}/proxy/metrics"),
    ]);
    for name in [
        "kubelet_running_pods ",
        "kubelet_running_containers{container_state=\"running\"}",
        "kubelet_started_containers_total{container_type=\"container\"}",
        "kubelet_pod_start_duration_seconds_count",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }

    // a crashing container restarts with a growing back-off
    wait_jsonpath(
        &kubectl,
        "crash",
        ".status.containerStatuses[0].state.waiting.reason",
        "CrashLoopBackOff",
    );
    let last = jsonpath(
        &kubectl,
        "crash",
        ".status.containerStatuses[0].lastState.terminated.exitCode",
    );
    assert_eq!(last, "3");
    let events = kubectl.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=crash",
    ]);
    assert!(
        events.contains("Back-off restarting failed container main"),
        "{events}"
    );
    let previous = kubectl.ok(&["logs", "crash", "--previous"]);
    assert_eq!(previous, "bye\n");
    let message = jsonpath(
        &kubectl,
        "crash",
        ".status.containerStatuses[0].state.waiting.message",
    );
    assert!(
        message.starts_with("back-off 10s restarting failed container=main pod=crash_default("),
        "{message}"
    );

    // a memory limit is enforced
    wait_jsonpath(&kubectl, "hog", ".status.phase", "Failed");
    assert_eq!(
        jsonpath(
            &kubectl,
            "hog",
            ".status.containerStatuses[0].state.terminated.reason"
        ),
        "OOMKilled"
    );
    assert_eq!(
        jsonpath(
            &kubectl,
            "hog",
            ".status.containerStatuses[0].state.terminated.exitCode"
        ),
        "137"
    );

    // init containers run first; a pod that does not restart succeeds
    wait_jsonpath(&kubectl, "once", ".status.phase", "Succeeded");
    assert_eq!(
        jsonpath(
            &kubectl,
            "once",
            ".status.initContainerStatuses[0].state.terminated.reason"
        ),
        "Completed"
    );

    // bad input is reported, not crashed on
    let reason = wait_jsonpath(
        &kubectl,
        "noimage",
        ".status.containerStatuses[0].state.waiting.reason",
        "Image",
    );
    assert!(
        reason == "ErrImagePull" || reason == "ImagePullBackOff",
        "{reason}"
    );
    wait_jsonpath(
        &kubectl,
        "nocommand",
        ".status.containerStatuses[0].state.waiting.reason",
        "RunContainerError",
    );
    let message = jsonpath(
        &kubectl,
        "nocommand",
        ".status.containerStatuses[0].state.waiting.message",
    );
    assert!(message.contains("/no/such/binary"), "{message}");
    wait_jsonpath(
        &kubectl,
        "noconfig",
        ".status.containerStatuses[0].state.waiting.message",
        "configmap \"missing\" not found",
    );
    let events = kubectl.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=noimage",
    ]);
    assert!(events.contains("Failed to pull image"), "{events}");

    // volumes: configMap, secret, emptyDir shared by two containers, tmpfs, downward API;
    // the container's own output (its CRI log file) shows what it sees
    let uid = jsonpath(&kubectl, "volumes", ".metadata.uid");
    let log = format!("/var/log/pods/default_volumes_{uid}/main/0.log");
    let seen = |needle: &str| {
        let needle = needle.to_owned();
        let log = log.clone();
        wait_for(
            Duration::from_secs(30),
            &format!("{needle} in {log}"),
            move || {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                text.contains(&needle).then_some(text)
            },
        )
    };
    for expected in [
        "s3cret",
        "app=\"vol\"",
        "memory-is-tmpfs",
        "hosts-has-pod",
        "page: hello from kelson",
        "shared-note",
    ] {
        seen(expected);
    }
    // the service-account token, CA and namespace are mounted, and the token authenticates
    seen("namespace: default");
    seen("ca-mounted");
    let token = kubectl.ok(&[
        "exec",
        "volumes",
        "-c",
        "main",
        "--",
        "cat",
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
    ]);
    let as_token = |token: &str| {
        kubectl.run(
            &[
                "--kubeconfig=/dev/null",
                "--server",
                &server.url,
                "--insecure-skip-tls-verify",
                "--token",
                token,
                "auth",
                "whoami",
                "-o",
                "jsonpath={.status.userInfo.username}",
            ],
            None,
        )
    };
    let output = as_token(token.trim());
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "system:serviceaccount:default:default"
    );
    let created = kubectl.ok(&["create", "token", "default", "--duration=10m"]);
    assert!(as_token(created.trim()).status.success());
    let forged = format!("{}x", created.trim());
    let refused = as_token(&forged);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("Unauthorized"));

    // lifecycle hooks: postStart runs before the container is considered started, preStop
    // runs before the container is stopped
    let hooks_dir = dir.path().join("hooks");
    let hooks = format!(
        r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "hooks"}},
        "spec": {{"terminationGracePeriodSeconds": 2,
          "volumes": [{{"name": "out", "hostPath": {{"path": "{}", "type": "DirectoryOrCreate"}}}}],
          "containers": [{{"name": "main", "image": "busybox:1.35",
            "command": ["sh", "-c", "while [ ! -f /tmp/poststart ]; do sleep 0.1; done; echo saw-poststart; exec sleep 3600"],
            "volumeMounts": [{{"name": "out", "mountPath": "/out"}}],
            "lifecycle": {{
              "postStart": {{"exec": {{"command": ["sh", "-c", "echo hi > /tmp/poststart"]}}}},
              "preStop": {{"exec": {{"command": ["sh", "-c", "echo prestop-ran > /out/prestop"]}}}}}}}},
            {{"name": "web", "image": "busybox:1.35",
            "command": ["sh", "-c", "sleep 3600 | nc -l -p 8080 > /out/request"],
            "volumeMounts": [{{"name": "out", "mountPath": "/out"}}],
            "readinessProbe": {{"exec": {{"command": ["sh", "-c", "netstat -ltn | grep -q :8080"]}}, "periodSeconds": 1}},
            "lifecycle": {{"preStop": {{"httpGet": {{"path": "/stop?why=test", "port": 8080}}}}}}}}]}}}}"#,
        hooks_dir.display()
    );
    kubectl.ok_with(&["apply", "-f", "-"], Some(&hooks));
    wait_jsonpath(&kubectl, "hooks", ".status.phase", "Running");
    wait_logs(&kubectl, "hooks", "saw-poststart");
    wait_jsonpath(
        &kubectl,
        "hooks",
        ".status.containerStatuses[?(@.name==\"web\")].ready",
        "true",
    );
    kubectl.ok(&["delete", "pod", "hooks", "--wait=true"]);
    assert_eq!(
        std::fs::read_to_string(hooks_dir.join("prestop")).unwrap_or_default(),
        "prestop-ran\n"
    );
    // an httpGet preStop hook reaches the container's port on the pod network (nc's stdin is
    // a pipe that stays open: at end of input nc would hang up before reading the request)
    let request = std::fs::read_to_string(hooks_dir.join("request")).unwrap_or_default();
    assert!(
        request.starts_with("GET /stop?why=test HTTP/1.1\r\n"),
        "{request:?}; {}",
        kubectl.ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=hooks"
        ])
    );

    // a ConfigMap update reaches the mounted file in place
    kubectl.ok(&[
        "patch",
        "configmap",
        "page",
        "-p",
        r#"{"data":{"greeting":"updated"}}"#,
    ]);
    seen("page: updated");
    // logs -f (from the end: --tail=0) streams lines as they are written; --since keeps only
    // the recent ones
    let mut follow = kubectl
        .command(&["logs", "-f", "--tail=0", "volumes", "-c", "main"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // lines come through a thread, so a stream that stalls fails the test instead of hanging it
    let followed = std::io::BufReader::new(follow.stdout.take().unwrap());
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(followed).map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut pages = 0;
    while pages < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(line) if line.starts_with("page: updated") => pages += 1,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(pages, 2, "followed lines written after the request");
    let all = kubectl.ok(&["logs", "volumes", "-c", "main", "--since=1h"]);
    let recent = kubectl.ok(&["logs", "volumes", "-c", "main", "--since=2s"]);
    assert!(
        recent.lines().count() < all.lines().count() && recent.lines().count() <= 6,
        "--since=2s gave {} of {} lines",
        recent.lines().count(),
        all.lines().count()
    );
    // and so does a Secret update
    kubectl.ok(&[
        "patch",
        "secret",
        "creds",
        "-p",
        r#"{"stringData":{"password":"rotated"}}"#,
    ]);
    seen("secret: rotated");

    // termination messages: the file at terminationMessagePath, or the log's end after a
    // failure with FallbackToLogsOnError, as `kubectl describe` shows them
    wait_jsonpath(&kubectl, "farewell", ".status.phase", "Failed");
    let message = |container: &str| {
        jsonpath(
            &kubectl,
            "farewell",
            &format!(
                ".status.containerStatuses[?(@.name==\"{container}\")].state.terminated.message"
            ),
        )
    };
    assert_eq!(message("custom"), "disk full at /data\n");
    assert_eq!(message("plain"), "done");
    assert_eq!(message("fallback"), "starting\npanic: boom\n");
    let described = kubectl.ok(&["describe", "pod", "farewell"]);
    assert!(described.contains("disk full at /data"), "{described}");

    // host network: the node's address and name; env from a whole ConfigMap, a Secret key
    // and a resource limit
    wait_jsonpath(&kubectl, "hostnet", ".status.phase", "Succeeded");
    assert_eq!(
        jsonpath(&kubectl, "hostnet", ".status.podIP"),
        jsonpath(&kubectl, "hostnet", ".status.hostIP")
    );
    let printed = kubectl.ok(&["logs", "hostnet"]);
    assert!(
        printed.starts_with("password=s3cret greeting=hello from kelson limit=32 host="),
        "{printed}"
    );
    assert!(
        !printed.trim_end().ends_with("host=hostnet"),
        "the node's host name, not the pod's: {printed}"
    );

    // a claim provisioned by the default class: the pod's write lands in the volume's
    // directory on this machine
    wait_jsonpath(&kubectl, "keeper", ".status.phase", "Succeeded");
    let volume = kubectl.ok(&["get", "pvc", "data", "-o", "jsonpath={.spec.volumeName}"]);
    let host_path = kubectl.ok(&["get", "pv", &volume, "-o", "jsonpath={.spec.hostPath.path}"]);
    assert_eq!(
        std::fs::read_to_string(Path::new(&host_path).join("note")).unwrap_or_default(),
        "kept\n",
        "{host_path}"
    );

    // a disk-backed emptyDir that outgrows its sizeLimit gets its pod evicted
    wait_jsonpath(&kubectl, "filler", ".status.reason", "Evicted");
    assert_eq!(
        jsonpath(&kubectl, "filler", ".status.message"),
        "Usage of EmptyDir volume \"scratch\" exceeds the limit \"1Mi\". "
    );
    assert_eq!(jsonpath(&kubectl, "filler", ".status.phase"), "Failed");
    // a missing ConfigMap keeps the pod ContainerCreating with a FailedMount event
    wait_for(Duration::from_secs(30), "a FailedMount event", || {
        let events = kubectl.ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=nomount",
        ]);
        events
            .contains("configmap \"absent\" not found")
            .then_some(events)
    });
    assert_eq!(
        jsonpath(
            &kubectl,
            "nomount",
            ".status.containerStatuses[0].state.waiting.reason"
        ),
        "ContainerCreating"
    );

    // probes: readiness over HTTP on a named port once the page exists; a failing exec
    // liveness probe restarts its container
    wait_jsonpath(
        &kubectl,
        "probed",
        ".status.containerStatuses[?(@.name==\"web\")].ready",
        "true",
    );
    wait_for(Duration::from_secs(60), "a liveness restart", || {
        let path = ".status.containerStatuses[?(@.name==\"sick\")].restartCount";
        let restarts = jsonpath(&kubectl, "probed", path);
        (restarts.parse::<u32>().unwrap_or(0) >= 1).then_some(restarts)
    });
    let events = kubectl.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=probed",
    ]);
    assert!(events.contains("Liveness probe failed"), "{events}");
    assert!(
        events.contains("failed liveness probe, will be restarted"),
        "{events}"
    );
    assert_eq!(
        jsonpath(
            &kubectl,
            "probed",
            ".status.containerStatuses[?(@.name==\"web\")].restartCount"
        ),
        "0"
    );

    // attach: stdin reaches the running container's process
    wait_jsonpath(&kubectl, "talk", ".status.phase", "Running");
    let _ = kubectl.run(&["attach", "-i", "talk", "-c", "c"], Some("hello attach\n"));
    wait_logs(&kubectl, "talk", "got hello attach");

    // securityContext: user and group, a read-only root filesystem, no capabilities; and a
    // runAsNonRoot container whose image runs as root is refused with a clear reason
    let secured = wait_logs(&kubectl, "secured", "CapEff");
    assert!(secured.contains("uid=1000 gid=3000"), "{secured}");
    assert!(secured.contains("read-only-root"), "{secured}");
    assert!(secured.contains("CapEff:\t0000000000000000"), "{secured}");
    let reason = wait_jsonpath(
        &kubectl,
        "rootless",
        ".status.containerStatuses[0].state.waiting.message",
        "runAsNonRoot",
    );
    assert!(reason.contains("image will run as root"), "{reason}");

    // kill -9 and restart: running containers are adopted, not restarted
    let web = pods
        .lines()
        .next()
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
    let before = jsonpath(&kubectl, &web, ".status.containerStatuses[0].containerID");
    // first SIGTERM, which exits cleanly, then kill -9
    let status = server.terminate().unwrap();
    assert!(status.success(), "SIGTERM: {status}");
    let mut server = KelsonProcess::server(binary, &data, &[&node_arg]).unwrap();
    server.kill();
    let mut server = KelsonProcess::server(binary, &data, &[&node_arg]).unwrap();
    let kubectl = Kubectl::new(33, &server.kubeconfig());
    std::thread::sleep(Duration::from_secs(3));
    let after = wait_jsonpath(&kubectl, &web, ".status.phase", "Running");
    assert_eq!(after, "Running");
    assert_eq!(
        jsonpath(&kubectl, &web, ".status.containerStatuses[0].containerID"),
        before
    );
    assert_eq!(
        jsonpath(&kubectl, &web, ".status.containerStatuses[0].restartCount"),
        "0"
    );

    // deletion stops the containers within the grace period (2 s here; httpd ignores SIGTERM
    // as PID 1, so it takes the whole period)
    let started = Instant::now();
    kubectl.ok(&["delete", "pod", &web, "--wait=true"]);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "deletion took {took:?}");
    kubectl.ok(&["delete", "deployment", "web"]);
    kubectl.ok(&["delete", "pods", "--all", "--grace-period=1", "--wait=true"]);
    wait_for(
        Duration::from_secs(30),
        "every sandbox to be removed",
        || {
            cleanup
                .sandboxes()
                .ok()
                .filter(Vec::is_empty)
                .map(|_| String::new())
        },
    );
    let status = server.terminate().unwrap();
    assert!(status.success(), "SIGTERM: {status}");
}

/// A `kelson agent` process, killed when dropped.
struct AgentProcess(std::process::Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn agent_joins_with_the_token() {
    let node = format!("e2e-joined-{}", std::process::id());
    let cleanup = RuntimeCleanup::new(&node);
    // the server runs its own agent too: two kubelets share this machine's containerd
    let first = format!("e2e-first-{}", std::process::id());
    let first_cleanup = RuntimeCleanup::new(&first);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    std::fs::create_dir_all(&data).unwrap();
    let binary = Path::new(env!("CARGO_BIN_EXE_kelson"));
    let first_arg = format!("--node-name={first}");
    let server = KelsonProcess::server(binary, &data, &[&first_arg]).unwrap();
    let kubectl = Kubectl::new(33, &server.kubeconfig());
    let token = std::fs::read_to_string(data.join("node-token")).unwrap();
    let token = token.trim();
    let agent = |token: &str, log: &str| {
        std::process::Command::new(binary)
            .args(["agent", "--server", &server.url, "--token", token])
            .arg(format!("--node-name={node}"))
            .arg("--kubelet-port=0")
            .arg("--node-exporter-listen=127.0.0.1:0")
            .arg("--logs-listen=127.0.0.1:0")
            .arg("--disable-proxy")
            .args([
                "--container-log-max-size=4096",
                "--container-log-max-files=3",
            ])
            .arg("--data-dir")
            .arg(dir.path().join("agent"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join(log)).unwrap())
            .spawn()
            .unwrap()
    };

    // a token pinning another CA is refused before anything is sent
    let wrong = format!("K10{}{}", "0".repeat(64), &token[67..]);
    let status = agent(&wrong, "wrong.log").wait().unwrap();
    assert!(!status.success());
    let log = std::fs::read_to_string(dir.path().join("wrong.log")).unwrap();
    assert!(log.contains("does not match the token"), "{log}");

    let agent_process = AgentProcess(agent(token, "agent.log"));
    wait_node_ready(&kubectl, &node);
    // the agent serves its machine's metrics as node_exporter does
    let address = std::fs::read_to_string(dir.path().join("agent/node-exporter/address")).unwrap();
    let mut stream = TcpStream::connect(address.trim()).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut metrics = String::new();
    stream.read_to_string(&mut metrics).unwrap();
    assert!(
        metrics.contains("node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"}"),
        "{metrics}"
    );
    let pod = pod_on(
        &node,
        "joined",
        "echo hello from the joined node; exec sleep 3600",
    );
    kubectl.ok_with(&["apply", "-f", "-"], Some(&pod));
    let local = pod_on(
        &first,
        "local",
        "echo hello from the first node; exec sleep 3600",
    );
    kubectl.ok_with(&["apply", "-f", "-"], Some(&local));
    wait_jsonpath(&kubectl, "joined", ".status.phase", "Running");
    wait_jsonpath(&kubectl, "local", ".status.phase", "Running");
    assert_eq!(
        wait_logs(&kubectl, "local", "hello"),
        "hello from the first node\n"
    );
    // pods on the two nodes reach each other over the pod network
    let joined_ip = jsonpath(&kubectl, "joined", ".status.podIP");
    let reply = kubectl.ok(&[
        "exec",
        "local",
        "--",
        "sh",
        "-c",
        &format!("ping -c 1 -W 5 {joined_ip} >/dev/null && echo reached"),
    ]);
    assert_eq!(reply, "reached\n");
    // logs and exec reach the joined node's kubelet through the API server
    let logs = wait_logs(&kubectl, "joined", "hello");
    assert_eq!(logs, "hello from the joined node\n");
    assert_eq!(
        kubectl.ok(&["exec", "joined", "--", "hostname"]),
        "joined\n"
    );
    // a chatty container's log is rotated by size and count (4 KiB, 3 files here)
    let chatty = pod_on(
        &node,
        "chatty",
        "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.01; done",
    );
    kubectl.ok_with(&["apply", "-f", "-"], Some(&chatty));
    wait_jsonpath(&kubectl, "chatty", ".status.phase", "Running");
    let uid = jsonpath(&kubectl, "chatty", ".metadata.uid");
    let log_dir = std::path::PathBuf::from(format!("/var/log/pods/default_chatty_{uid}/c"));
    let files = wait_for(Duration::from_secs(40), "two log rotations", || {
        let names: Vec<String> = std::fs::read_dir(&log_dir)
            .ok()?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        (names.iter().filter(|n| n.starts_with("0.log.")).count() >= 2).then(|| names.join(" "))
    });
    assert!(files.split(' ').count() <= 3, "at most 3 files: {files}");
    let tail = kubectl.ok(&["logs", "chatty", "--tail=1"]);
    assert!(
        tail.starts_with("line "),
        "the live log continues after rotation: {tail}"
    );
    kubectl.ok(&["delete", "pod", "chatty", "--wait=true"]);

    // static pods: a manifest in the agent's directory runs as a mirror pod; deleting the
    // mirror brings it back; removing the manifest removes it; a broken one is reported
    let manifests = dir.path().join("agent/manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(
        manifests.join("static-web.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: static-web}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {name: c, image: busybox:1.35, command: [sleep, '3600']}\n",
    )
    .unwrap();
    std::fs::write(
        manifests.join("broken.yaml"),
        "kind: Pod\nspec: [unclosed\n",
    )
    .unwrap();
    let mirror = format!("static-web-{node}");
    wait_jsonpath(&kubectl, &mirror, ".status.phase", "Running");
    let source = jsonpath(
        &kubectl,
        &mirror,
        ".metadata.annotations.kubernetes\\.io/config\\.source",
    );
    assert_eq!(source, "file");
    let first_uid = jsonpath(&kubectl, &mirror, ".metadata.uid");
    kubectl.ok(&["delete", "pod", &mirror, "--wait=true"]);
    wait_for(
        Duration::from_secs(30),
        "the mirror pod to come back",
        || {
            let uid = jsonpath(&kubectl, &mirror, ".metadata.uid");
            (!uid.is_empty() && uid != first_uid).then_some(uid)
        },
    );
    let events = kubectl.ok(&[
        "get",
        "events",
        "--field-selector",
        "reason=FailedStaticPod",
    ]);
    assert!(events.contains("broken.yaml"), "{events}");
    std::fs::remove_file(manifests.join("static-web.yaml")).unwrap();
    wait_for(Duration::from_secs(30), "the mirror pod to go", || {
        let output = kubectl.run(&["get", "pod", &mirror], None);
        (!output.status.success()).then(String::new)
    });
    // a pod deleted while its agent was down: the agent, back, collects what it left (its
    // sandbox, volumes, log directory and cgroups)
    let uid = jsonpath(&kubectl, "joined", ".metadata.uid");
    let log_directory = std::path::PathBuf::from(format!("/var/log/pods/default_joined_{uid}"));
    let volumes = dir.path().join("agent/pods").join(&uid);
    assert!(log_directory.is_dir() && volumes.is_dir());
    drop(agent_process);
    kubectl.ok(&["delete", "pod", "joined", "--grace-period=0", "--force"]);
    assert!(
        !cleanup.sandboxes().unwrap().is_empty(),
        "the sandbox outlives its agent"
    );
    let _agent = AgentProcess(agent(token, "agent-again.log"));
    let cgroups = || {
        let found = std::process::Command::new("find")
            .args([
                "/sys/fs/cgroup",
                "-maxdepth",
                "4",
                "-name",
                &format!("pod{uid}"),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&found.stdout).into_owned()
    };
    wait_for(
        Duration::from_secs(30),
        "the deleted pod's sandbox, volumes, logs and cgroups to go",
        || {
            let sandboxes = cleanup.sandboxes().ok()?;
            let left = cgroups();
            (sandboxes.is_empty()
                && !log_directory.exists()
                && !volumes.exists()
                && left.is_empty())
            .then_some(left)
        },
    );
    // neither agent touched the other's pod
    assert_eq!(jsonpath(&kubectl, "local", ".status.phase"), "Running");
    assert_eq!(
        jsonpath(
            &kubectl,
            "local",
            ".status.containerStatuses[0].restartCount"
        ),
        "0"
    );
    assert_eq!(
        kubectl.ok(&["logs", "local"]),
        "hello from the first node\n"
    );
    kubectl.ok(&["delete", "pod", "local", "--wait=true"]);
    wait_for(
        Duration::from_secs(30),
        "the first node's sandbox to go",
        || {
            first_cleanup
                .sandboxes()
                .ok()
                .filter(Vec::is_empty)
                .map(|_| String::new())
        },
    );
}

#[test]
fn up_runs_preflight_then_the_stack() {
    let binary = Path::new(env!("CARGO_BIN_EXE_kelson"));
    let dir = tempfile::tempdir().unwrap();
    let node = format!("e2e-up-{}", std::process::id());
    let _cleanup = RuntimeCleanup::new(&node);
    // a missing runtime stops `kelson up` with an error that names the check and the fix
    let failed = std::process::Command::new(binary)
        .args([
            "up",
            "--listen=127.0.0.1:0",
            "--gitops-listen=127.0.0.1:0",
            "--kubelet-port=0",
            "--node-exporter-listen=127.0.0.1:0",
            "--logs-listen=127.0.0.1:0",
            "--state-metrics-listen=127.0.0.1:0",
            "--scheduler-metrics-listen=127.0.0.1:0",
            "--controller-manager-metrics-listen=127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("failed"))
        .arg("--container-runtime-endpoint=/nonexistent/containerd.sock")
        .output()
        .unwrap();
    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("[ERROR CRI]"), "{stderr}");
    assert!(stderr.contains("scripts/setup.sh"), "{stderr}");

    let data = dir.path().join("up");
    let mut up = AgentProcess(
        std::process::Command::new(binary)
            .args([
                "up",
                "--listen=127.0.0.1:0",
                "--gitops-listen=127.0.0.1:0",
                "--kubelet-port=0",
                "--node-exporter-listen=127.0.0.1:0",
                "--logs-listen=127.0.0.1:0",
                "--state-metrics-listen=127.0.0.1:0",
                "--scheduler-metrics-listen=127.0.0.1:0",
                "--controller-manager-metrics-listen=127.0.0.1:0",
                "--disable-proxy",
            ])
            .arg(format!("--node-name={node}"))
            .arg("--data-dir")
            .arg(&data)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut stdout = std::io::BufReader::new(up.0.stdout.take().unwrap());
    let mut printed = String::new();
    while !printed.contains("kelson agent --server") {
        let mut line = String::new();
        let read = std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        assert!(read > 0, "kelson up ended early: {printed}");
        printed.push_str(&line);
    }
    assert!(printed.contains("Kelson is up."), "{printed}");
    let kubeconfig = data.join("kubeconfig.yaml");
    assert!(printed.contains(&format!("export KUBECONFIG={}", kubeconfig.display())));
    let kubectl = Kubectl::new(33, &kubeconfig);
    wait_node_ready(&kubectl, &node);

    // the example GitOps repository is deployed, and a push to it deploys within seconds
    let repository = data.join("gitops/example.git");
    assert!(
        printed.contains(&format!("git clone {}", repository.display())),
        "{printed}"
    );
    kubectl.ok_within(
        Duration::from_secs(20),
        &["get", "application", "example"],
        None,
    );
    kubectl.ok(&[
        "wait",
        "--for=condition=Ready",
        "application/example",
        "--timeout=90s",
    ]);
    assert_eq!(
        kubectl.ok(&[
            "get",
            "deployment",
            "hello",
            "-n",
            "hello",
            "-o",
            "jsonpath={.status.readyReplicas}"
        ]),
        "2"
    );
    let clone = dir.path().join("example");
    let git = |args: &[&str]| {
        let status = std::process::Command::new("git")
            .args(args)
            .env("GIT_AUTHOR_NAME", "New User")
            .env("GIT_AUTHOR_EMAIL", "new@example.com")
            .env("GIT_COMMITTER_NAME", "New User")
            .env("GIT_COMMITTER_EMAIL", "new@example.com")
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    };
    git(&[
        "clone",
        "-q",
        repository.to_str().unwrap(),
        clone.to_str().unwrap(),
    ]);
    let page = clone.join("apps/hello/page.yaml");
    let text = std::fs::read_to_string(&page).unwrap();
    std::fs::write(&page, text.replace("Hello from Git", "Hello again")).unwrap();
    let pushed = std::time::Instant::now();
    git(&[
        "-C",
        clone.to_str().unwrap(),
        "commit",
        "-q",
        "-am",
        "Say hello again",
    ]);
    git(&["-C", clone.to_str().unwrap(), "push", "-q"]);
    loop {
        let html = kubectl.ok(&[
            "get",
            "configmap",
            "hello-page",
            "-n",
            "hello",
            "-o",
            "jsonpath={.data.index\\.html}",
        ]);
        if html.contains("Hello again") {
            break;
        }
        assert!(
            pushed.elapsed() < Duration::from_secs(10),
            "the push was not deployed: {html}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
