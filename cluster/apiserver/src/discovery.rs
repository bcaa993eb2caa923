//! `/version` and API discovery, legacy (`APIVersions`, `APIGroupList`, `APIResourceList`) and
//! aggregated (`APIGroupDiscoveryList` v2 and v2beta1), negotiated on the `Accept` header exactly
//! as kubectl 1.27–1.33 and kube-rs expect (see the reference's discovery section).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Value, json};

use crate::ApiServer;
use crate::error::{ApiError, ApiResult};
use crate::registry::ResourceType;
use crate::rest::{Req, json_response};

/// The Kubernetes version this server implements; kubectl's dispatcher picks its client by
/// the minor.
pub const KUBERNETES_MINOR: &str = "33";

/// `GET /version`.
pub fn version(_server: &ApiServer) -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "major": "1",
            "minor": KUBERNETES_MINOR,
            "gitVersion": format!("v1.{KUBERNETES_MINOR}.0+kelson-{}", env!("CARGO_PKG_VERSION")),
            "gitCommit": "kelson",
            "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "n/a (rust)",
            "compiler": "rustc",
            "platform": format!("{}/{}", std::env::consts::OS, go_arch()),
        }),
    )
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Which aggregated discovery version the client accepts, if any (first offered wins).
fn aggregated_version(req: &Req) -> Option<&'static str> {
    let accept = req.headers.get(http::header::ACCEPT)?.to_str().ok()?;
    for range in accept.split(',') {
        let params: Vec<String> = range
            .split(';')
            .map(|p| p.trim().replace(' ', ""))
            .collect();
        let has = |p: &str| params.iter().any(|x| x == p);
        if params.first().map(String::as_str) == Some("application/json")
            && has("g=apidiscovery.k8s.io")
            && has("as=APIGroupDiscoveryList")
        {
            if has("v=v2") {
                return Some("v2");
            }
            if has("v=v2beta1") {
                return Some("v2beta1");
            }
        }
    }
    None
}

fn aggregated_response(version: &str, items: Vec<Value>) -> Response {
    let body = json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{version}"),
        "metadata": {},
        "items": items,
    });
    let content_type =
        format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList");
    let body = serde_json::to_vec(&body).expect("serializes");
    (
        StatusCode::OK,
        [(http::header::CONTENT_TYPE, content_type)],
        body,
    )
        .into_response()
}

/// The versions of one group, preferred first, each with its resource types.
type GroupVersions = Vec<(String, Vec<Arc<ResourceType>>)>;

/// Groups and their versions in serving order.
fn group_versions(server: &ApiServer) -> BTreeMap<String, GroupVersions> {
    let mut groups: BTreeMap<String, GroupVersions> = BTreeMap::new();
    for rt in server
        .registry
        .all()
        .into_iter()
        .chain(crate::resource_metrics::types())
    {
        let versions = groups.entry(rt.group.clone()).or_default();
        match versions.iter_mut().find(|(v, _)| *v == rt.version) {
            Some((_, types)) => types.push(rt),
            None => versions.push((rt.version.clone(), vec![rt])),
        }
    }
    for versions in groups.values_mut() {
        versions.sort_by_key(|v| std::cmp::Reverse(version_priority(&v.0)));
    }
    groups
}

/// Kubernetes' version ordering: GA > beta > alpha, higher numbers first.
fn version_priority(version: &str) -> (u8, u32, u32) {
    let rest = version.trim_start_matches('v');
    let major_end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let major: u32 = rest[..major_end].parse().unwrap_or(0);
    let suffix = &rest[major_end..];
    if suffix.is_empty() {
        return (3, major, 0);
    }
    let (level, number) = if let Some(n) = suffix.strip_prefix("beta") {
        (2, n)
    } else if let Some(n) = suffix.strip_prefix("alpha") {
        (1, n)
    } else {
        (0, suffix)
    };
    (level, major, number.parse().unwrap_or(0))
}

fn aggregated_resource(rt: &ResourceType) -> Value {
    let mut resource = json!({
        "resource": rt.plural,
        "responseKind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
        "scope": if rt.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": rt.singular,
        "verbs": rt.verbs,
    });
    if !rt.short_names.is_empty() {
        resource["shortNames"] = json!(rt.short_names);
    }
    if !rt.categories.is_empty() {
        resource["categories"] = json!(rt.categories);
    }
    if !rt.subresources.is_empty() {
        resource["subresources"] = Value::Array(
            rt.subresources
                .iter()
                .map(|s| {
                    json!({
                        "subresource": s.name,
                        "responseKind": {"group": s.group, "version": s.version, "kind": s.kind},
                        "verbs": s.verbs,
                    })
                })
                .collect(),
        );
    }
    resource
}

