//! Throughput and latency over real TCP: plugboard answering commands from
//! WASM plugins, against its native baseline (the same binary serving with
//! `--native-baseline`: every plugin call replaced by a plain Rust function)
//! and a minimal native Tokio server sharing no code with plugboard (the
//! reference of issue 15's goals).
//!
//! Server and load generator are pinned to separate cores (`taskset -c 0`
//! with one Tokio worker; the generator's thread on core 1), so the ratio
//! compares the host's work per command, not how two processes share a CPU.
//! Also measures resident memory with 10 000 idle and 1 000 active
//! connections.
//!
//! Prints figures; asserts nothing about time. `make bench` runs it (with the
//! other benchmarks); `PLUGBOARD_BENCH_SECS` sets each run's length (default
//! 3), `PLUGBOARD_BENCH_ONLY` one section (`native`, `redis`, `languages`, `tls`,
//! `cpu`, `attacks`, `memory`, `writes`, `http`, `scale`, `status`).

use plugboard_test_support as support;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use support::flood::silent_socket;
use support::services::{Backend, Haproxy, Redis};
use support::{Client, DELIMITER, Server, Setup, free_port};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const WARMUP: Duration = Duration::from_millis(500);
const SERVER_CORE: usize = 0;
const CLIENT_CORE: usize = 1;
const IDLE_CONNECTIONS: usize = 10_000;
const ACTIVE_CONNECTIONS: usize = 1_000;

/// One shape of load: `connections` clients each keeping `depth` commands in
/// flight, or (`reconnect`) opening a connection per command like the
/// classic one-shot client.
#[derive(Clone, Copy)]
struct Load {
    connections: usize,
    depth: usize,
    reconnect: bool,
    command: &'static str,
}

impl Load {
    fn shape(connections: usize, depth: usize, command: &'static str) -> Self {
        Self {
            connections,
            depth,
            reconnect: false,
            command,
        }
    }

    fn label(&self) -> String {
        let shape = if self.reconnect {
            format!("{} clients, reconnect", self.connections)
        } else {
            format!("{}x{}", self.connections, self.depth)
        };
        format!("{:<20} {:<16}", shape, format!("`{}`", self.command))
    }
}

/// What one run measured, over the window after warm-up.
struct Figures {
    replies: u64,
    errors: u64,
    window: Duration,
    latency: Histogram<u64>,
}

impl Figures {
    fn per_sec(&self) -> f64 {
        self.replies as f64 / self.window.as_secs_f64()
    }

    fn percentile_us(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1e3
    }

    fn summary(&self) -> String {
        let errors = if self.errors > 0 {
            format!("  ({} ERROR REPLIES)", self.errors)
        } else {
            String::new()
        };
        format!(
            "{:>10.0}/s  p50 {:>7.1} us  p99 {:>7.1} us  p99.9 {:>8.1} us{errors}",
            self.per_sec(),
            self.percentile_us(0.5),
            self.percentile_us(0.99),
            self.percentile_us(0.999),
        )
    }
}

