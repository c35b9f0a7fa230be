//! Reads from memory: whole namespaces of the disk store, kept coherent
//! with its writes and bounded in size (`state_cache_mib`).
//!
//! A read of redb costs a transaction and a B-tree walk per `kv.get`; a
//! command that reads its state before deciding to write (onoff's `on`)
//! pays it every time. So the first read of a namespace copies it whole
//! (its keys and values, in one read transaction) into memory, and later
//! `get` and `list-keys` are answered from there. A namespace is the unit
//! because `list-keys` needs every key of one, and because a plugin's
//! state is bounded by its quota.
//!
//! Coherence: the writer thread applies each committed transaction's final
//! values here, after the commit and before it answers the writes, so a
//! write is visible to every read once acknowledged. A namespace being
//! copied while a commit touches it is marked stale and the copy is
//! dropped, never installed with a value older than a commit. Whatever the
//! writer cannot vouch for (a failed commit, a reopened file) empties the
//! cache: reads then go to the file until namespaces are copied again.
//!
//! Bound: the entries held (key and value bytes plus [`ENTRY_OVERHEAD`]
//! each) stay within the budget. A namespace that does not fit, even after
//! namespaces idle for [`IDLE`] are dropped, is read from the file, and not
//! tried again for [`IDLE`], so a state larger than the cache costs a read
//! of the file per operation, never a copy.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// What an entry costs beyond its key and value bytes: the map's node, the
/// key's and value's headers.
pub const ENTRY_OVERHEAD: u64 = 64;
/// How long a namespace must go unread before another may take its room,
/// and how long one that did not fit waits before it is tried again.
pub const IDLE: Duration = Duration::from_secs(10);

/// A value as the cache holds it: the data, or the fact that it is damaged
/// in the file (never served as data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cached {
    Value(Vec<u8>),
    Damaged,
}

/// The final state of one key after a committed transaction.
pub struct Committed {
    pub ns: String,
    pub key: String,
    /// `None`: the key was removed.
    pub value: Option<Vec<u8>>,
}

pub struct ReadCache {
    inner: Mutex<Inner>,
}

struct Inner {
    budget: u64,
    used: u64,
    namespaces: HashMap<String, Slot>,
}

enum Slot {
    /// A reader is copying it; `stale` once a commit touched it meanwhile.
    Loading {
        stale: bool,
    },
    Ready(Namespace),
    /// Too large to hold now: read from the file until `retry`.
    OnDisk {
        retry: Instant,
    },
}

struct Namespace {
    entries: BTreeMap<String, Cached>,
    bytes: u64,
    last_read: Instant,
}

/// Whether a reader should copy a namespace in.
pub enum Claim {
    /// It is the reader's to copy: [`ReadCache::fill`] or
    /// [`ReadCache::give_up`] must follow.
    Load,
    /// Another reader is copying it, or it does not fit: read the file.
    ReadFile,
}

fn entry_cost(key: &str, value: &Cached) -> u64 {
    let value = match value {
        Cached::Value(value) => value.len(),
        Cached::Damaged => 0,
    };
    (key.len() + value) as u64 + ENTRY_OVERHEAD
}

