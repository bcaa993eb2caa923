//! The Kubernetes REST API over storage: request routing, then one module per concern —
//! [`read`] (get, list, watch, Table), [`write`] (create, update, patch, delete and the
//! subresources), [`objects`] (storage access) and [`body`] (decoding request bodies).
//!
//! Start at [`handle`]: it authenticates, parses the path into a [`ResourceRequest`] the way
//! Kubernetes' `RequestInfoFactory` does, and calls the handler for the verb.

pub mod body;
pub mod eviction;
pub mod objects;
pub mod read;
pub mod write;

use std::sync::Arc;

use std::time::Instant;
use tracing::Instrument as _;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, Request, StatusCode};
use serde_json::Value;

use crate::ApiServer;
use crate::auth::User;
use crate::error::{ApiError, ApiResult};
use crate::registry::ResourceType;

/// Decoded query parameters (repeated keys kept in order).
#[derive(Clone, Debug, Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    /// Parses a raw query string.
    #[must_use]
    pub fn parse(raw: Option<&str>) -> Self {
        Self(
            form_urlencoded::parse(raw.unwrap_or("").as_bytes())
                .into_owned()
                .collect(),
        )
    }

    /// Every pair, in order.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The first value of `name`.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`.
    #[must_use]
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// A boolean parameter (`true`, `1`).
    #[must_use]
    pub fn flag(&self, name: &str) -> bool {
        matches!(self.get(name), Some("true" | "1" | "True"))
    }

    /// An integer parameter.
    ///
    /// # Errors
    /// 400 when present but not an integer.
    pub fn int(&self, name: &str) -> ApiResult<Option<i64>> {
        self.get(name)
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| ApiError::bad_request(format!("invalid {name}: {v:?}")))
            })
            .transpose()
    }
}

/// One request, authenticated, with its body not yet read.
pub struct Req {
    /// HTTP method.
    pub method: Method,
    /// Query parameters.
    pub query: Query,
    /// Request headers.
    pub headers: HeaderMap,
    /// The authenticated user.
    pub user: User,
    /// The body.
    pub body: Body,
}

impl Req {
    /// The field manager for non-apply writes: `fieldManager`, else derived from the user agent
    /// as Kubernetes does (`kubectl-client-side-apply/v1.33 ...` → `kubectl-client-side-apply`).
    #[must_use]
    pub fn field_manager(&self) -> String {
        if let Some(manager) = self.query.get("fieldManager").filter(|m| !m.is_empty()) {
            return manager.to_owned();
        }
        let agent = self
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("unknown");
        agent.split('/').next().unwrap_or(agent).to_owned()
    }

    /// Whether the client asked for a dry run.
    #[must_use]
    pub fn dry_run(&self) -> bool {
        self.query.all("dryRun").contains(&"All")
    }

    /// Whether the client accepts a `Table` rendering.
    #[must_use]
    pub fn wants_table(&self) -> bool {
        self.accepts_meta_kind("Table")
    }

    /// Whether the client asked for metadata only (`as=PartialObjectMetadata`, or
    /// `PartialObjectMetadataList` for lists), as metadata informers do; a Table, when also
    /// accepted, comes first.
    #[must_use]
    pub fn wants_metadata(&self) -> bool {
        !self.wants_table()
            && (self.accepts_meta_kind("PartialObjectMetadata")
                || self.accepts_meta_kind("PartialObjectMetadataList"))
    }

    /// Whether an `Accept` media type asks for `as=<kind>;g=meta.k8s.io`.
    fn accepts_meta_kind(&self, kind: &str) -> bool {
        self.headers
            .get_all(http::header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|part| {
                let parameters: Vec<&str> = part.split(';').skip(1).map(str::trim).collect();
                parameters.contains(&format!("as={kind}").as_str())
                    && parameters.contains(&"g=meta.k8s.io")
            })
    }
}

/// A request for a resource, parsed from its path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceRequest {
    /// API group ("" for core).
    pub group: String,
    /// Version.
    pub version: String,
    /// Namespace from the path.
    pub namespace: Option<String>,
    /// Resource (plural).
    pub resource: String,
    /// Object name.
    pub name: Option<String>,
    /// Subresource.
    pub subresource: Option<String>,
}

