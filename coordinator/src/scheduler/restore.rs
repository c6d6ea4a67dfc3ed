//! The scheduler rebuilt from the stored records: after a restart, with the leases held before
//! it void ([`Scheduler::restore`]); after a write that failed, exactly as stored, leases and
//! all ([`Scheduler::reloaded`]), which undoes whatever the unwritten batch changed.

use stylefarm_proto::ids::{JobId, TaskId, WorkerId};

use super::{
    tally, Effect, JobState, ReadyKey, Scheduler, SchedulerConfig, Snapshot, Tally, TaskState,
};

impl Scheduler {
    /// The farm as stored, after a restart: leases held before are void, their tasks go back
    /// to the queue without using up an attempt (the effects say which rows changed).
    pub(crate) fn restore(config: SchedulerConfig, snapshot: Snapshot) -> Self {
        let mut s = Self::from_records(config, snapshot);
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
        let worker_ids: Vec<WorkerId> = s.workers.keys().copied().collect();
        for id in worker_ids {
            if let Some(w) = s.workers.get_mut(&id) {
                if w.current_task.take().is_some() {
                    s.effects.push(Effect::WorkerChanged(id));
                }
            }
        }
        s.index();
        s
    }

    /// The farm exactly as stored, with this scheduler's settings: what the database thread
    /// goes back to when a batch's write failed. Unlike [`Self::restore`] the leases stay held
    /// (their workers are still running). Nothing needs writing: the effects are there to wake
    /// the waiters (workers, the lease-expiry loop, the assembler).
    pub(crate) fn reloaded(&self, snapshot: Snapshot) -> Self {
        let mut s = Self::from_records(self.config, snapshot);
        s.index();
        if !s.leases.is_empty() {
            s.effects.push(Effect::LeaseGranted);
        }
        s
    }

    /// The records, with each job's tasks attached in index order.
    fn from_records(config: SchedulerConfig, snapshot: Snapshot) -> Self {
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
        s
    }

    /// Derives what the records imply: the queue, the held leases, the per-job counts and
    /// the jobs' states; announces ready tasks and assemblies.
    fn index(&mut self) {
        let ready: Vec<ReadyKey> = self
            .tasks
            .values()
            .filter(|t| t.state.is_ready() && !t.kind.is_own())
            .map(|t| self.ready_key(t))
            .collect();
        self.ready.extend(ready);
        for task in self.tasks.values() {
            if let Some(lease) = task.state.lease() {
                self.leases.insert(lease.id, task.id);
            }
        }
        if self
            .tasks
            .values()
            .any(|t| t.state.is_ready() && t.kind.is_own())
        {
            self.effects.push(Effect::AssembleReady);
        }
        for task in self.tasks.values() {
            self.counts.entry(task.job).or_default().add(&task.state);
        }
        let job_ids: Vec<JobId> = self.jobs.keys().copied().collect();
        for id in job_ids {
            let derived = JobState::of(&self.counts.get(&id).copied().unwrap_or_default());
            if let Some(job) = self.jobs.get_mut(&id) {
                if job.state != derived {
                    job.state = derived;
                    self.effects.push(Effect::JobChanged(id));
                }
            }
        }
        self.tally = Tally::default();
        for task in self.tasks.values() {
            self.tally.add_task(tally::column(task), &task.state);
        }
        for job in self.jobs.values() {
            self.tally.add_job(job.state);
        }
        if !self.ready.is_empty() {
            self.effects.push(Effect::TasksReady);
        }
    }
}
