//! The Job controller: runs pods until `completions` succeed (`parallelism` at a time), gives up
//! after `backoffLimit` failures or `activeDeadlineSeconds`, honours `suspend`, and deletes
//! finished Jobs after `ttlSecondsAfterFinished`. Status and conditions are what `kubectl get
//! jobs` and `kubectl wait --for=condition=Complete` read.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kelson_common::pod;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::context::{Context, Error, Result};

/// What the Job controller reads.
pub struct Shared {
    /// Context.
    pub context: Arc<Context>,
    /// Pod cache.
    pub pods: Store<Pod>,
}

/// Counts of a Job's pods.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Running or pending.
    pub active: i32,
    /// Active and ready.
    pub ready: i32,
    /// Succeeded.
    pub succeeded: i32,
    /// Failed.
    pub failed: i32,
}

/// Counts the pods.
#[must_use]
pub fn count(pods: &[Arc<Pod>]) -> Counts {
    let mut counts = Counts::default();
    for p in pods {
        match pod::phase(p) {
            "Succeeded" => counts.succeeded += 1,
            "Failed" => counts.failed += 1,
            _ if !pod::is_terminating(p) => {
                counts.active += 1;
                if pod::is_ready(p) {
                    counts.ready += 1;
                }
            }
            _ => {}
        }
    }
    counts
}

/// The decision for one Job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Create this many pods.
    Create(i32),
    /// Delete this many active pods.
    Delete(i32),
    /// Nothing to change in pods.
    Hold,
    /// The Job succeeded.
    Complete,
    /// The Job failed for this reason.
    Fail(&'static str, String),
}

/// The pure decision from the spec, the pod counts and the time since the Job started.
#[must_use]
pub fn decide(job: &Job, counts: Counts, running_seconds: Option<i64>) -> Decision {
    let spec = job.spec.clone().unwrap_or_default();
    let completions = spec.completions;
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    if let Some(limit) = completions
        && counts.succeeded >= limit
    {
        return Decision::Complete;
    }
    if completions.is_none() && counts.succeeded > 0 && counts.active == 0 {
        // work-queue Jobs finish when one pod succeeded and none still runs
        return Decision::Complete;
    }
    if counts.failed > backoff_limit {
        return Decision::Fail(
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit".into(),
        );
    }
    if let (Some(deadline), Some(running)) = (spec.active_deadline_seconds, running_seconds)
        && running >= deadline
    {
        return Decision::Fail(
            "DeadlineExceeded",
            "Job was active longer than specified deadline".into(),
        );
    }
    if spec.suspend.unwrap_or(false) {
        return if counts.active > 0 {
            Decision::Delete(counts.active)
        } else {
            Decision::Hold
        };
    }
    let wanted = match completions {
        Some(limit) => parallelism.min(limit - counts.succeeded),
        None if counts.succeeded > 0 => 0,
        None => parallelism,
    };
    match counts.active.cmp(&wanted) {
        std::cmp::Ordering::Less => Decision::Create(wanted - counts.active),
        std::cmp::Ordering::Greater => Decision::Delete(counts.active - wanted),
        std::cmp::Ordering::Equal => Decision::Hold,
    }
}

fn condition(type_: &str, reason: &str, message: &str, now: &Time) -> JobCondition {
    JobCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    }
}

fn finished(job: &Job) -> Option<&JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
}

