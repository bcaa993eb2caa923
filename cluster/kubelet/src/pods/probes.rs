//! Container probes — startup, liveness, readiness — with every timing field of the API
//! (initialDelaySeconds, periodSeconds, timeoutSeconds, successThreshold, failureThreshold).
//! [`Tracker`] keeps the per-container counters (pure, unit-tested with explicit instants);
//! [`check`] runs one probe: exec through CRI ExecSync, httpGet (HTTP or HTTPS, unverified as
//! the kubelet does), tcpSocket, or gRPC health checking.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::cri::Cri;

/// Which probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// startupProbe.
    Startup,
    /// livenessProbe.
    Liveness,
    /// readinessProbe.
    Readiness,
}

impl Kind {
    /// The name used in events ("Liveness probe failed: ...").
    #[must_use]
    pub fn title(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }
}

/// Timing of a probe with Kubernetes' defaults applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Delay after the container started before the first probe.
    pub initial_delay: Duration,
    /// Time between probes.
    pub period: Duration,
    /// Time a probe may take.
    pub timeout: Duration,
    /// Consecutive successes to count as passing.
    pub success_threshold: u32,
    /// Consecutive failures to count as failing.
    pub failure_threshold: u32,
}

fn seconds(value: Option<i32>, default: u64) -> Duration {
    Duration::from_secs(value.map_or(default, |v| u64::try_from(v).unwrap_or(default)))
}

impl Timing {
    /// The timing of `probe`.
    #[must_use]
    pub fn of(probe: &Probe) -> Self {
        Self {
            initial_delay: seconds(probe.initial_delay_seconds, 0),
            period: seconds(probe.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: seconds(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
            success_threshold: probe
                .success_threshold
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(1)
                .max(1),
            failure_threshold: probe
                .failure_threshold
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(3)
                .max(1),
        }
    }
}

/// Consecutive results of one probe of one container.
#[derive(Clone, Debug, Default)]
struct Counter {
    successes: u32,
    failures: u32,
    next: Option<Instant>,
    /// The settled result: passing after `success_threshold` successes, failing after
    /// `failure_threshold` failures.
    passing: Option<bool>,
}

/// Probe state of the containers of one pod, keyed by runtime container id.
#[derive(Debug, Default)]
pub struct Tracker {
    counters: HashMap<(String, Kind), Counter>,
    started: HashMap<String, bool>,
}

/// What a probe round asks the worker to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Restart the container (liveness or startup failed) with this event message.
    Restart(String),
}

impl Tracker {
    /// Whether the container is ready: running, started, and its readiness probe (if any)
    /// passing.
    #[must_use]
    pub fn ready(&self, container: &Container, id: &str) -> bool {
        if !self.has_started(container, id) {
            return false;
        }
        if container.readiness_probe.is_none() {
            return true;
        }
        self.counters
            .get(&(id.to_owned(), Kind::Readiness))
            .and_then(|c| c.passing)
            .unwrap_or(false)
    }

    /// Whether the container's startup probe (if any) has passed.
    #[must_use]
    pub fn has_started(&self, container: &Container, id: &str) -> bool {
        container.startup_probe.is_none() || self.started.get(id).copied().unwrap_or(false)
    }

    /// The probes of `container` (running since `since`) due at `now`, in order.
    #[must_use]
    pub fn due(&self, container: &Container, id: &str, since: Instant, now: Instant) -> Vec<Kind> {
        let mut due = Vec::new();
        let started = self.has_started(container, id);
        let probes = [
            (Kind::Startup, container.startup_probe.as_ref(), !started),
            (Kind::Liveness, container.liveness_probe.as_ref(), started),
            (Kind::Readiness, container.readiness_probe.as_ref(), started),
        ];
        for (kind, probe, active) in probes {
            let Some(probe) = probe else { continue };
            if !active {
                continue;
            }
            let timing = Timing::of(probe);
            let next = self
                .counters
                .get(&(id.to_owned(), kind))
                .and_then(|c| c.next)
                .unwrap_or(since + timing.initial_delay);
            if next <= now {
                due.push(kind);
            }
        }
        due
    }

