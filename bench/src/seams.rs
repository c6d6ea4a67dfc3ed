//! The seam score of a tiled render against an untiled one of the same image and size
//! (`stylefarm_engine::tiles::seam_score` on the grid the coordinator plans for the tile size
//! and overlap).

use std::path::PathBuf;

use anyhow::Context;
use stylefarm_engine::image_io::{load_image, DecodeLimits};
use stylefarm_engine::tiles::{edge_difference, seam_score, TileGrid};

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
    /// Tile overlap it was planned with.
    #[arg(long)]
    tile_overlap: u32,
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
    let grid = TileGrid::new(w, h, args.tile_size, args.tile_overlap)?;
    let (xs, ys) = grid.interior_edges();
    let score = seam_score(&grid, &tiled, &untiled)
        .context("the grid has no interior tile edge, or the untiled render is flat there")?;
    let (columns, rows) = grid.shape();
    println!(
        "{}",
        serde_json::json!({
            "seam_score": score,
            "tiled_edge_difference": edge_difference(&tiled, &xs, &ys),
            "untiled_edge_difference": edge_difference(&untiled, &xs, &ys),
            "grid": [columns, rows],
        })
    );
    Ok(())
}
