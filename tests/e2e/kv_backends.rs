//! One key-value test suite, run on every backend: in memory, on disk, and
//! in a real `redis-server`. Plugins see the same store whichever the
//! config names, so each test here holds for all three; the edge cases of
//! the Redis script (integers as Rust parses them, 64-bit overflow, quotas
//! on an increment) are among them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use plugboard::store::{Kv, KvError, KvLimits, Namespace, RedisSettings, Write, Written};

use crate::support::services::Redis;

fn limits() -> KvLimits {
    KvLimits {
        max_key_bytes: 8,
        max_value_bytes: 4,
        max_keys: 2,
        max_bytes: 8,
    }
}

/// A store under test and what it needs kept alive.
struct Backend {
    name: &'static str,
    store: Kv,
    _keep: Keep,
}

/// Held for as long as the store is used: its directory, or its Redis and
/// the runtime its operations run on.
#[allow(dead_code)]
enum Keep {
    Nothing,
    Dir(tempfile::TempDir),
    Redis(Redis, tokio::runtime::Runtime),
}

fn redis_store(redis: &Redis, runtime: &tokio::runtime::Runtime, limits: KvLimits) -> Kv {
    let _entered = runtime.enter();
    let settings = RedisSettings {
        url: redis.url(),
        timeout: std::time::Duration::from_secs(2),
        ca: None,
    };
    Kv::open_redis(&settings, limits).expect("open the Redis store")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

fn backends_with(limits: KvLimits) -> Vec<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let disk = Kv::open_disk(dir.path(), 1 << 20, limits).unwrap();
    let uncached_dir = tempfile::tempdir().unwrap();
    let uncached = Kv::open_disk(uncached_dir.path(), 0, limits).unwrap();
    let redis = Redis::start();
    let runtime = runtime();
    vec![
        Backend {
            name: "memory",
            store: Kv::in_memory(limits),
            _keep: Keep::Nothing,
        },
        Backend {
            name: "disk",
            store: disk,
            _keep: Keep::Dir(dir),
        },
        Backend {
            name: "disk, reads from the file",
            store: uncached,
            _keep: Keep::Dir(uncached_dir),
        },
        Backend {
            name: "redis",
            store: redis_store(&redis, &runtime, limits),
            _keep: Keep::Redis(redis, runtime),
        },
    ]
}

fn backends() -> Vec<Backend> {
    backends_with(limits())
}

fn set(ns: &Namespace, key: &str, value: &[u8]) -> Result<Written, KvError> {
    ns.write(key, Write::Set(value.to_vec())).wait_blocking()
}

fn apply(ns: &Namespace, key: &str, write: Write) -> Written {
    ns.write(key, write).wait_blocking().unwrap()
}

fn get(ns: &Namespace, key: &str) -> Option<Vec<u8>> {
    ns.get(key).wait_blocking().unwrap()
}

fn list(ns: &Namespace, prefix: &str) -> Vec<String> {
    ns.list_keys(prefix).wait_blocking().unwrap()
}

#[test]
fn namespaces_are_isolated() {
    for backend in backends() {
        let store = &backend.store;
        set(&store.namespace("a"), "k", b"1").unwrap();
        assert_eq!(get(&store.namespace("b"), "k"), None, "{}", backend.name);
        assert!(
            list(&store.namespace("b"), "").is_empty(),
            "{}",
            backend.name
        );
        // A namespace whose name extends another's is another namespace.
        assert_eq!(get(&store.namespace("a:k"), ""), None, "{}", backend.name);
        assert!(
            list(&store.namespace("a:"), "").is_empty(),
            "{}",
            backend.name
        );
        assert_eq!(get(&store.namespace("a"), "k"), Some(b"1".to_vec()));
    }
}

#[test]
fn limits_are_enforced() {
    for backend in backends() {
        let ns = backend.store.namespace("p");
        assert_eq!(set(&ns, "123456789", b"v"), Err(KvError::KeyTooLarge(8)));
        assert_eq!(set(&ns, "k", b"12345"), Err(KvError::ValueTooLarge(4)));
        set(&ns, "a", b"1").unwrap();
        set(&ns, "b", b"1").unwrap();
        assert_eq!(set(&ns, "c", b"1"), Err(KvError::TooManyKeys(2)));
        // Overwriting an existing key is not a new key.
        set(&ns, "a", b"2").unwrap();
        assert_eq!(
            ns.write("c", Write::Increment(1)).wait_blocking(),
            Err(KvError::TooManyKeys(2)),
            "{}",
            backend.name
        );
        let cas_new = Write::CompareAndSwap {
            expected: None,
            new: b"1".to_vec(),
        };
        assert_eq!(
            ns.write("c", cas_new).wait_blocking(),
            Err(KvError::TooManyKeys(2)),
            "{}",
            backend.name
        );
        // Incrementing an existing key at the key limit is allowed.
        assert_eq!(
            apply(&ns, "a", Write::Increment(1)),
            Written::Incremented(3)
        );
    }
}

