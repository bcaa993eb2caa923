//! Bad input gets a clear Kubernetes `Status` with the right code and persists nothing; the
//! server survives hostile bodies.

use http::Request;
use kelson_testing::TestServer;
use serde_json::{Value, json};

struct Reply {
    code: u16,
    body: Value,
    warnings: Vec<String>,
}

async fn send(
    client: &kube::Client,
    method: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Reply {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", content_type)
        .body(kube::client::Body::from(body))
        .unwrap();
    let response = client.send(request).await.unwrap();
    let code = response.status().as_u16();
    let warnings = response
        .headers()
        .get_all("warning")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let bytes = response.into_body().collect_bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply {
        code,
        body,
        warnings,
    }
}

async fn create(client: &kube::Client, body: &Value, query: &str) -> Reply {
    let path = format!("/api/v1/namespaces/default/configmaps{query}");
    send(
        client,
        "POST",
        &path,
        "application/json",
        serde_json::to_vec(body).unwrap(),
    )
    .await
}

async fn count_configmaps(client: &kube::Client) -> usize {
    let reply = send(
        client,
        "GET",
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        Vec::new(),
    )
    .await;
    reply.body["items"].as_array().unwrap().len()
}

fn assert_status(reply: &Reply, code: u16, reason: &str) {
    assert_eq!(reply.code, code, "{}", reply.body);
    assert_eq!(reply.body["kind"], "Status", "{}", reply.body);
    assert_eq!(reply.body["reason"], reason, "{}", reply.body);
    assert_eq!(reply.body["code"], code, "{}", reply.body);
}

#[tokio::test]
async fn bad_bodies_are_refused_with_status_and_persist_nothing() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let path = "/api/v1/namespaces/default/configmaps";

    let malformed = send(
        &client,
        "POST",
        path,
        "application/json",
        b"{\"metadata\": ".to_vec(),
    )
    .await;
    assert_status(&malformed, 400, "BadRequest");
    let malformed_yaml = send(
        &client,
        "POST",
        path,
        "application/yaml",
        b"metadata: [unclosed".to_vec(),
    )
    .await;
    assert_status(&malformed_yaml, 400, "BadRequest");

    let unknown = json!({"metadata": {"name": "strict"}, "data": {"a": "1"}, "bogus": true});
    let strict = create(&client, &unknown, "?fieldValidation=Strict").await;
    assert_status(&strict, 422, "Invalid");
    assert_eq!(strict.body["details"]["causes"][0]["field"], "bogus");
    let warned = create(&client, &unknown, "?fieldValidation=Warn").await;
    assert_eq!(warned.code, 201, "{}", warned.body);
    assert!(
        warned.warnings.iter().any(|w| w.contains("bogus")),
        "{:?}",
        warned.warnings
    );
    assert!(
        warned.body.get("bogus").is_none(),
        "unknown fields are dropped"
    );

    let wrong_type = create(
        &client,
        &json!({"metadata": {"name": "typed"}, "data": {"a": 1}}),
        "",
    )
    .await;
    assert_status(&wrong_type, 422, "Invalid");
    assert_eq!(wrong_type.body["details"]["causes"][0]["field"], "data.a");

    let bad_name = create(&client, &json!({"metadata": {"name": "Bad_Name"}}), "").await;
    assert_status(&bad_name, 422, "Invalid");
    assert_eq!(
        bad_name.body["details"]["causes"][0]["field"],
        "metadata.name"
    );

    let kind_mismatch = create(
        &client,
        &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}}),
        "",
    )
    .await;
    assert_status(&kind_mismatch, 400, "BadRequest");

    let oversized = vec![b' '; 4 << 20];
    let too_large = send(&client, "POST", path, "application/json", oversized).await;
    assert_status(&too_large, 413, "RequestEntityTooLarge");

    let deep = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000)).into_bytes();
    let deep = send(&client, "POST", path, "application/json", deep).await;
    assert_status(&deep, 400, "BadRequest");
    let deep_yaml = format!("a: {}{}", "[".repeat(200_000), "]".repeat(200_000)).into_bytes();
    let deep_yaml = send(&client, "POST", path, "application/yaml", deep_yaml).await;
    assert_status(&deep_yaml, 400, "BadRequest");

    let junk = send(
        &client,
        "POST",
        path,
        "application/vnd.kubernetes.protobuf",
        vec![0xff; 100],
    )
    .await;
    assert_status(&junk, 400, "BadRequest");
    let unknown_media = send(
        &client,
        "POST",
        path,
        "application/xml",
        b"<configmap/>".to_vec(),
    )
    .await;
    assert_status(&unknown_media, 415, "UnsupportedMediaType");

    // only the accepted (warned) object exists
    assert_eq!(count_configmaps(&client).await, 1);

    // a big but legal document is stored whole
    let big: serde_json::Map<String, Value> = (0..20_000)
        .map(|i| (format!("key{i}"), json!("v".repeat(50))))
        .collect();
    let big = create(
        &client,
        &json!({"metadata": {"name": "big"}, "data": big}),
        "",
    )
    .await;
    assert_eq!(big.code, 201, "{}", big.body);
    assert_eq!(big.body["data"].as_object().unwrap().len(), 20_000);
}

