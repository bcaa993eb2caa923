//! Admission steps that read other objects: the default StorageClass of new claims
//! (Kubernetes' `DefaultStorageClass` plugin) and ResourceQuota charges (`ResourceQuota`).

use kelson_common::quota;
use serde_json::{Value, json};

use crate::ApiServer;
use crate::error::{ApiError, ApiResult};
use crate::meta;
use crate::registry::ResourceType;

/// The annotation marking the default StorageClass.
pub const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";

/// Gives a new PersistentVolumeClaim without `storageClassName` the default class (the newest,
/// when several are marked). An explicit `""` means "no class" and is kept.
///
/// # Errors
/// On storage failure.
pub async fn default_storage_class(server: &ApiServer, claim: &mut Value) -> ApiResult<()> {
    if claim
        .pointer("/spec/storageClassName")
        .is_some_and(|c| !c.is_null())
    {
        return Ok(());
    }
    let Some(classes) = server
        .registry
        .lookup("storage.k8s.io", "v1", "storageclasses")
    else {
        return Ok(());
    };
    let page = server
        .objects
        .list(
            &classes,
            &classes.list_prefix(None),
            None,
            None,
            0,
            |class| {
                class
                    .pointer("/metadata/annotations")
                    .and_then(|a| a.get(DEFAULT_CLASS))
                    == Some(&json!("true"))
            },
        )
        .await?;
    let newest = page.items.iter().max_by_key(|class| {
        (
            class
                .pointer("/metadata/creationTimestamp")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            crate::meta::name(class).to_owned(),
        )
    });
    if let Some(class) = newest
        && let Some(spec) = claim.get_mut("spec").and_then(Value::as_object_mut)
    {
        spec.insert("storageClassName".into(), json!(crate::meta::name(class)));
    }
    Ok(())
}

/// How often admission re-reads the quotas when another write changed one first.
const QUOTA_ATTEMPTS: usize = 8;

/// Charges a new namespaced object to every ResourceQuota of its namespace that covers it
/// (Kubernetes' `ResourceQuota` admission): refused with 403 when it would exceed one, when a
/// compute quota's resource is not set by every container, or when a quota's usage is not yet
/// known; otherwise each quota's `status.used` grows at once, compare-and-swap, so concurrent
/// creates cannot overrun it. The quota controller recounts from the objects afterwards.
///
/// # Errors
/// 403 Forbidden as above; storage failures.
pub async fn charge_quota(
    server: &ApiServer,
    rt: &ResourceType,
    object: &Value,
    dry_run: bool,
) -> ApiResult<()> {
    let Some(namespace) = meta::namespace(object).filter(|_| rt.namespaced) else {
        return Ok(());
    };
    let Some(quotas) = server.registry.lookup("", "v1", "resourcequotas") else {
        return Ok(());
    };
    let forbidden = |message: String| {
        ApiError::forbidden(format!(
            "{} \"{}\" is forbidden: {message}",
            rt.plural,
            meta::name(object)
        ))
    };
    let delta = quota::usage(&rt.group, &rt.plural, object);
    // quotas already charged when a later one conflicted are not charged again
    let mut charged_already: Vec<String> = Vec::new();
    for _ in 0..QUOTA_ATTEMPTS {
        let page = server
            .objects
            .list(
                &quotas,
                &quotas.list_prefix(Some(namespace)),
                None,
                None,
                0,
                |_| true,
            )
            .await?;
        let mut charges = Vec::new();
        for q in &page.items {
            if !quota::covers(q, &rt.group, &rt.plural, object)
                || charged_already.iter().any(|c| c == meta::name(q))
            {
                continue;
            }
            let name = meta::name(q);
            let hard = quota::parse(q.pointer("/spec/hard")).unwrap_or_default();
            if rt.group.is_empty() && rt.plural == "pods" {
                let missing = quota::unspecified(&hard, object);
                if !missing.is_empty() {
                    return Err(forbidden(format!(
                        "failed quota: {name}: must specify {}",
                        missing.join("; ")
                    )));
                }
            }
            let used = quota::parse(q.pointer("/status/used"));
            if let Some(next) =
                quota::charge(name, &hard, used.as_ref(), &delta).map_err(&forbidden)?
            {
                charges.push((q, next));
            }
        }
        if dry_run || charges.is_empty() {
            return Ok(());
        }
        let mut conflict = false;
        for (q, next) in charges {
            let mut charged = q.clone();
            charged["status"]["used"] = quota::to_value(&next);
            let revision = meta::meta_str(q, "resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            match server.objects.update(&quotas, charged, revision).await {
                Ok(_) => charged_already.push(meta::name(q).to_owned()),
                Err(error) if error.code == 409 => {
                    conflict = true;
                    break;
                }
                Err(error) => return Err(error),
            }
        }
        if !conflict {
            return Ok(());
        }
    }
    Err(ApiError::too_many_requests(
        "too many concurrent writes to the namespace's resource quotas; try again",
        1,
    ))
}

/// The PriorityClasses every cluster has (Kubernetes' system classes).
pub const SYSTEM_CLASSES: [(&str, i64, &str); 2] = [
    (
        "system-cluster-critical",
        2_000_000_000,
        "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
    ),
    (
        "system-node-critical",
        2_000_001_000,
        "Used for system critical pods that must not be moved from their current node.",
    ),
];

/// Resolves a new pod's `priorityClassName` into `priority` and `preemptionPolicy` (Kubernetes'
/// `Priority` admission): the named class, else the class marked `globalDefault`, else 0.
///
/// # Errors
/// 403 when the class does not exist or the pod gives a priority of its own that differs.
pub async fn priority(server: &ApiServer, pod: &mut Value) -> ApiResult<()> {
    let Some(classes) = server
        .registry
        .lookup("scheduling.k8s.io", "v1", "priorityclasses")
    else {
        return Ok(());
    };
    let pod_name = meta::name(pod).to_owned();
    let forbidden = |message: String| {
        ApiError::forbidden(format!("pods \"{pod_name}\" is forbidden: {message}"))
    };
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    let named = spec
        .get("priorityClassName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_owned);
    let class = match &named {
        Some(name) => Some(
            server
                .objects
                .try_get(&classes, None, name)
                .await?
                .ok_or_else(|| forbidden(format!("no PriorityClass with name {name} was found")))?,
        ),
        None => server
            .objects
            .list(&classes, &classes.list_prefix(None), None, None, 0, |c| {
                c.get("globalDefault") == Some(&json!(true))
            })
            .await?
            .items
            .into_iter()
            .min_by_key(|c| c.get("value").and_then(Value::as_i64).unwrap_or(0)),
    };
    let value = class
        .as_ref()
        .and_then(|c| c.get("value"))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if let Some(given) = spec.get("priority").and_then(Value::as_i64)
        && given != value
    {
        return Err(forbidden(format!(
            "the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"
        )));
    }
    spec.insert("priority".into(), json!(value));
    if let Some(class) = &class {
        spec.insert("priorityClassName".into(), json!(meta::name(class)));
        if !spec.contains_key("preemptionPolicy") {
            let policy = class
                .get("preemptionPolicy")
                .cloned()
                .unwrap_or_else(|| json!("PreemptLowerPriority"));
            spec.insert("preemptionPolicy".into(), policy);
        }
    }
    Ok(())
}
