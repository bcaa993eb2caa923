//! Kelson's log pipeline, fluentd-like: sources read records (the `tail` source follows
//! container logs under /var/log/pods), a router hands each record to the sinks whose tag
//! pattern matches, and the `index` sink makes them searchable with tantivy a second later.
//! Start reading at [`start`], which wires a [`config::PipelineConfig`] into threads and
//! channels; [`index`] holds the index and its queries, [`api`] the HTTP query API.
//!
//! Delivery: sources resume from the offsets the index committed together with the records
//! (tantivy's commit payload), so a crash or `kill -9` loses nothing read and indexes nothing
//! twice; every channel is bounded, so a slow or failing sink holds the sources back.

pub mod api;
pub mod buffer;
pub mod config;
pub mod format;
pub mod index;
pub mod kubernetes;
pub mod live;
pub mod loki_api;
pub mod metrics;
pub mod multiline;
pub mod positions;
pub mod record;
pub mod reload;
pub mod sinks;
pub mod sources;
pub mod transforms;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{PipelineConfig, TagPattern};
use crate::index::LogIndex;
use crate::metrics::Metrics;
use crate::record::{Batch, Checkpoint};
use crate::sinks::SinkConfig;

/// Batches buffered in front of each sink (and between the sources and the router).
const CHANNEL_BATCHES: usize = 4;

/// Where the pipeline runs.
#[derive(Clone, Default)]
pub struct Environment {
    /// Directory for the index (used when the configuration gives none).
    pub data_dir: PathBuf,
    /// This node's name, added to records.
    pub node: String,
    /// A client of the cluster, to add pod labels (none: path metadata only).
    pub client: Option<kube::Client>,
    /// Watch only this node's pods (none: every pod).
    pub watch_node: Option<String>,
}

/// A running pipeline.
pub struct Pipeline {
    /// The index, when the configuration has an index sink.
    pub index: Option<Arc<LogIndex>>,
    /// The pipeline's metrics.
    pub metrics: Metrics,
    /// Where the network sources listen, by source name.
    pub listening: std::collections::BTreeMap<String, std::net::SocketAddr>,
    done: Vec<tokio::task::JoinHandle<()>>,
}

impl Pipeline {
    /// Waits until every sink has drained (after shutdown).
    pub async fn wait(self) {
        for task in self.done {
            let _ = task.await;
        }
    }
}

