//! The plugin runtime: loading a component from disk (`load.rs`), running
//! one request in a sandboxed instance under its limits (`call.rs`), and
//! several of one connection's requests in one call (`batch/`).
//!
//! Each connection has its own instance, kept warm between its commands
//! ([`Session`]): nothing one client's command leaves in a plugin's memory is
//! seen by another client, and a failed call's instance is discarded, so a
//! trap cannot leave a broken instance behind. New instances are cheap too
//! (`InstancePre` resolves imports once, at load; the pooling allocator
//! reuses instance slots), but not free: see `session.rs`.
//!
//! A plugin whose calls keep failing is disabled (quarantine, `health.rs`):
//! a crash loop costs one error reply, not an instance and a trap per
//! command.

mod batch;
mod cache_check;
mod call;
mod compile;
mod cpu_share;
mod epoch;
mod grants;
mod health;
mod host_wait;
mod incremental;
mod io_waits;
mod limits;
mod load;
mod log;
mod nested;
mod runtime;
mod sandbox;
mod scheduled;
mod session;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use wasmtime::component::ComponentExportIndex;

pub use call::{Answer, CallError, Trap};
pub use compile::{ChildCompile, ChildLimits, CompiledBy, Compiler, compile_plugin_from_stdin};
use cpu_share::CpuShare;
pub use grants::{DirGrant, GrantEntries, Grants, Origin, TcpGrant, not_granted};
use health::Health;
pub use health::MAX_WINDOW as MAX_QUARANTINE_AFTER;
pub use limits::Limits;
pub use load::LoadError;
pub use nested::{Chain, Dispatch, NestedReply};
pub use runtime::{
    EngineOptions, MAX_CORE_INSTANCES_PER_INSTANCE, MAX_MEMORIES_PER_INSTANCE,
    MAX_TABLES_PER_INSTANCE, WasmRuntime, default_total_memory_bytes, instance_slots,
};
use sandbox::InstanceHandles;
pub use scheduled::{PluginSchedules, Scheduled};
pub use session::{MAX_CALLS_PER_INSTANCE, Session};

use crate::protocol::request::CommandName;
use crate::store::Namespace;
use crate::telemetry::{Admit, LogBudget};

/// Host bindings generated from `wit/`: never hand-write lifting and lowering.
mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "plugin",
        exports: { default: async },
        // Writes may wait on the disk (commits are fsynced) and every
        // operation on Redis waits on the network: the plugin's call awaits
        // them (a local read is ready at once and costs no switch). Every kv
        // import is trappable: a store that cannot serve ends the command
        // with `error: state unavailable` (see `sandbox.rs`).
        imports: {
            "plugboard:plugin/kv.get": async | trappable,
            "plugboard:plugin/kv.list-keys": async | trappable,
            "plugboard:plugin/kv.set": async | trappable,
            "plugboard:plugin/kv.delete": async | trappable,
            "plugboard:plugin/kv.increment": async | trappable,
            "plugboard:plugin/kv.compare-and-swap": async | trappable,
            // A nested command runs for as long as it takes (`nested.rs`).
            "plugboard:plugin/commands.call": async,
            // A plugin's schedules are kept in its namespace (`scheduled.rs`).
            "plugboard:plugin/schedule.add": async,
            "plugboard:plugin/schedule.remove": async,
            "plugboard:plugin/schedule.entries": async,
            // A plugin that breaks the batch protocol traps (`batch/`).
            "plugboard:plugin/batch.next-request": trappable,
            "plugboard:plugin/batch.reply": trappable,
            "plugboard:plugin/batch.take-requests": trappable,
        },
    });
}

/// The terms one plugin runs under, from the config: its limits, its own
/// `[plugins.<name>.config]` table (what `config.get` reads), and what it
/// may reach beyond the sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Terms {
    pub limits: Limits,
    pub config: Arc<std::collections::BTreeMap<String, String>>,
    /// Nothing by default.
    pub grants: Arc<Grants>,
}

/// A command a plugin serves, as it declared it.
#[derive(Debug, Clone)]
pub struct CommandSpec {
    pub name: CommandName,
    pub summary: String,
}

