use serde_json::json;

use super::*;

fn user(name: &str, groups: &[&str]) -> User {
    User::new(name, groups.iter().map(|g| (*g).to_owned()).collect())
}

fn stored(objects: Vec<Value>) -> Stored {
    objects
        .into_iter()
        .map(|object| {
            let name = str_at(&object, "/metadata/name").to_owned();
            let namespace = str_at(&object, "/metadata/namespace").to_owned();
            let prefix = match str_at(&object, "/kind") {
                "ClusterRole" => PREFIXES[0],
                "Role" => PREFIXES[1],
                "ClusterRoleBinding" => PREFIXES[2],
                _ => PREFIXES[3],
            };
            let key = if namespace.is_empty() {
                format!("{prefix}{name}")
            } else {
                format!("{prefix}{namespace}/{name}")
            };
            (key, object)
        })
        .collect()
}

fn get_pods(namespace: &str) -> Attributes<'_> {
    Attributes::resource("get", "", "pods", "", namespace, "web")
}

#[test]
fn rules_match_verbs_groups_resources_subresources_and_names() {
    let rule: Rule = serde_json::from_value(json!({
        "verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods", "pods/log"],
    }))
    .unwrap();
    assert!(rule.allows(&get_pods("a")));
    assert!(rule.allows(&Attributes::resource("get", "", "pods", "log", "a", "web")));
    assert!(!rule.allows(&Attributes::resource("get", "", "pods", "exec", "a", "web")));
    assert!(!rule.allows(&Attributes::resource("delete", "", "pods", "", "a", "web")));
    assert!(!rule.allows(&Attributes::resource("get", "apps", "pods", "", "a", "web")));
    let named: Rule = serde_json::from_value(json!({
        "verbs": ["*"], "apiGroups": ["*"], "resources": ["*/status"], "resourceNames": ["web"],
    }))
    .unwrap();
    assert!(named.allows(&Attributes::resource(
        "update",
        "apps",
        "deployments",
        "status",
        "a",
        "web"
    )));
    assert!(!named.allows(&Attributes::resource(
        "update",
        "apps",
        "deployments",
        "",
        "a",
        "web"
    )));
    assert!(!named.allows(&Attributes::resource(
        "update",
        "apps",
        "deployments",
        "status",
        "a",
        "db"
    )));
    // a named rule never allows collections
    assert!(!named.allows(&Attributes::resource(
        "list",
        "apps",
        "deployments",
        "status",
        "a",
        ""
    )));
    let urls: Rule = serde_json::from_value(
        json!({"verbs": ["get"], "nonResourceURLs": ["/apis/*", "/version"]}),
    )
    .unwrap();
    assert!(urls.allows(&Attributes::path("get", "/apis/apps/v1")));
    assert!(urls.allows(&Attributes::path("get", "/version")));
    assert!(!urls.allows(&Attributes::path("get", "/metrics")));
    assert!(!urls.allows(&Attributes::path("post", "/version")));
    // a resource rule never allows a path, nor a path rule a resource
    assert!(!rule.allows(&Attributes::path("get", "/api")));
    assert!(!urls.allows(&get_pods("a")));
}

