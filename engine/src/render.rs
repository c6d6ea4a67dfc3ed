//! One style-transfer render from images and settings to an image: resizing, targets,
//! initialisation, optimisation with progress, and the final losses of the written pixels.
//!
//! This is the unit of work a farm task runs; the CLI's local render calls it too.

use std::time::Instant;

use candle_core::Tensor;
use image::RgbImage;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::color::keep_original_colors;
use crate::error::{EngineError, Result};
use crate::image_io::{image_to_tensor, resize_exact, resize_to_max_side, tensor_to_image};
use crate::layers::{LayerName, DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS};
use crate::objective::{Losses, Objective, StyleTargets, TermWeights};
use crate::optim::{minimize, Bounds, Optimizer, Stop};
use crate::vgg::{Pooling, Vgg};

/// Largest `image-size` accepted for one task (bigger prints are split into tiles).
pub const MAX_IMAGE_SIZE: u32 = 8192;
/// Largest iteration count accepted.
pub const MAX_ITERATIONS: u32 = 100_000;

/// Where the optimisation starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// Seeded noise: pixels drawn from N(127.5, 30^2), clamped (the seed's "random pixel
    /// values").
    #[default]
    Random,
    /// The content image.
    Content,
    /// An image given with the inputs ([`RenderInputs::init_image`]).
    Image,
}

/// Everything that shapes a render besides the images (neural-style's options).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RenderSettings {
    /// Longer side of the output, in pixels.
    pub image_size: u32,
    /// Objective evaluations (one forward + backward each).
    pub num_iterations: u32,
    /// L-BFGS or Adam.
    pub optimizer: Optimizer,
    /// alpha.
    pub content_weight: f32,
    /// beta.
    pub style_weight: f32,
    /// Weight of the total-variation term.
    pub tv_weight: f32,
    /// Content layers.
    pub content_layers: Vec<LayerName>,
    /// Style layers (equal lambdas, 1/L each).
    pub style_layers: Vec<LayerName>,
    /// Blend weights of the style images (normalised to sum 1); `None` = equal.
    pub style_blend_weights: Option<Vec<f32>>,
    /// Style image's longer side = `image_size * style_scale`.
    pub style_scale: f32,
    /// Start point.
    pub init: Init,
    /// Seed of the random init.
    pub seed: u64,
    /// Keep the content's colours (luminance-only transfer).
    pub original_colors: bool,
    /// Max or average pooling.
    pub pooling: Pooling,
    /// Snapshot every N iterations (0 = never).
    pub save_iter: u32,
}

impl Default for RenderSettings {
    fn default() -> Self {
        Self {
            image_size: 512,
            num_iterations: 500,
            optimizer: Optimizer::default(),
            content_weight: 1.0,
            style_weight: 100.0,
            tv_weight: 0.0,
            content_layers: parse_default(DEFAULT_CONTENT_LAYERS),
            style_layers: parse_default(DEFAULT_STYLE_LAYERS),
            style_blend_weights: None,
            style_scale: 1.0,
            init: Init::Random,
            seed: 0,
            original_colors: false,
            pooling: Pooling::Max,
            save_iter: 0,
        }
    }
}

fn parse_default(s: &str) -> Vec<LayerName> {
    // The defaults are literals known to parse.
    LayerName::parse_list(s).unwrap_or_default()
}

fn invalid(option: &'static str, reason: impl Into<String>) -> EngineError {
    EngineError::InvalidOption {
        option,
        reason: reason.into(),
    }
}

