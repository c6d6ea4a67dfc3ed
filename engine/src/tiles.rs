//! Splitting a large output into overlapping tiles and putting it back together: the tile
//! grid, the context each tile is rendered with, feathered blending weights that sum to 1 at
//! every pixel, the seam score that measures what blending left behind, and the rough memory
//! and time a render of a given size needs (which decides the tile size when none is given).
//!
//! Plain pixel arithmetic with no tensor code, so the coordinator plans and blends tiles
//! without candle.
//!
//! Along each axis of length `L`, tiles of `T` pixels overlap by at least `O`: one tile when
//! `L <= T`, else `n = ceil((L - O) / (T - O))` tiles spread evenly from 0 to `L - T`, so
//! neighbours may overlap by more than `O`. Each tile's weight rises linearly across a band of
//! `O` pixels centred in its overlap with the previous tile and falls across the band it
//! shares with the next one (`t` and `1 - t` at the same pixel, so two tiles sum to 1);
//! outside the bands one tile alone decides, because averaging two different renders of the
//! same place washes out their texture. The 2-D weight is the product of the two axes'
//! weights, divided by the sum over the tiles that cover the pixel, so the weights sum to
//! exactly 1 even where more than two tiles meet.

use image::RgbImage;

use crate::error::{EngineError, Result};

/// A rectangle of output pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Rect {
    /// Left column.
    pub x: u32,
    /// Top row.
    pub y: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

impl Rect {
    /// One past the right column.
    pub fn right(&self) -> u32 {
        self.x + self.width
    }

    /// One past the bottom row.
    pub fn bottom(&self) -> u32 {
        self.y + self.height
    }

    /// Whether `(x, y)` lies inside.
    pub fn contains(&self, x: u32, y: u32) -> bool {
        x >= self.x && x < self.right() && y >= self.y && y < self.bottom()
    }

    /// The rectangle grown by `margin` on every side, clipped to a `width` × `height` image.
    pub fn grown(&self, margin: u32, width: u32, height: u32) -> Rect {
        let x = self.x.saturating_sub(margin);
        let y = self.y.saturating_sub(margin);
        Rect {
            x,
            y,
            width: self.right().saturating_add(margin).min(width) - x,
            height: self.bottom().saturating_add(margin).min(height) - y,
        }
    }
}

/// One axis of the grid: `(start, length)` of each tile, in order.
fn spans(length: u32, tile: u32, overlap: u32) -> Vec<(u32, u32)> {
    if length <= tile {
        return vec![(0, length)];
    }
    let stride = u64::from(tile - overlap);
    let n = (u64::from(length - overlap)).div_ceil(stride);
    let travel = u64::from(length - tile);
    (0..n)
        .map(|i| {
            // Evenly spread, rounded to nearest; the last tile ends exactly at `length`.
            let start = (i * travel + (n - 1) / 2) / (n - 1);
            (start as u32, tile)
        })
        .collect()
}

/// The feathering band between two neighbouring spans: `(start, width)`, `width` pixels
/// (at most `band`, at most their overlap) centred in their overlap.
fn feather_band(first: (u32, u32), second: (u32, u32), band: u32) -> (u32, u32) {
    let (start, end) = (second.0, first.0 + first.1);
    let overlap = end.saturating_sub(start);
    let width = band.min(overlap);
    (start + (overlap - width) / 2, width)
}

/// The weight of tile `i` of `spans` at coordinate `p` (inside the tile) along one axis: 0
/// before the band it shares with the previous tile, rising linearly across it, 1 until the
/// band it shares with the next tile, falling across that. Two neighbours' weights sum to 1.
fn axis_weight(spans: &[(u32, u32)], i: usize, p: u32, band: u32) -> f32 {
    let ramp = |from: u32, width: u32| -> f32 {
        if p < from {
            0.0
        } else if p >= from + width {
            1.0
        } else {
            ((p - from) as f32 + 0.5) / width as f32
        }
    };
    let mut w = 1.0f32;
    if i > 0 {
        let (from, width) = feather_band(spans[i - 1], spans[i], band);
        w = w.min(ramp(from, width));
    }
    if let Some(&next) = spans.get(i + 1) {
        let (from, width) = feather_band(spans[i], next, band);
        w = w.min(1.0 - ramp(from, width));
    }
    w
}

