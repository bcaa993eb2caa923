//! The StatefulSet controller: pods with stable names (`<set>-<ordinal>`), hostnames under the
//! governing Service, and their own PersistentVolumeClaims from `volumeClaimTemplates`, created
//! in order and each only once its predecessors are Running and Ready (`OrderedReady`) or all
//! at once (`Parallel`), removed from the highest ordinal down, and updated from the highest
//! ordinal down to `partition`, one pod at a time (`RollingUpdate`) or when deleted
//! (`OnDelete`). Templates are ControllerRevisions; status carries `currentRevision` and
//! `updateRevision` as `kubectl rollout status/history/undo` read them.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kelson_common::pod;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::info;

use crate::context::{Context, Error, Result};
use crate::revision::{self, HASH_LABEL};

/// The label naming a StatefulSet pod (for per-pod Services).
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The label carrying a pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// What the StatefulSet controller reads.
pub struct Shared {
    /// Context.
    pub context: Arc<Context>,
    /// Pod cache.
    pub pods: Store<Pod>,
    /// ControllerRevision cache.
    pub revisions: Store<ControllerRevision>,
}

/// How pods are replaced when the template changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Update {
    /// Only when deleted.
    OnDelete,
    /// Highest ordinal first, down to `partition`.
    RollingUpdate {
        /// Ordinals below it keep the current revision.
        partition: i32,
    },
}

/// The settings of a StatefulSet the plan needs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Name (pod names are `<name>-<ordinal>`).
    pub name: String,
    /// `spec.replicas`.
    pub replicas: i32,
    /// `spec.ordinals.start`.
    pub start: i32,
    /// `podManagementPolicy: Parallel`.
    pub parallel: bool,
    /// The update strategy.
    pub update: Update,
    /// `minReadySeconds`.
    pub min_ready: i32,
}

/// What to do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Pods to create: ordinal and the revision to create it at.
    pub create: Vec<(i32, String)>,
    /// Pods to delete (name, uid).
    pub delete: Vec<(String, String)>,
}

/// The ordinal of a pod of the set named `set`.
#[must_use]
pub fn ordinal_of(set: &str, pod_name: &str) -> Option<i32> {
    pod_name
        .strip_prefix(set)?
        .strip_prefix('-')?
        .parse()
        .ok()
        .filter(|n: &i32| *n >= 0)
}

fn revision_of(p: &Pod) -> &str {
    p.labels().get(HASH_LABEL).map_or("", String::as_str)
}

fn key(p: &Pod) -> (String, String) {
    (p.name_any(), p.metadata.uid.clone().unwrap_or_default())
}

/// The revision a new pod with this ordinal gets: partitioned ordinals keep the current one.
#[must_use]
pub fn revision_for(settings: &Settings, ordinal: i32, current: &str, update: &str) -> String {
    match settings.update {
        Update::RollingUpdate { partition } if ordinal < partition => current.to_owned(),
        _ => update.to_owned(),
    }
}

