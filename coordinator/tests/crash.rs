//! The `stylefarm-coordinator` binary under faults that need a real process: a second
//! coordinator on a data directory in use refuses to start; a coordinator killed with SIGKILL
//! at random points while it writes (uploads, submits, completions, its own start) always
//! restarts with a sound database, every acknowledged change and only complete blobs; and a
//! lease that lapses while the disk is full (a small tmpfs, as root) is taken back once space
//! returns.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use stylefarm_coordinator::Config;
use stylefarm_proto::v1;
use tokio::time::timeout;

/// The `stylefarm-coordinator` binary on a data directory; killed (SIGKILL) when dropped.
struct Process {
    child: Child,
    /// What it logged so far.
    log: Arc<Mutex<String>>,
}

impl Process {
    /// Its command line on `data`, with `extra` arguments.
    fn command(data: &Path, extra: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_stylefarm-coordinator"));
        cmd.args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .args(extra)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("STYLEFARM_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }

    /// Starts it with `extra` arguments, and with `wait` waits until it listens: its url.
    async fn start(data: &Path, wait: bool, extra: &[&str]) -> (Self, Option<String>) {
        let mut child = Self::command(data, extra).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("addr=").nth(1) {
                    let addr = addr.split_whitespace().next().unwrap_or_default();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(format!("http://{addr}"));
                    }
                }
                let mut log = lines.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let process = Self { child, log };
        if !wait {
            return (process, None);
        }
        let url = timeout(Duration::from_secs(30), rx).await;
        let Ok(Ok(url)) = url else {
            panic!("the coordinator did not start: {}", process.log());
        };
        (process, Some(url))
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGKILL, and waits for it to be gone.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits up to `limit` for `child` to exit.
fn exit_within(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let until = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn a_second_coordinator_on_one_data_dir_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let farm = Farm::start(&data).await;
    let mut c = farm.clients().await;
    let spec = simple_spec(&mut c).await;
    let job = submit(&mut c, spec).await.unwrap();
    let named = data.display().to_string();

    // In the same process.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let second = stylefarm_coordinator::serve(listener, Config::new(&data), std::future::pending());
    let e = timeout(PROMPTLY, second)
        .await
        .expect("the second coordinator stops at once")
        .expect_err("the second coordinator refuses to start");
    let e = format!("{e:#}");
    assert!(e.contains(&named), "{e}");

    // As its own process.
    let mut second = Process::command(&data, &[]).spawn().unwrap();
    let status = exit_within(&mut second, Duration::from_secs(20));
    let _ = second.kill();
    let out = second.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let status = status.expect("the second coordinator exits at once");
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains(&named), "{stderr}");

    // The first one carries on; once it is gone, even by SIGKILL, the directory is free.
    assert_eq!(
        job_state(&get_job(&mut c, &job).await),
        v1::JobState::Queued
    );
    farm.stop().await;
    let (mut process, url) = Process::start(&data, true, &[]).await;
    get_job(&mut clients_of(&url.unwrap()).await, &job).await;
    process.kill();
    let farm = Farm::start(&data).await;
    get_job(&mut farm.clients().await, &job).await;
    farm.stop().await;
}

// ---------------------------------------------------------------------------------------------
// SIGKILL at random points

/// A small xorshift generator: the kill points, reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| (self.next() >> 32) as u8).collect()
    }
}

/// What the coordinator acknowledged, and so must still hold after any crash.
#[derive(Debug, Default)]
struct Acked {
    /// Blob sha256 -> size.
    blobs: HashMap<String, u64>,
    jobs: HashSet<String>,
    /// Completed task -> (its job, the result's sha256).
    done: HashMap<String, (String, String)>,
}

type Shared = Arc<Mutex<Acked>>;

async fn keep_uploading(mut c: Clients, acked: Shared, mut rng: Rng) {
    loop {
        let len = 1 + rng.below(1_500_000) as usize;
        let data = rng.bytes(len);
        let sha = sha256(&data);
        let chunks = write_requests(&data, &sha, stylefarm_proto::BLOB_CHUNK_BYTES);
        if c.blobs.write(tokio_stream::iter(chunks)).await.is_err() {
            return;
        }
        acked.lock().unwrap().blobs.insert(sha, len as u64);
    }
}

async fn keep_submitting(mut c: Clients, acked: Shared, spec: v1::JobSpec) {
    while let Ok(id) = submit(&mut c, spec.clone()).await {
        acked.lock().unwrap().jobs.insert(id);
    }
}

