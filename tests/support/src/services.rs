//! Real services the scale-out tests run beside plugboard: `redis-server`
//! and `haproxy` from Debian's packages (`make test` installs them), each on
//! loopback ports of its own, in a directory of its own, killed when
//! dropped. Readiness is each program's own signal (Redis's "Ready to
//! accept connections", HAProxy's servers reported UP on its stats socket),
//! never a sleep.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{Log, TIMEOUT, free_port};

/// The service's stdout and stderr, each collected by a thread.
struct Output {
    stdout: Log,
    stderr: Log,
}

impl Output {
    fn text(&self) -> String {
        format!("{}{}", self.stdout.text(), self.stderr.text())
    }
}

/// A Debian program by name: on `PATH`, or where Debian puts it (HAProxy
/// is in /usr/sbin, which a non-login `PATH` may lack).
fn program(name: &str) -> Command {
    let in_sbin = Path::new("/usr/sbin").join(name);
    if in_sbin.exists() {
        Command::new(in_sbin)
    } else {
        Command::new(name)
    }
}

fn spawn_service(program: &str, command: &mut Command) -> (Child, Output) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| {
            panic!("cannot run {program} ({err}): `make test` installs it from Debian's packages")
        });
    let output = Output {
        stdout: Log::capture(child.stdout.take().expect("stdout")),
        stderr: Log::capture(child.stderr.take().expect("stderr")),
    };
    (child, output)
}

/// A `redis-server` on 127.0.0.1, with every acknowledged write fsynced to
/// its append-only file (`appendonly yes`, `appendfsync always`): what the
/// deployment docs ask of a Redis that holds plugin state.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    password: Option<String>,
    /// Certificate and key: serves TLS only.
    tls: Option<(PathBuf, PathBuf)>,
    dir: TempDir,
}

impl Redis {
    pub fn start() -> Self {
        Self::start_with(None, None)
    }

    /// A Redis that requires `password` (`requirepass`).
    pub fn start_with_password(password: &str) -> Self {
        Self::start_with(Some(password.into()), None)
    }

    /// A Redis that serves TLS only, with this PEM certificate and key.
    pub fn start_tls(cert: &Path, key: &Path) -> Self {
        Self::start_with(None, Some((cert.to_owned(), key.to_owned())))
    }

    fn start_with(password: Option<String>, tls: Option<(PathBuf, PathBuf)>) -> Self {
        let mut redis = Self {
            child: None,
            port: free_port(),
            password,
            tls,
            dir: tempfile::tempdir().expect("redis dir"),
        };
        redis.run();
        redis
    }

    /// The `redis_url` plugboard is given.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        let password = match &self.password {
            Some(password) => format!(":{password}@"),
            None => String::new(),
        };
        format!("{scheme}://{password}127.0.0.1:{}", self.port)
    }

    fn run(&mut self) {
        let mut command = program("redis-server");
        let port = self.port.to_string();
        match &self.tls {
            None => command.args(["--port", &port]),
            Some((cert, key)) => command
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key),
        };
        command
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--save", "", "--daemonize", "no", "--loglevel", "notice"]);
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let (child, output) = spawn_service("redis-server", &mut command);
        self.child = Some(child);
        assert!(
            output
                .stdout
                .wait_for("Ready to accept connections")
                .is_some(),
            "redis-server did not start:\n{}",
            output.text()
        );
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: no chance to write anything more.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory (its append-only
    /// file), after [`Redis::kill`].
    pub fn restart(&mut self) {
        self.kill();
        self.run();
    }

    /// Runs one command through `redis-cli`, for checks from outside plugboard.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut command = program("redis-cli");
        command.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(password) = &self.password {
            command.args(["-a", password, "--no-auth-warning"]);
        }
        let output = command.args(args).output().expect("run redis-cli");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// HAProxy in front of plugboard hosts, configured from the repo's own
/// `deploy/haproxy.cfg`: its `bind` and `server` lines are replaced by the
/// test's addresses, everything else (checks, timeouts, retries) is as
/// shipped. A stats socket tells when the hosts are UP.
pub struct Haproxy {
    child: Child,
    output: Output,
    pub port: u16,
    socket: PathBuf,
    _dir: TempDir,
}

/// A host as HAProxy sees it: its command port and its `/healthz` port.
pub struct Backend {
    pub name: &'static str,
    pub port: u16,
    pub health_port: u16,
}

impl Haproxy {
    pub fn start(backends: &[Backend]) -> Self {
        let dir = tempfile::tempdir().expect("haproxy dir");
        let port = free_port();
        let socket = dir.path().join("stats.sock");
        let shipped = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/haproxy.cfg"),
        )
        .expect("read deploy/haproxy.cfg");
        let config = dir.path().join("haproxy.cfg");
        std::fs::write(&config, configure(&shipped, port, &socket, backends))
            .expect("write haproxy.cfg");
        let (child, output) = spawn_service(
            "haproxy",
            program("haproxy").arg("-db").arg("-f").arg(&config),
        );
        let haproxy = Self {
            child,
            output,
            port,
            socket,
            _dir: dir,
        };
        for backend in backends {
            haproxy.wait_for_status(backend.name, "UP");
        }
        haproxy
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// Waits until HAProxy reports `server` in `status` (`UP`, `DOWN`).
    pub fn wait_for_status(&self, server: &str, status: &str) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let now = self.status_of(server);
            if now.as_deref().is_some_and(|now| now.starts_with(status)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "HAProxy never reported {server} {status} (last: {now:?}):\n{}",
                self.output.text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The `status` column of `show stat` for `server`, if HAProxy answers.
    fn status_of(&self, server: &str) -> Option<String> {
        let mut stream = UnixStream::connect(&self.socket).ok()?;
        stream.write_all(b"show stat\n").ok()?;
        let mut csv = String::new();
        stream.read_to_string(&mut csv).ok()?;
        let header: Vec<&str> = csv
            .lines()
            .next()?
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let column = header.iter().position(|name| *name == "status")?;
        csv.lines()
            .map(|line| line.split(',').collect::<Vec<_>>())
            .find(|fields| fields.get(1) == Some(&server))
            .and_then(|fields| fields.get(column).map(|s| (*s).to_owned()))
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shipped config with the test's frontend port, stats socket and hosts.
fn configure(shipped: &str, port: u16, socket: &std::path::Path, backends: &[Backend]) -> String {
    let mut out = String::new();
    let mut servers_written = false;
    for line in shipped.lines() {
        match line.split_whitespace().next() {
            Some("bind") => out.push_str(&format!("    bind 127.0.0.1:{port}\n")),
            Some("server") if !servers_written => {
                servers_written = true;
                for backend in backends {
                    out.push_str(&format!(
                        "    server {} 127.0.0.1:{} check port {}\n",
                        backend.name, backend.port, backend.health_port
                    ));
                }
            }
            Some("server") => {}
            Some("global") => {
                out.push_str("global\n");
                out.push_str(&format!(
                    "    stats socket {} level admin\n",
                    socket.display()
                ));
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}
