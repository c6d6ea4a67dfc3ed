//! The shards of one lock-step driver ([`super`]) as the optimiser's [`TileBackend`]: each
//! step's tiles spread over the shards present, their answers awaited within a [`Pace`], and a
//! shard that is gone, stalls or hangs dropped and its tiles given to the others.
//!
//! Shards differ in speed (a GPU worker and CPU workers in one job): each reply says how long
//! its worker computed, and each shard's share of the next step's tiles follows its measured
//! speed in pixels per second, so that all finish a step at about the same time. Before a
//! shard has been measured its worker's start-up speed (measured when it registered, in other
//! units) stands in: as it is for the first evaluation when every shard has one, scaled by
//! the shards measured in both ways for a shard that joins later; failing that, it counts as
//! fast as the mean of the measured ones (all alike when none is).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use stylefarm_convert::{f32_bytes, f32_values, preprocess_from_proto, rect_to_proto};
use stylefarm_core::lockstep::{add_crop, crop, GramSums, LockstepTile, TileBackend};
use stylefarm_core::{CoreError, Preprocess};
use stylefarm_proto::ids::{JobId, TaskId};
use stylefarm_proto::v1::{self, shard_command::Command, shard_reply::Reply};
use tokio::sync::mpsc::error::TrySendError;
use tonic::Status;

use super::{Commands, Joined, POLL};

/// A shard taking part.
pub(super) struct Member {
    id: u64,
    task: TaskId,
    pub(super) commands: Commands,
    replies: mpsc::Receiver<std::result::Result<v1::ShardReply, String>>,
    /// The tiles whose pixels of the current evaluation it holds.
    holds: HashSet<usize>,
    /// Measured speed, context pixels per second of computing (Gram sums and gradients); `None`
    /// until it has answered a whole evaluation with its times.
    speed: Option<f64>,
    /// Its worker's speed at start-up (input pixels per second of a VGG pass), if it said.
    startup: Option<f64>,
    /// Context pixels and seconds of the current evaluation's answers so far.
    work: (f64, f64),
    /// Tiles in its last share of a whole step (logged when it changes).
    share: usize,
}

/// The shards of one driver, as the optimiser's [`TileBackend`].
pub(super) struct ShardPool<'a> {
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
    pace: Pace,
}

/// How long a shard may take to answer: the step timeout, plus twice the slowest time per
/// tile seen so far (the step timeout itself before any was seen) for each tile the answer
/// covers. A shard that hangs with its stream open is dropped after that.
struct Pace {
    step_timeout: Duration,
    per_tile: Option<Duration>,
}

impl Pace {
    fn limit(&self, tiles: usize) -> Duration {
        let per_tile = self.per_tile.map_or(self.step_timeout, |t| 2 * t);
        let tiles = u32::try_from(tiles.max(1)).unwrap_or(u32::MAX);
        self.step_timeout
            .saturating_add(per_tile.saturating_mul(tiles))
    }

    fn record(&mut self, took: Duration, tiles: usize) {
        let t = took / u32::try_from(tiles.max(1)).unwrap_or(u32::MAX);
        self.per_tile = Some(self.per_tile.map_or(t, |p| p.max(t)));
    }
}

impl<'a> ShardPool<'a> {
    /// The pool of a `width` x `height` image cut into `tiles`, which shards join through
    /// `joins`; it stops once `cancel` is set.
    pub(super) fn new(
        joins: mpsc::Receiver<Joined>,
        tiles: Vec<LockstepTile>,
        (width, height): (usize, usize),
        cancel: &'a AtomicBool,
        job: JobId,
        step_timeout: Duration,
    ) -> Self {
        Self {
            joins,
            members: Vec::new(),
            next_id: 0,
            tiles,
            width,
            height,
            x: Vec::new(),
            evaluation: 0,
            cancel,
            job,
            hello: None,
            pace: Pace {
                step_timeout,
                per_tile: None,
            },
        }
    }

