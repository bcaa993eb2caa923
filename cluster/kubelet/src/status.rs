//! Pod status as the kubelet reports it: phase, conditions and container statuses in exactly the
//! shape `kubectl get` and `describe` read. Both the real runtime and hollow nodes report
//! through these functions, so simulation and reality cannot drift apart.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// What the runtime says about one container.
#[derive(Clone, Debug, PartialEq)]
pub enum ContainerPhase {
    /// Not started yet (reason such as `ContainerCreating`, `ImagePullBackOff`).
    Waiting {
        /// Reason.
        reason: String,
        /// Message.
        message: Option<String>,
    },
    /// Running since `started`.
    Running {
        /// Start time.
        started: Time,
        /// Readiness (probes).
        ready: bool,
        /// Whether its startup probe passed (or it has none): the status' `started`.
        has_started: bool,
    },
    /// Exited.
    Terminated {
        /// Exit code.
        exit_code: i32,
        /// `Completed`, `Error`, `OOMKilled`, ...
        reason: String,
        /// The termination message (the file at `terminationMessagePath`, or the log's end).
        message: String,
        /// Start time.
        started: Option<Time>,
        /// Exit time.
        finished: Time,
    },
}

/// One container's observed state.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerReport {
    /// Container name.
    pub name: String,
    /// Current state.
    pub phase: ContainerPhase,
    /// Restarts so far.
    pub restart_count: i32,
    /// Runtime container id, e.g. `containerd://abc`.
    pub container_id: Option<String>,
    /// Image id.
    pub image_id: String,
    /// How the previous run ended (a `Terminated` phase), for `lastState`.
    pub last_state: Option<ContainerPhase>,
}

fn condition(type_: &str, status: bool, now: &Time, previous: Option<&PodStatus>) -> PodCondition {
    let status = if status { "True" } else { "False" };
    // the transition time only moves when the status changes
    let since = previous
        .and_then(|p| p.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    PodCondition {
        type_: type_.into(),
        status: status.into(),
        last_transition_time: Some(since),
        ..PodCondition::default()
    }
}

fn phase_state(phase: &ContainerPhase, container_id: Option<&String>) -> ContainerState {
    match phase {
        ContainerPhase::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..ContainerState::default()
        },
        ContainerPhase::Running { started, .. } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(started.clone()),
            }),
            ..ContainerState::default()
        },
        ContainerPhase::Terminated {
            exit_code,
            reason,
            message,
            started,
            finished,
        } => ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: *exit_code,
                reason: Some(reason.clone()),
                message: Some(message.clone()).filter(|m| !m.is_empty()),
                started_at: started.clone(),
                finished_at: Some(finished.clone()),
                container_id: container_id.cloned(),
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        },
    }
}

fn container_status(c: &ContainerReport, image: &str) -> ContainerStatus {
    let (ready, started) = match &c.phase {
        ContainerPhase::Running {
            ready, has_started, ..
        } => (*ready, *has_started),
        _ => (false, false),
    };
    ContainerStatus {
        name: c.name.clone(),
        state: Some(phase_state(&c.phase, c.container_id.as_ref())),
        last_state: Some(
            c.last_state
                .as_ref()
                .map(|phase| phase_state(phase, None))
                .unwrap_or_default(),
        ),
        ready,
        started: Some(started),
        restart_count: c.restart_count,
        image: image.to_owned(),
        image_id: c.image_id.clone(),
        container_id: c.container_id.clone(),
        ..ContainerStatus::default()
    }
}

/// The status of a pod whose containers are as `containers` report; `pod_ip` and `host_ip` are
/// the sandbox's and the node's addresses.
#[must_use]
pub fn pod_status(
    pod: &Pod,
    containers: &[ContainerReport],
    pod_ip: Option<&str>,
    host_ip: &str,
    now: &Time,
) -> PodStatus {
    pod_status_with_init(pod, &[], containers, pod_ip, host_ip, now)
}

