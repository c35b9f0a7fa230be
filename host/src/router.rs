//! Routing: which plugin serves which command, and turning a plugin's answer
//! into a reply.
//!
//! The table is built once from a set of loaded plugins and never mutated.
//! Changing the plugins means building a new table and swapping it into the
//! [`Routes`] every connection reads: a command already running keeps the
//! table (and plugin versions) it started with, every later one sees the new.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument;

use crate::plugin::{Answer, CallError, Plugin, Session};
use crate::protocol::reply::Reply;
use crate::protocol::request::{CommandName, HELP, RESERVED, Request};
use crate::telemetry::{self, CommandMetrics, Outcome};

/// Commands served in one batch, at most: bounds how long one call holds
/// its CPU place and how many replies wait for the slowest of them.
pub const MAX_BATCH: usize = 64;

/// The room a batch makes when its second command joins.
const FIRST_ROOM: usize = 16;

/// The current routing table, swapped atomically on reload.
pub type Routes = arc_swap::ArcSwap<Router>;

pub struct Router {
    routes: HashMap<CommandName, Route, foldhash::fast::RandomState>,
}

/// Who serves a command, and its counters.
struct Route {
    plugin: Arc<Plugin>,
    metrics: CommandMetrics,
}

impl Router {
    /// Builds the table from plugins in load (file-name) order. When two
    /// plugins claim a command, the first keeps it: deterministic across
    /// restarts, and logged as an error naming both so the operator can fix it.
    pub fn new(plugins: impl IntoIterator<Item = Arc<Plugin>>) -> Self {
        let mut routes: HashMap<_, Route, _> = HashMap::default();
        for plugin in plugins {
            for command in plugin.commands() {
                if RESERVED.contains(&command.name.as_str()) {
                    tracing::error!(
                        command = %command.name,
                        plugin = plugin.name(),
                        "the server answers this command itself; ignoring the plugin's claim"
                    );
                    continue;
                }
                match routes.get(&command.name) {
                    Some(owner) if !Arc::ptr_eq(&owner.plugin, &plugin) => tracing::error!(
                        command = %command.name,
                        kept = owner.plugin.name(),
                        ignored = plugin.name(),
                        "two plugins claim one command; keeping the first in file-name order"
                    ),
                    Some(_) => {}
                    None => {
                        let metrics = CommandMetrics::new(plugin.name(), command.name.as_str());
                        let plugin = plugin.clone();
                        routes.insert(command.name.clone(), Route { plugin, metrics });
                    }
                }
            }
        }
        Self { routes }
    }

    /// Runs `request` in its plugin (in `session`'s instance when it has
    /// one of that plugin) and turns the outcome into a reply. Counted in the
    /// metrics, and logged at debug level with its outcome and duration.
    /// `help` lists the commands `permits` lets this client run.
    pub async fn dispatch(
        &self,
        request: Request,
        session: &mut Session,
        permits: &(dyn Fn(&str) -> bool + Sync),
    ) -> Reply {
        if request.command.as_str() == HELP {
            return self.help(permits);
        }
        let Some((command, route)) = self.routes.get_key_value(&request.command) else {
            telemetry::unrouted(Outcome::Unknown);
            tracing::debug!(command = %request.command, outcome = "unknown", "command");
            return Reply::error(format_args!("unknown command '{}'", request.command));
        };
        Self::call_one(command, route, request, session).await
    }

