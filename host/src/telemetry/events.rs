//! The server's recent events, for the operator's status page: plugins
//! loaded, rejected, removed, quarantined and revived. A bounded ring (the
//! last [`KEPT`]), global as the metrics are, recorded where the event's
//! log line is written.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

/// Events kept; older ones are dropped.
pub const KEPT: usize = 20;

/// Longest detail kept: an error message can be long.
const MAX_DETAIL: usize = 300;

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub at: SystemTime,
    /// `loaded`, `reloaded`, `rejected`, `removed`, `quarantined`, `revived`.
    pub kind: &'static str,
    /// The plugin (or the file, for a file that did not load).
    pub plugin: String,
    pub detail: String,
}

static RECENT: Mutex<VecDeque<Event>> = Mutex::new(VecDeque::new());

/// Records an event now.
pub fn record(kind: &'static str, plugin: &str, detail: impl Into<String>) {
    let mut detail = detail.into();
    if detail.len() > MAX_DETAIL {
        let mut end = MAX_DETAIL;
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        detail.truncate(end);
        detail.push_str("...");
    }
    let event = Event {
        at: SystemTime::now(),
        kind,
        plugin: plugin.to_owned(),
        detail,
    };
    let mut recent = RECENT.lock().unwrap_or_else(PoisonError::into_inner);
    if recent.len() == KEPT {
        recent.pop_front();
    }
    recent.push_back(event);
}

/// The events kept, newest first.
pub fn recent() -> Vec<Event> {
    let recent = RECENT.lock().unwrap_or_else(PoisonError::into_inner);
    recent.iter().rev().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest_and_cuts_long_details() {
        for n in 0..KEPT + 5 {
            record("loaded", &format!("p{n}"), "x".repeat(2 * MAX_DETAIL));
        }
        let recent = recent();
        assert_eq!(recent.len(), KEPT);
        assert_eq!(recent[0].plugin, format!("p{}", KEPT + 4));
        assert!(recent[0].detail.len() <= MAX_DETAIL + 3);
    }
}
