//! The Redis backend (`state_store = "redis"`): plugin state shared by
//! every host that points at the same Redis, so several hosts serve as one.
//!
//! Layout: a plugin's keys are the fields of one hash, `plugboard:kv:<plugin>`,
//! and the bytes they hold are counted at `plugboard:bytes:<plugin>`. A
//! plugin names fields, never Redis keys, so it cannot reach another's
//! state however it spells a key. Reads are one `HGET` or `HKEYS`.
//!
//! Every write is one Lua script ([`WRITE_SCRIPT`]): Redis runs a script
//! alone, so `increment` and `compare-and-swap` are atomic across hosts and
//! the namespace quotas hold without a retry loop (`WATCH`/`MULTI` would need
//! a connection per writer and retries under contention). The script follows
//! the rules of [`Write::plan`](super::Write::plan); the shared backend tests
//! hold the two to one behaviour.
//!
//! Failure is bounded: each operation runs as a task of its own under
//! `timeout`, so a Redis that is down or stalled costs a state command an
//! `error: state unavailable` within that time, never a wedged call; commands
//! that touch no state never wait on Redis. The connection manager
//! reconnects by itself, in the background, when Redis is back. Durability
//! of an acknowledged write is Redis's: with `appendonly yes` and
//! `appendfsync always` it is on disk before the reply (see docs/deployment.md).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::oneshot;

use super::{Backend, Completion, KvError, KvLimits, Unavailable, Usage, Write, Written};
use crate::telemetry::{Admit, LogBudget};

/// Where Redis is and how long an operation may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://[:password@]host:port[/db]`, or `rediss://` for TLS.
    pub url: String,
    /// The longest one state operation may wait on Redis.
    pub timeout: Duration,
    /// PEM CA certificates that verify a `rediss://` server, instead of the
    /// system's roots (a Redis on a LAN has a private CA).
    pub ca: Option<PathBuf>,
}

impl RedisSettings {
    /// The URL checked for form, the CA file read (not reachability): a
    /// config error names the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.client().map(drop)
    }

    fn client(&self) -> anyhow::Result<redis::Client> {
        let client = redis::Client::open(self.url.as_str())
            .with_context(|| format!("`redis_url` {:?} is not a Redis URL", self.redacted()))?;
        let Some(ca) = &self.ca else {
            return Ok(client);
        };
        anyhow::ensure!(
            self.url.starts_with("rediss://"),
            "`redis_ca` is set, but `redis_url` {:?} is not a rediss:// (TLS) URL",
            self.redacted()
        );
        let root_cert = std::fs::read(ca)
            .with_context(|| format!("`redis_ca`: cannot read {}", ca.display()))?;
        let certificates = redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(root_cert),
        };
        redis::Client::build_with_tls(client.get_connection_info().clone(), certificates)
            .with_context(|| format!("`redis_ca` {}: not PEM certificates", ca.display()))
    }

    /// The URL without its password, for the log and errors.
    pub fn redacted(&self) -> String {
        match (self.url.split_once("://"), self.url.rfind('@')) {
            (Some((scheme, _)), Some(at)) => format!("{scheme}://***{}", &self.url[at..]),
            _ => self.url.clone(),
        }
    }
}

pub struct RedisStore {
    connection: ConnectionManager,
    /// Operations run here, so a caller outside the runtime can wait too.
    runtime: tokio::runtime::Handle,
    timeout: Duration,
    write: Arc<redis::Script>,
    health: Arc<Health>,
}

