//! stylefarm's engine: neural style transfer as in Gatys et al., on candle.
//!
//! A VGG-16/19 feature extractor with named layers ([`layers`], [`vgg`]), weights from
//! torchvision safetensors or Keras ONNX files ([`weights`]), the seed's objective with its
//! exact gradient ([`objective`]), L-BFGS and Adam on the pixels ([`optim`]), images in and
//! out ([`image_io`], [`color`]) and one call that renders ([`render`]).
//!
//! Plain synchronous code: no async runtime, no network.

pub mod color;
pub mod error;
pub mod image_io;
pub mod layers;
pub mod objective;
pub mod ops;
pub mod optim;
pub mod preprocess;
pub mod render;
pub mod vgg;
pub mod weights;

pub use error::{EngineError, Result};
pub use preprocess::Preprocess;
