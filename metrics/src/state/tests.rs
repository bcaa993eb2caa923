//! The cluster-state exporter over objects as the API server returns them.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::json;

use super::*;
use crate::exposition::{ParsedFamily, parse};

fn object<K: DeserializeOwned>(value: serde_json::Value) -> K {
    serde_json::from_value(value).unwrap()
}

fn series(families: &[ParsedFamily], name: &str) -> Vec<(Vec<(String, String)>, f64)> {
    families
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no family {name}"))
        .samples
        .iter()
        .map(|s| (s.labels.clone(), s.value))
        .collect()
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn pod() -> Pod {
    object(json!({
        "metadata": {
            "name": "web-1", "namespace": "shop", "uid": "u1",
            "creationTimestamp": "2026-11-20T10:00:00Z",
            "labels": {"app.kubernetes.io/name": "web", "tier": "front"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d", "uid": "r1", "controller": true}]
        },
        "spec": {
            "nodeName": "node-a", "restartPolicy": "Always", "schedulerName": "default-scheduler",
            "serviceAccountName": "default",
            "containers": [{"name": "app", "image": "busybox:1.35", "resources": {
                "requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}}}],
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]
        },
        "status": {
            "phase": "Running", "podIP": "10.42.0.7", "hostIP": "192.168.1.5", "qosClass": "Burstable",
            "startTime": "2026-11-20T10:00:01Z",
            "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-20T10:00:05Z"},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-11-20T10:00:00Z"}
            ],
            "containerStatuses": [{
                "name": "app", "ready": true, "restartCount": 2, "image": "busybox:1.35",
                "imageID": "sha256:abc", "containerID": "containerd://c1",
                "state": {"running": {"startedAt": "2026-11-20T10:00:03Z"}},
                "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled", "finishedAt": "2026-11-20T10:00:02Z"}}
            }]
        }
    }))
}

#[test]
fn pods_render_kube_state_metrics_series() {
    let state = StateMetrics::default();
    state.replace(&[pod()], &Allow::default());
    let text = state.scrape();
    let families = parse(&text).unwrap();
    let info = series(&families, "kube_pod_info");
    assert_eq!(
        info,
        vec![(
            labels(&[
                ("namespace", "shop"),
                ("pod", "web-1"),
                ("uid", "u1"),
                ("host_ip", "192.168.1.5"),
                ("pod_ip", "10.42.0.7"),
                ("node", "node-a"),
                ("created_by_kind", "ReplicaSet"),
                ("created_by_name", "web-5d"),
                ("priority_class", ""),
                ("host_network", "false"),
            ]),
            1.0
        )]
    );
    let phases = series(&families, "kube_pod_status_phase");
    assert_eq!(phases.len(), 5);
    assert!(phases.contains(&(
        labels(&[
            ("namespace", "shop"),
            ("pod", "web-1"),
            ("uid", "u1"),
            ("phase", "Running")
        ]),
        1.0
    )));
    assert!(phases.contains(&(
        labels(&[
            ("namespace", "shop"),
            ("pod", "web-1"),
            ("uid", "u1"),
            ("phase", "Pending")
        ]),
        0.0
    )));
    let requests = series(&families, "kube_pod_container_resource_requests");
    assert!(requests.contains(&(
        labels(&[
            ("namespace", "shop"),
            ("pod", "web-1"),
            ("uid", "u1"),
            ("container", "app"),
            ("node", "node-a"),
            ("resource", "cpu"),
            ("unit", "core"),
        ]),
        0.25
    )));
    assert!(requests.iter().any(|(_, v)| *v == 67_108_864.0));
    assert_eq!(
        series(&families, "kube_pod_container_status_restarts_total")[0].1,
        2.0
    );
    assert!(text.contains("# TYPE kube_pod_container_status_restarts_total counter\n"));
    assert_eq!(
        series(
            &families,
            "kube_pod_container_status_last_terminated_reason"
        )[0]
        .0[4],
        ("reason".to_owned(), "OOMKilled".to_owned())
    );
    assert_eq!(series(&families, "kube_pod_created")[0].1, 1_795_168_800.0);
    assert_eq!(series(&families, "kube_pod_status_ready").len(), 3);
    // labels are not series without an allow list, but the family is declared
    assert!(series(&families, "kube_pod_labels").is_empty());
    assert!(text.contains("# HELP kube_pod_info [STABLE] Information about pod.\n"));
    // waiting families exist with no series while the container runs
    assert!(series(&families, "kube_pod_container_status_waiting_reason").is_empty());
    assert_eq!(series(&families, "kube_pod_tolerations").len(), 1);
}

