//! Cranelift's incremental compilation cache, on disk: a component whose
//! bytes changed recompiles only the functions that changed. A Python or
//! JavaScript plugin rebuilt after a one-line edit is the same interpreter
//! (thousands of functions) with a new memory snapshot, so nearly every
//! function is found here instead of compiled.
//!
//! Cranelift trusts what the store returns: a flipped byte in a cached
//! function's machine code would run as is. So each entry is written with
//! the SHA-256 of its key and value in front, and an entry that does not
//! match is ignored (Cranelift compiles the function again and the entry is
//! written anew). Entries are written under a temporary name and renamed,
//! so a compile killed midway leaves no half entry behind. The store is
//! bounded: past `max_bytes`, the oldest entries are removed when a compile
//! process opens it. What it holds is counted in a file beside the entries
//! (each compile adds what it wrote), so that opening it costs no scan of
//! tens of thousands of files until the count says it is over.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

/// The directory of the store, inside `cache_dir`.
pub fn dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("incremental")
}

/// Bytes of checksum in front of each entry's value.
const CHECKSUM_BYTES: usize = 32;

/// What removing old entries aims for once over the bound: room to grow
/// before the next eviction.
const EVICT_TO_PERCENT: u64 = 80;

/// The file that counts the bytes the store holds.
const SIZE_FILE: &str = "size";

#[derive(Debug)]
pub struct DiskCacheStore {
    dir: PathBuf,
    /// Functions found here by this process.
    hits: AtomicU64,
    /// Functions not found (or found damaged): compiled.
    misses: AtomicU64,
    /// Entries that did not match their checksum, found by this process.
    damaged: AtomicU64,
    /// Names this process's partial writes apart: compile threads may
    /// write the same function (the same key) at once.
    writes: AtomicU64,
    /// Bytes this process wrote, for the count (see [`Self::finish`]).
    written: AtomicU64,
}

impl DiskCacheStore {
    /// The store in `dir`, created if absent, with its oldest entries
    /// removed while it holds more than `max_bytes`.
    pub fn open(dir: PathBuf, max_bytes: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let counted = std::fs::read_to_string(dir.join(SIZE_FILE))
            .ok()
            .and_then(|size| size.trim().parse::<u64>().ok());
        if counted.is_none_or(|size| size > max_bytes) {
            let size = evict_oldest(&dir, max_bytes);
            let _ = std::fs::write(dir.join(SIZE_FILE), size.to_string());
        }
        Ok(Self {
            dir,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            damaged: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            written: AtomicU64::new(0),
        })
    }

    /// Functions found here so far, and functions that were not.
    pub fn hits_and_misses(&self) -> (u64, u64) {
        let load = |count: &AtomicU64| count.load(Ordering::Relaxed);
        (load(&self.hits), load(&self.misses))
    }

