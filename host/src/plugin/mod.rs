//! The plugin runtime: loading a component from disk, asking it for its
//! commands, and running one request in a sandboxed instance under its
//! limits.
//!
//! Each connection has its own instance, kept warm between its commands
//! ([`Session`]): nothing one client's command leaves in a plugin's memory is
//! seen by another client, and a failed call's instance is discarded, so a
//! trap cannot leave a broken instance behind. New instances are cheap too
//! (`InstancePre` resolves imports once, at load; the pooling allocator
//! reuses instance slots), but not free: see `session.rs`.
//!
//! A plugin that fails `quarantine_after` calls in a row is disabled until it
//! is loaded again: a crash loop costs one error reply, not an instance and a
//! trap per command.

mod batch;
mod cache_check;
mod cpu_share;
mod epoch;
mod grants;
mod health;
mod host_wait;
mod io_waits;
mod limits;
mod log;
mod name_lookup;
mod runtime;
mod sandbox;
mod session;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::ComponentExportIndex;

use cpu_share::CpuShare;
pub use grants::{DirGrant, Grants, Origin, TcpGrant};
use health::Health;
pub use health::MAX_WINDOW as MAX_QUARANTINE_AFTER;
pub use limits::Limits;
use limits::MemoryExceeded;
use log::PluginLog;
pub use runtime::{
    MAX_CORE_INSTANCES_PER_INSTANCE, MAX_MEMORIES_PER_INSTANCE, MAX_TABLES_PER_INSTANCE, Runtime,
    RuntimeOptions, default_total_memory_bytes, instance_slots,
};
use sandbox::InstanceHandles;
pub use session::{MAX_CALLS_PER_INSTANCE, Session};

use crate::protocol::request::{CommandName, Request};
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
            // A plugin that breaks the batch protocol traps (`batch.rs`).
            "plugboard:plugin/batch.next-request": trappable,
            "plugboard:plugin/batch.reply": trappable,
        },
    });
}

/// How one plugin is set up from the config: its limits and its own
/// `[plugins.<name>.config]` table (what `config.get` reads).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Setup {
    pub limits: Limits,
    pub config: Arc<std::collections::BTreeMap<String, String>>,
    /// What it may reach beyond the sandbox (nothing by default).
    pub grants: Arc<Grants>,
}

/// A command a plugin serves, as it declared it.
#[derive(Debug, Clone)]
pub struct CommandSpec {
    pub name: CommandName,
    pub summary: String,
}

/// A loaded plugin, ready to run requests: the compiled artifact, how this
/// server sets it up, and how its calls have been going. A config reload
/// makes a new `Plugin` from the same compiled part, with a clean record.
pub struct Plugin {
    /// Unique per loaded version and setup: a warm instance is reused only
    /// by the version (and limits) it was made for.
    id: u64,
    compiled: Arc<Compiled>,
    setup: Setup,
    /// What the host hands each instance under this setup.
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
struct Compiled {
    name: Arc<str>,
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
    runtime: Arc<Runtime>,
}

/// The server's warnings about one plugin, at most this many a second.
const WARNINGS_PER_SEC: u32 = 10;

/// How a call ended, as the router tells it apart: one match turns it into
/// a reply.
#[derive(Debug)]
pub enum Answer {
    /// The plugin's reply, sent as `text<EOF>`.
    Reply(String),
    /// The plugin refused the request (its `err`), sent as `error: text<EOF>`.
    Refusal(String),
    /// The call failed, or was not made; details go to the log.
    Failure(CallError),
}

/// Why a file could not become a plugin. The server logs it and starts without it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read: {0}")]
    Read(#[from] std::io::Error),
    #[error("not a WebAssembly file")]
    NotWasm,
    #[error(
        "a core WebAssembly module, not a component: build for wasm32-wasip2, \
         or wrap it with `wasm-tools component new`"
    )]
    CoreModule,
    #[error("not a valid WebAssembly component: {0:#}")]
    Compile(anyhow::Error),
    #[error(
        "one instance would need more than a plugin may have (at most \
         {MAX_CORE_INSTANCES_PER_INSTANCE} core instances, {MAX_MEMORIES_PER_INSTANCE} memories, \
         {MAX_TABLES_PER_INSTANCE} tables): {0:#}"
    )]
    TooLarge(anyhow::Error),
    #[error("does not match plugboard's `plugin` world: {0:#}")]
    Link(anyhow::Error),
    #[error("`commands()` failed: {0:#}")]
    Commands(anyhow::Error),
    #[error("declares an invalid command name {0:?} (empty or containing whitespace)")]
    InvalidCommandName(String),
}

