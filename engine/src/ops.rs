//! Tensor ops whose gradients candle gets wrong or slow, written as candle custom ops.
//!
//! candle 0.11's `max_pool2d` backward scales the gradient by 1/4 per pool and misaligns on odd
//! sizes, and its ReLU backward passes the gradient at exactly 0. These ops give PyTorch's
//! answers: the max-pool gradient goes to the first maximum of each 2x2 window (row-major, as
//! PyTorch's CPU kernel), windows are floor-sized (a trailing odd row or column gets zero
//! gradient), and ReLU's gradient is zero where its output is zero.
//!
//! On the CPU, all ops take contiguous f32 tensors of shape (N, C, H, W) and run over the
//! channel planes (or chunks of values) on rayon's pool. On another device (CUDA) the same
//! answers are composed from candle's own tensor operations ([`composed`]), which run on the
//! CPU too: the tests check them against the CPU ops there.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::error::Result;

/// The f32 values of a contiguous CPU tensor; `op` names the op in the error otherwise.
pub(crate) fn f32_slice<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op} needs a contiguous tensor"),
    }
}

fn dims4(l: &Layout, op: &str) -> candle_core::Result<(usize, usize, usize, usize)> {
    match *l.dims() {
        [n, c, h, w] => Ok((n, c, h, w)),
        ref d => candle_core::bail!("{op} needs an (N, C, H, W) tensor, got {d:?}"),
    }
}

/// 2x2 max pool, stride 2, floor on odd sizes.
struct MaxPool2x2;

impl CustomOp1 for MaxPool2x2 {
    fn name(&self) -> &'static str {
        "max-pool-2x2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let (n, c, h, w) = dims4(l, self.name())?;
        let (oh, ow) = (h / 2, w / 2);
        let mut out = vec![0f32; n * c * oh * ow];
        if oh * ow > 0 {
            out.par_chunks_mut(oh * ow)
                .zip(x.par_chunks_exact(h * w))
                .for_each(|(o, plane)| {
                    for (i, orow) in o.chunks_exact_mut(ow).enumerate() {
                        let r0 = &plane[2 * i * w..2 * i * w + w];
                        let r1 = &plane[(2 * i + 1) * w..(2 * i + 1) * w + w];
                        for (j, v) in orow.iter_mut().enumerate() {
                            *v = r0[2 * j]
                                .max(r0[2 * j + 1])
                                .max(r1[2 * j].max(r1[2 * j + 1]));
                        }
                    }
                });
        }
        Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))))
    }
}

/// Gradient of [`MaxPool2x2`]: arguments (upstream gradient, pool input).
struct MaxPool2x2Backward;

impl CustomOp2 for MaxPool2x2Backward {
    fn name(&self) -> &'static str {
        "max-pool-2x2-backward"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        xs: &CpuStorage,
        xl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = f32_slice(gs, gl, self.name())?;
        let x = f32_slice(xs, xl, self.name())?;
        let (n, c, h, w) = dims4(xl, self.name())?;
        let (oh, ow) = (h / 2, w / 2);
        if dims4(gl, self.name())? != (n, c, oh, ow) {
            candle_core::bail!(
                "{}: gradient shape {:?} for input {:?}",
                self.name(),
                gl.dims(),
                xl.dims()
            );
        }
        let mut dx = vec![0f32; n * c * h * w];
        if oh * ow == 0 {
            return Ok((CpuStorage::F32(dx), xl.shape().clone()));
        }
        x.par_chunks_exact(h * w)
            .zip(g.par_chunks_exact(oh * ow))
            .zip(dx.par_chunks_exact_mut(h * w))
            .for_each(|((plane, gplane), dplane)| {
                for i in 0..oh {
                    for j in 0..ow {
                        let cand = [
                            2 * i * w + 2 * j,
                            2 * i * w + 2 * j + 1,
                            (2 * i + 1) * w + 2 * j,
                            (2 * i + 1) * w + 2 * j + 1,
                        ];
                        // First maximum in row-major order wins ties (PyTorch's CPU rule); a NaN
                        // wins over numbers, as there.
                        let mut best = cand[0];
                        for &k in &cand[1..] {
                            if plane[k] > plane[best] || plane[k].is_nan() && !plane[best].is_nan()
                            {
                                best = k;
                            }
                        }
                        dplane[best] += gplane[i * ow + j];
                    }
                }
            });
        Ok((CpuStorage::F32(dx), xl.shape().clone()))
    }
}

/// Gradient of a 2x2 average pool back to an input of `h` x `w`.
struct AvgPool2x2Backward {
    h: usize,
    w: usize,
}

