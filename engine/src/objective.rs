//! The seed's objective and its exact gradient with respect to the network-input image.
//!
//! `J = alpha * J_content + beta * J_style + tv_weight * TV` with
//! - `J_content = sum over content layers of 1/2 ||a_C - a_G||^2`;
//! - `J_style = sum_l lambda_l / (2 n_h n_w n_c)^2 ||G_S - G_G||_F^2`, unnormalised Gram
//!   matrices, `lambda_l = 1/L` over the L style layers, `n_*` the generated image's sizes at `l`;
//! - `TV` the sum of squared differences of vertically and horizontally neighbouring values of
//!   the network-input image.
//!
//! A style image whose layer has another `n_h n_w` than the generated image's contributes its
//! Gram matrix scaled by `(n_h n_w)_G / (n_h n_w)_S`; several style images are blended with
//! weights that sum to 1. [`StyleTargets`] stores Gram matrices per feature position (divided by
//! `n_h n_w`), so one set of targets serves every output size.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use stylefarm_core::CoreError;

use crate::error::{EngineError, Result};
use crate::vgg::Vgg;
use candle_core::{DType, Tensor};
use stylefarm_core::layers::LayerName;
use stylefarm_core::settings::{Losses, TermWeights};
pub use stylefarm_core::variation::total_variation;
use stylefarm_core::variation::tv_gradient;

/// The unnormalised Gram matrix `F F^T` of a (1, C, H, W) or (C, H, W) activation.
pub fn gram(features: &Tensor) -> Result<Tensor> {
    let (c, n) = match features.dims() {
        [1, c, h, w] | [c, h, w] => (*c, h * w),
        d => {
            return Err(EngineError::Candle(candle_core::Error::Msg(format!(
                "gram needs (1, C, H, W) features, got {d:?}"
            ))))
        }
    };
    crate::linalg::gram(&features.reshape((c, n))?)
}

/// Blended style Gram matrices per layer, each divided by its layer's `n_h n_w`.
#[derive(Debug, Clone)]
pub struct StyleTargets {
    /// `(layer, Gram / (n_h n_w))`, in the order of the style layers.
    pub layers: Vec<(LayerName, Tensor)>,
}

impl StyleTargets {
    /// Computes the targets of style images `(image, blend weight)` (network-input tensors of
    /// any sizes); the weights are normalised to sum to 1.
    pub fn compute(vgg: &Vgg, styles: &[(Tensor, f32)], layers: &[LayerName]) -> Result<Self> {
        Self::compute_in_pieces(vgg, styles, layers, Pieces::WHOLE)
    }

    /// [`Self::compute`] with each style image run in `pieces` (see [`per_position_grams`]),
    /// so that the memory needed is bounded.
    pub fn compute_in_pieces(
        vgg: &Vgg,
        styles: &[(Tensor, f32)],
        layers: &[LayerName],
        pieces: Pieces<'_>,
    ) -> Result<Self> {
        if styles.is_empty() {
            return Err(CoreError::InvalidOption {
                option: "style",
                reason: "at least one style image is needed".into(),
            }
            .into());
        }
        let total: f32 = styles.iter().map(|(_, w)| *w).sum();
        if styles.iter().any(|(_, w)| !w.is_finite() || *w < 0.0) || total.is_nan() || total <= 0.0
        {
            return Err(CoreError::InvalidOption {
                option: "style-blend-weights",
                reason: "blend weights must be finite, not negative, and not all zero".into(),
            }
            .into());
        }
        let positions = layers
            .iter()
            .map(|&l| vgg.position(l))
            .collect::<Result<Vec<_>>>()?;
        let deepest = positions
            .iter()
            .copied()
            .max()
            .ok_or(CoreError::InvalidOption {
                option: "style-layers",
                reason: "at least one style layer is needed".into(),
            })?;
        let mut sums: Vec<Option<Tensor>> = vec![None; layers.len()];
        for (image, weight) in styles {
            if *weight == 0.0 {
                continue;
            }
            let grams = per_position_grams(vgg, image, &positions, deepest, pieces)?;
            for (sum, g) in sums.iter_mut().zip(grams) {
                let g = (g * f64::from(*weight / total))?;
                *sum = Some(match sum.take() {
                    Some(s) => (s + g)?,
                    None => g,
                });
            }
        }
        let layers = layers
            .iter()
            .zip(sums)
            .map(|(&l, g)| {
                g.map(|g| (l, g)).ok_or(CoreError::InvalidOption {
                    option: "style-blend-weights",
                    reason: "no style image has a positive weight".into(),
                })
            })
            .collect::<stylefarm_core::Result<Vec<_>>>()?;
        Ok(Self { layers })
    }
}

