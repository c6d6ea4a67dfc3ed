//! The farm end to end with fake engines: batches shared by workers, a worker that dies
//! mid-task, a coordinator that restarts mid-job, big blobs, and bad job specs.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use stylefarm_coordinator::{Config, ManualClock, SystemClock};
use stylefarm_proto::v1::{
    self, FindMissingBlobsRequest, JobSpec, JobState, QueueStatsRequest, ReadBlobRequest, TaskState,
};
use stylefarm_proto::BLOB_CHUNK_BYTES;
use stylefarm_tests::*;
use stylefarm_worker::Engine;
use tonic::Code;

fn settings_of(j: &mut JobSpec) -> &mut v1::RenderSettings {
    j.settings.get_or_insert_with(Default::default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(dir.path()).await.unwrap();
    // The first two tasks wait for each other: only two workers at once get them past.
    let engine: Arc<dyn Engine> = Rendezvous::wrap(fake(Duration::from_millis(5)), 2);
    let w1 = Worker::start(coordinator.url(), "w1", engine.clone());
    let w2 = Worker::start(coordinator.url(), "w2", engine);
    let client = coordinator.client().await.unwrap();

    let frames: Vec<_> = (1..=6).map(|k| pattern(40, 30, k)).collect();
    let s = settings(32, 10);
    let refs: Vec<_> = frames.iter().collect();
    let id = submit(&client, &refs, &[&pattern(16, 16, 9)], &s)
        .await
        .unwrap();
    let job = await_job(&client, &id).await.unwrap();
    assert_eq!(job.state, JobState::Completed as i32, "{}", job.error);
    assert_eq!(job.tasks.len(), 6);
    let by: HashSet<&str> = job.tasks.iter().map(|t| t.worker_id.as_str()).collect();
    assert_eq!(by.len(), 2, "tasks by {by:?}");
    for t in &job.tasks {
        assert!(is(t, TaskState::Succeeded));
        let bytes = client.download(t.result.as_ref().unwrap()).await.unwrap();
        assert!(
            bytes == fake_result(&frames[t.index as usize], &s),
            "frame {}",
            t.index
        );
    }
    let workers = client.workers().await.unwrap();
    assert_eq!(workers.len(), 2);
    assert!(workers.iter().all(|w| w.tasks_done >= 1), "{workers:?}");
    assert_eq!(workers.iter().map(|w| w.tasks_done).sum::<u32>(), 6);

    w1.stop().await.unwrap();
    w2.stop().await.unwrap();
    coordinator.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_loses_its_lease_and_another_finishes_the_task_once() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::default());
    let config = Config::new(dir.path());
    let lease = config.lease_duration;
    let coordinator = Coordinator::start_with(config, clock.clone(), None)
        .await
        .unwrap();
    let client = coordinator.client().await.unwrap();
    let stuck = Worker::start(coordinator.url(), "stuck", Arc::new(Hang));

    let content = pattern(40, 30, 1);
    let s = settings(32, 20);
    let id = submit(&client, &[&content], &[&pattern(16, 16, 2)], &s)
        .await
        .unwrap();
    let mut events = client.watch(&id).await.unwrap();
    let running = next_event(&mut events, "the first worker to report progress", |e| {
        event_task(e).is_some_and(|t| t.progress.as_ref().is_some_and(|p| p.iteration >= 1))
    })
    .await
    .unwrap();
    let stuck_id = event_task(&running).unwrap().worker_id.clone();
    assert!(!stuck_id.is_empty());

    // Killed mid-task: no FailTask, no more heartbeats.
    stuck.kill();
    let rescuer = Worker::start(coordinator.url(), "rescuer", fake(Duration::from_millis(1)));
    clock.advance(lease + Duration::from_secs(1));
    next_event(&mut events, "the lapsed lease to put the task back", |e| {
        event_task(e).is_some_and(|t| is(t, TaskState::SoftFailed) || is(t, TaskState::Queued))
    })
    .await
    .unwrap();
    drop(events);

    let job = await_job(&client, &id).await.unwrap();
    assert_eq!(job.state, JobState::Completed as i32, "{}", job.error);
    let task = &job.tasks[0];
    assert!(is(task, TaskState::Succeeded));
    assert_ne!(task.worker_id, stuck_id);
    assert_eq!(
        task.attempts, 2,
        "the lapsed lease is one attempt, the rescue another"
    );
    let result = client.download(job.result.as_ref().unwrap()).await.unwrap();
    assert!(result == fake_result(&content, &s));

    // Counted once: one success, by the rescuer.
    let workers = client.workers().await.unwrap();
    let done = |id: &str| workers.iter().find(|w| w.id == id).map(|w| w.tasks_done);
    assert_eq!(done(&stuck_id), Some(0), "{workers:?}");
    assert_eq!(done(&task.worker_id), Some(1), "{workers:?}");
    let stats = client
        .admin
        .clone()
        .queue_stats(QueueStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.tasks_succeeded, 1, "{stats:?}");

    rescuer.stop().await.unwrap();
    coordinator.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_coordinator_finishes_the_job_and_keeps_its_history() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(dir.path()).await.unwrap();
    let addr = coordinator.addr();
    let worker = Worker::start(coordinator.url(), "w", fake(Duration::from_millis(10)));
    let client = coordinator.client().await.unwrap();

    let frames: Vec<_> = (1..=3).map(|k| pattern(40, 30, k)).collect();
    let s = settings(32, 30);
    let refs: Vec<_> = frames.iter().collect();
    let id = submit(&client, &refs, &[&pattern(16, 16, 9)], &s)
        .await
        .unwrap();
    let mut events = client.watch(&id).await.unwrap();
    let first = next_event(&mut events, "a first frame to succeed", |e| {
        event_task(e).is_some_and(|t| is(t, TaskState::Succeeded))
    })
    .await
    .unwrap();
    let first = event_task(&first).unwrap().clone();
    let before = client.job(&id).await.unwrap();
    drop(events);
    drop(client);

    // Dropped mid-job, as in a crash, and started again on the same data and address.
    coordinator.kill().await;
    let coordinator =
        Coordinator::start_with(Config::new(dir.path()), Arc::new(SystemClock), Some(addr))
            .await
            .unwrap();
    let client = coordinator.client().await.unwrap();

    let after = client.job(&id).await.unwrap();
    assert_eq!(after.created_unix_ms, before.created_unix_ms);
    assert_eq!(after.spec, before.spec);
    let ids = |job: &v1::Job| {
        job.tasks
            .iter()
            .map(|t| t.id.clone())
            .collect::<HashSet<_>>()
    };
    assert_eq!(ids(&after), ids(&before));
    let kept = after.tasks.iter().find(|t| t.id == first.id).unwrap();
    assert!(is(kept, TaskState::Succeeded));
    assert_eq!(kept.result, first.result);
    assert_eq!(kept.final_losses, first.final_losses);
    assert_eq!(kept.attempts, first.attempts);
    assert_eq!(kept.worker_id, first.worker_id);
    let earlier = client
        .download(kept.result.as_ref().unwrap())
        .await
        .unwrap();
    assert!(earlier == fake_result(&frames[first.index as usize], &s));

    // The worker finds the coordinator again and the job completes.
    let job = await_job(&client, &id).await.unwrap();
    assert_eq!(job.state, JobState::Completed as i32, "{}", job.error);
    assert_eq!(ids(&job), ids(&before));
    for t in &job.tasks {
        let bytes = client.download(t.result.as_ref().unwrap()).await.unwrap();
        assert!(
            bytes == fake_result(&frames[t.index as usize], &s),
            "frame {}",
            t.index
        );
    }
    assert_eq!(
        job.tasks.iter().find(|t| t.id == first.id).unwrap().result,
        first.result
    );

    worker.stop().await.unwrap();
    coordinator.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_over_4_mib_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(dir.path()).await.unwrap();
    let client = coordinator.client().await.unwrap();

    let data = random_bytes(5 * 1024 * 1024 + 123, 42);
    let blob = client.upload(&data).await.unwrap();
    assert_eq!(blob.size, data.len() as u64);
    let missing = client
        .blobs
        .clone()
        .find_missing_blobs(FindMissingBlobsRequest {
            sha256: vec![blob.sha256.clone(), "0".repeat(64)],
        })
        .await
        .unwrap()
        .into_inner()
        .missing;
    assert_eq!(missing, vec!["0".repeat(64)]);
    assert!(client.download(&blob).await.unwrap() == data);
    // Read in chunks under the message limit.
    let mut stream = client
        .blobs
        .clone()
        .read(ReadBlobRequest {
            sha256: blob.sha256.clone(),
            offset: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut chunks = 0;
    while let Some(m) = stream.message().await.unwrap() {
        assert!(m.data.len() <= BLOB_CHUNK_BYTES);
        chunks += 1;
    }
    assert!(chunks >= 6, "{chunks} chunks");

    // The same path for a job: a content image over 4 MiB goes to a worker and back.
    let worker = Worker::start(coordinator.url(), "w", fake(Duration::ZERO));
    let big = noise(1500, 1000, 7);
    assert!(png(&big).len() > 4 * 1024 * 1024);
    let s = settings(32, 2);
    let id = submit(&client, &[&big], &[&pattern(16, 16, 1)], &s)
        .await
        .unwrap();
    let job = await_job(&client, &id).await.unwrap();
    assert_eq!(job.state, JobState::Completed as i32, "{}", job.error);
    let result = client.download(job.result.as_ref().unwrap()).await.unwrap();
    assert!(result == fake_result(&big, &s));

    worker.stop().await.unwrap();
    coordinator.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_job_specs_are_refused_naming_the_field_and_the_farm_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(dir.path()).await.unwrap();
    let client = coordinator.client().await.unwrap();
    let content_img = pattern(40, 30, 1);
    let content = client.upload(&png(&content_img)).await.unwrap();
    let style = client.upload(&png(&pattern(16, 16, 2))).await.unwrap();
    let not_an_image = client.upload(b"hello, not an image").await.unwrap();
    let s = settings(32, 3);
    let good = job_spec(vec![content.clone()], vec![style.clone()], &s);

    type Change = Box<dyn Fn(&mut JobSpec)>;
    let cases: Vec<(&str, Change)> = vec![
        (
            "spec.settings.style_weight",
            Box::new(|j| settings_of(j).style_weight = Some(f32::NAN)),
        ),
        (
            "spec.settings.content_weight",
            Box::new(|j| settings_of(j).content_weight = Some(-1.0)),
        ),
        (
            "spec.settings.image_size",
            Box::new(|j| settings_of(j).image_size = Some(0)),
        ),
        (
            "spec.settings.num_iterations",
            Box::new(|j| settings_of(j).num_iterations = Some(100_001)),
        ),
        (
            "spec.settings.style_layers",
            Box::new(|j| settings_of(j).style_layers = vec!["relu9_9".into()]),
        ),
        (
            "spec.settings.optimizer",
            Box::new(|j| settings_of(j).optimizer = 42),
        ),
        (
            "spec.settings.style_blend_weights",
            Box::new(|j| settings_of(j).style_blend_weights = vec![1.0, 1.0]),
        ),
        (
            "spec.init_image",
            Box::new(|j| settings_of(j).init = v1::Init::Image as i32),
        ),
        ("spec.content", Box::new(|j| j.content.clear())),
        ("spec.styles", Box::new(|j| j.styles.clear())),
        (
            "spec.content[0]",
            Box::new(move |j| j.content[0] = not_an_image.clone()),
        ),
        (
            "spec.content[0]",
            Box::new(|j| j.content[0].sha256 = "0".repeat(64)),
        ),
        (
            "spec.content[0].sha256",
            Box::new(|j| j.content[0].sha256 = "../../etc/passwd".into()),
        ),
        ("spec.styles[0].size", Box::new(|j| j.styles[0].size += 1)),
        (
            "spec.content_names[0]",
            Box::new(|j| j.content_names = vec!["../x.png".into()]),
        ),
    ];
    for (field, change) in &cases {
        let mut spec = good.clone();
        change(&mut spec);
        let e = client.submit(spec).await.unwrap_err();
        assert_eq!(e.code(), Some(Code::InvalidArgument), "{field}: {e}");
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("invalid {field}: ")),
            "{field}: {text}"
        );
        // The client passes the coordinator's sentence through.
        assert_eq!(Some(text.as_str()), e.message());
    }
    assert!(
        client.list_jobs(0).await.unwrap().is_empty(),
        "a refused job was kept"
    );

    // Nothing else noticed: a good job runs.
    let worker = Worker::start(coordinator.url(), "w", fake(Duration::ZERO));
    let id = client.submit(good).await.unwrap();
    let job = await_job(&client, &id).await.unwrap();
    assert_eq!(job.state, JobState::Completed as i32, "{}", job.error);
    let result = client.download(job.result.as_ref().unwrap()).await.unwrap();
    assert!(result == fake_result(&content_img, &s));

    worker.stop().await.unwrap();
    coordinator.stop().await.unwrap();
}
