//! The writes of a `serve-batch` call answered ahead of their commit
//! (`Backend::write_chained`): a command with pipelined commands behind it
//! gets its writes back once they are applied, so that the batch's writes
//! share one sync. The call reads them back through an overlay until their
//! commit is over, and its replies wait until they are durable (see
//! `mod.rs`).

use std::collections::HashMap;

use crate::store::{Durable, Write, WriteChain, Written};

/// A call's writes from the first it wrote ahead of its commit on.
#[derive(Default)]
pub struct Ahead {
    /// Every write of the call from then on: refused once one is lost.
    pub chain: WriteChain,
    /// Each write answered ahead: the call's replies wait for them.
    durables: Vec<Durable>,
    /// What they left (`None`: deleted), and which of `durables` each is:
    /// once its commit is over, the store has it, or a later write.
    overlay: HashMap<String, (Option<Vec<u8>>, usize)>,
    /// The first command of the batch that wrote one (commands before it
    /// were replied to without them).
    first: Option<usize>,
}

/// What a write sets `key` to when it writes: kept for the overlay.
pub fn value_set(write: &Write) -> Option<Vec<u8>> {
    match write {
        Write::Set(value) | Write::CompareAndSwap { new: value, .. } => Some(value.clone()),
        Write::Delete | Write::Increment(_) => None,
    }
}

impl Ahead {
    /// A write to `key` by the batch's command `command`, answered ahead as
    /// `written`; `set` is [`value_set`] of it.
    pub fn record(
        &mut self,
        command: usize,
        key: &str,
        set: Option<Vec<u8>>,
        written: Written,
        mut durable: Durable,
    ) {
        let left = match written {
            Written::Set | Written::Swapped(true) => Some(set),
            Written::Deleted(_) => Some(None),
            Written::Incremented(n) => Some(Some(n.to_string().into_bytes())),
            Written::Swapped(false) => None,
        };
        // Committed already (a store whose writes are durable when
        // answered, or a quick commit): the store answers for it.
        if let Some(left) = left.filter(|_| !durable.is_settled()) {
            self.overlay
                .insert(key.to_owned(), (left, self.durables.len()));
        }
        self.first.get_or_insert(command);
        self.durables.push(durable);
    }

    /// `key`'s value as the call left it, if it wrote it ahead of a commit
    /// still under way.
    pub fn read(&mut self, key: &str) -> Option<Option<Vec<u8>>> {
        self.prune();
        self.overlay.get(key).map(|(value, _)| value.clone())
    }

    /// `keys` (sorted, starting with `prefix`) with the call's writes ahead
    /// of a commit still under way.
    pub fn keys(&mut self, prefix: &str, mut keys: Vec<String>) -> Vec<String> {
        self.prune();
        if self.overlay.is_empty() {
            return keys;
        }
        keys.retain(|key| !matches!(self.overlay.get(key), Some((None, _))));
        let added = self.overlay.iter().filter(|(key, (value, _))| {
            value.is_some() && key.starts_with(prefix) && keys.binary_search(key).is_err()
        });
        let added: Vec<String> = added.map(|(key, _)| key.clone()).collect();
        keys.extend(added);
        keys.sort_unstable();
        keys
    }

    /// What the call's replies wait for, and the first command that wrote
    /// ahead.
    pub fn into_durables(self) -> (Vec<Durable>, usize) {
        (self.durables, self.first.unwrap_or(0))
    }

    /// Forgets the values of writes whose commit is over: the store answers
    /// for them (and for anything written after them) from then on.
    fn prune(&mut self) {
        let durables = &mut self.durables;
        self.overlay
            .retain(|_, (_, index)| durables.get_mut(*index).is_some_and(|d| !d.is_settled()));
    }
}
