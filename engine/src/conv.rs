//! Frozen 3x3 convolutions (stride 1, padding 1) on the CPU by Winograd's F(4x4, 3x3).
//!
//! VGG's weights never change during a render, so each kernel is transformed once
//! (`U = G g Gᵀ`, in f64) when the network is built. A convolution then transforms the input in
//! 6x6 patches with stride 4 (`V = Bᵀ d B`), multiplies `U` and `V` as 36 independent matrix
//! products over the channels, and transforms the products back to 4x4 output tiles
//! (`Y = Aᵀ M A`). That is 36 multiplies per 16 outputs where the direct form needs 144, and
//! the products are large GEMMs. The input gradient of a frozen convolution is itself a 3x3
//! convolution (of the output gradient with the flipped, transposed kernel), so the backward
//! pass uses the same code and no kernel gradient is ever formed.
//!
//! The work runs in chunks of tile rows so the transformed buffers stay a few MiB whatever the
//! image size. Transforms run a whole row of tiles at a time (vectorisable loops over
//! contiguous memory); the row pass works on image rows and the column pass on rows split into
//! their four phases (column mod 4). Matrices are from Lavin and Gray, "Fast Algorithms for
//! Convolutional Neural Networks" (2016).

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::error::Result;
use crate::linalg::{sgemm, SendPtr};
use crate::ops::f32_slice;

/// Bytes of transformed input and products (or im2col columns) one chunk may hold: 6 MiB
/// ran 512x384 fwd+bwd in 2.7 s where 24 MiB took 3.0 s and 48 MiB 3.15 s.
const CHUNK_BYTES: usize = 6 << 20;

thread_local! {
    /// The transformed-input and product buffers of the last convolution on this thread.
    static SCRATCH: std::cell::Cell<(Vec<f32>, Vec<f32>)> = const { std::cell::Cell::new((Vec::new(), Vec::new())) };
}

/// A frozen 3x3 convolution, stride 1, zero padding 1, with the kernel already transformed.
#[derive(Debug, Clone)]
pub struct Conv3x3 {
    cin: usize,
    cout: usize,
    kernel: Kernel,
    /// One value per output channel.
    bias: Vec<f32>,
}

/// The kernel in the form its convolution multiplies with.
#[derive(Debug, Clone)]
enum Kernel {
    /// Transformed, (36, cout, cin): `u[xi]` is the matrix for Winograd point `xi`.
    Winograd(Vec<f32>),
    /// As given, a (cout, cin * 9) matrix for the im2col columns.
    Direct(Vec<f32>),
}

/// Defines `$name` as `$generic` compiled twice, for the baseline target and with AVX2 and
/// FMA, choosing at run time (the transforms are elementwise loops the compiler vectorises).
macro_rules! multiversion {
    ($name:ident, $avx2:ident, $generic:ident, $out:ty) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx2(d: [&[f32]; 6], out: $out) {
            $generic(d, out)
        }

        fn $name(d: [&[f32]; 6], out: $out) {
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                // SAFETY: the CPU has the features the function was compiled for.
                return unsafe { $avx2(d, out) };
            }
            $generic(d, out)
        }
    };
}

multiversion!(bt_rows, bt_rows_avx2, bt_rows_generic, [&mut [f32]; 6]);
multiversion!(at_rows, at_rows_avx2, at_rows_generic, [&mut [f32]; 4]);

/// `Bᵀ` applied to six equally long rows: `out[k] = Σ_i Bᵀ[k][i] d[i]`.
#[inline(always)]
fn bt_rows_generic(d: [&[f32]; 6], out: [&mut [f32]; 6]) {
    let [o0, o1, o2, o3, o4, o5] = out;
    let n = o0.len();
    let [d0, d1, d2, d3, d4, d5] = d.map(|s| &s[..n]);
    let (o1, o2, o3, o4, o5) = (
        &mut o1[..n],
        &mut o2[..n],
        &mut o3[..n],
        &mut o4[..n],
        &mut o5[..n],
    );
    for i in 0..n {
        let (a0, a1, a2, a3, a4, a5) = (d0[i], d1[i], d2[i], d3[i], d4[i], d5[i]);
        o0[i] = 4.0 * a0 - 5.0 * a2 + a4;
        o1[i] = -4.0 * (a1 + a2) + a3 + a4;
        o2[i] = 4.0 * (a1 - a2) - a3 + a4;
        o3[i] = 2.0 * (a3 - a1) - a2 + a4;
        o4[i] = 2.0 * (a1 - a3) - a2 + a4;
        o5[i] = 4.0 * a1 - 5.0 * a3 + a5;
    }
}