    /// Runs a routed `request` alone: [`Router::dispatch`] once the route is
    /// found, and a batch of one, whose route was found when it was made.
    async fn call_one(
        command: &CommandName,
        route: &Route,
        request: Request,
        session: &mut Session,
    ) -> Reply {
        #[cfg(feature = "native-baseline")]
        if native_baseline::is_on() {
            return native_baseline::answer(&request);
        }
        let plugin = &route.plugin;
        let span = tracing::debug_span!(
            "command",
            plugin = plugin.name(),
            %command,
            outcome = tracing::field::Empty,
            elapsed_us = tracing::field::Empty,
        );
        // Timed only when someone looks: metrics served, or the span logged.
        let started = match span.is_disabled() {
            true => telemetry::start_timer(),
            false => Some(Instant::now()),
        };
        let answer = plugin.call(request, session).instrument(span.clone()).await;
        let (reply, outcome) = reply_for(plugin.name(), command, answer, || plugin.may_warn());
        let elapsed = started.map(|started| started.elapsed());
        route.metrics.record(outcome, elapsed);
        if let Some(elapsed) = elapsed {
            // On the span (for subscribers that record spans) and on an event
            // closing it (for plain logs).
            let elapsed_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
            span.record("outcome", outcome.as_str());
            span.record("elapsed_us", elapsed_us);
            span.in_scope(|| tracing::debug!(outcome = outcome.as_str(), elapsed_us, "command"));
        }
        reply
    }
}

impl Router {
    /// A batch starting with `first`, when a plugin serves it (a batch of
    /// one, full at once, when the plugin does not serve batches): its
    /// route is looked up here, once. Otherwise `first` back, for
    /// [`Router::dispatch`] to answer (`help`, an unknown command).
    pub fn batch_for(&self, first: Request) -> Result<Batch<'_>, Request> {
        match self.routes.get_key_value(&first.command) {
            Some((command, route)) => Ok(Batch {
                plugin: &route.plugin,
                routes: vec![(command, route)],
                requests: vec![first],
                router: self,
            }),
            None => Err(first),
        }
    }

    /// Runs a [`Batch`] in one plugin call where it holds several commands,
    /// and replies to each as [`Router::dispatch`] would, in order, each
    /// counted and logged alone.
    pub async fn dispatch_batch(&self, mut batch: Batch<'_>, session: &mut Session) -> Vec<Reply> {
        if let [(command, route)] = batch.routes[..]
            && let Some(request) = batch.requests.pop()
        {
            return vec![Self::call_one(command, route, request, session).await];
        }
        #[cfg(feature = "native-baseline")]
        if native_baseline::is_on() {
            return batch.requests.iter().map(native_baseline::answer).collect();
        }
        let plugin = batch.plugin;
        telemetry::batched(plugin.name(), batch.requests.len());
        let timed = telemetry::enabled() || tracing::enabled!(tracing::Level::DEBUG);
        let answers = plugin.call_batch(batch.requests, session).await;
        batch
            .routes
            .into_iter()
            .zip(answers)
            .map(|((command, route), (answer, elapsed))| {
                let (reply, outcome) =
                    reply_for(plugin.name(), command, answer, || plugin.may_warn());
                route.metrics.record(outcome, timed.then_some(elapsed));
                if timed {
                    let elapsed_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
                    let outcome = outcome.as_str();
                    tracing::debug!(plugin = plugin.name(), %command, outcome, elapsed_us, "command");
                }
                reply
            })
            .collect()
    }

    /// One line per command `permits` allows: `name (plugin): summary`,
    /// sorted by name.
    fn help(&self, permits: &(dyn Fn(&str) -> bool + Sync)) -> Reply {
        let mut lines: Vec<String> = self
            .routes
            .iter()
            .filter(|(name, _)| permits(name.as_str()))
            .map(|(name, route)| {
                let summary = route
                    .plugin
                    .commands()
                    .iter()
                    .find(|spec| spec.name == *name)
                    .map_or("", |spec| spec.summary.as_str());
                format!("{name} ({}): {summary}", route.plugin.name())
            })
            .collect();
        lines.sort();
        Reply::ok(lines.join("\n"))
    }
}

/// Pipelined commands for one plugin, to be served in one call
/// ([`Router::dispatch_batch`]); only one command when the plugin does not
/// serve batches. Each command's route is looked up once, when it joins.
pub struct Batch<'a> {
    router: &'a Router,
    plugin: &'a Arc<Plugin>,
    requests: Vec<Request>,
    /// Each request's name (the table's copy) and route.
    routes: Vec<(&'a CommandName, &'a Route)>,
}

