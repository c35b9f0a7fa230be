//! The server's configuration: one TOML file, one struct, defaults and
//! validation in one place.
//!
//! Unknown keys are errors rather than silently ignored: a misspelt limit that
//! quietly falls back to its default is worse than a server that refuses to
//! start and names the key. Relative paths are resolved against the config
//! file's directory, so the server behaves the same from any working directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde::Deserialize;

use crate::plugin::{
    DirGrant, Grants, Limits, MAX_QUARANTINE_AFTER, Origin, RuntimeOptions, Setup, TcpGrant,
};
use crate::store::{KvLimits, RedisSettings, Store};

/// `config.toml`, field by field. Every field has a default; see the README's
/// configuration reference for the same text in user terms.
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
    /// Watch `plugin_dir` and load added, changed and removed plugins live.
    pub hot_reload: bool,
    /// Keep compiled plugins on disk so a restart does not recompile them.
    pub compile_cache: bool,
    /// Where the compile cache lives. Relative to the config file.
    pub cache_dir: PathBuf,
    /// The limits of every plugin call; a `[plugins.<name>]` table overrides them.
    #[serde(flatten)]
    pub limits: LimitSettings,
    /// Stack one plugin call may use, in KiB. Engine-wide: no per-plugin override.
    pub max_stack_kib: usize,
    /// Memory all plugin instances may hold together, in MiB; by default
    /// half of the machine's.
    pub max_total_memory_mib: Option<u64>,
    /// Where plugins' key-value state is kept on disk. Relative to the config file.
    pub state_dir: PathBuf,
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

/// The `[tls]` table: PEM files, relative to the config file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// The server's certificate chain, leaf first.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, clients must present a certificate issued by one of these CAs.
    pub client_ca: Option<PathBuf>,
}

/// The `[auth]` table.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// `[[auth.tokens]]`: with any, every connection must authenticate first.
    pub tokens: Vec<TokenSettings>,
}

/// One `[[auth.tokens]]` entry. The token itself is never in the config:
/// only its SHA-256, so that a leaked config leaks no credential.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSettings {
    /// Who holds it, for the log and metrics (never the token).
    pub name: String,
    /// The token's SHA-256, 64 lowercase hex digits (`plugboard token` makes both).
    pub sha256: String,
    /// The commands it may run; `"*"` is every command.
    pub commands: Vec<String>,
}

impl AuthSettings {
    fn validate(&self) -> anyhow::Result<()> {
        let mut names = std::collections::BTreeSet::new();
        for (index, token) in self.tokens.iter().enumerate() {
            let at = format!("`auth.tokens[{index}]`");
            ensure!(
                !token.name.trim().is_empty(),
                "{at}: `name` must not be empty"
            );
            ensure!(
                names.insert(token.name.as_str()),
                "{at}: the name {:?} is used twice",
                token.name
            );
            let hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
            ensure!(
                token.sha256.len() == 64 && token.sha256.chars().all(hex),
                "{at} ({:?}): `sha256` must be 64 lowercase hex digits (`plugboard token` prints one)",
                token.name
            );
            ensure!(
                !token.commands.is_empty(),
                "{at} ({:?}): `commands` must list at least one command, or \"*\"",
                token.name
            );
        }
        Ok(())
    }
}

/// One `[plugins.<name>]` table: the plugin's own limits (an absent key means
/// "as at the top level") and its `config` table, which it reads with the WIT
/// `config.get`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginSettings {
    #[serde(flatten)]
    pub limits: LimitSettings,
    pub config: BTreeMap<String, String>,
    /// Origins it may send HTTP(S) requests to: `"https://api.example.com"`.
    pub allow_http: Vec<String>,
    /// Outbound TCP it may open: `"IP:port"` or `"name:port"` each.
    pub allow_tcp: Vec<String>,
    /// Directories it may read: guest path = host path.
    pub dirs: BTreeMap<String, PathBuf>,
    /// Directories it may read and write: guest path = host path.
    pub writable_dirs: BTreeMap<String, PathBuf>,
}

