//! Routing: which plugin serves which command, and turning a plugin's answer
//! into a reply.
//!
//! The table is built once from a set of loaded plugins and never mutated.
//! Changing the plugins means building a new table and swapping it into the
//! [`Routes`] every connection reads: a command already running keeps the
//! table (and plugin versions) it started with, every later one sees the new.

use std::collections::HashMap;
use std::sync::Arc;

use crate::plugin::{CallError, Plugin, Session};
use crate::reply::Reply;
use crate::request::{CommandName, Request};

/// The current routing table, swapped atomically on reload.
pub type Routes = arc_swap::ArcSwap<Router>;

pub struct Router {
    routes: HashMap<CommandName, Arc<Plugin>>,
}

impl Router {
    /// Builds the table from plugins in load (file-name) order. When two
    /// plugins claim a command, the first keeps it: deterministic across
    /// restarts, and logged as an error naming both so the operator can fix it.
    pub fn new(plugins: impl IntoIterator<Item = Arc<Plugin>>) -> Self {
        let mut routes: HashMap<CommandName, Arc<Plugin>> = HashMap::new();
        for plugin in plugins {
            for command in plugin.commands() {
                match routes.get(&command.name) {
                    Some(owner) if !Arc::ptr_eq(owner, &plugin) => tracing::error!(
                        command = %command.name,
                        kept = owner.name(),
                        ignored = plugin.name(),
                        "two plugins claim one command; keeping the first in file-name order"
                    ),
                    Some(_) => {}
                    None => {
                        routes.insert(command.name.clone(), plugin.clone());
                    }
                }
            }
        }
        Self { routes }
    }

    /// The plugin serving `command`, if any.
    pub fn route(&self, command: &CommandName) -> Option<&Arc<Plugin>> {
        self.routes.get(command)
    }

    /// Runs `request` in its plugin (in `session`'s instance when it has
    /// one of that plugin) and turns the outcome into a reply.
    pub async fn dispatch(&self, request: Request, session: &mut Session) -> Reply {
        let Some(plugin) = self.route(&request.command) else {
            return Reply::error(format_args!("unknown command '{}'", request.command));
        };
        #[cfg(feature = "native-baseline")]
        if native_baseline::is_on() {
            return native_baseline::answer(&request);
        }
        let command = request.command.clone();
        match plugin.call(request, session).await {
            Ok(Ok(text)) if Reply::is_frameable(&text) => Reply::ok(text),
            Ok(Err(message)) if Reply::is_frameable(&message) => Reply::error(message),
            Ok(_) => {
                tracing::warn!(plugin = plugin.name(), %command, "reply contains the <EOF> delimiter");
                Reply::error(format_args!(
                    "plugin '{}' returned a reply containing the delimiter",
                    plugin.name()
                ))
            }
            Err(err) => {
                tracing::warn!(plugin = plugin.name(), %command, "plugin call failed: {err}");
                failure_reply(plugin.name(), &err)
            }
        }
    }
}

/// What the client is told when a call fails: which plugin, and the kind of
/// failure, without internals (those are in the log).
fn failure_reply(plugin: &str, err: &CallError) -> Reply {
    match err {
        CallError::Trapped(_) => Reply::error(format_args!("plugin '{plugin}' failed")),
        CallError::TimedOut(_) => Reply::error(format_args!("plugin '{plugin}' timed out")),
        CallError::OutOfMemory { .. } => {
            Reply::error(format_args!("plugin '{plugin}' exceeded its memory limit"))
        }
        CallError::ReplyTooLarge { len, limit } => Reply::error(format_args!(
            "plugin '{plugin}' reply too large ({len} bytes, limit {limit})"
        )),
        CallError::Disabled(_) => Reply::error(format_args!("plugin '{plugin}' disabled")),
        CallError::Busy => Reply::error("server busy, try again"),
    }
}

/// Bench-only: the host with its plugin calls replaced by a plain function,
/// the baseline the load benchmark compares plugboard against. Everything
/// else (sockets, framing, parsing, routing, replies) is the real server's.
#[cfg(feature = "native-baseline")]
pub mod native_baseline {
    use std::sync::atomic::{AtomicBool, Ordering};

    use crate::reply::Reply;
    use crate::request::Request;

    static ON: AtomicBool = AtomicBool::new(false);

    /// From now on, routed commands are answered natively.
    pub fn enable() {
        ON.store(true, Ordering::Relaxed);
    }

    pub(super) fn is_on() -> bool {
        ON.load(Ordering::Relaxed)
    }

    /// What the onoff plugin answers, without the plugin.
    pub(super) fn answer(request: &Request) -> Reply {
        match request.command.as_str() {
            "on" | "off" => Reply::ok("success".into()),
            "status" => Reply::ok("on".into()),
            other => Reply::ok(other.to_owned()),
        }
    }
}
