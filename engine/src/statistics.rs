//! The whole image's Gram matrices that a tile is optimised against, computed once per image
//! and shipped to every tile as one blob.
//!
//! The seed's style term couples every pixel through the Gram matrices of the whole image: at
//! a feature position of tile `t` its gradient is `4 c (G / N - A) F_t`, with `G / N` the whole
//! image's Gram matrix per position. A tile rendered alone only sees its own, `G_t / N_t`, so
//! against the style targets `A` it pulls every tile to the whole image's statistics: a calm
//! sky and a busy town both end up with the mean texture, and the whole image's content term
//! pays for it (1.8x the untiled render's at 1024x768).
//!
//! [`ImageStatistics`] holds `A` and the Gram matrices per position `S` of the image the tiles
//! start from, both at the full output size. A tile's targets are then `A + S_t - S`, with
//! `S_t` its own start's: where the tile starts the gradient is the whole image's exactly, and
//! each tile keeps its own departure from the mean while the image as a whole moves towards
//! the style's.
//!
//! What these targets cannot do is spread the change unevenly: every tile is asked for the
//! same `A - S`, where the untiled optimisation stylises a calm sky more and a busy town less.
//! That is most of what a tiled render still loses to an untiled one (`bench/tile_analysis.py`
//! measures it; the README has the figures). Letting each tile move the image's residual by
//! only its share in a later pass, `S_t + (A - S) / share`, overshot by far: what the first
//! pass leaves of the residual is not small, and every tile set out to close it alone.
//!
//! Tiles in lock step ([`crate::joint`]) spread it as the untiled render does, because they
//! are the untiled optimisation: they need only `A`, which [`ImageStatistics::encode_style`]
//! ships alone.

use std::collections::HashMap;

use candle_core::{Device, Tensor};

use crate::error::{EngineError, Result};
use crate::layers::LayerName;
use crate::objective::{per_position_grams, Pieces, StyleTargets};
use crate::vgg::Vgg;

/// The `format` written into a statistics blob's metadata.
const FORMAT: &str = "stylefarm-image-statistics-1";

/// The style targets of a whole image and the Gram matrices of the image its tiles start from.
#[derive(Debug, Clone)]
pub struct ImageStatistics {
    /// `A`, per feature position, at the full output size.
    pub style: StyleTargets,
    /// `S`, the start image's Gram matrices per position, layer for layer with `style`.
    pub start: StyleTargets,
}

impl ImageStatistics {
    /// The statistics of `start` (a network-input tensor at the full output size) against
    /// `style`, taken in `pieces` (see [`per_position_grams`]): the memory needed is a
    /// piece's however large the image.
    pub fn compute(
        vgg: &Vgg,
        style: StyleTargets,
        start: &Tensor,
        pieces: Pieces<'_>,
    ) -> Result<Self> {
        let start = start_grams(vgg, start, &style, pieces)?;
        Ok(Self { style, start })
    }

