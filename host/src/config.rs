//! The server's configuration: one TOML file, one struct, defaults and
//! validation in one place.
//!
//! Unknown keys are errors rather than silently ignored: a misspelt limit that
//! quietly falls back to its default is worse than a server that refuses to
//! start and names the key. Relative paths are resolved against the config
//! file's directory, so the server behaves the same from any working directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde::Deserialize;

/// `config.toml`, field by field. Every field has a default; see the README's
/// configuration reference for the same text in user terms.
#[derive(Debug, Clone, Deserialize)]
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
    /// On SIGINT/SIGTERM, how long in-flight commands get to finish.
    pub shutdown_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:1100".into(),
            plugin_dir: "plugins".into(),
            max_frame_bytes: 64 * 1024,
            max_connections: 1024,
            shutdown_timeout_ms: 10_000,
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
        let base = path.parent().unwrap_or(Path::new(""));
        config.plugin_dir = base.join(&config.plugin_dir);
        config
            .validate()
            .with_context(|| format!("invalid config file {}", path.display()))?;
        Ok(config)
    }

    /// The built-in defaults, for `serve` without a config file.
    pub fn defaults() -> anyhow::Result<Self> {
        let config = Self::default();
        config.validate()?;
        Ok(config)
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
    fn unknown_key_is_named() {
        let err = format!("{:#}", load("max_frame_byte = 10").unwrap_err());
        assert!(err.contains("max_frame_byte"), "{err}");
    }

    #[test]
    fn bad_value_is_named() {
        let err = format!("{:#}", load("max_connections = \"many\"").unwrap_err());
        assert!(err.contains("max_connections"), "{err}");
    }

    #[test]
    fn zero_limits_are_rejected() {
        let err = format!("{:#}", load("max_frame_bytes = 0").unwrap_err());
        assert!(err.contains("max_frame_bytes"), "{err}");
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
