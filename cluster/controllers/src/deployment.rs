//! The Deployment controller: one ReplicaSet per pod template (named by the template's hash),
//! rolled by `RollingUpdate` (never above `replicas + maxSurge` pods, never below
//! `replicas - maxUnavailable` available) or `Recreate`, with revision annotations,
//! `revisionHistoryLimit`, pause, and status and conditions exactly as `kubectl rollout status`
//! reads them (including `ProgressDeadlineExceeded`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::info;

use crate::context::{Context, Error, Result};

/// The label that ties a ReplicaSet and its pods to one template.
pub const HASH_LABEL: &str = "pod-template-hash";
/// Revision of a ReplicaSet (and of the Deployment's current one).
pub const REVISION: &str = "deployment.kubernetes.io/revision";
const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";

/// What the Deployment controller reads.
pub struct Shared {
    /// Context.
    pub context: Arc<Context>,
    /// ReplicaSet cache.
    pub replicasets: Store<ReplicaSet>,
    /// Pod cache.
    pub pods: Store<Pod>,
}

/// A short, stable name fragment for a template (Kubernetes hashes with FNV-1a and encodes
/// with a vowel-free alphabet; so do we).
#[must_use]
pub fn template_hash(template: &PodTemplateSpec, collision_count: i32) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut template = template.clone();
    if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(HASH_LABEL);
    }
    let bytes = serde_json::to_vec(&template).expect("templates serialize");
    let mut hash: u32 = 0x811c_9dc5;
    for byte in bytes.iter().chain(collision_count.to_string().as_bytes()) {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash.to_string()
        .bytes()
        .map(|b| ALPHABET[usize::from(b) % ALPHABET.len()] as char)
        .collect()
}

/// Whether two templates are the same apart from the hash label.
#[must_use]
pub fn same_template(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    let strip = |t: &PodTemplateSpec| {
        let mut t = t.clone();
        if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
            labels.remove(HASH_LABEL);
            if labels.is_empty() {
                t.metadata.as_mut().expect("has metadata").labels = None;
            }
        }
        serde_json::to_value(t).expect("serializes")
    };
    strip(a) == strip(b)
}

/// An `IntOrString` of a total: percentages round up for surge, down for unavailability.
fn resolve(value: Option<&IntOrString>, total: i32, round_up: bool, default_percent: i32) -> i32 {
    match value {
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => {
            let percent: i32 = s.trim_end_matches('%').parse().unwrap_or(default_percent);
            let scaled = f64::from(total) * f64::from(percent) / 100.0;
            if round_up {
                scaled.ceil() as i32
            } else {
                scaled.floor() as i32
            }
        }
        None => {
            let scaled = f64::from(total) * f64::from(default_percent) / 100.0;
            if round_up {
                scaled.ceil() as i32
            } else {
                scaled.floor() as i32
            }
        }
    }
}

/// `maxSurge` and `maxUnavailable` as pod counts (never both zero).
#[must_use]
pub fn surge_and_unavailable(deployment: &Deployment) -> (i32, i32) {
    let spec = deployment.spec.as_ref();
    let replicas = spec.and_then(|s| s.replicas).unwrap_or(1);
    let rolling = spec
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let surge = resolve(
        rolling.and_then(|r| r.max_surge.as_ref()),
        replicas,
        true,
        25,
    );
    let mut unavailable = resolve(
        rolling.and_then(|r| r.max_unavailable.as_ref()),
        replicas,
        false,
        25,
    );
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable.min(replicas))
}

/// The scaling view of one ReplicaSet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scale {
    /// Name.
    pub name: String,
    /// `spec.replicas`.
    pub replicas: i32,
    /// Active pods it has now (may lag `replicas` either way).
    pub pods: i32,
    /// Available pods it has now.
    pub available: i32,
}

impl Scale {
    /// Pods it has or is about to have.
    fn footprint(&self, replicas: i32) -> i32 {
        replicas.max(self.pods)
    }
}

