//! Container metrics as the kubelet serves them from its embedded cAdvisor, at
//! `/metrics/cadvisor` (cAdvisor's family names and the labels `container`, `id`, `image`,
//! `name`, `namespace`, `pod`), and the resource metrics of `/metrics/resource` that
//! metrics-server reads. Usage comes from the runtime's statistics (CRI), the rest — user and
//! system time, CFS throttling, cache, swap, limits, OOM kills — from the cgroup files, on
//! cgroup v1, v2 and the hybrid layout.
//!
//! Rows: one per running container (`container` and `image` set, `id` its cgroup), one per
//! pod cgroup (`container=""`, `image=""`) and one per pod sandbox holding its network
//! counters (`container=""`, the pause image), as the kubelet's cAdvisor reports them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use kelson_metrics::exposition::Families;

use crate::pods::PodContext;
use crate::pods::spec::{
    CONTAINER_NAME_LABEL, NODE_LABEL, POD_NAME_LABEL, POD_NAMESPACE_LABEL, POD_UID_LABEL,
};

/// USER_HZ: cpuacct.stat counts in these ticks.
const USER_HZ: f64 = 100.0;

/// Where the cgroup controllers are mounted.
#[derive(Clone, Debug)]
pub struct Cgroups {
    root: PathBuf,
    v2: bool,
}

impl Default for Cgroups {
    fn default() -> Self {
        Self::at(Path::new("/sys/fs/cgroup"))
    }
}

impl Cgroups {
    /// The hierarchy mounted at `root`: v1 when it has per-controller directories.
    #[must_use]
    pub fn at(root: &Path) -> Self {
        let v2 = !root.join("memory").is_dir() && root.join("cgroup.controllers").exists();
        Self {
            root: root.to_owned(),
            v2,
        }
    }

    fn file(&self, controller: &str, cgroup: &str, name: &str) -> PathBuf {
        let relative = cgroup.trim_start_matches('/');
        if self.v2 {
            self.root.join(relative).join(name)
        } else {
            self.root.join(controller).join(relative).join(name)
        }
    }

    fn read(&self, controller: &str, cgroup: &str, name: &str) -> Option<String> {
        std::fs::read_to_string(self.file(controller, cgroup, name)).ok()
    }

    fn number(&self, controller: &str, cgroup: &str, name: &str) -> Option<f64> {
        self.read(controller, cgroup, name)?.trim().parse().ok()
    }

    /// OOM kills counted in a cgroup and below it, on cgroup v2 only (`memory.events`): v1
    /// counts a kill only in the killed task's own cgroup.
    #[must_use]
    pub fn oom_kills_below(&self, cgroup: &str) -> Option<f64> {
        if !self.v2 {
            return None;
        }
        self.read("", cgroup, "memory.events")?
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
    }

    /// Processes in a cgroup (`pids.current`).
    #[must_use]
    pub fn processes(&self, cgroup: &str) -> Option<u64> {
        self.read("pids", cgroup, "pids.current")?
            .trim()
            .parse()
            .ok()
    }

    /// Whether the cgroup exists.
    #[must_use]
    pub fn exists(&self, cgroup: &str) -> bool {
        self.file("memory", cgroup, "").is_dir()
    }

