//! Hot-reload latency and restart time, measured on the real binary.
//!
//! - Reload latency: from the moment a new plugin file is complete (written
//!   and closed) to the first reply from the new version, over 20 swaps
//!   between two versions of `onoff.wasm`.
//! - Restart time: from spawning `plugboard serve` to its first reply, with
//!   a cold compile cache and with a warm one.
//!
//! Prints figures; asserts nothing about time. Run with `make bench-reload`.

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Server, built_plugin, request, tagged};

const SWAPS: usize = 20;
const RESTARTS: usize = 5;

fn setup(cache: &Path) -> tempfile::TempDir {
    common::setup(
        &[("onoff", built_plugin("onoff"))],
        &format!("cache_dir = {cache:?}\nhot_reload = true"),
    )
}

fn reload_latency() -> Vec<Duration> {
    let cache = tempfile::tempdir().unwrap();
    let dir = setup(cache.path());
    let server = Server::start(dir.path());
    let mut client = TcpStream::connect(&server.addr).unwrap();
    let versions = [
        (built_plugin("testing_rival"), "rival on"),
        (built_plugin("onoff"), "success"),
    ];
    let target: PathBuf = dir.path().join("plugins/onoff.wasm");
    (0..SWAPS)
        .map(|swap| {
            let (bytes, reply) = &versions[swap % 2];
            // Unique bytes per swap, as a rebuild produces: every reload compiles.
            std::fs::write(&target, tagged(bytes, swap)).unwrap();
            let complete = Instant::now();
            while request(&mut client, "on") != *reply {
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
    let dir = setup(cache);
    let started = Instant::now();
    let server = Server::start(dir.path());
    let mut client = TcpStream::connect(&server.addr).unwrap();
    assert_eq!(request(&mut client, "on"), "success");
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
