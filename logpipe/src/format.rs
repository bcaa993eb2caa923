//! Container log line formats: the CRI format containerd writes under /var/log/pods
//! (`<RFC 3339 time> <stream> <P|F> <text>`, long lines split into `P`artial pieces ended by
//! an `F`ull one) and Docker's json-file format (`{"log":"...\n","stream":"...","time":"..."}`).

use serde::{Deserialize, Serialize};

/// How the lines of a tailed file are framed.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The CRI format (containerd, CRI-O).
    #[default]
    Cri,
    /// Docker's json-file format.
    Docker,
    /// Plain lines, timestamped when read.
    Raw,
}

/// One parsed line.
#[derive(Debug, PartialEq, Eq)]
pub struct Line<'a> {
    /// Nanoseconds since the Unix epoch (0 when the line carried none).
    pub timestamp: i64,
    /// `stdout` or `stderr` (empty for raw lines).
    pub stream: &'static str,
    /// More pieces of this line follow.
    pub partial: bool,
    /// The text, without framing.
    pub text: std::borrow::Cow<'a, str>,
}

/// Why a line did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    /// The line does not have the CRI fields.
    #[error("not a CRI log line: {0}")]
    Cri(&'static str),
    /// The line is not Docker's JSON.
    #[error("not a docker json-file line: {0}")]
    Docker(String),
}

/// Parses one line (without its newline) in `format`.
///
/// # Errors
/// When the line does not follow the format; the caller keeps its text as a raw record.
pub fn parse(format: Format, line: &[u8]) -> Result<Line<'_>, FormatError> {
    match format {
        Format::Cri => parse_cri(line),
        Format::Docker => parse_docker(line),
        Format::Raw => Ok(Line {
            timestamp: 0,
            stream: "",
            partial: false,
            text: String::from_utf8_lossy(line),
        }),
    }
}

fn parse_cri(line: &[u8]) -> Result<Line<'_>, FormatError> {
    let mut fields = line.splitn(4, |b| *b == b' ');
    let time = fields.next().ok_or(FormatError::Cri("no time"))?;
    let stream = match fields.next() {
        Some(b"stdout") => "stdout",
        Some(b"stderr") => "stderr",
        _ => return Err(FormatError::Cri("no stream")),
    };
    let partial = match fields.next() {
        Some(b"P") => true,
        Some(b"F") => false,
        _ => return Err(FormatError::Cri("no P/F tag")),
    };
    let text = fields.next().unwrap_or_default();
    let timestamp = parse_time(time).ok_or(FormatError::Cri("bad time"))?;
    Ok(Line {
        timestamp,
        stream,
        partial,
        text: String::from_utf8_lossy(text),
    })
}

fn parse_docker(line: &[u8]) -> Result<Line<'_>, FormatError> {
    #[derive(Deserialize)]
    struct DockerLine {
        log: String,
        #[serde(default)]
        stream: String,
        #[serde(default)]
        time: String,
    }
    let parsed: DockerLine =
        serde_json::from_slice(line).map_err(|e| FormatError::Docker(e.to_string()))?;
    let partial = !parsed.log.ends_with('\n');
    let mut text = parsed.log;
    if text.ends_with('\n') {
        text.pop();
    }
    Ok(Line {
        timestamp: parse_time(parsed.time.as_bytes()).unwrap_or(0),
        stream: if parsed.stream == "stderr" {
            "stderr"
        } else {
            "stdout"
        },
        partial,
        text: text.into(),
    })
}

/// Nanoseconds since the epoch of an RFC 3339 time.
#[must_use]
pub fn parse_time(text: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(text).ok()?;
    let timestamp: jiff::Timestamp = text.parse().ok()?;
    i64::try_from(timestamp.as_nanosecond()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_lines() {
        let line = parse(
            Format::Cri,
            b"2026-11-23T05:38:27.123456789Z stdout F hello world",
        )
        .unwrap();
        assert_eq!(line.stream, "stdout");
        assert!(!line.partial);
        assert_eq!(line.text, "hello world");
        assert_eq!(line.timestamp, 1_795_412_307_123_456_789);
        let line = parse(Format::Cri, b"2026-11-23T05:38:27+01:00 stderr P part").unwrap();
        assert!(line.partial);
        assert_eq!(line.stream, "stderr");
        assert_eq!(
            parse(Format::Cri, b"2026-11-23T05:38:27Z stdout F")
                .unwrap()
                .text,
            ""
        );
        assert!(parse(Format::Cri, b"garbage").is_err());
        assert!(parse(Format::Cri, b"nottime stdout F x").is_err());
        assert!(parse(Format::Cri, b"2026-11-23T05:38:27Z stdin F x").is_err());
        // invalid UTF-8 is kept, replaced
        let line = parse(Format::Cri, b"2026-11-23T05:38:27Z stdout F a\xffb").unwrap();
        assert_eq!(line.text, "a\u{fffd}b");
    }

    #[test]
    fn docker_lines() {
        let line = parse(
            Format::Docker,
            br#"{"log":"hi there\n","stream":"stderr","time":"2026-11-23T05:38:27.5Z"}"#,
        )
        .unwrap();
        assert_eq!(line.text, "hi there");
        assert_eq!(line.stream, "stderr");
        assert!(!line.partial);
        assert_eq!(line.timestamp, 1_795_412_307_500_000_000);
        assert!(parse(Format::Docker, b"{not json").is_err());
    }
}
