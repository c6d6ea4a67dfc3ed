//! What a cluster runs around the coordinator: KEDA's external scaler API (the metric of each
//! worker pool at each step of a job's life), the Prometheus metrics scraped over real HTTP,
//! and `stylefarm-coordinator --health-check` as a container probe runs it.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use stylefarm_coordinator::{serve_on, Config, Listeners, ManualClock};
use stylefarm_proto::externalscaler::external_scaler_client::ExternalScalerClient;
use stylefarm_proto::externalscaler::{GetMetricsRequest, ScaledObjectRef};
use stylefarm_proto::v1;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::transport::Channel;

fn pool(name: &str) -> ScaledObjectRef {
    let mut metadata = HashMap::new();
    metadata.insert("pool".to_string(), name.to_string());
    ScaledObjectRef {
        name: format!("{name}-workers"),
        namespace: "farm".into(),
        scaler_metadata: metadata,
    }
}

/// The pool's metric and whether KEDA would call it active.
async fn metric(scaler: &mut ExternalScalerClient<Channel>, name: &str) -> (f64, bool) {
    let values = scaler
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(pool(name)),
            metric_name: format!("stylefarm-{name}-tasks"),
        })
        .await
        .unwrap()
        .into_inner()
        .metric_values;
    assert_eq!(values.len(), 1);
    assert_eq!(values[0].metric_name, format!("stylefarm-{name}-tasks"));
    assert_eq!(values[0].metric_value as f64, values[0].metric_value_float);
    let active = scaler
        .is_active(pool(name))
        .await
        .unwrap()
        .into_inner()
        .result;
    (values[0].metric_value_float, active)
}

#[tokio::test]
async fn the_scaler_counts_each_pools_waiting_and_running_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let farm = Farm::start(dir.path()).await;
    let mut c = farm.clients().await;
    let mut scaler = ExternalScalerClient::new(c.channel.clone());
    let mut steps = Vec::new();
    let mut step = |what: &str, cpu: (f64, bool), cuda: (f64, bool)| {
        eprintln!(
            "scaler: {what}: cpu {} (active {}), cuda {} (active {})",
            cpu.0, cpu.1, cuda.0, cuda.1
        );
        steps.push((what.to_string(), cpu, cuda));
    };

    // The metric spec: one metric per trigger, with the trigger's target.
    let mut spec_of = pool("cuda");
    spec_of
        .scaler_metadata
        .insert("targetTasksPerWorker".into(), "2".into());
    let specs = scaler.get_metric_spec(spec_of).await.unwrap().into_inner();
    assert_eq!(specs.metric_specs.len(), 1);
    assert_eq!(specs.metric_specs[0].metric_name, "stylefarm-cuda-tasks");
    assert_eq!(specs.metric_specs[0].target_size, 2);
    assert_eq!(specs.metric_specs[0].target_size_float, 2.0);
    let unknown = scaler.get_metrics(GetMetricsRequest {
        scaled_object_ref: Some(pool("tpu")),
        metric_name: String::new(),
    });
    assert_eq!(
        unknown.await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );

    let idle = (
        metric(&mut scaler, "cpu").await,
        metric(&mut scaler, "cuda").await,
    );
    step("idle", idle.0, idle.1);
    assert_eq!(idle, ((0.0, false), (0.0, false)));

    // A job of three frames asking for no device: the cpu pool's.
    let style = upload(&mut c, &png(8, 8, 2)).await;
    let mut frames = Vec::new();
    for seed in 0..3 {
        frames.push(upload(&mut c, &png(16, 12, 10 + seed)).await);
    }
    let job = submit(&mut c, spec(frames, vec![style.clone()]))
        .await
        .unwrap();
    let now = (
        metric(&mut scaler, "cpu").await,
        metric(&mut scaler, "cuda").await,
    );
    step("3 frames submitted", now.0, now.1);
    assert_eq!(now, ((3.0, true), (0.0, false)));

    // Leased and running tasks still want their worker.
    let worker = register(&mut c, "w1", 0).await;
    let first = lease(&mut c, &worker, 0).await.expect("a task");
    let now = metric(&mut scaler, "cpu").await;
    step("1 leased", now, (0.0, false));
    assert_eq!(now, (3.0, true));
    update(&mut c, &first.lease_id, 1).await.unwrap();
    let now = metric(&mut scaler, "cpu").await;
    step("1 running", now, (0.0, false));
    assert_eq!(now, (3.0, true));
    complete(&mut c, &first.lease_id, &png(16, 12, 99))
        .await
        .unwrap();
    let now = metric(&mut scaler, "cpu").await;
    step("1 completed", now, (0.0, false));
    assert_eq!(now, (2.0, true));

    // A CUDA job: its own pool, which a CPU worker does not serve.
    let mut cuda_spec = spec(vec![upload(&mut c, &png(16, 12, 50)).await], vec![style]);
    cuda_spec.device = v1::Device::Cuda as i32;
    let cuda_job = submit(&mut c, cuda_spec).await.unwrap();
    let mut stream = scaler
        .stream_is_active(pool("cuda"))
        .await
        .unwrap()
        .into_inner();
    let first_answer = tokio::time::timeout(PROMPTLY, stream.message())
        .await
        .unwrap();
    assert!(
        first_answer.unwrap().unwrap().result,
        "the cuda pool is active"
    );
    let now = (
        metric(&mut scaler, "cpu").await,
        metric(&mut scaler, "cuda").await,
    );
    step("1 cuda frame submitted", now.0, now.1);
    assert_eq!(now, ((2.0, true), (1.0, true)));

    for _ in 0..2 {
        let l = lease(&mut c, &worker, 0).await.expect("a cpu task");
        assert_eq!(l.job_id, job, "the CPU worker never gets the CUDA task");
        complete(&mut c, &l.lease_id, &png(16, 12, 98))
            .await
            .unwrap();
    }
    assert!(
        lease(&mut c, &worker, 0).await.is_none(),
        "only the CUDA task is left"
    );
    let now = (
        metric(&mut scaler, "cpu").await,
        metric(&mut scaler, "cuda").await,
    );
    step("cpu frames all completed", now.0, now.1);
    assert_eq!(now, ((0.0, false), (1.0, true)));

    // Canceled: the cuda pool may go to zero, and the stream says so.
    c.jobs
        .cancel_job(v1::CancelJobRequest { job_id: cuda_job })
        .await
        .unwrap();
    let next = tokio::time::timeout(PROMPTLY, stream.message())
        .await
        .unwrap();
    assert!(
        !next.unwrap().unwrap().result,
        "the cuda pool is idle again"
    );
    let now = (
        metric(&mut scaler, "cpu").await,
        metric(&mut scaler, "cuda").await,
    );
    step("cuda job canceled", now.0, now.1);
    assert_eq!(now, ((0.0, false), (0.0, false)));
    assert_eq!(steps.len(), 8);
    drop(stream);
    farm.stop().await;
}

