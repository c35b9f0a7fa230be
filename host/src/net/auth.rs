//! Who may run what: tokens in the style of Redis's ACLs, and protected mode.
//!
//! With tokens configured, a connection starts with nothing: its first
//! message must be `auth <token>`, and anything else closes it. A token
//! grants a list of commands (or `*`, every one); a command outside it is
//! refused and the connection goes on. A wrong token closes the connection,
//! so nothing after it can run unauthenticated, and failures from one
//! address are answered more and more slowly.
//!
//! Tokens are kept only as SHA-256 hashes (the config never holds one) and
//! a presented token's hash is compared with every configured hash in
//! constant time, so neither the config nor the timing of a reply says
//! anything about a token. Tokens are never logged.
//!
//! A connection that has not authenticated holds a place under
//! `max_connections` and has done nothing to earn it, so it gets a deadline
//! of its own (`auth.timeout_ms`, see `timeouts.rs`), and together such
//! connections hold at most `auth.max_unauthenticated_percent` of the
//! places: past it, a newcomer displaces the oldest of an address holding
//! more than its share, or else the oldest (see [`Waiting`]). Silent sockets can then never keep a client
//! with a token out: it connects, displaces one of them, and authenticates
//! a round trip later; sockets reconnecting as fast as they are closed
//! displace one another, not the newcomer from an address of its own.
//!
//! With no tokens, protected mode (on by default, as in Redis) serves only
//! loopback clients: a server reachable from a network with no credential
//! is refused, not silently open.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use crate::config::TokenSettings;
use crate::protocol::reply::Reply;
use crate::protocol::request::{AUTH, HELP, Request, RequestError, SCHEDULES};

/// The configured tokens and the record of failed attempts.
pub struct Auth {
    tokens: Vec<Arc<Token>>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
    waiting: Waiting,
}

/// The connections that have not authenticated yet.
struct Waiting {
    limit: usize,
    next_id: AtomicU64,
    connections: Mutex<WaitingSet>,
}

/// The unauthenticated connections, oldest first (ids grow), each with its
/// address and the token that closes it when it is displaced, and how many
/// each address holds. The one displaced is the oldest of those whose
/// address holds more than its share (see [`WaitingSet::displace_one`]),
/// so that a flood from a few addresses displaces itself; failing that,
/// the oldest of all.
#[derive(Default)]
struct WaitingSet {
    by_age: BTreeMap<u64, (IpAddr, CancellationToken)>,
    per_address: HashMap<IpAddr, usize>,
}

/// Places an address may hold before its connections are displaced ahead
/// of others': a few handshakes at once from behind one NAT are ordinary.
const ORDINARY_PER_ADDRESS: usize = 4;

impl WaitingSet {
    fn len(&self) -> usize {
        self.by_age.len()
    }

    fn insert(&mut self, id: u64, peer: IpAddr, displaced: CancellationToken) {
        self.by_age.insert(id, (peer, displaced));
        *self.per_address.entry(peer).or_default() += 1;
    }

    fn remove(&mut self, id: u64) -> Option<CancellationToken> {
        let (peer, displaced) = self.by_age.remove(&id)?;
        if let Some(count) = self.per_address.get_mut(&peer) {
            *count -= 1;
            if *count == 0 {
                self.per_address.remove(&peer);
            }
        }
        Some(displaced)
    }

    /// Closes the oldest connection of an address holding more than its
    /// share of `limit` places (more than [`ORDINARY_PER_ADDRESS`], and more
    /// than the places divided among the addresses waiting), or else the
    /// oldest of all.
    fn displace_one(&mut self, limit: usize) -> bool {
        let share = limit
            .div_ceil(self.per_address.len().max(1))
            .max(ORDINARY_PER_ADDRESS);
        let over_share = |peer: &IpAddr| self.per_address.get(peer).is_some_and(|n| *n > share);
        let victim = self
            .by_age
            .iter()
            .find(|(_, (peer, _))| over_share(peer))
            .or_else(|| self.by_age.iter().next())
            .map(|(id, _)| *id);
        victim
            .and_then(|id| self.remove(id))
            .map(|displaced| displaced.cancel())
            .is_some()
    }
}

/// A connection's place among the unauthenticated: given up when it
/// authenticates or closes, taken from it when it is displaced.
pub struct WaitingPlace {
    id: u64,
    displaced: CancellationToken,
    auth: Arc<Auth>,
}

