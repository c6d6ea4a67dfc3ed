//! The scheduler's rules as pure logic, with a manual clock.

use std::time::Duration;

use super::*;
use crate::clock::{Clock, ManualClock};

pub(super) const LEASE: Duration = Duration::from_secs(30);
const GIB: u64 = 1024 * 1024 * 1024;

pub(super) struct Farm {
    pub(super) s: Scheduler,
    pub(super) clock: ManualClock,
}

impl Farm {
    pub(super) fn new() -> Self {
        Self {
            s: Scheduler::new(SchedulerConfig {
                lease_ms: LEASE.as_millis() as i64,
                default_max_attempts: 3,
            }),
            clock: ManualClock::default(),
        }
    }

    pub(super) fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    fn worker(&mut self, memory_bytes: u64) -> WorkerId {
        let now = self.now();
        let caps = v1::Capabilities {
            memory_bytes,
            ..Default::default()
        };
        self.s.register_worker("w".into(), caps, now)
    }

    fn job(&mut self, tasks: usize, priority: i32, max_attempts: u32, memory: u64) -> JobId {
        let spec = v1::JobSpec {
            priority,
            max_attempts,
            required_memory_bytes: memory,
            ..Default::default()
        };
        let task_specs = (0..tasks)
            .map(|i| v1::TaskSpec {
                output_name: format!("frame_{i:04}.png"),
                required_memory_bytes: memory,
                ..Default::default()
            })
            .collect();
        let now = self.now();
        self.s.submit(JobId::new(), spec, task_specs, now).unwrap()
    }

    pub(super) fn lease(&mut self, w: WorkerId) -> Option<Grant> {
        let now = self.now();
        self.s.lease(w, now).unwrap()
    }

    pub(super) fn update(&mut self, lease: LeaseId) -> Result<UpdateAnswer> {
        let now = self.now();
        self.s.update(lease, Some(v1::Progress::default()), now)
    }

    pub(super) fn complete(&mut self, lease: LeaseId) -> Result<()> {
        self.complete_with(lease, "ab")
    }

    /// Completes with a result blob whose hash is `byte` repeated.
    fn complete_with(&mut self, lease: LeaseId, byte: &str) -> Result<()> {
        let now = self.now();
        let result = v1::BlobRef {
            sha256: byte.repeat(32),
            size: 3,
        };
        self.s.complete(lease, result, None, now)
    }

    pub(super) fn fail(&mut self, lease: LeaseId, kind: FailureKind) -> Result<()> {
        let now = self.now();
        self.s.fail(lease, kind, "it broke", now)
    }

    pub(super) fn expire_after(&mut self, d: Duration) -> usize {
        self.clock.advance(d);
        let now = self.now();
        self.s.expire(now)
    }

    pub(super) fn task(&self, id: TaskId) -> &TaskRecord {
        self.s.task(id).unwrap()
    }

    /// The job's state, after checking that the counts the scheduler keeps up to date as
    /// tasks move equal the job's tasks counted afresh.
    pub(super) fn job_state(&self, id: JobId) -> JobState {
        let mut fresh = StateCounts::default();
        for t in self.s.job_tasks(id) {
            fresh.add(&t.state);
        }
        assert_eq!(self.s.counts.get(&id).copied().unwrap_or_default(), fresh);
        let mut recount = Tally::default();
        for t in self.s.tasks.values() {
            recount.add_task(tally::column(t), &t.state);
        }
        for j in self.s.jobs.values() {
            recount.add_job(j.state);
        }
        assert_eq!(self.s.tally(), recount, "the running tally drifted");
        let state = self.s.job(id).unwrap().state;
        assert_eq!(state, JobState::of(&fresh));
        state
    }
}

