//! Jobs split beyond one task per frame, end to end: tiles in lock step (the whole image's
//! statistics, a shard per worker and the coordinator's driver; under faults: a shard lost or
//! hung, the job cancelled, the coordinator restarted), temporal frame chains,
//! parameter sweeps with a contact sheet, and coarse-to-fine stages — on the fake engine where
//! the engine is not the subject, and tiled renders on the tiny VGG with their objective and
//! seam score.

use std::sync::Arc;
use std::time::Duration;

use candle_core::Device;
use stylefarm_core::layers::Pooling;
use stylefarm_core::lockstep::{interior_edges, lockstep_tiles};
use stylefarm_core::settings::{Init, RenderSettings};
use stylefarm_core::tiles::seam_score;
use stylefarm_engine::render::{render, RenderInputs};
use stylefarm_engine::vgg::Vgg;
use stylefarm_engine::weights::VggWeights;
use stylefarm_proto::v1::{self, task_spec::Part, JobSpec, JobState};
use stylefarm_tests::*;
use stylefarm_worker::CandleEngine;

/// Uploads the images and returns a spec of one frame per content image.
async fn spec_of(
    client: &stylefarm_client::farm::FarmClient,
    content: &[&image::RgbImage],
    style: &image::RgbImage,
    settings: &RenderSettings,
) -> JobSpec {
    let content: Vec<Vec<u8>> = content.iter().map(|i| png(i)).collect();
    let content = client
        .upload_all(&content.iter().map(Vec::as_slice).collect::<Vec<_>>())
        .await
        .unwrap();
    let style = client.upload(&png(style)).await.unwrap();
    job_spec(content, vec![style], settings)
}

