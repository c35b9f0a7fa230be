//! The on-disk backend: one redb database file in `state_dir`, written by
//! one thread that commits concurrent writes together.
//!
//! redb is a pure-Rust embedded database with ACID transactions whose
//! commits are durable (fsynced): when a write's reply leaves, its change
//! survives a crash of the server. An fsync costs about as much for one
//! write as for a thousand, so writers do not each wait for their own: the
//! writer thread takes every write queued while the previous commit synced
//! and applies them, in order, in one transaction (group commit). Each
//! write's outcome is decided inside that transaction, so `increment` and
//! `compare-and-swap` stay atomic; none is answered before the commit.
//!
//! The store heals instead of wedging. A failed commit (an I/O error, a
//! full disk, a panic inside the database) fails only the writes it held;
//! the database is then reopened before the next write, because redb
//! refuses every write after an I/O error until it is. A reserve file of
//! a few MiB beside the database is given up when the disk fills, so that
//! deletes can still commit and make room; it is taken back once the disk
//! has room again. A state file deleted or replaced under the server is
//! noticed before each commit: writes are then refused, never acknowledged
//! into a file nobody will read.
//!
//! Every value carries a checksum, checked as it is read (`sealed.rs`): a
//! damaged value is never served as data.
//!
//! Reads are answered from memory once a namespace has been read
//! (`cache.rs`): the writer applies each commit there before answering it.
//!
//! The parts: the writer thread and its group commit (`writer.rs`), the
//! read cache (`cache.rs`), the reserve (`reserve.rs`), the watch on the
//! state file (`watch.rs`), the values' checksums (`sealed.rs`); reads and
//! the store's face are here.

mod cache;
mod reserve;
mod sealed;
mod watch;
mod writer;

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, PoisonError, RwLock};
use std::thread::JoinHandle;

use anyhow::Context;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use tokio::sync::oneshot;

use super::{
    Backend, Completion, Durable, KvError, KvLimits, Unavailable, Usage, Write, WriteChain, Written,
};
use cache::{Cached, Claim, ReadCache, Ticket};
use reserve::Reserve;
use watch::Watched;
use writer::Writer;

pub const FILE_NAME: &str = "state.redb";
/// The reserve's file (see `reserve.rs`).
pub const RESERVE_NAME: &str = "state.reserve";

const ENTRIES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("entries");
/// Keys and bytes per namespace, in the same transactions as the entries.
const USAGE: TableDefinition<&str, (u32, u64)> = TableDefinition::new("usage");
/// Key counts alone, as stores written before the byte quota kept them.
const KEY_COUNTS: TableDefinition<&str, u32> = TableDefinition::new("key_counts");
/// The store's format; `value_format` is [`sealed::FORMAT`] once every
/// value carries its checksum.
const META: TableDefinition<&str, u32> = TableDefinition::new("meta");
const VALUE_FORMAT: &str = "value_format";

pub struct DiskStore {
    shared: Arc<Shared>,
    /// `None` only while dropping, to let the writer finish.
    jobs: Option<mpsc::Sender<Job>>,
    writer: Option<JoinHandle<()>>,
}

/// What readers and the writer share.
struct Shared {
    path: PathBuf,
    /// `None` while a reopen failed: reads and writes are then unavailable.
    db: RwLock<Option<Database>>,
    /// A read failed inside the database: the writer reopens it.
    reopen_wanted: AtomicBool,
    /// Writes sent and not yet answered.
    queued: AtomicUsize,
    /// What reads are answered from; the writer keeps it coherent.
    cache: ReadCache,
}

impl Shared {
    /// The database as it is now, held open while the guard lives (a reopen
    /// waits for it).
    fn database(&self) -> std::sync::RwLockReadGuard<'_, Option<Database>> {
        self.db.read().unwrap_or_else(PoisonError::into_inner)
    }
}

enum Job {
    Write(WriteJob),
    /// Sent by a read that found the database failing.
    Reopen,
}

/// Where a write's result goes.
type Reply = oneshot::Sender<Result<Written, KvError>>;

/// Where a write answered ahead of its commit learns whether it is durable.
type DurableReply = oneshot::Sender<Result<(), Unavailable>>;

struct WriteJob {
    ns: String,
    key: String,
    write: Write,
    limits: KvLimits,
    reply: Reply,
    /// Set for a write answered once applied (`write_chained`): told here
    /// whether its commit made it durable.
    durable: Option<DurableReply>,
    /// The batch call's writes it is one of.
    chain: Option<WriteChain>,
}

