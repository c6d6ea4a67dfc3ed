//! Load on the farm: concurrent clients submit many small jobs to a coordinator running as its
//! own process (so that its memory can be read from `/proc`) and four fake workers in this
//! process; every job must complete exactly once, none may go missing, and the coordinator's
//! peak RSS must stay under a bound. The soak variant kills and restarts workers at random
//! while the jobs run.
//!
//! Both runs take a few seconds, so they stay in `cargo test --workspace`; `make load` runs
//! them one at a time and prints their figures (jobs/s, submit latency, peak RSS), as the
//! README quotes them.
//!
//! The coordinator binary is not in this package, so it is found next to the test binary
//! (`target/debug/stylefarm-coordinator`): `cargo test --workspace` builds it (the coordinator
//! has integration tests, so cargo builds its binary before any test runs), and `make load`
//! builds it first.

use std::collections::HashSet;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use image::RgbImage;
use stylefarm_client::farm::FarmClient;
use stylefarm_core::settings::RenderSettings;
use stylefarm_proto::v1::{self, JobState, QueueStatsRequest, TaskState};
use stylefarm_tests::*;
use stylefarm_worker::Engine;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The longest a whole load run may take before it fails (instead of hanging).
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// The coordinator's peak RSS must stay under this. Measured: 18.5-19.6 MiB for 200 jobs, with
/// or without worker kills, and 13 MiB for 20 (README, "Load"). What it keeps per job is a
/// few records in the scheduler; SQLite's page cache is bounded (2 MiB by default) and blobs
/// go to disk. The bound leaves room for allocator arenas and runtime threads, which grow with
/// the cores of the machine, and still catches memory that grows with the calls or the bytes
/// sent (a buffer kept per call or per connection, blobs held in memory). The 200 jobs'
/// images are under 1 MB in all, so a leak of them alone would not show here.
const PEAK_RSS_BOUND_MIB: u64 = 128;

/// Each frame's iterations.
const ITERATIONS: u32 = 5;

/// One load run.
struct Load {
    name: &'static str,
    clients: usize,
    jobs_per_client: usize,
    workers: usize,
    /// The fake engine's time per iteration.
    step: Duration,
    /// Kill and restart workers while the jobs run.
    chaos: Option<Chaos>,
}

/// Workers killed (as a crash would: `Worker::kill`) and restarted at random.
struct Chaos {
    seed: u64,
    /// A kill every `gap.0..gap.1`, chosen at random.
    gap: (Duration, Duration),
    /// At most this many kills in a run.
    max_kills: u32,
}

/// What a run measured.
#[derive(Debug)]
struct Figures {
    jobs: usize,
    wall: Duration,
    submit_p50: Duration,
    submit_p99: Duration,
    submit_max: Duration,
    peak_rss_kib: u64,
    sampled_rss_kib: u64,
    end_rss_kib: u64,
    kills: u32,
    retried_tasks: usize,
}

