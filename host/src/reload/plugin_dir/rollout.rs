//! Guarded rollout: a new version of a loaded plugin serves a share of new
//! connections for a window, beside the version serving, and takes over
//! only if it does not fail clearly more (see `router/canary.rs` for the
//! share and the rule, which the router applies on every call).
//!
//! A version on trial ends one of three ways:
//! - **rolled back** the moment it fails clearly more: every connection
//!   goes back to the serving version, and the file is not loaded again
//!   until it changes or a SIGHUP asks for it;
//! - **promoted** at the end of its window: it serves every connection, and
//!   the old version goes;
//! - **superseded** by a newer version of the file, which starts a trial
//!   of its own against the version serving.
//!
//! Some new versions take over at once, as with the guard off: a version
//! whose commands differ (a trial would route a command to one version and
//! its neighbour to the other), a version identical to the serving one,
//! and one replacing a quarantined version (which serves nobody anyway).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{LoadedFile, PluginDir};
use crate::plugin::Plugin;
use crate::router::{Canary, Serving, Trial};
use crate::telemetry::{self, events};

/// How a new version of a plugin takes over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rollout {
    /// The share of new connections it serves on trial, in percent; 0:
    /// it takes over at once.
    pub canary_percent: u8,
    /// How long the trial lasts.
    pub window: Duration,
}

impl Default for Rollout {
    /// 10 % for 10 s: a version failing every call is stopped on its fifth
    /// failure, within the first connections it serves whatever the
    /// window; 10 s lets a version that fails now and then meet enough
    /// calls at a LAN's modest traffic, and holds two versions in memory
    /// no longer than a person notices.
    fn default() -> Self {
        Self {
            canary_percent: 10,
            window: Duration::from_secs(10),
        }
    }
}

impl Rollout {
    /// Swap versions at once (the default of a bare plugin directory).
    pub const AT_ONCE: Self = Self {
        canary_percent: 0,
        window: Duration::ZERO,
    };
}

/// How each plugin's new versions take over: the config's `rollout_for`.
pub type RolloutFor = Box<dyn Fn(&str) -> Rollout + Send + Sync>;

/// The trials of a plugin directory: how they are set up, and the verdicts
/// the router sends when a version fails.
pub(super) struct Rollouts {
    pub rollout_for: RolloutFor,
    verdicts: mpsc::UnboundedSender<String>,
    failed: mpsc::UnboundedReceiver<String>,
}

impl Default for Rollouts {
    fn default() -> Self {
        let (verdicts, failed) = mpsc::unbounded_channel();
        Self {
            rollout_for: Box::new(|_| Rollout::AT_ONCE),
            verdicts,
            failed,
        }
    }
}

/// A version of a file on trial.
pub(super) struct Candidate {
    canary: Canary,
    started: Instant,
    ends: Instant,
}

impl Candidate {
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.canary.plugin
    }

    /// The same trial, with the version under new terms (a SIGHUP).
    pub fn with_plugin(&self, plugin: Arc<Plugin>) -> Self {
        Self {
            canary: Canary {
                plugin,
                trial: self.canary.trial.clone(),
            },
            started: self.started,
            ends: self.ends,
        }
    }
}

/// What ends trials: a version failing, or a window over.
pub enum RolloutEvent {
    Failed(String),
    Due,
}

/// How a newly loaded version of a file takes over.
pub(super) enum Admission {
    /// It serves every connection now.
    AtOnce(Arc<Plugin>),
    /// It goes on trial beside the version serving.
    OnTrial(Candidate),
}

impl PluginDir {
    /// How the new versions of each plugin take over from now on.
    pub fn set_rollout(&mut self, rollout_for: RolloutFor) {
        self.rollouts.rollout_for = rollout_for;
    }

    /// How `new` takes over from `serving`, said in the log.
    pub(super) fn admit(&self, serving: &Plugin, new: Arc<Plugin>) -> Admission {
        let rollout = (self.rollouts.rollout_for)(new.name());
        if rollout.canary_percent == 0 {
            return Admission::AtOnce(new);
        }
        let at_once = if new.version() == serving.version() {
            Some("it is the version serving")
        } else if serving.is_disabled() {
            Some("the version serving is quarantined")
        } else if !same_commands(serving, &new) {
            Some("its commands differ")
        } else {
            None
        };
        if let Some(why) = at_once {
            tracing::info!(plugin = new.name(), "new version takes over at once: {why}");
            return Admission::AtOnce(new);
        }
        let trial = Trial::start(
            new.name(),
            rollout.canary_percent,
            self.rollouts.verdicts.clone(),
        );
        let (percent, ms) = (rollout.canary_percent, rollout.window.as_millis());
        tracing::info!(
            plugin = new.name(),
            version = new.version(),
            serving = serving.version(),
            "new version on trial: {percent}% of new connections for {ms} ms"
        );
        let detail = format!(
            "version {} on {percent}% of new connections for {ms} ms",
            new.version()
        );
        events::record("on trial", new.name(), detail);
        let started = Instant::now();
        Admission::OnTrial(Candidate {
            canary: Canary {
                plugin: new,
                trial: Arc::new(trial),
            },
            started,
            ends: started + rollout.window,
        })
    }

