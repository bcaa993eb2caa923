//! Transforms: synchronous steps the router applies to each record whose tag matches, in the
//! order the configuration lists them, before handing it to the sinks (fluentd's filters).
//! `parser` reads JSON, logfmt or a regex with named captures out of the message into fields
//! (and the level); `grep` keeps or drops records by regex on the message or a field;
//! `record` sets and removes fields. A record a parser cannot read passes unchanged and is
//! counted.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::TagPattern;
use crate::metrics::{ComponentMetrics, Metrics};
use crate::record::{LogRecord, normalize_level};

/// One transform, by `type`; each has a `name` (in metrics) and a `match` pattern (default
/// `**`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TransformSpec {
    /// Parse the message (or a field) into fields.
    Parser(ParserConfig),
    /// Keep records matching every `include` rule and none of the `exclude` rules.
    Grep(GrepConfig),
    /// Set and remove fields.
    Record(RecordConfig),
    /// Let at most `limit` records per `interval_secs` through for each value of `key`.
    Throttle(ThrottleConfig),
}

/// Configuration of a `throttle` transform.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ThrottleConfig {
    /// Its name (in metrics).
    pub name: String,
    /// Tags it applies to, fluentd-style (default `**`).
    #[serde(rename = "match", default = "crate::sinks::match_all")]
    pub pattern: String,
    /// What the limit is per: `namespace`, `pod`, `container`, `tag`, or a field or label
    /// (default: the pod, so one noisy pod cannot drown the rest).
    #[serde(default = "default_throttle_key")]
    pub key: String,
    /// Records let through per key and interval; the rest are dropped and counted.
    pub limit: u64,
    /// The interval, in seconds.
    #[serde(default = "default_throttle_interval")]
    pub interval_secs: u64,
}

fn default_throttle_key() -> String {
    "pod".to_owned()
}
const fn default_throttle_interval() -> u64 {
    1
}

/// Configuration of a `parser` transform.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ParserConfig {
    /// Its name (in metrics).
    pub name: String,
    /// Tags it applies to, fluentd-style (default `**`).
    #[serde(rename = "match", default = "crate::sinks::match_all")]
    pub pattern: String,
    /// `json`, `logfmt` or `regex`.
    pub format: ParseFormat,
    /// The regex, with named groups (`(?P<status>\d+)`), for `format: regex`.
    #[serde(default)]
    pub regex: Option<String>,
    /// Parse this field instead of the message.
    #[serde(default)]
    pub key: Option<String>,
    /// A parsed key that becomes the message (e.g. `msg`); the line stays otherwise.
    #[serde(default)]
    pub message_key: Option<String>,
}

/// Configuration of a `grep` transform.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GrepConfig {
    /// Its name (in metrics).
    pub name: String,
    /// Tags it applies to, fluentd-style (default `**`).
    #[serde(rename = "match", default = "crate::sinks::match_all")]
    pub pattern: String,
    /// Rules a record must match.
    #[serde(default)]
    pub include: Vec<GrepRule>,
    /// Rules that drop a record.
    #[serde(default)]
    pub exclude: Vec<GrepRule>,
}

/// Configuration of a `record` transform.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RecordConfig {
    /// Its name (in metrics).
    pub name: String,
    /// Tags it applies to, fluentd-style (default `**`).
    #[serde(rename = "match", default = "crate::sinks::match_all")]
    pub pattern: String,
    /// Fields to set.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Fields to remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

impl TransformSpec {
    /// Its name.
    #[must_use]
    pub fn name(&self) -> &str {
        match self {
            Self::Parser(c) => &c.name,
            Self::Grep(c) => &c.name,
            Self::Record(c) => &c.name,
            Self::Throttle(c) => &c.name,
        }
    }

    fn pattern(&self) -> &str {
        match self {
            Self::Parser(c) => &c.pattern,
            Self::Grep(c) => &c.pattern,
            Self::Record(c) => &c.pattern,
            Self::Throttle(c) => &c.pattern,
        }
    }
}

/// A parser's input format.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ParseFormat {
    /// A JSON object.
    Json,
    /// `key=value key2="quoted value"`.
    Logfmt,
    /// A regex with named captures.
    Regex,
}

