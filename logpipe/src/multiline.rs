//! Multi-line records: a stack trace, a panic, a pretty-printed value written over several
//! lines becomes one record, as Fluent Bit's multiline parsers and fluentd's
//! `multiline` parser make them.
//!
//! A [`Rule`] decides, for each line, whether it continues the record being built or starts a
//! new one: a `start` regex (lines that match begin records, the others continue), a
//! `continuation` regex (lines that match continue), or a built-in rule for what Java, Python
//! and Go print. The tail source keeps one record in progress per file and stream and sends it
//! when a line starts the next one, when it reaches `max_lines`, or when no line came for
//! `flush_ms`.

use regex::Regex;
use serde::{Deserialize, Serialize};

/// Configuration of a source's `multiline` setting.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MultilineConfig {
    /// A built-in rule: `java`, `python` or `go`.
    #[serde(default)]
    pub parser: Option<Preset>,
    /// Lines matching this regex start a record; the others continue the one before.
    #[serde(default)]
    pub start: Option<String>,
    /// Lines matching this regex continue the record before; the others start one.
    #[serde(default)]
    pub continuation: Option<String>,
    /// Milliseconds a record waits for another line before it is sent.
    #[serde(default = "default_flush_ms")]
    pub flush_ms: u64,
    /// Lines joined at most; the next line starts a new record.
    #[serde(default = "default_max_lines")]
    pub max_lines: usize,
}

const fn default_flush_ms() -> u64 {
    1000
}
const fn default_max_lines() -> usize {
    1000
}

/// The built-in rules.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// Java and JVM stack traces: `\tat …`, `... 5 more`, `Caused by: …`, `Suppressed: …`.
    Java,
    /// Python tracebacks: `Traceback (most recent call last):`, indented frames, and the
    /// exception line that ends them.
    Python,
    /// Go panics: `panic: …` or `fatal error: …`, then goroutine headers, frames and blank lines.
    Go,
}

/// How lines are grouped, compiled.
#[derive(Clone, Debug)]
pub struct Rule {
    kind: Kind,
    /// Lines joined at most.
    pub max_lines: usize,
    /// How long a record waits for more lines.
    pub flush: std::time::Duration,
}

#[derive(Clone, Debug)]
enum Kind {
    Start(Regex),
    Continuation(Regex),
    Preset(Preset, Regex),
}

impl Rule {
    /// Compiles `config`.
    ///
    /// # Errors
    /// When it names no rule or more than one, or a regex does not compile.
    pub fn new(config: &MultilineConfig) -> Result<Self, String> {
        let compile = |pattern: &str| Regex::new(pattern).map_err(|e| e.to_string());
        let kind = match (&config.parser, &config.start, &config.continuation) {
            (Some(preset), None, None) => Kind::Preset(*preset, compile(preset.pattern())?),
            (None, Some(start), None) => Kind::Start(compile(start)?),
            (None, None, Some(continuation)) => Kind::Continuation(compile(continuation)?),
            (None, None, None) => return Err("give one of parser, start or continuation".into()),
            _ => return Err("give only one of parser, start or continuation".into()),
        };
        Ok(Self {
            kind,
            max_lines: config.max_lines.max(1),
            flush: std::time::Duration::from_millis(config.flush_ms),
        })
    }

    /// Whether `line` continues a record whose first line is `first` and last line `last`.
    #[must_use]
    pub fn continues(&self, first: &str, last: &str, line: &str) -> bool {
        match &self.kind {
            Kind::Start(start) => !start.is_match(line),
            Kind::Continuation(continuation) => continuation.is_match(line),
            Kind::Preset(Preset::Java, frames) => frames.is_match(line),
            Kind::Preset(Preset::Python, frames) => {
                first.starts_with("Traceback (most recent call last):")
                    && python_continues(frames, last, line)
            }
            Kind::Preset(Preset::Go, frames) => {
                (first.starts_with("panic: ") || first.starts_with("fatal error: "))
                    && frames.is_match(line)
            }
        }
    }
}

