//! The one wasmtime `Engine` and `Linker` every plugin is compiled and linked
//! with, and the stores its instances run in.
//!
//! Engine settings live here, each with its reason, so that limits added later
//! (deadlines, memory, pooling) have one place to go.

use anyhow::Context;
use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{
    Cache, CacheConfig, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig,
    Store, UpdateDeadline,
};

use super::Terms;
use super::bindings;
use super::cache_check::CacheCheck;
use super::compile::Compiler;
use super::epoch::EpochTicker;
use super::incremental::DiskCacheStore;
use super::limits::MemoryBudget;
use super::nested::Dispatch;
use super::sandbox::{InstanceHandles, Sandbox, ServerLinks};
use super::scheduled::PluginSchedules;
use crate::store::Kv;

/// Shared by every loaded plugin: compiling and instantiating need the same engine.
pub struct WasmRuntime {
    engine: Engine,
    /// The serving engine's settings without its pool, for compiles in this
    /// process (see `compile.rs`); `None` when a child compiles.
    compile_engine: Option<Engine>,
    options: EngineOptions,
    linker: Linker<Sandbox>,
    /// `None` when epoch interruption is off (benchmarks only).
    ticker: Option<Arc<EpochTicker>>,
    cache: Option<Cache>,
    /// Checksums of the cache's entries, when the cache is on.
    cache_check: Option<CacheCheck>,
    /// Plugins' key-value state, one namespace each.
    kv: Kv,
    /// All instances' memory together.
    memory_budget: Arc<MemoryBudget>,
    /// What runs the commands plugins call: set once the server routes.
    dispatcher: std::sync::OnceLock<Arc<dyn Dispatch>>,
    /// Every loaded plugin's own schedules.
    plugin_schedules: Arc<PluginSchedules>,
}

/// Instances that may exist at once beyond one per connection: plugins being
/// loaded (their `commands()` call) and headroom.
const SPARE_INSTANCES: u32 = 16;

/// What one plugin instance may hold at most. Generous for real components
/// (the shipped Python plugin has 14 core instances and 2 memories); a
/// component that needs more is refused at load.
pub const MAX_CORE_INSTANCES_PER_INSTANCE: u32 = 32;
pub const MAX_MEMORIES_PER_INSTANCE: u32 = 8;
pub const MAX_TABLES_PER_INSTANCE: u32 = 32;

/// Instance slots at most, whatever `max_connections`: each reserves address
/// space for eight 4 GiB memories, and 1536 of them take about 50 of the
/// 128 TiB a process can map. Past that many clients running calls at
/// once, a call gets `server busy` (idle clients hold no instance).
pub const MAX_INSTANCE_SLOTS: u32 = 1536;

/// Live instances the pool holds: one per connection and the spares, up to
/// [`MAX_INSTANCE_SLOTS`].
pub fn instance_slots(connections: usize) -> u32 {
    u32::try_from(connections)
        .unwrap_or(u32::MAX)
        .saturating_add(SPARE_INSTANCES)
        .min(MAX_INSTANCE_SLOTS)
}

/// Memory (and table) bytes of a freed slot reset in place, not returned.
const KEEP_RESIDENT_BYTES: usize = 128 << 10;

/// Stack left to host functions (WASI, our imports) on a call's fiber, above
/// what wasm may use.
const HOST_STACK_BYTES: usize = 1536 << 10;

/// Engine-wide settings, built from the config. `epoch_interruption` and
/// `pooling_allocator` are always on in the server (the pool sized to what
/// the address space holds: see [`serving_engine`]); they are options only
/// so that the benchmarks can measure what each costs. With epoch
/// interruption off, a call that never returns cannot be stopped.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Sizes the instance pool: each connection runs one call at a time.
    pub max_concurrent_calls: usize,
    /// Stack a plugin call may use; deeper recursion traps.
    pub max_wasm_stack_bytes: usize,
    pub epoch_interruption: bool,
    pub pooling_allocator: bool,
    /// Directory of wasmtime's compile cache; `None` compiles every time.
    pub cache_dir: Option<std::path::PathBuf>,
    /// Memory all plugin instances may hold together.
    pub max_total_memory_bytes: usize,
    /// Where plugins are compiled (see `compile.rs`); a child needs the cache.
    pub compiler: Compiler,
    /// The incremental compilation cache's bound on disk, in `cache_dir`
    /// (see `incremental.rs`); 0: none.
    pub incremental_cache_bytes: u64,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            max_concurrent_calls: 1024,
            max_wasm_stack_bytes: 512 << 10,
            epoch_interruption: true,
            pooling_allocator: true,
            cache_dir: None,
            max_total_memory_bytes: default_total_memory_bytes(),
            compiler: Compiler::InProcess,
            incremental_cache_bytes: 0,
        }
    }
}

