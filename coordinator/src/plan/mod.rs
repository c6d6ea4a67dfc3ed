//! How a checked job becomes tasks: one per frame; a chain per frame for coarse-to-fine
//! stages; for big prints, the whole image's style targets, a shard per worker and the
//! coordinator's driver per frame (tiles in lock step); one task per point of a parameter
//! sweep plus a contact sheet; a chain of frames for temporal video. Dependencies are indices
//! of earlier tasks of the job (see [`crate::scheduler`]).
//!
//! The plan is also what `PlanJob` answers (`stylefarm submit --dry-run`): each task with the
//! pixels it optimises and rough estimates of its peak memory and time.
//!
//! Here: the frames of a plain or temporal job and the estimates; a module per other kind of
//! job ([`tiles`], [`sweep`], [`stages`]).

use stylefarm_core::image_io::fit_max_side;
use stylefarm_core::settings::RenderSettings;
use stylefarm_core::tiles::{estimated_memory_bytes, estimated_seconds, gram_piece};
use stylefarm_proto::v1::{self, task_spec::Part};

use crate::error::{CoordinatorError, Result};
use crate::scheduler::TaskKind;

mod stages;
mod sweep;
mod tiles;

use stages::plan_stages;
use sweep::plan_sweep;
use tiles::{auto_tiles, driver_memory_bytes, plan_lockstep};

/// Smallest tile side: VGG's fifth block needs 16 px, and a tile much smaller than the
/// network's receptive field has little room for style.
pub(crate) const MIN_TILE_SIZE: u32 = 64;

/// The overlap used when the coordinator picks the tile size itself.
fn default_overlap(tile_size: u32) -> u32 {
    tile_size / 8
}

/// The sweepable parameters, as named on the command line.
pub(crate) const SWEEP_PARAMETERS: [&str; 8] = [
    "content-weight",
    "style-weight",
    "tv-weight",
    "style-scale",
    "learning-rate",
    "num-iterations",
    "image-size",
    "seed",
];

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> CoordinatorError {
    CoordinatorError::invalid(field, reason)
}

/// What the farm has now, as planning needs it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FarmSize {
    /// The most memory a live worker reports, bytes (0: none says).
    pub(crate) max_worker_memory: u64,
    /// Live workers.
    pub(crate) workers: usize,
}

/// What the planner needs besides the spec.
#[derive(Debug, Clone)]
pub(crate) struct PlanInputs<'a> {
    /// The checked engine settings of the job.
    pub(crate) settings: &'a RenderSettings,
    /// `(width, height)` of each content image, as stored.
    pub(crate) content_dims: &'a [(u32, u32)],
    /// Output file name of each frame.
    pub(crate) names: &'a [String],
    /// The live workers: the most memory one reports decides the tile size when the job
    /// gives none; their number, the shards of tiles in lock step (at least one).
    pub(crate) farm: FarmSize,
    /// The most tasks a job may have.
    pub(crate) max_tasks: usize,
}

/// The tasks of a job and what `PlanJob` says about them.
#[derive(Debug, Clone)]
pub(crate) struct Planned {
    pub(crate) tasks: Vec<v1::TaskSpec>,
    pub(crate) response: v1::PlanJobResponse,
    /// The tiles the coordinator picked for a job that gave none and needs them: the job's
    /// spec shows them.
    pub(crate) picked_tiles: Option<v1::TileOptions>,
}

/// A task being built, with its size for the estimates.
struct Draft {
    spec: v1::TaskSpec,
    width: u32,
    height: u32,
}

impl Draft {
    /// The iterations the task runs: its own settings' (a sweep point or a stage sets them),
    /// else the job's `default`.
    fn iterations(&self, default: u32) -> u32 {
        self.spec
            .settings
            .as_ref()
            .and_then(|s| s.num_iterations)
            .unwrap_or(default)
    }
}

struct Builder<'a> {
    job: &'a v1::JobSpec,
    inputs: &'a PlanInputs<'a>,
    drafts: Vec<Draft>,
}