/// One token: who holds it, its hash, what it may run.
pub struct Token {
    name: String,
    sha256: [u8; 32],
    commands: Commands,
}

enum Commands {
    All,
    Only(BTreeSet<String>),
}

/// Recent failed attempts of one address.
#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// After this long without a failure, an address starts with a clean record.
const FAILURES_FORGOTTEN_AFTER: Duration = Duration::from_secs(60);
/// The first failure is answered at once, then each waits twice as long,
/// up to the maximum.
const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(5);
/// Addresses whose failures are remembered at most: a flood from many
/// addresses cannot grow the table without bound.
const MAX_REMEMBERED_ADDRESSES: usize = 10_000;

/// Where a connection stands.
pub enum Access {
    /// No tokens are configured: every command may run.
    Open,
    /// Tokens are configured and the connection has not authenticated.
    Pending(WaitingPlace),
    /// Authenticated with this token.
    Granted(Arc<Token>),
}

/// What the connection does with a message, once [`Access::gate`] saw it.
pub enum Gate {
    /// Route it to its plugin.
    Route(Request),
    /// Answer with this, and go on.
    Answer(Reply),
    /// Answer with this error and close the connection.
    Close(String),
}

impl Auth {
    /// The runtime form of `[[auth.tokens]]`; `None` when there are none.
    /// At most `max_unauthenticated` connections wait to authenticate.
    pub fn new(
        tokens: &[TokenSettings],
        max_unauthenticated: usize,
    ) -> anyhow::Result<Option<Arc<Self>>> {
        if tokens.is_empty() {
            return Ok(None);
        }
        let tokens = tokens
            .iter()
            .map(|token| {
                let sha256 = decode_sha256(&token.sha256).ok_or_else(|| {
                    anyhow::anyhow!("token {:?}: `sha256` is not 64 hex digits", token.name)
                })?;
                let commands = if token.commands.iter().any(|c| c == "*") {
                    Commands::All
                } else {
                    Commands::Only(token.commands.iter().cloned().collect())
                };
                Ok(Arc::new(Token {
                    name: token.name.clone(),
                    sha256,
                    commands,
                }))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Some(Arc::new(Self {
            tokens,
            failures: Mutex::new(HashMap::new()),
            waiting: Waiting {
                limit: max_unauthenticated.max(1),
                next_id: AtomicU64::new(0),
                connections: Mutex::new(WaitingSet::default()),
            },
        })))
    }

    /// A place among the connections waiting to authenticate, for one from
    /// `peer`; one of them is displaced if they are at their limit.
    fn wait(self: &Arc<Self>, peer: IpAddr) -> WaitingPlace {
        let id = self.waiting.next_id.fetch_add(1, Ordering::Relaxed);
        let displaced = CancellationToken::new();
        let mut connections = self.waiting.lock();
        connections.insert(id, peer, displaced.clone());
        while connections.len() > self.waiting.limit && connections.displace_one(self.waiting.limit)
        {
        }
        drop(connections);
        WaitingPlace {
            id,
            displaced,
            auth: self.clone(),
        }
    }

    /// The token whose hash matches `presented`'s. Every configured hash is
    /// compared, in constant time, whichever matches.
    fn verify(&self, presented: &str) -> Option<Arc<Token>> {
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for token in &self.tokens {
            if bool::from(token.sha256.ct_eq(&hash)) {
                found = Some(token.clone());
            }
        }
        found
    }

    /// How long to wait before answering `ip`'s failed attempt, which is
    /// recorded.
    fn record_failure(&self, ip: IpAddr) -> Duration {
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if failures.len() >= MAX_REMEMBERED_ADDRESSES {
            failures.retain(|_, f| now.duration_since(f.last) < FAILURES_FORGOTTEN_AFTER);
        }
        let entry = failures.entry(ip.to_canonical()).or_insert(Failures {
            count: 0,
            last: now,
        });
        if now.duration_since(entry.last) >= FAILURES_FORGOTTEN_AFTER {
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
        delay_after(entry.count)
    }
}

impl Auth {
    /// Whether the token named `token` may run `command` (`None`: no
    /// token has that name): the permissions of a schedule's runs.
    pub fn token_permits(&self, token: &str, command: &str) -> Option<bool> {
        let token = self.tokens.iter().find(|t| t.name == token)?;
        Some(token.permits(command))
    }

    /// Closes a connection waiting to authenticate (see
    /// [`WaitingSet::displace_one`]), if there is one: for a newcomer when
    /// every place is taken.
    pub fn displace_one(&self) -> bool {
        self.waiting.lock().displace_one(self.waiting.limit)
    }
}

impl Waiting {
    fn lock(&self) -> std::sync::MutexGuard<'_, WaitingSet> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for WaitingPlace {
    fn drop(&mut self) {
        self.auth.waiting.lock().remove(self.id);
    }
}

/// The wait before answering the `count`th recent failure of an address.
fn delay_after(count: u32) -> Duration {
    match count {
        0 | 1 => Duration::ZERO,
        n => FIRST_DELAY
            .saturating_mul(1 << (n - 2).min(16))
            .min(MAX_DELAY),
    }
}

impl Token {
    fn permits(&self, command: &str) -> bool {
        match &self.commands {
            Commands::All => true,
            Commands::Only(commands) => commands.contains(command),
        }
    }
}

impl Access {
    /// How a new connection from `peer` starts under `auth`.
    pub fn new(auth: Option<&Arc<Auth>>, peer: IpAddr) -> Self {
        match auth {
            None => Self::Open,
            Some(auth) => Self::Pending(auth.wait(peer)),
        }
    }

    /// Whether the connection has yet to authenticate.
    pub fn is_pending(&self) -> bool {
        matches!(self, Self::Pending(_))
    }

    /// Cancelled when this unauthenticated connection is displaced by a
    /// newer one; `None` once it has authenticated (or never had to).
    pub fn displaced(&self) -> Option<CancellationToken> {
        match self {
            Self::Pending(place) => Some(place.displaced.clone()),
            Self::Open | Self::Granted(_) => None,
        }
    }

    /// Whether this connection may run `command` (what `help` lists).
    pub fn permits(&self, command: &str) -> bool {
        match self {
            Self::Open => true,
            Self::Pending(_) => false,
            Self::Granted(token) => token.permits(command),
        }
    }

    /// Authenticates `auth` requests, and lets through what this
    /// connection may run. `help` is always let through: it lists only what
    /// the connection may run, and so is `schedules`. A message that is not a request is answered
    /// with why, except before authentication: a message that is not
    /// `auth <token>` then closes the connection, whatever it is, so that
    /// no client stays unauthenticated by sending messages that are not
    /// requests. `peer` is whose failures slow down.
    pub async fn gate(
        &mut self,
        auth: Option<&Arc<Auth>>,
        message: Result<Request, RequestError>,
        peer: IpAddr,
    ) -> Gate {
        let request = match message {
            Ok(request) => request,
            Err(err) => {
                crate::telemetry::unrouted(crate::telemetry::Outcome::Invalid);
                return match self {
                    Self::Pending(_) => Gate::Close(format!(
                        "{err}; authentication required: send `auth <token>` first"
                    )),
                    Self::Open | Self::Granted(_) => Gate::Answer(Reply::error(err)),
                };
            }
        };
        let command = request.command.as_str();
        if command == AUTH {
            // Boxed: its wait would otherwise be part of every connection's
            // future, busy or idle.
            return Box::pin(self.authenticate(auth, &request, peer)).await;
        }
        match self {
            Self::Open => Gate::Route(request),
            Self::Pending(_) => {
                Gate::Close("authentication required: send `auth <token>` first".into())
            }
            Self::Granted(token)
                if command == HELP || command == SCHEDULES || token.permits(command) =>
            {
                Gate::Route(request)
            }
            Self::Granted(token) => {
                crate::telemetry::permission_denied(&token.name);
                tracing::debug!(token = token.name, command, "permission denied");
                Gate::Answer(Reply::permission_denied(&token.name, command))
            }
        }
    }

    async fn authenticate(
        &mut self,
        auth: Option<&Arc<Auth>>,
        request: &Request,
        peer: IpAddr,
    ) -> Gate {
        let Some(auth) = auth else {
            return Gate::Answer(Reply::error("authentication is not enabled on this server"));
        };
        let token = match request.args.as_slice() {
            [token] => auth.verify(token),
            _ => None,
        };
        match token {
            Some(token) => {
                tracing::debug!(token = token.name, "authenticated");
                *self = Self::Granted(token);
                Gate::Answer(Reply::ok("success".into()))
            }
            None => {
                crate::telemetry::auth_failed();
                let delay = auth.record_failure(peer);
                tracing::debug!(%peer, ?delay, "authentication failed");
                tokio::time::sleep(delay).await;
                if let Self::Granted(_) = self {
                    *self = Self::Pending(auth.wait(peer));
                }
                Gate::Close("invalid token".into())
            }
        }
    }
}

/// Whether `ip` is served in protected mode: loopback only.
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// A new random token and its SHA-256 (lowercase hex), for `plugboard token`:
/// 32 bytes from the OS's random source, as 64 hex digits (printable ASCII,
/// no whitespace).
pub fn new_token() -> anyhow::Result<(String, String)> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|err| anyhow::anyhow!("no random source: {err}"))?;
    let token = hex(&bytes);
    let sha256 = hex(&Sha256::digest(token.as_bytes()));
    Ok((token, sha256))
}

