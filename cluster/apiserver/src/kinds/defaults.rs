//! Defaulting of built-in kinds, following Kubernetes' `SetDefaults_*` functions and the
//! defaulting admission plugins that always run (ServiceAccount, Priority,
//! DefaultTolerationSeconds), so clients read back what a real cluster would store.

use serde_json::{Map, Value, json};

/// Sets `object[key] = value` when the key is absent or null.
fn default(object: &mut Map<String, Value>, key: &str, value: Value) {
    if object.get(key).is_none_or(Value::is_null) {
        object.insert(key.to_owned(), value);
    }
}

/// The object at `key`, created empty when absent.
fn child<'a>(object: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    if !object.get(key).is_some_and(Value::is_object) {
        object.insert(key.to_owned(), json!({}));
    }
    object
        .get_mut(key)
        .and_then(Value::as_object_mut)
        .expect("just made an object")
}

fn each_object(value: Option<&mut Value>, mut f: impl FnMut(&mut Map<String, Value>)) {
    if let Some(Value::Array(items)) = value {
        for item in items.iter_mut().filter_map(Value::as_object_mut) {
            f(item);
        }
    }
}

/// Applies the defaults of a built-in kind.
pub fn apply(group: &str, kind: &str, object: &mut Value) {
    let Some(root) = object.as_object_mut() else {
        return;
    };
    match (group, kind) {
        ("", "Pod") => {
            let spec = child(root, "spec");
            pod_spec(spec);
            pod_admission(spec);
        }
        ("apps", "Deployment") => {
            let spec = child(root, "spec");
            default(spec, "replicas", json!(1));
            default(spec, "revisionHistoryLimit", json!(10));
            default(spec, "progressDeadlineSeconds", json!(600));
            let strategy = child(spec, "strategy");
            default(strategy, "type", json!("RollingUpdate"));
            if strategy.get("type") == Some(&json!("RollingUpdate")) {
                let rolling = child(strategy, "rollingUpdate");
                default(rolling, "maxUnavailable", json!("25%"));
                default(rolling, "maxSurge", json!("25%"));
            }
            template(spec);
        }
        ("apps", "ReplicaSet") => {
            let spec = child(root, "spec");
            default(spec, "replicas", json!(1));
            template(spec);
        }
        ("apps", "DaemonSet") => {
            let spec = child(root, "spec");
            default(spec, "revisionHistoryLimit", json!(10));
            let strategy = child(spec, "updateStrategy");
            default(strategy, "type", json!("RollingUpdate"));
            if strategy.get("type") == Some(&json!("RollingUpdate")) {
                let rolling = child(strategy, "rollingUpdate");
                default(rolling, "maxUnavailable", json!(1));
                default(rolling, "maxSurge", json!(0));
            }
            template(spec);
        }
        ("apps", "StatefulSet") => {
            let spec = child(root, "spec");
            default(spec, "replicas", json!(1));
            default(spec, "podManagementPolicy", json!("OrderedReady"));
            default(spec, "revisionHistoryLimit", json!(10));
            let strategy = child(spec, "updateStrategy");
            default(strategy, "type", json!("RollingUpdate"));
            if strategy.get("type") == Some(&json!("RollingUpdate")) {
                default(child(strategy, "rollingUpdate"), "partition", json!(0));
            }
            let retention = child(spec, "persistentVolumeClaimRetentionPolicy");
            default(retention, "whenDeleted", json!("Retain"));
            default(retention, "whenScaled", json!("Retain"));
            each_object(spec.get_mut("volumeClaimTemplates"), |claim| {
                let claim_spec = child(claim, "spec");
                default(claim_spec, "volumeMode", json!("Filesystem"));
                default(claim, "apiVersion", json!("v1"));
                default(claim, "kind", json!("PersistentVolumeClaim"));
            });
            template(spec);
        }
        ("batch", "Job") => {
            let spec = child(root, "spec");
            job_spec(spec);
        }
        ("batch", "CronJob") => {
            let spec = child(root, "spec");
            default(spec, "concurrencyPolicy", json!("Allow"));
            default(spec, "suspend", json!(false));
            default(spec, "successfulJobsHistoryLimit", json!(3));
            default(spec, "failedJobsHistoryLimit", json!(1));
            let job_template = child(spec, "jobTemplate");
            job_spec(child(job_template, "spec"));
        }
        ("", "Service") => {
            let spec = child(root, "spec");
            default(spec, "type", json!("ClusterIP"));
            default(spec, "sessionAffinity", json!("None"));
            let service_type = spec
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            if service_type != "ExternalName" {
                default(spec, "ipFamilyPolicy", json!("SingleStack"));
                default(spec, "ipFamilies", json!(["IPv4"]));
                default(spec, "internalTrafficPolicy", json!("Cluster"));
            }
            if service_type == "NodePort" || service_type == "LoadBalancer" {
                default(spec, "externalTrafficPolicy", json!("Cluster"));
            }
            each_object(spec.get_mut("ports"), |port| {
                default(port, "protocol", json!("TCP"));
                if let Some(number) = port.get("port").cloned() {
                    default(port, "targetPort", number);
                }
            });
        }
        ("", "Namespace") => {
            let spec = child(root, "spec");
            default(spec, "finalizers", json!(["kubernetes"]));
        }
        ("", "Secret") => {
            default(root, "type", json!("Opaque"));
            // stringData is write-only: merged into data (winning over it), never stored
            if let Some(Value::Object(strings)) = root.remove("stringData") {
                use base64::Engine as _;
                let data = child(root, "data");
                for (key, value) in strings {
                    let text = value
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| value.to_string());
                    data.insert(
                        key,
                        json!(base64::engine::general_purpose::STANDARD.encode(text)),
                    );
                }
            }
        }
        ("", "PersistentVolumeClaim") => {
            default(child(root, "spec"), "volumeMode", json!("Filesystem"));
        }
        ("", "PersistentVolume") => {
            let spec = child(root, "spec");
            default(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
            default(spec, "volumeMode", json!("Filesystem"));
        }
        ("", "Endpoints") => {
            each_object(root.get_mut("subsets"), |subset| {
                each_object(subset.get_mut("ports"), |port| {
                    default(port, "protocol", json!("TCP"))
                });
            });
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            each_object(root.get_mut("ports"), |port| {
                default(port, "protocol", json!("TCP"))
            });
        }
        ("storage.k8s.io", "StorageClass") => {
            default(root, "reclaimPolicy", json!("Delete"));
            default(root, "volumeBindingMode", json!("Immediate"));
        }
        ("scheduling.k8s.io", "PriorityClass") => {
            default(root, "preemptionPolicy", json!("PreemptLowerPriority"));
        }
        ("autoscaling", "HorizontalPodAutoscaler") => {
            let spec = child(root, "spec");
            default(spec, "minReplicas", json!(1));
            if spec
                .get("metrics")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
            {
                spec.insert(
                    "metrics".into(),
                    json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]),
                );
            }
        }
        ("networking.k8s.io", "NetworkPolicy") => {
            let spec = child(root, "spec");
            if spec.get("policyTypes").is_none() {
                let mut types = vec![json!("Ingress")];
                if spec.get("egress").is_some() {
                    types.push(json!("Egress"));
                }
                spec.insert("policyTypes".into(), Value::Array(types));
            }
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            let spec = child(root, "spec");
            let names = child(spec, "names");
            if let Some(kind) = names.get("kind").and_then(Value::as_str).map(str::to_owned) {
                default(names, "singular", json!(kind.to_lowercase()));
                default(names, "listKind", json!(format!("{kind}List")));
            }
            default(child(spec, "conversion"), "strategy", json!("None"));
        }
        _ => {}
    }
}

