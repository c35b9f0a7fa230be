//! A plugin's lines in the host's log: what it passes to `host.log` and
//! what it prints on stdout and stderr, tagged with its name.
//!
//! A plugin is untrusted, and the log is shared: four connections calling
//! `host.log` in a loop once wrote 200 MB in 3 s and slowed every other
//! client. So a plugin's lines, from all its instances and all three
//! sources together, pass one [`LogBudget`] (`max_log_lines_per_sec`), and
//! each is cut at `max_log_line_bytes`; lines over the rate are counted in
//! a metric and summed up in a notice at most once a second. Lines the log
//! level filters out spend nothing. The writer behind
//! `tracing` never blocks a worker either (see `main.rs`).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

use super::bindings::plugboard::plugin::host::Level;
use crate::telemetry::{Admit, LogBudget};

/// Where one plugin's lines go, under its limits. Shared by its instances.
pub struct PluginLog {
    plugin: Arc<str>,
    budget: LogBudget,
    max_line_bytes: usize,
}

impl PluginLog {
    pub fn new(plugin: Arc<str>, lines_per_sec: u32, max_line_bytes: usize) -> Self {
        Self {
            budget: LogBudget::new(&plugin, lines_per_sec),
            plugin,
            max_line_bytes,
        }
    }

    /// Writes one line at `level`, from `stream` (stdout, stderr) or from
    /// `host.log` (`None`), if the plugin is within its rate.
    pub fn write(&self, level: Level, stream: Option<&'static str>, line: &str) {
        self.write_cut(level, stream, line, 0);
    }

    /// Like [`Self::write`], for a line of which `dropped` bytes were
    /// already dropped on the way.
    fn write_cut(&self, level: Level, stream: Option<&'static str>, line: &str, dropped: usize) {
        // A line the log level filters out spends none of the rate: it
        // would not be written anyway, and must not crowd out one that is.
        if !enabled(level) {
            return;
        }
        let unwritten = match self.budget.admit() {
            Admit::Suppress => return,
            Admit::Write { unwritten_before } => unwritten_before,
        };
        let plugin = &*self.plugin;
        if unwritten > 0 {
            tracing::warn!(
                plugin,
                unwritten,
                "{unwritten} log lines of this plugin were not written: over max_log_lines_per_sec"
            );
        }
        let (line, cut) = cut_at(line, self.max_line_bytes);
        let cut = cut + dropped;
        let stream = stream.unwrap_or("log");
        match (level, cut) {
            (Level::Trace, 0) => tracing::trace!(plugin, stream, "{line}"),
            (Level::Debug, 0) => tracing::debug!(plugin, stream, "{line}"),
            (Level::Info, 0) => tracing::info!(plugin, stream, "{line}"),
            (Level::Warn, 0) => tracing::warn!(plugin, stream, "{line}"),
            (Level::Error, 0) => tracing::error!(plugin, stream, "{line}"),
            (Level::Trace, cut) => tracing::trace!(plugin, stream, cut, "{line}..."),
            (Level::Debug, cut) => tracing::debug!(plugin, stream, cut, "{line}..."),
            (Level::Info, cut) => tracing::info!(plugin, stream, cut, "{line}..."),
            (Level::Warn, cut) => tracing::warn!(plugin, stream, cut, "{line}..."),
            (Level::Error, cut) => tracing::error!(plugin, stream, cut, "{line}..."),
        }
    }
}

/// Whether the log writes lines at `level` (from this module).
fn enabled(level: Level) -> bool {
    match level {
        Level::Trace => tracing::enabled!(tracing::Level::TRACE),
        Level::Debug => tracing::enabled!(tracing::Level::DEBUG),
        Level::Info => tracing::enabled!(tracing::Level::INFO),
        Level::Warn => tracing::enabled!(tracing::Level::WARN),
        Level::Error => tracing::enabled!(tracing::Level::ERROR),
    }
}

/// `line` cut to at most `max` bytes at a character boundary, and how many
/// bytes were cut.
fn cut_at(line: &str, max: usize) -> (&str, usize) {
    if line.len() <= max {
        return (line, 0);
    }
    let mut end = max;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    (&line[..end], line.len() - end)
}

