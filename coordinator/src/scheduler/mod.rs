//! The scheduler: jobs, tasks and workers as typed states, moved by events (submit, lease,
//! update, complete, fail, lease lapse, cancel, retry) at a time the caller passes in.
//!
//! Pure logic with no I/O: every event records [`Effect`]s (what changed), which the caller
//! persists and publishes ([`crate::state`]). A method that refuses an event changes nothing.
//!
//! Rules, in short:
//! - A ready task (queued, or soft-failed and waiting for its retry) goes to the first worker
//!   that asks and may take it: not blocklisted for the job, enough memory (a requirement of 0
//!   means none; a worker reporting 0 bytes only takes tasks without one), of the device the
//!   task asks for, if any ([`tally::device_fits`]), preferably a worker
//!   on which the task has not failed before. Higher job priority first, then submission order,
//!   then frame order.
//! - Leasing starts an attempt (`attempts += 1`) under a lease that expires `lease_ms` later;
//!   each update renews it and marks the task running.
//! - Completion succeeds the task. An application or out-of-memory failure, and a lease that
//!   lapses (the worker died or hung: counted as a failure of the task on that worker), end
//!   the attempt: the task is retried until it has used `max_attempts`, then fails. An
//!   interrupted attempt (the worker is shutting down) is handed back and does not count.
//! - A worker that fails [`BLOCKLIST_AFTER`] tasks of one job is set aside for that job.
//! - Cancel: ready tasks are canceled at once; leased ones are canceled but keep their lease
//!   ("draining") until the worker hears `cancel` in its next update and reports back, or the
//!   lease lapses. A cancel-drained report changes nothing else.
//! - A job's state follows from its tasks: queued until a task starts, active until every
//!   task is final, then completed (all succeeded), canceled (any canceled) or failed. A task
//!   that fails for good does not stop the job's other tasks: they finish first.
//! - Retry re-queues the failed and canceled tasks of a finished job with fresh attempts and
//!   forgets the job's blocklist.
//! - Dependencies: a task whose spec lists `depends_on` (indices of earlier tasks of its job)
//!   waits until they have all succeeded; it then takes the first one's result as its init
//!   image and is queued. When one of them fails for good (or is canceled), the waiting task
//!   fails (is canceled) with it.
//! - Every decision goes by a task's [`TaskKind`], derived once from its spec. The
//!   coordinator's own tasks (a lock-step driver, a contact sheet) are never leased; once
//!   ready they are announced ([`Effect::AssembleReady`]) and finished by
//!   [`Scheduler::assembled`] ([`own`]).
//!
//! - Every move keeps a running tally of tasks by state and worker pool and of jobs by state
//!   ([`Tally`]), and counts lapsed leases, retries and blocklistings ([`Counted`]), for the
//!   metrics and the autoscaler.
//!
//! The records are in [`records`], dependency settling in [`deps`], the wire views in
//! [`views`], the rebuild after a restart in [`restore`].

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use stylefarm_proto::ids::{JobId, LeaseId, TaskId, WorkerId};
use stylefarm_proto::v1;

use crate::error::{CoordinatorError, Result};

mod deps;
mod kind;
mod own;
mod records;
mod restore;
mod tally;
mod views;

pub(crate) use kind::TaskKind;
pub(crate) use own::{Assembly, ShardLease};
use records::StateCounts;
pub(crate) use records::{
    FailureKind, JobRecord, JobState, Lease, LossHistory, TaskRecord, TaskState, WorkerRecord,
};
pub(crate) use tally::{Counted, Pool, Tally, JOB_STATES, OWN_COLUMN, TASK_STATES};
pub(crate) use views::Detail;

/// Failures of one job's tasks on one worker after which the worker gets no more of them.
pub(crate) const BLOCKLIST_AFTER: u32 = 3;

/// The scheduler's settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SchedulerConfig {
    /// How long a lease lasts without an update, ms.
    pub(crate) lease_ms: i64,
    /// Attempts per task when the job does not say.
    pub(crate) default_max_attempts: u32,
}

