//! Contact sheets: the results of a parameter sweep side by side in one PNG, each under a
//! label saying its point (`style-weight=100`), drawn with a small built-in 5x7 bitmap font so
//! that no font files or text-rendering dependencies are needed.

use image::{Rgb, RgbImage};

use crate::image_io::resize_to_max_side;

/// Glyph width and height, in font pixels.
const GLYPH_W: u32 = 5;
const GLYPH_H: u32 = 7;
/// Each font pixel is drawn as a square of this many image pixels.
const SCALE: u32 = 2;
/// Space around cells and between label lines, in image pixels.
const PAD: u32 = 8;
const LINE_GAP: u32 = 4;

const BACKGROUND: Rgb<u8> = Rgb([255, 255, 255]);
const INK: Rgb<u8> = Rgb([0, 0, 0]);

/// Rows of a glyph, top first; bit 4 is the leftmost column. Letters are upper case; lower
/// case is drawn with them. Anything else is drawn as a hollow box.
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        ' ' => [0; 7],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        ',' => [0, 0, 0, 0, 0x0C, 0x04, 0x08],
        '=' => [0, 0, 0x1F, 0, 0x1F, 0, 0],
        '-' => [0, 0, 0, 0x1F, 0, 0, 0],
        '+' => [0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0],
        '_' => [0, 0, 0, 0, 0, 0, 0x1F],
        ':' => [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0],
        _ => [0x1F, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1F],
    }
}

/// Width in image pixels of `text` drawn by [`draw_text`].
pub fn text_width(text: &str) -> u32 {
    let n = text.chars().count() as u32;
    (n * (GLYPH_W + 1)).saturating_sub(1) * SCALE
}

/// Height in image pixels of one line of text.
pub fn line_height() -> u32 {
    GLYPH_H * SCALE
}

/// Draws `text` in black with its top-left corner at `(x, y)`; what falls outside the image is
/// clipped.
pub fn draw_text(img: &mut RgbImage, x: u32, y: u32, text: &str) {
    for (i, c) in text.chars().enumerate() {
        let gx = x + i as u32 * (GLYPH_W + 1) * SCALE;
        for (row, bits) in glyph(c).iter().enumerate() {
            for col in 0..GLYPH_W {
                if bits & (0x10 >> col) == 0 {
                    continue;
                }
                for dy in 0..SCALE {
                    for dx in 0..SCALE {
                        let (px, py) = (gx + col * SCALE + dx, y + row as u32 * SCALE + dy);
                        if px < img.width() && py < img.height() {
                            img.put_pixel(px, py, INK);
                        }
                    }
                }
            }
        }
    }
}

/// Lays `items` (an image and its label lines) out in a grid of about square shape, each image
/// scaled so that its longer side is at most `cell` pixels, its label under it.
pub fn contact_sheet(items: &[(RgbImage, Vec<String>)], cell: u32) -> RgbImage {
    let cell = cell.max(1);
    let n = items.len().max(1) as u32;
    let columns = (1..=n).find(|c| c * c >= n).unwrap_or(n);
    let rows = n.div_ceil(columns);
    let lines = items.iter().map(|(_, l)| l.len()).max().unwrap_or(0) as u32;
    let label_h = lines * (line_height() + LINE_GAP);
    let widest_label = items
        .iter()
        .flat_map(|(_, l)| l.iter().map(|s| text_width(s)))
        .max()
        .unwrap_or(0);
    let cell_w = cell.max(widest_label);
    let cell_h = cell + LINE_GAP + label_h;
    let width = PAD + columns * (cell_w + PAD);
    let height = PAD + rows * (cell_h + PAD);
    let mut sheet = RgbImage::from_pixel(width, height, BACKGROUND);
    for (i, (img, label)) in items.iter().enumerate() {
        let (c, r) = (i as u32 % columns, i as u32 / columns);
        let (x0, y0) = (PAD + c * (cell_w + PAD), PAD + r * (cell_h + PAD));
        let thumb = if img.width().max(img.height()) > cell {
            resize_to_max_side(img, cell)
        } else {
            img.clone()
        };
        image::imageops::replace(&mut sheet, &thumb, i64::from(x0), i64::from(y0));
        for (k, line) in label.iter().enumerate() {
            let y = y0 + cell + LINE_GAP + k as u32 * (line_height() + LINE_GAP);
            draw_text(&mut sheet, x0, y, line);
        }
    }
    sheet
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ink_in(img: &RgbImage, x0: u32, y0: u32, w: u32, h: u32) -> usize {
        (y0..y0 + h)
            .flat_map(|y| (x0..x0 + w).map(move |x| (x, y)))
            .filter(|&(x, y)| *img.get_pixel(x, y) == INK)
            .count()
    }

    #[test]
    fn text_is_drawn_where_asked_and_clipped() {
        let mut img = RgbImage::from_pixel(100, 30, BACKGROUND);
        draw_text(&mut img, 2, 2, "style-weight=10");
        assert!(ink_in(&img, 2, 2, 98, line_height()) > 50);
        assert_eq!(ink_in(&img, 0, 20, 100, 10), 0);
        // Different text, different pixels; an unknown character is a box, not nothing.
        let mut a = RgbImage::from_pixel(20, 20, BACKGROUND);
        let mut b = a.clone();
        draw_text(&mut a, 0, 0, "1");
        draw_text(&mut b, 0, 0, "7");
        assert_ne!(a, b);
        let mut unknown = RgbImage::from_pixel(20, 20, BACKGROUND);
        draw_text(&mut unknown, 0, 0, "é");
        assert!(ink_in(&unknown, 0, 0, 20, 20) > 0);
        assert_eq!(text_width("ab"), (2 * 6 - 1) * SCALE);
    }

    #[test]
    fn a_sheet_holds_every_image_under_its_label() {
        let red = RgbImage::from_pixel(40, 20, Rgb([255, 0, 0]));
        let blue = RgbImage::from_pixel(300, 100, Rgb([0, 0, 255]));
        let items = vec![
            (red, vec!["style-weight=10".to_string()]),
            (blue.clone(), vec!["style-weight=100".to_string()]),
            (blue, vec!["style-weight=1000".to_string()]),
        ];
        let sheet = contact_sheet(&items, 64);
        // Two columns, two rows.
        let cell_w = 64.max(text_width("style-weight=1000"));
        assert_eq!(sheet.width(), PAD + 2 * (cell_w + PAD));
        assert_eq!(*sheet.get_pixel(PAD, PAD), Rgb([255, 0, 0]));
        // The big image was scaled down to the cell.
        let x1 = PAD + cell_w + PAD;
        assert_eq!(*sheet.get_pixel(x1 + 63, PAD), Rgb([0, 0, 255]));
        assert_eq!(*sheet.get_pixel(x1 + 64, PAD), BACKGROUND);
        // Labels under the images.
        let label_y = PAD + 64 + LINE_GAP;
        assert!(ink_in(&sheet, PAD, label_y, cell_w, line_height()) > 50);
        assert!(ink_in(&sheet, x1, label_y, cell_w, line_height()) > 50);
    }
}
