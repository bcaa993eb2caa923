//! kube-rs against the Kelson API server over HTTPS: typed CRUD, server-side apply, and the
//! kube-runtime watcher and reflector across a server restart and across compaction.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kelson_testing::TestServer;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::json;

fn config_map(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name},
        "data": data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
    }))
    .unwrap()
}

#[tokio::test]
async fn typed_crud() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let created = maps
        .create(&PostParams::default(), &config_map("one", &[("a", "1")]))
        .await
        .unwrap();
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    let fetched = maps.get("one").await.unwrap();
    assert_eq!(fetched.data.unwrap()["a"], "1");

    let mut changed = created.clone();
    changed.data = Some([("a".to_string(), "2".to_string())].into());
    let replaced = maps
        .replace("one", &PostParams::default(), &changed)
        .await
        .unwrap();
    assert_ne!(
        replaced.metadata.resource_version,
        created.metadata.resource_version
    );
    // the old resourceVersion no longer matches
    let stale = maps
        .replace("one", &PostParams::default(), &changed)
        .await
        .unwrap_err();
    assert!(
        matches!(stale, kube::Error::Api(ref s) if s.code == 409),
        "{stale:?}"
    );

    let list = maps.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert!(list.metadata.resource_version.is_some());
    let duplicate = maps
        .create(&PostParams::default(), &config_map("one", &[]))
        .await
        .unwrap_err();
    assert!(
        matches!(duplicate, kube::Error::Api(ref s) if s.code == 409 && s.reason == "AlreadyExists"),
        "{duplicate:?}"
    );
    maps.delete("one", &DeleteParams::default()).await.unwrap();
    let gone = maps.get("one").await.unwrap_err();
    assert!(
        matches!(gone, kube::Error::Api(ref s) if s.code == 404),
        "{gone:?}"
    );

    let deployments: Api<Deployment> = Api::namespaced(client, "default");
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}},
                 "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}
    }))
    .unwrap();
    let created = deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    assert_eq!(
        created.spec.as_ref().unwrap().replicas,
        Some(1),
        "defaulted"
    );
    assert_eq!(created.metadata.generation, Some(1));
    let status = json!({"status": {"replicas": 1, "observedGeneration": 1}});
    let patched = deployments
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    assert_eq!(patched.status.unwrap().replicas, Some(1));
    assert_eq!(
        patched.metadata.generation,
        Some(1),
        "status writes do not bump generation"
    );
    let scale = json!({"spec": {"replicas": 3}});
    deployments
        .patch_scale("web", &PatchParams::default(), &Patch::Merge(&scale))
        .await
        .unwrap();
    let scaled = deployments.get("web").await.unwrap();
    assert_eq!(scaled.spec.unwrap().replicas, Some(3));
    assert_eq!(scaled.metadata.generation, Some(2));
}

#[tokio::test]
async fn server_side_apply_is_idempotent_and_drops_fields() {
    let server = TestServer::start().await;
    let maps: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
    let params = PatchParams::apply("kelson-test");
    let first = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied", "labels": {"a": "1", "b": "2"}}, "data": {"x": "1", "y": "2"}});
    let created = maps
        .patch("applied", &params, &Patch::Apply(&first))
        .await
        .unwrap();
    let again = maps
        .patch("applied", &params, &Patch::Apply(&first))
        .await
        .unwrap();
    assert_eq!(
        again.metadata.resource_version, created.metadata.resource_version,
        "re-applying changes nothing"
    );
    let second = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied", "labels": {"a": "1"}}, "data": {"x": "1"}});
    let trimmed = maps
        .patch("applied", &params, &Patch::Apply(&second))
        .await
        .unwrap();
    assert_eq!(trimmed.data.unwrap().keys().collect::<Vec<_>>(), ["x"]);
    assert_eq!(
        trimmed.metadata.labels.unwrap().keys().collect::<Vec<_>>(),
        ["a"]
    );
    // another manager's conflicting value is refused unless forced
    let other = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}, "data": {"x": "other"}});
    let conflict = maps
        .patch(
            "applied",
            &PatchParams::apply("someone-else"),
            &Patch::Apply(&other),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(conflict, kube::Error::Api(ref s) if s.code == 409),
        "{conflict:?}"
    );
    let forced = maps
        .patch(
            "applied",
            &PatchParams::apply("someone-else").force(),
            &Patch::Apply(&other),
        )
        .await
        .unwrap();
    assert_eq!(forced.data.unwrap()["x"], "other");
}

