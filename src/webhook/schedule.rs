//! When a digest subscription is delivered.
//!
//! A subscription with a `schedule` does not receive each event as it happens but a digest of the events
//! since the previous one. The schedule is either an ISO-8601 duration (`PT15M`, `PT1H`, `P1D`, `P1W`;
//! at least one minute) or a five-field cron expression (`0 8 * * 1-5`, or a nickname such as `@daily`),
//! both read in UTC. Durations fire on multiples of their length counted from the Unix epoch, so `PT1H`
//! fires on the hour and `P1D` at midnight UTC, whatever time the subscription was created.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// The shortest digest interval.
pub const MIN_INTERVAL_SECONDS: i64 = 60;
/// The longest digest interval: 366 days.
pub const MAX_INTERVAL_SECONDS: i64 = 366 * 86_400;

/// Why a digest schedule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// Empty text.
    #[error("`schedule` is empty; use an ISO-8601 duration like `PT1H` or a cron expression like `0 8 * * *`")]
    Empty,
    /// A malformed ISO-8601 duration.
    #[error(
        "`{text}` is not an ISO-8601 duration of whole weeks, days, hours, minutes and seconds (like `PT15M`, `PT1H`, `P1D`)"
    )]
    InvalidDuration {
        /// The refused text.
        text: String,
    },
    /// Years or months, whose length varies.
    #[error("`{text}` uses years or months, whose length varies; use days (`P30D`) or a cron expression")]
    CalendarUnits {
        /// The refused text.
        text: String,
    },
    /// Shorter than the minimum interval (one minute unless the operator lowered it).
    #[error("`{text}` is shorter than the minimum digest interval of {minimum} s")]
    TooShort {
        /// The refused text.
        text: String,
        /// The minimum in seconds.
        minimum: i64,
    },
    /// Longer than 366 days.
    #[error("`{text}` is longer than the maximum digest interval of 366 days")]
    TooLong {
        /// The refused text.
        text: String,
    },
    /// Not exactly five cron fields.
    #[error("`{text}` has {fields} fields; a cron schedule has five (minute hour day-of-month month day-of-week)")]
    CronFieldCount {
        /// The refused text.
        text: String,
        /// How many fields it has.
        fields: usize,
    },
    /// A five-field expression the cron parser refused.
    #[error("`{text}` is not a valid cron expression: {reason}")]
    InvalidCron {
        /// The refused text.
        text: String,
        /// The parser's explanation.
        reason: String,
    },
    /// A valid expression that never fires (like the 30th of February).
    #[error("the cron expression `{text}` never fires")]
    NeverFires {
        /// The refused text.
        text: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// A fixed interval in seconds, between the bounds above.
    Every(i64),
    /// A cron expression (boxed: it is much larger than an interval).
    Cron(Box<Cron>),
}

/// A validated digest schedule. Built by [`DigestSchedule::parse`]; shown as the text it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestSchedule {
    text: String,
    kind: Kind,
}

impl DigestSchedule {
    /// Parses an ISO-8601 duration (starting with `P`) or a five-field cron expression.
    pub fn parse(text: &str) -> Result<Self, ScheduleError> {
        Self::parse_with_minimum(text, MIN_INTERVAL_SECONDS)
    }

    /// Like [`DigestSchedule::parse`], with another minimum interval for durations (at least one second).
    /// Operators lower it for tests (`min_digest_seconds`); cron expressions fire at most once a minute anyway.
    pub fn parse_with_minimum(text: &str, minimum_seconds: i64) -> Result<Self, ScheduleError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(ScheduleError::Empty);
        }
        let kind = if text.starts_with(['P', 'p']) {
            Kind::Every(parse_interval(text, minimum_seconds.max(1))?)
        } else {
            Kind::Cron(Box::new(parse_cron(text)?))
        };
        Ok(Self { text: text.to_owned(), kind })
    }

    /// The interval in seconds, when the schedule is a duration.
    pub fn interval_seconds(&self) -> Option<i64> {
        match self.kind {
            Kind::Every(secs) => Some(secs),
            Kind::Cron(_) => None,
        }
    }

    /// The text the schedule was parsed from (trimmed).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first firing strictly after `after`. A cron expression with no later firing within the cron
    /// library's horizon (year 5000) gives [`DateTime::<Utc>::MAX_UTC`], which reads as "never".
    pub fn next_after(&self, after: DateTime<Utc>) -> DateTime<Utc> {
        match &self.kind {
            Kind::Every(secs) => {
                let next = after.timestamp().div_euclid(*secs).checked_add(1).and_then(|n| n.checked_mul(*secs));
                next.and_then(|ts| DateTime::from_timestamp(ts, 0)).unwrap_or(DateTime::<Utc>::MAX_UTC)
            }
            Kind::Cron(cron) => cron.find_next_occurrence(&after, false).unwrap_or(DateTime::<Utc>::MAX_UTC),
        }
    }
}

