//! The `kelson` binary: a thin CLI over the Kelson crates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// Kelson: a Kubernetes distribution whose desired state comes from Git.
#[derive(Parser)]
#[command(name = "kelson", version, about)]
struct Cli {
    /// Log filter, e.g. `info` or `kelson_apiserver=debug`.
    #[arg(long, env = "KELSON_LOG", default_value = "info", global = true)]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane: the Kubernetes API server over embedded storage or etcd.
    Server(ServerArgs),
}

#[derive(clap::Args)]
struct ServerArgs {
    /// Directory for storage, TLS material, kubeconfig.yaml and addresses.json.
    #[arg(long, env = "KELSON_DATA_DIR", default_value = "/var/lib/kelson")]
    data_dir: PathBuf,
    /// Address of the HTTPS API listener; port 0 picks a free port (see addresses.json).
    #[arg(long, default_value = "0.0.0.0:6443")]
    listen: SocketAddr,
    /// Use etcd at these client URLs (comma-separated) instead of the embedded store.
    #[arg(long, value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// Extra DNS names or IP addresses for the serving certificate.
    #[arg(long = "tls-san", value_delimiter = ',')]
    tls_sans: Vec<String>,
    /// Seconds between compactions of old revisions.
    #[arg(long, default_value_t = 300)]
    compaction_interval_seconds: u64,
}

fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        trigger.cancel();
    });
    token
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log).context("invalid --log filter")?,
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Server(args) => {
            let mut config = kelson_apiserver::Config::new(args.data_dir);
            config.listen = args.listen;
            config.tls_sans = args.tls_sans;
            config.compaction_interval =
                Duration::from_secs(args.compaction_interval_seconds.max(1));
            if !args.etcd_endpoints.is_empty() {
                config.storage = kelson_apiserver::StorageConfig::Etcd {
                    endpoints: args.etcd_endpoints,
                };
            }
            kelson_apiserver::run(config, shutdown_signal(), None)
                .await
                .context("kelson server failed")?;
        }
    }
    Ok(())
}
