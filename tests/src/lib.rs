//! Helpers for stylefarm's end-to-end tests: a coordinator and workers in this process on
//! `127.0.0.1:0` (the same library code the binaries run), engines for tests (the fake, and
//! wrappers that record, rendezvous or hang), test images, and job helpers that wait on
//! `WatchJob` events with a time limit instead of sleeping.
//!
//! Each coordinator runs on its own tokio runtime, so that [`Coordinator::kill`] can stop it
//! the way a crash would: every task and connection of it is dropped at once, with no
//! graceful shutdown, and the database is left as the last acknowledged write made it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use image::{Rgb, RgbImage};
use stylefarm_client::farm::FarmClient;
use stylefarm_client::progress::{follow, Display, DisplayOptions};
use stylefarm_convert::settings_to_proto;
use stylefarm_coordinator::{Clock, Config, SystemClock};
use stylefarm_core::image_io::{decode_image, encode_png, DecodeLimits};
use stylefarm_core::settings::{Losses, RenderSettings};
use stylefarm_core::CoreError;
use stylefarm_engine::render::{Observer, RenderInputs};
use stylefarm_proto::v1::{self, BlobRef, JobEvent, JobSpec};
use stylefarm_worker::fake::FakeEngine;
use stylefarm_worker::{Engine, StatisticsInput, TaskInput, TaskOutput};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// The longest any test waits for something that should happen.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// `fut`, or an error after [`TIMEOUT`] naming what was awaited.
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> Result<T> {
    tokio::time::timeout(TIMEOUT, fut)
        .await
        .map_err(|_| anyhow::anyhow!("timed out after {TIMEOUT:?} waiting for {what}"))
}

// ---------------------------------------------------------------------------------------------
// Servers

/// A coordinator on its own runtime.
pub struct Coordinator {
    addr: SocketAddr,
    url: String,
    data_dir: PathBuf,
    runtime: Option<tokio::runtime::Runtime>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<()>>>,
}

impl Coordinator {
    /// A coordinator with the default configuration and the system clock, keeping its data
    /// in `data_dir`.
    pub async fn start(data_dir: &Path) -> Result<Self> {
        Self::start_with(Config::new(data_dir), Arc::new(SystemClock), None).await
    }

    /// A coordinator with `config` and `clock`, on `addr` (to restart one where its workers
    /// expect it) or on a free port.
    pub async fn start_with(
        config: Config,
        clock: Arc<dyn Clock>,
        addr: Option<SocketAddr>,
    ) -> Result<Self> {
        let listener = bind(addr).await?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("coordinator")
            .enable_all()
            .build()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let data_dir = config.data_dir.clone();
        let handle = runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            stylefarm_coordinator::serve_with_clock(listener, config, clock, async {
                let _ = stopped.await;
            })
            .await
        });
        Ok(Self {
            addr,
            url: format!("http://{addr}"),
            data_dir,
            runtime: Some(runtime),
            stop: Some(stop),
            handle: Some(handle),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where its database and blobs are.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A client of it.
    pub async fn client(&self) -> Result<FarmClient> {
        Ok(FarmClient::connect(&self.url, None).await?)
    }

    /// Stops it gracefully and returns what `serve` returned.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let served = match self.handle.take() {
            Some(h) => within("the coordinator to stop", h).await??,
            None => Ok(()),
        };
        self.drop_runtime().await;
        served
    }

    /// Stops it as a crash would: its runtime is dropped with every task and connection on
    /// it, without a graceful shutdown. Returns once the runtime's threads are gone.
    pub async fn kill(mut self) {
        self.stop.take();
        self.handle.take();
        self.drop_runtime().await;
    }

    async fn drop_runtime(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Blocking: off the caller's runtime.
            let _ = tokio::task::spawn_blocking(move || rt.shutdown_timeout(TIMEOUT)).await;
        }
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A listener on `addr`, or on a free port of 127.0.0.1. An address that a killed
/// coordinator just held may take a moment to be free again.
async fn bind(addr: Option<SocketAddr>) -> Result<std::net::TcpListener> {
    let Some(addr) = addr else {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.set_nonblocking(true)?;
        return Ok(l);
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match std::net::TcpListener::bind(addr) {
            Ok(l) => {
                l.set_nonblocking(true)?;
                return Ok(l);
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("cannot listen on {addr} again")),
        }
    }
}

