//! RBAC authorization: Roles, ClusterRoles and their bindings decide what each user may do, as
//! kube-apiserver's RBAC authorizer decides it. Members of `system:masters` may do everything.
//!
//! The [`Authorizer`] keeps every Role, ClusterRole, RoleBinding and ClusterRoleBinding in memory
//! (listed at start, then followed with a storage watch, so servers sharing one etcd see each
//! other's changes) and answers from a [`Policy`] rebuilt on each change: rule sets indexed by
//! user and group, so a decision reads only the grants of the asking user. ClusterRoles with an
//! `aggregationRule` hold the rules of the ClusterRoles their selectors match (written back to
//! the stored object, as Kubernetes' aggregation controller does). Writes of RBAC objects return
//! once the authorizer has seen them, so a binding works as soon as it is created.
//!
//! [`bootstrap`] holds the default roles and bindings (cluster-admin, admin, edit, view, the
//! `system:` roles of each component); [`review`] answers `kubectl auth can-i` and `whoami`.

pub mod bootstrap;
pub mod review;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use kelson_storage::{Event, ListRequest, Revision, Storage, WatchMessage};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::ApiServer;
use crate::auth::User;
use crate::error::ApiError;
use crate::registry::ResourceType;

/// The group whose members may do everything, whatever the policy says.
pub const MASTERS: &str = "system:masters";

/// Where each RBAC kind is stored, in the order of [`Authorizer`]'s watches.
const PREFIXES: [&str; 4] = [
    "/registry/clusterroles/",
    "/registry/roles/",
    "/registry/clusterrolebindings/",
    "/registry/rolebindings/",
];

/// One rule of a Role or ClusterRole (`rbac.authorization.k8s.io/v1` PolicyRule).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// Verbs (`*` for all).
    #[serde(default)]
    pub verbs: Vec<String>,
    /// API groups (`""` for core, `*` for all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_groups: Vec<String>,
    /// Resources, `resource/subresource`, `*/subresource` or `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    /// Object names (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_names: Vec<String>,
    /// Paths outside the resource API (`/healthz`, `/apis/*`).
    #[serde(
        default,
        rename = "nonResourceURLs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub non_resource_urls: Vec<String>,
}

/// Whether a rule's path (`/apis/*`, `*`, `/version`) matches `path`.
fn url_matches(rule: &str, path: &str) -> bool {
    rule == "*" || rule == path || rule.strip_suffix('*').is_some_and(|p| path.starts_with(p))
}

/// A rule broken into rules of one verb, group, resource and name each (paths one by one),
/// so that a wanted rule is covered when each of its parts is held by some rule, as
/// Kubernetes compares them.
fn parts(rule: &Rule) -> Vec<Rule> {
    let one = |value: &String| vec![value.clone()];
    let mut out = Vec::new();
    for verb in &rule.verbs {
        for url in &rule.non_resource_urls {
            out.push(Rule {
                verbs: one(verb),
                non_resource_urls: one(url),
                ..Rule::default()
            });
        }
        for group in &rule.api_groups {
            for resource in &rule.resources {
                let names: Vec<Vec<String>> = if rule.resource_names.is_empty() {
                    vec![Vec::new()]
                } else {
                    rule.resource_names.iter().map(one).collect()
                };
                for names in names {
                    out.push(Rule {
                        verbs: one(verb),
                        api_groups: one(group),
                        resources: one(resource),
                        resource_names: names,
                        ..Rule::default()
                    });
                }
            }
        }
    }
    out
}

fn has(list: &[String], value: &str) -> bool {
    list.iter().any(|v| v == "*" || v == value)
}

impl Rule {
    /// Whether this rule allows the request.
    #[must_use]
    pub fn allows(&self, attributes: &Attributes<'_>) -> bool {
        if !has(&self.verbs, attributes.verb) {
            return false;
        }
        match attributes.target {
            Target::Resource {
                group,
                resource,
                subresource,
                name,
                ..
            } => {
                has(&self.api_groups, group)
                    && self.resources.iter().any(|r| {
                        r == "*"
                            || if subresource.is_empty() {
                                r == resource
                            } else {
                                r.split_once('/') == Some((resource, subresource))
                                    || r.strip_prefix("*/") == Some(subresource)
                            }
                    })
                    && (self.resource_names.is_empty()
                        || (!name.is_empty() && self.resource_names.iter().any(|n| n == name)))
            }
            Target::Path(path) => self
                .non_resource_urls
                .iter()
                .any(|url| url_matches(url, path)),
        }
    }