#[test]
fn a_lapsed_lease_requeues_the_task_and_counts_an_attempt() {
    let mut f = Farm::new();
    let (a, b) = (f.worker(0), f.worker(0));
    let job = f.job(1, 0, 0, 0);
    let g = f.lease(a).unwrap();
    assert_eq!(g.deadline_ms, f.now() + 30_000);
    assert_eq!(f.job_state(job), JobState::Active);
    assert_eq!(f.s.next_deadline(), Some(g.deadline_ms));

    // An update renews the lease: nothing lapses at the first deadline.
    f.clock.advance(Duration::from_secs(20));
    let answer = f.update(g.lease).unwrap();
    assert!(!answer.cancel);
    assert_eq!(f.expire_after(Duration::from_secs(15)), 0);
    assert!(matches!(f.task(g.task).state, TaskState::Running(_)));

    assert_eq!(f.expire_after(Duration::from_secs(16)), 1);
    let t = f.task(g.task);
    assert_eq!(t.state, TaskState::SoftFailed);
    assert_eq!(t.attempts, 1);
    assert!(t.error.contains("lease lapsed"), "{}", t.error);
    assert_eq!(f.s.next_deadline(), None);
    assert!(f.s.worker(a).unwrap().current_task.is_none());
    assert!(f.s.take_effects().contains(&Effect::TasksReady));

    let again = f.lease(b).unwrap();
    assert_eq!(again.task, g.task);
    assert_eq!(f.task(g.task).attempts, 2);
}

#[test]
fn a_worker_unseen_for_a_lease_duration_is_listed_lost_until_it_is_back() {
    let mut f = Farm::new();
    let gone = f.worker(GIB);
    f.clock.advance(LEASE / 2);
    let fresh = f.worker(GIB);
    let live = |f: &Farm| -> Vec<(WorkerId, bool)> {
        let now = f.now();
        let mut v: Vec<_> =
            f.s.workers()
                .iter()
                .map(|w| (w.id, f.s.is_live(w, now)))
                .collect();
        v.sort();
        v
    };
    let sorted = |mut v: Vec<(WorkerId, bool)>| {
        v.sort();
        v
    };
    assert_eq!(live(&f), sorted(vec![(gone, true), (fresh, true)]));
    f.clock.advance(LEASE / 2 + Duration::from_millis(1));
    assert_eq!(live(&f), sorted(vec![(gone, false), (fresh, true)]));
    assert_eq!(f.s.live_workers(f.now()), 1);
    assert_eq!(f.s.stats(f.now()).workers, 1);
    // Back: its next call makes it live again.
    assert!(f.lease(gone).is_none());
    assert_eq!(live(&f), sorted(vec![(gone, true), (fresh, true)]));
}

#[test]
fn a_running_task_keeps_its_losses_for_the_job_view_until_it_ends() {
    let mut f = Farm::new();
    let w = f.worker(GIB);
    let job = f.job(1, 0, 3, GIB);
    let g = f.lease(w).unwrap();
    let report = |f: &mut Farm, lease, iteration: u32| {
        let total = 1000.0 / f64::from(iteration);
        let p = v1::Progress {
            iteration,
            total_iterations: 500,
            losses: Some(v1::Losses {
                total,
                ..Default::default()
            }),
            preview: None,
        };
        let now = f.now();
        f.s.update(lease, Some(p), now).unwrap();
    };
    let history = |f: &Farm| -> Vec<(u32, f64)> {
        let j = f.s.job_proto(job, Detail::Full).unwrap();
        j.tasks[0]
            .loss_history
            .iter()
            .map(|p| (p.iteration, p.losses.unwrap().total))
            .collect()
    };
    for it in 1..=3 {
        report(&mut f, g.lease, it);
    }
    report(&mut f, g.lease, 3); // the same iteration again adds nothing
    assert_eq!(
        history(&f),
        [(1, 1000.0), (2, 500.0), (3, 1000.0 / 3.0)].map(|(i, t)| (i, f64::from(t as f32)))
    );
    // Not in every task event, nor in listings.
    assert!(Scheduler::task_proto(f.task(g.task), true)
        .loss_history
        .is_empty());
    let listed = f.s.job_proto(job, Detail::Summary).unwrap();
    assert!(listed.tasks[0].loss_history.is_empty());
    // Bounded however long it runs, the newest point always kept.
    for it in 4..=1000 {
        report(&mut f, g.lease, it);
    }
    let h = history(&f);
    assert!(
        h.len() <= LossHistory::MAX_POINTS && h.len() > LossHistory::MAX_POINTS / 2,
        "{}",
        h.len()
    );
    assert!(h.windows(2).all(|p| p[0].0 < p[1].0));
    assert_eq!((h[0].0, h[h.len() - 1].0), (1, 1000));
    // A lapsed lease ends the attempt: the next one starts a history of its own.
    assert_eq!(f.expire_after(LEASE * 2), 1);
    assert!(history(&f).is_empty());
    let g = f.lease(w).unwrap();
    report(&mut f, g.lease, 1);
    assert_eq!(history(&f).len(), 1);
    f.complete(g.lease).unwrap();
    assert!(history(&f).is_empty());
}

