//! PersistentVolume binding and the host-path provisioner.
//!
//! A pending PersistentVolumeClaim is bound to the smallest Available PersistentVolume that
//! satisfies it (class, access modes, size, volume mode, label selector; a volume pre-bound to
//! the claim first). When none does and its StorageClass names Kelson's provisioner
//! ([`PROVISIONER`]), a hostPath volume is created for it — at once for `Immediate` classes, and
//! for `WaitForFirstConsumer` once the scheduler has picked a node for the first pod using it
//! (the volume is then pinned to that node). Claims that cannot be satisfied stay Pending with
//! Kubernetes' events and reasons. A volume whose claim is gone is `Released`; with reclaim
//! policy `Delete` it is deleted (and, for provisioned volumes on this machine, its directory).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectReference, PersistentVolume,
    PersistentVolumeClaim, PersistentVolumeSpec, VolumeNodeAffinity,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kelson_common::quantity;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::context::{Context, Error, Result};

/// The provisioner name of Kelson's host-path volumes.
pub const PROVISIONER: &str = "kelson.dev/host-path";
/// The StorageClass every cluster starts with (the default class).
pub const DEFAULT_CLASS: &str = "local-path";
/// Marks the default StorageClass.
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
/// Set on a claim by the scheduler: the node of its first consumer.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
const BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
const STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";

/// Settings of the volume controllers.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Where provisioned volumes live on the nodes (`<dir>/pvc-<uid>_<namespace>_<claim>`).
    /// Without it nothing is provisioned and no default class is created.
    pub directory: Option<PathBuf>,
}

/// What the volume controllers read.
pub struct Shared {
    /// Context.
    pub context: Arc<Context>,
    /// Settings.
    pub config: Config,
    /// Claims.
    pub claims: Store<PersistentVolumeClaim>,
    /// Volumes.
    pub volumes: Store<PersistentVolume>,
    /// Storage classes.
    pub classes: Store<StorageClass>,
}

fn requested_bytes(claim: &PersistentVolumeClaim) -> i64 {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map_or(0, quantity::units)
}

fn capacity_bytes(volume: &PersistentVolume) -> i64 {
    volume
        .spec
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .map_or(0, quantity::units)
}

fn class_of_claim(claim: &PersistentVolumeClaim) -> &str {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or_default()
}

fn class_of_volume(volume: &PersistentVolume) -> &str {
    volume
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or_default()
}

fn mode(value: Option<&String>) -> &str {
    value.map_or("Filesystem", String::as_str)
}

fn phase_of_volume(volume: &PersistentVolume) -> &str {
    volume
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// Whether `volume` is promised to `claim` (its claimRef names it).
fn pre_bound_to(volume: &PersistentVolume, claim: &PersistentVolumeClaim) -> bool {
    volume
        .spec
        .as_ref()
        .and_then(|s| s.claim_ref.as_ref())
        .is_some_and(|r| {
            r.namespace == claim.namespace()
                && r.name.as_deref() == Some(claim.name_any().as_str())
                && r.uid
                    .as_deref()
                    .is_none_or(|uid| Some(uid) == claim.metadata.uid.as_deref())
        })
}

/// Whether `volume` can hold `claim` (ignoring who else wants it).
fn satisfies(volume: &PersistentVolume, claim: &PersistentVolumeClaim) -> bool {
    let (Some(spec), Some(wanted)) = (volume.spec.as_ref(), claim.spec.as_ref()) else {
        return false;
    };
    let modes = spec.access_modes.clone().unwrap_or_default();
    class_of_volume(volume) == class_of_claim(claim)
        && mode(spec.volume_mode.as_ref()) == mode(wanted.volume_mode.as_ref())
        && wanted
            .access_modes
            .iter()
            .flatten()
            .all(|m| modes.contains(m))
        && capacity_bytes(volume) >= requested_bytes(claim)
        && wanted
            .selector
            .as_ref()
            .is_none_or(|s| kelson_common::selector::matches(s, volume.labels()))
        && volume.metadata.deletion_timestamp.is_none()
}

/// The best volume for a pending claim: one promised to it, else the smallest free one that
/// satisfies it (Kubernetes' `FindMatchingVolume`). A claim naming a volume gets only that one.
#[must_use]
pub fn find_volume(
    claim: &PersistentVolumeClaim,
    volumes: &[Arc<PersistentVolume>],
) -> Option<Arc<PersistentVolume>> {
    let named = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .filter(|n| !n.is_empty());
    let free = |v: &PersistentVolume| {
        let claimed = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).is_some();
        (!claimed || pre_bound_to(v, claim)) && !matches!(phase_of_volume(v), "Released" | "Failed")
    };
    let mut fitting: Vec<&Arc<PersistentVolume>> = volumes
        .iter()
        .filter(|v| named.is_none_or(|n| v.name_any() == n))
        .filter(|v| free(v) && satisfies(v, claim))
        .collect();
    fitting.sort_by_key(|v| (!pre_bound_to(v, claim), capacity_bytes(v), v.name_any()));
    fitting.first().map(|v| (*v).clone())
}