/// What the serving engine and every compile share: the settings compiled
/// code depends on, so that what one compiles the other can load.
fn base_config(options: &EngineOptions) -> wasmtime::Config {
    let mut config = wasmtime::Config::new();
    // Compiled code checks the epoch at loop headers and function entries,
    // which is what lets a call that never returns be interrupted at all.
    config.epoch_interruption(options.epoch_interruption);
    config.max_wasm_stack(options.max_wasm_stack_bytes);
    config.async_stack_size(options.max_wasm_stack_bytes + HOST_STACK_BYTES);
    if cfg!(feature = "instruction-count") {
        // Measurement only (see the feature in Cargo.toml): valgrind
        // cannot map the pool's reservation, or the default 4 GiB one
        // per memory.
        config.memory_reservation(1 << 26);
        config.memory_guard_size(0);
        config.memory_reservation_for_growth(0);
    }
    config
}

/// The child's side of a compile (`compile.rs`): compiles `bytes` into the
/// cache of `options`, with the incremental cache; returns how many
/// functions came from the incremental cache and how many were compiled.
pub fn compile_into_cache(options: &EngineOptions, bytes: &[u8]) -> anyhow::Result<(u64, u64)> {
    let cache_dir = options
        .cache_dir
        .as_deref()
        .context("compiling for the cache needs a cache directory")?;
    let mut config = base_config(options);
    config.cache(Some(compile_cache(cache_dir)?));
    let store = (options.incremental_cache_bytes > 0)
        .then(|| {
            let dir = super::incremental::dir(cache_dir);
            DiskCacheStore::open(dir, options.incremental_cache_bytes)
                .map(Arc::new)
                .context("cannot open the incremental compilation cache")
        })
        .transpose()?;
    if let Some(store) = &store {
        config.enable_incremental_compilation(store.clone())?;
    }
    let engine = Engine::new(&config)?;
    // What this process writes gets its checksum; what it finds is not
    // verified first (unlike the server's loads): a compile runs nothing
    // it finds, and the server verifies an entry before it loads it.
    let compiled = wasmtime::component::Component::new(&engine, bytes);
    CacheCheck::new(cache_dir).record();
    if let Some(store) = &store {
        store.finish();
    }
    compiled?;
    let (hits, misses) = store.as_ref().map_or((0, 0), |s| s.hits_and_misses());
    if let Some(damaged) = store.as_ref().map(|s| s.damaged()).filter(|n| *n > 0) {
        eprintln!(
            "incremental compilation cache: {damaged} damaged entries ignored, compiled again"
        );
    }
    Ok((hits, misses))
}

impl WasmRuntime {
    pub fn new(options: EngineOptions, kv: Kv) -> anyhow::Result<Arc<Self>> {
        // Compiled code is cached on disk, keyed by the wasm's content and the
        // engine's settings: a restart with unchanged plugins skips Cranelift.
        // Without a usable directory, plugins compile in this process.
        let cache = options.cache_dir.as_deref().and_then(|dir| {
            compile_cache(dir)
                .inspect_err(|err| {
                    tracing::warn!(
                        "{err:#}: plugins are compiled in the server's own process, at every start"
                    );
                })
                .ok()
        });
        let engine = serving_engine(&options, cache.clone())?;
        let compile_engine = match options.compiler {
            Compiler::Child(_) if cache.is_some() => None,
            _ => {
                let mut compile = base_config(&options);
                compile.cache(cache.clone());
                Some(Engine::new(&compile)?)
            }
        };

        let mut linker = Linker::new(&engine);
        // Rust's std (and other languages' runtimes) import WASI even when the
        // plugin uses none of it; the sandbox decides what those imports can reach.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        // wasi:http and name lookups, which reach only what each plugin's
        // grants allow (see `grants/`).
        super::grants::add_to_linker(&mut linker)?;
        // Waits on I/O give the call's CPU place up (see `io_waits.rs`).
        super::io_waits::add_to_linker(&mut linker)?;
        bindings::Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |sandbox| sandbox)?;
        super::sandbox::add_log_in_place_to_linker(&mut linker)?;
        if kv.reads_at_once() {
            super::sandbox::add_local_reads_to_linker(&mut linker)?;
        }