/// `Aᵀ` applied to six equally long rows: `out[a] = Σ_k Aᵀ[a][k] m[k]`.
#[inline(always)]
fn at_rows_generic(m: [&[f32]; 6], out: [&mut [f32]; 4]) {
    let [o0, o1, o2, o3] = out;
    let n = o0.len();
    let [m0, m1, m2, m3, m4, m5] = m.map(|s| &s[..n]);
    let (o1, o2, o3) = (&mut o1[..n], &mut o2[..n], &mut o3[..n]);
    for i in 0..n {
        let (s12, d12) = (m1[i] + m2[i], m1[i] - m2[i]);
        let (s34, d34) = (m3[i] + m4[i], m3[i] - m4[i]);
        o0[i] = m0[i] + s12 + s34;
        o1[i] = d12 + 2.0 * d34;
        o2[i] = s12 + 4.0 * s34;
        o3[i] = d12 + 8.0 * d34 + m5[i];
    }
}

/// Splits `s` into `N` consecutive slices of length `len`.
fn split<const N: usize>(s: &mut [f32], len: usize) -> [&mut [f32]; N] {
    let mut rest = &mut s[..N * len];
    std::array::from_fn(|_| {
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(len);
        rest = tail;
        head
    })
}

impl Conv3x3 {
    /// Builds the convolution from a (cout, cin, 3, 3) kernel and an optional bias (zero
    /// without).
    ///
    /// # Panics
    /// When `weight` does not hold `cout * cin * 9` values or `bias` not `cout`: the caller
    /// checks shapes.
    pub fn new(weight: &[f32], bias: Option<&[f32]>, cout: usize, cin: usize) -> Self {
        assert_eq!(weight.len(), cout * cin * 9, "kernel shape");
        Self {
            cin,
            cout,
            kernel: Kernel::Winograd(winograd_kernel(weight, cout, cin)),
            bias: bias_or_zero(bias, cout),
        }
    }

    /// The same convolution computed directly (im2col and one GEMM per chunk of rows): 4x the
    /// multiplies of Winograd, but the rounding of a plain dot product. Winograd's transforms
    /// amplify rounding with the input's range and its high frequencies: on an image pushed to
    /// the pixel box's corners (L-BFGS's first big step) its gradient through VGG's first block
    /// was 5e-3 off float64 (relative L2) where direct convolutions give 1.4e-4.
    pub fn direct(weight: &[f32], bias: Option<&[f32]>, cout: usize, cin: usize) -> Self {
        assert_eq!(weight.len(), cout * cin * 9, "kernel shape");
        Self {
            cin,
            cout,
            kernel: Kernel::Direct(weight.to_vec()),
            bias: bias_or_zero(bias, cout),
        }
    }

    /// Input channels.
    pub fn cin(&self) -> usize {
        self.cin
    }

    /// Output channels.
    pub fn cout(&self) -> usize {
        self.cout
    }