/// How a `width` × `height` output is split into tiles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TileGrid {
    width: u32,
    height: u32,
    overlap: u32,
    columns: Vec<(u32, u32)>,
    rows: Vec<(u32, u32)>,
}

impl TileGrid {
    /// The grid of tiles of `tile_size` pixels overlapping by at least `overlap` over a
    /// `width` × `height` image; an image no larger than a tile is one tile.
    ///
    /// # Errors
    /// [`EngineError::InvalidOption`] naming `tile-size` or `tile-overlap` when the tile size
    /// is 0, the overlap is not smaller than the tile size, or the image is empty.
    pub fn new(width: u32, height: u32, tile_size: u32, overlap: u32) -> Result<Self> {
        if tile_size == 0 {
            return Err(EngineError::InvalidOption {
                option: "tile-size",
                reason: "must be at least 1 pixel".into(),
            });
        }
        if overlap >= tile_size {
            return Err(EngineError::InvalidOption {
                option: "tile-overlap",
                reason: format!("{overlap} px is not smaller than the tile size of {tile_size} px"),
            });
        }
        if width == 0 || height == 0 {
            return Err(EngineError::InvalidOption {
                option: "image-size",
                reason: format!("a {width}x{height} image has no pixels to tile"),
            });
        }
        Ok(Self {
            width,
            height,
            overlap,
            columns: spans(width, tile_size, overlap),
            rows: spans(height, tile_size, overlap),
        })
    }

