//! Schedules: commands the server runs on time, through the router, with
//! a token's permissions, across restarts and SIGHUPs.
//!
//! The schedules run `kv-count` of the echo test plugin, so what ran is
//! read back from the store (`kv-get`), not from the log; the log's
//! `schedule ran` lines only say when to look.

use crate::cli::serve_fails;
use crate::observability::Scrape;
use crate::security::new_token;
use crate::support::{Server, Setup, free_port};

/// Logged after each run, whatever its outcome.
const RAN: &str = "schedule ran";

/// A schedule every second, running `command`, as a `[[schedules]]` table.
fn every_second(name: &str, command: &str) -> String {
    format!("[[schedules]]\nname = \"{name}\"\ncron = \"* * * * * *\"\ncommand = \"{command}\"\n")
}

fn echo() -> Setup {
    Setup::new().plugin("testing_echo", "echo")
}

/// `plugboard_schedule_runs_total` of `schedule` with `outcome`.
fn runs(port: u16, schedule: &str, outcome: &str) -> Option<f64> {
    let labels = [("schedule", schedule), ("outcome", outcome)];
    Scrape::from(port).value("plugboard_schedule_runs_total", &labels)
}

/// The counter `key` of the echo plugin (0 when never counted).
fn count(server: &Server, key: &str) -> u64 {
    let value = server.connect().request(&format!("kv-get {key}"));
    match value.as_str() {
        "(none)" => 0,
        value => value
            .parse()
            .unwrap_or_else(|_| panic!("a count, not {value}")),
    }
}

#[test]
fn a_schedule_runs_every_second_across_a_restart_until_sighup_removes_it() {
    let port = free_port();
    let server = echo()
        .config(&format!("metrics_listen = \"127.0.0.1:{port}\""))
        .tables(&every_second("tick", "kv-count ticks"))
        .start();
    assert!(server.log.wait_for_count(RAN, 2));
    assert!(count(&server, "ticks") >= 2);
    let listing = server.connect().request("schedules");
    assert!(
        listing.starts_with("tick: \"* * * * * *\" runs \"kv-count ticks\"; next "),
        "{listing}"
    );
    assert!(listing.contains("; last ok at "), "{listing}");
    let ok = runs(port, "tick", "ok");
    assert!(ok.is_some_and(|runs| runs >= 2.0), "{ok:?}");
    // The operator's window shows it, without its command.
    let (_, body) = crate::observability::get(port, "/status.json");
    let status: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let shown = &status["schedules"][0];
    assert_eq!(shown["name"], "tick", "{status}");
    assert_eq!(shown["cron"], "* * * * * *");
    assert_eq!(shown["last_outcome"], "ok");
    assert!(shown.get("command").is_none(), "{shown}");
    let (_, page) = crate::observability::get(port, "/");
    assert!(
        page.contains("<tr class=\"schedule\"><td><b>tick</b>"),
        "{page}"
    );

    // Killed and started again: the schedule runs on, on the same counter.
    let before = count(&server, "ticks");
    let server = server.kill_and_restart();
    assert!(server.log.wait_for_count(RAN, 2));
    assert!(count(&server, "ticks") > before);

    // SIGHUP with another schedule in its place: `tick` stops, `tock` runs.
    let config = std::fs::read_to_string(&server.config_path).unwrap();
    let replaced = config.replace(
        &every_second("tick", "kv-count ticks"),
        &every_second("tock", "kv-count tocks"),
    );
    assert_ne!(config, replaced);
    std::fs::write(&server.config_path, replaced).unwrap();
    let ran = server.log.count(RAN);
    server.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(server.log.wait_for("schedule stopped").is_some());
    // A run of `tick` going as it stopped finishes: count after two of `tock`.
    assert!(server.log.wait_for_count(RAN, ran + 2));
    let ticks = count(&server, "ticks");
    let ran = server.log.count(RAN);
    assert!(server.log.wait_for_count(RAN, ran + 2));
    assert_eq!(count(&server, "ticks"), ticks, "tick ran after its removal");
    assert!(count(&server, "tocks") >= 2);
    let listing = server.connect().request("schedules");
    assert!(listing.starts_with("tock: "), "{listing}");
    assert!(!listing.contains("tick"), "{listing}");
}

#[test]
fn invalid_crons_and_time_zones_are_refused_naming_the_key() {
    let schedule = |cron: &str, zone: &str| {
        format!("[[schedules]]\nname = \"night\"\ncron = \"{cron}\"\ncommand = \"off\"\n{zone}")
    };
    let err = serve_fails(Setup::new().tables(&schedule("0 25 * * *", "")));
    assert!(
        err.contains("`schedules[0].cron` (schedule 'night')"),
        "{err}"
    );
    let err = serve_fails(Setup::new().tables(&schedule("0 0 31 2 *", "")));
    assert!(err.contains("`schedules[0].cron`"), "{err}");
    assert!(err.contains("matches no time"), "{err}");
    let zone = "timezone = \"Europe/Atlantis\"\n";
    let err = serve_fails(Setup::new().tables(&schedule("0 23 * * *", zone)));
    assert!(
        err.contains("`schedules[0].timezone` (schedule 'night')"),
        "{err}"
    );
    assert!(err.contains("Europe/Atlantis"), "{err}");
}

