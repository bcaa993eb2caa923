//! Reads: get, list (selectors, pagination, resourceVersion semantics), watch (newline-delimited
//! JSON events, bookmarks, 410 for compacted revisions) and their `Table` renderings.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use base64::Engine;
use futures::StreamExt;
use http::StatusCode;
use kelson_storage::{Event, Revision, WatchMessage};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::ApiServer;
use crate::error::{ApiError, ApiResult};
use crate::kinds::{fields, table};
use crate::meta;
use crate::registry::ResourceType;
use crate::rest::objects::Objects;
use crate::rest::{Query, Req, json_response};
use crate::selectors::{FieldSelector, LabelSelector};

/// Label and field selectors of a list or watch.
pub struct Filter {
    labels: LabelSelector,
    fields: FieldSelector,
    group: String,
    kind: String,
    /// What matching reads of an object.
    reads: Reads,
    /// The kind is served in another form than stored, so objects are decoded whole.
    converts: bool,
}

impl Filter {
    /// Parses `labelSelector` and `fieldSelector`, refusing fields the kind cannot select on.
    ///
    /// # Errors
    /// 400 with the parse problem.
    pub fn from_query(rt: &ResourceType, query: &Query) -> ApiResult<Self> {
        let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
        let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or(""))
            .map_err(ApiError::bad_request)?;
        for requirement in &fields.0 {
            let supported = rt.custom
                && matches!(
                    requirement.field.as_str(),
                    "metadata.name" | "metadata.namespace"
                )
                || fields::field_value(&rt.group, &rt.kind, &Value::Null, &requirement.field)
                    .is_some();
            if !supported {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {}",
                    requirement.field
                )));
            }
        }
        let mut reads = Reads::default();
        for pointer in ["/metadata/name", "/metadata/namespace", "/metadata/labels"] {
            reads.add(pointer);
        }
        for requirement in &fields.0 {
            if let Some(pointer) = fields::field_pointer(&rt.group, &rt.kind, &requirement.field) {
                reads.add(pointer);
            }
        }
        Ok(Self {
            labels,
            fields,
            group: rt.group.clone(),
            kind: rt.kind.clone(),
            reads,
            converts: crate::convert::converts(rt),
        })
    }

    /// What of a stored object matching reads (labels, name, namespace, selected fields),
    /// decoded alone: the rest is scanned but not built, so matching a large object is cheap.
    ///
    /// # Errors
    /// When the stored bytes are not JSON (500).
    pub fn view(&self, stored: &[u8]) -> ApiResult<Value> {
        if self.converts {
            let object: Value = serde_json::from_slice(stored)
                .map_err(|e| ApiError::internal(format!("stored object does not decode: {e}")))?;
            return Ok(crate::convert::from_storage_of(
                &self.group,
                &self.kind,
                object,
            ));
        }
        let mut reader = serde_json::Deserializer::from_slice(stored);
        serde::de::DeserializeSeed::deserialize(Project(&self.reads), &mut reader)
            .map_err(|e| ApiError::internal(format!("stored object does not decode: {e}")))
    }

    /// Whether a stored object passes.
    ///
    /// # Errors
    /// When the stored bytes are not JSON (500).
    pub fn matches_stored(&self, stored: &[u8]) -> ApiResult<bool> {
        if self.is_empty() {
            return Ok(true);
        }
        Ok(self.matches(&self.view(stored)?))
    }

    /// Whether the filter selects everything.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.0.is_empty()
    }

    /// Whether an object passes.
    #[must_use]
    pub fn matches(&self, object: &Value) -> bool {
        self.labels.matches(&meta::labels(object))
            && self
                .fields
                .matches(|field| fields::field_value(&self.group, &self.kind, object, field))
    }
}

/// The parts of objects something reads: a tree of keys whose marked nodes are kept whole.
#[derive(Default)]
struct Reads {
    children: BTreeMap<String, Reads>,
    whole: bool,
}

