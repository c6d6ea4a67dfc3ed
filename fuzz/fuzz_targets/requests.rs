//! Every request of every `stylefarm.v1` service, decoded from arbitrary bytes with prost and
//! sent to one in-process coordinator with the generated tonic clients and the farm token.
//!
//! The first byte picks the method ([`METHODS`]), the rest is that method's request message;
//! bytes that do not decode are skipped. Any status is an answer; a finding is a panic
//! anywhere in the process (libFuzzer aborts on it), a call that gets no answer within
//! [`CALL_TIMEOUT`], a transport error (the connection broke: a handler died) or a coordinator
//! that stopped.
//!
//! One coordinator serves every input, so its state (jobs, workers, leases, blobs) builds up
//! across a run as a real farm's does. Ids are random, so no input could name a job, worker,
//! lease or uploaded blob the coordinator made: an id or blob hash written `#N` is replaced by
//! the `N`-th (modulo) of the last few the coordinator handed out, which is how the seeds
//! under `fuzz/corpus/requests/` lease and complete tasks of jobs they submitted. A
//! `WriteBlobRequest` with the hash `#` gets the hash of its data (and its size, when 0).
//! Long polls are capped (`LeaseTask` waits at most 100 ms) and of a response stream only
//! what comes within [`STREAM_WAIT`] is read: a watch or a shard's stream may rightly stay
//! open and quiet.
//!
//! With `STYLEFARM_FUZZ_STATS=1` the target prints every 10000 inputs how many calls of each
//! method succeeded and how many got an error status, to see how deep a corpus reaches.
#![no_main]

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use sha2::{Digest, Sha256};
use stylefarm_core::image_io::{encode_png, random_image};
use stylefarm_proto::blob::Auth;
use stylefarm_proto::v1::{
    self, admin_service_client::AdminServiceClient, blob_service_client::BlobServiceClient,
    job_service_client::JobServiceClient, worker_service_client::WorkerServiceClient,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};

/// The farm token the coordinator is started with and every call carries.
const TOKEN: &str = "fuzz-token";
/// The longest any call may take to answer (a unary call's response, a stream's headers).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a response stream is read after its headers came.
const STREAM_WAIT: Duration = Duration::from_millis(200);
/// The longest `LeaseTask` is held open (the coordinator's `max_long_poll`).
const LONG_POLL: Duration = Duration::from_millis(100);
/// Ids and blob hashes remembered of each kind, for `#N`.
const KNOWN: usize = 16;

/// The methods, in the order the first byte of an input picks them (modulo their number).
const METHODS: [&str; 18] = [
    "JobService.SubmitJob",
    "JobService.PlanJob",
    "JobService.GetJob",
    "JobService.ListJobs",
    "JobService.WatchJob",
    "JobService.CancelJob",
    "JobService.RetryJob",
    "BlobService.FindMissingBlobs",
    "BlobService.Write",
    "BlobService.Read",
    "WorkerService.RegisterWorker",
    "WorkerService.LeaseTask",
    "WorkerService.UpdateTask",
    "WorkerService.CompleteTask",
    "WorkerService.FailTask",
    "WorkerService.Shard",
    "AdminService.ListWorkers",
    "AdminService.QueueStats",
];

type Transport = InterceptedService<Channel, Auth>;

/// Per method: calls answered with a response, and with an error status.
static ANSWERS: [[AtomicU64; 2]; METHODS.len()] =
    [const { [AtomicU64::new(0), AtomicU64::new(0)] }; METHODS.len()];
static INPUTS: AtomicU64 = AtomicU64::new(0);