impl PluginSettings {
    /// The capabilities this table grants; `at` is its key path.
    fn grants(&self, at: &str) -> anyhow::Result<Grants> {
        let http = self
            .allow_http
            .iter()
            .map(|origin| {
                origin
                    .parse::<Origin>()
                    .map_err(|err| anyhow::anyhow!("`{at}.allow_http`: {err}"))
            })
            .collect::<anyhow::Result<_>>()?;
        let mut tcp = Vec::new();
        let mut tcp_names = Vec::new();
        for target in &self.allow_tcp {
            match target.parse::<TcpGrant>() {
                Ok(TcpGrant::Address(addr)) => tcp.push(addr),
                Ok(TcpGrant::Name(name)) => tcp_names.push(name),
                Err(err) => bail!("`{at}.allow_tcp`: {err}"),
            }
        }
        let read_only = self.dirs.iter().map(|dir| (dir, false, "dirs"));
        let writable = self
            .writable_dirs
            .iter()
            .map(|dir| (dir, true, "writable_dirs"));
        let dirs = read_only
            .chain(writable)
            .map(|((guest, host), writable, key)| {
                ensure!(
                    guest.starts_with('/'),
                    "`{at}.{key}`: the guest path {guest:?} must be absolute (\"/data\")"
                );
                Ok(DirGrant {
                    guest: guest.clone(),
                    host: host.clone(),
                    writable,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Grants {
            http,
            tcp: tcp.into(),
            tcp_names: tcp_names.into(),
            dirs,
        })
    }
}

/// The limits of plugin calls, in the config's units. Declared once for both
/// places they can be set: at the top level, for every plugin, and in a
/// plugin's own table, key by key over the top level. An unset key falls back
/// to the built-in default ([`Limits::default`]).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
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
/// Stack limits outside this range are mistakes: too small for any real
/// program, or large enough to reserve absurd address space per connection.
const STACK_KIB_RANGE: std::ops::RangeInclusive<usize> = 64..=65536;

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
            hot_reload: true,
            compile_cache: true,
            cache_dir: "plugboard-cache".into(),
            limits: LimitSettings::default(),
            max_stack_kib: RuntimeOptions::default().max_wasm_stack_bytes >> 10,
            max_total_memory_mib: None,
            state_dir: "plugboard-state".into(),
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
        }
    }
}