#[test]
fn allowed_labels_become_label_series() {
    let state = StateMetrics::default();
    let allow = Allow {
        labels: Allow::parse_list("pods=[app.kubernetes.io/name]").unwrap(),
        annotations: BTreeMap::new(),
    };
    state.replace(&[pod()], &allow);
    let families = parse(&state.scrape()).unwrap();
    assert_eq!(
        series(&families, "kube_pod_labels"),
        vec![(
            labels(&[
                ("namespace", "shop"),
                ("pod", "web-1"),
                ("uid", "u1"),
                ("label_app_kubernetes_io_name", "web"),
            ]),
            1.0
        )]
    );
}

#[test]
fn allow_lists_parse_kube_state_metrics_syntax() {
    let lists = Allow::parse_list("pods=[app,team],namespaces=[*]").unwrap();
    assert_eq!(lists["pods"], vec!["app", "team"]);
    assert_eq!(lists["namespaces"], vec!["*"]);
    assert!(Allow::parse_list("pods=app").is_err());
    assert!(Allow::parse_list("pods=[app").is_err());
}

#[test]
fn label_names_are_sanitised_as_kube_state_metrics_does() {
    assert_eq!(
        label_name("label", "app.kubernetes.io/name"),
        "label_app_kubernetes_io_name"
    );
    assert_eq!(label_name("label", "fooBar"), "label_foo_bar");
    assert_eq!(label_name("label", "myHTTPServer"), "label_my_httpserver");
    assert_eq!(label_name("label", "team-A"), "label_team_a");
}

