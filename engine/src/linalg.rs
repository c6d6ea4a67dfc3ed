//! Matrix products on rayon's pool: the single-threaded GEMM the convolutions share, and the
//! style term's Gram matrix `F Fᵀ` and gradient product `D F` as candle custom ops.
//!
//! gemm 0.19 parallelises a product over its output blocks, which VGG's style layers do not
//! have enough of: `F Fᵀ` of relu1_1 at 256x192 is a (64, 49152) x (49152, 64) product with a
//! 64x64 output, and candle's matmul ran it at 16 GFLOP/s on two cores (25 ms; all five style
//! layers' products took ~115 ms of a ~600 ms forward and backward pass). Here the Gram matrix
//! is summed from one partial product per chunk of positions, and `D F` is split by columns,
//! one single-threaded GEMM per rayon job.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::error::Result;
use crate::ops::f32_slice;

/// `C = scale A B` on the calling thread by the `gemm` crate, overwriting `C`: row-major
/// `(m, n, k)` matrices, A (m, k) and C (m, n) given as `(pointer, row stride)`, B (k, n) as
/// `(pointer, row stride, column stride)`. Callers spread products over rayon's pool
/// themselves: gemm's own threading gained 6% on the first block's (64, 576) x (576, 2560)
/// product, where two column halves on two threads made conv1_2 at 256x192 1.7x as fast. (On
/// the development machine Debian's OpenBLAS 0.3.21 was no faster than gemm on these shapes:
/// 36-45 against 31-48 GFLOP/s on one core.)
///
/// # Safety
/// The pointers must address matrices of those shapes and strides, and C must not overlap A
/// or B.
pub(crate) unsafe fn sgemm(
    (m, n, k): (usize, usize, usize),
    (a, lda): (*const f32, usize),
    (b, rsb, csb): (*const f32, usize, usize),
    (c, ldc): (*mut f32, usize),
    scale: f32,
) {
    // SAFETY: the caller's contract, in the gemm crate's (row stride, column stride) terms;
    // gemm computes dst = alpha dst + beta lhs rhs, and alpha = 0 does not read dst.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            ldc as isize,
            false,
            a,
            1,
            lda as isize,
            b,
            csb as isize,
            rsb as isize,
            0.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// A raw pointer that may cross to rayon's threads; see the SAFETY notes where it is used.
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: used only for writes to disjoint regions, one region per parallel job.
unsafe impl Sync for SendPtr {}
// SAFETY: as above.
unsafe impl Send for SendPtr {}

/// Columns (positions) per parallel job: enough jobs to keep every thread busy, none so small
/// that its GEMM is all overhead.
fn block(n: usize) -> usize {
    n.div_ceil(2 * rayon::current_num_threads())
        .max(256)
        .next_multiple_of(16)
}

/// `F Fᵀ` of a contiguous (C, N) f32 matrix.
fn gram_slice(f: &[f32], c: usize, n: usize) -> Vec<f32> {
    let kb = block(n);
    (0..n.div_ceil(kb))
        .into_par_iter()
        .map(|j| {
            let (k0, k1) = (j * kb, ((j + 1) * kb).min(n));
            let mut part = vec![0f32; c * c];
            // SAFETY: A is F's columns k0..k1 (row stride n), B the same columns read as their
            // transpose (row stride 1, column stride n), both inside `f`; C is `part`, (c, c).
            unsafe {
                let at = f.as_ptr().add(k0);
                sgemm(
                    (c, c, k1 - k0),
                    (at, n),
                    (at, 1, n),
                    (part.as_mut_ptr(), c),
                    1.0,
                );
            }
            part
        })
        .reduce_with(|mut a, b| {
            a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
            a
        })
        .unwrap_or_else(|| vec![0f32; c * c])
}

/// `D F` of a (C, C) and a (C, N) contiguous f32 matrix, times `scale`.
fn left_product(d: &[f32], f: &[f32], c: usize, n: usize, scale: f32) -> Vec<f32> {
    let mut out = vec![0f32; c * n];
    let nb = block(n);
    let out_ptr = SendPtr(out.as_mut_ptr());
    (0..n.div_ceil(nb)).into_par_iter().for_each(|j| {
        let out_ptr = &out_ptr;
        let (j0, j1) = (j * nb, ((j + 1) * nb).min(n));
        // SAFETY: job j writes columns j0..j1 of `out` (row stride n), which no other job
        // touches; D (row stride c) and F's columns j0..j1 (row stride n) are only read.
        unsafe {
            sgemm(
                (c, j1 - j0, c),
                (d.as_ptr(), c),
                (f.as_ptr().add(j0), n, 1),
                (out_ptr.0.add(j0), n),
                scale,
            );
        }
    });
    out
}

fn dims2(l: &Layout, op: &str) -> candle_core::Result<(usize, usize)> {
    match *l.dims() {
        [c, n] => Ok((c, n)),
        ref d => candle_core::bail!("{op} needs a (C, N) matrix, got {d:?}"),
    }
}

struct Gram;

impl CustomOp1 for Gram {
    fn name(&self) -> &'static str {
        "gram"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let f = f32_slice(s, l, self.name())?;
        let (c, n) = dims2(l, self.name())?;
        Ok((CpuStorage::F32(gram_slice(f, c, n)), Shape::from((c, c))))
    }
}

