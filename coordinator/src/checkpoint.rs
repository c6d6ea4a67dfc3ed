//! Checkpoints of lock-step drivers ([`crate::lockstep`]): every so many iterations or seconds
//! a driver writes its image and, when they fit [`STATE_BUDGET`], its optimiser's vectors (the
//! L-BFGS pairs and gradient, or Adam's moments) to `<data_dir>/checkpoints/<job id>`, so that
//! a coordinator that restarts goes on from there, along the same path when the optimiser's
//! state was kept, instead of starting the print over. The file is written whole to a
//! temporary name, synced and renamed; it is deleted when the job's render ends.
//!
//! The format, little-endian: `SFCKPT01`; `u32` width, height, iterations asked and
//! evaluations made; a `u8` kind (0 the image alone, 1 L-BFGS, 2 Adam); the image (`3 W H`
//! float32, the network's input). Then for L-BFGS the loss (`f64`), whether the next step starts
//! afresh (`u8`), `h_diag` (`f64`), the pair count (`u32`), the gradient, and per pair
//! `1 / y.s` (`f64`), `s` and `y`; for Adam the step count (`u32`) and the two moments. A file
//! that does not match its job exactly is ignored.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use stylefarm_core::optim::{
    AdamState, LbfgsState, Optimizer, OptimizerState, Resume, Snapshot, StateRef,
};
use stylefarm_proto::ids::JobId;

/// The most bytes of optimiser state a checkpoint holds; past it, only the image is saved and
/// a resumed render starts its optimiser afresh from it.
pub(crate) const STATE_BUDGET: u64 = 2 << 30;

const MAGIC: &[u8; 8] = b"SFCKPT01";

/// Where and how often drivers save checkpoints.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    /// `<data_dir>/checkpoints`.
    pub(crate) dir: PathBuf,
    /// A checkpoint is due after this many evaluations (0: never by count)...
    pub(crate) every_iterations: u32,
    /// ...or this long after the last one, whichever comes first.
    pub(crate) every: Duration,
    /// The most optimiser state a checkpoint keeps ([`STATE_BUDGET`]).
    pub(crate) state_budget: u64,
}

impl Policy {
    fn path(&self, job: JobId) -> PathBuf {
        self.dir.join(job.to_string())
    }
}

/// What a job's render is, so that a checkpoint is only taken up by the same render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Render {
    pub(crate) width: u32,
    pub(crate) height: u32,
    pub(crate) iterations: u32,
}

/// A checkpoint read back: the image and where the optimiser goes on from.
pub(crate) struct Saved {
    pub(crate) x: Vec<f32>,
    pub(crate) resume: Resume,
}

/// The checkpoint of `job`, if one was saved for this render and fits `optimizer`.
pub(crate) fn load(
    policy: &Policy,
    job: JobId,
    render: Render,
    optimizer: Optimizer,
) -> Option<Saved> {
    let path = policy.path(job);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(job_id = %job, path = %path.display(), error = %e, "cannot open a lock-step checkpoint; starting over");
            return None;
        }
    };
    match read(
        &mut BufReader::with_capacity(1 << 20, file),
        render,
        optimizer,
    ) {
        Ok(saved) => Some(saved),
        Err(e) => {
            tracing::warn!(job_id = %job, path = %path.display(), error = %e, "a lock-step checkpoint does not fit its job; starting over");
            None
        }
    }
}

/// Deletes the checkpoint of `job`, if any.
pub(crate) fn remove(policy: &Policy, job: JobId) {
    let path = policy.path(job);
    match std::fs::remove_file(&path) {
        Ok(()) => tracing::info!(job_id = %job, "lock-step checkpoint deleted"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(job_id = %job, path = %path.display(), error = %e, "cannot delete a lock-step checkpoint")
        }
    }
}

/// Saves a driver's checkpoints when they are due.
pub(crate) struct Saver {
    policy: Policy,
    job: JobId,
    render: Render,
    last_evals: usize,
    last_at: Instant,
    /// No checkpoint before this: writing may take at most a tenth of the render's time.
    not_before: Instant,
}

impl Saver {
    /// A saver for `job`'s render, which starts at `evals` evaluations made.
    pub(crate) fn new(policy: Policy, job: JobId, render: Render, evals: usize) -> Self {
        let now = Instant::now();
        Self {
            policy,
            job,
            render,
            last_evals: evals,
            last_at: now,
            not_before: now,
        }
    }

