//! Kelson's controller manager: one module per Kubernetes controller, each a kube-runtime
//! `Controller` whose decisions are pure `plan`/`status` functions tested beside it.
//!
//! [`run`] starts them all over shared caches (one watch per kind, shared by every controller
//! that reads it). Start reading at [`replicaset`], the simplest; [`deployment`] builds on it.

pub mod context;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod gc;
pub mod hpa;
pub mod job;
pub mod namespace;
pub mod nodelifecycle;
pub mod quota;
pub mod replicaset;
pub mod revision;
pub mod serviceaccount;
pub mod statefulset;
pub mod volume;
pub mod workqueue;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod, ResourceQuota, Service,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use workqueue::owners;

pub use context::{Context, Error};

/// A cache of one kind shared by several controllers.
///
/// Subscribers get the changed objects themselves through a broadcast, never a reference to
/// look up later: kube's shared-store handle stops yielding for good when an object is deleted
/// between its dispatch and the subscriber's poll (it returns `Pending` with no waker), which
/// silently ended every trigger of that kind for a controller. A subscriber that falls behind
/// gets every cached object again, so no change is lost.
struct Informer<K: Resource + Clone + 'static>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store: Store<K>,
    writer: Option<reflector::store::Writer<K>>,
    /// Objects that were added or changed (and, after a relist, all of them).
    applied: tokio::sync::broadcast::Sender<Arc<K>>,
    /// Deleted objects (the store no longer has them).
    deleted: tokio::sync::broadcast::Sender<Arc<K>>,
}

impl<K> Informer<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    fn new() -> Self {
        let (store, writer) = reflector::store();
        let (applied, _) = tokio::sync::broadcast::channel(4096);
        let (deleted, _) = tokio::sync::broadcast::channel(1024);
        Self {
            store,
            writer: Some(writer),
            applied,
            deleted,
        }
    }

    /// The controller owners of deleted objects, as reconcile triggers for the owner kind.
    fn deleted_owners<Owner: Resource<DynamicType = ()> + 'static>(
        &self,
    ) -> impl futures::Stream<Item = ObjectRef<Owner>> + Send + 'static {
        let kind = Owner::kind(&()).into_owned();
        tokio_stream::wrappers::BroadcastStream::new(self.deleted.subscribe()).filter_map(
            move |deleted| {
                let owner = deleted.ok().and_then(|object| {
                    let owner = kelson_common::pod::controller_of(object.meta())?;
                    (owner.kind == kind).then(|| {
                        let reference = ObjectRef::new(&owner.name);
                        match object.namespace() {
                            Some(namespace) => reference.within(&namespace),
                            None => reference,
                        }
                    })
                });
                futures::future::ready(owner)
            },
        )
    }

    fn subscribe(&self) -> impl futures::Stream<Item = Arc<K>> + Send + 'static {
        let store = self.store.clone();
        tokio_stream::wrappers::BroadcastStream::new(self.applied.subscribe()).flat_map(
            move |received| match received {
                Ok(object) => futures::stream::iter(vec![object]),
                // fell behind: everything cached, since any of it may have changed
                Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(_)) => {
                    futures::stream::iter(store.state())
                }
            },
        )
    }

    /// Deleted objects.
    fn deleted_objects(&self) -> impl futures::Stream<Item = Arc<K>> + Send + 'static {
        tokio_stream::wrappers::BroadcastStream::new(self.deleted.subscribe())
            .filter_map(|d| futures::future::ready(d.ok()))
    }

    /// Every object, live or deleted, as it changes.
    fn changes(&self) -> impl futures::Stream<Item = Arc<K>> + Send + 'static {
        futures::stream::select(self.subscribe(), self.deleted_objects())
    }

    /// Starts the watch that fills the cache and feeds the subscribers.
    fn start(&mut self, api: Api<K>, shutdown: &CancellationToken) {
        let writer = self.writer.take().expect("started once");
        let deleted = self.deleted.clone();
        let applied = self.applied.clone();
        let store = self.store.clone();
        let watch = watcher(api, watcher::Config::default()).default_backoff();
        let stream = reflector::reflector(writer, watch)
            // after the store has the change
            .inspect(move |event| match event {
                Ok(watcher::Event::Apply(object)) => {
                    // the cache's copy, just stored: no second copy of every object
                    let cached = store
                        .get(&ObjectRef::from_obj(object))
                        .unwrap_or_else(|| Arc::new(object.clone()));
                    let _ = applied.send(cached);
                }
                Ok(watcher::Event::Delete(object)) => {
                    let _ = deleted.send(Arc::new(object.clone()));
                }
                Ok(watcher::Event::InitDone) => {
                    for object in store.state() {
                        let _ = applied.send(object);
                    }
                }
                _ => {}
            })
            .for_each(|event| async move {
                if let Err(error) = event {
                    warn!(%error, kind = K::kind(&()).as_ref(), "watch failed");
                }
            });
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = stream => {}
            }
        });
    }
}

