//! The resource metrics API (`metrics.k8s.io/v1beta1`, NodeMetrics and PodMetrics) that
//! `kubectl top` and the HorizontalPodAutoscaler read, served by the API server itself rather
//! than by a separate metrics-server behind an APIService.
//!
//! A sampler asks every node's kubelet for its Summary (`/stats/summary`) every
//! [`RESOLUTION`] and keeps the last two samples per node; CPU usage is the rate of the
//! cumulative CPU time between them (over `window`), memory the latest working set — as
//! metrics-server computes them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::response::Response;
use futures::StreamExt as _;
use http::StatusCode;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::ApiServer;
use crate::error::{ApiError, ApiResult};
use crate::registry::ResourceType;
use crate::rest::Query;
use crate::selectors::LabelSelector;

/// How often kubelets are sampled (metrics-server's resolution in its manifests).
pub const RESOLUTION: Duration = Duration::from_secs(10);

/// The group and version served.
pub const GROUP: &str = "metrics.k8s.io";
/// The version served.
pub const VERSION: &str = "v1beta1";

/// One container's cumulative CPU time and current working set.
#[derive(Clone, Debug, PartialEq)]
struct Usage {
    cpu_nanoseconds: u64,
    memory_bytes: u64,
}

/// One Summary of a node.
#[derive(Clone, Debug, PartialEq)]
struct Sample {
    /// When the node's CPU reading was taken.
    at: jiff::Timestamp,
    node: Usage,
    /// (namespace, pod) → containers in order.
    pods: BTreeMap<(String, String), Vec<(String, Usage)>>,
}

/// The kubelet's Summary as a sample; `None` when it lacks the node's readings.
fn parse_summary(summary: &Value) -> Option<Sample> {
    let node = summary.get("node")?;
    let at: jiff::Timestamp = node.pointer("/cpu/time")?.as_str()?.parse().ok()?;
    let usage = |value: &Value| -> Option<Usage> {
        Some(Usage {
            cpu_nanoseconds: value.pointer("/cpu/usageCoreNanoSeconds")?.as_u64()?,
            memory_bytes: value
                .pointer("/memory/workingSetBytes")
                .and_then(Value::as_u64)
                .unwrap_or(0),
        })
    };
    let mut pods = BTreeMap::new();
    for pod in summary
        .get("pods")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (Some(namespace), Some(name)) = (
            pod.pointer("/podRef/namespace").and_then(Value::as_str),
            pod.pointer("/podRef/name").and_then(Value::as_str),
        ) else {
            continue;
        };
        let containers = pod
            .get("containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| Some((c.get("name")?.as_str()?.to_owned(), usage(c)?)))
            .collect();
        pods.insert((namespace.to_owned(), name.to_owned()), containers);
    }
    Some(Sample {
        at,
        node: usage(node)?,
        pods,
    })
}

/// The last two samples of each node.
#[derive(Debug, Default)]
pub struct ResourceMetrics {
    nodes: Mutex<HashMap<String, (Option<Sample>, Sample)>>,
}

/// CPU as Kubernetes writes usage (`123456n`) from nanoseconds used over `seconds`.
fn cpu_quantity(used_nanoseconds: u64, seconds: f64) -> String {
    let cores = (used_nanoseconds as f64 / seconds).round() as u64;
    format!("{cores}n")
}

/// Memory in KiB, as metrics-server writes it (`1234Ki`).
fn memory_quantity(bytes: u64) -> String {
    format!("{}Ki", bytes / 1024)
}

fn window(previous: &Sample, latest: &Sample) -> Option<f64> {
    let seconds = latest.at.duration_since(previous.at).as_secs_f64();
    (seconds > 0.0).then_some(seconds)
}

fn duration_text(seconds: f64) -> String {
    let text = format!("{seconds:.3}");
    format!("{}s", text.trim_end_matches('0').trim_end_matches('.'))
}

impl ResourceMetrics {
    fn record(&self, node: &str, sample: Sample) {
        let mut nodes = self.nodes.lock();
        let previous = nodes.remove(node).map(|(_, latest)| latest);
        // a restarted kubelet or runtime starts its counters again: drop the old sample
        let previous = previous
            .filter(|p| p.at < sample.at && p.node.cpu_nanoseconds <= sample.node.cpu_nanoseconds);
        nodes.insert(node.to_owned(), (previous, sample));
    }

