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

use std::fs::File;
use std::io::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use inotify::{Inotify, WatchMask};
use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition, TableHandle};
use tokio::sync::oneshot;

use super::{Backend, Change, Completion, KvError, KvLimits, Unavailable, Usage, Write, Written};

pub const FILE_NAME: &str = "state.redb";
/// Space held back on the state's file system for deletes on a full disk.
pub const RESERVE_NAME: &str = "state.reserve";
const RESERVE_BYTES: u64 = 8 << 20;

const ENTRIES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("entries");
/// Keys and bytes per namespace, in the same transactions as the entries.
const USAGE: TableDefinition<&str, (u32, u64)> = TableDefinition::new("usage");
/// Key counts alone, as stores written before the byte quota kept them.
const KEY_COUNTS: TableDefinition<&str, u32> = TableDefinition::new("key_counts");

/// Writes in one commit, at most: bounds the time the first waits.
const MAX_BATCH: usize = 1024;
/// The longest a batch waits for the previous batch's writers to return.
const MAX_GATHER: Duration = Duration::from_millis(1);
/// How often a store that fails to reopen tries again.
const REOPEN_EVERY: Duration = Duration::from_millis(250);

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

struct WriteJob {
    ns: String,
    key: String,
    write: Write,
    limits: KvLimits,
    reply: Reply,
}

