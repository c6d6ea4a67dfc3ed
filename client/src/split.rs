//! How a job is split beyond one task per frame, as options of `render` and `submit`: tiles for
//! big prints (`--tile-size`, `--tile-overlap`), parameter sweeps (`--sweep`), coarse-to-fine
//! stages (`--scales`, `--scale-sizes`, `--scale-iterations`) — and the dry-run plan that
//! `submit --dry-run` prints, as a table or JSON.

use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;

use stylefarm_core::lockstep::margin;
use stylefarm_core::settings::{RenderSettings, MIN_STAGE_SIZE};
use stylefarm_proto::v1::{self, task_spec::Part, JobSpec, PlanJobResponse};

/// Most stages of `--scales`.
const MAX_STAGES: u32 = 8;

/// Tiles, sweeps and stages.
#[derive(Args, Debug, Clone, Default)]
pub struct SplitOptions {
    /// Render in tiles of this many pixels, optimised in lock step: the whole image as one,
    /// every iteration computed tile by tile on the workers (the untiled render up to the
    /// tiles' margins).
    #[arg(long, value_name = "PX")]
    pub tile_size: Option<u32>,
    /// Each tile's margin of context, in pixels (default: an eighth of the tile size; at
    /// least 16).
    #[arg(long, value_name = "PX", requires = "tile_size")]
    pub tile_overlap: Option<u32>,
    /// Render one task per value, e.g. `style-weight=10,100,1000`; several make a grid. The
    /// result is a labelled contact sheet; every point is an output too.
    #[arg(long, value_name = "PARAMETER=V1,V2,...")]
    pub sweep: Vec<String>,
    /// Coarse-to-fine in N stages, each twice the size of the one before, ending at
    /// `--image-size`; each stage starts from the previous stage's result.
    #[arg(long, value_name = "N", conflicts_with = "scale_sizes")]
    pub scales: Option<u32>,
    /// Coarse-to-fine at these sizes (increasing, comma-separated); the last one is the output's
    /// size (it replaces `--image-size`).
    #[arg(long, value_name = "PX,PX,...")]
    pub scale_sizes: Option<String>,
    /// Iterations of each stage (one value for all, or one per stage; default
    /// `--num-iterations`).
    #[arg(long, value_name = "N,N,...")]
    pub scale_iterations: Option<String>,
}

fn numbers(list: &str, option: &str) -> Result<Vec<u32>> {
    list.split(',')
        .map(|v| {
            v.trim()
                .parse::<u32>()
                .map_err(|_| anyhow::anyhow!("invalid {option}: `{v}` is not a whole number"))
        })
        .collect()
}

impl SplitOptions {
    /// Settings the split changes: the last stage of `--scale-sizes` is the output's size.
    pub fn adjust(&self, settings: &mut RenderSettings) -> Result<()> {
        if let Some(sizes) = &self.scale_sizes {
            match numbers(sizes, "scale-sizes")?.last() {
                Some(&last) => settings.image_size = last,
                None => bail!("invalid scale-sizes: no size given"),
            }
        }
        Ok(())
    }

