//! The limits every plugin call runs under, and the memory limiter that
//! enforces the memory part inside wasmtime.
//!
//! Time is enforced around the call (see `Plugin::call`): calls yield at every
//! epoch tick, so a deadline on the call's future interrupts wasm that never
//! returns as well as a host call (a WASI sleep) that takes too long.
//! Memory is enforced here, at every `memory.grow`: a denied grow makes the
//! guest's allocator fail, which traps, and the flag left behind lets the host
//! tell the client why instead of a bare "failed".

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use wasmtime::ResourceLimiter;

/// What one plugin may use per call. Built from the config's defaults and the
/// plugin's `[plugins.<name>]` overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time for one call, instantiation included.
    pub call_timeout: Duration,
    /// Linear memories and tables of one instance together, in bytes.
    pub max_memory_bytes: usize,
    /// Longest reply (success or error text) sent to a client.
    pub max_reply_bytes: usize,
    /// Failed calls (traps, timeouts, memory) among the plugin's last 4 x
    /// this many (at most 64) that disable it; 0 never disables it (see
    /// `health.rs`).
    pub quarantine_after: u32,
    /// Lines a second the plugin may write to the host's log (`host.log`,
    /// stdout and stderr together), in bursts of as many.
    pub max_log_lines_per_sec: u32,
    /// Longest log line kept; the rest of a longer one is cut off.
    pub max_log_line_bytes: usize,
    /// Calls of the plugin that may run at once; more wait their turn.
    pub max_concurrent_calls: u32,
    /// Live instances of the plugin (warm or running) at once; a call that
    /// needs one more waits for one, within its deadline.
    pub max_instances: u32,
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
            max_instances: super::runtime::instance_slots(1024),
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
/// What one table element costs the host, for the memory accounts.
const TABLE_ELEMENT_BYTES: usize = 8;

/// All plugin instances' memory together, against `max_total_memory_mib`:
/// shared by every store, so that many instances each within their own
/// limit cannot together take the machine.
pub struct MemoryBudget {
    max_bytes: usize,
    used: AtomicUsize,
}

impl MemoryBudget {
    pub fn new(max_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            max_bytes,
            used: AtomicUsize::new(0),
        })
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    fn reserve(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes)
                    .filter(|&total| total <= self.max_bytes)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Which memory limit a denied growth hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryExceeded {
    /// The instance's own, `max_memory_mib`: the plugin's doing.
    Instance,
    /// The server's, `max_total_memory_mib`: all instances together.
    Server,
}

/// The `ResourceLimiter` of one store: the instance's memories and tables
/// together within its limit, and within the server's budget. It also
/// accounts the memory in the plugin's gauge, since it sees every growth.
pub struct MemoryLimiter {
    max_instance_bytes: usize,
    budget: Arc<MemoryBudget>,
    /// Set when a growth was denied during the current command, with the
    /// limit hit.
    exceeded: Option<MemoryExceeded>,
    /// Bytes of memories and tables this store holds, reserved in `budget`
    /// and counted in `gauge`.
    held: usize,
    gauge: metrics::Gauge,
}

impl MemoryLimiter {
    pub fn new(
        max_instance_bytes: usize,
        budget: Arc<MemoryBudget>,
        gauge: metrics::Gauge,
    ) -> Self {
        Self {
            max_instance_bytes,
            budget,
            exceeded: None,
            held: 0,
            gauge,
        }
    }

    /// A command begins: a refusal during an earlier one (that the plugin
    /// survived) says nothing about how this one ends.
    pub fn begin_command(&mut self) {
        self.exceeded = None;
    }

    /// The limit a growth hit during the current command, if one was refused.
    pub fn exceeded(&self) -> Option<MemoryExceeded> {
        self.exceeded
    }

    /// Accounts `grown` more bytes, unless a limit forbids it.
    fn grow(&mut self, grown: usize) -> bool {
        if self.held.saturating_add(grown) > self.max_instance_bytes {
            self.exceeded = Some(MemoryExceeded::Instance);
            return false;
        }
        if !self.budget.reserve(grown) {
            self.exceeded = Some(MemoryExceeded::Server);
            return false;
        }
        self.held += grown;
        self.gauge.increment(grown as f64);
        true
    }
}

impl Drop for MemoryLimiter {
    /// The store and its memories are going away.
    fn drop(&mut self) {
        self.budget.release(self.held);
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
        Ok(self.grow(desired.saturating_sub(current)))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        let grown = desired.saturating_sub(current) * TABLE_ELEMENT_BYTES;
        Ok(self.grow(grown))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(instance: usize, budget: &Arc<MemoryBudget>) -> MemoryLimiter {
        MemoryLimiter::new(instance, budget.clone(), metrics::Gauge::noop())
    }

    #[test]
    fn the_instance_limit_bounds_all_its_memories_together() {
        let budget = MemoryBudget::new(usize::MAX);
        let mut limiter = limiter(100, &budget);
        assert!(limiter.memory_growing(0, 60, None).unwrap());
        assert!(
            !limiter.memory_growing(0, 60, None).unwrap(),
            "a second memory"
        );
        assert_eq!(limiter.exceeded, Some(MemoryExceeded::Instance));
        assert!(limiter.memory_growing(0, 40, None).unwrap());
    }

    #[test]
    fn the_server_budget_bounds_all_instances_and_is_given_back() {
        let budget = MemoryBudget::new(100);
        let mut first = limiter(80, &budget);
        let mut second = limiter(80, &budget);
        assert!(first.memory_growing(0, 70, None).unwrap());
        assert!(!second.memory_growing(0, 40, None).unwrap());
        assert_eq!(second.exceeded, Some(MemoryExceeded::Server));
        drop(first);
        assert!(second.memory_growing(0, 40, None).unwrap());
    }

    #[test]
    fn tables_count_too() {
        let budget = MemoryBudget::new(usize::MAX);
        let mut limiter = limiter(1000, &budget);
        assert!(limiter.table_growing(0, 100, None).unwrap());
        assert!(!limiter.table_growing(100, 200, None).unwrap());
    }
}