/// What a claim needs.
#[derive(Debug, PartialEq)]
pub enum ClaimPlan {
    /// Bound to this volume: keep its status in step.
    Bound(Arc<PersistentVolume>),
    /// Bind to this volume.
    Bind(Arc<PersistentVolume>),
    /// Create this volume for it.
    Provision(Box<PersistentVolume>),
    /// Nothing can be done yet (event reason, message).
    Wait(&'static str, String),
    /// Its volume is gone.
    Lost(String),
}

/// The pure decision for one claim.
#[must_use]
pub fn plan_claim(
    claim: &PersistentVolumeClaim,
    volumes: &[Arc<PersistentVolume>],
    classes: &[Arc<StorageClass>],
    directory: Option<&Path>,
) -> ClaimPlan {
    let named = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|n| !n.is_empty());
    if let Some(name) = &named {
        let Some(volume) = volumes.iter().find(|v| v.name_any() == *name) else {
            let bound = claim
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_some_and(|p| p == "Bound" || p == "Lost");
            return if bound {
                ClaimPlan::Lost(
                    "Bound claim has lost its PersistentVolume. Data on the volume is lost!".into(),
                )
            } else {
                ClaimPlan::Wait(
                    "FailedBinding",
                    format!("volume \"{name}\" requested by the claim does not exist"),
                )
            };
        };
        let ours = volume
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .and_then(|r| r.uid.as_deref())
            == claim.metadata.uid.as_deref();
        if ours {
            return ClaimPlan::Bound(volume.clone());
        }
    }
    if let Some(volume) = find_volume(claim, volumes) {
        return ClaimPlan::Bind(volume);
    }
    if let Some(name) = &named {
        return ClaimPlan::Wait(
            "FailedBinding",
            format!("volume \"{name}\" already bound to a different claim or does not fit it"),
        );
    }
    let class_name = class_of_claim(claim);
    if class_name.is_empty() {
        return ClaimPlan::Wait(
            "FailedBinding",
            "no persistent volumes available for this claim and no storage class is set".into(),
        );
    }
    let Some(class) = classes.iter().find(|c| c.name_any() == class_name) else {
        return ClaimPlan::Wait(
            "ProvisioningFailed",
            format!("storageclass.storage.k8s.io \"{class_name}\" not found"),
        );
    };
    if class.provisioner != PROVISIONER {
        return ClaimPlan::Wait(
            "ExternalProvisioning",
            format!(
                "Waiting for a volume to be created either by the external provisioner '{}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered.",
                class.provisioner
            ),
        );
    }
    let Some(directory) = directory else {
        return ClaimPlan::Wait(
            "ProvisioningFailed",
            format!("the provisioner {PROVISIONER} is not enabled on this cluster"),
        );
    };
    let node = claim.annotations().get(SELECTED_NODE).cloned();
    if class.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer") && node.is_none() {
        return ClaimPlan::Wait(
            "WaitForFirstConsumer",
            "waiting for first consumer to be created before binding".into(),
        );
    }
    ClaimPlan::Provision(Box::new(provisioned_volume(
        claim,
        class,
        directory,
        node.as_deref(),
    )))
}

