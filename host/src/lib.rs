//! plugboard: a TCP command server whose every command is handled by a
//! sandboxed WebAssembly component.
//!
//! The modules are the layers, and imports flow one way, from the top of
//! this list to the bottom:
//! - [`cli`]: what the `plugboard` commands do beside serving (the `send`
//!   client, `new`, `check` and `call`);
//! - [`net`]: the listener and one task per connection;
//! - [`schedule`]: commands run on time, through the router as a client's;
//! - [`reload`]: the plugin directory and hot reload, which keep the routing
//!   table current;
//! - [`router`]: which plugin serves a command, and the reply to its answer;
//! - [`plugin`]: the WebAssembly runtime, sandbox and limits;
//! - [`store`]: plugins' key-value state.
//!
//! Beside them, used from any layer: [`protocol`] (the wire format: frames,
//! requests, replies; no I/O), [`config`] (the server's settings),
//! [`cron`] (when a schedule runs) and [`telemetry`] (metrics).
//!
//! No `unsafe`: the host's memory safety is the compiler's to prove, and
//! the sandbox's is wasmtime's.

#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod cron;
pub mod net;
pub mod plugin;
pub mod protocol;
pub mod reload;
pub mod router;
pub mod schedule;
pub mod store;
pub mod telemetry;