/// How an image's Gram matrices are taken: in square pieces of at most `side` pixels a side,
/// stopping with [`CoreError::Cancelled`] at the next layer once `cancelled` says so.
#[derive(Clone, Copy)]
pub struct Pieces<'a> {
    /// The longest side of a piece, its margins not counted.
    pub side: usize,
    /// Polled before each layer of each piece.
    pub cancelled: &'a dyn Fn() -> bool,
}

impl Pieces<'_> {
    /// The whole image in one pass, never cancelled.
    pub const WHOLE: Pieces<'static> = Pieces {
        side: usize::MAX,
        cancelled: &never,
    };
}

fn never() -> bool {
    false
}

/// The Gram matrix per feature position (`F F^T / (n_h n_w)`) at each of `positions` of the
/// network-input image `image`, (1, 3, H, W). An image larger than `pieces.side` pixels on a
/// side (plus [`stylefarm_core::tiles::GRAM_MARGIN`] on each side) is run in square pieces, each with
/// that margin of context around it and its features counted only over its own pixels: the
/// memory needed is a piece's, and the result differs from one pass's only in how features
/// near a piece's edge see past its margin.
pub fn per_position_grams(
    vgg: &Vgg,
    image: &Tensor,
    positions: &[usize],
    deepest: usize,
    pieces: Pieces<'_>,
) -> Result<Vec<Tensor>> {
    grams_in_pieces(
        vgg,
        image,
        positions,
        deepest,
        pieces,
        stylefarm_core::tiles::GRAM_MARGIN,
    )
}

/// [`per_position_grams`] with the margin given.
fn grams_in_pieces(
    vgg: &Vgg,
    image: &Tensor,
    positions: &[usize],
    deepest: usize,
    pieces: Pieces<'_>,
    margin: usize,
) -> Result<Vec<Tensor>> {
    let (piece, cancelled) = (pieces.side, pieces.cancelled);
    let (_, _, h, w) = image.dims4()?;
    let keep = |p| positions.contains(&p);
    let missing = || EngineError::Candle(candle_core::Error::Msg("gram layer not kept".into()));
    // Pieces start at and margins are multiples of the deepest stride, so a piece's feature
    // positions line up with the whole image's.
    let align = vgg.min_input_side(deepest);
    let core = piece / align * align;
    let margin = margin.div_ceil(align) * align;
    let fits = |side: usize| side <= piece.saturating_add(2 * margin);
    if (fits(h) && fits(w)) || core == 0 {
        let acts = vgg.forward(image, deepest, &keep, false, cancelled)?;
        return positions
            .iter()
            .map(|&p| {
                let a = acts.get(p).ok_or_else(missing)?;
                let (_, _, fh, fw) = a.dims4()?;
                Ok((gram(a)? / (fh * fw) as f64)?)
            })
            .collect();
    }
    // `(start, end, from, to)`: a piece's own span and the span its pass sees, on one axis.
    let spans = |len: usize| -> Vec<(usize, usize, usize, usize)> {
        (0..len)
            .step_by(core)
            .map(|a| {
                let b = (a + core).min(len);
                (a, b, a.saturating_sub(margin), (b + margin).min(len))
            })
            .collect()
    };
    let mut sums: Vec<Option<Tensor>> = vec![None; positions.len()];
    let mut counts = vec![0usize; positions.len()];
    for &(y0, y1, top, bottom) in &spans(h) {
        for &(x0, x1, left, right) in &spans(w) {
            let crop = image
                .narrow(2, top, bottom - top)?
                .narrow(3, left, right - left)?
                .contiguous()?;
            let acts = vgg.forward(&crop, deepest, &keep, false, cancelled)?;
            for (i, &p) in positions.iter().enumerate() {
                let a = acts.get(p).ok_or_else(missing)?;
                let (_, c, fh, fw) = a.dims4()?;
                let s = vgg.min_input_side(p);
                // The piece's own positions at this layer; the last piece on an axis takes
                // what the floor of the pools leaves.
                let span = |a, b, from, full, len| {
                    let [a, b, from, full] = [a, b, from, full].map(|v: usize| v as u32);
                    stylefarm_core::lockstep::owned_span(a, b, from, full, s as u32, len)
                };
                let (r0, r1) = span(y0, y1, top, h, fh);
                let (c0, c1) = span(x0, x1, left, w, fw);
                if r1 <= r0 || c1 <= c0 {
                    continue;
                }
                let own = a
                    .narrow(2, r0, r1 - r0)?
                    .narrow(3, c0, c1 - c0)?
                    .contiguous()?;
                let n = (r1 - r0) * (c1 - c0);
                let g = crate::linalg::gram(&own.reshape((c, n))?)?;
                counts[i] += n;
                sums[i] = Some(match sums[i].take() {
                    Some(sum) => (sum + g)?,
                    None => g,
                });
            }
        }
    }
    sums.into_iter()
        .zip(counts)
        .map(|(g, n)| Ok((g.ok_or_else(missing)? / n.max(1) as f64)?))
        .collect()
}