async fn wait_for(mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn names(store: &reflector::Store<ConfigMap>) -> Vec<String> {
    let mut names: Vec<String> = store
        .state()
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn reflector_survives_restart_and_compaction() {
    let mut server = TestServer::start().await;
    let maps: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
    maps.create(&PostParams::default(), &config_map("before", &[]))
        .await
        .unwrap();

    let (store, writer) = reflector::store();
    let config = watcher::Config::default();
    let stream =
        reflector(writer, watcher(maps.clone(), config).default_backoff()).applied_objects();
    let task = tokio::spawn(stream.for_each(|_| async {}));
    wait_for(|| names(&store) == ["before"]).await;

    maps.create(&PostParams::default(), &config_map("live", &[]))
        .await
        .unwrap();
    wait_for(|| names(&store) == ["before", "live"]).await;

    // restart: the watcher reconnects from its resourceVersion
    server.restart().await;
    let maps: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
    maps.create(&PostParams::default(), &config_map("after-restart", &[]))
        .await
        .unwrap();
    wait_for(|| names(&store) == ["after-restart", "before", "live"]).await;

    // while the server is down, history moves on and is compacted away: the watcher's
    // resourceVersion is then too old (410) and it must relist
    server.stop().await;
    let storage = server.storage.clone();
    storage
        .delete("/registry/configmaps/default/live", None)
        .await
        .unwrap();
    storage
        .create("/registry/configmaps/default/written-offline", serde_json::to_vec(&json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "written-offline", "namespace": "default", "uid": "offline", "creationTimestamp": "2026-01-01T00:00:00Z"}
        })).unwrap().into())
        .await
        .unwrap();
    let current = storage.current_revision().await.unwrap();
    storage.compact(current).await.unwrap();
    server.restart().await;
    wait_for(|| names(&store) == ["after-restart", "before", "written-offline"]).await;
    task.abort();
}

/// A new ConfigMap in `default`, as the object events are about.
async fn config_map_reference(
    client: &kube::Client,
    name: &str,
) -> k8s_openapi::api::core::v1::ObjectReference {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let created = maps
        .create(&PostParams::default(), &config_map(name, &[]))
        .await
        .unwrap();
    kube::Resource::object_ref(&created, &())
}

#[tokio::test]
async fn events_recorded_through_events_k8s_io_are_core_events() {
    use k8s_openapi::api::core::v1::Event as CoreEvent;
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let server = TestServer::start().await;
    let client = server.client().await;
    let reference = config_map_reference(&client, "noted").await;
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "kelson-test".into(),
            instance: None,
        },
    );
    recorder
        .publish(
            &Event {
                type_: EventType::Normal,
                reason: "Noted".into(),
                note: Some("seen by the test".into()),
                action: "Note".into(),
                secondary: None,
            },
            &reference,
        )
        .await
        .unwrap();
    let core: Api<CoreEvent> = Api::namespaced(client, "default");
    let events = core
        .list(&ListParams::default().fields("involvedObject.name=noted"))
        .await
        .unwrap();
    assert_eq!(events.items.len(), 1, "{events:?}");
    let event = &events.items[0];
    assert_eq!(event.reason.as_deref(), Some("Noted"));
    assert_eq!(event.message.as_deref(), Some("seen by the test"));
    assert_eq!(event.reporting_component.as_deref(), Some("kelson-test"));
}

