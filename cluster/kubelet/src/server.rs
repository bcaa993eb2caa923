//! The kubelet's HTTPS API (port 10250 by default), which the API server proxies `pods/log`,
//! `pods/exec`, `pods/attach` and `pods/portforward` to: `/containerLogs` reads the CRI log
//! files ([`crate::logs`]); `/exec`, `/attach` and `/portForward` ask the runtime for a
//! streaming URL and forward the upgrade to it, so SPDY and WebSocket clients of every version
//! reach containerd's streaming server unchanged, except WebSocket v5, which the runtime does
//! not speak and [`crate::translate`] carries over SPDY; `/stats/summary` is the Summary API
//! ([`crate::stats`]). Clients must present a certificate signed by the cluster CA.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use k8s_cri::v1 as cri;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::logs::{self, LogOptions, form_pairs};
use crate::pods::PodContext;
use crate::pods::spec::{CONTAINER_NAME_LABEL, NODE_LABEL, POD_NAME_LABEL, POD_NAMESPACE_LABEL};
use crate::translate;

/// PEM material of the kubelet's listener.
#[derive(Clone, Debug)]
pub struct KubeletTls {
    /// Serving certificate.
    pub cert: String,
    /// Its key.
    pub key: String,
    /// The cluster CA, which client certificates must chain to.
    pub ca: String,
}

/// A failure building the TLS configuration.
#[derive(Debug, thiserror::Error)]
#[error("invalid kubelet TLS material: {0}")]
pub struct TlsError(String);

impl KubeletTls {
    /// The rustls configuration: our certificate; client certificates required.
    ///
    /// # Errors
    /// When the PEM material does not parse.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let error = |e: &dyn std::fmt::Display| TlsError(e.to_string());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca.as_bytes()) {
            roots
                .add(cert.map_err(|e| error(&e))?)
                .map_err(|e| error(&e))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| error(&e))?;
        let chain = CertificateDer::pem_slice_iter(self.cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| error(&e))?;
        let key = PrivateKeyDer::from_pem_slice(self.key.as_bytes()).map_err(|e| error(&e))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| error(&e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| error(&e))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

fn text(status: StatusCode, message: impl Into<String>) -> Response {
    (status, message.into()).into_response()
}

/// The kubelet API routes.
pub fn router(ctx: Arc<PodContext>) -> Router {
    let node_cpu = Arc::new(crate::stats::NodeCpu::default());
    let summary_ctx = ctx.clone();
    let metrics_ctx = ctx.clone();
    let cadvisor_ctx = ctx.clone();
    let resource_ctx = ctx.clone();
    let cgroups = Arc::new(crate::cadvisor::Cgroups::default());
    let resource_cgroups = cgroups.clone();
    let sandbox_image = Arc::new(tokio::sync::OnceCell::new());
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || {
                let ctx = metrics_ctx.clone();
                async move {
                    refresh_gauges(&ctx).await;
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        ctx.metrics.render(),
                    )
                        .into_response()
                }
            }),
        )
        .route(
            "/metrics/cadvisor",
            get(move || {
                let (ctx, cgroups) = (cadvisor_ctx.clone(), cgroups.clone());
                let sandbox_image = sandbox_image.clone();
                async move {
                    exposition(crate::cadvisor::render(&ctx, &cgroups, &sandbox_image).await)
                }
            }),
        )
        .route(
            "/metrics/resource",
            get(move || {
                let (ctx, cgroups) = (resource_ctx.clone(), resource_cgroups.clone());
                async move { exposition(crate::cadvisor::resource(&ctx, &cgroups).await) }
            }),
        )
        .route(
            "/stats/summary",
            get(move || {
                let ctx = summary_ctx.clone();
                let node_cpu = node_cpu.clone();
                async move {
                    match crate::stats::summary(&ctx, &node_cpu).await {
                        Ok(summary) => axum::Json(summary).into_response(),
                        Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
                    }
                }
            }),
        )
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .route("/exec/{namespace}/{pod}/{container}", any(exec))
        .route("/attach/{namespace}/{pod}/{container}", any(attach))
        .route("/portForward/{namespace}/{pod}", any(port_forward))
        .with_state(ctx)
}

/// A metrics page, or the runtime's error as a 500.
fn exposition(rendered: crate::cri::Result<String>) -> Response {
    match rendered {
        Ok(body) => (
            [(
                axum::http::header::CONTENT_TYPE,
                kelson_metrics::exposition::TEXT_FORMAT,
            )],
            body,
        )
            .into_response(),
        Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    }
}

