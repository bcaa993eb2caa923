//! Cluster-wide log queries: `GET /kelson/v1/logs/search` and `/kelson/v1/logs/histogram` ask
//! every node's log pipeline (through its kubelet, `/logs/api/v1/...`, with the API server's
//! kubelet client certificate) and merge the answers — hits newest first across nodes, totals
//! and histogram buckets summed. A node that does not answer is listed under `errors` and the
//! others still count, as a partial result; a query a node rejects (400) is rejected.
//! `GET /kelson/v1/logs/tail` opens every node's live tail and merges the streams of
//! newline-delimited hits as lines arrive.
//!
//! Reading logs needs what `kubectl logs` needs: `get` on `pods/log`. A user granted it
//! cluster-wide searches everything; a user granted it in some namespaces has the query
//! narrowed to those (a `namespace` parameter outside them is refused with 403).

use std::collections::BTreeMap;
use std::time::Duration;

use axum::response::Response;
use http::StatusCode;
use serde_json::{Value, json};

use crate::ApiServer;
use crate::auth::User;
use crate::error::{ApiError, ApiResult};
use crate::rbac::Attributes;
use crate::rest::Query;

/// How long one node may take to answer.
const NODE_TIMEOUT: Duration = Duration::from_secs(10);

/// What one node answered.
enum Answer {
    Ok(Value),
    Rejected(String),
    Failed(String),
}

