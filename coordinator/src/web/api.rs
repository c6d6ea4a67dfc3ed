//! The JSON API's handlers: each checks access, then calls the same code as the gRPC service
//! (through its trait, so that the checks, limits and logs are the same) and answers JSON.

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, Extensions, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{Stream, StreamExt as _};
use serde::Deserialize;
use serde_json::{json, Value};
use stylefarm_proto::v1;
use stylefarm_proto::v1::job_service_server::JobService as _;
use tonic::transport::server::TcpConnectInfo;

use super::auth::{authorize, same_site};
use super::json::{self, JobIn};
use super::Web;
use crate::blobs::BlobHash;
use crate::scheduler::Pool;

/// Jobs listed when the page does not say, and the most it may ask for.
const DEFAULT_JOBS: u32 = 50;
const MAX_JOBS: u32 = 200;

/// A refusal: its status and one sentence, as `{"error": ...}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> Self {
        use tonic::Code;
        let status = match s.code() {
            Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => StatusCode::CONFLICT,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, s.message())
    }
}

impl From<crate::error::CoordinatorError> for ApiError {
    fn from(e: crate::error::CoordinatorError) -> Self {
        tonic::Status::from(e).into()
    }
}

type ApiResult = Result<Response, ApiError>;

/// A gRPC request carrying the browser's address, so that limits per client count it.
fn request<T>(message: T, extensions: &Extensions) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(ConnectInfo(addr)) = extensions.get::<ConnectInfo<SocketAddr>>() {
        request.extensions_mut().insert(TcpConnectInfo {
            local_addr: None,
            remote_addr: Some(*addr),
        });
    }
    request
}

/// `GET /api/farm`: workers, the queue and jobs by state.
pub(super) async fn farm(State(web): State<Web>, headers: HeaderMap) -> ApiResult {
    authorize(&web, &headers)?;
    let api = &web.http.api;
    let farm = api
        .state
        .call(move |c| {
            let now = c.now_ms();
            let workers: Vec<Value> = c
                .sched
                .workers()
                .into_iter()
                .map(|w| {
                    let task = w.current_task.and_then(|t| c.sched.task(t));
                    let caps = &w.capabilities;
                    json!({
                        "id": w.id.to_string(),
                        "name": w.name,
                        "device": json::device_name(caps.device),
                        "threads": caps.threads,
                        "memory_bytes": caps.memory_bytes,
                        "seen_ms_ago": now.saturating_sub(w.last_seen_ms),
                        "state": if !c.sched.is_live(w, now) {
                            "lost"
                        } else if task.is_some() {
                            "busy"
                        } else {
                            "idle"
                        },
                        "task": task.map(|t| json!({
                            "id": t.id.to_string(),
                            "job_id": t.job.to_string(),
                            "index": t.index,
                            "iteration": t.progress.as_ref().map_or(0, |p| p.iteration),
                            "total": t.progress.as_ref().map_or(0, |p| p.total_iterations),
                        })),
                        "tasks_done": w.tasks_done,
                        "tasks_failed": w.tasks_failed,
                    })
                })
                .collect();
            let mut by_state = serde_json::Map::new();
            for id in c.sched.newest_jobs() {
                let state = json::job_state(c.sched.job(id)?.state.to_proto() as i32);
                let n = by_state.entry(state).or_insert(json!(0));
                *n = json!(n.as_u64().unwrap_or(0) + 1);
            }
            let stats = c.sched.stats(now);
            let tally = c.sched.tally();
            let pools: serde_json::Map<String, Value> = Pool::ALL
                .into_iter()
                .map(|pool| {
                    let load = json!({
                        "queued": tally.queue_depth(pool),
                        "demand": tally.demand(pool),
                    });
                    (pool.name().to_owned(), load)
                })
                .collect();
            Ok(json!({
                "now_unix_ms": now,
                "workers": workers,
                "jobs": by_state,
                "queue": {
                    "tasks_queued": stats.tasks_queued,
                    "tasks_running": stats.tasks_running,
                    "tasks_succeeded": stats.tasks_succeeded,
                    "tasks_failed": stats.tasks_failed,
                    "live_workers": stats.workers,
                },
                "pools": pools,
            }))
        })
        .await?;
    Ok(Json(farm).into_response())
}

/// `?limit=` of the job list.
#[derive(Deserialize)]
pub(super) struct ListQuery {
    limit: Option<u32>,
}

/// `GET /api/jobs?limit=N`: the newest jobs, without their tasks' settings.
pub(super) async fn jobs(
    State(web): State<Web>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    authorize(&web, &headers)?;
    let limit = q.limit.unwrap_or(DEFAULT_JOBS).clamp(1, MAX_JOBS);
    let list = web
        .http
        .api
        .list_jobs(tonic::Request::new(v1::ListJobsRequest { limit }))
        .await?
        .into_inner();
    let jobs: Vec<Value> = list.jobs.iter().map(json::job).collect();
    Ok(Json(json!({ "jobs": jobs })).into_response())
}

/// `GET /api/jobs/{id}`: one job with its tasks.
pub(super) async fn job(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    authorize(&web, &headers)?;
    let job = web
        .http
        .api
        .get_job(tonic::Request::new(v1::GetJobRequest { job_id: id }))
        .await?
        .into_inner();
    Ok(Json(json::job(&job)).into_response())
}

