//! The operator's HTTP endpoint on `metrics_listen`: `GET /` (a status
//! page for people, `page.rs`), `GET /status.json` (the same for scripts,
//! `snapshot.rs`), `GET /metrics` for Prometheus, `GET /healthz` for a load
//! balancer or an orchestrator.
//!
//! The page's rates and percentiles come from the metrics themselves, read
//! once a second into a bounded history (`history.rs`): serving the page
//! costs a render of the snapshot, nothing on the command path.
//!
//! `/healthz` answers 200 `ready` only while the server serves commands
//! with its plugins loaded: 503 `starting` while the first load compiles
//! (a cold Python plugin takes seconds), 503 `stopping` once shutdown
//! begins, so a balancer drains a host before it goes away.

mod history;
mod page;
mod snapshot;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::router::Routes;
use crate::store::Usage;
use history::{History, Sample};
use snapshot::Snapshot;

/// Where the server is in its life, as `/healthz` reports it, and what it
/// serves once it does (for the status page).
#[derive(Clone)]
pub struct Readiness {
    state: Arc<AtomicU8>,
    serving: Arc<OnceLock<Serving>>,
    started: Instant,
}

/// What the status page reads of a serving server.
pub struct Serving {
    pub routes: Arc<Routes>,
    pub listen: SocketAddr,
    pub tls: bool,
    /// The places under `max_connections`: those taken are open connections.
    pub connections: Arc<Semaphore>,
    pub max_connections: usize,
    /// The schedules and how their runs went.
    pub schedules: Arc<crate::schedule::Board>,
}

impl Serving {
    fn open_connections(&self) -> usize {
        self.max_connections
            .saturating_sub(self.connections.available_permits())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Starting,
    Ready,
    Stopping,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Ready => "ready",
            Self::Stopping => "stopping",
        }
    }
}

const STARTING: u8 = 0;
const READY: u8 = 1;
const STOPPING: u8 = 2;

impl Default for Readiness {
    fn default() -> Self {
        Self {
            state: Arc::default(),
            serving: Arc::default(),
            started: Instant::now(),
        }
    }
}

impl Readiness {
    /// Serving `serving`: `/healthz` says ready.
    pub fn ready(&self, serving: Serving) {
        let _ = self.serving.set(serving);
        self.state.store(READY, Ordering::Relaxed);
    }

    pub fn stopping(&self) {
        self.state.store(STOPPING, Ordering::Relaxed);
    }

    fn state(&self) -> State {
        match self.state.load(Ordering::Relaxed) {
            READY => State::Ready,
            STARTING => State::Starting,
            _ => State::Stopping,
        }
    }

    fn report(&self) -> (StatusCode, &'static str) {
        match self.state() {
            State::Ready => (StatusCode::OK, "ready\n"),
            State::Starting => (
                StatusCode::SERVICE_UNAVAILABLE,
                "starting: plugins loading\n",
            ),
            State::Stopping => (StatusCode::SERVICE_UNAVAILABLE, "stopping\n"),
        }
    }
}

/// What every request to the endpoint reads.
struct Window {
    metrics: PrometheusHandle,
    readiness: Readiness,
    history: Mutex<History>,
    /// What each plugin holds in the key-value store, read every
    /// [`KV_EVERY`] (a round trip to Redis, with that store).
    kv: Mutex<BTreeMap<String, Usage>>,
}

/// How often the plugins' key-value usage is read.
const KV_EVERY: u64 = 5;
/// The longest a usage read may take before it is left for next time.
const KV_TIMEOUT: Duration = Duration::from_millis(500);

impl Window {
    fn snapshot(&self) -> Snapshot {
        let history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        let kv = self
            .kv
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Snapshot::new(
            self.readiness.state(),
            self.readiness.started.elapsed(),
            self.readiness.serving.get(),
            &history,
            &kv,
            crate::telemetry::events::recent(),
        )
    }

    /// Reads the metrics into the history once a second, until `shutdown`.
    async fn sample(self: Arc<Self>, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        for second in 0_u64.. {
            tokio::select! {
                _ = every.tick() => {}
                () = shutdown.cancelled() => return,
            }
            let sample = Sample::parse(&self.metrics.render(), Instant::now());
            self.history
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(sample);
            if second % KV_EVERY == 0 {
                self.read_kv_usage().await;
            }
        }
    }

    async fn read_kv_usage(&self) {
        let Some(serving) = self.readiness.serving.get() else {
            return;
        };
        let plugins = serving.routes.load().plugins();
        let mut usage = BTreeMap::new();
        for plugin in plugins {
            let read = tokio::time::timeout(KV_TIMEOUT, plugin.kv_usage().wait()).await;
            if let Ok(Ok(held)) = read {
                usage.insert(plugin.name().to_owned(), held);
            }
        }
        *self.kv.lock().unwrap_or_else(PoisonError::into_inner) = usage;
    }
}

/// A request that has not sent its headers by then is dropped: a scraper
/// that connects and stalls holds nothing for long.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    metrics: PrometheusHandle,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    let window = Arc::new(Window {
        metrics,
        readiness,
        history: Mutex::default(),
        kv: Mutex::default(),
    });
    tokio::spawn(window.clone().sample(shutdown.clone()));
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of descriptors, most likely: give others a moment.
                    tracing::debug!("status endpoint: accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let window = window.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = respond(&request, &window);
                async move { Ok::<_, Infallible>(response) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(err) = served {
                tracing::debug!("status endpoint: {err}");
            }
        });
    }
}

fn respond<B>(request: &Request<B>, window: &Window) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&hyper::Method::GET, "/") => (
            StatusCode::OK,
            "text/html; charset=utf-8",
            page::render(&window.snapshot()),
        ),
        (&hyper::Method::GET, "/status.json") => {
            match serde_json::to_string_pretty(&window.snapshot()) {
                Ok(json) => (StatusCode::OK, "application/json", json + "\n"),
                Err(err) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("cannot render the status: {err}\n"),
                ),
            }
        }
        (&hyper::Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            window.metrics.render(),
        ),
        (&hyper::Method::GET, "/healthz") => {
            let (status, text) = window.readiness.report();
            (status, "text/plain", text.to_owned())
        }
        (&hyper::Method::GET, _) => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: GET /, /status.json, /metrics or /healthz\n".to_owned(),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}
