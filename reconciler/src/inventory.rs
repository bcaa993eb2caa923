//! The inventory of applied objects and the prune decision: what was applied before and is
//! no longer rendered is deleted — unless the render failed, produced nothing, or shrank by more
//! than the allowed fraction, or the object is protected.

use std::collections::BTreeSet;

use crate::api::InventoryEntry;

/// Kinds that are pruned only with the prune annotation set to "true" on the live object.
pub const PROTECTED_KINDS: [(&str, &str); 3] = [
    ("", "Namespace"),
    ("", "PersistentVolumeClaim"),
    ("apiextensions.k8s.io", "CustomResourceDefinition"),
];

/// The identity of an object across API versions.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId {
    pub group: String,
    pub kind: String,
    /// Empty for cluster-scoped objects.
    pub namespace: String,
    pub name: String,
}

impl ObjectId {
    /// Flux's inventory form: `NAMESPACE_NAME_GROUP_KIND`.
    pub fn inventory_id(&self) -> String {
        format!(
            "{}_{}_{}_{}",
            self.namespace, self.name, self.group, self.kind
        )
    }

    /// Parses an inventory id (names and namespaces never contain `_`; groups never do either).
    pub fn parse(id: &str) -> Option<Self> {
        let mut parts = id.splitn(4, '_');
        let namespace = parts.next()?.to_owned();
        let name = parts.next()?.to_owned();
        let group = parts.next()?.to_owned();
        let kind = parts.next()?.to_owned();
        (!name.is_empty() && !kind.is_empty()).then_some(Self {
            group,
            kind,
            namespace,
            name,
        })
    }

    pub fn is_protected(&self) -> bool {
        PROTECTED_KINDS.contains(&(self.group.as_str(), self.kind.as_str()))
    }

    /// `Kind namespace/name` (or `Kind name`), for people.
    pub fn display(&self) -> String {
        let kind = if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        };
        if self.namespace.is_empty() {
            format!("{kind} {}", self.name)
        } else {
            format!("{kind} {}/{}", self.namespace, self.name)
        }
    }
}

/// What to prune, or why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrunePlan {
    /// Delete these inventory entries (possibly none).
    Delete(Vec<InventoryEntry>),
    /// Prune nothing this time, for this reason.
    Refused(String),
}

/// Decides the prune after a successful render of `rendered` objects.
pub fn plan_prune(
    previous: &[InventoryEntry],
    rendered: &BTreeSet<String>,
    max_percent: u32,
) -> PrunePlan {
    let stale: Vec<InventoryEntry> = previous
        .iter()
        .filter(|e| !rendered.contains(&e.id))
        .cloned()
        .collect();
    if stale.is_empty() {
        return PrunePlan::Delete(vec![]);
    }
    if rendered.is_empty() {
        return PrunePlan::Refused(format!(
            "the revision renders no objects; refusing to prune all {} applied objects (delete the Application to remove them)",
            previous.len()
        ));
    }
    let allowed = (previous.len() * max_percent.min(100) as usize / 100).max(1);
    if max_percent < 100 && stale.len() > allowed {
        return PrunePlan::Refused(format!(
            "pruning {} of {} applied objects is more than maxPrunePercent ({max_percent}%) allows; raise spec.syncPolicy.maxPrunePercent to allow it",
            stale.len(),
            previous.len()
        ));
    }
    PrunePlan::Delete(stale)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(ids: &[&str]) -> Vec<InventoryEntry> {
        ids.iter()
            .map(|id| InventoryEntry {
                id: id.to_string(),
                v: "v1".into(),
            })
            .collect()
    }

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ids_round_trip() {
        let id = ObjectId {
            group: "apps".into(),
            kind: "Deployment".into(),
            namespace: "default".into(),
            name: "web".into(),
        };
        assert_eq!(id.inventory_id(), "default_web_apps_Deployment");
        assert_eq!(ObjectId::parse(&id.inventory_id()), Some(id.clone()));
        let ns = ObjectId::parse("_team__Namespace").unwrap();
        assert!(ns.is_protected());
        assert_eq!(ns.display(), "Namespace team");
        assert_eq!(id.display(), "Deployment.apps default/web");
        assert_eq!(ObjectId::parse("junk"), None);
    }

    #[test]
    fn prune_only_what_left_and_never_everything() {
        let before = entries(&["d_a__ConfigMap", "d_b__ConfigMap", "d_c__ConfigMap"]);
        assert_eq!(
            plan_prune(
                &before,
                &set(&["d_a__ConfigMap", "d_b__ConfigMap", "d_c__ConfigMap"]),
                50
            ),
            PrunePlan::Delete(vec![])
        );
        assert_eq!(
            plan_prune(&before, &set(&["d_a__ConfigMap", "d_b__ConfigMap"]), 50),
            PrunePlan::Delete(entries(&["d_c__ConfigMap"]))
        );
        assert!(
            matches!(plan_prune(&before, &set(&[]), 100), PrunePlan::Refused(m) if m.contains("renders no objects"))
        );
        assert!(
            matches!(plan_prune(&before, &set(&["d_a__ConfigMap"]), 50), PrunePlan::Refused(m) if m.contains("maxPrunePercent"))
        );
        assert_eq!(
            plan_prune(&before, &set(&["d_a__ConfigMap"]), 100),
            PrunePlan::Delete(entries(&["d_b__ConfigMap", "d_c__ConfigMap"]))
        );
        // one object may always go, even from a small inventory
        let two = entries(&["d_a__ConfigMap", "d_b__ConfigMap"]);
        assert_eq!(
            plan_prune(&two, &set(&["d_a__ConfigMap"]), 10),
            PrunePlan::Delete(entries(&["d_b__ConfigMap"]))
        );
    }
}
