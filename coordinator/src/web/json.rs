//! The farm's wire messages as the page's JSON, and the page's submit form as a `JobSpec`.

use serde::Deserialize;
use serde_json::{json, Value};
use stylefarm_proto::v1::{self, task_spec::Part};

/// The most style images, sweep axes, values per axis and stages the form may send (the
/// planner bounds the rest, e.g. frames by `--max-tasks-per-job`).
const MAX_STYLES: usize = 16;
const MAX_SWEEPS: usize = 4;
const MAX_SWEEP_VALUES: usize = 64;
const MAX_SCALES: usize = 8;
/// The most content images the form may send.
const MAX_CONTENT: usize = 1000;

/// `JOB_STATE_ACTIVE` as `active`.
fn enum_name(full: &str, prefix: &str) -> String {
    full.strip_prefix(prefix)
        .unwrap_or(full)
        .to_ascii_lowercase()
}

pub(super) fn job_state(state: i32) -> String {
    let s = v1::JobState::try_from(state).unwrap_or_default();
    enum_name(s.as_str_name(), "JOB_STATE_")
}

fn task_state(state: i32) -> String {
    let s = v1::TaskState::try_from(state).unwrap_or_default();
    enum_name(s.as_str_name(), "TASK_STATE_")
}

fn blob(b: Option<&v1::BlobRef>) -> Value {
    match b {
        Some(b) if !b.sha256.is_empty() => json!({ "sha256": b.sha256, "size": b.size }),
        _ => Value::Null,
    }
}

fn losses(l: Option<&v1::Losses>) -> Value {
    match l {
        Some(l) => json!({ "content": l.content, "style": l.style, "tv": l.tv, "total": l.total }),
        None => Value::Null,
    }
}

fn settings(s: Option<&v1::RenderSettings>) -> Value {
    let d = v1::RenderSettings::default();
    let s = s.unwrap_or(&d);
    json!({
        "image_size": s.image_size,
        "num_iterations": s.num_iterations,
        "optimizer": enum_name(s.optimizer().as_str_name(), "OPTIMIZER_"),
        "content_weight": s.content_weight,
        "style_weight": s.style_weight,
        "tv_weight": s.tv_weight,
        "style_scale": s.style_scale,
        "init": enum_name(s.init().as_str_name(), "INIT_"),
        "seed": s.seed,
        "original_colors": s.original_colors,
    })
}

/// What part of the job a task renders, for the page to lay tasks out by.
fn part(spec: Option<&v1::TaskSpec>) -> Value {
    match spec.and_then(|s| s.part.as_ref()) {
        Some(Part::Frame(f)) => json!({ "kind": "frame", "index": f.index }),
        Some(Part::Sweep(p)) => {
            let mut values: Vec<_> = p.values.iter().collect();
            values.sort();
            let label: Vec<String> = values.iter().map(|(k, v)| format!("{k}={v}")).collect();
            json!({ "kind": "sweep", "label": label.join(" ") })
        }
        Some(Part::Stage(s)) => json!({ "kind": "stage", "index": s.index, "count": s.count }),
        Some(Part::Assemble(a)) => match a.kind() {
            v1::AssembleKind::Lockstep => json!({
                "kind": "lockstep",
                "width": a.full_width, "height": a.full_height,
                "tile_size": a.tile_size, "margin": a.margin,
            }),
            _ => json!({ "kind": "sheet" }),
        },
        Some(Part::Statistics(_)) => json!({ "kind": "statistics" }),
        Some(Part::Shard(s)) => json!({ "kind": "shard", "index": s.index, "count": s.count }),
        None => json!({ "kind": "render" }),
    }
}

pub(super) fn task(t: &v1::Task) -> Value {
    let p = t.progress.as_ref();
    let spec = t.spec.as_ref();
    json!({
        "id": t.id,
        "index": t.index,
        "state": task_state(t.state),
        "part": part(spec),
        "name": spec.map(|s| s.output_name.as_str()).unwrap_or(""),
        "intermediate": spec.is_some_and(|s| s.intermediate),
        "job_result": spec.is_some_and(|s| s.job_result),
        "settings": spec.map(|s| settings(s.settings.as_ref())),
        "attempts": t.attempts,
        "worker_id": t.worker_id,
        "progress": p.map(|p| json!({
            "iteration": p.iteration,
            "total": p.total_iterations,
            "losses": losses(p.losses.as_ref()),
            "preview": blob(p.preview.as_ref()),
        })),
        "result": blob(t.result.as_ref()),
        "final_losses": losses(t.final_losses.as_ref()),
        "error": t.error,
        // Points as the page's plot keeps them.
        "loss_history": t.loss_history.iter().map(|p| {
            let l = p.losses.unwrap_or_default();
            json!({ "it": p.iteration, "content": l.content, "style": l.style, "tv": l.tv, "total": l.total })
        }).collect::<Vec<_>>(),
    })
}

pub(super) fn job(j: &v1::Job) -> Value {
    let d = v1::JobSpec::default();
    let spec = j.spec.as_ref().unwrap_or(&d);
    json!({
        "id": j.id,
        "state": job_state(j.state),
        "name": spec.name,
        "owner": spec.owner,
        "priority": spec.priority,
        "created_unix_ms": j.created_unix_ms,
        "updated_unix_ms": j.updated_unix_ms,
        "result": blob(j.result.as_ref()),
        "error": j.error,
        "content_names": spec.content_names,
        "settings": settings(spec.settings.as_ref()),
        "tiles": spec.tiles.as_ref().map(|t| json!({ "tile_size": t.tile_size, "tile_overlap": t.tile_overlap })),
        "sweeps": spec.sweeps.iter().map(|s| json!({ "parameter": s.parameter, "values": s.values })).collect::<Vec<_>>(),
        "scales": spec.scales.as_ref().map(|s| s.sizes.clone()).unwrap_or_default(),
        "tasks": j.tasks.iter().map(task).collect::<Vec<_>>(),
    })
}

