//! The `plugboard` subcommands other than `serve`: the [`client`] behind
//! `send` (and its interactive `prompt`), [`dev`] behind `dev`, [`scaffold`]
//! behind `new`, [`standalone`] behind `check` and `call`, and [`token`]
//! behind `token`. `main.rs` parses the command line and calls into these.

use std::path::PathBuf;

pub mod client;
pub mod dev;
mod prompt;
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