/// The pure decision: which pods to create and delete now, honouring the ordering policy, the
/// scale-down order and the rolling update.
#[must_use]
pub fn plan(
    settings: &Settings,
    pods: &[Arc<Pod>],
    current: &str,
    update: &str,
    now: &Time,
) -> Plan {
    let mut plan = Plan::default();
    let range = settings.start..settings.start.saturating_add(settings.replicas.max(0));
    let mut replicas: BTreeMap<i32, &Arc<Pod>> = BTreeMap::new();
    let mut condemned: Vec<(i32, &Arc<Pod>)> = Vec::new();
    for p in pods {
        let Some(ordinal) = ordinal_of(&settings.name, &p.name_any()) else {
            continue;
        };
        if range.contains(&ordinal) {
            replicas.insert(ordinal, p);
        } else {
            condemned.push((ordinal, p));
        }
    }
    let healthy = |p: &Pod| {
        !pod::is_terminating(p)
            && pod::phase(p) == "Running"
            && pod::is_available(p, settings.min_ready, now)
    };
    // every replica present and healthy: only then may pods be taken away
    let mut settled = true;
    for ordinal in range {
        match replicas.get(&ordinal) {
            None => {
                plan.create
                    .push((ordinal, revision_for(settings, ordinal, current, update)));
                settled = false;
                if !settings.parallel {
                    break;
                }
            }
            Some(p) if pod::is_terminal(p) && !pod::is_terminating(p) => {
                // failed (or finished) pods are replaced
                plan.delete.push(key(p));
                settled = false;
                if !settings.parallel {
                    break;
                }
            }
            Some(p) if !healthy(p) => {
                settled = false;
                if !settings.parallel {
                    break;
                }
            }
            Some(_) => {}
        }
    }
    // scale down: highest ordinal first, one at a time unless Parallel
    condemned.sort_by_key(|(ordinal, _)| std::cmp::Reverse(*ordinal));
    if settings.parallel {
        plan.delete.extend(
            condemned
                .iter()
                .filter(|(_, p)| !pod::is_terminating(p))
                .map(|(_, p)| key(p)),
        );
    } else if settled && let Some((_, p)) = condemned.first() {
        if !pod::is_terminating(p) {
            plan.delete.push(key(p));
        }
        return plan;
    }
    if !settled || !condemned.is_empty() {
        return plan;
    }
    // rolling update: the highest outdated pod at or above the partition, once all are healthy
    if let Update::RollingUpdate { partition } = settings.update {
        let outdated = replicas
            .iter()
            .rev()
            .filter(|(ordinal, _)| **ordinal >= partition)
            .find(|(_, p)| revision_of(p) != update);
        if let Some((_, p)) = outdated {
            plan.delete.push(key(p));
        }
    }
    plan
}

/// The status the pods give.
#[must_use]
pub fn status(
    set: &StatefulSet,
    settings: &Settings,
    pods: &[Arc<Pod>],
    current: &str,
    update: &str,
    collision_count: i32,
    now: &Time,
) -> StatefulSetStatus {
    let live: Vec<&Arc<Pod>> = pods
        .iter()
        .filter(|p| ordinal_of(&settings.name, &p.name_any()).is_some())
        .filter(|p| !pod::is_terminal(p))
        .collect();
    let count = |f: &dyn Fn(&Pod) -> bool| {
        i32::try_from(live.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    let replicas = count(&|_| true);
    let ready = count(&pod::is_ready);
    let updated = count(&|p| revision_of(p) == update);
    let updated_ready = count(&|p| revision_of(p) == update && pod::is_ready(p));
    // the update is complete once every pod runs the new revision and is ready
    let current = if updated_ready == settings.replicas && replicas == settings.replicas {
        update
    } else {
        current
    };
    StatefulSetStatus {
        replicas,
        ready_replicas: Some(ready),
        available_replicas: Some(count(&|p| pod::is_available(p, settings.min_ready, now))),
        current_replicas: Some(count(&|p| revision_of(p) == current)),
        updated_replicas: Some(updated),
        current_revision: Some(current.to_owned()),
        update_revision: Some(update.to_owned()),
        observed_generation: set.metadata.generation,
        collision_count: Some(collision_count),
        conditions: set.status.as_ref().and_then(|s| s.conditions.clone()),
    }
}

/// The claims a pod of `ordinal` uses: one per volume claim template, named
/// `<template>-<set>-<ordinal>`.
#[must_use]
pub fn claims_for(set: &StatefulSet, ordinal: i32) -> Vec<PersistentVolumeClaim> {
    let spec = set.spec.clone().unwrap_or_default();
    let pod_name = format!("{}-{ordinal}", set.name_any());
    let owned = spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .and_then(|p| p.when_deleted.as_deref())
        == Some("Delete");
    let selector_labels = spec.selector.match_labels.clone().unwrap_or_default();
    spec.volume_claim_templates
        .unwrap_or_default()
        .into_iter()
        .map(|template| {
            let mut labels = selector_labels.clone();
            labels.extend(template.metadata.labels.clone().unwrap_or_default());
            PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(format!("{}-{pod_name}", template.name_any())),
                    namespace: set.namespace(),
                    labels: Some(labels),
                    annotations: template.metadata.annotations.clone(),
                    owner_references: owned
                        .then(|| set.controller_owner_ref(&()).map(|r| vec![r]))
                        .flatten(),
                    ..ObjectMeta::default()
                },
                spec: template.spec,
                status: None,
            }
        })
        .collect()
}