/// For each changed object of `changes`, every object of `store` in its namespace: the
/// reconcile triggers of kinds that select pods by labels (Services, budgets).
fn in_namespace_of<K, Changed>(
    changes: impl futures::Stream<Item = Arc<Changed>> + Send + 'static,
    store: Store<K>,
) -> impl futures::Stream<Item = ObjectRef<K>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    Changed: ResourceExt + Send + Sync + 'static,
{
    changes.flat_map(move |changed| {
        let namespace = changed.namespace();
        let refs: Vec<ObjectRef<K>> = store
            .state()
            .iter()
            .filter(|object| object.namespace() == namespace)
            .map(|object| ObjectRef::from_obj(&**object))
            .collect();
        futures::stream::iter(refs)
    })
}

/// For each changed object of `changes`, every object of `store`: the reconcile triggers of
/// kinds that look at every node (DaemonSets).
fn all_on<K, Changed>(
    changes: impl futures::Stream<Item = Arc<Changed>> + Send + 'static,
    store: Store<K>,
) -> impl futures::Stream<Item = ObjectRef<K>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    Changed: Send + Sync + 'static,
{
    changes.flat_map(move |_| {
        let refs: Vec<ObjectRef<K>> = store
            .state()
            .iter()
            .map(|object| ObjectRef::from_obj(&**object))
            .collect();
        futures::stream::iter(refs)
    })
}

/// Passes on only the objects whose `key` changed since they last passed (by uid): triggers
/// that ignore writes a controller does not read, such as status heartbeats. What it remembers
/// of deleted objects is dropped every 1024 objects.
fn when_changed<K, V>(
    objects: impl futures::Stream<Item = Arc<K>> + Send + 'static,
    store: Store<K>,
    key: impl Fn(&K) -> V + Send + 'static,
) -> impl futures::Stream<Item = Arc<K>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    V: PartialEq + Send + 'static,
{
    let seen = parking_lot::Mutex::new((0usize, std::collections::HashMap::<String, V>::new()));
    objects.filter(move |object| {
        let uid = object.meta().uid.clone().unwrap_or_default();
        let value = key(object);
        let mut guard = seen.lock();
        let (passed, seen) = &mut *guard;
        let changed = seen.get(&uid) != Some(&value);
        if changed {
            seen.insert(uid, value);
        }
        *passed += 1;
        if *passed % 1024 == 0 {
            let live: std::collections::HashSet<String> = store
                .state()
                .iter()
                .filter_map(|o| o.meta().uid.clone())
                .collect();
            seen.retain(|uid, _| live.contains(uid));
        }
        futures::future::ready(changed)
    })
}

