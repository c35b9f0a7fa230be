//! What a plugin can reach from inside its instance: the host interface of the
//! WIT world and a WASI context with no ambient capabilities.
//!
//! Plugins are untrusted, so the WASI context is built deny-by-default and
//! spelled out here rather than left to the library's defaults: no files
//! (no preopens), no sockets, no name lookups, no environment, no arguments, an
//! empty stdin. Clocks and randomness stay available; plugins need them and
//! they reach nothing outside the process. Whatever a plugin prints goes to the
//! host's log, tagged with the plugin's name, one event per line.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::Setup;
use super::bindings::plugboard::plugin::{config, host, kv, types};
use super::epoch::TickingGuard;
use super::limits::MemoryLimiter;
use crate::store::{KvError, Namespace};

/// The data of one plugin instance's `Store`.
pub struct Sandbox {
    plugin: Arc<str>,
    wasi: WasiCtx,
    table: ResourceTable,
    pub limiter: MemoryLimiter,
    /// The plugin's `[plugins.<name>.config]` table.
    config: Arc<std::collections::BTreeMap<String, String>>,
    /// The plugin's key-value namespace.
    kv: Arc<Namespace>,
    /// Keeps the epoch ticking while this instance may run.
    _ticking: Option<TickingGuard>,
}

impl Sandbox {
    pub fn new(
        plugin: Arc<str>,
        setup: &Setup,
        kv: Arc<Namespace>,
        memory_gauge: metrics::Gauge,
        ticking: Option<TickingGuard>,
    ) -> Self {
        let wasi = WasiCtx::builder()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .stdout(PluginOutput::new(&plugin, "stdout"))
            .stderr(PluginOutput::new(&plugin, "stderr"))
            .build();
        Self {
            plugin,
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(setup.limits.max_memory_bytes, memory_gauge),
            config: setup.config.clone(),
            kv,
            _ticking: ticking,
        }
    }
}

impl WasiView for Sandbox {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for Sandbox {}

impl host::Host for Sandbox {
    fn log(&mut self, level: host::Level, message: String) {
        let plugin = &*self.plugin;
        match level {
            host::Level::Trace => tracing::trace!(plugin, "{message}"),
            host::Level::Debug => tracing::debug!(plugin, "{message}"),
            host::Level::Info => tracing::info!(plugin, "{message}"),
            host::Level::Warn => tracing::warn!(plugin, "{message}"),
            host::Level::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

impl config::Host for Sandbox {
    fn get(&mut self, key: String) -> Option<String> {
        self.config.get(&key).cloned()
    }
}

/// Runs a write and converts its error for the guest. Writes to a backend
/// whose writes block (a disk sync) go to the blocking pool; in-memory writes
/// take about a microsecond and run inline, where a thread hop would cost far
/// more than the operation.
async fn write<T: Send + 'static>(
    kv: &Arc<Namespace>,
    operation: impl FnOnce(&Namespace) -> Result<T, KvError> + Send + 'static,
) -> Result<T, kv::Error> {
    let result = if kv.writes_block() {
        let kv = kv.clone();
        tokio::task::spawn_blocking(move || operation(&kv))
            .await
            .unwrap_or_else(|join| Err(KvError::Storage(join.to_string())))
    } else {
        operation(kv)
    };
    result.map_err(guest_error)
}

fn guest_error(err: KvError) -> kv::Error {
    match err {
        KvError::KeyTooLarge(max) => kv::Error::KeyTooLarge(max),
        KvError::ValueTooLarge(max) => kv::Error::ValueTooLarge(max),
        KvError::TooManyKeys(max) => kv::Error::TooManyKeys(max),
        KvError::NotANumber => kv::Error::NotANumber,
        KvError::Storage(message) => kv::Error::Storage(message),
    }
}

/// Reads never wait on a sync, so they run inline (and are sync imports).
impl kv::Host for Sandbox {
    fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, kv::Error> {
        self.kv.get(&key).map_err(guest_error)
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), kv::Error> {
        write(&self.kv, move |kv| kv.set(&key, &value)).await
    }

    async fn delete(&mut self, key: String) -> Result<bool, kv::Error> {
        write(&self.kv, move |kv| kv.delete(&key)).await
    }

    fn list_keys(&mut self, prefix: String) -> Result<Vec<String>, kv::Error> {
        self.kv.list_keys(&prefix).map_err(guest_error)
    }

    async fn increment(&mut self, key: String, delta: i64) -> Result<i64, kv::Error> {
        write(&self.kv, move |kv| kv.increment(&key, delta)).await
    }

    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    ) -> Result<bool, kv::Error> {
        write(&self.kv, move |kv| {
            kv.compare_and_swap(&key, expected.as_deref(), &new)
        })
        .await
    }
}

/// A plugin's stdout or stderr, forwarded line by line to the host's log.
struct PluginOutput {
    plugin: Arc<str>,
    stream: &'static str,
}

impl PluginOutput {
    fn new(plugin: &Arc<str>, stream: &'static str) -> Self {
        Self {
            plugin: plugin.clone(),
            stream,
        }
    }
}

impl IsTerminal for PluginOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for PluginOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineLogger {
            plugin: self.plugin.clone(),
            stream: self.stream,
            pending: Vec::new(),
        })
    }
}

/// Longest line kept before it is logged in pieces: a plugin that prints
/// without newlines must not grow host memory.
const MAX_LINE_BYTES: usize = 4096;

struct LineLogger {
    plugin: Arc<str>,
    stream: &'static str,
    pending: Vec<u8>,
}

impl LineLogger {
    fn emit(&self, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        tracing::info!(
            plugin = &*self.plugin,
            stream = self.stream,
            "{}",
            line.trim_end()
        );
    }

    fn emit_complete_lines(&mut self) {
        while let Some(newline) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=newline).collect();
            self.emit(&line);
        }
        if self.pending.len() >= MAX_LINE_BYTES {
            let pending = std::mem::take(&mut self.pending);
            self.emit(&pending);
        }
    }
}

impl AsyncWrite for LineLogger {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.pending.extend_from_slice(buf);
        self.emit_complete_lines();
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineLogger {
    /// Output without a final newline is still logged when the instance ends.
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            self.emit(&self.pending);
        }
    }
}
