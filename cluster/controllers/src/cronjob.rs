//! The CronJob controller: creates a Job from `jobTemplate` at each time `schedule` (in
//! `timeZone`) names, as kube-controller-manager does — `concurrencyPolicy` Allow, Forbid or
//! Replace, `startingDeadlineSeconds`, `suspend`, and the history limits for finished Jobs.
//! Status (`active`, `lastScheduleTime`, `lastSuccessfulTime`) is what `kubectl get cronjobs`
//! reads.
//!
//! A Job's name is the CronJob's name and its scheduled time in minutes since the epoch, so a
//! restarted controller that runs a schedule again finds the Job already there instead of
//! starting it twice. [`plan`] is the pure decision; [`reconcile`] carries it out.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kelson_common::cron::{MISSED_LIMIT, Schedule};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::context::{Context, Error, Result};

/// The annotation a Job gets with the time it was scheduled for.
pub const SCHEDULED_ANNOTATION: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// What the CronJob controller reads.
pub struct Shared {
    /// Context.
    pub context: Arc<Context>,
    /// Job cache.
    pub jobs: Store<Job>,
}

/// How a Job of the CronJob ended, if it did.
fn finished(job: &Job) -> Option<&'static str> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .filter(|c| c.status == "True")
        .find_map(|c| match c.type_.as_str() {
            "Complete" => Some("Complete"),
            "Failed" => Some("Failed"),
            _ => None,
        })
}

/// What to do for one CronJob now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Start a Job for this scheduled time.
    pub start: Option<Timestamp>,
    /// Delete these active Jobs first (`Replace`).
    pub replace: Vec<String>,
    /// Events to record: warning?, reason, message.
    pub events: Vec<(bool, &'static str, String)>,
    /// Look again after this long (the next scheduled time), if ever.
    pub requeue: Option<Duration>,
}

/// The pure decision for `cronjob` with its `active` Jobs (names) at `now`.
#[must_use]
pub fn plan(cronjob: &CronJob, schedule: &Schedule, active: &[String], now: Timestamp) -> Plan {
    let spec = cronjob.spec.clone().unwrap_or_default();
    let mut plan = Plan {
        start: None,
        replace: Vec::new(),
        events: Vec::new(),
        requeue: schedule.next(now).map(|next| until(now, next)),
    };
    if spec.suspend.unwrap_or(false) {
        plan.requeue = None;
        return plan;
    }
    let created = cronjob
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(now, |t| t.0);
    let mut earliest = cronjob
        .status
        .as_ref()
        .and_then(|s| s.last_schedule_time.as_ref())
        .map_or(created, |t| t.0);
    if let Some(deadline) = spec.starting_deadline_seconds {
        let window_start = now - jiff::SignedDuration::from_secs(deadline);
        if window_start > earliest {
            earliest = window_start;
        }
    }
    let Some(unmet) = schedule.unmet(earliest, now) else {
        return plan;
    };
    if unmet.count > MISSED_LIMIT {
        plan.events.push((
            true,
            "TooManyMissedTimes",
            format!(
                "too many missed start times: {}. Set or decrease .spec.startingDeadlineSeconds or check clock skew",
                unmet.count
            ),
        ));
    }
    if let Some(deadline) = spec.starting_deadline_seconds
        && unmet.latest + jiff::SignedDuration::from_secs(deadline) < now
    {
        plan.events.push((
            true,
            "MissSchedule",
            format!(
                "Missed scheduled time to start a job: {}",
                schedule.format(unmet.latest)
            ),
        ));
        return plan;
    }
    match spec.concurrency_policy.as_deref() {
        Some("Forbid") if !active.is_empty() => {
            plan.events.push((
                false,
                "JobAlreadyActive",
                "Not starting job because prior execution is running and concurrency policy is Forbid"
                    .into(),
            ));
            // the start time stays unmet: it runs once the active Job ends, if still in time
            plan.requeue = plan.requeue.map(|r| r.min(Duration::from_secs(10)));
            return plan;
        }
        Some("Replace") => plan.replace = active.to_vec(),
        _ => {}
    }
    plan.start = Some(unmet.latest);
    plan
}

