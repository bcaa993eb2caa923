//! Sources: where records come from. Each source runs until shutdown, sends [`Batch`]es down a
//! bounded channel (so a slow sink slows it down instead of growing memory) and resumes from
//! the [`Checkpoint`] its sinks made durable.

pub mod events;
pub mod forward;
pub mod http;
pub mod loki;
pub mod syslog;
pub mod tail;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::kubernetes::PodCache;
use crate::metrics::ComponentMetrics;
use crate::record::{Batch, Checkpoint};

/// A source's configuration, by `type`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SourceConfig {
    /// Follow files (container logs under /var/log/pods, or any other).
    Tail(tail::TailConfig),
    /// A fluentd forward protocol server (fluentd, Fluent Bit, fluent-logger).
    Forward(forward::ForwardConfig),
    /// Syslog messages (RFC 5424 and 3164) over UDP or TCP.
    Syslog(syslog::SyslogConfig),
    /// JSON records posted over HTTP (`POST /<tag>`).
    Http(http::HttpConfig),
    /// Loki's push API (promtail, Grafana Alloy, Loki clients).
    Loki(loki::LokiConfig),
    /// The cluster's Events.
    KubernetesEvents(events::EventsConfig),
}

impl SourceConfig {
    /// The `type` name, for metrics.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::Tail(_) => "tail",
            SourceConfig::Forward(_) => "forward",
            SourceConfig::Syslog(_) => "syslog",
            SourceConfig::Http(_) => "http",
            SourceConfig::Loki(_) => "loki",
            SourceConfig::KubernetesEvents(_) => "kubernetes_events",
        }
    }
}

/// What a running source gets.
pub(crate) struct SourceContext {
    /// Where batches go.
    pub out: mpsc::Sender<Batch>,
    /// Where to resume.
    pub checkpoint: Arc<Checkpoint>,
    /// Stop when cancelled.
    pub shutdown: CancellationToken,
    /// The source's counters.
    pub metrics: ComponentMetrics,
    /// This node's name.
    pub node: Arc<str>,
    /// Pod labels, when watching pods.
    pub pods: Option<PodCache>,
    /// A client of the cluster, when there is one.
    pub client: Option<kube::Client>,
    /// Where a source that reads files keeps its positions when no index does.
    pub positions: Option<Arc<crate::positions::Positions>>,
    /// The index's commits and rewinds, for sources that can read records again.
    pub rewind: Option<Arc<crate::record::Rewind>>,
}

impl SourceContext {
    /// Now, in nanoseconds since the epoch.
    pub fn now(&self) -> i64 {
        crate::record::now_ns()
    }

    /// Sends `records` as one batch and waits until every sink that took them made them
    /// durable: `Ok(())` then, `Err` with what to tell the sender otherwise.
    pub async fn deliver(
        &self,
        records: Vec<crate::record::LogRecord>,
    ) -> Result<(), &'static str> {
        let count = records.len() as u64;
        self.metrics.received(count, 0);
        let (ack, done) = crate::record::Ack::new();
        let batch = Batch {
            records,
            ack: Some(ack),
            ..Batch::default()
        };
        if self.out.send(batch).await.is_err() {
            return Err("shutting down");
        }
        self.metrics.sent(count);
        match done.await {
            Ok(true) => Ok(()),
            _ => Err("the records were not stored; send them again"),
        }
    }
}

/// A TCP listener on `listen` for source `id`, logged, and its address.
async fn bind_tcp(
    id: &str,
    kind: &str,
    listen: &str,
) -> anyhow::Result<(tokio::net::TcpListener, std::net::SocketAddr)> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("source {id}: failed to listen on {listen}"))?;
    let address = listener.local_addr()?;
    tracing::info!(source = %id, %address, "{kind} input listening");
    Ok((listener, address))
}

/// Starts `config` as source `id`: file sources on their own thread, network sources as
/// tasks on listeners bound here (so a busy address fails the start).
///
/// Returns the address a network source listens on.
pub(crate) async fn start(
    id: &str,
    config: &SourceConfig,
    cx: SourceContext,
) -> anyhow::Result<Option<std::net::SocketAddr>> {
    use anyhow::Context;
    let (id, config) = (id.to_owned(), config.clone());
    match config {
        SourceConfig::Tail(tail) => {
            std::thread::Builder::new()
                .name(format!("logpipe-{id}"))
                .spawn(move || tail::run(&id, &tail, cx))?;
            Ok(None)
        }
        SourceConfig::Forward(forward) => {
            let (listener, address) = bind_tcp(&id, "forward", &forward.listen).await?;
            tokio::spawn(forward::run(id, forward, cx, listener));
            Ok(Some(address))
        }
        SourceConfig::Http(http) => {
            let (listener, address) = bind_tcp(&id, "http", &http.listen).await?;
            tokio::spawn(http::run(http, cx, listener));
            Ok(Some(address))
        }
        SourceConfig::Loki(loki) => {
            let (listener, address) = bind_tcp(&id, "loki push", &loki.listen).await?;
            tokio::spawn(loki::run(loki, cx, listener));
            Ok(Some(address))
        }
        SourceConfig::KubernetesEvents(events) => {
            let client = cx.client.clone().with_context(|| {
                format!("source {id}: kubernetes_events needs a cluster (--kubeconfig)")
            })?;
            tokio::spawn(events::run(id, events, cx, client));
            Ok(None)
        }
        SourceConfig::Syslog(syslog) => match syslog.mode {
            syslog::Mode::Udp => {
                let socket = tokio::net::UdpSocket::bind(&syslog.listen)
                    .await
                    .with_context(|| {
                        format!("source {id}: failed to listen on {}", syslog.listen)
                    })?;
                let address = socket.local_addr()?;
                tracing::info!(source = %id, %address, "syslog (udp) input listening");
                tokio::spawn(syslog::run_udp(syslog, cx, socket));
                Ok(Some(address))
            }
            syslog::Mode::Tcp => {
                let (listener, address) = bind_tcp(&id, "syslog (tcp)", &syslog.listen).await?;
                tokio::spawn(syslog::run_tcp(syslog, cx, listener));
                Ok(Some(address))
            }
        },
    }
}