    /// Whether this rule allows everything `other` allows (used to stop users from granting
    /// what they do not hold themselves).
    #[must_use]
    pub fn covers(&self, other: &Rule) -> bool {
        let within = |mine: &[String], theirs: &[String]| {
            mine.iter().any(|m| m == "*") || theirs.iter().all(|t| mine.contains(t))
        };
        if !within(&self.verbs, &other.verbs) {
            return false;
        }
        // both parts of a rule that names resources and paths must be covered
        let paths = other
            .non_resource_urls
            .iter()
            .all(|url| self.non_resource_urls.iter().any(|m| url_matches(m, url)));
        if !paths {
            return false;
        }
        if other.resources.is_empty() && other.api_groups.is_empty() {
            return true;
        }
        within(&self.api_groups, &other.api_groups)
            && other.resources.iter().all(|r| {
                self.resources.iter().any(|m| {
                    m == "*"
                        || m == r
                        || (m.starts_with("*/")
                            && r.split_once('/').map(|(_, sub)| sub) == m.strip_prefix("*/"))
                })
            })
            && (self.resource_names.is_empty()
                || (!other.resource_names.is_empty()
                    && other
                        .resource_names
                        .iter()
                        .all(|n| self.resource_names.contains(n))))
    }
}

/// What a request asks to do.
#[derive(Clone, Copy, Debug)]
pub struct Attributes<'a> {
    /// Kubernetes' verb: get, list, watch, create, update, patch, delete, deletecollection,
    /// impersonate, bind, escalate … (for paths: get, post, put, patch, delete).
    pub verb: &'a str,
    /// On what.
    pub target: Target<'a>,
}

/// A resource or a path.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    /// An API resource.
    Resource {
        /// API group ("" for core).
        group: &'a str,
        /// Resource (plural).
        resource: &'a str,
        /// Subresource ("" for none).
        subresource: &'a str,
        /// Namespace ("" for cluster scope).
        namespace: &'a str,
        /// Object name ("" for collections).
        name: &'a str,
    },
    /// A path outside the resource API.
    Path(&'a str),
}

impl<'a> Attributes<'a> {
    /// A resource request.
    #[must_use]
    pub fn resource(
        verb: &'a str,
        group: &'a str,
        resource: &'a str,
        subresource: &'a str,
        namespace: &'a str,
        name: &'a str,
    ) -> Self {
        Self {
            verb,
            target: Target::Resource {
                group,
                resource,
                subresource,
                namespace,
                name,
            },
        }
    }

    /// A request for a path.
    #[must_use]
    pub fn path(verb: &'a str, path: &'a str) -> Self {
        Self {
            verb,
            target: Target::Path(path),
        }
    }

    fn namespace(&self) -> &'a str {
        match self.target {
            Target::Resource { namespace, .. } => namespace,
            Target::Path(_) => "",
        }
    }
}

/// The 403 kube-apiserver answers when `user` may not do what `attributes` ask, word for word.
#[must_use]
pub fn forbidden(user: &User, attributes: &Attributes<'_>) -> ApiError {
    let verb = attributes.verb;
    match attributes.target {
        Target::Resource {
            group,
            resource,
            subresource,
            namespace,
            name,
        } => {
            let qualified = if group.is_empty() {
                resource.to_owned()
            } else {
                format!("{resource}.{group}")
            };
            let subject = if name.is_empty() {
                format!("{qualified} is forbidden")
            } else {
                format!("{qualified} \"{name}\" is forbidden")
            };
            let what = if subresource.is_empty() {
                resource.to_owned()
            } else {
                format!("{resource}/{subresource}")
            };
            let scope = if namespace.is_empty() {
                "at the cluster scope".to_owned()
            } else {
                format!("in the namespace \"{namespace}\"")
            };
            let mut error = ApiError::forbidden(format!(
                "{subject}: User \"{}\" cannot {verb} resource \"{what}\" in API group \"{group}\" {scope}",
                user.name
            ));
            error.details = Some(json!({"name": name, "group": group, "kind": resource}));
            error
        }
        Target::Path(path) => ApiError::forbidden(format!(
            "forbidden: User \"{}\" cannot {verb} path \"{path}\"",
            user.name
        )),
    }
}

