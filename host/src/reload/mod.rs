//! Hot reload: the plugin directory and the config change under a running
//! server without a dropped connection or a failed command.
//!
//! One task owns the plugin set. It wakes on filesystem events (notify) and on
//! SIGHUP, brings the set up to date, and swaps a new routing table into
//! [`Routes`]. Connections read the table per command, so a command already
//! running finishes on the version it started with and every later command
//! uses the new one; nothing waits for a lock.
//!
//! Files are loaded only once they are complete. A file being copied or built
//! is written in several steps; on Linux the kernel reports when the writer
//! closes it (`IN_CLOSE_WRITE`), and editors and atomic writers rename a
//! finished file into place. Those events mean "complete" and trigger a
//! rescan after a short settling time. Mere creation or modification means
//! "still being written": it triggers a rescan only after a longer quiet
//! period, as a fallback for platforms without close events. Even a file read
//! too early cannot do harm: a truncated component fails to load and the
//! previous version keeps serving.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ScheduleSettings};
use crate::plugin::{DirGrant, WasmRuntime};
use crate::router::Routes;
use plugin_dir::is_plugin_file;

pub mod plugin_dir;

pub use plugin_dir::{PluginDir, Rollout};

/// After a "file complete" event, how long to wait for more events (a build
/// writing several plugins, a rename following a close) before rescanning.
const SETTLE: Duration = Duration::from_millis(50);
/// After only "being written" events, how long the directory must stay quiet
/// before a rescan.
const QUIET: Duration = Duration::from_secs(1);

/// How often the plugin directory's identity is checked: a directory
/// replaced (recreated, renamed over, a symlink swapped) is watched anew.
const DIR_CHECK: Duration = Duration::from_secs(1);

/// What a filesystem event says about a plugin file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// Closed after writing, renamed into place, or removed.
    Complete,
    /// Created or modified: the writer may not be done.
    Writing,
    /// The watched directory itself was removed or moved away.
    DirGone,
}

/// What the program that runs a server (`plugboard dev`) may ask of its
/// reloader, beside the plugin directory's own changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// The source a runner plugin loads as its instances start changed:
    /// load the plugin of `file` anew, from the code it has, with
    /// `source` granted (read-only) at `guest` instead of what was.
    Renew {
        file: String,
        guest: String,
        source: PathBuf,
    },
}

/// The plugin set, what it serves through, and what makes it change.
pub struct Reloader {
    runtime: Arc<WasmRuntime>,
    config: Config,
    config_path: Option<PathBuf>,
    plugins: PluginDir,
    routes: Arc<Routes>,
    hangup: Signal,
    triggers: mpsc::UnboundedReceiver<Trigger>,
    /// Where watchers send their triggers; `None` when not watching.
    events: Option<mpsc::UnboundedSender<Trigger>>,
    watch: DirWatch,
    /// Requests of the program running the server, if it makes any.
    control: Option<mpsc::UnboundedReceiver<Control>>,
    /// The schedules of the config, for the scheduler (see `schedule/`).
    schedules: watch::Sender<Vec<ScheduleSettings>>,
}

/// The watch on the plugin directory, and which directory it is on: the
/// kernel watches a directory, not a path, so a path that names another
/// directory now must be watched again.
#[derive(Default)]
struct DirWatch {
    /// Stops watching when dropped.
    _watcher: Option<RecommendedWatcher>,
    /// (device, inode) of the directory watched; `None` if there was none.
    identity: Option<(u64, u64)>,
}

/// The directory `path` names now (following symlinks).
fn dir_identity(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    meta.is_dir().then(|| (meta.dev(), meta.ino()))
}

impl Reloader {
    /// Starts watching (if `watch` and `hot_reload`) and loads the plugin
    /// directory, in that order: a file added while the initial load runs is
    /// then seen by the watcher, not missed. `config_path` is what SIGHUP
    /// re-reads; `None` when serving on the built-in defaults.
    pub async fn start(
        runtime: Arc<WasmRuntime>,
        config: Config,
        config_path: Option<PathBuf>,
        watch: bool,
        control: Option<mpsc::UnboundedReceiver<Control>>,
    ) -> anyhow::Result<Self> {
        // Installed at startup: a SIGHUP's default action is to end the process.
        let hangup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
        let (events, triggers) = mpsc::unbounded_channel();
        let events = (watch && config.hot_reload).then_some(events);
        let watch = match &events {
            Some(events) => DirWatch::on(&config.plugin_dir, events.clone()),
            None => DirWatch::default(),
        };
        let mut plugins = PluginDir::new(config.plugin_dir.clone());
        plugins.set_rollout(rollout_for(&config));
        plugins
            .rescan(&runtime, &|name| config.terms_for(name))
            .await?;
        let routes = Arc::new(Routes::from_pointee(plugins.router()));
        let schedules = watch::Sender::new(config.schedules.clone());
        Ok(Self {
            runtime,
            config,
            config_path,
            plugins,
            routes,
            hangup,
            triggers,
            events,
            watch,
            control,
            schedules,
        })
    }