/// Sets the running pod and container gauges from the runtime.
async fn refresh_gauges(ctx: &PodContext) {
    let labels = [(NODE_LABEL, ctx.node.name.as_str())];
    if let Ok(sandboxes) = ctx.cri.list_pod_sandboxes(&labels).await {
        let ready = sandboxes
            .iter()
            .filter(|s| s.state == cri::PodSandboxState::SandboxReady as i32)
            .count();
        ctx.metrics
            .running_pods
            .set(i64::try_from(ready).unwrap_or(i64::MAX));
    }
    if let Ok(containers) = ctx.cri.list_containers(&labels).await {
        for (state, name) in [
            (cri::ContainerState::ContainerCreated, "created"),
            (cri::ContainerState::ContainerRunning, "running"),
            (cri::ContainerState::ContainerExited, "exited"),
            (cri::ContainerState::ContainerUnknown, "unknown"),
        ] {
            let count = containers
                .iter()
                .filter(|c| c.state == state as i32)
                .count();
            ctx.metrics
                .running_containers
                .with_label_values(&[name])
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }
}

/// The containers of a pod's container name, newest attempt first.
async fn containers_of(
    ctx: &PodContext,
    namespace: &str,
    pod: &str,
    container: &str,
) -> Result<Vec<cri::Container>, Response> {
    let labels = [
        (POD_NAMESPACE_LABEL, namespace),
        (POD_NAME_LABEL, pod),
        (CONTAINER_NAME_LABEL, container),
        (NODE_LABEL, ctx.node.name.as_str()),
    ];
    let mut containers = ctx
        .cri
        .list_containers(&labels)
        .await
        .map_err(|e| text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    containers.sort_by_key(|c| {
        std::cmp::Reverse((c.created_at, c.metadata.as_ref().map_or(0, |m| m.attempt)))
    });
    if containers.is_empty() {
        return Err(text(
            StatusCode::NOT_FOUND,
            format!("container \"{container}\" in pod \"{pod}\" is not available"),
        ));
    }
    Ok(containers)
}

async fn container_logs(
    State(ctx): State<Arc<PodContext>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    request: Request,
) -> Response {
    let options = match LogOptions::from_query(request.uri().query(), jiff::Timestamp::now()) {
        Ok(options) => options,
        Err(message) => return text(StatusCode::BAD_REQUEST, message),
    };
    let containers = match containers_of(&ctx, &namespace, &pod, &container).await {
        Ok(containers) => containers,
        Err(response) => return response,
    };
    let chosen = if options.previous {
        match containers.get(1) {
            Some(previous) => previous.clone(),
            None => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "previous terminated container \"{container}\" in pod \"{pod}\" not found"
                    ),
                );
            }
        }
    } else {
        containers[0].clone()
    };
    let status = match ctx.cri.container_status(&chosen.id).await {
        Ok(status) => status,
        Err(error) => return text(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    };
    let path = std::path::PathBuf::from(status.log_path);
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    let cri = ctx.cri.clone();
    let id = chosen.id.clone();
    tokio::spawn(logs::stream(path, options, sender, move || {
        let cri = cri.clone();
        let id = id.clone();
        Box::pin(async move {
            cri.container_status(&id)
                .await
                .is_ok_and(|s| s.state == cri::ContainerState::ContainerRunning as i32)
        })
    }));
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(receiver));
    ([(axum::http::header::CONTENT_TYPE, "text/plain")], body).into_response()
}

fn flag(pairs: &[(String, String)], name: &str) -> bool {
    pairs
        .iter()
        .any(|(k, v)| k == name && (v.is_empty() || v == "1" || v == "true"))
}

/// The authority and path of the runtime's streaming `url`.
fn streaming_target(url: &str) -> Option<(String, String)> {
    let uri = url.parse::<axum::http::Uri>().ok()?;
    let authority = uri.authority().map(ToString::to_string)?;
    let path = uri
        .path_and_query()
        .map_or("/".to_owned(), ToString::to_string);
    Some((authority, path))
}

fn bad_streaming_url(url: &str) -> Response {
    text(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("bad streaming URL {url}"),
    )
}

/// Connects the client's (upgrade) request to the runtime's streaming `url`: a WebSocket
/// asking for v5 through [`translate`], anything else forwarded as it is.
async fn remote_command(url: &str, request: Request, streams: translate::Streams) -> Response {
    if translate::wants_v5(request.headers()) {
        let Some((authority, path)) = streaming_target(url) else {
            return bad_streaming_url(url);
        };
        return translate::serve(&authority, &path, request, streams)
            .await
            .map(Body::from);
    }
    forward_to_runtime(url, request).await
}

