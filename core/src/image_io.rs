//! Images in and out: the one module that turns files and bytes into RGB pixels, pixels into
//! network-input values and back, and pixels into PNG/JPEG files.
//!
//! Decoding guesses the format from the content (never the extension), checks the declared
//! size against [`DecodeLimits`] before any pixel is decoded (decompression bombs), applies
//! the EXIF orientation and flattens every colour type (grey, 16-bit, palette, CMYK, alpha
//! composited over white) to 8-bit RGB. Writing goes through a temporary file in the target's
//! directory and a rename, so a crash never leaves a half-written output behind.

use std::fs;
use std::io::{Cursor, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::imageops::FilterType;
use image::metadata::Orientation;
use image::{
    DynamicImage, ExtendedColorType, ImageBuffer, ImageDecoder, ImageEncoder, ImageError,
    ImageReader, Limits, Primitive, Rgba,
};

pub use image::RgbImage;

use crate::error::{CoreError, Result};
use crate::preprocess::Preprocess;

/// JPEG quality used by [`save_image`] for `.jpg`/`.jpeg` outputs.
pub const SAVE_JPEG_QUALITY: u8 = 95;

/// Size limits checked against an image's header before it is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest accepted width, in pixels.
    pub max_width: u32,
    /// Largest accepted height, in pixels.
    pub max_height: u32,
    /// Largest accepted width × height.
    pub max_pixels: u64,
    /// Largest number of bytes the decoder may allocate (the decoded pixels included).
    pub max_alloc: u64,
}

impl Default for DecodeLimits {
    /// 16384 × 16384 at most, 64 megapixels (64 × 2^20 pixels) in all, 1 GiB of decoder memory.
    fn default() -> Self {
        DecodeLimits {
            max_width: 16384,
            max_height: 16384,
            max_pixels: 64 * 1024 * 1024,
            max_alloc: 1024 * 1024 * 1024,
        }
    }
}

fn bad_image(what: &str, reason: impl Into<String>) -> CoreError {
    CoreError::BadImage {
        what: what.to_string(),
        reason: reason.into(),
    }
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes.div_ceil(1024 * 1024))
}

/// Turns an `image` crate error into a one-sentence [`CoreError`].
fn from_image_error(what: &str, err: ImageError, limits: &DecodeLimits) -> CoreError {
    let reason = match err {
        ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            "the data ends early (truncated or incomplete file)".to_string()
        }
        ImageError::IoError(e) => format!("the data could not be read ({e})"),
        ImageError::Decoding(e) => format!("the data is corrupt ({e})"),
        ImageError::Unsupported(e) => format!("it uses something stylefarm cannot decode ({e})"),
        ImageError::Limits(_) => format!(
            "decoding it would need more than the memory limit of {}",
            mib(limits.max_alloc)
        ),
        ImageError::Parameter(e) => format!("the decoder refused it ({e})"),
        ImageError::Encoding(e) => format!("the decoder failed ({e})"),
    };
    bad_image(what, reason)
}

/// Refuses empty images and images over `limits`, from their declared size.
fn check_dimensions(what: &str, width: u32, height: u32, limits: &DecodeLimits) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(bad_image(
            what,
            format!("it declares a size of {width}x{height} pixels, which has no pixels"),
        ));
    }
    let too_large = |limit: String| CoreError::ImageTooLarge {
        what: what.to_string(),
        width,
        height,
        limit,
    };
    if width > limits.max_width || height > limits.max_height {
        return Err(too_large(format!(
            "{}x{} pixels",
            limits.max_width, limits.max_height
        )));
    }
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(too_large(format!("{} pixels in all", limits.max_pixels)));
    }
    Ok(())
}

