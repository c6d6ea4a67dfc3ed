//! A shard task: this worker's part in tiles rendered in lock step (the driver is
//! `stylefarm_core::lockstep`, a tile's evaluation `stylefarm_engine::lockstep`). The worker
//! opens `WorkerService.Shard` with its lease and evaluates whatever tiles the coordinator's
//! driver sends: their Gram matrices summed (`ShardSum`), then their gradients
//! (`ShardResiduals`), evaluation after evaluation, until `ShardDone` names the job's result,
//! which completes the task.
//!
//! The evaluations run on a dedicated thread; the async side only moves messages, and ends the
//! stream as soon as the task is cancelled. A tile's content features are computed once, on
//! its first evaluation, and its activations are kept from step one to step two while half the
//! worker's memory holds them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use candle_core::Tensor;
use stylefarm_convert::{f32_bytes, f32_values, preprocess_to_proto, rect_from_proto};
use stylefarm_core::image_io::{decode_image, resize_exact, DecodeLimits};
use stylefarm_core::lockstep::{GramSums, LockstepTile};
use stylefarm_core::settings::RenderSettings;
use stylefarm_core::tiles::{estimated_memory_bytes, Rect};
use stylefarm_core::CoreError;
use stylefarm_engine::vgg::Activations;
use stylefarm_engine::EngineError;
use stylefarm_proto::v1::worker_service_client::WorkerServiceClient;
use stylefarm_proto::v1::{self, shard_command::Command, shard_reply::Reply};
use stylefarm_proto::MAX_SHARD_MESSAGE_BYTES;
use tokio::sync::oneshot;
use tokio_stream::StreamExt;

use crate::engine::{Engine, TileObjective};
use crate::failure::Failure;
use crate::rpc::{describe, Transport};

/// What a shard task needs, fetched and checked.
pub(crate) struct ShardInput {
    pub(crate) lease_id: String,
    /// The full image's size.
    pub(crate) width: u32,
    pub(crate) height: u32,
    pub(crate) settings: RenderSettings,
    /// The content image, still encoded.
    pub(crate) content: Vec<u8>,
    /// The memory the worker offers (0: unknown): half of it may hold the activations of the
    /// tiles between the two steps of an evaluation, which saves each a forward pass.
    pub(crate) memory_bytes: u64,
}

/// What the activations kept between the steps may take when the worker does not say how much
/// memory it has.
const DEFAULT_KEEP_BYTES: u64 = 2 << 30;
/// How often the stream looks at the task's cancel flag.
const CANCEL_CHECK: Duration = Duration::from_millis(100);

/// Serves the coordinator's driver until it names the job's result.
pub(crate) async fn serve(
    workers: WorkerServiceClient<Transport>,
    engine: Arc<dyn Engine>,
    input: ShardInput,
    cancel: Arc<AtomicBool>,
) -> Result<v1::BlobRef, Failure> {
    let (commands, commands_rx) = mpsc::channel::<Command>();
    let (replies, replies_rx) = tokio::sync::mpsc::channel::<v1::ShardReply>(16);
    let (hello_tx, hello_rx) = oneshot::channel::<Result<v1::ShardHello, Failure>>();
    let (ended_tx, mut ended) = oneshot::channel::<Failure>();
    let lease_id = input.lease_id.clone();
    let thread_cancel = cancel.clone();
    std::thread::Builder::new()
        .name("stylefarm-shard".into())
        .spawn(move || {
            let session = Session::open(&*engine, &input, thread_cancel);
            let mut session = match session {
                Ok(s) => {
                    let _ = hello_tx.send(Ok(s.hello(lease_id)));
                    s
                }
                Err(f) => {
                    let _ = hello_tx.send(Err(f));
                    return;
                }
            };
            while let Ok(command) = commands_rx.recv() {
                if let Err(f) = session.handle(command, &replies) {
                    let _ = ended_tx.send(f);
                    return;
                }
            }
        })
        .map_err(|e| Failure::application(format!("could not start a shard thread: {e}")))?;
    let hello = hello_rx
        .await
        .map_err(|_| Failure::application("the shard thread ended before it was ready"))??;
    let first = v1::ShardReply {
        reply: Some(Reply::Hello(hello)),
    };
    let outbound =
        tokio_stream::once(first).chain(tokio_stream::wrappers::ReceiverStream::new(replies_rx));
    let mut client = workers
        .max_decoding_message_size(MAX_SHARD_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_SHARD_MESSAGE_BYTES);
    let mut inbound = client
        .shard(outbound)
        .await
        .map_err(|s| {
            Failure::interrupted(format!(
                "the coordinator refused the shard's stream: {}",
                describe(&s)
            ))
        })?
        .into_inner();
    let mut watch_cancel = tokio::time::interval(CANCEL_CHECK);
    loop {
        tokio::select! {
            _ = watch_cancel.tick() => {
                // The task's heartbeat learnt the job was cancelled: the stream ends here,
                // whatever the driver or this worker's shard thread is doing.
                if cancel.load(Ordering::Relaxed) {
                    return Err(Failure::from_engine(CoreError::Cancelled));
                }
            }
            message = inbound.message() => match message {
                Ok(Some(v1::ShardCommand { command: Some(Command::Done(done)) })) => {
                    return done.result.ok_or_else(|| Failure::application("the lock-step render ended without a result"));
                }
                Ok(Some(v1::ShardCommand { command: Some(command) })) => {
                    if commands.send(command).is_err() {
                        // The thread ended: its reason follows on `ended`.
                        break;
                    }
                }
                Ok(Some(v1::ShardCommand { command: None })) => {}
                Ok(None) => return Err(Failure::interrupted("the coordinator closed the shard's stream before the render ended")),
                Err(s) => return Err(Failure::interrupted(format!("the shard's stream failed: {}", describe(&s)))),
            },
            failure = &mut ended => {
                return Err(failure.unwrap_or_else(|_| Failure::application("the shard thread ended")));
            }
        }
    }
    Err(ended
        .await
        .unwrap_or_else(|_| Failure::application("the shard thread ended")))
}

