//! The worker's HTTP port (`--http-listen`): `/healthz` for probes and `/metrics` for
//! Prometheus; and the client side of `stylefarm-worker --health-check`, which asks that port.

use std::future::Future;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::metrics::WorkerMetrics;

/// The content type of the exposition: OpenMetrics text, which Prometheus reads.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The worker's HTTP routes.
fn router(metrics: WorkerMetrics) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics_text))
        .with_state(metrics)
}

async fn metrics_text(State(metrics): State<WorkerMetrics>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        metrics.encode(),
    )
}

/// Serves `/healthz` and `/metrics` on `listener` until `shutdown` completes.
///
/// # Errors
/// When the server fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: WorkerMetrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics))
        .with_graceful_shutdown(shutdown)
        .await
}

/// `GET /healthz` at `address` (`host:port`): `Ok` on a 200 answer within `timeout`.
///
/// # Errors
/// One sentence: no connection, no answer in time, or another status.
pub async fn check_health(address: &str, timeout: Duration) -> Result<(), String> {
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| format!("cannot reach http://{address}: {e}"))?;
        let request =
            format!("GET /healthz HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("cannot ask http://{address}/healthz: {e}"))?;
        // The status line is all that matters; a healthy answer is a few bytes.
        let mut answer = Vec::with_capacity(256);
        stream
            .take(4096)
            .read_to_end(&mut answer)
            .await
            .map_err(|e| format!("no answer from http://{address}/healthz: {e}"))?;
        let answer = String::from_utf8_lossy(&answer);
        let status = answer.lines().next().unwrap_or("").trim();
        match status.split_whitespace().nth(1) {
            Some("200") => Ok(()),
            _ if status.is_empty() => Err(format!("http://{address}/healthz answered nothing")),
            _ => Err(format!("http://{address}/healthz answered `{status}`")),
        }
    };
    tokio::time::timeout(timeout, ask)
        .await
        .map_err(|_| format!("http://{address}/healthz did not answer within {timeout:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn health_check_passes_while_served_and_fails_after() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, WorkerMetrics::new(), async {
            let _ = stopped.await;
        }));
        check_health(&address, Duration::from_secs(5))
            .await
            .unwrap();
        let _ = stop.send(());
        server.await.unwrap().unwrap();
        let err = check_health(&address, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(err.starts_with("cannot reach"), "{err}");
    }
}
