//! The engine's one error type: what the tensor-free code can say ([`CoreError`]: a path, a
//! layer, an option, a cancel), a weights file that is not a VGG, or a failed tensor operation.

use std::path::PathBuf;

use stylefarm_core::CoreError;

/// Everything that can go wrong inside the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Settings, images, layer names, cancel: as the tensor-free code says it.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// A weights file that is missing pieces or is not a VGG.
    #[error("weights file {path}: {reason}")]
    BadWeights {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

impl EngineError {
    /// Whether the render was stopped by its caller (cancel), not by a failure.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, Self::Core(CoreError::Cancelled))
    }
}

/// Result with [`EngineError`].
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