impl Reads {
    fn add(&mut self, pointer: &str) {
        let mut node = self;
        for segment in pointer.trim_start_matches('/').split('/') {
            node = node.children.entry(segment.to_owned()).or_default();
        }
        node.whole = true;
    }
}

/// Decodes only what a [`Reads`] names; everything else is skipped without being built.
struct Project<'a>(&'a Reads);

impl<'de> serde::de::DeserializeSeed<'de> for Project<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        if self.0.whole {
            return <Value as serde::Deserialize>::deserialize(deserializer);
        }
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Project<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(wanted) = map.next_key_seed(Wanted(self.0))? {
            match wanted {
                Some((key, child)) => {
                    out.insert(key, map.next_value_seed(Project(child))?);
                }
                None => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
}

/// A map key, with the part of [`Reads`] below it when it is read.
struct Wanted<'a>(&'a Reads);

impl<'de, 'a> serde::de::DeserializeSeed<'de> for Wanted<'a> {
    type Value = Option<(String, &'a Reads)>;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de, 'a> serde::de::Visitor<'de> for Wanted<'a> {
    type Value = Option<(String, &'a Reads)>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a map key")
    }

    fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self
            .0
            .children
            .get(key)
            .map(|child| (key.to_owned(), child)))
    }
}

/// Reads one object (or its status).
///
/// # Errors
/// 404 when absent.
pub async fn get(
    server: &Arc<ApiServer>,
    rt: &ResourceType,
    namespace: Option<&str>,
    name: &str,
    req: Req,
) -> ApiResult<Response> {
    let (kv, _) = server
        .objects
        .storage()
        .get(&rt.key(namespace, name))
        .await?;
    let kv = kv.ok_or_else(|| ApiError::not_found(rt, name))?;
    if req.wants_table() {
        let object = Objects::decode(rt, &kv)?;
        let include = req.query.get("includeObject").unwrap_or("Metadata");
        let table = to_table(
            rt,
            &[object],
            &kv.mod_revision.to_string(),
            None,
            include,
            true,
        );
        return Ok(json_response(StatusCode::OK, &table));
    }
    let prefix = Objects::stored_prefix(rt);
    let bytes = if req.wants_metadata() {
        Objects::metadata_bytes(rt, &prefix, &kv.value, kv.mod_revision)?
    } else {
        Objects::response_bytes(rt, &prefix, &kv.value, kv.mod_revision)?
    };
    Ok(raw_json(bytes))
}

/// A JSON response from ready bytes.
fn raw_json(bytes: bytes::Bytes) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(bytes))
        .expect("valid response")
}

/// Sets `kind` and `apiVersion` on an object read from storage.
#[must_use]
pub fn with_type(rt: &ResourceType, mut object: Value) -> Value {
    if let Some(map) = object.as_object_mut() {
        map.insert("kind".into(), json!(rt.kind));
        map.insert("apiVersion".into(), json!(rt.api_version()));
    }
    object
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    v: String,
    rv: Revision,
    start: String,
}

fn encode_continue(revision: Revision, start_relative: &str) -> String {
    let token = ContinueToken {
        v: "meta.k8s.io/v1".into(),
        rv: revision,
        start: start_relative.to_owned(),
    };
    base64::engine::general_purpose::URL_SAFE
        .encode(serde_json::to_vec(&token).expect("token serializes"))
}

fn decode_continue(token: &str) -> ApiResult<ContinueToken> {
    let bad = || ApiError::bad_request(format!("continue key is not valid: {token:?}"));
    let bytes = base64::engine::general_purpose::URL_SAFE
        .decode(token)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token))
        .map_err(|_| bad())?;
    let token: ContinueToken = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if token.v != "meta.k8s.io/v1" || token.start.contains("..") {
        return Err(bad());
    }
    Ok(token)
}

