//! Service proxy benchmark (`cargo bench --bench proxy`): nftables rule sync for many Services,
//! in a network namespace of its own (the host's rules are never touched; needs root and nft),
//! then the cluster DNS server answering those Services over UDP on loopback.
//!
//! Last, the Ingress controller and the userspace proxy mode in front of a small HTTP server,
//! each beside a direct connection to it, all loaded by `wrk` (Debian's) with the same settings.
//!
//! Knobs (env): `BENCH_SERVICES` (default 1000), `BENCH_ENDPOINTS` (10 per Service),
//! `BENCH_RUNS` (5; the median is reported), `BENCH_DNS_CLIENTS` (16 concurrent clients),
//! `BENCH_DNS_SECONDS` (5), `BENCH_WRK_CONNECTIONS` (32), `BENCH_WRK_SECONDS` (10).

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kelson_proxy::model::{Endpoint, Protocol, ServicePort};
use kelson_proxy::nft::{self, RulesConfig};
use kelson_testing::bench::env_or as env;

/// The `kelson` binary's allocator, so what runs in this process is measured as it runs there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TABLE: &str = "kelson-proxy";

struct Namespace(String);

impl Namespace {
    fn new() -> Self {
        let name = format!("kelson-bench-{}", std::process::id());
        let status = Command::new("ip").args(["netns", "add", &name]).status();
        assert!(status.is_ok_and(|s| s.success()), "ip netns add {name}");
        Self(name)
    }

    /// Runs `nft -f -` with `script` in the namespace; returns how long it took.
    fn apply(&self, script: &str) -> Duration {
        let started = Instant::now();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.0, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nft runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        started.elapsed()
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

fn services(count: usize, endpoints: usize, generation: u8) -> Vec<ServicePort> {
    (0..count)
        .map(|i| {
            let i = u32::try_from(i).unwrap();
            ServicePort {
                namespace: format!("ns{}", i % 20),
                name: format!("svc{i}"),
                port_name: "http".into(),
                protocol: Protocol::Tcp,
                cluster_ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 1, 0)) + i),
                port: 80,
                node_port: (i % 10 == 0).then(|| 30000 + u16::try_from(i).unwrap() % 2000),
                external_local: false,
                affinity_seconds: None,
                endpoints: (0..endpoints)
                    .map(|e| Endpoint {
                        ip: Ipv4Addr::from(
                            u32::from(Ipv4Addr::new(10, 88, 0, 0))
                                + i * 16
                                + u32::try_from(e).unwrap()
                                + u32::from(generation),
                        ),
                        port: 8080,
                        node: Some("n1".into()),
                    })
                    .collect(),
            }
        })
        .collect()
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let count = env("BENCH_SERVICES", 1000);
    let per = env("BENCH_ENDPOINTS", 10);
    let runs = env("BENCH_RUNS", 5);
    let config = RulesConfig {
        table: TABLE.into(),
        cluster_cidr: "10.88.0.0/16".into(),
        node: "n1".into(),
    };
    let ports = services(count, per, 0);

    let started = Instant::now();
    let rules = nft::plan(&ports, &config);
    let plan_time = started.elapsed();
    let full = nft::render_full(&rules, TABLE);
    let chains = rules.chains.len();

    let namespace = Namespace::new();
    let first = namespace.apply(&full);
    let resync = median((0..runs).map(|_| namespace.apply(&full)).collect());

    // one endpoint of one Service replaced, then back
    let mut changed = ports.clone();
    changed[count / 2].endpoints[0].ip = Ipv4Addr::new(10, 89, 0, 1);
    let changed_rules = nft::plan(&changed, &config);
    let mut forward = String::new();
    nft::render_diff(&rules, &changed_rules, TABLE, &mut forward);
    let mut back = String::new();
    nft::render_diff(&changed_rules, &rules, TABLE, &mut back);
    let one = median(
        (0..runs)
            .map(|_| {
                let t = namespace.apply(&forward);
                namespace.apply(&back);
                t
            })
            .collect(),
    );

    // every endpoint of a tenth of the Services replaced (a big rollout)
    let mut rollout = ports;
    for port in rollout.iter_mut().step_by(10) {
        for endpoint in &mut port.endpoints {
            endpoint.ip = Ipv4Addr::from(u32::from(endpoint.ip) + 0x0001_0000);
        }
    }
    let rollout_rules = nft::plan(&rollout, &config);
    let mut forward_big = String::new();
    nft::render_diff(&rules, &rollout_rules, TABLE, &mut forward_big);
    let mut back_big = String::new();
    nft::render_diff(&rollout_rules, &rules, TABLE, &mut back_big);
    let big = median(
        (0..runs)
            .map(|_| {
                let t = namespace.apply(&forward_big);
                namespace.apply(&back_big);
                t
            })
            .collect(),
    );

    println!(
        "## Results: service proxy (`cargo bench --bench proxy`, {count} Services × {per} endpoints, 2 CPUs)\n"
    );
    println!("| step | time | script |");
    println!("|---|---|---|");
    println!("| plan ({chains} chains, pure) | {} | |", ms(plan_time));
    println!(
        "| first full sync (empty table) | {} | {} lines, {} KiB |",
        ms(first),
        full.lines().count(),
        full.len() / 1024
    );
    println!(
        "| full resync over the installed table (median of {runs}) | {} | same |",
        ms(resync)
    );
    println!(
        "| partial sync: one endpoint of one Service replaced (median) | {} | {} lines |",
        ms(one),
        forward.lines().count()
    );
    println!(
        "| partial sync: all endpoints of {} Services replaced (median) | {} | {} lines |",
        count / 10,
        ms(big),
        forward_big.lines().count()
    );
    drop(namespace);
    dns(count);
    ingress();
    userspace();
}

