//! Tiles in lock step: an image larger than one worker's memory optimised as one image, each
//! evaluation of the objective computed tile by tile, the tiles spread over workers.
//!
//! The style term couples every pixel through the whole image's Gram matrices: `G_l` is the
//! sum over the tiles of `F_t F_t^T`, each tile's features counted over the positions it owns.
//! One evaluation is two steps over the tiles:
//! 1. each tile runs its context (the tile and a margin) forward and returns `F_t F_t^T` over
//!    its own positions, with its content term; the driver adds them up into `G_l`;
//! 2. the driver sends back `R_l = 4 lambda_l c_l beta (G_l - n_l A_l)` (the style term's
//!    gradient with respect to `F`, up to the factor `F`), each tile back-propagates `R_l F_t`
//!    and its content gradient to its context's pixels, and the driver adds the contexts'
//!    gradients up into the whole image's.
//!
//! That is the exact gradient of the objective whose features at a tile's positions come from
//! the tile's context: with a margin as wide as the network's receptive field it is the
//! untiled objective, with a narrower one the features near a tile's edge see zero padding
//! where the image goes on. The optimiser ([`crate::optim`]) runs on the whole image in the
//! driver, so the tiles agree at every step: there is nothing to blend and no seam, and the
//! style is spread over the image as the untiled render spreads it. What it costs is a round
//! trip to the tiles per step, and the whole image (with the optimiser's history) in the
//! driver's memory.
//!
//! Tensor-free, so the coordinator drives it without candle; the per-tile work is
//! `stylefarm_engine::lockstep`'s.

use crate::error::{CoreError, Result};
use crate::layers::LayerName;
use crate::optim::{minimize_from, Bounds, Optimizer, Resume, Snapshot, Stop};
use crate::preprocess::Preprocess;
use crate::settings::{Losses, TermWeights};
use crate::tiles::Rect;
use crate::variation::{total_variation, tv_gradient};

/// A tile of a lock-step render: the pixels it owns and the pixels its passes see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LockstepTile {
    /// The pixels whose features the tile counts.
    pub core: Rect,
    /// The core and its margin, clipped to the image.
    pub context: Rect,
}

/// The least margin of context a tile in lock step is seen with, in pixels.
pub const MIN_MARGIN: u32 = 16;

/// The margin of context around each tile in lock step for a job's `tile_overlap`: its
/// features near the edge see that much of their neighbourhood (the rest is zero padding).
/// [`lockstep_tiles`] rounds it up to the network's stride.
pub fn margin(tile_overlap: u32) -> u32 {
    tile_overlap.max(MIN_MARGIN)
}

/// The tiles of a `width` x `height` image: cores of at most about `tile_size` pixels a side
/// spread evenly, starting at multiples of `align` (the deepest layer's stride, so that a
/// context's feature positions line up with the whole image's), each seen with a margin of
/// `margin` pixels (rounded up to `align`). Row by row.
///
/// # Errors
/// [`CoreError::InvalidOption`] naming `tile-size` for a tile smaller than `align`, or
/// `image-size` for an empty image.
pub fn lockstep_tiles(
    width: u32,
    height: u32,
    tile_size: u32,
    margin: u32,
    align: u32,
) -> Result<Vec<LockstepTile>> {
    let align = align.max(1);
    if tile_size < align {
        return Err(CoreError::InvalidOption {
            option: "tile-size",
            reason: format!("{tile_size} px is smaller than the network's stride of {align} px"),
        });
    }
    if width == 0 || height == 0 {
        return Err(CoreError::InvalidOption {
            option: "image-size",
            reason: format!("a {width}x{height} image has no pixels to tile"),
        });
    }
    let core = tile_size / align * align;
    let margin = margin.div_ceil(align) * align;
    let cuts = |len: u32| -> Vec<(u32, u32)> {
        let n = len.div_ceil(core);
        let at = |i: u32| {
            if i == n {
                len
            } else {
                (u64::from(i) * u64::from(len) / u64::from(n)) as u32 / align * align
            }
        };
        (0..n)
            .map(|i| (at(i), at(i + 1)))
            .filter(|(a, b)| b > a)
            .collect()
    };
    let (columns, rows) = (cuts(width), cuts(height));
    Ok(rows
        .iter()
        .flat_map(|&(y0, y1)| {
            columns.iter().map(move |&(x0, x1)| {
                let core = Rect {
                    x: x0,
                    y: y0,
                    width: x1 - x0,
                    height: y1 - y0,
                };
                LockstepTile {
                    core,
                    context: core.grown(margin, width, height),
                }
            })
        })
        .collect())
}