/// One rolling-update step (Kubernetes' `rolloutRolling`): the new replica counts, by name.
/// A step either scales the new ReplicaSet up or old ones down, never both, and counts the pods
/// that exist as well as those asked for, so that the pod count stays within
/// `replicas + surge` and availability above `replicas - unavailable` even while the
/// ReplicaSet controller is still catching up.
#[must_use]
pub fn rolling_step(
    replicas: i32,
    surge: i32,
    unavailable: i32,
    new: &Scale,
    old: &[Scale],
) -> BTreeMap<String, i32> {
    let mut target: BTreeMap<String, i32> = BTreeMap::new();
    let footprint = |target: &BTreeMap<String, i32>| -> i32 {
        std::iter::once(new)
            .chain(old)
            .map(|s| s.footprint(target.get(&s.name).copied().unwrap_or(s.replicas)))
            .sum()
    };
    if new.replicas > replicas {
        target.insert(new.name.clone(), replicas);
        return target;
    }
    if new.replicas < replicas {
        let room = replicas + surge - footprint(&target);
        if room > 0 {
            target.insert(
                new.name.clone(),
                new.replicas + room.min(replicas - new.replicas),
            );
            return target;
        }
    }
    // scale down old ReplicaSets, keeping the minimum available
    let all_pods = footprint(&target);
    let min_available = replicas - unavailable;
    let new_unavailable = (new.footprint(new.replicas) - new.available).max(0);
    let mut budget = all_pods - min_available - new_unavailable;
    if budget <= 0 {
        return target;
    }
    // unhealthy old replicas go first: they count for nothing
    for rs in old {
        if budget <= 0 {
            break;
        }
        let unhealthy = (rs.replicas - rs.available).max(0);
        let cut = unhealthy.min(budget);
        if cut > 0 {
            target.insert(rs.name.clone(), rs.replicas - cut);
            budget -= cut;
        }
    }
    let available: i32 = new.available
        + old
            .iter()
            .map(|s| {
                s.available
                    .min(target.get(&s.name).copied().unwrap_or(s.replicas))
            })
            .sum::<i32>();
    let mut removable = (available - min_available).max(0).min(budget);
    for rs in old {
        if removable <= 0 {
            break;
        }
        let current = target.get(&rs.name).copied().unwrap_or(rs.replicas);
        let cut = current.min(removable);
        if cut > 0 {
            target.insert(rs.name.clone(), current - cut);
            removable -= cut;
        }
    }
    target.retain(|name, replicas| {
        std::iter::once(new)
            .chain(old)
            .any(|s| s.name == *name && s.replicas != *replicas)
    });
    target
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn replicas_of(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

/// The scaling view of a ReplicaSet, with its pods counted from the pod cache.
fn scale_of(rs: &ReplicaSet, pods: &[Arc<Pod>], min_ready_seconds: i32, now: &Time) -> Scale {
    let uid = rs.metadata.uid.as_deref().unwrap_or_default();
    let mine: Vec<&Arc<Pod>> = pods
        .iter()
        .filter(|p| kelson_common::pod::controller_of(&p.metadata).is_some_and(|o| o.uid == uid))
        .filter(|p| kelson_common::pod::is_active(p))
        .collect();
    let available = mine
        .iter()
        .filter(|p| kelson_common::pod::is_available(p, min_ready_seconds, now))
        .count();
    Scale {
        name: rs.name_any(),
        replicas: replicas_of(rs),
        pods: i32::try_from(mine.len()).unwrap_or(i32::MAX),
        available: i32::try_from(available).unwrap_or(i32::MAX),
    }
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    previous: Option<&DeploymentCondition>,
    now: &Time,
    progressed: bool,
) -> DeploymentCondition {
    let status = if status { "True" } else { "False" };
    let unchanged =
        previous.is_some_and(|p| p.status == status && p.reason.as_deref() == Some(reason));
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: if previous.is_some_and(|p| p.status == status) {
            previous.and_then(|p| p.last_transition_time.clone())
        } else {
            Some(now.clone())
        },
        last_update_time: if unchanged && !progressed {
            previous.and_then(|p| p.last_update_time.clone())
        } else {
            Some(now.clone())
        },
    }
}

/// The status the ReplicaSets give, with Available and Progressing conditions.
#[must_use]
pub fn status(
    deployment: &Deployment,
    new: Option<&ReplicaSet>,
    all: &[&ReplicaSet],
    now: &Time,
) -> DeploymentStatus {
    let replicas = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let sum =
        |f: &dyn Fn(&ReplicaSet) -> Option<i32>| all.iter().filter_map(|rs| f(rs)).sum::<i32>();
    let total = sum(&|rs| rs.status.as_ref().map(|s| s.replicas));
    let ready = sum(&|rs| rs.status.as_ref().and_then(|s| s.ready_replicas));
    let available = sum(&|rs| rs.status.as_ref().and_then(|s| s.available_replicas));
    let updated = new
        .and_then(|rs| rs.status.as_ref().map(|s| s.replicas))
        .unwrap_or(0);
    let previous = deployment.status.clone().unwrap_or_default();
    let find = |type_: &str| {
        previous
            .conditions
            .as_ref()
            .and_then(|c| c.iter().find(|c| c.type_ == type_))
    };
    let (_, unavailable) = surge_and_unavailable(deployment);
    let available_condition = if available >= replicas - unavailable {
        condition(
            "Available",
            true,
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
            find("Available"),
            now,
            false,
        )
    } else {
        condition(
            "Available",
            false,
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
            find("Available"),
            now,
            false,
        )
    };
    let new_name = new.map(ResourceExt::name_any).unwrap_or_default();
    let complete = updated == replicas
        && total == replicas
        && available >= replicas
        && new
            .and_then(|rs| rs.status.as_ref())
            .and_then(|s| s.available_replicas)
            .unwrap_or(0)
            >= replicas;
    let progressed = updated > previous.updated_replicas.unwrap_or(0)
        || ready > previous.ready_replicas.unwrap_or(0)
        || available > previous.available_replicas.unwrap_or(0)
        || total < previous.replicas.unwrap_or(0);
    let previous_progressing = find("Progressing");
    let deadline = deployment
        .spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .unwrap_or(600);
    let paused = deployment
        .spec
        .as_ref()
        .and_then(|s| s.paused)
        .unwrap_or(false);
    let progressing = if paused {
        condition(
            "Progressing",
            true,
            "DeploymentPaused",
            "Deployment is paused".into(),
            previous_progressing,
            now,
            false,
        )
    } else if complete {
        condition(
            "Progressing",
            true,
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{new_name}\" has successfully progressed."),
            previous_progressing,
            now,
            false,
        )
    } else {
        let stalled = !progressed
            && previous_progressing.is_some_and(|p| {
                p.reason.as_deref() == Some("ProgressDeadlineExceeded")
                    || p.last_update_time
                        .as_ref()
                        .is_some_and(|t| now.0.as_second() - t.0.as_second() > i64::from(deadline))
            });
        if stalled {
            condition(
                "Progressing",
                false,
                "ProgressDeadlineExceeded",
                format!("ReplicaSet \"{new_name}\" has timed out progressing."),
                previous_progressing,
                now,
                false,
            )
        } else {
            condition(
                "Progressing",
                true,
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{new_name}\" is progressing."),
                previous_progressing,
                now,
                progressed,
            )
        }
    };
    DeploymentStatus {
        observed_generation: deployment.metadata.generation,
        replicas: Some(total),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        unavailable_replicas: Some((total - available).max(0).max(replicas - available).max(0)),
        conditions: Some(vec![available_condition, progressing]),
        collision_count: previous.collision_count,
        terminating_replicas: None,
    }
}