/// A worker on the caller's runtime.
pub struct Worker {
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<()>>,
}

impl Worker {
    /// Starts a worker named `name` on `engine`, for the coordinator at `url`.
    pub fn start(url: &str, name: &str, engine: Arc<dyn Engine>) -> Self {
        let mut config = stylefarm_worker::Config::new(url);
        config.name = name.to_string();
        config.grace = Duration::from_secs(5);
        Self::start_with(config, engine)
    }

    /// Starts a worker with `config`.
    pub fn start_with(config: stylefarm_worker::Config, engine: Arc<dyn Engine>) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(stylefarm_worker::run(config, engine, async {
            let _ = stopped.await;
        }));
        Self {
            stop: Some(stop),
            handle,
        }
    }

    /// Stops it gracefully.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        within("the worker to stop", &mut self.handle).await??
    }

    /// Stops it as a crash would: its future is dropped where it stands, nothing is reported.
    pub fn kill(self) {
        self.handle.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// Engines

/// The fake engine with `step` per iteration.
pub fn fake(step: Duration) -> Arc<dyn Engine> {
    Arc::new(FakeEngine::new(step))
}

/// The tiny VGG16 with made-up weights the engine's tests use.
pub fn tiny_vgg16() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/data/tiny_vgg16.safetensors")
}

/// How a run of a [`Probe`]d engine ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// It returned an image.
    Finished,
    /// It stopped on the cancel flag.
    Cancelled,
    /// It failed otherwise.
    Failed(String),
}

/// What a [`Probe`] saw.
#[derive(Debug, Clone, Default)]
pub struct ProbeLog {
    /// Runs begun.
    pub started: u32,
    /// Every iteration reported, with when the engine reported it.
    pub iterations: Vec<(u32, Instant)>,
    /// Runs ended, with when.
    pub ended: Vec<(Instant, RunEnd)>,
}

/// An engine wrapper that records when runs start and end and when each iteration is
/// reported, for tests that time the farm against the engine.
pub struct Probe {
    inner: Arc<dyn Engine>,
    log: watch::Sender<ProbeLog>,
}

impl Probe {
    /// `inner`, recorded; the receiver sees every change.
    pub fn wrap(inner: Arc<dyn Engine>) -> (Arc<Self>, watch::Receiver<ProbeLog>) {
        let (log, rx) = watch::channel(ProbeLog::default());
        (Arc::new(Self { inner, log }), rx)
    }
}

struct ProbeObserver<'a> {
    inner: &'a mut dyn Observer,
    log: &'a watch::Sender<ProbeLog>,
}

impl Observer for ProbeObserver<'_> {
    fn iteration(
        &mut self,
        iteration: u32,
        total: u32,
        losses: &Losses,
    ) -> stylefarm_engine::Result<()> {
        let at = Instant::now();
        self.log.send_modify(|l| l.iterations.push((iteration, at)));
        self.inner.iteration(iteration, total, losses)
    }

    fn snapshot(&mut self, iteration: u32, image: &RgbImage) -> stylefarm_engine::Result<()> {
        self.inner.snapshot(iteration, image)
    }

    fn wants_snapshot(&mut self, iteration: u32) -> bool {
        self.inner.wants_snapshot(iteration)
    }

    fn cancel_flag(&self) -> Option<Arc<std::sync::atomic::AtomicBool>> {
        self.inner.cancel_flag()
    }
}

impl Engine for Probe {
    fn models(&self) -> Vec<String> {
        self.inner.models()
    }

    fn run(
        &self,
        task: &TaskInput,
        observer: &mut dyn Observer,
    ) -> stylefarm_engine::Result<TaskOutput> {
        self.log.send_modify(|l| l.started += 1);
        let out = self.inner.run(
            task,
            &mut ProbeObserver {
                inner: observer,
                log: &self.log,
            },
        );
        let end = match &out {
            Ok(_) => RunEnd::Finished,
            Err(e) if e.is_cancelled() => RunEnd::Cancelled,
            Err(e) => RunEnd::Failed(e.to_string()),
        };
        let at = Instant::now();
        self.log.send_modify(|l| l.ended.push((at, end)));
        out
    }