/// Decodes an image file's bytes to 8-bit RGB.
///
/// The format is guessed from the content: JPEG (including CMYK), PNG (including palette and
/// 16-bit), WebP, GIF (first frame), BMP, TIFF, and the other formats the `image` crate reads
/// by default. The EXIF orientation is applied; alpha is composited over white. `what` names
/// the input in error messages (a path, or e.g. "content image").
///
/// # Errors
/// [`CoreError::ImageTooLarge`] when the declared size is over `limits` (checked from the
/// header, before decoding); [`CoreError::BadImage`] for empty, unrecognised, corrupt or
/// truncated data and for images with no pixels.
pub fn decode_image(bytes: &[u8], what: &str, limits: &DecodeLimits) -> Result<RgbImage> {
    if bytes.is_empty() {
        return Err(bad_image(what, "the data is empty (0 bytes)"));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad_image(what, format!("the data could not be read ({e})")))?;
    if reader.format().is_none() {
        return Err(bad_image(
            what,
            "its format is not recognised (expected JPEG, PNG, WebP or another common image format)",
        ));
    }
    // Width and height are checked by hand below, so that the error can say the size; the
    // decoder's own allocations are capped here.
    let mut decoder_limits = Limits::default();
    decoder_limits.max_alloc = Some(limits.max_alloc);
    reader.limits(decoder_limits);

    let mut decoder = reader
        .into_decoder()
        .map_err(|e| from_image_error(what, e, limits))?;
    let (width, height) = decoder.dimensions();
    check_dimensions(what, width, height, limits)?;
    if decoder.total_bytes() > limits.max_alloc {
        return Err(CoreError::ImageTooLarge {
            what: what.to_string(),
            width,
            height,
            limit: format!("{} of decoded pixels", mib(limits.max_alloc)),
        });
    }
    // A broken Exif block is no reason to refuse the pixels: it just means no rotation.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut img =
        DynamicImage::from_decoder(decoder).map_err(|e| from_image_error(what, e, limits))?;
    img.apply_orientation(orientation);
    Ok(flatten_to_rgb8(img))
}

/// Reads and decodes an image file (see [`decode_image`]); errors name the path.
///
/// # Errors
/// [`CoreError::Io`] when the file cannot be read, else as [`decode_image`].
pub fn load_image(path: &Path, limits: &DecodeLimits) -> Result<RgbImage> {
    let io_err = |err| CoreError::Io {
        path: path.to_path_buf(),
        err,
    };
    let what = path.display().to_string();
    let size = fs::metadata(path).map_err(io_err)?.len();
    if size > limits.max_alloc {
        return Err(bad_image(
            &what,
            format!(
                "the file is {size} bytes, more than the decoding memory limit of {}",
                mib(limits.max_alloc)
            ),
        ));
    }
    let bytes = fs::read(path).map_err(io_err)?;
    decode_image(&bytes, &what, limits)
}

/// Any decoded image to 8-bit RGB; alpha is composited over white.
fn flatten_to_rgb8(img: DynamicImage) -> RgbImage {
    let color = img.color();
    if !color.has_alpha() {
        return img.into_rgb8();
    }
    let bytes_per_channel = color.bytes_per_pixel() / color.channel_count().max(1);
    match bytes_per_channel {
        1 => composite_over_white(&img.into_rgba8(), f32::from(u8::MAX)),
        2 => composite_over_white(&img.into_rgba16(), f32::from(u16::MAX)),
        _ => composite_over_white(&img.into_rgba32f(), 1.0),
    }
}

/// Straight-alpha RGBA (channel values in `0..=full`) composited over a white background.
fn composite_over_white<T>(src: &ImageBuffer<Rgba<T>, Vec<T>>, full: f32) -> RgbImage
where
    Rgba<T>: image::Pixel<Subpixel = T>,
    T: Primitive + Into<f32>,
{
    let mut out = RgbImage::new(src.width(), src.height());
    for (dst, px) in out.pixels_mut().zip(src.pixels()) {
        let a: f32 = px[3].into();
        let alpha = (a / full).clamp(0.0, 1.0);
        for (d, &v) in dst.0.iter_mut().zip(&px.0[..3]) {
            let v: f32 = v.into();
            let v = (v / full).clamp(0.0, 1.0);
            *d = to_u8((v * alpha + (1.0 - alpha)) * 255.0);
        }
    }
    out
}

/// Nearest 0..=255 value (NaN becomes 0).
fn to_u8(v: f32) -> u8 {
    if v.is_nan() {
        0
    } else {
        // In range after the clamp, so the cast is exact.
        v.round().clamp(0.0, 255.0) as u8
    }
}

