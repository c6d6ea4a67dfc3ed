//! The seam score of a tiled render against an untiled one of the same image and size (the
//! measure of `stylefarm_core::tiles::seam_score`) at the edges between the cores of the
//! tiles the coordinator plans in lock step for the tile size and margin.

use std::path::PathBuf;

use anyhow::Context;
use stylefarm_core::image_io::{load_image, DecodeLimits};
use stylefarm_core::lockstep::{interior_edges, lockstep_tiles};
use stylefarm_core::tiles::edge_difference;

/// Options of `stylefarm-bench seams`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The tiled render.
    tiled: PathBuf,
    /// The untiled render of the same image at the same size.
    untiled: PathBuf,
    /// Tile size the tiled render was planned with.
    #[arg(long)]
    tile_size: u32,
    /// Tile overlap it was planned with: each tile's margin of context.
    #[arg(long)]
    tile_overlap: u32,
    /// The deepest layer's stride (16 for the default layers, up to `relu5_1`): the tiles'
    /// cores start at multiples of it.
    #[arg(long, default_value_t = 16)]
    align: u32,
}

/// Prints `{"seam_score", "tiled_edge_difference", "untiled_edge_difference", "grid"}`.
pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    let limits = DecodeLimits::default();
    let load = |p: &PathBuf| {
        load_image(p, &limits).with_context(|| format!("cannot read {}", p.display()))
    };
    let (tiled, untiled) = (load(&args.tiled)?, load(&args.untiled)?);
    anyhow::ensure!(
        tiled.dimensions() == untiled.dimensions(),
        "the tiled render is {:?} and the untiled one {:?}: they must be the same size",
        tiled.dimensions(),
        untiled.dimensions()
    );
    let (w, h) = tiled.dimensions();
    let tiles = lockstep_tiles(w, h, args.tile_size, args.tile_overlap, args.align)?;
    let (xs, ys) = interior_edges(&tiles);
    let (t, u) = (
        edge_difference(&tiled, &xs, &ys).context("the tiles have no interior edge")?,
        edge_difference(&untiled, &xs, &ys).context("no interior edge")?,
    );
    anyhow::ensure!(u > 0.0, "the untiled render is flat at the tiles' edges");
    println!(
        "{}",
        serde_json::json!({
            "seam_score": t / u,
            "tiled_edge_difference": t,
            "untiled_edge_difference": u,
            "grid": [xs.len() + 1, ys.len() + 1],
        })
    );
    Ok(())
}
