//! The limits every plugin call runs under, and the memory limiter that
//! enforces the memory part inside wasmtime.
//!
//! Time is enforced around the call (see `Plugin::call`): calls yield at every
//! epoch tick, so a deadline on the call's future interrupts wasm that never
//! returns as well as a host call (a WASI sleep) that takes too long.
//! Memory is enforced here, at every `memory.grow`: a denied grow makes the
//! guest's allocator fail, which traps, and the flag left behind lets the host
//! tell the client why instead of a bare "failed".

use std::time::Duration;

use wasmtime::ResourceLimiter;

/// What one plugin may use per call. Built from the config's defaults and the
/// plugin's `[plugins.<name>]` overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time for one call, instantiation included.
    pub call_timeout: Duration,
    /// Linear memory of one instance, in bytes.
    pub max_memory_bytes: usize,
    /// Longest reply (success or error text) sent to a client.
    pub max_reply_bytes: usize,
    /// Consecutive failed calls (traps, timeouts, memory) before the plugin is
    /// disabled; 0 never disables it.
    pub quarantine_after: u32,
    /// Lines a second the plugin may write to the host's log (`host.log`,
    /// stdout and stderr together), in bursts of as many.
    pub max_log_lines_per_sec: u32,
    /// Longest log line kept; the rest of a longer one is cut off.
    pub max_log_line_bytes: usize,
    /// Calls of the plugin that may run at once; more wait their turn.
    pub max_concurrent_calls: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_millis(1000),
            max_memory_bytes: 64 << 20,
            max_reply_bytes: 1 << 20,
            quarantine_after: 5,
            max_log_lines_per_sec: 100,
            max_log_line_bytes: 4096,
            max_concurrent_calls: super::cpu_share::default_max_concurrent_calls(),
        }
    }
}

/// Table elements, instances, tables and memories are bounded too, so that a
/// component cannot exhaust the host through them either. Generous for real
/// components (a Python one has tens of core instances), tiny for the host.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;
const MAX_INSTANCES: usize = 1000;
const MAX_TABLES: usize = 1000;
const MAX_MEMORIES: usize = 100;

/// The `ResourceLimiter` of one store. It also accounts the store's linear
/// memory in the plugin's memory gauge, since it sees every growth.
pub struct MemoryLimiter {
    max_memory_bytes: usize,
    /// Set when a grow past the limit was denied during this call.
    pub exceeded: bool,
    /// Bytes of linear memory this store holds, counted in `gauge`.
    held: usize,
    gauge: metrics::Gauge,
}

impl MemoryLimiter {
    pub fn new(max_memory_bytes: usize, gauge: metrics::Gauge) -> Self {
        Self {
            max_memory_bytes,
            exceeded: false,
            held: 0,
            gauge,
        }
    }
}

impl Drop for MemoryLimiter {
    /// The store and its memories are going away.
    fn drop(&mut self) {
        self.gauge.decrement(self.held as f64);
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = desired <= self.max_memory_bytes;
        self.exceeded |= !allowed;
        if allowed {
            let grown = desired.saturating_sub(current);
            self.held += grown;
            self.gauge.increment(grown as f64);
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}
