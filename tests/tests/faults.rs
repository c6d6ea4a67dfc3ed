//! Faults of whole farms in one process, with real workers: a worker killed while it uploads
//! its result (no partial blob is ever visible or used), and a partitioned worker that keeps
//! running after its lease lapsed (its late result is refused; the task is done once). The
//! workers reach the coordinator through a TCP proxy that can hold back their bytes, drop
//! their connections or refuse new ones. Raw-gRPC faults are in the coordinator's
//! `tests/faults.rs`, the ones that need a real process in its `tests/crash.rs`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use stylefarm_coordinator::{Config, ManualClock};
use stylefarm_core::CoreError;
use stylefarm_engine::render::Observer;
use stylefarm_proto::blob::sha256_hex;
use stylefarm_proto::v1::{FindMissingBlobsRequest, JobState, QueueStatsRequest, TaskState};
use stylefarm_tests::*;
use stylefarm_worker::{Engine, StatisticsInput, TaskInput, TaskOutput};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

// ---------------------------------------------------------------------------------------------
// A network that fails

/// How many bytes may still pass one way; `u64::MAX`: any number.
struct Budget {
    left: Mutex<u64>,
    changed: Notify,
}

impl Budget {
    fn set(&self, bytes: u64) {
        *self.left.lock().unwrap_or_else(PoisonError::into_inner) = bytes;
        self.changed.notify_waiters();
    }

    /// Waits until bytes may pass; takes up to `want` of them.
    async fn take(&self, want: usize) -> usize {
        loop {
            let changed = self.changed.notified();
            {
                let mut left = self.left.lock().unwrap_or_else(PoisonError::into_inner);
                if *left > 0 {
                    let n = want.min(usize::try_from(*left).unwrap_or(usize::MAX));
                    if *left != u64::MAX {
                        *left -= n as u64;
                    }
                    return n;
                }
            }
            changed.await;
        }
    }
}

/// A TCP proxy in front of a coordinator, for workers whose network fails.
struct Proxy {
    url: String,
    /// Bytes toward the coordinator.
    up: Arc<Budget>,
    /// New connections are closed at once (a partition).
    refusing: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let up = Arc::new(Budget {
            left: Mutex::new(u64::MAX),
            changed: Notify::new(),
        });
        let refusing = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = {
            let (up, refusing, connections) = (up.clone(), refusing.clone(), connections.clone());
            tokio::spawn(async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    if refusing.load(Ordering::SeqCst) {
                        continue;
                    }
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        continue;
                    };
                    let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
                    let (from_worker, to_worker) = inbound.into_split();
                    let (from_coordinator, to_coordinator) = outbound.into_split();
                    let open = Arc::new(Budget {
                        left: Mutex::new(u64::MAX),
                        changed: Notify::new(),
                    });
                    let mut c = connections.lock().unwrap_or_else(PoisonError::into_inner);
                    c.push(tokio::spawn(pump(from_worker, to_coordinator, up.clone())));
                    c.push(tokio::spawn(pump(from_coordinator, to_worker, open)));
                }
            })
        };
        Self {
            url,
            up,
            refusing,
            connections,
            accept,
        }
    }

    fn url(&self) -> &str {
        &self.url
    }

    /// From now on only `bytes` more pass toward the coordinator; the rest wait.
    fn limit_up(&self, bytes: u64) {
        self.up.set(bytes);
    }

    /// Drops every connection, as the kernel does when the process on one side dies.
    fn sever(&self) {
        for c in self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            c.abort();
        }
    }

    /// Cuts the worker off: its connections drop and new ones are refused until [`Self::heal`].
    fn partition(&self) {
        self.refusing.store(true, Ordering::SeqCst);
        self.sever();
    }

    fn heal(&self) {
        self.refusing.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.sever();
    }
}

/// Copies one direction of a connection, as `budget` allows.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    budget: Arc<Budget>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut sent = 0;
        while sent < n {
            let k = budget.take(n - sent).await;
            if to.write_all(&buf[sent..sent + k]).await.is_err() {
                return;
            }
            sent += k;
        }
    }
    let _ = to.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// A worker held busy

/// An engine wrapper whose runs, once `inner` has rendered, wait to be released before they
/// return (a worker that keeps running while the test arranges the farm around it), with one
/// pixel changed so that its result differs from another worker's.
struct Held {
    inner: Arc<dyn Engine>,
    released: Mutex<bool>,
    release: Condvar,
    /// Runs waiting to be released.
    waiting: tokio::sync::watch::Sender<u32>,
}

