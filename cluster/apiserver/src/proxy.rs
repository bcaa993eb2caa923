//! Subresources the kubelet serves, forwarded to the pod's node: `pods/log` (streamed),
//! `pods/exec`, `pods/attach` and `pods/portforward` (SPDY/3.1 or WebSocket upgrades spliced
//! through), and `nodes/{name}/proxy/{path}`. The API server reaches the kubelet at the node's
//! InternalIP and `daemonEndpoints.kubeletEndpoint.Port`, with its kubelet client certificate.

use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{Request, StatusCode};
use serde_json::Value;

use crate::ApiServer;
use crate::error::{ApiError, ApiResult};

/// What a proxied path asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `pods/{log,exec,attach,portforward}` of a pod.
    Pod {
        /// Namespace.
        namespace: String,
        /// Pod name.
        name: String,
        /// `log`, `exec`, `attach` or `portforward`.
        subresource: String,
    },
    /// `nodes/{name}/proxy/{rest}`.
    Node {
        /// Node name.
        name: String,
        /// The kubelet path.
        rest: String,
    },
}

/// Recognises the paths this module serves.
#[must_use]
pub fn target(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["api", "v1", "namespaces", namespace, "pods", name, sub]
            if matches!(*sub, "log" | "exec" | "attach" | "portforward") =>
        {
            Some(Target::Pod {
                namespace: (*namespace).to_owned(),
                name: (*name).to_owned(),
                subresource: (*sub).to_owned(),
            })
        }
        ["api", "v1", "nodes", name, "proxy", rest @ ..] => Some(Target::Node {
            name: (*name).to_owned(),
            rest: rest.join("/"),
        }),
        _ => None,
    }
}

/// The names of the containers listed at `pointer` (`/spec/containers`, ...).
fn names_at(pod: &Value, pointer: &str) -> Vec<String> {
    pod.pointer(pointer)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

/// The container a request means: the `container` parameter, else the default-container
/// annotation, else the only container.
fn container_of(pod: &Value, requested: Option<&str>, name: &str) -> ApiResult<String> {
    let all = names_at(pod, "/spec/containers");
    if let Some(requested) = requested.filter(|c| !c.is_empty()) {
        if all.iter().any(|c| c == requested)
            || names_at(pod, "/spec/initContainers")
                .iter()
                .any(|c| c == requested)
        {
            return Ok(requested.to_owned());
        }
        return Err(ApiError::bad_request(format!(
            "container {requested} is not valid for pod {name}"
        )));
    }
    if let Some(default) = pod
        .pointer("/metadata/annotations/kubectl.kubernetes.io~1default-container")
        .and_then(Value::as_str)
    {
        return Ok(default.to_owned());
    }
    match all.as_slice() {
        [only] => Ok(only.clone()),
        _ => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            all.join(" ")
        ))),
    }
}

/// The kubelet address of a node: InternalIP and kubelet port.
fn kubelet_address(node: &Value, name: &str) -> ApiResult<String> {
    let address = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|a| a.get("type").and_then(Value::as_str) == Some("InternalIP"))
        .and_then(|a| a.get("address").and_then(Value::as_str))
        .ok_or_else(|| {
            ApiError::new(
                503,
                "ServiceUnavailable",
                format!("node {name} has no InternalIP"),
            )
        })?;
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_i64)
        .filter(|p| *p > 0)
        .ok_or_else(|| {
            ApiError::new(
                503,
                "ServiceUnavailable",
                format!("node {name} serves no kubelet API"),
            )
        })?;
    Ok(if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    })
}

async fn node_object(server: &ApiServer, name: &str) -> ApiResult<Value> {
    let nodes = server
        .registry
        .lookup("", "v1", "nodes")
        .ok_or_else(|| ApiError::internal("nodes are not registered"))?;
    server.objects.get(&nodes, None, name).await
}

