//! The database: jobs, tasks, workers and per-job failure counts in SQLite (WAL mode) under
//! the data directory, so that a restart (or a crash) loses nothing that was acknowledged.
//!
//! Specs, progress, results and losses are stored as prost-encoded messages; states, ids and
//! counters as columns (so `sqlite3 stylefarm.db` answers questions). The scheduler's
//! [`Effect`]s say which rows an event changed; [`Store::write`] writes them in one
//! transaction. Only the coordinator's database thread ([`crate::state`]) touches a `Store`.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use prost::Message;
use rusqlite::{params, Connection, Row};
use stylefarm_proto::ids::{JobId, LeaseId, TaskId, WorkerId};
use stylefarm_proto::v1;

use crate::error::{CoordinatorError, Result};
use crate::scheduler::{
    Effect, JobRecord, JobState, Lease, LossHistory, Scheduler, Snapshot, TaskKind, TaskRecord,
    TaskState, WorkerRecord,
};

/// The database file's name inside the data directory.
pub(crate) const DB_FILE: &str = "stylefarm.db";

/// Bumped whenever the schema changes. 2: tasks may be `waiting` (for the tasks they depend
/// on, listed in their spec), and a task's spec changes when it stops waiting.
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id          TEXT PRIMARY KEY,
    seq         INTEGER NOT NULL UNIQUE,   -- submission order
    spec        BLOB NOT NULL,             -- stylefarm.v1.JobSpec
    state       TEXT NOT NULL,             -- derived from the tasks; kept for people
    created_ms  INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    id                 TEXT PRIMARY KEY,
    job_id             TEXT NOT NULL REFERENCES jobs(id),
    idx                INTEGER NOT NULL,
    spec               BLOB NOT NULL,      -- stylefarm.v1.TaskSpec
    state              TEXT NOT NULL,      -- waiting, queued, leased, running, succeeded, soft_failed, failed, canceled
    attempts           INTEGER NOT NULL,
    worker_id          TEXT,               -- holds or last held the task
    lease_id           TEXT,               -- set while a lease is held
    lease_worker_id    TEXT,
    lease_deadline_ms  INTEGER,
    progress           BLOB,               -- stylefarm.v1.Progress
    result             BLOB,               -- stylefarm.v1.BlobRef
    final_losses       BLOB,               -- stylefarm.v1.Losses
    error              TEXT NOT NULL,
    failed_on          TEXT NOT NULL,      -- worker ids, comma-separated
    UNIQUE (job_id, idx)
);
CREATE TABLE IF NOT EXISTS workers (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    capabilities     BLOB NOT NULL,        -- stylefarm.v1.Capabilities
    registered_ms    INTEGER NOT NULL,
    last_seen_ms     INTEGER NOT NULL,
    current_task_id  TEXT,
    tasks_done       INTEGER NOT NULL,
    tasks_failed     INTEGER NOT NULL
);
-- Failures of a job's tasks per worker; at 3 the worker is blocklisted for the job.
CREATE TABLE IF NOT EXISTS blocklist (
    job_id     TEXT NOT NULL REFERENCES jobs(id),
    worker_id  TEXT NOT NULL,
    failures   INTEGER NOT NULL,
    PRIMARY KEY (job_id, worker_id)
);
";

