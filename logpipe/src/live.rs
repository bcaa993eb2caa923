//! Live tail: records as the index commits them (when searches find them too), filtered in memory with the filters of a search
//! (`GET /api/v1/tail`, newline-delimited JSON hits, streamed until the client goes away).
//!
//! The exact filters (`namespace`, `pod`, `container`, `node`, `stream`, `level`,
//! `namespaces`), `selector` and `fields` match as in a search, and so do the constraints
//! LogQL selectors and line filters compile to. The full-text `query` of a live tail takes
//! words (each must be a word of the line, case-insensitive), quoted phrases (words in that
//! order) and `field:value` terms; `AND` may join them. `OR`, `NOT`, `-` and parentheses need
//! the index: use a search for them.
//!
//! A subscriber that cannot keep up misses lines rather than slowing ingest: the stream then
//! carries `{"dropped": N}`.

use std::sync::Arc;

use crate::index::query::{Clause, Hit, SearchRequest};
use crate::record::LogRecord;

/// The words of a text as the index's tokenizer sees them: runs of letters and digits,
/// lowercased.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn contains_run(haystack: &[String], needle: &[String]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn exact<'r>(record: &'r LogRecord, field: &str) -> Option<&'r str> {
    Some(match field {
        "namespace" => &record.namespace,
        "pod" => &record.pod,
        "container" => &record.container,
        "node" => &record.node,
        "stream" => record.stream,
        "level" => record.level,
        _ => return None,
    })
}

/// A search request compiled for matching records one by one.
#[derive(Debug)]
pub struct LiveFilter {
    request: SearchRequest,
    /// Phrases of the query (single words are one-word phrases).
    phrases: Vec<Vec<String>>,
    /// `field:value` terms of the query.
    terms: Vec<(String, String)>,
    /// Compiled regexes of the request's regex clauses, in clause order.
    regexes: Vec<regex::Regex>,
}

