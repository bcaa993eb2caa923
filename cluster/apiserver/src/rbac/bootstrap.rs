//! The roles and bindings every cluster starts with: Kubernetes' user-facing ClusterRoles
//! (cluster-admin, and admin, edit and view aggregated from the `aggregate-to-*` roles), the
//! `system:` roles every user needs (discovery, basic-user, public-info-viewer, monitoring), and
//! one per Kelson component, bound to the identity that component uses.
//!
//! Like kube-apiserver, the server creates them when missing and puts back their rules at start
//! unless a role is annotated `rbac.authorization.kubernetes.io/autoupdate: "false"`.
//!
//! Differences from Kubernetes, on purpose: node agents (`system:nodes`) are authorized by the
//! `system:node` role rather than the Node authorizer, so a node (or whoever holds the join
//! token) may read every Secret and ConfigMap, create pods and mint ServiceAccount tokens in
//! every namespace, as kubelets could before Kubernetes 1.8; the controller manager and the
//! GitOps reconciler are bound to cluster-admin, since they create, adopt and delete every kind
//! (each Application can narrow its own sync with `serviceAccountName`).

use serde_json::{Value, json};

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];

fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!({"verbs": verbs, "apiGroups": groups, "resources": resources})
}

fn paths(verbs: &[&str], urls: &[&str]) -> Value {
    json!({"verbs": verbs, "nonResourceURLs": urls})
}

fn role(name: &str, labels: &[(&str, &str)], rules: Vec<Value>) -> Value {
    let mut labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    labels.insert("kubernetes.io/bootstrapping".into(), json!("rbac-defaults"));
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
        },
        "rules": rules,
    })
}

fn aggregated(name: &str, labels: &[(&str, &str)], from: &str) -> Value {
    let mut role = role(name, labels, Vec::new());
    role["aggregationRule"] = json!({"clusterRoleSelectors": [
        {"matchLabels": {format!("rbac.authorization.k8s.io/aggregate-to-{from}"): "true"}}
    ]});
    role
}

fn binding(name: &str, role: &str, subjects: &[(&str, &str)]) -> Value {
    let subjects: Vec<Value> = subjects
        .iter()
        .map(|(kind, name)| {
            json!({"kind": kind, "apiGroup": "rbac.authorization.k8s.io", "name": name})
        })
        .collect();
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
            "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
        },
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": subjects,
    })
}

