//! The render options `render` and `submit` share, in neural-style's names (kebab case), and
//! the engine settings they describe.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use stylefarm_core::layers::{LayerName, Pooling, DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS};
use stylefarm_core::optim::Optimizer;
use stylefarm_core::settings::{Init, RenderSettings};

/// neural-style's options: everything that shapes the output image.
#[derive(Args, Debug, Clone)]
pub struct RenderOptions {
    /// Longer side of the output, in pixels.
    #[arg(long, default_value_t = 512)]
    pub image_size: u32,
    /// Iterations (each one forward and one backward pass of the network).
    #[arg(long, default_value_t = 500)]
    pub num_iterations: u32,
    /// `lbfgs` or `adam`.
    #[arg(long, default_value = "lbfgs", value_parser = ["lbfgs", "adam"])]
    pub optimizer: String,
    /// Adam's step, in 0..255 pixel units.
    #[arg(long, default_value_t = 10.0)]
    pub learning_rate: f32,
    /// L-BFGS with a strong-Wolfe line search (each trial point counts as an iteration).
    #[arg(long)]
    pub line_search: bool,
    /// L-BFGS history size.
    #[arg(long, default_value_t = 100)]
    pub lbfgs_history: usize,
    /// alpha: weight of the content term.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub content_weight: f32,
    /// beta: weight of the style term.
    #[arg(long, default_value_t = 100.0, allow_negative_numbers = true)]
    pub style_weight: f32,
    /// Weight of the total-variation term (smoothness).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub tv_weight: f32,
    /// Content layers, comma-separated.
    #[arg(long, default_value = DEFAULT_CONTENT_LAYERS)]
    pub content_layers: String,
    /// Style layers, comma-separated.
    #[arg(long, default_value = DEFAULT_STYLE_LAYERS)]
    pub style_layers: String,
    /// Blend weights of the style images, comma-separated (default: equal).
    #[arg(long)]
    pub style_blend_weights: Option<String>,
    /// Style image's longer side = image size x this.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub style_scale: f32,
    /// `random`, `content`, or the path of a start image.
    #[arg(long, default_value = "random")]
    pub init: String,
    /// Seed of the random init.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep the content's colours (transfer luminance only).
    #[arg(long)]
    pub original_colors: bool,
    /// `max` or `avg` pooling.
    #[arg(long, default_value = "max")]
    pub pooling: String,
}

impl RenderOptions {
    /// The engine settings these options describe (`save_iter` 0: snapshots are the
    /// caller's business). Values are parsed here and range-checked by
    /// [`RenderSettings::validate`].
    pub fn settings(&self) -> Result<RenderSettings> {
        let optimizer = match self.optimizer.as_str() {
            "adam" => Optimizer::Adam {
                learning_rate: self.learning_rate,
            },
            _ => Optimizer::Lbfgs {
                history: self.lbfgs_history,
                strong_wolfe: self.line_search,
            },
        };
        let init = match self.init.as_str() {
            "random" => Init::Random,
            "content" => Init::Content,
            _ => Init::Image,
        };
        let style_blend_weights = self
            .style_blend_weights
            .as_deref()
            .map(|s| {
                s.split(',')
                    .map(|v| {
                        v.trim().parse::<f32>().map_err(|_| {
                            anyhow::anyhow!("invalid style-blend-weights: `{v}` is not a number")
                        })
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .transpose()?;
        Ok(RenderSettings {
            image_size: self.image_size,
            num_iterations: self.num_iterations,
            optimizer,
            content_weight: self.content_weight,
            style_weight: self.style_weight,
            tv_weight: self.tv_weight,
            content_layers: LayerName::parse_list(&self.content_layers)?,
            style_layers: LayerName::parse_list(&self.style_layers)?,
            style_blend_weights,
            style_scale: self.style_scale,
            init,
            seed: self.seed,
            original_colors: self.original_colors,
            pooling: self.pooling.parse::<Pooling>()?,
            save_iter: 0,
        })
    }

    /// The start image's path, when `--init` names one.
    pub fn init_path(&self) -> Option<PathBuf> {
        match self.init.as_str() {
            "random" | "content" => None,
            path => Some(PathBuf::from(path)),
        }
    }
}

/// The paths of a comma-separated list (empty items skipped).
pub fn split_paths(list: &str) -> Vec<PathBuf> {
    list.split(',')
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect()
}

/// File extensions taken from a content directory.
const IMAGE_EXTENSIONS: [&str; 9] = [
    "png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff", "tga",
];

/// Content paths with each directory replaced by the images in it (by file name, so numbered
/// video frames stay in order). A directory without images is an error naming it.
pub fn expand_directories(paths: Vec<PathBuf>) -> Result<Vec<PathBuf>> {
    let mut out = Vec::with_capacity(paths.len());
    for path in paths {
        if !path.is_dir() {
            out.push(path);
            continue;
        }
        let entries = std::fs::read_dir(&path)
            .map_err(|e| anyhow::anyhow!("cannot read the directory {}: {e}", path.display()))?;
        let mut images: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                        IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str())
                    })
            })
            .collect();
        if images.is_empty() {
            anyhow::bail!("the directory {} holds no images", path.display());
        }
        images.sort();
        out.extend(images);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        options: RenderOptions,
    }

    #[test]
    fn defaults_are_the_engines() {
        let cli = Cli::parse_from(["x"]);
        assert_eq!(cli.options.settings().unwrap(), RenderSettings::default());
        assert_eq!(cli.options.init_path(), None);
    }

    #[test]
    fn options_become_settings() {
        let cli = Cli::parse_from([
            "x",
            "--optimizer",
            "adam",
            "--learning-rate",
            "2",
            "--style-blend-weights",
            "1,3",
            "--init",
            "start.png",
            "--pooling",
            "avg",
            "--seed",
            "7",
        ]);
        let s = cli.options.settings().unwrap();
        assert_eq!(s.optimizer, Optimizer::Adam { learning_rate: 2.0 });
        assert_eq!(s.style_blend_weights, Some(vec![1.0, 3.0]));
        assert_eq!(s.init, Init::Image);
        assert_eq!(s.pooling, Pooling::Avg);
        assert_eq!(s.seed, 7);
        assert_eq!(cli.options.init_path(), Some(PathBuf::from("start.png")));
        let bad = Cli::parse_from(["x", "--style-blend-weights", "1,x"]);
        let e = bad.options.settings().unwrap_err().to_string();
        assert_eq!(e, "invalid style-blend-weights: `x` is not a number");
    }

    #[test]
    fn a_content_directory_is_its_images_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["f002.png", "f001.PNG", "notes.txt", "f010.jpg"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let got =
            expand_directories(vec![dir.path().to_path_buf(), PathBuf::from("a.png")]).unwrap();
        let names: Vec<_> = got
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["f001.PNG", "f002.png", "f010.jpg", "a.png"]);
        let empty = tempfile::tempdir().unwrap();
        let e = expand_directories(vec![empty.path().to_path_buf()]).unwrap_err();
        assert!(e.to_string().ends_with("holds no images"), "{e}");
    }

    #[test]
    fn lists_split_on_commas() {
        assert_eq!(
            split_paths("a.jpg,,b.png"),
            vec![PathBuf::from("a.jpg"), PathBuf::from("b.png")]
        );
    }
}
