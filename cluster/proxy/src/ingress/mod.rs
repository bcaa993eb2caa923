//! The Ingress controller (class `kelson`): an HTTP and HTTPS reverse proxy on the node that
//! routes by host and path ([`routes`]) straight to the ready endpoints of the backend Services
//! (as ingress-nginx does), with TLS certificates from Secrets chosen by SNI.
//!
//! A watch on Ingresses and Secrets, plus the proxy's Service and EndpointSlice caches, rebuilds
//! one immutable [`State`] on every change; requests read the current one, so configuration
//! changes apply without a restart and without dropping connections. Each Ingress of the class
//! gets this node's address in `status.loadBalancer.ingress`.

pub mod routes;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::Ingress;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use parking_lot::RwLock;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Caches;
use crate::model;
use routes::{Backend, PortRef, Routes};

type Body = BoxBody<Bytes, hyper::Error>;

/// How the Ingress controller runs.
#[derive(Clone, Debug)]
pub struct IngressConfig {
    /// The IngressClass it serves.
    pub class: String,
    /// Whether Ingresses without a class are its (the class is the cluster's default).
    pub default_class: bool,
    /// The HTTP listener.
    pub http: SocketAddr,
    /// The HTTPS listener.
    pub https: SocketAddr,
    /// The address published in Ingresses' status.
    pub node_address: IpAddr,
}

/// Everything a request needs, rebuilt on every change.
#[derive(Default)]
pub struct State {
    /// The routing table.
    pub routes: Routes,
    /// Ready endpoints of every backend.
    pub endpoints: BTreeMap<Backend, Vec<SocketAddr>>,
    /// Certificates by host (`*.example.com` for wildcards).
    pub certificates: BTreeMap<String, Arc<CertifiedKey>>,
}

struct Controller {
    state: RwLock<Arc<State>>,
    next: AtomicUsize,
    client: HttpClient<HttpConnector, Incoming>,
    fallback: Arc<CertifiedKey>,
}

/// The endpoints of `backend` among `ports`.
fn resolve(backend: &Backend, ports: &[model::ServicePort]) -> Vec<SocketAddr> {
    ports
        .iter()
        .find(|p| {
            p.namespace == backend.namespace
                && p.name == backend.service
                && p.protocol == model::Protocol::Tcp
                && match &backend.port {
                    PortRef::Number(n) => i32::from(p.port) == *n,
                    PortRef::Name(name) => &p.port_name == name,
                }
        })
        .map(|p| {
            p.endpoints
                .iter()
                .map(|e| SocketAddr::new(IpAddr::V4(e.ip), e.port))
                .collect()
        })
        .unwrap_or_default()
}

fn certified_key(secret: &Secret) -> Option<Arc<CertifiedKey>> {
    let data = secret.data.as_ref()?;
    let chain = CertificateDer::pem_slice_iter(&data.get("tls.crt")?.0)
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    let key = PrivateKeyDer::from_pem_slice(&data.get("tls.key")?.0).ok()?;
    let key = rustls::crypto::ring::sign::any_supported_type(&key).ok()?;
    Some(Arc::new(CertifiedKey::new(chain, key)))
}

fn build_state(
    ingresses: &[Arc<Ingress>],
    secrets: &Store<Secret>,
    caches: &Caches,
    config: &IngressConfig,
) -> State {
    let routes = routes::build(ingresses, &config.class, config.default_class);
    let services = caches.services.state();
    let slices = caches.slices.state();
    let ports = model::service_ports(
        services.iter().map(AsRef::as_ref),
        slices.iter().map(AsRef::as_ref),
    );
    let endpoints = routes
        .backends()
        .into_iter()
        .map(|b| (b.clone(), resolve(b, &ports)))
        .collect();
    let mut certificates = BTreeMap::new();
    for tls in &routes.tls {
        let reference =
            kube::runtime::reflector::ObjectRef::<Secret>::new(&tls.secret).within(&tls.namespace);
        let Some(secret) = secrets.get(&reference) else {
            warn!(namespace = %tls.namespace, secret = %tls.secret, "TLS secret of an Ingress not found");
            continue;
        };
        let Some(key) = certified_key(&secret) else {
            warn!(namespace = %tls.namespace, secret = %tls.secret, "TLS secret holds no usable tls.crt and tls.key");
            continue;
        };
        for host in &tls.hosts {
            certificates
                .entry(host.to_ascii_lowercase())
                .or_insert_with(|| key.clone());
        }
    }
    State {
        routes,
        endpoints,
        certificates,
    }
}