fn measure_secs() -> Duration {
    let secs = std::env::var("PLUGBOARD_BENCH_SECS")
        .ok()
        .and_then(|secs| secs.parse().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(secs)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The server binary behind `taskset` when there is a core to spare for the
/// load generator, with one Tokio worker either way.
fn server_command() -> Command {
    let binary = support::plugboard_path();
    let mut command = if cores() > 1 {
        let mut taskset = Command::new("taskset");
        taskset.args(["-c", &SERVER_CORE.to_string(), binary]);
        taskset
    } else {
        Command::new(binary)
    };
    command.env("TOKIO_WORKER_THREADS", "1");
    command
}

/// Starts `setup` pinned as [`server_command`] says, with plugin state in
/// memory (the benchmark measures the host and the plugin call, not the
/// disk); `native` answers routed commands with the native baseline.
fn start(setup: Setup, native: bool) -> Server {
    let mut setup = setup.config("state_store = \"memory\"").arg("--no-watch");
    if native {
        setup = setup.arg("--native-baseline");
    }
    setup.start_with(server_command)
}

/// Runs `load` against `addr` from a thread pinned to the client core.
fn run(addr: SocketAddr, load: Load, window: Duration) -> Figures {
    run_over(addr, None, load, window)
}

/// Like [`run`], over TLS when given a connector.
fn run_over(addr: SocketAddr, tls: Option<TlsConnector>, load: Load, window: Duration) -> Figures {
    std::thread::spawn(move || {
        let runtime = pinned_runtime(CLIENT_CORE);
        runtime.block_on(generate(addr, tls, Wire::Plugboard, load, window))
    })
    .join()
    .expect("load generator")
}

/// Runs `load` against a Redis at `addr`, each command sent as `FCALL`.
fn run_fcall(addr: SocketAddr, load: Load, window: Duration) -> Figures {
    std::thread::spawn(move || {
        let runtime = pinned_runtime(CLIENT_CORE);
        runtime.block_on(generate(addr, None, Wire::Resp, load, window))
    })
    .join()
    .expect("load generator")
}

/// How commands and replies are framed: plugboard's `<EOF>`, or Redis's
/// RESP (a command line becomes `FCALL <function> 1 lamp`, and each reply is
/// a line that is not a bulk string's length).
#[derive(Clone, Copy)]
enum Wire {
    Plugboard,
    Resp,
}

impl Wire {
    fn encode(self, command: &str) -> String {
        match self {
            Self::Plugboard => format!("{command}<EOF>"),
            Self::Resp => {
                let words = ["FCALL", command, "1", "lamp"];
                let mut encoded = format!("*{}\r\n", words.len());
                for word in words {
                    encoded.push_str(&format!("${}\r\n{word}\r\n", word.len()));
                }
                encoded
            }
        }
    }

    /// Removes every complete reply from the front of `received`, passing
    /// each to `each`; returns how many there were.
    fn take_replies(self, received: &mut Vec<u8>, mut each: impl FnMut(&[u8])) -> usize {
        let delimiter = match self {
            Self::Plugboard => DELIMITER,
            Self::Resp => b"\r\n",
        };
        let mut consumed = 0;
        let mut count = 0;
        while let Some(at) = memchr::memmem::find(&received[consumed..], delimiter) {
            let reply = &received[consumed..consumed + at];
            consumed += at + delimiter.len();
            match (self, reply) {
                (Self::Resp, [b'$', ..]) => {}
                (Self::Resp, [b'-', ..]) => {
                    count += 1;
                    each(b"error");
                }
                _ => {
                    count += 1;
                    each(reply);
                }
            }
        }
        received.drain(..consumed);
        count
    }
}

/// A one-thread runtime for the calling thread, pinned to `core` when
/// there is a core to spare.
fn pinned_runtime(core: usize) -> tokio::runtime::Runtime {
    if cores() > 1 {
        pin_to(core);
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn pin_to(core: usize) {
    let mut set = nix::sched::CpuSet::new();
    set.set(core).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
}

async fn generate(
    addr: SocketAddr,
    tls: Option<TlsConnector>,
    wire: Wire,
    load: Load,
    window: Duration,
) -> Figures {
    let start = Instant::now();
    let clock = Clock {
        measure_from: start + WARMUP,
        stop_at: start + WARMUP + window,
    };
    let clients: Vec<_> = (0..load.connections)
        .map(|_| {
            let tls = tls.clone();
            tokio::spawn(async move {
                if load.reconnect {
                    reconnecting_client(addr, load.command, clock).await
                } else {
                    pipelining_client(addr, tls, wire, load, clock).await
                }
            })
        })
        .collect();
    gather(clients, window).await
}

/// The clients' tallies, summed into one run's figures.
async fn gather(clients: Vec<tokio::task::JoinHandle<Tally>>, window: Duration) -> Figures {
    let mut total = Figures {
        replies: 0,
        errors: 0,
        window,
        latency: new_histogram(),
    };
    for client in clients {
        let tally = client.await.expect("client task");
        total.replies += tally.replies;
        total.errors += tally.errors;
        total.latency.add(&tally.latency).unwrap();
    }
    total
}

#[derive(Clone, Copy)]
struct Clock {
    measure_from: Instant,
    stop_at: Instant,
}

struct Tally {
    replies: u64,
    errors: u64,
    latency: Histogram<u64>,
}

impl Tally {
    fn new() -> Self {
        Self {
            replies: 0,
            errors: 0,
            latency: new_histogram(),
        }
    }

    /// Counts a reply that arrived at `now` for a command sent at `sent`,
    /// if both fall in the measured window.
    fn record(&mut self, reply: &[u8], sent: Instant, now: Instant, clock: Clock) {
        if sent < clock.measure_from || now > clock.stop_at {
            return;
        }
        self.replies += 1;
        if reply.starts_with(b"error") {
            self.errors += 1;
        }
        let nanos = u64::try_from((now - sent).as_nanos()).unwrap_or(u64::MAX);
        self.latency.saturating_record(nanos);
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap()
}

/// Keeps `load.depth` commands in flight: writes a batch, reads its replies.
async fn pipelining_client(
    addr: SocketAddr,
    tls: Option<TlsConnector>,
    wire: Wire,
    load: Load,
    clock: Clock,
) -> Tally {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).unwrap();
    match tls {
        None => pipeline_over(stream, wire, load, clock).await,
        Some(tls) => {
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let stream = tls.connect(name, stream).await.expect("TLS handshake");
            pipeline_over(stream, wire, load, clock).await
        }
    }
}

async fn pipeline_over(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    wire: Wire,
    load: Load,
    clock: Clock,
) -> Tally {
    let batch = wire.encode(load.command).repeat(load.depth);
    let mut tally = Tally::new();
    let mut received = Vec::with_capacity(64 << 10);
    let mut chunk = vec![0u8; 64 << 10];
    while Instant::now() < clock.stop_at {
        stream.write_all(batch.as_bytes()).await.expect("write");
        let sent = Instant::now();
        let mut outstanding = load.depth;
        while outstanding > 0 {
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "server closed the connection");
            received.extend_from_slice(&chunk[..n]);
            let now = Instant::now();
            outstanding -= wire.take_replies(&mut received, |reply| {
                tally.record(reply, sent, now, clock);
            });
        }
    }
    tally
}

/// One connection per command, closed by the client with a reset (linger 0)
/// so that tens of thousands of them do not exhaust ports in TIME_WAIT.
async fn reconnecting_client(addr: SocketAddr, command: &str, clock: Clock) -> Tally {
    let message = format!("{command}<EOF>");
    let mut tally = Tally::new();
    let mut received = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while Instant::now() < clock.stop_at {
        let sent = Instant::now();
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        stream.set_zero_linger().unwrap();
        stream.write_all(message.as_bytes()).await.expect("write");
        received.clear();
        loop {
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "server closed the connection");
            received.extend_from_slice(&chunk[..n]);
            let now = Instant::now();
            let replies = Wire::Plugboard
                .take_replies(&mut received, |reply| tally.record(reply, sent, now, clock));
            if replies > 0 {
                break;
            }
        }
    }
    tally
}

fn compare_with_native(window: Duration) {
    let loads = [
        Load {
            connections: 1,
            depth: 1,
            reconnect: false,
            command: "on",
        },
        Load {
            connections: 64,
            depth: 1,
            reconnect: false,
            command: "on",
        },
        Load {
            connections: 64,
            depth: 16,
            reconnect: false,
            command: "on",
        },
        Load {
            connections: 8,
            depth: 1,
            reconnect: true,
            command: "on",
        },
    ];
    let plugboard: Vec<Figures> = {
        let server = start(Setup::new().plugin("onoff", "onoff"), false);
        loads
            .iter()
            .map(|load| run(server.addr, *load, window))
            .collect()
    };
    let native: Vec<Figures> = {
        let server = start(Setup::new().plugin("onoff", "onoff"), true);
        loads
            .iter()
            .map(|load| run(server.addr, *load, window))
            .collect()
    };
    let minimal: Vec<Figures> = {
        let reference = spawn_minimal_reference();
        loads
            .iter()
            .map(|load| run(reference, *load, window))
            .collect()
    };
    for (((load, wasm), native), minimal) in loads.iter().zip(&plugboard).zip(&native).zip(&minimal)
    {
        println!("{} plugboard {}", load.label(), wasm.summary());
        println!("{} native    {}", load.label(), native.summary());
        println!("{} minimal   {}", load.label(), minimal.summary());
        println!(
            "{} ratio      {:.2} of minimal's commands/s (native baseline {:.2}), p99 {:.2}x minimal's",
            load.label(),
            wasm.per_sec() / minimal.per_sec(),
            native.per_sec() / minimal.per_sec(),
            wasm.percentile_us(0.99) / minimal.percentile_us(0.99),
        );
    }
}

/// onoff's `on` as a Redis function: read the state, write only on change.
const ON_IN_LUA: &str = "#!lua name=onoff
redis.register_function('on', function(keys, args)
  if redis.call('GET', keys[1]) ~= 'on' then
    redis.call('SET', keys[1], 'on')
  end
  return 'success'
end)";

/// The closest peer: Redis running `on` as a Lua function (FCALL), pinned
/// to the server's core, against plugboard with its state on disk as the
/// repo's config keeps it.
fn against_redis(window: Duration) {
    let redis = Redis::start();
    if cores() > 1 {
        let pid = redis.pid().expect("redis runs").to_string();
        let pinned = Command::new("taskset")
            .args(["-a", "-p", "-c", &SERVER_CORE.to_string(), &pid])
            .output()
            .expect("run taskset");
        assert!(pinned.status.success(), "taskset: {pinned:?}");
    }
    assert_eq!(
        redis.cli(&["FUNCTION", "LOAD", "REPLACE", ON_IN_LUA]),
        "onoff"
    );
    let redis_addr: SocketAddr = format!("127.0.0.1:{}", redis.port).parse().unwrap();
    let server = Setup::new()
        .plugin("onoff", "onoff")
        .arg("--no-watch")
        .start_with(server_command);
    let from_file = Setup::new()
        .plugin("onoff", "onoff")
        .config("state_cache_mib = 0")
        .arg("--no-watch")
        .start_with(server_command);
    for load in [
        Load::shape(64, 16, "on"),
        Load::shape(64, 1, "on"),
        Load::shape(1, 1, "on"),
    ] {
        let plugboard = run(server.addr, load, window);
        let reading_the_file = run(from_file.addr, load, window);
        let fcall = run_fcall(redis_addr, load, window);
        println!("{} plugboard (disk) {}", load.label(), plugboard.summary());
        println!(
            "{} reads from file  {} (state_cache_mib = 0: {:.2} of cached)",
            load.label(),
            reading_the_file.summary(),
            reading_the_file.per_sec() / plugboard.per_sec()
        );
        println!("{} Redis FCALL      {}", load.label(), fcall.summary());
        println!(
            "{} ratio            {:.2} of Redis FCALL's commands/s, p99 {:.2}x Redis's",
            load.label(),
            plugboard.per_sec() / fcall.per_sec(),
            plugboard.percentile_us(0.99) / fcall.percentile_us(0.99),
        );
    }
}

/// The reference every figure is a ratio against: a minimal native Tokio
/// server sharing no code with plugboard, on the server's core with one
/// thread, answering every message `success`; one read takes every
/// buffered message and all their replies leave in one write.
fn spawn_minimal_reference() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime = pinned_runtime(SERVER_CORE);
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(minimal_connection(stream));
            }
        });
    });
    addr
}