#[test]
fn the_byte_quota_counts_keys_and_values_and_lets_a_plugin_shrink() {
    for backend in backends() {
        let store = &backend.store;
        let ns = store.namespace("p");
        set(&ns, "ab", b"1234").unwrap(); // 6 of 8 bytes
        assert_eq!(set(&ns, "c", b"12"), Err(KvError::OverQuota(8)));
        set(&ns, "c", b"1").unwrap(); // 8 of 8
        assert_eq!(set(&ns, "ab", b"12345"), Err(KvError::ValueTooLarge(4)));
        set(&ns, "ab", b"12").unwrap(); // shrinks: 6 of 8
        assert_eq!(apply(&ns, "c", Write::Delete), Written::Deleted(true));
        set(&ns, "ab", b"1234").unwrap(); // 6 of 8 again
        // An increment that grows a value past the quota is refused and
        // leaves the value as it was.
        set(&ns, "c", b"9").unwrap(); // 8 of 8
        assert_eq!(
            ns.write("c", Write::Increment(1)).wait_blocking(),
            Err(KvError::OverQuota(8)),
            "{}",
            backend.name
        );
        assert_eq!(get(&ns, "c"), Some(b"9".to_vec()), "{}", backend.name);
        assert_eq!(
            apply(&ns, "c", Write::Increment(-1)),
            Written::Incremented(8)
        );
        // Another namespace has its own quota.
        set(&store.namespace("q"), "abc", b"1234").unwrap();
    }
}

#[test]
fn increment_list_delete_and_cas() {
    for backend in backends() {
        let ns = backend.store.namespace("p");
        assert_eq!(
            apply(&ns, "n", Write::Increment(5)),
            Written::Incremented(5)
        );
        assert_eq!(
            apply(&ns, "n", Write::Increment(-2)),
            Written::Incremented(3)
        );
        set(&ns, "m", b"x").unwrap();
        assert_eq!(
            ns.write("m", Write::Increment(1)).wait_blocking(),
            Err(KvError::NotANumber)
        );
        assert_eq!(list(&ns, ""), ["m", "n"], "{}", backend.name);
        assert_eq!(list(&ns, "n"), ["n"]);
        let cas = |expected: Option<&[u8]>, new: &[u8]| Write::CompareAndSwap {
            expected: expected.map(<[u8]>::to_vec),
            new: new.to_vec(),
        };
        assert_eq!(
            apply(&ns, "m", cas(Some(b"y"), b"z")),
            Written::Swapped(false)
        );
        assert_eq!(
            apply(&ns, "m", cas(Some(b"x"), b"z")),
            Written::Swapped(true)
        );
        assert_eq!(get(&ns, "m"), Some(b"z".to_vec()));
        assert_eq!(apply(&ns, "m", cas(None, b"w")), Written::Swapped(false));
        assert_eq!(apply(&ns, "m", Write::Delete), Written::Deleted(true));
        assert_eq!(apply(&ns, "m", Write::Delete), Written::Deleted(false));
        assert_eq!(apply(&ns, "m", cas(None, b"new")), Written::Swapped(true));
        assert_eq!(
            apply(&ns, "m", cas(Some(b""), b"x")),
            Written::Swapped(false)
        );
        set(&ns, "m", b"").unwrap();
        assert_eq!(
            apply(&ns, "m", cas(Some(b""), b"x")),
            Written::Swapped(true)
        );
    }
}

