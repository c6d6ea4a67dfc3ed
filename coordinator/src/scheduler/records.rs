//! The scheduler's records: tasks, jobs and workers with their typed states, and the counts
//! from which a job's state follows.

use stylefarm_proto::ids::{JobId, LeaseId, TaskId, WorkerId};
use stylefarm_proto::v1;

use super::TaskKind;

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
    pub(super) fn ready(attempts: u32) -> Self {
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
    pub(super) fn of(c: &StateCounts) -> Self {
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
pub(super) struct StateCounts {
    pub(super) waiting: u32,
    /// Queued, never leased or leased and given back.
    pub(super) queued: u32,
    /// Leased, running, or failed for now and waiting for another attempt.
    pub(super) started: u32,
    pub(super) succeeded: u32,
    pub(super) failed: u32,
    pub(super) canceled: u32,
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

    pub(super) fn add(&mut self, state: &TaskState) {
        *self.slot(state) += 1;
    }

    pub(super) fn remove(&mut self, state: &TaskState) {
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
    /// The losses of the running attempt so far (empty unless the task holds a lease), for a
    /// plot that begins before the page was opened.
    pub(crate) loss_history: LossHistory,
    pub(crate) result: Option<v1::BlobRef>,
    pub(crate) final_losses: Option<v1::Losses>,
    /// Why the last attempt failed ("" when none did).
    pub(crate) error: String,
    /// Workers on which the task failed this run (it prefers others).
    pub(crate) failed_on: Vec<WorkerId>,
}

/// A running task's losses by iteration, in memory only: at most [`LossHistory::MAX_POINTS`]
/// points (when full, every other one goes), in `f32` (a plot's precision): at most 2.5 KiB
/// per running task.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct LossHistory {
    /// (iteration, [content, style, tv, total]), iterations increasing.
    points: Vec<(u32, [f32; 4])>,
}

impl LossHistory {
    pub(crate) const MAX_POINTS: usize = 128;

    /// Adds the losses at `iteration`, keeping the iterations increasing: a repeat adds
    /// nothing, and one below the last starts the history over (the scheduler already clears
    /// it between attempts; this keeps the order whatever a worker sends).
    pub(crate) fn push(&mut self, iteration: u32, l: &v1::Losses) {
        match self.points.last() {
            Some(&(last, _)) if iteration < last => self.points.clear(),
            Some(&(last, _)) if iteration == last => return,
            _ => {}
        }
        if self.points.len() == Self::MAX_POINTS {
            let mut i = 0;
            self.points.retain(|_| {
                i += 1;
                i % 2 == 1
            });
        }
        let f = |x: f64| x as f32;
        self.points
            .push((iteration, [f(l.content), f(l.style), f(l.tv), f(l.total)]));
    }

    pub(crate) fn clear(&mut self) {
        self.points.clear();
    }

    /// The points on the wire.
    pub(crate) fn to_proto(&self) -> Vec<v1::LossPoint> {
        self.points
            .iter()
            .map(|&(iteration, [content, style, tv, total])| v1::LossPoint {
                iteration,
                losses: Some(v1::Losses {
                    content: content.into(),
                    style: style.into(),
                    tv: tv.into(),
                    total: total.into(),
                }),
            })
            .collect()
    }
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
