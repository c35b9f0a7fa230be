//! A connection's plugin instance, kept warm between its commands.
//!
//! A fresh instance costs about 10 microseconds for a small Rust plugin (a
//! store, a WASI context, the memory image), milliseconds for a Python one;
//! a call into a live one, about one microsecond. So each
//! connection keeps the instance its last command ran in and reuses it for
//! the next command to the same plugin version. Isolation between clients
//! is unchanged: an instance belongs to one connection and is never shared.
//! What a plugin keeps in memory is seen only by later commands of the same
//! client, and never after a failure: an instance whose call trapped, timed
//! out or hit a limit is discarded. Instances are also recycled after
//! [`MAX_CALLS_PER_INSTANCE`] calls, so a plugin that leaks a little per call
//! never grows into its memory limit, and released when the connection idles
//! (see `connection.rs`), so idle clients hold no memory.

use wasmtime::Store;
use wasmtime::component::ComponentExportIndex;

use super::bindings;
use super::nested::Chain;
use super::sandbox::Sandbox;

/// Calls after which an instance is replaced by a fresh one: instantiation
/// is amortised over this many calls (about 1 ns each for a Rust plugin).
pub const MAX_CALLS_PER_INSTANCE: u32 = 10_000;

/// One connection's warm instance, if it has one.
#[derive(Default)]
pub struct Session {
    warm: Option<Warm>,
    /// For a plugin's nested call, the calls that led to it (see
    /// `nested.rs`); empty for a connection.
    chain: Chain,
}

/// A live instance and its store, of the plugin version `plugin_id`.
pub(super) struct Warm {
    pub plugin_id: u64,
    pub store: Store<Sandbox>,
    pub live: Live,
    pub calls: u32,
}

/// An instance's exports: the world's, and `serve-batch` when the plugin
/// has it.
pub(super) struct Live {
    pub plugin: bindings::Plugin,
    pub serve_batch: Option<wasmtime::component::TypedFunc<(), ()>>,
}

impl Session {
    /// The one-command session of a nested call with `chain` behind it.
    pub fn nested(chain: Chain) -> Self {
        Self { warm: None, chain }
    }

    pub(super) fn chain(&self) -> &Chain {
        &self.chain
    }

    /// Whether the session holds an instance (and so memory) to release.
    pub fn is_warm(&self) -> bool {
        self.warm.is_some()
    }

    /// Drops the instance: its memory slot goes back to the pool.
    pub fn release(&mut self) {
        self.warm = None;
    }

    /// The warm instance if it belongs to `plugin_id` and has calls left;
    /// any other instance is dropped, so a connection holds at most one.
    pub(super) fn take_for(&mut self, plugin_id: u64) -> Option<Warm> {
        self.warm
            .take()
            .filter(|warm| warm.plugin_id == plugin_id && warm.calls < MAX_CALLS_PER_INSTANCE)
    }

    /// Keeps `warm` for the next command after a call that succeeded.
    pub(super) fn keep(&mut self, warm: Warm) {
        self.warm = Some(warm);
    }
}

/// A new instance of `pre` in `store`, with `serve-batch` looked up when
/// the plugin has it.
pub(super) async fn instantiate(
    pre: &bindings::PluginPre<Sandbox>,
    serve_batch: Option<&ComponentExportIndex>,
    store: &mut Store<Sandbox>,
) -> wasmtime::Result<Live> {
    let instance = pre.instance_pre().instantiate_async(&mut *store).await?;
    let plugin = bindings::Plugin::new(&mut *store, &instance)?;
    let serve_batch = serve_batch
        .map(|index| instance.get_typed_func::<(), ()>(&mut *store, index))
        .transpose()?;
    Ok(Live {
        plugin,
        serve_batch,
    })
}
