//! A new plugin version on trial: which connections it serves, and how its
//! calls fare against the version serving the rest.
//!
//! The reloader decides when a trial starts and how it ends (see
//! `reload/rollout.rs`); the routing table carries it, so that choosing a
//! version costs a connection no lock: each connection has an [`Arrival`]
//! number, and a trial serves a share of the connections that arrived after
//! it started. A connection keeps its version for the whole trial, so a
//! client never sees two versions answer in turn.
//!
//! Both versions' calls are counted from the start of the trial. The first
//! call that makes the new version fail clearly more than the serving one
//! (see [`Trial::fails_clearly_more`]) stops the trial at once: every later
//! command of every connection goes to the serving version, before the
//! reloader has even rebuilt the table without the trial.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::mpsc;

use crate::plugin::Plugin;
use crate::telemetry::Outcome;

/// When a connection arrived, in order: what decides whether a trial may
/// serve it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Arrival(u64);

static ARRIVALS: AtomicU64 = AtomicU64::new(1);

impl Arrival {
    /// The next connection's number.
    pub fn next() -> Self {
        Self(ARRIVALS.fetch_add(1, Ordering::Relaxed))
    }

    /// The number the next connection will have: a trial starting now
    /// serves connections from this one on.
    pub fn upcoming() -> u64 {
        ARRIVALS.load(Ordering::Relaxed)
    }
}

/// A trial ends at once when the new version has failed at least this many
/// calls and clearly more than the serving one: a version that fails every
/// call is rolled back on its fifth, and a single unlucky call never is.
const MIN_FAILURES: u64 = 5;
/// "Clearly more": a failed share above twice the serving version's plus
/// this many percentage points.
const MARGIN_PERCENT: u64 = 5;

/// A new version of a plugin on trial against the version serving.
pub struct Trial {
    plugin: String,
    /// The first connection it may serve.
    since: u64,
    /// The share of connections from `since` on that it serves, in percent.
    percent: u8,
    serving: Tally,
    candidate: Tally,
    /// Set once the candidate has failed clearly more: it serves no more.
    failed: AtomicBool,
    /// Where the verdict goes: the reloader, which rolls the version back.
    verdicts: mpsc::UnboundedSender<String>,
}

/// Calls of one version during a trial, and how many failed.
#[derive(Default)]
pub struct Tally {
    calls: AtomicU64,
    failures: AtomicU64,
}

/// A tally's figures at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub calls: u64,
    pub failures: u64,
}

impl Counts {
    /// The failed share, in percent.
    pub fn percent(self) -> f64 {
        match self.calls {
            0 => 0.0,
            calls => self.failures as f64 * 100.0 / calls as f64,
        }
    }
}

impl Tally {
    fn counts(&self) -> Counts {
        Counts {
            calls: self.calls.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }
}

/// Whether a call ended in a failure of the plugin's own making: a trap,
/// a timeout, its memory limit, a reply too large, or the quarantine those
/// led to. A refusal the plugin chose is an answer; a busy server, a full
/// memory budget or an unavailable store are the host's, not the version's.
pub fn is_failure(outcome: Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Trap
            | Outcome::Timeout
            | Outcome::MemoryLimit
            | Outcome::ReplyTooLarge
            | Outcome::Disabled
    )
}

impl Trial {
    /// A trial of a version of `plugin` on `percent` of the connections
    /// arriving from now on.
    pub fn start(plugin: &str, percent: u8, verdicts: mpsc::UnboundedSender<String>) -> Self {
        Self {
            plugin: plugin.to_owned(),
            since: Arrival::upcoming(),
            percent: percent.min(100),
            serving: Tally::default(),
            candidate: Tally::default(),
            failed: AtomicBool::new(false),
            verdicts,
        }
    }

    pub fn percent(&self) -> u8 {
        self.percent
    }

    /// Whether the candidate serves the connection that arrived `at`: an
    /// even spread over arrivals (with 10 %, every tenth connection), so a
    /// trial gets its share from the first connections on.
    fn serves(&self, at: Arrival) -> bool {
        let Some(nth) = at.0.checked_sub(self.since) else {
            return false;
        };
        let percent = u64::from(self.percent);
        !self.failed.load(Ordering::Relaxed) && (nth * percent) % 100 < percent
    }

    /// Whether the candidate has failed: it serves no more.
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Both versions' figures: (serving, candidate).
    pub fn counts(&self) -> (Counts, Counts) {
        (self.serving.counts(), self.candidate.counts())
    }

    /// Counts a call of the candidate (`candidate`) or of the serving
    /// version, and ends the trial the first time the candidate fails
    /// clearly more.
    fn record(&self, candidate: bool, outcome: Outcome) {
        let tally = if candidate {
            &self.candidate
        } else {
            &self.serving
        };
        tally.calls.fetch_add(1, Ordering::Relaxed);
        if !is_failure(outcome) {
            return;
        }
        tally.failures.fetch_add(1, Ordering::Relaxed);
        if candidate && self.fails_clearly_more() && !self.failed.swap(true, Ordering::Relaxed) {
            // The reloader may be gone (the server stopping): nothing to undo then.
            let _ = self.verdicts.send(self.plugin.clone());
        }
    }