/// Forwards a request for `target` to the kubelet.
///
/// # Errors
/// 404 for a missing pod or node, 400 for a bad container, 503 when the kubelet is out of
/// reach.
pub async fn forward(
    server: &Arc<ApiServer>,
    target: Target,
    mut request: Request<Body>,
) -> ApiResult<Response> {
    let query = request.uri().query().unwrap_or_default().to_owned();
    let (node_name, path) = match &target {
        Target::Pod {
            namespace,
            name,
            subresource,
        } => {
            let pods = server
                .registry
                .lookup("", "v1", "pods")
                .ok_or_else(|| ApiError::internal("pods are not registered"))?;
            let pod = server.objects.get(&pods, Some(namespace), name).await?;
            let node = pod
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if node.is_empty() {
                if subresource == "log" {
                    // an unscheduled pod has no logs yet
                    return Ok((StatusCode::OK, "").into_response());
                }
                return Err(ApiError::bad_request(format!(
                    "pod {name} does not have a host assigned"
                )));
            }
            let requested = form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == "container")
                .map(|(_, v)| v.into_owned());
            let path = if subresource == "portforward" {
                format!("/portForward/{namespace}/{name}")
            } else {
                let container = container_of(&pod, requested.as_deref(), name)?;
                let kubelet_path = match subresource.as_str() {
                    "log" => "containerLogs",
                    "exec" => "exec",
                    _ => "attach",
                };
                format!("/{kubelet_path}/{namespace}/{name}/{container}")
            };
            (node, path)
        }
        Target::Node { name, rest } => (name.clone(), format!("/{rest}")),
    };
    let node = node_object(server, &node_name).await?;
    let (stream, address) = dial(server, &node, &node_name).await?;
    let uri = if query.is_empty() {
        path
    } else {
        format!("{path}?{query}")
    };
    *request.uri_mut() = uri
        .parse()
        .map_err(|_| ApiError::bad_request(format!("invalid kubelet path {uri}")))?;
    if let Ok(value) = address.parse() {
        request.headers_mut().insert(http::header::HOST, value);
    }
    // HTTP/2 requests carry no upgrade; the kubelet speaks HTTP/1.1
    *request.version_mut() = http::Version::HTTP_11;
    let response = kelson_common::proxy::forward(stream, request)
        .await
        .map_err(|e| {
            ApiError::new(
                503,
                "ServiceUnavailable",
                format!("error talking to the kubelet of node {node_name} at {address}: {e}"),
            )
        })?;
    Ok(response.map(Body::new))
}

/// A TLS connection to the kubelet of `node` (named `node_name`), and its address.
///
/// # Errors
/// 503 when the node has no kubelet address or it is out of reach.
pub(crate) async fn dial(
    server: &ApiServer,
    node: &Value,
    node_name: &str,
) -> ApiResult<(
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    String,
)> {
    let address = kubelet_address(node, node_name)?;
    let Some(tls) = server.kubelet_client.read().clone() else {
        return Err(ApiError::new(
            503,
            "ServiceUnavailable",
            "the API server has no kubelet client certificate",
        ));
    };
    let unreachable = |error: &dyn std::fmt::Display| {
        ApiError::new(
            503,
            "ServiceUnavailable",
            format!("error dialing the kubelet of node {node_name} at {address}: {error}"),
        )
    };
    let stream = tokio::net::TcpStream::connect(&address)
        .await
        .map_err(|e| unreachable(&e))?;
    let host = address
        .rsplit_once(':')
        .map_or(address.as_str(), |(h, _)| h)
        .trim_matches(['[', ']']);
    let server_name =
        rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| unreachable(&e))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(server_name, stream)
        .await
        .map_err(|e| unreachable(&e))?;
    Ok((stream, address))
}

/// The rustls client configuration the API server dials kubelets with: the kubelet client
/// certificate; kubelet serving certificates are checked against the cluster CA.
///
/// # Errors
/// When the PEM material does not parse.
pub fn kubelet_client_config(
    ca: &str,
    cert: &str,
    key: &str,
) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| e.to_string())?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            target("/api/v1/namespaces/default/pods/web/log"),
            Some(Target::Pod {
                namespace: "default".into(),
                name: "web".into(),
                subresource: "log".into()
            })
        );
        assert_eq!(
            target("/api/v1/nodes/n1/proxy/stats/summary"),
            Some(Target::Node {
                name: "n1".into(),
                rest: "stats/summary".into()
            })
        );
        assert_eq!(target("/api/v1/namespaces/default/pods/web/status"), None);
    }

    #[test]
    fn containers_and_addresses() {
        let pod = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}], "initContainers": [{"name": "i"}]}});
        assert_eq!(container_of(&pod, Some("b"), "p").unwrap(), "b");
        assert_eq!(container_of(&pod, Some("i"), "p").unwrap(), "i");
        let error = container_of(&pod, None, "p").unwrap_err();
        assert!(
            error.status()["message"]
                .as_str()
                .unwrap()
                .contains("choose one of: [a b]")
        );
        let single = json!({"spec": {"containers": [{"name": "only"}]}});
        assert_eq!(container_of(&single, None, "p").unwrap(), "only");
        let node = json!({"status": {"addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "192.0.2.2"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}}});
        assert_eq!(kubelet_address(&node, "n1").unwrap(), "192.0.2.2:10250");
        assert!(kubelet_address(&json!({}), "n1").is_err());
    }
}