fn job_spec(spec: &mut Map<String, Value>) {
    if spec.get("completions").is_none() && spec.get("parallelism").is_none() {
        spec.insert("completions".into(), json!(1));
        spec.insert("parallelism".into(), json!(1));
    }
    default(spec, "parallelism", json!(1));
    default(spec, "backoffLimit", json!(6));
    default(spec, "completionMode", json!("NonIndexed"));
    default(spec, "suspend", json!(false));
    default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    template(spec);
}

fn template(spec: &mut Map<String, Value>) {
    let template = child(spec, "template");
    pod_spec(child(template, "spec"));
}

/// Defaults of a PodSpec (in pods and in templates).
fn pod_spec(spec: &mut Map<String, Value>) {
    default(spec, "restartPolicy", json!("Always"));
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "securityContext", json!({}));
    default(spec, "schedulerName", json!("default-scheduler"));
    for list in ["containers", "initContainers"] {
        each_object(spec.get_mut(list), container);
    }
    each_object(spec.get_mut("volumes"), |volume| {
        for source in ["configMap", "secret"] {
            if let Some(Value::Object(source)) = volume.get_mut(source) {
                default(source, "defaultMode", json!(420));
            }
        }
        if let Some(Value::Object(projected)) = volume.get_mut("projected") {
            default(projected, "defaultMode", json!(420));
        }
        if let Some(Value::Object(host_path)) = volume.get_mut("hostPath") {
            default(host_path, "type", json!(""));
        }
    });
}

