//! Collectors over /proc files: cpu, stat, loadavg, meminfo, vmstat, filefd, pressure,
//! entropy and conntrack.

use anyhow::Context as _;

use super::{Context, field};
use crate::exposition::{Families, Kind};

/// The kernel's USER_HZ: /proc/stat counts CPU time in these ticks.
const USER_HZ: f64 = 100.0;

/// `node_cpu_seconds_total{cpu,mode}` and `node_cpu_guest_seconds_total{cpu,mode}`.
pub(super) fn cpu(context: &Context, out: &mut Families) -> anyhow::Result<()> {
    let stat = context.read_proc("stat")?;
    const MODES: [&str; 8] = [
        "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
    ];
    let mut cpus = Vec::new();
    for line in stat.lines() {
        let Some(rest) = line.strip_prefix("cpu") else {
            continue;
        };
        let Some((id, values)) = rest.split_once(' ') else {
            continue;
        };
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let values: Vec<f64> = values
            .split_ascii_whitespace()
            .map(|v| v.parse::<f64>().unwrap_or(0.0) / USER_HZ)
            .collect();
        cpus.push((id.to_owned(), values));
    }
    anyhow::ensure!(!cpus.is_empty(), "no cpu lines in /proc/stat");
    for (id, values) in &cpus {
        for (i, mode) in MODES.iter().enumerate() {
            out.counter(
                "node_cpu_seconds_total",
                "Seconds the CPUs spent in each mode.",
                &[("cpu", id), ("mode", mode)],
                values.get(i).copied().unwrap_or(0.0),
            );
        }
    }
    for (id, values) in &cpus {
        for (i, mode) in [(8, "user"), (9, "nice")] {
            out.counter(
                "node_cpu_guest_seconds_total",
                "Seconds the CPUs spent in guests (VMs) for each mode.",
                &[("cpu", id), ("mode", mode)],
                values.get(i).copied().unwrap_or(0.0),
            );
        }
    }
    Ok(())
}

/// Interrupts, context switches, forks, boot time and process counts from /proc/stat.
pub(super) fn stat(context: &Context, out: &mut Families) -> anyhow::Result<()> {
    let stat = context.read_proc("stat")?;
    for line in stat.lines() {
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        let value = || field::<f64>(&fields, 1).unwrap_or(0.0);
        match fields.first().copied() {
            Some("intr") => out.counter(
                "node_intr_total",
                "Total number of interrupts serviced.",
                &[],
                value(),
            ),
            Some("ctxt") => out.counter(
                "node_context_switches_total",
                "Total number of context switches.",
                &[],
                value(),
            ),
            Some("btime") => out.gauge(
                "node_boot_time_seconds",
                "Node boot time, in unixtime.",
                &[],
                value(),
            ),
            Some("processes") => {
                out.counter("node_forks_total", "Total number of forks.", &[], value())
            }
            Some("procs_running") => out.gauge(
                "node_procs_running",
                "Number of processes in runnable state.",
                &[],
                value(),
            ),
            Some("procs_blocked") => out.gauge(
                "node_procs_blocked",
                "Number of processes blocked waiting for I/O to complete.",
                &[],
                value(),
            ),
            _ => {}
        }
    }
    Ok(())
}

/// `node_load1`, `node_load5`, `node_load15`.
pub(super) fn loadavg(context: &Context, out: &mut Families) -> anyhow::Result<()> {
    let text = context.read_proc("loadavg")?;
    let fields: Vec<&str> = text.split_ascii_whitespace().collect();
    for (i, (name, help)) in [
        ("node_load1", "1m load average."),
        ("node_load5", "5m load average."),
        ("node_load15", "15m load average."),
    ]
    .into_iter()
    .enumerate()
    {
        let value: f64 = field(&fields, i).context("malformed /proc/loadavg")?;
        out.gauge(name, help, &[], value);
    }
    Ok(())
}

/// The name node_exporter gives a /proc/meminfo key: `Active(anon)` → `Active_anon`.
fn meminfo_name(key: &str) -> String {
    let mut name = String::with_capacity(key.len());
    for c in key.chars() {
        match c {
            '(' => name.push('_'),
            ')' => {}
            c => name.push(c),
        }
    }
    name
}