/// What an event changed: the caller persists these, then publishes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    /// A new job and all its tasks.
    JobCreated(JobId),
    /// A task's row changed (state, progress, result, ...).
    TaskChanged(TaskId),
    /// A job's row changed (updated time, state).
    JobChanged(JobId),
    /// A job's state changed (after its tasks' changes).
    JobStateChanged(JobId),
    /// A worker's row changed.
    WorkerChanged(WorkerId),
    /// A worker's failure count for a job changed.
    FailureCounted(JobId, WorkerId),
    /// A job's failure counts were forgotten.
    FailuresCleared(JobId),
    /// A task became ready: wake the workers waiting for one.
    TasksReady,
    /// A lease was granted: the expiry loop may have an earlier deadline to wait for.
    LeaseGranted,
    /// An assemble task became ready: the coordinator's assembler runs it.
    AssembleReady,
    /// A finished job and its tasks were deleted.
    JobDeleted(JobId),
}

/// A task handed to a worker.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Grant {
    pub(crate) lease: LeaseId,
    pub(crate) task: TaskId,
    pub(crate) job: JobId,
    pub(crate) spec: v1::TaskSpec,
    pub(crate) deadline_ms: i64,
}

/// The answer to a worker's update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UpdateAnswer {
    pub(crate) deadline_ms: i64,
    /// The task was canceled: the worker must stop.
    pub(crate) cancel: bool,
}

/// Everything the scheduler holds, as loaded from the database.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub(crate) jobs: Vec<JobRecord>,
    pub(crate) tasks: Vec<TaskRecord>,
    pub(crate) workers: Vec<WorkerRecord>,
    pub(crate) failures: Vec<(JobId, WorkerId, u32)>,
}

/// Queue order: higher priority, earlier job, lower index.
type ReadyKey = (Reverse<i32>, i64, u32, TaskId);

/// The state machine.
#[derive(Debug)]
pub(crate) struct Scheduler {
    config: SchedulerConfig,
    jobs: HashMap<JobId, JobRecord>,
    /// Job ids by submission order.
    order: BTreeMap<i64, JobId>,
    tasks: HashMap<TaskId, TaskRecord>,
    workers: HashMap<WorkerId, WorkerRecord>,
    /// Held leases.
    leases: HashMap<LeaseId, TaskId>,
    ready: BTreeSet<ReadyKey>,
    failures: HashMap<(JobId, WorkerId), u32>,
    /// Per job, how many of its tasks are in each kind of state (jobs without waiting tasks
    /// are not scanned for tasks to move on).
    counts: HashMap<JobId, StateCounts>,
    /// Tasks by state and pool, jobs by state, for the metrics and the autoscaler.
    tally: Tally,
    /// Events for the metrics since the last [`Self::take_counted`].
    counted: Counted,
    next_seq: i64,
    effects: Vec<Effect>,
}

impl Scheduler {
    /// An empty farm.
    pub(crate) fn new(config: SchedulerConfig) -> Self {
        Self {
            config,
            jobs: HashMap::new(),
            order: BTreeMap::new(),
            tasks: HashMap::new(),
            workers: HashMap::new(),
            leases: HashMap::new(),
            ready: BTreeSet::new(),
            failures: HashMap::new(),
            counts: HashMap::new(),
            tally: Tally::default(),
            counted: Counted::default(),
            next_seq: 1,
            effects: Vec::new(),
        }
    }

    /// The effects recorded since the last call.
    pub(crate) fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// Tasks by state and pool and jobs by state, now.
    pub(crate) fn tally(&self) -> Tally {
        self.tally
    }

    /// The events counted since the last call.
    pub(crate) fn take_counted(&mut self) -> Counted {
        std::mem::take(&mut self.counted)
    }

    // -----------------------------------------------------------------------------------------
    // Events

