//! The node exporter: node_exporter's metric families (same names, help, types and labels, so
//! node-mixin and kubernetes-mixin rules work unchanged) read from /proc, /sys and a few system
//! calls at scrape time, served at `/metrics`.
//!
//! Each collector is a function that reads its files and adds samples; [`NodeExporter::scrape`]
//! runs the enabled ones in turn and adds `node_scrape_collector_duration_seconds` and
//! `node_scrape_collector_success` for each, as node_exporter does.

mod disk;
mod net;
mod proc;
mod system;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use regex::Regex;

use crate::exposition::{Families, Kind};

/// A collector: reads its sources and adds samples.
type Collect = fn(&Context, &mut Families) -> anyhow::Result<()>;

/// Every collector, by node_exporter's name, and whether it is on by default.
const COLLECTORS: &[(&str, Collect, bool)] = &[
    ("arp", net::arp, true),
    ("conntrack", proc::conntrack, true),
    ("cpu", proc::cpu, true),
    ("diskstats", disk::diskstats, true),
    ("entropy", proc::entropy, true),
    ("filefd", proc::filefd, true),
    ("filesystem", disk::filesystem, true),
    ("loadavg", proc::loadavg, true),
    ("meminfo", proc::meminfo, true),
    ("netclass", net::netclass, true),
    ("netdev", net::netdev, true),
    ("netstat", net::netstat, true),
    ("os", system::os, true),
    ("pressure", proc::pressure, true),
    ("selinux", system::selinux, true),
    ("sockstat", net::sockstat, true),
    ("softnet", net::softnet, true),
    ("stat", proc::stat, true),
    ("textfile", system::textfile, true),
    ("time", system::time, true),
    ("timex", system::timex, true),
    ("udp_queues", net::udp_queues, true),
    ("uname", system::uname, true),
    ("vmstat", proc::vmstat, true),
];

/// The names of every collector.
pub fn collector_names() -> impl Iterator<Item = &'static str> {
    COLLECTORS.iter().map(|(name, _, _)| *name)
}

/// node_exporter's default for `--collector.filesystem.mount-points-exclude`.
pub const DEFAULT_MOUNT_POINTS_EXCLUDE: &str =
    "^/(dev|proc|run|sys|mnt|media|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)";
/// node_exporter's default for `--collector.filesystem.fs-types-exclude`.
pub const DEFAULT_FS_TYPES_EXCLUDE: &str = "^(autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|hugetlbfs|iso9660|mqueue|nsfs|overlay|proc|procfs|pstore|rpc_pipefs|securityfs|selinuxfs|squashfs|sysfs|tracefs)$";
/// node_exporter's default for `--collector.diskstats.device-exclude`.
pub const DEFAULT_DISKSTATS_DEVICE_EXCLUDE: &str =
    r"^(ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$";
/// node_exporter's default for `--collector.netdev.device-exclude`.
pub const DEFAULT_NETDEV_DEVICE_EXCLUDE: &str = "^lo$";
/// node_exporter's default for `--collector.netstat.fields`.
pub const DEFAULT_NETSTAT_FIELDS: &str = "^(.*_(InErrors|InErrs)|Ip_Forwarding|Ip(6|Ext)_(InOctets|OutOctets)|Icmp6?_(InMsgs|OutMsgs)|TcpExt_(Listen.*|Syncookies.*|TCPSynRetrans|TCPTimeouts)|Tcp_(ActiveOpens|InSegs|OutSegs|OutRsts|PassiveOpens|RetransSegs|CurrEstab)|Udp6?_(InDatagrams|OutDatagrams|NoPorts|RcvbufErrors|SndbufErrors))$";
/// node_exporter's default for `--collector.vmstat.fields`.
pub const DEFAULT_VMSTAT_FIELDS: &str = "^(oom_kill|pgpg|pswp|pg.*fault).*";

/// What to collect and where from.
#[derive(Clone, Debug)]
pub struct Config {
    /// procfs mount point (`--path.procfs`).
    pub procfs: PathBuf,
    /// sysfs mount point (`--path.sysfs`).
    pub sysfs: PathBuf,
    /// The root filesystem (`--path.rootfs`): mount points are looked up under it.
    pub rootfs: PathBuf,
    /// The collectors to run.
    pub collectors: BTreeSet<String>,
    /// Directory of `*.prom` files to expose (`--collector.textfile.directory`).
    pub textfile_directory: Option<PathBuf>,
    /// Mount points the filesystem collector skips.
    pub mount_points_exclude: Regex,
    /// Filesystem types the filesystem collector skips.
    pub fs_types_exclude: Regex,
    /// Block devices the diskstats collector skips.
    pub diskstats_device_exclude: Regex,
    /// Network devices the netdev collector skips.
    pub netdev_device_exclude: Regex,
    /// Network devices the netclass collector skips.
    pub netclass_ignored_devices: Regex,
    /// The netstat fields exposed (`Proto_Field`).
    pub netstat_fields: Regex,
    /// The vmstat fields exposed.
    pub vmstat_fields: Regex,
}

impl Default for Config {
    fn default() -> Self {
        let regex = |pattern: &str| Regex::new(pattern).expect("default patterns are valid");
        Self {
            procfs: PathBuf::from("/proc"),
            sysfs: PathBuf::from("/sys"),
            rootfs: PathBuf::from("/"),
            collectors: COLLECTORS
                .iter()
                .filter(|(_, _, on)| *on)
                .map(|(name, _, _)| (*name).to_owned())
                .collect(),
            textfile_directory: None,
            mount_points_exclude: regex(DEFAULT_MOUNT_POINTS_EXCLUDE),
            fs_types_exclude: regex(DEFAULT_FS_TYPES_EXCLUDE),
            diskstats_device_exclude: regex(DEFAULT_DISKSTATS_DEVICE_EXCLUDE),
            netdev_device_exclude: regex(DEFAULT_NETDEV_DEVICE_EXCLUDE),
            netclass_ignored_devices: regex("^$"),
            netstat_fields: regex(DEFAULT_NETSTAT_FIELDS),
            vmstat_fields: regex(DEFAULT_VMSTAT_FIELDS),
        }
    }
}

