//! CustomResourceDefinitions: validation of the definitions, and serving their custom resources
//! dynamically (one resource type per served version, validated against the version's
//! `openAPIV3Schema`, with status/scale subresources and printer columns).

use std::sync::Arc;

use serde_json::{Value, json};

use crate::ApiServer;
use crate::error::Cause;
use crate::registry::{
    PrinterColumn, ResourceType, STANDARD_VERBS, ScalePaths, SchemaSource, Subresource,
};

/// Validates a CRD object.
pub fn validate(object: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let s = |pointer: &str| {
        object
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    let group = s("/spec/group");
    let plural = s("/spec/names/plural");
    let kind = s("/spec/names/kind");
    if group.is_empty() {
        causes.push(Cause::required("spec.group"));
    } else if !group.contains('.') {
        causes.push(Cause::invalid(
            "spec.group",
            &json!(group),
            "should be a domain with at least one dot",
        ));
    }
    if plural.is_empty() {
        causes.push(Cause::required("spec.names.plural"));
    } else if !crate::kinds::validate::is_dns1123_label(plural) {
        causes.push(Cause::invalid(
            "spec.names.plural",
            &json!(plural),
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'",
        ));
    }
    if kind.is_empty() {
        causes.push(Cause::required("spec.names.kind"));
    }
    let expected = format!("{plural}.{group}");
    if crate::meta::name(object) != expected {
        causes.push(Cause::invalid(
            "metadata.name",
            &json!(crate::meta::name(object)),
            "must be spec.names.plural+\".\"+spec.group".to_string(),
        ));
    }
    match s("/spec/scope") {
        "Namespaced" | "Cluster" => {}
        other => causes.push(Cause::new(
            "FieldValueNotSupported",
            "spec.scope",
            format!("{other:?}: supported values: \"Cluster\", \"Namespaced\""),
        )),
    }
    let versions = object
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if versions.is_empty() {
        causes.push(Cause::required("spec.versions"));
    }
    let storage = versions
        .iter()
        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .count();
    if !versions.is_empty() && storage != 1 {
        causes.push(Cause::invalid(
            "spec.versions",
            &json!(versions.len()),
            "must have exactly one version marked as storage version",
        ));
    }
    for (i, version) in versions.iter().enumerate() {
        if version.pointer("/schema/openAPIV3Schema").is_none() {
            causes.push(Cause::required(format!(
                "spec.versions[{i}].schema.openAPIV3Schema"
            )));
        }
    }
    if let Some(old) = old {
        for (pointer, field) in [
            ("/spec/group", "spec.group"),
            ("/spec/names/plural", "spec.names.plural"),
            ("/spec/scope", "spec.scope"),
        ] {
            if old.pointer(pointer) != object.pointer(pointer) {
                causes.push(Cause::invalid(
                    field,
                    object.pointer(pointer).unwrap_or(&Value::Null),
                    "field is immutable",
                ));
            }
        }
    }
}

/// The resource types a CRD defines (one per served version).
#[must_use]
pub fn resource_types(crd: &Value) -> Vec<ResourceType> {
    let s = |pointer: &str| {
        crd.pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let strings = |pointer: &str| crate::meta::strings_at(crd, pointer);
    let group = s("/spec/group");
    let plural = s("/spec/names/plural");
    let kind = s("/spec/names/kind");
    let singular = match s("/spec/names/singular") {
        empty if empty.is_empty() => kind.to_lowercase(),
        singular => singular,
    };
    let namespaced = s("/spec/scope") != "Cluster";
    let mut types = Vec::new();
    for version in crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if version.get("served").and_then(Value::as_bool) != Some(true) {
            continue;
        }
        let name = version
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let mut subresources = Vec::new();
        if version.pointer("/subresources/status").is_some() {
            subresources.push(Subresource {
                name: "status".into(),
                group: group.clone(),
                version: name.clone(),
                kind: kind.clone(),
                verbs: vec!["get".into(), "patch".into(), "update".into()],
            });
        }
        let scale = version.pointer("/subresources/scale").map(|scale| {
            subresources.push(Subresource {
                name: "scale".into(),
                group: "autoscaling".into(),
                version: "v1".into(),
                kind: "Scale".into(),
                verbs: vec!["get".into(), "patch".into(), "update".into()],
            });
            let path = |field: &str| {
                scale
                    .get(field)
                    .and_then(Value::as_str)
                    .map(|p| format!("/{}", p.trim_start_matches('.').replace('.', "/")))
            };
            ScalePaths {
                spec_replicas: path("specReplicasPath").unwrap_or_else(|| "/spec/replicas".into()),
                status_replicas: path("statusReplicasPath")
                    .unwrap_or_else(|| "/status/replicas".into()),
                label_selector: path("labelSelectorPath"),
            }
        });
        let printer_columns = version
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .map(|columns| {
                columns
                    .iter()
                    .map(|c| PrinterColumn {
                        name: c
                            .get("name")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned(),
                        type_: c
                            .get("type")
                            .and_then(Value::as_str)
                            .unwrap_or("string")
                            .to_owned(),
                        format: c
                            .get("format")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned(),
                        description: c
                            .get("description")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned(),
                        priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                        json_path: c
                            .get("jsonPath")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let schema = version
            .pointer("/schema/openAPIV3Schema")
            .cloned()
            .unwrap_or_else(
                || json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
            );
        types.push(ResourceType {
            group: group.clone(),
            version: name,
            kind: kind.clone(),
            plural: plural.clone(),
            singular: singular.clone(),
            namespaced,
            short_names: strings("/spec/names/shortNames"),
            categories: strings("/spec/names/categories"),
            verbs: STANDARD_VERBS.iter().map(|v| (*v).to_owned()).collect(),
            subresources,
            storage_prefix: format!("/registry/{group}/{plural}/"),
            schema: Some(SchemaSource::Custom(Arc::new(schema))),
            tracks_generation: true,
            scale,
            printer_columns,
            custom: true,
            review: false,
        });
    }
    types
}

fn group_and_plural(crd: &Value) -> (String, String) {
    let text = |pointer: &str| {
        crd.pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    (text("/spec/group"), text("/spec/names/plural"))
}

/// Starts serving a CRD's resources and marks it Established.
pub async fn register(server: &Arc<ApiServer>, crd: &Value) {
    let (group, plural) = group_and_plural(crd);
    let types = if crate::meta::is_deleting(crd) {
        Vec::new()
    } else {
        resource_types(crd)
    };
    server.registry.set_custom(&group, &plural, types);
    if crate::meta::is_deleting(crd) {
        return;
    }
    let established = crd
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter().any(|c| {
                c.get("type") == Some(&json!("Established"))
                    && c.get("status") == Some(&json!("True"))
            })
        });
    if established && crd.pointer("/status/acceptedNames") == crd.pointer("/spec/names") {
        return;
    }
    let Some(crds) =
        server
            .registry
            .lookup("apiextensions.k8s.io", "v1", "customresourcedefinitions")
    else {
        return;
    };
    let now = crate::meta::now();
    let mut updated = crd.clone();
    updated["status"] = json!({
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "lastTransitionTime": now, "reason": "NoConflicts", "message": "no conflicts found"},
            {"type": "Established", "status": "True", "lastTransitionTime": now, "reason": "InitialNamesAccepted", "message": "the initial names have been accepted"},
        ],
        "acceptedNames": crd.pointer("/spec/names").cloned().unwrap_or_else(|| json!({})),
        "storedVersions": crd.pointer("/spec/versions").and_then(Value::as_array).into_iter().flatten()
            .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
            .filter_map(|v| v.get("name").cloned()).collect::<Vec<_>>(),
    });
    let revision = crate::meta::meta_str(crd, "resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if let Err(error) = server.objects.update(&crds, updated, revision).await
        && error.code != 409
    {
        tracing::warn!(error = %error.message, "failed to mark the custom resource definition established");
    }
}

/// Stops serving a deleted CRD and deletes its custom resources.
pub async fn unregister(server: &Arc<ApiServer>, crd: &Value) {
    let (group, plural) = group_and_plural(crd);
    server.registry.set_custom(&group, &plural, Vec::new());
    let prefix = format!("/registry/{group}/{plural}/");
    if let Ok((kvs, _, _)) = server.objects.list_raw(&prefix, None, None, 0).await {
        for kv in kvs {
            let _ = server.objects.storage().delete(&kv.key, None).await;
        }
    }
}
