//! The plugin directory: which files are plugins, what was loaded from each,
//! and bringing that up to date with what is on disk.
//!
//! Files are visited in file-name order so that everything derived from the
//! directory (above all, which plugin wins a contested command) is the same on
//! every start and every reload, whatever order the filesystem lists entries
//! in. A file that fails to load is logged and, if an earlier version of it
//! loaded, that version keeps serving: a broken build never takes a working
//! plugin down.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use futures::StreamExt;

use crate::plugin::{DirGrant, Grants, Plugin, Terms, WasmRuntime};
use crate::router::Router;
use crate::telemetry::events;
use rollout::{Admission, Candidate, Rollouts};

mod rollout;

pub use rollout::{Rollout, RolloutEvent, RolloutFor};

/// The `*.wasm` files directly in `dir`, sorted by file name.
pub fn plugin_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if is_plugin_file(&path) && path.is_file() {
            files.push(path);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

pub fn is_plugin_file(path: &Path) -> bool {
    path.extension().is_some_and(|ext| ext == "wasm")
}

/// A plugin is named after its file: `onoff.wasm` is `onoff`.
pub fn plugin_name(path: &Path) -> String {
    path.file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// How a plugin of a given name is set up (its limits and config table):
/// the config's `terms_for`, passed in so that this module needs no config.
pub type TermsFor<'a> = &'a (dyn Fn(&str) -> Terms + Sync);

/// What a rescan changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub loaded: Vec<String>,
    pub removed: Vec<String>,
}

impl Changes {
    /// Whether the routing table must be rebuilt.
    pub fn alter_routes(&self) -> bool {
        !self.loaded.is_empty() || !self.removed.is_empty()
    }
}

/// The plugins loaded from one directory, by file name.
pub struct PluginDir {
    dir: PathBuf,
    files: BTreeMap<OsString, LoadedFile>,
    /// The newest source each runner file was asked to load
    /// (`Control::Renew`): a new version of the file (a runner rebuilt for
    /// new dependencies) and new terms (SIGHUP) keep it, whichever of the
    /// file and the source came first.
    sources: BTreeMap<OsString, DirGrant>,
    rollouts: Rollouts,
}

/// One file and what came of it.
struct LoadedFile {
    /// Size and modification time when last read: unchanged means not re-read.
    stamp: Stamp,
    /// Hash of the content last read, loaded or rejected: the same bytes
    /// rewritten (a `touch`, a no-op rebuild) are not loaded again.
    content: u64,
    /// The version serving, if any version of this file ever loaded.
    plugin: Option<Arc<Plugin>>,
    /// A newer version on trial beside it (see `rollout.rs`).
    candidate: Option<Candidate>,
    /// Whether the file's content is a version that was rolled back.
    rolled_back: bool,
}

/// A new or changed file, read and about to be compiled (then `bytes` is
/// handed over).
struct Read {
    path: PathBuf,
    file: OsString,
    /// The plugin's name: the file's stem.
    name: String,
    stamp: Stamp,
    content: u64,
    bytes: Vec<u8>,
    /// The version serving now, if any.
    previous: Option<Arc<Plugin>>,
}

/// Files compiled at once: one per two cores. Each compile already spreads
/// a plugin's functions over every core (Cranelift's parallel
/// compilation), so on 2 cores a Python and a JavaScript plugin side by side
/// took 14.2 s, as long as one after the other (6.2 + 7.7 s), with both
/// in memory at once; the serial parts of a compile (parsing, linking) are
/// what more cores overlap.
/// `PLUGBOARD_COMPILE_SLOTS` sets it for the benchmark that measures it.
fn compile_slots() -> usize {
    let set = std::env::var("PLUGBOARD_COMPILE_SLOTS").ok();
    if let Some(slots) = set.and_then(|slots| slots.parse().ok()) {
        return usize::max(slots, 1);
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    (cores / 2).max(1)
}

impl PluginDir {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            files: BTreeMap::new(),
            sources: BTreeMap::new(),
            rollouts: Rollouts::default(),
        }
    }

    /// Loads new and changed files, forgets removed ones. Each file is read
    /// at most once per call, and only if its size or mtime changed.
    pub async fn rescan(
        &mut self,
        runtime: &Arc<WasmRuntime>,
        terms_for: TermsFor<'_>,
    ) -> anyhow::Result<Changes> {
        let paths = plugin_files(&self.dir)
            .with_context(|| format!("cannot list plugin_dir {}", self.dir.display()))?;
        let mut changes = Changes::default();
        let present: Vec<OsString> = paths
            .iter()
            .filter_map(|p| p.file_name().map(Into::into))
            .collect();
        self.files.retain(|file, loaded| {
            let keep = present.contains(file);
            if !keep && let Some(plugin) = &loaded.plugin {
                tracing::info!(
                    plugin = plugin.name(),
                    "plugin file removed; its commands are gone"
                );
                events::record("removed", plugin.name(), "its commands are gone");
                changes.removed.push(plugin.name().to_owned());
            }
            keep
        });
        for removed in &changes.removed {
            runtime.plugin_schedules().forget(removed);
        }
        let mut reads = Vec::new();
        for path in &paths {
            reads.extend(self.read_if_changed(path).await);
        }
        // Files are compiled side by side where cores allow (see
        // `compile_slots`), and reported in directory order.
        let reads: Vec<(Read, Terms)> = reads
            .into_iter()
            .map(|read| {
                let terms = self.with_source(&read.file, terms_for(&read.name));
                (read, terms)
            })
            .collect();
        let compiles = reads.into_iter().map(|(mut read, terms)| async {
            // Said before the work: a large plugin's first compile takes seconds.
            tracing::info!(file = %read.path.display(), bytes = read.bytes.len(), "compiling plugin");
            let started = std::time::Instant::now();
            let bytes = std::mem::take(&mut read.bytes);
            let loaded = Plugin::from_bytes(runtime, &read.name, bytes, terms).await;
            (read, started.elapsed(), loaded)
        });
        let mut compiled = futures::stream::iter(compiles).buffered(compile_slots());
        while let Some((read, took, loaded)) = compiled.next().await {
            self.settle(read, took, loaded, &mut changes);
        }
        Ok(changes)
    }

    /// The file at `path` if it is new or changed since it was last read;
    /// a file rewritten with the same bytes is only noted, and one that
    /// cannot be read is logged (and counted).
    async fn read_if_changed(&mut self, path: &Path) -> Option<Read> {
        let file = path.file_name().map(OsString::from)?;
        let stamp = match std::fs::metadata(path).map(|meta| stamp(&meta)) {
            Ok(stamp) => stamp,
            Err(err) => {
                tracing::error!(file = %path.display(), "cannot read plugin file: {err}");
                return None;
            }
        };
        let known = self.files.get(&file);
        if known.is_some_and(|known| known.stamp == stamp) {
            return None;
        }
        let bytes = match tokio::fs::read(path).await {
            Ok(bytes) => bytes,
            Err(err) => {
                // Counted before logged: whoever reads the log sees the count.
                crate::telemetry::reload(false);
                tracing::error!(file = %path.display(), "cannot read plugin file: {err}");
                return None;
            }
        };
        let content = content_hash(&bytes);
        let previous = known.and_then(|known| known.plugin.clone());
        if let Some(known) = self.files.get_mut(&file)
            && known.content == content
        {
            known.stamp = stamp;
            return None;
        }
        Some(Read {
            path: path.to_owned(),
            file,
            name: plugin_name(path),
            stamp,
            content,
            bytes,
            previous,
        })
    }

    /// Records what came of compiling one file read by [`Self::read_if_changed`].
    fn settle(
        &mut self,
        read: Read,
        took: std::time::Duration,
        loaded: Result<Plugin, crate::plugin::LoadError>,
        changes: &mut Changes,
    ) {
        // A version replaced while it compiled is never published: the
        // next rescan loads what is there now.
        if loaded.is_ok() && stamp_of(&read.path).is_none_or(|now| now != read.stamp) {
            tracing::info!(file = %read.path.display(), "superseded while it compiled: not loaded");
            return;
        }
        let earlier = self.files.get_mut(&read.file);
        let trying = earlier.and_then(|earlier| earlier.candidate.take());
        let (plugin, candidate) = match loaded {
            Ok(plugin) => {
                let commands: Vec<&str> =
                    plugin.commands().iter().map(|c| c.name.as_str()).collect();
                let ms = took.as_millis();
                let compiled = plugin.compiled_by().describe();
                crate::telemetry::reload(true);
                tracing::info!(plugin = plugin.name(), commands = ?commands, ms, compiled, "loaded plugin");
                let kind = if read.previous.is_some() {
                    "reloaded"
                } else {
                    "loaded"
                };
                events::record(
                    kind,
                    plugin.name(),
                    format!(
                        "version {}, commands {}, {ms} ms ({compiled})",
                        plugin.version(),
                        commands.join(" ")
                    ),
                );
                changes.loaded.push(read.name);
                if let Some(trying) = trying {
                    rollout::superseded(trying);
                }
                let plugin = Arc::new(plugin);
                match &read.previous {
                    Some(serving) => match self.admit(serving, plugin) {
                        Admission::AtOnce(plugin) => (Some(plugin), None),
                        Admission::OnTrial(candidate) => (read.previous, Some(candidate)),
                    },
                    None => (Some(plugin), None),
                }
            }
            Err(err) => {
                let fallback = match read.previous {
                    Some(_) => "the previous version keeps serving",
                    None => "not serving it",
                };
                crate::telemetry::reload(false);
                tracing::error!(file = %read.path.display(), "rejected plugin file: {err}; {fallback}");
                events::record("rejected", &read.name, format!("{err}; {fallback}"));
                (read.previous, trying)
            }
        };
        self.files.insert(
            read.file,
            LoadedFile {
                stamp: read.stamp,
                content: read.content,
                plugin,
                candidate,
                rolled_back: false,
            },
        );
    }

    /// Loads the plugin of `file` anew from its compiled code, with
    /// `source` granted in place of the directory granted at its guest
    /// path, and asks it for its commands again: the code is a runner and
    /// `source` its new source (`plugboard dev`). Returns the new version,
    /// to publish; if it fails (logged), the version serving keeps
    /// serving, with the source it had.
    pub async fn renew(&mut self, file: &str, source: DirGrant) -> Option<Arc<Plugin>> {
        let file = OsString::from(file);
        self.sources.insert(file.clone(), source);
        let terms = {
            let plugin = self.files.get(&file)?.plugin.as_ref()?;
            self.with_source(&file, plugin.terms().clone())
        };
        let loaded = self.files.get_mut(&file)?;
        let plugin = loaded.plugin.as_ref()?;
        match plugin.renewed(terms).await {
            Ok(renewed) => {
                crate::telemetry::reload(true);
                let renewed = Arc::new(renewed);
                loaded.plugin = Some(renewed.clone());
                loaded.candidate = None;
                Some(renewed)
            }
            Err(err) => {
                crate::telemetry::reload(false);
                tracing::error!(
                    plugin = plugin.name(),
                    "reload from its source rejected: {err}; the previous version keeps serving"
                );
                events::record(
                    "rejected",
                    plugin.name(),
                    format!("{err}; the previous version keeps serving"),
                );
                None
            }
        }
    }

    /// `terms` with the newest source the runner file was asked to load.
    fn with_source(&self, file: &OsString, terms: Terms) -> Terms {
        with_source(self.sources.get(file), terms)
    }

    /// Applies changed limits and plugin config to loaded plugins (without
    /// recompiling them).
    /// Returns whether any plugin changed.
    pub fn apply_limits(&mut self, terms_for: TermsFor<'_>) -> bool {
        let mut changed = false;
        for (file, loaded) in &mut self.files {
            let Some(plugin) = &loaded.plugin else {
                continue;
            };
            let terms = with_source(self.sources.get(file), terms_for(plugin.name()));
            if *plugin.terms() != terms {
                tracing::info!(plugin = plugin.name(), limits = ?terms.limits, "plugin settings changed");
                loaded.plugin = Some(Arc::new(plugin.with_terms(terms.clone())));
                changed = true;
            }
            if let Some(candidate) = &loaded.candidate
                && *candidate.plugin().terms() != terms
            {
                let plugin = Arc::new(candidate.plugin().with_terms(terms));
                loaded.candidate = Some(candidate.with_plugin(plugin));
                changed = true;
            }
        }
        changed
    }

    /// Gives quarantined plugins a clean record (SIGHUP's promise): the
    /// operator has looked, and the plugin gets another chance. Returns
    /// whether any was revived.
    pub fn revive_quarantined(&mut self) -> bool {
        let mut revived = false;
        for loaded in self.files.values_mut() {
            if let Some(candidate) = &loaded.candidate
                && candidate.plugin().is_disabled()
            {
                let plugin = candidate.plugin();
                let plugin = Arc::new(plugin.with_terms(plugin.terms().clone()));
                loaded.candidate = Some(candidate.with_plugin(plugin));
                revived = true;
            }
            let Some(plugin) = &loaded.plugin else {
                continue;
            };
            if plugin.is_disabled() {
                tracing::info!(plugin = plugin.name(), "SIGHUP: quarantined plugin revived");
                events::record("revived", plugin.name(), "SIGHUP: serving again");
                loaded.plugin = Some(Arc::new(plugin.with_terms(plugin.terms().clone())));
                revived = true;
            }
        }
        revived
    }

    /// The routing table for the plugins serving now, in file-name order.
    pub fn router(&self) -> Router {
        Router::new(self.serving())
    }

    /// The plugins serving now.
    pub fn plugins(&self) -> impl Iterator<Item = &Plugin> {
        self.files
            .values()
            .filter_map(|loaded| loaded.plugin.as_deref())
    }

    /// Names of the plugins serving now.
    pub fn plugin_names(&self) -> impl Iterator<Item = &str> {
        self.files
            .values()
            .filter_map(|loaded| loaded.plugin.as_deref().map(Plugin::name))
    }
}