fn until(now: Timestamp, then: Timestamp) -> Duration {
    Duration::from_millis(
        u64::try_from(then.as_millisecond() - now.as_millisecond())
            .unwrap_or(0)
            .saturating_add(100),
    )
}

/// The name of the Job for `scheduled`: the CronJob's name and the time in minutes.
#[must_use]
pub fn job_name(cronjob: &str, scheduled: Timestamp) -> String {
    format!("{cronjob}-{}", scheduled.as_second().div_euclid(60))
}

/// The Job to create for `scheduled`.
#[must_use]
pub fn job_for(cronjob: &CronJob, schedule: &Schedule, scheduled: Timestamp) -> Job {
    let template = cronjob
        .spec
        .as_ref()
        .map(|s| s.job_template.clone())
        .unwrap_or_default();
    let metadata = template.metadata.unwrap_or_default();
    let mut annotations = metadata.annotations.unwrap_or_default();
    annotations.insert(SCHEDULED_ANNOTATION.into(), schedule.format(scheduled));
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(&cronjob.name_any(), scheduled)),
            namespace: cronjob.namespace(),
            labels: metadata.labels,
            annotations: Some(annotations),
            owner_references: cronjob.controller_owner_ref(&()).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// Finished Jobs to delete so that at most `successful` Complete and `failed` Failed ones stay
/// (the oldest go first).
#[must_use]
pub fn over_history(jobs: &[&Job], successful: i32, failed: i32) -> Vec<String> {
    let mut doomed = Vec::new();
    for (kind, limit) in [("Complete", successful), ("Failed", failed)] {
        let mut done: Vec<&&Job> = jobs.iter().filter(|j| finished(j) == Some(kind)).collect();
        done.sort_by_key(|j| {
            (
                j.status
                    .as_ref()
                    .and_then(|s| s.start_time.as_ref())
                    .or(j.metadata.creation_timestamp.as_ref())
                    .map(|t| t.0),
                j.name_any(),
            )
        });
        let keep = usize::try_from(limit.max(0)).unwrap_or(0);
        let excess = done.len().saturating_sub(keep);
        doomed.extend(done.iter().take(excess).map(|j| j.name_any()));
    }
    doomed
}

fn reference(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        ..ObjectReference::default()
    }
}

