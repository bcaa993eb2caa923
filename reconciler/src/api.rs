//! The `Application` custom resource (gitops.kelson.dev/v1alpha1): what to deploy from where,
//! and the status that follows kstatus so `kubectl wait --for=condition=Ready` works.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of the reconciler's resources.
pub const GROUP: &str = "gitops.kelson.dev";
/// Field manager of every server-side apply the reconciler makes.
pub const FIELD_MANAGER: &str = "kelson-gitops";
/// Label on every applied object: which Application manages it (`NAMESPACE.NAME`, or a hash
/// when that is longer than a label value may be).
pub const APP_LABEL: &str = "gitops.kelson.dev/application";
/// Annotation on every applied object: `APPNS/APPNAME:GROUP/KIND:NS/NAME`, the exact identity
/// the object was applied under, so a copied label never makes an object prunable.
pub const TRACKING_ANNOTATION: &str = "gitops.kelson.dev/tracking-id";
/// Annotation on a Namespace, PersistentVolumeClaim or CustomResourceDefinition that allows
/// pruning it (`"true"`); on any object, `"false"` keeps it from ever being pruned.
pub const PRUNE_ANNOTATION: &str = "gitops.kelson.dev/prune";
/// Annotation on an Application: a new value asks for a sync now (`kelson app sync`); a value
/// ending in `;prune` also prunes when the policy does not.
pub const REQUESTED_AT_ANNOTATION: &str = "gitops.kelson.dev/requested-at";
/// Annotation on an Application pinned by `kelson app rollback`: the target revision to
/// follow again on `kelson app resume`.
pub const ROLLBACK_FROM_ANNOTATION: &str = "gitops.kelson.dev/rollback-from";
/// Annotation on a rendered object: apply waves in ascending order (default 0); a wave starts
/// once the objects the previous one applied are healthy.
pub const SYNC_WAVE_ANNOTATION: &str = "gitops.kelson.dev/sync-wave";

/// An Application: a path of a Git repository, kept applied to the cluster.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "gitops.kelson.dev",
    version = "v1alpha1",
    kind = "Application",
    plural = "applications",
    shortname = "app",
    namespaced,
    status = "ApplicationStatus",
    printcolumn = r#"{"name":"Revision","type":"string","jsonPath":".status.lastAppliedRevision"}"#,
    printcolumn = r#"{"name":"Sync","type":"string","jsonPath":".status.sync.status"}"#,
    printcolumn = r#"{"name":"Health","type":"string","jsonPath":".status.health.status"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].message","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationSpec {
    /// Where the manifests come from.
    pub source: Source,
    /// Where they go.
    #[serde(default)]
    pub destination: Destination,
    /// Automated or manual sync, pruning and self-healing.
    #[serde(default)]
    pub sync_policy: SyncPolicy,
    /// How often to check the repository and the cluster for changes, e.g. `60s` or `5m`
    /// (default 60s, jittered by up to 10%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// How long objects may stay unhealthy after a sync before the Application is Stalled,
    /// e.g. `5m` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_timeout: Option<String>,
    /// Stop reconciling (nothing is applied or pruned) until set back to false.
    #[serde(default)]
    pub suspend: bool,
    /// Fields that others manage (an autoscaler's replicas, a webhook's injected fields): they
    /// are left as the cluster has them, never shown as differences, never changed or removed
    /// (not sent when another server-side applier owns them, else applied with the live value).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore_differences: Vec<IgnoreDifference>,
    /// Applications in the same namespace that must be Ready before this one syncs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// A ServiceAccount of the Application's namespace to sync as: every dry run, apply, prune
    /// and health check impersonates `system:serviceaccount:NAMESPACE:NAME`, so the sync can do
    /// only what RBAC grants that account (default: the reconciler's own identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
}

/// Fields of matching objects to leave alone.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IgnoreDifference {
    /// API group (empty or absent for the core group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub kind: String,
    /// Only the object of this name (default: every object of the kind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// RFC 6901 JSON pointers, e.g. `/spec/replicas`.
    pub json_pointers: Vec<String>,
}

