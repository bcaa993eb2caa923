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
    // no later minute's run from here on (the history limit still applies while suspended)
    cronjobs
        .patch(
            "report",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspend": true}})),
        )
        .await
        .unwrap();
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
    // Endpoints and EndpointSlices are written independently, as in Kubernetes: the slice may
    // trail the Endpoints object for a moment.
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    eventually(Duration::from_secs(30), "3 endpoints in the slice", || {
        let slices = slices.clone();
        async move {
            let list = slices
                .list(&ListParams::default().labels("kubernetes.io/service-name=api"))
                .await
                .unwrap();
            let endpoints: usize = list.items.iter().map(|s| s.endpoints.len()).sum();
            (endpoints == 3).then_some(())
        }
    })
    .await;
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

fn image_of(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonsets_run_one_pod_per_fitting_node_and_roll_out_node_by_node() {
    use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
    use k8s_openapi::api::core::v1::Node;
    let cluster = TestCluster::start(3).await;
    let client = cluster.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    // one node is tainted and keeps daemon pods off; the tolerated taint does not
    nodes
        .patch(
            "hollow-2",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": [{"key": "gpu", "effect": "NoSchedule"}]}})),
        )
        .await
        .unwrap();
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let revisions: Api<ControllerRevision> = Api::namespaced(client.clone(), "default");
    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
                 "template": {"metadata": {"labels": {"app": "agent"}},
                              "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}}}
    }))
    .unwrap();
    daemonsets
        .create(&PostParams::default(), &ds)
        .await
        .unwrap();
    let rolled = |image: &'static str, nodes: usize| {
        let daemonsets = daemonsets.clone();
        let pods = pods.clone();
        async move {
            eventually(
                Duration::from_secs(30),
                &format!("{nodes} pods of {image}, available"),
                || async {
                    let ds = daemonsets.get("agent").await.unwrap();
                    let status = ds.status.clone()?;
                    let running: Vec<Pod> = pods
                        .list(&ListParams::default().labels("app=agent"))
                        .await
                        .unwrap()
                        .items;
                    let done = ds.metadata.generation == status.observed_generation
                        && status.desired_number_scheduled == i32::try_from(nodes).unwrap()
                        && status.updated_number_scheduled == Some(status.desired_number_scheduled)
                        && status.number_available == Some(status.desired_number_scheduled)
                        && running.len() == nodes
                        && running.iter().all(|p| image_of(p) == image);
                    done.then_some(running)
                },
            )
            .await
        }
    };
    let first = rolled("busybox:1", 2).await;
    let mut on: Vec<String> = first
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    on.sort();
    assert_eq!(on, ["hollow-0", "hollow-1"], "one pod per untainted node");
    // a toleration lets it onto the tainted node too
    daemonsets
        .patch(
            "agent",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"spec": {
                "tolerations": [{"key": "gpu", "operator": "Exists"}]}}}})),
        )
        .await
        .unwrap();
    rolled("busybox:1", 3).await;

    // an image change rolls node by node: never more than one node without an available pod
    let watch_pods = pods.clone();
    let observer = tokio::spawn(async move {
        let mut stream =
            watcher(watch_pods, watcher::Config::default().labels("app=agent")).boxed();
        let mut state: std::collections::BTreeMap<String, Pod> = Default::default();
        let mut min_ready = usize::MAX;
        let mut synced = false;
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                    state.insert(p.metadata.name.clone().unwrap(), p);
                }
                Ok(watcher::Event::Delete(p)) => {
                    state.remove(p.metadata.name.as_deref().unwrap());
                }
                Ok(watcher::Event::InitDone) => synced = true,
                _ => continue,
            }
            if !synced {
                // the initial listing arrives one pod at a time
                continue;
            }
            let ready = state
                .values()
                .filter(|p| {
                    p.metadata.deletion_timestamp.is_none() && kelson_common::pod::is_ready(p)
                })
                .count();
            min_ready = min_ready.min(ready);
            if state.len() == 3
                && state
                    .values()
                    .all(|p| image_of(p) == "busybox:2" && kelson_common::pod::is_ready(p))
            {
                return min_ready;
            }
        }
        min_ready
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    daemonsets
        .patch(
            "agent",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"spec": {
                "containers": [{"name": "c", "image": "busybox:2"}]}}}})),
        )
        .await
        .unwrap();
    rolled("busybox:2", 3).await;
    let min_ready = tokio::time::timeout(Duration::from_secs(10), observer)
        .await
        .expect("the observer saw the end")
        .unwrap();
    assert!(
        min_ready >= 2,
        "maxUnavailable 1: at least 2 of 3 ready throughout, saw {min_ready}"
    );

    // every template is a revision, as `kubectl rollout history` reads them
    let mut history: Vec<i64> = revisions
        .list(&ListParams::default().labels("app=agent"))
        .await
        .unwrap()
        .items
        .iter()
        .map(|r| r.revision)
        .collect();
    history.sort_unstable();
    assert_eq!(history, [1, 2, 3]);

    // a cordon does not move daemon pods; a NoExecute taint does
    nodes
        .patch(
            "hollow-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": true}})),
        )
        .await
        .unwrap();
    nodes
        .patch(
            "hollow-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": [{"key": "drain", "effect": "NoExecute"}]}})),
        )
        .await
        .unwrap();
    rolled("busybox:2", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_bind_to_volumes_or_get_provisioned_ones() {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    use k8s_openapi::api::storage::v1::StorageClass;
    let cluster = TestCluster::start(2).await;
    let client = cluster.client().await;
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let classes: Api<StorageClass> = Api::all(client.clone());
    let create_claim = |name: &str, class: Option<&str>, size: &str| {
        let claims = claims.clone();
        let mut spec =
            json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}});
        if let Some(class) = class {
            spec["storageClassName"] = json!(class);
        }
        let claim: PersistentVolumeClaim =
            serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
        async move { claims.create(&PostParams::default(), &claim).await.unwrap() }
    };
    let phase_of = |name: &'static str| {
        let claims = claims.clone();
        async move {
            let claim = claims.get(name).await.unwrap();
            (
                claim.status.and_then(|s| s.phase).unwrap_or_default(),
                claim.spec.and_then(|s| s.volume_name).unwrap_or_default(),
            )
        }
    };

    // a static volume: the smallest that fits is bound; a released one is kept (Retain)
    for (name, size) in [("big", "10Gi"), ("small", "2Gi")] {
        let volume: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
                     "storageClassName": "manual", "persistentVolumeReclaimPolicy": "Retain",
                     "hostPath": {"path": format!("/tmp/{name}")}}
        }))
        .unwrap();
        volumes
            .create(&PostParams::default(), &volume)
            .await
            .unwrap();
    }
    create_claim("static", Some("manual"), "1Gi").await;
    eventually(
        Duration::from_secs(20),
        "the claim bound to small",
        || async { (phase_of("static").await == ("Bound".into(), "small".into())).then_some(()) },
    )
    .await;
    eventually(Duration::from_secs(20), "the volume bound", || async {
        let volume = volumes.get("small").await.unwrap();
        (volume.status?.phase.as_deref() == Some("Bound")).then_some(())
    })
    .await;
    claims
        .delete("static", &DeleteParams::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "the volume released", || async {
        let volume = volumes.get("small").await.unwrap();
        (volume.status?.phase.as_deref() == Some("Released")).then_some(())
    })
    .await;

    // the default class waits for the first consumer, then provisions on its node
    let default = classes.get("local-path").await.unwrap();
    assert_eq!(
        default.volume_binding_mode.as_deref(),
        Some("WaitForFirstConsumer")
    );
    let created = create_claim("data", None, "1Gi").await;
    assert_eq!(
        created.spec.unwrap().storage_class_name.as_deref(),
        Some("local-path"),
        "the default class is filled in"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(phase_of("data").await, ("Pending".into(), String::new()));
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "db"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}],
                 "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let (_, volume_name) = eventually(
        Duration::from_secs(20),
        "the claim provisioned and bound",
        || async {
            let state = phase_of("data").await;
            (state.0 == "Bound").then_some(state)
        },
    )
    .await;
    let node = eventually(Duration::from_secs(20), "the pod running", || async {
        let pod = pods.get("db").await.unwrap();
        (pod.status.as_ref()?.phase.as_deref() == Some("Running")).then(|| pod.spec?.node_name)?
    })
    .await;
    let provisioned = volumes.get(&volume_name).await.unwrap();
    let affinity =
        serde_json::to_value(provisioned.spec.as_ref().unwrap().node_affinity.clone()).unwrap();
    assert_eq!(
        affinity.pointer("/required/nodeSelectorTerms/0/matchExpressions/0/values/0"),
        Some(&json!(node)),
        "the volume lives on the pod's node"
    );
    assert!(volume_name.starts_with("pvc-"));
    // deleting the claim deletes the provisioned volume (reclaim policy Delete)
    pods.delete("db", &DeleteParams::default()).await.unwrap();
    claims
        .delete("data", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        Duration::from_secs(20),
        "the provisioned volume deleted",
        || async {
            volumes
                .get_opt(&volume_name)
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;

    // an immediate claim nobody can provision keeps its pod unscheduled, saying why
    let external: StorageClass = serde_json::from_value(json!({
        "metadata": {"name": "external"}, "provisioner": "example.com/nfs"
    }))
    .unwrap();
    classes
        .create(&PostParams::default(), &external)
        .await
        .unwrap();
    create_claim("remote", Some("external"), "1Gi").await;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "stuck"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}],
                 "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "remote"}}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let message = eventually(Duration::from_secs(20), "the pod unschedulable", || async {
        let pod = pods.get("stuck").await.unwrap();
        let condition = pod
            .status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
        condition.message
    })
    .await;
    assert_eq!(
        message,
        "0/2 nodes are available: 2 pod has unbound immediate PersistentVolumeClaims."
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_quotas_count_usage_and_refuse_what_exceeds_them() {
    use k8s_openapi::api::core::v1::{ConfigMap, ResourceQuota};
    let cluster = TestCluster::start(1).await;
    let client = cluster.client().await;
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(cluster.client_without_retries().await, "default");
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let quota: ResourceQuota = serde_json::from_value(json!({
        "metadata": {"name": "compute"},
        "spec": {"hard": {"pods": "3", "requests.cpu": "1", "limits.memory": "1Gi", "count/deployments.apps": "1"}}
    }))
    .unwrap();
    quotas.create(&PostParams::default(), &quota).await.unwrap();
    let objects: ResourceQuota = serde_json::from_value(json!({
        "metadata": {"name": "objects"}, "spec": {"hard": {"configmaps": "3"}}
    }))
    .unwrap();
    quotas
        .create(&PostParams::default(), &objects)
        .await
        .unwrap();
    let used = |name: &'static str| {
        let quotas = quotas.clone();
        async move {
            let q = quotas.get(name).await.unwrap();
            serde_json::to_value(q.status.and_then(|s| s.used)).unwrap()
        }
    };
    eventually(Duration::from_secs(20), "the quotas' usage counted", || async {
        let configmaps_used = used("objects").await;
        (used("compute").await
            == json!({"pods": "0", "requests.cpu": "0", "limits.memory": "0", "count/deployments.apps": "0"})
            && configmaps_used == json!({"configmaps": "1"}))
        .then_some(())
    })
    .await;
    let pod = |name: &str, cpu: &str| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": "busybox",
                "resources": {"requests": {"cpu": cpu}, "limits": {"memory": "256Mi"}}}]}
        }))
        .unwrap()
    };
    pods.create(&PostParams::default(), &pod("a", "400m"))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod("b", "400m"))
        .await
        .unwrap();
    // charged at once, before the controller recounts
    assert_eq!(
        used("compute").await,
        json!({"pods": "2", "requests.cpu": "800m", "limits.memory": "512Mi", "count/deployments.apps": "0"})
    );
    let refused = pods
        .create(&PostParams::default(), &pod("c", "400m"))
        .await
        .unwrap_err();
    let kube::Error::Api(status) = refused else {
        panic!("{refused}")
    };
    assert_eq!(status.code, 403);
    assert_eq!(
        status.message,
        "pods \"c\" is forbidden: exceeded quota: compute, requested: requests.cpu=400m, used: requests.cpu=800m, limited: requests.cpu=1"
    );
    let unbounded: Pod = serde_json::from_value(json!({
        "metadata": {"name": "d"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}
    }))
    .unwrap();
    let refused = pods
        .create(&PostParams::default(), &unbounded)
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains(
            "failed quota: compute: must specify requests.cpu for: c; limits.memory for: c"
        ),
        "{refused}"
    );
    // deleting a pod frees its share once the controller recounts
    pods.delete("a", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(20),
        "the deleted pod's share freed",
        || async { (used("compute").await["requests.cpu"] == json!("400m")).then_some(()) },
    )
    .await;
    pods.create(&PostParams::default(), &pod("c", "400m"))
        .await
        .unwrap();

    // object counts (kube-root-ca.crt is one of the ConfigMaps): a fourth ConfigMap and a second
    // Deployment are refused
    for name in ["one", "two", "three"] {
        let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        let result = configmaps.create(&PostParams::default(), &cm).await;
        assert_eq!(result.is_ok(), name != "three", "{name}: {result:?}");
    }
    deployments
        .create(&PostParams::default(), &deployment("web", 1, "busybox"))
        .await
        .unwrap();
    let second = deployments
        .create(&PostParams::default(), &deployment("api", 1, "busybox"))
        .await
        .unwrap_err();
    assert!(
        second
            .to_string()
            .contains("exceeded quota: compute, requested: count/deployments.apps=1"),
        "{second}"
    );
    // the Deployment's pods ask 100m of cpu but set no memory limit: its ReplicaSet says why
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), "default");
    let message = eventually(Duration::from_secs(20), "a FailedCreate event", || async {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("FailedCreate"))
            .and_then(|e| e.message)
    })
    .await;
    assert!(message.contains("must specify limits.memory"), "{message}");
    // a new limit shows in the status at once
    quotas
        .patch(
            "objects",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"hard": {"configmaps": "5"}}})),
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "the new hard limit in the status",
        || async {
            let q = quotas.get("objects").await.unwrap();
            let hard = serde_json::to_value(q.status?.hard).unwrap();
            (hard == json!({"configmaps": "5"})).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulsets_start_in_order_keep_their_claims_and_update_down_to_the_partition() {
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    let cluster = TestCluster::start(2).await;
    let client = cluster.client().await;
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let set: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "db"},
        "spec": {"replicas": 3, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                 "template": {"metadata": {"labels": {"app": "db"}},
                              "spec": {"containers": [{"name": "c", "image": "busybox:1",
                                  "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}},
                 "volumeClaimTemplates": [{"metadata": {"name": "data"},
                     "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}
    }))
    .unwrap();
    // record the order in which pods are first seen
    let watch_pods = pods.clone();
    let order = tokio::spawn(async move {
        let mut stream = watcher(watch_pods, watcher::Config::default().labels("app=db")).boxed();
        let mut seen: Vec<String> = Vec::new();
        let mut ready_before: Vec<usize> = Vec::new();
        let mut state: std::collections::BTreeMap<String, Pod> = Default::default();
        while let Some(Ok(event)) = stream.next().await {
            if let watcher::Event::Apply(p) = event {
                let name = p.metadata.name.clone().unwrap();
                if !seen.contains(&name) {
                    // how many earlier pods were ready when this one appeared
                    let ready = state
                        .values()
                        .filter(|p| kelson_common::pod::is_ready(p))
                        .count();
                    seen.push(name.clone());
                    ready_before.push(ready);
                }
                state.insert(name, p);
                if seen.len() == 3 {
                    return (seen, ready_before);
                }
            }
        }
        (seen, ready_before)
    });
    sets.create(&PostParams::default(), &set).await.unwrap();
    let (seen, ready_before) = tokio::time::timeout(Duration::from_secs(30), order)
        .await
        .expect("three pods")
        .unwrap();
    assert_eq!(seen, ["db-0", "db-1", "db-2"]);
    assert_eq!(
        ready_before,
        [0, 1, 2],
        "each pod waits for its predecessors to be ready"
    );
    let rolled = |image: &'static str, replicas: i32| {
        let sets = sets.clone();
        let pods = pods.clone();
        async move {
            eventually(
                Duration::from_secs(40),
                &format!("{replicas} pods of {image}"),
                || async {
                    let set = sets.get("db").await.unwrap();
                    let status = set.status.clone()?;
                    let running = pods
                        .list(&ListParams::default().labels("app=db"))
                        .await
                        .unwrap()
                        .items;
                    let done = set.metadata.generation == status.observed_generation
                        && status.ready_replicas == Some(replicas)
                        && status.replicas == replicas
                        && status.current_revision == status.update_revision
                        && running.len() == usize::try_from(replicas).unwrap()
                        && running
                            .iter()
                            .all(|p| image_of(p) == image && kelson_common::pod::is_ready(p));
                    done.then_some(status)
                },
            )
            .await
        }
    };
    let first = rolled("busybox:1", 3).await;
    let mut claim_names: Vec<String> = claims
        .list(&ListParams::default().labels("app=db"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    claim_names.sort();
    assert_eq!(claim_names, ["data-db-0", "data-db-1", "data-db-2"]);
    let db1 = pods.get("db-1").await.unwrap();
    assert_eq!(db1.spec.as_ref().unwrap().hostname.as_deref(), Some("db-1"));
    assert_eq!(db1.spec.as_ref().unwrap().subdomain.as_deref(), Some("db"));
    // under the governing headless Service each pod has its own DNS name
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(client.clone(), "default");
    let headless = serde_json::from_value(json!({"metadata": {"name": "db"},
        "spec": {"clusterIP": "None", "selector": {"app": "db"}, "ports": [{"port": 5432}]}}))
    .unwrap();
    services
        .create(&PostParams::default(), &headless)
        .await
        .unwrap();
    let endpoints: Api<k8s_openapi::api::core::v1::Endpoints> =
        Api::namespaced(client.clone(), "default");
    eventually(Duration::from_secs(20), "endpoint hostnames", || async {
        let mut names: Vec<String> = endpoints
            .get_opt("db")
            .await
            .unwrap()?
            .subsets?
            .into_iter()
            .flat_map(|s| s.addresses.unwrap_or_default())
            .filter_map(|a| a.hostname)
            .collect();
        names.sort();
        (names == ["db-0", "db-1", "db-2"]).then_some(())
    })
    .await;

    // a partitioned update changes only ordinals at or above the partition
    sets.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 2}},
            "template": {"spec": {"containers": [{"name": "c", "image": "busybox:2"}]}}}})),
    )
    .await
    .unwrap();
    eventually(
        Duration::from_secs(30),
        "db-2 updated, the others not",
        || async {
            let images: Vec<String> = ["db-0", "db-1", "db-2"]
                .iter()
                .map(|n| async { pods.get_opt(n).await.unwrap() })
                .collect::<futures::stream::FuturesOrdered<_>>()
                .collect::<Vec<_>>()
                .await
                .iter()
                .map(|p| p.as_ref().map(image_of).unwrap_or_default())
                .collect();
            let status = sets.get("db").await.unwrap().status?;
            (images == ["busybox:1", "busybox:1", "busybox:2"]
                && status.updated_replicas == Some(1)
                && status.ready_replicas == Some(3))
            .then_some(())
        },
    )
    .await;
    // dropping the partition finishes the update; the claims stay the same
    sets.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"updateStrategy": {"rollingUpdate": {"partition": 0}}}})),
    )
    .await
    .unwrap();
    let second = rolled("busybox:2", 3).await;
    assert_ne!(first.update_revision, second.update_revision);
    let db0 = pods.get("db-0").await.unwrap();
    let claim = db0
        .spec
        .unwrap()
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "data")
        .unwrap();
    assert_eq!(
        claim.persistent_volume_claim.unwrap().claim_name,
        "data-db-0"
    );

    // scaling down removes the highest ordinal and keeps its claim (whenScaled: Retain)
    sets.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .unwrap();
    rolled("busybox:2", 1).await;
    assert!(pods.get_opt("db-0").await.unwrap().is_some());
    assert!(claims.get_opt("data-db-2").await.unwrap().is_some());
}
