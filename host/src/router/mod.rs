//! Routing: which plugin serves which command, and the replies to a
//! connection's commands.
//!
//! [`Router::serve`] is a connection's one way in. It takes the command the
//! connection has just read and returns one reply per command it served, in
//! order: `help` and commands no plugin serves are answered here; a routed
//! command runs in its plugin, together with the commands the client has
//! already sent behind it for the same plugin when that plugin serves
//! batches (one call instead of one each: see `plugin/batch`).
//!
//! The table is built once from a set of loaded plugins and never mutated.
//! Changing the plugins means building a new table and swapping it into the
//! [`Routes`] every connection reads: a command already running keeps the
//! table (and plugin versions) it started with, every later one sees the new.
//! While a new version of a plugin is on trial (see `canary.rs`), its routes
//! hold both versions, and each connection's arrival picks one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;

pub use canary::{Arrival, Canary, Trial};
pub use nested::{DEFAULT_MAX_CALL_DEPTH, Dispatcher};

use crate::plugin::{Answer, CallError, Plugin, Session};
use crate::protocol::reply::Reply;
use crate::protocol::request::{CommandName, HELP, RESERVED, Request};
use crate::telemetry::{self, CommandMetrics, Outcome};
use canary::Pick;

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
    /// A new version of `plugin` on trial, if one is.
    canary: Option<Canary>,
    metrics: CommandMetrics,
}

/// A plugin the table routes to, and its version on trial, if any.
pub struct Serving {
    pub plugin: Arc<Plugin>,
    pub canary: Option<Canary>,
}

impl From<Arc<Plugin>> for Serving {
    fn from(plugin: Arc<Plugin>) -> Self {
        Self {
            plugin,
            canary: None,
        }
    }
}

/// The commands a client has already sent behind the one being served,
/// as its connection holds them: what a batch may take at once.
pub trait Pipeline {
    /// The next request already buffered, if there is one the client may
    /// run; anything else stays where it is, for the connection's next turn.
    fn next_buffered(&mut self) -> Option<Request>;
    /// A request [`Pipeline::next_buffered`] gave that no batch took: the
    /// connection serves it next.
    fn put_back(&mut self, request: Request);
}

/// No commands buffered: a lone command (and the tests' way to send one).
impl Pipeline for () {
    fn next_buffered(&mut self) -> Option<Request> {
        None
    }

    fn put_back(&mut self, _: Request) {}
}

/// The replies to what [`Router::serve`] served, in order.
pub enum Replies {
    One(Option<Reply>),
    Many(std::vec::IntoIter<Reply>),
}

impl Iterator for Replies {
    type Item = Reply;

    fn next(&mut self) -> Option<Reply> {
        match self {
            Self::One(reply) => reply.take(),
            Self::Many(replies) => replies.next(),
        }
    }
}

impl Router {
    /// The plugins serving at least one command, by name (the version
    /// serving most connections, while another is on trial).
    pub fn plugins(&self) -> Vec<Arc<Plugin>> {
        let mut plugins: Vec<Arc<Plugin>> = Vec::new();
        for route in self.routes.values() {
            if !plugins.iter().any(|p| Arc::ptr_eq(p, &route.plugin)) {
                plugins.push(route.plugin.clone());
            }
        }
        plugins.sort_by(|a, b| a.name().cmp(b.name()));
        plugins
    }

    /// Whether a plugin serves `command`.
    pub fn serves(&self, command: &CommandName) -> bool {
        self.routes.contains_key(command)
    }

    /// The version of `plugin` on trial, if one is.
    pub fn canary(&self, plugin: &Arc<Plugin>) -> Option<&Canary> {
        self.routes
            .values()
            .find(|route| Arc::ptr_eq(&route.plugin, plugin))
            .and_then(|route| route.canary.as_ref())
    }

