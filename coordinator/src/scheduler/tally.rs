//! Running totals for the metrics and the autoscaler: tasks by state and worker pool, jobs by
//! state, kept in step as tasks and jobs move so that reading them costs a copy of a few
//! numbers whatever the size of the farm; and the events counted since the last commit (lease
//! expiries, retries, blocklistings), which the database thread adds to the metrics once the
//! changes they belong to are written (a batch that is undone is never counted).

use stylefarm_proto::v1;

use super::{JobState, TaskRecord, TaskState};

/// The worker pools: a task asking for a CUDA worker is in `cuda`; every other task (asking
/// for a CPU worker, or for any worker) is in `cpu`, the pool that always runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Pool {
    Cpu,
    Cuda,
}

impl Pool {
    /// Every pool, in the order of [`Tally`]'s columns.
    pub(crate) const ALL: [Pool; 2] = [Pool::Cpu, Pool::Cuda];

    /// The pool of a task asking for `device` (`JobSpec.device`).
    pub(crate) fn of_device(device: i32) -> Self {
        if device == v1::Device::Cuda as i32 {
            Self::Cuda
        } else {
            Self::Cpu
        }
    }

    /// Its name: the `pool` label of the metrics and the scaler's `pool` metadata.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        }
    }

    /// The pool called `name`.
    pub(crate) fn named(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// Whether a worker reporting `worker` (its `Capabilities.device`) may run a task asking for
/// `task` (`TaskSpec.device`): a task asking for no device runs anywhere, a CUDA task only on
/// a CUDA worker, a CPU task only on a CPU worker (a worker that does not say is a CPU one).
pub(crate) fn device_fits(task: i32, worker: i32) -> bool {
    let cuda = v1::Device::Cuda as i32;
    match v1::Device::try_from(task) {
        Ok(v1::Device::Unspecified) | Err(_) => true,
        Ok(v1::Device::Cuda) => worker == cuda,
        Ok(v1::Device::Cpu) => worker != cuda,
    }
}

/// The task states as the metrics name them, in the order of [`Tally`]'s rows.
pub(crate) const TASK_STATES: [&str; 8] = [
    "waiting",
    "queued",
    "leased",
    "running",
    "soft_failed",
    "succeeded",
    "failed",
    "canceled",
];

/// The job states as the metrics name them, in the order of [`Tally::jobs`].
pub(crate) const JOB_STATES: [&str; 5] = ["queued", "active", "completed", "failed", "canceled"];

/// Columns of [`Tally::tasks`]: the pools, then the coordinator's own tasks (lock-step
/// drivers, contact sheets), which no worker runs.
pub(crate) const OWN_COLUMN: usize = Pool::ALL.len();

/// How many tasks are in each state in each pool, and jobs in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    /// `[state][column]`, rows as [`TASK_STATES`], columns as [`Pool::ALL`] then
    /// [`OWN_COLUMN`].
    pub(crate) tasks: [[u64; OWN_COLUMN + 1]; TASK_STATES.len()],
    /// As [`JOB_STATES`].
    pub(crate) jobs: [u64; JOB_STATES.len()],
}

fn task_row(state: &TaskState) -> usize {
    match state {
        TaskState::Waiting => 0,
        TaskState::Queued => 1,
        TaskState::Leased(_) => 2,
        TaskState::Running(_) => 3,
        TaskState::SoftFailed => 4,
        TaskState::Succeeded => 5,
        TaskState::Failed => 6,
        TaskState::Canceled { .. } => 7,
    }
}

fn job_row(state: JobState) -> usize {
    match state {
        JobState::Queued => 0,
        JobState::Active => 1,
        JobState::Completed => 2,
        JobState::Failed => 3,
        JobState::Canceled => 4,
    }
}

/// The column a task counts in.
pub(crate) fn column(task: &TaskRecord) -> usize {
    if task.kind.is_own() {
        OWN_COLUMN
    } else {
        Pool::ALL
            .iter()
            .position(|p| *p == Pool::of_device(task.spec.device))
            .unwrap_or(0)
    }
}

impl Tally {
    pub(crate) fn add_task(&mut self, column: usize, state: &TaskState) {
        let n = &mut self.tasks[task_row(state)][column];
        *n = n.saturating_add(1);
    }

    pub(crate) fn remove_task(&mut self, column: usize, state: &TaskState) {
        let n = &mut self.tasks[task_row(state)][column];
        *n = n.saturating_sub(1);
    }

    pub(crate) fn add_job(&mut self, state: JobState) {
        let n = &mut self.jobs[job_row(state)];
        *n = n.saturating_add(1);
    }

    pub(crate) fn remove_job(&mut self, state: JobState) {
        let n = &mut self.jobs[job_row(state)];
        *n = n.saturating_sub(1);
    }

    /// Tasks of `pool` in the state named `state` (one of [`TASK_STATES`]).
    pub(crate) fn tasks_in(&self, pool: Pool, state: &str) -> u64 {
        let column = Pool::ALL.iter().position(|p| *p == pool).unwrap_or(0);
        TASK_STATES
            .iter()
            .position(|s| *s == state)
            .map_or(0, |row| self.tasks[row][column])
    }

    /// Tasks of `pool` waiting for a worker (queued, or failed and waiting for another
    /// attempt).
    pub(crate) fn queue_depth(&self, pool: Pool) -> u64 {
        self.tasks_in(pool, "queued") + self.tasks_in(pool, "soft_failed")
    }

    /// The work of `pool` that wants a worker now: tasks waiting for one plus tasks leased or
    /// running on one. Counting the running ones keeps a pool from being scaled down under
    /// its busy workers (a scaler that saw only the queue would see ~0 as soon as tasks are
    /// handed out).
    pub(crate) fn demand(&self, pool: Pool) -> u64 {
        self.queue_depth(pool) + self.tasks_in(pool, "leased") + self.tasks_in(pool, "running")
    }
}

/// Events counted since the last commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counted {
    /// Leases that lapsed (their worker stopped reporting).
    pub(crate) lease_expiries: u64,
    /// Attempts that failed with attempts left: the task is retried.
    pub(crate) retries: u64,
    /// Workers set aside for a job after too many failures.
    pub(crate) blocklistings: u64,
}
