//! A plugin's own schedules (the WIT `schedule` interface): command lines
//! the server runs on time for the plugin, as `commands.call` would.
//!
//! They are kept with the plugin's state, in its namespace under
//! [`KEY`], so they outlive a reload and a restart, and [`PluginSchedules`]
//! holds every loaded plugin's list for the scheduler (`schedule/`) to
//! follow: read from the store as the plugin loads, replaced as it adds
//! and removes. The plugin may only schedule commands its `allow_commands`
//! grants, and each run is checked against its grant again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::bindings::plugboard::plugin::schedule;
use super::grants::not_granted;
use super::sandbox::Sandbox;
use crate::cron::Plan;
use crate::protocol::request::Request;
use crate::store::Namespace;

/// Where a plugin's schedules are kept in its namespace.
pub const KEY: &str = "plugboard.schedules";

/// Schedules one plugin may have: a plugin is not a cron daemon.
pub const MAX_PER_PLUGIN: usize = 16;

/// One of a plugin's schedules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scheduled {
    pub name: String,
    pub cron: String,
    pub command: String,
}

/// Longest cron pattern and command line a plugin may schedule.
const MAX_CRON_BYTES: usize = 128;
const MAX_COMMAND_BYTES: usize = 1024;

/// Every loaded plugin's schedules, by plugin name.
pub struct PluginSchedules {
    all: watch::Sender<BTreeMap<String, Vec<Scheduled>>>,
    /// Held from reading a list to publishing the changed one: two
    /// instances of a plugin adding at once lose neither addition.
    edits: tokio::sync::Mutex<()>,
}

impl Default for PluginSchedules {
    fn default() -> Self {
        Self {
            all: watch::Sender::new(BTreeMap::new()),
            edits: tokio::sync::Mutex::new(()),
        }
    }
}

impl PluginSchedules {
    /// Every plugin's schedules, now and as they change.
    pub fn subscribe(&self) -> watch::Receiver<BTreeMap<String, Vec<Scheduled>>> {
        self.all.subscribe()
    }

    /// Stops `plugin`'s schedules: its file was removed. They stay in its
    /// state, and run again if it comes back.
    pub fn forget(&self, plugin: &str) {
        self.all
            .send_if_modified(|all| all.remove(plugin).is_some());
    }

    fn replace(&self, plugin: &str, list: Vec<Scheduled>) {
        self.all.send_if_modified(|all| {
            let unchanged = all.get(plugin).map_or(list.is_empty(), |old| *old == list);
            if !unchanged {
                all.insert(plugin.to_owned(), list);
            }
            !unchanged
        });
    }

    /// Reads the schedules `plugin` keeps in `kv`: as it loads.
    pub(super) async fn load(&self, plugin: &str, kv: &Namespace) {
        let stored = match kv.get(KEY).wait().await {
            Ok(stored) => stored,
            Err(err) => {
                tracing::warn!(plugin, "cannot read the plugin's schedules: {err}");
                return;
            }
        };
        match decode(stored.as_deref()) {
            Ok(list) => self.replace(plugin, checked(plugin, list)),
            Err(err) => tracing::warn!(plugin, "{err}"),
        }
    }
}

fn decode(stored: Option<&[u8]>) -> Result<Vec<Scheduled>, String> {
    match stored {
        None => Ok(Vec::new()),
        Some(bytes) => serde_json::from_slice(bytes)
            .map_err(|err| format!("the stored schedules (key `{KEY}`) are not readable: {err}")),
    }
}

/// What of a list read back from the plugin's namespace may run: the key
/// is the plugin's to overwrite, so what `add` checks is checked again
/// (the grant is checked at each run).
fn checked(plugin: &str, list: Vec<Scheduled>) -> Vec<Scheduled> {
    let mut kept: Vec<Scheduled> = Vec::new();
    for entry in list {
        if let Some(why) = entry_error(&entry) {
            tracing::warn!(
                plugin,
                schedule = entry.name,
                "stored schedule ignored: {why}"
            );
        } else if kept.iter().any(|k| k.name == entry.name) || kept.len() == MAX_PER_PLUGIN {
            tracing::warn!(
                plugin,
                schedule = entry.name,
                "stored schedule ignored: a duplicate or over {MAX_PER_PLUGIN}"
            );
        } else {
            kept.push(entry);
        }
    }
    kept
}

/// Why `entry` is not a schedule a plugin may have, whatever its grant.
fn entry_error(entry: &Scheduled) -> Option<String> {
    let name_ok = !entry.name.is_empty()
        && entry.name.len() <= 64
        && entry
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !name_ok {
        return Some(format!(
            "schedule name '{}': 1 to 64 letters, digits, '-' or '_'",
            entry.name.escape_debug()
        ));
    }
    if entry.cron.len() > MAX_CRON_BYTES {
        return Some(format!("a cron pattern is at most {MAX_CRON_BYTES} bytes"));
    }
    if let Err(err) = Plan::parse(&entry.cron, None) {
        return Some(err.to_string());
    }
    if entry.command.len() > MAX_COMMAND_BYTES || entry.command.contains(char::is_control) {
        return Some(format!(
            "a schedule's command is one line of at most {MAX_COMMAND_BYTES} bytes"
        ));
    }
    if Request::parse(entry.command.as_bytes()).is_err() {
        return Some("a schedule's command must not be empty".into());
    }
    None
}