/// Reconciles one Deployment.
///
/// # Errors
/// When an API call fails (retried by the error policy).
pub async fn reconcile(deployment: Arc<Deployment>, ctx: Arc<Shared>) -> Result<Action> {
    if deployment.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = deployment.namespace().unwrap_or_default();
    let name = deployment.name_any();
    let uid = deployment.metadata.uid.clone().unwrap_or_default();
    let api: Api<ReplicaSet> = Api::namespaced(ctx.context.client.clone(), &namespace);
    let spec = deployment
        .spec
        .clone()
        .ok_or_else(|| Error::Invalid(format!("deployment {name} has no spec")))?;
    let replicas = spec.replicas.unwrap_or(1);
    let mut owned: Vec<ReplicaSet> = ctx
        .replicasets
        .state()
        .iter()
        .filter(|rs| rs.namespace().as_deref() == Some(namespace.as_str()))
        .filter(|rs| kelson_common::pod::controller_of(&rs.metadata).is_some_and(|o| o.uid == uid))
        .map(|rs| (**rs).clone())
        .collect();
    owned.sort_by_key(|rs| {
        (
            revision(rs),
            rs.metadata
                .creation_timestamp
                .as_ref()
                .map_or(0, |t| t.0.as_second()),
        )
    });
    let max_revision = owned.iter().map(revision).max().unwrap_or(0);
    let paused = spec.paused.unwrap_or(false);
    let mut new = owned
        .iter()
        .find(|rs| {
            rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .is_some_and(|t| same_template(t, &spec.template))
        })
        .cloned();
    let now = Time(jiff::Timestamp::now());

    if new.is_none() && !paused {
        new = Some(create_new(&ctx, &deployment, &api, max_revision + 1, &owned).await?);
    } else if let Some(current) = new.as_mut()
        && revision(current) < max_revision
        && !paused
    {
        // a rollback to an older template: it becomes the newest revision
        let patch =
            json!({"metadata": {"annotations": {REVISION: (max_revision + 1).to_string()}}});
        *current = api
            .patch(
                &current.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(Error::api("bump replicaset revision"))?;
    }
    let new_name = new.as_ref().map(ResourceExt::name_any);
    let old: Vec<&ReplicaSet> = owned
        .iter()
        .filter(|rs| Some(rs.name_any()) != new_name)
        .collect();

    if !paused && let Some(new_rs) = &new {
        let strategy = spec
            .strategy
            .as_ref()
            .and_then(|s| s.type_.as_deref())
            .unwrap_or("RollingUpdate");
        let changes = if strategy == "Recreate" {
            recreate_step(replicas, new_rs, &old, &ctx.pods)
        } else {
            let (surge, unavailable) = surge_and_unavailable(&deployment);
            let pods: Vec<Arc<Pod>> = ctx
                .pods
                .state()
                .into_iter()
                .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()))
                .collect();
            let min_ready = spec.min_ready_seconds.unwrap_or(0);
            let old_scales: Vec<Scale> = old
                .iter()
                .map(|rs| scale_of(rs, &pods, min_ready, &now))
                .collect();
            rolling_step(
                replicas,
                surge,
                unavailable,
                &scale_of(new_rs, &pods, min_ready, &now),
                &old_scales,
            )
        };
        let (surge, _) = surge_and_unavailable(&deployment);
        for (rs_name, count) in changes {
            let before = owned
                .iter()
                .find(|rs| rs.name_any() == rs_name)
                .map_or(0, replicas_of);
            let patch = json!({
                "metadata": {"annotations": {DESIRED_REPLICAS: replicas.to_string(), MAX_REPLICAS: (replicas + surge).to_string()}},
                "spec": {"replicas": count},
            });
            api.patch(&rs_name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(Error::api(format!("scale replicaset {rs_name}")))?;
            let verb = if count > before { "up" } else { "down" };
            let note = format!("Scaled {verb} replica set {rs_name} from {before} to {count}");
            info!(deployment = %name, "{note}");
            ctx.context
                .event(
                    &deployment.object_ref(&()),
                    false,
                    "ScalingReplicaSet",
                    note,
                )
                .await;
        }
    } else if paused && owned.len() == 1 {
        // a paused deployment still follows its replica count
        let only = &owned[0];
        if replicas_of(only) != replicas {
            let patch = json!({"spec": {"replicas": replicas}});
            api.patch(
                &only.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(Error::api("scale paused deployment"))?;
        }
    }

    cleanup_history(&api, &deployment, &old).await?;

    let all: Vec<&ReplicaSet> = owned.iter().collect();
    let new_status_rs = new
        .as_ref()
        .and_then(|n| owned.iter().find(|rs| rs.name_any() == n.name_any()))
        .or(new.as_ref());
    let status = status(&deployment, new_status_rs, &all, &now);
    let deployments: Api<Deployment> = Api::namespaced(ctx.context.client.clone(), &namespace);
    // the revision annotation travels with the status, which does not bump the generation
    let revision_annotation = new.as_ref().map(|rs| revision(rs).max(1).to_string());
    let annotation_stale = revision_annotation.is_some()
        && deployment.annotations().get(REVISION) != revision_annotation.as_ref();
    if annotation_stale || !same_status(deployment.status.as_ref(), &status) {
        let mut patch = json!({"status": status});
        if let Some(revision) = revision_annotation.filter(|_| annotation_stale) {
            patch["metadata"] = json!({"annotations": {REVISION: revision}});
        }
        deployments
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(Error::api(format!("update status of deployment {name}")))?;
    }
    let complete =
        status.conditions.iter().flatten().any(|c| {
            c.type_ == "Progressing" && c.reason.as_deref() == Some("NewReplicaSetAvailable")
        });
    if complete {
        Ok(Action::requeue(Duration::from_secs(300)))
    } else {
        // watch the deadline and minReadySeconds even when nothing changes
        Ok(Action::requeue(Duration::from_secs(2)))
    }
}

/// Equal apart from condition timestamps that only move with time.
fn same_status(previous: Option<&DeploymentStatus>, next: &DeploymentStatus) -> bool {
    let Some(previous) = previous else {
        return false;
    };
    let strip = |s: &DeploymentStatus| {
        let mut s = s.clone();
        for c in s.conditions.iter_mut().flatten() {
            c.last_update_time = None;
            c.last_transition_time = None;
        }
        s
    };
    strip(previous) == strip(next)
}

fn recreate_step(
    replicas: i32,
    new: &ReplicaSet,
    old: &[&ReplicaSet],
    pods: &Store<Pod>,
) -> BTreeMap<String, i32> {
    let mut changes = BTreeMap::new();
    for rs in old {
        if replicas_of(rs) > 0 {
            changes.insert(rs.name_any(), 0);
        }
    }
    if !changes.is_empty() {
        return changes;
    }
    // wait until every old pod is gone before starting new ones
    let old_uids: Vec<String> = old
        .iter()
        .filter_map(|rs| rs.metadata.uid.clone())
        .collect();
    let old_pods_running = pods.state().iter().any(|p| {
        kelson_common::pod::controller_of(&p.metadata).is_some_and(|o| old_uids.contains(&o.uid))
            && !kelson_common::pod::is_terminal(p)
    });
    if !old_pods_running && replicas_of(new) != replicas {
        changes.insert(new.name_any(), replicas);
    }
    changes
}

async fn create_new(
    ctx: &Shared,
    deployment: &Deployment,
    api: &Api<ReplicaSet>,
    revision: i64,
    owned: &[ReplicaSet],
) -> Result<ReplicaSet> {
    let spec = deployment.spec.clone().unwrap_or_default();
    let mut collision_count = deployment
        .status
        .as_ref()
        .and_then(|s| s.collision_count)
        .unwrap_or(0);
    loop {
        let hash = template_hash(&spec.template, collision_count);
        let name = format!("{}-{hash}", deployment.name_any());
        let mut template = spec.template.clone();
        let metadata = template.metadata.get_or_insert_with(ObjectMeta::default);
        metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(HASH_LABEL.into(), hash.clone());
        let mut selector: LabelSelector = spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(HASH_LABEL.into(), hash.clone());
        let mut labels = metadata.labels.clone().unwrap_or_default();
        labels.insert(HASH_LABEL.into(), hash.clone());
        let (surge, _) = surge_and_unavailable(deployment);
        let replicas = spec.replicas.unwrap_or(1);
        // the first ReplicaSet starts at full size; later ones grow through the rollout
        let initial = if owned.iter().all(|rs| replicas_of(rs) == 0)
            && spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) != Some("Recreate")
        {
            replicas
        } else {
            0
        };
        let mut annotations = deployment.annotations().clone();
        annotations.retain(|k, _| {
            k != "kubectl.kubernetes.io/last-applied-configuration" && k != REVISION
        });
        annotations.insert(REVISION.into(), revision.to_string());
        annotations.insert(DESIRED_REPLICAS.into(), replicas.to_string());
        annotations.insert(MAX_REPLICAS.into(), (replicas + surge).to_string());
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: deployment.namespace(),
                labels: Some(labels),
                annotations: Some(annotations),
                owner_references: deployment.controller_owner_ref(&()).map(|r| vec![r]),
                ..ObjectMeta::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(initial),
                selector,
                template: Some(template),
                min_ready_seconds: spec.min_ready_seconds,
            }),
            status: None,
        };
        match api.create(&PostParams::default(), &rs).await {
            Ok(created) => {
                let note = format!("Scaled up replica set {name} from 0 to {initial}");
                ctx.context
                    .event(
                        &deployment.object_ref(&()),
                        false,
                        "ScalingReplicaSet",
                        note,
                    )
                    .await;
                return Ok(created);
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                // a ReplicaSet of that name exists: ours with this template (cache lag) or a collision
                let existing = api
                    .get(&name)
                    .await
                    .map_err(Error::api("read colliding replicaset"))?;
                let ours = kelson_common::pod::controller_of(&existing.metadata)
                    .is_some_and(|o| Some(&o.uid) == deployment.metadata.uid.as_ref());
                if ours
                    && existing
                        .spec
                        .as_ref()
                        .and_then(|s| s.template.as_ref())
                        .is_some_and(|t| same_template(t, &spec.template))
                {
                    return Ok(existing);
                }
                collision_count += 1;
                let deployments: Api<Deployment> = Api::namespaced(
                    ctx.context.client.clone(),
                    &deployment.namespace().unwrap_or_default(),
                );
                let patch = json!({"status": {"collisionCount": collision_count}});
                deployments
                    .patch_status(
                        &deployment.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await
                    .map_err(Error::api("record hash collision"))?;
            }
            Err(error) => {
                return Err(Error::Api {
                    action: format!("create replicaset {name}"),
                    source: error,
                });
            }
        }
    }
}

