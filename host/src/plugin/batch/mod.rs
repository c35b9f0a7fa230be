//! Serving several of one connection's commands in one call.
//!
//! A call into a component costs more than the work of a small command
//! (wasmtime's async entry, a fiber switch, lifting and lowering), so when a
//! client has pipelined several commands for one plugin, the connection
//! hands them over together and the plugin's `serve-batch` takes them one at
//! a time through `next-request`, giving each reply to `reply` (the host
//! side of those imports is `queue.rs`). Each command keeps what it had one
//! call each: its own deadline (restarted at the reply before it), its own
//! reply size limit, its own outcome in the metrics and the plugin's health
//! record. A trap or a timeout ends the call: commands already replied to
//! keep their replies, the one being served gets the failure, and the rest
//! are handed to a fresh instance.

mod ahead;
mod queue;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub use ahead::{Ahead, value_set};
use queue::Served;
pub use queue::{OversizedReply, Queue};

use super::bindings::plugboard::plugin::types;
use super::call::{Answer, CallError, Taken, wit_request};
use super::session::{MAX_CALLS_PER_INSTANCE, Session};
use super::{Plugin, host_wait};
use crate::protocol::request::Request;
use crate::store::{Durable, Unavailable};

/// The most bytes of requests one `serve-batch` call is given: they are
/// lowered into the plugin's memory at once (`take-requests`), so a client
/// pipelining large messages must not make one call need far more memory
/// than the same commands one by one.
const MAX_BATCH_BYTES: usize = 256 << 10;

/// How many of `requests`, from the first, one call takes: those within
/// [`MAX_BATCH_BYTES`], and at least one.
fn fitting(requests: &VecDeque<types::Request>) -> usize {
    let mut bytes = 0;
    let within = requests
        .iter()
        .take_while(|request| {
            bytes += queue::encoded_len(request);
            bytes <= MAX_BATCH_BYTES
        })
        .count();
    within.max(1)
}

/// What one `serve-batch` call came to.
struct BatchCall {
    served: Vec<Served>,
    failure: Option<BatchFailure>,
    /// Requests it never handed out: served by the next call.
    left: VecDeque<types::Request>,
    /// Why writes it had answered ahead of their commit never became
    /// durable, and the first served command that wrote one: from there on
    /// its replies are not sent, each command gets `state unavailable`.
    undurable: Option<(Unavailable, usize)>,
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
    fn failed_to_start(error: CallError, left: VecDeque<types::Request>, started: Instant) -> Self {
        Self {
            served: Vec::new(),
            failure: Some(BatchFailure {
                error,
                serving: false,
                elapsed: started.elapsed(),
            }),
            left,
            undurable: None,
        }
    }
}

/// Waits for the writes a call answered ahead of their commit: `None` once
/// all are durable, else why one is not.
async fn durable(ahead: Vec<Durable>) -> Option<Unavailable> {
    for write in ahead {
        if let Err(unavailable) = write.wait().await {
            return Some(unavailable);
        }
    }
    None
}

impl Plugin {
    /// Runs `requests`, pipelined commands of one connection that this
    /// plugin serves, in as few calls as it allows: each command gets the
    /// answer it would have had alone, with the time it took.
    pub async fn call_batch(
        &self,
        requests: Vec<Request>,
        session: &mut Session,
    ) -> Vec<(Answer, Duration)> {
        let mut answers = Vec::with_capacity(requests.len());
        let mut left: VecDeque<_> = requests.into_iter().map(wit_request).collect();
        while !left.is_empty() {
            if self.health.is_disabled() {
                let disabled = || CallError::Disabled(self.terms.limits.quarantine_after);
                answers.extend(
                    left.drain(..)
                        .map(|_| (Answer::Failure(disabled()), Duration::ZERO)),
                );
                break;
            }
            let call = self.serve_batch_sandboxed(left, session).await;
            let served_none = call.served.is_empty();
            for (index, served) in call.served.into_iter().enumerate() {
                let answer = match &call.undurable {
                    // The store's failure, not the plugin's.
                    Some((why, first)) if index >= *first => {
                        Answer::Failure(CallError::StateUnavailable(why.clone()))
                    }
                    _ => {
                        self.health.record_success();
                        Answer::from(served.reply)
                    }
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
            // A command that failed after the call's writes were lost may
            // say what it read of them (a trap's stderr): the store's
            // failure is what it gets.
            if let Some((why, _)) = &call.undurable {
                let lost = CallError::StateUnavailable(why.clone());
                answers.push((Answer::Failure(lost), failure.elapsed));
                continue;
            }
            if failure.error.is_plugin_failure() {
                self.health
                    .record_failure(self.name(), self.terms.limits.quarantine_after);
            }
            answers.push((Answer::Failure(failure.error), failure.elapsed));
        }
        answers
    }

    /// One `serve-batch` call over `requests`: what it served, how it
    /// failed if it did, and the requests it never took.
    async fn serve_batch_sandboxed(
        &self,
        mut requests: VecDeque<types::Request>,
        session: &mut Session,
    ) -> BatchCall {
        let started = Instant::now();
        let limit = self.terms.limits.call_timeout;
        let Taken {
            mut store,
            live,
            calls,
        } = match self.take_instance(session, limit).await {
            Ok(taken) => taken,
            Err(error) => return BatchCall::failed_to_start(error, requests, started),
        };
        // An instance serves no more calls than one by one it would: the
        // rest go to the next (fresh) instance.
        let room = MAX_CALLS_PER_INSTANCE.saturating_sub(calls).max(1) as usize;
        let later = requests.split_off(room.min(requests.len()).min(fitting(&requests)));
        let max_reply_bytes = self.terms.limits.max_reply_bytes;
        store.data_mut().call.batch = Some(Queue::new(requests, max_reply_bytes, started));
        let host_wait = self.begin_call(&mut store, started, session.chain());
        let call = Box::pin(async {
            let live = self.start_call(&mut store, live).await?;
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
            .call
            .batch
            .take()
            .map(Queue::into_parts)
            .unwrap_or_default();
        // Before any reply leaves: the writes they may rest on are durable.
        // A store that does not say within a call's time fails them, as it
        // would have failed the call that waited on it.
        let (ahead, first_ahead) = store.data_mut().take_ahead();
        let undurable = tokio::time::timeout(limit, durable(ahead))
            .await
            .unwrap_or_else(|_| {
                Some(Unavailable(
                    "the store did not make the writes durable in time".into(),
                ))
            })
            .map(|why| (why, first_ahead));
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
                // An instance whose writes were lost may hold what rests on
                // them: it serves no more.
                if undurable.is_none() {
                    self.keep(session, store, live, calls + served.len() as u32);
                }
                return BatchCall {
                    served,
                    failure: None,
                    left,
                    undurable,
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
            undurable,
        }
    }
}