    /// Cumulative CPU nanoseconds and memory (usage, working set) of a cgroup, for rows the
    /// runtime has no statistics for (the root).
    #[must_use]
    pub fn usage(&self, cgroup: &str) -> (Option<f64>, Option<f64>, Option<f64>) {
        let inactive = |text: Option<String>, key: &str| {
            text.unwrap_or_default().lines().find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == key).then(|| v.trim().parse::<f64>().ok())?
            })
        };
        if self.v2 {
            let cpu = self.read("", cgroup, "cpu.stat").and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse::<f64>().ok())
            });
            let usage = self.number("", cgroup, "memory.current");
            let file = inactive(self.read("", cgroup, "memory.stat"), "inactive_file");
            let working = usage.map(|u| (u - file.unwrap_or(0.0)).max(0.0));
            (cpu.map(|c| c * 1000.0), usage, working)
        } else {
            let cpu = self.number("cpuacct", cgroup, "cpuacct.usage");
            let usage = self.number("memory", cgroup, "memory.usage_in_bytes");
            let file = inactive(
                self.read("memory", cgroup, "memory.stat"),
                "total_inactive_file",
            );
            let working = usage.map(|u| (u - file.unwrap_or(0.0)).max(0.0));
            (cpu, usage, working)
        }
    }

    /// The readings of one cgroup that the runtime's statistics lack.
    #[must_use]
    pub fn readings(&self, cgroup: &str) -> Readings {
        let mut readings = Readings::default();
        let stat = |text: Option<String>| -> HashMap<String, f64> {
            text.unwrap_or_default()
                .lines()
                .filter_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    Some((k.to_owned(), v.trim().parse().ok()?))
                })
                .collect()
        };
        if self.v2 {
            let cpu = stat(self.read("", cgroup, "cpu.stat"));
            readings.user_seconds = cpu.get("user_usec").map(|v| v / 1e6);
            readings.system_seconds = cpu.get("system_usec").map(|v| v / 1e6);
            readings.periods = cpu.get("nr_periods").copied();
            readings.throttled_periods = cpu.get("nr_throttled").copied();
            readings.throttled_seconds = cpu.get("throttled_usec").map(|v| v / 1e6);
            let memory = stat(self.read("", cgroup, "memory.stat"));
            readings.cache = memory.get("file").copied();
            readings.rss = memory.get("anon").copied();
            readings.mapped_file = memory.get("file_mapped").copied();
            readings.swap = self.number("", cgroup, "memory.swap.current");
            readings.max_usage = self.number("", cgroup, "memory.peak");
            let events = stat(self.read("", cgroup, "memory.events"));
            readings.oom_kills = events.get("oom_kill").copied();
            readings.memory_limit = self
                .read("", cgroup, "memory.max")
                .map(|t| t.trim().parse().unwrap_or(0.0));
            if let Some(max) = self.read("", cgroup, "cpu.max") {
                let mut fields = max.split_whitespace();
                readings.quota = fields.next().map(|q| q.parse().unwrap_or(0.0));
                readings.period = fields.next().and_then(|p| p.parse().ok());
            }
            // cpu.weight 1..10000 maps back to shares 2..262144 as the kubelet converts them
            readings.shares = self
                .number("", cgroup, "cpu.weight")
                .map(|w| (((w - 1.0) * 262_142.0) / 9999.0 + 2.0).round());
            readings.io = parse_io_stat(&self.read("", cgroup, "io.stat").unwrap_or_default());
        } else {
            let cpuacct = stat(self.read("cpuacct", cgroup, "cpuacct.stat"));
            readings.user_seconds = cpuacct.get("user").map(|t| t / USER_HZ);
            readings.system_seconds = cpuacct.get("system").map(|t| t / USER_HZ);
            let cpu = stat(self.read("cpu", cgroup, "cpu.stat"));
            readings.periods = cpu.get("nr_periods").copied();
            readings.throttled_periods = cpu.get("nr_throttled").copied();
            readings.throttled_seconds = cpu.get("throttled_time").map(|v| v / 1e9);
            let memory = stat(self.read("memory", cgroup, "memory.stat"));
            readings.cache = memory.get("total_cache").copied();
            readings.rss = memory.get("total_rss").copied();
            readings.mapped_file = memory.get("total_mapped_file").copied();
            readings.swap = memory.get("total_swap").copied();
            readings.max_usage = self.number("memory", cgroup, "memory.max_usage_in_bytes");
            readings.failcnt = self.number("memory", cgroup, "memory.failcnt");
            let oom = stat(self.read("memory", cgroup, "memory.oom_control"));
            readings.oom_kills = oom.get("oom_kill").copied();
            readings.memory_limit = self.number("memory", cgroup, "memory.limit_in_bytes");
            readings.quota = self.number("cpu", cgroup, "cpu.cfs_quota_us");
            readings.period = self.number("cpu", cgroup, "cpu.cfs_period_us");
            readings.shares = self.number("cpu", cgroup, "cpu.shares");
            // the throttle files count IO at every level; the others only for CFQ
            let blkio = |name: &str| {
                self.read("blkio", cgroup, &format!("blkio.throttle.{name}"))
                    .or_else(|| self.read("blkio", cgroup, &format!("blkio.{name}")))
                    .unwrap_or_default()
            };
            readings.io = parse_blkio(
                &blkio("io_service_bytes_recursive"),
                &blkio("io_serviced_recursive"),
            );
        }
        readings
    }
}

/// Block IO of one device, as a cgroup counted it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeviceIo {
    /// Device major number.
    pub major: u32,
    /// Device minor number.
    pub minor: u32,
    /// Bytes read.
    pub read_bytes: f64,
    /// Bytes written.
    pub write_bytes: f64,
    /// Reads completed.
    pub reads: f64,
    /// Writes completed.
    pub writes: f64,
}

fn device_of(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// cgroup v2 `io.stat`: `8:0 rbytes=… wbytes=… rios=… wios=… dbytes=… dios=…` per device.
#[must_use]
pub fn parse_io_stat(text: &str) -> Vec<DeviceIo> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (major, minor) = device_of(fields.next()?)?;
            let mut io = DeviceIo {
                major,
                minor,
                ..DeviceIo::default()
            };
            for (key, value) in fields.filter_map(|f| f.split_once('=')) {
                let value = value.parse().unwrap_or(0.0);
                match key {
                    "rbytes" => io.read_bytes = value,
                    "wbytes" => io.write_bytes = value,
                    "rios" => io.reads = value,
                    "wios" => io.writes = value,
                    _ => {}
                }
            }
            Some(io)
        })
        .collect()
}

/// cgroup v1 `blkio.*io_service_bytes_recursive` and `blkio.*io_serviced_recursive`:
/// `8:0 Read 4096` lines per device and operation.
#[must_use]
pub fn parse_blkio(bytes: &str, serviced: &str) -> Vec<DeviceIo> {
    let mut devices: std::collections::BTreeMap<(u32, u32), DeviceIo> =
        std::collections::BTreeMap::new();
    for (text, counts) in [(bytes, false), (serviced, true)] {
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            let (Some(device), Some(operation), Some(value)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let (Some((major, minor)), Ok(value)) = (device_of(device), value.parse::<f64>())
            else {
                continue;
            };
            let io = devices.entry((major, minor)).or_insert_with(|| DeviceIo {
                major,
                minor,
                ..DeviceIo::default()
            });
            match (operation, counts) {
                ("Read", false) => io.read_bytes = value,
                ("Write", false) => io.write_bytes = value,
                ("Read", true) => io.reads = value,
                ("Write", true) => io.writes = value,
                _ => {}
            }
        }
    }
    devices.into_values().collect()
}

