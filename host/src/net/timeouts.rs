//! Slow and idle clients: a connection holds a place under
//! `max_connections` (and its address's share), so one that sends nothing,
//! or a message a byte a minute, must not hold it forever.
//!
//! Two independent limits, each off when zero: `idle_timeout_ms`, the
//! longest time without a complete message (from the last one, or from
//! connect), and `frame_timeout_ms`, the longest time one message may take
//! to arrive (from its first byte). A connection waiting for input sleeps
//! until the earlier of the two could expire, then asks [`Timeouts::expired`].

use std::time::{Duration, Instant};

/// A connection's time limits; `None` is never.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub idle: Option<Duration>,
    pub frame: Option<Duration>,
}

/// Which limit a connection ran out of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    Idle(Duration),
    Frame(Duration),
}

impl Expired {
    /// The metric label and log word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle(_) => "idle_timeout",
            Self::Frame(_) => "frame_timeout",
        }
    }
}

impl Timeouts {
    /// From the config's milliseconds, where 0 is never.
    pub fn from_millis(idle_ms: u64, frame_ms: u64) -> Self {
        let limit = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
        Self {
            idle: limit(idle_ms),
            frame: limit(frame_ms),
        }
    }

    /// `last_complete`: the last complete message, or the connect;
    /// `partial_since`: when the incomplete message buffered now started.
    pub fn expired(
        &self,
        last_complete: Instant,
        partial_since: Option<Instant>,
        now: Instant,
    ) -> Option<Expired> {
        if let Some(idle) = self.idle
            && now >= last_complete + idle
        {
            return Some(Expired::Idle(idle));
        }
        match (self.frame, partial_since) {
            (Some(frame), Some(since)) if now >= since + frame => Some(Expired::Frame(frame)),
            _ => None,
        }
    }

    /// When to look again, at the latest, while waiting for input. With no
    /// message under way, one may start at any moment, so the check comes
    /// a frame timeout from now: it cannot be late for a message that starts
    /// after it was set. `None`: nothing can expire.
    pub fn next_check(
        &self,
        last_complete: Instant,
        partial_since: Option<Instant>,
        now: Instant,
    ) -> Option<Instant> {
        let idle = self.idle.map(|idle| last_complete + idle);
        let frame = self.frame.map(|frame| partial_since.unwrap_or(now) + frame);
        match (idle, frame) {
            (Some(idle), Some(frame)) => Some(idle.min(frame)),
            (one, other) => one.or(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn both() -> Timeouts {
        Timeouts {
            idle: Some(10 * SEC),
            frame: Some(2 * SEC),
        }
    }

    #[test]
    fn idle_counts_from_the_last_complete_message() {
        let start = Instant::now();
        let timeouts = both();
        assert_eq!(timeouts.expired(start, None, start + 9 * SEC), None);
        assert_eq!(
            timeouts.expired(start, None, start + 10 * SEC),
            Some(Expired::Idle(10 * SEC))
        );
    }

    #[test]
    fn a_message_must_complete_within_the_frame_timeout() {
        let start = Instant::now();
        let timeouts = both();
        let partial = Some(start + 5 * SEC);
        assert_eq!(timeouts.expired(start, partial, start + 6 * SEC), None);
        assert_eq!(
            timeouts.expired(start, partial, start + 7 * SEC),
            Some(Expired::Frame(2 * SEC))
        );
    }

    #[test]
    fn the_next_check_is_never_later_than_either_deadline() {
        let start = Instant::now();
        let timeouts = both();
        assert_eq!(
            timeouts.next_check(start, None, start),
            Some(start + 2 * SEC)
        );
        assert_eq!(
            timeouts.next_check(start, None, start + 9 * SEC),
            Some(start + 10 * SEC)
        );
        let partial = Some(start + SEC);
        assert_eq!(
            timeouts.next_check(start, partial, start + SEC),
            Some(start + 3 * SEC)
        );
    }

    #[test]
    fn each_limit_works_alone_and_none_means_never() {
        let start = Instant::now();
        let later = start + 1000 * SEC;
        let idle_only = Timeouts {
            idle: Some(SEC),
            frame: None,
        };
        assert_eq!(idle_only.expired(later, Some(start), later), None);
        let frame_only = Timeouts {
            idle: None,
            frame: Some(SEC),
        };
        assert_eq!(frame_only.expired(start, None, later), None);
        assert_eq!(
            frame_only.expired(start, Some(start), later),
            Some(Expired::Frame(SEC))
        );
        let never = Timeouts {
            idle: None,
            frame: None,
        };
        assert_eq!(never.next_check(start, Some(start), later), None);
        assert_eq!(never.expired(start, Some(start), later), None);
    }
}
