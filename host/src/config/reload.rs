//! What a SIGHUP may change in a running server: every plugin limit, the
//! rollout keys, every `[plugins.<name>]` table and the schedules; every other key waits for a restart.

use super::Config;

impl Config {
    /// Takes from `new` what a running server can change (plugin limits and
    /// per-plugin settings) and returns the keys that differ but are read
    /// only at startup (the listener, the engine, the watcher, the store):
    /// those wait for a restart. `new` is taken apart field by field, with no
    /// `..`: the compiler makes every new key choose a side.
    pub fn apply_reload(&mut self, new: Config) -> Vec<&'static str> {
        macro_rules! classify {
            (reloadable: [$($live:ident),*], restart_only: [$($fixed:ident),* $(,)?]) => {{
                let Config { $($live,)* $($fixed,)* } = new;
                $(self.$live = $live;)*
                [$((stringify!($fixed), self.$fixed != $fixed)),*]
            }};
        }
        let keys = classify!(
            reloadable: [limits, rollout, plugins, schedules],
            restart_only: [
                listen,
                plugin_dir,
                max_frame_bytes,
                max_connections,
                max_connections_per_ip,
                idle_timeout_ms,
                frame_timeout_ms,
                shutdown_timeout_ms,
                max_call_depth,
                hot_reload,
                compile_cache,
                cache_dir,
                compile_timeout_ms,
                compile_memory_mib,
                incremental_cache_mib,
                max_stack_kib,
                max_total_memory_mib,
                state_dir,
                state_cache_mib,
                state_store,
                redis_url,
                redis_timeout_ms,
                redis_ca,
                max_key_bytes,
                max_value_bytes,
                max_keys_per_plugin,
                max_bytes_per_plugin,
                protected_mode,
                auth,
                tls,
                metrics_listen,
                log_format,
            ]
        );
        keys.into_iter()
            .filter(|(_, changed)| *changed)
            .map(|(key, _)| key)
            .collect()
    }
}
