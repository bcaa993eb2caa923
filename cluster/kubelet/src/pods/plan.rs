//! The pure decision of a pod sync, like the kubelet's computePodActions: given the pod and what
//! the runtime shows for it, which sandbox and containers to start, which container is backing
//! off, and what each container's status is. No IO and no clock: `now` is passed in.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::status::{ContainerPhase, ContainerReport};

/// First restart delay after the first crash; doubles up to [`MAX_BACKOFF`].
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(10);
/// Longest restart delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A container that ran this long restarts without delay (the back-off resets).
pub const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// The pod's sandbox as the runtime reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxState {
    /// Runtime id.
    pub id: String,
    /// Whether it is ready (running).
    pub ready: bool,
    /// Re-creation count.
    pub attempt: u32,
}

/// How a container ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    /// Exit code.
    pub code: i32,
    /// `Completed`, `Error`, `OOMKilled`, `StartError`, ...
    pub reason: String,
    /// Message from the runtime.
    pub message: String,
    /// Start time (absent if it never started).
    pub started: Option<Timestamp>,
    /// Exit time.
    pub finished: Timestamp,
}

/// A container's runtime state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuntimeState {
    /// Created but not started.
    Created,
    /// Running since.
    Running(Timestamp),
    /// Exited.
    Exited(Exit),
}

/// The latest attempt of one container in the current sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerState {
    /// Runtime id.
    pub id: String,
    /// Attempt (= restart count).
    pub attempt: u32,
    /// State.
    pub state: RuntimeState,
    /// Image id the runtime resolved.
    pub image_id: String,
    /// How the previous attempt ended, for `lastState`.
    pub previous: Option<Exit>,
    /// The attempt the current run of crashes started at: restart delays count from here, so
    /// a container that ran for [`BACKOFF_RESET`] backs off from 10 s again (the kubelet's
    /// back-off entry expires), as does one first seen by a restarted agent.
    pub backoff_from: u32,
}

/// What the probes say of a running container.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Probed {
    /// Its startup probe passed (or it has none).
    pub started: bool,
    /// Started, and its readiness probe passes (or it has none).
    pub ready: bool,
}

/// Everything the runtime shows for a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Latest sandbox.
    pub sandbox: Option<SandboxState>,
    /// Latest attempt per container name, in the current sandbox.
    pub containers: BTreeMap<String, ContainerState>,
}

/// Why a container could not be started (set by the worker, shown as `waiting`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartFailure {
    /// Reason such as `ErrImagePull`, `CreateContainerConfigError`, `RunContainerError`.
    pub reason: String,
    /// Message.
    pub message: String,
}

/// One step the worker should take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Start a sandbox (after removing the dead one, if any).
    CreateSandbox {
        /// Attempt number.
        attempt: u32,
    },
    /// Stop the sandbox: the pod has finished.
    StopSandbox,
    /// Start a container.
    StartContainer {
        /// Container name.
        name: String,
        /// Attempt (restart count).
        attempt: u32,
        /// Whether it is an init container.
        init: bool,
    },
}

/// The plan of one sync.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Steps in order.
    pub steps: Vec<Step>,
    /// Init container statuses.
    pub init_reports: Vec<ContainerReport>,
    /// Container statuses.
    pub reports: Vec<ContainerReport>,
    /// Containers waiting out a restart back-off, with the time the wait ends.
    pub backing_off: Vec<(String, Timestamp)>,
}

/// The restart delay after the `attempt`th crash of a run of crashes ended (0 for the first,
/// then 10 s doubling to 5 min; no delay after a container ran for 10 minutes).
#[must_use]
pub fn restart_delay(attempt: u32, exit: &Exit) -> Duration {
    let ran = exit
        .started
        .map(|s| exit.finished.duration_since(s).unsigned_abs())
        .unwrap_or_default();
    if attempt == 0 || ran >= BACKOFF_RESET {
        return Duration::ZERO;
    }
    let doublings = (attempt - 1).min(16);
    (INITIAL_BACKOFF * 2u32.pow(doublings)).min(MAX_BACKOFF)
}

fn restart_policy(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always")
}

fn should_restart(policy: &str, exit: &Exit) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => exit.code != 0,
        _ => true,
    }
}

