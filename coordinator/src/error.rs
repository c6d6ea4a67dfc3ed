//! The coordinator's one error type, and its one mapping onto gRPC status codes.

use std::path::PathBuf;

use stylefarm_convert::FieldError;
use stylefarm_proto::ids::{JobId, LeaseId};

/// Everything a request to the coordinator can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// A field of the request cannot be used (INVALID_ARGUMENT).
    #[error("{0}")]
    InvalidArgument(FieldError),
    /// An id that names nothing the coordinator knows (NOT_FOUND).
    #[error("{kind} {id} does not exist")]
    NotFound {
        /// What was looked for: "job", "worker", "blob".
        kind: &'static str,
        /// The id as given.
        id: String,
    },
    /// The lease is no longer held: it lapsed, its task was retried, or the coordinator
    /// restarted (FAILED_PRECONDITION). The worker must drop the task.
    #[error("lease {lease} is no longer held (it lapsed, the task was handed to another worker, or the coordinator restarted): drop the task")]
    LeaseLost {
        /// The lease.
        lease: LeaseId,
    },
    /// The request does not fit the job's state, e.g. retrying a job that is still running
    /// (FAILED_PRECONDITION).
    #[error("job {job}: {reason}")]
    WrongJobState {
        /// The job.
        job: JobId,
        /// Why, in words.
        reason: String,
    },
    /// Over a configured limit (RESOURCE_EXHAUSTED).
    #[error("{0}")]
    LimitExceeded(String),
    /// A read starting past the end of a blob (OUT_OF_RANGE).
    #[error("offset {offset} is past the end of blob {sha256} ({size} bytes)")]
    OffsetOutOfRange {
        /// The blob.
        sha256: String,
        /// Its size.
        size: u64,
        /// The offset asked for.
        offset: u64,
    },
    /// No or the wrong farm token (UNAUTHENTICATED).
    #[error(
        "this coordinator needs a token for this service (`authorization: Bearer TOKEN`): the \
         farm token, or the clients' or the workers' own"
    )]
    Unauthenticated,
    /// The coordinator is stopping (UNAVAILABLE).
    #[error("the coordinator is shutting down")]
    ShuttingDown,
    /// The database failed (INTERNAL).
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
    /// A stored record could not be decoded (INTERNAL).
    #[error("the database holds a corrupt record ({what}): {reason}")]
    Corrupt {
        /// Which record.
        what: String,
        /// Why it could not be read.
        reason: String,
    },
    /// A file of the blob store could not be read or written (INTERNAL).
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The disk under the data directory is full (RESOURCE_EXHAUSTED): what the call asked was
    /// not done, and it may succeed once space is freed.
    #[error("the coordinator's disk is full: {0}")]
    DiskFull(String),
    /// Something the call needs is not there yet, or no longer (UNAVAILABLE): the caller may
    /// try again.
    #[error("{0}")]
    Unavailable(String),
    /// A stored blob no longer matches its hash (DATA_LOSS).
    #[error("{0}")]
    Damaged(String),
    /// A bug: an internal step failed that should not (INTERNAL).
    #[error("internal error: {0}")]
    Internal(String),
}

impl CoordinatorError {
    /// INVALID_ARGUMENT for `field`, because `reason`.
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument(FieldError::new(field, reason))
    }

    /// Whether this is the disk (or the database file) being full: SQLite's `SQLITE_FULL`, or
    /// an I/O error saying there is no space or quota left.
    pub(crate) fn is_disk_full(&self) -> bool {
        match self {
            Self::DiskFull(_) => true,
            Self::Database(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::DiskFull
            }
            Self::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            ),
            _ => false,
        }
    }

    /// An I/O error on `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<FieldError> for CoordinatorError {
    fn from(e: FieldError) -> Self {
        Self::InvalidArgument(e)
    }
}

/// Longest message a status carries, in bytes: a message that echoes a huge field must not
/// overflow the peer's header limit (the reply would be lost, not just long).
const MAX_STATUS_MESSAGE_BYTES: usize = 1024;

/// `message` cut to [`MAX_STATUS_MESSAGE_BYTES`] on a character boundary, marked when cut.
fn bounded(mut message: String) -> String {
    if message.len() > MAX_STATUS_MESSAGE_BYTES {
        let mut cut = MAX_STATUS_MESSAGE_BYTES - 3;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str("...");
    }
    message
}

impl From<CoordinatorError> for tonic::Status {
    fn from(e: CoordinatorError) -> Self {
        let message = bounded(e.to_string());
        match e {
            CoordinatorError::InvalidArgument(_) => Self::invalid_argument(message),
            CoordinatorError::NotFound { .. } => Self::not_found(message),
            CoordinatorError::LeaseLost { .. } | CoordinatorError::WrongJobState { .. } => {
                Self::failed_precondition(message)
            }
            CoordinatorError::LimitExceeded(_) | CoordinatorError::DiskFull(_) => {
                Self::resource_exhausted(message)
            }
            CoordinatorError::OffsetOutOfRange { .. } => Self::out_of_range(message),
            CoordinatorError::Unauthenticated => Self::unauthenticated(message),
            CoordinatorError::ShuttingDown | CoordinatorError::Unavailable(_) => {
                Self::unavailable(message)
            }
            CoordinatorError::Damaged(_) => Self::data_loss(message),
            CoordinatorError::Database(_)
            | CoordinatorError::Corrupt { .. }
            | CoordinatorError::Io { .. }
            | CoordinatorError::Internal(_) => {
                tracing::error!(error = %message, "request failed inside the coordinator");
                Self::internal(message)
            }
        }
    }
}

/// Result with [`CoordinatorError`].
pub(crate) type Result<T, E = CoordinatorError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_never_echoes_more_than_a_kilobyte() {
        let e = CoordinatorError::NotFound {
            kind: "job",
            id: "é".repeat(10_000),
        };
        let status = tonic::Status::from(e);
        assert!(status.message().len() <= MAX_STATUS_MESSAGE_BYTES);
        assert!(status.message().ends_with("..."));
    }
}
