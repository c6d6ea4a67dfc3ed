//! Writing results: a result blob (PNG) goes to disk byte for byte as `.png`, or converted
//! for `.jpg`; files are written whole or not at all (a temporary file renamed into place).

use std::path::Path;

use anyhow::{bail, Context, Result};
use stylefarm_core::image_io::{decode_image, save_image, DecodeLimits};

/// Image formats an output name may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// `.png`: the result's bytes as they are.
    Png,
    /// `.jpg`/`.jpeg`: converted.
    Jpeg,
}

impl OutputFormat {
    /// The format `path`'s extension asks for, if it names one.
    pub fn of(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "png" => Some(Self::Png),
            "jpg" | "jpeg" => Some(Self::Jpeg),
            _ => None,
        }
    }

    /// The format of an output file name, or an error naming the file.
    pub fn require(path: &Path) -> Result<Self> {
        match Self::of(path) {
            Some(f) => Ok(f),
            None => bail!(
                "invalid output {}: use a .png or .jpg file name",
                path.display()
            ),
        }
    }
}

/// Writes a result image (PNG bytes) to `path`, converting it when the name asks for JPEG.
pub fn write_image(png: &[u8], path: &Path) -> Result<()> {
    match OutputFormat::require(path)? {
        OutputFormat::Png => write_atomically(path, png),
        OutputFormat::Jpeg => {
            let img = decode_image(png, "the result", &DecodeLimits::default())?;
            save_image(&img, path)?;
            Ok(())
        }
    }
}

/// Writes `bytes` to a temporary file next to `path` and renames it to `path`.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(stylefarm_core::image_io::write_atomically(path, bytes)?)
}

/// Width and height of an encoded image, from its header.
pub fn dimensions(bytes: &[u8]) -> Result<(u32, u32)> {
    image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .context("cannot read the result's header")?
        .into_dimensions()
        .context("cannot read the result's size")
}

#[cfg(test)]
mod tests {
    use super::*;
    use stylefarm_core::image_io::{encode_png, RgbImage};

    #[test]
    fn png_is_written_as_is_and_jpeg_converted() {
        let dir = tempfile::tempdir().unwrap();
        let img = RgbImage::from_fn(12, 7, |x, y| image::Rgb([x as u8 * 20, y as u8 * 30, 9]));
        let png = encode_png(&img).unwrap();
        let out = dir.path().join("a.png");
        write_image(&png, &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), png);
        let jpg = dir.path().join("a.JPG");
        write_image(&png, &jpg).unwrap();
        let bytes = std::fs::read(&jpg).unwrap();
        assert_eq!(&bytes[..2], &[0xff, 0xd8]);
        assert_eq!(dimensions(&bytes).unwrap(), (12, 7));
        let e = write_image(&png, &dir.path().join("a.gif")).unwrap_err();
        assert!(e.to_string().contains("use a .png or .jpg"), "{e}");
        // Only the two outputs: no temporary files left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
