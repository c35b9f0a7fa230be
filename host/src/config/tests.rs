//! The config as a user writes it: what loads, what is refused, and the
//! message that names the key.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::*;
use crate::plugin::Limits;

fn load(text: &str) -> anyhow::Result<Config> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir(dir.path().join("plugins"))?;
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text)?;
    Config::load(&path)
}

#[test]
fn empty_file_means_defaults_with_paths_relative_to_the_file() {
    let config = load("").unwrap();
    assert_eq!(config.listen, "127.0.0.1:1100");
    assert_eq!(config.max_frame_bytes, 64 * 1024);
    assert!(config.plugin_dir.ends_with("plugins"));
    assert!(config.plugin_dir.is_absolute());
}

#[test]
fn a_relative_config_path_gives_absolute_directories() {
    let dir = tempfile::tempdir_in(".").unwrap();
    std::fs::create_dir(dir.path().join("plugins")).unwrap();
    let name = dir.path().file_name().unwrap();
    let relative = Path::new(name).join("config.toml");
    std::fs::write(&relative, "cache_dir = \"cache\"").unwrap();
    let config = Config::load(&relative).unwrap();
    for path in [&config.plugin_dir, &config.cache_dir, &config.state_dir] {
        assert!(path.is_absolute(), "{}", path.display());
    }
    assert!(config.plugin_dir.is_dir());
}

#[test]
fn unknown_key_is_named() {
    let err = format!("{:#}", load("max_frame_byte = 10").unwrap_err());
    assert!(err.contains("max_frame_byte"), "{err}");
}

#[test]
fn bad_value_is_named() {
    let err = format!("{:#}", load("max_connections = \"many\"").unwrap_err());
    assert!(err.contains("max_connections"), "{err}");
}

/// A Redis setting that cannot work is a startup error naming the key,
/// and never prints the password; Redis itself is not asked (it may be
/// down at startup).
#[test]
fn redis_settings_are_checked_at_load() {
    let config = load("state_store = \"redis\"\nredis_url = \"redis://:pw@10.0.0.1:6379/2\"");
    assert_eq!(config.unwrap().state_store, StateStore::Redis);
    let err = format!(
        "{:#}",
        load("state_store = \"redis\"\nredis_url = \"http://:s3cret@x\"").unwrap_err()
    );
    assert!(
        err.contains("redis_url") && !err.contains("s3cret"),
        "{err}"
    );
    let err = format!(
        "{:#}",
        load("state_store = \"redis\"\nredis_ca = \"ca.pem\"").unwrap_err()
    );
    assert!(
        err.contains("redis_ca") && err.contains("rediss://"),
        "{err}"
    );
    let err = format!(
        "{:#}",
        load("state_store = \"redis\"\nredis_url = \"rediss://db\"\nredis_ca = \"ca.pem\"")
            .unwrap_err()
    );
    assert!(err.contains("redis_ca") && err.contains("ca.pem"), "{err}");
    let err = format!("{:#}", load("redis_timeout_ms = 0").unwrap_err());
    assert!(err.contains("redis_timeout_ms"), "{err}");
}

#[test]
fn zero_limits_are_rejected() {
    let err = format!("{:#}", load("max_frame_bytes = 0").unwrap_err());
    assert!(err.contains("max_frame_bytes"), "{err}");
}

#[test]
fn plugin_tables_override_top_level_limits() {
    let config = load(
        "call_timeout_ms = 500\nmax_memory_mib = 32\n\
         [plugins.slow]\ncall_timeout_ms = 5000\n",
    )
    .unwrap();
    let slow = config.limits_for("slow");
    assert_eq!(slow.call_timeout, Duration::from_millis(5000));
    assert_eq!(slow.max_memory_bytes, 32 << 20);
    let other = config.limits_for("other");
    assert_eq!(other.call_timeout, Duration::from_millis(500));
    assert_eq!(other.max_reply_bytes, 1 << 20);
}

