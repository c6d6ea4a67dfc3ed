//! A big print's tasks: tiles in lock step (the whole image's statistics, the shards and the
//! coordinator's driver), and the tile size the coordinator picks when a job leaves it open.

use stylefarm_convert::rect_to_proto;
use stylefarm_core::lockstep::{driver_optimizer, lockstep_tiles, margin};
use stylefarm_core::settings::RenderSettings;
use stylefarm_core::tiles::{estimated_memory_bytes, tile_size_for_memory, GRAM_MARGIN};
use stylefarm_proto::v1::{self, task_spec::Part};

use super::{default_overlap, invalid, suffixed, Builder, MIN_TILE_SIZE};
use crate::error::{CoordinatorError, Result};

/// The coordinator's memory for a lock-step render of `w` x `h` (`joint::driver_optimizer`).
pub(super) fn driver_memory_bytes(
    w: u32,
    h: u32,
    settings: &RenderSettings,
    iterations: u32,
) -> u64 {
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
pub(super) fn auto_tiles(
    (w, h): (u32, u32),
    max_worker_memory: u64,
) -> Result<Option<v1::TileOptions>> {
    if max_worker_memory == 0 || fits_one_worker((w, h), max_worker_memory) {
        return Ok(None);
    }
    let size = tile_size_for_memory(max_worker_memory, |t| margin(default_overlap(t))).ok_or_else(
        || {
            CoordinatorError::LimitExceeded(format!(
            "no worker has the memory for even a {MIN_TILE_SIZE} px tile of the {w}x{h} output \
             (the largest reports {max_worker_memory} bytes)"
        ))
        },
    )?;
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
    if fits_one_worker((w, h), b.inputs.farm.max_worker_memory) {
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

/// Tiles in lock step (`stylefarm_core::lockstep`): the whole image's statistics (for its
/// style targets), one shard task per live worker (at most one per tile), and the
/// coordinator's driver, which optimises the whole image with the shards and whose result is
/// the frame's output. Returns the grid's `(columns, rows)` and the tiles' contexts.
pub(super) fn plan_lockstep(
    b: &mut Builder<'_>,
    wire: &v1::RenderSettings,
    frame: usize,
    (w, h): (u32, u32),
    t: v1::TileOptions,
    name: String,
) -> Result<((usize, usize), Vec<v1::Rect>)> {
    let settings = b.inputs.settings;
    let align = settings.deepest_stride();
    let margin = margin(t.tile_overlap);
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
    let shards = b.inputs.farm.workers.clamp(1, tiles.len());
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