impl Held {
    fn wrap(inner: Arc<dyn Engine>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            released: Mutex::new(false),
            release: Condvar::new(),
            waiting: tokio::sync::watch::Sender::new(0),
        })
    }

    fn release(&self) {
        *self.released.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.release.notify_all();
    }

    async fn until_waiting(&self) {
        let mut waiting = self.waiting.subscribe();
        within("a held run", waiting.wait_for(|n| *n > 0))
            .await
            .unwrap()
            .unwrap();
    }
}

impl Engine for Held {
    fn models(&self) -> Vec<String> {
        self.inner.models()
    }

    fn run(
        &self,
        task: &TaskInput,
        observer: &mut dyn Observer,
    ) -> stylefarm_engine::Result<TaskOutput> {
        let mut out = self.inner.run(task, observer)?;
        let p = out.image.get_pixel_mut(0, 0);
        p.0[0] = p.0[0].wrapping_add(1);
        self.waiting.send_modify(|n| *n += 1);
        let released = self.released.lock().unwrap_or_else(PoisonError::into_inner);
        let (released, wait) = self
            .release
            .wait_timeout_while(released, TIMEOUT, |r| !*r)
            .unwrap_or_else(PoisonError::into_inner);
        drop(released);
        self.waiting.send_modify(|n| *n -= 1);
        if wait.timed_out() {
            return Err(CoreError::Cancelled.into());
        }
        Ok(out)
    }

    fn statistics(&self, input: &StatisticsInput) -> stylefarm_engine::Result<Vec<u8>> {
        self.inner.statistics(input)
    }
}

// ---------------------------------------------------------------------------------------------
// Blobs on disk

/// The blobs the store shows under their names (its temporary files aside): name -> bytes.
fn visible_blobs(data_dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut blobs = BTreeMap::new();
    for dir in std::fs::read_dir(data_dir.join("blobs")).unwrap().flatten() {
        if dir.file_name() == "tmp" {
            continue;
        }
        for file in std::fs::read_dir(dir.path()).unwrap().flatten() {
            let name = file.file_name().to_string_lossy().to_string();
            blobs.insert(name, std::fs::read(file.path()).unwrap());
        }
    }
    blobs
}

/// The bytes of the temporary blob files being written now.
fn temporary_bytes(data_dir: &Path) -> Vec<u64> {
    let tmp = std::fs::read_dir(data_dir.join("blobs/tmp")).unwrap();
    tmp.flatten()
        .filter_map(|f| f.metadata().ok())
        .map(|m| m.len())
        .collect()
}

