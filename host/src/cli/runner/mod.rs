//! Runners: how `plugboard dev` serves a Python or JavaScript project
//! without componentizing it on every edit.
//!
//! Componentizing snapshots a whole interpreter (componentize-py,
//! componentize-js), and the server then compiles all of it again: 13-14 s
//! from a saved edit to the new reply. A runner is a component built once,
//! with the same toolchains, that loads the project's source when an
//! instance starts, from the project directory granted read-only at
//! [`SOURCE_DIR`]: an edit is then only a new instance (a few
//! milliseconds), and the command list is asked again (`Control::Renew`).
//! The runner's sources are in `python/` and `js/` beside this file.
//!
//! Runners are cached in the user's cache directory, keyed by everything
//! they are built from: the toolchain's version, the runner's sources, the
//! WIT contract, and the project's dependency list (`requirements.txt`, the
//! `dependencies` of `package.json`), which a runner bundles: a project
//! whose list changes gets a runner of its own, once.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use tokio::process::Command;

/// Where a runner finds the project's source: the guest path of the
/// read-only directory grant `plugboard dev` gives it.
pub const SOURCE_DIR: &str = "/plugin-src";

/// The componentize-py the Python runner is built with: the version
/// `plugboard new` projects pin.
const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

/// The contract the runners serve, and the WASI packages it uses.
const PLUGIN_WIT: &str = include_str!("../../../../wit/plugin.wit");
const WASI_WIT: &[(&str, &str)] = &[
    ("cli", include_str!("../../../../wit/deps/cli/package.wit")),
    (
        "clocks",
        include_str!("../../../../wit/deps/clocks/package.wit"),
    ),
    (
        "filesystem",
        include_str!("../../../../wit/deps/filesystem/package.wit"),
    ),
    ("io", include_str!("../../../../wit/deps/io/package.wit")),
    (
        "random",
        include_str!("../../../../wit/deps/random/package.wit"),
    ),
    (
        "sockets",
        include_str!("../../../../wit/deps/sockets/package.wit"),
    ),
];

const PYTHON_RUNNER: &[(&str, &str)] = &[
    ("runner.py", include_str!("python/runner.py")),
    ("preload.py", PYTHON_PRELOAD),
];
/// The standard-library modules every Python runner holds.
const PYTHON_PRELOAD: &str = include_str!("python/preload.py");

const JS_RUNNER: &[(&str, &str)] = &[
    ("runner.js", include_str!("js/runner.js")),
    ("rewrite.js", include_str!("js/rewrite.js")),
    ("build.mjs", include_str!("js/build.mjs")),
    ("wit/runner.wit", include_str!("js/runner.wit")),
];
const JS_TOOLCHAIN: &[(&str, &str)] = &[
    ("package.json", include_str!("js/package.json")),
    ("package-lock.json", include_str!("js/package-lock.json")),
];

/// A language a runner serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    Python,
    JavaScript,
}

impl Language {
    /// The language of the project in `dir`, if a runner serves it: a
    /// Python project has `app.py`, a JavaScript one `plugin.js`.
    pub fn of_project(dir: &Path) -> Option<Self> {
        if dir.join("app.py").is_file() {
            Some(Self::Python)
        } else if dir.join("plugin.js").is_file() {
            Some(Self::JavaScript)
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Python => "Python",
            Self::JavaScript => "JavaScript",
        }
    }

    /// The project's dependency list, which a runner bundles: a change to
    /// it is a new runner, to anything else a new source.
    pub fn dependency_file(self) -> &'static str {
        match self {
            Self::Python => "requirements.txt",
            Self::JavaScript => "package.json",
        }
    }
}

/// The name in the cache of the runner the project in `dir` needs now: it
/// changes with its dependency list and, for Python, with the modules its
/// source imports that the runner's snapshot does not hold.
pub fn runner_key(language: Language, dir: &Path) -> anyhow::Result<String> {
    let dependencies = dependencies(language, dir)?;
    Ok(key(
        language,
        dependencies.as_deref(),
        &imports(language, dir),
    ))
}

/// The modules a project's source imports that a runner must have in its
/// snapshot: Python's, beyond `preload.py`'s; none for JavaScript, whose
/// runner has every built-in module.
fn imports(language: Language, dir: &Path) -> Vec<String> {
    match language {
        Language::Python => python_imports(dir),
        Language::JavaScript => Vec::new(),
    }
}

