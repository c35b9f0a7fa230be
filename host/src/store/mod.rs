//! Key-value state for plugins, behind a small trait.
//!
//! Plugins reach it only through the WIT `kv` interface, namespaced by plugin
//! name, so the backend can change (an embedded database for one host,
//! Redis for several) without touching a plugin. Key and value sizes are
//! checked here, above every backend; a write's meaning and the namespace
//! quotas are decided by [`Write::plan`] in the backends that run in this
//! process, and by the same rules in Redis's script (`redis.rs`), which the
//! shared test suite (`tests/e2e/kv_backends.rs`) holds to one behaviour.

mod disk;
mod memory;
mod redis;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::oneshot;

pub use disk::DiskStore;
pub use memory::MemoryStore;
pub use redis::{RedisSettings, RedisStore};

/// A backend. Every write is one atomic operation in the namespace `ns`,
/// within `limits`, and durable when it completes (a write answered ahead:
/// when its [`Durable`] says so). Local backends answer
/// reads at once; a networked one answers everything after a round trip.
pub trait Backend: Send + Sync + 'static {
    fn get(&self, ns: &str, key: &str) -> Completion<Option<Vec<u8>>>;
    fn list_keys(&self, ns: &str, prefix: &str) -> Completion<Vec<String>>;
    fn write(&self, ns: &str, key: &str, write: Write, limits: KvLimits) -> Completion;
    /// Starts `write` as one of `chain`, a batch call's writes in order:
    /// `ahead`, answered once it is applied, possibly before it is durable,
    /// the [`Durable`] telling when it is (a connection's pipelined writes
    /// share a commit this way: see `plugin/batch/`). Once one of the chain
    /// is lost, the rest are refused. Backends whose writes are durable
    /// when answered keep this default.
    fn write_chained(
        &self,
        ns: &str,
        key: &str,
        write: Write,
        limits: KvLimits,
        chain: &WriteChain,
        ahead: bool,
    ) -> (Completion, Durable) {
        let _ = (chain, ahead);
        (self.write(ns, key, write, limits), Durable::already())
    }
    /// How many keys, and bytes of keys and values, the namespace holds.
    fn usage(&self, ns: &str) -> Completion<Usage>;

    /// Whether reads always complete at once (never `Completion::Pending`):
    /// then plugins read through a synchronous import, which costs no
    /// fiber switch (see `plugin/runtime.rs`).
    fn reads_at_once(&self) -> bool {
        true
    }
}

/// A change to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Set(Vec<u8>),
    Delete,
    Increment(i64),
    CompareAndSwap {
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    },
}

/// What a write did, by kind of write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Set,
    Deleted(bool),
    Incremented(i64),
    Swapped(bool),
}

/// An operation's result: at once (memory, a read of the local disk), or
/// once a backend that waits on a device (a disk sync, a network round trip)
/// has it. The caller decides how to wait; a backend never blocks an async
/// worker, and the operation runs to its end even if the caller stops
/// waiting (a plugin call past its deadline).
pub enum Completion<T = Written> {
    Ready(Result<T, KvError>),
    Pending(oneshot::Receiver<Result<T, KvError>>),
}

impl<T> Completion<T> {
    pub async fn wait(self) -> Result<T, KvError> {
        match self {
            Self::Ready(result) => result,
            Self::Pending(receiver) => receiver.await.unwrap_or_else(|_| Err(gone())),
        }
    }

    /// For callers outside the async runtime (tests, tools).
    pub fn wait_blocking(self) -> Result<T, KvError> {
        match self {
            Self::Ready(result) => result,
            Self::Pending(receiver) => receiver.blocking_recv().unwrap_or_else(|_| Err(gone())),
        }
    }
}

/// A batch call's writes, in order. Once one written ahead of its commit is
/// lost, the store refuses the rest: nothing the call wrote after it (say,
/// the delete of a move whose set was lost) is committed.
#[derive(Debug, Clone, Default)]
pub struct WriteChain(Arc<AtomicBool>);

