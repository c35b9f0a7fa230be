//! When each schedule last ran, kept across restarts in
//! `<state_dir>/schedules.json`: what `catch_up` compares with. A small
//! file of the server's own, written whole and renamed into place, so a
//! crash leaves the previous version, never half of one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use jiff::Timestamp;

pub struct Record {
    path: PathBuf,
    /// Each schedule's last run (when it was due), in milliseconds since the epoch.
    last: BTreeMap<String, i64>,
}

impl Record {
    /// The record in `state_dir`; empty when there is none or it cannot be
    /// read (logged: catching up is then skipped, nothing else).
    pub fn open(state_dir: &Path) -> Self {
        let path = state_dir.join("schedules.json");
        let last = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|err| {
                tracing::warn!(file = %path.display(), "unreadable schedule record, starting afresh: {err}");
                BTreeMap::new()
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(err) => {
                tracing::warn!(file = %path.display(), "cannot read the schedule record: {err}");
                BTreeMap::new()
            }
        };
        Self { path, last }
    }

    /// When `schedule` last ran, if it ever did.
    pub fn last_run(&self, schedule: &str) -> Option<Timestamp> {
        let ms = *self.last.get(schedule)?;
        Timestamp::from_millisecond(ms).ok()
    }

    /// Notes that `schedule` ran (due at `due`) and writes the record.
    pub fn ran(&mut self, schedule: &str, due: Timestamp) {
        self.last.insert(schedule.to_owned(), due.as_millisecond());
        if let Err(err) = self.write() {
            tracing::warn!(file = %self.path.display(), "cannot write the schedule record: {err}");
        }
    }

    /// Forgets the schedules not in `names` (removed from the config).
    pub fn keep_only<'a>(&mut self, names: impl Iterator<Item = &'a str>) {
        let names: std::collections::BTreeSet<&str> = names.collect();
        self.last.retain(|name, _| names.contains(name.as_str()));
    }

    fn write(&self) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let partial = self.path.with_extension("json.partial");
        let bytes = serde_json::to_vec(&self.last).map_err(std::io::Error::other)?;
        std::fs::write(&partial, bytes)?;
        std::fs::rename(&partial, &self.path)
    }
}
