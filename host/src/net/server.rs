//! The server: bind, load the plugins, serve clients (`listener.rs`) until
//! a shutdown signal, then let commands in flight finish.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::net::auth::{self, Auth};
use crate::net::connection::Settings;
use crate::net::listener::{Door, Listener, MAX_LINGERING_REFUSALS};
use crate::net::per_address::PerAddress;
use crate::net::status::{Readiness, Serving};
use crate::net::timeouts::Timeouts;
use crate::net::tls;
use crate::plugin::{CompiledBy, WasmRuntime};
use crate::reload::PluginDir;
use crate::reload::Reloader;
use crate::router::Dispatcher;
use crate::schedule::{Scheduler, TokenPermits};
use crate::telemetry::{ConnectionMetrics, LogBudget};

/// How to serve: the config, where it came from (what SIGHUP re-reads), and
/// whether to watch the plugin directory.
pub struct ServeOptions {
    pub config: Config,
    pub config_path: Option<PathBuf>,
    pub watch: bool,
    /// Requests to the reloader from the program running the server
    /// (`plugboard dev`); `None` for `serve`.
    pub control: Option<tokio::sync::mpsc::UnboundedReceiver<crate::reload::Control>>,
}

/// Binds `listen` and serves there until `shutdown_signal` completes (see
/// [`serve`]). Binding comes first, so a taken address is reported at once,
/// not after every plugin has compiled; clients that connect meanwhile wait
/// in the accept queue.
pub async fn run(
    options: ServeOptions,
    shutdown_signal: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    reserve_descriptors(options.config.max_connections)?;
    let listen = &options.config.listen;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on `listen` = {listen:?}"))?;
    serve(listener, options, shutdown_signal).await
}

/// Descriptors the server holds besides its connections: the listener, the
/// log, the state store, plugin and cache files, the metrics listener,
/// refused clients lingering, the runtime's own.
const OTHER_DESCRIPTORS: u64 = 256;

/// Makes sure `max_connections` clients can be held: each is a descriptor,
/// so the soft limit is raised to what is needed (up to the hard limit, or
/// beyond it where the process may). A value that cannot be honoured is
/// refused now, naming the key, not found out at the first refused accept.
fn reserve_descriptors(max_connections: usize) -> anyhow::Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let needed = max_connections as u64 + OTHER_DESCRIPTORS;
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).context("cannot read the descriptor limit")?;
    if soft >= needed {
        return Ok(());
    }
    if setrlimit(Resource::RLIMIT_NOFILE, needed, hard.max(needed)).is_ok() {
        tracing::info!(
            from = soft,
            to = needed,
            "raised the open-file limit for `max_connections`"
        );
        return Ok(());
    }
    anyhow::bail!(
        "`max_connections` = {max_connections} needs {needed} open files, but the limit is \
         {soft} (hard {hard}) and cannot be raised: raise it (`ulimit -n`, systemd's \
         `LimitNOFILE=`) or lower `max_connections`"
    )
}