/// A path of a Git repository at a revision.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// `https://…`, `ssh://…`, `user@host:path`, `file:///path` or an absolute path.
    #[serde(rename = "repoURL")]
    pub repo_url: String,
    /// A branch, a tag, a full commit SHA, `HEAD` (the remote's default branch; the default),
    /// or a semver range over the tags (`>=1.2.0 <2`, `~1.4`, `1.x`): the highest matching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_revision: Option<String>,
    /// Directory inside the repository (default: its root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// How a plain directory of YAML/JSON manifests is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<Directory>,
    /// A Secret in the Application's namespace with credentials: `username` and `password`
    /// (or `bearerToken`) for https; `identity` (private key) and `known_hosts` for ssh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    /// Apply only commits signed by a trusted key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<Verify>,
}

/// Commit signature verification.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Verify {
    /// `HEAD` (the default): the target commit must be signed by a trusted key; `Strict`: it
    /// and every commit it descends from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// A Secret in the Application's namespace with the trusted keys: OpenPGP public keys
    /// (ASCII-armored) under names ending in `.asc`, SSH public keys under names ending in
    /// `.pub` (one per line).
    pub secret_ref: SecretRef,
}

/// A Secret in the same namespace.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
pub struct SecretRef {
    pub name: String,
}

/// Reading a directory of plain manifests.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Directory {
    /// Read subdirectories too (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recurse: Option<bool>,
    /// Glob of files to read, relative to the path, e.g. `*.yaml` or `{a,b}/*.yaml`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include: Option<String>,
    /// Glob of files to skip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<String>,
}

/// Where the objects are applied.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    /// Namespace for namespaced objects that name none (default: the Application's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Another cluster: a kubeconfig in a Secret of the Application's namespace (default: this
    /// cluster). The Application and its status stay here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube_config: Option<KubeConfigRef>,
}

/// A kubeconfig kept in a Secret.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KubeConfigRef {
    pub secret_ref: SecretRef,
    /// The Secret's key holding it (default: `value`, else `value.yaml`, as Flux reads it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// How and when changes are applied.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SyncPolicy {
    /// Apply every new revision and drift automatically; without it, only `kelson app sync`
    /// applies, and the Application reports OutOfSync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automated: Option<Automated>,
    /// `CreateNamespace=true` creates the destination namespace when missing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sync_options: Vec<String>,
    /// Refuse a prune that would delete more than this percentage of the applied objects
    /// (default 50; 100 turns the guard off). A render that produces nothing never prunes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prune_percent: Option<u32>,
}

/// Automated sync.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Automated {
    /// Delete objects that were applied before and are no longer rendered.
    #[serde(default)]
    pub prune: bool,
    /// Revert changes made to managed objects outside Git (otherwise they are reported).
    #[serde(default)]
    pub self_heal: bool,
}

/// Observed state, following kstatus: conditions Ready, Reconciling and Stalled.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Whether the cluster matches the revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncStatus>,
    /// The worst health of the applied objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthStatus>,
    /// The commit last applied completely.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_revision: Option<String>,
    /// The commit last tried, successfully or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempted_revision: Option<String>,
    /// The value of the requested-at annotation last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
    /// Every object applied by this Application, as `NAMESPACE_NAME_GROUP_KIND` plus version.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inventory: Vec<InventoryEntry>,
    /// The last webhook delivery that asked for this Application's repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_webhook: Option<WebhookDelivery>,
    /// The latest sync attempts, newest first (the audit log keeps all of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
}

/// A condition in the Kubernetes convention.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    pub last_transition_time: String,
}

/// Sync state.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    /// `Synced`, `OutOfSync` or `Unknown`.
    pub status: String,
    /// The commit compared against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Objects that differ from the revision (at most 20 listed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub out_of_sync: Vec<String>,
}

/// Health state.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HealthStatus {
    /// `Healthy`, `Progressing`, `Degraded`, `Suspended`, `Missing` or `Unknown`.
    pub status: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// A webhook delivery.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WebhookDelivery {
    /// `github`, `gitlab` or `gitea`.
    pub provider: String,
    /// The forge's delivery id.
    pub id: String,
    pub received_at: String,
    /// The pushed ref.
    pub reference: String,
}

/// One applied object.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
pub struct InventoryEntry {
    /// `NAMESPACE_NAME_GROUP_KIND` (namespace empty for cluster-scoped objects), as Flux writes it.
    pub id: String,
    /// API version the object was applied with.
    pub v: String,
}

/// One sync attempt.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    pub revision: String,
    /// `Succeeded`, `Failed`, `PruneRefused` or `OutOfSync` (manual policy).
    pub result: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// SHA-256 of the rendered objects.
    pub digest: String,
    pub applied: u32,
    pub pruned: u32,
    pub started_at: String,
    pub duration_ms: u64,
}
