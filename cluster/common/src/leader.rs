//! Leader election on a `coordination.k8s.io` Lease, as client-go's leaderelection does, so that
//! of several `kelson server` processes sharing one etcd only one runs each control loop.
//!
//! The holder renews the lease every `retry_period`; a lease not renewed for `lease_duration`
//! can be taken over. The work runs with a token that is cancelled when leadership is lost.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Timing of an election.
#[derive(Clone, Debug)]
pub struct Election {
    /// Lease name, e.g. `kube-scheduler`.
    pub name: String,
    /// Lease namespace, usually `kube-system`.
    pub namespace: String,
    /// This candidate's identity (unique per process).
    pub identity: String,
    /// How long a lease is valid without renewal.
    pub lease_duration: Duration,
    /// How often to try to acquire or renew.
    pub retry_period: Duration,
}

impl Election {
    /// Kubernetes' defaults: 15 s lease, 2 s retry.
    #[must_use]
    pub fn new(name: &str, identity: &str) -> Self {
        Self {
            name: name.to_owned(),
            namespace: "kube-system".to_owned(),
            identity: identity.to_owned(),
            lease_duration: Duration::from_secs(15),
            retry_period: Duration::from_secs(2),
        }
    }
}

fn now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

/// Tries once to hold the lease; true when this candidate holds it afterwards.
async fn try_acquire(api: &Api<Lease>, election: &Election) -> kube::Result<bool> {
    let duration = i32::try_from(election.lease_duration.as_secs()).unwrap_or(15);
    let Some(mut lease) = api.get_opt(&election.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(election.name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(election.identity.clone()),
                lease_duration_seconds: Some(duration),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
        };
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let expired = spec.renew_time.as_ref().is_none_or(|renewed| {
        let age = jiff::Timestamp::now().as_second() - renewed.0.as_second();
        age > i64::from(spec.lease_duration_seconds.unwrap_or(duration))
    });
    if holder != election.identity && !holder.is_empty() && !expired {
        return Ok(false);
    }
    if holder != election.identity {
        spec.holder_identity = Some(election.identity.clone());
        spec.acquire_time = Some(now());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(now());
    spec.lease_duration_seconds = Some(duration);
    // the resourceVersion in `lease` makes this a compare-and-swap
    match api
        .replace(&election.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(error) => Err(error),
    }
}

/// Runs `work` whenever this candidate leads, until `shutdown`. `work` gets a token that is
/// cancelled when leadership is lost; it is started again if leadership returns.
pub async fn run_when_leader<F, Fut>(
    client: kube::Client,
    election: Election,
    shutdown: CancellationToken,
    work: F,
) where
    F: Fn(CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let api: Api<Lease> = Api::namespaced(client, &election.namespace);
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        match try_acquire(&api, &election).await {
            Ok(true) => {}
            Ok(false) => {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(election.retry_period) => continue,
                }
            }
            Err(error) => {
                warn!(lease = %election.name, %error, "leader election failed");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(election.retry_period) => continue,
                }
            }
        }
        info!(lease = %election.name, identity = %election.identity, "became leader");
        let leading = shutdown.child_token();
        let task = tokio::spawn(work(leading.clone()));
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    leading.cancel();
                    let _ = task.await;
                    return;
                }
                () = tokio::time::sleep(election.retry_period) => {}
            }
            match try_acquire(&api, &election).await {
                Ok(true) => last_renewal = tokio::time::Instant::now(),
                Ok(false) => break,
                Err(error) => {
                    warn!(lease = %election.name, %error, "lease renewal failed");
                    // give up before the lease can expire, so two leaders never overlap
                    if last_renewal.elapsed() > election.lease_duration * 2 / 3 {
                        break;
                    }
                }
            }
        }
        warn!(lease = %election.name, "lost leadership");
        leading.cancel();
        let _ = task.await;
    }
}