/// The open database.
#[derive(Debug)]
pub(crate) struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (or creates) the database at `path`.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(CoordinatorError::Internal(format!(
                "{} cannot use write-ahead logging (journal mode {mode})",
                path.display()
            )));
        }
        // FULL: an acknowledged change survives a power loss, not only a crash.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(CoordinatorError::Internal(format!(
                "{} was written by a newer stylefarm (schema {version}, this one knows {SCHEMA_VERSION})",
                path.display()
            )));
        }
        // Written only when it changes: a database on a full disk still opens.
        if version != SCHEMA_VERSION {
            conn.execute_batch(SCHEMA)?;
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        }
        Ok(Self { conn })
    }

    /// Everything stored.
    pub(crate) fn load(&self) -> Result<Snapshot> {
        let mut snapshot = Snapshot::default();
        let mut stmt = self
            .conn
            .prepare("SELECT id, seq, spec, state, created_ms, updated_ms FROM jobs")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            snapshot.jobs.push(job_from_row(row)?);
        }
        let mut stmt = self.conn.prepare(
            "SELECT id, job_id, idx, spec, state, attempts, worker_id, lease_id, lease_worker_id,
                    lease_deadline_ms, progress, result, final_losses, error, failed_on
             FROM tasks",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            snapshot.tasks.push(task_from_row(row)?);
        }
        let mut stmt = self.conn.prepare(
            "SELECT id, name, capabilities, registered_ms, last_seen_ms, current_task_id,
                    tasks_done, tasks_failed
             FROM workers",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            snapshot.workers.push(worker_from_row(row)?);
        }
        let mut stmt = self
            .conn
            .prepare("SELECT job_id, worker_id, failures FROM blocklist")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let job: String = row.get(0)?;
            let worker: String = row.get(1)?;
            let what = || format!("blocklist row {job}/{worker}");
            snapshot
                .failures
                .push((parse_id(&job, what)?, parse_id(&worker, what)?, row.get(2)?));
        }
        Ok(snapshot)
    }

    /// Writes the rows `effects` name, as `sched` holds them now, in one transaction.
    pub(crate) fn write(&mut self, sched: &Scheduler, effects: &[Effect]) -> Result<()> {
        let mut created = Vec::new();
        let mut tasks = BTreeSet::new();
        let mut jobs = BTreeSet::new();
        let mut workers = BTreeSet::new();
        let mut failures = BTreeSet::new();
        let mut cleared = Vec::new();
        let mut deleted = Vec::new();
        for effect in effects {
            match effect {
                Effect::JobCreated(j) => created.push(*j),
                Effect::TaskChanged(t) => {
                    tasks.insert(*t);
                }
                Effect::JobChanged(j) | Effect::JobStateChanged(j) => {
                    jobs.insert(*j);
                }
                Effect::WorkerChanged(w) => {
                    workers.insert(*w);
                }
                Effect::FailureCounted(j, w) => {
                    failures.insert((*j, *w));
                }
                Effect::FailuresCleared(j) => cleared.push(*j),
                Effect::JobDeleted(j) => deleted.push(*j),
                Effect::TasksReady | Effect::LeaseGranted | Effect::AssembleReady => {}
            }
        }
        if created.is_empty()
            && tasks.is_empty()
            && jobs.is_empty()
            && workers.is_empty()
            && failures.is_empty()
            && cleared.is_empty()
            && deleted.is_empty()
        {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        for id in created {
            let job = sched.job(id)?;
            tx.prepare_cached(
                "INSERT INTO jobs (id, seq, spec, state, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                job.id.to_string(),
                job.seq,
                job.spec.encode_to_vec(),
                job_state_name(job.state),
                job.created_ms,
                job.updated_ms,
            ])?;
            for task in sched.job_tasks(id) {
                tx.prepare_cached(
                    "INSERT INTO tasks (id, job_id, idx, spec, state, attempts, error, failed_on)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, '', '')",
                )?
                .execute(params![
                    task.id.to_string(),
                    task.job.to_string(),
                    task.index,
                    task.spec.encode_to_vec(),
                    task_state_name(&task.state),
                    task.attempts,
                ])?;
                // Whatever else changed in the same event is written below.
                tasks.insert(task.id);
            }
        }
        for id in tasks {
            let Some(task) = sched.task(id) else { continue };
            let lease = task.state.lease();
            tx.prepare_cached(
                "UPDATE tasks SET state = ?2, attempts = ?3, worker_id = ?4, lease_id = ?5,
                        lease_worker_id = ?6, lease_deadline_ms = ?7, progress = ?8, result = ?9,
                        final_losses = ?10, error = ?11, failed_on = ?12, spec = ?13
                 WHERE id = ?1",
            )?
            .execute(params![
                task.id.to_string(),
                task_state_name(&task.state),
                task.attempts,
                task.worker.map(|w| w.to_string()),
                lease.map(|l| l.id.to_string()),
                lease.map(|l| l.worker.to_string()),
                lease.map(|l| l.deadline_ms),
                task.progress.as_ref().map(Message::encode_to_vec),
                task.result.as_ref().map(Message::encode_to_vec),
                task.final_losses.as_ref().map(Message::encode_to_vec),
                task.error,
                join_ids(&task.failed_on),
                task.spec.encode_to_vec(),
            ])?;
        }
        for id in jobs {
            let job = sched.job(id)?;
            tx.prepare_cached("UPDATE jobs SET state = ?2, updated_ms = ?3 WHERE id = ?1")?
                .execute(params![
                    job.id.to_string(),
                    job_state_name(job.state),
                    job.updated_ms
                ])?;
        }
        for id in workers {
            let Some(w) = sched.worker(id) else { continue };
            tx.prepare_cached(
                "INSERT INTO workers (id, name, capabilities, registered_ms, last_seen_ms,
                                      current_task_id, tasks_done, tasks_failed)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (id) DO UPDATE SET last_seen_ms = excluded.last_seen_ms,
                     current_task_id = excluded.current_task_id,
                     tasks_done = excluded.tasks_done, tasks_failed = excluded.tasks_failed",
            )?
            .execute(params![
                w.id.to_string(),
                w.name,
                w.capabilities.encode_to_vec(),
                w.registered_ms,
                w.last_seen_ms,
                w.current_task.map(|t| t.to_string()),
                w.tasks_done,
                w.tasks_failed,
            ])?;
        }
        for job in deleted {
            let id = job.to_string();
            tx.prepare_cached("DELETE FROM blocklist WHERE job_id = ?1")?
                .execute(params![id])?;
            tx.prepare_cached("DELETE FROM tasks WHERE job_id = ?1")?
                .execute(params![id])?;
            tx.prepare_cached("DELETE FROM jobs WHERE id = ?1")?
                .execute(params![id])?;
        }
        for job in cleared {
            tx.prepare_cached("DELETE FROM blocklist WHERE job_id = ?1")?
                .execute(params![job.to_string()])?;
        }
        for (job, worker) in failures {
            let n = sched.failures(job, worker);
            if n == 0 {
                continue;
            }
            tx.prepare_cached(
                "INSERT INTO blocklist (job_id, worker_id, failures) VALUES (?1, ?2, ?3)
                 ON CONFLICT (job_id, worker_id) DO UPDATE SET failures = excluded.failures",
            )?
            .execute(params![job.to_string(), worker.to_string(), n])?;
        }
        tx.commit()?;
        Ok(())
    }
}