/// The runner for the project in `dir`, in the user's cache under `cache`:
/// built first if the cache has none for its dependencies.
pub async fn runner_for(language: Language, dir: &Path, cache: &Path) -> anyhow::Result<PathBuf> {
    let dependencies = dependencies(language, dir)?;
    let imports = imports(language, dir);
    let key = key(language, dependencies.as_deref(), &imports);
    let runners = cache.join("runners");
    let wasm = runners.join(format!("{}-{key}.wasm", language.name().to_lowercase()));
    if wasm.is_file() {
        return Ok(wasm);
    }
    // One build of a runner at a time, across processes (two `dev`s, the
    // tests): the second finds the first's.
    std::fs::create_dir_all(&runners)
        .with_context(|| format!("cannot create {}", runners.display()))?;
    let _building = lock(runners.join(format!("{key}.lock"))).await?;
    if wasm.is_file() {
        return Ok(wasm);
    }
    tracing::info!(
        project = %dir.display(),
        "building the {} runner for this dependency list (once; up to a minute)",
        language.name()
    );
    let work = runners.join(format!("build-{key}"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let partial = wasm.with_extension("partial");
    let built = match language {
        Language::Python => {
            let requirements = dependencies.is_some();
            build_python(&runners, &work, dir, requirements, &imports, &partial).await
        }
        Language::JavaScript => {
            build_js(&runners, &work, dir, dependencies.is_some(), &partial).await
        }
    };
    let _ = std::fs::remove_dir_all(&work);
    built?;
    std::fs::rename(&partial, &wasm).context("cannot put the runner in the cache")?;
    Ok(wasm)
}

/// An exclusive lock on the file at `path`, held until dropped.
async fn lock(path: PathBuf) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    let file = std::fs::File::create(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    tokio::task::spawn_blocking(move || {
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, err)| anyhow::anyhow!("cannot lock {}: {err}", path.display()))
    })
    .await?
}

/// The dependencies the project lists, as the runner bundles them: the
/// requirements file, or `package.json`'s `dependencies` entry (not its
/// scripts, name or devDependencies, which do not change a runner).
fn dependencies(language: Language, dir: &Path) -> anyhow::Result<Option<String>> {
    let file = dir.join(language.dependency_file());
    let Ok(text) = std::fs::read_to_string(&file) else {
        return Ok(None);
    };
    Ok(match language {
        Language::Python => {
            let listed: Vec<&str> = text
                .lines()
                .map(|line| line.split('#').next().unwrap_or("").trim())
                .filter(|line| !line.is_empty())
                .collect();
            (!listed.is_empty()).then(|| listed.join("\n"))
        }
        Language::JavaScript => {
            let dependencies = package_dependencies(&text)
                .with_context(|| format!("cannot read {}", file.display()))?;
            (!dependencies.is_empty()).then(|| dependencies.join("\n"))
        }
    })
}

/// `"name": "version"` of the `dependencies` object of a `package.json`.
fn package_dependencies(package: &str) -> anyhow::Result<Vec<String>> {
    let Some(start) = package.find("\"dependencies\"") else {
        return Ok(Vec::new());
    };
    let rest = &package[start..];
    let open = rest.find('{').context("`dependencies` is not an object")?;
    let close = rest[open..]
        .find('}')
        .context("`dependencies` is not closed")?;
    let mut entries: Vec<String> = rest[open + 1..open + close]
        .split(',')
        .map(|entry| entry.split_whitespace().collect::<String>())
        .filter(|entry| !entry.is_empty())
        .collect();
    entries.sort();
    Ok(entries)
}

