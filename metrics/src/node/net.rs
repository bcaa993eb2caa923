//! Network collectors: netdev (/proc/net/dev), netclass (/sys/class/net), netstat
//! (/proc/net/netstat, snmp, snmp6), sockstat, softnet, udp_queues and arp.

use std::collections::BTreeMap;

use anyhow::Context as _;

use super::{Context, read_optional};
use crate::exposition::{Families, Kind};

/// The columns of /proc/net/dev, in order, as node_exporter names them.
const NETDEV_COLUMNS: [&str; 16] = [
    "receive_bytes",
    "receive_packets",
    "receive_errs",
    "receive_drop",
    "receive_fifo",
    "receive_frame",
    "receive_compressed",
    "receive_multicast",
    "transmit_bytes",
    "transmit_packets",
    "transmit_errs",
    "transmit_drop",
    "transmit_fifo",
    "transmit_colls",
    "transmit_carrier",
    "transmit_compressed",
];

/// Per-device statistics from /proc/net/dev.
fn parse_netdev(text: &str) -> Vec<(String, Vec<f64>)> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, values) = line.split_once(':')?;
            let values: Vec<f64> = values
                .split_ascii_whitespace()
                .map(|v| v.parse().unwrap_or(0.0))
                .collect();
            Some((name.trim().to_owned(), values))
        })
        .collect()
}

/// `node_network_{receive,transmit}_*_total` for every device not excluded.
pub(super) fn netdev(context: &Context, out: &mut Families) -> anyhow::Result<()> {
    let text = context.read_proc("net/dev")?;
    let mut devices = parse_netdev(&text);
    devices.retain(|(device, _)| !context.config.netdev_device_exclude.is_match(device));
    let mut name = String::new();
    let mut help = String::new();
    for (i, column) in NETDEV_COLUMNS.iter().enumerate() {
        name.clear();
        name.push_str("node_network_");
        name.push_str(column);
        name.push_str("_total");
        help.clear();
        help.push_str("Network device statistic ");
        help.push_str(column);
        help.push('.');
        for (device, values) in &devices {
            out.counter(
                &name,
                &help,
                &[("device", device)],
                values.get(i).copied().unwrap_or(0.0),
            );
        }
        if *column == "receive_multicast" {
            // not in /proc/net/dev; the kernel keeps it beside the other statistics
            for (device, _) in &devices {
                let path = context.sys(&format!("class/net/{device}/statistics/rx_nohandler"));
                if let Some(value) = read_optional(&path).and_then(|t| t.trim().parse::<f64>().ok())
                {
                    out.counter(
                        "node_network_receive_nohandler_total",
                        "Network device statistic receive_nohandler.",
                        &[("device", device)],
                        value,
                    );
                }
            }
        }
    }
    Ok(())
}

/// A /sys/class/net attribute as a number (`0x` hexadecimal allowed); `None` when the
/// attribute is missing or unreadable (the kernel refuses some on devices that are down).
fn sys_number(context: &Context, device: &str, attribute: &str) -> Option<f64> {
    let text = read_optional(&context.sys(&format!("class/net/{device}/{attribute}")))?;
    let text = text.trim();
    match text.strip_prefix("0x") {
        Some(hex) => i64::from_str_radix(hex, 16).ok().map(|v| v as f64),
        None => text.parse().ok(),
    }
}

fn sys_text(context: &Context, device: &str, attribute: &str) -> String {
    read_optional(&context.sys(&format!("class/net/{device}/{attribute}")))
        .map(|t| t.trim().to_owned())
        .unwrap_or_default()
}

/// The numeric /sys/class/net attributes node_exporter exposes: attribute, metric suffix,
/// whether a counter.
const NETCLASS_PROPERTIES: &[(&str, &str, bool)] = &[
    ("addr_assign_type", "address_assign_type", false),
    ("carrier", "carrier", false),
    ("carrier_changes", "carrier_changes_total", true),
    ("carrier_up_count", "carrier_up_changes_total", true),
    ("carrier_down_count", "carrier_down_changes_total", true),
    ("dev_id", "device_id", false),
    ("dormant", "dormant", false),
    ("flags", "flags", false),
    ("ifindex", "iface_id", false),
    ("iflink", "iface_link", false),
    ("link_mode", "iface_link_mode", false),
    ("mtu", "mtu_bytes", false),
    ("name_assign_type", "name_assign_type", false),
    ("netdev_group", "net_dev_group", false),
    ("type", "protocol_type", false),
    ("speed", "speed_bytes", false),
    ("tx_queue_len", "transmit_queue_length", false),
];