impl RenderSettings {
    /// Checks every value against its range, naming the first bad option.
    pub fn validate(&self, num_styles: usize) -> Result<()> {
        if !(1..=MAX_IMAGE_SIZE).contains(&self.image_size) {
            return Err(invalid(
                "image-size",
                format!("{} is outside 1..={MAX_IMAGE_SIZE}", self.image_size),
            ));
        }
        if self.num_iterations > MAX_ITERATIONS {
            return Err(invalid(
                "num-iterations",
                format!("{} is over the limit of {MAX_ITERATIONS}", self.num_iterations),
            ));
        }
        for (option, w) in [
            ("content-weight", self.content_weight),
            ("style-weight", self.style_weight),
            ("tv-weight", self.tv_weight),
        ] {
            if !w.is_finite() || w < 0.0 {
                return Err(invalid(option, format!("{w} is not a finite, non-negative number")));
            }
        }
        if !(self.style_scale.is_finite() && self.style_scale > 0.0 && self.style_scale <= 8.0) {
            return Err(invalid(
                "style-scale",
                format!("{} is outside (0, 8]", self.style_scale),
            ));
        }
        if self.content_layers.is_empty() {
            return Err(invalid("content-layers", "at least one layer is needed"));
        }
        if self.style_layers.is_empty() {
            return Err(invalid("style-layers", "at least one layer is needed"));
        }
        if let Some(w) = &self.style_blend_weights {
            if w.len() != num_styles {
                return Err(invalid(
                    "style-blend-weights",
                    format!("{} weights for {num_styles} style images", w.len()),
                ));
            }
            if w.iter().any(|v| !v.is_finite() || *v < 0.0) || !w.iter().any(|v| *v > 0.0) {
                return Err(invalid(
                    "style-blend-weights",
                    "weights must be finite, not negative, and not all zero",
                ));
            }
        }
        if let Optimizer::Adam { learning_rate } = self.optimizer {
            if !(learning_rate.is_finite() && learning_rate > 0.0) {
                return Err(invalid(
                    "learning-rate",
                    format!("{learning_rate} is not a positive number"),
                ));
            }
        }
        Ok(())
    }
}

/// The images of a render, already decoded.
#[derive(Debug, Clone)]
pub struct RenderInputs {
    /// Content image (any size; resized to `image_size`).
    pub content: RgbImage,
    /// One or more style images.
    pub styles: Vec<RgbImage>,
    /// Start image for [`Init::Image`] (resized to the output size).
    pub init_image: Option<RgbImage>,
}

/// What a render reports while it runs; returning an error (e.g. [`EngineError::Cancelled`])
/// stops it.
pub trait Observer {
    /// After each evaluation `iteration` (1-based) of `total`, with the losses at the point
    /// evaluated.
    fn iteration(&mut self, _iteration: u32, _total: u32, _losses: &Losses) -> Result<()> {
        Ok(())
    }

    /// Every `save_iter` iterations, the current image.
    fn snapshot(&mut self, _iteration: u32, _image: &RgbImage) -> Result<()> {
        Ok(())
    }
}

/// An observer that watches nothing.
impl Observer for () {}

/// The result of a render.
#[derive(Debug, Clone)]
pub struct RenderOutput {
    /// The output image.
    pub image: RgbImage,
    /// The objective evaluated on the output's 8-bit pixels (what gets judged).
    pub losses: Losses,
    /// Evaluations made.
    pub iterations: u32,
    /// Why the optimiser stopped.
    pub stop: Stop,
    /// Wall time of the optimisation, in seconds (targets and final evaluation excluded).
    pub optimize_seconds: f64,
}

/// Style image size for a given output size and scale: longer side = `image_size * scale`.
pub fn style_side(image_size: u32, style_scale: f32) -> u32 {
    ((image_size as f32 * style_scale).round() as u32).max(1)
}