/// Resizes so that the longer side is `max_side` pixels (upscaling or downscaling), keeping
/// the aspect ratio; each side is at least 1 pixel. Returns an identical copy, without
/// resampling, when the image already has that size. Lanczos3 filter.
///
/// A `max_side` of 0 is taken as 1.
pub fn resize_to_max_side(img: &RgbImage, max_side: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return img.clone();
    }
    let (nw, nh) = fit_max_side(w, h, max_side);
    resize_exact(img, nw, nh)
}

/// The size [`resize_to_max_side`] gives a `width` × `height` image: the longer side becomes
/// `max_side` (0 is taken as 1), the shorter one is scaled and rounded to nearest, at least 1.
/// The coordinator plans tiles with it without touching pixels.
pub fn fit_max_side(width: u32, height: u32, max_side: u32) -> (u32, u32) {
    let max_side = u64::from(max_side.max(1));
    let (long, short) = (
        u64::from(width.max(height).max(1)),
        u64::from(width.min(height)),
    );
    // Rounded to nearest; never above max_side since short <= long.
    let scaled_short = ((short * max_side + long / 2) / long).max(1);
    let (max_side, scaled_short) = (
        u32::try_from(max_side).unwrap_or(u32::MAX),
        u32::try_from(scaled_short).unwrap_or(u32::MAX),
    );
    if width >= height {
        (max_side, scaled_short)
    } else {
        (scaled_short, max_side)
    }
}

/// Resizes to exactly `width` × `height` (a 0 is taken as 1) with the Lanczos3 filter;
/// returns an identical copy when the size is already that.
pub fn resize_exact(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (width, height) = (width.max(1), height.max(1));
    if img.dimensions() == (width, height) {
        return img.clone();
    }
    image::imageops::resize(img, width, height, FilterType::Lanczos3)
}

/// The network-input values of an image, (3, H, W) flattened: what [`image_to_tensor`] holds,
/// without candle (the coordinator's lock-step driver).
pub fn image_to_network(img: &RgbImage, pre: Preprocess) -> Vec<f32> {
    let plane = (img.width() * img.height()) as usize;
    let mut data = vec![0f32; 3 * plane];
    for (c, dst) in data.chunks_exact_mut(plane.max(1)).enumerate().take(3) {
        let src = pre.rgb_channel(c);
        for (d, px) in dst.iter_mut().zip(img.as_raw().chunks_exact(3)) {
            *d = pre.to_network(c, f32::from(px[src]));
        }
    }
    data
}

/// The image of network-input values `x`, (3, H, W) flattened, the inverse of
/// [`image_to_network`]: values mapped back to pixels, clamped to `[0, 255]` and rounded to
/// nearest. `None` when `x` is not `width` x `height` or the image would be too large.
pub fn network_to_image(x: &[f32], width: u32, height: u32, pre: Preprocess) -> Option<RgbImage> {
    let plane = (width as usize).checked_mul(height as usize)?;
    if x.len() != 3 * plane {
        return None;
    }
    let mut raw = vec![0u8; 3 * plane];
    for (c, src) in x.chunks_exact(plane.max(1)).enumerate().take(3) {
        let rgb = pre.rgb_channel(c);
        for (px, &v) in raw.chunks_exact_mut(3).zip(src) {
            px[rgb] = to_u8(pre.to_pixel(c, v));
        }
    }
    RgbImage::from_raw(width, height, raw)
}

fn encode_error(format: &str, img: &RgbImage, err: ImageError) -> CoreError {
    CoreError::InvalidOption {
        option: "output",
        reason: format!(
            "cannot encode a {}x{} image as {format}: {err}",
            img.width(),
            img.height()
        ),
    }
}

/// The PNG file (8-bit RGB) of an image.
///
/// # Errors
/// [`CoreError::InvalidOption`] (`output`) if the encoder refuses the image.
pub fn encode_png(img: &RgbImage) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    PngEncoder::new(&mut buf)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            ExtendedColorType::Rgb8,
        )
        .map_err(|e| encode_error("PNG", img, e))?;
    Ok(buf)
}

