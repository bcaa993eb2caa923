//! Service addresses as kube-apiserver hands them out: cluster IPs from the service range, node
//! ports from 30000–32767, requested values checked, values kept across updates and freed on
//! delete, and the `default/kubernetes` Service.

use std::net::Ipv4Addr;

use http::Request;
use kelson_testing::TestServer;
use serde_json::{Value, json};

async fn send(client: &kube::Client, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let content_type = if method == "PATCH" {
        "application/merge-patch+json"
    } else {
        "application/json"
    };
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", content_type)
        .body(kube::client::Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap();
    let response = client.send(request).await.unwrap();
    let code = response.status().as_u16();
    let bytes = response.into_body().collect_bytes().await.unwrap();
    (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

const SERVICES: &str = "/api/v1/namespaces/default/services";

fn service(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec})
}

async fn create(client: &kube::Client, name: &str, spec: Value) -> (u16, Value) {
    send(client, "POST", SERVICES, &service(name, spec)).await
}

fn cluster_ip(service: &Value) -> Ipv4Addr {
    service["spec"]["clusterIP"]
        .as_str()
        .unwrap_or_else(|| panic!("no clusterIP in {service}"))
        .parse()
        .unwrap()
}

fn causes(status: &Value) -> String {
    status["details"]["causes"].to_string()
}

#[tokio::test]
async fn cluster_ips_and_node_ports_are_allocated_checked_and_freed() {
    let server = TestServer::start().await;
    let client = server.client().await;

    // the API's own Service, on the first address, pointing at the server
    let (code, kubernetes) = send(
        &client,
        "GET",
        &format!("{SERVICES}/kubernetes"),
        &json!(null),
    )
    .await;
    assert_eq!(code, 200, "{kubernetes}");
    assert_eq!(kubernetes["spec"]["clusterIP"], "10.96.0.1");
    assert_eq!(kubernetes["spec"]["ports"][0]["name"], "https");
    assert_eq!(kubernetes["spec"]["ports"][0]["port"], 443);
    let (code, endpoints) = send(
        &client,
        "GET",
        "/api/v1/namespaces/default/endpoints/kubernetes",
        &json!(null),
    )
    .await;
    assert_eq!(code, 200, "{endpoints}");
    assert_eq!(
        endpoints["subsets"][0]["ports"][0]["port"],
        json!(server.addr.port())
    );
    let (code, slice) = send(
        &client,
        "GET",
        "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/kubernetes",
        &json!(null),
    )
    .await;
    assert_eq!(code, 200, "{slice}");

    // the cluster DNS Service, on the tenth address; the default IngressClass
    let (code, dns) = send(
        &client,
        "GET",
        "/api/v1/namespaces/kube-system/services/kube-dns",
        &json!(null),
    )
    .await;
    assert_eq!(code, 200, "{dns}");
    assert_eq!(dns["spec"]["clusterIP"], "10.96.0.10");
    let (code, class) = send(
        &client,
        "GET",
        "/apis/networking.k8s.io/v1/ingressclasses/kelson",
        &json!(null),
    )
    .await;
    assert_eq!(code, 200, "{class}");
    assert_eq!(class["spec"]["controller"], "kelson.dev/ingress");

    // dynamic cluster IPs: in the range, distinct, never the reserved start
    let range = "10.96.0.0/12"
        .parse::<kelson_apiserver::services::Ipv4Cidr>()
        .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..5 {
        let (code, created) = create(
            &client,
            &format!("web-{i}"),
            json!({"ports": [{"port": 80, "targetPort": 8080}], "selector": {"app": "web"}}),
        )
        .await;
        assert_eq!(code, 201, "{created}");
        let ip = cluster_ip(&created);
        assert!(range.contains(ip), "{ip}");
        assert!(
            u32::from(ip) - u32::from(range.network()) > 256,
            "{ip} is in the static band"
        );
        assert_eq!(created["spec"]["clusterIPs"], json!([ip.to_string()]));
        assert!(seen.insert(ip), "{ip} handed out twice");
    }

    // a requested address: taken, out of range, malformed
    let (code, status) = create(
        &client,
        "dns",
        json!({"clusterIP": "10.96.0.12", "ports": [{"port": 53, "protocol": "UDP"}]}),
    )
    .await;
    assert_eq!(code, 201, "{status}");
    let (code, status) = create(
        &client,
        "dns2",
        json!({"clusterIP": "10.96.0.12", "ports": [{"port": 53}]}),
    )
    .await;
    assert_eq!(code, 422, "{status}");
    assert!(
        causes(&status).contains("provided IP is already allocated"),
        "{status}"
    );
    let (code, status) = create(
        &client,
        "far",
        json!({"clusterIP": "192.168.0.1", "ports": [{"port": 53}]}),
    )
    .await;
    assert_eq!(code, 422, "{status}");
    assert!(
        causes(&status).contains("The range of valid IPs is 10.96.0.0/12"),
        "{status}"
    );
    let (code, status) = create(
        &client,
        "junk",
        json!({"clusterIP": "ten", "ports": [{"port": 53}]}),
    )
    .await;
    assert_eq!(code, 422, "{status}");

    // bad input: a port listed twice, an invalid selector, a bad target port
    let (code, status) = create(
        &client,
        "dup",
        json!({"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]}),
    )
    .await;
    assert_eq!(code, 422, "{status}");
    assert!(causes(&status).contains("spec.ports[1]"), "{status}");
    let (code, status) = create(
        &client,
        "sel",
        json!({"selector": {"app": "not valid!"}, "ports": [{"port": 80}]}),
    )
    .await;
    assert_eq!(code, 422, "{status}");
    assert!(causes(&status).contains("spec.selector[app]"), "{status}");
    let (code, status) = create(
        &client,
        "tp",
        json!({"ports": [{"port": 80, "targetPort": 70000}]}),
    )
    .await;
    assert_eq!(code, 422, "{status}");
    assert!(
        causes(&status).contains("spec.ports[0].targetPort"),
        "{status}"
    );

    // headless and ExternalName Services hold no address
    let (code, headless) = create(
        &client,
        "headless",
        json!({"clusterIP": "None", "ports": [{"port": 80}]}),
    )
    .await;
    assert_eq!(code, 201, "{headless}");
    assert_eq!(headless["spec"]["clusterIPs"], json!(["None"]));
    let (code, status) = create(
        &client,
        "ext",
        json!({"type": "ExternalName", "externalName": "example.org", "clusterIP": "10.96.0.11"}),
    )
    .await;
    assert_eq!(code, 422, "{status}");

    // node ports: allocated in range, requested ones checked
    let (code, nodeport) = create(&client, "np", json!({"type": "NodePort", "ports": [{"name": "http", "port": 80}, {"name": "fixed", "port": 81, "nodePort": 30081}]})).await;
    assert_eq!(code, 201, "{nodeport}");
    let auto = nodeport["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
    assert!((30000..=32767).contains(&auto), "{auto}");
    assert_eq!(nodeport["spec"]["ports"][1]["nodePort"], 30081);
    let (code, status) = create(
        &client,
        "np2",
        json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30081}]}),
    )
    .await;
    assert_eq!(code, 422, "{status}");
    assert!(
        causes(&status).contains("provided port is already allocated"),
        "{status}"
    );
    assert!(
        causes(&status).contains("spec.ports[0].nodePort"),
        "{status}"
    );
    let (code, status) = create(
        &client,
        "np3",
        json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 80}]}),
    )
    .await;
    assert_eq!(code, 422, "{status}");
    assert!(causes(&status).contains("30000-32767"), "{status}");
    let (code, status) = create(
        &client,
        "np4",
        json!({"ports": [{"port": 80, "nodePort": 30100}]}),
    )
    .await;
    assert_eq!(code, 422, "{status}");
    assert!(
        causes(&status).contains("may not be used when `type` is 'ClusterIP'"),
        "{status}"
    );
    // a failed create holds nothing: its cluster IP went back
    let (code, status) = create(&client, "np5", json!({"type": "NodePort", "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81, "nodePort": 30081}]})).await;
    assert_eq!(code, 422, "{status}");

    // dry run reserves nothing
    let (code, dry) = send(&client, "POST", &format!("{SERVICES}?dryRun=All"), &service("dry", json!({"clusterIP": "10.96.0.20", "type": "NodePort", "ports": [{"port": 80, "nodePort": 30020}]}))).await;
    assert_eq!(code, 201, "{dry}");
    let (code, real) = create(&client, "real", json!({"clusterIP": "10.96.0.20", "type": "NodePort", "ports": [{"port": 80, "nodePort": 30020}]})).await;
    assert_eq!(code, 201, "{real}");

    // an update that leaves the values out keeps them (kubectl replace of a manifest)
    let ip = cluster_ip(&nodeport);
    let mut replacement = service(
        "np",
        json!({"type": "NodePort", "ports": [{"name": "http", "port": 80}, {"name": "fixed", "port": 81, "nodePort": 30081}]}),
    );
    replacement["metadata"]["resourceVersion"] = nodeport["metadata"]["resourceVersion"].clone();
    let (code, replaced) = send(&client, "PUT", &format!("{SERVICES}/np"), &replacement).await;
    assert_eq!(code, 200, "{replaced}");
    assert_eq!(cluster_ip(&replaced), ip);
    assert_eq!(
        replaced["spec"]["ports"][0]["nodePort"].as_u64(),
        Some(auto)
    );
    // the cluster IP may not change
    let (code, status) = send(
        &client,
        "PATCH",
        &format!("{SERVICES}/np"),
        &json!({"spec": {"clusterIP": "10.96.0.30", "clusterIPs": ["10.96.0.30"]}}),
    )
    .await;
    assert_eq!(code, 422, "{status}");

    // becoming a ClusterIP Service frees its node ports, deleting frees its IP
    let (code, changed) = send(&client, "PATCH", &format!("{SERVICES}/np"), &json!({"spec": {"type": "ClusterIP", "ports": [{"name": "http", "port": 80, "nodePort": null}, {"name": "fixed", "port": 81, "nodePort": null}]}})).await;
    assert_eq!(code, 200, "{changed}");
    assert_eq!(cluster_ip(&changed), ip);
    let (code, status) = create(
        &client,
        "np6",
        json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30081}]}),
    )
    .await;
    assert_eq!(code, 201, "{status}");
    let (code, status) = send(&client, "DELETE", &format!("{SERVICES}/dns"), &json!(null)).await;
    assert_eq!(code, 200, "{status}");
    let (code, status) = create(
        &client,
        "dns2",
        json!({"clusterIP": "10.96.0.12", "ports": [{"port": 53, "protocol": "UDP"}]}),
    )
    .await;
    assert_eq!(code, 201, "{status}");
}