impl LiveFilter {
    /// Compiles `request`.
    ///
    /// # Errors
    /// A query a live tail cannot evaluate, or a regex that does not compile.
    pub fn new(request: SearchRequest) -> Result<Self, String> {
        let mut phrases = Vec::new();
        let mut terms = Vec::new();
        let mut rest = request.query.trim();
        while !rest.is_empty() {
            if let Some(quoted) = rest.strip_prefix('"') {
                let end = quoted
                    .find('"')
                    .ok_or("an unterminated quote in the query")?;
                phrases.push(words(&quoted[..end]));
                rest = quoted[end + 1..].trim_start();
                continue;
            }
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            let token = &rest[..end];
            rest = rest[end..].trim_start();
            if token == "AND" {
                continue;
            }
            if token == "OR"
                || token == "NOT"
                || token.starts_with('-')
                || token.contains(['(', ')'])
            {
                return Err(format!(
                    "a live tail takes words, quoted phrases and field:value terms, not {token:?}: search for it instead"
                ));
            }
            match token.split_once(':') {
                Some((field, value)) if exact(&LogRecord::default(), field).is_some() => {
                    terms.push((field.to_owned(), value.trim_matches('"').to_owned()));
                }
                _ => phrases.push(words(token)),
            }
        }
        let regexes = request
            .clauses
            .iter()
            .filter_map(|clause| match clause {
                Clause::Regex { pattern, .. } => Some(pattern),
                _ => None,
            })
            .map(|pattern| {
                regex::Regex::new(&format!("^(?:{pattern})$"))
                    .map_err(|e| format!("regex {pattern:?}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            request,
            phrases,
            terms,
            regexes,
        })
    }

    /// Whether `record` passes every filter.
    #[must_use]
    pub fn matches(&self, record: &LogRecord) -> bool {
        let request = &self.request;
        if request.start.is_some_and(|start| record.timestamp < start)
            || request.end.is_some_and(|end| record.timestamp >= end)
        {
            return false;
        }
        let exact_ok = request
            .filters
            .iter()
            .chain(&self.terms)
            .all(|(field, value)| exact(record, field) == Some(value.as_str()));
        let labels_ok = request
            .labels
            .iter()
            .all(|(key, value)| record.labels.get(key) == Some(value));
        let fields_ok = request
            .fields
            .iter()
            .all(|(key, value)| record.fields.get(key) == Some(value));
        if !(exact_ok && labels_ok && fields_ok) {
            return false;
        }
        let message = words(&record.message);
        if !self.phrases.iter().all(|p| contains_run(&message, p)) {
            return false;
        }
        let mut regexes = self.regexes.iter();
        request.clauses.iter().all(|clause| match clause {
            Clause::NotEqual(field, value) => exact(record, field) != Some(value.as_str()),
            Clause::Regex { field, negate, .. } => {
                let matched = regexes
                    .next()
                    .is_some_and(|re| re.is_match(exact(record, field).unwrap_or("")));
                matched != *negate
            }
            Clause::Attribute { key, value, negate } => {
                let found = record.labels.get(key).or_else(|| record.fields.get(key));
                (found == Some(value)) != *negate
            }
            Clause::Phrase { text, negate } => contains_run(&message, &words(text)) != *negate,
            Clause::OneOf { field, values } => {
                exact(record, field).is_some_and(|v| values.iter().any(|x| x == v))
            }
        })
    }
}

/// A record as a search hit.
#[must_use]
pub fn hit(record: &LogRecord) -> Hit {
    Hit {
        timestamp: jiff::Timestamp::from_nanosecond(i128::from(record.timestamp))
            .map(|t| t.to_string())
            .unwrap_or_default(),
        timestamp_ns: record.timestamp,
        namespace: record.namespace.to_string(),
        pod: record.pod.to_string(),
        container: record.container.to_string(),
        node: record.node.to_string(),
        stream: record.stream.to_owned(),
        level: record.level.to_owned(),
        tag: record.tag.to_string(),
        labels: (*record.labels).clone(),
        fields: (*record.fields).clone(),
        message: record.message.clone(),
    }
}

/// What the index sends to live subscribers.
pub type Feed = tokio::sync::broadcast::Sender<Arc<LogRecord>>;

/// A streaming response of the records `receiver` gets that pass `filter`: one JSON hit per
/// line, `{"dropped": N}` when this client fell behind, and an empty line 15 s after the last
/// line sent (so a client that went away is noticed).
pub fn ndjson(
    receiver: tokio::sync::broadcast::Receiver<Arc<LogRecord>>,
    filter: LiveFilter,
) -> axum::response::Response {
    use tokio::sync::broadcast::error::RecvError;
    // the empty line goes out 15 s after the last line sent, however many records went by
    // without matching, so a client that left is noticed on a busy node too
    let quiet = std::time::Duration::from_secs(15);
    let start = (receiver, filter, tokio::time::Instant::now() + quiet);
    let lines = futures::stream::unfold(start, move |(mut receiver, filter, due)| async move {
        loop {
            let next = tokio::time::timeout_at(due, receiver.recv()).await;
            let mut line = match next {
                Err(_) => Vec::new(),
                Ok(Ok(record)) if filter.matches(&record) => {
                    serde_json::to_vec(&hit(&record)).unwrap_or_default()
                }
                Ok(Ok(_)) => continue,
                Ok(Err(RecvError::Lagged(missed))) => {
                    serde_json::to_vec(&serde_json::json!({ "dropped": missed }))
                        .unwrap_or_default()
                }
                Ok(Err(RecvError::Closed)) => return None,
            };
            line.push(b'\n');
            return Some((
                Ok::<_, std::convert::Infallible>(bytes::Bytes::from(line)),
                (receiver, filter, tokio::time::Instant::now() + quiet),
            ));
        }
    });
    axum::response::Response::builder()
        .header(axum::http::header::CONTENT_TYPE, "application/x-ndjson")
        .body(axum::body::Body::from_stream(lines))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(message: &str) -> LogRecord {
        LogRecord {
            message: message.into(),
            namespace: "shop".into(),
            pod: "web-1".into(),
            level: "error",
            stream: "stderr",
            labels: Arc::new([("app".to_owned(), "web".to_owned())].into()),
            ..LogRecord::default()
        }
    }

    fn filter(params: &[(&str, &str)]) -> LiveFilter {
        let params: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        LiveFilter::new(crate::api::request_from_params(&params).unwrap()).unwrap()
    }

    #[test]
    fn live_filters_match_as_searches_do() {
        let line = record("Upstream timed out: connection refused (retrying)");
        assert!(filter(&[]).matches(&line));
        assert!(filter(&[("query", "timed AND refused")]).matches(&line));
        assert!(filter(&[("query", "\"connection refused\" level:error")]).matches(&line));
        assert!(!filter(&[("query", "\"refused connection\"")]).matches(&line));
        assert!(!filter(&[("query", "level:info")]).matches(&line));
        assert!(!filter(&[("query", "time")]).matches(&line), "whole words");
        assert!(filter(&[("namespace", "shop"), ("selector", "app=web")]).matches(&line));
        assert!(!filter(&[("pod", "web-2")]).matches(&line));
        assert!(filter(&[("namespaces", "a,shop")]).matches(&line));
        assert!(!filter(&[("namespaces", "a,b")]).matches(&line));
        let params = vec![("query".to_owned(), "a OR b".to_owned())];
        let request = crate::api::request_from_params(&params).unwrap();
        assert!(LiveFilter::new(request).unwrap_err().contains("search"));
        // what LogQL compiles to
        let mut request = SearchRequest {
            clauses: vec![
                Clause::Regex {
                    field: "pod".into(),
                    pattern: "web-.*".into(),
                    negate: false,
                },
                Clause::Phrase {
                    text: "timed out".into(),
                    negate: false,
                },
                Clause::NotEqual("stream".into(), "stdout".into()),
            ],
            ..SearchRequest::default()
        };
        assert!(LiveFilter::new(request.clone()).unwrap().matches(&line));
        request.clauses.push(Clause::Attribute {
            key: "app".into(),
            value: "web".into(),
            negate: true,
        });
        assert!(!LiveFilter::new(request).unwrap().matches(&line));
    }
}
