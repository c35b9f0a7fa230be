//! Accepting clients: who gets a place (`max_connections`, the address's
//! share, protected mode), telling the rest why, handing each admitted
//! client to a task of its own, and draining those tasks at shutdown.
//!
//! The shape follows mini-redis: a bounded number of connection tasks (a
//! semaphore), accept errors that back off instead of ending the server, and
//! shutdown as a token passed to every task rather than a global flag. A
//! client over the connection limit is told so and closed at once, instead of
//! being left waiting in the accept queue with no idea why.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::net::auth::{self, Access};
use crate::net::connection::{self, Connection, Settings};
use crate::net::per_address::{AddressPermit, PerAddress};
use crate::protocol::codec::DELIMITER;
use crate::protocol::reply::Reply;
use crate::router::Routes;
use crate::telemetry::{Admit, ConnectionMetrics, LogBudget};

/// Longest pause between retries when `accept` keeps failing (e.g. out of file descriptors).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Refused clients that may be lingering at once (see [`Door::refuse`]).
pub const MAX_LINGERING_REFUSALS: usize = 64;

/// How long a newcomer that displaced an unauthenticated connection waits
/// for its place (the time that connection takes to send its last reply).
const DISPLACED_PLACE_WAIT: Duration = Duration::from_secs(1);

pub struct Listener {
    pub listener: TcpListener,
    pub door: Arc<Door>,
}

/// Who gets a place and how it is served: what the accept loop and the
/// tasks it spawns share.
pub struct Door {
    pub routes: Arc<Routes>,
    pub connections: Arc<Semaphore>,
    pub per_address: Arc<PerAddress>,
    /// Refused clients being told why (see [`Door::refuse`]), and newcomers
    /// waiting for a displaced connection's place.
    pub refusals: Arc<Semaphore>,
    pub refusal_log: LogBudget,
    /// Protected mode is in force: no tokens, and `protected_mode` on.
    pub protected: bool,
    /// Set when the listener serves TLS (only).
    pub tls: Option<TlsAcceptor>,
    pub settings: Arc<Settings>,
    pub metrics: Arc<ConnectionMetrics>,
    pub tracker: TaskTracker,
    pub shutdown: CancellationToken,
}

/// A connection's place under `max_connections` and its address's share,
/// counted in the open-connections gauge. All are given back when it is
/// dropped, however the connection's task ends.
struct Slot {
    _permit: OwnedSemaphorePermit,
    _address: AddressPermit,
    open: metrics::Gauge,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, address: AddressPermit, open: &metrics::Gauge) -> Self {
        open.increment(1.0);
        Self {
            _permit: permit,
            _address: address,
            open: open.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.decrement(1.0);
    }
}

/// An admitted client, before its stream is ready: what its connection
/// will need.
struct Admitted {
    peer: SocketAddr,
    /// Where it stands with auth, from the moment it is accepted: the
    /// oldest unauthenticated connection is the first accepted.
    access: Access,
    routes: Arc<Routes>,
    settings: Arc<Settings>,
    shutdown: CancellationToken,
}

impl Admitted {
    async fn serve(self, stream: impl connection::Stream) {
        Connection::new(
            stream,
            self.peer.ip(),
            self.access,
            self.routes,
            &self.settings,
            self.shutdown,
        )
        .run()
        .await;
    }

    async fn serve_tls(self, tls: TlsAcceptor, stream: TcpStream) {
        let timeout = self.settings.handshake_timeout();
        if let Some(stream) = handshake(&tls, stream, timeout).await {
            self.serve(stream).await;
        }
    }
}

/// The server side of a TLS handshake, within `timeout`; `None` (counted,
/// and logged at debug) if it fails or takes too long.
async fn handshake(
    tls: &TlsAcceptor,
    stream: TcpStream,
    timeout: Duration,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(timeout, tls.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(err)) => {
            crate::telemetry::closed_by("tls_handshake_failed");
            tracing::debug!("TLS handshake failed: {err}");
            None
        }
        Err(_) => {
            crate::telemetry::closed_by("tls_handshake_timeout");
            tracing::debug!("TLS handshake not completed within {timeout:?}");
            None
        }
    }
}

/// Why a client is refused as it connects.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    ProtectedMode,
    MaxConnections,
    PerAddress,
}

impl Refusal {
    /// The metric label.
    fn reason(self) -> &'static str {
        match self {
            Self::ProtectedMode => "protected_mode",
            Self::MaxConnections => "max_connections",
            Self::PerAddress => "max_connections_per_ip",
        }
    }

    /// What the client is told.
    fn reply(self) -> Reply {
        match self {
            Self::ProtectedMode => Reply::error(
                "protected mode: no auth token is configured, so only loopback clients \
                 are served; configure [[auth.tokens]], or set protected_mode = false",
            ),
            Self::MaxConnections => Reply::error("too many connections"),
            Self::PerAddress => Reply::error("too many connections from your address"),
        }
    }
}

impl Listener {
    /// Accepts forever; only shutdown stops it.
    pub async fn accept_loop(&mut self) {
        loop {
            let (stream, peer) = self.accept().await;
            self.door.admit_or_refuse(stream, peer);
        }
    }

