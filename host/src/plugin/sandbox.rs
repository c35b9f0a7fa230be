//! What a plugin can reach from inside its instance: the host interface of the
//! WIT world and a WASI context with no ambient capabilities.
//!
//! Plugins are untrusted, so the WASI context is built deny-by-default and
//! spelled out here rather than left to the library's defaults: no files
//! (no preopens), no sockets, no name lookups, no environment, no arguments, an
//! empty stdin. Clocks and randomness stay available; plugins need them and
//! they reach nothing outside the process. Whatever a plugin prints goes to the
//! host's log (see `log.rs`).

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::Setup;
use super::bindings::plugboard::plugin::{config, host, kv, types};
use super::cpu_share::Running;
use super::epoch::TickingGuard;
use super::host_wait::HostWait;
use super::limits::{MemoryBudget, MemoryLimiter};
use super::log::{PluginLog, PluginOutput};
use crate::store::{KvError, Namespace};

/// What the host hands every instance of one plugin (with one setup):
/// shared by all of them.
#[derive(Clone)]
pub struct InstanceHandles {
    /// Its key-value namespace.
    pub kv: Arc<Namespace>,
    /// The gauge of its instances' memory: looked up once, not per instance.
    pub memory: metrics::Gauge,
    /// Its lines in the host's log.
    pub log: Arc<PluginLog>,
}

/// Host resources (WASI handles) one instance may hold at once: a plugin
/// that leaked 96 000 of them once cost the host 23 MB per instance.
const MAX_HOST_RESOURCES: usize = 4096;

/// The data of one plugin instance's `Store`.
pub struct Sandbox {
    log: Arc<PluginLog>,
    /// Time the current call waited on the store (see `host_wait.rs`).
    pub host_wait: HostWait,
    /// The current call's place among the plugin's running calls.
    pub running: Running,
    /// This instance's place under the plugin's `max_instances`.
    pub instance_permit: Option<tokio::sync::OwnedSemaphorePermit>,
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
        handles: &InstanceHandles,
        setup: &Setup,
        budget: &Arc<MemoryBudget>,
        ticking: Option<TickingGuard>,
    ) -> Self {
        let wasi = WasiCtx::builder()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .stdout(PluginOutput::new(&handles.log, "stdout"))
            .stderr(PluginOutput::new(&handles.log, "stderr"))
            .build();
        // Handles the host keeps for the instance (WASI streams, sockets'
        // futures...) are host memory: bounded, and freed with the instance.
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_HOST_RESOURCES);
        Self {
            log: handles.log.clone(),
            host_wait: HostWait::default(),
            running: Running::default(),
            instance_permit: None,
            wasi,
            table,
            limiter: MemoryLimiter::new(
                setup.limits.max_memory_bytes,
                budget.clone(),
                handles.memory.clone(),
            ),
            config: setup.config.clone(),
            kv: handles.kv.clone(),
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
        self.log.write(level, None, &message);
    }
}

impl config::Host for Sandbox {
    fn get(&mut self, key: String) -> Option<String> {
        self.config.get(&key).cloned()
    }
}

/// Runs a write and converts its error for the guest. Writes to a backend
/// whose writes block (a disk sync) go to the blocking pool, and the time is
/// the host's, not the plugin's (see `host_wait.rs`), so the call gives its
/// CPU place up meanwhile (`cpu_share.rs`); in-memory writes take about a
/// microsecond and run inline, where a thread hop would cost far more than
/// the operation.
async fn write<T: Send + 'static>(
    kv: &Arc<Namespace>,
    host_wait: &HostWait,
    running: &mut Running,
    operation: impl FnOnce(&Namespace) -> Result<T, KvError> + Send + 'static,
) -> Result<T, kv::Error> {
    let result = if kv.writes_block() {
        let kv = kv.clone();
        running.pause();
        let result = {
            let _waiting = host_wait.begin();
            tokio::task::spawn_blocking(move || operation(&kv))
                .await
                .unwrap_or_else(|join| Err(KvError::Storage(join.to_string())))
        };
        running.resume().await;
        result
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
        write(&self.kv, &self.host_wait, &mut self.running, move |kv| {
            kv.set(&key, &value)
        })
        .await
    }

    async fn delete(&mut self, key: String) -> Result<bool, kv::Error> {
        write(&self.kv, &self.host_wait, &mut self.running, move |kv| {
            kv.delete(&key)
        })
        .await
    }

    fn list_keys(&mut self, prefix: String) -> Result<Vec<String>, kv::Error> {
        self.kv.list_keys(&prefix).map_err(guest_error)
    }

    async fn increment(&mut self, key: String, delta: i64) -> Result<i64, kv::Error> {
        write(&self.kv, &self.host_wait, &mut self.running, move |kv| {
            kv.increment(&key, delta)
        })
        .await
    }

    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    ) -> Result<bool, kv::Error> {
        write(&self.kv, &self.host_wait, &mut self.running, move |kv| {
            kv.compare_and_swap(&key, expected.as_deref(), &new)
        })
        .await
    }
}