/// The columns and rows where one core ends and the next begins (`(xs, ys)`, sorted).
pub fn interior_edges(tiles: &[LockstepTile]) -> (Vec<u32>, Vec<u32>) {
    let edges = |of: &dyn Fn(&Rect) -> u32| {
        let mut e: Vec<u32> = tiles
            .iter()
            .map(|t| of(&t.core))
            .filter(|&p| p > 0)
            .collect();
        e.sort_unstable();
        e.dedup();
        e
    };
    (edges(&|r| r.x), edges(&|r| r.y))
}

/// Along one axis, the feature positions of a layer of `stride` that a core `[start, end)`
/// owns, counted from its context's start `from`, when the context's layer has `len`
/// positions and the image is `full` pixels long: the last core on an axis takes what the
/// floor of the pools leaves.
pub fn owned_span(
    start: u32,
    end: u32,
    from: u32,
    full: u32,
    stride: u32,
    len: usize,
) -> (usize, usize) {
    let first = ((start - from) / stride) as usize;
    let last = if end == full {
        len
    } else {
        ((end - from) / stride) as usize
    };
    (first.min(len), last.min(len).max(first.min(len)))
}

/// What step one of an evaluation returns for some tiles.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GramSums {
    /// Per style layer, `F F^T` summed over the positions counted, (C, C) row-major.
    pub grams: Vec<Vec<f32>>,
    /// Per style layer, the positions counted.
    pub counts: Vec<u64>,
    /// `1/2 sum (F - P)^2` over the content layers' positions counted.
    pub content: f64,
}

impl GramSums {
    /// Adds another set of tiles' sums (an empty `self` takes `other` as it is).
    ///
    /// # Errors
    /// When the two have different layers or matrix sizes.
    pub fn add(&mut self, other: &GramSums) -> Result<()> {
        if self.grams.is_empty() && self.counts.is_empty() {
            *self = other.clone();
            return Ok(());
        }
        let same = self.grams.len() == other.grams.len()
            && self.counts.len() == other.counts.len()
            && self
                .grams
                .iter()
                .zip(&other.grams)
                .all(|(a, b)| a.len() == b.len());
        if !same {
            return Err(mismatch(
                "tiles returned Gram matrices of different layers or sizes",
            ));
        }
        for (a, b) in self.grams.iter_mut().zip(&other.grams) {
            for (a, b) in a.iter_mut().zip(b) {
                *a += b;
            }
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.content += other.content;
        Ok(())
    }
}

/// Where the tiles of one image are evaluated: in this process
/// (`stylefarm_engine::lockstep::LocalTiles`) or on the farm's workers (the coordinator's
/// shards).
pub trait TileBackend {
    /// What an evaluation can fail with (the engine's error carries candle's); the driver's
    /// own refusals convert into it.
    type Error: From<CoreError>;

    /// Step one: the Gram sums and the content term of `x` (the network-input image, (3, H, W)
    /// flattened) over every tile.
    fn grams(&mut self, x: &[f32]) -> Result<GramSums, Self::Error>;

    /// Step two, at the `x` of the last [`Self::grams`]: adds every tile's gradient, given the
    /// style residuals `R_l` ((C, C) each, in the style layers' order), into `grad`.
    fn gradient(&mut self, residuals: &[Vec<f32>], grad: &mut [f32]) -> Result<(), Self::Error>;
}

struct StyleLayer {
    channels: usize,
    /// `A_l`, per feature position.
    target: Vec<f32>,
}

/// The seed's objective for one image evaluated through its tiles.
pub struct LockstepObjective {
    layers: Vec<StyleLayer>,
    weights: TermWeights,
    width: usize,
    height: usize,
}

impl LockstepObjective {
    /// The objective of a `width` x `height` image against the style targets per position
    /// `style` (`(layer, (C, C) row-major)`, in the style layers' order).
    ///
    /// # Errors
    /// When a target is not square, or a weight is negative or not finite.
    pub fn new(
        style: Vec<(LayerName, Vec<f32>)>,
        weights: TermWeights,
        width: usize,
        height: usize,
    ) -> Result<Self> {
        weights.validate()?;
        let layers = style
            .into_iter()
            .map(|(name, target)| {
                let channels = (target.len() as f64).sqrt().round() as usize;
                if channels * channels != target.len() || channels == 0 {
                    return Err(mismatch(format!(
                        "the style target of {name} has {} values, not a square matrix",
                        target.len()
                    )));
                }
                Ok(StyleLayer { channels, target })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            weights,
            width,
            height,
        })
    }

