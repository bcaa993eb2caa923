//! Writes: create, update, patch (JSON, merge, strategic, apply), delete (graceful deletion,
//! finalizers, propagation policy), deletecollection, and the `status`, `scale`, `binding` and
//! `finalize` subresources.
//!
//! Every write runs the same admission pipeline Kubernetes runs: decode, schema check
//! (unknown fields per `fieldValidation`), defaulting, preparation (status, generation),
//! validation, then a compare-and-swap in storage, retried when another writer got there first.

use std::sync::Arc;

use axum::response::Response;
use http::{HeaderValue, StatusCode};
use serde_json::{Value, json};

use crate::ApiServer;
use crate::error::{ApiError, ApiResult, Cause};
use crate::kinds::{defaults, strategy, validate};
use crate::meta::{self, meta_mut};
use crate::patch;
use crate::registry::{ResourceType, SchemaSource};
use crate::rest::read::{Filter, with_type};
use crate::rest::{Req, body, json_response};
use crate::schema::{self, FieldValidation, Node};

/// Which part of an object a write targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The object itself (status changes are ignored when a status subresource exists).
    Main,
    /// `/status`: only the status changes.
    Status,
    /// `/scale`: only the replica count changes.
    Scale,
    /// `/finalize` (namespaces): only `spec.finalizers` changes.
    Finalize,
}

/// Options shared by every write.
struct WriteOptions {
    dry_run: bool,
    validation: FieldValidation,
    manager: String,
    /// Server-side apply records ownership itself.
    apply: bool,
    /// The client named the resourceVersion it expects: a conflict is answered, not retried.
    pinned: bool,
    /// Who writes (RBAC objects grant only what their writer holds).
    user: crate::auth::User,
    /// The client asked for the answer as `PartialObjectMetadata`.
    metadata_only: bool,
}

impl WriteOptions {
    fn from(req: &Req) -> ApiResult<Self> {
        Ok(Self {
            dry_run: req.dry_run(),
            validation: FieldValidation::parse(req.query.get("fieldValidation"))
                .map_err(ApiError::bad_request)?,
            manager: req.field_manager(),
            apply: false,
            pinned: false,
            user: req.user.clone(),
            metadata_only: req.wants_metadata(),
        })
    }

    /// The object as the client asked to receive it.
    fn shape(&self, rt: &ResourceType, object: Value) -> Value {
        if self.metadata_only {
            crate::rest::read::partial_metadata(&object)
        } else {
            with_type(rt, object)
        }
    }
}

/// Warnings gathered while admitting a write (sent as `Warning` headers).
#[derive(Default)]
struct Warnings(Vec<String>);

fn respond(status: StatusCode, value: &Value, warnings: &Warnings) -> Response {
    let mut response = json_response(status, value);
    for warning in &warnings.0 {
        let text = format!("299 - {warning:?}");
        if let Ok(header) = HeaderValue::from_str(&text) {
            response.headers_mut().append(http::header::WARNING, header);
        }
    }
    response
}

/// Checks `apiVersion` and `kind` of a request body, filling them when absent.
fn check_type(rt: &ResourceType, object: &mut Value) -> ApiResult<()> {
    let expected_version = rt.api_version();
    match object.get("apiVersion").and_then(Value::as_str) {
        Some(version) if version != expected_version => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({version}) does not match the expected API version ({expected_version})"
            )));
        }
        _ => {}
    }
    match object.get("kind").and_then(Value::as_str) {
        Some(kind) if kind != rt.kind => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({kind}) does not match the expected kind ({})",
                rt.kind
            )));
        }
        _ => {}
    }
    object["apiVersion"] = json!(expected_version);
    object["kind"] = json!(rt.kind);
    Ok(())
}

