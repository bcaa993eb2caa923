//! Controllers with the scheduler and hollow nodes: Deployments roll out within their bounds,
//! ReplicaSets keep their pods, Jobs finish, CronJobs start their runs, evictions honour
//! PodDisruptionBudgets.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kelson_testing::{TestCluster, eventually};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

fn deployment(name: &str, replicas: i32, image: &str) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "c", "image": image, "resources": {"requests": {"cpu": "100m"}}}]}}}
    }))
    .unwrap()
}

async fn wait_rolled_out(api: &Api<Deployment>, name: &str) -> Deployment {
    let last = std::sync::Mutex::new(String::new());
    let what = format!("rollout of {name} complete");
    let result = tokio::time::timeout(
        Duration::from_secs(58),
        eventually(Duration::from_secs(60), &what, || async {
            let d = api.get(name).await.unwrap();
            *last.lock().unwrap() = format!("{:?}", d.status);
            let spec = d.spec.as_ref().unwrap().replicas.unwrap();
            let status = d.status.clone().unwrap_or_default();
            let done = d.metadata.generation <= status.observed_generation
                && status.updated_replicas == Some(spec)
                && status.replicas == Some(spec)
                && status.available_replicas == Some(spec);
            done.then_some(d)
        }),
    )
    .await;
    if let Ok(deployment) = result {
        return deployment;
    }
    // say where the pods are, for diagnosis
    let pods: Api<Pod> = Api::namespaced(api.clone().into_client(), "default");
    let listed = pods
        .list(&ListParams::default().labels(&format!("app={name}")))
        .await
        .map(|l| {
            l.items
                .iter()
                .map(|p| {
                    format!(
                        "{} node={:?} phase={:?} deleting={}",
                        p.metadata.name.as_deref().unwrap_or_default(),
                        p.spec.as_ref().and_then(|s| s.node_name.clone()),
                        p.status.as_ref().and_then(|s| s.phase.clone()),
                        p.metadata.deletion_timestamp.is_some()
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default();
    let sets: Api<ReplicaSet> = Api::namespaced(api.clone().into_client(), "default");
    // poke each ReplicaSet: if its status catches up now, the controller missed a trigger;
    // if not, its pod cache is stale
    for rs in sets
        .list(&ListParams::default().labels(&format!("app={name}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
    {
        let poke = serde_json::json!({"metadata": {"annotations": {"kelson.dev/poke": "1"}}});
        let _ = sets
            .patch(
                rs.metadata.name.as_deref().unwrap_or_default(),
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&poke),
            )
            .await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sets = sets
        .list(&ListParams::default().labels(&format!("app={name}")))
        .await
        .map(|l| {
            l.items
                .iter()
                .map(|rs| {
                    format!(
                        "{} {:?}",
                        rs.metadata.name.as_deref().unwrap_or_default(),
                        rs.status
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default();
    panic!(
        "{what}: last status {}; pods: {listed}; replicasets 3 s after a poke: {sets}",
        last.lock().unwrap()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_roll_out_within_surge_and_unavailability() {
    let cluster = TestCluster::start(3).await;
    let client = cluster.client().await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let replicasets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    deployments
        .create(
            &PostParams::default(),
            &deployment("web", 4, "busybox:1.36"),
        )
        .await
        .unwrap();
    let rolled = wait_rolled_out(&deployments, "web").await;
    assert_eq!(
        rolled.metadata.annotations.unwrap()["deployment.kubernetes.io/revision"],
        "1"
    );
    let running = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    assert_eq!(running.items.len(), 4);

    // watch pods while the image changes: never more than 4 + 1 pods, never fewer than 3 ready
    let watch_pods = pods.clone();
    let observer = tokio::spawn(async move {
        let mut stream = watcher(watch_pods, watcher::Config::default().labels("app=web")).boxed();
        let mut state: std::collections::BTreeMap<String, Pod> = Default::default();
        let (mut max_pods, mut min_ready) = (0usize, usize::MAX);
        let mut synced = false;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while tokio::time::Instant::now() < deadline {
            let Ok(Some(event)) =
                tokio::time::timeout(Duration::from_millis(500), stream.next()).await
            else {
                continue;
            };
            match event {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                    state.insert(p.metadata.name.clone().unwrap(), p);
                }
                Ok(watcher::Event::Delete(p)) => {
                    state.remove(p.metadata.name.as_ref().unwrap());
                }
                Ok(watcher::Event::InitDone) => synced = true,
                _ => continue,
            }
            if !synced {
                // the initial listing arrives one pod at a time
                continue;
            }
            let live: Vec<&Pod> = state
                .values()
                .filter(|p| kelson_common::pod::is_active(p))
                .collect();
            max_pods = max_pods.max(live.len());
            let ready = live
                .iter()
                .filter(|p| kelson_common::pod::is_ready(p))
                .count();
            let images: std::collections::BTreeSet<String> = live
                .iter()
                .filter_map(|p| p.spec.as_ref()?.containers[0].image.clone())
                .collect();
            if live.len() == 4 && ready == 4 && images.len() == 1 && images.contains("busybox:1.37")
            {
                return (max_pods, min_ready);
            }
            min_ready = min_ready.min(ready);
        }
        panic!("the rollout did not finish: {max_pods} max pods");
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox:1.37"}]}}}});
    deployments
        .patch("web", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .unwrap();
    let (max_pods, min_ready) = observer.await.unwrap();
    assert!(max_pods <= 5, "maxSurge 1 exceeded: {max_pods} pods");
    assert!(
        min_ready >= 3,
        "maxUnavailable 1 exceeded: only {min_ready} ready"
    );
    let rolled = wait_rolled_out(&deployments, "web").await;
    assert_eq!(
        rolled.metadata.annotations.unwrap()["deployment.kubernetes.io/revision"],
        "2"
    );
    let sets = replicasets
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    assert_eq!(sets.items.len(), 2, "the old ReplicaSet stays for rollback");

    // deleting a pod gets it replaced
    let victim = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap()
        .items[0]
        .metadata
        .name
        .clone()
        .unwrap();
    pods.delete(&victim, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "the pod replaced", || async {
        let list = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .unwrap();
        let ready = list
            .items
            .iter()
            .filter(|p| kelson_common::pod::is_ready(p) && kelson_common::pod::is_active(p))
            .count();
        (ready == 4
            && !list
                .items
                .iter()
                .any(|p| p.metadata.name.as_deref() == Some(victim.as_str())))
        .then_some(())
    })
    .await;

    // scaling down removes pods
    deployments
        .patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": 2}})),
        )
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "scaled to 2", || async {
        let list = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .unwrap();
        (list
            .items
            .iter()
            .filter(|p| kelson_common::pod::is_active(p))
            .count()
            == 2)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_propagates_as_in_kubernetes() {
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
    let cluster = TestCluster::start(2).await;
    let client = cluster.client().await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let replicasets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let count = |api: Api<Pod>, selector: &'static str| async move {
        api.list(&ListParams::default().labels(selector))
            .await
            .unwrap()
            .items
            .len()
    };

    // background: the owner goes at once, the collector removes the rest
    deployments
        .create(&PostParams::default(), &deployment("bg", 2, "busybox"))
        .await
        .unwrap();
    wait_rolled_out(&deployments, "bg").await;
    deployments
        .delete("bg", &DeleteParams::background())
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "background deletion", || async {
        let sets = replicasets
            .list(&ListParams::default().labels("app=bg"))
            .await
            .unwrap()
            .items
            .len();
        (sets == 0 && count(pods.clone(), "app=bg").await == 0).then_some(())
    })
    .await;

    // foreground: dependents first, then the owner
    deployments
        .create(&PostParams::default(), &deployment("fg", 2, "busybox"))
        .await
        .unwrap();
    wait_rolled_out(&deployments, "fg").await;
    deployments
        .delete("fg", &DeleteParams::foreground())
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "foreground deletion", || async {
        let gone = deployments.get_opt("fg").await.unwrap().is_none();
        let sets = replicasets
            .list(&ListParams::default().labels("app=fg"))
            .await
            .unwrap()
            .items
            .len();
        (gone && sets == 0 && count(pods.clone(), "app=fg").await == 0).then_some(())
    })
    .await;

    // orphan: the ReplicaSet goes, its pods stay without an owner
    deployments
        .create(&PostParams::default(), &deployment("or", 2, "busybox"))
        .await
        .unwrap();
    wait_rolled_out(&deployments, "or").await;
    deployments
        .delete("or", &DeleteParams::orphan())
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "orphaning deletion", || async {
        let gone = deployments.get_opt("or").await.unwrap().is_none();
        let sets = replicasets
            .list(&ListParams::default().labels("app=or"))
            .await
            .unwrap()
            .items;
        (gone
            && sets.len() == 1
            && sets[0]
                .metadata
                .owner_references
                .as_ref()
                .is_none_or(Vec::is_empty))
        .then_some(())
    })
    .await;
    assert_eq!(
        count(pods.clone(), "app=or").await,
        2,
        "the pods still belong to the orphaned ReplicaSet"
    );

    // deleting a namespace empties it, then it goes
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "temp"}})).unwrap(),
        )
        .await
        .unwrap();
    let temp_deployments: Api<Deployment> = Api::namespaced(client.clone(), "temp");
    temp_deployments
        .create(&PostParams::default(), &deployment("inside", 2, "busybox"))
        .await
        .unwrap();
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "temp");
    maps.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "c"}})).unwrap(),
    )
    .await
    .unwrap();
    namespaces
        .delete("temp", &DeleteParams::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "namespace gone", || async {
        namespaces
            .get_opt("temp")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let temp_pods: Api<Pod> = Api::namespaced(client.clone(), "temp");
    assert!(
        temp_pods
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_complete_and_fail_as_configured() {
    use k8s_openapi::api::batch::v1::Job;
    let cluster = TestCluster::start(2).await;
    let client = cluster.client().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let job = |name: &str, completions: i32, parallelism: i32, fail: bool| -> Job {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"completions": completions, "parallelism": parallelism, "backoffLimit": 1,
                     "template": {"metadata": {"annotations": {"kelson.dev/hollow-fail": fail.to_string(), "kelson.dev/hollow-run-seconds": "0.2"}},
                                  "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox", "command": ["true"]}]}}}
        }))
        .unwrap()
    };
    jobs.create(&PostParams::default(), &job("works", 3, 2, false))
        .await
        .unwrap();
    jobs.create(&PostParams::default(), &job("breaks", 1, 1, true))
        .await
        .unwrap();
    let condition = |j: &Job, type_: &str| {
        j.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == type_ && c.status == "True"))
    };
    let done = eventually(Duration::from_secs(30), "job complete", || async {
        let j = jobs.get("works").await.unwrap();
        condition(&j, "Complete").then_some(j)
    })
    .await;
    assert_eq!(done.status.unwrap().succeeded, Some(3));
    let failed = eventually(Duration::from_secs(30), "job failed", || async {
        let j = jobs.get("breaks").await.unwrap();
        condition(&j, "Failed").then_some(j)
    })
    .await;
    assert_eq!(
        failed.status.unwrap().failed,
        Some(2),
        "backoffLimit 1 allows one retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cronjobs_start_missed_runs_once_and_keep_their_history() {
    use k8s_openapi::api::batch::v1::{CronJob, Job};
    let cluster = TestCluster::start(1).await;
    let client = cluster.client().await;
    let cronjobs: Api<CronJob> = Api::namespaced(client.clone(), "default");
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let template = json!({"metadata": {"labels": {"app": "report"}}, "spec": {"template": {
        "metadata": {"annotations": {"kelson.dev/hollow-run-seconds": "0.2"}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}});
    let cronjob: CronJob = serde_json::from_value(json!({"metadata": {"name": "report"},
        "spec": {"schedule": "* * * * *", "successfulJobsHistoryLimit": 2, "jobTemplate": template}}))
    .unwrap();
    let cronjob = cronjobs
        .create(&PostParams::default(), &cronjob)
        .await
        .unwrap();
    // as if it last ran ten minutes ago: only the latest missed minute runs, at once
    let past = jiff::Timestamp::now() - jiff::SignedDuration::from_mins(10);
    cronjobs
        .patch_status(
            "report",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"lastScheduleTime": past.to_string()}})),
        )
        .await
        .unwrap();
    let owned = |jobs: &[Job]| -> Vec<Job> {
        jobs.iter()
            .filter(|j| {
                j.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| Some(&o.uid) == cronjob.metadata.uid.as_ref())
            })
            .cloned()
            .collect()
    };
    let started = eventually(Duration::from_secs(20), "the missed run", || async {
        let all = jobs.list(&ListParams::default()).await.unwrap().items;
        let owned = owned(&all);
        (!owned.is_empty()).then_some(owned)
    })
    .await;
    assert_eq!(started.len(), 1, "one run for ten missed minutes");
    let job = &started[0];
    let minute = job
        .metadata
        .name
        .as_deref()
        .unwrap()
        .strip_prefix("report-")
        .unwrap()
        .parse::<i64>()
        .unwrap();
    assert!(
        (jiff::Timestamp::now().as_second() / 60 - minute).abs() <= 1,
        "named by its minute"
    );
    assert_eq!(job.metadata.labels.as_ref().unwrap()["app"], "report");
    assert!(
        job.metadata
            .annotations
            .as_ref()
            .unwrap()
            .contains_key("batch.kubernetes.io/cronjob-scheduled-timestamp")
    );
    // it completes; the CronJob's status follows
    let status = eventually(Duration::from_secs(30), "lastSuccessfulTime", || async {
        let status = cronjobs.get("report").await.unwrap().status?;
        (status.last_successful_time.is_some() && status.active.is_none()).then_some(status)
    })
    .await;
    assert!(status.last_schedule_time.unwrap().0 > past);

    // two later runs finish: beyond successfulJobsHistoryLimit (2), the oldest is deleted
    for minute in [1, 2] {
        // start times have a resolution of one second (ties go by name, as in Kubernetes)
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let mut old = job.clone();
        old.metadata = kube::api::ObjectMeta {
            name: Some(format!("report-{minute}")),
            owner_references: job.metadata.owner_references.clone(),
            labels: Some([("app".to_owned(), "report".to_owned())].into()),
            ..kube::api::ObjectMeta::default()
        };
        old.spec.as_mut().unwrap().selector = None;
        let template = &mut old.spec.as_mut().unwrap().template;
        template.metadata.as_mut().unwrap().labels = None;
        old.status = None;
        jobs.create(&PostParams::default(), &old).await.unwrap();
    }
    let left = eventually(Duration::from_secs(30), "the history limit", || async {
        let all = jobs.list(&ListParams::default()).await.unwrap().items;
        let mut names: Vec<String> = owned(&all)
            .iter()
            .filter(|j| j.metadata.deletion_timestamp.is_none())
            .filter_map(|j| j.metadata.name.clone())
            .collect();
        names.sort();
        (names.len() == 2).then_some(names)
    })
    .await;
    assert_eq!(
        left,
        ["report-1", "report-2"],
        "the first run was the oldest"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_get_endpoints_of_their_ready_pods() {
    use k8s_openapi::api::core::v1::{Endpoints, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let cluster = TestCluster::start(2).await;
    let client = cluster.client().await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    deployments
        .create(&PostParams::default(), &deployment("api", 3, "busybox"))
        .await
        .unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let service: Service = serde_json::from_value(json!({"metadata": {"name": "api"},
        "spec": {"selector": {"app": "api"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})).unwrap();
    services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    let ready = |count: usize| {
        let endpoints = endpoints.clone();
        async move {
            let e = endpoints.get_opt("api").await.unwrap()?;
            let addresses: usize = e
                .subsets
                .iter()
                .flatten()
                .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
                .sum();
            let port = e.subsets.as_ref()?.first()?.ports.as_ref()?.first()?.port;
            (addresses == count && port == 8080).then_some(())
        }
    };
    eventually(Duration::from_secs(30), "3 ready endpoints", || ready(3)).await;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let slice = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=api"))
        .await
        .unwrap();
    assert_eq!(slice.items[0].endpoints.len(), 3);
    deployments
        .patch_scale(
            "api",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": 1}})),
        )
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "1 ready endpoint", || ready(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_namespace_gets_a_default_service_account_and_the_root_ca() {
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
    let cluster = TestCluster::start(1).await;
    let client = cluster.client().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap(),
        )
        .await
        .unwrap();
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "team");
    eventually(
        Duration::from_secs(20),
        "default service account",
        || async { accounts.get_opt("default").await.unwrap() },
    )
    .await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "team");
    let ca = eventually(Duration::from_secs(20), "kube-root-ca.crt", || async {
        maps.get_opt("kube-root-ca.crt").await.unwrap()
    })
    .await;
    assert!(ca.data.unwrap()["ca.crt"].starts_with("-----BEGIN CERTIFICATE-----"));
    let system: Api<ServiceAccount> = Api::namespaced(client, "kube-system");
    eventually(
        Duration::from_secs(20),
        "kube-system default account",
        || async { system.get_opt("default").await.unwrap() },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evictions_take_from_the_disruption_budget() {
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use kube::api::EvictParams;
    let cluster = TestCluster::start(1).await;
    let client = cluster.client().await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    deployments
        .create(&PostParams::default(), &deployment("web", 3, "busybox"))
        .await
        .unwrap();
    wait_rolled_out(&deployments, "web").await;
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "default");
    let budget: PodDisruptionBudget = serde_json::from_value(json!({"metadata": {"name": "web"},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}}}))
    .unwrap();
    budgets
        .create(&PostParams::default(), &budget)
        .await
        .unwrap();
    let status = eventually(Duration::from_secs(20), "the budget's status", || async {
        let status = budgets.get("web").await.unwrap().status?;
        (status.observed_generation == Some(1) && status.current_healthy == 3).then_some(status)
    })
    .await;
    assert_eq!(
        (
            status.expected_pods,
            status.desired_healthy,
            status.disruptions_allowed
        ),
        (3, 2, 1)
    );
    // refusals (429) reach the test at once instead of being retried
    let pods: Api<Pod> = Api::namespaced(cluster.client_without_retries().await, "default");
    let names: Vec<String> = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    // one may go: the pod is deleted
    pods.evict(&names[0], &EvictParams::default())
        .await
        .unwrap();
    let evicted = pods.get_opt(&names[0]).await.unwrap();
    assert!(
        evicted.is_none_or(|p| p.metadata.deletion_timestamp.is_some()),
        "the evicted pod goes"
    );
    // all three must stay: refused, naming the budget
    budgets
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"minAvailable": 3}})),
        )
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "the stricter budget", || async {
        let status = budgets.get("web").await.unwrap().status?;
        (status.observed_generation == Some(2) && status.current_healthy == 3).then_some(())
    })
    .await;
    match pods.evict(&names[1], &EvictParams::default()).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 429, "{status:?}");
            assert!(
                status
                    .message
                    .contains("would violate the pod's disruption budget"),
                "{status:?}"
            );
        }
        other => panic!("the budget allows no eviction: {other:?}"),
    }
    assert!(
        pods.get(&names[1])
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_none()
    );

    // a pod under two budgets cannot be evicted; a missing one is 404
    let mut second = budget.clone();
    second.metadata.name = Some("web-too".into());
    budgets
        .create(&PostParams::default(), &second)
        .await
        .unwrap();
    match pods.evict(&names[2], &EvictParams::default()).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 500, "{status:?}");
            assert!(status.message.contains("more than one PodDisruptionBudget"));
        }
        other => panic!("two budgets: {other:?}"),
    }
    match pods.evict("nobody", &EvictParams::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 404),
        other => panic!("missing pod: {other:?}"),
    }
}
