//! Tiny plugins for in-process tests (built from WAT by the test support
//! crate's `components.rs`), and a runtime to load them in.

use std::sync::Arc;

pub use plugboard_test_support::components::{Handle, ServeBatch, batched_component, component};

use super::{EngineOptions, WasmRuntime};
use crate::store::{Kv, KvLimits};

/// A runtime as the server makes one, with a small pool and an in-memory store.
pub fn runtime() -> Arc<WasmRuntime> {
    let options = EngineOptions {
        max_concurrent_calls: 8,
        ..EngineOptions::default()
    };
    let limits = KvLimits {
        max_key_bytes: 64,
        max_value_bytes: 1024,
        max_keys: 16,
        max_bytes: 1 << 20,
    };
    WasmRuntime::new(options, Kv::in_memory(limits)).expect("runtime")
}