impl FromStr for DigestSchedule {
    type Err = ScheduleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for DigestSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Reads `P[nW][nD][T[nH][nM][nS]]` with whole numbers, each unit at most once and in that order, into
/// seconds between the bounds.
fn parse_interval(text: &str, minimum: i64) -> Result<i64, ScheduleError> {
    let invalid = || ScheduleError::InvalidDuration { text: text.to_owned() };
    let upper = text.to_ascii_uppercase();
    let rest = upper.strip_prefix('P').ok_or_else(invalid)?;
    let (date, time) = match rest.split_once('T') {
        Some((_, "")) => return Err(invalid()),
        Some((date, time)) => (date, time),
        None => (rest, ""),
    };
    if date.contains(['Y', 'M']) {
        return Err(ScheduleError::CalendarUnits { text: text.to_owned() });
    }
    let (date_secs, date_parts) = sum_components(date, &[('W', 7 * 86_400), ('D', 86_400)], text)?;
    let (time_secs, time_parts) = sum_components(time, &[('H', 3_600), ('M', 60), ('S', 1)], text)?;
    if date_parts + time_parts == 0 {
        return Err(invalid());
    }
    let total = date_secs.checked_add(time_secs).ok_or_else(|| ScheduleError::TooLong { text: text.to_owned() })?;
    if total < minimum {
        return Err(ScheduleError::TooShort { text: text.to_owned(), minimum });
    }
    if total > MAX_INTERVAL_SECONDS {
        return Err(ScheduleError::TooLong { text: text.to_owned() });
    }
    Ok(total)
}

/// Sums `<digits><unit>` components of one part of a duration; `units` lists the allowed units with their
/// length in seconds, in the order they must appear. Returns the seconds and how many components there were.
fn sum_components(part: &str, units: &[(char, i64)], text: &str) -> Result<(i64, usize), ScheduleError> {
    let invalid = || ScheduleError::InvalidDuration { text: text.to_owned() };
    let too_long = || ScheduleError::TooLong { text: text.to_owned() };
    let mut total: i64 = 0;
    let mut count = 0;
    let mut next_unit = 0;
    let mut rest = part;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let unit = rest[digits..].chars().next().ok_or_else(invalid)?;
        if digits == 0 {
            return Err(invalid());
        }
        let position = units[next_unit..].iter().position(|(u, _)| *u == unit).ok_or_else(invalid)?;
        let seconds = units[next_unit + position].1;
        next_unit += position + 1;
        let value: i64 = rest[..digits].parse().map_err(|_| too_long())?;
        total = value.checked_mul(seconds).and_then(|s| total.checked_add(s)).ok_or_else(too_long)?;
        count += 1;
        rest = &rest[digits + unit.len_utf8()..];
    }
    Ok((total, count))
}