struct LeftProduct {
    scale: f32,
}

impl CustomOp2 for LeftProduct {
    fn name(&self) -> &'static str {
        "gram-left-product"
    }

    fn cpu_fwd(
        &self,
        ds: &CpuStorage,
        dl: &Layout,
        fs: &CpuStorage,
        fl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = f32_slice(ds, dl, self.name())?;
        let f = f32_slice(fs, fl, self.name())?;
        let (c, n) = dims2(fl, self.name())?;
        if dims2(dl, self.name())? != (c, c) {
            candle_core::bail!("{}: {:?} times {:?}", self.name(), dl.dims(), fl.dims());
        }
        let out = left_product(d, f, c, n, self.scale);
        Ok((CpuStorage::F32(out), Shape::from((c, n))))
    }
}

/// `F Fᵀ` of a (C, N) f32 matrix; on the CPU summed from chunks of positions in parallel.
pub fn gram(f: &Tensor) -> Result<Tensor> {
    if f.device().is_cpu() {
        Ok(f.contiguous()?.apply_op1_no_bwd(&Gram)?)
    } else {
        Ok(f.matmul(&f.t()?)?)
    }
}

/// `scale D F` of a (C, C) and a (C, N) f32 matrix; on the CPU split by columns in parallel.
pub fn left_product_scaled(d: &Tensor, f: &Tensor, scale: f64) -> Result<Tensor> {
    if f.device().is_cpu() {
        let op = LeftProduct {
            scale: scale as f32,
        };
        Ok(d.contiguous()?.apply_op2_no_bwd(&f.contiguous()?, &op)?)
    } else {
        Ok((d.matmul(f)? * scale)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn gram_and_left_product_match_float64_at_odd_sizes() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for &(c, n) in &[(1, 1), (3, 7), (5, 1000), (16, 4099)] {
            let f: Vec<f32> = (0..c * n).map(|_| rng.random_range(0.0..3.0)).collect();
            let d: Vec<f32> = (0..c * c).map(|_| rng.random_range(-1.0..1.0)).collect();
            let g = gram_slice(&f, c, n);
            let p = left_product(&d, &f, c, n, 0.5);
            for i in 0..c {
                for j in 0..c {
                    let want: f64 = (0..n)
                        .map(|k| f64::from(f[i * n + k]) * f64::from(f[j * n + k]))
                        .sum();
                    let got = f64::from(g[i * c + j]);
                    assert!(
                        (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                        "gram {c}x{n}"
                    );
                }
                for k in 0..n {
                    let want: f64 = 0.5
                        * (0..c)
                            .map(|m| f64::from(d[i * c + m]) * f64::from(f[m * n + k]))
                            .sum::<f64>();
                    let got = f64::from(p[i * n + k]);
                    assert!(
                        (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                        "D F {c}x{n}"
                    );
                }
            }
        }
    }
}
