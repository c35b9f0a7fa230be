//! One client connection: read frames, answer each in order, close cleanly.
//!
//! Commands on a connection run one after another, so replies go out in
//! request order without any reordering machinery. Replies are buffered and
//! flushed only when no further complete frame is waiting: a client that
//! pipelines a thousand commands gets them back in a few large writes rather
//! than a thousand small ones, while a client waiting for one reply gets it at
//! once.
//!
//! Commands a client pipelined for one plugin that serves batches go to it
//! together (see `plugin/batch.rs`): the frames already buffered behind a
//! command, up to [`MAX_BATCH`](crate::router::MAX_BATCH), join it while
//! they route to the same plugin; the first that does not is served next,
//! as usual. Each still gets its own reply, in order.
//!
//! The connection owns its plugin instance ([`Session`]): reused from one
//! command to the next. After [`IDLE_RELEASE`] without a command, the
//! instance and the (empty) read and write buffers are released, so that
//! thousands of idle clients hold little memory.
//!
//! Bad input is answered, never fatal to the server: an unparsable message
//! gets an error reply and the connection goes on; a stream that cannot be
//! framed any more (a frame over the size limit, a truncated last message)
//! gets an error reply and then the connection is closed. So does a client
//! too slow or idle for its timeouts (see `timeouts.rs`).
//!
//! A connection is generic over its byte stream: plain TCP or TLS.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use super::auth::{Access, Auth, Gate};
use super::timeouts::{Expired, Timeouts};

use crate::plugin::Session;
use crate::protocol::codec::{EofCodec, FrameError};
use crate::protocol::reply::Reply;
use crate::protocol::request::Request;
use crate::protocol::request::RequestError;
use crate::protocol::request::SCHEDULES;
use crate::router::{Arrival, Client, Pipeline, Routes};
use crate::schedule::Board;

/// After a framing error, how long and how much of the client's remaining
/// input is read and discarded before closing. Closing a socket with unread
/// input makes the kernel send a reset, which can destroy the error reply
/// before the client reads it.
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1 << 20;

/// How long a connection keeps its plugin instance (and buffers) while
/// waiting for the client's next command. Instances matter to clients that
/// send commands back to back; one with pauses this long pays a fresh
/// instance (about 10 us) per command, a negligible share of its time.
/// Short, because a held instance is memory and a pool slot, and a slot
/// once used keeps some memory resident (see `plugin/runtime.rs`).
pub const IDLE_RELEASE: Duration = match cfg!(feature = "instruction-count") {
    false => Duration::from_millis(100),
    // Measurement only: see the feature in Cargo.toml.
    true => Duration::from_secs(600),
};

/// What [`Connection::next_frame`] yields: a frame, a reason to close, or
/// `None` at the end of the stream.
type NextFrame = Option<Result<bytes::BytesMut, Closing>>;

/// A byte stream a connection can serve: TCP, or TLS over it.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for S {}

/// What every connection of a server is given.
pub struct Settings {
    pub max_frame_bytes: usize,
    pub timeouts: Timeouts,
    /// The tokens, when clients must authenticate.
    pub auth: Option<Arc<Auth>>,
    /// What the `schedules` command lists.
    pub schedules: Arc<Board>,
}

/// How long a TLS handshake may take when no frame timeout is set.
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl Settings {
    /// A TLS handshake is bytes that must arrive, like a message: it gets
    /// the frame timeout.
    pub fn handshake_timeout(&self) -> Duration {
        self.timeouts.frame.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT)
    }
}

pub struct Connection<S> {
    framed: Framed<S, EofCodec>,
    routes: Arc<Routes>,
    session: Session,
    /// When it connected: which version of a plugin on trial it gets.
    arrival: Arrival,
    /// Who the client is and what it may run.
    access: Access,
    auth: Option<Arc<Auth>>,
    schedules: Arc<Board>,
    /// The client's address: failed authentications slow down per address.
    peer: std::net::IpAddr,
    timeouts: Timeouts,
    /// The last complete message's arrival, or the connect (see
    /// [`Connection::next_frame`] for how it is kept cheaply).
    last_complete: Instant,
    /// What a batch read from the buffer and did not take: served next.
    lookahead: Option<Incoming>,
    shutdown: CancellationToken,
}