async fn minimal_connection(mut stream: TcpStream) {
    let mut pending = Vec::with_capacity(64 * 1024);
    let mut replies = Vec::with_capacity(64 * 1024);
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        let mut start = 0;
        while let Some(at) = memchr::memmem::find(&pending[start..], DELIMITER) {
            start += at + DELIMITER.len();
            replies.extend_from_slice(b"success");
            replies.extend_from_slice(DELIMITER);
        }
        pending.drain(..start);
        if !replies.is_empty() {
            if stream.write_all(&replies).await.is_err() {
                return;
            }
            replies.clear();
        }
    }
}

/// The Python and JavaScript example plugins at 64x16.
fn other_languages(window: Duration) {
    let setup = Setup::new().guest("stats", "stats").guest("text", "text");
    let server = start(setup, false);
    for command in ["stats 1 2 3", "upper hello"] {
        let load = Load {
            connections: 64,
            depth: 16,
            reconnect: false,
            command,
        };
        println!(
            "{} plugboard {}",
            load.label(),
            run(server.addr, load, window).summary()
        );
    }
}

/// Another plugin's `on` (1 x 1) while 256 connections loop in CPU-bound
/// calls of one plugin (`burn 20`: 20 million iterations, about 10 ms of
/// one core each), with the default
/// CPU share (`max_concurrent_calls`) and with so large a share that there
/// is none, as before it existed.
fn cpu_shares(window: Duration) {
    let shares = [
        ("default share", None),
        ("no share", Some("max_concurrent_calls = 100000")),
    ];
    for (label, share) in shares {
        let mut setup = Setup::new()
            .plugin("onoff", "onoff")
            .plugin("testing_hostile", "hostile")
            .plugin_config("hostile", "call_timeout_ms = 60000");
        if let Some(share) = share {
            setup = setup.plugin_config("hostile", share);
        }
        let server = start(setup, false);
        let addr = server.addr;
        let hogs = Load {
            connections: 256,
            depth: 1,
            reconnect: false,
            command: "burn 20",
        };
        let hogging = std::thread::spawn(move || run(addr, hogs, window + WARMUP * 2));
        std::thread::sleep(WARMUP);
        let bystander = Load {
            connections: 1,
            depth: 1,
            reconnect: false,
            command: "on",
        };
        let figures = run(addr, bystander, window);
        let hogged = hogging.join().expect("hogs");
        println!(
            "{} {label:<14} bystander {}",
            bystander.label(),
            figures.summary()
        );
        println!(
            "{} {label:<14} hogs      {}",
            hogs.label(),
            hogged.summary()
        );
    }
}

