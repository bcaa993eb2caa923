//! System-wide collectors: uname, os (os-release), time, timex (adjtimex), selinux and
//! textfile (`*.prom` files an administrator or a cron job writes).

use std::collections::BTreeMap;
use std::path::Path;

use super::{Context, read, read_optional};
use crate::exposition::{self, Families};

/// `node_uname_info`.
pub(super) fn uname(_context: &Context, out: &mut Families) -> anyhow::Result<()> {
    let uname = rustix::system::uname();
    let text = |c: &std::ffi::CStr| c.to_string_lossy().into_owned();
    out.gauge(
        "node_uname_info",
        "Labeled system information as provided by the uname system call.",
        &[
            ("domainname", &text(uname.domainname())),
            ("machine", &text(uname.machine())),
            ("nodename", &text(uname.nodename())),
            ("release", &text(uname.release())),
            ("sysname", &text(uname.sysname())),
            ("version", &text(uname.version())),
        ],
        1.0,
    );
    Ok(())
}

/// The `KEY=value` pairs of an os-release file, quotes removed.
fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.starts_with('#') {
                return None;
            }
            let (key, value) = line.split_once('=')?;
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(value);
            Some((key.trim().to_owned(), value.replace("\\\"", "\"")))
        })
        .collect()
}

/// The major.minor part of a VERSION_ID as a number (`22.04.3` → 22.04).
fn os_version(version_id: &str) -> Option<f64> {
    let mut parts = version_id.split('.');
    let major = parts.next()?;
    let text = match parts.next() {
        Some(minor) => format!("{major}.{minor}"),
        None => major.to_owned(),
    };
    text.parse().ok()
}

/// `node_os_info` and `node_os_version` from os-release.
pub(super) fn os(context: &Context, out: &mut Families) -> anyhow::Result<()> {
    let root = &context.config.rootfs;
    let text = match read_optional(&root.join("etc/os-release")) {
        Some(text) => text,
        None => read(&root.join("usr/lib/os-release"))?,
    };
    let release = parse_os_release(&text);
    let get = |key: &str| release.get(key).map_or("", String::as_str);
    out.gauge(
        "node_os_info",
        "A metric with a constant '1' value labeled by build_id, id, id_like, image_id, image_version, name, pretty_name, variant, variant_id, version, version_codename, version_id.",
        &[
            ("build_id", get("BUILD_ID")),
            ("id", get("ID")),
            ("id_like", get("ID_LIKE")),
            ("image_id", get("IMAGE_ID")),
            ("image_version", get("IMAGE_VERSION")),
            ("name", get("NAME")),
            ("pretty_name", get("PRETTY_NAME")),
            ("variant", get("VARIANT")),
            ("variant_id", get("VARIANT_ID")),
            ("version", get("VERSION")),
            ("version_codename", get("VERSION_CODENAME")),
            ("version_id", get("VERSION_ID")),
        ],
        1.0,
    );
    if let Some(version) = os_version(get("VERSION_ID")) {
        out.gauge(
            "node_os_version",
            "Metric containing the major.minor part of the OS version.",
            &[
                ("id", get("ID")),
                ("id_like", get("ID_LIKE")),
                ("name", get("NAME")),
            ],
            version,
        );
    }
    Ok(())
}

