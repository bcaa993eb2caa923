//! Patches: JSON patch (RFC 6902, crate `json-patch`), JSON merge patch (RFC 7386), strategic
//! merge patch ([`strategic`]) and server-side apply ([`apply`], with ownership in
//! `crate::fieldset`). The `Content-Type` of a PATCH picks the kind.

pub mod apply;
pub mod strategic;

use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult, Cause};
use crate::schema::Node;

/// The kinds of patch Kubernetes accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    /// `application/json-patch+json`.
    Json,
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json` (built-in kinds only).
    Strategic,
    /// `application/apply-patch+yaml` (server-side apply).
    Apply,
}

impl PatchKind {
    /// The patch kind of a media type.
    ///
    /// # Errors
    /// 415 listing the accepted types.
    pub fn from_media_type(media_type: &str, custom: bool) -> ApiResult<Self> {
        match media_type {
            "application/json-patch+json" => Ok(Self::Json),
            "application/merge-patch+json" => Ok(Self::Merge),
            "application/strategic-merge-patch+json" if !custom => Ok(Self::Strategic),
            "application/apply-patch+yaml" => Ok(Self::Apply),
            other => {
                let accepted = if custom {
                    "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
                } else {
                    "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml"
                };
                Err(ApiError::unsupported_media_type(format!(
                    "the body of the request was in an unknown format - accepted media types include: {accepted} (got {other:?})"
                )))
            }
        }
    }
}

/// A decoded patch.
pub struct PatchDocument {
    kind: PatchKind,
    json_patch: Option<json_patch::Patch>,
    value: Value,
}

impl PatchDocument {
    /// Decodes the patch body.
    ///
    /// # Errors
    /// 400 when it does not decode.
    pub fn decode(kind: PatchKind, bytes: &[u8]) -> ApiResult<Self> {
        let value = match kind {
            PatchKind::Apply => crate::rest::body::decode_yaml(bytes)?,
            _ => crate::rest::body::decode_json(bytes)?,
        };
        match kind {
            PatchKind::Json => {
                let patch: json_patch::Patch =
                    serde_json::from_value(value.clone()).map_err(|e| {
                        ApiError::bad_request(format!("the json patch is not valid: {e}"))
                    })?;
                Ok(Self {
                    kind,
                    json_patch: Some(patch),
                    value,
                })
            }
            PatchKind::Merge | PatchKind::Strategic | PatchKind::Apply => {
                if !value.is_object() {
                    return Err(ApiError::bad_request("the patch must be a JSON object"));
                }
                Ok(Self {
                    kind,
                    json_patch: None,
                    value,
                })
            }
        }
    }

    /// Whether the patch names a resourceVersion, making it conditional on that version.
    #[must_use]
    pub fn pins_resource_version(&self) -> bool {
        match &self.json_patch {
            Some(_) => self.value.as_array().is_some_and(|ops| {
                ops.iter().any(|op| {
                    op.get("path").and_then(Value::as_str) == Some("/metadata/resourceVersion")
                })
            }),
            None => self
                .value
                .pointer("/metadata/resourceVersion")
                .is_some_and(|v| !v.is_null()),
        }
    }

    /// The patch body (apply configuration) as JSON.
    #[must_use]
    pub fn value_or_null(&self) -> Value {
        self.value.clone()
    }

    /// The object an apply patch creates when none exists.
    ///
    /// # Errors
    /// 400 when the name in the body does not match the URL.
    pub fn apply_to_new(&self, name: &str, namespace: Option<&str>) -> ApiResult<Value> {
        let mut object = self.value.clone();
        let metadata = crate::meta::meta_mut(&mut object);
        match metadata.get("name").and_then(Value::as_str) {
            Some(body_name) if body_name != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({name})"
                )));
            }
            _ => {
                metadata.insert("name".into(), json!(name));
            }
        }
        if let Some(namespace) = namespace {
            metadata.insert("namespace".into(), json!(namespace));
        }
        Ok(object)
    }

    /// Applies the patch to `base`.
    ///
    /// # Errors
    /// 422 when a JSON patch operation fails.
    pub fn apply(
        &self,
        base: &Value,
        schema: Option<Node<'_>>,
        _manager: &str,
    ) -> ApiResult<Value> {
        let mut result = base.clone();
        match self.kind {
            PatchKind::Json => {
                let patch = self
                    .json_patch
                    .as_ref()
                    .expect("decoded with the json patch");
                json_patch::patch(&mut result, patch).map_err(|e| {
                    ApiError::invalid(
                        "",
                        "",
                        crate::meta::name(base),
                        vec![Cause::new("FieldValueInvalid", "", e.to_string())],
                    )
                    .with_message(format!(
                        "the server rejected our request due to an error in our request: {e}"
                    ))
                })?;
            }
            PatchKind::Merge => json_patch::merge(&mut result, &self.value),
            PatchKind::Strategic => {
                strategic::apply(&mut result, &self.value, schema).map_err(|e| {
                    ApiError::bad_request(format!("unable to apply strategic merge patch: {e}"))
                })?;
            }
            PatchKind::Apply => {
                let mut applied = self.value.clone();
                if let Some(metadata) = applied.get_mut("metadata").and_then(Value::as_object_mut) {
                    metadata.remove("resourceVersion");
                    metadata.remove("managedFields");
                }
                apply::merge(&mut result, &applied, schema);
            }
        }
        Ok(result)
    }
}

impl ApiError {
    /// The same error with another message.
    #[must_use]
    pub fn with_message(mut self, message: String) -> Self {
        self.message = message;
        self
    }
}
