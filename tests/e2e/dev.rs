//! `plugboard dev`: projects made by `plugboard new` built, served, and
//! rebuilt and reloaded on every edit.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::support::{COMPILE_TIMEOUT, Client, Log, plugboard};

/// A running `plugboard dev`, stopped when dropped.
struct Dev {
    child: Child,
    log: Log,
    addr: std::net::SocketAddr,
}

impl Dev {
    fn start(projects: &[&Path]) -> Self {
        // Rust builds share one target directory between test runs.
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("scaffold-target");
        let mut child = plugboard()
            .arg("dev")
            .args(projects)
            .args(["--listen", "127.0.0.1:0"])
            .env("CARGO_TARGET_DIR", target)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn plugboard dev");
        let log = Log::capture(child.stderr.take().unwrap());
        let Some(line) = log.wait_for_within("listening on ", COMPILE_TIMEOUT) else {
            let _ = child.kill();
            panic!("dev did not start:\n{}", log.text());
        };
        let addr = line.split("listening on ").nth(1).unwrap().trim();
        let addr = addr.parse().unwrap_or_else(|_| panic!("{line}"));
        Self { child, log, addr }
    }

    fn request(&self, command: &str) -> String {
        Client::connect(self.addr).request(command)
    }

    /// Edits `file` and waits until the server has reloaded `reloads` times.
    fn edit(&self, file: &Path, from: &str, to: &str, reloads: usize) {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(text.contains(from), "{text}");
        std::fs::write(file, text.replace(from, to)).unwrap();
        let reloaded =
            self.log
                .wait_for_count_within("plugin set updated", reloads, COMPILE_TIMEOUT);
        assert!(reloaded, "no reload:\n{}", self.log.text());
    }
}

impl Drop for Dev {
    /// SIGTERM, so that dev removes its plugin directory as it ends.
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

fn new_project(parent: &Path, name: &str, lang: &str) -> PathBuf {
    let created = plugboard()
        .args(["new", name, "--lang", lang, "--dir"])
        .arg(parent)
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    parent.join(name)
}

/// A Rust and a Python project: built and served at start; an edit to
/// either is rebuilt and served with no other step; a broken edit prints
/// the compiler's complaint and the last good version keeps serving.
#[test]
fn dev_rebuilds_and_reloads_projects_on_edit() {
    let projects = tempfile::tempdir().unwrap();
    let rust = new_project(projects.path(), "dev-rust", "rust");
    let python = new_project(projects.path(), "dev-py", "python");
    let dev = Dev::start(&[&rust, &python]);
    assert_eq!(dev.request("dev-rust Ada"), "hello, Ada");
    assert_eq!(dev.request("dev-py Ada"), "hello, Ada");

    let rust_source = rust.join("src/lib.rs");
    dev.edit(&rust_source, "\"hello, {who}\"", "\"howdy, {who}\"", 1);
    assert_eq!(dev.request("dev-rust Ada"), "howdy, Ada");
    dev.edit(
        &python.join("app.py"),
        "f\"hello, {who}\"",
        "f\"hiya, {who}\"",
        2,
    );
    assert_eq!(dev.request("dev-py Ada"), "hiya, Ada");

    let text = std::fs::read_to_string(&rust_source).unwrap();
    std::fs::write(&rust_source, text.replace("Ok(format!", "Ok(format!(")).unwrap();
    let failed = dev
        .log
        .wait_for_within("build of dev_rust.wasm failed", COMPILE_TIMEOUT);
    assert!(failed.is_some(), "{}", dev.log.text());
    assert!(
        dev.log.text().contains("src/lib.rs:"),
        "the compiler's output"
    );
    assert_eq!(dev.request("dev-rust Ada"), "howdy, Ada");
}

/// What is not a project is refused, with the reason.
#[test]
fn dev_refuses_a_directory_that_is_not_a_project() {
    let empty = tempfile::tempdir().unwrap();
    let output = Command::new(crate::support::plugboard_path())
        .arg("dev")
        .arg(empty.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("has no Makefile"), "{stderr}");
}