    /// Saves `snapshot` when a checkpoint is due. A failure is logged: the render goes on.
    pub(crate) fn offer(&mut self, snapshot: Snapshot<'_>) {
        let every = self.policy.every_iterations as usize;
        let now = Instant::now();
        let due = (every > 0 && snapshot.evals >= self.last_evals + every)
            || now.duration_since(self.last_at) >= self.policy.every;
        if !due || now < self.not_before || snapshot.evals >= self.render.iterations as usize {
            return;
        }
        let path = self.policy.path(self.job);
        let with_state = snapshot.state.bytes() <= self.policy.state_budget;
        match save(&path, self.render, snapshot, with_state) {
            Ok(()) => {
                let took = now.elapsed();
                tracing::info!(job_id = %self.job, iter = snapshot.evals, with_state, seconds = took.as_secs_f64(), "lock-step checkpoint saved");
                self.last_evals = snapshot.evals;
                self.last_at = Instant::now();
                self.not_before = self.last_at + 9 * took;
            }
            Err(e) => {
                tracing::warn!(job_id = %self.job, path = %path.display(), error = %e, "cannot save a lock-step checkpoint");
                self.last_evals = snapshot.evals;
                self.last_at = Instant::now();
            }
        }
    }
}

/// Writes a checkpoint to a temporary file next to `path`, syncs it and renames it over
/// `path`, so that `path` always holds a whole checkpoint.
fn save(path: &Path, render: Render, s: Snapshot<'_>, with_state: bool) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("a checkpoint path without a folder"))?;
    std::fs::create_dir_all(dir)?;
    let temporary = path.with_extension("partial");
    let mut w = BufWriter::with_capacity(1 << 20, File::create(&temporary)?);
    w.write_all(MAGIC)?;
    let evals = u32::try_from(s.evals).map_err(io::Error::other)?;
    for v in [render.width, render.height, render.iterations, evals] {
        w.write_all(&v.to_le_bytes())?;
    }
    let state = with_state.then_some(s.state);
    w.write_all(&[match state {
        None => 0,
        Some(StateRef::Lbfgs(_)) => 1,
        Some(StateRef::Adam(_)) => 2,
    }])?;
    write_f32s(&mut w, s.x)?;
    match state {
        None => {}
        Some(StateRef::Lbfgs(l)) => {
            w.write_all(&l.loss.to_le_bytes())?;
            w.write_all(&[u8::from(l.first)])?;
            w.write_all(&l.h_diag.to_le_bytes())?;
            let pairs = u32::try_from(l.pairs.len()).map_err(io::Error::other)?;
            w.write_all(&pairs.to_le_bytes())?;
            write_f32s(&mut w, &l.grad)?;
            for (s, y, rho) in &l.pairs {
                w.write_all(&rho.to_le_bytes())?;
                write_f32s(&mut w, s)?;
                write_f32s(&mut w, y)?;
            }
        }
        Some(StateRef::Adam(a)) => {
            w.write_all(&a.step.to_le_bytes())?;
            write_f32s(&mut w, &a.m)?;
            write_f32s(&mut w, &a.v)?;
        }
    }
    let file = w.into_inner().map_err(io::IntoInnerError::into_error)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)?;
    // The rename itself is durable once the folder is synced.
    File::open(dir)?.sync_all()
}

fn write_f32s(w: &mut impl Write, values: &[f32]) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(4 * values.len().min(1 << 16));
    for chunk in values.chunks(1 << 16) {
        bytes.clear();
        bytes.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
        w.write_all(&bytes)?;
    }
    Ok(())
}

fn read(r: &mut impl Read, render: Render, optimizer: Optimizer) -> io::Result<Saved> {
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(bad("not a stylefarm checkpoint"));
    }
    let saved = Render {
        width: read_u32(r)?,
        height: read_u32(r)?,
        iterations: read_u32(r)?,
    };
    if saved != render {
        return Err(bad("made for another render"));
    }
    let evals = read_u32(r)?;
    if evals == 0 || evals >= render.iterations {
        return Err(bad("at no iteration of the render"));
    }
    let kind = read_u8(r)?;
    let n = 3 * render.width as usize * render.height as usize;
    let x = read_f32s(r, n)?;
    let state = match (kind, optimizer) {
        (0, _) => None,
        (1, Optimizer::Lbfgs { history, .. }) => {
            let loss = read_f64(r)?;
            let first = read_u8(r)? != 0;
            let h_diag = read_f64(r)?;
            let count = read_u32(r)? as usize;
            if count > history {
                return Err(bad("more L-BFGS pairs than the render keeps"));
            }
            let grad = read_f32s(r, n)?;
            let mut pairs = VecDeque::with_capacity(count);
            for _ in 0..count {
                let rho = read_f64(r)?;
                pairs.push_back((read_f32s(r, n)?, read_f32s(r, n)?, rho));
            }
            Some(OptimizerState::Lbfgs(LbfgsState {
                loss,
                grad,
                first,
                h_diag,
                pairs,
            }))
        }
        (2, Optimizer::Adam { .. }) => {
            let step = read_u32(r)?;
            let m = read_f32s(r, n)?;
            let v = read_f32s(r, n)?;
            Some(OptimizerState::Adam(AdamState { step, m, v }))
        }
        _ => return Err(bad("the state of another optimiser")),
    };
    if r.read(&mut [0u8; 1])? != 0 {
        return Err(bad("longer than its contents"));
    }
    Ok(Saved {
        x,
        resume: Resume {
            evals: evals as usize,
            state,
        },
    })
}