fn job_state_name(s: JobState) -> &'static str {
    match s {
        JobState::Queued => "queued",
        JobState::Active => "active",
        JobState::Completed => "completed",
        JobState::Failed => "failed",
        JobState::Canceled => "canceled",
    }
}

fn task_state_name(s: &TaskState) -> &'static str {
    match s {
        TaskState::Queued => "queued",
        TaskState::Leased(_) => "leased",
        TaskState::Running(_) => "running",
        TaskState::Succeeded => "succeeded",
        TaskState::SoftFailed => "soft_failed",
        TaskState::Failed => "failed",
        TaskState::Canceled { .. } => "canceled",
        TaskState::Waiting => "waiting",
    }
}

fn corrupt(what: impl Into<String>, reason: impl ToString) -> CoordinatorError {
    CoordinatorError::Corrupt {
        what: what.into(),
        reason: reason.to_string(),
    }
}

fn parse_id<T: std::str::FromStr>(s: &str, what: impl Fn() -> String) -> Result<T>
where
    T::Err: ToString,
{
    s.parse().map_err(|e: T::Err| corrupt(what(), e))
}

fn decode<M: Message + Default>(bytes: &[u8], what: impl Fn() -> String) -> Result<M> {
    M::decode(bytes).map_err(|e| corrupt(what(), e))
}

fn decode_opt<M: Message + Default>(
    bytes: Option<Vec<u8>>,
    what: impl Fn() -> String,
) -> Result<Option<M>> {
    bytes.map(|b| decode(&b, what)).transpose()
}

