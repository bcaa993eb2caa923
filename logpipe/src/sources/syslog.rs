//! The `syslog` source: RFC 5424 and RFC 3164 (BSD) messages over UDP (one per datagram) or
//! TCP (octet-counted or newline-delimited frames). Records are tagged
//! `<tag>.<facility>.<severity>` as fluentd's syslog input tags them, carry the level from the
//! severity and `host`, `ident`, `pid`, `msgid`, `facility`, `severity` as fields. A message
//! that does not parse is kept whole as the line (and counted).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::SourceContext;
use crate::record::{Batch, LogRecord};

/// Transport of the `syslog` source.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One message per datagram.
    #[default]
    Udp,
    /// Octet-counted (`LEN SP MSG`) or newline-delimited frames.
    Tcp,
}

/// Configuration of the `syslog` source.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// `udp` (default) or `tcp`.
    #[serde(default)]
    pub mode: Mode,
    /// Tag prefix: records are tagged `<tag>.<facility>.<severity>`.
    #[serde(default = "default_tag")]
    pub tag: String,
    /// Longest message kept whole, in bytes.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
}

fn default_listen() -> String {
    "0.0.0.0:5140".to_owned()
}
fn default_tag() -> String {
    "syslog".to_owned()
}
const fn default_max_message_bytes() -> usize {
    64 << 10
}

const FACILITIES: [&str; 24] = [
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];
const SEVERITIES: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warn", "notice", "info", "debug",
];

/// A parsed message.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// Facility number (0–23).
    pub facility: u8,
    /// Severity number (0–7).
    pub severity: u8,
    /// Nanoseconds since the epoch, when the message carried a usable time.
    pub timestamp: Option<i64>,
    /// Sending host.
    pub host: String,
    /// Application (APP-NAME, or the BSD tag).
    pub ident: String,
    /// Process id.
    pub pid: String,
    /// RFC 5424 MSGID.
    pub msgid: String,
    /// The text.
    pub text: String,
}

/// Parses one syslog message; `None` when it has no `<PRI>`.
#[must_use]
pub fn parse(raw: &str, year: i16) -> Option<Message> {
    let raw = raw.trim_end_matches(['\n', '\r', '\0']);
    let rest = raw.strip_prefix('<')?;
    let close = rest.find('>')?;
    let pri: u16 = rest[..close].parse().ok()?;
    if pri > 191 {
        return None;
    }
    let mut message = Message {
        facility: u8::try_from(pri / 8).ok()?,
        severity: u8::try_from(pri % 8).ok()?,
        ..Message::default()
    };
    let body = &rest[close + 1..];
    if let Some(body) = body.strip_prefix("1 ") {
        parse_5424(body, &mut message)?;
    } else {
        parse_3164(body, year, &mut message);
    }
    Some(message)
}

fn nil(field: &str) -> String {
    if field == "-" {
        String::new()
    } else {
        field.to_owned()
    }
}

fn parse_5424(body: &str, message: &mut Message) -> Option<()> {
    let mut parts = body.splitn(6, ' ');
    let time = parts.next()?;
    message.host = nil(parts.next()?);
    message.ident = nil(parts.next()?);
    message.pid = nil(parts.next()?);
    message.msgid = nil(parts.next()?);
    let rest = parts.next().unwrap_or_default();
    if time != "-" {
        message.timestamp = time
            .parse::<jiff::Timestamp>()
            .ok()
            .and_then(|t| i64::try_from(t.as_nanosecond()).ok());
    }
    // structured data: "-" or one or more [id k="v" ...] elements (with \] escapes)
    let text = if let Some(after) = rest.strip_prefix('-') {
        after
    } else if rest.starts_with('[') {
        let bytes = rest.as_bytes();
        let (mut i, mut depth, mut escaped, mut quoted) = (0, 0, false, false);
        while i < bytes.len() {
            let b = bytes[i];
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                quoted = !quoted;
            } else if !quoted && b == b'[' {
                depth += 1;
            } else if !quoted && b == b']' {
                depth -= 1;
                if depth == 0 && bytes.get(i + 1) != Some(&b'[') {
                    i += 1;
                    break;
                }
            }
            i += 1;
        }
        &rest[i.min(rest.len())..]
    } else {
        rest
    };
    let text = text.strip_prefix(' ').unwrap_or(text);
    message.text = text.trim_start_matches('\u{feff}').to_owned();
    Some(())
}