/// [`pod_status`] for a pod with init containers: the pod stays Pending and not Initialized
/// until each has completed; a failed init container that will not restart fails the pod.
#[must_use]
pub fn pod_status_with_init(
    pod: &Pod,
    init_containers: &[ContainerReport],
    containers: &[ContainerReport],
    pod_ip: Option<&str>,
    host_ip: &str,
    now: &Time,
) -> PodStatus {
    let previous = pod.status.as_ref();
    let spec = pod.spec.clone().unwrap_or_default();
    let image_of = |name: &str| {
        spec.containers
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.image.clone())
            .unwrap_or_default()
    };
    let init_image_of = |name: &str| {
        spec.init_containers
            .iter()
            .flatten()
            .find(|c| c.name == name)
            .and_then(|c| c.image.clone())
            .unwrap_or_default()
    };
    let statuses: Vec<ContainerStatus> = containers
        .iter()
        .map(|c| container_status(c, &image_of(&c.name)))
        .collect();
    let init_statuses: Vec<ContainerStatus> = init_containers
        .iter()
        .map(|c| container_status(c, &init_image_of(&c.name)))
        .collect();
    let all_ready = !statuses.is_empty() && statuses.iter().all(|s| s.ready);
    let restart_policy = spec.restart_policy.as_deref().unwrap_or("Always");
    let terminated: Vec<&ContainerReport> = containers
        .iter()
        .filter(|c| matches!(c.phase, ContainerPhase::Terminated { .. }))
        .collect();
    let all_terminated = !containers.is_empty() && terminated.len() == containers.len();
    let all_succeeded = all_terminated
        && terminated
            .iter()
            .all(|c| matches!(c.phase, ContainerPhase::Terminated { exit_code: 0, .. }));
    // a container waiting to restart after a crash counts as started (kubelet's getPhase)
    let has_started = |c: &ContainerReport| {
        !matches!(c.phase, ContainerPhase::Waiting { .. }) || c.last_state.is_some()
    };
    let initialized = init_containers
        .iter()
        .all(|c| matches!(c.phase, ContainerPhase::Terminated { exit_code: 0, .. }));
    let init_failed = restart_policy == "Never"
        && init_containers.iter().any(
            |c| matches!(c.phase, ContainerPhase::Terminated { exit_code, .. } if exit_code != 0),
        );
    let phase = if init_failed {
        "Failed"
    } else if !initialized {
        "Pending"
    } else if all_terminated && restart_policy != "Always" {
        if all_succeeded {
            "Succeeded"
        } else if restart_policy == "Never" {
            "Failed"
        } else {
            // OnFailure: failed containers are restarted
            "Running"
        }
    } else if containers.iter().any(has_started) {
        "Running"
    } else {
        "Pending"
    };
    let started = containers
        .iter()
        .any(|c| !matches!(c.phase, ContainerPhase::Waiting { .. }));
    let conditions = vec![
        condition("PodReadyToStartContainers", pod_ip.is_some(), now, previous),
        condition("Initialized", initialized, now, previous),
        condition("Ready", all_ready && phase == "Running", now, previous),
        condition("ContainersReady", all_ready, now, previous),
        condition("PodScheduled", true, now, previous),
    ];
    let start_time = previous
        .and_then(|p| p.start_time.clone())
        .or_else(|| started.then(|| now.clone()))
        .or_else(|| Some(now.clone()));
    PodStatus {
        phase: Some(phase.into()),
        conditions: Some(conditions),
        container_statuses: Some(statuses),
        init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
        host_ip: Some(host_ip.to_owned()),
        host_ips: Some(vec![k8s_openapi::api::core::v1::HostIP {
            ip: host_ip.to_owned(),
        }]),
        pod_ip: pod_ip.map(str::to_owned),
        pod_ips: pod_ip.map(|ip| vec![PodIP { ip: ip.to_owned() }]),
        qos_class: previous.and_then(|p| p.qos_class.clone()),
        start_time,
        ..PodStatus::default()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(restart_policy: &str) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"restartPolicy": restart_policy, "containers": [{"name": "c", "image": "busybox"}]}})).unwrap()
    }

    fn now() -> Time {
        Time(jiff::Timestamp::now())
    }

    #[test]
    fn running_and_ready() {
        let report = ContainerReport {
            name: "c".into(),
            phase: ContainerPhase::Running {
                started: now(),
                ready: true,
                has_started: true,
            },
            restart_count: 0,
            container_id: Some("fake://1".into()),
            image_id: "sha256:1".into(),
            last_state: None,
        };
        let status = pod_status(
            &pod("Always"),
            &[report],
            Some("10.244.0.5"),
            "10.0.0.1",
            &now(),
        );
        assert_eq!(status.phase.as_deref(), Some("Running"));
        let ready = status
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "True");
        assert_eq!(status.container_statuses.unwrap()[0].image, "busybox");
    }

    #[test]
    fn completion_and_failure() {
        let done = |code| ContainerReport {
            name: "c".into(),
            phase: ContainerPhase::Terminated {
                exit_code: code,
                reason: if code == 0 {
                    "Completed".into()
                } else {
                    "Error".into()
                },
                message: String::new(),
                started: None,
                finished: now(),
            },
            restart_count: 0,
            container_id: None,
            image_id: String::new(),
            last_state: None,
        };
        assert_eq!(
            pod_status(&pod("Never"), &[done(0)], None, "h", &now())
                .phase
                .as_deref(),
            Some("Succeeded")
        );
        assert_eq!(
            pod_status(&pod("Never"), &[done(1)], None, "h", &now())
                .phase
                .as_deref(),
            Some("Failed")
        );
        assert_eq!(
            pod_status(&pod("OnFailure"), &[done(1)], None, "h", &now())
                .phase
                .as_deref(),
            Some("Running")
        );
        let waiting = ContainerReport {
            name: "c".into(),
            phase: ContainerPhase::Waiting {
                reason: "ContainerCreating".into(),
                message: None,
            },
            restart_count: 0,
            container_id: None,
            image_id: String::new(),
            last_state: None,
        };
        assert_eq!(
            pod_status(&pod("Always"), &[waiting], None, "h", &now())
                .phase
                .as_deref(),
            Some("Pending")
        );
    }
}