impl Config {
    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let mut config: Self = toml::from_str(&text)
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
            for dir in plugin
                .dirs
                .values_mut()
                .chain(plugin.writable_dirs.values_mut())
            {
                *dir = base.join(&*dir);
            }
        }
        if let Some(ca) = &mut self.redis_ca {
            *ca = base.join(&*ca);
        }
        if let Some(tls) = &mut self.tls {
            for file in [&mut tls.cert, &mut tls.key] {
                *file = base.join(&*file);
            }
            if let Some(ca) = &mut tls.client_ca {
                *ca = base.join(&*ca);
            }
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            self.max_frame_bytes > 0,
            "`max_frame_bytes` must be at least 1"
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
            self.redis_timeout_ms > 0,
            "`redis_timeout_ms` must be at least 1"
        );
        if self.state_store == StateStore::Redis {
            self.redis().validate()?;
        }
        self.limits.validate("")?;
        self.auth.validate()?;
        for (name, plugin) in &self.plugins {
            plugin.limits.validate(&format!("plugins.{name}."))?;
            let at = format!("plugins.{name}");
            for dir in plugin.grants(&at)?.dirs {
                let key = if dir.writable {
                    "writable_dirs"
                } else {
                    "dirs"
                };
                ensure!(
                    dir.host.is_dir(),
                    "`{at}.{key}`: {:?} = {} is not a directory",
                    dir.guest,
                    dir.host.display()
                );
            }
        }
        match std::fs::metadata(&self.plugin_dir) {
            Ok(meta) if meta.is_dir() => Ok(()),
            Ok(_) => bail!(
                "`plugin_dir` {} is not a directory",
                self.plugin_dir.display()
            ),
            Err(err) => bail!("`plugin_dir` {}: {err}", self.plugin_dir.display()),
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

    /// The engine settings this config asks for.
    pub fn runtime_options(&self) -> RuntimeOptions {
        RuntimeOptions {
            max_concurrent_calls: self.max_connections,
            max_wasm_stack_bytes: self.max_stack_kib << 10,
            cache_dir: self.compile_cache.then(|| self.cache_dir.clone()),
            max_total_memory_bytes: self
                .max_total_memory_mib
                .map_or_else(crate::plugin::default_total_memory_bytes, |mib| {
                    (mib as usize).saturating_mul(1 << 20)
                }),
            ..RuntimeOptions::default()
        }
    }

    /// Takes from `new` what a running server can change (plugin limits and
    /// per-plugin settings) and returns the keys that differ but are read
    /// only at startup (the listener, the engine, the watcher, the store):
    /// those wait for a restart. `new` is taken apart field by field, with no
    /// `..`: the compiler makes every new key choose a side.
    pub fn apply_reload(&mut self, new: Config) -> Vec<&'static str> {
        macro_rules! classify {
            (reloadable: [$($live:ident),*], restart_only: [$($fixed:ident),* $(,)?]) => {{
                let Config { $($live,)* $($fixed,)* } = new;
                $(self.$live = $live;)*
                [$((stringify!($fixed), self.$fixed != $fixed)),*]
            }};
        }
        let keys = classify!(
            reloadable: [limits, plugins],
            restart_only: [
                listen,
                plugin_dir,
                max_frame_bytes,
                max_connections,
                max_connections_per_ip,
                idle_timeout_ms,
                frame_timeout_ms,
                shutdown_timeout_ms,
                hot_reload,
                compile_cache,
                cache_dir,
                max_stack_kib,
                max_total_memory_mib,
                state_dir,
                state_store,
                redis_url,
                redis_timeout_ms,
                redis_ca,
                max_key_bytes,
                max_value_bytes,
                max_keys_per_plugin,
                max_bytes_per_plugin,
                protected_mode,
                auth,
                tls,
                metrics_listen,
                log_format,
            ]
        );
        keys.into_iter()
            .filter(|(_, changed)| *changed)
            .map(|(key, _)| key)
            .collect()
    }

    /// Opens the key-value store this config names.
    pub fn open_store(&self) -> anyhow::Result<Store> {
        let limits = KvLimits {
            max_key_bytes: self.max_key_bytes,
            max_value_bytes: self.max_value_bytes,
            max_keys: self.max_keys_per_plugin,
            max_bytes: self.max_bytes_per_plugin,
        };
        match self.state_store {
            StateStore::Disk => Store::open_disk(&self.state_dir, limits),
            StateStore::Memory => Ok(Store::in_memory(limits)),
            StateStore::Redis => Store::open_redis(&self.redis(), limits),
        }
    }

    fn redis(&self) -> RedisSettings {
        RedisSettings {
            url: self.redis_url.clone(),
            timeout: Duration::from_millis(self.redis_timeout_ms),
            ca: self.redis_ca.clone(),
        }
    }

    /// How plugin `name` is set up: its limits and its config table.
    pub fn setup_for(&self, name: &str) -> Setup {
        let config = self
            .plugins
            .get(name)
            .map(|p| p.config.clone())
            .unwrap_or_default();
        // Validated at load, so this cannot fail; a directory removed since
        // is left out when an instance is made (see `grants.rs`).
        let grants = self
            .plugins
            .get(name)
            .and_then(|p| p.grants(&format!("plugins.{name}")).ok())
            .unwrap_or_default();
        Setup {
            limits: self.limits_for(name),
            config: std::sync::Arc::new(config),
            grants: std::sync::Arc::new(grants),
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

impl LimitSettings {
    /// The limits in the runtime's units: these settings where set, else
    /// `fallback`'s, else the built-in defaults. Every field is named (no
    /// `..`): a new limit cannot be forgotten here.
    fn resolve_over(&self, fallback: &Self, default: &Limits) -> Limits {
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
    fn validate(&self, prefix: &str) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir(dir.path().join("plugins"))?;
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text)?;
        Config::load(&path)
    }

    #[test]
    fn empty_file_means_defaults_with_paths_relative_to_the_file() {
        let config = load("").unwrap();
        assert_eq!(config.listen, "127.0.0.1:1100");
        assert_eq!(config.max_frame_bytes, 64 * 1024);
        assert!(config.plugin_dir.ends_with("plugins"));
        assert!(config.plugin_dir.is_absolute());
    }

    #[test]
    fn a_relative_config_path_gives_absolute_directories() {
        let dir = tempfile::tempdir_in(".").unwrap();
        std::fs::create_dir(dir.path().join("plugins")).unwrap();
        let name = dir.path().file_name().unwrap();
        let relative = Path::new(name).join("config.toml");
        std::fs::write(&relative, "cache_dir = \"cache\"").unwrap();
        let config = Config::load(&relative).unwrap();
        for path in [&config.plugin_dir, &config.cache_dir, &config.state_dir] {
            assert!(path.is_absolute(), "{}", path.display());
        }
        assert!(config.plugin_dir.is_dir());
    }

    #[test]
    fn unknown_key_is_named() {
        let err = format!("{:#}", load("max_frame_byte = 10").unwrap_err());
        assert!(err.contains("max_frame_byte"), "{err}");
    }

    #[test]
    fn bad_value_is_named() {
        let err = format!("{:#}", load("max_connections = \"many\"").unwrap_err());
        assert!(err.contains("max_connections"), "{err}");
    }

    /// A Redis setting that cannot work is a startup error naming the key,
    /// and never prints the password; Redis itself is not asked (it may be
    /// down at startup).
    #[test]
    fn redis_settings_are_checked_at_load() {
        let config = load("state_store = \"redis\"\nredis_url = \"redis://:pw@10.0.0.1:6379/2\"");
        assert_eq!(config.unwrap().state_store, StateStore::Redis);
        let err = format!(
            "{:#}",
            load("state_store = \"redis\"\nredis_url = \"http://:s3cret@x\"").unwrap_err()
        );
        assert!(
            err.contains("redis_url") && !err.contains("s3cret"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            load("state_store = \"redis\"\nredis_ca = \"ca.pem\"").unwrap_err()
        );
        assert!(
            err.contains("redis_ca") && err.contains("rediss://"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            load("state_store = \"redis\"\nredis_url = \"rediss://db\"\nredis_ca = \"ca.pem\"")
                .unwrap_err()
        );
        assert!(err.contains("redis_ca") && err.contains("ca.pem"), "{err}");
        let err = format!("{:#}", load("redis_timeout_ms = 0").unwrap_err());
        assert!(err.contains("redis_timeout_ms"), "{err}");
    }

    #[test]
    fn zero_limits_are_rejected() {
        let err = format!("{:#}", load("max_frame_bytes = 0").unwrap_err());
        assert!(err.contains("max_frame_bytes"), "{err}");
    }

    #[test]
    fn plugin_tables_override_top_level_limits() {
        let config = load(
            "call_timeout_ms = 500\nmax_memory_mib = 32\n\
             [plugins.slow]\ncall_timeout_ms = 5000\n",
        )
        .unwrap();
        let slow = config.limits_for("slow");
        assert_eq!(slow.call_timeout, Duration::from_millis(5000));
        assert_eq!(slow.max_memory_bytes, 32 << 20);
        let other = config.limits_for("other");
        assert_eq!(other.call_timeout, Duration::from_millis(500));
        assert_eq!(other.max_reply_bytes, 1 << 20);
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        assert_eq!(load("").unwrap().limits_for("any"), Limits::default());
    }

    #[test]
    fn bad_plugin_limit_is_named_with_its_table() {
        let err = format!(
            "{:#}",
            load("[plugins.onoff]\nmax_memory_mib = 0").unwrap_err()
        );
        assert!(err.contains("plugins.onoff.max_memory_mib"), "{err}");
        let err = format!("{:#}", load("[plugins.onoff]\nbogus = 1").unwrap_err());
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn reload_applies_limits_and_reports_restart_only_keys() {
        let mut running = load("").unwrap();
        let mut new = running.clone();
        new.limits.call_timeout_ms = Some(5);
        new.listen = "127.0.0.1:0".into();
        assert_eq!(running.apply_reload(new), ["listen"]);
        assert_eq!(running.limits.call_timeout_ms, Some(5));
        assert_eq!(running.listen, "127.0.0.1:1100");
    }

    #[test]
    fn tokens_are_checked_and_name_their_entry() {
        let hash = "a".repeat(64);
        let token = |name: &str, sha256: &str, commands: &str| {
            format!(
                "[[auth.tokens]]\nname = {name:?}\nsha256 = {sha256:?}\ncommands = {commands}\n"
            )
        };
        let ok = load(&token("panel", &hash, r#"["on"]"#)).unwrap();
        assert_eq!(ok.auth.tokens[0].commands, ["on"]);
        let upper = format!(
            "{:#}",
            load(&token("p", &"A".repeat(64), "[\"*\"]")).unwrap_err()
        );
        assert!(
            upper.contains("auth.tokens[0]") && upper.contains("sha256"),
            "{upper}"
        );
        let none = format!("{:#}", load(&token("p", &hash, "[]")).unwrap_err());
        assert!(none.contains("commands"), "{none}");
        let twice = token("p", &hash, "[\"*\"]").repeat(2);
        let twice = format!("{:#}", load(&twice).unwrap_err());
        assert!(twice.contains("used twice"), "{twice}");
    }

    #[test]
    fn missing_plugin_dir_is_named() {
        let err = format!("{:#}", load("plugin_dir = \"nowhere\"").unwrap_err());
        assert!(
            err.contains("plugin_dir") && err.contains("nowhere"),
            "{err}"
        );
    }
}