#[test]
fn plugin_tables_override_the_top_level_rollout() {
    let config = load(
        "rollout_canary_percent = 25\n\
         [plugins.careful]\nrollout_window_ms = 60000\n\
         [plugins.bold]\nrollout_canary_percent = 0\n",
    )
    .unwrap();
    let careful = config.rollout_for("careful");
    assert_eq!(careful.canary_percent, 25);
    assert_eq!(careful.window, Duration::from_secs(60));
    assert_eq!(config.rollout_for("bold").canary_percent, 0);
    let other = config.rollout_for("other");
    assert_eq!(other.canary_percent, 25);
    assert_eq!(other.window, crate::reload::Rollout::default().window);
    let defaults = load("").unwrap().rollout_for("any");
    assert_eq!(defaults, crate::reload::Rollout::default());
    assert_eq!(defaults.canary_percent, 10);
    assert_eq!(defaults.window, Duration::from_secs(10));
}

#[test]
fn rollout_values_out_of_range_are_refused_naming_the_key() {
    for (text, key) in [
        ("rollout_canary_percent = 101", "`rollout_canary_percent`"),
        ("rollout_canary_percent = -1", "rollout_canary_percent"),
        ("rollout_window_ms = 0", "`rollout_window_ms`"),
        (
            "[plugins.p]\nrollout_canary_percent = 200",
            "`plugins.p.rollout_canary_percent`",
        ),
        (
            "[plugins.p]\nrollout_window_ms = \"1s\"",
            "rollout_window_ms",
        ),
    ] {
        let err = format!("{:#}", load(text).unwrap_err());
        assert!(err.contains(key), "{text}: {err}");
    }
}

#[test]
fn the_rollout_keys_are_the_struct_fields() {
    let every = RolloutSettings {
        rollout_window_ms: Some(1),
        rollout_canary_percent: Some(1),
    };
    let table = toml::Table::try_from(&every).unwrap();
    let mut keys: Vec<&str> = table.keys().map(String::as_str).collect();
    let mut expected = rollout::ROLLOUT_KEYS.to_vec();
    keys.sort_unstable();
    expected.sort_unstable();
    assert_eq!(keys, expected);
}

#[test]
fn defaults_are_the_documented_ones() {
    assert_eq!(load("").unwrap().limits_for("any"), Limits::default());
}

#[test]
fn bad_plugin_limit_is_named_with_its_table() {
    let err = format!(
        "{:#}",
        load("[plugins.onoff]\nmax_memory_mib = 0").unwrap_err()
    );
    assert!(err.contains("plugins.onoff.max_memory_mib"), "{err}");
    let err = format!("{:#}", load("[plugins.onoff]\nbogus = 1").unwrap_err());
    assert!(err.contains("bogus"), "{err}");
}

#[test]
fn reload_applies_limits_and_reports_restart_only_keys() {
    let mut running = load("").unwrap();
    let mut new = running.clone();
    new.limits.call_timeout_ms = Some(5);
    new.listen = "127.0.0.1:0".into();
    assert_eq!(running.apply_reload(new), ["listen"]);
    assert_eq!(running.limits.call_timeout_ms, Some(5));
    assert_eq!(running.listen, "127.0.0.1:1100");
}

