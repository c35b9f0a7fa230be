//! Tiny plugins for in-process tests (built from WAT by the shared
//! `tests/support/components.rs`), and a runtime to load them in.

use std::sync::Arc;

#[path = "../../../tests/support/components.rs"]
#[allow(
    dead_code,
    reason = "the batched components are for the end-to-end tests"
)]
mod components;

pub use components::{Handle, component};

use super::{Runtime, RuntimeOptions};
use crate::store::{KvLimits, Store};

/// A runtime as the server makes one, with a small pool and an in-memory store.
pub fn runtime() -> Arc<Runtime> {
    let options = RuntimeOptions {
        max_concurrent_calls: 8,
        ..RuntimeOptions::default()
    };
    let limits = KvLimits {
        max_key_bytes: 64,
        max_value_bytes: 1024,
        max_keys: 16,
        max_bytes: 1 << 20,
    };
    Runtime::new(options, Store::in_memory(limits)).expect("runtime")
}
