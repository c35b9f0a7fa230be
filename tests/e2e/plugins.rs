//! Loading and calling plugins: failures stay with the plugin or the file.

use crate::support::Setup;

#[test]
fn plugin_error_is_an_error_reply() {
    let server = Setup::new().plugin("testing_echo", "echo").start();
    let mut client = server.connect();
    assert_eq!(client.request("fail not today"), "error: not today");
}

#[test]
fn panicking_plugin_fails_only_that_command() {
    let server = Setup::new()
        .plugin("testing_echo", "echo")
        .plugin("onoff", "onoff")
        .start();
    let mut client = server.connect();
    assert_eq!(client.request("panic"), "error: plugin 'echo' failed");
    // The same connection and the same plugin keep working.
    assert_eq!(client.request("echo still here"), "still here");
    assert_eq!(client.request("on"), "success");
}

#[test]
fn invalid_files_are_skipped_and_the_rest_is_served() {
    let server = Setup::new()
        .plugin("onoff", "onoff")
        .file("garbage.wasm", b"this is not wasm")
        .file("core.wasm", b"\0asm\x01\0\0\0")
        .file("notes.txt", b"not a plugin, not even looked at")
        .start();
    assert_eq!(server.connect().request("on"), "success");
    assert!(server.log.wait_for_count("rejected plugin file", 2));
    let rejection = |file: &str| {
        let text = server.log.text();
        let line = text
            .lines()
            .find(|line| line.contains("rejected plugin file") && line.contains(file));
        line.unwrap_or_else(|| panic!("{file} not rejected:\n{text}"))
            .to_owned()
    };
    let garbage = rejection("garbage.wasm");
    assert!(garbage.contains("not a WebAssembly file"), "{garbage}");
    let core = rejection("core.wasm");
    assert!(core.contains("not a component"), "{core}");
    assert!(!server.log.text().contains("notes.txt"));
}

#[test]
fn empty_plugin_dir_serves_only_errors() {
    let server = Setup::new().start();
    assert_eq!(
        server.connect().request("on"),
        "error: unknown command 'on'"
    );
}

#[test]
fn contested_command_goes_to_the_first_plugin_by_file_name() {
    let server = Setup::new()
        .plugin("onoff", "onoff")
        .plugin("testing_rival", "rival")
        .start();
    assert_eq!(server.connect().request("on"), "success");
    let conflict = server
        .log
        .wait_for("two plugins claim")
        .expect("conflict logged");
    assert!(
        conflict.contains("onoff") && conflict.contains("rival"),
        "{conflict}"
    );
}

#[test]
fn contested_command_winner_follows_file_names_not_crates() {
    let server = Setup::new()
        .plugin("onoff", "onoff")
        .plugin("testing_rival", "a-rival")
        .start();
    let mut client = server.connect();
    assert_eq!(client.request("on"), "rival on");
    // Uncontested commands of the loser are still served.
    assert_eq!(client.request("off"), "success");
}

#[test]
fn plugin_output_goes_to_the_host_log_tagged_with_the_plugin() {
    let server = Setup::new().plugin("testing_echo", "echo").start();
    assert_eq!(server.connect().request("print hello there"), "printed");
    for needle in [
        "stdout: hello there",
        "stderr: hello there",
        "log: hello there",
    ] {
        let line = server.log.wait_for(needle).expect(needle);
        assert!(line.contains("plugin=\"echo\""), "{line}");
    }
}