    /// The rule that rolls a version back: at least [`MIN_FAILURES`]
    /// failed calls, and a failed share above twice the serving version's
    /// plus [`MARGIN_PERCENT`] points (compared in integers: failures x 100
    /// x serving calls against calls x (2 x serving failures x 100 + margin
    /// x serving calls)). With no serving calls to compare, the candidate
    /// is held to the margin alone.
    pub fn fails_clearly_more(&self) -> bool {
        let (serving, candidate) = self.counts();
        if candidate.failures < MIN_FAILURES {
            return false;
        }
        let (fails, calls) = (u128::from(candidate.failures), u128::from(candidate.calls));
        let (old_fails, old_calls) = (u128::from(serving.failures), u128::from(serving.calls));
        let margin = u128::from(MARGIN_PERCENT);
        if old_calls == 0 {
            return fails * 100 > calls * margin;
        }
        fails * 100 * old_calls > calls * (2 * old_fails * 100 + margin * old_calls)
    }
}

/// A route's version on trial.
#[derive(Clone)]
pub struct Canary {
    pub plugin: Arc<Plugin>,
    pub trial: Arc<Trial>,
}

/// The version a connection's command runs in, and the trial to count it
/// in, if one is going.
pub struct Pick<'r> {
    pub plugin: &'r Arc<Plugin>,
    trial: Option<(&'r Trial, bool)>,
}

impl<'r> Pick<'r> {
    /// The version serving the connection that arrived `at`: the canary's
    /// when its trial serves that connection, else `serving`.
    pub fn of(serving: &'r Arc<Plugin>, canary: Option<&'r Canary>, at: Arrival) -> Self {
        match canary {
            Some(canary) if canary.trial.serves(at) => Self {
                plugin: &canary.plugin,
                trial: Some((&canary.trial, true)),
            },
            Some(canary) => Self {
                plugin: serving,
                trial: Some((&canary.trial, false)),
            },
            None => Self {
                plugin: serving,
                trial: None,
            },
        }
    }

    /// Counts a call that ended in `outcome` in the trial, if one is going.
    pub fn record(&self, outcome: Outcome) {
        if let Some((trial, candidate)) = self.trial {
            trial.record(candidate, outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(percent: u8) -> (Trial, mpsc::UnboundedReceiver<String>) {
        let (verdicts, receiver) = mpsc::unbounded_channel();
        (Trial::start("p", percent, verdicts), receiver)
    }

    fn run(trial: &Trial, candidate: bool, outcome: Outcome, times: usize) {
        for _ in 0..times {
            trial.record(candidate, outcome);
        }
    }

    #[test]
    fn a_version_failing_every_call_is_stopped_on_its_fifth() {
        let (trial, mut verdicts) = trial(10);
        run(&trial, false, Outcome::Ok, 100);
        run(&trial, true, Outcome::Trap, 4);
        assert!(!trial.has_failed());
        run(&trial, true, Outcome::Timeout, 1);
        assert!(trial.has_failed());
        assert_eq!(verdicts.try_recv().ok().as_deref(), Some("p"));
        run(&trial, true, Outcome::Trap, 5);
        assert!(verdicts.try_recv().is_err(), "one verdict per trial");
    }

    #[test]
    fn failing_as_often_as_the_serving_version_is_no_reason() {
        let (trial, _verdicts) = trial(10);
        run(&trial, false, Outcome::Trap, 20);
        run(&trial, false, Outcome::Ok, 80);
        run(&trial, true, Outcome::Trap, 6);
        run(&trial, true, Outcome::Ok, 24);
        assert!(!trial.fails_clearly_more(), "20 % against 20 %");
        run(&trial, true, Outcome::Trap, 30);
        assert!(trial.has_failed(), "60 % against 20 %");
    }

    #[test]
    fn refusals_and_the_hosts_troubles_are_not_the_versions_failures() {
        let (trial, _verdicts) = trial(10);
        for outcome in [
            Outcome::Error,
            Outcome::Busy,
            Outcome::MemoryBudget,
            Outcome::StateUnavailable,
        ] {
            run(&trial, true, outcome, 10);
        }
        assert!(!trial.has_failed());
        assert_eq!(trial.counts().1.failures, 0);
    }

    #[test]
    fn a_trial_serves_its_share_of_later_connections_only() {
        let (trial, _verdicts) = trial(10);
        let at = |nth: u64| Arrival(trial.since + nth);
        assert!(!trial.serves(Arrival(trial.since - 1)));
        let served: Vec<u64> = (0..100).filter(|nth| trial.serves(at(*nth))).collect();
        assert_eq!(served, [0, 10, 20, 30, 40, 50, 60, 70, 80, 90]);
        let (half, _verdicts) = self::trial(50);
        let served = (0..100).filter(|nth| half.serves(Arrival(half.since + nth)));
        assert_eq!(served.count(), 50);
        let (everyone, _verdicts) = self::trial(100);
        assert!((0..100).all(|nth| everyone.serves(Arrival(everyone.since + nth))));
        let (nobody, _verdicts) = self::trial(0);
        assert!((0..100).all(|nth| !nobody.serves(Arrival(nobody.since + nth))));
    }

    #[test]
    fn a_failed_trial_serves_nobody() {
        let (trial, _verdicts) = trial(100);
        let at = Arrival(trial.since);
        assert!(trial.serves(at));
        run(&trial, true, Outcome::Trap, 5);
        assert!(!trial.serves(at));
    }
}