#[test]
fn deployments_and_nodes_render_conditions_and_resources() {
    let deployment: Deployment = object(json!({
        "metadata": {"name": "web", "namespace": "shop", "generation": 3},
        "spec": {"replicas": 4, "selector": {}, "template": {},
                 "strategy": {"rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "30%"}}},
        "status": {"replicas": 4, "availableReplicas": 3, "observedGeneration": 3,
                   "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]}
    }));
    let node: Node = object(json!({
        "metadata": {"name": "node-a", "labels": {"node-role.kubernetes.io/control-plane": ""}},
        "spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]},
        "status": {
            "capacity": {"cpu": "2", "memory": "24684092Ki", "pods": "110"},
            "allocatable": {"cpu": "1500m", "memory": "23Gi", "pods": "110", "example.kubernetes.io/x": "1"},
            "conditions": [{"type": "Ready", "status": "True"}],
            "addresses": [{"type": "InternalIP", "address": "192.168.1.5"}],
            "nodeInfo": {"architecture": "amd64", "bootID": "", "containerRuntimeVersion": "containerd://1.6.20",
                         "kernelVersion": "6.1", "kubeProxyVersion": "", "kubeletVersion": "v1.33.0",
                         "machineID": "", "operatingSystem": "linux", "osImage": "Debian GNU/Linux 12", "systemUUID": "s1"}
        }
    }));
    let state = StateMetrics::default();
    state.replace(&[deployment], &Allow::default());
    state.replace(&[node], &Allow::default());
    let text = state.scrape();
    let families = parse(&text).unwrap();
    let conditions = series(&families, "kube_deployment_status_condition");
    assert_eq!(conditions.len(), 3);
    assert!(conditions.contains(&(
        labels(&[
            ("namespace", "shop"),
            ("deployment", "web"),
            ("reason", "ProgressDeadlineExceeded"),
            ("condition", "Progressing"),
            ("status", "false"),
        ]),
        1.0
    )));
    assert_eq!(
        series(
            &families,
            "kube_deployment_spec_strategy_rollingupdate_max_unavailable"
        )[0]
        .1,
        1.0
    );
    assert_eq!(
        series(
            &families,
            "kube_deployment_spec_strategy_rollingupdate_max_surge"
        )[0]
        .1,
        2.0
    );
    assert_eq!(
        series(&families, "kube_deployment_status_replicas_available")[0].1,
        3.0
    );
    assert_eq!(series(&families, "kube_deployment_owner")[0].0.len(), 4);
    let allocatable = series(&families, "kube_node_status_allocatable");
    assert_eq!(allocatable.len(), 3, "{allocatable:?}");
    assert!(allocatable.contains(&(
        labels(&[("node", "node-a"), ("resource", "cpu"), ("unit", "core")]),
        1.5
    )));
    assert!(allocatable.contains(&(
        labels(&[
            ("node", "node-a"),
            ("resource", "pods"),
            ("unit", "integer")
        ]),
        110.0
    )));
    assert_eq!(
        series(&families, "kube_node_role")[0].0[1],
        ("role".to_owned(), "control-plane".to_owned())
    );
    assert_eq!(series(&families, "kube_node_info")[0].0[9].1, "192.168.1.5");
    // kinds are written in resource order: deployments before nodes
    assert!(text.find("kube_deployment_").unwrap() < text.find("kube_node_").unwrap());
}

#[test]
fn kinds_without_objects_write_nothing() {
    let state = StateMetrics::default();
    state.replace::<Pod>(&[], &Allow::default());
    assert_eq!(state.scrape(), "");
}

#[tokio::test]
async fn streamed_scrapes_equal_whole_ones() {
    let state = StateMetrics::default();
    let pods: Vec<Pod> = (0..2000)
        .map(|i| {
            let mut pod = pod();
            pod.metadata.name = Some(format!("web-{i}"));
            pod.metadata.uid = Some(format!("u{i}"));
            pod
        })
        .collect();
    state.replace(&pods, &Allow::default());
    let whole = state.scrape();
    let mut chunks = state.scrape_chunks();
    let mut streamed = Vec::new();
    let mut count = 0;
    while let Some(chunk) = chunks.recv().await {
        streamed.extend_from_slice(&chunk);
        count += 1;
    }
    assert!(count > 1, "one chunk for {} bytes", whole.len());
    assert_eq!(String::from_utf8(streamed).unwrap(), whole);
}

#[test]
fn keys_that_sanitise_alike_get_conflict_suffixes() {
    let mut pod = pod();
    pod.metadata.labels = Some(
        [("app-name", "a"), ("app_name", "b")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    );
    let state = StateMetrics::default();
    let allow = Allow {
        labels: Allow::parse_list("pods=[*]").unwrap(),
        annotations: BTreeMap::new(),
    };
    state.replace(&[pod], &allow);
    let families = parse(&state.scrape()).unwrap();
    let labels = &series(&families, "kube_pod_labels")[0].0;
    assert!(
        labels.contains(&("label_app_name_conflict1".into(), "a".into())),
        "{labels:?}"
    );
    assert!(
        labels.contains(&("label_app_name_conflict2".into(), "b".into())),
        "{labels:?}"
    );
}

#[test]
fn terminating_objects_of_kinds_without_a_deletion_family_render() {
    let namespace: k8s_openapi::api::core::v1::Namespace = object(json!({
        "metadata": {"name": "going", "deletionTimestamp": "2026-11-20T10:00:00Z"},
        "status": {"phase": "Terminating"}
    }));
    let state = StateMetrics::default();
    state.replace(&[namespace], &Allow::default());
    let families = parse(&state.scrape()).unwrap();
    assert_eq!(
        series(&families, "kube_namespace_status_phase")
            .iter()
            .find(|(l, _)| l.contains(&("phase".into(), "Terminating".into())))
            .unwrap()
            .1,
        1.0
    );
}
