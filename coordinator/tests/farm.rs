//! The coordinator over real gRPC on 127.0.0.1:0: jobs from submission to result, blobs in
//! chunks, bad input, restarts, watching, leases, health.

mod common;

use std::time::Duration;

use common::*;
use stylefarm_coordinator::{Clock, Config};
use stylefarm_proto::v1::{self, job_event::Event};
use tokio::time::timeout;
use tonic::Code;

#[tokio::test]
async fn a_job_runs_from_submission_to_a_fetchable_result() {
    let dir = tempfile::tempdir().unwrap();
    let farm = Farm::start(dir.path()).await;
    let mut c = farm.clients().await;

    let spec = simple_spec(&mut c).await;
    let job_id = submit(&mut c, spec).await.unwrap();
    let job = get_job(&mut c, &job_id).await;
    assert_eq!(job_state(&job), v1::JobState::Queued);
    assert_eq!(job.tasks.len(), 1);
    let task = &job.tasks[0];
    assert_eq!(task_state(task), v1::TaskState::Queued);
    let spec = task.spec.as_ref().unwrap();
    assert_eq!(spec.output_name, "frame_0000.png");
    assert!(matches!(
        spec.part,
        Some(v1::task_spec::Part::Frame(v1::Frame { index: 0 }))
    ));

    let worker = register(&mut c, "cpu-1", 8 << 30).await;
    let lease = lease(&mut c, &worker, 0).await.expect("a task is ready");
    assert_eq!(lease.job_id, job_id);
    assert_eq!(lease.deadline_unix_ms, farm.clock.now_ms() + 30_000);
    let answer = update(&mut c, &lease.lease_id, 3).await.unwrap();
    assert!(!answer.cancel);
    let job = get_job(&mut c, &job_id).await;
    assert_eq!(job_state(&job), v1::JobState::Active);
    assert_eq!(task_state(&job.tasks[0]), v1::TaskState::Running);
    assert_eq!(job.tasks[0].progress.as_ref().unwrap().iteration, 3);
    assert_eq!(job.tasks[0].worker_id, worker);

    let output = png(16, 12, 9);
    let result = complete(&mut c, &lease.lease_id, &output).await.unwrap();
    let job = get_job(&mut c, &job_id).await;
    assert_eq!(job_state(&job), v1::JobState::Completed);
    assert_eq!(job.result.as_ref(), Some(&result));
    assert_eq!(job.tasks[0].final_losses.unwrap().total, 1.0);
    assert_eq!(download(&mut c, &result.sha256, 0).await.unwrap(), output);

    // The worker is told nothing more is there; the listings agree.
    assert!(common::lease(&mut c, &worker, 0).await.is_none());
    let workers = c
        .admin
        .list_workers(v1::ListWorkersRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(workers.workers.len(), 1);
    let w = &workers.workers[0];
    assert_eq!(
        (w.name.as_str(), w.tasks_done, w.current_task_id.as_str()),
        ("cpu-1", 1, "")
    );
    let stats = c
        .admin
        .queue_stats(v1::QueueStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (stats.tasks_succeeded, stats.tasks_queued, stats.workers),
        (1, 0, 1)
    );
    farm.stop().await;
}

#[tokio::test]
async fn a_blob_over_four_mib_round_trips_in_one_mib_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let farm = Farm::start(dir.path()).await;
    let mut c = farm.clients().await;
    let data: Vec<u8> = (0..5 * 1024 * 1024 + 123)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let sha = sha256(&data);

    let missing = c
        .blobs
        .find_missing_blobs(v1::FindMissingBlobsRequest {
            sha256: vec![sha.clone()],
        })
        .await
        .unwrap()
        .into_inner()
        .missing;
    assert_eq!(missing, vec![sha.clone()]);

    let blob = upload(&mut c, &data).await;
    assert_eq!(
        (blob.sha256.as_str(), blob.size),
        (sha.as_str(), data.len() as u64)
    );
    assert_eq!(download(&mut c, &sha, 0).await.unwrap(), data);
    assert_eq!(
        download(&mut c, &sha, 4_000_000).await.unwrap(),
        &data[4_000_000..]
    );
    assert!(download(&mut c, &sha, data.len() as u64)
        .await
        .unwrap()
        .is_empty());
    let e = download(&mut c, &sha, data.len() as u64 + 1)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");

    // Writing it again is fine.
    assert_eq!(upload(&mut c, &data).await, blob);
    let missing = c
        .blobs
        .find_missing_blobs(v1::FindMissingBlobsRequest {
            sha256: vec![sha.clone()],
        })
        .await
        .unwrap()
        .into_inner()
        .missing;
    assert!(missing.is_empty());

    let e = download(&mut c, &sha256(b"never stored"), 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    farm.stop().await;
}

#[tokio::test]
async fn bad_blob_writes_are_refused_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    config.max_blob_bytes = 3 * 1024 * 1024;
    let farm = Farm::start_with(config).await;
    let mut c = farm.clients().await;
    let data = vec![42u8; 1000];

    // Wrong hash.
    let wrong = sha256(b"something else");
    let e = c
        .blobs
        .write(tokio_stream::iter(write_requests(&data, &wrong, 400)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message()
            .starts_with("invalid sha256: the data's sha256 is"),
        "{}",
        e.message()
    );
    // Malformed hash, wrong size, oversized chunk, blob over the limit.
    let sha = sha256(&data);
    let cases = [
        (
            write_requests(&data, "ABC", 400),
            Code::InvalidArgument,
            "invalid sha256",
        ),
        (
            {
                let mut r = write_requests(&data, &sha, 400);
                r[0].size = 999;
                r
            },
            Code::InvalidArgument,
            "invalid data",
        ),
        (
            {
                let mut r = write_requests(&data, &sha, 400);
                r[0].size = 1001;
                r
            },
            Code::InvalidArgument,
            "invalid size",
        ),
        (
            write_requests(
                &vec![1u8; 1024 * 1024 + 1],
                &sha256(&vec![1u8; 1024 * 1024 + 1]),
                2 << 20,
            ),
            Code::InvalidArgument,
            "invalid data: a message carries 1048577 bytes",
        ),
        (
            write_requests(
                &vec![1u8; 3 * 1024 * 1024 + 1],
                &sha256(&vec![1u8; 3 * 1024 * 1024 + 1]),
                1 << 20,
            ),
            Code::ResourceExhausted,
            "over the limit",
        ),
        (Vec::new(), Code::InvalidArgument, "invalid sha256: missing"),
    ];
    for (reqs, code, text) in cases {
        let e = c.blobs.write(tokio_stream::iter(reqs)).await.unwrap_err();
        assert_eq!(e.code(), code, "{e:?}");
        assert!(
            e.message().contains(text),
            "{:?} lacks {text:?}",
            e.message()
        );
    }
    let missing = c
        .blobs
        .find_missing_blobs(v1::FindMissingBlobsRequest {
            sha256: vec![sha.clone(), wrong.clone()],
        })
        .await
        .unwrap()
        .into_inner()
        .missing;
    assert_eq!(missing, vec![sha, wrong]);
    let e = c
        .blobs
        .find_missing_blobs(v1::FindMissingBlobsRequest {
            sha256: vec!["nope".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("invalid sha256[0]"),
        "{}",
        e.message()
    );
    // Nothing half-written is left behind.
    assert_eq!(
        std::fs::read_dir(dir.path().join("blobs/tmp"))
            .unwrap()
            .count(),
        0
    );
    farm.stop().await;
}

#[tokio::test]
async fn bad_job_specs_are_refused_by_field_and_disturb_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    config.max_tasks_per_job = 4;
    let farm = Farm::start_with(config).await;
    let mut c = farm.clients().await;
    let good = simple_spec(&mut c).await;
    let not_an_image = upload(&mut c, b"this is not an image at all").await;
    let never_uploaded = v1::BlobRef {
        sha256: sha256(b"never uploaded"),
        size: 14,
    };
    let content = good.content[0].clone();
    let not_uploaded = format!(
        "invalid spec.content[1]: blob {} has not been uploaded",
        never_uploaded.sha256
    );

    // A job already running must not notice any of this.
    let running_job = submit(&mut c, good.clone()).await.unwrap();
    let worker = register(&mut c, "w", 0).await;
    let running = lease(&mut c, &worker, 0).await.unwrap();

    let with = |f: &dyn Fn(&mut v1::JobSpec)| {
        let mut s = good.clone();
        f(&mut s);
        s
    };
    let settings = |f: &dyn Fn(&mut v1::RenderSettings)| {
        with(&|s: &mut v1::JobSpec| f(s.settings.get_or_insert_with(Default::default)))
    };
    let cases: Vec<(v1::JobSpec, Code, &str)> = vec![
        (
            settings(&|s| s.style_weight = Some(f32::NAN)),
            Code::InvalidArgument,
            "invalid spec.settings.style_weight: NaN is not a finite, non-negative number",
        ),
        (
            settings(&|s| s.image_size = Some(0)),
            Code::InvalidArgument,
            "invalid spec.settings.image_size",
        ),
        (
            settings(&|s| s.style_layers = vec!["relu9_9".into()]),
            Code::InvalidArgument,
            "invalid spec.settings.style_layers",
        ),
        (
            settings(&|s| s.style_blend_weights = vec![1.0, 2.0]),
            Code::InvalidArgument,
            "invalid spec.settings.style_blend_weights",
        ),
        (
            with(&|s| s.content.clear()),
            Code::InvalidArgument,
            "invalid spec.content: at least one content image is needed",
        ),
        (
            with(&|s| s.styles.clear()),
            Code::InvalidArgument,
            "invalid spec.styles: at least one style image is needed",
        ),
        (
            with(&|s| s.content.push(never_uploaded.clone())),
            Code::InvalidArgument,
            &not_uploaded,
        ),
        (
            with(&|s| s.styles[0].sha256 = "xyz".into()),
            Code::InvalidArgument,
            "invalid spec.styles[0].sha256",
        ),
        (
            with(&|s| s.styles[0].size += 1),
            Code::InvalidArgument,
            "invalid spec.styles[0].size",
        ),
        (
            with(&|s| s.styles.push(not_an_image.clone())),
            Code::InvalidArgument,
            "invalid spec.styles[1]: blob",
        ),
        (
            settings(&|s| s.init = v1::Init::Image as i32),
            Code::InvalidArgument,
            "invalid spec.init_image: spec.settings.init is IMAGE",
        ),
        (
            with(&|s| s.init_image = Some(content.clone())),
            Code::InvalidArgument,
            "invalid spec.init_image: an init image was given",
        ),
        (
            with(&|s| s.content_names = vec!["a.png".into(), "b.png".into()]),
            Code::InvalidArgument,
            "invalid spec.content_names: 2 names for 1 content images",
        ),
        (
            with(&|s| s.content_names = vec!["../../etc/passwd".into()]),
            Code::InvalidArgument,
            "invalid spec.content_names[0]",
        ),
        (
            with(&|s| {
                s.tiles = Some(v1::TileOptions {
                    tile_size: 256,
                    tile_overlap: 256,
                })
            }),
            Code::InvalidArgument,
            "invalid spec.tiles.tile_overlap: 256 px is not smaller than the tile size",
        ),
        (
            with(&|s| {
                s.sweeps = vec![v1::Sweep {
                    parameter: "brightness".into(),
                    values: vec!["1".into()],
                }]
            }),
            Code::InvalidArgument,
            "invalid spec.sweeps[0].parameter: `brightness` cannot be swept",
        ),
        (
            with(&|s| {
                s.temporal = true;
                s.scales = Some(v1::Scales {
                    sizes: vec![16, 32],
                    iterations: vec![],
                });
            }),
            Code::InvalidArgument,
            "invalid spec.temporal: temporal rendering cannot be combined",
        ),
        (
            with(&|s| {
                s.scales = Some(v1::Scales {
                    sizes: vec![32, 16],
                    iterations: vec![],
                })
            }),
            Code::InvalidArgument,
            "invalid spec.scales.sizes: sizes must increase",
        ),
        (
            with(&|s| s.content = vec![content.clone(); 5]),
            Code::ResourceExhausted,
            "over the limit of 4 tasks per job",
        ),
    ];
    for (spec, code, text) in cases {
        let e = submit(&mut c, spec).await.unwrap_err();
        assert_eq!(e.code(), code, "{e:?}");
        assert!(
            e.message().starts_with(text)
                || (code != Code::InvalidArgument && e.message().contains(text)),
            "{:?} is not {text:?}",
            e.message()
        );
    }
    let e = c
        .jobs
        .submit_job(v1::SubmitJobRequest { spec: None })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            Code::InvalidArgument,
            "invalid spec: missing: a job needs a spec"
        )
    );

    // Bad ids.
    let e = c
        .jobs
        .get_job(v1::GetJobRequest {
            job_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("invalid job_id"), "{}", e.message());
    let unknown = stylefarm_proto::ids::JobId::new().to_string();
    let e = c
        .jobs
        .get_job(v1::GetJobRequest { job_id: unknown })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = c
        .workers
        .lease_task(v1::LeaseTaskRequest {
            worker_id: stylefarm_proto::ids::WorkerId::new().to_string(),
            wait_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = update(&mut c, "lease-123", 1).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // The running job carries on, and a good job submitted now completes.
    complete(&mut c, &running.lease_id, &png(4, 4, 3))
        .await
        .unwrap();
    assert_eq!(
        job_state(&get_job(&mut c, &running_job).await),
        v1::JobState::Completed
    );
    let job_id = submit(&mut c, good).await.unwrap();
    let l = lease(&mut c, &worker, 0).await.unwrap();
    assert_eq!(l.job_id, job_id);
    complete(&mut c, &l.lease_id, &png(4, 4, 4)).await.unwrap();
    assert_eq!(
        job_state(&get_job(&mut c, &job_id).await),
        v1::JobState::Completed
    );
    farm.stop().await;
}

/// Drives a two-frame job halfway: frame 0 done, frame 1 leased and reporting.
async fn half_done_job(c: &mut Clients) -> (String, String, v1::BlobRef, v1::Lease) {
    let mut spec = simple_spec(c).await;
    spec.content.push(spec.content[0].clone());
    spec.content_names = vec!["first.jpg".into(), "second.jpg".into()];
    let job_id = submit(c, spec).await.unwrap();
    let worker = register(c, "w", 0).await;
    let first = lease(c, &worker, 0).await.unwrap();
    let result = complete(c, &first.lease_id, &png(5, 5, 5)).await.unwrap();
    let second = lease(c, &worker, 0).await.unwrap();
    update(c, &second.lease_id, 2).await.unwrap();
    (job_id, worker, result, second)
}

/// After a restart: the job and its history are there, the leased task is queued again
/// without using an attempt, the old lease is refused, the finished result is readable, and
/// the job can be finished.
async fn check_after_restart(
    c: &mut Clients,
    job_id: &str,
    worker: &str,
    result: &v1::BlobRef,
    old: &v1::Lease,
) {
    let job = get_job(c, job_id).await;
    assert_eq!(job_state(&job), v1::JobState::Active);
    assert_eq!(task_state(&job.tasks[0]), v1::TaskState::Succeeded);
    assert_eq!(job.tasks[0].result.as_ref(), Some(result));
    assert_eq!(job.tasks[0].spec.as_ref().unwrap().output_name, "first.png");
    let t = &job.tasks[1];
    assert_eq!(task_state(t), v1::TaskState::Queued);
    assert_eq!(t.attempts, 0);
    assert_eq!(
        t.progress.as_ref().unwrap().iteration,
        2,
        "progress survives"
    );
    assert_eq!(download(c, &result.sha256, 0).await.unwrap(), png(5, 5, 5));

    let e = update(c, &old.lease_id, 3).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    // The worker is still known, takes the task again and finishes the job.
    let again = lease(c, worker, 0).await.unwrap();
    assert_eq!(again.task_id, old.task_id);
    assert_ne!(again.lease_id, old.lease_id);
    let e = complete(c, &old.lease_id, &png(6, 6, 6)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    complete(c, &again.lease_id, &png(6, 6, 7)).await.unwrap();
    assert_eq!(
        job_state(&get_job(c, job_id).await),
        v1::JobState::Completed
    );
    let jobs = c
        .jobs
        .list_jobs(v1::ListJobsRequest { limit: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(jobs.jobs.len(), 1);
}

#[tokio::test]
async fn a_graceful_restart_keeps_jobs_results_and_requeues_leased_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let farm = Farm::start(dir.path()).await;
    let mut c = farm.clients().await;
    let (job_id, worker, result, second) = half_done_job(&mut c).await;
    farm.stop().await;

    let farm = Farm::start(dir.path()).await;
    let mut c = farm.clients().await;
    check_after_restart(&mut c, &job_id, &worker, &result, &second).await;
    farm.stop().await;
}

#[tokio::test]
async fn a_crash_mid_job_loses_nothing_that_was_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    // The first coordinator runs on its own runtime, which is then dropped mid-job without
    // any shutdown: its tasks simply stop, as in a crash.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", std_listener.local_addr().unwrap());
    let config = Config::new(dir.path());
    rt.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
        stylefarm_coordinator::serve(listener, config, std::future::pending()).await
    });
    let channel = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = Clients {
        jobs: v1::job_service_client::JobServiceClient::new(channel.clone()),
        blobs: v1::blob_service_client::BlobServiceClient::new(channel.clone()),
        workers: v1::worker_service_client::WorkerServiceClient::new(channel.clone()),
        admin: v1::admin_service_client::AdminServiceClient::new(channel.clone()),
        channel,
    };
    let (job_id, worker, result, second) = half_done_job(&mut c).await;
    // Its tasks are dropped where they stand, without any shutdown. Dropping them is what
    // releases the data directory's lock (a real crash releases it with the process), so the
    // test waits for the runtime's threads to finish dropping them; otherwise the next
    // coordinator can start while the lock is still held, and refuse (seen in a CI rehearsal
    // on a loaded machine).
    tokio::task::spawn_blocking(move || rt.shutdown_timeout(Duration::from_secs(10)))
        .await
        .unwrap();
    drop(c);

    let farm = Farm::start(dir.path()).await;
    let mut c = farm.clients().await;
    check_after_restart(&mut c, &job_id, &worker, &result, &second).await;
    farm.stop().await;
}

async fn next(events: &mut tonic::Streaming<v1::JobEvent>) -> Option<v1::JobEvent> {
    timeout(PROMPTLY, events.message())
        .await
        .expect("an event arrives promptly")
        .unwrap()
}

#[tokio::test]
async fn watch_job_streams_a_snapshot_progress_and_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let farm = Farm::start(dir.path()).await;
    let mut c = farm.clients().await;
    let spec = simple_spec(&mut c).await;
    let job_id = submit(&mut c, spec).await.unwrap();
    let mut events = c
        .jobs
        .watch_job(v1::WatchJobRequest {
            job_id: job_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    match next(&mut events).await.and_then(|e| e.event) {
        Some(Event::Snapshot(job)) => {
            assert_eq!(job.id, job_id);
            assert_eq!(job.tasks.len(), 1);
        }
        other => panic!("expected a snapshot, got {other:?}"),
    }

    let worker = register(&mut c, "w", 0).await;
    let l = lease(&mut c, &worker, 0).await.unwrap();
    // Leased: a task event, and the job became active.
    let mut saw_active = false;
    let mut saw_leased = false;
    while !(saw_active && saw_leased) {
        match next(&mut events).await.and_then(|e| e.event) {
            Some(Event::Task(t)) => saw_leased |= task_state(&t) == v1::TaskState::Leased,
            Some(Event::Job(j)) => {
                assert!(j.tasks.is_empty());
                saw_active |= job_state(&j) == v1::JobState::Active;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    update(&mut c, &l.lease_id, 4).await.unwrap();
    match next(&mut events).await.and_then(|e| e.event) {
        Some(Event::Task(t)) => {
            assert_eq!(task_state(&t), v1::TaskState::Running);
            assert_eq!(t.progress.unwrap().iteration, 4);
        }
        other => panic!("expected the progress, got {other:?}"),
    }
    complete(&mut c, &l.lease_id, &png(3, 3, 3)).await.unwrap();
    let mut last = None;
    while let Some(event) = next(&mut events).await {
        last = event.event;
    }
    match last {
        Some(Event::Job(j)) => assert_eq!(job_state(&j), v1::JobState::Completed),
        other => panic!("expected the job's end, got {other:?}"),
    }
    // Watching a finished job: the snapshot, then the end.
    let mut events = c
        .jobs
        .watch_job(v1::WatchJobRequest { job_id })
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        next(&mut events).await.and_then(|e| e.event),
        Some(Event::Snapshot(_))
    ));
    assert!(next(&mut events).await.is_none());
    farm.stop().await;
}

#[tokio::test]
async fn a_lapsed_lease_goes_to_a_waiting_worker_and_the_old_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let farm = Farm::start(dir.path()).await;
    let mut c = farm.clients().await;
    let spec = simple_spec(&mut c).await;
    let job_id = submit(&mut c, spec).await.unwrap();
    let (a, b) = (
        register(&mut c, "a", 0).await,
        register(&mut c, "b", 0).await,
    );
    let first = lease(&mut c, &a, 0).await.unwrap();
    update(&mut c, &first.lease_id, 1).await.unwrap();

    // b waits in a long poll; the clock passes a's deadline; the expiry loop hands the task
    // to b well before b's poll would time out.
    let mut cb = c.clone();
    let b2 = b.clone();
    let waiting = tokio::spawn(async move { lease(&mut cb, &b2, 10_000).await });
    tokio::task::yield_now().await;
    farm.clock.advance(Duration::from_secs(31));
    let second = timeout(PROMPTLY, waiting)
        .await
        .unwrap()
        .unwrap()
        .expect("b gets the task");
    assert_eq!(second.task_id, first.task_id);

    let e = update(&mut c, &first.lease_id, 2).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let e = complete(&mut c, &first.lease_id, &png(2, 2, 2))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let job = get_job(&mut c, &job_id).await;
    assert_eq!(job.tasks[0].attempts, 2);
    assert_eq!(job.tasks[0].worker_id, b);
    assert!(
        job.tasks[0].error.contains("lease lapsed"),
        "{}",
        job.tasks[0].error
    );
    farm.stop().await;
}

#[tokio::test]
async fn a_waiting_worker_wakes_when_a_job_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let farm = Farm::start(dir.path()).await;
    let mut c = farm.clients().await;
    let worker = register(&mut c, "w", 0).await;
    // With nothing queued a short poll answers empty at once, with a hint.
    let empty = c
        .workers
        .lease_task(v1::LeaseTaskRequest {
            worker_id: worker.clone(),
            wait_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(empty.lease.is_none());
    assert!(empty.retry_after_ms > 0);

    let mut cw = c.clone();
    let w = worker.clone();
    let waiting = tokio::spawn(async move { lease(&mut cw, &w, 10_000).await });
    let spec = simple_spec(&mut c).await;
    let job_id = submit(&mut c, spec).await.unwrap();
    let l = timeout(PROMPTLY, waiting)
        .await
        .unwrap()
        .unwrap()
        .expect("woken with the task");
    assert_eq!(l.job_id, job_id);
    farm.stop().await;
}

#[tokio::test]
async fn cancel_reaches_the_running_worker_and_retry_runs_the_job_again() {
    let dir = tempfile::tempdir().unwrap();
    let farm = Farm::start(dir.path()).await;
    let mut c = farm.clients().await;
    let spec = simple_spec(&mut c).await;
    let job_id = submit(&mut c, spec).await.unwrap();
    let worker = register(&mut c, "w", 0).await;
    let l = lease(&mut c, &worker, 0).await.unwrap();
    update(&mut c, &l.lease_id, 1).await.unwrap();

    let job = c
        .jobs
        .cancel_job(v1::CancelJobRequest {
            job_id: job_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(job_state(&job), v1::JobState::Canceled);
    assert_eq!(job.error, "canceled");
    assert!(update(&mut c, &l.lease_id, 2).await.unwrap().cancel);
    c.workers
        .fail_task(v1::FailTaskRequest {
            lease_id: l.lease_id.clone(),
            kind: v1::FailureKind::Interrupted as i32,
            message: "canceled".into(),
        })
        .await
        .unwrap();
    let job = get_job(&mut c, &job_id).await;
    assert_eq!(task_state(&job.tasks[0]), v1::TaskState::Canceled);
    assert!(lease(&mut c, &worker, 0).await.is_none());

    let job = c
        .jobs
        .retry_job(v1::RetryJobRequest {
            job_id: job_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(job_state(&job), v1::JobState::Queued);
    let l = lease(&mut c, &worker, 0).await.unwrap();
    complete(&mut c, &l.lease_id, &png(2, 2, 1)).await.unwrap();
    assert_eq!(
        job_state(&get_job(&mut c, &job_id).await),
        v1::JobState::Completed
    );
    let e = c
        .jobs
        .retry_job(v1::RetryJobRequest {
            job_id: stylefarm_proto::ids::JobId::new().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    farm.stop().await;
}

#[tokio::test]
async fn a_task_that_keeps_failing_fails_the_job_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let farm = Farm::start(dir.path()).await;
    let mut c = farm.clients().await;
    let mut spec = simple_spec(&mut c).await;
    spec.max_attempts = 2;
    let job_id = submit(&mut c, spec).await.unwrap();
    let worker = register(&mut c, "w", 0).await;
    for _ in 0..2 {
        let l = lease(&mut c, &worker, 0).await.unwrap();
        c.workers
            .fail_task(v1::FailTaskRequest {
                lease_id: l.lease_id,
                kind: v1::FailureKind::Application as i32,
                message: "the content image vanished".into(),
            })
            .await
            .unwrap();
    }
    let job = get_job(&mut c, &job_id).await;
    assert_eq!(job_state(&job), v1::JobState::Failed);
    assert_eq!(task_state(&job.tasks[0]), v1::TaskState::Failed);
    assert!(
        job.error
            .contains("failed after 2 attempts: the content image vanished"),
        "{}",
        job.error
    );
    farm.stop().await;
}

#[tokio::test]
async fn health_answers_serving_and_reflection_lists_the_services() {
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    let dir = tempfile::tempdir().unwrap();
    let farm = Farm::start(dir.path()).await;
    let c = farm.clients().await;
    let mut health = HealthClient::new(c.channel.clone());
    for service in [
        "",
        "stylefarm.v1.JobService",
        "stylefarm.v1.BlobService",
        "stylefarm.v1.WorkerService",
        "stylefarm.v1.AdminService",
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }

    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut reflection = ServerReflectionClient::new(c.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "stylefarm.v1.JobService",
        "stylefarm.v1.WorkerService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    farm.stop().await;
}

#[tokio::test]
async fn shutdown_ends_open_long_polls_and_watch_streams() {
    let dir = tempfile::tempdir().unwrap();
    let farm = Farm::start(dir.path()).await;
    let mut c = farm.clients().await;
    let spec = simple_spec(&mut c).await;
    let job_id = submit(&mut c, spec).await.unwrap();
    let mut events = c
        .jobs
        .watch_job(v1::WatchJobRequest { job_id })
        .await
        .unwrap()
        .into_inner();
    assert!(events.message().await.unwrap().is_some());
    let worker = register(&mut c, "w", 0).await;
    let _busy = lease(&mut c, &worker, 0).await.unwrap();
    let mut cw = c.clone();
    let poll = tokio::spawn(async move {
        cw.workers
            .lease_task(v1::LeaseTaskRequest {
                worker_id: worker,
                wait_ms: 60_000,
            })
            .await
    });
    // Drain the lease events so the stream is idle.
    tokio::task::yield_now().await;
    farm.stop().await;
    let answer = timeout(PROMPTLY, poll).await.unwrap().unwrap();
    if let Ok(answer) = answer {
        assert!(answer.into_inner().lease.is_none());
    }
    let end = timeout(PROMPTLY, async {
        loop {
            match events.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(e) => return Some(e.code()),
            }
        }
    })
    .await
    .expect("the stream ends");
    assert!(
        matches!(
            end,
            None | Some(Code::Unavailable) | Some(Code::Unknown) | Some(Code::Cancelled)
        ),
        "{end:?}"
    );
}

#[tokio::test]
async fn a_farm_token_is_required_when_set() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    config.token = Some("s3cret".into());
    let farm = Farm::start_with(config).await;
    let mut c = farm.clients().await;
    let e = c
        .jobs
        .list_jobs(v1::ListJobsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut request = tonic::Request::new(v1::ListJobsRequest::default());
    request
        .metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    assert!(c.jobs.list_jobs(request).await.is_ok());
    let mut request = tonic::Request::new(v1::ListJobsRequest::default());
    request
        .metadata_mut()
        .insert("authorization", "Bearer wrong".parse().unwrap());
    assert_eq!(
        c.jobs.list_jobs(request).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    // Health stays open for probes.
    let mut health = tonic_health::pb::health_client::HealthClient::new(c.channel.clone());
    assert!(health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new()
        })
        .await
        .is_ok());
    farm.stop().await;
}

#[tokio::test]
async fn a_bad_data_dir_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = stylefarm_coordinator::serve(listener, Config::new(&file), std::future::pending())
        .await
        .unwrap_err();
    let text = format!("{e:#}");
    assert!(text.contains("cannot create the data directory"), "{text}");
}

#[tokio::test]
async fn list_jobs_shows_the_newest_first_without_task_specs() {
    let dir = tempfile::tempdir().unwrap();
    let farm = Farm::start(dir.path()).await;
    let mut c = farm.clients().await;
    let spec = simple_spec(&mut c).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(submit(&mut c, spec.clone()).await.unwrap());
    }
    let listed = c
        .jobs
        .list_jobs(v1::ListJobsRequest { limit: 2 })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    let listed_ids: Vec<&str> = listed.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(listed_ids, [ids[2].as_str(), ids[1].as_str()]);
    assert_eq!(listed[0].tasks.len(), 1);
    assert!(listed[0].tasks[0].spec.is_none());
    assert_eq!(listed[0].spec.as_ref().unwrap().name, "test");
    let stats = c
        .admin
        .queue_stats(v1::QueueStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (stats.jobs_queued, stats.tasks_queued, stats.workers),
        (3, 3, 0)
    );
    farm.stop().await;
}