fn container(container: &mut Map<String, Value>) {
    default(
        container,
        "terminationMessagePath",
        json!("/dev/termination-log"),
    );
    default(container, "terminationMessagePolicy", json!("File"));
    default(container, "resources", json!({}));
    let image = container.get("image").and_then(Value::as_str).unwrap_or("");
    let tag = image
        .rsplit('/')
        .next()
        .and_then(|last| last.split_once(':'))
        .map(|(_, tag)| tag);
    let pull = if image.contains('@') || tag.is_some_and(|t| t != "latest") {
        "IfNotPresent"
    } else {
        "Always"
    };
    default(container, "imagePullPolicy", json!(pull));
    each_object(container.get_mut("ports"), |port| {
        default(port, "protocol", json!("TCP"))
    });
    each_object(container.get_mut("env"), |env| {
        if let Some(Value::Object(from)) = env.get_mut("valueFrom")
            && let Some(Value::Object(field_ref)) = from.get_mut("fieldRef")
        {
            default(field_ref, "apiVersion", json!("v1"));
        }
    });
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(Value::Object(probe)) = container.get_mut(probe) {
            default(probe, "timeoutSeconds", json!(1));
            default(probe, "periodSeconds", json!(10));
            default(probe, "successThreshold", json!(1));
            default(probe, "failureThreshold", json!(3));
            if let Some(Value::Object(http)) = probe.get_mut("httpGet") {
                default(http, "scheme", json!("HTTP"));
                default(http, "path", json!("/"));
            }
        }
    }
}

/// What admission plugins that always run in Kubernetes add to a Pod.
fn pod_admission(spec: &mut Map<String, Value>) {
    default(spec, "serviceAccountName", json!("default"));
    default(spec, "enableServiceLinks", json!(true));
    if spec.get("priorityClassName").is_none() {
        default(spec, "priority", json!(0));
    }
    default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
    if let Value::Array(tolerations) = tolerations {
        for taint in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
        ] {
            let tolerated = tolerations.iter().any(|t| {
                t.get("key").and_then(Value::as_str) == Some(taint)
                    || (t.get("key").is_none() && t.get("operator") == Some(&json!("Exists")))
            });
            if !tolerated {
                tolerations.push(json!({
                    "key": taint, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300
                }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_defaults() {
        let mut d = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "nginx:1.27", "ports": [{"containerPort": 80}]}]}}}});
        apply("apps", "Deployment", &mut d);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        assert_eq!(c["ports"][0]["protocol"], "TCP");
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");
        assert!(
            d["spec"]["template"]["spec"]
                .get("serviceAccountName")
                .is_none(),
            "templates get no admission defaults"
        );
    }

    #[test]
    fn pod_defaults_include_admission() {
        let mut p = json!({"spec": {"containers": [{"name": "c", "image": "busybox"}]}});
        apply("", "Pod", &mut p);
        assert_eq!(p["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(p["spec"]["serviceAccountName"], "default");
        assert_eq!(p["spec"]["tolerations"].as_array().unwrap().len(), 2);
        let mut again = p.clone();
        apply("", "Pod", &mut again);
        assert_eq!(again, p, "defaulting is idempotent");
    }

    #[test]
    fn job_defaults() {
        let mut j = json!({"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c"}]}}}});
        apply("batch", "Job", &mut j);
        assert_eq!(j["spec"]["completions"], 1);
        assert_eq!(j["spec"]["parallelism"], 1);
        assert_eq!(j["spec"]["backoffLimit"], 6);
        assert!(j["spec"].get("manualSelector").is_none());
    }

    #[test]
    fn secret_string_data_lands_in_data() {
        let mut s = json!({"data": {"a": "b2xk", "keep": "eA=="}, "stringData": {"a": "new", "b": "hunter2"}});
        apply("", "Secret", &mut s);
        assert_eq!(
            s["data"],
            json!({"a": "bmV3", "b": "aHVudGVyMg==", "keep": "eA=="})
        );
        assert!(s.get("stringData").is_none());
        assert_eq!(s["type"], "Opaque");
    }
}