/// Why a plugin may not add a schedule.
enum Refusal {
    Invalid(String),
    /// The command is not in its `allow_commands`: counted as a denial.
    NotGranted(String),
}

impl From<schedule::Entry> for Scheduled {
    fn from(entry: schedule::Entry) -> Self {
        Self {
            name: entry.name,
            cron: entry.cron,
            command: entry.command,
        }
    }
}

impl From<Scheduled> for schedule::Entry {
    fn from(entry: Scheduled) -> Self {
        Self {
            name: entry.name,
            cron: entry.cron,
            command: entry.command,
        }
    }
}

impl Sandbox {
    /// Why `entry` cannot be one of this plugin's schedules, if it cannot.
    fn refusal(&self, entry: &Scheduled) -> Option<Refusal> {
        if let Some(why) = entry_error(entry) {
            return Some(Refusal::Invalid(why));
        }
        let command = entry.command.split_whitespace().next().unwrap_or_default();
        if !self.grants().permits_command(command) {
            let plugin = self.plugin_name();
            return Some(Refusal::NotGranted(not_granted(plugin, command)));
        }
        None
    }

    async fn stored_schedules(&mut self) -> Result<Vec<Scheduled>, String> {
        let stored = self.read_key(KEY).await?;
        decode(stored.as_deref())
    }

    /// Keeps `list` as this plugin's schedules, and has them run.
    async fn store_schedules(&mut self, list: Vec<Scheduled>) -> Result<(), String> {
        let bytes = serde_json::to_vec(&list).map_err(|err| err.to_string())?;
        self.write_key(KEY, bytes).await?;
        let plugin = self.plugin_name().to_owned();
        let runnable = checked(&plugin, list);
        self.plugin_schedules().replace(&plugin, runnable);
        Ok(())
    }
}

impl schedule::Host for Sandbox {
    async fn add(&mut self, entry: schedule::Entry) -> Result<(), String> {
        let entry = Scheduled::from(entry);
        match self.refusal(&entry) {
            Some(Refusal::Invalid(why)) => return Err(why),
            Some(Refusal::NotGranted(why)) => {
                self.denials().command.increment(1);
                return Err(why);
            }
            None => {}
        }
        let schedules = self.plugin_schedules().clone();
        let _editing = schedules.edits.lock().await;
        let mut list = self.stored_schedules().await?;
        list.retain(|kept| kept.name != entry.name);
        if list.len() >= MAX_PER_PLUGIN {
            return Err(format!(
                "a plugin has at most {MAX_PER_PLUGIN} schedules: remove one first"
            ));
        }
        list.push(entry);
        list.sort_by(|a, b| a.name.cmp(&b.name));
        self.store_schedules(list).await
    }

    async fn remove(&mut self, name: String) -> Result<bool, String> {
        let schedules = self.plugin_schedules().clone();
        let _editing = schedules.edits.lock().await;
        let mut list = self.stored_schedules().await?;
        let before = list.len();
        list.retain(|kept| kept.name != name);
        if list.len() == before {
            return Ok(false);
        }
        self.store_schedules(list).await?;
        Ok(true)
    }

    async fn entries(&mut self) -> Result<Vec<schedule::Entry>, String> {
        let list = self.stored_schedules().await?;
        Ok(list.into_iter().map(schedule::Entry::from).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, cron: &str, command: &str) -> Scheduled {
        Scheduled {
            name: name.into(),
            cron: cron.into(),
            command: command.into(),
        }
    }

    #[test]
    fn what_a_plugin_wrote_itself_is_checked_as_add_checks_it() {
        let mut list = vec![
            entry("ok", "* * * * *", "on"),
            entry("ok", "* * * * *", "off"),
            entry("bad name", "* * * * *", "on"),
            entry("bad-cron", "61 * * * *", "on"),
            entry("two-lines", "* * * * *", "on\noff"),
            entry("empty", "* * * * *", "  "),
            entry("long", &"* ".repeat(100), "on"),
        ];
        list.extend((0..20).map(|n| entry(&format!("n{n}"), "0 0 1 1 *", "on")));
        let kept = checked("p", list);
        assert_eq!(kept.len(), MAX_PER_PLUGIN);
        assert_eq!(kept[0], entry("ok", "* * * * *", "on"));
        assert!(kept[1..].iter().all(|e| e.name.starts_with('n')));
    }

    #[test]
    fn an_unreadable_list_is_an_error_and_none_is_empty() {
        assert_eq!(decode(None), Ok(Vec::new()));
        assert!(decode(Some(b"not json")).is_err());
    }
}
