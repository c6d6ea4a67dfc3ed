//! What a worker runs tasks on: the [`Engine`] trait, its real implementation on candle
//! ([`CandleEngine`], which keeps the network loaded and caches style targets between tasks),
//! and the plain data a task hands it.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::Device;
use sha2::{Digest, Sha256};
use stylefarm_convert::preprocess_to_proto;
use stylefarm_core::layers::{LayerName, Pooling, VggArch};
use stylefarm_core::settings::{Losses, RenderSettings};
use stylefarm_core::CoreError;
pub use stylefarm_engine::lockstep::TileObjective;
use stylefarm_engine::objective::{Pieces, StyleTargets};
use stylefarm_engine::render::{
    render_with_targets, style_targets, style_targets_in_pieces, Observer, RenderInputs,
};
use stylefarm_engine::statistics::encode_style;
use stylefarm_engine::tensor::image_to_tensor;
use stylefarm_engine::vgg::Vgg;
use stylefarm_engine::weights::VggWeights;
use stylefarm_engine::Result;

pub use stylefarm_core::image_io::RgbImage;

/// Runs one task at a time on the calling thread (a dedicated OS thread, never the async
/// runtime). Implementations must honour [`Observer::cancel_flag`] and stop within about a
/// second once it is set.
pub trait Engine: Send + Sync + 'static {
    /// The weights this engine holds, reported to the coordinator (e.g. `vgg16-caffe`).
    fn models(&self) -> Vec<String>;

    /// Renders `task`, reporting to `observer`.
    fn run(&self, task: &TaskInput, observer: &mut dyn Observer) -> Result<TaskOutput>;

    /// The whole image's style targets for its tiles in lock step, as the blob the
    /// coordinator's driver reads.
    fn statistics(&self, input: &StatisticsInput) -> Result<Vec<u8>>;

    /// The evaluator of an image's tiles in lock step (a shard task): `content` at the full
    /// output size, with `settings`' layers, pooling and content weight. An engine without a
    /// network refuses.
    fn tile_objective(
        &self,
        _settings: &RenderSettings,
        _content: &RgbImage,
    ) -> Result<TileObjective> {
        Err(CoreError::InvalidOption {
            option: "tiles",
            reason: "this worker's engine cannot evaluate tiles in lock step".into(),
        }
        .into())
    }
}

/// What the statistics of a tiled image are computed from, decoded.
#[derive(Debug, Clone)]
pub struct StatisticsInput {
    /// The style images.
    pub styles: Vec<RgbImage>,
    /// Checked settings, `image_size` the full output's longer side.
    pub settings: RenderSettings,
    /// Side of the square pieces, in pixels, that larger images are taken in (0: none).
    pub piece: u32,
    /// Once set, the computation stops with `CoreError::Cancelled` within about a second.
    pub cancel: Option<Arc<AtomicBool>>,
}

/// One task, decoded and ready to render.
#[derive(Debug, Clone)]
pub struct TaskInput {
    /// The images.
    pub inputs: RenderInputs,
    /// Checked settings.
    pub settings: RenderSettings,
    /// The style images' blob hashes, in order, so that style targets can be reused across
    /// tasks; empty: the engine hashes the pixels instead.
    pub style_ids: Vec<String>,
}

/// A finished render.
#[derive(Debug, Clone)]
pub struct TaskOutput {
    /// The output image.
    pub image: RgbImage,
    /// The objective on the output's 8-bit pixels.
    pub losses: Losses,
    /// Objective evaluations made.
    pub iterations: u32,
}

/// Style targets kept between tasks.
const TARGET_CACHE_ENTRIES: usize = 4;

/// The Gatys render on candle (the CPU, or a GPU with the `cuda` feature): the VGG is loaded once, and style targets are cached by
/// everything they depend on, so the frames of a batch that share a style compute them once.
pub struct CandleEngine {
    vgg: Vgg,
    models: Vec<String>,
    targets: Mutex<TargetCache>,
}

impl std::fmt::Debug for CandleEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CandleEngine")
            .field("models", &self.models)
            .finish_non_exhaustive()
    }
}

impl CandleEngine {
    /// Loads a `.safetensors` (torchvision) or `.onnx` (Keras) VGG weights file on the CPU.
    pub fn load(weights: &Path) -> Result<Self> {
        Self::load_on(weights, &Device::Cpu)
    }

    /// Loads a weights file as [`Self::load`] does, on `device` (see
    /// [`stylefarm_engine::device::open`]): every task then runs there.
    pub fn load_on(weights: &Path, device: &Device) -> Result<Self> {
        let weights = VggWeights::load(weights, device)?;
        Ok(Self::new(Vgg::new(weights, Pooling::Max)?))
    }

    /// The network the tasks run on.
    pub fn vgg(&self) -> &Vgg {
        &self.vgg
    }