/// Parses `/api/v1/...` or `/apis/<group>/<version>/...` below the group-version.
#[must_use]
pub fn parse_resource_path(group: &str, version: &str, parts: &[&str]) -> Option<ResourceRequest> {
    let mut parts = parts.to_vec();
    let mut namespace = None;
    if parts.first() == Some(&"namespaces") && parts.len() > 1 {
        namespace = Some(parts[1].to_owned());
        if parts.len() > 2 && !matches!(parts[2], "status" | "finalize") {
            parts.drain(..2);
        }
    }
    let resource = (*parts.first()?).to_owned();
    if resource.is_empty() {
        return None;
    }
    let name = parts.get(1).map(|s| (*s).to_owned());
    let subresource = parts.get(2).map(|s| (*s).to_owned());
    if parts.len() > 3 {
        return None;
    }
    // `/api/v1/namespaces/<name>` names the namespace object itself
    if resource == "namespaces" && namespace.is_some() && name.as_deref() == namespace.as_deref() {
        return Some(ResourceRequest {
            group: group.to_owned(),
            version: version.to_owned(),
            namespace: None,
            resource,
            name,
            subresource,
        });
    }
    Some(ResourceRequest {
        group: group.to_owned(),
        version: version.to_owned(),
        namespace,
        resource,
        name,
        subresource,
    })
}

fn is_public(path: &str) -> bool {
    path == "/version"
        || path == "/cacerts"
        || ["/healthz", "/livez", "/readyz"]
            .iter()
            .any(|p| path == *p || path.starts_with(&format!("{p}/")))
}

