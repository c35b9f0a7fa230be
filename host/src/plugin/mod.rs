//! The plugin runtime: loading a component from disk, asking it for its
//! commands, and running one request in a fresh, sandboxed instance.
//!
//! Every call gets a fresh instance (`InstancePre` makes that cheap: imports
//! are resolved once, at load). A fresh instance per call means nothing one
//! client's command leaves in a plugin's memory is seen by another, and a
//! trap cannot leave a broken instance behind for the next command.

mod runtime;
mod sandbox;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmtime::component::Component;

pub use runtime::Runtime;

use crate::request::{CommandName, Request};

/// Host bindings generated from `wit/`: never hand-write lifting and lowering.
mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "plugin",
        exports: { default: async },
    });
}

/// A command a plugin serves, as it declared it.
#[derive(Debug, Clone)]
pub struct CommandSpec {
    pub name: CommandName,
    pub summary: String,
}

/// A compiled, linked plugin, ready to run requests.
pub struct Plugin {
    name: Arc<str>,
    path: PathBuf,
    pre: bindings::PluginPre<sandbox::Sandbox>,
    commands: Vec<CommandSpec>,
    runtime: Arc<Runtime>,
}

/// Why a file could not become a plugin. The server logs it and starts without it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read: {0}")]
    Read(#[from] std::io::Error),
    #[error("not a WebAssembly file")]
    NotWasm,
    #[error(
        "a core WebAssembly module, not a component: build for wasm32-wasip2, \
         or wrap it with `wasm-tools component new`"
    )]
    CoreModule,
    #[error("not a valid WebAssembly component: {0:#}")]
    Compile(anyhow::Error),
    #[error("does not match plugboard's `plugin` world: {0:#}")]
    Link(anyhow::Error),
    #[error("`commands()` failed: {0:#}")]
    Commands(anyhow::Error),
    #[error("declares an invalid command name {0:?} (empty or containing whitespace)")]
    InvalidCommandName(String),
}

/// A plugin call that did not produce a reply: the plugin trapped (a panic,
/// an out-of-bounds access, `unreachable`, ...).
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct CallError(anyhow::Error);

/// Catches the two most common wrong files with a message that says what to
/// do, before the compiler reports them in its own terms.
fn check_component_header(bytes: &[u8]) -> Result<(), LoadError> {
    const MAGIC: &[u8] = b"\0asm";
    const CORE_MODULE_LAYER: [u8; 2] = [0, 0];
    if !bytes.starts_with(MAGIC) {
        return Err(LoadError::NotWasm);
    }
    // Bytes 6..8 are the layer: 0 for a core module, 1 for a component.
    if bytes.get(6..8) == Some(&CORE_MODULE_LAYER[..]) {
        return Err(LoadError::CoreModule);
    }
    Ok(())
}

impl Plugin {
    /// Compiles the component at `path` and asks it for its commands. The
    /// plugin is named after the file's stem (`onoff.wasm` -> `onoff`).
    pub async fn load(runtime: &Arc<Runtime>, path: &Path) -> Result<Self, LoadError> {
        let name: Arc<str> = path
            .file_stem()
            .map(|stem| stem.to_string_lossy())
            .unwrap_or_default()
            .into();
        let bytes = tokio::fs::read(path).await?;
        check_component_header(&bytes)?;
        // Compiling is CPU-bound and can take seconds: keep it off the async workers.
        let engine = runtime.engine().clone();
        let component = tokio::task::spawn_blocking(move || Component::new(&engine, &bytes))
            .await
            .map_err(|join| LoadError::Compile(join.into()))?
            .map_err(|err| LoadError::Compile(err.into()))?;
        let instance_pre = runtime
            .linker()
            .instantiate_pre(&component)
            .map_err(|err| LoadError::Link(err.into()))?;
        let pre =
            bindings::PluginPre::new(instance_pre).map_err(|err| LoadError::Link(err.into()))?;

        let mut store = runtime.new_store(name.clone());
        let declared = async {
            let instance = pre.instantiate_async(&mut store).await?;
            instance.call_commands(&mut store).await
        }
        .await
        .map_err(|err| LoadError::Commands(err.into()))?;
        let commands = declared
            .into_iter()
            .map(|info| match CommandName::new(&info.name) {
                Some(name) => Ok(CommandSpec {
                    name,
                    summary: info.summary,
                }),
                None => Err(LoadError::InvalidCommandName(info.name)),
            })
            .collect::<Result<_, _>>()?;

        Ok(Self {
            name,
            path: path.to_owned(),
            pre,
            commands,
            runtime: runtime.clone(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn commands(&self) -> &[CommandSpec] {
        &self.commands
    }

    /// Runs `request` in a fresh instance. `Ok(Err(message))` is the plugin
    /// refusing the request; `Err` is the plugin failing.
    pub async fn call(&self, request: Request) -> Result<Result<String, String>, CallError> {
        let wit_request = bindings::plugboard::plugin::types::Request {
            command: request.command.into_string(),
            args: request.args,
            raw_args: request.raw_args,
        };
        let mut store = self.runtime.new_store(self.name.clone());
        async {
            let instance = self.pre.instantiate_async(&mut store).await?;
            instance.call_handle(&mut store, &wit_request).await
        }
        .await
        .map_err(|err| CallError(err.into()))
    }
}
