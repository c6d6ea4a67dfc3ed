//! What a leased task asks of this worker, checked once from its `TaskSpec` (the worker's one
//! conversion of a task spec), and the work of each kind: a render, the style statistics of
//! a whole image, or a shard of tiles rendered in lock step.
//!
//! Renders and statistics fetch their images, then decode, compute and encode on a dedicated
//! thread and upload the result; a shard serves the coordinator's driver ([`crate::lockstep`]).
//! The lease around the work (heartbeats, cancel, shutdown, the report) is [`crate::task`]'s.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use stylefarm_convert::{losses_to_proto, settings_from_proto};
use stylefarm_core::image_io::{decode_image, encode_png, DecodeLimits, RgbImage};
use stylefarm_core::settings::{Init, Losses, RenderSettings};
use stylefarm_core::CoreError;
use stylefarm_engine::render::RenderInputs;
use stylefarm_proto::blob::{is_sha256, sha256_hex};
use stylefarm_proto::v1::{self, task_spec::Part, BlobRef, TaskSpec};
use tokio::sync::{oneshot, watch};

use crate::blobs::{self, MAX_BLOB_BYTES};
use crate::context::TaskContext;
use crate::engine::{Engine, StatisticsInput, TaskInput};
use crate::failure::Failure;
use crate::lockstep::{self, ShardInput};
use crate::observer::{ProgressObserver, ProgressState};
use crate::rpc::describe;

/// What a leased task asks of this worker, checked.
#[derive(Debug, Clone)]
pub(crate) enum Work {
    /// A render of its own: a whole job, a frame, a sweep point or a stage.
    Render(Render),
    /// The style statistics of a whole image rendered in lock step; no render.
    Statistics(Statistics),
    /// This worker's part in tiles rendered in lock step: no render of its own, the
    /// coordinator's evaluations.
    Shard(Shard),
}

/// The images of a render or a statistics task, not yet fetched.
#[derive(Debug, Clone)]
pub(crate) struct Images {
    content: BlobRef,
    styles: Vec<BlobRef>,
    init: Option<BlobRef>,
}

/// A render task.
#[derive(Debug, Clone)]
pub(crate) struct Render {
    images: Images,
    settings: RenderSettings,
}

/// A statistics task. Its content (and init) image is fetched and decoded like a render's,
/// though only the styles are used.
#[derive(Debug, Clone)]
pub(crate) struct Statistics {
    images: Images,
    /// `image_size` is the full image's longer side.
    settings: RenderSettings,
    /// Side of the square pieces the full image is taken in (0: whole).
    piece: u32,
}

/// A shard task.
#[derive(Debug, Clone)]
pub(crate) struct Shard {
    content: BlobRef,
    settings: RenderSettings,
    /// The full image's size, checked against the decode limits.
    width: u32,
    height: u32,
}

/// A finished task, ready to report.
pub(crate) struct Finished {
    pub(crate) result: BlobRef,
    pub(crate) losses: v1::Losses,
}

