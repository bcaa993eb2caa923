//! Prometheus HTTP service discovery (`http_sd_configs`) with the `__meta_kubernetes_*` labels
//! of Prometheus' own Kubernetes discovery, at `GET /kelson/v1/prometheus-sd?role=ROLE` (`node`,
//! `pod`, `service` or `endpoints`, optionally `&namespace=NS`). Prometheus builds that ship
//! without Kubernetes discovery (Debian's, for one) can then use kube-prometheus' relabelling
//! rules unchanged.

use std::collections::BTreeMap;

use axum::response::Response;
use http::StatusCode;
use serde_json::{Map, Value, json};

use crate::ApiServer;
use crate::error::{ApiError, ApiResult};
use crate::resource_metrics::list;
use crate::rest::Query;

/// Prometheus' label-name sanitising: anything outside `[a-zA-Z0-9_]` becomes `_`.
#[must_use]
pub fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn text(value: &Value, pointer: &str) -> String {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// `__meta_kubernetes_<kind>_label_*`, `_labelpresent_*`, `_annotation_*`,
/// `_annotationpresent_*` of an object.
fn metadata_labels(labels: &mut Map<String, Value>, kind: &str, object: &Value) {
    for (field, singular) in [("labels", "label"), ("annotations", "annotation")] {
        let Some(map) = object
            .pointer(&format!("/metadata/{field}"))
            .and_then(Value::as_object)
        else {
            continue;
        };
        for (key, value) in map {
            let name = sanitize(key);
            labels.insert(
                format!("__meta_kubernetes_{kind}_{singular}_{name}"),
                json!(value.as_str().unwrap_or_default()),
            );
            labels.insert(
                format!("__meta_kubernetes_{kind}_{singular}present_{name}"),
                json!("true"),
            );
        }
    }
}

/// The node role: each node's kubelet (first address by Prometheus' preference order).
#[must_use]
pub fn node_targets(nodes: &[Value]) -> Vec<Value> {
    nodes
        .iter()
        .filter_map(|node| {
            let addresses: Vec<(String, String)> = node
                .pointer("/status/addresses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|a| (text(a, "/type"), text(a, "/address")))
                .collect();
            let address = [
                "InternalIP",
                "InternalDNS",
                "ExternalIP",
                "ExternalDNS",
                "LegacyHostIP",
                "Hostname",
            ]
            .iter()
            .find_map(|kind| addresses.iter().find(|(t, _)| t == kind))?
            .1
            .clone();
            let port = node
                .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
                .and_then(Value::as_i64)
                .unwrap_or(10250);
            let mut labels = Map::new();
            labels.insert(
                "__meta_kubernetes_node_name".into(),
                json!(text(node, "/metadata/name")),
            );
            // as Prometheus' node role does: the node's name is the instance
            labels.insert("instance".into(), json!(text(node, "/metadata/name")));
            labels.insert(
                "__meta_kubernetes_node_provider_id".into(),
                json!(text(node, "/spec/providerID")),
            );
            for (kind, value) in &addresses {
                labels
                    .entry(format!("__meta_kubernetes_node_address_{kind}"))
                    .or_insert_with(|| json!(value));
            }
            metadata_labels(&mut labels, "node", node);
            Some(json!({"targets": [host_port(&address, port)], "labels": labels}))
        })
        .collect()
}

fn host_port(host: &str, port: i64) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The labels every target of a pod carries.
fn pod_labels(pod: &Value) -> Map<String, Value> {
    let mut labels = Map::new();
    let controller = pod
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|o| o.get("controller").and_then(Value::as_bool) == Some(true));
    let ready = pod
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
        .map_or("unknown".to_owned(), |c| text(c, "/status").to_lowercase());
    for (name, value) in [
        ("namespace", text(pod, "/metadata/namespace")),
        ("pod_name", text(pod, "/metadata/name")),
        ("pod_ip", text(pod, "/status/podIP")),
        ("pod_ready", ready),
        ("pod_phase", text(pod, "/status/phase")),
        ("pod_node_name", text(pod, "/spec/nodeName")),
        ("pod_host_ip", text(pod, "/status/hostIP")),
        ("pod_uid", text(pod, "/metadata/uid")),
    ] {
        labels.insert(format!("__meta_kubernetes_{name}"), json!(value));
    }
    if let Some(controller) = controller {
        labels.insert(
            "__meta_kubernetes_pod_controller_kind".into(),
            json!(text(controller, "/kind")),
        );
        labels.insert(
            "__meta_kubernetes_pod_controller_name".into(),
            json!(text(controller, "/name")),
        );
    }
    metadata_labels(&mut labels, "pod", pod);
    labels
}

/// The pod role: one target per declared container port, or one port-less target for a
/// container without ports. Pods without an IP are left out.
#[must_use]
pub fn pod_targets(pods: &[Value]) -> Vec<Value> {
    let mut targets = Vec::new();
    for pod in pods {
        let ip = text(pod, "/status/podIP");
        if ip.is_empty() {
            continue;
        }
        let shared = pod_labels(pod);
        for (field, init) in [("containers", false), ("initContainers", true)] {
            for container in pod
                .pointer(&format!("/spec/{field}"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let mut labels = shared.clone();
                labels.insert(
                    "__meta_kubernetes_pod_container_name".into(),
                    json!(text(container, "/name")),
                );
                labels.insert(
                    "__meta_kubernetes_pod_container_image".into(),
                    json!(text(container, "/image")),
                );
                labels.insert(
                    "__meta_kubernetes_pod_container_init".into(),
                    json!(init.to_string()),
                );
                let ports = container
                    .get("ports")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                if ports.is_empty() {
                    targets.push(json!({"targets": [ip.clone()], "labels": labels}));
                    continue;
                }
                for port in ports {
                    let number = port
                        .get("containerPort")
                        .and_then(Value::as_i64)
                        .unwrap_or(0);
                    let mut labels = labels.clone();
                    labels.insert(
                        "__meta_kubernetes_pod_container_port_name".into(),
                        json!(text(&port, "/name")),
                    );
                    labels.insert(
                        "__meta_kubernetes_pod_container_port_number".into(),
                        json!(number.to_string()),
                    );
                    let protocol = port
                        .get("protocol")
                        .and_then(Value::as_str)
                        .unwrap_or("TCP");
                    labels.insert(
                        "__meta_kubernetes_pod_container_port_protocol".into(),
                        json!(protocol),
                    );
                    targets.push(json!({"targets": [host_port(&ip, number)], "labels": labels}));
                }
            }
        }
    }
    targets
}

/// The `__meta_kubernetes_pod_container_*` labels of the container port an endpoint port
/// points at, as Prometheus' endpoints role adds them.
fn container_port_labels(labels: &mut Map<String, Value>, pod: &Value, port: i64) {
    let containers = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    for container in containers {
        let ports = container
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten();
        for candidate in ports {
            if candidate.get("containerPort").and_then(Value::as_i64) != Some(port) {
                continue;
            }
            for (name, value) in [
                ("container_name", text(container, "/name")),
                ("container_image", text(container, "/image")),
                ("container_port_name", text(candidate, "/name")),
                ("container_port_number", port.to_string()),
                (
                    "container_port_protocol",
                    candidate
                        .get("protocol")
                        .and_then(Value::as_str)
                        .unwrap_or("TCP")
                        .to_owned(),
                ),
            ] {
                labels.insert(format!("__meta_kubernetes_pod_{name}"), json!(value));
            }
            return;
        }
    }
}

/// The labels of a Service.
fn service_labels(service: &Value) -> Map<String, Value> {
    let mut labels = Map::new();
    labels.insert(
        "__meta_kubernetes_namespace".into(),
        json!(text(service, "/metadata/namespace")),
    );
    labels.insert(
        "__meta_kubernetes_service_name".into(),
        json!(text(service, "/metadata/name")),
    );
    metadata_labels(&mut labels, "service", service);
    labels
}

/// The service role: one target per Service port, at its cluster DNS name.
#[must_use]
pub fn service_targets(services: &[Value]) -> Vec<Value> {
    let mut targets = Vec::new();
    for service in services {
        let shared = service_labels(service);
        let (name, namespace) = (
            text(service, "/metadata/name"),
            text(service, "/metadata/namespace"),
        );
        for port in service
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let number = port.get("port").and_then(Value::as_i64).unwrap_or(0);
            let mut labels = shared.clone();
            labels.insert(
                "__meta_kubernetes_service_port_name".into(),
                json!(text(port, "/name")),
            );
            labels.insert(
                "__meta_kubernetes_service_port_number".into(),
                json!(number.to_string()),
            );
            labels.insert(
                "__meta_kubernetes_service_port_protocol".into(),
                json!(
                    port.get("protocol")
                        .and_then(Value::as_str)
                        .unwrap_or("TCP")
                ),
            );
            labels.insert(
                "__meta_kubernetes_service_type".into(),
                json!(
                    service
                        .pointer("/spec/type")
                        .and_then(Value::as_str)
                        .unwrap_or("ClusterIP")
                ),
            );
            labels.insert(
                "__meta_kubernetes_service_cluster_ip".into(),
                json!(text(service, "/spec/clusterIP")),
            );
            targets.push(json!({
                "targets": [format!("{name}.{namespace}.svc:{number}")],
                "labels": labels,
            }));
        }
    }
    targets
}

/// The endpoints role: one target per address and port of each Endpoints object, with its
/// Service's labels and, for pod addresses, the pod's.
#[must_use]
pub fn endpoints_targets(endpoints: &[Value], services: &[Value], pods: &[Value]) -> Vec<Value> {
    let services: BTreeMap<(String, String), &Value> = services
        .iter()
        .map(|s| {
            (
                (text(s, "/metadata/namespace"), text(s, "/metadata/name")),
                s,
            )
        })
        .collect();
    let pods: BTreeMap<(String, String), &Value> = pods
        .iter()
        .map(|p| {
            (
                (text(p, "/metadata/namespace"), text(p, "/metadata/name")),
                p,
            )
        })
        .collect();
    let mut targets = Vec::new();
    for object in endpoints {
        let (namespace, name) = (
            text(object, "/metadata/namespace"),
            text(object, "/metadata/name"),
        );
        let mut shared = services
            .get(&(namespace.clone(), name.clone()))
            .map(|s| service_labels(s))
            .unwrap_or_default();
        shared.insert("__meta_kubernetes_namespace".into(), json!(namespace));
        shared.insert("__meta_kubernetes_endpoints_name".into(), json!(name));
        metadata_labels(&mut shared, "endpoints", object);
        for subset in object
            .get("subsets")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let ports = subset
                .get("ports")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for (field, ready) in [("addresses", "true"), ("notReadyAddresses", "false")] {
                for address in subset
                    .get(field)
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    for port in &ports {
                        let number = port.get("port").and_then(Value::as_i64).unwrap_or(0);
                        let mut labels = shared.clone();
                        labels.insert("__meta_kubernetes_endpoint_ready".into(), json!(ready));
                        labels.insert(
                            "__meta_kubernetes_endpoint_port_name".into(),
                            json!(text(port, "/name")),
                        );
                        labels.insert(
                            "__meta_kubernetes_endpoint_port_protocol".into(),
                            json!(
                                port.get("protocol")
                                    .and_then(Value::as_str)
                                    .unwrap_or("TCP")
                            ),
                        );
                        labels.insert(
                            "__meta_kubernetes_endpoint_hostname".into(),
                            json!(text(address, "/hostname")),
                        );
                        labels.insert(
                            "__meta_kubernetes_endpoint_node_name".into(),
                            json!(text(address, "/nodeName")),
                        );
                        if let Some(target) = address.get("targetRef") {
                            labels.insert(
                                "__meta_kubernetes_endpoint_address_target_kind".into(),
                                json!(text(target, "/kind")),
                            );
                            labels.insert(
                                "__meta_kubernetes_endpoint_address_target_name".into(),
                                json!(text(target, "/name")),
                            );
                            if text(target, "/kind") == "Pod"
                                && let Some(pod) =
                                    pods.get(&(text(target, "/namespace"), text(target, "/name")))
                            {
                                for (key, value) in pod_labels(pod) {
                                    labels.entry(key).or_insert(value);
                                }
                                container_port_labels(&mut labels, pod, number);
                            }
                        }
                        targets.push(json!({
                            "targets": [host_port(&text(address, "/ip"), number)],
                            "labels": labels,
                        }));
                    }
                }
            }
        }
    }
    targets
}

