//! The listener: load plugins, accept connections, hand each to its own task,
//! and shut down gracefully.
//!
//! The shape follows mini-redis: a bounded number of connection tasks (a
//! semaphore), accept errors that back off instead of ending the server, and
//! shutdown as a token passed to every task rather than a global flag. A
//! client over the connection limit is told so and closed at once, instead of
//! being left waiting in the accept queue with no idea why.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::codec::DELIMITER;
use crate::config::Config;
use crate::connection::Connection;
use crate::metrics::ConnectionMetrics;
use crate::plugin::Runtime;
use crate::plugin_dir::PluginDir;
use crate::reload::Reloader;
use crate::reply::Reply;
use crate::router::Routes;

/// Longest pause between retries when `accept` keeps failing (e.g. out of file descriptors).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// How to serve: the config, where it came from (what SIGHUP re-reads), and
/// whether to watch the plugin directory.
pub struct ServeOptions {
    pub config: Config,
    pub config_path: Option<PathBuf>,
    pub watch: bool,
}

/// Runs the server until `shutdown_signal` completes, then stops accepting,
/// lets in-flight commands finish (up to `shutdown_timeout_ms`) and returns.
pub async fn run(
    options: ServeOptions,
    shutdown_signal: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let ServeOptions {
        config,
        config_path,
        watch,
    } = options;
    if let Some(listen) = config.metrics_listen {
        crate::metrics::install(listen)?;
    }
    let store = config.open_store()?;
    let runtime = Runtime::new(config.runtime_options(), store)
        .context("cannot start the WebAssembly runtime")?;
    let reloader = Reloader::start(runtime.clone(), config.clone(), config_path, watch).await?;
    report_startup(&runtime, &config, reloader.plugins());
    let routes = reloader.routes();
    let shutdown = CancellationToken::new();
    let reloading = tokio::spawn(reloader.run(shutdown.clone()));

    let listener = TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on `listen` = {:?}", config.listen))?;
    // Tests and scripts using port 0 read the real address from this line.
    tracing::info!("listening on {}", listener.local_addr()?);

    let server = Listener {
        listener,
        routes,
        connections: Arc::new(Semaphore::new(config.max_connections)),
        max_frame_bytes: config.max_frame_bytes,
        metrics: Arc::new(ConnectionMetrics::register()),
        tracker: TaskTracker::new(),
        shutdown,
    };
    tokio::select! {
        () = server.accept_loop() => {}
        () = shutdown_signal => {}
    }
    server.drain(config.shutdown_timeout()).await;
    let _ = reloading.await;
    Ok(())
}

/// Logs what a freshly started server serves, and settings that match nothing.
fn report_startup(runtime: &Runtime, config: &Config, plugins: &PluginDir) {
    let names: Vec<&str> = plugins.plugin_names().collect();
    if names.is_empty() {
        tracing::warn!(dir = %config.plugin_dir.display(), "no plugins loaded: every command will be unknown");
    }
    for name in config.plugins.keys() {
        if !names.contains(&name.as_str()) {
            tracing::warn!("config has [plugins.{name}] but no plugin of that name is loaded");
        }
    }
    if let Some((hits, misses)) = runtime.cache_stats() {
        tracing::info!(hits, misses, dir = %config.cache_dir.display(), "compile cache");
    }
}

struct Listener {
    listener: TcpListener,
    routes: Arc<Routes>,
    connections: Arc<Semaphore>,
    max_frame_bytes: usize,
    metrics: Arc<ConnectionMetrics>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Listener {
    /// Accepts forever; only shutdown stops it.
    async fn accept_loop(&self) {
        loop {
            let (stream, peer) = self.accept().await;
            let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                self.metrics.rejected.increment(1);
                reject_over_limit(&stream);
                continue;
            };
            self.metrics.accepted.increment(1);
            self.metrics.open.increment(1.0);
            if let Err(err) = stream.set_nodelay(true) {
                tracing::debug!(%peer, "cannot set TCP_NODELAY: {err}");
            }
            let connection = Connection::new(
                stream,
                self.routes.clone(),
                self.max_frame_bytes,
                self.shutdown.clone(),
            );
            let span = tracing::debug_span!("connection", %peer);
            let metrics = self.metrics.clone();
            self.tracker.spawn(
                async move {
                    connection.run().await;
                    metrics.open.decrement(1.0);
                    drop(permit);
                }
                .instrument(span),
            );
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
    async fn drain(self, timeout: Duration) {
        drop(self.listener);
        tracing::info!("shutting down: finishing in-flight commands");
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(timeout, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.tracker.len(),
                "shutdown timeout reached; closing the remaining connections"
            );
        }
    }
}

/// Tells a client over `max_connections` why it is being closed. A single
/// non-blocking write into a fresh socket's empty send buffer: it cannot stall
/// the accept loop.
fn reject_over_limit(stream: &TcpStream) {
    let mut wire = Reply::error("too many connections")
        .as_str()
        .as_bytes()
        .to_vec();
    wire.extend_from_slice(DELIMITER);
    if let Err(err) = stream.try_write(&wire) {
        tracing::debug!("cannot tell an over-limit client why it is closed: {err}");
    }
    tracing::warn!("connection refused: max_connections reached");
}