#[test]
fn a_stale_lease_is_refused_and_its_late_result_does_not_count() {
    let mut f = Farm::new();
    let (a, b) = (f.worker(0), f.worker(0));
    let job = f.job(1, 0, 0, 0);
    let old = f.lease(a).unwrap();
    f.expire_after(LEASE + Duration::from_millis(1));
    let new = f.lease(b).unwrap();

    for e in [
        f.update(old.lease).unwrap_err(),
        f.complete(old.lease).unwrap_err(),
        f.fail(old.lease, FailureKind::Application).unwrap_err(),
    ] {
        assert!(matches!(e, CoordinatorError::LeaseLost { .. }), "{e}");
    }
    assert!(matches!(f.task(new.task).state, TaskState::Leased(l) if l.worker == b));

    f.complete(new.lease).unwrap();
    assert_eq!(f.job_state(job), JobState::Completed);
    assert!(matches!(
        f.complete(new.lease).unwrap_err(),
        CoordinatorError::LeaseLost { .. }
    ));
    let j = f.s.job_proto(job, Detail::Full).unwrap();
    assert_eq!(j.result.unwrap().size, 3);
    assert_eq!(f.s.worker(b).unwrap().tasks_done, 1);
    assert_eq!(f.s.worker(a).unwrap().tasks_failed, 1);
}

#[test]
fn a_failing_task_is_retried_up_to_max_attempts_then_fails_the_job() {
    let mut f = Farm::new();
    let w = f.worker(0);
    let job = f.job(1, 0, 2, 0);
    let g = f.lease(w).unwrap();
    f.fail(g.lease, FailureKind::Application).unwrap();
    assert_eq!(f.task(g.task).state, TaskState::SoftFailed);
    assert_eq!(f.job_state(job), JobState::Active);

    let g = f.lease(w).unwrap();
    f.fail(g.lease, FailureKind::OutOfMemory).unwrap();
    let t = f.task(g.task);
    assert_eq!(t.state, TaskState::Failed);
    assert_eq!(t.attempts, 2);
    assert!(t.error.starts_with("out of memory"), "{}", t.error);
    assert_eq!(f.job_state(job), JobState::Failed);
    let j = f.s.job_proto(job, Detail::NoTasks).unwrap();
    assert!(j.error.contains("failed after 2 attempts"), "{}", j.error);
    assert!(f.lease(w).is_none());

    // The default applies when the job says 0.
    let job = f.job(1, 0, 0, 0);
    for _ in 0..3 {
        let g = f.lease(w).unwrap();
        f.fail(g.lease, FailureKind::Application).unwrap();
    }
    assert_eq!(f.job_state(job), JobState::Failed);
}

#[test]
fn a_worker_that_fails_three_tasks_of_a_job_is_blocklisted_for_it() {
    let mut f = Farm::new();
    let (bad, good) = (f.worker(0), f.worker(0));
    let job = f.job(5, 0, 10, 0);
    let other = f.job(1, 0, 0, 0);
    for _ in 0..BLOCKLIST_AFTER {
        let g = f.lease(bad).unwrap();
        assert_eq!(g.job, job);
        f.fail(g.lease, FailureKind::Application).unwrap();
    }
    assert!(f.s.blocklisted(job, bad));
    assert!(!f.s.blocklisted(job, good));
    // The bad worker now only gets the other job's task, then nothing.
    assert_eq!(f.lease(bad).unwrap().job, other);
    assert!(f.lease(bad).is_none());
    assert_eq!(f.lease(good).unwrap().job, job);
    assert!(f
        .s
        .take_effects()
        .contains(&Effect::FailureCounted(job, bad)));
}

#[test]
fn an_interrupted_attempt_is_handed_back_without_using_an_attempt() {
    let mut f = Farm::new();
    let w = f.worker(0);
    let job = f.job(1, 0, 1, 0);
    for _ in 0..5 {
        let g = f.lease(w).unwrap();
        f.update(g.lease).unwrap();
        f.fail(g.lease, FailureKind::Interrupted).unwrap();
        let t = f.task(g.task);
        assert_eq!(t.state, TaskState::Queued);
        assert_eq!(t.attempts, 0);
    }
    assert_eq!(f.s.failures(job, w), 0);
    assert_eq!(f.s.worker(w).unwrap().tasks_failed, 0);
    let g = f.lease(w).unwrap();
    f.complete(g.lease).unwrap();
    assert_eq!(f.job_state(job), JobState::Completed);
}