    /// Convolves `x` (cin, h, w) into `out` (cout, h, w), adding the bias and, with `relu`,
    /// clamping at zero. Runs on rayon's pool.
    ///
    /// # Panics
    /// When the slice lengths do not match the shapes.
    pub fn forward(&self, x: &[f32], h: usize, w: usize, relu: bool, out: &mut [f32]) {
        assert_eq!(x.len(), self.cin * h * w, "input shape");
        assert_eq!(out.len(), self.cout * h * w, "output shape");
        if h == 0 || w == 0 {
            return;
        }
        let u = match &self.kernel {
            Kernel::Winograd(u) => u,
            Kernel::Direct(k) => return self.forward_direct(k, x, h, w, relu, out),
        };
        let (th, tw) = (h.div_ceil(4), w.div_ceil(4));
        let per_row = 36 * (self.cin + self.cout) * tw * 4;
        let rows = (CHUNK_BYTES / per_row).clamp(1, th);
        // Every element of v and m is written before it is read; reusing the buffers of the
        // last call on this thread saves zeroing and faulting in fresh pages each time.
        let (mut v, mut m) = SCRATCH.take();
        v.resize(36 * self.cin * rows * tw, 0.0);
        m.resize(36 * self.cout * rows * tw, 0.0);
        for ty0 in (0..th).step_by(rows) {
            let ty1 = (ty0 + rows).min(th);
            let tc = (ty1 - ty0) * tw;
            self.transform_input(x, h, w, ty0, ty1, &mut v[..36 * self.cin * tc]);
            self.multiply(
                u,
                &v[..36 * self.cin * tc],
                &mut m[..36 * self.cout * tc],
                tc,
            );
            self.transform_output(&m[..36 * self.cout * tc], h, w, ty0, ty1, relu, out);
        }
        SCRATCH.set((v, m));
    }

    /// [`Self::forward`] by im2col and GEMM with `kernel` (cout, cin * 9), a chunk of output
    /// rows at a time.
    fn forward_direct(
        &self,
        kernel: &[f32],
        x: &[f32],
        h: usize,
        w: usize,
        relu: bool,
        out: &mut [f32],
    ) {
        let (cout, k) = (self.cout, self.cin * 9);
        let rows = (CHUNK_BYTES / (4 * k * w)).clamp(1, h);
        let (mut col, m) = SCRATCH.take();
        col.resize(k * rows * w, 0.0);
        for y0 in (0..h).step_by(rows) {
            let n = (rows.min(h - y0)) * w;
            // col[(ci, kh, kw)][(r, c)] = x[ci][y0 + r + kh - 1][c + kw - 1], zero outside.
            col[..k * n]
                .par_chunks_mut(9 * n)
                .zip(x.par_chunks(h * w))
                .for_each(|(cc, xc)| {
                    for (tap, dst) in cc.chunks_exact_mut(n).enumerate() {
                        let (kh, kw) = (tap / 3, tap % 3);
                        for (r, drow) in dst.chunks_exact_mut(w).enumerate() {
                            let y = (y0 + r + kh).wrapping_sub(1);
                            if y >= h {
                                drow.fill(0.0);
                                continue;
                            }
                            let src = &xc[y * w..(y + 1) * w];
                            match kw {
                                0 => {
                                    drow[0] = 0.0;
                                    drow[1..].copy_from_slice(&src[..w - 1]);
                                }
                                1 => drow.copy_from_slice(src),
                                _ => {
                                    drow[..w - 1].copy_from_slice(&src[1..]);
                                    drow[w - 1] = 0.0;
                                }
                            }
                        }
                    }
                });
            // Output columns in blocks, one GEMM per rayon job; bias and ReLU are applied to a
            // block right after its product, while it is in cache.
            let block = n
                .div_ceil(rayon::current_num_threads())
                .next_multiple_of(16);
            let (out_ptr, col) = (SendPtr(out.as_mut_ptr()), &col[..k * n]);
            (0..n.div_ceil(block)).into_par_iter().for_each(|j| {
                let out_ptr = &out_ptr;
                let (j0, j1) = (j * block, ((j + 1) * block).min(n));
                // SAFETY: the destination is out's (cout, j1 - j0) block at column y0 w + j0
                // of each plane (row stride h w; y0 w + n <= h w keeps it in bounds); blocks
                // of different jobs are disjoint; the kernel and columns are only read.
                unsafe {
                    let dst = out_ptr.0.add(y0 * w + j0);
                    sgemm(
                        (cout, j1 - j0, k),
                        (kernel.as_ptr(), k),
                        (col.as_ptr().add(j0), n, 1),
                        (dst, h * w),
                        1.0,
                    );
                    for (co, &b) in self.bias.iter().enumerate() {
                        let row = std::slice::from_raw_parts_mut(dst.add(co * h * w), j1 - j0);
                        for o in row {
                            let v = *o + b;
                            *o = if relu { v.max(0.0) } else { v };
                        }
                    }
                }
            });
        }
        SCRATCH.set((col, m));
    }

