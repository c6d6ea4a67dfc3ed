//! `stylefarm.v1.JobService`: submit, inspect, watch, cancel and retry jobs.

use prost::Message;
use stylefarm_proto::ids::JobId;
use stylefarm_proto::v1::{self, job_event::Event, job_service_server::JobService};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{parse_id, Api};
use crate::blobs::BlobHash;
use crate::error::CoordinatorError;
use crate::plan::FarmSize;
use crate::scheduler::Detail;
use crate::validate::{plan_job, JobPlan};

/// Jobs listed when the request says 0.
const DEFAULT_LIST: usize = 100;
/// Most jobs listed at once.
const MAX_LIST: usize = 1000;
/// A listing stops before its encoded size passes this (gRPC's default limit is 4 MiB).
const MAX_LIST_BYTES: usize = 3 * 1024 * 1024;

#[tonic::async_trait]
impl JobService for Api {
    async fn submit_job(
        &self,
        request: Request<v1::SubmitJobRequest>,
    ) -> Result<Response<v1::SubmitJobResponse>, Status> {
        let owner = request
            .remote_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let mut spec = request.into_inner().spec;
        if let Some(spec) = spec.as_mut() {
            spec.owner.clone_from(&owner);
        }
        let plan = self.plan(spec).await?;
        let tasks = plan.tasks.len();
        let limits = self.limits.job;
        let id = self
            .state
            .call(move |c| {
                let (all, theirs) = c.sched.unfinished_jobs(&owner);
                if all >= limits.max_queued_jobs {
                    return Err(CoordinatorError::LimitExceeded(format!(
                        "the farm holds {all} unfinished jobs, its limit (--max-queued-jobs): \
                         try again when some have finished"
                    )));
                }
                if theirs >= limits.max_queued_jobs_per_client {
                    return Err(CoordinatorError::LimitExceeded(format!(
                        "{owner} has {theirs} unfinished jobs on the farm, the limit per client \
                         (--max-queued-jobs-per-client): try again when some have finished"
                    )));
                }
                c.apply(|s, now| s.submit(plan.id, plan.spec, plan.tasks, now))
            })
            .await?;
        tracing::info!(job_id = %id, tasks, "job submitted");
        Ok(Response::new(v1::SubmitJobResponse {
            job_id: id.to_string(),
        }))
    }

    async fn plan_job(
        &self,
        request: Request<v1::SubmitJobRequest>,
    ) -> Result<Response<v1::PlanJobResponse>, Status> {
        let plan = self.plan(request.into_inner().spec).await?;
        Ok(Response::new(plan.summary))
    }

    async fn get_job(
        &self,
        request: Request<v1::GetJobRequest>,
    ) -> Result<Response<v1::Job>, Status> {
        let id: JobId = parse_id(&request.get_ref().job_id, "job_id")?;
        let job = self
            .state
            .call(move |c| c.sched.job_proto(id, Detail::Full))
            .await?;
        Ok(Response::new(job))
    }

    async fn list_jobs(
        &self,
        request: Request<v1::ListJobsRequest>,
    ) -> Result<Response<v1::ListJobsResponse>, Status> {
        let limit = match request.get_ref().limit {
            0 => DEFAULT_LIST,
            n => (n as usize).min(MAX_LIST),
        };
        let jobs = self
            .state
            .call(move |c| {
                let mut jobs = Vec::new();
                let mut bytes = 0;
                for id in c.sched.newest_jobs().take(limit) {
                    let job = c.sched.job_proto(id, Detail::Summary)?;
                    bytes += job.encoded_len() + 8;
                    if bytes > MAX_LIST_BYTES {
                        break;
                    }
                    jobs.push(job);
                }
                Ok(jobs)
            })
            .await?;
        Ok(Response::new(v1::ListJobsResponse { jobs }))
    }

    type WatchJobStream = ReceiverStream<Result<v1::JobEvent, Status>>;