/// Waits (briefly) until storage has reached `revision`, for `resourceVersion=N` reads.
async fn wait_for_revision(objects: &Objects, revision: Revision) -> ApiResult<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let current = objects.storage().current_revision().await?;
        if current >= revision {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(ApiError::timeout(format!(
                "Too large resource version: {revision}, current: {current}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Lists objects.
///
/// # Errors
/// 400 for bad parameters, 410 for an expired continue token.
pub async fn list(
    server: &Arc<ApiServer>,
    rt: &ResourceType,
    namespace: Option<&str>,
    req: Req,
) -> ApiResult<Response> {
    let filter = Filter::from_query(rt, &req.query)?;
    let limit = usize::try_from(req.query.int("limit")?.unwrap_or(0).max(0)).unwrap_or(0);
    let prefix = rt.list_prefix(namespace);
    let resource_version = req.query.get("resourceVersion").filter(|v| !v.is_empty());
    let (start, revision) = match req.query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            if resource_version.is_some_and(|v| v != "0") {
                return Err(ApiError::bad_request(
                    "specifying resource version is not allowed when using continue",
                ));
            }
            let token = decode_continue(token)?;
            (Some(format!("{prefix}{}", token.start)), Some(token.rv))
        }
        None => {
            let requested = resource_version
                .filter(|v| *v != "0")
                .map(|v| {
                    v.parse::<Revision>().map_err(|_| {
                        ApiError::bad_request(format!("invalid resourceVersion: {v:?}"))
                    })
                })
                .transpose()?;
            match (requested, req.query.get("resourceVersionMatch")) {
                (Some(revision), Some("Exact")) => (None, Some(revision)),
                (None, Some("Exact")) => {
                    return Err(ApiError::bad_request(
                        "resourceVersionMatch=Exact requires a resourceVersion",
                    ));
                }
                (Some(revision), _) => {
                    wait_for_revision(&server.objects, revision).await?;
                    (None, None)
                }
                (None, _) => (None, None),
            }
        }
    };
    let metadata_only = req.wants_metadata();
    if filter.is_empty() && !req.wants_table() {
        return list_unfiltered(
            server,
            rt,
            &prefix,
            start,
            revision,
            limit,
            req.query.get("continue").is_some(),
            metadata_only,
        )
        .await;
    }
    let had_continue = req.query.get("continue").is_some();
    if req.wants_table() {
        // rows are rendered as objects are read, so only the rows stay in memory
        let include = req
            .query
            .get("includeObject")
            .unwrap_or("Metadata")
            .to_owned();
        let page = server
            .objects
            .list_with(&prefix, start, revision, limit, |kv| {
                let object = Objects::decode(rt, &kv)?;
                Ok(filter
                    .matches(&object)
                    .then(|| table_row(rt, &object, &include)))
            })
            .await
            .map_err(|e| expired_continue(e, had_continue))?;
        let continue_token = page.next_key.as_deref().map(|key| {
            encode_continue(
                page.revision,
                key.strip_prefix(prefix.as_str()).unwrap_or(key),
            )
        });
        let table = table_of(
            rt,
            page.items,
            &page.revision.to_string(),
            continue_token.as_deref(),
            true,
        );
        return Ok(json_response(StatusCode::OK, &table));
    }
    // filtered: only what matching reads is parsed, and the response is spliced from the
    // stored bytes
    let page = server
        .objects
        .list_with(&prefix, start, revision, limit, |kv| {
            Ok(filter.matches_stored(&kv.value)?.then_some(kv))
        })
        .await
        .map_err(|e| expired_continue(e, had_continue))?;
    Ok(raw_json(list_body(
        rt,
        &prefix,
        page.items,
        page.revision,
        page.next_key,
        metadata_only,
    )?))
}

fn expired_continue(error: ApiError, had_continue: bool) -> ApiError {
    if error.code == 410 && had_continue {
        ApiError::expired(
            "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
        )
    } else {
        error
    }
}

/// A list with no selectors and no Table: the body is spliced from stored bytes, no object is
/// parsed (this is what makes large lists cheap).
#[allow(clippy::too_many_arguments)]
async fn list_unfiltered(
    server: &Arc<ApiServer>,
    rt: &ResourceType,
    prefix: &str,
    start: Option<String>,
    revision: Option<Revision>,
    limit: usize,
    had_continue: bool,
    metadata_only: bool,
) -> ApiResult<Response> {
    let (kvs, revision, next_key) = server
        .objects
        .list_raw(prefix, start, revision, limit)
        .await
        .map_err(|e| expired_continue(e, had_continue))?;
    Ok(raw_json(list_body(
        rt,
        prefix,
        kvs,
        revision,
        next_key,
        metadata_only,
    )?))
}

/// A `<Kind>List` body spliced from stored objects (a `PartialObjectMetadataList` of their
/// metadata when `metadata_only`).
fn list_body(
    rt: &ResourceType,
    prefix: &str,
    kvs: Vec<kelson_storage::KeyValue>,
    revision: Revision,
    next_key: Option<String>,
    metadata_only: bool,
) -> ApiResult<bytes::Bytes> {
    let stored_prefix = Objects::stored_prefix(rt);
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if let Some(key) = next_key {
        metadata["continue"] = json!(encode_continue(
            revision,
            key.strip_prefix(prefix).unwrap_or(&key)
        ));
    }
    let mut body =
        Vec::with_capacity(kvs.iter().map(|kv| kv.value.len() + 40).sum::<usize>() + 256);
    let (kind, api_version) = if metadata_only {
        (
            "PartialObjectMetadata".to_owned(),
            "meta.k8s.io/v1".to_owned(),
        )
    } else {
        (rt.kind.clone(), rt.api_version())
    };
    body.extend_from_slice(
        format!(r#"{{"kind":"{kind}List","apiVersion":"{api_version}","metadata":"#).as_bytes(),
    );
    serde_json::to_writer(&mut body, &metadata).expect("serializes");
    body.extend_from_slice(br#","items":["#);
    for (i, kv) in kvs.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        let item = if metadata_only {
            Objects::metadata_bytes(rt, &stored_prefix, &kv.value, kv.mod_revision)?
        } else {
            Objects::response_bytes(rt, &stored_prefix, &kv.value, kv.mod_revision)?
        };
        body.extend_from_slice(&item);
    }
    body.extend_from_slice(b"]}");
    Ok(bytes::Bytes::from(body))
}

/// An object's `meta.k8s.io/v1` `PartialObjectMetadata`.
#[must_use]
pub fn partial_metadata(object: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

/// One Table row for an object.
fn table_row(rt: &ResourceType, object: &Value, include_object: &str) -> Value {
    let mut row = json!({"cells": table::cells(rt, object)});
    match include_object {
        "None" => {}
        "Object" => row["object"] = with_type(rt, object.clone()),
        _ => row["object"] = partial_metadata(object),
    }
    row
}

/// A `meta.k8s.io/v1` Table of rows.
fn table_of(
    rt: &ResourceType,
    rows: Vec<Value>,
    revision: &str,
    continue_token: Option<&str>,
    with_columns: bool,
) -> Value {
    let mut metadata = json!({"resourceVersion": revision});
    if let Some(token) = continue_token {
        metadata["continue"] = json!(token);
    }
    let mut table = json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata, "rows": rows});
    if with_columns {
        table["columnDefinitions"] = table::column_definitions(&table::columns(rt));
    }
    table
}

/// Renders objects as a `meta.k8s.io/v1` Table.
#[must_use]
pub fn to_table(
    rt: &ResourceType,
    objects: &[Value],
    revision: &str,
    continue_token: Option<&str>,
    include_object: &str,
    with_columns: bool,
) -> Value {
    let rows = objects
        .iter()
        .map(|object| table_row(rt, object, include_object))
        .collect();
    table_of(rt, rows, revision, continue_token, with_columns)
}

/// What a watch sends for one object change.
struct WatchEncoder {
    rt: Arc<ResourceType>,
    stored_prefix: String,
    table: bool,
    /// `PartialObjectMetadata` instead of the objects.
    metadata_only: bool,
    include_object: String,
    columns_sent: bool,
}

impl WatchEncoder {
    /// The event line for a non-Table watch, spliced from the stored bytes; `event_type`
    /// overrides the storage event's (a filtered watch sees objects enter and leave it).
    fn splice(&self, event: &Event, event_type: Option<&str>) -> ApiResult<bytes::Bytes> {
        let (stored_type, value, revision) = match event {
            Event::Created(kv) => ("ADDED", &kv.value, kv.mod_revision),
            Event::Updated { kv, .. } => ("MODIFIED", &kv.value, kv.mod_revision),
            Event::Deleted { prev, revision } => ("DELETED", &prev.value, *revision),
        };
        let event_type = event_type.unwrap_or(stored_type);
        let object = if self.metadata_only {
            Objects::metadata_bytes(&self.rt, &self.stored_prefix, value, revision)?
        } else {
            Objects::response_bytes(&self.rt, &self.stored_prefix, value, revision)?
        };
        let mut line = Vec::with_capacity(object.len() + 32);
        line.extend_from_slice(format!(r#"{{"type":"{event_type}","object":"#).as_bytes());
        line.extend_from_slice(&object);
        line.extend_from_slice(b"}\n");
        Ok(bytes::Bytes::from(line))
    }

    fn line(&mut self, event_type: &str, object: Value) -> bytes::Bytes {
        let object = if self.table {
            let revision = meta::meta_str(&object, "resourceVersion")
                .unwrap_or("")
                .to_owned();
            let with_columns = !self.columns_sent;
            self.columns_sent = true;
            to_table(
                &self.rt,
                &[object],
                &revision,
                None,
                &self.include_object,
                with_columns,
            )
        } else if self.metadata_only {
            partial_metadata(&object)
        } else {
            with_type(&self.rt, object)
        };
        let mut line =
            serde_json::to_vec(&json!({"type": event_type, "object": object})).expect("serializes");
        line.push(b'\n');
        bytes::Bytes::from(line)
    }

    fn raw(value: &Value) -> bytes::Bytes {
        let mut line = serde_json::to_vec(value).expect("serializes");
        line.push(b'\n');
        bytes::Bytes::from(line)
    }
}

fn expired_event(message: &str) -> Value {
    json!({"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": "Expired", "code": 410
    }})
}

/// Watches objects: newline-delimited JSON events until the timeout or the client leaves.
///
/// # Errors
/// 400 for bad parameters.
pub async fn watch(
    server: &Arc<ApiServer>,
    rt: &Arc<ResourceType>,
    namespace: Option<&str>,
    req: Req,
) -> ApiResult<Response> {
    let filter = Filter::from_query(rt, &req.query)?;
    let prefix = rt.list_prefix(namespace);
    let bookmarks = req.query.flag("allowWatchBookmarks") && !req.wants_table();
    let send_initial_events = req.query.flag("sendInitialEvents");
    let timeout = match req.query.int("timeoutSeconds")? {
        Some(seconds) if seconds > 0 => Duration::from_secs(seconds as u64),
        _ => Duration::from_secs(1800 + rand::random::<u64>() % 1800),
    };
    let requested = req
        .query
        .get("resourceVersion")
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse::<Revision>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion: {v:?}")))
        })
        .transpose()?
        .filter(|r| *r != 0);
    let mut encoder = WatchEncoder {
        rt: rt.clone(),
        stored_prefix: Objects::stored_prefix(rt),
        table: req.wants_table(),
        metadata_only: req.wants_metadata(),
        include_object: req
            .query
            .get("includeObject")
            .unwrap_or("Metadata")
            .to_owned(),
        columns_sent: false,
    };
    let (tx, rx) = mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(64);
    let storage = server.objects.storage().clone();
    let objects = server.objects.clone();

    // initial state: synthetic ADDED events when no (or a zero) resourceVersion was given
    let mut initial = Vec::new();
    let start = match requested {
        Some(revision) if !send_initial_events => revision,
        _ => {
            let page = objects
                .list(rt, &prefix, None, None, 0, |o| filter.matches(o))
                .await?;
            initial = page.items;
            page.revision
        }
    };
    let stream = match storage.watch(&prefix, start).await {
        Ok(stream) => stream,
        Err(kelson_storage::Error::Compacted {
            requested,
            compacted,
        }) => {
            let message = format!("too old resource version: {requested} ({compacted})");
            let body = WatchEncoder::raw(&expired_event(&message));
            return Ok(watch_response(Body::from(body)));
        }
        Err(other) => return Err(other.into()),
    };
    tokio::spawn(async move {
        for object in initial {
            if tx.send(Ok(encoder.line("ADDED", object))).await.is_err() {
                return;
            }
        }
        if send_initial_events {
            let bookmark = json!({"type": "BOOKMARK", "object": {
                "kind": encoder.rt.kind, "apiVersion": encoder.rt.api_version(),
                "metadata": {"resourceVersion": start.to_string(),
                             "annotations": {"k8s.io/initial-events-end": "true"}}}});
            if tx.send(Ok(WatchEncoder::raw(&bookmark))).await.is_err() {
                return;
            }
        }
        follow(stream, tx, encoder, filter, bookmarks, timeout).await;
    });
    Ok(watch_response(Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    )))
}

