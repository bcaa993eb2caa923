//! API errors and their Kubernetes `Status` form.
//!
//! Every failure a client can see is an [`ApiError`]; at the HTTP edge it becomes a `Status`
//! object with Kubernetes' reason and code (apimachinery `pkg/api/errors`).

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Value, json};

use crate::registry::ResourceType;

/// One field-level problem, reported in `details.causes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    /// Kubernetes cause type, e.g. `FieldValueRequired`, `FieldValueInvalid`.
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
    /// The field path, e.g. `spec.replicas` or `metadata.name`.
    pub field: String,
}

impl Cause {
    /// A cause with its reason's standard message prefix, as Kubernetes' field errors print.
    pub fn new(reason: &'static str, field: impl Into<String>, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        let prefix = match reason {
            "FieldValueRequired" => "Required value",
            "FieldValueInvalid" => "Invalid value",
            "FieldValueNotSupported" => "Unsupported value",
            "FieldValueForbidden" => "Forbidden",
            "FieldValueDuplicate" => "Duplicate value",
            "FieldValueTooLong" => "Too long",
            "FieldValueTooMany" => "Too many",
            "FieldValueTypeInvalid" => "Invalid value",
            "FieldValueNotFound" => "Not found",
            _ => "",
        };
        let message = match (prefix.is_empty(), detail.is_empty()) {
            (true, _) => detail,
            (false, true) => prefix.to_owned(),
            (false, false) => format!("{prefix}: {detail}"),
        };
        Self {
            reason,
            message,
            field: field.into(),
        }
    }

    /// `Required value` at `field`.
    pub fn required(field: impl Into<String>) -> Self {
        Self::new("FieldValueRequired", field, "")
    }

    /// `Invalid value: <value>: <detail>` at `field`.
    pub fn invalid(field: impl Into<String>, value: &Value, detail: impl Into<String>) -> Self {
        let shown = match value {
            Value::String(s) => format!("{s:?}"),
            other => other.to_string(),
        };
        let detail = detail.into();
        let text = if detail.is_empty() {
            shown
        } else {
            format!("{shown}: {detail}")
        };
        Self::new("FieldValueInvalid", field, text)
    }
}

/// An error answered to an API client.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// Kubernetes `StatusReason`.
    pub reason: &'static str,
    /// Message for humans (kubectl prints it after `Error from server (<reason>):`).
    pub message: String,
    /// `details` of the Status, if any.
    pub details: Option<Value>,
    /// Extra response headers (e.g. `Retry-After`).
    pub retry_after: Option<u64>,
}

/// Result type of request handling.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// An error with no details.
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 401 Unauthorized.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    /// 403 Forbidden.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }

    /// 404 NotFound for an object of a resource type.
    pub fn not_found(rt: &ResourceType, name: &str) -> Self {
        Self::not_found_named(&rt.group, &rt.plural, name)
    }

    /// 404 NotFound by group and resource name.
    pub fn not_found_named(group: &str, plural: &str, name: &str) -> Self {
        let resource = qualified(group, plural);
        Self {
            details: Some(details(name, group, plural, None)),
            ..Self::new(404, "NotFound", format!("{resource} \"{name}\" not found"))
        }
    }

    /// 404 for a path that names no API.
    pub fn no_route() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    /// 406 NotAcceptable.
    pub fn not_acceptable(message: impl Into<String>) -> Self {
        Self::new(406, "NotAcceptable", message)
    }

    /// 409 AlreadyExists.
    pub fn already_exists(rt: &ResourceType, name: &str) -> Self {
        let resource = qualified(&rt.group, &rt.plural);
        Self {
            details: Some(details(name, &rt.group, &rt.plural, None)),
            ..Self::new(
                409,
                "AlreadyExists",
                format!("{resource} \"{name}\" already exists"),
            )
        }
    }

    /// 409 Conflict for an optimistic-lock failure.
    pub fn conflict(rt: &ResourceType, name: &str) -> Self {
        Self::conflict_message(
            rt,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 409 Conflict with a specific explanation.
    pub fn conflict_message(rt: &ResourceType, name: &str, why: &str) -> Self {
        let resource = qualified(&rt.group, &rt.plural);
        Self {
            details: Some(details(name, &rt.group, &rt.plural, None)),
            ..Self::new(
                409,
                "Conflict",
                format!("Operation cannot be fulfilled on {resource} \"{name}\": {why}"),
            )
        }
    }

    /// 410 Expired (Gone) for a compacted resourceVersion.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 413 RequestEntityTooLarge.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            format!("Request entity too large: limit is {limit}"),
        )
    }

    /// 415 UnsupportedMediaType.
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(415, "UnsupportedMediaType", message)
    }

    /// 422 Invalid with field causes.
    pub fn invalid(kind: &str, group: &str, name: &str, causes: Vec<Cause>) -> Self {
        let qualified_kind = qualified(group, kind);
        let summary = match causes.as_slice() {
            [one] => format!("{}: {}", one.field, one.message),
            many => format!(
                "[{}]",
                many.iter()
                    .map(|c| format!("{}: {}", c.field, c.message))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let causes_json: Vec<Value> = causes
            .iter()
            .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
            .collect();
        Self {
            details: Some(
                json!({"name": name, "group": group, "kind": kind, "causes": causes_json}),
            ),
            ..Self::new(
                422,
                "Invalid",
                format!("{qualified_kind} \"{name}\" is invalid: {summary}"),
            )
        }
    }

    /// 429 TooManyRequests.
    pub fn too_many_requests(message: impl Into<String>, retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(429, "TooManyRequests", message)
        }
    }

    /// 500 InternalError.
    pub fn internal(message: impl Into<String>) -> Self {
        let message = message.into();
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {message}"),
        )
    }

    /// 504 Timeout.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(504, "Timeout", message)
    }

    /// The `Status` object.
    #[must_use]
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_owned()
    } else {
        format!("{resource}.{group}")
    }
}

fn details(name: &str, group: &str, plural: &str, uid: Option<&str>) -> Value {
    let mut details = json!({"name": name, "kind": plural});
    if !group.is_empty() {
        details["group"] = json!(group);
    }
    if let Some(uid) = uid {
        details["uid"] = json!(uid);
    }
    details
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self.status()).expect("status serializes");
        let mut response = (
            code,
            [(http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

impl From<kelson_storage::Error> for ApiError {
    fn from(error: kelson_storage::Error) -> Self {
        match error {
            kelson_storage::Error::Compacted {
                requested,
                compacted,
            } => ApiError::expired(format!(
                "too old resource version: {requested} ({compacted})"
            )),
            kelson_storage::Error::FutureRevision { requested, .. } => ApiError::timeout(format!(
                "Too large resource version: {requested}, current: unknown"
            )),
            other => ApiError::internal(other.to_string()),
        }
    }
}