impl WriteChain {
    pub fn break_off(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_broken(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Whether a write answered ahead of its commit
/// ([`Backend::write_chained`]) became durable.
pub struct Durable {
    receiver: Option<oneshot::Receiver<Result<(), Unavailable>>>,
    settled: Option<Result<(), Unavailable>>,
}

impl Durable {
    /// Durable when it was answered.
    pub fn already() -> Self {
        Self {
            receiver: None,
            settled: Some(Ok(())),
        }
    }

    pub fn when(receiver: oneshot::Receiver<Result<(), Unavailable>>) -> Self {
        Self {
            receiver: Some(receiver),
            settled: None,
        }
    }

    /// Whether its commit is over (durable, or failed), without waiting.
    pub fn is_settled(&mut self) -> bool {
        if self.settled.is_none()
            && let Some(receiver) = &mut self.receiver
        {
            match receiver.try_recv() {
                Ok(result) => self.settled = Some(result),
                Err(oneshot::error::TryRecvError::Empty) => {}
                Err(oneshot::error::TryRecvError::Closed) => self.settled = Some(Err(stopped())),
            }
        }
        self.settled.is_some()
    }

    pub async fn wait(self) -> Result<(), Unavailable> {
        match (self.settled, self.receiver) {
            (Some(settled), _) => settled,
            (None, Some(receiver)) => receiver.await.unwrap_or_else(|_| Err(stopped())),
            (None, None) => Ok(()),
        }
    }
}

fn stopped() -> Unavailable {
    Unavailable("the store stopped before the write was durable".into())
}

/// A local read, answered at once.
impl<T> From<Result<T, Unavailable>> for Completion<T> {
    fn from(result: Result<T, Unavailable>) -> Self {
        Self::Ready(result.map_err(KvError::from))
    }
}

fn gone() -> KvError {
    KvError::Unavailable(Unavailable(
        "the store stopped before the write completed".into(),
    ))
}

/// Size limits of every namespace, from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLimits {
    pub max_key_bytes: u32,
    pub max_value_bytes: u32,
    pub max_keys: u32,
    /// Keys and values together (`max_bytes_per_plugin`).
    pub max_bytes: u64,
}

/// The store cannot serve this operation now (an I/O error, a full disk, a
/// damaged or vanished file, a backend that is down). Not the plugin's
/// doing: its command is answered `error: state unavailable`, and the
/// reason goes to the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("state unavailable: {0}")]
pub struct Unavailable(pub String);

/// Why a plugin's operation failed; all but `Unavailable` are the plugin's
/// to handle (the WIT `kv.error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    #[error("key longer than {0} bytes")]
    KeyTooLarge(u32),
    #[error("value longer than {0} bytes")]
    ValueTooLarge(u32),
    #[error("more than {0} keys")]
    TooManyKeys(u32),
    #[error("the plugin's keys and values would take more than {0} bytes (max_bytes_per_plugin)")]
    OverQuota(u64),
    #[error("value is not a decimal integer")]
    NotANumber,
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

/// How much one namespace holds, kept beside its entries so that limits
/// are enforced without scanning them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub keys: u32,
    pub bytes: u64,
}

/// What an entry costs against `max_bytes_per_plugin`.
fn entry_bytes(key: &str, value: &[u8]) -> u64 {
    (key.len() + value.len()) as u64
}

/// The key's next state, as a write decided it.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Keep,
    Put(Vec<u8>),
    Remove,
}

/// A write decided against the key's current value and its namespace's
/// usage: what to store, the usage after it, and what to report. Every
/// backend applies writes through this, so all agree on their meaning.
#[derive(Debug)]
pub struct Plan {
    pub change: Change,
    pub usage: Usage,
    pub written: Written,
}

impl Write {
    pub fn plan(
        self,
        key: &str,
        current: Option<&[u8]>,
        usage: Usage,
        limits: &KvLimits,
    ) -> Result<Plan, KvError> {
        let (change, written) = self.decide(current)?;
        let old = current.map(|value| entry_bytes(key, value));
        let usage = match &change {
            Change::Keep => usage,
            Change::Remove => Usage {
                keys: usage.keys.saturating_sub(1),
                bytes: usage.bytes.saturating_sub(old.unwrap_or(0)),
            },
            Change::Put(value) => grown(usage, old, entry_bytes(key, value), limits)?,
        };
        Ok(Plan {
            change,
            usage,
            written,
        })
    }

    fn decide(self, current: Option<&[u8]>) -> Result<(Change, Written), KvError> {
        Ok(match self {
            Self::Set(value) => (Change::Put(value), Written::Set),
            Self::Delete if current.is_some() => (Change::Remove, Written::Deleted(true)),
            Self::Delete => (Change::Keep, Written::Deleted(false)),
            Self::Increment(delta) => {
                let current = match current {
                    None => Some(0),
                    Some(bytes) => std::str::from_utf8(bytes)
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok()),
                };
                let next = current
                    .and_then(|n| n.checked_add(delta))
                    .ok_or(KvError::NotANumber)?;
                (
                    Change::Put(next.to_string().into_bytes()),
                    Written::Incremented(next),
                )
            }
            Self::CompareAndSwap { expected, new } if current == expected.as_deref() => {
                (Change::Put(new), Written::Swapped(true))
            }
            Self::CompareAndSwap { .. } => (Change::Keep, Written::Swapped(false)),
        })
    }
}