    /// A new job with one task per spec (already validated); refused, changing nothing, when
    /// a spec is of no known kind.
    pub(crate) fn submit(
        &mut self,
        id: JobId,
        spec: v1::JobSpec,
        task_specs: Vec<v1::TaskSpec>,
        now: i64,
    ) -> Result<JobId> {
        let kinds = task_specs
            .iter()
            .map(TaskKind::of)
            .collect::<Result<Vec<_>>>()?;
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut tasks = Vec::with_capacity(task_specs.len());
        for ((index, task_spec), kind) in (0u32..).zip(task_specs).zip(kinds) {
            let state = if task_spec.depends_on.is_empty() {
                TaskState::Queued
            } else {
                TaskState::Waiting
            };
            let task = TaskRecord {
                id: TaskId::new(),
                job: id,
                index,
                kind,
                spec: task_spec,
                state,
                attempts: 0,
                worker: None,
                progress: None,
                loss_history: LossHistory::default(),
                result: None,
                final_losses: None,
                error: String::new(),
                failed_on: Vec::new(),
            };
            self.counts.entry(id).or_default().add(&task.state);
            self.tally.add_task(tally::column(&task), &task.state);
            tasks.push(task.id);
            self.tasks.insert(task.id, task);
        }
        let job = JobRecord {
            id,
            seq,
            spec,
            tasks,
            created_ms: now,
            updated_ms: now,
            state: JobState::Queued,
        };
        self.order.insert(seq, id);
        self.tally.add_job(job.state);
        self.jobs.insert(id, job);
        let ids: Vec<TaskId> = self.job_tasks(id).map(|t| t.id).collect();
        for task in ids {
            if let Some(t) = self.tasks.get(&task) {
                if !t.state.is_ready() {
                    continue;
                }
                if t.kind.is_own() {
                    self.effects.push(Effect::AssembleReady);
                } else {
                    let key = self.ready_key(t);
                    self.ready.insert(key);
                }
            }
        }
        self.effects.push(Effect::JobCreated(id));
        self.effects.push(Effect::TasksReady);
        Ok(id)
    }

    /// A new worker.
    pub(crate) fn register_worker(
        &mut self,
        name: String,
        capabilities: v1::Capabilities,
        now: i64,
    ) -> WorkerId {
        let id = WorkerId::new();
        self.workers.insert(
            id,
            WorkerRecord {
                id,
                name,
                capabilities,
                registered_ms: now,
                last_seen_ms: now,
                current_task: None,
                tasks_done: 0,
                tasks_failed: 0,
            },
        );
        self.effects.push(Effect::WorkerChanged(id));
        id
    }

