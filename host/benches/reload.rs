//! Hot-reload latency and restart time, measured on the real binary.
//!
//! - Reload latency: from the moment a new plugin file is complete (written
//!   and closed) to the first reply from the new version, over 20 swaps
//!   between two versions of `onoff.wasm`.
//! - Restart time: from spawning `plugboard serve` to its first reply, with
//!   a cold compile cache and with a warm one.
//! - The four shipped plugins: start to `listening on`, cold and warm, one
//!   compile at a time and two, and resident memory 3 s after.
//! - The Python plugin rebuilt with one line changed (componentize-py, not
//!   timed) and renamed into a running server's plugin directory: to its
//!   first reply from the new version (the incremental compile cache warm
//!   from the first version, as on a server that ran it).
//!
//! Prints figures; asserts nothing about time. Run with `make bench-reload`;
//! `PLUGBOARD_BENCH_ONLY` runs one section (`reload`, `restart`, `shipped`,
//! `python`).

use plugboard_test_support as support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{Server, Setup, built_guest, built_plugin_bytes};

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

/// The four shipped plugins with `cache` (emptied first if `cold`), with
/// `slots` compiles at once: start to `listening on`, and resident MiB 3 s
/// after it.
fn shipped_start(cache: &Path, cold: bool, slots: usize) -> (Duration, f64) {
    if cold {
        let _ = std::fs::remove_dir_all(cache);
    }
    let started = Instant::now();
    let server = Setup::new()
        .plugin("onoff", "onoff")
        .plugin("relay", "relay")
        .guest("stats", "stats")
        .guest("text", "text")
        .config(&format!("cache_dir = {cache:?}"))
        .start_with(move || {
            let mut command = std::process::Command::new(support::plugboard_path());
            command.env("PLUGBOARD_COMPILE_SLOTS", slots.to_string());
            command
        });
    let took = started.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    (took, server.resident_mib())
}

/// `app.py` of the Python plugin with one line changed, componentized.
fn stats_rebuilt(edit: usize) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let app = std::fs::read_to_string(repo.join("plugins/python/stats/app.py")).unwrap();
    let changed = app.replace("count={", &format!("count{edit}={{"));
    assert_ne!(app, changed, "the edited line is in app.py");
    std::fs::write(dir.path().join("app.py"), changed).unwrap();
    let scripts = std::process::Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .unwrap();
    let componentize =
        Path::new(String::from_utf8_lossy(&scripts.stdout).trim()).join("componentize-py");
    let output = dir.path().join("stats.wasm");
    let built = std::process::Command::new(componentize)
        .current_dir(dir.path())
        .args(["-d"])
        .arg(repo.join("wit"))
        .args(["-w", "batched-plugin", "componentize", "-p", ".", "-p"])
        .arg(repo.join("plugins/python/sdk"))
        .args(["app", "-o"])
        .arg(&output)
        .output()
        .unwrap();
    assert!(built.status.success(), "{built:?}");
    std::fs::read(output).unwrap()
}

/// The Python plugin rebuilt with one line changed, renamed into a running
/// server's directory: to the first reply from the new version.
fn python_rebuild_latency(rebuilds: usize) -> Vec<Duration> {
    let cache = tempfile::tempdir().unwrap();
    // The guard would keep the old version serving this connection for its
    // window (`rollout_window_ms`): what is timed is the compile and load.
    let server = Setup::new()
        .guest("stats", "stats")
        .config(&format!(
            "cache_dir = {:?}\nrollout_canary_percent = 0",
            cache.path()
        ))
        .start();
    let mut client = server.connect();
    assert!(client.request("stats 1").starts_with("count="));
    (1..=rebuilds)
        .map(|edit| {
            let bytes = stats_rebuilt(edit);
            let partial = server.plugin_dir.join(".stats.partial");
            std::fs::write(&partial, bytes).unwrap();
            let renamed = Instant::now();
            std::fs::rename(&partial, server.plugin_dir.join("stats.wasm")).unwrap();
            let expected = format!("count{edit}=");
            while !client.request("stats 1").starts_with(&expected) {
                assert!(renamed.elapsed() < Duration::from_secs(120), "no reload");
                std::thread::sleep(Duration::from_millis(5));
            }
            renamed.elapsed()
        })
        .collect()
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
    const SECTIONS: [&str; 4] = ["reload", "restart", "shipped", "python"];
    let only = std::env::var("PLUGBOARD_BENCH_ONLY").ok();
    if let Some(only) = only.as_deref() {
        assert!(
            SECTIONS.contains(&only),
            "PLUGBOARD_BENCH_ONLY: one of {SECTIONS:?}"
        );
    }
    let run = |section: &str| only.as_deref().is_none_or(|only| only == section);
    if run("reload") {
        println!(
            "reload latency (file complete -> first reply from the new version): {}",
            summary(reload_latency())
        );
    }
    let cache = tempfile::tempdir().unwrap();
    if run("restart") {
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
    if run("shipped") {
        let shipped = cache.path().join("shipped");
        for slots in [1, 2] {
            let (cold, cold_mib) = shipped_start(&shipped, true, slots);
            let (warm, warm_mib) = shipped_start(&shipped, false, slots);
            println!(
                "four shipped plugins, {slots} compile(s) at once: start to listening {:.1} s cold \
                 ({cold_mib:.0} MiB resident 3 s after), {:.2} s warm ({warm_mib:.0} MiB)",
                cold.as_secs_f64(),
                warm.as_secs_f64()
            );
        }
    }
    if run("python") {
        assert!(built_guest("stats").exists());
        println!(
            "Python plugin rebuilt with one line changed, renamed in -> first new reply: {}",
            summary(python_rebuild_latency(3))
        );
    }
}
