//! The coordinator's own cost: how fast it hands out tasks to workers whose engine does
//! nothing, over real gRPC on loopback.
//!
//! One coordinator (in this process, on a temporary data dir) gets jobs of `--tasks` frames in
//! all; `--workers` simulated workers, each on its own connection, loop LeaseTask →
//! CompleteTask (with a result blob uploaded once) until the queue is empty. Reported: tasks per
//! second (completed tasks over the wall time from the first lease to the last completion) and
//! the p50/p99/max latency of the LeaseTask calls that returned a task.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use image::RgbImage;
use stylefarm_coordinator::Config;
use stylefarm_core::image_io::encode_png;
use stylefarm_proto::blob::{sha256_hex, write_requests};
use stylefarm_proto::v1::{
    self, blob_service_client::BlobServiceClient, job_service_client::JobServiceClient,
    worker_service_client::WorkerServiceClient,
};
use tonic::transport::{Channel, Endpoint};

/// Options of `stylefarm-bench dispatch`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Simulated worker counts to measure, comma-separated.
    #[arg(long, default_value = "1,8,64", value_delimiter = ',')]
    workers: Vec<usize>,
    /// Tasks per measurement.
    #[arg(long, default_value_t = 4000)]
    tasks: usize,
    /// Tasks per submitted job.
    #[arg(long, default_value_t = 1000)]
    job_size: usize,
}

pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "{:>8} {:>8} {:>10} {:>9} {:>9} {:>9}",
        "workers", "tasks", "tasks/s", "p50 ms", "p99 ms", "max ms"
    );
    for &workers in &args.workers {
        let r = runtime.block_on(measure(workers, args.tasks, args.job_size.max(1)))?;
        println!(
            "{workers:>8} {:>8} {:>10.0} {:>9.2} {:>9.2} {:>9.2}",
            args.tasks, r.tasks_per_second, r.p50_ms, r.p99_ms, r.max_ms
        );
        println!(
            "{}",
            serde_json::json!({"workers": workers, "tasks": args.tasks,
                "tasks_per_second": r.tasks_per_second, "lease_p50_ms": r.p50_ms,
                "lease_p99_ms": r.p99_ms, "lease_max_ms": r.max_ms})
        );
    }
    Ok(())
}

struct Measurement {
    tasks_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

async fn upload(channel: &Channel, data: Vec<u8>) -> anyhow::Result<v1::BlobRef> {
    let sha = sha256_hex(&data);
    let reqs = write_requests(Arc::new(data), sha);
    let blob = BlobServiceClient::new(channel.clone())
        .write(tokio_stream::iter(reqs))
        .await?
        .into_inner()
        .blob
        .context("no blob in the answer")?;
    Ok(blob)
}

async fn measure(workers: usize, tasks: usize, job_size: usize) -> anyhow::Result<Measurement> {
    let dir = tempfile::tempdir()?;
    let mut config = Config::new(dir.path());
    config.max_tasks_per_job = job_size;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(stylefarm_coordinator::serve(listener, config, async {
        let _ = stopped.await;
    }));
    let connect = || async { anyhow::Ok(Endpoint::from_shared(url.clone())?.connect().await?) };
    let channel = connect().await?;
    let png = |seed: u8| {
        encode_png(&RgbImage::from_fn(16, 12, |x, y| {
            image::Rgb([x as u8, y as u8, seed])
        }))
    };
    let content = upload(&channel, png(1)?).await?;
    let style = upload(&channel, png(2)?).await?;
    let result = upload(&channel, png(3)?).await?;
    let mut jobs = JobServiceClient::new(channel.clone());
    let mut left = tasks;
    while left > 0 {
        let n = left.min(job_size);
        left -= n;
        jobs.submit_job(v1::SubmitJobRequest {
            spec: Some(v1::JobSpec {
                name: "dispatch-bench".into(),
                content: vec![content.clone(); n],
                styles: vec![style.clone()],
                settings: Some(v1::RenderSettings {
                    image_size: Some(64),
                    num_iterations: Some(1),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
        .await?;
    }

    let mut handles = Vec::with_capacity(workers);
    for i in 0..workers {
        let channel = connect().await?;
        let result = result.clone();
        handles.push(tokio::spawn(async move {
            let mut client = WorkerServiceClient::new(channel);
            let worker_id = client
                .register_worker(v1::RegisterWorkerRequest {
                    name: format!("sim-{i}"),
                    capabilities: Some(v1::Capabilities {
                        device: v1::Device::Cpu as i32,
                        threads: 1,
                        memory_bytes: 8 << 30,
                        models: vec![],
                        ..Default::default()
                    }),
                })
                .await?
                .into_inner()
                .worker_id;
            let mut latencies = Vec::new();
            let mut first: Option<Instant> = None;
            let mut last = Instant::now();
            loop {
                let asked = Instant::now();
                let answer = client
                    .lease_task(v1::LeaseTaskRequest {
                        worker_id: worker_id.clone(),
                        wait_ms: 0,
                    })
                    .await?
                    .into_inner();
                let Some(lease) = answer.lease else { break };
                latencies.push(asked.elapsed());
                first.get_or_insert(asked);
                client
                    .complete_task(v1::CompleteTaskRequest {
                        lease_id: lease.lease_id,
                        result: Some(result.clone()),
                        final_losses: Some(v1::Losses::default()),
                        seconds: 0.0,
                    })
                    .await?;
                last = Instant::now();
            }
            anyhow::Ok((latencies, first, last))
        }));
    }
    let mut latencies: Vec<Duration> = Vec::with_capacity(tasks);
    let (mut start, mut end): (Option<Instant>, Option<Instant>) = (None, None);
    for h in handles {
        let (l, first, last) = h.await??;
        if let Some(f) = first {
            start = Some(start.map_or(f, |s| s.min(f)));
            end = Some(end.map_or(last, |e| e.max(last)));
        }
        latencies.extend(l);
    }
    let _ = stop.send(());
    server.await??;
    anyhow::ensure!(
        latencies.len() == tasks,
        "{} of {tasks} tasks were leased",
        latencies.len()
    );
    latencies.sort();
    let ms =
        |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    let wall = match (start, end) {
        (Some(s), Some(e)) => (e - s).as_secs_f64(),
        _ => f64::NAN,
    };
    Ok(Measurement {
        tasks_per_second: tasks as f64 / wall,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        max_ms: ms(1.0),
    })
}
