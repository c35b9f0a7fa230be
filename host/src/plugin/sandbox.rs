//! What a plugin can reach from inside its instance: the host interface of the
//! WIT world and a WASI context with no ambient capabilities.
//!
//! Plugins are untrusted, so the WASI context is built deny-by-default and
//! spelled out here rather than left to the library's defaults: no files
//! (no preopens), no sockets, no name lookups, no environment, no arguments, an
//! empty stdin. Clocks and randomness stay available; plugins need them and
//! they reach nothing outside the process. Whatever a plugin prints goes to the
//! host's log (see `log.rs`).

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::Terms;
use super::batch::{Ahead, Queue, value_set};
use super::bindings::plugboard::plugin::{config, host, kv, types};
use super::cpu_share::Running;
use super::epoch::TickingGuard;
use super::grants::{Denials, Grants, InstanceGrants};
use super::host_wait::HostWait;
use super::limits::{MemoryBudget, MemoryLimiter};
use super::log::{PluginLog, PluginOutput, StderrTail};
use super::nested::{Chain, Dispatch};
use super::scheduled::PluginSchedules;
use crate::store::{Completion, Durable, KvError, Namespace, Write, Written};

/// What the host hands every instance of one plugin (with one setup):
/// shared by all of them.
#[derive(Clone)]
pub struct InstanceHandles {
    /// Its key-value namespace.
    pub kv: Arc<Namespace>,
    /// The gauge of its instances' memory: looked up once, not per instance.
    pub memory: metrics::Gauge,
    /// Its lines in the host's log.
    pub log: Arc<PluginLog>,
    /// Where its use of capabilities it was not granted is counted.
    pub denials: Denials,
}

impl InstanceHandles {
    /// The handles of plugin `name` under `terms`: a new log budget, its
    /// namespace and memory gauge.
    pub fn new(
        name: &Arc<str>,
        kv: &Arc<Namespace>,
        memory: &metrics::Gauge,
        terms: &Terms,
    ) -> Self {
        let limits = &terms.limits;
        Self {
            kv: kv.clone(),
            memory: memory.clone(),
            log: Arc::new(PluginLog::new(
                name.clone(),
                limits.max_log_lines_per_sec,
                limits.max_log_line_bytes,
            )),
            denials: Denials::new(name),
        }
    }
}

/// What the serving process lends every instance: how to run the commands
/// a plugin calls (none outside a server), and where its schedules go.
#[derive(Clone, Default)]
pub struct ServerLinks {
    pub dispatcher: Option<Arc<dyn Dispatch>>,
    pub schedules: Arc<PluginSchedules>,
}

/// A store operation's outcome as a message, for host interfaces that
/// report errors to the plugin rather than trapping.
fn flatten<T>(result: wasmtime::Result<Result<T, kv::Error>>) -> Result<T, String> {
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(format!("{err:?}")),
        Err(err) => Err(format!("state unavailable: {err}")),
    }
}

/// Host resources (WASI handles) one instance may hold at once: a plugin
/// that leaked 96 000 of them once cost the host 23 MB per instance.
const MAX_HOST_RESOURCES: usize = 4096;

/// The data of one plugin instance's `Store`: what it reaches while it
/// lives, and the record of the call it is running ([`CallState`]).
pub struct Sandbox {
    /// The call under way: reset as each call (or batched command) begins.
    pub call: CallState,
    /// This instance's place under the plugin's `max_instances`.
    pub instance_permit: Option<tokio::sync::OwnedSemaphorePermit>,
    pub limiter: MemoryLimiter,
    log: Arc<PluginLog>,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    /// What its grants keep while it lives (see `grants/`).
    grants: InstanceGrants,
    table: ResourceTable,
    /// The plugin's `[plugins.<name>.config]` table.
    config: Arc<std::collections::BTreeMap<String, String>>,
    /// The plugin's key-value namespace.
    kv: Arc<Namespace>,
    /// What it is granted (`commands.call` reads `allow_commands`).
    grant: Arc<Grants>,
    /// It reaches nothing beyond its state, so its pipelined commands may
    /// write ahead of their commit (see `batch/ahead.rs`).
    may_write_ahead: bool,
    denials: Denials,
    /// What the server lends it: how to call commands, where schedules go.
    links: ServerLinks,
    /// Keeps the epoch ticking while this instance may run.
    _ticking: Option<TickingGuard>,
}