#[derive(Debug)]
struct Certificates(Arc<Controller>);

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let state = self.0.state.read().clone();
        let found = hello.server_name().and_then(|name| {
            let name = name.to_ascii_lowercase();
            state.certificates.get(&name).cloned().or_else(|| {
                let dot = name.find('.')?;
                state
                    .certificates
                    .get(&format!("*{}", &name[dot..]))
                    .cloned()
            })
        });
        Some(found.unwrap_or_else(|| self.0.fallback.clone()))
    }
}

fn fallback_certificate() -> Arc<CertifiedKey> {
    let key = rcgen::KeyPair::generate().expect("key generation");
    let mut params =
        rcgen::CertificateParams::new(vec!["ingress.local".to_owned()]).expect("valid names");
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        "Kelson Ingress Controller Fake Certificate",
    );
    let cert = params.self_signed(&key).expect("self-signed");
    let der = PrivateKeyDer::try_from(key.serialize_der()).expect("pkcs8");
    let signing = rustls::crypto::ring::sign::any_supported_type(&der).expect("supported key");
    Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing))
}

fn text(status: StatusCode, message: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(
            Full::new(Bytes::from(format!("{message}\n")))
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("static response")
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    for name in HOP_BY_HOP.iter().map(|s| (*s).to_owned()).chain(named) {
        headers.remove(name.as_str());
    }
}

async fn handle(
    controller: Arc<Controller>,
    mut request: Request<Incoming>,
    peer: SocketAddr,
    scheme: &'static str,
) -> Response<Body> {
    let host = request
        .uri()
        .host()
        .map(str::to_owned)
        .or_else(|| {
            request
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name).to_owned())
        })
        .unwrap_or_default();
    let state = controller.state.read().clone();
    let Some(backend) = state.routes.find(&host, request.uri().path()) else {
        return text(StatusCode::NOT_FOUND, "default backend - 404");
    };
    let endpoints = state
        .endpoints
        .get(backend)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if endpoints.is_empty() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "503 Service Temporarily Unavailable",
        );
    }
    let endpoint = endpoints[controller.next.fetch_add(1, Ordering::Relaxed) % endpoints.len()];
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let Ok(uri) = format!("http://{endpoint}{path}").parse() else {
        return text(StatusCode::BAD_REQUEST, "400 Bad Request");
    };
    *request.uri_mut() = uri;
    *request.version_mut() = http::Version::HTTP_11;
    // a protocol upgrade (WebSocket) passes through: its headers stay, and after 101 the two
    // connections are joined byte for byte
    let upgrade = request.headers().get(header::UPGRADE).cloned();
    let client_side = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
    let headers = request.headers_mut();
    strip_hop_by_hop(headers);
    if let Some(protocol) = &upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol.clone());
    }
    if !headers.contains_key(header::HOST)
        && let Ok(value) = HeaderValue::from_str(&host)
    {
        headers.insert(header::HOST, value);
    }
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(previous) => format!("{previous}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    for (name, value) in [
        ("x-forwarded-for", forwarded_for),
        ("x-real-ip", peer.ip().to_string()),
        ("x-forwarded-host", host.clone()),
        ("x-forwarded-proto", scheme.to_owned()),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    match tokio::time::timeout(Duration::from_secs(60), controller.client.request(request)).await {
        Ok(Ok(mut response)) => {
            if response.status() == StatusCode::SWITCHING_PROTOCOLS
                && let Some(client_side) = client_side
            {
                let upstream_side = hyper::upgrade::on(&mut response);
                tokio::spawn(async move {
                    let (Ok(client), Ok(upstream)) = tokio::join!(client_side, upstream_side)
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(
                        &mut TokioIo::new(client),
                        &mut TokioIo::new(upstream),
                    )
                    .await;
                });
                let (parts, body) = response.into_parts();
                return Response::from_parts(parts, body.boxed());
            }
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, body.boxed())
        }
        Ok(Err(error)) => {
            debug!(%endpoint, %error, "upstream failed");
            text(StatusCode::BAD_GATEWAY, "502 Bad Gateway")
        }
        Err(_) => text(StatusCode::GATEWAY_TIMEOUT, "504 Gateway Time-out"),
    }
}