    /// `v` (cin, 36, tc) for tile rows `ty0..ty1`.
    fn transform_input(
        &self,
        x: &[f32],
        h: usize,
        w: usize,
        ty0: usize,
        ty1: usize,
        v: &mut [f32],
    ) {
        let tw = w.div_ceil(4);
        let tc = (ty1 - ty0) * tw;
        // Padded row: column c holds input column c - 1; 4 (tw + 1) wide so every phase has
        // tw + 1 entries.
        let wp = 4 * (tw + 1);
        let plane = h * w;
        let ph = tw + 1;
        v.par_chunks_mut(36 * tc)
            .zip(x.par_chunks(plane))
            .for_each_init(
                || vec![0.0f32; 12 * wp],
                |scratch, (vc, xc)| {
                    let (rows, tmp) = scratch.split_at_mut(6 * wp);
                    for ty in ty0..ty1 {
                        // Six padded input rows, split by phase: padded column 4t + q (input
                        // column 4t + q - 1) at [q ph + t].
                        for (i, row) in rows.chunks_exact_mut(wp).enumerate() {
                            row.fill(0.0);
                            let r = (4 * ty + i).wrapping_sub(1);
                            if r < h {
                                for (c, &val) in xc[r * w..(r + 1) * w].iter().enumerate() {
                                    let pc = c + 1;
                                    row[(pc & 3) * ph + (pc >> 2)] = val;
                                }
                            }
                        }
                        // Row pass: element-wise across the rows, so the phase split carries
                        // over to tmp.
                        {
                            let mut r = rows.chunks_exact(wp);
                            let d = std::array::from_fn(|_| r.next().unwrap_or_default());
                            bt_rows(d, split::<6>(tmp, wp));
                        }
                        // Column pass: d_j[t] = padded column 4t + j, from phase j % 4 at
                        // t + j / 4.
                        let base = (ty - ty0) * tw;
                        for k in 0..6 {
                            let t = &tmp[k * wp..(k + 1) * wp];
                            let at = |q: usize, off: usize| &t[q * ph + off..q * ph + off + tw];
                            let d = [at(0, 0), at(1, 0), at(2, 0), at(3, 0), at(0, 1), at(1, 1)];
                            let outs = split::<6>(&mut vc[k * 6 * tc..(k + 1) * 6 * tc], tc)
                                .map(|s| &mut s[base..base + tw]);
                            bt_rows(d, outs);
                        }
                    }
                },
            );
    }

    /// `m[co][xi] = Σ_ci u[xi][co][ci] v[ci][xi]` for the 36 points, as independent GEMMs.
    fn multiply(&self, u: &[f32], v: &[f32], m: &mut [f32], tc: usize) {
        let (cin, cout) = (self.cin, self.cout);
        let m_ptr = SendPtr(m.as_mut_ptr());
        (0..36).into_par_iter().for_each(|xi| {
            let m_ptr = &m_ptr;
            // SAFETY: for point xi the product writes rows co * 36 tc + xi tc .. + tc of `m`,
            // which no other point touches; `u` and `v` are only read. The strides describe
            // matrices inside the slices' bounds: u[xi] is (cout, cin) row-major, v's rows are
            // 36 tc apart, m's rows 36 tc apart.
            unsafe {
                sgemm(
                    (cout, tc, cin),
                    (u.as_ptr().add(xi * cout * cin), cin),
                    (v.as_ptr().add(xi * tc), 36 * tc, 1),
                    (m_ptr.0.add(xi * tc), 36 * tc),
                    1.0,
                );
            }
        });
    }

