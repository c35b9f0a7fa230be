//! Slow and idle clients: a connection holds a place under
//! `max_connections` (and its address's share), so one that sends nothing,
//! or a message a byte a minute, must not hold it forever.
//!
//! Independent limits, each off when zero: `idle_timeout_ms`, the longest
//! time without a complete message (from the last one, or from connect),
//! `frame_timeout_ms`, the longest time one message may take to arrive
//! (from its first byte), and, with tokens, `auth.timeout_ms`, the longest a
//! connection may stay unauthenticated (from connect: every message before
//! a successful `auth` closes the connection, so the last complete message
//! of an unauthenticated connection is its connect). A connection waiting
//! for input sleeps until the earliest could expire, then asks
//! [`Timeouts::expired`].

use std::time::{Duration, Instant};

/// A connection's time limits; `None` is never.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub idle: Option<Duration>,
    pub frame: Option<Duration>,
    /// Set only for a connection that has yet to authenticate.
    pub auth: Option<Duration>,
}

/// Which limit a connection ran out of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    Idle(Duration),
    Frame(Duration),
    Auth(Duration),
}

impl Expired {
    /// The metric label and log word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle(_) => "idle_timeout",
            Self::Frame(_) => "frame_timeout",
            Self::Auth(_) => "auth_timeout",
        }
    }
}

impl Timeouts {
    /// From the config's milliseconds, where 0 is never; `auth_ms` applies
    /// until the connection authenticates (see [`Self::authenticated`]).
    pub fn from_millis(idle_ms: u64, frame_ms: u64, auth_ms: u64) -> Self {
        let limit = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
        Self {
            idle: limit(idle_ms),
            frame: limit(frame_ms),
            auth: limit(auth_ms),
        }
    }

    /// The limits of a connection that has authenticated (or never had to).
    pub fn authenticated(self) -> Self {
        Self { auth: None, ..self }
    }

    /// Whether any limit is set: with none, nothing needs checking.
    pub fn any(&self) -> bool {
        self.idle.is_some() || self.frame.is_some() || self.auth.is_some()
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
        if let Some(auth) = self.auth
            && now >= last_complete + auth
        {
            return Some(Expired::Auth(auth));
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
        let auth = self.auth.map(|auth| last_complete + auth);
        let frame = self.frame.map(|frame| partial_since.unwrap_or(now) + frame);
        [idle, auth, frame].into_iter().flatten().min()
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
            auth: None,
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
    fn an_unauthenticated_connection_has_its_own_deadline_until_it_authenticates() {
        let start = Instant::now();
        let timeouts = Timeouts::from_millis(300_000, 10_000, 5_000);
        assert_eq!(
            timeouts.next_check(start, None, start),
            Some(start + 5 * SEC)
        );
        assert_eq!(
            timeouts.expired(start, None, start + 5 * SEC),
            Some(Expired::Auth(5 * SEC))
        );
        let authenticated = timeouts.authenticated();
        assert_eq!(authenticated.expired(start, None, start + 5 * SEC), None);
        assert!(Timeouts::from_millis(0, 0, 1).any());
        assert!(!Timeouts::from_millis(0, 0, 1).authenticated().any());
    }

    #[test]
    fn each_limit_works_alone_and_none_means_never() {
        let start = Instant::now();
        let later = start + 1000 * SEC;
        let idle_only = Timeouts {
            idle: Some(SEC),
            frame: None,
            auth: None,
        };
        assert_eq!(idle_only.expired(later, Some(start), later), None);
        let frame_only = Timeouts {
            idle: None,
            frame: Some(SEC),
            auth: None,
        };
        assert_eq!(frame_only.expired(start, None, later), None);
        assert_eq!(
            frame_only.expired(start, Some(start), later),
            Some(Expired::Frame(SEC))
        );
        let never = Timeouts {
            idle: None,
            frame: None,
            auth: None,
        };
        assert_eq!(never.next_check(start, Some(start), later), None);
        assert_eq!(never.expired(start, Some(start), later), None);
    }
}