/// The attacks of the isolation issue, each against a server of its own:
/// the attack's load, and a bystander's `on` (onoff, 1 x 1) meanwhile,
/// with the server's peak resident memory.
fn attacks(window: Duration) {
    use support::components::{Handle, component};
    let hostile = || {
        Setup::new()
            .plugin("onoff", "onoff")
            .plugin("testing_hostile", "hostile")
    };
    // Seven memories of 1 MiB each, kept warm by every connection.
    let memories = component(
        &["grow"],
        Handle::GrowExtraMemories {
            memories: 7,
            pages: 16,
        },
    );
    // Messages just under `max_frame_bytes` (64 KiB): of `<`, each the first
    // byte of the delimiter (the framing's search at its worst), and of `a`.
    static ANGLES: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| format!("nope {}", "<".repeat(60_000)));
    static LETTERS: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| format!("nope {}", "a".repeat(60_000)));
    let cases: Vec<(&str, Setup, Load)> = vec![
        (
            "client: 64 connections pipelining 4 x 60 000 B of '<'",
            Setup::new().plugin("onoff", "onoff"),
            Load::shape(64, 4, &ANGLES),
        ),
        (
            "client: 64 connections pipelining 4 x 60 000 B of 'a'",
            Setup::new().plugin("onoff", "onoff"),
            Load::shape(64, 4, &LETTERS),
        ),
        (
            "log flood: host.log 2000 x 1000 B a call",
            hostile(),
            Load::shape(4, 1, "log-flood 2000 1000"),
        ),
        (
            "stderr flood: 2000 x 1000 B a call",
            hostile(),
            Load::shape(4, 1, "print-flood 2000 1000"),
        ),
        (
            "failing calls: reply over max_reply_bytes = 1",
            hostile().plugin_config("hostile", "max_reply_bytes = 1"),
            Load::shape(4, 1, "huge-reply 10"),
        ),
        (
            "log lines: 8 connections logging one 40 MiB line a call",
            hostile(),
            Load::shape(8, 1, "log-flood 1 41943040"),
        ),
        (
            "CPU: 256 connections looping burn 20",
            hostile().plugin_config("hostile", "call_timeout_ms = 60000"),
            Load::shape(256, 1, "burn 20"),
        ),
        (
            "memory: 64 allocation bombs at a time",
            hostile().plugin_config("hostile", "quarantine_after = 0"),
            Load::shape(64, 1, "alloc-bomb"),
        ),
        (
            "instances: 120 connections, 8 memories each",
            Setup::new()
                .plugin("onoff", "onoff")
                .file("multi.wasm", &memories),
            Load::shape(120, 1, "grow"),
        ),
    ];
    for (label, setup, load) in cases {
        let server = start(setup, false);
        let addr = server.addr;
        let attacking = std::thread::spawn(move || run(addr, load, window + WARMUP * 2));
        std::thread::sleep(WARMUP);
        let bystander = run(addr, Load::shape(1, 1, "on"), window);
        let attack = attacking.join().expect("attack");
        println!("attack: {label}");
        println!("  bystander `on`   {}", bystander.summary());
        println!("  attack           {}", attack.summary());
        println!("  peak resident    {:.1} MiB", server.peak_resident_mib());
    }
    silent_sockets(window);
    damaged_value_reads(window);
    python_clients();
}

