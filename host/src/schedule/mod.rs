//! Schedules: commands the server runs on time (`[[schedules]]`).
//!
//! Each schedule is a task of its own that sleeps until its next time and
//! runs its command through the router, as a client's command is run:
//! the plugin's limits, quarantine and metrics apply, and with tokens the
//! run has the permissions of the schedule's token. One schedule's runs
//! never overlap: the task runs one command at a time, and the times that
//! pass while a run is still going are skipped (and counted).
//!
//! Beside the config's schedules run the plugins' own (the WIT `schedule`
//! interface, see `plugin/scheduled.rs`), named `plugin/name`: each run is
//! checked against the plugin's `allow_commands`, as its `commands.call`
//! would be, and runs only while the plugin is loaded.
//!
//! A SIGHUP's config and the plugins' changes reach the [`Scheduler`]
//! through watch channels: schedules added start, removed ones stop,
//! changed ones start over; the others run on undisturbed. A run in
//! progress always finishes.

mod record;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use jiff::{Timestamp, Zoned};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cron::Plan;
use record::Record;

use crate::config::ScheduleSettings;
use crate::plugin::{Scheduled, Session};
use crate::protocol::reply::Reply;
use crate::protocol::request::Request;
use crate::router::{Client, Routes};
use crate::telemetry;

/// Runs the schedules of the config, as it changes.
pub struct Scheduler {
    shared: Arc<Shared>,
}

/// With tokens, whether the token named first may run the command named
/// second (`None`: there is no such token).
pub type TokenPermits = Box<dyn Fn(&str, &str) -> Option<bool> + Send + Sync>;

/// What every schedule's task uses.
struct Shared {
    routes: Arc<Routes>,
    /// `None` without tokens: every command may run.
    tokens: Option<TokenPermits>,
    board: Arc<Board>,
    record: Mutex<Record>,
}

/// What the `schedules` command lists: every schedule, when it runs next
/// and how its last run went.
#[derive(Default)]
pub struct Board(Mutex<BTreeMap<String, Entry>>);

struct Entry {
    settings: ScheduleSettings,
    next: Option<Zoned>,
    last: Option<(Zoned, Outcome)>,
}

/// A schedule as the status page shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScheduleView {
    pub name: String,
    pub cron: String,
    pub timezone: Option<String>,
    /// When it runs next, in its zone (`None`: no next time).
    pub next: Option<String>,
    /// When it last ran, in the server's zone, and how.
    pub last: Option<String>,
    pub last_outcome: Option<&'static str>,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The command's reply was not an error.
    Ok,
    /// The command replied with an error (the plugin's, or a failure).
    Error,
    /// The schedule's token may not run the command.
    Denied,
    /// No plugin serves the command (one may arrive by hot reload).
    Unknown,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Denied => "denied",
            Self::Unknown => "unknown",
        }
    }
}

/// A schedule to run: its settings, and whose permissions its runs have.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Job {
    settings: ScheduleSettings,
    /// `Some(plugin)` for a plugin's own schedule: its grant applies.
    plugin: Option<String>,
    /// See [`Job::metric_label`].
    label: String,
}

impl Job {
    /// The `schedule` label of its metrics: its name, or `plugin/*` for
    /// a plugin's own, whose names the plugin chooses (and may change
    /// without end: labels are series the exporter keeps).
    fn metric_label(&self) -> &str {
        &self.label
    }
}

/// Every plugin's own schedules, by plugin name.
pub type PluginJobs = watch::Receiver<BTreeMap<String, Vec<Scheduled>>>;