/// The `/dev` name of a block device (`/dev/vda`), from sysfs under `sys_block`
/// (`/sys/dev/block`).
#[must_use]
pub fn device_name(sys_block: &Path, major: u32, minor: u32) -> Option<String> {
    let uevent = std::fs::read_to_string(sys_block.join(format!("{major}:{minor}/uevent"))).ok()?;
    uevent
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .map(|name| format!("/dev/{name}"))
}

/// What the cgroup files say about one cgroup (`None` where a file is missing).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Readings {
    /// User CPU seconds.
    pub user_seconds: Option<f64>,
    /// System CPU seconds.
    pub system_seconds: Option<f64>,
    /// CFS enforcement periods elapsed.
    pub periods: Option<f64>,
    /// Periods in which the cgroup was throttled.
    pub throttled_periods: Option<f64>,
    /// Time throttled.
    pub throttled_seconds: Option<f64>,
    /// Page cache bytes.
    pub cache: Option<f64>,
    /// Anonymous (RSS) bytes.
    pub rss: Option<f64>,
    /// Mapped file bytes.
    pub mapped_file: Option<f64>,
    /// Swap bytes.
    pub swap: Option<f64>,
    /// Peak usage.
    pub max_usage: Option<f64>,
    /// Times the limit was hit (v1).
    pub failcnt: Option<f64>,
    /// OOM kills.
    pub oom_kills: Option<f64>,
    /// Memory limit (0 when unlimited on v2; v1 reports its huge "unlimited" number).
    pub memory_limit: Option<f64>,
    /// CFS quota in microseconds (-1 when unlimited on v1, 0 on v2's `max`).
    pub quota: Option<f64>,
    /// CFS period in microseconds.
    pub period: Option<f64>,
    /// CPU shares.
    pub shares: Option<f64>,
    /// Block IO per device.
    pub io: Vec<DeviceIo>,
}

/// The labels of one row, in cAdvisor's order (sorted by name).
struct Row<'a> {
    container: &'a str,
    id: &'a str,
    image: &'a str,
    name: &'a str,
    namespace: &'a str,
    pod: &'a str,
}

impl Row<'_> {
    fn labels(&self) -> [(&str, &str); 6] {
        [
            ("container", self.container),
            ("id", self.id),
            ("image", self.image),
            ("name", self.name),
            ("namespace", self.namespace),
            ("pod", self.pod),
        ]
    }

    fn with<'b>(&'b self, extra: (&'b str, &'b str)) -> Vec<(&'b str, &'b str)> {
        let mut labels = self.labels().to_vec();
        let at = labels
            .iter()
            .position(|(k, _)| *k > extra.0)
            .unwrap_or(labels.len());
        labels.insert(at, extra);
        labels
    }
}

fn u64_value(v: Option<&cri::UInt64Value>) -> Option<f64> {
    v.map(|v| v.value as f64)
}

/// Adds the CPU and memory families of one row from runtime statistics and cgroup readings.
fn usage_rows(
    out: &mut Families,
    row: &Row,
    cpu: Option<&cri::CpuUsage>,
    memory: Option<&cri::MemoryUsage>,
    readings: &Readings,
) {
    let labels = row.labels();
    if let Some(total) = cpu.and_then(|c| u64_value(c.usage_core_nano_seconds.as_ref())) {
        out.counter(
            "container_cpu_usage_seconds_total",
            "Cumulative cpu time consumed in seconds.",
            &row.with(("cpu", "total")),
            total / 1e9,
        );
    }
    // throttling is only reported for cgroups with a CFS quota
    let limited = readings.quota.is_some_and(|q| q > 0.0);
    let throttling = |value: Option<f64>| value.filter(|_| limited);
    let counters = [
        (
            "container_cpu_user_seconds_total",
            "Cumulative user cpu time consumed in seconds.",
            readings.user_seconds,
        ),
        (
            "container_cpu_system_seconds_total",
            "Cumulative system cpu time consumed in seconds.",
            readings.system_seconds,
        ),
        (
            "container_cpu_cfs_periods_total",
            "Number of elapsed enforcement period intervals.",
            throttling(readings.periods),
        ),
        (
            "container_cpu_cfs_throttled_periods_total",
            "Number of throttled period intervals.",
            throttling(readings.throttled_periods),
        ),
        (
            "container_cpu_cfs_throttled_seconds_total",
            "Total time duration the container has been throttled.",
            throttling(readings.throttled_seconds),
        ),
        (
            "container_oom_events_total",
            "Count of out of memory events observed for the container",
            readings.oom_kills,
        ),
    ];
    for (name, help, value) in counters {
        if let Some(value) = value {
            out.counter(name, help, &labels, value);
        }
    }
    let memory_gauges = [
        (
            "container_memory_usage_bytes",
            "Current memory usage in bytes, including all memory regardless of when it was accessed",
            memory.and_then(|m| u64_value(m.usage_bytes.as_ref())),
        ),
        (
            "container_memory_working_set_bytes",
            "Current working set in bytes.",
            memory.and_then(|m| u64_value(m.working_set_bytes.as_ref())),
        ),
        (
            "container_memory_rss",
            "Size of RSS in bytes.",
            memory
                .and_then(|m| u64_value(m.rss_bytes.as_ref()))
                .or(readings.rss),
        ),
        (
            "container_memory_cache",
            "Number of bytes of page cache memory.",
            readings.cache,
        ),
        (
            "container_memory_swap",
            "Container swap usage in bytes.",
            readings.swap,
        ),
        (
            "container_memory_mapped_file",
            "Size of memory mapped files in bytes.",
            readings.mapped_file,
        ),
        (
            "container_memory_max_usage_bytes",
            "Maximum memory usage recorded in bytes",
            readings.max_usage,
        ),
    ];
    for (name, help, value) in memory_gauges {
        if let Some(value) = value {
            out.gauge(name, help, &labels, value);
        }
    }
    if let Some(failures) = readings.failcnt {
        out.counter(
            "container_memory_failcnt",
            "Number of memory usage hits limits",
            &labels,
            failures,
        );
    }
    io_rows(out, row, &readings.io, Path::new("/sys/dev/block"));
}

