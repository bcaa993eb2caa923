//! The scheduler with hollow nodes: pods land on fitting nodes and run; unschedulable pods say
//! why, in kube-scheduler's words; cordoned and tainted nodes are avoided.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kelson_testing::{TestCluster, eventually};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

fn pod(name: &str, cpu: &str) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": {"app": "sched"}},
        "spec": {"containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": cpu}}}]}}))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_scheduled_and_run_on_hollow_nodes() {
    let cluster = TestCluster::start(3).await;
    let client = cluster.client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for i in 0..12 {
        pods.create(&PostParams::default(), &pod(&format!("p{i}"), "500m"))
            .await
            .unwrap();
    }
    let running = eventually(Duration::from_secs(30), "12 running pods", || async {
        let list = pods
            .list(&ListParams::default().labels("app=sched"))
            .await
            .unwrap();
        let running: Vec<Pod> = list
            .items
            .into_iter()
            .filter(|p| {
                kelson_common::pod::phase(p) == "Running" && kelson_common::pod::is_ready(p)
            })
            .collect();
        (running.len() == 12).then_some(running)
    })
    .await;
    let nodes: BTreeSet<String> = running
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    assert_eq!(
        nodes.len(),
        3,
        "least-allocated scoring spreads pods over every node"
    );
    let first = &running[0];
    assert!(first.status.as_ref().unwrap().pod_ip.is_some());

    // 3 nodes x 4 cpu: 6 cpu used, so a 7-cpu pod fits nowhere
    pods.create(&PostParams::default(), &pod("huge", "7"))
        .await
        .unwrap();
    let condition = eventually(
        Duration::from_secs(10),
        "an Unschedulable condition",
        || async {
            let huge = pods.get("huge").await.unwrap();
            kelson_common::pod::condition(&huge, "PodScheduled")
                .filter(|c| c.reason.as_deref() == Some("Unschedulable"))
                .cloned()
        },
    )
    .await;
    assert_eq!(
        condition.message.as_deref(),
        Some("0/3 nodes are available: 3 Insufficient cpu.")
    );
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    eventually(
        Duration::from_secs(10),
        "a FailedScheduling event",
        || async {
            let list = events
                .list(
                    &ListParams::default()
                        .fields("involvedObject.name=huge,reason=FailedScheduling"),
                )
                .await
                .unwrap();
            (!list.items.is_empty()).then_some(())
        },
    )
    .await;

    // cordon two nodes: new pods go to the third
    let node_api: Api<Node> = Api::all(client.clone());
    for name in ["hollow-0", "hollow-1"] {
        node_api
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"unschedulable": true}})),
            )
            .await
            .unwrap();
    }
    // freeing capacity lets the waiting pod in once the cluster changes
    pods.delete("p0", &Default::default()).await.unwrap();
    for i in 0..3 {
        pods.create(&PostParams::default(), &pod(&format!("late{i}"), "100m"))
            .await
            .unwrap();
    }
    for i in 0..3 {
        let name = format!("late{i}");
        let node = eventually(Duration::from_secs(20), "late pods bound", || async {
            pods.get(&name).await.unwrap().spec.unwrap().node_name
        })
        .await;
        assert_eq!(node, "hollow-2");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_is_tainted_and_its_pods_move() {
    use k8s_openapi::api::apps::v1::Deployment;
    let cluster = TestCluster::start(3).await;
    let client = cluster.client().await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "moving"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "moving"}},
                 "template": {"metadata": {"labels": {"app": "moving"}},
                              "spec": {"tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2}],
                                       "containers": [{"name": "c", "image": "busybox"}]}}}
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let running_on = || async {
        let list = pods
            .list(&ListParams::default().labels("app=moving"))
            .await
            .unwrap();
        list.items
            .into_iter()
            .filter(|p| kelson_common::pod::is_active(p) && kelson_common::pod::is_ready(p))
            .filter_map(|p| p.spec?.node_name)
            .collect::<Vec<String>>()
    };
    let placed = eventually(Duration::from_secs(20), "3 pods running", || async {
        let nodes = running_on().await;
        (nodes.len() == 3).then_some(nodes)
    })
    .await;
    let victim = placed[0].clone();
    cluster.nodes.stop(&victim);
    let nodes: Api<Node> = Api::all(client.clone());
    let tainted = eventually(
        Duration::from_secs(20),
        "the silent node tainted unreachable",
        || async {
            let node = nodes.get(&victim).await.unwrap();
            let taints = node.spec.clone().and_then(|s| s.taints).unwrap_or_default();
            taints
                .iter()
                .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute")
                .then_some(node)
        },
    )
    .await;
    let ready = kelson_common::node::condition(&tainted, "Ready").unwrap();
    assert_eq!(ready.status, "Unknown");
    eventually(
        Duration::from_secs(30),
        "pods replaced on live nodes",
        || async {
            let nodes = running_on().await;
            (nodes.len() == 3 && !nodes.contains(&victim)).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_pods_preempt_lower_ones() {
    use k8s_openapi::api::scheduling::v1::PriorityClass;
    let cluster = TestCluster::start(1).await;
    let client = cluster.client().await;
    let classes: Api<PriorityClass> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let system = classes.get("system-node-critical").await.unwrap();
    assert_eq!(system.value, 2_000_001_000);
    for (name, value) in [("low", 10), ("high", 1000)] {
        let class: PriorityClass =
            serde_json::from_value(json!({"metadata": {"name": name}, "value": value})).unwrap();
        classes
            .create(&PostParams::default(), &class)
            .await
            .unwrap();
    }
    let pod = |name: &str, class: &str| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"priorityClassName": class, "containers": [{"name": "c", "image": "busybox",
                "resources": {"requests": {"cpu": "2"}}}]}
        }))
        .unwrap()
    };
    // the hollow node has 4 cpus: two low pods fill it
    for name in ["low-1", "low-2"] {
        let created = pods
            .create(&PostParams::default(), &pod(name, "low"))
            .await
            .unwrap();
        assert_eq!(
            created.spec.unwrap().priority,
            Some(10),
            "priority from the class"
        );
    }
    let running = |name: &'static str| {
        let pods = pods.clone();
        async move {
            pods.get_opt(name).await.unwrap().is_some_and(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.status.and_then(|s| s.phase).as_deref() == Some("Running")
            })
        }
    };
    eventually(Duration::from_secs(20), "both low pods running", || async {
        (running("low-1").await && running("low-2").await).then_some(())
    })
    .await;
    // a low pod more only waits; a high one takes the room of one low pod
    pods.create(&PostParams::default(), &pod("low-3", "low"))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod("high", "high"))
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "the high pod running", || async {
        running("high").await.then_some(())
    })
    .await;
    let low_running = [
        running("low-1").await,
        running("low-2").await,
        running("low-3").await,
    ];
    assert_eq!(
        low_running.iter().filter(|r| **r).count(),
        1,
        "one low pod was preempted and the waiting one did not take its room: {low_running:?}"
    );
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), "default");
    let preempted = eventually(Duration::from_secs(10), "a Preempted event", || async {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("Preempted"))
    })
    .await;
    assert!(
        preempted
            .message
            .unwrap_or_default()
            .contains("on node hollow-0"),
        "the event names the node"
    );

    // admission: unknown classes and priorities of one's own are refused
    let unknown = pods
        .create(&PostParams::default(), &pod("lost", "nonexistent"))
        .await
        .unwrap_err();
    assert!(
        unknown
            .to_string()
            .contains("no PriorityClass with name nonexistent was found"),
        "{unknown}"
    );
    let mut own = pod("own", "high");
    own.spec.as_mut().unwrap().priority = Some(5);
    let refused = pods.create(&PostParams::default(), &own).await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("the integer value of priority (5) must not be provided"),
        "{refused}"
    );
    // a global default class applies to pods that name none
    let default: PriorityClass = serde_json::from_value(
        json!({"metadata": {"name": "normal"}, "value": 100, "globalDefault": true}),
    )
    .unwrap();
    classes
        .create(&PostParams::default(), &default)
        .await
        .unwrap();
    let plain: Pod = serde_json::from_value(json!({
        "metadata": {"name": "plain"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}
    }))
    .unwrap();
    let created = pods.create(&PostParams::default(), &plain).await.unwrap();
    let spec = created.spec.unwrap();
    assert_eq!(
        (spec.priority, spec.priority_class_name.as_deref()),
        (Some(100), Some("normal"))
    );
}

