//! plugboard: a TCP command server whose every command is handled by a
//! sandboxed WebAssembly component.
//!
//! Data flows one way, one module per step:
//! socket ([`server`], [`connection`]) -> frame ([`codec`]) -> request
//! ([`request`]) -> route ([`router`]) -> plugin ([`plugin`]) -> [`reply`].
//! [`config`] is the server's settings, [`plugin_dir`] the directory of plugin
//! files, [`reload`] hot reload, [`client`] the `plugboard send` client, and
//! [`standalone`] `plugboard check` and `call`, [`scaffold`] `plugboard new`,
//! [`metrics`] what operators scrape.

pub mod client;
pub mod codec;
pub mod config;
pub mod connection;
pub mod metrics;
pub mod plugin;
pub mod plugin_dir;
pub mod reload;
pub mod reply;
pub mod request;
pub mod router;
pub mod scaffold;
pub mod server;
pub mod standalone;
pub mod store;
