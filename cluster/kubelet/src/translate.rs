//! WebSocket `v5.channel.k8s.io` for `exec` and `attach`, translated to SPDY/3.1 towards the
//! runtime's streaming server.
//!
//! kubectl 1.30 and later first ask for a WebSocket speaking the v5 remote command protocol,
//! whose one addition over v4 is the close signal (`[255, channel]`), the only way a
//! WebSocket client can say "stdin ended" (`kubectl exec -i ... < file`, `kubectl cp`).
//! Container runtimes' streaming servers speak v1–v4 only, so the kubelet terminates the
//! WebSocket itself and opens the same streams over SPDY/3.1 with protocol v4, where a
//! half-closed stream carries the end of stdin. Older clients and other protocols are
//! passed through to the runtime untouched.
//!
//! Channels on the WebSocket are the protocol's: 0 stdin, 1 stdout, 2 stderr, 3 error (a JSON
//! `Status` with the exit code), 4 resize, each message a channel byte followed by data. The
//! SPDY side is the minimum a kubelet client needs: streams opened with a `streamtype`
//! header, data frames with FIN for half-close, pings answered; Kubernetes' SPDY peers do no
//! flow control, so none is done here.

use std::collections::HashSet;
use std::io;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tracing::debug;

/// The WebSocket subprotocol translated here.
pub const V5: &str = "v5.channel.k8s.io";
/// The SPDY protocol version asked of the runtime (the newest runtimes speak).
const V4: &str = "v4.channel.k8s.io";
/// The header both sides of an SPDY upgrade name the protocol version in.
const STREAM_PROTOCOL: &str = "X-Stream-Protocol-Version";

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
/// v5's close signal: `[CLOSE, channel]` half-closes the client's side of `channel`.
const CLOSE: u8 = 255;

/// The largest data frame sent to the runtime.
const CHUNK: usize = 32 * 1024;

/// The streams a request asked for (its `stdin`, `stdout`, `stderr` and `tty` parameters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Streams {
    /// stdin flows to the container.
    pub stdin: bool,
    /// stdout flows back.
    pub stdout: bool,
    /// stderr flows back (never with a terminal, which merges it into stdout).
    pub stderr: bool,
    /// A terminal, resized through the resize stream.
    pub tty: bool,
}

impl Streams {
    /// The SPDY streams to open: WebSocket channel, SPDY stream id, `streamtype`. The error
    /// stream comes first, as Kubernetes' clients open it.
    fn plan(self) -> Vec<(u8, u32, &'static str)> {
        let mut wanted = vec![(ERROR, "error")];
        if self.stdin {
            wanted.push((STDIN, "stdin"));
        }
        if self.stdout {
            wanted.push((STDOUT, "stdout"));
        }
        if self.stderr && !self.tty {
            wanted.push((STDERR, "stderr"));
        }
        if self.tty {
            wanted.push((RESIZE, "resize"));
        }
        // client-initiated SPDY streams have odd ids
        (1u32..)
            .step_by(2)
            .zip(wanted)
            .map(|(id, (channel, kind))| (channel, id, kind))
            .collect()
    }
}

/// Whether a request with these headers asks for a WebSocket speaking v5.
#[must_use]
pub fn wants_v5(headers: &http::HeaderMap) -> bool {
    let websocket = headers
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    websocket
        && headers
            .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == V5)
}

