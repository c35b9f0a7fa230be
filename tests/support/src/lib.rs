//! What the end-to-end tests and the benchmarks share: the real `plugboard`
//! binary run on 127.0.0.1:0 with real plugins built from `plugins/` (by
//! `make plugins`), its log, and a client over real TCP.
//!
//! Readiness is the server's own "listening on ADDR" log line, not a sleep.
//! Every blocking read has a timeout so that a broken server fails a test
//! instead of hanging it.
//!
//! A dev-only crate: the host's unit tests use its test plugins, the
//! end-to-end tests (`tests/e2e`) and the benchmarks the rest. It finds the
//! build it belongs to from the running test's own path, as cargo lays a
//! build out: `<target>/<profile>/deps/<test>` beside `<profile>/plugboard`.

pub mod components;
pub mod dev;
pub mod flood;
pub mod services;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long any single wait in a test may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(20);
/// For waits that include compiling a plugin: an 18 MB Python component takes
/// ~13 s on a cold compile cache, more while other tests load the machine.
pub const COMPILE_TIMEOUT: Duration = Duration::from_secs(180);

pub const DELIMITER: &[u8] = b"<EOF>";

/// A loopback port free right now, for a service that binds the address it
/// is configured with (a metrics listener, Redis, HAProxy) rather than
/// reporting the one it got.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// A plugin built by `make plugins`, by crate file name (`onoff`, `testing_echo`).
pub fn built_plugin(name: &str) -> PathBuf {
    expect_built(target_dir().join(format!("wasm32-wasip2/release/{name}.wasm")))
}

/// A plugin in another language, built into `target/guest` by `make plugins`.
pub fn built_guest(name: &str) -> PathBuf {
    expect_built(target_dir().join(format!("guest/{name}.wasm")))
}

/// The build profile's directory (`target/release`): the running test or
/// benchmark is in its `deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    exe.parent()
        .and_then(Path::parent)
        .expect("a test runs from <target>/<profile>/deps")
        .to_owned()
}

fn target_dir() -> PathBuf {
    profile_dir()
        .parent()
        .expect("a profile directory is in the target directory")
        .to_owned()
}

/// Scratch space that outlives a test run, as cargo's `CARGO_TARGET_TMPDIR`.
pub fn tmp_dir() -> PathBuf {
    target_dir().join("tmp")
}

fn expect_built(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: build the plugins first (`make plugins`, or just `make test`)",
        path.display()
    );
    path
}

/// The compile cache every test server shares (see `Setup::new`).
pub fn shared_cache_dir() -> PathBuf {
    tmp_dir().join("compile-cache")
}

/// The bytes of a plugin built by `make plugins` (see [`built_plugin`]).
pub fn built_plugin_bytes(name: &str) -> Vec<u8> {
    std::fs::read(built_plugin(name)).expect("read built plugin")
}

/// A command's standard output, as text.
pub fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A command's standard error, as text.
pub fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The binary, with the user's compile cache (`check`, `call`) in the
/// tests' shared cache and the prompt's history in the tests' own place,
/// never the home directory.
pub fn plugboard() -> Command {
    let mut command = Command::new(plugboard_path());
    command
        .env("XDG_CACHE_HOME", shared_cache_dir())
        .env("XDG_STATE_HOME", tmp_dir().join("state-home"));
    command
}

/// The `plugboard` binary of this build (cargo builds it for the
/// end-to-end tests and benchmarks).
pub fn plugboard_path() -> &'static str {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        profile_dir()
            .join("plugboard")
            .to_string_lossy()
            .into_owned()
    })
}

/// A server's plugin directory and config, before it starts.
pub struct Setup {
    dir: TempDir,
    /// Top-level `key = value` lines; a later line for a key replaces the earlier one.
    config: Vec<String>,
    /// `[plugins.<name>]` tables, by plugin name.
    plugin_tables: std::collections::BTreeMap<String, Vec<String>>,
    /// Other tables, as written.
    extra_tables: Vec<String>,
    args: Vec<String>,
    /// The server's RUST_LOG.
    log_filter: &'static str,
}

