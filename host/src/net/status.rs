//! The operator's HTTP endpoint on `metrics_listen`: `GET /metrics` for
//! Prometheus, `GET /healthz` for a load balancer or an orchestrator.
//!
//! `/healthz` answers 200 `ready` only while the server serves commands
//! with its plugins loaded: 503 `starting` while the first load compiles
//! (a cold Python plugin takes seconds), 503 `stopping` once shutdown
//! begins, so a balancer drains a host before it goes away.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Where the server is in its life, as `/healthz` reports it.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicU8>);

const STARTING: u8 = 0;
const READY: u8 = 1;
const STOPPING: u8 = 2;

impl Readiness {
    pub fn ready(&self) {
        self.0.store(READY, Ordering::Relaxed);
    }

    pub fn stopping(&self) {
        self.0.store(STOPPING, Ordering::Relaxed);
    }

    fn report(&self) -> (StatusCode, &'static str) {
        match self.0.load(Ordering::Relaxed) {
            READY => (StatusCode::OK, "ready\n"),
            STARTING => (
                StatusCode::SERVICE_UNAVAILABLE,
                "starting: plugins loading\n",
            ),
            _ => (StatusCode::SERVICE_UNAVAILABLE, "stopping\n"),
        }
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
        let metrics = metrics.clone();
        let readiness = readiness.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = respond(&request, &metrics, &readiness);
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

fn respond<B>(
    request: &Request<B>,
    metrics: &PrometheusHandle,
    readiness: &Readiness,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&hyper::Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(),
        ),
        (&hyper::Method::GET, "/healthz") => {
            let (status, text) = readiness.report();
            (status, "text/plain", text.to_owned())
        }
        (&hyper::Method::GET, _) => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: GET /metrics or /healthz\n".to_owned(),
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