fn join_ids(ids: &[WorkerId]) -> String {
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn job_from_row(row: &Row<'_>) -> Result<JobRecord> {
    let id: String = row.get(0)?;
    let what = || format!("job {id}");
    let spec: Vec<u8> = row.get(2)?;
    let state: String = row.get(3)?;
    Ok(JobRecord {
        id: parse_id(&id, what)?,
        seq: row.get(1)?,
        spec: decode(&spec, what)?,
        tasks: Vec::new(),
        created_ms: row.get(4)?,
        updated_ms: row.get(5)?,
        // Derived again from the tasks once they are loaded.
        state: match state.as_str() {
            "active" => JobState::Active,
            "completed" => JobState::Completed,
            "failed" => JobState::Failed,
            "canceled" => JobState::Canceled,
            _ => JobState::Queued,
        },
    })
}

fn task_from_row(row: &Row<'_>) -> Result<TaskRecord> {
    let id: String = row.get(0)?;
    let what = || format!("task {id}");
    let job: String = row.get(1)?;
    let spec: Vec<u8> = row.get(3)?;
    let state: String = row.get(4)?;
    let worker: Option<String> = row.get(6)?;
    let lease_id: Option<String> = row.get(7)?;
    let lease_worker: Option<String> = row.get(8)?;
    let deadline: Option<i64> = row.get(9)?;
    let failed_on: String = row.get(14)?;
    let lease = match (lease_id, lease_worker, deadline) {
        (Some(l), Some(w), Some(d)) => Some(Lease {
            id: parse_id::<LeaseId>(&l, what)?,
            worker: parse_id(&w, what)?,
            deadline_ms: d,
        }),
        _ => None,
    };
    let leased =
        |state: &str| lease.ok_or_else(|| corrupt(what(), format!("{state} without a lease")));
    let state = match state.as_str() {
        "queued" => TaskState::Queued,
        "waiting" => TaskState::Waiting,
        "leased" => TaskState::Leased(leased("leased")?),
        "running" => TaskState::Running(leased("running")?),
        "succeeded" => TaskState::Succeeded,
        "soft_failed" => TaskState::SoftFailed,
        "failed" => TaskState::Failed,
        "canceled" => TaskState::Canceled { draining: lease },
        other => return Err(corrupt(what(), format!("unknown state `{other}`"))),
    };
    let spec: v1::TaskSpec = decode(&spec, what)?;
    Ok(TaskRecord {
        id: parse_id::<TaskId>(&id, what)?,
        job: parse_id::<JobId>(&job, what)?,
        index: row.get(2)?,
        kind: TaskKind::of(&spec).map_err(|e| corrupt(what(), e))?,
        spec,
        state,
        attempts: row.get(5)?,
        worker: worker.map(|w| parse_id(&w, what)).transpose()?,
        progress: decode_opt(row.get(10)?, what)?,
        // Not stored: a restored task's plot starts again from its next report.
        loss_history: LossHistory::default(),
        result: decode_opt(row.get(11)?, what)?,
        final_losses: decode_opt(row.get(12)?, what)?,
        error: row.get(13)?,
        failed_on: failed_on
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| parse_id(s, what))
            .collect::<Result<_>>()?,
    })
}