/// `GET path` at `addr` over HTTP/1.1: the status code and the body.
async fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(PROMPTLY, stream.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// The value of the sample `name` (with its labels, as exposed).
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn metrics_are_scraped_over_http_as_the_farm_moves() {
    let dir = tempfile::tempdir().unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", grpc.local_addr().unwrap());
    let http_addr = http.local_addr().unwrap().to_string();
    let clock = Arc::new(ManualClock::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut config = Config::new(dir.path());
    config.default_max_attempts = 5;
    let server = tokio::spawn(serve_on(
        Listeners::grpc(grpc).with_http(http),
        config,
        clock.clone(),
        async {
            let _ = stopped.await;
        },
    ));
    let mut c = clients_of(&url).await;

    let (status, text) = http_get(&http_addr, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(sample(&text, "stylefarm_jobs{state=\"queued\"}"), 0.0);
    assert_eq!(sample(&text, "stylefarm_blob_store_bytes"), 0.0);

    let style = upload(&mut c, &png(8, 8, 2)).await;
    let frames = vec![
        upload(&mut c, &png(16, 12, 1)).await,
        upload(&mut c, &png(16, 12, 3)).await,
    ];
    submit(&mut c, spec(frames, vec![style])).await.unwrap();
    let text = http_get(&http_addr, "/metrics").await.1;
    assert_eq!(sample(&text, "stylefarm_jobs{state=\"queued\"}"), 1.0);
    assert_eq!(
        sample(&text, "stylefarm_tasks{state=\"queued\",pool=\"cpu\"}"),
        2.0
    );
    assert_eq!(sample(&text, "stylefarm_queue_depth{pool=\"cpu\"}"), 2.0);
    assert_eq!(sample(&text, "stylefarm_pool_demand{pool=\"cpu\"}"), 2.0);
    assert!(sample(&text, "stylefarm_blob_store_bytes") > 0.0);

    // A failed attempt is retried; a lapsed lease is counted and retried too.
    let worker = register(&mut c, "w1", 0).await;
    let l = lease(&mut c, &worker, 0).await.unwrap();
    c.workers
        .fail_task(v1::FailTaskRequest {
            lease_id: l.lease_id,
            kind: v1::FailureKind::Application as i32,
            message: "it broke".into(),
        })
        .await
        .unwrap();
    let l = lease(&mut c, &worker, 0).await.unwrap();
    update(&mut c, &l.lease_id, 1).await.unwrap();
    let text = http_get(&http_addr, "/metrics").await.1;
    assert_eq!(sample(&text, "stylefarm_task_retries_total"), 1.0);
    assert_eq!(
        sample(&text, "stylefarm_tasks{state=\"running\",pool=\"cpu\"}"),
        1.0
    );
    assert_eq!(
        sample(&text, "stylefarm_tasks{state=\"soft_failed\",pool=\"cpu\"}"),
        1.0
    );
    assert_eq!(sample(&text, "stylefarm_jobs{state=\"active\"}"), 1.0);
    clock.advance(Duration::from_secs(31));
    let lapsed = tokio::time::timeout(PROMPTLY, async {
        loop {
            let text = http_get(&http_addr, "/metrics").await.1;
            if sample(&text, "stylefarm_lease_expiries_total") == 1.0 {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the lapsed lease is counted");
    assert_eq!(sample(&lapsed, "stylefarm_task_retries_total"), 2.0);
    assert_eq!(sample(&lapsed, "stylefarm_worker_blocklistings_total"), 0.0);

    // The rest completes on a second worker; durations are the workers' own.
    let other = register(&mut c, "w2", 0).await;
    while let Some(l) = lease(&mut c, &other, 0).await {
        complete(&mut c, &l.lease_id, &png(16, 12, 9))
            .await
            .unwrap();
    }
    let text = http_get(&http_addr, "/metrics").await.1;
    assert_eq!(sample(&text, "stylefarm_jobs{state=\"completed\"}"), 1.0);
    assert_eq!(sample(&text, "stylefarm_jobs{state=\"active\"}"), 0.0);
    assert_eq!(
        sample(&text, "stylefarm_tasks{state=\"succeeded\",pool=\"cpu\"}"),
        2.0
    );
    assert_eq!(sample(&text, "stylefarm_pool_demand{pool=\"cpu\"}"), 0.0);
    assert_eq!(sample(&text, "stylefarm_task_duration_seconds_count"), 2.0);
    assert_eq!(sample(&text, "stylefarm_task_duration_seconds_sum"), 1.0);
    assert_eq!(http_get(&http_addr, "/healthz").await.0, 200);

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

/// `stylefarm-coordinator --health-check ARGS`: exit code, stdout, stderr.
fn health_check(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stylefarm-coordinator"))
        .arg("--health-check")
        .args(args)
        .env_remove("STYLEFARM_LISTEN")
        .env_remove("STYLEFARM_DATA_DIR")
        .env_remove("STYLEFARM_TLS_CERT")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_check_passes_while_the_coordinator_serves() {
    let dir = tempfile::tempdir().unwrap();
    let farm = Farm::start(dir.path()).await;
    let port = farm.url.rsplit(':').next().unwrap().to_string();
    let local = format!("127.0.0.1:{port}");
    let everywhere = format!("0.0.0.0:{port}");
    // Both as given, and for a coordinator listening on every address (probed on loopback).
    for listen in [&local, &everywhere] {
        let (code, stdout, stderr) =
            tokio::task::block_in_place(|| health_check(&["--listen", listen]));
        assert_eq!(code, 0, "{stdout}{stderr}");
        assert_eq!(stdout.trim(), "serving");
    }
    farm.stop().await;
    let (code, _, stderr) = tokio::task::block_in_place(|| health_check(&["--listen", &local]));
    assert_eq!(code, 1);
    assert_eq!(stderr.lines().count(), 1, "one sentence: {stderr}");
    assert!(
        stderr.contains("unhealthy") && stderr.contains(&local),
        "{stderr}"
    );
}
