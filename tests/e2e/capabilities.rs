//! Capabilities granted per plugin in its `[plugins.<name>]` table: outbound
//! TCP to listed addresses, directories read-only or read-write. Without a
//! grant, nothing (see `sandbox.rs`).

use std::net::TcpListener;

use crate::support::Setup;

fn hostile() -> Setup {
    Setup::new().plugin("testing_hostile", "hostile")
}

/// A granted address connects; any other (even the server's own) is an
/// error the plugin handles: it replies with it.
#[test]
fn tcp_reaches_granted_addresses_only() {
    let granted = TcpListener::bind("127.0.0.1:0").unwrap();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let granted = granted.local_addr().unwrap();
    let server = hostile()
        .plugin_config("hostile", &format!("allow_tcp = [\"{granted}\"]"))
        .start();
    let mut client = server.connect();
    assert_eq!(client.request(&format!("connect {granted}")), "connected");
    let denied = client.request(&format!("connect {}", other.local_addr().unwrap()));
    assert!(denied.starts_with("error: denied:"), "{denied}");
    let own = client.request(&format!("connect {}", server.addr));
    assert!(own.starts_with("error: denied:"), "{own}");
}

/// A granted name is looked up, and what it resolves to connects at the
/// granted port only; a name not granted is refused before it is resolved.
#[test]
fn tcp_names_resolve_only_when_granted() {
    let granted = TcpListener::bind("127.0.0.1:0").unwrap();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = granted.local_addr().unwrap().port();
    let server = hostile()
        .plugin_config("hostile", &format!("allow_tcp = [\"LocalHost.:{port}\"]"))
        .start();
    let mut client = server.connect();
    assert_eq!(
        client.request(&format!("connect localhost:{port}")),
        "connected"
    );
    let other_port = other.local_addr().unwrap().port();
    let reply = client.request(&format!("connect localhost:{other_port}"));
    assert!(reply.starts_with("error: denied:"), "{reply}");
    // Refused by the host, not by a resolver that found nothing.
    let reply = client.request(&format!("connect not-granted.invalid:{port}"));
    assert!(reply.contains("Permission denied"), "{reply}");
}

/// The same plugin under another name, with no table: no TCP at all.
#[test]
fn another_plugins_grant_is_not_usable() {
    let granted = TcpListener::bind("127.0.0.1:0").unwrap();
    let granted = granted.local_addr().unwrap();
    let server = hostile()
        .plugin_config("someone-else", &format!("allow_tcp = [\"{granted}\"]"))
        .start();
    let reply = server.connect().request(&format!("connect {granted}"));
    assert!(reply.starts_with("error: denied:"), "{reply}");
}

/// A read-only directory: its files read, writes refused, and neither `..`
/// nor a symlink inside it leads out of it.
#[test]
fn a_read_only_directory_is_readable_and_nothing_beyond() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("hello.txt"), "hello").unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "secret").unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), data.path().join("link")).unwrap();
    let server = hostile()
        .tables(&format!(
            "[plugins.hostile.dirs]\n\"/data\" = {:?}",
            data.path()
        ))
        .start();
    let mut client = server.connect();
    assert_eq!(client.request("open-file /data/hello.txt"), "read 5 bytes");
    for path in ["/data/link", "/data/../etc/passwd", "/etc/passwd"] {
        let reply = client.request(&format!("open-file {path}"));
        assert!(reply.starts_with("error: denied:"), "{path}: {reply}");
    }
    let write = client.request("write-file /data/new.txt x");
    assert!(write.starts_with("error: denied:"), "{write}");
    assert!(!data.path().join("new.txt").exists());
}

/// A writable directory takes new files, which land on the host.
#[test]
fn a_writable_directory_takes_writes() {
    let out = tempfile::tempdir().unwrap();
    let server = hostile()
        .tables(&format!(
            "[plugins.hostile.writable_dirs]\n\"/out\" = {:?}",
            out.path()
        ))
        .start();
    let mut client = server.connect();
    assert_eq!(
        client.request("write-file /out/state.txt on"),
        "wrote 2 bytes"
    );
    assert_eq!(
        std::fs::read_to_string(out.path().join("state.txt")).unwrap(),
        "on"
    );
    assert_eq!(client.request("open-file /out/state.txt"), "read 2 bytes");
    let escape = client.request("write-file /out/../escaped.txt x");
    assert!(escape.starts_with("error: denied:"), "{escape}");
}

