//! The seam score of a tiled render against an untiled one of the same image and size
//! (`stylefarm_engine::tiles::seam_score` on the grid the coordinator plans for the tile size
//! and overlap; for tiles in lock step, at the edges between the tiles' cores).

use std::path::PathBuf;

use anyhow::Context;
use stylefarm_engine::image_io::{load_image, DecodeLimits};
use stylefarm_engine::joint::{interior_edges, joint_tiles};
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
    /// Tile overlap it was planned with (in lock step: each tile's margin of context).
    #[arg(long)]
    tile_overlap: u32,
    /// The tiles were rendered in lock step (`--tile-mode lockstep`), their cores starting at
    /// multiples of `--align` pixels.
    #[arg(long)]
    lockstep: bool,
    /// The deepest layer's stride (16 for the default layers, up to `relu5_1`).
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
    if args.lockstep {
        let tiles = joint_tiles(w, h, args.tile_size, args.tile_overlap, args.align)?;
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
        return Ok(());
    }
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
