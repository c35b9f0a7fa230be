//! A server safe to put on a network: slow and idle clients, per-address
//! limits. Each test has a well-behaved client that must keep being served.

use std::time::{Duration, Instant};

use crate::support::{Client, Server, Setup};

fn onoff() -> Setup {
    Setup::new().plugin("onoff", "onoff")
}

fn assert_served(server: &Server) {
    assert_eq!(server.connect().request("on"), "success");
}

#[test]
fn an_idle_connection_is_closed_with_a_reason_and_an_active_one_is_not() {
    let server = onoff().config("idle_timeout_ms = 300").start();
    let mut idle = server.connect();
    let mut active = server.connect();
    let started = Instant::now();
    // Active: a command every 100 ms, for more than twice the idle limit.
    while started.elapsed() < Duration::from_millis(800) {
        assert_eq!(active.request("on"), "success");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        idle.reply().as_deref(),
        Some("error: no complete message for 300ms, closing")
    );
    idle.expect_closed();
    assert_eq!(active.request("on"), "success");
}

#[test]
fn a_message_that_stalls_is_closed_while_others_are_served() {
    let server = onoff()
        .config("frame_timeout_ms = 300")
        .config("idle_timeout_ms = 0")
        .start();
    let mut stalled = server.connect();
    stalled.send(b"on<E");
    let started = Instant::now();
    assert_served(&server);
    assert_eq!(
        stalled.reply().as_deref(),
        Some("error: message not completed within 300ms, closing")
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    stalled.expect_closed();
}

/// The frame timeout counts from a message's first byte, so a client that
/// waits long between messages (no idle timeout) is not closed for it.
#[test]
fn the_two_timeouts_are_independent() {
    let server = onoff()
        .config("frame_timeout_ms = 200")
        .config("idle_timeout_ms = 0")
        .start();
    let mut patient = server.connect();
    assert_eq!(patient.request("on"), "success");
    std::thread::sleep(Duration::from_millis(700));
    assert!(!patient.has_reply_ready(), "closed while idle");
    assert_eq!(patient.request("on"), "success");
}

/// With only `max_connections` changed, one address holding every
/// connection it can, idle or mid-message, leaves room for another: its
/// default share is half.
#[test]
fn one_address_cannot_lock_out_another() {
    let server = onoff().config("max_connections = 64").start();
    let mut held = Vec::new();
    loop {
        let mut client = Client::connect_from("127.0.0.1", server.addr);
        match client.request("on").as_str() {
            "success" => {
                if held.len() % 2 == 0 {
                    client.send(b"on<E");
                }
                held.push(client);
            }
            "error: too many connections from your address" => break,
            other => panic!("unexpected reply {other:?}"),
        }
        assert!(held.len() <= 64, "one address took every connection");
    }
    assert_eq!(held.len(), 32);
    let mut other = Client::connect_from("127.0.0.2", server.addr);
    assert_eq!(other.request("on"), "success");
}

/// Ordinary load: many connections from one loopback address, at the
/// default limits.
#[test]
fn many_connections_from_one_address_are_served_by_default() {
    let server = onoff().start();
    let mut clients: Vec<Client> = (0..100).map(|_| server.connect()).collect();
    for client in &mut clients {
        assert_eq!(client.request("on"), "success");
    }
}

/// A token made by `plugboard token`, as a user would: its first line is the
/// token, the rest the config entry for it.
pub(crate) fn new_token(commands: &[&str]) -> (String, String) {
    let mut command = crate::support::plugboard();
    command.args(["token", "--name", "panel"]);
    for allowed in commands {
        command.args(["--command", allowed]);
    }
    let output = command.output().expect("run plugboard token");
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    let (token, entry) = text.split_once('\n').unwrap();
    (token.to_owned(), entry.to_owned())
}

fn with_token(commands: &[&str]) -> (Server, String) {
    let (token, entry) = new_token(commands);
    (onoff().tables(&entry).start(), token)
}

#[test]
fn with_tokens_nothing_runs_before_auth() {
    let (server, _) = with_token(&["*"]);
    let mut client = server.connect();
    assert_eq!(
        client.request("on"),
        "error: authentication required: send `auth <token>` first"
    );
    client.expect_closed();
}

/// Before `auth`, a message that is not a request closes the connection
/// too: nothing keeps a connection open unauthenticated.
#[test]
fn before_auth_an_empty_or_non_utf8_message_closes_the_connection() {
    let (server, _) = with_token(&["*"]);
    for message in [&b"<EOF>"[..], b"\xff\xfe<EOF>"] {
        let mut client = server.connect();
        client.send(message);
        let reply = client.reply().unwrap_or_default();
        assert!(
            reply.ends_with("; authentication required: send `auth <token>` first"),
            "{reply}"
        );
        client.expect_closed();
    }
}

/// With tokens, an unauthenticated connection has a deadline of its own,
/// short next to the idle timeout; an authenticated one keeps the idle
/// timeout.
#[test]
fn a_connection_that_does_not_authenticate_in_time_is_closed() {
    let (token, entry) = new_token(&["*"]);
    let server = onoff()
        .tables(&format!("[auth]\ntimeout_ms = 300\n\n{entry}"))
        .start();
    let mut authenticated = server.connect();
    assert_eq!(authenticated.request(&format!("auth {token}")), "success");
    let mut silent = server.connect();
    let started = Instant::now();
    assert_eq!(
        silent.reply().as_deref(),
        Some("error: not authenticated within 300ms, closing")
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
    silent.expect_closed();
    assert!(!authenticated.has_reply_ready(), "closed while idle");
    assert_eq!(authenticated.request("on"), "success");
}

/// Silent sockets from two addresses fill `max_connections`; a client with
/// the token, from a third, still gets in: the unauthenticated hold at most
/// half the places, the newest displaces the oldest, and a newcomer with
/// every place taken displaces the oldest too. (No auth deadline here, so
/// that only the share can make room.)
#[test]
fn silent_connections_cannot_keep_a_token_holder_out() {
    let (token, entry) = new_token(&["*"]);
    let server = onoff()
        .config("max_connections = 8")
        .tables(&format!("[auth]\ntimeout_ms = 0\n\n{entry}"))
        .start();
    let mut silent: Vec<Client> = (0..8)
        .map(|n| Client::connect_from(["127.0.0.2", "127.0.0.3"][n % 2], server.addr))
        .collect();
    let mut holder = Client::connect_from("127.0.0.4", server.addr);
    assert_eq!(holder.request(&format!("auth {token}")), "success");
    assert_eq!(holder.request("on"), "success");
    // Accepted in order, so the five oldest were displaced.
    for (n, socket) in silent.iter_mut().enumerate() {
        if n < 5 {
            assert_eq!(
                socket.reply().as_deref(),
                Some(
                    "error: not authenticated, and newer connections waiting to authenticate need the place, closing"
                ),
                "socket {n}"
            );
            socket.expect_closed();
        } else {
            assert!(!socket.has_reply_ready(), "socket {n} was closed");
        }
    }
}

/// Silent sockets from two addresses reconnecting as fast as they are
/// closed, each displacing another, cannot keep a token holder from a
/// third address out either, even one slow to send `auth` (hundreds of
/// the flood's connections come and go meanwhile): a newcomer displaces
/// the oldest of an address holding more than its share, so the flood
/// displaces itself.
#[test]
fn a_reconnecting_flood_of_silent_sockets_cannot_keep_a_token_holder_out() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let (token, entry) = new_token(&["*"]);
    let server = onoff()
        .config("max_connections = 64")
        .tables(&format!("[auth]\n{entry}"))
        .start();
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let closed = Arc::new(AtomicUsize::new(0));
    let flood = {
        let (stop, closed) = (stop.clone(), closed.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let sockets: Vec<_> = (0..64)
                    .map(|n| {
                        let source = ["127.0.0.2", "127.0.0.3"][n % 2];
                        tokio::spawn(crate::support::flood::silent_socket(
                            addr,
                            source,
                            stop.clone(),
                            closed.clone(),
                        ))
                    })
                    .collect();
                for socket in sockets {
                    socket.await.unwrap();
                }
            });
        })
    };
    // The storm is on once the server has closed a thousand of them.
    while closed.load(Ordering::Relaxed) < 1000 {
        std::thread::yield_now();
    }
    for round in 0..5 {
        let mut holder = Client::connect_from("127.0.0.4", addr);
        let connected = closed.load(Ordering::Relaxed);
        while closed.load(Ordering::Relaxed) < connected + 200 {
            std::thread::yield_now();
        }
        let authenticated = holder.send_and_reply(&format!("auth {token}"));
        assert_eq!(authenticated.as_deref(), Some("success"), "round {round}");
        assert_eq!(holder.request("on"), "success", "round {round}");
    }
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
}