impl CustomOp1 for AvgPool2x2Backward {
    fn name(&self) -> &'static str {
        "avg-pool-2x2-backward"
    }

    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = f32_slice(gs, gl, self.name())?;
        let (n, c, oh, ow) = dims4(gl, self.name())?;
        let (h, w) = (self.h, self.w);
        if (oh, ow) != (h / 2, w / 2) {
            candle_core::bail!("{}: gradient {oh}x{ow} for input {h}x{w}", self.name());
        }
        let mut dx = vec![0f32; n * c * h * w];
        if oh * ow == 0 {
            // No window fits (a side under 2): nothing flows back.
            return Ok((CpuStorage::F32(dx), Shape::from((n, c, h, w))));
        }
        for (gplane, dplane) in g.chunks_exact(oh * ow).zip(dx.chunks_exact_mut(h * w)) {
            for i in 0..oh {
                for j in 0..ow {
                    let v = 0.25 * gplane[i * ow + j];
                    for (di, dj) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                        dplane[(2 * i + di) * w + 2 * j + dj] = v;
                    }
                }
            }
        }
        Ok((CpuStorage::F32(dx), Shape::from((n, c, h, w))))
    }
}

/// 2x2 average pool, stride 2, floor on odd sizes.
struct AvgPool2x2;

impl CustomOp1 for AvgPool2x2 {
    fn name(&self) -> &'static str {
        "avg-pool-2x2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let (n, c, h, w) = dims4(l, self.name())?;
        let (oh, ow) = (h / 2, w / 2);
        let mut out = Vec::with_capacity(n * c * oh * ow);
        for plane in x.chunks_exact(h * w) {
            for i in 0..oh {
                let r0 = &plane[2 * i * w..2 * i * w + w];
                let r1 = &plane[(2 * i + 1) * w..(2 * i + 1) * w + w];
                for j in 0..ow {
                    out.push(0.25 * ((r0[2 * j] + r0[2 * j + 1]) + (r1[2 * j] + r1[2 * j + 1])));
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))))
    }
}

/// ReLU's gradient: arguments (upstream gradient, ReLU output); zero where the output is 0.
struct ReluBackward;

impl CustomOp2 for ReluBackward {
    fn name(&self) -> &'static str {
        "relu-backward"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        ys: &CpuStorage,
        yl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = f32_slice(gs, gl, self.name())?;
        let y = f32_slice(ys, yl, self.name())?;
        if gl.dims() != yl.dims() {
            candle_core::bail!(
                "{}: shapes {:?} and {:?}",
                self.name(),
                gl.dims(),
                yl.dims()
            );
        }
        let out = g
            .par_iter()
            .zip(y)
            .with_min_len(1 << 14)
            .map(|(&g, &y)| if y > 0.0 { g } else { 0.0 })
            .collect();
        Ok((CpuStorage::F32(out), yl.shape().clone()))
    }
}

/// Max pool 2x2 / stride 2 (floor).
pub fn max_pool2x2(x: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return composed::max_pool2x2(x);
    }
    Ok(x.apply_op1_no_bwd(&MaxPool2x2)?)
}

/// Gradient of [`max_pool2x2`] with respect to its input `x`, given the output gradient.
pub fn max_pool2x2_backward(grad: &Tensor, x: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return composed::max_pool2x2_backward(grad, x);
    }
    Ok(grad.apply_op2_no_bwd(x, &MaxPool2x2Backward)?)
}

/// Average pool 2x2 / stride 2 (floor).
pub fn avg_pool2x2(x: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return composed::avg_pool2x2(x);
    }
    Ok(x.apply_op1_no_bwd(&AvgPool2x2)?)
}

/// Gradient of [`avg_pool2x2`] for an input of `h` x `w`.
pub fn avg_pool2x2_backward(grad: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    if !grad.device().is_cpu() {
        return composed::avg_pool2x2_backward(grad, h, w);
    }
    Ok(grad.apply_op1_no_bwd(&AvgPool2x2Backward { h, w })?)
}

/// Gradient through a ReLU, given its output `y`.
pub fn relu_backward(grad: &Tensor, y: &Tensor) -> Result<Tensor> {
    if !y.device().is_cpu() {
        return composed::relu_backward(grad, y);
    }
    Ok(grad.apply_op2_no_bwd(y, &ReluBackward)?)
}

/// The ops above from candle's device-independent tensor operations, for devices without
/// custom kernels here (CUDA). A 2x2 window is made an axis pair by viewing the (floor-sized)
/// input as (N, C, H/2, 2, W/2, 2); nothing here is specific to a device.
pub(crate) mod composed {
    use super::*;

