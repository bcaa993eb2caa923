//! Request bodies: size limit, content type, and decoding of JSON and YAML into JSON values.

use axum::body::Body;
use serde_json::Value;

use crate::error::{ApiError, ApiResult};
use crate::rest::Req;

/// The largest request body accepted (Kubernetes' default is 3 MiB).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// The body's media type without parameters, lowercased.
#[must_use]
pub fn content_type(req: &Req) -> String {
    req.headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_lowercase())
        .unwrap_or_default()
}

/// Reads the whole body, refusing more than [`MAX_BODY_BYTES`].
///
/// # Errors
/// 413 when too large.
pub async fn read(body: Body) -> ApiResult<bytes::Bytes> {
    axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::too_large(MAX_BODY_BYTES))
}

/// Decodes bytes as JSON, YAML or Kubernetes protobuf, as the content type says.
///
/// # Errors
/// 400 for malformed input, 415 for media types this server cannot decode.
pub fn decode(media_type: &str, bytes: &[u8]) -> ApiResult<Value> {
    match media_type {
        "application/yaml"
        | "application/apply-patch+yaml"
        | "text/yaml"
        | "application/x-yaml" => decode_yaml(bytes),
        ""
        | "application/json"
        | "application/merge-patch+json"
        | "application/json-patch+json"
        | "application/strategic-merge-patch+json"
        | "*/*" => decode_json(bytes),
        "application/vnd.kubernetes.protobuf" => crate::protobuf::decode_object(bytes),
        other => Err(ApiError::unsupported_media_type(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {other})"
        ))),
    }
}

/// Decodes JSON (recursion is limited by serde_json, so deep nesting is an error, not a crash).
///
/// # Errors
/// 400 with the parser's message.
pub fn decode_json(bytes: &[u8]) -> ApiResult<Value> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("error decoding request body as JSON: {e}")))
}

/// Decodes a single YAML document into JSON.
///
/// # Errors
/// 400 with the parser's message.
pub fn decode_yaml(bytes: &[u8]) -> ApiResult<Value> {
    check_flow_depth(bytes, MAX_YAML_FLOW_DEPTH)?;
    let value: serde_yaml::Value = serde_yaml::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("error decoding request body as YAML: {e}")))?;
    serde_json::to_value(value)
        .map_err(|e| ApiError::bad_request(format!("YAML does not convert to JSON: {e}")))
}

/// The deepest nesting of YAML flow collections (`[`, `{`) accepted. The YAML parser's time
/// grows with the square of this depth, so hostile documents are refused before parsing.
const MAX_YAML_FLOW_DEPTH: usize = 1000;

/// Refuses YAML whose flow collections nest deeper than `max` (a cheap scan that skips quoted
/// scalars and comments).
fn check_flow_depth(bytes: &[u8], max: usize) -> ApiResult<()> {
    let mut depth = 0usize;
    let (mut in_single, mut in_double, mut escaped, mut in_comment) = (false, false, false, false);
    let mut previous = b'\n';
    for &b in bytes {
        if in_comment {
            in_comment = b != b'\n';
        } else if in_double {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_double = false;
            }
        } else if in_single {
            in_single = b != b'\'';
        } else {
            let after_separator =
                previous.is_ascii_whitespace() || matches!(previous, b'[' | b'{' | b',' | b':');
            match b {
                b'"' if after_separator => in_double = true,
                b'\'' if after_separator => in_single = true,
                b'#' if previous.is_ascii_whitespace() => in_comment = true,
                b'[' | b'{' => {
                    depth += 1;
                    if depth > max {
                        return Err(ApiError::bad_request(format!(
                            "error decoding request body as YAML: collections nested deeper than {max} levels"
                        )));
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        previous = b;
    }
    Ok(())
}

/// Reads and decodes the body of a write as an object.
///
/// # Errors
/// 400/413/415 as the input deserves.
pub async fn read_object(req: &mut Req) -> ApiResult<Value> {
    let media_type = content_type(req);
    let bytes = read(std::mem::take(&mut req.body)).await?;
    let value = decode(&media_type, &bytes)?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_and_deep_inputs_are_bad_requests() {
        assert_eq!(decode("application/json", b"{nope").unwrap_err().code, 400);
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert_eq!(
            decode("application/json", deep.as_bytes())
                .unwrap_err()
                .code,
            400
        );
        let deep_yaml = "[".repeat(10_000) + &"]".repeat(10_000);
        assert_eq!(
            decode("application/yaml", deep_yaml.as_bytes())
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(decode("application/xml", b"<a/>").unwrap_err().code, 415);
    }

    #[test]
    fn yaml_bombs_are_refused() {
        let bomb = "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\nh: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\ni: [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n";
        assert_eq!(
            decode("application/yaml", bomb.as_bytes())
                .unwrap_err()
                .code,
            400
        );
    }

    #[test]
    fn deep_yaml_is_refused_before_parsing() {
        let deep = format!("a: {}{}", "[".repeat(200_000), "]".repeat(200_000));
        let started = std::time::Instant::now();
        assert_eq!(
            decode("application/yaml", deep.as_bytes())
                .unwrap_err()
                .code,
            400
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        // brackets inside quoted scalars and comments do not count
        let quoted = format!(
            "a: \"{}\"\nb: '{}' # {}\n",
            "[".repeat(5000),
            "{".repeat(5000),
            "[".repeat(5000)
        );
        assert!(decode("application/yaml", quoted.as_bytes()).is_ok());
        let reasonable = format!("a: {}1{}", "[".repeat(50), "]".repeat(50));
        assert!(decode("application/yaml", reasonable.as_bytes()).is_ok());
    }

    #[test]
    fn yaml_decodes_to_json() {
        assert_eq!(
            decode("application/yaml", b"a: 1\nb: [x]\n").unwrap(),
            serde_json::json!({"a": 1, "b": ["x"]})
        );
    }
}
