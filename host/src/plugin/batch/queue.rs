//! The host side of WIT's `batch` interface: one `serve-batch` call's
//! requests, handed out all at once by `take-requests` (one buffer, one
//! lowering) or one at a time by `next-request`, and the replies `reply`
//! takes back, each timed from its request.

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
    /// Every request was handed out by `take-requests`: each reply makes
    /// the next pending one the one being served.
    taken_whole: bool,
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
            taken_whole: false,
            last_reply: started,
            max_reply_bytes,
        }
    }

    /// How many commands were replied to so far.
    pub fn replied(&self) -> usize {
        self.served.len()
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
        if batch.taken_whole {
            wasmtime::bail!("`next-request` after `take-requests`");
        }
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
        let more_follow = !batch.pending.is_empty();
        if !first {
            self.begin_command(started);
        }
        self.serving(&request, more_follow);
        Ok(Some(request))
    }

    fn take_requests(&mut self) -> wasmtime::Result<Vec<u8>> {
        let batch = self.batch()?;
        if batch.taken_whole || batch.serving.is_some() || !batch.served.is_empty() {
            wasmtime::bail!("`take-requests` after requests were handed out");
        }
        batch.taken_whole = true;
        let buffer = encode(&batch.pending);
        // The first command's deadline started with the call.
        self.serve_next_taken(None);
        Ok(buffer)
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
        if batch.taken_whole {
            self.serve_next_taken(Some(now));
        }
        Ok(())
    }
}

impl Sandbox {
    /// After `take-requests`: the next pending request becomes the one
    /// served, its time beginning at `started` (the reply before it), or
    /// with the call for the first.
    fn serve_next_taken(&mut self, started: Option<Instant>) {
        let Some(batch) = self.call.batch.as_mut() else {
            return;
        };
        let Some(request) = batch.pending.pop_front() else {
            return;
        };
        batch.serving = Some(batch.last_reply);
        let more_follow = !batch.pending.is_empty();
        if let Some(started) = started {
            self.begin_command(started);
        }
        self.serving(&request, more_follow);
    }
}

/// The bytes `request` takes in a `take-requests` buffer.
pub fn encoded_len(request: &types::Request) -> usize {
    let texts = request.command.len()
        + request.raw_args.len()
        + request.args.iter().map(String::len).sum::<usize>();
    texts + 4 * (3 + request.args.len())
}

/// The requests as `take-requests` hands them over (the layout is in the
/// WIT): lengths and counts as little-endian `u32`.
fn encode(requests: &VecDeque<types::Request>) -> Vec<u8> {
    let size = 4 + requests.iter().map(encoded_len).sum::<usize>();
    let mut buffer = Vec::with_capacity(size);
    put_len(&mut buffer, requests.len());
    for request in requests {
        for text in [&request.command, &request.raw_args] {
            put_len(&mut buffer, text.len());
            buffer.extend_from_slice(text.as_bytes());
        }
        put_len(&mut buffer, request.args.len());
        for arg in &request.args {
            put_len(&mut buffer, arg.len());
            buffer.extend_from_slice(arg.as_bytes());
        }
    }
    buffer
}

fn put_len(buffer: &mut Vec<u8>, len: usize) {
    // A request is one frame, far below 4 GiB.
    buffer.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
}
