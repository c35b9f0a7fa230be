//! Loading: a file's bytes become a [`Plugin`], or a [`LoadError`] that says
//! why not in the author's terms.
//!
//! A load compiles the component (or finds it in the compile cache), links
//! it against the host's imports once (`InstancePre`), and asks a first
//! instance for the commands it serves, under the plugin's own limits: a
//! plugin that hangs or traps in `commands()` is refused, not served.

use std::path::Path;
use std::sync::Arc;

use super::call::Trap;
use super::runtime::{
    MAX_CORE_INSTANCES_PER_INSTANCE, MAX_MEMORIES_PER_INSTANCE, MAX_TABLES_PER_INSTANCE,
};
use super::sandbox::InstanceHandles;
use super::session::instantiate;
use super::{CommandSpec, Compiled, Plugin, Terms, WasmRuntime, bindings};
use crate::protocol::request::CommandName;

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
    #[error(
        "one instance would need more than a plugin may have (at most \
         {MAX_CORE_INSTANCES_PER_INSTANCE} core instances, {MAX_MEMORIES_PER_INSTANCE} memories, \
         {MAX_TABLES_PER_INSTANCE} tables): {0:#}"
    )]
    TooLarge(anyhow::Error),
    #[error("does not match plugboard's `plugin` world: {0:#}")]
    Link(anyhow::Error),
    #[error("`commands()` failed: {0:#}")]
    Commands(anyhow::Error),
    #[error("declares an invalid command name {0:?} (empty or containing whitespace)")]
    InvalidCommandName(String),
}

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
    /// Compiles the component at `path` as plugin `name` and asks it for
    /// its commands.
    pub async fn load(
        runtime: &Arc<WasmRuntime>,
        name: &str,
        path: &Path,
        terms: Terms,
    ) -> Result<Self, LoadError> {
        let bytes = tokio::fs::read(path).await?;
        Self::from_bytes(runtime, name, bytes, terms).await
    }

    /// Like [`Plugin::load`] with the file already read: the plugin directory
    /// reads each version of a file once, to hash it and to compile it.
    pub async fn from_bytes(
        runtime: &Arc<WasmRuntime>,
        name: &str,
        bytes: Vec<u8>,
        terms: Terms,
    ) -> Result<Self, LoadError> {
        let name: Arc<str> = name.into();
        let kv = Arc::new(runtime.kv().namespace(&name));
        check_component_header(&bytes)?;
        let version = short_sha256(&bytes);
        let (component, compiled_by) = runtime.component(bytes).await?;
        let imports = component
            .component_type()
            .imports(runtime.engine())
            .map(|(name, _)| name.to_owned())
            .collect();
        let instance_pre = runtime
            .linker()
            .instantiate_pre(&component)
            .map_err(|err| LoadError::Link(err.into()))?;
        let pre =
            bindings::PluginPre::new(instance_pre).map_err(|err| LoadError::Link(err.into()))?;
        let serve_batch = component.get_export_index(None, "serve-batch");
        let compiled = Compiled {
            compiled_by,
            memory: crate::telemetry::plugin_memory(&name),
            name,
            version,
            pre,
            serve_batch,
            commands: Vec::new(),
            imports,
            kv,
            runtime: runtime.clone(),
        };
        let plugin = Self::declared(compiled, terms).await?;
        let schedules = runtime.plugin_schedules();
        schedules.load(plugin.name(), &plugin.compiled.kv).await;
        Ok(plugin)
    }

    /// The same compiled plugin under `terms`, asked for its commands
    /// again in a new instance: for a runner, whose instances load the
    /// plugin's source as they start (`plugboard dev`), a new source is a
    /// new version. Warm instances of this one are not reused (a new
    /// plugin id).
    pub async fn renewed(&self, terms: Terms) -> Result<Self, LoadError> {
        let compiled = Compiled {
            commands: Vec::new(),
            ..Compiled::clone(&self.compiled)
        };
        Self::declared(compiled, terms).await
    }

    /// `compiled` under `terms`, with the commands a first instance
    /// declares, within the plugin's call deadline. A plugin that fails to
    /// say is refused, with what it wrote on stderr as it failed (a Python
    /// traceback's last line, a syntax error's place).
    async fn declared(mut compiled: Compiled, terms: Terms) -> Result<Self, LoadError> {
        let handles = InstanceHandles::new(&compiled.name, &compiled.kv, &compiled.memory, &terms);
        let mut store = compiled.runtime.new_store(&handles, &terms);
        let call = async {
            let live =
                instantiate(&compiled.pre, compiled.serve_batch.as_ref(), &mut store).await?;
            live.plugin.call_commands(&mut store).await
        };
        let declared = match tokio::time::timeout(terms.limits.call_timeout, call).await {
            Ok(Ok(declared)) => declared,
            Ok(Err(error)) => {
                let said = store.data().call.stderr_tail.take();
                let trap = Trap { said, error };
                return Err(LoadError::Commands(anyhow::anyhow!("{trap}")));
            }
            Err(_) => return Err(LoadError::Commands(anyhow::anyhow!("timed out"))),
        };
        compiled.commands = declared
            .into_iter()
            .map(|info| match CommandName::new(&info.name) {
                Some(name) => Ok(CommandSpec {
                    name,
                    summary: one_help_line(&info.summary),
                }),
                None => Err(LoadError::InvalidCommandName(info.name)),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self::set_up(Arc::new(compiled), terms))
    }
}

/// A command's summary as `help` can show it: one line, and never the
/// delimiter, which would end `help`'s reply early and shift every reply
/// after it (the plugin's text, so the plugin's to get wrong).
fn one_help_line(summary: &str) -> String {
    summary.replace(['\r', '\n'], " ").replace("<EOF>", "<eof>")
}

/// The first 12 hex digits of the SHA-256 of `bytes`.
fn short_sha256(bytes: &[u8]) -> Arc<str> {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(bytes);
    digest[..6]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<String>()
        .into()
}
