//! Reading `config.toml` into a [`Config`].
//!
//! The limit keys (`call_timeout_ms`, ...) may be set at the top level and
//! in every `[plugins.<name>]` table, and are one struct in both places
//! ([`LimitSettings`]). serde's `flatten` would do that, but it reads the
//! flattened keys from a buffer that has lost where they were: a wrong type
//! (`call_timeout_ms = "1s"`) was reported at line 1, with no key. So the
//! document is parsed once into TOML's spanned tables, each table's limit
//! keys are moved into a table of their own, and each part is read from
//! its table: every error keeps its line and names its key.

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, Deserializer};

use super::limits::LIMIT_KEYS;
use super::{Config, LimitSettings};

/// `text` as a config, or the TOML error that says where it is wrong.
pub fn from_toml(text: &str) -> Result<Config, toml::de::Error> {
    let with_input = |mut err: toml::de::Error| {
        err.set_input(Some(text));
        err
    };
    let mut root = DeTable::parse(text).map_err(with_input)?;
    let limits = take_limits(&mut root).map_err(with_input)?;
    let mut plugin_limits = Vec::new();
    if let Some(plugins) = root.get_mut().get_mut("plugins")
        && let DeValue::Table(plugins) = plugins.get_mut()
    {
        for (name, value) in plugins.iter_mut() {
            let span = value.span();
            if let DeValue::Table(table) = value.get_mut() {
                let mut spanned = Spanned::new(span, std::mem::take(table));
                let limits = take_limits(&mut spanned);
                *table = spanned.into_inner();
                plugin_limits.push((name.get_ref().to_string(), limits.map_err(with_input)?));
            }
        }
    }
    let mut config = Config::deserialize(Deserializer::from(root)).map_err(with_input)?;
    config.limits = limits;
    for (name, limits) in plugin_limits {
        if let Some(plugin) = config.plugins.get_mut(&name) {
            plugin.limits = limits;
        }
    }
    Ok(config)
}

/// Moves the limit keys out of `table` and reads them.
fn take_limits(table: &mut Spanned<DeTable<'_>>) -> Result<LimitSettings, toml::de::Error> {
    let span = table.span();
    let mut limits = DeTable::new();
    for key in LIMIT_KEYS {
        if let Some((key, value)) = table.get_mut().remove_entry(key) {
            limits.insert(key, value);
        }
    }
    LimitSettings::deserialize(Deserializer::from(Spanned::new(span, limits)))
}
