//! One worker (with the fake engine) on a real coordinator, both in-process: a job submitted
//! over gRPC is rendered and its result read back; a cancelled job stops the worker's render,
//! so the next job runs straight away.

use std::sync::Arc;
use std::time::Duration;

use image::{Rgb, RgbImage};
use sha2::{Digest, Sha256};
use stylefarm_core::image_io::{decode_image, encode_png, DecodeLimits};
use stylefarm_proto::v1::blob_service_client::BlobServiceClient;
use stylefarm_proto::v1::job_event::Event;
use stylefarm_proto::v1::job_service_client::JobServiceClient;
use stylefarm_proto::v1::*;
use stylefarm_worker::fake::FakeEngine;
use tokio::sync::oneshot;
use tonic::transport::Channel;

async fn put(blobs: &mut BlobServiceClient<Channel>, data: Vec<u8>) -> BlobRef {
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

async fn get(blobs: &mut BlobServiceClient<Channel>, blob: &BlobRef) -> Vec<u8> {
    let mut stream = blobs
        .read(ReadBlobRequest {
            sha256: blob.sha256.clone(),
            offset: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut data = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        data.extend_from_slice(&m.data);
    }
    data
}

fn job(content: &BlobRef, style: &BlobRef, iterations: u32) -> SubmitJobRequest {
    SubmitJobRequest {
        spec: Some(JobSpec {
            content: vec![content.clone()],
            styles: vec![style.clone()],
            settings: Some(RenderSettings {
                image_size: Some(40),
                num_iterations: Some(iterations),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// Watches `job_id` until `done` holds for an event, within 30 s.
async fn watch_until(
    jobs: &mut JobServiceClient<Channel>,
    job_id: &str,
    mut done: impl FnMut(&Event) -> bool,
) {
    let mut stream = jobs
        .watch_job(WatchJobRequest {
            job_id: job_id.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(e) = stream.message().await.unwrap() {
            if e.event.as_ref().is_some_and(&mut done) {
                return;
            }
        }
        panic!("the watch ended first");
    });
    found.await.expect("no such event within 30 s");
}

fn job_state(e: &Event) -> Option<JobState> {
    match e {
        Event::Snapshot(j) | Event::Job(j) => JobState::try_from(j.state).ok(),
        Event::Task(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_renders_jobs_and_a_cancel_stops_its_render() {
    let data_dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut config = stylefarm_coordinator::Config::new(data_dir.path());
    config.heartbeat_interval = Duration::from_millis(100);
    let (stop_coordinator, coordinator_stopped) = oneshot::channel::<()>();
    let coordinator = tokio::spawn(stylefarm_coordinator::serve(listener, config, async {
        let _ = coordinator_stopped.await;
    }));

    let mut worker_config = stylefarm_worker::Config::new(url.clone());
    worker_config.preview_every = 2;
    let (stop_worker, worker_stopped) = oneshot::channel::<()>();
    let engine = Arc::new(FakeEngine::new(Duration::from_millis(10)));
    let worker = tokio::spawn(stylefarm_worker::run(worker_config, engine, async {
        let _ = worker_stopped.await;
    }));

    let mut jobs = JobServiceClient::connect(url.clone()).await.unwrap();
    let mut blobs = BlobServiceClient::connect(url).await.unwrap();
    let (content, style) = put_inputs(&mut blobs).await;

    // A long job (1000 s on the fake engine): cancelled once it runs.
    let long = start_long_job(&mut jobs, &content, &style).await;
    jobs.cancel_job(CancelJobRequest {
        job_id: long.clone(),
    })
    .await
    .unwrap();
    watch_until(&mut jobs, &long, |e| {
        job_state(e) == Some(JobState::Canceled)
    })
    .await;

    // The only worker takes the next job: the cancelled render has stopped.
    let short = jobs.submit_job(job(&content, &style, 5)).await.unwrap();
    let short = short.into_inner().job_id;
    watch_until(&mut jobs, &short, |e| {
        matches!(job_state(e), Some(JobState::Completed | JobState::Failed))
    })
    .await;
    let done = jobs
        .get_job(GetJobRequest { job_id: short })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.state, JobState::Completed as i32, "{done:?}");
    let result = done.result.expect("the job's result");
    let out = decode_image(
        &get(&mut blobs, &result).await,
        "result",
        &DecodeLimits::default(),
    )
    .unwrap();
    let mut expected = content_image();
    image::imageops::invert(&mut expected);
    assert_eq!(out.as_raw(), expected.as_raw());

    let _ = stop_worker.send(());
    worker.await.unwrap().unwrap();
    let _ = stop_coordinator.send(());
    coordinator.await.unwrap().unwrap();
}

/// `GET path` at `addr`: the body of a 200 answer.
async fn scrape(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// The value of the sample `name` (with its labels, as exposed).
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_and_worker_metrics_follow_a_job() {
    let data_dir = tempfile::tempdir().unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", grpc.local_addr().unwrap());
    let coordinator_http = http.local_addr().unwrap().to_string();
    let mut config = stylefarm_coordinator::Config::new(data_dir.path());
    config.heartbeat_interval = Duration::from_millis(100);
    let (stop_coordinator, coordinator_stopped) = oneshot::channel::<()>();
    let coordinator = tokio::spawn(stylefarm_coordinator::serve_on(
        stylefarm_coordinator::Listeners::grpc(grpc).with_http(http),
        config,
        Arc::new(stylefarm_coordinator::SystemClock),
        async {
            let _ = coordinator_stopped.await;
        },
    ));

    let worker_config = stylefarm_worker::Config::new(url.clone());
    let worker_http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let worker_addr = worker_http.local_addr().unwrap().to_string();
    let (stop_http, http_stopped) = oneshot::channel::<()>();
    let http_server = tokio::spawn(stylefarm_worker::http::serve(
        worker_http,
        worker_config.metrics.clone(),
        async {
            let _ = http_stopped.await;
        },
    ));
    let (stop_worker, worker_stopped) = oneshot::channel::<()>();
    let engine = Arc::new(FakeEngine::new(Duration::from_millis(10)));
    let worker = tokio::spawn(stylefarm_worker::run(worker_config, engine, async {
        let _ = worker_stopped.await;
    }));

    let mut jobs = JobServiceClient::connect(url.clone()).await.unwrap();
    let mut blobs = BlobServiceClient::connect(url).await.unwrap();
    let (content, style) = put_inputs(&mut blobs).await;

    // While a long task runs: it is the cpu pool's demand, and the worker is busy.
    let long = start_long_job(&mut jobs, &content, &style).await;
    let text = scrape(&coordinator_http, "/metrics").await;
    assert_eq!(
        sample(&text, "stylefarm_tasks{state=\"running\",pool=\"cpu\"}"),
        1.0
    );
    assert_eq!(sample(&text, "stylefarm_pool_demand{pool=\"cpu\"}"), 1.0);
    assert_eq!(sample(&text, "stylefarm_queue_depth{pool=\"cpu\"}"), 0.0);
    let text = scrape(&worker_addr, "/metrics").await;
    assert_eq!(sample(&text, "stylefarm_worker_busy"), 1.0);
    jobs.cancel_job(CancelJobRequest {
        job_id: long.clone(),
    })
    .await
    .unwrap();
    watch_until(&mut jobs, &long, |e| {
        job_state(e) == Some(JobState::Canceled)
    })
    .await;

    // A job that completes: 20 iterations on the fake engine.
    let short = jobs.submit_job(job(&content, &style, 20)).await.unwrap();
    let short = short.into_inner().job_id;
    watch_until(&mut jobs, &short, |e| {
        matches!(job_state(e), Some(JobState::Completed | JobState::Failed))
    })
    .await;
    let text = scrape(&coordinator_http, "/metrics").await;
    assert_eq!(sample(&text, "stylefarm_jobs{state=\"completed\"}"), 1.0);
    assert_eq!(sample(&text, "stylefarm_jobs{state=\"canceled\"}"), 1.0);
    assert_eq!(
        sample(&text, "stylefarm_tasks{state=\"succeeded\",pool=\"cpu\"}"),
        1.0
    );
    assert_eq!(sample(&text, "stylefarm_pool_demand{pool=\"cpu\"}"), 0.0);
    assert_eq!(sample(&text, "stylefarm_task_duration_seconds_count"), 1.0);
    assert!(sample(&text, "stylefarm_blob_store_bytes") > 0.0);
    // The worker's report of the completed task may trail the coordinator's answer by a hair.
    let text = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let text = scrape(&worker_addr, "/metrics").await;
            if sample(&text, "stylefarm_worker_tasks_total{outcome=\"completed\"}") == 1.0 {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the worker counts its completed task");
    assert_eq!(
        sample(
            &text,
            "stylefarm_worker_tasks_total{outcome=\"interrupted\"}"
        ),
        1.0
    );
    assert_eq!(sample(&text, "stylefarm_worker_busy"), 0.0);
    assert_eq!(
        sample(&text, "stylefarm_worker_task_duration_seconds_count"),
        2.0
    );
    let iterations = sample(&text, "stylefarm_worker_iterations_total");
    assert!(
        iterations >= 21.0,
        "20 of the short task and some of the long: {iterations}"
    );
    let rate = sample(&text, "stylefarm_worker_iterations_per_second");
    assert!(rate > 0.0 && rate <= 100.0, "10 ms an iteration: {rate}/s");
    stylefarm_worker::http::check_health(&worker_addr, Duration::from_secs(5))
        .await
        .unwrap();

    let _ = stop_worker.send(());
    worker.await.unwrap().unwrap();
    let _ = stop_http.send(());
    http_server.await.unwrap().unwrap();
    let _ = stop_coordinator.send(());
    coordinator.await.unwrap().unwrap();
}

/// The content image the jobs here use (40x30).
fn content_image() -> RgbImage {
    RgbImage::from_fn(40, 30, |x, y| Rgb([x as u8 * 6, y as u8 * 8, 77]))
}

/// Uploads the content image and a 16x16 style image.
async fn put_inputs(blobs: &mut BlobServiceClient<Channel>) -> (BlobRef, BlobRef) {
    let content = put(blobs, encode_png(&content_image()).unwrap()).await;
    let style = put(blobs, encode_png(&RgbImage::new(16, 16)).unwrap()).await;
    (content, style)
}

/// Submits a job long enough (1000 s on the fake engine) to still run when looked at, and
/// returns its id once its task reports progress.
async fn start_long_job(
    jobs: &mut JobServiceClient<Channel>,
    content: &BlobRef,
    style: &BlobRef,
) -> String {
    let long = jobs
        .submit_job(job(content, style, 100_000))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    watch_until(
        jobs,
        &long,
        |e| matches!(e, Event::Task(t) if t.progress.as_ref().is_some_and(|p| p.iteration > 0)),
    )
    .await;
    long
}
