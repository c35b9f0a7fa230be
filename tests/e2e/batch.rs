//! Pipelined commands for one plugin served in one call (`plugin/batch.rs`):
//! each command still gets exactly what it would have had alone: its reply,
//! in order, its own deadline and reply limit, its own count in the metrics
//! and in the plugin's health, and a trap or a timeout costs only the
//! command it happened in.
//!
//! Each test sends a `sleep`, then the pipelined commands in one write: they
//! are all buffered by the time the sleep is over, so they reach the plugin
//! in one batch (the sleep too, if the two writes arrive together; the
//! metrics say how many went batched).

use crate::observability::Scrape;
use crate::support::{Client, Server, Setup, Tmpfs, free_port};

/// The echo test plugin (built with the SDK, so it serves batches) and
/// onoff, with metrics on a port of the test's own.
fn server(config: &[&str]) -> (Server, u16) {
    let port = free_port();
    let mut setup = Setup::new()
        .plugin("testing_echo", "echo")
        .plugin("onoff", "onoff")
        .config("state_store = \"memory\"")
        .config(&format!("metrics_listen = \"127.0.0.1:{port}\""));
    for line in config {
        setup = setup.config(line);
    }
    (setup.start(), port)
}

/// Sends `messages` in one write behind a `sleep 100`, and returns their
/// replies (the sleep's checked).
fn pipelined(client: &mut Client, messages: &[&str]) -> Vec<String> {
    client.send(b"sleep 100<EOF>");
    let batch: String = messages.iter().map(|m| format!("{m}<EOF>")).collect();
    client.send(batch.as_bytes());
    assert_eq!(client.reply().unwrap(), "slept 100");
    messages.iter().map(|_| client.reply().unwrap()).collect()
}

fn batched(port: u16) -> f64 {
    Scrape::from(port)
        .value("plugboard_batched_commands_total", &[("plugin", "echo")])
        .unwrap_or(0.0)
}

#[test]
fn pipelined_commands_get_a_reply_each_in_order_from_one_batch() {
    let (server, port) = server(&[]);
    let mut client = server.connect();
    let replies = pipelined(
        &mut client,
        &[
            "echo a",
            "fail b",
            "kv-count n",
            "echo c",
            "on",
            "echo d",
            "help",
            "echo e",
        ],
    );
    assert_eq!(replies[..4], ["a", "error: b", "1", "c"]);
    assert_eq!(
        replies[4], "success",
        "another plugin's command ends the batch"
    );
    assert_eq!(replies[5], "d");
    assert!(replies[6].contains("echo (echo "), "{}", replies[6]);
    assert_eq!(replies[7], "e");
    assert!(batched(port) >= 4.0, "echo a .. echo c went as one batch");
    let scrape = Scrape::from(port);
    assert_eq!(scrape.commands("echo", "echo", "ok"), 4.0, "each counted");
    assert_eq!(scrape.commands("echo", "fail", "error"), 1.0);
}

/// A batch reaches the plugin as one buffer (`take-requests`): each
/// request, its words and its raw arguments arrive exactly as they would
/// one call each, whatever their text.
#[test]
fn a_batched_request_arrives_as_it_would_alone() {
    let (server, port) = server(&[]);
    let messages = [
        "args",
        "args one",
        "args  two   spaced\twords  ",
        "args héllo wörld ✓ 日本",
        "args {\"json\": [1, 2]}",
        "echo",
        "args a",
    ];
    let mut client = server.connect();
    let alone: Vec<String> = messages.iter().map(|m| client.request(m)).collect();
    assert_eq!(alone[2], "args/3:[two|spaced|words]/[two   spaced\twords]");
    let before = batched(port);
    assert_eq!(pipelined(&mut client, &messages), alone);
    assert!(
        batched(port) - before >= messages.len() as f64 - 1.0,
        "they went as one batch"
    );
}

#[test]
fn a_trap_mid_batch_costs_only_its_command() {
    let (server, port) = server(&[]);
    let mut client = server.connect();
    let replies = pipelined(
        &mut client,
        &["echo a", "kv-count n", "panic", "echo b", "kv-count n"],
    );
    assert_eq!(
        replies,
        ["a", "1", "error: plugin 'echo' failed", "b", "2"],
        "replies before the trap kept; the rest served by a fresh instance"
    );
    assert!(batched(port) >= 5.0);
    let scrape = Scrape::from(port);
    assert_eq!(scrape.commands("echo", "panic", "trap"), 1.0);
    assert_eq!(scrape.commands("echo", "echo", "ok"), 2.0);
    // The connection and its next commands are fine.
    assert_eq!(client.request("echo after"), "after");
}

/// Each command has the whole `call_timeout_ms` from when the plugin takes
/// it: three 200 ms commands in one batch pass a 300 ms limit, the fourth,
/// slower than the limit, times out alone.
#[test]
fn each_command_of_a_batch_has_its_own_deadline() {
    let (server, port) = server(&["call_timeout_ms = 300", "quarantine_after = 0"]);
    let mut client = server.connect();
    let replies = pipelined(
        &mut client,
        &[
            "sleep 200",
            "sleep 200",
            "sleep 200",
            "sleep 2000",
            "echo after",
        ],
    );
    assert_eq!(
        replies,
        [
            "slept 200",
            "slept 200",
            "slept 200",
            "error: plugin 'echo' timed out",
            "after"
        ]
    );
    assert!(batched(port) >= 5.0);
    assert_eq!(Scrape::from(port).commands("echo", "sleep", "timeout"), 1.0);
}