    /// `(width, height)` of the image.
    pub fn dims(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    /// The objective at `x`, forward only (step one).
    pub fn losses<B: TileBackend + ?Sized>(
        &self,
        backend: &mut B,
        x: &[f32],
    ) -> Result<Losses, B::Error> {
        let sums = backend.grams(x)?;
        Ok(self.combine(&sums, x, None)?)
    }

    /// The objective at `x` and its gradient, written into `grad`.
    pub fn evaluate<B: TileBackend + ?Sized>(
        &self,
        backend: &mut B,
        x: &[f32],
        grad: &mut [f32],
    ) -> Result<Losses, B::Error> {
        let sums = backend.grams(x)?;
        let mut residuals = Vec::with_capacity(self.layers.len());
        let losses = self.combine(&sums, x, Some(&mut residuals))?;
        grad.fill(0.0);
        backend.gradient(&residuals, grad)?;
        if self.weights.tv > 0.0 {
            tv_gradient(x, self.height, self.width, self.weights.tv, grad);
        }
        Ok(losses)
    }

    /// The terms from the tiles' sums; with `residuals`, also each style layer's `R_l`.
    fn combine(
        &self,
        sums: &GramSums,
        x: &[f32],
        mut residuals: Option<&mut Vec<Vec<f32>>>,
    ) -> Result<Losses> {
        if sums.grams.len() != self.layers.len() || sums.counts.len() != self.layers.len() {
            return Err(mismatch(format!(
                "the tiles returned {} Gram matrices for {} style layers",
                sums.grams.len(),
                self.layers.len()
            )));
        }
        let TermWeights {
            content: alpha,
            style: beta,
            tv: tv_weight,
        } = self.weights;
        let lambda = 1.0 / self.layers.len().max(1) as f64;
        let mut style_layers = Vec::with_capacity(self.layers.len());
        for ((layer, g), &n) in self.layers.iter().zip(&sums.grams).zip(&sums.counts) {
            if g.len() != layer.target.len() {
                return Err(mismatch(format!(
                    "a tile's Gram matrix has {} values where the style target has {}",
                    g.len(),
                    layer.target.len()
                )));
            }
            let n = n as f64;
            let coeff = 1.0 / (2.0 * n * layer.channels as f64).powi(2);
            let scale = 4.0 * lambda * coeff * f64::from(beta);
            let mut sum_sq = 0.0f64;
            let mut r = residuals.as_ref().map(|_| Vec::with_capacity(g.len()));
            for (&g, &a) in g.iter().zip(&layer.target) {
                let d = f64::from(g) - n * f64::from(a);
                sum_sq += d * d;
                if let Some(r) = r.as_mut() {
                    r.push((scale * d) as f32);
                }
            }
            style_layers.push(if n > 0.0 { coeff * sum_sq } else { 0.0 });
            if let (Some(all), Some(r)) = (residuals.as_deref_mut(), r) {
                all.push(r);
            }
        }
        let style = lambda * style_layers.iter().sum::<f64>();
        let tv = total_variation(x, self.height, self.width);
        Ok(Losses {
            content: sums.content,
            style,
            style_layers,
            tv,
            total: f64::from(alpha) * sums.content
                + f64::from(beta) * style
                + f64::from(tv_weight) * tv,
        })
    }
}

/// The most memory a driver's optimiser may hold: past it, L-BFGS keeps fewer curvature
/// pairs than asked for.
pub const DRIVER_MEMORY_BUDGET: u64 = 8 << 30;

/// What a driver runs for an image of `pixels` pixels and `iterations` evaluations:
/// `optimizer`, L-BFGS's history cut (to no fewer than 5 pairs) so that the driver's state
/// fits [`DRIVER_MEMORY_BUDGET`], and the bytes that state takes (the image, the gradient and
/// the optimiser's vectors, float32).
pub fn driver_optimizer(optimizer: Optimizer, pixels: u64, iterations: u32) -> (Optimizer, u64) {
    let vector = 12 * pixels.max(1);
    match optimizer {
        Optimizer::Lbfgs {
            history,
            strong_wolfe,
        } => {
            let fits = (DRIVER_MEMORY_BUDGET / vector).saturating_sub(6) / 2;
            let history = history.min(fits.max(5) as usize);
            let pairs = (history as u64).min(u64::from(iterations));
            let optimizer = Optimizer::Lbfgs {
                history,
                strong_wolfe,
            };
            (optimizer, (2 * pairs + 6) * vector)
        }
        Optimizer::Adam { .. } => (optimizer, 5 * vector),
    }
}

/// How a lock-step optimisation went.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Optimized {
    /// Evaluations made, those before a resumed checkpoint included.
    pub iterations: u32,
    /// Why the optimiser stopped.
    pub stop: Stop,
}

/// Minimises `objective` from `x` (updated in place) with `optimizer` and at most `iterations`
/// evaluations, each through `backend`; `progress` hears of every evaluation (1-based, the
/// total, the losses at the point evaluated) and stops the run by returning an error.
///
/// `resume` goes on from a checkpoint (`x` its image; the evaluations it made count against
/// `iterations`, and `progress` counts on from them), and `between` is shown the optimiser's
/// state between every two steps, to save one; an error from either stops the run.
#[allow(clippy::too_many_arguments)] // the run, where it starts, and whom it tells
pub fn optimize<B, P>(
    objective: &LockstepObjective,
    backend: &mut B,
    x: &mut [f32],
    optimizer: Optimizer,
    iterations: u32,
    pre: Preprocess,
    resume: Resume,
    progress: &mut P,
    between: &mut dyn FnMut(Snapshot<'_>) -> Result<(), B::Error>,
) -> Result<Optimized, B::Error>
where
    B: TileBackend + ?Sized,
    P: FnMut(u32, u32, &Losses) -> Result<(), B::Error> + ?Sized,
{
    let (w, h) = objective.dims();
    let bounds = Bounds {
        channels: [0, 1, 2].map(|c| pre.bounds(c)),
        plane: w * h,
    };
    let scale = [0, 1, 2].map(|c| pre.affine(c).0);
    let mut done = u32::try_from(resume.evals).unwrap_or(u32::MAX);
    let mut eval = |x: &[f32], grad: &mut [f32]| -> Result<f64, B::Error> {
        let losses = objective.evaluate(backend, x, grad)?;
        done += 1;
        progress(done, iterations, &losses)?;
        Ok(losses.total)
    };
    let stop = minimize_from(
        optimizer,
        x,
        &bounds,
        scale,
        iterations as usize,
        &mut eval,
        resume,
        between,
    )?;
    Ok(Optimized {
        iterations: done,
        stop,
    })
}

/// The values of `r` in a (3, H, W) image `x` of `width` columns, (3, h, w) flattened.
pub fn crop(x: &[f32], width: usize, height: usize, r: Rect) -> Vec<f32> {
    let (x0, y0, w, h) = (
        r.x as usize,
        r.y as usize,
        r.width as usize,
        r.height as usize,
    );
    let mut out = Vec::with_capacity(3 * w * h);
    for plane in x.chunks_exact(width * height) {
        for row in plane.chunks_exact(width).skip(y0).take(h) {
            out.extend_from_slice(&row[x0..x0 + w]);
        }
    }
    out
}

/// Adds `values` ((3, h, w) of `r`) into the (3, H, W) image `into` of `width` columns.
pub fn add_crop(into: &mut [f32], width: usize, height: usize, r: Rect, values: &[f32]) {
    let (x0, y0, w, h) = (
        r.x as usize,
        r.y as usize,
        r.width as usize,
        r.height as usize,
    );
    for (plane, src) in into
        .chunks_exact_mut(width * height)
        .zip(values.chunks_exact((w * h).max(1)))
    {
        for (row, src) in plane
            .chunks_exact_mut(width)
            .skip(y0)
            .take(h)
            .zip(src.chunks_exact(w.max(1)))
        {
            for (d, s) in row[x0..x0 + w].iter_mut().zip(src) {
                *d += s;
            }
        }
    }
}

/// The style targets per position `A` of an image statistics blob (`stylefarm_engine::statistics`), for
/// `layers` in order: `(layer, (C, C) row-major)`.
///
/// # Errors
/// [`CoreError::InvalidOption`] naming `tiles` when the blob is not one, or lacks a layer.
pub fn style_targets_of_statistics(
    bytes: &[u8],
    layers: &[LayerName],
) -> Result<Vec<(LayerName, Vec<f32>)>> {
    let bad = |reason: String| mismatch(format!("the image statistics {reason}"));
    let file = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| bad(format!("are not a safetensors file: {e}")))?;
    layers
        .iter()
        .map(|&l| {
            let name = format!("style.{l}");
            let t = file
                .tensor(&name)
                .map_err(|_| bad(format!("lack {name}")))?;
            let square = matches!(t.shape(), [a, b] if a == b);
            if t.dtype() != safetensors::Dtype::F32 || !square {
                return Err(bad(format!(
                    "hold {name} as {:?} {:?}, not a square float32 matrix",
                    t.dtype(),
                    t.shape()
                )));
            }
            let values = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Ok((l, values))
        })
        .collect()
}

fn mismatch(reason: impl Into<String>) -> CoreError {
    CoreError::InvalidOption {
        option: "tiles",
        reason: reason.into(),
    }
}
