//! Per-subscription rate limits: deliveries to a subscription with `rate_limit_per_second = r` start at
//! least `1/r` seconds apart. Each subscription has a next free start slot (the "theoretical arrival time"
//! of GCRA, with no burst). A claimed delivery whose slot is near takes it and waits for it in its own task;
//! one whose slot is further away goes back to the queue, due at that time, so a throttled subscription
//! never holds more than about a second's worth of deliveries (and in-flight permits) at once.
//!
//! The limit is kept per worker process: several processes sharing a database each allow the rate.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How far ahead a delivery may take a slot and wait for it in memory; later ones are deferred.
pub const HORIZON: Duration = Duration::from_secs(1);

/// What to do with one claimed delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start at this instant (now, or within [`HORIZON`]).
    StartAt(Instant),
    /// Put it back in the queue, due after this delay.
    Defer(Duration),
}

#[derive(Debug, Default)]
pub struct RateLimiter {
    next_slot: HashMap<String, Instant>,
}

impl RateLimiter {
    /// Decides for one delivery of subscription `key` limited to `per_second`; `deferred_before` is how many
    /// of its deliveries were already deferred in this round, so deferred ones are spread one slot apart.
    pub fn decide(&mut self, key: &str, per_second: u32, now: Instant, deferred_before: u32) -> Decision {
        let interval = Duration::from_secs(1) / per_second.max(1);
        if self.next_slot.len() > 10_000 {
            self.next_slot.retain(|_, at| *at > now);
        }
        let slot = self.next_slot.get(key).copied().filter(|at| *at > now).unwrap_or(now);
        if slot.duration_since(now) <= HORIZON {
            self.next_slot.insert(key.to_string(), slot + interval);
            Decision::StartAt(slot)
        } else {
            Decision::Defer(slot.duration_since(now) + interval * deferred_before)
        }
    }
}

impl RateLimiter {
    /// Gives back the latest slot of subscription `key`, taken by a delivery that then did not start (past a
    /// full lane, it went back to the queue): the next delivery takes it instead of one an interval later.
    /// Slots are taken in order and given back from the latest, so the ones still held stay spaced.
    pub fn give_back(&mut self, key: &str, per_second: u32) {
        let interval = Duration::from_secs(1) / per_second.max(1);
        if let Some(next) = self.next_slot.get_mut(key) {
            *next = next.checked_sub(interval).unwrap_or(*next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_are_spaced_by_the_interval_and_far_ones_deferred_one_slot_apart() {
        let mut limiter = RateLimiter::default();
        let now = Instant::now();
        let mut starts = Vec::new();
        let mut deferred = Vec::new();
        for _ in 0..10 {
            match limiter.decide("sub_a", 5, now, deferred.len() as u32) {
                Decision::StartAt(at) => starts.push(at.duration_since(now)),
                Decision::Defer(d) => deferred.push(d),
            }
        }
        let ms: Vec<u128> = starts.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![0, 200, 400, 600, 800, 1000]);
        let ms: Vec<u128> = deferred.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![1200, 1400, 1600, 1800]);
    }

    #[test]
    fn a_slot_given_back_is_the_next_one_taken() {
        let mut limiter = RateLimiter::default();
        let now = Instant::now();
        for _ in 0..5 {
            limiter.decide("a", 10, now, 0);
        }
        // The last two did not start: their slots (300 and 400 ms) go to the next two.
        limiter.give_back("a", 10);
        limiter.give_back("a", 10);
        assert_eq!(limiter.decide("a", 10, now, 0), Decision::StartAt(now + Duration::from_millis(300)));
        assert_eq!(limiter.decide("a", 10, now, 0), Decision::StartAt(now + Duration::from_millis(400)));
        assert_eq!(limiter.decide("a", 10, now, 0), Decision::StartAt(now + Duration::from_millis(500)));
    }

    #[test]
    fn subscriptions_do_not_share_a_bucket_and_idle_time_is_not_banked() {
        let mut limiter = RateLimiter::default();
        let now = Instant::now();
        assert_eq!(limiter.decide("a", 1, now, 0), Decision::StartAt(now));
        assert_eq!(limiter.decide("b", 1, now, 0), Decision::StartAt(now));
        let later = now + Duration::from_secs(10);
        assert_eq!(limiter.decide("a", 1, later, 0), Decision::StartAt(later));
        assert_eq!(limiter.decide("a", 1, later, 0), Decision::StartAt(later + Duration::from_secs(1)));
    }
}