/// With tokens, 64 silent sockets from two addresses keep taking every
/// place (`max_connections = 64`), reconnecting as soon as the server
/// displaces them, while a token holder from a third opens a connection,
/// authenticates and runs `on`, one connection after another: what the
/// deadline and the share of the unauthenticated keep open for it.
fn silent_sockets(window: Duration) {
    let token = Command::new(support::plugboard_path())
        .args(["token", "--name", "bench", "--command", "*"])
        .output()
        .expect("run plugboard token");
    let text = String::from_utf8(token.stdout).expect("token output");
    let (token, entry) = text.split_once('\n').expect("a token and its entry");
    let server = start(
        Setup::new()
            .plugin("onoff", "onoff")
            .config("max_connections = 64")
            .tables(&format!("[auth]\n{entry}")),
        false,
    );
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let closed = Arc::new(AtomicUsize::new(0));
    let attacking = {
        let (stop, closed) = (stop.clone(), closed.clone());
        std::thread::spawn(move || {
            let runtime = pinned_runtime(CLIENT_CORE);
            runtime.block_on(async move {
                let sockets: Vec<_> = (0..64)
                    .map(|n| {
                        let source = ["127.0.0.2", "127.0.0.3"][n % 2];
                        tokio::spawn(silent_socket(addr, source, stop.clone(), closed.clone()))
                    })
                    .collect();
                for socket in sockets {
                    socket.await.expect("silent socket");
                }
            })
        })
    };
    std::thread::sleep(WARMUP);
    let bystander = authenticating_bystander(addr, token, window);
    stop.store(true, Ordering::Relaxed);
    attacking.join().expect("attack");
    let displaced = closed.load(Ordering::Relaxed);
    println!("attack: silent sockets, 64 places, auth required");
    println!(
        "  bystander, a connection per `on` (connect, auth, on): {}",
        bystander.summary()
    );
    println!("  silent sockets displaced and reopened: {displaced}");
}

/// A client with `token` from its own address: connect, `auth`, `on`,
/// close, in a loop for `window`; each round's time is one sample.
fn authenticating_bystander(addr: SocketAddr, token: &str, window: Duration) -> Figures {
    let mut figures = Figures {
        replies: 0,
        errors: 0,
        window,
        latency: new_histogram(),
    };
    let stop_at = Instant::now() + window;
    while Instant::now() < stop_at {
        let started = Instant::now();
        let mut client = Client::connect_from("127.0.0.4", addr);
        let authenticated = client.request(&format!("auth {token}"));
        let reply = client.request("on");
        figures.replies += 1;
        if authenticated != "success" || reply != "success" {
            figures.errors += 1;
        }
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        figures.latency.saturating_record(nanos);
    }
    figures
}