/// A plugin call that did not produce a reply. The variants are what the
/// router tells the client apart; the details go to the log.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The plugin trapped: a panic, an out-of-bounds access, stack overflow...
    #[error("trapped: {0}")]
    Trapped(Trap),
    #[error("did not finish within {0:?}")]
    TimedOut(Duration),
    #[error("tried to grow its memory past {limit_bytes} bytes")]
    OutOfMemory { limit_bytes: usize },
    /// All instances together hold the server's memory budget: the server
    /// is full, not the plugin broken.
    #[error("the server's memory budget of {budget_bytes} bytes is taken")]
    ServerMemoryFull { budget_bytes: usize },
    #[error("reply of {len} bytes is over the {limit} byte limit")]
    ReplyTooLarge { len: usize, limit: usize },
    /// Quarantined after too many consecutive failures.
    #[error("disabled after {0} consecutive failed calls")]
    Disabled(u32),
    /// Every instance slot is in use: the server is saturated, not the plugin broken.
    #[error("no free instance slot")]
    Busy,
    /// The plugin's own `max_instances` are all live, and none came free
    /// within the call's deadline.
    #[error("all {0} of its instances stayed in use")]
    InstancesInUse(u32),
    /// The deadline passed while the call still waited for its turn among
    /// the plugin's running calls: it never ran.
    #[error("did not get to run within {0:?}: its other calls took every place")]
    NeverRan(Duration),
    /// The state store failed the plugin's read or write: the store's
    /// fault, not the plugin's, so the command ends with it.
    #[error("{0}")]
    StateUnavailable(crate::store::Unavailable),
}

/// A trap, as the plugin's author reads it: what the plugin wrote on stderr
/// as it died (a panic's message), then the trap itself; the wasm backtrace
/// is kept for a DEBUG line.
#[derive(Debug)]
pub struct Trap {
    pub said: Option<String>,
    pub error: wasmtime::Error,
}

impl std::fmt::Display for Trap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let trap = match self.error.downcast_ref::<wasmtime::Trap>() {
            Some(trap) => trap.to_string(),
            None => self.error.root_cause().to_string(),
        };
        match &self.said {
            Some(said) => write!(f, "{said} ({trap})"),
            None => write!(f, "{trap}"),
        }
    }
}

impl CallError {
    /// Whether this failure is the plugin's fault and counts towards quarantine.
    fn is_plugin_failure(&self) -> bool {
        matches!(
            self,
            Self::Trapped(_) | Self::TimedOut(_) | Self::OutOfMemory { .. }
        )
    }
}

/// What the host hands each instance of plugin `name` under `setup`: a
/// new log budget, the plugin's namespace and memory gauge.
fn instance_handles(
    name: &Arc<str>,
    kv: &Arc<Namespace>,
    memory: &metrics::Gauge,
    setup: &Setup,
) -> InstanceHandles {
    let limits = &setup.limits;
    InstanceHandles {
        kv: kv.clone(),
        memory: memory.clone(),
        log: Arc::new(PluginLog::new(
            name.clone(),
            limits.max_log_lines_per_sec,
            limits.max_log_line_bytes,
        )),
        denials: grants::Denials {
            plugin: name.clone(),
            tcp: crate::telemetry::capability_denied(name, "tcp"),
            http: crate::telemetry::capability_denied(name, "http"),
            lookup: crate::telemetry::capability_denied(name, "lookup"),
        },
    }
}

fn next_plugin_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Catches the two most common wrong files with a message that says what to
/// do, before the compiler reports them in its own terms.
fn check_component_header(bytes: &[u8]) -> Result<(), LoadError> {
    const MAGIC: &[u8] = b"\0asm";
    const CORE_MODULE_LAYER: [u8; 2] = [0, 0];
    if !bytes.starts_with(MAGIC) {
        return Err(LoadError::NotWasm);
    }
    // Bytes 6..8 are the layer: 0 for a core module, 1 for a component.
    if bytes.get(6..8) == Some(&CORE_MODULE_LAYER[..]) {
        return Err(LoadError::CoreModule);
    }
    Ok(())
}

impl Plugin {
    /// Compiles the component at `path` as plugin `name` and asks it for
    /// its commands.
    pub async fn load(
        runtime: &Arc<Runtime>,
        name: &str,
        path: &Path,
        setup: Setup,
    ) -> Result<Self, LoadError> {
        let bytes = tokio::fs::read(path).await?;
        Self::from_bytes(runtime, name, bytes, setup).await
    }

