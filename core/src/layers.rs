//! VGG architectures and their named layers (`conv4_2`, `relu4_2`, `pool4`).
//!
//! A network is a flat sequence of operations in torchvision's `features.N` order: each 3x3
//! convolution is followed by a ReLU and each block by a 2x2 pool, so a layer's position in
//! that sequence is its torchvision index.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};

/// Which VGG: the number of 3x3 convolutions in each of the five blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VggArch {
    /// VGG-16: 2, 2, 3, 3, 3 convolutions.
    Vgg16,
    /// VGG-19: 2, 2, 4, 4, 4 convolutions.
    Vgg19,
}

impl VggArch {
    /// Convolutions per block.
    pub fn block_sizes(self) -> [usize; 5] {
        match self {
            VggArch::Vgg16 => [2, 2, 3, 3, 3],
            VggArch::Vgg19 => [2, 2, 4, 4, 4],
        }
    }

    /// Total number of convolutions (13 or 16).
    pub fn num_convs(self) -> usize {
        self.block_sizes().iter().sum()
    }

    /// The architecture with `n` convolutions, if any.
    pub fn from_num_convs(n: usize) -> Option<Self> {
        [VggArch::Vgg16, VggArch::Vgg19]
            .into_iter()
            .find(|a| a.num_convs() == n)
    }

    /// The operations of the feature stack, in order.
    pub fn ops(self) -> Vec<LayerName> {
        let mut ops = Vec::with_capacity(2 * self.num_convs() + 5);
        for (b, &n) in self.block_sizes().iter().enumerate() {
            let block = b as u8 + 1;
            for i in 1..=n as u8 {
                ops.push(LayerName::new(LayerKind::Conv, block, i));
                ops.push(LayerName::new(LayerKind::Relu, block, i));
            }
            ops.push(LayerName::new(LayerKind::Pool, block, 0));
        }
        ops
    }

    /// Position of `layer` in [`Self::ops`] (its torchvision `features` index).
    pub fn position(self, layer: LayerName) -> Result<usize> {
        self.ops()
            .iter()
            .position(|l| *l == layer)
            .ok_or_else(|| CoreError::UnknownLayer {
                name: layer.to_string(),
                reason: format!(
                    "{} has {} convolutions in block {}",
                    self,
                    self.block_sizes()[usize::from(layer.block - 1)],
                    layer.block
                ),
            })
    }
}

impl fmt::Display for VggArch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VggArch::Vgg16 => "VGG-16",
            VggArch::Vgg19 => "VGG-19",
        })
    }
}

/// What a named layer is the output of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LayerKind {
    /// A 3x3 convolution (before its ReLU).
    Conv,
    /// The ReLU after a convolution.
    Relu,
    /// The 2x2 pool closing a block.
    Pool,
}

/// A layer of a VGG feature stack, as neural-style names it: `conv{b}_{n}`, `relu{b}_{n}`,
/// `pool{b}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LayerName {
    /// Conv, ReLU or pool.
    pub kind: LayerKind,
    /// Block, 1..=5.
    pub block: u8,
    /// Convolution within the block, from 1; 0 for a pool.
    pub index: u8,
}

impl LayerName {
    /// A layer name; not checked against an architecture (see [`VggArch::position`]).
    pub const fn new(kind: LayerKind, block: u8, index: u8) -> Self {
        Self { kind, block, index }
    }

    /// Input pixels per feature position along each axis: 2 for every pool up to and
    /// including this layer.
    pub const fn stride(self) -> u32 {
        match self.kind {
            LayerKind::Pool => 1 << self.block,
            _ => 1 << (self.block - 1),
        }
    }

    /// Parses a comma-separated list such as `relu1_1,relu2_1`; empty items are refused.
    pub fn parse_list(s: &str) -> Result<Vec<Self>> {
        s.split(',').map(|item| item.trim().parse()).collect()
    }
}

impl fmt::Display for LayerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            LayerKind::Conv => write!(f, "conv{}_{}", self.block, self.index),
            LayerKind::Relu => write!(f, "relu{}_{}", self.block, self.index),
            LayerKind::Pool => write!(f, "pool{}", self.block),
        }
    }
}

