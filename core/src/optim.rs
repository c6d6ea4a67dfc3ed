//! Optimisers on the pixels: L-BFGS (as torch.optim.LBFGS and neural-style, with an optional
//! strong-Wolfe line search) and Adam, both kept inside the valid pixel box.
//!
//! Every evaluation of the objective (one forward and one backward pass) counts as one
//! iteration, so `max_evals` is the same compute budget for every optimiser. After every step
//! the image is projected onto its box (each value clamped to the network-input images of pixel
//! 0 and 255): the written PNG is what gets judged, and an unconstrained run leaves values outside
//! the range whose clamping at write time costs far more than clamping as we go.
//!
//! L-BFGS follows torch.optim.LBFGS step for step (lr 1, history 100, first step scaled by
//! `min(1, 1/|g|_1)`, two-loop recursion, `H0 = y.s / y.y`, a pair kept when `y.s > 1e-10`,
//! `s = t d`), which is what neural-style and its PyTorch port run. Two additions for the box:
//! components pinned at a bound whose direction points out of the box are frozen (so they do not
//! poison the curvature pairs and `g.d` is the true slope of the projected path), and a direction
//! that is not a descent direction restarts from steepest descent instead of stalling. Taking
//! `s` as the difference of the iterates instead blew the loss up 30x at 256 px: torch's first
//! step is ~1e-10 of the pixel values, below float32's resolution of `x`.

use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};

/// The objective as the optimisers see it: loss at `x`, gradient written into `grad`. Its
/// error is the caller's (the engine's carries candle's), into which the optimisers' own
/// refusals convert.
pub type EvalFn<'f, E> = dyn FnMut(&[f32], &mut [f32]) -> Result<f64, E> + 'f;

/// Per-channel box of a (3, H, W) image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    /// `(lo, hi)` per channel.
    pub channels: [(f32, f32); 3],
    /// H * W.
    pub plane: usize,
}

impl Bounds {
    /// Zeroes the components of a direction `d` that would leave the box at `x` (the active
    /// bounds), so that `g.d` is the true slope of the projected path at its start.
    pub fn freeze_active(&self, x: &[f32], d: &mut [f32]) {
        for ((xs, ds), &(lo, hi)) in x
            .chunks_exact(self.plane)
            .zip(d.chunks_exact_mut(self.plane))
            .zip(&self.channels)
        {
            for (&x, d) in xs.iter().zip(ds) {
                if (x <= lo && *d < 0.0) || (x >= hi && *d > 0.0) {
                    *d = 0.0;
                }
            }
        }
    }

    /// Clamps `x` into the box.
    pub fn project(&self, x: &mut [f32]) {
        for (plane, &(lo, hi)) in x.chunks_exact_mut(self.plane).zip(&self.channels) {
            for v in plane {
                *v = v.clamp(lo, hi);
            }
        }
    }
}

/// Which optimiser, with its settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Optimizer {
    /// Limited-memory BFGS.
    Lbfgs {
        /// Curvature pairs kept (neural-style and the paper's setups use 100).
        history: usize,
        /// Strong-Wolfe line search (torch's `line_search_fn="strong_wolfe"`); off by default.
        strong_wolfe: bool,
    },
    /// Adam, with `learning_rate` per channel in units of 0..255 pixel values.
    Adam {
        /// Step size in pixel units (neural-style's default is 10).
        learning_rate: f32,
    },
}

impl Default for Optimizer {
    fn default() -> Self {
        Optimizer::Lbfgs {
            history: 100,
            strong_wolfe: false,
        }
    }
}

/// Why the optimiser stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// The evaluation budget was spent.
    Budget,
    /// The gradient vanished (max |g| <= 1e-7) or steps became negligible.
    Converged,
}