async fn cleanup_history(
    api: &Api<ReplicaSet>,
    deployment: &Deployment,
    old: &[&ReplicaSet],
) -> Result<()> {
    let limit = deployment
        .spec
        .as_ref()
        .and_then(|s| s.revision_history_limit)
        .unwrap_or(10);
    let idle: Vec<&&ReplicaSet> = old
        .iter()
        .filter(|rs| {
            replicas_of(rs) == 0
                && rs.status.as_ref().is_none_or(|s| s.replicas == 0)
                && rs.metadata.deletion_timestamp.is_none()
        })
        .collect();
    let excess = idle
        .len()
        .saturating_sub(usize::try_from(limit.max(0)).unwrap_or(0));
    for rs in idle.iter().take(excess) {
        match api.delete(&rs.name_any(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => {
                return Err(Error::Api {
                    action: "delete old replicaset".into(),
                    source: error,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn scale(name: &str, replicas: i32, available: i32) -> Scale {
        Scale {
            name: name.into(),
            replicas,
            pods: replicas,
            available,
        }
    }

    #[test]
    fn rolling_update_steps_within_bounds() {
        // 10 replicas, 25%: surge 3, unavailable 2
        let step = rolling_step(10, 3, 2, &scale("new", 0, 0), &[scale("old", 10, 10)]);
        assert_eq!(
            step,
            BTreeMap::from([("new".to_owned(), 3)]),
            "surge first, alone"
        );
        let step = rolling_step(10, 3, 2, &scale("new", 3, 0), &[scale("old", 10, 10)]);
        assert_eq!(
            step,
            BTreeMap::from([("old".to_owned(), 8)]),
            "then drop to the minimum available"
        );
        let step = rolling_step(10, 3, 2, &scale("new", 3, 3), &[scale("old", 8, 8)]);
        assert_eq!(step.get("new"), Some(&5));
        // old pods that are still there count, whatever the ReplicaSet asks for
        let lagging = Scale {
            name: "old".into(),
            replicas: 8,
            pods: 10,
            available: 10,
        };
        assert!(!rolling_step(10, 3, 2, &scale("new", 3, 3), &[lagging]).contains_key("new"));
        let done = rolling_step(10, 3, 2, &scale("new", 10, 10), &[scale("old", 0, 0)]);
        assert!(done.is_empty());
    }

    #[test]
    fn unhealthy_old_replicas_are_removed_first() {
        // budget: 4 pods - 2 minimum available - 1 unavailable new pod = 1, spent on an
        // unavailable old pod rather than the available one
        let step = rolling_step(3, 1, 1, &scale("new", 1, 0), &[scale("old", 3, 1)]);
        assert_eq!(step.get("old"), Some(&2));
        // with no room (unavailability 0 and the new pod not ready) nothing moves, as in Kubernetes
        assert!(rolling_step(3, 1, 0, &scale("new", 1, 0), &[scale("old", 3, 1)]).is_empty());
    }

    #[test]
    fn percentages_round_like_kubernetes() {
        let deployment: Deployment = serde_json::from_value(
            json!({"spec": {"replicas": 10, "selector": {}, "template": {},
            "strategy": {"rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}}}),
        )
        .unwrap();
        assert_eq!(surge_and_unavailable(&deployment), (3, 2));
        let zero: Deployment = serde_json::from_value(
            json!({"spec": {"replicas": 3, "selector": {}, "template": {},
            "strategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}}}}),
        )
        .unwrap();
        assert_eq!(surge_and_unavailable(&zero), (0, 1));
    }

    #[test]
    fn template_hashes_ignore_their_own_label() {
        let template: PodTemplateSpec = serde_json::from_value(json!({"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}})).unwrap();
        let mut labelled = template.clone();
        labelled
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert(HASH_LABEL.into(), "zzz".into());
        assert_eq!(template_hash(&template, 0), template_hash(&labelled, 0));
        assert_ne!(template_hash(&template, 0), template_hash(&template, 1));
        assert!(same_template(&template, &labelled));
        assert!(
            template_hash(&template, 0)
                .chars()
                .all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c))
        );
    }

    proptest! {
        /// Simulating a rollout step by step never exceeds replicas + surge pods and never
        /// drops below replicas - unavailable available pods, and always finishes.
        #[test]
        fn rollouts_respect_surge_and_unavailability(replicas in 1i32..30, surge in 0i32..5, unavailable in 0i32..5) {
            let (surge, unavailable) = if surge == 0 && unavailable == 0 { (0, 1) } else { (surge, unavailable.min(replicas)) };
            let mut new = scale("new", 0, 0);
            let mut old = scale("old", replicas, replicas);
            for _ in 0..400 {
                let step = rolling_step(replicas, surge, unavailable, &new, std::slice::from_ref(&old));
                if let Some(n) = step.get("new") { new.replicas = *n; new.pods = *n; }
                if let Some(o) = step.get("old") {
                    old.replicas = *o;
                    old.pods = *o;
                    old.available = old.available.min(*o);
                }
                prop_assert!(new.pods + old.pods <= replicas + surge);
                prop_assert!(new.available + old.available >= replicas - unavailable);
                // the pods of the new ReplicaSet become available
                new.available = new.replicas;
                if step.is_empty() && new.replicas == replicas && old.replicas == 0 {
                    break;
                }
            }
            prop_assert_eq!((new.replicas, old.replicas), (replicas, 0));
        }
    }
}
