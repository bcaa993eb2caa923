//! What every controller shares: the client, event recording, expectations, and the error type.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kelson_common::events::{Recorder, Reporter};
use parking_lot::Mutex;

/// Errors of a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("{action} failed: {source}")]
    Api {
        /// What was attempted.
        action: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// An object is missing a field the controller needs.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// Wraps an API error with what was attempted.
    pub fn api(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let action = action.into();
        move |source| Error::Api { action, source }
    }

    /// Label for metrics.
    #[must_use]
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Api { .. } => "api",
            Error::Invalid(_) => "invalid",
        }
    }
}

/// The result type of reconciles.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shared state of the controller manager.
pub struct Context {
    /// The API client.
    pub client: kube::Client,
    recorder: Recorder,
    /// Pods (or other children) a controller created or deleted but has not yet seen in its
    /// cache, so that it does not act twice on a stale cache (Kubernetes' expectations).
    pub expectations: Expectations,
}

impl Context {
    /// A context for `client`.
    #[must_use]
    pub fn new(client: kube::Client) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "kelson-controller-manager".into(),
                instance: None,
            },
        );
        Self {
            client,
            recorder,
            expectations: Expectations::default(),
        }
    }

    /// Records an event about `object` (failures are logged, never fatal).
    pub async fn event(&self, object: &ObjectReference, warning: bool, reason: &str, note: String) {
        kelson_common::events::publish(&self.recorder, object, warning, reason, note).await;
    }
}

/// The objects of `store` in `namespace` whose controller is the object with `uid`.
pub fn owned_by<K>(
    store: &kube::runtime::reflector::Store<K>,
    namespace: Option<&str>,
    uid: &str,
) -> Vec<std::sync::Arc<K>>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store
        .state()
        .into_iter()
        .filter(|o| o.meta().namespace.as_deref() == namespace)
        .filter(|o| kelson_common::pod::controller_of(o.meta()).is_some_and(|c| c.uid == uid))
        .collect()
}

/// Deletes pods by name, 64 at a time; pods already gone count as deleted.
///
/// # Errors
/// The first deletion that failed otherwise.
pub async fn delete_pods(
    api: &kube::Api<k8s_openapi::api::core::v1::Pod>,
    names: Vec<String>,
) -> Result<()> {
    use futures::{StreamExt, TryStreamExt};
    futures::stream::iter(names)
        .map(|name| {
            let api = api.clone();
            async move {
                match api.delete(&name, &kube::api::DeleteParams::default()).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
                    Err(error) => Err(Error::Api {
                        action: format!("delete pod {name}"),
                        source: error,
                    }),
                }
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<()>>()
        .await
        .map(|_| ())
}

/// Outstanding creations and deletions per owner.
#[derive(Default)]
pub struct Expectations {
    pending: Mutex<HashMap<String, Pending>>,
}

struct Pending {
    created: HashSet<String>,
    deleted: HashSet<String>,
    since: Instant,
}

/// How long expectations are trusted before the controller acts anyway.
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(10);

impl Expectations {
    /// Records that `owner` created children with these names and deleted these uids.
    pub fn expect(
        &self,
        owner: &str,
        created: impl IntoIterator<Item = String>,
        deleted: impl IntoIterator<Item = String>,
    ) {
        let mut pending = self.pending.lock();
        let entry = pending.entry(owner.to_owned()).or_insert_with(|| Pending {
            created: HashSet::new(),
            deleted: HashSet::new(),
            since: Instant::now(),
        });
        entry.created.extend(created);
        entry.deleted.extend(deleted);
        entry.since = Instant::now();
    }

    /// Whether the cache has caught up with what `owner` did: every created name is present
    /// and every deleted uid gone (or the expectations timed out).
    pub fn satisfied(
        &self,
        owner: &str,
        present_names: &HashSet<String>,
        present_uids: &HashSet<String>,
    ) -> bool {
        let mut pending = self.pending.lock();
        let Some(entry) = pending.get_mut(owner) else {
            return true;
        };
        entry.created.retain(|name| !present_names.contains(name));
        entry.deleted.retain(|uid| present_uids.contains(uid));
        let done = entry.created.is_empty() && entry.deleted.is_empty();
        if done || entry.since.elapsed() > EXPECTATION_TIMEOUT {
            pending.remove(owner);
            return true;
        }
        false
    }

    /// Forgets an owner (deleted).
    pub fn forget(&self, owner: &str) {
        self.pending.lock().remove(owner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_wait_for_the_cache() {
        let expectations = Expectations::default();
        expectations.expect("rs", ["a".to_owned(), "b".to_owned()], ["uid-1".to_owned()]);
        let names: HashSet<String> = ["a".to_owned()].into();
        let uids: HashSet<String> = ["uid-1".to_owned()].into();
        assert!(!expectations.satisfied("rs", &names, &uids));
        let names: HashSet<String> = ["a".to_owned(), "b".to_owned()].into();
        assert!(
            !expectations.satisfied("rs", &names, &uids),
            "the deleted pod is still cached"
        );
        assert!(expectations.satisfied("rs", &names, &HashSet::new()));
        assert!(expectations.satisfied("other", &HashSet::new(), &HashSet::new()));
    }
}