/// A Python traceback goes on through its indented frames to its exception line; after that
/// only a chained traceback continues it (a blank line, "During handling of the above
/// exception…" or "The above exception was the direct cause…", then the next `Traceback`).
fn python_continues(frames: &Regex, last: &str, line: &str) -> bool {
    let chain = |l: &str| {
        l.starts_with("During handling of the above exception")
            || l.starts_with("The above exception was the direct cause")
    };
    let blank = |l: &str| l.trim().is_empty();
    if blank(last) || chain(last) {
        return blank(line)
            || chain(line)
            || line.starts_with("Traceback (most recent call last):");
    }
    if exception_line(last) && !last.starts_with(char::is_whitespace) {
        return blank(line) || chain(line);
    }
    (frames.is_match(line) && !blank(line)) || exception_line(line)
}

impl Preset {
    /// The continuation lines of the runtime's traces.
    fn pattern(self) -> &'static str {
        match self {
            Preset::Java => {
                r"^(\s+at\s|\s+\.\.\.\s+\d+\s+(more|common frames omitted)|\s*Caused by:|\s*Suppressed:)"
            }
            Preset::Python => {
                r"^(\s+\S|\s*$|During handling of the above exception|The above exception was the direct cause)"
            }
            Preset::Go => {
                r"^(\s|$|goroutine \d+ \[|\[signal |created by |[\w./*()\[\]{}-]+\(.*\)$|exit status \d+$)"
            }
        }
    }
}

/// `ValueError: bad input`, `KeyError`, `module.CustomError: …`.
fn exception_line(line: &str) -> bool {
    let name = line.split_once(':').map_or(line, |(name, _)| name);
    !name.is_empty()
        && !name.contains(char::is_whitespace)
        && name.chars().next().is_some_and(char::is_alphabetic)
        && [
            "Error",
            "Exception",
            "Exit",
            "Interrupt",
            "Warning",
            "Iteration",
        ]
        .iter()
        .any(|suffix| name.ends_with(suffix))
}

/// Lines being joined into one record.
#[derive(Debug)]
pub struct Joined<T> {
    /// The record's text: its lines joined by `\n`.
    pub text: String,
    /// Its first line's length (the rule reads the first line).
    first_len: usize,
    /// Lines so far.
    pub lines: usize,
    /// When the last line came.
    pub last_line: std::time::Instant,
    /// What the caller keeps with the record (time, position of the last line, …).
    pub state: T,
}

impl<T> Joined<T> {
    /// A record starting with `line`.
    #[must_use]
    pub fn new(line: String, state: T) -> Self {
        Self {
            first_len: line.len(),
            text: line,
            lines: 1,
            last_line: std::time::Instant::now(),
            state,
        }
    }

    /// Its first line.
    #[must_use]
    pub fn first(&self) -> &str {
        &self.text[..self.first_len]
    }

    /// Adds `line` (at most `max_bytes` of text in all; the rest is dropped and false returned).
    pub fn push(&mut self, line: &str, state: T, max_bytes: usize) -> bool {
        self.lines += 1;
        self.last_line = std::time::Instant::now();
        self.state = state;
        if self.text.len() + 1 + line.len() > max_bytes {
            return false;
        }
        self.text.push('\n');
        self.text.push_str(line);
        true
    }

    /// Its last line.
    #[must_use]
    pub fn last(&self) -> &str {
        self.text.rsplit('\n').next().unwrap_or_default()
    }

