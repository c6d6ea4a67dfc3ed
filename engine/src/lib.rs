//! stylefarm's engine: neural style transfer as in Gatys et al., on candle.
//!
//! A VGG-16/19 feature extractor with named layers ([`layers`], [`vgg`]), weights from
//! torchvision safetensors or Keras ONNX files ([`weights`]), the seed's objective with its
//! exact gradient ([`objective`]), L-BFGS and Adam on the pixels ([`optim`]), images in and
//! out ([`image_io`], [`color`]), the options of a render ([`settings`]) and one call that
//! renders ([`render`]); for big prints, tile geometry, seam scores and cost estimates
//! ([`tiles`]), the whole image's style targets its tiles are optimised against
//! ([`statistics`]) and tiles optimised in lock step as one image ([`joint`], [`shard`]);
//! contact sheets of sweeps ([`sheet`]). The hot loops are the convolutions ([`conv`]) and
//! the style term's matrix products ([`linalg`]).
//!
//! Plain synchronous code: no async runtime, no network. Without the default `compute`
//! feature only the tensor-free parts are built (settings, layer names, images), which is what
//! the coordinator needs to check jobs without pulling in candle.

pub mod color;
#[cfg(feature = "compute")]
pub mod conv;
pub mod error;
pub mod image_io;
pub mod joint;
pub mod layers;
#[cfg(feature = "compute")]
pub mod linalg;
#[cfg(feature = "compute")]
pub mod objective;
#[cfg(feature = "compute")]
pub mod ops;
pub mod optim;
pub mod preprocess;
#[cfg(feature = "compute")]
pub mod render;
pub mod settings;
#[cfg(feature = "compute")]
pub mod shard;
pub mod sheet;
#[cfg(feature = "compute")]
pub mod statistics;
pub mod tiles;
pub mod variation;
#[cfg(feature = "compute")]
pub mod vgg;
#[cfg(feature = "compute")]
pub mod weights;

pub use error::{EngineError, Result};
pub use preprocess::Preprocess;

/// What the unit tests of the tensor code share.
#[cfg(all(test, feature = "compute"))]
pub(crate) mod test_support {
    use candle_core::{Device, Tensor};

    use crate::layers::Pooling;
    use crate::vgg::Vgg;
    use crate::weights::VggWeights;

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
