//! The command line: `plugboard send` and `serve`'s config errors.

use std::io::Write;
use std::process::{Output, Stdio};

use crate::support::{Server, Setup, plugboard, stderr, stdout};

fn onoff() -> Server {
    Setup::new().plugin("onoff", "onoff").start()
}

#[test]
fn send_prints_one_reply_per_command() {
    let server = onoff();
    let output = server.send(&["-c", "on", "-c", "off"]);
    assert_eq!(stdout(&output), "success\nsuccess\n");
    assert!(output.status.success());
}

#[test]
fn send_exits_non_zero_when_a_reply_is_an_error() {
    let server = onoff();
    let output = server.send(&["-c", "on", "--command", "dance"]);
    assert_eq!(stdout(&output), "success\nerror: unknown command 'dance'\n");
    assert!(!output.status.success());
}

/// Like redis-cli, the words form one command.
#[test]
fn send_joins_its_words_into_one_command() {
    let server = Setup::new().plugin("testing_echo", "echo").start();
    let output = server.send(&["echo", "hello", "world"]);
    assert_eq!(stdout(&output), "hello world\n");
    assert!(output.status.success());
    let both = server.send(&["echo", "hi", "-c", "echo there"]);
    assert!(
        !both.status.success(),
        "words and -c together are ambiguous"
    );
}