async fn ask(server: &ApiServer, node: &Value, path: &str) -> Answer {
    let name = node
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let attempt = async {
        let (stream, address) = crate::proxy::dial(server, node, name)
            .await
            .map_err(|e| e.message)?;
        let request = http::Request::get(path)
            .header(http::header::HOST, address)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = kelson_common::proxy::forward(stream, request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    match tokio::time::timeout(NODE_TIMEOUT, attempt).await {
        Err(_) => Answer::Failed(format!("no answer within {}s", NODE_TIMEOUT.as_secs())),
        Ok(Err(error)) => Answer::Failed(error),
        Ok(Ok((status, body))) => {
            let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let error = || {
                value["error"].as_str().map_or_else(
                    || String::from_utf8_lossy(&body).into_owned(),
                    str::to_owned,
                )
            };
            if status == StatusCode::BAD_REQUEST {
                Answer::Rejected(error())
            } else if status == StatusCode::NOT_FOUND {
                // a kubelet without a log pipeline (--disable-logpipe)
                Answer::Failed("no log pipeline on this node".to_owned())
            } else if !status.is_success() {
                Answer::Failed(format!("{status}: {}", error()))
            } else {
                Answer::Ok(value)
            }
        }
    }
}

/// The namespaces whose logs `user` may read: `None` for all of them.
///
/// # Errors
/// 403 when `user` may read no logs at all or asks for a namespace outside its grants.
async fn readable_namespaces(
    server: &ApiServer,
    user: &User,
    query: &Query,
) -> ApiResult<Option<Vec<String>>> {
    let may = |namespace: &str| {
        server.authorizer.allows(
            user,
            &Attributes::resource("get", "", "pods", "log", namespace, ""),
        )
    };
    if may("") {
        return Ok(None);
    }
    if let Some(namespace) = query.get("namespace").filter(|n| !n.is_empty()) {
        server.authorizer.check(
            user,
            &Attributes::resource("get", "", "pods", "log", namespace, ""),
        )?;
        return Ok(Some(vec![namespace.to_owned()]));
    }
    let readable: Vec<String> = crate::resource_metrics::list(server, "namespaces", None)
        .await?
        .iter()
        .map(|ns| crate::meta::name(ns).to_owned())
        .filter(|ns| may(ns))
        .collect();
    if readable.is_empty() {
        return Err(crate::rbac::forbidden(
            user,
            &Attributes::resource("get", "", "pods", "log", "", ""),
        ));
    }
    Ok(Some(readable))
}

/// `GET /kelson/v1/logs/{search,histogram}` with the node API's parameters, narrowed to the
/// namespaces `user` may read logs of.
///
/// # Errors
/// 400 when a node rejects the query; 403 when `user` may not read what it asks for; 404 for
/// another path.
pub async fn handle(
    server: &ApiServer,
    user: &User,
    kind: &str,
    query: &Query,
) -> ApiResult<Response> {
    if !matches!(kind, "search" | "histogram" | "tail") {
        return Err(ApiError::new(
            404,
            "NotFound",
            format!("no log API {kind:?}: use search, histogram or tail"),
        ));
    }
    let readable = readable_namespaces(server, user, query).await?;
    let limit: usize = query
        .get("limit")
        .map_or(Ok(100), str::parse)
        .map_err(|_| ApiError::bad_request("invalid limit"))?;
    let offset: usize = query
        .get("offset")
        .map_or(Ok(0), str::parse)
        .map_err(|_| ApiError::bad_request("invalid offset"))?;
    // each node returns its newest offset+limit lines; the merge pages over them
    let forwarded = {
        let mut serializer = form_urlencoded::Serializer::new(String::new());
        for (key, value) in query.pairs() {
            let narrowed = key == "namespaces" && readable.is_some();
            if key != "limit" && key != "offset" && !narrowed {
                serializer.append_pair(key, value);
            }
        }
        if let Some(readable) = &readable {
            // the user's own `namespaces`, within what it may read
            let asked: Option<Vec<&str>> = query
                .get("namespaces")
                .map(|list| list.split(',').map(str::trim).collect());
            let allowed: Vec<&str> = readable
                .iter()
                .map(String::as_str)
                .filter(|ns| asked.as_ref().is_none_or(|asked| asked.contains(ns)))
                .collect();
            serializer.append_pair("namespaces", &allowed.join(","));
        }
        if kind == "search" {
            serializer.append_pair("limit", &(offset + limit).to_string());
        }
        serializer.finish()
    };
    let path = format!("/logs/api/v1/{kind}?{forwarded}");
    let started = std::time::Instant::now();
    let nodes = crate::resource_metrics::list(server, "nodes", None).await?;
    if kind == "tail" {
        return tail(server, &nodes, &path).await;
    }
    let answers =
        futures::future::join_all(nodes.iter().map(|node| ask(server, node, &path))).await;
    let mut errors = Vec::new();
    let mut answered = Vec::new();
    for (node, answer) in nodes.iter().zip(answers) {
        let name = node
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        match answer {
            Answer::Ok(value) => answered.push((name, value)),
            Answer::Rejected(error) => return Err(ApiError::bad_request(error)),
            Answer::Failed(error) => errors.push(json!({"node": name, "error": error})),
        }
    }
    let took_ms = started.elapsed().as_secs_f64() * 1000.0;
    let body = if kind == "search" {
        merge_hits(answered, offset, limit, errors, took_ms)
    } else {
        merge_buckets(answered, errors, took_ms)
    };
    Ok(crate::rest::json_response(StatusCode::OK, &body))
}

/// Why a node's live tail did not open.
enum Refused {
    /// The node rejected the query (400).
    Rejected(String),
    /// The node could not be reached or failed.
    Failed(String),
}

/// Opens one node's live tail: its lines, or what went wrong.
async fn open_tail(
    server: &ApiServer,
    node: &Value,
    path: &str,
) -> Result<hyper::body::Incoming, Refused> {
    let name = crate::meta::name(node).to_owned();
    let attempt = async {
        let (stream, address) = crate::proxy::dial(server, node, &name)
            .await
            .map_err(|e| Refused::Failed(e.message))?;
        let request = http::Request::get(path)
            .header(http::header::HOST, address)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| Refused::Failed(e.to_string()))?;
        kelson_common::proxy::forward(stream, request)
            .await
            .map_err(|e| Refused::Failed(e.to_string()))
    };
    let response = tokio::time::timeout(NODE_TIMEOUT, attempt)
        .await
        .map_err(|_| Refused::Failed(format!("no answer within {}s", NODE_TIMEOUT.as_secs())))??;
    let status = response.status();
    if status.is_success() {
        return Ok(response.into_body());
    }
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .map(http_body_util::Collected::to_bytes)
        .unwrap_or_default();
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let error = value["error"].as_str().map_or_else(
        || String::from_utf8_lossy(&body).into_owned(),
        str::to_owned,
    );
    if status == StatusCode::BAD_REQUEST {
        Err(Refused::Rejected(error))
    } else {
        Err(Refused::Failed(format!("{status}: {error}")))
    }
}

/// `GET /kelson/v1/logs/tail`: every node's live tail merged into one stream of
/// newline-delimited JSON hits, as lines arrive; a node that cannot be reached shows as one
/// `{"node": ..., "error": ...}` line and the others go on.
async fn tail(server: &ApiServer, nodes: &[Value], path: &str) -> ApiResult<Response> {
    use futures::StreamExt as _;
    let opened =
        futures::future::join_all(nodes.iter().map(|node| open_tail(server, node, path))).await;
    let mut streams = Vec::new();
    for (node, opened) in nodes.iter().zip(opened) {
        let name = crate::meta::name(node).to_owned();
        match opened {
            Ok(body) => {
                let node = name.clone();
                streams.push(
                    kelson_common::ndjson::lines(body)
                        .map(move |line| match line {
                            Ok(line) => {
                                let mut line = line.to_vec();
                                line.push(b'\n');
                                bytes::Bytes::from(line)
                            }
                            Err(error) => error_line(&node, &error),
                        })
                        .boxed(),
                );
            }
            Err(Refused::Rejected(error)) => return Err(ApiError::bad_request(error)),
            Err(Refused::Failed(error)) => {
                streams.push(futures::stream::iter([error_line(&name, &error)]).boxed());
            }
        }
    }
    let merged = futures::stream::select_all(streams).map(Ok::<_, std::convert::Infallible>);
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/x-ndjson")
        .body(axum::body::Body::from_stream(merged))
        .unwrap_or_else(|_| {
            axum::response::IntoResponse::into_response(StatusCode::INTERNAL_SERVER_ERROR)
        }))
}

