//! Collectors for block devices (/proc/diskstats) and mounted filesystems (statfs).

use std::collections::HashSet;
use std::path::Path;

use super::{Context, field, read_optional};
use crate::exposition::Families;

/// Sector size /proc/diskstats counts in, whatever the device's.
const SECTOR: f64 = 512.0;

/// One column of /proc/diskstats (after major, minor, name): family, help, whether a
/// counter, and the factor to scale by.
struct DiskColumn {
    name: &'static str,
    help: &'static str,
    counter: bool,
    scale: f64,
}

const fn column(name: &'static str, help: &'static str, counter: bool, scale: f64) -> DiskColumn {
    DiskColumn {
        name,
        help,
        counter,
        scale,
    }
}

const DISK_COLUMNS: &[DiskColumn] = &[
    column(
        "node_disk_reads_completed_total",
        "The total number of reads completed successfully.",
        true,
        1.0,
    ),
    column(
        "node_disk_reads_merged_total",
        "The total number of reads merged.",
        true,
        1.0,
    ),
    column(
        "node_disk_read_bytes_total",
        "The total number of bytes read successfully.",
        true,
        SECTOR,
    ),
    column(
        "node_disk_read_time_seconds_total",
        "The total number of seconds spent by all reads.",
        true,
        0.001,
    ),
    column(
        "node_disk_writes_completed_total",
        "The total number of writes completed successfully.",
        true,
        1.0,
    ),
    column(
        "node_disk_writes_merged_total",
        "The number of writes merged.",
        true,
        1.0,
    ),
    column(
        "node_disk_written_bytes_total",
        "The total number of bytes written successfully.",
        true,
        SECTOR,
    ),
    column(
        "node_disk_write_time_seconds_total",
        "This is the total number of seconds spent by all writes.",
        true,
        0.001,
    ),
    column(
        "node_disk_io_now",
        "The number of I/Os currently in progress.",
        false,
        1.0,
    ),
    column(
        "node_disk_io_time_seconds_total",
        "Total seconds spent doing I/Os.",
        true,
        0.001,
    ),
    column(
        "node_disk_io_time_weighted_seconds_total",
        "The weighted # of seconds spent doing I/Os.",
        true,
        0.001,
    ),
    column(
        "node_disk_discards_completed_total",
        "The total number of discards completed successfully.",
        true,
        1.0,
    ),
    column(
        "node_disk_discards_merged_total",
        "The total number of discards merged.",
        true,
        1.0,
    ),
    column(
        "node_disk_discarded_sectors_total",
        "The total number of sectors discarded successfully.",
        true,
        1.0,
    ),
    column(
        "node_disk_discard_time_seconds_total",
        "This is the total number of seconds spent by all discards.",
        true,
        0.001,
    ),
    column(
        "node_disk_flush_requests_total",
        "The total number of flush requests completed successfully",
        true,
        1.0,
    ),
    column(
        "node_disk_flush_requests_time_seconds_total",
        "This is the total number of seconds spent by all flush requests.",
        true,
        0.001,
    ),
];

/// `node_disk_*` for every block device not excluded, and `node_disk_info`.
pub(super) fn diskstats(context: &Context, out: &mut Families) -> anyhow::Result<()> {
    let text = context.read_proc("diskstats")?;
    for line in text.lines() {
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        if fields.len() < 14 {
            continue;
        }
        let device = fields[2];
        if context.config.diskstats_device_exclude.is_match(device) {
            continue;
        }
        let labels = [("device", device)];
        out.gauge(
            "node_disk_info",
            "Info of /sys/block/<block_device>.",
            &[
                ("device", device),
                ("major", fields[0]),
                ("minor", fields[1]),
                ("model", ""),
                ("path", ""),
                ("revision", ""),
                ("serial", ""),
                ("wwn", ""),
            ],
            1.0,
        );
        for (i, column) in DISK_COLUMNS.iter().enumerate() {
            let Some(value) = field::<f64>(&fields, i + 3) else {
                break;
            };
            let value = value * column.scale;
            if column.counter {
                out.counter(column.name, column.help, &labels, value);
            } else {
                out.gauge(column.name, column.help, &labels, value);
            }
        }
    }
    Ok(())
}

