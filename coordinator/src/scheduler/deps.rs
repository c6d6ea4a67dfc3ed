//! Dependencies: a waiting task is queued once the tasks it depends on have succeeded, and
//! fails or is canceled with them.

use stylefarm_proto::ids::{JobId, TaskId};
use stylefarm_proto::v1;

use super::{Scheduler, TaskKind, TaskRecord, TaskState};

impl Scheduler {
    /// Moves a job's waiting tasks on: queued (with the result of the first dependency that is
    /// not a statistics task as the init image) once every task they depend on has succeeded,
    /// failed or canceled once one of them can no longer succeed. Repeats until nothing changes, so a failure travels down a
    /// chain in one event.
    pub(super) fn settle_dependents(&mut self, job: JobId) {
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
