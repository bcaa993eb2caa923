//! `kelson node-exporter`: the node exporter on its own, with node_exporter's flag names
//! (`--web.listen-address`, `--path.procfs`, `--collector.NAME`, `--no-collector.NAME`, ...), and
//! the piece `kelson server` and `kelson agent` use to serve it beside the kubelet.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};
use kelson_metrics::node::{self, Config, NodeExporter};
use regex::Regex;
use tokio_util::sync::CancellationToken;

/// The flags of `kelson node-exporter`.
pub struct NodeExporterArgs {
    /// Where to listen.
    pub listen: SocketAddr,
    /// What to collect.
    pub config: Config,
}

/// Regex flags: id, default, help.
const PATTERNS: &[(&str, &str, &str)] = &[
    (
        "collector.filesystem.mount-points-exclude",
        node::DEFAULT_MOUNT_POINTS_EXCLUDE,
        "Regexp of mount points to exclude for filesystem collector.",
    ),
    (
        "collector.filesystem.fs-types-exclude",
        node::DEFAULT_FS_TYPES_EXCLUDE,
        "Regexp of filesystem types to exclude for filesystem collector.",
    ),
    (
        "collector.diskstats.device-exclude",
        node::DEFAULT_DISKSTATS_DEVICE_EXCLUDE,
        "Regexp of diskstats devices to exclude.",
    ),
    (
        "collector.netdev.device-exclude",
        node::DEFAULT_NETDEV_DEVICE_EXCLUDE,
        "Regexp of net devices to exclude.",
    ),
    (
        "collector.netclass.ignored-devices",
        "^$",
        "Regexp of net devices to ignore for netclass collector.",
    ),
    (
        "collector.netstat.fields",
        node::DEFAULT_NETSTAT_FIELDS,
        "Regexp of fields to return for netstat collector.",
    ),
    (
        "collector.vmstat.fields",
        node::DEFAULT_VMSTAT_FIELDS,
        "Regexp of fields to return for vmstat collector.",
    ),
];

impl Args for NodeExporterArgs {
    fn augment_args(command: Command) -> Command {
        let mut command = command
            .arg(
                Arg::new("web.listen-address")
                    .long("web.listen-address")
                    .default_value("0.0.0.0:9100")
                    .value_parser(clap::value_parser!(SocketAddr))
                    .help("Address on which to expose metrics"),
            )
            .arg(
                Arg::new("path.procfs")
                    .long("path.procfs")
                    .default_value("/proc")
                    .help("procfs mountpoint"),
            )
            .arg(
                Arg::new("path.sysfs")
                    .long("path.sysfs")
                    .default_value("/sys")
                    .help("sysfs mountpoint"),
            )
            .arg(
                Arg::new("path.rootfs")
                    .long("path.rootfs")
                    .default_value("/")
                    .help("rootfs mountpoint"),
            )
            .arg(
                Arg::new("collector.textfile.directory")
                    .long("collector.textfile.directory")
                    .help("Directory to read text files with metrics from"),
            )
            .arg(
                Arg::new("collector.disable-defaults")
                    .long("collector.disable-defaults")
                    .action(ArgAction::SetTrue)
                    .help("Set all collectors to disabled by default"),
            );
        for (id, default, help) in PATTERNS {
            command = command.arg(
                Arg::new(*id)
                    .long(*id)
                    .default_value(*default)
                    .hide_default_value(true)
                    .help(*help),
            );
        }
        for name in node::collector_names() {
            let enable = format!("collector.{name}");
            let disable = format!("no-collector.{name}");
            command = command
                .arg(
                    Arg::new(enable.clone())
                        .long(enable)
                        .action(ArgAction::SetTrue)
                        .help(format!("Enable the {name} collector (default: enabled)")),
                )
                .arg(
                    Arg::new(disable.clone())
                        .long(disable)
                        .action(ArgAction::SetTrue)
                        .hide(true),
                );
        }
        command
    }

    fn augment_args_for_update(command: Command) -> Command {
        Self::augment_args(command)
    }
}

impl FromArgMatches for NodeExporterArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let text = |id: &str| matches.get_one::<String>(id).cloned().unwrap_or_default();
        let pattern = |id: &str| {
            Regex::new(&text(id)).map_err(|error| {
                clap::Error::raw(
                    clap::error::ErrorKind::ValueValidation,
                    format!("invalid --{id}: {error}\n"),
                )
            })
        };
        let mut config = Config {
            procfs: PathBuf::from(text("path.procfs")),
            sysfs: PathBuf::from(text("path.sysfs")),
            rootfs: PathBuf::from(text("path.rootfs")),
            textfile_directory: matches
                .get_one::<String>("collector.textfile.directory")
                .map(PathBuf::from),
            mount_points_exclude: pattern("collector.filesystem.mount-points-exclude")?,
            fs_types_exclude: pattern("collector.filesystem.fs-types-exclude")?,
            diskstats_device_exclude: pattern("collector.diskstats.device-exclude")?,
            netdev_device_exclude: pattern("collector.netdev.device-exclude")?,
            netclass_ignored_devices: pattern("collector.netclass.ignored-devices")?,
            netstat_fields: pattern("collector.netstat.fields")?,
            vmstat_fields: pattern("collector.vmstat.fields")?,
            ..Config::default()
        };
        if matches.get_flag("collector.disable-defaults") {
            config.collectors.clear();
        }
        for name in node::collector_names() {
            if matches.get_flag(&format!("collector.{name}")) {
                config.collectors.insert(name.to_owned());
            }
            if matches.get_flag(&format!("no-collector.{name}")) {
                config.collectors.remove(name);
            }
        }
        Ok(Self {
            listen: *matches
                .get_one::<SocketAddr>("web.listen-address")
                .expect("has a default"),
            config,
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

/// Binds `listen` and serves the exporter until `shutdown`, writing the bound address to
/// `address_file` when given (port 0 picks one).
///
/// # Errors
/// The address cannot be bound.
pub async fn start(
    config: Config,
    listen: SocketAddr,
    address_file: Option<&Path>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let exporter = Arc::new(NodeExporter::new(config)?);
    let listener = kelson_metrics::http::bind(listen, address_file, "the node exporter").await?;
    tokio::spawn(async move {
        if let Err(error) = node::serve(exporter, listener, shutdown).await {
            tracing::error!(error = format!("{error:#}"), "the node exporter stopped");
        }
    });
    Ok(())
}
