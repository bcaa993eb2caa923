//! Kelson's Kubernetes-compatible API server: the only component that touches storage. Real
//! kubectl (1.27–1.33), the `kube` crate and the official Python client work against it.
//!
//! Start reading at [`run`] (what `kelson server` calls), then [`rest::handle`], which routes
//! every request. Resource types live in [`registry`] (built-in kinds from [`kinds`], custom
//! ones from [`crd`]); objects are validated against [`schema`], patched by [`patch`], and their
//! field ownership is tracked by [`fieldset`]. [`discovery`] and [`openapi`] describe the API
//! to clients; [`pki`], [`auth`] and [`serve`] handle TLS, identities and connections.

pub mod admission;
pub mod auth;
pub mod convert;
pub mod crd;
pub mod discovery;
pub mod error;
pub mod fieldset;
pub mod join;
pub mod kinds;
pub mod logs;
pub mod meta;
pub mod metrics;
pub mod openapi;
pub mod patch;
pub mod pki;
pub mod prometheus_sd;
pub mod protobuf;
pub mod proxy;
pub mod rbac;
pub mod registry;
pub mod resource_metrics;
pub mod rest;
pub mod schema;
pub mod selectors;
pub mod serve;
pub mod serviceaccount;
pub mod services;
pub mod storage_metrics;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use kelson_storage::{Embedded, EmbeddedOptions, Etcd, EtcdOptions, Storage};
use parking_lot::RwLock;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::auth::{Tokens, User};
use crate::registry::{Registry, ResourceType};
use crate::rest::objects::Objects;

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Storage could not be opened.
    #[error("failed to open storage: {0}")]
    Storage(#[from] kelson_storage::Error),
    /// TLS material could not be prepared.
    #[error(transparent)]
    Pki(#[from] pki::Error),
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Where objects are stored.
#[derive(Clone, Debug)]
pub enum StorageConfig {
    /// The embedded database under the data directory.
    Embedded,
    /// An etcd cluster.
    Etcd {
        /// Client URLs.
        endpoints: Vec<String>,
    },
}

/// Configuration of `kelson server`.
#[derive(Clone, Debug)]
pub struct Config {
    /// Holds storage, TLS material, `kubeconfig.yaml` and `addresses.json`.
    pub data_dir: PathBuf,
    /// Address of the HTTPS listener (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Where objects are stored.
    pub storage: StorageConfig,
    /// Extra names and addresses for the serving certificate.
    pub tls_sans: Vec<String>,
    /// How often old revisions are compacted.
    pub compaction_interval: Duration,
    /// Where Service cluster IPs and node ports come from.
    pub service_ranges: services::Ranges,
    /// The address the `default/kubernetes` Service points at; by default the listen address,
    /// or the host's primary address when listening on all of them.
    pub advertise_address: Option<std::net::IpAddr>,
}

impl Config {
    /// Defaults for a data directory.
    #[must_use]
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen: SocketAddr::from(([0, 0, 0, 0], 6443)),
            storage: StorageConfig::Embedded,
            tls_sans: Vec::new(),
            compaction_interval: Duration::from_secs(300),
            service_ranges: services::Ranges::default(),
            advertise_address: None,
        }
    }
}

/// The shared state of the API server.
pub struct ApiServer {
    /// Resource types.
    pub registry: Registry,
    /// Object storage.
    pub objects: Objects,
    /// Bearer tokens.
    pub tokens: RwLock<Tokens>,
    /// Request metrics.
    pub metrics: metrics::Metrics,
    advertised: RwLock<String>,
    openapi_v3: openapi::V3Cache,
    /// TLS client configuration for reaching kubelets (set when serving).
    pub kubelet_client: RwLock<Option<Arc<rustls::ClientConfig>>>,
    /// The cluster's certificates (set when serving), for `/cacerts` and node certificates.
    pub pki: RwLock<Option<Arc<pki::Pki>>>,
    /// Signs and verifies service-account tokens (set when serving).
    pub token_issuer: RwLock<Option<Arc<serviceaccount::TokenIssuer>>>,
    /// Node and pod usage sampled from kubelets, for `metrics.k8s.io`.
    pub resource_metrics: resource_metrics::ResourceMetrics,
    /// Where Service addresses come from.
    pub service_ranges: RwLock<services::Ranges>,
    /// Decides what each user may do (RBAC).
    pub authorizer: rbac::Authorizer,
}