    /// Writes the output rows of tile rows `ty0..ty1` from `m` (cout, 36, tc).
    #[allow(clippy::too_many_arguments)]
    fn transform_output(
        &self,
        m: &[f32],
        h: usize,
        w: usize,
        ty0: usize,
        ty1: usize,
        relu: bool,
        out: &mut [f32],
    ) {
        let tw = w.div_ceil(4);
        let tc = (ty1 - ty0) * tw;
        out.par_chunks_mut(h * w)
            .zip(m.par_chunks(36 * tc))
            .zip(self.bias.par_iter())
            .for_each_init(
                || vec![0.0f32; 24 * tw + 16 * tw],
                |scratch, ((oc, mc), &b)| {
                    let (s, y) = scratch.split_at_mut(24 * tw);
                    for ty in ty0..ty1 {
                        let base = (ty - ty0) * tw;
                        let row = |xi: usize| &mc[xi * tc + base..xi * tc + base + tw];
                        // Row pass: s[a][n] = Σ_k Aᵀ[a][k] m[k][n].
                        for n in 0..6 {
                            let d = [
                                row(n),
                                row(6 + n),
                                row(12 + n),
                                row(18 + n),
                                row(24 + n),
                                row(30 + n),
                            ];
                            let [s0, s1, s2, s3] =
                                split::<4>(&mut s[n * 4 * tw..(n + 1) * 4 * tw], tw);
                            at_rows(d, [s0, s1, s2, s3]);
                        }
                        // Column pass: y[a][b] = Σ_n Aᵀ[b][n] s[a][n].
                        for a in 0..4 {
                            let sn = |n: usize| &s[(n * 4 + a) * tw..(n * 4 + a + 1) * tw];
                            let d = [sn(0), sn(1), sn(2), sn(3), sn(4), sn(5)];
                            let [y0, y1, y2, y3] = split::<4>(&mut y[..], tw);
                            at_rows(d, [y0, y1, y2, y3]);
                            let r = 4 * ty + a;
                            if r >= h {
                                break;
                            }
                            let orow = &mut oc[r * w..(r + 1) * w];
                            for (t, quad) in orow.chunks_mut(4).enumerate() {
                                for (q, o) in quad.iter_mut().enumerate() {
                                    let val = y[q * tw + t] + b;
                                    *o = if relu { val.max(0.0) } else { val };
                                }
                            }
                        }
                    }
                },
            );
    }
}

/// [`Conv3x3::forward`] as a candle op on (N, C, H, W) f32 tensors.
struct Conv3x3Op<'a> {
    conv: &'a Conv3x3,
    relu: bool,
}

impl CustomOp1 for Conv3x3Op<'_> {
    fn name(&self) -> &'static str {
        "winograd-conv3x3"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let &[n, c, h, w] = l.dims() else {
            candle_core::bail!(
                "{} needs an (N, C, H, W) tensor, got {:?}",
                self.name(),
                l.dims()
            );
        };
        if c != self.conv.cin {
            candle_core::bail!(
                "{}: {c} input channels for a kernel of {}",
                self.name(),
                self.conv.cin
            );
        }
        let cout = self.conv.cout;
        let mut out = vec![0.0f32; n * cout * h * w];
        for (xi, oi) in x
            .chunks_exact(c * h * w)
            .zip(out.chunks_exact_mut(cout * h * w))
        {
            self.conv.forward(xi, h, w, self.relu, oi);
        }
        Ok((CpuStorage::F32(out), Shape::from((n, cout, h, w))))
    }
}

impl Conv3x3 {
    /// Convolves a CPU tensor (N, cin, H, W), adding the bias and, with `relu`, clamping at 0.
    pub fn apply(&self, x: &Tensor, relu: bool) -> Result<Tensor> {
        let x = x.contiguous()?;
        Ok(x.apply_op1_no_bwd(&Conv3x3Op { conv: self, relu })?)
    }
}

/// The bias, or zeros without one.
fn bias_or_zero(bias: Option<&[f32]>, cout: usize) -> Vec<f32> {
    match bias {
        Some(b) => {
            assert_eq!(b.len(), cout, "bias shape");
            b.to_vec()
        }
        None => vec![0.0; cout],
    }
}