/// Why a connection ends early, with a last reply saying so.
#[derive(Debug, thiserror::Error)]
enum Closing {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("no complete message for {0:?}, closing")]
    Idle(Duration),
    #[error("message not completed within {0:?}, closing")]
    SlowMessage(Duration),
    #[error("not authenticated within {0:?}, closing")]
    AuthTimeout(Duration),
    #[error(
        "not authenticated, and newer connections waiting to authenticate need the place, closing"
    )]
    Displaced,
    /// Refused by the auth gate (the text says why).
    #[error("{0}")]
    Denied(String),
}

impl Closing {
    /// Whether closing waits for the client to read the last reply (see
    /// [`send_last_reply`]). Not for a connection closed because it never
    /// authenticated: it has sent nothing left unread, and its place is
    /// wanted now, not a second later.
    fn lingers(&self) -> bool {
        !matches!(self, Self::AuthTimeout(_) | Self::Displaced)
    }
}

impl From<Expired> for Closing {
    fn from(expired: Expired) -> Self {
        match expired {
            Expired::Idle(limit) => Self::Idle(limit),
            Expired::Frame(limit) => Self::SlowMessage(limit),
            Expired::Auth(limit) => Self::AuthTimeout(limit),
        }
    }
}

/// What a connection reads next.
enum Incoming {
    /// A message: a request, or why it is not one.
    Message(Result<Request, RequestError>),
    /// A reason to close, with a last reply saying so.
    Closing(Closing),
    /// The client is done (or the server is stopping).
    End,
}

impl From<NextFrame> for Incoming {
    fn from(frame: NextFrame) -> Self {
        match frame {
            Some(Ok(frame)) => Self::Message(Request::parse(&frame)),
            Some(Err(closing)) => Self::Closing(closing),
            None => Self::End,
        }
    }
}

/// The messages a client has already sent behind the one being served, as
/// the router's batches take them: only what the client may run, parsed
/// once; whatever else is read stays in `lookahead` for the next turn.
struct Buffered<'c, S> {
    framed: &'c mut Framed<S, EofCodec>,
    lookahead: &'c mut Option<Incoming>,
    access: &'c Access,
}

impl<S: Stream> Pipeline for Buffered<'_, S> {
    fn next_buffered(&mut self) -> Option<Request> {
        if self.lookahead.is_some() {
            return None;
        }
        let frame = self.framed.next().now_or_never()?;
        match Incoming::from(frame.map(|frame| frame.map_err(Closing::from))) {
            Incoming::Message(Ok(request)) if self.access.permits(request.command.as_str()) => {
                Some(request)
            }
            other => {
                *self.lookahead = Some(other);
                None
            }
        }
    }

    fn put_back(&mut self, request: Request) {
        *self.lookahead = Some(Incoming::Message(Ok(request)));
    }
}

