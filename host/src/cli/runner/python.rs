//! The Python runner: how it is built (componentize-py over `runner.py`,
//! with the project's requirements and the standard-library modules its
//! source imports in the snapshot), and which modules those are.

use std::path::{Path, PathBuf};

use tokio::process::Command;

use super::{COMPONENTIZE_PY, PYTHON_PRELOAD, PYTHON_RUNNER, run, write_files, write_wit};

/// The Python runner: componentize-py (in a virtual environment of the
/// runners' own) over `runner.py`, with the project's requirements (pure
/// Python: no package built for WASI is on PyPI) installed beside it and
/// imported at build time, so they are in the snapshot.
pub(super) async fn build_python(
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
    "plugboard",
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
pub(super) fn python_imports(dir: &Path) -> Vec<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
