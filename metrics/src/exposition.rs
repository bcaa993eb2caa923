//! The Prometheus text exposition format 0.0.4: a writer that groups samples into families
//! (what every exporter here serves), and a parser (for the node exporter's textfile directory
//! and for comparing our output with a peer exporter's).
//!
//! We write the text ourselves rather than through the `prometheus` crate's encoder because
//! node_exporter's `untyped` families (netstat, vmstat) must keep their type, which that encoder
//! cannot write, and because the cluster-state exporter serves pre-rendered text per object.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The content type of the text format.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A value that only goes up (until a restart).
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// A value of unknown kind (node_exporter's netstat and vmstat families).
    Untyped,
    /// Buckets, sum and count (only as parsed; the writer writes the samples it is given).
    Histogram,
    /// Quantiles, sum and count (only as parsed).
    Summary,
}

impl Kind {
    /// The name in a `# TYPE` line.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Untyped => "untyped",
            Kind::Histogram => "histogram",
            Kind::Summary => "summary",
        }
    }

    fn parse(text: &str) -> Option<Kind> {
        Some(match text {
            "counter" => Kind::Counter,
            "gauge" => Kind::Gauge,
            "untyped" => Kind::Untyped,
            "histogram" => Kind::Histogram,
            "summary" => Kind::Summary,
            _ => return None,
        })
    }
}

#[derive(Debug)]
struct Family {
    help: String,
    kind: Kind,
    body: String,
}

/// Samples grouped by family, written out in name order (as node_exporter orders them).
#[derive(Debug, Default)]
pub struct Families {
    families: BTreeMap<String, Family>,
}

impl Families {
    /// No families yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one sample to family `name`, declaring the family on first use. Label names must
    /// be given in the order to write them (node_exporter writes them sorted by name).
    pub fn add(&mut self, name: &str, help: &str, kind: Kind, labels: &[(&str, &str)], value: f64) {
        let family = match self.families.get_mut(name) {
            Some(family) => family,
            None => self.families.entry(name.to_owned()).or_insert(Family {
                help: help.to_owned(),
                kind,
                body: String::new(),
            }),
        };
        write_sample(&mut family.body, name, labels, value);
    }

    /// A sample with an explicit timestamp (milliseconds since the epoch), for values read
    /// at another time than the scrape (the kubelet's resource metrics).
    pub fn add_at(
        &mut self,
        name: &str,
        help: &str,
        kind: Kind,
        labels: &[(&str, &str)],
        value: f64,
        timestamp_ms: i64,
    ) {
        self.add(name, help, kind, labels, value);
        if let Some(family) = self.families.get_mut(name) {
            // the sample just written ends in "\n": put the timestamp before it
            family.body.pop();
            family.body.push(' ');
            let _ = write!(family.body, "{timestamp_ms}");
            family.body.push('\n');
        }
    }

    /// A gauge sample.
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.add(name, help, Kind::Gauge, labels, value);
    }

    /// A counter sample.
    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.add(name, help, Kind::Counter, labels, value);
    }

    /// Adds already-written sample lines (from a textfile) to a family.
    pub fn add_raw(&mut self, name: &str, help: &str, kind: Kind, lines: &str) {
        let family = self.families.entry(name.to_owned()).or_insert(Family {
            help: help.to_owned(),
            kind,
            body: String::new(),
        });
        family.body.push_str(lines);
    }

    /// Whether family `name` has been declared.
    #[must_use]
    pub fn contains(&self, name: &str) -> bool {
        self.families.contains_key(name)
    }

    /// The whole exposition.
    #[must_use]
    pub fn render(&self) -> String {
        let size = self
            .families
            .iter()
            .map(|(name, f)| 2 * name.len() + f.help.len() + f.body.len() + 24)
            .sum();
        let mut out = String::with_capacity(size);
        for (name, family) in &self.families {
            out.push_str("# HELP ");
            out.push_str(name);
            out.push(' ');
            escape_into(&mut out, &family.help, false);
            out.push_str("\n# TYPE ");
            out.push_str(name);
            out.push(' ');
            out.push_str(family.kind.as_str());
            out.push('\n');
            out.push_str(&family.body);
        }
        out
    }
}

/// Writes one sample line.
pub fn write_sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (label, text)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(label);
            out.push_str("=\"");
            escape_into(out, text, true);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    write_value(out, value);
    out.push('\n');
}

