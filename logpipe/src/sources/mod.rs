//! Sources: where records come from. Each source runs until shutdown, sends [`Batch`]es down a
//! bounded channel (so a slow sink slows it down instead of growing memory) and resumes from
//! the [`Checkpoint`] its sinks made durable.

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
}

impl SourceConfig {
    /// The `type` name, for metrics.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::Tail(_) => "tail",
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
}

impl SourceContext {
    /// Now, in nanoseconds since the epoch.
    pub fn now(&self) -> i64 {
        i64::try_from(jiff::Timestamp::now().as_nanosecond()).unwrap_or(i64::MAX)
    }
}

/// Starts `config` as source `id` on its own thread.
pub(crate) fn spawn(
    id: &str,
    config: &SourceConfig,
    cx: SourceContext,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let (id, config) = (id.to_owned(), config.clone());
    std::thread::Builder::new()
        .name(format!("logpipe-{id}"))
        .spawn(move || match &config {
            SourceConfig::Tail(tail) => tail::run(&id, tail, cx),
        })
}