/// A running schedule: what it runs, what stops its task, and the task.
struct Running {
    job: Job,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Scheduler {
    /// Runs commands through `routes`, with the permissions of the
    /// schedules' `tokens`, keeping when each ran in `state_dir`.
    pub fn new(
        routes: Arc<Routes>,
        tokens: Option<TokenPermits>,
        state_dir: &std::path::Path,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                routes,
                tokens,
                board: Arc::default(),
                record: Mutex::new(Record::open(state_dir)),
            }),
        }
    }

    /// What the `schedules` command reads.
    pub fn board(&self) -> Arc<Board> {
        self.shared.board.clone()
    }

    /// Runs the schedules `config` holds and the plugins' own, and follows
    /// their changes, until `shutdown`. The first set may catch up on runs
    /// missed while the server was down; later sets (a SIGHUP) never do.
    pub async fn run(
        self,
        mut config: watch::Receiver<Vec<ScheduleSettings>>,
        mut plugins: PluginJobs,
        shutdown: CancellationToken,
    ) {
        let mut running: BTreeMap<String, Running> = BTreeMap::new();
        let mut at_start = true;
        loop {
            let wanted = jobs(&config.borrow_and_update(), &plugins.borrow_and_update());
            self.follow(&wanted, &mut running, at_start, &shutdown);
            at_start = false;
            tokio::select! {
                changed = config.changed() => if changed.is_err() { break },
                changed = plugins.changed() => if changed.is_err() { break },
                () = shutdown.cancelled() => break,
            }
        }
        // A run in progress finishes (within the server's shutdown
        // timeout): its command is a client's, and is not cut in half.
        for schedule in running.values() {
            schedule.stop.cancel();
        }
        for schedule in running.into_values() {
            let _ = schedule.task.await;
        }
    }

    /// Starts, stops and restarts tasks so that `wanted` runs.
    fn follow(
        &self,
        wanted: &[Job],
        running: &mut BTreeMap<String, Running>,
        at_start: bool,
        shutdown: &CancellationToken,
    ) {
        // A changed schedule's new task waits for the old one's run in
        // progress: runs of one schedule never overlap.
        let mut stopping = BTreeMap::new();
        for (name, schedule) in std::mem::take(running) {
            if wanted.contains(&schedule.job) {
                running.insert(name, schedule);
                continue;
            }
            schedule.stop.cancel();
            self.shared.board.remove(&name);
            tracing::info!(schedule = name, "schedule stopped");
            stopping.insert(name, schedule.task);
        }
        self.shared
            .lock_record()
            .keep_only(wanted.iter().map(|w| w.settings.name.as_str()));
        for job in wanted {
            let settings = &job.settings;
            if running.contains_key(&settings.name) {
                continue;
            }
            // Checked as the config loaded and as the plugin's list was
            // read (see `plugin/scheduled.rs`): cannot fail here.
            let Ok(plan) = Plan::parse(&settings.cron, settings.timezone.as_deref()) else {
                continue;
            };
            let stop = shutdown.child_token();
            let missed = at_start
                .then(|| self.shared.missed_run(settings, &plan))
                .flatten();
            self.shared.board.add(settings.clone());
            tracing::info!(
                schedule = settings.name,
                cron = settings.cron,
                command = settings.command,
                "schedule started"
            );
            let previous = stopping.remove(&settings.name);
            let task = tokio::spawn(self.shared.clone().serve(
                job.clone(),
                plan,
                Start { missed, previous },
                stop.clone(),
            ));
            running.insert(
                settings.name.clone(),
                Running {
                    job: job.clone(),
                    stop,
                    task,
                },
            );
        }
    }
}

/// How a schedule's task starts: after the task it replaces, if any, has
/// finished its run; with the run missed while the server was down, if
/// it makes it up.
struct Start {
    missed: Option<Timestamp>,
    previous: Option<tokio::task::JoinHandle<()>>,
}

/// The config's schedules, then each plugin's own as `plugin/name`.
fn jobs(config: &[ScheduleSettings], plugins: &BTreeMap<String, Vec<Scheduled>>) -> Vec<Job> {
    let from_config = config.iter().map(|settings| Job {
        settings: settings.clone(),
        plugin: None,
        label: settings.name.clone(),
    });
    let from_plugins = plugins.iter().flat_map(|(plugin, list)| {
        list.iter().map(move |scheduled| Job {
            settings: ScheduleSettings {
                name: format!("{plugin}/{}", scheduled.name),
                cron: scheduled.cron.clone(),
                command: scheduled.command.clone(),
                timezone: None,
                token: None,
                catch_up: false,
            },
            plugin: Some(plugin.clone()),
            label: format!("{plugin}/*"),
        })
    });
    from_config.chain(from_plugins).collect()
}

/// At most this many skipped times are counted at once (a schedule every
/// second behind a run of hours).
const MAX_COUNTED_SKIPS: u64 = 100_000;

