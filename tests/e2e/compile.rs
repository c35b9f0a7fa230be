//! Compiling out of the server's process: a compile that is killed, runs
//! out of memory or of time costs only that plugin's load (the previous
//! version keeps serving); the incremental cache never hands over a damaged
//! function; `plugboard compile` fills the cache ahead of time; a version
//! replaced while it compiles is never served.
//!
//! The slow compiles are the Python plugin's with a custom section of the
//! test's own: bytes no cache holds, an interpreter's worth of code.

use crate::support::components::with_custom_section;
use crate::support::{Server, Setup, built_guest, built_plugin_bytes, plugboard, stdout};

/// A server serving onoff as `p`, whose next version the test installs.
fn onoff_as_p(setup: Setup) -> Server {
    let server = setup.plugin("onoff", "p").start();
    assert_eq!(server.connect().request("on"), "success");
    server
}

/// The Python plugin, as bytes no compile cache has seen.
fn slow_to_compile(tag: &str) -> Vec<u8> {
    let stats = std::fs::read(built_guest("stats")).expect("the Python plugin");
    with_custom_section(&stats, &format!("{tag}-{}", std::process::id()))
}

/// The pid of the `nth` compile child the server started (1-based).
fn nth_compile_child(server: &Server, nth: usize) -> i32 {
    const STARTED: &str = "compiling plugin in a child process";
    assert!(
        server.log.wait_for_count(STARTED, nth),
        "no compile started:\n{}",
        server.log.text()
    );
    let text = server.log.text();
    let line = text
        .lines()
        .filter(|line| line.contains(STARTED))
        .nth(nth - 1)
        .expect("the line counted");
    let pid = line.split("pid=").nth(1).expect("a pid on the line");
    pid.split_whitespace()
        .next()
        .and_then(|pid| pid.parse().ok())
        .expect("a numeric pid")
}

/// What the server logged of a rejected file, once it did.
fn rejection(server: &Server) -> String {
    server
        .log
        .wait_for_within("rejected plugin file", crate::support::COMPILE_TIMEOUT)
        .unwrap_or_else(|| panic!("no rejection:\n{}", server.log.text()))
}

/// The old version answers, the new one never loaded.
fn still_the_old_version(server: &Server) {
    let mut client = server.connect();
    assert_eq!(client.request("on"), "success");
    assert_eq!(client.request("stats 1"), "error: unknown command 'stats'");
}

#[test]
fn a_compile_killed_midway_costs_only_that_load() {
    let server = onoff_as_p(Setup::new());
    let before = server.log.count("compiling plugin in a child process");
    server.install("p.wasm", &slow_to_compile("killed"));
    let child = nth_compile_child(&server, before + 1);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the compile");
    let rejected = rejection(&server);
    assert!(rejected.contains("killed by SIGKILL"), "{rejected}");
    assert!(
        rejected.contains("previous version keeps serving"),
        "{rejected}"
    );
    still_the_old_version(&server);
}

#[test]
fn a_compile_over_its_memory_limit_costs_only_that_load() {
    let server = onoff_as_p(Setup::new().config("compile_memory_mib = 128"));
    server.install("p.wasm", &slow_to_compile("memory"));
    let rejected = rejection(&server);
    assert!(
        rejected.contains("out of memory (over compile_memory_mib = 128)"),
        "{rejected}"
    );
    still_the_old_version(&server);
}

#[test]
fn a_compile_over_its_time_limit_costs_only_that_load() {
    let server = onoff_as_p(Setup::new().config("compile_timeout_ms = 300"));
    server.install("p.wasm", &slow_to_compile("time"));
    let rejected = rejection(&server);
    assert!(
        rejected.contains("longer than compile_timeout_ms (300 ms)"),
        "{rejected}"
    );
    still_the_old_version(&server);
}

/// A version replaced while it compiled is never published: the newer one
/// is what serves next, and the superseded one never answers a command.
#[test]
fn a_version_superseded_while_it_compiles_is_never_served() {
    let server = onoff_as_p(Setup::new());
    let before = server.log.count("compiling plugin in a child process");
    server.install("p.wasm", &slow_to_compile("superseded"));
    nth_compile_child(&server, before + 1);
    server.install("p.wasm", &built_plugin_bytes("testing_rival"));
    assert!(
        server
            .log
            .wait_for_within(
                "superseded while it compiled",
                crate::support::COMPILE_TIMEOUT
            )
            .is_some(),
        "{}",
        server.log.text()
    );
    assert!(
        server.log.wait_for_count("plugin set updated", 1),
        "the newer version loads: {}",
        server.log.text()
    );
    assert_eq!(server.connect().request("on"), "rival on");
    assert!(
        !server.log.text().contains("commands=[\"stats\"]"),
        "the superseded version was published:\n{}",
        server.log.text()
    );
}

