//! Blackbox probing in blackbox_exporter's form: `GET /probe?target=T&module=M` checks whether
//! a service answers and returns the result as metrics (`probe_success`,
//! `probe_duration_seconds`, and per-module details), so Prometheus can scrape a probe per
//! target with the usual `__param_target` relabelling. Served beside the node exporter, so
//! probes run from the node's network and reach pods on it.
//!
//! Modules, named as in blackbox_exporter's example configuration: `http_2xx` (GET, any 2xx
//! answers; redirects are not followed) and `tcp_connect`. The timeout is Prometheus' scrape
//! timeout (`X-Prometheus-Scrape-Timeout-Seconds`) less half a second, or 5 s.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt as _;

use crate::exposition::{Families, TEXT_FORMAT};

/// The probe modules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Module {
    /// An HTTP GET answered with a 2xx status.
    Http2xx,
    /// A TCP connection accepted.
    TcpConnect,
}

impl Module {
    /// The module named `name`.
    #[must_use]
    pub fn named(name: &str) -> Option<Self> {
        match name {
            "http_2xx" => Some(Self::Http2xx),
            "tcp_connect" => Some(Self::TcpConnect),
            _ => None,
        }
    }
}

/// Where an HTTP target points: host, port, path.
fn http_target(target: &str) -> Result<(String, u16, String), String> {
    let rest = if let Some(rest) = target.strip_prefix("http://") {
        rest
    } else if target.starts_with("https://") {
        return Err("https targets are not supported; probe over http".into());
    } else {
        target
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = split_host_port(authority, 80)?;
    Ok((host, port, path.to_owned()))
}

fn split_host_port(authority: &str, default: u16) -> Result<(String, u16), String> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("invalid target {authority:?}"))?;
        let port = match after.strip_prefix(':') {
            Some(port) => port
                .parse()
                .map_err(|_| format!("invalid port in {authority:?}"))?,
            None => default,
        };
        return Ok((host.to_owned(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Ok((
            host.to_owned(),
            port.parse()
                .map_err(|_| format!("invalid port in {authority:?}"))?,
        )),
        None if !authority.is_empty() => Ok((authority.to_owned(), default)),
        None => Err("empty target".into()),
    }
}

/// Resolves `host`, timing it.
async fn resolve(host: &str, port: u16, out: &mut Families) -> Result<SocketAddr, String> {
    let started = Instant::now();
    let address = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("resolving {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))?;
    out.gauge(
        "probe_dns_lookup_time_seconds",
        "Returns the time taken for probe dns lookup in seconds",
        &[],
        started.elapsed().as_secs_f64(),
    );
    out.gauge(
        "probe_ip_protocol",
        "Specifies whether probe ip protocol is IP4 or IP6",
        &[],
        if address.is_ipv4() { 4.0 } else { 6.0 },
    );
    Ok(address)
}

async fn probe_tcp(target: &str, out: &mut Families) -> Result<(), String> {
    let (host, port) = split_host_port(target, 0)?;
    if port == 0 {
        return Err(format!("target {target:?} has no port"));
    }
    let address = resolve(&host, port, out).await?;
    tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| format!("connecting to {address}: {e}"))?;
    Ok(())
}

async fn probe_http(target: &str, out: &mut Families) -> Result<(), String> {
    let (host, port, path) = http_target(target)?;
    let resolving = Instant::now();
    let address = resolve(&host, port, out).await?;
    let resolved = resolving.elapsed();
    let connecting = Instant::now();
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| format!("connecting to {address}: {e}"))?;
    let connected = connecting.elapsed();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake with {address}: {e}"))?;
    tokio::spawn(connection);
    let authority = if port == 80 {
        host.clone()
    } else {
        format!("{host}:{port}")
    };
    let request = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::USER_AGENT, "Kelson probe")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let processing = Instant::now();
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("requesting {target}: {e}"))?;
    let waited = processing.elapsed();
    let status = response.status();
    let version = match response.version() {
        http::Version::HTTP_10 => 1.0,
        http::Version::HTTP_2 => 2.0,
        _ => 1.1,
    };
    let transferring = Instant::now();
    // count the answer's bytes without keeping them: a huge or endless answer costs nothing
    let mut body = response.into_body();
    let mut length = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the answer of {target}: {e}"))?;
        if let Some(data) = frame.data_ref() {
            length += data.len();
        }
    }
    let transferred = transferring.elapsed();
    for (phase, duration) in [
        ("connect", connected),
        ("processing", waited),
        ("resolve", resolved),
        ("tls", Duration::ZERO),
        ("transfer", transferred),
    ] {
        out.gauge(
            "probe_http_duration_seconds",
            "Duration of http request by phase, summed over all redirects",
            &[("phase", phase)],
            duration.as_secs_f64(),
        );
    }
    out.gauge(
        "probe_http_status_code",
        "Response HTTP status code",
        &[],
        f64::from(status.as_u16()),
    );
    out.gauge(
        "probe_http_content_length",
        "Length of http content response",
        &[],
        length as f64,
    );
    out.gauge(
        "probe_http_version",
        "Returns the version of HTTP of the probe response",
        &[],
        version,
    );
    out.gauge(
        "probe_http_ssl",
        "Indicates if SSL was used for the final redirect",
        &[],
        0.0,
    );
    out.gauge("probe_http_redirects", "The number of redirects", &[], 0.0);
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("{target} answered {status}"))
    }
}

