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
//! The runners' sources are in `python/` and `js/` beside this file, the
//! Python runner's build in `python.rs`.
//!
//! Runners are cached in the user's cache directory, keyed by everything
//! they are built from: the toolchain's version, the runner's sources, the
//! WIT contract, and the project's dependency list (`requirements.txt`, the
//! `dependencies` of `package.json`), which a runner bundles: a project
//! whose list changes gets a runner of its own, once.

mod python;

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
    (
        "plugboard.py",
        include_str!("../../../../plugins/python/sdk/plugboard.py"),
    ),
    ("preload.py", PYTHON_PRELOAD),
];
/// The standard-library modules every Python runner holds.
const PYTHON_PRELOAD: &str = include_str!("python/preload.py");

const JS_RUNNER: &[(&str, &str)] = &[
    ("runner.js", include_str!("js/runner.js")),
    ("rewrite.js", include_str!("js/rewrite.js")),
    (
        "plugboard.js",
        include_str!("../../../../plugins/js/sdk/plugboard.js"),
    ),
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
        Language::Python => python::python_imports(dir),
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
            python::build_python(&runners, &work, dir, requirements, &imports, &partial).await
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
    let package: serde_json::Value = serde_json::from_str(package)?;
    let Some(dependencies) = package.get("dependencies") else {
        return Ok(Vec::new());
    };
    let dependencies = dependencies
        .as_object()
        .context("`dependencies` is not an object")?;
    let mut entries: Vec<String> = dependencies
        .iter()
        .map(|(name, version)| format!("{}:{version}", serde_json::Value::from(name.as_str())))
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
}
