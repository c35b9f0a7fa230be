//! Serving several of one connection's commands in one call: the host side
//! of WIT's `batch` interface.
//!
//! A call into a component costs more than the work of a small command
//! (wasmtime's async entry, a fiber switch, lifting and lowering), so when a
//! client has pipelined several commands for one plugin, the connection
//! hands them over together and the plugin's `serve-batch` takes them one at
//! a time through `next-request`, giving each reply to `reply`. Each command
//! keeps what it had one call each: its own deadline (restarted at the reply
//! before it), its own reply size limit, its own outcome in the metrics and
//! the plugin's health record. A trap or a timeout ends the call: commands
//! already replied to keep their replies, the one being served gets the
//! failure, and the rest are handed to a fresh instance (see
//! `Plugin::call_batch`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::bindings::plugboard::plugin::{batch, types};
use super::sandbox::Sandbox;

/// One `serve-batch` call's requests and what became of them.
pub struct Batch {
    /// Not handed out yet.
    pending: VecDeque<types::Request>,
    /// Replied to, in order.
    served: Vec<Served>,
    /// The request handed out and not yet replied to: when its time began.
    serving: Option<Instant>,
    /// The last reply, or the call's start: the next command's time begins
    /// here. One clock read per command (at its reply) times them all; the
    /// plugin's moments between a reply and its next `next-request` are
    /// counted to the next command, as work done for it.
    last_reply: Instant,
    max_reply_bytes: usize,
}

/// A command of the batch that the plugin replied to.
pub struct Served {
    pub reply: Result<String, String>,
    /// From being handed out to its reply.
    pub elapsed: Duration,
}

/// A reply over `max_reply_bytes`: ends the call, as it ends a single one
/// (the instance is not kept), and the command gets the error.
#[derive(Debug, thiserror::Error)]
#[error("reply of {0} bytes is over the limit")]
pub struct OversizedReply(pub usize);

impl Batch {
    /// `started`: when the call began (its first command's time begins
    /// there, waiting for an instance included, as for one call).
    pub fn new(
        requests: VecDeque<types::Request>,
        max_reply_bytes: usize,
        started: Instant,
    ) -> Self {
        Self {
            served: Vec::with_capacity(requests.len()),
            pending: requests,
            serving: None,
            last_reply: started,
            max_reply_bytes,
        }
    }

    /// The replies so far; whether a command was being served (it gets the
    /// call's failure, if any); the commands never handed out.
    pub fn into_parts(self) -> (Vec<Served>, bool, VecDeque<types::Request>) {
        (self.served, self.serving.is_some(), self.pending)
    }
}

impl Sandbox {
    fn batch(&mut self) -> wasmtime::Result<&mut Batch> {
        self.batch
            .as_mut()
            .ok_or_else(|| wasmtime::Error::msg("`batch` used outside `serve-batch`"))
    }
}

/// A plugin that breaks the protocol (asks twice without replying, replies
/// to nothing) traps: its instance cannot be trusted with the next command.
impl batch::Host for Sandbox {
    fn next_request(&mut self) -> wasmtime::Result<Option<types::Request>> {
        let batch = self.batch()?;
        if batch.serving.is_some() {
            wasmtime::bail!("`next-request` before the reply to the last request");
        }
        let first = batch.served.is_empty();
        let Some(request) = batch.pending.pop_front() else {
            return Ok(None);
        };
        let started = batch.last_reply;
        batch.serving = Some(started);
        // The first command's deadline started with the call; each next
        // one's starts at the reply before it.
        if !first {
            self.host_wait.reset_from(started);
            self.stderr_tail.clear();
        }
        Ok(Some(request))
    }

    fn reply(&mut self, reply: Result<String, String>) -> wasmtime::Result<()> {
        let batch = self.batch()?;
        let Some(started) = batch.serving else {
            wasmtime::bail!("`reply` without a request");
        };
        let len = match &reply {
            Ok(text) | Err(text) => text.len(),
        };
        if len > batch.max_reply_bytes {
            return Err(OversizedReply(len).into());
        }
        let now = Instant::now();
        batch.serving = None;
        batch.last_reply = now;
        batch.served.push(Served {
            reply,
            elapsed: now.saturating_duration_since(started),
        });
        Ok(())
    }
}