#[tokio::test]
async fn our_recorder_counts_repeats_in_a_series() {
    use k8s_openapi::api::events::v1::Event as K8sEvent;
    use kelson_common::events::{Recorder, Reporter};
    let server = TestServer::start().await;
    let client = server.client().await;
    let reference = config_map_reference(&client, "repeated").await;
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "kelson-test".into(),
            instance: Some("here".into()),
        },
    );
    for reason in ["Again", "Again", "Again", "Other"] {
        kelson_common::events::publish(&recorder, &reference, true, reason, "n".into()).await;
    }
    // a container is a reference of its own: its events are not another container's repeats
    for container in ["a", "b"] {
        let mut part = reference.clone();
        part.field_path = Some(format!("spec.containers{{{container}}}"));
        kelson_common::events::publish(&recorder, &part, true, "Part", "n".into()).await;
    }
    let events: Api<K8sEvent> = Api::namespaced(client, "default");
    // selected on a field of the served (converted) form
    let mut listed = events
        .list(&ListParams::default().fields("regarding.name=repeated"))
        .await
        .unwrap()
        .items;
    listed.sort_by_key(|e| e.reason.clone());
    let summary: Vec<_> = listed
        .iter()
        .map(|e| {
            (
                e.reason.clone().unwrap(),
                e.type_.clone().unwrap(),
                e.series.as_ref().map(|s| s.count),
                e.reporting_instance.clone().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("Again".into(), "Warning".into(), Some(3), "here".into()),
            ("Other".into(), "Warning".into(), None, "here".into()),
            ("Part".into(), "Warning".into(), None, "here".into()),
            ("Part".into(), "Warning".into(), None, "here".into())
        ]
    );
}

#[tokio::test]
async fn deleting_a_namespace_terminates_it_until_finalized() {
    use k8s_openapi::api::core::v1::Namespace;
    let server = TestServer::start().await;
    let client = server.client().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "doomed"}})).unwrap();
    let created = namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
    assert_eq!(created.spec.unwrap().finalizers.unwrap(), ["kubernetes"]);
    assert_eq!(
        created.metadata.labels.unwrap()["kubernetes.io/metadata.name"],
        "doomed"
    );
    namespaces
        .delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    let terminating = namespaces.get("doomed").await.unwrap();
    assert_eq!(
        terminating.status.as_ref().unwrap().phase.as_deref(),
        Some("Terminating")
    );
    assert!(terminating.metadata.deletion_timestamp.is_some());
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "doomed");
    let refused = maps
        .create(&PostParams::default(), &config_map("late", &[]))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, kube::Error::Api(ref s) if s.code == 403),
        "{refused:?}"
    );
    // what the namespace controller does once the namespace is empty
    let mut finalized = serde_json::to_value(&terminating).unwrap();
    finalized["spec"]["finalizers"] = json!([]);
    let request = http::Request::put("/api/v1/namespaces/doomed/finalize")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&finalized).unwrap())
        .unwrap();
    client.request_text(request).await.unwrap();
    let gone = namespaces.get("doomed").await.unwrap_err();
    assert!(
        matches!(gone, kube::Error::Api(ref s) if s.code == 404),
        "{gone:?}"
    );
}

#[tokio::test]
async fn graceful_pod_deletion_dry_run_and_consistent_pages() {
    use k8s_openapi::api::core::v1::Pod;
    let server = TestServer::start().await;
    let client = server.client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "graceful"},
        "spec": {"nodeName": "node-1", "terminationGracePeriodSeconds": 30, "containers": [{"name": "c", "image": "busybox"}]}
    }))
    .unwrap();
    let created = pods.create(&PostParams::default(), &pod).await.unwrap();
    assert_eq!(created.status.unwrap().phase.as_deref(), Some("Pending"));
    pods.delete("graceful", &DeleteParams::default())
        .await
        .unwrap();
    let terminating = pods.get("graceful").await.unwrap();
    assert!(terminating.metadata.deletion_timestamp.is_some());
    assert_eq!(terminating.metadata.deletion_grace_period_seconds, Some(30));
    // what the kubelet does once the containers are gone
    pods.delete("graceful", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    assert!(pods.get_opt("graceful").await.unwrap().is_none());

    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let dry = maps
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &config_map("dry", &[]),
        )
        .await
        .unwrap();
    assert_eq!(dry.metadata.name.as_deref(), Some("dry"));
    assert!(
        maps.get_opt("dry").await.unwrap().is_none(),
        "dry runs persist nothing"
    );

    for i in 0..5 {
        maps.create(
            &PostParams::default(),
            &config_map(&format!("page-{i}"), &[]),
        )
        .await
        .unwrap();
    }
    let first = maps.list(&ListParams::default().limit(2)).await.unwrap();
    let token = first.metadata.continue_.clone().unwrap();
    maps.delete("page-3", &DeleteParams::default())
        .await
        .unwrap();
    maps.create(&PostParams::default(), &config_map("page-25", &[]))
        .await
        .unwrap();
    let mut names: Vec<String> = first
        .items
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    let mut params = ListParams::default().limit(2).continue_token(&token);
    loop {
        let page = maps.list(&params).await.unwrap();
        names.extend(page.items.iter().filter_map(|c| c.metadata.name.clone()));
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => {
                params = ListParams::default().limit(2).continue_token(&token)
            }
            _ => break,
        }
    }
    assert_eq!(
        names,
        ["page-0", "page-1", "page-2", "page-3", "page-4"],
        "pages show the first page's snapshot"
    );
    let any = maps.list(&ListParams::default().match_any()).await.unwrap();
    assert_eq!(any.items.len(), 5);
}

