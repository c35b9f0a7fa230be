//! `plugboard dev [PROJECT...]`: the plugin author's loop in one command.
//!
//! Builds each project (`make build`, as every project `plugboard new`
//! makes has it), serves the plugins on a server of its own, watches the
//! projects' sources, and on every change rebuilds that project and copies
//! its `.wasm` into the server's plugin directory, where hot reload does the
//! rest: from an edit to the new behaviour with no step in between. A
//! failed build prints the compiler's output as it is and the previous
//! version keeps serving; the server's log says what loaded and its
//! commands.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::net::server::ServeOptions;

/// A plugin project being developed.
struct Project {
    dir: PathBuf,
    /// The `.wasm` its build writes (`make print-wasm`).
    wasm: PathBuf,
}

/// What `plugboard dev` was asked to do.
pub struct DevOptions {
    pub projects: Vec<PathBuf>,
    pub listen: Option<String>,
}

/// Edits arriving closer together than this are one change (an editor's
/// save writes, renames and touches several files).
const QUIET: Duration = Duration::from_millis(200);

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
        .map(|dir| Project::find(dir))
        .collect::<anyhow::Result<Vec<_>>>()?;
    refuse_clashes(&projects)?;
    let plugin_dir = DevDir::create()?;
    let mut config = base_config;
    config.plugin_dir = plugin_dir.0.clone();
    if let Some(listen) = options.listen {
        config.listen = listen;
    }
    for project in &projects {
        project.build_and_install(&plugin_dir.0).await;
    }
    let (changed, mut changes) = mpsc::unbounded_channel();
    let _watchers = projects
        .iter()
        .enumerate()
        .map(|(index, project)| watch(&project.dir, index, changed.clone()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let stop = CancellationToken::new();
    let serving = tokio::spawn(crate::net::server::run(
        ServeOptions {
            config,
            config_path: None,
            watch: true,
            control: None,
        },
        stop.clone().cancelled_owned(),
    ));
    let mut serving = std::pin::pin!(serving);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            Some(first) = changes.recv() => {
                let touched = settle(first, &mut changes).await;
                for index in touched {
                    projects[index].build_and_install(&plugin_dir.0).await;
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

/// The projects touched by `first` and by whatever follows it until the
/// edits pause for [`QUIET`].
async fn settle(first: usize, changes: &mut mpsc::UnboundedReceiver<usize>) -> BTreeSet<usize> {
    let mut touched = BTreeSet::from([first]);
    while let Ok(Some(index)) = tokio::time::timeout(QUIET, changes.recv()).await {
        touched.insert(index);
    }
    touched
}

/// Watches `dir` for source changes; each is sent as `index`.
fn watch(
    dir: &Path,
    index: usize,
    changed: mpsc::UnboundedSender<usize>,
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
    const NOT_SOURCES: [&str; 6] = [
        "target",
        "node_modules",
        ".venv",
        "__pycache__",
        ".git",
        ".plugboard-entry.js",
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
    /// A project directory with a Makefile that builds a plugin.
    fn find(dir: &Path) -> anyhow::Result<Self> {
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
        Ok(Self { dir, wasm })
    }

    fn file_name(&self) -> &std::ffi::OsStr {
        self.wasm.file_name().unwrap_or_default()
    }

    /// Builds the project and, if that worked, puts its plugin where the
    /// server loads it. A failed build is reported and changes nothing.
    async fn build_and_install(&self, plugin_dir: &Path) {
        let started = Instant::now();
        let name = self.file_name().to_string_lossy().into_owned();
        tracing::info!(project = %self.dir.display(), "building {name}");
        let built = tokio::process::Command::new("make")
            .args(["--no-print-directory", "build"])
            .current_dir(&self.dir)
            .stdin(std::process::Stdio::null())
            .output()
            .await;
        match built {
            Ok(output) if output.status.success() => {}
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
                return;
            }
            Err(err) => {
                tracing::error!(project = %self.dir.display(), "cannot run make: {err}");
                return;
            }
        }
        match install(&self.wasm, plugin_dir) {
            Ok(()) => tracing::info!(
                ms = started.elapsed().as_millis(),
                "built {name}; the server loads it now"
            ),
            Err(err) => tracing::error!("cannot install {name}: {err:#}"),
        }
    }
}

/// Copies `wasm` into `plugin_dir` under its own name, through a rename,
/// so the server never reads half a file.
fn install(wasm: &Path, plugin_dir: &Path) -> anyhow::Result<()> {
    let name = wasm
        .file_name()
        .context("the build output has no file name")?;
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

/// The dev server's plugin directory, removed when dev ends.
struct DevDir(PathBuf);

impl DevDir {
    fn create() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("plugboard-dev-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self(dir))
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
            "/p/Cargo.lock",
            "/p/app.py~",
        ] {
            assert!(!is_source(Path::new(output)), "{output}");
        }
    }
}
