//! What operators see: Prometheus metrics scraped over real HTTP, JSON logs,
//! and per-command debug spans.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::support::{Server, Setup, TIMEOUT, free_port};

fn with_metrics() -> (Setup, u16) {
    let port = free_port();
    let setup = Setup::new()
        .plugin("onoff", "onoff")
        .plugin("testing_echo", "echo")
        .config("quarantine_after = 0")
        .config(&format!("metrics_listen = \"127.0.0.1:{port}\""));
    (setup, port)
}

/// `GET path` from the operator's endpoint over a real HTTP/1.1
/// connection: the status code and the body.
pub(crate) fn get(port: u16, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect metrics");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok());
    (status.expect("a status code"), body.to_owned())
}

/// `/healthz` says `starting` while the first load compiles (a cold Python
/// plugin: seconds), `ready` once the plugins serve, `stopping` once
/// shutdown begins, so a balancer sends clients only to a host that serves.
#[test]
fn healthz_is_ready_only_while_plugins_serve() {
    let port = free_port();
    let cold_cache = tempfile::tempdir().unwrap();
    let mut server = Setup::new()
        .guest("stats", "stats")
        .plugin("testing_hostile", "hostile")
        .config(&format!("metrics_listen = \"127.0.0.1:{port}\""))
        .config(&format!("cache_dir = {:?}", cold_cache.path()))
        .config("shutdown_timeout_ms = 20000")
        .plugin_config("hostile", "call_timeout_ms = 10000")
        .start_loading();
    assert!(
        server
            .log
            .wait_for("loading plugins before serving")
            .is_some()
    );
    assert_eq!(
        get(port, "/healthz"),
        (503, "starting: plugins loading\n".into())
    );
    let listening = server
        .log
        .wait_for_within("listening on ", crate::support::COMPILE_TIMEOUT);
    assert!(listening.is_some(), "{}", server.log.text());
    assert_eq!(get(port, "/healthz"), (200, "ready\n".into()));
    assert_eq!(get(port, "/elsewhere").0, 404);
    let addr = listening.unwrap();
    let addr = addr
        .split("listening on ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let mut busy = crate::support::Client::connect(addr.parse().unwrap());
    busy.send(b"spin 1500<EOF>");
    assert!(server.log.wait_for("spin: started").is_some());
    server.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(
        server
            .log
            .wait_for("finishing in-flight commands")
            .is_some()
    );
    assert_eq!(get(port, "/healthz"), (503, "stopping\n".into()));
    assert_eq!(busy.reply().unwrap(), "spun 1500");
    assert!(server.wait_exit().success());
}

/// The scraped exposition text.
pub(crate) struct Scrape(String);

impl Scrape {
    /// `GET /metrics` over a real HTTP/1.1 connection.
    pub(crate) fn from(port: u16) -> Self {
        let (status, body) = get(port, "/metrics");
        assert_eq!(status, 200, "{body}");
        Self(body)
    }

    /// The value of the series `name` whose labels include every one of `labels`.
    pub(crate) fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0.lines().find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels),
                None => (series, ""),
            };
            let matches = series_name == name
                && labels
                    .iter()
                    .all(|(key, value)| series_labels.contains(&format!("{key}=\"{value}\"")));
            matches.then(|| value.parse().expect("a number"))
        })
    }

    fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{}", self.0))
    }

    pub(crate) fn commands(&self, plugin: &str, command: &str, outcome: &str) -> f64 {
        let labels = [
            ("plugin", plugin),
            ("command", command),
            ("outcome", outcome),
        ];
        self.count("plugboard_commands_total", &labels)
    }
}

#[test]
fn metrics_count_commands_by_plugin_command_and_outcome() {
    let (setup, port) = with_metrics();
    let server = setup.start();
    let before = Scrape::from(port);
    assert_eq!(before.commands("onoff", "on", "ok"), 0.0);
    assert_eq!(before.commands("echo", "fail", "error"), 0.0);
    // Only outcomes that happened, or may (ok, error), have a series: a
    // routed command is never `unknown`, and nothing has trapped yet.
    let series = |plugin, command, outcome| {
        let labels = [
            ("plugin", plugin),
            ("command", command),
            ("outcome", outcome),
        ];
        before.value("plugboard_commands_total", &labels)
    };
    assert_eq!(series("onoff", "on", "unknown"), None);
    assert_eq!(series("echo", "panic", "trap"), None);

    let mut client = server.connect();
    for _ in 0..3 {
        assert_eq!(client.request("on"), "success");
    }
    assert_eq!(client.request("fail no"), "error: no");
    assert_eq!(client.request("panic"), "error: plugin 'echo' failed");
    assert_eq!(client.request("nope"), "error: unknown command 'nope'");

    let after = Scrape::from(port);
    assert_eq!(after.commands("onoff", "on", "ok"), 3.0);
    assert_eq!(after.commands("echo", "fail", "error"), 1.0);
    assert_eq!(after.commands("echo", "panic", "trap"), 1.0);
    assert_eq!(after.commands("", "", "unknown"), 1.0);
    let latency = [("plugin", "onoff")];
    assert_eq!(
        after.count("plugboard_command_duration_seconds_count", &latency),
        3.0
    );
    assert!(after.count("plugboard_command_duration_seconds_sum", &latency) > 0.0);
}