/// One grep rule: `key` (`message`, `level`, `namespace`, `pod`, `container`, or a field)
/// matches `pattern`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GrepRule {
    /// What to test.
    #[serde(default = "default_key")]
    pub key: String,
    /// A regex.
    pub pattern: String,
}

fn default_key() -> String {
    "message".to_owned()
}

/// A transform ready to run.
pub(crate) struct Transform {
    pattern: TagPattern,
    step: Step,
    metrics: ComponentMetrics,
}

enum Step {
    Parser {
        format: ParseFormat,
        regex: Option<regex::Regex>,
        key: Option<String>,
        message_key: Option<String>,
    },
    Grep {
        include: Vec<(String, regex::Regex)>,
        exclude: Vec<(String, regex::Regex)>,
    },
    Record {
        set: BTreeMap<String, String>,
        remove: Vec<String>,
    },
    Throttle {
        key: String,
        limit: u64,
        interval: std::time::Duration,
        /// Per key: when its window started and how many passed in it.
        windows: parking_lot::Mutex<std::collections::HashMap<String, (std::time::Instant, u64)>>,
    },
}

/// Builds the transforms of a configuration.
///
/// # Errors
/// On an invalid pattern or regex (naming the transform).
pub(crate) fn build(specs: &[TransformSpec], metrics: &Metrics) -> Result<Vec<Transform>, String> {
    specs
        .iter()
        .map(|spec| {
            let name = spec.name();
            let pattern = TagPattern::parse(spec.pattern())
                .map_err(|e| format!("transforms.{name}.match: {e}"))?;
            let compile = |pattern: &str| {
                regex::Regex::new(pattern).map_err(|e| format!("transforms.{name}: {e}"))
            };
            let (step, kind) = match spec {
                TransformSpec::Parser(parser) => {
                    let regex = match (parser.format, &parser.regex) {
                        (ParseFormat::Regex, Some(pattern)) => Some(compile(pattern)?),
                        (ParseFormat::Regex, None) => {
                            return Err(format!("transforms.{name}: format regex needs a regex"));
                        }
                        _ => None,
                    };
                    (
                        Step::Parser {
                            format: parser.format,
                            regex,
                            key: parser.key.clone(),
                            message_key: parser.message_key.clone(),
                        },
                        "parser",
                    )
                }
                TransformSpec::Grep(grep) => {
                    let rules =
                        |rules: &[GrepRule]| -> Result<Vec<(String, regex::Regex)>, String> {
                            rules
                                .iter()
                                .map(|r| Ok((r.key.clone(), compile(&r.pattern)?)))
                                .collect()
                        };
                    (
                        Step::Grep {
                            include: rules(&grep.include)?,
                            exclude: rules(&grep.exclude)?,
                        },
                        "grep",
                    )
                }
                TransformSpec::Throttle(throttle) => (
                    Step::Throttle {
                        key: throttle.key.clone(),
                        limit: throttle.limit,
                        interval: std::time::Duration::from_secs(throttle.interval_secs.max(1)),
                        windows: parking_lot::Mutex::default(),
                    },
                    "throttle",
                ),
                TransformSpec::Record(record) => (
                    Step::Record {
                        set: record.set.clone(),
                        remove: record.remove.clone(),
                    },
                    "record",
                ),
            };
            Ok(Transform {
                pattern,
                step,
                metrics: metrics.component(name, kind),
            })
        })
        .collect()
}

fn value_of<'a>(record: &'a LogRecord, key: &str) -> Option<&'a str> {
    match key {
        "message" => Some(&record.message),
        "level" => Some(record.level),
        "namespace" => Some(&record.namespace),
        "pod" => Some(&record.pod),
        "container" => Some(&record.container),
        "stream" => Some(record.stream),
        "tag" => Some(&record.tag),
        other => record
            .fields
            .get(other)
            .or_else(|| record.labels.get(other))
            .map(String::as_str),
    }
}