        let ticker = options
            .epoch_interruption
            .then(|| EpochTicker::spawn(&engine))
            .transpose()?;
        Ok(Arc::new(Self {
            engine,
            compile_engine,
            linker,
            ticker,
            cache_check: cache
                .as_ref()
                .and(options.cache_dir.as_deref())
                .map(CacheCheck::new),
            cache,
            kv,
            memory_budget: MemoryBudget::new(options.max_total_memory_bytes),
            dispatcher: std::sync::OnceLock::new(),
            plugin_schedules: Arc::default(),
            options,
        }))
    }

    /// Compile-cache hits and misses so far, if the cache is on.
    pub fn cache_stats(&self) -> Option<(usize, usize)> {
        self.cache
            .as_ref()
            .map(|cache| (cache.cache_hits(), cache.cache_misses()))
    }

    /// The memory all instances may hold together.
    pub fn memory_budget_bytes(&self) -> usize {
        self.memory_budget.max_bytes()
    }

    /// Plugins' key-value state.
    pub fn kv(&self) -> &Kv {
        &self.kv
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub(super) fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// Where plugins are compiled: in a child only when there is a cache to
    /// hand the compiled code over.
    pub(super) fn compiler(&self) -> &Compiler {
        match self.compile_engine {
            Some(_) => &Compiler::InProcess,
            None => &self.options.compiler,
        }
    }

    /// Removes the compile cache's entries that are not what was written
    /// (see `cache_check.rs`); returns whether it removed any.
    pub(super) fn verify_cache(&self) -> bool {
        self.cache_check.as_ref().is_some_and(CacheCheck::verify)
    }

    pub(super) fn cache_dir(&self) -> Option<&std::path::Path> {
        self.cache.as_ref().and(self.options.cache_dir.as_deref())
    }

    /// Compiles `bytes` on the engine without the pool, in this process:
    /// whether it compiles at all, told apart from whether the pool can
    /// hold it (see `compile.rs`). Blocks: CPU-bound.
    pub(super) fn compile_for_check(&self, bytes: &[u8]) -> wasmtime::Result<()> {
        let Some(engine) = &self.compile_engine else {
            return Ok(());
        };
        self.verify_cache();
        let compiled = wasmtime::component::Component::new(engine, bytes);
        if let Some(check) = &self.cache_check {
            check.record();
        }
        compiled.map(drop)
    }

    /// The component on the serving engine: from the compile cache once the
    /// cache's entries are verified (see `cache_check.rs`), else compiled.
    /// Blocks: CPU-bound.
    pub fn compile(&self, bytes: &[u8]) -> wasmtime::Result<wasmtime::component::Component> {
        self.verify_cache();
        let component = wasmtime::component::Component::new(&self.engine, bytes);
        if let Some(check) = &self.cache_check {
            check.record();
        }
        component
    }

    /// Lets plugins call commands, through `dispatcher` (the router's):
    /// instances made from now on reach it. Set once; later calls are
    /// ignored.
    pub fn set_dispatcher(&self, dispatcher: Arc<dyn Dispatch>) {
        let _ = self.dispatcher.set(dispatcher);
    }

    /// Every loaded plugin's own schedules (the scheduler follows them).
    pub fn plugin_schedules(&self) -> &Arc<PluginSchedules> {
        &self.plugin_schedules
    }

    pub fn linker(&self) -> &Linker<Sandbox> {
        &self.linker
    }

    /// A store for one instance of a plugin, with the host's `handles` for
    /// it, under `terms`; set to yield at every epoch tick.
    pub fn new_store(&self, handles: &InstanceHandles, terms: &Terms) -> Store<Sandbox> {
        let ticking = self.ticker.as_ref().map(EpochTicker::keep_ticking);
        let links = ServerLinks {
            dispatcher: self.dispatcher.get().cloned(),
            schedules: self.plugin_schedules.clone(),
        };
        let sandbox = Sandbox::new(handles, terms, &self.memory_budget, ticking, links);
        let mut store = Store::new(&self.engine, sandbox);
        store.limiter(|sandbox| &mut sandbox.limiter);
        self.arm_deadline(&mut store);
        if self.ticker.is_some() {
            // Yield through tokio's `yield_now`, not a plain self-wake: tokio
            // defers such a task until the worker has polled the I/O driver,
            // so other connections' sockets are served between slices. With a
            // plain wake the task is re-run at once, and a worker kept busy
            // by long slices polls I/O only every few dozen of them.
            store.epoch_deadline_callback(|_| {
                Ok(UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(tokio::task::yield_now()),
                ))
            });
        }
        store
    }

    /// Sets `store` to yield at the next epoch tick: due before every call,
    /// as the deadline counts from the epoch when it is set.
    pub fn arm_deadline(&self, store: &mut Store<Sandbox>) {
        if self.ticker.is_some() {
            store.set_epoch_deadline(1);
        }
    }
}