    /// A worker asks for a task: the best one it may take, under a new lease, or `None`.
    pub(crate) fn lease(&mut self, worker: WorkerId, now: i64) -> Result<Option<Grant>> {
        let w = self
            .workers
            .get(&worker)
            .ok_or_else(|| not_found("worker", worker))?;
        let memory = w.capabilities.memory_bytes;
        let device = w.capabilities.device;
        let mut chosen = None;
        let mut fallback = None;
        for key in &self.ready {
            let Some(task) = self.tasks.get(&key.3) else {
                continue;
            };
            if self.blocklisted(task.job, worker) {
                continue;
            }
            let needs = task.spec.required_memory_bytes;
            if needs > 0 && needs > memory {
                continue;
            }
            if !tally::device_fits(task.spec.device, device) {
                continue;
            }
            if task.failed_on.contains(&worker) {
                fallback = fallback.or(Some(key.3));
                continue;
            }
            chosen = Some(key.3);
            break;
        }
        self.touch(worker, now);
        let Some(task_id) = chosen.or(fallback) else {
            return Ok(None);
        };
        let lease = Lease {
            id: LeaseId::new(),
            worker,
            deadline_ms: now.saturating_add(self.config.lease_ms),
        };
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return Err(CoordinatorError::Internal(format!(
                "task {task_id} vanished from the queue"
            )));
        };
        task.attempts += 1;
        task.worker = Some(worker);
        let (job, spec) = (task.job, task.spec.clone());
        self.set_state(task_id, TaskState::Leased(lease));
        if let Some(w) = self.workers.get_mut(&worker) {
            w.current_task = Some(task_id);
        }
        self.effects.push(Effect::LeaseGranted);
        self.refresh_job(job, now);
        Ok(Some(Grant {
            lease: lease.id,
            task: task_id,
            job,
            spec,
            deadline_ms: lease.deadline_ms,
        }))
    }

    /// A worker reports progress (a heartbeat): the lease is renewed; the answer says whether
    /// the task was canceled.
    pub(crate) fn update(
        &mut self,
        lease: LeaseId,
        progress: Option<v1::Progress>,
        now: i64,
    ) -> Result<UpdateAnswer> {
        let (task_id, held) = self.held(lease)?;
        let deadline_ms = held
            .deadline_ms
            .max(now.saturating_add(self.config.lease_ms));
        let renewed = Lease {
            deadline_ms,
            ..held
        };
        let (job, cancel) = {
            let Some(task) = self.tasks.get_mut(&task_id) else {
                return Err(CoordinatorError::LeaseLost { lease });
            };
            let cancel = matches!(task.state, TaskState::Canceled { .. });
            if !cancel {
                if let Some(p) = progress {
                    if let Some(l) = &p.losses {
                        task.loss_history.push(p.iteration, l);
                    }
                    task.progress = Some(p);
                }
            }
            (task.job, cancel)
        };
        let state = if cancel {
            TaskState::Canceled {
                draining: Some(renewed),
            }
        } else {
            TaskState::Running(renewed)
        };
        self.set_state(task_id, state);
        self.touch(held.worker, now);
        self.refresh_job(job, now);
        Ok(UpdateAnswer {
            deadline_ms,
            cancel,
        })
    }

    /// A worker finished a task with `result`.
    pub(crate) fn complete(
        &mut self,
        lease: LeaseId,
        result: v1::BlobRef,
        losses: Option<v1::Losses>,
        now: i64,
    ) -> Result<()> {
        let (task_id, held) = self.held(lease)?;
        let (job, canceled) = self.task_job_and_canceled(task_id, lease)?;
        if canceled {
            self.set_state(task_id, TaskState::Canceled { draining: None });
        } else {
            if let Some(task) = self.tasks.get_mut(&task_id) {
                task.result = Some(result);
                task.final_losses = losses;
                task.error.clear();
            }
            self.set_state(task_id, TaskState::Succeeded);
            if let Some(w) = self.workers.get_mut(&held.worker) {
                w.tasks_done += 1;
            }
        }
        self.release_worker(held.worker, task_id, now);
        self.refresh_job(job, now);
        Ok(())
    }

    /// A worker gave up on a task.
    pub(crate) fn fail(
        &mut self,
        lease: LeaseId,
        kind: FailureKind,
        message: &str,
        now: i64,
    ) -> Result<()> {
        let (task_id, held) = self.held(lease)?;
        let (job, canceled) = self.task_job_and_canceled(task_id, lease)?;
        if canceled {
            self.set_state(task_id, TaskState::Canceled { draining: None });
        } else {
            match kind {
                FailureKind::Interrupted => {
                    let attempts = match self.tasks.get_mut(&task_id) {
                        Some(task) => {
                            task.attempts = task.attempts.saturating_sub(1);
                            task.attempts
                        }
                        None => 0,
                    };
                    self.set_state(task_id, TaskState::ready(attempts));
                }
                FailureKind::Application => self.count_failure(task_id, held.worker, message),
                FailureKind::OutOfMemory => {
                    self.count_failure(task_id, held.worker, &format!("out of memory: {message}"));
                }
            }
        }
        self.release_worker(held.worker, task_id, now);
        self.refresh_job(job, now);
        Ok(())
    }

    /// Leases whose deadline has passed are taken back (a failure of the task on that worker);
    /// returns how many.
    pub(crate) fn expire(&mut self, now: i64) -> usize {
        let mut lapsed: Vec<(i64, LeaseId, TaskId)> = self
            .leases
            .iter()
            .filter_map(|(lease, task)| {
                let held = self.tasks.get(task)?.state.lease()?;
                (held.deadline_ms <= now).then_some((held.deadline_ms, *lease, *task))
            })
            .collect();
        lapsed.sort();
        for (_, _, task_id) in &lapsed {
            let Some(task) = self.tasks.get(task_id) else {
                continue;
            };
            let Some(held) = task.state.lease().copied() else {
                continue;
            };
            let job = task.job;
            if matches!(task.state, TaskState::Canceled { .. }) {
                self.set_state(*task_id, TaskState::Canceled { draining: None });
            } else {
                self.counted.lease_expiries += 1;
                tracing::warn!(task_id = %task_id, worker_id = %held.worker, "lease lapsed: the task goes back to the queue");
                let reason = format!(
                    "worker {} stopped reporting and its lease lapsed",
                    held.worker
                );
                self.count_failure(*task_id, held.worker, &reason);
            }
            if let Some(w) = self.workers.get_mut(&held.worker) {
                if w.current_task == Some(*task_id) {
                    w.current_task = None;
                    self.effects.push(Effect::WorkerChanged(held.worker));
                }
            }
            self.refresh_job(job, now);
        }
        lapsed.len()
    }

    /// Cancels a job: ready tasks at once, leased ones as soon as their worker hears it. A
    /// finished job is left as it is.
    pub(crate) fn cancel(&mut self, job: JobId, now: i64) -> Result<()> {
        let j = self.jobs.get(&job).ok_or_else(|| not_found("job", job))?;
        if j.state.is_final() {
            return Ok(());
        }
        let tasks = j.tasks.clone();
        for id in tasks {
            let Some(task) = self.tasks.get(&id) else {
                continue;
            };
            let next = match &task.state {
                TaskState::Queued | TaskState::SoftFailed | TaskState::Waiting => {
                    TaskState::Canceled { draining: None }
                }
                TaskState::Leased(l) | TaskState::Running(l) => {
                    TaskState::Canceled { draining: Some(*l) }
                }
                TaskState::Succeeded | TaskState::Failed | TaskState::Canceled { .. } => continue,
            };
            self.set_state(id, next);
        }
        self.refresh_job(job, now);
        Ok(())
    }

    /// Runs the failed and canceled tasks of a finished job again, with fresh attempts.
    /// Forgets a finished job and its tasks (their blobs go at the next collection).
    pub(crate) fn delete(&mut self, job: JobId) -> Result<()> {
        let j = self.jobs.get(&job).ok_or_else(|| not_found("job", job))?;
        if !j.state.is_final() {
            return Err(CoordinatorError::WrongJobState {
                job,
                reason: "it is still running: cancel it first, then delete it".into(),
            });
        }
        let stopping = j
            .tasks
            .iter()
            .filter_map(|t| self.tasks.get(t))
            .any(|t| t.state.lease().is_some());
        if stopping {
            return Err(CoordinatorError::WrongJobState {
                job,
                reason: "its canceled tasks are still stopping on their workers: try again in a \
                         few seconds"
                    .into(),
            });
        }
        let Some(j) = self.jobs.remove(&job) else {
            return Err(not_found("job", job));
        };
        self.tally.remove_job(j.state);
        for t in &j.tasks {
            if let Some(task) = self.tasks.remove(t) {
                self.tally.remove_task(tally::column(&task), &task.state);
            }
        }
        self.ready.retain(|k| !j.tasks.contains(&k.3));
        self.order.remove(&j.seq);
        self.failures.retain(|(jb, _), _| *jb != job);
        self.counts.remove(&job);
        self.effects.push(Effect::JobDeleted(job));
        Ok(())
    }

    pub(crate) fn retry(&mut self, job: JobId, now: i64) -> Result<()> {
        let j = self.jobs.get(&job).ok_or_else(|| not_found("job", job))?;
        if !j.state.is_final() {
            return Err(CoordinatorError::WrongJobState {
                job,
                reason: "it is still running; only a finished job can be retried".into(),
            });
        }
        let tasks = j.tasks.clone();
        for id in tasks {
            let Some(task) = self.tasks.get_mut(&id) else {
                continue;
            };
            if !matches!(task.state, TaskState::Failed | TaskState::Canceled { .. }) {
                continue;
            }
            let draining = task.state.lease().map(|l| l.worker);
            task.attempts = 0;
            task.error.clear();
            task.failed_on.clear();
            task.progress = None;
            let state = if task.spec.depends_on.is_empty() {
                TaskState::Queued
            } else {
                TaskState::Waiting
            };
            self.set_state(id, state);
            if let Some(worker) = draining {
                self.release_worker(worker, id, now);
            }
        }
        if self.failures.keys().any(|(j, _)| *j == job) {
            self.failures.retain(|(j, _), _| *j != job);
            self.effects.push(Effect::FailuresCleared(job));
        }
        self.refresh_job(job, now);
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Helpers

    fn ready_key(&self, task: &TaskRecord) -> ReadyKey {
        let (priority, seq) = self
            .jobs
            .get(&task.job)
            .map_or((0, i64::MAX), |j| (j.spec.priority, j.seq));
        (Reverse(priority), seq, task.index, task.id)
    }

    /// The task and lease behind a lease id the worker holds.
    fn held(&self, lease: LeaseId) -> Result<(TaskId, Lease)> {
        let task = self
            .leases
            .get(&lease)
            .ok_or(CoordinatorError::LeaseLost { lease })?;
        let held = self
            .tasks
            .get(task)
            .and_then(|t| t.state.lease())
            .filter(|l| l.id == lease)
            .ok_or(CoordinatorError::LeaseLost { lease })?;
        Ok((*task, *held))
    }

    /// The task's job, and whether the task was canceled (its lease is draining).
    fn task_job_and_canceled(&self, task: TaskId, lease: LeaseId) -> Result<(JobId, bool)> {
        let task = self
            .tasks
            .get(&task)
            .ok_or(CoordinatorError::LeaseLost { lease })?;
        Ok((task.job, matches!(task.state, TaskState::Canceled { .. })))
    }

    /// Moves a task to `state`, keeping the queue and the lease index in step.
    fn set_state(&mut self, id: TaskId, state: TaskState) {
        let Some(task) = self.tasks.get(&id) else {
            return;
        };
        let key = self.ready_key(task);
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        let old = std::mem::replace(&mut task.state, state);
        let job = task.job;
        let counts = self.counts.entry(job).or_default();
        counts.remove(&old);
        counts.add(&task.state);
        let column = tally::column(task);
        self.tally.remove_task(column, &old);
        self.tally.add_task(column, &task.state);
        if let Some(l) = old.lease() {
            self.leases.remove(&l.id);
        }
        if let Some(l) = task.state.lease() {
            self.leases.insert(l.id, id);
        } else {
            // The history is the running attempt's: memory for it only while one runs.
            task.loss_history.clear();
        }
        if old.is_ready() {
            self.ready.remove(&key);
        }
        if task.state.is_ready() {
            if task.kind.is_own() {
                self.effects.push(Effect::AssembleReady);
            } else {
                self.ready.insert(key);
                self.effects.push(Effect::TasksReady);
            }
        }
        self.effects.push(Effect::TaskChanged(id));
    }

    /// An attempt failed on `worker` (application error, out of memory, lapsed lease).
    fn count_failure(&mut self, task_id: TaskId, worker: WorkerId, reason: &str) {
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return;
        };
        let job = task.job;
        task.error = reason.to_string();
        if !task.failed_on.contains(&worker) {
            task.failed_on.push(worker);
        }
        let attempts = task.attempts;
        let max = self
            .jobs
            .get(&job)
            .map_or(self.config.default_max_attempts, |j| {
                if j.spec.max_attempts == 0 {
                    self.config.default_max_attempts
                } else {
                    j.spec.max_attempts
                }
            });
        let count = self.failures.entry((job, worker)).or_insert(0);
        *count += 1;
        if *count == BLOCKLIST_AFTER {
            self.counted.blocklistings += 1;
            tracing::warn!(job_id = %job, worker_id = %worker, "worker failed {BLOCKLIST_AFTER} tasks of the job: it gets no more of them");
        }
        self.effects.push(Effect::FailureCounted(job, worker));
        if let Some(w) = self.workers.get_mut(&worker) {
            w.tasks_failed += 1;
            self.effects.push(Effect::WorkerChanged(worker));
        }
        let state = if attempts >= max {
            TaskState::Failed
        } else {
            self.counted.retries += 1;
            TaskState::SoftFailed
        };
        self.set_state(task_id, state);
    }

    /// The worker is done with `task` (and was seen now).
    fn release_worker(&mut self, worker: WorkerId, task: TaskId, now: i64) {
        if let Some(w) = self.workers.get_mut(&worker) {
            if w.current_task == Some(task) {
                w.current_task = None;
            }
        }
        self.touch(worker, now);
    }

    fn touch(&mut self, worker: WorkerId, now: i64) {
        if let Some(w) = self.workers.get_mut(&worker) {
            w.last_seen_ms = w.last_seen_ms.max(now);
            self.effects.push(Effect::WorkerChanged(worker));
        }
    }

    /// Re-derives a job's state after its tasks changed.
    fn refresh_job(&mut self, id: JobId, now: i64) {
        self.settle_dependents(id);
        let derived = JobState::of(&self.counts.get(&id).copied().unwrap_or_default());
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        job.updated_ms = job.updated_ms.max(now);
        self.effects.push(Effect::JobChanged(id));
        if job.state != derived {
            tracing::info!(job_id = %id, from = ?job.state, to = ?derived, "job state changed");
            self.tally.remove_job(job.state);
            self.tally.add_job(derived);
            job.state = derived;
            self.effects.push(Effect::JobStateChanged(id));
        }
    }
}

fn not_found(kind: &'static str, id: impl ToString) -> CoordinatorError {
    CoordinatorError::NotFound {
        kind,
        id: id.to_string(),
    }
}

#[cfg(test)]
mod pool_tests;
#[cfg(test)]
mod tests;