impl ReadCache {
    pub fn new(budget_bytes: u64) -> Self {
        Self {
            inner: Mutex::new(Inner {
                budget: budget_bytes,
                used: 0,
                namespaces: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every change below leaves the maps and the byte count consistent
        // before anything that could panic.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The value of `key` when its namespace is held (`Some(None)`: absent),
    /// `None` when the file must be read.
    pub fn get(&self, ns: &str, key: &str) -> Option<Option<Cached>> {
        let mut inner = self.lock();
        let namespace = inner.ready(ns)?;
        namespace.last_read = Instant::now();
        Some(namespace.entries.get(key).cloned())
    }

    /// The keys of `ns` starting with `prefix`, sorted, when it is held.
    pub fn list_keys(&self, ns: &str, prefix: &str) -> Option<Vec<String>> {
        let mut inner = self.lock();
        let namespace = inner.ready(ns)?;
        namespace.last_read = Instant::now();
        Some(
            namespace
                .entries
                .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
                .map(|(key, _)| key)
                .take_while(|key| key.starts_with(prefix))
                .cloned()
                .collect(),
        )
    }

    /// Whether the caller should copy `ns` in.
    pub fn claim(&self, ns: &str) -> Claim {
        let mut inner = self.lock();
        if inner.budget == 0 {
            return Claim::ReadFile;
        }
        match inner.namespaces.get(ns) {
            None => {}
            Some(Slot::OnDisk { retry }) if *retry <= Instant::now() => {}
            Some(_) => return Claim::ReadFile,
        }
        inner
            .namespaces
            .insert(ns.to_owned(), Slot::Loading { stale: false });
        Claim::Load
    }

    /// Whether `bytes` more would fit, dropping namespaces idle for
    /// [`IDLE`] to make room. When not, the claimed `ns` is read from the
    /// file until it is tried again.
    pub fn make_room(&self, ns: &str, bytes: u64) -> bool {
        let mut inner = self.lock();
        let fits = inner.make_room(bytes);
        if !fits {
            inner.set_on_disk(ns);
        }
        fits
    }

    /// Installs the copy of the claimed `ns`, unless a commit touched it
    /// meanwhile or it no longer fits.
    pub fn fill(&self, ns: &str, entries: BTreeMap<String, Cached>) {
        let mut inner = self.lock();
        let Some(Slot::Loading { stale }) = inner.namespaces.get(ns) else {
            return;
        };
        if *stale {
            inner.namespaces.remove(ns);
            return;
        }
        let bytes = entries
            .iter()
            .map(|(key, value)| entry_cost(key, value))
            .sum();
        if !inner.make_room(bytes) {
            inner.set_on_disk(ns);
            return;
        }
        inner.used += bytes;
        let namespace = Namespace {
            entries,
            bytes,
            last_read: Instant::now(),
        };
        inner
            .namespaces
            .insert(ns.to_owned(), Slot::Ready(namespace));
    }

    /// The claimed copy of `ns` failed: nothing is installed.
    pub fn give_up(&self, ns: &str) {
        let mut inner = self.lock();
        if matches!(inner.namespaces.get(ns), Some(Slot::Loading { .. })) {
            inner.namespaces.remove(ns);
        }
    }

    /// A committed transaction's final values, applied before its writes
    /// are answered.
    pub fn apply(&self, committed: Vec<Committed>) {
        let mut inner = self.lock();
        for Committed { ns, key, value } in committed {
            inner.apply(ns, key, value.map(Cached::Value));
        }
    }

    /// Forgets everything: the file may hold what the cache does not know.
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.namespaces.clear();
        inner.used = 0;
    }

    /// Bytes held (entries with their overhead): for the tests and the log.
    #[cfg(test)]
    fn used(&self) -> u64 {
        self.lock().used
    }
}

impl Inner {
    fn ready(&mut self, ns: &str) -> Option<&mut Namespace> {
        match self.namespaces.get_mut(ns) {
            Some(Slot::Ready(namespace)) => Some(namespace),
            _ => None,
        }
    }

    fn set_on_disk(&mut self, ns: &str) {
        let retry = Instant::now() + IDLE;
        if let Some(Slot::Ready(old)) = self
            .namespaces
            .insert(ns.to_owned(), Slot::OnDisk { retry })
        {
            self.used -= old.bytes;
        }
    }

    fn make_room(&mut self, bytes: u64) -> bool {
        if self.used + bytes <= self.budget {
            return true;
        }
        let now = Instant::now();
        let idle: Vec<String> = self
            .namespaces
            .iter()
            .filter_map(|(ns, slot)| match slot {
                Slot::Ready(namespace) if now.duration_since(namespace.last_read) >= IDLE => {
                    Some(ns.clone())
                }
                _ => None,
            })
            .collect();
        for ns in idle {
            if let Some(Slot::Ready(old)) = self.namespaces.remove(&ns) {
                self.used -= old.bytes;
            }
            if self.used + bytes <= self.budget {
                return true;
            }
        }
        self.used + bytes <= self.budget
    }

    fn apply(&mut self, ns: String, key: String, value: Option<Cached>) {
        let Some(slot) = self.namespaces.get_mut(&ns) else {
            return;
        };
        let namespace = match slot {
            Slot::Loading { stale } => return *stale = true,
            Slot::OnDisk { .. } => return,
            Slot::Ready(namespace) => namespace,
        };
        let removed = match value {
            Some(value) => {
                let added = entry_cost(&key, &value);
                namespace.bytes += added;
                self.used += added;
                namespace.entries.insert(key.clone(), value)
            }
            None => namespace.entries.remove(&key),
        };
        if let Some(old) = removed {
            let freed = entry_cost(&key, &old);
            namespace.bytes -= freed;
            self.used -= freed;
        }
        if self.used > self.budget {
            // The namespace that grew gives its room back: the others
            // were there first.
            self.set_on_disk(&ns);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(bytes: &[u8]) -> Option<Option<Cached>> {
        Some(Some(Cached::Value(bytes.to_vec())))
    }

    fn committed(ns: &str, key: &str, value: Option<&[u8]>) -> Committed {
        Committed {
            ns: ns.into(),
            key: key.into(),
            value: value.map(<[u8]>::to_vec),
        }
    }

    fn loaded(cache: &ReadCache, ns: &str, entries: &[(&str, &[u8])]) {
        assert!(matches!(cache.claim(ns), Claim::Load));
        let entries = entries
            .iter()
            .map(|(key, value)| ((*key).to_owned(), Cached::Value(value.to_vec())))
            .collect();
        cache.fill(ns, entries);
    }

    #[test]
    fn a_loaded_namespace_answers_reads_and_follows_commits() {
        let cache = ReadCache::new(1 << 20);
        assert_eq!(cache.get("p", "a"), None, "nothing is held before a load");
        loaded(&cache, "p", &[("a", b"1"), ("b", b"2"), ("c", b"3")]);
        assert_eq!(cache.get("p", "a"), value(b"1"));
        assert_eq!(
            cache.get("p", "zz"),
            Some(None),
            "an absent key is known absent"
        );
        cache.apply(vec![
            committed("p", "a", Some(b"10")),
            committed("p", "b", None),
            committed("q", "x", Some(b"ignored: q is not held")),
        ]);
        assert_eq!(cache.get("p", "a"), value(b"10"));
        assert_eq!(cache.get("p", "b"), Some(None));
        assert_eq!(cache.get("q", "x"), None);
        assert_eq!(cache.list_keys("p", ""), Some(vec!["a".into(), "c".into()]));
        assert_eq!(cache.list_keys("p", "c"), Some(vec!["c".into()]));
        let expected = ("a".len() + 2 + "c".len() + 1) as u64 + 2 * ENTRY_OVERHEAD;
        assert_eq!(cache.used(), expected, "the byte count follows the commits");
    }

    /// A commit landing while a reader copies the namespace may be missing
    /// from the copy: the copy is dropped, never installed.
    #[test]
    fn a_copy_a_commit_overtook_is_not_installed() {
        let cache = ReadCache::new(1 << 20);
        assert!(matches!(cache.claim("p"), Claim::Load));
        assert!(
            matches!(cache.claim("p"), Claim::ReadFile),
            "one reader copies a namespace at a time"
        );
        cache.apply(vec![committed("p", "a", Some(b"new"))]);
        cache.fill("p", [("a".into(), Cached::Value(b"old".to_vec()))].into());
        assert_eq!(cache.get("p", "a"), None, "the stale copy was dropped");
        loaded(&cache, "p", &[("a", b"new")]);
        assert_eq!(cache.get("p", "a"), value(b"new"));
    }

    #[test]
    fn the_budget_holds_and_a_namespace_too_large_is_read_from_the_file() {
        let cache = ReadCache::new(2 * ENTRY_OVERHEAD + 8);
        loaded(&cache, "small", &[("k", b"v")]);
        assert!(matches!(cache.claim("big"), Claim::Load));
        assert!(!cache.make_room("big", 10 * ENTRY_OVERHEAD));
        assert!(
            matches!(cache.claim("big"), Claim::ReadFile),
            "a namespace that did not fit is not tried again at once"
        );
        assert_eq!(cache.get("small", "k"), value(b"v"), "the one held stays");
        // Growing past the budget gives the grown namespace's room back.
        cache.apply(vec![committed("small", "k2", Some(&[0; 64]))]);
        assert_eq!(cache.get("small", "k"), None);
        assert_eq!(cache.used(), 0);
    }

    #[test]
    fn clearing_forgets_everything() {
        let cache = ReadCache::new(1 << 20);
        loaded(&cache, "p", &[("a", b"1")]);
        cache.clear();
        assert_eq!(cache.get("p", "a"), None);
        assert_eq!(cache.used(), 0);
        loaded(&cache, "p", &[("a", b"2")]);
        assert_eq!(cache.get("p", "a"), value(b"2"));
    }
}