impl Shared {
    fn lock_record(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The time a `catch_up` schedule missed while the server was down,
    /// if it did.
    fn missed_run(&self, settings: &ScheduleSettings, plan: &Plan) -> Option<Timestamp> {
        if !settings.catch_up {
            return None;
        }
        // The latest time passed, not the first after the last run: made
        // up once, however long the server was down, and recorded as such.
        let last = self.lock_record().last_run(&settings.name)?;
        let missed = plan.last_due(Timestamp::now())?.timestamp();
        (missed > last).then_some(missed)
    }

    /// One schedule's task: catches up on `missed`, then runs at each time
    /// of `plan` until `stop`.
    async fn serve(self: Arc<Self>, job: Job, plan: Plan, start: Start, stop: CancellationToken) {
        let name = job.settings.name.as_str();
        if let Some(previous) = start.previous {
            let _ = previous.await;
        }
        if let Some(missed) = start.missed {
            tracing::info!(
                schedule = name,
                "catching up on a run missed while the server was down"
            );
            self.run_once(&job, missed).await;
        }
        let mut after = Timestamp::now();
        loop {
            let Some(next) = plan.next_after(after) else {
                tracing::warn!(schedule = name, "no next time: the schedule ends");
                return;
            };
            self.board.set_next(name, next.clone());
            let wait = Duration::try_from(next.timestamp().duration_since(Timestamp::now()))
                .unwrap_or_default();
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => return,
            }
            self.run_once(&job, next.timestamp()).await;
            after = skip_passed(&plan, job.metric_label(), next.timestamp());
            if stop.is_cancelled() {
                return;
            }
        }
    }

    /// Runs the schedule's command once, for the time `due`, and records
    /// how it went.
    async fn run_once(&self, job: &Job, due: Timestamp) {
        let settings = &job.settings;
        let name = settings.name.as_str();
        let late = Timestamp::now().duration_since(due).as_secs_f64().max(0.0);
        telemetry::schedule_lateness(job.metric_label(), late);
        let (outcome, reply) = self.dispatch(job).await;
        // Counted and recorded before the log line, which says the run is
        // over: what follows it (a scrape, a `schedules`) sees the run.
        telemetry::schedule_run(job.metric_label(), outcome.as_str(), 1);
        let at = Timestamp::now().to_zoned(jiff::tz::TimeZone::system());
        self.board.set_last(name, at, outcome);
        // Only `catch_up` reads it: the others cost no write per run.
        if settings.catch_up {
            self.lock_record().ran(name, due);
        }
        let reply = reply.as_str();
        match outcome {
            Outcome::Ok => tracing::info!(
                schedule = name,
                command = settings.command,
                reply,
                "schedule ran"
            ),
            _ => tracing::warn!(
                schedule = name,
                command = settings.command,
                reply,
                outcome = outcome.as_str(),
                "schedule ran"
            ),
        }
    }

    /// The command's reply, as a client with the schedule's token (or the
    /// plugin calling it) would get it.
    async fn dispatch(&self, job: &Job) -> (Outcome, Reply) {
        let settings = &job.settings;
        let Ok(request) = Request::parse(settings.command.as_bytes()) else {
            return (Outcome::Error, Reply::error("not a command"));
        };
        let routes = self.routes.load_full();
        let refused = match &job.plugin {
            Some(plugin) => plugin_refusal(&routes, plugin, &request),
            None => self.refusal(settings, &request),
        };
        if let Some(refused) = refused {
            return refused;
        }
        if !routes.serves(&request.command) {
            let reply = Reply::error(format_args!("unknown command '{}'", request.command));
            return (Outcome::Unknown, reply);
        }
        let mut session = Session::default();
        let client = Client::anyone();
        let mut replies = routes.serve(request, &mut (), &mut session, &client).await;
        match replies.next() {
            Some(reply) if reply.is_error() => (Outcome::Error, reply),
            Some(reply) => (Outcome::Ok, reply),
            None => (Outcome::Error, Reply::error("no reply")),
        }
    }

    /// Why the schedule's token may not run `request`, if it may not.
    fn refusal(&self, settings: &ScheduleSettings, request: &Request) -> Option<(Outcome, Reply)> {
        let tokens = self.tokens.as_ref()?;
        let command = request.command.as_str();
        let name = settings.token.as_deref().unwrap_or_default();
        let reply = match tokens(name, command) {
            Some(true) => return None,
            Some(false) => {
                telemetry::permission_denied(name);
                Reply::permission_denied(name, command)
            }
            None => Reply::error(format_args!("permission denied: no token named '{name}'")),
        };
        Some((Outcome::Denied, reply))
    }
}