    /// Adds what this process wrote to the store's count. Concurrent
    /// compiles may lose each other's additions: the count is then low,
    /// and the next full count (once it is over the bound) puts it right.
    pub fn finish(&self) {
        let written = self.written.load(Ordering::Relaxed);
        if written == 0 {
            return;
        }
        let path = self.dir.join(SIZE_FILE);
        let counted = std::fs::read_to_string(&path)
            .ok()
            .and_then(|size| size.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let _ = std::fs::write(path, (counted + written).to_string());
    }

    /// Entries found damaged (and ignored) so far.
    pub fn damaged(&self) -> u64 {
        self.damaged.load(Ordering::Relaxed)
    }

    /// The entry of `key` if it is there and whole.
    fn read(&self, key: &[u8]) -> Option<Vec<u8>> {
        let mut entry = std::fs::read(self.path(key)).ok()?;
        if entry.len() < CHECKSUM_BYTES {
            self.damaged.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let value = entry.split_off(CHECKSUM_BYTES);
        if entry[..] != checksum(key, &value) {
            self.damaged.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(value)
    }

    fn path(&self, key: &[u8]) -> PathBuf {
        let name: String = key.iter().map(|byte| format!("{byte:02x}")).collect();
        let (fan, _) = name.split_at(name.len().min(2));
        self.dir.join(fan).join(&name)
    }
}

/// The checksum an entry of `key` holding `value` starts with.
fn checksum(key: &[u8], value: &[u8]) -> [u8; CHECKSUM_BYTES] {
    let mut hasher = Sha256::new();
    hasher.update((key.len() as u64).to_le_bytes());
    hasher.update(key);
    hasher.update(value);
    hasher.finalize().into()
}

impl wasmtime::CacheStore for DiskCacheStore {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        let found = self.read(key);
        let count = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        count.fetch_add(1, Ordering::Relaxed);
        found.map(Cow::Owned)
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        let path = self.path(key);
        let Some(fan) = path.parent() else {
            return false;
        };
        let write = self.writes.fetch_add(1, Ordering::Relaxed);
        let partial = path.with_extension(format!("partial-{}-{write}", std::process::id()));
        let written = std::fs::create_dir_all(fan)
            .and_then(|()| {
                let mut entry = Vec::with_capacity(CHECKSUM_BYTES + value.len());
                entry.extend_from_slice(&checksum(key, &value));
                entry.extend_from_slice(&value);
                std::fs::write(&partial, entry)
            })
            .and_then(|()| std::fs::rename(&partial, &path));
        if written.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        let size = (CHECKSUM_BYTES + value.len()) as u64;
        self.written.fetch_add(size, Ordering::Relaxed);
        written.is_ok()
    }
}

/// Removes the oldest entries of the store in `dir` (by modification
/// time) while it holds more than `max_bytes`, down to a share of it;
/// returns the bytes it holds then.
fn evict_oldest(dir: &Path, max_bytes: u64) -> u64 {
    let mut entries: Vec<(SystemTime, u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fan| std::fs::read_dir(fan.path()).ok())
        .flat_map(|files| files.flatten())
        .filter_map(|file| {
            let meta = file.metadata().ok()?;
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            Some((modified, meta.len(), file.path()))
        })
        .collect();
    let mut total: u64 = entries.iter().map(|(_, len, _)| len).sum();
    if total <= max_bytes {
        return total;
    }
    let target = max_bytes / 100 * EVICT_TO_PERCENT;
    entries.sort_unstable_by_key(|(modified, _, _)| *modified);
    for (_, len, path) in entries {
        if total <= target {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            total = total.saturating_sub(len);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::CacheStore;

    #[test]
    fn an_entry_reads_back_and_a_damaged_one_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskCacheStore::open(dir.path().join("s"), 1 << 20).unwrap();
        assert!(store.insert(b"key", b"machine code".to_vec()));
        assert_eq!(store.get(b"key").as_deref(), Some(&b"machine code"[..]));
        assert!(store.get(b"other").is_none());
        let path = store.path(b"key");
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(store.get(b"key").is_none());
        assert_eq!(store.damaged(), 1);
        // Written anew, it reads back again.
        assert!(store.insert(b"key", b"machine code".to_vec()));
        assert_eq!(store.get(b"key").as_deref(), Some(&b"machine code"[..]));
    }

    #[test]
    fn an_entry_moved_under_another_key_does_not_match() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskCacheStore::open(dir.path().to_owned(), 1 << 20).unwrap();
        assert!(store.insert(b"a", b"code of a".to_vec()));
        std::fs::create_dir_all(store.path(b"b").parent().unwrap()).unwrap();
        std::fs::copy(store.path(b"a"), store.path(b"b")).unwrap();
        assert!(store.get(b"b").is_none());
    }

    #[test]
    fn past_its_bound_the_oldest_entries_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskCacheStore::open(dir.path().to_owned(), 1 << 20).unwrap();
        for key in 0u8..10 {
            assert!(store.insert(&[key], vec![key; 1000]));
            let old = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(u64::from(key));
            let file = std::fs::File::options()
                .write(true)
                .open(store.path(&[key]))
                .unwrap();
            file.set_modified(old).unwrap();
        }
        store.finish();
        let reopened = DiskCacheStore::open(dir.path().to_owned(), 5_000).unwrap();
        let kept: Vec<u8> = (0u8..10)
            .filter(|key| reopened.get(&[*key]).is_some())
            .collect();
        assert_eq!(kept, [7, 8, 9]);
    }
}
