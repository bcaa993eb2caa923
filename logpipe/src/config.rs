//! The pipeline's configuration: one YAML file with named sources and sinks, routed by
//! fluentd-style tag patterns. Loading it validates everything and names the line of the
//! first mistake.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::index::writer::IndexSinkConfig;
use crate::sinks::SinkConfig;
use crate::sources::SourceConfig;
use crate::sources::tail::TailConfig;

/// The whole pipeline.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Directory for the index and other state (default: given by the command that runs it).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Sources by name.
    pub sources: BTreeMap<String, SourceConfig>,
    /// Transforms, applied in this order to the records whose tag they match.
    #[serde(default)]
    pub transforms: Vec<crate::transforms::TransformSpec>,
    /// Sinks by name.
    pub sinks: BTreeMap<String, SinkConfig>,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("failed to read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not describe a pipeline.
    #[error("{path}{location}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// `:LINE:COLUMN` when known.
        location: String,
        /// What is wrong.
        message: String,
    },
}

impl PipelineConfig {
    /// The default node pipeline: every container log under /var/log/pods into the index.
    #[must_use]
    pub fn node_default() -> Self {
        Self {
            data_dir: None,
            transforms: Vec::new(),
            sources: BTreeMap::from([(
                "pods".to_owned(),
                SourceConfig::Tail(TailConfig {
                    include: vec!["/var/log/pods/*/*/*.log".into()],
                    exclude: Vec::new(),
                    format: crate::format::Format::Cri,
                    kubernetes: true,
                    tag: None,
                    scan_interval_ms: 1000,
                    poll_interval_ms: 100,
                    max_line_bytes: 4 << 20,
                    rotate_wait_ms: 5000,
                    multiline: None,
                }),
            )]),
            sinks: BTreeMap::from([(
                "index".to_owned(),
                SinkConfig::Index(IndexSinkConfig::default()),
            )]),
        }
    }

    /// Reads and validates the file at `path`.
    ///
    /// # Errors
    /// When it cannot be read or is not a valid pipeline (the error names the line).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates YAML; `origin` names it in errors.
    ///
    /// # Errors
    /// When it is not a valid pipeline (the error names the line).
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Self = serde_yaml::from_str(text).map_err(|error| ConfigError::Invalid {
            path: origin.to_owned(),
            location: error
                .location()
                .map(|l| format!(":{}:{}", l.line(), l.column()))
                .unwrap_or_default(),
            message: error.to_string(),
        })?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: origin.to_owned(),
            location: String::new(),
            message,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.sources.is_empty() {
            return Err("no sources".into());
        }
        if self.sinks.is_empty() {
            return Err("no sinks".into());
        }
        let indexes = self.sinks.values().filter(|s| s.kind() == "index").count();
        if indexes > 1 {
            return Err("more than one index sink".into());
        }
        for (name, source) in &self.sources {
            match source {
                SourceConfig::Tail(tail) => {
                    if tail.include.is_empty() {
                        return Err(format!("sources.{name}: include is empty"));
                    }
                    for pattern in tail.include.iter().chain(&tail.exclude) {
                        if !pattern.starts_with('/') {
                            return Err(format!(
                                "sources.{name}: {pattern:?} is not an absolute path"
                            ));
                        }
                        globset::Glob::new(pattern).map_err(|e| format!("sources.{name}: {e}"))?;
                    }
                    if let Some(multiline) = &tail.multiline {
                        crate::multiline::Rule::new(multiline)
                            .map_err(|e| format!("sources.{name}.multiline: {e}"))?;
                    }
                }
                SourceConfig::Forward(forward) => check_address(name, &forward.listen)?,
                SourceConfig::Syslog(syslog) => check_address(name, &syslog.listen)?,
                SourceConfig::Http(http) => check_address(name, &http.listen)?,
                SourceConfig::Loki(loki) => check_address(name, &loki.listen)?,
                SourceConfig::KubernetesEvents(_) => {}
            }
        }
        crate::transforms::build(&self.transforms, &crate::metrics::Metrics::new())?;
        for (name, sink) in &self.sinks {
            TagPattern::parse(sink.pattern()).map_err(|e| format!("sinks.{name}.match: {e}"))?;
            if let SinkConfig::Forward(forward) = sink
                && !forward.address.contains(':')
            {
                return Err(format!(
                    "sinks.{name}.address: {:?} is not HOST:PORT",
                    forward.address
                ));
            }
            let checked = match sink {
                SinkConfig::Loki(loki) => loki.validate(),
                SinkConfig::Elasticsearch(elasticsearch) => elasticsearch.validate(),
                _ => Ok(()),
            };
            checked.map_err(|e| format!("sinks.{name}.{e}"))?;
        }
        Ok(())
    }
}