/// The schema check: type errors are causes; unknown fields are causes (Strict), warnings
/// (Warn) or dropped silently (Ignore). Unknown fields are removed either way.
fn check_schema(
    rt: &ResourceType,
    object: &mut Value,
    options: &WriteOptions,
    warnings: &mut Warnings,
) -> Vec<Cause> {
    let findings = match &rt.schema {
        Some(SchemaSource::Builtin(name)) => match Node::builtin(name) {
            Some(node) => schema::validate(object, node),
            None => schema::Findings::default(),
        },
        Some(SchemaSource::Custom(root)) => {
            let mut findings = schema::Findings::default();
            if let Some(metadata) = object.get_mut("metadata")
                && let Some(node) = Node::builtin("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")
            {
                let mut found = schema::validate(metadata, node);
                findings.causes.extend(found.causes.drain(..).map(|mut c| {
                    c.field = format!("metadata.{}", c.field);
                    c
                }));
                findings
                    .unknown
                    .extend(found.unknown.drain(..).map(|u| format!("metadata.{u}")));
            }
            let mut rest = object.clone();
            if let Some(map) = rest.as_object_mut() {
                for field in ["apiVersion", "kind", "metadata"] {
                    map.remove(field);
                }
            }
            let found = schema::validate(&mut rest, Node::custom(root));
            findings.causes.extend(found.causes);
            findings.unknown.extend(found.unknown);
            if let (Some(pruned), Some(target)) = (rest.as_object(), object.as_object_mut()) {
                target.retain(|k, _| {
                    matches!(k.as_str(), "apiVersion" | "kind" | "metadata")
                        || pruned.contains_key(k)
                });
                for (k, v) in pruned {
                    target.insert(k.clone(), v.clone());
                }
            }
            findings
        }
        None => schema::Findings::default(),
    };
    let mut causes = findings.causes;
    match options.validation {
        FieldValidation::Strict => {
            for field in findings.unknown {
                let leaf = field.rsplit('.').next().unwrap_or(&field).to_owned();
                causes.push(Cause::new(
                    "FieldValueInvalid",
                    field,
                    format!("unknown field {leaf:?}"),
                ));
            }
        }
        FieldValidation::Warn => {
            warnings.0.extend(
                findings
                    .unknown
                    .into_iter()
                    .map(|f| format!("unknown field {f:?}")),
            );
        }
        FieldValidation::Ignore => {}
    }
    causes
}

/// The schema of a resource type, for merge keys and list types.
fn schema_node(rt: &ResourceType) -> Option<Node<'_>> {
    match &rt.schema {
        Some(SchemaSource::Builtin(definition)) => Node::builtin(definition),
        Some(SchemaSource::Custom(root)) => Some(Node::custom(root)),
        None => None,
    }
}

fn invalid(rt: &ResourceType, object: &Value, causes: Vec<Cause>) -> ApiError {
    ApiError::invalid(&rt.kind, &rt.group, meta::name(object), causes)
}

/// Namespaced objects need their namespace to exist and not be terminating.
async fn check_namespace(server: &ApiServer, rt: &ResourceType, object: &Value) -> ApiResult<()> {
    let namespace = meta::namespace(object);
    let Some(namespace) = namespace.filter(|_| rt.namespaced) else {
        return Ok(());
    };
    let Some(namespaces) = server.registry.lookup("", "v1", "namespaces") else {
        return Ok(());
    };
    match server.objects.try_get(&namespaces, None, namespace).await? {
        None => Err(ApiError::not_found_named("", "namespaces", namespace)),
        Some(ns)
            if meta::is_deleting(&ns)
                || ns.pointer("/status/phase") == Some(&json!("Terminating")) =>
        {
            Err(ApiError::forbidden(format!(
                "{} \"{}\" is forbidden: unable to create new content in namespace {namespace} because it is being terminated",
                rt.plural,
                meta::name(object)
            )))
        }
        Some(_) => Ok(()),
    }
}

/// Creates an object.
///
/// # Errors
/// 400/409/422 and friends, as Kubernetes answers them.
pub async fn create(
    server: &Arc<ApiServer>,
    rt: &ResourceType,
    namespace: Option<&str>,
    mut req: Req,
) -> ApiResult<Response> {
    let options = WriteOptions::from(&req)?;
    let object = body::read_object(&mut req).await?;
    let mut warnings = Warnings::default();
    let created = create_object(server, rt, namespace, object, &options, &mut warnings).await?;
    Ok(respond(
        StatusCode::CREATED,
        &options.shape(rt, created),
        &warnings,
    ))
}

async fn create_object(
    server: &Arc<ApiServer>,
    rt: &ResourceType,
    namespace: Option<&str>,
    mut object: Value,
    options: &WriteOptions,
    warnings: &mut Warnings,
) -> ApiResult<Value> {
    check_type(rt, &mut object)?;
    let metadata = meta_mut(&mut object);
    if rt.namespaced {
        match (metadata.get("namespace").and_then(Value::as_str), namespace) {
            (Some(body_ns), Some(url_ns)) if !body_ns.is_empty() && body_ns != url_ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => {}
        }
        if let Some(namespace) = namespace {
            metadata.insert("namespace".into(), json!(namespace));
        }
    } else {
        metadata.remove("namespace");
    }
    let name_missing = metadata
        .get("name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty);
    if name_missing
        && let Some(prefix) = metadata
            .get("generateName")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
    {
        let name = format!("{prefix}{}", meta::random_suffix());
        metadata.insert("name".into(), json!(name));
    }
    for field in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
    ] {
        metadata.remove(field);
    }
    metadata.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    metadata.insert("creationTimestamp".into(), json!(meta::now()));

    let mut causes = check_schema(rt, &mut object, options, warnings);
    if rt.group.is_empty() && rt.kind == "Pod" {
        crate::admission::priority(server, &mut object).await?;
    }
    if !rt.custom {
        defaults::apply(&rt.group, &rt.kind, &mut object);
    }
    if rt.group.is_empty() && rt.kind == "Pod" {
        crate::serviceaccount::mount_token(&mut object);
    }
    if rt.group.is_empty() && rt.kind == "PersistentVolumeClaim" {
        crate::admission::default_storage_class(server, &mut object).await?;
    }
    strategy::prepare_create(rt, &mut object);
    causes.extend(validate::validate(rt, &object, None));
    if !causes.is_empty() {
        return Err(invalid(rt, &object, causes));
    }
    crate::rbac::admit(server, &options.user, rt, &object, None)?;
    if !options.apply {
        crate::fieldset::record_update(
            &mut object,
            None,
            &options.manager,
            &rt.api_version(),
            schema_node(rt),
            false,
        );
    }
    check_namespace(server, rt, &object).await?;
    crate::admission::charge_quota(server, rt, &object, options.dry_run).await?;
    let reserved = if is_service(rt) {
        crate::services::allocate(server, &mut object, options.dry_run).await?
    } else {
        crate::services::Reserved::default()
    };
    if options.dry_run {
        return Ok(object);
    }
    let created = match server.objects.create(rt, object).await {
        Ok(created) => created,
        Err(error) => {
            reserved.release(server).await;
            return Err(error);
        }
    };
    server.after_write(rt, &created).await;
    Ok(created)
}

