//! The stylefarm client: command-line rendering and weights management.

pub mod render;
pub mod weights;