#[test]
fn metrics_follow_connections_and_timeouts() {
    let (setup, port) = with_metrics();
    let server = setup.config("call_timeout_ms = 200").start();
    let mut client = server.connect();
    assert_eq!(client.request("on"), "success");

    let scrape = Scrape::from(port);
    assert_eq!(scrape.count("plugboard_connections_open", &[]), 1.0);
    assert_eq!(
        scrape.count("plugboard_connections_accepted_total", &[]),
        1.0
    );

    assert_eq!(
        client.request("sleep 5000"),
        "error: plugin 'echo' timed out"
    );
    drop(client);
    let mut second = server.connect();
    assert_eq!(second.request("echo hi"), "hi");
    let scrape = Scrape::from(port);
    assert_eq!(scrape.commands("echo", "sleep", "timeout"), 1.0);
    let mut oversized = server.connect();
    oversized.send(&vec![b'x'; 70 * 1024]);
    assert!(
        oversized
            .reply()
            .unwrap()
            .starts_with("error: frame too large")
    );
    eventually(port, "the oversized frame counted", |scrape| {
        scrape.value(
            "plugboard_connections_closed_total",
            &[("reason", "frame_too_large")],
        ) == Some(1.0)
    });
    assert_eq!(
        scrape.count("plugboard_connections_accepted_total", &[]),
        2.0
    );
    // The server sees the first client's close on its own time.
    eventually(port, "the closed connection uncounted", |scrape| {
        scrape.count("plugboard_connections_open", &[]) == 1.0
    });
}

#[test]
fn metrics_count_reloads_and_quarantines() {
    let (setup, port) = with_metrics();
    let server = setup.config("quarantine_after = 2").start();
    let loaded = [("outcome", "ok")];
    assert_eq!(
        Scrape::from(port).count("plugboard_reloads_total", &loaded),
        2.0
    );

    std::fs::write(server.plugin_dir.join("broken.wasm"), b"not wasm").unwrap();
    assert!(server.log.wait_for("rejected plugin file").is_some());
    let failed = [("outcome", "failed")];
    assert_eq!(
        Scrape::from(port).count("plugboard_reloads_total", &failed),
        1.0
    );

    let mut client = server.connect();
    for _ in 0..2 {
        assert_eq!(client.request("panic"), "error: plugin 'echo' failed");
    }
    assert_eq!(client.request("echo x"), "error: plugin 'echo' disabled");
    let scrape = Scrape::from(port);
    assert_eq!(
        scrape.count("plugboard_quarantines_total", &[("plugin", "echo")]),
        1.0
    );
    assert_eq!(scrape.commands("echo", "echo", "disabled"), 1.0);
}

#[test]
fn an_unusable_metrics_address_stops_startup_with_a_clear_error() {
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = taken.local_addr().unwrap().port();
    let output = crate::support::plugboard()
        .args(["serve", "--config"])
        .arg(
            Setup::new()
                .config(&format!("metrics_listen = \"127.0.0.1:{port}\""))
                .config_path(),
        )
        .output()
        .expect("run plugboard");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot serve metrics"), "{stderr}");
}

