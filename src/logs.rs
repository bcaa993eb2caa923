//! The log pipeline in the binary: `kelson server` and `kelson agent` run it on their node
//! (container logs under /var/log/pods into the node's index, the query API on
//! `--logs-listen`); `kelson logpipe` runs one from a configuration file; `kelson logs search`
//! and `kelson logs tail` query it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use kelson_logpipe::config::PipelineConfig;
use tokio_util::sync::CancellationToken;

/// The node's log pipeline flags, shared by `server`, `up` and `agent`.
#[derive(clap::Args, Clone)]
pub struct NodeLogArgs {
    /// Address of this node's log query API (search, histogram and the pipeline's metrics),
    /// for local use; the cluster reaches it through the kubelet API (`/logs/...`), which
    /// `kelson logs` and the API server's `/kelson/v1/logs/...` use. Port 0 picks one (written
    /// to the agent directory's logs/address).
    #[arg(long, default_value = "127.0.0.1:3100")]
    pub logs_listen: SocketAddr,
    /// The log pipeline's configuration (default: manifests/logpipe.yaml's pipeline, every
    /// container log into the node's index under the agent directory's logs/).
    #[arg(long)]
    pub logpipe_config: Option<PathBuf>,
    /// Do not collect and index container logs on this node.
    #[arg(long)]
    pub disable_logpipe: bool,
}

impl NodeLogArgs {
    /// The port the pipeline will listen on (for preflight).
    pub fn ports(&self) -> Vec<SocketAddr> {
        (!self.disable_logpipe && self.logs_listen.port() != 0)
            .then_some(self.logs_listen)
            .into_iter()
            .collect()
    }

    /// Starts the node's pipeline beside the agent whose directory is `root_dir`; returns its
    /// query API for the kubelet to serve. With `cluster_events` (the server's own node), the
    /// default pipeline also records the cluster's Events.
    pub async fn start(
        &self,
        root_dir: &Path,
        node: &str,
        client: kube::Client,
        cluster_events: bool,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Option<axum::Router>> {
        if self.disable_logpipe {
            return Ok(None);
        }
        let source = match &self.logpipe_config {
            // a file is followed: changed to a valid pipeline, it is reloaded
            Some(path) => Source::File(path.clone()),
            None => Source::Config({
                let mut config = PipelineConfig::node_default();
                if cluster_events {
                    config.sources.insert(
                        "events".to_owned(),
                        kelson_logpipe::sources::SourceConfig::KubernetesEvents(
                            kelson_logpipe::sources::events::EventsConfig {
                                tag: "kube.events".to_owned(),
                                namespace: None,
                            },
                        ),
                    );
                }
                config
            }),
        };
        let environment = kelson_logpipe::Environment {
            data_dir: root_dir.join("logs"),
            node: node.to_owned(),
            client: Some(client),
            watch_node: Some(node.to_owned()),
        };
        let (router, _drained) = serve(
            source,
            environment,
            self.logs_listen,
            Some(&root_dir.join("logs/address")),
            shutdown,
        )
        .await
        .context("use --logs-listen to pick another address, or --disable-logpipe")?;
        Ok(Some(router))
    }
}

/// Where a pipeline's configuration comes from.
enum Source {
    /// Given once.
    Config(PipelineConfig),
    /// A file, reloaded when it changes.
    File(PathBuf),
}

/// Starts the pipeline and its query API on `listen`; the API's routes, and a task that ends
/// once the pipeline has drained after `shutdown`.
async fn serve(
    source: Source,
    environment: kelson_logpipe::Environment,
    listen: SocketAddr,
    address_file: Option<&Path>,
    shutdown: CancellationToken,
) -> anyhow::Result<(axum::Router, tokio::task::JoinHandle<()>)> {
    let listener = kelson_metrics::http::bind(listen, address_file, "the log query API").await?;
    let (router, drained) = match source {
        Source::Config(config) => {
            let pipeline = kelson_logpipe::start(config, environment, shutdown.clone())
                .await
                .context("failed to start the log pipeline")?;
            let router =
                kelson_logpipe::api::router(pipeline.index.clone(), pipeline.metrics.clone());
            (router, tokio::spawn(pipeline.wait()))
        }
        Source::File(path) => {
            let reloading =
                kelson_logpipe::reload::start_reloading(path, environment, shutdown.clone())
                    .await
                    .context("failed to start the log pipeline")?;
            (reloading.router, reloading.done)
        }
    };
    let routes = router.clone();
    tokio::spawn(async move {
        let served = axum::serve(listener, routes)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "the log query API stopped");
        }
    });
    Ok((router, drained))
}