/// A run has its token's permissions: refused at each run, counted, and
/// nothing runs; `schedules` shows a client only what it may run itself.
#[test]
fn a_schedule_whose_token_may_not_run_its_command_is_refused_at_each_run() {
    let port = free_port();
    let (admin, admin_entry) = new_token(&["*"]);
    let (panel, panel_entry) = new_token(&["echo"]);
    let panel_entry = panel_entry.replace("name = \"panel\"", "name = \"wall\"");
    let schedule = every_second("tick", "kv-count ticks") + "token = \"wall\"\n";
    let admin_entry = admin_entry.replace("name = \"panel\"", "name = \"admin\"");
    let server = echo()
        .config(&format!("metrics_listen = \"127.0.0.1:{port}\""))
        .tables(&format!("{admin_entry}\n{panel_entry}\n{schedule}"))
        .start();
    assert!(server.log.wait_for_count(RAN, 2));
    let denied = runs(port, "tick", "denied");
    assert!(denied.is_some_and(|runs| runs >= 2.0), "{denied:?}");

    let mut client = server.connect();
    assert_eq!(client.request(&format!("auth {admin}")), "success");
    assert_eq!(client.request("kv-get ticks"), "(none)");
    let listing = client.request("schedules");
    assert!(listing.contains("; last denied at "), "{listing}");
    let mut wall = server.connect();
    assert_eq!(wall.request(&format!("auth {panel}")), "success");
    assert_eq!(wall.request("schedules"), "", "wall may not run kv-count");
}

/// A schedule no plugin serves is counted as such at each run; it runs as
/// soon as a plugin serving it arrives.
#[test]
fn a_schedule_of_a_command_no_plugin_serves_runs_once_one_arrives() {
    let port = free_port();
    let server = Setup::new()
        .config(&format!("metrics_listen = \"127.0.0.1:{port}\""))
        .tables(&every_second("tick", "kv-count ticks"))
        .start();
    assert!(server.log.wait_for_count(RAN, 2));
    let unknown = runs(port, "tick", "unknown");
    assert!(unknown.is_some_and(|runs| runs >= 2.0), "{unknown:?}");
    server.install(
        "echo.wasm",
        &crate::support::built_plugin_bytes("testing_echo"),
    );
    assert!(server.log.wait_for("plugin set updated").is_some());
    let ran = server.log.count(RAN);
    assert!(server.log.wait_for_count(RAN, ran + 2));
    assert!(count(&server, "ticks") >= 1);
}

/// A run missed while the server was down is made up once at start with
/// `catch_up`, and not without it.
#[test]
fn catch_up_makes_up_a_missed_run_once_at_start() {
    let yearly = |name: &str, catch_up: bool| {
        format!(
            "[[schedules]]\nname = \"{name}\"\ncron = \"0 0 1 1 *\"\n\
             command = \"kv-count {name}\"\ncatch_up = {catch_up}\n"
        )
    };
    // `clock` runs every second: its first run says the others, started
    // with it, had their chance to catch up.
    let setup = echo().tables(
        &(yearly("eager", true)
            + &yearly("lazy", false)
            + &every_second("clock", "kv-count ticks")),
    );
    // Both last ran two New Years ago, as the server's record says.
    let state = setup.state_dir();
    std::fs::create_dir_all(&state).unwrap();
    let long_ago = 1_735_689_600_000_i64; // 2025-01-01T00:00:00Z
    let record = format!("{{\"eager\":{long_ago},\"lazy\":{long_ago}}}");
    std::fs::write(state.join("schedules.json"), record).unwrap();
    let server = setup.start();
    assert!(server.log.wait_for_count(RAN, 2));
    assert_eq!(count(&server, "eager"), 1);
    assert_eq!(count(&server, "lazy"), 0);
    let listing = server.connect().request("schedules");
    assert!(
        listing.contains("eager: \"0 0 1 1 *\" runs \"kv-count eager\"; next "),
        "{listing}"
    );
    assert!(
        listing.contains("lazy: \"0 0 1 1 *\" runs \"kv-count lazy\"; next "),
        "{listing}"
    );
    assert!(listing.contains("; last ok at "), "{listing}");
    assert!(listing.contains("; last never"), "{listing}");

    // Made up once, however long ago the last run: a restart now has
    // nothing to make up.
    let server = server.kill_and_restart();
    assert!(server.log.wait_for(RAN).is_some());
    assert_eq!(count(&server, "eager"), 1);
    let listing = server.connect().request("schedules");
    let eager = listing
        .lines()
        .find(|l| l.starts_with("eager:"))
        .unwrap_or_default();
    assert!(eager.ends_with("; last never"), "{listing}");
}