fn parse_cron(text: &str) -> Result<Cron, ScheduleError> {
    let fields = text.split_whitespace().count();
    if !text.starts_with('@') && fields != 5 {
        return Err(ScheduleError::CronFieldCount { text: text.to_owned(), fields });
    }
    let cron = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(text)
        .map_err(|e| ScheduleError::InvalidCron { text: text.to_owned(), reason: e.to_string() })?;
    if cron.find_next_occurrence(&Utc::now(), false).is_err() {
        return Err(ScheduleError::NeverFires { text: text.to_owned() });
    }
    Ok(cron)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refused input and a check of the error it must give.
    type Case = (&'static str, fn(&ScheduleError) -> bool);
    use chrono::TimeZone as _;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).single().unwrap_or_else(|| panic!("bad test date"))
    }

    #[test]
    fn durations() {
        let cases = [
            ("PT1M", 60),
            ("PT15M", 900),
            ("PT1H", 3_600),
            ("PT1H30M", 5_400),
            ("PT90S", 90),
            ("PT60S", 60),
            ("P1D", 86_400),
            ("P1DT12H", 129_600),
            ("P1W", 604_800),
            ("P2W3D", 17 * 86_400),
            ("p1d", 86_400),
            (" PT2H ", 7_200),
            ("P366D", 366 * 86_400),
        ];
        for (text, secs) in cases {
            let schedule = DigestSchedule::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(schedule.interval_seconds(), Some(secs), "{text}");
            assert_eq!(schedule.to_string(), text.trim());
        }
    }

    #[test]
    fn duration_refusals() {
        let cases: &[Case] = &[
            ("", |e| matches!(e, ScheduleError::Empty)),
            ("   ", |e| matches!(e, ScheduleError::Empty)),
            ("P", |e| matches!(e, ScheduleError::InvalidDuration { .. })),
            ("PT", |e| matches!(e, ScheduleError::InvalidDuration { .. })),
            ("P1DT", |e| matches!(e, ScheduleError::InvalidDuration { .. })),
            ("PT1", |e| matches!(e, ScheduleError::InvalidDuration { .. })),
            ("PTH", |e| matches!(e, ScheduleError::InvalidDuration { .. })),
            ("PT1.5H", |e| matches!(e, ScheduleError::InvalidDuration { .. })),
            ("PT1M1H", |e| matches!(e, ScheduleError::InvalidDuration { .. })),
            ("PT1H1H", |e| matches!(e, ScheduleError::InvalidDuration { .. })),
            ("P1H", |e| matches!(e, ScheduleError::InvalidDuration { .. })),
            ("PT1D", |e| matches!(e, ScheduleError::InvalidDuration { .. })),
            ("P1D1W", |e| matches!(e, ScheduleError::InvalidDuration { .. })),
            ("P-1D", |e| matches!(e, ScheduleError::InvalidDuration { .. })),
            ("P1M", |e| matches!(e, ScheduleError::CalendarUnits { .. })),
            ("P1Y", |e| matches!(e, ScheduleError::CalendarUnits { .. })),
            ("PT59S", |e| matches!(e, ScheduleError::TooShort { .. })),
            ("PT0M", |e| matches!(e, ScheduleError::TooShort { .. })),
            ("P367D", |e| matches!(e, ScheduleError::TooLong { .. })),
            ("PT99999999999999999999S", |e| matches!(e, ScheduleError::TooLong { .. })),
            ("P9223372036854775807W", |e| matches!(e, ScheduleError::TooLong { .. })),
        ];
        for (text, expected) in cases {
            let err = DigestSchedule::parse(text).expect_err(text);
            assert!(expected(&err), "{text:?} gave {err:?}");
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn a_lowered_minimum_admits_second_intervals_but_not_zero() {
        let fast = DigestSchedule::parse_with_minimum("PT2S", 1).expect("parses");
        assert_eq!(fast.interval_seconds(), Some(2));
        assert!(matches!(DigestSchedule::parse("PT2S"), Err(ScheduleError::TooShort { minimum: 60, .. })));
        assert!(matches!(DigestSchedule::parse_with_minimum("PT0S", 0), Err(ScheduleError::TooShort { .. })));
    }

    #[test]
    fn durations_fire_on_epoch_multiples() {
        let hourly = DigestSchedule::parse("PT1H").expect("parses");
        assert_eq!(hourly.next_after(at(2026, 3, 4, 10, 17, 5)), at(2026, 3, 4, 11, 0, 0));
        // strictly after: a firing instant yields the next one
        assert_eq!(hourly.next_after(at(2026, 3, 4, 11, 0, 0)), at(2026, 3, 4, 12, 0, 0));
        let fractional = at(2026, 3, 4, 10, 59, 59) + chrono::Duration::milliseconds(999);
        assert_eq!(hourly.next_after(fractional), at(2026, 3, 4, 11, 0, 0));

        let quarter = DigestSchedule::parse("PT15M").expect("parses");
        assert_eq!(quarter.next_after(at(2026, 3, 4, 10, 44, 0)), at(2026, 3, 4, 10, 45, 0));

        let daily = DigestSchedule::parse("P1D").expect("parses");
        assert_eq!(daily.next_after(at(2026, 12, 31, 23, 0, 0)), at(2027, 1, 1, 0, 0, 0));

        // before the epoch too
        assert_eq!(daily.next_after(at(1969, 12, 31, 5, 0, 0)), at(1970, 1, 1, 0, 0, 0));
        assert_eq!(daily.next_after(DateTime::<Utc>::MAX_UTC), DateTime::<Utc>::MAX_UTC);
    }

    #[test]
    fn cron_expressions() {
        let weekday_mornings = DigestSchedule::parse("0 8 * * 1-5").expect("parses");
        assert_eq!(weekday_mornings.interval_seconds(), None);
        // 2026-03-06 is a Friday
        assert_eq!(weekday_mornings.next_after(at(2026, 3, 6, 9, 0, 0)), at(2026, 3, 9, 8, 0, 0));
        assert_eq!(weekday_mornings.next_after(at(2026, 3, 6, 7, 59, 59)), at(2026, 3, 6, 8, 0, 0));
        assert_eq!(weekday_mornings.next_after(at(2026, 3, 6, 8, 0, 0)), at(2026, 3, 9, 8, 0, 0), "strictly after");

        let every_five = DigestSchedule::parse("*/5 * * * *").expect("parses");
        assert_eq!(every_five.next_after(at(2026, 3, 6, 9, 2, 30)), at(2026, 3, 6, 9, 5, 0));

        let monthly = DigestSchedule::parse("30 6 1 * *").expect("parses");
        assert_eq!(monthly.next_after(at(2026, 1, 15, 0, 0, 0)), at(2026, 2, 1, 6, 30, 0));

        let daily = DigestSchedule::parse("@daily").expect("nickname");
        assert_eq!(daily.next_after(at(2026, 1, 15, 3, 0, 0)), at(2026, 1, 16, 0, 0, 0));
        assert_eq!(weekday_mornings.to_string(), "0 8 * * 1-5");
    }

    #[test]
    fn cron_refusals() {
        let cases: &[Case] = &[
            ("* * * *", |e| matches!(e, ScheduleError::CronFieldCount { fields: 4, .. })),
            ("0 * * * * *", |e| matches!(e, ScheduleError::CronFieldCount { fields: 6, .. })),
            ("hourly", |e| matches!(e, ScheduleError::CronFieldCount { fields: 1, .. })),
            ("61 * * * *", |e| matches!(e, ScheduleError::InvalidCron { .. })),
            ("* 25 * * *", |e| matches!(e, ScheduleError::InvalidCron { .. })),
            ("a b c d e", |e| matches!(e, ScheduleError::InvalidCron { .. })),
            ("@sometimes", |e| matches!(e, ScheduleError::InvalidCron { .. })),
            ("0 0 30 2 *", |e| matches!(e, ScheduleError::NeverFires { .. })),
        ];
        for (text, expected) in cases {
            let err = DigestSchedule::parse(text).expect_err(text);
            assert!(expected(&err), "{text:?} gave {err:?}");
            assert!(err.to_string().contains(text), "{err}");
        }
    }
}

/// Properties over arbitrary text, durations, cron fields and instants.
#[cfg(test)]
mod properties {
    use chrono::{Datelike as _, Timelike as _};
    use proptest::prelude::*;

    use super::*;

    /// An instant between 1970 and 2100.
    fn instant() -> impl Strategy<Value = DateTime<Utc>> {
        (0i64..4_102_444_800).prop_map(|secs| DateTime::from_timestamp(secs, 0).unwrap_or_default())
    }

    /// `P[nW][nD][T[nH][nM][nS]]` built from optional components, and the seconds it stands for.
    fn duration() -> impl Strategy<Value = (String, Option<i128>)> {
        let part = || proptest::option::of(prop_oneof![0u64..100, 0u64..100_000, any::<u64>()]);
        (part(), part(), part(), part(), part(), any::<bool>()).prop_map(|(w, d, h, m, s, lower)| {
            let mut text = String::from("P");
            let mut seconds: i128 = 0;
            for (value, unit, length) in [(w, 'W', 604_800), (d, 'D', 86_400)] {
                if let Some(v) = value {
                    text += &format!("{v}{unit}");
                    seconds += i128::from(v) * length;
                }
            }
            if h.is_some() || m.is_some() || s.is_some() {
                text.push('T');
            }
            for (value, unit, length) in [(h, 'H', 3_600), (m, 'M', 60), (s, 'S', 1)] {
                if let Some(v) = value {
                    text += &format!("{v}{unit}");
                    seconds += i128::from(v) * length;
                }
            }
            let any_part = [w, d, h, m, s].iter().any(Option::is_some);
            (if lower { text.to_lowercase() } else { text }, any_part.then_some(seconds))
        })
    }

    /// A five-field cron expression with a fixed minute and hour and a weekday list, and those values.
    fn cron() -> impl Strategy<Value = (String, u32, u32, Vec<u32>)> {
        (0u32..60, 0u32..24, proptest::collection::btree_set(0u32..7, 1..4)).prop_map(|(minute, hour, days)| {
            let list = days.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
            (format!("{minute} {hour} * * {list}"), minute, hour, days.into_iter().collect())
        })
    }

    proptest! {
        #[test]
        fn parsing_any_text_never_panics(text in prop_oneof![
            any::<String>(),
            "[pPtTwWdDhHmMsSyY0-9.-]{0,12}",
            "([0-9*/,-]{1,5} ){4}[0-9*/,-]{1,5}",
            "@[a-z]{0,8}",
        ]) {
            if let Ok(schedule) = DigestSchedule::parse(&text) {
                prop_assert_eq!(schedule.as_str(), text.trim());
                if let Some(secs) = schedule.interval_seconds() {
                    prop_assert!((MIN_INTERVAL_SECONDS..=MAX_INTERVAL_SECONDS).contains(&secs));
                }
            }
        }

        #[test]
        fn durations_add_up_or_are_refused_for_their_length((text, seconds) in duration()) {
            match (DigestSchedule::parse(&text), seconds) {
                (Ok(schedule), Some(secs)) => {
                    prop_assert!((i128::from(MIN_INTERVAL_SECONDS)..=i128::from(MAX_INTERVAL_SECONDS)).contains(&secs));
                    prop_assert_eq!(schedule.interval_seconds().map(i128::from), Some(secs));
                }
                (Err(ScheduleError::TooShort { .. }), Some(secs)) => prop_assert!(secs < i128::from(MIN_INTERVAL_SECONDS)),
                (Err(ScheduleError::TooLong { .. }), Some(secs)) => prop_assert!(secs > i128::from(MAX_INTERVAL_SECONDS)),
                (Err(ScheduleError::InvalidDuration { .. }), None) => {}
                (other, secs) => prop_assert!(false, "{text}: {other:?} for {secs:?} seconds"),
            }
        }

        #[test]
        fn durations_fire_next_on_a_multiple_within_one_interval(
            secs in MIN_INTERVAL_SECONDS..=MAX_INTERVAL_SECONDS,
            after in instant(),
        ) {
            let schedule = DigestSchedule::parse(&format!("PT{secs}S")).expect("in bounds");
            let next = schedule.next_after(after);
            prop_assert!(next > after);
            prop_assert!(next - after <= chrono::Duration::seconds(secs));
            prop_assert_eq!(next.timestamp() % secs, 0);
        }

        #[test]
        fn cron_fires_next_at_its_minute_hour_and_weekday((text, minute, hour, days) in cron(), after in instant()) {
            let schedule = DigestSchedule::parse(&text).expect("a valid cron expression");
            let next = schedule.next_after(after);
            prop_assert!(next > after);
            prop_assert!(next - after <= chrono::Duration::days(7));
            prop_assert_eq!((next.minute(), next.hour(), next.second()), (minute, hour, 0));
            prop_assert!(days.contains(&next.weekday().num_days_from_sunday()), "{next} for {text}");
            // Monotonic: a later instant never fires earlier.
            let later = after + chrono::Duration::seconds(61);
            prop_assert!(schedule.next_after(later) >= next);
        }
    }
}