/// Updates an object (PUT) or one of its subresources.
///
/// # Errors
/// 400/404/409/422 as Kubernetes answers them.
pub async fn update(
    server: &Arc<ApiServer>,
    rt: &ResourceType,
    namespace: Option<&str>,
    name: &str,
    mut req: Req,
    target: Target,
) -> ApiResult<Response> {
    let mut options = WriteOptions::from(&req)?;
    let mut body = body::read_object(&mut req).await?;
    options.pinned = meta::meta_str(&body, "resourceVersion").is_some_and(|v| !v.is_empty());
    if target == Target::Scale {
        let replicas = body
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let precondition = meta::meta_str(&body, "resourceVersion").map(str::to_owned);
        let mut warnings = Warnings::default();
        let (updated, _) = read_modify_write(
            server,
            rt,
            namespace,
            name,
            &options,
            Target::Main,
            &mut warnings,
            |current| {
                let mut desired = current
                    .cloned()
                    .ok_or_else(|| ApiError::not_found(rt, name))?;
                check_precondition(rt, name, current, precondition.as_deref())?;
                set_replicas(rt, &mut desired, replicas);
                Ok(desired)
            },
        )
        .await?;
        return Ok(json_response(StatusCode::OK, &scale_of(rt, &updated)));
    }
    if body
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .is_some_and(|n| n != name)
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            meta::name(&body)
        )));
    }
    check_type(rt, &mut body)?;
    let mut warnings = Warnings::default();
    let (updated, created) = read_modify_write(
        server,
        rt,
        namespace,
        name,
        &options,
        target,
        &mut warnings,
        |current| {
            check_precondition(rt, name, current, meta::meta_str(&body, "resourceVersion"))?;
            Ok(body.clone())
        },
    )
    .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(respond(status, &options.shape(rt, updated), &warnings))
}

/// A `resourceVersion` in the body must match the stored object's.
fn check_precondition(
    rt: &ResourceType,
    name: &str,
    current: Option<&Value>,
    wanted: Option<&str>,
) -> ApiResult<()> {
    let Some(wanted) = wanted.filter(|w| !w.is_empty()) else {
        return Ok(());
    };
    let actual = current.and_then(|c| meta::meta_str(c, "resourceVersion"));
    if actual != Some(wanted) {
        return Err(ApiError::conflict(rt, name));
    }
    Ok(())
}