/// Every function the incremental cache holds is checked before it is
/// used: entries damaged on disk are not used but compiled again (and
/// written anew), and the plugin they were for serves as it should.
#[test]
fn a_damaged_incremental_cache_entry_is_compiled_again() {
    let cache = tempfile::tempdir().unwrap();
    let setup = Setup::new().config(&format!("cache_dir = {:?}", cache.path()));
    let server = onoff_as_p(setup);
    let entries = incremental_entries(cache.path());
    assert!(
        !entries.is_empty(),
        "the compile filled the incremental cache"
    );
    for entry in &entries {
        let mut bytes = std::fs::read(entry).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x55;
        std::fs::write(entry, bytes).unwrap();
    }
    let onoff = built_plugin_bytes("onoff");
    let reused = |server: &Server, nth: usize| {
        // Published (and so serving) once the table is swapped.
        assert!(
            server.log.wait_for_count("plugin set updated", nth - 1),
            "{}",
            server.log.text()
        );
        let text = server.log.text();
        let line = text
            .lines()
            .filter(|line| line.contains("loaded plugin"))
            .nth(nth - 1);
        let line = line.expect("the line counted");
        let reused = line
            .split("functions compiled, ")
            .nth(1)
            .expect("a child compiled");
        reused
            .split_whitespace()
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let damaged = |server: &Server| -> Vec<u64> {
        let text = server.log.text();
        text.lines()
            .filter_map(|line| line.split("incremental compilation cache: ").nth(1))
            .map(|rest| rest.split_whitespace().next().unwrap().parse().unwrap())
            .collect()
    };
    server.install("p.wasm", &with_custom_section(&onoff, "after-damage"));
    let after_damage = reused(&server, 2);
    let found = damaged(&server);
    assert!(matches!(found[..], [n] if n > 0), "{}", server.log.text());
    assert_eq!(server.connect().request("on"), "success");
    server.install("p.wasm", &with_custom_section(&onoff, "after-repair"));
    let after_repair = reused(&server, 3);
    let still = damaged(&server).get(1).copied().unwrap_or(0);
    assert!(
        still < found[0],
        "the entries found were written anew: {still} < {found:?}"
    );
    assert!(
        after_repair > after_damage,
        "{after_repair} > {after_damage}"
    );
    let mut client = server.connect();
    assert_eq!(client.request("on"), "success");
    assert_eq!(client.request("status"), "on");
}

/// The files of the incremental cache under `cache_dir`.
fn incremental_entries(cache_dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(cache_dir.join("incremental"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fan| std::fs::read_dir(fan.path()).ok())
        .flat_map(|files| files.flatten().map(|file| file.path()))
        .collect()
}

/// `plugboard compile` fills the cache for every plugin of the directory;
/// the server started next loads each from it, without a compile.
#[test]
fn compile_ahead_of_time_then_serve_from_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let setup = Setup::new()
        .plugin("onoff", "onoff")
        .plugin("testing_echo", "echo")
        .config(&format!("cache_dir = {:?}", cache.path()));
    let output = plugboard()
        .args(["compile", "--config"])
        .arg(setup.config_path())
        .output()
        .unwrap();
    let said = stdout(&output);
    assert!(output.status.success(), "{said}");
    assert!(
        said.contains("echo.wasm: compiled in a child process"),
        "{said}"
    );
    assert!(said.contains("2 of 2 plugins ready"), "{said}");
    let server = setup.start();
    assert_eq!(server.log.count("compiled=\"from the compile cache\""), 2);
    assert_eq!(server.log.count("compiling plugin in a child process"), 0);
    assert_eq!(server.connect().request("echo hi"), "hi");
}

/// A file the server would reject fails `plugboard compile`, by name.
#[test]
fn compile_ahead_of_time_names_a_file_it_cannot_compile() {
    let setup = Setup::new()
        .plugin("onoff", "onoff")
        .file("broken.wasm", b"\0asm\x0d\0\x01\0 broken");
    let output = plugboard()
        .args(["compile", "--config"])
        .arg(setup.config_path())
        .output()
        .unwrap();
    let said = stdout(&output);
    assert!(!output.status.success(), "{said}");
    assert!(
        said.contains("broken.wasm: rejected: not a valid WebAssembly component"),
        "{said}"
    );
    assert!(said.contains("1 of 2 plugins ready"), "{said}");
}

/// Without a cache directory it can write, the server compiles in its
/// own process, says so, and serves.
#[test]
fn without_a_usable_cache_the_server_compiles_in_process_and_says_so() {
    let server = Setup::new()
        .plugin("onoff", "onoff")
        .config("cache_dir = \"/proc/version/cache\"")
        .start();
    assert!(
        server
            .log
            .wait_for("plugins are compiled in the server's own process")
            .is_some()
    );
    assert_eq!(server.connect().request("on"), "success");
}

/// The shipped systemd unit is one systemd accepts, with the binary it
/// names (here, this build's).
#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/plugboard.service"),
    )
    .unwrap();
    assert!(unit.contains("ExecStartPre=/usr/local/bin/plugboard compile"));
    let dir = tempfile::tempdir().unwrap();
    let here = dir.path().join("plugboard.service");
    std::fs::write(
        &here,
        unit.replace("/usr/local/bin/plugboard", crate::support::plugboard_path()),
    )
    .unwrap();
    let verified = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&here)
        .output()
        .expect("systemd-analyze (Debian's systemd, which `make test` installs)");
    assert!(
        verified.status.success(),
        "{}{}",
        stdout(&verified),
        String::from_utf8_lossy(&verified.stderr)
    );
}