fn time(t: Timestamp) -> Time {
    Time(t)
}

fn terminated(exit: &Exit) -> ContainerPhase {
    ContainerPhase::Terminated {
        exit_code: exit.code,
        reason: exit.reason.clone(),
        message: exit.message.clone(),
        started: exit.started.map(time),
        finished: time(exit.finished),
    }
}

/// Plans a sync of `pod`. `failures` are the start failures the worker met last time; `probed`
/// says which running containers passed their startup and readiness checks.
#[must_use]
pub fn plan(
    pod: &Pod,
    observed: &Observed,
    failures: &BTreeMap<String, StartFailure>,
    probed: &dyn Fn(&str) -> Probed,
    now: Timestamp,
) -> Plan {
    let spec = pod.spec.clone().unwrap_or_default();
    let policy = restart_policy(pod);
    let pod_name = format!(
        "{}_{}({})",
        pod.metadata.name.as_deref().unwrap_or_default(),
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.uid.as_deref().unwrap_or_default()
    );
    let mut plan = Plan::default();
    let terminal = kelson_common::pod::is_terminal(pod);
    let sandbox_ready = observed.sandbox.as_ref().is_some_and(|s| s.ready);

    // report a container: waiting (with the start failure), running, or exited
    let report = |name: &str,
                  state: Option<&ContainerState>,
                  waiting: Option<(String, String)>|
     -> ContainerReport {
        let phase = match (state.map(|s| &s.state), waiting) {
            (_, Some((reason, message))) => ContainerPhase::Waiting {
                reason,
                message: Some(message),
            },
            (Some(RuntimeState::Running(started)), None) => {
                let probed = probed(name);
                ContainerPhase::Running {
                    started: time(*started),
                    ready: probed.ready,
                    has_started: probed.started,
                }
            }
            (Some(RuntimeState::Exited(exit)), None) => terminated(exit),
            (Some(RuntimeState::Created) | None, None) => ContainerPhase::Waiting {
                reason: if observed.sandbox.is_some() || terminal {
                    "ContainerCreating".into()
                } else {
                    "PodInitializing".into()
                },
                message: None,
            },
        };
        let last = state.and_then(|s| match (&s.state, &s.previous) {
            (RuntimeState::Exited(exit), _) if matches!(phase, ContainerPhase::Waiting { .. }) => {
                Some(terminated(exit))
            }
            (_, Some(previous)) => Some(terminated(previous)),
            _ => None,
        });
        ContainerReport {
            name: name.to_owned(),
            phase,
            restart_count: state.map_or(0, |s| i32::try_from(s.attempt).unwrap_or(i32::MAX)),
            container_id: state.map(|s| format!("containerd://{}", s.id)),
            image_id: state.map(|s| s.image_id.clone()).unwrap_or_default(),
            last_state: last,
        }
    };
    let failure_of = |name: &str| {
        failures
            .get(name)
            .map(|f| (f.reason.clone(), f.message.clone()))
    };
    let backoff_message = |name: &str, delay: Duration| {
        format!(
            "back-off {}s restarting failed container={name} pod={pod_name}",
            delay.as_secs()
        )
    };

    // decide what happens to one container; returns whether it blocks later init containers
    let decide = |name: &str, init: bool, plan: &mut Plan| -> (ContainerReport, bool) {
        let state = observed.containers.get(name);
        let Some(state) = state else {
            if sandbox_ready && !terminal {
                plan.steps.push(Step::StartContainer {
                    name: name.to_owned(),
                    attempt: 0,
                    init,
                });
            }
            return (report(name, None, failure_of(name)), true);
        };
        match &state.state {
            RuntimeState::Running(_) => (report(name, Some(state), None), init),
            RuntimeState::Created => {
                // created and never started, with no start failure seen: the agent stopped
                // between the two; like the kubelet, start a fresh attempt
                if failure_of(name).is_none() && sandbox_ready && !terminal {
                    plan.steps.push(Step::StartContainer {
                        name: name.to_owned(),
                        attempt: state.attempt + 1,
                        init,
                    });
                }
                (report(name, Some(state), failure_of(name)), true)
            }
            RuntimeState::Exited(exit) => {
                let done = init && exit.code == 0;
                if done || terminal || !sandbox_ready || !should_restart(policy, exit) {
                    return (report(name, Some(state), None), !done);
                }
                let delay = restart_delay(state.attempt.saturating_sub(state.backoff_from), exit);
                let until =
                    exit.finished + jiff::SignedDuration::try_from(delay).unwrap_or_default();
                if until > now {
                    plan.backing_off.push((name.to_owned(), until));
                    let waiting = failure_of(name).unwrap_or_else(|| {
                        ("CrashLoopBackOff".into(), backoff_message(name, delay))
                    });
                    return (report(name, Some(state), Some(waiting)), true);
                }
                plan.steps.push(Step::StartContainer {
                    name: name.to_owned(),
                    attempt: state.attempt + 1,
                    init,
                });
                (report(name, Some(state), failure_of(name)), true)
            }
        }
    };

    // the sandbox first
    let finished = terminal || {
        // a pod whose containers all exited and will not restart is done
        let containers = &spec.containers;
        policy != "Always"
            && !containers.is_empty()
            && containers.iter().all(|c| {
                observed
                    .containers
                    .get(&c.name)
                    .is_some_and(|s| match &s.state {
                        RuntimeState::Exited(exit) => !should_restart(policy, exit),
                        _ => false,
                    })
            })
    };
    match &observed.sandbox {
        Some(sandbox) if sandbox.ready && finished => plan.steps.push(Step::StopSandbox),
        Some(sandbox) if !sandbox.ready && !finished => plan.steps.push(Step::CreateSandbox {
            attempt: sandbox.attempt + 1,
        }),
        None if !finished => plan.steps.push(Step::CreateSandbox { attempt: 0 }),
        _ => {}
    }

    // init containers run one at a time, in order
    let mut blocked = false;
    for container in spec.init_containers.iter().flatten() {
        if blocked {
            plan.init_reports.push(report(&container.name, None, None));
            continue;
        }
        let (report, blocks) = decide(&container.name, true, &mut plan);
        plan.init_reports.push(report);
        blocked = blocks;
    }
    for container in &spec.containers {
        if blocked {
            let waiting = Some(("PodInitializing".to_owned(), String::new()));
            plan.reports.push(report(&container.name, None, waiting));
            continue;
        }
        let (report, _) = decide(&container.name, false, &mut plan);
        plan.reports.push(report);
    }
    plan
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(policy: &str, init: bool) -> Pod {
        let mut spec =
            json!({"restartPolicy": policy, "containers": [{"name": "app", "image": "busybox"}]});
        if init {
            spec["initContainers"] = json!([{"name": "setup", "image": "busybox"}]);
        }
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "default", "uid": "u"}, "spec": spec, "status": {"phase": "Pending"}})).unwrap()
    }

    fn ts(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).unwrap()
    }

    fn sandbox(ready: bool) -> Option<SandboxState> {
        Some(SandboxState {
            id: "s1".into(),
            ready,
            attempt: 0,
        })
    }

    fn exited(attempt: u32, code: i32, started: i64, finished: i64) -> ContainerState {
        ContainerState {
            id: format!("c{attempt}"),
            attempt,
            state: RuntimeState::Exited(Exit {
                code,
                reason: if code == 0 { "Completed" } else { "Error" }.into(),
                message: String::new(),
                started: Some(ts(started)),
                finished: ts(finished),
            }),
            image_id: "sha256:1".into(),
            previous: None,
            backoff_from: 0,
        }
    }

    fn yes(_: &str) -> Probed {
        Probed {
            started: true,
            ready: true,
        }
    }

    #[test]
    fn fresh_pod_creates_sandbox_then_containers() {
        let pod = pod("Always", false);
        let plan = plan(&pod, &Observed::default(), &BTreeMap::new(), &yes, ts(0));
        assert_eq!(plan.steps, vec![Step::CreateSandbox { attempt: 0 }]);
        let observed = Observed {
            sandbox: sandbox(true),
            ..Default::default()
        };
        let plan = super::plan(&pod, &observed, &BTreeMap::new(), &yes, ts(0));
        assert_eq!(
            plan.steps,
            vec![Step::StartContainer {
                name: "app".into(),
                attempt: 0,
                init: false
            }]
        );
        assert!(matches!(
            &plan.reports[0].phase,
            ContainerPhase::Waiting { reason, .. } if reason == "ContainerCreating"
        ));
    }

    #[test]
    fn crash_loop_backs_off_and_doubles() {
        let pod = pod("Always", false);
        let mut observed = Observed {
            sandbox: sandbox(true),
            ..Default::default()
        };
        // the first crash restarts at once
        observed.containers.insert("app".into(), exited(0, 1, 0, 1));
        let plan = plan(&pod, &observed, &BTreeMap::new(), &yes, ts(1));
        assert_eq!(plan.steps.len(), 1);
        // the second waits 10 s, reported as CrashLoopBackOff with the last state
        observed.containers.insert("app".into(), exited(1, 1, 2, 3));
        let waiting = super::plan(&pod, &observed, &BTreeMap::new(), &yes, ts(5));
        assert!(waiting.steps.is_empty());
        assert_eq!(waiting.backing_off, vec![("app".into(), ts(13))]);
        let report = &waiting.reports[0];
        assert!(
            matches!(&report.phase, ContainerPhase::Waiting { reason, message: Some(m) }
            if reason == "CrashLoopBackOff" && m.starts_with("back-off 10s restarting failed container=app pod=p_default(u)"))
        );
        assert!(matches!(
            report.last_state,
            Some(ContainerPhase::Terminated { exit_code: 1, .. })
        ));
        assert_eq!(report.restart_count, 1);
        let restart = super::plan(&pod, &observed, &BTreeMap::new(), &yes, ts(13));
        assert_eq!(
            restart.steps,
            vec![Step::StartContainer {
                name: "app".into(),
                attempt: 2,
                init: false
            }]
        );
        assert_eq!(restart_delay(3, &exit_after(1)), Duration::from_secs(40));
        assert_eq!(restart_delay(9, &exit_after(1)), MAX_BACKOFF);
        assert_eq!(restart_delay(9, &exit_after(601)), Duration::ZERO);
    }

    #[test]
    fn back_off_starts_over_after_a_long_run() {
        let pod = pod("Always", false);
        let mut observed = Observed {
            sandbox: sandbox(true),
            ..Default::default()
        };
        // the 7th attempt ran for 11 minutes: the worker starts the run of crashes there
        let mut long = exited(7, 1, 0, 660);
        long.backoff_from = 7;
        observed.containers.insert("app".into(), long);
        let plan = super::plan(&pod, &observed, &BTreeMap::new(), &yes, ts(661));
        assert_eq!(plan.steps.len(), 1, "restarted at once");
        // its successor crashes at once: 10 s, not the 5 minutes of the 8th crash
        let mut quick = exited(8, 1, 662, 663);
        quick.backoff_from = 7;
        observed.containers.insert("app".into(), quick);
        let waiting = super::plan(&pod, &observed, &BTreeMap::new(), &yes, ts(664));
        assert_eq!(waiting.backing_off, vec![("app".into(), ts(673))]);
        assert!(matches!(&waiting.reports[0].phase,
            ContainerPhase::Waiting { message: Some(m), .. } if m.starts_with("back-off 10s")));
        // without the reset the 8th crash would wait the longest delay
        let mut stale = exited(8, 1, 662, 663);
        stale.backoff_from = 0;
        observed.containers.insert("app".into(), stale);
        let waiting = super::plan(&pod, &observed, &BTreeMap::new(), &yes, ts(664));
        assert_eq!(waiting.backing_off, vec![("app".into(), ts(963))]);
    }

    #[test]
    fn a_container_left_created_starts_afresh() {
        let pod = pod("Always", false);
        let mut observed = Observed {
            sandbox: sandbox(true),
            ..Default::default()
        };
        let mut created = exited(2, 0, 0, 0);
        created.state = RuntimeState::Created;
        observed.containers.insert("app".into(), created);
        let plan = super::plan(&pod, &observed, &BTreeMap::new(), &yes, ts(1));
        assert_eq!(
            plan.steps,
            vec![Step::StartContainer {
                name: "app".into(),
                attempt: 3,
                init: false
            }]
        );
        // one whose start this agent saw fail waits, reported with the failure
        let failures = BTreeMap::from([(
            "app".to_owned(),
            StartFailure {
                reason: "RunContainerError".into(),
                message: "no such file".into(),
            },
        )]);
        let plan = super::plan(&pod, &observed, &failures, &yes, ts(1));
        assert!(plan.steps.is_empty());
        assert!(matches!(&plan.reports[0].phase,
            ContainerPhase::Waiting { reason, .. } if reason == "RunContainerError"));
    }

    #[test]
    fn running_reports_startup_and_readiness_apart() {
        let pod = pod("Always", false);
        let mut observed = Observed {
            sandbox: sandbox(true),
            ..Default::default()
        };
        let mut running = exited(0, 0, 0, 0);
        running.state = RuntimeState::Running(ts(0));
        observed.containers.insert("app".into(), running);
        let starting = |_: &str| Probed::default();
        let plan = super::plan(&pod, &observed, &BTreeMap::new(), &starting, ts(5));
        assert!(matches!(
            plan.reports[0].phase,
            ContainerPhase::Running {
                ready: false,
                has_started: false,
                ..
            }
        ));
        let plan = super::plan(&pod, &observed, &BTreeMap::new(), &yes, ts(5));
        assert!(matches!(
            plan.reports[0].phase,
            ContainerPhase::Running {
                ready: true,
                has_started: true,
                ..
            }
        ));
    }

    fn exit_after(seconds: i64) -> Exit {
        Exit {
            code: 1,
            reason: "Error".into(),
            message: String::new(),
            started: Some(ts(0)),
            finished: ts(seconds),
        }
    }

    #[test]
    fn restart_policies() {
        for (policy, code, restarts) in [
            ("Never", 1, false),
            ("Never", 0, false),
            ("OnFailure", 0, false),
            ("OnFailure", 1, true),
            ("Always", 0, true),
        ] {
            let pod = pod(policy, false);
            let mut observed = Observed {
                sandbox: sandbox(true),
                ..Default::default()
            };
            observed
                .containers
                .insert("app".into(), exited(0, code, 0, 1));
            let plan = plan(&pod, &observed, &BTreeMap::new(), &yes, ts(2));
            let started = plan
                .steps
                .iter()
                .any(|s| matches!(s, Step::StartContainer { .. }));
            assert_eq!(started, restarts, "{policy} exit {code}");
            // a finished pod gives back its sandbox
            assert_eq!(
                plan.steps.contains(&Step::StopSandbox),
                !restarts,
                "{policy} exit {code}"
            );
        }
    }

    #[test]
    fn init_containers_run_first_and_in_order() {
        let pod = pod("Always", true);
        let mut observed = Observed {
            sandbox: sandbox(true),
            ..Default::default()
        };
        let plan = plan(&pod, &observed, &BTreeMap::new(), &yes, ts(0));
        assert_eq!(
            plan.steps,
            vec![Step::StartContainer {
                name: "setup".into(),
                attempt: 0,
                init: true
            }]
        );
        assert!(matches!(&plan.reports[0].phase,
            ContainerPhase::Waiting { reason, .. } if reason == "PodInitializing"));
        observed
            .containers
            .insert("setup".into(), exited(0, 0, 0, 1));
        let plan = super::plan(&pod, &observed, &BTreeMap::new(), &yes, ts(2));
        assert_eq!(
            plan.steps,
            vec![Step::StartContainer {
                name: "app".into(),
                attempt: 0,
                init: false
            }]
        );
    }

    #[test]
    fn dead_sandbox_is_recreated_and_failures_are_reported() {
        let pod = pod("Always", false);
        let observed = Observed {
            sandbox: sandbox(false),
            ..Default::default()
        };
        let plan = plan(&pod, &observed, &BTreeMap::new(), &yes, ts(0));
        assert_eq!(plan.steps, vec![Step::CreateSandbox { attempt: 1 }]);
        let failures = BTreeMap::from([(
            "app".to_owned(),
            StartFailure {
                reason: "ErrImagePull".into(),
                message: "no registry".into(),
            },
        )]);
        let observed = Observed {
            sandbox: sandbox(true),
            ..Default::default()
        };
        let plan = super::plan(&pod, &observed, &failures, &yes, ts(0));
        assert!(matches!(&plan.reports[0].phase,
            ContainerPhase::Waiting { reason, message: Some(m) } if reason == "ErrImagePull" && m == "no registry"));
    }
}
