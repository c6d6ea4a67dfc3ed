//! The worker's gRPC loop against a small in-memory coordinator (WorkerService + BlobService):
//! blobs both ways past the 4 MiB message limit, progress with previews, cancel, a lost lease,
//! failures, shutdown with and without grace, a coordinator that is not up yet, the token.
//!
//! The real farm (coordinator + workers + client) is tested in the `tests/` crate.

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use image::{Rgb, RgbImage};
use sha2::{Digest, Sha256};
use stylefarm_core::image_io::{decode_image, encode_png, DecodeLimits};
use stylefarm_proto::v1::blob_service_server::{BlobService, BlobServiceServer};
use stylefarm_proto::v1::worker_service_server::{WorkerService, WorkerServiceServer};
use stylefarm_proto::v1::*;
use stylefarm_proto::BLOB_CHUNK_BYTES;
use stylefarm_worker::fake::FakeEngine;
use stylefarm_worker::{CandleEngine, Config, Engine};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

#[derive(Debug)]
enum Event {
    Update(UpdateTaskRequest),
    Complete(CompleteTaskRequest),
    Fail(FailTaskRequest),
}

#[derive(Default)]
struct State {
    blobs: HashMap<String, Vec<u8>>,
    reads: HashMap<String, u32>,
    leases: VecDeque<Lease>,
    register_failures: u32,
    cancel: HashSet<String>,
    lost: HashSet<String>,
    token: Option<String>,
}

struct Mock {
    state: Mutex<State>,
    events: mpsc::UnboundedSender<Event>,
}

impl Mock {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }
    fn event(&self, e: Event) {
        let _ = self.events.send(e);
    }
}

#[tonic::async_trait]
impl WorkerService for Mock {
    type ShardStream = Pin<Box<dyn Stream<Item = Result<ShardCommand, Status>> + Send>>;

    async fn shard(
        &self,
        _req: Request<Streaming<ShardReply>>,
    ) -> Result<Response<Self::ShardStream>, Status> {
        Err(Status::unimplemented("the mock has no lock-step tiles"))
    }

    async fn register_worker(
        &self,
        req: Request<RegisterWorkerRequest>,
    ) -> Result<Response<RegisterWorkerResponse>, Status> {
        let mut s = self.state();
        if let Some(t) = &s.token {
            let sent = req
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            if sent != Some(&format!("Bearer {t}")) {
                return Err(Status::unauthenticated("a farm token is required"));
            }
        }
        if s.register_failures > 0 {
            s.register_failures -= 1;
            return Err(Status::unavailable("starting up"));
        }
        let caps = req.into_inner().capabilities.unwrap();
        assert!(
            caps.device == Device::Cpu as i32 && caps.threads > 0,
            "{caps:?}"
        );
        assert!(
            caps.models == ["fake"] || caps.models == ["vgg16-torchvision"],
            "{caps:?}"
        );
        Ok(Response::new(RegisterWorkerResponse {
            worker_id: "worker-1".into(),
            heartbeat_interval_ms: 100,
        }))
    }

    async fn lease_task(
        &self,
        _: Request<LeaseTaskRequest>,
    ) -> Result<Response<LeaseTaskResponse>, Status> {
        let lease = self.state().leases.pop_front();
        Ok(Response::new(LeaseTaskResponse {
            lease,
            retry_after_ms: 20,
        }))
    }

    async fn update_task(
        &self,
        req: Request<UpdateTaskRequest>,
    ) -> Result<Response<UpdateTaskResponse>, Status> {
        let req = req.into_inner();
        let (cancel, lost) = {
            let s = self.state();
            (
                s.cancel.contains(&req.lease_id),
                s.lost.contains(&req.lease_id),
            )
        };
        self.event(Event::Update(req));
        if lost {
            return Err(Status::failed_precondition("the lease has lapsed"));
        }
        Ok(Response::new(UpdateTaskResponse {
            deadline_unix_ms: 0,
            cancel,
        }))
    }

    async fn complete_task(
        &self,
        req: Request<CompleteTaskRequest>,
    ) -> Result<Response<CompleteTaskResponse>, Status> {
        let req = req.into_inner();
        let result = req.result.clone().unwrap();
        assert!(
            self.state().blobs.contains_key(&result.sha256),
            "completed without its result blob"
        );
        self.event(Event::Complete(req));
        Ok(Response::new(CompleteTaskResponse {}))
    }

    async fn fail_task(
        &self,
        req: Request<FailTaskRequest>,
    ) -> Result<Response<FailTaskResponse>, Status> {
        self.event(Event::Fail(req.into_inner()));
        Ok(Response::new(FailTaskResponse {}))
    }
}

type ReadStream = Pin<Box<dyn Stream<Item = Result<ReadBlobResponse, Status>> + Send>>;