/// Decimal integers as Rust reads them (a `+`, leading zeros, `-0`), and
/// the 64-bit range held exactly: Lua's numbers are doubles, so the Redis
/// script must never do this arithmetic itself.
#[test]
fn increments_read_and_keep_64_bit_integers_exactly() {
    let roomy = KvLimits {
        max_key_bytes: 64,
        max_value_bytes: 64,
        max_keys: 100,
        max_bytes: 10_000,
    };
    for backend in backends_with(roomy) {
        let ns = backend.store.namespace("p");
        let incremented = |key: &str, start: &[u8], delta: i64| {
            set(&ns, key, start).unwrap();
            ns.write(key, Write::Increment(delta)).wait_blocking()
        };
        let name = backend.name;
        assert_eq!(
            incremented("a", b"+5", 1),
            Ok(Written::Incremented(6)),
            "{name}"
        );
        assert_eq!(
            incremented("b", b"007", 1),
            Ok(Written::Incremented(8)),
            "{name}"
        );
        assert_eq!(
            incremented("c", b"-0", -1),
            Ok(Written::Incremented(-1)),
            "{name}"
        );
        assert_eq!(
            incremented("d", b"-007", 0),
            Ok(Written::Incremented(-7)),
            "{name}"
        );
        let max = i64::MAX.to_string();
        assert_eq!(
            incremented("e", (i64::MAX - 1).to_string().as_bytes(), 1),
            Ok(Written::Incremented(i64::MAX)),
            "{name}"
        );
        assert_eq!(get(&ns, "e"), Some(max.clone().into_bytes()), "{name}");
        assert_eq!(
            ns.write("e", Write::Increment(1)).wait_blocking(),
            Err(KvError::NotANumber),
            "{name}: overflow"
        );
        assert_eq!(
            get(&ns, "e"),
            Some(max.into_bytes()),
            "{name}: left as it was"
        );
        assert_eq!(
            incremented("f", i64::MIN.to_string().as_bytes(), 0),
            Ok(Written::Incremented(i64::MIN)),
            "{name}"
        );
        for not_a_number in [
            &b"1.5"[..],
            b" 1",
            b"1 ",
            b"",
            b"+",
            b"99999999999999999999",
        ] {
            assert_eq!(
                incremented("g", not_a_number, 1),
                Err(KvError::NotANumber),
                "{name}: {not_a_number:?}"
            );
            assert_eq!(get(&ns, "g"), Some(not_a_number.to_vec()), "{name}");
        }
    }
}

#[test]
fn values_are_bytes_not_text() {
    for backend in backends() {
        let ns = backend.store.namespace("p");
        let bytes = [0u8, 255, b'\r', b'\n'];
        set(&ns, "bin", &bytes).unwrap();
        assert_eq!(get(&ns, "bin"), Some(bytes.to_vec()), "{}", backend.name);
    }
}