/// cAdvisor's per-device IO counters of one row (devices sysfs cannot name are left out).
fn io_rows(out: &mut Families, row: &Row, io: &[DeviceIo], sys_block: &Path) {
    for device in io {
        let Some(name) = device_name(sys_block, device.major, device.minor) else {
            continue;
        };
        let labels = row.with(("device", &name));
        for (family, help, value) in [
            (
                "container_fs_reads_bytes_total",
                "Cumulative count of bytes read",
                device.read_bytes,
            ),
            (
                "container_fs_writes_bytes_total",
                "Cumulative count of bytes written",
                device.write_bytes,
            ),
            (
                "container_fs_reads_total",
                "Cumulative count of reads completed",
                device.reads,
            ),
            (
                "container_fs_writes_total",
                "Cumulative count of writes completed",
                device.writes,
            ),
        ] {
            out.counter(family, help, &labels, value);
        }
    }
}

/// The `container_spec_*` families of one container.
fn spec_rows(out: &mut Families, row: &Row, readings: &Readings) {
    let labels = row.labels();
    // cAdvisor reports "no limit" as 0
    let limit = readings
        .memory_limit
        .map(|l| if l >= 9.2e18 { 0.0 } else { l });
    let quota = readings.quota.filter(|q| *q > 0.0);
    for (name, help, value) in [
        (
            "container_spec_cpu_period",
            "CPU period of the container.",
            readings.period,
        ),
        (
            "container_spec_cpu_quota",
            "CPU quota of the container.",
            quota,
        ),
        (
            "container_spec_cpu_shares",
            "CPU share of the container.",
            readings.shares,
        ),
        (
            "container_spec_memory_limit_bytes",
            "Memory limit for the container.",
            limit,
        ),
    ] {
        if let Some(value) = value {
            out.gauge(name, help, &labels, value);
        }
    }
}

/// The pod's cgroup, `/kubepods[/burstable|/besteffort]/pod<uid>`, whichever exists.
#[must_use]
pub fn pod_cgroup(cgroups: &Cgroups, uid: &str) -> Option<String> {
    crate::pods::spec::pod_cgroup_candidates(uid)
        .into_iter()
        .find(|path| cgroups.exists(path))
}