/// What runs `plugboard serve`: the binary itself, or a launcher that runs
/// it (the benchmarks pin it to a core with `taskset`; a test may run it in
/// a network namespace of its own).
pub type Launcher = Arc<dyn Fn() -> Command + Send + Sync>;

impl Default for Setup {
    fn default() -> Self {
        Self::new()
    }
}

impl Setup {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("plugins")).expect("plugin dir");
        Self {
            dir,
            config: vec![
                "listen = \"127.0.0.1:0\"".into(),
                "plugin_dir = \"plugins\"".into(),
                // One cache for every test: the warm path is exercised and
                // the suite does not recompile each plugin per server.
                format!("cache_dir = {:?}", shared_cache_dir()),
            ],
            plugin_tables: Default::default(),
            extra_tables: Vec::new(),
            args: Vec::new(),
            log_filter: "info",
        }
    }

    /// Copies the built plugin `crate_file` into the plugin dir as `as_name.wasm`.
    pub fn plugin(self, crate_file: &str, as_name: &str) -> Self {
        let dest = self.plugin_dir().join(format!("{as_name}.wasm"));
        std::fs::copy(built_plugin(crate_file), dest).expect("copy plugin");
        self
    }

    /// Copies a plugin in another language, built into `target/guest` by
    /// `make plugins`, into the plugin dir as `as_name.wasm`.
    pub fn guest(self, file: &str, as_name: &str) -> Self {
        let dest = self.plugin_dir().join(format!("{as_name}.wasm"));
        std::fs::copy(built_guest(file), dest).expect("copy guest plugin");
        self
    }

    /// Writes arbitrary bytes into the plugin dir (for invalid plugins).
    pub fn file(self, name: &str, bytes: &[u8]) -> Self {
        std::fs::write(self.plugin_dir().join(name), bytes).expect("write file");
        self
    }

    /// Adds a `key = value` line to the config, replacing any for that key.
    pub fn config(mut self, line: &str) -> Self {
        let key = |line: &str| line.split('=').next().unwrap_or("").trim().to_owned();
        self.config.retain(|existing| key(existing) != key(line));
        self.config.push(line.into());
        self
    }

    /// State kept on `disk` (a small file system the test fills), with a
    /// plugin quota the disk reaches first.
    pub fn state_on(self, disk: &Tmpfs) -> Self {
        self.config(&format!("state_dir = {:?}", disk.path().join("state")))
            .config("max_bytes_per_plugin = 1000000000")
    }

    /// An extra argument for `plugboard serve`.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.into());
        self
    }

    /// The server's log filter (RUST_LOG); `info` by default.
    pub fn log_filter(mut self, filter: &'static str) -> Self {
        self.log_filter = filter;
        self
    }

    /// Appends TOML after the top-level keys (tables such as `[[auth.tokens]]`).
    pub fn tables(mut self, toml: &str) -> Self {
        self.extra_tables.push(toml.into());
        self
    }

    /// Adds a `key = value` line to the `[plugins.<plugin>]` table.
    pub fn plugin_config(mut self, plugin: &str, line: &str) -> Self {
        self.plugin_tables
            .entry(plugin.into())
            .or_default()
            .push(line.into());
        self
    }

    pub fn plugin_dir(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    /// Where the disk store keeps its files: the default `state_dir`,
    /// beside the config.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("plugboard-state")
    }

    pub fn config_path(&self) -> PathBuf {
        let path = self.dir.path().join("config.toml");
        let mut text = self.config.join("\n");
        for (plugin, lines) in &self.plugin_tables {
            text.push_str(&format!("\n[plugins.{plugin}]\n{}", lines.join("\n")));
        }
        for table in &self.extra_tables {
            text.push_str(&format!("\n{table}\n"));
        }
        std::fs::write(&path, text).expect("write config");
        path
    }

    pub fn start(self) -> Server {
        self.start_with(plugboard)
    }

    /// Starts the server without waiting for it to listen (it may still be
    /// loading plugins); its `addr` is unknown (0.0.0.0:0).
    pub fn start_loading(self) -> Server {
        let config_path = self.config_path();
        spawn(
            Arc::new(plugboard),
            config_path,
            self.args,
            self.log_filter,
            self.dir,
            false,
        )
    }

    /// Starts the server through `launcher` (see [`Launcher`]).
    pub fn start_with(self, launcher: impl Fn() -> Command + Send + Sync + 'static) -> Server {
        let launcher: Launcher = Arc::new(launcher);
        let config_path = self.config_path();
        spawn_server(launcher, config_path, self.args, self.log_filter, self.dir)
    }
}

