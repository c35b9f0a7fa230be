//! Reading `config.toml` into a [`Config`].
//!
//! The limit keys (`call_timeout_ms`, ...) and the rollout keys may be set
//! at the top level and in every `[plugins.<name>]` table, and are one
//! struct in both places ([`LimitSettings`], [`RolloutSettings`]). serde's `flatten` would do that, but it reads the
//! flattened keys from a buffer that has lost where they were: a wrong type
//! (`call_timeout_ms = "1s"`) was reported at line 1, with no key. So the
//! document is parsed once into TOML's spanned tables, each table's limit
//! and rollout keys are moved into tables of their own, and each part is read from
//! its table: every error keeps its line and names its key.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, Deserializer};

use super::limits::LIMIT_KEYS;
use super::rollout::{ROLLOUT_KEYS, RolloutSettings};
use super::{Config, LimitSettings};

/// The keys set at the top level and per plugin, read from one table.
struct Shared {
    limits: LimitSettings,
    rollout: RolloutSettings,
}

impl Shared {
    /// Moves the shared keys out of `table` and reads them.
    fn take(table: &mut Spanned<DeTable<'_>>) -> Result<Self, toml::de::Error> {
        Ok(Self {
            limits: take_keys(table, &LIMIT_KEYS)?,
            rollout: take_keys(table, &ROLLOUT_KEYS)?,
        })
    }
}

/// `text` as a config, or the TOML error that says where it is wrong.
pub fn from_toml(text: &str) -> Result<Config, toml::de::Error> {
    let with_input = |mut err: toml::de::Error| {
        err.set_input(Some(text));
        err
    };
    let mut root = DeTable::parse(text).map_err(with_input)?;
    let shared = Shared::take(&mut root).map_err(with_input)?;
    let mut plugin_shared = Vec::new();
    if let Some(plugins) = root.get_mut().get_mut("plugins")
        && let DeValue::Table(plugins) = plugins.get_mut()
    {
        for (name, value) in plugins.iter_mut() {
            let span = value.span();
            if let DeValue::Table(table) = value.get_mut() {
                let mut spanned = Spanned::new(span, std::mem::take(table));
                let own = Shared::take(&mut spanned);
                *table = spanned.into_inner();
                plugin_shared.push((name.get_ref().to_string(), own.map_err(with_input)?));
            }
        }
    }
    let mut config = Config::deserialize(Deserializer::from(root)).map_err(with_input)?;
    config.limits = shared.limits;
    config.rollout = shared.rollout;
    for (name, own) in plugin_shared {
        if let Some(plugin) = config.plugins.get_mut(&name) {
            plugin.limits = own.limits;
            plugin.rollout = own.rollout;
        }
    }
    Ok(config)
}

/// Moves `keys` out of `table` and reads them as a `T`.
fn take_keys<T: DeserializeOwned>(
    table: &mut Spanned<DeTable<'_>>,
    keys: &[&str],
) -> Result<T, toml::de::Error> {
    let span = table.span();
    let mut taken = DeTable::new();
    for key in keys {
        if let Some((key, value)) = table.get_mut().remove_entry(*key) {
            taken.insert(key, value);
        }
    }
    T::deserialize(Deserializer::from(Spanned::new(span, taken)))
}
