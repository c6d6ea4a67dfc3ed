//! The geometry and costs of big prints in tiles: the rectangles tiles are made of, the seam
//! score that measures what a tiled render left at its tiles' edges, the pieces an image's Gram
//! matrices are taken in, and the rough memory and time a render of a given size needs (which
//! decides the tile size when none is given).
//!
//! Plain pixel arithmetic with no tensor code, so the coordinator plans tiles without candle.
//! The tiles themselves (in lock step) are [`crate::lockstep`]'s.

use image::RgbImage;

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

/// The seam score of a tiled render: the mean absolute pixel difference across the interior
/// tile edges `xs` (columns) and `ys` (rows) in `tiled` (for tiles in lock step,
/// [`crate::lockstep::interior_edges`]), divided by the same on `untiled` (a render of the same
/// image without tiles) at the same lines. 1.0 means no trace of the tiles; `None` without an
/// interior edge or when the untiled image is flat there.
pub fn seam_score(xs: &[u32], ys: &[u32], tiled: &RgbImage, untiled: &RgbImage) -> Option<f64> {
    let t = edge_difference(tiled, xs, ys)?;
    let u = edge_difference(untiled, xs, ys)?;
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

    fn pattern(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 3 % 256) as u8,
                (y * 5 % 256) as u8,
                ((x ^ y) % 256) as u8,
            ])
        })
    }

    #[test]
    fn the_seam_score_compares_the_steps_across_the_edges() {
        // An image's own steps score 1.
        let img = pattern(97, 61);
        let score = seam_score(&[40], &[20, 41], &img, &img).unwrap();
        assert!((score - 1.0).abs() < 1e-12);
        // A hard cut where a smooth ramp had small steps scores far above 1.
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
        assert_eq!(edge_difference(&hard, &[30], &[]), Some(255.0));
        assert!(seam_score(&[30], &[], &hard, &smooth).unwrap() > 50.0);
        // No edge, or a flat untiled render there: no score.
        assert_eq!(seam_score(&[], &[], &hard, &smooth), None);
        let flat = RgbImage::from_pixel(60, 10, image::Rgb([9, 9, 9]));
        assert_eq!(seam_score(&[30], &[], &hard, &flat), None);
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
}