/// The default ClusterRoles.
#[must_use]
pub fn cluster_roles() -> Vec<Value> {
    let view_core = &[
        "pods",
        "pods/log",
        "pods/status",
        "configmaps",
        "endpoints",
        "persistentvolumeclaims",
        "persistentvolumeclaims/status",
        "replicationcontrollers",
        "replicationcontrollers/scale",
        "replicationcontrollers/status",
        "serviceaccounts",
        "services",
        "services/status",
        "bindings",
        "events",
        "limitranges",
        "resourcequotas",
        "resourcequotas/status",
        "namespaces",
        "namespaces/status",
    ];
    let workloads = &[
        "controllerrevisions",
        "daemonsets",
        "daemonsets/status",
        "deployments",
        "deployments/scale",
        "deployments/status",
        "replicasets",
        "replicasets/scale",
        "replicasets/status",
        "statefulsets",
        "statefulsets/scale",
        "statefulsets/status",
    ];
    let view = vec![
        rule(READ, &[""], view_core),
        rule(READ, &["apps"], workloads),
        rule(
            READ,
            &["autoscaling"],
            &[
                "horizontalpodautoscalers",
                "horizontalpodautoscalers/status",
            ],
        ),
        rule(
            READ,
            &["batch"],
            &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
        ),
        rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
        rule(
            READ,
            &["policy"],
            &["poddisruptionbudgets", "poddisruptionbudgets/status"],
        ),
        rule(
            READ,
            &["networking.k8s.io"],
            &["ingresses", "ingresses/status", "networkpolicies"],
        ),
        rule(READ, &["metrics.k8s.io"], &["pods", "nodes"]),
        rule(READ, &["events.k8s.io"], &["events"]),
    ];
    let edit = vec![
        rule(
            WRITE,
            &[""],
            &[
                "pods",
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
                "configmaps",
                "endpoints",
                "persistentvolumeclaims",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "secrets",
                "serviceaccounts",
                "services",
                "services/proxy",
            ],
        ),
        rule(
            &["create"],
            &[""],
            &["pods/eviction", "serviceaccounts/token"],
        ),
        rule(
            READ,
            &[""],
            &[
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
                "secrets",
                "services/proxy",
            ],
        ),
        rule(&["impersonate"], &[""], &["serviceaccounts"]),
        rule(
            WRITE,
            &["apps"],
            &[
                "daemonsets",
                "deployments",
                "deployments/rollback",
                "deployments/scale",
                "replicasets",
                "replicasets/scale",
                "statefulsets",
                "statefulsets/scale",
            ],
        ),
        rule(WRITE, &["autoscaling"], &["horizontalpodautoscalers"]),
        rule(WRITE, &["batch"], &["cronjobs", "jobs"]),
        rule(WRITE, &["policy"], &["poddisruptionbudgets"]),
        rule(
            WRITE,
            &["networking.k8s.io"],
            &["ingresses", "networkpolicies"],
        ),
        rule(WRITE, &["discovery.k8s.io"], &["endpointslices"]),
    ];
    let admin = vec![
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["localsubjectaccessreviews"],
        ),
        rule(
            crate::registry::STANDARD_VERBS,
            &["rbac.authorization.k8s.io"],
            &["rolebindings", "roles"],
        ),
    ];
    let read_everything = || rule(READ, &["*"], &["*"]);
    let events = || {
        vec![
            rule(&["create", "patch", "update"], &[""], &["events"]),
            rule(
                &["create", "patch", "update"],
                &["events.k8s.io"],
                &["events"],
            ),
        ]
    };
    let leases = || {
        rule(
            &[
                "create", "get", "update", "patch", "delete", "list", "watch",
            ],
            &["coordination.k8s.io"],
            &["leases"],
        )
    };
    let mut scheduler = vec![
        read_everything(),
        rule(&["create"], &[""], &["pods/binding", "bindings"]),
        rule(&["patch", "update"], &[""], &["pods/status"]),
        rule(&["delete"], &[""], &["pods"]),
        // volume binding: WaitForFirstConsumer claims are told their pod's node
        rule(
            &["update", "patch"],
            &[""],
            &["persistentvolumeclaims", "persistentvolumes"],
        ),
        leases(),
    ];
    scheduler.extend(events());
    let mut node = vec![
        read_everything(),
        rule(
            &["create", "update", "patch", "delete"],
            &[""],
            &["nodes", "nodes/status", "pods/status"],
        ),
        rule(&["create", "delete"], &[""], &["pods"]),
        rule(
            &["create"],
            &[""],
            &["pods/eviction", "serviceaccounts/token"],
        ),
        rule(
            &["update", "patch"],
            &[""],
            &["persistentvolumeclaims/status"],
        ),
        rule(
            &["create", "update", "patch", "delete"],
            &["discovery.k8s.io"],
            &["endpointslices"],
        ),
        rule(
            &["update", "patch"],
            &["networking.k8s.io"],
            &["ingresses/status"],
        ),
        rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["subjectaccessreviews", "localsubjectaccessreviews"],
        ),
        leases(),
    ];
    node.extend(events());
    vec![
        role(
            "cluster-admin",
            &[],
            vec![rule(&["*"], &["*"], &["*"]), paths(&["*"], &["*"])],
        ),
        aggregated(
            "admin",
            &[(
                "rbac.authorization.k8s.io/aggregate-to-cluster-admin",
                "true",
            )],
            "admin",
        ),
        aggregated(
            "edit",
            &[("rbac.authorization.k8s.io/aggregate-to-admin", "true")],
            "edit",
        ),
        aggregated(
            "view",
            &[("rbac.authorization.k8s.io/aggregate-to-edit", "true")],
            "view",
        ),
        role(
            "system:aggregate-to-admin",
            &[("rbac.authorization.k8s.io/aggregate-to-admin", "true")],
            admin,
        ),
        role(
            "system:aggregate-to-edit",
            &[("rbac.authorization.k8s.io/aggregate-to-edit", "true")],
            edit,
        ),
        role(
            "system:aggregate-to-view",
            &[("rbac.authorization.k8s.io/aggregate-to-view", "true")],
            view,
        ),
        role(
            "system:discovery",
            &[],
            vec![paths(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
        ),
        role(
            "system:public-info-viewer",
            &[],
            vec![paths(
                &["get"],
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
            )],
        ),
        role(
            "system:basic-user",
            &[],
            vec![
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                rule(
                    &["create"],
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                ),
            ],
        ),
        role(
            "system:monitoring",
            &[],
            vec![paths(
                &["get"],
                &[
                    "/healthz",
                    "/healthz/*",
                    "/livez",
                    "/livez/*",
                    "/metrics",
                    "/metrics/slis",
                    "/readyz",
                    "/readyz/*",
                ],
            )],
        ),
        role("system:kube-scheduler", &[], scheduler),
        role("system:node", &[], node),
        role(
            "system:kelson-state-metrics",
            &[],
            vec![
                read_everything(),
                paths(&["get"], &["/kelson/v1/prometheus-sd"]),
            ],
        ),
    ]
}

/// The default ClusterRoleBindings.
#[must_use]
pub fn cluster_role_bindings() -> Vec<Value> {
    vec![
        binding(
            "cluster-admin",
            "cluster-admin",
            &[("Group", super::MASTERS)],
        ),
        binding(
            "system:discovery",
            "system:discovery",
            &[("Group", "system:authenticated")],
        ),
        binding(
            "system:basic-user",
            "system:basic-user",
            &[("Group", "system:authenticated")],
        ),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            &[
                ("Group", "system:authenticated"),
                ("Group", "system:unauthenticated"),
            ],
        ),
        binding(
            "system:monitoring",
            "system:monitoring",
            &[("Group", "system:monitoring")],
        ),
        binding(
            "system:kube-scheduler",
            "system:kube-scheduler",
            &[("User", "system:kube-scheduler")],
        ),
        binding("system:node", "system:node", &[("Group", "system:nodes")]),
        binding(
            "system:kelson-state-metrics",
            "system:kelson-state-metrics",
            &[("User", "system:kube-state-metrics")],
        ),
        binding(
            "system:kube-controller-manager",
            "cluster-admin",
            &[("User", "system:kube-controller-manager")],
        ),
        binding(
            "system:kelson-gitops",
            "cluster-admin",
            &[("User", "system:kelson-gitops")],
        ),
    ]
}