    async fn watch_job(
        &self,
        request: Request<v1::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let id: JobId = parse_id(&request.get_ref().job_id, "job_id")?;
        let (snapshot, events) = self.state.call(move |c| c.watch(id)).await?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(forward(self.clone(), id, snapshot, events, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn cancel_job(
        &self,
        request: Request<v1::CancelJobRequest>,
    ) -> Result<Response<v1::Job>, Status> {
        let id: JobId = parse_id(&request.get_ref().job_id, "job_id")?;
        let job = self
            .state
            .call(move |c| {
                c.apply(|s, now| s.cancel(id, now))?;
                c.sched.job_proto(id, Detail::Full)
            })
            .await?;
        tracing::info!(job_id = %id, "job canceled");
        Ok(Response::new(job))
    }

    async fn retry_job(
        &self,
        request: Request<v1::RetryJobRequest>,
    ) -> Result<Response<v1::Job>, Status> {
        let id: JobId = parse_id(&request.get_ref().job_id, "job_id")?;
        let job = self
            .state
            .call(move |c| {
                c.apply(|s, now| s.retry(id, now))?;
                c.sched.job_proto(id, Detail::Full)
            })
            .await?;
        tracing::info!(job_id = %id, "job retried");
        Ok(Response::new(job))
    }

    async fn delete_job(
        &self,
        request: Request<v1::DeleteJobRequest>,
    ) -> Result<Response<v1::DeleteJobResponse>, Status> {
        let id: JobId = parse_id(&request.get_ref().job_id, "job_id")?;
        let (theirs, named) = self
            .state
            .call(move |c| {
                let theirs = c.sched.blobs_of(id);
                c.apply(|s, _| s.delete(id))?;
                Ok((theirs, c.sched.named_blobs()))
            })
            .await?;
        // The blobs only this job named go now; the rest stay for the jobs that name them.
        let mut freed = 0;
        for sha in theirs.difference(&named) {
            if let Ok(hash) = BlobHash::parse(sha, "sha256") {
                freed += self.blobs.remove(&hash).await;
            }
        }
        tracing::info!(job_id = %id, freed_bytes = freed, "job deleted");
        Ok(Response::new(v1::DeleteJobResponse {}))
    }
}

impl Api {
    /// Checks a spec and plans its tasks for the workers the farm has now.
    async fn plan(&self, spec: Option<v1::JobSpec>) -> Result<JobPlan, CoordinatorError> {
        let farm = self
            .state
            .call(|c| {
                let now = c.now_ms();
                Ok(FarmSize {
                    max_worker_memory: c.sched.max_worker_memory(now),
                    workers: c.sched.live_workers(now),
                })
            })
            .await?;
        plan_job(spec, self.limits.job, &self.blobs, &self.images, farm).await
    }
}

fn snapshot_event(job: v1::Job) -> v1::JobEvent {
    v1::JobEvent {
        event: Some(Event::Snapshot(job)),
    }
}

/// Sends a watcher its snapshot, then the job's events until the job finishes, the watcher
/// goes away or the coordinator stops. A watcher that falls behind gets a fresh snapshot.
async fn forward(
    api: Api,
    job: JobId,
    snapshot: v1::Job,
    events: Option<broadcast::Receiver<v1::JobEvent>>,
    tx: mpsc::Sender<Result<v1::JobEvent, Status>>,
) {
    if tx.send(Ok(snapshot_event(snapshot))).await.is_err() {
        return;
    }
    let Some(mut events) = events else { return };
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            () = api.signals.shutdown_requested() => {
                let _ = tx.send(Err(CoordinatorError::ShuttingDown.into())).await;
                return;
            }
            () = tx.closed() => return,
        };
        match event {
            Ok(event) => {
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::debug!(job_id = %job, missed, "a watcher fell behind: sending a fresh snapshot");
                match api.state.call(move |c| c.watch(job)).await {
                    Ok((snapshot, next)) => {
                        if tx.send(Ok(snapshot_event(snapshot))).await.is_err() {
                            return;
                        }
                        match next {
                            Some(next) => events = next,
                            None => return,
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_snapshot(e: Option<Result<v1::JobEvent, Status>>) -> bool {
        matches!(
            e,
            Some(Ok(v1::JobEvent {
                event: Some(Event::Snapshot(_))
            }))
        )
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_gets_a_fresh_snapshot_and_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let api = super::super::test_api(dir.path());
        let job = api
            .state
            .call(|c| {
                c.apply(|s, now| {
                    let task = v1::TaskSpec::default();
                    s.submit(JobId::new(), v1::JobSpec::default(), vec![task], now)
                })
            })
            .await
            .unwrap();
        let (snapshot, _) = api.state.call(move |c| c.watch(job)).await.unwrap();
        // A receiver that has already missed events.
        let (fake, lagging) = broadcast::channel(1);
        for _ in 0..3 {
            fake.send(v1::JobEvent::default()).unwrap();
        }
        let (tx, mut rx) = mpsc::channel(8);
        tokio::spawn(forward(api.clone(), job, snapshot, Some(lagging), tx));
        assert!(is_snapshot(rx.recv().await));
        assert!(
            is_snapshot(rx.recv().await),
            "a fresh snapshot, not an error"
        );

        // The watcher now follows the real events, to the end of the job.
        api.state
            .call(move |c| c.apply(|s, now| s.cancel(job, now)))
            .await
            .unwrap();
        let mut last = None;
        while let Some(event) = rx.recv().await {
            last = Some(event.unwrap());
        }
        let Some(v1::JobEvent {
            event: Some(Event::Job(j)),
        }) = last
        else {
            panic!("the stream ends with the job's state, got {last:?}");
        };
        assert_eq!(j.state, v1::JobState::Canceled as i32);
    }
}
