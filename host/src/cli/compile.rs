//! `plugboard compile [--config PATH]`: compiles every plugin of the
//! config's plugin directory into the compile cache ahead of time, and
//! exits. A deployment runs it once (a container image build, systemd's
//! `ExecStartPre`), and the server then starts serving without compiling.
//!
//! Each plugin is loaded as the server would load it (the same engine
//! settings, a compile in a child process, its `commands()` asked), so a
//! file the server would reject fails here, with the reason, and the
//! command exits non-zero.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;

use crate::config::{Config, StateStore};
use crate::plugin::{Plugin, WasmRuntime};
use crate::reload::plugin_dir::{plugin_files, plugin_name};

pub async fn run(config: &Config) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        config.compile_cache,
        "`compile_cache` is off in this config: there is no cache to fill"
    );
    let mut config = config.clone();
    // Plugins are asked for their commands: their state is not touched.
    config.state_store = StateStore::Memory;
    let runtime = WasmRuntime::new(config.engine_options(), config.open_store()?)
        .context("cannot start the WebAssembly runtime")?;
    anyhow::ensure!(
        runtime.cache_stats().is_some(),
        "cannot use `cache_dir` {}: nothing to fill",
        config.cache_dir.display()
    );
    let files = plugin_files(&config.plugin_dir)
        .with_context(|| format!("cannot list `plugin_dir` {}", config.plugin_dir.display()))?;
    let mut out = std::io::stdout().lock();
    let mut rejected = 0;
    for file in &files {
        let name = plugin_name(file);
        let started = Instant::now();
        match Plugin::load(&runtime, &name, file, config.terms_for(&name)).await {
            Ok(plugin) => writeln!(
                out,
                "{}: {} in {:.1} s",
                file.display(),
                plugin.compiled_by().describe(),
                started.elapsed().as_secs_f64()
            )?,
            Err(err) => {
                rejected += 1;
                writeln!(out, "{}: rejected: {err}", file.display())?;
            }
        }
    }
    writeln!(
        out,
        "{} of {} plugins ready in {}",
        files.len() - rejected,
        files.len(),
        config.cache_dir.display()
    )?;
    Ok(match rejected {
        0 => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}