/// Polls the metrics until `holds` is true of them; fails after [`TIMEOUT`].
/// For what the server does on its own time (closing, releasing).
fn eventually(port: u16, what: &str, holds: impl Fn(&Scrape) -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !holds(&Scrape::from(port)) {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn plugin_memory_is_counted_while_an_instance_lives() {
    let (setup, port) = with_metrics();
    let server = setup.start();
    let memory =
        |scrape: &Scrape| scrape.value("plugboard_plugin_memory_bytes", &[("plugin", "echo")]);
    assert_eq!(memory(&Scrape::from(port)).unwrap_or(0.0), 0.0);
    let mut client = server.connect();
    client.send(b"sleep 500<EOF>");
    eventually(port, "memory counted during the call", |scrape| {
        memory(scrape).is_some_and(|bytes| bytes > 0.0)
    });
    assert_eq!(client.reply().unwrap(), "slept 500");
    drop(client);
    eventually(port, "memory returned with the instance", |scrape| {
        memory(scrape) == Some(0.0)
    });
}

/// Lines below the log level spend none of a plugin's log rate: 400 DEBUG
/// lines at the default INFO, over a rate of 10 a second, are not counted
/// as suppressed, and INFO lines right after them are written.
#[test]
fn lines_below_the_log_level_spend_no_log_rate() {
    let port = free_port();
    let server = Setup::new()
        .plugin("testing_hostile", "hostile")
        .plugin_config("hostile", "max_log_lines_per_sec = 10")
        .config(&format!("metrics_listen = \"127.0.0.1:{port}\""))
        .start();
    let mut client = server.connect();
    for _ in 0..4 {
        assert_eq!(client.request("log-flood 100 10 debug"), "wrote 100 lines");
    }
    let suppressed = Scrape::from(port)
        .value(
            "plugboard_log_lines_suppressed_total",
            &[("source", "hostile")],
        )
        .unwrap_or(0.0);
    assert_eq!(suppressed, 0.0);
    assert_eq!(client.request("log-flood 5 10"), "wrote 5 lines");
    assert!(server.log.wait_for_count("yyyyyyyyyy", 5));
}

fn json_lines(server: &Server) -> Vec<serde_json::Value> {
    server
        .log
        .text()
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"))
        })
        .collect()
}

#[test]
fn json_logs_are_one_object_per_line() {
    let server = Setup::new()
        .plugin("onoff", "onoff")
        .config("log_format = \"json\"")
        .start();
    assert_eq!(server.connect().request("on"), "success");
    let lines = json_lines(&server);
    let listening = lines
        .iter()
        .find(|line| {
            line["fields"]["message"]
                .as_str()
                .is_some_and(|message| message.starts_with("listening on "))
        })
        .expect("a listening event");
    assert_eq!(listening["level"], "INFO");
}

#[test]
fn debug_logs_trace_each_command_with_plugin_outcome_and_duration() {
    let server = Setup::new()
        .plugin("onoff", "onoff")
        .config("log_format = \"json\"")
        .log_filter("plugboard=debug")
        .start();
    assert_eq!(server.connect().request("on"), "success");
    assert!(server.log.wait_for("\"outcome\":\"ok\"").is_some());
    let command = json_lines(&server)
        .into_iter()
        .find(|line| line["fields"]["outcome"] == "ok")
        .expect("a command event");
    assert_eq!(command["span"]["name"], "command");
    assert_eq!(command["span"]["plugin"], "onoff");
    assert_eq!(command["span"]["command"], "on");
    assert!(command["fields"]["elapsed_us"].is_u64(), "{command}");
    assert_eq!(command["span"]["outcome"], "ok", "recorded on the span too");
}

/// A panic's log line starts with what the plugin said as it died, for its
/// author; the wasm backtrace only at DEBUG; the client gets no details.
#[test]
fn a_trap_is_logged_with_the_plugins_own_message_first() {
    for (filter, backtrace) in [(None, false), (Some("plugboard=debug"), true)] {
        let mut setup = Setup::new().plugin("testing_echo", "echo");
        if let Some(filter) = filter {
            setup = setup.log_filter(filter);
        }
        let server = setup.start();
        let mut client = server.connect();
        assert_eq!(client.request("panic"), "error: plugin 'echo' failed");
        let line = server.log.wait_for("plugin call failed").unwrap();
        let message = line.split("plugin call failed: trapped: ").nth(1).unwrap();
        assert!(message.contains("panicked at"), "{line}");
        assert!(
            message.contains("deliberate panic for a test (wasm trap:"),
            "{line}"
        );
        assert!(
            !message.contains("RUST_BACKTRACE") && !message.contains("0x"),
            "{line}"
        );
        assert_eq!(client.request("echo still here"), "still here");
        // A second trap's line comes after any detail of the first.
        assert_eq!(client.request("panic"), "error: plugin 'echo' failed");
        assert!(server.log.wait_for_count("plugin call failed", 2));
        let text = server.log.text();
        let detail = text.lines().find(|line| line.contains("trap in detail"));
        assert_eq!(
            detail.is_some_and(|line| line.contains("wasm backtrace")),
            backtrace,
            "{text}"
        );
    }
}