    /// The routing table connections read; this reloader keeps it current.
    pub fn routes(&self) -> Arc<Routes> {
        self.routes.clone()
    }

    /// The config's schedules, as SIGHUP changes them.
    pub fn schedules(&self) -> watch::Receiver<Vec<ScheduleSettings>> {
        self.schedules.subscribe()
    }

    pub fn plugins(&self) -> &PluginDir {
        &self.plugins
    }

    /// Serves reloads until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut dir_check = tokio::time::interval(DIR_CHECK);
        dir_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(first) = self.triggers.recv() => {
                    if settle(first, &mut self.triggers).await {
                        self.watch = DirWatch::default();
                    }
                    self.rescan().await;
                }
                _ = self.hangup.recv() => self.reload_config().await,
                Some(control) = next_control(&mut self.control) => self.obey(control).await,
                _ = dir_check.tick() => self.follow_replaced_dir().await,
                event = self.plugins.rollout_event() => {
                    if self.plugins.conclude(&event) {
                        self.publish();
                    }
                }
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Watches the directory `plugin_dir` names now, if that is another one
    /// than the watched (recreated, renamed over, a symlink swapped), and
    /// rescans it. While there is none, the loaded plugins keep serving.
    async fn follow_replaced_dir(&mut self) {
        if self.events.is_none() || dir_identity(&self.config.plugin_dir) == self.watch.identity {
            return;
        }
        self.rewatch();
        let dir = self.config.plugin_dir.display();
        if self.watch.identity.is_some() {
            tracing::warn!(%dir, "plugin_dir is another directory now: watching it and rescanning");
            self.rescan().await;
        } else {
            tracing::warn!(%dir, "plugin_dir is gone: the loaded plugins keep serving until it is back");
        }
    }

    /// Watches whatever directory `plugin_dir` names now (if watching at
    /// all). The old watch goes first: one watch on the path at a time.
    fn rewatch(&mut self) {
        if let Some(events) = &self.events {
            self.watch = DirWatch::default();
            self.watch = DirWatch::on(&self.config.plugin_dir, events.clone());
        }
    }

    async fn obey(&mut self, control: Control) {
        match control {
            Control::Renew {
                file,
                guest,
                source,
            } => {
                let grant = DirGrant {
                    guest,
                    host: source,
                    writable: false,
                };
                let started = std::time::Instant::now();
                if let Some(plugin) = self.plugins.renew(&file, grant).await {
                    self.publish();
                    // Only now: a command sent after this line runs the new source.
                    let commands: Vec<&str> =
                        plugin.commands().iter().map(|c| c.name.as_str()).collect();
                    let ms = started.elapsed().as_millis();
                    tracing::info!(plugin = plugin.name(), commands = ?commands, ms, "reloaded from its source");
                    let detail =
                        format!("from its source, commands {}, {ms} ms", commands.join(" "));
                    crate::telemetry::events::record("reloaded", plugin.name(), detail);
                }
            }
        }
    }

    /// Brings the plugin set up to date and, if it changed, swaps the table.
    async fn rescan(&mut self) {
        let config = &self.config;
        match self
            .plugins
            .rescan(&self.runtime, &|name| config.terms_for(name))
            .await
        {
            Ok(changes) if changes.alter_routes() => self.publish(),
            Ok(_) => {}
            Err(err) => tracing::error!("plugin rescan failed: {err:#}"),
        }
    }

    fn publish(&self) {
        self.routes.store(Arc::new(self.plugins.router()));
        let plugins: Vec<&str> = self.plugins.plugin_names().collect();
        tracing::info!(?plugins, "plugin set updated");
    }