pub(super) fn event(e: &v1::JobEvent) -> Option<(&'static str, Value)> {
    use v1::job_event::Event;
    Some(match e.event.as_ref()? {
        Event::Snapshot(j) => ("snapshot", job(j)),
        Event::Task(t) => ("task", task(t)),
        Event::Job(j) => ("job", job(j)),
    })
}

pub(super) fn plan(p: &v1::PlanJobResponse) -> Value {
    json!({
        "width": p.width,
        "height": p.height,
        "tile_columns": p.tile_columns,
        "tile_rows": p.tile_rows,
        "coordinator_memory_bytes": p.coordinator_memory_bytes,
        "tasks": p.tasks.iter().map(|t| json!({
            "part": part(t.spec.as_ref()),
            "name": t.spec.as_ref().map(|s| s.output_name.as_str()).unwrap_or(""),
            "intermediate": t.spec.as_ref().is_some_and(|s| s.intermediate),
            "width": t.width,
            "height": t.height,
            "memory_bytes": t.estimated_memory_bytes,
            "seconds": t.estimated_seconds,
        })).collect::<Vec<_>>(),
    })
}

/// A blob the form names (uploaded first with `POST /api/blobs`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BlobIn {
    sha256: String,
    size: u64,
}

impl From<BlobIn> for v1::BlobRef {
    fn from(b: BlobIn) -> Self {
        Self {
            sha256: b.sha256,
            size: b.size,
        }
    }
}

/// A sweep axis of the form.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SweepIn {
    parameter: String,
    values: Vec<String>,
}

/// The submit form: the main settings; what it leaves out takes the engine's defaults.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JobIn {
    #[serde(default)]
    name: String,
    content: Vec<BlobIn>,
    #[serde(default)]
    content_names: Vec<String>,
    styles: Vec<BlobIn>,
    image_size: Option<u32>,
    num_iterations: Option<u32>,
    content_weight: Option<f32>,
    style_weight: Option<f32>,
    tv_weight: Option<f32>,
    #[serde(default)]
    seed: u64,
    /// Where the optimisation starts: `random` (the default) or `content`.
    #[serde(default)]
    init: Option<String>,
    #[serde(default)]
    priority: i32,
    /// Tiles in lock step of this side (0: none unless the farm needs them).
    #[serde(default)]
    tile_size: u32,
    #[serde(default)]
    sweeps: Vec<SweepIn>,
    /// Coarse-to-fine sizes.
    #[serde(default)]
    scales: Vec<u32>,
}

impl JobIn {
    /// The spec, or one sentence on the list that is too long.
    pub(super) fn into_spec(self) -> Result<v1::JobSpec, String> {
        let too_many = |what: &str, n: usize, max: usize| {
            (n > max).then(|| format!("{n} {what} given, at most {max} in one job"))
        };
        if let Some(e) = too_many("content images", self.content.len(), MAX_CONTENT)
            .or_else(|| too_many("content names", self.content_names.len(), MAX_CONTENT))
            .or_else(|| too_many("style images", self.styles.len(), MAX_STYLES))
            .or_else(|| too_many("sweep axes", self.sweeps.len(), MAX_SWEEPS))
            .or_else(|| too_many("stage sizes", self.scales.len(), MAX_SCALES))
            .or_else(|| {
                self.sweeps.iter().find_map(|s| {
                    too_many("values on a sweep axis", s.values.len(), MAX_SWEEP_VALUES)
                })
            })
        {
            return Err(e);
        }
        let init = match self.init.as_deref() {
            None | Some("" | "random") => v1::Init::Random,
            Some("content") => v1::Init::Content,
            Some(other) => {
                return Err(format!(
                    "init {other:?} is not one the page offers: random or content"
                ))
            }
        };
        Ok(v1::JobSpec {
            name: self.name,
            content: self.content.into_iter().map(Into::into).collect(),
            content_names: self.content_names,
            styles: self.styles.into_iter().map(Into::into).collect(),
            settings: Some(v1::RenderSettings {
                image_size: self.image_size,
                num_iterations: self.num_iterations,
                content_weight: self.content_weight,
                style_weight: self.style_weight,
                tv_weight: self.tv_weight,
                seed: self.seed,
                init: init as i32,
                ..v1::RenderSettings::default()
            }),
            priority: self.priority,
            tiles: (self.tile_size > 0).then_some(v1::TileOptions {
                tile_size: self.tile_size,
                tile_overlap: (self.tile_size / 8).max(16),
            }),
            sweeps: self
                .sweeps
                .into_iter()
                .map(|s| v1::Sweep {
                    parameter: s.parameter,
                    values: s.values,
                })
                .collect(),
            scales: (!self.scales.is_empty()).then_some(v1::Scales {
                sizes: self.scales,
                iterations: Vec::new(),
            }),
            ..v1::JobSpec::default()
        })
    }
}

/// `DEVICE_CUDA` as `cuda`.
pub(super) fn device_name(device: i32) -> String {
    let d = v1::Device::try_from(device).unwrap_or_default();
    enum_name(d.as_str_name(), "DEVICE_")
}
