//! The writer thread: the one place writes are committed, in groups (one
//! sync for every write queued meanwhile), healing from failed commits.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, mpsc};
use std::time::{Duration, Instant};

use redb::{ReadableTable, Table};

use super::cache::Committed;
use super::reserve::Reserve;
use super::sealed::{self, Damaged};
use super::watch::Watched;
use super::{ENTRIES, Job, Reply, Shared, USAGE, WriteJob, open_database, panic_text};
use crate::store::{Change, KvError, KvLimits, Unavailable, Usage, Write, Written};

/// Writes in one commit, at most: bounds the time the first waits.
const MAX_BATCH: usize = 1024;
/// The longest a batch waits for the previous batch's writers to return.
const MAX_GATHER: Duration = Duration::from_millis(1);
/// How often a store that fails to reopen tries again.
const REOPEN_EVERY: Duration = Duration::from_millis(250);

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
pub struct Writer {
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
    pub fn new(shared: Arc<Shared>, identity: Watched, reserve: Reserve) -> Self {
        Self {
            shared,
            identity,
            reserve,
            detached: None,
            failing: false,
            needs_reopen: false,
            next_reopen: Instant::now(),
            disk_full: false,
        }
    }

    pub fn run(mut self, queue: mpsc::Receiver<Job>) {
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
        let mut namespaces: Vec<String> = writes.iter().map(|(ns, ..)| ns.clone()).collect();
        namespaces.sort_unstable();
        namespaces.dedup();
        let cache = &self.shared.cache;
        cache.begin_commit(&namespaces);
        match self.commit(writes) {
            Ok(_) if let Err(reason) = self.still_attached() => {
                self.shared.cache.end_commit(&namespaces, None);
                refuse(replies, &reason)
            }
            Ok(Outcome { results, committed }) => {
                // Before the replies: a write is read everywhere once answered.
                self.shared.cache.end_commit(&namespaces, Some(committed));
                if std::mem::take(&mut self.failing) {
                    tracing::info!(file = %self.shared.path.display(), "state store writes work again");
                }
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(fault) => {
                // Whether a failed commit reached the file is not known.
                self.shared.cache.end_commit(&namespaces, None);
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
        self.shared.cache.clear();
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
        let reserve = self.reserve.bytes();
        if free >= 2 * reserve && self.reserve.fill().is_ok() {
            self.disk_full = false;
            tracing::info!(file = %self.shared.path.display(), "the disk has room again: all writes go on");
            return batch;
        }
        // What the admitted writes may add, at most: a quarter of the reserve.
        let mut allowance = if free >= reserve { reserve / 4 } else { 0 };
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
                "the disk is full: the {} KiB reserve is given up so that deletes \
                 can make room; other writes are refused until there is room",
                self.reserve.bytes() >> 10
            );
        }
        self.needs_reopen = true;
    }

    /// Applies the writes in order in one transaction and commits it once.
    fn commit(&self, writes: Vec<(String, String, Write, KvLimits)>) -> Result<Outcome, Fault> {
        let slot = self.shared.database();
        let Some(db) = slot.as_ref() else {
            return Err(Fault {
                reason: "the state store is closed".into(),
                disk_full: false,
            });
        };
        let committed = catch_unwind(AssertUnwindSafe(|| -> Result<_, redb::Error> {
            let tx = db.begin_write()?;
            let mut committed = Vec::new();
            let results = {
                let mut entries = tx.open_table(ENTRIES)?;
                let mut usage = tx.open_table(USAGE)?;
                writes
                    .into_iter()
                    .map(|(ns, key, write, limits)| {
                        let result = apply(&mut entries, &mut usage, &ns, &key, write, &limits)?;
                        Ok(result.map(|applied| match applied {
                            Applied::Kept(written) => written,
                            Applied::Changed(written, value) => {
                                committed.push(Committed { ns, key, value });
                                written
                            }
                        }))
                    })
                    .collect::<Result<Vec<_>, redb::Error>>()?
            };
            tx.commit()?;
            Ok(Outcome { results, committed })
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

/// A committed transaction: each write's result, and the keys it changed
/// with their final values.
struct Outcome {
    results: Vec<Result<Written, KvError>>,
    committed: Vec<Committed>,
}

/// What one write did to its key.
enum Applied {
    Kept(Written),
    /// The key's new value (`None`: removed).
    Changed(Written, Option<Vec<u8>>),
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
) -> Result<Result<Applied, KvError>, redb::Error> {
    let stored = entries.get((ns, key))?.map(|v| v.value().to_vec());
    let current = match stored
        .as_deref()
        .map(|stored| sealed::open(ns, key, stored))
    {
        None => None,
        Some(Ok(value)) => Some(value),
        // Replacing or removing a damaged value needs nothing from it but
        // its size; anything else would act on damaged data.
        Some(Err(Damaged(value))) if matches!(write, Write::Set(_) | Write::Delete) => Some(value),
        Some(Err(_)) => {
            return Ok(Err(super::damaged(key).into()));
        }
    };
    let (keys, bytes) = usage.get(ns)?.map_or((0, 0), |u| u.value());
    let before = Usage { keys, bytes };
    let plan = match write.plan(key, current, before, limits) {
        Ok(plan) => plan,
        Err(err) => return Ok(Err(err)),
    };
    let change = match plan.change {
        Change::Keep => return Ok(Ok(Applied::Kept(plan.written))),
        Change::Put(value) => {
            let sealed = sealed::seal(ns, key, &value);
            drop(entries.insert((ns, key), sealed.as_slice())?);
            Some(value)
        }
        Change::Remove => {
            drop(entries.remove((ns, key))?);
            None
        }
    };
    // Most writes keep a key's size (a counter, a flag): one page less to sync.
    if plan.usage != before {
        usage.insert(ns, (plan.usage.keys, plan.usage.bytes))?;
    }
    Ok(Ok(Applied::Changed(plan.written, change)))
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
