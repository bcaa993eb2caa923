//! The Endpoints and EndpointSlice controllers: for every Service with a selector, the pods it
//! selects become its Endpoints (ready addresses and not-ready ones, ports resolved from named
//! target ports) and one EndpointSlice with per-endpoint ready/serving/terminating conditions,
//! which the service proxy and DNS read.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};

use crate::context::{Context, Error, Result};

/// What the endpoints controller reads.
pub struct Shared {
    /// Context.
    pub context: Arc<Context>,
    /// Pod cache.
    pub pods: Store<Pod>,
}

const MANAGER: &str = "endpoint-controller";

/// The pods a Service selects (active ones with an IP).
#[must_use]
pub fn selected<'a>(service: &Service, pods: &'a [Arc<Pod>]) -> Vec<&'a Arc<Pod>> {
    let Some(selector) = service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
    else {
        return Vec::new();
    };
    let namespace = service.namespace();
    pods.iter()
        .filter(|p| p.namespace() == namespace)
        .filter(|p| selector.iter().all(|(k, v)| p.labels().get(k) == Some(v)))
        .filter(|p| !kelson_common::pod::is_terminal(p))
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.pod_ip.as_ref())
                .is_some_and(|ip| !ip.is_empty())
        })
        .collect()
}

/// The port a Service port targets on a pod (named ports resolved through the pod's containers).
fn target_port(port: &k8s_openapi::api::core::v1::ServicePort, pod: &Pod) -> Option<i32> {
    match port.target_port.as_ref() {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port),
    }
}

fn reference(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        name: pod.metadata.name.clone(),
        namespace: pod.metadata.namespace.clone(),
        uid: pod.metadata.uid.clone(),
        ..ObjectReference::default()
    }
}

/// The DNS label of a pod under a headless Service: its `hostname` when its `subdomain` names
/// the Service (StatefulSet pods: `db-0.db.<namespace>.svc`).
fn hostname(service: &Service, pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    (spec.subdomain.as_deref() == service.metadata.name.as_deref())
        .then(|| spec.hostname.clone())
        .flatten()
        .filter(|h| !h.is_empty())
}

/// A Service's ports as resolved on one pod: (name, port, protocol).
type ResolvedPorts = Vec<(Option<String>, i32, String)>;

/// The Endpoints subsets: pods grouped by their resolved ports.
#[must_use]
pub fn subsets(service: &Service, pods: &[&Arc<Pod>]) -> Vec<EndpointSubset> {
    let ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    let mut groups: BTreeMap<ResolvedPorts, (Vec<EndpointAddress>, Vec<EndpointAddress>)> =
        BTreeMap::new();
    for pod in pods {
        let resolved: Option<ResolvedPorts> = ports
            .iter()
            .map(|p| {
                target_port(p, pod).map(|n| {
                    (
                        p.name.clone(),
                        n,
                        p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    )
                })
            })
            .collect();
        let Some(resolved) = resolved else { continue };
        let address = EndpointAddress {
            ip: pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .unwrap_or_default(),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(reference(pod)),
            hostname: hostname(service, pod),
        };
        let entry = groups.entry(resolved).or_default();
        if kelson_common::pod::is_ready(pod) && !kelson_common::pod::is_terminating(pod) {
            entry.0.push(address);
        } else {
            entry.1.push(address);
        }
    }
    groups
        .into_iter()
        .map(|(ports, (mut ready, mut not_ready))| {
            ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            not_ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: Some(
                    ports
                        .into_iter()
                        .map(|(name, port, protocol)| EndpointPort {
                            name,
                            port,
                            protocol: Some(protocol),
                            app_protocol: None,
                        })
                        .collect(),
                ),
            }
        })
        .collect()
}

/// The endpoints of the EndpointSlice.
#[must_use]
pub fn slice_endpoints(service: &Service, pods: &[&Arc<Pod>]) -> Vec<Endpoint> {
    let mut endpoints: Vec<Endpoint> = pods
        .iter()
        .map(|pod| {
            let terminating = kelson_common::pod::is_terminating(pod);
            let ready = kelson_common::pod::is_ready(pod);
            Endpoint {
                addresses: vec![
                    pod.status
                        .as_ref()
                        .and_then(|s| s.pod_ip.clone())
                        .unwrap_or_default(),
                ],
                conditions: Some(EndpointConditions {
                    ready: Some(ready && !terminating),
                    serving: Some(ready),
                    terminating: Some(terminating),
                }),
                node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                target_ref: Some(reference(pod)),
                hostname: hostname(service, pod),
                ..Endpoint::default()
            }
        })
        .collect();
    endpoints.sort_by(|a, b| a.addresses.cmp(&b.addresses));
    endpoints
}