    /// Like [`Plugin::load`] with the file already read: the plugin directory
    /// reads each version of a file once, to hash it and to compile it.
    pub async fn from_bytes(
        runtime: &Arc<Runtime>,
        name: &str,
        bytes: Vec<u8>,
        setup: Setup,
    ) -> Result<Self, LoadError> {
        let name: Arc<str> = name.into();
        let kv = Arc::new(runtime.kv().namespace(&name));
        check_component_header(&bytes)?;
        // Compiling is CPU-bound and can take seconds: keep it off the async workers.
        let compiling = runtime.clone();
        let component = tokio::task::spawn_blocking(move || compiling.compile(&bytes))
            .await
            .map_err(|join| LoadError::Compile(join.into()))?
            .map_err(|err| {
                // The engine checks a component against the pool's
                // per-instance limits as it compiles it.
                if format!("{err:#}").contains("pooling allocator") {
                    LoadError::TooLarge(err.into())
                } else {
                    LoadError::Compile(err.into())
                }
            })?;
        let imports = component
            .component_type()
            .imports(runtime.engine())
            .map(|(name, _)| name.to_owned())
            .collect();
        let instance_pre = runtime
            .linker()
            .instantiate_pre(&component)
            .map_err(|err| LoadError::Link(err.into()))?;
        let pre =
            bindings::PluginPre::new(instance_pre).map_err(|err| LoadError::Link(err.into()))?;
        let serve_batch = component.get_export_index(None, "serve-batch");

        let memory = crate::telemetry::plugin_memory(&name);
        let handles = instance_handles(&name, &kv, &memory, &setup);
        let mut store = runtime.new_store(&handles, &setup);
        let call = async {
            let live = instantiate(&pre, serve_batch.as_ref(), &mut store).await?;
            live.plugin.call_commands(&mut store).await
        };
        let declared = tokio::time::timeout(setup.limits.call_timeout, call)
            .await
            .map_err(|_| LoadError::Commands(anyhow::anyhow!("timed out")))?
            .map_err(|err| LoadError::Commands(err.into()))?;
        let commands = declared
            .into_iter()
            .map(|info| match CommandName::new(&info.name) {
                Some(name) => Ok(CommandSpec {
                    name,
                    summary: one_help_line(&info.summary),
                }),
                None => Err(LoadError::InvalidCommandName(info.name)),
            })
            .collect::<Result<_, _>>()?;

        let compiled = Compiled {
            name,
            pre,
            serve_batch,
            commands,
            imports,
            kv,
            memory,
            runtime: runtime.clone(),
        };
        Ok(Self::set_up(Arc::new(compiled), setup))
    }

    pub fn name(&self) -> &str {
        &self.compiled.name
    }

    pub fn commands(&self) -> &[CommandSpec] {
        &self.compiled.commands
    }

    pub fn imports(&self) -> &[String] {
        &self.compiled.imports
    }

    pub fn setup(&self) -> &Setup {
        &self.setup
    }

    /// The same compiled plugin set up anew, with a clean record (a config
    /// reload is a fresh start, as a new file is).
    pub fn with_setup(&self, setup: Setup) -> Self {
        Self::set_up(self.compiled.clone(), setup)
    }

    /// `compiled` under `setup`: everything that belongs to one setup (its
    /// id, the instances' handles, the CPU share, the instance bound, a
    /// clean health record) made in one place.
    fn set_up(compiled: Arc<Compiled>, setup: Setup) -> Self {
        let handles = instance_handles(&compiled.name, &compiled.kv, &compiled.memory, &setup);
        let limits = &setup.limits;
        Self {
            id: next_plugin_id(),
            cpu: CpuShare::new(limits.max_concurrent_calls),
            instances: Arc::new(tokio::sync::Semaphore::new(limits.max_instances as usize)),
            warnings: LogBudget::new(&compiled.name, WARNINGS_PER_SEC),
            compiled,
            setup,
            handles,
            health: Health::default(),
        }
    }

    /// Whether the plugin is quarantined (see `health.rs`).
    pub fn is_disabled(&self) -> bool {
        self.health.is_disabled()
    }

    /// Whether the server may write a warning about this plugin now, and
    /// how many it did not write since the last (see [`LogBudget`]).
    pub fn may_warn(&self) -> Option<u64> {
        match self.warnings.admit() {
            Admit::Write { unwritten_before } => Some(unwritten_before),
            Admit::Suppress => None,
        }
    }

