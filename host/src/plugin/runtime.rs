//! The one wasmtime `Engine` and `Linker` every plugin is compiled and linked
//! with, and the epoch ticker that keeps plugin calls from hogging threads.
//!
//! Engine settings live here, each with its reason, so that limits added later
//! (deadlines, memory, pooling) have one place to go.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Engine, Store, UpdateDeadline};

use super::bindings;
use super::sandbox::Sandbox;

/// How often the engine's epoch advances. A running plugin call yields to the
/// Tokio scheduler at every tick, so this bounds how long one call can keep a
/// worker thread from other connections.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Shared by every loaded plugin: compiling and instantiating need the same engine.
pub struct Runtime {
    engine: Engine,
    linker: Linker<Sandbox>,
}

impl Runtime {
    pub fn new() -> anyhow::Result<Arc<Self>> {
        let mut config = wasmtime::Config::new();
        // Compiled code checks the epoch at loop headers and function entries,
        // which is what lets a call that never returns be interrupted at all.
        config.epoch_interruption(true);
        let engine = Engine::new(&config)?;

        let mut linker = Linker::new(&engine);
        // Rust's std (and other languages' runtimes) import WASI even when the
        // plugin uses none of it; the sandbox decides what those imports can reach.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        bindings::Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |sandbox| sandbox)?;

        spawn_epoch_ticker(&engine);
        Ok(Arc::new(Self { engine, linker }))
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn linker(&self) -> &Linker<Sandbox> {
        &self.linker
    }

    /// A store for one instance of `plugin`, set to yield at every epoch tick.
    pub fn new_store(&self, plugin: Arc<str>) -> Store<Sandbox> {
        let mut store = Store::new(&self.engine, Sandbox::new(plugin));
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1)));
        store
    }
}

/// Advances the epoch from a plain OS thread, not a Tokio task: if every worker
/// thread were busy running wasm, a task would never get to tick, and the
/// calls waiting for that tick would never yield.
fn spawn_epoch_ticker(engine: &Engine) {
    let engine = engine.weak();
    std::thread::Builder::new()
        .name("plugboard-epoch".into())
        .spawn(move || {
            while let Some(engine) = engine.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawning the epoch ticker thread at startup");
}