/// Starts `plugboard serve` on `config_path` and waits until it listens.
/// The server owns `dir` (its config, plugins and state) until dropped.
fn spawn_server(
    launcher: Launcher,
    config_path: PathBuf,
    args: Vec<String>,
    log_filter: &'static str,
    dir: TempDir,
) -> Server {
    spawn(launcher, config_path, args, log_filter, dir, true)
}

/// Starts `plugboard serve`, waiting until it listens if `wait_ready`.
fn spawn(
    launcher: Launcher,
    config_path: PathBuf,
    args: Vec<String>,
    log_filter: &'static str,
    dir: TempDir,
    wait_ready: bool,
) -> Server {
    let mut child = launcher()
        .arg("serve")
        .arg("--config")
        .arg(&config_path)
        .args(&args)
        .env("RUST_LOG", log_filter)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plugboard");
    let log = Log::capture(child.stderr.take().expect("stderr"));
    let addr = if wait_ready {
        let Some(line) = log.wait_for_within("listening on ", COMPILE_TIMEOUT) else {
            let _ = child.kill();
            panic!("server did not start:\n{}", log.text());
        };
        // The address ends the line in text logs, a JSON string in JSON ones.
        line.split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split(['"', ' ']).next())
            .and_then(|addr| addr.trim().parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
    } else {
        SocketAddr::from(([0, 0, 0, 0], 0))
    };
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (exited, exit) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = exited.send(child.wait().expect("wait for plugboard"));
    });
    Server {
        pid,
        exit,
        exit_status: None,
        addr,
        log,
        plugin_dir: dir.path().join("plugins"),
        config_path,
        launcher,
        args,
        log_filter,
        _dir: Some(dir),
    }
}

/// The server's stderr, collected by a thread, with a way to await a line.
#[derive(Clone)]
pub struct Log(Arc<(Mutex<LogState>, Condvar)>);

#[derive(Default)]
struct LogState {
    text: String,
    closed: bool,
    /// Stop consuming the server's stderr: the pipe fills, as with a log
    /// nobody reads.
    paused: bool,
}

impl Log {
    pub fn capture(stderr: impl Read + Send + 'static) -> Self {
        let log = Self(Arc::default());
        let writer = log.clone();
        std::thread::spawn(move || {
            let (state, changed) = &*writer.0;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut state = state.lock().unwrap();
                while state.paused {
                    state = changed.wait(state).unwrap();
                }
                state.text.push_str(&line);
                state.text.push('\n');
                changed.notify_all();
            }
            state.lock().unwrap().closed = true;
            changed.notify_all();
        });
        log
    }

    pub fn count(&self, needle: &str) -> usize {
        count_lines(&self.text(), needle)
    }

    /// Stops reading the server's stderr until [`Log::resume`]: once the
    /// pipe is full, every write the server makes to it would block.
    pub fn pause(&self) {
        self.0.0.lock().unwrap().paused = true;
    }

    pub fn resume(&self) {
        self.0.0.lock().unwrap().paused = false;
        self.0.1.notify_all();
    }

    pub fn text(&self) -> String {
        self.0.0.lock().unwrap().text.clone()
    }

    /// Waits for a line containing `needle`; `None` if the process ended or
    /// the timeout passed first.
    pub fn wait_for(&self, needle: &str) -> Option<String> {
        self.wait_for_within(needle, TIMEOUT)
    }

    pub fn wait_for_within(&self, needle: &str, timeout: Duration) -> Option<String> {
        self.wait_until(timeout, |text| {
            text.lines()
                .find(|line| line.contains(needle))
                .map(str::to_owned)
        })
    }

    /// Waits until `needle` has appeared on `count` lines.
    pub fn wait_for_count(&self, needle: &str, count: usize) -> bool {
        self.wait_for_count_within(needle, count, TIMEOUT)
    }

    pub fn wait_for_count_within(&self, needle: &str, count: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |text| {
            (count_lines(text, needle) >= count).then_some(())
        })
        .is_some()
    }

    /// Waits until `found` finds something in the log so far, re-checking
    /// whenever a line arrives.
    fn wait_until<T>(&self, timeout: Duration, found: impl Fn(&str) -> Option<T>) -> Option<T> {
        let (state, changed) = &*self.0;
        let deadline = Instant::now() + timeout;
        let mut state = state.lock().unwrap();
        loop {
            if let Some(result) = found(&state.text) {
                return Some(result);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            if state.closed {
                return None;
            }
            state = changed.wait_timeout(state, left).unwrap().0;
        }
    }
}