    /// The input cut to whole windows, as (N, C, H/2, 2, W/2, 2); `None` when no window fits.
    fn windows(x: &Tensor) -> Result<Option<Tensor>> {
        let (n, c, h, w) = x.dims4()?;
        let (oh, ow) = (h / 2, w / 2);
        if oh * ow == 0 {
            return Ok(None);
        }
        let cut = x.narrow(2, 0, 2 * oh)?.narrow(3, 0, 2 * ow)?.contiguous()?;
        Ok(Some(cut.reshape((n, c, oh, 2, ow, 2))?))
    }

    /// A (N, C, 2 oh, 2 ow) tensor padded with zeros to `h` x `w` (the rows and columns no
    /// window covers).
    fn pad_to(t: Tensor, h: usize, w: usize) -> Result<Tensor> {
        let (_, _, th, tw) = t.dims4()?;
        Ok(t.pad_with_zeros(3, 0, w - tw)?
            .pad_with_zeros(2, 0, h - th)?)
    }

    pub(crate) fn max_pool2x2(x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        match windows(x)? {
            Some(win) => Ok(win
                .max_keepdim(5)?
                .max_keepdim(3)?
                .reshape((n, c, h / 2, w / 2))?),
            None => Ok(Tensor::zeros((n, c, h / 2, w / 2), x.dtype(), x.device())?),
        }
    }

    /// The whole gradient of a window goes to its first maximum in row-major order: each
    /// position equal to the window's maximum scores 8, 4, 2 or 1 by its place, and the highest
    /// score wins. (A window holding NaN passes no gradient here.)
    pub(crate) fn max_pool2x2_backward(grad: &Tensor, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let (oh, ow) = (h / 2, w / 2);
        if grad.dims4()? != (n, c, oh, ow) {
            return Err(candle_core::Error::Msg(format!(
                "max-pool-2x2-backward: gradient shape {:?} for input {:?}",
                grad.dims(),
                x.dims()
            ))
            .into());
        }
        let Some(win) = windows(x)? else {
            return Ok(Tensor::zeros((n, c, h, w), x.dtype(), x.device())?);
        };
        let max = win.max_keepdim(5)?.max_keepdim(3)?;
        let place = Tensor::new(&[8f32, 4., 2., 1.], x.device())?.reshape((1, 1, 1, 2, 1, 2))?;
        let score = win
            .broadcast_eq(&max)?
            .to_dtype(DType::F32)?
            .broadcast_mul(&place)?;
        let best = score.max_keepdim(5)?.max_keepdim(3)?;
        let first = score
            .broadcast_eq(&best)?
            .to_dtype(DType::F32)?
            .mul(&score.gt(0f32)?.to_dtype(DType::F32)?)?;
        let g = grad.reshape((n, c, oh, 1, ow, 1))?;
        let dx = first.broadcast_mul(&g)?.reshape((n, c, 2 * oh, 2 * ow))?;
        pad_to(dx, h, w)
    }

    pub(crate) fn avg_pool2x2(x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        match windows(x)? {
            Some(win) => {
                Ok((win.sum_keepdim(5)?.sum_keepdim(3)? * 0.25)?.reshape((n, c, h / 2, w / 2))?)
            }
            None => Ok(Tensor::zeros((n, c, h / 2, w / 2), x.dtype(), x.device())?),
        }
    }

    pub(crate) fn avg_pool2x2_backward(grad: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        let (n, c, oh, ow) = grad.dims4()?;
        if (oh, ow) != (h / 2, w / 2) {
            return Err(candle_core::Error::Msg(format!(
                "avg-pool-2x2-backward: gradient {oh}x{ow} for input {h}x{w}"
            ))
            .into());
        }
        if oh * ow == 0 {
            return Ok(Tensor::zeros((n, c, h, w), grad.dtype(), grad.device())?);
        }
        let dx = (grad.reshape((n, c, oh, 1, ow, 1))? * 0.25)?
            .broadcast_as((n, c, oh, 2, ow, 2))?
            .contiguous()?
            .reshape((n, c, 2 * oh, 2 * ow))?;
        pad_to(dx, h, w)
    }

