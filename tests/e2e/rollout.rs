//! Guarded rollout: a new version of a loaded plugin serves a share of new
//! connections first, and is rolled back by itself when it fails clearly
//! more than the version serving, or promoted at the end of its window.
//!
//! The bad new version is `testing-faulty` installed as `onoff.wasm` (the
//! same commands; `on` traps, `off` runs past its deadline); a good one is
//! onoff itself with other bytes (a custom section), so it has a version
//! of its own. Clients reconnect often, as devices on a LAN do: each
//! connection sends a few commands and closes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::observability::Scrape;
use crate::support::components::with_custom_section;
use crate::support::{Server, Setup, built_plugin_bytes, free_port};

/// Logged after each swap of the routing table: a trial's start and end
/// (the lines saying which come before the swap).
const UPDATED: &str = "plugin set updated";

/// Commands a load client sends on one connection before it reconnects.
const PER_CONNECTION: usize = 5;

/// A server serving onoff in memory, with these rollout settings, and
/// its metrics on `port`.
fn onoff(percent: u8, window_ms: u64, port: u16) -> Server {
    Setup::new()
        .plugin("onoff", "onoff")
        .config("state_store = \"memory\"")
        .config(&format!("rollout_canary_percent = {percent}"))
        .config(&format!("rollout_window_ms = {window_ms}"))
        .config(&format!("metrics_listen = \"127.0.0.1:{port}\""))
        .start()
}

/// onoff with bytes of its own: a good new version.
fn good_onoff(tag: &str) -> Vec<u8> {
    with_custom_section(&built_plugin_bytes("onoff"), tag)
}

/// The version `help` shows a new connection for `command`.
fn version_serving(server: &Server, command: &str) -> String {
    let help = server.connect().request("help");
    let line = help
        .lines()
        .find(|line| line.starts_with(&format!("{command} (")))
        .unwrap_or_else(|| panic!("no {command} in {help}"));
    let (_, rest) = line.split_once(" (onoff ").expect("onoff serves it");
    rest[..12].to_owned()
}

