//! Serving an exporter: `GET /metrics` renders a scrape (on a blocking thread, since collectors
//! read files), gzip-compressed when the scraper accepts it, as Prometheus always does.

use std::io::Write as _;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Response, StatusCode, header};
use axum::routing::get;

use crate::exposition::TEXT_FORMAT;

/// Renders one scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves `render` at `/metrics` (and a short page at `/`) until `shutdown`.
///
/// # Errors
/// The listener fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: tokio_util::sync::CancellationToken,
    title: &'static str,
    render: Render,
) -> anyhow::Result<()> {
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move |headers: HeaderMap| {
                let render = render.clone();
                async move { metrics(&headers, render).await }
            }),
        )
        .route(
            "/",
            get(move || async move {
                Response::builder()
                    .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
                    .body(Body::from(format!(
                        "<html><head><title>{title}</title></head><body><h1>{title}</h1>\
                         <p><a href=\"/metrics\">Metrics</a></p></body></html>\n"
                    )))
                    .expect("static response")
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}

async fn metrics(headers: &HeaderMap, render: Render) -> Response<Body> {
    let gzip = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| coding.split(';').next().is_some_and(|c| c.trim() == "gzip"));
    let Ok(text) = tokio::task::spawn_blocking(move || render()).await else {
        return Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .body(Body::from("scrape failed\n"))
            .expect("static response");
    };
    let builder = Response::builder().header(header::CONTENT_TYPE, TEXT_FORMAT);
    if gzip {
        let mut encoder = flate2::write::GzEncoder::new(
            Vec::with_capacity(text.len() / 4),
            flate2::Compression::fast(),
        );
        if encoder.write_all(text.as_bytes()).is_ok()
            && let Ok(compressed) = encoder.finish()
        {
            return builder
                .header(header::CONTENT_ENCODING, "gzip")
                .body(Body::from(compressed))
                .expect("valid response");
        }
    }
    builder.body(Body::from(text)).expect("valid response")
}