    /// Runs `request` under the plugin's limits, in `session`'s warm
    /// instance if it has one of this plugin, else in a fresh one.
    pub async fn call(&self, request: Request, session: &mut Session) -> Answer {
        if self.health.is_disabled() {
            return Answer::Failure(CallError::Disabled(self.setup.limits.quarantine_after));
        }
        match self.call_sandboxed(request, session).await {
            Ok(Ok(text)) => {
                self.health.record_success();
                Answer::Reply(text)
            }
            Ok(Err(text)) => {
                self.health.record_success();
                Answer::Refusal(text)
            }
            Err(err) => {
                if err.is_plugin_failure() {
                    self.health
                        .record_failure(self.name(), self.setup.limits.quarantine_after);
                }
                Answer::Failure(err)
            }
        }
    }

    /// Whether the plugin serves pipelined commands in one call.
    pub fn serves_batches(&self) -> bool {
        self.compiled.serve_batch.is_some()
    }

    /// Runs `requests`, pipelined commands of one connection that this
    /// plugin serves, in as few calls as it allows: each command gets the
    /// answer it would have had alone, with the time it took (see `batch.rs`).
    pub async fn call_batch(
        &self,
        requests: Vec<Request>,
        session: &mut Session,
    ) -> Vec<(Answer, Duration)> {
        let mut answers = Vec::with_capacity(requests.len());
        let mut left: VecDeque<_> = requests.into_iter().map(wit_request).collect();
        while !left.is_empty() {
            if self.health.is_disabled() {
                let disabled = || CallError::Disabled(self.setup.limits.quarantine_after);
                answers.extend(
                    left.drain(..)
                        .map(|_| (Answer::Failure(disabled()), Duration::ZERO)),
                );
                break;
            }
            let call = self.serve_batch_sandboxed(left, session).await;
            let served_none = call.served.is_empty();
            for served in call.served {
                self.health.record_success();
                let answer = match served.reply {
                    Ok(text) => Answer::Reply(text),
                    Err(text) => Answer::Refusal(text),
                };
                answers.push((answer, served.elapsed));
            }
            left = call.left;
            let Some(failure) = call.failure else {
                continue;
            };
            // Charged to the command being served, or, when the call served
            // none, to the next: so every call settles at least one command.
            let charged = failure.serving || served_none;
            if !charged {
                tracing::debug!(
                    plugin = self.name(),
                    "batch call failed between commands: {}",
                    failure.error
                );
                continue;
            }
            if !failure.serving {
                left.pop_front();
            }
            if failure.error.is_plugin_failure() {
                self.health
                    .record_failure(self.name(), self.setup.limits.quarantine_after);
            }
            answers.push((Answer::Failure(failure.error), failure.elapsed));
        }
        answers
    }

    /// The instance is kept in `session` only after a call that returned:
    /// one that trapped, timed out or broke a limit may have left it broken.
    async fn call_sandboxed(
        &self,
        request: Request,
        session: &mut Session,
    ) -> Result<Result<String, String>, CallError> {
        let wit_request = wit_request(request);
        let started = Instant::now();
        let limit = self.setup.limits.call_timeout;
        let (mut store, warm, calls) = self.take_instance(session, limit).await?;
        let host_wait = self.begin_call(&mut store, started);
        // Boxed: wasmtime's call futures are kilobytes, and unboxed they would
        // be part of every connection task, busy or idle.
        let call = Box::pin(async {
            let live = self.start_call(&mut store, warm).await?;
            let reply = live.plugin.call_handle(&mut store, &wit_request).await?;
            Ok::<_, wasmtime::Error>((live, reply))
        });
        // The call yields at every epoch tick, so the deadline also interrupts
        // wasm that never returns; dropping the call drops its instance.
        // Time spent waiting for an instance counts against the deadline.
        let (live, reply) = match host_wait::within_deadline(call, limit, &host_wait).await {
            Some(Ok(returned)) => returned,
            failed => return Err(self.call_error(failed.map(|r| r.err()), &store, started)),
        };
        let len = match &reply {
            Ok(text) | Err(text) => text.len(),
        };
        if len > self.setup.limits.max_reply_bytes {
            return Err(CallError::ReplyTooLarge {
                len,
                limit: self.setup.limits.max_reply_bytes,
            });
        }
        self.keep(session, store, live, calls + 1);
        Ok(reply)
    }