    fn forget_except(&self, names: &[String]) {
        self.nodes.lock().retain(|name, _| names.contains(name));
    }

    /// `NodeMetrics` of `node` when two samples are known.
    fn node(&self, name: &str, labels: &Value) -> Option<Value> {
        let nodes = self.nodes.lock();
        let (previous, latest) = nodes.get(name)?;
        let previous = previous.as_ref()?;
        let seconds = window(previous, latest)?;
        let used = latest
            .node
            .cpu_nanoseconds
            .saturating_sub(previous.node.cpu_nanoseconds);
        Some(json!({
            "metadata": {"name": name, "labels": labels, "creationTimestamp": latest.at.to_string()},
            "timestamp": latest.at.to_string(),
            "window": duration_text(seconds),
            "usage": {
                "cpu": cpu_quantity(used, seconds),
                "memory": memory_quantity(latest.node.memory_bytes),
            },
        }))
    }

    /// `PodMetrics` of a pod on `node` when two samples include it.
    fn pod(&self, node: &str, namespace: &str, name: &str, labels: &Value) -> Option<Value> {
        let nodes = self.nodes.lock();
        let (previous, latest) = nodes.get(node)?;
        let previous = previous.as_ref()?;
        let seconds = window(previous, latest)?;
        let key = (namespace.to_owned(), name.to_owned());
        let (before, now) = (previous.pods.get(&key)?, latest.pods.get(&key)?);
        let containers: Vec<Value> = now
            .iter()
            .map(|(container, usage)| {
                let earlier = before
                    .iter()
                    .find(|(c, _)| c == container)
                    .map_or(usage.cpu_nanoseconds, |(_, u)| u.cpu_nanoseconds);
                json!({
                    "name": container,
                    "usage": {
                        "cpu": cpu_quantity(usage.cpu_nanoseconds.saturating_sub(earlier), seconds),
                        "memory": memory_quantity(usage.memory_bytes),
                    },
                })
            })
            .collect();
        Some(json!({
            "metadata": {"name": name, "namespace": namespace, "labels": labels,
                         "creationTimestamp": latest.at.to_string()},
            "timestamp": latest.at.to_string(),
            "window": duration_text(seconds),
            "containers": containers,
        }))
    }
}

/// Samples every node's kubelet each [`RESOLUTION`] until `shutdown`.
pub async fn sample(server: Arc<ApiServer>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(RESOLUTION);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let Ok(nodes) = list(&server, "nodes", None).await else {
            continue;
        };
        let names: Vec<String> = nodes
            .iter()
            .filter_map(|n| n.pointer("/metadata/name")?.as_str().map(str::to_owned))
            .collect();
        server.resource_metrics.forget_except(&names);
        // nodes without a kubelet API (hollow nodes) have nothing to sample
        let reachable: Vec<String> = nodes
            .iter()
            .filter(|n| {
                n.pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
                    .and_then(Value::as_i64)
                    .is_some_and(|p| p > 0)
            })
            .filter_map(|n| n.pointer("/metadata/name")?.as_str().map(str::to_owned))
            .collect();
        futures::stream::iter(reachable)
            .for_each_concurrent(16, |name| {
                let server = server.clone();
                async move {
                    match summary(&server, &name).await {
                        Ok(sample) => server.resource_metrics.record(&name, sample),
                        Err(error) => {
                            tracing::debug!(node = %name, %error, "no resource metrics from the kubelet");
                        }
                    }
                }
            })
            .await;
    }
}

async fn summary(server: &Arc<ApiServer>, node: &str) -> Result<Sample, String> {
    let request = http::Request::get("/stats/summary")
        .body(axum::body::Body::empty())
        .expect("static request");
    let target = crate::proxy::Target::Node {
        name: node.to_owned(),
        rest: "stats/summary".to_owned(),
    };
    let response = tokio::time::timeout(
        Duration::from_secs(5),
        crate::proxy::forward(server, target, request),
    )
    .await
    .map_err(|_| "timed out".to_owned())?
    .map_err(|e| e.status()["message"].to_string())?;
    if response.status() != StatusCode::OK {
        return Err(format!("the kubelet answered {}", response.status()));
    }
    let body = axum::body::to_bytes(response.into_body(), 64 << 20)
        .await
        .map_err(|e| e.to_string())?;
    let summary: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    parse_summary(&summary).ok_or_else(|| "the Summary lacks the node's CPU".to_owned())
}

