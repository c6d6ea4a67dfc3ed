//! How a checked job becomes tasks: one per frame; a chain per frame for coarse-to-fine
//! stages; for big prints, the whole image's style targets, a shard per worker and the
//! coordinator's driver per frame (tiles in lock step); one task per point of a parameter
//! sweep plus a contact sheet; a chain of frames for temporal video. Dependencies are indices
//! of earlier tasks of the job (see [`crate::scheduler`]).
//!
//! The plan is also what `PlanJob` answers (`stylefarm submit --dry-run`): each task with the
//! pixels it optimises and rough estimates of its peak memory and time.

use std::collections::HashSet;

use stylefarm_convert::{rect_to_proto, settings_from_proto};
use stylefarm_core::image_io::fit_max_side;
use stylefarm_core::lockstep::{driver_optimizer, lockstep_tiles};
use stylefarm_core::settings::{RenderSettings, MAX_IMAGE_SIZE};
use stylefarm_core::tiles::{
    estimated_memory_bytes, estimated_seconds, gram_piece, tile_size_for_memory, GRAM_MARGIN,
};
use stylefarm_proto::v1::{self, task_spec::Part};

use crate::error::{CoordinatorError, Result};

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

/// What the planner needs besides the spec.
/// What the farm has now, as planning needs it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FarmSize {
    /// The most memory a live worker reports, bytes (0: none says).
    pub(crate) max_worker_memory: u64,
    /// Live workers.
    pub(crate) workers: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct PlanInputs<'a> {
    /// The checked engine settings of the job.
    pub(crate) settings: &'a RenderSettings,
    /// `(width, height)` of each content image, as stored.
    pub(crate) content_dims: &'a [(u32, u32)],
    /// Output file name of each frame.
    pub(crate) names: &'a [String],
    /// The most memory a live worker reports (0: none reports any).
    pub(crate) max_worker_memory: u64,
    /// Live workers: the shards of tiles in lock step (at least one).
    pub(crate) workers: usize,
    /// The most tasks a job may have.
    pub(crate) max_tasks: usize,
}

/// The tasks of a job and what `PlanJob` says about them.
#[derive(Debug, Clone)]
pub(crate) struct Planned {
    pub(crate) tasks: Vec<v1::TaskSpec>,
    pub(crate) response: v1::PlanJobResponse,
}

