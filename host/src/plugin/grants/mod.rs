//! Capabilities the operator grants one plugin, on top of a sandbox that
//! otherwise reaches nothing: outbound HTTP(S) to listed origins
//! (`http.rs`), outbound TCP to listed addresses and names (`tcp.rs`), and
//! directories, read-only or read-write (`dirs.rs`). A plugin without grants
//! has none, and one plugin's grants are built into its own instances only.
//!
//! Each kind is read in one file: how its config entries parse, what it
//! links into every instance, and the state it keeps per instance. This
//! module joins them: [`Grants::parse`] for the config, [`add_to_linker`]
//! for the engine's linker, [`Grants::instance`] for a new instance.

mod commands;
mod dirs;
mod http;
mod tcp;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use wasmtime::component::Linker;
use wasmtime_wasi::WasiCtxBuilder;

pub use commands::{CommandGrant, not_granted};
pub use dirs::DirGrant;
pub use http::{HttpHooks, Origin};
pub use tcp::{Lookups, NameLookups, TcpGrant, TcpName};

use super::sandbox::Sandbox;

/// One plugin's grants, from its `[plugins.<name>]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// `allow_http`: origins it may send HTTP(S) requests to.
    /// Shared, not copied, by every instance's hooks and checks.
    pub http: Arc<[Origin]>,
    /// `allow_tcp`: addresses it may connect to.
    pub tcp: Arc<[SocketAddr]>,
    /// `allow_tcp`: names it may look up, and connect to at their port.
    pub tcp_names: Arc<[TcpName]>,
    /// `dirs` and `writable_dirs`.
    pub dirs: Vec<DirGrant>,
    /// `allow_commands`: the commands it may run through `commands.call`.
    pub commands: Arc<[CommandGrant]>,
}

/// A plugin's grant entries as its config table spells them.
pub struct GrantEntries<'a> {
    pub allow_http: &'a [String],
    pub allow_tcp: &'a [String],
    pub dirs: &'a BTreeMap<String, PathBuf>,
    pub writable_dirs: &'a BTreeMap<String, PathBuf>,
    pub allow_commands: &'a [String],
}

/// A capability a plugin used without a grant: counted, and logged at DEBUG
/// (a plugin probing in a loop must not flood the log).
#[derive(Clone)]
pub struct Denials {
    pub plugin: Arc<str>,
    pub tcp: metrics::Counter,
    pub http: metrics::Counter,
    /// Name lookups of names not granted.
    pub lookup: metrics::Counter,
    /// Commands called that `allow_commands` does not grant.
    pub command: metrics::Counter,
}

impl Denials {
    pub fn new(plugin: &Arc<str>) -> Self {
        Self {
            plugin: plugin.clone(),
            tcp: crate::telemetry::capability_denied(plugin, "tcp"),
            http: crate::telemetry::capability_denied(plugin, "http"),
            lookup: crate::telemetry::capability_denied(plugin, "lookup"),
            command: crate::telemetry::capability_denied(plugin, "command"),
        }
    }
}

/// What one instance's grants keep while it lives.
pub struct InstanceGrants {
    /// Its `wasi:http` hooks: which requests go out.
    pub http: HttpHooks,
    /// Its `allow_tcp` names, the lookups under way, what they resolved to.
    pub names: NameLookups,
}

/// Links what grants reach into every instance: `wasi:http`'s outgoing
/// handler, and name lookups limited to granted names. What a plugin may
/// actually reach is its instance's (see [`Grants::instance`]).
pub fn add_to_linker(linker: &mut Linker<Sandbox>) -> wasmtime::Result<()> {
    http::add_to_linker(linker)?;
    tcp::add_to_linker(linker)
}

impl Grants {
    /// Whether the plugin can reach nothing beyond its sandbox and its
    /// state: no network, no directory, no command.
    pub fn reach_nothing(&self) -> bool {
        self.http.is_empty()
            && self.tcp.is_empty()
            && self.tcp_names.is_empty()
            && self.dirs.is_empty()
            && self.commands.is_empty()
    }

    /// The grants of one `[plugins.<name>]` table; `at` is its key path,
    /// for messages.
    pub fn parse(entries: &GrantEntries<'_>, at: &str) -> anyhow::Result<Self> {
        let http = parse_each(entries.allow_http, &format!("{at}.allow_http"))?;
        let mut tcp = Vec::new();
        let mut tcp_names = Vec::new();
        for target in entries.allow_tcp {
            match target.parse::<TcpGrant>() {
                Ok(TcpGrant::Address(addr)) => tcp.push(addr),
                Ok(TcpGrant::Name(name)) => tcp_names.push(name),
                Err(err) => anyhow::bail!("`{at}.allow_tcp`: {err}"),
            }
        }
        let commands = parse_each(entries.allow_commands, &format!("{at}.allow_commands"))?;
        Ok(Self {
            commands,
            http,
            tcp: tcp.into(),
            tcp_names: tcp_names.into(),
            dirs: dirs::parse(entries.dirs, entries.writable_dirs, at)?,
        })
    }

    /// Whether `allow_commands` lets the plugin run `command`.
    pub fn permits_command(&self, command: &str) -> bool {
        commands::permits(&self.commands, command)
    }

    /// Whether what the grants name exists now (their directories): checked
    /// when a config is loaded.
    pub fn check(&self, at: &str) -> anyhow::Result<()> {
        dirs::check_exist(&self.dirs, at)
    }

    /// Builds the grants into a new instance's WASI context, and returns
    /// what they keep while it lives.
    pub fn instance(&self, wasi: &mut WasiCtxBuilder, denials: &Denials) -> InstanceGrants {
        dirs::apply(&self.dirs, wasi, denials);
        InstanceGrants {
            names: tcp::apply(&self.tcp, &self.tcp_names, wasi, denials),
            http: HttpHooks::new(self.http.clone(), denials),
        }
    }
}

/// Each entry of the list at `key`, parsed; the first that is not, as an
/// error naming the key.
fn parse_each<T>(entries: &[String], key: &str) -> anyhow::Result<Arc<[T]>>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    entries
        .iter()
        .map(|entry| {
            entry
                .parse::<T>()
                .map_err(|err| anyhow::anyhow!("`{key}`: {err}"))
        })
        .collect()
}