#[test]
fn concurrent_writes_each_apply_once() {
    for backend in backends() {
        let writers: Vec<_> = (0..8)
            .map(|_| {
                let ns = backend.store.namespace("p");
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        ns.write("n", Write::Increment(1)).wait_blocking().unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        assert_eq!(
            get(&backend.store.namespace("p"), "n"),
            Some(b"400".to_vec()),
            "{}",
            backend.name
        );
    }
}

/// A write is read by everyone once acknowledged, on the disk store too,
/// where reads come from memory: each round a fresh namespace is copied in
/// by readers while its writer commits, and no read ever goes back.
#[test]
fn a_write_is_read_everywhere_once_acknowledged() {
    let limits = KvLimits {
        max_key_bytes: 16,
        max_value_bytes: 16,
        max_keys: 16,
        max_bytes: 1024,
    };
    for backend in backends_with(limits) {
        for round in 0..20 {
            let ns = format!("r{round}");
            let done = Arc::new(AtomicBool::new(false));
            let readers: Vec<_> = (0..2)
                .map(|_| {
                    let ns = backend.store.namespace(&ns);
                    let done = done.clone();
                    std::thread::spawn(move || {
                        let mut last = 0;
                        while !done.load(Ordering::Relaxed) {
                            let seen = count(&ns);
                            assert!(seen >= last, "a read went back from {last} to {seen}");
                            last = seen;
                        }
                    })
                })
                .collect();
            let writer = backend.store.namespace(&ns);
            for n in 1..=10 {
                let written = writer.write("n", Write::Increment(1)).wait_blocking();
                assert_eq!(written, Ok(Written::Incremented(n)), "{}", backend.name);
                let elsewhere = backend.store.namespace(&ns);
                assert_eq!(count(&elsewhere), n, "{}: read after the ack", backend.name);
                assert_eq!(list(&elsewhere, ""), ["n"], "{}", backend.name);
            }
            done.store(true, Ordering::Relaxed);
            for reader in readers {
                reader.join().unwrap();
            }
        }
    }
}

fn count(ns: &Namespace) -> i64 {
    get(ns, "n").map_or(0, |n| String::from_utf8(n).unwrap().parse().unwrap())
}

/// The quota is kept in Redis beside the entries: two stores (two hosts)
/// share it, so together they cannot exceed it.
#[test]
fn hosts_sharing_a_redis_share_its_quotas() {
    let redis = Redis::start();
    let runtime = runtime();
    let a = redis_store(&redis, &runtime, limits()).namespace("p");
    let b = redis_store(&redis, &runtime, limits()).namespace("p");
    set(&a, "x", b"1").unwrap();
    set(&b, "y", b"1").unwrap();
    assert_eq!(set(&a, "z", b"1"), Err(KvError::TooManyKeys(2)));
    assert_eq!(get(&b, "x"), Some(b"1".to_vec()));
}

/// A password in the URL is used; a wrong one is `Unavailable`, not a crash.
#[test]
fn a_password_in_the_url_authenticates() {
    let redis = Redis::start_with_password("s3cret");
    let runtime = runtime();
    let ns = redis_store(&redis, &runtime, limits()).namespace("p");
    set(&ns, "k", b"v").unwrap();
    assert_eq!(redis.cli(&["HGET", "plugboard:kv:p", "k"]), "v");

    let _entered = runtime.enter();
    let wrong = RedisSettings {
        url: format!("redis://:wrong@127.0.0.1:{}", redis.port),
        timeout: std::time::Duration::from_secs(1),
        ca: None,
    };
    let ns = Kv::open_redis(&wrong, limits()).unwrap().namespace("p");
    assert!(matches!(
        ns.get("k").wait_blocking(),
        Err(KvError::Unavailable(_))
    ));
}

/// `rediss://` verified against `redis_ca`, a private CA: served; a CA that
/// did not issue the server's certificate: `Unavailable`, nothing sent.
#[test]
fn rediss_verifies_redis_against_the_given_ca() {
    let pki = crate::tls::Pki::new();
    let redis = Redis::start_tls(&pki.path("server.pem"), &pki.path("server.key"));
    let runtime = runtime();
    let _entered = runtime.enter();
    let open = |ca: &str| {
        let settings = RedisSettings {
            url: redis.url(),
            timeout: std::time::Duration::from_secs(2),
            ca: Some(pki.path(ca)),
        };
        Kv::open_redis(&settings, limits()).unwrap().namespace("p")
    };
    assert!(redis.url().starts_with("rediss://"));
    let trusted = open("ca.pem");
    set(&trusted, "k", b"v").unwrap();
    assert_eq!(get(&trusted, "k"), Some(b"v".to_vec()));
    let untrusted = open("other-ca.pem");
    assert!(matches!(
        untrusted.get("k").wait_blocking(),
        Err(KvError::Unavailable(_))
    ));
}

#[test]
fn the_disk_store_persists_and_refuses_a_damaged_file() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Kv::open_disk(dir.path(), 1 << 20, limits()).unwrap();
        set(&store.namespace("p"), "k", b"v").unwrap();
    }
    let store = Kv::open_disk(dir.path(), 1 << 20, limits()).unwrap();
    assert_eq!(get(&store.namespace("p"), "k"), Some(b"v".to_vec()));
    drop(store);
    let file = dir.path().join("state.redb");
    for damage in [&b"garbage, not a database"[..], b""] {
        std::fs::write(&file, damage).unwrap();
        let err = format!(
            "{:#}",
            Kv::open_disk(dir.path(), 1 << 20, limits()).err().unwrap()
        );
        assert!(err.contains(&file.display().to_string()), "{err}");
    }
}

/// Redis answering with an error (here a key of another type at the
/// namespace's name, put there from outside) fails that namespace's
/// operations as `Unavailable`; the others go on.
#[test]
fn a_redis_refusal_costs_only_the_operations_it_refuses() {
    let redis = Redis::start();
    let runtime = runtime();
    let store = redis_store(&redis, &runtime, limits());
    assert_eq!(redis.cli(&["SET", "plugboard:kv:p", "not a hash"]), "OK");
    assert!(matches!(
        store.namespace("p").get("k").wait_blocking(),
        Err(KvError::Unavailable(_))
    ));
    assert!(matches!(
        set(&store.namespace("p"), "k", b"v"),
        Err(KvError::Unavailable(_))
    ));
    set(&store.namespace("q"), "k", b"v").unwrap();
    assert_eq!(get(&store.namespace("q"), "k"), Some(b"v".to_vec()));
}