/// Reads the current object, computes the desired one, admits it and swaps it in; retried when
/// the object changed meanwhile (unless the caller pinned a resourceVersion). Returns the
/// stored object and whether it was created.
#[allow(clippy::too_many_arguments)]
async fn read_modify_write(
    server: &Arc<ApiServer>,
    rt: &ResourceType,
    namespace: Option<&str>,
    name: &str,
    options: &WriteOptions,
    target: Target,
    warnings: &mut Warnings,
    mut desired_of: impl FnMut(Option<&Value>) -> ApiResult<Value>,
) -> ApiResult<(Value, bool)> {
    for _ in 0..32 {
        let current = server.objects.try_get(rt, namespace, name).await?;
        let desired = desired_of(current.as_ref())?;
        let Some(current) = current else {
            if target == Target::Main && (options.apply || allows_create_on_update(rt)) {
                // an update that creates needs create too, as in Kubernetes
                server.authorizer.check(
                    &options.user,
                    &crate::rbac::Attributes::resource(
                        "create",
                        &rt.group,
                        &rt.plural,
                        "",
                        namespace.unwrap_or(""),
                        name,
                    ),
                )?;
                let created =
                    create_object(server, rt, namespace, desired, options, warnings).await?;
                return Ok((created, true));
            }
            return Err(ApiError::not_found(rt, name));
        };
        let pinned = options.pinned;
        let Some(mut admitted) = admit_update(rt, &current, desired, target, options, warnings)?
        else {
            return Ok((current, false));
        };
        crate::rbac::admit(server, &options.user, rt, &admitted, Some(&current))?;
        let reserved = if is_service(rt) && target == Target::Main {
            crate::services::allocate(server, &mut admitted, options.dry_run).await?
        } else {
            crate::services::Reserved::default()
        };
        if options.dry_run {
            return Ok((admitted, false));
        }
        let revision = current_revision(&current)?;
        let finished = meta::is_deleting(&admitted)
            && meta::finalizers(&admitted).is_empty()
            && spec_finalizers(rt, &admitted).is_empty();
        let result = if finished {
            server
                .objects
                .delete(rt, namespace, name, Some(revision))
                .await
                .map(|mut gone| {
                    // answer with the final state, as Kubernetes does when the last finalizer goes
                    if let Some(finalizers) = admitted.pointer("/metadata/finalizers") {
                        meta_mut(&mut gone).insert("finalizers".into(), finalizers.clone());
                    }
                    gone
                })
        } else {
            server.objects.update(rt, admitted, revision).await
        };
        match result {
            Ok(stored) => {
                if finished {
                    server.after_delete(rt, &stored).await;
                } else {
                    if is_service(rt) {
                        crate::services::release_unused(server, &current, Some(&stored)).await;
                    }
                    server.after_write(rt, &stored).await;
                }
                return Ok((stored, false));
            }
            Err(error) => {
                reserved.release(server).await;
                if error.code == 409 && !pinned {
                    continue;
                }
                return Err(error);
            }
        }
    }
    Err(ApiError::conflict(rt, name))
}

fn allows_create_on_update(rt: &ResourceType) -> bool {
    matches!(
        (rt.group.as_str(), rt.kind.as_str()),
        ("", "Endpoints")
            | ("coordination.k8s.io", "Lease")
            | ("", "Event")
            | ("events.k8s.io", "Event")
    ) || rt.custom
}

fn current_revision(object: &Value) -> ApiResult<i64> {
    meta::meta_str(object, "resourceVersion")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ApiError::internal("stored object has no resourceVersion"))
}

/// Admits an update; `None` when nothing would change.
fn admit_update(
    rt: &ResourceType,
    current: &Value,
    mut desired: Value,
    target: Target,
    options: &WriteOptions,
    warnings: &mut Warnings,
) -> ApiResult<Option<Value>> {
    let name = meta::name(current).to_owned();
    if let Some(uid) = meta::meta_str(&desired, "uid").filter(|u| !u.is_empty())
        && Some(uid) != meta::meta_str(current, "uid")
    {
        return Err(ApiError::conflict_message(
            rt,
            &name,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                meta::meta_str(current, "uid").unwrap_or("")
            ),
        ));
    }
    check_type(rt, &mut desired)?;
    let mut causes = Vec::new();
    match target {
        Target::Status => strategy::prepare_status_update(rt, &mut desired, current),
        Target::Finalize => {
            let finalizers = desired
                .pointer("/spec/finalizers")
                .cloned()
                .unwrap_or_else(|| json!([]));
            desired = current.clone();
            desired["spec"]["finalizers"] = finalizers;
        }
        Target::Main | Target::Scale => {
            causes = check_schema(rt, &mut desired, options, warnings);
            if !rt.custom {
                defaults::apply(&rt.group, &rt.kind, &mut desired);
            }
            strategy::prepare_update(rt, &mut desired, current);
        }
    }
    // identity and lifecycle fields belong to the server
    let metadata = meta_mut(&mut desired);
    metadata.insert("name".into(), json!(name));
    for field in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "namespace",
    ] {
        match current.pointer(&format!("/metadata/{field}")) {
            Some(value) => {
                metadata.insert(field.into(), value.clone());
            }
            None => {
                metadata.remove(field);
            }
        }
    }
    if rt.tracks_generation || rt.custom {
        if desired.pointer("/metadata/generation").is_none()
            && let Some(generation) = current.pointer("/metadata/generation")
        {
            meta_mut(&mut desired).insert("generation".into(), generation.clone());
        }
    } else {
        meta_mut(&mut desired).remove("generation");
    }
    if meta::is_deleting(current) {
        let old = meta::finalizers(current);
        if meta::finalizers(&desired).iter().any(|f| !old.contains(f)) {
            causes.push(Cause::new(
                "FieldValueForbidden",
                "metadata.finalizers",
                "no new finalizers can be added if the object is being deleted",
            ));
        }
    }
    causes.extend(validate::validate(rt, &desired, Some(current)));
    if !causes.is_empty() {
        return Err(invalid(rt, &desired, causes));
    }
    let resource_version = meta::meta_str(current, "resourceVersion")
        .unwrap_or("")
        .to_owned();
    meta_mut(&mut desired).insert("resourceVersion".into(), json!(resource_version));
    if !options.apply {
        crate::fieldset::record_update(
            &mut desired,
            Some(current),
            &options.manager,
            &rt.api_version(),
            schema_node(rt),
            target == Target::Status,
        );
    }
    if same_object(&desired, current) {
        return Ok(None);
    }
    Ok(Some(desired))
}

