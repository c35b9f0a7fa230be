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
//! write is visible to every read once acknowledged. A namespace is not
//! copied while a commit that touches it is under way, and a copy that a
//! commit began during is dropped, so no copy older than a commit is ever
//! installed. Each copy holds a ticket: one started before the cache was
//! emptied is never installed after. Whatever the writer cannot vouch for
//! (a failed commit, a reopened file) empties the cache: reads then go to
//! the file until namespaces are copied again.
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
    /// Commits under way, by namespace they write to.
    committing: HashMap<String, usize>,
    next_ticket: u64,
}

enum Slot {
    /// A reader is copying it; `stale` once a commit began meanwhile.
    Loading {
        ticket: Ticket,
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
    /// It is the reader's to copy, with this ticket: [`ReadCache::fill`]
    /// or [`ReadCache::read_file_for_a_while`] follows.
    Load(Ticket),
    /// Another reader is copying it, a commit to it is under way, or it
    /// does not fit: read the file.
    ReadFile,
}

/// Which claim a copy answers: a copy is installed only in the slot it
/// claimed, never in one claimed again after the cache was emptied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

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
                committing: HashMap::new(),
                next_ticket: 0,
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
        if inner.budget == 0 || inner.committing.contains_key(ns) {
            return Claim::ReadFile;
        }
        match inner.namespaces.get(ns) {
            None => {}
            Some(Slot::OnDisk { retry }) if *retry <= Instant::now() => {}
            Some(_) => return Claim::ReadFile,
        }
        let ticket = Ticket(inner.next_ticket);
        inner.next_ticket += 1;
        let loading = Slot::Loading {
            ticket,
            stale: false,
        };
        inner.namespaces.insert(ns.to_owned(), loading);
        Claim::Load(ticket)
    }

    /// Whether `bytes` more would fit, dropping namespaces idle for
    /// [`IDLE`] to make room. When not, the claimed `ns` is read from the
    /// file until it is tried again.
    pub fn make_room(&self, ns: &str, ticket: Ticket, bytes: u64) -> bool {
        let mut inner = self.lock();
        let fits = inner.make_room(bytes);
        if !fits && inner.claimed(ns, ticket) {
            inner.set_on_disk(ns);
        }
        fits
    }

    /// Installs the copy of `ns` claimed with `ticket`, unless a commit
    /// began meanwhile, the cache was emptied, or it no longer fits.
    pub fn fill(&self, ns: &str, ticket: Ticket, entries: BTreeMap<String, Cached>) {
        let mut inner = self.lock();
        match inner.namespaces.get(ns) {
            Some(Slot::Loading {
                ticket: claimed,
                stale,
            }) if *claimed == ticket => {
                if *stale {
                    inner.namespaces.remove(ns);
                    return;
                }
            }
            _ => return,
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

    /// The copy of `ns` claimed with `ticket` failed: its reads go to the
    /// file until it is tried again, so that a namespace the file cannot
    /// give whole is not copied again at every read.
    pub fn read_file_for_a_while(&self, ns: &str, ticket: Ticket) {
        let mut inner = self.lock();
        if inner.claimed(ns, ticket) {
            inner.set_on_disk(ns);
        }
    }

    /// A commit writing to `namespaces` begins: none of them is copied
    /// until it ends, and copies under way are dropped.
    pub fn begin_commit(&self, namespaces: &[String]) {
        let mut inner = self.lock();
        for ns in namespaces {
            *inner.committing.entry(ns.clone()).or_default() += 1;
            if let Some(Slot::Loading { stale, .. }) = inner.namespaces.get_mut(ns) {
                *stale = true;
            }
        }
    }

    /// The commit begun for `namespaces` ended: with its final values, to
    /// be read from now on (before its writes are answered), or `None`
    /// when it failed or cannot be vouched for, which empties the cache.
    pub fn end_commit(&self, namespaces: &[String], committed: Option<Vec<Committed>>) {
        let mut inner = self.lock();
        for ns in namespaces {
            if let Some(count) = inner.committing.get_mut(ns) {
                *count -= 1;
                if *count == 0 {
                    inner.committing.remove(ns);
                }
            }
        }
        match committed {
            Some(committed) => {
                for Committed { ns, key, value } in committed {
                    inner.apply(ns, key, value.map(Cached::Value));
                }
            }
            None => inner.clear(),
        }
    }

    /// Forgets everything: the file may hold what the cache does not know.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Bytes held (entries with their overhead): for the tests and the log.
    #[cfg(test)]
    fn used(&self) -> u64 {
        self.lock().used
    }
}

impl Inner {
    fn clear(&mut self) {
        self.namespaces.clear();
        self.used = 0;
    }

    /// Whether `ns` is being copied under `ticket`.
    fn claimed(&self, ns: &str, ticket: Ticket) -> bool {
        matches!(self.namespaces.get(ns), Some(Slot::Loading { ticket: claimed, .. }) if *claimed == ticket)
    }

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
            Slot::Loading { stale, .. } => return *stale = true,
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

    /// A commit to `ns` with these final values.
    fn commit(cache: &ReadCache, changes: Vec<Committed>) {
        let namespaces: Vec<String> = changes.iter().map(|c| c.ns.clone()).collect();
        cache.begin_commit(&namespaces);
        cache.end_commit(&namespaces, Some(changes));
    }

    fn entries(entries: &[(&str, &[u8])]) -> BTreeMap<String, Cached> {
        entries
            .iter()
            .map(|(key, value)| ((*key).to_owned(), Cached::Value(value.to_vec())))
            .collect()
    }

    fn claimed(cache: &ReadCache, ns: &str) -> Ticket {
        match cache.claim(ns) {
            Claim::Load(ticket) => ticket,
            Claim::ReadFile => panic!("{ns} was not given to copy"),
        }
    }

    fn loaded(cache: &ReadCache, ns: &str, copy: &[(&str, &[u8])]) {
        let ticket = claimed(cache, ns);
        cache.fill(ns, ticket, entries(copy));
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
        commit(
            &cache,
            vec![
                committed("p", "a", Some(b"10")),
                committed("p", "b", None),
                committed("q", "x", Some(b"ignored: q is not held")),
            ],
        );
        assert_eq!(cache.get("p", "a"), value(b"10"));
        assert_eq!(cache.get("p", "b"), Some(None));
        assert_eq!(cache.get("q", "x"), None);
        assert_eq!(cache.list_keys("p", ""), Some(vec!["a".into(), "c".into()]));
        assert_eq!(cache.list_keys("p", "c"), Some(vec!["c".into()]));
        let expected = ("a".len() + 2 + "c".len() + 1) as u64 + 2 * ENTRY_OVERHEAD;
        assert_eq!(cache.used(), expected, "the byte count follows the commits");
    }

    /// A copy may predate a commit that began while it was made: it is
    /// dropped, never installed; and nothing is copied while a commit to
    /// the namespace is under way.
    #[test]
    fn no_copy_overlapping_a_commit_is_installed() {
        let cache = ReadCache::new(1 << 20);
        let ticket = claimed(&cache, "p");
        assert!(
            matches!(cache.claim("p"), Claim::ReadFile),
            "one reader copies a namespace at a time"
        );
        let namespaces = vec!["p".to_owned()];
        cache.begin_commit(&namespaces);
        assert!(
            matches!(cache.claim("q"), Claim::Load(_)),
            "other namespaces are copied"
        );
        cache.fill("p", ticket, entries(&[("a", b"old")]));
        assert_eq!(cache.get("p", "a"), None, "the stale copy was dropped");
        assert!(
            matches!(cache.claim("p"), Claim::ReadFile),
            "not copied while a commit to it is under way"
        );
        cache.end_commit(&namespaces, Some(vec![committed("p", "a", Some(b"new"))]));
        loaded(&cache, "p", &[("a", b"new")]);
        assert_eq!(cache.get("p", "a"), value(b"new"));
    }

    /// A copy claimed before the cache was emptied is not installed, even
    /// in a slot claimed again since.
    #[test]
    fn a_copy_from_before_the_cache_was_emptied_is_not_installed() {
        let cache = ReadCache::new(1 << 20);
        let before = claimed(&cache, "p");
        let namespaces = vec!["p".to_owned()];
        cache.begin_commit(&namespaces);
        cache.end_commit(&namespaces, None);
        let after = claimed(&cache, "p");
        cache.fill("p", before, entries(&[("a", b"old")]));
        assert_eq!(cache.get("p", "a"), None);
        cache.fill("p", after, entries(&[("a", b"new")]));
        assert_eq!(cache.get("p", "a"), value(b"new"));
    }

    #[test]
    fn the_budget_holds_and_a_namespace_too_large_is_read_from_the_file() {
        let cache = ReadCache::new(2 * ENTRY_OVERHEAD + 8);
        loaded(&cache, "small", &[("k", b"v")]);
        let ticket = claimed(&cache, "big");
        assert!(!cache.make_room("big", ticket, 10 * ENTRY_OVERHEAD));
        assert!(
            matches!(cache.claim("big"), Claim::ReadFile),
            "a namespace that did not fit is not tried again at once"
        );
        assert_eq!(cache.get("small", "k"), value(b"v"), "the one held stays");
        // Growing past the budget gives the grown namespace's room back.
        commit(&cache, vec![committed("small", "k2", Some(&[0; 64]))]);
        assert_eq!(cache.get("small", "k"), None);
        assert_eq!(cache.used(), 0);
    }

    #[test]
    fn a_failed_copy_is_not_tried_again_at_once() {
        let cache = ReadCache::new(1 << 20);
        let ticket = claimed(&cache, "p");
        cache.read_file_for_a_while("p", ticket);
        assert!(matches!(cache.claim("p"), Claim::ReadFile));
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
