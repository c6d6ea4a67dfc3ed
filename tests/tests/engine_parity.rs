//! A job rendered by the farm (coordinator + a worker with the real engine, over gRPC) gives
//! the same PNG bytes and losses as the engine alone with the same settings and seed.

use std::sync::Arc;

use candle_core::Device;
use stylefarm_core::layers::Pooling;
use stylefarm_engine::render::{render, RenderInputs};
use stylefarm_engine::vgg::Vgg;
use stylefarm_engine::weights::VggWeights;
use stylefarm_proto::v1::{JobState, TaskState};
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
