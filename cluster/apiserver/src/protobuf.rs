//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`), which kubectl
//! 1.32+ sends from its typed commands (`create deployment|namespace|configmap|secret|job`).
//!
//! The envelope is the 4-byte magic `k8s\0` followed by a `runtime.Unknown` message
//! (`typeMeta` = 1, `raw` = 2, `contentEncoding` = 3, `contentType` = 4).

use serde_json::Value;

use crate::error::{ApiError, ApiResult};

/// `runtime.Unknown`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Unknown {
    /// `TypeMeta` (apiVersion = 1, kind = 2).
    #[prost(message, optional, tag = "1")]
    pub type_meta: Option<TypeMeta>,
    /// The object's own protobuf encoding.
    #[prost(bytes = "vec", tag = "2")]
    pub raw: Vec<u8>,
    /// Content encoding.
    #[prost(string, tag = "3")]
    pub content_encoding: String,
    /// Content type.
    #[prost(string, tag = "4")]
    pub content_type: String,
}

/// `runtime.TypeMeta`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TypeMeta {
    /// apiVersion.
    #[prost(string, tag = "1")]
    pub api_version: String,
    /// kind.
    #[prost(string, tag = "2")]
    pub kind: String,
}

/// Decodes the envelope of a protobuf body.
///
/// # Errors
/// 400 when the envelope is malformed.
pub fn decode_envelope(bytes: &[u8]) -> ApiResult<Unknown> {
    let payload = bytes
        .strip_prefix(b"k8s\0")
        .ok_or_else(|| ApiError::bad_request("protobuf body does not start with the k8s magic"))?;
    prost::Message::decode(payload)
        .map_err(|e| ApiError::bad_request(format!("protobuf envelope does not decode: {e}")))
}

/// Decodes a protobuf request body into a JSON object.
///
/// # Errors
/// 400 for malformed bodies; 415 for kinds whose protobuf form this server does not decode yet.
pub fn decode_object(bytes: &[u8]) -> ApiResult<Value> {
    let unknown = decode_envelope(bytes)?;
    let type_meta = unknown.type_meta.unwrap_or_default();
    Err(ApiError::unsupported_media_type(format!(
        "protobuf request bodies for {}/{} are not supported yet; send application/json",
        type_meta.api_version, type_meta.kind
    )))
}
