//! A Loki-compatible query API, so Grafana's Loki data source (and other Loki clients) can read
//! the index: `GET /loki/api/v1/query_range`, `/loki/api/v1/query`, `/loki/api/v1/labels`,
//! `/loki/api/v1/label/{name}/values`, and `/loki/api/v1/tail` (a WebSocket: the newest lines,
//! then new ones as they are indexed, for Grafana's live mode), with a LogQL subset:
//! - stream selectors `{namespace="shop", pod=~"web-.*", level!="debug", app="web"}` over
//!   `namespace`, `pod`, `container`, `node`, `stream`, `level`, `tag` (regex matchers there),
//!   and pod labels or fields (`=` and `!=`);
//! - line filters `|= "text"`, `!= "text"` (matched by words, in order), `|~ "regex"`,
//!   `!~ "regex"` (checked on the lines returned);
//! - metric queries `count_over_time(SELECTOR [1m])`, `rate(...)`, and either under
//!   `sum(...)` or `sum by (label, ...) (...)` with labels among the exact fields.
//!
//! Anything else is a 400 with Loki's `parse error` wording.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::index::LogIndex;
use crate::index::query::{Clause, Hit, SearchRequest};
use crate::record::now_ns;

/// The exact fields, as Loki labels.
const EXACT: [&str; 7] = [
    "namespace",
    "pod",
    "container",
    "node",
    "stream",
    "level",
    "tag",
];

/// A parsed LogQL expression.
#[derive(Debug, PartialEq)]
pub enum Expr {
    /// A log query.
    Logs(Selector),
    /// A metric query.
    Count {
        /// What to count.
        selector: Selector,
        /// The range, in ns.
        range: i64,
        /// Divide by the range in seconds.
        rate: bool,
        /// `sum` over everything (`Some(empty)`) or by these labels; `None`: no `sum`.
        by: Option<Vec<String>>,
    },
}

/// A stream selector and its line filters.
#[derive(Debug, Default, PartialEq)]
pub struct Selector {
    /// Index constraints.
    pub clauses: Vec<Clause>,
    /// Exact equalities (the series' labels).
    pub equal: Vec<(String, String)>,
    /// `|~` (true) and `!~` (false) regexes, checked on the lines.
    pub regexes: Vec<(String, bool)>,
}

struct Parser<'a> {
    text: &'a str,
    at: usize,
}

