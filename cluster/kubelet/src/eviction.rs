//! Node-pressure eviction for memory, as the kubelet's eviction manager does it: when
//! `memory.available` falls under the hard threshold (100Mi), one pod per round is evicted —
//! pods using more than they requested first, then lower priority, then the largest use above
//! the request (so BestEffort pods, which request nothing, go first). The evicted pod is marked
//! `Failed` with reason `Evicted`; its worker then stops it, and its controller replaces it.

use std::cmp::Reverse;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kelson_common::quantity;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::Recorder;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::host;
use crate::pods::PodContext;
use crate::pods::spec::{NODE_LABEL, POD_UID_LABEL};

/// The memory a pod requests, summed over its containers.
#[must_use]
pub fn memory_request(pod: &Pod) -> u64 {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .filter_map(|c| c.resources.as_ref()?.requests.as_ref()?.get("memory"))
        .map(|q| u64::try_from(quantity::units(q)).unwrap_or(0))
        .sum()
}

/// Orders candidate pods (with their memory use in bytes) for eviction, first to go first.
#[must_use]
pub fn rank(candidates: &[(Pod, u64)]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by_key(|&i| {
        let (pod, usage) = &candidates[i];
        let request = memory_request(pod);
        let exceeds = *usage > request;
        let priority = pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
        (
            Reverse(exceeds),
            priority,
            Reverse(usage.saturating_sub(request)),
        )
    });
    order
}

/// Watches memory every 10 s and evicts one pod per round while under pressure.
pub async fn run(ctx: Arc<PodContext>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let available = host::readings().memory_available;
        if available >= host::MEMORY_AVAILABLE_THRESHOLD {
            continue;
        }
        if let Err(error) = evict_one(&ctx, &ctx.recorder, available).await {
            warn!(%error, "eviction failed");
        }
    }
}

async fn evict_one(ctx: &PodContext, recorder: &Recorder, available: u64) -> kube::Result<()> {
    let labels = [(NODE_LABEL, ctx.node.name.as_str())];
    let Ok(stats) = ctx.cri.list_pod_sandbox_stats(&labels).await else {
        return Ok(());
    };
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let pods = api
        .list(&kube::api::ListParams::default().fields(&format!("spec.nodeName={}", ctx.node.name)))
        .await?;
    let candidates: Vec<(Pod, u64)> = pods
        .items
        .into_iter()
        .filter(|p| !kelson_common::pod::is_terminal(p) && p.metadata.deletion_timestamp.is_none())
        .filter_map(|pod| {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let usage = stats
                .iter()
                .filter(|s| {
                    s.attributes
                        .as_ref()
                        .and_then(|a| a.labels.get(POD_UID_LABEL))
                        == Some(&uid)
                })
                .filter_map(|s| {
                    s.linux
                        .as_ref()?
                        .memory
                        .as_ref()?
                        .working_set_bytes
                        .as_ref()
                })
                .map(|v| v.value)
                .max()?;
            Some((pod, usage))
        })
        .collect();
    let Some(&victim) = rank(&candidates).first() else {
        return Ok(());
    };
    let (pod, usage) = &candidates[victim];
    let name = pod.metadata.name.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let message = format!(
        "The node was low on resource: memory. Threshold quantity: 100Mi, available: {}Ki. Pod used {}Ki.",
        available / 1024,
        usage / 1024
    );
    info!(pod = %name, %namespace, "evicting under memory pressure");
    ctx.metrics
        .evictions
        .with_label_values(&["memory.available"])
        .inc();
    let patch =
        serde_json::json!({"status": {"phase": "Failed", "reason": "Evicted", "message": message}});
    Api::<Pod>::namespaced(ctx.client.clone(), &namespace)
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(name),
        namespace: Some(namespace),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    };
    kelson_common::events::publish(recorder, &reference, true, "Evicted", message).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(name: &str, request: Option<&str>, priority: i32) -> Pod {
        let resources = request.map_or(json!({}), |r| json!({"requests": {"memory": r}}));
        serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"priority": priority, "containers": [{"name": "c", "resources": resources}]}}))
        .unwrap()
    }

    #[test]
    fn over_request_then_priority_then_excess() {
        let mib = 1 << 20;
        let candidates = vec![
            (pod("guaranteed-under", Some("512Mi"), 0), 100 * mib),
            (pod("besteffort-small", None, 0), 10 * mib),
            (pod("besteffort-big", None, 0), 300 * mib),
            (
                pod("burstable-over-important", Some("64Mi"), 1000),
                200 * mib,
            ),
            (pod("burstable-over", Some("64Mi"), 0), 100 * mib),
        ];
        let order: Vec<&str> = rank(&candidates)
            .into_iter()
            .map(|i| candidates[i].0.metadata.name.as_deref().unwrap())
            .collect();
        assert_eq!(
            order,
            vec![
                "besteffort-big",
                "burstable-over",
                "besteffort-small",
                "burstable-over-important",
                "guaranteed-under"
            ]
        );
    }
}