/// The hostPath volume provisioned for `claim`, promised to it and (with a node) pinned there.
#[must_use]
pub fn provisioned_volume(
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    directory: &Path,
    node: Option<&str>,
) -> PersistentVolume {
    let uid = claim.metadata.uid.clone().unwrap_or_default();
    let namespace = claim.namespace().unwrap_or_default();
    let name = format!("pvc-{uid}");
    let spec = claim.spec.clone().unwrap_or_default();
    let path = directory.join(format!("{name}_{namespace}_{}", claim.name_any()));
    let size = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage").cloned())
        .unwrap_or_else(|| Quantity("0".into()));
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(name),
            annotations: Some(BTreeMap::from([(
                PROVISIONED_BY.to_owned(),
                PROVISIONER.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity: Some(BTreeMap::from([("storage".to_owned(), size)])),
            access_modes: spec.access_modes.clone(),
            storage_class_name: Some(class.name_any()),
            persistent_volume_reclaim_policy: Some(
                class
                    .reclaim_policy
                    .clone()
                    .unwrap_or_else(|| "Delete".into()),
            ),
            volume_mode: spec.volume_mode,
            mount_options: class.mount_options.clone(),
            host_path: Some(k8s_openapi::api::core::v1::HostPathVolumeSource {
                path: path.display().to_string(),
                type_: Some("DirectoryOrCreate".into()),
            }),
            claim_ref: Some(claim_reference(claim)),
            node_affinity: node.map(|node| VolumeNodeAffinity {
                required: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: "kubernetes.io/hostname".into(),
                            operator: "In".into(),
                            values: Some(vec![node.to_owned()]),
                        }]),
                        match_fields: None,
                    }],
                }),
            }),
            ..PersistentVolumeSpec::default()
        }),
        status: None,
    }
}

fn claim_reference(claim: &PersistentVolumeClaim) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        namespace: claim.namespace(),
        name: Some(claim.name_any()),
        uid: claim.metadata.uid.clone(),
        resource_version: claim.metadata.resource_version.clone(),
        field_path: None,
    }
}

/// What a volume needs.
#[derive(Debug, PartialEq, Eq)]
pub enum VolumePlan {
    /// Set this phase.
    Phase(&'static str),
    /// Its claim is gone and the policy says delete it.
    Delete,
}

/// The pure decision for one volume, given its claim as the cache has it (if any).
#[must_use]
pub fn plan_volume(volume: &PersistentVolume, claim: Option<&PersistentVolumeClaim>) -> VolumePlan {
    let Some(reference) = volume.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return VolumePlan::Phase("Available");
    };
    let Some(uid) = reference.uid.as_deref().filter(|u| !u.is_empty()) else {
        // promised by an administrator, not bound yet
        return VolumePlan::Phase("Available");
    };
    if claim.is_some_and(|c| c.metadata.uid.as_deref() == Some(uid)) {
        return VolumePlan::Phase("Bound");
    }
    let policy = volume
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        .unwrap_or("Retain");
    if policy == "Delete" {
        VolumePlan::Delete
    } else {
        VolumePlan::Phase("Released")
    }
}