fn count(method: &str, ok: bool) {
    if let Some(i) = METHODS.iter().position(|m| *m == method) {
        ANSWERS[i][usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }
}

/// With `STYLEFARM_FUZZ_STATS` set, every 10000 inputs: the answers so far, per method.
fn print_stats() {
    static ON: OnceLock<bool> = OnceLock::new();
    let n = INPUTS.fetch_add(1, Ordering::Relaxed) + 1;
    if !n.is_multiple_of(10_000)
        || !*ON.get_or_init(|| std::env::var_os("STYLEFARM_FUZZ_STATS").is_some())
    {
        return;
    }
    let mut line = format!("requests after {n} inputs (ok/error):");
    for (name, [ok, err]) in METHODS.iter().zip(&ANSWERS) {
        let short = name.rsplit('.').next().unwrap_or(name);
        let (ok, err) = (ok.load(Ordering::Relaxed), err.load(Ordering::Relaxed));
        line.push_str(&format!(" {short} {ok}/{err}"));
    }
    eprintln!("{line}");
}

/// Ids and blob hashes the coordinator handed out, newest last.
#[derive(Default)]
struct Known {
    jobs: Vec<String>,
    workers: Vec<String>,
    leases: Vec<String>,
    blobs: Vec<String>,
}

/// The coordinator under test, its runtime and a client of each service.
struct Farm {
    rt: tokio::runtime::Runtime,
    server: tokio::task::JoinHandle<Result<(), String>>,
    jobs: JobServiceClient<Transport>,
    blobs: BlobServiceClient<Transport>,
    workers: WorkerServiceClient<Transport>,
    admin: AdminServiceClient<Transport>,
    known: Mutex<Known>,
    /// The data directory; never dropped (the farm lives in a `static`).
    _dir: tempfile::TempDir,
}

fn remember(list: &mut Vec<String>, id: String) {
    if list.contains(&id) {
        return;
    }
    if list.len() == KNOWN {
        list.remove(0);
    }
    list.push(id);
}

/// `#N` to the `N`-th (modulo) of `list`; anything else, or `#N` with nothing known, as it is.
fn resolve(list: &[String], id: &mut String) {
    let Some(n) = id.strip_prefix('#') else {
        return;
    };
    if list.is_empty() {
        return;
    }
    let n = n.bytes().fold(0usize, |n, b| {
        n.wrapping_mul(10).wrapping_add(usize::from(b))
    });
    *id = list[n % list.len()].clone();
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A status the coordinator sent is an answer, whatever its code. One the client made up
/// because the connection failed carries the transport error as its source, or says the
/// server is unavailable: that is a finding.
fn check_status(method: &str, status: &Status) {
    let source = std::error::Error::source(status);
    assert!(
        source.is_none() && status.code() != Code::Unavailable,
        "{method}: no answer from the coordinator: {status:?} (source: {source:?})"
    );
}

/// The response of `call`, `None` for an error status; panics without an answer in time.
async fn answer<T>(
    method: &str,
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Option<T> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Err(_) => panic!("{method}: no answer within {CALL_TIMEOUT:?}"),
        Ok(Ok(response)) => {
            count(method, true);
            Some(response.into_inner())
        }
        Ok(Err(status)) => {
            check_status(method, &status);
            count(method, false);
            None
        }
    }
}

/// Reads what `stream` sends within [`STREAM_WAIT`] (at most 64 messages), then drops it.
async fn drain<T>(method: &str, mut stream: Streaming<T>) -> Vec<T> {
    let mut got = Vec::new();
    let until = tokio::time::Instant::now() + STREAM_WAIT;
    while got.len() < 64 {
        match tokio::time::timeout_at(until, stream.message()).await {
            Err(_) | Ok(Ok(None)) => break,
            Ok(Ok(Some(m))) => got.push(m),
            Ok(Err(status)) => {
                check_status(method, &status);
                break;
            }
        }
    }
    got
}

impl Farm {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory for the coordinator");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let mut config = stylefarm_coordinator::Config::new(dir.path().join("farm"));
        config.token = Some(TOKEN.to_string());
        config.max_long_poll = LONG_POLL;
        let (server, channel) = rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("a port on 127.0.0.1");
            let url = format!("http://{}", listener.local_addr().expect("its address"));
            let server = tokio::spawn(async move {
                stylefarm_coordinator::serve(listener, config, std::future::pending())
                    .await
                    .map_err(|e| format!("{e:#}"))
            });
            let channel = Endpoint::from_shared(url)
                .expect("a valid url")
                .tcp_nodelay(true)
                .connect()
                .await
                .expect("the coordinator accepts a connection");
            (server, channel)
        });
        let auth = Auth::new(Some(TOKEN)).expect("a token a header can carry");
        let transport = InterceptedService::new(channel, auth);
        let farm = Farm {
            rt,
            server,
            jobs: JobServiceClient::new(transport.clone()),
            blobs: BlobServiceClient::new(transport.clone()),
            workers: WorkerServiceClient::new(transport.clone()),
            admin: AdminServiceClient::new(transport),
            known: Mutex::new(Known::default()),
            _dir: dir,
        };
        // One small image is stored from the start (`#0` of the blobs), so that the seeds'
        // jobs pass the blob checks and reach the planner.
        let png = encode_png(&random_image(24, 16, 7)).expect("a PNG of a small image");
        let hash = sha256_hex(&png);
        let write = v1::WriteBlobRequest {
            sha256: hash.clone(),
            size: png.len() as u64,
            data: png,
        };
        farm.rt
            .block_on(farm.blobs.clone().write(tokio_stream::iter([write])))
            .expect("the seed image is stored");
        farm.known().blobs.push(hash);
        farm
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn resolve_blob(&self, blob: Option<&mut v1::BlobRef>) {
        if let Some(b) = blob {
            resolve(&self.known().blobs, &mut b.sha256);
        }
    }

    fn resolve_spec(&self, spec: Option<&mut v1::JobSpec>) {
        let Some(spec) = spec else {
            return;
        };
        for b in spec.content.iter_mut().chain(spec.styles.iter_mut()) {
            self.resolve_blob(Some(b));
        }
        self.resolve_blob(spec.init_image.as_mut());
    }

    fn resolve_job(&self, id: &mut String) {
        resolve(&self.known().jobs, id);
    }

    fn resolve_lease(&self, id: &mut String) {
        resolve(&self.known().leases, id);
    }

    /// Sends `body`, decoded as the request of method `method`, and checks that it is answered.
    async fn call(&self, method: usize, body: &[u8]) {
        let name = METHODS[method];
        match method {
            0 => {
                let Ok(mut req) = v1::SubmitJobRequest::decode(body) else {
                    return;
                };
                self.resolve_spec(req.spec.as_mut());
                if let Some(r) = answer(name, self.jobs.clone().submit_job(req)).await {
                    remember(&mut self.known().jobs, r.job_id);
                }
            }
            1 => {
                let Ok(mut req) = v1::SubmitJobRequest::decode(body) else {
                    return;
                };
                self.resolve_spec(req.spec.as_mut());
                answer(name, self.jobs.clone().plan_job(req)).await;
            }
            2 => {
                let Ok(mut req) = v1::GetJobRequest::decode(body) else {
                    return;
                };
                self.resolve_job(&mut req.job_id);
                answer(name, self.jobs.clone().get_job(req)).await;
            }
            3 => {
                let Ok(req) = v1::ListJobsRequest::decode(body) else {
                    return;
                };
                answer(name, self.jobs.clone().list_jobs(req)).await;
            }
            4 => {
                let Ok(mut req) = v1::WatchJobRequest::decode(body) else {
                    return;
                };
                self.resolve_job(&mut req.job_id);
                if let Some(events) = answer(name, self.jobs.clone().watch_job(req)).await {
                    drain(name, events).await;
                }
            }
            5 => {
                let Ok(mut req) = v1::CancelJobRequest::decode(body) else {
                    return;
                };
                self.resolve_job(&mut req.job_id);
                answer(name, self.jobs.clone().cancel_job(req)).await;
            }
            6 => {
                let Ok(mut req) = v1::RetryJobRequest::decode(body) else {
                    return;
                };
                self.resolve_job(&mut req.job_id);
                answer(name, self.jobs.clone().retry_job(req)).await;
            }
            7 => {
                let Ok(mut req) = v1::FindMissingBlobsRequest::decode(body) else {
                    return;
                };
                for h in &mut req.sha256 {
                    resolve(&self.known().blobs, h);
                }
                answer(name, self.blobs.clone().find_missing_blobs(req)).await;
            }
            8 => {
                let Ok(mut req) = v1::WriteBlobRequest::decode(body) else {
                    return;
                };
                if req.sha256 == "#" {
                    req.sha256 = sha256_hex(&req.data);
                    if req.size == 0 {
                        req.size = req.data.len() as u64;
                    }
                }
                let stream = tokio_stream::iter([req]);
                if let Some(r) = answer(name, self.blobs.clone().write(stream)).await {
                    if let Some(blob) = r.blob {
                        remember(&mut self.known().blobs, blob.sha256);
                    }
                }
            }
            9 => {
                let Ok(mut req) = v1::ReadBlobRequest::decode(body) else {
                    return;
                };
                resolve(&self.known().blobs, &mut req.sha256);
                if let Some(data) = answer(name, self.blobs.clone().read(req)).await {
                    drain(name, data).await;
                }
            }
            10 => {
                let Ok(req) = v1::RegisterWorkerRequest::decode(body) else {
                    return;
                };
                if let Some(r) = answer(name, self.workers.clone().register_worker(req)).await {
                    remember(&mut self.known().workers, r.worker_id);
                }
            }
            11 => {
                let Ok(mut req) = v1::LeaseTaskRequest::decode(body) else {
                    return;
                };
                resolve(&self.known().workers, &mut req.worker_id);
                req.wait_ms = req.wait_ms.min(LONG_POLL.as_millis() as u32);
                let leased = answer(name, self.workers.clone().lease_task(req)).await;
                if let Some(lease) = leased.and_then(|r| r.lease) {
                    remember(&mut self.known().leases, lease.lease_id);
                }
            }
            12 => {
                let Ok(mut req) = v1::UpdateTaskRequest::decode(body) else {
                    return;
                };
                self.resolve_lease(&mut req.lease_id);
                self.resolve_blob(req.progress.as_mut().and_then(|p| p.preview.as_mut()));
                answer(name, self.workers.clone().update_task(req)).await;
            }
            13 => {
                let Ok(mut req) = v1::CompleteTaskRequest::decode(body) else {
                    return;
                };
                self.resolve_lease(&mut req.lease_id);
                self.resolve_blob(req.result.as_mut());
                answer(name, self.workers.clone().complete_task(req)).await;
            }
            14 => {
                let Ok(mut req) = v1::FailTaskRequest::decode(body) else {
                    return;
                };
                self.resolve_lease(&mut req.lease_id);
                answer(name, self.workers.clone().fail_task(req)).await;
            }
            15 => {
                let Ok(mut reply) = v1::ShardReply::decode(body) else {
                    return;
                };
                if let Some(v1::shard_reply::Reply::Hello(hello)) = reply.reply.as_mut() {
                    self.resolve_lease(&mut hello.lease_id);
                }
                // One message, then the worker's side of the stream ends.
                let stream = tokio_stream::iter([reply]);
                if let Some(commands) = answer(name, self.workers.clone().shard(stream)).await {
                    drain(name, commands).await;
                }
            }
            16 => {
                let Ok(req) = v1::ListWorkersRequest::decode(body) else {
                    return;
                };
                answer(name, self.admin.clone().list_workers(req)).await;
            }
            17 => {
                let Ok(req) = v1::QueueStatsRequest::decode(body) else {
                    return;
                };
                answer(name, self.admin.clone().queue_stats(req)).await;
            }
            _ => unreachable!("the method is taken modulo METHODS.len()"),
        }
    }
}

fn farm() -> &'static Farm {
    static FARM: OnceLock<Farm> = OnceLock::new();
    FARM.get_or_init(Farm::start)
}

fuzz_target!(|data: &[u8]| {
    let Some((&method, body)) = data.split_first() else {
        return;
    };
    let farm = farm();
    farm.rt
        .block_on(farm.call(usize::from(method) % METHODS.len(), body));
    assert!(
        !farm.server.is_finished(),
        "the coordinator stopped while answering {}",
        METHODS[usize::from(method) % METHODS.len()]
    );
    print_stats();
});
