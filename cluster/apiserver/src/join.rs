//! Joining nodes to the cluster. `kelson server` keeps a join token in `<data-dir>/node-token`,
//! `K10<sha256 of the CA certificate>::<secret>`: the agent fetches `/cacerts` (public), checks it
//! against the hash — pinning the CA as `kubeadm join` does — and then authenticates with the
//! secret as a member of `system:nodes`. With it, `POST /kelson/v1/kubelet-certificate` issues
//! the agent's kubelet serving certificate, signed by the cluster CA, for its name and addresses.

use std::path::Path;
use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Value, json};
use sha2::Digest;

use crate::auth::User;
use crate::error::{ApiError, ApiResult};
use crate::pki::Pki;
use crate::rest::Req;

/// The user a join token authenticates as.
pub const NODE_USER: &str = "kelson-node";

/// The hex SHA-256 of a PEM text.
#[must_use]
pub fn ca_hash(ca_pem: &str) -> String {
    sha2::Sha256::digest(ca_pem.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Splits a join token into the CA hash and the secret.
#[must_use]
pub fn parse_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("K10")?;
    let (hash, secret) = rest.split_once("::")?;
    (hash.len() == 64 && !secret.is_empty()).then_some((hash, secret))
}

/// Loads the join token from `<data_dir>/node-token`, creating it when missing; returns the
/// token and the secret to accept.
///
/// # Errors
/// On I/O failures.
pub fn load_or_create(data_dir: &Path, ca_pem: &str) -> std::io::Result<(String, String)> {
    let path = data_dir.join("node-token");
    let hash = ca_hash(ca_pem);
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Some((stored_hash, secret)) = parse_token(text.trim())
        && stored_hash == hash
    {
        return Ok((text.trim().to_owned(), secret.to_owned()));
    }
    let secret: String = (0..24)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let token = format!("K10{hash}::{secret}");
    crate::pki::write_file(&path, &format!("{token}\n"), true)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok((token, secret))
}

/// The join user for the token's secret.
#[must_use]
pub fn node_user() -> User {
    User::new(NODE_USER, vec!["system:nodes".into()])
}

/// `GET /cacerts`: the cluster CA, public so that agents can pin it.
#[must_use]
pub fn ca_certs(pki: Option<&Arc<Pki>>) -> Response {
    match pki {
        Some(pki) => (
            StatusCode::OK,
            [(http::header::CONTENT_TYPE, "text/plain")],
            pki.ca_cert.clone(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no CA").into_response(),
    }
}

/// `POST /kelson/v1/kubelet-certificate` `{"nodeName": .., "addresses": [..]}` → `{"certificate",
/// "key", "ca"}` for nodes and admins.
///
/// # Errors
/// 403 for other users, 400 for a bad body.
pub async fn kubelet_certificate(pki: Option<&Arc<Pki>>, req: Req) -> ApiResult<Response> {
    let allowed = req
        .user
        .groups
        .iter()
        .any(|g| g == "system:nodes" || g == "system:masters");
    if !allowed {
        return Err(ApiError::new(
            403,
            "Forbidden",
            format!(
                "user \"{}\" cannot request kubelet certificates",
                req.user.name
            ),
        ));
    }
    let pki = pki.ok_or_else(|| ApiError::internal("the server has no CA"))?;
    let body = axum::body::to_bytes(req.body, 64 * 1024)
        .await
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let request: Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let node = request
        .get("nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("nodeName is required"))?;
    let mut names: Vec<String> = request
        .get("addresses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    names.push(node.to_owned());
    names.sort();
    names.dedup();
    let (certificate, key) = pki
        .issue(
            &format!("system:node:{node}"),
            &["system:nodes"],
            &names,
            true,
        )
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(crate::rest::json_response(
        StatusCode::OK,
        &json!({"certificate": certificate, "key": key, "ca": pki.ca_cert}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_pin_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let (token, secret) = load_or_create(dir.path(), "CA PEM").unwrap();
        let (hash, parsed_secret) = parse_token(&token).unwrap();
        assert_eq!(hash, ca_hash("CA PEM"));
        assert_eq!(parsed_secret, secret);
        // stable across restarts
        assert_eq!(load_or_create(dir.path(), "CA PEM").unwrap().0, token);
        assert_eq!(parse_token("K10abc::x"), None);
        assert_eq!(parse_token("nonsense"), None);
    }
}
