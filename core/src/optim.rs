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
//!
//! [`minimize_from`] shows the caller the optimiser's state between two steps ([`Snapshot`])
//! and goes on from one ([`Resume`]): a lock-step driver's checkpoint continues the same
//! trajectory after a restart.

use serde::{Deserialize, Serialize};

use std::collections::VecDeque;

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
    minimize_from(
        optimizer,
        x,
        bounds,
        scale,
        max_evals,
        f,
        Resume::default(),
        &mut |_| Ok(()),
    )
}

/// The state of L-BFGS between two steps: after its curvature pairs took in the last step,
/// before the next direction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LbfgsState {
    /// The loss at the image.
    pub loss: f64,
    /// The gradient at the image.
    pub grad: Vec<f32>,
    /// Whether the next step starts afresh (steepest descent, its length scaled by the
    /// gradient).
    pub first: bool,
    /// The scale of the initial inverse Hessian, `y.s / y.y` of the newest pair.
    pub h_diag: f64,
    /// The curvature pairs `(s, y, 1 / y.s)`, oldest first.
    pub pairs: VecDeque<(Vec<f32>, Vec<f32>, f64)>,
}

/// The state of Adam after a step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AdamState {
    /// The steps these moments have seen (their bias correction).
    pub step: u32,
    /// The first moment.
    pub m: Vec<f32>,
    /// The second moment.
    pub v: Vec<f32>,
}

/// An optimiser's state between two steps, enough (with the image) to go on along the same
/// trajectory.
#[derive(Debug, Clone, PartialEq)]
pub enum OptimizerState {
    /// L-BFGS's.
    Lbfgs(LbfgsState),
    /// Adam's.
    Adam(AdamState),
}

/// Where a run of [`minimize_from`] starts: the evaluations already made (they count against
/// its budget) and the optimiser's state then; without a state the optimiser starts afresh
/// from the image.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resume {
    /// Evaluations made before.
    pub evals: usize,
    /// The optimiser's state after them.
    pub state: Option<OptimizerState>,
}

/// What the optimiser shows between two steps.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot<'a> {
    /// Evaluations made so far.
    pub evals: usize,
    /// The image.
    pub x: &'a [f32],
    /// The optimiser's state.
    pub state: StateRef<'a>,
}

/// An optimiser's state, borrowed (see [`OptimizerState`]).
#[derive(Debug, Clone, Copy)]
pub enum StateRef<'a> {
    /// L-BFGS's.
    Lbfgs(&'a LbfgsState),
    /// Adam's.
    Adam(&'a AdamState),
}

impl StateRef<'_> {
    /// The bytes its vectors take.
    pub fn bytes(self) -> u64 {
        let floats = match self {
            StateRef::Lbfgs(s) => {
                s.grad.len()
                    + s.pairs
                        .iter()
                        .map(|(s, y, _)| s.len() + y.len())
                        .sum::<usize>()
            }
            StateRef::Adam(s) => s.m.len() + s.v.len(),
        };
        4 * floats as u64
    }

    /// The state, copied.
    pub fn to_owned(self) -> OptimizerState {
        match self {
            StateRef::Lbfgs(s) => OptimizerState::Lbfgs(s.clone()),
            StateRef::Adam(s) => OptimizerState::Adam(s.clone()),
        }
    }
}

/// [`minimize`] from `resume` (`x` the image then), showing `between` the state between every
/// two steps; an error from `between` stops the run. The same state and image give the same
/// steps as the run that left them.
///
/// # Errors
/// What `f` or `between` returns; an invalid setting; a state of another optimiser, or of
/// another size than `x`.
#[allow(clippy::too_many_arguments)] // `minimize`'s, and where to start and whom to show
pub fn minimize_from<E: From<CoreError>>(
    optimizer: Optimizer,
    x: &mut [f32],
    bounds: &Bounds,
    scale: [f32; 3],
    max_evals: usize,
    f: &mut EvalFn<'_, E>,
    resume: Resume,
    between: &mut dyn FnMut(Snapshot<'_>) -> Result<(), E>,
) -> Result<Stop, E> {
    if max_evals <= resume.evals {
        return Ok(Stop::Budget);
    }
    bounds.project(x);
    let n = x.len();
    let refused = |reason: &str| -> E {
        CoreError::InvalidOption {
            option: "checkpoint",
            reason: reason.into(),
        }
        .into()
    };
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
            let state = match resume.state {
                None => None,
                Some(OptimizerState::Lbfgs(s))
                    if s.grad.len() == n
                        && s.pairs.len() <= history
                        && s.pairs.iter().all(|(s, y, _)| s.len() == n && y.len() == n) =>
                {
                    Some(s)
                }
                Some(_) => return Err(refused("the saved state is not this L-BFGS's")),
            };
            let run = Run {
                max_evals,
                evals: resume.evals,
                strong_wolfe,
            };
            Lbfgs::new(history, n).run(x, bounds, run, state, f, between)
        }
        Optimizer::Adam { learning_rate } => {
            if !(learning_rate.is_finite() && learning_rate > 0.0) {
                return Err(CoreError::InvalidOption {
                    option: "learning-rate",
                    reason: format!("{learning_rate} is not a positive number"),
                }
                .into());
            }
            let state = match resume.state {
                None => AdamState {
                    step: 0,
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                },
                Some(OptimizerState::Adam(s)) if s.m.len() == n && s.v.len() == n => s,
                Some(_) => return Err(refused("the saved state is not this Adam's")),
            };
            let run = Run {
                max_evals,
                evals: resume.evals,
                strong_wolfe: false,
            };
            adam(x, bounds, scale, learning_rate, run, state, f, between)
        }
    }
}

