//! Label and field selectors, parsed as Kubernetes parses them (`labels.Parse`,
//! `fields.ParseSelector`) and matched against untyped objects.

use std::collections::BTreeMap;

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelRequirement {
    /// `key=value` or `key==value`.
    Equals(String, String),
    /// `key!=value` (also matches objects without the key).
    NotEquals(String, String),
    /// `key in (a,b)`.
    In(String, Vec<String>),
    /// `key notin (a,b)`.
    NotIn(String, Vec<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    DoesNotExist(String),
    /// `key>n`.
    GreaterThan(String, i64),
    /// `key<n`.
    LessThan(String, i64),
}

/// A parsed label selector: every requirement must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(pub Vec<LabelRequirement>);

impl LabelSelector {
    /// Parses the `labelSelector` syntax.
    ///
    /// # Errors
    /// With a message naming the problem.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for term in split_terms(text)? {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            requirements.push(parse_requirement(term)?);
        }
        Ok(Self(requirements))
    }

    /// Whether the labels satisfy the selector.
    #[must_use]
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            LabelRequirement::Equals(k, v) => labels.get(k) == Some(v),
            LabelRequirement::NotEquals(k, v) => labels.get(k) != Some(v),
            LabelRequirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            LabelRequirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            LabelRequirement::Exists(k) => labels.contains_key(k),
            LabelRequirement::DoesNotExist(k) => !labels.contains_key(k),
            LabelRequirement::GreaterThan(k, n) => labels
                .get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v > *n),
            LabelRequirement::LessThan(k, n) => labels
                .get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < *n),
        })
    }

    /// Whether the selector selects everything.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Splits on commas that are not inside parentheses.
fn split_terms(text: &str) -> Result<Vec<&str>, String> {
    let mut terms = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!("unexpected ')' in selector {text:?}"));
                }
            }
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("unclosed '(' in selector {text:?}"));
    }
    terms.push(&text[start..]);
    Ok(terms)
}

fn validate_key(key: &str) -> Result<String, String> {
    let key = key.trim();
    let valid = !key.is_empty()
        && key.len() <= 317
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    if valid {
        Ok(key.to_owned())
    } else {
        Err(format!("invalid label key {key:?}"))
    }
}

fn validate_value(value: &str) -> Result<String, String> {
    let value = value.trim();
    let valid = value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if valid {
        Ok(value.to_owned())
    } else {
        Err(format!("invalid label value {value:?}"))
    }
}

fn parse_set(text: &str) -> Result<Vec<String>, String> {
    let text = text.trim();
    let inner = text
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| format!("expected a parenthesised set, found {text:?}"))?;
    inner.split(',').map(validate_value).collect()
}

fn parse_requirement(term: &str) -> Result<LabelRequirement, String> {
    if let Some(key) = term.strip_prefix('!') {
        return Ok(LabelRequirement::DoesNotExist(validate_key(key)?));
    }
    for (operator, make) in [
        (
            "==",
            LabelRequirement::Equals as fn(String, String) -> LabelRequirement,
        ),
        ("!=", LabelRequirement::NotEquals),
        ("=", LabelRequirement::Equals),
    ] {
        if let Some((key, value)) = term.split_once(operator) {
            return Ok(make(validate_key(key)?, validate_value(value)?));
        }
    }
    for (operator, greater) in [(">", true), ("<", false)] {
        if let Some((key, value)) = term.split_once(operator) {
            let n = value
                .trim()
                .parse::<i64>()
                .map_err(|_| format!("invalid number in {term:?}"))?;
            let key = validate_key(key)?;
            return Ok(if greater {
                LabelRequirement::GreaterThan(key, n)
            } else {
                LabelRequirement::LessThan(key, n)
            });
        }
    }
    let words: Vec<&str> = term.splitn(2, char::is_whitespace).collect();
    if let [key, rest] = words.as_slice() {
        let rest = rest.trim_start();
        if let Some(set) = rest.strip_prefix("notin") {
            return Ok(LabelRequirement::NotIn(validate_key(key)?, parse_set(set)?));
        }
        if let Some(set) = rest.strip_prefix("in") {
            return Ok(LabelRequirement::In(validate_key(key)?, parse_set(set)?));
        }
        return Err(format!("unable to parse requirement {term:?}"));
    }
    Ok(LabelRequirement::Exists(validate_key(term)?))
}

/// One requirement of a field selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldRequirement {
    /// Field path, e.g. `spec.nodeName`.
    pub field: String,
    /// `!=` when false.
    pub equals: bool,
    /// The value compared with.
    pub value: String,
}