    /// Records a probe result at `now`; returns an outcome when the container must restart.
    pub fn record(
        &mut self,
        container: &Container,
        id: &str,
        kind: Kind,
        result: Result<(), String>,
        now: Instant,
    ) -> Option<Outcome> {
        let probe = match kind {
            Kind::Startup => container.startup_probe.as_ref(),
            Kind::Liveness => container.liveness_probe.as_ref(),
            Kind::Readiness => container.readiness_probe.as_ref(),
        }?;
        let timing = Timing::of(probe);
        let counter = self.counters.entry((id.to_owned(), kind)).or_default();
        counter.next = Some(now + timing.period);
        match result {
            Ok(()) => {
                counter.failures = 0;
                counter.successes += 1;
                if counter.successes >= timing.success_threshold {
                    counter.passing = Some(true);
                    if kind == Kind::Startup {
                        self.started.insert(id.to_owned(), true);
                    }
                }
                None
            }
            Err(message) => {
                counter.successes = 0;
                counter.failures += 1;
                if counter.failures < timing.failure_threshold {
                    return None;
                }
                counter.passing = Some(false);
                match kind {
                    Kind::Readiness => None,
                    Kind::Liveness | Kind::Startup => {
                        // a restarted container starts counting afresh
                        counter.failures = 0;
                        Some(Outcome::Restart(format!(
                            "Container {} failed {} probe, will be restarted",
                            container.name,
                            kind.title().to_lowercase()
                        )))
                        .inspect(|_| {
                            tracing::debug!(container = %container.name, %message, "probe failed")
                        })
                    }
                }
            }
        }
    }

    /// Forgets containers that are gone.
    pub fn retain(&mut self, live_ids: &[String]) {
        self.counters.retain(|(id, _), _| live_ids.contains(id));
        self.started.retain(|id, _| live_ids.contains(id));
    }
}

fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(number) => {
            u16::try_from(*number).map_err(|_| format!("invalid port {number}"))
        }
        IntOrString::String(name) => {
            if let Ok(number) = name.parse::<u16>() {
                return Ok(number);
            }
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| format!("port {name} not found in the container"))
        }
    }
}

/// An HTTPS verifier that accepts any certificate, as the kubelet's probes do.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

async fn http_status<S>(stream: S, request: http::Request<Empty<Bytes>>) -> Result<u16, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    Ok(response.status().as_u16())
}

async fn http_get(
    action: &k8s_openapi::api::core::v1::HTTPGetAction,
    container: &Container,
    pod_ip: &str,
) -> Result<(), String> {
    let port = resolve_port(&action.port, container)?;
    let host = action
        .host
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| pod_ip.to_owned());
    let address: SocketAddr = format!("{host}:{port}")
        .parse()
        .map_err(|_| format!("invalid probe address {host}:{port}"))?;
    let path = action.path.clone().unwrap_or_else(|| "/".into());
    let url = format!(
        "{}://{address}{path}",
        action.scheme.as_deref().unwrap_or("HTTP").to_lowercase()
    );
    let mut request = http::Request::get(&path)
        .header("user-agent", "kube-probe/1.33")
        .header("accept", "*/*")
        .header("host", address.to_string());
    for header in action.http_headers.iter().flatten() {
        request = request.header(header.name.as_str(), header.value.as_str());
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| format!("Get \"{url}\": dial tcp {address}: {e}"))?;
    let status = if action.scheme.as_deref() == Some("HTTPS") {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::from(address.ip());
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, stream)
            .await
            .map_err(|e| format!("Get \"{url}\": {e}"))?;
        http_status(tls, request).await
    } else {
        http_status(stream, request).await
    }
    .map_err(|e| format!("Get \"{url}\": {e}"))?;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {status}"))
    }
}

async fn grpc_check(
    action: &k8s_openapi::api::core::v1::GRPCAction,
    pod_ip: &str,
) -> Result<(), String> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let endpoint = format!("http://{pod_ip}:{}", action.port);
    let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("failed to connect service \"{endpoint}\": {e}"))?;
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let response = client
        .check(tonic_health::pb::HealthCheckRequest {
            service: action.service.clone().unwrap_or_default(),
        })
        .await
        .map_err(|status| {
            format!(
                "rpc error: code = {:?} desc = {}",
                status.code(),
                status.message()
            )
        })?;
    let status = response.into_inner().status;
    if status == ServingStatus::Serving as i32 {
        Ok(())
    } else {
        Err(format!(
            "service unhealthy (responded with \"{}\")",
            ServingStatus::try_from(status).map_or("UNKNOWN", |s| s.as_str_name())
        ))
    }
}

