//! What one plugin call costs: `handle("on")` of the onoff plugin in the
//! connection's warm instance (what the server does), and in a fresh instance
//! per call with the engine settings the server uses and without each of
//! them, against a native baseline doing the same work in plain Rust.
//!
//! Prints figures; asserts nothing about time. Run with `make bench-call`
//! (needs the plugins built: `make plugins`).

use plugboard_test_support as support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use plugboard::plugin::{Answer, EngineOptions, Plugin, Session, Terms, WasmRuntime};
use plugboard::protocol::reply::Reply;
use plugboard::protocol::request::Request;
use plugboard::store::{Kv, KvLimits};

const WARMUP_CALLS: usize = 2_000;
const SEQUENTIAL_CALLS: usize = 50_000;
const CONCURRENT_TASKS: usize = 64;
const CALLS_PER_TASK: usize = 1_000;

/// Something that answers `on` the way a plugin would.
/// `session` is the caller's, one per task as one per connection.
trait Handler: Send + Sync + 'static {
    fn handle(&self, request: Request, session: &mut Session)
    -> impl Future<Output = Reply> + Send;
}

struct Wasm {
    plugin: Plugin,
    /// A fresh instance for every call instead of the session's.
    fresh: bool,
}

impl Handler for Wasm {
    async fn handle(&self, request: Request, session: &mut Session) -> Reply {
        let session = if self.fresh {
            &mut Session::default()
        } else {
            session
        };
        match self.plugin.call(request, session).await {
            Answer::Reply(text) => Reply::ok(text),
            Answer::Refusal(message) => Reply::error(message),
            Answer::Failure(err) => panic!("benchmark call failed: {err}"),
        }
    }
}

/// The same work as onoff's `handle`, as a plain function.
struct Native;

impl Handler for Native {
    async fn handle(&self, request: Request, _session: &mut Session) -> Reply {
        match request.command.as_str() {
            "on" | "off" => Reply::ok("success".into()),
            other => Reply::error(format_args!("unknown '{other}'")),
        }
    }
}

struct Figures {
    sequential: Duration,
    concurrent_per_sec: f64,
}

async fn measure<H: Handler>(handler: Arc<H>) -> Figures {
    let on = || Request::parse(b"on").expect("valid request");
    let mut session = Session::default();
    for _ in 0..WARMUP_CALLS {
        handler.handle(on(), &mut session).await;
    }
    let start = Instant::now();
    for _ in 0..SEQUENTIAL_CALLS {
        std::hint::black_box(handler.handle(on(), &mut session).await);
    }
    let sequential = start.elapsed() / SEQUENTIAL_CALLS as u32;

    let start = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENT_TASKS)
        .map(|_| {
            let handler = handler.clone();
            tokio::spawn(async move {
                let mut session = Session::default();
                for _ in 0..CALLS_PER_TASK {
                    std::hint::black_box(handler.handle(on(), &mut session).await);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("benchmark task");
    }
    let total = (CONCURRENT_TASKS * CALLS_PER_TASK) as f64;
    Figures {
        sequential,
        concurrent_per_sec: total / start.elapsed().as_secs_f64(),
    }
}

async fn wasm(options: EngineOptions, fresh: bool) -> Figures {
    let store = Kv::in_memory(KvLimits {
        max_key_bytes: 256,
        max_value_bytes: 65536,
        max_keys: 10_000,
        max_bytes: 64 << 20,
    });
    let runtime = WasmRuntime::new(options, store).expect("runtime");
    let plugin = Plugin::load(
        &runtime,
        "onoff",
        &support::built_plugin("onoff"),
        Terms::default(),
    )
    .await
    .expect("load onoff");
    measure(Arc::new(Wasm { plugin, fresh })).await
}

#[tokio::main]
async fn main() {
    let server = EngineOptions {
        max_concurrent_calls: CONCURRENT_TASKS,
        ..EngineOptions::default()
    };
    let variants = [
        ("plugboard: warm instance", server.clone(), false),
        ("fresh instance per call", server.clone(), true),
        (
            "fresh, no epoch interruption",
            EngineOptions {
                epoch_interruption: false,
                ..server.clone()
            },
            true,
        ),
        (
            "fresh, no pooling allocator",
            EngineOptions {
                pooling_allocator: false,
                ..server.clone()
            },
            true,
        ),
    ];

    let native = measure(Arc::new(Native)).await;
    println!(
        "one call = handle(\"on\") of onoff (+ instantiation when fresh); {} worker threads",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "{:<32} {:>12} {:>14} {:>22}",
        "variant", "µs/call", "calls/s (1)", "calls/s (64 tasks)"
    );
    print_row("native baseline (plain Rust)", &native, None);
    for (name, options, fresh) in variants {
        let figures = wasm(options, fresh).await;
        print_row(name, &figures, Some(&native));
    }
}

fn print_row(name: &str, figures: &Figures, native: Option<&Figures>) {
    let per_call_us = figures.sequential.as_secs_f64() * 1e6;
    let ratio = native
        .map(|n| {
            let ratio = figures.concurrent_per_sec / n.concurrent_per_sec;
            format!("  ({ratio:.5} of native, {:.0}x slower)", 1.0 / ratio)
        })
        .unwrap_or_default();
    println!(
        "{name:<32} {per_call_us:>12.3} {:>14.0} {:>22.0}{ratio}",
        1.0 / figures.sequential.as_secs_f64(),
        figures.concurrent_per_sec
    );
}