impl RedisStore {
    /// Sets the connection up without waiting for it: the first operations
    /// (and a background check, which logs the outcome) connect.
    pub fn open(settings: &RedisSettings) -> anyhow::Result<Self> {
        let client = settings.client()?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            // A reconnect tries a few times, quickly, then fails the
            // operations waiting on it; the next operation starts another.
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(250));
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .context("setting up the Redis connection")?;
        let runtime = tokio::runtime::Handle::try_current()
            .context("the Redis store runs on a Tokio runtime")?;
        let store = Self {
            connection,
            runtime,
            timeout: settings.timeout,
            write: Arc::new(redis::Script::new(WRITE_SCRIPT)),
            health: Arc::new(Health {
                server: settings.redacted(),
                down: AtomicBool::new(false),
                refusals: LogBudget::new("redis", REFUSALS_LOGGED_PER_SEC),
            }),
        };
        store.check_in_background();
        Ok(store)
    }

    /// Says at startup whether Redis answers, without holding startup up
    /// (a failure is logged, and watched, like any other).
    fn check_in_background(&self) {
        let answered = self.run(ping, Ok);
        let server = self.health.server.clone();
        self.runtime.spawn(async move {
            if answered.wait().await.is_ok() {
                tracing::info!(redis = %server, "plugin state in Redis");
            }
        });
    }

    /// Runs `op` on a task of its own under the timeout, and `finish` on
    /// its answer: the operation finishes (or times out) even if nobody
    /// waits for it any more, so a write is never cut off half-sent.
    fn run<T, U, F>(
        &self,
        op: impl FnOnce(ConnectionManager) -> F,
        finish: impl FnOnce(T) -> Result<U, KvError> + Send + 'static,
    ) -> Completion<U>
    where
        U: Send + 'static,
        F: Future<Output = redis::RedisResult<T>> + Send + 'static,
    {
        let (reply, receiver) = oneshot::channel();
        let operation = op(self.connection.clone());
        let (connection, timeout) = (self.connection.clone(), self.timeout);
        let health = self.health.clone();
        self.runtime.spawn(async move {
            let result = match answer_within(timeout, operation).await {
                Ok(answer) => finish(health.up(answer)),
                Err(Failure::Unreachable(reason)) => {
                    if health.went_down(&reason) {
                        tokio::spawn(watch_until_up(connection, health.clone(), timeout));
                    }
                    Err(health.unavailable(&reason).into())
                }
                Err(Failure::Refused(reason)) => Err(health.refused(&reason).into()),
            };
            let _ = reply.send(result);
        });
        Completion::Pending(receiver)
    }
}

/// Why an operation got no answer to use.
enum Failure {
    /// No answer: Redis is down, unreachable or stalled.
    Unreachable(String),
    /// Redis answered with an error (a key of another type at our name,
    /// out of memory with `maxmemory`, a wrong password): it is up.
    Refused(String),
}

async fn answer_within<T>(
    timeout: Duration,
    operation: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(timeout, operation).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(err)) if err.is_io_error() || err.is_timeout() || err.is_connection_dropped() => {
            Err(Failure::Unreachable(err.to_string()))
        }
        Ok(Err(err)) => Err(Failure::Refused(err.to_string())),
        Err(_) => Err(Failure::Unreachable(format!(
            "no answer within {timeout:?}"
        ))),
    }
}

async fn ping(mut connection: ConnectionManager) -> redis::RedisResult<String> {
    redis::cmd("PING").query_async(&mut connection).await
}

/// While Redis is down, asks it every [`WATCH_EVERY`]: the connection is
/// made again as soon as it answers, not by the next state command (which
/// would then pay for the reconnect, or fail on it).
async fn watch_until_up(connection: ConnectionManager, health: Arc<Health>, timeout: Duration) {
    while health.is_down() {
        tokio::time::sleep(WATCH_EVERY).await;
        if answer_within(timeout, ping(connection.clone()))
            .await
            .is_ok()
        {
            health.up(());
        }
    }
}

/// How often a Redis that is down is asked whether it is back.
const WATCH_EVERY: Duration = Duration::from_millis(200);

fn data_key(ns: &str) -> String {
    format!("plugboard:kv:{ns}")
}

fn bytes_key(ns: &str) -> String {
    format!("plugboard:bytes:{ns}")
}

impl Backend for RedisStore {
    fn get(&self, ns: &str, key: &str) -> Completion<Option<Vec<u8>>> {
        let mut hget = redis::cmd("HGET");
        hget.arg(data_key(ns)).arg(key);
        self.run(
            move |mut connection| async move { hget.query_async(&mut connection).await },
            Ok,
        )
    }

    /// The namespace's field count and its byte count, in one round trip.
    fn usage(&self, ns: &str) -> Completion<Usage> {
        let mut pipe = redis::pipe();
        pipe.cmd("HLEN")
            .arg(data_key(ns))
            .cmd("GET")
            .arg(bytes_key(ns));
        self.run(
            move |mut connection| async move { pipe.query_async(&mut connection).await },
            |(keys, bytes): (u32, Option<u64>)| {
                Ok(Usage {
                    keys,
                    bytes: bytes.unwrap_or(0),
                })
            },
        )
    }