/// Runs one probe against container `id` of a pod at `pod_ip`.
///
/// # Errors
/// The failure message, as the kubelet's Unhealthy event words it.
pub async fn check(
    cri: &Cri,
    probe: &Probe,
    container: &Container,
    id: &str,
    pod_ip: &str,
) -> Result<(), String> {
    let timing = Timing::of(probe);
    let run = async {
        if let Some(exec) = &probe.exec {
            let command = exec.command.clone().unwrap_or_default();
            let timeout = i64::try_from(timing.timeout.as_secs()).unwrap_or(1);
            let response = cri
                .exec_sync(id, command, timeout)
                .await
                .map_err(|e| e.message())?;
            if response.exit_code == 0 {
                return Ok(());
            }
            let output = String::from_utf8_lossy(&response.stdout).into_owned()
                + &String::from_utf8_lossy(&response.stderr);
            return Err(if output.trim().is_empty() {
                format!(
                    "command {:?} exited with {}",
                    exec.command.clone().unwrap_or_default(),
                    response.exit_code
                )
            } else {
                output.trim().to_owned()
            });
        }
        if let Some(action) = &probe.http_get {
            return http_get(action, container, pod_ip).await;
        }
        if let Some(action) = &probe.tcp_socket {
            let port = resolve_port(&action.port, container)?;
            let host = action
                .host
                .clone()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| pod_ip.to_owned());
            let address = format!("{host}:{port}");
            return tokio::net::TcpStream::connect(&address)
                .await
                .map(|_| ())
                .map_err(|e| format!("dial tcp {address}: {e}"));
        }
        if let Some(action) = &probe.grpc {
            return grpc_check(action, pod_ip).await;
        }
        Err("probe has no handler".to_owned())
    };
    match tokio::time::timeout(timing.timeout + Duration::from_millis(100), run).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "probe timed out after {}s",
            timing.timeout.as_secs()
        )),
    }
}