/// Renders `inputs` with `settings` on `vgg` (whose pooling is overridden by the settings).
pub fn render(
    vgg: &Vgg,
    inputs: &RenderInputs,
    settings: &RenderSettings,
    observer: &mut dyn Observer,
) -> Result<RenderOutput> {
    settings.validate(inputs.styles.len())?;
    let vgg = vgg.with_pooling(settings.pooling);
    let pre = vgg.preprocess();
    let device = vgg.device();

    let content_img = resize_to_max_side(&inputs.content, settings.image_size);
    let content = image_to_tensor(&content_img, pre, device)?;
    let style_size = style_side(settings.image_size, settings.style_scale);
    let blend = settings
        .style_blend_weights
        .clone()
        .unwrap_or_else(|| vec![1.0; inputs.styles.len()]);
    let styles = inputs
        .styles
        .iter()
        .zip(&blend)
        .map(|(s, &w)| {
            let img = resize_to_max_side(s, style_size);
            Ok((image_to_tensor(&img, pre, device)?, w))
        })
        .collect::<Result<Vec<(Tensor, f32)>>>()?;
    let targets = StyleTargets::compute(&vgg, &styles, &settings.style_layers)
        .map_err(|e| with_option(e, "style-scale"))?;
    let weights = TermWeights {
        content: settings.content_weight,
        style: settings.style_weight,
        tv: settings.tv_weight,
    };
    let objective = Objective::new(&vgg, &content, &settings.content_layers, &targets, weights)?;
    let (h, w) = objective.dims();

    let mut x: Vec<f32> = match settings.init {
        Init::Content => content.flatten_all()?.to_vec1()?,
        Init::Random => {
            let noise = random_image(w as u32, h as u32, settings.seed);
            image_to_tensor(&noise, pre, device)?.flatten_all()?.to_vec1()?
        }
        Init::Image => {
            let img = inputs.init_image.as_ref().ok_or_else(|| {
                invalid("init", "an init image was asked for but none was given")
            })?;
            let img = resize_exact(img, w as u32, h as u32);
            image_to_tensor(&img, pre, device)?.flatten_all()?.to_vec1()?
        }
    };
    let channels = [0, 1, 2].map(|c| pre.bounds(c));
    let bounds = Bounds {
        channels,
        plane: h * w,
    };
    let scale = [0, 1, 2].map(|c| pre.affine(c).0);

    let total = settings.num_iterations;
    let mut iteration = 0u32;
    let started = Instant::now();
    let stop = {
        let mut eval = |x: &[f32], grad: &mut [f32]| -> Result<f64> {
            let losses = objective.evaluate(x, grad)?;
            iteration += 1;
            observer.iteration(iteration, total, &losses)?;
            if settings.save_iter > 0 && iteration % settings.save_iter == 0 {
                let t = Tensor::from_slice(x, (1, 3, h, w), device)?;
                observer.snapshot(iteration, &finish(&t, pre, settings, &content_img)?)?;
            }
            Ok(losses.total)
        };
        minimize(settings.optimizer, &mut x, &bounds, scale, total as usize, &mut eval)?
    };
    let optimize_seconds = started.elapsed().as_secs_f64();

    let image = finish(&Tensor::from_vec(x, (1, 3, h, w), device)?, pre, settings, &content_img)?;
    let written = image_to_tensor(&image, pre, device)?.flatten_all()?.to_vec1::<f32>()?;
    let losses = objective.losses(&written)?;
    Ok(RenderOutput {
        image,
        losses,
        iterations: iteration,
        stop,
        optimize_seconds,
    })
}

/// Network-input tensor to the image that gets written.
fn finish(
    x: &Tensor,
    pre: crate::Preprocess,
    settings: &RenderSettings,
    content: &RgbImage,
) -> Result<RgbImage> {
    let img = tensor_to_image(x, pre)?;
    Ok(if settings.original_colors {
        keep_original_colors(&img, content)
    } else {
        img
    })
}

/// A too-small style image shows up as a layer-size error; name the option that causes it.
fn with_option(e: EngineError, option: &'static str) -> EngineError {
    match e {
        EngineError::InvalidOption {
            option: "image-size",
            reason,
        } => EngineError::InvalidOption {
            option,
            reason: format!("the style image is too small: {reason}"),
        },
        e => e,
    }
}

/// Seeded noise image: each channel value from N(127.5, 30^2), clamped to 0..=255.
pub fn random_image(width: u32, height: u32, seed: u64) -> RgbImage {
    use rand::Rng;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    RgbImage::from_fn(width, height, |_, _| {
        image::Rgb(std::array::from_fn(|_| {
            // Box-Muller: two uniforms to one standard normal.
            let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
            let u2: f64 = rng.random();
            let n = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            (127.5 + 30.0 * n).round().clamp(0.0, 255.0) as u8
        }))
    })
}