/// Minimises `f` from `x` (updated in place) with at most `max_evals` evaluations.
/// `scale` gives, per channel, network units per pixel unit (used by Adam's learning rate).
pub fn minimize<E: From<CoreError>>(
    optimizer: Optimizer,
    x: &mut [f32],
    bounds: &Bounds,
    scale: [f32; 3],
    max_evals: usize,
    f: &mut EvalFn<'_, E>,
) -> Result<Stop, E> {
    if max_evals == 0 {
        return Ok(Stop::Budget);
    }
    bounds.project(x);
    match optimizer {
        Optimizer::Lbfgs {
            history,
            strong_wolfe,
        } => {
            if history == 0 {
                return Err(CoreError::InvalidOption {
                    option: "lbfgs-history",
                    reason: "must be at least 1".into(),
                }
                .into());
            }
            Lbfgs::new(history, x.len()).run(x, bounds, max_evals, strong_wolfe, f)
        }
        Optimizer::Adam { learning_rate } => {
            if !(learning_rate.is_finite() && learning_rate > 0.0) {
                return Err(CoreError::InvalidOption {
                    option: "learning-rate",
                    reason: format!("{learning_rate} is not a positive number"),
                }
                .into());
            }
            adam(x, bounds, scale, learning_rate, max_evals, f)
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&a, &b)| f64::from(a) * f64::from(b))
        .sum()
}

fn axpy(alpha: f64, x: &[f32], y: &mut [f32]) {
    let alpha = alpha as f32;
    for (y, &x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

fn max_abs(a: &[f32]) -> f32 {
    a.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

const TOLERANCE_GRAD: f32 = 1e-7;
const TOLERANCE_CHANGE: f64 = 1e-9;
/// A curvature pair is kept when `y.s` is above this (torch's rule).
const CURVATURE_MIN: f64 = 1e-10;

/// The L-BFGS memory and scratch buffers (allocated once per run).
struct Lbfgs {
    history: usize,
    /// `(s, y, 1 / y.s)`, oldest first.
    pairs: std::collections::VecDeque<(Vec<f32>, Vec<f32>, f64)>,
    h_diag: f64,
    alphas: Vec<f64>,
    d: Vec<f32>,
    x_prev: Vec<f32>,
    g_prev: Vec<f32>,
    /// Step length of the last step.
    t: f64,
}

impl Lbfgs {
    fn new(history: usize, n: usize) -> Self {
        Self {
            history,
            pairs: std::collections::VecDeque::with_capacity(history),
            h_diag: 1.0,
            alphas: vec![0.0; history],
            d: vec![0.0; n],
            x_prev: vec![0.0; n],
            g_prev: vec![0.0; n],
            t: 0.0,
        }
    }

    /// Adds the pair from the last step (`s = t d`, `y` the change of gradient), recycling
    /// the oldest buffers when full.
    fn update(&mut self, g: &[f32]) {
        let (mut s, mut y) = if self.pairs.len() == self.history {
            let (s, y, _) = self.pairs.pop_front().unwrap_or_default();
            (s, y)
        } else {
            (vec![0.0; g.len()], vec![0.0; g.len()])
        };
        // `t d`, not the difference of the iterates: torch's first step is ~1e-10 of the
        // pixel values, below float32's resolution of `x`.
        let t = self.t as f32;
        for i in 0..g.len() {
            s[i] = t * self.d[i];
            y[i] = g[i] - self.g_prev[i];
        }
        let ys = dot(&y, &s);
        if ys > CURVATURE_MIN {
            self.h_diag = ys / dot(&y, &y);
            self.pairs.push_back((s, y, 1.0 / ys));
        }
    }

    /// `d = -H g` by the two-loop recursion.
    fn direction(&mut self, g: &[f32]) {
        for (d, &g) in self.d.iter_mut().zip(g) {
            *d = -g;
        }
        for (i, (s, y, rho)) in self.pairs.iter().enumerate().rev() {
            let a = dot(s, &self.d) * rho;
            self.alphas[i] = a;
            axpy(-a, y, &mut self.d);
        }
        let h = self.h_diag as f32;
        for d in &mut self.d {
            *d *= h;
        }
        for (i, (s, y, rho)) in self.pairs.iter().enumerate() {
            let b = dot(y, &self.d) * rho;
            axpy(self.alphas[i] - b, s, &mut self.d);
        }
    }

    fn reset(&mut self) {
        self.pairs.clear();
        self.h_diag = 1.0;
    }

    fn run<E>(
        &mut self,
        x: &mut [f32],
        bounds: &Bounds,
        max_evals: usize,
        strong_wolfe: bool,
        f: &mut EvalFn<'_, E>,
    ) -> Result<Stop, E> {
        let n = x.len();
        let mut g = vec![0.0f32; n];
        let mut loss = f(x, &mut g)?;
        let mut evals = 1;
        let mut first = true;
        let mut ls = strong_wolfe.then(|| LineSearch::new(n));
        loop {
            if max_abs(&g) <= TOLERANCE_GRAD {
                return Ok(Stop::Converged);
            }
            if first {
                self.reset();
            } else {
                self.update(&g);
            }
            self.direction(&g);
            bounds.freeze_active(x, &mut self.d);
            let mut gtd = dot(&g, &self.d);
            if gtd > -TOLERANCE_CHANGE {
                // Projection can bend the curvature pairs; start again from steepest descent.
                self.reset();
                self.direction(&g);
                bounds.freeze_active(x, &mut self.d);
                gtd = dot(&g, &self.d);
                first = true;
                if gtd > -TOLERANCE_CHANGE {
                    return Ok(Stop::Converged);
                }
            }
            let t = if first {
                let l1: f64 = g.iter().map(|v| f64::from(v.abs())).sum();
                (1.0 / l1).min(1.0)
            } else {
                1.0
            };
            first = false;
            self.t = t;
            self.x_prev.copy_from_slice(x);
            self.g_prev.copy_from_slice(&g);
            match ls.as_mut() {
                None => {
                    axpy(t, &self.d, x);
                    bounds.project(x);
                    if evals == max_evals {
                        return Ok(Stop::Budget);
                    }
                    let moved = x
                        .iter()
                        .zip(&self.x_prev)
                        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
                    if f64::from(moved) <= TOLERANCE_CHANGE {
                        // Every component is pinned against the box: nothing left to do.
                        return Ok(Stop::Converged);
                    }
                    loss = f(x, &mut g)?;
                    evals += 1;
                }
                Some(ls) => {
                    let budget = max_evals - evals;
                    let (new_loss, used, accepted) = ls.search(
                        &self.x_prev,
                        &self.d,
                        t,
                        loss,
                        &self.g_prev,
                        gtd,
                        budget.min(25),
                        bounds,
                        x,
                        &mut g,
                        f,
                    )?;
                    evals += used;
                    loss = new_loss;
                    self.t = accepted;
                    if evals >= max_evals {
                        return Ok(Stop::Budget);
                    }
                }
            }
        }
    }
}

/// A point the line search evaluated: step, loss, directional derivative, gradient.
#[derive(Clone)]
struct Probe {
    t: f64,
    f: f64,
    gtd: f64,
    g: Vec<f32>,
}

/// torch.optim.LBFGS's `_strong_wolfe` (c1 = 1e-4, c2 = 0.9), on the projected path
/// `P(x + t d)`.
struct LineSearch {
    point: Vec<f32>,
}

fn cubic_interpolate(a: (f64, f64, f64), b: (f64, f64, f64), bounds: Option<(f64, f64)>) -> f64 {
    let ((x1, f1, g1), (x2, f2, g2)) = (a, b);
    let (lo, hi) = bounds.unwrap_or(if x1 <= x2 { (x1, x2) } else { (x2, x1) });
    let d1 = g1 + g2 - 3.0 * (f1 - f2) / (x1 - x2);
    let d2_square = d1 * d1 - g1 * g2;
    if d2_square >= 0.0 {
        let d2 = d2_square.sqrt();
        let min_pos = if x1 <= x2 {
            x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2.0 * d2))
        } else {
            x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2.0 * d2))
        };
        min_pos.max(lo).min(hi)
    } else {
        (lo + hi) / 2.0
    }
}