/// Equal apart from bookkeeping that alone is not a change.
fn same_object(a: &Value, b: &Value) -> bool {
    /// Equal maps apart from the `ignored` keys.
    fn same_except(
        a: &serde_json::Map<String, Value>,
        b: &serde_json::Map<String, Value>,
        ignored: &[&str],
    ) -> bool {
        let counted = |m: &serde_json::Map<String, Value>| {
            m.keys().filter(|k| !ignored.contains(&k.as_str())).count()
        };
        counted(a) == counted(b)
            && a.iter()
                .filter(|(k, _)| !ignored.contains(&k.as_str()))
                .all(|(k, v)| b.get(k) == Some(v))
    }
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return a == b;
    };
    same_except(a, b, &["metadata"])
        && match (a.get("metadata"), b.get("metadata")) {
            (Some(Value::Object(x)), Some(Value::Object(y))) => {
                same_except(x, y, &["managedFields", "resourceVersion"])
            }
            (x, y) => x == y,
        }
}

/// Patches an object (or its status or scale).
///
/// # Errors
/// 400 for undecodable patches, 415 for unknown patch types, 422 for failed ones.
pub async fn patch(
    server: &Arc<ApiServer>,
    rt: &ResourceType,
    namespace: Option<&str>,
    name: &str,
    mut req: Req,
    target: Target,
) -> ApiResult<Response> {
    let mut options = WriteOptions::from(&req)?;
    let media_type = body::content_type(&req);
    let kind = patch::PatchKind::from_media_type(&media_type, rt.custom)?;
    let force = req.query.get("force");
    if force.is_some() && kind != patch::PatchKind::Apply {
        return Err(ApiError::invalid(
            "PatchOptions",
            "meta.k8s.io",
            "",
            vec![Cause::new(
                "FieldValueForbidden",
                "force",
                "may not be specified for non-apply patch",
            )],
        ));
    }
    options.apply = kind == patch::PatchKind::Apply;
    if kind == patch::PatchKind::Apply {
        match req.query.get("fieldManager").filter(|m| !m.is_empty()) {
            Some(manager) => options.manager = manager.to_owned(),
            None => {
                return Err(ApiError::invalid(
                    "PatchOptions",
                    "meta.k8s.io",
                    "",
                    vec![Cause::new(
                        "FieldValueRequired",
                        "fieldManager",
                        "is required for apply patch",
                    )],
                ));
            }
        }
    }
    let force = matches!(force, Some("true" | "1"));
    let bytes = body::read(std::mem::take(&mut req.body)).await?;
    let document = patch::PatchDocument::decode(kind, &bytes)?;
    options.pinned = document.pins_resource_version();
    let schema_root = schema_node(rt);
    let mut warnings = Warnings::default();
    let write_target = if target == Target::Scale {
        Target::Main
    } else {
        target
    };
    let (result, created) = read_modify_write(
        server,
        rt,
        namespace,
        name,
        &options,
        write_target,
        &mut warnings,
        |current| match current {
            None if kind == patch::PatchKind::Apply && target == Target::Main => {
                let mut object = document.apply_to_new(name, namespace)?;
                crate::fieldset::record_apply(
                    &mut object,
                    None,
                    &options.manager,
                    &rt.api_version(),
                    &document.value_or_null(),
                    schema_root,
                    force,
                )?;
                Ok(object)
            }
            None => Err(ApiError::not_found(rt, name)),
            Some(current) => {
                let scale;
                let base = if target == Target::Scale {
                    scale = scale_of(rt, current);
                    &scale
                } else {
                    current
                };
                let mut patched = document.apply(base, schema_root, &options.manager)?;
                if kind == patch::PatchKind::Apply {
                    crate::fieldset::record_apply(
                        &mut patched,
                        Some(current),
                        &options.manager,
                        &rt.api_version(),
                        &document.value_or_null(),
                        schema_root,
                        force,
                    )?;
                }
                if target == Target::Scale {
                    check_precondition(
                        rt,
                        name,
                        Some(current),
                        meta::meta_str(&patched, "resourceVersion"),
                    )?;
                    let replicas = patched
                        .pointer("/spec/replicas")
                        .and_then(Value::as_i64)
                        .unwrap_or(0);
                    let mut desired = current.clone();
                    set_replicas(rt, &mut desired, replicas);
                    return Ok(desired);
                }
                Ok(patched)
            }
        },
    )
    .await?;
    if target == Target::Scale {
        return Ok(json_response(StatusCode::OK, &scale_of(rt, &result)));
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(respond(status, &options.shape(rt, result), &warnings))
}

fn set_replicas(rt: &ResourceType, object: &mut Value, replicas: i64) {
    let pointer = rt
        .scale
        .as_ref()
        .map_or("/spec/replicas", |s| s.spec_replicas.as_str());
    set_pointer(object, pointer, json!(replicas));
}

fn set_pointer(object: &mut Value, pointer: &str, value: Value) {
    let mut node = object;
    let parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            if let Some(map) = node.as_object_mut() {
                map.insert((*part).to_owned(), value);
            }
            return;
        }
        if !node.get(*part).is_some_and(Value::is_object) {
            node[*part] = json!({});
        }
        node = node.get_mut(*part).expect("just ensured");
    }
}

