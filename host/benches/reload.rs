//! Hot-reload latency and restart time, measured on the real binary.
//!
//! - Reload latency: from the moment a new plugin file is complete (written
//!   and closed) to the first reply from the new version, over 20 swaps
//!   between two versions of `onoff.wasm`.
//! - Restart time: from spawning `plugboard serve` to its first reply, with
//!   a cold compile cache and with a warm one.
//!
//! Prints figures; asserts nothing about time. Run with `make bench-reload`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SWAPS: usize = 20;
const RESTARTS: usize = 5;

fn built_plugin(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../target/wasm32-wasip2/release/{name}.wasm"));
    std::fs::read(&path)
        .unwrap_or_else(|_| panic!("{} missing: run `make plugins`", path.display()))
}

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the server on `dir`'s config and waits for its address.
fn start(dir: &Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_plugboard"))
        .args(["serve", "--config"])
        .arg(dir.join("config.toml"))
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
    Server { child, addr }
}

fn request(stream: &mut TcpStream, message: &str) -> String {
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

fn setup(cache: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("plugins")).unwrap();
    std::fs::write(dir.path().join("plugins/onoff.wasm"), built_plugin("onoff")).unwrap();
    let config =
        format!("listen = \"127.0.0.1:0\"\nplugin_dir = \"plugins\"\ncache_dir = {cache:?}\n");
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    dir
}

fn reload_latency() -> Vec<Duration> {
    let cache = tempfile::tempdir().unwrap();
    let dir = setup(cache.path());
    let server = start(dir.path());
    let mut client = TcpStream::connect(&server.addr).unwrap();
    let versions = [
        (built_plugin("testing_rival"), "rival on"),
        (built_plugin("onoff"), "success"),
    ];
    let target: PathBuf = dir.path().join("plugins/onoff.wasm");
    (0..SWAPS)
        .map(|swap| {
            let (bytes, reply) = &versions[swap % 2];
            // Unique bytes per swap, as a rebuild produces: every reload compiles.
            std::fs::write(&target, tagged(bytes, swap)).unwrap();
            let complete = Instant::now();
            while request(&mut client, "on") != *reply {
                assert!(complete.elapsed() < Duration::from_secs(30), "no reload");
            }
            complete.elapsed()
        })
        .collect()
}

/// `component` with a custom section naming `tag` appended: the same plugin,
/// different bytes.
fn tagged(component: &[u8], tag: usize) -> Vec<u8> {
    let name = format!("swap-{tag}");
    let mut bytes = component.to_vec();
    bytes.extend_from_slice(&[0, name.len() as u8 + 1, name.len() as u8]);
    bytes.extend_from_slice(name.as_bytes());
    bytes
}

fn restart_time(cache: &Path, cold: bool) -> Duration {
    if cold {
        let _ = std::fs::remove_dir_all(cache);
    }
    let dir = setup(cache);
    let started = Instant::now();
    let server = start(dir.path());
    let mut client = TcpStream::connect(&server.addr).unwrap();
    assert_eq!(request(&mut client, "on"), "success");
    started.elapsed()
}

fn summary(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "median {:.1} ms, min {:.1} ms, max {:.1} ms ({} runs)",
        ms(samples[samples.len() / 2]),
        ms(samples[0]),
        ms(samples[samples.len() - 1]),
        samples.len()
    )
}

fn main() {
    let latency = reload_latency();
    println!(
        "reload latency (file complete -> first reply from the new version): {}",
        summary(latency)
    );

    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().join("cache");
    let cold: Vec<_> = (0..RESTARTS)
        .map(|_| restart_time(&cache_dir, true))
        .collect();
    let warm: Vec<_> = (0..RESTARTS)
        .map(|_| restart_time(&cache_dir, false))
        .collect();
    println!(
        "start to first reply, cold compile cache: {}",
        summary(cold)
    );
    println!(
        "start to first reply, warm compile cache: {}",
        summary(warm)
    );
}
