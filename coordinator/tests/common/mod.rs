//! Helpers for the gRPC tests: an in-process coordinator on 127.0.0.1:0, clients, blobs and
//! images.

#![allow(dead_code, unreachable_pub)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use stylefarm_coordinator::{serve_with_clock, Config, ManualClock};
use stylefarm_core::image_io::{encode_png, RgbImage};
use stylefarm_proto::v1::{
    self, admin_service_client::AdminServiceClient, blob_service_client::BlobServiceClient,
    job_service_client::JobServiceClient, worker_service_client::WorkerServiceClient,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

/// Long enough for anything that should happen at once; short enough to fail fast.
pub const PROMPTLY: Duration = Duration::from_secs(5);

/// A running coordinator.
pub struct Farm {
    pub url: String,
    pub dir: PathBuf,
    pub clock: Arc<ManualClock>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

/// The four clients on one channel.
#[derive(Clone)]
pub struct Clients {
    pub jobs: JobServiceClient<Channel>,
    pub blobs: BlobServiceClient<Channel>,
    pub workers: WorkerServiceClient<Channel>,
    pub admin: AdminServiceClient<Channel>,
    pub channel: Channel,
}

impl Farm {
    /// Starts a coordinator on `dir` with a manual clock.
    pub async fn start(dir: &Path) -> Self {
        Self::start_with(Config::new(dir)).await
    }

    /// Starts a coordinator with `config` and a manual clock.
    pub async fn start_with(config: Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let clock = Arc::new(ManualClock::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let dir = config.data_dir.clone();
        let server = tokio::spawn(serve_with_clock(listener, config, clock.clone(), async {
            let _ = stopped.await;
        }));
        Self {
            url,
            dir,
            clock,
            stop: Some(stop),
            server: Some(server),
        }
    }

    pub async fn clients(&self) -> Clients {
        clients_of(&self.url).await
    }

    /// Stops the coordinator gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(PROMPTLY, server)
                .await
                .expect("the coordinator stops promptly")
                .expect("no panic")
                .expect("the coordinator stops cleanly");
        }
    }
}

pub fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A small PNG with a gradient, `seed` making each different.
pub fn png(width: u32, height: u32, seed: u8) -> Vec<u8> {
    let mut raw = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height {
        for x in 0..width {
            raw.extend_from_slice(&[x as u8 ^ seed, y as u8, seed]);
        }
    }
    let img = RgbImage::from_raw(width, height, raw).unwrap();
    encode_png(&img).unwrap()
}

/// Write requests for `data` in chunks of `chunk` bytes, declaring `sha` and the size.
pub fn write_requests(data: &[u8], sha: &str, chunk: usize) -> Vec<v1::WriteBlobRequest> {
    let mut reqs: Vec<v1::WriteBlobRequest> = data
        .chunks(chunk)
        .map(|c| v1::WriteBlobRequest {
            data: c.to_vec(),
            ..Default::default()
        })
        .collect();
    if reqs.is_empty() {
        reqs.push(v1::WriteBlobRequest::default());
    }
    reqs[0].sha256 = sha.to_string();
    reqs[0].size = data.len() as u64;
    reqs
}

/// Uploads `data` in 1 MiB chunks.
pub async fn upload(c: &mut Clients, data: &[u8]) -> v1::BlobRef {
    let reqs = write_requests(data, &sha256(data), stylefarm_proto::BLOB_CHUNK_BYTES);
    c.blobs
        .write(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner()
        .blob
        .unwrap()
}

/// Reads a whole blob from `offset`, checking the chunk size.
pub async fn download(c: &mut Clients, sha: &str, offset: u64) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = c
        .blobs
        .read(v1::ReadBlobRequest {
            sha256: sha.to_string(),
            offset,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = stream.message().await? {
        assert!(chunk.data.len() <= stylefarm_proto::BLOB_CHUNK_BYTES);
        out.extend_from_slice(&chunk.data);
    }
    Ok(out)
}

/// A spec of one frame per content image with default settings (few iterations).
pub fn spec(content: Vec<v1::BlobRef>, styles: Vec<v1::BlobRef>) -> v1::JobSpec {
    v1::JobSpec {
        name: "test".into(),
        content,
        styles,
        settings: Some(v1::RenderSettings {
            image_size: Some(64),
            num_iterations: Some(5),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Uploads a content and a style image and returns a one-frame spec.
pub async fn simple_spec(c: &mut Clients) -> v1::JobSpec {
    let content = upload(c, &png(16, 12, 1)).await;
    let style = upload(c, &png(8, 8, 2)).await;
    spec(vec![content], vec![style])
}

pub async fn submit(c: &mut Clients, spec: v1::JobSpec) -> Result<String, tonic::Status> {
    Ok(c.jobs
        .submit_job(v1::SubmitJobRequest { spec: Some(spec) })
        .await?
        .into_inner()
        .job_id)
}

pub async fn get_job(c: &mut Clients, id: &str) -> v1::Job {
    c.jobs
        .get_job(v1::GetJobRequest { job_id: id.into() })
        .await
        .unwrap()
        .into_inner()
}

pub async fn register(c: &mut Clients, name: &str, memory_bytes: u64) -> String {
    c.workers
        .register_worker(v1::RegisterWorkerRequest {
            name: name.into(),
            capabilities: Some(v1::Capabilities {
                device: v1::Device::Cpu as i32,
                threads: 2,
                memory_bytes,
                models: vec!["vgg19-torch".into()],
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .worker_id
}

pub async fn lease(c: &mut Clients, worker: &str, wait_ms: u32) -> Option<v1::Lease> {
    c.workers
        .lease_task(v1::LeaseTaskRequest {
            worker_id: worker.into(),
            wait_ms,
        })
        .await
        .unwrap()
        .into_inner()
        .lease
}

pub async fn update(
    c: &mut Clients,
    lease: &str,
    iteration: u32,
) -> Result<v1::UpdateTaskResponse, tonic::Status> {
    Ok(c.workers
        .update_task(v1::UpdateTaskRequest {
            lease_id: lease.into(),
            progress: Some(v1::Progress {
                iteration,
                total_iterations: 5,
                losses: Some(v1::Losses {
                    total: 100.0 / f64::from(iteration + 1),
                    ..Default::default()
                }),
                preview: None,
            }),
        })
        .await?
        .into_inner())
}

/// Uploads `output` and completes the lease with it.
pub async fn complete(
    c: &mut Clients,
    lease: &str,
    output: &[u8],
) -> Result<v1::BlobRef, tonic::Status> {
    let blob = upload(c, output).await;
    c.workers
        .complete_task(v1::CompleteTaskRequest {
            lease_id: lease.into(),
            result: Some(blob.clone()),
            final_losses: Some(v1::Losses {
                total: 1.0,
                ..Default::default()
            }),
            seconds: 0.5,
        })
        .await?;
    Ok(blob)
}

pub fn job_state(job: &v1::Job) -> v1::JobState {
    v1::JobState::try_from(job.state).unwrap()
}

pub fn task_state(task: &v1::Task) -> v1::TaskState {
    v1::TaskState::try_from(task.state).unwrap()
}

impl Farm {
    /// Starts a coordinator with `config` and waits until it answers, or returns why it
    /// stopped instead.
    pub async fn try_start(config: Config) -> Result<Self, String> {
        let mut farm = Self::start_with(config).await;
        let url = farm.url.clone();
        let answers = async move {
            loop {
                if let Ok(channel) = Endpoint::from_shared(url.clone()).unwrap().connect().await {
                    let mut jobs = JobServiceClient::new(channel);
                    if jobs
                        .list_jobs(v1::ListJobsRequest { limit: 1 })
                        .await
                        .is_ok()
                    {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let Some(server) = farm.server.as_mut() else {
            return Err("no server".into());
        };
        let stopped = tokio::select! {
            () = answers => None,
            stopped = server => Some(stopped),
        };
        let Some(stopped) = stopped else {
            return Ok(farm);
        };
        farm.server = None;
        Err(match stopped {
            Ok(Ok(())) => "it stopped without an error".into(),
            Ok(Err(e)) => format!("{e:#}"),
            Err(e) => format!("it panicked: {e}"),
        })
    }
}

/// Completes `lease` with an uploaded `result`, as a worker would; the call's answer.
pub async fn complete_raw(
    c: &mut Clients,
    lease: &str,
    result: &v1::BlobRef,
) -> Result<(), tonic::Status> {
    c.workers
        .complete_task(v1::CompleteTaskRequest {
            lease_id: lease.into(),
            result: Some(result.clone()),
            final_losses: None,
            seconds: 0.1,
        })
        .await
        .map(drop)
}

/// The temporary blob files the store holds now.
pub fn temporary_blobs(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("blobs/tmp")).map_or(0, Iterator::count)
}

/// Whether the coordinator lacks the blob `sha`.
pub async fn missing(c: &mut Clients, sha: &str) -> bool {
    let answer = c
        .blobs
        .find_missing_blobs(v1::FindMissingBlobsRequest {
            sha256: vec![sha.to_string()],
        })
        .await;
    !answer.unwrap().into_inner().missing.is_empty()
}

/// `PRAGMA integrity_check` of the data directory's database.
pub fn integrity(data: &Path) -> String {
    let conn = rusqlite::Connection::open(data.join("stylefarm.db")).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

/// Clients on their own connection to `url`, which dropping them closes.
pub async fn clients_of(url: &str) -> Clients {
    let channel = Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    Clients {
        jobs: JobServiceClient::new(channel.clone()),
        blobs: BlobServiceClient::new(channel.clone()),
        workers: WorkerServiceClient::new(channel.clone()),
        admin: AdminServiceClient::new(channel.clone()),
        channel,
    }
}

/// A small tmpfs mounted on a fresh directory, unmounted when dropped.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None`, saying why, where mounting is not permitted (it needs root).
    pub fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Self { dir }),
            Ok(o) => {
                let why = String::from_utf8_lossy(&o.stderr);
                println!("skipped: cannot mount a tmpfs to fill ({})", why.trim());
                None
            }
            Err(e) => {
                println!("skipped: cannot run mount to make a disk to fill ({e})");
                None
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(self.dir.path()).status();
        if !unmounted.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// Writes `path` until the disk is full.
pub fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    for size in [chunk.len(), 512, 1] {
        loop {
            match file.write(&chunk[..size]) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
}
