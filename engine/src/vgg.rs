//! The VGG feature stack: a forward pass that keeps what the backward pass needs, and a
//! backward pass that turns gradients at named layers into the gradient at the input image.
//!
//! The weights are frozen, so the backward pass computes input gradients only: no kernel
//! gradients are formed. Pools and ReLU use the ops of [`crate::ops`], whose gradients match
//! PyTorch's.
//!
//! Off the CPU (CUDA) every convolution is candle's conv2d, its input gradient a conv2d with
//! the flipped, transposed kernel, and the pool and ReLU gradients are composed from candle
//! ops. [`Vgg::portable`] runs that same path on the CPU, for the tests.

use std::sync::Arc;
use stylefarm_core::CoreError;

use candle_core::{Device, Tensor};

use crate::conv::Conv3x3;
use crate::error::{EngineError, Result};
use crate::ops;
use crate::weights::VggWeights;
use stylefarm_core::layers::{LayerKind, LayerName, Pooling, VggArch};
use stylefarm_core::preprocess::Preprocess;

/// Convolutions before VGG's first pool (conv1_1, conv1_2).
const FIRST_BLOCK_CONVS: usize = 2;

/// One frozen 3x3 convolution.
#[derive(Debug, Clone)]
struct Conv {
    /// (out, in, 3, 3).
    weight: Tensor,
    /// (1, out, 1, 1), ready to broadcast.
    bias: Tensor,
    /// (in, out, 3, 3) with both spatial axes flipped: the input gradient is the convolution
    /// of the output gradient with this kernel.
    weight_back: Tensor,
    /// On the CPU, fast forms of `weight` (with the bias) and `weight_back`: direct in the
    /// first block, Winograd after it.
    fast: Option<Arc<(Conv3x3, Conv3x3)>>,
}

/// A VGG-16/19 feature extractor with frozen weights. Cloning shares the weights.
#[derive(Debug, Clone)]
pub struct Vgg {
    arch: VggArch,
    preprocess: Preprocess,
    pooling: Pooling,
    ops: Vec<LayerName>,
    convs: Vec<Conv>,
    device: Device,
    /// Whether the device-independent path runs on the CPU too ([`Vgg::portable`]).
    portable: bool,
}

/// The activations a forward pass kept, indexed by layer position.
#[derive(Debug)]
pub struct Activations {
    outputs: Vec<Option<Tensor>>,
    input_dims: (usize, usize),
}

impl Activations {
    /// The output of the layer at `position`, if it was kept.
    pub fn get(&self, position: usize) -> Option<&Tensor> {
        self.outputs.get(position).and_then(Option::as_ref)
    }
}