/// `GET /api/jobs/{id}/events`: the job's `WatchJob` stream as Server-Sent Events
/// (`snapshot`, `task`, `job`; `failure` with a sentence when the stream breaks).
pub(super) async fn events(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    authorize(&web, &headers)?;
    let permit = web.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many pages are watching jobs: try again later",
        )
    })?;
    let stream = web
        .http
        .api
        .watch_job(tonic::Request::new(v1::WatchJobRequest { job_id: id }))
        .await?
        .into_inner();
    let events = stream.filter_map(move |item| {
        // The stream holds its place among the open ones until it ends.
        let _held = &permit;
        let event = match item {
            Ok(e) => json::event(&e)
                .map(|(name, data)| Event::default().event(name).data(data.to_string())),
            Err(status) => Some(
                Event::default()
                    .event("failure")
                    .data(json!({ "error": status.message() }).to_string()),
            ),
        };
        std::future::ready(event.map(Ok))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// `POST /api/jobs/{id}/cancel`.
pub(super) async fn cancel(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    authorize(&web, &headers)?;
    same_site(&headers)?;
    let job = web
        .http
        .api
        .cancel_job(tonic::Request::new(v1::CancelJobRequest { job_id: id }))
        .await?
        .into_inner();
    Ok(Json(json::job(&job)).into_response())
}

/// `POST /api/jobs/{id}/retry`.
pub(super) async fn retry(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    authorize(&web, &headers)?;
    same_site(&headers)?;
    let job = web
        .http
        .api
        .retry_job(tonic::Request::new(v1::RetryJobRequest { job_id: id }))
        .await?
        .into_inner();
    Ok(Json(json::job(&job)).into_response())
}

/// `POST /api/blobs` with an image as the body: stores it, answers `{sha256, size}`.
pub(super) async fn upload(State(web): State<Web>, headers: HeaderMap, body: Bytes) -> ApiResult {
    authorize(&web, &headers)?;
    same_site(&headers)?;
    if body.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the upload is empty",
        ));
    }
    let blob = web.http.api.blobs.put(&body).await?;
    Ok(Json(json!({ "sha256": blob.sha256, "size": blob.size })).into_response())
}

fn spec_of(form: JobIn) -> Result<v1::JobSpec, ApiError> {
    form.into_spec()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))
}

/// `POST /api/plan`: the planner's dry run of the form (what `stylefarm submit --dry-run`
/// shows): its tasks, memory and time.
pub(super) async fn plan(
    State(web): State<Web>,
    headers: HeaderMap,
    extensions: Extensions,
    Json(form): Json<JobIn>,
) -> ApiResult {
    authorize(&web, &headers)?;
    same_site(&headers)?;
    let spec = spec_of(form)?;
    let plan = web
        .http
        .api
        .plan_job(request(
            v1::SubmitJobRequest { spec: Some(spec) },
            &extensions,
        ))
        .await?
        .into_inner();
    Ok(Json(json::plan(&plan)).into_response())
}

/// `POST /api/jobs`: submits the form, answers `{id}`.
pub(super) async fn submit(
    State(web): State<Web>,
    headers: HeaderMap,
    extensions: Extensions,
    Json(form): Json<JobIn>,
) -> ApiResult {
    authorize(&web, &headers)?;
    same_site(&headers)?;
    let spec = spec_of(form)?;
    let id = web
        .http
        .api
        .submit_job(request(
            v1::SubmitJobRequest { spec: Some(spec) },
            &extensions,
        ))
        .await?
        .into_inner()
        .job_id;
    Ok((StatusCode::CREATED, Json(json!({ "id": id }))).into_response())
}

/// `?name=` of a download: the file name to save it as.
#[derive(Deserialize)]
pub(super) struct BlobQuery {
    name: Option<String>,
}

/// `GET /api/blobs/{sha256}[?name=out.png]`: a blob (a preview, a result), hash-checked, as
/// an image when it is one, as an attachment when named.
pub(super) async fn blob(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(sha): Path<String>,
    Query(q): Query<BlobQuery>,
) -> ApiResult {
    authorize(&web, &headers)?;
    let hash = BlobHash::parse(&sha, "sha256")?;
    let _slot = web.downloads.acquire().await.map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the coordinator is stopping",
        )
    })?;
    let bytes = web.http.api.blobs.read_all(&hash).await?;
    let kind = if bytes.starts_with(b"\x89PNG") {
        "image/png"
    } else if bytes.starts_with(&[0xff, 0xd8]) {
        "image/jpeg"
    } else {
        "application/octet-stream"
    };
    let mut response = ([(header::CONTENT_TYPE, kind)], bytes).into_response();
    let h = response.headers_mut();
    // Named by its hash: it never changes.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=31536000, immutable"),
    );
    if let Some(name) = q.name {
        let safe: String = name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            .take(100)
            .collect();
        let safe = if safe.is_empty() {
            "result".into()
        } else {
            safe
        };
        if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{safe}\"")) {
            h.insert(header::CONTENT_DISPOSITION, v);
        }
    }
    Ok(response)
}
