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
const WIT: &str = include_str!("../../wit/plugin.wit");

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
/// scaffold also gets the contract, `wit/plugin.wit`.
struct Template {
    files: &'static [(&'static str, &'static str)],
    gitignore: &'static str,
}

impl Lang {
    fn template(self) -> &'static Template {
        match self {
            Lang::Rust => &Template {
                files: &[
                    ("Cargo.toml", RUST_CARGO_TOML),
                    ("src/lib.rs", RUST_LIB_RS),
                    ("Makefile", RUST_MAKEFILE),
                    ("README.md", RUST_README),
                ],
                gitignore: "/target\nCargo.lock\n",
            },
            Lang::Python => &Template {
                files: &[
                    ("app.py", PYTHON_APP),
                    ("Makefile", PYTHON_MAKEFILE),
                    ("README.md", PYTHON_README),
                ],
                gitignore: "*.wasm\n__pycache__/\n",
            },
            Lang::Js => &Template {
                files: &[
                    ("plugin.js", JS_PLUGIN),
                    ("build.mjs", JS_BUILD),
                    ("package.json", JS_PACKAGE),
                    ("Makefile", JS_MAKEFILE),
                    ("README.md", JS_README),
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

const RUST_CARGO_TOML: &str = r#"[package]
name = "{{name}}"
version = "0.1.0"
edition = "2024"

[lib]
crate-type = ["cdylib"]

[dependencies]
wit-bindgen = "0.61"

[profile.release]
# Smaller components compile faster when the server loads them.
opt-level = "s"

# A project of its own, even when created inside another Cargo workspace.
[workspace]
"#;

const RUST_LIB_RS: &str = r#"//! The {{name}} plugboard plugin.

wit_bindgen::generate!({
    path: "wit",
    world: "plugin",
});

use plugboard::plugin::host::{Level, log};

struct Plugin;

impl Guest for Plugin {
    /// The commands this plugin serves; the server routes them here.
    fn commands() -> Vec<CommandInfo> {
        vec![CommandInfo {
            name: "hello".into(),
            summary: "Greet the first argument (or the world)".into(),
        }]
    }

    /// `Ok(text)` is sent as `text<EOF>`, `Err(message)` as `error: message<EOF>`.
    fn handle(request: Request) -> Result<String, String> {
        match request.command.as_str() {
            "hello" => {
                let who = request.args.first().map_or("world", String::as_str);
                log(Level::Info, &format!("greeting {who}"));
                Ok(format!("hello, {who}"))
            }
            other => Err(format!("{{name}} does not handle '{other}'")),
        }
    }
}

export!(Plugin);
"#;

const RUST_MAKEFILE: &str = r#"# Build the plugin, check it as the server would, try a command.
PLUGBOARD ?= plugboard
WASM := target/wasm32-wasip2/release/{{file}}.wasm

.PHONY: build check try

build:
	rustup target add wasm32-wasip2
	cargo build --release --target wasm32-wasip2
	@echo "built $(WASM)"

check: build
	$(PLUGBOARD) check $(WASM)

try: build
	$(PLUGBOARD) call $(WASM) hello plugboard
"#;

const RUST_README: &str = r#"# {{name}}

A [plugboard](https://example.invalid/plugboard) plugin, generated by
`plugboard new {{name}}`. It serves `hello`, replying `hello, <name>`.

- `make build`: builds `target/wasm32-wasip2/release/{{file}}.wasm`
  (installs the `wasm32-wasip2` Rust target if needed).
- `make check`: loads it exactly as the server would and lists its commands.
- `make try`: runs `hello plugboard` in it without a server.
- Serve it: copy the `.wasm` into the server's `plugin_dir`. A running server
  loads it at once (hot reload); the plugin is named `{{file}}`.

`wit/plugin.wit` is the contract this plugin is built against, copied from the
`plugboard` that generated it. Edit `src/lib.rs`: list commands in
`commands()`, answer them in `handle()`.
"#;

const PYTHON_APP: &str = r#""""The {{name}} plugboard plugin."""

import wit_world
from componentize_py_types import Err
from wit_world.imports import host, types


class WitWorld(wit_world.WitWorld):
    def commands(self) -> list[types.CommandInfo]:
        """The commands this plugin serves; the server routes them here."""
        return [types.CommandInfo("hello", "Greet the first argument (or the world)")]

    def handle(self, request: types.Request) -> str:
        """Return the reply (`text<EOF>`); raise Err(message) for `error: message<EOF>`."""
        if request.command != "hello":
            raise Err(f"{{name}} does not handle '{request.command}'")
        who = request.args[0] if request.args else "world"
        host.log(host.Level.INFO, f"greeting {who}")
        return f"hello, {who}"
"#;

const PYTHON_MAKEFILE: &str = r#"# Build the plugin, check it as the server would, try a command.
PLUGBOARD ?= plugboard
PYTHON ?= python3
WASM := {{file}}.wasm

.PHONY: build check try

build:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check componentize-py==0.25.1
	"$$($(PYTHON) -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/componentize-py" \
		-d wit -w plugin componentize app -o $(WASM)
	@echo "built $(WASM)"

check: build
	$(PLUGBOARD) check $(WASM)

try: build
	$(PLUGBOARD) call $(WASM) hello plugboard
"#;

const PYTHON_README: &str = r#"# {{name}}

A plugboard plugin in Python, generated by `plugboard new {{name}} --lang python`.
It serves `hello`, replying `hello, <name>`.

- `make build`: builds `{{file}}.wasm` with componentize-py (installed from PyPI).
- `make check`: loads it exactly as the server would and lists its commands.
- `make try`: runs `hello plugboard` in it without a server.
- Serve it: copy `{{file}}.wasm` into the server's `plugin_dir`; a running server
  loads it at once. The component embeds Python (about 18 MB); its first
  compile takes seconds, later starts use the server's compile cache.

Edit `app.py`: list commands in `commands()`, answer them in `handle()`.
`wit/plugin.wit` is the contract, copied from the `plugboard` that made this.
"#;

const JS_PLUGIN: &str = r#"// The {{name}} plugboard plugin.
//
// A returned string is the reply (`text<EOF>`); a thrown string is an error
// reply (`error: message<EOF>`).

import { log } from 'plugboard:plugin/host@0.1.1';

export function commands() {
  return [{ name: 'hello', summary: 'Greet the first argument (or the world)' }];
}

export function handle(request) {
  if (request.command !== 'hello') {
    throw `{{name}} does not handle '${request.command}'`;
  }
  const who = request.args[0] ?? 'world';
  log('info', `greeting ${who}`);
  return `hello, ${who}`;
}
"#;

const JS_BUILD: &str = r#"// Builds plugin.js into a component: node build.mjs OUTPUT.wasm
import { writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { componentize } from '@bytecodealliance/componentize-js';

const here = (path) => fileURLToPath(new URL(path, import.meta.url));
const output = process.argv[2] ?? '{{file}}.wasm';

const { component } = await componentize({
  sourcePath: here('./plugin.js'),
  witPath: here('./wit'),
  worldName: 'plugin',
  // The default features import wasi:http; plugboard offers plugins no network.
  disableFeatures: ['http', 'fetch-event'],
});
await writeFile(output, component);
console.log(`built ${output}`);
"#;

const JS_PACKAGE: &str = r#"{
  "name": "{{name}}",
  "private": true,
  "type": "module",
  "scripts": {
    "build": "node build.mjs"
  },
  "devDependencies": {
    "@bytecodealliance/componentize-js": "0.23.0",
    "@bytecodealliance/preview2-shim": "0.25.0"
  }
}
"#;

const JS_MAKEFILE: &str = r#"# Build the plugin, check it as the server would, try a command.
PLUGBOARD ?= plugboard
WASM := {{file}}.wasm

.PHONY: build check try

build:
	npm install --silent --no-audit --no-fund
	node build.mjs $(WASM)

check: build
	$(PLUGBOARD) check $(WASM)

try: build
	$(PLUGBOARD) call $(WASM) hello plugboard
"#;

const JS_README: &str = r#"# {{name}}

A plugboard plugin in JavaScript, generated by `plugboard new {{name}} --lang js`.
It serves `hello`, replying `hello, <name>`.

- `make build`: installs componentize-js from npm and builds `{{file}}.wasm`.
- `make check`: loads it exactly as the server would and lists its commands.
- `make try`: runs `hello plugboard` in it without a server.
- Serve it: copy `{{file}}.wasm` into the server's `plugin_dir`; a running server
  loads it at once. The component embeds a JavaScript engine (about 12 MB).

Edit `plugin.js`: list commands in `commands()`, answer them in `handle()`.
`wit/plugin.wit` is the contract, copied from the `plugboard` that made this.
"#;

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
