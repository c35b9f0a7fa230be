//! `plugboard dev [PROJECT...]`: the plugin author's loop in one command.
//!
//! Serves each project on a server of its own and watches its sources; an
//! edit reaches the server with no step in between:
//! - A Rust project (or any project with `--build`) is built (`make
//!   build`, as every project `plugboard new` makes has it) and its
//!   `.wasm` copied into the server's plugin directory, where hot reload
//!   does the rest. A failed build prints the compiler's output as it is
//!   and the previous version keeps serving.
//! - A Python or JavaScript project is served by a runner (`runner/`): a
//!   component built once that loads the project's source, granted to it
//!   read-only, as each instance starts. An edit is only a new version of
//!   the same code: the source is copied (a snapshot, so that the version
//!   serving keeps the source it loaded), the server asks the runner for
//!   its commands again with the copy granted (`Control::Renew`), and new
//!   instances run the new source, in a fraction of a second. A source
//!   that does not load (a syntax error) is reported with its file and
//!   line, and the previous version keeps serving its own. A change to the
//!   project's dependency list builds (once) a runner that bundles them.
//!
//! The server's log says what loaded and its commands.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::runner::{self, Language, SOURCE_DIR};
use crate::config::Config;
use crate::net::server::ServeOptions;
use crate::reload::Control;

/// A plugin project being developed.
struct Project {
    dir: PathBuf,
    /// The `.wasm` its build writes (`make print-wasm`): its file name is
    /// the plugin's, built or served by a runner.
    wasm: PathBuf,
    /// How it is served: built, or by a runner of its language.
    serving: Serving,
    /// The copies of its source taken for a runner, newest last.
    snapshots: std::sync::Mutex<Vec<PathBuf>>,
    /// The runner serving it (see [`runner::runner_key`]): a change of
    /// dependencies or, in Python, of imported modules needs another.
    runner: std::sync::Mutex<Option<String>>,
}

/// Copies of a runner project's source kept at once: the one serving and
/// a few before it, which instances of earlier versions may still read.
const SNAPSHOTS_KEPT: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Serving {
    Built,
    Runner(Language),
}

/// What `plugboard dev` was asked to do.
pub struct DevOptions {
    pub projects: Vec<PathBuf>,
    pub listen: Option<String>,
    /// Serve every project's real build (`make build`), as a release
    /// would: no runner.
    pub build: bool,
}

/// Edits arriving closer together than this are one change (an editor's
/// save writes, renames and touches several files).
const QUIET: Duration = Duration::from_millis(100);