/// What a runner is built from, hashed: its name in the cache.
fn key(language: Language, dependencies: Option<&str>, imports: &[String]) -> String {
    let mut hasher = Sha256::new();
    let mut add = |part: &str| {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    };
    add(language.name());
    add(PLUGIN_WIT);
    let sources = match language {
        Language::Python => {
            add(COMPONENTIZE_PY);
            PYTHON_RUNNER
        }
        Language::JavaScript => {
            JS_TOOLCHAIN.iter().for_each(|(_, text)| add(text));
            JS_RUNNER
        }
    };
    sources.iter().for_each(|(_, text)| add(text));
    add(dependencies.unwrap_or(""));
    add(&imports.join("\n"));
    let digest = hasher.finalize();
    digest[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Writes `files` under `dir`.
fn write_files(dir: &Path, files: &[(&str, &str)]) -> anyhow::Result<()> {
    for (path, text) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The contract, laid out for a world that includes it: `plugin.wit` as a
/// dependency package beside the WASI ones.
fn write_wit(wit: &Path, plugin_as_dependency: bool) -> anyhow::Result<()> {
    let plugin = match plugin_as_dependency {
        true => "deps/plugboard-plugin/plugin.wit",
        false => "plugin.wit",
    };
    write_files(wit, &[(plugin, PLUGIN_WIT)])?;
    for (name, text) in WASI_WIT {
        write_files(wit, &[(&format!("deps/{name}/package.wit"), text)])?;
    }
    Ok(())
}

/// Runs `command`, and says what it printed if it fails.
async fn run(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let output = command
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("cannot run {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// The Python runner: componentize-py (in a virtual environment of the
/// runners' own) over `runner.py`, with the project's requirements (pure
/// Python: no package built for WASI is on PyPI) installed beside it and
/// imported at build time, so they are in the snapshot.
async fn build_python(
    runners: &Path,
    work: &Path,
    project: &Path,
    has_requirements: bool,
    imports: &[String],
    output: &Path,
) -> anyhow::Result<()> {
    let venv = runners.join("python-toolchain");
    let componentize = venv.join("bin/componentize-py");
    if !componentize.is_file() {
        run(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            "python3 -m venv (Python 3 with venv is needed for Python plugins)",
        )
        .await?;
        run(
            Command::new(venv.join("bin/pip")).args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                COMPONENTIZE_PY,
            ]),
            "pip install componentize-py",
        )
        .await?;
    }
    write_files(work, PYTHON_RUNNER)?;
    std::fs::write(work.join("preload_project.py"), preload_project(imports))?;
    write_wit(&work.join("wit"), false)?;
    let mut paths = vec![".".to_owned()];
    if has_requirements {
        let site = work.join("site");
        run(
            Command::new(venv.join("bin/pip"))
                .args([
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--target",
                ])
                .arg(&site)
                .args([
                    "--only-binary=:all:",
                    "--platform",
                    "any",
                    "--python-version",
                    "3.14",
                    "--implementation",
                    "py",
                    "--abi",
                    "none",
                    "-r",
                ])
                .arg(project.join("requirements.txt")),
            "pip install -r requirements.txt (pure-Python packages only: \
             none built for WebAssembly is on PyPI)",
        )
        .await?;
        std::fs::write(work.join("preload_deps.py"), preload_deps(&site)?)?;
        paths.push(site.to_string_lossy().into_owned());
    }
    let mut componentize_run = Command::new(&componentize);
    componentize_run.current_dir(work).args([
        "-q",
        "-d",
        "wit",
        "-w",
        "batched-plugin",
        "componentize",
        "runner",
    ]);
    for path in &paths {
        componentize_run.args(["-p", path]);
    }
    componentize_run.arg("-o").arg(output);
    run(&mut componentize_run, "componentize-py").await
}

/// The modules the project's source imports, each imported at build time
/// if it can be (a name that is not a module is left for the source to
/// report when it runs), so that the snapshot holds them.
fn preload_project(imports: &[String]) -> String {
    let mut text =
        String::from("\"\"\"The modules the project imports, kept in the snapshot.\"\"\"\n");
    for module in imports {
        text.push_str(&format!(
            "try:\n    import {module}  # noqa: F401\nexcept Exception:\n    pass\n"
        ));
    }
    text
}

/// Modules a runner's snapshot holds whatever the project: the runner's own
/// imports and the bindings'.
const IN_EVERY_RUNNER: &[&str] = &[
    "__future__",
    "importlib",
    "os",
    "sys",
    "time",
    "traceback",
    "wit_world",
    "componentize_py_types",
    "componentize_py_runtime",
    "componentize_py_async_support",
];

/// The modules (dotted names) imported anywhere in the project's Python
/// files that the runner does not already hold (`preload.py`, the
/// runner's own) and that are not the project's own modules: what an edit
/// that adds `import sqlite3` must add to the runner. Sorted, so that the
/// same imports are the same runner.
fn python_imports(dir: &Path) -> Vec<String> {
    let preloaded = python_modules_imported(PYTHON_PRELOAD);
    let mut files = Vec::new();
    python_files(dir, &mut files);
    let local = |top: &str| dir.join(format!("{top}.py")).is_file() || dir.join(top).is_dir();
    let mut imports = std::collections::BTreeSet::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for module in python_modules_imported(&text) {
            let top = module.split('.').next().unwrap_or_default();
            if preloaded.contains(&module) || IN_EVERY_RUNNER.contains(&top) || local(top) {
                continue;
            }
            imports.insert(module);
        }
    }
    imports.into_iter().collect()
}

/// The Python files under `dir`, not in hidden or generated directories.
fn python_files(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            let skipped = ["__pycache__", "node_modules", "target", "site-packages"];
            if !name.starts_with('.') && !skipped.contains(&name.as_ref()) {
                python_files(&path, files);
            }
        } else if name.ends_with(".py") {
            files.push(path);
        }
    }
}