/// `kelson logpipe`: one pipeline from a configuration file.
#[derive(clap::Args)]
pub struct LogpipeArgs {
    /// The pipeline's configuration (YAML; see manifests/logpipe.yaml and docs/logpipe.md).
    #[arg(long)]
    config: PathBuf,
    /// Directory for the index (when the configuration names none).
    #[arg(long, default_value = "/var/lib/kelson-logpipe")]
    data_dir: PathBuf,
    /// Address of the query API and metrics; port 0 picks one (written to DATA_DIR/address).
    #[arg(long, default_value = "0.0.0.0:3100")]
    listen: SocketAddr,
    /// Node name added to records (default: the host name).
    #[arg(long, env = "KELSON_NODE_NAME")]
    node_name: Option<String>,
    /// Kubeconfig of a cluster whose pods' labels to add (default: none).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Only check the configuration, then exit.
    #[arg(long)]
    check: bool,
}

/// Runs `kelson logpipe` until SIGINT or SIGTERM, then drains.
pub async fn run_pipeline(args: LogpipeArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    if args.check {
        PipelineConfig::load(&args.config)?;
        println!("{}: ok", args.config.display());
        return Ok(());
    }
    let client = match &args.kubeconfig {
        Some(path) => Some(crate::kube_client(Some(path)).await?),
        None => None,
    };
    let environment = kelson_logpipe::Environment {
        data_dir: args.data_dir.clone(),
        node: args.node_name.unwrap_or_else(crate::hostname),
        client,
        watch_node: None,
    };
    let address_file = args.data_dir.join("address");
    let (_, drained) = serve(
        Source::File(args.config),
        environment,
        args.listen,
        Some(&address_file),
        shutdown.clone(),
    )
    .await?;
    shutdown.cancelled().await;
    let _ = drained.await;
    Ok(())
}

/// `kelson logs`: search and follow the indexed logs.
#[derive(clap::Args)]
pub struct LogsArgs {
    #[command(subcommand)]
    command: LogsCommand,
}

#[derive(clap::Subcommand)]
enum LogsCommand {
    /// Lines matching QUERY (tantivy syntax over the message: words, "a phrase", AND/OR/NOT,
    /// level:error), newest first.
    Search {
        /// What to look for (empty: every line).
        #[arg(default_value = "")]
        query: String,
        #[command(flatten)]
        filters: Filters,
        /// Lines to show.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Output: text (default) or json (one object per line).
        #[arg(short = 'o', long, default_value = "text")]
        output: String,
    },
    /// Count lines matching QUERY per interval (e.g. errors per minute over the last hour).
    Count {
        /// What to count (empty: every line).
        #[arg(default_value = "")]
        query: String,
        #[command(flatten)]
        filters: Filters,
        /// Interval of each count (`10s`, `1m`, `1h`).
        #[arg(long, default_value = "1m")]
        interval: String,
        /// Output: text (default) or json.
        #[arg(short = 'o', long, default_value = "text")]
        output: String,
    },
    /// Show the newest lines, then follow new ones from every node as they are indexed (QUERY:
    /// words, quoted phrases and field:value terms).
    Tail {
        /// What to look for (empty: every line).
        #[arg(default_value = "")]
        query: String,
        #[command(flatten)]
        filters: Filters,
        /// Recent lines to show first.
        #[arg(long, default_value_t = 10)]
        lines: usize,
        /// Output: text (default) or json.
        #[arg(short = 'o', long, default_value = "text")]
        output: String,
    },
}

