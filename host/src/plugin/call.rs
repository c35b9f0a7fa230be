//! Calling: one request in a sandboxed instance under the plugin's limits,
//! and how the call ended, as an [`Answer`].
//!
//! Time is enforced around the call: it yields at every epoch tick, so a
//! deadline on its future interrupts wasm that never returns as well as a
//! host call that takes too long; time spent waiting on the host's store
//! is given back (`host_wait.rs`). Memory is enforced inside wasmtime by the
//! store's limiter (`limits.rs`). An instance is kept for the connection's
//! next command only after a call that returned: one that trapped, timed
//! out or broke a limit may have left it broken.

use std::time::{Duration, Instant};

use super::bindings::plugboard::plugin::types;
use super::limits::MemoryExceeded;
use super::sandbox::Sandbox;
use super::session::{Live, Session, Warm, instantiate};
use super::{Plugin, host_wait};
use crate::protocol::request::Request;

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

impl From<Result<String, String>> for Answer {
    fn from(returned: Result<String, String>) -> Self {
        match returned {
            Ok(text) => Self::Reply(text),
            Err(text) => Self::Refusal(text),
        }
    }
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
    /// Quarantined: too many of its recent calls failed (see `health.rs`).
    #[error(
        "disabled: at least {0} of its recent calls failed; it stays disabled until its file \
         changes, a SIGHUP, or a restart"
    )]
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

impl CallError {
    /// Whether this failure is the plugin's fault and counts towards quarantine.
    pub(super) fn is_plugin_failure(&self) -> bool {
        matches!(
            self,
            Self::Trapped(_) | Self::TimedOut(_) | Self::OutOfMemory { .. }
        )
    }
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

/// A request as the WIT bindings carry it.
pub(super) fn wit_request(request: Request) -> types::Request {
    types::Request {
        command: request.command.into_string(),
        args: request.args,
        raw_args: request.raw_args,
    }
}

/// An instance to run a call in: the connection's warm one, or a new store
/// (`live` is `None`: instantiated once the call has its CPU place).
pub(super) struct Taken {
    pub store: wasmtime::Store<Sandbox>,
    pub live: Option<Live>,
    /// Calls the instance has served so far.
    pub calls: u32,
}

impl Plugin {
    /// Runs `request` under the plugin's limits, in `session`'s warm
    /// instance if it has one of this plugin, else in a fresh one.
    pub async fn call(&self, request: Request, session: &mut Session) -> Answer {
        if self.health.is_disabled() {
            return Answer::Failure(CallError::Disabled(self.terms.limits.quarantine_after));
        }
        let answer = self.call_sandboxed(request, session).await;
        match &answer {
            Answer::Failure(err) if err.is_plugin_failure() => self
                .health
                .record_failure(self.name(), self.terms.limits.quarantine_after),
            Answer::Failure(_) => {}
            Answer::Reply(_) | Answer::Refusal(_) => self.health.record_success(),
        }
        answer
    }

    async fn call_sandboxed(&self, request: Request, session: &mut Session) -> Answer {
        let wit_request = wit_request(request);
        let started = Instant::now();
        let limit = self.terms.limits.call_timeout;
        let Taken {
            mut store,
            live,
            calls,
        } = match self.take_instance(session, limit).await {
            Ok(taken) => taken,
            Err(err) => return Answer::Failure(err),
        };
        let host_wait = self.begin_call(&mut store, started, session.chain());
        store.data_mut().serving(&wit_request, false);
        // Boxed: wasmtime's call futures are kilobytes, and unboxed they would
        // be part of every connection task, busy or idle.
        let call = Box::pin(async {
            let live = self.start_call(&mut store, live).await?;
            let reply = live.plugin.call_handle(&mut store, &wit_request).await?;
            Ok::<_, wasmtime::Error>((live, reply))
        });
        // The call yields at every epoch tick, so the deadline also interrupts
        // wasm that never returns; dropping the call drops its instance.
        // Time spent waiting for an instance counts against the deadline.
        let (live, reply) = match host_wait::within_deadline(call, limit, &host_wait).await {
            Some(Ok(returned)) => returned,
            failed => {
                let failed = failed.map(|result| result.err());
                return Answer::Failure(self.call_error(failed, &store, started));
            }
        };
        let len = match &reply {
            Ok(text) | Err(text) => text.len(),
        };
        if len > self.terms.limits.max_reply_bytes {
            return Answer::Failure(CallError::ReplyTooLarge {
                len,
                limit: self.terms.limits.max_reply_bytes,
            });
        }
        self.keep(session, store, live, calls + 1);
        Answer::from(reply)
    }

