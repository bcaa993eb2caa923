//! The node exporter over a fixture /proc and /sys, and over this machine's.

use std::path::Path;

use super::*;
use crate::exposition::{Kind, ParsedFamily, parse};

fn write(root: &Path, path: &str, text: &str) {
    let path = root.join(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn family<'a>(families: &'a [ParsedFamily], name: &str) -> &'a ParsedFamily {
    families
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no family {name}"))
}

fn value(families: &[ParsedFamily], name: &str, labels: &[(&str, &str)]) -> f64 {
    let family = family(families, name);
    family
        .sample(labels)
        .unwrap_or_else(|| panic!("no sample {name}{labels:?} in {:?}", family.samples))
        .value
}

#[test]
fn fixture_tree_scrapes_as_node_exporter_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let proc = dir.path().join("proc");
    let sys = dir.path().join("sys");
    write(
        &proc,
        "stat",
        "cpu  100 0 50 1000 0 0 0 0 0 0\ncpu0 7109 3051 2737 16224 71 0 16 6 5 1\n\
         intr 32867992 0 9\nctxt 65325578\nbtime 1795372865\nprocesses 1070424\n\
         procs_running 2\nprocs_blocked 0\n",
    );
    write(&proc, "loadavg", "0.58 1.04 1.04 2/300 12345\n");
    write(
        &proc,
        "meminfo",
        "MemTotal:       24684092 kB\nActive(anon):     1000 kB\nHugePages_Total:       0\n",
    );
    write(
        &proc,
        "vmstat",
        "nr_free_pages 12\npgfault 699754281\npgmajfault 426814\n",
    );
    write(&proc, "sys/fs/file-nr", "350\t0\t2466177\n");
    write(
        &proc,
        "diskstats",
        " 254       0 vda 7348883 301300 1316727 14904984 5320083 645429 456843 2720796 0 895412 17763405 512451 78 688484488 90626 710869 46998\n \
         254       1 vda1 1 2 3 4 5 6 7 8 9 10 11\n",
    );
    write(
        &proc,
        "net/dev",
        "Inter-|   Receive\n face |bytes\n    lo: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n  \
         eth0: 449704395 25097 0 0 0 0 0 0 1634223 15559 0 0 0 0 0 0\n",
    );
    write(&sys, "class/net/eth0/statistics/rx_nohandler", "3\n");
    write(&sys, "class/net/eth0/operstate", "up\n");
    write(&sys, "class/net/eth0/address", "52:54:00:12:34:56\n");
    write(&sys, "class/net/eth0/flags", "0x1003\n");
    write(&sys, "class/net/eth0/speed", "-1\n");
    write(&sys, "class/net/eth0/carrier_changes", "2\n");
    let mut config = Config {
        procfs: proc,
        sysfs: sys,
        rootfs: dir.path().join("nothing"),
        ..Config::default()
    };
    config.collectors = [
        "cpu",
        "stat",
        "loadavg",
        "meminfo",
        "vmstat",
        "filefd",
        "diskstats",
        "netdev",
        "netclass",
        "pressure",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    let exporter = NodeExporter::new(config).unwrap();
    let text = exporter.scrape();
    let families = parse(&text).unwrap();

    assert_eq!(
        value(
            &families,
            "node_cpu_seconds_total",
            &[("cpu", "0"), ("mode", "idle")]
        ),
        162.24
    );
    assert_eq!(family(&families, "node_cpu_seconds_total").samples.len(), 8);
    assert_eq!(
        value(
            &families,
            "node_cpu_guest_seconds_total",
            &[("cpu", "0"), ("mode", "nice")]
        ),
        0.01
    );
    assert_eq!(value(&families, "node_intr_total", &[]), 32_867_992.0);
    assert_eq!(family(&families, "node_intr_total").kind, Kind::Counter);
    assert_eq!(
        value(&families, "node_boot_time_seconds", &[]),
        1_795_372_865.0
    );
    assert_eq!(value(&families, "node_load15", &[]), 1.04);
    assert_eq!(
        value(&families, "node_memory_MemTotal_bytes", &[]),
        24_684_092.0 * 1024.0
    );
    assert_eq!(
        value(&families, "node_memory_Active_anon_bytes", &[]),
        1_024_000.0
    );
    assert_eq!(value(&families, "node_memory_HugePages_Total", &[]), 0.0);
    assert_eq!(
        family(&families, "node_memory_MemTotal_bytes").help,
        "Memory information field MemTotal_bytes."
    );
    assert_eq!(family(&families, "node_vmstat_pgfault").kind, Kind::Untyped);
    assert!(
        !families
            .iter()
            .any(|f| f.name == "node_vmstat_nr_free_pages")
    );
    assert_eq!(value(&families, "node_filefd_maximum", &[]), 2_466_177.0);
    // partitions of vda are excluded by default
    assert_eq!(family(&families, "node_disk_info").samples.len(), 1);
    assert_eq!(
        value(
            &families,
            "node_disk_read_bytes_total",
            &[("device", "vda")]
        ),
        1_316_727.0 * 512.0
    );
    assert_eq!(
        value(
            &families,
            "node_disk_io_time_weighted_seconds_total",
            &[("device", "vda")]
        ),
        17_763.405
    );
    assert_eq!(
        value(
            &families,
            "node_disk_flush_requests_time_seconds_total",
            &[("device", "vda")]
        ),
        46.998
    );
    assert_eq!(family(&families, "node_disk_io_now").kind, Kind::Gauge);
    // lo is excluded from netdev
    assert_eq!(
        family(&families, "node_network_receive_bytes_total")
            .samples
            .len(),
        1
    );
    assert_eq!(
        value(
            &families,
            "node_network_receive_nohandler_total",
            &[("device", "eth0")]
        ),
        3.0
    );
    assert_eq!(
        value(&families, "node_network_up", &[("device", "eth0")]),
        1.0
    );
    assert_eq!(
        value(&families, "node_network_flags", &[("device", "eth0")]),
        4099.0
    );
    assert_eq!(
        value(&families, "node_network_speed_bytes", &[("device", "eth0")]),
        -125_000.0
    );
    assert_eq!(
        family(&families, "node_network_carrier_changes_total").kind,
        Kind::Counter
    );
    // a missing source fails its collector only
    assert_eq!(
        value(
            &families,
            "node_scrape_collector_success",
            &[("collector", "pressure")]
        ),
        0.0
    );
    assert_eq!(
        value(
            &families,
            "node_scrape_collector_success",
            &[("collector", "cpu")]
        ),
        1.0
    );
    assert!(text.contains("# TYPE process_cpu_seconds_total counter\n"));
}

