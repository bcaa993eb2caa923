//! Hollow nodes: many simulated kubelets in one process (like kwok), for tests and benchmarks at
//! hundreds or thousands of nodes. Each registers a realistic Node, renews its Lease and reports
//! the pods bound to it through [`crate::status`] as a fake runtime would run them: Running and
//! Ready after a delay, Succeeded after a while for pods that do not restart (Jobs), or failing
//! when told to. One pod watch serves all nodes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::node::{self, NodeSpecification};
use crate::status::{ContainerPhase, ContainerReport, pod_status};

/// Annotation that makes a hollow pod's containers fail (exit code 1) after starting.
pub const FAIL_ANNOTATION: &str = "kelson.dev/hollow-fail";
/// Annotation with the seconds a hollow pod that does not restart runs before it exits.
pub const RUN_SECONDS_ANNOTATION: &str = "kelson.dev/hollow-run-seconds";

/// Configuration of a set of hollow nodes.
#[derive(Clone, Debug)]
pub struct HollowConfig {
    /// Number of nodes.
    pub nodes: usize,
    /// Node names are `<prefix><index>`.
    pub name_prefix: String,
    /// Delay from binding to Running and Ready.
    pub start_delay: Duration,
    /// How long pods that do not restart run by default.
    pub run_duration: Duration,
    /// Lease renewal period.
    pub lease_period: Duration,
    /// Node status (heartbeat) period.
    pub status_period: Duration,
    /// Capacity of each node.
    pub cpu: String,
    /// Memory of each node.
    pub memory: String,
    /// Pods per node.
    pub pods: String,
}

impl Default for HollowConfig {
    fn default() -> Self {
        Self {
            nodes: 3,
            name_prefix: "hollow-".into(),
            start_delay: Duration::from_millis(500),
            run_duration: Duration::from_secs(2),
            lease_period: Duration::from_secs(10),
            status_period: Duration::from_secs(60),
            cpu: "4".into(),
            memory: "16Gi".into(),
            pods: "110".into(),
        }
    }
}

/// Running hollow nodes; heartbeats of single nodes can be stopped to simulate failures.
#[derive(Clone)]
pub struct HollowNodes {
    names: Arc<Vec<String>>,
    stopped: Arc<Mutex<HashSet<String>>>,
}

impl HollowNodes {
    /// The node names.
    #[must_use]
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Stops a node's heartbeats and pod handling, as if it lost power.
    pub fn stop(&self, name: &str) {
        self.stopped.lock().insert(name.to_owned());
    }

    /// Resumes a stopped node.
    pub fn resume(&self, name: &str) {
        self.stopped.lock().remove(name);
    }

    fn is_stopped(&self, name: &str) -> bool {
        self.stopped.lock().contains(name)
    }
}

fn specification(config: &HollowConfig, index: usize) -> NodeSpecification {
    let capacity = BTreeMap::from([
        ("cpu".to_owned(), Quantity(config.cpu.clone())),
        ("memory".to_owned(), Quantity(config.memory.clone())),
        ("pods".to_owned(), Quantity(config.pods.clone())),
        ("ephemeral-storage".to_owned(), Quantity("100Gi".into())),
    ]);
    NodeSpecification {
        name: format!("{}{index}", config.name_prefix),
        labels: BTreeMap::from([("kelson.dev/hollow".to_owned(), "true".to_owned())]),
        allocatable: capacity.clone(),
        capacity,
        internal_ip: format!(
            "10.{}.{}.{}",
            64 + index / 65536,
            (index / 256) % 256,
            index % 256
        ),
        runtime_version: "fake://0.1.0".into(),
        os_image: "Kelson hollow node".into(),
        kernel_version: "hollow".into(),
        kubelet_port: None,
    }
}