/// A grant naming what cannot be granted is a startup error naming the key.
#[test]
fn bad_grants_are_config_errors_naming_the_key() {
    for (table, key) in [
        (
            "allow_tcp = [\"example.com:http\"]",
            "plugins.hostile.allow_tcp",
        ),
        (
            "dirs = { \"/data\" = \"/no/such/dir\" }",
            "plugins.hostile.dirs",
        ),
        ("dirs = { \"data\" = \"/tmp\" }", "plugins.hostile.dirs"),
    ] {
        let mut server = hostile().plugin_config("hostile", table).start_loading();
        assert!(!server.wait_exit().success(), "{table}");
        // The log is read by a thread of its own: await the line.
        assert!(
            server.log.wait_for(key).is_some(),
            "{table}: {}",
            server.log.text()
        );
    }
}

/// An HTTP server on loopback, one request at a time: `respond` turns each
/// request line and body (read by `content-length`) into a body (answered
/// 200, JSON); each request's target is reported.
fn http_server(
    mut respond: impl FnMut(&str, &str) -> String + Send + 'static,
) -> (std::net::SocketAddr, std::sync::mpsc::Receiver<String>) {
    http_server_with_headers(move |line, _, body| respond(line, body))
}

/// [`http_server`], whose `respond` also sees the request's header lines.
fn http_server_with_headers(
    mut respond: impl FnMut(&str, &[String], &str) -> String + Send + 'static,
) -> (std::net::SocketAddr, std::sync::mpsc::Receiver<String>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen, requests) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let mut header = String::new();
            let mut headers = Vec::new();
            let mut length = 0;
            while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                if let Some((name, value)) = header.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap_or(0);
                }
                headers.push(header.trim_end().to_owned());
                header.clear();
            }
            let mut request_body = vec![0; length];
            let _ = reader.read_exact(&mut request_body);
            let body = respond(&line, &headers, &String::from_utf8_lossy(&request_body));
            let _ = seen.send(line.split_whitespace().nth(1).unwrap_or("").to_owned());
            let mut stream = reader.into_inner();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (addr, requests)
}

/// HTTP to a granted origin goes out and its answer comes back; another
/// origin (another port, the same host by name) is denied inside the plugin
/// and never reaches the network.
#[test]
fn http_reaches_granted_origins_only() {
    let (granted, requests) = http_server(|_, _| "on".into());
    let (other, other_requests) = http_server(|_, _| "nope".into());
    let server = hostile_granted_http(granted);
    let mut client = server.connect();
    assert_eq!(
        client.request(&format!("http-get http://{granted}/cm?cmnd=Power%20On")),
        "200 on"
    );
    assert_eq!(
        requests.recv_timeout(crate::support::TIMEOUT).unwrap(),
        "/cm?cmnd=Power%20On"
    );
    for url in [
        format!("http://{other}/"),
        format!("http://localhost:{}/", granted.port()),
        format!("https://{granted}/"),
    ] {
        let reply = client.request(&format!("http-get {url}"));
        assert!(
            reply.starts_with("error: denied:") && reply.contains("Denied"),
            "{url}: {reply}"
        );
    }
    assert!(
        other_requests.try_recv().is_err(),
        "a denied request went out"
    );
}

/// A POST carries its body (with its length) to a granted origin; to any
/// other it is denied before a byte is sent, and the plugin is told so.
#[test]
fn http_post_sends_its_body_to_granted_origins_only() {
    let (granted, _) =
        http_server(|line, body| format!("{} {body}", line.split(' ').next().unwrap()));
    let (other, other_requests) = http_server(|_, _| "nope".into());
    let server = hostile_granted_http(granted);
    let mut client = server.connect();
    assert_eq!(
        client.request(&format!("http-post http://{granted}/hook the door is open")),
        "200 POST the door is open"
    );
    let denied = client.request(&format!("http-post http://{other}/hook secret"));
    assert!(denied.contains("HttpRequestDenied"), "{denied}");
    assert!(
        other_requests.try_recv().is_err(),
        "a denied request went out"
    );
}

/// A length the plugin set itself is the request's only one: the SDK adds
/// `content-length` only when the caller has not (two would be a malformed
/// request, which servers refuse).
#[test]
fn a_post_carries_one_content_length_whoever_set_it() {
    let (granted, _) = http_server_with_headers(|_, headers, body| {
        let lengths = headers
            .iter()
            .filter(|header| header.to_ascii_lowercase().starts_with("content-length:"))
            .count();
        format!("{lengths} {body}")
    });
    let server = hostile_granted_http(granted);
    let mut client = server.connect();
    for command in ["http-post", "http-post-sized"] {
        assert_eq!(
            client.request(&format!("{command} http://{granted}/hook lamp on")),
            "200 1 lamp on",
            "{command}"
        );
    }
}