/// Stored objects of a core (v1) resource, in one namespace or all.
///
/// # Errors
/// Storage errors.
pub(crate) async fn list(
    server: &ApiServer,
    plural: &str,
    namespace: Option<&str>,
) -> ApiResult<Vec<Value>> {
    let rt = server
        .registry
        .lookup("", "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("{plural} are not registered")))?;
    let page = server
        .objects
        .list(
            &rt,
            &rt.list_prefix(namespace),
            None,
            None,
            usize::MAX,
            |_| true,
        )
        .await?;
    Ok(page.items)
}

/// The resource types served, for discovery.
#[must_use]
pub fn types() -> Vec<Arc<ResourceType>> {
    [
        ("NodeMetrics", "nodes", false),
        ("PodMetrics", "pods", true),
    ]
    .into_iter()
    .map(|(kind, plural, namespaced)| {
        Arc::new(ResourceType {
            group: GROUP.to_owned(),
            version: VERSION.to_owned(),
            kind: kind.to_owned(),
            plural: plural.to_owned(),
            singular: String::new(),
            namespaced,
            short_names: Vec::new(),
            categories: Vec::new(),
            verbs: vec!["get".to_owned(), "list".to_owned()],
            subresources: Vec::new(),
            storage_prefix: format!("/registry/{GROUP}/{plural}/"),
            schema: None,
            tracks_generation: false,
            scale: None,
            printer_columns: Vec::new(),
            custom: false,
            review: false,
        })
    })
    .collect()
}

fn selector(query: &Query) -> ApiResult<LabelSelector> {
    LabelSelector::parse(query.get("labelSelector").unwrap_or_default())
        .map_err(|e| ApiError::bad_request(format!("invalid labelSelector: {e}")))
}

fn labels_of(object: &Value) -> (BTreeMap<String, String>, Value) {
    let value = object
        .pointer("/metadata/labels")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let map = value
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    (map, value)
}

fn list_response(kind: &str, items: Vec<Value>) -> Response {
    crate::rest::json_response(
        StatusCode::OK,
        &json!({
            "kind": kind,
            "apiVersion": format!("{GROUP}/{VERSION}"),
            "metadata": {},
            "items": items,
        }),
    )
}

fn not_found(resource: &str, name: &str) -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        format!("{resource}.{GROUP} \"{name}\" not found"),
    )
}

/// Serves `GET /apis/metrics.k8s.io/v1beta1/<parts>`.
///
/// # Errors
/// 404 for unknown paths and for objects without metrics yet, 405 for other verbs.
pub async fn handle(
    server: &Arc<ApiServer>,
    parts: &[&str],
    method: &http::Method,
    query: &Query,
) -> ApiResult<Response> {
    if method != http::Method::GET {
        return Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "the resource metrics API is read-only",
        ));
    }
    if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
        return Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "watch is not supported on metrics",
        ));
    }
    let metrics = &server.resource_metrics;
    match parts {
        ["nodes"] => {
            let selector = selector(query)?;
            let items = list(server, "nodes", None)
                .await?
                .iter()
                .filter_map(|node| {
                    let name = node.pointer("/metadata/name")?.as_str()?;
                    let (map, labels) = labels_of(node);
                    selector
                        .matches(&map)
                        .then(|| metrics.node(name, &labels))
                        .flatten()
                })
                .collect();
            Ok(list_response("NodeMetricsList", items))
        }
        ["nodes", name] => {
            let rt = server
                .registry
                .lookup("", "v1", "nodes")
                .ok_or_else(|| ApiError::internal("nodes are not registered"))?;
            let node = server
                .objects
                .get(&rt, None, name)
                .await
                .map_err(|_| not_found("nodes", name))?;
            let (_, labels) = labels_of(&node);
            let mut item = metrics
                .node(name, &labels)
                .ok_or_else(|| not_found("nodes", name))?;
            item["kind"] = json!("NodeMetrics");
            item["apiVersion"] = json!(format!("{GROUP}/{VERSION}"));
            Ok(crate::rest::json_response(StatusCode::OK, &item))
        }
        ["pods"] | ["namespaces", _, "pods"] => {
            let namespace = match parts {
                ["namespaces", namespace, _] => Some(*namespace),
                _ => None,
            };
            let selector = selector(query)?;
            let items = list(server, "pods", namespace)
                .await?
                .iter()
                .filter_map(|pod| pod_item(metrics, pod, &selector))
                .collect();
            Ok(list_response("PodMetricsList", items))
        }
        ["namespaces", namespace, "pods", name] => {
            let rt = server
                .registry
                .lookup("", "v1", "pods")
                .ok_or_else(|| ApiError::internal("pods are not registered"))?;
            let pod = server
                .objects
                .get(&rt, Some(namespace), name)
                .await
                .map_err(|_| not_found("pods", name))?;
            let mut item = pod_item(metrics, &pod, &LabelSelector::default())
                .ok_or_else(|| not_found("pods", name))?;
            item["kind"] = json!("PodMetrics");
            item["apiVersion"] = json!(format!("{GROUP}/{VERSION}"));
            Ok(crate::rest::json_response(StatusCode::OK, &item))
        }
        _ => Err(ApiError::no_route()),
    }
}