#[test]
fn bindings_grant_their_role_to_users_groups_and_service_accounts() {
    let policy = Policy::build(&stored(vec![
        json!({"kind": "ClusterRole", "metadata": {"name": "reader"},
               "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]}),
        json!({"kind": "Role", "metadata": {"name": "writer", "namespace": "b"},
               "rules": [{"verbs": ["delete"], "apiGroups": [""], "resources": ["pods"]}]}),
        json!({"kind": "ClusterRoleBinding", "metadata": {"name": "readers"},
               "roleRef": {"kind": "ClusterRole", "name": "reader"},
               "subjects": [{"kind": "Group", "name": "readers"}]}),
        json!({"kind": "RoleBinding", "metadata": {"name": "ci", "namespace": "b"},
               "roleRef": {"kind": "Role", "name": "writer"},
               "subjects": [{"kind": "ServiceAccount", "name": "ci"}, {"kind": "User", "name": "ann"}]}),
        json!({"kind": "RoleBinding", "metadata": {"name": "local-read", "namespace": "c"},
               "roleRef": {"kind": "ClusterRole", "name": "reader"},
               "subjects": [{"kind": "User", "name": "ann"}]}),
        // a binding to a role that does not exist grants nothing
        json!({"kind": "RoleBinding", "metadata": {"name": "dangling", "namespace": "c"},
               "roleRef": {"kind": "Role", "name": "missing"},
               "subjects": [{"kind": "User", "name": "ann"}]}),
    ]));
    let reader = user("bob", &["readers"]);
    assert!(policy.decide(&reader, &get_pods("anywhere")).is_some());
    assert!(policy.decide(&reader, &get_pods("")).is_some());
    let delete = Attributes::resource("delete", "", "pods", "", "b", "web");
    assert!(policy.decide(&reader, &delete).is_none());
    let ann = user("ann", &[]);
    assert!(policy.decide(&ann, &delete).is_some());
    assert!(policy.decide(&ann, &get_pods("c")).is_some());
    assert!(policy.decide(&ann, &get_pods("b")).is_none());
    assert!(policy.decide(&ann, &get_pods("")).is_none());
    let ci = user("system:serviceaccount:b:ci", &["system:serviceaccounts"]);
    let reason = policy.decide(&ci, &delete).unwrap();
    assert_eq!(
        &*reason,
        "RBAC: allowed by RoleBinding \"ci/b\" of Role \"writer\""
    );
    let elsewhere = Attributes::resource("delete", "", "pods", "", "c", "web");
    assert!(policy.decide(&ci, &elsewhere).is_none());
    assert!(policy.decide(&user("x", &[MASTERS]), &elsewhere).is_some());
    assert_eq!(policy.rules_for(&ann, "b").len(), 1);
    assert_eq!(policy.rules_for(&ann, "c").len(), 1);
}

#[test]
fn aggregated_roles_hold_the_rules_of_the_roles_they_select() {
    let bootstrap: Vec<Value> = bootstrap::cluster_roles();
    let policy = Policy::build(&stored(bootstrap));
    let view = policy.cluster_role("view").unwrap();
    let edit = policy.cluster_role("edit").unwrap();
    let admin = policy.cluster_role("admin").unwrap();
    let can = |rules: &[Rule], a: Attributes<'_>| rules.iter().any(|r| r.allows(&a));
    let list_deployments = Attributes::resource("list", "apps", "deployments", "", "a", "");
    let create_deployments = Attributes::resource("create", "apps", "deployments", "", "a", "");
    let create_roles =
        Attributes::resource("create", "rbac.authorization.k8s.io", "roles", "", "a", "");
    let read_secrets = Attributes::resource("get", "", "secrets", "", "a", "x");
    assert!(can(&view, list_deployments));
    assert!(!can(&view, create_deployments));
    assert!(!can(&view, read_secrets));
    assert!(can(&edit, list_deployments) && can(&edit, create_deployments));
    assert!(can(&edit, read_secrets));
    assert!(!can(&edit, create_roles));
    assert!(can(&admin, create_roles) && can(&admin, list_deployments));
    assert!(!can(
        &admin,
        Attributes::resource("create", "", "nodes", "", "", "")
    ));
}

#[test]
fn covering_rules() {
    let rule = |v: Value| serde_json::from_value::<Rule>(v).unwrap();
    let all = rule(json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}));
    let pods = rule(json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}));
    let get_pods = rule(json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}));
    let secrets = rule(json!({"verbs": ["get"], "apiGroups": [""], "resources": ["secrets"]}));
    let named = rule(
        json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"], "resourceNames": ["a"]}),
    );
    assert!(all.covers(&pods) && all.covers(&secrets));
    assert!(pods.covers(&get_pods) && pods.covers(&named));
    assert!(!get_pods.covers(&pods));
    assert!(!pods.covers(&secrets));
    assert!(!named.covers(&get_pods));
    assert!(!pods.covers(&all));
}

#[test]
fn forbidden_messages_read_like_kube_apiservers() {
    let bob = user("bob", &[]);
    let error = forbidden(
        &bob,
        &Attributes::resource("list", "", "pods", "", "default", ""),
    );
    assert_eq!(error.code, 403);
    assert_eq!(
        error.message,
        "pods is forbidden: User \"bob\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
    );
    let error = forbidden(
        &bob,
        &Attributes::resource("get", "apps", "deployments", "scale", "", "web"),
    );
    assert_eq!(
        error.message,
        "deployments.apps \"web\" is forbidden: User \"bob\" cannot get resource \"deployments/scale\" in API group \"apps\" at the cluster scope"
    );
    let error = forbidden(&bob, &Attributes::path("get", "/metrics"));
    assert_eq!(
        error.message,
        "forbidden: User \"bob\" cannot get path \"/metrics\""
    );
}

#[test]
fn grants_are_compared_part_by_part() {
    let rule = |v: Value| serde_json::from_value::<Rule>(v).unwrap();
    let held = [
        rule(json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]})),
        rule(json!({"verbs": ["create"], "apiGroups": [""], "resources": ["pods"]})),
        rule(json!({"verbs": ["get"], "nonResourceURLs": ["/api"]})),
    ];
    let covered = |wanted: &Rule| {
        parts(wanted)
            .iter()
            .all(|part| held.iter().any(|h| h.covers(part)))
    };
    // get and create come from two rules: together they cover a rule with both
    assert!(covered(&rule(
        json!({"verbs": ["get", "create"], "apiGroups": [""], "resources": ["pods"]})
    )));
    assert!(!covered(&rule(
        json!({"verbs": ["get", "delete"], "apiGroups": [""], "resources": ["pods"]})
    )));
    // a rule naming resources and paths needs both: holding /api is not holding every resource
    let mixed = rule(
        json!({"verbs": ["get"], "apiGroups": ["*"], "resources": ["*"], "nonResourceURLs": ["/api"]}),
    );
    assert!(!covered(&mixed));
    assert!(!held[2].covers(&mixed));
    assert!(covered(&rule(
        json!({"verbs": ["get"], "nonResourceURLs": ["/api"]})
    )));
}

#[test]
fn shipped_defaults_are_added_back_without_removing_what_admins_added() {
    let shipped = bootstrap::cluster_role_bindings()
        .into_iter()
        .find(|b| str_at(b, "/metadata/name") == "system:monitoring")
        .unwrap();
    let mut stored = shipped.clone();
    stored["subjects"] = json!([{"kind": "User", "name": "prometheus"}]);
    let reconciled = bootstrap::reconcile(&stored, &shipped).unwrap();
    let subjects = reconciled["subjects"].as_array().unwrap();
    assert_eq!(subjects.len(), 2, "{subjects:?}");
    assert!(bootstrap::reconcile(&reconciled, &shipped).is_none());
    stored["metadata"]["annotations"]["rbac.authorization.kubernetes.io/autoupdate"] =
        json!("false");
    assert!(bootstrap::reconcile(&stored, &shipped).is_none());
}