/// Loads the plugins and serves clients of `listener` until
/// `shutdown_signal` completes, then stops accepting, lets in-flight commands
/// finish (up to `shutdown_timeout_ms`) and returns. Tests call this with a
/// listener of their own.
pub async fn serve(
    listener: TcpListener,
    options: ServeOptions,
    shutdown_signal: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let ServeOptions {
        config,
        config_path,
        watch,
        control,
    } = options;
    let readiness = Readiness::default();
    // The operator's endpoint outlives the drain (it says `stopping` then)
    // and ends with this function.
    let status_ends = CancellationToken::new();
    let _end_status = status_ends.clone().drop_guard();
    if let Some(listen) = config.metrics_listen {
        serve_status(listen, &readiness, &status_ends).await?;
    }
    // Clients that connect now wait (the listener is bound: the kernel
    // queues them) until the plugins are loaded.
    tracing::info!(
        "bound {}; loading plugins before serving",
        listener.local_addr()?
    );
    let store = config.open_store()?;
    let runtime = WasmRuntime::new(config.engine_options(), store)
        .context("cannot start the WebAssembly runtime")?;
    let mut shutdown_signal = std::pin::pin!(shutdown_signal);
    // A signal while plugins load (a cold compile of a large plugin takes
    // seconds) ends the server at once: the compile is abandoned.
    let reloader = tokio::select! {
        started = Reloader::start(runtime.clone(), config.clone(), config_path, watch, control) => started?,
        () = &mut shutdown_signal => {
            tracing::info!("shutting down while plugins load: abandoning the load");
            return Ok(());
        }
    };
    report_startup(&runtime, &config, reloader.plugins());
    let routes = reloader.routes();
    let dispatcher = Dispatcher::new(&routes, config.max_call_depth);
    runtime.set_dispatcher(Arc::new(dispatcher));
    let shutdown = CancellationToken::new();
    let schedules = reloader.schedules();
    let reloading = tokio::spawn(reloader.run(shutdown.clone()));

    let auth = Auth::new(
        &config.auth.tokens,
        config.auth.max_unauthenticated(config.max_connections),
    )?;
    let scheduler = Scheduler::new(
        routes.clone(),
        token_permits(auth.as_ref()),
        &config.state_dir,
    );
    let board = scheduler.board();
    let plugin_schedules = runtime.plugin_schedules().subscribe();
    let scheduling = tokio::spawn(scheduler.run(schedules, plugin_schedules, shutdown.clone()));
    let tls = config.tls.as_ref().map(tls::acceptor).transpose()?;
    let local = listener.local_addr()?;
    warn_if_exposed(local, &config, auth.is_some());
    // Tests and scripts using port 0 read the real address from this line,
    // which also says that the plugins are loaded.
    tracing::info!("listening on {local}");
    let connections = Arc::new(Semaphore::new(config.max_connections));
    readiness.ready(Serving {
        routes: routes.clone(),
        listen: local,
        tls: tls.is_some(),
        connections: connections.clone(),
        max_connections: config.max_connections,
        schedules: board.clone(),
    });
    let door = Door {
        routes,
        connections,
        per_address: PerAddress::new(config.max_connections_per_ip()),
        refusals: Arc::new(Semaphore::new(MAX_LINGERING_REFUSALS)),
        // A flood of refused clients must not flood the log (the metric
        // counts every one).
        refusal_log: LogBudget::new("refused_connections", 1),
        protected: config.protected_mode && auth.is_none(),
        tls,
        settings: Arc::new(Settings {
            max_frame_bytes: config.max_frame_bytes,
            timeouts: Timeouts::from_millis(
                config.idle_timeout_ms,
                config.frame_timeout_ms,
                config.auth.timeout_ms,
            ),
            auth,
            schedules: board,
        }),
        metrics: Arc::new(ConnectionMetrics::register()),
        tracker: TaskTracker::new(),
        shutdown,
    };
    let mut server = Listener {
        listener,
        door: Arc::new(door),
    };
    tokio::select! {
        () = server.accept_loop() => {}
        () = &mut shutdown_signal => {}
    }
    readiness.stopping();
    let stopping = std::time::Instant::now();
    server.drain(config.shutdown_timeout()).await;
    // The reloader stops between rescans; one compiling a plugin gets what
    // is left of the shutdown timeout, then is abandoned (its compile
    // thread ends with the process: see `main.rs`).
    let left = config.shutdown_timeout().saturating_sub(stopping.elapsed());
    if tokio::time::timeout(left, reloading).await.is_err() {
        tracing::warn!("shutdown timeout reached: abandoning a plugin load in progress");
    }
    // Schedules' runs in progress finish like clients' commands.
    let left = config.shutdown_timeout().saturating_sub(stopping.elapsed());
    if tokio::time::timeout(left, scheduling).await.is_err() {
        tracing::warn!("shutdown timeout reached: abandoning a schedule's run in progress");
    }
    Ok(())
}

/// What each token may run, for the schedules' runs (none without auth).
fn token_permits(auth: Option<&Arc<Auth>>) -> Option<TokenPermits> {
    let auth = auth?.clone();
    Some(Box::new(move |token, command| {
        auth.token_permits(token, command)
    }))
}

