//! Queries over the partitions whose time span overlaps the request: full text (tantivy's
//! query syntax over the message, with `level:error`-style field terms), exact filters on
//! namespace, pod, container, node, stream, level and labels, a time range; newest first with
//! offset paging, or counts per interval for a histogram.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use serde::Serialize;
use tantivy::collector::{Collector, Count, SegmentCollector, TopDocs};
use tantivy::query::{AllQuery, BooleanQuery, Occur, Query, QueryParser, RangeQuery, TermQuery};
use tantivy::schema::{IndexRecordOption, Value};
use tantivy::{
    DocAddress, DocId, Order, Score, SegmentOrdinal, SegmentReader, TantivyDocument, Term,
};

use super::{LogIndex, Partition};
use crate::record::now_ns;

/// What to look for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SearchRequest {
    /// Full-text query over the message (empty: every line).
    pub query: String,
    /// Exact field filters: `namespace`, `pod`, `container`, `node`, `stream`, `level`.
    pub filters: Vec<(String, String)>,
    /// Exact label filters.
    pub labels: Vec<(String, String)>,
    /// Exact filters on the source's other attributes.
    pub fields: Vec<(String, String)>,
    /// More constraints (what LogQL selectors and line filters need).
    pub clauses: Vec<Clause>,
    /// Oldest line (ns since the epoch, inclusive).
    pub start: Option<i64>,
    /// Newest line (ns, exclusive; default: no limit — lines stamped ahead of this clock
    /// count too).
    pub end: Option<i64>,
    /// Lines per page.
    pub limit: usize,
    /// Lines to skip (paging).
    pub offset: usize,
}

/// A constraint beyond the plain filters.
#[derive(Clone, Debug, PartialEq)]
pub enum Clause {
    /// An exact field (`namespace`, `pod`, ...) is not this value.
    NotEqual(String, String),
    /// An exact field matches (or, negated, does not match) this regex, anchored at both ends.
    Regex {
        /// The field.
        field: String,
        /// The regex.
        pattern: String,
        /// Match the lines where it does not match.
        negate: bool,
    },
    /// A pod label or a field equals (or, negated, differs from) the value.
    Attribute {
        /// Label or field name.
        key: String,
        /// The value.
        value: String,
        /// Match the lines where it differs.
        negate: bool,
    },
    /// An exact field (`namespace`, ...) has one of these values (none: no line matches).
    OneOf {
        /// The field.
        field: String,
        /// The values.
        values: Vec<String>,
    },
    /// The message has (or, negated, lacks) these words, in this order.
    Phrase {
        /// The text.
        text: String,
        /// Match the lines without it.
        negate: bool,
    },
}

/// A bad request.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The query text does not parse.
    #[error("invalid query: {0}")]
    Parse(String),
    /// A filter names no field.
    #[error("unknown field {0:?} (namespace, pod, container, node, stream, level)")]
    Field(String),
    /// The search failed.
    #[error("search failed: {0}")]
    Search(#[from] tantivy::TantivyError),
}

/// One line found.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Hit {
    /// RFC 3339 time of the line.
    pub timestamp: String,
    /// Nanoseconds since the epoch.
    pub timestamp_ns: i64,
    /// Pod namespace.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Pod name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pod: String,
    /// Container name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub container: String,
    /// Node name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// stdout or stderr.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub stream: String,
    /// Severity found in the line.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub level: String,
    /// Routing tag.
    pub tag: String,
    /// Pod labels.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The source's other attributes.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
    /// The line.
    pub message: String,
}

/// Lines found, newest first.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SearchResult {
    /// Lines matching in all.
    pub total: u64,
    /// An end that keeps the next pages stable while lines keep arriving: pass it back with
    /// the next offset (just after this page's newest line, or the request's end).
    pub end: i64,
    /// This page.
    pub hits: Vec<Hit>,
}

const EXACT_FIELDS: [&str; 6] = ["namespace", "pod", "container", "node", "stream", "level"];

impl LogIndex {
    fn build_query(
        &self,
        partition: &Partition,
        request: &SearchRequest,
        end: i64,
    ) -> Result<Box<dyn Query>, QueryError> {
        let fields = self.fields();
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        if !request.query.trim().is_empty() {
            let mut parser = QueryParser::for_index(&partition.index, vec![fields.message]);
            parser.set_conjunction_by_default();
            let parsed = parser
                .parse_query(&request.query)
                .map_err(|e| QueryError::Parse(e.to_string()))?;
            clauses.push((Occur::Must, parsed));
        }
        for (name, value) in &request.filters {
            if !EXACT_FIELDS.contains(&name.as_str()) {
                return Err(QueryError::Field(name.clone()));
            }
            let field = partition
                .index
                .schema()
                .get_field(name)
                .map_err(|_| QueryError::Field(name.clone()))?;
            clauses.push((
                Occur::Must,
                Box::new(TermQuery::new(
                    Term::from_field_text(field, value),
                    IndexRecordOption::Basic,
                )),
            ));
        }
        let json_filters = request
            .labels
            .iter()
            .map(|kv| (fields.labels, kv))
            .chain(request.fields.iter().map(|kv| (fields.fields, kv)));
        for (field, (key, value)) in json_filters {
            let mut term = Term::from_field_json_path(field, key, false);
            term.append_type_and_str(value);
            clauses.push((
                Occur::Must,
                Box::new(TermQuery::new(term, IndexRecordOption::Basic)),
            ));
        }
        for clause in &request.clauses {
            clauses.push(self.clause(partition, clause)?);
        }
        let start = request.start.unwrap_or(i64::MIN);
        clauses.push((
            Occur::Must,
            Box::new(RangeQuery::new(
                Bound::Included(Term::from_field_i64(fields.ts, start)),
                Bound::Excluded(Term::from_field_i64(fields.ts, end)),
            )),
        ));
        if clauses.is_empty() {
            return Ok(Box::new(AllQuery));
        }
        Ok(Box::new(BooleanQuery::new(clauses)))
    }

