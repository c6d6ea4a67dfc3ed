//! What a render is asked to do (neural-style's options) and what it reports, with the checks
//! that every entry point (CLI, coordinator, worker) runs before any work starts.
//!
//! Plain data with no tensor code, so the coordinator can validate jobs without candle.

use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};
use crate::layers::{LayerName, Pooling, DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS};
use crate::optim::Optimizer;

/// Largest `image-size` accepted for one task (bigger prints are split into tiles).
pub const MAX_IMAGE_SIZE: u32 = 8192;
/// Largest iteration count accepted.
pub const MAX_ITERATIONS: u32 = 100_000;
/// Largest L-BFGS history accepted (neural-style uses 100): the history holds two image-sized
/// vectors per pair, so it is part of a task's memory.
pub const MAX_LBFGS_HISTORY: usize = 1000;
/// Smallest stage of a coarse-to-fine render, in pixels: VGG's fifth block (relu5_x) sits at
/// a sixteenth of the input's size.
pub const MIN_STAGE_SIZE: u32 = 16;

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
    /// An image given with the inputs (`stylefarm_engine::render::RenderInputs::init_image`).
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

fn invalid(option: &'static str, reason: impl Into<String>) -> CoreError {
    CoreError::InvalidOption {
        option,
        reason: reason.into(),
    }
}

impl RenderSettings {
    /// Input pixels per feature position of the deepest content or style layer: tiles in
    /// lock step start at multiples of it, so that their feature positions line up with the
    /// whole image's.
    pub fn deepest_stride(&self) -> u32 {
        self.content_layers
            .iter()
            .chain(&self.style_layers)
            .map(|l| l.stride())
            .max()
            .unwrap_or(1)
    }

    /// Checks every value against its range, naming the first bad option.
    pub fn validate(&self, num_styles: usize) -> Result<()> {
        if !(MIN_STAGE_SIZE..=MAX_IMAGE_SIZE).contains(&self.image_size) {
            return Err(invalid(
                "image-size",
                format!(
                    "{} is outside {MIN_STAGE_SIZE}..={MAX_IMAGE_SIZE} (VGG's deepest layers see a \
                     sixteenth of it)",
                    self.image_size
                ),
            ));
        }
        if self.num_iterations > MAX_ITERATIONS {
            return Err(invalid(
                "num-iterations",
                format!(
                    "{} is over the limit of {MAX_ITERATIONS}",
                    self.num_iterations
                ),
            ));
        }
        for (option, w) in [
            ("content-weight", self.content_weight),
            ("style-weight", self.style_weight),
            ("tv-weight", self.tv_weight),
        ] {
            if !w.is_finite() || w < 0.0 {
                return Err(invalid(
                    option,
                    format!("{w} is not a finite, non-negative number"),
                ));
            }
        }
        if !(self.style_scale.is_finite() && self.style_scale > 0.0 && self.style_scale <= 8.0) {
            return Err(invalid(
                "style-scale",
                format!("{} is outside (0, 8]", self.style_scale),
            ));
        }
        let style = style_side(self.image_size, self.style_scale);
        if style < MIN_STAGE_SIZE {
            return Err(invalid(
                "style-scale",
                format!(
                    "{} makes the style images {style} px at --image-size {}, smaller than \
                     {MIN_STAGE_SIZE} px",
                    self.style_scale, self.image_size
                ),
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
        match self.optimizer {
            Optimizer::Adam { learning_rate } => {
                if !(learning_rate.is_finite() && learning_rate > 0.0) {
                    return Err(invalid(
                        "learning-rate",
                        format!("{learning_rate} is not a positive number"),
                    ));
                }
            }
            Optimizer::Lbfgs { history, .. } => {
                if !(1..=MAX_LBFGS_HISTORY).contains(&history) {
                    return Err(invalid(
                        "lbfgs-history",
                        format!("{history} is outside 1..={MAX_LBFGS_HISTORY}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Style image size for a given output size and scale: longer side = `image_size * scale`.
pub fn style_side(image_size: u32, style_scale: f32) -> u32 {
    ((image_size as f32 * style_scale).round() as u32).max(1)
}

/// The weights of the objective's three terms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TermWeights {
    /// alpha.
    pub content: f32,
    /// beta.
    pub style: f32,
    /// Total variation weight.
    pub tv: f32,
}

impl TermWeights {
    /// Refuses a weight that is negative or not finite, naming its option.
    pub fn validate(&self) -> Result<()> {
        for (option, w) in [
            ("content-weight", self.content),
            ("style-weight", self.style),
            ("tv-weight", self.tv),
        ] {
            if !w.is_finite() || w < 0.0 {
                return Err(CoreError::InvalidOption {
                    option,
                    reason: format!("{w} is not a finite, non-negative number"),
                });
            }
        }
        Ok(())
    }
}

/// The objective's value, term by term (each term unweighted; `total` is weighted).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Losses {
    /// `J_content`.
    pub content: f64,
    /// `J_style` (already including the lambdas).
    pub style: f64,
    /// `J_style^[l]` per style layer (before its lambda), in the order of the style layers.
    pub style_layers: Vec<f64>,
    /// `TV`.
    pub tv: f64,
    /// `alpha J_content + beta J_style + tv_weight TV`.
    pub total: f64,
}