impl DiskStore {
    /// Opens (or creates) the store in `dir`. A damaged or foreign file is an
    /// error naming it, never replaced: state is not silently lost.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
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
                "cannot set {} MiB aside for deletes on a full disk: {err:#}",
                RESERVE_BYTES >> 20
            );
        }
        let shared = Arc::new(Shared {
            path,
            db: RwLock::new(Some(db)),
            reopen_wanted: AtomicBool::new(false),
            queued: AtomicUsize::new(0),
        });
        let (jobs, queue) = mpsc::channel();
        let writer = Writer {
            shared: shared.clone(),
            identity,
            reserve,
            detached: None,
            failing: false,
            needs_reopen: false,
            next_reopen: Instant::now(),
            disk_full: false,
        };
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
        self.read(|db| {
            let tx = db.begin_read()?;
            let entries = tx.open_table(ENTRIES)?;
            let value = entries.get((ns, key))?;
            Ok(value.map(|v| v.value().to_vec()))
        })
        .into()
    }

    fn list_keys(&self, ns: &str, prefix: &str) -> Completion<Vec<String>> {
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
        let (reply, receiver) = oneshot::channel();
        let job = Job::Write(WriteJob {
            ns: ns.to_owned(),
            key: key.to_owned(),
            write,
            limits,
            reply,
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
    tx.commit()?;
    Ok(db)
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

/// The state file as opened, watched for being deleted, replaced or moved.
///
/// The kernel queues an inotify event for the file (its link count changed,
/// it moved) or its directory (moved, deleted) during the very call that
/// does it, so reading the queue before replying misses nothing done
/// before; the file itself is checked only when something happened to it.
/// (A `stat` of it on every commit, measured, cost a lone writer a sixth of
/// its latency.)
struct Watched {
    path: PathBuf,
    file: File,
    events: Inotify,
}

impl Watched {
    fn open(path: &Path) -> std::io::Result<Self> {
        let file = File::open(path)?;
        let events = Inotify::init()?;
        events.watches().add(
            path,
            WatchMask::ATTRIB | WatchMask::MOVE_SELF | WatchMask::DELETE_SELF,
        )?;
        if let Some(dir) = path.parent() {
            events
                .watches()
                .add(dir, WatchMask::MOVE_SELF | WatchMask::DELETE_SELF)?;
        }
        Ok(Self {
            path: path.to_owned(),
            file,
            events,
        })
    }

    /// Why the path no longer names the file the store writes, if it does not.
    fn check(&mut self) -> Result<(), String> {
        let mut buffer = [0u8; 1024];
        match self.events.read_events(&mut buffer) {
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            // Something happened to the file or its directory: look.
            Ok(_) | Err(_) => {}
        }
        let ours = nix::sys::stat::fstat(&self.file).map_err(|err| err.to_string());
        let there = nix::sys::stat::stat(&self.path).map_err(|err| err.to_string());
        match (ours, there) {
            (Ok(ours), Ok(there))
                if ours.st_nlink > 0
                    && (ours.st_dev, ours.st_ino) == (there.st_dev, there.st_ino) =>
            {
                Ok(())
            }
            (_, Err(err)) => Err(format!(
                "the state file {} is gone ({err}): it was deleted or moved while the server ran",
                self.path.display()
            )),
            _ => Err(format!(
                "the state file {} was replaced by another file while the server ran",
                self.path.display()
            )),
        }
    }
}

/// Room on the state's file system held by a file of zeros (a ballast),
/// given up when the disk fills so that deletes can commit.
struct Reserve {
    path: PathBuf,
}

impl Reserve {
    fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// Makes the reserve whole. Written, not sized: a sparse file holds no room.
    fn fill(&self) -> std::io::Result<()> {
        if std::fs::metadata(&self.path).is_ok_and(|meta| meta.len() == RESERVE_BYTES) {
            return Ok(());
        }
        let written = (|| {
            let mut file = File::create(&self.path)?;
            let chunk = vec![0u8; 1 << 20];
            for _ in 0..RESERVE_BYTES / chunk.len() as u64 {
                file.write_all(&chunk)?;
            }
            file.sync_all()
        })();
        if written.is_err() {
            self.release();
        }
        written
    }

    fn release(&self) {
        let _ = std::fs::remove_file(&self.path);
    }

    /// Free bytes on the reserve's file system (0 if unknown).
    #[allow(
        clippy::unnecessary_cast,
        reason = "statvfs field types vary by platform"
    )]
    fn free_bytes(&self) -> u64 {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        nix::sys::statvfs::statvfs(dir).map_or(0, |stat| {
            (stat.blocks_available() as u64).saturating_mul(stat.fragment_size() as u64)
        })
    }
}

/// Why a commit failed.
struct Fault {
    reason: String,
    disk_full: bool,
}

impl From<redb::Error> for Fault {
    fn from(err: redb::Error) -> Self {
        let disk_full =
            matches!(&err, redb::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull);
        Self {
            reason: err.to_string(),
            disk_full,
        }
    }
}

/// The writer thread's state: the one place writes are committed.
struct Writer {
    shared: Arc<Shared>,
    identity: Watched,
    reserve: Reserve,
    /// Why writes are refused for good: the state file is not ours anymore.
    detached: Option<String>,
    /// Commits are failing: logged once at ERROR when it starts, once at
    /// INFO when it ends.
    failing: bool,
    needs_reopen: bool,
    next_reopen: Instant,
    /// The reserve is given up: deletes are committed, other writes only
    /// while its room is still free (see `admit_on_full_disk`).
    disk_full: bool,
}

impl Writer {
    fn run(mut self, queue: mpsc::Receiver<Job>) {
        let mut last = Gathered::default();
        while let Ok(first) = queue.recv() {
            let mut batch = Vec::new();
            take(&mut batch, first);
            batch_up(&mut batch, &queue, &last);
            // This batch and the writes queued behind it, none answered yet:
            // how many writers there are.
            let writers = self.shared.queued.load(Ordering::Relaxed);
            let started = Instant::now();
            let served = batch.len();
            self.serve(batch);
            self.shared.queued.fetch_sub(served, Ordering::Relaxed);
            last = Gathered {
                writers,
                commit: started.elapsed(),
            };
        }
    }

    fn serve(&mut self, batch: Vec<WriteJob>) {
        if let Err(reason) = self.ready() {
            return refuse(batch.into_iter().map(|job| job.reply), &reason);
        }
        let batch = self.admit_on_full_disk(batch);
        if batch.is_empty() {
            return;
        }
        let (writes, replies): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|job| ((job.ns, job.key, job.write, job.limits), job.reply))
            .unzip();
        match self.commit(writes) {
            Ok(_) if let Err(reason) = self.still_attached() => refuse(replies, &reason),
            Ok(results) => {
                if std::mem::take(&mut self.failing) {
                    tracing::info!(file = %self.shared.path.display(), "state store writes work again");
                }
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(fault) => {
                refuse(replies, &fault.reason);
                self.failed(fault);
            }
        }
    }

    /// Whether the store can take writes now, reopening it if it must.
    fn ready(&mut self) -> Result<(), String> {
        self.still_attached()?;
        if self.shared.reopen_wanted.swap(false, Ordering::Relaxed) {
            self.needs_reopen = true;
        }
        if self.needs_reopen {
            self.reopen()?;
        }
        Ok(())
    }

    /// Whether the state file is still the one at its path. Checked before
    /// a commit, and again after it, before its replies: writes committed
    /// into a file deleted meanwhile are refused, never acknowledged.
    fn still_attached(&mut self) -> Result<(), String> {
        if let Err(reason) = self.identity.check() {
            tracing::error!(
                "{reason}; writes are refused from now on, so that none is \
                 acknowledged into a file nobody will read. Restart the server \
                 to use what is at that path now"
            );
            crate::telemetry::state_store_error();
            self.detached = Some(reason);
        }
        match &self.detached {
            Some(reason) => Err(reason.clone()),
            None => Ok(()),
        }
    }

    fn reopen(&mut self) -> Result<(), String> {
        if Instant::now() < self.next_reopen {
            return Err("the state store is failing; it is reopened shortly".into());
        }
        let mut slot = self
            .shared
            .db
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // redb locks its file: the old handle must close first.
        if let Some(old) = slot.take() {
            let _ = catch_unwind(AssertUnwindSafe(|| drop(old)));
        }
        let opened = catch_unwind(AssertUnwindSafe(|| open_database(&self.shared.path)))
            .unwrap_or_else(|panic| Err(anyhow::anyhow!("panicked: {}", panic_text(&panic))));
        match opened {
            Ok(db) => {
                *slot = Some(db);
                self.needs_reopen = false;
                crate::telemetry::state_store_reopened();
                tracing::info!(file = %self.shared.path.display(), "state store reopened");
                Ok(())
            }
            Err(err) => {
                self.next_reopen = Instant::now() + REOPEN_EVERY;
                Err(format!("the state store cannot be reopened: {err:#}"))
            }
        }
    }

    /// On a full disk the reserve's room is kept for deletes: other writes
    /// go on only while it is still free, a little at a time, and deletes
    /// always. Once the disk has room for the reserve and as much again,
    /// the reserve is taken back and all writes go on.
    fn admit_on_full_disk(&mut self, batch: Vec<WriteJob>) -> Vec<WriteJob> {
        if !self.disk_full {
            return batch;
        }
        let free = self.reserve.free_bytes();
        if free >= 2 * RESERVE_BYTES && self.reserve.fill().is_ok() {
            self.disk_full = false;
            tracing::info!(file = %self.shared.path.display(), "the disk has room again: all writes go on");
            return batch;
        }
        // What the admitted writes may add, at most: a quarter of the reserve.
        let mut allowance = if free >= RESERVE_BYTES {
            RESERVE_BYTES / 4
        } else {
            0
        };
        let (admitted, refused): (Vec<_>, Vec<_>) = batch.into_iter().partition(|job| {
            let grows = match &job.write {
                Write::Delete => return true,
                Write::Set(value) | Write::CompareAndSwap { new: value, .. } => value.len(),
                Write::Increment(_) => 24,
            } as u64
                + job.key.len() as u64;
            allowance
                .checked_sub(grows)
                .map(|left| allowance = left)
                .is_some()
        });
        let refused = refused.into_iter().map(|job| job.reply);
        refuse(refused, "the disk is full (deletes still work)");
        admitted
    }

    fn failed(&mut self, fault: Fault) {
        crate::telemetry::state_store_error();
        if !std::mem::replace(&mut self.failing, true) {
            tracing::error!(
                file = %self.shared.path.display(),
                "state store write failed: {}; the store is reopened and writes \
                 resume when the disk allows",
                fault.reason
            );
        }
        if fault.disk_full && !self.disk_full {
            self.disk_full = true;
            self.reserve.release();
            tracing::warn!(
                file = %self.shared.path.display(),
                "the disk is full: the {} MiB reserve is given up so that deletes \
                 can make room; other writes are refused until there is room",
                RESERVE_BYTES >> 20
            );
        }
        self.needs_reopen = true;
    }

    /// Applies the writes in order in one transaction and commits it once.
    fn commit(
        &self,
        writes: Vec<(String, String, Write, KvLimits)>,
    ) -> Result<Vec<Result<Written, KvError>>, Fault> {
        let slot = self.shared.database();
        let Some(db) = slot.as_ref() else {
            return Err(Fault {
                reason: "the state store is closed".into(),
                disk_full: false,
            });
        };
        let committed = catch_unwind(AssertUnwindSafe(|| -> Result<_, redb::Error> {
            let tx = db.begin_write()?;
            let results = {
                let mut entries = tx.open_table(ENTRIES)?;
                let mut usage = tx.open_table(USAGE)?;
                writes
                    .into_iter()
                    .map(|(ns, key, write, limits)| {
                        apply(&mut entries, &mut usage, &ns, &key, write, &limits)
                    })
                    .collect::<Result<Vec<_>, _>>()?
            };
            tx.commit()?;
            Ok(results)
        }));
        match committed {
            Ok(result) => result.map_err(Fault::from),
            Err(panic) => Err(Fault {
                reason: format!("the store panicked: {}", panic_text(&panic)),
                disk_full: false,
            }),
        }
    }
}

/// One write inside the batch's transaction. Its own outcome (a limit, not a
/// number) is the inner result; a database error fails the whole batch.
fn apply(
    entries: &mut Table<(&str, &str), &[u8]>,
    usage: &mut Table<&str, (u32, u64)>,
    ns: &str,
    key: &str,
    write: Write,
    limits: &KvLimits,
) -> Result<Result<Written, KvError>, redb::Error> {
    let current = entries.get((ns, key))?.map(|v| v.value().to_vec());
    let (keys, bytes) = usage.get(ns)?.map_or((0, 0), |u| u.value());
    let before = Usage { keys, bytes };
    let plan = match write.plan(key, current.as_deref(), before, limits) {
        Ok(plan) => plan,
        Err(err) => return Ok(Err(err)),
    };
    match plan.change {
        Change::Keep => return Ok(Ok(plan.written)),
        Change::Put(value) => drop(entries.insert((ns, key), value.as_slice())?),
        Change::Remove => drop(entries.remove((ns, key))?),
    }
    // Most writes keep a key's size (a counter, a flag): one page less to sync.
    if plan.usage != before {
        usage.insert(ns, (plan.usage.keys, plan.usage.bytes))?;
    }
    Ok(Ok(plan.written))
}

/// After a batch: how many writers there were (answered or queued), and
/// how long its commit took.
#[derive(Default)]
struct Gathered {
    writers: usize,
    commit: Duration,
}

fn take(batch: &mut Vec<WriteJob>, job: Job) {
    if let Job::Write(job) = job {
        batch.push(job);
    }
}

/// Adds the writes queued behind the first. The writers of the previous
/// batch were just answered and are on their way back (a round trip through
/// their plugin): when there are several writers, waiting up to one commit
/// time for all of them lets them share this commit, where otherwise they
/// split into two groups, each waiting for the other's commit
/// (PostgreSQL's `commit_delay`, made adaptive). A lone writer never waits.
fn batch_up(batch: &mut Vec<WriteJob>, queue: &mpsc::Receiver<Job>, last: &Gathered) {
    for job in queue.try_iter().take(MAX_BATCH.saturating_sub(batch.len())) {
        take(batch, job);
    }
    if last.writers < 2 {
        return;
    }
    let deadline = Instant::now() + last.commit.min(MAX_GATHER);
    while batch.len() < last.writers.min(MAX_BATCH) {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break;
        };
        match queue.recv_timeout(left) {
            Ok(job) => take(batch, job),
            Err(_) => break,
        }
    }
}

/// Answers each of `replies` that the store cannot serve, and why.
fn refuse(replies: impl IntoIterator<Item = Reply>, reason: &str) {
    for reply in replies {
        let _ = reply.send(Err(Unavailable(reason.to_owned()).into()));
    }
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
        let store = DiskStore::open(dir.path()).unwrap();
        let write = |key: &str, value: &[u8]| {
            store
                .write("p", key, Write::Set(value.to_vec()), limits)
                .wait_blocking()
        };
        // 9 bytes held: 3 more fit, 4 do not.
        assert_eq!(write("ab", b"12"), Err(KvError::OverQuota(12)));
        assert_eq!(write("a", b"12"), Ok(Written::Set));
        assert_eq!(write("b", b""), Err(KvError::TooManyKeys(2)));
    }
}