/// The evaluator and the pixels of the current evaluation, on the shard thread.
struct Session {
    objective: TileObjective,
    width: u32,
    height: u32,
    channels: Vec<usize>,
    evaluation: u64,
    /// The tiles' contexts of the current evaluation.
    pixels: HashMap<u32, (LockstepTile, Tensor)>,
    /// What step one kept for step two, by tile, and its estimated size.
    kept: HashMap<u32, Activations>,
    kept_bytes: u64,
    keep_budget: u64,
    cancel: Arc<AtomicBool>,
}

impl Session {
    fn open(
        engine: &dyn Engine,
        input: &ShardInput,
        cancel: Arc<AtomicBool>,
    ) -> Result<Self, Failure> {
        let (w, h) = (input.width, input.height);
        let limits = DecodeLimits::default();
        let content =
            decode_image(&input.content, "content image", &limits).map_err(Failure::from_engine)?;
        let content = resize_exact(&content, w, h);
        let mut objective = engine
            .tile_objective(&input.settings, &content)
            .map_err(Failure::from_engine)?;
        objective.set_cancel(cancel.clone());
        Ok(Self {
            channels: objective.style_channels(),
            objective,
            width: w,
            height: h,
            evaluation: 0,
            pixels: HashMap::new(),
            kept: HashMap::new(),
            kept_bytes: 0,
            keep_budget: match input.memory_bytes {
                0 => DEFAULT_KEEP_BYTES,
                m => m / 2,
            },
            cancel,
        })
    }

    fn hello(&self, lease_id: String) -> v1::ShardHello {
        v1::ShardHello {
            lease_id,
            preprocess: preprocess_to_proto(self.objective.preprocess()).into(),
            channels: self.channels.iter().map(|&c| c as u32).collect(),
        }
    }