fn error_policy<K: ResourceExt>(
    object: Arc<K>,
    error: &Error,
    _ctx: Arc<impl Send + Sync>,
) -> Action {
    warn!(object = %object.name_any(), %error, label = error.metric_label(), "reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

/// What a controller does with each result: the queue takes note, errors are logged.
fn settled<T, R, Q>(
    queue: Arc<workqueue::Queue>,
) -> impl FnMut(Result<T, kube::runtime::controller::Error<R, Q>>) -> futures::future::Ready<()>
where
    R: std::error::Error,
    Q: std::error::Error,
{
    move |result| {
        queue.settle(&result);
        if let Err(error) = result {
            tracing::debug!(%error, queue = queue.name(), "controller event");
        }
        futures::future::ready(())
    }
}

/// Settings of the controller manager.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Node lifecycle timing.
    pub node_lifecycle: nodelifecycle::Config,
    /// The cluster CA certificate (PEM) published in every namespace as `kube-root-ca.crt`.
    pub root_ca: Option<String>,
    /// Volume binding and provisioning.
    pub volumes: volume::Config,
    /// Where the controllers' workqueue metrics go.
    pub metrics: Arc<workqueue::Metrics>,
}

/// Runs every controller with default settings until `shutdown`.
pub async fn run(client: kube::Client, shutdown: CancellationToken) {
    run_with(client, Options::default(), shutdown).await;
}

/// Runs every controller until `shutdown`.
pub async fn run_with(client: kube::Client, options: Options, shutdown: CancellationToken) {
    let context = Arc::new(Context::new(client.clone()));
    let metrics = options.metrics.clone();
    let mut pods = Informer::<Pod>::new();
    let mut replicasets = Informer::<ReplicaSet>::new();
    let mut deployments = Informer::<Deployment>::new();

    let queue = metrics.queue("replicaset");
    let replicaset_controller = Controller::for_shared_stream(
        queue.objects(replicasets.subscribe()),
        replicasets.store.clone(),
    )
    .reconcile_on(queue.refs(owners::<ReplicaSet, _, _>(pods.subscribe())))
    .reconcile_on(queue.refs(pods.deleted_owners()))
    .graceful_shutdown_on(shutdown.clone().cancelled_owned())
    .run(
        queue.reconciler(replicaset::reconcile),
        error_policy,
        Arc::new(replicaset::Shared {
            context: context.clone(),
            pods: pods.store.clone(),
        }),
    )
    .for_each(settled(queue));
    let queue = metrics.queue("deployment");
    let deployment_controller = Controller::for_shared_stream(
        queue.objects(deployments.subscribe()),
        deployments.store.clone(),
    )
    .reconcile_on(queue.refs(owners::<Deployment, _, _>(replicasets.subscribe())))
    .reconcile_on(queue.refs(replicasets.deleted_owners()))
    .graceful_shutdown_on(shutdown.clone().cancelled_owned())
    .run(
        queue.reconciler(deployment::reconcile),
        error_policy,
        Arc::new(deployment::Shared {
            context: context.clone(),
            replicasets: replicasets.store.clone(),
            pods: pods.store.clone(),
        }),
    )
    .for_each(settled(queue));

    let mut jobs = Informer::<Job>::new();
    let queue = metrics.queue("job");
    let job_controller =
        Controller::for_shared_stream(queue.objects(jobs.subscribe()), jobs.store.clone())
            .reconcile_on(queue.refs(owners::<Job, _, _>(pods.subscribe())))
            .reconcile_on(queue.refs(pods.deleted_owners()))
            .graceful_shutdown_on(shutdown.clone().cancelled_owned())
            .run(
                queue.reconciler(job::reconcile),
                error_policy,
                Arc::new(job::Shared {
                    context: context.clone(),
                    pods: pods.store.clone(),
                }),
            )
            .for_each(settled(queue));
    let mut cronjobs = Informer::<CronJob>::new();
    let queue = metrics.queue("cronjob");
    let cronjob_controller =
        Controller::for_shared_stream(queue.objects(cronjobs.subscribe()), cronjobs.store.clone())
            .reconcile_on(queue.refs(owners::<CronJob, _, _>(jobs.subscribe())))
            .reconcile_on(queue.refs(jobs.deleted_owners()))
            .graceful_shutdown_on(shutdown.clone().cancelled_owned())
            .run(
                queue.reconciler(cronjob::reconcile),
                error_policy,
                Arc::new(cronjob::Shared {
                    context: context.clone(),
                    jobs: jobs.store.clone(),
                }),
            )
            .for_each(settled(queue));
    let mut autoscalers = Informer::<HorizontalPodAutoscaler>::new();
    let queue = metrics.queue("horizontalpodautoscaler");
    let autoscaler_controller = Controller::for_shared_stream(
        queue.objects(autoscalers.subscribe()),
        autoscalers.store.clone(),
    )
    .graceful_shutdown_on(shutdown.clone().cancelled_owned())
    .run(
        queue.reconciler(hpa::reconcile),
        error_policy,
        Arc::new(hpa::Shared {
            context: context.clone(),
            pods: pods.store.clone(),
            recommendations: parking_lot::Mutex::default(),
        }),
    )
    .for_each(settled(queue));
    let mut services = Informer::<Service>::new();
    // any pod change may change the endpoints of the Services in its namespace
    let pod_to_services = in_namespace_of(pods.changes(), services.store.clone());
    let queue = metrics.queue("endpoint");
    let endpoints_controller =
        Controller::for_shared_stream(queue.objects(services.subscribe()), services.store.clone())
            .reconcile_on(queue.refs(pod_to_services))
            .graceful_shutdown_on(shutdown.clone().cancelled_owned())
            .run(
                queue.reconciler(endpoints::reconcile),
                error_policy,
                Arc::new(endpoints::Shared {
                    context: context.clone(),
                    pods: pods.store.clone(),
                }),
            )
            .for_each(settled(queue));
    let mut budgets = Informer::<PodDisruptionBudget>::new();
    // a pod's readiness or deletion changes the budgets of its namespace
    let pod_to_budgets = in_namespace_of(pods.changes(), budgets.store.clone());
    let queue = metrics.queue("disruption");
    let disruption_controller =
        Controller::for_shared_stream(queue.objects(budgets.subscribe()), budgets.store.clone())
            .reconcile_on(queue.refs(pod_to_budgets))
            .graceful_shutdown_on(shutdown.clone().cancelled_owned())
            .run(
                queue.reconciler(disruption::reconcile),
                error_policy,
                Arc::new(disruption::Shared {
                    context: context.clone(),
                    pods: pods.store.clone(),
                    replicasets: replicasets.store.clone(),
                    deployments: deployments.store.clone(),
                }),
            )
            .for_each(settled(queue));
    let mut nodes = Informer::<Node>::new();
    let mut daemonsets = Informer::<DaemonSet>::new();
    let mut revisions = Informer::<ControllerRevision>::new();
    // a node joining, leaving or changing labels or taints may change where daemon pods run
    // (not their status heartbeats: placement reads labels, taints and cordons only)
    let placement_changes = futures::stream::select(
        when_changed(nodes.subscribe(), nodes.store.clone(), |n: &Node| {
            (
                n.metadata.labels.clone(),
                n.spec.clone(),
                n.metadata.deletion_timestamp.is_some(),
            )
        }),
        nodes.deleted_objects(),
    );
    let node_to_daemonsets = all_on(placement_changes, daemonsets.store.clone());
    let queue = metrics.queue("daemonset");
    let daemonset_controller = Controller::for_shared_stream(
        queue.objects(daemonsets.subscribe()),
        daemonsets.store.clone(),
    )
    .reconcile_on(queue.refs(owners::<DaemonSet, _, _>(pods.subscribe())))
    .reconcile_on(queue.refs(pods.deleted_owners()))
    .reconcile_on(queue.refs(node_to_daemonsets))
    .graceful_shutdown_on(shutdown.clone().cancelled_owned())
    .run(
        queue.reconciler(daemonset::reconcile),
        error_policy,
        Arc::new(daemonset::Shared {
            context: context.clone(),
            pods: pods.store.clone(),
            nodes: nodes.store.clone(),
            revisions: revisions.store.clone(),
        }),
    )
    .for_each(settled(queue));
    let mut statefulsets = Informer::<StatefulSet>::new();
    let queue = metrics.queue("statefulset");
    let statefulset_controller = Controller::for_shared_stream(
        queue.objects(statefulsets.subscribe()),
        statefulsets.store.clone(),
    )
    .reconcile_on(queue.refs(owners::<StatefulSet, _, _>(pods.subscribe())))
    .reconcile_on(queue.refs(pods.deleted_owners()))
    .graceful_shutdown_on(shutdown.clone().cancelled_owned())
    .run(
        queue.reconciler(statefulset::reconcile),
        error_policy,
        Arc::new(statefulset::Shared {
            context: context.clone(),
            pods: pods.store.clone(),
            revisions: revisions.store.clone(),
        }),
    )
    .for_each(settled(queue));
    let mut claims = Informer::<PersistentVolumeClaim>::new();
    let mut volumes = Informer::<PersistentVolume>::new();
    let mut classes = Informer::<StorageClass>::new();
    let volume_shared = Arc::new(volume::Shared {
        context: context.clone(),
        config: options.volumes.clone(),
        claims: claims.store.clone(),
        volumes: volumes.store.clone(),
        classes: classes.store.clone(),
    });
    let claims_store = claims.store.clone();
    // a volume changing may bind its claim, or free itself for pending ones
    let volume_to_claims = volumes.changes().flat_map(move |volume| {
        futures::stream::iter(volume::claims_of_volume(&volume, &claims_store))
    });
    let volumes_store = volumes.store.clone();
    // a claim changing (or going) changes the phase of its volume
    let claim_to_volumes = claims.changes().flat_map(move |claim| {
        let refs: Vec<ObjectRef<PersistentVolume>> = volumes_store
            .state()
            .iter()
            .filter(|v| {
                let named = claim.spec.as_ref().and_then(|s| s.volume_name.as_deref())
                    == v.metadata.name.as_deref();
                let claimed = v
                    .spec
                    .as_ref()
                    .and_then(|s| s.claim_ref.as_ref())
                    .is_some_and(|r| {
                        r.name.as_deref() == claim.metadata.name.as_deref()
                            && r.namespace == claim.metadata.namespace
                    });
                named || claimed
            })
            .map(|v| ObjectRef::from_obj(&**v))
            .collect();
        futures::stream::iter(refs)
    });
    let queue = metrics.queue("claims");
    let claim_controller =
        Controller::for_shared_stream(queue.objects(claims.subscribe()), claims.store.clone())
            .reconcile_on(queue.refs(volume_to_claims))
            .reconcile_on(queue.refs(all_on(classes.changes(), claims.store.clone())))
            .graceful_shutdown_on(shutdown.clone().cancelled_owned())
            .run(
                queue.reconciler(volume::reconcile_claim),
                error_policy,
                volume_shared.clone(),
            )
            .for_each(settled(queue));
    let queue = metrics.queue("volumes");
    let volume_controller =
        Controller::for_shared_stream(queue.objects(volumes.subscribe()), volumes.store.clone())
            .reconcile_on(queue.refs(claim_to_volumes))
            .graceful_shutdown_on(shutdown.clone().cancelled_owned())
            .run(
                queue.reconciler(volume::reconcile_volume),
                error_policy,
                volume_shared,
            )
            .for_each(settled(queue));
    if options.volumes.directory.is_some() {
        volume::ensure_default_class(&client).await;
    }
    let mut quotas = Informer::<ResourceQuota>::new();
    // Admission charges creations at once; recounts follow what frees usage — a pod finishing
    // or going — and a quota's spec changing, never its status (each charge changes that, and
    // a recount racing a creation would count the charge but not yet the object).
    let freed = futures::stream::select(
        pods.subscribe()
            .filter(|p| futures::future::ready(kelson_common::pod::is_terminal(p))),
        pods.deleted_objects(),
    );
    let pod_to_quotas = in_namespace_of(freed, quotas.store.clone());
    let quota_specs = when_changed(
        quotas.subscribe(),
        quotas.store.clone(),
        |q: &ResourceQuota| serde_json::to_string(&q.spec).unwrap_or_default(),
    );
    let queue = metrics.queue("resourcequota_primary");
    let quota_controller =
        Controller::for_shared_stream(queue.objects(quota_specs), quotas.store.clone())
            .reconcile_on(queue.refs(pod_to_quotas))
            .graceful_shutdown_on(shutdown.clone().cancelled_owned())
            .run(
                queue.reconciler(quota::reconcile),
                error_policy,
                Arc::new(quota::Shared {
                    context: context.clone(),
                }),
            )
            .for_each(settled(queue));
    let mut namespaces = Informer::<Namespace>::new();
    let queue = metrics.queue("serviceaccount");
    let serviceaccount_controller = Controller::for_shared_stream(
        queue.objects(namespaces.subscribe()),
        namespaces.store.clone(),
    )
    .graceful_shutdown_on(shutdown.clone().cancelled_owned())
    .run(
        queue.reconciler(serviceaccount::reconcile),
        error_policy,
        Arc::new(serviceaccount::Shared {
            context: context.clone(),
            root_ca: options.root_ca.clone(),
        }),
    )
    .for_each(settled(queue));
    let queue = metrics.queue("namespace");
    let namespace_controller = Controller::for_shared_stream(
        queue.objects(namespaces.subscribe()),
        namespaces.store.clone(),
    )
    .graceful_shutdown_on(shutdown.clone().cancelled_owned())
    .run(
        queue.reconciler(namespace::reconcile),
        error_policy,
        context.clone(),
    )
    .for_each(settled(queue));
    let collector = gc::run(client.clone(), shutdown.clone());
    let mut leases = Informer::<Lease>::new();
    let node_lifecycle = nodelifecycle::run(
        context.clone(),
        options.node_lifecycle.clone(),
        nodes.store.clone(),
        leases.store.clone(),
        pods.store.clone(),
        shutdown.clone(),
    );

    pods.start(Api::all(client.clone()), &shutdown);
    replicasets.start(Api::all(client.clone()), &shutdown);
    deployments.start(Api::all(client.clone()), &shutdown);
    jobs.start(Api::all(client.clone()), &shutdown);
    cronjobs.start(Api::all(client.clone()), &shutdown);
    autoscalers.start(Api::all(client.clone()), &shutdown);
    services.start(Api::all(client.clone()), &shutdown);
    budgets.start(Api::all(client.clone()), &shutdown);
    nodes.start(Api::all(client.clone()), &shutdown);
    daemonsets.start(Api::all(client.clone()), &shutdown);
    revisions.start(Api::all(client.clone()), &shutdown);
    statefulsets.start(Api::all(client.clone()), &shutdown);
    claims.start(Api::all(client.clone()), &shutdown);
    volumes.start(Api::all(client.clone()), &shutdown);
    classes.start(Api::all(client.clone()), &shutdown);
    quotas.start(Api::all(client.clone()), &shutdown);
    namespaces.start(Api::all(client.clone()), &shutdown);
    leases.start(
        Api::namespaced(client.clone(), "kube-node-lease"),
        &shutdown,
    );
    info!("controllers started");
    futures::join!(
        replicaset_controller,
        deployment_controller,
        job_controller,
        cronjob_controller,
        autoscaler_controller,
        namespace_controller,
        collector,
        node_lifecycle,
        endpoints_controller,
        disruption_controller,
        daemonset_controller,
        statefulset_controller,
        claim_controller,
        volume_controller,
        quota_controller,
        serviceaccount_controller,
    );
    info!("controllers stopped");
}