impl Vgg {
    /// Builds the network from loaded weights, on the weights' device.
    pub fn new(weights: VggWeights, pooling: Pooling) -> Result<Self> {
        let device = weights
            .convs
            .first()
            .map(|c| c.weight.device().clone())
            .unwrap_or(Device::Cpu);
        let convs = weights
            .convs
            .into_iter()
            .enumerate()
            .map(|(index, c)| {
                let out = c.bias.dims1()?;
                let weight_back = c.weight.transpose(0, 1)?.contiguous()?.flip(&[2, 3])?;
                let fast = if device.is_cpu() {
                    let (cout, cin, _, _) = c.weight.dims4()?;
                    let flat = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
                    let (w, b, wb) = (flat(&c.weight)?, flat(&c.bias)?, flat(&weight_back)?);
                    // The first block sees the raw pixels at full size, where Winograd's
                    // rounding hurt the gradient (see Conv3x3::direct); it stays direct.
                    Some(Arc::new(if index < FIRST_BLOCK_CONVS {
                        (
                            Conv3x3::direct(&w, Some(&b), cout, cin),
                            Conv3x3::direct(&wb, None, cin, cout),
                        )
                    } else {
                        (
                            Conv3x3::new(&w, Some(&b), cout, cin),
                            Conv3x3::new(&wb, None, cin, cout),
                        )
                    }))
                } else {
                    None
                };
                Ok(Conv {
                    fast,
                    bias: c.bias.reshape((1, out, 1, 1))?,
                    weight: c.weight.contiguous()?,
                    weight_back,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            arch: weights.arch,
            preprocess: weights.preprocess,
            pooling,
            ops: weights.arch.ops(),
            convs,
            device,
            portable: false,
        })
    }

    /// The same network with another pooling (sharing the weights).
    pub fn with_pooling(&self, pooling: Pooling) -> Self {
        Self {
            pooling,
            ..self.clone()
        }
    }

    /// The same network computing every convolution with candle's own `conv2d` instead of
    /// the Winograd form: the reference the fast path is checked against, and smoother in
    /// float32 (Winograd's transforms add relative rounding of a few 1e-6).
    pub fn reference(&self) -> Self {
        let mut vgg = self.clone();
        for c in &mut vgg.convs {
            c.fast = None;
        }
        vgg
    }

    /// The same network on the path it takes on a GPU, whatever its device: candle's conv2d
    /// for every convolution and every input gradient, and the pool and ReLU ops composed from
    /// candle tensor operations (`ops::composed`). On the CPU this is how the tests check the
    /// CUDA path's logic; it is slower there than the default.
    pub fn portable(&self) -> Self {
        let mut vgg = self.reference();
        vgg.portable = true;
        vgg
    }

    /// Whether the pools, ReLU and the first convolution's gradient take the device-independent
    /// path: off the CPU, or when asked for.
    fn generic(&self) -> bool {
        self.portable || !self.device.is_cpu()
    }

    /// VGG-16 or VGG-19.
    pub fn arch(&self) -> VggArch {
        self.arch
    }

    /// The input convention of the weights.
    pub fn preprocess(&self) -> Preprocess {
        self.preprocess
    }

    /// Max or average pooling.
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Position of a named layer in this network.
    pub fn position(&self, layer: LayerName) -> Result<usize> {
        Ok(self.arch.position(layer)?)
    }

    /// Channels of the layer at `position` (3 before the first convolution).
    pub fn channels(&self, position: usize) -> usize {
        let convs = self.ops[..=position.min(self.ops.len() - 1)]
            .iter()
            .filter(|l| l.kind == LayerKind::Conv)
            .count();
        convs
            .checked_sub(1)
            .and_then(|i| self.convs.get(i))
            .map_or(3, |c| c.weight.dims()[0])
    }

    /// Smallest input side for which the layer at `position` is at least one pixel: each
    /// pool before it halves the size (rounding down).
    pub fn min_input_side(&self, position: usize) -> usize {
        let pools = self.ops[..position]
            .iter()
            .filter(|l| l.kind == LayerKind::Pool)
            .count();
        1 << pools
    }

    /// Runs the stack on `x` (1, 3, H, W) up to `deepest` and keeps the outputs for which
    /// `keep(position)` holds. With `for_backward`, every ReLU output is kept as well, which is
    /// what [`Self::backward`] needs. `cancelled` is polled before each layer.
    pub fn forward(
        &self,
        x: &Tensor,
        deepest: usize,
        keep: &dyn Fn(usize) -> bool,
        for_backward: bool,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Activations> {
        let (_, _, h, w) = x.dims4()?;
        if h < self.min_input_side(deepest) || w < self.min_input_side(deepest) {
            return Err(CoreError::InvalidOption {
                option: "image-size",
                reason: format!(
                    "a {w}x{h} image is too small for layer {}: it needs at least {} pixels on each side",
                    self.ops[deepest],
                    self.min_input_side(deepest)
                ),
            }
            .into());
        }
        let mut outputs = vec![None; deepest + 1];
        let mut cur = x.clone();
        let mut conv = 0;
        let mut pos = 0;
        while pos <= deepest {
            if cancelled() {
                return Err(CoreError::Cancelled.into());
            }
            let layer = self.ops[pos];
            cur = match layer.kind {
                LayerKind::Conv => {
                    let c = &self.convs[conv];
                    conv += 1;
                    match &c.fast {
                        Some(fast) => {
                            // The conv output itself is rarely asked for: then the ReLU after
                            // it is applied in the same pass.
                            let fuse = !keep(pos)
                                && pos < deepest
                                && self.ops[pos + 1].kind == LayerKind::Relu;
                            let y = fast.0.apply(&cur, fuse)?;
                            if fuse {
                                pos += 1;
                            }
                            y
                        }
                        None => cur.conv2d(&c.weight, 1, 1, 1, 1)?.broadcast_add(&c.bias)?,
                    }
                }
                LayerKind::Relu => cur.relu()?,
                LayerKind::Pool => match (self.pooling, self.generic()) {
                    (Pooling::Max, false) => ops::max_pool2x2(&cur)?,
                    (Pooling::Max, true) => ops::composed::max_pool2x2(&cur)?,
                    (Pooling::Avg, false) => ops::avg_pool2x2(&cur)?,
                    (Pooling::Avg, true) => ops::composed::avg_pool2x2(&cur)?,
                },
            };
            if keep(pos) || (for_backward && self.ops[pos].kind == LayerKind::Relu) {
                outputs[pos] = Some(cur.clone());
            }
            pos += 1;
        }
        Ok(Activations {
            outputs,
            input_dims: (h, w),
        })
    }

    /// Back-propagates `grads` (gradients of the objective at layer positions, each shaped
    /// like that layer's output) to the input, through a forward pass made with
    /// `for_backward`. Returns the gradient with respect to the input, (1, 3, H, W).
    pub fn backward(
        &self,
        acts: &Activations,
        mut grads: Vec<(usize, Tensor)>,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Tensor> {
        grads.sort_by_key(|(p, _)| std::cmp::Reverse(*p));
        let deepest = acts.outputs.len() - 1;
        let mut pending = grads.into_iter().peekable();
        let mut grad: Option<Tensor> = None;
        let mut conv = self.ops[..=deepest]
            .iter()
            .filter(|l| l.kind == LayerKind::Conv)
            .count();
        for pos in (0..=deepest).rev() {
            while let Some((_, g)) = pending.next_if(|(p, _)| *p == pos) {
                grad = Some(match grad {
                    Some(acc) => (acc + g)?,
                    None => g,
                });
            }
            let layer = self.ops[pos];
            if layer.kind == LayerKind::Conv {
                conv -= 1;
            }
            let Some(g) = grad.take() else { continue };
            if cancelled() {
                return Err(CoreError::Cancelled.into());
            }
            let kept = |p: usize| {
                acts.get(p).ok_or_else(|| {
                    EngineError::Candle(candle_core::Error::Msg(format!(
                        "backward needs the output of {} from a forward pass made for backward",
                        self.ops[p]
                    )))
                })
            };
            grad = Some(match layer.kind {
                LayerKind::Relu if self.generic() => ops::composed::relu_backward(&g, kept(pos)?)?,
                LayerKind::Relu => ops::relu_backward(&g, kept(pos)?)?,
                LayerKind::Conv => {
                    let c = &self.convs[conv];
                    if let Some(fast) = &c.fast {
                        fast.1.apply(&g, false)?
                    } else if conv == 0 && !self.generic() {
                        // Three output channels: on the CPU the transposed convolution is the
                        // faster form. (On CUDA candle's conv_transpose2d is avoided: its
                        // gradient path was wrong for non-contiguous kernels, candle#3893.)
                        g.conv_transpose2d(&c.weight, 1, 0, 1, 1)?
                    } else {
                        g.conv2d(&c.weight_back, 1, 1, 1, 1)?
                    }
                }
                LayerKind::Pool => {
                    // A pool always follows a ReLU, whose output is kept for backward.
                    let input = kept(pos - 1)?;
                    let (_, _, h, w) = input.dims4()?;
                    match (self.pooling, self.generic()) {
                        (Pooling::Max, false) => ops::max_pool2x2_backward(&g, input)?,
                        (Pooling::Max, true) => ops::composed::max_pool2x2_backward(&g, input)?,
                        (Pooling::Avg, false) => ops::avg_pool2x2_backward(&g, h, w)?,
                        (Pooling::Avg, true) => ops::composed::avg_pool2x2_backward(&g, h, w)?,
                    }
                }
            });
        }
        let (h, w) = acts.input_dims;
        match grad {
            Some(g) => Ok(g),
            None => Ok(Tensor::zeros(
                (1, 3, h, w),
                candle_core::DType::F32,
                &self.device,
            )?),
        }
    }
}
