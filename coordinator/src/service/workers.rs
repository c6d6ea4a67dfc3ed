//! `stylefarm.v1.WorkerService`: registration, the lease long poll, progress, results and
//! failures.

use std::time::Duration;

use stylefarm_proto::ids::{LeaseId, WorkerId};
use stylefarm_proto::v1::{self, worker_service_server::WorkerService};
use tonic::{Request, Response, Status};

use super::{parse_id, Api};
use crate::blobs::BlobHash;
use crate::error::{CoordinatorError, Result};
use crate::scheduler::FailureKind;
use crate::validate::check_result;

/// Longest worker name, in characters.
const MAX_NAME_CHARS: usize = 256;
/// Most model names a worker may report, and the longest one.
const MAX_MODELS: usize = 64;
const MAX_MODEL_CHARS: usize = 128;
/// Longest failure message kept, in bytes (longer ones are cut).
const MAX_MESSAGE_BYTES: usize = 4096;
/// When to ask again after an empty answer: soon after a long poll, later after a short one.
const RETRY_AFTER_POLL: Duration = Duration::from_millis(100);
const RETRY_AFTER_SHORT: Duration = Duration::from_secs(1);

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

fn check_capabilities(caps: &v1::Capabilities) -> Result<()> {
    if v1::Device::try_from(caps.device).is_err() {
        return Err(CoordinatorError::invalid(
            "capabilities.device",
            format!("unknown value {}", caps.device),
        ));
    }
    if caps.models.len() > MAX_MODELS {
        return Err(CoordinatorError::invalid(
            "capabilities.models",
            format!(
                "{} names, over the limit of {MAX_MODELS}",
                caps.models.len()
            ),
        ));
    }
    if let Some(i) = caps
        .models
        .iter()
        .position(|m| m.chars().count() > MAX_MODEL_CHARS)
    {
        return Err(CoordinatorError::invalid(
            format!("capabilities.models[{i}]"),
            format!("longer than {MAX_MODEL_CHARS} characters"),
        ));
    }
    Ok(())
}

fn check_progress(p: &v1::Progress) -> Result<()> {
    if let Some(preview) = &p.preview {
        if !preview.sha256.is_empty() {
            BlobHash::parse(&preview.sha256, "progress.preview.sha256")?;
        }
    }
    Ok(())
}

/// `s` cut to at most `max` bytes at a character boundary.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str(" [...]");
    }
    s
}

#[tonic::async_trait]
impl WorkerService for Api {
    type ShardStream = tokio_stream::wrappers::ReceiverStream<Result<v1::ShardCommand, Status>>;