#[test]
fn tokens_are_checked_and_name_their_entry() {
    let hash = "a".repeat(64);
    let token = |name: &str, sha256: &str, commands: &str| {
        format!("[[auth.tokens]]\nname = {name:?}\nsha256 = {sha256:?}\ncommands = {commands}\n")
    };
    let ok = load(&token("panel", &hash, r#"["on"]"#)).unwrap();
    assert_eq!(ok.auth.tokens[0].commands, ["on"]);
    let upper = format!(
        "{:#}",
        load(&token("p", &"A".repeat(64), "[\"*\"]")).unwrap_err()
    );
    assert!(
        upper.contains("auth.tokens[0]") && upper.contains("sha256"),
        "{upper}"
    );
    let none = format!("{:#}", load(&token("p", &hash, "[]")).unwrap_err());
    assert!(none.contains("commands"), "{none}");
    let twice = token("p", &hash, "[\"*\"]").repeat(2);
    let twice = format!("{:#}", load(&twice).unwrap_err());
    assert!(twice.contains("used twice"), "{twice}");
}

#[test]
fn missing_plugin_dir_is_named() {
    let err = format!("{:#}", load("plugin_dir = \"nowhere\"").unwrap_err());
    assert!(
        err.contains("plugin_dir") && err.contains("nowhere"),
        "{err}"
    );
}

/// A limit of the wrong type is named with its table and shown on its
/// line, at the top level and in a plugin's table alike.
#[test]
fn a_limit_of_the_wrong_type_is_named_where_it_is() {
    let err = format!(
        "{:#}",
        load("listen = \"127.0.0.1:0\"\ncall_timeout_ms = \"1s\"").unwrap_err()
    );
    assert!(
        err.contains("call_timeout_ms = \"1s\"") && err.contains("line 2"),
        "{err}"
    );
    let err = format!(
        "{:#}",
        load("[plugins.onoff]\nconfig = { a = \"b\" }\nmax_memory_mib = \"lots\"").unwrap_err()
    );
    assert!(
        err.contains("max_memory_mib = \"lots\"") && err.contains("line 3"),
        "{err}"
    );
    let ok = load("max_reply_bytes = 10\n[plugins.onoff]\nmax_reply_bytes = 20").unwrap();
    assert_eq!(ok.limits_for("onoff").max_reply_bytes, 20);
    assert_eq!(ok.limits_for("other").max_reply_bytes, 10);
}

/// The limit keys the parser moves out of each table are exactly the
/// struct's fields.
#[test]
fn the_limit_keys_are_the_struct_fields() {
    let every = LimitSettings {
        call_timeout_ms: Some(1),
        max_memory_mib: Some(1),
        max_reply_bytes: Some(1),
        quarantine_after: Some(1),
        max_log_lines_per_sec: Some(1),
        max_log_line_bytes: Some(1),
        max_concurrent_calls: Some(1),
        max_instances: Some(1),
    };
    let table = toml::Table::try_from(&every).unwrap();
    let mut keys: Vec<&str> = table.keys().map(String::as_str).collect();
    let mut expected = limits::LIMIT_KEYS.to_vec();
    keys.sort_unstable();
    expected.sort_unstable();
    assert_eq!(keys, expected);
}

/// The field names serde's derive gives `T` (skipped fields left out): the
/// keys a table of `T` takes, from the struct itself.
fn keys_of<'de, T: Deserialize<'de>>() -> Vec<&'static str> {
    use serde::de::value::Error;
    use serde::de::{Error as _, Visitor};

    struct Introspect<'k>(&'k mut Vec<&'static str>);

    impl<'de> serde::Deserializer<'de> for Introspect<'_> {
        type Error = Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
            Err(Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Error> {
            self.0.extend_from_slice(fields);
            Err(Error::custom("fields read"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }

    let mut keys = Vec::new();
    let _ = T::deserialize(Introspect(&mut keys));
    keys
}

/// Every key a config may hold, as `docs/configuration.md` heads it.
fn every_key() -> Vec<String> {
    let tables = ["auth", "tls", "plugins", "schedules"];
    let top = keys_of::<Config>()
        .into_iter()
        .filter(|key| !tables.contains(key))
        .chain(limits::LIMIT_KEYS)
        .chain(rollout::ROLLOUT_KEYS)
        .map(str::to_owned);
    let within = |prefix: &str, keys: Vec<&str>| {
        keys.into_iter()
            .map(|key| format!("{prefix}.{key}"))
            .collect::<Vec<_>>()
    };
    top.chain(within("auth.tokens", keys_of::<TokenSettings>()))
        .chain(within("tls", keys_of::<TlsSettings>()))
        .chain(within("plugins.<name>", keys_of::<PluginSettings>()))
        .chain(within("schedules", keys_of::<ScheduleSettings>()))
        .collect()
}

/// The reference and the shipped config say what every key is: a key added
/// to the structs without its entry in `docs/configuration.md` (a heading
/// of its own) and a line in `config.toml` (set, or commented out) fails.
#[test]
fn every_key_is_documented_and_in_the_shipped_config() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let reference = std::fs::read_to_string(repo.join("docs/configuration.md")).unwrap();
    let shipped = std::fs::read_to_string(repo.join("config.toml")).unwrap();
    let keys = every_key();
    assert!(keys.len() > 40, "{keys:?}");
    for key in &keys {
        assert!(
            reference.contains(&format!("\n### `{key}`\n")),
            "docs/configuration.md has no `### `{key}`` entry"
        );
        let name = key.rsplit('.').next().unwrap_or(key);
        let in_shipped = shipped.lines().any(|line| {
            let line = line.trim_start_matches(['#', ' ']);
            let assigned = line
                .split_once('=')
                .is_some_and(|(left, _)| left.trim() == name);
            let table = line.starts_with('[') && line.contains(&format!(".{name}]"));
            assigned || table
        });
        assert!(in_shipped, "config.toml does not show `{key}`");
    }
}

fn schedule_error(entry: &str) -> String {
    let text = format!("[[schedules]]\nname = \"night\"\n{entry}");
    format!("{:#}", load(&text).unwrap_err())
}

#[test]
fn schedules_load_with_their_defaults() {
    let config = load(
        "[[schedules]]\nname = \"morning\"\ncron = \"0 7 * * mon-fri\"\ncommand = \"on\"\n\
         [[schedules]]\nname = \"tick\"\ncron = \"*/5 * * * * *\"\ncommand = \"kv-count ticks\"\n\
         timezone = \"Europe/Paris\"\ncatch_up = true\n",
    )
    .unwrap();
    assert_eq!(config.schedules.len(), 2);
    assert_eq!(config.schedules[0].timezone, None);
    assert!(!config.schedules[0].catch_up);
    assert_eq!(
        config.schedules[1].timezone.as_deref(),
        Some("Europe/Paris")
    );
    assert!(config.schedules[1].catch_up);
}

#[test]
fn a_bad_schedule_is_refused_naming_its_key() {
    let err = schedule_error("cron = \"61 * * * *\"\ncommand = \"on\"");
    assert!(
        err.contains("`schedules[0].cron` (schedule 'night')"),
        "{err}"
    );
    let err = schedule_error("cron = \"0 7 * *\"\ncommand = \"on\"");
    assert!(err.contains("`schedules[0].cron`"), "{err}");
    let err = schedule_error("cron = \"0 7 * * *\"\ncommand = \"on\"\ntimezone = \"Mars/Olympus\"");
    assert!(
        err.contains("`schedules[0].timezone` (schedule 'night')"),
        "{err}"
    );
    let err = schedule_error("cron = \"0 7 * * *\"\ncommand = \"  \"");
    assert!(err.contains("`schedules[0].command`"), "{err}");
    let err = schedule_error("cron = \"0 7 * * *\"\ncommand = \"help\"");
    assert!(err.contains("`schedules[0].command`"), "{err}");
    let err = schedule_error("cron = \"0 7 * * *\"\ncommand = \"on\"\nrepeat = 3");
    assert!(err.contains("repeat"), "{err}");
}

#[test]
fn two_schedules_may_not_share_a_name() {
    let entry = "[[schedules]]\nname = \"night\"\ncron = \"0 23 * * *\"\ncommand = \"off\"\n";
    let err = format!("{:#}", load(&entry.repeat(2)).unwrap_err());
    assert!(
        err.contains("`schedules[1].name` (schedule 'night')"),
        "{err}"
    );
}

#[test]
fn with_tokens_a_schedule_names_one() {
    let tokens = "[[auth.tokens]]\nname = \"house\"\nsha256 = \"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\"\ncommands = [\"on\"]\n";
    let schedule = "[[schedules]]\nname = \"night\"\ncron = \"0 23 * * *\"\ncommand = \"off\"\n";
    let err = format!("{:#}", load(&format!("{tokens}{schedule}")).unwrap_err());
    assert!(
        err.contains("`schedules[0].token` (schedule 'night') is missing"),
        "{err}"
    );
    let err = format!(
        "{:#}",
        load(&format!("{tokens}{schedule}token = \"garden\"\n")).unwrap_err()
    );
    assert!(
        err.contains("no `[[auth.tokens]]` entry is named 'garden'"),
        "{err}"
    );
    load(&format!("{tokens}{schedule}token = \"house\"\n")).unwrap();
}

#[test]
fn command_grants_and_call_depth_are_checked_naming_the_key() {
    let err = format!(
        "{:#}",
        load("[plugins.scene]\nallow_commands = [\"re*lay\"]").unwrap_err()
    );
    assert!(err.contains("`plugins.scene.allow_commands`"), "{err}");
    let config = load("[plugins.scene]\nallow_commands = [\"on\", \"relay-*\"]").unwrap();
    let grants = &config.terms_for("scene").grants;
    assert!(grants.permits_command("relay-set"));
    assert!(!grants.permits_command("off"));
    for depth in ["0", "17"] {
        let err = format!(
            "{:#}",
            load(&format!("max_call_depth = {depth}")).unwrap_err()
        );
        assert!(
            err.contains("`max_call_depth` must be between 1 and 16"),
            "{err}"
        );
    }
}
