//! The Ingress controller in-process against a real API server, in front of backends on
//! loopback: routing by host and path, forwarded headers, 404/503, live changes, and a protocol
//! upgrade (as WebSocket uses) joined byte for byte.

use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::networking::v1::Ingress;
use kelson_testing::TestServer;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// A backend that answers `NAME <request head>` to plain requests and, to a request asking to
/// upgrade, 101 and then echoes every byte.
async fn backend(name: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream);
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                let mut stream = reader.into_inner();
                if head.to_ascii_lowercase().contains("upgrade: echo") {
                    stream
                        .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
                        .await
                        .unwrap();
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                    return;
                }
                let body = format!("{name}\n{head}");
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    address
}

async fn create(client: &kube::Client, object: serde_json::Value) {
    let kind = object["kind"].as_str().unwrap().to_owned();
    let (group, version) = match object["apiVersion"].as_str().unwrap().split_once('/') {
        Some((g, v)) => (g.to_owned(), v.to_owned()),
        None => (String::new(), "v1".to_owned()),
    };
    let resource = kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
        &group, &version, &kind,
    ));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);
    api.create(
        &PostParams::default(),
        &serde_json::from_value(object).unwrap(),
    )
    .await
    .unwrap();
}

/// A selector-less Service `name` whose one endpoint is `backend`.
async fn service(client: &kube::Client, name: &str, backend: SocketAddr) {
    create(
        client,
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
               "spec": {"ports": [{"name": "http", "port": 80, "targetPort": backend.port()}]}}),
    )
    .await;
    create(
        client,
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": format!("{name}-1"), "labels": {"kubernetes.io/service-name": name}},
               "addressType": "IPv4",
               "endpoints": [{"addresses": [backend.ip().to_string()], "conditions": {"ready": true}}],
               "ports": [{"name": "http", "port": backend.port(), "protocol": "TCP"}]}),
    )
    .await;
}

/// Status and body of `GET path` with `Host: host`.
async fn get(front: SocketAddr, host: &str, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(front).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response.split(' ').nth(1).unwrap().parse().unwrap();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

async fn eventually(front: SocketAddr, host: &str, path: &str, want: impl Fn(u16, &str) -> bool) {
    for _ in 0..100 {
        let (status, body) = get(front, host, path).await;
        if want(status, &body) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = get(front, host, path).await;
    panic!("{host}{path}: {status} {body}");
}

#[tokio::test]
async fn ingress_routes_forwards_and_upgrades() {
    let server = TestServer::start().await;
    let client = server.client().await;
    service(&client, "web", backend("web").await).await;
    service(&client, "api", backend("api").await).await;
    create(
        &client,
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "empty"},
               "spec": {"ports": [{"name": "http", "port": 80}]}}),
    )
    .await;
    let ingress: Ingress = serde_json::from_value(json!({
        "metadata": {"name": "site"},
        "spec": {"rules": [{"host": "site.test", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"name": "http"}}}},
            {"path": "/api", "pathType": "Prefix", "backend": {"service": {"name": "api", "port": {"number": 80}}}},
            {"path": "/down", "pathType": "Exact", "backend": {"service": {"name": "empty", "port": {"number": 80}}}}]}}]}}))
    .unwrap();
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), "default");
    ingresses
        .create(&PostParams::default(), &ingress)
        .await
        .unwrap();

    let shutdown = tokio_util::sync::CancellationToken::new();
    let caches = kelson_proxy::Caches::watch(&client, &shutdown);
    let (front, _) = kelson_proxy::ingress::start(
        client.clone(),
        caches,
        kelson_proxy::ingress::IngressConfig {
            class: "kelson".into(),
            default_class: true,
            http: "127.0.0.1:0".parse().unwrap(),
            https: "127.0.0.1:0".parse().unwrap(),
            node_address: "127.0.0.1".parse().unwrap(),
        },
        shutdown.clone(),
    )
    .await
    .unwrap();

    eventually(front, "site.test", "/", |s, b| {
        s == 200 && b.starts_with("web\n")
    })
    .await;
    let (_, body) = get(front, "site.test", "/api/v1?x=1").await;
    assert!(body.starts_with("api\nGET /api/v1?x=1 HTTP/1.1"), "{body}");
    let lower = body.to_ascii_lowercase();
    assert!(lower.contains("host: site.test"), "{body}");
    assert!(lower.contains("x-forwarded-for: 127.0.0.1"), "{body}");
    assert!(lower.contains("x-forwarded-proto: http"), "{body}");
    assert_eq!(get(front, "site.test", "/down").await.0, 503);
    assert_eq!(get(front, "other.test", "/").await.0, 404);

    // the status carries the node's address
    let mut ip = None;
    for _ in 0..100 {
        let current = ingresses.get("site").await.unwrap();
        ip = current
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|l| l.ingress)
            .and_then(|i| i.first().and_then(|i| i.ip.clone()));
        if ip.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ip.as_deref(), Some("127.0.0.1"));

    // a changed rule routes without a restart
    ingresses
        .patch(
            "site",
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(json!([
                    {"op": "replace", "path": "/spec/rules/0/host", "value": "new.test"}]))
                .unwrap(),
            ),
        )
        .await
        .unwrap();
    eventually(front, "new.test", "/", |s, b| {
        s == 200 && b.starts_with("web\n")
    })
    .await;
    assert_eq!(get(front, "site.test", "/").await.0, 404);

    // an upgrade is passed through and then joined both ways
    let mut stream = tokio::net::TcpStream::connect(front).await.unwrap();
    stream
        .write_all(
            b"GET /chat HTTP/1.1\r\nHost: new.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).await.unwrap();
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
    }
    reader.get_mut().write_all(b"ping\n").await.unwrap();
    let mut echoed = String::new();
    tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut echoed))
        .await
        .expect("an echo")
        .unwrap();
    assert_eq!(echoed, "ping\n");
    shutdown.cancel();
}
