//! Kelson's GitOps reconciler: `Application` objects (gitops.kelson.dev/v1alpha1) name a path of
//! a Git repository, and the cluster is kept equal to it — server-side applied under the
//! `kelson-gitops` field manager, pruned safely, health-checked, drift corrected — with every sync
//! recorded in a hash-chained audit log.
//!
//! Data flows [`source`] (git2 caches) → [`render`] (YAML, JSON, kustomize) → [`apply`]
//! (discovery, dry-run diff, staged apply) → [`inventory`] (prune decision) → [`health`]; the
//! [`controller`] ties them together per Application and [`audit`] keeps the record. Start
//! reading at [`controller`].

pub mod api;
pub mod apply;
pub mod audit;
pub mod auth;
pub mod controller;
pub mod example;
pub mod health;
pub mod inventory;
pub mod metrics;
pub mod render;
pub mod server;
pub mod source;
pub mod triggers;
pub mod verify;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};

pub use api::{Application, ApplicationSpec, ApplicationStatus};
pub use controller::{Config, run};

/// The Application CustomResourceDefinition as shipped in `manifests/`.
pub const APPLICATION_CRD: &str =
    include_str!("../../manifests/gitops.kelson.dev_applications.yaml");

/// Installs (or updates) the CustomResourceDefinitions the reconciler serves and waits until
/// the API server has established them.
pub async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let crd: CustomResourceDefinition = serde_yaml::from_str(APPLICATION_CRD)?;
    let name = crd.metadata.name.clone().unwrap_or_default();
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.patch(
        &name,
        &PatchParams::apply(api::FIELD_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await?;
    if !wait_established(client, &[name], std::time::Duration::from_secs(10)).await {
        anyhow::bail!("the Application definition was not established within 10 s");
    }
    Ok(())
}

/// Waits until every named CustomResourceDefinition is Established; false at the deadline.
pub async fn wait_established(
    client: &Client,
    names: &[String],
    timeout: std::time::Duration,
) -> bool {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let deadline = std::time::Instant::now() + timeout;
    for name in names {
        loop {
            let established = api.get_opt(name).await.ok().flatten().is_some_and(|crd| {
                crd.status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
            if established {
                break;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;

    /// `manifests/` carries exactly the definition the types generate (regenerate it with
    /// `KELSON_WRITE_MANIFESTS=1 cargo test -p kelson-reconciler`).
    #[test]
    fn the_shipped_definition_matches_the_types() {
        let generated = format!(
            "# Generated from reconciler/src/api.rs by its tests; do not edit.\n{}",
            serde_yaml::to_string(&super::Application::crd()).unwrap()
        );
        if std::env::var_os("KELSON_WRITE_MANIFESTS").is_some() {
            std::fs::write(
                concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../manifests/gitops.kelson.dev_applications.yaml"
                ),
                &generated,
            )
            .unwrap();
        }
        assert!(
            super::APPLICATION_CRD == generated,
            "manifests/gitops.kelson.dev_applications.yaml is stale: run with KELSON_WRITE_MANIFESTS=1 to regenerate"
        );
    }
}
