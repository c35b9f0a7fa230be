//! The on-disk backend: one redb database file in `state_dir`.
//!
//! redb is a pure-Rust embedded database with ACID transactions whose
//! commits are durable (fsynced) by default: when an operation returns, its
//! change survives a crash of the server. Each operation is one transaction,
//! so read-modify-write operations (`increment`, `compare-and-swap`) are
//! atomic across connections. A key count per namespace is kept beside the
//! entries, in the same transactions, so enforcing `max_keys_per_plugin`
//! does not scan the namespace.

use std::fmt::Display;
use std::path::Path;

use anyhow::Context;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Backend, SetOutcome, Updater};

pub const FILE_NAME: &str = "state.redb";

const ENTRIES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("entries");
const KEY_COUNTS: TableDefinition<&str, u32> = TableDefinition::new("key_counts");

pub struct DiskStore {
    db: Database,
}

fn storage(err: impl Display) -> String {
    err.to_string()
}

impl DiskStore {
    /// Opens (or creates) the store in `dir`. A damaged file is an error
    /// naming it, never replaced: state is not silently lost.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create `state_dir` {}", dir.display()))?;
        let path = dir.join(FILE_NAME);
        let db = Database::create(&path).with_context(|| {
            format!(
                "cannot open the state store {}: if the file is damaged, move it \
                 aside to start with an empty store",
                path.display()
            )
        })?;
        // Create the tables up front so that reads never find them missing.
        let tx = db.begin_write()?;
        tx.open_table(ENTRIES)?;
        tx.open_table(KEY_COUNTS)?;
        tx.commit()?;
        Ok(Self { db })
    }
}

impl Backend for DiskStore {
    fn get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        let tx = self.db.begin_read().map_err(storage)?;
        let entries = tx.open_table(ENTRIES).map_err(storage)?;
        let value = entries.get((ns, key)).map_err(storage)?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    fn delete(&self, ns: &str, key: &str) -> Result<bool, String> {
        let tx = self.db.begin_write().map_err(storage)?;
        let existed = {
            let mut entries = tx.open_table(ENTRIES).map_err(storage)?;
            let existed = entries.remove((ns, key)).map_err(storage)?.is_some();
            if existed {
                let mut counts = tx.open_table(KEY_COUNTS).map_err(storage)?;
                let count = counts.get(ns).map_err(storage)?.map_or(0, |c| c.value());
                counts
                    .insert(ns, count.saturating_sub(1))
                    .map_err(storage)?;
            }
            existed
        };
        tx.commit().map_err(storage)?;
        Ok(existed)
    }

    fn list_keys(&self, ns: &str, prefix: &str) -> Result<Vec<String>, String> {
        let tx = self.db.begin_read().map_err(storage)?;
        let entries = tx.open_table(ENTRIES).map_err(storage)?;
        let mut keys = Vec::new();
        for item in entries.range((ns, prefix)..).map_err(storage)? {
            let (entry, _) = item.map_err(storage)?;
            let (entry_ns, key) = entry.value();
            if entry_ns != ns || !key.starts_with(prefix) {
                break;
            }
            keys.push(key.to_owned());
        }
        Ok(keys)
    }

    fn update(
        &self,
        ns: &str,
        key: &str,
        max_keys: u32,
        update: Updater<'_>,
    ) -> Result<SetOutcome, String> {
        let tx = self.db.begin_write().map_err(storage)?;
        {
            let mut entries = tx.open_table(ENTRIES).map_err(storage)?;
            let current = entries
                .get((ns, key))
                .map_err(storage)?
                .map(|v| v.value().to_vec());
            // Dropping the transaction without committing changes nothing.
            let Some(value) = update(current.as_deref()) else {
                return Ok(SetOutcome::Unchanged);
            };
            if current.is_none() {
                let mut counts = tx.open_table(KEY_COUNTS).map_err(storage)?;
                let count = counts.get(ns).map_err(storage)?.map_or(0, |c| c.value());
                if count >= max_keys {
                    return Ok(SetOutcome::TooManyKeys);
                }
                counts.insert(ns, count + 1).map_err(storage)?;
            }
            entries
                .insert((ns, key), value.as_slice())
                .map_err(storage)?;
        }
        tx.commit().map_err(storage)?;
        Ok(SetOutcome::Written)
    }

    /// Every commit is synced to disk.
    fn writes_block(&self) -> bool {
        true
    }
}
