//! What the HTTP outputs (`loki`, `elasticsearch`) share: a client for `http://` and `https://`
//! (the system's roots, or a `ca_file`), their authentication, and sending a batch again with
//! backoff until the receiver takes it, so the bounded channel in front holds the sources back
//! rather than losing records.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject as _;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::metrics::ComponentMetrics;
use crate::record::Batch;

/// Credentials for an HTTP output: a bearer token, or a user name and password (Basic).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpAuth {
    /// `Authorization: Bearer ...` (Elasticsearch API keys go in `headers`).
    #[serde(default)]
    pub bearer_token: Option<String>,
    /// Basic authentication user.
    #[serde(default)]
    pub username: Option<String>,
    /// Basic authentication password.
    #[serde(default)]
    pub password: Option<String>,
}

/// A receiver's answer.
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// Body (up to 1 MiB is read).
    pub body: Bytes,
}

/// One HTTP receiver.
pub struct Endpoint {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    headers: HeaderMap,
    timeout: Duration,
}

impl Endpoint {
    /// A client with `auth` and extra `headers`, trusting the system's roots plus `ca_file`.
    ///
    /// # Errors
    /// When the CA file cannot be read or a header is not valid.
    pub fn new(
        auth: &HttpAuth,
        headers: &std::collections::BTreeMap<String, String>,
        ca_file: Option<&std::path::Path>,
        timeout_ms: u64,
    ) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        for certificate in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(certificate);
        }
        if let Some(path) = ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
            for certificate in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
                let certificate =
                    certificate.map_err(|e| format!("ca_file {}: {e:?}", path.display()))?;
                roots
                    .add(certificate)
                    .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let mut map = HeaderMap::new();
        let mut insert = |name: &str, value: &str| -> Result<(), String> {
            map.insert(
                HeaderName::try_from(name).map_err(|e| format!("header {name:?}: {e}"))?,
                HeaderValue::try_from(value).map_err(|e| format!("header {name:?}: {e}"))?,
            );
            Ok(())
        };
        if let Some(token) = &auth.bearer_token {
            insert("authorization", &format!("Bearer {token}"))?;
        } else if let Some(user) = &auth.username {
            let pair = format!("{user}:{}", auth.password.as_deref().unwrap_or(""));
            let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, pair);
            insert("authorization", &format!("Basic {encoded}"))?;
        }
        for (name, value) in headers {
            insert(name, value)?;
        }
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            headers: map,
            timeout: Duration::from_millis(timeout_ms.max(1)),
        })
    }

    /// POSTs `body`.
    ///
    /// # Errors
    /// When the receiver cannot be reached or does not answer in time.
    pub async fn post(
        &self,
        url: &str,
        content_type: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Answer, String> {
        let mut request = http::Request::post(url)
            .header(http::header::CONTENT_TYPE, content_type)
            .body(Full::new(body))
            .map_err(|e| format!("bad request to {url}: {e}"))?;
        request.headers_mut().extend(self.headers.clone());
        for (name, value) in headers {
            if let (Ok(name), Ok(value)) =
                (HeaderName::try_from(*name), HeaderValue::try_from(*value))
            {
                request.headers_mut().insert(name, value);
            }
        }
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("cannot reach {url}: {e}"))?;
            let status = response.status();
            let body = http_body_util::Limited::new(response.into_body(), 1 << 20)
                .collect()
                .await
                .map(http_body_util::Collected::to_bytes)
                .unwrap_or_default();
            Ok(Answer { status, body })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("no answer from {url} in {:?}", self.timeout))?
    }
}

/// What to do after an attempt.
pub enum Attempt {
    /// Delivered (or, for records the receiver refuses for good, counted and dropped).
    Done,
    /// Try again after a pause (unreachable, overloaded, a server error).
    Again(String),
}

/// Whether a status means "try again later" rather than "this will never be accepted".
#[must_use]
pub fn retryable(status: StatusCode) -> bool {
    status.is_server_error() || matches!(status.as_u16(), 401 | 403 | 404 | 408 | 425 | 429)
}

/// Runs `attempt` until it is done, pausing 100 ms doubling to 6.4 s between tries; gives up
/// only at shutdown (returning false).
pub async fn until_done<F, Fut>(
    what: &str,
    metrics: &ComponentMetrics,
    shutdown: &CancellationToken,
    mut attempt: F,
) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Attempt>,
{
    let mut failures = 0u32;
    loop {
        let outcome = tokio::select! {
            outcome = attempt() => outcome,
            () = shutdown.cancelled(), if failures > 0 => return false,
        };
        match outcome {
            Attempt::Done => return true,
            Attempt::Again(error) => {
                failures += 1;
                metrics.error("send_failed");
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(output = what, %error, "sending again");
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(Duration::from_millis(100 << failures.min(6))) => {}
        }
    }
}

/// Accounts for a batch an HTTP output is done with: `delivered` records sent, `rejected`
/// refused for good by the receiver (dropped, counted), `given_up` not sent at shutdown (the
/// batch is not acknowledged, so its records are read or sent again later).
pub fn settle(
    batch: &Batch,
    metrics: &ComponentMetrics,
    delivered: u64,
    rejected: u64,
    given_up: u64,
) {
    if given_up > 0 {
        if let Some(ack) = &batch.ack {
            ack.fail();
        }
        metrics.discarded("shutdown", given_up);
    }
    if rejected > 0 {
        metrics.error("rejected");
        metrics.discarded("rejected", rejected);
    }
    metrics.sent(delivered);
}

/// The endpoint of an HTTP output; when its settings are unusable (an unreadable `ca_file`, a
/// bad header), `None` after failing every batch that arrives until the input ends, so the
/// sources keep their positions and the pipeline does not stall.
pub async fn open_or_refuse(
    what: &str,
    auth: &HttpAuth,
    headers: &std::collections::BTreeMap<String, String>,
    ca_file: Option<&std::path::Path>,
    timeout_ms: u64,
    input: &mut tokio::sync::mpsc::Receiver<Batch>,
    metrics: &ComponentMetrics,
) -> Option<Endpoint> {
    match Endpoint::new(auth, headers, ca_file, timeout_ms) {
        Ok(endpoint) => Some(endpoint),
        Err(error) => {
            tracing::error!(output = what, %error, "the output cannot start");
            metrics.error("config");
            while let Some(batch) = input.recv().await {
                if let Some(ack) = &batch.ack {
                    ack.fail();
                }
                metrics.discarded("config", batch.records.len() as u64);
            }
            None
        }
    }
}