/// The `autoscaling/v1 Scale` view of a scalable object.
#[must_use]
pub fn scale_of(rt: &ResourceType, object: &Value) -> Value {
    let paths = rt.scale.clone().unwrap_or(crate::registry::ScalePaths {
        spec_replicas: "/spec/replicas".into(),
        status_replicas: "/status/replicas".into(),
        label_selector: None,
    });
    let selector = match &paths.label_selector {
        Some(pointer) => object
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        None => {
            let text = crate::kinds::table::selector_text(object.pointer("/spec/selector"));
            if text == "<none>" {
                String::new()
            } else {
                text
            }
        }
    };
    let metadata = object.get("metadata").cloned().unwrap_or_else(|| json!({}));
    let mut scale_metadata = json!({});
    for field in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(value) = metadata.get(field) {
            scale_metadata[field] = value.clone();
        }
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": scale_metadata,
        "spec": {"replicas": object.pointer(&paths.spec_replicas).and_then(Value::as_i64).unwrap_or(0)},
        "status": {
            "replicas": object.pointer(&paths.status_replicas).and_then(Value::as_i64).unwrap_or(0),
            "selector": selector,
        },
    })
}

/// `GET .../scale`.
///
/// # Errors
/// 404 when absent.
pub async fn get_scale(
    server: &Arc<ApiServer>,
    rt: &ResourceType,
    namespace: Option<&str>,
    name: &str,
) -> ApiResult<Response> {
    let object = server.objects.get(rt, namespace, name).await?;
    Ok(json_response(StatusCode::OK, &scale_of(rt, &object)))
}

/// `POST pods/<name>/binding`: assigns a pod to a node (the scheduler's write).
///
/// # Errors
/// 409 when the pod is already bound.
pub async fn bind(
    server: &Arc<ApiServer>,
    rt: &ResourceType,
    namespace: Option<&str>,
    name: &str,
    mut req: Req,
) -> ApiResult<Response> {
    let options = WriteOptions::from(&req)?;
    let binding = body::read_object(&mut req).await?;
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if node.is_empty() {
        return Err(ApiError::invalid(
            "Binding",
            "",
            name,
            vec![Cause::required("target.name")],
        ));
    }
    let uid = binding
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .filter(|uid| !uid.is_empty())
        .map(str::to_owned);
    // one write sets the node and the PodScheduled condition, without admission or field
    // ownership, as Kubernetes' binding does
    for _ in 0..32 {
        let current = server
            .objects
            .try_get(rt, namespace, name)
            .await?
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        if let Some(uid) = &uid {
            let actual = current
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or("");
            if actual != uid {
                return Err(ApiError::conflict_message(
                    rt,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"
                    ),
                ));
            }
        }
        if meta::is_deleting(&current) {
            return Err(ApiError::conflict_message(
                rt,
                name,
                "pod is being deleted, cannot be assigned to a host",
            ));
        }
        let bound = current
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !bound.is_empty() {
            return Err(ApiError::conflict_message(
                rt,
                name,
                &format!("pod {name} is already assigned to node \"{bound}\""),
            ));
        }
        let revision = current_revision(&current)?;
        let mut desired = current;
        desired["spec"]["nodeName"] = json!(node);
        let status = &mut desired["status"];
        if !status.is_object() {
            *status = json!({});
        }
        let mut conditions: Vec<Value> = status
            .get("conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        conditions.retain(|c| c.get("type") != Some(&json!("PodScheduled")));
        conditions.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": meta::now()}));
        status["conditions"] = Value::Array(conditions);
        if options.dry_run {
            return Ok(created_status());
        }
        match server.objects.update(rt, desired, revision).await {
            Ok(stored) => {
                server.after_write(rt, &stored).await;
                return Ok(created_status());
            }
            Err(error) if error.code == 409 => {}
            Err(error) => return Err(error),
        }
    }
    Err(ApiError::conflict(rt, name))
}

