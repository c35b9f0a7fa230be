//! Key-value state for plugins, behind a small trait.
//!
//! Plugins reach it only through the WIT `kv` interface, namespaced by plugin
//! name, so the backend can change (an embedded database now, a networked one
//! such as Redis for several hosts later) without touching a plugin. Limits
//! are enforced here, above every backend, so all backends agree on them.

mod disk;
mod memory;

use std::path::Path;
use std::sync::Arc;

pub use disk::DiskStore;
pub use memory::MemoryStore;

/// Computes a key's new value from its current one (`None`: absent);
/// returning `None` leaves the key as it is.
pub type Updater<'a> = &'a mut dyn FnMut(Option<&[u8]>) -> Option<Vec<u8>>;

/// A backend. Every method is one atomic operation in the namespace `ns`;
/// writes are durable when they return.
pub trait Backend: Send + Sync + 'static {
    fn get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, String>;
    fn delete(&self, ns: &str, key: &str) -> Result<bool, String>;
    fn list_keys(&self, ns: &str, prefix: &str) -> Result<Vec<String>, String>;
    /// Replaces the value at `key` with `update(current)`, atomically;
    /// `update` returning `None` leaves the store unchanged. A new key when
    /// `ns` already holds `max_keys` keys changes nothing: `TooManyKeys`.
    fn update(
        &self,
        ns: &str,
        key: &str,
        max_keys: u32,
        update: Updater<'_>,
    ) -> Result<SetOutcome, String>;

    /// Whether writes wait on a device (a disk sync, a network round trip)
    /// and so must not run on an async worker. Reads are assumed quick.
    fn writes_block(&self) -> bool;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOutcome {
    Written,
    Unchanged,
    TooManyKeys,
}

/// Size limits of every namespace, from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLimits {
    pub max_key_bytes: u32,
    pub max_value_bytes: u32,
    pub max_keys: u32,
}

/// Why a plugin's operation failed; mirrors the WIT `kv.error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    #[error("key longer than {0} bytes")]
    KeyTooLarge(u32),
    #[error("value longer than {0} bytes")]
    ValueTooLarge(u32),
    #[error("more than {0} keys")]
    TooManyKeys(u32),
    #[error("value is not a decimal integer")]
    NotANumber,
    #[error("storage failed: {0}")]
    Storage(String),
}

/// The store shared by all plugins: a backend plus the limits.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    limits: KvLimits,
}

impl Store {
    pub fn new(backend: Arc<dyn Backend>, limits: KvLimits) -> Self {
        Self { backend, limits }
    }

    /// The on-disk store in `dir`, created if absent. A file that is not a
    /// readable store is an error: never silently replaced by an empty one.
    pub fn open_disk(dir: &Path, limits: KvLimits) -> anyhow::Result<Self> {
        Ok(Self::new(Arc::new(DiskStore::open(dir)?), limits))
    }

    pub fn in_memory(limits: KvLimits) -> Self {
        Self::new(Arc::new(MemoryStore::default()), limits)
    }

    /// The view of one plugin: its namespace, nothing else.
    pub fn namespace(&self, plugin: &str) -> Namespace {
        Namespace {
            store: self.clone(),
            ns: plugin.to_owned(),
        }
    }
}

/// One plugin's keys.
#[derive(Clone)]
pub struct Namespace {
    store: Store,
    ns: String,
}

impl Namespace {
    /// See [`Backend::writes_block`].
    pub fn writes_block(&self) -> bool {
        self.store.backend.writes_block()
    }

