//! When a failed delivery is tried again.
//!
//! A [`RetrySchedule`] lists the pauses between attempts: after the first failure the first pause, after
//! the second the second, and so on; when the list runs out the delivery has failed for good. Each pause is
//! spread by ±20 % so that deliveries that failed together (a target that was down) do not all come back
//! at the same instant. A target answering 429 or 503 may say when to come back in `Retry-After`, which
//! [`retry_after`] reads.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use rand::Rng;

/// The contract's default pauses: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h.
const DEFAULT_SECONDS: [u64; 9] = [5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 14 * 3600, 20 * 3600, 24 * 3600];

/// Relative spread applied to every pause: a pause of `d` becomes a uniform draw from `[0.8 d, 1.2 d]`.
pub const JITTER: f64 = 0.2;

/// The longest wait a `Retry-After` header can impose; longer requests are cut to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Why a retry schedule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetryScheduleError {
    /// No pause at all.
    #[error("a retry schedule needs at least one delay in seconds, like `5,300,1800`")]
    Empty,
    /// An entry that is not a non-negative number of seconds.
    #[error("`{entry}` is not a non-negative number of seconds")]
    InvalidDelay {
        /// The refused entry, trimmed.
        entry: String,
    },
}

/// The pauses between delivery attempts. Built by [`RetrySchedule::parse`] or [`Default`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule(Vec<Duration>);

impl Default for RetrySchedule {
    fn default() -> Self {
        Self(DEFAULT_SECONDS.iter().map(|&s| Duration::from_secs(s)).collect())
    }
}

impl RetrySchedule {
    /// Parses a comma-separated list of delays in seconds (`5,300,1800`; fractions such as `0.2` are
    /// allowed, which keeps tests fast).
    pub fn parse(text: &str) -> Result<Self, RetryScheduleError> {
        let delays = text
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                entry
                    .parse::<f64>()
                    .ok()
                    .filter(|secs| secs.is_finite())
                    .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
                    .ok_or_else(|| RetryScheduleError::InvalidDelay { entry: entry.to_owned() })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if delays.is_empty() {
            return Err(RetryScheduleError::Empty);
        }
        Ok(Self(delays))
    }

    /// The pauses, before jitter.
    pub fn delays(&self) -> &[Duration] {
        &self.0
    }

    /// How many attempts a delivery gets in all: the first plus one per pause.
    pub fn max_attempts(&self) -> usize {
        self.0.len() + 1
    }

    /// The pause before the next attempt, given how many attempts have already been made (and failed):
    /// after attempt 1 the first pause, after attempt `n` the `n`-th. `None` once the schedule is spent.
    /// `0` is read as `1`. The pause is jittered by ±20 % with `rng`.
    pub fn next_delay<R: Rng + ?Sized>(&self, attempts_made: u32, rng: &mut R) -> Option<Duration> {
        let index = usize::try_from(attempts_made.max(1) - 1).ok()?;
        let base = *self.0.get(index)?;
        let factor = rng.gen_range((1.0 - JITTER)..=(1.0 + JITTER));
        // a pause too large to scale keeps its unjittered length rather than overflowing
        Some(Duration::try_from_secs_f64(base.as_secs_f64() * factor).unwrap_or(base))
    }
}

impl FromStr for RetrySchedule {
    type Err = RetryScheduleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for RetrySchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, delay) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}", delay.as_secs_f64())?;
        }
        Ok(())
    }
}

