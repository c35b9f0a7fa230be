//! Several hosts as one service: plugin state in a real `redis-server`,
//! traffic through a real HAProxy set up by the repo's `deploy/haproxy.cfg`,
//! plugins rolled out host by host, a host killed, Redis killed and back.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::services::{Backend, Haproxy, Redis};
use crate::support::{Client, Server, Setup, TIMEOUT, built_plugin, free_port};

/// A host of the service: onoff and echo, state in `redis`, `/healthz` on
/// a port of its own (what HAProxy checks).
struct Host {
    server: Server,
    health_port: u16,
}

impl Host {
    fn start(redis: &Redis) -> Self {
        let health_port = free_port();
        let server = Setup::new()
            .plugin("onoff", "onoff")
            .plugin("testing_echo", "echo")
            .config("state_store = \"redis\"")
            .config(&format!("redis_url = {:?}", redis.url()))
            .config(&format!("metrics_listen = \"127.0.0.1:{health_port}\""))
            .start();
        Self {
            server,
            health_port,
        }
    }

    fn backend(&self, name: &'static str) -> Backend {
        Backend {
            name,
            port: self.server.addr.port(),
            health_port: self.health_port,
        }
    }
}

#[test]
fn hosts_sharing_a_redis_are_one_service() {
    let redis = Redis::start();
    let a = Host::start(&redis).server;
    let b = Host::start(&redis).server;
    assert_eq!(a.connect().request("off"), "success");
    assert_eq!(b.connect().request("status"), "off");
    assert_eq!(b.connect().request("on"), "success");
    assert_eq!(a.connect().request("status"), "on");

    // Increments from both hosts at once: each counted exactly once.
    let counters: Vec<_> = [a.addr, b.addr, a.addr, b.addr]
        .into_iter()
        .map(|addr| {
            thread::spawn(move || {
                let mut client = Client::connect(addr);
                for _ in 0..25 {
                    client.request("kv-count hits");
                }
            })
        })
        .collect();
    for counter in counters {
        counter.join().unwrap();
    }
    assert_eq!(a.connect().request("kv-count hits"), "101");
    assert_eq!(b.connect().request("kv-get hits"), "101");
    // Each plugin's keys are its own, in Redis too.
    assert_eq!(b.connect().request("kv-get state"), "(none)");
}

#[test]
fn redis_down_fails_only_state_commands_briefly_and_heals_by_itself() {
    let mut redis = Redis::start();
    let server = Host::start(&redis).server;
    let mut client = server.connect();
    assert_eq!(
        client.request("on"),
        "success",
        "acknowledged before Redis dies"
    );

    redis.kill();
    let asked = Instant::now();
    assert_eq!(client.request("status"), "error: state unavailable");
    let waited = asked.elapsed();
    // The bound: a second or two (redis_timeout_ms is 1 s).
    assert!(waited < Duration::from_secs(3), "waited {waited:?}");
    assert_eq!(client.request("echo no state needed"), "no state needed");
    assert_eq!(server.connect().request("off"), "error: state unavailable");

    redis.restart();
    // The host notices by itself (it asks a Redis that is down whether it
    // is back): the first state command after that is served.
    assert!(server.log.wait_for("Redis answers again").is_some());
    assert_eq!(
        client.request("status"),
        "on",
        "the acknowledged write survived Redis's kill -9"
    );
    assert_eq!(client.request("off"), "success");
    assert_eq!(server.connect().request("status"), "off");
}

/// Copies the new plugin to host A, then to host B, while clients keep
/// sending through HAProxy: every command gets a real reply.
#[test]
fn a_rolling_plugin_update_through_haproxy_fails_no_command() {
    let redis = Redis::start();
    let a = Host::start(&redis);
    let b = Host::start(&redis);
    let haproxy = Haproxy::start(&[a.backend("a"), b.backend("b")]);
    let load = Load::start(haproxy.addr(), 8);
    load.wait_for_replies(200);

    let rival = std::fs::read(built_plugin("testing_rival")).unwrap();
    for host in [&a, &b] {
        std::fs::write(host.server.plugin_dir.join("onoff.wasm"), &rival).unwrap();
        assert!(host.server.log.wait_for_count("plugin set updated", 1));
        assert_eq!(host.server.connect().request("on"), "rival on");
        load.wait_for_replies(200);
    }

    let report = load.stop();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(
        report.replies.contains_key("success"),
        "{:?}",
        report.replies
    );
    assert!(
        report.replies.contains_key("rival on"),
        "{:?}",
        report.replies
    );
}

/// The shipped deployment's shape (two hosts on one Redis behind HAProxy),
/// 16 clients sending `on`, and onoff replaced by a new build of itself on
/// host A, then host B, three times over: no command fails, not even with
/// `state unavailable`.
#[test]
fn rolling_updates_of_a_stateful_plugin_fail_no_command() {
    let redis = Redis::start();
    let a = Host::start(&redis);
    let b = Host::start(&redis);
    let haproxy = Haproxy::start(&[a.backend("a"), b.backend("b")]);
    let load = Load::start(haproxy.addr(), 16);
    load.wait_for_replies(200);

    let onoff = std::fs::read(built_plugin("onoff")).unwrap();
    for round in 1..=3 {
        let build = with_custom_section(&onoff, &format!("build {round}"));
        for host in [&a, &b] {
            std::fs::write(host.server.plugin_dir.join("onoff.wasm"), &build).unwrap();
            assert!(host.server.log.wait_for_count("plugin set updated", round));
            load.wait_for_replies(200);
        }
    }

    let report = load.stop();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
}