#[test]
fn the_reply_limit_holds_per_command_in_a_batch() {
    let (server, _port) = server(&["max_reply_bytes = 10"]);
    let mut client = server.connect();
    let replies = pipelined(&mut client, &["echo short", "echo far too long", "echo ok"]);
    assert_eq!(
        replies,
        [
            "short",
            "error: plugin 'echo' reply too large (12 bytes, limit 10)",
            "ok"
        ]
    );
}

/// Failures in a batch count towards quarantine one by one: the plugin is
/// disabled in the middle of the batch, and the commands after it say so.
#[test]
fn quarantine_counts_the_commands_of_a_batch() {
    let (server, _port) = server(&["quarantine_after = 2"]);
    let mut client = server.connect();
    let replies = pipelined(&mut client, &["panic", "panic", "echo x"]);
    assert_eq!(
        replies,
        [
            "error: plugin 'echo' failed",
            "error: plugin 'echo' failed",
            "error: plugin 'echo' disabled"
        ]
    );
}

/// Python's and JavaScript's plugins batch too (`plugins/python/stats`
/// serves batches itself, every JavaScript plugin through the entry module
/// `build.mjs` writes), with replies and error replies as one by one.
#[test]
fn python_and_javascript_plugins_serve_batches() {
    let port = free_port();
    let server = Setup::new()
        .plugin("testing_echo", "echo")
        .guest("stats", "stats")
        .guest("text", "text")
        .config(&format!("metrics_listen = \"127.0.0.1:{port}\""))
        .start();
    let mut client = server.connect();
    let replies = pipelined(
        &mut client,
        &[
            "stats 1 2",
            "stats x",
            "stats 4",
            "upper a b",
            "json-get a {bad",
            "json-get a {\"a\": 7}",
            "upper c",
        ],
    );
    assert_eq!(
        replies[..3],
        [
            "count=2 mean=1.5 median=1.5 min=1 max=2 stdev=0.707107",
            "error: not a number: 'x'",
            "count=1 mean=4 median=4 min=4 max=4 stdev=0",
        ]
    );
    assert_eq!(replies[3], "A B");
    assert!(
        replies[4].starts_with("error: invalid JSON"),
        "{}",
        replies[4]
    );
    assert_eq!(replies[5..], ["7", "C"]);
    let scrape = Scrape::from(port);
    let batched = |plugin| {
        scrape
            .value("plugboard_batched_commands_total", &[("plugin", plugin)])
            .unwrap_or(0.0)
    };
    assert_eq!(batched("stats"), 3.0, "the three stats went as one batch");
    assert_eq!(batched("text"), 4.0, "and the four of text");
}

/// A plugin that breaks the batch protocol (replies to nothing, asks twice
/// without replying, returns without serving, never replies) costs only its
/// own commands: each gets an error, as it would one by one, none is lost
/// or served twice, and another plugin's command behind them is answered.
/// One that serves a command per call however many it is given has every
/// command served, over as many calls.
#[test]
fn a_plugin_breaking_the_batch_protocol_fails_only_its_own_commands() {
    use crate::support::components::{Handle, ServeBatch, batched_component};
    let failed = "error: plugin 'rude' failed";
    let timed_out = "error: plugin 'rude' timed out";
    for (serve, expected) in [
        (ServeBatch::OneThenReturn, ["rude", "rude", "rude"]),
        (ServeBatch::ReplyFirst, [failed; 3]),
        (ServeBatch::AskTwice, [failed; 3]),
        (ServeBatch::ReturnAtOnce, [failed; 3]),
        (ServeBatch::TakeThenSpin, [timed_out; 3]),
        (ServeBatch::TakeAllTwice, [failed; 3]),
        (ServeBatch::TakeAllThenAsk, [failed; 3]),
        (ServeBatch::TakeAllThenReturn, [failed; 3]),
    ] {
        let port = free_port();
        // `handle` answers `handled`: a command served one by one would say so.
        let rude = batched_component(&["rude"], Handle::Reply("handled"), serve);
        let server = Setup::new()
            .plugin("testing_echo", "echo")
            .plugin("onoff", "onoff")
            .file("rude.wasm", &rude)
            .config("state_store = \"memory\"")
            .config("call_timeout_ms = 200")
            .config("quarantine_after = 0")
            .config(&format!("metrics_listen = \"127.0.0.1:{port}\""))
            .start();
        let mut client = server.connect();
        let replies = pipelined(&mut client, &["rude a", "rude b", "rude c", "on"]);
        assert_eq!(replies[..3], expected, "{serve:?}");
        assert_eq!(replies[3], "success", "{serve:?}");
        let batched = Scrape::from(port)
            .value("plugboard_batched_commands_total", &[("plugin", "rude")])
            .unwrap_or(0.0);
        assert_eq!(batched, 3.0, "{serve:?}: the three went as one batch");
        assert_eq!(client.request("on"), "success", "{serve:?}");
    }
}