/// `201 Created` with a success `Status`, the answer to a subresource POST that creates nothing
/// to return (binding, eviction).
pub(crate) fn created_status() -> Response {
    json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    )
}

/// Deletion options from the body or the query (or an Eviction's `deleteOptions`).
#[derive(Debug, Default)]
pub(crate) struct DeleteOptions {
    grace_period: Option<i64>,
    propagation: Option<String>,
    precondition_uid: Option<String>,
    precondition_revision: Option<String>,
    /// Nothing is written.
    pub(crate) dry_run: bool,
}

impl DeleteOptions {
    /// Options from a `DeleteOptions` object (absent: the defaults), dry run when `dry_run`.
    ///
    /// # Errors
    /// 422 for an unknown propagation policy.
    pub(crate) fn from_value(value: Option<&Value>, dry_run: bool) -> ApiResult<Self> {
        let mut options = Self {
            dry_run,
            ..Self::default()
        };
        if let Some(value) = value {
            options.grace_period = value.get("gracePeriodSeconds").and_then(Value::as_i64);
            options.propagation = value
                .get("propagationPolicy")
                .and_then(Value::as_str)
                .map(str::to_owned);
            if value.get("orphanDependents").and_then(Value::as_bool) == Some(true)
                && options.propagation.is_none()
            {
                options.propagation = Some("Orphan".into());
            }
            options.precondition_uid = value
                .pointer("/preconditions/uid")
                .and_then(Value::as_str)
                .map(str::to_owned);
            options.precondition_revision = value
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_owned);
            if let Some(dry_run) = value.get("dryRun").and_then(Value::as_array) {
                options.dry_run |= dry_run.iter().any(|v| v == "All");
            }
        }
        options.check()?;
        Ok(options)
    }

    fn check(&self) -> ApiResult<()> {
        if let Some(policy) = &self.propagation
            && !matches!(policy.as_str(), "Orphan" | "Background" | "Foreground")
        {
            return Err(ApiError::invalid(
                "DeleteOptions",
                "meta.k8s.io",
                "",
                vec![Cause::new(
                    "FieldValueNotSupported",
                    "propagationPolicy",
                    format!(
                        "{policy:?}: supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""
                    ),
                )],
            ));
        }
        Ok(())
    }
}

async fn delete_options(req: &mut Req) -> ApiResult<DeleteOptions> {
    let bytes = body::read(std::mem::take(&mut req.body)).await?;
    let value = if bytes.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        Some(body::decode(&body::content_type(req), &bytes)?)
    };
    let mut options = DeleteOptions::from_value(value.as_ref(), req.dry_run())?;
    if let Some(grace) = req.query.int("gracePeriodSeconds")? {
        options.grace_period = Some(grace);
    }
    if let Some(policy) = req.query.get("propagationPolicy") {
        options.propagation = Some(policy.to_owned());
    }
    if req.query.flag("orphanDependents") && options.propagation.is_none() {
        options.propagation = Some("Orphan".into());
    }
    options.check()?;
    Ok(options)
}

/// Deletes one object.
///
/// # Errors
/// 404 when absent, 409 when a precondition fails.
pub async fn delete(
    server: &Arc<ApiServer>,
    rt: &ResourceType,
    namespace: Option<&str>,
    name: &str,
    mut req: Req,
) -> ApiResult<Response> {
    let options = delete_options(&mut req).await?;
    let (object, finished) = delete_object(server, rt, namespace, name, &options).await?;
    let returns_object = rt.custom || (rt.group.is_empty() && rt.kind == "Pod") || !finished;
    if returns_object {
        return Ok(json_response(StatusCode::OK, &with_type(rt, object)));
    }
    let mut details = json!({"name": name, "kind": rt.plural, "uid": meta::meta_str(&object, "uid").unwrap_or("")});
    if !rt.group.is_empty() {
        details["group"] = json!(rt.group);
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}),
    ))
}

