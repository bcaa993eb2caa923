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
    if let Some(ns) = parse_utc_fast(text) {
        return Some(ns);
    }
    let text = std::str::from_utf8(text).ok()?;
    let timestamp: jiff::Timestamp = text.parse().ok()?;
    i64::try_from(timestamp.as_nanosecond()).ok()
}

/// The shape containerd writes, `YYYY-MM-DDTHH:MM:SS[.fraction]Z`, without a general parser.
fn parse_utc_fast(text: &[u8]) -> Option<i64> {
    if text.len() < 20 || text.last() != Some(&b'Z') {
        return None;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        text[range].iter().try_fold(0i64, |n, b| {
            b.is_ascii_digit().then(|| n * 10 + i64::from(b - b'0'))
        })
    };
    if text[4] != b'-'
        || text[7] != b'-'
        || text[10] != b'T'
        || text[13] != b':'
        || text[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut nanos = 0;
    let fraction = &text[19..text.len() - 1];
    if !fraction.is_empty() {
        if fraction[0] != b'.' || fraction.len() < 2 || fraction.len() > 10 {
            return None;
        }
        let value = digits(20..text.len() - 1)?;
        nanos = value * 10i64.pow(u32::try_from(10 - fraction.len()).ok()?);
    }
    // days since the epoch of the civil date (proleptic Gregorian calendar, eras of 400 years)
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second;
    seconds.checked_mul(1_000_000_000)?.checked_add(nanos)
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
    fn the_fast_time_parser_agrees_with_jiff() {
        for text in [
            "2026-11-23T05:38:27.123456789Z",
            "2026-11-23T05:38:27Z",
            "2026-11-23T05:38:27.5Z",
            "2000-02-29T23:59:59.000000001Z",
            "1970-01-01T00:00:00Z",
            "2100-03-01T00:00:00.123Z",
            "1969-12-31T23:59:59.999Z",
        ] {
            let expected = text.parse::<jiff::Timestamp>().unwrap().as_nanosecond();
            assert_eq!(
                parse_utc_fast(text.as_bytes()).map(i128::from),
                Some(expected),
                "{text}"
            );
        }
        for text in [
            "2026-11-23 05:38:27Z",
            "2026-13-01T00:00:00Z",
            "2026-11-23T05:38:27.Z",
            "2026-11-23T05:38:27+01:00",
        ] {
            assert_eq!(parse_utc_fast(text.as_bytes()), None, "{text}");
        }
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