/// Handles one HTTP request, in a span named for what it did (`create pods`) that continues
/// the caller's trace when it sends a `traceparent` header.
pub async fn handle(server: Arc<ApiServer>, request: Request<Body>) -> Response {
    let span = tracing::info_span!(
        "request",
        otel.kind = "server",
        http.request.method = %request.method(),
        url.path = %request.uri().path(),
        http.response.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    kelson_common::trace::continue_from(&span, request.headers());
    kelson_common::trace::record_trace_id(&span);
    handle_in(server, request, span.clone())
        .instrument(span)
        .await
}

/// What a request was, as kube-apiserver labels its metrics.
#[derive(Clone, Debug, Default)]
pub struct RequestInfo {
    /// Kubernetes' verb: `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`, `connect` (empty for requests that are not for resources).
    pub verb: &'static str,
    /// API group.
    pub group: String,
    /// API version.
    pub version: String,
    /// Resource (plural).
    pub resource: String,
    /// Subresource, if any.
    pub subresource: String,
    /// `resource` (one object), `namespace` or `cluster` (empty when not for resources).
    pub scope: &'static str,
    /// `?dryRun=All`.
    pub dry_run: bool,
    /// A server-side apply patch.
    pub apply: bool,
}

impl RequestInfo {
    /// How spans name the request: `create pods`, `get pods/log`, `GET /version`.
    #[must_use]
    pub fn name(&self, method: &Method, path: &str) -> String {
        if self.verb.is_empty() {
            return format!("{method} {path}");
        }
        match self.subresource.as_str() {
            "" => format!("{} {}", self.verb, self.resource),
            sub => format!("{} {}/{sub}", self.verb, self.resource),
        }
    }
}

/// Records what a request did on its span, its metrics and (at debug level) a log line.
fn finished(
    server: &ApiServer,
    span: &tracing::Span,
    info: &RequestInfo,
    name: String,
    code: u16,
    started: Instant,
) {
    let elapsed = started.elapsed();
    server.metrics.observe(info, code, elapsed);
    tracing::debug!(
        request = %name,
        code,
        elapsed_ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    span.record("http.response.status_code", code);
    kelson_common::trace::rename(span, name);
}

async fn handle_in(
    server: Arc<ApiServer>,
    request: Request<Body>,
    span: tracing::Span,
) -> Response {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let user = crate::auth::authenticate(&server, &parts);
    let Some(user) = user.or_else(|| is_public(&path).then(User::anonymous)) else {
        return ApiError::unauthorized().into_response();
    };
    let user = match crate::auth::impersonate(&server, user, &parts.headers) {
        Ok(user) => user,
        Err(error) => return error.into_response(),
    };
    if let Some(target) = crate::proxy::target(&path) {
        let (verb, namespace, name, resource, subresource) = match &target {
            crate::proxy::Target::Pod {
                namespace,
                name,
                subresource,
            } => {
                // reading logs is `get`; exec, attach and port-forward are `create`, as
                // Kubernetes checks them (also when the client upgrades a GET to a WebSocket)
                let verb = if subresource == "log" {
                    "get"
                } else {
                    "create"
                };
                (verb, namespace.as_str(), name, "pods", subresource.as_str())
            }
            crate::proxy::Target::Node { name, .. } => {
                (path_verb(&parts.method), "", name, "nodes", "proxy")
            }
        };
        let attributes =
            crate::rbac::Attributes::resource(verb, "", resource, subresource, namespace, name);
        if let Err(error) = server.authorizer.check(&user, &attributes) {
            return error.into_response();
        }
        let (resource, subresource, scope) = match &target {
            crate::proxy::Target::Pod { subresource, .. } => {
                ("pods", subresource.clone(), "resource")
            }
            crate::proxy::Target::Node { .. } => ("nodes", "proxy".to_owned(), "resource"),
        };
        // logs are reads (GET pods/log), as kube-apiserver counts them; the rest connect
        let verb = if subresource == "log" {
            "get"
        } else {
            "connect"
        };
        let info = RequestInfo {
            verb,
            version: "v1".into(),
            resource: resource.into(),
            subresource,
            scope,
            ..RequestInfo::default()
        };
        let name = info.name(&parts.method, &path);
        let request = Request::from_parts(parts, body);
        let response = crate::proxy::forward(&server, target, request)
            .await
            .unwrap_or_else(IntoResponse::into_response);
        finished(
            &server,
            &span,
            &info,
            name,
            response.status().as_u16(),
            started,
        );
        return response;
    }
    let req = Req {
        method: parts.method.clone(),
        query: Query::parse(parts.uri.query()),
        headers: parts.headers,
        user,
        body,
    };
    let method = req.method.clone();
    let (info, response) = route(&server, &path, req).await;
    let response = response.unwrap_or_else(IntoResponse::into_response);
    let name = info.name(&method, &path);
    finished(
        &server,
        &span,
        &info,
        name,
        response.status().as_u16(),
        started,
    );
    response
}

/// The verb of a request for a path (or a proxied one), as Kubernetes names it.
fn path_verb(method: &Method) -> &'static str {
    match *method {
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "get",
    }
}

/// Paths that decide access themselves: the CA (public, for joining nodes), kubelet
/// certificates (nodes and admins) and log queries (per namespace), and resource paths,
/// authorized as resources.
fn authorizes_itself(segments: &[&str]) -> bool {
    matches!(
        segments,
        ["cacerts"] | ["kelson", "v1", "kubelet-certificate" | "logs", ..] | ["api", _, _, ..]
    ) || matches!(segments, ["apis", _, _, _, ..])
}

async fn route(
    server: &Arc<ApiServer>,
    path: &str,
    req: Req,
) -> (RequestInfo, ApiResult<Response>) {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let get = req.method == Method::GET;
    if !authorizes_itself(&segments) {
        let verb = match req.method {
            Method::POST => "post",
            Method::PUT => "put",
            Method::PATCH => "patch",
            Method::DELETE => "delete",
            _ => "get",
        };
        let attributes = crate::rbac::Attributes::path(verb, path);
        if let Err(error) = server.authorizer.check(&req.user, &attributes) {
            return (RequestInfo::default(), Err(error));
        }
    }
    let result = match segments.as_slice() {
        ["version"] if get => Ok(crate::discovery::version(server)),
        [probe] if get && matches!(*probe, "healthz" | "livez" | "readyz") => Ok(health()),
        [probe, _] if get && matches!(*probe, "healthz" | "livez" | "readyz") => Ok(health()),
        ["metrics"] if get => Ok(server.metrics.render()),
        ["cacerts"] if get => Ok(crate::join::ca_certs(server.pki.read().as_ref())),
        ["kelson", "v1", "kubelet-certificate"] if req.method == Method::POST => {
            let pki = server.pki.read().clone();
            crate::join::kubelet_certificate(pki.as_ref(), req).await
        }
        ["kelson", "v1", "prometheus-sd"] if get => {
            crate::prometheus_sd::handle(server, &req.query).await
        }
        ["kelson", "v1", "logs", kind] if get => {
            crate::logs::handle(server, &req.user, kind, &req.query).await
        }
        ["api"] if get => Ok(crate::discovery::core_versions(server, &req)),
        ["apis"] if get => Ok(crate::discovery::groups(server, &req)),
        ["api", version] if get => crate::discovery::resource_list(server, "", version),
        ["apis", group] if get => crate::discovery::group(server, group),
        ["apis", group, version] if get => crate::discovery::resource_list(server, group, version),
        ["openapi", "v2"] if get => Ok(crate::openapi::v2(server, &req)),
        ["openapi", "v3"] if get => Ok(crate::openapi::v3_index(server)),
        ["openapi", "v3", rest @ ..] if get => {
            crate::openapi::v3_document(server, &rest.join("/"), &req)
        }
        ["api", version, rest @ ..] => return resource(server, "", version, rest, req).await,
        [
            "apis",
            crate::resource_metrics::GROUP,
            crate::resource_metrics::VERSION,
            rest @ ..,
        ] => {
            let resource = rest
                .iter()
                .rev()
                .find(|p| matches!(**p, "nodes" | "pods"))
                .map_or_else(String::new, |r| (*r).to_owned());
            let (verb, scope) = match (rest.len() % 2 == 1, rest.first()) {
                (true, Some(&"namespaces")) => ("list", "namespace"),
                (true, _) => ("list", "cluster"),
                (false, _) => ("get", "resource"),
            };
            let namespace = match rest {
                ["namespaces", namespace, ..] => *namespace,
                _ => "",
            };
            let name = if verb == "get" {
                rest.last().copied().unwrap_or("")
            } else {
                ""
            };
            let attributes = crate::rbac::Attributes::resource(
                verb,
                crate::resource_metrics::GROUP,
                &resource,
                "",
                namespace,
                name,
            );
            let response = match server.authorizer.check(&req.user, &attributes) {
                Ok(()) => {
                    crate::resource_metrics::handle(server, rest, &req.method, &req.query).await
                }
                Err(error) => Err(error),
            };
            let info = RequestInfo {
                verb,
                group: crate::resource_metrics::GROUP.into(),
                version: crate::resource_metrics::VERSION.into(),
                resource,
                scope,
                ..RequestInfo::default()
            };
            return (info, response);
        }
        ["apis", group, version, rest @ ..] => {
            return resource(server, group, version, rest, req).await;
        }
        _ => Err(ApiError::no_route()),
    };
    (RequestInfo::default(), result)
}

fn health() -> Response {
    (
        StatusCode::OK,
        [(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "ok",
    )
        .into_response()
}

async fn resource(
    server: &Arc<ApiServer>,
    group: &str,
    version: &str,
    parts: &[&str],
    req: Req,
) -> (RequestInfo, ApiResult<Response>) {
    let Some(request) = parse_resource_path(group, version, parts) else {
        return (RequestInfo::default(), Err(ApiError::no_route()));
    };
    let mut info = RequestInfo {
        verb: verb_of(&req, &request),
        group: group.to_owned(),
        version: version.to_owned(),
        resource: request.resource.clone(),
        subresource: request.subresource.clone().unwrap_or_default(),
        scope: match (&request.name, &request.namespace) {
            (Some(_), _) => "resource",
            (None, Some(_)) => "namespace",
            (None, None) => "cluster",
        },
        dry_run: req.query.get("dryRun") == Some("All"),
        apply: req.method == Method::PATCH
            && req
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/apply-patch")),
    };
    let Some(rt) = server.registry.lookup(group, version, &request.resource) else {
        // labels only from what is served: paths must not mint series
        let unknown = RequestInfo {
            verb: info.verb,
            ..RequestInfo::default()
        };
        return (unknown, Err(ApiError::no_route()));
    };
    if request.namespace.is_some() && !rt.namespaced {
        return (info, Err(ApiError::no_route()));
    }
    info.resource.clone_from(&rt.plural);
    let name = request.name.as_deref().unwrap_or("");
    // a namespace object's namespace is itself, as Kubernetes' request info has it
    let namespace = match request.namespace.as_deref() {
        None if rt.group.is_empty() && rt.plural == "namespaces" => name,
        namespace => namespace.unwrap_or(""),
    };
    let attributes = crate::rbac::Attributes::resource(
        info.verb,
        &rt.group,
        &rt.plural,
        &info.subresource,
        namespace,
        name,
    );
    if let Err(error) = server.authorizer.check(&req.user, &attributes) {
        return (info, Err(error));
    }
    let result = dispatch(server, rt, request, req).await;
    (info, result)
}

fn verb_of(req: &Req, request: &ResourceRequest) -> &'static str {
    match (&req.method, request.name.is_some()) {
        (&Method::GET, false) if req.query.flag("watch") => "watch",
        (&Method::GET, false) => "list",
        (&Method::GET, true) => "get",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, false) => "deletecollection",
        (&Method::DELETE, true) => "delete",
        _ => "unknown",
    }
}

async fn dispatch(
    server: &Arc<ApiServer>,
    rt: Arc<ResourceType>,
    request: ResourceRequest,
    req: Req,
) -> ApiResult<Response> {
    let namespace = request.namespace.as_deref();
    if rt.namespaced
        && namespace.is_none()
        && !(req.method == Method::GET && request.name.is_none())
    {
        return Err(ApiError::no_route());
    }
    if rt.review {
        return match (&req.method, request.name.as_deref()) {
            (&Method::POST, None) => crate::rbac::review::create(server, &rt, namespace, req).await,
            _ => Err(ApiError::method_not_allowed(
                "the server does not allow this method on the requested resource",
            )),
        };
    }
    match (request.name.as_deref(), request.subresource.as_deref()) {
        (None, _) => match req.method {
            Method::GET if req.query.flag("watch") => {
                read::watch(server, &rt, namespace, req).await
            }
            Method::GET => read::list(server, &rt, namespace, req).await,
            Method::POST => write::create(server, &rt, namespace, req).await,
            Method::DELETE => write::delete_collection(server, &rt, namespace, req).await,
            _ => Err(ApiError::method_not_allowed(
                "the server does not allow this method on the requested resource".to_string(),
            )),
        },
        (Some(name), None) => match req.method {
            Method::GET => read::get(server, &rt, namespace, name, req).await,
            Method::PUT => {
                write::update(server, &rt, namespace, name, req, write::Target::Main).await
            }
            Method::PATCH => {
                write::patch(server, &rt, namespace, name, req, write::Target::Main).await
            }
            Method::DELETE => write::delete(server, &rt, namespace, name, req).await,
            _ => Err(ApiError::method_not_allowed(
                "the server does not allow this method on the requested resource",
            )),
        },
        (Some(name), Some(sub)) if rt.has_subresource(sub) => match (sub, &req.method) {
            ("status", &Method::GET) => read::get(server, &rt, namespace, name, req).await,
            ("status", &Method::PUT) => {
                write::update(server, &rt, namespace, name, req, write::Target::Status).await
            }
            ("status", &Method::PATCH) => {
                write::patch(server, &rt, namespace, name, req, write::Target::Status).await
            }
            ("scale", &Method::GET) => write::get_scale(server, &rt, namespace, name).await,
            ("scale", &Method::PUT) => {
                write::update(server, &rt, namespace, name, req, write::Target::Scale).await
            }
            ("scale", &Method::PATCH) => {
                write::patch(server, &rt, namespace, name, req, write::Target::Scale).await
            }
            ("binding", &Method::POST) => write::bind(server, &rt, namespace, name, req).await,
            ("eviction", &Method::POST) => eviction::evict(server, &rt, namespace, name, req).await,
            ("token", &Method::POST) => {
                crate::serviceaccount::token_request(server, &rt, namespace, name, req).await
            }
            ("finalize", &Method::PUT) => {
                write::update(server, &rt, namespace, name, req, write::Target::Finalize).await
            }
            _ => Err(ApiError::method_not_allowed(
                "the server does not allow this method on the requested resource",
            )),
        },
        _ => Err(ApiError::no_route()),
    }
}

/// A JSON response.
pub fn json_response(status: StatusCode, value: &Value) -> Response {
    let body = serde_json::to_vec(value).expect("json values serialize");
    (
        status,
        [(http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(path: &str) -> Option<ResourceRequest> {
        let parts: Vec<&str> = path.split('/').collect();
        parse_resource_path("", "v1", &parts)
    }

    #[test]
    fn paths() {
        let r = parse("namespaces/default/pods/web/status").unwrap();
        assert_eq!(
            (
                r.namespace.as_deref(),
                r.resource.as_str(),
                r.name.as_deref(),
                r.subresource.as_deref()
            ),
            (Some("default"), "pods", Some("web"), Some("status"))
        );
        let r = parse("namespaces/default").unwrap();
        assert_eq!(
            (r.namespace, r.resource.as_str(), r.name.as_deref()),
            (None, "namespaces", Some("default"))
        );
        let r = parse("namespaces/default/status").unwrap();
        assert_eq!(
            (
                r.resource.as_str(),
                r.name.as_deref(),
                r.subresource.as_deref()
            ),
            ("namespaces", Some("default"), Some("status"))
        );
        let r = parse("namespaces").unwrap();
        assert_eq!((r.resource.as_str(), r.name), ("namespaces", None));
        let r = parse("pods").unwrap();
        assert_eq!((r.namespace, r.resource.as_str()), (None, "pods"));
        let r = parse("nodes/n1").unwrap();
        assert_eq!(r.name.as_deref(), Some("n1"));
        assert!(parse("namespaces/a/pods/b/c/d").is_none());
    }
}