/// 16 connections reading a value whose bytes are damaged in the state
/// file (each read refused: `state unavailable`), beside a bystander's
/// `on`, whose state is in the same file.
fn damaged_value_reads(window: Duration) {
    let setup = Setup::new()
        .plugin("onoff", "onoff")
        .plugin("testing_echo", "echo")
        .arg("--no-watch");
    let file = setup.state_dir().join("state.redb");
    let value = "a value to be damaged in the file";
    let mut server = setup.start_with(server_command);
    assert_eq!(
        server.connect().request(&format!("kv-set k {value}")),
        "stored"
    );
    server.signal(nix::sys::signal::Signal::SIGTERM);
    server.wait_exit();
    let mut bytes = std::fs::read(&file).expect("state file");
    for at in support::offsets_of(&bytes, value) {
        bytes[at + 3] ^= 0x01;
    }
    std::fs::write(&file, bytes).expect("write the damaged file");
    let server = server.restart_stopped();
    let addr = server.addr;
    let attacking =
        std::thread::spawn(move || run(addr, Load::shape(16, 1, "kv-get k"), window + WARMUP * 2));
    std::thread::sleep(WARMUP);
    let bystander = run(addr, Load::shape(1, 1, "on"), window);
    let attack = attacking.join().expect("attack");
    println!("attack: 16 connections reading a damaged value");
    println!("  bystander `on`   {}", bystander.summary());
    println!(
        "  attack           {} (every reply refused)",
        attack.summary()
    );
}

/// How many clients of the Python plugin, all calling at once, are served.
fn python_clients() {
    for clients in [64, 256, 512, 1000] {
        let setup = Setup::new()
            .guest("stats", "stats")
            .config(&format!("max_connections_per_ip = {clients}"));
        let server = start(setup, false);
        let mut connections: Vec<Client> = (0..clients).map(|_| server.connect()).collect();
        for connection in &mut connections {
            connection.send(b"stats 1 2 3<EOF>");
        }
        let mut served = 0;
        let mut refused = std::collections::BTreeMap::<String, usize>::new();
        for connection in &mut connections {
            let reply = connection.reply().expect("a reply");
            if reply.starts_with("count=3") {
                served += 1;
            } else {
                *refused.entry(reply).or_default() += 1;
            }
        }
        println!(
            "python clients at once: {clients:>4}: {served} served, refused {refused:?}, peak resident {:.0} MiB",
            server.peak_resident_mib()
        );
    }
}

/// TLS against plain TCP, both plugboard serving `on` through onoff.
fn tls_cost(window: Duration) {
    let pki = tempfile::tempdir().unwrap();
    let connector = make_pki(pki.path());
    let tls_table = format!(
        "[tls]\ncert = {:?}\nkey = {:?}",
        pki.path().join("server.pem"),
        pki.path().join("server.key")
    );
    let loads = [1, 16].map(|depth| Load {
        connections: 64,
        depth,
        reconnect: false,
        command: "on",
    });
    let plain: Vec<Figures> = {
        let server = start(Setup::new().plugin("onoff", "onoff"), false);
        loads
            .iter()
            .map(|load| run(server.addr, *load, window))
            .collect()
    };
    let tls: Vec<Figures> = {
        let setup = Setup::new().plugin("onoff", "onoff").tables(&tls_table);
        let server = start(setup, false);
        let over = |load: &Load| run_over(server.addr, Some(connector.clone()), *load, window);
        loads.iter().map(over).collect()
    };
    for ((load, plain), tls) in loads.iter().zip(&plain).zip(&tls) {
        println!("{} plain TCP {}", load.label(), plain.summary());
        println!("{} TLS       {}", load.label(), tls.summary());
        println!(
            "{} TLS/plain  {:.2} of plain's commands/s, p99 {:.2}x plain's",
            load.label(),
            tls.per_sec() / plain.per_sec(),
            tls.percentile_us(0.99) / plain.percentile_us(0.99),
        );
    }
}

/// A CA and a server certificate for 127.0.0.1 in `dir`; a client trusting the CA.
fn make_pki(dir: &std::path::Path) -> TlsConnector {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(std::sync::Arc::new(config))
}

/// Resident memory of the server with many idle connections (each served
/// one command first) and with many active ones.
/// Resident memory once the shipped plugins are loaded (warm compile
/// cache), at ready and when the blocking threads that loaded them have
/// ended (`main.rs`).
fn resident_memory_at_start() {
    let setup = Setup::new()
        .plugin("onoff", "onoff")
        .plugin("relay", "relay")
        .guest("stats", "stats")
        .guest("text", "text");
    let server = start(setup, false);
    let at_ready = server.resident_mib();
    std::thread::sleep(Duration::from_secs(2));
    println!(
        "resident memory, shipped plugins (onoff, relay, stats, text): {at_ready:.1} MiB at ready, \
         {:.1} MiB 2 s later",
        server.resident_mib()
    );
}