/// The absolute modules `import` and `from ... import` statements of
/// `source` name (a `from a.b import c` names `a.b`, and `a.b.c` in case
/// `c` is a module); relative imports are the project's own.
fn python_modules_imported(source: &str) -> std::collections::BTreeSet<String> {
    let is_module = |name: &str| {
        !name.is_empty()
            && name.split('.').all(|part| {
                !part.is_empty() && part.chars().all(|c| c.is_alphanumeric() || c == '_')
            })
    };
    let mut modules = std::collections::BTreeSet::new();
    for line in source.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if let Some(names) = line.strip_prefix("import ") {
            for name in names.split(',') {
                let name = name.split_whitespace().next().unwrap_or_default();
                if is_module(name) {
                    modules.insert(name.to_owned());
                }
            }
        } else if let Some(rest) = line.strip_prefix("from ") {
            let mut words = rest.split_whitespace();
            let (Some(module), Some("import")) = (words.next(), words.next()) else {
                continue;
            };
            if !is_module(module) {
                continue;
            }
            modules.insert(module.to_owned());
            if preloaded_already(module) {
                continue;
            }
            let names = words.collect::<Vec<_>>().join(" ");
            for name in names.trim_matches(|c| c == '(' || c == ')').split(',') {
                let name = name.split_whitespace().next().unwrap_or_default();
                if is_module(name) && name != "*" {
                    modules.insert(format!("{module}.{name}"));
                }
            }
        }
    }
    modules
}

/// Whether `module` is one `preload.py` imports: then a name imported from
/// it is taken for an attribute, not a submodule to add.
fn preloaded_already(module: &str) -> bool {
    PYTHON_PRELOAD.lines().any(|line| {
        let line = line.split('#').next().unwrap_or_default();
        line.strip_prefix("import ")
            .is_some_and(|names| names.split(',').any(|name| name.trim() == module))
    })
}

/// `import` lines for the top-level modules of the packages installed in
/// `site`, so that the runner's snapshot holds them.
fn preload_deps(site: &Path) -> anyhow::Result<String> {
    let mut names = std::collections::BTreeSet::new();
    for info in std::fs::read_dir(site)?.flatten() {
        let info = info.path();
        if info.extension().is_none_or(|ext| ext != "dist-info") {
            continue;
        }
        if let Ok(top) = std::fs::read_to_string(info.join("top_level.txt")) {
            names.extend(top.split_whitespace().map(str::to_owned));
            continue;
        }
        let record = std::fs::read_to_string(info.join("RECORD")).unwrap_or_default();
        for line in record.lines() {
            let first = line.split(',').next().unwrap_or("");
            let first = first.split('/').next().unwrap_or("");
            if let Some(module) = first.strip_suffix(".py") {
                names.insert(module.to_owned());
            } else if site.join(first).join("__init__.py").is_file() {
                names.insert(first.to_owned());
            }
        }
    }
    let imports: String = names
        .iter()
        .filter(|name| {
            !name.starts_with('_') && name.chars().all(|c| c.is_alphanumeric() || c == '_')
        })
        .map(|name| format!("import {name}  # noqa: F401\n"))
        .collect();
    Ok(format!(
        "\"\"\"The requirements' top-level modules, imported into the snapshot.\"\"\"\n{imports}"
    ))
}

