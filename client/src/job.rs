//! From files and options to a submitted job: every image is read and decoded here first, so
//! a bad file is named by its path before anything is sent, then the images go up as blobs
//! and the spec names them.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use stylefarm_convert::settings_to_proto;
use stylefarm_core::image_io::{decode_image, read_bounded, DecodeLimits};
use stylefarm_core::settings::{Init, RenderSettings};
use stylefarm_proto::v1::JobSpec;

use crate::farm::{FarmClient, FarmError};

/// One input image: where it came from and its bytes (checked to decode).
#[derive(Debug, Clone)]
pub struct InputImage {
    /// The file.
    pub path: PathBuf,
    /// Its bytes, as read.
    pub bytes: Vec<u8>,
}

impl InputImage {
    /// Reads `path` and checks that it decodes as an image within the farm's limits; errors
    /// name the path.
    pub fn load(path: &Path) -> Result<Self> {
        let limits = DecodeLimits::default();
        let Some(bytes) = read_bounded(path, limits.max_alloc)
            .with_context(|| format!("cannot read {}", path.display()))?
        else {
            bail!(
                "{} is more than the {} MiB the farm accepts for an image",
                path.display(),
                limits.max_alloc >> 20
            );
        };
        decode_image(&bytes, &path.display().to_string(), &limits)?;
        Ok(Self {
            path: path.to_path_buf(),
            bytes,
        })
    }

    /// The file's name, for naming its output: a plain name on any system (a backslash or a
    /// control character, legal in Unix names, becomes `_`).
    fn name(&self) -> String {
        let name: String = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
            .chars()
            .map(|c| if c == '\\' || c.is_control() { '_' } else { c })
            .collect();
        match name.as_str() {
            "" | "." | ".." => "frame".to_string(),
            _ => name,
        }
    }
}

/// The images of a job, read and checked.
#[derive(Debug, Clone)]
pub struct JobInputs {
    /// Content frames: one task each.
    pub content: Vec<InputImage>,
    /// Style images.
    pub styles: Vec<InputImage>,
    /// The start image, for `--init PATH`.
    pub init: Option<InputImage>,
}

impl JobInputs {
    /// Reads and checks every image; `init` is required exactly when the settings say
    /// [`Init::Image`]. The settings are checked too, so option errors come before any
    /// upload.
    pub fn load(
        content: &[PathBuf],
        styles: &[PathBuf],
        init: Option<&Path>,
        settings: &RenderSettings,
    ) -> Result<Self> {
        if content.is_empty() {
            bail!("no content image given");
        }
        if styles.is_empty() {
            bail!("no style image given");
        }
        settings.validate(styles.len())?;
        let init = match (settings.init, init) {
            (Init::Image, Some(path)) => Some(InputImage::load(path).with_context(|| {
                format!(
                    "invalid init: `{}` is not random, content or a readable image",
                    path.display()
                )
            })?),
            (Init::Image, None) => bail!("invalid init: no start image given"),
            (Init::Random | Init::Content, _) => None,
        };
        Ok(Self {
            content: content
                .iter()
                .map(|p| InputImage::load(p))
                .collect::<Result<_>>()?,
            styles: styles
                .iter()
                .map(|p| InputImage::load(p))
                .collect::<Result<_>>()?,
            init,
        })
    }

    /// Uploads the images the coordinator lacks and returns the job's spec.
    ///
    /// # Errors
    /// When the coordinator cannot be reached or refuses a blob.
    pub async fn upload(
        &self,
        client: &FarmClient,
        settings: &RenderSettings,
    ) -> Result<JobSpec, FarmError> {
        let mut all: Vec<&[u8]> = Vec::new();
        all.extend(self.content.iter().map(|i| i.bytes.as_slice()));
        all.extend(self.styles.iter().map(|i| i.bytes.as_slice()));
        all.extend(self.init.iter().map(|i| i.bytes.as_slice()));
        let mut refs = client.upload_all(&all).await?.into_iter();
        let content: Vec<_> = refs.by_ref().take(self.content.len()).collect();
        let styles: Vec<_> = refs.by_ref().take(self.styles.len()).collect();
        let init_image = refs.next();
        let mut settings = settings.clone();
        // Snapshots are a local matter; the wire has no such setting.
        settings.save_iter = 0;
        Ok(JobSpec {
            name: self
                .content
                .first()
                .map(InputImage::name)
                .unwrap_or_default(),
            content,
            styles,
            init_image,
            settings: Some(settings_to_proto(&settings)),
            content_names: self.content.iter().map(InputImage::name).collect(),
            ..JobSpec::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names_are_plain_file_names() {
        let name = |p: &str| {
            InputImage {
                path: PathBuf::from(p),
                bytes: Vec::new(),
            }
            .name()
        };
        assert_eq!(name("frames/a.png"), "a.png");
        assert_eq!(name("odd\\name\n.png"), "odd_name_.png");
        assert_eq!(name("/"), "frame");
    }
}