    /// One `serve-batch` call over `requests`: what it served, how it
    /// failed if it did, and the requests it never took.
    async fn serve_batch_sandboxed(
        &self,
        mut requests: VecDeque<bindings::plugboard::plugin::types::Request>,
        session: &mut Session,
    ) -> BatchCall {
        let started = Instant::now();
        let limit = self.setup.limits.call_timeout;
        let (mut store, warm, calls) = match self.take_instance(session, limit).await {
            Ok(taken) => taken,
            Err(error) => return BatchCall::failed_to_start(error, requests, started),
        };
        // An instance serves no more calls than one by one it would: the
        // rest go to the next (fresh) instance.
        let room = MAX_CALLS_PER_INSTANCE.saturating_sub(calls).max(1) as usize;
        let later = requests.split_off(room.min(requests.len()));
        let max_reply_bytes = self.setup.limits.max_reply_bytes;
        store.data_mut().batch = Some(batch::Batch::new(requests, max_reply_bytes, started));
        let host_wait = self.begin_call(&mut store, started);
        let call = Box::pin(async {
            let live = self.start_call(&mut store, warm).await?;
            let serve_batch = live
                .serve_batch
                .ok_or_else(|| wasmtime::Error::msg("the plugin has no `serve-batch`"))?;
            serve_batch.call_async(&mut store, ()).await?;
            Ok::<_, wasmtime::Error>(live)
        });
        let result = host_wait::within_deadline(call, limit, &host_wait).await;
        let current_started = host_wait.started();
        // Put in the store above, taken only here.
        let (served, serving, mut left) = store
            .data_mut()
            .batch
            .take()
            .map(batch::Batch::into_parts)
            .unwrap_or_default();
        let served_none = served.is_empty();
        let untaken = !left.is_empty();
        left.extend(later);
        let failure = match result {
            Some(Ok(_)) if serving => Some(wasmtime::Error::msg(
                "`serve-batch` returned without replying",
            )),
            Some(Ok(_)) if served_none && untaken => Some(wasmtime::Error::msg(
                "`serve-batch` returned without serving its requests",
            )),
            Some(Ok(live)) => {
                self.keep(session, store, live, calls + served.len() as u32);
                return BatchCall {
                    served,
                    failure: None,
                    left,
                };
            }
            Some(Err(error)) => Some(error),
            None => None,
        };
        let error = self.call_error(Some(failure), &store, started);
        BatchCall {
            served,
            failure: Some(BatchFailure {
                error,
                serving,
                elapsed: current_started.elapsed(),
            }),
            left,
        }
    }

    /// The connection's warm instance of this plugin version if it has
    /// one (`None` for the instance: make one), else a new store.
    async fn take_instance(
        &self,
        session: &mut Session,
        limit: Duration,
    ) -> Result<
        (
            wasmtime::Store<sandbox::Sandbox>,
            Option<session::Live>,
            u32,
        ),
        CallError,
    > {
        Ok(match session.take_for(self.id) {
            Some(warm) => (warm.store, Some(warm.live), warm.calls),
            None => (self.new_instance_store(limit).await?, None, 0),
        })
    }

    /// Arms a call on `store`: its deadline from `started`, a clean record
    /// of host waits and stderr. Returns the waits' account, which the
    /// deadline follows.
    fn begin_call(
        &self,
        store: &mut wasmtime::Store<sandbox::Sandbox>,
        started: Instant,
    ) -> host_wait::HostWait {
        self.compiled.runtime.arm_deadline(store);
        let host_wait = store.data().host_wait.clone();
        host_wait.reset_from(started);
        store.data().stderr_tail.clear();
        host_wait
    }

    /// Inside the call: takes the call's CPU place, then the warm instance
    /// or a new one.
    async fn start_call(
        &self,
        store: &mut wasmtime::Store<sandbox::Sandbox>,
        warm: Option<session::Live>,
    ) -> wasmtime::Result<session::Live> {
        store.data_mut().running.start(&self.cpu).await;
        match warm {
            Some(live) => Ok(live),
            None => {
                instantiate(
                    &self.compiled.pre,
                    self.compiled.serve_batch.as_ref(),
                    store,
                )
                .await
            }
        }
    }

    /// Keeps the instance for the connection's next command.
    fn keep(
        &self,
        session: &mut Session,
        mut store: wasmtime::Store<sandbox::Sandbox>,
        live: session::Live,
        calls: u32,
    ) {
        store.data_mut().running.finish();
        session.keep(session::Warm {
            plugin_id: self.id,
            store,
            live,
            calls,
        });
    }

