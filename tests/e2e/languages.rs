//! Plugins written in other languages, built by `make plugins` from
//! `plugins/<language>/`, served through the real protocol.

use crate::support::Setup;

#[test]
fn python_stats_plugin_is_served() {
    let server = Setup::new()
        .guest("stats", "stats")
        .plugin("onoff", "onoff")
        .start();
    let mut client = server.connect();
    assert_eq!(
        client.request("stats 1 2 3 4"),
        "count=4 mean=2.5 median=2.5 min=1 max=4 stdev=1.29099"
    );
    assert_eq!(client.request("stats 1 x"), "error: not a number: 'x'");
    assert_eq!(
        client.request("stats"),
        "error: stats needs numbers, e.g. `stats 1 2 3`"
    );
    // Beside a Rust plugin, on the same connection.
    assert_eq!(client.request("on"), "success");
    assert_eq!(
        client.request("stats 5"),
        "count=1 mean=5 median=5 min=5 max=5 stdev=0"
    );
}

#[test]
fn javascript_text_plugin_is_served() {
    let server = Setup::new()
        .guest("text", "text")
        .plugin("onoff", "onoff")
        .start();
    let mut client = server.connect();
    assert_eq!(client.request("upper hello,  world"), "HELLO,  WORLD");
    assert_eq!(
        client.request(r#"json-get a.b.1 {"a": {"b": [1, "two"]}}"#),
        "two"
    );
    assert_eq!(
        client.request(r#"json-get a {"a": {"b": 1}}"#),
        r#"{"b":1}"#
    );
    assert_eq!(
        client.request(r#"json-get a.x {"a": {}}"#),
        "error: no value at 'a.x'"
    );
    assert!(
        client
            .request("json-get a {bad")
            .starts_with("error: invalid JSON")
    );
    assert_eq!(client.request("on"), "success");
}

/// Every client the server allows, all calling the Python plugin at once
/// (each instance holds 14 core instances), is served: none is told the
/// server is busy.
#[test]
fn every_allowed_client_of_the_python_plugin_is_served_at_once() {
    let server = Setup::new()
        .guest("stats", "stats")
        .config("max_connections = 64")
        .config("max_connections_per_ip = 64")
        .start();
    let mut clients: Vec<_> = (0..64).map(|_| server.connect()).collect();
    for _ in 0..3 {
        for client in &mut clients {
            client.send(b"stats 1 2 3<EOF>");
        }
        for client in &mut clients {
            let reply = client.reply().expect("a reply");
            assert!(reply.starts_with("count=3 mean=2"), "{reply}");
        }
    }
}