impl Batch<'_> {
    pub fn is_full(&self) -> bool {
        self.requests.len() >= MAX_BATCH || !self.plugin.serves_batches()
    }

    /// Takes `request` in when its command is the batch's plugin's; gives it
    /// back otherwise. A client pipelining one command many times (the
    /// common batch) costs a string comparison per command, not a lookup.
    pub fn push(&mut self, request: Request) -> Result<(), Request> {
        let repeated = self
            .routes
            .last()
            .filter(|(command, _)| **command == request.command)
            .copied();
        match repeated.or_else(|| self.router.routes.get_key_value(&request.command)) {
            Some(routed) if Arc::ptr_eq(&routed.1.plugin, self.plugin) => {
                // A second command means a pipelining client: room for a
                // typical batch at once, as growing from one (1, 4, 8, 16)
                // cost more than the rest of routing a command. Not before:
                // a lone command, what most connections send, stays small.
                if self.requests.len() == 1 {
                    self.routes.reserve(FIRST_ROOM - 1);
                    self.requests.reserve(FIRST_ROOM - 1);
                }
                self.routes.push(routed);
                self.requests.push(request);
                Ok(())
            }
            _ => Err(request),
        }
    }
}

/// The reply to a plugin's answer, and how the call ended.
/// `warn`: whether a failure may be logged, and how many were not before.
fn reply_for(
    plugin: &str,
    command: &CommandName,
    answer: Answer,
    warn: impl FnOnce() -> Option<u64>,
) -> (Reply, Outcome) {
    match answer {
        Answer::Reply(text) if Reply::is_frameable(&text) => (Reply::ok(text), Outcome::Ok),
        Answer::Refusal(text) if Reply::is_frameable(&text) => (Reply::error(text), Outcome::Error),
        Answer::Reply(_) | Answer::Refusal(_) => {
            tracing::warn!(plugin, %command, "reply contains the <EOF> delimiter");
            let reply = Reply::error(format_args!(
                "plugin '{plugin}' returned a reply containing the delimiter"
            ));
            (reply, Outcome::Error)
        }
        Answer::Failure(err) => {
            if let Some(unwritten) = warn() {
                tracing::warn!(plugin, %command, unwritten, "plugin call failed: {err}");
                if let CallError::Trapped(trap) = &err {
                    tracing::debug!(plugin, %command, "trap in detail: {:#}", trap.error);
                }
            }
            (failure_reply(plugin, &err), failure_outcome(&err))
        }
    }
}

fn failure_outcome(err: &CallError) -> Outcome {
    match err {
        CallError::Trapped(_) => Outcome::Trap,
        CallError::TimedOut(_) => Outcome::Timeout,
        CallError::OutOfMemory { .. } => Outcome::MemoryLimit,
        CallError::ReplyTooLarge { .. } => Outcome::ReplyTooLarge,
        CallError::Disabled(_) => Outcome::Disabled,
        CallError::Busy | CallError::InstancesInUse(_) | CallError::NeverRan(_) => Outcome::Busy,
        CallError::ServerMemoryFull { .. } => Outcome::MemoryBudget,
        CallError::StateUnavailable(_) => Outcome::StateUnavailable,
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
        CallError::InstancesInUse(_) | CallError::NeverRan(_) => {
            Reply::error(format_args!("plugin '{plugin}' busy, try again"))
        }
        CallError::ServerMemoryFull { .. } => {
            Reply::error("server memory budget reached, try again")
        }
        CallError::StateUnavailable(_) => Reply::error("state unavailable"),
    }
}

/// Bench-only: the host with its plugin calls replaced by a plain function,
/// the baseline the load benchmark compares plugboard against. Everything
/// else (sockets, framing, parsing, routing, replies) is the real server's.
#[cfg(feature = "native-baseline")]
pub mod native_baseline {
    use std::sync::atomic::{AtomicBool, Ordering};