fn resident_memory(window: Duration) {
    let max_connections = format!("max_connections = {}", IDLE_CONNECTIONS + 64);
    // Every connection comes from 127.0.0.1: one address may hold them all.
    let per_address = format!("max_connections_per_ip = {}", IDLE_CONNECTIONS + 64);
    let setup = Setup::new()
        .plugin("onoff", "onoff")
        .config(&max_connections)
        .config(&per_address);
    let server = start(setup, false);
    println!(
        "resident memory, started:                  {:>6.1} MiB",
        server.resident_mib()
    );

    let idle: Vec<Client> = (0..IDLE_CONNECTIONS)
        .map(|_| {
            let mut client = server.connect();
            assert_eq!(client.request("on"), "success");
            client
        })
        .collect();
    // Past the idle time after which connections release their instance
    // and buffers, and the allocator's delay before returning memory.
    std::thread::sleep(plugboard::net::connection::IDLE_RELEASE * 3);
    println!(
        "resident memory, {IDLE_CONNECTIONS} idle connections:     {:>6.1} MiB",
        server.resident_mib()
    );
    drop(idle);

    let addr = server.addr;
    let load = Load {
        connections: ACTIVE_CONNECTIONS,
        depth: 1,
        reconnect: false,
        command: "on",
    };
    let active = std::thread::spawn(move || run(addr, load, window));
    std::thread::sleep(WARMUP + window / 2);
    let resident = server.resident_mib();
    let figures = active.join().expect("load");
    println!(
        "resident memory, {ACTIVE_CONNECTIONS} active connections:    {resident:>6.1} MiB  ({:.0} commands/s)",
        figures.per_sec()
    );
}

/// Acknowledged durable writes (`kv-count`, an increment) per second with
/// 1, 16 and 64 concurrent writers, each waiting for its reply (and 16 each
/// keeping 4 in flight, pipelined): the disk
/// store (every reply after an fsynced commit, shared by the writers queued
/// meanwhile) and Redis (a real `redis-server` on loopback, AOF fsynced on
/// every write) against the memory store.
fn durable_writes(window: Duration) {
    let redis = Redis::start();
    // Not `start`: that one keeps state in memory.
    let start_on = |store: &str| {
        Setup::new()
            .plugin("testing_echo", "echo")
            .config(&format!("state_store = \"{store}\""))
            .config(&format!("redis_url = {:?}", redis.url()))
            .arg("--no-watch")
            .start_with(|| Command::new(support::plugboard_path()))
    };
    let memory = start_on("memory");
    let disk = start_on("disk");
    let in_redis = start_on("redis");
    for (connections, depth) in [(1, 1), (16, 1), (16, 4), (64, 1)] {
        let load = Load::shape(connections, depth, "kv-count n");
        let baseline = run(memory.addr, load, window);
        println!("{} kv-count memory {}", load.label(), baseline.summary());
        for (name, server) in [("disk ", &disk), ("redis", &in_redis)] {
            let figures = run(server.addr, load, window);
            println!(
                "{} kv-count {name}  {} ({:.2} of memory, p50 +{:.0} us)",
                load.label(),
                figures.summary(),
                figures.per_sec() / baseline.per_sec(),
                figures.percentile_us(0.5) - baseline.percentile_us(0.5),
            );
        }
    }
}

/// Several hosts as one service: `on` (onoff, its state in Redis) sent to
/// one host directly, then through HAProxy (the repo's `deploy/haproxy.cfg`)
/// with one host behind it, then with two. On a 2-core machine the hosts,
/// Redis, HAProxy and the load generator share the cores, so this shows the
/// balancer's cost and that a second host adds no error, not how two
/// machines scale.
fn scale_out(window: Duration) {
    let redis = Redis::start();
    let host = || {
        let health_port = free_port();
        let server = Setup::new()
            .plugin("onoff", "onoff")
            .config("state_store = \"redis\"")
            .config(&format!("redis_url = {:?}", redis.url()))
            .config(&format!("metrics_listen = \"127.0.0.1:{health_port}\""))
            .arg("--no-watch")
            .start_with(|| Command::new(support::plugboard_path()));
        (server, health_port)
    };
    let backend = |name, (server, health_port): &(Server, u16)| Backend {
        name,
        port: server.addr.port(),
        health_port: *health_port,
    };
    let (a, b) = (host(), host());
    let through_one = Haproxy::start(&[backend("a", &a)]);
    let through_two = Haproxy::start(&[backend("a", &a), backend("b", &b)]);
    let loads = [
        Load::shape(1, 1, "on"),
        Load::shape(64, 1, "on"),
        Load::shape(64, 16, "on"),
        Load {
            reconnect: true,
            ..Load::shape(8, 1, "on")
        },
    ];
    for load in loads {
        let direct = run(a.0.addr, load, window);
        println!("{} one host, direct   {}", load.label(), direct.summary());
        for (label, haproxy) in [
            ("HAProxy, 1 host ", &through_one),
            ("HAProxy, 2 hosts", &through_two),
        ] {
            let figures = run(haproxy.addr(), load, window);
            println!(
                "{} {label} {} ({:.2} of direct)",
                load.label(),
                figures.summary(),
                figures.per_sec() / direct.per_sec()
            );
        }
    }
}