    /// All of the namespace's fields, filtered and sorted here: a namespace
    /// holds at most `max_keys_per_plugin` of them.
    fn list_keys(&self, ns: &str, prefix: &str) -> Completion<Vec<String>> {
        let mut hkeys = redis::cmd("HKEYS");
        hkeys.arg(data_key(ns));
        let prefix = prefix.to_owned();
        self.run(
            move |mut connection| async move { hkeys.query_async(&mut connection).await },
            move |keys: Vec<String>| {
                let mut keys: Vec<String> = keys
                    .into_iter()
                    .filter(|key| key.starts_with(&prefix))
                    .collect();
                keys.sort_unstable();
                Ok(keys)
            },
        )
    }

    /// Every read is a round trip.
    fn reads_at_once(&self) -> bool {
        false
    }

    fn write(&self, ns: &str, key: &str, write: Write, limits: KvLimits) -> Completion {
        let script = self.write.clone();
        let (data, bytes, key) = (data_key(ns), bytes_key(ns), key.to_owned());
        self.run(
            move |mut connection| async move {
                let mut invocation = script.prepare_invoke();
                invocation
                    .key(data)
                    .key(bytes)
                    .arg(key)
                    .arg(limits.max_keys)
                    .arg(limits.max_bytes);
                match write {
                    Write::Set(value) => invocation.arg("set").arg(value),
                    Write::Delete => invocation.arg("delete"),
                    Write::Increment(delta) => invocation.arg("increment").arg(delta),
                    Write::CompareAndSwap { expected, new } => invocation
                        .arg("cas")
                        .arg(new)
                        .arg(u8::from(expected.is_some()))
                        .arg(expected.unwrap_or_default()),
                };
                invocation
                    .invoke_async::<(String, String)>(&mut connection)
                    .await
            },
            move |(status, detail)| verdict(&status, &detail, limits),
        )
    }
}

/// What the script answered, as the write's result.
fn verdict(status: &str, detail: &str, limits: KvLimits) -> Result<Written, KvError> {
    let flag = || detail == "1";
    match status {
        "set" => Ok(Written::Set),
        "deleted" => Ok(Written::Deleted(flag())),
        "swapped" => Ok(Written::Swapped(flag())),
        "incremented" => detail
            .parse()
            .map(Written::Incremented)
            .map_err(|_| unexpected(status, detail)),
        "too-many-keys" => Err(KvError::TooManyKeys(limits.max_keys)),
        "over-quota" => Err(KvError::OverQuota(limits.max_bytes)),
        "not-a-number" => Err(KvError::NotANumber),
        _ => Err(unexpected(status, detail)),
    }
}

fn unexpected(status: &str, detail: &str) -> KvError {
    Unavailable(format!("Redis answered {status:?} {detail:?} to a write")).into()
}

/// Whether Redis is answering: the log says when it stops and when it is
/// back, once each, not per failed operation.
struct Health {
    /// The server, without its password.
    server: String,
    down: AtomicBool,
    /// Refused operations are logged each, up to a rate.
    refusals: LogBudget,
}

/// Refused Redis operations logged a second, at most.
const REFUSALS_LOGGED_PER_SEC: u32 = 1;

impl Health {
    fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    fn up<T>(&self, value: T) -> T {
        if self.down.swap(false, Ordering::AcqRel) {
            tracing::info!(redis = %self.server, "Redis answers again; plugin state available");
        }
        value
    }

    /// Counts a failed operation; whether Redis was up until now (then the
    /// log says so, once).
    fn went_down(&self, reason: &str) -> bool {
        crate::telemetry::state_store_error();
        let was_up = !self.down.swap(true, Ordering::AcqRel);
        if was_up {
            tracing::error!(
                redis = %self.server,
                "Redis does not answer ({reason}); commands that touch state get \
                 `error: state unavailable` until it does"
            );
        }
        was_up
    }

    fn refused(&self, reason: &str) -> Unavailable {
        crate::telemetry::state_store_error();
        if let Admit::Write { unwritten_before } = self.refusals.admit() {
            tracing::error!(
                redis = %self.server,
                unwritten_before,
                "Redis refused a state operation: {reason}"
            );
        }
        self.unavailable(reason)
    }