/// One scrape of `/metrics/cadvisor`.
///
/// # Errors
/// When the runtime cannot be asked.
pub async fn render(
    ctx: &PodContext,
    cgroups: &Cgroups,
    sandbox_image: &tokio::sync::OnceCell<String>,
) -> crate::cri::Result<String> {
    let node = [(NODE_LABEL, ctx.node.name.as_str())];
    let containers = ctx.cri.list_containers(&node).await?;
    let sandboxes = ctx.cri.list_pod_sandboxes(&node).await?;
    let stats = ctx.cri.list_pod_sandbox_stats(&node).await?;
    // the runtime's configuration: asked until it answers, then kept
    let sandbox_image = sandbox_image
        .get_or_try_init(|| ctx.cri.sandbox_image())
        .await
        .map_or("", String::as_str);
    let now = jiff::Timestamp::now().as_second() as f64;
    let layers = ctx
        .cri
        .image_fs_mountpoint()
        .await
        .ok()
        .flatten()
        .and_then(|m| layer_filesystem(&m));
    let mut out = Families::new();
    let cores = std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .count();
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .map(|t| t.trim().to_owned())
            .unwrap_or_default()
    };
    let (boot_id, machine_id, system_uuid) = (
        read("/proc/sys/kernel/random/boot_id"),
        read("/etc/machine-id"),
        read("/sys/class/dmi/id/product_uuid"),
    );
    let machine = [
        ("boot_id", boot_id.as_str()),
        ("machine_id", machine_id.as_str()),
        ("system_uuid", system_uuid.as_str()),
    ];
    out.gauge(
        "machine_cpu_cores",
        "Number of logical CPU cores.",
        &machine,
        cores as f64,
    );
    out.gauge(
        "machine_memory_bytes",
        "Amount of memory installed on the machine.",
        &machine,
        crate::host::memory_total() as f64,
    );
    // the machine as a whole, as cAdvisor's root row
    let (cpu, usage, working) = cgroups.usage("/");
    let root = Row {
        container: "",
        id: "/",
        image: "",
        name: "",
        namespace: "",
        pod: "",
    };
    let root_cpu = cpu.map(|c| cri::CpuUsage {
        usage_core_nano_seconds: Some(cri::UInt64Value { value: c as u64 }),
        ..Default::default()
    });
    let root_memory = cri::MemoryUsage {
        usage_bytes: usage.map(|u| cri::UInt64Value { value: u as u64 }),
        working_set_bytes: working.map(|w| cri::UInt64Value { value: w as u64 }),
        ..Default::default()
    };
    usage_rows(
        &mut out,
        &root,
        root_cpu.as_ref(),
        Some(&root_memory),
        &cgroups.readings("/"),
    );
    for stat in &stats {
        let (Some(attributes), Some(linux)) = (stat.attributes.as_ref(), stat.linux.as_ref())
        else {
            continue;
        };
        let label = |key: &str| attributes.labels.get(key).map_or("", String::as_str);
        let (namespace, pod, uid) = (
            label(POD_NAMESPACE_LABEL),
            label(POD_NAME_LABEL),
            label(POD_UID_LABEL),
        );
        let Some(cgroup) = pod_cgroup(cgroups, uid) else {
            continue;
        };
        // the pod's cgroup
        let pod_row = Row {
            container: "",
            id: &cgroup,
            image: "",
            name: "",
            namespace,
            pod,
        };
        usage_rows(
            &mut out,
            &pod_row,
            linux.cpu.as_ref(),
            linux.memory.as_ref(),
            &cgroups.readings(&cgroup),
        );
        // the sandbox, with the pod's network
        let sandbox_id = attributes.id.as_str();
        let sandbox_cgroup = format!("{cgroup}/{sandbox_id}");
        let pause_image = if sandboxes.iter().any(|s| s.id == sandbox_id) {
            sandbox_image
        } else {
            ""
        };
        let sandbox_row = Row {
            container: "",
            id: &sandbox_cgroup,
            image: pause_image,
            name: sandbox_id,
            namespace,
            pod,
        };
        network_rows(&mut out, &sandbox_row, linux.network.as_ref());
        for container_stats in &linux.containers {
            let Some(attributes) = container_stats.attributes.as_ref() else {
                continue;
            };
            let Some(container) = containers.iter().find(|c| c.id == attributes.id) else {
                continue;
            };
            if container.state != cri::ContainerState::ContainerRunning as i32 {
                continue;
            }
            let id = format!("{cgroup}/{}", container.id);
            let image = container
                .image
                .as_ref()
                .map_or(container.image_ref.as_str(), |i| i.image.as_str());
            let row = Row {
                container: container
                    .labels
                    .get(CONTAINER_NAME_LABEL)
                    .map_or("", String::as_str),
                id: &id,
                image,
                name: &container.id,
                namespace,
                pod,
            };
            let readings = cgroups.readings(&id);
            usage_rows(
                &mut out,
                &row,
                container_stats.cpu.as_ref(),
                container_stats.memory.as_ref(),
                &readings,
            );
            spec_rows(&mut out, &row, &readings);
            if let Some(fs) = &layers {
                filesystem_rows(&mut out, &row, container_stats.writable_layer.as_ref(), fs);
            }
            let labels = row.labels();
            out.gauge(
                "container_start_time_seconds",
                "Start time of the container since unix epoch in seconds.",
                &labels,
                (container.created_at / 1_000_000_000) as f64,
            );
            out.gauge(
                "container_last_seen",
                "Last time a container was seen by the exporter",
                &labels,
                now,
            );
        }
    }
    Ok(out.render())
}

/// The filesystem of containers' writable layers: its device (as cAdvisor names it) and size.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerFilesystem {
    /// `/dev/vda1`.
    pub device: String,
    /// Bytes in all.
    pub capacity: f64,
    /// Inodes in all.
    pub inodes: f64,
    /// Inodes free.
    pub inodes_free: f64,
}

/// The device mounted at the longest mount point that holds `path`, from a mountinfo text.
#[must_use]
pub fn mount_source(mountinfo: &str, path: &str) -> Option<String> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // id parent major:minor root mountpoint options ... - fstype source superoptions
            let mountpoint = line.split(' ').nth(4)?;
            let (_, after) = line.split_once(" - ")?;
            let source = after.split(' ').nth(1)?;
            let holds = path == mountpoint
                || mountpoint == "/"
                || path.starts_with(&format!("{}/", mountpoint.trim_end_matches('/')));
            holds.then_some((mountpoint.len(), source))
        })
        .max_by_key(|(length, _)| *length)
        .map(|(_, source)| source.to_owned())
}

/// The filesystem at `mountpoint`: its device from /proc/self/mountinfo, its size from statvfs.
fn layer_filesystem(mountpoint: &str) -> Option<LayerFilesystem> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let device = mount_source(&mountinfo, mountpoint)?;
    let stat = rustix::fs::statvfs(mountpoint).ok()?;
    Some(LayerFilesystem {
        device,
        capacity: (stat.f_blocks * stat.f_frsize) as f64,
        inodes: stat.f_files as f64,
        inodes_free: stat.f_ffree as f64,
    })
}

