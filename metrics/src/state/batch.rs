//! batch/v1 kinds: Jobs and CronJobs.

use k8s_openapi::api::batch::v1::{CronJob, Job};
use kube::ResourceExt as _;

use super::{Allow, Family, Lines, Object, created, gauge};

impl Object for Job {
    const RESOURCE: &'static str = "jobs";
    const FAMILIES: &'static [Family] = &[
        gauge(
            "kube_job_annotations",
            "Kubernetes annotations converted to Prometheus labels.",
        ),
        gauge(
            "kube_job_labels",
            "[STABLE] Kubernetes labels converted to Prometheus labels.",
        ),
        gauge("kube_job_info", "[STABLE] Information about job."),
        created!("kube_job_created"),
        gauge(
            "kube_job_spec_parallelism",
            "[STABLE] The maximum desired number of pods the job should run at any given time.",
        ),
        gauge(
            "kube_job_spec_completions",
            "[STABLE] The desired number of successfully finished pods the job should be run with.",
        ),
        gauge(
            "kube_job_spec_active_deadline_seconds",
            "[STABLE] The duration in seconds relative to the startTime that the job may be active before the system tries to terminate it.",
        ),
        gauge(
            "kube_job_status_succeeded",
            "[STABLE] The number of pods which reached Phase Succeeded.",
        ),
        gauge(
            "kube_job_status_failed",
            "[STABLE] The number of pods which reached Phase Failed and the reason for failure.",
        ),
        gauge(
            "kube_job_status_active",
            "[STABLE] The number of actively running pods.",
        ),
        gauge(
            "kube_job_status_ready",
            "The number of ready pods that belong to this Job.",
        ),
        gauge(
            "kube_job_complete",
            "[STABLE] The job has completed its execution.",
        ),
        gauge(
            "kube_job_failed",
            "[STABLE] The job has failed its execution.",
        ),
        gauge(
            "kube_job_status_start_time",
            "[STABLE] StartTime represents time when the job was acknowledged by the Job Manager.",
        ),
        gauge(
            "kube_job_status_completion_time",
            "[STABLE] CompletionTime represents time when the job was completed.",
        ),
        gauge(
            "kube_job_status_suspended",
            "The number of pods which reached Phase Suspended.",
        ),
        gauge(
            "kube_job_owner",
            "[STABLE] Information about the Job's owner.",
        ),
    ];

    fn render(&self, out: &mut Lines, allow: &Allow) {
        let (namespace, name) = (self.namespace().unwrap_or_default(), self.name_any());
        let labels = [
            ("namespace", namespace.as_str()),
            ("job_name", name.as_str()),
        ];
        out.identify(&labels);
        out.metadata("kube_job", &labels, &self.metadata, allow);
        out.add("kube_job_info", &labels, 1.0);
        let spec = self.spec.clone().unwrap_or_default();
        let status = self.status.clone().unwrap_or_default();
        out.some("kube_job_spec_parallelism", &labels, spec.parallelism);
        out.some("kube_job_spec_completions", &labels, spec.completions);
        out.some(
            "kube_job_spec_active_deadline_seconds",
            &labels,
            spec.active_deadline_seconds.map(|s| s as f64),
        );
        out.add(
            "kube_job_status_succeeded",
            &labels,
            f64::from(status.succeeded.unwrap_or(0)),
        );
        let failed = status.failed.unwrap_or(0);
        let conditions = status.conditions.clone().unwrap_or_default();
        if failed == 0 {
            out.add("kube_job_status_failed", &labels, 0.0);
        } else {
            let mut matched = false;
            for condition in conditions.iter().filter(|c| c.type_ == "Failed") {
                for reason in ["BackoffLimitExceeded", "DeadlineExceeded", "Evicted"] {
                    let hit = condition.reason.as_deref() == Some(reason);
                    matched |= hit;
                    out.flag(
                        "kube_job_status_failed",
                        &[labels[0], labels[1], ("reason", reason)],
                        hit,
                    );
                }
            }
            if !matched {
                out.add(
                    "kube_job_status_failed",
                    &[labels[0], labels[1], ("reason", "")],
                    f64::from(failed),
                );
            }
        }
        out.add(
            "kube_job_status_active",
            &labels,
            f64::from(status.active.unwrap_or(0)),
        );
        out.add(
            "kube_job_status_ready",
            &labels,
            f64::from(status.ready.unwrap_or(0)),
        );
        for (family, kind) in [
            ("kube_job_complete", "Complete"),
            ("kube_job_failed", "Failed"),
        ] {
            if let Some(condition) = conditions.iter().find(|c| c.type_ == kind) {
                out.condition(family, &labels, "condition", &condition.status);
            }
        }
        out.time(
            "kube_job_status_start_time",
            &labels,
            status.start_time.as_ref(),
        );
        out.time(
            "kube_job_status_completion_time",
            &labels,
            status.completion_time.as_ref(),
        );
        if let Some(condition) = conditions.iter().find(|c| c.type_ == "Suspended") {
            out.flag(
                "kube_job_status_suspended",
                &labels,
                condition.status == "True",
            );
        }
        out.owners("kube_job_owner", &labels, self.owner_references());
    }
}