#[tokio::test]
async fn filtered_watches_see_objects_enter_and_leave() {
    let server = TestServer::start().await;
    let maps: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
    let start = maps
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let params = kube::api::WatchParams::default()
        .labels("team=blue")
        .timeout(20);
    let mut stream = maps.watch(&params, &start).await.unwrap().boxed();
    maps.create(&PostParams::default(), &config_map("moving", &[]))
        .await
        .unwrap();
    let label = |team: &str| json!({"metadata": {"labels": {"team": team}}});
    maps.patch(
        "moving",
        &PatchParams::default(),
        &Patch::Merge(&label("blue")),
    )
    .await
    .unwrap();
    maps.patch(
        "moving",
        &PatchParams::default(),
        &Patch::Merge(&json!({"data": {"x": "1"}})),
    )
    .await
    .unwrap();
    maps.patch(
        "moving",
        &PatchParams::default(),
        &Patch::Merge(&label("red")),
    )
    .await
    .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push(match event {
            kube::api::WatchEvent::Added(_) => "ADDED",
            kube::api::WatchEvent::Modified(_) => "MODIFIED",
            kube::api::WatchEvent::Deleted(_) => "DELETED",
            kube::api::WatchEvent::Bookmark(_) => continue,
            kube::api::WatchEvent::Error(e) => panic!("{e:?}"),
        });
    }
    assert_eq!(
        seen,
        ["ADDED", "MODIFIED", "DELETED"],
        "entering, changing and leaving the selection"
    );
}

#[tokio::test]
async fn metadata_only_reads_watches_and_writes() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for (name, team) in [("meta-a", "blue"), ("meta-b", "red"), ("meta-c", "blue")] {
        let mut map = config_map(name, &[("payload", "not in metadata")]);
        map.metadata.labels = Some([("team".to_string(), team.to_string())].into());
        maps.create(&PostParams::default(), &map).await.unwrap();
    }

    let one = maps.get_metadata("meta-a").await.unwrap();
    assert_eq!(one.metadata.labels.unwrap()["team"], "blue");
    assert!(one.metadata.resource_version.is_some());
    assert!(one.metadata.uid.is_some());

    // every list path: unfiltered, paged, and filtered by a selector
    let all = maps.list_metadata(&ListParams::default()).await.unwrap();
    assert_eq!(all.items.len(), 3);
    let first = maps
        .list_metadata(&ListParams::default().limit(2))
        .await
        .unwrap();
    assert_eq!(first.items.len(), 2);
    let token = first.metadata.continue_.clone().unwrap();
    let rest = maps
        .list_metadata(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(rest.items[0].metadata.name.as_deref(), Some("meta-c"));
    let blue = maps
        .list_metadata(&ListParams::default().labels("team=blue"))
        .await
        .unwrap();
    let names: Vec<_> = blue
        .items
        .iter()
        .filter_map(|m| m.metadata.name.clone())
        .collect();
    assert_eq!(names, ["meta-a", "meta-c"]);

    // the wire form: Kubernetes' kinds, and nothing but metadata
    for (path, kind) in [
        (
            "/api/v1/namespaces/default/configmaps/meta-a",
            "PartialObjectMetadata",
        ),
        (
            "/api/v1/namespaces/default/configmaps",
            "PartialObjectMetadataList",
        ),
        (
            "/api/v1/namespaces/default/configmaps?labelSelector=team%3Dred",
            "PartialObjectMetadataList",
        ),
    ] {
        let accept = if kind.ends_with("List") {
            "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
        } else {
            "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
        };
        let request = http::Request::get(path)
            .header(http::header::ACCEPT, accept)
            .body(Vec::new())
            .unwrap();
        let text = client.request_text(request).await.unwrap();
        let body: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["kind"], kind, "{path}");
        assert_eq!(body["apiVersion"], "meta.k8s.io/v1", "{path}");
        assert!(!text.contains("not in metadata"), "{path}: {text}");
        if let Some(items) = body["items"].as_array() {
            assert!(!items.is_empty());
            for item in items {
                assert_eq!(item["kind"], "PartialObjectMetadata");
                assert!(item["metadata"]["resourceVersion"].is_string());
            }
        }
    }

    // a metadata watcher sees changes, with the object's new resourceVersion
    let metadata: Api<kube::core::PartialObjectMeta<ConfigMap>> =
        Api::namespaced(client.clone(), "default");
    let mut events = watcher(metadata, watcher::Config::default())
        .applied_objects()
        .boxed();
    let mut initial = 0;
    while initial < 3 {
        tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        initial += 1;
    }
    let patched = maps
        .patch_metadata(
            "meta-b",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {"team": "green"}}})),
        )
        .await
        .unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(seen.metadata.name.as_deref(), Some("meta-b"));
    assert_eq!(seen.metadata.labels.unwrap()["team"], "green");
    assert_eq!(
        seen.metadata.resource_version,
        patched.metadata.resource_version
    );
    // the write answered with metadata too, and the data is untouched
    assert_eq!(
        maps.get("meta-b").await.unwrap().data.unwrap()["payload"],
        "not in metadata"
    );
}