/// The StorageClass every cluster starts with: host-path volumes on the node of their first
/// consumer, deleted with their claim.
#[must_use]
pub fn default_class() -> StorageClass {
    serde_json::from_value(json!({
        "metadata": {"name": DEFAULT_CLASS, "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer"
    }))
    .expect("a valid StorageClass")
}

/// Creates the default StorageClass unless it exists (an administrator's edits are kept).
pub async fn ensure_default_class(client: &kube::Client) {
    let api: Api<StorageClass> = Api::all(client.clone());
    match api.create(&PostParams::default(), &default_class()).await {
        Ok(_) => info!(class = DEFAULT_CLASS, "created the default storage class"),
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(error) => warn!(%error, "could not create the default storage class"),
    }
}

/// The claims a volume change concerns: the one it names, and every pending claim when it may
/// now be free.
#[must_use]
pub fn claims_of_volume(
    volume: &PersistentVolume,
    claims: &Store<PersistentVolumeClaim>,
) -> Vec<ObjectRef<PersistentVolumeClaim>> {
    if let Some(reference) = volume.spec.as_ref().and_then(|s| s.claim_ref.as_ref())
        && let (Some(namespace), Some(name)) = (&reference.namespace, &reference.name)
    {
        return vec![ObjectRef::new(name).within(namespace)];
    }
    claims
        .state()
        .iter()
        .filter(|c| {
            c.spec
                .as_ref()
                .and_then(|s| s.volume_name.as_ref())
                .is_none()
        })
        .map(|c| ObjectRef::from_obj(&**c))
        .collect()
}

/// Reconciles one claim.
///
/// # Errors
/// When an API call fails (retried by the error policy).
pub async fn reconcile_claim(
    claim: Arc<PersistentVolumeClaim>,
    ctx: Arc<Shared>,
) -> Result<Action> {
    if claim.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let _ = ctx.volumes.wait_until_ready().await;
    let namespace = claim.namespace().unwrap_or_default();
    let name = claim.name_any();
    let claims: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.context.client.clone(), &namespace);
    let volumes: Api<PersistentVolume> = Api::all(ctx.context.client.clone());
    let reference = claim.object_ref(&());
    let plan = plan_claim(
        &claim,
        &ctx.volumes.state(),
        &ctx.classes.state(),
        ctx.config.directory.as_deref(),
    );
    let status = |phase: &str, volume: Option<&PersistentVolume>| {
        let spec = volume.and_then(|v| v.spec.clone()).unwrap_or_default();
        json!({"status": {
            "phase": phase,
            "accessModes": volume.map(|_| spec.access_modes.clone()),
            "capacity": volume.map(|_| spec.capacity.clone()),
        }})
    };
    let set_status = |patch: serde_json::Value| {
        let claims = claims.clone();
        let name = name.clone();
        let action = format!("update status of claim {namespace}/{name}");
        async move {
            claims
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(|_| ())
                .map_err(Error::api(action))
        }
    };
    match plan {
        ClaimPlan::Bound(volume) => {
            let phase = claim.status.as_ref().and_then(|s| s.phase.as_deref());
            if phase != Some("Bound") {
                set_status(status("Bound", Some(&volume))).await?;
            }
            Ok(Action::requeue(Duration::from_secs(300)))
        }
        ClaimPlan::Bind(volume) => {
            let volume_name = volume.name_any();
            // the volume first, conditional on the version seen, so two claims never share it
            let patch = json!({
                "metadata": {
                    "resourceVersion": volume.metadata.resource_version,
                    "annotations": {BOUND_BY_CONTROLLER: "yes"},
                },
                "spec": {"claimRef": claim_reference(&claim)},
            });
            match volumes
                .patch(&volume_name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    return Ok(Action::requeue(Duration::from_millis(200)));
                }
                Err(error) => {
                    return Err(Error::Api {
                        action: format!("bind volume {volume_name}"),
                        source: error,
                    });
                }
            }
            volumes
                .patch_status(
                    &volume_name,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"status": {"phase": "Bound"}})),
                )
                .await
                .map_err(Error::api(format!("update status of volume {volume_name}")))?;
            let patch = json!({
                "metadata": {"annotations": {BIND_COMPLETED: "yes", BOUND_BY_CONTROLLER: "yes"}},
                "spec": {"volumeName": volume_name},
            });
            claims
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(Error::api(format!("bind claim {namespace}/{name}")))?;
            set_status(status("Bound", Some(&volume))).await?;
            info!(claim = %format!("{namespace}/{name}"), volume = %volume_name, "bound");
            Ok(Action::requeue(Duration::from_secs(300)))
        }
        ClaimPlan::Provision(volume) => {
            let patch = json!({"metadata": {"annotations": {STORAGE_PROVISIONER: PROVISIONER}}});
            if !claim.annotations().contains_key(STORAGE_PROVISIONER) {
                claims
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(Error::api(format!("annotate claim {namespace}/{name}")))?;
            }
            let volume_name = volume.name_any();
            match volumes.create(&PostParams::default(), &volume).await {
                Ok(_) => {
                    ctx.context
                        .event(
                            &reference,
                            false,
                            "ProvisioningSucceeded",
                            format!("Successfully provisioned volume {volume_name}"),
                        )
                        .await;
                }
                Err(kube::Error::Api(status)) if status.code == 409 => {}
                Err(error) => {
                    ctx.context
                        .event(
                            &reference,
                            true,
                            "ProvisioningFailed",
                            format!("failed to provision volume: {error}"),
                        )
                        .await;
                    return Err(Error::Api {
                        action: format!("provision volume {volume_name}"),
                        source: error,
                    });
                }
            }
            // bound on the next pass, when the cache has the volume
            Ok(Action::requeue(Duration::from_millis(500)))
        }
        ClaimPlan::Wait(reason, message) => {
            if claim.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Pending") {
                set_status(json!({"status": {"phase": "Pending"}})).await?;
            }
            let warning = reason != "WaitForFirstConsumer" && reason != "ExternalProvisioning";
            ctx.context
                .event(&reference, warning, reason, message)
                .await;
            Ok(Action::requeue(Duration::from_secs(15)))
        }
        ClaimPlan::Lost(message) => {
            if claim.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Lost") {
                set_status(json!({"status": {"phase": "Lost"}})).await?;
                ctx.context
                    .event(&reference, true, "ClaimLost", message)
                    .await;
            }
            Ok(Action::requeue(Duration::from_secs(300)))
        }
    }
}