struct StyleTerm {
    position: usize,
    /// The target Gram at the generated image's size.
    target: Tensor,
    /// `1 / (2 n_h n_w n_c)^2`.
    coeff: f64,
    /// `lambda_l`.
    lambda: f64,
}

/// The objective for one generated-image size, with its targets computed once.
pub struct Objective<'a> {
    vgg: &'a Vgg,
    height: usize,
    width: usize,
    deepest: usize,
    content: Vec<(usize, Tensor)>,
    style: Vec<StyleTerm>,
    weights: TermWeights,
    cancel: Option<Arc<AtomicBool>>,
}

impl<'a> Objective<'a> {
    /// Targets from a content image (a network-input tensor whose size is the generated
    /// image's) and style targets.
    pub fn new(
        vgg: &'a Vgg,
        content: &Tensor,
        content_layers: &[LayerName],
        style: &StyleTargets,
        weights: TermWeights,
    ) -> Result<Self> {
        weights.validate()?;
        let (_, _, height, width) = content.dims4()?;
        let content_pos = content_layers
            .iter()
            .map(|&l| vgg.position(l))
            .collect::<Result<Vec<_>>>()?;
        let style_pos = style
            .layers
            .iter()
            .map(|(l, _)| vgg.position(*l))
            .collect::<Result<Vec<_>>>()?;
        let deepest = content_pos.iter().chain(&style_pos).copied().max().ok_or(
            CoreError::InvalidOption {
                option: "content-layers",
                reason: "no content or style layer given".into(),
            },
        )?;
        let acts = vgg.forward(
            content,
            deepest,
            &|p| content_pos.contains(&p) || style_pos.contains(&p),
            false,
            &|| false,
        )?;
        let layer_out = |p: usize| {
            acts.get(p).cloned().ok_or_else(|| {
                EngineError::Candle(candle_core::Error::Msg("content layer not kept".into()))
            })
        };
        let content = content_pos
            .iter()
            .map(|&p| Ok((p, layer_out(p)?)))
            .collect::<Result<Vec<_>>>()?;
        let lambda = 1.0 / style.layers.len().max(1) as f64;
        let style = style
            .layers
            .iter()
            .zip(&style_pos)
            .map(|((_, per_position), &p)| {
                // Only the shape of the generated image's activation matters here.
                let (_, c, h, w) = layer_out(p)?.dims4()?;
                let n = (h * w) as f64;
                Ok(StyleTerm {
                    position: p,
                    target: (per_position * n)?,
                    coeff: 1.0 / (2.0 * n * c as f64).powi(2),
                    lambda,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            vgg,
            height,
            width,
            deepest,
            content,
            style,
            weights,
            cancel: None,
        })
    }

    /// Stops evaluations with [`CoreError::Cancelled`] at the next layer once `flag` is set.
    pub fn set_cancel(&mut self, flag: Arc<AtomicBool>) {
        self.cancel = Some(flag);
    }

    fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
    }

    /// `(height, width)` of the generated image.
    pub fn dims(&self) -> (usize, usize) {
        (self.height, self.width)
    }

    /// The term weights.
    pub fn weights(&self) -> TermWeights {
        self.weights
    }

    fn input(&self, x: &[f32]) -> Result<Tensor> {
        Ok(Tensor::from_slice(
            x,
            (1, 3, self.height, self.width),
            self.vgg.device(),
        )?)
    }

    fn keep(&self) -> impl Fn(usize) -> bool + '_ {
        move |p| {
            self.content.iter().any(|(q, _)| *q == p) || self.style.iter().any(|s| s.position == p)
        }
    }

    /// The objective at `x` (the network-input image, (1, 3, H, W) flattened), forward only.
    pub fn losses(&self, x: &[f32]) -> Result<Losses> {
        let acts = self
            .vgg
            .forward(&self.input(x)?, self.deepest, &self.keep(), false, &|| {
                self.cancelled()
            })?;
        self.terms(x, &acts, None)
    }

