//! The tensor-free code's one error type: every failure names what it was about (a path, a
//! layer, an option) in one sentence a user can act on.

use std::path::PathBuf;

/// Everything that can go wrong in settings, images and lock-step driving.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A file could not be read or written.
    #[error("cannot access {path}: {err}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said (in the message, not as a `source`, so it is printed once).
        err: std::io::Error,
    },
    /// Bytes that are not a readable image (empty, truncated, corrupt, unknown format).
    #[error("{what} is not an image stylefarm can read: {reason}")]
    BadImage {
        /// Which input (a path or a name such as "content image").
        what: String,
        /// Why decoding failed.
        reason: String,
    },
    /// An image whose declared size is over the decoding limits (checked before decoding).
    #[error("{what} is {width}x{height} pixels, over the limit of {limit}")]
    ImageTooLarge {
        /// Which input.
        what: String,
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// The limit that was hit, in words.
        limit: String,
    },
    /// A layer name that does not exist (or not in this network).
    #[error("unknown layer `{name}`: {reason}")]
    UnknownLayer {
        /// The name as given.
        name: String,
        /// Why it was refused.
        reason: String,
    },
    /// An option value out of its range.
    #[error("invalid {option}: {reason}")]
    InvalidOption {
        /// The option's name, as on the command line (e.g. `style-weight`).
        option: &'static str,
        /// Why the value was refused.
        reason: String,
    },
    /// The render was stopped by its caller (cancel).
    #[error("the render was cancelled")]
    Cancelled,
}

/// Result with [`CoreError`].
pub type Result<T, E = CoreError> = std::result::Result<T, E>;