    /// Its text without the blank lines a rule let through at the end.
    #[must_use]
    pub fn into_text(self) -> String {
        let mut text = self.text;
        let kept = text.trim_end().len().max(self.first_len);
        text.truncate(kept);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(yaml: &str) -> Rule {
        Rule::new(&serde_yaml::from_str(yaml).unwrap()).unwrap()
    }

    /// Groups `lines` as the tail source does.
    fn group(rule: &Rule, lines: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        let mut current: Option<Joined<()>> = None;
        for line in lines {
            match current.as_mut() {
                Some(joined)
                    if joined.lines < rule.max_lines
                        && rule.continues(joined.first(), joined.last(), line) =>
                {
                    joined.push(line, (), usize::MAX);
                }
                _ => {
                    out.extend(current.take().map(Joined::into_text));
                    current = Some(Joined::new((*line).to_owned(), ()));
                }
            }
        }
        out.extend(current.map(Joined::into_text));
        out
    }

    #[test]
    fn java_stack_traces_are_one_record() {
        let rule = rule("parser: java");
        let lines = [
            "2026-11-23 10:00:00 ERROR request failed",
            "java.lang.IllegalStateException: boom",
            "\tat com.example.Shop.buy(Shop.java:42)",
            "\tat com.example.Main.main(Main.java:7)",
            "Caused by: java.io.IOException: disk",
            "\t... 2 more",
            "2026-11-23 10:00:01 INFO next request",
        ];
        let records = group(&rule, &lines);
        assert_eq!(records.len(), 3, "{records:#?}");
        assert!(records[1].starts_with("java.lang.IllegalStateException: boom\n\tat com"));
        assert!(records[1].ends_with("\t... 2 more"));
        assert_eq!(records[2], "2026-11-23 10:00:01 INFO next request");
    }

    #[test]
    fn python_tracebacks_end_with_their_exception() {
        let rule = rule("parser: python");
        let lines = [
            "Traceback (most recent call last):",
            "  File \"app.py\", line 3, in <module>",
            "    main()",
            "ValueError: bad input",
            "INFO: serving again",
            "  indented, but no traceback",
        ];
        let records = group(&rule, &lines);
        assert_eq!(
            records,
            [
                "Traceback (most recent call last):\n  File \"app.py\", line 3, in <module>\n    main()\nValueError: bad input",
                "INFO: serving again",
                "  indented, but no traceback",
            ]
        );
    }

    #[test]
    fn chained_python_tracebacks_stay_one_record() {
        let rule = rule("parser: python");
        let lines = [
            "Traceback (most recent call last):",
            "  File \"app.py\", line 3, in load",
            "KeyError: 'price'",
            "",
            "During handling of the above exception, another exception occurred:",
            "",
            "Traceback (most recent call last):",
            "  File \"app.py\", line 5, in <module>",
            "ValueError: no price",
            "",
            "serving again",
        ];
        let records = group(&rule, &lines);
        assert_eq!(records.len(), 2, "{records:#?}");
        assert!(
            records[0].ends_with("ValueError: no price"),
            "{:?}",
            records[0]
        );
        assert!(records[0].contains("During handling"));
        assert_eq!(records[1], "serving again");
    }

    #[test]
    fn go_panics_keep_their_goroutines() {
        let rule = rule("parser: go");
        let lines = [
            "panic: runtime error: index out of range [3] with length 3",
            "",
            "goroutine 1 [running]:",
            "main.main()",
            "\t/app/main.go:8 +0x1d",
            "exit status 2",
            "listening on :8080",
        ];
        let records = group(&rule, &lines);
        assert_eq!(records.len(), 2, "{records:#?}");
        assert!(records[0].contains("goroutine 1 [running]:\nmain.main()\n\t/app/main.go:8"));
        assert_eq!(records[1], "listening on :8080");
    }

    #[test]
    fn start_and_continuation_regexes_and_the_line_limit() {
        let by_start = rule("start: '^\\d{4}-'\nmax_lines: 3");
        let records = group(
            &by_start,
            &["2026-01-01 a", "b", "c", "d", "2026-01-02 e", "f"],
        );
        assert_eq!(records, ["2026-01-01 a\nb\nc", "d", "2026-01-02 e\nf"]);
        let by_continuation = rule("continuation: '^\\s'");
        let records = group(&by_continuation, &["a", " b", "c", " d"]);
        assert_eq!(records, ["a\n b", "c\n d"]);
    }

    #[test]
    fn bad_rules_are_refused_with_a_reason() {
        let refused = |yaml: &str| Rule::new(&serde_yaml::from_str(yaml).unwrap()).unwrap_err();
        assert!(refused("flush_ms: 5").contains("one of parser, start or continuation"));
        assert!(refused("parser: java\nstart: x").contains("only one"));
        assert!(refused("start: '('").contains("unclosed group"));
        assert!(serde_yaml::from_str::<MultilineConfig>("parser: cobol").is_err());
    }

    #[test]
    fn text_beyond_the_limit_is_dropped_and_reported() {
        let mut joined = Joined::new("first".to_owned(), 1);
        assert!(joined.push("second", 2, 64));
        assert!(!joined.push(&"x".repeat(100), 3, 64));
        assert_eq!(joined.text, "first\nsecond");
        assert_eq!(joined.state, 3);
        assert_eq!(joined.lines, 3);
        assert_eq!(joined.last(), "second");
    }
}
