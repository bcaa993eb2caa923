//! Objects in storage: keys, encoding, resourceVersion, and read-modify-write with retries.
//!
//! Objects are stored as JSON without `metadata.resourceVersion`; reads set it from the storage
//! revision, so the revision is the single source of truth (as in Kubernetes' etcd3 store).

use std::sync::Arc;

use bytes::Bytes;
use kelson_storage::{KeyValue, ListRequest, Revision, Storage};
use serde::ser::SerializeMap;
use serde_json::Value;

use crate::error::{ApiError, ApiResult};
use crate::meta;
use crate::registry::ResourceType;

/// Storage access for API objects.
#[derive(Clone)]
pub struct Objects {
    storage: Arc<dyn Storage>,
}

/// A page of a list of anything derived from stored objects.
pub struct PageOf<T> {
    /// Selected items in key order.
    pub items: Vec<T>,
    /// The snapshot revision.
    pub revision: Revision,
    /// The key to continue from, when more keys remain.
    pub next_key: Option<String>,
}

/// A page of a list of objects.
pub type Page = PageOf<Value>;

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
    pub fn decode(rt: &ResourceType, kv: &KeyValue) -> ApiResult<Value> {
        Self::decode_at(rt, &kv.value, kv.mod_revision)
    }

    /// Decodes stored bytes and sets the given resourceVersion.
    ///
    /// # Errors
    /// When the stored bytes are not a JSON object (500).
    pub fn decode_at(rt: &ResourceType, bytes: &[u8], revision: Revision) -> ApiResult<Value> {
        let mut object: Value = serde_json::from_slice(bytes)
            .map_err(|e| ApiError::internal(format!("stored object does not decode: {e}")))?;
        meta::set_resource_version(&mut object, revision);
        Ok(crate::convert::from_storage(rt, object))
    }

    /// The stored form: `apiVersion`, `kind` and `metadata` (without `resourceVersion`) first,
    /// then the other fields, so that [`Objects::response_bytes`] can add the resourceVersion
    /// without parsing.
    fn encode(object: &Value) -> Bytes {
        let Some(map) = object.as_object() else {
            return Bytes::from(serde_json::to_vec(object).expect("json values serialize"));
        };
        let mut ordered: Vec<(&str, &Value)> = Vec::with_capacity(map.len());
        for key in ["apiVersion", "kind"] {
            if let Some(value) = map.get(key) {
                ordered.push((key, value));
            }
        }
        let metadata = match map.get("metadata") {
            Some(Value::Object(metadata)) => Some(metadata),
            _ => None,
        };
        let rest = map
            .iter()
            .filter(|(key, _)| !matches!(key.as_str(), "apiVersion" | "kind" | "metadata"));
        let mut out = Vec::with_capacity(1024);
        let mut writer = serde_json::Serializer::new(&mut out);
        let mut fields = serde::Serializer::serialize_map(&mut writer, None).expect("serializes");
        for (key, value) in ordered {
            SerializeMap::serialize_entry(&mut fields, key, value).expect("serializes");
        }
        if let Some(metadata) = metadata {
            // without the resourceVersion, which the revision holds
            let kept = WithoutResourceVersion(metadata);
            SerializeMap::serialize_entry(&mut fields, "metadata", &kept).expect("serializes");
        }
        for (key, value) in rest {
            SerializeMap::serialize_entry(&mut fields, key, value).expect("serializes");
        }
        SerializeMap::end(fields).expect("serializes");
        Bytes::from(out)
    }

    /// The stored bytes of `object` as `rt` stores it (converted where `rt` serves another form).
    fn encode_for(rt: &ResourceType, object: &Value) -> Bytes {
        if crate::convert::converts(rt) {
            Self::encode(&crate::convert::to_storage(rt, object.clone()))
        } else {
            Self::encode(object)
        }
    }

    /// The prefix every object of `rt` stored by [`Objects::encode`] starts with.
    #[must_use]
    pub fn stored_prefix(rt: &ResourceType) -> String {
        format!(
            r#"{{"apiVersion":"{}","kind":"{}","metadata":{{"#,
            rt.api_version(),
            rt.kind
        )
    }

    /// An object as a client receives it (with `kind`, `apiVersion` and `resourceVersion`),
    /// spliced from the stored bytes without parsing when they have the stored layout.
    ///
    /// # Errors
    /// When the stored bytes do not decode (500).
    pub fn response_bytes(
        rt: &ResourceType,
        prefix: &str,
        stored: &[u8],
        revision: Revision,
    ) -> ApiResult<Bytes> {
        if let Some(rest) = stored.strip_prefix(prefix.as_bytes())
            && !rest.is_empty()
        {
            let mut out = Vec::with_capacity(stored.len() + 32);
            out.extend_from_slice(prefix.as_bytes());
            out.extend_from_slice(b"\"resourceVersion\":\"");
            out.extend_from_slice(revision.to_string().as_bytes());
            out.push(b'"');
            if rest[0] != b'}' {
                out.push(b',');
            }
            out.extend_from_slice(rest);
            return Ok(Bytes::from(out));
        }
        let object = crate::rest::read::with_type(rt, Self::decode_at(rt, stored, revision)?);
        Ok(Bytes::from(
            serde_json::to_vec(&object).expect("json values serialize"),
        ))
    }

    /// An object's metadata as a `meta.k8s.io/v1` `PartialObjectMetadata` (what a client asking
    /// for `as=PartialObjectMetadata` receives): only the stored metadata is scanned, nothing
    /// else of the object is parsed.
    ///
    /// # Errors
    /// When the stored bytes do not decode (500).
    pub fn metadata_bytes(
        rt: &ResourceType,
        prefix: &str,
        stored: &[u8],
        revision: Revision,
    ) -> ApiResult<Bytes> {
        const HEAD: &[u8] = br#"{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1","metadata":{"resourceVersion":""#;
        // the stored layout puts metadata (without resourceVersion) right after the prefix
        let metadata = match stored.strip_prefix(&prefix.as_bytes()[..prefix.len() - 1]) {
            Some(rest) => {
                let mut reader = serde_json::Deserializer::from_slice(rest);
                <&serde_json::value::RawValue as serde::Deserialize>::deserialize(&mut reader)
                    .ok()
                    .map(|raw| raw.get().as_bytes().to_vec())
            }
            None => None,
        };
        let Some(metadata) = metadata else {
            // not in the stored layout: decoded whole
            let object = Self::decode_at(rt, stored, revision)?;
            let partial = crate::rest::read::partial_metadata(&object);
            return Ok(Bytes::from(
                serde_json::to_vec(&partial).expect("json values serialize"),
            ));
        };
        let rest = metadata
            .strip_prefix(b"{")
            .map(<[u8]>::trim_ascii_start)
            .unwrap_or(b"}");
        let mut out = Vec::with_capacity(HEAD.len() + metadata.len() + 24);
        out.extend_from_slice(HEAD);
        out.extend_from_slice(revision.to_string().as_bytes());
        out.push(b'"');
        if rest.first() != Some(&b'}') {
            out.push(b',');
        }
        out.extend_from_slice(rest);
        out.push(b'}');
        Ok(Bytes::from(out))
    }

    /// Keys and values of a prefix, unfiltered, for responses that need no decoding.
    ///
    /// # Errors
    /// 410 when the revision was compacted.
    pub async fn list_raw(
        &self,
        prefix: &str,
        start: Option<String>,
        revision: Option<Revision>,
        limit: usize,
    ) -> ApiResult<(Vec<KeyValue>, Revision, Option<String>)> {
        let response = self
            .storage
            .list(ListRequest {
                prefix: prefix.to_owned(),
                start,
                revision,
                limit,
            })
            .await?;
        let next_key = response
            .more
            .then(|| response.kvs.last().map(|kv| format!("{}\0", kv.key)))
            .flatten();
        Ok((response.kvs, response.revision, next_key))
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
        kv.as_ref().map(|kv| Self::decode(rt, kv)).transpose()
    }

    /// Stores a new object; returns it with its resourceVersion.
    ///
    /// # Errors
    /// 409 AlreadyExists.
    pub async fn create(&self, rt: &ResourceType, mut object: Value) -> ApiResult<Value> {
        let name = meta::name(&object).to_owned();
        let key = rt.key(meta::namespace(&object), &name);
        let bytes = Self::encode_for(rt, &object);
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
        let bytes = Self::encode_for(rt, &object);
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
            Ok((prev, revision)) => Self::decode_at(rt, &prev.value, revision),
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
        rt: &ResourceType,
        prefix: &str,
        start: Option<String>,
        revision: Option<Revision>,
        limit: usize,
        mut keep: impl FnMut(&Value) -> bool,
    ) -> ApiResult<Page> {
        self.list_with(prefix, start, revision, limit, |kv| {
            let object = Self::decode(rt, &kv)?;
            Ok(keep(&object).then_some(object))
        })
        .await
    }

    /// Like [`Objects::list`], but `select` turns each stored object into what the caller keeps
    /// (or `None` to skip it), so that callers holding many objects need not keep them parsed.
    ///
    /// # Errors
    /// 410 when the revision was compacted; whatever `select` fails with.
    pub async fn list_with<T>(
        &self,
        prefix: &str,
        start: Option<String>,
        revision: Option<Revision>,
        limit: usize,
        mut select: impl FnMut(KeyValue) -> ApiResult<Option<T>>,
    ) -> ApiResult<PageOf<T>> {
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
            let request = ListRequest {
                prefix: prefix.to_owned(),
                start: start.clone(),
                revision,
                limit: batch,
            };
            let response = self.storage.list(request).await?;
            revision = Some(response.revision);
            let last_key = response.kvs.last().map(|kv| kv.key.clone());
            let mut kvs = response.kvs.into_iter();
            while let Some(kv) = kvs.next() {
                let key = kv.key.clone();
                if let Some(item) = select(kv)? {
                    items.push(item);
                    if limit != 0 && items.len() == limit {
                        let more = kvs.len() > 0 || response.more;
                        let next_key = more.then(|| format!("{key}\0"));
                        return Ok(PageOf {
                            items,
                            revision: response.revision,
                            next_key,
                        });
                    }
                }
            }
            if !response.more {
                return Ok(PageOf {
                    items,
                    revision: response.revision,
                    next_key: None,
                });
            }
            start = last_key.map(|k| format!("{k}\0"));
        }
    }
}

