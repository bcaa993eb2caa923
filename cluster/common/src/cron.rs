//! CronJob schedules: the five-field cron syntax Kubernetes accepts (names, ranges, steps,
//! `@hourly`-style shorthands; a day matching either restricted day field fires, as in Vixie
//! cron), read in a time zone. The API server validates with [`Schedule::parse`]; the CronJob
//! controller asks it for missed and next times.

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::tz::TimeZone;

/// How many missed start times are counted before giving up counting (Kubernetes' limit).
pub const MISSED_LIMIT: usize = 100;

/// A parsed schedule in its time zone.
#[derive(Clone, Debug)]
pub struct Schedule {
    cron: Cron,
    zone: TimeZone,
}

/// The start times a CronJob has not met since it last ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unmet {
    /// The latest of them.
    pub latest: Timestamp,
    /// How many there were, counted up to [`MISSED_LIMIT`] + 1.
    pub count: usize,
}

impl Schedule {
    /// Parses `schedule` (spec.schedule) in `time_zone` (spec.timeZone: an IANA name; the
    /// node's local zone when absent, as kube-controller-manager does).
    ///
    /// # Errors
    /// A message for the API's `Invalid value` cause when the schedule or the zone is not valid.
    pub fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Self, String> {
        let trimmed = schedule.trim();
        if trimmed.starts_with("TZ=") || trimmed.starts_with("CRON_TZ=") {
            return Err("cannot use TZ or CRON_TZ in schedule, use timeZone field instead".into());
        }
        if trimmed.starts_with('@') && !trimmed.contains(' ') {
            let known = [
                "@yearly",
                "@annually",
                "@monthly",
                "@weekly",
                "@daily",
                "@midnight",
                "@hourly",
            ];
            if !known.contains(&trimmed.to_ascii_lowercase().as_str()) {
                return Err(format!("unrecognized descriptor: {trimmed}"));
            }
        } else if trimmed.split_whitespace().count() != 5 {
            return Err(format!(
                "expected exactly 5 fields, found {}: {trimmed}",
                trimmed.split_whitespace().count()
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(trimmed)
            .map_err(|error| error.to_string())?;
        let zone = match time_zone {
            None => TimeZone::system(),
            Some(name) => TimeZone::get(name).map_err(|_| format!("unknown time zone {name}"))?,
        };
        Ok(Self { cron, zone })
    }

    /// The start times in (`after`, `now`]: the latest and how many (up to [`MISSED_LIMIT`] + 1),
    /// or `None` when there is none.
    #[must_use]
    pub fn unmet(&self, after: Timestamp, now: Timestamp) -> Option<Unmet> {
        let mut count = 0;
        let mut latest = None;
        for time in self.cron.iter_after(after.to_zoned(self.zone.clone())) {
            let time = time.timestamp();
            if time > now {
                break;
            }
            count += 1;
            latest = Some(time);
            if count > MISSED_LIMIT {
                // too many to walk: the latest directly
                latest = self
                    .cron
                    .find_previous_occurrence(&now.to_zoned(self.zone.clone()), true)
                    .ok()
                    .map(|t| t.timestamp())
                    .or(latest);
                break;
            }
        }
        latest.map(|latest| Unmet { latest, count })
    }

    /// The first start time after `now`.
    #[must_use]
    pub fn next(&self, now: Timestamp) -> Option<Timestamp> {
        self.cron
            .find_next_occurrence(&now.to_zoned(self.zone.clone()), false)
            .ok()
            .map(|t| t.timestamp())
    }

    /// `time` as RFC 3339 in the schedule's zone (the Job's scheduled-timestamp annotation).
    #[must_use]
    pub fn format(&self, time: Timestamp) -> String {
        time.to_zoned(self.zone.clone())
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn standard_schedules_and_shorthands_parse() {
        for good in [
            "* * * * *",
            "*/5 * * * *",
            "0 9-17 * * MON-FRI",
            "15 2 1,15 jan,jul *",
            "@hourly",
            "@Daily",
            "0 0 ? * 0",
        ] {
            Schedule::parse(good, Some("UTC")).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for (bad, why) in [
            ("* * * *", "expected exactly 5 fields"),
            ("0 * * * * *", "expected exactly 5 fields"),
            ("61 * * * *", ""),
            ("@fortnightly", "unrecognized descriptor"),
            ("TZ=UTC * * * * *", "use timeZone field"),
            ("CRON_TZ=UTC 0 * * * *", "use timeZone field"),
            ("", "expected exactly 5 fields"),
        ] {
            let error = Schedule::parse(bad, Some("UTC")).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
        assert_eq!(
            Schedule::parse("* * * * *", Some("Mars/Olympus")).unwrap_err(),
            "unknown time zone Mars/Olympus"
        );
    }

    #[test]
    fn missed_times_are_counted_and_the_latest_found() {
        let every_five = Schedule::parse("*/5 * * * *", Some("UTC")).unwrap();
        let unmet = every_five
            .unmet(at("2026-11-23T10:00:00Z"), at("2026-11-23T10:17:30Z"))
            .unwrap();
        assert_eq!(unmet.latest, at("2026-11-23T10:15:00Z"));
        assert_eq!(unmet.count, 3, "10:05, 10:10, 10:15 (10:00 itself ran)");
        assert_eq!(
            every_five.unmet(at("2026-11-23T10:15:00Z"), at("2026-11-23T10:17:30Z")),
            None
        );
        assert_eq!(
            every_five.next(at("2026-11-23T10:17:30Z")),
            Some(at("2026-11-23T10:20:00Z"))
        );
        // a week of minutes: counting stops, the latest is still exact
        let every_minute = Schedule::parse("* * * * *", Some("UTC")).unwrap();
        let unmet = every_minute
            .unmet(at("2026-11-16T10:00:00Z"), at("2026-11-23T10:17:30Z"))
            .unwrap();
        assert_eq!(unmet.count, MISSED_LIMIT + 1);
        assert_eq!(unmet.latest, at("2026-11-23T10:17:00Z"));
    }

    #[test]
    fn either_restricted_day_field_fires() {
        // the 1st of the month or any Monday (2026-11-23 is a Monday)
        let schedule = Schedule::parse("0 12 1 * MON", Some("UTC")).unwrap();
        assert_eq!(
            schedule.next(at("2026-11-22T00:00:00Z")),
            Some(at("2026-11-23T12:00:00Z"))
        );
        assert_eq!(
            schedule.next(at("2026-11-30T13:00:00Z")),
            Some(at("2026-12-01T12:00:00Z"))
        );
    }

    #[test]
    fn times_are_local_to_the_zone() {
        let berlin = Schedule::parse("30 9 * * *", Some("Europe/Berlin")).unwrap();
        // winter: UTC+1; summer: UTC+2
        assert_eq!(
            berlin.next(at("2026-11-23T00:00:00Z")),
            Some(at("2026-11-23T08:30:00Z"))
        );
        assert_eq!(
            berlin.next(at("2026-07-01T00:00:00Z")),
            Some(at("2026-07-01T07:30:00Z"))
        );
        assert_eq!(
            berlin.format(at("2026-11-23T08:30:00Z")),
            "2026-11-23T09:30:00+01:00"
        );
    }
}
