//! The per-tile half of tiles in lock step ([`stylefarm_core::lockstep`]): a tile's Gram
//! matrices and content term over the positions it owns (step one), and the gradient of its
//! share of the objective with respect to its context's pixels (step two). A worker holds one
//! [`TileObjective`] for every tile it is given; [`LocalTiles`] runs all of an image's tiles
//! in this process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use stylefarm_core::CoreError;

use candle_core::Tensor;

use crate::error::{EngineError, Result};
use crate::objective::sum_sq;
use crate::vgg::{Activations, Vgg};
use stylefarm_core::layers::LayerName;
use stylefarm_core::lockstep::{add_crop, crop, owned_span, GramSums, LockstepTile, TileBackend};

/// A layer the objective reads, with where it is and how its positions map to pixels.
#[derive(Debug, Clone, Copy)]
struct Layer {
    position: usize,
    stride: u32,
}

/// Evaluates tiles of one image: the content image at the output size, the layers, and the
/// content weight (the style residuals arrive already weighted).
pub struct TileObjective {
    vgg: Vgg,
    content: Tensor,
    content_layers: Vec<Layer>,
    style_layers: Vec<Layer>,
    deepest: usize,
    alpha: f32,
    /// The content features of each context seen so far.
    targets: HashMap<(u32, u32, u32, u32), Vec<Tensor>>,
    cancel: Option<Arc<AtomicBool>>,
}

impl TileObjective {
    /// Tiles of the image whose content is `content` (a network-input tensor at the output
    /// size, (1, 3, H, W)), on `vgg` (with the render's pooling already set).
    ///
    /// # Errors
    /// A layer the network does not have, or no layer at all.
    pub fn new(
        vgg: Vgg,
        content: Tensor,
        content_layers: &[LayerName],
        style_layers: &[LayerName],
        alpha: f32,
    ) -> Result<Self> {
        let layer = |l: &LayerName| {
            Ok(Layer {
                position: vgg.position(*l)?,
                stride: l.stride(),
            })
        };
        let content_layers = content_layers
            .iter()
            .map(layer)
            .collect::<Result<Vec<_>>>()?;
        let style_layers = style_layers.iter().map(layer).collect::<Result<Vec<_>>>()?;
        let deepest = content_layers
            .iter()
            .chain(&style_layers)
            .map(|l| l.position)
            .max()
            .ok_or(CoreError::InvalidOption {
                option: "content-layers",
                reason: "no content or style layer given".into(),
            })?;
        Ok(Self {
            vgg,
            content,
            content_layers,
            style_layers,
            deepest,
            alpha,
            targets: HashMap::new(),
            cancel: None,
        })
    }

    /// Stops evaluations with [`CoreError::Cancelled`] at the next layer once `flag` is set.
    pub fn set_cancel(&mut self, flag: Arc<AtomicBool>) {
        self.cancel = Some(flag);
    }

    /// `(width, height)` of the whole image.
    pub fn dims(&self) -> Result<(u32, u32)> {
        let (_, _, h, w) = self.content.dims4()?;
        Ok((w as u32, h as u32))
    }

    /// How the network maps pixels to its input.
    pub fn preprocess(&self) -> stylefarm_core::Preprocess {
        self.vgg.preprocess()
    }

    /// The device the network runs on: tiles and residuals go there.
    pub fn device(&self) -> &candle_core::Device {
        self.vgg.device()
    }

    /// The style layers' channel counts.
    pub fn style_channels(&self) -> Vec<usize> {
        self.style_layers
            .iter()
            .map(|l| self.vgg.channels(l.position))
            .collect()
    }

