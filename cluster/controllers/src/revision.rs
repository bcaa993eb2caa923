//! ControllerRevisions: the template history of DaemonSets and StatefulSets, as `kubectl
//! rollout history` and `kubectl rollout undo` read it.
//!
//! Each distinct pod template gets one revision named `<owner>-<hash>`, labelled with the
//! template's labels (so the owner's selector finds it) and `controller-revision-hash`. Its
//! `data` is the strategic merge patch that puts the template back, which is what `rollout
//! undo` applies. Going back to an earlier template renumbers that revision instead of adding
//! one; revisions beyond `revisionHistoryLimit` that no pod runs any more are deleted.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::context::{Context, Error, Result};

/// The label tying pods (and the revision itself) to one template.
pub const HASH_LABEL: &str = "controller-revision-hash";
/// The annotation `kubectl rollout history` shows as CHANGE-CAUSE.
pub const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";

/// The patch that restores `template` (the revision's `data`).
#[must_use]
pub fn data(template: &PodTemplateSpec) -> Value {
    let mut template = serde_json::to_value(template).expect("templates serialize");
    if let Some(map) = template.as_object_mut() {
        map.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": template}})
}

/// The template a revision restores.
#[must_use]
pub fn template_of(revision: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut template = revision.data.as_ref()?.0.pointer("/spec/template")?.clone();
    template.as_object_mut()?.remove("$patch");
    serde_json::from_value(template).ok()
}

/// The name fragment of a template (FNV-1a, like the Deployment controller's).
#[must_use]
pub fn hash(template: &PodTemplateSpec, collision_count: i32) -> String {
    crate::deployment::template_hash(template, collision_count)
}

/// What to do to the history of one owner.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// The hash of the current template (pods carrying it are up to date).
    pub hash: String,
    /// The current revision number.
    pub revision: i64,
    /// The current revision, when it must be created.
    pub create: Option<ControllerRevision>,
    /// An existing revision to renumber as the current one (a rollback).
    pub renumber: Option<String>,
    /// Revisions to delete (over the history limit and unused).
    pub delete: Vec<String>,
    /// The collision count after resolving name clashes.
    pub collision_count: i32,
}

/// The owner of a history.
pub struct Owner<'a> {
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: Option<String>,
    /// The controller reference revisions carry.
    pub reference: OwnerReference,
    /// Its pod template.
    pub template: &'a PodTemplateSpec,
    /// `status.collisionCount`.
    pub collision_count: i32,
    /// `spec.revisionHistoryLimit`.
    pub history_limit: i32,
    /// The owner's `kubernetes.io/change-cause` annotation, which `rollout history` shows.
    pub change_cause: Option<String>,
}

impl<'a> Owner<'a> {
    /// The history owner for a DaemonSet or StatefulSet with this template, collision count and
    /// history limit.
    ///
    /// # Errors
    /// When the object has no uid yet (it was never stored).
    pub fn of<K: kube::Resource<DynamicType = ()>>(
        object: &K,
        template: &'a PodTemplateSpec,
        collision_count: Option<i32>,
        history_limit: Option<i32>,
    ) -> Result<Self> {
        let reference = object.controller_owner_ref(&()).ok_or_else(|| {
            Error::Invalid(format!("{} {} has no uid", K::kind(&()), object.name_any()))
        })?;
        Ok(Self {
            name: object.name_any(),
            namespace: object.namespace(),
            reference,
            template,
            collision_count: collision_count.unwrap_or(0),
            history_limit: history_limit.unwrap_or(10),
            change_cause: object.annotations().get(CHANGE_CAUSE).cloned(),
        })
    }
}

/// The pure decision: which revision is current and what to create, renumber and delete.
/// `revisions` are those the owner controls; `in_use` the hashes its live pods carry.
#[must_use]
pub fn plan(
    owner: &Owner<'_>,
    revisions: &[Arc<ControllerRevision>],
    in_use: &HashSet<String>,
) -> Plan {
    let highest = revisions.iter().map(|r| r.revision).max().unwrap_or(0);
    let existing = revisions
        .iter()
        .filter(|r| template_of(r).is_some_and(|t| same(&t, owner.template)))
        .max_by_key(|r| r.revision);
    let mut plan = Plan {
        collision_count: owner.collision_count,
        ..Plan::default()
    };
    match existing {
        Some(current) => {
            plan.hash = current
                .labels()
                .get(HASH_LABEL)
                .cloned()
                .unwrap_or_else(|| hash(owner.template, owner.collision_count));
            if current.revision == highest {
                plan.revision = current.revision;
            } else {
                plan.revision = highest + 1;
                plan.renumber = Some(current.name_any());
            }
        }
        None => {
            // a name taken by another template is a collision: rehash with a higher count
            let names: HashSet<String> = revisions.iter().map(|r| r.name_any()).collect();
            let mut collisions = owner.collision_count;
            let mut fragment = hash(owner.template, collisions);
            while names.contains(&format!("{}-{fragment}", owner.name)) {
                collisions += 1;
                fragment = hash(owner.template, collisions);
            }
            plan.collision_count = collisions;
            plan.revision = highest + 1;
            plan.create = Some(revision_object(owner, &fragment, plan.revision));
            plan.hash = fragment;
        }
    }
    let current_name = format!("{}-{}", owner.name, plan.hash);
    let mut old: Vec<&Arc<ControllerRevision>> = revisions
        .iter()
        .filter(|r| r.name_any() != current_name && plan.renumber.as_deref() != Some(&r.name_any()))
        .filter(|r| {
            r.labels()
                .get(HASH_LABEL)
                .is_none_or(|h| !in_use.contains(h))
        })
        .collect();
    let limit = usize::try_from(owner.history_limit.max(0)).unwrap_or(0);
    if old.len() > limit {
        old.sort_by_key(|r| r.revision);
        plan.delete = old[..old.len() - limit]
            .iter()
            .map(|r| r.name_any())
            .collect();
    }
    plan
}

