//! One style-transfer render from images and settings to an image: resizing, targets,
//! initialisation, optimisation with progress, and the final losses of the written pixels.
//!
//! This is the unit of work a farm task runs; the CLI's local render calls it too.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use candle_core::Tensor;
use image::RgbImage;

use crate::error::{EngineError, Result};
use crate::objective::{Objective, Pieces, StyleTargets};
use crate::tensor::{image_to_tensor, tensor_to_image};
use crate::vgg::Vgg;
use stylefarm_core::color::keep_original_colors;
pub use stylefarm_core::image_io::random_image;
use stylefarm_core::image_io::{resize_exact, resize_to_max_side};
use stylefarm_core::optim::{minimize, Bounds, Stop};
use stylefarm_core::settings::{style_side, Init, Losses, RenderSettings, TermWeights};
use stylefarm_core::CoreError;

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

/// What a render reports while it runs; returning an error (e.g. [`CoreError::Cancelled`])
/// stops it.
pub trait Observer {
    /// After each evaluation `iteration` (1-based) of `total`, with the losses at the point
    /// evaluated.
    fn iteration(&mut self, _iteration: u32, _total: u32, _losses: &Losses) -> Result<()> {
        Ok(())
    }

    /// Every `save_iter` iterations, and after the iterations [`Self::wants_snapshot`] asks
    /// for, the current image.
    fn snapshot(&mut self, _iteration: u32, _image: &RgbImage) -> Result<()> {
        Ok(())
    }

    /// Whether to be sent the image after `iteration` though it is no multiple of
    /// `save_iter` (a preview due by time, not by count); asked after every iteration.
    fn wants_snapshot(&mut self, _iteration: u32) -> bool {
        false
    }

    /// A flag that, once set, stops the render with [`CoreError::Cancelled`] at the next
    /// layer of the network (well within a second), not only between iterations.
    fn cancel_flag(&self) -> Option<Arc<AtomicBool>> {
        None
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

/// The style targets of `styles` for `settings` (image size, style scale, blend weights,
/// layers, pooling). They depend on nothing else, so a batch that shares its styles computes
/// them once and passes them to [`render_with_targets`].
pub fn style_targets(
    vgg: &Vgg,
    styles: &[RgbImage],
    settings: &RenderSettings,
) -> Result<StyleTargets> {
    style_targets_in_pieces(vgg, styles, settings, Pieces::WHOLE)
}

/// [`style_targets`] with each style image taken in `pieces`, so that the targets of a print
/// far larger than one pass can hold need a piece's memory.
pub fn style_targets_in_pieces(
    vgg: &Vgg,
    styles: &[RgbImage],
    settings: &RenderSettings,
    pieces: Pieces<'_>,
) -> Result<StyleTargets> {
    settings.validate(styles.len())?;
    let vgg = vgg.with_pooling(settings.pooling);
    let style_size = style_side(settings.image_size, settings.style_scale);
    let blend = settings
        .style_blend_weights
        .clone()
        .unwrap_or_else(|| vec![1.0; styles.len()]);
    let styles = styles
        .iter()
        .zip(&blend)
        .map(|(s, &w)| {
            let img = resize_to_max_side(s, style_size);
            Ok((image_to_tensor(&img, vgg.preprocess(), vgg.device())?, w))
        })
        .collect::<Result<Vec<(Tensor, f32)>>>()?;
    StyleTargets::compute_in_pieces(&vgg, &styles, &settings.style_layers, pieces)
        .map_err(|e| with_option(e, "style-scale"))
}

/// Renders `inputs` with `settings` on `vgg` (whose pooling is overridden by the settings).
pub fn render(
    vgg: &Vgg,
    inputs: &RenderInputs,
    settings: &RenderSettings,
    observer: &mut dyn Observer,
) -> Result<RenderOutput> {
    let targets = style_targets(vgg, &inputs.styles, settings)?;
    render_with_targets(vgg, inputs, settings, &targets, observer)
}

/// [`render`] with style targets already computed by [`style_targets`] for the same settings
/// (`inputs.styles` is not used).
pub fn render_with_targets(
    vgg: &Vgg,
    inputs: &RenderInputs,
    settings: &RenderSettings,
    targets: &StyleTargets,
    observer: &mut dyn Observer,
) -> Result<RenderOutput> {
    settings.validate(inputs.styles.len().max(1))?;
    let vgg = vgg.with_pooling(settings.pooling);
    let pre = vgg.preprocess();
    let device = vgg.device();

    let content_img = resize_to_max_side(&inputs.content, settings.image_size);
    let content = image_to_tensor(&content_img, pre, device)?;
    let weights = TermWeights {
        content: settings.content_weight,
        style: settings.style_weight,
        tv: settings.tv_weight,
    };
    let mut objective = Objective::new(&vgg, &content, &settings.content_layers, targets, weights)?;
    if let Some(flag) = observer.cancel_flag() {
        objective.set_cancel(flag);
    }
    let (h, w) = objective.dims();

    let mut x: Vec<f32> = match settings.init {
        Init::Content => content.flatten_all()?.to_vec1()?,
        Init::Random => {
            let noise = random_image(w as u32, h as u32, settings.seed);
            image_to_tensor(&noise, pre, device)?
                .flatten_all()?
                .to_vec1()?
        }
        Init::Image => {
            let img = inputs
                .init_image
                .as_ref()
                .ok_or_else(|| CoreError::InvalidOption {
                    option: "init",
                    reason: "an init image was asked for but none was given".into(),
                })?;
            let img = resize_exact(img, w as u32, h as u32);
            image_to_tensor(&img, pre, device)?
                .flatten_all()?
                .to_vec1()?
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
            if (settings.save_iter > 0 && iteration.is_multiple_of(settings.save_iter))
                || observer.wants_snapshot(iteration)
            {
                let t = Tensor::from_slice(x, (1, 3, h, w), device)?;
                observer.snapshot(iteration, &finish(&t, pre, settings, &content_img)?)?;
            }
            Ok(losses.total)
        };
        minimize(
            settings.optimizer,
            &mut x,
            &bounds,
            scale,
            total as usize,
            &mut eval,
        )?
    };
    let optimize_seconds = started.elapsed().as_secs_f64();

    let image = finish(
        &Tensor::from_vec(x, (1, 3, h, w), device)?,
        pre,
        settings,
        &content_img,
    )?;
    let written = image_to_tensor(&image, pre, device)?
        .flatten_all()?
        .to_vec1::<f32>()?;
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
    pre: stylefarm_core::Preprocess,
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
        EngineError::Core(CoreError::InvalidOption {
            option: "image-size",
            reason,
        }) => CoreError::InvalidOption {
            option,
            reason: format!("the style image is too small: {reason}"),
        }
        .into(),
        e => e,
    }
}