    /// Builds the table from plugins in load (file-name) order. When two
    /// plugins claim a command, the first keeps it: deterministic across
    /// restarts, and logged as an error naming both so the operator can fix it.
    pub fn new<P: Into<Serving>>(plugins: impl IntoIterator<Item = P>) -> Self {
        let mut routes: HashMap<_, Route, _> = HashMap::default();
        for serving in plugins {
            let Serving { plugin, canary } = serving.into();
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
                        let route = Route {
                            plugin: plugin.clone(),
                            canary: canary.clone(),
                            metrics,
                        };
                        routes.insert(command.name.clone(), route);
                    }
                }
            }
        }
        Self { routes }
    }

    /// Serves `first` and, when its plugin serves batches, the requests
    /// `pipeline` holds behind it for the same plugin (up to [`MAX_BATCH`]),
    /// in `session`'s instance; each is counted and logged alone. `help`
    /// lists the commands `client` may run; `client`'s arrival picks the
    /// version while one is on trial.
    pub async fn serve(
        &self,
        first: Request,
        pipeline: &mut impl Pipeline,
        session: &mut Session,
        client: &Client<'_>,
    ) -> Replies {
        let Some((command, route)) = self.routes.get_key_value(&first.command) else {
            return Replies::One(Some(self.unrouted(&first, client)));
        };
        let pick = route.pick(client.arrival);
        if !pick.plugin.serves_batches() {
            return Replies::One(Some(serve_one(command, route, &pick, first, session).await));
        }
        let mut batch = Batch::new(command, route, pick, first);
        while batch.requests.len() < MAX_BATCH {
            let Some(next) = pipeline.next_buffered() else {
                break;
            };
            if let Err(next) = self.join(&mut batch, next, client.arrival) {
                pipeline.put_back(next);
                break;
            }
        }
        batch.serve(session).await
    }

    /// `help`, or a command no plugin serves.
    fn unrouted(&self, request: &Request, client: &Client<'_>) -> Reply {
        if request.command.as_str() == HELP {
            return self.help(client);
        }
        telemetry::unrouted(Outcome::Unknown);
        tracing::debug!(command = %request.command, outcome = "unknown", "command");
        Reply::error(format_args!("unknown command '{}'", request.command))
    }

    /// Adds `request` to `batch` when its plugin serves it; gives it back
    /// otherwise. A client pipelining one command many times (the common
    /// batch) costs a string comparison per command, not a lookup.
    fn join<'r>(
        &'r self,
        batch: &mut Batch<'r>,
        request: Request,
        arrival: Arrival,
    ) -> Result<(), Request> {
        let repeated = batch
            .routes
            .last()
            .filter(|(command, _)| **command == request.command)
            .copied();
        match repeated.or_else(|| self.routes.get_key_value(&request.command)) {
            Some(routed) if Arc::ptr_eq(routed.1.pick(arrival).plugin, batch.pick.plugin) => {
                batch.push(routed, request);
                Ok(())
            }
            _ => Err(request),
        }
    }

    /// One line per command `client` may run, sorted by name:
    /// `name (plugin version): summary`, with the version serving this
    /// client.
    fn help(&self, client: &Client<'_>) -> Reply {
        let mut lines: Vec<String> = self
            .routes
            .iter()
            .filter(|(name, _)| (client.permits)(name.as_str()))
            .map(|(name, route)| {
                let plugin = route.pick(client.arrival).plugin;
                let summary = plugin
                    .commands()
                    .iter()
                    .find(|spec| spec.name == *name)
                    .map_or("", |spec| spec.summary.as_str());
                format!("{name} ({} {}): {summary}", plugin.name(), plugin.version())
            })
            .collect();
        lines.sort();
        Reply::ok(lines.join("\n"))
    }
}

/// Runs one routed `request` (in a plugin's `handle`) and replies to it.
/// Timed only when someone looks: metrics served, or the span logged.
async fn serve_one(
    command: &CommandName,
    route: &Route,
    pick: &Pick<'_>,
    request: Request,
    session: &mut Session,
) -> Reply {
    #[cfg(feature = "native-baseline")]
    if native_baseline::is_on() {
        return native_baseline::answer(&request);
    }
    let plugin = pick.plugin;
    let span = tracing::debug_span!(
        "command",
        plugin = plugin.name(),
        %command,
        outcome = tracing::field::Empty,
        elapsed_us = tracing::field::Empty,
    );
    let started = match span.is_disabled() {
        true => telemetry::start_timer(),
        false => Some(Instant::now()),
    };
    let answer = plugin.call(request, session).instrument(span.clone()).await;
    let elapsed = started.map(|started| started.elapsed());
    let (reply, outcome) = route.settle(command, pick, answer, elapsed);
    if let Some(elapsed) = elapsed {
        // On the span (for subscribers that record spans) and on an event
        // closing it (for plain logs).
        span.record("outcome", outcome.as_str());
        span.record("elapsed_us", micros(elapsed));
        span.in_scope(|| {
            tracing::debug!(
                outcome = outcome.as_str(),
                elapsed_us = micros(elapsed),
                "command"
            );
        });
    }
    reply
}