async fn keep_working(mut c: Clients, acked: Shared, worker: String, mut rng: Rng) {
    loop {
        let request = v1::LeaseTaskRequest {
            worker_id: worker.clone(),
            wait_ms: 50,
        };
        let Ok(answer) = c.workers.lease_task(request).await else {
            return;
        };
        let Some(l) = answer.into_inner().lease else {
            continue;
        };
        if update(&mut c, &l.lease_id, 1).await.is_err() {
            return;
        }
        let output = png(4, 4, rng.next() as u8);
        let sha = sha256(&output);
        let chunks = write_requests(&output, &sha, stylefarm_proto::BLOB_CHUNK_BYTES);
        let Ok(blob) = c.blobs.write(tokio_stream::iter(chunks)).await else {
            return;
        };
        let blob = blob.into_inner().blob.unwrap();
        if complete_raw(&mut c, &l.lease_id, &blob).await.is_err() {
            return;
        }
        acked
            .lock()
            .unwrap()
            .done
            .insert(l.task_id, (l.job_id, blob.sha256));
    }
}

/// The data directory as a crash left it, before anything opens it again: a sound
/// database holding every acknowledged job and completion, and blobs that are all complete.
fn check_after_crash(data: &Path, acked: &Acked, verified: &mut HashSet<PathBuf>) {
    assert_eq!(integrity(data), "ok");
    let conn = rusqlite::Connection::open(data.join("stylefarm.db")).unwrap();
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'jobs'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    if tables == 0 {
        // Killed on its first start between creating the database file and writing its
        // schema: nothing can have been acknowledged yet (the next start writes the schema).
        assert!(acked.jobs.is_empty() && acked.done.is_empty());
        check_blobs(data, acked, verified);
        return;
    }
    let mut stmt = conn.prepare("SELECT id FROM jobs").unwrap();
    let jobs: HashSet<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let lost: Vec<&String> = acked.jobs.difference(&jobs).collect();
    assert!(lost.is_empty(), "acknowledged jobs lost: {lost:?}");
    let mut stmt = conn
        .prepare("SELECT state FROM tasks WHERE id = ?1")
        .unwrap();
    for task in acked.done.keys() {
        let state: String = stmt.query_row([task], |r| r.get(0)).unwrap();
        assert_eq!(state, "succeeded", "task {task}");
    }
    check_blobs(data, acked, verified);
}

/// Every blob is filed under its prefix, holds what its name says, and every acknowledged
/// blob is there.
fn check_blobs(data: &Path, acked: &Acked, verified: &mut HashSet<PathBuf>) {
    let mut sizes = HashMap::new();
    for dir in std::fs::read_dir(data.join("blobs")).unwrap().flatten() {
        let prefix = dir.file_name().to_string_lossy().to_string();
        if prefix == "tmp" {
            // Interrupted writes; never visible as blobs, removed at the next start.
            continue;
        }
        for file in std::fs::read_dir(dir.path()).unwrap().flatten() {
            let name = file.file_name().to_string_lossy().to_string();
            assert!(name.starts_with(&prefix), "{name} is filed under {prefix}");
            let bytes = std::fs::read(file.path()).unwrap();
            if verified.insert(file.path()) {
                assert_eq!(
                    sha256(&bytes),
                    name,
                    "blob {name} is not what its name says"
                );
            }
            sizes.insert(name, bytes.len() as u64);
        }
    }
    for (sha, size) in &acked.blobs {
        assert_eq!(sizes.get(sha), Some(size), "acknowledged blob {sha}");
    }
}