    fn exact_field(
        &self,
        partition: &Partition,
        name: &str,
    ) -> Result<tantivy::schema::Field, QueryError> {
        if !EXACT_FIELDS.contains(&name) && name != "tag" {
            return Err(QueryError::Field(name.to_owned()));
        }
        partition
            .index
            .schema()
            .get_field(name)
            .map_err(|_| QueryError::Field(name.to_owned()))
    }

    fn clause(
        &self,
        partition: &Partition,
        clause: &Clause,
    ) -> Result<(Occur, Box<dyn Query>), QueryError> {
        let fields = self.fields();
        let occur = |negate: bool| if negate { Occur::MustNot } else { Occur::Must };
        Ok(match clause {
            Clause::NotEqual(name, value) => (
                Occur::MustNot,
                Box::new(TermQuery::new(
                    Term::from_field_text(self.exact_field(partition, name)?, value),
                    IndexRecordOption::Basic,
                )),
            ),
            Clause::Regex {
                field,
                pattern,
                negate,
            } => (
                occur(*negate),
                Box::new(
                    tantivy::query::RegexQuery::from_pattern(
                        pattern,
                        self.exact_field(partition, field)?,
                    )
                    .map_err(|e| QueryError::Parse(format!("regex {pattern:?}: {e}")))?,
                ),
            ),
            Clause::Attribute { key, value, negate } => {
                let either: Vec<(Occur, Box<dyn Query>)> = [fields.labels, fields.fields]
                    .into_iter()
                    .map(|field| {
                        let mut term = Term::from_field_json_path(field, key, false);
                        term.append_type_and_str(value);
                        let query: Box<dyn Query> =
                            Box::new(TermQuery::new(term, IndexRecordOption::Basic));
                        (Occur::Should, query)
                    })
                    .collect();
                (occur(*negate), Box::new(BooleanQuery::new(either)))
            }
            Clause::OneOf { field, values } => {
                let field = self.exact_field(partition, field)?;
                let any: Vec<(Occur, Box<dyn Query>)> = values
                    .iter()
                    .map(|value| {
                        let query: Box<dyn Query> = Box::new(TermQuery::new(
                            Term::from_field_text(field, value),
                            IndexRecordOption::Basic,
                        ));
                        (Occur::Should, query)
                    })
                    .collect();
                if any.is_empty() {
                    (Occur::Must, Box::new(tantivy::query::EmptyQuery))
                } else {
                    (Occur::Must, Box::new(BooleanQuery::new(any)))
                }
            }
            Clause::Phrase { text, negate } => {
                let parser = QueryParser::for_index(&partition.index, vec![fields.message]);
                let quoted = format!("\"{}\"", text.replace(['"', '\\'], " "));
                let query = parser
                    .parse_query(&quoted)
                    .map_err(|e| QueryError::Parse(e.to_string()))?;
                (occur(*negate), query)
            }
        })
    }

    /// The distinct values of exact field `name` in lines of `[start, end)`'s partitions.
    ///
    /// # Errors
    /// When `name` is not an exact field.
    pub fn values(&self, name: &str, start: i64, end: i64) -> Result<Vec<String>, QueryError> {
        let mut values = std::collections::BTreeSet::new();
        for partition in self
            .partitions()
            .into_iter()
            .filter(|p| p.overlaps(start, end))
        {
            let field = self.exact_field(&partition, name)?;
            for segment in partition.reader.searcher().segment_readers() {
                let index = segment.inverted_index(field)?;
                let mut terms = index
                    .terms()
                    .stream()
                    .map_err(tantivy::TantivyError::from)?;
                while terms.advance() {
                    values.insert(String::from_utf8_lossy(terms.key()).into_owned());
                }
            }
        }
        Ok(values.into_iter().collect())
    }

    fn candidates(&self, request: &SearchRequest, end: i64) -> Vec<Arc<Partition>> {
        let start = request.start.unwrap_or(i64::MIN);
        self.partitions()
            .into_iter()
            .filter(|p| p.overlaps(start, end))
            .collect()
    }