/// The pod of `ordinal` at `revision` (whose template is `template`).
#[must_use]
pub fn pod_for(set: &StatefulSet, template: &PodTemplateSpec, ordinal: i32, revision: &str) -> Pod {
    let name = format!("{}-{ordinal}", set.name_any());
    let metadata = template.metadata.clone().unwrap_or_default();
    let mut labels = metadata.labels.unwrap_or_default();
    labels.insert(HASH_LABEL.into(), revision.into());
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    let mut spec = template.spec.clone().unwrap_or_default();
    spec.hostname = Some(name.clone());
    let service = set
        .spec
        .as_ref()
        .and_then(|s| s.service_name.clone())
        .filter(|s| !s.is_empty());
    if service.is_some() {
        spec.subdomain = service;
    }
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    for claim in claims_for(set, ordinal) {
        let template_name = claim
            .name_any()
            .strip_suffix(&format!("-{name}"))
            .unwrap_or_default()
            .to_owned();
        volumes.retain(|v| v.name != template_name);
        volumes.push(Volume {
            name: template_name,
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.name_any(),
                read_only: None,
            }),
            ..Volume::default()
        });
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: set.namespace(),
            labels: Some(labels),
            annotations: metadata.annotations,
            owner_references: set.controller_owner_ref(&()).map(|r| vec![r]),
            finalizers: metadata.finalizers,
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

fn settings_of(set: &StatefulSet) -> Settings {
    let spec = set.spec.clone().unwrap_or_default();
    let strategy = spec.update_strategy.unwrap_or_default();
    let update = if strategy.type_.as_deref() == Some("OnDelete") {
        Update::OnDelete
    } else {
        Update::RollingUpdate {
            partition: strategy
                .rolling_update
                .and_then(|r| r.partition)
                .unwrap_or(0),
        }
    };
    Settings {
        name: set.name_any(),
        replicas: spec.replicas.unwrap_or(1),
        start: spec.ordinals.and_then(|o| o.start).unwrap_or(0),
        parallel: spec.pod_management_policy.as_deref() == Some("Parallel"),
        update,
        min_ready: spec.min_ready_seconds.unwrap_or(0),
    }
}