/// What a collector reads through.
pub(crate) struct Context<'a> {
    config: &'a Config,
    page_size: u64,
}

impl Context<'_> {
    fn proc(&self, path: &str) -> PathBuf {
        self.config.procfs.join(path)
    }

    fn sys(&self, path: &str) -> PathBuf {
        self.config.sysfs.join(path)
    }

    fn read_proc(&self, path: &str) -> anyhow::Result<String> {
        read(&self.proc(path))
    }

    /// A /proc file holding one number.
    fn read_proc_number(&self, path: &str) -> anyhow::Result<f64> {
        self.read_proc(path)?
            .trim()
            .parse()
            .with_context(|| format!("malformed /proc/{path}"))
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("failed to read {}", path.display()))
}

/// A file that may well be missing (an attribute a device lacks): no error is built, since an
/// `anyhow` error captures a backtrace when `RUST_BACKTRACE` is set, and these go by the
/// dozen on every scrape.
fn read_optional(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The node exporter.
pub struct NodeExporter {
    config: Config,
    page_size: u64,
    process: Option<prometheus::process_collector::ProcessCollector>,
}

impl std::fmt::Debug for NodeExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeExporter")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl NodeExporter {
    /// An exporter with `config`.
    ///
    /// # Errors
    /// A collector name that does not exist.
    pub fn new(config: Config) -> anyhow::Result<Self> {
        for name in &config.collectors {
            if !COLLECTORS.iter().any(|(known, _, _)| known == name) {
                anyhow::bail!(
                    "unknown collector {name:?} (known: {})",
                    collector_names().collect::<Vec<_>>().join(", ")
                );
            }
        }
        Ok(Self {
            config,
            page_size: rustix::param::page_size() as u64,
            process: Some(prometheus::process_collector::ProcessCollector::for_self()),
        })
    }

    /// Runs every enabled collector and renders the exposition.
    #[must_use]
    pub fn scrape(&self) -> String {
        let context = Context {
            config: &self.config,
            page_size: self.page_size,
        };
        let mut families = Families::new();
        for (name, collect, _) in COLLECTORS {
            if !self.config.collectors.contains(*name) {
                continue;
            }
            let started = Instant::now();
            let result = collect(&context, &mut families);
            let seconds = started.elapsed().as_secs_f64();
            if let Err(error) = &result {
                tracing::debug!(
                    collector = name,
                    error = format!("{error:#}"),
                    "collector failed"
                );
            }
            families.gauge(
                "node_scrape_collector_duration_seconds",
                "node_exporter: Duration of a collector scrape.",
                &[("collector", name)],
                seconds,
            );
            families.gauge(
                "node_scrape_collector_success",
                "node_exporter: Whether a collector succeeded.",
                &[("collector", name)],
                if result.is_ok() { 1.0 } else { 0.0 },
            );
        }
        if let Some(process) = &self.process {
            add_process_metrics(process, &mut families);
        }
        families.render()
    }
}

/// The process_* families of this process (CPU, memory, file descriptors, start time).
fn add_process_metrics(
    collector: &prometheus::process_collector::ProcessCollector,
    families: &mut Families,
) {
    use prometheus::core::Collector as _;
    use prometheus::proto::MetricType;
    for family in collector.collect() {
        let kind = match family.get_field_type() {
            MetricType::COUNTER => Kind::Counter,
            _ => Kind::Gauge,
        };
        for metric in family.get_metric() {
            let value = match kind {
                Kind::Counter => metric.get_counter().get_value(),
                _ => metric.get_gauge().get_value(),
            };
            families.add(family.name(), family.help(), kind, &[], value);
        }
    }
    // the one process family the `prometheus` crate leaves out
    if let Ok(limits) = std::fs::read_to_string("/proc/self/limits")
        && let Some(value) = max_address_space(&limits)
    {
        families.gauge(
            "process_virtual_memory_max_bytes",
            "Maximum amount of virtual memory available in bytes.",
            &[],
            value,
        );
    }
}

/// The "Max address space" soft limit of /proc/PID/limits (unlimited as 2^64 - 1, as Go
/// clients report it).
fn max_address_space(limits: &str) -> Option<f64> {
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))?;
    let soft = line["Max address space".len()..]
        .split_ascii_whitespace()
        .next()?;
    if soft == "unlimited" {
        Some(u64::MAX as f64)
    } else {
        soft.parse().ok()
    }
}

/// Serves the exporter's `/metrics` and blackbox probes at `/probe` ([`crate::probe`]) on
/// `listener` until `shutdown`.
///
/// # Errors
/// The listener fails.
pub async fn serve(
    exporter: Arc<NodeExporter>,
    listener: tokio::net::TcpListener,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    crate::http::serve_with(
        listener,
        shutdown,
        "Node Exporter",
        crate::http::Render::Text(Arc::new(move || exporter.scrape())),
        true,
        axum::Router::new().route("/probe", axum::routing::get(crate::probe::handle)),
    )
    .await
}

/// Splits `text` into whitespace-separated fields and parses field `index` as a number.
fn field<T: std::str::FromStr>(fields: &[&str], index: usize) -> Option<T> {
    fields.get(index)?.parse().ok()
}

#[cfg(test)]
mod tests;
