//! OpenAPI documents: `/openapi/v3` (one document per group-version, with real schemas, so
//! `kubectl explain` works and kubectl delegates validation to the server with
//! `fieldValidation=Strict`) and `/openapi/v2` (protobuf, the form kubectl 1.27–1.28 download
//! before `apply`; it carries the paths that tell kubectl the server validates).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use parking_lot::Mutex;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::ApiServer;
use crate::error::{ApiError, ApiResult};
use crate::registry::{ResourceType, SchemaSource};
use crate::rest::{Req, json_response};
use crate::schema::{definitions, ref_name};

/// The path key of a group-version in the v3 index: `api/v1` or `apis/<group>/<version>`.
fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// Built v3 documents with their hashes, per group-version path, valid for one registry
/// generation: kubectl reads the index (which needs every hash) before each document.
#[derive(Default)]
pub struct V3Cache(Mutex<V3Entries>);

#[derive(Default)]
struct V3Entries {
    generation: u64,
    by_path: HashMap<String, Arc<V3Document>>,
}

struct V3Document {
    document: Value,
    hash: String,
}

/// The v3 document of a group-version and its hash, built once per registry generation.
fn v3_cached(server: &ApiServer, group: &str, version: &str) -> Arc<V3Document> {
    let generation = server.registry.generation();
    let path = gv_path(group, version);
    {
        let cache = server.openapi_v3.0.lock();
        if cache.generation == generation
            && let Some(entry) = cache.by_path.get(&path)
        {
            return entry.clone();
        }
    }
    let document = v3_build(server, group, version);
    let hash = document_hash(&document);
    let entry = Arc::new(V3Document { document, hash });
    let mut cache = server.openapi_v3.0.lock();
    if cache.generation != generation {
        *cache = V3Entries {
            generation,
            by_path: HashMap::new(),
        };
    }
    cache.by_path.insert(path, entry.clone());
    entry
}

/// `GET /openapi/v3`.
pub fn v3_index(server: &Arc<ApiServer>) -> Response {
    let mut paths = Map::new();
    let mut seen = BTreeSet::new();
    for rt in server.registry.all() {
        if seen.insert((rt.group.clone(), rt.version.clone())) {
            let path = gv_path(&rt.group, &rt.version);
            let hash = &v3_cached(server, &rt.group, &rt.version).hash;
            paths.insert(
                path.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}),
            );
        }
    }
    json_response(StatusCode::OK, &json!({"paths": paths}))
}

fn document_hash(document: &Value) -> String {
    let bytes = serde_json::to_vec(document).expect("serializes");
    let digest = Sha256::digest(&bytes);
    digest.iter().take(32).map(|b| format!("{b:02X}")).collect()
}

/// `GET /openapi/v3/<gv path>`.
///
/// # Errors
/// 404 for unknown group-versions.
pub fn v3_document(server: &Arc<ApiServer>, path: &str, req: &Req) -> ApiResult<Response> {
    let parts: Vec<&str> = path.split('/').collect();
    let (group, version) = match parts.as_slice() {
        ["api", version] => ("", *version),
        ["apis", group, version] => (*group, *version),
        _ => return Err(ApiError::no_route()),
    };
    if !server.registry.serves_group_version(group, version) {
        return Err(ApiError::no_route());
    }
    let cached = v3_cached(server, group, version);
    let (document, hash) = (&cached.document, &cached.hash);
    if let Some(requested) = req.query.get("hash")
        && requested != hash
    {
        let location = format!("/openapi/v3/{path}?hash={hash}");
        return Ok((
            StatusCode::MOVED_PERMANENTLY,
            [(http::header::LOCATION, location)],
        )
            .into_response());
    }
    let mut response = json_response(StatusCode::OK, document);
    if req.query.get("hash").is_some() {
        response.headers_mut().insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("public, immutable"),
        );
    }
    Ok(response)
}