/// The last lines one instance wrote on stderr during its current call:
/// what a plugin said as it died (a Rust panic's message, a Python
/// traceback's last line) leads the log line of its trap.
#[derive(Clone, Default)]
pub struct StderrTail(Arc<Mutex<VecDeque<String>>>);

/// Lines of a call's stderr kept for its trap's log line.
const TAIL_LINES: usize = 4;

impl StderrTail {
    fn lines(&self) -> std::sync::MutexGuard<'_, VecDeque<String>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, line: &str) {
        // Rust's hint about RUST_BACKTRACE says nothing about the plugin.
        if line.is_empty() || line.starts_with("note: run with `RUST_BACKTRACE") {
            return;
        }
        let mut lines = self.lines();
        if lines.len() == TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line.to_owned());
    }

    /// Starts a new call's tail.
    pub fn clear(&self) {
        self.lines().clear();
    }

    /// The tail as one line, if the call wrote anything on stderr.
    pub fn take(&self) -> Option<String> {
        let lines = std::mem::take(&mut *self.lines());
        (!lines.is_empty()).then(|| Vec::from(lines).join(" "))
    }
}

/// A plugin's stdout or stderr, forwarded line by line to its [`PluginLog`].
pub struct PluginOutput {
    log: Arc<PluginLog>,
    stream: &'static str,
    tail: Option<StderrTail>,
}

impl PluginOutput {
    pub fn new(log: &Arc<PluginLog>, stream: &'static str) -> Self {
        Self {
            log: log.clone(),
            stream,
            tail: None,
        }
    }

    /// Also keeps the lines of the current call in `tail`.
    pub fn keeping_tail(mut self, tail: &StderrTail) -> Self {
        self.tail = Some(tail.clone());
        self
    }
}

impl IsTerminal for PluginOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for PluginOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            log: self.log.clone(),
            stream: self.stream,
            tail: self.tail.clone(),
            pending: Vec::new(),
            dropped: 0,
        })
    }
}

/// Splits output into lines. Keeps at most one line's worth of bytes: the
/// rest of a longer line is dropped as it arrives, so a plugin that prints
/// without newlines cannot grow host memory.
struct LineWriter {
    log: Arc<PluginLog>,
    stream: &'static str,
    tail: Option<StderrTail>,
    pending: Vec<u8>,
    /// Bytes of the line being collected that were not kept.
    dropped: usize,
}

impl LineWriter {
    fn level(&self) -> Level {
        match self.stream {
            "stderr" => Level::Warn,
            _ => Level::Info,
        }
    }

    fn emit(&mut self) {
        let line = String::from_utf8_lossy(&self.pending);
        let level = self.level();
        if let Some(tail) = &self.tail {
            tail.push(line.trim());
        }
        self.log
            .write_cut(level, Some(self.stream), line.trim_end(), self.dropped);
        self.pending.clear();
        self.dropped = 0;
    }

    fn take(&mut self, mut bytes: &[u8]) {
        let keep = self.log.max_line_bytes;
        while !bytes.is_empty() {
            let (line, rest, ends) = match bytes.iter().position(|&b| b == b'\n') {
                Some(at) => (&bytes[..at], &bytes[at + 1..], true),
                None => (bytes, &[][..], false),
            };
            let room = keep.saturating_sub(self.pending.len());
            let kept = line.len().min(room);
            self.pending.extend_from_slice(&line[..kept]);
            self.dropped += line.len() - kept;
            if ends {
                self.emit();
            }
            bytes = rest;
        }
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.take(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineWriter {
    /// Output without a final newline is still logged when the instance ends.
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            self.emit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::cut_at;

    #[test]
    fn lines_are_cut_at_a_character_boundary() {
        assert_eq!(cut_at("hello", 10), ("hello", 0));
        assert_eq!(cut_at("hello", 3), ("hel", 2));
        assert_eq!(cut_at("héllo", 2), ("h", 5));
    }
}