#[test]
fn a_wrong_token_is_refused_and_nothing_after_it_runs() {
    let (server, _) = with_token(&["*"]);
    let mut client = server.connect();
    client.send(b"auth not-the-token<EOF>on<EOF>");
    assert_eq!(client.reply().as_deref(), Some("error: invalid token"));
    client.expect_closed();
}

#[test]
fn a_token_runs_only_its_commands_and_help_lists_them() {
    let (server, token) = with_token(&["status", "help"]);
    let mut client = server.connect();
    assert_eq!(client.request(&format!("auth {token}")), "success");
    assert_eq!(client.request("status"), "off");
    assert_eq!(
        client.request("on"),
        "error: permission denied: token 'panel' may not run 'on'"
    );
    // The connection stays usable after a denial.
    assert_eq!(client.request("status"), "off");
    let help = client.request("help");
    assert!(help.starts_with("status (onoff "), "{help}");
    assert_eq!(help.lines().count(), 1, "{help}");
}

#[test]
fn an_every_command_token_runs_everything_and_is_never_logged() {
    let (server, token) = with_token(&[]);
    let mut client = server.connect();
    assert_eq!(client.request(&format!("auth {token}")), "success");
    assert_eq!(client.request("on"), "success");
    assert_eq!(client.request("status"), "on");
    let mut wrong = server.connect();
    assert_eq!(wrong.request("auth nope-nope"), "error: invalid token");
    assert!(!server.log.text().contains(&token));
    assert!(!server.log.text().contains("nope-nope"));
}