    /// An engine on an already built network.
    pub fn new(vgg: Vgg) -> Self {
        let arch = match vgg.arch() {
            VggArch::Vgg16 => "vgg16",
            VggArch::Vgg19 => "vgg19",
        };
        Self {
            models: vec![format!("{arch}-{}", preprocess_to_proto(vgg.preprocess()))],
            vgg,
            targets: Mutex::new(TargetCache::default()),
        }
    }

    /// The style targets of `task`, from the cache when an earlier task had the same ones.
    fn targets(&self, task: &TaskInput) -> Result<Arc<StyleTargets>> {
        let key = TargetKey::of(task);
        if let Some(hit) = self.lock_targets().get(&key) {
            tracing::debug!("style targets reused");
            return Ok(hit);
        }
        let computed = Arc::new(style_targets(
            &self.vgg,
            &task.inputs.styles,
            &task.settings,
        )?);
        self.lock_targets().insert(key, computed.clone());
        Ok(computed)
    }

    fn lock_targets(&self) -> std::sync::MutexGuard<'_, TargetCache> {
        // A panic while the lock was held leaves at worst a stale entry list: keep using it.
        self.targets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Engine for CandleEngine {
    fn models(&self) -> Vec<String> {
        self.models.clone()
    }

    fn run(&self, task: &TaskInput, observer: &mut dyn Observer) -> Result<TaskOutput> {
        task.settings.validate(task.inputs.styles.len())?;
        let targets = self.targets(task)?;
        let out = render_with_targets(&self.vgg, &task.inputs, &task.settings, &targets, observer)?;
        Ok(TaskOutput {
            image: out.image,
            losses: out.losses,
            iterations: out.iterations,
        })
    }

    fn tile_objective(
        &self,
        settings: &RenderSettings,
        content: &RgbImage,
    ) -> Result<TileObjective> {
        let vgg = self.vgg.with_pooling(settings.pooling);
        let content = image_to_tensor(content, vgg.preprocess(), vgg.device())?;
        TileObjective::new(
            vgg,
            content,
            &settings.content_layers,
            &settings.style_layers,
            settings.content_weight,
        )
    }

    fn statistics(&self, input: &StatisticsInput) -> Result<Vec<u8>> {
        input.settings.validate(input.styles.len())?;
        let cancelled = || {
            input
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(Ordering::Relaxed))
        };
        let pieces = Pieces {
            side: match input.piece {
                0 => usize::MAX,
                p => p as usize,
            },
            cancelled: &cancelled,
        };
        let style = style_targets_in_pieces(&self.vgg, &input.styles, &input.settings, pieces)?;
        encode_style(&style)
    }
}

/// Everything style targets depend on (besides the network, fixed per engine).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TargetKey {
    /// Blob hashes of the style images (or hashes of their pixels).
    styles: Vec<String>,
    /// Blend weights normalised to sum 1, as bits.
    blend: Vec<u32>,
    layers: Vec<LayerName>,
    image_size: u32,
    style_scale: u32,
    avg_pooling: bool,
}

impl TargetKey {
    fn of(task: &TaskInput) -> Self {
        let s = &task.settings;
        let styles = if task.style_ids.len() == task.inputs.styles.len() {
            task.style_ids.clone()
        } else {
            task.inputs.styles.iter().map(pixel_hash).collect()
        };
        let blend = s
            .style_blend_weights
            .clone()
            .unwrap_or_else(|| vec![1.0; task.inputs.styles.len()]);
        let sum: f32 = blend.iter().sum();
        Self {
            styles,
            blend: blend.iter().map(|w| (w / sum).to_bits()).collect(),
            layers: s.style_layers.clone(),
            image_size: s.image_size,
            style_scale: s.style_scale.to_bits(),
            avg_pooling: s.pooling == Pooling::Avg,
        }
    }
}

/// sha256 of an image's size and pixels.
fn pixel_hash(img: &RgbImage) -> String {
    let mut h = Sha256::new();
    h.update(img.width().to_le_bytes());
    h.update(img.height().to_le_bytes());
    h.update(img.as_raw());
    hex::encode(h.finalize())
}

/// A small least-recently-used list of style targets.
#[derive(Default)]
struct TargetCache {
    entries: VecDeque<(TargetKey, Arc<StyleTargets>)>,
    hits: u64,
    misses: u64,
}

impl TargetCache {
    fn get(&mut self, key: &TargetKey) -> Option<Arc<StyleTargets>> {
        let Some(i) = self.entries.iter().position(|(k, _)| k == key) else {
            self.misses += 1;
            return None;
        };
        self.hits += 1;
        let entry = self.entries.remove(i)?;
        let targets = entry.1.clone();
        self.entries.push_front(entry);
        Some(targets)
    }

