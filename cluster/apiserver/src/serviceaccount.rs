//! Service-account tokens: JWTs (ES256) signed with the cluster's service-account key
//! (`<data-dir>/tls/sa.key`). `POST serviceaccounts/{name}/token` (TokenRequest, as `kubectl
//! create token` and the kubelet's projected volumes use it) issues them, optionally bound to a
//! pod; bearer tokens that verify authenticate as `system:serviceaccount:<ns>:<name>`.
//! Admission gives pods that automount their token the `kube-api-access-*` projected volume.

use std::path::Path;
use std::sync::Arc;

use http::StatusCode;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::ApiServer;
use crate::auth::User;
use crate::error::{ApiError, ApiResult};
use crate::registry::ResourceType;
use crate::rest::{Req, body, json_response};

/// The issuer and default audience of the tokens.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// Where pods find their token, CA and namespace.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Lifetime of the tokens admission mounts (Kubernetes' 3607 s; the kubelet renews them).
pub const PROJECTED_SECONDS: i64 = 3607;

/// The Kubernetes-specific claims.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq, Serialize)]
pub struct KubernetesClaims {
    /// Namespace of the service account.
    pub namespace: String,
    /// The service account.
    pub serviceaccount: Reference,
    /// The pod the token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Reference>,
}

/// A name and uid.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq, Serialize)]
pub struct Reference {
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
}

/// The claims of a token.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Serialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// `system:serviceaccount:<ns>:<name>`.
    pub sub: String,
    /// Audiences.
    pub aud: Vec<String>,
    /// Expiry (seconds since the epoch).
    pub exp: i64,
    /// Issued at.
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Token id.
    pub jti: String,
    /// Kubernetes claims.
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaims,
}

/// Signs and verifies service-account tokens.
pub struct TokenIssuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenIssuer")
    }
}

fn key_error(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("service-account key: {e}"))
}

impl TokenIssuer {
    /// Loads the signing key from `<data_dir>/tls/sa.key`, creating it when missing.
    ///
    /// # Errors
    /// On I/O or key errors.
    pub fn load_or_create(data_dir: &Path) -> std::io::Result<Self> {
        let path = data_dir.join("tls").join("sa.key");
        let pem = match std::fs::read_to_string(&path) {
            Ok(pem) => pem,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let key = rcgen::KeyPair::generate().map_err(key_error)?;
                let pem = key.serialize_pem();
                crate::pki::write_file(&path, &pem, true).map_err(key_error)?;
                pem
            }
            Err(error) => return Err(error),
        };
        Self::from_pem(&pem)
    }

    /// An issuer for a PKCS#8 P-256 key.
    ///
    /// # Errors
    /// When the key does not parse.
    pub fn from_pem(pem: &str) -> std::io::Result<Self> {
        let key = rcgen::KeyPair::from_pem(pem).map_err(key_error)?;
        Ok(Self {
            encoding: EncodingKey::from_ec_pem(pem.as_bytes()).map_err(key_error)?,
            decoding: DecodingKey::from_ec_pem(key.public_key_pem().as_bytes())
                .map_err(key_error)?,
        })
    }

    /// Issues a token.
    ///
    /// # Errors
    /// When signing fails.
    pub fn issue(&self, claims: &Claims) -> Result<String, String> {
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), claims, &self.encoding)
            .map_err(|e| e.to_string())
    }

    /// Verifies a token's signature, issuer and times; returns its claims.
    #[must_use]
    pub fn verify(&self, token: &str) -> Option<Claims> {
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&[ISSUER]);
        validation.validate_aud = false;
        validation.validate_nbf = true;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .ok()
            .map(|data| data.claims)
    }
}

/// The user a verified token stands for.
#[must_use]
pub fn user_of(claims: &Claims) -> User {
    let namespace = &claims.kubernetes.namespace;
    User::new(
        claims.sub.clone(),
        vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{namespace}"),
        ],
    )
}

/// `POST serviceaccounts/{name}/token`: a TokenRequest in, the same with `status.token` out.
///
/// # Errors
/// 404 for a missing service account or bound pod, 400 for a bad request.
pub async fn token_request(
    server: &Arc<ApiServer>,
    rt: &ResourceType,
    namespace: Option<&str>,
    name: &str,
    mut req: Req,
) -> ApiResult<axum::response::Response> {
    let namespace = namespace.unwrap_or("default");
    let account = server.objects.get(rt, Some(namespace), name).await?;
    let request = body::read_object(&mut req).await?;
    let spec = request.get("spec").cloned().unwrap_or_else(|| json!({}));
    let expiration = spec
        .get("expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(3600);
    if expiration < 600 {
        return Err(ApiError::bad_request(
            "spec.expirationSeconds: Invalid value: may not specify a duration less than 10 minutes",
        ));
    }
    let audiences: Vec<String> = spec
        .get("audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .filter(|a: &Vec<String>| !a.is_empty())
        .unwrap_or_else(|| vec![ISSUER.to_owned()]);
    let mut pod = None;
    if let Some(bound) = spec.get("boundObjectRef").filter(|b| !b.is_null()) {
        let kind = bound
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let bound_name = bound
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if kind != "Pod" {
            return Err(ApiError::bad_request(format!(
                "spec.boundObjectRef.kind: Unsupported value: \"{kind}\": supported values: \"Pod\""
            )));
        }
        let pods = server
            .registry
            .lookup("", "v1", "pods")
            .ok_or_else(|| ApiError::internal("pods are not registered"))?;
        let object = server
            .objects
            .get(&pods, Some(namespace), bound_name)
            .await?;
        let uid = object
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if let Some(expected) = bound.get("uid").and_then(Value::as_str)
            && !expected.is_empty()
            && expected != uid
        {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "the UID in the bound object reference ({expected}) does not match the UID in record ({uid})"
                ),
            ));
        }
        pod = Some(Reference {
            name: bound_name.to_owned(),
            uid: uid.to_owned(),
        });
    }
    let issuer = server
        .token_issuer
        .read()
        .clone()
        .ok_or_else(|| ApiError::internal("the server has no service-account key"))?;
    let now = jiff::Timestamp::now().as_second();
    let claims = Claims {
        iss: ISSUER.to_owned(),
        sub: format!("system:serviceaccount:{namespace}:{name}"),
        aud: audiences.clone(),
        exp: now + expiration,
        iat: now,
        nbf: now,
        jti: uuid::Uuid::new_v4().to_string(),
        kubernetes: KubernetesClaims {
            namespace: namespace.to_owned(),
            serviceaccount: Reference {
                name: name.to_owned(),
                uid: account
                    .pointer("/metadata/uid")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            },
            pod,
        },
    };
    let token = issuer.issue(&claims).map_err(ApiError::internal)?;
    let expires = jiff::Timestamp::from_second(claims.exp)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    let mut response = request;
    response["apiVersion"] = json!("authentication.k8s.io/v1");
    response["kind"] = json!("TokenRequest");
    response["metadata"] = json!({"name": name, "namespace": namespace, "creationTimestamp": null});
    response["spec"]["audiences"] = json!(audiences);
    response["spec"]["expirationSeconds"] = json!(expiration);
    response["status"] = json!({"token": token, "expirationTimestamp": expires});
    Ok(json_response(StatusCode::CREATED, &response))
}

