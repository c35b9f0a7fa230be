//! The `[plugins.<name>]` tables, and the terms each plugin runs under:
//! its limits over the top level's, its own config table, its grants.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::{Config, LimitSettings, RolloutSettings};
use crate::plugin::{GrantEntries, Grants, Limits, Terms};

/// One `[plugins.<name>]` table: the plugin's own limits (an absent key means
/// "as at the top level") and its `config` table, which it reads with the WIT
/// `config.get`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginSettings {
    /// Its limit keys (read by `parse.rs`).
    #[serde(skip)]
    pub limits: LimitSettings,
    /// Its rollout keys (read by `parse.rs`).
    #[serde(skip)]
    pub rollout: RolloutSettings,
    pub config: BTreeMap<String, String>,
    /// Origins it may send HTTP(S) requests to: `"https://api.example.com"`.
    pub allow_http: Vec<String>,
    /// Outbound TCP it may open: `"IP:port"` or `"name:port"` each.
    pub allow_tcp: Vec<String>,
    /// Directories it may read: guest path = host path.
    pub dirs: BTreeMap<String, PathBuf>,
    /// Directories it may read and write: guest path = host path.
    pub writable_dirs: BTreeMap<String, PathBuf>,
    /// Commands it may run through `commands.call`: names, or `prefix*`.
    pub allow_commands: Vec<String>,
}

impl PluginSettings {
    /// The capabilities this table grants; `at` is its key path.
    pub(super) fn grants(&self, at: &str) -> anyhow::Result<Grants> {
        let entries = GrantEntries {
            allow_http: &self.allow_http,
            allow_tcp: &self.allow_tcp,
            dirs: &self.dirs,
            writable_dirs: &self.writable_dirs,
            allow_commands: &self.allow_commands,
        };
        Grants::parse(&entries, at)
    }

    /// Makes the granted directories absolute, relative to `base`.
    pub(super) fn resolve_paths(&mut self, base: &Path) {
        for dir in self
            .dirs
            .values_mut()
            .chain(self.writable_dirs.values_mut())
        {
            *dir = base.join(&*dir);
        }
    }
}

impl Config {
    /// The terms plugin `name` runs under: its limits, its config table,
    /// its grants.
    pub fn terms_for(&self, name: &str) -> Terms {
        let config = self
            .plugins
            .get(name)
            .map(|p| p.config.clone())
            .unwrap_or_default();
        // Parsed at load, so this cannot fail; a directory removed since
        // is left out when an instance is made (see `grants/dirs.rs`).
        let grants = self
            .plugins
            .get(name)
            .and_then(|p| p.grants(&format!("plugins.{name}")).ok())
            .unwrap_or_default();
        Terms {
            limits: self.limits_for(name),
            config: Arc::new(config),
            grants: Arc::new(grants),
        }
    }

    /// How a new version of plugin `name` takes over: its overrides, else
    /// the top-level values, else the defaults.
    pub fn rollout_for(&self, name: &str) -> crate::reload::Rollout {
        match self.plugins.get(name) {
            Some(own) => own.rollout.resolve_over(&self.rollout),
            None => self.rollout.resolve_over(&RolloutSettings::default()),
        }
    }

    /// The limits of plugin `name`: its overrides, else the top-level values,
    /// else the built-in defaults.
    pub fn limits_for(&self, name: &str) -> Limits {
        // By default each plugin may have an instance per connection (the
        // pool holds that many, of any plugin), never more than the pool.
        let default = Limits {
            max_instances: crate::plugin::instance_slots(self.max_connections),
            ..Limits::default()
        };
        match self.plugins.get(name) {
            Some(own) => own.limits.resolve_over(&self.limits, &default),
            None => self
                .limits
                .resolve_over(&LimitSettings::default(), &default),
        }
    }
}
