//! Tiles in lock step, the coordinator's half (`stylefarm_core::lockstep`): a driver per image
//! that optimises the whole image, and the shards (workers holding a leased shard task) that
//! evaluate its tiles.
//!
//! - A shard task's worker opens `WorkerService.Shard` with its lease (`ShardHello`). The
//!   handler hands the stream to the job's driver through [`Lockstep`] and forwards what the
//!   worker sends.
//! - The driver is the job's lock-step assemble task. It runs on its own thread, never on the
//!   async runtime: it waits for a first shard, then runs the optimiser, each evaluation spread
//!   over the shards present. A shard that joins takes part from the next step on; one that
//!   goes away (its stream ends or errs, or it does not answer within [`REPLY_TIMEOUT`]) leaves
//!   its tiles to the others, and the step is run again for them.
//! - At the end the driver stores the image and sends every shard `ShardDone` with it. A shard
//!   task leased after that is answered `ShardDone` at once, so every shard task completes.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use stylefarm_convert::{
    f32_bytes, f32_values, losses_to_proto, preprocess_from_proto, rect_to_proto,
    settings_from_proto,
};
use stylefarm_core::color::keep_original_colors;
use stylefarm_core::image_io::{
    decode_image, encode_png, image_to_network, network_to_image, random_image, resize_exact,
    DecodeLimits, RgbImage,
};
use stylefarm_core::lockstep::{
    add_crop, crop, driver_optimizer, lockstep_tiles, optimize, style_targets_of_statistics,
    GramSums, LockstepObjective, LockstepTile, TileBackend,
};
use stylefarm_core::settings::{Init, Losses, TermWeights};
use stylefarm_core::{CoreError, Preprocess};
use stylefarm_proto::ids::{JobId, TaskId};
use stylefarm_proto::v1::{self, shard_command::Command, shard_reply::Reply, task_spec::Part};
use tokio::sync::{oneshot, watch};
use tonic::Status;

use crate::blobs::{BlobHash, BlobStore};
use crate::error::{CoordinatorError, Result};
use crate::scheduler::Assembly;
use crate::state::{Signals, StateHandle};

/// How long the driver waits for a shard's answer to one step before giving its tiles to the
/// others.
const REPLY_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a shard's stream waits for its job's driver to start.
const DRIVER_WAIT: Duration = Duration::from_secs(60);
/// Shortest gap between two progress reports of a driver.
const PROGRESS_GAP: Duration = Duration::from_millis(250);

/// The commands a shard's stream carries to its worker.
pub(crate) type Commands = tokio::sync::mpsc::Sender<std::result::Result<v1::ShardCommand, Status>>;

/// A shard's stream, handed to its job's driver.
pub(crate) struct Joined {
    pub(crate) task: TaskId,
    pub(crate) hello: v1::ShardHello,
    pub(crate) commands: Commands,
    /// What the worker sends after its hello; an error ends the stream.
    pub(crate) replies: mpsc::Receiver<std::result::Result<v1::ShardReply, String>>,
}

/// The running drivers, by job.
#[derive(Default)]
pub(crate) struct Lockstep {
    drivers: Mutex<HashMap<JobId, mpsc::Sender<Joined>>>,
}

/// Takes a driver out of [`Lockstep`] when it ends.
struct Registered<'a> {
    lockstep: &'a Lockstep,
    job: JobId,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.lockstep.lock().remove(&self.job);
    }
}

impl Lockstep {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, mpsc::Sender<Joined>>> {
        self.drivers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register(&self, job: JobId, joins: mpsc::Sender<Joined>) -> Registered<'_> {
        self.lock().insert(job, joins);
        Registered {
            lockstep: self,
            job,
        }
    }