    /// What a call that did not return tells the client: `None`, it ran
    /// out of time (or never got to run); `Some(error)`, how it failed.
    fn call_error(
        &self,
        failed: Option<Option<wasmtime::Error>>,
        store: &wasmtime::Store<sandbox::Sandbox>,
        started: Instant,
    ) -> CallError {
        let limits = &self.setup.limits;
        let sandbox = store.data();
        let Some(Some(err)) = failed else {
            return match sandbox.running.ran_before(started + limits.call_timeout) {
                false => CallError::NeverRan(limits.call_timeout),
                true => CallError::TimedOut(limits.call_timeout),
            };
        };
        if err.is::<wasmtime::PoolConcurrencyLimitError>() {
            return CallError::Busy;
        }
        match sandbox.limiter.exceeded {
            Some(MemoryExceeded::Instance) => {
                return CallError::OutOfMemory {
                    limit_bytes: limits.max_memory_bytes,
                };
            }
            Some(MemoryExceeded::Server) => {
                return CallError::ServerMemoryFull {
                    budget_bytes: self.compiled.runtime.memory_budget_bytes(),
                };
            }
            None => {}
        }
        if let Some(batch::OversizedReply(len)) = err.downcast_ref::<batch::OversizedReply>() {
            return CallError::ReplyTooLarge {
                len: *len,
                limit: limits.max_reply_bytes,
            };
        }
        match err.downcast::<crate::store::Unavailable>() {
            Ok(unavailable) => CallError::StateUnavailable(unavailable),
            Err(error) => CallError::Trapped(Trap {
                said: sandbox.stderr_tail.take(),
                error,
            }),
        }
    }

    /// A store for a new instance, once the plugin is below its
    /// `max_instances` (waiting up to `limit` for one to go); the store
    /// holds the permit, given back when the instance goes.
    async fn new_instance_store(
        &self,
        limit: Duration,
    ) -> Result<wasmtime::Store<sandbox::Sandbox>, CallError> {
        let permit = tokio::time::timeout(limit, self.instances.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or(CallError::InstancesInUse(self.setup.limits.max_instances))?;
        let mut store = self.compiled.runtime.new_store(&self.handles, &self.setup);
        store.data_mut().instance_permit = Some(permit);
        Ok(store)
    }
}

/// What one `serve-batch` call came to.
struct BatchCall {
    served: Vec<batch::Served>,
    failure: Option<BatchFailure>,
    /// Requests it never handed out: served by the next call.
    left: VecDeque<bindings::plugboard::plugin::types::Request>,
}

/// How a `serve-batch` call failed.
struct BatchFailure {
    error: CallError,
    /// Whether a command was being served (it gets the error).
    serving: bool,
    /// Since the current command (or the call) started.
    elapsed: Duration,
}

impl BatchCall {
    /// No instance to run in: nothing served, the first command charged.
    fn failed_to_start(
        error: CallError,
        left: VecDeque<bindings::plugboard::plugin::types::Request>,
        started: Instant,
    ) -> Self {
        Self {
            served: Vec::new(),
            failure: Some(BatchFailure {
                error,
                serving: false,
                elapsed: started.elapsed(),
            }),
            left,
        }
    }
}

/// A command's summary as `help` can show it: one line, and never the
/// delimiter, which would end `help`'s reply early and shift every reply
/// after it (the plugin's text, so the plugin's to get wrong).
fn one_help_line(summary: &str) -> String {
    summary.replace(['\r', '\n'], " ").replace("<EOF>", "<eof>")
}

fn wit_request(request: Request) -> bindings::plugboard::plugin::types::Request {
    bindings::plugboard::plugin::types::Request {
        command: request.command.into_string(),
        args: request.args,
        raw_args: request.raw_args,
    }
}

/// A new instance of `pre` in `store`, with `serve-batch` looked up when
/// the plugin has it.
async fn instantiate(
    pre: &bindings::PluginPre<sandbox::Sandbox>,
    serve_batch: Option<&ComponentExportIndex>,
    store: &mut wasmtime::Store<sandbox::Sandbox>,
) -> wasmtime::Result<session::Live> {
    let instance = pre.instance_pre().instantiate_async(&mut *store).await?;
    let plugin = bindings::Plugin::new(&mut *store, &instance)?;
    let serve_batch = serve_batch
        .map(|index| instance.get_typed_func::<(), ()>(&mut *store, index))
        .transpose()?;
    Ok(session::Live {
        plugin,
        serve_batch,
    })
}

#[cfg(test)]
pub(crate) mod test_components;
#[cfg(test)]
mod tests;