impl Transform {
    /// Applies the transform to `record` (when its tag matches); `false` drops the record.
    pub(crate) fn apply(&self, record: &mut LogRecord) -> bool {
        if !self.pattern.matches(&record.tag) {
            return true;
        }
        self.metrics.received(1, 0);
        let keep = match &self.step {
            Step::Parser {
                format,
                regex,
                key,
                message_key,
            } => {
                let input = match key {
                    Some(key) => value_of(record, key).map(str::to_owned),
                    None => Some(record.message.clone()),
                };
                let parsed = input.and_then(|text| match format {
                    ParseFormat::Json => parse_json(&text),
                    ParseFormat::Logfmt => parse_logfmt(&text),
                    ParseFormat::Regex => regex.as_ref().and_then(|r| parse_regex(r, &text)),
                });
                match parsed {
                    Some(parsed) => merge(record, parsed, message_key.as_deref()),
                    None => self.metrics.error("parse_failed"),
                }
                true
            }
            Step::Grep { include, exclude } => {
                let matches = |(key, regex): &(String, regex::Regex)| {
                    value_of(record, key).is_some_and(|v| regex.is_match(v))
                };
                let keep = include.iter().all(matches) && !exclude.iter().any(matches);
                if !keep {
                    self.metrics.discarded("grep", 1);
                }
                keep
            }
            Step::Throttle {
                key,
                limit,
                interval,
                windows,
            } => {
                let value = value_of(record, key).unwrap_or_default().to_owned();
                let now = std::time::Instant::now();
                let mut windows = windows.lock();
                if windows.len() > 100_000 {
                    windows.retain(|_, (start, _)| now.duration_since(*start) < *interval);
                }
                let window = windows.entry(value).or_insert((now, 0));
                if now.duration_since(window.0) >= *interval {
                    *window = (now, 0);
                }
                window.1 += 1;
                let keep = window.1 <= *limit;
                if !keep {
                    self.metrics.discarded("throttled", 1);
                }
                keep
            }
            Step::Record { set, remove } => {
                let fields = Arc::make_mut(&mut record.fields);
                for (key, value) in set {
                    fields.insert(key.clone(), value.clone());
                }
                for key in remove {
                    fields.remove(key);
                }
                true
            }
        };
        if keep {
            self.metrics.sent(1);
        }
        keep
    }
}

fn merge(record: &mut LogRecord, parsed: Vec<(String, String)>, message_key: Option<&str>) {
    let fields = Arc::make_mut(&mut record.fields);
    for (key, value) in parsed {
        if Some(key.as_str()) == message_key {
            record.message = value;
            continue;
        }
        if matches!(key.as_str(), "level" | "severity" | "lvl") {
            let level = normalize_level(&value);
            if !level.is_empty() {
                record.level = level;
            }
        }
        if fields.len() < 64 {
            fields.insert(key, value);
        }
    }
}

fn parse_json(text: &str) -> Option<Vec<(String, String)>> {
    let value: serde_json::Value = serde_json::from_str(text.trim()).ok()?;
    let object = value.as_object()?;
    Some(
        object
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), text)
            })
            .collect(),
    )
}

fn parse_logfmt(text: &str) -> Option<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let key_end = rest
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(rest.len());
        let key = &rest[..key_end];
        rest = &rest[key_end..];
        let value = if let Some(after) = rest.strip_prefix('=') {
            if let Some(quoted) = after.strip_prefix('"') {
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let mut end = quoted.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, escaped)) = chars.next() {
                                value.push(escaped);
                            }
                        }
                        '"' => {
                            end = i + 1;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                rest = &quoted[end.min(quoted.len())..];
                value
            } else {
                let end = after.find(char::is_whitespace).unwrap_or(after.len());
                rest = &after[end..];
                after[..end].to_owned()
            }
        } else {
            "true".to_owned()
        };
        if !key.is_empty() {
            pairs.push((key.to_owned(), value));
        }
        rest = rest.trim_start();
    }
    (!pairs.is_empty()).then_some(pairs)
}