    fn keep(&self) -> impl Fn(usize) -> bool + '_ {
        move |p| {
            self.content_layers
                .iter()
                .chain(&self.style_layers)
                .any(|l| l.position == p)
        }
    }

    fn forward(&self, x: &Tensor, for_backward: bool) -> Result<Activations> {
        let cancel = self.cancel.clone();
        let cancelled = move || cancel.as_ref().is_some_and(|f| f.load(Ordering::Relaxed));
        self.vgg
            .forward(x, self.deepest, &self.keep(), for_backward, &cancelled)
    }

    /// `(r0, r1, c0, c1)`: the positions of `layer`'s output `a` that the tile owns.
    fn owned(
        &self,
        tile: &LockstepTile,
        layer: Layer,
        a: &Tensor,
    ) -> Result<(usize, usize, usize, usize)> {
        let (_, _, fh, fw) = a.dims4()?;
        let (w, h) = self.dims()?;
        let (c, x) = (tile.core, tile.context);
        let (r0, r1) = owned_span(c.y, c.bottom(), x.y, h, layer.stride, fh);
        let (c0, c1) = owned_span(c.x, c.right(), x.x, w, layer.stride, fw);
        Ok((r0, r1, c0, c1))
    }

    /// The content features of the tile's context, computed once.
    fn content_targets(&mut self, tile: &LockstepTile) -> Result<Vec<Tensor>> {
        let r = tile.context;
        let key = (r.x, r.y, r.width, r.height);
        if let Some(t) = self.targets.get(&key) {
            return Ok(t.clone());
        }
        let crop = self
            .content
            .narrow(2, r.y as usize, r.height as usize)?
            .narrow(3, r.x as usize, r.width as usize)?
            .contiguous()?;
        let acts = self.forward(&crop, false)?;
        let targets = self
            .content_layers
            .iter()
            .map(|l| kept(&acts, l.position).cloned())
            .collect::<Result<Vec<_>>>()?;
        self.targets.insert(key, targets.clone());
        Ok(targets)
    }

    /// Step one for `tile` at `x` (its context's network-input pixels, (1, 3, h, w)).
    pub fn grams(&mut self, tile: &LockstepTile, x: &Tensor) -> Result<GramSums> {
        let acts = self.forward(x, false)?;
        self.sums(tile, &acts)
    }

    /// [`Self::grams`], keeping what step two needs, so that [`Self::gradient_from`] saves the
    /// forward pass [`Self::gradient`] makes: the memory of a render of the context.
    pub fn grams_for_backward(
        &mut self,
        tile: &LockstepTile,
        x: &Tensor,
    ) -> Result<(GramSums, Activations)> {
        let acts = self.forward(x, true)?;
        Ok((self.sums(tile, &acts)?, acts))
    }

    fn sums(&mut self, tile: &LockstepTile, acts: &Activations) -> Result<GramSums> {
        let targets = self.content_targets(tile)?;
        let mut content = 0.0;
        for (l, p) in self.content_layers.iter().zip(&targets) {
            let a = kept(acts, l.position)?;
            let (r0, r1, c0, c1) = self.owned(tile, *l, a)?;
            content += 0.5 * sum_sq(&(own(a, r0, r1, c0, c1)? - own(p, r0, r1, c0, c1)?)?)?;
        }
        let mut sums = GramSums {
            content,
            ..GramSums::default()
        };
        for l in &self.style_layers {
            let a = kept(acts, l.position)?;
            let (r0, r1, c0, c1) = self.owned(tile, *l, a)?;
            let c = a.dims4()?.1;
            let n = (r1 - r0) * (c1 - c0);
            let g = if n == 0 {
                vec![0.0; c * c]
            } else {
                let f = own(a, r0, r1, c0, c1)?.reshape((c, n))?;
                crate::linalg::gram(&f)?.flatten_all()?.to_vec1::<f32>()?
            };
            sums.grams.push(g);
            sums.counts.push(n as u64);
        }
        Ok(sums)
    }

    /// Step two for `tile` at `x`: the gradient with respect to the context's pixels, (1, 3, h,
    /// w), given the style residuals `R_l` ((C, C) tensors, in the style layers' order).
    pub fn gradient(
        &mut self,
        tile: &LockstepTile,
        x: &Tensor,
        residuals: &[Tensor],
    ) -> Result<Tensor> {
        let acts = self.forward(x, true)?;
        self.gradient_from(tile, &acts, residuals)
    }

    /// [`Self::gradient`] from the activations [`Self::grams_for_backward`] kept.
    pub fn gradient_from(
        &mut self,
        tile: &LockstepTile,
        acts: &Activations,
        residuals: &[Tensor],
    ) -> Result<Tensor> {
        let targets = self.content_targets(tile)?;
        let mut grads = Vec::with_capacity(self.content_layers.len() + residuals.len());
        if self.alpha > 0.0 {
            for (l, p) in self.content_layers.iter().zip(&targets) {
                let a = kept(acts, l.position)?;
                let (r0, r1, c0, c1) = self.owned(tile, *l, a)?;
                let d =
                    ((own(a, r0, r1, c0, c1)? - own(p, r0, r1, c0, c1)?)? * f64::from(self.alpha))?;
                grads.push((l.position, pad(&d, a, r0, r1, c0, c1)?));
            }
        }
        for (l, r) in self.style_layers.iter().zip(residuals) {
            let a = kept(acts, l.position)?;
            let (r0, r1, c0, c1) = self.owned(tile, *l, a)?;
            let (c, n) = (a.dims4()?.1, (r1 - r0) * (c1 - c0));
            if n == 0 {
                continue;
            }
            let f = own(a, r0, r1, c0, c1)?.reshape((c, n))?;
            let g = crate::linalg::left_product_scaled(r, &f, 1.0)?.reshape((
                1,
                c,
                r1 - r0,
                c1 - c0,
            ))?;
            grads.push((l.position, pad(&g, a, r0, r1, c0, c1)?));
        }
        let cancel = self.cancel.clone();
        let cancelled = move || cancel.as_ref().is_some_and(|f| f.load(Ordering::Relaxed));
        self.vgg.backward(acts, grads, &cancelled)
    }
}

