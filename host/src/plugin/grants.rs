//! Capabilities the operator grants one plugin, on top of a sandbox that
//! otherwise reaches nothing: outbound TCP to listed addresses, and
//! directories, read-only or read-write. A plugin without grants has none
//! (as every plugin before them), and one plugin's grants are built into
//! its own instances only.
//!
//! What WASI offers is narrowed, never widened: TCP may connect to a granted
//! address and do nothing else (no listening; the only bind allowed is the
//! implicit one a connect makes); UDP and name lookups stay off.
//! Directories are WASI preopens, so `..` and symlinks cannot leave them
//! (cap-std resolves every path beneath the granted directory).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

/// One plugin's grants, from its `[plugins.<name>]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// `allow_tcp`: addresses it may connect to.
    pub tcp: Vec<SocketAddr>,
    /// `dirs` and `writable_dirs`.
    pub dirs: Vec<DirGrant>,
}

/// A host directory seen by the plugin at `guest` (say `/data`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirGrant {
    pub guest: String,
    pub host: PathBuf,
    pub writable: bool,
}

/// A capability a plugin used without a grant: counted, and logged at DEBUG
/// (a plugin probing in a loop must not flood the log).
#[derive(Clone)]
pub struct Denials {
    pub plugin: Arc<str>,
    pub tcp: metrics::Counter,
}

impl Grants {
    /// Builds what is granted into a new instance's WASI context.
    pub fn apply(&self, wasi: &mut WasiCtxBuilder, denials: &Denials) {
        wasi.allow_udp(false).allow_ip_name_lookup(false);
        let allowed: Arc<[SocketAddr]> = self.tcp.clone().into();
        let counted = denials.clone();
        // TCP is on for every plugin, so that each denied connect is counted;
        // the check admits granted connects only.
        wasi.allow_tcp(true).socket_addr_check(move |addr, using| {
            let granted = match using {
                SocketAddrUse::TcpConnect => allowed.contains(&addr),
                // The implicit bind of a connect: no address of its own.
                SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
                _ => false,
            };
            if !granted && !matches!(using, SocketAddrUse::TcpBind) {
                counted.tcp.increment(1);
                tracing::debug!(plugin = %counted.plugin, %addr, ?using, "capability denied: tcp");
            }
            Box::pin(std::future::ready(granted))
        });
        for dir in &self.dirs {
            let perms = if dir.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            // Checked at config load; a directory gone since is not granted.
            if let Err(err) = wasi.preopened_dir(&dir.host, &dir.guest, perms) {
                tracing::warn!(
                    plugin = %denials.plugin,
                    dir = %dir.host.display(),
                    "granted directory cannot be opened, the plugin goes without it: {err:#}"
                );
            }
        }
    }
}