/// Converts a vendored JSON-schema node to OpenAPI 3.0 as Kubernetes publishes it.
fn to_openapi(node: &Value) -> Value {
    match node {
        Value::Object(map) => {
            if let Some(name) = map
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.rsplit('/').next())
            {
                let reference = json!({"$ref": format!("#/components/schemas/{name}")});
                let mut out = Map::new();
                for (k, v) in map {
                    if k != "$ref" {
                        out.insert(k.clone(), to_openapi(v));
                    }
                }
                if out.is_empty() {
                    return reference;
                }
                out.insert("allOf".into(), json!([reference]));
                return Value::Object(out);
            }
            if let Some(Value::Array(alternatives)) = map.get("oneOf") {
                let types: Vec<&str> = alternatives
                    .iter()
                    .flat_map(|a| match a.get("type") {
                        Some(Value::Array(ts)) => {
                            ts.iter().filter_map(Value::as_str).collect::<Vec<_>>()
                        }
                        Some(Value::String(t)) => vec![t.as_str()],
                        _ => vec![],
                    })
                    .collect();
                let mut out = Map::new();
                if let Some(description) = map.get("description") {
                    out.insert("description".into(), description.clone());
                }
                out.insert("type".into(), json!("string"));
                if types.contains(&"integer") {
                    out.insert("format".into(), json!("int-or-string"));
                }
                return Value::Object(out);
            }
            let mut out = Map::new();
            for (k, v) in map {
                match k.as_str() {
                    "type" => {
                        let ty = match v {
                            Value::Array(ts) => ts
                                .iter()
                                .find(|t| *t != "null")
                                .cloned()
                                .unwrap_or(Value::Null),
                            other => other.clone(),
                        };
                        if !ty.is_null() {
                            out.insert("type".into(), ty);
                        }
                    }
                    "properties" => {
                        let properties = v
                            .as_object()
                            .map(|p| {
                                p.iter()
                                    .map(|(name, schema)| (name.clone(), property(name, schema)))
                                    .collect()
                            })
                            .unwrap_or_default();
                        out.insert(k.clone(), Value::Object(properties));
                    }
                    _ => {
                        out.insert(k.clone(), to_openapi(v));
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(to_openapi).collect()),
        other => other.clone(),
    }
}

fn property(name: &str, schema: &Value) -> Value {
    let mut converted = to_openapi(schema);
    // the vendored data pins apiVersion/kind with enums that the real documents do not have
    if (name == "apiVersion" || name == "kind")
        && let Some(map) = converted.as_object_mut()
    {
        map.remove("enum");
    }
    converted
}

/// Every definition reachable from `roots`.
fn closure(roots: impl IntoIterator<Item = String>) -> BTreeMap<String, Value> {
    let defs = definitions();
    let mut out = BTreeMap::new();
    let mut queue: VecDeque<String> = roots.into_iter().collect();
    while let Some(name) = queue.pop_front() {
        if out.contains_key(&name) {
            continue;
        }
        let Some(schema) = defs.get(&name) else {
            continue;
        };
        collect_refs(schema, &mut queue);
        out.insert(name, to_openapi(schema));
    }
    out
}

fn collect_refs(node: &Value, queue: &mut VecDeque<String>) {
    match node {
        Value::Object(map) => {
            if let Some(name) = ref_name(node) {
                queue.push_back(name.to_owned());
            }
            for v in map.values() {
                collect_refs(v, queue);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, queue)),
        _ => {}
    }
}

fn custom_schema_name(rt: &ResourceType) -> String {
    let reversed: Vec<&str> = rt.group.split('.').rev().collect();
    format!("{}.{}.{}", reversed.join("."), rt.version, rt.kind)
}

fn operation(rt: &ResourceType, action: &str, schema_ref: &str) -> Value {
    let mut parameters = vec![
        json!({"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}}),
    ];
    if matches!(action, "post" | "put" | "patch") {
        parameters.push(json!({"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}}));
        parameters.push(json!({"name": "fieldValidation", "in": "query", "description": "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields.", "schema": {"type": "string", "uniqueItems": true}}));
    }
    if action == "patch" {
        parameters.push(json!({"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}}));
    }
    let mut op = json!({
        "operationId": format!("{action}{}", rt.kind),
        "parameters": parameters,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": schema_ref}}}}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
    });
    if action == "patch" {
        let mut content = Map::new();
        for media_type in [
            "application/apply-patch+yaml",
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
        ] {
            if rt.custom && media_type == "application/strategic-merge-patch+json" {
                continue;
            }
            content.insert(media_type.into(), json!({"schema": {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"}}));
        }
        op["requestBody"] = json!({"content": content, "required": true});
    } else if matches!(action, "post" | "put") {
        op["requestBody"] =
            json!({"content": {"*/*": {"schema": {"$ref": schema_ref}}}, "required": true});
    }
    op
}

fn v3_build(server: &ApiServer, group: &str, version: &str) -> Value {
    let types: Vec<Arc<ResourceType>> = server
        .registry
        .all()
        .into_iter()
        .filter(|t| t.group == group && t.version == version)
        .collect();
    let mut roots = vec![
        "io.k8s.apimachinery.pkg.apis.meta.v1.Patch".to_owned(),
        "io.k8s.apimachinery.pkg.apis.meta.v1.Status".to_owned(),
        "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions".to_owned(),
    ];
    let mut custom_schemas = BTreeMap::new();
    let mut paths = Map::new();
    for rt in &types {
        let schema_name = match &rt.schema {
            Some(SchemaSource::Builtin(name)) => {
                roots.push((*name).to_owned());
                (*name).to_owned()
            }
            Some(SchemaSource::Custom(schema)) => {
                let name = custom_schema_name(rt);
                let mut converted = to_openapi(schema);
                if let Some(map) = converted.as_object_mut() {
                    let properties = map.entry("properties").or_insert_with(|| json!({}));
                    properties["apiVersion"] = json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."});
                    properties["kind"] = json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."});
                    properties["metadata"] = json!({"allOf": [{"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}], "description": "Standard object's metadata."});
                    map.insert(
                        "x-kubernetes-group-version-kind".into(),
                        json!([{"group": rt.group, "version": rt.version, "kind": rt.kind}]),
                    );
                }
                roots.push("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta".into());
                custom_schemas.insert(name.clone(), converted);
                name
            }
            None => continue,
        };
        let schema_ref = format!("#/components/schemas/{schema_name}");
        let base = format!("/{}", gv_path(&rt.group, &rt.version));
        let collection = if rt.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", rt.plural)
        } else {
            format!("{base}/{}", rt.plural)
        };
        let item = format!("{collection}/{{name}}");
        paths.insert(collection.clone(), json!({"get": operation(rt, "list", &schema_ref), "post": operation(rt, "post", &schema_ref)}));
        paths.insert(
            item.clone(),
            json!({
                "get": operation(rt, "get", &schema_ref),
                "put": operation(rt, "put", &schema_ref),
                "patch": operation(rt, "patch", &schema_ref),
                "delete": operation(rt, "delete", &schema_ref),
            }),
        );
        for sub in &rt.subresources {
            if sub.name == "status" {
                paths.insert(
                    format!("{item}/status"),
                    json!({
                        "get": operation(rt, "get", &schema_ref),
                        "put": operation(rt, "put", &schema_ref),
                        "patch": operation(rt, "patch", &schema_ref),
                    }),
                );
            }
        }
    }
    let mut schemas: Map<String, Value> = closure(roots).into_iter().collect();
    schemas.extend(custom_schemas);
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v1.{}.0", crate::discovery::KUBERNETES_MINOR)},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

/// Messages of the gnostic OpenAPI v2 protobuf (`openapi.v2` package), only the fields used.
mod v2proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Document {
        #[prost(string, tag = "1")]
        pub swagger: String,
        #[prost(message, optional, tag = "2")]
        pub info: Option<Info>,
        #[prost(message, optional, tag = "8")]
        pub paths: Option<Paths>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Info {
        #[prost(string, tag = "1")]
        pub title: String,
        #[prost(string, tag = "2")]
        pub version: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Paths {
        #[prost(message, repeated, tag = "2")]
        pub path: Vec<NamedPathItem>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NamedPathItem {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<PathItem>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PathItem {
        #[prost(message, optional, tag = "8")]
        pub patch: Option<Operation>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Operation {
        #[prost(string, tag = "5")]
        pub operation_id: String,
        #[prost(message, repeated, tag = "8")]
        pub parameters: Vec<ParametersItem>,
        #[prost(message, repeated, tag = "13")]
        pub vendor_extension: Vec<NamedAny>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ParametersItem {
        #[prost(message, optional, tag = "1")]
        pub parameter: Option<Parameter>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Parameter {
        #[prost(message, optional, tag = "2")]
        pub non_body_parameter: Option<NonBodyParameter>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NonBodyParameter {
        #[prost(message, optional, tag = "3")]
        pub query_parameter_sub_schema: Option<QueryParameterSubSchema>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct QueryParameterSubSchema {
        #[prost(string, tag = "2")]
        pub r#in: String,
        #[prost(string, tag = "4")]
        pub name: String,
        #[prost(string, tag = "6")]
        pub r#type: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NamedAny {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<Any>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Any {
        #[prost(string, tag = "2")]
        pub yaml: String,
    }
}

/// `GET /openapi/v2`: protobuf when asked for (kubectl 1.27–1.28), else JSON.
pub fn v2(server: &Arc<ApiServer>, req: &Req) -> Response {
    let mut items = Vec::new();
    let mut json_paths = Map::new();
    for rt in server.registry.all() {
        let base = format!("/{}", gv_path(&rt.group, &rt.version));
        let path = if rt.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", rt.plural)
        } else {
            format!("{base}/{}/{{name}}", rt.plural)
        };
        let gvk_yaml = format!(
            "group: {:?}\nversion: {}\nkind: {}\n",
            rt.group, rt.version, rt.kind
        );
        items.push(v2proto::NamedPathItem {
            name: path.clone(),
            value: Some(v2proto::PathItem {
                patch: Some(v2proto::Operation {
                    operation_id: format!("patch{}", rt.kind),
                    parameters: vec![v2proto::ParametersItem {
                        parameter: Some(v2proto::Parameter {
                            non_body_parameter: Some(v2proto::NonBodyParameter {
                                query_parameter_sub_schema: Some(
                                    v2proto::QueryParameterSubSchema {
                                        r#in: "query".into(),
                                        name: "fieldValidation".into(),
                                        r#type: "string".into(),
                                    },
                                ),
                            }),
                        }),
                    }],
                    vendor_extension: vec![v2proto::NamedAny {
                        name: "x-kubernetes-group-version-kind".into(),
                        value: Some(v2proto::Any { yaml: gvk_yaml }),
                    }],
                }),
            }),
        });
        json_paths.insert(path, json!({"patch": {
            "operationId": format!("patch{}", rt.kind),
            "parameters": [{"name": "fieldValidation", "in": "query", "type": "string"}],
            "x-kubernetes-group-version-kind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
        }}));
    }
    let wants_protobuf = req
        .headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("protobuf"));
    let version = format!("v1.{}.0", crate::discovery::KUBERNETES_MINOR);
    if wants_protobuf {
        let document = v2proto::Document {
            swagger: "2.0".into(),
            info: Some(v2proto::Info {
                title: "Kubernetes".into(),
                version,
            }),
            paths: Some(v2proto::Paths { path: items }),
        };
        let body = prost::Message::encode_to_vec(&document);
        return (
            StatusCode::OK,
            [(
                http::header::CONTENT_TYPE,
                "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
            )],
            body,
        )
            .into_response();
    }
    json_response(
        StatusCode::OK,
        &json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": version}, "paths": json_paths}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversion_matches_kubernetes_openapi_v3_shapes() {
        let defs = definitions();
        let deployment = to_openapi(defs.get("io.k8s.api.apps.v1.Deployment").unwrap());
        assert_eq!(deployment["type"], "object");
        assert_eq!(
            deployment["properties"]["metadata"]["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
        );
        assert!(deployment["properties"]["kind"].get("enum").is_none());
        let int_or_string = to_openapi(
            defs.get("io.k8s.apimachinery.pkg.util.intstr.IntOrString")
                .unwrap(),
        );
        assert_eq!(int_or_string["format"], "int-or-string");
        let closure = closure(["io.k8s.api.apps.v1.Deployment".to_owned()]);
        assert!(closure.contains_key("io.k8s.api.core.v1.PodSpec"));
        assert!(closure.contains_key("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"));
    }
}
