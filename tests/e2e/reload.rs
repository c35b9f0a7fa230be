//! Hot reload with real files: plugins change under a running server without
//! a dropped connection or a failed command.
//!
//! The server logs "plugin set updated" after every swap of the routing table;
//! tests wait for it as a readiness signal and then check behaviour over TCP.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use crate::support::{Client, Server, Setup, built_plugin};

const UPDATED: &str = "plugin set updated";

fn bytes_of(plugin: &str) -> Vec<u8> {
    std::fs::read(built_plugin(plugin)).expect("read built plugin")
}

/// Writes `bytes` over `name` in the server's plugin dir, as `cp` would
/// (truncate, write, close), and waits for the `nth` table swap.
fn replace(server: &Server, name: &str, bytes: &[u8], nth: usize) {
    std::fs::write(server.plugin_dir.join(name), bytes).expect("write plugin file");
    assert!(
        server.log.wait_for_count(UPDATED, nth),
        "no reload:\n{}",
        server.log.text()
    );
}

fn onoff() -> Server {
    Setup::new().plugin("onoff", "onoff").start()
}

#[test]
fn replacing_a_plugin_file_switches_behaviour_on_open_connections() {
    let server = onoff();
    let mut client = server.connect();
    assert_eq!(client.request("on"), "success");
    replace(&server, "onoff.wasm", &bytes_of("testing_rival"), 1);
    assert_eq!(
        client.request("on"),
        "rival on",
        "the same connection sees the new version"
    );
    assert_eq!(client.request("off"), "error: unknown command 'off'");
}

#[test]
fn a_new_plugin_file_adds_its_commands() {
    let server = onoff();
    replace(&server, "echo.wasm", &bytes_of("testing_echo"), 1);
    let mut client = server.connect();
    assert_eq!(client.request("echo hello"), "hello");
    assert_eq!(client.request("on"), "success");
}

#[test]
fn removing_a_plugin_file_makes_its_commands_unknown() {
    let server = Setup::new()
        .plugin("onoff", "onoff")
        .plugin("testing_echo", "echo")
        .start();
    std::fs::remove_file(server.plugin_dir.join("onoff.wasm")).unwrap();
    assert!(server.log.wait_for_count(UPDATED, 1));
    let mut client = server.connect();
    assert_eq!(client.request("on"), "error: unknown command 'on'");
    assert_eq!(client.request("echo still"), "still");
}

#[test]
fn a_broken_file_keeps_the_previous_version_until_fixed() {
    let server = onoff();
    let mut client = server.connect();
    std::fs::write(server.plugin_dir.join("onoff.wasm"), b"\0asm broken").unwrap();
    let rejected = server
        .log
        .wait_for("rejected plugin file")
        .expect("rejection logged");
    assert!(
        rejected.contains("onoff.wasm") && rejected.contains("previous version"),
        "{rejected}"
    );
    assert_eq!(client.request("on"), "success");
    // Fixing the file later loads it.
    replace(&server, "onoff.wasm", &bytes_of("testing_rival"), 1);
    assert_eq!(client.request("on"), "rival on");
}

#[test]
fn a_file_written_slowly_is_loaded_only_once_complete() {
    let server = onoff();
    let mut client = server.connect();
    let rival = bytes_of("testing_rival");
    let mut file = std::fs::File::create(server.plugin_dir.join("onoff.wasm")).unwrap();
    // Byte by byte at first, then in chunks, with pauses: while the writer
    // holds the file, the old version must keep answering.
    let (head, tail) = rival.split_at(256);
    let chunks = head.chunks(1).chain(tail.chunks(tail.len() / 20 + 1));
    for (i, chunk) in chunks.enumerate() {
        file.write_all(chunk).unwrap();
        file.flush().unwrap();
        if i % 16 == 0 {
            thread::sleep(std::time::Duration::from_millis(20));
            assert_eq!(client.request("on"), "success", "after {i} writes");
        }
    }
    drop(file);
    assert!(server.log.wait_for_count(UPDATED, 1));
    assert_eq!(client.request("on"), "rival on");
    // No partial file was ever tried.
    assert_eq!(
        server.log.count("rejected plugin file"),
        0,
        "{}",
        server.log.text()
    );
}