/// What tells a file's versions apart without reading it.
type Stamp = (u64, Option<SystemTime>);

fn stamp(meta: &std::fs::Metadata) -> Stamp {
    (meta.len(), meta.modified().ok())
}

/// The stamp of the file at `path` now, if there is one.
fn stamp_of(path: &Path) -> Option<Stamp> {
    std::fs::metadata(path).ok().map(|meta| stamp(&meta))
}

/// `terms` with `source` (a runner's source directory) granted in place of
/// any grant at the same guest path.
fn with_source(source: Option<&DirGrant>, mut terms: Terms) -> Terms {
    let Some(source) = source else {
        return terms;
    };
    let mut grants = Grants::clone(&terms.grants);
    grants.dirs.retain(|dir| dir.guest != source.guest);
    grants.dirs.push(source.clone());
    terms.grants = Arc::new(grants);
    terms
}

fn content_hash(bytes: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::plugin::Limits;
    use crate::plugin::test_components::{Handle, component, runtime};

    fn defaults(_: &str) -> Terms {
        Terms::default()
    }

    fn write(dir: &Path, file: &str, bytes: &[u8]) {
        std::fs::write(dir.join(file), bytes).unwrap();
    }

    fn serving(plugins: &PluginDir) -> Vec<&str> {
        plugins.plugin_names().collect()
    }

    fn the_plugin(plugins: &PluginDir, file: &str) -> Arc<Plugin> {
        let loaded = plugins
            .files
            .get(&OsString::from(file))
            .expect("known file");
        loaded.plugin.clone().expect("a serving version")
    }

    #[tokio::test]
    async fn new_files_load_in_name_order_and_other_files_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "b.wasm", &component(&["b"], Handle::Reply("b")));
        write(dir.path(), "a.wasm", &component(&["a"], Handle::Reply("a")));
        write(dir.path(), "notes.txt", b"not a plugin");
        let mut plugins = PluginDir::new(dir.path().to_owned());
        let changes = plugins.rescan(&runtime(), &defaults).await.unwrap();
        assert_eq!(changes.loaded, ["a", "b"]);
        assert_eq!(serving(&plugins), ["a", "b"]);
    }

    #[tokio::test]
    async fn a_broken_version_leaves_the_previous_one_serving() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = runtime();
        write(dir.path(), "a.wasm", &component(&["a"], Handle::Reply("a")));
        let mut plugins = PluginDir::new(dir.path().to_owned());
        plugins.rescan(&runtime, &defaults).await.unwrap();
        let before = the_plugin(&plugins, "a.wasm");
        write(dir.path(), "a.wasm", b"\0asm broken");
        let changes = plugins.rescan(&runtime, &defaults).await.unwrap();
        assert!(!changes.alter_routes(), "{changes:?}");
        assert!(Arc::ptr_eq(&before, &the_plugin(&plugins, "a.wasm")));
    }

    #[tokio::test]
    async fn the_same_bytes_rewritten_are_not_loaded_again() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = runtime();
        let bytes = component(&["a"], Handle::Reply("a"));
        write(dir.path(), "a.wasm", &bytes);
        let mut plugins = PluginDir::new(dir.path().to_owned());
        plugins.rescan(&runtime, &defaults).await.unwrap();
        let before = the_plugin(&plugins, "a.wasm");
        write(dir.path(), "a.wasm", &bytes);
        // A new modification time, whatever the filesystem's resolution.
        let file = std::fs::File::options()
            .write(true)
            .open(dir.path().join("a.wasm"))
            .unwrap();
        file.set_modified(SystemTime::now() + Duration::from_secs(5))
            .unwrap();
        let changes = plugins.rescan(&runtime, &defaults).await.unwrap();
        assert!(!changes.alter_routes(), "{changes:?}");
        assert!(Arc::ptr_eq(&before, &the_plugin(&plugins, "a.wasm")));
    }

    #[tokio::test]
    async fn a_changed_file_is_loaded_and_a_removed_one_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = runtime();
        write(dir.path(), "a.wasm", &component(&["a"], Handle::Reply("1")));
        write(dir.path(), "b.wasm", &component(&["b"], Handle::Reply("b")));
        let mut plugins = PluginDir::new(dir.path().to_owned());
        plugins.rescan(&runtime, &defaults).await.unwrap();
        write(
            dir.path(),
            "a.wasm",
            &component(&["a", "a2"], Handle::Reply("2")),
        );
        std::fs::remove_file(dir.path().join("b.wasm")).unwrap();
        let changes = plugins.rescan(&runtime, &defaults).await.unwrap();
        assert_eq!(changes.loaded, ["a"]);
        assert_eq!(changes.removed, ["b"]);
        assert_eq!(serving(&plugins), ["a"]);
        assert_eq!(the_plugin(&plugins, "a.wasm").commands().len(), 2);
    }

    #[tokio::test]
    async fn new_limits_apply_without_recompiling_and_only_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.wasm", &component(&["a"], Handle::Reply("a")));
        let mut plugins = PluginDir::new(dir.path().to_owned());
        plugins.rescan(&runtime(), &defaults).await.unwrap();
        assert!(!plugins.apply_limits(&defaults));
        let strict = |_: &str| Terms {
            limits: Limits {
                max_reply_bytes: 1,
                ..Limits::default()
            },
            ..Terms::default()
        };
        assert!(plugins.apply_limits(&strict));
        let plugin = the_plugin(&plugins, "a.wasm");
        assert_eq!(plugin.terms().limits.max_reply_bytes, 1);
    }
}