/// Half of the machine's memory (from /proc/meminfo), or 4 GiB where that
/// cannot be read: room for the rest of the server and for the machine.
pub fn default_total_memory_bytes() -> usize {
    let total_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|line| line.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<usize>().ok()
        });
    total_kib.map_or(4 << 30, |kib| kib.saturating_mul(1024) / 2)
}

fn compile_cache(dir: &std::path::Path) -> anyhow::Result<Cache> {
    let wasmtime_dir = super::cache_check::wasmtime_dir(dir);
    std::fs::create_dir_all(&wasmtime_dir)
        .with_context(|| format!("cannot create `cache_dir` {}", dir.display()))?;
    let mut config = CacheConfig::new();
    config.with_directory(wasmtime_dir);
    // Left to itself, wasmtime's cache recompresses an entry used 256 times
    // and renames the new file over the old: its bytes change, its checksum
    // no longer matches, and the plugin would be compiled again for nothing.
    config.with_optimized_compression_usage_counter_threshold(u64::MAX);
    // zstd's fastest level: an interpreter's artifact (35 MiB) compresses in
    // 90 ms instead of 150 at the default, for a tenth more on disk; the
    // compile stands between an edit and its first reply.
    config.with_baseline_compression_level(1);
    Cache::new(config)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("cannot use `cache_dir` {}", dir.display()))
}

/// The engine that runs plugins, with the instance pool (below). A Raspberry
/// Pi's kernel maps 512 GiB per process (39-bit addresses), where the pool of
/// the default `max_connections` reserves tens of TiB: when the wanted pool
/// does not fit, the server takes the largest that does, less a quarter left
/// for everything else it maps, and says so. Past its slots a call gets
/// `server busy`, and a component is still held to one slot's ceilings.
fn serving_engine(options: &EngineOptions, cache: Option<Cache>) -> anyhow::Result<Engine> {
    let mut config = base_config(options);
    config.cache(cache);
    if !options.pooling_allocator || cfg!(feature = "instruction-count") {
        return Ok(Engine::new(&config)?);
    }
    let pooled = |slots: u32| {
        let mut pooled = config.clone();
        pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(pool(slots)));
        Engine::new(&pooled)
    };
    let wanted = instance_slots(options.max_concurrent_calls);
    let refused = match pooled(wanted) {
        Ok(engine) => return Ok(engine),
        Err(err) => err,
    };
    let Some(fitting) = largest_fitting(wanted, |slots| pooled(slots).is_ok()) else {
        return Err(anyhow::Error::from(refused)
            .context("cannot reserve address space for even one instance slot"));
    };
    let slots = (fitting - fitting / 4).max(1);
    tracing::warn!(
        wanted,
        slots,
        "the address space cannot hold the instance pool ({refused:#}): it holds {slots} \
         instances instead, and past that many calls at once a call gets `server busy`. \
         A kernel with 48-bit addresses holds the whole pool"
    );
    Ok(pooled(slots)?)
}