    /// Hands a shard's stream to its job's driver, waiting up to [`DRIVER_WAIT`] for it to
    /// start.
    pub(crate) async fn join(&self, job: JobId, joined: Joined) -> Result<()> {
        let until = Instant::now() + DRIVER_WAIT;
        loop {
            let driver = self.lock().get(&job).cloned();
            if let Some(driver) = driver {
                return driver.send(joined).map_err(|_| {
                    CoordinatorError::Unavailable("the job's lock-step render has ended".into())
                });
            }
            if Instant::now() >= until {
                return Err(CoordinatorError::Unavailable(format!(
                    "the job's lock-step render did not start within {} s",
                    DRIVER_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// What the driver's thread needs.
struct DriverInput {
    job: JobId,
    content: Vec<u8>,
    init: Option<Vec<u8>>,
    statistics: Vec<u8>,
    settings: stylefarm_core::settings::RenderSettings,
    width: u32,
    height: u32,
    tile_size: u32,
    margin: u32,
}

/// Runs a lock-step assemble task to its result: the optimised image, stored as a blob, and
/// the objective of its 8-bit pixels.
pub(crate) async fn run(
    state: &StateHandle,
    blobs: &BlobStore,
    lockstep: &Lockstep,
    signals: &Signals,
    assembly: Assembly,
) -> Result<(v1::BlobRef, v1::Losses)> {
    let internal = |m: &str| CoordinatorError::Internal(m.to_string());
    let Some(Part::Assemble(a)) = &assembly.spec.part else {
        return Err(internal("a lock-step render without its geometry"));
    };
    let [(_, statistics)] = assembly.inputs.as_slice() else {
        return Err(internal(
            "a lock-step render depends on one statistics task",
        ));
    };
    let read = |b: &v1::BlobRef| {
        let b = b.clone();
        async move {
            let hash = BlobHash::parse(&b.sha256, "sha256")?;
            blobs.read_all(&hash).await
        }
    };
    let statistics = read(statistics).await?;
    let content = read(
        assembly
            .spec
            .content
            .as_ref()
            .ok_or_else(|| internal("a lock-step render without its content image"))?,
    )
    .await?;
    let settings = settings_from_proto(
        &assembly.spec.settings.clone().unwrap_or_default(),
        assembly.spec.styles.len().max(1),
        "settings",
    )
    .map_err(|e| CoordinatorError::Internal(e.to_string()))?;
    let init = match (&assembly.spec.init_image, settings.init) {
        (Some(b), Init::Image) => Some(read(b).await?),
        _ => None,
    };
    let input = DriverInput {
        job: assembly.job,
        content,
        init,
        statistics,
        settings,
        width: a.full_width,
        height: a.full_height,
        tile_size: a.tile_size,
        margin: a.margin,
    };

    let (joins_tx, joins) = mpsc::channel();
    let _registered = lockstep.register(assembly.job, joins_tx);
    let cancel = Arc::new(AtomicBool::new(false));
    let (progress_tx, mut progress_rx) = watch::channel(None::<v1::Progress>);
    let (done_tx, mut done_rx) = oneshot::channel();
    let flag = cancel.clone();
    std::thread::Builder::new()
        .name("stylefarm-lockstep".into())
        .spawn(move || {
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                drive(input, joins, &flag, &progress_tx)
            }))
            .unwrap_or_else(|_| {
                let crashed = CoordinatorError::Internal("the lock-step driver crashed".into());
                Err((crashed, Vec::new()))
            });
            let _ = done_tx.send(out);
        })
        .map_err(|e| CoordinatorError::Internal(format!("cannot start a driver thread: {e}")))?;

    let (task, job) = (assembly.task, assembly.job);
    let mut last_report = Instant::now() - PROGRESS_GAP;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let outcome = loop {
        tokio::select! {
            out = &mut done_rx => break out.map_err(|_| internal("the lock-step driver ended without a word"))?,
            changed = progress_rx.changed() => {
                if changed.is_err() {
                    // The driver is done; its result follows.
                    continue;
                }
                if last_report.elapsed() >= PROGRESS_GAP {
                    last_report = Instant::now();
                    let p = progress_rx.borrow_and_update().clone();
                    if let Some(p) = p {
                        let _ = state.call(move |c| c.apply(|s, now| s.own_progress(task, p, now))).await;
                    }
                }
            }
            _ = ticker.tick() => {
                let over = state
                    .call(move |c| Ok(c.sched.job(job)?.state.is_final()))
                    .await
                    .unwrap_or(true);
                if over {
                    cancel.store(true, Ordering::Relaxed);
                }
            }
            () = signals.shutdown_requested() => cancel.store(true, Ordering::Relaxed),
        }
    };
    // The last step's progress, which the gap may have held back.
    let last = progress_rx.borrow().clone();
    if let Some(p) = last {
        let _ = state
            .call(move |c| c.apply(|s, now| s.own_progress(task, p, now)))
            .await;
    }
    let ((png, losses), members) = match outcome {
        Ok(done) => done,
        Err((e, members)) => {
            let reason = e.to_string();
            for m in members {
                let _ = m.commands.try_send(Err(Status::aborted(reason.clone())));
            }
            return Err(e);
        }
    };
    let result = blobs.put(&png).await?;
    for m in members {
        let done = Command::Done(v1::ShardDone {
            result: Some(result.clone()),
        });
        let _ = m
            .commands
            .send(Ok(v1::ShardCommand {
                command: Some(done),
            }))
            .await;
    }
    Ok((result, losses_to_proto(&losses)))
}

/// The PNG and the objective of its pixels, with the shards to tell; or why not, with them.
type DriverOutcome =
    std::result::Result<((Vec<u8>, Losses), Vec<Member>), (CoordinatorError, Vec<Member>)>;

/// The driver's thread: the optimisation from start to PNG.
fn drive(
    input: DriverInput,
    joins: mpsc::Receiver<Joined>,
    cancel: &AtomicBool,
    progress: &watch::Sender<Option<v1::Progress>>,
) -> DriverOutcome {
    let (w, h) = (input.width, input.height);
    let align = input.settings.deepest_stride();
    let tiles = match lockstep_tiles(w, h, input.tile_size, input.margin, align) {
        Ok(t) => t,
        Err(e) => return Err((driver_error(e), Vec::new())),
    };
    let mut pool = ShardPool {
        joins,
        members: Vec::new(),
        next_id: 0,
        tiles,
        width: w as usize,
        height: h as usize,
        x: Vec::new(),
        evaluation: 0,
        cancel,
        job: input.job,
        hello: None,
    };
    match optimise(&input, &mut pool, progress) {
        Ok(done) => Ok((done, pool.members)),
        Err(e) => Err((driver_error(e), pool.members)),
    }
}

fn optimise(
    input: &DriverInput,
    pool: &mut ShardPool<'_>,
    progress: &watch::Sender<Option<v1::Progress>>,
) -> stylefarm_core::Result<(Vec<u8>, Losses)> {
    let (w, h) = (input.width, input.height);
    let s = &input.settings;
    let limits = DecodeLimits::default();
    let content = resize_exact(
        &decode_image(&input.content, "content image", &limits)?,
        w,
        h,
    );
    let targets = style_targets_of_statistics(&input.statistics, &s.style_layers)?;
    pool.wait_for_member()?;
    let pre = pool.preprocess()?;
    let weights = TermWeights {
        content: s.content_weight,
        style: s.style_weight,
        tv: s.tv_weight,
    };
    let objective = LockstepObjective::new(targets, weights, w as usize, h as usize)?;
    let start: RgbImage = match s.init {
        Init::Content => content.clone(),
        Init::Random => random_image(w, h, s.seed),
        Init::Image => {
            let bytes = input.init.as_deref().ok_or(CoreError::InvalidOption {
                option: "init",
                reason: "an init image was asked for but none was given".into(),
            })?;
            resize_exact(&decode_image(bytes, "init image", &limits)?, w, h)
        }
    };
    let mut x = image_to_network(&start, pre);
    let (optimizer, bytes) =
        driver_optimizer(s.optimizer, u64::from(w) * u64::from(h), s.num_iterations);
    if optimizer != s.optimizer {
        tracing::info!(job_id = %input.job, ?optimizer, bytes, "L-BFGS's history cut to fit the driver's memory");
    }
    let started = Instant::now();
    let done = optimize(
        &objective,
        pool,
        &mut x,
        optimizer,
        s.num_iterations,
        pre,
        &mut |iteration, total, losses| {
            progress.send_replace(Some(v1::Progress {
                iteration,
                total_iterations: total,
                losses: Some(losses_to_proto(losses)),
                preview: None,
            }));
            Ok(())
        },
    )?;
    tracing::info!(
        job_id = %input.job,
        iterations = done.iterations,
        seconds = started.elapsed().as_secs_f64(),
        "lock-step render optimised"
    );
    let mut image = network_to_image(&x, w, h, pre).ok_or(CoreError::InvalidOption {
        option: "image-size",
        reason: format!("a {w}x{h} image is too large"),
    })?;
    if s.original_colors {
        image = keep_original_colors(&image, &content);
    }
    // What gets judged: the objective of the pixels written, one more first step.
    let losses = objective.losses(pool, &image_to_network(&image, pre))?;
    Ok((encode_png(&image)?, losses))
}

fn driver_error(e: CoreError) -> CoordinatorError {
    match e {
        CoreError::Cancelled => CoordinatorError::Internal("the job was canceled".into()),
        e => CoordinatorError::Internal(e.to_string()),
    }
}

/// A shard taking part.
struct Member {
    id: u64,
    task: TaskId,
    commands: Commands,
    replies: mpsc::Receiver<std::result::Result<v1::ShardReply, String>>,
    /// The tiles whose pixels of the current evaluation it holds.
    holds: HashSet<usize>,
}

/// The shards of one driver, as the optimiser's [`TileBackend`].
struct ShardPool<'a> {
    joins: mpsc::Receiver<Joined>,
    members: Vec<Member>,
    next_id: u64,
    tiles: Vec<LockstepTile>,
    width: usize,
    height: usize,
    /// The image of the current evaluation.
    x: Vec<f32>,
    evaluation: u64,
    cancel: &'a AtomicBool,
    job: JobId,
    /// The first shard's hello: every other must have the same network.
    hello: Option<v1::ShardHello>,
}

impl ShardPool<'_> {
    fn cancelled(&self) -> stylefarm_core::Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(CoreError::Cancelled);
        }
        Ok(())
    }