    use crate::protocol::reply::Reply;
    use crate::protocol::request::Request;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::test_components::{Handle, component, runtime};
    use crate::plugin::{Limits, Setup};

    async fn plugin(name: &str, commands: &[&str], handle: Handle) -> Arc<Plugin> {
        plugin_with(name, commands, handle, Limits::default()).await
    }

    async fn plugin_with(
        name: &str,
        commands: &[&str],
        handle: Handle,
        limits: Limits,
    ) -> Arc<Plugin> {
        let setup = Setup {
            limits,
            ..Setup::default()
        };
        let bytes = component(commands, handle);
        let plugin = Plugin::from_bytes(&runtime(), name, bytes, setup).await;
        Arc::new(plugin.expect("the test component loads"))
    }

    async fn send(router: &Router, message: &str) -> String {
        let request = Request::parse(message.as_bytes()).expect("a request");
        let reply = router
            .dispatch(request, &mut Session::default(), &|_| true)
            .await;
        reply.as_str().to_owned()
    }

    #[tokio::test]
    async fn each_command_goes_to_the_plugin_that_declared_it() {
        let router = Router::new([
            plugin("a", &["one"], Handle::Reply("from a")).await,
            plugin("b", &["two", "three"], Handle::EchoCommand).await,
        ]);
        assert_eq!(send(&router, "one").await, "from a");
        assert_eq!(send(&router, "three x y").await, "three");
    }

    #[tokio::test]
    async fn an_unknown_command_is_named_in_the_error() {
        let router = Router::new([plugin("a", &["one"], Handle::Reply("x")).await]);
        assert_eq!(
            send(&router, "nope 1").await,
            "error: unknown command 'nope'"
        );
    }

    #[tokio::test]
    async fn of_two_claims_the_first_plugin_keeps_the_command() {
        let router = Router::new([
            plugin("first", &["on"], Handle::Reply("first")).await,
            plugin("second", &["on", "only"], Handle::Reply("second")).await,
        ]);
        assert_eq!(send(&router, "on").await, "first");
        assert_eq!(send(&router, "only").await, "second");
    }

    #[tokio::test]
    async fn refusals_and_failures_become_error_replies_naming_the_plugin() {
        let limits = Limits {
            max_reply_bytes: 10,
            ..Limits::default()
        };
        let router = Router::new([
            plugin("picky", &["ask"], Handle::Refuse("not today")).await,
            plugin("crashy", &["crash"], Handle::Trap).await,
            plugin_with("chatty", &["talk"], Handle::ReplyOfLen(11), limits).await,
        ]);
        assert_eq!(send(&router, "ask").await, "error: not today");
        assert_eq!(
            send(&router, "crash").await,
            "error: plugin 'crashy' failed"
        );
        assert_eq!(
            send(&router, "talk").await,
            "error: plugin 'chatty' reply too large (11 bytes, limit 10)"
        );
    }

    #[tokio::test]
    async fn a_reply_holding_the_delimiter_is_not_framed() {
        let router = Router::new([plugin("sly", &["sly"], Handle::Reply("a<EOF>b")).await]);
        assert_eq!(
            send(&router, "sly").await,
            "error: plugin 'sly' returned a reply containing the delimiter"
        );
    }

    #[tokio::test]
    async fn help_lists_what_the_client_may_run_and_cannot_be_claimed() {
        let router = Router::new([
            plugin("a", &["one", "help"], Handle::Reply("x")).await,
            plugin("b", &["two", "auth"], Handle::Reply("y")).await,
        ]);
        assert_eq!(send(&router, "help").await, "one (a): \ntwo (b): ");
        let request = Request::parse(b"help").unwrap();
        let only_two = |command: &str| command == "two";
        let reply = router
            .dispatch(request, &mut Session::default(), &only_two)
            .await;
        assert_eq!(reply.as_str(), "two (b): ");
        assert_eq!(send(&router, "auth").await, "error: unknown command 'auth'");
    }
}