/// `pods/binding` as kube-scheduler uses it: one write sets the node and `PodScheduled`; a
/// second binding, or one naming another pod's UID, is a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binding_subresource_assigns_once() {
    let server = kelson_testing::TestServer::start().await;
    let client = server.client().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let created = pods
        .create(&PostParams::default(), &pod("bound", "100m"))
        .await
        .unwrap();
    let uid = created.metadata.uid.clone().unwrap();
    let bind = |uid: String, node: &'static str| {
        let pods = pods.clone();
        async move {
            let binding = json!({"apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": "bound", "uid": uid}, "target": {"kind": "Node", "name": node}});
            pods.create_subresource::<_, serde_json::Value>(
                "binding",
                "bound",
                &PostParams::default(),
                &binding,
            )
            .await
        }
    };
    let wrong = bind("not-the-uid".into(), "n1").await.unwrap_err();
    assert!(
        matches!(&wrong, kube::Error::Api(status) if status.code == 409),
        "{wrong}"
    );
    bind(uid.clone(), "n1").await.unwrap();
    let bound = pods.get("bound").await.unwrap();
    assert_eq!(
        bound.spec.as_ref().unwrap().node_name.as_deref(),
        Some("n1")
    );
    let scheduled = kelson_common::pod::condition(&bound, "PodScheduled").unwrap();
    assert_eq!(scheduled.status, "True");
    // one write: the resourceVersion moved once
    let before: u64 = created.metadata.resource_version.unwrap().parse().unwrap();
    let after: u64 = bound.metadata.resource_version.unwrap().parse().unwrap();
    assert_eq!(after, before + 1, "binding took one write");
    let again = bind(uid, "n2").await.unwrap_err();
    assert!(
        matches!(&again, kube::Error::Api(status) if status.code == 409 && status.message.contains("already assigned to node \"n1\"")),
        "{again}"
    );
}