fn read_u8(r: &mut impl Read) -> io::Result<u8> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b)?;
    Ok(b[0])
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_f64(r: &mut impl Read) -> io::Result<f64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(f64::from_le_bytes(b))
}

fn read_f32s(r: &mut impl Read, n: usize) -> io::Result<Vec<f32>> {
    let mut out = Vec::with_capacity(n);
    let mut bytes = vec![0u8; 4 * n.min(1 << 16)];
    while out.len() < n {
        let chunk = &mut bytes[..4 * (n - out.len()).min(1 << 16)];
        r.read_exact(chunk)?;
        out.extend(
            chunk
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RENDER: Render = Render {
        width: 4,
        height: 2,
        iterations: 10,
    };

    fn policy(dir: &Path, state_budget: u64) -> Policy {
        Policy {
            dir: dir.join("checkpoints"),
            every_iterations: 3,
            every: Duration::from_secs(3600),
            state_budget,
        }
    }

    fn values(n: usize, k: f32) -> Vec<f32> {
        (0..n).map(|i| i as f32 * 0.5 + k).collect()
    }

    #[test]
    fn a_checkpoint_reads_back_as_it_was_saved() {
        let dir = tempfile::tempdir().unwrap();
        let job = JobId::new();
        let x = values(24, 0.25);
        let lbfgs = LbfgsState {
            loss: 12.5,
            grad: values(24, -1.0),
            first: false,
            h_diag: 0.125,
            pairs: [(values(24, 1.0), values(24, 2.0), 3.5)].into(),
        };
        let adam = AdamState {
            step: 4,
            m: values(24, 3.0),
            v: values(24, 4.0),
        };
        let cases = [
            (StateRef::Lbfgs(&lbfgs), Optimizer::default()),
            (
                StateRef::Adam(&adam),
                Optimizer::Adam { learning_rate: 1.0 },
            ),
        ];
        for (state, optimizer) in cases {
            let p = policy(dir.path(), STATE_BUDGET);
            let mut saver = Saver::new(p.clone(), job, RENDER, 0);
            // Not due before three evaluations.
            saver.offer(Snapshot {
                evals: 2,
                x: &x,
                state,
            });
            assert!(load(&p, job, RENDER, optimizer).is_none());
            saver.offer(Snapshot {
                evals: 3,
                x: &x,
                state,
            });
            let saved = load(&p, job, RENDER, optimizer).unwrap();
            assert_eq!(saved.x, x);
            assert_eq!(saved.resume.evals, 3);
            assert_eq!(saved.resume.state, Some(state.to_owned()));
            // Another render, or another optimiser, does not take it up.
            let other = Render {
                iterations: 11,
                ..RENDER
            };
            assert!(load(&p, job, other, optimizer).is_none());
            let lbfgs_1 = Optimizer::Lbfgs {
                history: 0,
                strong_wolfe: false,
            };
            assert!(load(&p, job, RENDER, lbfgs_1).is_none());
            remove(&p, job);
            assert!(load(&p, job, RENDER, optimizer).is_none());
        }
    }

    #[test]
    fn a_state_over_the_budget_leaves_the_image_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (job, p) = (JobId::new(), policy(dir.path(), 100));
        let x = values(24, 0.0);
        let adam = AdamState {
            step: 4,
            m: values(24, 3.0),
            v: values(24, 4.0),
        };
        let mut saver = Saver::new(p.clone(), job, RENDER, 0);
        saver.offer(Snapshot {
            evals: 5,
            x: &x,
            state: StateRef::Adam(&adam),
        });
        let saved = load(&p, job, RENDER, Optimizer::Adam { learning_rate: 1.0 }).unwrap();
        assert_eq!((saved.x, saved.resume.evals), (x, 5));
        assert_eq!(saved.resume.state, None);
    }

    #[test]
    fn a_cut_or_foreign_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let (job, p) = (JobId::new(), policy(dir.path(), STATE_BUDGET));
        let x = values(24, 0.0);
        let adam = AdamState {
            step: 1,
            m: values(24, 3.0),
            v: values(24, 4.0),
        };
        let mut saver = Saver::new(p.clone(), job, RENDER, 0);
        saver.offer(Snapshot {
            evals: 3,
            x: &x,
            state: StateRef::Adam(&adam),
        });
        let path = p.path(job);
        let whole = std::fs::read(&path).unwrap();
        let adam_opt = Optimizer::Adam { learning_rate: 1.0 };
        for broken in [
            &whole[..whole.len() - 1],
            &[whole.as_slice(), &[0]].concat(),
            b"not a checkpoint".as_slice(),
        ] {
            std::fs::write(&path, broken).unwrap();
            assert!(load(&p, job, RENDER, adam_opt).is_none());
        }
    }
}