impl<S: Stream> Connection<S> {
    pub fn new(
        stream: S,
        peer: std::net::IpAddr,
        access: Access,
        routes: Arc<Routes>,
        settings: &Settings,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            framed: Framed::new(stream, EofCodec::new(settings.max_frame_bytes)),
            routes,
            session: Session::default(),
            arrival: Arrival::next(),
            access,
            auth: settings.auth.clone(),
            schedules: settings.schedules.clone(),
            peer,
            timeouts: settings.timeouts,
            last_complete: Instant::now(),
            lookahead: None,
            shutdown,
        }
    }

    /// Serves the connection until the client closes it, a framing error or
    /// a timeout ends it, or the server shuts down.
    pub async fn run(mut self) {
        match self.serve().await {
            Ok(()) => {}
            Err(Closing::Frame(FrameError::Io(err))) => {
                tracing::debug!("connection lost: {err}");
            }
            Err(closing) => {
                match &closing {
                    Closing::Frame(FrameError::TooLarge) => {
                        crate::telemetry::closed_by("frame_too_large");
                    }
                    Closing::Frame(FrameError::Truncated) => {
                        crate::telemetry::closed_by("truncated");
                    }
                    // Counted where they expire, or by the auth gate.
                    _ => {}
                }
                tracing::debug!("closing the connection: {closing}");
                let linger = closing.lingers();
                if let Err(lost) = self.reply_and_close(Reply::error(&closing), linger).await {
                    tracing::debug!("connection lost while reporting {closing:?}: {lost}");
                }
                return;
            }
        }
        // The client is done sending (or the server is stopping): send what is
        // buffered and end our side, so the client sees a clean end of stream.
        let _ = self.framed.flush().await;
        let _ = self.framed.get_mut().shutdown().await;
    }

    /// The loop of the connection: frame -> gate -> router -> replies.
    async fn serve(&mut self) -> Result<(), Closing> {
        loop {
            let message = match self.next_message().await {
                Incoming::Message(message) => message,
                Incoming::Closing(closing) => return Err(closing),
                Incoming::End => return Ok(()),
            };
            let request = match self
                .access
                .gate(self.auth.as_ref(), message, self.peer)
                .await
            {
                Gate::Route(request) => request,
                Gate::Answer(reply) => {
                    self.framed.feed(reply.as_str()).await?;
                    continue;
                }
                Gate::Close(why) => return Err(Closing::Denied(why)),
            };
            if request.command.as_str() == SCHEDULES {
                let access = &self.access;
                let listing = self.schedules.list(&|command| access.permits(command));
                self.framed.feed(listing.as_str()).await?;
                continue;
            }
            // The table current now: a reload during these commands does
            // not affect them, and the next command sees the new one.
            let routes = self.routes.load_full();
            let mut pipeline = Buffered {
                framed: &mut self.framed,
                lookahead: &mut self.lookahead,
                access: &self.access,
            };
            let access = &self.access;
            let client = Client {
                permits: &|command: &str| access.permits(command),
                arrival: self.arrival,
            };
            let replies = routes
                .serve(request, &mut pipeline, &mut self.session, &client)
                .await;
            for reply in replies {
                self.framed.feed(reply.as_str()).await?;
            }
        }
    }

    /// The next message, parsed (or why it could not be), or why the
    /// connection ends: the one a batch left over, if any, else the next
    /// frame (see [`Self::next_frame`]).
    async fn next_message(&mut self) -> Incoming {
        match self.lookahead.take() {
            Some(incoming) => incoming,
            None => Incoming::from(self.next_frame().await),
        }
    }

    /// The next frame: at once if one is already buffered, else after flushing
    /// the replies owed so far and waiting for the client. Returns `None` at end
    /// of stream, and once shutdown begins, when no complete frame is buffered.
    ///
    /// The time of the last complete message is taken here, when the
    /// connection starts to wait, not per frame: a wait always follows at
    /// least one complete frame (or the connect), all of which arrived by
    /// now, and one clock read per wait costs nothing next to the flush
    /// before it.
    async fn next_frame(&mut self) -> NextFrame {
        if let Some(buffered) = self.framed.next().now_or_never() {
            return buffered.map(|frame| frame.map_err(Closing::from));
        }
        if let Err(err) = self.framed.flush().await {
            return Some(Err(err.into()));
        }
        let waiting_since = Instant::now();
        self.last_complete = waiting_since;
        let timeouts = self.timeouts();
        let displaced = self.access.displaced();
        let displaced = async {
            match &displaced {
                Some(displaced) => displaced.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(displaced);
        loop {
            // Created each time but only armed (polled) while memory is held.
            let idle = tokio::time::sleep(IDLE_RELEASE);
            let partial_since = self.framed.codec().partial_since();
            let check = timeouts.next_check(self.last_complete, partial_since, Instant::now());
            let check = tokio::time::sleep_until(check.unwrap_or(waiting_since).into());
            tokio::select! {
                frame = self.framed.next() => return frame.map(|frame| frame.map_err(Closing::from)),
                () = self.shutdown.cancelled() => return None,
                () = idle, if self.holds_idle_memory() => self.release_idle_memory(),
                () = &mut displaced => {
                    crate::telemetry::closed_by("auth_displaced");
                    return Some(Err(Closing::Displaced));
                }
                () = check, if timeouts.any() => {
                    let partial_since = self.framed.codec().partial_since();
                    if let Some(expired) = timeouts.expired(self.last_complete, partial_since, Instant::now()) {
                        crate::telemetry::closed_by(expired.as_str());
                        return Some(Err(expired.into()));
                    }
                }
            }
        }
    }

    /// The time limits that apply now: the auth deadline only until the
    /// connection has authenticated.
    fn timeouts(&self) -> Timeouts {
        match self.access.is_pending() {
            true => self.timeouts,
            false => self.timeouts.authenticated(),
        }
    }

    /// Whether [`Self::release_idle_memory`] would free anything. A buffer
    /// holding a partial frame does not count: it cannot be released, and
    /// counting it would wake a slow client's connection every interval.
    fn holds_idle_memory(&self) -> bool {
        let releasable = |buffer: &bytes::BytesMut| buffer.is_empty() && buffer.capacity() > 0;
        self.session.is_warm()
            || releasable(self.framed.read_buffer())
            || releasable(self.framed.write_buffer())
    }

    /// Drops the plugin instance and the buffers, unless they hold data (a
    /// partial frame). tokio-util gives every connection 8 KiB for each
    /// buffer, which made them most of an idle connection's memory; a buffer
    /// released here grows again from nothing when the client next writes.
    fn release_idle_memory(&mut self) {
        self.session.release();
        if self.framed.read_buffer().is_empty() {
            *self.framed.read_buffer_mut() = bytes::BytesMut::new();
        }
        if self.framed.write_buffer().is_empty() {
            *self.framed.write_buffer_mut() = bytes::BytesMut::new();
        }
    }

    /// Sends a last reply after a framing error or a timeout, then closes
    /// without resetting.
    async fn reply_and_close(self, reply: Reply, linger: bool) -> Result<(), FrameError> {
        send_last_reply(self.framed, reply, linger).await
    }
}

/// Tells a client that is not served why (`error: too many connections`),
/// then closes without resetting. Nothing it sent is read as a command.
pub async fn refuse(stream: impl Stream, reply: Reply) {
    let framed = Framed::new(stream, EofCodec::new(0));
    if let Err(err) = send_last_reply(framed, reply, true).await {
        tracing::debug!("cannot tell a refused client why: {err}");
    }
}

/// Sends `reply`, ends our side, and reads (and discards) what the client
/// still sends for up to [`LINGER_TIME`]: closing a socket with unread input
/// makes the kernel send a reset, which can destroy the reply before the
/// client reads it. Without `linger`, it closes once the reply is sent.
async fn send_last_reply<S: Stream>(
    mut framed: Framed<S, EofCodec>,
    reply: Reply,
    linger: bool,
) -> Result<(), FrameError> {
    framed.send(reply.as_str()).await?;
    let mut stream = framed.into_inner();
    stream.shutdown().await?;
    if !linger {
        return Ok(());
    }
    // On the heap: an array here would be part of every connection's future.
    let mut discard = vec![0u8; 8192];
    let mut drained = 0;
    let drain = async {
        while drained < LINGER_BYTES {
            match stream.read(&mut discard).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
    Ok(())
}