/// Answers the client's WebSocket upgrade `request` and connects it to the runtime's
/// streaming server at `authority`/`path` over SPDY. A runtime that refuses is reported with
/// its own status before the client's upgrade completes.
pub async fn serve<B>(
    authority: &str,
    path: &str,
    mut request: http::Request<B>,
    streams: Streams,
) -> http::Response<String> {
    let Some(key) = request
        .headers()
        .get(http::header::SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes().to_vec())
    else {
        return plain(http::StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    let client = hyper::upgrade::on(&mut request);
    let spdy = match dial(authority, path).await {
        Ok(spdy) => spdy,
        Err((status, message)) => return plain(status, message),
    };
    tokio::spawn(async move {
        let upgraded = match client.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                debug!(%error, "the client's WebSocket upgrade did not complete");
                return;
            }
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        if let Err(error) = translate(ws, TokioIo::new(spdy), streams).await {
            debug!(%error, "remote command stream ended");
        }
    });
    let mut response = http::Response::new(String::new());
    *response.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static("websocket"),
    );
    headers.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("Upgrade"),
    );
    headers.insert(
        http::header::SEC_WEBSOCKET_PROTOCOL,
        http::HeaderValue::from_static(V5),
    );
    if let Ok(accept) = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key).parse() {
        headers.insert(http::header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

fn plain(status: http::StatusCode, message: impl Into<String>) -> http::Response<String> {
    let mut response = http::Response::new(message.into());
    *response.status_mut() = status;
    response
}

/// Opens an SPDY/3.1 connection speaking v4 to the streaming server.
async fn dial(
    authority: &str,
    path: &str,
) -> Result<hyper::upgrade::Upgraded, (http::StatusCode, String)> {
    let gateway = |message: String| (http::StatusCode::BAD_GATEWAY, message);
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| {
            gateway(format!(
                "failed to reach the streaming server at {authority}: {e}"
            ))
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| gateway(format!("streaming server failed: {e}")))?;
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            debug!(%error, "streaming server connection ended");
        }
    });
    let request = http::Request::post(path)
        .header(http::header::HOST, authority)
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, "SPDY/3.1")
        .header(STREAM_PROTOCOL, V4)
        .body(Empty::<Bytes>::new())
        .map_err(|e| gateway(format!("bad streaming path {path}: {e}")))?;
    let mut response = sender
        .send_request(request)
        .await
        .map_err(|e| gateway(format!("streaming server failed: {e}")))?;
    if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        let status = response.status();
        let body = Limited::new(response.into_body(), 64 * 1024)
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_owned())
            .unwrap_or_default();
        return Err((status, body));
    }
    let protocol = response
        .headers()
        .get(STREAM_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if protocol != V4 {
        return Err(gateway(format!(
            "the streaming server chose protocol {protocol:?}, not {V4}"
        )));
    }
    hyper::upgrade::on(&mut response)
        .await
        .map_err(|e| gateway(format!("streaming server upgrade failed: {e}")))
}