impl DiskStore {
    /// Opens (or creates) the store in `dir`, answering reads from up to
    /// `cache_bytes` of memory. A damaged or foreign file is an error naming
    /// it, never replaced: state is not silently lost.
    pub fn open(dir: &Path, cache_bytes: u64) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create `state_dir` {}", dir.display()))?;
        let path = dir.join(FILE_NAME);
        let db = open_database(&path).with_context(|| {
            format!(
                "cannot open the state store {}: if the file is damaged, move it \
                 aside to start with an empty store",
                path.display()
            )
        })?;
        let identity = Watched::open(&path)
            .with_context(|| format!("cannot read the state store {}", path.display()))?;
        let reserve = Reserve::new(dir.join(RESERVE_NAME));
        if let Err(err) = reserve.fill() {
            tracing::warn!(
                file = %reserve.path.display(),
                "cannot set {} KiB aside for deletes on a full disk: {err:#}",
                reserve.bytes() >> 10
            );
        }
        let shared = Arc::new(Shared {
            path,
            db: RwLock::new(Some(db)),
            reopen_wanted: AtomicBool::new(false),
            queued: AtomicUsize::new(0),
            cache: ReadCache::new(cache_bytes),
        });
        let (jobs, queue) = mpsc::channel();
        let writer = Writer::new(shared.clone(), identity, reserve);
        let writer = std::thread::Builder::new()
            .name("plugboard-state".into())
            .spawn(move || writer.run(queue))
            .context("cannot start the state store's writer thread")?;
        Ok(Self {
            shared,
            jobs: Some(jobs),
            writer: Some(writer),
        })
    }

    /// Runs a read against the database as it is now; a failure or a panic
    /// inside it makes the read unavailable and asks for a reopen.
    fn read<T>(
        &self,
        read: impl FnOnce(&Database) -> Result<T, redb::Error>,
    ) -> Result<T, Unavailable> {
        let slot = self.shared.database();
        let Some(db) = slot.as_ref() else {
            return Err(Unavailable("the state store could not be reopened".into()));
        };
        match catch_unwind(AssertUnwindSafe(|| read(db))) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(self.read_failed(format!("reading failed: {err}"))),
            Err(panic) => {
                Err(self.read_failed(format!("the store panicked: {}", panic_text(&panic))))
            }
        }
    }

    /// `answer` from the cache, copying `ns` in first when it is not held
    /// and fits; `None` when the file must be read.
    fn cached<T>(&self, ns: &str, answer: impl Fn(&ReadCache) -> Option<T>) -> Option<T> {
        let cache = &self.shared.cache;
        if let Some(answer) = answer(cache) {
            return Some(answer);
        }
        let Claim::Load(ticket) = cache.claim(ns) else {
            return None;
        };
        match self.read(|db| copy_namespace(db, ns, ticket, cache)) {
            Ok(Some(entries)) => cache.fill(ns, ticket, entries),
            // It did not fit: the cache marked it.
            Ok(None) => {}
            Err(_) => cache.read_file_for_a_while(ns, ticket),
        }
        answer(cache)
    }

    fn read_failed(&self, reason: String) -> Unavailable {
        self.shared.reopen_wanted.store(true, Ordering::Relaxed);
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(Job::Reopen);
        }
        Unavailable(reason)
    }
}

