//! The host side of WIT's `batch` interface: one `serve-batch` call's
//! requests, handed out one at a time by `next-request`, and the replies
//! `reply` takes back, each timed from its request.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::plugin::bindings::plugboard::plugin::{batch, types};
use crate::plugin::sandbox::Sandbox;

/// One `serve-batch` call's requests and what became of them.
pub struct Queue {
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

impl Queue {
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
    fn batch(&mut self) -> wasmtime::Result<&mut Queue> {
        self.call
            .batch
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
            self.begin_command(started);
        }
        self.serving(&request);
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
