//! Queries: the records as they are, and as the wire shows them (`task_proto`, `job_proto`,
//! `stats`).

use std::cmp::Reverse;
use std::collections::HashSet;

use stylefarm_proto::ids::{JobId, LeaseId, TaskId, WorkerId};
use stylefarm_proto::v1;

use super::{
    not_found, JobRecord, JobState, Scheduler, TaskKind, TaskRecord, TaskState, WorkerRecord,
    BLOCKLIST_AFTER,
};
use crate::error::{CoordinatorError, Result};

/// What goes into a [`v1::Job`] built by [`Scheduler::job_proto`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detail {
    /// Tasks with their specs and loss histories.
    Full,
    /// Tasks without their specs (listings).
    Summary,
    /// No tasks (job events).
    NoTasks,
}

impl Scheduler {
    pub(crate) fn next_deadline(&self) -> Option<i64> {
        self.leases
            .values()
            .filter_map(|t| Some(self.tasks.get(t)?.state.lease()?.deadline_ms))
            .min()
    }

    /// A job record.
    pub(crate) fn job(&self, id: JobId) -> Result<&JobRecord> {
        self.jobs.get(&id).ok_or_else(|| not_found("job", id))
    }

    /// A task record.
    pub(crate) fn task(&self, id: TaskId) -> Option<&TaskRecord> {
        self.tasks.get(&id)
    }

    /// A worker record.
    pub(crate) fn worker(&self, id: WorkerId) -> Option<&WorkerRecord> {
        self.workers.get(&id)
    }

    /// The kind and spec of the task that `lease` holds.
    pub(crate) fn leased_task(&self, lease: LeaseId) -> Result<(TaskKind, v1::TaskSpec)> {
        let (task, _) = self.held(lease)?;
        let task = self
            .tasks
            .get(&task)
            .ok_or(CoordinatorError::LeaseLost { lease })?;
        Ok((task.kind, task.spec.clone()))
    }

