//! The kubelet's `/stats/summary` (the Summary API of `kubelet/pkg/apis/stats/v1alpha1` that
//! metrics-server and `kubectl top` read): node CPU, memory and filesystem from /proc and
//! statvfs; pod and container CPU, memory and network from CRI's sandbox statistics.

use std::time::Instant;

use k8s_cri::v1 as cri;
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::host;
use crate::pods::PodContext;
use crate::pods::spec::NODE_LABEL;

/// Jiffies of busy and total CPU time from the first line of /proc/stat.
#[must_use]
pub fn cpu_jiffies(proc_stat: &str) -> Option<(u64, u64)> {
    let line = proc_stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// Node CPU usage between calls.
#[derive(Debug, Default)]
pub struct NodeCpu {
    last: Mutex<Option<(Instant, u64)>>,
}

impl NodeCpu {
    /// Cumulative busy core-nanoseconds and the rate since the previous call (nano-cores).
    pub fn sample(&self) -> (u64, u64) {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        // USER_HZ is 100 on Linux: a jiffy is 10 ms
        let busy_ns = cpu_jiffies(&stat).map_or(0, |(busy, _)| busy * 10_000_000);
        let now = Instant::now();
        let mut last = self.last.lock();
        let rate = match *last {
            Some((at, previous)) if now > at => {
                let seconds = now.duration_since(at).as_secs_f64();
                ((busy_ns.saturating_sub(previous)) as f64 / seconds) as u64
            }
            _ => 0,
        };
        *last = Some((now, busy_ns));
        (busy_ns, rate)
    }
}

fn time(nanos: i64) -> Value {
    jiff::Timestamp::from_nanosecond(i128::from(nanos))
        .map_or(Value::Null, |t| json!(t.to_string()))
}

fn value(v: Option<&cri::UInt64Value>) -> Value {
    v.map_or(Value::Null, |v| json!(v.value))
}

fn cpu(usage: Option<&cri::CpuUsage>) -> Value {
    usage.map_or(Value::Null, |cpu| {
        json!({
            "time": time(cpu.timestamp),
            "usageNanoCores": value(cpu.usage_nano_cores.as_ref()),
            "usageCoreNanoSeconds": value(cpu.usage_core_nano_seconds.as_ref()),
        })
    })
}

fn memory(usage: Option<&cri::MemoryUsage>) -> Value {
    usage.map_or(Value::Null, |memory| {
        json!({
            "time": time(memory.timestamp),
            "availableBytes": value(memory.available_bytes.as_ref()),
            "usageBytes": value(memory.usage_bytes.as_ref()),
            "workingSetBytes": value(memory.working_set_bytes.as_ref()),
            "rssBytes": value(memory.rss_bytes.as_ref()),
            "pageFaults": value(memory.page_faults.as_ref()),
            "majorPageFaults": value(memory.major_page_faults.as_ref()),
        })
    })
}

fn network(usage: Option<&cri::NetworkUsage>) -> Value {
    usage.map_or(Value::Null, |network| {
        let interface = |i: &cri::NetworkInterfaceUsage| {
            json!({
                "name": i.name,
                "rxBytes": value(i.rx_bytes.as_ref()),
                "rxErrors": value(i.rx_errors.as_ref()),
                "txBytes": value(i.tx_bytes.as_ref()),
                "txErrors": value(i.tx_errors.as_ref()),
            })
        };
        let mut out = network
            .default_interface
            .as_ref()
            .map_or_else(|| json!({}), interface);
        out["time"] = time(network.timestamp);
        out["interfaces"] = network.interfaces.iter().map(interface).collect();
        out
    })
}

/// The Summary of this node and its pods.
///
/// # Errors
/// When the runtime cannot be asked.
pub async fn summary(ctx: &PodContext, node_cpu: &NodeCpu) -> crate::cri::Result<Value> {
    let now = jiff::Timestamp::now();
    let now_nanos = i64::try_from(now.as_nanosecond()).unwrap_or(0);
    let (busy, rate) = node_cpu.sample();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let total = host::meminfo_bytes(&meminfo, "MemTotal:");
    let available = host::meminfo_bytes(&meminfo, "MemAvailable:");
    let free = host::meminfo_bytes(&meminfo, "MemFree:");
    let readings = host::readings();
    let node = json!({
        "nodeName": ctx.node.name,
        "cpu": {"time": now.to_string(), "usageNanoCores": rate, "usageCoreNanoSeconds": busy},
        "memory": {
            "time": now.to_string(),
            "availableBytes": available,
            "usageBytes": total.saturating_sub(free),
            "workingSetBytes": total.saturating_sub(available),
        },
        "fs": {
            "time": now.to_string(),
            "availableBytes": readings.disk_available,
            "capacityBytes": readings.disk_total,
            "usedBytes": readings.disk_total.saturating_sub(readings.disk_available),
        },
        "rlimit": {"time": now.to_string(), "maxpid": readings.pid_max, "curproc": readings.processes},
    });
    let labels = [(NODE_LABEL, ctx.node.name.as_str())];
    let sandboxes = ctx.cri.list_pod_sandboxes(&labels).await?;
    let stats = ctx.cri.list_pod_sandbox_stats(&labels).await?;
    let pods: Vec<Value> = stats
        .iter()
        .filter_map(|stat| {
            let attributes = stat.attributes.as_ref()?;
            let metadata = attributes.metadata.as_ref()?;
            let linux = stat.linux.as_ref()?;
            let started = sandboxes
                .iter()
                .find(|s| s.id == attributes.id)
                .map_or(now_nanos, |s| s.created_at);
            let containers: Vec<Value> = linux
                .containers
                .iter()
                .map(|c| {
                    let name = c
                        .attributes
                        .as_ref()
                        .and_then(|a| a.metadata.as_ref())
                        .map(|m| m.name.clone())
                        .unwrap_or_default();
                    json!({
                        "name": name,
                        "cpu": cpu(c.cpu.as_ref()),
                        "memory": memory(c.memory.as_ref()),
                        "rootfs": c.writable_layer.as_ref().map_or(Value::Null, |fs| json!({
                            "time": time(fs.timestamp),
                            "usedBytes": value(fs.used_bytes.as_ref()),
                            "inodesUsed": value(fs.inodes_used.as_ref()),
                        })),
                    })
                })
                .collect();
            Some(json!({
                "podRef": {"name": metadata.name, "namespace": metadata.namespace, "uid": metadata.uid},
                "startTime": time(started),
                "containers": containers,
                "cpu": cpu(linux.cpu.as_ref()),
                "memory": memory(linux.memory.as_ref()),
                "network": network(linux.network.as_ref()),
                "process_stats": linux.process.as_ref().map_or(Value::Null, |p| json!({
                    "process_count": value(p.process_count.as_ref()),
                })),
            }))
        })
        .collect();
    Ok(json!({"node": node, "pods": pods}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_busy_time() {
        let stat = "cpu  100 5 50 1000 20 1 2 3 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(cpu_jiffies(stat), Some((161, 1181)));
        assert_eq!(cpu_jiffies("nonsense"), None);
        let node = NodeCpu::default();
        let (busy, rate) = node.sample();
        assert!(busy > 0);
        assert_eq!(rate, 0, "no rate before a second sample");
    }
}
