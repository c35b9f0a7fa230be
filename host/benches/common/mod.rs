//! What the benchmarks that drive the real binary share: built plugins, a
//! server process and a blocking request.

#![allow(dead_code)] // Each benchmark uses its own part of this.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A Rust plugin built by `make plugins`.
pub fn built_plugin(name: &str) -> Vec<u8> {
    read_built(&format!("../target/wasm32-wasip2/release/{name}.wasm"))
}

/// A Python or JavaScript plugin built by `make plugins`.
pub fn guest_plugin(name: &str) -> Vec<u8> {
    read_built(&format!("../target/guest/{name}.wasm"))
}

fn read_built(relative: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read(&path)
        .unwrap_or_else(|_| panic!("{} missing: run `make plugins`", path.display()))
}

/// A directory with `plugins/` holding `plugins` and a `config.toml` of
/// `config` plus a free loopback port.
pub fn setup(plugins: &[(&str, Vec<u8>)], config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("plugins")).unwrap();
    for (name, bytes) in plugins {
        std::fs::write(dir.path().join(format!("plugins/{name}.wasm")), bytes).unwrap();
    }
    let config = format!("listen = \"127.0.0.1:0\"\nplugin_dir = \"plugins\"\n{config}\n");
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    dir
}

/// A running `plugboard serve`, killed on drop.
pub struct Server {
    child: Child,
    pub addr: String,
}

impl Server {
    /// Starts the server on `dir`'s config and waits for its address.
    pub fn start(dir: &Path) -> Self {
        Self::start_with(Command::new(env!("CARGO_BIN_EXE_plugboard")), dir, &[])
    }

    /// Starts `command` (the binary, perhaps behind `taskset`) as `serve`
    /// with `extra` arguments.
    pub fn start_with(mut command: Command, dir: &Path, extra: &[&str]) -> Self {
        let mut child = command
            .args(["serve", "--config"])
            .arg(dir.join("config.toml"))
            .args(extra)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn plugboard");
        let stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let mut lines = stderr.lines();
        let addr = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|line| {
                line.split("listening on ")
                    .nth(1)
                    .map(|a| a.trim().to_owned())
            })
            .expect("server did not start");
        // Keep draining the log so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Self { child, addr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the server process, from /proc.
    pub fn resident_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib: f64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kib / 1024.0
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one command and waits for its reply.
pub fn request(stream: &mut TcpStream, message: &str) -> String {
    stream
        .write_all(format!("{message}<EOF>").as_bytes())
        .unwrap();
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"<EOF>") {
        match stream.read(&mut byte) {
            Ok(0) => panic!("connection closed"),
            Ok(_) => reply.push(byte[0]),
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => panic!("read: {err}"),
        }
    }
    String::from_utf8_lossy(&reply[..reply.len() - 5]).into_owned()
}

/// Ends `component` with a custom section naming `tag`: the same plugin,
/// different bytes (as a rebuild makes).
pub fn tagged(component: &[u8], tag: usize) -> Vec<u8> {
    let name = format!("swap-{tag}");
    let mut bytes = component.to_vec();
    bytes.extend_from_slice(&[0, name.len() as u8 + 1, name.len() as u8]);
    bytes.extend_from_slice(name.as_bytes());
    bytes
}