fn parse_3164(body: &str, year: i16, message: &mut Message) {
    // "Mmm dd hh:mm:ss HOST TAG[PID]: MSG"
    let stamp = body.get(..15).and_then(|stamp| {
        let month = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ]
        .iter()
        .position(|m| stamp.starts_with(m))?;
        let day: i8 = stamp[4..6].trim().parse().ok()?;
        let mut clock = stamp[7..15].split(':').map(|p| p.parse::<i8>().ok());
        let (hour, minute, second) = (clock.next()??, clock.next()??, clock.next()??);
        let time =
            jiff::civil::date(year, i8::try_from(month + 1).ok()?, day).at(hour, minute, second, 0);
        let zoned = time.to_zoned(jiff::tz::TimeZone::UTC).ok()?;
        i64::try_from(zoned.timestamp().as_nanosecond()).ok()
    });
    let Some(timestamp) = stamp else {
        message.text = body.to_owned();
        return;
    };
    message.timestamp = Some(timestamp);
    let rest = body[15..].trim_start();
    let (host, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    message.host = host.to_owned();
    // TAG: up to 32 alphanumerics, then "[pid]" and ":"
    let tag_end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')))
        .unwrap_or(rest.len());
    let (ident, mut after) = rest.split_at(tag_end);
    if let Some(pid_part) = after.strip_prefix('[')
        && let Some((pid, tail)) = pid_part.split_once(']')
    {
        message.pid = pid.to_owned();
        after = tail;
    }
    if let Some(text) = after.strip_prefix(':') {
        message.ident = ident.to_owned();
        message.text = text.strip_prefix(' ').unwrap_or(text).to_owned();
    } else {
        message.text = rest.to_owned();
    }
}

fn level_of(severity: u8) -> &'static str {
    match severity {
        0..=2 => "fatal",
        3 => "error",
        4 => "warn",
        5 | 6 => "info",
        _ => "debug",
    }
}

fn to_record(config: &SyslogConfig, raw: &[u8], cx: &SourceContext) -> LogRecord {
    let text = String::from_utf8_lossy(&raw[..raw.len().min(config.max_message_bytes)]);
    let year = jiff::Zoned::now().year();
    let Some(message) = parse(&text, year) else {
        cx.metrics.error("parse_failed");
        return LogRecord {
            tag: format!("{}.unknown", config.tag).into(),
            timestamp: cx.now(),
            level: crate::record::detect_level(&text),
            message: text.trim_end().to_owned(),
            node: cx.node.clone(),
            ..LogRecord::default()
        };
    };
    let facility = FACILITIES[usize::from(message.facility).min(23)];
    let severity = SEVERITIES[usize::from(message.severity).min(7)];
    let mut fields = BTreeMap::new();
    for (key, value) in [
        ("host", message.host),
        ("ident", message.ident),
        ("pid", message.pid),
        ("msgid", message.msgid),
    ] {
        if !value.is_empty() {
            fields.insert(key.to_owned(), value);
        }
    }
    fields.insert("facility".into(), facility.into());
    fields.insert("severity".into(), severity.into());
    LogRecord {
        tag: format!("{}.{facility}.{severity}", config.tag).into(),
        timestamp: message.timestamp.unwrap_or_else(|| cx.now()),
        message: message.text,
        node: cx.node.clone(),
        level: level_of(message.severity),
        fields: Arc::new(fields),
        ..LogRecord::default()
    }
}

async fn send(records: Vec<LogRecord>, cx: &SourceContext) -> bool {
    let count = records.len() as u64;
    cx.metrics.received(count, 0);
    let sent = cx
        .out
        .send(Batch {
            records,
            ..Batch::default()
        })
        .await
        .is_ok();
    if sent {
        cx.metrics.sent(count);
    }
    sent
}