impl ApiServer {
    /// A server over `storage` with the built-in kinds.
    #[must_use]
    pub fn new(storage: Arc<dyn Storage>) -> Arc<Self> {
        let metrics = metrics::Metrics::new();
        let storage = Arc::new(storage_metrics::Metered::new(
            storage,
            metrics.storage.clone(),
        ));
        Arc::new(Self {
            registry: Registry::with_builtins(),
            objects: Objects::new(storage),
            tokens: RwLock::new(Tokens::default()),
            metrics,
            advertised: RwLock::new("127.0.0.1:6443".into()),
            openapi_v3: openapi::V3Cache::default(),
            kubelet_client: RwLock::new(None),
            pki: RwLock::new(None),
            token_issuer: RwLock::new(None),
            resource_metrics: resource_metrics::ResourceMetrics::default(),
            service_ranges: RwLock::new(services::Ranges::default()),
            authorizer: rbac::Authorizer::default(),
        })
    }

    /// The HTTP application.
    pub fn router(self: &Arc<Self>) -> Router {
        let server = self.clone();
        Router::new().fallback(move |request: http::Request<axum::body::Body>| {
            let server = server.clone();
            async move { rest::handle(server, request).await }
        })
    }

    /// A kube client that reaches this server in-process (no TLS, no socket) as `user`: how the
    /// scheduler, controllers and other components of `kelson server` talk to it.
    #[must_use]
    pub fn client(self: &Arc<Self>, user: User) -> kube::Client {
        self.counted_client(user, None)
    }

    /// [`ApiServer::client`] whose requests `metrics` counts (client-go's `rest_client_*`).
    #[must_use]
    pub fn counted_client(
        self: &Arc<Self>,
        user: User,
        metrics: Option<&Arc<kelson_common::client_metrics::ClientMetrics>>,
    ) -> kube::Client {
        let identity = auth::ClientIdentity(user);
        let host = self.advertised_address();
        let service = tower::ServiceBuilder::new()
            .option_layer(metrics.map(|m| m.layer(&host)))
            .map_request(move |mut request: http::Request<kube::client::Body>| {
                request.extensions_mut().insert(identity.clone());
                // the caller's span (a reconcile, say) becomes the request span's parent
                kelson_common::trace::inject(request.headers_mut());
                request.map(axum::body::Body::new)
            })
            .service(self.router());
        kube::Client::new(service, "default")
    }

    /// `host:port` clients are told to use.
    #[must_use]
    pub fn advertised_address(&self) -> String {
        self.advertised.read().clone()
    }