/// Returns the object and whether it is gone (false when deletion is pending).
pub(crate) async fn delete_object(
    server: &Arc<ApiServer>,
    rt: &ResourceType,
    namespace: Option<&str>,
    name: &str,
    options: &DeleteOptions,
) -> ApiResult<(Value, bool)> {
    for _ in 0..32 {
        let current = server.objects.get(rt, namespace, name).await?;
        if let Some(uid) = &options.precondition_uid
            && Some(uid.as_str()) != meta::meta_str(&current, "uid")
        {
            return Err(ApiError::conflict_message(
                rt,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta::meta_str(&current, "uid").unwrap_or("")
                ),
            ));
        }
        if let Some(revision) = &options.precondition_revision
            && Some(revision.as_str()) != meta::meta_str(&current, "resourceVersion")
        {
            return Err(ApiError::conflict_message(
                rt,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {revision}, ResourceVersion in object meta: {}",
                    meta::meta_str(&current, "resourceVersion").unwrap_or("")
                ),
            ));
        }
        let revision = current_revision(&current)?;
        let grace = graceful_period(rt, &current, options.grace_period);
        let mut finalizers = meta::finalizers(&current);
        match options.propagation.as_deref() {
            Some("Foreground") if !finalizers.iter().any(|f| f == "foregroundDeletion") => {
                finalizers.push("foregroundDeletion".into())
            }
            Some("Orphan") if !finalizers.iter().any(|f| f == "orphan") => {
                finalizers.push("orphan".into())
            }
            _ => {}
        }
        let pending = grace.is_some_and(|g| g > 0)
            || !finalizers.is_empty()
            || !spec_finalizers(rt, &current).is_empty();
        if !pending {
            if options.dry_run {
                return Ok((current, true));
            }
            match server
                .objects
                .delete(rt, namespace, name, Some(revision))
                .await
            {
                Ok(gone) => {
                    server.after_delete(rt, &gone).await;
                    return Ok((gone, true));
                }
                Err(error) if error.code == 409 => continue,
                Err(error) => return Err(error),
            }
        }
        let mut desired = current.clone();
        let metadata = meta_mut(&mut desired);
        let now = jiff::Timestamp::now();
        let grace_seconds = grace.unwrap_or(0).max(0);
        let deadline = now + jiff::SignedDuration::from_secs(grace_seconds);
        let existing_deadline = metadata
            .get("deletionTimestamp")
            .and_then(Value::as_str)
            .and_then(meta::parse_time);
        match existing_deadline {
            // a second delete may only shorten the grace period
            Some(existing) if existing <= deadline => {}
            _ => {
                metadata.insert(
                    "deletionTimestamp".into(),
                    json!(meta::format_time(deadline)),
                );
                metadata.insert("deletionGracePeriodSeconds".into(), json!(grace_seconds));
            }
        }
        metadata.insert("finalizers".into(), json!(finalizers));
        if is_namespace(rt) {
            // the namespace controller empties it, then removes `spec.finalizers` via /finalize
            desired["status"]["phase"] = json!("Terminating");
        }
        if desired == current {
            return Ok((current, false));
        }
        if options.dry_run {
            return Ok((desired, false));
        }
        match server.objects.update(rt, desired, revision).await {
            Ok(updated) => return Ok((updated, false)),
            Err(error) if error.code == 409 => continue,
            Err(error) => return Err(error),
        }
    }
    Err(ApiError::conflict(rt, name))
}

fn is_service(rt: &ResourceType) -> bool {
    rt.group.is_empty() && rt.kind == "Service"
}

fn is_namespace(rt: &ResourceType) -> bool {
    rt.group.is_empty() && rt.kind == "Namespace"
}

/// A namespace's `spec.finalizers`, which hold its deletion like metadata finalizers do.
fn spec_finalizers(rt: &ResourceType, object: &Value) -> Vec<String> {
    if !is_namespace(rt) {
        return Vec::new();
    }
    meta::strings_at(object, "/spec/finalizers")
}

/// The grace period of a graceful delete, for kinds that have one (pods).
fn graceful_period(rt: &ResourceType, object: &Value, requested: Option<i64>) -> Option<i64> {
    if !(rt.group.is_empty() && rt.kind == "Pod") {
        return None;
    }
    let unscheduled = object
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty);
    let finished = matches!(
        object.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    );
    if unscheduled || finished {
        return Some(0);
    }
    let spec_grace = object
        .pointer("/spec/terminationGracePeriodSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(30);
    Some(requested.unwrap_or(spec_grace).max(0))
}

/// Deletes every object matching the selectors.
///
/// # Errors
/// 400 for bad selectors.
pub async fn delete_collection(
    server: &Arc<ApiServer>,
    rt: &ResourceType,
    namespace: Option<&str>,
    mut req: Req,
) -> ApiResult<Response> {
    let filter = Filter::from_query(rt, &req.query)?;
    let options = delete_options(&mut req).await?;
    let page = server
        .objects
        .list(rt, &rt.list_prefix(namespace), None, None, 0, |o| {
            filter.matches(o)
        })
        .await?;
    let mut items = Vec::new();
    for object in page.items {
        match delete_object(
            server,
            rt,
            meta::namespace(&object),
            meta::name(&object),
            &options,
        )
        .await
        {
            Ok((deleted, _)) => items.push(with_type(rt, deleted)),
            Err(error) if error.code == 404 => {}
            Err(error) => return Err(error),
        }
    }
    let list = json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": {"resourceVersion": page.revision.to_string()}, "items": items});
    Ok(json_response(StatusCode::OK, &list))
}
