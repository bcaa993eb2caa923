//! The requests Prometheus' own Kubernetes discovery (`kubernetes_sd_configs`, client-go
//! reflectors) makes, made as it makes them: `/version` for the roles that need it, a paged
//! list at `resourceVersion=0` with client-go's protobuf-first Accept header, then a watch with
//! bookmarks and a timeout from the list's resourceVersion, for every role's resources. Debian's
//! Prometheus has no Kubernetes discovery, so the requests are replayed here as the reference
//! (shared/reference/metrics.md, 4.2) lays them out.

use std::time::Duration;

use futures::{AsyncBufReadExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kelson_testing::{TestCluster, eventually};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

const ACCEPT: &str = "application/vnd.kubernetes.protobuf, */*";

async fn list(client: &kube::Client, path: &str) -> Value {
    let request = http::Request::get(format!("{path}?limit=500&resourceVersion=0"))
        .header(http::header::ACCEPT, ACCEPT)
        .body(Vec::new())
        .unwrap();
    let text = client.request_text(request).await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text:.200}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_kubernetes_discovery_lists_and_watches_every_role() {
    let cluster = TestCluster::start(1).await;
    let client = cluster.client().await;
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "busybox",
                    "ports": [{"name": "metrics", "containerPort": 9090}]}]}}}
    }))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let service: Service = serde_json::from_value(json!({"metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "metrics", "port": 9090}]}}))
    .unwrap();
    Api::<Service>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &service)
        .await
        .unwrap();

    // endpointslice and ingress roles pick their API versions from /version
    let version: Value = serde_json::from_str(
        &client
            .request_text(http::Request::get("/version").body(Vec::new()).unwrap())
            .await
            .unwrap(),
    )
    .unwrap();
    let minor: u32 = version["minor"]
        .as_str()
        .unwrap()
        .trim_end_matches('+')
        .parse()
        .unwrap();
    assert!(
        minor >= 21,
        "discovery.k8s.io/v1 and networking.k8s.io/v1: {version}"
    );
    assert!(version["gitVersion"].as_str().unwrap().starts_with("v1."));

    // what each role reads from the objects
    let endpoints = eventually(Duration::from_secs(30), "two ready endpoints", || {
        let client = client.clone();
        async move {
            let list = list(&client, "/api/v1/endpoints").await;
            let web = list["items"]
                .as_array()?
                .iter()
                .find(|e| e["metadata"]["name"] == "web")?
                .clone();
            (web["subsets"][0]["addresses"].as_array()?.len() == 2).then_some(web)
        }
    })
    .await;
    let address = &endpoints["subsets"][0]["addresses"][0];
    assert_eq!(address["targetRef"]["kind"], "Pod");
    assert!(address["nodeName"].is_string());
    assert_eq!(endpoints["subsets"][0]["ports"][0]["port"], 9090);

    let nodes = list(&client, "/api/v1/nodes").await;
    let node = &nodes["items"][0];
    // (hollow nodes serve no kubelet port; a real node's daemonEndpoints are read by the HTTP
    // discovery's node role in tests/metrics.rs)
    assert_eq!(
        node["status"]["addresses"][0]["type"], "InternalIP",
        "{node}"
    );

    let pods = list(&client, "/api/v1/pods").await;
    let pod = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["metadata"]["labels"]["app"] == "web")
        .unwrap();
    assert!(pod["status"]["podIP"].is_string(), "{pod}");
    assert!(pod["status"]["hostIP"].is_string());
    assert!(pod["spec"]["nodeName"].is_string());
    assert_eq!(
        pod["spec"]["containers"][0]["ports"][0]["containerPort"],
        9090
    );
    assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "ReplicaSet");
    assert!(
        pod["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Ready")
    );
    let services = list(&client, "/api/v1/services").await;
    assert!(
        services["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["metadata"]["name"] == "web")
    );
    let slices = list(&client, "/apis/discovery.k8s.io/v1/endpointslices").await;
    assert!(
        slices["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] == "web")
    );
    let ingresses = list(&client, "/apis/networking.k8s.io/v1/ingresses").await;
    assert_eq!(ingresses["kind"], "IngressList");
    // the namespaced form of a role restricted to namespaces
    let in_default = list(&client, "/api/v1/namespaces/default/pods").await;
    assert_eq!(in_default["items"].as_array().unwrap().len(), 2);

    // the reflector's watch: from the list's resourceVersion, with bookmarks, ended by the
    // server at timeoutSeconds
    let listed = list(&client, "/api/v1/services").await;
    let from = listed["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    let request = http::Request::get(format!(
        "/api/v1/services?allowWatchBookmarks=true&resourceVersion={from}&timeoutSeconds=2&watch=true"
    ))
    .header(http::header::ACCEPT, ACCEPT)
    .body(Vec::new())
    .unwrap();
    let mut lines = client.request_stream(request).await.unwrap().lines();
    let extra: Service = serde_json::from_value(json!({"metadata": {"name": "later"},
        "spec": {"ports": [{"port": 80}]}}))
    .unwrap();
    Api::<Service>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &extra)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut added = false;
    while let Some(line) = tokio::time::timeout(Duration::from_secs(10), lines.try_next())
        .await
        .expect("the watch ends by itself")
        .unwrap()
    {
        let event: Value = serde_json::from_str(&line).unwrap();
        assert!(
            matches!(
                event["type"].as_str(),
                Some("ADDED" | "MODIFIED" | "BOOKMARK")
            ),
            "{event}"
        );
        added |= event["type"] == "ADDED" && event["object"]["metadata"]["name"] == "later";
    }
    assert!(added, "the new Service arrived as ADDED");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the server ended the watch at timeoutSeconds"
    );
}