impl Route {
    /// The version serving a client that arrived `at`.
    fn pick(&self, at: Arrival) -> Pick<'_> {
        Pick::of(&self.plugin, self.canary.as_ref(), at)
    }

    /// The reply to `command`'s `answer` from the version `pick`ed,
    /// counted with its time (and in the trial, if one is going).
    fn settle(
        &self,
        command: &CommandName,
        pick: &Pick<'_>,
        answer: Answer,
        elapsed: Option<Duration>,
    ) -> (Reply, Outcome) {
        let plugin = pick.plugin;
        let (reply, outcome) = reply_for(plugin.name(), command, answer, || plugin.may_warn());
        self.metrics.record(outcome, elapsed);
        pick.record(outcome);
        (reply, outcome)
    }
}

/// Who sent a command, as routing needs to know: what it may run, and when
/// it connected.
pub struct Client<'a> {
    pub permits: &'a (dyn Fn(&str) -> bool + Sync),
    pub arrival: Arrival,
}

impl Client<'static> {
    /// A client that may run every command, and no trial serves: one
    /// command run from the command line.
    pub fn anyone() -> Self {
        Self {
            permits: &|_| true,
            arrival: Arrival::default(),
        }
    }
}

fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
}

/// Pipelined commands for one plugin that serves batches, to be served in
/// one call. Each command's route is looked up once, when it joins.
struct Batch<'r> {
    /// The version serving them.
    pick: Pick<'r>,
    requests: Vec<Request>,
    /// Each request's name (the table's copy) and route.
    routes: Vec<(&'r CommandName, &'r Route)>,
}

impl<'r> Batch<'r> {
    fn new(command: &'r CommandName, route: &'r Route, pick: Pick<'r>, first: Request) -> Self {
        Self {
            pick,
            requests: vec![first],
            routes: vec![(command, route)],
        }
    }

    fn push(&mut self, routed: (&'r CommandName, &'r Route), request: Request) {
        // A second command means a pipelining client: room for a typical
        // batch at once, as growing from one (1, 4, 8, 16) cost more than
        // the rest of routing a command. Not before: a lone command, what
        // most connections send, stays small.
        if self.requests.len() == 1 {
            self.routes.reserve(FIRST_ROOM - 1);
            self.requests.reserve(FIRST_ROOM - 1);
        }
        self.routes.push(routed);
        self.requests.push(request);
    }

    /// Serves the batch: in one `serve-batch` call where it holds several
    /// commands, through `handle` (cheaper) when only one.
    async fn serve(mut self, session: &mut Session) -> Replies {
        if let [(command, route)] = self.routes[..]
            && let Some(request) = self.requests.pop()
        {
            return Replies::One(Some(
                serve_one(command, route, &self.pick, request, session).await,
            ));
        }
        #[cfg(feature = "native-baseline")]
        if native_baseline::is_on() {
            let replies: Vec<Reply> = self.requests.iter().map(native_baseline::answer).collect();
            return Replies::Many(replies.into_iter());
        }
        let plugin = self.pick.plugin;
        telemetry::batched(plugin.name(), self.requests.len());
        let timed = telemetry::enabled() || tracing::enabled!(tracing::Level::DEBUG);
        let answers = plugin.call_batch(self.requests, session).await;
        let replies: Vec<Reply> = self
            .routes
            .into_iter()
            .zip(answers)
            .map(|((command, route), (answer, elapsed))| {
                let (reply, outcome) =
                    route.settle(command, &self.pick, answer, timed.then_some(elapsed));
                if timed {
                    let outcome = outcome.as_str();
                    let elapsed_us = micros(elapsed);
                    tracing::debug!(plugin = plugin.name(), %command, outcome, elapsed_us, "command");
                }
                reply
            })
            .collect();
        Replies::Many(replies.into_iter())
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

mod canary;
mod nested;
#[cfg(test)]
mod tests;