    /// The next connection. Accept errors are usually transient (a client that
    /// reset before being accepted, a full file-descriptor table), so they are
    /// logged and retried with backoff rather than ending the server.
    async fn accept(&self) -> (TcpStream, std::net::SocketAddr) {
        let mut backoff = Duration::from_millis(1);
        loop {
            match self.listener.accept().await {
                Ok(accepted) => return accepted,
                Err(err) => {
                    tracing::warn!("accept failed, retrying in {backoff:?}: {err}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                }
            }
        }
    }

    /// Stops accepting, asks every connection to finish, waits for them.
    pub async fn drain(self, timeout: Duration) {
        drop(self.listener);
        tracing::info!("shutting down: finishing in-flight commands");
        let door = &self.door;
        door.shutdown.cancel();
        door.tracker.close();
        if tokio::time::timeout(timeout, door.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = door.tracker.len(),
                "shutdown timeout reached; closing the remaining connections"
            );
        }
    }
}

impl Door {
    /// Serves the client from `peer` if it gets a place, else tells it why not.
    fn admit_or_refuse(self: &Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        match self.admit(peer) {
            Ok(slot) => self.serve(stream, peer, slot),
            Err(Refusal::MaxConnections) if self.displace_unauthenticated() => {
                self.admit_when_displaced(stream, peer);
            }
            Err(refusal) => self.refuse_for(stream, peer, refusal),
        }
    }

    /// Refuses the client from `peer`: counted, logged (within the log's
    /// budget), told why.
    fn refuse_for(&self, stream: TcpStream, peer: SocketAddr, refusal: Refusal) {
        crate::telemetry::rejected(refusal.reason());
        if let Admit::Write { unwritten_before } = self.refusal_log.admit() {
            tracing::warn!(
                %peer,
                unlogged_since = unwritten_before,
                "connection refused: {} reached",
                refusal.reason()
            );
        }
        self.refuse(stream, refusal.reply());
    }

    /// A place for a client from `peer`: in protected mode only for loopback
    /// clients; within `max_connections`, then within its address's share.
    fn admit(&self, peer: SocketAddr) -> Result<Slot, Refusal> {
        if self.protected && !auth::is_loopback(peer.ip()) {
            return Err(Refusal::ProtectedMode);
        }
        let permit = self
            .connections
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::MaxConnections)?;
        let address = self
            .per_address
            .try_acquire(peer.ip())
            .ok_or(Refusal::PerAddress)?;
        Ok(Slot::new(permit, address, &self.metrics.open))
    }

    /// Serves an admitted client in a task of its own, holding `slot`.
    fn serve(&self, stream: TcpStream, peer: SocketAddr, slot: Slot) {
        self.metrics.accepted.increment(1);
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(%peer, "cannot set TCP_NODELAY: {err}");
        }
        let span = tracing::debug_span!("connection", %peer);
        let client = Admitted {
            peer,
            access: Access::new(self.settings.auth.as_ref(), peer.ip()),
            routes: self.routes.clone(),
            settings: self.settings.clone(),
            shutdown: self.shutdown.clone(),
        };
        let tls = self.tls.clone();
        self.tracker.spawn(
            async move {
                match tls {
                    None => client.serve(stream).await,
                    // Boxed: a TLS session is large, and plain
                    // connections should not carry its size.
                    Some(tls) => Box::pin(client.serve_tls(tls, stream)).await,
                }
                drop(slot);
            }
            .instrument(span),
        );
    }

    /// With every place taken, closes a connection still waiting to
    /// authenticate (see `auth.rs`), if there is one and the newcomer can
    /// wait for its place (see [`Self::admit_when_displaced`]).
    fn displace_unauthenticated(&self) -> bool {
        match &self.settings.auth {
            Some(auth) if self.refusals.available_permits() > 0 => auth.displace_one(),
            _ => false,
        }
    }

    /// Admits a newcomer once the place of the connection it displaced is
    /// given back, which takes that connection's last reply: waits for it
    /// (holding one of the lingering places, as a refusal would), and
    /// refuses the newcomer as usual if it does not come in time.
    fn admit_when_displaced(self: &Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let Ok(waiting) = self.refusals.clone().try_acquire_owned() else {
            return self.refuse_for(stream, peer, Refusal::MaxConnections);
        };
        let door = self.clone();
        self.tracker.spawn(async move {
            let place = door.connections.clone().acquire_owned();
            let admitted = match tokio::time::timeout(DISPLACED_PLACE_WAIT, place).await {
                Ok(Ok(permit)) => door
                    .per_address
                    .try_acquire(peer.ip())
                    .map(|address| Slot::new(permit, address, &door.metrics.open))
                    .ok_or(Refusal::PerAddress),
                _ => Err(Refusal::MaxConnections),
            };
            drop(waiting);
            match admitted {
                Ok(slot) => door.serve(stream, peer, slot),
                Err(refusal) => door.refuse_for(stream, peer, refusal),
            }
        });
    }

    /// Tells a client it is not served, and why, then closes: in a task of
    /// its own, as the reply is followed by a linger (see `connection.rs`),
    /// and on a TLS listener inside TLS, after the handshake. At most
    /// [`MAX_LINGERING_REFUSALS`] are told at once, so that a flood of
    /// refused clients cannot hold many sockets; beyond that a plain client
    /// gets one non-blocking write into the fresh socket's empty buffer, a
    /// TLS client just the close.
    fn refuse(&self, stream: TcpStream, reply: Reply) {
        let Ok(permit) = self.refusals.clone().try_acquire_owned() else {
            if self.tls.is_none() {
                let wire = [reply.as_str().as_bytes(), DELIMITER].concat();
                if let Err(err) = stream.try_write(&wire) {
                    tracing::debug!("cannot tell a refused client why: {err}");
                }
            }
            return;
        };
        let tls = self.tls.clone();
        let handshake_timeout = self.settings.handshake_timeout();
        self.tracker.spawn(async move {
            match tls {
                None => connection::refuse(stream, reply).await,
                Some(tls) => {
                    if let Some(stream) = handshake(&tls, stream, handshake_timeout).await {
                        connection::refuse(stream, reply).await;
                    }
                }
            }
            drop(permit);
        });
    }
}