/// cAdvisor's filesystem gauges of one container: its writable layer's usage on `fs`.
fn filesystem_rows(
    out: &mut Families,
    row: &Row,
    layer: Option<&cri::FilesystemUsage>,
    fs: &LayerFilesystem,
) {
    let Some(used) = layer.and_then(|l| u64_value(l.used_bytes.as_ref())) else {
        return;
    };
    let labels = row.with(("device", &fs.device));
    for (family, help, value) in [
        (
            "container_fs_usage_bytes",
            "Number of bytes that are consumed by the container on this filesystem.",
            used,
        ),
        (
            "container_fs_limit_bytes",
            "Number of bytes that can be consumed by the container on this filesystem.",
            fs.capacity,
        ),
        ("container_fs_inodes_total", "Number of Inodes", fs.inodes),
        (
            "container_fs_inodes_free",
            "Number of available Inodes",
            fs.inodes_free,
        ),
    ] {
        out.gauge(family, help, &labels, value);
    }
}

/// Nanoseconds since the epoch to milliseconds.
fn millis(nanos: i64) -> i64 {
    nanos / 1_000_000
}

/// One scrape of `/metrics/resource`: the node's, pods' and containers' cumulative CPU time and
/// working set, each sample stamped with the time it was read — what metrics-server reads.
///
/// # Errors
/// When the runtime cannot be asked.
pub async fn resource(ctx: &PodContext, cgroups: &Cgroups) -> crate::cri::Result<String> {
    use kelson_metrics::exposition::Kind;
    let node = [(NODE_LABEL, ctx.node.name.as_str())];
    let stats = ctx.cri.list_pod_sandbox_stats(&node).await?;
    let containers = ctx.cri.list_containers(&node).await?;
    let mut out = Families::new();
    let now = millis(i64::try_from(jiff::Timestamp::now().as_nanosecond()).unwrap_or(0));
    let (cpu, _, working) = cgroups.usage("/");
    if let Some(cpu) = cpu {
        out.add_at(
            "node_cpu_usage_seconds_total",
            "[STABLE] Cumulative cpu time consumed by the node in core-seconds",
            Kind::Counter,
            &[],
            cpu / 1e9,
            now,
        );
    }
    if let Some(working) = working {
        out.add_at(
            "node_memory_working_set_bytes",
            "[STABLE] Current working set of the node in bytes",
            Kind::Gauge,
            &[],
            working,
            now,
        );
    }
    for stat in &stats {
        let (Some(attributes), Some(linux)) = (stat.attributes.as_ref(), stat.linux.as_ref())
        else {
            continue;
        };
        let label = |key: &str| attributes.labels.get(key).map_or("", String::as_str);
        let pod = [
            ("namespace", label(POD_NAMESPACE_LABEL)),
            ("pod", label(POD_NAME_LABEL)),
        ];
        if let Some(cpu) = linux.cpu.as_ref()
            && let Some(total) = u64_value(cpu.usage_core_nano_seconds.as_ref())
        {
            out.add_at(
                "pod_cpu_usage_seconds_total",
                "[STABLE] Cumulative cpu time consumed by the pod in core-seconds",
                Kind::Counter,
                &pod,
                total / 1e9,
                millis(cpu.timestamp),
            );
        }
        if let Some(memory) = linux.memory.as_ref()
            && let Some(working) = u64_value(memory.working_set_bytes.as_ref())
        {
            out.add_at(
                "pod_memory_working_set_bytes",
                "[STABLE] Current working set of the pod in bytes",
                Kind::Gauge,
                &pod,
                working,
                millis(memory.timestamp),
            );
        }
        for container_stats in &linux.containers {
            let Some(container) = container_stats
                .attributes
                .as_ref()
                .and_then(|a| containers.iter().find(|c| c.id == a.id))
            else {
                continue;
            };
            let name = container
                .labels
                .get(CONTAINER_NAME_LABEL)
                .map_or("", String::as_str);
            let labels = [("container", name), pod[0], pod[1]];
            if let Some(cpu) = container_stats.cpu.as_ref()
                && let Some(total) = u64_value(cpu.usage_core_nano_seconds.as_ref())
            {
                out.add_at(
                    "container_cpu_usage_seconds_total",
                    "[STABLE] Cumulative cpu time consumed by the container in core-seconds",
                    Kind::Counter,
                    &labels,
                    total / 1e9,
                    millis(cpu.timestamp),
                );
            }
            if let Some(memory) = container_stats.memory.as_ref()
                && let Some(working) = u64_value(memory.working_set_bytes.as_ref())
            {
                out.add_at(
                    "container_memory_working_set_bytes",
                    "[STABLE] Current working set of the container in bytes",
                    Kind::Gauge,
                    &labels,
                    working,
                    millis(memory.timestamp),
                );
            }
            out.add_at(
                "container_start_time_seconds",
                "[STABLE] Start time of the container since unix epoch in seconds",
                Kind::Gauge,
                &labels,
                (container.created_at / 1_000_000_000) as f64,
                millis(container.created_at),
            );
        }
    }
    out.gauge(
        "resource_scrape_error",
        "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise",
        &[],
        0.0,
    );
    Ok(out.render())
}

