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
