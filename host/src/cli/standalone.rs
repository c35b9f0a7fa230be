//! A plugin without a server: `plugboard check` and `plugboard call`, for
//! plugin authors and their scripts.
//!
//! Both load the file exactly as the server does (same engine settings,
//! limits from the config, same validation), so "check passes" means "the
//! server will load it", and `call` replies exactly what the server would.
//! State goes to an in-memory store: a test run never touches a server's data.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use crate::config::{Config, StateStore};
use crate::plugin::{CompiledBy, Plugin, Session, WasmRuntime};
use crate::protocol::request::Request;
use crate::reload::plugin_dir::plugin_name;
use crate::router::{Client, Router};

/// A plugin loaded as the server would load it, and how its compile went.
struct Loaded {
    plugin: Plugin,
    compile: Compile,
}

enum Compile {
    FromCache(PathBuf),
    Compiled(std::time::Duration, Option<PathBuf>),
}

/// Loads `file` as the server would; the error says why it would be rejected.
async fn load(file: &Path, config: &Config) -> anyhow::Result<Loaded> {
    let mut config = config.clone();
    config.state_store = StateStore::Memory;
    let options = config.engine_options();
    let cache_dir = options.cache_dir.clone();
    let runtime = WasmRuntime::new(options, config.open_store()?)
        .context("cannot start the WebAssembly runtime")?;
    let name = plugin_name(file);
    let started = std::time::Instant::now();
    let plugin = Plugin::load(&runtime, &name, file, config.terms_for(&name))
        .await
        .with_context(|| format!("{} would be rejected", file.display()))?;
    let cache_dir = cache_dir.filter(|_| runtime.cache_stats().is_some());
    let compile = match (plugin.compiled_by(), cache_dir) {
        (CompiledBy::Cache, Some(dir)) => Compile::FromCache(dir),
        (_, dir) => Compile::Compiled(started.elapsed(), dir),
    };
    Ok(Loaded { plugin, compile })
}

/// `plugboard check FILE`: validates the plugin and lists what it serves and
/// what it needs.
pub async fn check(file: &Path, config: &Config) -> anyhow::Result<ExitCode> {
    let Loaded { plugin, compile } = load(file, config).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}: ok, plugin '{}'", file.display(), plugin.name())?;
    match compile {
        Compile::FromCache(dir) => {
            writeln!(out, "compiled: from the cache in {}", dir.display())?;
        }
        Compile::Compiled(took, Some(dir)) => writeln!(
            out,
            "compiled: in {:.1} s, cached in {}",
            took.as_secs_f64(),
            dir.display()
        )?,
        Compile::Compiled(took, None) => {
            writeln!(out, "compiled: in {:.1} s (no cache)", took.as_secs_f64())?;
        }
    }
    writeln!(out, "commands:")?;
    let width = plugin
        .commands()
        .iter()
        .map(|c| c.name.as_str().len())
        .max()
        .unwrap_or(0);
    for command in plugin.commands() {
        writeln!(
            out,
            "  {:width$}  {}",
            command.name.as_str(),
            command.summary
        )?;
    }
    // Authors of plugins in other languages opt in by hand: say whether
    // theirs did, since pipelined clients are served several times faster.
    if plugin.serves_batches() {
        writeln!(out, "batches: yes (exports serve-batch)")?;
    } else {
        writeln!(
            out,
            "batches: no (one call per command; export serve-batch of the batched-plugin world to serve pipelined commands in one call)"
        )?;
    }
    writeln!(out, "imports:")?;
    for import in plugin.imports() {
        writeln!(out, "  {import}")?;
    }
    writeln!(out, "capabilities:")?;
    let grants = config.terms_for(plugin.name()).grants;
    for (kind, interface, granted, key) in [
        (
            "http",
            "wasi:http/outgoing-handler",
            grants.http.len(),
            "allow_http",
        ),
        (
            "tcp",
            "wasi:sockets/tcp",
            grants.tcp.len() + grants.tcp_names.len(),
            "allow_tcp",
        ),
        (
            "dirs",
            "wasi:filesystem/preopens",
            grants.dirs.len(),
            "dirs",
        ),
    ] {
        let imported = plugin.imports().iter().any(|i| i.starts_with(interface));
        let status = match (imported, granted) {
            (false, 0) => "not used".to_owned(),
            (false, n) => format!("{n} granted, but the plugin does not import {interface}"),
            (true, 0) => format!(
                "imported, none granted (add `{key}` to [plugins.{}])",
                plugin.name()
            ),
            (true, n) => format!("imported, {n} granted"),
        };
        writeln!(out, "  {kind:<5} {status}")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `plugboard call FILE COMMAND [ARGS...]`: runs one command under the
/// plugin's limits and prints the reply as `send` would.
pub async fn call(file: &Path, words: &[String], config: &Config) -> anyhow::Result<ExitCode> {
    let plugin = load(file, config).await?.plugin;
    let request = Request::parse(words.join(" ").as_bytes())?;
    let router = Router::new([Arc::new(plugin)]);
    let mut replies = router
        .serve(request, &mut (), &mut Session::default(), &Client::anyone())
        .await;
    let reply = replies
        .next()
        .context("the router gave no reply to one command")?;
    writeln!(std::io::stdout().lock(), "{}", reply.as_str())?;
    Ok(if reply.is_error() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
