//! Why a task could not be done, as the worker reports it with `FailTask`: the kind the
//! coordinator acts on (retry elsewhere, give up, hand back) and a message for people.

use stylefarm_core::CoreError;
use stylefarm_engine::EngineError;
use stylefarm_proto::v1::FailureKind;

/// A task that cannot be done, as reported with `FailTask`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Failure {
    pub(crate) kind: FailureKind,
    pub(crate) message: String,
}

impl Failure {
    /// The task itself is wrong (a bad spec, an unreadable image): retrying will not help.
    pub(crate) fn application(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Application,
            message: message.into(),
        }
    }

    /// The task was stopped before it finished; it may run again.
    pub(crate) fn interrupted(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Interrupted,
            message: message.into(),
        }
    }

    /// The task handed back when the worker shuts down.
    pub(crate) fn shut_down() -> Self {
        Self::interrupted("the worker shut down before the task finished")
    }

    /// An engine error: a cancelled computation is interrupted, running out of device memory
    /// is out of memory, anything else is the application's.
    pub(crate) fn from_engine(e: impl Into<EngineError>) -> Self {
        let e = e.into();
        let message = e.to_string();
        let kind = match e {
            EngineError::Core(CoreError::Cancelled) => FailureKind::Interrupted,
            EngineError::Candle(_) if looks_like_out_of_memory(&message) => {
                FailureKind::OutOfMemory
            }
            _ => FailureKind::Application,
        };
        Self { kind, message }
    }
}

/// Candle's CPU allocations abort the process when memory runs out, so only device errors
/// (CUDA, Metal) and explicit allocation failures can be told apart, by their text.
fn looks_like_out_of_memory(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "out of memory",
        "cannot allocate",
        "memory allocation",
        "alloc failed",
    ]
    .iter()
    .any(|p| m.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_map_to_failure_kinds() {
        let f = Failure::from_engine(CoreError::Cancelled);
        assert_eq!(f.kind, FailureKind::Interrupted);
        let oom = EngineError::Candle(candle_core::Error::Msg(
            "CUDA_ERROR_OUT_OF_MEMORY: out of memory".into(),
        ));
        assert_eq!(Failure::from_engine(oom).kind, FailureKind::OutOfMemory);
        let bad = EngineError::from(CoreError::BadImage {
            what: "content image".into(),
            reason: "the data is empty (0 bytes)".into(),
        });
        let f = Failure::from_engine(bad);
        assert_eq!(f.kind, FailureKind::Application);
        assert_eq!(
            f.message,
            "content image is not an image stylefarm can read: the data is empty (0 bytes)"
        );
    }
}