/// The version of the file a test installs, as the server names it.
fn version_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// Clients sending `command` over and over, reconnecting every
/// [`PER_CONNECTION`] commands, until stopped; they count every reply and
/// the error replies.
struct Load {
    stop: Arc<AtomicBool>,
    replies: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    threads: Vec<thread::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(server: &Server, clients: usize, command: &'static str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let replies = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let threads = (0..clients)
            .map(|_| {
                let (stop, replies, errors) = (stop.clone(), replies.clone(), errors.clone());
                let addr = server.addr;
                thread::spawn(move || {
                    let mut seen = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let mut client = crate::support::Client::connect(addr);
                        for _ in 0..PER_CONNECTION {
                            let reply = client.request(command);
                            replies.fetch_add(1, Ordering::Relaxed);
                            if reply.starts_with("error: ") {
                                errors.fetch_add(1, Ordering::Relaxed);
                                if !seen.contains(&reply) {
                                    seen.push(reply);
                                }
                            }
                        }
                    }
                    seen
                })
            })
            .collect();
        Self {
            stop,
            replies,
            errors,
            threads,
        }
    }

    fn replies(&self) -> u64 {
        self.replies.load(Ordering::Relaxed)
    }

    /// Waits until `more` replies past `from` were counted.
    fn wait_for_replies(&self, from: u64, more: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.replies() < from + more {
            assert!(
                Instant::now() < deadline,
                "the load stalled at {}",
                self.replies()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the clients: (replies, error replies, the distinct errors).
    fn stop(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut seen = Vec::new();
        for thread in self.threads {
            for error in thread.join().expect("a load client") {
                if !seen.contains(&error) {
                    seen.push(error);
                }
            }
        }
        let replies = self.replies.load(Ordering::Relaxed);
        (replies, self.errors.load(Ordering::Relaxed), seen)
    }
}

fn rollouts(port: u16, outcome: &str) -> f64 {
    let scrape = Scrape::from(port);
    let labels = [("plugin", "onoff"), ("outcome", outcome)];
    scrape
        .value("plugboard_rollouts_total", &labels)
        .unwrap_or(0.0)
}

/// The "N ms into its trial" of the rollback line.
fn ms_into_trial(line: &str) -> u64 {
    let before = line.split(" ms into its trial").next().expect("the figure");
    let figure = before.rsplit(' ').next().expect("the figure");
    figure.parse().expect("a number of ms")
}

#[test]
fn a_version_that_traps_is_rolled_back_under_load_with_few_failed_commands() {
    let port = free_port();
    let server = onoff(10, 60_000, port);
    let serving = version_serving(&server, "on");
    let load = Load::start(&server, 8, "on");
    load.wait_for_replies(0, 500);
    let installed_at = load.replies();
    server.install("onoff.wasm", &built_plugin_bytes("testing_faulty"));
    let line = server
        .log
        .wait_for("new version rolled back")
        .unwrap_or_else(|| panic!("no rollback:\n{}", server.log.text()));
    load.wait_for_replies(load.replies(), 2000);
    let (replies, errors, seen) = load.stop();
    let during = replies - installed_at;
    let share = errors as f64 * 100.0 / during as f64;
    println!(
        "rollback {} ms into the trial; {errors} of {during} commands failed ({share:.2} %)",
        ms_into_trial(&line)
    );
    // Five failures stop the trial; each client had at most one command
    // in the new version when it did.
    assert!((5..=5 + 8).contains(&errors), "{errors} failed: {seen:?}");
    assert!(share <= 1.0, "{errors} of {during} failed: {seen:?}");
    let failures = [
        "error: plugin 'onoff' failed",
        "error: plugin 'onoff' disabled",
    ];
    assert!(
        seen.iter().all(|e| failures.contains(&e.as_str())),
        "{seen:?}"
    );
    assert_eq!(
        version_serving(&server, "on"),
        serving,
        "the old version serves"
    );
    let mut client = server.connect();
    for _ in 0..20 {
        assert_eq!(client.request("on"), "success");
    }
    assert_eq!(rollouts(port, "rolled_back"), 1.0);
    assert_eq!(rollouts(port, "promoted"), 0.0);
}

#[test]
fn a_good_version_is_promoted_after_its_window_with_no_failed_command() {
    let port = free_port();
    let server = onoff(50, 1500, port);
    let old = version_serving(&server, "on");
    let load = Load::start(&server, 4, "toggle");
    load.wait_for_replies(0, 200);
    let mut before = server.connect();
    assert!(before.request("help").contains(&old));
    let good = good_onoff("promoted");
    server.install("onoff.wasm", &good);
    assert!(server.log.wait_for_count(UPDATED, 1));
    assert_eq!(server.log.count("new version on trial"), 1);
    // During the window, connections from before keep their version and
    // new ones get either, half and half.
    let seen: Vec<String> = (0..20).map(|_| version_serving(&server, "on")).collect();
    assert!(
        seen.contains(&old) && seen.contains(&version_of(&good)),
        "{seen:?}"
    );
    assert!(before.request("help").contains(&old));
    let (_, status) = crate::observability::get(port, "/status.json");
    let status: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    let onoff = &status["plugins"][0];
    assert_eq!(onoff["version"], old.as_str(), "{onoff}");
    assert_eq!(
        onoff["trial"]["version"],
        version_of(&good).as_str(),
        "{onoff}"
    );
    assert_eq!(onoff["trial"]["percent"], 50, "{onoff}");
    assert_eq!(onoff["trial"]["failures"], 0, "{onoff}");
    assert!(server.log.wait_for_count(UPDATED, 2));
    assert_eq!(server.log.count("new version promoted"), 1);
    load.wait_for_replies(load.replies(), 500);
    let (replies, errors, seen) = load.stop();
    assert_eq!(errors, 0, "{errors} of {replies} failed: {seen:?}");
    assert_eq!(version_serving(&server, "on"), version_of(&good));
    assert!(
        before.request("help").contains(&version_of(&good)),
        "old connections move"
    );
    assert_eq!(rollouts(port, "promoted"), 1.0);
}

#[test]
fn a_version_that_times_out_is_rolled_back() {
    let port = free_port();
    let server = Setup::new()
        .plugin("onoff", "onoff")
        .config("state_store = \"memory\"")
        .config("call_timeout_ms = 100")
        .config("rollout_canary_percent = 50")
        .config(&format!("metrics_listen = \"127.0.0.1:{port}\""))
        .start();
    let load = Load::start(&server, 4, "off");
    load.wait_for_replies(0, 200);
    server.install("onoff.wasm", &built_plugin_bytes("testing_faulty"));
    let line = server.log.wait_for("new version rolled back");
    assert!(line.is_some(), "no rollback:\n{}", server.log.text());
    load.wait_for_replies(load.replies(), 200);
    let (_, errors, seen) = load.stop();
    assert!(errors >= 5, "{errors}");
    assert_eq!(seen, ["error: plugin 'onoff' timed out"]);
    assert_eq!(server.connect().request("off"), "success");
    assert_eq!(rollouts(port, "rolled_back"), 1.0);
}

#[test]
fn a_second_version_during_a_window_supersedes_the_first() {
    let port = free_port();
    let server = onoff(100, 1500, port);
    let (first, second) = (good_onoff("first"), good_onoff("second"));
    server.install("onoff.wasm", &first);
    assert!(server.log.wait_for_count(UPDATED, 1));
    assert_eq!(version_serving(&server, "on"), version_of(&first));
    server.install("onoff.wasm", &second);
    assert!(server.log.wait_for_count(UPDATED, 2));
    assert_eq!(server.log.count("superseded by a newer one"), 1);
    assert_eq!(version_serving(&server, "on"), version_of(&second));
    assert!(server.log.wait_for_count(UPDATED, 3));
    assert_eq!(server.log.count("new version promoted"), 1);
    assert_eq!(server.connect().request("on"), "success");
    assert_eq!(version_serving(&server, "on"), version_of(&second));
    assert_eq!(rollouts(port, "superseded"), 1.0);
    assert_eq!(rollouts(port, "promoted"), 1.0);
}

/// A SIGHUP during a window leaves the trial running; after a rollback,
/// the same file is tried again only on SIGHUP (or when it changes).
#[test]
fn sighup_keeps_a_trial_going_and_retries_a_rolled_back_version() {
    let port = free_port();
    let server = onoff(100, 60_000, port);
    let faulty = built_plugin_bytes("testing_faulty");
    server.install("onoff.wasm", &faulty);
    assert!(server.log.wait_for_count(UPDATED, 1));
    server.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(server.log.wait_for("config reloaded").is_some());
    assert_eq!(
        server.connect().request("status"),
        "faulty",
        "still on trial"
    );
    for _ in 0..5 {
        assert_eq!(
            server.connect().request("on"),
            "error: plugin 'onoff' failed"
        );
    }
    assert!(server.log.wait_for("new version rolled back").is_some());
    assert_eq!(server.connect().request("on"), "success");
    // Rewriting the same bytes is no change: still rolled back.
    server.install("onoff.wasm", &faulty);
    server.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(server.log.wait_for_count("config reloaded", 2));
    assert_eq!(
        server.log.count("new version on trial"),
        2,
        "SIGHUP tries it again"
    );
    assert_eq!(server.connect().request("status"), "faulty");
    assert_eq!(rollouts(port, "rolled_back"), 1.0);
}

/// `rollout_canary_percent = 0` (here for one plugin) swaps at once, as
/// does a version whose commands differ (see `reload.rs`).
#[test]
fn with_the_guard_off_a_new_version_takes_over_at_once() {
    let server = Setup::new()
        .plugin("onoff", "onoff")
        .config("rollout_canary_percent = 100")
        .plugin_config("onoff", "rollout_canary_percent = 0")
        .start();
    let mut open = server.connect();
    assert_eq!(open.request("status"), "off");
    server.install("onoff.wasm", &built_plugin_bytes("testing_faulty"));
    assert!(server.log.wait_for("plugin set updated").is_some());
    assert_eq!(
        open.request("status"),
        "faulty",
        "an open connection moves too"
    );
    assert_eq!(server.log.count("new version on trial"), 0);
}