/// Rule sets granted by one binding, with how kube-apiserver explains the grant.
#[derive(Clone, Debug)]
struct Grant {
    rules: Arc<[Rule]>,
    reason: Arc<str>,
}

/// Grants indexed by the user and group names bindings name.
#[derive(Debug, Default)]
struct Grants {
    users: HashMap<String, Vec<Grant>>,
    groups: HashMap<String, Vec<Grant>>,
}

impl Grants {
    fn add(&mut self, subject: &Value, namespace: &str, grant: &Grant) {
        let field = |name: &str| subject.get(name).and_then(Value::as_str).unwrap_or("");
        let name = field("name");
        if name.is_empty() {
            return;
        }
        match field("kind") {
            "User" => self.users.entry(name.to_owned()).or_default(),
            "Group" => self.groups.entry(name.to_owned()).or_default(),
            "ServiceAccount" => {
                let namespace = match field("namespace") {
                    "" => namespace,
                    ns => ns,
                };
                if namespace.is_empty() {
                    return;
                }
                self.users
                    .entry(format!("system:serviceaccount:{namespace}:{name}"))
                    .or_default()
            }
            _ => return,
        }
        .push(grant.clone());
    }

    fn of<'a>(&'a self, user: &'a User) -> impl Iterator<Item = &'a Grant> + 'a {
        self.users.get(&user.name).into_iter().flatten().chain(
            user.groups
                .iter()
                .filter_map(|g| self.groups.get(g))
                .flatten(),
        )
    }
}

/// Every RBAC object, by storage key.
type Stored = BTreeMap<String, Value>;

/// The policy at one moment: what every user and group was granted, cluster-wide and per
/// namespace.
#[derive(Debug, Default)]
pub struct Policy {
    cluster: Grants,
    namespaced: HashMap<String, Grants>,
    /// Effective rules of each ClusterRole (aggregation resolved).
    cluster_roles: HashMap<String, Arc<[Rule]>>,
}

fn rules_of(object: &Value) -> Vec<Rule> {
    object
        .get("rules")
        .and_then(|r| serde_json::from_value::<Vec<Rule>>(r.clone()).ok())
        .unwrap_or_default()
}