    /// Writes the split into `spec` (whose settings are final). Values the coordinator checks
    /// anyway (overlap against tile size, sweep values, increasing sizes) are left to it, so
    /// that a farm's answer and a local render's agree.
    pub fn apply(&self, spec: &mut JobSpec, settings: &RenderSettings) -> Result<()> {
        if let Some(tile_size) = self.tile_size {
            spec.tiles = Some(v1::TileOptions {
                tile_size,
                tile_overlap: self.tile_overlap.unwrap_or(tile_size / 8),
            });
        }
        for sweep in &self.sweep {
            let Some((parameter, values)) = sweep.split_once('=') else {
                bail!("invalid sweep: `{sweep}` is not PARAMETER=V1,V2,...");
            };
            spec.sweeps.push(v1::Sweep {
                parameter: parameter.trim().to_string(),
                values: values
                    .split(',')
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
                    .collect(),
            });
        }
        let sizes = match (self.scales, &self.scale_sizes) {
            (Some(n), _) => {
                if !(1..=MAX_STAGES).contains(&n) {
                    bail!("invalid scales: {n} is outside 1..={MAX_STAGES}");
                }
                let sizes: Vec<u32> = (0..n).map(|k| settings.image_size >> (n - 1 - k)).collect();
                if sizes[0] < MIN_STAGE_SIZE {
                    bail!(
                        "invalid scales: {n} stages ending at {} px would start at {} px, below {MIN_STAGE_SIZE} px",
                        settings.image_size,
                        sizes[0]
                    );
                }
                sizes
            }
            (None, Some(list)) => numbers(list, "scale-sizes")?,
            (None, None) => {
                if self.scale_iterations.is_some() {
                    bail!("invalid scale-iterations: give --scales or --scale-sizes too");
                }
                Vec::new()
            }
        };
        if !sizes.is_empty() {
            let iterations = match &self.scale_iterations {
                Some(list) => numbers(list, "scale-iterations")?,
                None => Vec::new(),
            };
            spec.scales = Some(v1::Scales { sizes, iterations });
        }
        Ok(())
    }
}

/// One task of the plan, as `--dry-run --json` prints it.
#[derive(Debug, Serialize)]
struct TaskJson {
    index: usize,
    output_name: String,
    kind: &'static str,
    width: u32,
    height: u32,
    depends_on: Vec<u32>,
    output: bool,
    estimated_memory_bytes: u64,
    estimated_seconds: f64,
}

/// A tile's context in output pixels, margins included.
#[derive(Debug, Serialize)]
struct TileJson {
    x: u32,
    y: u32,
    w: u32,
    h: u32,
}

#[derive(Debug, Serialize)]
struct PlanJson {
    width: u32,
    height: u32,
    tasks: Vec<TaskJson>,
    tile_size: u32,
    tile_overlap: u32,
    tile_columns: u32,
    tile_rows: u32,
    /// `lockstep` (empty when the job is not tiled).
    tile_mode: &'static str,
    tiles: Vec<TileJson>,
    peak_memory_bytes: u64,
    /// The coordinator's lock-step driver: the image and the optimiser's history.
    coordinator_memory_bytes: u64,
    estimated_seconds: f64,
}

fn kind(spec: &v1::TaskSpec) -> &'static str {
    match &spec.part {
        Some(Part::Frame(_)) | None => "frame",
        Some(Part::Statistics(_)) => "statistics",
        Some(Part::Shard(_)) => "shard",
        Some(Part::Sweep(_)) => "sweep-point",
        Some(Part::Stage(_)) => "stage",
        Some(Part::Assemble(a)) => match v1::AssembleKind::try_from(a.kind) {
            Ok(v1::AssembleKind::ContactSheet) => "contact-sheet",
            Ok(v1::AssembleKind::Lockstep) => "lockstep",
            _ => "assemble",
        },
    }
}

fn to_json(plan: &PlanJobResponse) -> PlanJson {
    let tasks: Vec<TaskJson> = plan
        .tasks
        .iter()
        .enumerate()
        .map(|(index, t)| {
            let spec = t.spec.clone().unwrap_or_default();
            TaskJson {
                index,
                kind: kind(&spec),
                output_name: spec.output_name.clone(),
                width: t.width,
                height: t.height,
                depends_on: spec.depends_on.clone(),
                output: !spec.intermediate,
                estimated_memory_bytes: t.estimated_memory_bytes,
                estimated_seconds: t.estimated_seconds,
            }
        })
        .collect();
    // Tiles in lock step are no tasks of their own: the plan lists their contexts.
    let tiles: Vec<TileJson> = plan
        .lockstep_tiles
        .iter()
        .map(|r| TileJson {
            x: r.x,
            y: r.y,
            w: r.width,
            h: r.height,
        })
        .collect();
    let options = plan.tiles.unwrap_or_default();
    PlanJson {
        width: plan.width,
        height: plan.height,
        peak_memory_bytes: tasks
            .iter()
            .map(|t| t.estimated_memory_bytes)
            .max()
            .unwrap_or(0),
        estimated_seconds: tasks.iter().map(|t| t.estimated_seconds).sum(),
        coordinator_memory_bytes: plan.coordinator_memory_bytes,
        tasks,
        tile_size: options.tile_size,
        tile_overlap: options.tile_overlap,
        tile_columns: plan.tile_columns,
        tile_rows: plan.tile_rows,
        tile_mode: if tiles.is_empty() { "" } else { "lockstep" },
        tiles,
    }
}

