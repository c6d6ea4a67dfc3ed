//! The coordinator's HTTP port (`--http-listen`), beside its gRPC port: `/healthz` for plain
//! HTTP probes, `/metrics` for Prometheus (open, like health: counts, no names or images), and
//! the routes the rest of the coordinator adds to [`router`] (the web monitor). Off unless the
//! port is given.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::service::{Api, Auth};
use crate::state::Signals;

/// What the HTTP handlers share: the same handles as the gRPC services, and the clients'
/// token check.
#[derive(Clone)]
pub(crate) struct HttpState {
    pub(crate) api: Api,
    pub(crate) client_auth: Auth,
}

/// Every HTTP route of the coordinator.
pub(crate) fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state.clone())
        .merge(crate::web::router(state))
}

/// 200 while the coordinator serves, 503 once it is shutting down.
async fn healthz(State(state): State<HttpState>) -> (StatusCode, &'static str) {
    if state.api.signals.is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

/// The Prometheus text exposition of [`crate::metrics::Metrics`]: no call to the database
/// thread.
async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    let text = state.api.metrics.encode(state.api.blobs.used_bytes());
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text)
}

/// Serves `router` on `listener` until the coordinator begins to shut down.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    signals: Arc<Signals>,
) -> std::io::Result<()> {
    // The peer's address reaches the handlers: limits per client count web submissions too.
    let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, service)
        .with_graceful_shutdown(async move { signals.shutdown_requested().await })
        .await
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt as _;

    use super::*;

    #[tokio::test]
    async fn healthz_is_ok_until_shutdown_begins() {
        let dir = tempfile::tempdir().unwrap();
        let api = crate::service::test_api(dir.path());
        let app = router(HttpState {
            api: api.clone(),
            client_auth: Auth::new(&[]).unwrap(),
        });
        let get = || Request::get("/healthz").body(Body::empty()).unwrap();
        let ok = app.clone().oneshot(get()).await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        api.signals.begin_shutdown();
        let stopping = app.oneshot(get()).await.unwrap();
        assert_eq!(stopping.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