    /// The newest lines matching `request`.
    ///
    /// # Errors
    /// When the query does not parse or names an unknown field.
    pub fn search(&self, request: &SearchRequest) -> Result<SearchResult, QueryError> {
        let end = request.end.unwrap_or(i64::MAX);
        let wanted = request.offset + request.limit.max(1);
        let mut found: Vec<(i64, usize, DocAddress)> = Vec::new();
        let mut total = 0;
        let partitions = self.candidates(request, end);
        // one searcher per partition for the whole request: a commit or merge in between
        // would make the addresses point elsewhere
        let searchers: Vec<tantivy::Searcher> =
            partitions.iter().map(|p| p.reader.searcher()).collect();
        for (number, partition) in partitions.iter().enumerate() {
            let query = self.build_query(partition, request, end)?;
            let searcher = &searchers[number];
            let top = TopDocs::with_limit(wanted).order_by_fast_field::<i64>("ts", Order::Desc);
            let (top, count) = searcher.search(&query, &(top, Count))?;
            total += count as u64;
            found.extend(
                top.into_iter()
                    .map(|(ts, address)| (ts.unwrap_or(0), number, address)),
            );
        }
        // newest first; within one partition, later documents first
        found.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2)));
        let found_newest = found.first().map(|f| f.0);
        let fields = self.fields();
        let mut hits = Vec::new();
        for (_, number, address) in found.into_iter().skip(request.offset).take(request.limit) {
            let doc: TantivyDocument = searchers[number].doc(address)?;
            hits.push(hit(&doc, &fields));
        }
        let end = match (request.end, found_newest) {
            (Some(end), _) => end,
            (None, Some(newest)) => newest.saturating_add(1),
            (None, None) => now_ns(),
        };
        Ok(SearchResult { total, end, hits })
    }

    /// Counts of lines matching `request` per `interval_ns`, keyed by interval start.
    ///
    /// # Errors
    /// When the query does not parse or names an unknown field.
    pub fn histogram(
        &self,
        request: &SearchRequest,
        interval_ns: i64,
    ) -> Result<BTreeMap<i64, u64>, QueryError> {
        let end = request.end.unwrap_or(i64::MAX);
        let interval = interval_ns.max(1);
        let mut buckets = BTreeMap::new();
        for partition in self.candidates(request, end) {
            let query = self.build_query(&partition, request, end)?;
            let searcher = partition.reader.searcher();
            for (start, count) in searcher.search(&query, &Histogram { interval })? {
                *buckets.entry(start).or_insert(0) += count;
            }
        }
        Ok(buckets)
    }
}

fn hit(doc: &TantivyDocument, fields: &super::Fields) -> Hit {
    let text = |field| {
        doc.get_first(field)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let timestamp_ns = doc
        .get_first(fields.ts)
        .and_then(|v| v.as_i64())
        .unwrap_or(0);
    let map = |field| {
        let mut map = BTreeMap::new();
        if let Some(object) = doc.get_first(field).and_then(|v| v.as_object()) {
            for (key, value) in object {
                if let Some(value) = value.as_str() {
                    map.insert(key.to_owned(), value.to_owned());
                }
            }
        }
        map
    };
    Hit {
        timestamp: jiff::Timestamp::from_nanosecond(i128::from(timestamp_ns))
            .map(|t| t.to_string())
            .unwrap_or_default(),
        timestamp_ns,
        namespace: text(fields.namespace),
        pod: text(fields.pod),
        container: text(fields.container),
        node: text(fields.node),
        stream: text(fields.stream),
        level: text(fields.level),
        tag: text(fields.tag),
        labels: map(fields.labels),
        fields: map(fields.fields),
        message: text(fields.message),
    }
}

/// Counts matching documents per interval of their `ts` fast field.
struct Histogram {
    interval: i64,
}

struct SegmentHistogram {
    interval: i64,
    ts: tantivy::columnar::Column<i64>,
    buckets: BTreeMap<i64, u64>,
}

impl Collector for Histogram {
    type Fruit = BTreeMap<i64, u64>;
    type Child = SegmentHistogram;

    fn for_segment(
        &self,
        _segment: SegmentOrdinal,
        reader: &SegmentReader,
    ) -> tantivy::Result<SegmentHistogram> {
        Ok(SegmentHistogram {
            interval: self.interval,
            ts: reader.fast_fields().i64("ts")?,
            buckets: BTreeMap::new(),
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<BTreeMap<i64, u64>>) -> tantivy::Result<Self::Fruit> {
        let mut merged = BTreeMap::new();
        for fruit in fruits {
            for (start, count) in fruit {
                *merged.entry(start).or_insert(0) += count;
            }
        }
        Ok(merged)
    }
}

impl SegmentCollector for SegmentHistogram {
    type Fruit = BTreeMap<i64, u64>;

    fn collect(&mut self, doc: DocId, _score: Score) {
        if let Some(ts) = self.ts.first(doc) {
            *self
                .buckets
                .entry(ts - ts.rem_euclid(self.interval))
                .or_insert(0) += 1;
        }
    }

    fn harvest(self) -> Self::Fruit {
        self.buckets
    }
}
