//! The stylefarm client: the `stylefarm` command line (local renders on an embedded farm,
//! farm commands, weights management) and the pieces tests reuse: a coordinator connection
//! with blob transfers, job following, and the embedded farm.

pub mod cli;
pub mod commands;
pub mod embedded;
pub mod farm;
pub mod job;
pub mod options;
pub mod output;
pub mod progress;
pub mod render;
pub mod split;
pub mod weights;