/// Starts `config`; it runs until `shutdown`, then drains.
///
/// # Errors
/// When the index cannot be opened or a thread cannot start.
pub async fn start(
    config: PipelineConfig,
    environment: Environment,
    shutdown: CancellationToken,
) -> anyhow::Result<Pipeline> {
    let metrics = Metrics::new();
    let data_dir = config
        .data_dir
        .clone()
        .unwrap_or_else(|| environment.data_dir.clone());
    let mut index = None;
    let mut checkpoint = Checkpoint::new();
    let mut routes: Vec<Route> = Vec::new();
    let mut rewind = None;
    let mut done = Vec::new();
    for (id, sink) in &config.sinks {
        let pattern = TagPattern::parse(sink.pattern()).map_err(anyhow::Error::msg)?;
        let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
        routes.push(Route {
            pattern,
            sink: tx,
            index: matches!(sink, SinkConfig::Index(_)),
        });
        let component = metrics.component(id, sink.kind());
        let rx = match sink.buffer() {
            Some(buffer) => {
                // the buffer holds what waits; the sink is handed one batch at a time
                let (buffered_tx, buffered_rx) = mpsc::channel(1);
                let dir = match &buffer.path {
                    Some(path) => path.clone(),
                    None if buffer.kind == buffer::BufferKind::File
                        && data_dir.as_os_str().is_empty() =>
                    {
                        anyhow::bail!(
                            "sinks.{id}.buffer: a file buffer needs a path (or the pipeline's data_dir)"
                        );
                    }
                    None => data_dir.join("buffers").join(id),
                };
                let stage = buffer::Stage {
                    input: rx,
                    output: buffered_tx,
                    metrics: component.clone(),
                    gauges: (
                        metrics.buffer_events.with_label_values(&[id]),
                        metrics.buffer_bytes.with_label_values(&[id]),
                    ),
                    shutdown: shutdown.clone(),
                };
                done.push(tokio::spawn(buffer::run(buffer.clone(), dir, stage)));
                buffered_rx
            }
            None => rx,
        };
        match sink {
            SinkConfig::Index(sink_config) => {
                let path = sink_config
                    .path
                    .clone()
                    .unwrap_or_else(|| data_dir.join("index"));
                let opened = tokio::task::spawn_blocking(move || LogIndex::open(&path)).await??;
                let (log_index, committed) = opened;
                checkpoint.clone_from(&committed);
                index = Some(log_index.clone());
                let sink_config = sink_config.clone();
                let shared = Arc::new(record::Rewind::new(committed.clone()));
                // with a buffer in front, the index never sees a source's generation
                if sink.buffer().is_none() {
                    rewind = Some(shared.clone());
                }
                let cx = index::writer::SinkContext {
                    id: id.clone(),
                    component,
                    metrics: metrics.clone(),
                    shutdown: shutdown.clone(),
                    rewind: shared,
                };
                let (finished_tx, finished_rx) = tokio::sync::oneshot::channel::<()>();
                std::thread::Builder::new()
                    .name(format!("logpipe-{id}"))
                    .spawn(move || {
                        index::writer::run(&log_index, &sink_config, committed, rx, &cx);
                        let _ = finished_tx.send(());
                    })?;
                done.push(tokio::spawn(async move {
                    let _ = finished_rx.await;
                }));
            }
            SinkConfig::Stdout(_) => done.push(tokio::spawn(sinks::run_stdout(rx, component))),
            SinkConfig::File(file) => done.push(tokio::spawn(sinks::file::run(
                file.clone(),
                rx,
                component,
                shutdown.clone(),
            ))),
            SinkConfig::Forward(forward) => done.push(tokio::spawn(sinks::forward::run(
                forward.clone(),
                rx,
                component,
                shutdown.clone(),
            ))),
            SinkConfig::Loki(loki) => done.push(tokio::spawn(sinks::loki::run(
                loki.clone(),
                rx,
                component,
                shutdown.clone(),
            ))),
            SinkConfig::Elasticsearch(elasticsearch) => {
                done.push(tokio::spawn(sinks::elasticsearch::run(
                    elasticsearch.clone(),
                    rx,
                    component,
                    shutdown.clone(),
                )));
            }
        }
    }
    // without an index, positions are kept beside the pipeline's data
    let tails = config
        .sources
        .values()
        .any(|s| matches!(s, sources::SourceConfig::Tail(_)));
    let positions = if index.is_none() && tails && !data_dir.as_os_str().is_empty() {
        std::fs::create_dir_all(&data_dir)?;
        let (positions, saved) = positions::Positions::open(data_dir.join("positions.json"));
        checkpoint = saved;
        Some(positions)
    } else {
        None
    };
    let checkpoint = Arc::new(checkpoint);
    let pods = environment.client.clone().map(|client| {
        let cache = kubernetes::PodCache::default();
        tokio::spawn(kubernetes::watch_pods(
            client,
            environment.watch_node.clone(),
            cache.clone(),
            shutdown.clone(),
        ));
        cache
    });
    let (source_tx, source_rx) = mpsc::channel(CHANNEL_BATCHES);
    let node: Arc<str> = environment.node.as_str().into();
    let mut listening = std::collections::BTreeMap::new();
    for (id, source) in &config.sources {
        let cx = sources::SourceContext {
            out: source_tx.clone(),
            checkpoint: checkpoint.clone(),
            shutdown: shutdown.clone(),
            metrics: metrics.component(id, source.kind()),
            node: node.clone(),
            pods: pods.clone(),
            client: environment.client.clone(),
            positions: positions.clone(),
            rewind: rewind.clone(),
        };
        if let Some(address) = sources::start(id, source, cx).await? {
            listening.insert(id.clone(), address);
        }
    }
    drop(source_tx);
    let transforms = transforms::build(&config.transforms, &metrics).map_err(anyhow::Error::msg)?;
    tokio::spawn(route(source_rx, transforms, routes));
    Ok(Pipeline {
        index,
        metrics,
        listening,
        done,
    })
}

/// One sink as the router sees it.
struct Route {
    pattern: TagPattern,
    sink: mpsc::Sender<Batch>,
    /// The index sink, the only one that takes records read again after a rewind.
    index: bool,
}

/// Hands each record to every sink whose pattern matches its tag; ends when every source
/// has ended, which ends the sinks.
async fn route(
    mut input: mpsc::Receiver<Batch>,
    transforms: Vec<transforms::Transform>,
    routes: Vec<Route>,
) {
    let mut decisions: HashMap<Arc<str>, Vec<bool>> = HashMap::new();
    while let Some(batch) = input.recv().await {
        let mut per_sink: Vec<Batch> = routes
            .iter()
            .map(|_| Batch {
                records: Vec::new(),
                forgotten: batch.forgotten.clone(),
                reset: batch.reset.clone(),
                bytes: 0,
                ack: None,
                generation: batch.generation,
            })
            .collect();
        for mut record in batch.records {
            if !transforms.iter().all(|t| t.apply(&mut record)) {
                continue;
            }
            let wanted = decisions.entry(record.tag.clone()).or_insert_with(|| {
                routes
                    .iter()
                    .map(|route| route.pattern.matches(&record.tag))
                    .collect()
            });
            // what other sinks took before a rewind goes to the index alone
            let replay = record.position.as_ref().is_some_and(|p| p.replay);
            let takes = |i: usize| wanted[i] && (!replay || routes[i].index);
            // a copy for every sink but the last that wants it, which takes the record
            if let Some(last) = (0..routes.len()).rev().find(|i| takes(*i)) {
                for i in (0..last).filter(|i| takes(*i)) {
                    per_sink[i].records.push(record.clone());
                }
                per_sink[last].records.push(record);
            }
        }
        if decisions.len() > 100_000 {
            decisions.clear();
        }
        // each sink that took records holds the acknowledgement until they are durable
        if let Some(ack) = batch.ack {
            for sink_batch in &mut per_sink {
                if !sink_batch.records.is_empty() {
                    sink_batch.ack = Some(ack.clone());
                }
            }
        }
        for (route, batch) in routes.iter().zip(per_sink) {
            if route.sink.send(batch).await.is_err() {
                tracing::warn!("a sink stopped; its records are dropped");
            }
        }
    }
}

#[cfg(test)]
mod tests;
