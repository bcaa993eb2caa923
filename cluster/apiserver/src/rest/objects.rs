//! Objects in storage: keys, encoding, resourceVersion, and read-modify-write with retries.
//!
//! Objects are stored as JSON without `metadata.resourceVersion`; reads set it from the storage
//! revision, so the revision is the single source of truth (as in Kubernetes' etcd3 store).

use std::sync::Arc;

use bytes::Bytes;
use kelson_storage::{KeyValue, ListRequest, Revision, Storage};
use serde_json::Value;

use crate::error::{ApiError, ApiResult};
use crate::meta;
use crate::registry::ResourceType;

/// Storage access for API objects.
#[derive(Clone)]
pub struct Objects {
    storage: Arc<dyn Storage>,
}

/// A page of a list.
pub struct Page {
    /// Matching objects in key order.
    pub items: Vec<Value>,
    /// The snapshot revision.
    pub revision: Revision,
    /// The key to continue from, when more keys remain.
    pub next_key: Option<String>,
}

impl Objects {
    /// Wraps a storage backend.
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        Self { storage }
    }

    /// The underlying storage.
    #[must_use]
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// Decodes a stored object and sets its resourceVersion.
    ///
    /// # Errors
    /// When the stored bytes are not a JSON object (500).
    pub fn decode(kv: &KeyValue) -> ApiResult<Value> {
        Self::decode_at(&kv.value, kv.mod_revision)
    }

    /// Decodes stored bytes and sets the given resourceVersion.
    ///
    /// # Errors
    /// When the stored bytes are not a JSON object (500).
    pub fn decode_at(bytes: &[u8], revision: Revision) -> ApiResult<Value> {
        let mut object: Value = serde_json::from_slice(bytes)
            .map_err(|e| ApiError::internal(format!("stored object does not decode: {e}")))?;
        meta::set_resource_version(&mut object, revision);
        Ok(object)
    }

    fn encode(object: &mut Value) -> Bytes {
        let removed = meta::meta_mut(object).remove("resourceVersion");
        let bytes = serde_json::to_vec(object).expect("json values serialize");
        if let Some(removed) = removed {
            meta::meta_mut(object).insert("resourceVersion".into(), removed);
        }
        Bytes::from(bytes)
    }

    /// Reads one object.
    ///
    /// # Errors
    /// 404 when absent.
    pub async fn get(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
    ) -> ApiResult<Value> {
        self.try_get(rt, namespace, name)
            .await?
            .ok_or_else(|| ApiError::not_found(rt, name))
    }

    /// Reads one object, `None` when absent.
    ///
    /// # Errors
    /// On storage failure.
    pub async fn try_get(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
    ) -> ApiResult<Option<Value>> {
        let (kv, _) = self.storage.get(&rt.key(namespace, name)).await?;
        kv.as_ref().map(Self::decode).transpose()
    }

    /// Stores a new object; returns it with its resourceVersion.
    ///
    /// # Errors
    /// 409 AlreadyExists.
    pub async fn create(&self, rt: &ResourceType, mut object: Value) -> ApiResult<Value> {
        let name = meta::name(&object).to_owned();
        let key = rt.key(meta::namespace(&object), &name);
        let bytes = Self::encode(&mut object);
        match self.storage.create(&key, bytes).await {
            Ok(kv) => {
                meta::set_resource_version(&mut object, kv.mod_revision);
                Ok(object)
            }
            Err(kelson_storage::Error::AlreadyExists { .. }) => {
                Err(ApiError::already_exists(rt, &name))
            }
            Err(other) => Err(other.into()),
        }
    }

    /// Replaces an object if it is still at `expected`.
    ///
    /// # Errors
    /// 409 Conflict when it changed, 404 when it is gone.
    pub async fn update(
        &self,
        rt: &ResourceType,
        mut object: Value,
        expected: Revision,
    ) -> ApiResult<Value> {
        let name = meta::name(&object).to_owned();
        let key = rt.key(meta::namespace(&object), &name);
        let bytes = Self::encode(&mut object);
        match self.storage.update(&key, bytes, expected).await {
            Ok(kv) => {
                meta::set_resource_version(&mut object, kv.mod_revision);
                Ok(object)
            }
            Err(kelson_storage::Error::Conflict { .. }) => Err(ApiError::conflict(rt, &name)),
            Err(kelson_storage::Error::NotFound { .. }) => Err(ApiError::not_found(rt, &name)),
            Err(other) => Err(other.into()),
        }
    }

    /// Deletes an object if it is still at `expected`; returns its last state with the
    /// resourceVersion of the delete.
    ///
    /// # Errors
    /// 409 Conflict when it changed, 404 when it is gone.
    pub async fn delete(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        expected: Option<Revision>,
    ) -> ApiResult<Value> {
        match self
            .storage
            .delete(&rt.key(namespace, name), expected)
            .await
        {
            Ok((prev, revision)) => Self::decode_at(&prev.value, revision),
            Err(kelson_storage::Error::Conflict { .. }) => Err(ApiError::conflict(rt, name)),
            Err(kelson_storage::Error::NotFound { .. }) => Err(ApiError::not_found(rt, name)),
            Err(other) => Err(other.into()),
        }
    }

    /// Reads a page of keys under `prefix`, from `start`, at `revision`; objects are filtered
    /// by `keep` and storage is read in batches until `limit` objects are kept or keys run out.
    ///
    /// # Errors
    /// 410 when the revision was compacted.
    pub async fn list(
        &self,
        prefix: &str,
        start: Option<String>,
        revision: Option<Revision>,
        limit: usize,
        mut keep: impl FnMut(&Value) -> bool,
    ) -> ApiResult<Page> {
        let mut items = Vec::new();
        let mut start = start;
        let mut revision = revision;
        loop {
            // with filters, read ahead in batches of up to 500 instead of exactly what is missing
            let batch = if limit == 0 {
                0
            } else {
                (limit - items.len()).max(limit.min(500))
            };
            let response = self
                .storage
                .list(ListRequest {
                    prefix: prefix.to_owned(),
                    start: start.clone(),
                    revision,
                    limit: batch,
                })
                .await?;
            revision = Some(response.revision);
            let last_key = response.kvs.last().map(|kv| kv.key.clone());
            let mut kvs = response.kvs.into_iter();
            for kv in kvs.by_ref() {
                let object = Self::decode(&kv)?;
                if keep(&object) {
                    items.push(object);
                    if limit != 0 && items.len() == limit {
                        let more = kvs.len() > 0 || response.more;
                        let next_key = more.then(|| format!("{}\0", kv.key));
                        return Ok(Page {
                            items,
                            revision: response.revision,
                            next_key,
                        });
                    }
                }
            }
            if !response.more {
                return Ok(Page {
                    items,
                    revision: response.revision,
                    next_key: None,
                });
            }
            start = last_key.map(|k| format!("{k}\0"));
        }
    }
}
