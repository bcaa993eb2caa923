//! The cluster-state exporter (kube-state-metrics' families): served by `kelson server`, and
//! on its own against any cluster with `kelson state-metrics --kubeconfig FILE`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use kelson_metrics::state::{self, Allow, StateMetrics};
use tokio_util::sync::CancellationToken;

/// The flags kube-state-metrics users know, shared by `server` and `state-metrics`.
#[derive(clap::Args, Clone, Debug)]
pub struct Options {
    /// Kubernetes labels to expose as `label_*` on the `*_labels` families, per resource:
    /// `pods=[app,team],namespaces=[*]` (`*=[...]` for every resource).
    #[arg(long, default_value = "")]
    metric_labels_allowlist: String,
    /// Kubernetes annotations to expose as `annotation_*`, in the same form.
    #[arg(long, default_value = "")]
    metric_annotations_allowlist: String,
    /// Compress scrapes with gzip when the scraper accepts it.
    #[arg(long)]
    enable_gzip_encoding: bool,
}

impl Options {
    fn allow(&self) -> anyhow::Result<Allow> {
        Ok(Allow {
            labels: Allow::parse_list(&self.metric_labels_allowlist)
                .map_err(anyhow::Error::msg)
                .context("invalid --metric-labels-allowlist")?,
            annotations: Allow::parse_list(&self.metric_annotations_allowlist)
                .map_err(anyhow::Error::msg)
                .context("invalid --metric-annotations-allowlist")?,
        })
    }
}

/// `kelson state-metrics`.
#[derive(clap::Args)]
pub struct StateMetricsArgs {
    /// Kubeconfig of the cluster (default: $KUBECONFIG, else ~/.kube/config, else in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Address of the metrics listener.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub options: Options,
}

/// Binds `listen`, then watches the cluster through `client` and serves its state until
/// `shutdown`, writing the bound address to `address_file` when given (port 0 picks one).
///
/// # Errors
/// A malformed allow list, or the address cannot be bound.
pub async fn start(
    client: kube::Client,
    options: &Options,
    listen: SocketAddr,
    address_file: Option<&Path>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let allow = options.allow()?;
    let listener =
        kelson_metrics::http::bind(listen, address_file, "the cluster-state exporter").await?;
    let metrics = StateMetrics::default();
    let watching = metrics.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move { watching.run(client, allow, stop).await });
    let gzip = options.enable_gzip_encoding;
    tokio::spawn(async move {
        if let Err(error) = state::serve(metrics, listener, shutdown, gzip).await {
            tracing::error!(
                error = format!("{error:#}"),
                "the cluster-state exporter stopped"
            );
        }
    });
    Ok(())
}
