//! The userspace proxy against the real kernel, in a network namespace of its own (the test
//! runs itself again under `unshare --net`, so the host's addresses are never touched): cluster IPs become the node's addresses,
//! TCP and UDP reach the endpoints through them and through node ports, a Service without
//! endpoints refuses, and changes apply without dropping established connections.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use kelson_proxy::model::{Endpoint, Protocol, ServicePort};
use kelson_proxy::userspace::{self, RelayMetrics, Userspace};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

fn service(
    name: &str,
    protocol: Protocol,
    cluster_ip: [u8; 4],
    port: u16,
    node_port: Option<u16>,
    endpoints: &[SocketAddr],
) -> ServicePort {
    ServicePort {
        namespace: "shop".into(),
        name: name.into(),
        port_name: String::new(),
        protocol,
        cluster_ip: Ipv4Addr::from(cluster_ip),
        port,
        node_port,
        external_local: false,
        affinity_seconds: None,
        endpoints: endpoints
            .iter()
            .map(|e| match e {
                SocketAddr::V4(e) => Endpoint {
                    ip: *e.ip(),
                    port: e.port(),
                    node: Some("n1".into()),
                },
                SocketAddr::V6(_) => unreachable!(),
            })
            .collect(),
    }
}

/// A TCP endpoint that greets with `name`, then echoes lines.
async fn endpoint(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                stream
                    .write_all(format!("{name}\n").as_bytes())
                    .await
                    .unwrap();
                let (read, mut write) = stream.split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if write
                        .write_all(format!("{line}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    address
}

/// The greeting of whoever answers at `address`.
async fn greeting(address: &str) -> std::io::Result<String> {
    let stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(address))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).await?;
    Ok(line.trim().to_owned())
}

fn addresses() -> Vec<String> {
    let output = std::process::Command::new("ip")
        .args(["-4", "-o", "address", "show", "dev", userspace::INTERFACE])
        .output()
        .unwrap();
    userspace::parse_addresses(&String::from_utf8_lossy(&output.stdout))
        .into_iter()
        .map(|a| a.to_string())
        .collect()
}

/// Set in the copy of this test that runs inside its own network namespace.
const INSIDE: &str = "KELSON_USERSPACE_TEST_NETNS";

#[test]
fn relays_through_cluster_ips_and_node_ports() {
    if std::env::var_os(INSIDE).is_none() {
        // run this same test again in a new network namespace
        let output = std::process::Command::new("unshare")
            .arg("--net")
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "relays_through_cluster_ips_and_node_ports",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(INSIDE, "1")
            .output()
            .expect("unshare (util-linux) runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "{text}");
        assert!(text.contains("1 passed"), "{text}");
        return;
    }
    let up = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .unwrap();
    assert!(up.success());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(scenario());
}

async fn scenario() {
    let a = endpoint("a").await;
    let b = endpoint("b").await;
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let udp_address = udp.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buffer = [0u8; 512];
        loop {
            let (length, from) = udp.recv_from(&mut buffer).await.unwrap();
            let mut reply = b"re:".to_vec();
            reply.extend_from_slice(&buffer[..length]);
            udp.send_to(&reply, from).await.unwrap();
        }
    });
    // an endpoint nobody listens on: connections skip it
    let gone = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };

    let registry = prometheus::Registry::new();
    let stop = CancellationToken::new();
    let mut proxy = Userspace::new(
        "ip",
        userspace::INTERFACE,
        RelayMetrics::new(&registry),
        stop.clone(),
    );
    let web = |endpoints: &[SocketAddr]| {
        service(
            "web",
            Protocol::Tcp,
            [10, 96, 0, 50],
            80,
            Some(30080),
            endpoints,
        )
    };
    let dns = service(
        "dns",
        Protocol::Udp,
        [10, 96, 0, 10],
        53,
        None,
        &[udp_address],
    );
    let ports = vec![
        web(&[a, b, gone]),
        dns.clone(),
        service("empty", Protocol::Tcp, [10, 96, 0, 60], 80, None, &[]),
    ];
    let report = proxy
        .sync(&userspace::plan(&ports, "n1"), true)
        .await
        .unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert!(report.changed);
    assert_eq!(addresses(), ["10.96.0.10", "10.96.0.50", "10.96.0.60"]);

    // round robin over the endpoints that answer, at the cluster IP and at the node port
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        seen.insert(greeting("10.96.0.50:80").await.unwrap());
    }
    assert_eq!(seen.iter().collect::<Vec<_>>(), ["a", "b"]);
    assert!(["a", "b"].contains(&greeting("127.0.0.1:30080").await.unwrap().as_str()));

    // UDP: the reply comes back from the cluster IP
    let client = UdpSocket::bind("0.0.0.0:0").await.unwrap();
    client.send_to(b"ping", "10.96.0.10:53").await.unwrap();
    let mut buffer = [0u8; 512];
    let (length, from) =
        tokio::time::timeout(Duration::from_secs(2), client.recv_from(&mut buffer))
            .await
            .expect("a UDP reply")
            .unwrap();
    assert_eq!(&buffer[..length], b"re:ping");
    assert_eq!(from, "10.96.0.10:53".parse::<SocketAddr>().unwrap());

    // no endpoints: refused at once
    let refused = greeting("10.96.0.60:80").await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

    // an established connection outlives its endpoint's removal; new ones go elsewhere
    let mut established = BufReader::new(TcpStream::connect("10.96.0.50:80").await.unwrap());
    let mut first = String::new();
    established.read_line(&mut first).await.unwrap();
    let kept = if first.trim() == "a" { a } else { b };
    let other = if kept == a { b } else { a };
    let other_name = if other == a { "a" } else { "b" };
    let ports = vec![web(&[other]), dns];
    let report = proxy
        .sync(&userspace::plan(&ports, "n1"), false)
        .await
        .unwrap();
    assert!(report.changed && report.failed.is_empty());
    for _ in 0..4 {
        assert_eq!(greeting("10.96.0.50:80").await.unwrap(), other_name);
    }
    established
        .get_mut()
        .write_all(b"still there\n")
        .await
        .unwrap();
    let mut echoed = String::new();
    established.read_line(&mut echoed).await.unwrap();
    assert_eq!(echoed.trim(), "still there");
    assert_eq!(
        addresses(),
        ["10.96.0.10", "10.96.0.50"],
        "the empty Service is gone"
    );

    // nothing changed: nothing done
    let report = proxy
        .sync(&userspace::plan(&ports, "n1"), false)
        .await
        .unwrap();
    assert!(!report.changed);

    // an address removed behind the proxy's back comes back with the next full sync
    let removed = std::process::Command::new("ip")
        .args([
            "address",
            "del",
            "10.96.0.50/32",
            "dev",
            userspace::INTERFACE,
        ])
        .status()
        .unwrap();
    assert!(removed.success());
    proxy
        .sync(&userspace::plan(&ports, "n1"), true)
        .await
        .unwrap();
    assert_eq!(addresses(), ["10.96.0.10", "10.96.0.50"]);

    let metrics = {
        use prometheus::Encoder;
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut out)
            .unwrap();
        String::from_utf8(out).unwrap()
    };
    assert!(
        metrics.contains("kelson_proxy_userspace_relayed_total{protocol=\"udp\"} 1"),
        "{metrics}"
    );

    proxy.stop();
    stop.cancel();
    userspace::cleanup(std::path::Path::new("ip"), userspace::INTERFACE)
        .await
        .unwrap();
    assert!(addresses().is_empty());
}