#[test]
fn an_atomic_rename_into_place_is_loaded() {
    let server = onoff();
    let staging = server.plugin_dir.join("onoff.wasm.partial");
    std::fs::write(&staging, bytes_of("testing_rival")).unwrap();
    std::fs::rename(&staging, server.plugin_dir.join("onoff.wasm")).unwrap();
    assert!(server.log.wait_for_count(UPDATED, 1));
    assert_eq!(server.connect().request("on"), "rival on");
}

/// A component with a custom section appended: the same plugin, other bytes.
pub(crate) fn with_custom_section(mut component: Vec<u8>) -> Vec<u8> {
    // Section id 0 (custom), size 5, name of length 4 "test", no payload.
    component.extend_from_slice(&[0, 5, 4, b't', b'e', b's', b't']);
    component
}

#[test]
fn a_new_file_revives_a_quarantined_plugin() {
    let server = Setup::new()
        .plugin("testing_echo", "echo")
        .config("quarantine_after = 1")
        .start();
    let mut client = server.connect();
    assert_eq!(client.request("panic"), "error: plugin 'echo' failed");
    assert_eq!(client.request("echo x"), "error: plugin 'echo' disabled");
    replace(
        &server,
        "echo.wasm",
        &with_custom_section(bytes_of("testing_echo")),
        1,
    );
    assert_eq!(client.request("echo x"), "x");
}

#[test]
fn rewriting_identical_bytes_reloads_nothing() {
    let server = onoff();
    let onoff = bytes_of("onoff");
    std::fs::write(server.plugin_dir.join("onoff.wasm"), &onoff).unwrap();
    // A later real change is the first swap: the identical rewrite was skipped.
    replace(&server, "echo.wasm", &bytes_of("testing_echo"), 1);
    assert_eq!(server.log.count(UPDATED), 1, "{}", server.log.text());
    assert_eq!(server.log.count("loaded plugin plugin=\"onoff\""), 1);
}

#[test]
fn fifty_pipelining_clients_lose_nothing_across_twenty_swaps() {
    let server = onoff();
    let versions = [bytes_of("testing_rival"), bytes_of("onoff")];
    let swapping = Arc::new(AtomicBool::new(true));
    let rival_seen = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(Barrier::new(51));
    let clients: Vec<_> = (0..50)
        .map(|_| {
            let (addr, swapping, rival_seen, started) = (
                server.addr,
                swapping.clone(),
                rival_seen.clone(),
                started.clone(),
            );
            thread::spawn(move || {
                let mut client = Client::connect(addr);
                started.wait();
                let mut answered = 0usize;
                // Bounded: stops once swapping is over (or after 100 000 commands).
                while swapping.load(Ordering::Relaxed) && answered < 100_000 {
                    client.send(&b"on<EOF>".repeat(10));
                    for _ in 0..10 {
                        match client.reply().expect("connection dropped").as_str() {
                            "success" => {}
                            "rival on" => {
                                rival_seen.fetch_add(1, Ordering::Relaxed);
                            }
                            other => panic!("failed command during reload: {other:?}"),
                        }
                        answered += 1;
                    }
                }
                answered
            })
        })
        .collect();
    started.wait();
    for swap in 0..20 {
        replace(&server, "onoff.wasm", &versions[swap % 2], swap + 1);
    }
    swapping.store(false, Ordering::Relaxed);
    let answered: usize = clients.into_iter().map(|c| c.join().expect("client")).sum();
    assert!(answered > 0);
    assert!(
        rival_seen.load(Ordering::Relaxed) > 0,
        "no client saw the new version"
    );
}

#[test]
fn sighup_applies_a_changed_limit_and_rejects_a_bad_config() {
    let server = Setup::new()
        .plugin("testing_echo", "echo")
        .config("call_timeout_ms = 5000")
        .start();
    let mut client = server.connect();
    assert_eq!(client.request("sleep 300"), "slept 300");

    let config = std::fs::read_to_string(&server.config_path).unwrap();
    let shorter = config.replace("call_timeout_ms = 5000", "call_timeout_ms = 100");
    std::fs::write(&server.config_path, shorter).unwrap();
    server.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(server.log.wait_for_count("config reloaded", 1));
    assert_eq!(
        client.request("sleep 300"),
        "error: plugin 'echo' timed out"
    );

    std::fs::write(
        &server.config_path,
        config.replace("call_timeout_ms = 5000", "bogus = 1"),
    )
    .unwrap();
    server.signal(nix::sys::signal::Signal::SIGHUP);
    let rejected = server
        .log
        .wait_for("config reload rejected")
        .expect("rejection logged");
    assert!(rejected.contains("bogus"), "{rejected}");
    // The running config (100 ms) is still in force.
    assert_eq!(
        client.request("sleep 300"),
        "error: plugin 'echo' timed out"
    );
    assert_eq!(client.request("sleep 10"), "slept 10");
}

