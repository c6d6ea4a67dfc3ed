//! The scheduler: jobs, tasks and workers as typed states, moved by events (submit, lease,
//! update, complete, fail, lease lapse, cancel, retry) at a time the caller passes in.
//!
//! Pure logic with no I/O: every event records [`Effect`]s (what changed), which the caller
//! persists and publishes ([`crate::state`]). A method that refuses an event changes nothing.
//!
//! Rules, in short:
//! - A ready task (queued, or soft-failed and waiting for its retry) goes to the first worker
//!   that asks and may take it: not blocklisted for the job, enough memory (a requirement of 0
//!   means none; a worker reporting 0 bytes only takes tasks without one), preferably a worker
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
//! - Assemble tasks are the coordinator's own: never leased; once ready they are announced
//!   ([`Effect::AssembleReady`]) and finished by [`Scheduler::assembled`].

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use stylefarm_proto::ids::{JobId, LeaseId, TaskId, WorkerId};
use stylefarm_proto::v1;

use crate::error::{CoordinatorError, Result};

mod kind;

pub(crate) use kind::TaskKind;

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

/// A worker's hold on a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lease {
    pub(crate) id: LeaseId,
    pub(crate) worker: WorkerId,
    pub(crate) deadline_ms: i64,
}

/// Where a task is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TaskState {
    /// Ready, never failed (or its failures were handed back).
    Queued,
    /// Handed to a worker that has not reported yet.
    Leased(Lease),
    /// The worker has reported at least once.
    Running(Lease),
    /// Done; the result is in the task record.
    Succeeded,
    /// Failed, ready to be retried.
    SoftFailed,
    /// Failed for good (attempts used up).
    Failed,
    /// Canceled; `draining` is the lease of a worker that has not yet heard about it.
    Canceled { draining: Option<Lease> },
    /// Waiting for the tasks it depends on to succeed.
    Waiting,
}

impl TaskState {
    /// The lease held on the task, if any.
    pub(crate) fn lease(&self) -> Option<&Lease> {
        match self {
            Self::Leased(l) | Self::Running(l) => Some(l),
            Self::Canceled { draining } => draining.as_ref(),
            Self::Queued | Self::Succeeded | Self::SoftFailed | Self::Failed | Self::Waiting => {
                None
            }
        }
    }

    /// Whether a worker may lease the task.
    pub(crate) fn is_ready(&self) -> bool {
        matches!(self, Self::Queued | Self::SoftFailed)
    }

    /// The state as on the wire.
    pub(crate) fn to_proto(&self) -> v1::TaskState {
        match self {
            Self::Queued => v1::TaskState::Queued,
            Self::Leased(_) => v1::TaskState::Leased,
            Self::Running(_) => v1::TaskState::Running,
            Self::Succeeded => v1::TaskState::Succeeded,
            Self::SoftFailed => v1::TaskState::SoftFailed,
            Self::Failed => v1::TaskState::Failed,
            Self::Canceled { .. } => v1::TaskState::Canceled,
            Self::Waiting => v1::TaskState::Waiting,
        }
    }

    /// The ready state for a task that has used `attempts` attempts.
    fn ready(attempts: u32) -> Self {
        if attempts == 0 {
            Self::Queued
        } else {
            Self::SoftFailed
        }
    }
}

/// Where a job is (derived from its tasks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobState {
    Queued,
    Active,
    Completed,
    Failed,
    Canceled,
}

impl JobState {
    /// Whether the job is done.
    pub(crate) fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Canceled)
    }

    /// The state as on the wire.
    pub(crate) fn to_proto(self) -> v1::JobState {
        match self {
            Self::Queued => v1::JobState::Queued,
            Self::Active => v1::JobState::Active,
            Self::Completed => v1::JobState::Completed,
            Self::Failed => v1::JobState::Failed,
            Self::Canceled => v1::JobState::Canceled,
        }
    }

    /// The state that a job whose tasks stand at `c` is in.
    fn of(c: &StateCounts) -> Self {
        let all_final = c.waiting + c.queued + c.started == 0;
        let all_succeeded = all_final && c.failed + c.canceled == 0;
        let started = c.started + c.succeeded + c.failed > 0;
        match (all_final, all_succeeded, c.canceled > 0, started) {
            (false, _, _, false) => Self::Queued,
            (false, _, _, true) => Self::Active,
            (true, true, _, _) => Self::Completed,
            (true, false, true, _) => Self::Canceled,
            (true, false, false, _) => Self::Failed,
        }
    }
}

