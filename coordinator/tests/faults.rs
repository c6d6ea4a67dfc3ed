//! Faults against one coordinator over raw gRPC: duplicate and out-of-order worker calls, a
//! partitioned worker's late calls after its lease lapsed, clients that vanish mid-upload and
//! mid-stream, and a full disk under the data directory (a small tmpfs, as root). The faults
//! that need the real binary are in `crash.rs`.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use stylefarm_coordinator::Config;
use stylefarm_proto::ids::{LeaseId, WorkerId};
use stylefarm_proto::v1::{self, job_event::Event};
use tokio::time::timeout;
use tonic::{Code, Status};

/// A gRPC call's outcome.
type Call<T> = Result<T, Status>;

async fn update_raw(c: &mut Clients, lease: &str) -> Call<v1::UpdateTaskResponse> {
    update(c, lease, 1).await
}

async fn fail_raw(c: &mut Clients, lease: &str) -> Call<()> {
    c.workers
        .fail_task(v1::FailTaskRequest {
            lease_id: lease.into(),
            kind: v1::FailureKind::Application as i32,
            message: "bad pixels".into(),
        })
        .await
        .map(drop)
}

async fn workers(c: &mut Clients) -> HashMap<String, v1::WorkerInfo> {
    let list = c.admin.list_workers(v1::ListWorkersRequest {}).await;
    let list = list.unwrap().into_inner().workers;
    list.into_iter().map(|w| (w.id.clone(), w)).collect()
}

async fn succeeded(c: &mut Clients) -> u32 {
    let stats = c.admin.queue_stats(v1::QueueStatsRequest {}).await;
    stats.unwrap().into_inner().tasks_succeeded
}

fn refused(call: Call<impl std::fmt::Debug>, code: Code, what: &str) {
    match call {
        Err(s) => assert_eq!(s.code(), code, "{what}: {s:?}"),
        Ok(v) => panic!("{what} was accepted: {v:?}"),
    }
}

#[tokio::test]
async fn duplicate_and_out_of_order_worker_calls_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let farm = Farm::start(dir.path()).await;
    let mut c = farm.clients().await;
    let mut spec = simple_spec(&mut c).await;
    spec.content.push(spec.content[0].clone());
    spec.content_names = vec!["a.png".into(), "b.png".into()];
    let job_id = submit(&mut c, spec).await.unwrap();
    let w = register(&mut c, "w", 0).await;

    // Calls for leases that were never granted, and for a worker nobody registered.
    let never = LeaseId::new().to_string();
    let never = never.as_str();
    refused(
        update_raw(&mut c, never).await,
        Code::FailedPrecondition,
        "update",
    );
    refused(
        fail_raw(&mut c, never).await,
        Code::FailedPrecondition,
        "fail",
    );
    let some_png = upload(&mut c, &png(3, 3, 3)).await;
    refused(
        complete_raw(&mut c, never, &some_png).await,
        Code::FailedPrecondition,
        "complete",
    );
    refused(
        complete_raw(&mut c, "x", &some_png).await,
        Code::InvalidArgument,
        "a bad lease id",
    );
    let unknown = c
        .workers
        .lease_task(v1::LeaseTaskRequest {
            worker_id: WorkerId::new().to_string(),
            wait_ms: 0,
        })
        .await;
    refused(unknown, Code::NotFound, "a lease for an unknown worker");

    // Completed without any progress first: accepted. The same completion again (a retry
    // whose answer was lost), and any later call on that lease: refused, nothing changes.
    let first = lease(&mut c, &w, 0).await.unwrap();
    let result = complete(&mut c, &first.lease_id, &png(4, 4, 4))
        .await
        .unwrap();
    let other = upload(&mut c, &png(4, 4, 5)).await;
    refused(
        complete_raw(&mut c, &first.lease_id, &result).await,
        Code::FailedPrecondition,
        "a duplicate completion",
    );
    refused(
        complete_raw(&mut c, &first.lease_id, &other).await,
        Code::FailedPrecondition,
        "a second result",
    );
    refused(
        update_raw(&mut c, &first.lease_id).await,
        Code::FailedPrecondition,
        "progress after the end",
    );
    refused(
        fail_raw(&mut c, &first.lease_id).await,
        Code::FailedPrecondition,
        "a failure after success",
    );

    // Failed, then the same failure again and a completion after it: refused.
    let second = lease(&mut c, &w, 0).await.unwrap();
    assert_ne!(second.task_id, first.task_id);
    fail_raw(&mut c, &second.lease_id).await.unwrap();
    refused(
        fail_raw(&mut c, &second.lease_id).await,
        Code::FailedPrecondition,
        "a duplicate failure",
    );
    refused(
        complete_raw(&mut c, &second.lease_id, &other).await,
        Code::FailedPrecondition,
        "a result after failing",
    );

    let job = get_job(&mut c, &job_id).await;
    assert_eq!(task_state(&job.tasks[0]), v1::TaskState::Succeeded);
    assert_eq!(job.tasks[0].result.as_ref(), Some(&result));
    assert_eq!(job.tasks[0].attempts, 1);
    assert_eq!(task_state(&job.tasks[1]), v1::TaskState::SoftFailed);
    assert_eq!(job.tasks[1].attempts, 1);
    let info = workers(&mut c).await;
    assert_eq!(
        (info[&w].tasks_done, info[&w].tasks_failed),
        (1, 1),
        "each counted once"
    );

    // The retry runs and the job ends with one success per task.
    let third = lease(&mut c, &w, 0).await.unwrap();
    assert_eq!(third.task_id, second.task_id);
    complete(&mut c, &third.lease_id, &png(4, 4, 6))
        .await
        .unwrap();
    let job = get_job(&mut c, &job_id).await;
    assert_eq!(job_state(&job), v1::JobState::Completed);
    assert_eq!(succeeded(&mut c).await, 2);
    farm.stop().await;
}

