//! Serving an exporter: `GET /metrics` renders a scrape (on a blocking thread, since collectors
//! read files), gzip-compressed when enabled and the scraper accepts it (Prometheus always does).

use std::io::Write as _;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Response, StatusCode, header};
use axum::routing::get;
use futures::StreamExt as _;

use crate::exposition::TEXT_FORMAT;

/// How a scrape is rendered.
#[derive(Clone)]
pub enum Render {
    /// The whole exposition at once.
    Text(Arc<dyn Fn() -> String + Send + Sync>),
    /// A stream of chunks (gzip is not applied to these).
    Chunks(Arc<dyn Fn() -> tokio::sync::mpsc::Receiver<bytes::Bytes> + Send + Sync>),
}

/// Binds an exporter's listener, writing the bound address to `address_file` when given (so a
/// caller that asked for port 0 can be found).
///
/// # Errors
/// The address cannot be bound or the file written.
pub async fn bind(
    listen: std::net::SocketAddr,
    address_file: Option<&std::path::Path>,
    what: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context as _;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("{what} cannot listen on {listen}"))?;
    let address = listener.local_addr()?;
    if let Some(file) = address_file {
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(file, address.to_string())
            .with_context(|| format!("failed to write {}", file.display()))?;
    }
    tracing::info!(%address, "{what} serves /metrics");
    Ok(listener)
}

/// Serves `render` at `/metrics` (and a short page at `/`) until `shutdown`, gzip-compressed
/// for scrapers that accept it when `gzip` is set.
///
/// # Errors
/// The listener fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: tokio_util::sync::CancellationToken,
    title: &'static str,
    render: Render,
    gzip: bool,
) -> anyhow::Result<()> {
    serve_with(listener, shutdown, title, render, gzip, axum::Router::new()).await
}

/// [`serve`] with more routes (the node exporter adds `/probe`).
///
/// # Errors
/// The listener fails.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    shutdown: tokio_util::sync::CancellationToken,
    title: &'static str,
    render: Render,
    gzip: bool,
    routes: axum::Router,
) -> anyhow::Result<()> {
    let app = routes
        .route(
            "/metrics",
            get(move |headers: HeaderMap| {
                let render = render.clone();
                async move { metrics(&headers, render, gzip).await }
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

async fn metrics(headers: &HeaderMap, render: Render, allowed: bool) -> Response<Body> {
    let render = match render {
        Render::Text(render) => render,
        Render::Chunks(chunks) => {
            let stream = tokio_stream::wrappers::ReceiverStream::new(chunks())
                .map(Ok::<_, std::convert::Infallible>);
            return Response::builder()
                .header(header::CONTENT_TYPE, TEXT_FORMAT)
                .body(Body::from_stream(stream))
                .expect("valid response");
        }
    };
    let gzip = allowed
        && headers
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