    /// `(width, height)` of the whole image.
    pub fn dimensions(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// `(columns, rows)` of the grid.
    pub fn shape(&self) -> (usize, usize) {
        (self.columns.len(), self.rows.len())
    }

    /// The smallest overlap between neighbours the grid was asked for.
    pub fn overlap(&self) -> u32 {
        self.overlap
    }

    /// The tiles, row by row, overlap included.
    pub fn tiles(&self) -> Vec<Rect> {
        self.rows
            .iter()
            .flat_map(|&(y, height)| {
                self.columns.iter().map(move |&(x, width)| Rect {
                    x,
                    y,
                    width,
                    height,
                })
            })
            .collect()
    }

    /// The columns and rows where a tile begins or ends inside the image: where seams can
    /// show (`(xs, ys)`, each sorted, without duplicates).
    pub fn interior_edges(&self) -> (Vec<u32>, Vec<u32>) {
        let edges = |spans: &[(u32, u32)], length: u32| {
            let mut e: Vec<u32> = spans
                .iter()
                .flat_map(|&(s, l)| [s, s + l])
                .filter(|&p| p > 0 && p < length)
                .collect();
            e.sort_unstable();
            e.dedup();
            e
        };
        (
            edges(&self.columns, self.width),
            edges(&self.rows, self.height),
        )
    }

    /// The blending weight of tile `index` (in [`TileGrid::tiles`] order) at image pixel
    /// `(x, y)`, before normalisation; 0 outside the tile.
    fn raw_weight(&self, index: usize, x: u32, y: u32) -> f32 {
        let cols = self.columns.len();
        let (ci, ri) = (index % cols, index / cols);
        let (cx, cw) = self.columns[ci];
        let (ry, rh) = self.rows[ri];
        if x < cx || x >= cx + cw || y < ry || y >= ry + rh {
            return 0.0;
        }
        axis_weight(&self.columns, ci, x, self.overlap)
            * axis_weight(&self.rows, ri, y, self.overlap)
    }

    /// The blending weight of tile `index` at `(x, y)`: the weights of all tiles at a pixel
    /// sum to 1.
    pub fn weight(&self, index: usize, x: u32, y: u32) -> f32 {
        let total: f32 = (0..self.columns.len() * self.rows.len())
            .map(|i| self.raw_weight(i, x, y))
            .sum();
        if total > 0.0 {
            self.raw_weight(index, x, y) / total
        } else {
            0.0
        }
    }

    /// Puts rendered tiles (in [`TileGrid::tiles`] order, each of its tile's size) back into
    /// one image with feathered weights.
    ///
    /// # Errors
    /// When the number of tiles or one tile's size does not match the grid.
    pub fn blend(&self, tiles: &[RgbImage]) -> Result<RgbImage> {
        let rects = self.tiles();
        if tiles.len() != rects.len() {
            return Err(EngineError::InvalidOption {
                option: "tiles",
                reason: format!("{} images for a grid of {} tiles", tiles.len(), rects.len()),
            });
        }
        for (i, (img, r)) in tiles.iter().zip(&rects).enumerate() {
            if img.dimensions() != (r.width, r.height) {
                return Err(EngineError::InvalidOption {
                    option: "tiles",
                    reason: format!(
                        "tile {i} is {}x{}, not the planned {}x{}",
                        img.width(),
                        img.height(),
                        r.width,
                        r.height
                    ),
                });
            }
        }
        let (w, h) = (self.width as usize, self.height as usize);
        let mut sum = vec![0f32; w * h * 3];
        let mut weights = vec![0f32; w * h];
        for (i, (img, r)) in tiles.iter().zip(&rects).enumerate() {
            for ty in 0..r.height {
                let y = r.y + ty;
                for tx in 0..r.width {
                    let x = r.x + tx;
                    let wt = self.raw_weight(i, x, y);
                    let at = y as usize * w + x as usize;
                    weights[at] += wt;
                    let p = img.get_pixel(tx, ty).0;
                    for c in 0..3 {
                        sum[at * 3 + c] += wt * f32::from(p[c]);
                    }
                }
            }
        }
        Ok(RgbImage::from_fn(self.width, self.height, |x, y| {
            let at = y as usize * w + x as usize;
            let wt = weights[at];
            image::Rgb(std::array::from_fn(|c| {
                let v = if wt > 0.0 { sum[at * 3 + c] / wt } else { 0.0 };
                v.round().clamp(0.0, 255.0) as u8
            }))
        }))
    }
}

/// The start image of a tiled render at full size: the coarse pass's result upsampled, plus the
/// detail of `content` (already at full size) that the coarse pass could not hold, i.e.
/// `up(coarse) + content - up(down(content))` with `down` to the coarse pass's size. An
/// upsampled coarse result alone is blurred; its content term at full size starts far above
/// the content's own, and the tiles spent their iterations bringing the detail back.
pub fn coarse_with_detail(coarse: &RgbImage, content: &RgbImage) -> RgbImage {
    let (w, h) = content.dimensions();
    let (cw, ch) = coarse.dimensions();
    let up = crate::image_io::resize_exact(coarse, w, h);
    let low = crate::image_io::resize_exact(&crate::image_io::resize_exact(content, cw, ch), w, h);
    RgbImage::from_fn(w, h, |x, y| {
        let (u, c, l) = (
            up.get_pixel(x, y).0,
            content.get_pixel(x, y).0,
            low.get_pixel(x, y).0,
        );
        image::Rgb(std::array::from_fn(|k| {
            (i16::from(u[k]) + i16::from(c[k]) - i16::from(l[k])).clamp(0, 255) as u8
        }))
    })
}

/// The mean absolute difference between the pixels on either side of each line in `xs`
/// (between columns `x - 1` and `x`) and `ys` (rows), averaged over the lines; `None` without
/// lines.
pub fn edge_difference(img: &RgbImage, xs: &[u32], ys: &[u32]) -> Option<f64> {
    let (w, h) = img.dimensions();
    let diff = |a: [u8; 3], b: [u8; 3]| -> f64 {
        a.iter()
            .zip(b)
            .map(|(&p, q)| (f64::from(p) - f64::from(q)).abs())
            .sum::<f64>()
            / 3.0
    };
    let mut lines = Vec::new();
    for &x in xs.iter().filter(|&&x| x > 0 && x < w) {
        let d: f64 = (0..h)
            .map(|y| diff(img.get_pixel(x - 1, y).0, img.get_pixel(x, y).0))
            .sum();
        lines.push(d / f64::from(h));
    }
    for &y in ys.iter().filter(|&&y| y > 0 && y < h) {
        let d: f64 = (0..w)
            .map(|x| diff(img.get_pixel(x, y - 1).0, img.get_pixel(x, y).0))
            .sum();
        lines.push(d / f64::from(w));
    }
    (!lines.is_empty()).then(|| lines.iter().sum::<f64>() / lines.len() as f64)
}

/// The seam score of a tiled render: the mean absolute pixel difference across the grid's
/// interior tile edges in `tiled`, divided by the same on `untiled` (a render of the same
/// image without tiles) at the same lines. 1.0 means no trace of the tiles; `None` when the
/// grid has no interior edge or the untiled image is flat there.
pub fn seam_score(grid: &TileGrid, tiled: &RgbImage, untiled: &RgbImage) -> Option<f64> {
    let (xs, ys) = grid.interior_edges();
    let t = edge_difference(tiled, &xs, &ys)?;
    let u = edge_difference(untiled, &xs, &ys)?;
    (u > 0.0).then_some(t / u)
}

/// Pixels of context around each piece of an image whose Gram matrices are taken piece by
/// piece ([`gram_piece`]): the piece's pass sees them, so that features near its edges see
/// their real neighbourhood, but does not count their features.
pub const GRAM_MARGIN: usize = 64;

/// The largest piece of a `width` × `height` image that taking its Gram matrices in pieces of
/// `piece` pixels a side (0: no pieces) runs at once: the image itself, or a piece and its
/// margins.
pub fn gram_piece(width: u32, height: u32, piece: u32) -> (u32, u32) {
    let most = piece.saturating_add(2 * GRAM_MARGIN as u32);
    if piece == 0 || (width <= most && height <= most) {
        return (width, height);
    }
    (width.min(most), height.min(most))
}

/// Bytes of memory a render of `width` × `height` pixels needs at its peak, roughly: the
/// network's weights and working set plus the activations kept for the backward pass of a
/// VGG up to `relu5_1` (measured on VGG16 at 512 px: ~1.1 GiB for 196,608 pixels).
pub fn estimated_memory_bytes(width: u32, height: u32) -> u64 {
    const BASE: u64 = 256 << 20;
    const PER_PIXEL: u64 = 6 << 10;
    BASE + u64::from(width) * u64::from(height) * PER_PIXEL
}

/// Seconds a render of `width` × `height` pixels and `iterations` iterations takes, roughly,
/// on two CPU cores (L-BFGS renders at 512x384 and 1024x768 took 2.6 and 10.1 s per iteration
/// on the 2-core development machine).
pub fn estimated_seconds(width: u32, height: u32, iterations: u32) -> f64 {
    const SECONDS_PER_PIXEL_ITERATION: f64 = 1.3e-5;
    f64::from(width) * f64::from(height) * f64::from(iterations) * SECONDS_PER_PIXEL_ITERATION
}

/// The largest tile size (a multiple of 32 px, at least 64) whose tile, grown by `margin` on
/// every side, fits in `memory_bytes` by [`estimated_memory_bytes`]; `None` when not even
/// the smallest does.
pub fn tile_size_for_memory(memory_bytes: u64, margin: impl Fn(u32) -> u32) -> Option<u32> {
    let fits = |t: u32| {
        let side = t + 2 * margin(t);
        estimated_memory_bytes(side, side) <= memory_bytes
    };
    let mut best = None;
    let mut t = 64;
    while t <= crate::settings::MAX_IMAGE_SIZE && fits(t) {
        best = Some(t);
        t += 32;
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered_once_weighted(grid: &TileGrid) {
        let (w, h) = grid.dimensions();
        let tiles = grid.tiles();
        for y in 0..h {
            for x in 0..w {
                let covering = tiles.iter().filter(|r| r.contains(x, y)).count();
                assert!(covering >= 1, "({x}, {y}) is not covered");
                let sum: f32 = (0..tiles.len()).map(|i| grid.weight(i, x, y)).sum();
                assert!(
                    (sum - 1.0).abs() < 1e-5,
                    "weights sum to {sum} at ({x}, {y})"
                );
                for (i, r) in tiles.iter().enumerate() {
                    let wt = grid.weight(i, x, y);
                    assert!(wt >= 0.0);
                    if !r.contains(x, y) {
                        assert_eq!(wt, 0.0);
                    }
                }
            }
        }
    }

    #[test]
    fn every_pixel_is_covered_and_weights_sum_to_one() {
        for (w, h, t, o) in [
            (100, 60, 32, 8),
            (97, 75, 40, 11),
            (65, 65, 32, 0),
            (33, 45, 16, 13),
            (50, 7, 20, 4),
        ] {
            let grid = TileGrid::new(w, h, t, o).unwrap();
            covered_once_weighted(&grid);
            for r in grid.tiles() {
                assert!(r.right() <= w && r.bottom() <= h);
                assert!(r.width <= t && r.height <= t);
            }
        }
    }

    #[test]
    fn neighbours_overlap_by_at_least_the_overlap_asked_for() {
        let grid = TileGrid::new(1000, 333, 256, 40).unwrap();
        assert_eq!(grid.shape(), (5, 2));
        for pair in grid.columns.windows(2).chain(grid.rows.windows(2)) {
            let overlap = (pair[0].0 + pair[0].1) - pair[1].0;
            assert!(overlap >= 40, "{pair:?}");
        }
        assert_eq!(grid.columns.last().map(|c| c.0 + c.1), Some(1000));
        assert_eq!(grid.columns[0].0, 0);
    }

    #[test]
    fn an_image_smaller_than_a_tile_is_one_tile() {
        let grid = TileGrid::new(30, 20, 64, 16).unwrap();
        assert_eq!(
            grid.tiles(),
            vec![Rect {
                x: 0,
                y: 0,
                width: 30,
                height: 20
            }]
        );
        assert_eq!(grid.interior_edges(), (vec![], vec![]));
        covered_once_weighted(&grid);
    }

    #[test]
    fn bad_grids_name_the_option() {
        let e = TileGrid::new(100, 100, 32, 32).unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid tile-overlap: 32 px is not smaller than the tile size of 32 px"
        );
        let e = TileGrid::new(100, 100, 0, 0).unwrap_err().to_string();
        assert!(e.starts_with("invalid tile-size"), "{e}");
    }

    fn pattern(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 3 % 256) as u8,
                (y * 5 % 256) as u8,
                ((x ^ y) % 256) as u8,
            ])
        })
    }

    fn crop(img: &RgbImage, r: Rect) -> RgbImage {
        image::imageops::crop_imm(img, r.x, r.y, r.width, r.height).to_image()
    }

    #[test]
    fn blending_crops_of_one_image_gives_the_image_back() {
        let img = pattern(97, 61);
        let grid = TileGrid::new(97, 61, 40, 12).unwrap();
        let tiles: Vec<RgbImage> = grid.tiles().into_iter().map(|r| crop(&img, r)).collect();
        assert_eq!(grid.blend(&tiles).unwrap(), img);
        // The seams of a perfect reassembly are those of the image itself.
        let score = seam_score(&grid, &img, &img).unwrap();
        assert!((score - 1.0).abs() < 1e-12);
    }

    #[test]
    fn blending_feathers_across_the_overlap() {
        // Two tiles side by side, one black and one white: the overlap ramps between them
        // and there is no step larger than the ramp's.
        let grid = TileGrid::new(60, 10, 40, 20).unwrap();
        assert_eq!(grid.shape(), (2, 1));
        let tiles = vec![
            RgbImage::from_pixel(40, 10, image::Rgb([0, 0, 0])),
            RgbImage::from_pixel(40, 10, image::Rgb([255, 255, 255])),
        ];
        let out = grid.blend(&tiles).unwrap();
        assert_eq!(out.get_pixel(19, 5).0, [0, 0, 0]);
        assert_eq!(out.get_pixel(40, 5).0, [255, 255, 255]);
        let row: Vec<i32> = (0..60)
            .map(|x| i32::from(out.get_pixel(x, 5).0[0]))
            .collect();
        assert!(
            row.windows(2).all(|p| p[1] >= p[0] && p[1] - p[0] <= 14),
            "{row:?}"
        );
        // A hard cut (no blending) would score far above a feathered one.
        let hard = RgbImage::from_fn(60, 10, |x, _| {
            if x < 30 {
                image::Rgb([0, 0, 0])
            } else {
                image::Rgb([255, 255, 255])
            }
        });
        let smooth = RgbImage::from_fn(60, 10, |x, _| {
            let v = (x as f32 * 255.0 / 59.0).round() as u8;
            image::Rgb([v, v, v])
        });
        let (xs, ys) = grid.interior_edges();
        assert_eq!((xs.as_slice(), ys.as_slice()), (&[20u32, 40][..], &[][..]));
        let feathered = seam_score(&grid, &out, &smooth).unwrap();
        assert!(feathered < 4.0, "{feathered}");
        assert_eq!(edge_difference(&hard, &[30], &[]), Some(255.0));
    }

    #[test]
    fn a_wide_overlap_is_feathered_only_in_a_band_of_the_overlap_asked_for() {
        // Tiles at 0 and 36 overlap by 28 px; the 8 px band is centred in it: 46..54.
        let grid = TileGrid::new(100, 4, 64, 8).unwrap();
        let tiles = vec![
            RgbImage::from_pixel(64, 4, image::Rgb([0, 0, 0])),
            RgbImage::from_pixel(64, 4, image::Rgb([255, 255, 255])),
        ];
        let out = grid.blend(&tiles).unwrap();
        let row: Vec<u8> = (0..100).map(|x| out.get_pixel(x, 0).0[0]).collect();
        assert!(row[..46].iter().all(|&v| v == 0), "{row:?}");
        assert!(row[54..].iter().all(|&v| v == 255), "{row:?}");
        assert!(row[46..54].windows(2).all(|p| p[0] < p[1]), "{row:?}");
        covered_once_weighted(&grid);
        // No overlap asked for: a hard cut in the middle of the actual overlap.
        let grid = TileGrid::new(100, 4, 64, 0).unwrap();
        let out = grid.blend(&tiles).unwrap();
        assert_eq!(out.get_pixel(49, 0).0[0], 0);
        assert_eq!(out.get_pixel(50, 0).0[0], 255);
    }

    #[test]
    fn blend_refuses_tiles_that_do_not_fit_the_grid() {
        let grid = TileGrid::new(50, 50, 30, 10).unwrap();
        let e = grid.blend(&[pattern(30, 30)]).unwrap_err().to_string();
        assert!(e.contains("1 images for a grid of 4 tiles"), "{e}");
        let tiles = vec![
            pattern(30, 30),
            pattern(30, 30),
            pattern(30, 30),
            pattern(29, 30),
        ];
        let e = grid.blend(&tiles).unwrap_err().to_string();
        assert!(e.contains("tile 3 is 29x30"), "{e}");
    }

    #[test]
    fn context_grows_inside_the_image() {
        let r = Rect {
            x: 10,
            y: 0,
            width: 20,
            height: 20,
        };
        assert_eq!(
            r.grown(8, 35, 100),
            Rect {
                x: 2,
                y: 0,
                width: 33,
                height: 28
            }
        );
    }

    #[test]
    fn tile_size_follows_memory() {
        assert_eq!(tile_size_for_memory(1 << 20, |_| 0), None);
        let t = tile_size_for_memory(2 << 30, |t| t / 16).unwrap();
        let side = t + 2 * (t / 16);
        assert!(estimated_memory_bytes(side, side) <= 2 << 30);
        let bigger = t + 32 + 2 * ((t + 32) / 16);
        assert!(estimated_memory_bytes(bigger, bigger) > 2 << 30);
        assert!(estimated_seconds(256, 256, 100) > estimated_seconds(128, 128, 100));
    }

    #[test]
    fn the_coarse_start_gets_the_contents_detail_back() {
        // A checkerboard content that a 4x smaller coarse pass cannot hold; the coarse result
        // is flat grey. The start image keeps the coarse mean and the content's checks.
        let content = RgbImage::from_fn(64, 48, |x, y| {
            let v = if (x / 2 + y / 2) % 2 == 0 { 100 } else { 160 };
            image::Rgb([v, v, v])
        });
        let coarse = RgbImage::from_pixel(16, 12, image::Rgb([90, 90, 90]));
        let start = coarse_with_detail(&coarse, &content);
        assert_eq!(start.dimensions(), (64, 48));
        let mean = |img: &RgbImage| {
            img.pixels().map(|p| f64::from(p.0[0])).sum::<f64>() / f64::from(64 * 48)
        };
        assert!((mean(&start) - 90.0).abs() < 3.0, "{}", mean(&start));
        // Away from the border, neighbouring checks differ by about the content's 60.
        let (a, b) = (start.get_pixel(20, 20).0[0], start.get_pixel(22, 20).0[0]);
        assert!((i16::from(a) - i16::from(b)).abs() > 40, "{a} {b}");
        // A coarse result that equals the content's own downsampling gives the content back.
        let same = crate::image_io::resize_exact(&content, 16, 12);
        let back = coarse_with_detail(&same, &content);
        assert!(back
            .pixels()
            .zip(content.pixels())
            .all(|(p, q)| p.0[0].abs_diff(q.0[0]) <= 1));
    }
}
