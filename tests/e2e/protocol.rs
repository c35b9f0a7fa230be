//! The wire protocol: framing, pipelining, bad input.

use std::thread;

use crate::support::{Client, Server, Setup};

fn onoff_and_echo() -> Server {
    Setup::new()
        .plugin("onoff", "onoff")
        .plugin("testing_echo", "echo")
        .start()
}

#[test]
fn on_and_off_reply_success() {
    let server = onoff_and_echo();
    let mut client = server.connect();
    assert_eq!(client.request("on"), "success");
    assert_eq!(client.request("off"), "success");
}

#[test]
fn unknown_command_is_an_error_and_the_connection_stays_open() {
    let server = onoff_and_echo();
    let mut client = server.connect();
    assert_eq!(client.request("dance"), "error: unknown command 'dance'");
    assert_eq!(client.request("on"), "success");
}

#[test]
fn surrounding_whitespace_is_trimmed() {
    let server = onoff_and_echo();
    let mut client = server.connect();
    assert_eq!(client.request("\r\n  on \r\n"), "success");
    assert_eq!(client.request(" echo  a  b "), "a  b");
}

#[test]
fn command_sent_byte_by_byte() {
    let server = onoff_and_echo();
    let mut client = server.connect();
    for byte in b"on<EOF>" {
        client.send(&[*byte]);
    }
    assert_eq!(client.reply().unwrap(), "success");
}

#[test]
fn delimiter_split_across_writes() {
    let server = onoff_and_echo();
    let mut client = server.connect();
    client.send(b"on<E");
    client.send(b"OF>");
    assert_eq!(client.reply().unwrap(), "success");
}

#[test]
fn three_commands_in_one_write_reply_in_order() {
    let server = onoff_and_echo();
    let mut client = server.connect();
    client.send(b"echo 1<EOF>dance<EOF>echo 3<EOF>");
    assert_eq!(client.reply().unwrap(), "1");
    assert_eq!(client.reply().unwrap(), "error: unknown command 'dance'");
    assert_eq!(client.reply().unwrap(), "3");
}

#[test]
fn thousand_pipelined_commands_on_one_connection() {
    let server = onoff_and_echo();
    let mut client = server.connect();
    let wire: String = (0..1000).map(|i| format!("echo {i}<EOF>")).collect();
    client.send(wire.as_bytes());
    for i in 0..1000 {
        assert_eq!(client.reply().unwrap(), i.to_string());
    }
}

#[test]
fn one_shot_connections() {
    let server = onoff_and_echo();
    for _ in 0..20 {
        let mut client = server.connect();
        assert_eq!(client.request("on"), "success");
    }
}

#[test]
fn half_closed_client_still_gets_every_reply() {
    let server = onoff_and_echo();
    let mut client = server.connect();
    client.send(b"on<EOF>echo x<EOF>off<EOF>");
    client.close_write();
    assert_eq!(client.reply().unwrap(), "success");
    assert_eq!(client.reply().unwrap(), "x");
    assert_eq!(client.reply().unwrap(), "success");
    client.expect_closed();
}

#[test]
fn empty_message_is_an_error() {
    let server = onoff_and_echo();
    let mut client = server.connect();
    assert_eq!(client.request(""), "error: empty message");
    assert_eq!(client.request(" \r\n"), "error: empty message");
    assert_eq!(client.request("on"), "success");
}

#[test]
fn invalid_utf8_is_an_error() {
    let server = onoff_and_echo();
    let mut client = server.connect();
    client.send(b"on\xff\xfe<EOF>");
    assert_eq!(client.reply().unwrap(), "error: message is not valid UTF-8");
    assert_eq!(client.request("on"), "success");
}

#[test]
fn oversized_frame_is_refused_and_the_connection_closed() {
    let server = Setup::new()
        .plugin("onoff", "onoff")
        .config("max_frame_bytes = 1024")
        .start();
    let mut client = server.connect();
    client.send(&vec![b'a'; 4096]);
    assert_eq!(client.reply().unwrap(), "error: frame too large");
    client.expect_closed();
    // Nothing else is affected.
    assert_eq!(server.connect().request("on"), "success");
}

#[test]
fn frame_of_exactly_max_bytes_is_accepted() {
    let server = Setup::new()
        .plugin("testing_echo", "echo")
        .config("max_frame_bytes = 1024")
        .start();
    let mut client = server.connect();
    let text = "x".repeat(1024 - "echo ".len());
    assert_eq!(client.request(&format!("echo {text}")), text);
}

#[test]
fn unterminated_last_message_is_reported_before_closing() {
    let server = onoff_and_echo();
    let mut client = server.connect();
    client.send(b"on<EOF>off");
    client.close_write();
    assert_eq!(client.reply().unwrap(), "success");
    assert_eq!(
        client.reply().unwrap(),
        "error: incomplete message at end of stream (no delimiter)"
    );
    client.expect_closed();
}

#[test]
fn reply_containing_the_delimiter_is_refused() {
    let server = onoff_and_echo();
    let mut client = server.connect();
    assert_eq!(
        client.request("delimiter"),
        "error: plugin 'echo' returned a reply containing the delimiter"
    );
    assert_eq!(client.request("on"), "success");
}

#[test]
fn hundred_concurrent_clients() {
    let server = onoff_and_echo();
    let addr = server.addr;
    let clients: Vec<_> = (0..100)
        .map(|c| {
            thread::spawn(move || {
                let mut client = Client::connect(addr);
                for i in 0..20 {
                    let text = format!("client {c} message {i}");
                    assert_eq!(client.request(&format!("echo {text}")), text);
                }
            })
        })
        .collect();
    for client in clients {
        client.join().expect("client thread");
    }
}