/// The usage after an entry of `old` bytes (`None`: a new key) becomes
/// `new` bytes, if the limits allow it. Shrinking is always allowed, so a
/// plugin over a lowered quota can still make room.
fn grown(usage: Usage, old: Option<u64>, new: u64, limits: &KvLimits) -> Result<Usage, KvError> {
    let keys = match old {
        Some(_) => usage.keys,
        None if usage.keys >= limits.max_keys => return Err(KvError::TooManyKeys(limits.max_keys)),
        None => usage.keys + 1,
    };
    let old = old.unwrap_or(0);
    let bytes = usage.bytes.saturating_sub(old) + new;
    if new > old && bytes > limits.max_bytes {
        return Err(KvError::OverQuota(limits.max_bytes));
    }
    Ok(Usage { keys, bytes })
}

/// Plugins' key-value state, shared by all of them: a backend plus the
/// limits. Each plugin sees its own [`Namespace`] of it.
#[derive(Clone)]
pub struct Kv {
    backend: Arc<dyn Backend>,
    limits: KvLimits,
}

impl Kv {
    pub fn new(backend: Arc<dyn Backend>, limits: KvLimits) -> Self {
        Self { backend, limits }
    }

    /// The on-disk store in `dir`, created if absent, answering reads from
    /// up to `cache_bytes` of memory. A file that is not a readable store is
    /// an error: never silently replaced by an empty one.
    pub fn open_disk(dir: &Path, cache_bytes: u64, limits: KvLimits) -> anyhow::Result<Self> {
        Ok(Self::new(
            Arc::new(DiskStore::open(dir, cache_bytes)?),
            limits,
        ))
    }

    pub fn in_memory(limits: KvLimits) -> Self {
        Self::new(Arc::new(MemoryStore::default()), limits)
    }

    /// The store in Redis. Connects in the background and reconnects by
    /// itself: a Redis that is down fails state operations, never startup.
    /// Must be called inside the Tokio runtime that will run its operations.
    pub fn open_redis(settings: &RedisSettings, limits: KvLimits) -> anyhow::Result<Self> {
        Ok(Self::new(Arc::new(RedisStore::open(settings)?), limits))
    }

    /// Whether reads always complete at once (see [`Backend::reads_at_once`]).
    pub fn reads_at_once(&self) -> bool {
        self.backend.reads_at_once()
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
    store: Kv,
    ns: String,
}

impl Namespace {
    /// What the plugin holds: keys, and bytes of keys and values.
    pub fn usage(&self) -> Completion<Usage> {
        self.store.backend.usage(&self.ns)
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

    pub fn get(&self, key: &str) -> Completion<Option<Vec<u8>>> {
        match self.check_key(key) {
            Err(err) => Completion::Ready(Err(err)),
            Ok(()) => self.store.backend.get(&self.ns, key),
        }
    }

    /// The namespace's keys that start with `prefix`, sorted.
    pub fn list_keys(&self, prefix: &str) -> Completion<Vec<String>> {
        self.store.backend.list_keys(&self.ns, prefix)
    }

    /// Starts `write` on `key`, after the checks that need no backend.
    pub fn write(&self, key: &str, write: Write) -> Completion {
        match self.check_write(key, &write) {
            Err(err) => Completion::Ready(Err(err)),
            Ok(()) => self
                .store
                .backend
                .write(&self.ns, key, write, self.store.limits),
        }
    }

    /// Starts `write` on `key` as one of `chain`: see
    /// [`Backend::write_chained`].
    pub fn write_chained(
        &self,
        key: &str,
        write: Write,
        chain: &WriteChain,
        ahead: bool,
    ) -> (Completion, Durable) {
        match self.check_write(key, &write) {
            Err(err) => (Completion::Ready(Err(err)), Durable::already()),
            Ok(()) => self.store.backend.write_chained(
                &self.ns,
                key,
                write,
                self.store.limits,
                chain,
                ahead,
            ),
        }
    }

    fn check_write(&self, key: &str, write: &Write) -> Result<(), KvError> {
        self.check_key(key).and_then(|()| match write {
            Write::Set(value) | Write::CompareAndSwap { new: value, .. } => self.check_value(value),
            Write::Delete | Write::Increment(_) => Ok(()),
        })
    }
}