/// `node_memory_*` from /proc/meminfo: values in kB become `_bytes`.
pub(super) fn meminfo(context: &Context, out: &mut Families) -> anyhow::Result<()> {
    let text = context.read_proc("meminfo")?;
    let mut name = String::new();
    let mut help = String::new();
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
        let Some(value) = field::<f64>(&fields, 0) else {
            continue;
        };
        let (value, suffix) = match fields.get(1) {
            Some(&"kB") => (value * 1024.0, "_bytes"),
            _ => (value, ""),
        };
        let field = format!("{}{suffix}", meminfo_name(key));
        name.clear();
        name.push_str("node_memory_");
        name.push_str(&field);
        help.clear();
        help.push_str("Memory information field ");
        help.push_str(&field);
        help.push('.');
        out.gauge(&name, &help, &[], value);
    }
    anyhow::ensure!(
        out.contains("node_memory_MemTotal_bytes"),
        "no MemTotal in /proc/meminfo"
    );
    Ok(())
}

/// `node_vmstat_*` for the fields matching `--collector.vmstat.fields`.
pub(super) fn vmstat(context: &Context, out: &mut Families) -> anyhow::Result<()> {
    let text = context.read_proc("vmstat")?;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(' ') else {
            continue;
        };
        if !context.config.vmstat_fields.is_match(key) {
            continue;
        }
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        out.add(
            &format!("node_vmstat_{key}"),
            &format!("/proc/vmstat information field {key}."),
            Kind::Untyped,
            &[],
            value,
        );
    }
    Ok(())
}

/// `node_filefd_allocated` and `node_filefd_maximum` from /proc/sys/fs/file-nr.
pub(super) fn filefd(context: &Context, out: &mut Families) -> anyhow::Result<()> {
    let text = context.read_proc("sys/fs/file-nr")?;
    let fields: Vec<&str> = text.split_ascii_whitespace().collect();
    let allocated: f64 = field(&fields, 0).context("malformed file-nr")?;
    let maximum: f64 = field(&fields, 2).context("malformed file-nr")?;
    out.gauge(
        "node_filefd_allocated",
        "File descriptor statistics: allocated.",
        &[],
        allocated,
    );
    out.gauge(
        "node_filefd_maximum",
        "File descriptor statistics: maximum.",
        &[],
        maximum,
    );
    Ok(())
}

/// The `total=` microseconds of the `some` and `full` lines of a pressure file.
fn pressure_totals(text: &str) -> (Option<f64>, Option<f64>) {
    let mut some = None;
    let mut full = None;
    for line in text.lines() {
        let Some(total) = line
            .split_ascii_whitespace()
            .find_map(|f| f.strip_prefix("total="))
            .and_then(|t| t.parse::<f64>().ok())
        else {
            continue;
        };
        if line.starts_with("some") {
            some = Some(total / 1e6);
        } else if line.starts_with("full") {
            full = Some(total / 1e6);
        }
    }
    (some, full)
}

/// `node_pressure_*` from /proc/pressure (PSI).
pub(super) fn pressure(context: &Context, out: &mut Families) -> anyhow::Result<()> {
    let cpu = context.read_proc("pressure/cpu")?;
    if let (Some(some), _) = pressure_totals(&cpu) {
        out.counter(
            "node_pressure_cpu_waiting_seconds_total",
            "Total time in seconds that processes have waited for CPU time",
            &[],
            some,
        );
    }
    let stalls = [
        (
            "io",
            "Total time in seconds that processes have waited due to IO congestion",
            "Total time in seconds no process could make progress due to IO congestion",
        ),
        (
            "memory",
            "Total time in seconds that processes have waited for memory",
            "Total time in seconds no process could make progress due to memory congestion",
        ),
    ];
    for (resource, waiting_help, stalled_help) in stalls {
        let (some, full) = pressure_totals(&context.read_proc(&format!("pressure/{resource}"))?);
        if let Some(full) = full {
            let name = format!("node_pressure_{resource}_stalled_seconds_total");
            out.counter(&name, stalled_help, &[], full);
        }
        if let Some(some) = some {
            let name = format!("node_pressure_{resource}_waiting_seconds_total");
            out.counter(&name, waiting_help, &[], some);
        }
    }
    Ok(())
}