    /// A job's tasks, by index.
    pub(crate) fn job_tasks(&self, id: JobId) -> impl Iterator<Item = &TaskRecord> + '_ {
        self.jobs
            .get(&id)
            .into_iter()
            .flat_map(|j| j.tasks.iter())
            .filter_map(|t| self.tasks.get(t))
    }

    /// How many tasks of `job` have failed on `worker`.
    pub(crate) fn failures(&self, job: JobId, worker: WorkerId) -> u32 {
        self.failures.get(&(job, worker)).copied().unwrap_or(0)
    }

    /// Whether `worker` is set aside for `job`.
    pub(crate) fn blocklisted(&self, job: JobId, worker: WorkerId) -> bool {
        self.failures(job, worker) >= BLOCKLIST_AFTER
    }

    /// Job ids, newest first.
    pub(crate) fn newest_jobs(&self) -> impl Iterator<Item = JobId> + '_ {
        self.order.values().rev().copied()
    }

    /// Workers, most recently seen first.
    pub(crate) fn workers(&self) -> Vec<&WorkerRecord> {
        let mut w: Vec<&WorkerRecord> = self.workers.values().collect();
        w.sort_by_key(|w| (Reverse(w.last_seen_ms), w.id));
        w
    }

    /// A task on the wire.
    pub(crate) fn task_proto(task: &TaskRecord, with_spec: bool) -> v1::Task {
        v1::Task {
            id: task.id.to_string(),
            job_id: task.job.to_string(),
            index: task.index,
            state: task.state.to_proto() as i32,
            spec: with_spec.then(|| task.spec.clone()),
            attempts: task.attempts,
            worker_id: task.worker.map(|w| w.to_string()).unwrap_or_default(),
            progress: task.progress.clone(),
            result: task.result.clone(),
            final_losses: task.final_losses,
            error: task.error.clone(),
            // Only in a whole job's view (`Detail::Full`), not in every task event.
            loss_history: Vec::new(),
        }
    }

    /// A job on the wire.
    pub(crate) fn job_proto(&self, id: JobId, detail: Detail) -> Result<v1::Job> {
        let job = self.job(id)?;
        let tasks: Vec<&TaskRecord> = self.job_tasks(id).collect();
        let result = match (job.state, tasks.as_slice()) {
            (JobState::Completed, [only]) => only.result.clone(),
            (JobState::Completed, _) => tasks
                .iter()
                .find(|t| t.spec.job_result)
                .and_then(|t| t.result.clone()),
            _ => None,
        };
        let error = match job.state {
            JobState::Failed => tasks
                .iter()
                .filter(|t| t.state == TaskState::Failed)
                .min_by_key(|t| t.attempts == 0)
                .map(|t| {
                    format!(
                        "task {} ({}) failed after {} attempt{}: {}",
                        t.index,
                        t.spec.output_name,
                        t.attempts,
                        if t.attempts == 1 { "" } else { "s" },
                        t.error
                    )
                })
                .unwrap_or_default(),
            JobState::Canceled => "canceled".to_string(),
            JobState::Queued | JobState::Active => self.why_waiting(&tasks).unwrap_or_default(),
            JobState::Completed => String::new(),
        };
        let tasks = match detail {
            Detail::Full => tasks
                .iter()
                .map(|t| v1::Task {
                    loss_history: t.loss_history.to_proto(),
                    ..Self::task_proto(t, true)
                })
                .collect(),
            Detail::Summary => tasks.iter().map(|t| Self::task_proto(t, false)).collect(),
            Detail::NoTasks => Vec::new(),
        };
        Ok(v1::Job {
            id: job.id.to_string(),
            state: job.state.to_proto() as i32,
            spec: Some(job.spec.clone()),
            tasks,
            created_unix_ms: job.created_ms,
            updated_unix_ms: job.updated_ms,
            result,
            error,
        })
    }

    /// Finished jobs last updated before `cutoff_ms`, oldest first.
    pub(crate) fn finished_before(&self, cutoff_ms: i64) -> Vec<JobId> {
        self.order
            .values()
            .filter_map(|id| self.jobs.get(id))
            .filter(|j| j.state.is_final() && j.updated_ms < cutoff_ms)
            .map(|j| j.id)
            .collect()
    }

    /// Every blob a job or task names: inputs, results, intermediate results.
    pub(crate) fn named_blobs(&self) -> HashSet<String> {
        let mut named = HashSet::new();
        for id in self.jobs.keys() {
            self.add_blobs_of(*id, &mut named);
        }
        named
    }

    /// The blobs `job` and its tasks name.
    pub(crate) fn blobs_of(&self, job: JobId) -> HashSet<String> {
        let mut named = HashSet::new();
        self.add_blobs_of(job, &mut named);
        named
    }

    fn add_blobs_of(&self, job: JobId, named: &mut HashSet<String>) {
        let Some(j) = self.jobs.get(&job) else { return };
        let mut add = |b: &v1::BlobRef| {
            named.insert(b.sha256.clone());
        };
        let spec = &j.spec;
        spec.content
            .iter()
            .chain(&spec.styles)
            .chain(&spec.init_image)
            .for_each(&mut add);
        for task in self.job_tasks(job) {
            let s = &task.spec;
            s.content
                .iter()
                .chain(&s.styles)
                .chain(&s.init_image)
                .chain(&task.result)
                .for_each(&mut add);
        }
    }

    /// Jobs not yet finished: on the whole farm, and those `owner` submitted.
    pub(crate) fn unfinished_jobs(&self, owner: &str) -> (usize, usize) {
        self.jobs
            .values()
            .filter(|j| !j.state.is_final())
            .fold((0, 0), |(all, theirs), j| {
                (all + 1, theirs + usize::from(j.spec.owner == owner))
            })
    }

    /// Why a queued task of `tasks` cannot start, when no registered worker has the memory it
    /// needs: a task that waits for ever says so instead of looking merely queued.
    fn why_waiting(&self, tasks: &[&TaskRecord]) -> Option<String> {
        let largest = self
            .workers
            .values()
            .map(|w| w.capabilities.memory_bytes)
            .max();
        let task = tasks
            .iter()
            .filter(|t| t.state == TaskState::Queued)
            .find(|t| largest.is_none_or(|m| t.spec.required_memory_bytes > m))?;
        let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
        Some(match largest {
            None => "waiting for a worker: none has registered yet".to_string(),
            Some(m) => format!(
                "task {} needs {:.1} GiB of memory and no worker has that much (the largest has \
                 {:.1} GiB): it waits for a larger worker",
                task.index,
                gib(task.spec.required_memory_bytes),
                gib(m)
            ),
        })
    }

    /// Whether `worker` is live at `now`: seen within a lease duration. One that is not has
    /// stopped or lost the coordinator; its record stays (for its counts) until it is back.
    pub(crate) fn is_live(&self, worker: &WorkerRecord, now: i64) -> bool {
        worker.last_seen_ms >= now.saturating_sub(self.config.lease_ms)
    }

    /// The most memory a live worker reports (0: none).
    pub(crate) fn max_worker_memory(&self, now: i64) -> u64 {
        self.workers
            .values()
            .filter(|w| self.is_live(w, now))
            .map(|w| w.capabilities.memory_bytes)
            .max()
            .unwrap_or(0)
    }

    /// The live workers.
    pub(crate) fn live_workers(&self, now: i64) -> usize {
        self.workers
            .values()
            .filter(|w| self.is_live(w, now))
            .count()
    }

    /// Counts for `QueueStats`; workers count when live at `now`.
    pub(crate) fn stats(&self, now: i64) -> v1::QueueStatsResponse {
        let mut s = v1::QueueStatsResponse::default();
        for job in self.jobs.values() {
            match job.state {
                JobState::Queued => s.jobs_queued += 1,
                JobState::Active => s.jobs_active += 1,
                JobState::Completed | JobState::Failed | JobState::Canceled => {}
            }
        }
        for task in self.tasks.values() {
            match task.state {
                TaskState::Queued | TaskState::SoftFailed | TaskState::Waiting => {
                    s.tasks_queued += 1;
                }
                TaskState::Leased(_) | TaskState::Running(_) => s.tasks_running += 1,
                TaskState::Succeeded => s.tasks_succeeded += 1,
                TaskState::Failed => s.tasks_failed += 1,
                TaskState::Canceled { .. } => {}
            }
        }
        s.workers = self.live_workers(now) as u32;
        s
    }
}