impl Object for CronJob {
    const RESOURCE: &'static str = "cronjobs";
    const FAMILIES: &'static [Family] = &[
        gauge(
            "kube_cronjob_annotations",
            "Kubernetes annotations converted to Prometheus labels.",
        ),
        gauge(
            "kube_cronjob_labels",
            "[STABLE] Kubernetes labels converted to Prometheus labels.",
        ),
        gauge("kube_cronjob_info", "[STABLE] Info about cronjob."),
        created!("kube_cronjob_created"),
        gauge(
            "kube_cronjob_status_active",
            "[STABLE] Active holds pointers to currently running jobs.",
        ),
        gauge(
            "kube_cronjob_status_last_schedule_time",
            "[STABLE] LastScheduleTime keeps information of when was the last time the job was successfully scheduled.",
        ),
        gauge(
            "kube_cronjob_status_last_successful_time",
            "[STABLE] LastSuccessfulTime keeps information of when was the last time the job was completed successfully.",
        ),
        gauge(
            "kube_cronjob_spec_suspend",
            "[STABLE] Suspend flag tells the controller to suspend subsequent executions.",
        ),
        gauge(
            "kube_cronjob_spec_starting_deadline_seconds",
            "[STABLE] Deadline in seconds for starting the job if it misses scheduled time for any reason.",
        ),
        gauge(
            "kube_cronjob_metadata_resource_version",
            "[STABLE] Resource version representing a specific version of the cronjob.",
        ),
        gauge(
            "kube_cronjob_spec_successful_job_history_limit",
            "Successful job history limit tells the controller how many completed jobs should be preserved.",
        ),
        gauge(
            "kube_cronjob_spec_failed_job_history_limit",
            "Failed job history limit tells the controller how many failed jobs should be preserved.",
        ),
    ];

    fn render(&self, out: &mut Lines, allow: &Allow) {
        let (namespace, name) = (self.namespace().unwrap_or_default(), self.name_any());
        let labels = [
            ("namespace", namespace.as_str()),
            ("cronjob", name.as_str()),
        ];
        out.identify(&labels);
        out.metadata("kube_cronjob", &labels, &self.metadata, allow);
        let spec = self.spec.clone().unwrap_or_default();
        let status = self.status.clone().unwrap_or_default();
        out.add(
            "kube_cronjob_info",
            &[
                labels[0],
                labels[1],
                ("schedule", &spec.schedule),
                (
                    "concurrency_policy",
                    spec.concurrency_policy.as_deref().unwrap_or(""),
                ),
                ("timezone", spec.time_zone.as_deref().unwrap_or("local")),
            ],
            1.0,
        );
        out.add(
            "kube_cronjob_status_active",
            &labels,
            status.active.map_or(0, |a| a.len()) as f64,
        );
        out.time(
            "kube_cronjob_status_last_schedule_time",
            &labels,
            status.last_schedule_time.as_ref(),
        );
        out.time(
            "kube_cronjob_status_last_successful_time",
            &labels,
            status.last_successful_time.as_ref(),
        );
        out.flag(
            "kube_cronjob_spec_suspend",
            &labels,
            spec.suspend == Some(true),
        );
        out.some(
            "kube_cronjob_spec_starting_deadline_seconds",
            &labels,
            spec.starting_deadline_seconds.map(|s| s as f64),
        );
        out.some(
            "kube_cronjob_metadata_resource_version",
            &labels,
            self.metadata
                .resource_version
                .as_deref()
                .and_then(|v| v.parse::<f64>().ok()),
        );
        out.some(
            "kube_cronjob_spec_successful_job_history_limit",
            &labels,
            spec.successful_jobs_history_limit,
        );
        out.some(
            "kube_cronjob_spec_failed_job_history_limit",
            &labels,
            spec.failed_jobs_history_limit,
        );
    }
}
