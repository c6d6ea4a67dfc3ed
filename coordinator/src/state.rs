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

use std::collections::{BTreeSet, HashMap};
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;

use stylefarm_proto::ids::{JobId, TaskId};
use stylefarm_proto::v1::{self, job_event::Event};
use tokio::sync::{broadcast, oneshot, watch, Notify};

use crate::clock::Clock;
use crate::error::{CoordinatorError, Result};
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

/// An answer held back until the batch is committed; given the write error, if any.
type Reply = Box<dyn FnOnce(Option<&CoordinatorError>) + Send>;

/// State owned by the database thread.
pub(crate) struct State {
    pub(crate) sched: Scheduler,
    store: Store,
    clock: Arc<dyn Clock>,
    signals: Arc<Signals>,
    watchers: HashMap<JobId, broadcast::Sender<v1::JobEvent>>,
    stopped: bool,
    /// Effects applied in memory and not yet written.
    pending: Vec<Effect>,
    /// Whether the running call changed anything (its answer then waits for the commit).
    call_changed: bool,
    /// Answers waiting for the commit of `pending`.
    replies: Vec<Reply>,
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
        let mut store = Store::open(&data_dir.join(DB_FILE))?;
        let snapshot = store.load()?;
        let mut sched = Scheduler::restore(config, snapshot);
        let effects = sched.take_effects();
        let requeued = effects
            .iter()
            .filter(|e| matches!(e, Effect::TaskChanged(_)))
            .count();
        store.write(&sched, &effects)?;
        if requeued > 0 {
            tracing::info!(
                tasks = requeued,
                "leases held before the restart are void: their tasks are queued again"
            );
        }
        Ok(Self {
            sched,
            store,
            clock,
            signals,
            watchers: HashMap::new(),
            stopped: false,
            pending: Vec::new(),
            call_changed: false,
            replies: Vec::new(),
        })
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
        let effects = self.sched.take_effects();
        if !effects.is_empty() {
            self.pending.extend(effects);
            self.call_changed = true;
        }
        out
    }

    /// Writes the batch's changes in one transaction, then answers its calls and tells
    /// watchers and waiters.
    fn flush(&mut self) {
        if self.pending.is_empty() && self.replies.is_empty() {
            return;
        }
        let effects = std::mem::take(&mut self.pending);
        let written = self.store.write(&self.sched, &effects);
        if let Err(e) = &written {
            tracing::error!(error = %e, "cannot write the farm's state to the database");
        }
        for reply in self.replies.drain(..) {
            reply(written.as_ref().err());
        }
        // Published even when the write failed: watchers see what the farm does.
        self.publish(&effects);
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
                | Effect::FailuresCleared(_) => {}
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
                state.call_changed = false;
                let out = f(state);
                if state.call_changed {
                    state.replies.push(Box::new(move |failed| {
                        let _ = tx.send(match failed {
                            None => out,
                            Some(e) => Err(CoordinatorError::Internal(format!(
                                "cannot write the farm's state to the database: {e}"
                            ))),
                        });
                    }));
                } else {
                    let _ = tx.send(out);
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
        let _ = self
            .call(|state| {
                state.stopped = true;
                Ok(())
            })
            .await;
    }
}
