//! The reconciler's HTTP listener: webhook receivers for GitHub, GitLab and Gitea push events
//! (`POST /hooks/github|gitlab|gitea`), Prometheus metrics (`GET /metrics`) and `GET /healthz`.
//!
//! Deliveries must prove they come from the forge: GitHub and Gitea sign the body with HMAC-SHA256
//! (`X-Hub-Signature-256`, `X-Gitea-Signature`), GitLab sends a token (`X-Gitlab-Token`). The
//! secrets are the keys `github`, `gitlab` and `gitea` of the Secret `kelson-gitops-webhook` in
//! the reconciler's namespace (kube-system). Every delivery is counted by result in
//! `kelson_webhook_deliveries_total` and logged; rejected ones too.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::triggers::{self, Delivery, Rejection, Triggers};

/// Name of the Secret holding the webhook secrets.
pub const WEBHOOK_SECRET: &str = "kelson-gitops-webhook";
/// Largest delivery accepted (GitHub caps payloads at 25 MB).
pub const MAX_PAYLOAD: usize = 25 << 20;

#[derive(Clone)]
struct Shared {
    client: Client,
    namespace: String,
    triggers: Arc<Triggers>,
    metrics: Arc<Metrics>,
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

async fn secret_of(shared: &Shared, provider: &str) -> Option<Vec<u8>> {
    let api: Api<Secret> = Api::namespaced(shared.client.clone(), &shared.namespace);
    let secret = api.get_opt(WEBHOOK_SECRET).await.ok().flatten()?;
    if let Some(value) = secret.data.as_ref().and_then(|d| d.get(provider)) {
        return Some(value.0.clone());
    }
    secret
        .string_data
        .and_then(|d| d.get(provider).map(|v| v.as_bytes().to_vec()))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Checks a delivery and returns the push it announces (None: another event).
async fn authenticate(
    shared: &Shared,
    provider: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Option<triggers::Push>, Rejection> {
    let Some(secret) = secret_of(shared, provider).await else {
        return Err(Rejection::Unconfigured);
    };
    let authentic = match provider {
        "gitlab" => header(headers, "x-gitlab-token")
            .is_some_and(|token| triggers::same_token(token.as_bytes(), &secret)),
        _ => header(headers, "x-hub-signature-256")
            .or_else(|| header(headers, "x-gitea-signature"))
            .is_some_and(|signature| triggers::check_hmac(&secret, body, signature)),
    };
    if !authentic {
        return Err(Rejection::InvalidSignature);
    }
    let payload: Value = serde_json::from_slice(body)
        .map_err(|e| Rejection::BadRequest(format!("the payload is not JSON: {e}")))?;
    let event = header(headers, "x-github-event")
        .or_else(|| header(headers, "x-gitea-event"))
        .or_else(|| header(headers, "x-gitlab-event"))
        .unwrap_or("push");
    let is_push = matches!(event, "push" | "Push Hook" | "Tag Push Hook");
    if !is_push {
        return Ok(None);
    }
    triggers::parse_push(provider, &payload)
}

async fn hook(
    State(shared): State<Shared>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !matches!(provider.as_str(), "github" | "gitlab" | "gitea") {
        return answer(
            StatusCode::NOT_FOUND,
            json!({"error": format!("no receiver for {provider:?}: use github, gitlab or gitea")}),
        );
    }
    let id = header(&headers, "x-github-delivery")
        .or_else(|| header(&headers, "x-gitea-delivery"))
        .or_else(|| header(&headers, "x-gitlab-event-uuid"))
        .unwrap_or("-")
        .to_owned();
    let count = |result: &str| {
        shared
            .metrics
            .webhooks
            .with_label_values(&[provider.as_str(), result])
            .inc();
    };
    match authenticate(&shared, &provider, &headers, &body).await {
        Err(Rejection::Unconfigured) => {
            count("unconfigured");
            warn!(%provider, delivery = %id, "webhook rejected: no secret configured");
            answer(
                StatusCode::FORBIDDEN,
                json!({"error": format!("no {provider} secret in Secret {}/{WEBHOOK_SECRET}", shared.namespace)}),
            )
        }
        Err(Rejection::InvalidSignature) => {
            count("invalid_signature");
            warn!(%provider, delivery = %id, "webhook rejected: bad signature or token");
            answer(
                StatusCode::UNAUTHORIZED,
                json!({"error": "signature or token does not match"}),
            )
        }
        Err(Rejection::BadRequest(message)) => {
            count("bad_request");
            warn!(%provider, delivery = %id, %message, "webhook rejected");
            answer(StatusCode::BAD_REQUEST, json!({"error": message}))
        }
        Ok(None) => {
            count("ignored");
            answer(StatusCode::OK, json!({"ignored": "not a push event"}))
        }
        Ok(Some(push)) => {
            let delivery = Delivery {
                provider: provider.clone(),
                id: id.clone(),
                time: jiff::Timestamp::now().to_string(),
                reference: push.reference.clone(),
            };
            let woken = shared.triggers.push(&push, &delivery);
            count(if woken.is_empty() {
                "unmatched"
            } else {
                "accepted"
            });
            info!(%provider, delivery = %id, reference = %push.reference, applications = ?woken, "webhook delivery");
            let status = if woken.is_empty() {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            answer(status, json!({"applications": woken}))
        }
    }
}

/// Serves webhooks and metrics on `listen` until `shutdown`; the bound address is returned
/// once listening.
pub async fn serve(
    listen: SocketAddr,
    client: Client,
    namespace: String,
    triggers: Arc<Triggers>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let shared = Shared {
        client,
        namespace,
        triggers,
        metrics: metrics.clone(),
    };
    let app = Router::new()
        .route("/hooks/{provider}", post(hook))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        metrics.render(),
                    )
                }
            }),
        )
        .layer(DefaultBodyLimit::max(MAX_PAYLOAD))
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let address = listener.local_addr()?;
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
        {
            warn!(%error, "the GitOps listener failed");
        }
    });
    Ok((address, task))
}