#[test]
fn higher_priority_goes_first_then_submission_order_then_frame_order() {
    let mut f = Farm::new();
    let w = f.worker(0);
    let low = f.job(2, 0, 0, 0);
    let high = f.job(1, 5, 0, 0);
    let low2 = f.job(1, 0, 0, 0);
    let negative = f.job(1, -1, 0, 0);
    let order: Vec<(JobId, u32)> = (0..5)
        .map(|_| {
            let g = f.lease(w).unwrap();
            (g.job, f.task(g.task).index)
        })
        .collect();
    assert_eq!(
        order,
        [(high, 0), (low, 0), (low, 1), (low2, 0), (negative, 0)]
    );
}

#[test]
fn a_task_never_goes_to_a_worker_with_too_little_memory() {
    let mut f = Farm::new();
    let small = f.worker(4 * GIB);
    let unknown = f.worker(0);
    let big = f.worker(16 * GIB);
    let heavy = f.job(1, 10, 0, 8 * GIB);
    assert!(f.lease(small).is_none());
    assert!(f.lease(unknown).is_none());
    let light = f.job(1, 0, 0, 0);
    // The small worker skips the heavy task (higher priority) and takes the light one.
    assert_eq!(f.lease(small).unwrap().job, light);
    assert_eq!(f.lease(big).unwrap().job, heavy);
}

#[test]
fn cancel_reaches_a_running_task_through_the_update_answer() {
    let mut f = Farm::new();
    let w = f.worker(0);
    let job = f.job(2, 0, 0, 0);
    let g = f.lease(w).unwrap();
    f.update(g.lease).unwrap();
    f.s.cancel(job, f.now()).unwrap();
    assert_eq!(f.job_state(job), JobState::Canceled);
    let t = f.task(g.task);
    assert!(matches!(t.state, TaskState::Canceled { draining: Some(_) }));
    assert_eq!(
        f.s.job_tasks(job)
            .filter(|t| t.state == TaskState::Canceled { draining: None })
            .count(),
        1
    );

    let answer = f.update(g.lease).unwrap();
    assert!(answer.cancel);
    // The worker stops and says so: accepted, the task stays canceled.
    f.fail(g.lease, FailureKind::Interrupted).unwrap();
    let t = f.task(g.task);
    assert_eq!(t.state, TaskState::Canceled { draining: None });
    assert_eq!(t.attempts, 1);
    assert!(f.s.worker(w).unwrap().current_task.is_none());
    assert!(f.lease(w).is_none());
    assert_eq!(f.s.next_deadline(), None);
    assert!(f.s.cancel(job, f.now()).is_ok());
}

#[test]
fn a_result_reported_after_cancel_is_accepted_but_not_used() {
    let mut f = Farm::new();
    let w = f.worker(0);
    let job = f.job(1, 0, 0, 0);
    let g = f.lease(w).unwrap();
    f.s.cancel(job, f.now()).unwrap();
    f.complete(g.lease).unwrap();
    assert_eq!(f.task(g.task).state, TaskState::Canceled { draining: None });
    assert!(f.task(g.task).result.is_none());
    assert_eq!(f.job_state(job), JobState::Canceled);
    // A canceled task whose worker vanished is released when the lease lapses.
    let job = f.job(1, 0, 0, 0);
    let g = f.lease(w).unwrap();
    f.s.cancel(job, f.now()).unwrap();
    assert_eq!(f.expire_after(LEASE), 1);
    assert_eq!(f.task(g.task).state, TaskState::Canceled { draining: None });
    assert_eq!(f.s.failures(job, w), 0);
}

