//! The web monitor: a page a studio leaves open on a screen, served on the coordinator's HTTP
//! port (`--http-listen`) beside `/healthz` and the metrics.
//!
//! - The page (`assets/`: plain HTML, CSS and JavaScript modules) is embedded in the binary
//!   and needs nothing from the internet: no build step, no CDN.
//! - `/api/...` is a small JSON API over the same handlers as the gRPC services (`api.rs`,
//!   `json.rs`): the farm at a glance, jobs, one job, cancel, retry, uploads, the planner's
//!   dry run and submit. A job's live updates are Server-Sent Events fed by `WatchJob`'s
//!   stream (the same broadcast of `JobEvent`s), so the page sees exactly what
//!   `stylefarm watch` sees, previews included (small JPEG blobs the workers send at least
//!   every 2 s; unnamed by any job, the collector deletes them after the blob grace period).
//! - Access (`auth.rs`): when the farm has a client token, every `/api` route but the login
//!   needs it, either as `Authorization: Bearer` or as the session cookie the login sets
//!   (HttpOnly, SameSite=Strict), which is how `EventSource` gets in; the token never goes in
//!   a URL. Every mutation must carry the `X-Stylefarm: 1` header (a cross-site form cannot
//!   send it, and a cross-site `fetch` with it needs a CORS preflight nobody answers) and must
//!   not come from another site by `Sec-Fetch-Site` or `Origin`.
//! - Every response carries a strict Content-Security-Policy (scripts, styles and images from
//!   the page's own origin only, no inline script or style, no framing), `nosniff` and
//!   `no-referrer`.
//! - Every size a request chooses is bounded: JSON bodies, uploads, list lengths, open event
//!   streams and downloads at once.

mod api;
mod auth;
mod json;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::Semaphore;

use crate::http::HttpState;

/// The largest JSON body a request may send (a job's settings, a login).
const MAX_JSON_BYTES: usize = 64 * 1024;
/// The largest image uploaded through the page (and never more than `--max-blob-bytes`).
const MAX_UPLOAD_BYTES: u64 = 64 << 20;
/// Event streams (job views) open at once; past it the page is asked to try later.
const MAX_STREAMS: usize = 64;
/// Blob downloads in flight at once (each reads its blob whole, hash-checked).
const MAX_DOWNLOADS: usize = 4;

/// The Content-Security-Policy of every response: nothing inline, nothing from elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   img-src 'self' blob:; connect-src 'self'; form-action 'none'; \
                   frame-ancestors 'none'; base-uri 'none'";

/// What the web handlers share.
#[derive(Clone)]
pub(crate) struct Web {
    http: HttpState,
    sessions: Arc<auth::Sessions>,
    streams: Arc<Semaphore>,
    downloads: Arc<Semaphore>,
}

/// The page and its API, for the HTTP router to merge.
pub(crate) fn router(http: HttpState) -> Router {
    let upload_limit = http.api.limits.max_blob_bytes.min(MAX_UPLOAD_BYTES);
    let web = Web {
        http,
        sessions: Arc::default(),
        streams: Arc::new(Semaphore::new(MAX_STREAMS)),
        downloads: Arc::new(Semaphore::new(MAX_DOWNLOADS)),
    };
    let uploads =
        Router::new()
            .route("/api/blobs", post(api::upload))
            .layer(DefaultBodyLimit::max(
                usize::try_from(upload_limit).unwrap_or(usize::MAX),
            ));
    Router::new()
        .route("/", get(|| asset("index.html")))
        .route("/assets/{name}", get(asset_route))
        .route(
            "/api/session",
            get(auth::session).post(auth::login).delete(auth::logout),
        )
        .route("/api/farm", get(api::farm))
        .route("/api/jobs", get(api::jobs).post(api::submit))
        .route("/api/plan", post(api::plan))
        .route("/api/jobs/{id}", get(api::job))
        .route("/api/jobs/{id}/events", get(api::events))
        .route("/api/jobs/{id}/cancel", post(api::cancel))
        .route("/api/jobs/{id}/retry", post(api::retry))
        .route("/api/blobs/{sha256}", get(api::blob))
        .layer(DefaultBodyLimit::max(MAX_JSON_BYTES))
        .merge(uploads)
        .with_state(web)
        .layer(axum::middleware::map_response(secure_headers))
}

/// The page's files, embedded: name, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("assets/index.html"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("assets/style.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/app.js"),
    ),
    (
        "views.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/views.js"),
    ),
    (
        "plot.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/plot.js"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("assets/favicon.svg"),
    ),
];

async fn asset_route(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    asset(&name).await
}

/// One of the page's files, or 404.
async fn asset(name: &str) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, kind, bytes)) => (
            [
                (header::CONTENT_TYPE, *kind),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such file\n").into_response(),
    }
}

/// The security headers of every response of the web monitor.
async fn secure_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}
