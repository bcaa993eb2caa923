//! The etcd backend: Kelson's storage on a real etcd v3 cluster (through `etcd-client`).
//!
//! Keys are used as given (`/registry/<resource>/<namespace>/<name>`, as Kubernetes lays them
//! out), optionally under a prefix. Revisions are etcd's own, so several Kelson API servers on
//! one etcd agree on every `resourceVersion` and all of them see every watch event.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType,
    GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::warn;

use crate::{
    Error, Event, KeyValue, ListRequest, ListResponse, Result, Revision, Storage, WatchMessage,
    WatchStream, prefix_end,
};

/// Options of the etcd backend.
#[derive(Clone, Debug)]
#[must_use]
pub struct EtcdOptions {
    /// Client URLs, for example `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Prepended to every key (empty by default, so keys are exactly `/registry/...`).
    pub key_prefix: String,
    /// Timeout of connecting and of each request.
    pub timeout: Duration,
    /// How often watches ask etcd for a progress notification.
    pub progress_interval: Duration,
}

impl EtcdOptions {
    /// Options for the given endpoints with defaults for everything else.
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            key_prefix: String::new(),
            timeout: Duration::from_secs(10),
            progress_interval: Duration::from_secs(1),
        }
    }
}

/// The etcd storage backend.
#[derive(Clone)]
pub struct Etcd {
    client: Client,
    key_prefix: String,
    progress_interval: Duration,
}

fn map_error(error: etcd_client::Error, requested: Option<Revision>) -> Error {
    let message = error.to_string();
    if message.contains("required revision has been compacted") {
        return Error::Compacted {
            requested: requested.unwrap_or(0),
            compacted: 0,
        };
    }
    if message.contains("required revision is a future revision") {
        return Error::FutureRevision {
            requested: requested.unwrap_or(0),
            current: 0,
        };
    }
    Error::Backend(format!("etcd: {message}"))
}

fn key_string(bytes: &[u8], prefix: &str) -> Result<String> {
    let key = std::str::from_utf8(bytes)
        .map_err(|_| Error::Backend("etcd returned a key that is not utf-8".into()))?;
    Ok(key.strip_prefix(prefix).unwrap_or(key).to_owned())
}

fn to_kv(kv: &etcd_client::KeyValue, prefix: &str) -> Result<KeyValue> {
    Ok(KeyValue {
        key: key_string(kv.key(), prefix)?,
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    })
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<Revision> {
    header
        .map(etcd_client::ResponseHeader::revision)
        .ok_or_else(|| Error::Backend("etcd response without header".into()))
}

impl Etcd {
    /// Connects to etcd and checks that it answers.
    pub async fn connect(options: EtcdOptions) -> Result<Self> {
        let connect = ConnectOptions::new()
            .with_connect_timeout(options.timeout)
            .with_timeout(options.timeout);
        let client = Client::connect(&options.endpoints, Some(connect))
            .await
            .map_err(|e| map_error(e, None))?;
        let etcd = Self {
            client,
            key_prefix: options.key_prefix,
            progress_interval: options.progress_interval,
        };
        etcd.current_revision().await?;
        Ok(etcd)
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.key_prefix)
    }

    /// The current state of `key` after a failed transaction's `get`.
    fn failed_get(&self, ops: Vec<TxnOpResponse>) -> Result<Option<KeyValue>> {
        for op in ops {
            if let TxnOpResponse::Get(get) = op {
                return get
                    .kvs()
                    .first()
                    .map(|kv| to_kv(kv, &self.key_prefix))
                    .transpose();
            }
        }
        Ok(None)
    }
}

#[async_trait]
impl Storage for Etcd {
    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        let full = self.full_key(key);
        let txn = Txn::new()
            .when([Compare::create_revision(full.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(full, value.to_vec(), None)]);
        let response = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(|e| map_error(e, None))?;
        if !response.succeeded() {
            return Err(Error::AlreadyExists {
                key: key.to_owned(),
            });
        }
        let revision = header_revision(response.header())?;
        Ok(KeyValue {
            key: key.to_owned(),
            value,
            create_revision: revision,
            mod_revision: revision,
        })
    }