/// A task being built, with its size for the estimates.
struct Draft {
    spec: v1::TaskSpec,
    width: u32,
    height: u32,
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

/// Plans the tasks of `job` (already checked field by field; its blobs stored). May fill in
/// `job.tiles` when the coordinator picks the tile size.
pub(crate) fn plan_tasks(job: &mut v1::JobSpec, inputs: &PlanInputs<'_>) -> Result<Planned> {
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
                0 => auto_tiles(out, inputs.max_worker_memory)?,
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
    if let Some((t, grid)) = chosen_tiles {
        response.tiles = Some(t);
        (response.tile_columns, response.tile_rows) = (grid.0 as u32, grid.1 as u32);
        if tiles.tile_size == 0 {
            // The job's spec shows the tiles it got.
            job.tiles = Some(t);
        }
    }
    // The drivers of lock-step frames run one after another or together: the largest, which
    // the first frame's is.
    response.coordinator_memory_bytes = drafts
        .iter()
        .filter(|d| {
            matches!(&d.spec.part, Some(Part::Assemble(a)) if a.kind == v1::AssembleKind::Lockstep as i32)
        })
        .map(|d| {
            let iterations = d
                .spec
                .settings
                .as_ref()
                .and_then(|s| s.num_iterations)
                .unwrap_or(settings.num_iterations);
            driver_memory_bytes(d.width, d.height, settings, iterations)
        })
        .max()
        .unwrap_or(0);
    response.tasks = drafts
        .iter()
        .map(|d| {
            let assemble = matches!(d.spec.part, Some(Part::Assemble(_)));
            // The statistics count as one iteration: forward passes, about one evaluation.
            let iterations = d
                .spec
                .settings
                .as_ref()
                .and_then(|s| s.num_iterations)
                .unwrap_or(settings.num_iterations);
            v1::PlannedTask {
                spec: Some(d.spec.clone()),
                width: d.width,
                height: d.height,
                estimated_memory_bytes: match &d.spec.part {
                    Some(Part::Assemble(_)) => 0,
                    Some(Part::Statistics(st)) => {
                        let (w, h) = gram_piece(st.full_width, st.full_height, st.piece_size);
                        estimated_memory_bytes(w, h)
                    }
                    _ => estimated_memory_bytes(d.width, d.height),
                },
                estimated_seconds: if assemble {
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
    })
}

/// The coordinator's memory for a lock-step render of `w` x `h` (`joint::driver_optimizer`).
fn driver_memory_bytes(w: u32, h: u32, settings: &RenderSettings, iterations: u32) -> u64 {
    let pixels = u64::from(w) * u64::from(h);
    driver_optimizer(settings.optimizer, pixels, iterations).1
}

/// Whether the largest worker (`max_worker_memory` bytes, 0: none says) has the memory for
/// a render of the whole `w` x `h` image.
fn fits_one_worker((w, h): (u32, u32), max_worker_memory: u64) -> bool {
    max_worker_memory > 0 && estimated_memory_bytes(w, h) <= max_worker_memory
}

/// Tiles the coordinator picks for an output too big for every worker's memory (`None`: no
/// tiling needed, or no worker says how much memory it has).
fn auto_tiles((w, h): (u32, u32), max_worker_memory: u64) -> Result<Option<v1::TileOptions>> {
    if max_worker_memory == 0 || fits_one_worker((w, h), max_worker_memory) {
        return Ok(None);
    }
    let margin = |t| {
        lockstep_margin(&v1::TileOptions {
            tile_size: t,
            tile_overlap: default_overlap(t),
        })
    };
    let size = tile_size_for_memory(max_worker_memory, margin).ok_or_else(|| {
        CoordinatorError::LimitExceeded(format!(
            "no worker has the memory for even a {MIN_TILE_SIZE} px tile of the {w}x{h} output \
             (the largest reports {max_worker_memory} bytes)"
        ))
    })?;
    Ok(Some(v1::TileOptions {
        tile_size: size,
        tile_overlap: default_overlap(size),
    }))
}

/// The side of the pieces a statistics task takes the whole `w` x `h` image in: the whole
/// image at once (0) where a worker has the memory for it (as estimated for a render, which
/// needs more than its forward passes); else pieces that with their margins are no larger
/// than a tile's context (`tile_size` and `margin` on each side).
fn statistics_piece(b: &Builder<'_>, (w, h): (u32, u32), tile_size: u32, margin: u32) -> u32 {
    if fits_one_worker((w, h), b.inputs.max_worker_memory) {
        0
    } else {
        (tile_size + 2 * margin)
            .saturating_sub(2 * GRAM_MARGIN as u32)
            .max(MIN_TILE_SIZE)
    }
}

/// Pushes a statistics task of the whole image `part` describes (an intermediate result):
/// forward passes only, one step on a progress bar.
fn push_statistics(
    b: &mut Builder<'_>,
    wire: &v1::RenderSettings,
    frame: usize,
    part: v1::Statistics,
    output_name: String,
) -> u32 {
    let (w, h) = (part.full_width, part.full_height);
    let settings = v1::RenderSettings {
        image_size: Some(w.max(h)),
        num_iterations: Some(1),
        ..wire.clone()
    };
    let index = b.push(frame, settings, Part::Statistics(part), output_name, (w, h));
    b.last().intermediate = true;
    index
}

/// The margin of context around a tile in lock step: its features near the edge see that
/// much of their neighbourhood (the rest is zero padding).
fn lockstep_margin(t: &v1::TileOptions) -> u32 {
    t.tile_overlap.max(16)
}

/// Tiles in lock step (`stylefarm_core::lockstep`): the whole image's statistics (for its
/// style targets), one shard task per live worker (at most one per tile), and the
/// coordinator's driver, which optimises the whole image with the shards and whose result is
/// the frame's output. Returns the grid's `(columns, rows)` and the tiles' contexts.
fn plan_lockstep(
    b: &mut Builder<'_>,
    wire: &v1::RenderSettings,
    frame: usize,
    (w, h): (u32, u32),
    t: v1::TileOptions,
    name: String,
) -> Result<((usize, usize), Vec<v1::Rect>)> {
    let settings = b.inputs.settings;
    let align = settings.deepest_stride();
    let margin = lockstep_margin(&t);
    let tiles = lockstep_tiles(w, h, t.tile_size, margin, align)
        .map_err(|e| invalid("spec.tiles", e.to_string()))?;
    let columns = tiles.iter().filter(|r| r.core.y == 0).count();
    let rows = tiles.len() / columns.max(1);
    let part = v1::Statistics {
        full_width: w,
        full_height: h,
        piece_size: statistics_piece(b, (w, h), t.tile_size, margin),
        style_only: true,
    };
    let statistics = push_statistics(b, wire, frame, part, suffixed(&name, "_statistics"));
    let largest = tiles
        .iter()
        .map(|r| (r.context.width, r.context.height))
        .max_by_key(|&(w, h)| u64::from(w) * u64::from(h))
        .unwrap_or((w, h));
    let shards = b.inputs.workers.clamp(1, tiles.len());
    for index in 0..shards {
        let part = Part::Shard(v1::Shard {
            index: index as u32,
            count: shards as u32,
            full_width: w,
            full_height: h,
        });
        b.push(
            frame,
            wire.clone(),
            part,
            suffixed(&name, &format!("_shard_{index:02}")),
            largest,
        );
        let spec = b.last();
        spec.depends_on = vec![statistics];
        spec.intermediate = true;
        b.check_count()?;
    }
    let part = Part::Assemble(v1::Assemble {
        kind: v1::AssembleKind::Lockstep as i32,
        full_width: w,
        full_height: h,
        tile_size: t.tile_size,
        margin,
    });
    b.push(frame, wire.clone(), part, name, (w, h));
    b.last().depends_on = vec![statistics];
    let contexts = tiles.iter().map(|r| rect_to_proto(r.context)).collect();
    Ok(((columns, rows), contexts))
}

/// One value of a sweep applied to the wire settings.
fn apply_sweep(
    s: &mut v1::RenderSettings,
    parameter: &str,
    value: &str,
    field: &str,
) -> Result<()> {
    fn num<T: std::str::FromStr>(value: &str, field: &str) -> Result<T> {
        value.trim().parse().map_err(|_| {
            invalid(
                field,
                format!("`{value}` is not a number of the right kind"),
            )
        })
    }
    match parameter {
        "content-weight" => s.content_weight = Some(num(value, field)?),
        "style-weight" => s.style_weight = Some(num(value, field)?),
        "tv-weight" => s.tv_weight = Some(num(value, field)?),
        "style-scale" => s.style_scale = Some(num(value, field)?),
        "learning-rate" => s.learning_rate = Some(num(value, field)?),
        "num-iterations" => s.num_iterations = Some(num(value, field)?),
        "image-size" => s.image_size = Some(num(value, field)?),
        "seed" => s.seed = num(value, field)?,
        other => {
            return Err(invalid(
                field,
                format!(
                    "`{other}` cannot be swept; one of {}",
                    SWEEP_PARAMETERS.join(", ")
                ),
            ))
        }
    }
    Ok(())
}

/// One task per point of the grid of sweep values, then a contact sheet of them all.
fn plan_sweep(b: &mut Builder<'_>, wire: &v1::RenderSettings) -> Result<()> {
    let job = b.job;
    if job.content.len() != 1 {
        return Err(invalid(
            "spec.sweeps",
            format!(
                "a sweep renders one content image, not {}",
                job.content.len()
            ),
        ));
    }
    let mut seen = HashSet::new();
    let mut points = 1usize;
    for (i, sweep) in job.sweeps.iter().enumerate() {
        let field = format!("spec.sweeps[{i}].parameter");
        if !SWEEP_PARAMETERS.contains(&sweep.parameter.as_str()) {
            let shown: String = sweep.parameter.chars().take(40).collect();
            return Err(invalid(
                field,
                format!(
                    "`{shown}` cannot be swept; one of {}",
                    SWEEP_PARAMETERS.join(", ")
                ),
            ));
        }
        if !seen.insert(sweep.parameter.as_str()) {
            return Err(invalid(
                field,
                format!("`{}` is swept twice", sweep.parameter),
            ));
        }
        if sweep.values.is_empty() {
            return Err(invalid(
                format!("spec.sweeps[{i}].values"),
                "a sweep needs at least one value",
            ));
        }
        points = points.saturating_mul(sweep.values.len());
    }
    if points + 1 > b.inputs.max_tasks {
        return Err(CoordinatorError::LimitExceeded(format!(
            "the sweep has {points} points, over the limit of {} tasks per job",
            b.inputs.max_tasks
        )));
    }
    let (cw, ch) = b.inputs.content_dims[0];
    let name = b.inputs.names[0].clone();
    let mut indices = Vec::with_capacity(points);
    for p in 0..points {
        // Mixed radix: the last sweep varies fastest.
        let mut rest = p;
        let mut picks = vec![0; job.sweeps.len()];
        for (k, sweep) in job.sweeps.iter().enumerate().rev() {
            picks[k] = rest % sweep.values.len();
            rest /= sweep.values.len();
        }
        let mut settings = wire.clone();
        let mut values = std::collections::HashMap::new();
        let mut label = String::new();
        for (k, sweep) in job.sweeps.iter().enumerate() {
            let value = sweep.values[picks[k]].trim().to_string();
            let field = format!("spec.sweeps[{k}].values[{}]", picks[k]);
            apply_sweep(&mut settings, &sweep.parameter, &value, &field)?;
            label.push_str(&format!("_{}={value}", sweep.parameter));
            values.insert(sweep.parameter.clone(), value);
        }
        let checked = settings_from_proto(&settings, job.styles.len(), "spec.settings")
            .map_err(|e| invalid(format!("spec.sweeps ({})", &label[1..]), e.to_string()))?;
        let out = fit_max_side(cw, ch, checked.image_size);
        let i = b.push(
            0,
            settings,
            Part::Sweep(v1::SweepPoint { values }),
            suffixed(&name, &label),
            out,
        );
        indices.push(i);
    }
    let part = Part::Assemble(v1::Assemble {
        kind: v1::AssembleKind::ContactSheet as i32,
        ..Default::default()
    });
    b.push(0, wire.clone(), part, suffixed(&name, "_sweep"), (0, 0));
    let sheet = b.last();
    sheet.depends_on = indices;
    sheet.job_result = true;
    Ok(())
}

/// Per frame, a chain of stages at increasing sizes.
fn plan_stages(b: &mut Builder<'_>, wire: &v1::RenderSettings, scales: &v1::Scales) -> Result<()> {
    let sizes = &scales.sizes;
    if sizes.is_empty() {
        return Err(invalid(
            "spec.scales.sizes",
            "iterations per stage need the stages' sizes",
        ));
    }
    if let Some(bad) = sizes.iter().find(|s| !(16..=MAX_IMAGE_SIZE).contains(*s)) {
        return Err(invalid(
            "spec.scales.sizes",
            format!("{bad} px is outside 16..={MAX_IMAGE_SIZE}"),
        ));
    }
    if sizes.windows(2).any(|p| p[1] <= p[0]) {
        return Err(invalid(
            "spec.scales.sizes",
            format!(
                "sizes must increase from stage to stage, not {}",
                sizes
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ));
    }
    let output = b.inputs.settings.image_size;
    if sizes.last() != Some(&output) {
        return Err(invalid(
            "spec.scales.sizes",
            format!(
                "the last stage's size ({}) must be the output's image size ({output})",
                sizes.last().copied().unwrap_or(0)
            ),
        ));
    }
    let iterations: Vec<u32> = match scales.iterations.as_slice() {
        [] => vec![b.inputs.settings.num_iterations; sizes.len()],
        [one] => vec![*one; sizes.len()],
        many if many.len() == sizes.len() => many.to_vec(),
        many => {
            return Err(invalid(
                "spec.scales.iterations",
                format!("{} values for {} stages", many.len(), sizes.len()),
            ))
        }
    };
    if let Some(bad) = iterations
        .iter()
        .find(|&&i| i > stylefarm_core::settings::MAX_ITERATIONS)
    {
        return Err(invalid(
            "spec.scales.iterations",
            format!(
                "{bad} is over the limit of {}",
                stylefarm_core::settings::MAX_ITERATIONS
            ),
        ));
    }
    let frames = b.inputs.content_dims.len();
    let count = sizes.len() as u32;
    for frame in 0..frames {
        let (cw, ch) = b.inputs.content_dims[frame];
        let name = b.inputs.names[frame].clone();
        let mut previous = None;
        for (k, (&size, &iters)) in sizes.iter().zip(&iterations).enumerate() {
            let settings = v1::RenderSettings {
                image_size: Some(size),
                num_iterations: Some(iters),
                ..wire.clone()
            };
            let last = k + 1 == sizes.len();
            let output_name = if last {
                name.clone()
            } else {
                suffixed(&name, &format!("_stage{k}_{size}"))
            };
            let part = Part::Stage(v1::Stage {
                index: k as u32,
                count,
            });
            let i = b.push(
                frame,
                settings,
                part,
                output_name,
                fit_max_side(cw, ch, size),
            );
            let spec = b.last();
            spec.intermediate = !last;
            spec.job_result = last && frames == 1;
            if let Some(p) = previous {
                spec.depends_on = vec![p];
            }
            previous = Some(i);
        }
        b.check_count()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(n: u8) -> v1::BlobRef {
        v1::BlobRef {
            sha256: format!("{n:02x}").repeat(32),
            size: 10,
        }
    }

    fn job(frames: usize) -> v1::JobSpec {
        v1::JobSpec {
            content: (0..frames).map(|i| blob(i as u8)).collect(),
            styles: vec![blob(99)],
            settings: Some(v1::RenderSettings {
                image_size: Some(200),
                num_iterations: Some(10),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn plan(job: &mut v1::JobSpec, dims: &[(u32, u32)], memory: u64) -> Result<Planned> {
        let settings = settings_from_proto(
            job.settings.as_ref().unwrap(),
            job.styles.len(),
            "spec.settings",
        )
        .unwrap();
        let names: Vec<String> = (0..dims.len()).map(|i| format!("f{i}.png")).collect();
        plan_tasks(
            job,
            &PlanInputs {
                settings: &settings,
                content_dims: dims,
                names: &names,
                max_worker_memory: memory,
                workers: 2,
                max_tasks: 400,
            },
        )
    }

    fn message(e: CoordinatorError) -> String {
        e.to_string()
    }

    #[test]
    fn frames_are_one_task_each_and_temporal_chains_them() {
        let mut j = job(3);
        let p = plan(&mut j, &[(100, 50); 3], 0).unwrap();
        assert_eq!(p.tasks.len(), 3);
        assert!(p
            .tasks
            .iter()
            .all(|t| t.depends_on.is_empty() && !t.job_result));
        j.temporal = true;
        let p = plan(&mut j, &[(100, 50); 3], 0).unwrap();
        let deps: Vec<_> = p.tasks.iter().map(|t| t.depends_on.clone()).collect();
        assert_eq!(deps, vec![vec![], vec![0], vec![1]]);
        let mut single = job(1);
        let p = plan(&mut single, &[(100, 50)], 0).unwrap();
        assert!(p.tasks[0].job_result);
        assert_eq!((p.response.width, p.response.height), (200, 100));
    }

    #[test]
    fn tiles_in_lock_step_are_statistics_a_shard_per_worker_and_the_driver() {
        let mut j = job(1);
        j.tiles = Some(v1::TileOptions {
            tile_size: 96,
            tile_overlap: 24,
        });
        // 200x150 in cores of at most 96 px spread evenly and aligned to relu5_1's 16 px
        // (columns at 0, 64, 128; rows at 0, 64), each seen with 24 px of context rounded up to
        // 32.
        let p = plan(&mut j, &[(400, 300)], 0).unwrap();
        assert_eq!((p.response.tile_columns, p.response.tile_rows), (3, 2));
        let contexts: Vec<_> = p
            .response
            .lockstep_tiles
            .iter()
            .map(|r| (r.x, r.y, r.width, r.height))
            .collect();
        assert_eq!(
            contexts,
            [
                (0, 0, 96, 96),
                (32, 0, 128, 96),
                (96, 0, 104, 96),
                (0, 32, 96, 118),
                (32, 32, 128, 118),
                (96, 32, 104, 118)
            ]
        );
        assert_eq!(p.tasks.len(), 1 + 2 + 1);
        let Some(Part::Statistics(st)) = &p.tasks[0].part else {
            panic!("not the statistics")
        };
        assert!(st.style_only && p.tasks[0].intermediate);
        for (i, shard) in p.tasks[1..3].iter().enumerate() {
            assert_eq!(
                shard.part,
                Some(Part::Shard(v1::Shard {
                    index: i as u32,
                    count: 2,
                    full_width: 200,
                    full_height: 150,
                }))
            );
            assert!(shard.intermediate && shard.depends_on == vec![0]);
        }
        let driver = &p.tasks[3];
        assert_eq!(
            driver.part,
            Some(Part::Assemble(v1::Assemble {
                kind: v1::AssembleKind::Lockstep as i32,
                full_width: 200,
                full_height: 150,
                tile_size: 96,
                margin: 24,
            }))
        );
        assert!(driver.job_result && !driver.intermediate && driver.depends_on == vec![0]);
        // The coordinator's memory: the image and L-BFGS's pairs for the 10 iterations.
        assert_eq!(p.response.tasks[3].estimated_memory_bytes, 0);
        assert_eq!(
            p.response.coordinator_memory_bytes,
            (2 * 10 + 6) * 12 * 200 * 150
        );
        // The statistics are about one evaluation of the whole image.
        let one = estimated_seconds(200, 150, 1);
        assert!((p.response.tasks[0].estimated_seconds - one).abs() < 1e-9);
        // A worker with the memory for the whole image takes it in one piece.
        let roomy = plan(&mut j, &[(400, 300)], 1 << 40).unwrap();
        let Some(Part::Statistics(st)) = &roomy.tasks[0].part else {
            panic!("not the statistics")
        };
        assert_eq!(st.piece_size, 0);
        assert_eq!(
            roomy.response.tasks[0].estimated_memory_bytes,
            estimated_memory_bytes(200, 150)
        );

        // An output no larger than a tile is not tiled.
        j.settings.as_mut().unwrap().image_size = Some(90);
        let p = plan(&mut j, &[(400, 300)], 0).unwrap();
        assert_eq!(p.tasks.len(), 1);
        assert!(matches!(p.tasks[0].part, Some(Part::Frame(_))));
    }

    #[test]
    fn the_tile_size_follows_the_workers_memory() {
        let mut j = job(1);
        j.settings.as_mut().unwrap().image_size = Some(2048);
        // Enough for everything: no tiles.
        assert_eq!(
            plan(&mut j, &[(2048, 2048)], 1 << 40).unwrap().tasks.len(),
            1
        );
        // 1 GiB: tiles that fit.
        let p = plan(&mut j, &[(2048, 2048)], 1 << 30).unwrap();
        let t = p.response.tiles.unwrap();
        assert!(t.tile_size >= MIN_TILE_SIZE && t.tile_size < 2048, "{t:?}");
        assert_eq!(j.tiles, Some(t));
        // Every task fits, the statistics' pieces included.
        assert!(p
            .tasks
            .iter()
            .any(|t| matches!(t.part, Some(Part::Statistics(_)))));
        for task in &p.response.tasks {
            assert!(task.estimated_memory_bytes <= 1 << 30);
        }
        // Not even a small tile fits.
        let mut j = job(1);
        j.settings.as_mut().unwrap().image_size = Some(2048);
        let e = plan(&mut j, &[(2048, 2048)], 1 << 20).unwrap_err();
        assert!(matches!(e, CoordinatorError::LimitExceeded(_)), "{e}");
    }

    #[test]
    fn a_sweep_is_a_grid_and_a_contact_sheet() {
        let mut j = job(1);
        j.sweeps = vec![
            v1::Sweep {
                parameter: "style-weight".into(),
                values: vec!["10".into(), "100".into(), "1000".into()],
            },
            v1::Sweep {
                parameter: "style-scale".into(),
                values: vec!["0.5".into(), "1".into()],
            },
        ];
        let p = plan(&mut j, &[(100, 100)], 0).unwrap();
        assert_eq!(p.tasks.len(), 7);
        assert_eq!(
            p.tasks[0].output_name,
            "f0_style-weight=10_style-scale=0.5.png"
        );
        assert_eq!(
            p.tasks[5].output_name,
            "f0_style-weight=1000_style-scale=1.png"
        );
        let s = p.tasks[5].settings.as_ref().unwrap();
        assert_eq!((s.style_weight, s.style_scale), (Some(1000.0), Some(1.0)));
        let sheet = &p.tasks[6];
        assert_eq!(sheet.depends_on, (0..6).collect::<Vec<u32>>());
        assert!(sheet.job_result);
        assert_eq!(sheet.output_name, "f0_sweep.png");
    }

    #[test]
    fn stages_chain_at_increasing_sizes() {
        let mut j = job(1);
        j.scales = Some(v1::Scales {
            sizes: vec![50, 100, 200],
            iterations: vec![5, 4, 3],
        });
        let p = plan(&mut j, &[(100, 80)], 0).unwrap();
        let got: Vec<_> = p
            .tasks
            .iter()
            .map(|t| {
                let s = t.settings.as_ref().unwrap();
                (
                    s.image_size.unwrap(),
                    s.num_iterations.unwrap(),
                    t.depends_on.clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![(50, 5, vec![]), (100, 4, vec![0]), (200, 3, vec![1])]
        );
        assert!(p.tasks[2].job_result && !p.tasks[2].intermediate);
        assert!(p.tasks[0].intermediate);
    }

    #[test]
    fn bad_plans_name_the_field() {
        type Change = Box<dyn Fn(&mut v1::JobSpec)>;
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|j| {
                    j.tiles = Some(v1::TileOptions {
                        tile_size: 128,
                        tile_overlap: 128,
                    })
                }),
                "invalid spec.tiles.tile_overlap: 128 px is not smaller",
            ),
            (
                Box::new(|j| {
                    j.tiles = Some(v1::TileOptions {
                        tile_size: 8,
                        tile_overlap: 0,
                    })
                }),
                "invalid spec.tiles.tile_size",
            ),
            (
                Box::new(|j| {
                    j.sweeps = vec![v1::Sweep {
                        parameter: "colour".into(),
                        values: vec!["1".into()],
                    }]
                }),
                "invalid spec.sweeps[0].parameter: `colour` cannot be swept",
            ),
            (
                Box::new(|j| {
                    j.sweeps = vec![v1::Sweep {
                        parameter: "style-weight".into(),
                        values: vec!["lots".into()],
                    }]
                }),
                "invalid spec.sweeps[0].values[0]",
            ),
            (
                Box::new(|j| {
                    j.sweeps = vec![v1::Sweep {
                        parameter: "style-weight".into(),
                        values: vec!["-1".into()],
                    }]
                }),
                "invalid spec.sweeps (style-weight=-1)",
            ),
            (
                Box::new(|j| {
                    j.scales = Some(v1::Scales {
                        sizes: vec![100, 100, 200],
                        iterations: vec![],
                    })
                }),
                "invalid spec.scales.sizes: sizes must increase",
            ),
            (
                Box::new(|j| {
                    j.scales = Some(v1::Scales {
                        sizes: vec![100, 150],
                        iterations: vec![],
                    })
                }),
                "invalid spec.scales.sizes: the last stage's size (150)",
            ),
            (
                Box::new(|j| {
                    j.temporal = true;
                    j.tiles = Some(v1::TileOptions {
                        tile_size: 128,
                        tile_overlap: 0,
                    });
                }),
                "invalid spec.temporal: temporal rendering cannot be combined with tiles",
            ),
        ];
        for (change, expected) in cases {
            let mut j = job(1);
            change(&mut j);
            let e = message(plan(&mut j, &[(100, 100)], 0).unwrap_err());
            assert!(e.starts_with(expected), "{e}\nexpected {expected}");
        }
    }
}