/// Reconciles one volume.
///
/// # Errors
/// When an API call fails (retried by the error policy).
pub async fn reconcile_volume(volume: Arc<PersistentVolume>, ctx: Arc<Shared>) -> Result<Action> {
    if volume.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let _ = ctx.claims.wait_until_ready().await;
    let name = volume.name_any();
    let volumes: Api<PersistentVolume> = Api::all(ctx.context.client.clone());
    let reference = volume.spec.as_ref().and_then(|s| s.claim_ref.clone());
    let cached = reference.as_ref().and_then(|r| {
        ctx.claims
            .get(&ObjectRef::new(r.name.as_deref()?).within(r.namespace.as_deref()?))
    });
    let mut plan = plan_volume(&volume, cached.as_deref());
    if matches!(plan, VolumePlan::Delete | VolumePlan::Phase("Released"))
        && let Some(r) = &reference
    {
        // the cache may lag: ask the server before letting data go
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(
            ctx.context.client.clone(),
            r.namespace.as_deref().unwrap_or_default(),
        );
        let live = claims
            .get_opt(r.name.as_deref().unwrap_or_default())
            .await
            .map_err(Error::api(format!("read the claim of volume {name}")))?;
        plan = plan_volume(&volume, live.as_ref());
    }
    match plan {
        VolumePlan::Phase(phase) => {
            if phase_of_volume(&volume) != phase {
                volumes
                    .patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(&json!({"status": {"phase": phase}})),
                    )
                    .await
                    .map_err(Error::api(format!("update status of volume {name}")))?;
            }
        }
        VolumePlan::Delete => {
            if let Some(directory) = provisioned_directory(&volume, ctx.config.directory.as_deref())
            {
                match std::fs::remove_dir_all(&directory) {
                    Ok(()) => {
                        info!(directory = %directory.display(), "removed a released volume's data")
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => {
                        warn!(directory = %directory.display(), %error, "could not remove a released volume's data");
                        volumes
                            .patch_status(
                                &name,
                                &PatchParams::default(),
                                &Patch::Merge(&json!({"status": {"phase": "Failed", "message": format!("could not delete {}: {error}", directory.display())}})),
                            )
                            .await
                            .map_err(Error::api(format!("update status of volume {name}")))?;
                        return Ok(Action::requeue(Duration::from_secs(60)));
                    }
                }
            }
            match volumes.delete(&name, &DeleteParams::default()).await {
                Ok(_) => info!(volume = %name, "deleted a released volume"),
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => {
                    return Err(Error::Api {
                        action: format!("delete volume {name}"),
                        source: error,
                    });
                }
            }
        }
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// The directory of a volume this provisioner made, when it lives under `directory` here.
fn provisioned_directory(volume: &PersistentVolume, directory: Option<&Path>) -> Option<PathBuf> {
    let directory = directory?;
    if volume.annotations().get(PROVISIONED_BY).map(String::as_str) != Some(PROVISIONER) {
        return None;
    }
    let path = PathBuf::from(&volume.spec.as_ref()?.host_path.as_ref()?.path);
    (path.parent() == Some(directory)).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(
        name: &str,
        class: Option<&str>,
        size: &str,
        extra: serde_json::Value,
    ) -> PersistentVolumeClaim {
        let mut value = json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
                     "resources": {"requests": {"storage": size}}}
        });
        merge(&mut value, extra);
        serde_json::from_value(value).unwrap()
    }

    fn volume(
        name: &str,
        class: &str,
        size: &str,
        extra: serde_json::Value,
    ) -> Arc<PersistentVolume> {
        let mut value = json!({
            "metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteOnce", "ReadOnlyMany"], "storageClassName": class,
                     "capacity": {"storage": size}, "hostPath": {"path": format!("/data/{name}")}},
            "status": {"phase": "Available"}
        });
        merge(&mut value, extra);
        Arc::new(serde_json::from_value(value).unwrap())
    }

    fn merge(target: &mut serde_json::Value, patch: serde_json::Value) {
        match (target, patch) {
            (serde_json::Value::Object(t), serde_json::Value::Object(p)) => {
                for (k, v) in p {
                    merge(t.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (t, p) => *t = p,
        }
    }

    fn class(name: &str, mode: &str, provisioner: &str) -> Arc<StorageClass> {
        Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": name}, "provisioner": provisioner,
                "volumeBindingMode": mode}),
            )
            .unwrap(),
        )
    }

    #[test]
    fn claims_get_the_smallest_volume_that_fits() {
        let volumes = vec![
            volume("big", "", "10Gi", json!({})),
            volume("small", "", "1Gi", json!({})),
            volume("tiny", "", "100Mi", json!({})),
            volume(
                "taken",
                "",
                "1Gi",
                json!({"spec": {"claimRef": {"namespace": "default", "name": "other", "uid": "x"}}}),
            ),
            volume("fast", "fast", "1Gi", json!({})),
            volume(
                "rwx-only",
                "",
                "1Gi",
                json!({"spec": {"accessModes": ["ReadWriteMany"]}}),
            ),
        ];
        let found = find_volume(&claim("c", None, "500Mi", json!({})), &volumes).unwrap();
        assert_eq!(found.name_any(), "small");
        let found = find_volume(&claim("c", Some("fast"), "1Gi", json!({})), &volumes).unwrap();
        assert_eq!(found.name_any(), "fast");
        assert!(find_volume(&claim("c", None, "20Gi", json!({})), &volumes).is_none());
        let selective = claim(
            "c",
            None,
            "1Mi",
            json!({"spec": {"selector": {"matchLabels": {"tier": "gold"}}}}),
        );
        assert!(find_volume(&selective, &volumes).is_none());
        let promised = volume(
            "promised",
            "",
            "10Gi",
            json!({"spec": {"claimRef": {"namespace": "default", "name": "c"}}}),
        );
        let mut with_promise = volumes.clone();
        with_promise.push(promised);
        let found = find_volume(&claim("c", None, "1Mi", json!({})), &with_promise).unwrap();
        assert_eq!(
            found.name_any(),
            "promised",
            "a volume promised to the claim comes first"
        );
        let named = claim("c", None, "1Mi", json!({"spec": {"volumeName": "big"}}));
        assert_eq!(find_volume(&named, &volumes).unwrap().name_any(), "big");
        let released = vec![volume(
            "old",
            "",
            "1Gi",
            json!({"status": {"phase": "Released"}}),
        )];
        assert!(find_volume(&claim("c", None, "1Mi", json!({})), &released).is_none());
    }

    #[test]
    fn claims_without_volumes_provision_or_wait_with_reasons() {
        let dir = Path::new("/var/lib/kelson/volumes");
        let classes = vec![
            class("now", "Immediate", PROVISIONER),
            class("later", "WaitForFirstConsumer", PROVISIONER),
            class("ebs", "Immediate", "ebs.csi.aws.com"),
        ];
        let ClaimPlan::Provision(pv) = plan_claim(
            &claim("c", Some("now"), "2Gi", json!({})),
            &[],
            &classes,
            Some(dir),
        ) else {
            panic!("provisions at once");
        };
        assert_eq!(pv.name_any(), "pvc-uid-c");
        let spec = pv.spec.unwrap();
        assert_eq!(spec.capacity.unwrap()["storage"].0, "2Gi");
        assert_eq!(spec.claim_ref.unwrap().uid.as_deref(), Some("uid-c"));
        assert_eq!(
            spec.host_path.unwrap().path,
            "/var/lib/kelson/volumes/pvc-uid-c_default_c"
        );
        assert_eq!(
            spec.persistent_volume_reclaim_policy.as_deref(),
            Some("Delete")
        );
        assert!(spec.node_affinity.is_none());

        let waiting = plan_claim(
            &claim("c", Some("later"), "1Gi", json!({})),
            &[],
            &classes,
            Some(dir),
        );
        assert!(
            matches!(waiting, ClaimPlan::Wait("WaitForFirstConsumer", _)),
            "{waiting:?}"
        );
        let chosen = claim(
            "c",
            Some("later"),
            "1Gi",
            json!({"metadata": {"annotations": {SELECTED_NODE: "n1"}}}),
        );
        let ClaimPlan::Provision(pv) = plan_claim(&chosen, &[], &classes, Some(dir)) else {
            panic!("provisions on the chosen node");
        };
        let affinity = serde_json::to_value(pv.spec.unwrap().node_affinity).unwrap();
        assert_eq!(
            affinity.pointer("/required/nodeSelectorTerms/0/matchExpressions/0/values/0"),
            Some(&json!("n1"))
        );

        assert!(matches!(
            plan_claim(
                &claim("c", Some("ebs"), "1Gi", json!({})),
                &[],
                &classes,
                Some(dir)
            ),
            ClaimPlan::Wait("ExternalProvisioning", _)
        ));
        assert!(matches!(
            plan_claim(
                &claim("c", Some("nope"), "1Gi", json!({})),
                &[],
                &classes,
                Some(dir)
            ),
            ClaimPlan::Wait("ProvisioningFailed", _)
        ));
        assert!(matches!(
            plan_claim(
                &claim("c", None, "1Gi", json!({})),
                &[],
                &classes,
                Some(dir)
            ),
            ClaimPlan::Wait("FailedBinding", _)
        ));
        assert!(matches!(
            plan_claim(
                &claim("c", Some("now"), "1Gi", json!({})),
                &[],
                &classes,
                None
            ),
            ClaimPlan::Wait("ProvisioningFailed", _)
        ));
    }

    #[test]
    fn bound_and_lost_claims() {
        let bound = volume(
            "v",
            "",
            "1Gi",
            json!({"spec": {"claimRef": {"namespace": "default", "name": "c", "uid": "uid-c"}}}),
        );
        let c = claim(
            "c",
            None,
            "1Gi",
            json!({"spec": {"volumeName": "v"}, "status": {"phase": "Bound"}}),
        );
        assert!(matches!(
            plan_claim(&c, std::slice::from_ref(&bound), &[], None),
            ClaimPlan::Bound(_)
        ));
        assert!(matches!(plan_claim(&c, &[], &[], None), ClaimPlan::Lost(_)));
    }

    #[test]
    fn released_volumes_are_kept_or_deleted_by_policy() {
        let c = claim("c", None, "1Gi", json!({}));
        let free = volume("v", "", "1Gi", json!({}));
        assert_eq!(plan_volume(&free, None), VolumePlan::Phase("Available"));
        let held = volume(
            "v",
            "",
            "1Gi",
            json!({"spec": {"claimRef": {"namespace": "default", "name": "c", "uid": "uid-c"}, "persistentVolumeReclaimPolicy": "Retain"}}),
        );
        assert_eq!(plan_volume(&held, Some(&c)), VolumePlan::Phase("Bound"));
        assert_eq!(plan_volume(&held, None), VolumePlan::Phase("Released"));
        let recreated = claim("c", None, "1Gi", json!({"metadata": {"uid": "another"}}));
        assert_eq!(
            plan_volume(&held, Some(&recreated)),
            VolumePlan::Phase("Released"),
            "a new claim of the same name is another claim"
        );
        let deleting = volume(
            "v",
            "",
            "1Gi",
            json!({"spec": {"claimRef": {"namespace": "default", "name": "c", "uid": "uid-c"}, "persistentVolumeReclaimPolicy": "Delete"}}),
        );
        assert_eq!(plan_volume(&deleting, None), VolumePlan::Delete);
    }

    #[test]
    fn only_our_own_directories_are_removed() {
        let dir = Path::new("/var/lib/kelson/volumes");
        let c = claim("c", Some("now"), "1Gi", json!({}));
        let ours = provisioned_volume(&c, &class("now", "Immediate", PROVISIONER), dir, None);
        assert_eq!(
            provisioned_directory(&ours, Some(dir)),
            Some(dir.join("pvc-uid-c_default_c"))
        );
        assert_eq!(provisioned_directory(&ours, None), None);
        let admin = volume("v", "", "1Gi", json!({}));
        assert_eq!(provisioned_directory(&admin, Some(dir)), None);
    }
}
