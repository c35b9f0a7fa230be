//! The epoch ticker: the clock that makes running plugin calls yield.
//!
//! Compiled code checks the engine's epoch at loop headers and function
//! entries; each store is set to yield when the epoch moves past its
//! deadline (see `Runtime::new_store`). Something must move it: this thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::Thread;
use std::time::Duration;

use wasmtime::Engine;

/// How often the engine's epoch advances. A running plugin call yields to the
/// Tokio scheduler at every tick, so this bounds how long one call can keep a
/// worker thread from other connections: measured with four looping calls on
/// two cores, other clients' commands waited a median 2 ms at 1 ms, 20 ms at
/// 10 ms. The ticker sleeps while no call runs, so an idle server pays nothing.
const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Advances the epoch from a plain OS thread, not a Tokio task: if every worker
/// thread were busy running wasm, a task would never get to tick, and the
/// calls waiting for that tick would never yield. The thread parks while no
/// store exists, so an idle server does not wake up a thousand times a second.
pub struct EpochTicker {
    live_stores: Arc<AtomicUsize>,
    thread: Thread,
}

impl EpochTicker {
    pub fn spawn(engine: &Engine) -> anyhow::Result<Arc<Self>> {
        let engine = engine.weak();
        let live_stores = Arc::new(AtomicUsize::new(0));
        let live = live_stores.clone();
        let handle = std::thread::Builder::new()
            .name("plugboard-epoch".into())
            .spawn(move || {
                while let Some(engine) = engine.upgrade() {
                    if live.load(Ordering::Acquire) == 0 {
                        drop(engine);
                        std::thread::park();
                        continue;
                    }
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })?;
        Ok(Arc::new(Self {
            live_stores,
            thread: handle.thread().clone(),
        }))
    }

    /// Keeps the ticker running for as long as the returned guard lives.
    pub fn keep_ticking(self: &Arc<Self>) -> TickingGuard {
        if self.live_stores.fetch_add(1, Ordering::AcqRel) == 0 {
            self.thread.unpark();
        }
        TickingGuard(self.clone())
    }
}

impl Drop for EpochTicker {
    /// Wakes the thread so it sees the engine gone and exits.
    fn drop(&mut self) {
        self.thread.unpark();
    }
}

/// Held by every store's data: the ticker runs while any store exists.
pub struct TickingGuard(Arc<EpochTicker>);

impl Drop for TickingGuard {
    fn drop(&mut self) {
        self.0.live_stores.fetch_sub(1, Ordering::AcqRel);
    }
}
