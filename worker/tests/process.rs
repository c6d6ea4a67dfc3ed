//! The `stylefarm-worker` binary as a container runs it: settings from the environment, JSON
//! log lines on stdout, `--health-check` against its HTTP port, a drain on SIGTERM that hands
//! the running task back, and one line (no panic) when it has no weights.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use stylefarm_core::image_io::encode_png;
use stylefarm_proto::v1::blob_service_client::BlobServiceClient;
use stylefarm_proto::v1::job_service_client::JobServiceClient;
use stylefarm_proto::v1::*;
use tokio::sync::oneshot;

fn tiny_vgg16() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/data/tiny_vgg16.safetensors")
}

/// A worker command with none of the caller's `STYLEFARM_` settings.
fn worker() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stylefarm-worker"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("STYLEFARM_") {
            cmd.env_remove(key);
        }
    }
    cmd.env_remove("RUST_LOG");
    cmd
}

/// A free port on loopback (bound, then released).
fn free_address() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

#[test]
fn a_worker_without_weights_says_so_in_one_line() {
    let empty = tempfile::tempdir().unwrap();
    let missing = empty.path().join("vgg.safetensors");
    let cases: [(&str, Vec<(&str, &Path)>, Vec<&str>); 3] = [
        (
            "a missing --weights file",
            vec![],
            vec!["--weights", missing.to_str().unwrap()],
        ),
        (
            "a missing STYLEFARM_WEIGHTS file",
            vec![("STYLEFARM_WEIGHTS", &missing)],
            vec![],
        ),
        (
            "an empty cache",
            vec![("STYLEFARM_CACHE", empty.path())],
            vec![],
        ),
    ];
    for (what, env, args) in cases {
        let out = worker()
            .args(["--coordinator", "http://127.0.0.1:9"])
            .args(args)
            .envs(env)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{what}: one line: {stderr}");
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
        assert!(stderr.contains("weights"), "{what}: {stderr}");
    }
}

async fn put(blobs: &mut BlobServiceClient<tonic::transport::Channel>, data: Vec<u8>) -> BlobRef {
    let sha256 = hex::encode(Sha256::digest(&data));
    let size = data.len() as u64;
    let msg = WriteBlobRequest {
        sha256: sha256.clone(),
        size,
        data,
    };
    blobs.write(tokio_stream::iter([msg])).await.unwrap();
    BlobRef { sha256, size }
}

/// The job's only task, within 30 s of `done` holding for it.
async fn task_when(
    jobs: &mut JobServiceClient<tonic::transport::Channel>,
    job_id: &str,
    done: impl Fn(&Task) -> bool,
) -> Task {
    let start = Instant::now();
    loop {
        let job = jobs
            .get_job(GetJobRequest {
                job_id: job_id.into(),
            })
            .await
            .unwrap()
            .into_inner();
        if let Some(t) = job.tasks.first().filter(|t| done(t)) {
            return t.clone();
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{job:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_worker_and_hands_its_task_back() {
    let data_dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut config = stylefarm_coordinator::Config::new(data_dir.path());
    config.heartbeat_interval = Duration::from_millis(100);
    let (stop, stopped) = oneshot::channel::<()>();
    let coordinator = tokio::spawn(stylefarm_coordinator::serve(listener, config, async {
        let _ = stopped.await;
    }));

    // Every setting from the environment, as in a container.
    let http = free_address();
    let cache = tempfile::tempdir().unwrap();
    let mut child = worker()
        .env("STYLEFARM_COORDINATOR", &url)
        .env("STYLEFARM_WEIGHTS", tiny_vgg16())
        .env("STYLEFARM_THREADS", "1")
        .env("STYLEFARM_WORKER_NAME", "drained")
        .env("STYLEFARM_WORKER_CACHE_DIR", cache.path())
        .env("STYLEFARM_GRACE_SECONDS", "0.5")
        .env("STYLEFARM_HTTP_LISTEN", &http)
        .env("STYLEFARM_LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let mut jobs = JobServiceClient::connect(url.clone()).await.unwrap();
    let mut blobs = BlobServiceClient::connect(url).await.unwrap();
    let content = put(
        &mut blobs,
        encode_png(&image::RgbImage::new(32, 24)).unwrap(),
    )
    .await;
    let style = put(
        &mut blobs,
        encode_png(&image::RgbImage::new(16, 16)).unwrap(),
    )
    .await;
    let request = SubmitJobRequest {
        spec: Some(JobSpec {
            content: vec![content],
            styles: vec![style],
            settings: Some(RenderSettings {
                image_size: Some(32),
                num_iterations: Some(100_000),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let job_id = jobs.submit_job(request).await.unwrap().into_inner().job_id;
    let running = task_when(&mut jobs, &job_id, |t| {
        t.state == TaskState::Running as i32 && t.progress.as_ref().is_some_and(|p| p.iteration > 0)
    })
    .await;
    assert_eq!(running.attempts, 1);

    let check = |http: &str| {
        worker()
            .args(["--health-check", "--http-listen", http])
            .output()
            .unwrap()
    };
    let healthy = tokio::task::block_in_place(|| check(&http));
    assert!(healthy.status.success(), "{healthy:?}");

    let pid = child.id().to_string();
    let termed = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::task::block_in_place(|| loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            termed.elapsed() < Duration::from_secs(20),
            "the worker did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    });
    let drained = termed.elapsed();
    assert!(status.success(), "{status:?}");
    eprintln!("worker drained {drained:?} after SIGTERM (grace 0.5 s)");
    assert!(drained < Duration::from_secs(10), "{drained:?}");

    // Handed back, the attempt not counted.
    let back = task_when(&mut jobs, &job_id, |t| t.state == TaskState::Queued as i32).await;
    assert_eq!(back.attempts, 0, "{back:?}");
    let down = tokio::task::block_in_place(|| check(&http));
    assert_eq!(down.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&down.stderr).lines().count(), 1);

    // JSON lines on stdout, nothing on stderr.
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.lines().count() >= 3, "{stdout}");
    for line in stdout.lines() {
        assert!(
            line.starts_with('{') && line.ends_with('}') && line.contains("\"level\":"),
            "not a JSON log line: {line}"
        );
    }
    assert!(stdout.contains("SIGTERM"), "{stdout}");

    let _ = stop.send(());
    coordinator.await.unwrap().unwrap();
}