#[test]
fn retry_requeues_failed_and_canceled_tasks_of_a_finished_job() {
    let mut f = Farm::new();
    let w = f.worker(0);
    let job = f.job(2, 0, 1, 0);
    let first = f.lease(w).unwrap();
    let e = f.s.retry(job, f.now()).unwrap_err();
    assert!(matches!(e, CoordinatorError::WrongJobState { .. }), "{e}");
    f.complete(first.lease).unwrap();
    let second = f.lease(w).unwrap();
    f.fail(second.lease, FailureKind::Application).unwrap();
    assert_eq!(f.job_state(job), JobState::Failed);

    f.s.retry(job, f.now()).unwrap();
    assert_eq!(f.job_state(job), JobState::Active);
    let t = f.task(second.task);
    assert_eq!(
        (t.state.clone(), t.attempts, t.error.as_str()),
        (TaskState::Queued, 0, "")
    );
    assert_eq!(f.task(first.task).state, TaskState::Succeeded);
    let g = f.lease(w).unwrap();
    assert_eq!(g.task, second.task);
    f.complete(g.lease).unwrap();
    assert_eq!(f.job_state(job), JobState::Completed);
}

#[test]
fn a_failed_task_prefers_another_worker_but_its_own_may_take_it_back() {
    let mut f = Farm::new();
    let (a, b) = (f.worker(0), f.worker(0));
    let job = f.job(2, 0, 0, 0);
    let g0 = f.lease(a).unwrap();
    f.fail(g0.lease, FailureKind::Application).unwrap();
    // Worker a skips the task it failed while another is ready...
    let g1 = f.lease(a).unwrap();
    assert_ne!(g1.task, g0.task);
    // ...and b takes it.
    assert_eq!(f.lease(b).unwrap().task, g0.task);
    f.s.cancel(job, f.now()).unwrap();

    let _ = f.job(1, 0, 0, 0);
    let g = f.lease(a).unwrap();
    f.fail(g.lease, FailureKind::Application).unwrap();
    assert_eq!(
        f.lease(a).unwrap().task,
        g.task,
        "nothing else to do: the same worker retries"
    );
}

#[test]
fn other_tasks_of_a_job_finish_before_it_fails() {
    let mut f = Farm::new();
    let w = f.worker(0);
    let job = f.job(2, 0, 1, 0);
    let a = f.lease(w).unwrap();
    let b = f.lease(w).unwrap();
    f.fail(a.lease, FailureKind::Application).unwrap();
    assert_eq!(f.job_state(job), JobState::Active);
    f.complete(b.lease).unwrap();
    assert_eq!(f.job_state(job), JobState::Failed);
    assert!(f.s.take_effects().contains(&Effect::JobStateChanged(job)));
}

#[test]
fn a_restart_voids_leases_without_using_attempts() {
    let mut f = Farm::new();
    let w = f.worker(0);
    let job = f.job(3, 0, 0, 0);
    let done = f.lease(w).unwrap();
    f.complete(done.lease).unwrap();
    let running = f.lease(w).unwrap();
    f.update(running.lease).unwrap();
    let failed_once = f.lease(w).unwrap();
    f.fail(failed_once.lease, FailureKind::Application).unwrap();
    let retrying = f.lease(w).unwrap();
    assert_eq!(retrying.task, failed_once.task);

    let snapshot = Snapshot {
        jobs: f.s.jobs.values().cloned().collect(),
        tasks: f.s.tasks.values().cloned().collect(),
        workers: f.s.workers.values().cloned().collect(),
        failures: f
            .s
            .failures
            .iter()
            .map(|((j, w), n)| (*j, *w, *n))
            .collect(),
    };
    let mut s = Scheduler::restore(f.s.config, snapshot);
    let effects = s.take_effects();
    assert!(effects.contains(&Effect::TaskChanged(running.task)));
    assert!(effects.contains(&Effect::TasksReady));

    let t = s.task(running.task).unwrap();
    assert_eq!((t.state.clone(), t.attempts), (TaskState::Queued, 0));
    let t = s.task(failed_once.task).unwrap();
    assert_eq!((t.state.clone(), t.attempts), (TaskState::SoftFailed, 1));
    assert_eq!(s.task(done.task).unwrap().state, TaskState::Succeeded);
    assert!(s.worker(w).unwrap().current_task.is_none());
    assert_eq!(s.job(job).unwrap().state, JobState::Active);
    assert_eq!(s.failures(job, w), 1);
    let now = f.clock.now_ms();
    assert!(matches!(
        s.update(running.lease, None, now).unwrap_err(),
        CoordinatorError::LeaseLost { .. }
    ));
    // Both go out again, in frame order.
    assert_eq!(s.lease(w, now).unwrap().unwrap().task, running.task);
    assert_eq!(s.lease(w, now).unwrap().unwrap().task, failed_once.task);
}