    fn add(&mut self, j: Joined) {
        if let Some(first) = &self.hello {
            if first.preprocess != j.hello.preprocess || first.channels != j.hello.channels {
                let _ = j.commands.try_send(Err(Status::failed_precondition(
                    "this worker's network differs from the one the job's other shards run",
                )));
                return;
            }
        } else {
            self.hello = Some(j.hello.clone());
        }
        tracing::info!(job_id = %self.job, task_id = %j.task, "a shard joined the lock-step render");
        self.next_id += 1;
        self.members.push(Member {
            id: self.next_id,
            task: j.task,
            commands: j.commands,
            replies: j.replies,
            holds: HashSet::new(),
        });
    }

    fn admit(&mut self) {
        while let Ok(j) = self.joins.try_recv() {
            self.add(j);
        }
    }

    fn wait_for_member(&mut self) -> stylefarm_core::Result<()> {
        self.admit();
        while self.members.is_empty() {
            self.cancelled()?;
            match self.joins.recv_timeout(Duration::from_secs(1)) {
                Ok(j) => self.add(j),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(CoreError::Cancelled),
            }
        }
        Ok(())
    }

    fn preprocess(&self) -> stylefarm_core::Result<Preprocess> {
        let name = self.hello.as_ref().map(|h| h.preprocess.as_str());
        match name.and_then(preprocess_from_proto) {
            Some(p) => Ok(p),
            None => Err(CoreError::InvalidOption {
                option: "tiles",
                reason: format!(
                    "a shard's network takes its input as {name:?}, which the driver does not know"
                ),
            }),
        }
    }