/// The baseline JPEG file of an image at `quality` (1..=100; values outside are clamped).
///
/// # Errors
/// [`CoreError::InvalidOption`] (`output`) if the encoder refuses the image (JPEG sides are
/// at most 65535 pixels).
pub fn encode_jpeg(img: &RgbImage, quality: u8) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    JpegEncoder::new_with_quality(&mut buf, quality.clamp(1, 100))
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            ExtendedColorType::Rgb8,
        )
        .map_err(|e| encode_error("JPEG", img, e))?;
    Ok(buf)
}

/// Writes an image as PNG (`.png`) or JPEG (`.jpg`/`.jpeg`, quality
/// [`SAVE_JPEG_QUALITY`]), chosen by the extension (any case). The file is written to a
/// temporary file in the same directory and then renamed over `path`, so `path` holds either
/// its old content or the complete new image, never a part.
///
/// # Errors
/// [`CoreError::InvalidOption`] (`output`) for any other extension (nothing is written);
/// [`CoreError::Io`] when the file cannot be written.
pub fn save_image(img: &RgbImage, path: &Path) -> Result<()> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let bytes = match ext.as_deref() {
        Some("png") => encode_png(img)?,
        Some("jpg" | "jpeg") => encode_jpeg(img, SAVE_JPEG_QUALITY)?,
        _ => {
            return Err(CoreError::InvalidOption {
                option: "output",
                reason: format!(
                    "cannot tell an image format from the name {}: use .png or .jpg",
                    path.display()
                ),
            })
        }
    };
    write_atomically(path, &bytes)
}