fn parse_regex(regex: &regex::Regex, text: &str) -> Option<Vec<(String, String)>> {
    let captures = regex.captures(text)?;
    Some(
        regex
            .capture_names()
            .flatten()
            .filter_map(|name| {
                captures
                    .name(name)
                    .map(|m| (name.to_owned(), m.as_str().to_owned()))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(yaml: &str) -> Vec<Transform> {
        let specs: Vec<TransformSpec> = serde_yaml::from_str(yaml).unwrap();
        build(&specs, &Metrics::new()).unwrap()
    }

    fn record(message: &str) -> LogRecord {
        LogRecord {
            tag: "kube.shop.web.app".into(),
            message: message.into(),
            ..LogRecord::default()
        }
    }

    #[test]
    fn logfmt_pairs() {
        assert_eq!(
            parse_logfmt(r#"ts=1 level=warn msg="disk \"sdb\" slow" flag"#).unwrap(),
            vec![
                ("ts".into(), "1".into()),
                ("level".into(), "warn".into()),
                ("msg".into(), "disk \"sdb\" slow".into()),
                ("flag".into(), "true".into()),
            ]
        );
        assert!(parse_logfmt("   ").is_none());
    }

    #[test]
    fn parsers_fill_fields_and_level() {
        let transforms = specs(
            "- {name: json, type: parser, format: json, match: 'kube.**', message_key: msg}\n- {name: other, type: parser, format: logfmt, match: 'syslog.**'}\n",
        );
        let mut r = record(r#"{"msg":"payment failed","level":"ERROR","code":502}"#);
        assert!(transforms.iter().all(|t| t.apply(&mut r)));
        assert_eq!(r.message, "payment failed");
        assert_eq!(r.level, "error");
        assert_eq!(r.fields["code"], "502");
        // not JSON: unchanged, counted
        let mut r = record("plain text");
        assert!(transforms[0].apply(&mut r));
        assert_eq!(r.message, "plain text");
        assert!(r.fields.is_empty());
        let regex = specs(
            r#"- {name: access, type: parser, format: regex, regex: '^(?P<ip>\S+) "(?P<method>\w+) (?P<path>\S+)" (?P<status>\d+)$'}"#,
        );
        let mut r = record(r#"10.0.0.1 "GET /cart" 503"#);
        assert!(regex[0].apply(&mut r));
        assert_eq!(r.fields["status"], "503");
        assert_eq!(r.fields["path"], "/cart");
    }

    #[test]
    fn throttle_per_pod() {
        let transforms = specs("- {name: calm, type: throttle, limit: 3, interval_secs: 60}\n");
        let mut passed = BTreeMap::new();
        for n in 0..10 {
            let mut r = record("x");
            r.pod = if n % 2 == 0 { "noisy" } else { "quiet" }.into();
            if transforms[0].apply(&mut r) {
                *passed.entry(r.pod.to_string()).or_insert(0) += 1;
            }
        }
        assert_eq!(
            passed,
            BTreeMap::from([("noisy".to_owned(), 3), ("quiet".to_owned(), 3)])
        );
    }

    #[test]
    fn grep_and_record() {
        let transforms = specs(
            "- {name: quiet, type: grep, exclude: [{pattern: 'GET /healthz'}], include: [{key: namespace, pattern: '^shop$'}]}\n- {name: env, type: record, set: {env: prod}, remove: [secret]}\n",
        );
        let mut r = record("GET /healthz 200");
        r.namespace = "shop".into();
        assert!(!transforms[0].apply(&mut r));
        let mut r = record("GET /cart 200");
        assert!(!transforms[0].apply(&mut r), "namespace must be shop");
        r.namespace = "shop".into();
        Arc::make_mut(&mut r.fields).insert("secret".into(), "x".into());
        assert!(transforms.iter().all(|t| t.apply(&mut r)));
        assert_eq!(r.fields.get("env").map(String::as_str), Some("prod"));
        assert!(!r.fields.contains_key("secret"));
        let bad: Vec<TransformSpec> =
            serde_yaml::from_str("- {name: x, type: grep, include: [{pattern: '('}]}").unwrap();
        let error = build(&bad, &Metrics::new()).err().unwrap();
        assert!(error.contains("transforms.x"), "{error}");
    }
}