    /// SIGHUP: re-read the config, apply what can change while running,
    /// rescan the plugin directory. An invalid config changes nothing.
    async fn reload_config(&mut self) {
        tracing::info!("SIGHUP: reloading the config and rescanning plugins");
        let new = match &self.config_path {
            Some(path) => match Config::load(path) {
                Ok(config) => config,
                Err(err) => {
                    let err = one_line(&err);
                    tracing::error!("config reload rejected, keeping the running config: {err}");
                    return self.rescan().await;
                }
            },
            None => self.config.clone(),
        };
        for key in self.config.apply_reload(new) {
            tracing::warn!("`{key}` changed: it takes effect at the next restart");
        }
        self.rewatch();
        self.schedules.send_replace(self.config.schedules.clone());
        self.plugins.set_rollout(rollout_for(&self.config));
        self.plugins.retry_rolled_back();
        let config = &self.config;
        let limits_changed = self.plugins.apply_limits(&|name| config.terms_for(name));
        let revived = self.plugins.revive_quarantined();
        self.rescan().await;
        if limits_changed || revived {
            self.publish();
        }
        // Only now: a command sent after this line is served under the new
        // limits, which is what an operator (and a test) waiting on it means.
        tracing::info!("config reloaded");
    }
}

/// How each plugin's new versions take over, as `config` says.
fn rollout_for(config: &Config) -> plugin_dir::RolloutFor {
    let config = config.clone();
    Box::new(move |name| config.rollout_for(name))
}

/// The next request of `control`; never, when there is none to ask.
async fn next_control(control: &mut Option<mpsc::UnboundedReceiver<Control>>) -> Option<Control> {
    match control {
        Some(control) => control.recv().await,
        None => std::future::pending().await,
    }
}

/// An error and its causes on one line: a log event per line is what log
/// shippers expect, and TOML errors quote the offending line over several.
fn one_line(err: &anyhow::Error) -> String {
    format!("{err:#}")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Waits until the events that follow `first` settle: a short time after a
/// "complete" event, a longer quiet period when files are only being
/// written. Returns whether the directory itself went away meanwhile.
async fn settle(first: Trigger, triggers: &mut mpsc::UnboundedReceiver<Trigger>) -> bool {
    let mut complete = first != Trigger::Writing;
    let mut dir_gone = first == Trigger::DirGone;
    loop {
        let wait = if complete { SETTLE } else { QUIET };
        match tokio::time::timeout(wait, triggers.recv()).await {
            Ok(Some(trigger)) => {
                complete |= trigger != Trigger::Writing;
                dir_gone |= trigger == Trigger::DirGone;
            }
            Ok(None) | Err(_) => return dir_gone,
        }
    }
}

/// Maps a filesystem event to a trigger, ignoring events about other files
/// and reads (including the server's own reads of plugin files).
fn classify(event: &notify::Event, dir: &std::path::Path) -> Option<Trigger> {
    let about_dir = event.paths.iter().any(|path| path == dir);
    if about_dir
        && matches!(
            event.kind,
            EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
        )
    {
        return Some(Trigger::DirGone);
    }
    if !event.paths.iter().any(|path| is_plugin_file(path)) {
        return None;
    }
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write))
        | EventKind::Modify(ModifyKind::Name(_))
        | EventKind::Remove(_) => Some(Trigger::Complete),
        EventKind::Create(_) | EventKind::Modify(_) => Some(Trigger::Writing),
        _ => None,
    }
}

impl DirWatch {
    /// Watches the directory `dir` names now, sending a trigger per relevant
    /// event. Without one (none there, or the platform refuses, logged) the
    /// server runs on; the directory check tries again.
    fn on(dir: &std::path::Path, events: mpsc::UnboundedSender<Trigger>) -> Self {
        let identity = dir_identity(dir);
        if identity.is_none() {
            return Self::default();
        }
        let watched = dir.to_owned();
        let handler = move |event: notify::Result<notify::Event>| match event {
            Ok(event) => {
                if let Some(trigger) = classify(&event, &watched) {
                    let _ = events.send(trigger);
                }
            }
            Err(err) => tracing::warn!("plugin directory watch error: {err}"),
        };
        let watching = notify::recommended_watcher(handler).and_then(|mut watcher| {
            watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .map(|()| watcher)
        });
        match watching {
            Ok(watcher) => {
                tracing::info!(dir = %dir.display(), "watching the plugin directory for changes");
                Self {
                    _watcher: Some(watcher),
                    identity,
                }
            }
            Err(err) => {
                tracing::error!(dir = %dir.display(), "cannot watch the plugin directory, hot reload is off: {err}");
                Self::default()
            }
        }
    }
}