/// Writes `bytes` to a new temporary file next to `path`, syncs it and renames it to `path`.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let io_err = |err| CoreError::Io {
        path: path.to_path_buf(),
        err,
    };
    let Some(name) = path.file_name() else {
        return Err(CoreError::InvalidOption {
            option: "output",
            reason: format!("{} does not name a file", path.display()),
        });
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(
        ".{}.{}-{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        // Best effort: the temporary file may not even exist.
        let _ = fs::remove_file(&tmp);
        return Err(io_err(e));
    }
    // Best effort: make the rename itself durable (not possible on every platform).
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Seeded noise image: each channel value from N(127.5, 30^2), clamped to 0..=255.
pub fn random_image(width: u32, height: u32, seed: u64) -> RgbImage {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    RgbImage::from_fn(width, height, |_, _| {
        image::Rgb(std::array::from_fn(|_| {
            // Box-Muller: two uniforms to one standard normal.
            let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
            let u2: f64 = rng.random();
            let n = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            (127.5 + 30.0 * n).round().clamp(0.0, 255.0) as u8
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixels_round_trip_through_network_values() {
        let img = RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8 * 40, y as u8 * 70, 200]));
        for pre in [Preprocess::Caffe, Preprocess::Torchvision] {
            let x = image_to_network(&img, pre);
            assert_eq!(network_to_image(&x, 5, 3, pre), Some(img.clone()));
            assert_eq!(network_to_image(&x, 4, 3, pre), None);
        }
    }
    use image::{GrayImage, ImageFormat, Luma, Rgb};

    fn limits() -> DecodeLimits {
        DecodeLimits::default()
    }

    fn png_of(img: DynamicImage) -> Vec<u8> {
        let mut buf = Cursor::new(Vec::new());
        img.write_to(&mut buf, ImageFormat::Png)
            .expect("encode png");
        buf.into_inner()
    }

    fn decode(bytes: &[u8]) -> RgbImage {
        decode_image(bytes, "test image", &limits()).expect("decode")
    }

    fn assert_bad(result: Result<RgbImage>) -> String {
        match result {
            Err(e @ CoreError::BadImage { .. }) => e.to_string(),
            other => panic!("expected BadImage, got {other:?}"),
        }
    }

    fn close(a: Rgb<u8>, b: [u8; 3], tol: i32) -> bool {
        (0..3).all(|c| (i32::from(a[c]) - i32::from(b[c])).abs() <= tol)
    }

    /// An image whose every pixel differs from the others.
    fn pattern(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            Rgb([
                (x * 37 + y * 11) as u8,
                (x * 13 + y * 29 + 100) as u8,
                (x * y * 7 + 3) as u8,
            ])
        })
    }

    // ---- decoding: colour types ----

    #[test]
    fn decodes_grayscale_8_bit() {
        let img = GrayImage::from_fn(3, 2, |x, y| Luma([(x * 100 + y * 20) as u8]));
        let out = decode(&png_of(DynamicImage::ImageLuma8(img.clone())));
        assert_eq!(out.dimensions(), (3, 2));
        for (x, y, p) in out.enumerate_pixels() {
            let g = img.get_pixel(x, y)[0];
            assert_eq!(p.0, [g, g, g]);
        }
    }

    #[test]
    fn decodes_grayscale_16_bit() {
        let img: ImageBuffer<Luma<u16>, Vec<u16>> =
            ImageBuffer::from_raw(3, 1, vec![0, 257 * 128, 65535]).expect("buffer");
        let out = decode(&png_of(DynamicImage::ImageLuma16(img)));
        assert_eq!(out.get_pixel(0, 0).0, [0; 3]);
        assert_eq!(out.get_pixel(1, 0).0, [128; 3]);
        assert_eq!(out.get_pixel(2, 0).0, [255; 3]);
    }

    #[test]
    fn decodes_rgb_16_bit() {
        let img: ImageBuffer<Rgb<u16>, Vec<u16>> =
            ImageBuffer::from_raw(2, 1, vec![65535, 0, 257 * 100, 257 * 7, 257 * 200, 0])
                .expect("buffer");
        let out = decode(&png_of(DynamicImage::ImageRgb16(img)));
        assert_eq!(out.get_pixel(0, 0).0, [255, 0, 100]);
        assert_eq!(out.get_pixel(1, 0).0, [7, 200, 0]);
    }

    #[test]
    fn alpha_is_composited_over_white() {
        let img = image::RgbaImage::from_raw(3, 1, vec![0, 0, 0, 0, 10, 20, 30, 255, 0, 0, 0, 128])
            .expect("buffer");
        let out = decode(&png_of(DynamicImage::ImageRgba8(img)));
        assert_eq!(
            out.get_pixel(0, 0).0,
            [255; 3],
            "transparent black -> white"
        );
        assert_eq!(out.get_pixel(1, 0).0, [10, 20, 30], "opaque kept");
        assert_eq!(
            out.get_pixel(2, 0).0,
            [127; 3],
            "half-transparent black -> mid grey"
        );
        // Grey + alpha, 16-bit.
        let la: ImageBuffer<image::LumaA<u16>, Vec<u16>> =
            ImageBuffer::from_raw(2, 1, vec![0, 0, 257 * 50, 65535]).expect("buffer");
        let out = decode(&png_of(DynamicImage::ImageLumaA16(la)));
        assert_eq!(out.get_pixel(0, 0).0, [255; 3]);
        assert_eq!(out.get_pixel(1, 0).0, [50; 3]);
    }

    #[test]
    fn decodes_palette_png() {
        let mut buf = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut buf, 3, 2);
            enc.set_color(png::ColorType::Indexed);
            enc.set_depth(png::BitDepth::Eight);
            enc.set_palette(vec![255u8, 0, 0, 0, 128, 0, 0, 0, 0]);
            // Entry 2 is fully transparent; 0 and 1 opaque.
            enc.set_trns(vec![255u8, 255, 0]);
            let mut w = enc.write_header().expect("header");
            w.write_image_data(&[0, 1, 2, 1, 0, 0]).expect("data");
            w.finish().expect("finish");
        }
        let out = decode(&buf);
        assert_eq!(out.dimensions(), (3, 2));
        assert_eq!(out.get_pixel(0, 0).0, [255, 0, 0]);
        assert_eq!(out.get_pixel(1, 0).0, [0, 128, 0]);
        assert_eq!(
            out.get_pixel(2, 0).0,
            [255, 255, 255],
            "transparent entry -> white"
        );
        assert_eq!(out.get_pixel(0, 1).0, [0, 128, 0]);
        assert_eq!(out.get_pixel(2, 1).0, [255, 0, 0]);
    }

    #[test]
    fn decodes_cmyk_jpeg() {
        // 16x8: left 8x8 block pure red in CMYK, right block 50% black.
        let (w, h) = (16u16, 8u16);
        let mut cmyk = Vec::new();
        for _y in 0..h {
            for x in 0..w {
                cmyk.extend_from_slice(if x < 8 {
                    &[0, 255, 255, 0]
                } else {
                    &[0, 0, 0, 128]
                });
            }
        }
        let mut buf = Vec::new();
        jpeg_encoder::Encoder::new(&mut buf, 100)
            .encode(&cmyk, w, h, jpeg_encoder::ColorType::Cmyk)
            .expect("encode cmyk");
        let out = decode(&buf);
        assert_eq!(out.dimensions(), (16, 8));
        let red = *out.get_pixel(3, 4);
        let grey = *out.get_pixel(12, 4);
        assert!(close(red, [255, 0, 0], 8), "red came out {red:?}");
        assert!(close(grey, [127, 127, 127], 8), "grey came out {grey:?}");
    }

    #[test]
    fn decodes_lossless_webp() {
        let img = pattern(5, 3);
        let mut buf = Vec::new();
        image::codecs::webp::WebPEncoder::new_lossless(&mut buf)
            .encode(img.as_raw(), 5, 3, ExtendedColorType::Rgb8)
            .expect("encode webp");
        assert_eq!(&buf[8..12], b"WEBP");
        assert_eq!(decode(&buf), img);
    }

    /// A TIFF-structured Exif APP1 payload holding only Orientation = `orientation`.
    fn exif_orientation(orientation: u16) -> Vec<u8> {
        let mut e = b"Exif\0\0".to_vec();
        e.extend_from_slice(b"II*\0"); // little endian TIFF
        e.extend_from_slice(&8u32.to_le_bytes()); // IFD0 offset
        e.extend_from_slice(&1u16.to_le_bytes()); // one entry
        e.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation
        e.extend_from_slice(&3u16.to_le_bytes()); // SHORT
        e.extend_from_slice(&1u32.to_le_bytes()); // count
        e.extend_from_slice(&orientation.to_le_bytes());
        e.extend_from_slice(&[0, 0]); // value padding
        e.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
        e
    }

    #[test]
    fn exif_orientation_is_applied() {
        // A 4x2 grid of distinct colours, each cell an 8x8 JPEG block (so JPEG keeps the
        // colours): stored 32x16, displayed (rotated 90 degrees clockwise) 16x32.
        let colours: [[u8; 3]; 8] = [
            [255, 0, 0],
            [0, 255, 0],
            [0, 0, 255],
            [255, 255, 0],
            [255, 0, 255],
            [0, 255, 255],
            [0, 0, 0],
            [255, 255, 255],
        ];
        let cell = |cx: u32, cy: u32| colours[(cy * 4 + cx) as usize];
        let stored = RgbImage::from_fn(32, 16, |x, y| Rgb(cell(x / 8, y / 8)));
        let mut buf = Vec::new();
        let mut enc = jpeg_encoder::Encoder::new(&mut buf, 100);
        enc.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_4_4);
        enc.add_app_segment(1, &exif_orientation(6)).expect("app1");
        enc.encode(stored.as_raw(), 32, 16, jpeg_encoder::ColorType::Rgb)
            .expect("encode");
        let out = decode(&buf);
        assert_eq!(out.dimensions(), (16, 32));
        // Rotating 90 degrees clockwise: stored cell (cx, cy) of a 4x2 grid lands at
        // displayed cell (2 - 1 - cy, cx) of a 2x4 grid.
        for cy in 0..2 {
            for cx in 0..4 {
                let (dx, dy) = (1 - cy, cx);
                let px = *out.get_pixel(dx * 8 + 4, dy * 8 + 4);
                assert!(
                    close(px, cell(cx, cy), 12),
                    "cell ({cx},{cy}) -> ({dx},{dy}) is {px:?}, expected {:?}",
                    cell(cx, cy)
                );
            }
        }
        // Without the Exif block the same JPEG stays as stored.
        let mut plain = Vec::new();
        let mut enc = jpeg_encoder::Encoder::new(&mut plain, 100);
        enc.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_4_4);
        enc.encode(stored.as_raw(), 32, 16, jpeg_encoder::ColorType::Rgb)
            .expect("encode");
        assert_eq!(decode(&plain).dimensions(), (32, 16));
    }

    // ---- decoding: refusals ----

    fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc.finalize().to_be_bytes());
    }

    /// A PNG whose header claims `w` x `h` RGB pixels, with a tiny (empty) IDAT.
    fn png_claiming(w: u32, h: u32) -> Vec<u8> {
        let mut out = vec![137, 80, 78, 71, 13, 10, 26, 10];
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&w.to_be_bytes());
        ihdr.extend_from_slice(&h.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, adaptive, no interlace
        png_chunk(&mut out, b"IHDR", &ihdr);
        png_chunk(
            &mut out,
            b"IDAT",
            &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
        );
        png_chunk(&mut out, b"IEND", &[]);
        out
    }

    #[test]
    fn decompression_bomb_is_refused_from_the_header() {
        let bytes = png_claiming(100_000, 100_000);
        match decode_image(&bytes, "bomb.png", &limits()) {
            Err(CoreError::ImageTooLarge {
                what,
                width,
                height,
                ..
            }) => {
                assert_eq!(
                    (what.as_str(), width, height),
                    ("bomb.png", 100_000, 100_000)
                );
            }
            other => panic!("expected ImageTooLarge, got {other:?}"),
        }
        // Within the per-side limits but over the pixel count.
        let bytes = png_claiming(16_000, 16_000);
        assert!(matches!(
            decode_image(&bytes, "big", &limits()),
            Err(CoreError::ImageTooLarge { .. })
        ));
        // Custom limits apply to real images too.
        let small = DecodeLimits {
            max_width: 4,
            ..DecodeLimits::default()
        };
        let real = png_of(DynamicImage::ImageRgb8(pattern(5, 1)));
        assert!(matches!(
            decode_image(&real, "x", &small),
            Err(CoreError::ImageTooLarge { width: 5, .. })
        ));
        let tiny_alloc = DecodeLimits {
            max_alloc: 10,
            ..DecodeLimits::default()
        };
        assert!(matches!(
            decode_image(&real, "x", &tiny_alloc),
            Err(CoreError::ImageTooLarge { .. } | CoreError::BadImage { .. })
        ));
    }

    #[test]
    fn zero_sized_image_is_refused() {
        let msg = assert_bad(decode_image(&png_claiming(0, 5), "empty.png", &limits()));
        assert!(msg.contains("empty.png"), "{msg}");
    }

    #[test]
    fn empty_truncated_and_garbage_bytes_are_bad_images() {
        let msg = assert_bad(decode_image(&[], "content image", &limits()));
        assert!(
            msg.contains("content image") && msg.contains("empty"),
            "{msg}"
        );

        let full = png_of(DynamicImage::ImageRgb8(pattern(40, 30)));
        for cut in [4, 20, full.len() / 2, full.len() - 20] {
            assert_bad(decode_image(&full[..cut], "cut.png", &limits()));
        }

        // Deterministic pseudo-random garbage (xorshift).
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let garbage: Vec<u8> = (0..4096)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s as u8
            })
            .collect();
        let msg = assert_bad(decode_image(&garbage, "noise", &limits()));
        assert!(msg.contains("not recognised"), "{msg}");

        // A known signature followed by garbage.
        let mut fake = vec![0xff, 0xd8, 0xff];
        fake.extend_from_slice(&garbage[..100]);
        assert_bad(decode_image(&fake, "fake.jpg", &limits()));
    }

    #[test]
    fn load_image_reads_files_and_names_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("in.png");
        fs::write(&path, png_of(DynamicImage::ImageRgb8(pattern(4, 3)))).expect("write");
        assert_eq!(load_image(&path, &limits()).expect("load"), pattern(4, 3));
        let missing = dir.path().join("missing.png");
        match load_image(&missing, &limits()) {
            Err(CoreError::Io { path, .. }) => assert_eq!(path, missing),
            other => panic!("expected Io, got {other:?}"),
        }
        // The format comes from the content, not the name.
        let lying = dir.path().join("really_a_png.jpg");
        fs::copy(&path, &lying).expect("copy");
        assert_eq!(load_image(&lying, &limits()).expect("load"), pattern(4, 3));
    }

    // ---- resizing ----

    #[test]
    fn resize_keeps_the_aspect_ratio() {
        let img = RgbImage::new(1000, 10);
        assert_eq!(resize_to_max_side(&img, 100).dimensions(), (100, 1));
        let img = RgbImage::new(10, 1000);
        assert_eq!(resize_to_max_side(&img, 100).dimensions(), (1, 100));
        let img = RgbImage::new(1000, 1);
        assert_eq!(resize_to_max_side(&img, 100).dimensions(), (100, 1));
        let img = RgbImage::new(300, 200);
        assert_eq!(resize_to_max_side(&img, 512).dimensions(), (512, 341));
        assert_eq!(resize_to_max_side(&img, 0).dimensions(), (1, 1));
        assert_eq!(resize_exact(&img, 7, 5).dimensions(), (7, 5));
    }

    #[test]
    fn resize_is_an_identical_copy_at_the_same_size() {
        let img = pattern(9, 4);
        assert_eq!(resize_to_max_side(&img, 9), img);
        assert_eq!(resize_exact(&img, 9, 4), img);
        let flat = RgbImage::from_pixel(20, 10, Rgb([40, 80, 120]));
        let small = resize_to_max_side(&flat, 7);
        assert!(small.pixels().all(|p| close(*p, [40, 80, 120], 1)));
    }

    // ---- encoding and saving ----

    #[test]
    fn encoders_produce_decodable_files() {
        let img = pattern(17, 9);
        assert_eq!(decode(&encode_png(&img).expect("png")), img);
        let flat = RgbImage::from_pixel(16, 8, Rgb([200, 100, 50]));
        let back = decode(&encode_jpeg(&flat, 95).expect("jpeg"));
        assert!(back.pixels().all(|p| close(*p, [200, 100, 50], 3)));
        // Out-of-range quality is clamped, not a panic.
        decode(&encode_jpeg(&flat, 0).expect("q0"));
        decode(&encode_jpeg(&flat, 255).expect("q255"));
    }

    #[test]
    fn save_image_writes_png_and_jpeg_and_refuses_other_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let img = pattern(11, 6);
        let png_path = dir.path().join("out.png");
        save_image(&img, &png_path).expect("save png");
        assert_eq!(load_image(&png_path, &limits()).expect("load"), img);
        // Overwriting works.
        save_image(&pattern(3, 2), &png_path).expect("overwrite");
        assert_eq!(
            load_image(&png_path, &limits()).expect("load").dimensions(),
            (3, 2)
        );

        let flat = RgbImage::from_pixel(16, 8, Rgb([10, 200, 30]));
        for name in ["out.jpg", "OUT.JPEG"] {
            let p = dir.path().join(name);
            save_image(&flat, &p).expect("save jpeg");
            let bytes = fs::read(&p).expect("read");
            assert_eq!(&bytes[..2], &[0xff, 0xd8], "{name} is a JPEG");
            let back = load_image(&p, &limits()).expect("load");
            assert!(back.pixels().all(|px| close(*px, [10, 200, 30], 3)));
        }

        for name in ["out.bmp", "out", "out.webp"] {
            let p = dir.path().join(name);
            match save_image(&img, &p) {
                Err(CoreError::InvalidOption { option, reason }) => {
                    assert_eq!(option, "output");
                    assert!(reason.contains(".png or .jpg"), "{reason}");
                }
                other => panic!("{name}: expected InvalidOption, got {other:?}"),
            }
            assert!(!p.exists());
        }

        // A directory that does not exist: an Io error naming the path, no stray files.
        let p = dir.path().join("no_such_dir").join("x.png");
        assert!(matches!(save_image(&img, &p), Err(CoreError::Io { .. })));

        // No temporary files are left behind.
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["OUT.JPEG", "out.jpg", "out.png"]);
    }
}
