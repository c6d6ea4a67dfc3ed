//! The stylefarm client: the `stylefarm` command line (local renders on an embedded farm,
//! farm commands, weights management) and the pieces tests reuse: a coordinator connection
//! with blob transfers, job following, and the embedded farm.
//!
//! The embedded farm ([`embedded`], [`render`]) is the default feature `embedded`; without it
//! (`cargo install --no-default-features`) this is a thin farm client, with no candle and no
//! SQLite in the build.

pub mod cli;
pub mod commands;
#[cfg(feature = "embedded")]
pub mod embedded;
pub mod farm;
pub mod job;
pub mod options;
pub mod output;
pub mod progress;
#[cfg(feature = "embedded")]
pub mod render;
pub mod split;
pub mod weights;
