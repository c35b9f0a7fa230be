//! A test plugin that attacks its sandbox, one command per attack. The
//! end-to-end tests in `tests/e2e/sandbox.rs` run each against the real
//! server and check the host contains it.

use std::cell::RefCell;
use std::hint::black_box;

use plugboard_plugin::{Command, Plugin, Request};

struct Hostile;

thread_local! {
    /// What `remember` stored; `recall` shows whether an instance is reused.
    static MEMORY: RefCell<String> = const { RefCell::new(String::new()) };
}

impl Plugin for Hostile {
    const COMMANDS: &'static [Command] = &[
        Command::new("spin", "Loop forever, or for N milliseconds"),
        Command::new("burn", "Do N million iterations of work, then reply"),
        Command::new("leak-handles", "Make N WASI handles and never drop them"),
        Command::new("alloc-bomb", "Allocate memory without bound"),
        Command::new("recurse", "Recurse without bound"),
        Command::new("depth", "Recurse N levels deep, then reply"),
        Command::new("huge-reply", "Reply with N bytes"),
        Command::new("open-file", "Try to read a file given as argument"),
        Command::new("connect", "Try to open a TCP connection to an address"),
        Command::new(
            "write-file",
            "Try to write the text after the path to a file",
        ),
        Command::new(
            "http-get",
            "Try an HTTP GET; reply with the status and body",
        ),
        Command::new(
            "http-post",
            "Try an HTTP POST of the text after the URL; reply with the status and body",
        ),
        Command::new(
            "http-post-sized",
            "As http-post, with the body's Content-Length set by the plugin itself",
        ),
        Command::new("remember", "Keep the argument in the instance's memory"),
        Command::new("recall", "Reply with what `remember` kept in this instance"),
        Command::new(
            "log-flood",
            "Write LINES lines of BYTES bytes with host.log, at INFO (or `debug` as a third argument)",
        ),
        Command::new("print-flood", "Print LINES lines of BYTES bytes on stderr"),
    ];

    fn handle(request: Request) -> Result<String, String> {
        match request.command.as_str() {
            "spin" if request.raw_args.is_empty() => spin(),
            "leak-handles" => {
                let count: u64 = request
                    .raw_args
                    .parse()
                    .map_err(|_| "leak-handles takes a number")?;
                for _ in 0..count {
                    let pollable =
                        wasip2::clocks::monotonic_clock::subscribe_duration(1_000_000_000);
                    std::mem::forget(pollable);
                }
                Ok(format!("leaked {count}"))
            }
            "burn" => {
                let millions: u64 = request
                    .raw_args
                    .parse()
                    .map_err(|_| "burn takes a number")?;
                let mut n: u64 = 0;
                for _ in 0..millions * 1_000_000 {
                    n = black_box(n.wrapping_add(1));
                }
                Ok(format!("burnt {millions}"))
            }
            "spin" => {
                let ms: u64 = request
                    .raw_args
                    .parse()
                    .map_err(|_| "spin takes a number")?;
                spin_for(std::time::Duration::from_millis(ms))
            }
            "alloc-bomb" => alloc_bomb(),
            "recurse" => Ok(recurse(black_box(1)).to_string()),
            "depth" => {
                let levels: u64 = request
                    .raw_args
                    .parse()
                    .map_err(|_| "depth takes a number")?;
                Ok(format!("reached {}", depth(black_box(levels))))
            }
            "huge-reply" => {
                let len: usize = request
                    .raw_args
                    .parse()
                    .map_err(|_| "huge-reply takes a size")?;
                Ok("x".repeat(len))
            }
            "open-file" => match std::fs::read_to_string(&request.raw_args) {
                Ok(text) => Ok(format!("read {} bytes", text.len())),
                Err(err) => Err(format!("denied: {err}")),
            },
            "http-get" => plugboard_plugin::http::get(&request.raw_args, &[])
                .map(|response| format!("{} {}", response.status, response.text()))
                .map_err(|err| format!("denied: {err}")),
            "http-post" | "http-post-sized" => {
                let (url, body) = request
                    .raw_args
                    .split_once(' ')
                    .ok_or("http-post takes a URL and a body")?;
                let length = body.len().to_string();
                let mut headers = vec![("content-type", "text/plain")];
                if request.command == "http-post-sized" {
                    headers.push(("Content-Length", &length));
                }
                plugboard_plugin::http::post(url, &headers, body.as_bytes())
                    .map(|response| format!("{} {}", response.status, response.text()))
                    .map_err(|err| format!("denied: {err}"))
            }
            "write-file" => {
                let (path, text) = request
                    .raw_args
                    .split_once(' ')
                    .unwrap_or((&request.raw_args, ""));
                match std::fs::write(path, text) {
                    Ok(()) => Ok(format!("wrote {} bytes", text.len())),
                    Err(err) => Err(format!("denied: {err}")),
                }
            }
            "connect" => match std::net::TcpStream::connect(&request.raw_args) {
                Ok(_) => Ok("connected".into()),
                Err(err) => Err(format!("denied: {err}")),
            },
            "remember" => {
                MEMORY.with(|m| *m.borrow_mut() = request.raw_args);
                Ok("remembered".into())
            }
            "recall" => Ok(MEMORY.with(|m| m.borrow().clone())),
            "log-flood" | "print-flood" => {
                let [lines, bytes] = numbers(&request.args)?;
                let line = "y".repeat(bytes);
                for _ in 0..lines {
                    if request.command == "log-flood" {
                        match request.args.get(2).map(String::as_str) {
                            Some("debug") => plugboard_plugin::log::debug(&line),
                            _ => plugboard_plugin::log::info(&line),
                        }
                    } else {
                        eprintln!("{line}");
                    }
                }
                Ok(format!("wrote {lines} lines"))
            }
            other => Err(format!("unexpected command '{other}'")),
        }
    }
}

fn spin_for(time: std::time::Duration) -> Result<String, String> {
    plugboard_plugin::log::info("spin: started");
    let started = std::time::Instant::now();
    let mut n: u64 = 0;
    while started.elapsed() < time {
        n = black_box(n.wrapping_add(1));
    }
    Ok(format!("spun {}", time.as_millis()))
}

/// The two numbers a flood command takes.
fn numbers(args: &[String]) -> Result<[usize; 2], String> {
    let parse = |arg: Option<&String>| arg.and_then(|a| a.parse().ok());
    match (parse(args.first()), parse(args.get(1))) {
        (Some(lines), Some(bytes)) => Ok([lines, bytes]),
        _ => Err("takes LINES BYTES".into()),
    }
}

fn spin() -> ! {
    // Tests wait for this line to know the call is running.
    plugboard_plugin::log::info("spin: started");
    let mut n: u64 = 0;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

fn alloc_bomb() -> Result<String, String> {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        // Touch every page so the memory is really used, not just reserved.
        hoard.push(vec![1u8; 1 << 20]);
        black_box(&hoard);
    }
}

#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let frame = black_box([depth; 16]);
    recurse(frame[0] + 1) + frame[15]
}

/// Recursion that uses only the machine stack (no locals in linear memory),
/// so `max_stack_kib` alone decides how deep it can go.
fn depth(levels: u64) -> u64 {
    if levels == 0 {
        0
    } else {
        black_box(depth(black_box(levels - 1))) + 1
    }
}

plugboard_plugin::export!(Hostile);