/// A capability used without a grant is counted per plugin and kind.
#[test]
fn denied_capabilities_are_counted() {
    let (setup, port) = with_metrics();
    let server = setup.plugin("testing_hostile", "hostile").start();
    let mut client = server.connect();
    for _ in 0..3 {
        let reply = client.request(&format!("connect {}", server.addr));
        assert!(reply.starts_with("error: denied:"), "{reply}");
    }
    let reply = client.request("connect broker.invalid:1883");
    assert!(reply.starts_with("error: denied:"), "{reply}");
    let scrape = Scrape::from(port);
    for (kind, count) in [("tcp", 3.0), ("lookup", 1.0)] {
        let labels = [("plugin", "hostile"), ("kind", kind)];
        assert_eq!(
            scrape.count("plugboard_capability_denied_total", &labels),
            count,
            "{kind}"
        );
    }
}

/// Every metric the shipped Grafana dashboard queries exists once a server
/// has seen some load: commands, a failure and a quarantine, a refused and
/// an idle-closed connection.
#[test]
fn every_metric_the_grafana_dashboard_queries_exists() {
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../deploy/grafana-dashboard.json"))
            .expect("the dashboard is JSON");
    let queried = queried_metrics(&dashboard);
    assert!(queried.len() >= 8, "{queried:?}");

    let (setup, port) = with_metrics();
    let server = setup
        .config("quarantine_after = 1")
        .config("max_connections = 2")
        .config("max_connections_per_ip = 2")
        .config("idle_timeout_ms = 200")
        .start();
    let mut client = server.connect();
    assert_eq!(client.request("on"), "success");
    assert_eq!(client.request("panic"), "error: plugin 'echo' failed");
    let mut idle = server.connect();
    assert_eq!(
        server.connect().request("on"),
        "error: too many connections"
    );
    assert!(
        idle.reply()
            .unwrap()
            .starts_with("error: no complete message")
    );
    let scrape = Scrape::from(port);
    for metric in &queried {
        assert!(
            scrape
                .0
                .lines()
                .any(|line| line.starts_with(metric.as_str())),
            "the dashboard queries {metric}, which /metrics does not have:\n{}",
            scrape.0
        );
    }
}