/// Runs until `shutdown` completes, on `base_config` (limits and grants;
/// its `plugin_dir` is replaced).
pub async fn run(
    options: DevOptions,
    base_config: Config,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<ExitCode> {
    let projects = options
        .projects
        .iter()
        .map(|dir| Project::find(dir, options.build))
        .collect::<anyhow::Result<Vec<_>>>()?;
    refuse_clashes(&projects)?;
    let dev_dir = DevDir::create()?;
    let plugin_dir = dev_dir.plugins();
    let mut config = base_config;
    config.plugin_dir = plugin_dir.clone();
    // An author's edit takes over at once: no version on trial.
    config.rollout.rollout_canary_percent = Some(0);
    for plugin in config.plugins.values_mut() {
        plugin.rollout.rollout_canary_percent = None;
    }
    if let Some(listen) = options.listen {
        config.listen = listen;
    }
    let cache = super::user_dir("XDG_CACHE_HOME", ".cache")
        .context("no cache directory for runners: set XDG_CACHE_HOME or HOME")?;
    for project in &projects {
        if let Serving::Runner(_) = project.serving
            && let Some(source) = project.snapshot(&dev_dir.sources())?
        {
            grant_source(&mut config, project, source);
        }
        project.install(&plugin_dir, &cache).await;
    }
    let (changed, mut changes) = mpsc::unbounded_channel();
    let _watchers = projects
        .iter()
        .enumerate()
        .map(|(index, project)| watch(&project.dir, index, changed.clone()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (control, controls) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let serving = tokio::spawn(crate::net::server::run(
        ServeOptions {
            config,
            config_path: None,
            watch: true,
            control: Some(controls),
        },
        stop.clone().cancelled_owned(),
    ));
    let mut serving = std::pin::pin!(serving);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            Some(first) = changes.recv() => {
                for index in settle(first, &mut changes).await {
                    projects[index].changed(&dev_dir, &cache, &control).await;
                }
            }
            served = &mut serving => {
                served.context("the dev server stopped")??;
                return Ok(ExitCode::SUCCESS);
            }
            () = &mut shutdown => {
                stop.cancel();
                (&mut serving).await.context("the dev server stopped")??;
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
}

/// Grants the runner serving `project` its `source`, read-only, on top of
/// whatever the config grants the plugin.
fn grant_source(config: &mut Config, project: &Project, source: PathBuf) {
    let name = project.plugin_name();
    let settings = config.plugins.entry(name).or_default();
    settings.dirs.insert(SOURCE_DIR.to_owned(), source);
}

/// A change to a watched project's sources: which project.
type Change = usize;

/// The projects whose files edits touched, from `first` until the edits
/// pause for [`QUIET`].
async fn settle(first: Change, changes: &mut mpsc::UnboundedReceiver<Change>) -> BTreeSet<usize> {
    let mut touched = BTreeSet::from([first]);
    while let Ok(Some(index)) = tokio::time::timeout(QUIET, changes.recv()).await {
        touched.insert(index);
    }
    touched
}

/// Watches `dir` for source changes; each is sent with `index`.
fn watch(
    dir: &Path,
    index: usize,
    changed: mpsc::UnboundedSender<Change>,
) -> anyhow::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        if event.paths.iter().any(|path| is_source(path)) {
            let _ = changed.send(index);
        }
    })
    .context("cannot watch the projects")?;
    watcher
        .watch(dir, RecursiveMode::Recursive)
        .with_context(|| format!("cannot watch {}", dir.display()))?;
    Ok(watcher)
}

/// Whether a change to `path` is an edit worth a build: not the build's
/// own output, dependencies or caches.
fn is_source(path: &Path) -> bool {
    const NOT_SOURCES: [&str; 7] = [
        "target",
        "node_modules",
        ".venv",
        "__pycache__",
        ".git",
        ".plugboard-entry.js",
        ".runner-deps.js",
    ];
    let generated = path.components().any(|part| {
        NOT_SOURCES
            .iter()
            .any(|skip| part.as_os_str() == std::ffi::OsStr::new(skip))
    });
    let output = path
        .extension()
        .is_some_and(|ext| ext == "wasm" || ext == "lock" || ext == "swp")
        || path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().ends_with('~'));
    !generated && !output
}

impl Project {
    /// A project directory with a Makefile that builds a plugin; served by
    /// a runner when it is Python or JavaScript, unless `build`.
    fn find(dir: &Path, build: bool) -> anyhow::Result<Self> {
        let dir = dir
            .canonicalize()
            .with_context(|| format!("no project at {}", dir.display()))?;
        if !dir.join("Makefile").is_file() {
            bail!(
                "{} has no Makefile: plugboard dev builds projects made by `plugboard new`",
                dir.display()
            );
        }
        let output = std::process::Command::new("make")
            .args(["-s", "--no-print-directory", "print-wasm"])
            .current_dir(&dir)
            .output()
            .context("cannot run make")?;
        let wasm = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        if !output.status.success() || wasm.is_empty() {
            bail!(
                "{}: `make print-wasm` does not say where the plugin is built \
                 (add `print-wasm: ; @echo $(WASM)` to its Makefile)",
                dir.display()
            );
        }
        let wasm = dir.join(wasm);
        let serving = match Language::of_project(&dir) {
            Some(language) if !build => Serving::Runner(language),
            _ => Serving::Built,
        };
        Ok(Self {
            dir,
            wasm,
            serving,
            snapshots: std::sync::Mutex::default(),
            runner: std::sync::Mutex::default(),
        })
    }