fn pod_item(metrics: &ResourceMetrics, pod: &Value, selector: &LabelSelector) -> Option<Value> {
    let namespace = pod.pointer("/metadata/namespace")?.as_str()?;
    let name = pod.pointer("/metadata/name")?.as_str()?;
    let node = pod.pointer("/spec/nodeName")?.as_str()?;
    let (map, labels) = labels_of(pod);
    if !selector.matches(&map) {
        return None;
    }
    metrics.pod(node, namespace, name, &labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(at: &str, node_cpu: u64, app_cpu: u64) -> Value {
        json!({
            "node": {"nodeName": "n1", "cpu": {"time": at, "usageCoreNanoSeconds": node_cpu},
                     "memory": {"workingSetBytes": 2_097_152}},
            "pods": [{"podRef": {"name": "web", "namespace": "default"},
                      "containers": [{"name": "app", "cpu": {"usageCoreNanoSeconds": app_cpu},
                                      "memory": {"workingSetBytes": 10_240}}]}]
        })
    }

    #[test]
    fn usage_is_the_rate_between_two_summaries() {
        let metrics = ResourceMetrics::default();
        let first = parse_summary(&summary("2026-11-23T10:00:00Z", 1_000_000_000, 0)).unwrap();
        metrics.record("n1", first);
        assert!(
            metrics.node("n1", &json!({})).is_none(),
            "one sample has no rate"
        );
        let second = parse_summary(&summary(
            "2026-11-23T10:00:10Z",
            6_000_000_000,
            2_500_000_000,
        ))
        .unwrap();
        metrics.record("n1", second);
        let node = metrics.node("n1", &json!({})).unwrap();
        assert_eq!(node["usage"]["cpu"], "500000000n");
        assert_eq!(node["usage"]["memory"], "2048Ki");
        assert_eq!(node["window"], "10s");
        let pod = metrics.pod("n1", "default", "web", &json!({})).unwrap();
        assert_eq!(pod["containers"][0]["usage"]["cpu"], "250000000n");
        assert_eq!(pod["containers"][0]["usage"]["memory"], "10Ki");
        assert!(metrics.pod("n1", "default", "other", &json!({})).is_none());
    }

    #[test]
    fn a_counter_reset_drops_the_old_sample() {
        let metrics = ResourceMetrics::default();
        metrics.record(
            "n1",
            parse_summary(&summary("2026-11-23T10:00:00Z", 9_000_000_000, 0)).unwrap(),
        );
        metrics.record(
            "n1",
            parse_summary(&summary("2026-11-23T10:00:10Z", 1_000_000_000, 0)).unwrap(),
        );
        assert!(metrics.node("n1", &json!({})).is_none());
    }

    #[test]
    fn summaries_without_node_readings_are_refused() {
        assert!(parse_summary(&json!({"pods": []})).is_none());
        assert!(parse_summary(&json!({"node": {"cpu": {"time": "bogus"}}})).is_none());
    }

    #[test]
    fn durations_are_written_as_go_does() {
        assert_eq!(duration_text(10.0), "10s");
        assert_eq!(duration_text(10.25), "10.25s");
    }
}