    /// The next thing that ends a trial: waits for ever while none runs.
    pub async fn rollout_event(&mut self) -> RolloutEvent {
        let due = self
            .files
            .values()
            .filter_map(|loaded| loaded.candidate.as_ref().map(|c| c.ends))
            .min();
        let window_over = async {
            match due {
                Some(due) => tokio::time::sleep_until(due.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(plugin) = self.rollouts.failed.recv() => RolloutEvent::Failed(plugin),
            () = window_over => RolloutEvent::Due,
        }
    }

    /// Ends the trials `event` ends; returns whether any did (the routing
    /// table must then change).
    pub fn conclude(&mut self, event: &RolloutEvent) -> bool {
        let now = Instant::now();
        let mut changed = false;
        for loaded in self.files.values_mut() {
            let Some(candidate) = &loaded.candidate else {
                continue;
            };
            let trial = &candidate.canary.trial;
            let ends = match event {
                RolloutEvent::Failed(plugin) => {
                    trial.has_failed() && candidate.plugin().name() == plugin
                }
                RolloutEvent::Due => candidate.ends <= now,
            };
            if ends {
                match trial.has_failed() {
                    true => roll_back(loaded),
                    false => promote(loaded),
                }
                changed = true;
            }
        }
        changed
    }

    /// Lets the versions rolled back be loaded again (SIGHUP: the operator
    /// asks for another try).
    pub fn retry_rolled_back(&mut self) {
        for loaded in self.files.values_mut() {
            if loaded.rolled_back {
                loaded.rolled_back = false;
                loaded.stamp = (0, None);
                loaded.content = 0;
            }
        }
    }

    /// What the routing table serves: each file's serving version, with
    /// its version on trial.
    pub(super) fn serving(&self) -> impl Iterator<Item = Serving> + '_ {
        self.files.values().filter_map(|loaded| {
            let plugin = loaded.plugin.clone()?;
            let canary = loaded.candidate.as_ref().map(|c| c.canary.clone());
            Some(Serving { plugin, canary })
        })
    }
}

/// A trial replaced by a newer version of its file.
pub(super) fn superseded(candidate: Candidate) {
    let plugin = candidate.plugin().name();
    tracing::info!(
        plugin,
        version = candidate.plugin().version(),
        "version on trial superseded by a newer one"
    );
    telemetry::rollout(plugin, "superseded");
}

fn roll_back(loaded: &mut LoadedFile) {
    let Some(candidate) = loaded.candidate.take() else {
        return;
    };
    loaded.rolled_back = true;
    let plugin = candidate.plugin();
    let (serving, new) = candidate.canary.trial.counts();
    let ms = candidate.started.elapsed().as_millis();
    let summary = format!(
        "failed {} of {} calls ({:.1}%) against {} of {} ({:.1}%) for the version serving, {ms} ms into its trial",
        new.failures,
        new.calls,
        new.percent(),
        serving.failures,
        serving.calls,
        serving.percent(),
    );
    telemetry::rollout(plugin.name(), "rolled_back");
    tracing::warn!(
        plugin = plugin.name(),
        version = plugin.version(),
        "new version rolled back: it {summary}; loaded again when its file changes or on SIGHUP"
    );
    let detail = format!("version {} {summary}", plugin.version());
    events::record("rolled back", plugin.name(), detail);
}

fn promote(loaded: &mut LoadedFile) {
    let Some(candidate) = loaded.candidate.take() else {
        return;
    };
    let (_, new) = candidate.canary.trial.counts();
    let plugin = candidate.canary.plugin;
    let ms = candidate.started.elapsed().as_millis();
    telemetry::rollout(plugin.name(), "promoted");
    tracing::info!(
        plugin = plugin.name(),
        version = plugin.version(),
        calls = new.calls,
        failures = new.failures,
        ms,
        "new version promoted: it serves every connection"
    );
    let detail = format!(
        "version {}: {} calls, {} failed, in {ms} ms",
        plugin.version(),
        new.calls,
        new.failures
    );
    events::record("promoted", plugin.name(), detail);
    loaded.plugin = Some(plugin);
}

fn same_commands(a: &Plugin, b: &Plugin) -> bool {
    command_names(a) == command_names(b)
}

fn command_names(plugin: &Plugin) -> Vec<&str> {
    let mut names: Vec<&str> = plugin.commands().iter().map(|c| c.name.as_str()).collect();
    names.sort_unstable();
    names
}