    async fn get(&self, key: &str) -> Result<(Option<KeyValue>, Revision)> {
        let response = self
            .client
            .kv_client()
            .get(self.full_key(key), None)
            .await
            .map_err(|e| map_error(e, None))?;
        let kv = response
            .kvs()
            .first()
            .map(|kv| to_kv(kv, &self.key_prefix))
            .transpose()?;
        Ok((kv, header_revision(response.header())?))
    }

    async fn list(&self, request: ListRequest) -> Result<ListResponse> {
        let prefix = self.full_key(&request.prefix);
        let from = match &request.start {
            Some(start) if start.as_str() > request.prefix.as_str() => self.full_key(start),
            _ => prefix.clone(),
        };
        let mut options = GetOptions::new().with_range(prefix_end(&prefix));
        if let Some(revision) = request.revision {
            options = options.with_revision(revision);
        }
        if request.limit > 0 {
            options = options.with_limit(request.limit as i64);
        }
        let response = self
            .client
            .kv_client()
            .get(from, Some(options))
            .await
            .map_err(|e| map_error(e, request.revision))?;
        let kvs = response
            .kvs()
            .iter()
            .map(|kv| to_kv(kv, &self.key_prefix))
            .collect::<Result<Vec<_>>>()?;
        let revision = match request.revision {
            Some(revision) => revision,
            None => header_revision(response.header())?,
        };
        Ok(ListResponse {
            kvs,
            revision,
            more: response.more(),
        })
    }

    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<KeyValue> {
        let full = self.full_key(key);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                full.clone(),
                CompareOp::Equal,
                expected,
            )])
            .and_then([TxnOp::put(
                full.clone(),
                value.to_vec(),
                Some(PutOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(full, None)]);
        let response = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(|e| map_error(e, None))?;
        if !response.succeeded() {
            return Err(match self.failed_get(response.op_responses())? {
                None => Error::NotFound {
                    key: key.to_owned(),
                },
                Some(kv) => Error::Conflict {
                    key: key.to_owned(),
                    expected,
                    actual: kv.mod_revision,
                },
            });
        }
        let revision = header_revision(response.header())?;
        let create_revision = response
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                TxnOpResponse::Put(put) => put.prev_key().map(|kv| kv.create_revision()),
                _ => None,
            })
            .unwrap_or(revision);
        Ok(KeyValue {
            key: key.to_owned(),
            value,
            create_revision,
            mod_revision: revision,
        })
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(KeyValue, Revision)> {
        let full = self.full_key(key);
        let precondition = match expected {
            Some(revision) => Compare::mod_revision(full.clone(), CompareOp::Equal, revision),
            None => Compare::create_revision(full.clone(), CompareOp::Greater, 0),
        };
        let txn = Txn::new()
            .when([precondition])
            .and_then([TxnOp::delete(
                full.clone(),
                Some(DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(full, None)]);
        let response = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(|e| map_error(e, None))?;
        if !response.succeeded() {
            return Err(
                match (self.failed_get(response.op_responses())?, expected) {
                    (Some(kv), Some(expected)) => Error::Conflict {
                        key: key.to_owned(),
                        expected,
                        actual: kv.mod_revision,
                    },
                    _ => Error::NotFound {
                        key: key.to_owned(),
                    },
                },
            );
        }
        let revision = header_revision(response.header())?;
        let prev = response
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                TxnOpResponse::Delete(delete) => delete.prev_kvs().first().cloned(),
                _ => None,
            })
            .ok_or_else(|| Error::Backend("etcd delete returned no previous value".into()))?;
        Ok((to_kv(&prev, &self.key_prefix)?, revision))
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(after + 1)
            .with_prev_key()
            .with_progress_notify();
        let (mut requests, mut responses) = self
            .client
            .watch_client()
            .watch(self.full_key(prefix), Some(options))
            .await
            .map_err(|e| map_error(e, Some(after)))?
            .split();
        let (tx, rx) = mpsc::channel(256);
        let key_prefix = self.key_prefix.clone();
        let progress_interval = self.progress_interval;
        tokio::spawn(async move {
            let start = tokio::time::Instant::now() + progress_interval;
            let mut tick = tokio::time::interval_at(start, progress_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut progress = ProgressGate::new(after);
            loop {
                let response = tokio::select! {
                    () = tx.closed() => return,
                    _ = tick.tick(), if progress.synced() => {
                        let _ = requests.request_progress().await;
                        continue;
                    }
                    response = responses.next() => response,
                };
                let messages = match response {
                    None => Err(Error::Backend("etcd closed the watch".into())),
                    Some(Err(error)) => Err(map_error(error, Some(after))),
                    Some(Ok(response)) => convert_watch_response(&response, after, &key_prefix)
                        .map(|messages| progress.filter(&response, messages)),
                };
                match messages {
                    Ok(messages) => {
                        for message in messages {
                            if tx.send(Ok(message)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(error) => {
                        let _ = tx.send(Err(error)).await;
                        return;
                    }
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.client
            .kv_client()
            .compact(revision, Some(CompactionOptions::new().with_physical()))
            .await
            .map_err(|e| map_error(e, Some(revision)))?;
        Ok(())
    }

    async fn current_revision(&self) -> Result<Revision> {
        let response = self
            .client
            .kv_client()
            .get(
                self.full_key("/\0kelson-revision-probe"),
                Some(GetOptions::new().with_count_only()),
            )
            .await
            .map_err(|e| map_error(e, None))?;
        header_revision(response.header())
    }
}

/// Decides when etcd's progress notifications can be trusted.
///
/// etcd 3.4 before 3.4.25 may send a progress notification to a watcher that is still replaying
/// history (etcd issue 15220), which would claim events as delivered that are still to come. So
/// progress is requested and passed on only once the watcher is known to be in sync: it started
/// at the revision that was current when it was created, or it has delivered an event at or
/// after that revision.
struct ProgressGate {
    after: Revision,
    created_at: Option<Revision>,
    synced: bool,
}

impl ProgressGate {
    fn new(after: Revision) -> Self {
        Self {
            after,
            created_at: None,
            synced: false,
        }
    }

    fn synced(&self) -> bool {
        self.synced
    }

    fn filter(
        &mut self,
        response: &etcd_client::WatchResponse,
        messages: Vec<WatchMessage>,
    ) -> Vec<WatchMessage> {
        if response.created() {
            let created_at = response
                .header()
                .map_or(0, etcd_client::ResponseHeader::revision);
            self.created_at = Some(created_at);
            self.synced = self.after >= created_at;
            return messages;
        }
        if let (Some(created_at), Some(last)) = (self.created_at, response.events().last())
            && last.kv().is_some_and(|kv| kv.mod_revision() >= created_at)
        {
            self.synced = true;
        }
        if self.synced {
            return messages;
        }
        messages
            .into_iter()
            .filter(|m| matches!(m, WatchMessage::Event(_)))
            .collect()
    }
}

fn convert_watch_response(
    response: &etcd_client::WatchResponse,
    after: Revision,
    key_prefix: &str,
) -> Result<Vec<WatchMessage>> {
    if response.compact_revision() > 0 {
        return Err(Error::Compacted {
            requested: after,
            compacted: response.compact_revision(),
        });
    }
    if response.canceled() {
        return Err(Error::Backend(format!(
            "etcd canceled the watch: {}",
            response.cancel_reason()
        )));
    }
    if response.created() {
        return Ok(Vec::new());
    }
    if response.events().is_empty() {
        return Ok(vec![WatchMessage::Progress(header_revision(
            response.header(),
        )?)]);
    }
    let mut messages = Vec::with_capacity(response.events().len());
    for event in response.events() {
        let Some(kv) = event.kv() else { continue };
        let kv = to_kv(kv, key_prefix)?;
        let prev = event
            .prev_kv()
            .map(|prev| to_kv(prev, key_prefix))
            .transpose()?;
        let converted = match event.event_type() {
            EventType::Put if kv.create_revision == kv.mod_revision => Event::Created(kv),
            EventType::Put => {
                let prev = prev.unwrap_or_else(|| {
                    warn!(key = %kv.key, "etcd update event without previous value");
                    kv.clone()
                });
                Event::Updated { kv, prev }
            }
            EventType::Delete => {
                let revision = kv.mod_revision;
                let prev = prev.unwrap_or(KeyValue {
                    key: kv.key,
                    value: Bytes::new(),
                    create_revision: 0,
                    mod_revision: 0,
                });
                Event::Deleted { prev, revision }
            }
        };
        messages.push(WatchMessage::Event(converted));
    }
    Ok(messages)
}
