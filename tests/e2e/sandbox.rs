//! The sandbox: every limit shown with a hostile plugin against the real
//! server, which keeps serving other clients meanwhile and is healthy after.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::support::{Client, Server, Setup};

/// The hostile plugin beside onoff, whose `on` stands for "everyone else".
fn hostile() -> Setup {
    Setup::new()
        .plugin("testing_hostile", "hostile")
        .plugin("onoff", "onoff")
}

/// Asserts other clients are answered while `busy` still waits for its reply.
fn others_are_served_meanwhile(server: &Server, busy: &mut [Client]) {
    let mut other = server.connect();
    for _ in 0..20 {
        assert_eq!(other.request("on"), "success");
    }
    assert!(
        busy.iter_mut().all(|client| !client.has_reply_ready()),
        "the hostile call ended before the other client was served"
    );
}

#[test]
fn infinite_loop_times_out_without_stalling_others() {
    let server = hostile().config("call_timeout_ms = 1500").start();
    // More spinning calls than the machine has cores: a call that pinned a
    // runtime thread would starve the other client.
    let mut spinners: Vec<Client> = (0..4).map(|_| server.connect()).collect();
    for spinner in &mut spinners {
        spinner.send(b"spin<EOF>");
    }
    others_are_served_meanwhile(&server, &mut spinners);
    for spinner in &mut spinners {
        assert_eq!(
            spinner.reply().unwrap(),
            "error: plugin 'hostile' timed out"
        );
        assert_eq!(spinner.request("recall"), "", "the next call works");
    }
}

/// With one place, a second call of the plugin waits for it while the
/// first spins; another plugin is served meanwhile.
#[test]
fn calls_beyond_a_plugins_cpu_share_wait_and_others_are_served() {
    let server = hostile()
        .plugin_config("hostile", "max_concurrent_calls = 1")
        .plugin_config("hostile", "call_timeout_ms = 5000")
        .start();
    let mut spinner = server.connect();
    spinner.send(b"spin 600<EOF>");
    assert!(server.log.wait_for("spin: started").is_some());
    let mut waiter = server.connect();
    let started = Instant::now();
    waiter.send(b"recall<EOF>");
    others_are_served_meanwhile(&server, std::slice::from_mut(&mut waiter));
    assert_eq!(spinner.reply().unwrap(), "spun 600");
    // `recall` is instant: it waited for the spinner's place.
    assert_eq!(waiter.reply().unwrap(), "");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
}

#[test]
fn per_plugin_timeout_overrides_the_default() {
    let server = hostile()
        .config("call_timeout_ms = 60000")
        .plugin_config("hostile", "call_timeout_ms = 50")
        .start();
    let mut client = server.connect();
    assert_eq!(client.request("spin"), "error: plugin 'hostile' timed out");
    // Other plugins keep the top-level limit.
    assert_eq!(client.request("on"), "success");
}

#[test]
fn slow_call_within_its_deadline_succeeds() {
    let server = Setup::new()
        .plugin("testing_echo", "echo")
        .config("call_timeout_ms = 5000")
        .start();
    assert_eq!(server.connect().request("sleep 200"), "slept 200");
}

#[test]
fn sleeping_past_the_deadline_times_out() {
    // A host call (WASI sleep) is interrupted too, not only running wasm.
    let server = Setup::new()
        .plugin("testing_echo", "echo")
        .config("call_timeout_ms = 100")
        .start();
    assert_eq!(
        server.connect().request("sleep 10000"),
        "error: plugin 'echo' timed out"
    );
}

#[test]
fn allocation_bomb_hits_the_memory_limit_and_host_memory_stays_bounded() {
    let server = hostile()
        .config("max_memory_mib = 32")
        .config("quarantine_after = 0")
        .start();
    let mut client = server.connect();
    for _ in 0..10 {
        assert_eq!(
            client.request("alloc-bomb"),
            "error: plugin 'hostile' exceeded its memory limit"
        );
    }
    // Ten bombs of 32 MiB each: memory is returned after every call.
    let resident = server.resident_mib();
    assert!(
        resident < 160.0,
        "server resident memory is {resident} MiB after 10 bombs"
    );
    assert_eq!(client.request("recall"), "", "the next call works");
    assert_eq!(client.request("on"), "success");
}