    fn statistics(&self, input: &StatisticsInput) -> stylefarm_engine::Result<Vec<u8>> {
        self.inner.statistics(input)
    }
}

/// An engine wrapper whose first `n` runs wait for each other before they start: since a
/// worker runs one task at a time, getting past it proves `n` workers ran tasks at once.
pub struct Rendezvous {
    inner: Arc<dyn Engine>,
    n: u32,
    arrived: Mutex<u32>,
    all_here: Condvar,
}

impl Rendezvous {
    /// `inner`, whose first `n` runs meet.
    pub fn wrap(inner: Arc<dyn Engine>, n: u32) -> Arc<Self> {
        Arc::new(Self {
            inner,
            n,
            arrived: Mutex::new(0),
            all_here: Condvar::new(),
        })
    }
}

impl Engine for Rendezvous {
    fn models(&self) -> Vec<String> {
        self.inner.models()
    }

    fn run(
        &self,
        task: &TaskInput,
        observer: &mut dyn Observer,
    ) -> stylefarm_engine::Result<TaskOutput> {
        let mut arrived = self.arrived.lock().unwrap_or_else(PoisonError::into_inner);
        *arrived += 1;
        if *arrived <= self.n {
            self.all_here.notify_all();
            let (arrived, wait) = self
                .all_here
                .wait_timeout_while(arrived, TIMEOUT, |a| *a < self.n)
                .unwrap_or_else(PoisonError::into_inner);
            if wait.timed_out() {
                return Err(CoreError::InvalidOption {
                    option: "rendezvous",
                    reason: format!("only {} of {} runs ever started together", *arrived, self.n),
                }
                .into());
            }
        } else {
            drop(arrived);
        }
        self.inner.run(task, observer)
    }

    fn statistics(&self, input: &StatisticsInput) -> stylefarm_engine::Result<Vec<u8>> {
        self.inner.statistics(input)
    }
}

/// An engine that reports its first iteration and then hangs until it is cancelled (or for
/// [`TIMEOUT`]): a worker stuck mid-task.
pub struct Hang;

impl Engine for Hang {
    fn models(&self) -> Vec<String> {
        vec!["fake".to_string()]
    }

    fn run(
        &self,
        task: &TaskInput,
        observer: &mut dyn Observer,
    ) -> stylefarm_engine::Result<TaskOutput> {
        observer.iteration(1, task.settings.num_iterations, &FakeEngine::losses(1))?;
        let cancel = observer.cancel_flag();
        let until = Instant::now() + TIMEOUT;
        while Instant::now() < until {
            if cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Err(CoreError::Cancelled.into())
    }

    /// Only renders hang.
    fn statistics(&self, input: &StatisticsInput) -> stylefarm_engine::Result<Vec<u8>> {
        FakeEngine::new(Duration::ZERO).statistics(input)
    }
}

// ---------------------------------------------------------------------------------------------
// Images

/// A deterministic colourful test image (`k` varies it).
pub fn pattern(w: u32, h: u32, k: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            ((x * 7 + y * k) % 256) as u8,
            ((x * y + k * 13) % 256) as u8,
            (((x / 3 + y / 5) * 40 * k) % 256) as u8,
        ])
    })
}

/// Pseudo-random pixels (they do not compress: a big PNG).
pub fn noise(w: u32, h: u32, seed: u64) -> RgbImage {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    RgbImage::from_fn(w, h, |_, _| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let b = (state >> 33).to_le_bytes();
        Rgb([b[0], b[1], b[2]])
    })
}

/// Pseudo-random bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// The PNG file of `img`.
pub fn png(img: &RgbImage) -> Vec<u8> {
    // Encoding an in-memory RGB image cannot fail.
    encode_png(img).unwrap_or_default()
}