/// Service-account admission for a new pod: unless it opts out (`automountServiceAccountToken:
/// false` or its own mount at the token path), adds the `kube-api-access-<suffix>` projected
/// volume — token, `ca.crt` and namespace — mounted read-only in every container.
pub fn mount_token(pod: &mut Value) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    if spec.get("automountServiceAccountToken") == Some(&json!(false)) {
        return;
    }
    let mounted = |containers: Option<&Value>| {
        containers
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .flat_map(|c| {
                c.get("volumeMounts")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
            })
            .any(|m| m.get("mountPath").and_then(Value::as_str) == Some(MOUNT_PATH))
    };
    if mounted(spec.get("containers")) || mounted(spec.get("initContainers")) {
        return;
    }
    let name = format!("kube-api-access-{}", crate::meta::random_suffix());
    let volume = json!({
        "name": name,
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": PROJECTED_SECONDS, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        },
    });
    if let Some(volumes) = spec
        .entry("volumes")
        .or_insert_with(|| json!([]))
        .as_array_mut()
    {
        volumes.push(volume);
    }
    for list in ["initContainers", "containers"] {
        for container in spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let Some(container) = container.as_object_mut() else {
                continue;
            };
            let mounts = container
                .entry("volumeMounts")
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(mounts) = mounts {
                let mut mount = Map::new();
                mount.insert("name".into(), json!(name));
                mount.insert("readOnly".into(), json!(true));
                mount.insert("mountPath".into(), json!(MOUNT_PATH));
                mounts.push(Value::Object(mount));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp_offset: i64) -> Claims {
        let now = jiff::Timestamp::now().as_second();
        Claims {
            iss: ISSUER.into(),
            sub: "system:serviceaccount:apps:builder".into(),
            aud: vec![ISSUER.into()],
            exp: now + exp_offset,
            iat: now,
            nbf: now - 1,
            jti: "1".into(),
            kubernetes: KubernetesClaims {
                namespace: "apps".into(),
                serviceaccount: Reference {
                    name: "builder".into(),
                    uid: "u".into(),
                },
                pod: None,
            },
        }
    }

    #[test]
    fn tokens_verify_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = TokenIssuer::load_or_create(dir.path()).unwrap();
        let token = issuer.issue(&claims(600)).unwrap();
        let verified = issuer.verify(&token).unwrap();
        let user = user_of(&verified);
        assert_eq!(user.name, "system:serviceaccount:apps:builder");
        assert!(
            user.groups
                .contains(&"system:serviceaccounts:apps".to_owned())
        );
        // the key persists: a restarted server accepts its tokens
        let again = TokenIssuer::load_or_create(dir.path()).unwrap();
        assert!(again.verify(&token).is_some());
        // expired, tampered and foreign tokens do not verify
        assert!(
            issuer
                .verify(&issuer.issue(&claims(-120)).unwrap())
                .is_none()
        );
        let mut tampered = token.clone();
        tampered.pop();
        assert!(issuer.verify(&tampered).is_none());
        let other = TokenIssuer::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        assert!(other.verify(&token).is_none());
    }

    #[test]
    fn admission_mounts_the_token_unless_opted_out() {
        let mut pod =
            json!({"spec": {"containers": [{"name": "a"}], "initContainers": [{"name": "i"}]}});
        mount_token(&mut pod);
        let volume = &pod["spec"]["volumes"][0];
        assert!(
            volume["name"]
                .as_str()
                .unwrap()
                .starts_with("kube-api-access-")
        );
        assert_eq!(
            pod["spec"]["containers"][0]["volumeMounts"][0]["mountPath"],
            MOUNT_PATH
        );
        assert_eq!(
            pod["spec"]["initContainers"][0]["volumeMounts"][0]["readOnly"],
            true
        );
        let mut opted_out =
            json!({"spec": {"automountServiceAccountToken": false, "containers": [{"name": "a"}]}});
        mount_token(&mut opted_out);
        assert!(opted_out["spec"].get("volumes").is_none());
    }
}
