//! `plugboard dev` as the tests and the author's-loop benchmark run it:
//! projects made by `plugboard new`, served by a `dev` process that is
//! stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use crate::{COMPILE_TIMEOUT, Client, Log, plugboard, tmp_dir};

/// A running `plugboard dev`, stopped when dropped.
pub struct Dev {
    child: Child,
    pub log: Log,
    pub addr: std::net::SocketAddr,
}

impl Dev {
    pub fn start(projects: &[&Path]) -> Self {
        Self::start_with(projects, &[])
    }

    pub fn start_with(projects: &[&Path], args: &[&str]) -> Self {
        // Rust builds share one target directory between test runs.
        let target = tmp_dir().join("scaffold-target");
        let mut child = plugboard()
            .arg("dev")
            .args(projects)
            .args(args)
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

    /// The `dev` process's id (its memory is measured).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn request(&self, command: &str) -> String {
        Client::connect(self.addr).request(command)
    }

    /// Edits `file` and waits until the server has reloaded `reloads` times.
    pub fn edit(&self, file: &Path, from: &str, to: &str, reloads: usize) {
        replace_in(file, from, to);
        let reloaded =
            self.log
                .wait_for_count_within("plugin set updated", reloads, COMPILE_TIMEOUT);
        assert!(reloaded, "no reload:\n{}", self.log.text());
    }

    /// Edits a runner project's `file` and waits until the server loaded
    /// or rejected the new source of `plugin`: what it logged either way.
    pub fn edit_source(&self, file: &Path, from: &str, to: &str, plugin: &str) -> String {
        let of_plugin = format!("plugin=\"{plugin}\"");
        let lines = || -> Vec<String> {
            let text = self.log.text();
            let lines = text.lines().filter(|line| line.contains("from its source"));
            lines
                .filter(|line| line.contains(&of_plugin))
                .map(str::to_owned)
                .collect()
        };
        let before = lines().len();
        let mut seen = self.log.count("from its source");
        replace_in(file, from, to);
        loop {
            if let Some(line) = lines().into_iter().nth(before) {
                return line;
            }
            seen += 1;
            let loaded = self
                .log
                .wait_for_count_within("from its source", seen, COMPILE_TIMEOUT);
            assert!(loaded, "the edit was not loaded:\n{}", self.log.text());
        }
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

/// Replaces `from` by `to` in `file`, as an editor saves it.
pub fn replace_in(file: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.contains(from), "{text}");
    std::fs::write(file, text.replace(from, to)).unwrap();
}

/// A project made by `plugboard new NAME --lang LANG` in `parent`.
pub fn new_project(parent: &Path, name: &str, lang: &str) -> PathBuf {
    let created = plugboard()
        .args(["new", name, "--lang", lang, "--dir"])
        .arg(parent)
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    parent.join(name)
}
