//! The compile cache, never trusted blindly.
//!
//! wasmtime's cache keeps compiled machine code on disk and, on a hit, maps
//! it in and runs it after checking only that it is a well-formed object of
//! the right engine: one flipped byte in the code segfaults the server, and
//! an entry of another component is run as if it were this one. So every
//! entry gets a SHA-256 checksum, written right after the compile that
//! made the entry. The two live side by side in `cache_dir`: wasmtime's
//! tree in `wasmtime/`, the checksums in `checksums/`. Not inside
//! wasmtime's tree: its cleanup walks all of it, takes files it does not
//! know (a checksum being written) for litter and deletes them, and counts
//! checksums as entries against its size limits. Before each
//! compile, every entry this process has not verified yet is checked: one
//! that is damaged, truncated or has no checksum (foreign, or from before
//! the check) is removed, with a warning, and wasmtime compiles afresh.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

const CHECKSUMS_DIR: &str = "checksums";
const WASMTIME_DIR: &str = "wasmtime";

/// The directory wasmtime's cache is given, inside `cache_dir`.
pub fn wasmtime_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join(WASMTIME_DIR)
}

pub struct CacheCheck {
    /// wasmtime's entries: `modules/<compiler>/<key>`.
    modules: PathBuf,
    checksums: PathBuf,
    /// Entries verified by this process, as they were then: not hashed again
    /// unless they change.
    verified: Mutex<HashMap<PathBuf, Stamp>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
}

impl Stamp {
    fn of(path: &Path) -> Option<Self> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Self {
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }
}

impl CacheCheck {
    pub fn new(cache_dir: &Path) -> Self {
        Self {
            modules: wasmtime_dir(cache_dir).join("modules"),
            checksums: cache_dir.join(CHECKSUMS_DIR),
            verified: Mutex::default(),
        }
    }

    /// Before a compile: removes every entry whose checksum does not match
    /// (or that has none), so that wasmtime never runs it.
    /// Returns whether it removed any.
    pub fn verify(&self) -> bool {
        let mut removed = false;
        let mut verified = self.lock();
        for entry in self.entries() {
            let stamp = Stamp::of(&entry);
            if stamp.is_some() && verified.get(&entry) == stamp.as_ref() {
                continue;
            }
            let checksum = self.checksum_path(&entry);
            let expected = std::fs::read_to_string(&checksum).ok();
            match (expected, sha256_of(&entry)) {
                (Some(expected), Some(actual)) if expected.trim() == actual => {
                    if let Some(stamp) = stamp {
                        verified.insert(entry, stamp);
                    }
                }
                // Gone meanwhile (another server's cleanup): nothing to run.
                (_, None) => {}
                (expected, Some(_)) => {
                    let why = if expected.is_some() {
                        "does not match its checksum (damaged or truncated)"
                    } else {
                        "has no checksum (not written by plugboard, or before it checked)"
                    };
                    tracing::warn!(
                        entry = %entry.display(),
                        "compile cache entry {why}: removed, the plugin is compiled afresh"
                    );
                    let _ = std::fs::remove_file(&entry);
                    let _ = std::fs::remove_file(&checksum);
                    verified.remove(&entry);
                    removed = true;
                }
            }
        }
        removed
    }

    /// After a compile: gives the entries written meanwhile their checksum.
    pub fn record(&self) {
        let mut verified = self.lock();
        for entry in self.entries() {
            let checksum = self.checksum_path(&entry);
            if checksum.exists() {
                continue;
            }
            let (Some(stamp), Some(sum)) = (Stamp::of(&entry), sha256_of(&entry)) else {
                continue;
            };
            if let Err(err) = write_atomically(&checksum, sum.as_bytes()) {
                tracing::warn!(
                    file = %checksum.display(),
                    "cannot record a compile cache checksum (the entry will be compiled again): {err}"
                );
                continue;
            }
            verified.insert(entry, stamp);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Stamp>> {
        self.verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// wasmtime's entries: files named by their key alone, without the
    /// `.stats` files of its cleanup or the `.wip-*` files of a write.
    fn entries(&self) -> Vec<PathBuf> {
        let Ok(compilers) = std::fs::read_dir(&self.modules) else {
            return Vec::new();
        };
        compilers
            .flatten()
            .filter_map(|compiler| std::fs::read_dir(compiler.path()).ok())
            .flat_map(|files| files.flatten())
            .map(|file| file.path())
            .filter(|path| path.is_file() && path.extension().is_none())
            .collect()
    }

    fn checksum_path(&self, entry: &Path) -> PathBuf {
        let relative = entry.strip_prefix(&self.modules).unwrap_or(entry);
        self.checksums.join(relative)
    }
}

fn sha256_of(path: &Path) -> Option<String> {
    let mut file = std::fs::File::open(path).ok()?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).ok()?;
    Some(format!("{:x}", hasher.finalize()))
}

fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let partial = path.with_extension(format!("partial-{}", std::process::id()));
    std::fs::write(&partial, contents)?;
    std::fs::rename(&partial, path)
}