/// `node_network_info`, `node_network_up` and the device properties from /sys/class/net.
pub(super) fn netclass(context: &Context, out: &mut Families) -> anyhow::Result<()> {
    let directory = context.sys("class/net");
    let mut devices: Vec<String> = std::fs::read_dir(&directory)
        .with_context(|| format!("failed to read {}", directory.display()))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| !context.config.netclass_ignored_devices.is_match(name))
        .collect();
    devices.sort();
    for device in &devices {
        let operstate = sys_text(context, device, "operstate");
        out.gauge(
            "node_network_info",
            "Non-numeric data from /sys/class/net/<iface>, value is always 1.",
            &[
                ("address", &sys_text(context, device, "address")),
                ("broadcast", &sys_text(context, device, "broadcast")),
                ("device", device),
                ("duplex", &sys_text(context, device, "duplex")),
                ("ifalias", &sys_text(context, device, "ifalias")),
                ("operstate", &operstate),
            ],
            1.0,
        );
        out.gauge(
            "node_network_up",
            "Value is 1 if operstate is 'up', 0 otherwise.",
            &[("device", device)],
            if operstate == "up" { 1.0 } else { 0.0 },
        );
        for (attribute, suffix, counter) in NETCLASS_PROPERTIES {
            let Some(mut value) = sys_number(context, device, attribute) else {
                continue;
            };
            if *attribute == "speed" {
                // Mbit/s to bytes/s, as node_exporter reports it (-1 when unknown)
                value *= 125_000.0;
            }
            out.add(
                &format!("node_network_{suffix}"),
                &format!("Network device property: {suffix}"),
                if *counter { Kind::Counter } else { Kind::Gauge },
                &[("device", device)],
                value,
            );
        }
    }
    Ok(())
}

/// `(protocol, field, value)` from the header/value line pairs of /proc/net/netstat and snmp.
fn parse_paired(text: &str) -> Vec<(String, String, f64)> {
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [header, values] = pair else {
            continue;
        };
        let (Some((protocol, names)), Some((_, values))) =
            (header.split_once(':'), values.split_once(':'))
        else {
            continue;
        };
        for (name, value) in names
            .split_ascii_whitespace()
            .zip(values.split_ascii_whitespace())
        {
            if let Ok(value) = value.parse::<f64>() {
                out.push((protocol.to_owned(), name.to_owned(), value));
            }
        }
    }
    out
}

/// `(protocol, field, value)` from /proc/net/snmp6 (`Ip6InOctets 123`: the protocol ends at
/// the first `6`).
fn parse_snmp6(text: &str) -> Vec<(String, String, f64)> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let key = fields.next()?;
            let value = fields.next()?.parse::<f64>().ok()?;
            let split = key.find('6')? + 1;
            Some((key[..split].to_owned(), key[split..].to_owned(), value))
        })
        .collect()
}

/// `node_netstat_*` for the fields matching `--collector.netstat.fields`.
pub(super) fn netstat(context: &Context, out: &mut Families) -> anyhow::Result<()> {
    let mut stats = parse_paired(&context.read_proc("net/netstat")?);
    stats.extend(parse_paired(&context.read_proc("net/snmp")?));
    if let Ok(text) = context.read_proc("net/snmp6") {
        stats.extend(parse_snmp6(&text));
    }
    for (protocol, field, value) in stats {
        let key = format!("{protocol}_{field}");
        if !context.config.netstat_fields.is_match(&key) {
            continue;
        }
        out.add(
            &format!("node_netstat_{key}"),
            &format!("Statistic {protocol}{field}."),
            Kind::Untyped,
            &[],
            value,
        );
    }
    Ok(())
}

/// `node_sockstat_*` from /proc/net/sockstat and sockstat6.
pub(super) fn sockstat(context: &Context, out: &mut Families) -> anyhow::Result<()> {
    let mut text = context.read_proc("net/sockstat")?;
    if let Ok(six) = context.read_proc("net/sockstat6") {
        text.push_str(&six);
    }
    for line in text.lines() {
        let Some((protocol, rest)) = line.split_once(':') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
        for pair in fields.chunks(2) {
            let [name, value] = pair else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            if protocol == "sockets" {
                if *name == "used" {
                    out.gauge(
                        "node_sockstat_sockets_used",
                        "Number of IPv4 sockets in use.",
                        &[],
                        value,
                    );
                }
                continue;
            }
            out.gauge(
                &format!("node_sockstat_{protocol}_{name}"),
                &format!("Number of {protocol} sockets in state {name}."),
                &[],
                value,
            );
            if *name == "mem" && (protocol == "TCP" || protocol == "UDP") {
                out.gauge(
                    &format!("node_sockstat_{protocol}_mem_bytes"),
                    &format!("Number of {protocol} sockets in state mem_bytes."),
                    &[],
                    value * context.page_size as f64,
                );
            }
        }
    }
    Ok(())
}

