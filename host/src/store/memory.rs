//! The in-memory backend: for tests and for state that need not survive a
//! restart (`state_store = "memory"`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

use super::{Backend, Change, Completion, KvLimits, Usage, Write};

#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: BTreeMap<(String, String), Vec<u8>>,
    usage: HashMap<String, Usage>,
}

impl MemoryStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every operation leaves the map consistent: a panic elsewhere while
        // holding the lock cannot have left it half-updated.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn entry(ns: &str, key: &str) -> (String, String) {
    (ns.to_owned(), key.to_owned())
}

impl Backend for MemoryStore {
    fn usage(&self, ns: &str) -> Completion<Usage> {
        Completion::Ready(Ok(self.lock().usage.get(ns).copied().unwrap_or_default()))
    }

    fn get(&self, ns: &str, key: &str) -> Completion<Option<Vec<u8>>> {
        Completion::Ready(Ok(self.lock().entries.get(&entry(ns, key)).cloned()))
    }

    fn list_keys(&self, ns: &str, prefix: &str) -> Completion<Vec<String>> {
        let inner = self.lock();
        let keys = inner
            .entries
            .range(entry(ns, prefix)..)
            .map(|((entry_ns, key), _)| (entry_ns, key))
            .take_while(|(entry_ns, key)| *entry_ns == ns && key.starts_with(prefix))
            .map(|(_, key)| key.clone())
            .collect();
        Completion::Ready(Ok(keys))
    }

    /// A microsecond under a lock: answered at once, never a thread hop.
    fn write(&self, ns: &str, key: &str, write: Write, limits: KvLimits) -> Completion {
        let mut inner = self.lock();
        let entry = entry(ns, key);
        let usage = inner.usage.get(ns).copied().unwrap_or_default();
        let plan = match write.plan(
            key,
            inner.entries.get(&entry).map(Vec::as_slice),
            usage,
            &limits,
        ) {
            Ok(plan) => plan,
            Err(err) => return Completion::Ready(Err(err)),
        };
        match plan.change {
            Change::Keep => {}
            Change::Put(value) => drop(inner.entries.insert(entry, value)),
            Change::Remove => drop(inner.entries.remove(&entry)),
        }
        inner.usage.insert(ns.to_owned(), plan.usage);
        Completion::Ready(Ok(plan.written))
    }
}