/// Reconciles one StatefulSet.
///
/// # Errors
/// When an API call fails (retried by the error policy).
pub async fn reconcile(set: Arc<StatefulSet>, ctx: Arc<Shared>) -> Result<Action> {
    if set.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let _ = ctx.pods.wait_until_ready().await;
    let namespace = set.namespace().unwrap_or_default();
    let name = set.name_any();
    let key = format!("statefulset/{namespace}/{name}");
    let uid = set.metadata.uid.clone().unwrap_or_default();
    let spec = set.spec.clone().unwrap_or_default();
    let settings = settings_of(&set);
    let pods = crate::context::owned_by(&ctx.pods, Some(&namespace), &uid);
    let revisions = crate::context::owned_by(&ctx.revisions, Some(&namespace), &uid);
    let in_use: HashSet<String> = pods
        .iter()
        .filter_map(|p| p.labels().get(HASH_LABEL))
        .filter_map(|name| name.strip_prefix(&format!("{}-", settings.name)))
        .map(str::to_owned)
        .collect();
    let owner = revision::Owner::of(
        &*set,
        &spec.template,
        set.status.as_ref().and_then(|s| s.collision_count),
        spec.revision_history_limit,
    )?;
    let history = revision::plan(&owner, &revisions, &in_use);
    revision::apply(&ctx.context, &namespace, &history).await?;
    let update = format!("{name}-{}", history.hash);
    let current = set
        .status
        .as_ref()
        .and_then(|s| s.current_revision.clone())
        .filter(|r| revisions.iter().any(|rev| rev.name_any() == *r))
        .unwrap_or_else(|| update.clone());
    let current_template = revisions
        .iter()
        .find(|r| r.name_any() == current)
        .and_then(|r| revision::template_of(r))
        .unwrap_or_else(|| spec.template.clone());

    let now = Time(jiff::Timestamp::now());
    let names: HashSet<String> = pods.iter().map(|p| p.name_any()).collect();
    let uids: HashSet<String> = pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
    if ctx.context.expectations.satisfied(&key, &names, &uids) {
        let plan = plan(&settings, &pods, &current, &update, &now);
        apply(&ctx, &set, &key, plan, |revision| {
            if revision == current {
                current_template.clone()
            } else {
                spec.template.clone()
            }
        })
        .await?;
    }
    if spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .and_then(|p| p.when_scaled.as_deref())
        == Some("Delete")
    {
        delete_scaled_claims(&ctx, &set, &settings, &pods).await?;
    }

    let status = status(
        &set,
        &settings,
        &pods,
        &current,
        &update,
        history.collision_count,
        &now,
    );
    if set.status.as_ref() != Some(&status) {
        let api: Api<StatefulSet> = Api::namespaced(ctx.context.client.clone(), &namespace);
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status})),
        )
        .await
        .map_err(Error::api(format!("update status of statefulset {key}")))?;
    }
    if settings.min_ready > 0 && status.ready_replicas != status.available_replicas {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

async fn apply(
    ctx: &Shared,
    set: &StatefulSet,
    key: &str,
    plan: Plan,
    template_of: impl Fn(&str) -> PodTemplateSpec,
) -> Result<()> {
    let namespace = set.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.context.client.clone(), &namespace);
    let claims: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.context.client.clone(), &namespace);
    let reference = set.object_ref(&());
    if !plan.delete.is_empty() {
        let uids: Vec<String> = plan.delete.iter().map(|(_, uid)| uid.clone()).collect();
        ctx.context.expectations.expect(key, [], uids);
        let names: Vec<String> = plan.delete.iter().map(|(name, _)| name.clone()).collect();
        crate::context::delete_pods(&pods, names.clone()).await?;
        for name in names {
            let note = format!(
                "delete Pod {name} in StatefulSet {} successful",
                set.name_any()
            );
            ctx.context
                .event(&reference, false, "SuccessfulDelete", note)
                .await;
        }
    }
    let mut created = Vec::new();
    let set_name = set.name_any();
    for (ordinal, revision) in &plan.create {
        let pod_name = format!("{set_name}-{ordinal}");
        for claim in claims_for(set, *ordinal) {
            let claim_name = claim.name_any();
            let reports = (
                format!(
                    "create Claim {claim_name} Pod {pod_name} in StatefulSet {set_name} success"
                ),
                format!("create Claim {claim_name} for StatefulSet {set_name} failed"),
            );
            create_child(ctx, &reference, &claims, &claim, reports).await?;
        }
        let p = pod_for(set, &template_of(revision), *ordinal, revision);
        let reports = (
            format!("create Pod {pod_name} in StatefulSet {set_name} successful"),
            format!("create Pod {pod_name} in StatefulSet {set_name} failed"),
        );
        let result = create_child(ctx, &reference, &pods, &p, reports).await;
        match result {
            Ok(true) => created.push(pod_name),
            Ok(false) => {}
            Err(error) => {
                ctx.context.expectations.expect(key, created, []);
                return Err(error);
            }
        }
    }
    if !created.is_empty() {
        info!(statefulset = %key, pods = ?created, "created pods");
        ctx.context.expectations.expect(key, created, []);
    }
    Ok(())
}

/// Creates a pod or claim of the set with Kubernetes' events (`reports`: the success note and
/// the failure's prefix); one that exists already (a pod still terminating, a claim kept from
/// before) is left for a later pass. Returns whether it was created.
async fn create_child<K>(
    ctx: &Shared,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    api: &Api<K>,
    object: &K,
    reports: (String, String),
) -> Result<bool>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let (success, failure) = reports;
    match api.create(&PostParams::default(), object).await {
        Ok(_) => {
            ctx.context
                .event(reference, false, "SuccessfulCreate", success)
                .await;
            Ok(true)
        }
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(error) => {
            ctx.context
                .event(
                    reference,
                    true,
                    "FailedCreate",
                    format!("{failure} error: {error}"),
                )
                .await;
            Err(Error::Api {
                action: failure,
                source: error,
            })
        }
    }
}

