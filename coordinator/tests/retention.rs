//! What the coordinator keeps, and for how long: `DeleteJob` removes a finished job and the
//! blobs only it used, collection removes old jobs and the blobs no job names (a refused
//! submission's uploads among them), the store refuses uploads past its limit, and a blob
//! damaged on disk is never handed out as good.

mod common;

use std::time::Duration;

use common::*;
use stylefarm_coordinator::Config;
use stylefarm_proto::v1;
use tonic::Code;

/// A job run to completion by a worker of this test; its id and result.
async fn completed_job(c: &mut Clients, spec: v1::JobSpec) -> (String, v1::BlobRef) {
    let job = submit(c, spec).await.unwrap();
    let worker = register(c, "w", 1 << 34).await;
    let lease = lease(c, &worker, 1000).await.expect("a task");
    let result = upload(c, &png(64, 48, 9)).await;
    complete_raw(c, &lease.lease_id, &result).await.unwrap();
    assert_eq!(job_state(&get_job(c, &job).await), v1::JobState::Completed);
    (job, result)
}

/// `DeleteJob` of `job`.
async fn delete(c: &mut Clients, job: &str) -> Result<(), tonic::Status> {
    let request = v1::DeleteJobRequest { job_id: job.into() };
    c.jobs.delete_job(request).await.map(drop)
}

/// Whether the coordinator answers NOT_FOUND for `job`.
async fn is_gone(c: &mut Clients, job: &str) -> bool {
    let request = v1::GetJobRequest { job_id: job.into() };
    c.jobs
        .get_job(request)
        .await
        .is_err_and(|e| e.code() == Code::NotFound)
}

#[tokio::test]
async fn deleting_a_finished_job_frees_the_blobs_only_it_used() {
    let dir = tempfile::tempdir().unwrap();
    let farm = Farm::start(dir.path()).await;
    let mut c = farm.clients().await;
    let shared_style = upload(&mut c, &png(8, 8, 2)).await;
    let own_content = upload(&mut c, &png(16, 12, 1)).await;
    let (job, result) = completed_job(
        &mut c,
        spec(vec![own_content.clone()], vec![shared_style.clone()]),
    )
    .await;
    // Another job, still queued, uses the same style.
    let other_content = upload(&mut c, &png(16, 12, 5)).await;
    let other = submit(
        &mut c,
        spec(vec![other_content], vec![shared_style.clone()]),
    )
    .await
    .unwrap();

    let e = delete(&mut c, &other).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("cancel it first"), "{}", e.message());

    delete(&mut c, &job).await.unwrap();
    assert!(is_gone(&mut c, &job).await);
    assert!(missing(&mut c, &own_content.sha256).await);
    assert!(missing(&mut c, &result.sha256).await);
    assert!(
        !missing(&mut c, &shared_style.sha256).await,
        "the other job still uses it"
    );
    farm.stop().await;

    // The deletion is in the database: a restart does not bring the job back.
    let farm = Farm::start(dir.path()).await;
    let mut c = farm.clients().await;
    assert!(is_gone(&mut c, &job).await);
    assert_eq!(
        job_state(&get_job(&mut c, &other).await),
        v1::JobState::Queued
    );
    farm.stop().await;
}

#[tokio::test]
async fn collection_removes_old_jobs_and_blobs_no_job_names() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    config.collect_interval = Duration::from_millis(50);
    config.blob_grace = Duration::ZERO;
    config.retention = Some(Duration::from_secs(3600));
    let farm = Farm::start_with(config).await;
    let mut c = farm.clients().await;
    let (job, result) = {
        let spec = simple_spec(&mut c).await;
        completed_job(&mut c, spec).await
    };
    // A refused submission leaves its upload behind: not an image.
    let junk = upload(&mut c, &vec![7u8; 300_000]).await;
    let mut refused = simple_spec(&mut c).await;
    refused.content = vec![junk.clone()];
    assert_eq!(
        submit(&mut c, refused).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    let gone = async {
        while !missing(&mut c, &junk.sha256).await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(PROMPTLY, gone)
        .await
        .expect("the refused upload is collected");
    assert!(
        !missing(&mut c, &result.sha256).await,
        "a kept job's result stays"
    );
    assert_eq!(
        job_state(&get_job(&mut c, &job).await),
        v1::JobState::Completed
    );

    // Past the retention, the job goes too, with its blobs.
    farm.clock.advance(Duration::from_secs(3601));
    let gone = async {
        while !missing(&mut c, &result.sha256).await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(PROMPTLY, gone)
        .await
        .expect("the old job is collected");
    assert!(is_gone(&mut c, &job).await);
    farm.stop().await;
}

#[tokio::test]
async fn the_store_refuses_uploads_past_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    config.max_store_bytes = 100_000;
    let farm = Farm::start_with(config).await;
    let mut c = farm.clients().await;
    upload(&mut c, &vec![1u8; 60_000]).await;
    let data = vec![2u8; 60_000];
    let sha = sha256(&data);
    let e = c
        .blobs
        .write(futures::stream::iter(write_requests(&data, &sha, 1 << 20)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("--max-store-bytes"), "{}", e.message());
    assert!(missing(&mut c, &sha).await);
    farm.stop().await;
}

#[tokio::test]
async fn a_blob_damaged_on_disk_is_never_served_as_good() {
    let dir = tempfile::tempdir().unwrap();
    let farm = Farm::start(dir.path()).await;
    let mut c = farm.clients().await;
    let data = png(64, 48, 3);
    let blob = upload(&mut c, &data).await;
    let path = dir
        .path()
        .join("blobs")
        .join(&blob.sha256[..2])
        .join(&blob.sha256);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    let e = download(&mut c, &blob.sha256, 0).await.unwrap_err();
    assert_eq!(e.code(), Code::DataLoss);
    assert!(e.message().contains("damaged"), "{}", e.message());
    // Set aside: the store no longer claims it, and the right bytes can come back.
    assert!(missing(&mut c, &blob.sha256).await);
    upload(&mut c, &data).await;
    assert_eq!(download(&mut c, &blob.sha256, 0).await.unwrap(), data);
    farm.stop().await;
}