    pub(crate) fn relu_backward(grad: &Tensor, y: &Tensor) -> Result<Tensor> {
        if grad.dims() != y.dims() {
            return Err(candle_core::Error::Msg(format!(
                "relu-backward: shapes {:?} and {:?}",
                grad.dims(),
                y.dims()
            ))
            .into());
        }
        Ok(y.gt(0f32)?.where_cond(grad, &grad.zeros_like()?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(v: &[f32], h: usize, w: usize) -> Tensor {
        Tensor::from_slice(v, (1, 1, h, w), &Device::Cpu).unwrap()
    }

    fn vals(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn max_pool_gradient_goes_whole_to_the_first_maximum() {
        // candle's own backward returns [.., 1, .., 2] here; the right answer is 4 and 8.
        let x = t(&[1., 2., 5., 3., 4., 0., 7., 6., 9., 9., 1., 1.], 3, 4);
        let y = max_pool2x2(&x).unwrap();
        assert_eq!(vals(&y), vec![4., 7.]);
        let g = t(&[4., 8.], 1, 2);
        let dx = max_pool2x2_backward(&g, &x).unwrap();
        // Odd height: the third row is outside every window and gets nothing.
        assert_eq!(
            vals(&dx),
            vec![0., 0., 0., 0., 4., 0., 8., 0., 0., 0., 0., 0.]
        );
        // Ties: the first in row-major order.
        let x = t(&[3., 3., 3., 3.], 2, 2);
        let dx = max_pool2x2_backward(&t(&[1.], 1, 1), &x).unwrap();
        assert_eq!(vals(&dx), vec![1., 0., 0., 0.]);
    }

    #[test]
    fn avg_pool_and_its_gradient_on_odd_sizes() {
        let x = t(&[1., 2., 3., 4., 5., 6., 7., 8., 9.], 3, 3);
        assert_eq!(vals(&avg_pool2x2(&x).unwrap()), vec![3.]);
        let dx = avg_pool2x2_backward(&t(&[8.], 1, 1), 3, 3).unwrap();
        assert_eq!(vals(&dx), vec![2., 2., 0., 2., 2., 0., 0., 0., 0.]);
        assert_eq!(dx.dims(), &[1, 1, 3, 3]);
    }

    /// Random values from a small set, so windows hold ties.
    fn tied(n: usize, c: usize, h: usize, w: usize, seed: u64) -> Tensor {
        let mut state = seed;
        let v: Vec<f32> = (0..n * c * h * w)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) % 5) as f32 - 2.0
            })
            .collect();
        Tensor::from_vec(v, (n, c, h, w), &Device::Cpu).unwrap()
    }

    #[test]
    fn composed_ops_give_the_cpu_ops_answers_exactly() {
        for (i, (h, w)) in [(4, 6), (5, 7), (3, 2), (1, 4), (8, 1), (2, 2)]
            .into_iter()
            .enumerate()
        {
            let x = tied(2, 3, h, w, i as u64);
            let g = tied(2, 3, h / 2, w / 2, 100 + i as u64);
            let gy = tied(2, 3, h, w, 200 + i as u64);
            let y = x.relu().unwrap();
            let pairs = [
                (max_pool2x2(&x), composed::max_pool2x2(&x)),
                (
                    max_pool2x2_backward(&g, &x),
                    composed::max_pool2x2_backward(&g, &x),
                ),
                (avg_pool2x2(&x), composed::avg_pool2x2(&x)),
                (
                    avg_pool2x2_backward(&g, h, w),
                    composed::avg_pool2x2_backward(&g, h, w),
                ),
                (relu_backward(&gy, &y), composed::relu_backward(&gy, &y)),
            ];
            for (k, (cpu, comp)) in pairs.into_iter().enumerate() {
                let (cpu, comp) = (cpu.unwrap(), comp.unwrap());
                assert_eq!(cpu.dims(), comp.dims(), "{h}x{w} op {k}");
                assert_eq!(vals(&cpu), vals(&comp), "{h}x{w} op {k}");
            }
        }
        // Shapes that do not fit are refused, not misread.
        let x = tied(1, 1, 4, 4, 9);
        assert!(composed::max_pool2x2_backward(&tied(1, 1, 3, 2, 1), &x).is_err());
        assert!(composed::avg_pool2x2_backward(&tied(1, 1, 2, 2, 1), 6, 4).is_err());
        assert!(composed::relu_backward(&tied(1, 1, 4, 2, 1), &x).is_err());
    }

    #[test]
    fn relu_gradient_is_zero_at_zero() {
        let y = t(&[0., 1., 0., 2.], 2, 2);
        let g = t(&[5., 6., 7., 8.], 2, 2);
        assert_eq!(vals(&relu_backward(&g, &y).unwrap()), vec![0., 6., 0., 8.]);
    }
}