/// Runs one probe and renders its metrics.
pub async fn probe(module: Module, target: &str, timeout: Duration) -> String {
    let mut out = Families::new();
    let started = Instant::now();
    let work = async {
        match module {
            Module::Http2xx => probe_http(target, &mut out).await,
            Module::TcpConnect => probe_tcp(target, &mut out).await,
        }
    };
    let result = match tokio::time::timeout(timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(format!("timed out after {timeout:?}")),
    };
    if let Err(error) = &result {
        tracing::debug!(%target, %error, "probe failed");
    }
    out.gauge(
        "probe_duration_seconds",
        "Returns how long the probe took to complete in seconds",
        &[],
        started.elapsed().as_secs_f64(),
    );
    out.gauge(
        "probe_success",
        "Displays whether or not the probe was a success",
        &[],
        if result.is_ok() { 1.0 } else { 0.0 },
    );
    out.render()
}

/// The query of `/probe`.
#[derive(Debug, serde::Deserialize)]
pub struct ProbeQuery {
    target: Option<String>,
    module: Option<String>,
}

/// `GET /probe?target=T&module=M`.
pub async fn handle(Query(query): Query<ProbeQuery>, headers: HeaderMap) -> Response {
    let Some(target) = query.target.filter(|t| !t.is_empty()) else {
        return (StatusCode::BAD_REQUEST, "Target parameter is missing\n").into_response();
    };
    let name = query.module.unwrap_or_else(|| "http_2xx".to_owned());
    let Some(module) = Module::named(&name) else {
        return (
            StatusCode::BAD_REQUEST,
            format!("Unknown module {name:?} (modules: http_2xx, tcp_connect)\n"),
        )
            .into_response();
    };
    let timeout = headers
        .get("x-prometheus-scrape-timeout-seconds")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite())
        .map_or(Duration::from_secs(5), |s| {
            // at most a minute, whatever the header says
            Duration::from_secs_f64((s - 0.5).clamp(0.1, 60.0))
        });
    let text = probe(module, &target, timeout).await;
    ([(http::header::CONTENT_TYPE, TEXT_FORMAT)], text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exposition::parse;

    fn value(text: &str, name: &str) -> f64 {
        parse(text)
            .unwrap()
            .into_iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .samples[0]
            .value
    }

    #[test]
    fn targets_parse_as_blackbox_exporter_reads_them() {
        assert_eq!(
            http_target("http://10.0.0.1:8080/healthz").unwrap(),
            ("10.0.0.1".into(), 8080, "/healthz".into())
        );
        assert_eq!(
            http_target("web.shop.svc").unwrap(),
            ("web.shop.svc".into(), 80, "/".into())
        );
        assert_eq!(
            split_host_port("[::1]:9100", 0).unwrap(),
            ("::1".into(), 9100)
        );
        assert!(http_target("https://example").is_err());
        assert!(split_host_port("host:port", 0).is_err());
    }

    #[tokio::test]
    async fn http_and_tcp_probes_report_success_and_failure() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/ok", axum::routing::get(|| async { "fine" }))
            .route(
                "/broken",
                axum::routing::get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "down") }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let timeout = Duration::from_secs(2);

        let ok = probe(Module::Http2xx, &format!("http://{address}/ok"), timeout).await;
        assert_eq!(value(&ok, "probe_success"), 1.0);
        assert_eq!(value(&ok, "probe_http_status_code"), 200.0);
        assert_eq!(value(&ok, "probe_http_content_length"), 4.0);
        let broken = probe(
            Module::Http2xx,
            &format!("http://{address}/broken"),
            timeout,
        )
        .await;
        assert_eq!(value(&broken, "probe_success"), 0.0);
        assert_eq!(value(&broken, "probe_http_status_code"), 503.0);

        let tcp = probe(Module::TcpConnect, &address.to_string(), timeout).await;
        assert_eq!(value(&tcp, "probe_success"), 1.0);
        // a port nobody listens on
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let refused = probe(Module::TcpConnect, &closed.to_string(), timeout).await;
        assert_eq!(value(&refused, "probe_success"), 0.0);
        assert!(value(&refused, "probe_duration_seconds") >= 0.0);
    }
}