impl Builder<'_> {
    /// A task of frame `frame` with `settings`, returning its index.
    fn push(
        &mut self,
        frame: usize,
        settings: v1::RenderSettings,
        part: Part,
        output_name: String,
        (width, height): (u32, u32),
    ) -> u32 {
        let index = self.drafts.len() as u32;
        self.drafts.push(Draft {
            spec: v1::TaskSpec {
                content: self.job.content.get(frame).cloned(),
                styles: self.job.styles.clone(),
                init_image: self.job.init_image.clone(),
                settings: Some(settings),
                part: Some(part),
                output_name,
                required_memory_bytes: self.job.required_memory_bytes,
                depends_on: Vec::new(),
                intermediate: false,
                job_result: false,
                // The workers that may lease it: those of the job's device.
                device: self.job.device,
            },
            width,
            height,
        });
        index
    }

    fn last(&mut self) -> &mut v1::TaskSpec {
        // Called right after a push.
        &mut self.drafts.last_mut().expect("a task was just pushed").spec
    }

    fn check_count(&self) -> Result<()> {
        if self.drafts.len() > self.inputs.max_tasks {
            return Err(CoordinatorError::LimitExceeded(format!(
                "the job would have {} tasks, over the limit of {} tasks per job",
                self.drafts.len(),
                self.inputs.max_tasks
            )));
        }
        Ok(())
    }
}

/// `name.png` -> `name{suffix}.png`.
fn suffixed(name: &str, suffix: &str) -> String {
    let stem = name.strip_suffix(".png").unwrap_or(name);
    format!("{stem}{suffix}.png")
}

