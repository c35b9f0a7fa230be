//! Plugins calling commands (`commands.call`): the shipped `scene` plugin
//! running its lists of commands under its `allow_commands` grant, and the
//! limits that keep chains of calls finite: cycles, depth, deadlines.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::observability::Scrape;
use crate::support::{Setup, free_port};

/// onoff, echo and scene, with these scenes and scene's grant.
fn scenes(allow: &str, scenes: &[(&str, &str)]) -> Setup {
    let mut setup = Setup::new()
        .plugin("onoff", "onoff")
        .plugin("testing_echo", "echo")
        .plugin("scene", "scene")
        .config("state_store = \"memory\"")
        .plugin_config("scene", &format!("allow_commands = {allow}"));
    let table: String = scenes
        .iter()
        .map(|(name, steps)| format!("{name} = \"{steps}\"\n"))
        .collect();
    setup = setup.tables(&format!("[plugins.scene.config]\n{table}"));
    setup
}

#[test]
fn a_scene_under_its_grant_runs_every_command_in_order() {
    let server = scenes(
        r#"["on", "off", "status", "fail"]"#,
        &[
            ("night", "on; status; off; status"),
            ("broken", "on; fail boom; off"),
        ],
    )
    .start();
    let mut client = server.connect();
    assert_eq!(
        client.request("scene night"),
        "on: success\nstatus: on\noff: success\nstatus: off"
    );
    assert_eq!(client.request("status"), "off");
    // Stops at the first error reply, says which, and runs nothing after.
    assert_eq!(
        client.request("scene broken"),
        "error: scene 'broken' stopped at command 2 of 3 ('fail boom')\n\
         on: success\nfail boom: error: boom"
    );
    assert_eq!(client.request("status"), "on");
    assert_eq!(
        client.request("scene morning"),
        "error: no scene 'morning': add morning = \"command; command\" to [plugins.scene.config]"
    );
}

#[test]
fn without_the_grant_a_scene_is_refused_and_counted() {
    let port = free_port();
    let server = scenes(r#"["on"]"#, &[("night", "on; off")])
        .config(&format!("metrics_listen = \"127.0.0.1:{port}\""))
        .start();
    let mut client = server.connect();
    assert_eq!(
        client.request("scene night"),
        "error: scene 'night' stopped at command 2 of 2 ('off')\non: success\n\
         off: error: permission denied: plugin 'scene' may not call 'off' \
         (grant it in `allow_commands` of [plugins.scene])"
    );
    assert_eq!(client.request("status"), "on");
    let denied = Scrape::from(port).value(
        "plugboard_capability_denied_total",
        &[("plugin", "scene"), ("kind", "command")],
    );
    assert_eq!(denied, Some(1.0));
}

/// A scene calling itself and a cycle through two plugins end in an error
/// reply, well within the deadline, while a bystander's `on` is served
/// as usual.
#[test]
fn self_calls_and_cycles_end_in_an_error_reply_while_bystanders_are_served() {
    let server = scenes(
        r#"["scene", "call", "kv-count"]"#,
        &[
            ("loop", "scene loop"),
            ("ping", "call scene ping"),
            ("again", "kv-count runs; scene again"),
        ],
    )
    .plugin_config("echo", r#"allow_commands = ["scene"]"#)
    .plugin_config("scene", "call_timeout_ms = 2000")
    .start();
    let mut client = server.connect();
    let started = Instant::now();
    let reply = client.request("scene loop");
    assert!(
        reply.starts_with("error: scene 'loop' stopped at command 1 of 1 ('scene loop')"),
        "{reply}"
    );
    assert!(
        reply.contains("call cycle: 'scene loop' is already running in scene loop"),
        "{reply}"
    );
    let reply = client.request("scene ping");
    assert!(
        reply.contains(
            "call cycle: 'scene ping' is already running in scene ping -> call scene ping"
        ),
        "{reply}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Refused at its first call back: nothing before it runs twice.
    let reply = client.request("scene again");
    assert!(reply.contains("call cycle: 'scene again'"), "{reply}");
    assert_eq!(client.request("kv-get runs"), "1");

    // Clients running cycles over and over; a bystander switching.
    let stop = Arc::new(AtomicBool::new(false));
    let loopers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, addr) = (stop.clone(), server.addr);
            thread::spawn(move || {
                let mut client = crate::support::Client::connect(addr);
                let mut cycles = 0;
                while !stop.load(Ordering::Relaxed) {
                    assert!(client.request("scene loop").starts_with("error: "));
                    cycles += 1;
                }
                cycles
            })
        })
        .collect();
    let mut bystander = server.connect();
    let mut slowest = Duration::ZERO;
    for _ in 0..200 {
        let sent = Instant::now();
        assert_eq!(bystander.request("on"), "success");
        slowest = slowest.max(sent.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    let cycles: u32 = loopers.into_iter().map(|t| t.join().unwrap()).sum();
    println!("bystander: slowest `on` of 200 took {slowest:?} beside {cycles} cycles");
    assert!(cycles > 0);
    // Not a timing goal: a bound no stalled bystander would meet.
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
}

#[test]
fn calls_nest_no_deeper_than_max_call_depth() {
    let server = scenes(
        r#"["scene", "on"]"#,
        &[
            ("a", "scene b"),
            ("b", "scene c"),
            ("c", "on"),
            ("d", "scene a"),
        ],
    )
    .config("max_call_depth = 3")
    // One CPU place: a scene calling a scene must give its place up to it.
    .plugin_config("scene", "max_concurrent_calls = 1")
    .start();
    let mut client = server.connect();
    // a -> b -> c -> on: three calls deep.
    let reply = client.request("scene a");
    assert!(!reply.starts_with("error: "), "{reply}");
    assert_eq!(client.request("status"), "on");
    let reply = client.request("scene d");
    assert!(
        reply.contains(
            "calls nest at most 3 deep (max_call_depth): scene d -> scene a -> scene b -> scene c -> on"
        ),
        "{reply}"
    );
}

/// The nested command's time is the caller's: a scene with 200 ms runs a
/// 2 s sleep (echo has the time) and times out at its own deadline.
#[test]
fn a_nested_calls_time_counts_in_the_callers_deadline() {
    let server = scenes(
        r#"["sleep"]"#,
        &[("slow", "sleep 2000"), ("quick", "sleep 10")],
    )
    .plugin_config("scene", "call_timeout_ms = 200")
    .plugin_config("echo", "call_timeout_ms = 5000")
    .start();
    let mut client = server.connect();
    assert_eq!(client.request("scene quick"), "sleep 10: slept 10");
    let started = Instant::now();
    assert_eq!(
        client.request("scene slow"),
        "error: plugin 'scene' timed out"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    // The connection and the plugins go on.
    assert_eq!(client.request("scene quick"), "sleep 10: slept 10");
}
