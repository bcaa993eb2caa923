//! End-to-end: Services on real containerd pods, through the service proxy's nftables rules.
//! A ClusterIP reaches the ready replicas of a Deployment from the host and from a pod, load
//! balanced; pods resolve Services through the cluster DNS; a NodePort answers on the node's
//! address; an Ingress routes two hosts to two Services over HTTP and HTTPS; scaling and readiness change the routing
//! at once; a kill -9 of `kelson server` keeps established connections and the rules, and the
//! restarted proxy takes over; restarted in userspace mode, the node serves the same Services
//! through relays.
//!
//! One test function: the proxy's table lives in the host's network namespace, which every test
//! process shares.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use kelson_testing::{KelsonProcess, Kubectl, RuntimeCleanup, wait_for};

const APPS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: busybox:1.35
        env:
        - {name: POD, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        command: [sh, -c, 'mkdir -p /www && echo "$POD" > /www/index.html && touch /tmp/ready && exec httpd -f -p 8080 -h /www']
        readinessProbe:
          exec: {command: [cat, /tmp/ready]}
          periodSeconds: 1
          failureThreshold: 1
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo}
spec:
  replicas: 1
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {name: echo, image: busybox:1.35, command: [nc, -ll, -p, "9000", -e, cat]}
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{port: 9000}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: blog}
spec:
  replicas: 1
  selector: {matchLabels: {app: blog}}
  template:
    metadata: {labels: {app: blog}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: busybox:1.35
        command: [sh, -c, 'mkdir -p /www/posts && echo blog > /www/index.html && echo post > /www/posts/index.html && exec httpd -f -p 8080 -h /www']
---
apiVersion: v1
kind: Service
metadata: {name: blog}
spec:
  selector: {app: blog}
  ports: [{name: http, port: 8000, targetPort: 8080}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: sites}
spec:
  tls: [{hosts: [web.example.test], secretName: web-tls}]
  rules:
  - host: web.example.test
    http:
      paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {name: http}}}}]
  - host: blog.example.test
    http:
      paths: [{path: /posts, pathType: Prefix, backend: {service: {name: blog, port: {number: 8000}}}}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: busybox:1.35, command: [sleep, "3600"]}
"#;