fn worker_from_row(row: &Row<'_>) -> Result<WorkerRecord> {
    let id: String = row.get(0)?;
    let what = || format!("worker {id}");
    let caps: Vec<u8> = row.get(2)?;
    let current: Option<String> = row.get(5)?;
    Ok(WorkerRecord {
        id: parse_id(&id, what)?,
        name: row.get(1)?,
        capabilities: decode::<v1::Capabilities>(&caps, what)?,
        registered_ms: row.get(3)?,
        last_seen_ms: row.get(4)?,
        current_task: current.map(|t| parse_id(&t, what)).transpose()?,
        tasks_done: row.get(6)?,
        tasks_failed: row.get(7)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::{FailureKind, SchedulerConfig};

    const CONFIG: SchedulerConfig = SchedulerConfig {
        lease_ms: 30_000,
        default_max_attempts: 3,
    };

    fn write(store: &mut Store, s: &mut Scheduler) {
        let effects = s.take_effects();
        store.write(s, &effects).unwrap();
    }

    #[test]
    fn the_farm_survives_a_reopen_with_its_leases_voided() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let mut store = Store::open(&path).unwrap();
        let mut s = Scheduler::new(CONFIG);
        let w = s.register_worker("gpu-1".into(), v1::Capabilities::default(), 1_000);
        let spec = v1::JobSpec {
            name: "batch".into(),
            ..Default::default()
        };
        let tasks = vec![v1::TaskSpec::default(); 3];
        let job = s.submit(JobId::new(), spec, tasks, 1_000).unwrap();
        write(&mut store, &mut s);

        let done = s.lease(w, 2_000).unwrap().unwrap();
        let result = v1::BlobRef {
            sha256: "cd".repeat(32),
            size: 42,
        };
        s.complete(
            done.lease,
            result.clone(),
            Some(v1::Losses {
                total: 1.5,
                ..Default::default()
            }),
            2_500,
        )
        .unwrap();
        let failed = s.lease(w, 3_000).unwrap().unwrap();
        s.fail(failed.lease, FailureKind::Application, "bad pixels", 3_100)
            .unwrap();
        let running = s.lease(w, 4_000).unwrap().unwrap();
        let progress = v1::Progress {
            iteration: 7,
            total_iterations: 10,
            ..Default::default()
        };
        s.update(running.lease, Some(progress.clone()), 4_500)
            .unwrap();
        write(&mut store, &mut s);
        drop(store);

        let store = Store::open(&path).unwrap();
        let snapshot = store.load().unwrap();
        assert_eq!(snapshot.jobs.len(), 1);
        assert_eq!(snapshot.tasks.len(), 3);
        assert_eq!(snapshot.failures, vec![(job, w, 1)]);
        let mut restored = Scheduler::restore(CONFIG, snapshot);
        let j = restored.job(job).unwrap();
        assert_eq!(j.spec.name, "batch");
        assert_eq!(j.created_ms, 1_000);
        let t = restored.task(done.task).unwrap();
        assert_eq!(t.state, TaskState::Succeeded);
        assert_eq!(t.result.as_ref(), Some(&result));
        assert_eq!(t.final_losses.map(|l| l.total), Some(1.5));
        let t = restored.task(running.task).unwrap();
        assert_eq!((t.state.clone(), t.attempts), (TaskState::Queued, 0));
        assert_eq!(t.progress.as_ref(), Some(&progress));
        assert_eq!(t.worker, Some(w));
        let t = restored.task(failed.task).unwrap();
        assert_eq!(t.state, TaskState::SoftFailed);
        assert_eq!(t.error, "bad pixels");
        assert_eq!(t.failed_on, vec![w]);
        let worker = restored.worker(w).unwrap();
        assert_eq!(
            (worker.name.as_str(), worker.tasks_done, worker.tasks_failed),
            ("gpu-1", 1, 1)
        );
        assert!(restored
            .take_effects()
            .contains(&Effect::TaskChanged(running.task)));
    }

    #[test]
    fn waiting_tasks_and_their_filled_in_specs_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let mut store = Store::open(&path).unwrap();
        let mut s = Scheduler::new(CONFIG);
        let w = s.register_worker("w".into(), v1::Capabilities::default(), 1_000);
        let tasks = vec![
            v1::TaskSpec::default(),
            v1::TaskSpec {
                depends_on: vec![0],
                ..Default::default()
            },
            v1::TaskSpec {
                depends_on: vec![1],
                ..Default::default()
            },
        ];
        let job = s
            .submit(JobId::new(), v1::JobSpec::default(), tasks, 1_000)
            .unwrap();
        let first = s.lease(w, 1_000).unwrap().unwrap();
        let result = v1::BlobRef {
            sha256: "ef".repeat(32),
            size: 5,
        };
        s.complete(first.lease, result.clone(), None, 1_500)
            .unwrap();
        write(&mut store, &mut s);
        drop(store);

        let store = Store::open(&path).unwrap();
        let restored = Scheduler::restore(CONFIG, store.load().unwrap());
        let tasks: Vec<&TaskRecord> = restored.job_tasks(job).collect();
        assert_eq!(tasks[1].state, TaskState::Queued);
        assert_eq!(tasks[1].spec.init_image.as_ref(), Some(&result));
        assert_eq!(tasks[2].state, TaskState::Waiting);
        assert_eq!(tasks[2].spec.depends_on, vec![1]);
    }

    #[test]
    fn an_assembly_a_restart_interrupted_is_announced_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let mut store = Store::open(&path).unwrap();
        let mut s = Scheduler::new(CONFIG);
        let w = s.register_worker("w".into(), v1::Capabilities::default(), 1_000);
        let assemble = v1::TaskSpec {
            part: Some(v1::task_spec::Part::Assemble(v1::Assemble {
                kind: v1::AssembleKind::ContactSheet as i32,
                ..Default::default()
            })),
            depends_on: vec![0],
            job_result: true,
            ..Default::default()
        };
        let tasks = vec![v1::TaskSpec::default(), assemble];
        s.submit(JobId::new(), v1::JobSpec::default(), tasks, 1_000)
            .unwrap();
        let tile = s.lease(w, 1_000).unwrap().unwrap();
        let result = v1::BlobRef {
            sha256: "ef".repeat(32),
            size: 5,
        };
        s.complete(tile.lease, result.clone(), None, 1_500).unwrap();
        write(&mut store, &mut s);
        drop(store);

        let store = Store::open(&path).unwrap();
        let mut restored = Scheduler::restore(CONFIG, store.load().unwrap());
        assert!(restored.take_effects().contains(&Effect::AssembleReady));
        let ready = restored.ready_assemblies();
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].inputs[0].1, result);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        drop(Store::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let e = Store::open(&path).unwrap_err();
        assert!(e.to_string().contains("newer stylefarm"), "{e}");
    }
}