impl LineSearch {
    fn new(n: usize) -> Self {
        Self {
            point: vec![0.0; n],
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn probe<E>(
        &mut self,
        x0: &[f32],
        d: &[f32],
        t: f64,
        bounds: &Bounds,
        f: &mut EvalFn<'_, E>,
    ) -> Result<Probe, E> {
        self.point.copy_from_slice(x0);
        axpy(t, d, &mut self.point);
        bounds.project(&mut self.point);
        let mut g = vec![0.0; x0.len()];
        let loss = f(&self.point, &mut g)?;
        Ok(Probe {
            t,
            f: loss,
            gtd: dot(&g, d),
            g,
        })
    }

    /// Searches along `d` from `x0` (loss `f0`, gradient `g0`, slope `gtd0`) with at most
    /// `max_ls` evaluations; writes the accepted point into `x` and its gradient into `g`, and
    /// returns its loss, the evaluations used and its step length.
    #[allow(clippy::too_many_arguments)]
    fn search<E>(
        &mut self,
        x0: &[f32],
        d: &[f32],
        mut t: f64,
        f0: f64,
        g0: &[f32],
        gtd0: f64,
        max_ls: usize,
        bounds: &Bounds,
        x: &mut [f32],
        g: &mut [f32],
        f: &mut EvalFn<'_, E>,
    ) -> Result<(f64, usize, f64), E> {
        const C1: f64 = 1e-4;
        const C2: f64 = 0.9;
        let d_norm = f64::from(max_abs(d));
        let start = Probe {
            t: 0.0,
            f: f0,
            gtd: gtd0,
            g: g0.to_vec(),
        };
        let mut new = self.probe(x0, d, t, bounds, f)?;
        let mut evals = 1;
        let mut prev = start.clone();
        let mut ls_iter = 0;
        let mut done = false;
        let mut bracket: Vec<Probe>;
        loop {
            if ls_iter >= max_ls || evals >= max_ls {
                bracket = vec![start.clone(), new.clone()];
                break;
            }
            if new.f > f0 + C1 * t * gtd0 || (ls_iter > 1 && new.f >= prev.f) {
                bracket = vec![prev.clone(), new.clone()];
                break;
            }
            if new.gtd.abs() <= -C2 * gtd0 {
                bracket = vec![new.clone()];
                done = true;
                break;
            }
            if new.gtd >= 0.0 {
                bracket = vec![prev.clone(), new.clone()];
                break;
            }
            let min_step = t + 0.01 * (t - prev.t);
            let max_step = t * 10.0;
            t = cubic_interpolate(
                (prev.t, prev.f, prev.gtd),
                (t, new.f, new.gtd),
                Some((min_step, max_step)),
            );
            prev = new;
            new = self.probe(x0, d, t, bounds, f)?;
            evals += 1;
            ls_iter += 1;
        }
        // Zoom.
        let mut insuf_progress = false;
        let (mut low, mut high) = if bracket.len() == 2 && bracket[1].f < bracket[0].f {
            (1, 0)
        } else {
            (0, 1)
        };
        while !done && bracket.len() == 2 && evals < max_ls {
            let (b0, b1) = (&bracket[0], &bracket[1]);
            if (b1.t - b0.t).abs() * d_norm < TOLERANCE_CHANGE {
                break;
            }
            let mut t = cubic_interpolate((b0.t, b0.f, b0.gtd), (b1.t, b1.f, b1.gtd), None);
            let (bmax, bmin) = (b0.t.max(b1.t), b0.t.min(b1.t));
            let eps = 0.1 * (bmax - bmin);
            if (bmax - t).min(t - bmin) < eps {
                if insuf_progress || t >= bmax || t <= bmin {
                    t = if (t - bmax).abs() < (t - bmin).abs() {
                        bmax - eps
                    } else {
                        bmin + eps
                    };
                    insuf_progress = false;
                } else {
                    insuf_progress = true;
                }
            } else {
                insuf_progress = false;
            }
            let p = self.probe(x0, d, t, bounds, f)?;
            evals += 1;
            if p.f > f0 + C1 * t * gtd0 || p.f >= bracket[low].f {
                bracket[high] = p;
                (low, high) = if bracket[0].f <= bracket[1].f {
                    (0, 1)
                } else {
                    (1, 0)
                };
            } else {
                if p.gtd.abs() <= -C2 * gtd0 {
                    done = true;
                } else if p.gtd * (bracket[high].t - bracket[low].t) >= 0.0 {
                    bracket[high] = bracket[low].clone();
                }
                bracket[low] = p;
            }
        }
        let best = &bracket[low.min(bracket.len() - 1)];
        x.copy_from_slice(x0);
        axpy(best.t, d, x);
        bounds.project(x);
        g.copy_from_slice(&best.g);
        Ok((best.f, evals, best.t))
    }
}

fn adam<E>(
    x: &mut [f32],
    bounds: &Bounds,
    scale: [f32; 3],
    learning_rate: f32,
    max_evals: usize,
    f: &mut EvalFn<'_, E>,
) -> Result<Stop, E> {
    const BETA1: f32 = 0.9;
    const BETA2: f32 = 0.999;
    const EPS: f32 = 1e-8;
    let n = x.len();
    let mut g = vec![0.0f32; n];
    let mut m = vec![0.0f32; n];
    let mut v = vec![0.0f32; n];
    for step in 1..=max_evals {
        f(x, &mut g)?;
        let bc1 = 1.0 - BETA1.powi(step as i32);
        let bc2 = 1.0 - BETA2.powi(step as i32);
        for (c, &s) in scale.iter().enumerate() {
            let lr = learning_rate * s;
            let range = c * bounds.plane..(c + 1) * bounds.plane;
            for i in range {
                m[i] = BETA1 * m[i] + (1.0 - BETA1) * g[i];
                v[i] = BETA2 * v[i] + (1.0 - BETA2) * g[i] * g[i];
                let mhat = m[i] / bc1;
                let vhat = v[i] / bc2;
                x[i] -= lr * mhat / (vhat.sqrt() + EPS);
            }
        }
        bounds.project(x);
    }
    Ok(Stop::Budget)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ill-conditioned quadratic in a box: `sum_i c_i (x_i - m_i)^2`.
    fn quadratic(x: &[f32], g: &mut [f32]) -> Result<f64> {
        let mut loss = 0.0;
        for (i, (&v, g)) in x.iter().zip(g.iter_mut()).enumerate() {
            let c = 1.0 + (i % 7) as f32 * 3.0;
            let m = (i % 5) as f32 - 2.0;
            loss += f64::from(c * (v - m) * (v - m));
            *g = 2.0 * c * (v - m);
        }
        Ok(loss)
    }

    fn bounds(plane: usize) -> Bounds {
        Bounds {
            channels: [(-1.5, 1.5), (-3.0, 3.0), (-3.0, 3.0)],
            plane,
        }
    }

    fn check_solution(x: &[f32], tol: f32) {
        let b = bounds(x.len() / 3);
        for (i, &v) in x.iter().enumerate() {
            let (lo, hi) = b.channels[i / b.plane];
            let want = ((i % 5) as f32 - 2.0).clamp(lo, hi);
            assert!((v - want).abs() < tol, "x[{i}] = {v}, want {want}");
        }
    }

    #[test]
    fn lbfgs_solves_a_boxed_quadratic_within_budget() {
        for strong_wolfe in [false, true] {
            let mut x = vec![0.5f32; 30];
            let mut evals = 0;
            let opt = Optimizer::Lbfgs {
                history: 10,
                strong_wolfe,
            };
            let mut f = |x: &[f32], g: &mut [f32]| {
                evals += 1;
                quadratic(x, g)
            };
            minimize(opt, &mut x, &bounds(10), [1.0; 3], 200, &mut f).unwrap();
            assert!(evals <= 200, "{evals} evaluations");
            check_solution(&x, 1e-3);
        }
    }

    #[test]
    fn every_evaluation_counts_against_the_budget() {
        for opt in [
            Optimizer::default(),
            Optimizer::Lbfgs {
                history: 5,
                strong_wolfe: true,
            },
            Optimizer::Adam { learning_rate: 0.1 },
        ] {
            let mut x = vec![3.0f32; 30];
            let mut evals = 0;
            let mut f = |x: &[f32], g: &mut [f32]| {
                evals += 1;
                // Far from converged in 7 evaluations.
                quadratic(x, g).map(|l| l * 1e3)
            };
            minimize(opt, &mut x, &bounds(10), [1.0; 3], 7, &mut f).unwrap();
            assert_eq!(evals, 7, "{opt:?}");
            assert!(x.iter().all(|v| (-3.0..=3.0).contains(v)));
        }
    }

    #[test]
    fn adam_converges_and_stays_in_the_box() {
        let mut x = vec![0.0f32; 30];
        let opt = Optimizer::Adam {
            learning_rate: 0.05,
        };
        minimize(opt, &mut x, &bounds(10), [1.0; 3], 600, &mut quadratic).unwrap();
        check_solution(&x, 2e-2);
    }

    #[test]
    fn errors_from_the_objective_stop_the_run() {
        let mut x = vec![0.0f32; 3];
        let mut f = |_: &[f32], _: &mut [f32]| -> Result<f64> { Err(CoreError::Cancelled) };
        let err = minimize(
            Optimizer::default(),
            &mut x,
            &bounds(1),
            [1.0; 3],
            5,
            &mut f,
        );
        assert!(matches!(err, Err(CoreError::Cancelled)));
    }
}