fn aggregated_group(name: &str, versions: &[(String, Vec<Arc<ResourceType>>)]) -> Value {
    json!({
        "metadata": {"name": name, "creationTimestamp": null},
        "versions": versions.iter().map(|(version, types)| json!({
            "version": version,
            "resources": types.iter().map(|t| aggregated_resource(t)).collect::<Vec<_>>(),
            "freshness": "Current",
        })).collect::<Vec<_>>(),
    })
}

/// `GET /api`.
pub fn core_versions(server: &ApiServer, req: &Req) -> Response {
    let groups = group_versions(server);
    if let Some(version) = aggregated_version(req) {
        let items = groups
            .get("")
            .map(|v| vec![aggregated_group("", v)])
            .unwrap_or_default();
        return aggregated_response(version, items);
    }
    let address = server.advertised_address();
    json_response(
        StatusCode::OK,
        &json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}],
        }),
    )
}

fn legacy_group(name: &str, versions: &[(String, Vec<Arc<ResourceType>>)]) -> Value {
    let entries: Vec<Value> = versions
        .iter()
        .map(|(v, _)| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({"name": name, "versions": entries, "preferredVersion": entries.first().cloned().unwrap_or(Value::Null)})
}

/// `GET /apis`.
pub fn groups(server: &ApiServer, req: &Req) -> Response {
    let groups = group_versions(server);
    if let Some(version) = aggregated_version(req) {
        let items = groups
            .iter()
            .filter(|(name, _)| !name.is_empty())
            .map(|(n, v)| aggregated_group(n, v))
            .collect();
        return aggregated_response(version, items);
    }
    let list: Vec<Value> = groups
        .iter()
        .filter(|(n, _)| !n.is_empty())
        .map(|(n, v)| legacy_group(n, v))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": list}),
    )
}

/// `GET /apis/<group>`.
///
/// # Errors
/// 404 for unknown groups.
pub fn group(server: &ApiServer, name: &str) -> ApiResult<Response> {
    let groups = group_versions(server);
    let versions = groups.get(name).ok_or_else(ApiError::no_route)?;
    let mut group = legacy_group(name, versions);
    group["kind"] = json!("APIGroup");
    group["apiVersion"] = json!("v1");
    Ok(json_response(StatusCode::OK, &group))
}

/// `GET /api/v1` or `/apis/<group>/<version>`.
///
/// # Errors
/// 404 when nothing is served there.
pub fn resource_list(server: &ApiServer, group: &str, version: &str) -> ApiResult<Response> {
    let types: Vec<Arc<ResourceType>> = server
        .registry
        .all()
        .into_iter()
        .chain(crate::resource_metrics::types())
        .filter(|t| t.group == group && t.version == version)
        .collect();
    if types.is_empty() {
        return Err(ApiError::no_route());
    }
    let mut resources = Vec::new();
    for rt in &types {
        let mut entry = json!({
            "name": rt.plural,
            "singularName": rt.singular,
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": rt.verbs,
        });
        if !rt.short_names.is_empty() {
            entry["shortNames"] = json!(rt.short_names);
        }
        if !rt.categories.is_empty() {
            entry["categories"] = json!(rt.categories);
        }
        resources.push(entry);
        for sub in &rt.subresources {
            let mut entry = json!({
                "name": format!("{}/{}", rt.plural, sub.name),
                "singularName": "",
                "namespaced": rt.namespaced,
                "kind": sub.kind,
                "verbs": sub.verbs,
            });
            if sub.group != rt.group || sub.version != rt.version {
                entry["group"] = json!(sub.group);
                entry["version"] = json!(sub.version);
            }
            resources.push(entry);
        }
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_like_kubernetes() {
        let mut versions = vec!["v1beta1", "v1", "v2alpha1", "v2", "v1alpha1", "v1beta2"];
        versions.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        assert_eq!(
            versions,
            ["v2", "v1", "v1beta2", "v1beta1", "v2alpha1", "v1alpha1"]
        );
    }
}
