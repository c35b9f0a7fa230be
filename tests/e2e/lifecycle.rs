//! Serving under load, connection limits and graceful shutdown.

use crate::support::{Client, Setup};

#[test]
fn sigterm_lets_in_flight_commands_finish_then_exits_cleanly() {
    let mut server = Setup::new().plugin("testing_echo", "echo").start();
    let mut busy = server.connect();
    // The reply to `echo ready` proves the server is reading this connection;
    // `sleep` was sent with it, so it is in flight when SIGTERM arrives.
    busy.send(b"echo ready<EOF>sleep 300<EOF>");
    assert_eq!(busy.reply().unwrap(), "ready");

    server.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(busy.reply().unwrap(), "slept 300");
    busy.expect_closed();
    assert!(server.wait_exit().success());
    assert!(
        std::net::TcpStream::connect(server.addr).is_err(),
        "still accepting"
    );
}

#[test]
fn sigint_also_shuts_down_cleanly() {
    let mut server = Setup::new().plugin("onoff", "onoff").start();
    let mut idle = server.connect();
    assert_eq!(idle.request("on"), "success");
    server.signal(nix::sys::signal::Signal::SIGINT);
    idle.expect_closed();
    assert!(server.wait_exit().success());
}

#[test]
fn a_slow_plugin_call_does_not_stall_other_clients() {
    let server = Setup::new()
        .plugin("testing_echo", "echo")
        .config("call_timeout_ms = 10000")
        // A sleeping call holds one of its plugin's places: room for all.
        .plugin_config("echo", "max_concurrent_calls = 16")
        .start();
    // More sleepers than the machine has cores: if a call pinned a runtime
    // thread, the quick client below would queue behind them.
    let mut sleepers: Vec<Client> = (0..8).map(|_| server.connect()).collect();
    for sleeper in &mut sleepers {
        sleeper.send(b"sleep 2000<EOF>");
    }
    let mut quick = server.connect();
    assert_eq!(quick.request("echo quick"), "quick");
    assert!(
        sleepers.iter_mut().all(|s| !s.has_reply_ready()),
        "a sleeper finished before the quick client was answered"
    );
    for sleeper in &mut sleepers {
        assert_eq!(sleeper.reply().unwrap(), "slept 2000");
    }
}

#[test]
fn clients_over_max_connections_are_told_and_closed() {
    let server = Setup::new()
        .plugin("onoff", "onoff")
        .config("max_connections = 2")
        // One address may take every place: the global limit is the one reached.
        .config("max_connections_per_ip = 2")
        .start();
    let mut first = server.connect();
    let mut second = server.connect();
    // Replies prove both connections hold a slot.
    assert_eq!(first.request("on"), "success");
    assert_eq!(second.request("on"), "success");

    let mut third = server.connect();
    assert_eq!(third.reply().unwrap(), "error: too many connections");
    third.expect_closed();

    // A freed slot is served again. The server learns of the close
    // asynchronously, so a bounded number of attempts wait for it.
    drop(first);
    let served = (0..200).any(|_| {
        let mut client = server.connect();
        client.send(b"on<EOF>");
        client.reply().as_deref() == Some("success")
    });
    assert!(served, "no connection was served after one was freed");
    assert_eq!(second.request("off"), "success");
}

/// SIGTERM while a plugin compiles (the 18 MB Python one, with no compile
/// cache: seconds of work) ends the server on time, not after the compile.
#[test]
fn shutdown_does_not_wait_for_a_compile() {
    let mut server = Setup::new()
        .guest("stats", "stats")
        .config("compile_cache = false")
        .config("shutdown_timeout_ms = 500")
        .start_loading();
    assert!(server.log.wait_for("compiling plugin").is_some());
    let signalled = std::time::Instant::now();
    server.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(server.wait_exit().success());
    let took = signalled.elapsed();
    assert!(
        server.log.count("loaded plugin") == 0,
        "the compile finished first, so this proved nothing:\n{}",
        server.log.text()
    );
    assert!(took < std::time::Duration::from_secs(3), "{took:?}");
}

/// A large `max_connections` (100000 where the machine's hard open-file
/// limit allows it) starts, the pool being sized to instances rather than
/// connections, and gets its descriptors: the server starts with a soft
/// limit of 1024 and serves 1500 clients at once.
#[test]
fn a_large_max_connections_starts_and_gets_its_descriptors() {
    use nix::sys::resource::{Resource, getrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(
        hard >= 2_300,
        "this test needs a hard open-file limit of 2300 or more (`ulimit -Hn` is {hard})"
    );
    let max_connections = 100_000.min(hard - 300);
    let server = Setup::new()
        .plugin("testing_echo", "echo")
        .config(&format!("max_connections = {max_connections}"))
        .config("max_connections_per_ip = 2000")
        .start_with(move || {
            let mut command = std::process::Command::new("prlimit");
            command
                .arg(format!("--nofile=1024:{hard}"))
                .arg(crate::support::plugboard_path());
            command
        });
    let mut clients: Vec<Client> = (0..1_500).map(|_| server.connect()).collect();
    assert_eq!(clients[1_499].request("echo last"), "last");
    assert_eq!(clients[0].request("echo first"), "first");
}

/// A machine whose address space cannot hold the instance pool's
/// reservation (a Raspberry Pi's kernel maps 512 GiB per process, where the
/// default pool takes over 30 TiB; here `prlimit --as`): the server starts
/// with the pool that fits, serves, and past its slots answers `server
/// busy`, never a plugin failure.
#[test]
fn a_server_whose_address_space_cannot_hold_the_pool_takes_a_smaller_one() {
    let server = Setup::new()
        .plugin("testing_echo", "echo")
        .config("call_timeout_ms = 10000")
        .plugin_config("echo", "max_concurrent_calls = 64")
        .start_with(|| {
            let mut command = std::process::Command::new("prlimit");
            command
                .arg(format!("--as={}", 512u64 << 30))
                .arg(crate::support::plugboard_path());
            command
        });
    let mut clients: Vec<Client> = (0..4).map(|_| server.connect()).collect();
    for client in &mut clients {
        client.send(b"echo here<EOF>echo again<EOF>");
    }
    for client in &mut clients {
        assert_eq!(client.reply().unwrap(), "here");
        assert_eq!(client.reply().unwrap(), "again");
    }
    // Each sleeper holds an instance for a second: more than 512 GiB of
    // 4 GiB memories can hold.
    let mut sleepers: Vec<Client> = (0..24).map(|_| server.connect()).collect();
    for sleeper in &mut sleepers {
        sleeper.send(b"sleep 1000<EOF>");
    }
    let replies: Vec<String> = sleepers.iter_mut().map(|s| s.reply().unwrap()).collect();
    let busy = replies
        .iter()
        .filter(|r| *r == "error: server busy, try again")
        .count();
    let slept = replies.iter().filter(|r| *r == "slept 1000").count();
    assert!(busy > 0 && slept > 0 && busy + slept == 24, "{replies:?}");
}

/// A `max_connections` no open-file limit can honour is refused at
/// startup, naming the key.
#[test]
fn an_impossible_max_connections_is_refused_naming_the_key() {
    let mut server = Setup::new()
        .config("max_connections = 100000000")
        .start_loading();
    assert!(!server.wait_exit().success());
    // The log is read by a thread of its own: await the line.
    assert!(
        server
            .log
            .wait_for("`max_connections` = 100000000")
            .is_some(),
        "{}",
        server.log.text()
    );
}