    fn unavailable(&self, reason: &str) -> Unavailable {
        Unavailable(format!("Redis at {}: {reason}", self.server))
    }
}

/// One write, atomically: `KEYS[1]` the namespace's hash, `KEYS[2]` its byte
/// count; `ARGV`: the key, `max_keys`, `max_bytes`, the operation and its
/// operands. Answers `{status, detail}`. Numbers stay strings where they
/// could exceed 2^53 (Lua's numbers are doubles): `HINCRBY` does the exact
/// 64-bit arithmetic and its result is read back as a string.
const WRITE_SCRIPT: &str = r#"
local data, bytes_key = KEYS[1], KEYS[2]
local field, max_keys, max_bytes, op = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local current = redis.call('HGET', data, field)
local used = tonumber(redis.call('GET', bytes_key) or '0')

local function size(value) return #field + #value end

local old = current and size(current) or 0

-- A new key must fit the key count.
local function no_room_for_a_key()
  return not current and redis.call('HLEN', data) >= max_keys
end

-- Growth must fit the byte quota; shrinking is always allowed.
local function over_quota(value)
  return size(value) > old and used - old + size(value) > max_bytes
end

-- Why the field may not become `value`, if it may not.
local function refused(value)
  if no_room_for_a_key() then return 'too-many-keys' end
  if over_quota(value) then return 'over-quota' end
  return nil
end

local function store(value)
  redis.call('HSET', data, field, value)
  redis.call('INCRBY', bytes_key, size(value) - old)
end

if op == 'set' then
  local refusal = refused(ARGV[5])
  if refusal then return {refusal, ''} end
  store(ARGV[5])
  return {'set', ''}
elseif op == 'delete' then
  if not current then return {'deleted', '0'} end
  redis.call('HDEL', data, field)
  redis.call('INCRBY', bytes_key, -size(current))
  return {'deleted', '1'}
elseif op == 'cas' then
  local matches
  if ARGV[6] == '1' then matches = (current == ARGV[7]) else matches = (current == false) end
  if not matches then return {'swapped', '0'} end
  local refusal = refused(ARGV[5])
  if refusal then return {refusal, ''} end
  store(ARGV[5])
  return {'swapped', '1'}
elseif op == 'increment' then
  local start = '0'
  if current then
    -- A decimal integer as Rust parses one: an optional sign, digits.
    local sign, digits = string.match(current, '^([+-]?)(%d+)$')
    if not digits then return {'not-a-number', ''} end
    digits = string.gsub(digits, '^0+', '')
    if digits == '' then start = '0'
    elseif sign == '-' then start = '-' .. digits
    else start = digits end
    if #digits > 19 then return {'not-a-number', ''} end
  elseif no_room_for_a_key() then
    return {'too-many-keys', ''}
  end
  redis.call('HSET', data, field, start)
  local added = redis.pcall('HINCRBY', data, field, ARGV[5])
  local result = redis.call('HGET', data, field)
  local function undo()
    if current then redis.call('HSET', data, field, current) else redis.call('HDEL', data, field) end
  end
  if type(added) == 'table' and added.err then undo() return {'not-a-number', ''} end
  if over_quota(result) then undo() return {'over-quota', ''} end
  redis.call('INCRBY', bytes_key, size(result) - old)
  return {'incremented', result}
end
return redis.error_reply('unknown operation ' .. tostring(op))
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_reaches_the_log() {
        let settings = |url: &str| RedisSettings {
            url: url.into(),
            timeout: Duration::from_secs(1),
            ca: None,
        };
        assert_eq!(
            settings("redis://:s3cret@db.lan:6379/2").redacted(),
            "redis://***@db.lan:6379/2"
        );
        assert_eq!(
            settings("rediss://user:pw@db.lan").redacted(),
            "rediss://***@db.lan"
        );
        assert_eq!(
            settings("redis://127.0.0.1:6379").redacted(),
            "redis://127.0.0.1:6379"
        );
        let err = format!(
            "{:#}",
            settings("http://x:s3cret@y").validate().unwrap_err()
        );
        assert!(!err.contains("s3cret"), "{err}");
    }
}