/// A results table: `direct` beside `proxied` (requests/s, p50, p99 from [`wrk`]).
fn wrk_table(
    title: &str,
    via: &str,
    direct: &(f64, String, String),
    proxied: &(f64, String, String),
) {
    println!("\n### {title}\n");
    println!("| path | requests/s | p50 | p99 |");
    println!("|---|---|---|---|");
    println!(
        "| direct to the backend | {:.0} | {} | {} |",
        direct.0, direct.1, direct.2
    );
    println!(
        "| {via} | {:.0} ({:.2}× direct) | {} | {} |",
        proxied.0,
        proxied.0 / direct.0,
        proxied.1,
        proxied.2
    );
}

/// One line of wrk's summary: requests/s and latency percentiles.
fn wrk(url: &str, host: &str, connections: usize, seconds: usize) -> (f64, String, String) {
    let output = Command::new("wrk")
        .args([
            "-t",
            "2",
            "-c",
            &connections.to_string(),
            "-d",
            &format!("{seconds}s"),
        ])
        .args(["--latency", "-H", &format!("Host: {host}"), url])
        .output()
        .expect("wrk runs (apt-get install wrk)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let field = |prefix: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?")
            .to_owned()
    };
    let rps = field("Requests/sec:").parse().unwrap_or(0.0);
    assert!(!text.contains("Non-2xx"), "{text}");
    (rps, field("50%"), field("99%"))
}

/// A minimal HTTP/1.1 server answering 200 "hello", on loopback.
async fn backend() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_request| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"hello\n")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    backend
}

/// The userspace proxy mode relaying a cluster IP to an HTTP server, against the server
/// directly. The cluster IP (10.255.254.1) is held on an interface of the bench's own in the
/// host's namespace and removed at the end.
fn userspace() {
    use kelson_proxy::userspace::{self, RelayMetrics, Userspace};
    const INTERFACE: &str = "kelson-bench";

    let connections = env("BENCH_WRK_CONNECTIONS", 32);
    let seconds = env("BENCH_WRK_SECONDS", 10);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (backend, _proxy) = runtime.block_on(async {
        let backend = backend().await;
        let port = ServicePort {
            namespace: "default".into(),
            name: "web".into(),
            port_name: "http".into(),
            protocol: Protocol::Tcp,
            cluster_ip: Ipv4Addr::new(10, 255, 254, 1),
            port: 80,
            node_port: None,
            external_local: false,
            affinity_seconds: None,
            endpoints: vec![Endpoint {
                ip: Ipv4Addr::LOCALHOST,
                port: backend.port(),
                node: None,
            }],
        };
        let mut proxy = Userspace::new(
            "ip",
            INTERFACE,
            RelayMetrics::new(&prometheus::Registry::new()),
            shutdown.clone(),
        );
        let report = proxy
            .sync(&userspace::plan(&[port], "n1"), true)
            .await
            .expect("ip can add the bench's interface (root)");
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        (backend, proxy)
    });
    let direct = wrk(&format!("http://{backend}/"), "web", connections, seconds);
    let relayed = wrk("http://10.255.254.1/", "web", connections, seconds);
    shutdown.cancel();
    let _ = Command::new("ip")
        .args(["link", "delete", INTERFACE])
        .status();
    wrk_table(
        &format!(
            "Userspace proxy mode (`wrk -t2 -c{connections} -d{seconds}s`, keep-alive, 6-byte responses, loopback)"
        ),
        "through the userspace relay (cluster IP)",
        &direct,
        &relayed,
    );
    drop(runtime);
}

