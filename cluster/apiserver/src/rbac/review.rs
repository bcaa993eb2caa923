//! The review APIs: `authorization.k8s.io/v1` SelfSubjectAccessReview (`kubectl auth can-i`),
//! SubjectAccessReview, LocalSubjectAccessReview, SelfSubjectRulesReview (`kubectl auth can-i
//! --list`), and `authentication.k8s.io/v1` SelfSubjectReview (`kubectl auth whoami`) and
//! TokenReview. Each is created, answered and never stored.

use std::sync::Arc;

use axum::response::Response;
use http::StatusCode;
use serde_json::{Value, json};

use super::{Attributes, Rule};
use crate::ApiServer;
use crate::auth::User;
use crate::error::{ApiError, ApiResult};
use crate::registry::ResourceType;
use crate::rest::{Req, body, json_response};

/// The review resources: (group, plural, kind, namespaced).
pub const RESOURCES: &[(&str, &str, &str, bool)] = &[
    (
        "authorization.k8s.io",
        "selfsubjectaccessreviews",
        "SelfSubjectAccessReview",
        false,
    ),
    (
        "authorization.k8s.io",
        "subjectaccessreviews",
        "SubjectAccessReview",
        false,
    ),
    (
        "authorization.k8s.io",
        "localsubjectaccessreviews",
        "LocalSubjectAccessReview",
        true,
    ),
    (
        "authorization.k8s.io",
        "selfsubjectrulesreviews",
        "SelfSubjectRulesReview",
        false,
    ),
    (
        "authentication.k8s.io",
        "selfsubjectreviews",
        "SelfSubjectReview",
        false,
    ),
    (
        "authentication.k8s.io",
        "tokenreviews",
        "TokenReview",
        false,
    ),
];

fn text<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// Decides the attributes of a review's `spec` for `user`.
fn access(server: &ApiServer, user: &User, spec: &Value) -> ApiResult<Value> {
    let decision = if let Some(resource) = spec.get("resourceAttributes") {
        let attributes = Attributes::resource(
            text(resource, "/verb"),
            text(resource, "/group"),
            text(resource, "/resource"),
            text(resource, "/subresource"),
            text(resource, "/namespace"),
            text(resource, "/name"),
        );
        server.authorizer.policy().decide(user, &attributes)
    } else if let Some(path) = spec.get("nonResourceAttributes") {
        let attributes = Attributes::path(text(path, "/verb"), text(path, "/path"));
        server.authorizer.policy().decide(user, &attributes)
    } else {
        return Err(ApiError::bad_request(
            "spec: Invalid value: exactly one of nonResourceAttributes or resourceAttributes must be specified",
        ));
    };
    Ok(match decision {
        Some(reason) if reason.is_empty() => json!({"allowed": true}),
        Some(reason) => json!({"allowed": true, "reason": &*reason}),
        None => json!({"allowed": false}),
    })
}

fn rules_status(rules: &[Rule]) -> Value {
    let (paths, resources): (Vec<&Rule>, Vec<&Rule>) = rules
        .iter()
        .partition(|rule| !rule.non_resource_urls.is_empty());
    json!({
        "resourceRules": resources.iter().map(|r| json!({
            "verbs": r.verbs, "apiGroups": r.api_groups, "resources": r.resources,
            "resourceNames": r.resource_names,
        })).collect::<Vec<_>>(),
        "nonResourceRules": paths.iter().map(|r| json!({
            "verbs": r.verbs, "nonResourceURLs": r.non_resource_urls,
        })).collect::<Vec<_>>(),
        "incomplete": false,
    })
}

/// The user a SubjectAccessReview's spec names.
fn subject(spec: &Value) -> User {
    let groups = spec
        .get("groups")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|g| g.as_str().map(str::to_owned))
        .collect();
    let name = text(spec, "/user");
    User {
        name: name.to_owned(),
        groups,
    }
}

/// `POST` of a review: answered in `status`, never stored.
///
/// # Errors
/// 400 for a body that is not the review kind or lacks what it needs.
pub async fn create(
    server: &Arc<ApiServer>,
    rt: &ResourceType,
    namespace: Option<&str>,
    mut req: Req,
) -> ApiResult<Response> {
    let mut review = body::read_object(&mut req).await?;
    if review.get("kind").and_then(Value::as_str) != Some(rt.kind.as_str()) {
        return Err(ApiError::bad_request(format!(
            "the body of the request must be a {}",
            rt.kind
        )));
    }
    let spec = review.get("spec").cloned().unwrap_or_else(|| json!({}));
    let status = match rt.kind.as_str() {
        "SelfSubjectAccessReview" => access(server, &req.user, &spec)?,
        "SubjectAccessReview" => access(server, &subject(&spec), &spec)?,
        "LocalSubjectAccessReview" => {
            let namespace = namespace.unwrap_or_default();
            if text(&spec, "/resourceAttributes/namespace") != namespace {
                return Err(ApiError::bad_request(format!(
                    "spec.resourceAttributes.namespace: Invalid value: must match metadata.namespace \"{namespace}\""
                )));
            }
            access(server, &subject(&spec), &spec)?
        }
        "SelfSubjectRulesReview" => {
            let namespace = text(&spec, "/namespace");
            rules_status(&server.authorizer.policy().rules_for(&req.user, namespace))
        }
        "SelfSubjectReview" => json!({"userInfo": {
            "username": req.user.name, "groups": req.user.groups,
        }}),
        "TokenReview" => {
            let token = text(&spec, "/token");
            match crate::auth::user_of_token(server, token) {
                Some(user) => json!({"authenticated": true, "user": {
                    "username": user.name, "groups": user.groups,
                }}),
                None => json!({"authenticated": false}),
            }
        }
        other => {
            return Err(ApiError::internal(format!("no review of {other}")));
        }
    };
    review["status"] = status;
    review["apiVersion"] = json!(rt.api_version());
    let metadata = review.get("metadata").cloned().unwrap_or_else(|| json!({}));
    review["metadata"] = metadata;
    review["metadata"]["creationTimestamp"] = Value::Null;
    Ok(json_response(StatusCode::CREATED, &review))
}
