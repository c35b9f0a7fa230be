//! `plugboard new`: a plugin project that builds and loads as generated.
//!
//! The scaffold is self-contained: it carries a copy of the WIT contract this
//! binary serves (so it always matches the server that made it) and gets its
//! toolchain from the language's registry (wit-bindgen from crates.io,
//! componentize-py from PyPI, componentize-js from npm, at the versions this
//! repository's own plugins are built and tested with), so it builds anywhere,
//! not only inside this repository. It answers one command named after the
//! plugin (so two new plugins never fight over a command), which shows the
//! whole path from a message to a reply. A Rust project gets a copy of the
//! SDK (`sdk/`), which is not on crates.io; its Makefile calls the
//! `plugboard` that generated it.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The contract this binary serves, copied into every scaffold.
const WIT: &str = include_str!("../../../wit/plugin.wit");

/// The Rust SDK, copied into Rust scaffolds with its WIT path pointed at
/// the project's `wit/`.
const SDK: &str = include_str!("../../../plugins/sdk/src/lib.rs");
const SDK_WIT_PATH: &str = "path: \"../../wit\",";

/// Languages `plugboard new` can scaffold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

/// Creates `dir/name` with a plugin in `lang`; returns the new directory.
pub fn new_plugin(name: &str, dir: &Path, lang: Lang) -> anyhow::Result<PathBuf> {
    check_name(name)?;
    let root = dir.join(name);
    if root.exists() {
        bail!(
            "{} already exists: choose another name or directory",
            root.display()
        );
    }
    for (path, contents) in scaffold_files(name, lang) {
        let path = root.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, contents)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(root)
}

/// A name is a crate name and a file name: lowercase letters, digits, `-`.
fn check_name(name: &str) -> anyhow::Result<()> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!(
            "invalid plugin name {name:?}: use lowercase letters, digits and '-', starting with a letter"
        );
    }
    Ok(())
}

/// A language's scaffold: template files and the `.gitignore`. Every
/// scaffold also gets the contract, `wit/plugin.wit`. The templates are
/// files under `templates/<lang>/`, laid out as the project they make, so
/// they read (and highlight) as what they are.
struct Template {
    files: &'static [(&'static str, &'static str)],
    gitignore: &'static str,
}

impl Lang {
    fn template(self) -> &'static Template {
        match self {
            Lang::Rust => &Template {
                files: &[
                    ("Cargo.toml", include_str!("templates/rust/Cargo.toml")),
                    ("src/lib.rs", include_str!("templates/rust/src/lib.rs")),
                    (
                        "sdk/Cargo.toml",
                        include_str!("templates/rust/sdk/Cargo.toml"),
                    ),
                    ("Makefile", include_str!("templates/rust/Makefile")),
                    ("README.md", include_str!("templates/rust/README.md")),
                ],
                gitignore: "/target\nCargo.lock\n",
            },
            Lang::Python => &Template {
                files: &[
                    ("app.py", include_str!("templates/python/app.py")),
                    (
                        "plugboard.py",
                        include_str!("../../../plugins/python/sdk/plugboard.py"),
                    ),
                    ("Makefile", include_str!("templates/python/Makefile")),
                    ("README.md", include_str!("templates/python/README.md")),
                ],
                gitignore: "*.wasm\n__pycache__/\n.venv/\n",
            },
            Lang::Js => &Template {
                files: &[
                    ("plugin.js", include_str!("templates/js/plugin.js")),
                    ("build.mjs", include_str!("templates/js/build.mjs")),
                    (
                        "plugboard.js",
                        include_str!("../../../plugins/js/sdk/plugboard.js"),
                    ),
                    ("package.json", include_str!("templates/js/package.json")),
                    ("Makefile", include_str!("templates/js/Makefile")),
                    ("README.md", include_str!("templates/js/README.md")),
                ],
                gitignore: "*.wasm\nnode_modules/\n.plugboard-entry.js\n",
            },
        }
    }
}

/// The scaffold's files with `{{name}}` (the project, which is also its
/// command), `{{file}}` (the `.wasm` file's stem, which names the plugin:
/// Cargo turns `-` into `_`, the other languages follow), `{{type}}` (a Rust
/// type name), `{{plugboard}}` (this binary), `{{wit}}` and `{{sdk}}` (the
/// JavaScript SDK) filled in.
fn scaffold_files(name: &str, lang: Lang) -> Vec<(&'static str, String)> {
    let file = name.replace('-', "_");
    let plugboard = this_binary();
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{file}}", &file)
            .replace("{{type}}", &type_name(name))
            .replace("{{plugboard}}", &plugboard)
            .replace("{{wit}}", "./wit")
            .replace("{{sdk}}", "./plugboard.js")
    };
    let template = lang.template();
    let mut files: Vec<(&'static str, String)> = template
        .files
        .iter()
        .map(|(path, text)| (*path, fill(text)))
        .collect();
    files.push(("wit/plugin.wit", WIT.to_owned()));
    files.push((".gitignore", template.gitignore.to_owned()));
    if lang == Lang::Rust {
        files.push((
            "sdk/src/lib.rs",
            SDK.replace(SDK_WIT_PATH, "path: \"../wit\","),
        ));
    }
    files
}

/// `hello-world2` as a Rust type: `HelloWorld2`.
fn type_name(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect()
}

/// This binary's path, for the generated Makefiles (`PLUGBOARD ?= ...`):
/// nothing else may have put a `plugboard` on PATH. Plain `plugboard` if
/// the path cannot be known or written in a Makefile as is.
fn this_binary() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|path| path.to_str().map(str::to_owned))
        .filter(|path| !path.contains([' ', '$', '#', '\'', '"']))
        .unwrap_or_else(|| "plugboard".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_crate_and_file_names() {
        assert!(check_name("hello-world2").is_ok());
        for bad in ["", "Hello", "2fast", "a b", "a_b", "../x"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_sdk_copy_reads_the_projects_wit() {
        assert!(SDK.contains(SDK_WIT_PATH));
        let files = scaffold_files("a1", Lang::Rust);
        let sdk = files.iter().find(|(path, _)| *path == "sdk/src/lib.rs");
        assert!(sdk.is_some_and(|(_, text)| text.contains("path: \"../wit\",")));
    }

    #[test]
    fn type_names_are_camel_case() {
        assert_eq!(type_name("hello-world2"), "HelloWorld2");
        assert_eq!(type_name("a1"), "A1");
    }

    #[test]
    fn refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        new_plugin("hi", dir.path(), Lang::Rust).unwrap();
        let err = new_plugin("hi", dir.path(), Lang::Rust).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
    }
}
