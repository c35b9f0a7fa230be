//! Host services: plugin config, key-value state that survives reloads,
//! restarts and kill -9, isolation between plugins, limits, a damaged store.

use std::thread;

use crate::support::{Client, Setup, built_plugin};

fn onoff() -> Setup {
    Setup::new().plugin("onoff", "onoff")
}

#[test]
fn onoff_records_its_state() {
    let server = onoff().start();
    let mut client = server.connect();
    assert_eq!(client.request("status"), "off", "off before any command");
    assert_eq!(client.request("on"), "success");
    assert_eq!(client.request("status"), "on");
    assert_eq!(
        server.connect().request("status"),
        "on",
        "seen by other clients"
    );
    assert_eq!(client.request("toggle"), "off");
    assert_eq!(client.request("toggle"), "on");
    assert_eq!(client.request("off"), "success");
    assert_eq!(client.request("status"), "off");
}

#[test]
fn plugin_config_names_the_device() {
    let server = onoff()
        .plugin_config("onoff", "config.device = \"lamp\"")
        .start();
    let mut client = server.connect();
    assert_eq!(client.request("on"), "success");
    assert_eq!(client.request("status"), "lamp: on");
}

#[test]
fn concurrent_toggles_each_flip_exactly_once() {
    let server = onoff().start();
    let clients: Vec<_> = (0..10)
        .map(|_| {
            let addr = server.addr;
            thread::spawn(move || {
                let mut client = Client::connect(addr);
                for _ in 0..11 {
                    client.request("toggle");
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    // 110 flips from off: an even number, so off again; a lost update would
    // leave it to chance.
    assert_eq!(server.connect().request("status"), "off");
}

#[test]
fn state_survives_a_hot_reload() {
    let server = onoff().start();
    let mut client = server.connect();
    assert_eq!(client.request("on"), "success");
    let mut new_version = std::fs::read(built_plugin("onoff")).unwrap();
    new_version.extend_from_slice(&[0, 5, 4, b'v', b'e', b'r', b'2']);
    std::fs::write(server.plugin_dir.join("onoff.wasm"), new_version).unwrap();
    assert!(server.log.wait_for_count("plugin set updated", 1));
    assert_eq!(client.request("status"), "on");
}

#[test]
fn state_survives_a_restart() {
    let server = onoff().start();
    assert_eq!(server.connect().request("on"), "success");
    server.signal(nix::sys::signal::Signal::SIGTERM);
    let server = server.restart_stopped();
    assert_eq!(server.connect().request("status"), "on");
}

#[test]
fn state_survives_kill_9_right_after_the_reply() {
    let server = onoff().start();
    let mut client = server.connect();
    assert_eq!(client.request("on"), "success");
    assert_eq!(client.request("toggle"), "off");
    assert_eq!(client.request("toggle"), "on");
    let server = server.kill_and_restart();
    assert_eq!(server.connect().request("status"), "on");
}

#[test]
fn plugins_cannot_see_each_others_keys() {
    let server = onoff().plugin("testing_echo", "echo").start();
    let mut client = server.connect();
    assert_eq!(client.request("on"), "success");
    // onoff keeps its state under "state"; echo's "state" is another key.
    assert_eq!(client.request("kv-get state"), "(none)");
    assert_eq!(client.request("kv-set state off"), "stored");
    assert_eq!(client.request("status"), "on");
    assert_eq!(client.request("kv-get state"), "off");
}

#[test]
fn store_limits_are_errors_the_plugin_can_report() {
    let server = Setup::new()
        .plugin("testing_echo", "echo")
        .config("max_key_bytes = 4")
        .config("max_value_bytes = 3")
        .config("max_keys_per_plugin = 2")
        .start();
    let mut client = server.connect();
    assert_eq!(
        client.request("kv-set toolong v"),
        "error: Error::KeyTooLarge(4)"
    );
    assert_eq!(
        client.request("kv-set k 1234"),
        "error: Error::ValueTooLarge(3)"
    );
    assert_eq!(client.request("kv-set a 1"), "stored");
    assert_eq!(client.request("kv-count b"), "1");
    assert_eq!(client.request("kv-set c 1"), "error: Error::TooManyKeys(2)");
    assert_eq!(
        client.request("kv-set a 2"),
        "stored",
        "overwriting is not a new key"
    );
    assert_eq!(client.request("kv-count a"), "3");
}

#[test]
fn a_damaged_store_file_is_a_clear_startup_error() {
    let setup = onoff();
    let state_dir = setup.plugin_dir().parent().unwrap().join("plugboard-state");
    std::fs::create_dir(&state_dir).unwrap();
    std::fs::write(state_dir.join("state.redb"), b"not a database at all").unwrap();
    let output = crate::support::plugboard()
        .args(["serve", "--config"])
        .arg(setup.config_path())
        .output()
        .unwrap();
    assert!(!output.status.success(), "started on a damaged store");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("state.redb") && stderr.contains("move it aside"),
        "{stderr}"
    );
    // Nothing was overwritten.
    assert_eq!(
        std::fs::read(state_dir.join("state.redb")).unwrap(),
        b"not a database at all"
    );
}

#[test]
fn the_memory_store_keeps_state_while_running_only() {
    let server = onoff().config("state_store = \"memory\"").start();
    assert_eq!(server.connect().request("on"), "success");
    assert_eq!(server.connect().request("status"), "on");
    assert!(
        !server
            .plugin_dir
            .parent()
            .unwrap()
            .join("plugboard-state")
            .exists()
    );
    server.signal(nix::sys::signal::Signal::SIGTERM);
    let server = server.restart_stopped();
    assert_eq!(server.connect().request("status"), "off");
}

#[test]
fn plugins_built_against_the_previous_contract_still_load() {
    let server = onoff().plugin("testing_legacy", "legacy").start();
    let mut client = server.connect();
    assert_eq!(client.request("legacy"), "legacy ok");
    assert_eq!(client.request("on"), "success");
}

/// Many clients writing to the disk store queue for its lock and syncs; a
/// plugin whose writes wait in that queue is not timed out (nor counted
/// towards its quarantine) for the host's slowness.
#[test]
fn waiting_on_the_store_does_not_time_out_a_plugin() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let server = Setup::new()
        .plugin("testing_echo", "echo")
        .plugin("onoff", "onoff")
        .plugin_config("onoff", "call_timeout_ms = 10")
        .start();
    let done = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..64)
        .map(|n| {
            let mut client = server.connect();
            let done = done.clone();
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    assert_eq!(client.request(&format!("kv-set k{n} v")), "stored");
                }
            })
        })
        .collect();
    let mut innocent = server.connect();
    let replies: Vec<String> = (0..100).map(|_| innocent.request("toggle")).collect();
    done.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.join().expect("writer");
    }
    let failed: Vec<&String> = replies.iter().filter(|r| r.starts_with("error")).collect();
    assert!(
        failed.is_empty(),
        "{} of 100 failed: {:?}",
        failed.len(),
        failed.first()
    );
}
