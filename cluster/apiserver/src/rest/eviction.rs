//! The eviction subresource, `POST /api/v1/namespaces/NS/pods/NAME/eviction` (what `kubectl
//! drain` calls), as kube-apiserver serves it: the pod is deleted only if the
//! PodDisruptionBudget covering it allows one more disruption. The eviction takes that
//! disruption from the budget's status and records the pod in `disruptedPods` in the same
//! write, so two evictions racing for the last allowance cannot both win; the disruption
//! controller recomputes the status afterwards. Otherwise the answer is 429 TooManyRequests
//! naming the budget, which `kubectl drain` retries.
//!
//! Pods that are pending, finished or already deleting are deleted without a budget check; a
//! pod that is not ready may go while its budget is met (`unhealthyPodEvictionPolicy`
//! IfHealthyBudget, the default) or always (AlwaysAllow).

use std::sync::Arc;

use axum::response::Response;
use serde_json::{Value, json};

use crate::ApiServer;
use crate::error::{ApiError, ApiResult};
use crate::meta;
use crate::registry::ResourceType;
use crate::rest::{Req, body, write};

const VIOLATION: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

/// 429 with the budget named in a `DisruptionBudget` cause, and no `Retry-After` (the client
/// decides when to ask again, as `kubectl drain` does every five seconds).
fn refused(detail: String) -> ApiError {
    ApiError {
        details: Some(json!({"causes": [{"reason": "DisruptionBudget", "message": detail}]})),
        retry_after: None,
        ..ApiError::too_many_requests(VIOLATION, 0)
    }
}

fn int(object: &Value, pointer: &str) -> i64 {
    object.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

/// Serves one eviction.
///
/// # Errors
/// 404 when the pod is absent, 429 when its budget allows no disruption, 500 when more than
/// one budget covers it.
pub async fn evict(
    server: &Arc<ApiServer>,
    rt: &ResourceType,
    namespace: Option<&str>,
    name: &str,
    mut req: Req,
) -> ApiResult<Response> {
    let eviction = body::read_object(&mut req).await?;
    if let Some(named) = eviction.pointer("/metadata/name").and_then(Value::as_str)
        && named != name
    {
        return Err(ApiError::bad_request(
            "name in URL does not match name in Eviction object",
        ));
    }
    let options = write::DeleteOptions::from_value(eviction.get("deleteOptions"), req.dry_run())?;
    let budgets = server
        .registry
        .lookup("policy", "v1", "poddisruptionbudgets")
        .expect("PodDisruptionBudgets are built in");
    for _ in 0..16 {
        let pod = server.objects.get(rt, namespace, name).await?;
        let phase = pod
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or("Pending");
        if meta::is_deleting(&pod) || matches!(phase, "Pending" | "Succeeded" | "Failed") {
            return delete(server, rt, namespace, name, &options).await;
        }
        let labels = meta::labels(&pod);
        let page = server
            .objects
            .list(
                &budgets,
                &budgets.list_prefix(namespace),
                None,
                None,
                0,
                |pdb| {
                    pdb.pointer("/spec/selector").is_some_and(|selector| {
                        crate::selectors::label_selector_object_matches(selector, &labels)
                    })
                },
            )
            .await?;
        let pdb = match page.items.as_slice() {
            [] => return delete(server, rt, namespace, name, &options).await,
            [one] => one.clone(),
            _ => {
                return Err(ApiError::internal(
                    "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                ));
            }
        };
        let pdb_name = meta::name(&pdb).to_owned();
        if int(&pdb, "/status/observedGeneration") < int(&pdb, "/metadata/generation") {
            return Err(refused(format!(
                "The disruption budget {pdb_name} is still being processed by the server."
            )));
        }
        let (current, desired) = (
            int(&pdb, "/status/currentHealthy"),
            int(&pdb, "/status/desiredHealthy"),
        );
        let ready = pod
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|conditions| {
                conditions
                    .iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
        if !ready {
            let always = pdb
                .pointer("/spec/unhealthyPodEvictionPolicy")
                .and_then(Value::as_str)
                == Some("AlwaysAllow");
            if always || current >= desired {
                return delete(server, rt, namespace, name, &options).await;
            }
        }
        if int(&pdb, "/status/disruptionsAllowed") <= 0 {
            return Err(refused(format!(
                "The disruption budget {pdb_name} needs {desired} healthy pods and has {current} currently"
            )));
        }
        if options.dry_run {
            return Ok(write::created_status());
        }
        let mut taken = pdb.clone();
        taken["status"]["disruptionsAllowed"] = json!(int(&pdb, "/status/disruptionsAllowed") - 1);
        if !taken["status"]["disruptedPods"].is_object() {
            taken["status"]["disruptedPods"] = json!({});
        }
        taken["status"]["disruptedPods"][name] = json!(meta::now());
        let revision = meta::meta_str(&pdb, "resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        match server.objects.update(&budgets, taken, revision).await {
            Ok(_) => return delete(server, rt, namespace, name, &options).await,
            // another eviction took from the budget first: look again
            Err(error) if error.code == 409 => {}
            Err(error) => return Err(error),
        }
    }
    Err(ApiError::too_many_requests(
        "too many concurrent evictions for one disruption budget; try again",
        1,
    ))
}

async fn delete(
    server: &Arc<ApiServer>,
    rt: &ResourceType,
    namespace: Option<&str>,
    name: &str,
    options: &write::DeleteOptions,
) -> ApiResult<Response> {
    if !options.dry_run {
        write::delete_object(server, rt, namespace, name, options).await?;
    }
    Ok(write::created_status())
}