/// Relays one remote command between the WebSocket `ws` and the SPDY connection `spdy` until
/// the runtime has sent everything (the error stream's status included) or either side
/// leaves, then closes the WebSocket normally, which the client reads as the end of every
/// stream.
///
/// # Errors
/// When either connection fails.
pub async fn translate<W, S>(
    mut ws: WebSocketStream<W>,
    spdy: S,
    streams: Streams,
) -> io::Result<()>
where
    W: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut spdy_in, mut spdy_out) = tokio::io::split(spdy);
    let plan = streams.plan();
    let mut headers = spdy::HeaderCompressor::new();
    for (_, id, kind) in &plan {
        let block = headers.block(&[("streamtype", kind)])?;
        spdy_out.write_all(&spdy::syn_stream(*id, &block)).await?;
    }
    // the error stream only flows back: close our half at once, as Kubernetes' clients do
    spdy_out.write_all(&spdy::data(1, true, &[])).await?;
    spdy_out.flush().await?;
    let stream_of = |channel: u8| plan.iter().find(|p| p.0 == channel).map(|p| p.1);
    let channel_of = |stream: u32| plan.iter().find(|p| p.1 == stream).map(|p| p.0);
    // what must end before the exchange is over: everything that flows back
    let mut pending: HashSet<u32> = plan
        .iter()
        .filter(|p| matches!(p.0, STDOUT | STDERR | ERROR))
        .map(|p| p.1)
        .collect();
    let mut stdin_open = streams.stdin;

    let (frames_tx, mut frames) = tokio::sync::mpsc::channel(16);
    let reader = tokio::spawn(async move {
        loop {
            match spdy::read_frame(&mut spdy_in).await {
                Ok(Some(frame)) => {
                    if frames_tx.send(frame).await.is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    debug!(%error, "reading the streaming server failed");
                    break;
                }
            }
        }
    });
    let outcome: io::Result<()> = async {
        loop {
            tokio::select! {
                frame = frames.recv() => {
                    let Some(frame) = frame else { return Ok(()) };
                    match frame {
                        spdy::Frame::Data { stream, fin, data } => {
                            if let (Some(channel), false) = (channel_of(stream), data.is_empty()) {
                                let mut message = Vec::with_capacity(data.len() + 1);
                                message.push(channel);
                                message.extend_from_slice(&data);
                                ws.send(Message::Binary(message.into())).await.map_err(io::Error::other)?;
                            }
                            if fin {
                                pending.remove(&stream);
                            }
                        }
                        spdy::Frame::Control { kind: spdy::PING, payload, .. } => {
                            spdy_out.write_all(&spdy::control(spdy::PING, 0, &payload)).await?;
                            spdy_out.flush().await?;
                        }
                        spdy::Frame::Control { kind: spdy::GOAWAY, .. } => return Ok(()),
                        spdy::Frame::Control { kind, flags, payload } => {
                            if let Some(stream) = spdy::ended_stream(kind, flags, &payload) {
                                pending.remove(&stream);
                            }
                        }
                    }
                    if pending.is_empty() {
                        return Ok(());
                    }
                }
                message = ws.next() => {
                    let message = match message {
                        None | Some(Ok(Message::Close(_))) => return Ok(()),
                        Some(Err(error)) => return Err(io::Error::other(error)),
                        Some(Ok(Message::Binary(message))) => message,
                        // pings are answered by the WebSocket itself; text is not part of v5
                        Some(Ok(_)) => continue,
                    };
                    let Some((&channel, data)) = message.split_first() else { continue };
                    match channel {
                        CLOSE => {
                            if data.first() == Some(&STDIN) && stdin_open {
                                stdin_open = false;
                                if let Some(id) = stream_of(STDIN) {
                                    spdy_out.write_all(&spdy::data(id, true, &[])).await?;
                                }
                            }
                        }
                        STDIN | RESIZE => {
                            if channel == STDIN && !stdin_open {
                                continue;
                            }
                            if let Some(id) = stream_of(channel) {
                                for chunk in data.chunks(CHUNK) {
                                    spdy_out.write_all(&spdy::data(id, false, chunk)).await?;
                                }
                            }
                        }
                        _ => continue,
                    }
                    spdy_out.flush().await?;
                }
            }
        }
    }
    .await;
    reader.abort();
    let _ = spdy_out.shutdown().await;
    let close = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    if ws.close(Some(close)).await.is_ok() {
        // let the client answer the close, so it reads a clean end rather than a reset
        let drained = async { while let Some(Ok(_)) = ws.next().await {} };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), drained).await;
    }
    outcome
}

/// The part of SPDY/3.1 a remote command client needs.
mod spdy {
    use std::io;

    use bytes::{BufMut, Bytes};
    use flate2::{Compress, Compression, FlushCompress};
    use tokio::io::{AsyncRead, AsyncReadExt};

    pub const SYN_STREAM: u16 = 1;
    pub const SYN_REPLY: u16 = 2;
    pub const RST_STREAM: u16 = 3;
    pub const PING: u16 = 6;
    pub const GOAWAY: u16 = 7;
    pub const HEADERS: u16 = 8;
    const VERSION: u16 = 3;
    const FLAG_FIN: u8 = 1;
    /// Frame lengths are 24 bits.
    const MAX_LENGTH: usize = 0xff_ffff;

    /// One frame read from the peer.
    #[derive(Debug, PartialEq, Eq)]
    pub enum Frame {
        /// Data on a stream; `fin` half-closes the peer's side.
        Data { stream: u32, fin: bool, data: Bytes },
        /// Any control frame, undecoded.
        Control {
            kind: u16,
            flags: u8,
            payload: Bytes,
        },
    }

    /// The stream a control frame ends, if it ends one: a reset, or a reply or headers
    /// frame carrying FIN.
    pub fn ended_stream(kind: u16, flags: u8, payload: &[u8]) -> Option<u32> {
        let ends =
            kind == RST_STREAM || (matches!(kind, SYN_REPLY | HEADERS) && flags & FLAG_FIN != 0);
        let id: [u8; 4] = payload.get(..4)?.try_into().ok()?;
        ends.then_some(u32::from_be_bytes(id) & 0x7fff_ffff)
    }