/// Deletes Job `name` of CronJob `key` (absent is fine) and records it.
async fn delete_job(
    context: &Context,
    jobs: &Api<Job>,
    object: &ObjectReference,
    name: &str,
    key: &str,
) -> Result<()> {
    match jobs.delete(name, &DeleteParams::background()).await {
        Ok(_) => {
            context
                .event(
                    object,
                    false,
                    "SuccessfulDelete",
                    format!("Deleted job {name}"),
                )
                .await;
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(source) => Err(Error::Api {
            action: format!("delete job {name} of cronjob {key}"),
            source,
        }),
    }
}

/// Reconciles one CronJob.
///
/// # Errors
/// When an API call fails (retried by the error policy).
pub async fn reconcile(cronjob: Arc<CronJob>, ctx: Arc<Shared>) -> Result<Action> {
    if cronjob.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = cronjob.namespace().unwrap_or_default();
    let name = cronjob.name_any();
    let key = format!("{namespace}/{name}");
    let spec = cronjob.spec.clone().unwrap_or_default();
    let object = cronjob.object_ref(&());
    let uid = cronjob.metadata.uid.clone().unwrap_or_default();
    let owned: Vec<Arc<Job>> = ctx
        .jobs
        .state()
        .into_iter()
        .filter(|j| j.namespace().as_deref() == Some(namespace.as_str()))
        .filter(|j| kelson_common::pod::controller_of(&j.metadata).is_some_and(|o| o.uid == uid))
        .collect();
    let jobs: Api<Job> = Api::namespaced(ctx.context.client.clone(), &namespace);
    let cronjobs: Api<CronJob> = Api::namespaced(ctx.context.client.clone(), &namespace);
    let now = Timestamp::now();

    let mut active: Vec<&Job> = owned
        .iter()
        .map(AsRef::as_ref)
        .filter(|j| finished(j).is_none() && j.metadata.deletion_timestamp.is_none())
        .collect();
    let was_active: Vec<String> = cronjob
        .status
        .as_ref()
        .and_then(|s| s.active.clone())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|r| r.name)
        .collect();
    for job in &owned {
        if let Some(how) = finished(job)
            && was_active.contains(&job.name_any())
        {
            ctx.context
                .event(
                    &object,
                    false,
                    "SawCompletedJob",
                    format!("Saw completed job: {}, status: {how}", job.name_any()),
                )
                .await;
        }
    }
    let last_successful = owned
        .iter()
        .filter(|j| finished(j) == Some("Complete"))
        .filter_map(|j| j.status.as_ref()?.completion_time.as_ref().map(|t| t.0))
        .max()
        .or_else(|| {
            cronjob
                .status
                .as_ref()
                .and_then(|s| s.last_successful_time.as_ref())
                .map(|t| t.0)
        });

    let schedule = match Schedule::parse(&spec.schedule, spec.time_zone.as_deref()) {
        Ok(schedule) => schedule,
        Err(message) => {
            ctx.context
                .event(
                    &object,
                    true,
                    "InvalidSchedule",
                    format!("invalid schedule: {}: {message}", spec.schedule),
                )
                .await;
            return Ok(Action::await_change());
        }
    };
    let active_names: Vec<String> = active.iter().map(|j| j.name_any()).collect();
    let decision = plan(&cronjob, &schedule, &active_names, now);
    for (warning, reason, message) in &decision.events {
        ctx.context
            .event(&object, *warning, reason, message.clone())
            .await;
    }
    for victim in &decision.replace {
        delete_job(&ctx.context, &jobs, &object, victim, &key).await?;
        active.retain(|j| j.name_any() != *victim);
    }
    let mut last_schedule = cronjob
        .status
        .as_ref()
        .and_then(|s| s.last_schedule_time.as_ref())
        .map(|t| t.0);
    let mut created: Option<Job> = None;
    if let Some(scheduled) = decision.start {
        let job = job_for(&cronjob, &schedule, scheduled);
        let job_name = job.name_any();
        match jobs.create(&PostParams::default(), &job).await {
            Ok(job) => {
                ctx.context
                    .event(
                        &object,
                        false,
                        "SuccessfulCreate",
                        format!("Created job {job_name}"),
                    )
                    .await;
                created = Some(job);
            }
            // made before a restart: this start time is met
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(source) => {
                ctx.context
                    .event(
                        &object,
                        true,
                        "FailedCreate",
                        format!("Error creating job: {source}"),
                    )
                    .await;
                return Err(Error::Api {
                    action: format!("create job {namespace}/{job_name} for cronjob {key}"),
                    source,
                });
            }
        }
        last_schedule = Some(scheduled);
    }

    // The newest run a Job records: the status read from a cache that has not seen this
    // controller's own last write must not move lastScheduleTime back.
    let newest_run = owned
        .iter()
        .filter_map(|j| {
            j.annotations()
                .get(SCHEDULED_ANNOTATION)?
                .parse::<Timestamp>()
                .ok()
        })
        .max();
    last_schedule = last_schedule.max(newest_run);

    // history limits
    let live: Vec<&Job> = owned
        .iter()
        .map(AsRef::as_ref)
        .filter(|j| j.metadata.deletion_timestamp.is_none())
        .collect();
    for doomed in over_history(
        &live,
        spec.successful_jobs_history_limit.unwrap_or(3),
        spec.failed_jobs_history_limit.unwrap_or(1),
    ) {
        delete_job(&ctx.context, &jobs, &object, &doomed, &key).await?;
    }

    let mut references: Vec<ObjectReference> = active.iter().map(|j| reference(j)).collect();
    if let Some(job) = &created {
        references.push(reference(job));
    }
    references.sort_by(|a, b| a.name.cmp(&b.name));
    let status = json!({
        "active": if references.is_empty() { serde_json::Value::Null } else { json!(references) },
        "lastScheduleTime": last_schedule.map(Time),
        "lastSuccessfulTime": last_successful.map(Time),
    });
    let current = json!({
        "active": cronjob.status.as_ref().and_then(|s| s.active.clone()).filter(|a| !a.is_empty()),
        "lastScheduleTime": cronjob.status.as_ref().and_then(|s| s.last_schedule_time.clone()),
        "lastSuccessfulTime": cronjob.status.as_ref().and_then(|s| s.last_successful_time.clone()),
    });
    if status != current {
        cronjobs
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({ "status": status })),
            )
            .await
            .map_err(Error::api(format!("update status of cronjob {key}")))?;
    }
    Ok(match decision.requeue {
        Some(after) => Action::requeue(after.min(Duration::from_secs(3600))),
        None => Action::await_change(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn cronjob(spec: serde_json::Value, last: Option<&str>) -> CronJob {
        let mut spec = spec;
        spec["jobTemplate"] = json!({"metadata": {"labels": {"app": "report"}},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}});
        serde_json::from_value(json!({
            "metadata": {"name": "report", "namespace": "default", "uid": "u1",
                         "creationTimestamp": "2026-11-23T09:00:30Z"},
            "spec": spec,
            "status": {"lastScheduleTime": last},
        }))
        .unwrap()
    }

    fn every_five() -> Schedule {
        Schedule::parse("*/5 * * * *", Some("UTC")).unwrap()
    }

    #[test]
    fn the_latest_missed_time_starts_once() {
        let cj = cronjob(
            json!({"schedule": "*/5 * * * *"}),
            Some("2026-11-23T10:00:00Z"),
        );
        let now = at("2026-11-23T10:11:00Z");
        let decided = plan(&cj, &every_five(), &[], now);
        assert_eq!(decided.start, Some(at("2026-11-23T10:10:00Z")));
        assert_eq!(decided.requeue, Some(Duration::from_millis(240_100)));
        assert!(decided.events.is_empty());
        // nothing new until the next time
        let ran = cronjob(
            json!({"schedule": "*/5 * * * *"}),
            Some("2026-11-23T10:10:00Z"),
        );
        assert_eq!(plan(&ran, &every_five(), &[], now).start, None);
    }

    #[test]
    fn a_new_cronjob_counts_from_its_creation() {
        let cj = cronjob(json!({"schedule": "*/5 * * * *"}), None);
        assert_eq!(
            plan(&cj, &every_five(), &[], at("2026-11-23T09:04:00Z")).start,
            None
        );
        assert_eq!(
            plan(&cj, &every_five(), &[], at("2026-11-23T09:05:01Z")).start,
            Some(at("2026-11-23T09:05:00Z"))
        );
    }

    #[test]
    fn concurrency_policies() {
        let now = at("2026-11-23T10:11:00Z");
        let active = ["report-29923800".to_owned()];
        let forbid = cronjob(
            json!({"schedule": "*/5 * * * *", "concurrencyPolicy": "Forbid"}),
            Some("2026-11-23T10:00:00Z"),
        );
        let decided = plan(&forbid, &every_five(), &active, now);
        assert_eq!(decided.start, None);
        assert_eq!(decided.events[0].1, "JobAlreadyActive");
        assert_eq!(
            plan(&forbid, &every_five(), &[], now).start,
            Some(at("2026-11-23T10:10:00Z")),
            "runs once the active Job is gone"
        );
        let replace = cronjob(
            json!({"schedule": "*/5 * * * *", "concurrencyPolicy": "Replace"}),
            Some("2026-11-23T10:00:00Z"),
        );
        let decided = plan(&replace, &every_five(), &active, now);
        assert_eq!(decided.replace, active);
        assert!(decided.start.is_some());
        let allow = cronjob(
            json!({"schedule": "*/5 * * * *"}),
            Some("2026-11-23T10:00:00Z"),
        );
        let decided = plan(&allow, &every_five(), &active, now);
        assert!(decided.replace.is_empty() && decided.start.is_some());
    }

    #[test]
    fn suspended_and_late_cronjobs_do_not_start() {
        let now = at("2026-11-23T10:11:00Z");
        let suspended = cronjob(
            json!({"schedule": "*/5 * * * *", "suspend": true}),
            Some("2026-11-23T10:00:00Z"),
        );
        assert_eq!(
            plan(&suspended, &every_five(), &[], now),
            Plan {
                start: None,
                replace: vec![],
                events: vec![],
                requeue: None
            }
        );
        // a 30 s starting deadline: 10:10 is a minute late
        let strict = cronjob(
            json!({"schedule": "*/5 * * * *", "startingDeadlineSeconds": 30}),
            Some("2026-11-23T10:00:00Z"),
        );
        assert_eq!(plan(&strict, &every_five(), &[], now).start, None);
        let lenient = cronjob(
            json!({"schedule": "*/5 * * * *", "startingDeadlineSeconds": 120}),
            Some("2026-11-23T10:00:00Z"),
        );
        assert_eq!(
            plan(&lenient, &every_five(), &[], now).start,
            Some(at("2026-11-23T10:10:00Z"))
        );
    }

    #[test]
    fn too_many_missed_times_warn_and_start_the_latest() {
        let every_minute = Schedule::parse("* * * * *", Some("UTC")).unwrap();
        let cj = cronjob(
            json!({"schedule": "* * * * *"}),
            Some("2026-11-20T00:00:00Z"),
        );
        let decided = plan(&cj, &every_minute, &[], at("2026-11-23T10:11:30Z"));
        assert_eq!(decided.events[0].1, "TooManyMissedTimes");
        assert_eq!(decided.start, Some(at("2026-11-23T10:11:00Z")));
    }

    #[test]
    fn jobs_are_named_by_their_minute_and_carry_the_template() {
        let cj = cronjob(json!({"schedule": "*/5 * * * *"}), None);
        let job = job_for(&cj, &every_five(), at("2026-11-23T10:10:00Z"));
        assert_eq!(job.name_any(), "report-29923810");
        assert_eq!(job.labels().get("app").map(String::as_str), Some("report"));
        assert_eq!(
            job.annotations()[SCHEDULED_ANNOTATION],
            "2026-11-23T10:10:00+00:00"
        );
        let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("CronJob", Some(true))
        );
    }

    #[test]
    fn history_keeps_the_newest_finished_jobs() {
        let job = |name: &str, start: &str, kind: &str| -> Job {
            serde_json::from_value(json!({"metadata": {"name": name},
                "status": {"startTime": start, "conditions": [{"type": kind, "status": "True"}]}}))
            .unwrap()
        };
        let jobs = [
            job("a", "2026-11-23T10:00:00Z", "Complete"),
            job("b", "2026-11-23T10:05:00Z", "Complete"),
            job("c", "2026-11-23T10:10:00Z", "Failed"),
            job("d", "2026-11-23T10:15:00Z", "Complete"),
            job("e", "2026-11-23T10:20:00Z", "Failed"),
        ];
        let refs: Vec<&Job> = jobs.iter().collect();
        assert_eq!(over_history(&refs, 2, 1), ["a", "c"]);
        assert_eq!(over_history(&refs, 0, 0), ["a", "b", "d", "c", "e"]);
        assert!(over_history(&refs, 3, 2).is_empty());
    }
}