#[tonic::async_trait]
impl BlobService for Mock {
    async fn find_missing_blobs(
        &self,
        req: Request<FindMissingBlobsRequest>,
    ) -> Result<Response<FindMissingBlobsResponse>, Status> {
        let s = self.state();
        let missing = req
            .into_inner()
            .sha256
            .into_iter()
            .filter(|h| !s.blobs.contains_key(h))
            .collect();
        Ok(Response::new(FindMissingBlobsResponse { missing }))
    }

    async fn write(
        &self,
        req: Request<Streaming<WriteBlobRequest>>,
    ) -> Result<Response<WriteBlobResponse>, Status> {
        let mut stream = req.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty write"))?;
        let (sha256, size, mut data) = (first.sha256, first.size, first.data);
        while let Some(m) = stream.message().await? {
            assert!(m.data.len() <= BLOB_CHUNK_BYTES);
            data.extend_from_slice(&m.data);
        }
        assert_eq!(
            (data.len() as u64, hex::encode(Sha256::digest(&data))),
            (size, sha256.clone())
        );
        self.state().blobs.insert(sha256.clone(), data);
        Ok(Response::new(WriteBlobResponse {
            blob: Some(BlobRef { sha256, size }),
        }))
    }

    type ReadStream = ReadStream;

    async fn read(&self, req: Request<ReadBlobRequest>) -> Result<Response<ReadStream>, Status> {
        let req = req.into_inner();
        let mut s = self.state();
        *s.reads.entry(req.sha256.clone()).or_default() += 1;
        let data = s
            .blobs
            .get(&req.sha256)
            .ok_or_else(|| Status::not_found("no such blob"))?;
        let chunks: Vec<_> = data[req.offset as usize..]
            .chunks(BLOB_CHUNK_BYTES)
            .map(|c| Ok(ReadBlobResponse { data: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }
}

struct Farm {
    mock: Arc<Mock>,
    events: mpsc::UnboundedReceiver<Event>,
    url: String,
    _stop_server: oneshot::Sender<()>,
}

impl Farm {
    async fn start(state: State) -> Farm {
        let (tx, events) = mpsc::unbounded_channel();
        let mock = Arc::new(Mock {
            state: Mutex::new(state),
            events: tx,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tonic::transport::Server::builder()
            .add_service(WorkerServiceServer::from_arc(mock.clone()))
            .add_service(BlobServiceServer::from_arc(mock.clone()))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            );
        tokio::spawn(server);
        Farm {
            mock,
            events,
            url,
            _stop_server: stop,
        }
    }

    fn add_blob(&self, data: Vec<u8>) -> BlobRef {
        let blob = BlobRef {
            sha256: hex::encode(Sha256::digest(&data)),
            size: data.len() as u64,
        };
        self.mock.state().blobs.insert(blob.sha256.clone(), data);
        blob
    }

    fn add_lease(&self, id: &str, content: &BlobRef, style: &BlobRef, iterations: u32, size: u32) {
        let spec = TaskSpec {
            content: Some(content.clone()),
            styles: vec![style.clone()],
            settings: Some(RenderSettings {
                num_iterations: Some(iterations),
                image_size: Some(size),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.mock.state().leases.push_back(Lease {
            lease_id: id.into(),
            task_id: format!("task-{id}"),
            job_id: "job-1".into(),
            spec: Some(spec),
            deadline_unix_ms: 0,
        });
    }

    fn start_worker(
        &self,
        step_ms: u64,
        grace: Duration,
    ) -> (JoinHandle<anyhow::Result<()>>, oneshot::Sender<()>) {
        self.start_worker_with(step_ms, |c| c.grace = grace)
    }

    fn start_worker_with(
        &self,
        step_ms: u64,
        configure: impl FnOnce(&mut Config),
    ) -> (JoinHandle<anyhow::Result<()>>, oneshot::Sender<()>) {
        let engine = Arc::new(FakeEngine::new(Duration::from_millis(step_ms)));
        self.start_engine(engine, configure)
    }

    fn start_engine(
        &self,
        engine: Arc<dyn Engine>,
        configure: impl FnOnce(&mut Config),
    ) -> (JoinHandle<anyhow::Result<()>>, oneshot::Sender<()>) {
        let mut config = Config::new(self.url.clone());
        config.preview_every = 2;
        configure(&mut config);
        let (stop, stopped) = oneshot::channel::<()>();
        let run = stylefarm_worker::run(config, engine, async {
            let _ = stopped.await;
        });
        (tokio::spawn(run), stop)
    }

    /// The next event (a hang fails the test instead of blocking it).
    async fn next(&mut self) -> Event {
        tokio::time::timeout(Duration::from_secs(60), self.events.recv())
            .await
            .expect("no event from the worker within 60 s")
            .expect("the mock is gone")
    }

    /// Events up to the first Complete or Fail, which is returned last.
    async fn until_done(&mut self) -> Vec<Event> {
        let mut seen = Vec::new();
        loop {
            let e = self.next().await;
            let done = matches!(e, Event::Complete(_) | Event::Fail(_));
            seen.push(e);
            if done {
                return seen;
            }
        }
    }
}

fn noise(w: u32, h: u32) -> RgbImage {
    let mut x: u32 = 0x9e37_79b9;
    RgbImage::from_fn(w, h, |_, _| {
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        };
        Rgb([next(), next(), next()])
    })
}

fn png(img: &RgbImage) -> Vec<u8> {
    encode_png(img).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completes_a_large_task_with_progress_and_previews() {
    let mut farm = Farm::start(State {
        register_failures: 2, // not up yet: the worker keeps trying
        ..State::default()
    })
    .await;
    let content_img = noise(1400, 1200);
    let content = farm.add_blob(png(&content_img));
    assert!(content.size > 4 * 1024 * 1024, "{} bytes", content.size);
    let style = farm.add_blob(png(&noise(64, 64)));
    farm.add_lease("l1", &content, &style, 40, 1400);
    let (worker, stop) = farm.start_worker(20, Duration::from_secs(30));

    let events = farm.until_done().await;
    let Some(Event::Complete(done)) = events.last() else {
        panic!("{events:?}")
    };
    let result = done.result.clone().unwrap();
    let losses = done.final_losses.unwrap();
    assert_eq!(losses.total, FakeEngine::losses(40).total);
    let bytes = farm.mock.state().blobs[&result.sha256].clone();
    assert!(bytes.len() > 4 * 1024 * 1024);
    let mut expected = content_img;
    image::imageops::invert(&mut expected);
    let out = decode_image(&bytes, "result", &DecodeLimits::default()).unwrap();
    assert_eq!(out.as_raw(), expected.as_raw());

    let progress: Vec<&Progress> = events
        .iter()
        .filter_map(|e| match e {
            Event::Update(u) => u.progress.as_ref(),
            _ => None,
        })
        .collect();
    assert!(!progress.is_empty(), "{events:?}");
    assert!(progress
        .windows(2)
        .all(|w| w[0].iteration <= w[1].iteration));
    assert!(progress.iter().all(|p| p.total_iterations == 40));
    let preview = progress
        .iter()
        .rev()
        .find_map(|p| p.preview.clone())
        .expect("a preview");
    let jpeg = farm.mock.state().blobs[&preview.sha256].clone();
    let small = decode_image(&jpeg, "preview", &DecodeLimits::default()).unwrap();
    assert_eq!(small.dimensions(), (256, 219));

    let _ = stop.send(());
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_lost_leases_and_bad_inputs_never_stop_the_worker() {
    let mut farm = Farm::start(State::default()).await;
    let content = farm.add_blob(png(&noise(40, 30)));
    let style = farm.add_blob(png(&noise(16, 16)));
    let not_an_image = farm.add_blob(b"this is not an image".to_vec());
    let missing = BlobRef {
        sha256: "ab".repeat(32),
        size: 10,
    };
    farm.add_lease("cancelled", &content, &style, 500, 40);
    farm.add_lease("lost", &content, &style, 500, 40);
    farm.add_lease("corrupt", &not_an_image, &style, 3, 40);
    farm.add_lease("missing", &missing, &style, 3, 40);
    farm.add_lease("good", &content, &style, 3, 40);
    {
        let mut s = farm.mock.state();
        s.cancel.insert("cancelled".into());
        s.lost.insert("lost".into());
    }
    let (worker, stop) = farm.start_worker(20, Duration::from_secs(30));

    // The cancelled task is handed back, never completed.
    let events = farm.until_done().await;
    let Some(Event::Fail(f)) = events.last() else {
        panic!("{events:?}")
    };
    assert_eq!(
        (f.lease_id.as_str(), f.kind),
        ("cancelled", FailureKind::Interrupted as i32)
    );
    assert_eq!(f.message, "the task was cancelled");

    // The lost lease ends without a report; the next two tasks fail.
    let events = farm.until_done().await;
    let Some(Event::Fail(f)) = events.last() else {
        panic!("{events:?}")
    };
    assert_eq!(f.lease_id, "corrupt");
    assert_eq!(f.kind, FailureKind::Application as i32);
    assert!(
        f.message.starts_with("content image is not an image"),
        "{}",
        f.message
    );
    let updated: HashSet<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::Update(u) => Some(u.lease_id.as_str()),
            _ => None,
        })
        .collect();
    assert!(updated.contains("lost"), "{events:?}");

    let events = farm.until_done().await;
    let Some(Event::Fail(f)) = events.last() else {
        panic!("{events:?}")
    };
    assert_eq!(f.lease_id, "missing");
    assert!(
        f.message.starts_with("could not fetch the content image"),
        "{}",
        f.message
    );

    let events = farm.until_done().await;
    let Some(Event::Complete(c)) = events.last() else {
        panic!("{events:?}")
    };
    assert_eq!(c.lease_id, "good");
    // The style came from the coordinator once and from the cache after that.
    assert_eq!(farm.mock.state().reads[&style.sha256], 1);

    let _ = stop.send(());
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_interrupts_a_task_after_the_grace_period() {
    let mut farm = Farm::start(State::default()).await;
    let content = farm.add_blob(png(&noise(40, 30)));
    let style = farm.add_blob(png(&noise(16, 16)));
    farm.add_lease("long", &content, &style, 100_000, 40);
    let (worker, stop) = farm.start_worker(20, Duration::ZERO);
    // Running: progress has come.
    while !matches!(
        farm.next().await,
        Event::Update(UpdateTaskRequest {
            progress: Some(_),
            ..
        })
    ) {}
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), worker)
        .await
        .expect("the worker stops promptly")
        .unwrap()
        .unwrap();
    let events = farm.until_done().await;
    let Some(Event::Fail(f)) = events.last() else {
        panic!("{events:?}")
    };
    assert_eq!(
        (f.lease_id.as_str(), f.kind),
        ("long", FailureKind::Interrupted as i32)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_task_finish_within_the_grace_period() {
    let mut farm = Farm::start(State::default()).await;
    let content = farm.add_blob(png(&noise(40, 30)));
    let style = farm.add_blob(png(&noise(16, 16)));
    farm.add_lease("short", &content, &style, 30, 40);
    let (worker, stop) = farm.start_worker(20, Duration::from_secs(60));
    while !matches!(
        farm.next().await,
        Event::Update(UpdateTaskRequest {
            progress: Some(_),
            ..
        })
    ) {}
    let _ = stop.send(());
    worker.await.unwrap().unwrap();
    let events = farm.until_done().await;
    assert!(
        matches!(events.last(), Some(Event::Complete(c)) if c.lease_id == "short"),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_stops_the_worker_with_a_clear_error() {
    let mut farm = Farm::start(State {
        token: Some("s3cret".into()),
        ..State::default()
    })
    .await;
    let (worker, _stop) = farm.start_worker(1, Duration::ZERO);
    let err = worker.await.unwrap().unwrap_err().to_string();
    assert!(
        err.contains("refused this worker") && err.contains("farm token"),
        "{err}"
    );

    // With the token it works.
    let content = farm.add_blob(png(&noise(40, 30)));
    let style = farm.add_blob(png(&noise(16, 16)));
    farm.add_lease("l1", &content, &style, 2, 40);
    let (worker, stop) = farm.start_worker_with(1, |c| c.token = Some("s3cret".into()));
    let events = farm.until_done().await;
    assert!(
        matches!(events.last(), Some(Event::Complete(_))),
        "{events:?}"
    );
    let _ = stop.send(());
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_engine_gives_the_same_image_as_a_local_render() {
    use stylefarm_core::settings::RenderSettings as EngineSettings;
    use stylefarm_engine::render::{render, RenderInputs};

    let mut farm = Farm::start(State::default()).await;
    let content_img = noise(45, 37);
    let style_img = noise(30, 40);
    let content = farm.add_blob(png(&content_img));
    let style = farm.add_blob(png(&style_img));
    farm.add_lease("real", &content, &style, 6, 32);
    let weights = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../engine/tests/data/tiny_vgg16.safetensors");
    let engine = Arc::new(CandleEngine::load(&weights).unwrap());
    let (worker, stop) = farm.start_engine(engine, |_| {});
    let events = farm.until_done().await;
    let Some(Event::Complete(done)) = events.last() else {
        panic!("{events:?}")
    };
    let bytes = farm.mock.state().blobs[&done.result.clone().unwrap().sha256].clone();
    let _ = stop.send(());
    worker.await.unwrap().unwrap();

    let vgg = stylefarm_engine::vgg::Vgg::new(
        stylefarm_engine::weights::VggWeights::load(&weights, &candle_core::Device::Cpu).unwrap(),
        stylefarm_core::layers::Pooling::Max,
    )
    .unwrap();
    let inputs = RenderInputs {
        content: content_img,
        styles: vec![style_img],
        init_image: None,
    };
    let settings = EngineSettings {
        image_size: 32,
        num_iterations: 6,
        ..EngineSettings::default()
    };
    let local = render(&vgg, &inputs, &settings, &mut ()).unwrap();
    let farmed = decode_image(&bytes, "result", &DecodeLimits::default()).unwrap();
    assert_eq!(farmed.dimensions(), (32, 26));
    assert_eq!(farmed.as_raw(), local.image.as_raw());
    assert_eq!(done.final_losses.unwrap().total, local.losses.total);
}