/// Runs a lifecycle hook (postStart or preStop) of container `id` within `timeout`: exec,
/// httpGet, tcpSocket or sleep.
///
/// # Errors
/// The failure message for the FailedPostStartHook / FailedPreStopHook event.
pub async fn run_hook(
    cri: &Cri,
    handler: &LifecycleHandler,
    container: &Container,
    id: &str,
    pod_ip: &str,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(sleep) = &handler.sleep {
        let seconds = Duration::from_secs(u64::try_from(sleep.seconds).unwrap_or(0));
        tokio::time::sleep(seconds.min(timeout)).await;
        return Ok(());
    }
    let probe = Probe {
        exec: handler.exec.clone(),
        http_get: handler.http_get.clone(),
        tcp_socket: handler.tcp_socket.clone(),
        timeout_seconds: Some(i32::try_from(timeout.as_secs().max(1)).unwrap_or(i32::MAX)),
        ..Probe::default()
    };
    check(cri, &probe, container, id, pod_ip).await
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn container(probes: serde_json::Value) -> Container {
        let mut value = json!({"name": "app", "image": "busybox", "ports": [{"name": "http", "containerPort": 8080}]});
        value
            .as_object_mut()
            .unwrap()
            .extend(probes.as_object().unwrap().clone());
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn defaults_and_named_ports() {
        let probe: Probe = serde_json::from_value(json!({"tcpSocket": {"port": "http"}})).unwrap();
        let timing = Timing::of(&probe);
        assert_eq!(timing.period, Duration::from_secs(10));
        assert_eq!(timing.timeout, Duration::from_secs(1));
        assert_eq!(timing.failure_threshold, 3);
        let c = container(json!({}));
        assert_eq!(
            resolve_port(&IntOrString::String("http".into()), &c),
            Ok(8080)
        );
        assert!(resolve_port(&IntOrString::String("nope".into()), &c).is_err());
    }

    #[test]
    fn liveness_restarts_after_the_failure_threshold() {
        let c = container(json!({"livenessProbe": {"exec": {"command": ["true"]},
            "initialDelaySeconds": 5, "periodSeconds": 2, "failureThreshold": 2}}));
        let mut tracker = Tracker::default();
        let start = Instant::now();
        assert!(
            tracker.due(&c, "id", start, start).is_empty(),
            "initial delay"
        );
        let t = start + Duration::from_secs(5);
        assert_eq!(tracker.due(&c, "id", start, t), vec![Kind::Liveness]);
        assert_eq!(
            tracker.record(&c, "id", Kind::Liveness, Err("no".into()), t),
            None
        );
        assert!(
            tracker
                .due(&c, "id", start, t + Duration::from_secs(1))
                .is_empty(),
            "period"
        );
        let t = t + Duration::from_secs(2);
        let outcome = tracker.record(&c, "id", Kind::Liveness, Err("no".into()), t);
        assert_eq!(
            outcome,
            Some(Outcome::Restart(
                "Container app failed liveness probe, will be restarted".into()
            ))
        );
        // no readiness probe: ready while running
        assert!(tracker.ready(&c, "id"));
    }

    #[test]
    fn readiness_and_startup_gate() {
        let c = container(json!({
            "readinessProbe": {"httpGet": {"port": 8080}, "successThreshold": 2, "periodSeconds": 1},
            "startupProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
            "livenessProbe": {"tcpSocket": {"port": 8080}},
        }));
        let mut tracker = Tracker::default();
        let start = Instant::now();
        // only the startup probe runs until it passes
        assert_eq!(tracker.due(&c, "id", start, start), vec![Kind::Startup]);
        assert!(!tracker.ready(&c, "id"));
        tracker.record(&c, "id", Kind::Startup, Ok(()), start);
        assert!(tracker.has_started(&c, "id"));
        assert_eq!(
            tracker.due(&c, "id", start, start),
            vec![Kind::Liveness, Kind::Readiness]
        );
        tracker.record(&c, "id", Kind::Readiness, Ok(()), start);
        assert!(!tracker.ready(&c, "id"), "needs two successes");
        tracker.record(
            &c,
            "id",
            Kind::Readiness,
            Ok(()),
            start + Duration::from_secs(1),
        );
        assert!(tracker.ready(&c, "id"));
        for i in 0..3 {
            let outcome = tracker.record(
                &c,
                "id",
                Kind::Readiness,
                Err("503".into()),
                start + Duration::from_secs(2 + i),
            );
            assert_eq!(outcome, None, "readiness never restarts");
        }
        assert!(!tracker.ready(&c, "id"));
        tracker.retain(&[]);
        assert!(!tracker.has_started(&c, "id"));
    }

    /// A gRPC probe asks the standard health service, per service name, as the kubelet does.
    #[tokio::test]
    async fn grpc_probe_asks_the_health_service() {
        use tonic_health::ServingStatus;
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("db", ServingStatus::NotServing)
            .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = i32::from(listener.local_addr().unwrap().port());
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let action = |service: Option<&str>| k8s_openapi::api::core::v1::GRPCAction {
            port,
            service: service.map(str::to_owned),
        };
        // the server as a whole serves
        assert_eq!(grpc_check(&action(None), "127.0.0.1").await, Ok(()));
        assert_eq!(
            grpc_check(&action(Some("db")), "127.0.0.1").await,
            Err("service unhealthy (responded with \"NOT_SERVING\")".into())
        );
        let unknown = grpc_check(&action(Some("cache")), "127.0.0.1").await;
        assert!(
            unknown
                .as_ref()
                .is_err_and(|e| e.starts_with("rpc error: code = NotFound")),
            "{unknown:?}"
        );
        reporter
            .set_service_status("db", ServingStatus::Serving)
            .await;
        assert_eq!(grpc_check(&action(Some("db")), "127.0.0.1").await, Ok(()));
        server.abort();
        let closed = grpc_check(&action(None), "127.0.0.1").await;
        assert!(
            closed
                .as_ref()
                .is_err_and(|e| e.starts_with("failed to connect service")),
            "{closed:?}"
        );
    }
}
