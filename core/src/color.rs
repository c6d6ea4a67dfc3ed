//! Original colours: luminance-only style transfer, as neural-style's `-original_colors 1`.
//!
//! The result keeps the luminance (Y) of the styled image and takes the chrominance (I, Q) of
//! the content image, in the YIQ space that neural-style uses (`image.rgb2yiq`). The forward
//! matrix is neural-style's; the way back is its exact inverse (so an image combined with
//! itself comes back unchanged), where torch's `yiq2rgb` uses a rounded one.

use crate::image_io::{resize_exact, RgbImage};

/// RGB -> YIQ, rows Y, I, Q (NTSC, as torch `image.rgb2yiq`).
const RGB_TO_YIQ: [[f64; 3]; 3] = [
    [0.299, 0.587, 0.114],
    [0.596, -0.274, -0.322],
    [0.211, -0.523, 0.312],
];

/// Inverse of a 3x3 matrix by cofactors; `None` if singular.
fn invert3(m: &[[f64; 3]; 3]) -> Option<[[f64; 3]; 3]> {
    let cof = |r: usize, c: usize| {
        let (r1, r2) = ((r + 1) % 3, (r + 2) % 3);
        let (c1, c2) = ((c + 1) % 3, (c + 2) % 3);
        m[r1][c1] * m[r2][c2] - m[r1][c2] * m[r2][c1]
    };
    let det = m[0][0] * cof(0, 0) + m[0][1] * cof(0, 1) + m[0][2] * cof(0, 2);
    if det.abs() < 1e-12 {
        return None;
    }
    let mut inv = [[0.0; 3]; 3];
    for (r, row) in inv.iter_mut().enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            // Adjugate is the transposed cofactor matrix.
            *v = cof(c, r) / det;
        }
    }
    Some(inv)
}

fn to_f32(m: &[[f64; 3]; 3]) -> [[f32; 3]; 3] {
    m.map(|row| row.map(|v| v as f32))
}

fn dot(row: &[f32; 3], v: [f32; 3]) -> f32 {
    row[0] * v[0] + row[1] * v[1] + row[2] * v[2]
}

fn to_u8(v: f32) -> u8 {
    if v.is_nan() {
        0
    } else {
        v.round().clamp(0.0, 255.0) as u8
    }
}

/// The styled image recoloured with the content's colours: luminance Y from `styled`,
/// chrominance I and Q (YIQ) from `content`, resized (Lanczos3) to the styled size if the
/// sizes differ. The result has the styled image's size; values are clamped and rounded.
pub fn keep_original_colors(styled: &RgbImage, content: &RgbImage) -> RgbImage {
    let (w, h) = styled.dimensions();
    let resized;
    let content = if content.dimensions() == (w, h) {
        content
    } else {
        resized = resize_exact(content, w, h);
        &resized
    };
    let fwd = to_f32(&RGB_TO_YIQ);
    // The matrix is a fixed, well-conditioned constant, so the fallback never happens; it
    // only avoids a panic path (it would return the styled image unchanged).
    let Some(inv) = invert3(&RGB_TO_YIQ).map(|m| to_f32(&m)) else {
        return styled.clone();
    };
    let mut out = RgbImage::new(w, h);
    for ((dst, s), c) in out.pixels_mut().zip(styled.pixels()).zip(content.pixels()) {
        let s = s.0.map(f32::from);
        let c = c.0.map(f32::from);
        let yiq = [dot(&fwd[0], s), dot(&fwd[1], c), dot(&fwd[2], c)];
        for (k, v) in dst.0.iter_mut().enumerate() {
            *v = to_u8(dot(&inv[k], yiq));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn luma(p: Rgb<u8>) -> f32 {
        dot(&to_f32(&RGB_TO_YIQ)[0], p.0.map(f32::from))
    }

    #[test]
    fn inverse_is_exact_and_keeps_grey_grey() {
        let inv = invert3(&RGB_TO_YIQ).expect("invertible");
        for (r, row) in RGB_TO_YIQ.iter().enumerate() {
            for c in 0..3 {
                let v: f64 = row.iter().zip(&inv).map(|(m, i)| m * i[c]).sum();
                let want = if r == c { 1.0 } else { 0.0 };
                assert!((v - want).abs() < 1e-9, "({r},{c}) = {v}");
            }
        }
        // I and Q of a grey are 0, so Y maps back to (Y, Y, Y): first column all ones.
        for row in &inv {
            assert!((row[0] - 1.0).abs() < 1e-9);
        }
        // Close to torch's rounded yiq2rgb.
        assert!((inv[0][1] - 0.956).abs() < 0.005 && (inv[2][2] - 1.703).abs() < 0.005);
    }

    #[test]
    fn grey_styled_image_takes_the_content_hue() {
        let content = RgbImage::from_fn(6, 4, |x, _| {
            if x < 3 {
                Rgb([200, 50, 50])
            } else {
                Rgb([40, 90, 210])
            }
        });
        let styled = RgbImage::from_pixel(6, 4, Rgb([100, 100, 100]));
        let out = keep_original_colors(&styled, &content);
        assert_eq!(out.dimensions(), (6, 4));
        for (x, y, p) in out.enumerate_pixels() {
            let c = *content.get_pixel(x, y);
            // Luminance from the styled image.
            assert!((luma(*p) - 100.0).abs() <= 1.0, "({x},{y}) {p:?}");
            // Hue from the content: the content shifted by the luminance difference.
            let shift = 100.0 - luma(c);
            for k in 0..3 {
                let want = f32::from(c[k]) + shift;
                assert!(
                    (f32::from(p[k]) - want).abs() <= 1.0,
                    "({x},{y}) {p:?} vs {want}"
                );
            }
        }
        let red = out.get_pixel(0, 0);
        assert!(red[0] > red[1] + 100 && red[1] == red[2], "{red:?}");
        let blue = out.get_pixel(5, 3);
        assert!(blue[2] > blue[1] && blue[1] > blue[0], "{blue:?}");
    }

    #[test]
    fn identical_inputs_come_back_unchanged() {
        let img = RgbImage::from_fn(13, 7, |x, y| {
            Rgb([
                (x * 19 + y * 3) as u8,
                (250 - x * 7 - y * 11) as u8,
                (x * y * 5) as u8,
            ])
        });
        let out = keep_original_colors(&img, &img);
        for (a, b) in out.pixels().zip(img.pixels()) {
            for k in 0..3 {
                assert!(
                    (i32::from(a[k]) - i32::from(b[k])).abs() <= 1,
                    "{a:?} vs {b:?}"
                );
            }
        }
        // Saturated corners too.
        for px in [
            [0, 0, 0],
            [255, 255, 255],
            [255, 0, 0],
            [0, 255, 0],
            [0, 0, 255],
        ] {
            let one = RgbImage::from_pixel(1, 1, Rgb(px));
            let back = keep_original_colors(&one, &one);
            assert_eq!(back.get_pixel(0, 0).0, px);
        }
    }

    #[test]
    fn output_has_the_styled_size() {
        let styled = RgbImage::from_pixel(8, 5, Rgb([120, 120, 120]));
        let content = RgbImage::from_pixel(31, 17, Rgb([30, 160, 60]));
        let out = keep_original_colors(&styled, &content);
        assert_eq!(out.dimensions(), (8, 5));
        // A flat content stays flat after resizing: every pixel is greenish.
        assert!(out.pixels().all(|p| p[1] > p[0] && p[1] > p[2]));
        let empty = RgbImage::new(0, 0);
        assert_eq!(keep_original_colors(&empty, &content).dimensions(), (0, 0));
    }
}
