//! `plugboard new`: a plugin project that builds and loads as generated.
//!
//! The scaffold is self-contained: it carries a copy of the WIT contract this
//! binary serves (so it always matches the server that made it) and gets its
//! toolchain from the language's registry (wit-bindgen from crates.io,
//! componentize-py from PyPI, componentize-js from npm, at the versions this
//! repository's own plugins are built and tested with), so it builds anywhere,
//! not only inside this repository. It answers a `hello` command, which shows
//! the whole path from a message to a reply.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The contract this binary serves, copied into every scaffold.
const WIT: &str = include_str!("../../../wit/plugin.wit");

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
    for (path, contents) in scaffold_files(name, lang.template()) {
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
                    ("Makefile", include_str!("templates/rust/Makefile")),
                    ("README.md", include_str!("templates/rust/README.md")),
                ],
                gitignore: "/target\nCargo.lock\n",
            },
            Lang::Python => &Template {
                files: &[
                    ("app.py", include_str!("templates/python/app.py")),
                    ("Makefile", include_str!("templates/python/Makefile")),
                    ("README.md", include_str!("templates/python/README.md")),
                ],
                gitignore: "*.wasm\n__pycache__/\n",
            },
            Lang::Js => &Template {
                files: &[
                    ("plugin.js", include_str!("templates/js/plugin.js")),
                    ("build.mjs", include_str!("templates/js/build.mjs")),
                    ("package.json", include_str!("templates/js/package.json")),
                    ("Makefile", include_str!("templates/js/Makefile")),
                    ("README.md", include_str!("templates/js/README.md")),
                ],
                gitignore: "*.wasm\nnode_modules/\n",
            },
        }
    }
}

/// The scaffold's files with `{{name}}` (the project) and `{{file}}` (the
/// `.wasm` file's stem, which names the plugin: Cargo turns `-` into `_`, the
/// other languages follow) filled in.
fn scaffold_files(name: &str, template: &Template) -> Vec<(&'static str, String)> {
    let file = name.replace('-', "_");
    let fill = |text: &str| text.replace("{{name}}", name).replace("{{file}}", &file);
    let common = [
        ("wit/plugin.wit", WIT.to_owned()),
        (".gitignore", template.gitignore.to_owned()),
    ];
    template
        .files
        .iter()
        .map(|(path, text)| (*path, fill(text)))
        .chain(common)
        .collect()
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
    fn refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        new_plugin("hi", dir.path(), Lang::Rust).unwrap();
        let err = new_plugin("hi", dir.path(), Lang::Rust).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
    }
}