#[test]
fn without_watching_sighup_rescans_the_directory() {
    let server = Setup::new()
        .plugin("onoff", "onoff")
        .arg("--no-watch")
        .start();
    std::fs::write(
        server.plugin_dir.join("echo.wasm"),
        bytes_of("testing_echo"),
    )
    .unwrap();
    server.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(server.log.wait_for_count(UPDATED, 1));
    assert_eq!(server.connect().request("echo hi"), "hi");
}

#[test]
fn a_restart_with_unchanged_plugins_does_not_recompile() {
    let cache = tempfile::tempdir().unwrap();
    let cache_line = format!("cache_dir = {:?}", cache.path());
    let start = || {
        Setup::new()
            .plugin("onoff", "onoff")
            .config(&cache_line)
            .start()
    };
    let cold = start();
    let stats = cold.log.wait_for("compile cache from_cache").unwrap();
    assert!(
        stats.contains("from_cache=0") && stats.contains("compiled=1"),
        "{stats}"
    );
    drop(cold);
    let warm = start();
    let stats = warm.log.wait_for("compile cache from_cache").unwrap();
    assert!(
        stats.contains("from_cache=1") && stats.contains("compiled=0"),
        "{stats}"
    );
    assert_eq!(warm.connect().request("on"), "success");
}

#[test]
fn a_command_already_running_finishes_on_the_version_it_started_with() {
    let server = Setup::new()
        .plugin("testing_echo", "echo")
        .config("call_timeout_ms = 10000")
        .start();
    let mut busy = server.connect();
    busy.send(b"echo started<EOF>sleep 1500<EOF>");
    assert_eq!(busy.reply().unwrap(), "started");
    // Replace echo with a plugin that has no `sleep` at all.
    replace(&server, "echo.wasm", &bytes_of("testing_rival"), 1);
    assert_eq!(
        server.connect().request("sleep 1"),
        "error: unknown command 'sleep'"
    );
    assert_eq!(
        busy.reply().unwrap(),
        "slept 1500",
        "the running call kept its version"
    );
}

#[test]
fn conflicts_are_re_resolved_on_every_change() {
    let server = onoff();
    let mut client = server.connect();
    // `a-rival.wasm` sorts before `onoff.wasm`: it takes `on` while present.
    replace(&server, "a-rival.wasm", &bytes_of("testing_rival"), 1);
    assert_eq!(client.request("on"), "rival on");
    assert_eq!(client.request("off"), "success");
    std::fs::remove_file(server.plugin_dir.join("a-rival.wasm")).unwrap();
    assert!(server.log.wait_for_count(UPDATED, 2));
    assert_eq!(client.request("on"), "success");
}

/// The one compile cache entry in `cache`, and its bytes.
fn only_cache_entry(cache: &std::path::Path) -> (std::path::PathBuf, Vec<u8>) {
    let entries: Vec<_> = std::fs::read_dir(cache.join("wasmtime/modules"))
        .unwrap()
        .flatten()
        .flat_map(|compiler| std::fs::read_dir(compiler.path()).unwrap().flatten())
        .map(|file| file.path())
        .filter(|path| path.extension().is_none())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let bytes = std::fs::read(&entries[0]).unwrap();
    (entries[0].clone(), bytes)
}

