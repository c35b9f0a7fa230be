//! The rollout keys, as the config spells them: like the limits, set at the
//! top level and overridden key by key in a `[plugins.<name>]` table.

use std::time::Duration;

use anyhow::ensure;
use serde::{Deserialize, Serialize};

use crate::reload::Rollout;

/// How a new version of a loaded plugin takes over (see
/// `reload/plugin_dir/rollout.rs`): an unset key falls back to the top
/// level, then to [`Rollout::default`].
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolloutSettings {
    /// How long a new version serves a share of new connections before it
    /// serves every one, in milliseconds.
    pub rollout_window_ms: Option<u64>,
    /// The share of new connections a new version serves during its
    /// window, in percent; 0 swaps versions at once.
    pub rollout_canary_percent: Option<u8>,
}

/// The keys of [`RolloutSettings`] (a test holds this to the struct).
pub const ROLLOUT_KEYS: [&str; 2] = ["rollout_window_ms", "rollout_canary_percent"];

impl RolloutSettings {
    /// These settings where set, else `fallback`'s, else the defaults.
    pub(super) fn resolve_over(&self, fallback: &Self) -> Rollout {
        let Self {
            rollout_window_ms,
            rollout_canary_percent,
        } = self;
        let default = Rollout::default();
        Rollout {
            window: rollout_window_ms
                .or(fallback.rollout_window_ms)
                .map_or(default.window, Duration::from_millis),
            canary_percent: rollout_canary_percent
                .or(fallback.rollout_canary_percent)
                .unwrap_or(default.canary_percent),
        }
    }

    /// `prefix` is the key path of the table these came from, for messages.
    pub(super) fn validate(&self, prefix: &str) -> anyhow::Result<()> {
        ensure!(
            self.rollout_canary_percent
                .is_none_or(|percent| percent <= 100),
            "`{prefix}rollout_canary_percent` must be between 0 and 100"
        );
        ensure!(
            self.rollout_window_ms != Some(0),
            "`{prefix}rollout_window_ms` must be at least 1 (`rollout_canary_percent = 0` turns the guard off)"
        );
        Ok(())
    }
}