fn decode_sha256(hex: &str) -> Option<[u8; 32]> {
    let mut hash = [0u8; 32];
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    for (byte, at) in hash.iter_mut().zip((0..64).step_by(2)) {
        *byte = u8::from_str_radix(&hex[at..at + 2], 16).ok()?;
    }
    Some(hash)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(commands: &[&str]) -> (Arc<Auth>, String) {
        let (token, sha256) = new_token().unwrap();
        let settings = TokenSettings {
            name: "panel".into(),
            sha256,
            commands: commands.iter().map(|c| c.to_string()).collect(),
        };
        (Auth::new(&[settings], 4).unwrap().unwrap(), token)
    }

    fn request(text: &str) -> Result<Request, RequestError> {
        Request::parse(text.as_bytes())
    }

    fn ip() -> IpAddr {
        "127.0.0.1".parse().unwrap()
    }

    #[tokio::test]
    async fn nothing_runs_before_auth_and_only_the_granted_commands_after() {
        let (auth, token) = auth(&["status"]);
        let auth = Some(&auth);
        let mut access = Access::new(auth, ip());
        assert!(matches!(
            access.gate(auth, request("status"), ip()).await,
            Gate::Close(_)
        ));
        let granted = access
            .gate(auth, request(&format!("auth {token}")), ip())
            .await;
        assert!(matches!(granted, Gate::Answer(reply) if !reply.is_error()));
        assert!(matches!(
            access.gate(auth, request("status"), ip()).await,
            Gate::Route(_)
        ));
        assert!(matches!(
            access.gate(auth, request("help"), ip()).await,
            Gate::Route(_)
        ));
        let denied = access.gate(auth, request("on"), ip()).await;
        assert!(
            matches!(denied, Gate::Answer(reply) if reply.as_str().contains("permission denied"))
        );
        assert!(access.permits("status") && !access.permits("on"));
    }

    #[tokio::test]
    async fn a_wrong_token_closes_and_revokes() {
        let (auth, token) = auth(&["*"]);
        let auth = Some(&auth);
        let mut access = Access::new(auth, ip());
        access
            .gate(auth, request(&format!("auth {token}")), ip())
            .await;
        assert!(access.permits("anything"));
        let wrong = access.gate(auth, request("auth nope"), ip()).await;
        assert!(matches!(wrong, Gate::Close(text) if text == "invalid token"));
        assert!(!access.permits("anything"));
    }

    #[tokio::test]
    async fn past_the_limit_a_newcomer_displaces_the_oldest_unauthenticated() {
        let (auth, token) = auth(&["*"]);
        let waiting: Vec<Access> = (0..4).map(|_| Access::new(Some(&auth), ip())).collect();
        let displaced: Vec<_> = waiting.iter().map(|a| a.displaced().unwrap()).collect();
        assert!(displaced.iter().all(|d| !d.is_cancelled()));
        let mut newcomer = Access::new(Some(&auth), ip());
        assert!(displaced[0].is_cancelled());
        assert!(displaced[1..].iter().all(|d| !d.is_cancelled()));
        // Authenticated and closed connections give their places up.
        let granted = newcomer
            .gate(Some(&auth), request(&format!("auth {token}")), ip())
            .await;
        assert!(matches!(granted, Gate::Answer(_)));
        assert!(newcomer.displaced().is_none());
        drop(waiting);
        let after: Vec<Access> = (0..4).map(|_| Access::new(Some(&auth), ip())).collect();
        assert!(after.iter().all(|a| !a.displaced().unwrap().is_cancelled()));
    }

    /// Newcomers from a few addresses displace those addresses' own
    /// waiting connections, never one from an address holding its share;
    /// among addresses holding a few each, the oldest goes first.
    #[tokio::test]
    async fn a_flood_from_few_addresses_displaces_itself() {
        let (_, sha256) = new_token().unwrap();
        let settings = TokenSettings {
            name: "panel".into(),
            sha256,
            commands: vec!["*".into()],
        };
        let auth = Auth::new(&[settings], 32).unwrap().unwrap();
        let at = |n: u8| IpAddr::from([127, 0, 0, n]);
        let holder = Access::new(Some(&auth), at(4));
        let flood: Vec<Access> = (0..1000)
            .map(|n| Access::new(Some(&auth), at(2 + (n % 2) as u8)))
            .collect();
        assert!(!holder.displaced().unwrap().is_cancelled());
        let waiting = flood
            .iter()
            .filter(|a| !a.displaced().unwrap().is_cancelled());
        assert_eq!(
            waiting.count(),
            31,
            "the flood keeps the rest of the places"
        );
        drop((holder, flood));
        // 32 addresses with one each, then a NAT with two: the oldest go.
        let singles: Vec<Access> = (10..42).map(|n| Access::new(Some(&auth), at(n))).collect();
        let nat: Vec<Access> = (0..2).map(|_| Access::new(Some(&auth), at(5))).collect();
        assert!(singles[0].displaced().unwrap().is_cancelled());
        assert!(singles[1].displaced().unwrap().is_cancelled());
        assert!(nat.iter().all(|a| !a.displaced().unwrap().is_cancelled()));
    }

    #[tokio::test]
    async fn before_auth_a_message_that_is_not_a_request_closes() {
        let (auth, _) = auth(&["*"]);
        let auth = Some(&auth);
        let mut access = Access::new(auth, ip());
        let empty = access.gate(auth, request(""), ip()).await;
        assert!(matches!(empty, Gate::Close(why) if why.contains("empty message")));
        let not_utf8 = Request::parse(b"\xff\xfe");
        let mut access = Access::new(auth, ip());
        assert!(matches!(
            access.gate(auth, not_utf8, ip()).await,
            Gate::Close(_)
        ));
    }

    #[tokio::test]
    async fn without_tokens_everything_runs_and_auth_is_refused() {
        let mut access = Access::new(None, ip());
        assert!(matches!(
            access.gate(None, request("on"), ip()).await,
            Gate::Route(_)
        ));
        let auth = access.gate(None, request("auth x"), ip()).await;
        assert!(matches!(auth, Gate::Answer(reply) if reply.as_str().contains("not enabled")));
    }

    #[test]
    fn failures_from_one_address_wait_longer_and_longer() {
        let (auth, _) = auth(&["*"]);
        let delays: Vec<Duration> = (0..4).map(|_| auth.record_failure(ip())).collect();
        assert_eq!(delays[0], Duration::ZERO);
        assert!(delays[1] > Duration::ZERO && delays[2] > delays[1] && delays[3] > delays[2]);
        assert_eq!(
            auth.record_failure("127.0.0.2".parse().unwrap()),
            Duration::ZERO
        );
        assert_eq!(delay_after(100), MAX_DELAY);
    }

    #[test]
    fn protected_mode_tells_loopback_from_the_rest() {
        for ip in ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "10.0.0.1",
            "192.168.1.20",
            "0.0.0.0",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_loopback(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn new_tokens_are_printable_and_their_hash_verifies() {
        let (token, sha256) = new_token().unwrap();
        assert_eq!(token.len(), 64);
        assert!(token.chars().all(|c| c.is_ascii_graphic()));
        let settings = TokenSettings {
            name: "t".into(),
            sha256,
            commands: vec!["*".into()],
        };
        let auth = Auth::new(&[settings], 4).unwrap().unwrap();
        assert!(auth.verify(&token).is_some());
        assert!(auth.verify("not it").is_none());
    }
}