async fn accept_loop(
    controller: Arc<Controller>,
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let scheme = if tls.is_some() { "https" } else { "http" };
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    debug!(%error, "ingress accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let controller = controller.clone();
        let tls = tls.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let controller = controller.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(
                        handle(controller, request, peer, scheme).await,
                    )
                }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let result = match tls {
                Some(acceptor) => {
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                            .await
                    else {
                        return;
                    };
                    let connection =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    tokio::select! {
                        () = shutdown.cancelled() => Ok(()),
                        result = connection => result,
                    }
                }
                None => {
                    let connection =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    tokio::select! {
                        () = shutdown.cancelled() => Ok(()),
                        result = connection => result,
                    }
                }
            };
            if let Err(error) = result {
                debug!(%peer, %error, "ingress connection ended");
            }
        });
    }
}

/// Sets `status.loadBalancer.ingress` of `ingress` to this node's address when it differs.
async fn publish_status(client: &kube::Client, ingress: &Ingress, address: IpAddr) {
    let want = serde_json::json!([{"ip": address.to_string()}]);
    let have = ingress
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| serde_json::to_value(&l.ingress).ok());
    if have.as_ref() == Some(&want) {
        return;
    }
    let (Some(namespace), Some(name)) = (
        ingress.metadata.namespace.as_deref(),
        ingress.metadata.name.as_deref(),
    ) else {
        return;
    };
    let api: Api<Ingress> = Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": want}}});
    let params = PatchParams {
        field_manager: Some("kelson-ingress".into()),
        ..PatchParams::default()
    };
    if let Err(error) = api.patch_status(name, &params, &Patch::Merge(&patch)).await {
        debug!(%namespace, %name, %error, "failed to publish the Ingress address");
    }
}

/// Starts the controller: watches through `client`, serves on the configured listeners until
/// `shutdown`. Returns the bound HTTP and HTTPS addresses.
///
/// # Errors
/// When a listener cannot be bound.
pub async fn start(
    client: kube::Client,
    caches: Caches,
    config: IngressConfig,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, SocketAddr)> {
    let http_listener = tokio::net::TcpListener::bind(config.http).await?;
    let https_listener = tokio::net::TcpListener::bind(config.https).await?;
    let addresses = (http_listener.local_addr()?, https_listener.local_addr()?);
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    let controller = Arc::new(Controller {
        state: RwLock::new(Arc::new(State::default())),
        next: AtomicUsize::new(0),
        client: HttpClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector),
        fallback: fallback_certificate(),
    });
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(std::io::Error::other)?
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(Certificates(controller.clone())));
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio::spawn(accept_loop(
        controller.clone(),
        http_listener,
        None,
        shutdown.clone(),
    ));
    tokio::spawn(accept_loop(
        controller.clone(),
        https_listener,
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls))),
        shutdown.clone(),
    ));

    let (ingresses, ingresses_writer) = reflector::store::<Ingress>();
    let (secrets, secrets_writer) = reflector::store::<Secret>();
    let mut changes = caches.subscribe();
    let (kick, mut kicked) = tokio::sync::watch::channel(0u64);
    let kick = Arc::new(kick);
    {
        let kick = kick.clone();
        let stream = reflector(
            ingresses_writer,
            watcher(
                Api::<Ingress>::all(client.clone()),
                watcher::Config::default(),
            ),
        )
        .default_backoff();
        tokio::spawn(crate::forward_changes(stream, kick, shutdown.clone()));
    }
    {
        let stream = reflector(
            secrets_writer,
            watcher(
                Api::<Secret>::all(client.clone()),
                watcher::Config::default().fields("type=kubernetes.io/tls"),
            ),
        )
        .default_backoff();
        tokio::spawn(crate::forward_changes(stream, kick, shutdown.clone()));
    }
    tokio::spawn(async move {
        let _ = tokio::join!(ingresses.wait_until_ready(), caches.ready());
        info!(http = %addresses.0, https = %addresses.1, class = %config.class, "ingress controller serving");
        loop {
            let all = ingresses.state();
            let state = build_state(&all, &secrets, &caches, &config);
            *controller.state.write() = Arc::new(state);
            for ingress in &all {
                if routes::is_ours(ingress, &config.class, config.default_class) {
                    publish_status(&client, ingress, config.node_address).await;
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = changes.changed() => {}
                _ = kicked.changed() => {}
            }
            // a burst of changes rebuilds once
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", HeaderValue::from_static("close, x-secret"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-kept"));
    }

    #[test]
    fn a_fallback_certificate_is_made() {
        let key = fallback_certificate();
        assert_eq!(key.cert.len(), 1);
    }
}
