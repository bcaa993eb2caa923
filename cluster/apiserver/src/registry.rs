//! The resource types the server knows: built-in kinds and, later, custom resources.
//!
//! A [`ResourceType`] says everything the generic REST machinery needs about one resource: its
//! group/version/kind and names for discovery, its scope, its subresources, where its objects
//! live in storage and which schema validates them. Per-kind behaviour (defaults, validation,
//! status handling, table columns) is looked up by kind in the `kinds` module.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;
use serde_json::Value;

/// The standard verbs of a full REST resource.
pub const STANDARD_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// A subresource as discovery describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subresource {
    /// Name after the slash, e.g. `status`.
    pub name: String,
    /// Group of the kind it takes and returns.
    pub group: String,
    /// Version of that kind.
    pub version: String,
    /// The kind, e.g. `Scale`.
    pub kind: String,
    /// Verbs it supports.
    pub verbs: Vec<String>,
}

/// Where a scalable resource keeps its replica counts (JSON pointers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScalePaths {
    /// e.g. `/spec/replicas`.
    pub spec_replicas: String,
    /// e.g. `/status/replicas`.
    pub status_replicas: String,
    /// e.g. `/status/selector` (a string selector), if any.
    pub label_selector: Option<String>,
}

/// Where the schema of a resource comes from.
#[derive(Clone, Debug)]
pub enum SchemaSource {
    /// A definition of the built-in Kubernetes OpenAPI, e.g. `io.k8s.api.core.v1.Pod`.
    Builtin(&'static str),
    /// A CustomResourceDefinition's `openAPIV3Schema`.
    Custom(Arc<Value>),
}

/// An additional printer column of a custom resource.
#[derive(Clone, Debug, PartialEq)]
pub struct PrinterColumn {
    /// Column header.
    pub name: String,
    /// OpenAPI type of the cell.
    pub type_: String,
    /// OpenAPI format.
    pub format: String,
    /// Column description.
    pub description: String,
    /// 0 = default output, higher = wide only.
    pub priority: i64,
    /// JSONPath (simple dotted form) into the object.
    pub json_path: String,
}

/// One REST resource served by the API server.
#[derive(Clone, Debug)]
pub struct ResourceType {
    /// API group; empty for the core group.
    pub group: String,
    /// Version, e.g. `v1`.
    pub version: String,
    /// Kind, e.g. `Pod`.
    pub kind: String,
    /// Resource name in URLs, e.g. `pods`.
    pub plural: String,
    /// Singular name, e.g. `pod`.
    pub singular: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// kubectl short names.
    pub short_names: Vec<String>,
    /// Categories (`all` makes `kubectl get all` include it).
    pub categories: Vec<String>,
    /// Verbs of the main resource.
    pub verbs: Vec<String>,
    /// Subresources served.
    pub subresources: Vec<Subresource>,
    /// Storage key prefix, ending in `/`, e.g. `/registry/pods/`.
    pub storage_prefix: String,
    /// The schema objects are validated against.
    pub schema: Option<SchemaSource>,
    /// Whether spec changes bump `metadata.generation`.
    pub tracks_generation: bool,
    /// Scale subresource paths, when scalable.
    pub scale: Option<ScalePaths>,
    /// Extra printer columns (custom resources).
    pub printer_columns: Vec<PrinterColumn>,
    /// Whether this is a custom resource defined by a CRD.
    pub custom: bool,
    /// A review (SelfSubjectAccessReview, TokenReview, ...): created, answered, never stored.
    pub review: bool,
}

impl ResourceType {
    /// `apiVersion` of objects of this type.
    #[must_use]
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Whether a subresource of this name is served.
    #[must_use]
    pub fn has_subresource(&self, name: &str) -> bool {
        self.subresources.iter().any(|s| s.name == name)
    }

    /// The `status` subresource is served, so the main resource ignores status changes.
    #[must_use]
    pub fn has_status(&self) -> bool {
        self.has_subresource("status")
    }

    /// Storage key of one object.
    #[must_use]
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(namespace) if self.namespaced => {
                format!("{}{namespace}/{name}", self.storage_prefix)
            }
            _ => format!("{}{name}", self.storage_prefix),
        }
    }

    /// Storage prefix of a list, in one namespace or across all.
    #[must_use]
    pub fn list_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(namespace) if self.namespaced => format!("{}{namespace}/", self.storage_prefix),
            _ => self.storage_prefix.clone(),
        }
    }

    /// `group/kind` for messages (`Deployment.apps`).
    #[must_use]
    pub fn group_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }
}

/// All resource types, shared by every request. Custom resources come and go at runtime.
#[derive(Default)]
pub struct Registry {
    types: RwLock<Vec<Arc<ResourceType>>>,
    /// Bumped whenever the set of types changes, so derived documents know when to rebuild.
    generation: AtomicU64,
}

impl Registry {
    /// A registry with the built-in kinds.
    #[must_use]
    pub fn with_builtins() -> Self {
        let registry = Self::default();
        *registry.types.write() = crate::kinds::builtin_types()
            .into_iter()
            .map(Arc::new)
            .collect();
        registry
    }

    /// Every type, in registration order.
    #[must_use]
    pub fn all(&self) -> Vec<Arc<ResourceType>> {
        self.types.read().clone()
    }

    /// The type served at `group/version/plural`.
    #[must_use]
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.types
            .read()
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
            .cloned()
    }

    /// The type of a kind in a group (any version; the first registered wins).
    #[must_use]
    pub fn by_kind(&self, group: &str, kind: &str) -> Option<Arc<ResourceType>> {
        self.types
            .read()
            .iter()
            .find(|t| t.group == group && t.kind == kind)
            .cloned()
    }

    /// Whether any resource is served in `group/version`.
    #[must_use]
    pub fn serves_group_version(&self, group: &str, version: &str) -> bool {
        self.types
            .read()
            .iter()
            .any(|t| t.group == group && t.version == version)
    }

    /// Replaces every custom type of `group` and `plural` with `types` (one per served version).
    pub fn set_custom(&self, group: &str, plural: &str, types: Vec<ResourceType>) {
        let mut all = self.types.write();
        all.retain(|t| !(t.custom && t.group == group && t.plural == plural));
        all.extend(types.into_iter().map(Arc::new));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// A number that changes whenever the set of types changes.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}
