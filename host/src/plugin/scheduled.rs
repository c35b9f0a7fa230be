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
use super::sandbox::Sandbox;
use crate::cron::Plan;
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

/// Every loaded plugin's schedules, by plugin name.
pub struct PluginSchedules(watch::Sender<BTreeMap<String, Vec<Scheduled>>>);

impl Default for PluginSchedules {
    fn default() -> Self {
        Self(watch::Sender::new(BTreeMap::new()))
    }
}

impl PluginSchedules {
    /// Every plugin's schedules, now and as they change.
    pub fn subscribe(&self) -> watch::Receiver<BTreeMap<String, Vec<Scheduled>>> {
        self.0.subscribe()
    }

    fn replace(&self, plugin: &str, list: Vec<Scheduled>) {
        self.0.send_if_modified(|all| {
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
            Ok(list) => self.replace(plugin, list),
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
    fn refusal(&self, entry: &Scheduled) -> Option<String> {
        let name_ok = !entry.name.is_empty()
            && entry.name.len() <= 64
            && entry
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            return Some(format!(
                "schedule name '{}': 1 to 64 letters, digits, '-' or '_'",
                entry.name
            ));
        }
        if let Err(err) = Plan::parse(&entry.cron, None) {
            return Some(err.to_string());
        }
        let command = entry.command.split_whitespace().next().unwrap_or_default();
        if command.is_empty() {
            return Some("a schedule's command must not be empty".into());
        }
        if !self.grants().permits_command(command) {
            let plugin = self.plugin_name();
            return Some(format!(
                "permission denied: plugin '{plugin}' may not call '{command}' \
                 (grant it in `allow_commands` of [plugins.{plugin}])"
            ));
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
        self.plugin_schedules().replace(&plugin, list);
        Ok(())
    }
}

impl schedule::Host for Sandbox {
    async fn add(&mut self, entry: schedule::Entry) -> Result<(), String> {
        let entry = Scheduled::from(entry);
        if let Some(why) = self.refusal(&entry) {
            self.denials()
                .command
                .increment(u64::from(why.starts_with("permission")));
            return Err(why);
        }
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
