//! The query API (JSON over HTTP):
//! - `GET /api/v1/search` — lines newest first: `query` (tantivy syntax over the message;
//!   `level:error`-style field terms too), `namespace`, `pod`, `container`, `node`, `stream`,
//!   `level`, `selector` (labels, `app=web,tier=front`), `fields` (the source's other
//!   attributes, `host=web-1,ident=nginx`), `since` (`15m`, `1h`), `start`/`end`
//!   (RFC 3339 or ns since the epoch), `limit` (default 100), `offset`, `namespaces` (any of
//!   these, comma-separated);
//! - `GET /api/v1/histogram` — the same filters plus `interval` (`1m`): counts per interval;
//! - `GET /api/v1/tail` — the same filters: new lines as they are indexed, one JSON hit per
//!   line, streamed until the client goes away (see [`crate::live`]);
//! - `GET /metrics` — the pipeline's own metrics; `GET /healthz`;
//! - Loki's query API (`/loki/api/v1/...`, see [`crate::loki_api`]) for Grafana.
//!
//! Bad parameters answer 400 with `{"error": "..."}`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::index::LogIndex;
use crate::index::query::{Clause, QueryError, SearchRequest};
use crate::metrics::Metrics;

/// Most lines one page may ask for.
pub const MAX_LIMIT: usize = 10_000;

#[derive(Clone)]
struct ApiState {
    index: Option<Arc<LogIndex>>,
    metrics: Metrics,
}

/// An error at the HTTP edge.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

impl From<QueryError> for ApiError {
    fn from(error: QueryError) -> Self {
        let status = match error {
            QueryError::Search(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        Self(status, error.to_string())
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

/// The API's routes.
pub fn router(index: Option<Arc<LogIndex>>, metrics: Metrics) -> axum::Router {
    let loki = index.clone().map(crate::loki_api::router);
    let router = axum::Router::new()
        .route("/api/v1/search", get(search))
        .route("/api/v1/histogram", get(histogram))
        .route("/api/v1/tail", get(tail))
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(ApiState { index, metrics });
    match loki {
        Some(loki) => router.merge(loki),
        None => router,
    }
}

/// Parses a duration such as `90s`, `15m`, `1h30m`, `2d`, in nanoseconds.
///
/// # Errors
/// When it is not one.
pub fn parse_duration(text: &str) -> Result<i64, String> {
    kelson_common::duration::parse(text, true)
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
        .ok_or_else(|| {
            format!("invalid duration {text:?} (like 90s, 15m, 1h30m, 2d; units ms, s, m, h, d, w)")
        })
}

/// Parses a time: RFC 3339, or nanoseconds since the epoch.
///
/// # Errors
/// When it is neither.
pub fn parse_time(text: &str) -> Result<i64, String> {
    if let Ok(ns) = text.parse::<i64>() {
        return Ok(ns);
    }
    crate::format::parse_time(text.as_bytes()).ok_or_else(|| format!("invalid time {text:?}"))
}

/// Builds a search request from query parameters.
///
/// # Errors
/// On a parameter that does not parse.
pub fn request_from_params(params: &[(String, String)]) -> Result<SearchRequest, String> {
    let mut request = SearchRequest {
        limit: 100,
        ..SearchRequest::default()
    };
    let mut since = None;
    for (name, value) in params {
        match name.as_str() {
            "query" | "q" => request.query.clone_from(value),
            "namespace" | "pod" | "container" | "node" | "stream" | "level" => {
                if !value.is_empty() {
                    request.filters.push((name.clone(), value.clone()));
                }
            }
            // any of these namespaces (what the API server narrows a query to for users who
            // may read the logs of some namespaces only)
            "namespaces" => request.clauses.push(Clause::OneOf {
                field: "namespace".into(),
                values: value
                    .split(',')
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(str::to_owned)
                    .collect(),
            }),
            "selector" | "fields" => {
                for term in value.split(',').filter(|t| !t.trim().is_empty()) {
                    let (key, value) = term
                        .split_once("==")
                        .or_else(|| term.split_once('='))
                        .ok_or_else(|| format!("invalid {name} term {term:?} (want key=value)"))?;
                    let pair = (key.trim().to_owned(), value.trim().to_owned());
                    if name == "selector" {
                        request.labels.push(pair);
                    } else {
                        request.fields.push(pair);
                    }
                }
            }
            "since" => since = Some(parse_duration(value)?),
            "start" => request.start = Some(parse_time(value)?),
            "end" => request.end = Some(parse_time(value)?),
            "limit" => {
                request.limit = value
                    .parse()
                    .map_err(|_| format!("invalid limit {value:?}"))?;
                if request.limit > MAX_LIMIT {
                    return Err(format!("limit {} is above {MAX_LIMIT}", request.limit));
                }
            }
            "offset" => {
                request.offset = value
                    .parse()
                    .map_err(|_| format!("invalid offset {value:?}"))?;
            }
            "interval" => {}
            other => return Err(format!("unknown parameter {other:?}")),
        }
    }
    if let Some(since) = since {
        let end = request.end.unwrap_or_else(crate::record::now_ns);
        request.start = Some(end.saturating_sub(since));
    }
    Ok(request)
}

fn index(state: &ApiState) -> Result<Arc<LogIndex>, ApiError> {
    state.index.clone().ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            "this pipeline has no index sink".into(),
        )
    })
}

async fn search(
    State(state): State<ApiState>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let request = request_from_params(&params).map_err(bad)?;
    let index = index(&state)?;
    let started = std::time::Instant::now();
    let result = tokio::task::spawn_blocking(move || index.search(&request))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Json(json!({
        "total": result.total,
        "end": result.end,
        "took_ms": started.elapsed().as_secs_f64() * 1000.0,
        "hits": result.hits,
    })))
}

