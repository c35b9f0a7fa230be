//! The server's configuration: one TOML file, one struct, defaults and
//! validation in one place. Every key is documented in
//! `docs/configuration.md` and in the commented `config.toml`; a test holds
//! both to the struct.
//!
//! Unknown keys are errors rather than silently ignored: a misspelt limit that
//! quietly falls back to its default is worse than a server that refuses to
//! start and names the key. Relative paths are resolved against the config
//! file's directory, so the server behaves the same from any working directory.
//!
//! The files: `parse.rs` reads the TOML (the limit keys, allowed at the top
//! level and per plugin, are one struct in both places), `validate.rs`
//! checks values, `limits.rs` and `plugins.rs` turn settings into what the
//! plugin runtime takes, `security.rs` holds the auth and TLS tables,
//! `reload.rs` decides what a SIGHUP may change, `build.rs` makes the engine
//! options and the state store.

mod build;
mod limits;
mod parse;
mod plugins;
mod reload;
mod rollout;
mod schedules;
mod security;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use crate::plugin::EngineOptions;
pub use limits::LimitSettings;
pub use plugins::PluginSettings;
pub use rollout::RolloutSettings;
pub use schedules::ScheduleSettings;
pub use security::{AuthSettings, TlsSettings, TokenSettings};

/// `config.toml`, field by field. Every field has a default; see
/// `docs/configuration.md` for the same text in user terms.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on. Port 0 picks a free port; the bound address is logged.
    pub listen: String,
    /// Directory scanned for `*.wasm` plugins. Relative to the config file.
    pub plugin_dir: PathBuf,
    /// Longest accepted message, in bytes, excluding the `<EOF>` delimiter.
    pub max_frame_bytes: usize,
    /// Connections served at once; further clients get an error reply and are closed.
    pub max_connections: usize,
    /// Connections one client address may hold at once; by default half of
    /// `max_connections`, so that no one address can take every place.
    pub max_connections_per_ip: Option<usize>,
    /// A connection with no complete message for this long (from its last
    /// one, or from connect) is closed, in milliseconds; 0: never.
    pub idle_timeout_ms: u64,
    /// A message must complete within this long of its first byte, in
    /// milliseconds; 0: never.
    pub frame_timeout_ms: u64,
    /// On SIGINT/SIGTERM, how long in-flight commands get to finish.
    pub shutdown_timeout_ms: u64,
    /// How deep plugins' `commands.call`s may nest.
    pub max_call_depth: usize,
    /// Watch `plugin_dir` and load added, changed and removed plugins live.
    pub hot_reload: bool,
    /// Keep compiled plugins on disk so a restart does not recompile them.
    pub compile_cache: bool,
    /// Where the compile cache lives. Relative to the config file.
    pub cache_dir: PathBuf,
    /// The longest a plugin's compile (in a child process) may take, in
    /// milliseconds; past it the compile is stopped and the file rejected.
    pub compile_timeout_ms: u64,
    /// Memory a plugin's compile (in a child process) may use, in MiB.
    pub compile_memory_mib: u64,
    /// Disk the incremental compilation cache may take, in MiB; 0: none.
    pub incremental_cache_mib: u64,
    /// The limits of every plugin call (top-level keys, read by `parse.rs`);
    /// a `[plugins.<name>]` table overrides them.
    #[serde(skip)]
    pub limits: LimitSettings,
    /// How a new version of a loaded plugin takes over (top-level keys,
    /// read by `parse.rs`); a `[plugins.<name>]` table overrides them.
    #[serde(skip)]
    pub rollout: RolloutSettings,
    /// Stack one plugin call may use, in KiB. Engine-wide: no per-plugin override.
    pub max_stack_kib: usize,
    /// Memory all plugin instances may hold together, in MiB; by default
    /// half of the machine's.
    pub max_total_memory_mib: Option<u64>,
    /// Where plugins' key-value state is kept on disk. Relative to the config file.
    pub state_dir: PathBuf,
    /// Memory the disk store may use to answer reads, in MiB; 0: every read
    /// goes to the file.
    pub state_cache_mib: u64,
    /// `disk` (durable, in `state_dir`), `memory` (lost at exit) or
    /// `redis` (at `redis_url`, shared by every host pointed at it).
    pub state_store: StateStore,
    /// The Redis of `state_store = "redis"`: `redis://[:password@]host:port[/db]`,
    /// or `rediss://` for TLS.
    pub redis_url: String,
    /// The longest a state operation waits on Redis before the command gets
    /// `error: state unavailable`, in milliseconds.
    pub redis_timeout_ms: u64,
    /// PEM CA certificates that verify a `rediss://` Redis, instead of the
    /// system's roots. Relative to the config file.
    pub redis_ca: Option<PathBuf>,
    /// Longest key a plugin may use, in bytes.
    pub max_key_bytes: u32,
    /// Longest value a plugin may store, in bytes.
    pub max_value_bytes: u32,
    /// Keys one plugin may hold.
    pub max_keys_per_plugin: u32,
    /// Bytes of keys and values one plugin may hold: with the default, a
    /// plugin cannot fill a disk of ordinary size.
    pub max_bytes_per_plugin: u64,
    /// With no auth token configured, serve only loopback clients.
    pub protected_mode: bool,
    /// Tokens clients authenticate with, and what each may run.
    pub auth: AuthSettings,
    /// Serve TLS (only) with this certificate; none by default.
    pub tls: Option<TlsSettings>,
    /// Address of the Prometheus metrics endpoint (`GET /metrics`); none by default.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `text` (for people) or `json` (one object per line, for log shippers).
    pub log_format: LogFormat,
    /// Per-plugin settings, keyed by plugin name (the file stem).
    pub plugins: BTreeMap<String, PluginSettings>,
    /// `[[schedules]]`: commands the server runs on time.
    pub schedules: Vec<ScheduleSettings>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateStore {
    Disk,
    Memory,
    Redis,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:1100".into(),
            plugin_dir: "plugins".into(),
            max_frame_bytes: 64 * 1024,
            max_connections: 1024,
            max_connections_per_ip: None,
            idle_timeout_ms: 300_000,
            frame_timeout_ms: 10_000,
            shutdown_timeout_ms: 10_000,
            max_call_depth: crate::router::DEFAULT_MAX_CALL_DEPTH,
            hot_reload: true,
            compile_cache: true,
            cache_dir: "plugboard-cache".into(),
            compile_timeout_ms: 300_000,
            compile_memory_mib: 2048,
            incremental_cache_mib: 512,
            limits: LimitSettings::default(),
            rollout: RolloutSettings::default(),
            max_stack_kib: EngineOptions::default().max_wasm_stack_bytes >> 10,
            max_total_memory_mib: None,
            state_dir: "plugboard-state".into(),
            state_cache_mib: 64,
            state_store: StateStore::Disk,
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_timeout_ms: 1000,
            redis_ca: None,
            max_key_bytes: 256,
            max_value_bytes: 64 * 1024,
            max_keys_per_plugin: 10_000,
            max_bytes_per_plugin: 64 * 1024 * 1024,
            protected_mode: true,
            auth: AuthSettings::default(),
            tls: None,
            metrics_listen: None,
            log_format: LogFormat::Text,
            plugins: BTreeMap::new(),
            schedules: Vec::new(),
        }
    }
}