#[test]
fn unknown_workers_and_jobs_are_not_found() {
    let mut f = Farm::new();
    let now = f.now();
    assert!(matches!(
        f.s.lease(WorkerId::new(), now).unwrap_err(),
        CoordinatorError::NotFound { kind: "worker", .. }
    ));
    assert!(matches!(
        f.s.cancel(JobId::new(), now).unwrap_err(),
        CoordinatorError::NotFound { kind: "job", .. }
    ));
    assert!(
        f.s.take_effects().is_empty(),
        "a refused event changes nothing"
    );
}

#[test]
fn job_state_follows_the_tasks() {
    use TaskState::*;
    let lease = Lease {
        id: LeaseId::new(),
        worker: WorkerId::new(),
        deadline_ms: 0,
    };
    let cases: [(&[TaskState], JobState); 7] = [
        (&[Queued, Queued], JobState::Queued),
        (&[Queued, Leased(lease)], JobState::Active),
        (&[Succeeded, Queued], JobState::Active),
        (&[Failed, Running(lease)], JobState::Active),
        (&[Succeeded, Succeeded], JobState::Completed),
        (&[Succeeded, Failed], JobState::Failed),
        (&[Failed, Canceled { draining: None }], JobState::Canceled),
    ];
    for (tasks, want) in cases {
        let mut counts = StateCounts::default();
        for t in tasks.iter() {
            counts.add(t);
        }
        assert_eq!(JobState::of(&counts), want, "{tasks:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Dependencies and assemble tasks

impl Farm {
    /// A job of `specs` as given (dependencies included).
    fn job_of(&mut self, specs: Vec<v1::TaskSpec>, max_attempts: u32) -> JobId {
        let spec = v1::JobSpec {
            max_attempts,
            ..Default::default()
        };
        let now = self.now();
        self.s.submit(JobId::new(), spec, specs, now).unwrap()
    }

    fn state_of(&self, job: JobId, index: usize) -> TaskState {
        self.s.job_tasks(job).nth(index).unwrap().state.clone()
    }
}

fn task(name: &str, depends_on: &[u32]) -> v1::TaskSpec {
    v1::TaskSpec {
        output_name: name.into(),
        depends_on: depends_on.to_vec(),
        ..Default::default()
    }
}

fn statistics_task(depends_on: &[u32]) -> v1::TaskSpec {
    v1::TaskSpec {
        part: Some(v1::task_spec::Part::Statistics(v1::Statistics {
            full_width: 64,
            full_height: 48,
            piece_size: 64,
            style_only: true,
        })),
        ..task("statistics", depends_on)
    }
}

fn assemble_task(depends_on: &[u32]) -> v1::TaskSpec {
    v1::TaskSpec {
        part: Some(v1::task_spec::Part::Assemble(v1::Assemble {
            kind: v1::AssembleKind::ContactSheet as i32,
            ..Default::default()
        })),
        job_result: true,
        ..task("out.png", depends_on)
    }
}

#[test]
fn a_shard_waits_for_the_statistics_but_does_not_start_from_them() {
    let mut f = Farm::new();
    let w = f.worker(GIB);
    let job = f.job_of(vec![statistics_task(&[]), task("shard", &[0])], 0);
    assert_eq!(f.state_of(job, 1), TaskState::Waiting);
    let statistics = f.lease(w).unwrap();
    assert_eq!(statistics.spec.output_name, "statistics");
    f.complete_with(statistics.lease, "5a").unwrap();
    let shard = f.lease(w).unwrap();
    assert_eq!(shard.spec.output_name, "shard");
    assert!(shard.spec.init_image.is_none());
    assert_ne!(
        shard.spec.settings.map(|s| s.init),
        Some(v1::Init::Image as i32)
    );
}

#[test]
fn a_task_waits_for_its_dependency_and_starts_from_its_result() {
    let mut f = Farm::new();
    let w = f.worker(GIB);
    let job = f.job_of(vec![task("coarse", &[]), task("tile", &[0])], 0);
    assert_eq!(f.state_of(job, 1), TaskState::Waiting);
    let first = f.lease(w).unwrap();
    assert_eq!(first.spec.output_name, "coarse");
    // The waiting task is not leasable meanwhile.
    let w2 = f.worker(GIB);
    assert!(f.lease(w2).is_none());
    f.complete(first.lease).unwrap();
    let second = f.lease(w2).unwrap();
    assert_eq!(second.spec.output_name, "tile");
    let init = second.spec.init_image.as_ref().unwrap();
    assert_eq!(init.sha256, "ab".repeat(32));
    assert_eq!(
        second.spec.settings.as_ref().unwrap().init,
        v1::Init::Image as i32
    );
    assert!(f
        .s
        .take_effects()
        .contains(&Effect::TaskChanged(second.task)));
}

#[test]
fn a_failed_dependency_fails_the_chain_behind_it() {
    let mut f = Farm::new();
    let w = f.worker(GIB);
    let job = f.job_of(vec![task("a", &[]), task("b", &[0]), task("c", &[1])], 1);
    let a = f.lease(w).unwrap();
    f.fail(a.lease, FailureKind::Application).unwrap();
    assert_eq!(f.state_of(job, 1), TaskState::Failed);
    assert_eq!(f.state_of(job, 2), TaskState::Failed);
    let j = f.s.job_proto(job, Detail::Full).unwrap();
    assert_eq!(j.state, v1::JobState::Failed as i32);
    // The job's error names the root cause, not a task that never ran.
    assert!(
        j.error
            .starts_with("task 0 (a) failed after 1 attempt: it broke"),
        "{}",
        j.error
    );
    assert!(f
        .s
        .job_tasks(job)
        .nth(2)
        .unwrap()
        .error
        .contains("task 1 (b)"));

    // Retry: the first runs again and the others wait for it again.
    let now = f.now();
    f.s.retry(job, now).unwrap();
    assert_eq!(f.state_of(job, 0), TaskState::Queued);
    assert_eq!(f.state_of(job, 1), TaskState::Waiting);
    assert_eq!(f.state_of(job, 2), TaskState::Waiting);
}

#[test]
fn cancel_reaches_waiting_tasks() {
    let mut f = Farm::new();
    let w = f.worker(GIB);
    let job = f.job_of(vec![task("a", &[]), task("b", &[0])], 0);
    let a = f.lease(w).unwrap();
    let now = f.now();
    f.s.cancel(job, now).unwrap();
    assert_eq!(f.state_of(job, 1), TaskState::Canceled { draining: None });
    f.complete(a.lease).unwrap();
    let j = f.s.job(job).unwrap();
    assert_eq!(j.state, JobState::Canceled);
}

#[test]
fn assemble_tasks_are_the_coordinators_and_make_the_job_result() {
    let mut f = Farm::new();
    let w = f.worker(GIB);
    let job = f.job_of(
        vec![task("t0", &[]), task("t1", &[]), assemble_task(&[0, 1])],
        0,
    );
    f.s.take_effects();
    for _ in 0..2 {
        let g = f.lease(w).unwrap();
        assert_ne!(g.spec.output_name, "out.png");
        f.complete(g.lease).unwrap();
    }
    // Ready, announced, but never leased.
    assert_eq!(f.state_of(job, 2), TaskState::Queued);
    assert!(f.s.take_effects().contains(&Effect::AssembleReady));
    assert!(f.lease(w).is_none());
    let ready = f.s.ready_assemblies();
    assert_eq!(ready.len(), 1);
    assert_eq!(ready[0].inputs.len(), 2);
    assert_eq!(f.s.job(job).unwrap().state, JobState::Active);

    let sheet = v1::BlobRef {
        sha256: "cd".repeat(32),
        size: 9,
    };
    let now = f.now();
    f.s.assembled(ready[0].task, Ok((sheet.clone(), None)), now)
        .unwrap();
    let j = f.s.job_proto(job, Detail::Full).unwrap();
    assert_eq!(j.state, v1::JobState::Completed as i32);
    assert_eq!(j.result, Some(sheet));
    assert!(f.s.ready_assemblies().is_empty());

    // A failed assembly fails the job with its reason.
    let job = f.job_of(vec![task("t", &[]), assemble_task(&[0])], 0);
    let g = f.lease(w).unwrap();
    f.complete(g.lease).unwrap();
    let ready = f.s.ready_assemblies();
    let now = f.now();
    f.s.assembled(ready[0].task, Err("bad tiles".into()), now)
        .unwrap();
    let j = f.s.job_proto(job, Detail::Full).unwrap();
    assert_eq!(j.state, v1::JobState::Failed as i32);
    assert!(j.error.ends_with("bad tiles"), "{}", j.error);
}