    /// The objective at `x` and its gradient, written into `grad` (same length as `x`).
    pub fn evaluate(&self, x: &[f32], grad: &mut [f32]) -> Result<Losses> {
        let cancelled = || self.cancelled();
        let acts = self.vgg.forward(
            &self.input(x)?,
            self.deepest,
            &self.keep(),
            true,
            &cancelled,
        )?;
        let mut layer_grads = Vec::new();
        let losses = self.terms(x, &acts, Some(&mut layer_grads))?;
        let g = self.vgg.backward(&acts, layer_grads, &cancelled)?;
        let g = g.flatten_all()?.to_vec1::<f32>()?;
        grad.copy_from_slice(&g);
        if self.weights.tv > 0.0 {
            tv_gradient(x, self.height, self.width, self.weights.tv, grad);
        }
        Ok(losses)
    }

    /// Loss terms; with `grads`, also the gradients at each layer.
    fn terms(
        &self,
        x: &[f32],
        acts: &crate::vgg::Activations,
        mut grads: Option<&mut Vec<(usize, Tensor)>>,
    ) -> Result<Losses> {
        let out = |p: usize| {
            acts.get(p).ok_or_else(|| {
                EngineError::Candle(candle_core::Error::Msg("objective layer not kept".into()))
            })
        };
        let TermWeights {
            content: alpha,
            style: beta,
            tv: tv_weight,
        } = self.weights;
        let mut content = 0.0;
        for (p, target) in &self.content {
            let diff = (out(*p)? - target)?;
            content += 0.5 * sum_sq(&diff)?;
            if let Some(g) = grads.as_deref_mut() {
                if alpha > 0.0 {
                    g.push((*p, (diff * f64::from(alpha))?));
                }
            }
        }
        let mut style_layers = Vec::with_capacity(self.style.len());
        for term in &self.style {
            let a = out(term.position)?;
            let (_, c, h, w) = a.dims4()?;
            let f = a.reshape((c, h * w))?;
            let diff = (crate::linalg::gram(&f)? - &term.target)?;
            style_layers.push(term.coeff * sum_sq(&diff)?);
            if let Some(g) = grads.as_deref_mut() {
                if beta > 0.0 {
                    // d/dF coeff ||F F^T - T||^2 = 4 coeff (F F^T - T) F, as the Gram is symmetric.
                    let scale = 4.0 * term.lambda * term.coeff * f64::from(beta);
                    let gf = crate::linalg::left_product_scaled(&diff, &f, scale)?
                        .reshape((1, c, h, w))?;
                    g.push((term.position, gf));
                }
            }
        }
        let style: f64 = style_layers
            .iter()
            .zip(&self.style)
            .map(|(j, term)| term.lambda * j)
            .sum();
        let tv = total_variation(x, self.height, self.width);
        Ok(Losses {
            content,
            style,
            style_layers,
            tv,
            total: f64::from(alpha) * content + f64::from(beta) * style + f64::from(tv_weight) * tv,
        })
    }
}

/// Sum of squares, accumulated in f64.
pub(crate) fn sum_sq(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?
        .sqr()?
        .sum_all()?
        .to_scalar::<f64>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{max_rel_diff, tiny_vgg};
    use candle_core::Device;

    #[test]
    fn grams_in_pieces_add_up_to_one_pass() {
        let vgg = tiny_vgg();
        let layers = LayerName::parse_list("relu1_1,relu2_1,relu3_1,relu4_1,relu5_1").unwrap();
        let positions: Vec<usize> = layers.iter().map(|&l| vgg.position(l).unwrap()).collect();
        let deepest = *positions.iter().max().unwrap();
        // Odd sizes, so the last pieces end where the pools' floor leaves them.
        let image = (Tensor::rand(0f32, 1f32, (1, 3, 203, 117), &Device::Cpu).unwrap() * 200.0)
            .unwrap()
            .affine(1.0, -100.0)
            .unwrap();
        let grams = |side, margin| {
            let pieces = Pieces {
                side,
                ..Pieces::WHOLE
            };
            grams_in_pieces(&vgg, &image, &positions, deepest, pieces, margin).unwrap()
        };
        let whole = grams(usize::MAX, 0);
        // 32 px pieces whose margin covers the whole image: the same features, counted piece
        // by piece.
        let exact = grams(32, 400);
        // A margin narrower than the receptive field: close, not equal.
        let near = grams(64, 32);
        for ((w, e), n) in whole.iter().zip(&exact).zip(&near) {
            assert!(max_rel_diff(e, w) < 1e-5, "{}", max_rel_diff(e, w));
            let d = max_rel_diff(n, w);
            assert!(d > 0.0 && d < 0.2, "{d}");
        }
        let stop = Pieces {
            side: 64,
            cancelled: &|| true,
        };
        let e = grams_in_pieces(&vgg, &image, &positions, deepest, stop, 32).unwrap_err();
        assert!(e.is_cancelled());
    }
}