/// The `plugboard_*` metric names in the dashboard's queries.
fn queried_metrics(dashboard: &serde_json::Value) -> std::collections::BTreeSet<String> {
    let panels = dashboard["panels"].as_array().expect("panels");
    let exprs = panels
        .iter()
        .flat_map(|panel| panel["targets"].as_array().into_iter().flatten())
        .filter_map(|target| target["expr"].as_str());
    let mut names = std::collections::BTreeSet::new();
    for expr in exprs {
        for (at, _) in expr.match_indices("plugboard_") {
            let name: String = expr[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            names.insert(name);
        }
    }
    names
}

/// A server for the status page: onoff and echo, a token (whose hash must
/// never show), a plugin config value marked as a secret would be.
fn with_status() -> (Server, u16, String) {
    let (setup, port) = with_metrics();
    let token_hash = "9".repeat(64);
    let server = setup
        .plugin_config("onoff", "config = { device = \"secret-api-key-123\" }")
        .tables(&format!(
            "[[auth.tokens]]\nname = \"panel\"\nsha256 = \"{token_hash}\"\ncommands = [\"*\"]\n"
        ))
        .config("protected_mode = false")
        .start();
    (server, port, token_hash)
}

/// `/status.json`: the plugins serving, their commands and version (the
/// file's SHA-256), what they answered, and the events of a hot reload and
/// a rejected file; never a token's hash or a plugin's config value.
#[test]
fn status_json_shows_plugins_commands_and_events_and_no_secret() {
    let (server, port, token_hash) = with_status();
    let status = |port| -> serde_json::Value {
        let (code, body) = get(port, "/status.json");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("JSON")
    };
    let plugin = |status: &serde_json::Value, name: &str| -> serde_json::Value {
        let plugins = status["plugins"].as_array().expect("plugins").clone();
        plugins
            .into_iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {status}"))
    };
    let first = status(port);
    assert_eq!(first["state"], "ready");
    assert_eq!(first["listen"], server.addr.to_string());
    let onoff = plugin(&first, "onoff");
    assert_eq!(
        onoff["commands"],
        serde_json::json!(["on", "off", "status", "toggle"])
    );
    assert_eq!(onoff["file"], "onoff.wasm");
    let bytes = std::fs::read(server.plugin_dir.join("onoff.wasm")).unwrap();
    let digest = <sha2::Sha256 as sha2::Digest>::digest(&bytes);
    let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(onoff["version"], hex);

    server.install(
        "onoff.wasm",
        &crate::support::built_plugin_bytes("testing_rival"),
    );
    assert!(server.log.wait_for_count("plugin set updated", 1));
    std::fs::write(server.plugin_dir.join("broken.wasm"), b"not wasm").unwrap();
    assert!(server.log.wait_for("rejected plugin file").is_some());

    let deadline = Instant::now() + TIMEOUT;
    let latest = loop {
        let latest = status(port);
        let kinds: Vec<&str> = latest["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["kind"].as_str())
            .collect();
        if kinds.contains(&"reloaded") && kinds.contains(&"rejected") {
            break latest;
        }
        assert!(Instant::now() < deadline, "no reload event: {latest}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let events = latest["events"].as_array().unwrap();
    assert_eq!(events[0]["kind"], "rejected", "newest first: {latest}");
    assert_eq!(events[0]["plugin"], "broken");
    let reloaded = events.iter().find(|e| e["kind"] == "reloaded").unwrap();
    assert_eq!(reloaded["plugin"], "onoff");
    assert_eq!(
        plugin(&latest, "onoff")["commands"],
        serde_json::json!(["on"])
    );

    for path in ["/", "/status.json"] {
        let (_, body) = get(port, path);
        assert!(!body.contains(&token_hash), "{path} shows a token's hash");
        assert!(
            !body.contains("secret-api-key-123"),
            "{path} shows a config value"
        );
    }
}

/// What a plugin answered, and what it keeps, is counted on the page within
/// seconds: rates and totals come from the metrics, read once a second, the
/// key-value usage from the store, every few seconds.
#[test]
fn status_counts_commands_and_failures_per_plugin() {
    let (setup, port) = with_metrics();
    let server = setup.start();
    let mut client = server.connect();
    for _ in 0..40 {
        assert_eq!(client.request("on"), "success");
    }
    assert_eq!(client.request("panic"), "error: plugin 'echo' failed");
    assert_eq!(client.request("kv-set greeting hello"), "stored");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (_, body) = get(port, "/status.json");
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        let find = |name: &str| {
            status["plugins"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .cloned()
                .unwrap()
        };
        let (onoff, echo) = (find("onoff"), find("echo"));
        if onoff["commands_total"] == 40 && echo["failures_total"] == 1 && echo["kv_keys"] == 1 {
            // The key's and the value's bytes.
            assert_eq!(echo["kv_bytes"], 13, "{echo}");
            assert_eq!(onoff["failures_total"], 0);
            assert!(
                onoff["p99_ms"].as_f64().is_some_and(|ms| ms > 0.0),
                "{onoff}"
            );
            assert_eq!(echo["failure_share"], 0.5, "{echo}");
            break;
        }
        assert!(Instant::now() < deadline, "never counted: {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The page as a person sees it: loaded in a real browser (headless
/// Chromium, Debian's `chromium`), its rendered DOM lists the plugins,
/// their commands and the event of a hot reload.
#[test]
fn the_status_page_renders_in_a_browser() {
    let Some(chromium) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|name| {
            std::process::Command::new(name)
                .arg("--version")
                .output()
                .is_ok_and(|output| output.status.success())
        })
    else {
        eprintln!(
            "SKIPPED the_status_page_renders_in_a_browser: no chromium on PATH \
             (`make services` installs Debian's)"
        );
        return;
    };
    let (setup, port) = with_metrics();
    let server = setup.start();
    server.install(
        "onoff.wasm",
        &crate::support::built_plugin_bytes("testing_rival"),
    );
    assert!(server.log.wait_for_count("plugin set updated", 1));
    let profile = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--virtual-time-budget=2000", "--dump-dom"])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&output.stdout);
    assert!(
        dom.contains("<h1>plugboard "),
        "no page:\n{dom}\n{}",
        stderr_of(&output)
    );
    let rows: Vec<&str> = dom.split("<tr class=\"plugin\">").skip(1).collect();
    assert!(
        rows.iter()
            .any(|row| row.contains("<b>echo</b>") && row.contains("echo fail")),
        "{dom}"
    );
    assert!(
        rows.iter()
            .any(|row| row.contains("<b>onoff</b>") && row.contains(">on<")),
        "{dom}"
    );
    let events: Vec<&str> = dom.split("<tr class=\"event\">").skip(1).collect();
    assert!(
        events
            .iter()
            .any(|e| e.contains(">reloaded<") && e.contains(">onoff<")),
        "{dom}"
    );
    assert!(dom.contains("<svg"), "no chart: {dom}");
}

fn stderr_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