/// The JavaScript runner: `build.mjs` (rolldown, then componentize-js)
/// with the toolchain installed once from its lock file, and the project's
/// `dependencies` (installed in its `node_modules`) bundled in.
async fn build_js(
    runners: &Path,
    work: &Path,
    project: &Path,
    has_dependencies: bool,
    output: &Path,
) -> anyhow::Result<()> {
    let toolchain = runners.join("js-toolchain");
    let stamp = toolchain.join(".installed");
    let lock = JS_TOOLCHAIN
        .iter()
        .map(|(_, text)| *text)
        .collect::<String>();
    let installed = std::fs::read_to_string(&stamp).is_ok_and(|text| text == key_of(&lock));
    if !installed {
        write_files(&toolchain, JS_TOOLCHAIN)?;
        run(
            Command::new("npm").current_dir(&toolchain).args([
                "ci",
                "--silent",
                "--no-audit",
                "--no-fund",
            ]),
            "npm ci (Node.js with npm is needed for JavaScript plugins)",
        )
        .await?;
        std::fs::write(&stamp, key_of(&lock))?;
    }
    // Beside the toolchain's node_modules, so that build.mjs resolves it.
    let build = toolchain.join(work.file_name().unwrap_or_default());
    let _ = std::fs::remove_dir_all(&build);
    write_files(&build, JS_RUNNER)?;
    write_wit(&build.join("wit"), true)?;
    if has_dependencies && !project.join("node_modules").is_dir() {
        run(
            Command::new("npm").current_dir(project).args([
                "install",
                "--omit=dev",
                "--silent",
                "--no-audit",
                "--no-fund",
            ]),
            "npm install (the project's dependencies)",
        )
        .await?;
    }
    let mut node = Command::new("node");
    node.arg(build.join("build.mjs")).arg(output);
    if has_dependencies {
        node.arg(project);
    }
    let built = run(&mut node, "the JavaScript runner's build (node build.mjs)").await;
    let _ = std::fs::remove_dir_all(&build);
    built
}

fn key_of(text: &str) -> String {
    format!("{:x}", Sha256::digest(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dependency_list_is_what_keys_a_runner() {
        let package = r#"{ "name": "x", "scripts": { "build": "node build.mjs" },
            "dependencies": { "ms": "2.1.3",  "escape-goat": "4.0.0" },
            "devDependencies": { "@bytecodealliance/componentize-js": "0.23.0" } }"#;
        assert_eq!(
            package_dependencies(package).unwrap(),
            ["\"escape-goat\":\"4.0.0\"", "\"ms\":\"2.1.3\""]
        );
        assert!(
            package_dependencies(r#"{ "name": "x" }"#)
                .unwrap()
                .is_empty()
        );
        let none = key(Language::JavaScript, None, &[]);
        assert_eq!(none, key(Language::JavaScript, None, &[]));
        assert_ne!(
            none,
            key(Language::JavaScript, Some("\"ms\":\"2.1.3\""), &[])
        );
        assert_ne!(none, key(Language::Python, None, &[]));
        let sqlite = ["sqlite3".to_owned()];
        assert_ne!(
            key(Language::Python, None, &[]),
            key(Language::Python, None, &sqlite)
        );
    }

    #[test]
    fn a_projects_imports_beyond_the_runners_own_are_found() {
        let source = "import wit_world\nimport math, sqlite3 as db\nfrom xml.etree import ElementTree\n\
                      from . import helpers\nfrom json import loads  # preloaded\n\
                      def f():\n    import urllib.request\n# import commented\n";
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.py"), source).unwrap();
        std::fs::write(dir.path().join("helpers.py"), "import helpers2\n").unwrap();
        std::fs::create_dir(dir.path().join("helpers2")).unwrap();
        assert_eq!(
            python_imports(dir.path()),
            [
                "sqlite3",
                "urllib.request",
                "xml.etree",
                "xml.etree.ElementTree"
            ]
        );
        let template = include_str!("../templates/python/app.py");
        std::fs::write(dir.path().join("app.py"), template).unwrap();
        std::fs::remove_file(dir.path().join("helpers.py")).unwrap();
        assert!(
            python_imports(dir.path()).is_empty(),
            "the template shares the base runner"
        );
    }
}