/// A plugin without `serve-batch` gets a client's pipelined commands one
/// call each, in order, none of them batched.
#[test]
fn a_plugin_that_does_not_batch_serves_pipelined_commands_one_by_one() {
    use crate::support::components::{Handle, component};
    let port = free_port();
    let plain = component(&["plain"], Handle::Reply("plain"));
    let server = Setup::new()
        .plugin("testing_echo", "echo")
        .plugin("onoff", "onoff")
        .file("plain.wasm", &plain)
        .config("state_store = \"memory\"")
        .config(&format!("metrics_listen = \"127.0.0.1:{port}\""))
        .start();
    let mut client = server.connect();
    let replies = pipelined(&mut client, &["plain", "plain", "on", "plain"]);
    assert_eq!(replies, ["plain", "plain", "success", "plain"]);
    let scrape = Scrape::from(port);
    let batched = scrape.value("plugboard_batched_commands_total", &[("plugin", "plain")]);
    assert_eq!(batched.unwrap_or(0.0), 0.0, "none went as a batch");
    assert_eq!(scrape.commands("plain", "plain", "ok"), 3.0, "each counted");
}

/// On the disk store a batch's writes share commits: each is answered to
/// the plugin once applied, the batch's later commands read it back (get,
/// list, increment), and no reply leaves before the writes are durable, so
/// everything answered survives a kill -9.
#[test]
fn a_batch_reads_its_own_writes_and_what_it_answered_survives_a_kill() {
    let server = Setup::new().plugin("testing_echo", "echo").start();
    let mut client = server.connect();
    let replies = pipelined(
        &mut client,
        &[
            "kv-set a 1",
            "kv-get a",
            "kv-count n",
            "kv-count n",
            "kv-get n",
            "kv-set b 2",
            "kv-list",
            "kv-del a",
            "kv-get a",
            "kv-list",
            "kv-count n",
        ],
    );
    let expected = [
        "stored", "1", "1", "2", "2", "stored", "a b n", "deleted", "(none)", "b n", "3",
    ];
    assert_eq!(replies, expected);
    let server = server.kill_and_restart();
    let mut client = server.connect();
    assert_eq!(client.request("kv-get n"), "3");
    assert_eq!(client.request("kv-get a"), "(none)");
    assert_eq!(client.request("kv-get b"), "2");
}

/// Writes answered ahead of their commit whose commit then fails (the disk
/// filled up under the server): their commands are answered `state
/// unavailable`, never with what the plugin replied when it believed them
/// written, so whatever was answered `stored` is there after a kill -9.
/// (`state unavailable` says the outcome is not known, as for a write that
/// waited for its commit.)
#[test]
#[ignore = "needs root: mounts a tmpfs (`make test` as root runs it)"]
fn a_batch_whose_writes_never_became_durable_is_answered_state_unavailable() {
    let (disk, server, mut client) = echo_on_a_small_disk();
    let filler = disk.write_file("operator-file", 64);
    let fills: Vec<String> = (0..12).map(|n| format!("kv-fill k{n} 60000")).collect();
    let fills: Vec<&str> = fills.iter().map(String::as_str).collect();
    let replies = pipelined(&mut client, &fills);
    let refused = replies
        .iter()
        .filter(|reply| *reply == "error: state unavailable")
        .count();
    assert!(refused > 0, "the disk was never full: {replies:?}");
    std::fs::remove_file(filler).unwrap();
    drop(client);
    let server = server.kill_and_restart();
    let mut client = server.connect();
    for (n, reply) in replies.iter().enumerate() {
        let read = client.request(&format!("kv-get k{n}")).len();
        if reply == "stored" {
            assert_eq!(read, 60000, "k{n} was answered stored");
        }
    }
    assert_eq!(client.request("kv-get a"), "1");
}

/// A command that fails after a write of its batch was answered ahead and
/// then lost gets `state unavailable` too: its own error (a trap's text may
/// show what it read) is not what it rests on.
#[test]
#[ignore = "needs root: mounts a tmpfs (`make test` as root runs it)"]
fn a_command_failing_after_a_lost_write_is_answered_state_unavailable() {
    let (disk, _server, mut client) = echo_on_a_small_disk();
    let _filler = disk.write_file("operator-file", 64);
    let replies = pipelined(&mut client, &["kv-fill k 60000", "panic"]);
    assert_eq!(
        replies,
        ["error: state unavailable", "error: state unavailable"]
    );
}

/// The echo plugin with its state on a 4 MiB file system, one key stored.
fn echo_on_a_small_disk() -> (Tmpfs, Server, Client) {
    let disk = Tmpfs::mount(4);
    let server = Setup::new()
        .plugin("testing_echo", "echo")
        .state_on(&disk)
        .start();
    let mut client = server.connect();
    assert_eq!(client.request("kv-set a 1"), "stored");
    (disk, server, client)
}