    fn check_key(&self, key: &str) -> Result<(), KvError> {
        let max = self.store.limits.max_key_bytes;
        if key.len() > max as usize {
            return Err(KvError::KeyTooLarge(max));
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), KvError> {
        let max = self.store.limits.max_value_bytes;
        if value.len() > max as usize {
            return Err(KvError::ValueTooLarge(max));
        }
        Ok(())
    }

    fn backend(&self) -> &dyn Backend {
        &*self.store.backend
    }

    fn written(&self, outcome: Result<SetOutcome, String>) -> Result<SetOutcome, KvError> {
        match outcome.map_err(KvError::Storage)? {
            SetOutcome::TooManyKeys => Err(KvError::TooManyKeys(self.store.limits.max_keys)),
            outcome => Ok(outcome),
        }
    }

    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.check_key(key)?;
        self.backend().get(&self.ns, key).map_err(KvError::Storage)
    }

    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.check_key(key)?;
        self.check_value(value)?;
        let max_keys = self.store.limits.max_keys;
        let mut write = |_: Option<&[u8]>| Some(value.to_vec());
        self.written(self.backend().update(&self.ns, key, max_keys, &mut write))
            .map(drop)
    }

    pub fn delete(&self, key: &str) -> Result<bool, KvError> {
        self.check_key(key)?;
        self.backend()
            .delete(&self.ns, key)
            .map_err(KvError::Storage)
    }

    pub fn list_keys(&self, prefix: &str) -> Result<Vec<String>, KvError> {
        self.backend()
            .list_keys(&self.ns, prefix)
            .map_err(KvError::Storage)
    }

    pub fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        self.check_key(key)?;
        let mut result = Err(KvError::NotANumber);
        let max_keys = self.store.limits.max_keys;
        self.written(
            self.backend()
                .update(&self.ns, key, max_keys, &mut |current| {
                    let current = match current {
                        None => Some(0),
                        Some(bytes) => std::str::from_utf8(bytes)
                            .ok()
                            .and_then(|s| s.parse::<i64>().ok()),
                    };
                    let next = current.and_then(|n| n.checked_add(delta));
                    result = next.ok_or(KvError::NotANumber);
                    next.map(|n| n.to_string().into_bytes())
                }),
        )?;
        result
    }

    pub fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, KvError> {
        self.check_key(key)?;
        self.check_value(new)?;
        let max_keys = self.store.limits.max_keys;
        let outcome = self.written(self.backend().update(
            &self.ns,
            key,
            max_keys,
            &mut |current| (current == expected).then(|| new.to_vec()),
        ))?;
        Ok(outcome == SetOutcome::Written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> KvLimits {
        KvLimits {
            max_key_bytes: 8,
            max_value_bytes: 4,
            max_keys: 2,
        }
    }

    /// The same behaviour from every backend.
    fn backends() -> Vec<(Store, tempfile::TempDir)> {
        let dir = tempfile::tempdir().unwrap();
        let disk = Store::open_disk(dir.path(), limits()).unwrap();
        vec![
            (Store::in_memory(limits()), tempfile::tempdir().unwrap()),
            (disk, dir),
        ]
    }

    #[test]
    fn namespaces_are_isolated() {
        for (store, _dir) in backends() {
            store.namespace("a").set("k", b"1").unwrap();
            assert_eq!(store.namespace("b").get("k").unwrap(), None);
            assert_eq!(
                store.namespace("b").list_keys("").unwrap(),
                Vec::<String>::new()
            );
            assert_eq!(store.namespace("a").get("k").unwrap(), Some(b"1".to_vec()));
        }
    }

    #[test]
    fn limits_are_enforced() {
        for (store, _dir) in backends() {
            let ns = store.namespace("p");
            assert_eq!(ns.set("123456789", b"v"), Err(KvError::KeyTooLarge(8)));
            assert_eq!(ns.set("k", b"12345"), Err(KvError::ValueTooLarge(4)));
            ns.set("a", b"1").unwrap();
            ns.set("b", b"1").unwrap();
            assert_eq!(ns.set("c", b"1"), Err(KvError::TooManyKeys(2)));
            // Overwriting an existing key is not a new key.
            ns.set("a", b"2").unwrap();
            assert_eq!(ns.increment("c", 1), Err(KvError::TooManyKeys(2)));
        }
    }

    #[test]
    fn increment_list_delete_and_cas() {
        for (store, _dir) in backends() {
            let ns = store.namespace("p");
            assert_eq!(ns.increment("n", 5).unwrap(), 5);
            assert_eq!(ns.increment("n", -2).unwrap(), 3);
            ns.set("m", b"x").unwrap();
            assert_eq!(ns.increment("m", 1), Err(KvError::NotANumber));
            assert_eq!(ns.list_keys("").unwrap(), ["m", "n"]);
            assert_eq!(ns.list_keys("n").unwrap(), ["n"]);
            assert!(!ns.compare_and_swap("m", Some(b"y"), b"z").unwrap());
            assert!(ns.compare_and_swap("m", Some(b"x"), b"z").unwrap());
            assert_eq!(ns.get("m").unwrap(), Some(b"z".to_vec()));
            assert!(ns.delete("m").unwrap());
            assert!(!ns.delete("m").unwrap());
            assert!(ns.compare_and_swap("m", None, b"new").unwrap());
        }
    }

    #[test]
    fn disk_store_persists_and_refuses_a_corrupted_file() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open_disk(dir.path(), limits()).unwrap();
            store.namespace("p").set("k", b"v").unwrap();
        }
        let store = Store::open_disk(dir.path(), limits()).unwrap();
        assert_eq!(store.namespace("p").get("k").unwrap(), Some(b"v".to_vec()));
        drop(store);
        let file = dir.path().join(disk::FILE_NAME);
        std::fs::write(&file, b"garbage, not a database").unwrap();
        let err = format!(
            "{:#}",
            Store::open_disk(dir.path(), limits()).err().unwrap()
        );
        assert!(err.contains(&file.display().to_string()), "{err}");
    }
}
