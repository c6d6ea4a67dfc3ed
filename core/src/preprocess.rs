//! How a weights file wants its input: the map between RGB pixels (0..=255) and the network's
//! input tensor, per channel.
//!
//! The optimisation runs on the network-input tensor itself, so this map also gives the box
//! that keeps every optimised value a valid pixel.

use serde::Serialize;

/// Input convention of a VGG weights file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Preprocess {
    /// torchvision / timm: RGB in [0, 1], minus mean (0.485, 0.456, 0.406), divided by
    /// std (0.229, 0.224, 0.225).
    Torchvision,
    /// Caffe / Keras: BGR in 0..255 minus mean (103.939, 116.779, 123.68).
    Caffe,
}

const TV_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const TV_STD: [f32; 3] = [0.229, 0.224, 0.225];
const CAFFE_MEAN_BGR: [f32; 3] = [103.939, 116.779, 123.68];

impl Preprocess {
    /// The RGB channel (0 = R, 1 = G, 2 = B) that network input channel `c` holds.
    pub fn rgb_channel(self, c: usize) -> usize {
        match self {
            Preprocess::Torchvision => c,
            Preprocess::Caffe => 2 - c,
        }
    }

    /// `(scale, offset)` of network channel `c`: `net = pixel * scale + offset`, with `pixel`
    /// the 0..=255 value of RGB channel [`Self::rgb_channel`]`(c)`.
    pub fn affine(self, c: usize) -> (f32, f32) {
        match self {
            Preprocess::Torchvision => {
                let scale = 1.0 / (255.0 * TV_STD[c]);
                (scale, -TV_MEAN[c] / TV_STD[c])
            }
            Preprocess::Caffe => (1.0, -CAFFE_MEAN_BGR[c]),
        }
    }

    /// Network value of a 0..=255 pixel value on network channel `c`.
    pub fn to_network(self, c: usize, pixel: f32) -> f32 {
        let (scale, offset) = self.affine(c);
        pixel * scale + offset
    }

    /// 0..=255 pixel value (unclamped) of a network value on network channel `c`.
    pub fn to_pixel(self, c: usize, net: f32) -> f32 {
        let (scale, offset) = self.affine(c);
        (net - offset) / scale
    }

    /// The valid range `[lo, hi]` of network channel `c`: the images of pixel 0 and 255.
    pub fn bounds(self, c: usize) -> (f32, f32) {
        (self.to_network(c, 0.0), self.to_network(c, 255.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_bounds() {
        for pre in [Preprocess::Torchvision, Preprocess::Caffe] {
            for c in 0..3 {
                for v in [0.0f32, 17.0, 128.0, 255.0] {
                    let back = pre.to_pixel(c, pre.to_network(c, v));
                    assert!((back - v).abs() < 1e-3, "{pre:?} c{c} {v} -> {back}");
                }
                let (lo, hi) = pre.bounds(c);
                assert!(lo < hi);
            }
        }
        assert_eq!(Preprocess::Caffe.rgb_channel(0), 2);
        assert_eq!(Preprocess::Caffe.bounds(0), (-103.939, 255.0 - 103.939));
        let (lo, _) = Preprocess::Torchvision.bounds(0);
        assert!((lo + 0.485 / 0.229).abs() < 1e-6);
    }
}
