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

/// Loads every plugin in `dir`, logging and skipping the files that fail.
pub async fn load_all(runtime: &Arc<Runtime>, dir: &Path) -> anyhow::Result<Vec<Plugin>> {
    let files =
        plugin_files(dir).with_context(|| format!("cannot list plugin_dir {}", dir.display()))?;
    let mut plugins = Vec::with_capacity(files.len());
    for path in files {
        match Plugin::load(runtime, &path).await {
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
    if plugins.is_empty() {
        tracing::warn!(dir = %dir.display(), "no plugins loaded: every command will be unknown");
    }
    Ok(plugins)
}