async fn histogram(
    State(state): State<ApiState>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let request = request_from_params(&params).map_err(bad)?;
    let interval = params
        .iter()
        .find(|(name, _)| name == "interval")
        .map_or(Ok(60_000_000_000), |(_, value)| parse_duration(value))
        .map_err(bad)?;
    if interval <= 0 {
        return Err(bad("interval must be positive"));
    }
    let index = index(&state)?;
    let started = std::time::Instant::now();
    let buckets = tokio::task::spawn_blocking(move || index.histogram(&request, interval))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let buckets: Vec<_> = buckets
        .into_iter()
        .map(|(start, count)| json!({"start": start, "count": count}))
        .collect();
    Ok(Json(json!({
        "interval": interval,
        "took_ms": started.elapsed().as_secs_f64() * 1000.0,
        "buckets": buckets,
    })))
}

async fn tail(
    State(state): State<ApiState>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let request = request_from_params(&params).map_err(bad)?;
    let filter = crate::live::LiveFilter::new(request).map_err(bad)?;
    let index = index(&state)?;
    Ok(crate::live::ndjson(index.subscribe(), filter))
}

async fn render_metrics(State(state): State<ApiState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_times() {
        assert_eq!(parse_duration("90s").unwrap(), 90_000_000_000);
        assert_eq!(parse_duration("1h").unwrap(), 3_600_000_000_000);
        assert!(parse_duration("1").is_err());
        assert!(parse_duration("1y").is_err());
        assert_eq!(parse_time("5").unwrap(), 5);
        assert_eq!(parse_time("1970-01-01T00:00:01Z").unwrap(), 1_000_000_000);
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn requests_from_params() {
        let params = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect()
        };
        let request = request_from_params(&params(&[
            ("query", "timeout"),
            ("namespace", "shop"),
            ("selector", "app=web, tier==front"),
            ("since", "1h"),
            ("end", "7200000000000"),
            ("limit", "5"),
        ]))
        .unwrap();
        assert_eq!(request.query, "timeout");
        assert_eq!(request.filters, vec![("namespace".into(), "shop".into())]);
        assert_eq!(
            request.labels,
            vec![
                ("app".into(), "web".into()),
                ("tier".into(), "front".into())
            ]
        );
        assert_eq!(request.start, Some(3_600_000_000_000));
        assert_eq!(request.limit, 5);
        assert!(request_from_params(&params(&[("colour", "red")])).is_err());
        assert!(request_from_params(&params(&[("limit", "100000")])).is_err());
        assert!(request_from_params(&params(&[("selector", "app")])).is_err());
    }
}