    fn drop_member(&mut self, id: u64, why: &str) {
        if let Some(i) = self.members.iter().position(|m| m.id == id) {
            let m = self.members.remove(i);
            tracing::warn!(job_id = %self.job, task_id = %m.task, "a shard left the lock-step render: {why}");
            let _ = m.commands.try_send(Err(Status::aborted(format!(
                "the coordinator dropped this shard: {why}"
            ))));
        }
    }

    fn send(&self, member: usize, command: Command) -> bool {
        self.members[member]
            .commands
            .blocking_send(Ok(v1::ShardCommand {
                command: Some(command),
            }))
            .is_ok()
    }

    /// Sends the pixels of `tiles` that `member` lacks.
    fn send_pixels(&mut self, member: usize, tiles: &[usize]) -> bool {
        for &t in tiles {
            if self.members[member].holds.contains(&t) {
                continue;
            }
            let tile = self.tiles[t];
            let values = crop(&self.x, self.width, self.height, tile.context);
            let command = Command::Tile(v1::ShardTile {
                evaluation: self.evaluation,
                tile: t as u32,
                core: Some(rect_to_proto(tile.core)),
                context: Some(rect_to_proto(tile.context)),
                values: f32_bytes(&values),
            });
            if !self.send(member, command) {
                return false;
            }
            self.members[member].holds.insert(t);
        }
        true
    }

    /// The next reply of `member`; `Ok(None)` when it is gone.
    fn recv(&self, member: usize) -> stylefarm_core::Result<Option<Reply>> {
        let started = Instant::now();
        loop {
            self.cancelled()?;
            match self.members[member]
                .replies
                .recv_timeout(Duration::from_secs(1))
            {
                Ok(Ok(r)) => return Ok(r.reply),
                Ok(Err(why)) => {
                    tracing::warn!(job_id = %self.job, "a shard's stream failed: {why}");
                    return Ok(None);
                }
                Err(mpsc::RecvTimeoutError::Timeout) if started.elapsed() < REPLY_TIMEOUT => {}
                Err(_) => return Ok(None),
            }
        }
    }

    /// Spreads `pending` over the members and sends each its share: the pixels it lacks, then
    /// `command` for its tiles. Returns who was asked for which tiles; a member that cannot be
    /// reached goes into `lost` and its tiles back into `pending`.
    fn ask(
        &mut self,
        pending: &mut Vec<usize>,
        lost: &mut Vec<(u64, String)>,
        command: impl Fn(Vec<u32>) -> Command,
    ) -> stylefarm_core::Result<Vec<(usize, Vec<usize>)>> {
        self.wait_for_member()?;
        let share = self.spread(pending);
        pending.clear();
        let mut asked = Vec::new();
        for (i, tiles) in share.into_iter().enumerate().filter(|(_, t)| !t.is_empty()) {
            let c = command(tiles.iter().map(|&t| t as u32).collect());
            if self.send_pixels(i, &tiles) && self.send(i, c) {
                asked.push((i, tiles));
            } else {
                lost.push((self.members[i].id, "its stream is closed".to_string()));
                pending.extend(tiles);
            }
        }
        Ok(asked)
    }

