//! End-to-end: RBAC as kubectl users meet it — `kubectl auth can-i` / `whoami`, impersonation
//! with `--as`, Roles and bindings taking effect at once, service-account tokens, Forbidden
//! messages word for word, no escalation through Roles or bindings, and the aggregated
//! admin/edit/view roles.

use std::path::Path;

use kelson_testing::{KelsonProcess, Kubectl};

fn start() -> (KelsonProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    std::fs::create_dir_all(&data).unwrap();
    let server =
        KelsonProcess::server(Path::new(env!("CARGO_BIN_EXE_kelson")), &data, &[]).unwrap();
    (server, dir)
}

/// `kubectl auth can-i` answers on stdout and with its exit code.
fn can_i(k: &Kubectl, args: &[&str]) -> bool {
    let mut all = vec!["auth", "can-i"];
    all.extend_from_slice(args);
    let output = k.run(&all, None);
    let answer = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert!(
        answer == "yes" || answer.starts_with("no"),
        "can-i {args:?}: {answer} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.success(), answer == "yes");
    answer == "yes"
}

fn check(minor: u32) {
    let (server, dir) = start();
    let k = Kubectl::new(minor, &server.kubeconfig());

    // who am I: the admin kubeconfig is a system:masters member
    if minor >= 28 {
        let whoami = k.ok(&["auth", "whoami"]);
        assert!(whoami.contains("kelson-admin"), "{whoami}");
        assert!(whoami.contains("system:masters"), "{whoami}");
        let as_ann = k.ok(&["auth", "whoami", "--as=ann", "--as-group=devs"]);
        assert!(
            as_ann.contains("ann") && as_ann.contains("devs"),
            "{as_ann}"
        );
    }
    assert!(can_i(&k, &["create", "pods", "-A"]));
    assert!(can_i(&k, &["*", "*"]));

    // a user with no bindings may discover the API but nothing else
    assert!(!can_i(&k, &["list", "pods", "-n", "default", "--as=ann"]));
    let denied = k.fails(&["get", "pods", "-n", "default", "--as=ann"], None);
    assert!(
        denied.contains(
            "pods is forbidden: User \"ann\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
        ),
        "{denied}"
    );
    let denied = k.fails(&["get", "deployment", "web", "-n", "dev", "--as=ann"], None);
    assert!(
        denied.contains("deployments.apps \"web\" is forbidden: User \"ann\" cannot get resource \"deployments\" in API group \"apps\" in the namespace \"dev\""),
        "{denied}"
    );
    k.ok(&["api-resources", "--as=ann"]);
    k.ok(&["get", "--raw", "/version", "--as=ann"]);
    let denied = k.fails(&["get", "--raw", "/metrics", "--as=ann"], None);
    assert!(denied.contains("cannot get path \"/metrics\""), "{denied}");

    // a RoleBinding to the edit ClusterRole works at once, in its namespace only
    k.ok(&["create", "namespace", "dev"]);
    k.ok(&[
        "create",
        "rolebinding",
        "ann-edit",
        "--clusterrole=edit",
        "--user=ann",
        "-n",
        "dev",
    ]);
    k.ok(&[
        "create",
        "configmap",
        "settings",
        "--from-literal=a=1",
        "-n",
        "dev",
        "--as=ann",
    ]);
    k.ok(&["get", "configmaps", "-n", "dev", "--as=ann"]);
    // kubectl shows bindings and roles as kube-apiserver's columns have them
    let wide = k.ok(&["get", "rolebinding", "ann-edit", "-n", "dev", "-o", "wide"]);
    assert!(wide.contains("ROLE") && wide.contains("USERS"), "{wide}");
    assert!(
        wide.contains("ClusterRole/edit") && wide.contains("ann"),
        "{wide}"
    );
    let roles = k.ok(&["get", "clusterrole", "view"]);
    assert!(roles.contains("CREATED AT"), "{roles}");
    assert!(can_i(
        &k,
        &["create", "deployments.apps", "-n", "dev", "--as=ann"]
    ));
    assert!(can_i(&k, &["get", "secrets", "-n", "dev", "--as=ann"]));
    assert!(!can_i(&k, &["create", "roles", "-n", "dev", "--as=ann"]));
    assert!(!can_i(
        &k,
        &["get", "configmaps", "-n", "default", "--as=ann"]
    ));
    let rules = k.ok(&["auth", "can-i", "--list", "-n", "dev", "--as=ann"]);
    assert!(rules.contains("configmaps"), "{rules}");
    assert!(rules.contains("deployments.apps"), "{rules}");
    // groups are subjects too
    k.ok(&[
        "create",
        "clusterrolebinding",
        "devs-view",
        "--clusterrole=view",
        "--group=devs",
    ]);
    assert!(can_i(
        &k,
        &["list", "pods", "-A", "--as=bob", "--as-group=devs"]
    ));
    assert!(!can_i(&k, &["list", "pods", "-A", "--as=bob"]));

    // the aggregated roles hold the rules of the roles they select, as kubectl shows them
    let view = k.ok(&["describe", "clusterrole", "view"]);
    assert!(view.contains("deployments.apps"), "{view}");
    let admin = k.ok(&["get", "clusterrole", "admin", "-o", "yaml"]);
    assert!(admin.contains("rolebindings"), "{admin}");
    // a ClusterRole labelled for aggregation joins view
    assert!(!can_i(
        &k,
        &["list", "storageclasses", "--as=bob", "--as-group=devs"]
    ));
    k.ok_with(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: storage-view\n  labels: {rbac.authorization.k8s.io/aggregate-to-view: \"true\"}\nrules:\n- {apiGroups: [storage.k8s.io], resources: [storageclasses], verbs: [get, list, watch]}\n",
        ),
    );
    k.ok_within(
        std::time::Duration::from_secs(5),
        &[
            "auth",
            "can-i",
            "list",
            "storageclasses.storage.k8s.io",
            "--as=bob",
            "--as-group=devs",
        ],
        None,
    );

    // nobody grants what they do not hold
    k.ok(&[
        "create",
        "rolebinding",
        "ann-admin",
        "--clusterrole=admin",
        "--user=ann",
        "-n",
        "dev",
    ]);
    k.ok(&[
        "create",
        "role",
        "cm-reader",
        "--verb=get",
        "--resource=configmaps",
        "-n",
        "dev",
        "--as=ann",
    ]);
    let denied = k.fails(
        &[
            "create",
            "role",
            "nodes",
            "--verb=get",
            "--resource=nodes",
            "-n",
            "dev",
            "--as=ann",
        ],
        None,
    );
    assert!(
        denied.contains("is attempting to grant RBAC permissions not currently held"),
        "{denied}"
    );
    let denied = k.fails(
        &[
            "create",
            "rolebinding",
            "root",
            "--clusterrole=cluster-admin",
            "--user=ann",
            "-n",
            "dev",
            "--as=ann",
        ],
        None,
    );
    assert!(
        denied.contains("is attempting to grant RBAC permissions not currently held"),
        "{denied}"
    );
    // verbs granted by different rules of admin still add up
    k.ok(&[
        "create",
        "role",
        "pod-starter",
        "--verb=get,create",
        "--resource=pods",
        "-n",
        "dev",
        "--as=ann",
    ]);
    // binding a role that does not exist yet would grant whatever it gets later
    let denied = k.fails(
        &[
            "create",
            "rolebinding",
            "later",
            "--role=not-yet",
            "--user=ann",
            "-n",
            "dev",
            "--as=ann",
        ],
        None,
    );
    assert!(denied.contains("does not exist"), "{denied}");
    k.ok(&[
        "create",
        "rolebinding",
        "bob-reads",
        "--role=cm-reader",
        "--user=bob",
        "-n",
        "dev",
        "--as=ann",
    ]);
    assert!(can_i(&k, &["get", "configmaps", "-n", "dev", "--as=bob"]));
    // a binding's role is fixed at creation
    let denied = k.fails(
        &[
            "patch",
            "rolebinding",
            "bob-reads",
            "-n",
            "dev",
            "--type=merge",
            "-p",
            r#"{"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"view"}}"#,
        ],
        None,
    );
    assert!(denied.contains("cannot change roleRef"), "{denied}");
    // service accounts: a token authenticates as system:serviceaccount:NS:NAME
    k.ok(&["create", "serviceaccount", "ci", "-n", "dev"]);
    let token = k.ok(&["create", "token", "ci", "-n", "dev"]);
    let ca = k.ok(&[
        "config",
        "view",
        "--raw",
        "--minify",
        "-o",
        "jsonpath={.clusters[0].cluster.certificate-authority-data}",
    ]);
    let kubeconfig = dir.path().join("ci.kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kelson\n  cluster: {{server: \"{}\", certificate-authority-data: {ca}}}\nusers:\n- name: ci\n  user: {{token: {}}}\ncontexts:\n- name: ci\n  context: {{cluster: kelson, user: ci}}\ncurrent-context: ci\n",
            server.url,
            token.trim()
        ),
    )
    .unwrap();
    let ci = Kubectl::new(minor, &kubeconfig);
    let args = ["get", "pods", "-n", "dev"];
    let denied = ci.fails(&args, None);
    assert!(
        denied.contains("User \"system:serviceaccount:dev:ci\" cannot list resource \"pods\""),
        "{denied}"
    );
    k.ok(&[
        "create",
        "rolebinding",
        "ci-view",
        "--clusterrole=view",
        "--serviceaccount=dev:ci",
        "-n",
        "dev",
    ]);
    ci.ok(&args);
    // the service account may not impersonate anyone
    let denied = ci.fails(&["get", "pods", "-n", "dev", "--as=kelson-admin"], None);
    assert!(
        denied.contains("cannot impersonate resource \"users\""),
        "{denied}"
    );
    // deleting the binding takes the permission away at once
    k.ok(&["delete", "rolebinding", "ci-view", "-n", "dev"]);
    let denied = ci.fails(&args, None);
    assert!(denied.contains("forbidden"), "{denied}");
    drop(server);
    drop(dir);
}

#[test]
fn rbac_with_kubectl_1_33() {
    check(33);
}

#[test]
fn rbac_with_kubectl_1_27() {
    check(27);
}