/// The Winograd transform `G g Gᵀ` of a (cout, cin, 3, 3) kernel, laid out (36, cout, cin).
fn winograd_kernel(weight: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    const G: [[f64; 3]; 6] = [
        [0.25, 0.0, 0.0],
        [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
        [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
        [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
        [0.0, 0.0, 1.0],
    ];
    // u[xi][co][ci], built one output channel at a time in parallel: (cout, 36, cin) first.
    let mut by_co = vec![0.0f32; cout * 36 * cin];
    by_co
        .par_chunks_mut(36 * cin)
        .enumerate()
        .for_each(|(co, uc)| {
            for ci in 0..cin {
                let g = &weight[(co * cin + ci) * 9..][..9];
                // (G g) is 6x3, then (G g) Gᵀ is 6x6.
                let mut gg = [[0.0f64; 3]; 6];
                for (k, row) in gg.iter_mut().enumerate() {
                    for (c, v) in row.iter_mut().enumerate() {
                        *v = G[k][0] * f64::from(g[c])
                            + G[k][1] * f64::from(g[3 + c])
                            + G[k][2] * f64::from(g[6 + c]);
                    }
                }
                for (k, row) in gg.iter().enumerate() {
                    for (m, gm) in G.iter().enumerate() {
                        let v = row[0] * gm[0] + row[1] * gm[1] + row[2] * gm[2];
                        uc[(k * 6 + m) * cin + ci] = v as f32;
                    }
                }
            }
        });
    let mut u = vec![0.0f32; 36 * cout * cin];
    u.par_chunks_mut(cout * cin)
        .enumerate()
        .for_each(|(xi, ux)| {
            for (co, row) in ux.chunks_exact_mut(cin).enumerate() {
                row.copy_from_slice(&by_co[(co * 36 + xi) * cin..][..cin]);
            }
        });
    u
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Direct 3x3 correlation with zero padding, in f64.
    fn direct(
        x: &[f32],
        wt: &[f32],
        b: &[f32],
        cin: usize,
        cout: usize,
        h: usize,
        w: usize,
    ) -> Vec<f64> {
        let mut out = vec![0.0f64; cout * h * w];
        for co in 0..cout {
            for y in 0..h {
                for xx in 0..w {
                    let mut acc = f64::from(b[co]);
                    for ci in 0..cin {
                        for kh in 0..3 {
                            for kw in 0..3 {
                                let (r, c) =
                                    (y as isize + kh as isize - 1, xx as isize + kw as isize - 1);
                                if r < 0 || c < 0 || r >= h as isize || c >= w as isize {
                                    continue;
                                }
                                acc += f64::from(wt[((co * cin + ci) * 3 + kh) * 3 + kw])
                                    * f64::from(x[(ci * h + r as usize) * w + c as usize]);
                            }
                        }
                    }
                    out[(co * h + y) * w + xx] = acc;
                }
            }
        }
        out
    }

    #[test]
    fn both_forms_match_a_float64_convolution_at_odd_and_even_sizes() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for &(cin, cout, h, w) in &[
            (3, 8, 9, 13),
            (8, 3, 16, 12),
            (5, 7, 1, 1),
            (4, 4, 2, 3),
            (16, 16, 33, 7),
            (2, 2, 5, 4),
        ] {
            let x: Vec<f32> = (0..cin * h * w)
                .map(|_| rng.random_range(-100.0..150.0))
                .collect();
            let wt: Vec<f32> = (0..cout * cin * 9)
                .map(|_| rng.random_range(-0.1..0.1))
                .collect();
            let b: Vec<f32> = (0..cout).map(|_| rng.random_range(-1.0..1.0)).collect();
            let want = direct(&x, &wt, &b, cin, cout, h, w);
            for (conv, relu) in [
                (Conv3x3::new(&wt, Some(&b), cout, cin), false),
                (Conv3x3::new(&wt, Some(&b), cout, cin), true),
                (Conv3x3::direct(&wt, Some(&b), cout, cin), false),
                (Conv3x3::direct(&wt, Some(&b), cout, cin), true),
            ] {
                let mut got = vec![f32::NAN; cout * h * w];
                conv.forward(&x, h, w, relu, &mut got);
                let scale = want.iter().map(|v| v.abs()).fold(0.0, f64::max);
                for (i, (&g, &e)) in got.iter().zip(&want).enumerate() {
                    let e = if relu { e.max(0.0) } else { e };
                    assert!(
                        (f64::from(g) - e).abs() <= 1e-5 * scale,
                        "{cin}->{cout} {h}x{w} relu={relu} at {i}: {g} vs {e}"
                    );
                }
            }
        }
    }
}
