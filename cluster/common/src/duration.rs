//! Durations as Kubernetes tools write them: `90s`, `5m`, `1h30m`, `250ms` (Go's units), and,
//! where a human asks for a time window, `2d` and `1w` too.

use std::time::Duration;

/// Parses `text` (units ms, s, m, h; with `days`, also d and w); `None` when it is not one.
#[must_use]
pub fn parse(text: &str, days: bool) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let number: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let seconds = |factor: u64| Some(Duration::from_secs(number.checked_mul(factor)?));
        let step = match &rest[..unit] {
            "ms" => Some(Duration::from_millis(number)),
            "s" => seconds(1),
            "m" => seconds(60),
            "h" => seconds(3600),
            "d" if days => seconds(86_400),
            "w" if days => seconds(604_800),
            _ => None,
        }?;
        total = total.checked_add(step)?;
        rest = &rest[unit..];
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_units_and_days() {
        assert_eq!(parse("90s", false), Some(Duration::from_secs(90)));
        assert_eq!(parse("1h30m", false), Some(Duration::from_secs(5400)));
        assert_eq!(parse("250ms", false), Some(Duration::from_millis(250)));
        assert_eq!(parse("5", false), None);
        assert_eq!(parse("", false), None);
        assert_eq!(parse("3d", false), None);
        assert_eq!(parse("3d", true), Some(Duration::from_secs(3 * 86_400)));
        assert_eq!(parse("1w", true), Some(Duration::from_secs(604_800)));
        assert_eq!(parse("1y", true), None);
    }
}