/// Registers the nodes and keeps them alive until `shutdown`.
///
/// # Errors
/// When a node cannot be registered.
pub async fn start(
    client: kube::Client,
    config: HollowConfig,
    shutdown: CancellationToken,
) -> kube::Result<HollowNodes> {
    let specs: Vec<NodeSpecification> = (0..config.nodes)
        .map(|i| specification(&config, i))
        .collect();
    futures::stream::iter(specs.iter())
        .map(|spec| node::register(&client, spec))
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<kube::Result<Vec<()>>>()?;
    let hollow = HollowNodes {
        names: Arc::new(specs.iter().map(|s| s.name.clone()).collect()),
        stopped: Arc::new(Mutex::new(HashSet::new())),
    };
    info!(nodes = config.nodes, "hollow nodes registered");
    tokio::spawn(heartbeats(
        client.clone(),
        config.clone(),
        hollow.clone(),
        shutdown.clone(),
    ));
    let host_ips: HashMap<String, String> = specs
        .iter()
        .map(|s| (s.name.clone(), s.internal_ip.clone()))
        .collect();
    tokio::spawn(run_pods(
        client,
        config,
        hollow.clone(),
        Arc::new(host_ips),
        shutdown,
    ));
    Ok(hollow)
}

async fn heartbeats(
    client: kube::Client,
    config: HollowConfig,
    hollow: HollowNodes,
    shutdown: CancellationToken,
) {
    let mut lease_tick = tokio::time::interval(config.lease_period);
    let mut status_tick = tokio::time::interval(config.status_period);
    status_tick.tick().await;
    loop {
        let status = tokio::select! {
            () = shutdown.cancelled() => return,
            _ = lease_tick.tick() => false,
            _ = status_tick.tick() => true,
        };
        let live: Vec<String> = hollow
            .names
            .iter()
            .filter(|n| !hollow.is_stopped(n))
            .cloned()
            .collect();
        futures::stream::iter(live)
            .for_each_concurrent(32, |name| {
                let client = client.clone();
                async move {
                    let result = if status {
                        node::post_status(&client, &name, &node::Health::default()).await
                    } else {
                        node::renew_lease(&client, &name, 40).await
                    };
                    if let Err(error) = result {
                        debug!(node = %name, %error, "hollow heartbeat failed");
                    }
                }
            })
            .await;
    }
}

async fn run_pods(
    client: kube::Client,
    config: HollowConfig,
    hollow: HollowNodes,
    host_ips: Arc<HashMap<String, String>>,
    shutdown: CancellationToken,
) {
    let pods: Api<Pod> = Api::all(client.clone());
    // pods we are already acting on, so repeated events do not start twice
    let handled: Arc<Mutex<HashSet<(String, &'static str)>>> = Arc::new(Mutex::new(HashSet::new()));
    let next_ip = Arc::new(std::sync::atomic::AtomicU32::new(1));
    let watch_config = watcher::Config::default().fields("spec.nodeName!=");
    let events = watcher(pods, watch_config)
        .default_backoff()
        .for_each(|event| {
            let pod = match event {
                Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => pod,
                Ok(watcher::Event::Delete(pod)) => {
                    let uid = pod.metadata.uid.unwrap_or_default();
                    handled.lock().retain(|(u, _)| *u != uid);
                    return futures::future::ready(());
                }
                Ok(_) => return futures::future::ready(()),
                Err(error) => {
                    warn!(%error, "hollow pod watch failed");
                    return futures::future::ready(());
                }
            };
            let node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            let Some(host_ip) = host_ips.get(&node).cloned() else {
                return futures::future::ready(());
            };
            if hollow.is_stopped(&node) {
                return futures::future::ready(());
            }
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let action = next_action(&pod);
            let Some(action) = action else {
                return futures::future::ready(());
            };
            if !handled.lock().insert((uid, action.name())) {
                return futures::future::ready(());
            }
            let client = client.clone();
            let config = config.clone();
            let ip = next_ip.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let pod_ip = format!(
                "10.{}.{}.{}",
                128 + (ip >> 16) % 64,
                (ip >> 8) % 256,
                ip % 256
            );
            tokio::spawn(async move {
                if let Err(error) = act(&client, &config, &pod, action, &pod_ip, &host_ip).await {
                    debug!(pod = ?pod.metadata.name, %error, "hollow pod update failed");
                }
            });
            futures::future::ready(())
        });
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = events => {}
    }
}