    fn insert(&mut self, key: TargetKey, targets: Arc<StyleTargets>) {
        self.entries.retain(|(k, _)| *k != key);
        self.entries.push_front((key, targets));
        self.entries.truncate(TARGET_CACHE_ENTRIES);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;
    use stylefarm_engine::render::render;

    fn tiny_engine() -> CandleEngine {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../engine/tests/data/tiny_vgg16.safetensors");
        CandleEngine::load(&path).unwrap()
    }

    fn pattern(w: u32, h: u32, k: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            Rgb([
                ((x * 7 + y * k) % 256) as u8,
                ((x * y + k * 13) % 256) as u8,
                (((x / 3 + y / 5) * 40 * k) % 256) as u8,
            ])
        })
    }

    fn task(content: RgbImage, style_ids: &[&str]) -> TaskInput {
        TaskInput {
            inputs: RenderInputs {
                content,
                styles: vec![pattern(36, 30, 3)],
                init_image: None,
            },
            settings: RenderSettings {
                image_size: 40,
                num_iterations: 5,
                style_weight: 1e3,
                ..RenderSettings::default()
            },
            style_ids: style_ids.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn same_pixels_as_the_engines_own_render() {
        let engine = tiny_engine();
        assert_eq!(engine.models(), vec!["vgg16-torchvision".to_string()]);
        let t = task(pattern(40, 32, 1), &["s1"]);
        let ours = engine.run(&t, &mut ()).unwrap();
        let theirs = render(&engine.vgg, &t.inputs, &t.settings, &mut ()).unwrap();
        assert_eq!(ours.image.dimensions(), (40, 32));
        assert_eq!(ours.image.as_raw(), theirs.image.as_raw());
        assert_eq!(ours.losses, theirs.losses);
        assert_eq!(ours.iterations, theirs.iterations);
    }

    #[test]
    fn a_second_task_with_the_same_style_reuses_its_targets() {
        let engine = tiny_engine();
        let first = engine
            .run(&task(pattern(40, 32, 1), &["s1"]), &mut ())
            .unwrap();
        let second = engine
            .run(&task(pattern(40, 32, 2), &["s1"]), &mut ())
            .unwrap();
        assert_ne!(first.image.as_raw(), second.image.as_raw());
        {
            let cache = engine.lock_targets();
            assert_eq!((cache.hits, cache.misses), (1, 1));
        }
        // Another style blob is another entry.
        engine
            .run(&task(pattern(40, 32, 1), &["s2"]), &mut ())
            .unwrap();
        let cache = engine.lock_targets();
        assert_eq!((cache.hits, cache.misses, cache.entries.len()), (1, 2, 2));
    }

    #[test]
    fn target_key_covers_what_targets_depend_on() {
        let base = task(pattern(40, 32, 1), &["s1"]);
        let key = TargetKey::of(&base);
        // The content and the iterations do not matter.
        let mut same = task(pattern(20, 20, 5), &["s1"]);
        same.settings.num_iterations = 99;
        same.settings.content_weight = 7.0;
        assert_eq!(TargetKey::of(&same), key);
        // Equal blend weights are the same as none.
        same.settings.style_blend_weights = Some(vec![3.0]);
        assert_eq!(TargetKey::of(&same), key);

        let changes: [fn(&mut TaskInput); 5] = [
            |t| t.style_ids = vec!["s2".into()],
            |t| t.settings.image_size = 41,
            |t| t.settings.style_scale = 0.5,
            |t| t.settings.pooling = Pooling::Avg,
            |t| t.settings.style_layers.truncate(1),
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut t = base.clone();
            change(&mut t);
            assert_ne!(TargetKey::of(&t), key, "change {i}");
        }
        // Without blob ids the pixels decide.
        let mut a = base.clone();
        a.style_ids.clear();
        let mut b = a.clone();
        assert_eq!(TargetKey::of(&a), TargetKey::of(&b));
        b.inputs.styles[0].put_pixel(0, 0, Rgb([1, 2, 3]));
        assert_ne!(TargetKey::of(&a), TargetKey::of(&b));
    }

    #[test]
    fn target_cache_evicts_the_least_recently_used() {
        let engine = tiny_engine();
        let t = task(pattern(40, 32, 1), &["s"]);
        let targets = engine.targets(&t).unwrap();
        let mut cache = TargetCache::default();
        let key = |i: u32| {
            let mut t = t.clone();
            t.settings.image_size = 30 + i;
            TargetKey::of(&t)
        };
        for i in 0..TARGET_CACHE_ENTRIES as u32 {
            cache.insert(key(i), targets.clone());
        }
        assert!(cache.get(&key(0)).is_some()); // 0 is now the most recent
        cache.insert(key(99), targets.clone());
        assert_eq!(cache.entries.len(), TARGET_CACHE_ENTRIES);
        assert!(cache.get(&key(0)).is_some());
        assert!(cache.get(&key(1)).is_none());
    }
}
