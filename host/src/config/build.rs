//! What a config builds: the WebAssembly engine's options and the state
//! store.

use std::time::Duration;

use super::{Config, StateStore};
use crate::plugin::{ChildLimits, Compiler, EngineOptions};
use crate::store::{Kv, KvLimits, RedisSettings};

impl Config {
    /// The engine settings this config asks for. With the compile cache,
    /// plugins compile in a child process of this very binary.
    pub fn engine_options(&self) -> EngineOptions {
        let compiler = match (self.compile_cache, std::env::current_exe()) {
            (true, Ok(program)) => Compiler::Child(ChildLimits {
                program,
                memory_bytes: self.compile_memory_mib.saturating_mul(1 << 20),
                timeout: Duration::from_millis(self.compile_timeout_ms),
            }),
            _ => Compiler::InProcess,
        };
        EngineOptions {
            max_concurrent_calls: self.max_connections,
            max_wasm_stack_bytes: self.max_stack_kib << 10,
            cache_dir: self.compile_cache.then(|| self.cache_dir.clone()),
            max_total_memory_bytes: self
                .max_total_memory_mib
                .map_or_else(crate::plugin::default_total_memory_bytes, |mib| {
                    (mib as usize).saturating_mul(1 << 20)
                }),
            compiler,
            incremental_cache_bytes: self.incremental_cache_mib.saturating_mul(1 << 20),
            ..EngineOptions::default()
        }
    }

    /// Opens the key-value store this config names.
    pub fn open_store(&self) -> anyhow::Result<Kv> {
        let limits = KvLimits {
            max_key_bytes: self.max_key_bytes,
            max_value_bytes: self.max_value_bytes,
            max_keys: self.max_keys_per_plugin,
            max_bytes: self.max_bytes_per_plugin,
        };
        match self.state_store {
            StateStore::Disk => Kv::open_disk(
                &self.state_dir,
                self.state_cache_mib.saturating_mul(1 << 20),
                limits,
            ),
            StateStore::Memory => Ok(Kv::in_memory(limits)),
            StateStore::Redis => Kv::open_redis(&self.redis(), limits),
        }
    }

    pub(super) fn redis(&self) -> RedisSettings {
        RedisSettings {
            url: self.redis_url.clone(),
            timeout: Duration::from_millis(self.redis_timeout_ms),
            ca: self.redis_ca.clone(),
        }
    }
}