/// A granted HTTP GET through a plugin (`hostile`'s `http-get`, the SDK's
/// helper, as `relay` does it) against the same GET sent straight from the
/// load generator, a connection per request like wasmtime's sender, to one
/// local device.
fn http_calls(window: Duration) {
    let device = spawn_device();
    let server = start(
        Setup::new()
            .plugin("testing_hostile", "hostile")
            .plugin_config("hostile", &format!("allow_http = [\"http://{device}\"]")),
        false,
    );
    let command: &'static str = format!("http-get http://{device}/cm?cmnd=Power%20On").leak();
    for connections in [1, 16] {
        let direct = direct_http(device, connections, window);
        let through = run(server.addr, Load::shape(connections, 1, command), window);
        let label = format!("{connections}x1");
        println!("{label:<6} GET direct        {}", direct.summary());
        println!(
            "{label:<6} GET through plugin {} (p50 +{:.0} us, {:.2} of direct)",
            through.summary(),
            through.percentile_us(0.5) - direct.percentile_us(0.5),
            through.per_sec() / direct.per_sec()
        );
    }
}

/// A device's HTTP API on loopback: every request answered `200 on`, then
/// the connection closed. Runs on a thread of its own for the whole bench.
fn spawn_device() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let reply =
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\non";
                    let _ = stream.write_all(reply).await;
                });
            }
        });
    });
    addr
}

/// `connections` clients, each sending the device's GET and awaiting the
/// whole answer, a connection per request, from the load generator's core.
fn direct_http(device: SocketAddr, connections: usize, window: Duration) -> Figures {
    std::thread::spawn(move || {
        let runtime = pinned_runtime(CLIENT_CORE);
        runtime.block_on(async move {
            let start = Instant::now();
            let clock = Clock {
                measure_from: start + WARMUP,
                stop_at: start + WARMUP + window,
            };
            let clients: Vec<_> = (0..connections)
                .map(|_| tokio::spawn(direct_http_client(device, clock)))
                .collect();
            gather(clients, window).await
        })
    })
    .join()
    .expect("direct HTTP client")
}

async fn direct_http_client(device: SocketAddr, clock: Clock) -> Tally {
    let mut tally = Tally::new();
    let request = format!("GET /cm?cmnd=Power%20On HTTP/1.1\r\nHost: {device}\r\n\r\n");
    while Instant::now() < clock.stop_at {
        let sent = Instant::now();
        let mut stream = TcpStream::connect(device).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        let ok: &[u8] = if answer.ends_with(b"on") {
            b"on"
        } else {
            b"error"
        };
        tally.record(ok, sent, Instant::now(), clock);
    }
    tally
}

fn main() {
    let window = measure_secs();
    println!(
        "load: {} s per run after {} ms warm-up; server on core {SERVER_CORE} (1 Tokio worker), \
         load generator on core {CLIENT_CORE}",
        window.as_secs_f64(),
        WARMUP.as_millis()
    );
    let only = std::env::var("PLUGBOARD_BENCH_ONLY").ok();
    let run = |section: &str| only.as_deref().is_none_or(|only| only == section);
    if run("native") {
        compare_with_native(window);
    }
    if run("redis") {
        against_redis(window);
    }
    if run("languages") {
        other_languages(window);
    }
    if run("tls") {
        tls_cost(window);
    }
    if run("cpu") {
        cpu_shares(window);
    }
    if run("attacks") {
        attacks(window);
    }
    if run("memory") {
        resident_memory_at_start();
        resident_memory(window);
    }
    if run("writes") {
        durable_writes(window);
    }
    if run("http") {
        http_calls(window);
    }
    if run("scale") {
        scale_out(window);
    }
    if run("status") {
        status_page_cost(window);
    }
}

/// What the status page costs the commands: a bystander's latency under
/// load (16 connections of `on`), with and without a client fetching `/`
/// ten times a second.
fn status_page_cost(window: Duration) {
    let port = free_port();
    let setup = Setup::new()
        .plugin("onoff", "onoff")
        .plugin("testing_echo", "echo")
        .config(&format!("metrics_listen = \"127.0.0.1:{port}\""));
    let server = start(setup, false);
    let addr = server.addr;
    for fetching in [false, true] {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let fetcher = fetching.then(|| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut fetched = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    fetch_status_page(port);
                    fetched += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                fetched
            })
        });
        let loading =
            std::thread::spawn(move || run(addr, Load::shape(16, 1, "on"), window + WARMUP * 2));
        std::thread::sleep(WARMUP);
        let bystander = run(addr, Load::shape(1, 1, "on"), window);
        let load = loading.join().expect("load");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let fetched = fetcher.map_or(0, |f| f.join().expect("fetcher"));
        let label = if fetching {
            "GET / 10 times a second"
        } else {
            "no page fetched"
        };
        println!("status page: {label:<24} ({fetched} pages)");
        println!("  bystander `on`   {}", bystander.summary());
        println!("  load 16x1 `on`   {}", load.summary());
    }
}

/// `GET /` from the status endpoint, read to the end.
fn fetch_status_page(port: u16) {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return;
    };
    let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let mut page = Vec::new();
    let _ = stream.read_to_end(&mut page);
}
