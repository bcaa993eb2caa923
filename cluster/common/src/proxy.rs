//! Forwarding one HTTP/1.1 request to a backend over an established stream, upgrades included:
//! when the backend switches protocols (SPDY/3.1 or WebSocket, as exec, attach and
//! port-forward do), the client's and the backend's connections are spliced together. The API
//! server forwards to kubelets this way, and kubelets to the container runtime's streaming
//! server, so every protocol version kubectl speaks passes through untouched.

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

/// Headers that describe one hop and are not forwarded (the upgrade pair stays when the client
/// asked for an upgrade).
const HOP_HEADERS: &[&str] = &[
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "authorization",
];

/// Sends `request` (origin-form URI: path and query) to the backend on `stream` and returns its
/// response. A `101 Switching Protocols` answer is passed back as it is, and once the client's
/// side upgrades too, bytes flow both ways until either side closes.
///
/// # Errors
/// When the backend connection or request fails.
pub async fn forward<S, B>(
    stream: S,
    mut request: http::Request<B>,
) -> Result<http::Response<Incoming>, hyper::Error>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let client_upgrade = hyper::upgrade::on(&mut request);
    let upgrading = request.headers().contains_key(http::header::UPGRADE);
    for name in HOP_HEADERS {
        request.headers_mut().remove(*name);
    }
    if !upgrading {
        request.headers_mut().remove(http::header::CONNECTION);
    }
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            debug!(%error, "backend connection ended");
        }
    });
    let mut response = sender.send_request(request).await?;
    if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        let backend_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            let (client, backend) = tokio::join!(client_upgrade, backend_upgrade);
            let (Ok(client), Ok(backend)) = (client, backend) else {
                debug!("an upgrade did not complete");
                return;
            };
            let mut client = TokioIo::new(client);
            let mut backend = TokioIo::new(backend);
            if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
                debug!(%error, "upgraded stream ended");
            }
        });
    }
    Ok(response)
}