/// Waits until `check` holds, polling.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    within(what, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_upload_leaves_no_partial_blob_to_see_or_use() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::default());
    let config = Config::new(dir.path());
    let lease = config.lease_duration;
    let coordinator = Coordinator::start_with(config, clock.clone(), None)
        .await
        .unwrap();
    let client = coordinator.client().await.unwrap();
    // Noise does not compress: the result is a PNG of ~2.4 MB, three chunks.
    let content = noise(1000, 800, 7);
    let s = settings(1000, 3);
    let inputs = [png(&content), png(&pattern(16, 16, 2))];
    let refs = client.upload_all(&[&inputs[0], &inputs[1]]).await.unwrap();
    let id = client
        .submit(job_spec(vec![refs[0].clone()], vec![refs[1].clone()], &s))
        .await
        .unwrap();
    let expected = fake_result(&content, &s);
    let expected_sha = sha256_hex(&expected);

    // The worker's requests are small; its result's upload stalls after ~1.2 MB.
    let proxy = Proxy::start(coordinator.addr()).await;
    proxy.limit_up(1_200_000);
    let doomed = Worker::start(proxy.url(), "doomed", fake(Duration::from_millis(1)));
    eventually("the result to be half uploaded", || {
        temporary_bytes(dir.path()).iter().any(|&n| n >= 1 << 20)
    })
    .await;
    doomed.kill();
    proxy.sever();
    eventually("the partial blob to be removed", || {
        temporary_bytes(dir.path()).is_empty()
    })
    .await;
    let seen: Vec<String> = visible_blobs(dir.path()).into_keys().collect();
    let mut inputs_only = vec![refs[0].sha256.clone(), refs[1].sha256.clone()];
    inputs_only.sort();
    assert_eq!(seen, inputs_only, "only the inputs are stored");
    let missing = client
        .blobs
        .clone()
        .find_missing_blobs(FindMissingBlobsRequest {
            sha256: vec![expected_sha.clone()],
        })
        .await
        .unwrap()
        .into_inner()
        .missing;
    assert_eq!(missing, vec![expected_sha.clone()]);
    let job = client.job(&id).await.unwrap();
    assert!(!is(&job.tasks[0], TaskState::Succeeded));

    // Its lease lapses; another worker does the task and the job has the whole result.
    let rescuer = Worker::start(coordinator.url(), "rescuer", fake(Duration::from_millis(1)));
    clock.advance(lease + Duration::from_secs(1));
    let job = await_job(&client, &id).await.unwrap();
    assert_eq!(job.state, JobState::Completed as i32, "{}", job.error);
    let result = job.result.clone().unwrap();
    assert_eq!(result.sha256, expected_sha);
    assert!(client.download(&result).await.unwrap() == expected);
    for (name, bytes) in visible_blobs(dir.path()) {
        assert_eq!(sha256_hex(&bytes), name, "every stored blob is whole");
    }
    rescuer.stop().await.unwrap();
    coordinator.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_worker_is_fenced_and_its_task_done_once() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::default());
    let mut config = Config::new(dir.path());
    // Workers report on progress only: the partitioned one says nothing until it is done.
    config.heartbeat_interval = Duration::from_secs(50);
    let lease = config.lease_duration;
    let coordinator = Coordinator::start_with(config, clock.clone(), None)
        .await
        .unwrap();
    let client = coordinator.client().await.unwrap();
    let content = pattern(40, 30, 1);
    let s = settings(32, 5);
    let id = submit(&client, &[&content], &[&pattern(16, 16, 2)], &s)
        .await
        .unwrap();

    let proxy = Proxy::start(coordinator.addr()).await;
    let held = Held::wrap(fake(Duration::from_millis(1)));
    let cut_off = Worker::start(proxy.url(), "cut-off", held.clone());
    held.until_waiting().await;
    let cut_off_id = within("the held worker's last progress", async {
        loop {
            let job = client.job(&id).await.unwrap();
            let task = &job.tasks[0];
            if task.progress.as_ref().is_some_and(|p| p.iteration == 5) {
                return task.worker_id.clone();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();

    // Cut off past its deadline; another worker does the task meanwhile.
    proxy.partition();
    let rescuer = Worker::start(coordinator.url(), "rescuer", fake(Duration::from_millis(1)));
    clock.advance(lease + Duration::from_secs(1));
    let job = await_job(&client, &id).await.unwrap();
    assert_eq!(job.state, JobState::Completed as i32, "{}", job.error);
    let rescued = job.tasks[0].clone();
    assert_ne!(rescued.worker_id, cut_off_id);
    assert!(
        client
            .download(rescued.result.as_ref().unwrap())
            .await
            .unwrap()
            == fake_result(&content, &s)
    );
    rescuer.stop().await.unwrap();

    // The cut-off worker finishes and reaches the coordinator again: its result (told apart by
    // one pixel) is uploaded, and its completion refused. Once it has given up on the old task
    // it takes a new job, which shows that it got that far.
    held.release();
    proxy.heal();
    let second = submit(&client, &[&pattern(40, 30, 3)], &[&pattern(16, 16, 2)], &s)
        .await
        .unwrap();
    let second = await_job(&client, &second).await.unwrap();
    assert_eq!(second.tasks[0].worker_id, cut_off_id);
    let mut late = decode(&fake_result(&content, &s)).unwrap();
    let p = late.get_pixel_mut(0, 0);
    p.0[0] = p.0[0].wrapping_add(1);
    let late = sha256_hex(&png(&late));
    let missing = client
        .blobs
        .clone()
        .find_missing_blobs(FindMissingBlobsRequest {
            sha256: vec![late.clone()],
        })
        .await
        .unwrap()
        .into_inner()
        .missing;
    assert!(
        missing.is_empty(),
        "the late result {late} reached the coordinator"
    );

    let job = client.job(&id).await.unwrap();
    let task = &job.tasks[0];
    assert_eq!(task.result, rescued.result, "the rescuer's result stands");
    assert_eq!((task.attempts, &task.worker_id), (2, &rescued.worker_id));
    let workers = client.workers().await.unwrap();
    let counted = |id: &str| {
        workers
            .iter()
            .find(|w| w.id == id)
            .map(|w| (w.tasks_done, w.tasks_failed))
    };
    assert_eq!(
        counted(&cut_off_id),
        Some((1, 1)),
        "the second job, and the lapse"
    );
    assert_eq!(counted(&rescued.worker_id), Some((1, 0)));
    let stats = client
        .admin
        .clone()
        .queue_stats(QueueStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.tasks_succeeded, 2, "one success per task: {stats:?}");
    cut_off.stop().await.unwrap();
    coordinator.stop().await.unwrap();
}