/// The largest count below `refused` for which `fits` holds, if any: halving
/// down to one that fits, then bisecting between the two.
fn largest_fitting(refused: u32, fits: impl Fn(u32) -> bool) -> Option<u32> {
    let mut too_many = refused;
    let mut fitting = too_many / 2;
    loop {
        if fitting == 0 {
            return None;
        }
        if fits(fitting) {
            break;
        }
        too_many = fitting;
        fitting /= 2;
    }
    while too_many - fitting > 1 {
        let middle = fitting + (too_many - fitting) / 2;
        match fits(middle) {
            true => fitting = middle,
            false => too_many = middle,
        }
    }
    Some(fitting)
}

/// The pooling allocator keeps instance slots (memories, tables, stacks) mapped
/// and reuses them, which makes a fresh instance cheap: no mmap or
/// page-table work on the hot path. Slots are virtual address space, reserved
/// up front and backed by memory while in use (and a little after: below).
fn pool(slots: u32) -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::new();
    // Every instance may need up to the ceiling, and the totals are the
    // slots times the ceiling: whatever mix of plugins is loaded, `slots`
    // instances always fit, so no plugin's instances (a Python one has 14
    // core instances) can use up what another's need. A component over the
    // ceiling is refused when it is loaded, naming the limit.
    pool.total_component_instances(slots)
        .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_INSTANCE)
        .max_memories_per_component(MAX_MEMORIES_PER_INSTANCE)
        .max_memories_per_module(MAX_MEMORIES_PER_INSTANCE)
        .max_tables_per_component(MAX_TABLES_PER_INSTANCE)
        .max_tables_per_module(MAX_TABLES_PER_INSTANCE)
        .total_core_instances(slots.saturating_mul(MAX_CORE_INSTANCES_PER_INSTANCE))
        .total_memories(slots.saturating_mul(MAX_MEMORIES_PER_INSTANCE))
        .total_tables(slots.saturating_mul(MAX_TABLES_PER_INSTANCE))
        .total_stacks(slots)
        // Slots hold the largest memory wasm32 can address; each plugin's own,
        // smaller limit is enforced per store by its `MemoryLimiter`, so limits
        // can differ per plugin and change without a new pool.
        .max_memory_size(4 << 30)
        // Returning a freed instance's memory to the kernel (`madvise`)
        // interrupts every core to flush its TLB and makes the next instance
        // fault its pages back in: most of a fresh instance's 25 us. Instead
        // the pages an instance dirtied (found with Linux's PAGEMAP_SCAN,
        // 6.7+) are reset in place, up to KEEP_RESIDENT_BYTES per memory and
        // table, and only the rest is returned: 10 us. (Batching the returns
        // instead kept every pending slot's memory: ten 32 MiB allocation
        // bombs left 355 MiB resident.) The cost is that a slot, once used,
        // keeps those pages (onoff: ~15 KiB). Idle connections release their
        // instance after 100 ms, which keeps the slots in use, and so ever
        // used, close to the number of busy clients (10 000 idle: 88 MiB).
        .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
        .table_keep_resident(KEEP_RESIDENT_BYTES)
        .pagemap_scan(Enabled::Auto);
    pool
}

#[cfg(test)]
mod tests {
    use super::largest_fitting;

    #[test]
    fn the_largest_fitting_count_is_found_below_the_refused_one() {
        for limit in [1, 2, 3, 7, 12, 500, 1039] {
            assert_eq!(largest_fitting(1040, |n| n <= limit), Some(limit));
        }
        assert_eq!(largest_fitting(1040, |_| false), None);
        assert_eq!(largest_fitting(1, |_| true), None);
    }
}