/// Plans the tasks of `job` (already checked field by field; its blobs stored).
pub(crate) fn plan_tasks(job: &v1::JobSpec, inputs: &PlanInputs<'_>) -> Result<Planned> {
    let wire = job.settings.clone().unwrap_or_default();
    let settings = inputs.settings;
    let tiles = job.tiles.unwrap_or_default();
    let scales = job.scales.clone().unwrap_or_default();
    let sweeping = !job.sweeps.is_empty();
    let staged = !scales.sizes.is_empty() || !scales.iterations.is_empty();
    if tiles.tile_size == 0 && tiles.tile_overlap > 0 {
        return Err(invalid(
            "spec.tiles.tile_overlap",
            "an overlap needs a tile size (spec.tiles.tile_size)",
        ));
    }
    let tiled = tiles.tile_size > 0;
    let combos = [
        (tiled, "spec.tiles", "tiles"),
        (sweeping, "spec.sweeps", "a sweep"),
        (staged, "spec.scales", "coarse-to-fine scales"),
        (job.temporal, "spec.temporal", "temporal rendering"),
    ];
    let chosen: Vec<_> = combos.iter().filter(|c| c.0).collect();
    if let [first, second, ..] = chosen.as_slice() {
        return Err(invalid(
            second.1,
            format!(
                "{} cannot be combined with {} in one job",
                second.2, first.2
            ),
        ));
    }
    if tiled {
        if tiles.tile_size < MIN_TILE_SIZE {
            return Err(invalid(
                "spec.tiles.tile_size",
                format!(
                    "{} px is below the smallest tile of {MIN_TILE_SIZE} px",
                    tiles.tile_size
                ),
            ));
        }
        if tiles.tile_overlap >= tiles.tile_size {
            return Err(invalid(
                "spec.tiles.tile_overlap",
                format!(
                    "{} px is not smaller than the tile size of {} px",
                    tiles.tile_overlap, tiles.tile_size
                ),
            ));
        }
    }

    let mut b = Builder {
        job,
        inputs,
        drafts: Vec::new(),
    };
    let mut response = v1::PlanJobResponse::default();
    let frames = inputs.content_dims.len();
    if let Some(&(w, h)) = inputs.content_dims.first() {
        (response.width, response.height) = fit_max_side(w, h, settings.image_size);
    }
    let mut chosen_tiles = None;
    if sweeping {
        plan_sweep(&mut b, &wire)?;
    } else if staged {
        plan_stages(&mut b, &wire, &scales)?;
    } else {
        let mut previous: Option<u32> = None;
        for frame in 0..frames {
            let (w, h) = inputs.content_dims[frame];
            let out = fit_max_side(w, h, settings.image_size);
            let name = inputs.names[frame].clone();
            let options = match tiles.tile_size {
                0 => auto_tiles(out, inputs.farm.max_worker_memory)?,
                _ => Some(tiles),
            };
            match options.filter(|t| out.0.max(out.1) > t.tile_size) {
                Some(t) => {
                    let (grid, tiles) = plan_lockstep(&mut b, &wire, frame, out, t, name)?;
                    if response.lockstep_tiles.is_empty() {
                        response.lockstep_tiles = tiles;
                    }
                    if chosen_tiles.is_none() {
                        chosen_tiles = Some((t, grid));
                    }
                }
                None => {
                    let part = Part::Frame(v1::Frame {
                        index: frame as u32,
                    });
                    let i = b.push(frame, wire.clone(), part, name, out);
                    if let Some(p) = previous.filter(|_| b.job.temporal) {
                        b.last().depends_on = vec![p];
                    }
                    previous = Some(i);
                }
            }
            b.check_count()?;
        }
        if frames == 1 {
            if let Some(d) = b.drafts.last_mut() {
                d.spec.job_result = true;
            }
        }
    }
    b.check_count()?;
    let drafts = b.drafts;
    let mut picked_tiles = None;
    if let Some((t, grid)) = chosen_tiles {
        response.tiles = Some(t);
        (response.tile_columns, response.tile_rows) = (grid.0 as u32, grid.1 as u32);
        if tiles.tile_size == 0 {
            picked_tiles = Some(t);
        }
    }
    // The drivers of lock-step frames run one after another or together: the largest, which
    // the first frame's is.
    response.coordinator_memory_bytes = drafts
        .iter()
        .filter(|d| matches!(TaskKind::of(&d.spec), Ok(TaskKind::Driver)))
        .map(|d| {
            let iterations = d.iterations(settings.num_iterations);
            driver_memory_bytes(d.width, d.height, settings, iterations)
        })
        .max()
        .unwrap_or(0);
    response.tasks = drafts
        .iter()
        .map(|d| {
            let own = TaskKind::of(&d.spec).is_ok_and(TaskKind::is_own);
            // The statistics count as one iteration: forward passes, about one evaluation.
            let iterations = d.iterations(settings.num_iterations);
            v1::PlannedTask {
                spec: Some(d.spec.clone()),
                width: d.width,
                height: d.height,
                estimated_memory_bytes: match &d.spec.part {
                    _ if own => 0,
                    Some(Part::Statistics(st)) => {
                        let (w, h) = gram_piece(st.full_width, st.full_height, st.piece_size);
                        estimated_memory_bytes(w, h)
                    }
                    _ => estimated_memory_bytes(d.width, d.height),
                },
                estimated_seconds: if own {
                    0.0
                } else if let Some(Part::Shard(sh)) = &d.spec.part {
                    // Its share of every tile's context, each evaluated forward twice and
                    // backward once: the most it takes, when the worker lacks the memory to
                    // keep the activations between the steps (a third more than a render).
                    let contexts: f64 = response
                        .lockstep_tiles
                        .iter()
                        .map(|r| estimated_seconds(r.width, r.height, iterations))
                        .sum();
                    contexts * 4.0 / 3.0 / f64::from(sh.count.max(1))
                } else {
                    estimated_seconds(d.width, d.height, iterations)
                },
            }
        })
        .collect();
    Ok(Planned {
        tasks: drafts.into_iter().map(|d| d.spec).collect(),
        response,
        picked_tiles,
    })
}

#[cfg(test)]
mod tests;