fn error(message: impl std::fmt::Display) -> String {
    format!("parse error : {message}")
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        &self.text[self.at..]
    }

    fn skip_space(&mut self) {
        let trimmed = self.rest().trim_start();
        self.at = self.text.len() - trimmed.len();
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_space();
        if self.rest().starts_with(token) {
            self.at += token.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, token: &str) -> Result<(), String> {
        if self.eat(token) {
            Ok(())
        } else {
            Err(error(format!("expected {token:?} at {:?}", self.rest())))
        }
    }

    fn identifier(&mut self) -> Result<&'a str, String> {
        self.skip_space();
        let rest = self.rest();
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end == 0 {
            return Err(error(format!("expected a name at {rest:?}")));
        }
        self.at += end;
        Ok(&rest[..end])
    }

    fn string(&mut self) -> Result<String, String> {
        self.skip_space();
        let rest = self.rest();
        let quote = rest
            .chars()
            .next()
            .filter(|c| matches!(c, '"' | '`'))
            .ok_or_else(|| error(format!("expected a string at {rest:?}")))?;
        let mut value = String::new();
        let mut chars = rest.char_indices().skip(1);
        while let Some((i, c)) = chars.next() {
            if c == quote {
                self.at += i + 1;
                return Ok(value);
            }
            if c == '\\' && quote == '"' {
                match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, 't')) => value.push('\t'),
                    Some((_, other)) => value.push(other),
                    None => break,
                }
            } else {
                value.push(c);
            }
        }
        Err(error("unterminated string"))
    }

    fn selector(&mut self) -> Result<Selector, String> {
        self.expect("{")?;
        let mut selector = Selector::default();
        loop {
            if self.eat("}") {
                break;
            }
            let name = self.identifier()?;
            let name = match name {
                "node_name" => "node",
                "detected_level" => "level",
                other => other,
            };
            let op = ["=~", "!~", "!=", "="]
                .into_iter()
                .find(|op| self.eat(op))
                .ok_or_else(|| error(format!("expected a matcher after {name}")))?;
            let value = self.string()?;
            let exact = EXACT.contains(&name);
            match (op, exact) {
                ("=", true) => {
                    selector.equal.push((name.to_owned(), value.clone()));
                    selector.clauses.push(Clause::Regex {
                        field: name.to_owned(),
                        pattern: regex::escape(&value),
                        negate: false,
                    });
                }
                ("!=", true) => selector
                    .clauses
                    .push(Clause::NotEqual(name.to_owned(), value)),
                ("=~" | "!~", true) => {
                    regex::Regex::new(&value).map_err(error)?;
                    selector.clauses.push(Clause::Regex {
                        field: name.to_owned(),
                        pattern: value,
                        negate: op == "!~",
                    });
                }
                ("=" | "!=", false) => {
                    if op == "=" {
                        selector.equal.push((name.to_owned(), value.clone()));
                    }
                    selector.clauses.push(Clause::Attribute {
                        key: name.to_owned(),
                        value,
                        negate: op == "!=",
                    });
                }
                _ => {
                    return Err(error(format!(
                        "regex matchers work on {} only, not {name}",
                        EXACT.join(", ")
                    )));
                }
            }
            if !self.eat(",") {
                self.expect("}")?;
                break;
            }
        }
        if selector.clauses.is_empty() {
            return Err(error("queries require at least one matcher"));
        }
        loop {
            let op = ["|=", "!=", "|~", "!~"].into_iter().find(|op| self.eat(op));
            let Some(op) = op else { break };
            let value = self.string()?;
            match op {
                "|=" | "!=" => {
                    if !value.is_empty() {
                        selector.clauses.push(Clause::Phrase {
                            text: value,
                            negate: op == "!=",
                        });
                    }
                }
                _ => {
                    regex::Regex::new(&value).map_err(error)?;
                    selector.regexes.push((value, op == "|~"));
                }
            }
        }
        self.skip_space();
        if self.rest().starts_with('|') {
            return Err(error(format!(
                "unsupported pipeline stage at {:?}",
                self.rest()
            )));
        }
        Ok(selector)
    }

    fn range_function(&mut self, name: &str, by: Option<Vec<String>>) -> Result<Expr, String> {
        self.expect("(")?;
        let selector = self.selector()?;
        self.expect("[")?;
        self.skip_space();
        let end = self
            .rest()
            .find(']')
            .ok_or_else(|| error("expected ] after the range"))?;
        let range = crate::api::parse_duration(&self.rest()[..end]).map_err(error)?;
        self.at += end + 1;
        self.expect(")")?;
        if selector.regexes.iter().any(|_| true) {
            return Err(error(
                "regex line filters are supported in log queries only",
            ));
        }
        Ok(Expr::Count {
            selector,
            range,
            rate: name == "rate",
            by,
        })
    }

    fn labels(&mut self) -> Result<Vec<String>, String> {
        self.expect("(")?;
        let mut labels = Vec::new();
        while !self.eat(")") {
            let label = self.identifier()?;
            if !EXACT.contains(&label) {
                return Err(error(format!(
                    "sum by ({label}): only {} can group",
                    EXACT.join(", ")
                )));
            }
            labels.push(label.to_owned());
            self.eat(",");
        }
        Ok(labels)
    }

    fn expr(&mut self) -> Result<Expr, String> {
        self.skip_space();
        if self.rest().starts_with('{') {
            return Ok(Expr::Logs(self.selector()?));
        }
        let name = self.identifier()?;
        match name {
            "count_over_time" | "rate" => self.range_function(name, None),
            "sum" => {
                let mut by = None;
                if self.eat("by") {
                    by = Some(self.labels()?);
                }
                self.expect("(")?;
                let inner = self.identifier()?;
                if !matches!(inner, "count_over_time" | "rate") {
                    return Err(error(format!("unsupported function {inner}")));
                }
                let mut expr = self.range_function(inner, None)?;
                self.expect(")")?;
                if by.is_none() && self.eat("by") {
                    by = Some(self.labels()?);
                }
                if let Expr::Count { by: slot, .. } = &mut expr {
                    *slot = Some(by.unwrap_or_default());
                }
                Ok(expr)
            }
            other => Err(error(format!("unsupported function {other}"))),
        }
    }
}

