//! The whole image's style targets that its tiles in lock step are optimised against, computed
//! once per image by a statistics task and shipped to the coordinator's driver as one blob.
//!
//! The style term couples every pixel through the Gram matrices of the whole image, so tiles
//! are optimised in lock step ([`stylefarm_core::lockstep`]): the driver adds the tiles' Gram matrices up
//! into the whole image's and compares them with the style targets `A` (per feature position,
//! at the full output size). A statistics task computes `A` (in pieces, when a worker lacks the
//! memory for the whole style image at once) and [`encode_style`] writes it;
//! [`stylefarm_core::lockstep::style_targets_of_statistics`] reads it back.

use std::collections::HashMap;

use candle_core::Tensor;

use crate::error::{EngineError, Result};
use crate::objective::StyleTargets;

/// The `format` written into a statistics blob's metadata.
const FORMAT: &str = "stylefarm-image-statistics-1";

/// The blob of the style targets `A`: a safetensors file with one float32 (C, C) matrix per
/// layer, named `style.relu1_1`, ...
pub fn encode_style(style: &StyleTargets) -> Result<Vec<u8>> {
    let named = style
        .layers
        .iter()
        .map(|(layer, gram)| Ok((format!("style.{layer}"), gram.contiguous()?)))
        .collect::<Result<Vec<(String, Tensor)>>>()?;
    let layers = style
        .layers
        .iter()
        .map(|(l, _)| l.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let meta = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("layers".to_string(), layers),
    ]);
    safetensors::tensor::serialize(named.iter().map(|(n, t)| (n.as_str(), t)), Some(meta)).map_err(
        |e| {
            EngineError::Candle(candle_core::Error::Msg(format!(
                "could not write the image statistics: {e}"
            )))
        },
    )
}