fn check_address(source: &str, listen: &str) -> Result<(), String> {
    listen
        .parse::<std::net::SocketAddr>()
        .map(|_| ())
        .map_err(|_| format!("sources.{source}.listen: {listen:?} is not HOST:PORT"))
}

/// A fluentd match pattern: `*` is one tag part, `**` zero or more parts, `{a,b}` either,
/// several patterns separated by spaces.
#[derive(Clone, Debug)]
pub struct TagPattern(regex::Regex);

impl TagPattern {
    /// Compiles `pattern`.
    ///
    /// # Errors
    /// When braces do not balance.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let alternatives: Vec<String> = pattern
            .split_whitespace()
            .map(translate)
            .collect::<Result<_, _>>()?;
        if alternatives.is_empty() {
            return Err("empty pattern".into());
        }
        let regex = format!("^(?:{})$", alternatives.join("|"));
        regex::Regex::new(&regex)
            .map(Self)
            .map_err(|e| format!("invalid pattern {pattern:?}: {e}"))
    }

    /// Whether `tag` matches.
    #[must_use]
    pub fn matches(&self, tag: &str) -> bool {
        self.0.is_match(tag)
    }
}

fn translate(pattern: &str) -> Result<String, String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    let mut depth = 0;
    while i < chars.len() {
        let rest: String = chars[i..].iter().collect();
        if rest.starts_with(".**") {
            out.push_str(r"(?:\..*)?");
            i += 3;
        } else if rest.starts_with("**.") {
            out.push_str(r"(?:.*\.)?");
            i += 3;
        } else if rest.starts_with("**") {
            out.push_str(".*");
            i += 2;
        } else {
            match chars[i] {
                '*' => out.push_str("[^.]+"),
                '{' => {
                    depth += 1;
                    out.push_str("(?:");
                }
                '}' if depth > 0 => {
                    depth -= 1;
                    out.push(')');
                }
                ',' if depth > 0 => out.push('|'),
                c => out.push_str(&regex::escape(&c.to_string())),
            }
            i += 1;
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced braces in {pattern:?}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_patterns_match_as_fluentd_does() {
        let p = TagPattern::parse("kube.**").unwrap();
        assert!(p.matches("kube"));
        assert!(p.matches("kube.shop.web.nginx"));
        assert!(!p.matches("kubelet"));
        let p = TagPattern::parse("a.*").unwrap();
        assert!(p.matches("a.b"));
        assert!(!p.matches("a.b.c"));
        assert!(!p.matches("a"));
        let p = TagPattern::parse("a.{b,c}.* x").unwrap();
        assert!(p.matches("a.c.d"));
        assert!(p.matches("x"));
        assert!(!p.matches("a.d.e"));
        assert!(TagPattern::parse("**").unwrap().matches("anything.at.all"));
        assert!(TagPattern::parse("a.{b").is_err());
    }

    #[test]
    fn shipped_default_parses() {
        let text = include_str!("../../manifests/logpipe.yaml");
        let config = PipelineConfig::parse(text, "manifests/logpipe.yaml").unwrap();
        let mut expected = PipelineConfig::node_default();
        expected.data_dir = config.data_dir.clone();
        assert_eq!(config, expected);
    }

    #[test]
    fn examples_parse() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/logpipe");
        let mut count = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            PipelineConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
            count += 1;
        }
        assert!(count >= 2);
    }

    #[test]
    fn errors_name_the_line() {
        let text = "sources:\n  pods:\n    type: tail\n    include: ['/x/*.log']\n    colour: red\nsinks:\n  out: {type: stdout}\n";
        let error = PipelineConfig::parse(text, "p.yaml")
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("p.yaml:"), "{error}");
        assert!(error.contains("colour"), "{error}");
        assert!(
            error.contains(":3:") || error.contains(":4:") || error.contains(":5:"),
            "{error}"
        );
        let text = "sources:\n  pods: {type: tail, include: ['relative/*.log']}\nsinks:\n  out: {type: stdout}\n";
        let error = PipelineConfig::parse(text, "p.yaml")
            .unwrap_err()
            .to_string();
        assert!(error.contains("not an absolute path"), "{error}");
        let text = "sources:\n  pods: {type: tail, include: ['/a']}\nsinks:\n  out: {type: stdout, match: 'a.{b'}\n";
        assert!(PipelineConfig::parse(text, "p.yaml").is_err());
    }
}