/// `node_time_seconds`, `node_time_zone_offset_seconds` and the clock sources.
pub(super) fn time(context: &Context, out: &mut Families) -> anyhow::Result<()> {
    let now = jiff::Zoned::now();
    let seconds = now.timestamp().as_nanosecond() as f64 / 1e9;
    out.gauge(
        "node_time_seconds",
        "System time in seconds since epoch (1970).",
        &[],
        seconds,
    );
    let info = now.time_zone().to_offset_info(now.timestamp());
    out.gauge(
        "node_time_zone_offset_seconds",
        "System time zone offset in seconds.",
        &[("time_zone", info.abbreviation())],
        f64::from(info.offset().seconds()),
    );
    let directory = context.sys("devices/system/clocksource");
    let Ok(entries) = std::fs::read_dir(&directory) else {
        return Ok(());
    };
    let mut sources: Vec<_> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|name| Some((name.strip_prefix("clocksource")?.to_owned(), name.clone())))
        .collect();
    sources.sort();
    for (device, name) in sources {
        let path = directory.join(&name);
        if let Some(available) = read_optional(&path.join("available_clocksource")) {
            for source in available.split_ascii_whitespace() {
                out.gauge(
                    "node_time_clocksource_available_info",
                    "Available clocksources read from '/sys/devices/system/clocksource'.",
                    &[("clocksource", source), ("device", &device)],
                    1.0,
                );
            }
        }
        if let Some(current) = read_optional(&path.join("current_clocksource")) {
            out.gauge(
                "node_time_clocksource_current_info",
                "Current clocksource read from '/sys/devices/system/clocksource'.",
                &[("clocksource", current.trim()), ("device", &device)],
                1.0,
            );
        }
    }
    Ok(())
}

/// The kernel clock's state, from adjtimex(2) in read-only mode.
#[allow(unsafe_code)]
fn read_timex() -> std::io::Result<(libc::timex, i32)> {
    // SAFETY: `timex` is a plain C struct for which all-zero bytes are a valid value; with
    // `modes` zero adjtimex only writes the clock's state into it and changes nothing.
    let mut timex: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: the pointer is to a live, exclusively borrowed `timex` for the call's duration.
    let state = unsafe { libc::adjtimex(&raw mut timex) };
    if state < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((timex, state))
}

/// `node_timex_*` from adjtimex(2).
pub(super) fn timex(_context: &Context, out: &mut Families) -> anyhow::Result<()> {
    const STA_NANO: i32 = 0x2000;
    const TIME_ERROR: i32 = 5;
    // frequencies are in parts per million with a 16-bit fraction
    const PPM16: f64 = 1_000_000.0 * 65536.0;
    let (t, state) = read_timex()?;
    let divisor = if t.status & STA_NANO != 0 { 1e9 } else { 1e6 };
    let gauges: [(&str, &str, f64); 13] = [
        (
            "node_timex_offset_seconds",
            "Time offset in between local system and reference clock.",
            t.offset as f64 / divisor,
        ),
        (
            "node_timex_frequency_adjustment_ratio",
            "Local clock frequency adjustment.",
            1.0 + t.freq as f64 / PPM16,
        ),
        (
            "node_timex_maxerror_seconds",
            "Maximum error in seconds.",
            t.maxerror as f64 / 1e6,
        ),
        (
            "node_timex_estimated_error_seconds",
            "Estimated error in seconds.",
            t.esterror as f64 / 1e6,
        ),
        (
            "node_timex_status",
            "Value of the status array bits.",
            f64::from(t.status),
        ),
        (
            "node_timex_loop_time_constant",
            "Phase-locked loop time constant.",
            t.constant as f64,
        ),
        (
            "node_timex_tick_seconds",
            "Seconds between clock ticks.",
            t.tick as f64 / 1e6,
        ),
        (
            "node_timex_pps_frequency_hertz",
            "Pulse per second frequency.",
            t.ppsfreq as f64 / PPM16,
        ),
        (
            "node_timex_pps_jitter_seconds",
            "Pulse per second jitter.",
            t.jitter as f64 / divisor,
        ),
        (
            "node_timex_pps_shift_seconds",
            "Pulse per second interval duration.",
            f64::from(t.shift),
        ),
        (
            "node_timex_pps_stability_hertz",
            "Pulse per second stability, average of recent frequency changes.",
            t.stabil as f64 / PPM16,
        ),
        (
            "node_timex_tai_offset_seconds",
            "International Atomic Time (TAI) offset.",
            f64::from(t.tai),
        ),
        (
            "node_timex_sync_status",
            "Is clock synchronized to a reliable server (1 = yes, 0 = no).",
            if state == TIME_ERROR { 0.0 } else { 1.0 },
        ),
    ];
    for (name, help, value) in gauges {
        out.gauge(name, help, &[], value);
    }
    let counters = [
        (
            "node_timex_pps_jitter_total",
            "Pulse per second count of jitter limit exceeded events.",
            t.jitcnt as f64,
        ),
        (
            "node_timex_pps_calibration_total",
            "Pulse per second count of calibration intervals.",
            t.calcnt as f64,
        ),
        (
            "node_timex_pps_error_total",
            "Pulse per second count of calibration errors.",
            t.errcnt as f64,
        ),
        (
            "node_timex_pps_stability_exceeded_total",
            "Pulse per second count of stability limit exceeded events.",
            t.stbcnt as f64,
        ),
    ];
    for (name, help, value) in counters {
        out.counter(name, help, &[], value);
    }
    Ok(())
}