/// Parses a LogQL expression of the supported subset.
///
/// # Errors
/// A Loki-style `parse error : ...`.
pub fn parse(text: &str) -> Result<Expr, String> {
    let mut parser = Parser { text, at: 0 };
    let expr = parser.expr()?;
    parser.skip_space();
    if !parser.rest().is_empty() {
        return Err(error(format!("unexpected {:?}", parser.rest())));
    }
    Ok(expr)
}

/// Parses a Loki time: ns since the epoch, fractional seconds, or RFC 3339.
fn loki_time(text: &str) -> Result<i64, String> {
    if let Ok(ns) = text.parse::<i64>() {
        // seconds when short, nanoseconds otherwise (as Loki guesses)
        return Ok(if ns.abs() < 100_000_000_000 {
            ns * 1_000_000_000
        } else {
            ns
        });
    }
    if let Ok(seconds) = text.parse::<f64>() {
        return Ok((seconds * 1e9) as i64);
    }
    crate::format::parse_time(text.as_bytes()).ok_or_else(|| format!("invalid time {text:?}"))
}

fn step_of(text: &str) -> Result<i64, String> {
    if let Ok(seconds) = text.parse::<f64>() {
        return Ok((seconds * 1e9) as i64);
    }
    crate::api::parse_duration(text)
}

fn bad(message: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, message.into()).into_response()
}

fn success(data: Value) -> Response {
    axum::Json(json!({"status": "success", "data": data})).into_response()
}

fn stream_labels(hit: &Hit) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    for (name, value) in [
        ("namespace", &hit.namespace),
        ("pod", &hit.pod),
        ("container", &hit.container),
        ("node", &hit.node),
        ("stream", &hit.stream),
        ("level", &hit.level),
    ] {
        if !value.is_empty() {
            labels.insert(name.to_owned(), value.clone());
        }
    }
    if labels.is_empty() {
        labels.insert("tag".to_owned(), hit.tag.clone());
    }
    labels
}

/// Runs a parsed query over `[start, end]`.
pub(crate) fn run(
    index: &LogIndex,
    expr: Expr,
    start: i64,
    end: i64,
    limit: usize,
    forward: bool,
    step: i64,
) -> Result<Value, String> {
    match expr {
        Expr::Logs(selector) => {
            let regexes: Vec<(regex::Regex, bool)> = selector
                .regexes
                .iter()
                .map(|(r, keep)| regex::Regex::new(r).map(|r| (r, *keep)))
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            // with regex filters, look further and keep the lines that pass
            let fetch = if regexes.is_empty() {
                limit
            } else {
                (limit * 10).min(10_000)
            };
            let request = SearchRequest {
                clauses: selector.clauses,
                start: Some(start),
                end: Some(end.saturating_add(1)),
                limit: fetch,
                ..SearchRequest::default()
            };
            let found = index.search(&request).map_err(|e| e.to_string())?;
            let mut hits: Vec<Hit> = found
                .hits
                .into_iter()
                .filter(|hit| {
                    regexes
                        .iter()
                        .all(|(r, keep)| r.is_match(&hit.message) == *keep)
                })
                .take(limit)
                .collect();
            if forward {
                hits.reverse();
            }
            let result = streams(&hits);
            Ok(json!({"resultType": "streams", "result": result, "stats": {}}))
        }
        Expr::Count {
            selector,
            range,
            rate,
            by,
        } => {
            let step = step.max(1_000_000);
            // buckets fine enough for both the step and the range
            let bucket = gcd(step, range).max(1_000_000);
            let groups: Vec<BTreeMap<String, String>> = match &by {
                Some(labels) if !labels.is_empty() => {
                    let mut groups = vec![BTreeMap::new()];
                    for label in labels {
                        let values = index
                            .values(label, start.saturating_sub(range), end)
                            .map_err(|e| e.to_string())?;
                        groups = groups
                            .into_iter()
                            .flat_map(|group| {
                                values.iter().map(move |value| {
                                    let mut group = group.clone();
                                    group.insert(label.clone(), value.clone());
                                    group
                                })
                            })
                            .collect();
                    }
                    groups
                }
                Some(_) => vec![BTreeMap::new()],
                None => vec![selector.equal.iter().cloned().collect()],
            };
            let mut result = Vec::new();
            for group in groups {
                let mut clauses = selector.clauses.clone();
                if by.as_ref().is_some_and(|b| !b.is_empty()) {
                    for (label, value) in &group {
                        clauses.push(Clause::Regex {
                            field: label.clone(),
                            pattern: regex::escape(value),
                            negate: false,
                        });
                    }
                }
                let request = SearchRequest {
                    clauses,
                    start: Some(start.saturating_sub(range)),
                    end: Some(end.saturating_add(1)),
                    ..SearchRequest::default()
                };
                let buckets = index
                    .histogram(&request, bucket)
                    .map_err(|e| e.to_string())?;
                let mut values = Vec::new();
                let mut t = start;
                while t <= end {
                    let count: u64 = buckets
                        .range((t - range + 1)..=t)
                        .map(|(_, c)| *c)
                        .sum::<u64>();
                    if count > 0 {
                        let value = if rate {
                            count as f64 / (range as f64 / 1e9)
                        } else {
                            count as f64
                        };
                        values.push(json!([t as f64 / 1e9, value.to_string()]));
                    }
                    t = t.saturating_add(step);
                }
                if !values.is_empty() {
                    result.push(json!({"metric": group, "values": values}));
                }
            }
            Ok(json!({"resultType": "matrix", "result": result, "stats": {}}))
        }
    }
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a.abs() } else { gcd(b, a % b) }
}

