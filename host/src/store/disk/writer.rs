//! The writer thread: the one place writes are committed, in groups (one
//! sync for every write queued meanwhile), healing from failed commits.
//! A write answered ahead (`Backend::write_chained`) is answered once applied
//! and keeps the transaction open a little for the next, which its
//! connection's next pipelined command usually sends at once: a
//! connection's pipelined writes share a sync as different connections'
//! writes do.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, mpsc};
use std::time::{Duration, Instant};

use redb::{ReadableTable, Table};

use super::cache::{Committed, ReadCache};
use super::reserve::Reserve;
use super::sealed::{self, Damaged};
use super::watch::Watched;
use super::{
    DurableReply, ENTRIES, Job, Reply, Shared, USAGE, WriteJob, open_database, panic_text,
};
use crate::store::{Change, KvError, KvLimits, Unavailable, Usage, Write, WriteChain, Written};

/// Writes in one commit, at most: bounds the time the first waits.
const MAX_BATCH: usize = 1024;
/// The longest a batch waits for the previous batch's writers to return.
const MAX_GATHER: Duration = Duration::from_millis(1);
/// After a write answered ahead of its commit (`Backend::write_chained`), how
/// long the transaction stays open for the next write: the next of its
/// connection's pipelined commands usually writes within microseconds, and
/// then shares the commit instead of waiting for one of its own.
const FOLLOW_UP: Duration = Duration::from_micros(100);
/// The longest a transaction stays open for the writes that follow.
const MAX_HOLD: Duration = Duration::from_millis(2);
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
            let (served, following) = self.serve(batch, &queue);
            self.shared.queued.fetch_sub(served, Ordering::Relaxed);
            last = Gathered {
                writers,
                commit: started.elapsed().saturating_sub(following),
            };
        }
    }

    /// Commits `batch`, with the writes that follow it while writes answered
    /// ahead keep coming (see [`FOLLOW_UP`]); returns how many writes it
    /// served and how long it waited for those that followed.
    fn serve(&mut self, batch: Vec<WriteJob>, queue: &mpsc::Receiver<Job>) -> (usize, Duration) {
        let taken = batch.len();
        if let Err(reason) = self.ready() {
            batch
                .into_iter()
                .for_each(|job| Waiting::job(job).refuse(&reason));
            return (taken, Duration::ZERO);
        }
        let batch = self.admit_on_full_disk(batch);
        if batch.is_empty() {
            return (taken, Duration::ZERO);
        }
        // On a full disk, writes are admitted a batch at a time.
        let more = (!self.disk_full).then_some(queue);
        let mut open = Open::default();
        let committed = self.commit(batch, more, &mut open);
        let served = (taken + open.followed, open.following);
        match committed {
            Ok(_) if let Err(reason) = self.still_attached() => {
                self.shared.cache.end_commit(&open.namespaces, None);
                open.refuse(&reason);
            }
            Ok(committed) => {
                // Before the replies: a write is read everywhere once answered.
                self.shared
                    .cache
                    .end_commit(&open.namespaces, Some(committed));
                if std::mem::take(&mut self.failing) {
                    tracing::info!(file = %self.shared.path.display(), "state store writes work again");
                }
                open.answer();
            }
            Err(fault) => {
                // Whether a failed commit reached the file is not known.
                self.shared.cache.end_commit(&open.namespaces, None);
                open.refuse(&fault.reason);
                self.failed(fault);
            }
        }
        served
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
        for job in refused {
            Waiting::job(job).refuse("the disk is full (deletes still work)");
        }
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

    /// Applies `batch` in order in one transaction, then the writes that
    /// follow from `more` while writes answered ahead keep coming, and
    /// commits it once: returns the keys it changed, with their final
    /// values. Each write is entered in `open` before it is applied, so that
    /// every one is answered, whatever happens to the transaction.
    fn commit(
        &self,
        batch: Vec<WriteJob>,
        more: Option<&mpsc::Receiver<Job>>,
        open: &mut Open,
    ) -> Result<Vec<Committed>, Fault> {
        let slot = self.shared.database();
        let Some(db) = slot.as_ref() else {
            for job in batch {
                let _ = open.enter(job);
            }
            return Err(Fault {
                reason: "the state store is closed".into(),
                disk_full: false,
            });
        };
        let cache = &self.shared.cache;
        let committed = catch_unwind(AssertUnwindSafe(|| -> Result<_, redb::Error> {
            let entered: Vec<_> = batch
                .into_iter()
                .filter_map(|job| open.enter(job))
                .collect();
            let tx = db.begin_write()?;
            let mut committed = Vec::new();
            {
                let mut entries = tx.open_table(ENTRIES)?;
                let mut usage = tx.open_table(USAGE)?;
                let mut apply_entered = |open: &mut Open, write: Entered| {
                    open.begin(cache, &write.ns);
                    let result = apply(
                        &mut entries,
                        &mut usage,
                        &write.ns,
                        &write.key,
                        write.write,
                        &write.limits,
                    )?;
                    let result = result.map(|applied| match applied {
                        Applied::Kept(written) => written,
                        Applied::Changed(written, value) => {
                            committed.push(Committed {
                                ns: write.ns,
                                key: write.key,
                                value,
                            });
                            written
                        }
                    });
                    open.applied(write.index, result);
                    Ok::<_, redb::Error>(())
                };
                for write in entered {
                    apply_entered(open, write)?;
                }
                if let Some(queue) = more.filter(|_| open.ahead) {
                    let began = Instant::now();
                    let mut last_ahead = began;
                    while open.waiting.len() < MAX_BATCH {
                        let deadline = (last_ahead + FOLLOW_UP).min(began + MAX_HOLD);
                        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                            break;
                        };
                        let Ok(job) = queue.recv_timeout(left) else {
                            break;
                        };
                        // A failing read's call for a reopen is seen by `ready`.
                        let Job::Write(job) = job else {
                            continue;
                        };
                        open.followed += 1;
                        if job.durable.is_some() {
                            last_ahead = Instant::now();
                        }
                        if let Some(write) = open.enter(job) {
                            apply_entered(open, write)?;
                        }
                    }
                    open.following = began.elapsed();
                }
            }
            tx.commit()?;
            Ok(committed)
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

/// The transaction being filled: the namespaces it writes to, and the
/// writers waiting on it, in order.
#[derive(Default)]
struct Open {
    namespaces: Vec<String>,
    waiting: Vec<Waiting>,
    /// Whether a write was answered ahead of the commit.
    ahead: bool,
    /// Writes taken from the queue after the batch.
    followed: usize,
    /// How long the transaction waited for them.
    following: Duration,
}

/// A write entered in the transaction, to be applied.
struct Entered {
    ns: String,
    key: String,
    write: Write,
    limits: KvLimits,
    /// Its writer's place in [`Open::waiting`].
    index: usize,
}

impl Open {
    /// Enters `job` in the transaction, to be applied; `None` when it is
    /// refused instead: a write of its chain was lost, and so is it.
    fn enter(&mut self, job: WriteJob) -> Option<Entered> {
        if job.chain.as_ref().is_some_and(WriteChain::is_broken) {
            Waiting::of(job.reply, job.durable, job.chain)
                .refuse("an earlier write of the same pipelined commands was lost");
            return None;
        }
        self.ahead |= job.durable.is_some();
        let index = self.waiting.len();
        self.waiting
            .push(Waiting::of(job.reply, job.durable, job.chain));
        Some(Entered {
            ns: job.ns,
            key: job.key,
            write: job.write,
            limits: job.limits,
            index,
        })
    }

    /// Nothing copies `ns` into the read cache until this commit ends.
    fn begin(&mut self, cache: &ReadCache, ns: &str) {
        if !self.namespaces.iter().any(|begun| begun == ns) {
            self.namespaces.push(ns.to_owned());
            cache.begin_commit(std::slice::from_ref(&ns.to_owned()));
        }
    }

    fn applied(&mut self, index: usize, result: Result<Written, KvError>) {
        if let Some(waiting) = self.waiting.get_mut(index) {
            waiting.applied(result);
        }
    }

    /// The commit is durable.
    fn answer(self) {
        self.waiting.into_iter().for_each(Waiting::answer);
    }

    fn refuse(self, reason: &str) {
        for waiting in self.waiting {
            waiting.refuse(reason);
        }
    }
}

/// A writer waiting on the transaction.
struct Waiting {
    /// Its answer, until sent: once applied for a write answered ahead,
    /// once committed otherwise.
    reply: Option<Reply>,
    /// Where a write answered ahead learns whether it became durable.
    durable: Option<DurableReply>,
    /// The batch call's writes it is one of: broken off if it is lost.
    chain: Option<WriteChain>,
    /// What applying it did, for a reply after the commit.
    result: Option<Result<Written, KvError>>,
}

impl Waiting {
    fn of(reply: Reply, durable: Option<DurableReply>, chain: Option<WriteChain>) -> Self {
        Self {
            reply: Some(reply),
            durable,
            chain,
            result: None,
        }
    }

    fn job(job: WriteJob) -> Self {
        Self::of(job.reply, job.durable, job.chain)
    }

    /// A write answered ahead is answered now if it wrote: a refusal (a
    /// limit, a value that is not a number) may rest on another writer's
    /// write in the same transaction, so it waits for the commit, as the
    /// transaction's other answers do.
    fn applied(&mut self, result: Result<Written, KvError>) {
        if self.durable.is_some()
            && result.is_ok()
            && let Some(reply) = self.reply.take()
        {
            let _ = reply.send(result);
            return;
        }
        self.result = Some(result);
    }

    fn answer(self) {
        if let Some(reply) = self.reply {
            let result = self
                .result
                .unwrap_or_else(|| Err(Unavailable("the write was not applied".into()).into()));
            let _ = reply.send(result);
        }
        if let Some(durable) = self.durable {
            let _ = durable.send(Ok(()));
        }
    }

    fn refuse(self, reason: &str) {
        if let Some(chain) = &self.chain {
            chain.break_off();
        }
        if let Some(reply) = self.reply {
            let _ = reply.send(Err(Unavailable(reason.to_owned()).into()));
        }
        if let Some(durable) = self.durable {
            let _ = durable.send(Err(Unavailable(reason.to_owned())));
        }
    }
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