/// After a restart: the interrupted writes are gone, and the acknowledged jobs and results
/// of the last run are served.
async fn check_after_restart(c: &mut Clients, data: &Path, acked: &Acked, jobs: &[String]) {
    assert_eq!(temporary_blobs(data), 0, "leftover temporary blobs");
    for id in jobs {
        get_job(c, id).await;
    }
    for (task, (job, sha)) in &acked.done {
        let job = get_job(c, job).await;
        let t = job.tasks.iter().find(|t| &t.id == task).unwrap();
        assert_eq!(task_state(t), v1::TaskState::Succeeded);
        assert_eq!(
            t.result.as_ref().map(|r| r.sha256.as_str()),
            Some(sha.as_str())
        );
        assert!(!missing(c, sha).await, "the result of {task} is stored");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_at_random_points_restarts_consistent_and_loses_nothing() {
    let kills: u32 = std::env::var("STYLEFARM_FAULT_KILLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("STYLEFARM_FAULT_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            now.map_or(1, |d| d.as_nanos() as u64) | 1
        });
    println!("{kills} kills, STYLEFARM_FAULT_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let started = Instant::now();
    let acked: Shared = Arc::default();
    let mut verified = HashSet::new();
    let mut last_jobs: Vec<String> = Vec::new();
    let (mut at_start, mut mid_work) = (0, 0);
    for kill in 0..kills {
        // One time in five, straight after the start, while it restores and writes.
        if rng.below(5) == 0 {
            let (mut process, _) = Process::start(&data, false, &[]).await;
            tokio::time::sleep(Duration::from_millis(rng.below(150))).await;
            process.kill();
            at_start += 1;
            let acked = acked.lock().unwrap();
            check_after_crash(&data, &acked, &mut verified);
            continue;
        }
        let (mut process, url) = Process::start(&data, true, &[]).await;
        let mut c = clients_of(&url.unwrap()).await;
        let now = Acked {
            done: acked.lock().unwrap().done.clone(),
            ..Acked::default()
        };
        check_after_restart(&mut c, &data, &now, &last_jobs).await;
        let spec = simple_spec(&mut c).await;
        let worker = register(&mut c, &format!("w{kill}"), 0).await;
        let loops = [
            tokio::spawn(keep_uploading(
                c.clone(),
                acked.clone(),
                Rng(rng.next() | 1),
            )),
            tokio::spawn(keep_submitting(c.clone(), acked.clone(), spec)),
            tokio::spawn(keep_working(
                c.clone(),
                acked.clone(),
                worker,
                Rng(rng.next() | 1),
            )),
        ];
        tokio::time::sleep(Duration::from_millis(rng.below(600))).await;
        process.kill();
        mid_work += 1;
        for l in loops {
            timeout(PROMPTLY, l)
                .await
                .expect("the client gives up")
                .unwrap();
        }
        let acked = acked.lock().unwrap();
        check_after_crash(&data, &acked, &mut verified);
        last_jobs = acked.jobs.iter().cloned().collect();
    }
    // Once more, everything acknowledged in any run; then a clean stop.
    let (mut process, url) = Process::start(&data, true, &[]).await;
    let mut c = clients_of(&url.unwrap()).await;
    let everything = std::mem::take(&mut *acked.lock().unwrap());
    let jobs: Vec<String> = everything.jobs.iter().cloned().collect();
    check_after_restart(&mut c, &data, &everything, &jobs).await;
    let pid = process.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = exit_within(&mut process.child, PROMPTLY);
    assert!(status.is_some_and(|s| s.success()), "{}", process.log());
    println!(
        "{at_start} kills at start, {mid_work} mid-work; {} jobs, {} completions, {} blobs \
         acknowledged; {:.1} s",
        everything.jobs.len(),
        everything.done.len(),
        everything.blobs.len(),
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// A full disk under a running farm

/// A farm on a full tmpfs whose only worker died holding a lease of 1 s, which has lapsed by
/// the time this returns: the tmpfs, the coordinator, clients, the job and the dead lease.
async fn lapsed_on_a_full_disk() -> Option<(Tmpfs, Process, Clients, String, v1::Lease)> {
    let disk = Tmpfs::mount("8m")?;
    let data = disk.path().join("data");
    let (process, url) = Process::start(&data, true, &["--lease-seconds", "1"]).await;
    let mut c = clients_of(&url.unwrap()).await;
    let spec = simple_spec(&mut c).await;
    let job = submit(&mut c, spec).await.unwrap();
    let gone = register(&mut c, "gone", 0).await;
    let held = lease(&mut c, &gone, 0).await.unwrap();
    fill(&disk.path().join("filler"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    Some((disk, process, c, job, held))
}

#[tokio::test]
async fn a_lease_that_lapses_on_a_full_disk_is_taken_back_once_space_is_freed() {
    let Some((disk, process, mut c, job, held)) = lapsed_on_a_full_disk().await else {
        return;
    };
    // The lapse cannot be written, so it is not made; once space returns it is, and another
    // worker gets the task.
    std::fs::remove_file(disk.path().join("filler")).unwrap();
    let next = register(&mut c, "next", 0).await;
    let again = timeout(PROMPTLY, lease(&mut c, &next, 4_000))
        .await
        .unwrap();
    let again = again.expect("the lapsed task is handed out again");
    assert_eq!(again.task_id, held.task_id);
    let t = &get_job(&mut c, &job).await.tasks[0];
    assert_eq!((t.attempts, t.worker_id.as_str()), (2, next.as_str()));
    drop(process);
    assert_eq!(integrity(&disk.path().join("data")), "ok");
}

#[tokio::test]
async fn a_lapse_that_cannot_be_written_is_not_retried_in_a_loop() {
    let Some((_disk, process, _c, _job, _held)) = lapsed_on_a_full_disk().await else {
        return;
    };
    let failures = || process.log().matches("expiring leases failed").count();
    let before = failures();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let per_second = failures() - before;
    assert!(per_second <= 10, "{per_second} failed tries in a second");
}