    /// `pending` spread over the members: each tile to a member that holds its pixels, the
    /// others round the members with the fewest.
    fn spread(&self, pending: &[usize]) -> Vec<Vec<usize>> {
        let mut share = vec![Vec::new(); self.members.len()];
        let mut loose = Vec::new();
        for &t in pending {
            match self.members.iter().position(|m| m.holds.contains(&t)) {
                Some(i) => share[i].push(t),
                None => loose.push(t),
            }
        }
        for t in loose {
            let i = (0..share.len())
                .min_by_key(|&i| share[i].len())
                .unwrap_or(0);
            share[i].push(t);
        }
        share
    }
}

impl TileBackend for ShardPool<'_> {
    type Error = CoreError;

    fn grams(&mut self, x: &[f32]) -> stylefarm_core::Result<GramSums> {
        self.x.clear();
        self.x.extend_from_slice(x);
        self.evaluation += 1;
        for m in &mut self.members {
            m.holds.clear();
        }
        let mut total = GramSums::default();
        let mut pending: Vec<usize> = (0..self.tiles.len()).collect();
        let evaluation = self.evaluation;
        while !pending.is_empty() {
            let mut lost = Vec::new();
            let asked = self.ask(&mut pending, &mut lost, |tiles| {
                Command::Sum(v1::ShardSum { evaluation, tiles })
            })?;
            for (i, tiles) in asked {
                match self.recv(i)? {
                    Some(Reply::Grams(g)) if g.evaluation == self.evaluation => {
                        match gram_sums(&g) {
                            Ok(sums) => total.add(&sums)?,
                            Err(why) => {
                                lost.push((self.members[i].id, why));
                                pending.extend(tiles);
                            }
                        }
                    }
                    _ => {
                        lost.push((self.members[i].id, "no Gram matrices came".into()));
                        pending.extend(tiles);
                    }
                }
            }
            for (id, why) in lost {
                self.drop_member(id, &why);
            }
        }
        Ok(total)
    }

    fn gradient(&mut self, residuals: &[Vec<f32>], grad: &mut [f32]) -> stylefarm_core::Result<()> {
        let residuals: Vec<Vec<u8>> = residuals.iter().map(|r| f32_bytes(r)).collect();
        let mut pending: Vec<usize> = (0..self.tiles.len()).collect();
        let evaluation = self.evaluation;
        while !pending.is_empty() {
            let mut lost = Vec::new();
            let asked = self.ask(&mut pending, &mut lost, |tiles| {
                Command::Residuals(v1::ShardResiduals {
                    evaluation,
                    tiles,
                    residuals: residuals.clone(),
                })
            })?;
            for (i, tiles) in asked {
                let mut waiting: HashSet<usize> = tiles.iter().copied().collect();
                while !waiting.is_empty() {
                    let why = match self.recv(i)? {
                        Some(Reply::Gradient(g)) if g.evaluation == self.evaluation => {
                            let t = g.tile as usize;
                            let r = self.tiles.get(t).map(|t| t.context);
                            match (r, waiting.contains(&t)) {
                                (Some(r), true)
                                    if g.values.len() == 12 * (r.width * r.height) as usize =>
                                {
                                    let v = f32_values(&g.values);
                                    add_crop(grad, self.width, self.height, r, &v);
                                    waiting.remove(&t);
                                    continue;
                                }
                                _ => "a gradient of a tile it was not asked for, or of the wrong size",
                            }
                        }
                        _ => "no gradient came",
                    };
                    lost.push((self.members[i].id, why.to_string()));
                    pending.extend(waiting.drain());
                }
            }
            for (id, why) in lost {
                self.drop_member(id, &why);
            }
        }
        Ok(())
    }
}

fn gram_sums(g: &v1::ShardGrams) -> std::result::Result<GramSums, String> {
    if g.grams.iter().any(|b| b.len() % 4 != 0) || g.grams.len() != g.counts.len() {
        return Err("malformed Gram matrices".into());
    }
    Ok(GramSums {
        grams: g.grams.iter().map(|b| f32_values(b)).collect(),
        counts: g.counts.clone(),
        content: g.content,
    })
}