/// The page served at `address` (the pod's name), or `None`.
fn page(address: &str) -> Option<String> {
    let mut stream =
        TcpStream::connect_timeout(&address.parse().ok()?, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let body = response.split("\r\n\r\n").nth(1)?;
    Some(body.trim().to_owned())
}

/// The pods answering at `address` over `tries` requests.
fn answering(address: &str, tries: usize) -> BTreeSet<String> {
    (0..tries).filter_map(|_| page(address)).collect()
}

fn pods(kubectl: &Kubectl, selector: &str) -> BTreeSet<String> {
    kubectl
        .ok(&[
            "get",
            "pods",
            "-l",
            selector,
            "--field-selector=status.phase=Running",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}{\"\\n\"}{end}",
        ])
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Removes the proxy's table and the userspace mode's interface when dropped, whatever
/// happened.
struct TableCleanup;

impl Drop for TableCleanup {
    fn drop(&mut self) {
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "ip", "kelson-proxy"])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["link", "delete", "kelson-svc"])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

#[test]
fn services_route_to_ready_endpoints_through_nftables() {
    let node = format!("e2e-proxy-{}", std::process::id());
    let _cleanup = RuntimeCleanup::new(&node);
    let _table = TableCleanup;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    std::fs::create_dir_all(&data).unwrap();
    let binary = Path::new(env!("CARGO_BIN_EXE_kelson"));
    let args = [
        format!("--node-name={node}"),
        "--proxy-metrics-listen=127.0.0.1:0".to_owned(),
        "--cluster-dns-port=0".to_owned(),
        "--ingress-http-listen=0.0.0.0:0".to_owned(),
        "--ingress-https-listen=0.0.0.0:0".to_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = KelsonProcess::server(binary, &data, &args).unwrap();
    let kubectl = Kubectl::new(33, &server.kubeconfig());

    // the certificate the Ingress serves for web.example.test
    let status = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=web.example.test",
            "-addext",
            "subjectAltName=DNS:web.example.test",
        ])
        .arg("-keyout")
        .arg(dir.path().join("tls.key"))
        .arg("-out")
        .arg(dir.path().join("tls.crt"))
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let cert = dir.path().join("tls.crt").display().to_string();
    let key = dir.path().join("tls.key").display().to_string();
    kubectl.ok(&[
        "create", "secret", "tls", "web-tls", "--cert", &cert, "--key", &key,
    ]);
    kubectl.ok_with(&["apply", "-f", "-"], Some(APPS));
    for deployment in ["web", "echo", "blog"] {
        kubectl.ok_within(
            Duration::from_secs(90),
            &[
                "rollout",
                "status",
                &format!("deployment/{deployment}"),
                "--timeout=90s",
            ],
            None,
        );
    }
    kubectl.ok_within(
        Duration::from_secs(60),
        &[
            "wait",
            "--for=condition=Ready",
            "pod/client",
            "--timeout=60s",
        ],
        None,
    );
    let cluster_ip = kubectl.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    assert!(
        cluster_ip.starts_with("10.9") || cluster_ip.starts_with("10.1"),
        "{cluster_ip}"
    );
    let service = format!("{cluster_ip}:80");

    // from the host: both ready replicas answer at the cluster IP
    let replicas = pods(&kubectl, "app=web");
    assert_eq!(replicas.len(), 2, "{replicas:?}");
    let seen = wait_for(
        Duration::from_secs(20),
        "both replicas behind the cluster IP",
        || {
            let seen = answering(&service, 20);
            (seen == replicas).then_some(seen)
        },
    );
    eprintln!("cluster IP {service} answered by {seen:?}");

    // from a pod on the bridge network, by cluster IP (and to the replicas on the same bridge)
    let from_pod = kubectl.ok(&[
        "exec",
        "client",
        "--",
        "sh",
        "-c",
        &format!("for i in 1 2 3 4 5 6 7 8 9 10; do wget -qO- http://{service}/; done"),
    ]);
    let from_pod: BTreeSet<String> = from_pod.lines().map(str::to_owned).collect();
    assert!(
        !from_pod.is_empty() && from_pod.is_subset(&replicas),
        "{from_pod:?}"
    );

    // cluster DNS: the pod's resolver points at the DNS Service, whose traffic the proxy sends
    // to the node's DNS server; names resolve to cluster IPs and through the search path
    let resolv = kubectl.ok(&["exec", "client", "--", "cat", "/etc/resolv.conf"]);
    assert!(resolv.contains("nameserver 10.96.0.10"), "{resolv}");
    assert!(
        resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{resolv}"
    );
    assert!(resolv.contains("options ndots:5"), "{resolv}");
    let lookup = wait_for(Duration::from_secs(20), "cluster DNS to answer", || {
        let output = kubectl.run(
            &[
                "exec",
                "client",
                "--",
                "nslookup",
                "web.default.svc.cluster.local",
            ],
            None,
        );
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.contains(&cluster_ip).then_some(text)
    });
    eprintln!("{lookup}");
    let api = kubectl.ok(&[
        "exec",
        "client",
        "--",
        "nslookup",
        "kubernetes.default.svc.cluster.local",
    ]);
    assert!(api.contains("10.96.0.1"), "{api}");
    let by_name = kubectl.ok(&["exec", "client", "--", "wget", "-qO-", "http://web/"]);
    assert!(replicas.contains(by_name.trim()), "{by_name}");
    let missing = kubectl.run(
        &[
            "exec",
            "client",
            "--",
            "nslookup",
            "nothing.default.svc.cluster.local",
        ],
        None,
    );
    assert!(
        !missing.status.success(),
        "an unknown Service does not resolve"
    );

    // the NodePort answers on the node's address
    let node_port = kubectl.ok(&[
        "get",
        "svc",
        "web",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ]);
    let node_ip = kubectl.ok(&[
        "get",
        "node",
        &node,
        "-o",
        "jsonpath={.status.addresses[?(@.type==\"InternalIP\")].address}",
    ]);
    let by_node_port = answering(&format!("{node_ip}:{node_port}"), 10);
    assert!(
        !by_node_port.is_empty() && by_node_port.is_subset(&replicas),
        "{node_ip}:{node_port} answered by {by_node_port:?}"
    );

    // the Ingress routes two hosts to two Services, over HTTP and HTTPS, and shows its address
    let ingress: serde_json::Value =
        serde_json::from_str(&agent_address(&data, "ingress")).unwrap();
    let http_port = ingress["http"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let https_port = ingress["https"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let front = format!("{node_ip}:{http_port}");
    let seen = wait_for(Duration::from_secs(20), "the Ingress to route web", || {
        let seen: BTreeSet<String> = (0..10)
            .filter_map(|_| request(&front, "web.example.test", "/"))
            .filter(|(status, _)| *status == 200)
            .map(|(_, body)| body)
            .collect();
        (seen == replicas).then_some(seen)
    });
    eprintln!("web.example.test answered by {seen:?}");
    assert_eq!(
        request(&front, "blog.example.test", "/posts/"),
        Some((200, "post".to_owned()))
    );
    assert_eq!(
        request(&front, "blog.example.test", "/").map(|r| r.0),
        Some(404)
    );
    assert_eq!(
        request(&front, "other.example.test", "/").map(|r| r.0),
        Some(404)
    );
    let https = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert", &cert, "--resolve"])
        .arg(format!("web.example.test:{https_port}:{node_ip}"))
        .arg(format!("https://web.example.test:{https_port}/"))
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&https.stdout).trim().to_owned();
    assert!(
        replicas.contains(&body),
        "{body} {}",
        String::from_utf8_lossy(&https.stderr)
    );
    let address = wait_for(Duration::from_secs(20), "the Ingress status", || {
        let ip = kubectl.ok(&[
            "get",
            "ingress",
            "sites",
            "-o",
            "jsonpath={.status.loadBalancer.ingress[0].ip}",
        ]);
        (ip == node_ip).then_some(ip)
    });
    eprintln!("ingress address {address}");
    // a changed rule applies at once, without a restart
    let started = Instant::now();
    kubectl.ok(&[
        "patch",
        "ingress",
        "sites",
        "--type=json",
        "-p",
        r#"[{"op": "replace", "path": "/spec/rules/1/http/paths/0/path", "value": "/"}]"#,
    ]);
    wait_for(Duration::from_secs(10), "the changed Ingress rule", || {
        (request(&front, "blog.example.test", "/") == Some((200, "blog".to_owned()))).then_some(())
    });
    eprintln!("Ingress change routed after {:?}", started.elapsed());

    // a readiness failure takes a replica out of the rotation
    let failing = replicas.iter().next().unwrap().clone();
    let started = Instant::now();
    kubectl.ok(&["exec", &failing, "--", "rm", "/tmp/ready"]);
    wait_for(
        Duration::from_secs(20),
        "the unready replica to leave",
        || {
            let seen = answering(&service, 10);
            (!seen.is_empty() && !seen.contains(&failing)).then_some(())
        },
    );
    eprintln!(
        "unready replica out of the rotation after {:?} (probe period 1 s)",
        started.elapsed()
    );
    kubectl.ok(&["exec", &failing, "--", "touch", "/tmp/ready"]);

    // scaling up adds the new replica as soon as it is ready
    kubectl.ok(&["scale", "deployment/web", "--replicas=3"]);
    kubectl.ok_within(
        Duration::from_secs(90),
        &["rollout", "status", "deployment/web", "--timeout=90s"],
        None,
    );
    let started = Instant::now();
    let replicas = pods(&kubectl, "app=web");
    assert_eq!(replicas.len(), 3, "{replicas:?}");
    wait_for(
        Duration::from_secs(20),
        "three replicas behind the cluster IP",
        || (answering(&service, 30) == replicas).then_some(()),
    );
    eprintln!(
        "all three replicas answering {:?} after the rollout finished",
        started.elapsed()
    );

    // the proxy's own metrics
    let address = agent_address(&data, "proxy");
    let metrics = page_path(address.trim(), "/metrics");
    assert!(
        metrics.contains("kubeproxy_sync_proxy_rules_duration_seconds_count"),
        "{metrics}"
    );

    // an established connection outlives a kill -9 of the server, and the rules stay
    let echo_ip = kubectl.ok(&["get", "svc", "echo", "-o", "jsonpath={.spec.clusterIP}"]);
    let echo = format!("{echo_ip}:9000");
    let mut connection = wait_for(Duration::from_secs(20), "the echo service", || {
        let stream =
            TcpStream::connect_timeout(&echo.parse().unwrap(), Duration::from_secs(2)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        Some(stream)
    });
    let mut reader = BufReader::new(connection.try_clone().unwrap());
    let mut roundtrip = |text: &str| {
        connection
            .write_all(format!("{text}\n").as_bytes())
            .unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), text);
    };
    roundtrip("before");
    server.kill();
    roundtrip("while the proxy is gone");
    assert!(page(&service).is_some(), "new connections still work");
    forget_addresses(&data);
    let mut server = KelsonProcess::server(binary, &data, &args).unwrap();
    roundtrip("after the restart");
    // the restarted Ingress controller routes again
    let ingress: serde_json::Value =
        serde_json::from_str(&agent_address(&data, "ingress")).unwrap();
    let port = ingress["http"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap();
    let front = format!("{node_ip}:{port}");
    wait_for(Duration::from_secs(20), "the restarted Ingress", || {
        request(&front, "blog.example.test", "/")
            .filter(|(status, _)| *status == 200)
            .map(|_| ())
    });

    // the restarted proxy follows changes again
    kubectl.ok(&["scale", "deployment/web", "--replicas=1"]);
    let started = Instant::now();
    wait_for(
        Duration::from_secs(30),
        "one replica behind the cluster IP",
        || (answering(&service, 10).len() == 1).then_some(()),
    );
    eprintln!(
        "scale-down routed after {:?} (the restarted controllers first wait out the killed server's leases)",
        started.elapsed()
    );

    // a Service without endpoints refuses at once instead of timing out
    kubectl.ok(&["scale", "deployment/echo", "--replicas=0"]);
    wait_for(
        Duration::from_secs(30),
        "the empty Service to refuse",
        || match TcpStream::connect_timeout(&echo.parse().unwrap(), Duration::from_secs(2)) {
            Err(error) if error.kind() != std::io::ErrorKind::TimedOut => Some(()),
            _ => None,
        },
    );

    // the userspace mode, for nodes without nftables: the node takes the cluster IPs and relays
    kubectl.ok(&["scale", "deployment/web", "--replicas=2"]);
    server.terminate().unwrap();
    let mut userspace_args = args.clone();
    userspace_args.push("--proxy-mode=userspace");
    forget_addresses(&data);
    let mut server = KelsonProcess::server(binary, &data, &userspace_args).unwrap();
    wait_for(
        Duration::from_secs(30),
        "the userspace proxy to hold the cluster IPs",
        || {
            let table = std::process::Command::new("nft")
                .args(["list", "table", "ip", "kelson-proxy"])
                .stderr(std::process::Stdio::null())
                .output()
                .ok()?;
            let held = std::process::Command::new("ip")
                .args(["-4", "-o", "address", "show", "dev", "kelson-svc"])
                .output()
                .ok()?;
            let held = String::from_utf8_lossy(&held.stdout);
            (!table.status.success() && held.contains(&format!(" {cluster_ip}/32"))).then_some(())
        },
    );
    let replicas = wait_for(
        Duration::from_secs(60),
        "both replicas behind the userspace proxy",
        || {
            let replicas = pods(&kubectl, "app=web");
            (replicas.len() == 2 && answering(&service, 20) == replicas).then_some(replicas)
        },
    );
    eprintln!("userspace: cluster IP {service} answered by {replicas:?}");
    assert!(
        page(&format!("{node_ip}:{node_port}")).is_some(),
        "the NodePort through the userspace proxy"
    );
    // from a pod, by name: the DNS query goes over UDP through the kube-dns relay
    let by_name = wait_for(
        Duration::from_secs(20),
        "a pod to reach web by name in userspace mode",
        || {
            let output = kubectl.run(
                // (busybox's own wget -T crashes; timeout bounds it instead)
                &[
                    "exec",
                    "client",
                    "--",
                    "timeout",
                    "5",
                    "wget",
                    "-qO-",
                    "http://web/",
                ],
                None,
            );
            output
                .status
                .success()
                .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        },
    );
    assert!(replicas.contains(&by_name), "{by_name}");
    match TcpStream::connect_timeout(&echo.parse().unwrap(), Duration::from_secs(2)) {
        Err(error) => assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused),
        Ok(_) => panic!("a Service without endpoints refuses in userspace mode too"),
    }
    let address = agent_address(&data, "proxy");
    let metrics = page_path(address.trim(), "/metrics");
    assert!(
        metrics.contains("kelson_proxy_mode{mode=\"userspace\"} 1"),
        "{metrics}"
    );

    kubectl.ok(&[
        "delete",
        "deployment",
        "web",
        "echo",
        "blog",
        "--wait=false",
    ]);
    kubectl.ok(&["delete", "pod", "client", "--wait=false"]);
    let _ = server.terminate();
}

/// What the agent's `component` wrote to `agent/COMPONENT/address`, once it has (a restarted
/// agent writes it anew; [`forget_addresses`] removes the old ones before a restart).
fn agent_address(data: &Path, component: &str) -> String {
    let file = data.join(format!("agent/{component}/address"));
    wait_for(Duration::from_secs(30), &file.display().to_string(), || {
        let text = std::fs::read_to_string(&file).ok()?;
        let text = text.trim();
        // whole: a JSON object closed, or an address with a port
        (text.ends_with('}')
            || text
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok()))
        .then(|| text.to_owned())
    })
}

/// Removes the listening addresses the agent wrote, so that the restarted one's are read.
fn forget_addresses(data: &Path) {
    for component in ["ingress", "proxy", "dns"] {
        let _ = std::fs::remove_file(data.join(format!("agent/{component}/address")));
    }
}

/// Status and body of `GET path` with `Host: host` at `address`.
fn request(address: &str, host: &str, path: &str) -> Option<(u16, String)> {
    let mut stream =
        TcpStream::connect_timeout(&address.parse().ok()?, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split("\r\n\r\n").nth(1)?.trim().to_owned();
    Some((status, body))
}

fn page_path(address: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}