/// The record of the call an instance is running.
#[derive(Default)]
pub struct CallState {
    /// Time the call waited on the store (see `host_wait.rs`).
    pub host_wait: HostWait,
    /// The call's place among the plugin's running calls.
    pub running: Running,
    /// What the call wrote on stderr, for the log line of a trap.
    pub stderr_tail: StderrTail,
    /// The requests of the `serve-batch` call under way (see `batch/`).
    pub batch: Option<Queue>,
    /// The calls that led to this one (see `nested.rs`).
    pub chain: Chain,
    /// The command line being served, when the plugin may call commands
    /// (the chain's next link); `None` otherwise, so that the others pay
    /// nothing for it.
    pub line: Option<String>,
    /// The command being served has pipelined commands behind it in this
    /// call: its writes are answered once applied, ahead of their commit.
    pub write_ahead: bool,
    /// The writes this call answered ahead of their commit, once it has.
    pub ahead: Option<Ahead>,
}

impl Sandbox {
    pub fn new(
        handles: &InstanceHandles,
        terms: &Terms,
        budget: &Arc<MemoryBudget>,
        ticking: Option<TickingGuard>,
        links: ServerLinks,
    ) -> Self {
        let mut wasi = WasiCtx::builder();
        let call = CallState::default();
        wasi.stdout(PluginOutput::new(&handles.log, "stdout"))
            .stderr(PluginOutput::new(&handles.log, "stderr").keeping_tail(&call.stderr_tail));
        let grants = terms.grants.instance(&mut wasi, &handles.denials);
        let wasi = wasi.build();
        // Handles the host keeps for the instance (WASI streams, sockets'
        // futures...) are host memory: bounded, and freed with the instance.
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_HOST_RESOURCES);
        Self {
            call,
            instance_permit: None,
            limiter: MemoryLimiter::new(
                terms.limits.max_memory_bytes,
                budget.clone(),
                handles.memory.clone(),
            ),
            log: handles.log.clone(),
            wasi,
            http: WasiHttpCtx::new(),
            grants,
            table,
            config: terms.config.clone(),
            kv: handles.kv.clone(),
            grant: terms.grants.clone(),
            may_write_ahead: terms.grants.reach_nothing(),
            denials: handles.denials.clone(),
            links,
            _ticking: ticking,
        }
    }

    /// A call begins at `started`, with the nested calls of `chain` behind
    /// it; see [`Self::begin_command`]. Returns the waits' account, which its
    /// deadline follows.
    pub fn begin_call(&mut self, started: Instant, chain: &Chain) -> HostWait {
        self.call.chain = chain.clone();
        self.call.line = None;
        self.call.write_ahead = false;
        self.begin_command(started);
        self.call.host_wait.clone()
    }

    /// A command begins at `started` (a call's, or the next of a batch):
    /// its time, its stderr and its memory refusals are counted afresh, so
    /// nothing an earlier command did is charged to it.
    pub fn begin_command(&mut self, started: Instant) {
        self.call.host_wait.reset_from(started);
        self.call.stderr_tail.clear();
        self.limiter.begin_command();
    }

    /// Notes the command line being served, if the plugin may call
    /// commands: the next link of their chain. `more_follow`: pipelined
    /// commands of the call come after it, so its writes may be answered
    /// ahead of their commit: only for a plugin that reaches nothing but
    /// its state, since nothing else it does may leave the server before
    /// its writes are durable.
    pub(super) fn serving(&mut self, request: &types::Request, more_follow: bool) {
        if !self.grant.commands.is_empty() {
            self.call.line = Some(format!("{} {}", request.command, request.raw_args));
        }
        self.call.write_ahead = more_follow && self.may_write_ahead;
    }

    /// The writes this call answered ahead of their commit, and the first
    /// command of its batch that wrote one; forgets their values: the call
    /// is over.
    pub(super) fn take_ahead(&mut self) -> (Vec<Durable>, usize) {
        self.call.write_ahead = false;
        let ahead = self.call.ahead.take().unwrap_or_default();
        ahead.into_durables()
    }

    pub(super) fn grants(&self) -> &Grants {
        &self.grant
    }

    pub(super) fn denials(&self) -> &Denials {
        &self.denials
    }

    pub(super) fn plugin_name(&self) -> &str {
        &self.denials.plugin
    }

    pub(super) fn dispatcher(&self) -> Option<Arc<dyn Dispatch>> {
        self.links.dispatcher.clone()
    }

    pub(super) fn plugin_schedules(&self) -> &Arc<PluginSchedules> {
        &self.links.schedules
    }

    /// The plugin's value at `key`, for the host's own keys in its
    /// namespace (its schedules).
    pub(super) async fn read_key(&mut self, key: &str) -> Result<Option<Vec<u8>>, String> {
        flatten(kv::Host::get(self, key.to_owned()).await)
    }

    /// Sets the plugin's `key` to `bytes`, durably (never ahead of its
    /// commit: what the host does next rests on it).
    pub(super) async fn write_key(&mut self, key: &str, bytes: Vec<u8>) -> Result<(), String> {
        let completion = self.kv.write(key, Write::Set(bytes));
        flatten(settle(completion, &self.call.host_wait, &mut self.call.running).await).map(drop)
    }

    /// What `wasi:sockets/ip-name-lookup` reaches (see `grants/tcp.rs`).
    pub fn lookups(&mut self) -> super::grants::Lookups<'_> {
        super::grants::Lookups {
            sockets: wasmtime_wasi::sockets::WasiSocketsCtxView {
                ctx: self.wasi.sockets(),
                table: &mut self.table,
            },
            grants: &mut self.grants.names,
        }
    }

    /// What the `wasi:io` imports that may wait reach (see `io_waits.rs`).
    pub fn io_waits(&mut self) -> super::io_waits::Waits<'_> {
        super::io_waits::Waits::new(&mut self.table, &mut self.call.running)
    }
}