    /// The shards taking part now, to tell how the render ended.
    pub(super) fn into_members(self) -> Vec<Member> {
        self.members
    }

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
            speed: None,
            startup: j.startup_speed,
            work: (0.0, 0.0),
            share: 0,
        });
    }

    fn admit(&mut self) {
        while let Ok(j) = self.joins.try_recv() {
            self.add(j);
        }
    }

    pub(super) fn wait_for_member(&mut self) -> stylefarm_core::Result<()> {
        self.admit();
        while self.members.is_empty() {
            self.cancelled()?;
            match self.joins.recv_timeout(POLL) {
                Ok(j) => self.add(j),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(CoreError::Cancelled),
            }
        }
        Ok(())
    }

    pub(super) fn preprocess(&self) -> stylefarm_core::Result<Preprocess> {
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

    /// Queues `command` for `member`; false when its stream is closed, or stays full for a
    /// step's time limit (its worker does not read).
    fn send(&self, member: usize, command: Command) -> stylefarm_core::Result<bool> {
        let mut message = Ok(v1::ShardCommand {
            command: Some(command),
        });
        let until = Instant::now() + self.pace.limit(1);
        loop {
            match self.members[member].commands.try_send(message) {
                Ok(()) => return Ok(true),
                Err(TrySendError::Closed(_)) => return Ok(false),
                Err(TrySendError::Full(m)) if Instant::now() < until => {
                    self.cancelled()?;
                    message = m;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(TrySendError::Full(_)) => return Ok(false),
            }
        }
    }

    /// Sends the pixels of `tiles` that `member` lacks.
    fn send_pixels(&mut self, member: usize, tiles: &[usize]) -> stylefarm_core::Result<bool> {
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
            if !self.send(member, command)? {
                return Ok(false);
            }
            self.members[member].holds.insert(t);
        }
        Ok(true)
    }

    /// The next reply of `member`, which covers the work of `tiles` tiles; `Ok(Err(why))` when
    /// it is gone or does not answer within its [`Pace`].
    fn recv(
        &mut self,
        member: usize,
        tiles: usize,
    ) -> stylefarm_core::Result<std::result::Result<Reply, String>> {
        let started = Instant::now();
        let limit = self.pace.limit(tiles);
        loop {
            self.cancelled()?;
            match self.members[member].replies.recv_timeout(POLL) {
                Ok(Ok(v1::ShardReply { reply: Some(r) })) => {
                    self.pace.record(started.elapsed(), tiles);
                    return Ok(Ok(r));
                }
                Ok(Ok(v1::ShardReply { reply: None })) => {
                    return Ok(Err("it sent an empty reply".into()))
                }
                Ok(Err(why)) => return Ok(Err(format!("its stream failed: {why}"))),
                Err(mpsc::RecvTimeoutError::Timeout) if started.elapsed() < limit => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Ok(Err(format!(
                        "it did not answer within {:.1} s",
                        limit.as_secs_f64()
                    )))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Ok(Err("its stream ended".into()))
                }
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
        let whole_step = pending.len() == self.tiles.len();
        let share = self.spread(pending);
        pending.clear();
        if whole_step {
            let speeds = self.speeds();
            for ((m, tiles), speed) in self.members.iter_mut().zip(&share).zip(speeds) {
                if m.share != tiles.len() {
                    m.share = tiles.len();
                    tracing::info!(
                        job_id = %self.job,
                        task_id = %m.task,
                        tiles = m.share,
                        of = self.tiles.len(),
                        pixels_per_second = speed.map_or(0.0, f64::round),
                        measured = m.speed.is_some(),
                        "lock-step share"
                    );
                }
            }
        }
        let mut asked = Vec::new();
        for (i, tiles) in share.into_iter().enumerate().filter(|(_, t)| !t.is_empty()) {
            let c = command(tiles.iter().map(|&t| t as u32).collect());
            if self.send_pixels(i, &tiles)? && self.send(i, c)? {
                asked.push((i, tiles));
            } else {
                lost.push((
                    self.members[i].id,
                    "its stream is closed, or full".to_string(),
                ));
                pending.extend(tiles);
            }
        }
        Ok(asked)
    }

    /// `pending` spread over the members: each tile to a member that holds its pixels, the
    /// others by [`spread_by_speed`].
    fn spread(&self, pending: &[usize]) -> Vec<Vec<usize>> {
        let mut share = vec![Vec::new(); self.members.len()];
        let mut loose = Vec::new();
        for &t in pending {
            match self.members.iter().position(|m| m.holds.contains(&t)) {
                Some(i) => share[i].push(t),
                None => loose.push(t),
            }
        }
        spread_by_speed(&mut share, &loose, &self.speeds(), |t| self.pixels(t));
        share
    }

    /// Each member's speed for spreading tiles ([`estimate_speeds`]).
    fn speeds(&self) -> Vec<Option<f64>> {
        let known: Vec<_> = self.members.iter().map(|m| (m.speed, m.startup)).collect();
        estimate_speeds(&known)
    }

    /// Context pixels of tile `t`: the work a shard does for it.
    fn pixels(&self, t: usize) -> f64 {
        let c = self.tiles[t].context;
        f64::from(c.width) * f64::from(c.height)
    }

    /// Counts `seconds` of work on `tiles` towards member `i`'s speed; a reply without a
    /// time (0, or not a number) counts nothing.
    fn record_work(&mut self, i: usize, tiles: &[usize], seconds: f64) {
        if seconds.is_finite() && seconds > 0.0 {
            let pixels: f64 = tiles.iter().map(|&t| self.pixels(t)).sum();
            let work = &mut self.members[i].work;
            work.0 += pixels;
            work.1 += seconds;
        }
    }

    /// Ends an evaluation: each member's work in it becomes its speed.
    fn update_speeds(&mut self) {
        for m in &mut self.members {
            let (pixels, seconds) = std::mem::take(&mut m.work);
            if pixels > 0.0 && seconds > 0.0 {
                m.speed = Some(pixels / seconds);
            }
        }
    }
}

/// Speeds from (measured, start-up) pairs: the measured one where there is one; else the
/// start-up speed times the mean ratio of measured to start-up speed among the members that
/// have both; before anyone is measured, the start-up speeds as they are when every member
/// has one (one unit for all); `None` otherwise.
fn estimate_speeds(known: &[(Option<f64>, Option<f64>)]) -> Vec<Option<f64>> {
    let ok = |s: &Option<f64>| s.filter(|s| s.is_finite() && *s > 0.0);
    let ratios: Vec<f64> = known
        .iter()
        .filter_map(|(m, s)| Some(ok(m)? / ok(s)?))
        .collect();
    let scale = if ratios.is_empty() {
        // Start-up speeds alone, only when they compare like with like: everyone's.
        let unmeasured = known.iter().all(|(m, _)| ok(m).is_none());
        let all_startup = known.iter().all(|(_, s)| ok(s).is_some());
        (unmeasured && all_startup).then_some(1.0)
    } else {
        Some(ratios.iter().sum::<f64>() / ratios.len() as f64)
    };
    known
        .iter()
        .map(|(m, s)| ok(m).or_else(|| Some(ok(s)? * scale?)))
        .collect()
}

/// Adds `loose` tiles to `share` (one list per member, some tiles already in it) so that the
/// members finish together: largest tile first, each to the member whose work would end
/// soonest with it, a member's work being its tiles' pixels over its speed. A member without
/// a speed counts as the mean of the measured ones (1 when none is); a member's tiles end up
/// sorted.
fn spread_by_speed(
    share: &mut [Vec<usize>],
    loose: &[usize],
    speeds: &[Option<f64>],
    pixels: impl Fn(usize) -> f64,
) {
    let measured: Vec<f64> = speeds
        .iter()
        .flatten()
        .copied()
        .filter(|s| s.is_finite() && *s > 0.0)
        .collect();
    let mean = if measured.is_empty() {
        1.0
    } else {
        measured.iter().sum::<f64>() / measured.len() as f64
    };
    let speed: Vec<f64> = speeds
        .iter()
        .map(|s| s.filter(|s| s.is_finite() && *s > 0.0).unwrap_or(mean))
        .collect();
    let mut end: Vec<f64> = share
        .iter()
        .zip(&speed)
        .map(|(tiles, s)| tiles.iter().map(|&t| pixels(t)).sum::<f64>() / s)
        .collect();
    let mut loose = loose.to_vec();
    loose.sort_by(|&a, &b| pixels(b).total_cmp(&pixels(a)).then(a.cmp(&b)));
    for t in loose {
        let p = pixels(t);
        let best = (0..share.len()).min_by(|&i, &j| {
            (end[i] + p / speed[i])
                .total_cmp(&(end[j] + p / speed[j]))
                .then(i.cmp(&j))
        });
        if let Some(i) = best {
            end[i] += p / speed[i];
            share[i].push(t);
        }
    }
    for tiles in share {
        tiles.sort_unstable();
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
                let why = match self.recv(i, tiles.len())? {
                    Ok(Reply::Grams(g)) if g.evaluation == self.evaluation => match gram_sums(&g) {
                        Ok(sums) => {
                            total.add(&sums)?;
                            self.record_work(i, &tiles, g.seconds);
                            continue;
                        }
                        Err(why) => why,
                    },
                    Ok(_) => "it sent something else than the Gram matrices".into(),
                    Err(why) => why,
                };
                lost.push((self.members[i].id, why));
                pending.extend(tiles);
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
                    let why = match self.recv(i, 1)? {
                        Ok(Reply::Gradient(g)) if g.evaluation == self.evaluation => {
                            let t = g.tile as usize;
                            let r = self.tiles.get(t).map(|t| t.context);
                            match (r, waiting.contains(&t)) {
                                (Some(r), true)
                                    if g.values.len() == 12 * (r.width * r.height) as usize =>
                                {
                                    let v = f32_values(&g.values);
                                    add_crop(grad, self.width, self.height, r, &v);
                                    waiting.remove(&t);
                                    self.record_work(i, &[t], g.seconds);
                                    continue;
                                }
                                _ => "a gradient of a tile it was not asked for, or of the wrong size"
                                    .into(),
                            }
                        }
                        Ok(_) => "it sent something else than a gradient".into(),
                        Err(why) => why,
                    };
                    lost.push((self.members[i].id, why));
                    pending.extend(waiting.drain());
                }
            }
            for (id, why) in lost {
                self.drop_member(id, &why);
            }
        }
        self.update_speeds();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use stylefarm_core::tiles::Rect;

    #[test]
    fn tiles_go_in_proportion_to_speed() {
        let px = |_| 100.0;
        // Nobody measured: alike, as before speeds were known.
        let mut share = vec![Vec::new(); 3];
        spread_by_speed(&mut share, &(0..12).collect::<Vec<_>>(), &[None; 3], px);
        assert_eq!(share.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 4]);
        // One GPU four times as fast as each of two CPUs: 8, 2 and 2 end together.
        let mut share = vec![Vec::new(); 3];
        let speeds = [Some(400.0), Some(100.0), Some(100.0)];
        spread_by_speed(&mut share, &(0..12).collect::<Vec<_>>(), &speeds, px);
        assert_eq!(share.iter().map(Vec::len).collect::<Vec<_>>(), [8, 2, 2]);
        assert!(share.iter().all(|s| s.windows(2).all(|w| w[0] < w[1])));
        // A newcomer counts as the mean of the measured (250): 12 tiles in 1:4:2.5 ratios.
        let mut share = vec![Vec::new(); 3];
        let speeds = [Some(100.0), Some(400.0), None];
        spread_by_speed(&mut share, &(0..15).collect::<Vec<_>>(), &speeds, px);
        assert_eq!(share.iter().map(Vec::len).collect::<Vec<_>>(), [2, 8, 5]);
        // Tiles already held count towards a member's time; big tiles go first.
        let mut share = vec![vec![0, 1], Vec::new()];
        let sizes = [100.0, 100.0, 300.0, 100.0];
        spread_by_speed(&mut share, &[2, 3], &[Some(1.0), Some(1.0)], |t| sizes[t]);
        assert_eq!(share, vec![vec![0, 1, 3], vec![2]]);
    }

    /// A fake shard that computes `per_tile` seconds for each tile and says so, without
    /// sleeping: what it was asked for each evaluation comes back when its stream closes.
    fn fake_shard(
        joins: &mpsc::Sender<Joined>,
        per_tile: f64,
        startup_speed: Option<f64>,
    ) -> std::thread::JoinHandle<Vec<usize>> {
        let (commands, mut received) = tokio::sync::mpsc::channel(256);
        let (reply, replies) = mpsc::channel();
        joins
            .send(Joined {
                task: TaskId::new(),
                hello: v1::ShardHello {
                    lease_id: String::new(),
                    preprocess: "caffe".into(),
                    channels: vec![1],
                },
                startup_speed,
                commands,
                replies,
            })
            .unwrap();
        std::thread::spawn(move || {
            let mut sums = Vec::new();
            let mut areas = HashMap::new();
            while let Some(Ok(v1::ShardCommand { command: Some(c) })) = received.blocking_recv() {
                let answer = match c {
                    Command::Tile(t) => {
                        areas.insert(t.tile, t.values.len() / 12);
                        continue;
                    }
                    Command::Sum(s) => {
                        sums.push(s.tiles.len());
                        vec![Reply::Grams(v1::ShardGrams {
                            evaluation: s.evaluation,
                            grams: vec![f32_bytes(&[1.0])],
                            counts: vec![s.tiles.len() as u64],
                            content: 0.0,
                            seconds: per_tile * s.tiles.len() as f64,
                        })]
                    }
                    Command::Residuals(r) => r
                        .tiles
                        .iter()
                        .map(|&t| {
                            Reply::Gradient(v1::ShardGradient {
                                evaluation: r.evaluation,
                                tile: t,
                                values: f32_bytes(&vec![0.5; 3 * areas[&t]]),
                                seconds: per_tile,
                            })
                        })
                        .collect(),
                    Command::Done(_) => break,
                };
                for a in answer {
                    if reply.send(Ok(v1::ShardReply { reply: Some(a) })).is_err() {
                        return sums;
                    }
                }
            }
            sums
        })
    }

    /// The tiles each of three fake shards was asked for in each of three evaluations: a
    /// 64x48 image in twelve 16x16 tiles, one shard four times as fast as the other two, with
    /// the start-up speeds given.
    fn three_evaluations(startup: [Option<f64>; 3]) -> Vec<Vec<usize>> {
        let tiles: Vec<LockstepTile> = (0..12)
            .map(|i| {
                let r = Rect {
                    x: 16 * (i % 4),
                    y: 16 * (i / 4),
                    width: 16,
                    height: 16,
                };
                LockstepTile {
                    core: r,
                    context: r,
                }
            })
            .collect();
        let (joins, joined) = mpsc::channel();
        let shards: Vec<_> = [0.001, 0.004, 0.004]
            .into_iter()
            .zip(startup)
            .map(|(t, s)| fake_shard(&joins, t, s))
            .collect();
        let cancel = AtomicBool::new(false);
        let mut pool = ShardPool::new(
            joined,
            tiles,
            (64, 48),
            &cancel,
            JobId::new(),
            Duration::from_secs(10),
        );
        let x = vec![0.0; 3 * 64 * 48];
        let mut grad = vec![0.0; x.len()];
        for _ in 0..3 {
            let sums = pool.grams(&x).unwrap();
            assert_eq!(sums.counts, [12]);
            grad.fill(0.0);
            pool.gradient(&[vec![0.0]], &mut grad).unwrap();
            assert!(
                grad.iter().all(|&g| g == 0.5),
                "every tile's gradient arrived"
            );
        }
        drop(pool);
        shards.into_iter().map(|s| s.join().unwrap()).collect()
    }

    #[test]
    fn a_fast_shard_gets_more_tiles_from_the_next_step_on() {
        // Nobody's start-up speed known: the first step alike, then 8, 2 and 2 (each shard's
        // step takes 8 ms).
        assert_eq!(
            three_evaluations([None; 3]),
            [vec![4, 8, 8], vec![4, 2, 2], vec![4, 2, 2]]
        );
        // Everyone's known (in other units): 8, 2 and 2 from the first step.
        assert_eq!(
            three_evaluations([Some(4000.0), Some(1000.0), Some(1000.0)]),
            [vec![8, 8, 8], vec![2, 2, 2], vec![2, 2, 2]]
        );
        // Wrong start-up speeds only cost the first step.
        assert_eq!(
            three_evaluations([Some(1000.0), Some(1000.0), Some(4000.0)]),
            [vec![2, 8, 8], vec![2, 2, 2], vec![8, 2, 2]]
        );
        // One shard's unknown: the others' do not count, being in other units.
        assert_eq!(
            three_evaluations([Some(4000.0), None, Some(1000.0)]),
            [vec![4, 8, 8], vec![4, 2, 2], vec![4, 2, 2]]
        );
    }

    #[test]
    fn start_up_speeds_stand_in_until_measured_scaled_to_the_measured_units() {
        let e = estimate_speeds;
        assert_eq!(e(&[(None, None), (None, Some(5.0))]), [None, None]);
        assert_eq!(
            e(&[(None, Some(100.0)), (None, Some(25.0))]),
            [Some(100.0), Some(25.0)]
        );
        // A shard joining later: its start-up speed times measured / start-up of the others.
        assert_eq!(
            e(&[
                (Some(40.0), Some(100.0)),
                (Some(20.0), Some(25.0)),
                (None, Some(50.0))
            ]),
            [Some(40.0), Some(20.0), Some(50.0 * ((0.4 + 0.8) / 2.0))]
        );
        // Measured ones without a start-up speed: no scale, the newcomer unknown.
        assert_eq!(
            e(&[(Some(40.0), None), (None, Some(50.0))]),
            [Some(40.0), None]
        );
        // Nonsense counts as nothing.
        assert_eq!(
            e(&[
                (Some(f64::NAN), Some(-1.0)),
                (Some(0.0), Some(f64::INFINITY))
            ]),
            [None, None]
        );
    }
}