/// Reads a `Retry-After` header value, either delta-seconds (`120`) or an HTTP-date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`), as a wait counted from `now`. A date in the past gives zero; waits
/// longer than [`MAX_RETRY_AFTER`] are cut to it; anything unreadable gives `None` (the caller then
/// falls back to its schedule).
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // an absurdly long run of digits is still "a long time"
        Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn default_matches_contract() {
        let schedule = RetrySchedule::default();
        assert_eq!(
            schedule.delays(),
            &[
                secs(5),
                secs(300),
                secs(1800),
                secs(7200),
                secs(18000),
                secs(36000),
                secs(50400),
                secs(72000),
                secs(86400)
            ]
        );
        assert_eq!(schedule.max_attempts(), 10);
    }

    #[test]
    fn parses_lists() {
        let schedule = RetrySchedule::parse("5,300,1800").expect("parses");
        assert_eq!(schedule.delays(), &[secs(5), secs(300), secs(1800)]);
        let spaced: RetrySchedule = " 1 , 2 ,".parse().expect("parses");
        assert_eq!(spaced.delays(), &[secs(1), secs(2)]);
        let fast = RetrySchedule::parse("0,0.25").expect("parses");
        assert_eq!(fast.delays(), &[Duration::ZERO, Duration::from_millis(250)]);
        assert_eq!(schedule.to_string(), "5,300,1800");
        assert_eq!(RetrySchedule::parse(&schedule.to_string()).expect("round trip"), schedule);
    }

    #[test]
    fn refuses_bad_lists() {
        assert_eq!(RetrySchedule::parse(""), Err(RetryScheduleError::Empty));
        assert_eq!(RetrySchedule::parse(" , "), Err(RetryScheduleError::Empty));
        for bad in ["5,-1", "5,abc", "1e400", "NaN", "inf", "5s"] {
            let err = RetrySchedule::parse(bad).expect_err(bad);
            assert!(matches!(err, RetryScheduleError::InvalidDelay { .. }), "{bad}: {err:?}");
            assert!(err.to_string().contains("seconds"));
        }
    }

    #[test]
    fn next_delay_walks_the_schedule_with_jitter() {
        let schedule = RetrySchedule::parse("10,100,1000").expect("parses");
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..200 {
            for (attempts, base) in [(1u32, 10.0), (2, 100.0), (3, 1000.0)] {
                let d = schedule.next_delay(attempts, &mut rng).expect("within schedule").as_secs_f64();
                assert!((base * 0.8 - 1e-9..=base * 1.2 + 1e-9).contains(&d), "{d} outside ±20% of {base}");
            }
        }
        assert_eq!(schedule.next_delay(4, &mut rng), None);
        assert_eq!(schedule.next_delay(u32::MAX, &mut rng), None);
        let first = schedule.next_delay(0, &mut rng).expect("0 reads as 1");
        assert!(first >= secs(8) && first <= secs(12));
    }

    #[test]
    fn jitter_actually_spreads() {
        let schedule = RetrySchedule::parse("100").expect("parses");
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let draws: Vec<Duration> = (0..50).filter_map(|_| schedule.next_delay(1, &mut rng)).collect();
        let min = draws.iter().min().copied().unwrap_or_default();
        let max = draws.iter().max().copied().unwrap_or_default();
        assert!(min < secs(95) && max > secs(105), "{min:?}..{max:?}");
    }

    #[test]
    fn retry_after_delta_seconds() {
        let now = SystemTime::UNIX_EPOCH + secs(1_700_000_000);
        assert_eq!(retry_after("120", now), Some(secs(120)));
        assert_eq!(retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(retry_after("999999999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(retry_after("99999999999999999999999999", now), Some(MAX_RETRY_AFTER));
        for bad in ["", "-5", "1.5", "soon", "12abc"] {
            assert_eq!(retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_http_date() {
        // Wed, 21 Oct 2015 07:28:00 GMT = 1445412480
        let date = "Wed, 21 Oct 2015 07:28:00 GMT";
        let at = SystemTime::UNIX_EPOCH + secs(1_445_412_480);
        assert_eq!(retry_after(date, at - secs(90)), Some(secs(90)));
        assert_eq!(retry_after(date, at + secs(90)), Some(Duration::ZERO));
        assert_eq!(retry_after(date, at - secs(3 * 86400)), Some(MAX_RETRY_AFTER));
        // the obsolete forms HTTP still allows
        assert_eq!(retry_after("Wednesday, 21-Oct-15 07:28:00 GMT", at - secs(1)), Some(secs(1)));
        assert_eq!(retry_after("Wed Oct 21 07:28:00 2015", at - secs(2)), Some(secs(2)));
    }
}