/// The task events a watch stream carries until the job ends.
async fn task_events(mut events: tonic::Streaming<v1::JobEvent>) -> Vec<v1::Task> {
    let mut tasks = Vec::new();
    while let Some(e) = timeout(PROMPTLY, events.message()).await.unwrap().unwrap() {
        if let Some(Event::Task(t)) = e.event {
            tasks.push(t);
        }
    }
    tasks
}

#[tokio::test]
async fn a_partitioned_worker_is_fenced_and_the_task_is_done_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let farm = Farm::start(dir.path()).await;
    let mut c = farm.clients().await;
    let spec = simple_spec(&mut c).await;
    let job_id = submit(&mut c, spec).await.unwrap();
    let (a, b) = (
        register(&mut c, "a", 0).await,
        register(&mut c, "b", 0).await,
    );
    let events = c
        .jobs
        .watch_job(v1::WatchJobRequest {
            job_id: job_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let watched = tokio::spawn(task_events(events));

    // a leases and reports, then goes silent (partitioned) past its deadline; b takes over.
    let stale = lease(&mut c, &a, 0).await.unwrap();
    update(&mut c, &stale.lease_id, 1).await.unwrap();
    farm.clock.advance(Duration::from_secs(31));
    let fresh = timeout(PROMPTLY, lease(&mut c, &b, 5_000))
        .await
        .unwrap()
        .expect("b gets the lapsed task");
    assert_eq!(fresh.task_id, stale.task_id);

    // a's late calls arrive while b works, then after b has finished: all refused.
    let late = upload(&mut c, &png(7, 7, 7)).await;
    refused(
        update_raw(&mut c, &stale.lease_id).await,
        Code::FailedPrecondition,
        "late progress",
    );
    refused(
        complete_raw(&mut c, &stale.lease_id, &late).await,
        Code::FailedPrecondition,
        "a late result",
    );
    update(&mut c, &fresh.lease_id, 2).await.unwrap();
    let result = complete(&mut c, &fresh.lease_id, &png(8, 8, 8))
        .await
        .unwrap();
    refused(
        update_raw(&mut c, &stale.lease_id).await,
        Code::FailedPrecondition,
        "progress after the rescue",
    );
    refused(
        complete_raw(&mut c, &stale.lease_id, &late).await,
        Code::FailedPrecondition,
        "a result after the rescue",
    );
    refused(
        fail_raw(&mut c, &stale.lease_id).await,
        Code::FailedPrecondition,
        "a failure after the rescue",
    );

    let job = get_job(&mut c, &job_id).await;
    assert_eq!(job_state(&job), v1::JobState::Completed);
    let task = &job.tasks[0];
    assert_eq!(task.result.as_ref(), Some(&result), "b's result, not a's");
    assert_eq!((task.attempts, task.worker_id.as_str()), (2, b.as_str()));
    let info = workers(&mut c).await;
    assert_eq!(
        (info[&a].tasks_done, info[&a].tasks_failed),
        (0, 1),
        "the lapse, once"
    );
    assert_eq!((info[&b].tasks_done, info[&b].tasks_failed), (1, 0));
    assert_eq!(succeeded(&mut c).await, 1);
    let seen = timeout(PROMPTLY, watched).await.unwrap().unwrap();
    let successes = seen
        .iter()
        .filter(|t| task_state(t) == v1::TaskState::Succeeded)
        .count();
    assert_eq!(successes, 1, "watchers hear of one success: {seen:?}");
    farm.stop().await;
}

/// Waits until `check` holds, polling.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let until = Instant::now() + PROMPTLY;
    while !check() {
        assert!(Instant::now() < until, "not within {PROMPTLY:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_client_gone_mid_upload_leaves_no_blob_and_the_upload_can_be_made_again() {
    let dir = tempfile::tempdir().unwrap();
    let farm = Farm::start(dir.path()).await;
    let mut c = farm.clients().await;
    let data: Vec<u8> = (0..3_500_000u32).map(|i| (i * 7 / 3) as u8).collect();
    let sha = sha256(&data);

    let mut gone = clients_of(&farm.url).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let call = tokio::spawn(async move {
        gone.blobs
            .write(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    let chunks = write_requests(&data, &sha, stylefarm_proto::BLOB_CHUNK_BYTES);
    for chunk in chunks.iter().take(2).cloned() {
        tx.send(chunk).await.unwrap();
    }
    let written = |dir: &Path| {
        std::fs::read_dir(dir.join("blobs/tmp"))
            .map(|d| {
                d.flatten()
                    .any(|f| f.metadata().is_ok_and(|m| m.len() > 1 << 20))
            })
            .unwrap_or(false)
    };
    eventually("the coordinator to be writing the blob", || {
        written(dir.path())
    })
    .await;
    // The client vanishes mid-stream: its call and connection are dropped.
    call.abort();
    drop(tx);
    eventually("the partial blob to be removed", || {
        temporary_blobs(dir.path()) == 0
    })
    .await;
    assert!(missing(&mut c, &sha).await, "no partial blob is visible");
    assert!(!dir.path().join("blobs").join(&sha[..2]).join(&sha).exists());

    let blob = upload(&mut c, &data).await;
    assert_eq!(blob.size, data.len() as u64);
    assert_eq!(download(&mut c, &sha, 0).await.unwrap(), data);
    farm.stop().await;
}

#[tokio::test]
async fn clients_gone_mid_stream_leave_the_farm_serving_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let farm = Farm::start(dir.path()).await;
    let mut c = farm.clients().await;
    let data: Vec<u8> = (0..3_500_000u32).map(|i| (i % 251) as u8).collect();
    let blob = upload(&mut c, &data).await;
    let spec = simple_spec(&mut c).await;
    let job_id = submit(&mut c, spec).await.unwrap();
    let watch = |c: &mut Clients| {
        let mut jobs = c.jobs.clone();
        let job_id = job_id.clone();
        async move {
            jobs.watch_job(v1::WatchJobRequest { job_id })
                .await
                .unwrap()
                .into_inner()
        }
    };

    // One client reads a chunk of the blob and the job's snapshot, then vanishes.
    let mut gone = clients_of(&farm.url).await;
    let mut read = gone
        .blobs
        .read(v1::ReadBlobRequest {
            sha256: blob.sha256.clone(),
            offset: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(read.message().await.unwrap().is_some());
    let mut events = watch(&mut gone).await;
    assert!(events.message().await.unwrap().is_some());
    drop((read, events, gone));

    // The others go on: a watcher hears the job through to its end, the blob reads whole.
    let staying = tokio::spawn(task_events(watch(&mut c).await));
    let w = register(&mut c, "w", 0).await;
    let l = lease(&mut c, &w, 0).await.unwrap();
    update(&mut c, &l.lease_id, 1).await.unwrap();
    complete(&mut c, &l.lease_id, &png(4, 4, 4)).await.unwrap();
    let seen = timeout(PROMPTLY, staying).await.unwrap().unwrap();
    assert!(seen
        .iter()
        .any(|t| task_state(t) == v1::TaskState::Succeeded));
    assert_eq!(download(&mut c, &blob.sha256, 0).await.unwrap(), data);
    farm.stop().await;
}

// ---------------------------------------------------------------------------------------------
// A full disk

async fn job_ids(c: &mut Clients) -> Vec<String> {
    let jobs = c.jobs.list_jobs(v1::ListJobsRequest { limit: 1000 }).await;
    jobs.unwrap()
        .into_inner()
        .jobs
        .into_iter()
        .map(|j| j.id)
        .collect()
}

#[tokio::test]
async fn a_full_disk_is_a_clear_error_that_changes_nothing_and_passes_once_space_is_freed() {
    let Some(disk) = Tmpfs::mount("8m") else {
        return;
    };
    let data = disk.path().join("data");
    let farm = Farm::start(&data).await;
    let mut c = farm.clients().await;
    let spec = simple_spec(&mut c).await;
    let kept = submit(&mut c, spec.clone()).await.unwrap();
    // A job of 40 frames: its rows take several pages.
    let mut big = spec.clone();
    big.content = vec![spec.content[0].clone(); 40];
    big.content_names = (0..40).map(|i| format!("frame{i}.png")).collect();
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i * 13 / 7) as u8).collect();
    let sha = sha256(&blob);

    fill(&disk.path().join("filler"));
    let e = submit(&mut c, big.clone()).await.unwrap_err();
    println!("a submit on a full disk: {:?}: {}", e.code(), e.message());
    assert!(
        matches!(e.code(), Code::ResourceExhausted | Code::Unavailable),
        "{e:?}"
    );
    assert!(e.message().contains("disk is full"), "{e:?}");
    let chunks = write_requests(&blob, &sha, stylefarm_proto::BLOB_CHUNK_BYTES);
    let e = c
        .blobs
        .write(tokio_stream::iter(chunks.clone()))
        .await
        .unwrap_err();
    println!("an upload on a full disk: {:?}: {}", e.code(), e.message());
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("disk is full"), "{e:?}");
    assert!(missing(&mut c, &sha).await, "no partial blob is visible");
    assert_eq!(temporary_blobs(&data), 0);
    // What was acknowledged is there; what was refused is not, now or after a restart.
    assert_eq!(job_ids(&mut c).await, vec![kept.clone()]);
    assert_eq!(integrity(&data), "ok");
    farm.stop().await;
    // Restarted on the full disk, it either serves what it had, or (as now: opening the
    // database writes its schema version) refuses to start, saying why.
    match Farm::try_start(Config::new(&data)).await {
        Ok(farm) => {
            let mut c = farm.clients().await;
            assert_eq!(job_ids(&mut c).await, vec![kept.clone()]);
            farm.stop().await;
        }
        Err(e) => {
            println!("a restart on the full disk: {e}");
            assert!(e.contains("disk is full"), "{e}");
        }
    }
    assert_eq!(integrity(&data), "ok");

    // Space returns: the same calls pass, and stay.
    std::fs::remove_file(disk.path().join("filler")).unwrap();
    let farm = Farm::start(&data).await;
    let mut c = farm.clients().await;
    assert_eq!(job_ids(&mut c).await, vec![kept.clone()]);
    let again = submit(&mut c, big).await.unwrap();
    c.blobs.write(tokio_stream::iter(chunks)).await.unwrap();
    farm.stop().await;
    let farm = Farm::start(&data).await;
    let mut c = farm.clients().await;
    assert_eq!(job_ids(&mut c).await, vec![again, kept]);
    assert_eq!(download(&mut c, &sha, 0).await.unwrap(), blob);
    farm.stop().await;
    assert_eq!(integrity(&data), "ok");
}