/// Writes a sample value as Prometheus reads it (`+Inf`, `-Inf`, `NaN`, shortest digits).
pub fn write_value(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        // integral values are the common case: no float formatting
        let _ = write!(out, "{}", value as i64);
    } else {
        let _ = write!(out, "{value}");
    }
}

fn escape_into(out: &mut String, text: &str, quote: bool) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// One parsed sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The sample's name (a histogram's `_bucket`, `_sum`, `_count` included).
    pub name: String,
    /// Label pairs in the order written.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

/// One parsed family.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedFamily {
    /// The family's name.
    pub name: String,
    /// Its `# HELP` text, unescaped.
    pub help: String,
    /// Its `# TYPE` (untyped when the text had none).
    pub kind: Kind,
    /// Its samples.
    pub samples: Vec<Sample>,
}

impl ParsedFamily {
    /// The first sample whose labels include every pair of `labels`.
    #[must_use]
    pub fn sample(&self, labels: &[(&str, &str)]) -> Option<&Sample> {
        self.samples.iter().find(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
    }
}

/// A parse error, naming the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

/// Parses a text exposition into families, in the order they appear. Samples whose names
/// belong to no declared family form untyped families of their own.
///
/// # Errors
/// The first malformed line, a `# TYPE` after its family's samples, or a family declared twice.
pub fn parse(text: &str) -> Result<Vec<ParsedFamily>, ParseError> {
    let mut families: Vec<ParsedFamily> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    for (number, line) in text.lines().enumerate() {
        let number = number + 1;
        let error = |message: String| ParseError {
            line: number,
            message,
        };
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let comment = comment.trim_start();
            let (keyword, rest) = comment.split_once(' ').unwrap_or((comment, ""));
            if keyword != "HELP" && keyword != "TYPE" {
                continue;
            }
            let (name, rest) = rest
                .trim_start()
                .split_once(' ')
                .unwrap_or((rest.trim(), ""));
            if !valid_name(name) {
                return Err(error(format!("invalid metric name {name:?}")));
            }
            let position = match index.get(name) {
                Some(&i) => i,
                None => {
                    families.push(ParsedFamily {
                        name: name.to_owned(),
                        help: String::new(),
                        kind: Kind::Untyped,
                        samples: Vec::new(),
                    });
                    index.insert(name.to_owned(), families.len() - 1);
                    families.len() - 1
                }
            };
            let family = &mut families[position];
            if keyword == "HELP" {
                family.help = unescape(rest, false);
            } else {
                if !family.samples.is_empty() {
                    return Err(error(format!("TYPE of {name} after its samples")));
                }
                family.kind = Kind::parse(rest.trim())
                    .ok_or_else(|| error(format!("unknown type {:?}", rest.trim())))?;
            }
            continue;
        }
        let sample = parse_sample(line).map_err(error)?;
        let family_name = family_of(&sample.name, &index, &families);
        let position = match index.get(&family_name) {
            Some(&i) => i,
            None => {
                families.push(ParsedFamily {
                    name: family_name.clone(),
                    help: String::new(),
                    kind: Kind::Untyped,
                    samples: Vec::new(),
                });
                index.insert(family_name, families.len() - 1);
                families.len() - 1
            }
        };
        families[position].samples.push(sample);
    }
    Ok(families)
}

