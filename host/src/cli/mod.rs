//! The `plugboard` subcommands other than `serve`: the [`client`] behind
//! `send` (and its interactive `prompt`), [`compile`] behind `compile`,
//! [`dev`] behind `dev`, [`scaffold`] behind `new`, [`standalone`] behind
//! `check` and `call`, and [`token`] behind `token`. `main.rs` parses the command line and calls into these.

use std::path::PathBuf;

use crate::config::{Config, StateStore};

pub mod client;
pub mod compile;
pub mod dev;
pub mod manual;
mod prompt;
pub mod runner;
pub mod scaffold;
pub mod standalone;
pub mod token;

/// plugboard's directory under an XDG base directory: `$VAR/plugboard`, else
/// `~/<home_default>/plugboard` (`.cache`, `.local/state`), created; `None`
/// if neither is set or it cannot be created.
pub(crate) fn user_dir(var: &str, home_default: &str) -> Option<PathBuf> {
    let absolute = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|path| path.is_absolute())
    };
    let dir = absolute(var)
        .or_else(|| absolute("HOME").map(|home| home.join(home_default)))?
        .join("plugboard");
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir)
}

/// The config of `check`, `call` and `dev` without `--config`: the built-in
/// defaults, state in memory, compiled plugins in the user's cache
/// (`$XDG_CACHE_HOME/plugboard`, else `~/.cache/plugboard`), never the
/// working directory; no cache if neither can be had.
pub fn user_config() -> Config {
    let cache = user_dir("XDG_CACHE_HOME", ".cache");
    Config {
        state_store: StateStore::Memory,
        compile_cache: cache.is_some(),
        cache_dir: cache.unwrap_or_default(),
        ..Config::default()
    }
}