    /// A copy of the project's source (what a build would read, not its
    /// outputs or dependencies) in `sources`, unless it is the same as the
    /// newest copy (`None`: an editor's save that came as two events); the
    /// oldest copies beyond [`SNAPSHOTS_KEPT`] are removed.
    fn snapshot(&self, sources: &Path) -> anyhow::Result<Option<PathBuf>> {
        let mut snapshots = self
            .snapshots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        static TAKEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let taken = TAKEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let copy = sources.join(format!("{}-{taken}", self.plugin_name()));
        copy_sources(&self.dir, &copy)
            .with_context(|| format!("cannot copy the source of {}", self.dir.display()))?;
        if snapshots
            .last()
            .is_some_and(|newest| same_tree(newest, &copy))
        {
            let _ = std::fs::remove_dir_all(&copy);
            return Ok(None);
        }
        snapshots.push(copy.clone());
        while snapshots.len() > SNAPSHOTS_KEPT {
            let _ = std::fs::remove_dir_all(snapshots.remove(0));
        }
        Ok(Some(copy))
    }

    fn file_name(&self) -> &std::ffi::OsStr {
        self.wasm.file_name().unwrap_or_default()
    }

    /// The plugin's name: its file's stem.
    fn plugin_name(&self) -> String {
        crate::reload::plugin_dir::plugin_name(Path::new(self.file_name()))
    }

    /// Puts the project's plugin where the server loads it: its build, or
    /// its runner. A failure is reported and changes nothing.
    async fn install(&self, plugin_dir: &Path, cache: &Path) {
        let started = Instant::now();
        let name = self.file_name().to_string_lossy().into_owned();
        let wasm = match self.serving {
            Serving::Built => match self.build(&name).await {
                Some(()) => self.wasm.clone(),
                None => return,
            },
            Serving::Runner(language) => {
                match runner::runner_for(language, &self.dir, cache).await {
                    Ok(wasm) => {
                        *self.runner_in_use() = runner::runner_key(language, &self.dir).ok();
                        wasm
                    }
                    Err(err) => {
                        tracing::error!(project = %self.dir.display(), "cannot build the {} runner: {err:#}", language.name());
                        return;
                    }
                }
            }
        };
        match install(&wasm, plugin_dir, self.file_name()) {
            Ok(()) => tracing::info!(
                ms = started.elapsed().as_millis(),
                "{name} ready; the server loads it now"
            ),
            Err(err) => tracing::error!("cannot install {name}: {err:#}"),
        }
    }

    fn runner_in_use(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.runner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `make build`; `None` (the compiler's output printed) if it failed.
    async fn build(&self, name: &str) -> Option<()> {
        tracing::info!(project = %self.dir.display(), "building {name}");
        let built = tokio::process::Command::new("make")
            .args(["--no-print-directory", "build"])
            .current_dir(&self.dir)
            .stdin(std::process::Stdio::null())
            .output()
            .await;
        match built {
            Ok(output) if output.status.success() => Some(()),
            Ok(output) => {
                eprintln!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
                tracing::error!(
                    project = %self.dir.display(),
                    "build of {name} failed (above); the last version that built keeps serving"
                );
                None
            }
            Err(err) => {
                tracing::error!(project = %self.dir.display(), "cannot run make: {err}");
                None
            }
        }
    }

    /// The project's files changed: a build, a runner for new dependencies
    /// or imported modules, and a new source for the runner serving it.
    async fn changed(
        &self,
        dev_dir: &DevDir,
        cache: &Path,
        control: &mpsc::UnboundedSender<Control>,
    ) {
        let Serving::Runner(language) = self.serving else {
            return self.install(&dev_dir.plugins(), cache).await;
        };
        let needed = runner::runner_key(language, &self.dir).ok();
        if needed.is_some() && needed != *self.runner_in_use() {
            tracing::info!(
                project = %self.dir.display(),
                "its dependencies or imported modules changed: serving it with a runner that has them"
            );
            self.install(&dev_dir.plugins(), cache).await;
        }
        let source = match self.snapshot(&dev_dir.sources()) {
            Ok(Some(source)) => source,
            Ok(None) => return,
            Err(err) => return tracing::error!("{err:#}"),
        };
        tracing::info!(project = %self.dir.display(), "source changed: loading it");
        let _ = control.send(Control::Renew {
            file: self.file_name().to_string_lossy().into_owned(),
            guest: SOURCE_DIR.to_owned(),
            source,
        });
    }
}

/// Copies the files of `from` that are sources (see [`is_source`]) to
/// `to`, keeping the tree's layout.
fn copy_sources(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let path = entry.path();
        if !is_source(&path) {
            continue;
        }
        let target = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_sources(&path, &target)?;
        } else if kind.is_file() {
            std::fs::copy(&path, &target)?;
        }
    }
    Ok(())
}