/// `node_entropy_available_bits` and `node_entropy_pool_size_bits`.
pub(super) fn entropy(context: &Context, out: &mut Families) -> anyhow::Result<()> {
    let read = |path: &str| context.read_proc_number(path);
    out.gauge(
        "node_entropy_available_bits",
        "Bits of available entropy.",
        &[],
        read("sys/kernel/random/entropy_avail")?,
    );
    out.gauge(
        "node_entropy_pool_size_bits",
        "Bits of entropy pool.",
        &[],
        read("sys/kernel/random/poolsize")?,
    );
    Ok(())
}

/// The per-CPU columns of /proc/net/stat/nf_conntrack that node_exporter exposes, with help.
const CONNTRACK_STATS: &[(&str, &str)] = &[
    ("found", "Number of searched entries which were successful."),
    (
        "invalid",
        "Number of packets seen which can not be tracked.",
    ),
    (
        "ignore",
        "Number of packets seen which are already connected to a conntrack entry.",
    ),
    ("insert", "Number of entries inserted into the list."),
    (
        "insert_failed",
        "Number of entries for which list insertion was attempted but failed.",
    ),
    (
        "drop",
        "Number of packets dropped due to conntrack failure.",
    ),
    (
        "early_drop",
        "Number of dropped conntrack entries to make room for new ones, if maximum table size was reached.",
    ),
    (
        "search_restart",
        "Number of conntrack table lookups which had to be restarted due to hashtable resizes.",
    ),
];

/// Sums the hexadecimal per-CPU rows of /proc/net/stat/nf_conntrack by column name.
fn conntrack_stat_sums(text: &str) -> Vec<(String, f64)> {
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let columns: Vec<&str> = header.split_ascii_whitespace().collect();
    let mut sums = vec![0.0; columns.len()];
    for line in lines {
        for (i, value) in line.split_ascii_whitespace().enumerate() {
            if let (Some(sum), Ok(value)) = (sums.get_mut(i), u64::from_str_radix(value, 16)) {
                *sum += value as f64;
            }
        }
    }
    columns.into_iter().map(str::to_owned).zip(sums).collect()
}

/// `node_nf_conntrack_*`: table size, limit and the per-CPU statistics summed.
pub(super) fn conntrack(context: &Context, out: &mut Families) -> anyhow::Result<()> {
    let read = |path: &str| context.read_proc_number(path);
    out.gauge(
        "node_nf_conntrack_entries",
        "Number of currently allocated flow entries for connection tracking.",
        &[],
        read("sys/net/netfilter/nf_conntrack_count")?,
    );
    out.gauge(
        "node_nf_conntrack_entries_limit",
        "Maximum size of connection tracking table.",
        &[],
        read("sys/net/netfilter/nf_conntrack_max")?,
    );
    if let Ok(text) = context.read_proc("net/stat/nf_conntrack") {
        let sums = conntrack_stat_sums(&text);
        for (name, help) in CONNTRACK_STATS {
            let value = sums
                .iter()
                .find(|(column, _)| column == name)
                .map_or(0.0, |(_, v)| *v);
            out.gauge(&format!("node_nf_conntrack_stat_{name}"), help, &[], value);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_names_follow_node_exporter() {
        assert_eq!(meminfo_name("Active(anon)"), "Active_anon");
        assert_eq!(meminfo_name("MemTotal"), "MemTotal");
    }

    #[test]
    fn pressure_totals_are_seconds() {
        let text = "some avg10=0.00 avg60=0.00 avg300=0.00 total=1500000\n\
                    full avg10=0.00 avg60=0.00 avg300=0.00 total=250000\n";
        assert_eq!(pressure_totals(text), (Some(1.5), Some(0.25)));
    }

    #[test]
    fn conntrack_statistics_sum_hex_columns() {
        let text = "entries  clashres found new invalid ignore\n\
                    00000010 00000000 0000000a 00000000 00000001 00000002\n\
                    00000010 00000000 00000006 00000000 00000000 00000002\n";
        let sums = conntrack_stat_sums(text);
        assert!(sums.contains(&("found".to_owned(), 16.0)));
        assert!(sums.contains(&("ignore".to_owned(), 4.0)));
    }
}
