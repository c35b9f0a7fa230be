//! Whether a config's values make sense together, with a message that
//! names the key when not.

use anyhow::{bail, ensure};

use super::{Config, StateStore};

/// Stack limits outside this range are mistakes: too small for any real
/// program, or large enough to reserve absurd address space per connection.
const STACK_KIB_RANGE: std::ops::RangeInclusive<usize> = 64..=65536;
/// Calls nested deeper than this are a loop, not a design.
const MAX_CALL_DEPTH: usize = 16;
/// Below this a compile process cannot start, let alone compile.
const MIN_COMPILE_MEMORY_MIB: u64 = 64;

impl Config {
    pub(super) fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            self.max_frame_bytes > 0,
            "`max_frame_bytes` must be at least 1"
        );
        ensure!(
            (1..=MAX_CALL_DEPTH).contains(&self.max_call_depth),
            "`max_call_depth` must be between 1 and {MAX_CALL_DEPTH}"
        );
        ensure!(
            self.max_connections > 0,
            "`max_connections` must be at least 1"
        );
        ensure!(
            self.max_total_memory_mib != Some(0),
            "`max_total_memory_mib` must be at least 1"
        );
        ensure!(
            self.max_connections_per_ip != Some(0),
            "`max_connections_per_ip` must be at least 1"
        );
        ensure!(
            STACK_KIB_RANGE.contains(&self.max_stack_kib),
            "`max_stack_kib` must be between {} and {}",
            STACK_KIB_RANGE.start(),
            STACK_KIB_RANGE.end()
        );
        ensure!(
            self.compile_timeout_ms > 0,
            "`compile_timeout_ms` must be at least 1"
        );
        ensure!(
            self.compile_memory_mib >= MIN_COMPILE_MEMORY_MIB,
            "`compile_memory_mib` must be at least {MIN_COMPILE_MEMORY_MIB}"
        );
        ensure!(
            self.redis_timeout_ms > 0,
            "`redis_timeout_ms` must be at least 1"
        );
        if self.state_store == StateStore::Redis {
            self.redis().validate()?;
        }
        self.limits.validate("")?;
        self.rollout.validate("")?;
        self.auth.validate()?;
        super::schedules::validate(&self.schedules, &self.auth)?;
        for (name, plugin) in &self.plugins {
            plugin.limits.validate(&format!("plugins.{name}."))?;
            plugin.rollout.validate(&format!("plugins.{name}."))?;
            let at = format!("plugins.{name}");
            plugin.grants(&at)?.check(&at)?;
        }
        Ok(())
    }

    /// Whether `plugin_dir` is a directory: what a server serves from.
    pub fn check_plugin_dir(&self) -> anyhow::Result<()> {
        match std::fs::metadata(&self.plugin_dir) {
            Ok(meta) if meta.is_dir() => Ok(()),
            Ok(_) => bail!(
                "`plugin_dir` {} is not a directory",
                self.plugin_dir.display()
            ),
            Err(err) => bail!("`plugin_dir` {}: {err}", self.plugin_dir.display()),
        }
    }
}