    fn handle(
        &mut self,
        command: Command,
        replies: &tokio::sync::mpsc::Sender<v1::ShardReply>,
    ) -> Result<(), Failure> {
        let send = |reply: Reply| {
            replies
                .blocking_send(v1::ShardReply { reply: Some(reply) })
                .map_err(|_| Failure::interrupted("the shard's stream closed"))
        };
        let engine = |e: EngineError| Failure::from_engine(e);
        match command {
            Command::Tile(t) => {
                let tile = self.check(&t)?;
                if t.evaluation != self.evaluation {
                    self.pixels.clear();
                    self.kept.clear();
                    self.kept_bytes = 0;
                    self.evaluation = t.evaluation;
                }
                let (w, h) = (tile.context.width as usize, tile.context.height as usize);
                let x =
                    Tensor::from_vec(f32_values(&t.values), (1, 3, h, w), self.objective.device())
                        .map_err(|e| engine(e.into()))?;
                self.pixels.insert(t.tile, (tile, x));
            }
            Command::Sum(s) => {
                // The time is the driver's measure of this shard's speed (its share of tiles).
                let started = Instant::now();
                let mut sums = GramSums::default();
                for t in &s.tiles {
                    let (tile, x) = self.held(s.evaluation, *t)?;
                    let c = tile.context;
                    let bytes =
                        estimated_memory_bytes(c.width, c.height) - estimated_memory_bytes(0, 0);
                    let g = if self.kept_bytes + bytes <= self.keep_budget {
                        let (g, acts) = self
                            .objective
                            .grams_for_backward(&tile, &x)
                            .map_err(engine)?;
                        self.kept.insert(*t, acts);
                        self.kept_bytes += bytes;
                        g
                    } else {
                        self.objective.grams(&tile, &x).map_err(engine)?
                    };
                    sums.add(&g).map_err(Failure::from_engine)?;
                }
                send(Reply::Grams(v1::ShardGrams {
                    evaluation: s.evaluation,
                    grams: sums.grams.iter().map(|g| f32_bytes(g)).collect(),
                    counts: sums.counts,
                    content: sums.content,
                    seconds: started.elapsed().as_secs_f64(),
                }))?;
            }
            Command::Residuals(r) => {
                let residuals = self.residuals(&r.residuals)?;
                for t in &r.tiles {
                    let started = Instant::now();
                    let (tile, x) = self.held(r.evaluation, *t)?;
                    let g = match self.kept.remove(t) {
                        Some(acts) => self.objective.gradient_from(&tile, &acts, &residuals),
                        None => self.objective.gradient(&tile, &x, &residuals),
                    };
                    let g = g
                        .and_then(|g| Ok(g.flatten_all()?.to_vec1::<f32>()?))
                        .map_err(engine)?;
                    send(Reply::Gradient(v1::ShardGradient {
                        evaluation: r.evaluation,
                        tile: *t,
                        values: f32_bytes(&g),
                        seconds: started.elapsed().as_secs_f64(),
                    }))?;
                }
            }
            Command::Done(_) => {}
        }
        if self.cancel.load(Ordering::Relaxed) {
            return Err(Failure::from_engine(CoreError::Cancelled));
        }
        Ok(())
    }

    /// The pixels of `tile` for `evaluation`, which the coordinator must have sent.
    fn held(&self, evaluation: u64, tile: u32) -> Result<(LockstepTile, Tensor), Failure> {
        match self.pixels.get(&tile) {
            Some(held) if evaluation == self.evaluation => Ok(held.clone()),
            _ => Err(Failure::application(format!(
                "the coordinator asked about tile {tile} of evaluation {evaluation} without its pixels"
            ))),
        }
    }

    /// A tile's core must lie in its context, the context in the image, and its pixels fill
    /// the context.
    fn check(&self, t: &v1::ShardTile) -> Result<LockstepTile, Failure> {
        let (Some(core), Some(context)) = (
            t.core.as_ref().map(rect_from_proto),
            t.context.as_ref().map(rect_from_proto),
        ) else {
            return Err(Failure::application("a shard tile without its rectangles"));
        };
        let inside = |a: &Rect, w: u32, h: u32| {
            a.width > 0
                && a.height > 0
                && a.x.checked_add(a.width).is_some_and(|r| r <= w)
                && a.y.checked_add(a.height).is_some_and(|b| b <= h)
        };
        let holds = core.x >= context.x
            && core.y >= context.y
            && core.right() <= context.right()
            && core.bottom() <= context.bottom();
        let pixels = 12 * u64::from(context.width) * u64::from(context.height);
        if !inside(&context, self.width, self.height)
            || !inside(&core, self.width, self.height)
            || !holds
        {
            return Err(Failure::application(format!(
                "tile {} ({core:?} in {context:?}) does not fit the {}x{} image",
                t.tile, self.width, self.height
            )));
        }
        if t.values.len() as u64 != pixels {
            return Err(Failure::application(format!(
                "tile {} came with {} bytes of pixels, not {pixels}",
                t.tile,
                t.values.len()
            )));
        }
        Ok(LockstepTile { core, context })
    }

    /// The style residuals as (C, C) tensors.
    fn residuals(&self, bytes: &[Vec<u8>]) -> Result<Vec<Tensor>, Failure> {
        if bytes.len() != self.channels.len() {
            return Err(Failure::application(format!(
                "{} style residuals came for {} style layers",
                bytes.len(),
                self.channels.len()
            )));
        }
        bytes
            .iter()
            .zip(&self.channels)
            .map(|(b, &c)| {
                if b.len() != 4 * c * c {
                    return Err(Failure::application(format!(
                        "a style residual of {} bytes for a layer of {c} channels",
                        b.len()
                    )));
                }
                Tensor::from_vec(f32_values(b), (c, c), self.objective.device())
                    .map_err(Failure::from_engine)
            })
            .collect()
    }
}