type Params = Query<Vec<(String, String)>>;

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

async fn query_range(State(index): State<Arc<LogIndex>>, Query(params): Params) -> Response {
    let Some(query) = param(&params, "query") else {
        return bad("parse error : no query");
    };
    let expr = match parse(query) {
        Ok(expr) => expr,
        Err(message) => return bad(message),
    };
    let times = (|| -> Result<(i64, i64, usize, bool, i64), String> {
        let end = param(&params, "end").map_or(Ok(now_ns()), loki_time)?;
        let start = param(&params, "start").map_or(Ok(end - 3_600_000_000_000), loki_time)?;
        let limit = param(&params, "limit").map_or(Ok(100), |l| {
            l.parse().map_err(|_| format!("invalid limit {l:?}"))
        })?;
        let forward = param(&params, "direction") == Some("forward");
        let step = match param(&params, "step") {
            Some(step) => step_of(step)?,
            None => ((end - start) / 250).max(1_000_000_000),
        };
        Ok((start, end, limit, forward, step))
    })();
    let (start, end, limit, forward, step) = match times {
        Ok(times) => times,
        Err(message) => return bad(message),
    };
    if (end - start) / step.max(1) > 11_000 {
        return bad("exceeded maximum resolution of 11,000 points per time series");
    }
    match tokio::task::spawn_blocking(move || {
        run(&index, expr, start, end, limit.min(10_000), forward, step)
    })
    .await
    {
        Ok(Ok(data)) => success(data),
        Ok(Err(message)) => bad(message),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

async fn instant(state: State<Arc<LogIndex>>, Query(mut params): Params) -> Response {
    // an instant query is a range query of one step ending at `time`
    let time = param(&params, "time").map(str::to_owned);
    params.retain(|(k, _)| k != "start" && k != "end" && k != "step" && k != "time");
    let end = match time.as_deref().map_or(Ok(now_ns()), loki_time) {
        Ok(end) => end,
        Err(message) => return bad(message),
    };
    params.push(("end".into(), end.to_string()));
    params.push(("start".into(), end.to_string()));
    params.push(("step".into(), "1".into()));
    query_range(state, Query(params)).await
}

async fn labels(State(_): State<Arc<LogIndex>>) -> Response {
    success(json!(EXACT))
}

async fn label_values(
    State(index): State<Arc<LogIndex>>,
    Path(name): Path<String>,
    Query(params): Params,
) -> Response {
    let end = param(&params, "end").map_or(Ok(now_ns()), loki_time);
    let start = param(&params, "start").map_or(Ok(i64::MIN), loki_time);
    let (Ok(start), Ok(end)) = (start, end) else {
        return bad("invalid start or end");
    };
    let name = match name.as_str() {
        "node_name" => "node".to_owned(),
        "detected_level" => "level".to_owned(),
        _ => name,
    };
    match tokio::task::spawn_blocking(move || index.values(&name, start, end.saturating_add(1)))
        .await
    {
        Ok(Ok(values)) => success(json!(values)),
        Ok(Err(error)) => bad(error.to_string()),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

/// Entries grouped into Loki streams by their labels, in the order given within each.
fn streams(hits: &[Hit]) -> Vec<Value> {
    let mut streams: BTreeMap<BTreeMap<String, String>, Vec<Value>> = BTreeMap::new();
    for hit in hits {
        streams
            .entry(stream_labels(hit))
            .or_default()
            .push(json!([hit.timestamp_ns.to_string(), hit.message]));
    }
    streams
        .into_iter()
        .map(|(stream, values)| json!({"stream": stream, "values": values}))
        .collect()
}

/// One Loki tail frame: entries grouped into streams by their labels.
fn tail_frame(hits: &[Hit], dropped: u64) -> String {
    let streams = streams(hits);
    let dropped: Vec<Value> = (0..dropped.min(100))
        .map(|_| json!({"labels": {}, "timestamp": now_ns().to_string()}))
        .collect();
    json!({"streams": streams, "dropped_entries": if dropped.is_empty() { Value::Null } else { json!(dropped) }})
        .to_string()
}

/// `GET /loki/api/v1/tail` (a WebSocket, as Grafana's live mode opens it): the newest `limit`
/// lines (default 100) since `start` (default an hour ago), then new lines as the index commits
/// them, each frame `{"streams": [...], "dropped_entries": ...}` as Loki sends them.
async fn tail(
    State(index): State<Arc<LogIndex>>,
    Query(params): Params,
    request: axum::extract::Request,
) -> Response {
    use futures::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    let Some(query) = param(&params, "query") else {
        return bad("parse error : no query");
    };
    let selector = match parse(query) {
        Ok(Expr::Logs(selector)) => selector,
        Ok(_) => return bad("tail takes a log query, not a metric query"),
        Err(message) => return bad(message),
    };
    let start = match param(&params, "start").map_or(Ok(now_ns() - 3_600_000_000_000), loki_time) {
        Ok(start) => start,
        Err(message) => return bad(message),
    };
    let limit: usize = match param(&params, "limit").map_or(Ok(100), str::parse) {
        Ok(limit) => limit,
        Err(_) => return bad("invalid limit"),
    };
    let regexes: Vec<(regex::Regex, bool)> = match selector
        .regexes
        .iter()
        .map(|(r, keep)| regex::Regex::new(r).map(|r| (r, *keep)))
        .collect::<Result<_, _>>()
    {
        Ok(regexes) => regexes,
        Err(error) => return bad(error.to_string()),
    };
    let filter = match crate::live::LiveFilter::new(SearchRequest {
        clauses: selector.clauses.clone(),
        ..SearchRequest::default()
    }) {
        Ok(filter) => filter,
        Err(message) => return bad(message),
    };
    let Some(key) = request
        .headers()
        .get("sec-websocket-key")
        .map(|k| tokio_tungstenite::tungstenite::handshake::derive_accept_key(k.as_bytes()))
    else {
        return bad("the tail API is a WebSocket: connect with Upgrade: websocket");
    };
    // subscribe before reading history, so that no line falls between them; lines added
    // before the subscription are searchable after the second commit from now (the first may
    // have begun before them), and lines in both are shown once
    let mut live = index.subscribe();
    let mut commits = index.commits();
    let history = tokio::spawn(async move {
        let settled = async {
            for _ in 0..2 {
                if commits.changed().await.is_err() {
                    break;
                }
            }
        };
        if index.uncommitted() {
            let _ = tokio::time::timeout(std::time::Duration::from_millis(2500), settled).await;
        }
        tokio::task::spawn_blocking(move || {
            run(
                &index,
                Expr::Logs(selector),
                start,
                now_ns(),
                limit.min(10_000),
                true,
                0,
            )
        })
        .await
    });
    let on_upgrade = hyper::upgrade::on(request);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
            hyper_util::rt::TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        let history = history.await.ok().and_then(Result::ok).and_then(Result::ok);
        let mut shown = std::collections::HashSet::new();
        if let Some(history) = history {
            let mut hits = Vec::new();
            for stream in history["result"].as_array().into_iter().flatten() {
                for value in stream["values"].as_array().into_iter().flatten() {
                    shown.insert((
                        value[0].as_str().unwrap_or("").to_owned(),
                        value[1].as_str().unwrap_or("").to_owned(),
                    ));
                }
                hits.push(stream.clone());
            }
            if !hits.is_empty() {
                let frame = json!({"streams": hits, "dropped_entries": null}).to_string();
                if socket.send(Message::text(frame)).await.is_err() {
                    return;
                }
            }
        }
        loop {
            tokio::select! {
                received = live.recv() => {
                    use tokio::sync::broadcast::error::RecvError;
                    let frame = match received {
                        Ok(record) => {
                            if !filter.matches(&record)
                                || !regexes.iter().all(|(r, keep)| r.is_match(&record.message) == *keep)
                                || shown.remove(&(record.timestamp.to_string(), record.message.clone()))
                            {
                                continue;
                            }
                            tail_frame(&[crate::live::hit(&record)], 0)
                        }
                        Err(RecvError::Lagged(missed)) => tail_frame(&[], missed),
                        Err(RecvError::Closed) => break,
                    };
                    if socket.send(Message::text(frame)).await.is_err() {
                        break;
                    }
                }
                incoming = socket.next() => match incoming {
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                    Some(Ok(_)) => {}
                },
            }
        }
        let _ = socket.close(None).await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(axum::http::header::CONNECTION, "upgrade")
        .header(axum::http::header::UPGRADE, "websocket")
        .header("sec-websocket-accept", key)
        .body(axum::body::Body::empty())
        .unwrap_or_default()
}

/// The Loki query routes over `index`.
pub fn router(index: Arc<LogIndex>) -> axum::Router {
    axum::Router::new()
        .route("/loki/api/v1/query_range", axum::routing::get(query_range))
        .route("/loki/api/v1/query", axum::routing::get(instant))
        .route("/loki/api/v1/labels", axum::routing::get(labels))
        .route("/loki/api/v1/tail", axum::routing::get(tail))
        .route(
            "/loki/api/v1/label/{name}/values",
            axum::routing::get(label_values),
        )
        .with_state(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logql_subset() {
        let Expr::Logs(selector) = parse(
            r#"{namespace="shop", pod=~"web-.*", app="web"} |= "timeout" != "retry" |~ "5\\d\\d""#,
        )
        .unwrap() else {
            panic!("a log query");
        };
        assert_eq!(
            selector.equal,
            vec![
                ("namespace".into(), "shop".into()),
                ("app".into(), "web".into())
            ]
        );
        assert_eq!(selector.clauses.len(), 5);
        assert_eq!(selector.regexes, vec![("5\\d\\d".into(), true)]);
        let Expr::Count {
            range, rate, by, ..
        } = parse(r#"sum by (level) (count_over_time({namespace="shop"} [1m]))"#).unwrap()
        else {
            panic!("a metric query");
        };
        assert_eq!(
            (range, rate, by),
            (60_000_000_000, false, Some(vec!["level".to_owned()]))
        );
        assert!(matches!(
            parse(r#"sum(rate({pod="x"}[5m])) by (pod)"#).unwrap(),
            Expr::Count {
                rate: true,
                by: Some(_),
                ..
            }
        ));
        for bad in [
            "{}",
            r#"{app=~"web.*"}"#,
            r#"{pod="x"} | json"#,
            r#"avg_over_time({pod="x"}[1m])"#,
            r#"{pod="x""#,
            r#"sum by (app) (count_over_time({pod="x"}[1m]))"#,
        ] {
            assert!(parse(bad).unwrap_err().starts_with("parse error"), "{bad}");
        }
    }
}