/// The pixels of a PNG (or other image) file.
pub fn decode(bytes: &[u8]) -> Result<RgbImage> {
    Ok(decode_image(bytes, "test image", &DecodeLimits::default())?)
}

/// Settings for quick renders: `image_size`, `iterations`, a strong style weight.
pub fn settings(image_size: u32, iterations: u32) -> RenderSettings {
    RenderSettings {
        image_size,
        num_iterations: iterations,
        style_weight: 1e3,
        ..RenderSettings::default()
    }
}

/// The PNG the fake engine (and so the farm with fake workers) makes of `content`.
pub fn fake_result(content: &RgbImage, settings: &RenderSettings) -> Vec<u8> {
    let task = TaskInput {
        inputs: RenderInputs {
            content: content.clone(),
            styles: vec![],
            init_image: None,
        },
        settings: settings.clone(),
        style_ids: vec![],
    };
    png(&FakeEngine::expected_output(&task))
}

// ---------------------------------------------------------------------------------------------
// Jobs

/// A job of one task per `content` blob, styled by `styles`.
pub fn job_spec(content: Vec<BlobRef>, styles: Vec<BlobRef>, settings: &RenderSettings) -> JobSpec {
    JobSpec {
        name: "test".to_string(),
        content,
        styles,
        settings: Some(settings_to_proto(settings)),
        ..JobSpec::default()
    }
}

/// Uploads the images and submits a job of one frame per content image; returns its id.
pub async fn submit(
    client: &FarmClient,
    content: &[&RgbImage],
    styles: &[&RgbImage],
    settings: &RenderSettings,
) -> Result<String> {
    let content: Vec<Vec<u8>> = content.iter().map(|i| png(i)).collect();
    let styles: Vec<Vec<u8>> = styles.iter().map(|i| png(i)).collect();
    let content = client.upload_all(&slices(&content)).await?;
    let styles = client.upload_all(&slices(&styles)).await?;
    Ok(client.submit(job_spec(content, styles, settings)).await?)
}

fn slices(blobs: &[Vec<u8>]) -> Vec<&[u8]> {
    blobs.iter().map(Vec::as_slice).collect()
}

/// Follows the job over `WatchJob` (the client's own code) until it ends; the job with its
/// tasks.
pub async fn await_job(client: &FarmClient, job_id: &str) -> Result<v1::Job> {
    let mut quiet = Display::new(DisplayOptions {
        bars: false,
        print_iter: 0,
        task_states: false,
    });
    Ok(within(
        &format!("job {job_id} to end"),
        follow(client, job_id, &mut quiet),
    )
    .await??)
}

/// Reads a job's events until one satisfies `wanted`, which it returns.
pub async fn next_event(
    events: &mut tonic::Streaming<JobEvent>,
    what: &str,
    mut wanted: impl FnMut(&JobEvent) -> bool,
) -> Result<JobEvent> {
    within(what, async {
        loop {
            match events.message().await? {
                Some(e) if wanted(&e) => return Ok(e),
                Some(_) => {}
                None => bail!("the watch ended before {what}"),
            }
        }
    })
    .await?
}

/// The task of an event, if it is a task event.
pub fn event_task(event: &JobEvent) -> Option<&v1::Task> {
    match event.event.as_ref()? {
        v1::job_event::Event::Task(t) => Some(t),
        v1::job_event::Event::Snapshot(_) | v1::job_event::Event::Job(_) => None,
    }
}

/// Whether a task is in `state`.
pub fn is(task: &v1::Task, state: v1::TaskState) -> bool {
    task.state == state as i32
}

/// Waits until the probe's log satisfies `wanted`; returns the log then.
pub async fn probe_until(
    log: &mut watch::Receiver<ProbeLog>,
    what: &str,
    wanted: impl FnMut(&ProbeLog) -> bool,
) -> Result<ProbeLog> {
    let seen = within(what, log.wait_for(wanted)).await??;
    Ok(seen.clone())
}

// ---------------------------------------------------------------------------------------------
// Shards

