//! The `dirs` and `writable_dirs` grants: host directories a plugin sees at
//! a guest path, read-only or read-write.
//!
//! They are WASI preopens, so `..` and symlinks cannot leave them (cap-std
//! resolves every path beneath the granted directory).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::ensure;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use super::Denials;

/// A host directory seen by the plugin at `guest` (say `/data`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirGrant {
    pub guest: String,
    pub host: PathBuf,
    pub writable: bool,
}

/// The grants of a `dirs` (read-only) and a `writable_dirs` table, guest
/// path = host path; `at` is the tables' key path, for messages.
pub fn parse(
    dirs: &BTreeMap<String, PathBuf>,
    writable_dirs: &BTreeMap<String, PathBuf>,
    at: &str,
) -> anyhow::Result<Vec<DirGrant>> {
    let read_only = dirs.iter().map(|dir| (dir, false, "dirs"));
    let writable = writable_dirs.iter().map(|dir| (dir, true, "writable_dirs"));
    read_only
        .chain(writable)
        .map(|((guest, host), writable, key)| {
            ensure!(
                guest.starts_with('/'),
                "`{at}.{key}`: the guest path {guest:?} must be absolute (\"/data\")"
            );
            Ok(DirGrant {
                guest: guest.clone(),
                host: host.clone(),
                writable,
            })
        })
        .collect()
}

/// Whether every granted directory is one: checked when a config is
/// loaded (one gone later is left out of new instances, see [`apply`]).
pub fn check_exist(dirs: &[DirGrant], at: &str) -> anyhow::Result<()> {
    for dir in dirs {
        let key = if dir.writable {
            "writable_dirs"
        } else {
            "dirs"
        };
        ensure!(
            dir.host.is_dir(),
            "`{at}.{key}`: {:?} = {} is not a directory",
            dir.guest,
            dir.host.display()
        );
    }
    Ok(())
}

/// Opens `dirs` in a new instance's WASI context. A directory that cannot
/// be opened (gone since the config was loaded) is left out, with a warning.
pub fn apply(dirs: &[DirGrant], wasi: &mut WasiCtxBuilder, denials: &Denials) {
    for dir in dirs {
        let perms = if dir.writable {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        if let Err(err) = wasi.preopened_dir(&dir.host, &dir.guest, perms) {
            tracing::warn!(
                plugin = %denials.plugin,
                dir = %dir.host.display(),
                "granted directory cannot be opened, the plugin goes without it: {err:#}"
            );
        }
    }
}