/// Forwards the client's (upgrade) request to the runtime's streaming `url`.
async fn forward_to_runtime(url: &str, mut request: Request) -> Response {
    let Some((authority, path)) = streaming_target(url) else {
        return bad_streaming_url(url);
    };
    let stream = match tokio::net::TcpStream::connect(&authority).await {
        Ok(stream) => stream,
        Err(error) => {
            return text(
                StatusCode::BAD_GATEWAY,
                format!("failed to reach the streaming server at {authority}: {error}"),
            );
        }
    };
    *request.uri_mut() = match path.parse() {
        Ok(uri) => uri,
        Err(_) => return text(StatusCode::INTERNAL_SERVER_ERROR, "bad streaming path"),
    };
    if let Ok(host) = authority.parse() {
        request.headers_mut().insert(axum::http::header::HOST, host);
    }
    match kelson_common::proxy::forward(stream, request).await {
        Ok(response) => response.map(Body::new),
        Err(error) => text(
            StatusCode::BAD_GATEWAY,
            format!("streaming server failed: {error}"),
        ),
    }
}

async fn running_container(
    ctx: &PodContext,
    namespace: &str,
    pod: &str,
    container: &str,
) -> Result<String, Response> {
    let containers = containers_of(ctx, namespace, pod, container).await?;
    let newest = &containers[0];
    if newest.state != cri::ContainerState::ContainerRunning as i32 {
        return Err(text(
            StatusCode::BAD_REQUEST,
            format!("container {container} is not running"),
        ));
    }
    Ok(newest.id.clone())
}

async fn exec(
    State(ctx): State<Arc<PodContext>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    request: Request,
) -> Response {
    let pairs = form_pairs(request.uri().query().unwrap_or_default());
    let command: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    if command.is_empty() {
        return text(
            StatusCode::BAD_REQUEST,
            "you must specify at least 1 command",
        );
    }
    let id = match running_container(&ctx, &namespace, &pod, &container).await {
        Ok(id) => id,
        Err(response) => return response,
    };
    let exec = cri::ExecRequest {
        container_id: id,
        cmd: command,
        tty: flag(&pairs, "tty"),
        stdin: flag(&pairs, "stdin") || flag(&pairs, "input"),
        stdout: flag(&pairs, "stdout") || flag(&pairs, "output"),
        stderr: flag(&pairs, "stderr") || flag(&pairs, "error"),
    };
    let streams = translate::Streams {
        stdin: exec.stdin,
        stdout: exec.stdout,
        stderr: exec.stderr,
        tty: exec.tty,
    };
    match ctx.cri.exec(exec).await {
        Ok(url) => remote_command(&url, request, streams).await,
        Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    }
}

async fn attach(
    State(ctx): State<Arc<PodContext>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    request: Request,
) -> Response {
    let pairs = form_pairs(request.uri().query().unwrap_or_default());
    let id = match running_container(&ctx, &namespace, &pod, &container).await {
        Ok(id) => id,
        Err(response) => return response,
    };
    let attach = cri::AttachRequest {
        container_id: id,
        stdin: flag(&pairs, "stdin") || flag(&pairs, "input"),
        tty: flag(&pairs, "tty"),
        stdout: flag(&pairs, "stdout") || flag(&pairs, "output"),
        stderr: flag(&pairs, "stderr") || flag(&pairs, "error"),
    };
    let streams = translate::Streams {
        stdin: attach.stdin,
        stdout: attach.stdout,
        stderr: attach.stderr,
        tty: attach.tty,
    };
    match ctx.cri.attach(attach).await {
        Ok(url) => remote_command(&url, request, streams).await,
        Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    }
}

async fn port_forward(
    State(ctx): State<Arc<PodContext>>,
    Path((namespace, pod)): Path<(String, String)>,
    request: Request,
) -> Response {
    let labels = [
        (POD_NAMESPACE_LABEL, namespace.as_str()),
        (POD_NAME_LABEL, pod.as_str()),
        (NODE_LABEL, ctx.node.name.as_str()),
    ];
    let sandboxes = match ctx.cri.list_pod_sandboxes(&labels).await {
        Ok(sandboxes) => sandboxes,
        Err(error) => return text(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    };
    let Some(sandbox) = sandboxes
        .iter()
        .filter(|s| s.state == cri::PodSandboxState::SandboxReady as i32)
        .max_by_key(|s| s.created_at)
    else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod {namespace}/{pod} has no running sandbox"),
        );
    };
    match ctx.cri.port_forward(&sandbox.id).await {
        Ok(url) => forward_to_runtime(&url, request).await,
        Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    }
}

/// Serves `router` over TLS on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: CancellationToken,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::service::TowerToHyperService;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (stream, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    debug!(%error, "kubelet accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    debug!(%peer, %error, "kubelet tls handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(error) = builder
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await
            {
                debug!(%peer, %error, "kubelet connection ended with an error");
            }
        });
    }
}