/// How many of a job's tasks are in each kind of state, kept up to date as tasks move, so a
/// job's state follows from a change in constant time whatever the number of its tasks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct StateCounts {
    waiting: u32,
    /// Queued, never leased or leased and given back.
    queued: u32,
    /// Leased, running, or failed for now and waiting for another attempt.
    started: u32,
    succeeded: u32,
    failed: u32,
    canceled: u32,
}

impl StateCounts {
    fn slot(&mut self, state: &TaskState) -> &mut u32 {
        match state {
            TaskState::Waiting => &mut self.waiting,
            TaskState::Queued => &mut self.queued,
            TaskState::Leased(_) | TaskState::Running(_) | TaskState::SoftFailed => {
                &mut self.started
            }
            TaskState::Succeeded => &mut self.succeeded,
            TaskState::Failed => &mut self.failed,
            TaskState::Canceled { .. } => &mut self.canceled,
        }
    }

    fn add(&mut self, state: &TaskState) {
        *self.slot(state) += 1;
    }

    fn remove(&mut self, state: &TaskState) {
        let n = self.slot(state);
        *n = n.saturating_sub(1);
    }
}

/// How an attempt failed, as the worker reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureKind {
    /// The task itself failed: counts as an attempt.
    Application,
    /// The worker ran out of memory: counts as an attempt.
    OutOfMemory,
    /// The worker stopped (shutdown): handed back, no attempt used.
    Interrupted,
}

/// One task of a job.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TaskRecord {
    pub(crate) id: TaskId,
    pub(crate) job: JobId,
    pub(crate) index: u32,
    /// What the task is, derived from `spec` where the task was created or restored.
    pub(crate) kind: TaskKind,
    /// The payload leased to a worker (or read by the coordinator's own task).
    pub(crate) spec: v1::TaskSpec,
    pub(crate) state: TaskState,
    /// Attempts started and not handed back.
    pub(crate) attempts: u32,
    /// The worker that holds or last held the task.
    pub(crate) worker: Option<WorkerId>,
    pub(crate) progress: Option<v1::Progress>,
    pub(crate) result: Option<v1::BlobRef>,
    pub(crate) final_losses: Option<v1::Losses>,
    /// Why the last attempt failed ("" when none did).
    pub(crate) error: String,
    /// Workers on which the task failed this run (it prefers others).
    pub(crate) failed_on: Vec<WorkerId>,
}

/// One job.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JobRecord {
    pub(crate) id: JobId,
    /// Submission order.
    pub(crate) seq: i64,
    pub(crate) spec: v1::JobSpec,
    /// By index.
    pub(crate) tasks: Vec<TaskId>,
    pub(crate) created_ms: i64,
    pub(crate) updated_ms: i64,
    /// Derived from the tasks; kept up to date by the scheduler.
    pub(crate) state: JobState,
}

/// One registered worker.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WorkerRecord {
    pub(crate) id: WorkerId,
    pub(crate) name: String,
    pub(crate) capabilities: v1::Capabilities,
    pub(crate) registered_ms: i64,
    pub(crate) last_seen_ms: i64,
    pub(crate) current_task: Option<TaskId>,
    pub(crate) tasks_done: u32,
    pub(crate) tasks_failed: u32,
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

