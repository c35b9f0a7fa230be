//! When a schedule runs: its cron pattern in its time zone.
//!
//! The pattern is croner's: 5 fields (minute resolution) or 6 (with
//! seconds first), with ranges, steps, lists, month and weekday names,
//! `L`, `#` and `W`, and the `@daily`-style aliases. Times are reckoned in
//! the schedule's zone, so a daily schedule runs at the same wall-clock
//! time all year and once on the days clocks change: in a skipped hour at
//! the first minute after it, in a repeated hour at its first pass.

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

/// Why a schedule's `cron` or `timezone` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("`{0}` is not a cron pattern of 5 or 6 fields: {1}")]
    Cron(String, String),
    #[error("`{0}` is not a cron pattern of 5 or 6 fields")]
    Fields(String),
    #[error("`{0}` matches no time")]
    Never(String),
    #[error("unknown time zone `{0}` (an IANA name such as `Europe/Paris` is expected)")]
    Zone(String),
}

/// A schedule's times.
#[derive(Debug, Clone)]
pub struct Plan {
    cron: Cron,
    zone: TimeZone,
}

impl Plan {
    /// `cron` in `timezone` (an IANA name; the host's zone when `None`).
    pub fn parse(cron: &str, timezone: Option<&str>) -> Result<Self, PlanError> {
        let fields = cron.split_whitespace().count();
        if !cron.trim_start().starts_with('@') && !(5..=6).contains(&fields) {
            return Err(PlanError::Fields(cron.to_owned()));
        }
        let parser = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build();
        let parsed = parser
            .parse(cron)
            .map_err(|err| PlanError::Cron(cron.to_owned(), err.to_string()))?;
        let zone = match timezone {
            Some(name) => TimeZone::get(name).map_err(|_| PlanError::Zone(name.to_owned()))?,
            None => TimeZone::system(),
        };
        let plan = Self { cron: parsed, zone };
        // A pattern that can never match (`0 0 31 2 *`) is refused now,
        // not found out as a schedule that silently never runs.
        if plan.next_after(Timestamp::now()).is_none() {
            return Err(PlanError::Never(cron.to_owned()));
        }
        Ok(plan)
    }

    /// The first time strictly after `after` the schedule runs, in its
    /// zone; `None` if there is none within the crate's search bounds.
    pub fn next_after(&self, after: Timestamp) -> Option<Zoned> {
        let after = after.to_zoned(self.zone.clone());
        self.cron.find_next_occurrence(&after, false).ok()
    }

    /// The last time at or before `now` the schedule was due, in its zone.
    pub fn last_due(&self, now: Timestamp) -> Option<Zoned> {
        let now = now.to_zoned(self.zone.clone());
        self.cron.find_previous_occurrence(&now, true).ok()
    }

    /// The zone's name, for people (`None` when it has none to show).
    pub fn zone_name(&self) -> Option<&str> {
        self.zone.iana_name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        let zoned: Zoned = text.parse().expect("a zoned time");
        zoned.timestamp()
    }

    /// The next `count` runs after `start`, as wall-clock times with offsets.
    fn runs(plan: &Plan, start: &str, count: usize) -> Vec<String> {
        let mut after = at(start);
        let mut runs = Vec::new();
        for _ in 0..count {
            let next = plan.next_after(after).expect("a next run");
            runs.push(next.strftime("%Y-%m-%d %H:%M:%S%:z").to_string());
            after = next.timestamp();
        }
        runs
    }

    #[test]
    fn a_daily_schedule_runs_once_on_the_days_clocks_change() {
        let plan = Plan::parse("30 2 * * *", Some("Europe/Paris")).unwrap();
        // Spring forward: 02:00 becomes 03:00, so 02:30 does not exist.
        let spring = runs(&plan, "2026-03-28T12:00:00[Europe/Paris]", 3);
        assert_eq!(
            spring,
            [
                "2026-03-29 03:00:00+02:00",
                "2026-03-30 02:30:00+02:00",
                "2026-03-31 02:30:00+02:00"
            ]
        );
        // Fall back: 02:30 happens twice; the schedule runs at the first.
        let autumn = runs(&plan, "2026-10-24T12:00:00[Europe/Paris]", 3);
        assert_eq!(
            autumn,
            [
                "2026-10-25 02:30:00+02:00",
                "2026-10-26 02:30:00+01:00",
                "2026-10-27 02:30:00+01:00"
            ]
        );
    }

    #[test]
    fn month_ends_and_names_are_understood() {
        let plan = Plan::parse("0 9 L * *", Some("UTC")).unwrap();
        let ends = runs(&plan, "2028-01-15T00:00:00[UTC]", 3);
        assert_eq!(
            ends,
            [
                "2028-01-31 09:00:00+00:00",
                "2028-02-29 09:00:00+00:00",
                "2028-03-31 09:00:00+00:00"
            ]
        );
        let plan = Plan::parse("0 7 * * mon-fri", Some("UTC")).unwrap();
        let weekdays = runs(&plan, "2026-12-04T08:00:00[UTC]", 2);
        assert_eq!(
            weekdays,
            ["2026-12-07 07:00:00+00:00", "2026-12-08 07:00:00+00:00"]
        );
        let plan = Plan::parse("*/20 * * * * *", Some("UTC")).unwrap();
        let seconds = runs(&plan, "2026-12-04T08:00:05[UTC]", 2);
        assert_eq!(
            seconds,
            ["2026-12-04 08:00:20+00:00", "2026-12-04 08:00:40+00:00"]
        );
    }

    #[test]
    fn days_of_month_and_of_week_either_match_and_aliases_work() {
        // The 1st of the month or a Monday, as cron has always read it.
        let plan = Plan::parse("0 12 1 * mon", Some("UTC")).unwrap();
        let days = runs(&plan, "2026-12-29T13:00:00[UTC]", 2);
        assert_eq!(
            days,
            ["2027-01-01 12:00:00+00:00", "2027-01-04 12:00:00+00:00"]
        );
        let plan = Plan::parse("0 18 * * fri#2", Some("UTC")).unwrap();
        let second_friday = runs(&plan, "2026-12-01T00:00:00[UTC]", 1);
        assert_eq!(second_friday, ["2026-12-11 18:00:00+00:00"]);
        let plan = Plan::parse("@daily", Some("UTC")).unwrap();
        let daily = runs(&plan, "2026-12-04T08:00:00[UTC]", 1);
        assert_eq!(daily, ["2026-12-05 00:00:00+00:00"]);
    }

    #[test]
    fn bad_patterns_and_zones_are_refused() {
        for cron in [
            "",
            "* * * *",
            "* * * * * * *",
            "61 * * * *",
            "0 0 31 2 *",
            "bogus",
        ] {
            assert!(Plan::parse(cron, None).is_err(), "{cron:?}");
        }
        let zone = Plan::parse("* * * * *", Some("Mars/Olympus")).unwrap_err();
        assert!(zone.to_string().contains("Mars/Olympus"), "{zone}");
        assert!(Plan::parse("@daily", Some("Asia/Tokyo")).is_ok());
    }
}