#[derive(clap::Args)]
struct Filters {
    /// Namespace.
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Pod name.
    #[arg(long)]
    pod: Option<String>,
    /// Container name.
    #[arg(short = 'c', long)]
    container: Option<String>,
    /// Node name.
    #[arg(long)]
    node: Option<String>,
    /// Severity (error, warn, info, debug, trace, fatal).
    #[arg(long)]
    level: Option<String>,
    /// Pod label selector (`app=web,tier=front`).
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// Attributes a network source gave (`host=web-1,ident=nginx` for syslog).
    #[arg(long)]
    fields: Option<String>,
    /// Only lines newer than this (`15m`, `1h`, `2d`).
    #[arg(long)]
    since: Option<String>,
    /// Ask one node's log query API at this URL (e.g. http://127.0.0.1:3100) instead of the
    /// whole cluster through the API server.
    #[arg(long, env = "KELSON_LOGS_URL")]
    url: Option<String>,
    /// Kubeconfig of the cluster (default: $KUBECONFIG, ~/.kube/config); every node's logs
    /// are searched through the API server.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

impl Filters {
    fn params(&self) -> Vec<(&'static str, String)> {
        let mut params = Vec::new();
        for (name, value) in [
            ("namespace", &self.namespace),
            ("pod", &self.pod),
            ("container", &self.container),
            ("node", &self.node),
            ("level", &self.level),
            ("selector", &self.selector),
            ("fields", &self.fields),
            ("since", &self.since),
        ] {
            if let Some(value) = value {
                params.push((name, value.clone()));
            }
        }
        params
    }
}

/// Where `kelson logs` asks: one node's API, or every node through the API server.
enum Target {
    Node(kube::Client, String),
    Cluster(kube::Client),
}

impl Target {
    async fn of(filters: &Filters) -> anyhow::Result<Self> {
        if let Some(url) = &filters.url {
            let config = kube::Config::new(
                url.parse()
                    .with_context(|| format!("invalid --url {url}"))?,
            );
            return Ok(Self::Node(kube::Client::try_from(config)?, url.clone()));
        }
        let client = crate::kube_client(filters.kubeconfig.as_deref())
            .await
            .context("no cluster to ask: give --kubeconfig (or set KUBECONFIG), or --url of a node's log API")?;
        Ok(Self::Cluster(client))
    }

    /// Sends `GET api?params`; the response, and who answered it.
    async fn send(
        &self,
        api: &str,
        params: &[(&str, String)],
    ) -> anyhow::Result<(http::Response<kube::client::Body>, &str)> {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params.iter().map(|(k, v)| (*k, v.as_str())))
            .finish();
        let (client, path, what) = match self {
            Self::Node(client, url) => (client, format!("/api/v1/{api}?{query}"), url.as_str()),
            Self::Cluster(client) => (
                client,
                format!("/kelson/v1/logs/{api}?{query}"),
                "the API server",
            ),
        };
        let request = http::Request::get(path).body(Vec::new())?;
        let response = client
            .send(request.map(kube::client::Body::from))
            .await
            .with_context(|| format!("failed to reach {what}"))?;
        Ok((response, what))
    }

    async fn get(&self, api: &str, params: &[(&str, String)]) -> anyhow::Result<serde_json::Value> {
        let (response, what) = self.send(api, params).await?;
        let status = response.status();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .context("failed to read the answer")?
            .to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&body).with_context(|| {
            format!(
                "{what} answered {status}: {}",
                String::from_utf8_lossy(&body)
            )
        })?;
        if !status.is_success() {
            anyhow::bail!(
                "{}",
                value["error"]
                    .as_str()
                    .or(value["message"].as_str())
                    .unwrap_or("the log query was refused")
            );
        }
        for error in value["errors"].as_array().into_iter().flatten() {
            eprintln!(
                "warning: node {} did not answer: {}",
                error["node"].as_str().unwrap_or("?"),
                error["error"].as_str().unwrap_or("?")
            );
        }
        Ok(value)
    }
}

fn print_hit(hit: &serde_json::Value, output: &str) {
    if output == "json" {
        println!("{hit}");
        return;
    }
    let text = |name: &str| hit[name].as_str().unwrap_or_default().to_owned();
    let source = if text("pod").is_empty() {
        text("tag")
    } else {
        format!(
            "{}/{}/{}",
            text("namespace"),
            text("pod"),
            text("container")
        )
    };
    println!("{} {source} {}", text("timestamp"), text("message"));
}

