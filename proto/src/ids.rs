//! Typed ids: a `JobId` can never be passed where a `TaskId` is wanted.

use std::fmt;
use std::str::FromStr;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub uuid::Uuid);

        impl $name {
            /// A new random id.
            pub fn new() -> Self {
                Self(uuid::Uuid::new_v4())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "-{}"), self.0.simple())
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;

            fn from_str(s: &str) -> Result<Self, ParseIdError> {
                let rest = s
                    .strip_prefix(concat!($prefix, "-"))
                    .ok_or_else(|| ParseIdError { kind: stringify!($name), text: s.to_string() })?;
                uuid::Uuid::try_parse(rest)
                    .map(Self)
                    .map_err(|_| ParseIdError { kind: stringify!($name), text: s.to_string() })
            }
        }
    };
}

id_type!(
    /// A job: one client request.
    JobId,
    "job"
);
id_type!(
    /// A task: one unit of work of a job (a frame, a tile, a sweep point).
    TaskId,
    "task"
);
id_type!(
    /// A registered worker.
    WorkerId,
    "worker"
);
id_type!(
    /// One lease of a task by a worker; a worker that lost its lease is refused with it.
    LeaseId,
    "lease"
);

/// A string that is not an id of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseIdError {
    kind: &'static str,
    text: String,
}

impl fmt::Display for ParseIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` is not a valid {}", self.text, self.kind)
    }
}

impl std::error::Error for ParseIdError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_refuse_other_kinds() {
        let j = JobId::new();
        let s = j.to_string();
        assert!(s.starts_with("job-"));
        assert_eq!(s.parse::<JobId>().unwrap(), j);
        let err = s.parse::<TaskId>().unwrap_err();
        assert!(err.to_string().contains("TaskId"), "{err}");
        assert!("job-xyz".parse::<JobId>().is_err());
    }
}