/// The plan as JSON (`submit --dry-run --json`).
pub fn plan_json(plan: &PlanJobResponse) -> Result<String> {
    Ok(serde_json::to_string_pretty(&to_json(plan))?)
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / f64::from(1u32 << 30))
}

/// The plan for people (`submit --dry-run`).
pub fn plan_text(plan: &PlanJobResponse) -> String {
    let p = to_json(plan);
    let mut out = format!(
        "{} task{} for a {}x{} output\n",
        p.tasks.len(),
        if p.tasks.len() == 1 { "" } else { "s" },
        p.width,
        p.height
    );
    if p.tile_mode == "lockstep" {
        let shards = p.tasks.iter().filter(|t| t.kind == "shard").count();
        out.push_str(&format!(
            "tile grid {}x{}: tiles of {} px in lock step, each seen with {} px of context, on \
             {shards} shard{} (the coordinator optimises the whole image)\n",
            p.tile_columns,
            p.tile_rows,
            p.tile_size,
            margin(p.tile_overlap),
            if shards == 1 { "" } else { "s" },
        ));
    }
    out.push_str("  #  KIND           SIZE        AFTER     MEMORY      TIME      OUTPUT\n");
    for t in &p.tasks {
        let after = if t.depends_on.is_empty() {
            "-".to_string()
        } else if t.depends_on.len() > 3 {
            format!("{} tasks", t.depends_on.len())
        } else {
            t.depends_on
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let (size, memory, time) = if t.kind == "assemble" || t.kind == "contact-sheet" {
            ("-".to_string(), "-".to_string(), "-".to_string())
        } else if t.kind == "lockstep" {
            // The coordinator's own: its memory is on the line below the table.
            (
                format!("{}x{}", t.width, t.height),
                "-".to_string(),
                "-".to_string(),
            )
        } else {
            (
                format!("{}x{}", t.width, t.height),
                gib(t.estimated_memory_bytes),
                format!("{:.0} s", t.estimated_seconds),
            )
        };
        out.push_str(&format!(
            "{:>3}  {:<13}  {:<10}  {:<8}  {:<10}  {:<8}  {}{}\n",
            t.index,
            t.kind,
            size,
            after,
            memory,
            time,
            t.output_name,
            if t.output { "" } else { " (intermediate)" }
        ));
    }
    out.push_str(&format!(
        "estimated: {} peak per task, {:.0} s of work on two CPU cores in all (rough figures)\n",
        gib(p.peak_memory_bytes),
        p.estimated_seconds
    ));
    if p.coordinator_memory_bytes > 0 {
        out.push_str(&format!(
            "the coordinator holds {} for the lock-step optimiser (the image and its history)\n",
            gib(p.coordinator_memory_bytes)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_become_the_split_of_a_spec() {
        let settings = RenderSettings {
            image_size: 512,
            ..RenderSettings::default()
        };
        let o = SplitOptions {
            tile_size: Some(256),
            sweep: vec!["style-weight=10, 100".into()],
            scales: Some(3),
            scale_iterations: Some("50".into()),
            ..SplitOptions::default()
        };
        let mut spec = JobSpec::default();
        o.apply(&mut spec, &settings).unwrap();
        assert_eq!(
            spec.tiles,
            Some(v1::TileOptions {
                tile_size: 256,
                tile_overlap: 32,
            })
        );
        assert_eq!(spec.sweeps[0].values, ["10", "100"]);
        let scales = spec.scales.unwrap();
        assert_eq!(
            (scales.sizes, scales.iterations),
            (vec![128, 256, 512], vec![50])
        );

        let mut s = settings.clone();
        let sizes = SplitOptions {
            scale_sizes: Some("100,300".into()),
            ..SplitOptions::default()
        };
        sizes.adjust(&mut s).unwrap();
        assert_eq!(s.image_size, 300);
    }

    #[test]
    fn bad_split_options_are_one_sentence() {
        let settings = RenderSettings::default();
        let cases = [
            (
                SplitOptions {
                    sweep: vec!["style-weight".into()],
                    ..SplitOptions::default()
                },
                "invalid sweep: `style-weight` is not PARAMETER=V1,V2,...",
            ),
            (
                SplitOptions {
                    scales: Some(9),
                    ..SplitOptions::default()
                },
                "invalid scales: 9 is outside 1..=8",
            ),
            (
                SplitOptions {
                    scale_sizes: Some("64,x".into()),
                    ..SplitOptions::default()
                },
                "invalid scale-sizes: `x` is not a whole number",
            ),
            (
                SplitOptions {
                    scale_iterations: Some("5".into()),
                    ..SplitOptions::default()
                },
                "invalid scale-iterations: give --scales or --scale-sizes too",
            ),
        ];
        for (o, expected) in cases {
            let e = o.apply(&mut JobSpec::default(), &settings).unwrap_err();
            assert_eq!(e.to_string(), expected);
        }
    }

    #[test]
    fn the_plan_lists_tiles_in_output_pixels() {
        // In lock step the plan lists the tiles' contexts; the shards and the driver are tasks.
        let task = |part, w, h| v1::PlannedTask {
            spec: Some(v1::TaskSpec {
                part: Some(part),
                ..Default::default()
            }),
            width: w,
            height: h,
            estimated_memory_bytes: 1 << 30,
            estimated_seconds: 3.0,
        };
        let driver = Part::Assemble(v1::Assemble {
            kind: v1::AssembleKind::Lockstep as i32,
            ..Default::default()
        });
        let rect = |x, w| v1::Rect {
            x,
            y: 0,
            width: w,
            height: 64,
        };
        let plan = PlanJobResponse {
            tasks: vec![
                task(Part::Shard(v1::Shard::default()), 96, 64),
                task(driver, 120, 64),
            ],
            width: 120,
            height: 64,
            tiles: Some(v1::TileOptions {
                tile_size: 64,
                tile_overlap: 8,
            }),
            tile_columns: 2,
            tile_rows: 1,
            lockstep_tiles: vec![rect(0, 96), rect(32, 88)],
            coordinator_memory_bytes: 3 << 30,
        };
        let json: serde_json::Value = serde_json::from_str(&plan_json(&plan).unwrap()).unwrap();
        assert_eq!(json["tile_mode"], "lockstep");
        assert_eq!(json["tiles"][1]["x"], 32);
        assert_eq!(json["tiles"][1]["w"], 88);
        assert_eq!(json["tasks"][0]["kind"], "shard");
        assert_eq!(json["tasks"][1]["kind"], "lockstep");
        assert_eq!(json["estimated_seconds"], 6.0);
        let text = plan_text(&plan);
        assert!(text.contains("tile grid 2x1"), "{text}");
        assert!(text.contains("96x64"), "{text}");
        assert!(text.contains("in lock step"), "{text}");
        assert!(text.contains("on 1 shard "), "{text}");
        assert!(text.contains("coordinator holds 3.00 GiB"), "{text}");
    }
}