impl Drop for DiskStore {
    /// Lets the writer finish the queued writes, so that the database is
    /// closed cleanly (no repair at the next start).
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Backend for DiskStore {
    fn get(&self, ns: &str, key: &str) -> Completion<Option<Vec<u8>>> {
        if let Some(cached) = self.cached(ns, |cache| cache.get(ns, key)) {
            let value = match cached {
                None => Ok(None),
                Some(Cached::Value(value)) => Ok(Some(value)),
                Some(Cached::Damaged) => Err(damaged(key)),
            };
            return value.into();
        }
        self.read(|db| {
            let tx = db.begin_read()?;
            let entries = tx.open_table(ENTRIES)?;
            let value = entries.get((ns, key))?;
            Ok(value.map(|v| match sealed::open(ns, key, v.value()) {
                Ok(value) => Ok(value.to_vec()),
                Err(_) => Err(damaged(key)),
            }))
        })
        .and_then(Option::transpose)
        .into()
    }

    fn usage(&self, ns: &str) -> Completion<Usage> {
        self.read(|db| {
            let tx = db.begin_read()?;
            let usage = tx.open_table(USAGE)?;
            let (keys, bytes) = usage.get(ns)?.map_or((0, 0), |u| u.value());
            Ok(Usage { keys, bytes })
        })
        .into()
    }

    fn list_keys(&self, ns: &str, prefix: &str) -> Completion<Vec<String>> {
        if let Some(keys) = self.cached(ns, |cache| cache.list_keys(ns, prefix)) {
            return Completion::Ready(Ok(keys));
        }
        self.read(|db| {
            let tx = db.begin_read()?;
            let entries = tx.open_table(ENTRIES)?;
            let mut keys = Vec::new();
            for item in entries.range((ns, prefix)..)? {
                let (entry, _) = item?;
                let (entry_ns, key) = entry.value();
                if entry_ns != ns || !key.starts_with(prefix) {
                    break;
                }
                keys.push(key.to_owned());
            }
            Ok(keys)
        })
        .into()
    }

    fn write(&self, ns: &str, key: &str, write: Write, limits: KvLimits) -> Completion {
        self.send_write(ns, key, write, limits, None, None)
    }

    fn write_chained(
        &self,
        ns: &str,
        key: &str,
        write: Write,
        limits: KvLimits,
        chain: &WriteChain,
        ahead: bool,
    ) -> (Completion, Durable) {
        let chain = Some(chain.clone());
        if !ahead {
            let completion = self.send_write(ns, key, write, limits, None, chain);
            return (completion, Durable::already());
        }
        let (durable, receiver) = oneshot::channel();
        let completion = self.send_write(ns, key, write, limits, Some(durable), chain);
        (completion, Durable::when(receiver))
    }
}

impl DiskStore {
    fn send_write(
        &self,
        ns: &str,
        key: &str,
        write: Write,
        limits: KvLimits,
        durable: Option<DurableReply>,
        chain: Option<WriteChain>,
    ) -> Completion {
        let (reply, receiver) = oneshot::channel();
        let job = Job::Write(WriteJob {
            ns: ns.to_owned(),
            key: key.to_owned(),
            write,
            limits,
            reply,
            durable,
            chain,
        });
        // Counted before it is sent, so the writer never counts it out first.
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        // A send fails only once the writer is gone; the receiver then says so.
        if self
            .jobs
            .as_ref()
            .is_none_or(|jobs| jobs.send(job).is_err())
        {
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
        }
        Completion::Pending(receiver)
    }
}

fn damaged(key: &str) -> Unavailable {
    Unavailable(format!("the value of {key:?} is damaged"))
}

/// Every entry of `ns`, in one read transaction, when its size fits in the
/// cache (asked of `cache` before anything is copied).
fn copy_namespace(
    db: &Database,
    ns: &str,
    ticket: Ticket,
    cache: &ReadCache,
) -> Result<Option<BTreeMap<String, Cached>>, redb::Error> {
    let tx = db.begin_read()?;
    let (keys, bytes) = tx.open_table(USAGE)?.get(ns)?.map_or((0, 0), |u| u.value());
    if !cache.make_room(ns, ticket, bytes + u64::from(keys) * cache::ENTRY_OVERHEAD) {
        return Ok(None);
    }
    let entries = tx.open_table(ENTRIES)?;
    let mut copy = BTreeMap::new();
    for item in entries.range((ns, "")..)? {
        let (entry, value) = item?;
        let (entry_ns, key) = entry.value();
        if entry_ns != ns {
            break;
        }
        let value = match sealed::open(ns, key, value.value()) {
            Ok(value) => Cached::Value(value.to_vec()),
            Err(_) => Cached::Damaged,
        };
        copy.insert(key.to_owned(), value);
    }
    Ok(Some(copy))
}

/// Opens the database at `path`, creating it (and its tables) if absent.
fn open_database(path: &Path) -> anyhow::Result<Database> {
    // redb makes a new database of an empty file: an empty state file is
    // damage (a crash mid-creation, a copy gone wrong), not a new store.
    if std::fs::metadata(path).is_ok_and(|meta| meta.len() == 0) {
        anyhow::bail!("the file is empty (0 bytes), not a plugboard state store");
    }
    let db = Database::create(path)?;
    let tx = db.begin_write()?;
    tx.open_table(ENTRIES)?;
    let has_usage = tx.list_tables()?.any(|table| table.name() == USAGE.name());
    if !has_usage {
        count_usage(&tx)?;
    }
    let format = tx.open_table(META)?.get(VALUE_FORMAT)?.map(|f| f.value());
    match format {
        Some(sealed::FORMAT) => {}
        None => seal_every_value(&tx)?,
        Some(other) => anyhow::bail!(
            "the store's value format is {other}, newer than this plugboard's ({}): \
             it was written by a newer version",
            sealed::FORMAT
        ),
    }
    tx.commit()?;
    Ok(db)
}

/// Gives every value its checksum: once, for a store written before values
/// carried one. In the transaction that opens the store, so a crash midway
/// leaves it as it was.
fn seal_every_value(tx: &redb::WriteTransaction) -> Result<(), redb::Error> {
    let mut entries = tx.open_table(ENTRIES)?;
    let plain: Vec<(String, String, Vec<u8>)> = entries
        .iter()?
        .map(|item| {
            let (entry, value) = item?;
            let (ns, key) = entry.value();
            Ok((ns.to_owned(), key.to_owned(), value.value().to_vec()))
        })
        .collect::<Result<_, redb::StorageError>>()?;
    for (ns, key, value) in plain {
        entries.insert(
            (ns.as_str(), key.as_str()),
            sealed::seal(&ns, &key, &value).as_slice(),
        )?;
    }
    tx.open_table(META)?.insert(VALUE_FORMAT, sealed::FORMAT)?;
    Ok(())
}

/// Fills the usage table from the entries: once, for a store written
/// before the byte quota.
fn count_usage(tx: &redb::WriteTransaction) -> Result<(), redb::Error> {
    let entries = tx.open_table(ENTRIES)?;
    let mut usage = tx.open_table(USAGE)?;
    for item in entries.iter()? {
        let (entry, value) = item?;
        let (ns, key) = entry.value();
        let (keys, bytes) = usage.get(ns)?.map_or((0, 0), |u| u.value());
        let size = super::entry_bytes(key, value.value());
        usage.insert(ns, (keys + 1, bytes + size))?;
    }
    drop((entries, usage));
    tx.delete_table(KEY_COUNTS)?;
    Ok(())
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store written before the byte quota (key counts only) gets its
    /// usage counted once, so the quota holds for what it already has.
    #[test]
    fn a_store_from_before_the_byte_quota_is_counted_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut entries = tx.open_table(ENTRIES).unwrap();
                entries.insert(("p", "key"), &b"123456"[..]).unwrap();
                let mut counts = tx.open_table(KEY_COUNTS).unwrap();
                counts.insert("p", 1).unwrap();
            }
            tx.commit().unwrap();
        }
        let limits = KvLimits {
            max_key_bytes: 16,
            max_value_bytes: 16,
            max_keys: 2,
            max_bytes: 12,
        };
        let store = DiskStore::open(dir.path(), 1 << 20).unwrap();
        let write = |key: &str, value: &[u8]| {
            store
                .write("p", key, Write::Set(value.to_vec()), limits)
                .wait_blocking()
        };
        // 9 bytes held: 3 more fit, 4 do not.
        assert_eq!(write("ab", b"12"), Err(KvError::OverQuota(12)));
        assert_eq!(write("a", b"12"), Ok(Written::Set));
        assert_eq!(write("b", b""), Err(KvError::TooManyKeys(2)));
        // Its values were given their checksums as it opened.
        assert_eq!(
            store.get("p", "key").wait_blocking(),
            Ok(Some(b"123456".to_vec()))
        );
    }

    const LIMITS: KvLimits = KvLimits {
        max_key_bytes: 64,
        max_value_bytes: 64,
        max_keys: 100,
        max_bytes: 1 << 20,
    };

    /// Once one of a chain's writes is lost, the rest are refused, never
    /// committed: a lost `set` is not followed by the `delete` that rested
    /// on it.
    #[test]
    fn writes_of_a_broken_chain_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path(), 1 << 20).unwrap();
        let chain = WriteChain::default();
        let set = |key: &str, ahead: bool| {
            let write = Write::Set(b"v".to_vec());
            let (answer, durable) = store.write_chained("p", key, write, LIMITS, &chain, ahead);
            (answer.wait_blocking(), durable)
        };
        let (answered, durable) = set("a", true);
        assert_eq!(answered, Ok(Written::Set));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(runtime.block_on(durable.wait()), Ok(()));
        chain.break_off();
        for ahead in [true, false] {
            let (answered, _) = set("b", ahead);
            assert!(
                matches!(answered, Err(KvError::Unavailable(_))),
                "{answered:?}"
            );
        }
        assert_eq!(store.get("p", "b").wait_blocking(), Ok(None));
        assert_eq!(store.get("p", "a").wait_blocking(), Ok(Some(b"v".to_vec())));
    }

    /// A write of a chain that the store refuses breaks the chain off.
    #[test]
    fn a_refused_write_breaks_its_chain() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path(), 1 << 20).unwrap();
        let chain = WriteChain::default();
        std::fs::remove_file(dir.path().join(FILE_NAME)).unwrap();
        let write = Write::Set(b"v".to_vec());
        let (answered, durable) = store.write_chained("p", "a", write, LIMITS, &chain, true);
        assert!(matches!(
            answered.wait_blocking(),
            Err(KvError::Unavailable(_))
        ));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(runtime.block_on(durable.wait()).is_err());
        assert!(chain.is_broken());
    }
}
