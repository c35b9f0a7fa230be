//! The limits of plugin calls, as the config spells them: one struct for
//! the top level and for every `[plugins.<name>]` table, resolved key by
//! key into the runtime's [`Limits`].

use std::time::Duration;

use anyhow::ensure;
use serde::{Deserialize, Serialize};

use crate::plugin::{Limits, MAX_QUARANTINE_AFTER};

/// The limits of plugin calls, in the config's units. Declared once for both
/// places they can be set: at the top level, for every plugin, and in a
/// plugin's own table, key by key over the top level. An unset key falls back
/// to the built-in default ([`Limits::default`]).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Wall-clock limit of one plugin call, in milliseconds.
    pub call_timeout_ms: Option<u64>,
    /// Linear memory of one plugin instance, in MiB.
    pub max_memory_mib: Option<u64>,
    /// Longest reply a plugin may send, in bytes.
    pub max_reply_bytes: Option<usize>,
    /// Failed calls among a plugin's last 4 x this many (at most 64) that
    /// disable it (0: never).
    pub quarantine_after: Option<u32>,
    /// Log lines a second a plugin may write (host.log, stdout, stderr).
    pub max_log_lines_per_sec: Option<u32>,
    /// Longest log line a plugin may write, in bytes; longer ones are cut.
    pub max_log_line_bytes: Option<usize>,
    /// Calls of one plugin that may run at once [default: twice the cores].
    pub max_concurrent_calls: Option<u32>,
    /// Live instances of one plugin [default: one per allowed connection].
    pub max_instances: Option<u32>,
}

/// wasm32's linear memory cannot exceed 4 GiB.
const MAX_MEMORY_MIB: u64 = 4096;

/// The keys of [`LimitSettings`], as they appear at the top level and in
/// every `[plugins.<name>]` table (a test holds this to the struct).
pub const LIMIT_KEYS: [&str; 8] = [
    "call_timeout_ms",
    "max_memory_mib",
    "max_reply_bytes",
    "quarantine_after",
    "max_log_lines_per_sec",
    "max_log_line_bytes",
    "max_concurrent_calls",
    "max_instances",
];

impl LimitSettings {
    /// The limits in the runtime's units: these settings where set, else
    /// `fallback`'s, else the built-in defaults. Every field is named (no
    /// `..`): a new limit cannot be forgotten here.
    pub(super) fn resolve_over(&self, fallback: &Self, default: &Limits) -> Limits {
        let Self {
            call_timeout_ms,
            max_memory_mib,
            max_reply_bytes,
            quarantine_after,
            max_log_lines_per_sec,
            max_log_line_bytes,
            max_concurrent_calls,
            max_instances,
        } = self;
        Limits {
            call_timeout: call_timeout_ms
                .or(fallback.call_timeout_ms)
                .map_or(default.call_timeout, Duration::from_millis),
            max_memory_bytes: max_memory_mib
                .or(fallback.max_memory_mib)
                .map_or(default.max_memory_bytes, |mib| (mib as usize) << 20),
            max_reply_bytes: max_reply_bytes
                .or(fallback.max_reply_bytes)
                .unwrap_or(default.max_reply_bytes),
            quarantine_after: quarantine_after
                .or(fallback.quarantine_after)
                .unwrap_or(default.quarantine_after),
            max_log_lines_per_sec: max_log_lines_per_sec
                .or(fallback.max_log_lines_per_sec)
                .unwrap_or(default.max_log_lines_per_sec),
            max_log_line_bytes: max_log_line_bytes
                .or(fallback.max_log_line_bytes)
                .unwrap_or(default.max_log_line_bytes),
            max_concurrent_calls: max_concurrent_calls
                .or(fallback.max_concurrent_calls)
                .unwrap_or(default.max_concurrent_calls),
            max_instances: max_instances
                .or(fallback.max_instances)
                .unwrap_or(default.max_instances),
        }
    }

    /// `prefix` is the key path of the table these came from, for messages.
    pub(super) fn validate(&self, prefix: &str) -> anyhow::Result<()> {
        let Self {
            call_timeout_ms,
            max_memory_mib,
            max_reply_bytes,
            quarantine_after,
            max_log_lines_per_sec: _, // 0 silences the plugin
            max_log_line_bytes,
            max_concurrent_calls,
            max_instances,
        } = self;
        ensure!(
            *max_instances != Some(0),
            "`{prefix}max_instances` must be at least 1"
        );
        ensure!(
            *call_timeout_ms != Some(0),
            "`{prefix}call_timeout_ms` must be at least 1"
        );
        if let Some(mib) = max_memory_mib {
            ensure!(
                (1..=MAX_MEMORY_MIB).contains(mib),
                "`{prefix}max_memory_mib` must be between 1 and {MAX_MEMORY_MIB}"
            );
        }
        ensure!(
            *max_reply_bytes != Some(0),
            "`{prefix}max_reply_bytes` must be at least 1"
        );
        ensure!(
            quarantine_after.is_none_or(|n| n <= MAX_QUARANTINE_AFTER),
            "`{prefix}quarantine_after` must be at most {MAX_QUARANTINE_AFTER} (0: never)"
        );
        ensure!(
            *max_concurrent_calls != Some(0),
            "`{prefix}max_concurrent_calls` must be at least 1"
        );
        ensure!(
            max_log_line_bytes.is_none_or(|bytes| bytes >= 16),
            "`{prefix}max_log_line_bytes` must be at least 16"
        );
        Ok(())
    }
}
