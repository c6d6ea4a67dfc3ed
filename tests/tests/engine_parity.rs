//! A job rendered by the farm (coordinator + a worker with the real engine, over gRPC) gives
//! the same PNG bytes and losses as the engine alone with the same settings and seed; a tiled
//! job on the real engine lowers the whole image's objective with each pass over the tiles.

use std::sync::Arc;

use candle_core::Device;
use stylefarm_engine::image_io::image_to_tensor;
use stylefarm_engine::layers::Pooling;
use stylefarm_engine::objective::Objective;
use stylefarm_engine::render::{render, style_targets, RenderInputs};
use stylefarm_engine::settings::{Init, TermWeights};
use stylefarm_engine::statistics::ImageStatistics;
use stylefarm_engine::tiles::{seam_score, TileGrid};
use stylefarm_engine::vgg::Vgg;
use stylefarm_engine::weights::VggWeights;
use stylefarm_proto::v1::{self, task_spec::Part, JobState, TaskState};
use stylefarm_tests::*;
use stylefarm_worker::CandleEngine;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_farm_job_gives_the_engines_own_png() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(dir.path()).await.unwrap();
    let engine = Arc::new(CandleEngine::load(&tiny_vgg16()).unwrap());
    let worker = Worker::start(coordinator.url(), "real", engine);
    let client = coordinator.client().await.unwrap();

    let content = pattern(40, 32, 1);
    let style = pattern(36, 30, 3);
    let mut settings = settings(40, 5);
    settings.seed = 7;
    let id = submit(&client, &[&content], &[&style], &settings)
        .await
        .unwrap();
    let job = await_job(&client, &id).await.unwrap();
    assert_eq!(job.state, JobState::Completed as i32, "{job:?}");
    let task = &job.tasks[0];
    assert_eq!(task.state, TaskState::Succeeded as i32);
    let farm_png = client.download(job.result.as_ref().unwrap()).await.unwrap();

    let vgg = Vgg::new(
        VggWeights::load(&tiny_vgg16(), &Device::Cpu).unwrap(),
        Pooling::Max,
    )
    .unwrap();
    let inputs = RenderInputs {
        content,
        styles: vec![style],
        init_image: None,
    };
    let alone = render(&vgg, &inputs, &settings, &mut ()).unwrap();
    assert_eq!(alone.image.dimensions(), (40, 32));
    assert!(
        farm_png == png(&alone.image),
        "the farm's PNG differs from the engine's"
    );
    let l = task.final_losses.unwrap();
    assert_eq!(
        (l.content, l.style, l.tv, l.total),
        (
            alone.losses.content,
            alone.losses.style,
            alone.losses.tv,
            alone.losses.total
        )
    );

    worker.stop().await.unwrap();
    coordinator.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiled_job_on_the_real_engine_gets_better_with_each_pass() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(dir.path()).await.unwrap();
    let engine = Arc::new(CandleEngine::load(&tiny_vgg16()).unwrap());
    let workers = [
        Worker::start(coordinator.url(), "a", engine.clone()),
        Worker::start(coordinator.url(), "b", engine),
    ];
    let client = coordinator.client().await.unwrap();

    let content = pattern(96, 72, 1);
    let style = pattern(48, 40, 3);
    let mut settings = settings(96, 8);
    settings.init = Init::Content;
    let blobs = client
        .upload_all(&[&png(&content), &png(&style)])
        .await
        .unwrap();
    let mut spec = job_spec(vec![blobs[0].clone()], vec![blobs[1].clone()], &settings);
    spec.tiles = Some(v1::TileOptions {
        tile_size: 64,
        tile_overlap: 16,
        passes: 2,
    });
    let id = client.submit(spec).await.unwrap();
    let job = await_job(&client, &id).await.unwrap();
    assert_eq!(job.state, JobState::Completed as i32, "{}", job.error);
    // Per pass: the statistics, 2x2 tiles of 4 iterations each, the blend.
    assert_eq!(job.tasks.len(), 2 * (1 + 4 + 1));
    let image_of = |i: usize| {
        let client = client.clone();
        let blob = job.tasks[i].result.clone().unwrap();
        async move { decode(&client.download(&blob).await.unwrap()).unwrap() }
    };
    let first = image_of(5).await;
    let tiled = decode(&client.download(job.result.as_ref().unwrap()).await.unwrap()).unwrap();
    assert_eq!(tiled.dimensions(), (96, 72));

    let vgg = Vgg::new(
        VggWeights::load(&tiny_vgg16(), &Device::Cpu).unwrap(),
        Pooling::Max,
    )
    .unwrap();
    // The statistics blob holds the whole image's style targets.
    let blob = client
        .download(job.tasks[0].result.as_ref().unwrap())
        .await
        .unwrap();
    let statistics = ImageStatistics::decode(&blob, &vgg, &settings.style_layers).unwrap();
    let targets = style_targets(&vgg, std::slice::from_ref(&style), &settings).unwrap();
    for ((_, shipped), (_, own)) in statistics.style.layers.iter().zip(&targets.layers) {
        let d = (shipped - own).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-3);
    }

    // The whole image's objective: the start, after pass 1, after pass 2, untiled.
    let pre = vgg.preprocess();
    let tensor = |img| image_to_tensor(img, pre, &Device::Cpu).unwrap();
    let weights = TermWeights {
        content: settings.content_weight,
        style: settings.style_weight,
        tv: settings.tv_weight,
    };
    let objective = Objective::new(
        &vgg,
        &tensor(&content),
        &settings.content_layers,
        &targets,
        weights,
    )
    .unwrap();
    let total = |img| {
        let x = tensor(img).flatten_all().unwrap().to_vec1::<f32>().unwrap();
        objective.losses(&x).unwrap().total
    };
    let inputs = RenderInputs {
        content: content.clone(),
        styles: vec![style],
        init_image: None,
    };
    let untiled = render(&vgg, &inputs, &settings, &mut ()).unwrap();
    let (start, pass1, pass2) = (total(&content), total(&first), total(&tiled));
    let whole = total(&untiled.image);
    assert!(
        pass2 < pass1 && pass1 < start,
        "start {start}, pass 1 {pass1}, pass 2 {pass2} (untiled {whole})"
    );
    // The seam score against the untiled render is measured, and finite.
    let grid = TileGrid::new(96, 72, 64, 16).unwrap();
    let score = seam_score(&grid, &tiled, &untiled.image).unwrap();
    assert!(score.is_finite() && score > 0.0, "{score}");
    let rendered_tiles = job
        .tasks
        .iter()
        .filter(|t| {
            matches!(
                t.spec.as_ref().and_then(|s| s.part.as_ref()),
                Some(Part::Tile(_))
            )
        })
        .count();
    assert_eq!(rendered_tiles, 8);
    eprintln!(
        "tiny tiled render: start {start:.4e}, pass 1 {pass1:.4e}, pass 2 {pass2:.4e}, \
         untiled {whole:.4e}, seam score {score:.3}"
    );

    for w in workers {
        w.stop().await.unwrap();
    }
    coordinator.stop().await.unwrap();
}