/// Reconciles one Job.
///
/// # Errors
/// When an API call fails (retried by the error policy).
pub async fn reconcile(job: Arc<Job>, ctx: Arc<Shared>) -> Result<Action> {
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let key = format!("{namespace}/{name}");
    let jobs: Api<Job> = Api::namespaced(ctx.context.client.clone(), &namespace);
    let now = Time(jiff::Timestamp::now());
    if let Some(done) = finished(&job) {
        // finished: only the TTL is left to honour
        let Some(ttl) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) else {
            return Ok(Action::await_change());
        };
        let since = done
            .last_transition_time
            .as_ref()
            .map_or(0, |t| now.0.as_second() - t.0.as_second());
        if since >= i64::from(ttl) {
            match jobs.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => {
                    return Err(Error::Api {
                        action: format!("delete finished job {key}"),
                        source: error,
                    });
                }
            }
            return Ok(Action::await_change());
        }
        return Ok(Action::requeue(Duration::from_secs(
            u64::try_from(i64::from(ttl) - since).unwrap_or(1).max(1),
        )));
    }
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let owned = crate::context::owned_by(&ctx.pods, Some(&namespace), &uid);
    let names: HashSet<String> = owned.iter().map(|p| p.name_any()).collect();
    let uids: HashSet<String> = owned
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    let counts = count(&owned);
    let start_time = job
        .status
        .as_ref()
        .and_then(|s| s.start_time.clone())
        .unwrap_or_else(|| now.clone());
    let running = now.0.as_second() - start_time.0.as_second();
    let pods: Api<Pod> = Api::namespaced(ctx.context.client.clone(), &namespace);
    let mut status = JobStatus {
        active: Some(counts.active),
        ready: Some(counts.ready),
        succeeded: Some(counts.succeeded),
        failed: Some(counts.failed),
        start_time: Some(start_time.clone()),
        conditions: job.status.as_ref().and_then(|s| s.conditions.clone()),
        ..JobStatus::default()
    };
    let decision = decide(&job, counts, Some(running));
    let mut requeue = Duration::from_secs(300);
    match &decision {
        Decision::Complete => {
            let conditions = status.conditions.get_or_insert_with(Vec::new);
            conditions.push(condition(
                "SuccessCriteriaMet",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
                &now,
            ));
            conditions.push(condition(
                "Complete",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
                &now,
            ));
            status.completion_time = Some(now.clone());
            ctx.context
                .event(
                    &job.object_ref(&()),
                    false,
                    "Completed",
                    "Job completed".into(),
                )
                .await;
        }
        Decision::Fail(reason, message) => {
            delete_active(&pods, &owned).await?;
            let conditions = status.conditions.get_or_insert_with(Vec::new);
            conditions.push(condition("FailureTarget", reason, message, &now));
            conditions.push(condition("Failed", reason, message, &now));
            status.active = Some(0);
            ctx.context
                .event(&job.object_ref(&()), true, reason, message.clone())
                .await;
        }
        Decision::Create(n) if ctx.context.expectations.satisfied(&key, &names, &uids) => {
            let template = pod_from_template(&job);
            let created: Vec<String> = futures::stream::iter(0..*n)
                .map(|_| {
                    let (pods, template) = (pods.clone(), template.clone());
                    async move { pods.create(&PostParams::default(), &template).await }
                })
                .buffer_unordered(32)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .filter_map(|r| r.ok().map(|p| p.name_any()))
                .collect();
            if let Some(first) = created.first() {
                ctx.context
                    .event(
                        &job.object_ref(&()),
                        false,
                        "SuccessfulCreate",
                        format!("Created pod: {first}"),
                    )
                    .await;
            }
            ctx.context.expectations.expect(&key, created, []);
        }
        Decision::Delete(n) if ctx.context.expectations.satisfied(&key, &names, &uids) => {
            let victims: Vec<&Arc<Pod>> = owned
                .iter()
                .filter(|p| pod::is_active(p))
                .take(usize::try_from(*n).unwrap_or(0))
                .collect();
            ctx.context.expectations.expect(
                &key,
                [],
                victims.iter().filter_map(|p| p.metadata.uid.clone()),
            );
            for victim in victims {
                let _ = pods
                    .delete(&victim.name_any(), &DeleteParams::default())
                    .await;
            }
        }
        _ => {}
    }
    if let Some(deadline) = job.spec.as_ref().and_then(|s| s.active_deadline_seconds) {
        requeue = requeue.min(Duration::from_secs(
            u64::try_from(deadline - running).unwrap_or(0).max(1),
        ));
    }
    let suspended = job.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false);
    if suspended && !matches!(decision, Decision::Complete | Decision::Fail(..)) {
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        if !conditions.iter().any(|c| c.type_ == "Suspended") {
            conditions.push(condition(
                "Suspended",
                "JobSuspended",
                "Job suspended",
                &now,
            ));
        }
    }
    if job.status.as_ref() != Some(&status) {
        jobs.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status})),
        )
        .await
        .map_err(Error::api(format!("update status of job {key}")))?;
    }
    Ok(Action::requeue(requeue))
}

async fn delete_active(pods: &Api<Pod>, owned: &[Arc<Pod>]) -> Result<()> {
    for p in owned.iter().filter(|p| pod::is_active(p)) {
        match pods.delete(&p.name_any(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => {
                return Err(Error::Api {
                    action: format!("delete pod {}", p.name_any()),
                    source: error,
                });
            }
        }
    }
    Ok(())
}

fn pod_from_template(job: &Job) -> Pod {
    let template = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let metadata = template.metadata.unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", job.name_any())),
            namespace: job.namespace(),
            labels: metadata.labels,
            annotations: metadata.annotations,
            owner_references: job.controller_owner_ref(&()).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        spec: template.spec,
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(spec: serde_json::Value) -> Job {
        serde_json::from_value(json!({"metadata": {"name": "j"}, "spec": spec})).unwrap()
    }

    fn counts(active: i32, succeeded: i32, failed: i32) -> Counts {
        Counts {
            active,
            ready: 0,
            succeeded,
            failed,
        }
    }

    #[test]
    fn runs_until_completions_with_parallelism() {
        let j = job(json!({"completions": 5, "parallelism": 2, "template": {}}));
        assert_eq!(decide(&j, counts(0, 0, 0), None), Decision::Create(2));
        assert_eq!(decide(&j, counts(2, 2, 0), None), Decision::Hold);
        assert_eq!(
            decide(&j, counts(1, 4, 0), None),
            Decision::Hold,
            "only one more completion is needed"
        );
        assert_eq!(decide(&j, counts(0, 4, 0), None), Decision::Create(1));
        assert_eq!(decide(&j, counts(0, 5, 0), None), Decision::Complete);
    }

    #[test]
    fn failures_deadlines_and_suspension() {
        let j = job(
            json!({"completions": 1, "backoffLimit": 2, "activeDeadlineSeconds": 60, "template": {}}),
        );
        assert_eq!(decide(&j, counts(0, 0, 2), Some(1)), Decision::Create(1));
        assert!(matches!(
            decide(&j, counts(0, 0, 3), Some(1)),
            Decision::Fail("BackoffLimitExceeded", _)
        ));
        assert!(matches!(
            decide(&j, counts(1, 0, 0), Some(61)),
            Decision::Fail("DeadlineExceeded", _)
        ));
        let suspended = job(json!({"completions": 1, "suspend": true, "template": {}}));
        assert_eq!(
            decide(&suspended, counts(1, 0, 0), None),
            Decision::Delete(1)
        );
        assert_eq!(decide(&suspended, counts(0, 0, 0), None), Decision::Hold);
    }
}