/// Failed attempts from one address are answered more and more slowly;
/// the first is answered at once.
#[test]
fn repeated_failures_from_one_address_are_slowed_down() {
    let (server, _) = with_token(&["*"]);
    let mut waits = Vec::new();
    for _ in 0..3 {
        let mut client = server.connect();
        let started = Instant::now();
        assert_eq!(client.request("auth wrong"), "error: invalid token");
        waits.push(started.elapsed());
    }
    assert!(waits[2] >= Duration::from_millis(200), "{waits:?}");
    let mut other = Client::connect_from("127.0.0.2", server.addr);
    let started = Instant::now();
    assert_eq!(other.request("auth wrong"), "error: invalid token");
    assert!(
        started.elapsed() < waits[2],
        "another address is not slowed"
    );
}

#[test]
fn send_authenticates_with_a_token_from_the_flag_or_the_environment() {
    let (server, token) = with_token(&["*"]);
    let addr = server.addr.to_string();
    let flag = crate::support::plugboard()
        .args([
            "send", "--addr", &addr, "--token", &token, "-c", "on", "-c", "status",
        ])
        .output()
        .unwrap();
    assert!(flag.status.success(), "{flag:?}");
    assert_eq!(String::from_utf8_lossy(&flag.stdout), "success\non\n");
    let env = crate::support::plugboard()
        .args(["send", "--addr", &addr, "status"])
        .env("PLUGBOARD_TOKEN", &token)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&env.stdout), "on\n");
    let wrong = crate::support::plugboard()
        .args(["send", "--addr", &addr, "--token", "wrong", "status"])
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        stderr.contains("authentication failed: invalid token"),
        "{stderr}"
    );
    assert!(wrong.stdout.is_empty());
}

/// A network namespace of the test's own, with loopback up and one
/// non-loopback address on it: a client there connecting to that address
/// comes from a non-loopback source, and no traffic leaves the namespace.
struct Netns {
    name: String,
}

const NETNS_ADDRESS: &str = "10.201.0.1";