/// The Ingress controller in front of an HTTP server, against the server directly.
fn ingress() {
    use k8s_openapi::api::networking::v1::Ingress;
    use kube::api::{Api, PostParams};

    let connections = env("BENCH_WRK_CONNECTIONS", 32);
    let seconds = env("BENCH_WRK_SECONDS", 10);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (front, backend, _server) = runtime.block_on(async {
        let backend = backend().await;
        let server = kelson_testing::TestServer::start().await;
        let client = server.client().await;
        let objects: Vec<serde_json::Value> = vec![
            serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
                "spec": {"ports": [{"name": "http", "port": 80, "targetPort": backend.port()}]}}),
            serde_json::json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "web-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4", "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}],
                "ports": [{"name": "http", "port": backend.port(), "protocol": "TCP"}]}),
        ];
        for object in objects {
            let kind = object["kind"].as_str().unwrap();
            let (group, version) = match object["apiVersion"].as_str().unwrap().split_once('/') {
                Some((g, v)) => (g.to_owned(), v.to_owned()),
                None => (String::new(), "v1".to_owned()),
            };
            let resource = kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(&group, &version, kind));
            let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);
            api.create(&PostParams::default(), &serde_json::from_value(object).unwrap()).await.unwrap();
        }
        let ingress: Ingress = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {"rules": [{"host": "web.example.test", "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"name": "http"}}}}]}}]}}))
        .unwrap();
        Api::<Ingress>::namespaced(client.clone(), "default")
            .create(&PostParams::default(), &ingress)
            .await
            .unwrap();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let caches = kelson_proxy::Caches::watch(&client, &shutdown);
        let (front, _) = kelson_proxy::ingress::start(
            client,
            caches,
            kelson_proxy::ingress::IngressConfig {
                class: "kelson".into(),
                default_class: true,
                http: "127.0.0.1:0".parse().unwrap(),
                https: "127.0.0.1:0".parse().unwrap(),
                node_address: "127.0.0.1".parse().unwrap(),
            },
            shutdown,
        )
        .await
        .unwrap();
        // until the route is in place
        for _ in 0..100 {
            let Ok(mut stream) = tokio::net::TcpStream::connect(front).await else {
                continue;
            };
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = stream
                .write_all(b"GET / HTTP/1.1\r\nHost: web.example.test\r\nConnection: close\r\n\r\n")
                .await;
            let mut response = String::new();
            let _ = stream.read_to_string(&mut response).await;
            if response.starts_with("HTTP/1.1 200") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (front, backend, server)
    });
    let direct = wrk(
        &format!("http://{backend}/"),
        "web.example.test",
        connections,
        seconds,
    );
    let proxied = wrk(
        &format!("http://{front}/"),
        "web.example.test",
        connections,
        seconds,
    );
    wrk_table(
        &format!(
            "Ingress (`wrk -t2 -c{connections} -d{seconds}s`, keep-alive, 6-byte responses, loopback)"
        ),
        "through the Ingress controller",
        &direct,
        &proxied,
    );
    drop(runtime);
}

/// Queries per second and latency of the cluster DNS with `count` Services.
fn dns(count: usize) {
    use hickory_server::proto::op::{Message, Query};
    use hickory_server::proto::rr::{Name, RecordType};
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::runtime::{reflector, watcher};

    let clients = env("BENCH_DNS_CLIENTS", 16);
    let seconds = env("BENCH_DNS_SECONDS", 5);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let (services, mut writer) = reflector::store::<Service>();
        for i in 0..count {
            let service: Service = serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": format!("ns{}", i % 20), "name": format!("svc{i}")},
                "spec": {"clusterIP": Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 1, 0)) + u32::try_from(i).unwrap()).to_string(),
                         "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}))
            .unwrap();
            writer.apply_watcher_event(&watcher::Event::Apply(service));
        }
        let (slices, _slices_writer) = reflector::store::<EndpointSlice>();
        let mut config = kelson_proxy::dns::DnsConfig::new("cluster.local");
        config.upstreams.clear();
        let handler = kelson_proxy::dns::Handler::new(services, slices, config, None, "bench".into());
        let shutdown = tokio_util::sync::CancellationToken::new();
        let server = kelson_proxy::dns::serve("127.0.0.1:0".parse().unwrap(), handler, shutdown.clone())
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(seconds as u64);
        let mut tasks = Vec::new();
        for c in 0..clients {
            tasks.push(tokio::spawn(async move {
                let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                socket.connect(server).await.unwrap();
                let mut latencies = Vec::new();
                let mut buffer = vec![0u8; 1500];
                let mut i = c;
                while Instant::now() < deadline {
                    let mut message = Message::query();
                    message.metadata.id = u16::try_from(i % 65_536).unwrap();
                    let name = format!("svc{}.ns{}.svc.cluster.local.", i % count, (i % count) % 20);
                    message.add_query(Query::query(Name::from_ascii(&name).unwrap(), RecordType::A));
                    let bytes = message.to_vec().unwrap();
                    let started = Instant::now();
                    socket.send(&bytes).await.unwrap();
                    let n = socket.recv(&mut buffer).await.unwrap();
                    latencies.push(started.elapsed());
                    let answer = Message::from_vec(&buffer[..n]).unwrap();
                    assert_eq!(answer.answers.len(), 1, "{name}");
                    i += clients;
                }
                latencies
            }));
        }
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await.unwrap());
        }
        shutdown.cancel();
        latencies.sort();
        let total = latencies.len();
        let at = |q: f64| latencies[((total as f64 * q) as usize).min(total - 1)];
        println!(
            "\n### Cluster DNS ({count} Services, {clients} concurrent UDP clients on loopback, {seconds} s)\n"
        );
        println!("| queries/s | p50 | p99 |");
        println!("|---|---|---|");
        println!(
            "| {:.0} | {:.3} ms | {:.3} ms |",
            total as f64 / seconds as f64,
            at(0.5).as_secs_f64() * 1000.0,
            at(0.99).as_secs_f64() * 1000.0
        );
    });
}