/// The budget of a run and how far it is.
#[derive(Debug, Clone, Copy)]
struct Run {
    max_evals: usize,
    /// Evaluations made before this run.
    evals: usize,
    strong_wolfe: bool,
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
    /// What a [`Snapshot`] shows: the loss, gradient and curvature pairs.
    state: LbfgsState,
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
            state: LbfgsState {
                loss: 0.0,
                grad: vec![0.0; n],
                first: true,
                h_diag: 1.0,
                pairs: VecDeque::with_capacity(history),
            },
            alphas: vec![0.0; history],
            d: vec![0.0; n],
            x_prev: vec![0.0; n],
            g_prev: vec![0.0; n],
            t: 0.0,
        }
    }

    /// Adds the pair from the last step (`s = t d`, `y` the change of gradient), recycling
    /// the oldest buffers when full.
    fn update(&mut self) {
        let st = &mut self.state;
        let g = &st.grad;
        let (mut s, mut y) = if st.pairs.len() == self.history {
            let (s, y, _) = st.pairs.pop_front().unwrap_or_default();
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
            st.h_diag = ys / dot(&y, &y);
            st.pairs.push_back((s, y, 1.0 / ys));
        }
    }

    /// `d = -H g` by the two-loop recursion.
    fn direction(&mut self) {
        let st = &self.state;
        for (d, &g) in self.d.iter_mut().zip(&st.grad) {
            *d = -g;
        }
        for (i, (s, y, rho)) in st.pairs.iter().enumerate().rev() {
            let a = dot(s, &self.d) * rho;
            self.alphas[i] = a;
            axpy(-a, y, &mut self.d);
        }
        let h = st.h_diag as f32;
        for d in &mut self.d {
            *d *= h;
        }
        for (i, (s, y, rho)) in st.pairs.iter().enumerate() {
            let b = dot(y, &self.d) * rho;
            axpy(self.alphas[i] - b, s, &mut self.d);
        }
    }

    fn reset(&mut self) {
        self.state.pairs.clear();
        self.state.h_diag = 1.0;
    }

    /// Runs from `x`, or from `resumed` (the state a [`Snapshot`] showed at `x`).
    fn run<E>(
        &mut self,
        x: &mut [f32],
        bounds: &Bounds,
        run: Run,
        resumed: Option<LbfgsState>,
        f: &mut EvalFn<'_, E>,
        between: &mut dyn FnMut(Snapshot<'_>) -> Result<(), E>,
    ) -> Result<Stop, E> {
        let (max_evals, mut evals) = (run.max_evals, run.evals);
        let mut ls = run.strong_wolfe.then(|| LineSearch::new(x.len()));
        // A resumed state is where a snapshot was taken: its pairs already hold the last step.
        let mut fresh = resumed.is_none();
        match resumed {
            Some(state) => self.state = state,
            None => {
                self.state.loss = f(x, &mut self.state.grad)?;
                self.state.first = true;
                evals += 1;
            }
        }
        loop {
            if fresh {
                if max_abs(&self.state.grad) <= TOLERANCE_GRAD {
                    return Ok(Stop::Converged);
                }
                if self.state.first {
                    self.reset();
                } else {
                    self.update();
                }
                between(Snapshot {
                    evals,
                    x,
                    state: StateRef::Lbfgs(&self.state),
                })?;
            }
            fresh = true;
            self.direction();
            bounds.freeze_active(x, &mut self.d);
            let mut gtd = dot(&self.state.grad, &self.d);
            if gtd > -TOLERANCE_CHANGE {
                // Projection can bend the curvature pairs; start again from steepest descent.
                self.reset();
                self.direction();
                bounds.freeze_active(x, &mut self.d);
                gtd = dot(&self.state.grad, &self.d);
                self.state.first = true;
                if gtd > -TOLERANCE_CHANGE {
                    return Ok(Stop::Converged);
                }
            }
            let t = if self.state.first {
                let l1: f64 = self.state.grad.iter().map(|v| f64::from(v.abs())).sum();
                (1.0 / l1).min(1.0)
            } else {
                1.0
            };
            self.state.first = false;
            self.t = t;
            self.x_prev.copy_from_slice(x);
            self.g_prev.copy_from_slice(&self.state.grad);
            match ls.as_mut() {
                None => {
                    axpy(t, &self.d, x);
                    bounds.project(x);
                    if evals >= max_evals {
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
                    self.state.loss = f(x, &mut self.state.grad)?;
                    evals += 1;
                }
                Some(ls) => {
                    let budget = max_evals - evals;
                    let (new_loss, used, accepted) = ls.search(
                        &self.x_prev,
                        &self.d,
                        t,
                        self.state.loss,
                        &self.g_prev,
                        gtd,
                        budget.min(25),
                        bounds,
                        x,
                        &mut self.state.grad,
                        f,
                    )?;
                    evals += used;
                    self.state.loss = new_loss;
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

#[allow(clippy::too_many_arguments)] // `minimize_from`'s, unpacked
fn adam<E>(
    x: &mut [f32],
    bounds: &Bounds,
    scale: [f32; 3],
    learning_rate: f32,
    run: Run,
    mut state: AdamState,
    f: &mut EvalFn<'_, E>,
    between: &mut dyn FnMut(Snapshot<'_>) -> Result<(), E>,
) -> Result<Stop, E> {
    const BETA1: f32 = 0.9;
    const BETA2: f32 = 0.999;
    const EPS: f32 = 1e-8;
    let mut g = vec![0.0f32; x.len()];
    for evals in run.evals + 1..=run.max_evals {
        f(x, &mut g)?;
        state.step += 1;
        let bc1 = 1.0 - BETA1.powi(state.step as i32);
        let bc2 = 1.0 - BETA2.powi(state.step as i32);
        let AdamState { m, v, .. } = &mut state;
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
        if evals < run.max_evals {
            between(Snapshot {
                evals,
                x,
                state: StateRef::Adam(&state),
            })?;
        }
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

    /// A run stopped at a snapshot and resumed from it (the state and the image written out
    /// and read back as a checkpoint would) ends where the uninterrupted run ends, bit for bit.
    #[test]
    fn a_run_resumed_from_a_snapshot_goes_on_along_the_same_path() {
        for opt in [
            Optimizer::Lbfgs {
                history: 4,
                strong_wolfe: false,
            },
            Optimizer::Lbfgs {
                history: 4,
                strong_wolfe: true,
            },
            Optimizer::Adam { learning_rate: 0.1 },
        ] {
            let hard = |x: &[f32], g: &mut [f32]| quadratic(x, g).map(|l| l * 1e3);
            let mut whole = vec![3.0f32; 30];
            let mut total = 0;
            let mut counted = |x: &[f32], g: &mut [f32]| {
                total += 1;
                hard(x, g)
            };
            minimize(opt, &mut whole, &bounds(10), [1.0; 3], 20, &mut counted).unwrap();

            let mut x = vec![3.0f32; 30];
            let mut saved = None;
            let mut stop_at_8 = |s: Snapshot<'_>| {
                if s.evals >= 8 {
                    saved = Some((s.x.to_vec(), s.evals, s.state.to_owned()));
                    return Err(CoreError::Cancelled);
                }
                Ok(())
            };
            let stopped = minimize_from(
                opt,
                &mut x,
                &bounds(10),
                [1.0; 3],
                20,
                &mut hard.clone(),
                Resume::default(),
                &mut stop_at_8,
            );
            assert!(matches!(stopped, Err(CoreError::Cancelled)), "{opt:?}");
            let (mut x, evals, state) = saved.unwrap();
            let mut evaluated = 0;
            let mut f = |x: &[f32], g: &mut [f32]| {
                evaluated += 1;
                hard(x, g)
            };
            let resume = Resume {
                evals,
                state: Some(state),
            };
            minimize_from(
                opt,
                &mut x,
                &bounds(10),
                [1.0; 3],
                20,
                &mut f,
                resume,
                &mut |_| Ok(()),
            )
            .unwrap();
            assert_eq!(x, whole, "{opt:?}");
            assert_eq!(evals + evaluated, total, "{opt:?}");
        }
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