/// The Python example (componentize-py, `http-plugin` world) posts JSON to
/// its webhook once granted; without the grant it says what to grant, and
/// nothing leaves the sandbox.
#[test]
fn the_python_notify_plugin_posts_to_a_granted_webhook() {
    let (posted, posts) = std::sync::mpsc::channel();
    let (hook, _) = http_server(move |line, body| {
        let _ = posted.send(format!("{} {body}", line.trim_end()));
        "{}".into()
    });
    let url = format!("http://{hook}/api/webhook/door");
    let notify = |grant: bool| {
        let setup = Setup::new()
            .guest("notify", "notify")
            .tables(&format!("[plugins.notify.config]\nurl = \"{url}\""));
        match grant {
            true => setup.plugin_config("notify", &format!("allow_http = [\"http://{hook}\"]")),
            false => setup,
        }
        .start()
    };
    let server = notify(true);
    let mut client = server.connect();
    assert_eq!(client.request("notify the door is open"), "sent (HTTP 200)");
    assert_eq!(
        posts.recv_timeout(crate::support::TIMEOUT).unwrap(),
        r#"POST /api/webhook/door HTTP/1.1 {"text": "the door is open"}"#
    );
    drop(server);
    let reply = notify(false).connect().request("notify hello");
    assert_eq!(
        reply,
        format!("error: denied: {url} is not granted (add its origin to allow_http)")
    );
    assert!(posts.try_recv().is_err(), "a denied request went out");
}

/// `hostile` granted HTTP to `origin` only.
fn hostile_granted_http(origin: std::net::SocketAddr) -> crate::support::Server {
    hostile()
        .plugin_config("hostile", &format!("allow_http = [\"http://{origin}\"]"))
        .start()
}

/// Without a grant, no HTTP at all.
#[test]
fn http_without_a_grant_is_denied() {
    let (addr, requests) = http_server(|_, _| "on".into());
    let server = hostile().start();
    let reply = server
        .connect()
        .request(&format!("http-get http://{addr}/"));
    assert!(reply.starts_with("error: denied:"), "{reply}");
    assert!(requests.try_recv().is_err());
}

/// A call waiting on a slow peer gives its CPU place up: with one place,
/// the plugin's other commands run while it waits, and its answer still
/// comes back once the peer replies.
#[test]
fn a_call_waiting_on_http_leaves_its_place_to_others() {
    let (arrived, arrival) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (addr, _requests) = http_server(move |_, _| {
        let _ = arrived.send(());
        let _ = released.recv();
        "late".into()
    });
    let server = hostile()
        .plugin_config("hostile", &format!("allow_http = [\"http://{addr}\"]"))
        .plugin_config("hostile", "max_concurrent_calls = 1")
        .plugin_config("hostile", "call_timeout_ms = 20000")
        .start();
    let mut waiter = server.connect();
    waiter.send(format!("http-get http://{addr}/slow<EOF>").as_bytes());
    arrival.recv_timeout(crate::support::TIMEOUT).unwrap();
    let mut other = server.connect();
    assert_eq!(other.request("depth 10"), "reached 10");
    release.send(()).unwrap();
    assert_eq!(waiter.reply().unwrap(), "200 late");
}

/// A granted peer that accepts and never answers: the call ends at its
/// deadline (wasmtime's own connect and first-byte timeouts are 600 s), and
/// the plugin serves the next command.
#[test]
fn a_peer_that_never_answers_ends_at_the_call_deadline() {
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let server = hostile()
        .plugin_config("hostile", &format!("allow_http = [\"http://{addr}\"]"))
        .plugin_config("hostile", "call_timeout_ms = 300")
        .start();
    let mut client = server.connect();
    assert_eq!(
        client.request(&format!("http-get http://{addr}/")),
        "error: plugin 'hostile' timed out"
    );
    let (_held, _) = silent.accept().unwrap();
    assert_eq!(client.request("depth 3"), "reached 3");
}