/// Waits until the farm lists `n` workers (they have registered).
async fn wait_for_workers(client: &stylefarm_client::farm::FarmClient, n: usize) {
    within("the workers to register", async {
        while client.workers().await.unwrap().len() < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
}

async fn run(client: &stylefarm_client::farm::FarmClient, spec: JobSpec) -> v1::Job {
    let id = client.submit(spec).await.unwrap();
    let job = await_job(client, &id).await.unwrap();
    assert_eq!(job.state, JobState::Completed as i32, "{}", job.error);
    job
}

async fn result_of(client: &stylefarm_client::farm::FarmClient, job: &v1::Job) -> image::RgbImage {
    decode(&client.download(job.result.as_ref().unwrap()).await.unwrap()).unwrap()
}

fn tiles(spec: &JobSpec, size: u32, overlap: u32) -> JobSpec {
    JobSpec {
        tiles: Some(v1::TileOptions {
            tile_size: size,
            tile_overlap: overlap,
        }),
        ..spec.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_too_big_for_the_workers_memory_is_tiled_without_being_asked() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(dir.path()).await.unwrap();
    let mut config = stylefarm_worker::Config::new(coordinator.url());
    config.memory_bytes = 1 << 30;
    let worker = Worker::start_with(config, fake(Duration::from_millis(1)));
    let client = coordinator.client().await.unwrap();
    wait_for_workers(&client, 1).await;
    let content = pattern(64, 48, 1);
    let spec = spec_of(
        &client,
        &[&content],
        &pattern(30, 30, 2),
        &settings(1024, 1),
    )
    .await;
    let plan = client.plan(spec).await.unwrap();
    let t = plan.tiles.unwrap();
    assert!(t.tile_size >= 64 && t.tile_size < 1024, "{t:?}");
    assert!(plan
        .tasks
        .iter()
        .all(|t| t.estimated_memory_bytes <= 1 << 30));
    worker.stop().await.unwrap();
    coordinator.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporal_frames_start_from_the_previous_frames_output() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(dir.path()).await.unwrap();
    let worker = Worker::start(coordinator.url(), "a", fake(Duration::from_millis(1)));
    let client = coordinator.client().await.unwrap();
    let frames = [pattern(40, 30, 1), pattern(40, 30, 2), pattern(40, 30, 3)];
    let mut spec = spec_of(
        &client,
        &frames.iter().collect::<Vec<_>>(),
        &pattern(30, 30, 9),
        &settings(40, 2),
    )
    .await;
    spec.temporal = true;
    let job = run(&client, spec).await;
    assert_eq!(job.tasks.len(), 3);
    assert!(job.tasks[0].spec.as_ref().unwrap().init_image.is_none());
    for pair in job.tasks.windows(2) {
        let spec = pair[1].spec.as_ref().unwrap();
        assert_eq!(spec.depends_on, vec![pair[0].index]);
        assert_eq!(spec.init_image, pair[0].result);
        assert_eq!(spec.settings.as_ref().unwrap().init, v1::Init::Image as i32);
    }
    worker.stop().await.unwrap();
    coordinator.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_renders_every_point_and_a_contact_sheet() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(dir.path()).await.unwrap();
    let worker = Worker::start(coordinator.url(), "a", fake(Duration::from_millis(1)));
    let client = coordinator.client().await.unwrap();
    let content = pattern(40, 30, 1);
    let mut spec = spec_of(&client, &[&content], &pattern(30, 30, 9), &settings(40, 2)).await;
    spec.content_names = vec!["city.jpg".into()];
    spec.sweeps = vec![
        v1::Sweep {
            parameter: "style-weight".into(),
            values: vec!["10".into(), "100".into(), "1000".into()],
        },
        v1::Sweep {
            parameter: "image-size".into(),
            values: vec!["20".into(), "40".into()],
        },
    ];
    let job = run(&client, spec).await;
    assert_eq!(job.tasks.len(), 7);
    let names: Vec<&str> = job
        .tasks
        .iter()
        .map(|t| t.spec.as_ref().unwrap().output_name.as_str())
        .collect();
    assert_eq!(names[0], "city_style-weight=10_image-size=20.png");
    assert_eq!(names[5], "city_style-weight=1000_image-size=40.png");
    assert_eq!(names[6], "city_sweep.png");
    let point = decode(
        &client
            .download(job.tasks[1].result.as_ref().unwrap())
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        point.dimensions(),
        (40, 30),
        "each point renders with its values"
    );

    // Six cells of 256 px (the images are smaller) in a 3x2 grid, labelled below.
    let sheet = result_of(&client, &job).await;
    assert_eq!(sheet.width(), 8 + 3 * (256 + 8));
    assert!(sheet.height() > 2 * 256);
    let first = decode(
        &client
            .download(job.tasks[0].result.as_ref().unwrap())
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(sheet.get_pixel(8, 8), first.get_pixel(0, 0));
    let label_ink = (8..250)
        .flat_map(|x| (8 + 256..8 + 256 + 40).map(move |y| (x, y)))
        .filter(|&(x, y)| sheet.get_pixel(x, y).0 == [0, 0, 0])
        .count();
    assert!(label_ink > 100, "the labels are drawn");
    worker.stop().await.unwrap();
    coordinator.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coarse_to_fine_stages_chain_at_increasing_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(dir.path()).await.unwrap();
    let worker = Worker::start(coordinator.url(), "a", fake(Duration::from_millis(1)));
    let client = coordinator.client().await.unwrap();
    let content = pattern(64, 48, 1);
    let mut spec = spec_of(&client, &[&content], &pattern(30, 30, 9), &settings(64, 3)).await;
    spec.scales = Some(v1::Scales {
        sizes: vec![16, 32, 64],
        iterations: vec![4, 3, 2],
    });
    let job = run(&client, spec).await;
    assert_eq!(job.tasks.len(), 3);
    for (task, (size, iterations)) in job.tasks.iter().zip([(16, 4), (32, 3), (64, 2)]) {
        let s = task.spec.as_ref().unwrap().settings.as_ref().unwrap();
        assert_eq!(
            (s.image_size, s.num_iterations),
            (Some(size), Some(iterations))
        );
    }
    assert_eq!(
        job.tasks[2].spec.as_ref().unwrap().init_image,
        job.tasks[1].result
    );
    assert_eq!(result_of(&client, &job).await.dimensions(), (64, 48));
    worker.stop().await.unwrap();
    coordinator.stop().await.unwrap();
}

/// The objective of `image` as the whole-image render would judge it: a render of no
/// iterations that starts from it.
fn objective_of(
    vgg: &Vgg,
    image: &image::RgbImage,
    content: &image::RgbImage,
    style: &image::RgbImage,
    settings: &RenderSettings,
) -> f64 {
    let inputs = RenderInputs {
        content: content.clone(),
        styles: vec![style.clone()],
        init_image: Some(image.clone()),
    };
    let judge = RenderSettings {
        num_iterations: 0,
        init: Init::Image,
        ..settings.clone()
    };
    render(vgg, &inputs, &judge, &mut ()).unwrap().losses.total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_lockstep_render_on_two_workers_is_the_untiled_render_up_to_the_margins() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(dir.path()).await.unwrap();
    let engine = Arc::new(CandleEngine::load(&tiny_vgg16()).unwrap());
    let workers = [
        Worker::start(coordinator.url(), "a", engine.clone()),
        Worker::start(coordinator.url(), "b", engine),
    ];
    let client = coordinator.client().await.unwrap();
    wait_for_workers(&client, 2).await;

    let content = noise(128, 96, 1);
    let style = pattern(64, 64, 3);
    let mut settings = settings(128, 8);
    settings.init = Init::Content;
    let untiled_spec = spec_of(&client, &[&content], &style, &settings).await;
    let tiled_spec = tiles(&untiled_spec, 64, 32);

    // The plan: the statistics, a shard per worker and the coordinator's driver; a 2x2 grid
    // of tiles whose contexts reach 32 px past them.
    let plan = client.plan(tiled_spec.clone()).await.unwrap();
    let kinds: Vec<_> = plan
        .tasks
        .iter()
        .map(|t| match t.spec.as_ref().unwrap().part.as_ref().unwrap() {
            Part::Statistics(_) => "statistics",
            Part::Shard(_) => "shard",
            Part::Assemble(_) => "driver",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["statistics", "shard", "shard", "driver"]);
    assert_eq!((plan.tile_columns, plan.tile_rows), (2, 2));
    let contexts: Vec<_> = plan
        .lockstep_tiles
        .iter()
        .map(|r| (r.x, r.y, r.width, r.height))
        .collect();
    assert_eq!(
        contexts,
        [
            (0, 0, 96, 80),
            (32, 0, 96, 80),
            (0, 16, 96, 80),
            (32, 16, 96, 80)
        ]
    );

    let untiled = run(&client, untiled_spec).await;
    let tiled_job = run(&client, tiled_spec).await;
    let (untiled, tiled) = (
        result_of(&client, &untiled).await,
        result_of(&client, &tiled_job).await,
    );
    assert_eq!(tiled.dimensions(), (128, 96));
    // Both workers took part: each shard task ended with the job's result.
    for shard in &tiled_job.tasks[1..3] {
        assert_eq!(shard.state, v1::TaskState::Succeeded as i32);
        assert_eq!(shard.result, tiled_job.result);
    }
    assert_ne!(tiled_job.tasks[1].worker_id, tiled_job.tasks[2].worker_id);

    let vgg = tiny_vgg();
    let objective = |img| objective_of(&vgg, img, &content, &style, &settings);
    let ratio = objective(&tiled) / objective(&untiled);
    // The driver reports the objective of the written pixels, as its tiles see them.
    let reported = tiled_job.tasks[3].final_losses.as_ref().unwrap().total;
    let whole = objective(&tiled);
    assert!(
        (reported / whole - 1.0).abs() < 0.05,
        "{reported} vs {whole}"
    );
    // At the edges between the tiles' cores.
    let (xs, ys) =
        interior_edges(&lockstep_tiles(128, 96, 64, 32, settings.deepest_stride()).unwrap());
    let score = seam_score(&xs, &ys, &tiled, &untiled).unwrap();
    eprintln!("tiny VGG, 128x96 in 64 px tiles in lock step: objective ratio {ratio:.4}, seam score {score:.3}");
    // The same optimisation as the untiled render's but for features near a tile's edge,
    // which see 32 px of context instead of the whole image.
    assert!((ratio - 1.0).abs() < 0.05, "objective ratio {ratio}");
    assert!(score < 1.1, "seam score {score}");

    for w in workers {
        w.stop().await.unwrap();
    }
    coordinator.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lockstep_render_carries_on_when_a_shard_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = stylefarm_coordinator::Config::new(dir.path());
    // The lost worker's lease lapses soon, so that its shard task is taken again.
    config.lease_duration = Duration::from_secs(2);
    config.heartbeat_interval = Duration::from_millis(500);
    let coordinator =
        Coordinator::start_with(config, Arc::new(stylefarm_coordinator::SystemClock), None)
            .await
            .unwrap();
    let engine = Arc::new(CandleEngine::load(&tiny_vgg16()).unwrap());
    let kept = Worker::start(coordinator.url(), "kept", engine.clone());
    let lost = Worker::start(coordinator.url(), "lost", engine);
    let client = coordinator.client().await.unwrap();
    wait_for_workers(&client, 2).await;

    let mut settings = settings(128, 300);
    settings.init = Init::Content;
    let spec = spec_of(
        &client,
        &[&noise(128, 96, 1)],
        &pattern(64, 64, 3),
        &settings,
    )
    .await;
    let id = client.submit(tiles(&spec, 64, 32)).await.unwrap();
    // Once both shards take part and the driver is a few steps in, one worker dies.
    within("the render to get going", async {
        loop {
            let job = client.job(&id).await.unwrap();
            let running = job.tasks[1..3].iter().all(|t| {
                t.state == v1::TaskState::Running as i32 || t.state == v1::TaskState::Leased as i32
            });
            let step = job.tasks[3].progress.as_ref().map_or(0, |p| p.iteration);
            if running && step >= 5 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    lost.kill();

    let job = await_job(&client, &id).await.unwrap();
    assert_eq!(job.state, JobState::Completed as i32, "{}", job.error);
    let driver = &job.tasks[3];
    assert_eq!(driver.progress.as_ref().unwrap().iteration, 300);
    assert_eq!(result_of(&client, &job).await.dimensions(), (128, 96));
    // The lost shard's task was taken again once its lease lapsed, and completed at once.
    for shard in &job.tasks[1..3] {
        assert_eq!(shard.state, v1::TaskState::Succeeded as i32);
        assert_eq!(shard.result, job.result);
    }

    // The loss cost nothing: the same render on the worker left, without a fault, comes to
    // the same objective (summed in another order, the two optimisations part in the last
    // bits, so not the same pixels).
    let whole = run(&client, tiles(&spec, 64, 32)).await;
    let vgg = tiny_vgg();
    let (content, style) = (noise(128, 96, 1), pattern(64, 64, 3));
    let objective = |img: &image::RgbImage| objective_of(&vgg, img, &content, &style, &settings);
    let with_loss = objective(&result_of(&client, &job).await);
    let without = objective(&result_of(&client, &whole).await);
    let ratio = with_loss / without;
    eprintln!("a shard lost mid-render: objective {with_loss:.6e} against {without:.6e} without the loss, ratio {ratio:.4}");
    assert!((ratio - 1.0).abs() < 0.05, "objective ratio {ratio}");
    kept.stop().await.unwrap();
    coordinator.stop().await.unwrap();
}

/// The tiny VGG as the whole-image render runs it.
fn tiny_vgg() -> Vgg {
    Vgg::new(
        VggWeights::load(&tiny_vgg16(), &Device::Cpu).unwrap(),
        Pooling::Max,
    )
    .unwrap()
}

/// The driver's progress (its last task) once the render has made `iterations` steps.
async fn wait_for_step(client: &stylefarm_client::farm::FarmClient, id: &str, iterations: u32) {
    within("the lock-step render to get going", async {
        loop {
            let job = client.job(id).await.unwrap();
            let driver = job.tasks.last().unwrap();
            if driver.progress.as_ref().map_or(0, |p| p.iteration) >= iterations {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lockstep_shard_that_hangs_with_its_stream_open_is_dropped_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = stylefarm_coordinator::Config::new(dir.path());
    let step_timeout = Duration::from_secs(1);
    config.shard_step_timeout = step_timeout;
    let coordinator =
        Coordinator::start_with(config, Arc::new(stylefarm_coordinator::SystemClock), None)
            .await
            .unwrap();
    let engine = Arc::new(CandleEngine::load(&tiny_vgg16()).unwrap());
    let mut settings = settings(128, 30);
    settings.init = Init::Content;
    let kept = Worker::start(coordinator.url(), "kept", engine.clone());
    let mut hung = HungShard::register(coordinator.url(), &*engine, &settings)
        .await
        .unwrap();
    let client = coordinator.client().await.unwrap();
    wait_for_workers(&client, 2).await;
    let spec = spec_of(
        &client,
        &[&noise(128, 96, 1)],
        &pattern(64, 64, 3),
        &settings,
    )
    .await;
    let id = client.submit(tiles(&spec, 64, 32)).await.unwrap();
    assert_eq!(client.job(&id).await.unwrap().tasks.len(), 4, "two shards");

    // The hung shard joins a few steps in, takes its tiles and never answers.
    wait_for_step(&client, &id, 3).await;
    let stream = hung.hang().await.unwrap();
    let dropped = stream.ended - stream.first_command;
    eprintln!(
        "a shard hung with its stream open was dropped {:.2} s after its first command (step timeout {:.1} s)",
        dropped.as_secs_f64(),
        step_timeout.as_secs_f64()
    );
    assert!(dropped >= step_timeout / 2, "dropped after {dropped:?}");
    assert!(
        dropped < Duration::from_secs(5),
        "dropped after {dropped:?}"
    );

    // Its tiles went to the other shard, and the render went on to the end.
    let job = await_job(&client, &id).await.unwrap();
    assert_eq!(job.state, JobState::Completed as i32, "{}", job.error);
    assert_eq!(job.tasks[3].progress.as_ref().unwrap().iteration, 30);
    assert_eq!(result_of(&client, &job).await.dimensions(), (128, 96));
    kept.stop().await.unwrap();
    coordinator.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_lockstep_job_stops_its_driver_and_frees_its_shards_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(dir.path()).await.unwrap();
    let engine = Arc::new(CandleEngine::load(&tiny_vgg16()).unwrap());
    let workers = [
        Worker::start(coordinator.url(), "a", engine.clone()),
        Worker::start(coordinator.url(), "b", engine),
    ];
    let client = coordinator.client().await.unwrap();
    wait_for_workers(&client, 2).await;
    let mut settings = settings(128, 5000);
    settings.init = Init::Content;
    let spec = spec_of(
        &client,
        &[&noise(128, 96, 1)],
        &pattern(64, 64, 3),
        &settings,
    )
    .await;
    let id = client.submit(tiles(&spec, 64, 32)).await.unwrap();
    // Past the first checkpoint (every 10 iterations by default), which the driver deletes
    // when it stops.
    wait_for_step(&client, &id, 12).await;
    let checkpoint = coordinator.data_dir().join("checkpoints").join(&id);
    assert!(
        checkpoint.exists(),
        "no checkpoint at {}",
        checkpoint.display()
    );
    let busy = client.workers().await.unwrap();
    assert!(
        busy.iter().all(|w| !w.current_task_id.is_empty()),
        "{busy:?}"
    );

    let cancelled = std::time::Instant::now();
    let job = client.cancel(&id).await.unwrap();
    assert_eq!(job.state, JobState::Canceled as i32);
    let (mut driver_stopped, mut shards_freed) = (None, None);
    within("the driver and shards to stop", async {
        while driver_stopped.is_none() || shards_freed.is_none() {
            if driver_stopped.is_none() && !checkpoint.exists() {
                driver_stopped = Some(cancelled.elapsed());
            }
            let workers = client.workers().await.unwrap();
            if shards_freed.is_none() && workers.iter().all(|w| w.current_task_id.is_empty()) {
                shards_freed = Some(cancelled.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    let (driver_stopped, shards_freed) = (driver_stopped.unwrap(), shards_freed.unwrap());
    eprintln!(
        "a lock-step job cancelled: its driver stopped in {:.2} s, both workers free in {:.2} s",
        driver_stopped.as_secs_f64(),
        shards_freed.as_secs_f64()
    );
    assert!(
        driver_stopped < Duration::from_secs(5),
        "{driver_stopped:?}"
    );
    assert!(shards_freed < Duration::from_secs(5), "{shards_freed:?}");
    let job = client.job(&id).await.unwrap();
    let step = job.tasks[3].progress.as_ref().unwrap().iteration;
    assert!(step < 5000, "the render went on to step {step}");

    // Free workers take new work at once.
    let frames = spec_of(
        &client,
        &[&pattern(32, 24, 1), &pattern(32, 24, 2)],
        &pattern(32, 32, 3),
        &stylefarm_tests::settings(32, 2),
    )
    .await;
    let next = run(&client, frames).await;
    assert!(next
        .tasks
        .iter()
        .all(|t| t.state == v1::TaskState::Succeeded as i32));
    for w in workers {
        w.stop().await.unwrap();
    }
    coordinator.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_mid_render_resumes_the_lockstep_render_from_its_checkpoint() {
    resumes_after(Restart::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_stopped_mid_render_resumes_the_lockstep_render_from_its_checkpoint() {
    resumes_after(Restart::Stop).await;
}

/// How a coordinator goes down mid-render.
#[derive(Debug, Clone, Copy)]
enum Restart {
    /// As a crash would.
    Kill,
    /// Shut down gracefully.
    Stop,
}

/// A lock-step render whose coordinator goes down after its first checkpoint and starts again
/// on the same data: the render goes on from the checkpoint, to the uninterrupted render's
/// pixels.
async fn resumes_after(restart: Restart) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = stylefarm_coordinator::Config::new(dir.path());
    // The killed coordinator's leases lapse soon after the restart.
    config.lease_duration = Duration::from_secs(3);
    config.heartbeat_interval = Duration::from_millis(500);
    config.checkpoint_iterations = 5;
    config.checkpoint_interval = Duration::from_secs(3600);
    let clock = Arc::new(stylefarm_coordinator::SystemClock);
    let coordinator = Coordinator::start_with(config.clone(), clock.clone(), None)
        .await
        .unwrap();
    let addr = coordinator.addr();
    // One worker: the tiles are summed in the same order every time, so the resumed render
    // can be compared pixel for pixel.
    let engine = Arc::new(CandleEngine::load(&tiny_vgg16()).unwrap());
    let worker = Worker::start(coordinator.url(), "a", engine);
    let client = coordinator.client().await.unwrap();
    wait_for_workers(&client, 1).await;
    let iterations = 60;
    let mut settings = settings(128, iterations);
    settings.init = Init::Content;
    let spec = spec_of(
        &client,
        &[&noise(128, 96, 1)],
        &pattern(64, 64, 3),
        &settings,
    )
    .await;
    let spec = tiles(&spec, 64, 32);
    let uninterrupted = run(&client, spec.clone()).await;
    let uninterrupted = result_of(&client, &uninterrupted).await;

    let id = client.submit(spec).await.unwrap();
    let checkpoint = dir.path().join("checkpoints").join(&id);
    within("a checkpoint mid-render", async {
        while !checkpoint.exists() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    match restart {
        Restart::Kill => coordinator.kill().await,
        Restart::Stop => coordinator.stop().await.unwrap(),
    }
    assert!(
        checkpoint.exists(),
        "the checkpoint outlives the coordinator"
    );

    let coordinator = Coordinator::start_with(config, clock, Some(addr))
        .await
        .unwrap();
    let client = coordinator.client().await.unwrap();
    let mut events = client.watch(&id).await.unwrap();
    let mut resumed_at = None;
    let job = within("the resumed render to end", async {
        loop {
            let Some(event) = events.message().await.unwrap() else {
                panic!("the watch ended before the job");
            };
            match event.event.unwrap() {
                v1::job_event::Event::Task(t) if t.index == 2 => {
                    if let Some(p) = t.progress {
                        let first = resumed_at.get_or_insert(p.iteration);
                        *first = (*first).min(p.iteration);
                    }
                }
                v1::job_event::Event::Job(j)
                    if [JobState::Completed, JobState::Failed, JobState::Canceled]
                        .iter()
                        .any(|&s| j.state == s as i32) =>
                {
                    return client.job(&id).await.unwrap();
                }
                _ => {}
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(job.state, JobState::Completed as i32, "{}", job.error);
    let driver = &job.tasks[2];
    assert!(matches!(
        driver.spec.as_ref().unwrap().part,
        Some(Part::Assemble(_))
    ));
    assert_eq!(driver.progress.as_ref().unwrap().iteration, iterations);
    let resumed_at = resumed_at.expect("the resumed driver reported its progress");
    eprintln!(
        "a lock-step render of {iterations} iterations, its coordinator down ({restart:?}) after the first checkpoint (every 5): resumed at iteration {resumed_at}"
    );
    // Started over, it would report its first iterations again.
    assert!(resumed_at > 5, "the render started over at {resumed_at}");

    // With the optimiser's state in the checkpoint, the same path as without the restart.
    let resumed = result_of(&client, &job).await;
    let differ = resumed
        .pixels()
        .zip(uninterrupted.pixels())
        .filter(|(a, b)| a != b)
        .count();
    eprintln!("pixels that differ from the uninterrupted render: {differ}");
    assert_eq!(differ, 0);
    assert!(
        !checkpoint.exists(),
        "the checkpoint is deleted with the render"
    );
    worker.stop().await.unwrap();
    coordinator.stop().await.unwrap();
}
