//! Helpers for object metadata on untyped (JSON) objects.

use std::collections::BTreeMap;

use rand::Rng;
use serde_json::{Map, Value, json};

/// `metadata` of an object, created when absent.
pub fn meta_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object.get("metadata").is_some_and(Value::is_object) {
        object["metadata"] = json!({});
    }
    object["metadata"]
        .as_object_mut()
        .expect("metadata is an object")
}

/// A string field of `metadata`.
#[must_use]
pub fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object.get("metadata")?.get(field)?.as_str()
}

/// `metadata.name` (empty when absent).
#[must_use]
pub fn name(object: &Value) -> &str {
    meta_str(object, "name").unwrap_or("")
}

/// `metadata.namespace`.
#[must_use]
pub fn namespace(object: &Value) -> Option<&str> {
    meta_str(object, "namespace")
}

/// A string map of `metadata` (labels or annotations).
#[must_use]
pub fn string_map(object: &Value, field: &str) -> BTreeMap<String, String> {
    object
        .get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_object)
        .map(|map| {
            map.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// `metadata.labels`.
#[must_use]
pub fn labels(object: &Value) -> BTreeMap<String, String> {
    string_map(object, "labels")
}

/// The strings of the array at a JSON pointer (empty when absent; non-strings skipped).
#[must_use]
pub fn strings_at(object: &Value, pointer: &str) -> Vec<String> {
    object
        .pointer(pointer)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// `metadata.finalizers`.
#[must_use]
pub fn finalizers(object: &Value) -> Vec<String> {
    strings_at(object, "/metadata/finalizers")
}

/// Whether `metadata.deletionTimestamp` is set.
#[must_use]
pub fn is_deleting(object: &Value) -> bool {
    meta_str(object, "deletionTimestamp").is_some()
}

/// Sets `metadata.resourceVersion`.
pub fn set_resource_version(object: &mut Value, revision: i64) {
    meta_mut(object).insert(
        "resourceVersion".into(),
        Value::String(revision.to_string()),
    );
}

/// The current time as Kubernetes writes it (RFC 3339, whole seconds, UTC).
#[must_use]
pub fn now() -> String {
    format_time(jiff::Timestamp::now())
}

/// A timestamp as Kubernetes writes it.
#[must_use]
pub fn format_time(time: jiff::Timestamp) -> String {
    time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Parses an RFC 3339 timestamp.
#[must_use]
pub fn parse_time(text: &str) -> Option<jiff::Timestamp> {
    text.parse().ok()
}

/// Five random characters of the alphabet Kubernetes uses for `generateName` suffixes.
#[must_use]
pub fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A human age like kubectl prints: `45s`, `5m`, `3h`, `2d`.
#[must_use]
pub fn age(since: Option<&str>) -> String {
    let Some(since) = since.and_then(parse_time) else {
        return "<unknown>".into();
    };
    let seconds = (jiff::Timestamp::now().as_second() - since.as_second()).max(0);
    human_duration(seconds)
}

/// kubectl's `HumanDuration` rounding.
#[must_use]
pub fn human_duration(seconds: i64) -> String {
    let minutes = seconds / 60;
    let hours = seconds / 3600;
    let days = hours / 24;
    let years = days / 365;
    match () {
        () if seconds < 60 * 2 => format!("{seconds}s"),
        () if minutes < 10 => {
            let s = seconds % 60;
            if s == 0 {
                format!("{minutes}m")
            } else {
                format!("{minutes}m{s}s")
            }
        }
        () if minutes < 60 * 3 => format!("{minutes}m"),
        () if hours < 8 => {
            let m = minutes % 60;
            if m == 0 {
                format!("{hours}h")
            } else {
                format!("{hours}h{m}m")
            }
        }
        () if hours < 48 => format!("{hours}h"),
        () if hours < 24 * 8 => {
            let h = hours % 24;
            if h == 0 {
                format!("{days}d")
            } else {
                format!("{days}d{h}h")
            }
        }
        () if hours < 24 * 365 * 2 => format!("{days}d"),
        () if hours < 24 * 365 * 8 => {
            let d = days % 365;
            if d == 0 {
                format!("{years}y")
            } else {
                format!("{years}y{d}d")
            }
        }
        () => format!("{years}y"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(60 * 30), "30m");
        assert_eq!(human_duration(3600 * 5 + 60 * 7), "5h7m");
        assert_eq!(human_duration(3600 * 30), "30h");
        assert_eq!(human_duration(3600 * 24 * 3), "3d");
    }

    #[test]
    fn suffixes_use_the_safe_alphabet() {
        let suffix = random_suffix();
        assert_eq!(suffix.len(), 5);
        assert!(
            suffix
                .chars()
                .all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c))
        );
    }
}
