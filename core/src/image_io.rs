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
    // The decoded pixels count against `max_alloc` too, as in `ImageReader::decode`: the
    // decoder's own buffers get what is left. (A GIF's first frame is allocated at its own
    // declared size, up to 65535 x 65535, which the fuzzer showed can be far larger than the
    // screen it is drawn on: without this, the two together could take twice the limit.)
    let mut rest = Limits::default();
    rest.max_alloc = Some(limits.max_alloc - decoder.total_bytes());
    decoder
        .set_limits(rest)
        .map_err(|e| from_image_error(what, e, limits))?;
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
    let bytes = read_bounded(path, limits.max_alloc)
        .map_err(io_err)?
        .ok_or_else(|| {
            bad_image(
                &what,
                format!(
                    "the file is larger than the decoding memory limit of {}",
                    mib(limits.max_alloc)
                ),
            )
        })?;
    decode_image(&bytes, &what, limits)
}

/// Reads at most `max_bytes` of `path`: `None` when it holds more. Never trusts the file's
/// stated size, which is 0 for `/dev/zero`, a pipe or a growing file.
///
/// # Errors
/// When the file cannot be opened or read.
pub fn read_bounded(path: &Path, max_bytes: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read as _;
    let file = fs::File::open(path)?;
    let hint = file.metadata().map_or(0, |m| m.len()).min(max_bytes);
    let mut bytes = Vec::with_capacity(usize::try_from(hint).unwrap_or(0));
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= max_bytes).then_some(bytes))
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

/// The network-input values of an image, (3, H, W) flattened: what
/// `stylefarm_engine::tensor::image_to_tensor` holds, without candle (the coordinator's
/// lock-step driver).
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