/// Whether the trees at `a` and `b` hold the same files with the same
/// contents.
fn same_tree(a: &Path, b: &Path) -> bool {
    fn files(root: &Path, dir: &Path, into: &mut Vec<(PathBuf, Vec<u8>)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                files(root, &path, into);
            } else if let (Ok(relative), Ok(bytes)) =
                (path.strip_prefix(root), std::fs::read(&path))
            {
                into.push((relative.to_owned(), bytes));
            }
        }
    }
    let (mut left, mut right) = (Vec::new(), Vec::new());
    files(a, a, &mut left);
    files(b, b, &mut right);
    left.sort();
    right.sort();
    left == right
}

/// Copies `wasm` into `plugin_dir` as `name`, through a rename, so the
/// server never reads half a file.
fn install(wasm: &Path, plugin_dir: &Path, name: &std::ffi::OsStr) -> anyhow::Result<()> {
    let staging = plugin_dir.join(format!(".{}.partial", name.to_string_lossy()));
    std::fs::copy(wasm, &staging).with_context(|| format!("cannot copy {}", wasm.display()))?;
    std::fs::rename(&staging, plugin_dir.join(name)).context("cannot move it into place")?;
    Ok(())
}

/// Two projects building files of the same name would replace each other.
fn refuse_clashes(projects: &[Project]) -> anyhow::Result<()> {
    let mut seen = BTreeSet::new();
    for project in projects {
        if !seen.insert(project.file_name()) {
            bail!(
                "two projects build {}: rename one",
                project.file_name().to_string_lossy()
            );
        }
    }
    Ok(())
}

/// The dev server's directory, removed when dev ends: its plugin
/// directory, and the copies of runner projects' sources.
struct DevDir(PathBuf);

impl DevDir {
    fn create() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("plugboard-dev-{}", std::process::id()));
        let dev = Self(dir);
        for dir in [dev.plugins(), dev.sources()] {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        Ok(dev)
    }

    fn plugins(&self) -> PathBuf {
        self.0.join("plugins")
    }

    fn sources(&self) -> PathBuf {
        self.0.join("sources")
    }
}

impl Drop for DevDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::is_source;
    use std::path::Path;

    #[test]
    fn build_outputs_and_dependencies_are_not_sources() {
        for source in ["/p/src/lib.rs", "/p/app.py", "/p/plugin.js", "/p/Makefile"] {
            assert!(is_source(Path::new(source)), "{source}");
        }
        for output in [
            "/p/target/release/x.wasm",
            "/p/greeter.wasm",
            "/p/node_modules/a/b.js",
            "/p/.venv/lib/x.py",
            "/p/__pycache__/app.pyc",
            "/p/.plugboard-entry.js",
            "/p/.runner-deps.js",
            "/p/Cargo.lock",
            "/p/app.py~",
        ] {
            assert!(!is_source(Path::new(output)), "{output}");
        }
    }
}