/// What goes into a [`v1::Job`] built by [`Scheduler::job_proto`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detail {
    /// Tasks with their specs.
    Full,
    /// Tasks without their specs (listings).
    Summary,
    /// No tasks (job events).
    NoTasks,
}

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
            next_seq: 1,
            effects: Vec::new(),
        }
    }

    /// The farm as stored, after a restart: leases held before are void, their tasks go back
    /// to the queue without using up an attempt (the effects say which rows changed).
    pub(crate) fn restore(config: SchedulerConfig, snapshot: Snapshot) -> Self {
        let mut s = Self::new(config);
        for job in snapshot.jobs {
            s.next_seq = s.next_seq.max(job.seq + 1);
            s.order.insert(job.seq, job.id);
            s.jobs.insert(job.id, job);
        }
        for task in snapshot.tasks {
            s.tasks.insert(task.id, task);
        }
        for worker in snapshot.workers {
            s.workers.insert(worker.id, worker);
        }
        for (job, worker, n) in snapshot.failures {
            s.failures.insert((job, worker), n);
        }
        // Tasks are attached to jobs in index order whatever order they were loaded in.
        for job in s.jobs.values_mut() {
            job.tasks.clear();
        }
        let mut by_job: Vec<(JobId, u32, TaskId)> =
            s.tasks.values().map(|t| (t.job, t.index, t.id)).collect();
        by_job.sort();
        for (job, _, task) in by_job {
            if let Some(j) = s.jobs.get_mut(&job) {
                j.tasks.push(task);
            }
        }
        // Leases held before the restart are void: their tasks go back to the queue and the
        // interrupted attempt is not counted.
        for task in s.tasks.values_mut() {
            let voided = match &task.state {
                TaskState::Leased(_) | TaskState::Running(_) => {
                    task.attempts = task.attempts.saturating_sub(1);
                    TaskState::ready(task.attempts)
                }
                TaskState::Canceled { draining: Some(_) } => TaskState::Canceled { draining: None },
                TaskState::Queued
                | TaskState::SoftFailed
                | TaskState::Succeeded
                | TaskState::Failed
                | TaskState::Canceled { draining: None }
                | TaskState::Waiting => continue,
            };
            task.state = voided;
            s.effects.push(Effect::TaskChanged(task.id));
        }
        let ready: Vec<ReadyKey> = s
            .tasks
            .values()
            .filter(|t| t.state.is_ready() && !t.kind.is_own())
            .map(|t| s.ready_key(t))
            .collect();
        s.ready.extend(ready);
        if s.tasks
            .values()
            .any(|t| t.state.is_ready() && t.kind.is_own())
        {
            s.effects.push(Effect::AssembleReady);
        }
        let worker_ids: Vec<WorkerId> = s.workers.keys().copied().collect();
        for id in worker_ids {
            if let Some(w) = s.workers.get_mut(&id) {
                if w.current_task.take().is_some() {
                    s.effects.push(Effect::WorkerChanged(id));
                }
            }
        }
        for task in s.tasks.values() {
            s.counts.entry(task.job).or_default().add(&task.state);
        }
        let job_ids: Vec<JobId> = s.jobs.keys().copied().collect();
        for id in job_ids {
            let derived = JobState::of(&s.counts.get(&id).copied().unwrap_or_default());
            if let Some(job) = s.jobs.get_mut(&id) {
                if job.state != derived {
                    job.state = derived;
                    s.effects.push(Effect::JobChanged(id));
                }
            }
        }
        if !s.ready.is_empty() {
            s.effects.push(Effect::TasksReady);
        }
        s
    }

    /// The effects recorded since the last call.
    pub(crate) fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
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
                result: None,
                final_losses: None,
                error: String::new(),
                failed_on: Vec::new(),
            };
            self.counts.entry(id).or_default().add(&task.state);
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

    /// For a shard's stream: the shard task and job behind `lease`, and the job's lock-step
    /// result when it is already made.
    pub(crate) fn shard_lease(
        &self,
        lease: LeaseId,
    ) -> Result<(TaskId, JobId, Option<v1::BlobRef>)> {
        let (task_id, _) = self.held(lease)?;
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
        Ok((task_id, task.job, done))
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

    /// Runs the failed and canceled tasks of a finished job again, with fresh attempts.
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
    // Queries

    /// The earliest lease deadline, if any lease is held.
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
            JobState::Queued | JobState::Active | JobState::Completed => String::new(),
        };
        let tasks = match detail {
            Detail::Full => tasks.iter().map(|t| Self::task_proto(t, true)).collect(),
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

    /// The most memory a worker seen within a lease duration of `now` reports (0: none).
    pub(crate) fn max_worker_memory(&self, now: i64) -> u64 {
        let cutoff = now.saturating_sub(self.config.lease_ms);
        self.workers
            .values()
            .filter(|w| w.last_seen_ms >= cutoff)
            .map(|w| w.capabilities.memory_bytes)
            .max()
            .unwrap_or(0)
    }

    /// The workers seen within a lease duration of `now`.
    pub(crate) fn live_workers(&self, now: i64) -> usize {
        let cutoff = now.saturating_sub(self.config.lease_ms);
        self.workers
            .values()
            .filter(|w| w.last_seen_ms >= cutoff)
            .count()
    }

    /// Counts for `QueueStats`; workers count when seen within a lease duration of `now`.
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
        let cutoff = now.saturating_sub(self.config.lease_ms);
        s.workers = self
            .workers
            .values()
            .filter(|w| w.last_seen_ms >= cutoff)
            .count() as u32;
        s
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
        if let Some(l) = old.lease() {
            self.leases.remove(&l.id);
        }
        if let Some(l) = task.state.lease() {
            self.leases.insert(l.id, id);
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

    /// Moves a job's waiting tasks on: queued (with the result of the first dependency that is
    /// not a statistics task as the init image) once every task they depend on has succeeded,
    /// failed or canceled once one of them can no longer succeed. Repeats until nothing changes, so a failure travels down a
    /// chain in one event.
    fn settle_dependents(&mut self, job: JobId) {
        if self.counts.get(&job).is_none_or(|c| c.waiting == 0) {
            return;
        }
        loop {
            let mut moves: Vec<(TaskId, Settled)> = Vec::new();
            let tasks: Vec<&TaskRecord> = self.job_tasks(job).collect();
            for task in tasks.iter().filter(|t| t.state == TaskState::Waiting) {
                let mut settled = Settled::Ready { init: None };
                for &i in &task.spec.depends_on {
                    let Some(dep) = tasks.get(i as usize) else {
                        settled = Settled::Failed(format!(
                            "it depends on task {i}, which does not exist"
                        ));
                        break;
                    };
                    match &dep.state {
                        TaskState::Succeeded => {
                            // A shard waits for the statistics, but does not start from them.
                            if let Settled::Ready { init } = &mut settled {
                                if init.is_none() && dep.kind != TaskKind::Statistics {
                                    *init = dep.result.clone();
                                }
                            }
                        }
                        TaskState::Failed => {
                            settled = Settled::Failed(format!(
                                "task {i} ({}), which it depends on, failed",
                                dep.spec.output_name
                            ));
                            break;
                        }
                        TaskState::Canceled { .. } => {
                            settled = Settled::Canceled;
                            break;
                        }
                        TaskState::Queued
                        | TaskState::Leased(_)
                        | TaskState::Running(_)
                        | TaskState::SoftFailed
                        | TaskState::Waiting => {
                            if matches!(settled, Settled::Ready { .. }) {
                                settled = Settled::Blocked;
                            }
                        }
                    }
                }
                if settled != Settled::Blocked {
                    moves.push((task.id, settled));
                }
            }
            if moves.is_empty() {
                return;
            }
            for (id, settled) in moves {
                match settled {
                    Settled::Ready { init } => {
                        if let Some(task) = self.tasks.get_mut(&id) {
                            if !task.kind.is_own() {
                                if let Some(init) = init {
                                    task.spec.init_image = Some(init);
                                    let settings = task.spec.settings.get_or_insert_default();
                                    settings.init = v1::Init::Image as i32;
                                }
                            }
                        }
                        self.set_state(id, TaskState::Queued);
                    }
                    Settled::Failed(reason) => {
                        if let Some(task) = self.tasks.get_mut(&id) {
                            task.error = reason;
                        }
                        self.set_state(id, TaskState::Failed);
                    }
                    Settled::Canceled => self.set_state(id, TaskState::Canceled { draining: None }),
                    Settled::Blocked => {}
                }
            }
        }
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
            job.state = derived;
            self.effects.push(Effect::JobStateChanged(id));
        }
    }
}

/// Where a waiting task stands with its dependencies.
#[derive(Debug, PartialEq)]
enum Settled {
    /// All succeeded: the result of the first that is not a statistics task.
    Ready { init: Option<v1::BlobRef> },
    /// Some have not finished yet.
    Blocked,
    /// One failed for good.
    Failed(String),
    /// One was canceled.
    Canceled,
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

fn not_found(kind: &'static str, id: impl ToString) -> CoordinatorError {
    CoordinatorError::NotFound {
        kind,
        id: id.to_string(),
    }
}

#[cfg(test)]
mod tests;
