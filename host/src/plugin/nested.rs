//! The host side of `commands.call`: a plugin running another command, as
//! a client would send it (a scene driving several devices).
//!
//! The plugin side knows only its grant (`allow_commands`); what runs the
//! command is the router's, reached through [`Dispatch`] so that calls
//! still flow router -> plugin. The nested command runs in a task of its
//! own, in a fresh instance of its plugin, under that plugin's limits. The
//! caller gives up its CPU place meanwhile (so a plugin calling itself
//! never waits for a place it holds) but not its deadline: the nested
//! call's time is the caller's, and when the caller's deadline ends the
//! nested call is abandoned with it.
//!
//! Each call carries its [`Chain`]: the command lines that led to it, from
//! the client's (or the schedule's) own. The dispatcher refuses a line
//! already in the chain (a cycle: a scene calling itself is refused at its
//! first call, before anything runs twice) and calls nested deeper than
//! the server allows (`max_call_depth`), with an error reply the plugin
//! can handle, never a hang.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::bindings::plugboard::plugin::commands;
use super::grants::not_granted;
use super::sandbox::Sandbox;

/// The command lines of the nested calls that led to a call, outermost
/// first. Empty for a client's command, and then nothing at all: every
/// call carries its chain, and a client's costs no allocation and no
/// reference count.
#[derive(Debug, Clone, Default)]
pub struct Chain(Option<Arc<[String]>>);

impl Chain {
    fn links(&self) -> &[String] {
        self.0.as_deref().unwrap_or_default()
    }

    /// How many command lines the chain holds.
    pub fn len(&self) -> usize {
        self.links().len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Whether `line` is already in the chain (spacing aside).
    pub fn contains(&self, line: &str) -> bool {
        self.links().contains(&normal(line))
    }

    /// This chain followed by `line`.
    pub fn then(&self, line: &str) -> Self {
        let mut links = self.links().to_vec();
        links.push(normal(line));
        Self(Some(links.into()))
    }

    /// `a -> b -> c`, for messages.
    pub fn render(&self) -> String {
        self.links().join(" -> ")
    }
}

/// `line` with its words separated by one space, as the router reads it.
fn normal(line: &str) -> String {
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The reply of a nested command: `Ok(text)`, or `Err(message)` for an
/// error reply (without its `error: ` prefix).
pub type NestedReply = Result<String, String>;

/// Runs a command line for a plugin, as the router would a client's.
pub trait Dispatch: Send + Sync {
    /// Runs `line`, called by the last command of `chain`.
    fn dispatch(
        &self,
        line: String,
        chain: Chain,
    ) -> Pin<Box<dyn Future<Output = NestedReply> + Send + 'static>>;
}

/// Aborts the nested call's task when the caller's call is dropped (its
/// deadline ended): nothing runs on for a caller that is gone.
struct AbortOnDrop(tokio::task::JoinHandle<NestedReply>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl commands::Host for Sandbox {
    async fn call(&mut self, line: String) -> NestedReply {
        let command = line
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        if !self.grants().permits_command(&command) {
            self.denials().command.increment(1);
            let plugin = self.plugin_name();
            tracing::debug!(plugin, command, "command call not granted");
            return Err(not_granted(plugin, &command));
        }
        let Some(dispatcher) = self.dispatcher() else {
            return Err("this server runs no commands for plugins".into());
        };
        // The calls that led here, this one's own command last.
        let chain = match &self.call.line {
            Some(own) => self.call.chain.then(own),
            None => self.call.chain.clone(),
        };
        let mut task = AbortOnDrop(tokio::spawn(dispatcher.dispatch(line, chain)));
        self.call.running.pause();
        let reply = (&mut task.0).await;
        self.call.running.resume().await;
        reply.unwrap_or_else(|err| Err(format!("the command's call failed: {err}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_grows_by_one_line_per_call() {
        let chain = Chain::default()
            .then("scene night")
            .then("relay-set  1 off");
        assert_eq!(chain.len(), 2);
        assert!(chain.contains("scene   night"));
        assert!(!chain.contains("scene"));
        assert_eq!(chain.render(), "scene night -> relay-set 1 off");
    }
}