/// Runs `kelson logs`.
pub async fn run_logs(args: LogsArgs) -> anyhow::Result<()> {
    match args.command {
        LogsCommand::Search {
            query,
            filters,
            limit,
            output,
        } => {
            check_output(&output)?;
            let mut params = filters.params();
            params.push(("query", query));
            params.push(("limit", limit.to_string()));
            let found = Target::of(&filters).await?.get("search", &params).await?;
            for hit in found["hits"].as_array().into_iter().flatten() {
                print_hit(hit, &output);
            }
            Ok(())
        }
        LogsCommand::Count {
            query,
            filters,
            interval,
            output,
        } => {
            check_output(&output)?;
            let mut params = filters.params();
            params.push(("query", query));
            params.push(("interval", interval));
            let counted = Target::of(&filters)
                .await?
                .get("histogram", &params)
                .await?;
            let buckets = counted["buckets"].as_array().cloned().unwrap_or_default();
            if output == "json" {
                println!("{}", serde_json::Value::Array(buckets));
                return Ok(());
            }
            let mut total = 0;
            for bucket in &buckets {
                let start = bucket["start"].as_i64().unwrap_or(0);
                let count = bucket["count"].as_u64().unwrap_or(0);
                total += count;
                let time = jiff::Timestamp::from_nanosecond(i128::from(start))
                    .map(|t| t.to_string())
                    .unwrap_or_default();
                println!("{time} {count}");
            }
            println!("total {total}");
            Ok(())
        }
        LogsCommand::Tail {
            query,
            filters,
            lines,
            output,
        } => {
            check_output(&output)?;
            let mut params = filters.params();
            params.push(("query", query));
            let target = Target::of(&filters).await?;
            // subscribe first, so that no line falls between the history and the live lines
            let (live, what) = target.send("tail", &params).await?;
            if !live.status().is_success() {
                let status = live.status();
                let body = http_body_util::BodyExt::collect(live.into_body())
                    .await
                    .map(http_body_util::Collected::to_bytes)
                    .unwrap_or_default();
                let value: serde_json::Value =
                    serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                anyhow::bail!(
                    "{what} refused the live tail ({status}): {}",
                    value["error"]
                        .as_str()
                        .or(value["message"].as_str())
                        .map_or_else(
                            || String::from_utf8_lossy(&body).into_owned(),
                            str::to_owned
                        )
                );
            }
            // the newest `lines` lines first, oldest first; live lines already shown are skipped
            let mut shown = std::collections::HashSet::new();
            if lines > 0 {
                let mut page = params.clone();
                page.push(("limit", lines.to_string()));
                let found = target.get("search", &page).await?;
                let mut hits: Vec<serde_json::Value> =
                    found["hits"].as_array().cloned().unwrap_or_default();
                hits.reverse();
                for hit in &hits {
                    shown.insert(hit_key(hit));
                    print_hit(hit, &output);
                }
            }
            let mut lines = std::pin::pin!(kelson_common::ndjson::lines(live.into_body()));
            while let Some(line) = futures::StreamExt::next(&mut lines).await {
                let line = line
                    .map_err(anyhow::Error::msg)
                    .context("the live tail broke off")?;
                let Ok(value) = serde_json::from_slice::<serde_json::Value>(&line) else {
                    continue;
                };
                if let Some(error) = value["error"].as_str() {
                    eprintln!(
                        "warning: node {} is not tailed: {error}",
                        value["node"].as_str().unwrap_or("?")
                    );
                } else if let Some(missed) = value["dropped"].as_u64() {
                    eprintln!("warning: {missed} lines went by too fast to show");
                } else if !shown.remove(&hit_key(&value)) {
                    print_hit(&value, &output);
                }
            }
            anyhow::bail!("the live tail ended: {what} went away")
        }
    }
}

/// What tells one line from another across a search and a live tail.
fn hit_key(hit: &serde_json::Value) -> String {
    format!(
        "{}/{}/{}/{}",
        hit["timestamp_ns"], hit["node"], hit["pod"], hit["message"]
    )
}

fn check_output(output: &str) -> anyhow::Result<()> {
    match output {
        "text" | "json" => Ok(()),
        other => anyhow::bail!("unknown output {other:?} (text or json)"),
    }
}