fn watch_response(body: Body) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CACHE_CONTROL, "no-cache, private")
        .body(body)
        .expect("valid response")
}

async fn follow(
    mut stream: kelson_storage::WatchStream,
    tx: mpsc::Sender<Result<bytes::Bytes, std::io::Error>>,
    mut encoder: WatchEncoder,
    filter: Filter,
    bookmarks: bool,
    timeout: Duration,
) {
    const BOOKMARK_EVERY: Duration = Duration::from_secs(5);
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut last_bookmark = tokio::time::Instant::now();
    let mut last_sent: Revision = 0;
    loop {
        let message = tokio::select! {
            () = &mut deadline => return,
            () = tx.closed() => return,
            message = stream.next() => message,
        };
        let line = match message {
            None => return,
            Some(Err(kelson_storage::Error::Compacted {
                requested,
                compacted,
            })) => {
                let message = format!("too old resource version: {requested} ({compacted})");
                let _ = tx
                    .send(Ok(WatchEncoder::raw(&expired_event(&message))))
                    .await;
                return;
            }
            Some(Err(error)) => {
                tracing::warn!(%error, "watch ended by storage error");
                let status = ApiError::internal(error.to_string()).status();
                let _ = tx
                    .send(Ok(WatchEncoder::raw(
                        &json!({"type": "ERROR", "object": status}),
                    )))
                    .await;
                return;
            }
            Some(Ok(WatchMessage::Progress(revision))) => {
                if bookmarks && revision > last_sent && last_bookmark.elapsed() >= BOOKMARK_EVERY {
                    last_bookmark = tokio::time::Instant::now();
                    last_sent = revision;
                    let bookmark = json!({"type": "BOOKMARK", "object": {
                        "kind": encoder.rt.kind, "apiVersion": encoder.rt.api_version(),
                        "metadata": {"resourceVersion": revision.to_string()}}});
                    Some(WatchEncoder::raw(&bookmark))
                } else {
                    None
                }
            }
            Some(Ok(WatchMessage::Event(event))) if filter.is_empty() && !encoder.table => {
                last_sent = event.revision();
                match encoder.splice(&event, None) {
                    Ok(line) => Some(line),
                    Err(error) => {
                        tracing::warn!(error = %error.message, "undecodable object in watch");
                        None
                    }
                }
            }
            Some(Ok(WatchMessage::Event(event))) => {
                last_sent = event.revision();
                match translate(&event, &filter) {
                    // the object sent is the stored one: splice its bytes rather than encode
                    Ok(Some(event_type)) if !encoder.table => {
                        match encoder.splice(&event, Some(event_type)) {
                            Ok(line) => Some(line),
                            Err(error) => {
                                tracing::warn!(error = %error.message, "undecodable object in watch");
                                None
                            }
                        }
                    }
                    Ok(Some(event_type)) => match event_object(&encoder.rt, &event) {
                        Ok(object) => Some(encoder.line(event_type, object)),
                        Err(error) => {
                            tracing::warn!(error = %error.message, "undecodable object in watch");
                            None
                        }
                    },
                    Ok(None) => None,
                    Err(error) => {
                        tracing::warn!(error = %error.message, "undecodable object in watch");
                        None
                    }
                }
            }
        };
        if let Some(line) = line
            && tx.send(Ok(line)).await.is_err()
        {
            return;
        }
    }
}