/// Metadata serialized without its `resourceVersion`.
struct WithoutResourceVersion<'a>(&'a serde_json::Map<String, Value>);

impl serde::Serialize for WithoutResourceVersion<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().filter(|(key, _)| *key != "resourceVersion"))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn configmaps() -> ResourceType {
        crate::kinds::builtin_types()
            .into_iter()
            .find(|t| t.kind == "ConfigMap")
            .unwrap()
    }

    #[test]
    fn spliced_responses_equal_decoded_ones() {
        let rt = configmaps();
        let prefix = Objects::stored_prefix(&rt);
        for object in [
            json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "1"}, "metadata": {"name": "x", "namespace": "d", "resourceVersion": "3", "annotations": {"resourceVersion": "trap"}}}),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}),
        ] {
            let stored = Objects::encode(&object);
            assert!(
                stored.starts_with(prefix.as_bytes()),
                "{}",
                String::from_utf8_lossy(&stored)
            );
            let spliced = Objects::response_bytes(&rt, &prefix, &stored, 42).unwrap();
            let spliced: Value = serde_json::from_slice(&spliced).unwrap();
            let decoded =
                crate::rest::read::with_type(&rt, Objects::decode_at(&rt, &stored, 42).unwrap());
            assert_eq!(spliced, decoded);
            assert_eq!(spliced["metadata"]["resourceVersion"], "42");
            // metadata alone, spliced from the stored layout or decoded from any other
            for bytes in [stored.to_vec(), serde_json::to_vec(&object).unwrap()] {
                let partial = Objects::metadata_bytes(&rt, &prefix, &bytes, 42).unwrap();
                let partial: Value = serde_json::from_slice(&partial).unwrap();
                let expected = crate::rest::read::partial_metadata(
                    &Objects::decode_at(&rt, &bytes, 42).unwrap(),
                );
                assert_eq!(partial, expected, "{}", String::from_utf8_lossy(&bytes));
            }
        }
    }

    #[test]
    fn objects_stored_in_another_layout_still_read() {
        let rt = configmaps();
        let foreign =
            br#"{"data":{"a":"1"},"metadata":{"name":"x"},"kind":"ConfigMap","apiVersion":"v1"}"#;
        let response =
            Objects::response_bytes(&rt, &Objects::stored_prefix(&rt), foreign, 7).unwrap();
        let value: Value = serde_json::from_slice(&response).unwrap();
        assert_eq!(value["metadata"]["resourceVersion"], "7");
        assert_eq!(value["data"]["a"], "1");
    }
}