    /// The connection's warm instance of this plugin version if it has
    /// one, else a new store.
    pub(super) async fn take_instance(
        &self,
        session: &mut Session,
        limit: Duration,
    ) -> Result<Taken, CallError> {
        Ok(match session.take_for(self.id) {
            Some(warm) => Taken {
                store: warm.store,
                live: Some(warm.live),
                calls: warm.calls,
            },
            None => Taken {
                store: self.new_instance_store(limit).await?,
                live: None,
                calls: 0,
            },
        })
    }

    /// Arms a call on `store`: its deadline from `started`, a clean record
    /// of the call's waits, stderr and memory refusals, the nested calls
    /// of `chain` behind it. Returns the waits' account, which the deadline
    /// follows.
    pub(super) fn begin_call(
        &self,
        store: &mut wasmtime::Store<Sandbox>,
        started: Instant,
        chain: &super::Chain,
    ) -> host_wait::HostWait {
        self.compiled.runtime.arm_deadline(store);
        store.data_mut().begin_call(started, chain)
    }

    /// Inside the call: takes the call's CPU place, then the warm instance
    /// or a new one.
    pub(super) async fn start_call(
        &self,
        store: &mut wasmtime::Store<Sandbox>,
        warm: Option<Live>,
    ) -> wasmtime::Result<Live> {
        store.data_mut().call.running.start(&self.cpu).await;
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
    pub(super) fn keep(
        &self,
        session: &mut Session,
        mut store: wasmtime::Store<Sandbox>,
        live: Live,
        calls: u32,
    ) {
        store.data_mut().call.running.finish();
        session.keep(Warm {
            plugin_id: self.id,
            store,
            live,
            calls,
        });
    }

    /// What a call that did not return tells the client: `None`, it ran
    /// out of time (or never got to run); `Some(error)`, how it failed.
    pub(super) fn call_error(
        &self,
        failed: Option<Option<wasmtime::Error>>,
        store: &wasmtime::Store<Sandbox>,
        started: Instant,
    ) -> CallError {
        let limits = &self.terms.limits;
        let sandbox = store.data();
        let Some(Some(err)) = failed else {
            return match sandbox
                .call
                .running
                .ran_before(started + limits.call_timeout)
            {
                false => CallError::NeverRan(limits.call_timeout),
                true => CallError::TimedOut(limits.call_timeout),
            };
        };
        if err.is::<wasmtime::PoolConcurrencyLimitError>() {
            return CallError::Busy;
        }
        match sandbox.limiter.exceeded() {
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
        if let Some(super::batch::OversizedReply(len)) =
            err.downcast_ref::<super::batch::OversizedReply>()
        {
            return CallError::ReplyTooLarge {
                len: *len,
                limit: limits.max_reply_bytes,
            };
        }
        match err.downcast::<crate::store::Unavailable>() {
            Ok(unavailable) => CallError::StateUnavailable(unavailable),
            Err(error) => CallError::Trapped(Trap {
                said: sandbox.call.stderr_tail.take(),
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
    ) -> Result<wasmtime::Store<Sandbox>, CallError> {
        let permit = tokio::time::timeout(limit, self.instances.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or(CallError::InstancesInUse(self.terms.limits.max_instances))?;
        let mut store = self.compiled.runtime.new_store(&self.handles, &self.terms);
        store.data_mut().instance_permit = Some(permit);
        Ok(store)
    }
}
