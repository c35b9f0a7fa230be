//! Hot-reload latency and restart time, measured on the real binary.
//!
//! - Reload latency: from the moment a new plugin file is complete (written
//!   and closed) to the first reply from the new version, over 20 swaps
//!   between two versions of `onoff.wasm`.
//! - Restart time: from spawning `plugboard serve` to its first reply, with
//!   a cold compile cache and with a warm one.
//!
//! Prints figures; asserts nothing about time. Run with `make bench-reload`.

use plugboard_test_support as support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{Server, Setup, built_plugin_bytes};

const SWAPS: usize = 20;
const RESTARTS: usize = 5;

/// A server of onoff with its own compile cache, `cache`.
fn start(cache: &Path) -> Server {
    Setup::new()
        .plugin("onoff", "onoff")
        .config(&format!("cache_dir = {cache:?}"))
        .start()
}

/// Ends `component` with a custom section naming `tag`: the same plugin,
/// different bytes (as a rebuild makes).
fn tagged(component: &[u8], tag: usize) -> Vec<u8> {
    let name = format!("swap-{tag}");
    let mut bytes = component.to_vec();
    bytes.extend_from_slice(&[0, name.len() as u8 + 1, name.len() as u8]);
    bytes.extend_from_slice(name.as_bytes());
    bytes
}

fn reload_latency() -> Vec<Duration> {
    let cache = tempfile::tempdir().unwrap();
    let server = start(cache.path());
    let mut client = server.connect();
    let versions = [
        (built_plugin_bytes("testing_rival"), "rival on"),
        (built_plugin_bytes("onoff"), "success"),
    ];
    let target = server.plugin_dir.join("onoff.wasm");
    (0..SWAPS)
        .map(|swap| {
            let (bytes, reply) = &versions[swap % 2];
            // Unique bytes per swap, as a rebuild produces: every reload compiles.
            std::fs::write(&target, tagged(bytes, swap)).unwrap();
            let complete = Instant::now();
            while client.request("on") != *reply {
                assert!(complete.elapsed() < Duration::from_secs(30), "no reload");
            }
            complete.elapsed()
        })
        .collect()
}

fn restart_time(cache: &Path, cold: bool) -> Duration {
    if cold {
        let _ = std::fs::remove_dir_all(cache);
    }
    let started = Instant::now();
    let server = start(cache);
    let mut client = server.connect();
    assert_eq!(client.request("on"), "success");
    started.elapsed()
}

fn summary(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "median {:.1} ms, min {:.1} ms, max {:.1} ms ({} runs)",
        ms(samples[samples.len() / 2]),
        ms(samples[0]),
        ms(samples[samples.len() - 1]),
        samples.len()
    )
}

fn main() {
    let latency = reload_latency();
    println!(
        "reload latency (file complete -> first reply from the new version): {}",
        summary(latency)
    );

    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().join("cache");
    let cold: Vec<_> = (0..RESTARTS)
        .map(|_| restart_time(&cache_dir, true))
        .collect();
    let warm: Vec<_> = (0..RESTARTS)
        .map(|_| restart_time(&cache_dir, false))
        .collect();
    println!(
        "start to first reply, cold compile cache: {}",
        summary(cold)
    );
    println!(
        "start to first reply, warm compile cache: {}",
        summary(warm)
    );
}