/// Maps a storage event to a watch event type for a filtered watcher: objects entering the
/// selection are ADDED, objects leaving it are DELETED.
fn translate(event: &Event, filter: &Filter) -> ApiResult<Option<&'static str>> {
    Ok(match event {
        Event::Created(kv) => filter.matches_stored(&kv.value)?.then_some("ADDED"),
        Event::Updated { kv, prev } => {
            if filter.is_empty() {
                return Ok(Some("MODIFIED"));
            }
            match (
                filter.matches_stored(&prev.value)?,
                filter.matches_stored(&kv.value)?,
            ) {
                (true, true) => Some("MODIFIED"),
                (false, true) => Some("ADDED"),
                (true, false) => Some("DELETED"),
                (false, false) => None,
            }
        }
        Event::Deleted { prev, .. } => filter.matches_stored(&prev.value)?.then_some("DELETED"),
    })
}

/// The object an event carries, decoded.
fn event_object(rt: &ResourceType, event: &Event) -> ApiResult<Value> {
    match event {
        Event::Created(kv) | Event::Updated { kv, .. } => Objects::decode(rt, kv),
        Event::Deleted { prev, revision } => Objects::decode_at(rt, &prev.value, *revision),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_read_only_what_they_select_on() {
        let registry = crate::registry::Registry::with_builtins();
        let pods = registry.lookup("", "v1", "pods").unwrap();
        let query = Query::parse(Some(
            "labelSelector=app%3Dweb&fieldSelector=spec.nodeName%3Dn1,status.phase!%3DFailed",
        ));
        let filter = Filter::from_query(&pods, &query).unwrap();
        let stored = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "default", "labels": {"app": "web"},
                         "managedFields": [{"manager": "m"}], "annotations": {"a": "b"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "x"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready"}]}});
        let bytes = serde_json::to_vec(&stored).unwrap();
        assert_eq!(
            filter.view(&bytes).unwrap(),
            json!({"metadata": {"name": "p", "namespace": "default", "labels": {"app": "web"}},
                   "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}})
        );
        assert!(filter.matches_stored(&bytes).unwrap());
        for (pointer, value) in [
            ("/metadata/labels/app", json!("db")),
            ("/spec/nodeName", json!("n2")),
            ("/status/phase", json!("Failed")),
        ] {
            let mut other = stored.clone();
            *other.pointer_mut(pointer).unwrap() = value;
            let bytes = serde_json::to_vec(&other).unwrap();
            assert_eq!(
                filter.matches_stored(&bytes).unwrap(),
                filter.matches(&other),
                "{pointer}"
            );
            assert!(!filter.matches_stored(&bytes).unwrap(), "{pointer}");
        }
        assert_eq!(filter.matches_stored(b"{not json").unwrap_err().code, 500);
    }

    #[test]
    fn continue_tokens_round_trip_and_reject_junk() {
        let token = encode_continue(42, "default/web\0");
        let decoded = decode_continue(&token).unwrap();
        assert_eq!((decoded.rv, decoded.start.as_str()), (42, "default/web\0"));
        assert_eq!(decode_continue("!!!").unwrap_err().code, 400);
        let traversal = base64::engine::general_purpose::URL_SAFE
            .encode(br#"{"v":"meta.k8s.io/v1","rv":1,"start":"../x"}"#);
        assert_eq!(decode_continue(&traversal).unwrap_err().code, 400);
    }
}