/// A plugin's own schedules (the WIT `schedule` interface): added at run
/// time under its `allow_commands`, kept across a restart, removed, each
/// run checked against the grant it has then.
#[test]
fn a_plugin_schedules_its_own_commands_under_its_grant() {
    let port = free_port();
    let server = echo()
        .config(&format!("metrics_listen = \"127.0.0.1:{port}\""))
        .plugin_config("echo", r#"allow_commands = ["kv-count"]"#)
        .start();
    let mut client = server.connect();
    let tick = "tick|* * * * * *|kv-count ticks";
    assert_eq!(client.request(&format!("sched-add {tick}")), "added");
    assert!(server.log.wait_for_count(RAN, 2));
    assert!(count(&server, "ticks") >= 2);
    assert_eq!(client.request("sched-list"), tick);
    let listing = client.request("schedules");
    assert!(
        listing.starts_with("echo/tick: \"* * * * * *\" runs \"kv-count ticks\"; next "),
        "{listing}"
    );

    // What may not be scheduled, and how many.
    assert_eq!(
        client.request("sched-add x|* * * * * *|echo hi"),
        "error: permission denied: plugin 'echo' may not call 'echo' \
         (grant it in `allow_commands` of [plugins.echo])"
    );
    let reply = client.request("sched-add x|61 * * * *|kv-count x");
    assert!(
        reply.starts_with("error: `61 * * * *` is not a cron pattern"),
        "{reply}"
    );
    for n in 1..16 {
        let reply = client.request(&format!("sched-add yearly{n}|0 0 1 1 *|kv-count y"));
        assert_eq!(reply, "added");
    }
    assert_eq!(
        client.request("sched-add one-more|0 0 1 1 *|kv-count y"),
        "error: a plugin has at most 16 schedules: remove one first"
    );
    assert_eq!(client.request("sched-del yearly1"), "true");
    let tock = "tock|* * * * * *|kv-count tocks";
    assert_eq!(client.request(&format!("sched-add {tock}")), "added");

    // Killed and started again: the schedules run on, from the store.
    let before = count(&server, "ticks");
    let server = server.kill_and_restart();
    assert!(server.log.wait_for_count(RAN, 2));
    assert!(count(&server, "ticks") > before);
    let mut client = server.connect();
    assert_eq!(client.request("sched-list").lines().count(), 16);

    // Removed: `tick` stops while `tock` runs on.
    assert_eq!(client.request("sched-del tick"), "true");
    assert_eq!(client.request("sched-del tick"), "false");
    assert!(server.log.wait_for("schedule stopped").is_some());
    let ran = server.log.count(RAN);
    assert!(server.log.wait_for_count(RAN, ran + 2));
    let ticks = count(&server, "ticks");
    let ran = server.log.count(RAN);
    assert!(server.log.wait_for_count(RAN, ran + 2));
    assert_eq!(count(&server, "ticks"), ticks, "tick ran after its removal");

    // The grant withdrawn by SIGHUP: each run is refused, and counted.
    let config = std::fs::read_to_string(&server.config_path).unwrap();
    let withdrawn = config.replace(r#"allow_commands = ["kv-count"]"#, "allow_commands = []");
    assert_ne!(config, withdrawn);
    std::fs::write(&server.config_path, withdrawn).unwrap();
    server.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(server.log.wait_for("config reloaded").is_some());
    let ran = server.log.count(RAN);
    assert!(server.log.wait_for_count(RAN, ran + 2));
    let tocks = count(&server, "tocks");
    let ran = server.log.count(RAN);
    assert!(server.log.wait_for_count(RAN, ran + 2));
    assert_eq!(count(&server, "tocks"), tocks, "ran without its grant");
    let denied = runs(port, "echo/*", "denied");
    assert!(denied.is_some_and(|runs| runs >= 2.0), "{denied:?}");
}

/// A run still going when the next is due skips it, counted: runs of one
/// schedule never overlap.
#[test]
fn a_run_that_outlasts_the_next_time_skips_it() {
    let port = free_port();
    let server = echo()
        .config(&format!("metrics_listen = \"127.0.0.1:{port}\""))
        .plugin_config("echo", "call_timeout_ms = 5000")
        .tables(&every_second("slow", "sleep 2500"))
        .start();
    assert!(server.log.wait_for_count(RAN, 2));
    let slow = |outcome| runs(port, "slow", outcome).unwrap_or_default();
    assert_eq!(slow("ok"), 2.0);
    // The first run of 2.5 s passed two of the schedule's seconds.
    assert!(slow("skipped") >= 2.0, "{}", slow("skipped"));
}