/// With `whenScaled: Delete`, the claims of ordinals scaled away go once their pods have.
async fn delete_scaled_claims(
    ctx: &Shared,
    set: &StatefulSet,
    settings: &Settings,
    pods: &[Arc<Pod>],
) -> Result<()> {
    let namespace = set.namespace().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.context.client.clone(), &namespace);
    let templates: Vec<String> = set
        .spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.as_ref())
        .into_iter()
        .flatten()
        .map(ResourceExt::name_any)
        .collect();
    if templates.is_empty() {
        return Ok(());
    }
    let live: HashSet<i32> = pods
        .iter()
        .filter_map(|p| ordinal_of(&settings.name, &p.name_any()))
        .collect();
    let end = settings.start.saturating_add(settings.replicas.max(0));
    let claims = api
        .list(&kube::api::ListParams::default())
        .await
        .map_err(Error::api(format!("list claims in {namespace}")))?;
    let doomed: Vec<String> = claims
        .items
        .iter()
        .map(ResourceExt::name_any)
        .filter(|claim| {
            templates.iter().any(|template| {
                claim
                    .strip_prefix(&format!("{template}-"))
                    .and_then(|rest| ordinal_of(&settings.name, rest))
                    .is_some_and(|o| (o >= end || o < settings.start) && !live.contains(&o))
            })
        })
        .collect();
    futures::stream::iter(doomed)
        .for_each(|claim| {
            let api = api.clone();
            async move {
                let _ = api.delete(&claim, &DeleteParams::default()).await;
            }
        })
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn settings(replicas: i32, parallel: bool, partition: i32) -> Settings {
        Settings {
            name: "web".into(),
            replicas,
            start: 0,
            parallel,
            update: Update::RollingUpdate { partition },
            min_ready: 0,
        }
    }

    fn member(ordinal: i32, revision: &str, phase: &str, ready: bool) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": format!("web-{ordinal}"), "uid": format!("u{ordinal}"), "labels": {HASH_LABEL: revision}},
                "spec": {"containers": []},
                "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
            }))
            .unwrap(),
        )
    }

    fn now() -> Time {
        Time(jiff::Timestamp::now())
    }

    fn names(plan: &Plan) -> Vec<&str> {
        plan.delete.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn ordered_ready_creates_one_at_a_time() {
        let s = settings(3, false, 0);
        assert_eq!(
            plan(&s, &[], "r1", "r1", &now()).create,
            [(0, "r1".to_owned())]
        );
        let starting = [member(0, "r1", "Pending", false)];
        assert_eq!(
            plan(&s, &starting, "r1", "r1", &now()),
            Plan::default(),
            "waits for web-0"
        );
        let up = [member(0, "r1", "Running", true)];
        assert_eq!(
            plan(&s, &up, "r1", "r1", &now()).create,
            [(1, "r1".to_owned())]
        );
        assert_eq!(
            plan(&settings(3, true, 0), &[], "r1", "r1", &now())
                .create
                .len(),
            3,
            "Parallel"
        );
    }

    #[test]
    fn scale_down_goes_from_the_highest_ordinal() {
        let s = settings(1, false, 0);
        let pods: Vec<Arc<Pod>> = (0..3).map(|o| member(o, "r1", "Running", true)).collect();
        assert_eq!(names(&plan(&s, &pods, "r1", "r1", &now())), ["web-2"]);
        let mut unhealthy = pods;
        unhealthy[0] = member(0, "r1", "Running", false);
        assert_eq!(
            plan(&s, &unhealthy, "r1", "r1", &now()),
            Plan::default(),
            "waits while a replica is unhealthy"
        );
        assert_eq!(
            names(&plan(&settings(1, true, 0), &unhealthy, "r1", "r1", &now())),
            ["web-2", "web-1"]
        );
    }

    #[test]
    fn rolling_updates_go_down_to_the_partition() {
        let pods: Vec<Arc<Pod>> = (0..3).map(|o| member(o, "old", "Running", true)).collect();
        assert_eq!(
            names(&plan(&settings(3, false, 0), &pods, "old", "new", &now())),
            ["web-2"]
        );
        let mut progressed = pods.clone();
        progressed[2] = member(2, "new", "Running", true);
        assert_eq!(
            names(&plan(
                &settings(3, false, 0),
                &progressed,
                "old",
                "new",
                &now()
            )),
            ["web-1"]
        );
        assert_eq!(
            plan(&settings(3, false, 2), &progressed, "old", "new", &now()),
            Plan::default(),
            "partition 2 keeps web-0 and web-1"
        );
        // a recreated pod below the partition keeps the current revision
        let missing = [progressed[1].clone(), progressed[2].clone()];
        assert_eq!(
            plan(&settings(3, false, 2), &missing, "old", "new", &now()).create,
            [(0, "old".to_owned())]
        );
        let on_delete = Settings {
            update: Update::OnDelete,
            ..settings(3, false, 0)
        };
        assert_eq!(
            plan(&on_delete, &pods, "old", "new", &now()),
            Plan::default()
        );
        assert_eq!(
            plan(&on_delete, &missing, "old", "new", &now()).create,
            [(0, "new".to_owned())]
        );
    }

    #[test]
    fn failed_pods_are_replaced() {
        let pods = [
            member(0, "r1", "Failed", false),
            member(1, "r1", "Running", true),
        ];
        assert_eq!(
            names(&plan(&settings(2, false, 0), &pods, "r1", "r1", &now())),
            ["web-0"]
        );
    }

    #[test]
    fn pods_get_stable_names_hostnames_and_claims() {
        let set: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": "db", "namespace": "default", "uid": "u"},
            "spec": {"serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Retain"},
                "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "c", "image": "busybox",
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}
        }))
        .unwrap();
        let template = set.spec.as_ref().unwrap().template.clone();
        let p = pod_for(&set, &template, 2, "db-abc");
        assert_eq!(p.name_any(), "db-2");
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(
            (spec.hostname.as_deref(), spec.subdomain.as_deref()),
            (Some("db-2"), Some("db"))
        );
        assert_eq!(p.labels()[POD_NAME_LABEL], "db-2");
        assert_eq!(p.labels()[HASH_LABEL], "db-abc");
        let volume = &spec.volumes.as_ref().unwrap()[0];
        assert_eq!(volume.name, "data");
        assert_eq!(
            volume.persistent_volume_claim.as_ref().unwrap().claim_name,
            "data-db-2"
        );
        let claims = claims_for(&set, 2);
        assert_eq!(claims[0].name_any(), "data-db-2");
        assert_eq!(claims[0].labels()["app"], "db");
        assert!(
            claims[0].metadata.owner_references.is_some(),
            "whenDeleted: Delete"
        );
        assert_eq!(ordinal_of("db", "db-12"), Some(12));
        assert_eq!(ordinal_of("db", "db-x"), None);
        assert_eq!(ordinal_of("db", "dbx-1"), None);
    }

    #[test]
    fn the_update_completes_when_every_pod_runs_it() {
        let set: StatefulSet =
            serde_json::from_value(json!({"metadata": {"name": "web", "generation": 2}})).unwrap();
        let s = settings(2, false, 0);
        let mixed = [
            member(0, "old", "Running", true),
            member(1, "new", "Running", true),
        ];
        let st = status(&set, &s, &mixed, "old", "new", 0, &now());
        assert_eq!(
            (
                st.current_replicas,
                st.updated_replicas,
                st.current_revision.as_deref()
            ),
            (Some(1), Some(1), Some("old"))
        );
        let done = [
            member(0, "new", "Running", true),
            member(1, "new", "Running", true),
        ];
        let st = status(&set, &s, &done, "old", "new", 0, &now());
        assert_eq!(
            (
                st.current_replicas,
                st.current_revision.as_deref(),
                st.ready_replicas
            ),
            (Some(2), Some("new"), Some(2))
        );
    }
}