/// What the fake runtime does next with a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// Start its containers.
    Start,
    /// Let its containers exit (pods that do not restart).
    Finish,
    /// Stop its containers and confirm the deletion.
    Kill,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Finish => "finish",
            Action::Kill => "kill",
        }
    }
}

fn next_action(pod: &Pod) -> Option<Action> {
    if pod.metadata.deletion_timestamp.is_some() {
        return Some(Action::Kill);
    }
    match kelson_common::pod::phase(pod) {
        "Pending" => Some(Action::Start),
        "Running" => {
            let policy = pod
                .spec
                .as_ref()
                .and_then(|s| s.restart_policy.as_deref())
                .unwrap_or("Always");
            (policy != "Always").then_some(Action::Finish)
        }
        _ => None,
    }
}

async fn act(
    client: &kube::Client,
    config: &HollowConfig,
    pod: &Pod,
    action: Action,
    pod_ip: &str,
    host_ip: &str,
) -> kube::Result<()> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let containers: Vec<String> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter().map(|c| c.name.clone()))
        .collect();
    let report = |phase: ContainerPhase, name: &str| ContainerReport {
        name: name.to_owned(),
        phase,
        restart_count: 0,
        container_id: Some(format!(
            "fake://{}-{name}",
            pod.metadata.uid.as_deref().unwrap_or("")
        )),
        image_id: "fake://sha256:0".into(),
        last_state: None,
    };
    match action {
        Action::Kill => {
            // the runtime stops the containers, then the kubelet confirms the deletion
            tokio::time::sleep(Duration::from_millis(50)).await;
            match api
                .delete(name, &DeleteParams::default().grace_period(0))
                .await
            {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
                Err(error) => Err(error),
            }
        }
        Action::Start => {
            tokio::time::sleep(config.start_delay).await;
            let now = Time(jiff::Timestamp::now());
            let fail = annotations
                .get(FAIL_ANNOTATION)
                .is_some_and(|v| v == "true");
            let reports: Vec<ContainerReport> = containers
                .iter()
                .map(|c| {
                    if fail {
                        report(
                            ContainerPhase::Terminated {
                                exit_code: 1,
                                reason: "Error".into(),
                                message: String::new(),
                                started: Some(now.clone()),
                                finished: now.clone(),
                            },
                            c,
                        )
                    } else {
                        report(
                            ContainerPhase::Running {
                                started: now.clone(),
                                ready: true,
                                has_started: true,
                            },
                            c,
                        )
                    }
                })
                .collect();
            write_status(&api, pod, &reports, pod_ip, host_ip, &now).await
        }
        Action::Finish => {
            let seconds = annotations
                .get(RUN_SECONDS_ANNOTATION)
                .and_then(|v| v.parse::<f64>().ok());
            let run = seconds.map_or(config.run_duration, Duration::from_secs_f64);
            tokio::time::sleep(run).await;
            let now = Time(jiff::Timestamp::now());
            let started = pod.status.as_ref().and_then(|s| s.start_time.clone());
            let reports: Vec<ContainerReport> = containers
                .iter()
                .map(|c| {
                    report(
                        ContainerPhase::Terminated {
                            exit_code: 0,
                            reason: "Completed".into(),
                            message: String::new(),
                            started: started.clone(),
                            finished: now.clone(),
                        },
                        c,
                    )
                })
                .collect();
            let ip = pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .unwrap_or_else(|| pod_ip.to_owned());
            write_status(&api, pod, &reports, &ip, host_ip, &now).await
        }
    }
}

async fn write_status(
    api: &Api<Pod>,
    pod: &Pod,
    reports: &[ContainerReport],
    pod_ip: &str,
    host_ip: &str,
    now: &Time,
) -> kube::Result<()> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let status = pod_status(pod, reports, Some(pod_ip), host_ip, now);
    let patch = serde_json::json!({"status": status});
    match api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error),
    }
}