/// One line of /proc/N/mounts.
#[derive(Debug, PartialEq, Eq)]
struct Mount {
    device: String,
    mount_point: String,
    fs_type: String,
    read_only: bool,
}

/// Undoes the octal escapes (`\040` for a space) of a mounts field.
fn unescape_mount(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let code =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_mounts(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_ascii_whitespace().collect();
            if fields.len() < 4 {
                return None;
            }
            Some(Mount {
                device: unescape_mount(fields[0]),
                mount_point: unescape_mount(fields[1]),
                fs_type: fields[2].to_owned(),
                read_only: fields[3].split(',').any(|o| o == "ro"),
            })
        })
        .collect()
}

/// `node_filesystem_*` for every mounted filesystem not excluded.
pub(super) fn filesystem(context: &Context, out: &mut Families) -> anyhow::Result<()> {
    let text = match read_optional(&context.proc("1/mounts")) {
        Some(text) => text,
        None => context.read_proc("self/mounts")?,
    };
    let mut seen = HashSet::new();
    for mount in parse_mounts(&text) {
        if context
            .config
            .mount_points_exclude
            .is_match(&mount.mount_point)
            || context.config.fs_types_exclude.is_match(&mount.fs_type)
        {
            continue;
        }
        if !seen.insert((
            mount.device.clone(),
            mount.mount_point.clone(),
            mount.fs_type.clone(),
        )) {
            continue;
        }
        let labels = [
            ("device", mount.device.as_str()),
            ("fstype", mount.fs_type.as_str()),
            ("mountpoint", mount.mount_point.as_str()),
        ];
        let path = rooted(&context.config.rootfs, &mount.mount_point);
        let stat = rustix::fs::statfs(&path);
        out.gauge(
            "node_filesystem_device_error",
            "Whether an error occurred while getting statistics for the given device.",
            &labels,
            if stat.is_ok() { 0.0 } else { 1.0 },
        );
        let Ok(stat) = stat else {
            continue;
        };
        let block = stat.f_bsize as f64;
        let values = [
            (
                "node_filesystem_size_bytes",
                "Filesystem size in bytes.",
                stat.f_blocks as f64 * block,
            ),
            (
                "node_filesystem_free_bytes",
                "Filesystem free space in bytes.",
                stat.f_bfree as f64 * block,
            ),
            (
                "node_filesystem_avail_bytes",
                "Filesystem space available to non-root users in bytes.",
                stat.f_bavail as f64 * block,
            ),
            (
                "node_filesystem_files",
                "Filesystem total file nodes.",
                stat.f_files as f64,
            ),
            (
                "node_filesystem_files_free",
                "Filesystem total free file nodes.",
                stat.f_ffree as f64,
            ),
            (
                "node_filesystem_readonly",
                "Filesystem read-only status.",
                if mount.read_only { 1.0 } else { 0.0 },
            ),
        ];
        for (name, help, value) in values {
            out.gauge(name, help, &labels, value);
        }
    }
    Ok(())
}

/// `mount_point` under `root` (itself when the root is `/`).
fn rooted(root: &Path, mount_point: &str) -> std::path::PathBuf {
    root.join(mount_point.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_unescape_and_read_only() {
        let mounts = parse_mounts(
            "/dev/vda / ext4 rw,relatime 0 0\n\
             /dev/vdb /mnt/my\\040disk xfs ro,noatime 0 0\n\
             short line\n",
        );
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[1].mount_point, "/mnt/my disk");
        assert!(mounts[1].read_only);
        assert!(!mounts[0].read_only);
    }

    #[test]
    fn mount_points_resolve_under_the_root() {
        assert_eq!(rooted(Path::new("/"), "/"), Path::new("/"));
        assert_eq!(
            rooted(Path::new("/host"), "/var/lib"),
            Path::new("/host/var/lib")
        );
    }
}