/// Starts the operator's endpoint (/metrics, /healthz) on `listen`, with
/// the metrics recorder it renders: before any handle is registered, so
/// none stays a no-op.
async fn serve_status(
    listen: SocketAddr,
    readiness: &Readiness,
    ends: &CancellationToken,
) -> anyhow::Result<()> {
    let cannot = || format!("cannot serve metrics on `metrics_listen` = {listen}");
    let listener = TcpListener::bind(listen).await.with_context(cannot)?;
    let metrics = crate::telemetry::install().with_context(cannot)?;
    tracing::info!(
        "status on http://{0}/, metrics on http://{0}/metrics, health on http://{0}/healthz",
        listener.local_addr()?
    );
    tokio::spawn(super::status::serve(
        listener,
        metrics,
        readiness.clone(),
        ends.clone(),
    ));
    Ok(())
}

/// Warns when clients beyond this machine can reach the server without
/// what protects them: a credential, and encryption.
fn warn_if_exposed(local: SocketAddr, config: &Config, authenticated: bool) {
    for warning in exposure(local, config, authenticated) {
        tracing::warn!("{warning}");
    }
}

/// What [`warn_if_exposed`] says about serving on `local`.
fn exposure(local: SocketAddr, config: &Config, authenticated: bool) -> Vec<String> {
    let mut warnings = Vec::new();
    if auth::is_loopback(local.ip()) {
        return warnings;
    }
    if !authenticated && config.protected_mode {
        warnings.push(format!(
            "listening on {local} with no auth token: protected mode serves only loopback clients"
        ));
    } else if !authenticated {
        warnings.push(format!(
            "listening on {local} with no auth token and protected_mode = false: anyone who can \
             connect can run every command"
        ));
    }
    if config.tls.is_none() {
        warnings.push(format!(
            "listening on {local} without TLS: commands, replies and tokens cross the network \
             in clear text"
        ));
    }
    warnings
}