    async fn shard(
        &self,
        request: Request<tonic::Streaming<v1::ShardReply>>,
    ) -> Result<Response<Self::ShardStream>, Status> {
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(v1::ShardReply {
                reply: Some(v1::shard_reply::Reply::Hello(hello)),
            }) => hello,
            _ => {
                return Err(CoordinatorError::invalid(
                    "reply",
                    "a shard's stream starts with its ShardHello",
                )
                .into())
            }
        };
        let lease: LeaseId = parse_id(&hello.lease_id, "hello.lease_id")?;
        let crate::scheduler::ShardLease {
            task,
            job,
            done,
            startup_speed,
        } = self.state.call(move |c| c.sched.shard_lease(lease)).await?;
        let (commands, stream) = tokio::sync::mpsc::channel(64);
        if let Some(result) = done {
            // The render is over: this shard only has to complete.
            let done = v1::shard_command::Command::Done(v1::ShardDone {
                result: Some(result),
            });
            let _ = commands.try_send(Ok(v1::ShardCommand {
                command: Some(done),
            }));
        } else {
            let (replies_tx, replies) = std::sync::mpsc::channel();
            let joined = crate::lockstep::Joined {
                task,
                hello,
                startup_speed,
                commands,
                replies,
            };
            self.lockstep.join(job, joined).await?;
            tokio::spawn(async move {
                loop {
                    let next = match inbound.message().await {
                        Ok(Some(m)) => Ok(m),
                        Ok(None) => break,
                        Err(s) => Err(s.message().to_string()),
                    };
                    let failed = next.is_err();
                    if replies_tx.send(next).is_err() || failed {
                        break;
                    }
                }
            });
        }
        tracing::info!(task_id = %task, job_id = %job, "shard stream opened");
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            stream,
        )))
    }

    async fn register_worker(
        &self,
        request: Request<v1::RegisterWorkerRequest>,
    ) -> Result<Response<v1::RegisterWorkerResponse>, Status> {
        let req = request.into_inner();
        if req.name.chars().count() > MAX_NAME_CHARS {
            return Err(CoordinatorError::invalid(
                "name",
                format!("longer than {MAX_NAME_CHARS} characters"),
            )
            .into());
        }
        let caps = req.capabilities.unwrap_or_default();
        check_capabilities(&caps)?;
        let name = req.name;
        let log_name = name.clone();
        let id = self
            .state
            .call(move |c| c.apply(|s, now| Ok(s.register_worker(name, caps, now))))
            .await?;
        tracing::info!(worker_id = %id, name = %log_name, "worker registered");
        Ok(Response::new(v1::RegisterWorkerResponse {
            worker_id: id.to_string(),
            heartbeat_interval_ms: millis(self.limits.heartbeat_interval),
        }))
    }

    async fn lease_task(
        &self,
        request: Request<v1::LeaseTaskRequest>,
    ) -> Result<Response<v1::LeaseTaskResponse>, Status> {
        let worker: WorkerId = parse_id(&request.get_ref().worker_id, "worker_id")?;
        let wait = Duration::from_millis(u64::from(request.get_ref().wait_ms))
            .min(self.limits.max_long_poll);
        let until = tokio::time::Instant::now() + wait;
        loop {
            // Registered before looking, so a task queued in between still wakes this poll.
            let ready = self.signals.tasks_ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            let grant = self
                .state
                .call(move |c| c.apply(|s, now| s.lease(worker, now)))
                .await?;
            if let Some(g) = grant {
                tracing::info!(task_id = %g.task, job_id = %g.job, worker_id = %worker, lease_id = %g.lease, "task leased");
                return Ok(Response::new(v1::LeaseTaskResponse {
                    lease: Some(v1::Lease {
                        lease_id: g.lease.to_string(),
                        task_id: g.task.to_string(),
                        job_id: g.job.to_string(),
                        spec: Some(g.spec),
                        deadline_unix_ms: g.deadline_ms,
                    }),
                    retry_after_ms: 0,
                }));
            }
            tokio::select! {
                () = &mut ready => {}
                () = tokio::time::sleep_until(until) => break,
                () = self.signals.shutdown_requested() => break,
            }
        }
        let retry_after = if wait.is_zero() {
            RETRY_AFTER_SHORT
        } else {
            RETRY_AFTER_POLL
        };
        Ok(Response::new(v1::LeaseTaskResponse {
            lease: None,
            retry_after_ms: millis(retry_after),
        }))
    }

    async fn update_task(
        &self,
        request: Request<v1::UpdateTaskRequest>,
    ) -> Result<Response<v1::UpdateTaskResponse>, Status> {
        let req = request.into_inner();
        let lease: LeaseId = parse_id(&req.lease_id, "lease_id")?;
        if let Some(p) = &req.progress {
            check_progress(p)?;
        }
        let progress = req.progress;
        let answer = self
            .state
            .call(move |c| c.apply(|s, now| s.update(lease, progress, now)))
            .await?;
        Ok(Response::new(v1::UpdateTaskResponse {
            deadline_unix_ms: answer.deadline_ms,
            cancel: answer.cancel,
        }))
    }

    async fn complete_task(
        &self,
        request: Request<v1::CompleteTaskRequest>,
    ) -> Result<Response<v1::CompleteTaskResponse>, Status> {
        let req = request.into_inner();
        let lease: LeaseId = parse_id(&req.lease_id, "lease_id")?;
        let mut result = req.result.ok_or_else(|| {
            CoordinatorError::invalid("result", "missing: a completed task needs its result blob")
        })?;
        let hash = BlobHash::parse(&result.sha256, "result.sha256")?;
        let Some(size) = self.blobs.size(&hash).await? else {
            return Err(CoordinatorError::invalid(
                "result",
                format!("blob {hash} has not been uploaded"),
            )
            .into());
        };
        if result.size != 0 && result.size != size {
            return Err(CoordinatorError::invalid(
                "result.size",
                format!("blob {hash} holds {size} bytes, not {}", result.size),
            )
            .into());
        }
        result.size = size;
        let (kind, spec) = self.state.call(move |c| c.sched.leased_task(lease)).await?;
        check_result(&self.blobs, &self.images, &hash, kind, &spec).await?;
        let losses = req.final_losses;
        let seconds = req.seconds;
        self.state
            .call(move |c| {
                c.apply(|s, now| s.complete(lease, result, losses, now))?;
                c.task_took(seconds);
                Ok(())
            })
            .await?;
        tracing::info!(lease_id = %lease, seconds = req.seconds, "task completed");
        Ok(Response::new(v1::CompleteTaskResponse {}))
    }

    async fn fail_task(
        &self,
        request: Request<v1::FailTaskRequest>,
    ) -> Result<Response<v1::FailTaskResponse>, Status> {
        let req = request.into_inner();
        let lease: LeaseId = parse_id(&req.lease_id, "lease_id")?;
        let kind = match v1::FailureKind::try_from(req.kind) {
            // A worker that does not say why failed the task itself.
            Ok(v1::FailureKind::Unspecified | v1::FailureKind::Application) => {
                FailureKind::Application
            }
            Ok(v1::FailureKind::OutOfMemory) => FailureKind::OutOfMemory,
            Ok(v1::FailureKind::Interrupted) => FailureKind::Interrupted,
            Err(_) => {
                return Err(CoordinatorError::invalid(
                    "kind",
                    format!("unknown value {}", req.kind),
                )
                .into())
            }
        };
        let message = truncate(req.message, MAX_MESSAGE_BYTES);
        tracing::info!(lease_id = %lease, ?kind, message = %message, "task failed");
        self.state
            .call(move |c| c.apply(|s, now| s.fail(lease, kind, &message, now)))
            .await?;
        Ok(Response::new(v1::FailTaskResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        let s = truncate("é".repeat(10), 5);
        assert_eq!(s, "éé [...]");
        assert_eq!(truncate("short".into(), 10), "short");
    }
}
