//! The plugin directory: which files are plugins, and loading all of them.
//!
//! Files are visited in file-name order so that everything derived from the
//! directory (above all, which plugin wins a contested command) is the same on
//! every start, whatever order the filesystem lists entries in. One bad file
//! is logged and skipped: it must not keep the other plugins from serving.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use crate::config::Config;
use crate::plugin::{Plugin, Runtime};

/// The `*.wasm` files directly in `dir`, sorted by file name.
pub fn plugin_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "wasm") && path.is_file() {
            files.push(path);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

/// A plugin is named after its file: `onoff.wasm` is `onoff`.
pub fn plugin_name(path: &Path) -> String {
    path.file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Loads every plugin in the config's `plugin_dir` under its limits, logging
/// and skipping the files that fail.
pub async fn load_all(runtime: &Arc<Runtime>, config: &Config) -> anyhow::Result<Vec<Plugin>> {
    let dir = &config.plugin_dir;
    let files =
        plugin_files(dir).with_context(|| format!("cannot list plugin_dir {}", dir.display()))?;
    let mut plugins = Vec::with_capacity(files.len());
    for path in files {
        let limits = config.limits_for(&plugin_name(&path));
        match Plugin::load(runtime, &path, limits).await {
            Ok(plugin) => {
                let commands: Vec<&str> =
                    plugin.commands().iter().map(|c| c.name.as_str()).collect();
                tracing::info!(plugin = plugin.name(), commands = ?commands, "loaded plugin");
                plugins.push(plugin);
            }
            Err(err) => {
                tracing::error!(file = %path.display(), "skipping plugin: {err}");
            }
        }
    }
    for name in config.plugins.keys() {
        if !plugins.iter().any(|plugin| plugin.name() == name) {
            tracing::warn!("config has [plugins.{name}] but no plugin of that name is loaded");
        }
    }
    if plugins.is_empty() {
        tracing::warn!(dir = %dir.display(), "no plugins loaded: every command will be unknown");
    }
    Ok(plugins)
}
