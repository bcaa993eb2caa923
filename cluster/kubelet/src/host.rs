//! What this machine offers, read from /proc and the filesystem: the node's capacity,
//! allocatable, addresses and system info.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::node::NodeSpecification;

/// Memory the kubelet keeps back from pods (its default hard eviction threshold).
const EVICTION_MEMORY_BYTES: u64 = 100 << 20;

/// Total memory in bytes from /proc/meminfo.
#[must_use]
pub fn memory_total() -> u64 {
    meminfo_bytes(
        &std::fs::read_to_string("/proc/meminfo").unwrap_or_default(),
        "MemTotal:",
    )
}

/// A value of /proc/meminfo (`kB` lines) in bytes.
#[must_use]
pub fn meminfo_bytes(meminfo: &str, key: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Memory the kubelet's default hard eviction threshold keeps free (`memory.available<100Mi`).
pub const MEMORY_AVAILABLE_THRESHOLD: u64 = EVICTION_MEMORY_BYTES;

/// Readings behind the node's pressure conditions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Readings {
    /// MemAvailable, bytes.
    pub memory_available: u64,
    /// Free space on the node filesystem, bytes.
    pub disk_available: u64,
    /// Size of the node filesystem, bytes.
    pub disk_total: u64,
    /// Processes now.
    pub processes: u64,
    /// The largest pid.
    pub pid_max: u64,
}

/// Reads the machine now.
#[must_use]
pub fn readings() -> Readings {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let (disk_available, disk_total) = rustix::fs::statvfs("/var/lib").map_or((0, 0), |s| {
        (s.f_bavail * s.f_frsize, s.f_blocks * s.f_frsize)
    });
    // /proc/loadavg: "0.00 0.01 0.05 1/123 4567" — running/total processes
    let processes = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| {
            l.split_whitespace()
                .nth(3)
                .and_then(|f| f.split('/').nth(1))
                .and_then(|t| t.parse().ok())
        })
        .unwrap_or(0);
    Readings {
        memory_available: meminfo_bytes(&meminfo, "MemAvailable:"),
        disk_available,
        disk_total,
        processes,
        pid_max: read_trimmed("/proc/sys/kernel/pid_max")
            .parse()
            .unwrap_or(0),
    }
}

impl Readings {
    /// The pressure conditions these readings mean, with the kubelet's default thresholds
    /// (memory.available<100Mi, nodefs.available<10%) and pids under 10% free.
    #[must_use]
    pub fn pressures(&self) -> (bool, bool, bool) {
        let memory = self.memory_available < MEMORY_AVAILABLE_THRESHOLD;
        let disk = self.disk_total > 0 && self.disk_available < self.disk_total / 10;
        let pids =
            self.pid_max > 0 && self.pid_max.saturating_sub(self.processes) < self.pid_max / 10;
        (memory, disk, pids)
    }
}

/// Size of the filesystem holding `path`, in bytes.
#[must_use]
pub fn filesystem_bytes(path: &Path) -> u64 {
    rustix::fs::statvfs(path).map_or(0, |s| s.f_blocks * s.f_frsize)
}

pub use kelson_common::net::primary_address;

/// The host name.
#[must_use]
pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .to_lowercase()
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map_or_else(|| "Linux".into(), |v| v.trim_matches('"').to_owned())
}

/// The node this machine makes, named `name`, at `address`, running `runtime_version`.
#[must_use]
pub fn node_specification(name: &str, address: IpAddr, runtime_version: &str) -> NodeSpecification {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let memory = memory_total();
    let storage = filesystem_bytes(Path::new("/var/lib"));
    let capacity = BTreeMap::from([
        ("cpu".to_owned(), Quantity(cpus.to_string())),
        (
            "memory".to_owned(),
            Quantity(format!("{}Ki", memory / 1024)),
        ),
        ("pods".to_owned(), Quantity("110".into())),
        (
            "ephemeral-storage".to_owned(),
            Quantity(format!("{}Ki", storage / 1024)),
        ),
    ]);
    let mut allocatable = capacity.clone();
    allocatable.insert(
        "memory".into(),
        Quantity(format!(
            "{}Ki",
            memory.saturating_sub(EVICTION_MEMORY_BYTES) / 1024
        )),
    );
    // the kubelet's default nodefs.available<10% eviction threshold
    allocatable.insert(
        "ephemeral-storage".into(),
        Quantity((storage / 10 * 9).to_string()),
    );
    NodeSpecification {
        name: name.to_owned(),
        labels: BTreeMap::new(),
        capacity,
        allocatable,
        internal_ip: address.to_string(),
        runtime_version: runtime_version.to_owned(),
        os_image: os_image(),
        kernel_version: read_trimmed("/proc/sys/kernel/osrelease"),
        kubelet_port: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_meminfo() {
        let meminfo = "MemTotal:       24605340 kB\nMemFree:        1000 kB\n";
        assert_eq!(meminfo_bytes(meminfo, "MemTotal:"), 24_605_340 * 1024);
        assert_eq!(meminfo_bytes(meminfo, "Missing:"), 0);
    }

    #[test]
    fn pressure_thresholds() {
        let calm = Readings {
            memory_available: 1 << 30,
            disk_available: 50,
            disk_total: 100,
            processes: 100,
            pid_max: 4_194_304,
        };
        assert_eq!(calm.pressures(), (false, false, false));
        let tight = Readings {
            memory_available: 50 << 20,
            disk_available: 5,
            disk_total: 100,
            processes: 3_900_000,
            pid_max: 4_194_304,
        };
        assert_eq!(tight.pressures(), (true, true, true));
        assert!(readings().memory_available > 0);
    }

    #[test]
    fn this_machine_has_capacity() {
        let spec = node_specification("n1", primary_address(), "containerd://1");
        assert!(memory_total() > 0);
        assert!(spec.capacity.contains_key("ephemeral-storage"));
        assert!(!spec.kernel_version.is_empty());
    }
}
