//! The ServiceAccount controller: every namespace gets a `default` ServiceAccount and the
//! `kube-root-ca.crt` ConfigMap holding the cluster's CA certificate, which pods mount to
//! trust the API server.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use kube::ResourceExt;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::controller::Action;

use crate::context::{Context, Error, Result};

/// What the ServiceAccount controller needs.
pub struct Shared {
    /// Context.
    pub context: Arc<Context>,
    /// The cluster CA certificate (PEM), published as `kube-root-ca.crt`.
    pub root_ca: Option<String>,
}

async fn ensure<K>(api: &Api<K>, object: &K) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status))
            if status.code == 409 || status.code == 403 || status.code == 404 =>
        {
            Ok(())
        }
        Err(error) => Err(Error::Api {
            action: format!("create {}", object.name_any()),
            source: error,
        }),
    }
}

/// Reconciles one namespace.
///
/// # Errors
/// When an API call fails (retried by the error policy).
pub async fn reconcile(namespace: Arc<Namespace>, ctx: Arc<Shared>) -> Result<Action> {
    if namespace.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let name = namespace.name_any();
    let accounts: Api<ServiceAccount> = Api::namespaced(ctx.context.client.clone(), &name);
    let account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("default".into()),
            namespace: Some(name.clone()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    ensure(&accounts, &account).await?;
    if let Some(ca) = &ctx.root_ca {
        let maps: Api<ConfigMap> = Api::namespaced(ctx.context.client.clone(), &name);
        let map = ConfigMap {
            metadata: ObjectMeta {
                name: Some("kube-root-ca.crt".into()),
                namespace: Some(name.clone()),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([("ca.crt".to_owned(), ca.clone())])),
            ..ConfigMap::default()
        };
        ensure(&maps, &map).await?;
    }
    // recreated if someone deletes them
    Ok(Action::requeue(Duration::from_secs(60)))
}
