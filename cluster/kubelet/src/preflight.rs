//! Preflight checks before a node starts, in kubeadm's manner: each check names what is wrong
//! and how to fix it. Errors stop `kelson up` and `kelson agent` (unless ignored by name);
//! warnings are printed.

use std::net::SocketAddr;
use std::path::Path;

use crate::cri::Cri;

/// How a check came out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Fine.
    Ok,
    /// Worth knowing, not fatal.
    Warning(String),
    /// The node cannot work this way.
    Error(String),
}

/// One check's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// The check's name, for `--ignore-preflight-errors`.
    pub name: &'static str,
    /// Its outcome.
    pub outcome: Outcome,
}

fn check(name: &'static str, outcome: Outcome) -> Check {
    Check { name, outcome }
}

/// Whether swap is on, from the text of /proc/swaps.
#[must_use]
pub fn swap_enabled(swaps: &str) -> bool {
    swaps.lines().skip(1).any(|line| !line.trim().is_empty())
}

/// The cgroup controllers the kubelet needs that are missing, given /proc/self/mountinfo
/// (cgroup v1 hierarchies or a v2 mount with its controllers).
#[must_use]
pub fn missing_cgroup_controllers(
    mountinfo: &str,
    v2_controllers: Option<&str>,
) -> Vec<&'static str> {
    let needed = ["cpu", "memory", "pids"];
    let v1: Vec<&str> = mountinfo
        .lines()
        .filter(|line| line.contains(" - cgroup "))
        .filter_map(|line| line.rsplit(' ').next())
        .flat_map(|options| options.split(','))
        .collect();
    let v2: Vec<&str> = v2_controllers
        .map(|c| c.split_whitespace().collect())
        .unwrap_or_default();
    needed
        .into_iter()
        .filter(|c| !v1.contains(c) && !v2.contains(c))
        .collect()
}

/// Runs the checks for a node whose runtime is at `socket` and which will listen on `ports`.
pub async fn run(socket: &Path, ports: &[SocketAddr]) -> Vec<Check> {
    let mut checks = Vec::new();
    checks.push(check(
        "IsPrivilegedUser",
        if rustix::process::geteuid().is_root() {
            Outcome::Ok
        } else {
            Outcome::Error("user is not running as root; run kelson as root".into())
        },
    ));
    let runtime = match Cri::connect(socket).await {
        Ok(cri) => match cri.version().await {
            Ok(version) => match cri.ready().await {
                Ok(Ok(())) => Outcome::Ok,
                Ok(Err(reason)) => Outcome::Error(format!(
                    "{} {} is not ready: {reason}; check /etc/cni/net.d and /var/log/containerd.log",
                    version.runtime_name, version.runtime_version
                )),
                Err(error) => Outcome::Error(error.to_string()),
            },
            Err(error) => Outcome::Error(format!(
                "container runtime at {} does not answer CRI: {error}; is containerd's CRI plugin enabled?",
                socket.display()
            )),
        },
        Err(error) => Outcome::Error(format!(
            "{error}; run scripts/setup.sh, which installs and starts containerd"
        )),
    };
    checks.push(check("CRI", runtime));
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").ok();
    let missing = missing_cgroup_controllers(&mountinfo, v2.as_deref());
    checks.push(check(
        "SystemVerification",
        if missing.is_empty() {
            Outcome::Ok
        } else {
            Outcome::Error(format!(
                "missing cgroup controllers: {}; the kubelet cannot enforce pod resources",
                missing.join(", ")
            ))
        },
    ));
    for port in ports {
        let free = std::net::TcpListener::bind(port).is_ok();
        checks.push(check(
            "Port",
            if free {
                Outcome::Ok
            } else {
                Outcome::Error(format!(
                    "port {} is in use; stop what listens there or choose another port",
                    port.port()
                ))
            },
        ));
    }
    let forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default();
    checks.push(check(
        "FileContent--proc-sys-net-ipv4-ip_forward",
        if forward.trim() == "1" {
            Outcome::Ok
        } else {
            Outcome::Error(
                "/proc/sys/net/ipv4/ip_forward contents are not set to 1; run: sysctl -w net.ipv4.ip_forward=1"
                    .into(),
            )
        },
    ));
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    checks.push(check(
        "Swap",
        if swap_enabled(&swaps) {
            Outcome::Warning(
                "swap is on; memory limits and eviction are less predictable (swapoff -a turns it off)"
                    .into(),
            )
        } else {
            Outcome::Ok
        },
    ));
    let cni = std::fs::read_dir("/etc/cni/net.d")
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".conflist"))
        })
        .unwrap_or(false);
    checks.push(check(
        "CNI",
        if cni {
            Outcome::Ok
        } else {
            Outcome::Warning(
                "no CNI network in /etc/cni/net.d; only hostNetwork pods can start (scripts/setup.sh writes one)"
                    .into(),
            )
        },
    ));
    checks
}

/// Prints the results; returns the errors not ignored (`ignored` holds names or `all`).
pub fn report(checks: &[Check], ignored: &[String]) -> Vec<String> {
    let mut errors = Vec::new();
    for check in checks {
        let ignore = ignored.iter().any(|i| i == "all" || i == check.name);
        match &check.outcome {
            Outcome::Ok => {}
            Outcome::Warning(message) => eprintln!("[preflight] WARNING {}: {message}", check.name),
            Outcome::Error(message) if ignore => {
                eprintln!("[preflight] ignored error {}: {message}", check.name);
            }
            Outcome::Error(message) => {
                eprintln!("[preflight] ERROR {}: {message}", check.name);
                errors.push(format!("[ERROR {}]: {message}", check.name));
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_and_cgroups() {
        assert!(!swap_enabled(
            "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
        ));
        assert!(swap_enabled(
            "Filename\tType\tSize\tUsed\tPriority\n/swapfile file 1024 0 -2\n"
        ));
        let v1 = "35 25 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                  36 25 0:31 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(missing_cgroup_controllers(v1, None), vec!["pids"]);
        assert!(missing_cgroup_controllers("", Some("cpuset cpu io memory pids")).is_empty());
    }

    #[tokio::test]
    async fn a_missing_runtime_is_an_error_that_names_the_fix() {
        let checks = run(Path::new("/nonexistent/containerd.sock"), &[]).await;
        let cri = checks.iter().find(|c| c.name == "CRI").unwrap();
        assert!(matches!(&cri.outcome, Outcome::Error(m) if m.contains("scripts/setup.sh")));
        let errors = report(&checks, &["CRI".into()]);
        assert!(errors.iter().all(|e| !e.contains("CRI")));
    }
}