fn same(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}

fn revision_object(owner: &Owner<'_>, fragment: &str, revision: i64) -> ControllerRevision {
    let mut labels: BTreeMap<String, String> = owner
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(HASH_LABEL.into(), fragment.into());
    ControllerRevision {
        metadata: ObjectMeta {
            name: Some(format!("{}-{fragment}", owner.name)),
            namespace: owner.namespace.clone(),
            labels: Some(labels),
            annotations: owner
                .change_cause
                .clone()
                .map(|cause| BTreeMap::from([(CHANGE_CAUSE.to_owned(), cause)])),
            owner_references: Some(vec![owner.reference.clone()]),
            ..ObjectMeta::default()
        },
        data: Some(RawExtension(data(owner.template))),
        revision,
    }
}

/// Carries out a plan; returns the current hash and revision.
///
/// # Errors
/// When an API call fails.
pub async fn apply(context: &Context, namespace: &str, plan: &Plan) -> Result<()> {
    let api: Api<ControllerRevision> = Api::namespaced(context.client.clone(), namespace);
    if let Some(revision) = &plan.create {
        match api.create(&PostParams::default(), revision).await {
            Ok(_) => {}
            // created by an earlier pass whose result the cache has not shown yet
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(error) => {
                return Err(Error::Api {
                    action: format!("create controllerrevision {}", revision.name_any()),
                    source: error,
                });
            }
        }
    }
    if let Some(name) = &plan.renumber {
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"revision": plan.revision})),
        )
        .await
        .map_err(Error::api(format!("renumber controllerrevision {name}")))?;
    }
    for name in &plan.delete {
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => {
                return Err(Error::Api {
                    action: format!("delete controllerrevision {name}"),
                    source: error,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(image: &str) -> PodTemplateSpec {
        serde_json::from_value(json!({
            "metadata": {"labels": {"app": "a"}},
            "spec": {"containers": [{"name": "c", "image": image}]}
        }))
        .unwrap()
    }

    fn owner(template: &PodTemplateSpec, limit: i32) -> Owner<'_> {
        Owner {
            name: "ds".into(),
            namespace: Some("default".into()),
            reference: OwnerReference {
                api_version: "apps/v1".into(),
                kind: "DaemonSet".into(),
                name: "ds".into(),
                uid: "uid".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            },
            template,
            collision_count: 0,
            history_limit: limit,
            change_cause: None,
        }
    }

    fn existing(plan: &Plan) -> Arc<ControllerRevision> {
        Arc::new(plan.create.clone().expect("created"))
    }

    #[test]
    fn a_new_template_adds_a_revision_and_an_old_one_is_renumbered() {
        let one = template("busybox:1");
        let first = plan(&owner(&one, 10), &[], &HashSet::new());
        assert_eq!(first.revision, 1);
        let created = existing(&first);
        assert_eq!(created.name_any(), format!("ds-{}", first.hash));
        assert_eq!(created.labels().get("app").map(String::as_str), Some("a"));
        assert_eq!(
            template_of(&created).as_ref(),
            Some(&one),
            "data restores the template"
        );
        assert_eq!(
            created
                .data
                .as_ref()
                .unwrap()
                .0
                .pointer("/spec/template/$patch"),
            Some(&json!("replace"))
        );

        let two = template("busybox:2");
        let second = plan(
            &owner(&two, 10),
            std::slice::from_ref(&created),
            &HashSet::new(),
        );
        assert_eq!(second.revision, 2);
        assert_ne!(second.hash, first.hash);
        let history = [created.clone(), existing(&second)];

        let unchanged = plan(&owner(&two, 10), &history, &HashSet::new());
        assert_eq!(
            (
                unchanged.revision,
                unchanged.create.is_none(),
                unchanged.renumber
            ),
            (2, true, None)
        );

        let back = plan(&owner(&one, 10), &history, &HashSet::new());
        assert_eq!(back.revision, 3, "a rollback renumbers, as Kubernetes does");
        assert_eq!(back.renumber, Some(created.name_any()));
        assert_eq!(back.hash, first.hash);
        assert!(back.create.is_none());
    }

    #[test]
    fn history_beyond_the_limit_goes_unless_pods_run_it() {
        let mut history = Vec::new();
        for n in 1..=4 {
            let t = template(&format!("busybox:{n}"));
            let p = plan(&owner(&t, 10), &history, &HashSet::new());
            history.push(existing(&p));
        }
        let current = template("busybox:4");
        let kept = plan(&owner(&current, 1), &history, &HashSet::new());
        assert_eq!(
            kept.delete,
            vec![history[0].name_any(), history[1].name_any()]
        );
        let oldest_hash = history[0].labels()[HASH_LABEL].clone();
        let in_use = plan(&owner(&current, 1), &history, &HashSet::from([oldest_hash]));
        assert_eq!(
            in_use.delete,
            vec![history[1].name_any()],
            "a revision pods still run stays"
        );
    }

    #[test]
    fn a_clashing_name_raises_the_collision_count() {
        let one = template("busybox:1");
        let first = plan(&owner(&one, 10), &[], &HashSet::new());
        let mut clash = (*existing(&first)).clone();
        clash.data = Some(RawExtension(data(&template("other"))));
        let again = plan(&owner(&one, 10), &[Arc::new(clash)], &HashSet::new());
        assert_eq!(again.collision_count, 1);
        assert_ne!(again.hash, first.hash);
    }
}