/// Runs the UDP listener until shutdown.
pub(crate) async fn run_udp(config: SyslogConfig, cx: SourceContext, socket: UdpSocket) {
    let mut buffer = vec![0u8; 65_536];
    loop {
        let received = tokio::select! {
            () = cx.shutdown.cancelled() => return,
            received = socket.recv_from(&mut buffer) => received,
        };
        let Ok((size, _)) = received else { continue };
        let mut records = vec![to_record(&config, &buffer[..size], &cx)];
        cx.metrics.received(0, size as u64);
        // take whatever else is already waiting, into the same batch
        while records.len() < 1024 {
            match socket.try_recv_from(&mut buffer) {
                Ok((size, _)) => {
                    cx.metrics.received(0, size as u64);
                    records.push(to_record(&config, &buffer[..size], &cx));
                }
                Err(_) => break,
            }
        }
        if !send(records, &cx).await {
            return;
        }
    }
}

/// Runs the TCP listener until shutdown.
pub(crate) async fn run_tcp(config: SyslogConfig, cx: SourceContext, listener: TcpListener) {
    let cx = Arc::new(cx);
    loop {
        let accepted = tokio::select! {
            () = cx.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else { continue };
        let (config, cx) = (config.clone(), cx.clone());
        tokio::spawn(async move {
            let _ = tcp_connection(stream, &config, &cx).await;
        });
    }
}

async fn tcp_connection(
    stream: TcpStream,
    config: &SyslogConfig,
    cx: &SourceContext,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    loop {
        let first = tokio::select! {
            () = cx.shutdown.cancelled() => return Ok(()),
            buffer = reader.fill_buf() => buffer?.first().copied(),
        };
        let Some(first) = first else { return Ok(()) };
        let frame = if first.is_ascii_digit() {
            // octet counting: "LEN SP MSG"
            let mut length = Vec::new();
            reader.read_until(b' ', &mut length).await?;
            let length: usize = std::str::from_utf8(&length)
                .ok()
                .and_then(|l| l.trim().parse().ok())
                .unwrap_or(0);
            let mut frame = vec![0u8; length.min(config.max_message_bytes.max(1) * 4)];
            reader.read_exact(&mut frame).await?;
            frame
        } else {
            let mut frame = Vec::new();
            reader.read_until(b'\n', &mut frame).await?;
            frame
        };
        cx.metrics.received(0, frame.len() as u64);
        if frame.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if !send(vec![to_record(config, &frame, cx)], cx).await {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_5424() {
        let m = parse(
            r#"<165>1 2026-11-23T05:38:27.5Z web-1 nginx 42 ID47 [ex@1 a="b\]c"] upstream timed out"#,
            2026,
        )
        .unwrap();
        assert_eq!((m.facility, m.severity), (20, 5));
        assert_eq!(m.host, "web-1");
        assert_eq!(
            (m.ident.as_str(), m.pid.as_str(), m.msgid.as_str()),
            ("nginx", "42", "ID47")
        );
        assert_eq!(m.text, "upstream timed out");
        assert_eq!(m.timestamp, Some(1_795_412_307_500_000_000));
        let m = parse("<11>1 - - - - - - plain", 2026).unwrap();
        assert_eq!((m.text.as_str(), m.timestamp), ("plain", None));
    }

    #[test]
    fn rfc_3164() {
        let m = parse(
            "<34>Nov 23 05:38:27 mymachine su[123]: 'su root' failed\n",
            2026,
        )
        .unwrap();
        assert_eq!((m.facility, m.severity), (4, 2));
        assert_eq!(m.host, "mymachine");
        assert_eq!((m.ident.as_str(), m.pid.as_str()), ("su", "123"));
        assert_eq!(m.text, "'su root' failed");
        assert_eq!(m.timestamp, Some(1_795_412_307_000_000_000));
        let m = parse("<13>Nov  3 01:02:03 host app: hi", 2026).unwrap();
        assert_eq!((m.ident.as_str(), m.text.as_str()), ("app", "hi"));
        // no header: the text is kept
        let m = parse("<13>just text", 2026).unwrap();
        assert_eq!(m.text, "just text");
        assert!(parse("no pri", 2026).is_none());
        assert!(parse("<999>x", 2026).is_none());
    }
}