/// Reconciles one Service.
///
/// # Errors
/// When an API call fails (retried by the error policy).
pub async fn reconcile(service: Arc<Service>, ctx: Arc<Shared>) -> Result<Action> {
    let has_selector = service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_some_and(|s| !s.is_empty());
    if service.metadata.deletion_timestamp.is_some() || !has_selector {
        return Ok(Action::await_change());
    }
    let namespace = service.namespace().unwrap_or_default();
    let name = service.name_any();
    let pods = ctx.pods.state();
    let chosen = selected(&service, &pods);
    let owner = service.controller_owner_ref(&()).map(|r| vec![r]);
    let endpoints = Endpoints {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            labels: service.metadata.labels.clone(),
            ..ObjectMeta::default()
        },
        subsets: Some(subsets(&service, &chosen)),
    };
    let params = PatchParams::apply(MANAGER).force();
    let endpoints_api: Api<Endpoints> = Api::namespaced(ctx.context.client.clone(), &namespace);
    endpoints_api
        .patch(
            &name,
            &params,
            &Patch::Apply(&with_type(&endpoints, "v1", "Endpoints")),
        )
        .await
        .map_err(Error::api(format!("apply endpoints {namespace}/{name}")))?;
    let ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    let mut labels = service.metadata.labels.clone().unwrap_or_default();
    labels.insert("kubernetes.io/service-name".into(), name.clone());
    labels.insert(
        "endpointslice.kubernetes.io/managed-by".into(),
        "endpointslice-controller.k8s.io".into(),
    );
    let slice = EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            labels: Some(labels),
            owner_references: owner,
            ..ObjectMeta::default()
        },
        address_type: "IPv4".into(),
        endpoints: slice_endpoints(&service, &chosen),
        ports: Some(
            ports
                .iter()
                .map(|p| SlicePort {
                    name: p.name.clone(),
                    port: chosen
                        .first()
                        .and_then(|pod| target_port(p, pod))
                        .or(Some(p.port)),
                    protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
                    app_protocol: p.app_protocol.clone(),
                })
                .collect(),
        ),
    };
    let slices: Api<EndpointSlice> = Api::namespaced(ctx.context.client.clone(), &namespace);
    slices
        .patch(
            &name,
            &params,
            &Patch::Apply(&with_type(&slice, "discovery.k8s.io/v1", "EndpointSlice")),
        )
        .await
        .map_err(Error::api(format!(
            "apply endpointslice {namespace}/{name}"
        )))?;
    Ok(Action::requeue(Duration::from_secs(300)))
}

fn with_type<T: serde::Serialize>(object: &T, api_version: &str, kind: &str) -> serde_json::Value {
    let mut value = serde_json::to_value(object).expect("serializes");
    value["apiVersion"] = api_version.into();
    value["kind"] = kind.into();
    value
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(name: &str, ip: &str, ready: bool, port_name: &str, port: i32) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "d", "labels": {"app": "web"}},
                "spec": {"nodeName": "n", "containers": [{"name": "c", "ports": [{"name": port_name, "containerPort": port}]}]},
                "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
            }))
            .unwrap(),
        )
    }

    #[test]
    fn endpoints_split_ready_and_resolve_named_ports() {
        let service: Service = serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "d"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}})).unwrap();
        let pods = vec![
            pod("a", "10.0.0.2", true, "http", 8080),
            pod("b", "10.0.0.1", false, "http", 8080),
            pod("c", "10.0.0.3", true, "http", 9090),
        ];
        let chosen = selected(&service, &pods);
        let subsets = subsets(&service, &chosen);
        assert_eq!(
            subsets.len(),
            2,
            "pods with different resolved ports go to different subsets"
        );
        let first = &subsets[0];
        assert_eq!(first.ports.as_ref().unwrap()[0].port, 8080);
        assert_eq!(first.addresses.as_ref().unwrap()[0].ip, "10.0.0.2");
        assert_eq!(
            first.not_ready_addresses.as_ref().unwrap()[0].ip,
            "10.0.0.1"
        );
        let endpoints = slice_endpoints(&service, &chosen);
        assert_eq!(endpoints.len(), 3);
        assert_eq!(endpoints[0].conditions.as_ref().unwrap().ready, Some(false));
    }
}
