//! stylefarm's engine: neural style transfer as in Gatys et al., on candle. The candle code
//! alone; settings, layer names, images and the optimisers are `stylefarm_core`'s.
//!
//! A VGG-16/19 feature extractor ([`vgg`]), weights from torchvision safetensors or Keras ONNX
//! files ([`weights`]), the seed's objective with its exact gradient ([`objective`]), images
//! as tensors ([`tensor`]) and one call that renders ([`render`]); the whole image's style
//! targets in pieces ([`statistics`]) and a shard's evaluation of tiles in lock step
//! ([`lockstep`]). The hot loops are the convolutions ([`conv`]), the pools and ReLU
//! ([`ops`]) and the style term's matrix products ([`linalg`]). The same code runs on the CPU
//! or, with the `cuda` feature, on an NVIDIA GPU ([`device`]): on the GPU the convolutions,
//! pools, ReLU and products are candle's CUDA operations composed so their answers are the
//! CPU ops' (the CPU tests check the composed forms against the CPU ops).
//!
//! Plain synchronous code: no async runtime, no network.

pub mod conv;
pub mod device;
pub mod error;
pub mod linalg;
pub mod lockstep;
pub mod objective;
pub mod ops;
pub mod render;
pub mod statistics;
pub mod tensor;
pub mod vgg;
pub mod weights;

pub use error::{EngineError, Result};

/// What the unit tests of the tensor code share.
#[cfg(test)]
pub(crate) mod test_support {
    use candle_core::{Device, Tensor};

    use crate::vgg::Vgg;
    use crate::weights::VggWeights;
    use stylefarm_core::layers::Pooling;

    /// The tiny VGG16 with made-up weights of the fast tests.
    pub(crate) fn tiny_vgg() -> Vgg {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/tiny_vgg16.safetensors");
        Vgg::new(VggWeights::load(&path, &Device::Cpu).unwrap(), Pooling::Max).unwrap()
    }

    /// `max |a - b| / max |b|`.
    pub(crate) fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        let m = b.abs().unwrap().max_all().unwrap();
        d.to_scalar::<f32>().unwrap() / m.to_scalar::<f32>().unwrap()
    }
}
