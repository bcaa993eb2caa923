//! Client-side request metrics, named as client-go's (`rest_client_requests_total{code,host,
//! method}`, `rest_client_request_duration_seconds{host,verb}`), for every component that talks
//! to an API server: the mixin's KubeClientErrors alert and the component dashboards read them.
//!
//! [`ClientMetrics::layer`] wraps a kube client's HTTP service; a request that fails before an
//! answer counts under code `<error>`, as client-go counts it. Each component keeps its own
//! [`ClientMetrics`] and appends [`ClientMetrics::render`] to its `/metrics`.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// client-go's latency buckets.
const BUCKETS: &[f64] = &[
    0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0,
];

/// The two families of one component's clients.
pub struct ClientMetrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl Default for ClientMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ClientMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientMetrics")
    }
}

impl ClientMetrics {
    /// The families, with nothing counted yet.
    ///
    /// # Panics
    /// Never in practice: names are static and unique.
    #[must_use]
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "rest_client_requests_total",
                "[ALPHA] Number of HTTP requests, partitioned by status code, method, and host.",
            ),
            &["code", "host", "method"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "rest_client_request_duration_seconds",
                "[ALPHA] Request latency in seconds. Broken down by verb, and host.",
            )
            .buckets(BUCKETS.to_vec()),
            &["host", "verb"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(requests.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(duration.clone()))
            .expect("unique metric");
        Self {
            registry,
            requests,
            duration,
        }
    }

    /// The exposition text of both families.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// A layer counting the requests of a client of the API server at `host` (`host:port`).
    #[must_use]
    pub fn layer(self: &Arc<Self>, host: &str) -> Layer {
        Layer {
            metrics: self.clone(),
            host: host.into(),
        }
    }

    fn record(&self, host: &str, method: &str, code: &str, started: Instant) {
        self.requests.with_label_values(&[code, host, method]).inc();
        self.duration
            .with_label_values(&[host, method])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// See [`ClientMetrics::layer`].
#[derive(Clone, Debug)]
pub struct Layer {
    metrics: Arc<ClientMetrics>,
    host: Arc<str>,
}

impl<S> tower::Layer<S> for Layer {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            layer: self.clone(),
        }
    }
}

/// A service whose requests are counted.
#[derive(Clone, Debug)]
pub struct Counted<S> {
    inner: S,
    layer: Layer,
}

impl<S, B, R> tower::Service<http::Request<B>> for Counted<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.method().as_str().to_owned();
        let started = Instant::now();
        let answer = self.inner.call(request);
        let layer = self.layer.clone();
        Box::pin(async move {
            let result = answer.await;
            let code = match &result {
                Ok(response) => response.status().as_str().to_owned(),
                Err(_) => "<error>".to_owned(),
            };
            layer.metrics.record(&layer.host, &method, &code, started);
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer as _, Service as _, ServiceExt as _};

    #[tokio::test]
    async fn answers_and_failures_are_counted_by_code_host_and_method() {
        let metrics = Arc::new(ClientMetrics::new());
        let mut service = metrics.layer("10.0.0.1:6443").layer(tower::service_fn(
            |request: http::Request<()>| async move {
                match request.uri().path() {
                    "/fail" => Err("connection refused"),
                    _ => Ok::<_, &str>(http::Response::builder().status(404).body(()).unwrap()),
                }
            },
        ));
        let get = |path: &str| http::Request::get(path).body(()).unwrap();
        service
            .ready()
            .await
            .unwrap()
            .call(get("/api"))
            .await
            .unwrap();
        assert!(
            service
                .ready()
                .await
                .unwrap()
                .call(get("/fail"))
                .await
                .is_err()
        );
        let text = metrics.render();
        assert!(
            text.contains(
                "rest_client_requests_total{code=\"404\",host=\"10.0.0.1:6443\",method=\"GET\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains(
            "rest_client_requests_total{code=\"<error>\",host=\"10.0.0.1:6443\",method=\"GET\"} 1"
        ));
        assert!(text.contains(
            "rest_client_request_duration_seconds_count{host=\"10.0.0.1:6443\",verb=\"GET\"} 2"
        ));
    }
}