/// A parsed field selector.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector(pub Vec<FieldRequirement>);

impl FieldSelector {
    /// Parses `a=b,c!=d` (with `\` escapes).
    ///
    /// # Errors
    /// With a message naming the problem.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for term in split_escaped(text, ',') {
            if term.trim().is_empty() {
                continue;
            }
            let (field, equals, value) = if let Some((f, v)) = split_once_unescaped(&term, "!=") {
                (f, false, v)
            } else if let Some((f, v)) = split_once_unescaped(&term, "==") {
                (f, true, v)
            } else if let Some((f, v)) = split_once_unescaped(&term, "=") {
                (f, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{text}'; can't understand '{term}'"
                ));
            };
            requirements.push(FieldRequirement {
                field: field.trim().to_owned(),
                equals,
                value: unescape(&value),
            });
        }
        Ok(Self(requirements))
    }

    /// Whether every requirement holds, reading fields with `value_of`.
    pub fn matches(&self, mut value_of: impl FnMut(&str) -> Option<String>) -> bool {
        self.0.iter().all(|r| {
            let actual = value_of(&r.field).unwrap_or_default();
            (actual == r.value) == r.equals
        })
    }

    /// The value a requirement `field=value` pins, if any (for indexed lookups).
    #[must_use]
    pub fn exact(&self, field: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|r| r.field == field && r.equals)
            .map(|r| r.value.as_str())
    }
}

fn split_escaped(text: &str, separator: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut escaped = false;
    for c in text.chars() {
        if escaped {
            parts.last_mut().expect("non-empty").push('\\');
            parts.last_mut().expect("non-empty").push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == separator {
            parts.push(String::new());
        } else {
            parts.last_mut().expect("non-empty").push(c);
        }
    }
    parts
}

fn split_once_unescaped(term: &str, operator: &str) -> Option<(String, String)> {
    let bytes = term.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if term[i..].starts_with(operator) {
            return Some((term[..i].to_owned(), term[i + operator.len()..].to_owned()));
        }
        i += 1;
    }
    None
}

fn unescape(value: &str) -> String {
    let mut out = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether labels match a structured `metav1.LabelSelector` (`matchLabels` and
/// `matchExpressions`). An empty selector matches everything.
#[must_use]
pub fn label_selector_object_matches(
    selector: &serde_json::Value,
    labels: &BTreeMap<String, String>,
) -> bool {
    use serde_json::Value;
    if let Some(Value::Object(match_labels)) = selector.get("matchLabels") {
        for (key, value) in match_labels {
            if labels.get(key).map(String::as_str) != value.as_str() {
                return false;
            }
        }
    }
    if let Some(Value::Array(expressions)) = selector.get("matchExpressions") {
        for expression in expressions {
            let key = expression.get("key").and_then(Value::as_str).unwrap_or("");
            let values: Vec<&str> = expression
                .get("values")
                .and_then(Value::as_array)
                .map(|v| v.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let actual = labels.get(key).map(String::as_str);
            let ok = match expression
                .get("operator")
                .and_then(Value::as_str)
                .unwrap_or("")
            {
                "In" => actual.is_some_and(|a| values.contains(&a)),
                "NotIn" => actual.is_none_or(|a| !values.contains(&a)),
                "Exists" => actual.is_some(),
                "DoesNotExist" => actual.is_none(),
                _ => false,
            };
            if !ok {
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn label_operators() {
        let l = labels(&[("app", "web"), ("tier", "front"), ("n", "5")]);
        for (selector, expected) in [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("missing!=x", true),
            ("app in (web, db)", true),
            ("app notin (web)", false),
            ("tier,app", true),
            ("!tier", false),
            ("!missing", true),
            ("n>4,n<6", true),
            ("app=web,tier in (back)", false),
            ("", true),
        ] {
            assert_eq!(
                LabelSelector::parse(selector).unwrap().matches(&l),
                expected,
                "{selector}"
            );
        }
    }

    #[test]
    fn label_errors() {
        for bad in ["app in web", "app in (web", "a b c", "=x", "app=we b"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn field_selectors() {
        let s = FieldSelector::parse("spec.nodeName=n1,status.phase!=Failed").unwrap();
        assert!(s.matches(|f| match f {
            "spec.nodeName" => Some("n1".into()),
            "status.phase" => Some("Running".into()),
            _ => None,
        }));
        assert_eq!(s.exact("spec.nodeName"), Some("n1"));
        let escaped = FieldSelector::parse(r"metadata.name=a\,b").unwrap();
        assert_eq!(escaped.0[0].value, "a,b");
        assert!(FieldSelector::parse("justaword").is_err());
    }
}
