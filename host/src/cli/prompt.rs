//! `plugboard send` on a terminal: a prompt with line editing and history
//! (rustyline: arrows, Ctrl-R, history kept across sessions), a one-line
//! hint at start, and a connection that survives a server restart: before
//! each command a closed connection is noticed and opened again, so a
//! command is never sent twice.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use futures::{FutureExt, SinkExt, StreamExt};
use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;
use tokio_util::codec::Framed;

use super::client::{self, Target};
use crate::net::connection::Stream;
use crate::protocol::codec::EofCodec;

const PROMPT: &str = "plugboard> ";

/// Commands remembered across sessions.
const HISTORY_ENTRIES: usize = 1000;

/// How long a lost server is waited for, per command, before the command
/// is given up (and the prompt comes back).
const RECONNECT_FOR: Duration = Duration::from_secs(10);

type Connection = Framed<Box<dyn Stream>, EofCodec>;

pub async fn run(target: &Target) -> anyhow::Result<ExitCode> {
    let mut connection = Some(connect(target).await?);
    let mut editor = DefaultEditor::with_config(
        rustyline::Config::builder()
            .max_history_size(HISTORY_ENTRIES)?
            .auto_add_history(true)
            .build(),
    )?;
    let history = history_file();
    if let Some(file) = &history {
        // None yet on a first run.
        let _ = editor.load_history(file);
    }
    eprintln!(
        "connected to {}: type a command (`help` lists them); up/down recall, Ctrl-D quits",
        target.addr
    );
    let mut failed = false;
    let mut slot = Some(editor);
    while let Some(command) = read_line(&mut slot).await? {
        if command.trim().is_empty() {
            continue;
        }
        if let Err(err) = client::check_command(&command) {
            eprintln!("{err}");
            continue;
        }
        let Some(live) = alive(&mut connection, target).await else {
            continue;
        };
        match exchange(live, &command).await {
            Ok(reply) => failed |= client::print_reply(&reply)?,
            Err(err) => {
                eprintln!("connection lost before the reply: {err:#}");
                connection = None;
                failed = true;
            }
        }
    }
    if let (Some(file), Some(editor)) = (&history, &mut slot) {
        save_history(editor, file);
    }
    Ok(client::exit_code(failed))
}

/// The next line typed; `None` at Ctrl-D. Ctrl-C drops the line being typed.
/// rustyline blocks, so the editor reads on a blocking thread and comes back.
async fn read_line(slot: &mut Option<DefaultEditor>) -> anyhow::Result<Option<String>> {
    loop {
        let mut editor = slot.take().context("the prompt is gone")?;
        let (editor, line) = tokio::task::spawn_blocking(move || {
            let line = editor.readline(PROMPT);
            (editor, line)
        })
        .await
        .context("the prompt stopped")?;
        *slot = Some(editor);
        match line {
            Ok(line) => return Ok(Some(line)),
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => return Ok(None),
            Err(err) => return Err(err).context("cannot read the terminal"),
        }
    }
}

async fn connect(target: &Target) -> anyhow::Result<Connection> {
    let stream = client::open(target).await?;
    Ok(Framed::new(stream, EofCodec::new(client::MAX_REPLY_BYTES)))
}

/// The connection, opened again if the server closed it (a restart, an
/// idle timeout) since the last command; `None` if the server stayed
/// unreachable (said, and the command not sent).
async fn alive<'a>(
    connection: &'a mut Option<Connection>,
    target: &Target,
) -> Option<&'a mut Connection> {
    if connection.as_mut().is_some_and(is_closed) {
        eprintln!(
            "the server closed the connection; reconnecting to {}",
            target.addr
        );
        *connection = None;
    }
    if connection.is_none() {
        match reconnect(target).await {
            Ok(opened) => *connection = Some(opened),
            Err(err) => {
                eprintln!("{err:#}; the command was not sent");
                return None;
            }
        }
    }
    connection.as_mut()
}

/// Whether the server has closed `connection`. Anything it sent unasked
/// (the idle timeout's notice) is shown first.
fn is_closed(connection: &mut Connection) -> bool {
    loop {
        match connection.next().now_or_never() {
            None => return false,
            Some(Some(Ok(notice))) => eprintln!("{}", String::from_utf8_lossy(&notice)),
            Some(Some(Err(_)) | None) => return true,
        }
    }
}

/// Tries to connect for up to [`RECONNECT_FOR`], backing off.
async fn reconnect(target: &Target) -> anyhow::Result<Connection> {
    let give_up = tokio::time::Instant::now() + RECONNECT_FOR;
    let mut pause = Duration::from_millis(50);
    loop {
        match connect(target).await {
            Ok(connection) => {
                eprintln!("reconnected to {}", target.addr);
                return Ok(connection);
            }
            Err(err) if tokio::time::Instant::now() + pause > give_up => return Err(err),
            Err(_) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

async fn exchange(connection: &mut Connection, command: &str) -> anyhow::Result<bytes::BytesMut> {
    connection.send(command).await?;
    connection
        .next()
        .await
        .context("the server closed the connection")?
        .context("reading the reply failed")
}

/// `$XDG_STATE_HOME/plugboard/history`, else `~/.local/state/...`.
fn history_file() -> Option<PathBuf> {
    super::user_dir("XDG_STATE_HOME", ".local/state").map(|dir| dir.join("history"))
}

fn save_history(editor: &mut DefaultEditor, file: &std::path::Path) {
    if let Err(err) = editor.save_history(file) {
        eprintln!("cannot save the history to {}: {err}", file.display());
    }
}
