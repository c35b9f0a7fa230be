//! The `plugboard` subcommands other than `serve`: the [`client`] behind
//! `send`, [`scaffold`] behind `new`, and [`standalone`] behind `check` and
//! `call`. `main.rs` parses the command line and calls into these.

pub mod client;
pub mod scaffold;
pub mod standalone;