fn error_line(node: &str, error: &str) -> bytes::Bytes {
    let mut line = serde_json::to_vec(&json!({"node": node, "error": error})).unwrap_or_default();
    line.push(b'\n');
    bytes::Bytes::from(line)
}

fn merge_hits(
    answered: Vec<(String, Value)>,
    offset: usize,
    limit: usize,
    errors: Vec<Value>,
    took_ms: f64,
) -> Value {
    let mut total = 0;
    let mut end = i64::MIN;
    let mut hits = Vec::new();
    let nodes: Vec<&String> = answered.iter().map(|(name, _)| name).collect();
    for (_, value) in &answered {
        total += value["total"].as_u64().unwrap_or(0);
        end = end.max(value["end"].as_i64().unwrap_or(i64::MIN));
        hits.extend(value["hits"].as_array().cloned().unwrap_or_default());
    }
    hits.sort_by_key(|hit| std::cmp::Reverse(hit["timestamp_ns"].as_i64().unwrap_or(0)));
    let hits: Vec<Value> = hits.into_iter().skip(offset).take(limit).collect();
    json!({
        "total": total,
        "end": end,
        "took_ms": took_ms,
        "nodes": nodes,
        "errors": errors,
        "hits": hits,
    })
}

fn merge_buckets(answered: Vec<(String, Value)>, errors: Vec<Value>, took_ms: f64) -> Value {
    let mut buckets: BTreeMap<i64, u64> = BTreeMap::new();
    let mut interval = Value::Null;
    let nodes: Vec<&String> = answered.iter().map(|(name, _)| name).collect();
    for (_, value) in &answered {
        interval = value["interval"].clone();
        for bucket in value["buckets"].as_array().into_iter().flatten() {
            if let (Some(start), Some(count)) = (bucket["start"].as_i64(), bucket["count"].as_u64())
            {
                *buckets.entry(start).or_insert(0) += count;
            }
        }
    }
    let buckets: Vec<Value> = buckets
        .into_iter()
        .map(|(start, count)| json!({"start": start, "count": count}))
        .collect();
    json!({
        "interval": interval,
        "took_ms": took_ms,
        "nodes": nodes,
        "errors": errors,
        "buckets": buckets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_merge_newest_first_and_page() {
        let a = json!({"total": 2, "end": 10, "hits": [{"timestamp_ns": 9, "m": "a9"}, {"timestamp_ns": 3, "m": "a3"}]});
        let b = json!({"total": 1, "end": 8, "hits": [{"timestamp_ns": 7, "m": "b7"}]});
        let merged = merge_hits(vec![("a".into(), a), ("b".into(), b)], 1, 5, vec![], 1.0);
        assert_eq!(merged["total"], 3);
        assert_eq!(merged["end"], 10);
        let order: Vec<&str> = merged["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["m"].as_str().unwrap())
            .collect();
        assert_eq!(order, ["b7", "a3"]);
        let buckets = merge_buckets(
            vec![
                (
                    "a".into(),
                    json!({"interval": 60, "buckets": [{"start": 0, "count": 2}, {"start": 60, "count": 1}]}),
                ),
                (
                    "b".into(),
                    json!({"interval": 60, "buckets": [{"start": 60, "count": 4}]}),
                ),
            ],
            vec![json!({"node": "c", "error": "down"})],
            1.0,
        );
        assert_eq!(
            buckets["buckets"],
            json!([{"start": 0, "count": 2}, {"start": 60, "count": 5}])
        );
        assert_eq!(buckets["errors"][0]["node"], "c");
    }
}