impl Netns {
    /// A new namespace, as root (with iproute2).
    fn new(tag: &str) -> Self {
        let name = format!("pb-{}-{tag}", std::process::id());
        let made = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|status| status.success());
        assert!(
            made,
            "cannot create a network namespace: this test needs root and iproute2"
        );
        let netns = Self { name };
        netns.run(&["ip", "link", "set", "lo", "up"]);
        netns.run(&[
            "ip",
            "addr",
            "add",
            &format!("{NETNS_ADDRESS}/32"),
            "dev",
            "lo",
        ]);
        netns
    }

    fn command(&self, program: &str) -> std::process::Command {
        let mut command = std::process::Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    fn run(&self, args: &[&str]) {
        let status = self.command(args[0]).args(&args[1..]).status().unwrap();
        assert!(status.success(), "{args:?}");
    }

    /// Starts `setup` in the namespace, listening on every address.
    fn serve(&self, setup: Setup) -> Server {
        let name = self.name.clone();
        setup.config("listen = \"0.0.0.0:0\"").start_with(move || {
            let mut command = std::process::Command::new("ip");
            command.args(["netns", "exec", &name, crate::support::plugboard_path()]);
            command
        })
    }

    /// `plugboard send` from inside the namespace to `host` on the server's port.
    fn send(&self, server: &Server, host: &str, command: &str) -> String {
        let addr = format!("{host}:{}", server.addr.port());
        let output = self
            .command(crate::support::plugboard_path())
            .args(["send", "--addr", &addr, command])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout)
            .trim_end()
            .to_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[test]
#[ignore = "needs root: makes a network namespace (`make test` as root runs it)"]
fn protected_mode_serves_only_loopback_without_a_token() {
    let netns = Netns::new("protected");
    let server = netns.serve(onoff());
    assert!(
        server
            .log
            .wait_for("protected mode serves only loopback")
            .is_some()
    );
    assert!(server.log.wait_for("without TLS").is_some());
    let refused = netns.send(&server, NETNS_ADDRESS, "on");
    assert!(refused.starts_with("error: protected mode: "), "{refused}");
    assert_eq!(netns.send(&server, "127.0.0.1", "on"), "success");
}

#[test]
#[ignore = "needs root: makes a network namespace (`make test` as root runs it)"]
fn protected_mode_off_or_a_token_lets_other_addresses_in() {
    let netns = Netns::new("open");
    let open = netns.serve(onoff().config("protected_mode = false"));
    assert_eq!(netns.send(&open, NETNS_ADDRESS, "on"), "success");
    drop(open);
    let (_, entry) = new_token(&["*"]);
    let guarded = netns.serve(onoff().tables(&entry));
    assert_eq!(
        netns.send(&guarded, NETNS_ADDRESS, "on"),
        "error: authentication required: send `auth <token>` first"
    );
}

/// A small deterministic generator (xorshift64*), so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Bytes made of delimiters, pieces of them, commands, blanks, non-UTF-8
    /// bytes and random bytes. No command that changes state (`off`,
    /// `toggle`): the well-behaved client checks the state it sets.
    fn garbage(&mut self) -> Vec<u8> {
        const PIECES: [&[u8]; 12] = [
            b"<EOF>",
            b"<E",
            b"OF>",
            b"on",
            b"status",
            b"togg",
            b" ",
            b"\r\n",
            b"\xff\xfe",
            b"\0",
            b"help",
            b"auth x",
        ];
        let mut bytes = Vec::new();
        for _ in 0..self.below(12) {
            if self.below(4) == 0 {
                let len = self.below(400) as usize;
                bytes.extend((0..len).map(|_| self.next() as u8));
            } else {
                bytes.extend_from_slice(PIECES[self.below(PIECES.len() as u64) as usize]);
            }
        }
        bytes
    }
}

/// Random bytes, random splits and random disconnects from many clients at
/// once (bounded: 8 x 40 connections), while a well-behaved client keeps
/// getting exactly the right replies; the server is still there after.
#[test]
fn random_bytes_splits_and_disconnects_leave_others_served() {
    use std::io::{Read, Write};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let server = onoff()
        .config("max_frame_bytes = 256")
        .config("frame_timeout_ms = 2000")
        .start();
    let done = Arc::new(AtomicBool::new(false));
    let mut well_behaved = server.connect();
    let checker = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut rounds = 0u32;
            while !done.load(Ordering::Relaxed) || rounds < 10 {
                assert_eq!(well_behaved.request("on"), "success");
                assert_eq!(well_behaved.request("status"), "on");
                assert_eq!(
                    well_behaved.request("nope"),
                    "error: unknown command 'nope'"
                );
                rounds += 1;
            }
            rounds
        })
    };
    let attackers: Vec<_> = (0..8u64)
        .map(|seed| {
            let addr = server.addr;
            std::thread::spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (seed + 1));
                for _ in 0..40 {
                    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
                        continue;
                    };
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                    for _ in 0..=rng.below(5) {
                        let garbage = rng.garbage();
                        // Split at a random point into two writes.
                        let cut = rng.below(garbage.len() as u64 + 1) as usize;
                        let _ = stream.write_all(&garbage[..cut]);
                        let _ = stream.write_all(&garbage[cut..]);
                    }
                    match rng.below(3) {
                        // Vanish with the server's replies unread.
                        0 => drop(stream),
                        // Finish politely and read everything back.
                        1 => {
                            let _ = stream.shutdown(std::net::Shutdown::Write);
                            let _ = stream.read_to_end(&mut Vec::new());
                        }
                        // Read a little, then vanish.
                        _ => {
                            let _ = stream.read(&mut [0u8; 64]);
                        }
                    }
                }
            })
        })
        .collect();
    for attacker in attackers {
        attacker.join().expect("attacker thread");
    }
    done.store(true, Ordering::Relaxed);
    let rounds = checker
        .join()
        .expect("the well-behaved client was answered correctly");
    assert!(rounds >= 10);
    assert_served(&server);
}
