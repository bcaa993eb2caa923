//! The namespace controller: a namespace being deleted (phase Terminating) has everything in it
//! deleted, resource type by resource type as discovery lists them, and is finalized (its
//! `spec.finalizers` emptied through `/finalize`) once nothing is left.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::discovery::{Discovery, Scope, verbs};
use kube::runtime::controller::Action;
use tracing::{debug, info};

use crate::context::{Context, Error, Result};

/// Reconciles one namespace.
///
/// # Errors
/// When an API call fails (retried by the error policy).
pub async fn reconcile(namespace: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action> {
    if namespace.metadata.deletion_timestamp.is_none() {
        return Ok(Action::await_change());
    }
    let name = namespace.name_any();
    let finalizers = namespace
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.clone())
        .unwrap_or_default();
    if !finalizers.iter().any(|f| f == "kubernetes") {
        return Ok(Action::await_change());
    }
    let discovery = Discovery::new(ctx.client.clone())
        .run()
        .await
        .map_err(Error::api("discover resources"))?;
    let mut remaining = 0usize;
    for group in discovery.groups() {
        for (resource, capabilities) in group.recommended_resources() {
            let namespaced = capabilities.scope == Scope::Namespaced;
            if !namespaced
                || !capabilities.supports_operation(verbs::LIST)
                || !capabilities.supports_operation(verbs::DELETE)
            {
                continue;
            }
            if resource.plural == "events" && resource.group == "events.k8s.io" {
                // the same objects as core events
                continue;
            }
            let api: Api<DynamicObject> =
                Api::namespaced_with(ctx.client.clone(), &name, &resource);
            let list = api
                .list(&ListParams::default())
                .await
                .map_err(Error::api(format!("list {} in {name}", resource.plural)))?;
            for object in list
                .items
                .iter()
                .filter(|o| o.metadata.deletion_timestamp.is_none())
            {
                match api
                    .delete(&object.name_any(), &DeleteParams::background())
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(error) => {
                        return Err(Error::Api {
                            action: format!("delete {} {}", resource.plural, object.name_any()),
                            source: error,
                        });
                    }
                }
            }
            remaining += list.items.len();
        }
    }
    if remaining > 0 {
        debug!(namespace = %name, remaining, "namespace not empty yet");
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    let mut finalized = (*namespace).clone();
    finalized
        .spec
        .get_or_insert_with(Default::default)
        .finalizers = Some(
        finalizers
            .into_iter()
            .filter(|f| f != "kubernetes")
            .collect(),
    );
    let body = serde_json::to_vec(&finalized).map_err(|e| Error::Invalid(e.to_string()))?;
    let request = kube::core::Request::new("/api/v1/namespaces")
        .replace_subresource("finalize", &name, &PostParams::default(), body)
        .map_err(|e| Error::Invalid(e.to_string()))?;
    match ctx.client.request_text(request).await {
        Ok(_) => info!(namespace = %name, "namespace finalized"),
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
        Err(error) => {
            return Err(Error::Api {
                action: format!("finalize namespace {name}"),
                source: error,
            });
        }
    }
    Ok(Action::await_change())
}