#[tokio::test]
async fn repair_frees_reservations_no_service_holds() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let (code, created) = create(&client, "kept", json!({"ports": [{"port": 80}]})).await;
    assert_eq!(code, 201, "{created}");
    let ip = cluster_ip(&created);
    // as if a server crashed between reserving and storing
    server
        .storage
        .create(
            "/registry/ranges/serviceips/10.96.0.77",
            bytes::Bytes::from(r#"{"service":"default/lost","reserved":0}"#),
        )
        .await
        .unwrap();
    let (code, status) = create(
        &client,
        "want",
        json!({"clusterIP": "10.96.0.77", "ports": [{"port": 80}]}),
    )
    .await;
    assert_eq!(code, 422, "{status}");
    let api = server.api();
    let freed = kelson_apiserver::services::repair(&api, std::time::Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(freed, 1);
    let (code, status) = create(
        &client,
        "want",
        json!({"clusterIP": "10.96.0.77", "ports": [{"port": 80}]}),
    )
    .await;
    assert_eq!(code, 201, "{status}");
    // what Services hold stays reserved
    let (code, status) = create(
        &client,
        "copy",
        json!({"clusterIP": ip.to_string(), "ports": [{"port": 80}]}),
    )
    .await;
    assert_eq!(code, 422, "{status}");
}