impl WasiView for Sandbox {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Sandbox {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.grants.http,
        }
    }
}

impl types::Host for Sandbox {}

impl host::Host for Sandbox {
    /// Replaced by [`add_log_in_place_to_linker`]'s: this one would copy
    /// the whole line out of the guest before it is cut.
    fn log(&mut self, level: host::Level, message: String) {
        self.log.write(level, None, &message);
    }
}

/// The host interface as the linker knows it (what plugins import).
const HOST_INTERFACE: &str = "plugboard:plugin/host@0.1.4";

/// Defines `host.log` again, reading the line where it lies in the guest's
/// memory: the generated definition copies it into a `String` first, so a
/// plugin logging one 50 MiB line made the server copy 50 MiB (per call,
/// outside `max_total_memory_mib`) only to cut it to `max_log_line_bytes`.
/// A UTF-8 line is now validated in place and only its cut part is
/// formatted; a guest that encodes strings as UTF-16 still gets a copy
/// (wasmtime decodes those into a new string).
pub fn add_log_in_place_to_linker(
    linker: &mut wasmtime::component::Linker<Sandbox>,
) -> wasmtime::Result<()> {
    // As for `kv.get` below: the generated `log` must be there to be replaced.
    let probe = linker.instance(HOST_INTERFACE)?.func_wrap(
        "log",
        |_: wasmtime::StoreContextMut<'_, Sandbox>, (): ()| Ok(()),
    );
    if probe.is_ok() {
        wasmtime::bail!("{HOST_INTERFACE} is not the host interface the bindings define");
    }
    linker.allow_shadowing(true);
    linker.instance(HOST_INTERFACE)?.func_wrap(
        "log",
        |store: wasmtime::StoreContextMut<'_, Sandbox>,
         (level, message): (host::Level, wasmtime::component::WasmStr)| {
            let text = message.to_str(&store)?;
            store.data().log.write(level, None, &text);
            Ok(())
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

impl config::Host for Sandbox {
    fn get(&mut self, key: String) -> Option<String> {
        self.config.get(&key).cloned()
    }
}

/// Waits for a store operation and converts its result for the guest. An
/// operation that waits on a device (a disk sync, a Redis round trip) is
/// the host's time, not the plugin's (see `host_wait.rs`), so the call
/// gives its CPU place up meanwhile (`cpu_share.rs`); local reads and
/// in-memory writes complete at once.
async fn settle<T>(
    completion: Completion<T>,
    host_wait: &HostWait,
    running: &mut Running,
) -> wasmtime::Result<Result<T, kv::Error>> {
    let result = match completion {
        Completion::Ready(result) => result,
        pending => {
            running.pause();
            let result = {
                let _waiting = host_wait.begin();
                pending.wait().await
            };
            running.resume().await;
            result
        }
    };
    for_guest(result)
}

impl Sandbox {
    async fn write(
        &mut self,
        key: &str,
        write: Write,
    ) -> wasmtime::Result<Result<Written, kv::Error>> {
        let ahead = self.call.write_ahead;
        if !ahead && self.call.ahead.is_none() {
            let completion = self.kv.write(key, write);
            return settle(completion, &self.call.host_wait, &mut self.call.running).await;
        }
        let chain = self.call.ahead.get_or_insert_default().chain.clone();
        let set = ahead.then(|| value_set(&write)).flatten();
        let (completion, durable) = self.kv.write_chained(key, write, &chain, ahead);
        let result = settle(completion, &self.call.host_wait, &mut self.call.running).await;
        if ahead && let Ok(Ok(written)) = &result {
            let command = self.call.batch.as_ref().map_or(0, Queue::replied);
            if let Some(writes) = self.call.ahead.as_mut() {
                writes.record(command, key, set, *written, durable);
            }
        }
        result
    }

    /// `key`'s value as this call left it, if it wrote it ahead of a commit
    /// still under way.
    fn overlaid(&mut self, key: &str) -> Option<Option<Vec<u8>>> {
        self.call.ahead.as_mut().and_then(|writes| writes.read(key))
    }

    /// `keys` with this call's writes ahead of a commit still under way.
    fn overlay_keys(&mut self, prefix: &str, keys: Vec<String>) -> Vec<String> {
        match self.call.ahead.as_mut() {
            Some(writes) => writes.keys(prefix, keys),
            None => keys,
        }
    }
}

/// The kv interface as the linker knows it (what plugins import).
const KV_INTERFACE: &str = "plugboard:plugin/kv@0.1.4";

/// Defines `kv.get` and `kv.list-keys` again, synchronously, for a store
/// whose reads complete at once (memory, disk). The generated definitions
/// are async, as Redis's reads wait on the network; but an async import
/// costs a fiber round trip on every call, measured at 2.5 times the time
/// of a warm `on` (64 clients, one command each in flight).
pub fn add_local_reads_to_linker(
    linker: &mut wasmtime::component::Linker<Sandbox>,
) -> wasmtime::Result<()> {
    type Reply<T> = wasmtime::Result<(Result<T, kv::Error>,)>;
    // The generated `get` must be there to be replaced: a name that drifted
    // from the WIT would otherwise add an import nobody uses, silently.
    let probe = linker.instance(KV_INTERFACE)?.func_wrap(
        "get",
        |_: wasmtime::StoreContextMut<'_, Sandbox>, (): ()| Ok(()),
    );
    if probe.is_ok() {
        wasmtime::bail!("{KV_INTERFACE} is not the kv interface the bindings define");
    }
    linker.allow_shadowing(true);
    let mut instance = linker.instance(KV_INTERFACE)?;
    instance.func_wrap(
        "get",
        |mut store: wasmtime::StoreContextMut<'_, Sandbox>,
         (key,): (String,)|
         -> Reply<Option<Vec<u8>>> {
            let sandbox = store.data_mut();
            match sandbox.overlaid(&key) {
                Some(value) => Ok((Ok(value),)),
                None => Ok((read_now(sandbox.kv.get(&key))?,)),
            }
        },
    )?;
    instance.func_wrap(
        "list-keys",
        |mut store: wasmtime::StoreContextMut<'_, Sandbox>,
         (prefix,): (String,)|
         -> Reply<Vec<String>> {
            let sandbox = store.data_mut();
            let keys = read_now(sandbox.kv.list_keys(&prefix))?;
            Ok((keys.map(|keys| sandbox.overlay_keys(&prefix, keys)),))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// A local read's result, for the guest.
fn read_now<T>(completion: Completion<T>) -> wasmtime::Result<Result<T, kv::Error>> {
    match completion {
        Completion::Ready(result) => for_guest(result),
        Completion::Pending(_) => Err(wasmtime::Error::msg(
            "a local store's read did not complete at once",
        )),
    }
}

/// A plugin's error is the guest's to handle; a store that cannot serve
/// ends the call (the router answers `error: state unavailable`).
fn for_guest<T>(result: Result<T, KvError>) -> wasmtime::Result<Result<T, kv::Error>> {
    Ok(Err(match result {
        Ok(value) => return Ok(Ok(value)),
        Err(KvError::Unavailable(unavailable)) => return Err(unavailable.into()),
        Err(KvError::KeyTooLarge(max)) => kv::Error::KeyTooLarge(max),
        Err(KvError::ValueTooLarge(max)) => kv::Error::ValueTooLarge(max),
        Err(KvError::TooManyKeys(max)) => kv::Error::TooManyKeys(max),
        Err(KvError::NotANumber) => kv::Error::NotANumber,
        // The WIT has no variant of its own for it (adding one would break
        // every compiled plugin): the message says which limit.
        Err(err @ KvError::OverQuota(_)) => kv::Error::Storage(err.to_string()),
    }))
}

/// What a write reported, as the import returns it; each import asks for
/// the kind its write reports.
fn reported<T>(
    result: wasmtime::Result<Result<Written, kv::Error>>,
    kind: impl FnOnce(Written) -> Option<T>,
) -> wasmtime::Result<Result<T, kv::Error>> {
    Ok(match result? {
        Ok(written) => Ok(kind(written).ok_or_else(|| {
            wasmtime::Error::msg(format!("the store reported {written:?} for another write"))
        })?),
        Err(err) => Err(err),
    })
}

impl kv::Host for Sandbox {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, kv::Error>> {
        if let Some(value) = self.overlaid(&key) {
            return Ok(Ok(value));
        }
        let completion = self.kv.get(&key);
        settle(completion, &self.call.host_wait, &mut self.call.running).await
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), kv::Error>> {
        let result = self.write(&key, Write::Set(value)).await;
        reported(result, |w| (w == Written::Set).then_some(()))
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<bool, kv::Error>> {
        reported(self.write(&key, Write::Delete).await, |w| match w {
            Written::Deleted(existed) => Some(existed),
            _ => None,
        })
    }

    async fn list_keys(
        &mut self,
        prefix: String,
    ) -> wasmtime::Result<Result<Vec<String>, kv::Error>> {
        let completion = self.kv.list_keys(&prefix);
        let keys = settle(completion, &self.call.host_wait, &mut self.call.running).await?;
        Ok(keys.map(|keys| self.overlay_keys(&prefix, keys)))
    }

    async fn increment(
        &mut self,
        key: String,
        delta: i64,
    ) -> wasmtime::Result<Result<i64, kv::Error>> {
        reported(
            self.write(&key, Write::Increment(delta)).await,
            |w| match w {
                Written::Incremented(n) => Some(n),
                _ => None,
            },
        )
    }

    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    ) -> wasmtime::Result<Result<bool, kv::Error>> {
        let write = Write::CompareAndSwap { expected, new };
        reported(self.write(&key, write).await, |w| match w {
            Written::Swapped(swapped) => Some(swapped),
            _ => None,
        })
    }
}