/// Why a schedule of `plugin` may not run `request` now, if it may not:
/// the plugin is not loaded, or its grant no longer has the command.
fn plugin_refusal(
    routes: &crate::router::Router,
    plugin: &str,
    request: &Request,
) -> Option<(Outcome, Reply)> {
    let Some(loaded) = routes.plugins().into_iter().find(|p| p.name() == plugin) else {
        let reply = Reply::error(format_args!("plugin '{plugin}' is not loaded"));
        return Some((Outcome::Unknown, reply));
    };
    let command = request.command.as_str();
    if loaded.terms().grants.permits_command(command) {
        return None;
    }
    let reply = Reply::error(crate::plugin::not_granted(plugin, command));
    Some((Outcome::Denied, reply))
}

/// The last of `plan`'s times from `ran` up to now: the times that passed
/// while the run due at `ran` went on are skipped, and counted.
fn skip_passed(plan: &Plan, schedule: &str, ran: Timestamp) -> Timestamp {
    let now = Timestamp::now();
    let (mut cursor, mut skipped) = (ran, 0);
    while skipped < MAX_COUNTED_SKIPS
        && let Some(next) = plan.next_after(cursor)
        && next.timestamp() <= now
    {
        cursor = next.timestamp();
        skipped += 1;
    }
    if skipped > 0 {
        tracing::info!(
            schedule,
            skipped,
            "the last run outlasted the schedule's next times: skipped"
        );
        telemetry::schedule_run(schedule, "skipped", skipped);
    }
    cursor.max(ran)
}

impl Board {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add(&self, settings: ScheduleSettings) {
        let name = settings.name.clone();
        let entry = Entry {
            settings,
            next: None,
            last: None,
        };
        self.lock().insert(name, entry);
    }

    fn remove(&self, name: &str) {
        self.lock().remove(name);
    }

    fn set_next(&self, name: &str, next: Zoned) {
        if let Some(entry) = self.lock().get_mut(name) {
            entry.next = Some(next);
        }
    }

    fn set_last(&self, name: &str, at: Zoned, outcome: Outcome) {
        if let Some(entry) = self.lock().get_mut(name) {
            entry.last = Some((at, outcome));
        }
    }

    /// Every schedule, by name, for the status page: its times and how its
    /// last run went, not its command (which may carry what an operator
    /// would not put on a page).
    pub fn views(&self) -> Vec<ScheduleView> {
        self.lock()
            .iter()
            .map(|(name, entry)| ScheduleView {
                name: name.clone(),
                cron: entry.settings.cron.clone(),
                timezone: entry.settings.timezone.clone(),
                next: entry.next.as_ref().map(shown),
                last: entry.last.as_ref().map(|(at, _)| shown(at)),
                last_outcome: entry.last.as_ref().map(|(_, outcome)| outcome.as_str()),
            })
            .collect()
    }

    /// The `schedules` reply: one line per schedule whose command `permits`
    /// lets the client run, sorted by name:
    /// `name: "cron" [zone] runs "command"; next TIME; last OUTCOME at TIME`.
    pub fn list(&self, permits: &dyn Fn(&str) -> bool) -> Reply {
        let lines: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, entry)| {
                let command = entry.settings.command.split_whitespace().next();
                command.is_some_and(permits)
            })
            .map(|(name, entry)| {
                let settings = &entry.settings;
                let zone = settings
                    .timezone
                    .as_deref()
                    .map(|zone| format!(" {zone}"))
                    .unwrap_or_default();
                let next = entry.next.as_ref().map_or("none".into(), shown);
                let last = match &entry.last {
                    Some((at, outcome)) => format!("{} at {}", outcome.as_str(), shown(at)),
                    None => "never".into(),
                };
                format!(
                    "{name}: \"{}\"{zone} runs \"{}\"; next {next}; last {last}",
                    settings.cron, settings.command
                )
            })
            .collect();
        Reply::ok(lines.join("\n"))
    }
}

/// A time as the `schedules` reply and the status page show it.
fn shown(at: &Zoned) -> String {
    at.strftime("%Y-%m-%d %H:%M:%S %Z").to_string()
}
