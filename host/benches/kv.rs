//! Cost of the key-value operations plugins get from the host, per backend,
//! measured on the store directly (no plugin, no socket), and durable write
//! throughput with 1, 16 and 64 concurrent writers, disk and Redis against
//! memory. Every disk write is durable (fsynced) before it completes;
//! concurrent writers share commits (group commit). Redis is a real
//! `redis-server` on loopback with `appendfsync always`, as docs/deployment.md asks
//! for durable state. Prints figures; asserts nothing.
//!
//! Run with `make bench-kv`.

use plugboard_test_support as support;

use std::time::{Duration, Instant};

use plugboard::store::{Kv, KvLimits, Namespace, RedisSettings, Write, Written};
use support::services::Redis;

const LIMITS: KvLimits = KvLimits {
    max_key_bytes: 256,
    max_value_bytes: 65536,
    max_keys: 1_000_000,
    max_bytes: 1 << 40,
};

/// Runs `op` `n` times and returns the mean time per call.
fn time(n: u32, mut op: impl FnMut(u32)) -> Duration {
    let start = Instant::now();
    for i in 0..n {
        op(i);
    }
    start.elapsed() / n
}

fn apply(ns: &Namespace, key: &str, write: Write) -> Written {
    ns.write(key, write).wait_blocking().expect("write")
}

fn bench(name: &str, store: &Kv, writes: u32) {
    let ns = store.namespace("bench");
    let set = time(writes, |i| {
        apply(&ns, &format!("key-{i}"), Write::Set(b"on".to_vec()));
    });
    let overwrite = time(writes, |_| {
        apply(&ns, "state", Write::Set(b"on".to_vec()));
    });
    let get = time(writes * 10, |i| {
        std::hint::black_box(ns.get(&format!("key-{}", i % writes)).wait_blocking()).expect("get");
    });
    let increment = time(writes, |_| {
        apply(&ns, "counter", Write::Increment(1));
    });
    let cas = time(writes, |i| {
        let (old, new) = if i % 2 == 0 {
            (b"on", b"no")
        } else {
            (b"no", b"on")
        };
        let write = Write::CompareAndSwap {
            expected: Some(old.to_vec()),
            new: new.to_vec(),
        };
        apply(&ns, "state", write);
    });
    let list = time(1_000, |_| {
        std::hint::black_box(ns.list_keys("key-1").wait_blocking()).expect("list");
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

/// Acknowledged increments per second from `writers` threads, each waiting
/// for its write to be durable before the next (as a plugin call does).
fn throughput(store: &Kv, writers: usize, run_for: Duration) -> f64 {
    let start = Instant::now();
    let counts: Vec<u64> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let ns = store.namespace(&format!("writer-{w}"));
                scope.spawn(move || {
                    let mut n = 0;
                    while start.elapsed() < run_for {
                        apply(&ns, "counter", Write::Increment(1));
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    counts.iter().sum::<u64>() as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    println!(
        "µs per operation, one caller (disk writes: one fsynced commit each; \
         redis: one round trip, AOF fsynced)"
    );
    println!(
        "{:<8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "backend", "set new", "set same", "get", "increment", "cas", "list prefix"
    );
    bench("memory", &Kv::in_memory(LIMITS), 10_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let disk = Kv::open_disk(dir.path(), 64 << 20, LIMITS).expect("disk store");
    bench("disk", &disk, 1_000);
    let redis_server = Redis::start();
    // The Redis store's operations run on a runtime of their own threads,
    // as they do on the server's workers.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let redis = {
        let _entered = runtime.enter();
        let settings = RedisSettings {
            url: redis_server.url(),
            timeout: Duration::from_secs(2),
            ca: None,
        };
        Kv::open_redis(&settings, LIMITS).expect("redis store")
    };
    bench("redis", &redis, 1_000);

    println!();
    println!("acknowledged durable increments per second, concurrent writers");
    println!(
        "{:<8} {:>12} {:>12} {:>12} {:>12} {:>12}",
        "writers", "memory", "disk", "disk/memory", "redis", "redis/memory"
    );
    let memory = Kv::in_memory(LIMITS);
    for writers in [1, 16, 64] {
        let run_for = Duration::from_secs(2);
        let in_memory = throughput(&memory, writers, run_for);
        let on_disk = throughput(&disk, writers, run_for);
        let in_redis = throughput(&redis, writers, run_for);
        println!(
            "{writers:<8} {in_memory:>12.0} {on_disk:>12.0} {:>12.3} {in_redis:>12.0} {:>12.3}",
            on_disk / in_memory,
            in_redis / in_memory
        );
    }
}