impl Figures {
    fn print(&self, load: &Load) {
        let mib = |kib: u64| kib as f64 / 1024.0;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "load {}: {} jobs from {} clients on {} workers in {:.2} s = {:.1} jobs/s; \
             submit latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; coordinator peak RSS \
             {:.1} MiB (VmHWM; highest sample {:.1} MiB, at the end {:.1} MiB); \
             {} worker kills, {} tasks retried",
            load.name,
            self.jobs,
            load.clients,
            load.workers,
            self.wall.as_secs_f64(),
            self.jobs as f64 / self.wall.as_secs_f64(),
            ms(self.submit_p50),
            ms(self.submit_p99),
            ms(self.submit_max),
            mib(self.peak_rss_kib),
            mib(self.sampled_rss_kib),
            mib(self.end_rss_kib),
            self.kills,
            self.retried_tasks,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_clients_200_jobs_4_workers_complete_every_job_once() {
    check(Load {
        name: "200 jobs",
        clients: 20,
        jobs_per_client: 10,
        workers: 4,
        step: Duration::from_millis(2),
        chaos: None,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_200_jobs_with_workers_killed_and_restarted_completes_every_job_once() {
    check(Load {
        name: "soak",
        clients: 20,
        jobs_per_client: 10,
        workers: 4,
        // 100 ms a frame: some 5 s of work for the four workers, so that most kills land on
        // a worker in the middle of a task.
        step: Duration::from_millis(20),
        chaos: Some(Chaos {
            seed: 16,
            gap: (Duration::from_millis(200), Duration::from_millis(500)),
            max_kills: 40,
        }),
    })
    .await;
}

async fn check(load: Load) {
    let started = Instant::now();
    let figures = match tokio::time::timeout(RUN_LIMIT, run(&load)).await {
        Ok(Ok(figures)) => figures,
        Ok(Err(e)) => panic!("load {}: {e:#}", load.name),
        Err(_) => panic!("load {}: not done after {RUN_LIMIT:?}", load.name),
    };
    figures.print(&load);
    println!(
        "load {}: the test took {:.2} s",
        load.name,
        started.elapsed().as_secs_f64()
    );
}

/// A submitted job: what it renders and how long its submission took.
struct Submitted {
    id: String,
    content: RgbImage,
    latency: Duration,
    job: Option<v1::Job>,
}

async fn run(load: &Load) -> Result<Figures> {
    // The soak's lost leases lapse in 3 s instead of 30; a live worker heartbeats every 2 s.
    let lease: &[&str] = if load.chaos.is_some() {
        &["--lease-seconds", "3"]
    } else {
        &[]
    };
    let mut coordinator = CoordinatorProcess::start(lease).await?;
    let url = coordinator.url.clone();
    let rss = RssSampler::start(coordinator.pid());

    let engine = fake(load.step);
    let workers: Vec<Option<Worker>> = (0..load.workers)
        .map(|i| Some(Worker::start(&url, &format!("w{i}"), engine.clone())))
        .collect();
    let (stop_chaos, chaos_stopped) = watch::channel(false);
    let chaos: JoinHandle<(Vec<Option<Worker>>, u32)> = match &load.chaos {
        Some(c) => tokio::spawn(chaos_monkey(
            url.clone(),
            engine.clone(),
            workers,
            Rng(c.seed),
            c.gap,
            c.max_kills,
            chaos_stopped,
        )),
        None => tokio::spawn(async move { (workers, 0) }),
    };

    let s = settings(32, ITERATIONS);
    // Enough attempts that a task unlucky enough to be on several killed workers still
    // completes: a lost lease is an attempt.
    let max_attempts = if load.chaos.is_some() { 10 } else { 0 };
    let begun = Instant::now();
    let clients: Vec<JoinHandle<Result<Vec<Submitted>>>> = (0..load.clients)
        .map(|c| {
            let url = url.clone();
            let s = s.clone();
            let jobs = load.jobs_per_client;
            tokio::spawn(async move { client_run(&url, c, jobs, &s, max_attempts).await })
        })
        .collect();
    let mut submitted = Vec::new();
    for (c, h) in clients.into_iter().enumerate() {
        let mine = h
            .await
            .with_context(|| format!("client {c} panicked"))?
            .with_context(|| format!("client {c}: {}", coordinator.log_tail()))?;
        submitted.extend(mine);
    }
    let wall = begun.elapsed();

    let _ = stop_chaos.send(true);
    let (workers, kills) = chaos.await.context("the chaos monkey panicked")?;
    let end_rss_kib = status_kib(coordinator.pid(), "VmRSS").unwrap_or(0);
    let sampled_rss_kib = rss.stop().await;
    let peak_rss_kib = status_kib(coordinator.pid(), "VmHWM").context("no VmHWM")?;

    let retried_tasks = verify(load, &coordinator, &submitted, &s).await?;

    for w in workers.into_iter().flatten() {
        w.stop().await?;
    }
    ensure!(
        coordinator.is_running(),
        "the coordinator exited during the run: {}",
        coordinator.log_tail()
    );
    ensure!(
        peak_rss_kib < PEAK_RSS_BOUND_MIB * 1024,
        "the coordinator's peak RSS was {peak_rss_kib} KiB, over {PEAK_RSS_BOUND_MIB} MiB"
    );

    let mut latencies: Vec<Duration> = submitted.iter().map(|s| s.latency).collect();
    latencies.sort();
    Ok(Figures {
        jobs: submitted.len(),
        wall,
        submit_p50: percentile(&latencies, 50),
        submit_p99: percentile(&latencies, 99),
        submit_max: latencies.last().copied().unwrap_or_default(),
        peak_rss_kib,
        sampled_rss_kib,
        end_rss_kib,
        kills,
        retried_tasks,
    })
}

/// One client: its own connection, `jobs` jobs of one 32x24 frame each (uploads included in
/// each submission's latency), then a watch on each until it ends.
async fn client_run(
    url: &str,
    c: usize,
    jobs: usize,
    s: &RenderSettings,
    max_attempts: u32,
) -> Result<Vec<Submitted>> {
    let client = FarmClient::connect(url, None).await?;
    let style = png(&pattern(16, 16, 1000 + c as u32));
    let mut mine = Vec::with_capacity(jobs);
    for j in 0..jobs {
        // A different frame per job (pattern's pixel (0, 0) differs for k < 256), so that a
        // result mixed up between jobs shows.
        let content = pattern(32, 24, (c * jobs + j + 1) as u32);
        let bytes = png(&content);
        let t = Instant::now();
        let refs = client.upload_all(&[&bytes, &style]).await?;
        let mut spec = job_spec(vec![refs[0].clone()], vec![refs[1].clone()], s);
        spec.max_attempts = max_attempts;
        let id = client.submit(spec).await?;
        mine.push(Submitted {
            id,
            content,
            latency: t.elapsed(),
            job: None,
        });
    }
    for m in &mut mine {
        m.job = Some(await_job(&client, &m.id).await?);
    }
    Ok(mine)
}

/// Every job completed once with the right image, and the farm's own counts agree; returns
/// how many tasks took more than one attempt.
async fn verify(
    load: &Load,
    coordinator: &CoordinatorProcess,
    submitted: &[Submitted],
    s: &RenderSettings,
) -> Result<usize> {
    let total = load.clients * load.jobs_per_client;
    ensure!(
        submitted.len() == total,
        "{} of {total} jobs",
        submitted.len()
    );
    let client = FarmClient::connect(&coordinator.url, None).await?;
    let mut retried = 0;
    let mut results = Vec::with_capacity(total);
    for m in submitted {
        let job = m.job.as_ref().context("not awaited")?;
        ensure!(
            job.state == JobState::Completed as i32,
            "job {} ended {:?}: {}",
            m.id,
            job.state(),
            job.error
        );
        ensure!(
            job.tasks.len() == 1,
            "job {}: {} tasks",
            m.id,
            job.tasks.len()
        );
        let task = &job.tasks[0];
        ensure!(
            is(task, TaskState::Succeeded),
            "job {}: task {:?}",
            m.id,
            task.state()
        );
        if load.chaos.is_none() {
            ensure!(
                task.attempts == 1,
                "job {}: {} attempts with no worker lost",
                m.id,
                task.attempts
            );
        } else if task.attempts > 1 {
            retried += 1;
        }
        let result = task.result.as_ref().context("a task without a result")?;
        ensure!(
            job.result.as_ref() == Some(result),
            "job {}: the job's result is not its task's",
            m.id
        );
        results.push((m.id.clone(), result.clone(), fake_result(&m.content, s)));
    }
    // The results, read back by as many readers as there were clients.
    let mut readers = tokio::task::JoinSet::new();
    for chunk in results.chunks(results.len().div_ceil(load.clients).max(1)) {
        let (client, chunk) = (client.clone(), chunk.to_vec());
        readers.spawn(async move {
            for (id, result, expected) in chunk {
                let bytes = client.download(&result).await?;
                ensure!(bytes == expected, "job {id}: the result is not its frame's");
            }
            anyhow::Ok(())
        });
    }
    while let Some(read) = readers.join_next().await {
        read.context("a reader panicked")??;
    }

    let ids: HashSet<&str> = submitted.iter().map(|m| m.id.as_str()).collect();
    ensure!(ids.len() == total, "job ids repeat");
    let listed = client.list_jobs(1000).await?;
    let listed_ids: HashSet<&str> = listed.iter().map(|j| j.id.as_str()).collect();
    let missing: Vec<&&str> = ids.difference(&listed_ids).collect();
    ensure!(missing.is_empty(), "ListJobs lacks {missing:?}");
    ensure!(listed.len() == total, "ListJobs has {} jobs", listed.len());
    ensure!(
        listed.iter().all(|j| j.state == JobState::Completed as i32),
        "ListJobs shows a job not completed"
    );

    // Exactly once: one success per task, counted by the scheduler and by the workers.
    let stats = client
        .admin
        .clone()
        .queue_stats(QueueStatsRequest {})
        .await?
        .into_inner();
    ensure!(
        stats.tasks_succeeded as usize == total
            && stats.tasks_failed == 0
            && stats.jobs_queued == 0
            && stats.jobs_active == 0,
        "{stats:?}"
    );
    let workers = client.workers().await?;
    let done: u32 = workers.iter().map(|w| w.tasks_done).sum();
    ensure!(
        done as usize == total,
        "workers report {done} tasks done for {total}: {workers:?}"
    );
    Ok(retried)
}

/// Every `gap`, kills a worker at random and starts another in its place (at most
/// `max_kills` times) until told to stop; returns the workers then and the kills made.
async fn chaos_monkey(
    url: String,
    engine: Arc<dyn Engine>,
    mut workers: Vec<Option<Worker>>,
    mut rng: Rng,
    gap: (Duration, Duration),
    max_kills: u32,
    mut stop: watch::Receiver<bool>,
) -> (Vec<Option<Worker>>, u32) {
    let mut kills = 0;
    while kills < max_kills {
        let wait = rng.between(gap.0, gap.1);
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            () = tokio::time::sleep(wait) => {}
        }
        let i = rng.below(workers.len() as u64) as usize;
        if let Some(w) = workers[i].take() {
            w.kill();
        }
        kills += 1;
        // Down for a moment, as a restarted process would be.
        tokio::time::sleep(rng.between(Duration::ZERO, Duration::from_millis(100))).await;
        let name = format!("w{i}.{kills}");
        workers[i] = Some(Worker::start(&url, &name, engine.clone()));
    }
    (workers, kills)
}

/// `sorted`'s `p`th percentile (nearest rank).
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// A small seeded generator (splitmix64), so that a soak can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = hi.saturating_sub(lo).as_millis() as u64;
        lo + Duration::from_millis(self.below(span + 1))
    }
}

// ---------------------------------------------------------------------------------------------
// The coordinator as a process

/// `stylefarm-coordinator` on a free port of 127.0.0.1 with a temporary data directory,
/// logging (at `warn`) to a file there; killed when dropped.
struct CoordinatorProcess {
    child: Child,
    url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl CoordinatorProcess {
    /// Starts it with `args` added, and returns once it answers. A port taken between
    /// choosing it and the coordinator binding it is retried with another.
    async fn start(args: &[&str]) -> Result<Self> {
        let bin = coordinator_bin()?;
        for _ in 0..5 {
            let dir = tempfile::tempdir()?;
            let addr: SocketAddr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
            let log = dir.path().join("coordinator.log");
            let child = Command::new(&bin)
                .arg("--listen")
                .arg(addr.to_string())
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .args(args)
                .env("RUST_LOG", "warn")
                .env_remove("STYLEFARM_TOKEN")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(&log)?)
                .spawn()
                .with_context(|| format!("cannot run {}", bin.display()))?;
            let mut this = Self {
                child,
                url: format!("http://{addr}"),
                log,
                _dir: dir,
            };
            if this.wait_ready().await? {
                return Ok(this);
            }
            // Its port was taken: another port, and a fresh directory (this one goes with
            // `this`).
        }
        bail!("no free port for the coordinator after 5 tries")
    }

    /// Waits until the coordinator answers a call: `Ok(false)` if it exited because its port
    /// was taken, an error if it exited otherwise or does not answer in time.
    async fn wait_ready(&mut self) -> Result<bool> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait()? {
                let log = self.log_tail();
                if log.contains("cannot listen") {
                    return Ok(false);
                }
                bail!("the coordinator exited ({status}): {log}");
            }
            if let Ok(client) = FarmClient::connect(&self.url, None).await {
                let stats = client.admin.clone().queue_stats(QueueStatsRequest {}).await;
                // Answered, and by our process (not one that had the port first).
                if stats.is_ok() && self.child.try_wait()?.is_none() {
                    return Ok(true);
                }
            }
            ensure!(
                Instant::now() < deadline,
                "the coordinator did not answer within 20 s: {}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The end of its log, for failure messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "coordinator log ({}):\n{}",
            self.log.display(),
            tail.join("\n")
        )
    }
}

impl Drop for CoordinatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `target/<profile>/stylefarm-coordinator`, next to the directory of this test binary
/// (`target/<profile>/deps/load-HASH`).
fn coordinator_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the test binary has no grandparent directory")?;
    let bin = dir.join(format!(
        "stylefarm-coordinator{}",
        std::env::consts::EXE_SUFFIX
    ));
    ensure!(
        bin.is_file(),
        "{} is missing: build it first with `cargo build --bin stylefarm-coordinator` \
         (`make load` and `cargo test --workspace` do)",
        bin.display()
    );
    Ok(bin)
}

/// A `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Samples a process's RSS every 50 ms until stopped; the highest sample.
struct RssSampler {
    stop: watch::Sender<bool>,
    handle: JoinHandle<u64>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let handle = tokio::spawn(async move {
            let mut highest = 0;
            loop {
                highest = highest.max(status_kib(pid, "VmRSS").unwrap_or(0));
                tokio::select! {
                    _ = stopped.wait_for(|s| *s) => return highest,
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        });
        Self { stop, handle }
    }

    async fn stop(self) -> u64 {
        let _ = self.stop.send(true);
        self.handle.await.unwrap_or(0)
    }
}