impl Work {
    /// Checks everything in `spec` that can be checked before downloading anything; a render
    /// sends a preview every `preview_every` iterations.
    pub(crate) fn from_spec(spec: Option<&TaskSpec>, preview_every: u32) -> Result<Self, Failure> {
        let spec =
            spec.ok_or_else(|| Failure::application("invalid spec: the lease has no task spec"))?;
        let content = checked_blob(spec.content.as_ref(), "content")?;
        if spec.styles.is_empty() {
            return Err(Failure::application(
                "invalid spec.styles: at least one style image is needed",
            ));
        }
        let styles = spec
            .styles
            .iter()
            .enumerate()
            .map(|(i, b)| checked_blob(Some(b), &format!("styles[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let mut settings = settings_from_proto(
            &spec.settings.clone().unwrap_or_default(),
            styles.len(),
            "spec.settings",
        )
        .map_err(|e| Failure::application(e.to_string()))?;
        settings.save_iter = preview_every;
        let init = match settings.init {
            Init::Image => Some(checked_blob(spec.init_image.as_ref(), "init_image")?),
            Init::Random | Init::Content => None,
        };
        let images = Images {
            content,
            styles,
            init,
        };
        Ok(match &spec.part {
            Some(Part::Statistics(st)) => {
                check_full_size(st.full_width, st.full_height).map_err(|reason| {
                    Failure::application(format!("invalid spec.statistics: {reason}"))
                })?;
                settings.image_size = st.full_width.max(st.full_height);
                Work::Statistics(Statistics {
                    images,
                    settings,
                    piece: st.piece_size,
                })
            }
            Some(Part::Shard(sh)) => {
                check_full_size(sh.full_width, sh.full_height).map_err(|reason| {
                    Failure::application(format!("invalid spec.shard: {reason}"))
                })?;
                Work::Shard(Shard {
                    content: images.content,
                    settings,
                    width: sh.full_width,
                    height: sh.full_height,
                })
            }
            Some(Part::Assemble(_)) => {
                return Err(Failure::application(
                    "invalid spec.assemble: assembling a job's result is the coordinator's work",
                ))
            }
            Some(Part::Frame(_) | Part::Sweep(_) | Part::Stage(_)) | None => {
                Work::Render(Render { images, settings })
            }
        })
    }

    /// The checked settings.
    pub(crate) fn settings(&self) -> &RenderSettings {
        match self {
            Work::Render(Render { settings, .. })
            | Work::Statistics(Statistics { settings, .. })
            | Work::Shard(Shard { settings, .. }) => settings,
        }
    }

    /// Everything from the first download to the uploaded result. Setting `cancel` stops the
    /// work; `progress` gets a render's iterations and previews.
    pub(crate) async fn run(
        self,
        ctx: &TaskContext,
        lease_id: &str,
        cancel: Arc<AtomicBool>,
        progress: watch::Sender<ProgressState>,
    ) -> Result<Finished, Failure> {
        let rendered = match self {
            Work::Shard(shard) => return shard.run(ctx, lease_id, cancel).await,
            Work::Render(render) => {
                let fetched = render.images.fetch(ctx, &cancel).await?;
                let observer = ProgressObserver::new(progress, cancel, ctx.preview_every);
                let engine = ctx.engine.clone();
                on_render_thread(move || render.render(&*engine, fetched, observer)).await?
            }
            Work::Statistics(statistics) => {
                let fetched = statistics.images.fetch(ctx, &cancel).await?;
                let engine = ctx.engine.clone();
                on_render_thread(move || statistics.compute(&*engine, fetched, cancel)).await?
            }
        };
        let result = blobs::upload(&ctx.rpc.blobs, rendered.blob, rendered.sha256)
            .await
            .map_err(|s| {
                Failure::application(format!("could not upload the result: {}", describe(&s)))
            })?;
        Ok(Finished {
            result,
            losses: losses_to_proto(&rendered.losses),
        })
    }
}

impl Render {
    /// Decodes, renders and encodes the PNG, on the render thread.
    fn render(
        self,
        engine: &dyn Engine,
        fetched: Fetched,
        mut observer: ProgressObserver,
    ) -> Result<Rendered, Failure> {
        let images = fetched.decode()?;
        let task = TaskInput {
            inputs: RenderInputs {
                content: images.content,
                styles: images.styles,
                init_image: images.init,
            },
            settings: self.settings,
            style_ids: self
                .images
                .styles
                .iter()
                .map(|b| b.sha256.clone())
                .collect(),
        };
        let out = engine
            .run(&task, &mut observer)
            .map_err(Failure::from_engine)?;
        let png = encode_png(&out.image).map_err(Failure::from_engine)?;
        Ok(Rendered::new(png, out.losses))
    }
}

impl Statistics {
    /// Decodes the images and computes the style statistics (safetensors), on the render
    /// thread; no progress is reported, `cancel` stops it.
    fn compute(
        self,
        engine: &dyn Engine,
        fetched: Fetched,
        cancel: Arc<AtomicBool>,
    ) -> Result<Rendered, Failure> {
        let images = fetched.decode()?;
        let input = StatisticsInput {
            styles: images.styles,
            settings: self.settings,
            piece: self.piece,
            cancel: Some(cancel),
        };
        let blob = engine.statistics(&input).map_err(Failure::from_engine)?;
        Ok(Rendered::new(blob, Losses::default()))
    }
}

impl Shard {
    /// Fetches the content image and serves the coordinator's driver until it names the
    /// job's result.
    async fn run(
        self,
        ctx: &TaskContext,
        lease_id: &str,
        cancel: Arc<AtomicBool>,
    ) -> Result<Finished, Failure> {
        let content = ctx.fetch(&self.content, "content image").await?;
        let input = ShardInput {
            lease_id: lease_id.to_string(),
            width: self.width,
            height: self.height,
            settings: self.settings,
            content,
            memory_bytes: ctx.memory_bytes,
        };
        let result =
            lockstep::serve(ctx.rpc.workers.clone(), ctx.engine.clone(), input, cancel).await?;
        Ok(Finished {
            result,
            losses: v1::Losses::default(),
        })
    }
}

/// `spec.{field}`, which must be present and name a blob the worker may fetch.
fn checked_blob(b: Option<&BlobRef>, field: &str) -> Result<BlobRef, Failure> {
    let b = b.ok_or_else(|| Failure::application(format!("invalid spec.{field}: missing")))?;
    if !is_sha256(&b.sha256) {
        return Err(Failure::application(format!(
            "invalid spec.{field}.sha256: `{}` is not 64 lowercase hex digits",
            b.sha256.chars().take(80).collect::<String>()
        )));
    }
    if b.size > MAX_BLOB_BYTES {
        return Err(Failure::application(format!(
            "invalid spec.{field}.size: {} bytes is over the worker's limit of {} MiB",
            b.size,
            MAX_BLOB_BYTES >> 20
        )));
    }
    Ok(b.clone())
}

/// `Err(reason)` unless a `w` x `h` full image has pixels and is within the decode limits.
fn check_full_size(w: u32, h: u32) -> Result<(), String> {
    let limits = DecodeLimits::default();
    if w == 0 || h == 0 {
        return Err(format!("a {w}x{h} image has no pixels"));
    }
    if w > limits.max_width
        || h > limits.max_height
        || u64::from(w) * u64::from(h) > limits.max_pixels
    {
        return Err(format!(
            "the full image of {w}x{h} pixels is over the limit of {}x{} and {} pixels",
            limits.max_width, limits.max_height, limits.max_pixels
        ));
    }
    Ok(())
}

/// The fetched, still encoded images of a task.
struct Fetched {
    content: Vec<u8>,
    styles: Vec<Vec<u8>>,
    init: Option<Vec<u8>>,
}

/// The decoded images of a task.
struct Decoded {
    content: RgbImage,
    styles: Vec<RgbImage>,
    init: Option<RgbImage>,
}

impl Images {
    /// Fetches the content, the styles and the init image, in that order; fails as
    /// interrupted if `cancel` was set meanwhile.
    async fn fetch(&self, ctx: &TaskContext, cancel: &AtomicBool) -> Result<Fetched, Failure> {
        let content = ctx.fetch(&self.content, "content image").await?;
        let mut styles = Vec::with_capacity(self.styles.len());
        for (i, b) in self.styles.iter().enumerate() {
            styles.push(ctx.fetch(b, &format!("style image {}", i + 1)).await?);
        }
        let init = match &self.init {
            Some(b) => Some(ctx.fetch(b, "init image").await?),
            None => None,
        };
        if cancel.load(Ordering::Relaxed) {
            return Err(Failure::from_engine(CoreError::Cancelled));
        }
        Ok(Fetched {
            content,
            styles,
            init,
        })
    }
}

impl Fetched {
    /// Decodes every image within the decode limits, dropping each encoded image once decoded.
    fn decode(self) -> Result<Decoded, Failure> {
        let limits = DecodeLimits::default();
        let decode = |bytes: &[u8], what: &str| {
            decode_image(bytes, what, &limits).map_err(Failure::from_engine)
        };
        let Fetched {
            content: content_bytes,
            styles: style_bytes,
            init: init_bytes,
        } = self;
        let content = decode(&content_bytes, "content image")?;
        drop(content_bytes);
        let n = style_bytes.len();
        let styles = style_bytes
            .iter()
            .enumerate()
            .map(|(i, b)| match n {
                1 => decode(b, "style image"),
                _ => decode(b, &format!("style image {}", i + 1)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        drop(style_bytes);
        let init = init_bytes.map(|b| decode(&b, "init image")).transpose()?;
        Ok(Decoded {
            content,
            styles,
            init,
        })
    }
}

/// A render's or statistics' result, encoded.
struct Rendered {
    /// A PNG, or a statistics task's safetensors.
    blob: Arc<Vec<u8>>,
    sha256: String,
    losses: Losses,
}

impl Rendered {
    fn new(blob: Vec<u8>, losses: Losses) -> Self {
        Self {
            sha256: sha256_hex(&blob),
            blob: Arc::new(blob),
            losses,
        }
    }
}

/// Runs `work` on a thread of its own, so that the async side keeps heartbeating; a panic
/// fails the task, never the worker.
async fn on_render_thread(
    work: impl FnOnce() -> Result<Rendered, Failure> + Send + 'static,
) -> Result<Rendered, Failure> {
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("stylefarm-render".into())
        .spawn(move || {
            let result = std::panic::catch_unwind(AssertUnwindSafe(work));
            // The receiver is gone only if the task was abandoned: nobody wants the result.
            let _ = done_tx.send(result);
        })
        .map_err(|e| Failure::application(format!("could not start a render thread: {e}")))?;
    match done_rx.await {
        Ok(Ok(result)) => result,
        Ok(Err(panic)) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            Err(Failure::application(format!("the engine crashed: {what}")))
        }
        Err(_) => Err(Failure::application(
            "the render thread ended without a result",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stylefarm_proto::v1::FailureKind;

    fn blob(b: u8) -> BlobRef {
        BlobRef {
            sha256: format!("{:02x}", b).repeat(32),
            size: 10,
        }
    }

    fn spec() -> TaskSpec {
        TaskSpec {
            content: Some(blob(1)),
            styles: vec![blob(2)],
            settings: Some(v1::RenderSettings {
                num_iterations: Some(7),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_good_spec_becomes_a_render_with_previews() {
        let Work::Render(r) = Work::from_spec(Some(&spec()), 3).unwrap() else {
            panic!("not a render");
        };
        assert_eq!(r.settings.num_iterations, 7);
        assert_eq!(r.settings.save_iter, 3);
        assert_eq!(r.images.init, None);
    }

    #[test]
    fn bad_specs_fail_naming_the_field() {
        type Change = Box<dyn Fn(&mut TaskSpec)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|s| s.content = None), "spec.content"),
            (Box::new(|s| s.styles.clear()), "spec.styles"),
            (
                Box::new(|s| s.styles[0].sha256 = "../../etc/passwd".into()),
                "spec.styles[0].sha256",
            ),
            (
                Box::new(|s| s.content.as_mut().unwrap().size = u64::MAX),
                "spec.content.size",
            ),
            (
                Box::new(|s| s.settings.as_mut().unwrap().style_weight = Some(-1.0)),
                "spec.settings.style_weight",
            ),
            (
                Box::new(|s| s.settings.as_mut().unwrap().init = v1::Init::Image as i32),
                "spec.init_image",
            ),
            (
                Box::new(|s| {
                    s.part = Some(Part::Statistics(v1::Statistics {
                        full_width: 0,
                        full_height: 100,
                        ..Default::default()
                    }))
                }),
                "spec.statistics",
            ),
        ];
        for (change, field) in cases {
            let mut s = spec();
            change(&mut s);
            let f = Work::from_spec(Some(&s), 0).unwrap_err();
            assert_eq!(f.kind, FailureKind::Application);
            assert!(
                f.message.starts_with(&format!("invalid {field}")),
                "{field}: {}",
                f.message
            );
        }
        assert!(Work::from_spec(None, 0).is_err());
    }

    #[test]
    fn a_statistics_task_is_checked() {
        let mut s = spec();
        s.part = Some(Part::Statistics(v1::Statistics {
            full_width: 300,
            full_height: 200,
            piece_size: 128,
            style_only: true,
        }));
        let Work::Statistics(st) = Work::from_spec(Some(&s), 0).unwrap() else {
            panic!("not a statistics task");
        };
        assert_eq!(st.settings.image_size, 300);
        assert_eq!(st.piece, 128);
        assert_eq!(st.settings.num_iterations, 7);
    }
}
