//! How fast the farm reacts: a cancel stops a running task within a second, and a watcher
//! sees progress within a second of the engine reporting it. (A test binary of their own, so
//! that the other end-to-end tests do not compete with them for the CPU.)

use std::time::{Duration, Instant};

use stylefarm_proto::v1::{job_event::Event, JobState, TaskState};
use stylefarm_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_task_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(dir.path()).await.unwrap();
    let (probe, mut log) = Probe::wrap(fake(Duration::from_millis(20)));
    let worker = Worker::start(coordinator.url(), "w", probe);
    let client = coordinator.client().await.unwrap();

    let id = submit(
        &client,
        &[&pattern(40, 30, 1)],
        &[&pattern(16, 16, 2)],
        &settings(32, 10_000),
    )
    .await
    .unwrap();
    probe_until(&mut log, "the task to start", |l| !l.iterations.is_empty())
        .await
        .unwrap();
    let asked = Instant::now();
    client.cancel(&id).await.unwrap();
    let seen = probe_until(&mut log, "the render to stop", |l| !l.ended.is_empty())
        .await
        .unwrap();
    let (stopped, how) = &seen.ended[0];
    assert_eq!(*how, RunEnd::Cancelled);
    let took = stopped.saturating_duration_since(asked);
    assert!(
        took < Duration::from_secs(1),
        "the worker took {took:?} to stop"
    );

    let job = await_job(&client, &id).await.unwrap();
    assert_eq!(job.state, JobState::Canceled as i32);
    assert!(is(&job.tasks[0], TaskState::Canceled));

    // The worker is free again.
    let content = pattern(40, 30, 3);
    let s = settings(32, 3);
    let next = submit(&client, &[&content], &[&pattern(16, 16, 2)], &s)
        .await
        .unwrap();
    let job = await_job(&client, &next).await.unwrap();
    assert_eq!(job.state, JobState::Completed as i32, "{}", job.error);

    worker.stop().await.unwrap();
    coordinator.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_shows_progress_within_a_second_of_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(dir.path()).await.unwrap();
    let (probe, log) = Probe::wrap(fake(Duration::from_millis(25)));
    let worker = Worker::start(coordinator.url(), "w", probe);
    let client = coordinator.client().await.unwrap();

    let id = submit(
        &client,
        &[&pattern(40, 30, 1)],
        &[&pattern(16, 16, 2)],
        &settings(32, 80),
    )
    .await
    .unwrap();
    let mut events = client.watch(&id).await.unwrap();
    let mut checked = 0;
    let mut last = 0;
    loop {
        let event = within("the next job event", events.message())
            .await
            .unwrap()
            .unwrap();
        let Some(event) = event else { break };
        match event.event {
            Some(Event::Task(t)) if is(&t, TaskState::Running) => {
                let arrived = Instant::now();
                let Some(p) = t.progress else { continue };
                if p.iteration <= last {
                    continue;
                }
                last = p.iteration;
                let reported = log
                    .borrow()
                    .iterations
                    .iter()
                    .find(|(i, _)| *i == p.iteration)
                    .map(|(_, at)| *at)
                    .expect("the engine reported the iteration the watch shows");
                let lag = arrived.saturating_duration_since(reported);
                assert!(
                    lag < Duration::from_secs(1),
                    "iteration {} reached the watcher {lag:?} after the engine reported it",
                    p.iteration
                );
                checked += 1;
            }
            Some(Event::Job(j)) if j.state == JobState::Completed as i32 => break,
            _ => {}
        }
    }
    assert!(checked >= 3, "only {checked} progress events were seen");

    worker.stop().await.unwrap();
    coordinator.stop().await.unwrap();
}