/// A loaded plugin, ready to run requests: the compiled artifact, the terms
/// this server runs it under, and how its calls have been going. A config
/// reload makes a new `Plugin` from the same compiled part, with a clean
/// record.
pub struct Plugin {
    /// Unique per loaded version and terms: a warm instance is reused only
    /// by the version (and limits) it was made for.
    id: u64,
    compiled: Arc<Compiled>,
    terms: Terms,
    /// What the host hands each instance under these terms.
    handles: InstanceHandles,
    /// How many of its calls may run at once.
    cpu: CpuShare,
    /// Its live instances: a permit is held by each instance's store.
    instances: Arc<tokio::sync::Semaphore>,
    health: Health,
    /// The server's own warnings about this plugin (failed calls) have a
    /// rate too: a plugin failing in a loop must not flood the log.
    warnings: LogBudget,
}

/// What compiling and linking one version of a file produced, and the host
/// handles its instances use: shared by every setup of that version.
#[derive(Clone)]
struct Compiled {
    /// How its code was had: from the cache, or compiled (where).
    compiled_by: CompiledBy,
    name: Arc<str>,
    /// The first hex digits of its file's SHA-256: which version serves.
    version: Arc<str>,
    pre: bindings::PluginPre<sandbox::Sandbox>,
    /// Its `serve-batch` export, when it has one (`batched-plugin` world).
    serve_batch: Option<ComponentExportIndex>,
    commands: Vec<CommandSpec>,
    /// What the component imports (WIT interfaces), for `plugboard check`.
    imports: Vec<String>,
    /// This plugin's key-value namespace.
    kv: Arc<Namespace>,
    /// The gauge of its instances' memory: looked up once, not per instance.
    memory: metrics::Gauge,
    runtime: Arc<WasmRuntime>,
}

/// The server's warnings about one plugin, at most this many a second.
const WARNINGS_PER_SEC: u32 = 10;

fn next_plugin_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Plugin {
    pub fn name(&self) -> &str {
        &self.compiled.name
    }

    /// The first 12 hex digits of the SHA-256 of the file it was loaded
    /// from (`sha256sum` tells which file that is).
    pub fn version(&self) -> &str {
        &self.compiled.version
    }

    /// What the plugin holds in the key-value store.
    pub fn kv_usage(&self) -> crate::store::Completion<crate::store::Usage> {
        self.compiled.kv.usage()
    }

    pub fn commands(&self) -> &[CommandSpec] {
        &self.compiled.commands
    }

    pub fn imports(&self) -> &[String] {
        &self.compiled.imports
    }

    /// How its code was had when it was loaded.
    pub fn compiled_by(&self) -> CompiledBy {
        self.compiled.compiled_by
    }

    pub fn terms(&self) -> &Terms {
        &self.terms
    }

    /// The same compiled plugin under new terms, with a clean record (a
    /// config reload is a fresh start, as a new file is).
    pub fn with_terms(&self, terms: Terms) -> Self {
        Self::set_up(self.compiled.clone(), terms)
    }

    /// `compiled` under `terms`: everything that belongs to one setup (its
    /// id, the instances' handles, the CPU share, the instance bound, a
    /// clean health record) made in one place.
    fn set_up(compiled: Arc<Compiled>, terms: Terms) -> Self {
        let handles = InstanceHandles::new(&compiled.name, &compiled.kv, &compiled.memory, &terms);
        let limits = &terms.limits;
        Self {
            id: next_plugin_id(),
            cpu: CpuShare::new(limits.max_concurrent_calls),
            instances: Arc::new(tokio::sync::Semaphore::new(limits.max_instances as usize)),
            warnings: LogBudget::new(&compiled.name, WARNINGS_PER_SEC),
            compiled,
            terms,
            handles,
            health: Health::default(),
        }
    }

    /// Whether the plugin is quarantined (see `health.rs`).
    pub fn is_disabled(&self) -> bool {
        self.health.is_disabled()
    }

    /// Whether the plugin serves pipelined commands in one call.
    pub fn serves_batches(&self) -> bool {
        self.compiled.serve_batch.is_some()
    }

    /// Whether the server may write a warning about this plugin now, and
    /// how many it did not write since the last (see [`LogBudget`]).
    pub fn may_warn(&self) -> Option<u64> {
        match self.warnings.admit() {
            Admit::Write { unwritten_before } => Some(unwritten_before),
            Admit::Suppress => None,
        }
    }
}

#[cfg(test)]
pub(crate) mod test_components;
#[cfg(test)]
mod tests;