/// `component` with a custom section added: the same plugin, other bytes
/// (as a rebuild makes).
fn with_custom_section(component: &[u8], text: &str) -> Vec<u8> {
    let name = b"plugboard-test";
    let mut body = vec![name.len() as u8];
    body.extend_from_slice(name);
    body.extend_from_slice(text.as_bytes());
    assert!(body.len() < 128, "one LEB128 byte");
    let mut bytes = component.to_vec();
    bytes.push(0);
    bytes.push(body.len() as u8);
    bytes.extend_from_slice(&body);
    bytes
}

/// A host dies under load: its clients lose their connections, but every
/// new connection through the balancer is served by the other host.
#[test]
fn a_host_killed_under_load_leaves_new_connections_to_the_other() {
    let redis = Redis::start();
    let mut a = Host::start(&redis);
    let b = Host::start(&redis);
    let haproxy = Haproxy::start(&[a.backend("a"), b.backend("b")]);
    let load = Load::start(haproxy.addr(), 8);
    load.wait_for_replies(200);

    a.server.signal(Signal::SIGKILL);
    // Gone: connections the kernel took for it in its last instant die
    // with it; every one from now on finds its port closed.
    a.server.wait_exit();
    // Before HAProxy's checks mark it down, and after.
    for _ in 0..20 {
        assert_eq!(Client::connect(haproxy.addr()).request("on"), "success");
    }
    haproxy.wait_for_status("a", "DOWN");
    load.wait_for_replies(200);
    for _ in 0..20 {
        assert_eq!(Client::connect(haproxy.addr()).request("status"), "on");
    }
    let report = load.stop();
    assert!(
        report
            .failures
            .iter()
            .all(|failure| failure.contains("connection")),
        "only connections to the killed host may fail: {:?}",
        report.failures
    );
}

/// Retries `attempt` until it yields, for at most [`TIMEOUT`].
fn eventually<T>(mut attempt: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(value) = attempt() {
            return value;
        }
        assert!(Instant::now() < deadline, "never happened");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Clients sending `on` through an address without pause, each opening a
/// new connection every 20 commands (so the balancer keeps choosing), and
/// keeping count of every reply and every failure.
struct Load {
    stop: Arc<AtomicBool>,
    replied: Arc<AtomicUsize>,
    report: Arc<Mutex<Report>>,
    clients: Vec<JoinHandle<()>>,
}

#[derive(Default, Debug)]
struct Report {
    replies: std::collections::BTreeMap<String, usize>,
    failures: Vec<String>,
}

const COMMANDS_PER_CONNECTION: usize = 20;

impl Load {
    fn start(addr: SocketAddr, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let replied = Arc::new(AtomicUsize::new(0));
        let report = Arc::new(Mutex::new(Report::default()));
        let clients = (0..clients)
            .map(|_| {
                let (stop, replied, report) = (stop.clone(), replied.clone(), report.clone());
                thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let outcome = one_connection(addr, &stop, &replied, &report);
                        if let Err(failure) = outcome {
                            report.lock().unwrap().failures.push(failure);
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            replied,
            report,
            clients,
        }
    }

    /// Waits until `more` replies have arrived since the call.
    fn wait_for_replies(&self, more: usize) {
        let target = self.replied.load(Ordering::Relaxed) + more;
        eventually(|| (self.replied.load(Ordering::Relaxed) >= target).then_some(()));
    }

    fn stop(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            client.join().expect("load client");
        }
        std::mem::take(&mut self.report.lock().unwrap())
    }
}

/// One connection's commands; `Err` says what went wrong.
fn one_connection(
    addr: SocketAddr,
    stop: &AtomicBool,
    replied: &AtomicUsize,
    report: &Mutex<Report>,
) -> Result<(), String> {
    let mut stream =
        TcpStream::connect(addr).map_err(|err| format!("connection refused: {err}"))?;
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    for _ in 0..COMMANDS_PER_CONNECTION {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        stream
            .write_all(b"on<EOF>")
            .map_err(|err| format!("connection broken sending: {err}"))?;
        let reply = read_reply(&mut stream)?;
        if reply != "success" && reply != "rival on" {
            report.lock().unwrap().failures.push(reply.clone());
        }
        *report.lock().unwrap().replies.entry(reply).or_default() += 1;
        replied.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

fn read_reply(stream: &mut TcpStream) -> Result<String, String> {
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"<EOF>") {
        match stream.read(&mut byte) {
            Ok(1) => reply.push(byte[0]),
            Ok(_) => return Err("connection closed before the reply".into()),
            Err(err) => return Err(format!("connection broken reading: {err}")),
        }
    }
    reply.truncate(reply.len() - 5);
    String::from_utf8(reply).map_err(|_| "reply not UTF-8".into())
}