fn kept(acts: &Activations, position: usize) -> Result<&Tensor> {
    acts.get(position).ok_or_else(|| {
        EngineError::Candle(candle_core::Error::Msg(
            "a tile's layer was not kept".into(),
        ))
    })
}

/// The positions `[r0, r1) x [c0, c1)` of a (1, C, H, W) activation.
fn own(a: &Tensor, r0: usize, r1: usize, c0: usize, c1: usize) -> Result<Tensor> {
    Ok(a.narrow(2, r0, r1 - r0)?
        .narrow(3, c0, c1 - c0)?
        .contiguous()?)
}

/// `g` (over the positions `[r0, r1) x [c0, c1)`) padded with zeros to the shape of `like`.
fn pad(g: &Tensor, like: &Tensor, r0: usize, r1: usize, c0: usize, c1: usize) -> Result<Tensor> {
    let (_, _, h, w) = like.dims4()?;
    Ok(g.pad_with_zeros(2, r0, h - r1)?
        .pad_with_zeros(3, c0, w - c1)?)
}

/// Every tile of an image evaluated in this process, one after another: a piece's memory, the
/// same numbers as the farm's workers give.
pub struct LocalTiles {
    objective: TileObjective,
    tiles: Vec<LockstepTile>,
    width: usize,
    height: usize,
    /// The image of the last step one.
    x: Vec<f32>,
    /// What step one kept for step two, per tile (when `keep`).
    kept: Vec<Activations>,
    keep: bool,
}

impl LocalTiles {
    /// The tiles `tiles` of the image `objective` was made for.
    pub fn new(objective: TileObjective, tiles: Vec<LockstepTile>) -> Result<Self> {
        let (w, h) = objective.dims()?;
        Ok(Self {
            objective,
            tiles,
            width: w as usize,
            height: h as usize,
            x: Vec::new(),
            kept: Vec::new(),
            keep: false,
        })
    }

    /// Keeps each tile's activations from step one to step two: one forward pass fewer per
    /// tile and evaluation, for the memory of every tile's backward pass at once.
    pub fn keeping_activations(mut self) -> Self {
        self.keep = true;
        self
    }

    fn context(&self, tile: &LockstepTile) -> Result<Tensor> {
        let r = tile.context;
        Ok(Tensor::from_vec(
            crop(&self.x, self.width, self.height, r),
            (1, 3, r.height as usize, r.width as usize),
            self.objective.vgg.device(),
        )?)
    }
}

impl TileBackend for LocalTiles {
    type Error = EngineError;

    fn grams(&mut self, x: &[f32]) -> Result<GramSums> {
        self.x.clear();
        self.x.extend_from_slice(x);
        self.kept.clear();
        let mut sums = GramSums::default();
        for tile in self.tiles.clone() {
            let t = self.context(&tile)?;
            if self.keep {
                let (g, acts) = self.objective.grams_for_backward(&tile, &t)?;
                sums.add(&g)?;
                self.kept.push(acts);
            } else {
                sums.add(&self.objective.grams(&tile, &t)?)?;
            }
        }
        Ok(sums)
    }

    fn gradient(&mut self, residuals: &[Vec<f32>], grad: &mut [f32]) -> Result<()> {
        let device = self.objective.vgg.device().clone();
        let residuals = residuals
            .iter()
            .zip(self.objective.style_channels())
            .map(|(r, c)| Ok(Tensor::from_slice(r, (c, c), &device)?))
            .collect::<Result<Vec<_>>>()?;
        let kept = std::mem::take(&mut self.kept);
        for (i, tile) in self.tiles.clone().into_iter().enumerate() {
            let g = match kept.get(i) {
                Some(acts) => self.objective.gradient_from(&tile, acts, &residuals)?,
                None => {
                    let t = self.context(&tile)?;
                    self.objective.gradient(&tile, &t, &residuals)?
                }
            };
            let g = g.flatten_all()?.to_vec1::<f32>()?;
            add_crop(grad, self.width, self.height, tile.context, &g);
        }
        Ok(())
    }
}