/// `node_softnet_*` per CPU from /proc/net/softnet_stat (hexadecimal columns).
pub(super) fn softnet(context: &Context, out: &mut Families) -> anyhow::Result<()> {
    let text = context.read_proc("net/softnet_stat")?;
    let rows: Vec<Vec<f64>> = text
        .lines()
        .map(|line| {
            line.split_ascii_whitespace()
                .map(|v| u64::from_str_radix(v, 16).unwrap_or(0) as f64)
                .collect()
        })
        .collect();
    let families = [
        (
            "node_softnet_processed_total",
            "Number of processed packets",
            0,
        ),
        ("node_softnet_dropped_total", "Number of dropped packets", 1),
        (
            "node_softnet_times_squeezed_total",
            "Number of times processing packets ran out of quota",
            2,
        ),
    ];
    for (name, help, column) in families {
        for (cpu, row) in rows.iter().enumerate() {
            let cpu = cpu.to_string();
            out.counter(
                name,
                help,
                &[("cpu", &cpu)],
                row.get(column).copied().unwrap_or(0.0),
            );
        }
    }
    Ok(())
}

/// Sums of the `tx_queue:rx_queue` column of /proc/net/udp or udp6.
fn udp_queue_sums(text: &str) -> (f64, f64) {
    let (mut tx, mut rx) = (0.0, 0.0);
    for line in text.lines().skip(1) {
        let Some(queues) = line.split_ascii_whitespace().nth(4) else {
            continue;
        };
        let Some((t, r)) = queues.split_once(':') else {
            continue;
        };
        tx += u64::from_str_radix(t, 16).unwrap_or(0) as f64;
        rx += u64::from_str_radix(r, 16).unwrap_or(0) as f64;
    }
    (tx, rx)
}

/// `node_udp_queues{ip,queue}`.
pub(super) fn udp_queues(context: &Context, out: &mut Families) -> anyhow::Result<()> {
    let help = "Number of allocated memory in the kernel for UDP datagrams in bytes.";
    let four = context.read_proc("net/udp")?;
    let mut rows = vec![("v4", udp_queue_sums(&four))];
    if let Ok(six) = context.read_proc("net/udp6") {
        rows.push(("v6", udp_queue_sums(&six)));
    }
    for (ip, (tx, rx)) in rows {
        out.gauge("node_udp_queues", help, &[("ip", ip), ("queue", "rx")], rx);
        out.gauge("node_udp_queues", help, &[("ip", ip), ("queue", "tx")], tx);
    }
    Ok(())
}

/// `node_arp_entries{device}` from /proc/net/arp.
pub(super) fn arp(context: &Context, out: &mut Families) -> anyhow::Result<()> {
    let text = context.read_proc("net/arp")?;
    let mut counts: BTreeMap<&str, f64> = BTreeMap::new();
    for line in text.lines().skip(1) {
        if let Some(device) = line.split_ascii_whitespace().nth(5) {
            *counts.entry(device).or_default() += 1.0;
        }
    }
    for (device, count) in counts {
        out.gauge(
            "node_arp_entries",
            "ARP entries by device",
            &[("device", device)],
            count,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netdev_columns_by_device() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
                    face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
                    lo: 100 2 0 0 0 0 0 0 100 2 0 0 0 0 0 0\n  \
                    eth0: 4497 25 1 2 3 4 5 6 1634 15 7 8 9 10 11 12\n";
        let devices = parse_netdev(text);
        assert_eq!(devices[1].0, "eth0");
        assert_eq!(devices[1].1[3], 2.0);
        assert_eq!(devices[1].1[15], 12.0);
    }

    #[test]
    fn paired_statistics_and_snmp6() {
        let paired = parse_paired("Tcp: RtoMin CurrEstab\nTcp: 200 2\nUdp: InErrors\nUdp: 5\n");
        assert!(paired.contains(&("Tcp".into(), "CurrEstab".into(), 2.0)));
        assert!(paired.contains(&("Udp".into(), "InErrors".into(), 5.0)));
        let six = parse_snmp6("Ip6InOctets 604256\nUdpLite6InErrors 0\nIcmp6OutMsgs 7\n");
        assert_eq!(six[0], ("Ip6".into(), "InOctets".into(), 604_256.0));
        assert_eq!(six[1].0, "UdpLite6");
        assert_eq!(six[2].1, "OutMsgs");
    }

    #[test]
    fn udp_queues_sum_hex_columns() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when\n \
                    0: 00000000:0044 00000000:0000 07 00000010:00000100 00:00000000\n \
                    1: 00000000:0045 00000000:0000 07 00000001:00000000 00:00000000\n";
        assert_eq!(udp_queue_sums(text), (17.0, 256.0));
    }
}