#[test]
fn unbounded_recursion_traps_cleanly() {
    let server = hostile().start();
    let mut client = server.connect();
    assert_eq!(client.request("recurse"), "error: plugin 'hostile' failed");
    assert_eq!(client.request("recall"), "");
}

#[test]
fn stack_limit_is_configurable() {
    let levels = "depth 3000";
    let default = hostile().start();
    assert_eq!(default.connect().request(levels), "reached 3000");
    let small = hostile().config("max_stack_kib = 64").start();
    assert_eq!(
        small.connect().request(levels),
        "error: plugin 'hostile' failed"
    );
}

#[test]
fn every_attack_leaves_other_clients_served_and_the_server_healthy() {
    let server = hostile()
        .config("call_timeout_ms = 300")
        .config("max_memory_mib = 16")
        .config("max_reply_bytes = 100")
        .config("quarantine_after = 0")
        .start();
    let attacks = [
        ("spin", "error: plugin 'hostile' timed out"),
        (
            "alloc-bomb",
            "error: plugin 'hostile' exceeded its memory limit",
        ),
        ("recurse", "error: plugin 'hostile' failed"),
        (
            "huge-reply 101",
            "error: plugin 'hostile' reply too large (101 bytes, limit 100)",
        ),
    ];
    // A bystander keeps sending `on` during every attack; each must succeed.
    let served = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(Barrier::new(2));
    let bystander = {
        let (addr, served, stop, started) =
            (server.addr, served.clone(), stop.clone(), started.clone());
        std::thread::spawn(move || {
            let mut client = Client::connect(addr);
            assert_eq!(client.request("on"), "success");
            started.wait();
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(client.request("on"), "success");
                served.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    started.wait();
    let mut attacker = server.connect();
    for (attack, reply) in attacks {
        assert_eq!(attacker.request(attack), reply, "{attack}");
    }
    // After the attacks the bystander is still being served.
    let after_attacks = served.load(Ordering::Relaxed);
    let deadline = std::time::Instant::now() + crate::support::TIMEOUT;
    while served.load(Ordering::Relaxed) < after_attacks + 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "the bystander stopped being served"
        );
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    bystander.join().expect("bystander thread");
    // Healthy afterwards: the same connection, the same plugin, new clients.
    assert_eq!(attacker.request("remember ok"), "remembered");
    assert_eq!(server.connect().request("on"), "success");
}

#[test]
fn reply_over_max_reply_bytes_is_refused() {
    let server = hostile().config("max_reply_bytes = 1000").start();
    let mut client = server.connect();
    assert_eq!(client.request("huge-reply 1000").len(), 1000);
    assert_eq!(
        client.request("huge-reply 1001"),
        "error: plugin 'hostile' reply too large (1001 bytes, limit 1000)"
    );
}

#[test]
fn default_reply_limit_is_one_mebibyte() {
    let server = hostile().start();
    let mut client = server.connect();
    assert_eq!(client.request("huge-reply 1048576").len(), 1 << 20);
    assert_eq!(
        client.request("huge-reply 1048577"),
        "error: plugin 'hostile' reply too large (1048577 bytes, limit 1048576)"
    );
}

#[test]
fn files_are_out_of_reach() {
    let server = hostile().start();
    let mut client = server.connect();
    for path in ["/etc/passwd", "Cargo.toml", "."] {
        let reply = client.request(&format!("open-file {path}"));
        assert!(reply.starts_with("error: denied:"), "{path}: {reply}");
    }
}

#[test]
fn sockets_are_out_of_reach() {
    let server = hostile().start();
    let mut client = server.connect();
    // Even the server's own address on loopback.
    let reply = client.request(&format!("connect {}", server.addr));
    assert!(reply.starts_with("error: denied:"), "{reply}");
}

#[test]
fn one_clients_instance_is_never_seen_by_another() {
    let server = hostile().start();
    let mut alice = server.connect();
    let mut bob = server.connect();
    // Each client's commands pipelined, so that the connection never idles
    // between them (an idle connection releases its instance).
    alice.send(b"remember alice's secret<EOF>recall<EOF>");
    assert_eq!(alice.reply().unwrap(), "remembered");
    assert_eq!(
        alice.reply().unwrap(),
        "alice's secret",
        "kept between commands"
    );
    bob.send(b"recall<EOF>remember bob's<EOF>recall<EOF>");
    assert_eq!(bob.reply().unwrap(), "", "bob has an instance of his own");
    assert_eq!(bob.reply().unwrap(), "remembered");
    assert_eq!(bob.reply().unwrap(), "bob's");
}

#[test]
fn a_failed_call_discards_the_instance() {
    let server = hostile().config("quarantine_after = 0").start();
    let mut client = server.connect();
    assert_eq!(client.request("remember before"), "remembered");
    assert_eq!(client.request("recurse"), "error: plugin 'hostile' failed");
    assert_eq!(
        client.request("recall"),
        "",
        "a fresh instance after the trap"
    );
}

#[test]
fn an_idle_connection_gets_a_fresh_instance() {
    let server = hostile().start();
    let mut client = server.connect();
    assert_eq!(client.request("remember before"), "remembered");
    // Time is the behaviour under test: there is no event to wait for.
    std::thread::sleep(plugboard::net::connection::IDLE_RELEASE + Duration::from_millis(500));
    assert_eq!(client.request("recall"), "");
}

#[test]
fn instances_are_recycled_after_their_call_budget() {
    let budget = plugboard::plugin::MAX_CALLS_PER_INSTANCE as usize;
    let server = hostile().start();
    let mut client = server.connect();
    // One `remember` and recalls up to the budget, then one more: pipelined,
    // so that the connection never idles in between.
    let mut batch = b"remember kept<EOF>".to_vec();
    for _ in 0..budget {
        batch.extend_from_slice(b"recall<EOF>");
    }
    client.send(&batch);
    assert_eq!(client.reply().unwrap(), "remembered");
    for call in 2..=budget {
        assert_eq!(client.reply().unwrap(), "kept", "call {call}");
    }
    assert_eq!(
        client.reply().unwrap(),
        "",
        "call {} is in a fresh instance",
        budget + 1
    );
}

#[test]
fn crash_loop_disables_the_plugin_and_only_it() {
    let server = Setup::new()
        .plugin("testing_echo", "echo")
        .plugin("onoff", "onoff")
        .config("quarantine_after = 3")
        .start();
    let mut client = server.connect();
    assert_eq!(client.request("panic"), "error: plugin 'echo' failed");
    // A success in between does not reset the count: failures are counted
    // among the last 4 x quarantine_after calls.
    assert_eq!(client.request("echo ok"), "ok");
    for _ in 0..2 {
        assert_eq!(client.request("panic"), "error: plugin 'echo' failed");
    }
    assert_eq!(client.request("echo ok"), "error: plugin 'echo' disabled");
    assert!(server.log.wait_for("plugin disabled").is_some());
    assert_eq!(client.request("on"), "success");
}

/// One success in every five calls used to keep a mostly failing plugin
/// serving for ever.
#[test]
fn interleaved_successes_do_not_hide_a_plugin_that_mostly_fails() {
    let server = Setup::new()
        .plugin("testing_echo", "echo")
        .config("quarantine_after = 5")
        .start();
    let mut client = server.connect();
    let mut replies = Vec::new();
    for _ in 0..4 {
        for _ in 0..4 {
            replies.push(client.request("panic"));
        }
        replies.push(client.request("echo ok"));
    }
    assert!(
        replies.contains(&"error: plugin 'echo' disabled".to_owned()),
        "{replies:?}"
    );
    assert_eq!(client.request("echo ok"), "error: plugin 'echo' disabled");
}

#[test]
fn sighup_revives_a_quarantined_plugin() {
    let server = Setup::new()
        .plugin("testing_echo", "echo")
        .config("quarantine_after = 1")
        .start();
    let mut client = server.connect();
    assert_eq!(client.request("panic"), "error: plugin 'echo' failed");
    assert_eq!(client.request("echo x"), "error: plugin 'echo' disabled");
    server.signal(nix::sys::signal::Signal::SIGHUP);
    let deadline = Instant::now() + crate::support::TIMEOUT;
    while client.request("echo x") != "x" {
        assert!(Instant::now() < deadline, "not revived by SIGHUP");
    }
}

#[test]
fn plugin_refusals_do_not_count_as_failures() {
    let server = Setup::new()
        .plugin("testing_echo", "echo")
        .config("quarantine_after = 2")
        .start();
    let mut client = server.connect();
    for _ in 0..5 {
        assert_eq!(client.request("fail no"), "error: no");
    }
    assert_eq!(client.request("echo still"), "still");
}

/// The flood lines a plugin got into the log (its lines are runs of `y`).
fn flood_lines(server: &Server) -> Vec<String> {
    server
        .log
        .text()
        .lines()
        .filter(|line| line.contains("yyyy"))
        .map(str::to_owned)
        .collect()
}

/// Floods the log through `command` from four clients while a bystander is
/// served; returns how long the flood took.
fn flood(server: &Server, command: &str) -> Duration {
    let started = Instant::now();
    let flooders: Vec<_> = (0..4)
        .map(|_| {
            let mut client = server.connect();
            let command = command.to_owned();
            std::thread::spawn(move || {
                for _ in 0..5 {
                    assert_eq!(client.request(&command), "wrote 2000 lines");
                }
            })
        })
        .collect();
    let mut bystander = server.connect();
    while !flooders.iter().all(|f| f.is_finished()) {
        assert_eq!(bystander.request("on"), "success");
    }
    for flooder in flooders {
        flooder.join().expect("flooder");
    }
    started.elapsed()
}

/// 40 000 lines of 1 000 bytes through `host.log`, then through stderr: the
/// log gets at most the plugin's rate (in bursts of as many), each line cut
/// to its length limit, and a line saying how many were not written.
#[test]
fn log_floods_are_held_to_the_plugins_rate_and_line_length() {
    for command in ["log-flood 2000 1000", "print-flood 2000 1000"] {
        let server = hostile()
            .plugin_config("hostile", "max_log_lines_per_sec = 20")
            .plugin_config("hostile", "max_log_line_bytes = 100")
            .start();
        let took = flood(&server, command);
        let lines = flood_lines(&server);
        let allowed = 20.0 * (took.as_secs_f64() + 1.0) + 20.0;
        assert!(
            (lines.len() as f64) <= allowed,
            "{command}: {} lines in {took:?}",
            lines.len()
        );
        assert!(!lines.is_empty(), "{command}: nothing written at all");
        // What was not written is reported, at most once a second.
        let notices = server
            .log
            .count("log lines of this plugin were not written");
        assert!(
            notices as f64 <= took.as_secs_f64() + 2.0,
            "{command}: {notices} notices in {took:?}"
        );
        for line in &lines {
            let run = line.split(|c| c != 'y').map(str::len).max().unwrap_or(0);
            assert!(run <= 100, "{command}: a line of {run} bytes");
        }
        // The next line the plugin gets into the log says how many did not.
        let mut client = server.connect();
        let deadline = Instant::now() + crate::support::TIMEOUT;
        while server
            .log
            .count("log lines of this plugin were not written")
            == 0
        {
            assert!(
                Instant::now() < deadline,
                "{command}: no count of what was not written"
            );
            client.request("log-flood 1 10");
        }
    }
}

/// A huge log line is cut where it lies in the plugin's memory: the server
/// does not copy 40 MiB to write 100 bytes of it. The line itself is the
/// plugin's memory (about 40 MiB resident while the call runs); a copy
/// would add as much again, outside every memory limit.
#[test]
fn a_huge_log_line_is_cut_without_a_copy() {
    let server = hostile()
        .plugin_config("hostile", "max_log_line_bytes = 100")
        .start();
    let mut client = server.connect();
    assert_eq!(client.request("log-flood 1 10"), "wrote 1 lines");
    let before = server.peak_resident_mib();
    let line_mib = 40;
    assert_eq!(
        client.request(&format!("log-flood 1 {}", line_mib << 20)),
        "wrote 1 lines"
    );
    let grew = server.peak_resident_mib() - before;
    assert!(
        grew < f64::from(line_mib) * 1.5,
        "the peak grew by {grew:.0} MiB for a {line_mib} MiB line"
    );
    assert!(
        server.log.wait_for_count("cut=", 1),
        "{}",
        server.log.text()
    );
}

/// The server's own warning per failed call is held to a rate too.
#[test]
fn failed_call_warnings_do_not_flood_the_log() {
    let server = hostile().config("max_reply_bytes = 1").start();
    let mut client = server.connect();
    let started = Instant::now();
    for _ in 0..3000 {
        assert!(client.request("huge-reply 10").contains("reply too large"));
    }
    let warnings = server.log.count("plugin call failed");
    let allowed = 10.0 * (started.elapsed().as_secs_f64() + 1.0) + 10.0;
    assert!((warnings as f64) <= allowed, "{warnings} warnings");
    assert!(warnings >= 1);
}

/// A log nobody reads (a full stderr pipe) does not stall the server: its
/// lines are dropped, and plugins and clients go on.
#[test]
fn an_unread_log_does_not_stall_the_server() {
    let server = hostile()
        .plugin_config("hostile", "max_log_lines_per_sec = 1000000")
        .start();
    server.log.pause();
    let mut flooder = server.connect();
    // 2 MB of log per call, far more than a pipe holds.
    for _ in 0..5 {
        assert_eq!(flooder.request("log-flood 2000 1000"), "wrote 2000 lines");
    }
    assert_eq!(server.connect().request("on"), "success");
    server.log.resume();
}

/// A plugin serving `command` with eight memories (the most an instance may
/// have), seven of them growing by `pages` (64 KiB) per call.
fn many_memories_named(command: &str, pages: u32) -> Vec<u8> {
    use crate::support::components::{Handle, component};
    component(&[command], Handle::GrowExtraMemories { memories: 7, pages })
}

fn many_memories(pages: u32) -> Vec<u8> {
    many_memories_named("grow", pages)
}

/// `max_memory_mib` is the whole instance's: seven memories of 2.5 MiB are
/// refused under 16 MiB, seven of 1.25 MiB are not.
#[test]
fn the_memory_limit_is_the_instances_not_each_memorys() {
    let server = Setup::new()
        .plugin("onoff", "onoff")
        .file("small.wasm", &many_memories(20))
        .file("large.wasm", &many_memories_named("grow-large", 40))
        .config("max_memory_mib = 16")
        .start();
    let mut client = server.connect();
    assert_eq!(client.request("grow"), "grown");
    assert_eq!(
        client.request("grow-large"),
        "error: plugin 'large' exceeded its memory limit"
    );
    assert_eq!(client.request("on"), "success");
}

/// All instances together stay within `max_total_memory_mib`: past it the
/// call that cannot get memory is told so, other plugins go on, and memory
/// given back is usable again.
#[test]
fn the_server_memory_budget_bounds_all_instances() {
    // 7 memories x 40 pages: 17.5 MiB an instance, kept warm by its connection.
    let hog = many_memories_named("hold", 40);
    let server = Setup::new()
        .plugin("onoff", "onoff")
        .file("hog.wasm", &hog)
        .config("max_total_memory_mib = 48")
        .start();
    let mut first = server.connect();
    let mut second = server.connect();
    assert_eq!(first.request("hold"), "grown");
    assert_eq!(second.request("hold"), "grown");
    let mut third = server.connect();
    assert_eq!(
        third.request("hold"),
        "error: server memory budget reached, try again"
    );
    assert_eq!(server.connect().request("on"), "success");
    drop(first);
    let deadline = Instant::now() + crate::support::TIMEOUT;
    while third.request("hold") != "grown" {
        assert!(Instant::now() < deadline, "the budget was not given back");
    }
}

/// A component over the per-instance ceiling is refused at load with the
/// limit named, and the rest of the plugins load.
#[test]
fn a_plugin_over_the_instance_ceiling_is_refused_at_load() {
    use crate::support::components::{Handle, component};
    let nine = component(
        &["nine"],
        Handle::GrowExtraMemories {
            memories: 8,
            pages: 1,
        },
    );
    let server = Setup::new()
        .plugin("onoff", "onoff")
        .file("nine.wasm", &nine)
        .start();
    let rejected = server
        .log
        .wait_for("rejected plugin file")
        .expect("a rejection");
    assert!(
        rejected.contains("at most") && rejected.contains("8 memories"),
        "{rejected}"
    );
    assert_eq!(
        server.connect().request("nine"),
        "error: unknown command 'nine'"
    );
    assert_eq!(server.connect().request("on"), "success");
}

/// A plugin at its `max_instances` makes its own next call wait for an
/// instance, not anyone else's: other plugins are served meanwhile, and the
/// call runs once an instance goes (its busy reply, when none goes in time,
/// is shown in process: `plugin/tests.rs`).
#[test]
fn a_plugin_at_its_instance_bound_waits_and_others_do_not() {
    let server = hostile()
        .plugin_config("hostile", "max_instances = 2")
        .plugin_config("hostile", "max_concurrent_calls = 8")
        .plugin_config("hostile", "call_timeout_ms = 600")
        .start();
    let mut spinners: Vec<Client> = (0..2).map(|_| server.connect()).collect();
    for spinner in &mut spinners {
        spinner.send(b"spin<EOF>");
    }
    assert!(server.log.wait_for_count("spin: started", 2));
    let mut third = server.connect();
    third.send(b"recall<EOF>");
    // `recall` is instant: no reply yet means it waits for an instance.
    others_are_served_meanwhile(&server, std::slice::from_mut(&mut third));
    for spinner in &mut spinners {
        assert_eq!(
            spinner.reply().unwrap(),
            "error: plugin 'hostile' timed out"
        );
    }
    assert_eq!(third.reply().unwrap(), "");
}

/// WASI handles a plugin makes and never drops are host memory: one
/// instance holds at most 4 096, the call that wants more fails, and the
/// instance (and its handles) goes; the next call gets a fresh one.
#[test]
fn leaked_wasi_handles_are_bounded_and_freed_with_the_instance() {
    let server = hostile().config("quarantine_after = 0").start();
    let mut client = server.connect();
    assert_eq!(client.request("leak-handles 1500"), "leaked 1500");
    // The same warm instance: twice as many would be over the cap (each
    // pollable holds two entries: itself and the deadline it waits on).
    assert_eq!(
        client.request("leak-handles 1500"),
        "error: plugin 'hostile' failed"
    );
    assert_eq!(client.request("leak-handles 1500"), "leaked 1500");
    let before = server.resident_mib();
    for _ in 0..20 {
        client.request("leak-handles 1900");
    }
    let after = server.resident_mib();
    assert!(after < before + 32.0, "{before:.1} -> {after:.1} MiB");
    assert_eq!(server.connect().request("on"), "success");
}