    /// Creates a built-in object unless one of its name exists.
    async fn create_missing(
        &self,
        rt: &registry::ResourceType,
        mut object: serde_json::Value,
    ) -> Result<(), error::ApiError> {
        let name = meta::name(&object).to_owned();
        if self.objects.try_get(rt, None, &name).await?.is_some() {
            return Ok(());
        }
        meta::meta_mut(&mut object).insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta::meta_mut(&mut object).insert("creationTimestamp".into(), json!(meta::now()));
        kinds::defaults::apply(&rt.group, &rt.kind, &mut object);
        kinds::strategy::prepare_create(rt, &mut object);
        match self.objects.create(rt, object).await {
            Ok(_) => Ok(()),
            Err(error) if error.code == 409 => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Creates what every cluster has from the start and serves stored custom resources.
    ///
    /// # Errors
    /// On storage failure.
    pub async fn bootstrap(self: &Arc<Self>) -> Result<(), error::ApiError> {
        let namespaces = self
            .registry
            .lookup("", "v1", "namespaces")
            .expect("namespaces are built in");
        for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let object =
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
            self.create_missing(&namespaces, object).await?;
        }
        let priority_classes = self
            .registry
            .lookup("scheduling.k8s.io", "v1", "priorityclasses")
            .expect("built in");
        for (name, value, description) in admission::SYSTEM_CLASSES {
            let object = json!({
                "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                "metadata": {"name": name}, "value": value, "description": description,
                "preemptionPolicy": "PreemptLowerPriority",
            });
            self.create_missing(&priority_classes, object).await?;
        }
        for (plural, objects) in [
            ("clusterroles", rbac::bootstrap::cluster_roles()),
            (
                "clusterrolebindings",
                rbac::bootstrap::cluster_role_bindings(),
            ),
        ] {
            let rt = self
                .registry
                .lookup("rbac.authorization.k8s.io", "v1", plural)
                .expect("built in");
            for object in objects {
                self.ensure_default(&rt, object).await?;
            }
        }
        let crds = self
            .registry
            .lookup("apiextensions.k8s.io", "v1", "customresourcedefinitions")
            .expect("built in");
        let page = self
            .objects
            .list(&crds, &crds.list_prefix(None), None, None, 0, |_| true)
            .await?;
        for crd in page.items {
            crd::register(self, &crd).await;
        }
        Ok(())
    }

    /// Creates a default RBAC object, or adds back what is missing of it (see
    /// [`rbac::bootstrap::reconcile`]).
    async fn ensure_default(
        &self,
        rt: &registry::ResourceType,
        shipped: serde_json::Value,
    ) -> Result<(), error::ApiError> {
        let name = meta::name(&shipped).to_owned();
        let Some(stored) = self.objects.try_get(rt, None, &name).await? else {
            return self.create_missing(rt, shipped).await;
        };
        let Some(reconciled) = rbac::bootstrap::reconcile(&stored, &shipped) else {
            return Ok(());
        };
        let revision = meta::meta_str(&stored, "resourceVersion")
            .and_then(|r| r.parse().ok())
            .unwrap_or_default();
        match self.objects.update(rt, reconciled, revision).await {
            Ok(_) => Ok(()),
            // another server put it back first
            Err(error) if error.code == 409 => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Side effects of a stored write.
    pub async fn after_write(self: &Arc<Self>, rt: &ResourceType, object: &serde_json::Value) {
        if rt.group == "rbac.authorization.k8s.io" {
            self.rbac_written(rt, object).await;
        }
        if rt.group == "apiextensions.k8s.io" && rt.kind == "CustomResourceDefinition" {
            crd::register(self, object).await;
        }
    }

    /// Returns once the authorizer has seen a write of an RBAC object.
    async fn rbac_written(&self, rt: &ResourceType, object: &serde_json::Value) {
        let key = rt.key(meta::namespace(object), meta::name(object));
        if let Some(revision) =
            meta::meta_str(object, "resourceVersion").and_then(|r| r.parse().ok())
        {
            rbac::written(self, &key, revision).await;
        }
    }

    /// Side effects of a completed delete.
    pub async fn after_delete(self: &Arc<Self>, rt: &ResourceType, object: &serde_json::Value) {
        if rt.group == "rbac.authorization.k8s.io"
            && let Ok(revision) = self.objects.storage().current_revision().await
        {
            let key = rt.key(meta::namespace(object), meta::name(object));
            rbac::written(self, &key, revision).await;
        }
        if rt.group == "apiextensions.k8s.io" && rt.kind == "CustomResourceDefinition" {
            crd::unregister(self, object).await;
        }
        if rt.group.is_empty() && rt.kind == "Service" {
            services::release_unused(self, object, None).await;
        }
    }
}

/// What a running server exposes to its caller.
#[derive(Clone)]
pub struct Running {
    /// `https://host:port` of the API.
    pub url: String,
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// The server, for in-process clients ([`ApiServer::client`]).
    pub server: Arc<ApiServer>,
    /// The cluster's certificates, to issue node certificates.
    pub pki: Arc<pki::Pki>,
    /// The token other nodes join with (`kelson agent --token`).
    pub node_token: String,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// Opens the configured storage.
///
/// # Errors
/// When storage cannot be opened or reached.
pub async fn open_storage(config: &Config) -> Result<Arc<dyn Storage>, Error> {
    Ok(match &config.storage {
        StorageConfig::Embedded => {
            let path = config.data_dir.join("storage").join("state.redb");
            let options = EmbeddedOptions::at(path);
            Arc::new(
                tokio::task::spawn_blocking(move || Embedded::open(options))
                    .await
                    .map_err(|e| Error::Io {
                        what: "storage open task".into(),
                        source: std::io::Error::other(e),
                    })??,
            )
        }
        StorageConfig::Etcd { endpoints } => {
            Arc::new(Etcd::connect(EtcdOptions::new(endpoints.clone())).await?)
        }
    })
}

/// Runs the API server until `shutdown` fires. `started` receives the addresses once the
/// listener is up.
///
/// # Errors
/// When storage, TLS material or the listener cannot be set up.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    started: Option<tokio::sync::oneshot::Sender<Running>>,
) -> Result<(), Error> {
    let storage = open_storage(&config).await?;
    run_with_storage(config, storage, shutdown, started).await
}

/// Like [`run`], over storage the caller opened (tests keep it across server restarts).
///
/// # Errors
/// When TLS material or the listener cannot be set up.
pub async fn run_with_storage(
    config: Config,
    storage: Arc<dyn Storage>,
    shutdown: CancellationToken,
    started: Option<tokio::sync::oneshot::Sender<Running>>,
) -> Result<(), Error> {
    std::fs::create_dir_all(&config.data_dir).map_err(io(format!(
        "failed to create {}",
        config.data_dir.display()
    )))?;
    let server = ApiServer::new(storage.clone());
    *server.service_ranges.write() = config.service_ranges.clone();

    let mut names: Vec<String> = [
        "localhost",
        "127.0.0.1",
        "::1",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    names.push(config.service_ranges.api_service_ip().to_string());
    if let Ok(host) = std::fs::read_to_string("/etc/hostname") {
        let host = host.trim();
        if !host.is_empty() {
            names.push(host.to_owned());
        }
    }
    if !config.listen.ip().is_unspecified() {
        names.push(config.listen.ip().to_string());
    }
    names.extend(config.tls_sans.iter().cloned());
    names.sort();
    names.dedup();
    let pki = Arc::new(pki::Pki::load_or_create(&config.data_dir, &names)?);
    let tls = pki.server_config()?;
    let (kubelet_cert, kubelet_key) = pki.kubelet_client(&config.data_dir)?;
    let kubelet_client = proxy::kubelet_client_config(&pki.ca_cert, &kubelet_cert, &kubelet_key)
        .map_err(|e| Error::Pki(pki::Error::Tls(e)))?;
    *server.kubelet_client.write() = Some(kubelet_client);

    let token_path = config.data_dir.join("tokens.csv");
    if !token_path.exists() {
        let token: String = (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        pki::write_file(
            &token_path,
            &format!("{token},kelson-admin,kelson-admin,\"system:masters\"\n"),
            true,
        )?;
    }
    *server.tokens.write() = Tokens::load(&token_path).map_err(io("failed to read tokens.csv"))?;
    let (node_token, node_secret) = join::load_or_create(&config.data_dir, &pki.ca_cert)
        .map_err(io("failed to write node-token"))?;
    server.tokens.write().insert(node_secret, join::node_user());
    *server.pki.write() = Some(pki.clone());
    let issuer = serviceaccount::TokenIssuer::load_or_create(&config.data_dir)
        .map_err(io("failed to load the service-account key"))?;
    *server.token_issuer.write() = Some(Arc::new(issuer));

    server.bootstrap().await.map_err(|e| Error::Io {
        what: "bootstrap failed".into(),
        source: std::io::Error::other(e.message),
    })?;
    let rbac_revision = server.authorizer.load(storage.as_ref()).await?;
    tokio::spawn(rbac::Authorizer::follow(
        server.clone(),
        storage.clone(),
        rbac_revision,
        shutdown.clone(),
    ));

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(io(format!("failed to listen on {}", config.listen)))?;
    let local = listener
        .local_addr()
        .map_err(io("failed to read the listener address"))?;
    let client_host = if local.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        local.ip().to_string()
    };
    let url = format!("https://{client_host}:{}", local.port());
    *server.advertised.write() = format!("{client_host}:{}", local.port());
    let kubeconfig = config.data_dir.join("kubeconfig.yaml");
    pki::write_file(&kubeconfig, &pki.admin_kubeconfig(&url), true)?;
    pki::write_file(
        &config.data_dir.join("addresses.json"),
        &serde_json::to_string_pretty(&json!({"apiserver": url, "listen": local.to_string()}))
            .expect("serializes"),
        false,
    )?;
    info!(%url, kubeconfig = %kubeconfig.display(), "api server listening");
    if let Some(started) = started {
        let _ = started.send(Running {
            url,
            kubeconfig,
            server: server.clone(),
            pki: pki.clone(),
            node_token,
        });
    }
    let advertise = config
        .advertise_address
        .or_else(|| (!local.ip().is_unspecified()).then_some(local.ip()))
        .unwrap_or_else(kelson_common::net::primary_address);
    if let Err(error) = services::ensure_api_service(&server, advertise, local.port()).await {
        warn!(%error, "failed to publish the kubernetes Service");
    }
    if let Err(error) = services::ensure_dns_service(&server).await {
        warn!(%error, "failed to create the cluster DNS Service");
    }
    if let Err(error) = services::ensure_ingress_class(&server).await {
        warn!(%error, "failed to create the kelson IngressClass");
    }
    tokio::spawn(services::repair_periodically(
        server.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(resource_metrics::sample(server.clone(), shutdown.clone()));
    tokio::spawn(storage_metrics::count_periodically(
        server.clone(),
        storage.clone(),
        matches!(config.storage, StorageConfig::Embedded)
            .then(|| config.data_dir.join("storage").join("state.redb")),
        Duration::from_secs(60),
        shutdown.clone(),
    ));
    tokio::spawn(compact_periodically(
        storage,
        config.compaction_interval,
        shutdown.clone(),
    ));
    serve::serve_tls(
        listener,
        tls,
        server.router(),
        shutdown,
        Duration::from_secs(5),
    )
    .await;
    info!("api server stopped");
    Ok(())
}

/// Compacts history older than one interval (keeping at least 1000 revisions), as
/// kube-apiserver does every five minutes.
async fn compact_periodically(
    storage: Arc<dyn Storage>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut previous: Option<i64> = None;
    let mut compacted = 0;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let Ok(current) = storage.current_revision().await else {
            continue;
        };
        if let Some(previous) = previous {
            let target = previous.min(current - 1000);
            if target > compacted {
                match storage.compact(target).await {
                    Ok(()) => compacted = target,
                    Err(kelson_storage::Error::Compacted { .. }) => compacted = target,
                    Err(error) => warn!(%error, "compaction failed"),
                }
            }
        }
        previous = Some(current);
    }
}

/// The admin user of a kubeconfig (used by tests and in-process clients).
#[must_use]
pub fn admin_user() -> User {
    User::new("kelson-admin", vec!["system:masters".into()])
}
