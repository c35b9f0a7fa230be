//! The `plugboard` subcommands other than `serve`: the [`client`] behind
//! `send`, [`scaffold`] behind `new`, [`standalone`] behind `check` and
//! `call`, and [`token`] behind `token`. `main.rs` parses the command line and calls into these.

pub mod client;
pub mod dev;
mod prompt;
pub mod scaffold;
pub mod standalone;
pub mod token;
