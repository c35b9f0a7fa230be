//! The plugin author's loop, measured: `plugboard dev` serving a Rust, a
//! Python and a JavaScript project made by `plugboard new`, each edited
//! (its reply word changed and saved) several times; for each edit, the
//! time from the save to the first reply with the new word. Python and
//! JavaScript are served by runners (no build per edit), Rust is rebuilt.
//!
//! Then what a runner costs: the first command on a new connection (a new
//! instance, which loads the source) against the componentized build's,
//! and 16 connections at once on the dev server.
//!
//! Prints figures; asserts nothing about time. Run with `make bench-dev`.

use plugboard_test_support as support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::dev::{Dev, new_project};
use support::{COMPILE_TIMEOUT, Client, Setup, built_guest};

const EDITS: usize = 5;

/// Saves `file` with `from` replaced by `to`, and times how long until
/// `command` replies with `expect` on `client`.
fn edit_to_reply(
    file: &Path,
    from: &str,
    to: &str,
    client: &mut Client,
    command: &str,
    expect: &str,
) -> Duration {
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.contains(from), "{from} in {text}");
    std::fs::write(file, text.replace(from, to)).unwrap();
    let saved = Instant::now();
    while client.request(command) != expect {
        assert!(
            saved.elapsed() < COMPILE_TIMEOUT,
            "no new reply for {command}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    saved.elapsed()
}

fn summary(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "median {:.0} ms, min {:.0} ms, max {:.0} ms ({} edits)",
        ms(samples[samples.len() / 2]),
        ms(samples[0]),
        ms(samples[samples.len() - 1]),
        samples.len()
    )
}

/// The first command on `count` new connections, one after another.
fn first_commands(addr: std::net::SocketAddr, command: &str, count: usize) -> Vec<Duration> {
    (0..count)
        .map(|_| {
            let mut client = Client::connect(addr);
            let started = Instant::now();
            client.request(command);
            started.elapsed()
        })
        .collect()
}

fn micros(mut samples: Vec<Duration>) -> String {
    samples.sort();
    format!(
        "median {:.1} ms (min {:.1}, max {:.1})",
        samples[samples.len() / 2].as_secs_f64() * 1e3,
        samples[0].as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3
    )
}

fn main() {
    let projects = tempfile::tempdir().unwrap();
    let rust = new_project(projects.path(), "bench-rust", "rust");
    let python = new_project(projects.path(), "bench-py", "python");
    let js = new_project(projects.path(), "bench-js", "js");
    let started = Instant::now();
    let dev = Dev::start(&[&rust, &python, &js]);
    println!(
        "dev started with three projects in {:.1} s (runners and compiles cached from earlier runs count here)",
        started.elapsed().as_secs_f64()
    );
    let mut client = Client::connect(dev.addr);
    let languages = [
        (
            "Rust",
            rust.join("src/lib.rs"),
            "bench-rust",
            "\"hello, {who}\"",
            "\"w{n}, {who}\"",
        ),
        (
            "Python",
            python.join("app.py"),
            "bench-py",
            "f\"hello, {who}\"",
            "f\"w{n}, {who}\"",
        ),
        (
            "JavaScript",
            js.join("plugin.js"),
            "bench-js",
            "`hello, ${who}`",
            "`w{n}, ${who}`",
        ),
    ];
    for (language, file, command, first, template) in languages {
        let mut previous = first.to_owned();
        let times: Vec<Duration> = (1..=EDITS)
            .map(|n| {
                let next = template.replace("{n}", &n.to_string());
                let took = edit_to_reply(
                    &file,
                    &previous,
                    &next,
                    &mut client,
                    &format!("{command} x"),
                    &format!("w{n}, x"),
                );
                previous = next;
                took
            })
            .collect();
        println!(
            "{language}: saved edit -> first new reply: {}",
            summary(times)
        );
    }

    let built = Setup::new()
        .guest("stats", "stats")
        .guest("text", "text")
        .start();
    assert!(built_guest("stats").exists());
    println!(
        "first command on a new connection (a new instance): Python runner {}, built {}",
        micros(first_commands(dev.addr, "bench-py x", 20)),
        micros(first_commands(built.addr, "stats 1", 20))
    );
    println!(
        "first command on a new connection (a new instance): JavaScript runner {}, built {}",
        micros(first_commands(dev.addr, "bench-js x", 20)),
        micros(first_commands(built.addr, "upper x", 20))
    );

    let started = Instant::now();
    let threads: Vec<_> = (0..16)
        .map(|n| {
            let addr = dev.addr;
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                let command = if n % 2 == 0 {
                    "bench-py x"
                } else {
                    "bench-js x"
                };
                let mut times = Vec::new();
                for _ in 0..100 {
                    let sent = Instant::now();
                    client.request(command);
                    times.push(sent.elapsed());
                }
                times
            })
        })
        .collect();
    let mut times: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let elapsed = started.elapsed();
    times.sort();
    let pid = dev.pid();
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))?
                .to_owned();
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .unwrap_or(0.0)
        / 1024.0;
    println!(
        "16 connections x 100 commands on runners: {:.0} commands/s, p50 {:.2} ms, p99 {:.2} ms; dev resident {rss:.0} MiB",
        times.len() as f64 / elapsed.as_secs_f64(),
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[times.len() * 99 / 100].as_secs_f64() * 1e3
    );
    let _ = dev.log.text();
}