fn count_lines(text: &str, needle: &str) -> usize {
    text.lines().filter(|line| line.contains(needle)).count()
}

/// A running server; killed when dropped.
pub struct Server {
    pid: nix::unistd::Pid,
    /// Receives the exit status from the thread that waits for the process.
    exit: std::sync::mpsc::Receiver<ExitStatus>,
    exit_status: Option<ExitStatus>,
    pub addr: SocketAddr,
    pub log: Log,
    pub plugin_dir: PathBuf,
    pub config_path: PathBuf,
    launcher: Launcher,
    args: Vec<String>,
    log_filter: &'static str,
    /// `None` only while being handed to a restarted server.
    _dir: Option<TempDir>,
}

impl Server {
    /// Puts `bytes` in the plugin directory as `file`, the way a build
    /// installs a plugin: written beside it, then renamed into place.
    pub fn install(&self, file: &str, bytes: &[u8]) {
        let partial = self.plugin_dir.join(format!(".{file}.partial"));
        std::fs::write(&partial, bytes).expect("write the new plugin");
        std::fs::rename(&partial, self.plugin_dir.join(file)).expect("rename it into place");
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// Runs `plugboard send --addr <this server> ARGS...`, stdin closed.
    pub fn send(&self, args: &[&str]) -> std::process::Output {
        plugboard()
            .args(["send", "--addr", &self.addr.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run plugboard send")
    }

    /// Resident memory of the server process, in MiB, from /proc.
    pub fn resident_mib(&self) -> f64 {
        self.status_mib("VmRSS:")
    }

    /// The most resident memory the server process has had, in MiB.
    pub fn peak_resident_mib(&self) -> f64 {
        self.status_mib("VmHWM:")
    }

    fn status_mib(&self, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        let kib: f64 = status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("the field in /proc/PID/status");
        kib / 1024.0
    }

    /// Kills the server with SIGKILL (no chance to flush or close anything)
    /// and starts a new one on the same config, plugins and state.
    pub fn kill_and_restart(mut self) -> Server {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        self.wait_exit();
        self.restart_stopped()
    }

    /// Starts a new server on this one's directory, once it has exited.
    pub fn restart_stopped(mut self) -> Server {
        self.wait_exit();
        let dir = self._dir.take().expect("server directory");
        spawn_server(
            self.launcher.clone(),
            self.config_path.clone(),
            std::mem::take(&mut self.args),
            self.log_filter,
            dir,
        )
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid, signal).expect("signal plugboard");
    }

    pub fn wait_exit(&mut self) -> ExitStatus {
        if let Some(status) = self.exit_status {
            return status;
        }
        let status = self
            .exit
            .recv_timeout(TIMEOUT)
            .unwrap_or_else(|_| panic!("server did not exit:\n{}", self.log.text()));
        self.exit_status = Some(status);
        status
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.exit_status.is_none() && self.exit.try_recv().is_err() {
            let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// A raw protocol client: bytes in, `<EOF>`-framed replies out.
pub struct Client {
    stream: TcpStream,
    pending: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Self {
        Self::over(TcpStream::connect(addr).expect("connect"))
    }

    /// Connects from `source`, a loopback address such as 127.0.0.2: a
    /// second client address on one machine.
    pub fn connect_from(source: &str, addr: SocketAddr) -> Self {
        Self::try_connect_from(source, addr).expect("connect")
    }

    /// Like [`Client::connect_from`], for a client that expects to be
    /// refused at times (a flood).
    pub fn try_connect_from(source: &str, addr: SocketAddr) -> std::io::Result<Self> {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        let source: SocketAddr = format!("{source}:0").parse().expect("source address");
        socket.bind(&source.into())?;
        socket.connect(&addr.into())?;
        Ok(Self::over(socket.into()))
    }

    fn over(stream: TcpStream) -> Self {
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Self {
            stream,
            pending: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Sends one message (the delimiter is added) and returns its reply.
    pub fn request(&mut self, message: &str) -> String {
        self.send(message.as_bytes());
        self.send(DELIMITER);
        self.reply().expect("connection closed before the reply")
    }

    /// Sends one message and returns its reply, `None` when the server
    /// closed instead.
    pub fn send_and_reply(&mut self, message: &str) -> Option<String> {
        self.send(message.as_bytes());
        self.send(DELIMITER);
        self.reply()
    }

    /// The next reply without its delimiter; `None` when the server closed.
    pub fn reply(&mut self) -> Option<String> {
        loop {
            if let Some(at) = find(&self.pending, DELIMITER) {
                let frame: Vec<u8> = self.pending.drain(..at + DELIMITER.len()).collect();
                let text = &frame[..at];
                return Some(String::from_utf8(text.to_vec()).expect("UTF-8 reply"));
            }
            let mut buf = [0u8; 64 * 1024];
            // A signal (e.g. SIGCHLD from a test server exiting) interrupts a
            // blocking read with a timeout; like `read_exact`, just retry.
            let n = match self.stream.read(&mut buf) {
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                read => read.expect("read reply (timed out?)"),
            };
            if n == 0 {
                assert!(
                    self.pending.is_empty(),
                    "closed mid-reply: {:?}",
                    self.pending
                );
                return None;
            }
            self.pending.extend_from_slice(&buf[..n]);
        }
    }

    /// Asserts that the server closes the connection with nothing more to say.
    pub fn expect_closed(&mut self) {
        assert_eq!(
            self.reply(),
            None,
            "expected the server to close the connection"
        );
    }

    /// Whether a reply is already waiting, without blocking.
    pub fn has_reply_ready(&mut self) -> bool {
        self.stream.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 1];
        let ready = !matches!(self.stream.peek(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        self.stream.set_nonblocking(false).unwrap();
        ready
    }

    pub fn close_write(&mut self) {
        self.stream.shutdown(Shutdown::Write).expect("half-close");
    }
}

/// Every offset at which `text` lies in `bytes` (a file may keep stale
/// copies of a value in pages copied on write); panics if there is none.
pub fn offsets_of(bytes: &[u8], text: &str) -> Vec<usize> {
    let found: Vec<usize> = bytes
        .windows(text.len())
        .enumerate()
        .filter(|(_, window)| *window == text.as_bytes())
        .map(|(at, _)| at)
        .collect();
    assert!(!found.is_empty(), "{text} is not in the file");
    found
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A small tmpfs of the test's own: a disk that fills up on cue.
pub struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    /// A tmpfs of `mib` MiB: mounting one needs root (a test that does is
    /// `#[ignore]`d unless run as root).
    pub fn mount(mib: u32) -> Self {
        let dir = tempfile::tempdir().expect("mount point");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        assert!(mounted, "cannot mount a tmpfs: this test needs root");
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file of `mib` MiB at `name` (as much as fits).
    pub fn write_file(&self, name: &str, mib: usize) -> PathBuf {
        let path = self.path().join(name);
        let mut file = std::fs::File::create(&path).expect("create");
        let chunk = vec![7u8; 1 << 20];
        for _ in 0..mib {
            if file.write_all(&chunk).is_err() {
                break;
            }
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
