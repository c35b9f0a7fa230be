//! Cost of the key-value operations plugins get from the host, per backend,
//! measured on the store directly (no plugin, no socket). Every disk write is
//! a durable (fsynced) redb commit. Prints figures; asserts nothing.
//!
//! Run with `make bench-kv`.

use std::time::{Duration, Instant};

use plugboard::store::{KvLimits, Store};

const LIMITS: KvLimits = KvLimits {
    max_key_bytes: 256,
    max_value_bytes: 65536,
    max_keys: 1_000_000,
};

/// Runs `op` `n` times and returns the mean time per call.
fn time(n: u32, mut op: impl FnMut(u32)) -> Duration {
    let start = Instant::now();
    for i in 0..n {
        op(i);
    }
    start.elapsed() / n
}

fn bench(name: &str, store: &Store, writes: u32) {
    let ns = store.namespace("bench");
    let set = time(writes, |i| ns.set(&format!("key-{i}"), b"on").unwrap());
    let overwrite = time(writes, |_| ns.set("state", b"on").unwrap());
    let get = time(100_000, |i| {
        std::hint::black_box(ns.get(&format!("key-{}", i % writes)).unwrap());
    });
    let increment = time(writes, |_| {
        ns.increment("counter", 1).unwrap();
    });
    let cas = time(writes, |i| {
        let (old, new) = if i % 2 == 0 {
            (b"on", b"no")
        } else {
            (b"no", b"on")
        };
        ns.compare_and_swap("state", Some(old), new).unwrap();
    });
    let list = time(1_000, |_| {
        std::hint::black_box(ns.list_keys("key-1").unwrap());
    });
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{name:<8} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>12.2}",
        us(set),
        us(overwrite),
        us(get),
        us(increment),
        us(cas),
        us(list)
    );
}

fn main() {
    println!("µs per operation (writes are durable on disk: one fsynced commit each)");
    println!(
        "{:<8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "backend", "set new", "set same", "get", "increment", "cas", "list prefix"
    );
    bench("memory", &Store::in_memory(LIMITS), 10_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let disk = Store::open_disk(dir.path(), LIMITS).expect("disk store");
    bench("disk", &disk, 1_000);
}