/// The network families of a sandbox row, one series per interface.
fn network_rows(out: &mut Families, row: &Row, network: Option<&cri::NetworkUsage>) {
    let Some(network) = network else {
        return;
    };
    let mut interfaces: Vec<&cri::NetworkInterfaceUsage> = network.interfaces.iter().collect();
    if interfaces.is_empty()
        && let Some(default) = network.default_interface.as_ref()
    {
        interfaces.push(default);
    }
    for interface in interfaces {
        let labels = row.with(("interface", interface.name.as_str()));
        for (name, help, value) in [
            (
                "container_network_receive_bytes_total",
                "Cumulative count of bytes received",
                &interface.rx_bytes,
            ),
            (
                "container_network_receive_errors_total",
                "Cumulative count of errors encountered while receiving",
                &interface.rx_errors,
            ),
            (
                "container_network_transmit_bytes_total",
                "Cumulative count of bytes transmitted",
                &interface.tx_bytes,
            ),
            (
                "container_network_transmit_errors_total",
                "Cumulative count of errors encountered while transmitting",
                &interface.tx_errors,
            ),
        ] {
            if let Some(value) = u64_value(value.as_ref()) {
                out.counter(name, help, &labels, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_row() -> Row<'static> {
        Row {
            container: "c",
            id: "/x",
            image: "i",
            name: "n",
            namespace: "ns",
            pod: "p",
        }
    }

    fn write(root: &Path, path: &str, text: &str) {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn v1_cgroup_files_give_throttling_cache_and_limits() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let cgroup = "kubepods/burstable/podu1/c1";
        std::fs::create_dir_all(root.join("memory").join(cgroup)).unwrap();
        write(
            root,
            &format!("cpuacct/{cgroup}/cpuacct.stat"),
            "user 250\nsystem 50\n",
        );
        write(
            root,
            &format!("cpu/{cgroup}/cpu.stat"),
            "nr_periods 60\nnr_throttled 59\nthrottled_time 4500000000\n",
        );
        write(root, &format!("cpu/{cgroup}/cpu.cfs_quota_us"), "20000\n");
        write(root, &format!("cpu/{cgroup}/cpu.cfs_period_us"), "100000\n");
        write(root, &format!("cpu/{cgroup}/cpu.shares"), "102\n");
        write(
            root,
            &format!("memory/{cgroup}/memory.stat"),
            "cache 1\nrss 2\ntotal_cache 4096\ntotal_rss 8192\ntotal_mapped_file 0\ntotal_swap 0\n",
        );
        write(
            root,
            &format!("memory/{cgroup}/memory.limit_in_bytes"),
            "67108864\n",
        );
        write(
            root,
            &format!("memory/{cgroup}/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
        );
        let cgroups = Cgroups::at(root);
        assert!(!cgroups.v2);
        assert!(cgroups.exists("/kubepods/burstable/podu1/c1"));
        let readings = cgroups.readings("/kubepods/burstable/podu1/c1");
        assert_eq!(readings.user_seconds, Some(2.5));
        assert_eq!(readings.system_seconds, Some(0.5));
        assert_eq!(readings.throttled_periods, Some(59.0));
        assert_eq!(readings.throttled_seconds, Some(4.5));
        assert_eq!(readings.cache, Some(4096.0));
        assert_eq!(readings.rss, Some(8192.0));
        assert_eq!(readings.oom_kills, Some(1.0));
        assert_eq!(readings.quota, Some(20000.0));
        assert_eq!(readings.memory_limit, Some(67_108_864.0));
        assert_eq!(readings.shares, Some(102.0));
        assert_eq!(
            pod_cgroup(&cgroups, "u1").as_deref(),
            Some("/kubepods/burstable/podu1")
        );
    }

    #[test]
    fn v2_cgroup_files_give_the_same_readings() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "cgroup.controllers", "cpu memory\n");
        let cgroup = "kubepods/podu2/c2";
        write(
            root,
            &format!("{cgroup}/cpu.stat"),
            "usage_usec 3000000\nuser_usec 2000000\nsystem_usec 1000000\nnr_periods 10\nnr_throttled 2\nthrottled_usec 300000\n",
        );
        write(root, &format!("{cgroup}/cpu.max"), "50000 100000\n");
        write(root, &format!("{cgroup}/cpu.weight"), "10000\n");
        write(
            root,
            &format!("{cgroup}/memory.stat"),
            "anon 100\nfile 200\nfile_mapped 5\n",
        );
        write(root, &format!("{cgroup}/memory.max"), "max\n");
        write(
            root,
            &format!("{cgroup}/memory.events"),
            "low 0\nmax 3\noom 1\noom_kill 1\n",
        );
        let cgroups = Cgroups::at(root);
        assert!(cgroups.v2);
        let readings = cgroups.readings("/kubepods/podu2/c2");
        assert_eq!(readings.user_seconds, Some(2.0));
        assert_eq!(readings.throttled_seconds, Some(0.3));
        assert_eq!(readings.quota, Some(50000.0));
        assert_eq!(readings.period, Some(100_000.0));
        assert_eq!(readings.shares, Some(262_144.0));
        assert_eq!(readings.memory_limit, Some(0.0));
        assert_eq!(readings.rss, Some(100.0));
        assert_eq!(readings.cache, Some(200.0));
        assert_eq!(readings.oom_kills, Some(1.0));
    }

    #[test]
    fn extra_labels_keep_the_label_order() {
        let row = test_row();
        let labels: Vec<&str> = row.with(("cpu", "total")).iter().map(|(k, _)| *k).collect();
        assert_eq!(
            labels,
            [
                "container",
                "cpu",
                "id",
                "image",
                "name",
                "namespace",
                "pod"
            ]
        );
        let labels: Vec<&str> = row
            .with(("interface", "eth0"))
            .iter()
            .map(|(k, _)| *k)
            .collect();
        assert_eq!(
            labels,
            [
                "container",
                "id",
                "image",
                "interface",
                "name",
                "namespace",
                "pod"
            ]
        );
    }

    #[test]
    fn block_io_is_read_per_device_on_v1_and_v2_and_named_from_sysfs() {
        let v2 = parse_io_stat(
            "254:0 rbytes=1048576 wbytes=4096 rios=16 wios=1 dbytes=0 dios=0\n7:3 rbytes=0\n",
        );
        assert_eq!(
            v2[0],
            DeviceIo {
                major: 254,
                minor: 0,
                read_bytes: 1_048_576.0,
                write_bytes: 4096.0,
                reads: 16.0,
                writes: 1.0,
            }
        );
        assert_eq!(v2.len(), 2);
        let v1 = parse_blkio(
            "254:0 Read 1048576\n254:0 Write 4096\n254:0 Sync 0\n254:0 Total 1052672\nTotal 1052672\n",
            "254:0 Read 16\n254:0 Write 1\n254:0 Total 17\nTotal 17\n",
        );
        assert_eq!(v1, vec![v2[0].clone()]);
        // an empty file (a machine without per-cgroup block accounting) gives no devices
        assert!(parse_blkio("Total 0\n", "Total 0\n").is_empty());

        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "254:0/uevent",
            "MAJOR=254\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\n",
        );
        assert_eq!(device_name(dir.path(), 254, 0).as_deref(), Some("/dev/vda"));
        assert_eq!(device_name(dir.path(), 7, 3), None);
        let row = test_row();
        let mut out = Families::new();
        io_rows(&mut out, &row, &v2, dir.path());
        let text = out.render();
        assert!(
            text.contains(
                "container_fs_reads_bytes_total{container=\"c\",device=\"/dev/vda\",id=\"/x\",image=\"i\",name=\"n\",namespace=\"ns\",pod=\"p\"} 1048576"
            ),
            "{text}"
        );
        assert!(text.contains("# TYPE container_fs_writes_total counter"));
        assert!(!text.contains("7:3"), "unnamed devices are left out");
    }

    #[test]
    fn the_layer_filesystem_is_the_longest_mount_holding_it() {
        let mountinfo = "\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
30 22 0:26 / /var/lib/containerd rw,relatime shared:9 - xfs /dev/vdb rw
31 22 0:27 / /var/lib/containerd2 rw,relatime shared:10 - tmpfs tmpfs rw
";
        assert_eq!(
            mount_source(
                mountinfo,
                "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs"
            )
            .as_deref(),
            Some("/dev/vdb")
        );
        assert_eq!(
            mount_source(mountinfo, "/var/lib/other").as_deref(),
            Some("/dev/vda1")
        );
        let row = test_row();
        let fs = LayerFilesystem {
            device: "/dev/vdb".into(),
            capacity: 1e9,
            inodes: 1000.0,
            inodes_free: 900.0,
        };
        let mut out = Families::new();
        let layer = cri::FilesystemUsage {
            used_bytes: Some(cri::UInt64Value { value: 4096 }),
            ..Default::default()
        };
        filesystem_rows(&mut out, &row, Some(&layer), &fs);
        filesystem_rows(&mut out, &row, None, &fs);
        let text = out.render();
        assert!(text.contains("container_fs_usage_bytes{container=\"c\",device=\"/dev/vdb\",id=\"/x\",image=\"i\",name=\"n\",namespace=\"ns\",pod=\"p\"} 4096"), "{text}");
        assert!(text.contains("container_fs_inodes_free{"));
        assert_eq!(text.matches("container_fs_usage_bytes{").count(), 1);
    }

    #[test]
    fn v1_block_io_comes_from_the_throttle_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let cgroup = "kubepods/podu3/c3";
        std::fs::create_dir_all(root.join("memory").join(cgroup)).unwrap();
        write(
            root,
            &format!("blkio/{cgroup}/blkio.throttle.io_service_bytes_recursive"),
            "8:0 Read 512\n8:0 Write 1024\nTotal 1536\n",
        );
        write(
            root,
            &format!("blkio/{cgroup}/blkio.throttle.io_serviced_recursive"),
            "8:0 Read 1\n8:0 Write 2\nTotal 3\n",
        );
        let io = Cgroups::at(root).readings("/kubepods/podu3/c3").io;
        assert_eq!(
            io,
            vec![DeviceIo {
                major: 8,
                minor: 0,
                read_bytes: 512.0,
                write_bytes: 1024.0,
                reads: 1.0,
                writes: 2.0,
            }]
        );
    }
}
