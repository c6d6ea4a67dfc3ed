//! The coordinator's own tasks as the scheduler sees them: a lock-step render's driver and a
//! contact sheet are never leased; once ready they are handed out as [`Assembly`]s and
//! finished by [`Scheduler::assembled`]. A shard's stream finds its lease here too.

use stylefarm_proto::ids::{JobId, LeaseId, TaskId};
use stylefarm_proto::v1;

use super::{not_found, Effect, Scheduler, TaskKind, TaskRecord, TaskState};
use crate::error::{CoordinatorError, Result};

/// What a shard's stream needs to know of its lease ([`Scheduler::shard_lease`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ShardLease {
    pub(crate) task: TaskId,
    pub(crate) job: JobId,
    /// The job's lock-step result, when the render is already over.
    pub(crate) done: Option<v1::BlobRef>,
    /// The worker's speed measured at start-up (its registration), input pixels per second.
    pub(crate) startup_speed: Option<f64>,
}

impl Scheduler {
    /// The coordinator finished assembling `task` (an assemble task that was ready): with its
    /// result (and the objective of a lock-step render's pixels), or failed for good with a
    /// reason. A task that is no longer ready (its job was canceled meanwhile) is left as it is.
    pub(crate) fn assembled(
        &mut self,
        task_id: TaskId,
        outcome: std::result::Result<(v1::BlobRef, Option<v1::Losses>), String>,
        now: i64,
    ) -> Result<()> {
        let Some(task) = self.own_ready_task(task_id)? else {
            return Ok(());
        };
        let job = task.job;
        task.attempts += 1;
        let state = match outcome {
            Ok((result, losses)) => {
                task.result = Some(result);
                task.final_losses = losses;
                task.error.clear();
                TaskState::Succeeded
            }
            Err(reason) => {
                task.error = reason;
                TaskState::Failed
            }
        };
        self.set_state(task_id, state);
        self.refresh_job(job, now);
        Ok(())
    }

    /// Progress of a task the coordinator runs itself (a lock-step render), while it is ready.
    pub(crate) fn own_progress(
        &mut self,
        task_id: TaskId,
        progress: v1::Progress,
        now: i64,
    ) -> Result<()> {
        let Some(task) = self.own_ready_task(task_id)? else {
            return Ok(());
        };
        task.progress = Some(progress);
        let job = task.job;
        self.effects.push(Effect::TaskChanged(task_id));
        self.refresh_job(job, now);
        Ok(())
    }

    /// A task the coordinator runs itself, while it is ready (`None` once it is not: its job
    /// was canceled meanwhile).
    fn own_ready_task(&mut self, task_id: TaskId) -> Result<Option<&mut TaskRecord>> {
        let task = self
            .tasks
            .get_mut(&task_id)
            .ok_or_else(|| not_found("task", task_id))?;
        Ok((task.state.is_ready() && task.kind.is_own()).then_some(task))
    }

    /// For a shard's stream: the shard task and job behind `lease`, the job's lock-step result
    /// when it is already made, and the speed its worker measured at start-up.
    pub(crate) fn shard_lease(&self, lease: LeaseId) -> Result<ShardLease> {
        let (task_id, held) = self.held(lease)?;
        let task = self
            .tasks
            .get(&task_id)
            .ok_or(CoordinatorError::LeaseLost { lease })?;
        if task.kind != TaskKind::Shard {
            return Err(CoordinatorError::invalid(
                "hello.lease_id",
                "the lease is not a shard task's",
            ));
        }
        let done = self
            .job_tasks(task.job)
            .find(|t| t.kind == TaskKind::Driver && t.state == TaskState::Succeeded)
            .and_then(|t| t.result.clone());
        let startup_speed = self
            .workers
            .get(&held.worker)
            .map(|w| w.capabilities.pixels_per_second)
            .filter(|s| s.is_finite() && *s > 0.0);
        Ok(ShardLease {
            task: task_id,
            job: task.job,
            done,
            startup_speed,
        })
    }

    /// Assemble tasks ready to run, with what they need: their own spec and, in order, the
    /// specs and results of the tasks they depend on.
    pub(crate) fn ready_assemblies(&self) -> Vec<Assembly> {
        let mut out = Vec::new();
        for task in self.tasks.values() {
            if !task.state.is_ready() || !task.kind.is_own() {
                continue;
            }
            let Ok(job) = self.job(task.job) else {
                continue;
            };
            let inputs = task
                .spec
                .depends_on
                .iter()
                .filter_map(|&i| {
                    let dep = self.tasks.get(job.tasks.get(i as usize)?)?;
                    Some((dep.spec.clone(), dep.result.clone()?))
                })
                .collect();
            out.push(Assembly {
                task: task.id,
                job: task.job,
                kind: task.kind,
                job_spec: job.spec.clone(),
                spec: task.spec.clone(),
                inputs,
            });
        }
        out
    }
}

/// An assemble task ready to run, with its inputs.
#[derive(Debug, Clone)]
pub(crate) struct Assembly {
    pub(crate) task: TaskId,
    pub(crate) job: JobId,
    /// A driver or a contact sheet.
    pub(crate) kind: TaskKind,
    pub(crate) job_spec: v1::JobSpec,
    pub(crate) spec: v1::TaskSpec,
    /// The specs and results of the tasks it depends on, in `depends_on` order.
    pub(crate) inputs: Vec<(v1::TaskSpec, v1::BlobRef)>,
}