/// `GET /kelson/v1/prometheus-sd?role=ROLE[&namespace=NS]`.
///
/// # Errors
/// 400 for an unknown role.
pub async fn handle(server: &ApiServer, query: &Query) -> ApiResult<Response> {
    let namespace = query.get("namespace").filter(|n| !n.is_empty());
    let targets = match query.get("role").unwrap_or_default() {
        "node" => node_targets(&list(server, "nodes", None).await?),
        "pod" => pod_targets(&list(server, "pods", namespace).await?),
        "service" => service_targets(&list(server, "services", namespace).await?),
        "endpoints" => endpoints_targets(
            &list(server, "endpoints", namespace).await?,
            &list(server, "services", namespace).await?,
            &list(server, "pods", namespace).await?,
        ),
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown role {other:?}: use node, pod, service or endpoints"
            )));
        }
    };
    Ok(crate::rest::json_response(
        StatusCode::OK,
        &Value::Array(targets),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_targeted_at_their_kubelet() {
        let node = json!({
            "metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"}},
            "status": {"addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "192.0.2.7"}],
                       "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}}
        });
        let targets = node_targets(&[node]);
        assert_eq!(targets[0]["targets"][0], "192.0.2.7:10250");
        let labels = &targets[0]["labels"];
        assert_eq!(labels["__meta_kubernetes_node_name"], "n1");
        assert_eq!(labels["instance"], "n1");
        assert_eq!(
            labels["__meta_kubernetes_node_label_kubernetes_io_hostname"],
            "n1"
        );
        assert_eq!(
            labels["__meta_kubernetes_node_labelpresent_kubernetes_io_hostname"],
            "true"
        );
        assert_eq!(
            labels["__meta_kubernetes_node_address_InternalIP"],
            "192.0.2.7"
        );
    }

    #[test]
    fn pods_give_one_target_per_port_or_container() {
        let pod = json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u1",
                         "ownerReferences": [{"kind": "ReplicaSet", "name": "web-5d", "controller": true}]},
            "spec": {"nodeName": "n1", "containers": [
                {"name": "app", "image": "busybox", "ports": [{"name": "http", "containerPort": 8080}]},
                {"name": "sidecar", "image": "busybox"}]},
            "status": {"podIP": "10.42.0.7", "phase": "Running",
                       "conditions": [{"type": "Ready", "status": "True"}]}
        });
        let targets = pod_targets(&[pod, json!({"metadata": {"name": "pending"}})]);
        assert_eq!(targets.len(), 2);
        assert_eq!(targets[0]["targets"][0], "10.42.0.7:8080");
        assert_eq!(
            targets[0]["labels"]["__meta_kubernetes_pod_container_port_name"],
            "http"
        );
        assert_eq!(targets[0]["labels"]["__meta_kubernetes_pod_ready"], "true");
        assert_eq!(
            targets[0]["labels"]["__meta_kubernetes_pod_controller_kind"],
            "ReplicaSet"
        );
        assert_eq!(targets[1]["targets"][0], "10.42.0.7");
    }

    #[test]
    fn endpoints_carry_service_and_pod_labels() {
        let service = json!({"metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
                             "spec": {"ports": [{"name": "http", "port": 80}]}});
        let pod = json!({"metadata": {"name": "web-1", "namespace": "shop"}, "status": {"podIP": "10.42.0.7"},
                         "spec": {"containers": [{"name": "app", "image": "busybox", "ports": [{"name": "http", "containerPort": 8080}]}]}});
        let endpoints = json!({"metadata": {"name": "web", "namespace": "shop"}, "subsets": [{
            "addresses": [{"ip": "10.42.0.7", "nodeName": "n1", "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "shop"}}],
            "notReadyAddresses": [{"ip": "10.42.0.8"}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]});
        let targets = endpoints_targets(&[endpoints], std::slice::from_ref(&service), &[pod]);
        assert_eq!(targets.len(), 2);
        let labels = &targets[0]["labels"];
        assert_eq!(targets[0]["targets"][0], "10.42.0.7:8080");
        assert_eq!(labels["__meta_kubernetes_service_label_app"], "web");
        assert_eq!(labels["__meta_kubernetes_pod_name"], "web-1");
        assert_eq!(labels["__meta_kubernetes_endpoint_ready"], "true");
        assert_eq!(labels["__meta_kubernetes_pod_container_name"], "app");
        assert_eq!(labels["__meta_kubernetes_pod_container_port_name"], "http");
        assert_eq!(
            targets[1]["labels"]["__meta_kubernetes_endpoint_ready"],
            "false"
        );
        let services = service_targets(&[service]);
        assert_eq!(services[0]["targets"][0], "web.shop.svc:80");
    }

    #[test]
    fn label_names_are_sanitised() {
        assert_eq!(sanitize("app.kubernetes.io/name"), "app_kubernetes_io_name");
    }
}