impl Config {
    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let config = Self::load_settings(path)?;
        config
            .check_plugin_dir()
            .with_context(|| format!("invalid config file {}", path.display()))?;
        Ok(config)
    }

    /// Like [`Config::load`], for the commands that serve no plugin
    /// directory of the config's (`dev` serves its own, `check` and `call`
    /// a file): its `plugin_dir` need not exist.
    pub fn load_settings(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let mut config = parse::from_toml(&text)
            .with_context(|| format!("invalid config file {}", path.display()))?;
        // Absolute, so paths stay right whatever the working directory later
        // (and wasmtime's cache insists on an absolute directory).
        let path = std::path::absolute(path)
            .with_context(|| format!("cannot resolve config path {}", path.display()))?;
        config.resolve_paths(path.parent().unwrap_or(Path::new("/")));
        config
            .validate()
            .with_context(|| format!("invalid config file {}", path.display()))?;
        Ok(config)
    }

    /// The built-in defaults, for `serve` without a config file: paths are
    /// relative to the working directory.
    pub fn defaults() -> anyhow::Result<Self> {
        let mut config = Self::default();
        let cwd = std::env::current_dir().context("cannot read the working directory")?;
        config.resolve_paths(&cwd);
        config.validate()?;
        config.check_plugin_dir()?;
        Ok(config)
    }

    /// Makes every path setting absolute, relative to `base`.
    fn resolve_paths(&mut self, base: &Path) {
        for dir in [
            &mut self.plugin_dir,
            &mut self.cache_dir,
            &mut self.state_dir,
        ] {
            *dir = base.join(&*dir);
        }
        for plugin in self.plugins.values_mut() {
            plugin.resolve_paths(base);
        }
        if let Some(ca) = &mut self.redis_ca {
            *ca = base.join(&*ca);
        }
        if let Some(tls) = &mut self.tls {
            tls.resolve_paths(base);
        }
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }

    /// Connections one address may hold: as set, else half of
    /// `max_connections` (at least 1).
    pub fn max_connections_per_ip(&self) -> usize {
        self.max_connections_per_ip
            .unwrap_or((self.max_connections / 2).max(1))
    }
}

#[cfg(test)]
mod tests;