#[test]
fn textfiles_are_merged_and_bad_ones_flagged() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "backup.prom",
        "# HELP backup_last_success_seconds Last backup.\n# TYPE backup_last_success_seconds gauge\n\
         backup_last_success_seconds{job=\"db\"} 1700000000\n",
    );
    write(dir.path(), "broken.prom", "this is { not metrics\n");
    write(dir.path(), "ignored.txt", "x 1\n");
    let config = Config {
        collectors: ["textfile".to_owned()].into(),
        textfile_directory: Some(dir.path().to_owned()),
        ..Config::default()
    };
    let families = parse(&NodeExporter::new(config).unwrap().scrape()).unwrap();
    assert_eq!(
        value(&families, "backup_last_success_seconds", &[("job", "db")]),
        1_700_000_000.0
    );
    assert_eq!(value(&families, "node_textfile_scrape_error", &[]), 1.0);
    assert_eq!(
        family(&families, "node_textfile_mtime_seconds")
            .samples
            .len(),
        1
    );
    assert!(!families.iter().any(|f| f.name == "x"));
}

#[test]
fn unknown_collectors_are_refused() {
    let config = Config {
        collectors: ["cpu".to_owned(), "gpu".to_owned()].into(),
        ..Config::default()
    };
    let error = NodeExporter::new(config).unwrap_err().to_string();
    assert!(error.contains("unknown collector \"gpu\""), "{error}");
}

#[test]
fn this_machine_scrapes_with_every_core_collector_succeeding() {
    let exporter = NodeExporter::new(Config::default()).unwrap();
    let families = parse(&exporter.scrape()).unwrap();
    for collector in [
        "cpu",
        "diskstats",
        "filefd",
        "filesystem",
        "loadavg",
        "meminfo",
        "netclass",
        "netdev",
        "netstat",
        "os",
        "sockstat",
        "stat",
        "textfile",
        "time",
        "timex",
        "uname",
        "vmstat",
    ] {
        assert_eq!(
            value(
                &families,
                "node_scrape_collector_success",
                &[("collector", collector)]
            ),
            1.0,
            "collector {collector} failed"
        );
    }
    assert!(value(&families, "node_memory_MemTotal_bytes", &[]) > 0.0);
    assert!(
        !family(&families, "node_filesystem_size_bytes")
            .samples
            .is_empty()
    );
}

#[test]
fn address_space_limit_reads_unlimited_as_go_does() {
    let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                  Max address space         unlimited            unlimited            bytes\n";
    assert_eq!(
        max_address_space(limits),
        Some(18_446_744_073_709_551_615.0)
    );
    let limits = "Max address space         4096                 unlimited            bytes\n";
    assert_eq!(max_address_space(limits), Some(4096.0));
}