/// A lock-step shard that hangs with its stream open: a worker that registers as a real one
/// would, leases a shard task when asked to, opens `WorkerService.Shard` with the hello of
/// `engine`'s network, then reads every command the driver sends and never answers. When the
/// coordinator ends the stream, it gives its task back (`FailTask`, interrupted) as a worker
/// does whose stream was cut.
pub struct HungShard {
    client: v1::worker_service_client::WorkerServiceClient<tonic::transport::Channel>,
    worker_id: String,
    hello: v1::ShardHello,
}

/// What a [`HungShard`] saw of its stream.
#[derive(Debug, Clone, Copy)]
pub struct HungStream {
    /// When the first command came (the driver counted on it from then).
    pub first_command: Instant,
    /// When the coordinator ended the stream.
    pub ended: Instant,
}

impl HungShard {
    /// Registers at `url` with the capabilities a worker of `engine` reports; its hello
    /// names the network `engine` evaluates tiles on for `settings`.
    pub async fn register(
        url: &str,
        engine: &dyn Engine,
        settings: &RenderSettings,
    ) -> Result<Self> {
        let objective = engine.tile_objective(settings, &RgbImage::new(64, 64))?;
        let config = stylefarm_worker::Config::new(url);
        let mut client =
            v1::worker_service_client::WorkerServiceClient::connect(url.to_string()).await?;
        let registered = client
            .register_worker(v1::RegisterWorkerRequest {
                name: "hung".to_string(),
                capabilities: Some(v1::Capabilities {
                    device: v1::Device::Cpu as i32,
                    threads: u32::try_from(config.threads).unwrap_or(u32::MAX),
                    memory_bytes: config.memory_bytes,
                    models: engine.models(),
                    ..Default::default()
                }),
            })
            .await?
            .into_inner();
        let hello = v1::ShardHello {
            lease_id: String::new(),
            preprocess: stylefarm_convert::preprocess_to_proto(objective.preprocess()).into(),
            channels: objective
                .style_channels()
                .iter()
                .map(|&c| u32::try_from(c).unwrap_or(u32::MAX))
                .collect(),
        };
        Ok(Self {
            client,
            worker_id: registered.worker_id,
            hello,
        })
    }

    /// Leases a shard task (within [`TIMEOUT`]), opens its stream and hangs on it until the
    /// coordinator ends it; then gives the task back.
    pub async fn hang(&mut self) -> Result<HungStream> {
        let lease = within("a shard task to lease", async {
            loop {
                let answer = self
                    .client
                    .lease_task(v1::LeaseTaskRequest {
                        worker_id: self.worker_id.clone(),
                        wait_ms: 1000,
                    })
                    .await?
                    .into_inner();
                match answer.lease {
                    Some(l)
                        if matches!(
                            l.spec.as_ref().and_then(|s| s.part.as_ref()),
                            Some(v1::task_spec::Part::Shard(_))
                        ) =>
                    {
                        return Ok::<_, anyhow::Error>(l)
                    }
                    Some(l) => bail!("the hung shard leased a task that is no shard: {l:?}"),
                    None => {}
                }
            }
        })
        .await??;
        let (replies, outbound) = tokio::sync::mpsc::channel(1);
        replies
            .send(v1::ShardReply {
                reply: Some(v1::shard_reply::Reply::Hello(v1::ShardHello {
                    lease_id: lease.lease_id.clone(),
                    ..self.hello.clone()
                })),
            })
            .await?;
        let outbound = tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(outbound);
        let mut commands = self.client.shard(outbound).await?.into_inner();
        let mut first_command = None;
        let ended = within("the coordinator to drop the hung shard", async {
            loop {
                match commands.message().await {
                    Ok(Some(_)) => {
                        first_command.get_or_insert_with(Instant::now);
                    }
                    Ok(None) | Err(_) => return Instant::now(),
                }
            }
        })
        .await?;
        // Open until here: the stream hung, it did not close.
        drop(replies);
        self.client
            .fail_task(v1::FailTaskRequest {
                lease_id: lease.lease_id,
                kind: v1::FailureKind::Interrupted as i32,
                message: "the hung shard's stream was ended".to_string(),
            })
            .await?;
        Ok(HungStream {
            first_command: first_command
                .context("the driver never sent the hung shard a command")?,
            ended,
        })
    }
}