/// A damaged, truncated or foreign compile cache entry is never run: it is
/// found before the engine loads it and compiled afresh, so the server
/// starts and serves the plugin it was given. The foreign entry is the
/// sharpest: another plugin's valid code under this plugin's key, which an
/// unchecked cache runs as this plugin (or crashes on).
#[test]
fn damaged_compile_cache_entries_are_recompiled_never_run() {
    let cache_for = |plugin: &str, name: &str| {
        let cache = tempfile::tempdir().unwrap();
        let server = Setup::new()
            .plugin(plugin, name)
            .config(&format!("cache_dir = {:?}", cache.path()))
            .start();
        drop(server);
        cache
    };
    let echo_cache = cache_for("testing_echo", "echo");
    let onoff_cache = cache_for("onoff", "onoff");
    let (entry, pristine) = only_cache_entry(echo_cache.path());
    let (_, foreign) = only_cache_entry(onoff_cache.path());
    let mut flipped = pristine.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    for (kind, damaged) in [
        ("foreign", foreign),
        ("flipped byte", flipped),
        ("truncated", pristine[..pristine.len() / 2].to_vec()),
        ("empty", Vec::new()),
    ] {
        std::fs::write(&entry, &damaged).unwrap();
        let server = Setup::new()
            .plugin("testing_echo", "echo")
            .config(&format!("cache_dir = {:?}", echo_cache.path()))
            .start();
        let mut client = server.connect();
        assert_eq!(client.request("echo hi"), "hi", "{kind}");
        assert_eq!(
            client.request("on"),
            "error: unknown command 'on'",
            "{kind}"
        );
        drop(server);
        assert_eq!(
            std::fs::read(&entry).unwrap(),
            pristine,
            "{kind}: the entry was not compiled afresh"
        );
    }
}

/// `plugin_dir` removed and made again (`rm -rf`, then a deploy): the loaded
/// plugins serve meanwhile, the new directory is rescanned and watched.
#[test]
fn hot_reload_survives_the_plugin_dir_removed_and_recreated() {
    let server = onoff();
    let dir = server.plugin_dir.clone();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(server.connect().request("on"), "success", "still serving");
    std::fs::create_dir(&dir).unwrap();
    replace(&server, "echo.wasm", &bytes_of("testing_echo"), 1);
    let mut client = server.connect();
    assert_eq!(client.request("echo back"), "back");
    assert_eq!(client.request("on"), "error: unknown command 'on'");
    // Watched again: a file added to the new directory loads.
    replace(&server, "onoff.wasm", &bytes_of("onoff"), 2);
    assert_eq!(client.request("on"), "success");
}

/// A rename swap (`mv plugins plugins.old; mv plugins.new plugins`): the
/// directory now at the path is rescanned and watched.
#[test]
fn hot_reload_survives_a_rename_swap_of_the_plugin_dir() {
    let server = onoff();
    let dir = server.plugin_dir.clone();
    let new = dir.with_extension("new");
    std::fs::create_dir(&new).unwrap();
    std::fs::write(new.join("echo.wasm"), bytes_of("testing_echo")).unwrap();
    std::fs::rename(&dir, dir.with_extension("old")).unwrap();
    std::fs::rename(&new, &dir).unwrap();
    assert!(
        server.log.wait_for_count(UPDATED, 1),
        "{}",
        server.log.text()
    );
    let mut client = server.connect();
    assert_eq!(client.request("echo swapped"), "swapped");
    assert_eq!(client.request("on"), "error: unknown command 'on'");
    replace(&server, "onoff.wasm", &bytes_of("onoff"), 2);
    assert_eq!(client.request("on"), "success");
}

/// `plugin_dir` a symlink swapped to another release directory (`ln -sfn`,
/// as deploy tools do); and SIGHUP re-arms the watch in any case.
#[test]
fn hot_reload_follows_a_symlink_swap_of_the_plugin_dir() {
    let setup = Setup::new().plugin("onoff", "onoff");
    let root = setup.plugin_dir().parent().unwrap().to_owned();
    std::os::unix::fs::symlink("plugins", root.join("current")).unwrap();
    let server = setup.config("plugin_dir = \"current\"").start();
    let release = root.join("release-2");
    std::fs::create_dir(&release).unwrap();
    std::fs::write(release.join("echo.wasm"), bytes_of("testing_echo")).unwrap();
    std::os::unix::fs::symlink("release-2", root.join("current.next")).unwrap();
    std::fs::rename(root.join("current.next"), root.join("current")).unwrap();
    server.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        server.log.wait_for_count(UPDATED, 1),
        "{}",
        server.log.text()
    );
    let mut client = server.connect();
    assert_eq!(client.request("echo released"), "released");
    assert_eq!(client.request("on"), "error: unknown command 'on'");
    std::fs::write(release.join("onoff.wasm"), bytes_of("onoff")).unwrap();
    assert!(
        server.log.wait_for_count(UPDATED, 2),
        "{}",
        server.log.text()
    );
    assert_eq!(client.request("on"), "success");
}