#[tokio::test]
async fn bad_patches_and_requests_are_refused() {
    let server = TestServer::start().await;
    let client = server.client().await;
    assert_eq!(
        create(
            &client,
            &json!({"metadata": {"name": "p"}, "data": {"a": "1"}}),
            ""
        )
        .await
        .code,
        201
    );
    let path = "/api/v1/namespaces/default/configmaps/p";

    let unknown_type = send(
        &client,
        "PATCH",
        path,
        "application/x-unknown-patch",
        b"{}".to_vec(),
    )
    .await;
    assert_status(&unknown_type, 415, "UnsupportedMediaType");
    let failed_test = br#"[{"op":"test","path":"/data/a","value":"2"},{"op":"replace","path":"/data/a","value":"3"}]"#;
    let failed = send(
        &client,
        "PATCH",
        path,
        "application/json-patch+json",
        failed_test.to_vec(),
    )
    .await;
    assert_status(&failed, 422, "Invalid");
    let not_a_patch = send(
        &client,
        "PATCH",
        path,
        "application/json-patch+json",
        b"{\"op\":1}".to_vec(),
    )
    .await;
    assert_status(&not_a_patch, 400, "BadRequest");
    let no_manager = send(
        &client,
        "PATCH",
        path,
        "application/apply-patch+yaml",
        b"data: {a: '9'}".to_vec(),
    )
    .await;
    assert_status(&no_manager, 422, "Invalid");
    let get = send(&client, "GET", path, "application/json", Vec::new()).await;
    assert_eq!(get.body["data"]["a"], "1", "failed patches change nothing");

    let stale = json!({"metadata": {"name": "p", "resourceVersion": "1"}, "data": {"a": "4"}});
    let conflict = send(
        &client,
        "PUT",
        path,
        "application/json",
        serde_json::to_vec(&stale).unwrap(),
    )
    .await;
    assert_status(&conflict, 409, "Conflict");
    let missing = send(
        &client,
        "GET",
        "/api/v1/namespaces/default/configmaps/nope",
        "application/json",
        Vec::new(),
    )
    .await;
    assert_status(&missing, 404, "NotFound");
    let bad_selector = send(
        &client,
        "GET",
        "/api/v1/pods?fieldSelector=spec.bogus%3Dx",
        "application/json",
        Vec::new(),
    )
    .await;
    assert_status(&bad_selector, 400, "BadRequest");
    let bad_labels = send(
        &client,
        "GET",
        "/api/v1/pods?labelSelector=app+in+web",
        "application/json",
        Vec::new(),
    )
    .await;
    assert_status(&bad_labels, 400, "BadRequest");
    let no_namespace = create_in(&client, "missing").await;
    assert_status(&no_namespace, 404, "NotFound");
    let unauthenticated = reqwest_like_anonymous(&server).await;
    assert_eq!(unauthenticated, 401);
}

async fn create_in(client: &kube::Client, namespace: &str) -> Reply {
    let body = serde_json::to_vec(&json!({"metadata": {"name": "x"}})).unwrap();
    send(
        client,
        "POST",
        &format!("/api/v1/namespaces/{namespace}/configmaps"),
        "application/json",
        body,
    )
    .await
}

/// A request without credentials (TLS verified against the cluster CA, no client certificate).
async fn reqwest_like_anonymous(server: &TestServer) -> u16 {
    let mut kubeconfig = kube::config::Kubeconfig::read_from(server.kubeconfig()).unwrap();
    for user in &mut kubeconfig.auth_infos {
        if let Some(auth) = user.auth_info.as_mut() {
            auth.client_certificate_data = None;
            auth.client_key_data = None;
        }
    }
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let reply = send(
        &client,
        "GET",
        "/api/v1/namespaces",
        "application/json",
        Vec::new(),
    )
    .await;
    let version = send(&client, "GET", "/version", "application/json", Vec::new()).await;
    assert_eq!(version.code, 200, "/version is public");
    reply.code
}

#[tokio::test]
async fn bad_cron_schedules_and_time_zones_are_refused() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let path = "/apis/batch/v1/namespaces/default/cronjobs";
    let cronjob = |name: &str, schedule: &str, zone: Option<&str>| {
        json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": name},
            "spec": {"schedule": schedule, "timeZone": zone, "jobTemplate": {"spec": {"template": {"spec": {
                "restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}}}})
    };
    let post = |body: Value| {
        let client = client.clone();
        async move {
            send(
                &client,
                "POST",
                path,
                "application/json",
                serde_json::to_vec(&body).unwrap(),
            )
            .await
        }
    };
    let bad = post(cronjob("bad", "61 * * * *", Some("Mars/Olympus"))).await;
    assert_status(&bad, 422, "Invalid");
    let causes = bad.body["details"]["causes"].as_array().unwrap();
    let fields: Vec<&str> = causes
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["spec.schedule", "spec.timeZone"], "{}", bad.body);
    let message = bad.body["message"].as_str().unwrap();
    assert!(
        message.contains(
            r#"spec.timeZone: Invalid value: "Mars/Olympus": unknown time zone Mars/Olympus"#
        ),
        "{message}"
    );
    let tz = post(cronjob("tz", "TZ=UTC 0 * * * *", None)).await;
    assert_status(&tz, 422, "Invalid");
    assert!(
        tz.body["message"]
            .as_str()
            .unwrap()
            .contains("cannot use TZ or CRON_TZ in schedule, use timeZone field instead"),
        "{}",
        tz.body
    );
    let fields = post(cronjob("six", "0 0 * * * *", None)).await;
    assert_status(&fields, 422, "Invalid");
    let good = post(cronjob(
        "good",
        "*/5 9-17 * * MON-FRI",
        Some("Europe/Berlin"),
    ))
    .await;
    assert_eq!(good.code, 201, "{}", good.body);
}