    /// The style targets of a tile whose own start is `tile_start` (a network-input tensor of
    /// the tile's context): `A + S_t - S`.
    pub fn tile_targets(&self, vgg: &Vgg, tile_start: &Tensor) -> Result<StyleTargets> {
        let own = start_grams(vgg, tile_start, &self.style, Pieces::WHOLE)?;
        let layers = self
            .style
            .layers
            .iter()
            .zip(&self.start.layers)
            .zip(own.layers)
            .map(|(((l, a), (_, s)), (_, t))| Ok((*l, ((a + t)? - s)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(StyleTargets { layers })
    }

    /// The blob: a safetensors file with one float32 (C, C) matrix per layer and kind, named
    /// `style.relu1_1`, `start.relu1_1`, ...
    pub fn encode(&self) -> Result<Vec<u8>> {
        encode(&[("style", &self.style), ("start", &self.start)])
    }

    /// A blob of the style targets alone (`style.relu1_1`, ...), for tiles in lock step
    /// (`crate::joint::style_targets_of_statistics` reads it; [`Self::decode`] does not).
    pub fn encode_style(style: &StyleTargets) -> Result<Vec<u8>> {
        encode(&[("style", style)])
    }

    /// Reads a blob written by [`Self::encode`], checking that it holds `layers` (in order)
    /// with square matrices of the sizes `vgg` gives them.
    pub fn decode(bytes: &[u8], vgg: &Vgg, layers: &[LayerName]) -> Result<Self> {
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| {
            bad(format!(
                "the image statistics are not a safetensors file: {e}"
            ))
        })?;
        let format = meta.metadata().as_ref().and_then(|m| m.get("format"));
        if format.map(String::as_str) != Some(FORMAT) {
            return Err(bad(format!(
                "the image statistics have format {format:?}, not {FORMAT}"
            )));
        }
        let mut tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)?;
        let mut take = |kind: &str| -> Result<StyleTargets> {
            let layers = layers
                .iter()
                .map(|&l| {
                    let name = format!("{kind}.{l}");
                    let t = tensors
                        .remove(&name)
                        .ok_or_else(|| bad(format!("the image statistics lack {name}")))?;
                    let c = vgg.channels(vgg.position(l)?);
                    if t.dims() != [c, c] {
                        return Err(bad(format!(
                            "{name} is {:?} in the image statistics, not ({c}, {c})",
                            t.dims()
                        )));
                    }
                    Ok((
                        l,
                        t.to_dtype(candle_core::DType::F32)?
                            .to_device(vgg.device())?,
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(StyleTargets { layers })
        };
        Ok(Self {
            style: take("style")?,
            start: take("start")?,
        })
    }
}

/// A statistics blob of the named sets of Gram matrices (`kind.layer`), in order.
fn encode(sets: &[(&str, &StyleTargets)]) -> Result<Vec<u8>> {
    let mut named: Vec<(String, Tensor)> = Vec::new();
    for (kind, targets) in sets {
        for (layer, gram) in &targets.layers {
            named.push((format!("{kind}.{layer}"), gram.contiguous()?));
        }
    }
    let layers = sets.first().map_or_else(String::new, |(_, t)| {
        t.layers
            .iter()
            .map(|(l, _)| l.to_string())
            .collect::<Vec<_>>()
            .join(",")
    });
    let meta = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("layers".to_string(), layers),
    ]);
    safetensors::tensor::serialize(named.iter().map(|(n, t)| (n.as_str(), t)), Some(meta))
        .map_err(|e| bad(format!("could not write the image statistics: {e}")))
}

/// The Gram matrices per position of `image` at the layers of `like`.
fn start_grams(
    vgg: &Vgg,
    image: &Tensor,
    like: &StyleTargets,
    pieces: Pieces<'_>,
) -> Result<StyleTargets> {
    let positions = like
        .layers
        .iter()
        .map(|(l, _)| vgg.position(*l))
        .collect::<Result<Vec<_>>>()?;
    let deepest = positions.iter().copied().max().unwrap_or(0);
    let grams = per_position_grams(vgg, image, &positions, deepest, pieces)?;
    Ok(StyleTargets {
        layers: like.layers.iter().map(|(l, _)| *l).zip(grams).collect(),
    })
}

fn bad(reason: String) -> EngineError {
    EngineError::Candle(candle_core::Error::Msg(reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{max_rel_diff, tiny_vgg};

    fn image(h: usize, w: usize, seed: f64) -> Tensor {
        let n = 3 * h * w;
        let v: Vec<f32> = (0..n)
            .map(|i| (100.0 * ((i as f64) * 0.37 + seed).sin()) as f32)
            .collect();
        Tensor::from_vec(v, (1, 3, h, w), &Device::Cpu).unwrap()
    }

    fn layers() -> Vec<LayerName> {
        LayerName::parse_list("relu1_1,relu3_1,relu5_1").unwrap()
    }

    fn statistics(vgg: &Vgg) -> ImageStatistics {
        let style = StyleTargets::compute(vgg, &[(image(40, 36, 1.0), 1.0)], &layers()).unwrap();
        ImageStatistics::compute(vgg, style, &image(48, 64, 2.0), Pieces::WHOLE).unwrap()
    }

    #[test]
    fn a_blob_reads_back_as_written() {
        let vgg = tiny_vgg();
        let s = statistics(&vgg);
        let back = ImageStatistics::decode(&s.encode().unwrap(), &vgg, &layers()).unwrap();
        for (a, b) in [(&s.style, &back.style), (&s.start, &back.start)] {
            for ((la, ta), (lb, tb)) in a.layers.iter().zip(&b.layers) {
                assert_eq!(la, lb);
                assert_eq!(max_rel_diff(ta, tb), 0.0);
            }
        }
    }

    #[test]
    fn bad_blobs_are_refused_with_a_reason() {
        let vgg = tiny_vgg();
        let blob = statistics(&vgg).encode().unwrap();
        let e = ImageStatistics::decode(b"not a blob", &vgg, &layers()).unwrap_err();
        assert!(e.to_string().contains("not a safetensors file"), "{e}");
        let more = LayerName::parse_list("relu1_1,relu2_1").unwrap();
        let e = ImageStatistics::decode(&blob, &vgg, &more).unwrap_err();
        assert!(e.to_string().contains("lack style.relu2_1"), "{e}");
        let plain = safetensors::tensor::serialize(
            [(
                "style.relu1_1",
                &Tensor::zeros((2, 2), candle_core::DType::F32, &Device::Cpu).unwrap(),
            )],
            None,
        )
        .unwrap();
        let e = ImageStatistics::decode(&plain, &vgg, &layers()).unwrap_err();
        assert!(e.to_string().contains("format"), "{e}");
    }

    #[test]
    fn a_tile_that_starts_as_the_whole_image_gets_the_style_targets() {
        let vgg = tiny_vgg();
        let s = statistics(&vgg);
        // S_t = S: the targets are A.
        let same = s.tile_targets(&vgg, &image(48, 64, 2.0)).unwrap();
        for ((_, a), (_, t)) in s.style.layers.iter().zip(&same.layers) {
            assert!(max_rel_diff(t, a) <= 1e-5);
        }
        // Another start moves each target by exactly its Gram matrices' difference.
        let other = image(32, 40, 5.0);
        let moved = s.tile_targets(&vgg, &other).unwrap();
        let own = start_grams(&vgg, &other, &s.style, Pieces::WHOLE).unwrap();
        for (((a, st), m), o) in s
            .style
            .layers
            .iter()
            .zip(&s.start.layers)
            .zip(&moved.layers)
            .zip(&own.layers)
        {
            let want = ((&a.1 - &st.1).unwrap() + &o.1).unwrap();
            assert!(max_rel_diff(&m.1, &want) <= 1e-5);
        }
    }
}