/// A device on loopback speaking Tasmota's or Shelly's HTTP API, with a
/// relay that remembers its state; it reports each request's target.
fn fake_device(shelly: bool) -> (std::net::SocketAddr, std::sync::mpsc::Receiver<String>) {
    let mut on = false;
    http_server(move |line, _| {
        if line.contains("Power%20On") || line.contains("turn=on") {
            on = true;
        } else if line.contains("Power%20Off") || line.contains("turn=off") {
            on = false;
        }
        match (shelly, on) {
            (false, true) => r#"{"POWER":"ON"}"#.to_owned(),
            (false, false) => r#"{"POWER":"OFF"}"#.to_owned(),
            (true, on) => format!(r#"{{"ison": {on}, "source": "http"}}"#),
        }
    })
}

/// The shipped relay plugin drives a real (loopback) device through its
/// HTTP API, with the origin granted and the URL in its config.
#[test]
fn the_relay_plugin_switches_a_device_over_http() {
    for (firmware, shelly, on_path) in [
        ("tasmota", false, "/cm?cmnd=Power%20On"),
        ("shelly", true, "/relay/0?turn=on"),
    ] {
        let (device, requests) = fake_device(shelly);
        let server = Setup::new()
            .plugin("relay", "relay")
            .plugin_config("relay", &format!("allow_http = [\"http://{device}\"]"))
            .tables(&format!(
                "[plugins.relay.config]\nurl = \"http://{device}\"\nfirmware = \"{firmware}\""
            ))
            .start();
        let mut client = server.connect();
        assert_eq!(client.request("relay-status"), "off", "{firmware}");
        assert_eq!(client.request("relay-on"), "on", "{firmware}");
        assert_eq!(client.request("relay-status"), "on", "{firmware}");
        assert_eq!(client.request("relay-off"), "off", "{firmware}");
        let paths: Vec<String> = requests.try_iter().collect();
        assert_eq!(paths.len(), 4, "{firmware}: {paths:?}");
        assert_eq!(paths[1], on_path, "{firmware}");
    }
}

/// Without the grant, the relay says why instead of reaching the device.
#[test]
fn the_relay_plugin_without_a_grant_reaches_nothing() {
    let (device, requests) = fake_device(false);
    let server = Setup::new()
        .plugin("relay", "relay")
        .tables(&format!(
            "[plugins.relay.config]\nurl = \"http://{device}\""
        ))
        .start();
    let reply = server.connect().request("relay-on");
    assert!(
        reply.starts_with("error: device unreachable") && reply.contains("Denied"),
        "{reply}"
    );
    assert!(requests.try_recv().is_err());
}

/// A SIGHUP that grants an origin applies to the plugin's next instances:
/// the same connection reaches the device after it.
#[test]
fn a_sighup_applies_changed_grants() {
    let (device, _requests) = fake_device(false);
    let config = format!("[plugins.relay.config]\nurl = \"http://{device}\"");
    let server = Setup::new()
        .plugin("relay", "relay")
        .tables(&config)
        .start();
    let mut client = server.connect();
    let denied = client.request("relay-on");
    assert!(denied.contains("Denied"), "{denied}");
    let text = std::fs::read_to_string(&server.config_path).unwrap();
    let granted = text.replace(
        "[plugins.relay.config]",
        &format!("[plugins.relay]\nallow_http = [\"http://{device}\"]\n[plugins.relay.config]"),
    );
    std::fs::write(&server.config_path, granted).unwrap();
    server.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(server.log.wait_for("config reloaded").is_some());
    assert_eq!(client.request("relay-on"), "on");
}

/// A granted directory removed while the server runs, then the plugin
/// reloaded: its instances go without the directory, and its other grants
/// hold.
#[test]
fn a_granted_directory_gone_leaves_the_other_grants() {
    let data = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let granted = listener.local_addr().unwrap();
    let server = hostile()
        .plugin_config("hostile", &format!("allow_tcp = [\"{granted}\"]"))
        .tables(&format!(
            "[plugins.hostile.dirs]\n\"/data\" = {:?}",
            data.path()
        ))
        .start();
    let path = data.path().to_owned();
    drop(data);
    assert!(!path.exists());
    // Other bytes, same plugin: reloaded, its setup made anew.
    let wasm = server.plugin_dir.join("hostile.wasm");
    let changed = crate::reload::with_custom_section(std::fs::read(&wasm).unwrap());
    std::fs::write(&wasm, changed).unwrap();
    assert!(server.log.wait_for("plugin set updated").is_some());
    let mut client = server.connect();
    let reply = client.request("open-file /data/anything");
    assert!(reply.starts_with("error: denied:"), "{reply}");
    assert_eq!(client.request(&format!("connect {granted}")), "connected");
}