/// The family a sample belongs to: its own name, or the histogram/summary it is part of.
fn family_of(name: &str, index: &BTreeMap<String, usize>, families: &[ParsedFamily]) -> String {
    if index.contains_key(name) {
        return name.to_owned();
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && let Some(&i) = index.get(base)
            && matches!(families[i].kind, Kind::Histogram | Kind::Summary)
        {
            return base.to_owned();
        }
    }
    name.to_owned()
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let end = line
        .find(|c: char| c == '{' || c.is_ascii_whitespace())
        .ok_or_else(|| format!("no value in {line:?}"))?;
    let name = &line[..end];
    if !valid_name(name) {
        return Err(format!("invalid metric name {name:?}"));
    }
    let mut rest = &line[end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = inner;
        loop {
            rest = rest.trim_start();
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest
                .find('=')
                .ok_or_else(|| format!("label without value in {line:?}"))?;
            let label = rest[..eq].trim();
            if !valid_name(label) || label.contains(':') {
                return Err(format!("invalid label name {label:?}"));
            }
            rest = rest[eq + 1..].trim_start();
            let quoted = rest
                .strip_prefix('"')
                .ok_or_else(|| format!("label {label} value is not quoted"))?;
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let close = loop {
                match chars.next() {
                    None => return Err(format!("unterminated label value in {line:?}")),
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => return Err(format!("unterminated label value in {line:?}")),
                    },
                    Some((_, c)) => value.push(c),
                }
            };
            labels.push((label.to_owned(), value));
            rest = quoted[close + 1..].trim_start();
            if let Some(after) = rest.strip_prefix(',') {
                rest = after;
            } else if !rest.starts_with('}') {
                return Err(format!("expected , or }} after label {label}"));
            }
        }
    }
    let mut fields = rest.split_ascii_whitespace();
    let value = fields
        .next()
        .ok_or_else(|| format!("no value in {line:?}"))?;
    let value = parse_value(value).ok_or_else(|| format!("invalid value {value:?}"))?;
    if let Some(timestamp) = fields.next()
        && timestamp.parse::<i64>().is_err()
    {
        return Err(format!("invalid timestamp {timestamp:?}"));
    }
    if fields.next().is_some() {
        return Err(format!("trailing text in {line:?}"));
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses a sample value (Go's float syntax, `+Inf`, `-Inf`, `NaN`).
#[must_use]
pub fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

fn unescape(text: &str, quote: bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('\\') => out.push('\\'),
            Some('"') if quote => out.push('"'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_grouped_and_sorted() {
        let mut families = Families::new();
        families.counter("b_total", "B things.", &[("device", "eth0")], 3.0);
        families.gauge("a", "A \\ thing\nwith lines.", &[], 0.5);
        families.counter("b_total", "B things.", &[("device", "a\"b\\c\nd")], 1e20);
        families.add("c", "C.", Kind::Untyped, &[], f64::INFINITY);
        assert_eq!(
            families.render(),
            "# HELP a A \\\\ thing\\nwith lines.\n# TYPE a gauge\na 0.5\n\
             # HELP b_total B things.\n# TYPE b_total counter\nb_total{device=\"eth0\"} 3\n\
             b_total{device=\"a\\\"b\\\\c\\nd\"} 100000000000000000000\n\
             # HELP c C.\n# TYPE c untyped\nc +Inf\n"
        );
    }

    #[test]
    fn timestamps_follow_the_value() {
        let mut families = Families::new();
        families.add_at(
            "x_total",
            "X.",
            Kind::Counter,
            &[("a", "1")],
            2.5,
            1_700_000_000_123,
        );
        families.add_at(
            "x_total",
            "X.",
            Kind::Counter,
            &[("a", "2")],
            3.0,
            1_700_000_000_456,
        );
        let text = families.render();
        assert!(
            text.contains("x_total{a=\"1\"} 2.5 1700000000123\nx_total{a=\"2\"} 3 1700000000456\n"),
            "{text}"
        );
        assert_eq!(parse(&text).unwrap()[0].samples.len(), 2);
    }

    #[test]
    fn what_is_written_parses_back() {
        let mut families = Families::new();
        families.counter("x_total", "X.", &[("a", "1"), ("b", "q\"\\\n")], 2.5);
        families.gauge("y", "Y.", &[], -3.0);
        let parsed = parse(&families.render()).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].name, "x_total");
        assert_eq!(parsed[0].kind, Kind::Counter);
        assert_eq!(
            parsed[0].samples[0].labels,
            vec![("a".into(), "1".into()), ("b".into(), "q\"\\\n".into())]
        );
        assert_eq!(parsed[0].samples[0].value, 2.5);
        assert_eq!(parsed[1].samples[0].value, -3.0);
    }

    #[test]
    fn histograms_collect_their_suffixed_samples() {
        let text = "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 3\n\
                    h_sum 4.5\nh_count 3\nother 1 1700000000000\n";
        let parsed = parse(text).unwrap();
        assert_eq!(parsed[0].samples.len(), 4);
        assert_eq!(parsed[1].name, "other");
        assert_eq!(parsed[1].kind, Kind::Untyped);
    }

    #[test]
    fn malformed_lines_are_named() {
        for (text, line) in [
            ("ok 1\nbad{ 1\n", 2),
            ("x{a=\"1} 2\n", 1),
            ("1x 2\n", 1),
            ("x one\n", 1),
            ("x 1\n# TYPE x gauge\n", 2),
            ("# TYPE x bogus\n", 1),
            ("x{a=1} 1\n", 1),
            ("x 1 2 3\n", 1),
        ] {
            let error = parse(text).unwrap_err();
            assert_eq!(error.line, line, "{text:?}: {error}");
        }
    }
}
