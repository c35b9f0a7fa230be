//! The in-memory backend: for tests and for state that need not survive a
//! restart (`state_store = "memory"`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

use super::{Backend, SetOutcome, Updater};

#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: BTreeMap<(String, String), Vec<u8>>,
    key_counts: HashMap<String, u32>,
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
    fn get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(self.lock().entries.get(&entry(ns, key)).cloned())
    }

    fn delete(&self, ns: &str, key: &str) -> Result<bool, String> {
        let mut inner = self.lock();
        let existed = inner.entries.remove(&entry(ns, key)).is_some();
        if existed && let Some(count) = inner.key_counts.get_mut(ns) {
            *count -= 1;
        }
        Ok(existed)
    }

    fn list_keys(&self, ns: &str, prefix: &str) -> Result<Vec<String>, String> {
        let inner = self.lock();
        let keys = inner
            .entries
            .range(entry(ns, prefix)..)
            .map(|((entry_ns, key), _)| (entry_ns, key))
            .take_while(|(entry_ns, key)| *entry_ns == ns && key.starts_with(prefix))
            .map(|(_, key)| key.clone())
            .collect();
        Ok(keys)
    }

    fn update(
        &self,
        ns: &str,
        key: &str,
        max_keys: u32,
        update: Updater<'_>,
    ) -> Result<SetOutcome, String> {
        let mut inner = self.lock();
        let entry = entry(ns, key);
        let current = inner.entries.get(&entry);
        let is_new = current.is_none();
        let Some(value) = update(current.map(Vec::as_slice)) else {
            return Ok(SetOutcome::Unchanged);
        };
        if is_new {
            let count = inner.key_counts.entry(ns.to_owned()).or_default();
            if *count >= max_keys {
                return Ok(SetOutcome::TooManyKeys);
            }
            *count += 1;
        }
        inner.entries.insert(entry, value);
        Ok(SetOutcome::Written)
    }

    fn writes_block(&self) -> bool {
        false
    }
}
