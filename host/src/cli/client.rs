//! `plugboard send`: the classic client, for people and scripts.
//!
//! Commands are pipelined on one connection: all are written (then our write
//! side is closed) while replies are read and printed as they arrive. The
//! server answers every message in order, so the replies line up with the
//! commands, and the exit status says whether any of them failed.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt, TryStreamExt};
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, FramedRead, FramedWrite, LinesCodec};

use crate::net::connection::Stream;
pub use crate::net::tls::ClientTls;
use crate::protocol::codec::{EofCodec, find_delimiter};
use crate::protocol::reply::ERROR_PREFIX;

/// Replies can be far larger than requests; this only guards against a
/// misbehaving peer that never sends a delimiter.
pub(crate) const MAX_REPLY_BYTES: usize = 64 << 20;

/// Where `send` connects, and how it secures and authenticates the connection.
pub struct Target {
    pub addr: String,
    /// Sent as `auth <token>` before any command.
    pub token: Option<String>,
    /// Connect with TLS, verifying the server's certificate.
    pub tls: Option<ClientTls>,
}

/// Sends `commands`, or the lines of stdin when there are none (one command per
/// line from a pipe, an interactive prompt on a terminal).
pub async fn send(target: &Target, commands: Vec<String>) -> anyhow::Result<ExitCode> {
    if commands.is_empty() && std::io::stdin().is_terminal() {
        return super::prompt::run(target).await;
    }
    let stream = open(target).await?;
    if !commands.is_empty() {
        return pipeline(stream, futures::stream::iter(commands.into_iter().map(Ok))).await;
    }
    let lines = FramedRead::new(tokio::io::stdin(), LinesCodec::new())
        .map_err(|err| anyhow::anyhow!("cannot read stdin: {err}"));
    pipeline(stream, lines).await
}

/// A connection to `target`, secured and authenticated as it says.
pub(crate) async fn open(target: &Target) -> anyhow::Result<Box<dyn Stream>> {
    let addr = &target.addr;
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let stream: Box<dyn Stream> = match &target.tls {
        None => Box::new(stream),
        Some(tls) => Box::new(tls.connect(host_of(addr), stream).await?),
    };
    match &target.token {
        Some(token) => authenticate(stream, token).await,
        None => Ok(stream),
    }
}

/// The host part of `host:port` (`[v6]:port` too): what the server's
/// certificate must name.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Sends `auth <token>` and waits for its reply: the server runs nothing
/// else first. The token is never printed.
async fn authenticate<S: Stream>(stream: S, token: &str) -> anyhow::Result<S> {
    if token.is_empty() || token.contains(char::is_whitespace) {
        bail!("a token is printable ASCII without whitespace");
    }
    let mut framed = Framed::new(stream, EofCodec::new(MAX_REPLY_BYTES));
    framed.send(format!("auth {token}").as_str()).await?;
    let reply = framed
        .next()
        .await
        .context("the server closed the connection before answering `auth`")?
        .context("reading the reply to `auth` failed")?;
    let reply = String::from_utf8_lossy(&reply);
    if let Some(why) = reply.strip_prefix(ERROR_PREFIX) {
        bail!("authentication failed: {why}");
    }
    Ok(framed.into_inner())
}

async fn pipeline(
    stream: impl Stream,
    commands: impl futures::Stream<Item = anyhow::Result<String>>,
) -> anyhow::Result<ExitCode> {
    let (read, write) = tokio::io::split(stream);
    let mut requests = FramedWrite::new(write, EofCodec::new(usize::MAX));
    let mut replies = reply_stream(read);

    let sender = async {
        let mut sent = 0usize;
        let mut commands = std::pin::pin!(commands);
        while let Some(command) = commands.next().await {
            let command = command?;
            if command.trim().is_empty() {
                continue;
            }
            check_command(&command)?;
            requests.feed(command.as_str()).await?;
            sent += 1;
        }
        requests.flush().await?;
        // Half-close: tells the server no more commands are coming, so it
        // closes once every reply is sent.
        requests.get_mut().shutdown().await?;
        anyhow::Ok(sent)
    };
    let receiver = async {
        let mut received = 0usize;
        let mut failed = false;
        while let Some(reply) = replies.next().await {
            failed |= print_reply(&reply?)?;
            received += 1;
        }
        anyhow::Ok((received, failed))
    };
    let (sent, (received, failed)) = tokio::try_join!(sender, receiver)?;
    if received < sent {
        bail!("connection closed after {received} of {sent} replies");
    }
    Ok(exit_code(failed))
}

fn reply_stream(
    read: impl AsyncRead + Unpin,
) -> impl futures::Stream<Item = anyhow::Result<bytes::BytesMut>> + Unpin {
    FramedRead::new(read, EofCodec::new(MAX_REPLY_BYTES))
        .map_err(|err| anyhow::anyhow!("reading a reply failed: {err}"))
}

/// A command containing the delimiter would be sent as two messages.
pub(crate) fn check_command(command: &str) -> anyhow::Result<()> {
    if find_delimiter(command.as_bytes()).is_some() {
        bail!("a command cannot contain the delimiter <EOF>: {command:?}");
    }
    Ok(())
}

/// Prints one reply on its own line; returns whether it was an error.
pub(crate) fn print_reply(reply: &[u8]) -> anyhow::Result<bool> {
    let text = String::from_utf8_lossy(reply);
    writeln!(std::io::stdout().lock(), "{text}")?;
    Ok(text.starts_with(ERROR_PREFIX))
}

pub(crate) fn exit_code(failed: bool) -> ExitCode {
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