    /// A control frame of `kind`.
    pub fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = Vec::with_capacity(payload.len() + 8);
        frame.put_u16(0x8000 | VERSION);
        frame.put_u16(kind);
        frame.put_u8(flags);
        frame.put_uint(payload.len().min(MAX_LENGTH) as u64, 3);
        frame.extend_from_slice(payload);
        frame
    }

    /// A SYN_STREAM opening stream `id` with a compressed header `block`.
    pub fn syn_stream(id: u32, block: &[u8]) -> Vec<u8> {
        let mut payload = Vec::with_capacity(block.len() + 10);
        payload.put_u32(id & 0x7fff_ffff);
        payload.put_u32(0); // associated stream
        payload.put_u8(0); // priority
        payload.put_u8(0); // slot
        payload.extend_from_slice(block);
        control(SYN_STREAM, 0, &payload)
    }

    /// A data frame on stream `id` (at most 16 MiB of `data`).
    pub fn data(id: u32, fin: bool, data: &[u8]) -> Vec<u8> {
        let data = &data[..data.len().min(MAX_LENGTH)];
        let mut frame = Vec::with_capacity(data.len() + 8);
        frame.put_u32(id & 0x7fff_ffff);
        frame.put_u8(if fin { FLAG_FIN } else { 0 });
        frame.put_uint(data.len() as u64, 3);
        frame.extend_from_slice(data);
        frame
    }

    /// Reads one frame; `None` at a clean end of the connection.
    pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> io::Result<Option<Frame>> {
        let mut head = [0u8; 8];
        let started = reader.read(&mut head).await?;
        if started == 0 {
            return Ok(None);
        }
        // an end inside a frame is an error, not a clean end
        reader.read_exact(&mut head[started..]).await?;
        let flags = head[4];
        let length = usize::from(head[5]) << 16 | usize::from(head[6]) << 8 | usize::from(head[7]);
        let mut payload = vec![0u8; length];
        reader.read_exact(&mut payload).await?;
        let payload = Bytes::from(payload);
        let first = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        Ok(Some(if first & 0x8000_0000 == 0 {
            Frame::Data {
                stream: first,
                fin: flags & FLAG_FIN != 0,
                data: payload,
            }
        } else {
            Frame::Control {
                kind: u16::from_be_bytes([head[2], head[3]]),
                flags,
                payload,
            }
        }))
    }

    /// The sending side's header compression: one zlib stream for the whole connection,
    /// flushed at the end of every header block. SPDY's shared dictionary is optional for a
    /// compressor: a stream that does not announce it decompresses without it.
    pub struct HeaderCompressor(Compress);

    impl HeaderCompressor {
        pub fn new() -> Self {
            Self(Compress::new(Compression::default(), true))
        }

        /// The compressed header block for `headers` (names in lower case).
        pub fn block(&mut self, headers: &[(&str, &str)]) -> io::Result<Vec<u8>> {
            let mut raw = Vec::new();
            raw.put_u32(u32::try_from(headers.len()).map_err(io::Error::other)?);
            for (name, value) in headers {
                for part in [name.to_ascii_lowercase().as_bytes(), value.as_bytes()] {
                    raw.put_u32(u32::try_from(part.len()).map_err(io::Error::other)?);
                    raw.extend_from_slice(part);
                }
            }
            let mut out = Vec::with_capacity(raw.len() + 64);
            let start = self.0.total_in();
            loop {
                let consumed =
                    usize::try_from(self.0.total_in() - start).map_err(io::Error::other)?;
                self.0
                    .compress_vec(&raw[consumed..], &mut out, FlushCompress::Sync)
                    .map_err(io::Error::other)?;
                let consumed =
                    usize::try_from(self.0.total_in() - start).map_err(io::Error::other)?;
                // a flush is complete when it left room to spare
                if consumed == raw.len() && out.len() < out.capacity() {
                    return Ok(out);
                }
                out.reserve(256);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;
    use flate2::{Decompress, FlushDecompress};

    #[test]
    fn streams_follow_the_request() {
        let exec = Streams {
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        };
        assert_eq!(
            exec.plan(),
            vec![
                (ERROR, 1, "error"),
                (STDIN, 3, "stdin"),
                (STDOUT, 5, "stdout"),
                (STDERR, 7, "stderr")
            ]
        );
        // a terminal merges stderr into stdout and adds the resize stream
        let terminal = Streams {
            stderr: true,
            tty: true,
            stdout: true,
            stdin: true,
        };
        assert_eq!(
            terminal.plan(),
            vec![
                (ERROR, 1, "error"),
                (STDIN, 3, "stdin"),
                (STDOUT, 5, "stdout"),
                (RESIZE, 7, "resize")
            ]
        );
    }

    #[test]
    fn v5_is_recognised_among_offered_protocols() {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::UPGRADE, "WebSocket".parse().unwrap());
        headers.insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            "v4.channel.k8s.io, v5.channel.k8s.io".parse().unwrap(),
        );
        assert!(wants_v5(&headers));
        headers.insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            "v4.channel.k8s.io".parse().unwrap(),
        );
        assert!(!wants_v5(&headers));
        headers.insert(http::header::UPGRADE, "SPDY/3.1".parse().unwrap());
        headers.insert(http::header::SEC_WEBSOCKET_PROTOCOL, V5.parse().unwrap());
        assert!(!wants_v5(&headers));
    }

    /// Header blocks decompress, one after another, with one zlib stream and no dictionary.
    #[test]
    fn header_blocks_share_one_zlib_stream() {
        let mut compressor = spdy::HeaderCompressor::new();
        let mut inflate = Decompress::new(true);
        for kind in ["error", "stdin", "stdout"] {
            let block = compressor.block(&[("streamType", kind)]).unwrap();
            let mut raw = Vec::with_capacity(1024);
            inflate
                .decompress_vec(&block, &mut raw, FlushDecompress::Sync)
                .unwrap();
            let mut expected = Vec::new();
            expected.put_u32(1);
            expected.put_u32(10);
            expected.extend_from_slice(b"streamtype");
            expected.put_u32(u32::try_from(kind.len()).unwrap());
            expected.extend_from_slice(kind.as_bytes());
            assert_eq!(raw, expected);
        }
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let mut wire = Vec::new();
        wire.extend(spdy::data(5, false, b"hello"));
        wire.extend(spdy::data(5, true, &[]));
        wire.extend(spdy::control(spdy::PING, 0, &2u32.to_be_bytes()));
        wire.extend(spdy::syn_stream(7, b"block"));
        let mut reader = wire.as_slice();
        let mut frames = Vec::new();
        while let Some(frame) = spdy::read_frame(&mut reader).await.unwrap() {
            frames.push(frame);
        }
        assert_eq!(
            frames[0],
            spdy::Frame::Data {
                stream: 5,
                fin: false,
                data: Bytes::from_static(b"hello")
            }
        );
        assert_eq!(
            frames[1],
            spdy::Frame::Data {
                stream: 5,
                fin: true,
                data: Bytes::new()
            }
        );
        assert_eq!(
            frames[2],
            spdy::Frame::Control {
                kind: spdy::PING,
                flags: 0,
                payload: Bytes::from_static(&[0, 0, 0, 2])
            }
        );
        let spdy::Frame::Control { kind, payload, .. } = &frames[3] else {
            panic!("{:?}", frames[3]);
        };
        assert_eq!(*kind, spdy::SYN_STREAM);
        assert_eq!(&payload[..4], &[0, 0, 0, 7]);
        assert_eq!(&payload[10..], b"block");
        // a truncated frame is an error, not a clean end
        let mut short = &wire[..6];
        assert!(spdy::read_frame(&mut short).await.is_err());
        // resets and final replies end their stream
        let mut reset = 9u32.to_be_bytes().to_vec();
        reset.extend(1u32.to_be_bytes());
        assert_eq!(spdy::ended_stream(spdy::RST_STREAM, 0, &reset), Some(9));
        assert_eq!(spdy::ended_stream(spdy::SYN_REPLY, 1, &reset), Some(9));
        assert_eq!(spdy::ended_stream(spdy::SYN_REPLY, 0, &reset), None);
        assert_eq!(spdy::ended_stream(spdy::RST_STREAM, 0, &[0]), None);
    }

    /// One exchange end to end in memory: a WebSocket v5 client on one side, a stand-in for
    /// the runtime's SPDY side on the other.
    #[tokio::test]
    async fn exchange_with_stdin_close_and_status() {
        let (ws_client, ws_server) = tokio::io::duplex(64 * 1024);
        let (spdy_kubelet, mut runtime) = tokio::io::duplex(64 * 1024);
        let streams = Streams {
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        };
        let server = tokio::spawn(async move {
            let ws = WebSocketStream::from_raw_socket(ws_server, Role::Server, None).await;
            translate(ws, spdy_kubelet, streams).await
        });
        let mut client = WebSocketStream::from_raw_socket(ws_client, Role::Client, None).await;
        client
            .send(Message::Binary(Bytes::from_static(b"\x00abc")))
            .await
            .unwrap();
        client
            .send(Message::Binary(Bytes::from_static(&[CLOSE, STDIN])))
            .await
            .unwrap();

        // the runtime sees four streams opened with their types, then stdin and its end
        let mut inflate = flate2::Decompress::new(true);
        let mut opened = Vec::new();
        let mut stdin = Vec::new();
        loop {
            match spdy::read_frame(&mut runtime).await.unwrap().unwrap() {
                spdy::Frame::Control { kind, payload, .. } => {
                    assert_eq!(kind, spdy::SYN_STREAM);
                    let mut raw = Vec::with_capacity(256);
                    inflate
                        .decompress_vec(&payload[10..], &mut raw, FlushDecompress::Sync)
                        .unwrap();
                    let id = u32::from_be_bytes(payload[..4].try_into().unwrap());
                    opened.push((id, String::from_utf8_lossy(&raw[22..]).into_owned()));
                }
                spdy::Frame::Data { stream: 1, fin, .. } => assert!(fin),
                spdy::Frame::Data {
                    stream: 3,
                    fin,
                    data,
                } => {
                    stdin.extend_from_slice(&data);
                    if fin {
                        break;
                    }
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            opened,
            [
                (1, "error".to_owned()),
                (3, "stdin".to_owned()),
                (5, "stdout".to_owned()),
                (7, "stderr".to_owned())
            ]
        );
        assert_eq!(stdin, b"abc");

        // a ping is answered; output and the status flow back, then every stream ends
        runtime
            .write_all(&spdy::control(spdy::PING, 0, &2u32.to_be_bytes()))
            .await
            .unwrap();
        runtime
            .write_all(&spdy::data(5, false, b"ABC"))
            .await
            .unwrap();
        runtime
            .write_all(&spdy::data(7, true, b"warn"))
            .await
            .unwrap();
        runtime.write_all(&spdy::data(5, true, &[])).await.unwrap();
        let status = br#"{"metadata":{},"status":"Success"}"#;
        runtime
            .write_all(&spdy::data(1, true, status))
            .await
            .unwrap();
        assert_eq!(
            spdy::read_frame(&mut runtime).await.unwrap().unwrap(),
            spdy::Frame::Control {
                kind: spdy::PING,
                flags: 0,
                payload: Bytes::from_static(&[0, 0, 0, 2])
            }
        );
        let mut received = Vec::new();
        let mut closed = None;
        while let Some(message) = client.next().await {
            match message.unwrap() {
                Message::Binary(data) => received.push(data.to_vec()),
                Message::Close(frame) => closed = frame.map(|f| f.code),
                _ => {}
            }
        }
        let mut status_message = vec![ERROR];
        status_message.extend_from_slice(status);
        assert_eq!(
            received,
            [b"\x01ABC".to_vec(), b"\x02warn".to_vec(), status_message]
        );
        assert_eq!(closed, Some(CloseCode::Normal));
        server.await.unwrap().unwrap();
        // the kubelet closed its side of the runtime connection
        assert!(spdy::read_frame(&mut runtime).await.unwrap().is_none());
    }
}