impl FromStr for LayerName {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: &str| CoreError::UnknownLayer {
            name: s.to_string(),
            reason: reason.to_string(),
        };
        let (kind, rest) = if let Some(rest) = s.strip_prefix("conv") {
            (LayerKind::Conv, rest)
        } else if let Some(rest) = s.strip_prefix("relu") {
            (LayerKind::Relu, rest)
        } else if let Some(rest) = s.strip_prefix("pool") {
            (LayerKind::Pool, rest)
        } else {
            return Err(bad(
                "layer names look like relu4_2, conv3_1 or pool2 (neural-style's names)",
            ));
        };
        let number = |t: &str| -> Result<u8> {
            if t.is_empty() || t.len() > 2 || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(
                    "expected a block number and a layer number, as in relu4_2",
                ));
            }
            t.parse().map_err(|_| bad("number out of range"))
        };
        let (block, index) = match kind {
            LayerKind::Pool => (number(rest)?, 0),
            _ => {
                let (b, i) = rest
                    .split_once('_')
                    .ok_or_else(|| bad("expected block_layer after the kind, as in relu4_2"))?;
                (number(b)?, number(i)?)
            }
        };
        if !(1..=5).contains(&block) {
            return Err(bad("VGG has blocks 1 to 5"));
        }
        if kind != LayerKind::Pool && !(1..=4).contains(&index) {
            return Err(bad("VGG blocks have convolutions 1 to 4 (1 to 3 in VGG-16's blocks 3-5, 1 to 2 in blocks 1-2)"));
        }
        Ok(LayerName::new(kind, block, index))
    }
}

impl Serialize for LayerName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LayerName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// How each block is downsampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// 2x2 max pool (the network's own).
    #[default]
    Max,
    /// 2x2 average pool (Gatys et al. found it gives smoother results).
    Avg,
}

impl FromStr for Pooling {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "max" => Ok(Pooling::Max),
            "avg" => Ok(Pooling::Avg),
            _ => Err(CoreError::InvalidOption {
                option: "pooling",
                reason: format!("`{s}` is neither `max` nor `avg`"),
            }),
        }
    }
}

impl fmt::Display for Pooling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Pooling::Max => "max",
            Pooling::Avg => "avg",
        })
    }
}

/// The paper's default content layer.
pub const DEFAULT_CONTENT_LAYERS: &str = "relu4_2";
/// The paper's default style layers.
pub const DEFAULT_STYLE_LAYERS: &str = "relu1_1,relu2_1,relu3_1,relu4_1,relu5_1";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_names() {
        for s in ["relu4_2", "conv1_1", "pool5", "relu5_4"] {
            let l: LayerName = s.parse().unwrap();
            assert_eq!(l.to_string(), s);
        }
        let l: LayerName = "relu3_1".parse().unwrap();
        assert_eq!(l, LayerName::new(LayerKind::Relu, 3, 1));
        assert_eq!(
            LayerName::parse_list(DEFAULT_STYLE_LAYERS).unwrap().len(),
            5
        );
        assert_eq!(
            LayerName::parse_list(" relu1_1, relu2_1 ").unwrap(),
            vec![
                LayerName::new(LayerKind::Relu, 1, 1),
                LayerName::new(LayerKind::Relu, 2, 1)
            ]
        );
    }

    #[test]
    fn refuses_bad_names_with_a_reason() {
        for s in [
            "", "relu", "relu4", "relu4_", "relu0_1", "relu6_1", "relu1_5", "pool0", "fc6",
            "relu4_2x", "relu_4_2", "relu1,",
        ] {
            let err = LayerName::parse_list(s).unwrap_err();
            assert!(matches!(err, CoreError::UnknownLayer { .. }), "{s}: {err}");
        }
        let err = "fc7".parse::<LayerName>().unwrap_err().to_string();
        assert!(err.contains("fc7") && err.contains("relu4_2"), "{err}");
    }

    #[test]
    fn positions_are_torchvision_indices() {
        let at = |a: VggArch, s: &str| a.position(s.parse().unwrap()).unwrap();
        // torchvision `features.N` indices of the paper's layers.
        for (s, i) in [
            ("relu1_1", 1),
            ("relu2_1", 6),
            ("relu3_1", 11),
            ("relu4_1", 20),
            ("relu4_2", 22),
            ("relu5_1", 29),
            ("conv1_1", 0),
            ("pool5", 36),
        ] {
            assert_eq!(at(VggArch::Vgg19, s), i, "vgg19 {s}");
        }
        for (s, i) in [
            ("relu1_1", 1),
            ("relu2_1", 6),
            ("relu3_1", 11),
            ("relu4_1", 18),
            ("relu4_2", 20),
            ("relu5_1", 25),
            ("pool5", 30),
        ] {
            assert_eq!(at(VggArch::Vgg16, s), i, "vgg16 {s}");
        }
        let err = VggArch::Vgg16
            .position("relu3_4".parse().unwrap())
            .unwrap_err();
        assert!(err.to_string().contains("VGG-16"), "{err}");
        assert_eq!(VggArch::from_num_convs(16), Some(VggArch::Vgg19));
        assert_eq!(VggArch::from_num_convs(12), None);
    }
}
