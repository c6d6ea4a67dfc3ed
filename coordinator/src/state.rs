//! The farm's state: the scheduler and the database together on one dedicated thread.
//!
//! Every event runs there, in order: the scheduler applies it, the rows it changed are written
//! in one transaction, and only then are callers answered, watchers told and waiting workers
//! woken. The async side sends closures ([`StateHandle::call`]) and awaits their answers, so no
//! database work ever runs on the runtime's threads, there are no locks, and an acknowledged
//! change is on disk.
//!
//! Group commit: the thread runs every call already queued (up to [`MAX_BATCH`]) before it
//! writes, so one transaction and one fsync cover them all; the answers of calls that changed
//! something wait for that commit. With one fsync per call the farm dispatched ~250 tasks/s
//! whatever the number of workers.
//!
//! The database is the truth. When a batch cannot be written (a full disk, an I/O error), its
//! changes are undone by rebuilding the scheduler from the database as it was last committed
//! ([`Scheduler::reloaded`]), nobody is told of them, and every call of the batch whose answer
//! rested on them gets an error saying that nothing was changed: RESOURCE_EXHAUSTED ("the
//! coordinator's disk is full: ...") when the disk is full, UNAVAILABLE otherwise.

use std::collections::{BTreeSet, HashMap};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;

use stylefarm_proto::ids::{JobId, TaskId};
use stylefarm_proto::v1::{self, job_event::Event};
use tokio::sync::{broadcast, oneshot, watch, Notify};

use crate::clock::Clock;
use crate::error::{CoordinatorError, Result};
use crate::metrics::Metrics;
use crate::scheduler::{Detail, Effect, Scheduler, SchedulerConfig};
use crate::store::{Store, DB_FILE};

/// Events buffered per watched job before a slow watcher is resynchronised with a snapshot.
const WATCH_BUFFER: usize = 256;

/// Wake-ups shared by the database thread, the gRPC handlers and the expiry loop.
#[derive(Debug)]
pub(crate) struct Signals {
    /// A task became ready: long-polling workers look again.
    pub(crate) tasks_ready: Notify,
    /// A lease was granted: the expiry loop looks at the deadlines again.
    pub(crate) leases_changed: Notify,
    /// An assemble task became ready: the assembler looks for work (one permit is kept when
    /// it is busy).
    pub(crate) assembly_ready: Notify,
    shutdown: watch::Sender<bool>,
}

impl Signals {
    pub(crate) fn new() -> Self {
        Self {
            tasks_ready: Notify::new(),
            leases_changed: Notify::new(),
            assembly_ready: Notify::new(),
            shutdown: watch::Sender::new(false),
        }
    }