#[test]
fn send_reads_commands_from_a_pipe() {
    let server = onoff();
    let mut child = plugboard()
        .args(["send", "--addr", &server.addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn plugboard send");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"on\n\noff\r\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(stdout(&output), "success\nsuccess\n");
    assert!(output.status.success());
}

#[test]
fn send_refuses_a_command_containing_the_delimiter() {
    let server = onoff();
    let output = server.send(&["on<EOF>off"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("cannot contain the delimiter"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn send_to_a_closed_port_fails_clearly() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let output = plugboard()
        .args(["send", "--addr", &format!("127.0.0.1:{port}"), "on"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("cannot connect to 127.0.0.1"),
        "{}",
        stderr(&output)
    );
}

/// Runs `serve` with `config` and expects it to refuse to start.
pub(crate) fn serve_fails(setup: Setup) -> String {
    let output = plugboard()
        .arg("serve")
        .arg("--config")
        .arg(setup.config_path())
        .output()
        .expect("run plugboard serve");
    assert!(!output.status.success(), "serve started with a bad config");
    stderr(&output)
}

#[test]
fn serve_names_an_unknown_config_key() {
    let err = serve_fails(Setup::new().config("max_frame_byte = 10"));
    assert!(err.contains("max_frame_byte"), "{err}");
}

#[test]
fn serve_names_a_bad_config_value() {
    let err = serve_fails(Setup::new().config("max_connections = \"lots\""));
    assert!(err.contains("max_connections"), "{err}");
}

#[test]
fn serve_names_a_missing_plugin_dir() {
    let err = serve_fails(Setup::new().config("plugin_dir = \"no-such-dir\""));
    assert!(
        err.contains("plugin_dir") && err.contains("no-such-dir"),
        "{err}"
    );
}

#[test]
fn serve_names_an_unusable_listen_address() {
    let err = serve_fails(Setup::new().config("listen = \"not an address\""));
    assert!(err.contains("listen"), "{err}");
}

#[test]
fn serve_names_a_missing_config_file() {
    let output = plugboard()
        .args(["serve", "--config", "/no/such/config.toml"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("/no/such/config.toml"),
        "{}",
        stderr(&output)
    );
}

/// What a program shows on a pseudo-terminal, collected by a thread.
struct Screen {
    shown: std::sync::Arc<(std::sync::Mutex<String>, std::sync::Condvar)>,
    keys: std::fs::File,
}

impl Screen {
    fn attach(master: std::fs::File) -> Self {
        use std::io::Read;
        let shown = std::sync::Arc::new((
            std::sync::Mutex::new(String::new()),
            std::sync::Condvar::new(),
        ));
        let mut reader = master.try_clone().unwrap();
        let collected = shown.clone();
        std::thread::spawn(move || {
            let mut buf = [0; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let chunk = String::from_utf8_lossy(&buf[..n]);
                let (text, changed) = &*collected;
                text.lock().unwrap().push_str(&chunk);
                changed.notify_all();
            }
        });
        Self {
            shown,
            keys: master,
        }
    }

    /// Waits until `needle` has been shown `count` times.
    fn wait_for(&self, needle: &str, count: usize) {
        let (text, changed) = &*self.shown;
        let (text, timeout) = changed
            .wait_timeout_while(text.lock().unwrap(), crate::support::TIMEOUT, |text| {
                text.matches(needle).count() < count
            })
            .unwrap();
        assert!(
            !timeout.timed_out(),
            "{needle:?} x{count} never shown:\n{text}"
        );
    }

    /// Waits for the `count`th prompt to take keys: rustyline puts the
    /// terminal in raw mode (flushing what was typed before), turns on
    /// bracketed paste, then draws the prompt. Keys typed earlier can be
    /// lost. (The prompt's text alone is no signal: it is redrawn with every
    /// key typed.)
    fn wait_for_prompt(&self, count: usize) {
        let (text, changed) = &*self.shown;
        let ready = |text: &mut String| {
            let mut raw_mode_entries = text.match_indices("\x1b[?2004h");
            raw_mode_entries
                .nth(count - 1)
                .is_some_and(|(at, _)| text[at..].contains("plugboard> "))
                && raw_mode_entries.next().is_none()
        };
        let (text, timeout) = changed
            .wait_timeout_while(text.lock().unwrap(), crate::support::TIMEOUT, |text| {
                !ready(text)
            })
            .unwrap();
        assert!(
            !timeout.timed_out(),
            "prompt {count} never shown:\n{text:?}"
        );
    }

    fn type_keys(&mut self, keys: &str) {
        self.keys.write_all(keys.as_bytes()).unwrap();
    }
}

/// A child process killed if the test ends before it exits.
struct Reaped(std::process::Child);

impl Reaped {
    /// Waits for the child to exit, for [`crate::support::TIMEOUT`] at most.
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + crate::support::TIMEOUT;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the child did not exit"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// On a terminal, `send` is a prompt: a hint at start, line editing with
/// history (an up arrow recalls the last command), a connection that comes
/// back when the server restarts, history kept for the next session.
#[test]
fn send_prompts_on_a_terminal_with_history_and_reconnects() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Setup::new()
        .plugin("onoff", "onoff")
        .config(&format!("listen = \"127.0.0.1:{port}\""))
        .start();
    let state = tempfile::tempdir().unwrap();
    let pty = nix::pty::openpty(None, None).expect("open a pseudo-terminal");
    let slave = std::fs::File::from(pty.slave);
    let mut child = Reaped(
        plugboard()
            .args(["send", "--addr", &server.addr.to_string()])
            .env("TERM", "xterm")
            .env("XDG_STATE_HOME", state.path())
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave))
            .spawn()
            .expect("spawn plugboard send"),
    );
    let mut screen = Screen::attach(std::fs::File::from(pty.master));
    screen.wait_for("`help` lists them", 1);
    screen.wait_for_prompt(1);
    screen.type_keys("on\r");
    screen.wait_for("success", 1);
    screen.wait_for_prompt(2);
    // Up arrow: the last command again.
    screen.type_keys("\x1b[A\r");
    screen.wait_for("success", 2);
    screen.wait_for_prompt(3);
    let server = server.kill_and_restart();
    screen.type_keys("dance\r");
    screen.wait_for("reconnected to", 1);
    screen.wait_for("error: unknown command 'dance'", 1);
    screen.wait_for_prompt(4);
    screen.type_keys("\x04");
    let status = child.wait_exit();
    assert!(
        !status.success(),
        "an error reply makes the exit status non-zero"
    );
    let history = std::fs::read_to_string(state.path().join("plugboard/history")).unwrap();
    assert!(
        history.contains("on\n") && history.contains("dance"),
        "{history}"
    );
    drop(server);
}

fn plugin_tool(args: &[&str]) -> Output {
    plugboard().args(args).output().expect("run plugboard")
}

/// Without a config, `check` and `call` compile into the user's cache
/// (`$XDG_CACHE_HOME/plugboard`, else `~/.cache/plugboard`), from any
/// directory: the second run loads the plugin from there.
#[test]
fn check_and_call_keep_compiled_plugins_in_the_users_cache() {
    let onoff = crate::support::built_plugin("onoff");
    let onoff = onoff.to_str().unwrap();
    for xdg in [true, false] {
        let home = tempfile::tempdir().unwrap();
        let cache = match xdg {
            true => home.path().join("plugboard"),
            false => home.path().join(".cache/plugboard"),
        };
        let run = |args: &[&str]| {
            let mut command = plugboard();
            match xdg {
                true => command.env("XDG_CACHE_HOME", home.path()),
                false => command
                    .env_remove("XDG_CACHE_HOME")
                    .env("HOME", home.path()),
            };
            let output = command
                .args(args)
                .current_dir(home.path())
                .output()
                .unwrap();
            assert!(output.status.success(), "{}", stderr(&output));
            stdout(&output)
        };
        let first = run(&["check", onoff]);
        assert!(
            first.contains(&format!("cached in {}", cache.display())),
            "{first}"
        );
        let second = run(&["check", onoff]);
        assert!(
            second.contains(&format!("compiled: from the cache in {}", cache.display())),
            "{second}"
        );
        assert_eq!(run(&["call", onoff, "on"]), "success\n");
    }
}

#[test]
fn check_lists_commands_and_imports_of_a_valid_plugin() {
    let onoff = crate::support::built_plugin("onoff");
    let output = plugin_tool(&["check", onoff.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let report = stdout(&output);
    assert!(report.contains("ok, plugin 'onoff'"), "{report}");
    assert!(report.contains("toggle  Flip the device"), "{report}");
    assert!(report.contains("plugboard:plugin/kv@0.1.4"), "{report}");
    assert!(report.contains("batches: yes"), "{report}");
}

/// A plugin without `serve-batch` (of the `plugin` world) is served one call
/// per command, and `check` tells its author how to do better.
#[test]
fn check_says_when_a_plugin_does_not_serve_batches() {
    use crate::support::components::{Handle, component};
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("plain.wasm");
    std::fs::write(&wasm, component(&["plain"], Handle::Reply("hi"))).unwrap();
    let output = plugin_tool(&["check", wasm.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let report = stdout(&output);
    assert!(report.contains("batches: no"), "{report}");
    assert!(report.contains("serve-batch"), "{report}");
}

/// `plugboard check x.wasm | head -1`: the reader leaving early is no
/// error worth a message.
#[test]
fn a_reader_that_leaves_early_gets_no_error_message() {
    let onoff = crate::support::built_plugin("onoff");
    let mut child = plugboard()
        .arg("check")
        .arg(&onoff)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    assert!(
        !stderr(&output).contains("Broken pipe"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn check_and_call_reject_invalid_files_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[u8], &str); 3] = [
        ("garbage.wasm", b"not wasm", "not a WebAssembly file"),
        ("core.wasm", b"\0asm\x01\0\0\0", "not a component"),
        (
            "truncated.wasm",
            b"\0asm\x0d\0\x01\0\x01",
            "not a valid WebAssembly component",
        ),
    ];
    for (name, bytes, reason) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let output = plugin_tool(&["check", path.to_str().unwrap()]);
        assert!(!output.status.success(), "{name} passed check");
        assert!(
            stderr(&output).contains(reason),
            "{name}: {}",
            stderr(&output)
        );
    }
    let missing = plugin_tool(&["check", "/no/such/plugin.wasm"]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("/no/such/plugin.wasm"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn call_runs_one_command_as_the_server_would() {
    let echo = crate::support::built_plugin("testing_echo");
    let output = plugin_tool(&["call", echo.to_str().unwrap(), "echo", "hello", "there"]);
    assert_eq!(stdout(&output), "hello there\n");
    assert!(output.status.success());

    let output = plugin_tool(&["call", echo.to_str().unwrap(), "fail", "nope"]);
    assert_eq!(stdout(&output), "error: nope\n");
    assert!(!output.status.success());

    let output = plugin_tool(&["call", echo.to_str().unwrap(), "dance"]);
    assert_eq!(stdout(&output), "error: unknown command 'dance'\n");
    assert!(!output.status.success());
}

#[test]
fn call_applies_the_config_limits() {
    let setup = Setup::new().config("call_timeout_ms = 100");
    let hostile = crate::support::built_plugin("testing_hostile");
    let config = setup.config_path();
    let output = plugin_tool(&[
        "call",
        hostile.to_str().unwrap(),
        "spin",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(
        stdout(&output),
        "error: plugin 'testing_hostile' timed out\n"
    );
    assert!(!output.status.success());
}

/// `plugboard new greeter --lang LANG` in a fresh directory: the project.
fn scaffold(lang: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let projects = tempfile::tempdir().unwrap();
    let dir = projects.path().to_str().unwrap();
    let created = plugin_tool(&["new", "greeter", "--lang", lang, "--dir", dir]);
    assert!(created.status.success(), "{}", stderr(&created));
    let project = projects.path().join("greeter");
    (projects, project)
}

/// The built scaffold passes `check` and is served by a running server.
fn assert_checks_and_serves(wasm: &std::path::Path) {
    let check = plugin_tool(&["check", wasm.to_str().unwrap()]);
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(
        stdout(&check).contains("greeter  Greet"),
        "{}",
        stdout(&check)
    );
    assert!(
        stdout(&check).contains("batches: yes"),
        "every template serves batches: {}",
        stdout(&check)
    );
    let server = onoff();
    std::fs::copy(wasm, server.plugin_dir.join("greeter.wasm")).unwrap();
    let updated = server
        .log
        .wait_for_within("plugin set updated", crate::support::COMPILE_TIMEOUT);
    assert!(updated.is_some(), "not loaded:\n{}", server.log.text());
    assert_eq!(
        server.connect().request("greeter plugboard"),
        "hello, plugboard"
    );
}

/// Runs `make ARGS` in a scaffolded project, as its README says.
fn make(project: &std::path::Path, args: &[&str]) -> Output {
    std::process::Command::new("make")
        .args(args)
        .current_dir(project)
        .output()
        .expect("run make")
}

/// `make build`, which must succeed.
fn make_build(project: &std::path::Path) {
    let build = make(project, &["build"]);
    assert!(
        build.status.success(),
        "{}{}",
        String::from_utf8_lossy(&build.stdout),
        String::from_utf8_lossy(&build.stderr)
    );
}

#[test]
fn new_refuses_existing_directories_and_bad_names() {
    let (projects, _) = scaffold("rust");
    let dir = projects.path().to_str().unwrap();
    let again = plugin_tool(&["new", "greeter", "--dir", dir]);
    assert!(!again.status.success() && stderr(&again).contains("already exists"));
    let bad = plugin_tool(&["new", "Bad Name", "--dir", dir]);
    assert!(!bad.status.success() && stderr(&bad).contains("invalid plugin name"));
}

#[test]
fn new_rust_plugin_builds_checks_and_serves() {
    let (_projects, project) = scaffold("rust");
    // Built with cargo directly, in a target dir kept between test runs.
    let target = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("scaffold-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let build = std::process::Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target)
        .current_dir(&project)
        .output()
        .expect("run cargo");
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );
    assert_checks_and_serves(&target.join("wasm32-wasip2/release/greeter.wasm"));
}

#[test]
fn new_python_plugin_builds_checks_and_serves() {
    let (_projects, project) = scaffold("python");
    make_build(&project);
    assert_checks_and_serves(&project.join("greeter.wasm"));
}

/// A JavaScript project's own build turns a thrown `Error` into an error
/// reply with its message (the stack, with plugin.js lines, in the log),
/// fails on a syntax error naming its line, and `make try` runs a command
/// through the `plugboard` that generated the project.
#[test]
fn new_js_plugin_builds_checks_and_serves() {
    let (_projects, project) = scaffold("js");
    let source = project.join("plugin.js");
    let plugin = std::fs::read_to_string(&source).unwrap();
    let broken = plugin.replace("return `hello, ${who}`;", "return `hello, ${who}` +;");
    assert_ne!(broken, plugin);
    std::fs::write(&source, broken).unwrap();
    let build = make(&project, &["build"]);
    assert!(!build.status.success());
    assert!(
        stderr(&build).contains("plugin.js:21:"),
        "{}",
        stderr(&build)
    );
    let throwing = plugin.replace(
        "  const who",
        "  if (request.args[0] === 'boom') throw new Error('boom went the plugin');\n  const who",
    );
    std::fs::write(&source, throwing).unwrap();
    make_build(&project);
    let wasm = project.join("greeter.wasm");
    assert_checks_and_serves(&wasm);
    let server = onoff();
    std::fs::copy(&wasm, server.plugin_dir.join("greeter.wasm")).unwrap();
    let loaded = server
        .log
        .wait_for_within("plugin set updated", crate::support::COMPILE_TIMEOUT);
    assert!(loaded.is_some(), "{}", server.log.text());
    assert_eq!(
        server.connect().request("greeter boom"),
        "error: boom went the plugin"
    );
    let logged = server.log.wait_for("Error: boom went the plugin").unwrap();
    assert!(logged.contains("greeter: Error"), "{logged}");
    assert!(server.log.wait_for("at handle@plugin.js:").is_some());
    let tried = std::process::Command::new("make")
        .args(["try", "ARGS=greeter Ada"])
        .env_remove("PLUGBOARD")
        .env("PATH", "/usr/bin:/bin")
        .current_dir(&project)
        .output()
        .unwrap();
    assert!(tried.status.success(), "{}", stderr(&tried));
    assert!(
        stdout(&tried).lines().any(|line| line == "hello, Ada"),
        "{}",
        stdout(&tried)
    );
}

/// Every template serves one command, named after the plugin and written
/// literally in its source (a hyphen kept): new plugins never fight over a
/// command.
#[test]
fn new_plugins_serve_a_command_named_after_them() {
    let projects = tempfile::tempdir().unwrap();
    let name = "motion-sensor";
    for (lang, source, literal) in [
        ("rust", "src/lib.rs", "\"motion-sensor\","),
        ("python", "app.py", "COMMAND = \"motion-sensor\""),
        ("js", "plugin.js", "const COMMAND = 'motion-sensor';"),
    ] {
        let parent = projects.path().join(lang);
        std::fs::create_dir(&parent).unwrap();
        let created = plugin_tool(&[
            "new",
            name,
            "--lang",
            lang,
            "--dir",
            parent.to_str().unwrap(),
        ]);
        assert!(created.status.success(), "{}", stderr(&created));
        let text = std::fs::read_to_string(parent.join(name).join(source)).unwrap();
        assert!(text.contains(literal), "{lang}: {text}");
        assert!(!text.contains("hello\""), "{lang}: {text}");
        for file in ["README.md", "Makefile", source] {
            let text = std::fs::read_to_string(parent.join(name).join(file)).unwrap();
            assert!(
                !text.contains("example.invalid"),
                "a placeholder link in {file}"
            );
        }
        if lang == "rust" {
            let sdk = std::fs::read_to_string(parent.join(name).join("sdk/src/lib.rs")).unwrap();
            assert!(
                !sdk.contains("example.invalid"),
                "a placeholder link in the SDK"
            );
        }
        let makefile = std::fs::read_to_string(parent.join(name).join("Makefile")).unwrap();
        assert!(
            makefile.contains(&format!(
                "PLUGBOARD ?= {}",
                crate::support::plugboard_path()
            )),
            "{makefile}"
        );
    }
}

/// `check --config` says which capabilities a plugin imports and whether
/// the config grants them; `call --config` runs it with those grants.
#[test]
fn check_and_call_report_and_use_the_configs_grants() {
    let dir = tempfile::tempdir().unwrap();
    let relay = crate::support::built_plugin("relay");
    let config = dir.path().join("config.toml");
    let check = |config_text: &str| {
        std::fs::write(&config, config_text).unwrap();
        let output = plugin_tool(&[
            "check",
            "--config",
            config.to_str().unwrap(),
            relay.to_str().unwrap(),
        ]);
        assert!(output.status.success(), "{}", stderr(&output));
        stdout(&output)
    };
    let report = check("plugin_dir = \".\"\n");
    assert!(
        report.contains("http  imported, none granted (add `allow_http` to [plugins.relay])"),
        "{report}"
    );
    assert!(report.contains("tcp   not used"), "{report}");
    let report =
        check("plugin_dir = \".\"\n[plugins.relay]\nallow_http = [\"http://127.0.0.1:9\"]\n");
    assert!(report.contains("http  imported, 1 granted"), "{report}");

    // `call` with the grant reaches the granted origin (nothing listens on
    // port 9, the discard port: unreachable, not denied); without, denied.
    std::fs::write(
        &config,
        "plugin_dir = \".\"\n[plugins.relay]\nallow_http = [\"http://127.0.0.1:9\"]\n\
         [plugins.relay.config]\nurl = \"http://127.0.0.1:9\"\n",
    )
    .unwrap();
    let call = |args: &[&str]| stdout(&plugin_tool(args));
    let granted = call(&[
        "call",
        "--config",
        config.to_str().unwrap(),
        relay.to_str().unwrap(),
        "relay-status",
    ]);
    assert!(
        granted.contains("device unreachable") && !granted.contains("Denied"),
        "{granted}"
    );
    std::fs::write(
        &config,
        "plugin_dir = \".\"\n[plugins.relay.config]\nurl = \"http://127.0.0.1:9\"\n",
    )
    .unwrap();
    let denied = call(&[
        "call",
        "--config",
        config.to_str().unwrap(),
        relay.to_str().unwrap(),
        "relay-status",
    ]);
    assert!(denied.contains("Denied"), "{denied}");
}

/// `plugboard completions bash`, sourced in a real bash, completes the
/// commands and their arguments; a shell it does not know is a clear error.
#[test]
fn bash_completes_commands_and_their_arguments() {
    let script = stdout(&plugboard().args(["completions", "bash"]).output().unwrap());
    let complete = |words: &str, current: usize| -> String {
        let probe = format!(
            "{script}\nCOMP_WORDS=({words}); COMP_CWORD={current}; \
             _plugboard plugboard \"${{COMP_WORDS[$COMP_CWORD]}}\" \"${{COMP_WORDS[$COMP_CWORD-1]}}\"; \
             echo \"${{COMPREPLY[@]}}\""
        );
        let output = std::process::Command::new("bash")
            .args(["-c", &probe])
            .output()
            .expect("run bash");
        assert!(output.status.success(), "{}", stderr(&output));
        stdout(&output)
    };
    assert_eq!(complete("plugboard se", 1).trim(), "serve send");
    let shells = complete("plugboard completions ''", 2);
    for shell in ["bash", "zsh", "fish"] {
        assert!(shells.split_whitespace().any(|s| s == shell), "{shells}");
    }
    let unknown = plugboard().args(["completions", "tcsh"]).output().unwrap();
    assert!(!unknown.status.success());
    assert!(
        stderr(&unknown).contains("invalid value 'tcsh'"),
        "{}",
        stderr(&unknown)
    );
}

/// `plugboard man --dir` writes plugboard(1), which lists every command,
/// and a page for each one, named as plugboard(1) refers to it.
#[test]
fn man_writes_a_page_for_the_binary_and_each_command() {
    let dir = tempfile::tempdir().unwrap();
    let output = plugboard()
        .arg("man")
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let main = std::fs::read_to_string(dir.path().join("plugboard.1")).unwrap();
    assert!(main.contains(".TH plugboard 1"), "{main}");
    for command in [
        "serve", "send", "dev", "new", "check", "call", "compile", "token",
    ] {
        assert!(
            main.contains(&format!("plugboard\\-{command}(1)")),
            "{command}"
        );
        let page = std::fs::read_to_string(dir.path().join(format!("plugboard-{command}.1")))
            .unwrap_or_else(|_| panic!("no page for {command}"));
        assert!(
            page.contains(&format!(".TH plugboard-{command} 1")),
            "{page}"
        );
    }
    assert!(!dir.path().join("plugboard-compile-plugin.1").exists());
    let printed = stdout(&plugboard().arg("man").output().unwrap());
    assert_eq!(printed, main);
}

/// `check` (like `call` and `dev`) serves no plugin directory of the
/// config's: a config whose `plugin_dir` does not exist still gives its
/// limits and grants.
#[test]
fn check_takes_a_config_whose_plugin_dir_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("dev.toml");
    std::fs::write(&config, "plugin_dir = \"nowhere\"\ncall_timeout_ms = 500\n").unwrap();
    let output = plugboard()
        .arg("check")
        .arg(crate::support::built_plugin("onoff"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
}