fn labels_of(object: &Value) -> BTreeMap<String, String> {
    object
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

fn selectors_of(object: &Value) -> Option<&Vec<Value>> {
    object
        .pointer("/aggregationRule/clusterRoleSelectors")
        .and_then(Value::as_array)
}

fn str_at<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Rules without repeats, in first-seen order.
fn distinct(rules: impl IntoIterator<Item = Rule>) -> Vec<Rule> {
    let mut seen = HashSet::new();
    rules
        .into_iter()
        .filter(|rule| seen.insert(rule.clone()))
        .collect()
}

impl Policy {
    fn build(stored: &Stored) -> Self {
        let by_prefix = |prefix: &'static str| {
            stored
                .iter()
                .filter(move |(key, _)| key.starts_with(prefix))
                .map(|(_, object)| object)
        };
        let cluster_roles: HashMap<&str, &Value> = by_prefix(PREFIXES[0])
            .map(|role| (str_at(role, "/metadata/name"), role))
            .collect();
        let effective: HashMap<String, Arc<[Rule]>> = cluster_roles
            .keys()
            .map(|name| {
                let rules = aggregate(&cluster_roles, name, &mut vec![]);
                ((*name).to_owned(), Arc::from(rules))
            })
            .collect();
        let roles: HashMap<(&str, &str), Arc<[Rule]>> = by_prefix(PREFIXES[1])
            .map(|role| {
                (
                    (
                        str_at(role, "/metadata/namespace"),
                        str_at(role, "/metadata/name"),
                    ),
                    Arc::from(rules_of(role)),
                )
            })
            .collect();
        let mut policy = Self::default();
        for binding in by_prefix(PREFIXES[2]) {
            let role = str_at(binding, "/roleRef/name");
            if str_at(binding, "/roleRef/kind") != "ClusterRole" {
                continue;
            }
            let Some(rules) = effective.get(role) else {
                continue;
            };
            let reason = format!(
                "RBAC: allowed by ClusterRoleBinding \"{}\" of ClusterRole \"{role}\"",
                str_at(binding, "/metadata/name")
            );
            add_subjects(&mut policy.cluster, binding, "", rules, reason);
        }
        for binding in by_prefix(PREFIXES[3]) {
            let namespace = str_at(binding, "/metadata/namespace");
            let role = str_at(binding, "/roleRef/name");
            let kind = str_at(binding, "/roleRef/kind");
            let rules = match kind {
                "ClusterRole" => effective.get(role),
                "Role" => roles.get(&(namespace, role)),
                _ => None,
            };
            let Some(rules) = rules else {
                continue;
            };
            let reason = format!(
                "RBAC: allowed by RoleBinding \"{}/{namespace}\" of {kind} \"{role}\"",
                str_at(binding, "/metadata/name")
            );
            let grants = policy.namespaced.entry(namespace.to_owned()).or_default();
            add_subjects(grants, binding, namespace, rules, reason);
        }
        policy.cluster_roles = effective;
        policy
    }

    fn grants<'a>(
        &'a self,
        user: &'a User,
        namespace: &str,
    ) -> impl Iterator<Item = &'a Grant> + 'a {
        let local = (!namespace.is_empty())
            .then(|| self.namespaced.get(namespace))
            .flatten();
        self.cluster
            .of(user)
            .chain(local.into_iter().flat_map(move |g| g.of(user)))
    }

    /// Whether `user` may do what `attributes` ask, and the binding that allows it.
    #[must_use]
    pub fn decide(&self, user: &User, attributes: &Attributes<'_>) -> Option<Arc<str>> {
        if user.groups.iter().any(|g| g == MASTERS) {
            return Some(Arc::from(""));
        }
        self.grants(user, attributes.namespace())
            .find(|grant| grant.rules.iter().any(|rule| rule.allows(attributes)))
            .map(|grant| grant.reason.clone())
    }

    /// Every rule that applies to `user` in `namespace` ("" for cluster-wide rules only).
    #[must_use]
    pub fn rules_for(&self, user: &User, namespace: &str) -> Vec<Rule> {
        if user.groups.iter().any(|g| g == MASTERS) {
            return vec![
                Rule {
                    verbs: vec!["*".into()],
                    api_groups: vec!["*".into()],
                    resources: vec!["*".into()],
                    ..Rule::default()
                },
                Rule {
                    verbs: vec!["*".into()],
                    non_resource_urls: vec!["*".into()],
                    ..Rule::default()
                },
            ];
        }
        distinct(
            self.grants(user, namespace)
                .flat_map(|grant| grant.rules.iter().cloned()),
        )
    }

    /// The effective rules of a ClusterRole.
    #[must_use]
    pub fn cluster_role(&self, name: &str) -> Option<Arc<[Rule]>> {
        self.cluster_roles.get(name).cloned()
    }
}

fn add_subjects(
    grants: &mut Grants,
    binding: &Value,
    namespace: &str,
    rules: &Arc<[Rule]>,
    reason: String,
) {
    let grant = Grant {
        rules: rules.clone(),
        reason: Arc::from(reason),
    };
    for subject in binding
        .get("subjects")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        grants.add(subject, namespace, &grant);
    }
}

/// The rules of a ClusterRole: its own, or for an aggregated one those of every ClusterRole its
/// selectors match (themselves resolved, cycles cut).
fn aggregate<'a>(
    roles: &HashMap<&'a str, &Value>,
    name: &'a str,
    visiting: &mut Vec<&'a str>,
) -> Vec<Rule> {
    let Some(role) = roles.get(name) else {
        return Vec::new();
    };
    let Some(selectors) = selectors_of(role) else {
        return rules_of(role);
    };
    visiting.push(name);
    let mut matched: Vec<&str> = roles
        .iter()
        .filter(|(other, _)| !visiting.contains(other))
        .filter(|(_, other)| {
            let labels = labels_of(other);
            selectors.iter().any(|s| {
                crate::selectors::label_selector_object_matches(s, &labels) && !is_empty_selector(s)
            })
        })
        .map(|(other, _)| *other)
        .collect();
    matched.sort_unstable();
    let rules = distinct(
        matched
            .into_iter()
            .flat_map(|other| aggregate(roles, other, visiting)),
    );
    visiting.pop();
    rules
}