/// Before deleting a dependent whose owner its cache lacks, the garbage collector asks the API
/// server: an owner there with the referenced uid keeps the dependent; one deleted, or replaced
/// by an object of another uid, does not; an owner that cannot be looked up (a kind not served,
/// a namespaced owner of a cluster-scoped object) counts as existing; cluster-scoped owners are
/// looked up outside the dependent's namespace.
#[tokio::test]
async fn the_collector_confirms_missing_owners_with_the_server() {
    use k8s_openapi::api::core::v1::Namespace;
    use kelson_controllers::gc::{Owner, Served, owner_exists};
    use kube::api::ApiResource;

    let server = TestServer::start().await;
    let client = server.client().await;
    let served = [
        Served {
            resource: ApiResource::erase::<ConfigMap>(&()),
            namespaced: true,
        },
        Served {
            resource: ApiResource::erase::<Namespace>(&()),
            namespaced: false,
        },
    ];
    let exists = |owner: Owner| {
        let client = client.clone();
        let served = served.clone();
        async move {
            owner_exists(&client, &served, "default", &owner)
                .await
                .unwrap()
        }
    };
    let owner = |uid: &str, api_version: &str, kind: &str, name: &str| Owner {
        uid: uid.into(),
        api_version: api_version.into(),
        kind: kind.into(),
        name: name.into(),
        blocks: true,
    };

    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let live = maps
        .create(&PostParams::default(), &config_map("gc-owner", &[]))
        .await
        .unwrap();
    let uid = live.metadata.uid.clone().unwrap();
    assert!(exists(owner(&uid, "v1", "ConfigMap", "gc-owner")).await);
    assert!(
        !exists(owner("another-uid", "v1", "ConfigMap", "gc-owner")).await,
        "an object of another uid replaced the owner"
    );
    assert!(!exists(owner(&uid, "v1", "ConfigMap", "never-made")).await);
    maps.delete("gc-owner", &DeleteParams::default())
        .await
        .unwrap();
    assert!(!exists(owner(&uid, "v1", "ConfigMap", "gc-owner")).await);
    assert!(
        exists(owner("u", "example.com/v1", "Widget", "w")).await,
        "an owner of a kind not served cannot be looked up"
    );
    assert!(
        exists(owner("u", "example.com/v1", "ConfigMap", "gc-owner")).await,
        "a kind of that name in another group is not the owner's"
    );
    assert!(
        owner_exists(
            &client,
            &served,
            "",
            &owner("u", "v1", "ConfigMap", "gc-owner")
        )
        .await
        .unwrap(),
        "a cluster-scoped object's namespaced owner cannot be looked up"
    );

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let default = namespaces.get("default").await.unwrap();
    let namespace_uid = default.metadata.uid.unwrap();
    assert!(exists(owner(&namespace_uid, "v1", "Namespace", "default")).await);
}