/// Logs what a freshly started server serves, and settings that match nothing.
fn report_startup(runtime: &WasmRuntime, config: &Config, plugins: &PluginDir) {
    let names: Vec<&str> = plugins.plugin_names().collect();
    if names.is_empty() {
        tracing::warn!(dir = %config.plugin_dir.display(), "no plugins loaded: every command will be unknown");
    }
    for name in config.plugins.keys() {
        if !names.contains(&name.as_str()) {
            tracing::warn!("config has [plugins.{name}] but no plugin of that name is loaded");
        }
    }
    if runtime.cache_stats().is_some() {
        let (from_cache, compiled): (Vec<_>, Vec<_>) = plugins
            .plugins()
            .partition(|plugin| plugin.compiled_by() == CompiledBy::Cache);
        let (from_cache, compiled) = (from_cache.len(), compiled.len());
        tracing::info!(from_cache, compiled, dir = %config.cache_dir.display(), "compile cache");
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;

    use super::*;
    use crate::config::StateStore;
    use crate::plugin::test_components::{Handle, component};

    /// A server in this process, on 127.0.0.1:0.
    struct TestServer {
        addr: std::net::SocketAddr,
        /// Stops the server when dropped.
        _stop: oneshot::Sender<()>,
        _plugins: tempfile::TempDir,
    }

    /// Serves a plugin that answers `go` with `gone`, with one address
    /// allowed every place (so `max_connections` is the limit reached).
    async fn start(max_connections: usize) -> TestServer {
        start_with(max_connections, max_connections).await
    }

    async fn start_with(max_connections: usize, per_address: usize) -> TestServer {
        let plugins = tempfile::tempdir().unwrap();
        let bytes = component(&["go"], Handle::Reply("gone"));
        std::fs::write(plugins.path().join("go.wasm"), bytes).unwrap();
        let config = Config {
            plugin_dir: plugins.path().to_owned(),
            state_store: StateStore::Memory,
            compile_cache: false,
            hot_reload: false,
            max_connections,
            max_connections_per_ip: Some(per_address),
            ..Config::default()
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let options = ServeOptions {
            config,
            config_path: None,
            watch: false,
            control: None,
        };
        tokio::spawn(async move {
            let stopped = async {
                let _ = stopped.await;
            };
            serve(listener, options, stopped).await.expect("serve");
        });
        TestServer {
            addr,
            _stop: stop,
            _plugins: plugins,
        }
    }

    /// Sends `go` on a new connection and returns everything it got back.
    async fn go_once(addr: std::net::SocketAddr) -> String {
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(b"go<EOF>").await.unwrap();
        client.shutdown().await.unwrap();
        read_all(&mut client).await
    }

    /// Connects to `addr` from the loopback address `source`.
    async fn connect_from(source: &str, addr: std::net::SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        socket.connect(addr).await.unwrap()
    }

    /// Reads until the peer closes; what it sent.
    async fn read_all(stream: &mut TcpStream) -> String {
        let mut received = Vec::new();
        stream.read_to_end(&mut received).await.unwrap();
        String::from_utf8(received).unwrap()
    }

    /// A listener others can reach is warned about for what it lacks: a
    /// credential, encryption; loopback and a complete setup are not.
    #[test]
    fn exposure_names_what_protects_clients_and_what_does_not() {
        let anywhere: SocketAddr = "0.0.0.0:1100".parse().unwrap();
        let mut config = Config::default();
        assert!(exposure("127.0.0.1:1100".parse().unwrap(), &config, false).is_empty());
        let open = exposure(anywhere, &config, false);
        assert!(open[0].contains("protected mode") && open[1].contains("without TLS"));
        config.tls = Some(crate::config::TlsSettings {
            cert: "cert.pem".into(),
            key: "key.pem".into(),
            client_ca: None,
        });
        assert!(exposure(anywhere, &config, true).is_empty());
    }

    #[tokio::test]
    async fn serves_commands_on_the_given_listener() {
        let server = start(4).await;
        let mut client = TcpStream::connect(server.addr).await.unwrap();
        client.write_all(b"go<EOF>nope<EOF>").await.unwrap();
        client.shutdown().await.unwrap();
        assert_eq!(
            read_all(&mut client).await,
            "gone<EOF>error: unknown command 'nope'<EOF>"
        );
    }

    /// The refused client had already sent more than the server reads: the
    /// reply must still reach it, not be lost to a reset.
    #[tokio::test]
    async fn a_client_over_the_limit_is_told_why_even_after_sending() {
        let server = start(1).await;
        let mut served = TcpStream::connect(server.addr).await.unwrap();
        served.write_all(b"go<EOF>").await.unwrap();
        let mut reply = [0u8; 9];
        served.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"gone<EOF>");

        let mut refused = TcpStream::connect(server.addr).await.unwrap();
        refused.write_all(&b"go<EOF>".repeat(10_000)).await.unwrap();
        refused.shutdown().await.unwrap();
        assert_eq!(
            read_all(&mut refused).await,
            "error: too many connections<EOF>"
        );
    }

    /// With one place, clients one after another are all served: each
    /// gives its place back when it closes. The place is given back just
    /// after the client sees the end of its stream, so a client may be
    /// refused in between, and tries again; a place never given back would
    /// refuse every try.
    #[tokio::test]
    async fn a_closed_connection_gives_its_place_back() {
        let server = start(1).await;
        for _ in 0..3 {
            let mut tries = 0;
            loop {
                match go_once(server.addr).await.as_str() {
                    "gone<EOF>" => break,
                    "error: too many connections<EOF>" if tries < 100 => tries += 1,
                    other => panic!("after {tries} tries: {other:?}"),
                }
                tokio::task::yield_now().await;
            }
        }
    }

    /// One address holding its whole share leaves the other places to
    /// other addresses.
    #[tokio::test]
    async fn one_address_cannot_take_every_place() {
        let server = start_with(4, 2).await;
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut client = connect_from("127.0.0.1", server.addr).await;
            client.write_all(b"go<EOF>").await.unwrap();
            let mut reply = [0u8; 9];
            client.read_exact(&mut reply).await.unwrap();
            held.push(client);
        }
        let mut third = connect_from("127.0.0.1", server.addr).await;
        third.shutdown().await.unwrap();
        assert_eq!(
            read_all(&mut third).await,
            "error: too many connections from your address<EOF>"
        );
        let mut other = connect_from("127.0.0.2", server.addr).await;
        other.write_all(b"go<EOF>").await.unwrap();
        other.shutdown().await.unwrap();
        assert_eq!(read_all(&mut other).await, "gone<EOF>");
    }
}