/// Kubernetes' aggregation ignores empty selectors (they would match every role).
fn is_empty_selector(selector: &Value) -> bool {
    let empty = |field: &str| {
        selector.get(field).is_none_or(|v| {
            v.as_object().is_some_and(serde_json::Map::is_empty)
                || v.as_array().is_some_and(Vec::is_empty)
        })
    };
    empty("matchLabels") && empty("matchExpressions")
}

/// The authorizer of one API server. See the module documentation.
pub struct Authorizer {
    policy: RwLock<Arc<Policy>>,
    stored: Mutex<Stored>,
    /// The revision each watch (in [`PREFIXES`] order) has delivered up to.
    seen: tokio::sync::watch::Sender<[Revision; 4]>,
}

impl Default for Authorizer {
    fn default() -> Self {
        Self {
            policy: RwLock::new(Arc::new(Policy::default())),
            stored: Mutex::new(Stored::new()),
            seen: tokio::sync::watch::Sender::new([0; 4]),
        }
    }
}

impl Authorizer {
    /// The current policy.
    #[must_use]
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.read().clone()
    }

    /// Whether `user` may do what `attributes` ask.
    #[must_use]
    pub fn allows(&self, user: &User, attributes: &Attributes<'_>) -> bool {
        user.groups.iter().any(|g| g == MASTERS)
            || self.policy.read().decide(user, attributes).is_some()
    }

    /// [`Authorizer::allows`], as the 403 kube-apiserver answers when not.
    ///
    /// # Errors
    /// 403 Forbidden naming the user, verb, resource and scope.
    pub fn check(&self, user: &User, attributes: &Attributes<'_>) -> Result<(), ApiError> {
        if self.allows(user, attributes) {
            return Ok(());
        }
        if user.name.starts_with("system:") && !user.name.starts_with("system:serviceaccount:") {
            // a component denied is a bug or a misconfiguration, worth a line in the log
            tracing::warn!(user = %user.name, ?attributes, "component request forbidden");
        }
        Err(forbidden(user, attributes))
    }

    fn rebuild(&self, stored: &Stored) {
        let policy = Policy::build(stored);
        *self.policy.write() = Arc::new(policy);
    }

    /// Reads every RBAC object from storage; returns the revision read.
    ///
    /// # Errors
    /// When storage cannot be read.
    pub async fn load(&self, storage: &dyn Storage) -> Result<Revision, kelson_storage::Error> {
        let mut stored = Stored::new();
        let mut revision = None;
        for prefix in PREFIXES {
            let response = storage
                .list(ListRequest {
                    prefix: prefix.to_owned(),
                    revision,
                    ..ListRequest::default()
                })
                .await?;
            revision = Some(response.revision);
            for kv in response.kvs {
                if let Ok(object) = serde_json::from_slice::<Value>(&kv.value) {
                    stored.insert(kv.key, object);
                }
            }
        }
        let revision = revision.unwrap_or_default();
        self.rebuild(&stored);
        *self.stored.lock() = stored;
        self.seen.send_replace([revision; 4]);
        Ok(revision)
    }

    fn apply(&self, index: usize, event: &Event) {
        let mut stored = self.stored.lock();
        match event {
            Event::Created(kv) | Event::Updated { kv, .. } => {
                match serde_json::from_slice::<Value>(&kv.value) {
                    Ok(object) => stored.insert(kv.key.clone(), object),
                    Err(_) => stored.remove(&kv.key),
                };
            }
            Event::Deleted { prev, .. } => {
                stored.remove(&prev.key);
            }
        }
        self.rebuild(&stored);
        drop(stored);
        let revision = event.revision();
        self.seen
            .send_modify(|seen| seen[index] = seen[index].max(revision));
    }

    /// Waits (up to `timeout`) until the watch of `key`'s kind has delivered `revision`.
    pub async fn caught_up(&self, key: &str, revision: Revision, timeout: Duration) -> bool {
        let Some(index) = PREFIXES.iter().position(|p| key.starts_with(p)) else {
            return true;
        };
        let mut seen = self.seen.subscribe();
        tokio::time::timeout(timeout, seen.wait_for(|seen| seen[index] >= revision))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Follows storage from `after` until `shutdown`: applies every change, writes the rules
    /// of aggregated ClusterRoles back, and lists again when a watch ends.
    pub async fn follow(
        server: Arc<ApiServer>,
        storage: Arc<dyn Storage>,
        mut after: Revision,
        shutdown: CancellationToken,
    ) {
        loop {
            aggregate_stored(&server).await;
            // one watch per kind; any of them failing or ending means listing again, so that
            // no kind goes stale
            let mut streams = Vec::new();
            for (index, prefix) in PREFIXES.iter().enumerate() {
                match storage.watch(prefix, after).await {
                    Ok(stream) => streams.push(
                        stream
                            .map(move |m| Some((index, m)))
                            .chain(futures::stream::once(async { None }))
                            .boxed(),
                    ),
                    Err(error) => {
                        tracing::warn!(%error, "RBAC watch failed");
                        streams.clear();
                        break;
                    }
                }
            }
            let mut merged = futures::stream::select_all(streams);
            loop {
                let message = tokio::select! {
                    () = shutdown.cancelled() => return,
                    message = merged.next() => message.flatten(),
                };
                match message {
                    Some((index, Ok(WatchMessage::Event(event)))) => {
                        server.authorizer.apply(index, &event);
                        if index == 0 {
                            aggregate_stored(&server).await;
                        }
                    }
                    Some((index, Ok(WatchMessage::Progress(revision)))) => {
                        server
                            .authorizer
                            .seen
                            .send_modify(|seen| seen[index] = seen[index].max(revision));
                    }
                    Some((_, Err(error))) => {
                        tracing::warn!(%error, "RBAC watch ended; listing again");
                        break;
                    }
                    None => break,
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            match server.authorizer.load(storage.as_ref()).await {
                Ok(revision) => after = revision,
                Err(error) => tracing::warn!(%error, "RBAC list failed"),
            }
        }
    }
}

/// Writes the resolved rules of aggregated ClusterRoles whose stored rules differ, so that
/// `kubectl describe clusterrole view` shows what the role grants.
async fn aggregate_stored(server: &Arc<ApiServer>) {
    let stale: Vec<(String, Arc<[Rule]>)> = {
        let stored = server.authorizer.stored.lock();
        let policy = server.authorizer.policy();
        stored
            .iter()
            .filter(|(key, role)| key.starts_with(PREFIXES[0]) && selectors_of(role).is_some())
            .filter_map(|(_, role)| {
                let name = str_at(role, "/metadata/name");
                let effective = policy.cluster_role(name)?;
                (rules_of(role) != *effective).then(|| (name.to_owned(), effective))
            })
            .collect()
    };
    let Some(rt) = server
        .registry
        .lookup("rbac.authorization.k8s.io", "v1", "clusterroles")
    else {
        return;
    };
    for (name, rules) in stale {
        let Ok(Some(mut role)) = server.objects.try_get(&rt, None, &name).await else {
            continue;
        };
        let Ok(revision) = crate::meta::meta_str(&role, "resourceVersion")
            .unwrap_or("")
            .parse::<Revision>()
        else {
            continue;
        };
        role["rules"] = serde_json::to_value(&*rules).unwrap_or_else(|_| json!([]));
        // a conflict means another writer got there first; its event brings us back here
        let _ = server.objects.update(&rt, role, revision).await;
    }
}

/// Admission of Roles, ClusterRoles and bindings: nobody grants what they do not hold. A role's
/// rules must be within the writer's own (or the writer may `escalate` it); a binding's role
/// must be within the writer's rules in that namespace (or the writer may `bind` it). Aggregated
/// ClusterRoles need `escalate`, since their rules come from elsewhere.
///
/// # Errors
/// 403 naming the rules the writer does not hold.
pub fn admit(
    server: &ApiServer,
    user: &User,
    rt: &ResourceType,
    object: &Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    if rt.group != "rbac.authorization.k8s.io" {
        return Ok(());
    }
    // a binding's role is fixed at creation, as in Kubernetes
    if let Some(old) = old
        && rt.kind.ends_with("Binding")
        && old.get("roleRef") != object.get("roleRef")
    {
        return Err(ApiError::invalid(
            &rt.kind,
            &rt.group,
            crate::meta::name(object),
            vec![crate::error::Cause::invalid(
                "roleRef",
                object.get("roleRef").unwrap_or(&Value::Null),
                "cannot change roleRef",
            )],
        ));
    }
    if user.groups.iter().any(|g| g == MASTERS) {
        return Ok(());
    }
    let namespace = crate::meta::namespace(object).unwrap_or("");
    let name = crate::meta::name(object);
    let policy = server.authorizer.policy();
    let may = |verb: &str, resource: &str, name: &str| {
        policy
            .decide(
                user,
                &Attributes::resource(verb, &rt.group, resource, "", namespace, name),
            )
            .is_some()
    };
    let (wanted, waiver) = match rt.kind.as_str() {
        "Role" | "ClusterRole" => {
            let rules = rules_of(object);
            if rt.kind == "Role" && rules.iter().any(|r| !r.non_resource_urls.is_empty()) {
                return Err(ApiError::bad_request(format!(
                    "roles.{} \"{name}\" is invalid: rules: nonResourceURLs are not allowed in namespaced Roles",
                    rt.group
                )));
            }
            if rules
                .iter()
                .any(|r| !r.non_resource_urls.is_empty() && !r.resources.is_empty())
            {
                return Err(ApiError::bad_request(format!(
                    "{}.{} \"{name}\" is invalid: rules: a rule names either resources or nonResourceURLs, not both",
                    rt.plural, rt.group
                )));
            }
            if rt.kind == "ClusterRole"
                && selectors_of(object).is_some()
                && !may("escalate", &rt.plural, name)
            {
                return Err(ApiError::forbidden(format!(
                    "{}.{} \"{name}\" is forbidden: user \"{}\" must have escalate permission to write a ClusterRole with an aggregationRule",
                    rt.plural, rt.group, user.name
                )));
            }
            (rules, may("escalate", &rt.plural, name))
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            let role = str_at(object, "/roleRef/name");
            let rules = match str_at(object, "/roleRef/kind") {
                "ClusterRole" => policy.cluster_role(role).map(|r| r.to_vec()),
                "Role" => {
                    let key = format!("{}{namespace}/{role}", PREFIXES[1]);
                    server.authorizer.stored.lock().get(&key).map(rules_of)
                }
                _ => None,
            };
            let resource = if str_at(object, "/roleRef/kind") == "Role" {
                "roles"
            } else {
                "clusterroles"
            };
            let bind = may("bind", resource, role);
            // a role that does not exist (yet) could grant anything once created
            let Some(rules) = rules else {
                if bind {
                    return Ok(());
                }
                return Err(ApiError::forbidden(format!(
                    "{}.{} \"{name}\" is forbidden: user \"{}\" cannot bind {resource} \"{role}\": it does not exist, and binding it needs bind permission",
                    rt.plural, rt.group, user.name
                )));
            };
            (rules, bind)
        }
        _ => return Ok(()),
    };
    if waiver {
        return Ok(());
    }
    let held = policy.rules_for(user, namespace);
    let missing: Vec<Rule> = wanted
        .iter()
        .flat_map(parts)
        .filter(|part| !held.iter().any(|h| h.covers(part)))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let listed: Vec<String> = missing
        .iter()
        .map(|rule| serde_json::to_string(rule).unwrap_or_default())
        .collect();
    Err(ApiError::forbidden(format!(
        "{}.{} \"{name}\" is forbidden: user \"{}\" (groups={:?}) is attempting to grant RBAC permissions not currently held:\n{}",
        rt.plural,
        rt.group,
        user.name,
        user.groups,
        listed.join("\n")
    )))
}

/// After an RBAC object was written or deleted at `revision`: waits until the authorizer knows.
pub async fn written(server: &ApiServer, key: &str, revision: Revision) {
    if !server
        .authorizer
        .caught_up(key, revision, Duration::from_secs(5))
        .await
    {
        tracing::warn!(
            key,
            revision,
            "the authorizer did not see an RBAC write in time"
        );
    }
}

#[cfg(test)]
mod tests;