    /// Tells long polls, watch streams and the expiry loop to finish.
    pub(crate) fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Whether shutdown has begun.
    pub(crate) fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Completes once shutdown has begun.
    pub(crate) async fn shutdown_requested(&self) {
        let mut rx = self.shutdown.subscribe();
        // An error means the sender is gone, which only happens once everything is dropped.
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// What a watcher starts from: the job now, and its events from now on (`None` when the job
/// is already finished).
pub(crate) type Watch = (v1::Job, Option<broadcast::Receiver<v1::JobEvent>>);

/// The most calls one commit covers.
const MAX_BATCH: usize = 256;

/// An answer held back until the batch is committed; told why the write failed, if it did.
type Reply = Box<dyn FnOnce(Option<&NotWritten>) + Send>;

/// Why a batch was not written, as each of its calls is told.
#[derive(Debug)]
struct NotWritten {
    disk_full: bool,
    /// The database file and what SQLite said.
    reason: String,
}

impl NotWritten {
    fn new(e: &CoordinatorError, db: &Path) -> Self {
        Self {
            disk_full: e.is_disk_full(),
            reason: format!("cannot write {} ({e})", db.display()),
        }
    }

    /// The error one call of the batch gets.
    fn error(&self) -> CoordinatorError {
        if self.disk_full {
            CoordinatorError::DiskFull(format!(
                "{}; the call changed nothing and may be made again once space is freed",
                self.reason
            ))
        } else {
            CoordinatorError::Unavailable(format!(
                "the coordinator could not record the change: {}; the call changed nothing and \
                 may be made again",
                self.reason
            ))
        }
    }
}

/// State owned by the database thread.
pub(crate) struct State {
    pub(crate) sched: Scheduler,
    store: Store,
    /// The database file, for messages.
    db_path: PathBuf,
    clock: Arc<dyn Clock>,
    signals: Arc<Signals>,
    watchers: HashMap<JobId, broadcast::Sender<v1::JobEvent>>,
    stopped: bool,
    /// Effects applied in memory and not yet written.
    pending: Vec<Effect>,
    /// Answers waiting for the commit of `pending`.
    replies: Vec<Reply>,
    /// The scheduler may differ from the database: a write failed and so did the reload
    /// after it. Every call reloads first ([`Self::refresh`]).
    stale: bool,
    /// The wake-ups of the last reload, given again after the next commit: a waiter that could
    /// not act on them then (the assembler, still busy with the run whose outcome was not
    /// written) looks once more when writes pass again.
    rewake: Vec<Effect>,
    /// Where each commit's tally and counted events go.
    metrics: Arc<Metrics>,
    /// Seconds of the tasks completed in this batch, for the metrics once it is written.
    durations: Vec<f64>,
}

impl State {
    /// Opens the database under `data_dir` and restores the farm from it: leases held before
    /// are void and their tasks queued again. Blocking.
    pub(crate) fn open(
        data_dir: &Path,
        config: SchedulerConfig,
        clock: Arc<dyn Clock>,
        signals: Arc<Signals>,
    ) -> Result<Self> {
        let db_path = data_dir.join(DB_FILE);
        let full = |e: CoordinatorError| {
            if e.is_disk_full() {
                CoordinatorError::DiskFull(NotWritten::new(&e, &db_path).reason)
            } else {
                e
            }
        };
        let mut store = Store::open(&db_path).map_err(full)?;
        let snapshot = store.load()?;
        let mut sched = Scheduler::restore(config, snapshot);
        let effects = sched.take_effects();
        let requeued = effects
            .iter()
            .filter(|e| matches!(e, Effect::TaskChanged(_)))
            .count();
        store.write(&sched, &effects).map_err(full)?;
        let metrics = Metrics::new();
        metrics.publish(sched.tally(), sched.take_counted());
        if requeued > 0 {
            tracing::info!(
                tasks = requeued,
                "leases held before the restart are void: their tasks are queued again"
            );
        }
        Ok(Self {
            sched,
            store,
            db_path,
            clock,
            signals,
            watchers: HashMap::new(),
            stopped: false,
            pending: Vec::new(),
            replies: Vec::new(),
            stale: false,
            rewake: Vec::new(),
            metrics,
            durations: Vec::new(),
        })
    }

    /// A task of this batch completed after `seconds` (as its worker measured): counted once
    /// the batch is written.
    pub(crate) fn task_took(&mut self, seconds: f64) {
        self.durations.push(seconds);
    }

    /// The metrics this state publishes to after each commit.
    pub(crate) fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Now, by the injected clock.
    pub(crate) fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Runs one event on the scheduler at the current time. What it changed is persisted,
    /// watchers told and waiters woken at the end of the batch ([`Self::flush`]), before the
    /// call is answered.
    pub(crate) fn apply<T>(
        &mut self,
        event: impl FnOnce(&mut Scheduler, i64) -> Result<T>,
    ) -> Result<T> {
        let now = self.clock.now_ms();
        let out = event(&mut self.sched, now);
        self.pending.extend(self.sched.take_effects());
        out
    }

    /// Writes the batch's changes in one transaction, then answers its calls and tells
    /// watchers and waiters. When the write fails, the changes are undone instead and the
    /// calls are told so.
    fn flush(&mut self) {
        if self.pending.is_empty() && self.replies.is_empty() {
            return;
        }
        let effects = std::mem::take(&mut self.pending);
        let durations = std::mem::take(&mut self.durations);
        match self.store.write(&self.sched, &effects) {
            Ok(()) => {
                // Before the answers and the watchers: whoever hears of a change sees its
                // numbers.
                self.metrics
                    .publish(self.sched.tally(), self.sched.take_counted());
                for seconds in durations {
                    self.metrics.task_completed(seconds);
                }
                for reply in self.replies.drain(..) {
                    reply(None);
                }
                self.publish(&effects);
                let rewake = std::mem::take(&mut self.rewake);
                self.publish(&rewake);
            }
            Err(e) => {
                tracing::error!(error = %e, calls = self.replies.len(), "cannot write the farm's state to the database: the batch's changes are undone");
                let failed = NotWritten::new(&e, &self.db_path);
                // Undone before anyone can read them; should the reload fail too, the next
                // call reloads first.
                let _ = self.reload();
                for reply in self.replies.drain(..) {
                    reply(Some(&failed));
                }
            }
        }
    }

    /// Rebuilds the scheduler from the database, dropping whatever was not written, and wakes
    /// the waiters, which look again. On failure the state is stale until a reload succeeds.
    fn reload(&mut self) -> Result<()> {
        match self.store.load() {
            Ok(snapshot) => {
                self.sched = self.sched.reloaded(snapshot);
                self.stale = false;
                self.metrics
                    .publish(self.sched.tally(), self.sched.take_counted());
                let wake = self.sched.take_effects();
                self.publish(&wake);
                self.rewake = wake;
                Ok(())
            }
            Err(e) => {
                self.stale = true;
                tracing::error!(error = %e, "cannot read the farm's state back from the database");
                Err(CoordinatorError::Unavailable(format!(
                    "the coordinator cannot read its database {} ({e}); try again",
                    self.db_path.display()
                )))
            }
        }
    }

    /// Makes sure the scheduler holds what the database does before a call reads it.
    fn refresh(&mut self) -> Result<()> {
        if self.stale {
            self.reload()
        } else {
            Ok(())
        }
    }

    /// Subscribes to a job's events, atomically with its snapshot.
    pub(crate) fn watch(&mut self, job: JobId) -> Result<Watch> {
        let snapshot = self.sched.job_proto(job, Detail::Full)?;
        if self.sched.job(job)?.state.is_final() {
            return Ok((snapshot, None));
        }
        let tx = self
            .watchers
            .entry(job)
            .or_insert_with(|| broadcast::channel(WATCH_BUFFER).0);
        Ok((snapshot, Some(tx.subscribe())))
    }

    fn publish(&mut self, effects: &[Effect]) {
        let mut tasks_seen = BTreeSet::new();
        let mut tasks: Vec<TaskId> = Vec::new();
        let mut jobs: Vec<JobId> = Vec::new();
        for effect in effects {
            match effect {
                Effect::TasksReady => self.signals.tasks_ready.notify_waiters(),
                Effect::LeaseGranted => self.signals.leases_changed.notify_waiters(),
                Effect::AssembleReady => self.signals.assembly_ready.notify_one(),
                Effect::TaskChanged(t) => {
                    if tasks_seen.insert(*t) {
                        tasks.push(*t);
                    }
                }
                Effect::JobStateChanged(j) => {
                    if !jobs.contains(j) {
                        jobs.push(*j);
                    }
                }
                Effect::JobCreated(_)
                | Effect::JobChanged(_)
                | Effect::WorkerChanged(_)
                | Effect::FailureCounted(..)
                | Effect::FailuresCleared(_)
                | Effect::JobDeleted(_) => {}
            }
        }
        if self.watchers.is_empty() {
            return;
        }
        for id in tasks {
            let Some(task) = self.sched.task(id) else {
                continue;
            };
            if let Some(tx) = self.watchers.get(&task.job) {
                let event = Event::Task(Scheduler::task_proto(task, true));
                // An error only means nobody listens any more.
                let _ = tx.send(v1::JobEvent { event: Some(event) });
            }
        }
        for id in jobs {
            let Some(tx) = self.watchers.get(&id) else {
                continue;
            };
            let Ok(job) = self.sched.job_proto(id, Detail::NoTasks) else {
                continue;
            };
            let _ = tx.send(v1::JobEvent {
                event: Some(Event::Job(job)),
            });
            if self.sched.job(id).is_ok_and(|j| j.state.is_final()) {
                // Dropping the sender ends the watchers' streams once they have read the rest.
                self.watchers.remove(&id);
            }
        }
        self.watchers.retain(|_, tx| tx.receiver_count() > 0);
    }
}

type Call = Box<dyn FnOnce(&mut State) + Send>;

/// The async side's way into the farm's state (its database thread).
#[derive(Clone, Debug)]
pub(crate) struct StateHandle {
    tx: mpsc::Sender<Call>,
}

impl StateHandle {
    /// Starts the database thread with `state`; the receiver completes when the thread has
    /// stopped and closed the database.
    pub(crate) fn start(state: State) -> std::io::Result<(Self, oneshot::Receiver<()>)> {
        let (tx, rx) = mpsc::channel::<Call>();
        let (done_tx, done_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("stylefarm-db".into())
            .spawn(move || {
                let mut state = state;
                while let Ok(first) = rx.recv() {
                    let mut next = Some(first);
                    let mut batch = 0;
                    while let Some(call) = next.take() {
                        // A bug in one call must not take the farm down with it.
                        if std::panic::catch_unwind(AssertUnwindSafe(|| call(&mut state))).is_err()
                        {
                            tracing::error!("a coordinator call panicked; the farm carries on");
                        }
                        batch += 1;
                        if !state.stopped && batch < MAX_BATCH {
                            next = rx.try_recv().ok();
                        }
                    }
                    state.flush();
                    if state.stopped {
                        break;
                    }
                }
                drop(state);
                let _ = done_tx.send(());
            })?;
        Ok((Self { tx }, done_rx))
    }

    /// Runs `f` on the database thread and returns its answer.
    pub(crate) async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut State) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Box::new(move |state: &mut State| {
                if let Err(e) = state.refresh() {
                    let _ = tx.send(Err(e));
                    return;
                }
                let out = f(state);
                if state.pending.is_empty() {
                    let _ = tx.send(out);
                } else {
                    // The answer may rest on changes not yet written (this call's or an
                    // earlier one's of the batch): it waits for the commit, and fails with it.
                    state.replies.push(Box::new(move |failed| {
                        let _ = tx.send(match failed {
                            None => out,
                            Some(e) => Err(e.error()),
                        });
                    }));
                }
            }))
            .map_err(|_| CoordinatorError::ShuttingDown)?;
        rx.await.unwrap_or_else(|_| {
            Err(CoordinatorError::Internal(
                "the coordinator's database thread did not answer".into(),
            ))
        })
    }