/// The stored default with what is shipped put back, or `None` when nothing is missing: as
/// kube-apiserver reconciles its defaults, missing rules and subjects are added (what an admin
/// added is kept), the roleRef and aggregation selectors are restored; nothing is touched when
/// the object is annotated `rbac.authorization.kubernetes.io/autoupdate: "false"`.
#[must_use]
pub fn reconcile(stored: &Value, shipped: &Value) -> Option<Value> {
    let autoupdate = stored
        .pointer("/metadata/annotations/rbac.authorization.kubernetes.io~1autoupdate")
        .and_then(Value::as_str);
    if autoupdate == Some("false") {
        return None;
    }
    let mut out = stored.clone();
    let mut changed = false;
    for field in ["aggregationRule", "roleRef"] {
        if let Some(value) = shipped.get(field)
            && stored.get(field) != Some(value)
        {
            out[field] = value.clone();
            changed = true;
        }
    }
    // the rules of an aggregated role are written by aggregation, not shipped
    let lists: &[&str] = if shipped.get("aggregationRule").is_some() {
        &["subjects"]
    } else {
        &["rules", "subjects"]
    };
    for field in lists {
        let Some(wanted) = shipped.get(*field).and_then(Value::as_array) else {
            continue;
        };
        let mut have = stored
            .get(*field)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for item in wanted {
            if !have.contains(item) {
                have.push(item.clone());
                changed = true;
            }
        }
        out[*field] = Value::Array(have);
    }
    changed.then_some(out)
}
