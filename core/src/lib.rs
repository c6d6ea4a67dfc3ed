//! stylefarm's tensor-free code, shared by the engine, the coordinator, the workers and the
//! client: the options of a render and their limits ([`settings`]), VGG layer names
//! ([`layers`]), images in and out with decoding limits ([`image_io`], [`color`],
//! [`preprocess`]), tile geometry and seam scores ([`tiles`]), tiles optimised in lock step as
//! one image, driven over plain `f32` slices ([`lockstep`]) with the optimisers ([`optim`]) and
//! the total-variation term ([`variation`]), contact sheets of sweeps ([`sheet`]), and where
//! the weights file is ([`cache`]).
//!
//! No tensors and no network: plain synchronous code, so the coordinator and a thin client
//! use it without candle.

pub mod cache;
pub mod color;
pub mod error;
pub mod image_io;
pub mod layers;
pub mod lockstep;
pub mod optim;
pub mod preprocess;
pub mod settings;
pub mod sheet;
pub mod tiles;
pub mod variation;

pub use error::{CoreError, Result};
pub use preprocess::Preprocess;