/// `node_selinux_enabled`.
pub(super) fn selinux(context: &Context, out: &mut Families) -> anyhow::Result<()> {
    let enabled = context.sys("fs/selinux/enforce").exists();
    out.gauge(
        "node_selinux_enabled",
        "SELinux is enabled, 1 is true, 0 is false",
        &[],
        if enabled { 1.0 } else { 0.0 },
    );
    Ok(())
}

/// The metrics of every `*.prom` file in the textfile directory, each file's mtime, and
/// `node_textfile_scrape_error` (1 when a file could not be read or parsed; that file is
/// skipped, the others still count).
pub(super) fn textfile(context: &Context, out: &mut Families) -> anyhow::Result<()> {
    let mut error = false;
    if let Some(directory) = &context.config.textfile_directory {
        error = !read_textfiles(directory, out);
    }
    out.gauge(
        "node_textfile_scrape_error",
        "1 if there was an error opening or reading a file, 0 otherwise",
        &[],
        if error { 1.0 } else { 0.0 },
    );
    Ok(())
}

/// Adds the directory's files; false when any could not be used.
fn read_textfiles(directory: &Path, out: &mut Families) -> bool {
    let entries = match std::fs::read_dir(directory) {
        Ok(entries) => entries,
        Err(error) => {
            tracing::warn!(directory = %directory.display(), %error, "cannot read the textfile directory");
            return false;
        }
    };
    let mut files: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "prom"))
        .collect();
    files.sort();
    let mut ok = true;
    for path in files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parsed = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| exposition::parse(&text).map_err(|e| e.to_string()));
        let families = match parsed {
            Ok(families) => families,
            Err(error) => {
                tracing::warn!(file = %path.display(), %error, "skipping a textfile");
                ok = false;
                continue;
            }
        };
        for family in families {
            if family.name.starts_with("node_textfile_") {
                continue;
            }
            let mut lines = String::new();
            for sample in &family.samples {
                let labels: Vec<(&str, &str)> = sample
                    .labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                exposition::write_sample(&mut lines, &sample.name, &labels, sample.value);
            }
            let help = if family.help.is_empty() {
                format!("Metric read from {}", path.display())
            } else {
                family.help.clone()
            };
            out.add_raw(&family.name, &help, family.kind, &lines);
        }
        if let Ok(modified) = std::fs::metadata(&path).and_then(|m| m.modified())
            && let Ok(since) = modified.duration_since(std::time::UNIX_EPOCH)
        {
            out.gauge(
                "node_textfile_mtime_seconds",
                "Unixtime mtime of textfiles successfully read.",
                &[("file", &name)],
                since.as_secs_f64().trunc(),
            );
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_values_unquote() {
        let release = parse_os_release(
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n# comment\nVERSION_ID='12'\n",
        );
        assert_eq!(release["PRETTY_NAME"], "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(release["ID"], "debian");
        assert_eq!(release["VERSION_ID"], "12");
    }

    #[test]
    fn os_version_keeps_major_and_minor() {
        assert_eq!(os_version("12"), Some(12.0));
        assert_eq!(os_version("22.04.3"), Some(22.04));
        assert_eq!(os_version("rolling"), None);
    }
}