    /// Stops the database thread after the calls already queued.
    pub(crate) async fn stop(&self) {
        let (tx, rx) = oneshot::channel();
        let stop = Box::new(move |state: &mut State| {
            state.stopped = true;
            let _ = tx.send(());
        });
        if self.tx.send(stop).is_ok() {
            let _ = rx.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;

    use rusqlite::Connection;
    use stylefarm_proto::ids::WorkerId;

    use super::*;
    use crate::clock::ManualClock;
    use crate::scheduler::{JobState, SchedulerConfig, TaskState};

    const CONFIG: SchedulerConfig = SchedulerConfig {
        lease_ms: 30_000,
        default_max_attempts: 3,
    };

    fn start(dir: &Path) -> StateHandle {
        let clock = Arc::new(ManualClock::default());
        let state = State::open(dir, CONFIG, clock, Arc::new(Signals::new())).unwrap();
        StateHandle::start(state).unwrap().0
    }

    async fn submit(h: StateHandle) -> Result<JobId> {
        h.call(|c| {
            c.apply(|s, now| {
                let tasks = vec![v1::TaskSpec::default()];
                s.submit(JobId::new(), v1::JobSpec::default(), tasks, now)
            })
        })
        .await
    }

    /// From another connection, makes every write that creates a job fail (as a full disk
    /// would: the whole transaction is refused), or, with `false`, lets them pass again.
    fn fail_job_inserts(dir: &Path, fail: bool) {
        fail_writes(dir, "INSERT ON jobs", fail);
    }

    /// From another connection, makes every transaction with a `write` (`INSERT ON jobs`,
    /// `UPDATE ON tasks`) fail, or, with `false`, lets them pass again.
    fn fail_writes(dir: &Path, write: &str, fail: bool) {
        let conn = Connection::open(dir.join(DB_FILE)).unwrap();
        let name: String = write
            .chars()
            .map(|c| if c.is_alphanumeric() { c } else { '_' })
            .collect();
        conn.execute_batch(&if fail {
            format!(
                "CREATE TRIGGER {name} BEFORE {write} BEGIN SELECT RAISE(ABORT, 'no room'); END;"
            )
        } else {
            format!("DROP TRIGGER {name};")
        })
        .unwrap();
    }

    type Pending<T> = Pin<Box<dyn Future<Output = Result<T>> + Send>>;

    /// Runs `calls` as one batch: the database thread is held until each has been queued.
    async fn one_batch<T>(h: &StateHandle, mut calls: Vec<Pending<T>>) -> Vec<Result<T>> {
        let (release, held) = mpsc::channel::<()>();
        h.tx.send(Box::new(move |_: &mut State| {
            let _ = held.recv();
        }))
        .unwrap();
        for call in &mut calls {
            assert!(futures::poll!(call.as_mut()).is_pending(), "queued");
        }
        release.send(()).unwrap();
        futures::future::join_all(calls).await
    }

    #[tokio::test]
    async fn a_batch_that_cannot_be_written_is_undone_and_each_of_its_calls_is_told() {
        let dir = tempfile::tempdir().unwrap();
        let h = start(dir.path());
        let a = submit(h.clone()).await.unwrap();
        let (_, events) = h.call(move |c| c.watch(a)).await.unwrap();
        let mut events = events.unwrap();

        fail_job_inserts(dir.path(), true);
        let cancel = h.clone();
        let read = h.clone();
        let calls: Vec<Pending<()>> = vec![
            Box::pin(async move {
                cancel
                    .call(move |c| c.apply(|s, now| s.cancel(a, now)))
                    .await
            }),
            Box::pin(async move { submit(read).await.map(|_| ()) }),
        ];
        let read = h.clone();
        let answers = one_batch(&h, calls).await;
        for answer in answers {
            let e = answer.unwrap_err();
            assert!(matches!(e, CoordinatorError::Unavailable(_)), "{e:?}");
            assert!(e.to_string().contains("the call changed nothing"), "{e}");
            assert!(e.to_string().contains("no room"), "{e}");
        }
        // Memory is the database again: the cancel is undone, the job never existed, and the
        // watcher heard of neither.
        let (state, jobs) = read
            .call(move |c| Ok((c.sched.job(a)?.state, c.sched.newest_jobs().count())))
            .await
            .unwrap();
        assert_eq!((state, jobs), (JobState::Queued, 1));
        assert!(events.try_recv().is_err(), "no event for unwritten changes");

        // A read after an unwritten change in its batch saw that change: it is refused too.
        let cancel = h.clone();
        let read = h.clone();
        let calls: Vec<Pending<JobState>> = vec![
            Box::pin(async move { submit(cancel).await.map(|_| JobState::Queued) }),
            Box::pin(async move { read.call(move |c| Ok(c.sched.job(a)?.state)).await }),
        ];
        for answer in one_batch(&h, calls).await {
            assert!(answer.is_err());
        }

        fail_job_inserts(dir.path(), false);
        let b = submit(h.clone()).await.unwrap();
        h.call(move |c| c.apply(|s, now| s.cancel(a, now)))
            .await
            .unwrap();
        // Watchers hear of a change after its call is answered.
        let heard = tokio::time::timeout(std::time::Duration::from_secs(5), events.recv()).await;
        assert!(
            heard.is_ok_and(|e| e.is_ok()),
            "written changes are published"
        );
        h.stop().await;

        let h = start(dir.path());
        let stored = h
            .call(|c| Ok(c.sched.newest_jobs().collect::<Vec<_>>()))
            .await
            .unwrap();
        assert_eq!(stored, vec![b, a]);
        h.stop().await;
    }

    #[tokio::test]
    async fn a_failed_write_leaves_the_leases_workers_hold() {
        let dir = tempfile::tempdir().unwrap();
        let h = start(dir.path());
        submit(h.clone()).await.unwrap();
        let worker: WorkerId = h
            .call(|c| {
                c.apply(|s, now| {
                    Ok(s.register_worker("w".into(), v1::Capabilities::default(), now))
                })
            })
            .await
            .unwrap();
        let grant = h
            .call(move |c| c.apply(|s, now| s.lease(worker, now)))
            .await
            .unwrap()
            .unwrap();
        let lease = grant.lease;
        let progress = |iteration| v1::Progress {
            iteration,
            ..Default::default()
        };

        fail_job_inserts(dir.path(), true);
        let (update, other) = (h.clone(), h.clone());
        let calls: Vec<Pending<()>> = vec![
            Box::pin(async move {
                update
                    .call(move |c| c.apply(|s, now| s.update(lease, Some(progress(3)), now)))
                    .await
                    .map(|_| ())
            }),
            Box::pin(async move { submit(other).await.map(|_| ()) }),
        ];
        assert!(one_batch(&h, calls).await.iter().all(Result::is_err));
        let task = grant.task;
        let (state, progress_seen) = h
            .call(move |c| {
                let t = c.sched.task(task).expect("the task");
                Ok((t.state.clone(), t.progress.clone()))
            })
            .await
            .unwrap();
        assert!(
            matches!(state, TaskState::Leased(l) if l.id == lease),
            "{state:?}"
        );
        assert_eq!(progress_seen, None, "the unwritten progress is undone");

        // The worker's next heartbeat finds its lease held.
        fail_job_inserts(dir.path(), false);
        h.call(move |c| c.apply(|s, now| s.update(lease, Some(progress(4)), now)))
            .await
            .unwrap();
        h.stop().await;
    }

    #[tokio::test]
    async fn an_assembly_whose_outcome_was_not_written_is_announced_again_after_the_next_commit() {
        let dir = tempfile::tempdir().unwrap();
        let signals = Arc::new(Signals::new());
        let clock = Arc::new(ManualClock::default());
        let state = State::open(dir.path(), CONFIG, clock, signals.clone()).unwrap();
        let h = StateHandle::start(state).unwrap().0;
        let announced = || {
            let signals = signals.clone();
            async move {
                let wait = std::time::Duration::from_secs(5);
                tokio::time::timeout(wait, signals.assembly_ready.notified())
                    .await
                    .is_ok()
            }
        };
        let sheet = v1::TaskSpec {
            part: Some(v1::task_spec::Part::Assemble(v1::Assemble {
                kind: v1::AssembleKind::ContactSheet as i32,
                ..Default::default()
            })),
            job_result: true,
            ..Default::default()
        };
        h.call(move |c| {
            c.apply(|s, now| s.submit(JobId::new(), v1::JobSpec::default(), vec![sheet], now))
        })
        .await
        .unwrap();
        assert!(announced().await);
        let task = h
            .call(|c| Ok(c.sched.ready_assemblies()[0].task))
            .await
            .unwrap();

        // The assembler's outcome is not written; it hears of the task again at once (and may
        // still be busy with it), and once more after the next commit.
        fail_writes(dir.path(), "UPDATE ON tasks", true);
        let result = v1::BlobRef {
            sha256: "ab".repeat(32),
            size: 1,
        };
        let outcome = Ok((result, None));
        let e = h
            .call(move |c| c.apply(|s, now| s.assembled(task, outcome, now)))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("no room"), "{e}");
        assert!(announced().await);
        fail_writes(dir.path(), "UPDATE ON tasks", false);
        h.call(|c| {
            c.apply(|s, now| Ok(s.register_worker("w".into(), v1::Capabilities::default(), now)))
        })
        .await
        .unwrap();
        assert!(announced().await, "announced again");
        let ready = h.call(|c| Ok(c.sched.ready_assemblies())).await.unwrap();
        assert_eq!(ready.len(), 1, "still to be assembled");
        h.stop().await;
    }

    #[test]
    fn a_full_disk_reads_as_such() {
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        );
        let failed = NotWritten::new(
            &CoordinatorError::Database(full),
            Path::new("/data/stylefarm.db"),
        );
        let status = tonic::Status::from(failed.error());
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(
            status
                .message()
                .starts_with("the coordinator's disk is full: cannot write /data/stylefarm.db"),
            "{}",
            status.message()
        );
    }
}
