//! What a task is ([`TaskKind`]), derived once from its wire spec where the task is created
//! or restored, so that the scheduler and the coordinator's own tasks decide on a type and
//! never peek into the spec's `part`.

use stylefarm_proto::v1::{self, task_spec::Part};

use crate::error::{CoordinatorError, Result};

/// The kinds of task a job is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TaskKind {
    /// A render on a worker: a frame, a sweep point or a stage.
    Render,
    /// The style statistics of a whole image, on a worker, for a lock-step render.
    Statistics,
    /// A worker's part of a lock-step render: it evaluates the tiles its driver sends.
    Shard,
    /// The coordinator's own driver of a lock-step render: it optimises the whole image.
    Driver,
    /// The coordinator's own contact sheet of a sweep's points.
    Sheet,
}

impl TaskKind {
    /// The kind of the task `spec` describes; an assemble task of no known kind is refused.
    pub(crate) fn of(spec: &v1::TaskSpec) -> Result<Self> {
        Ok(match &spec.part {
            None | Some(Part::Frame(_) | Part::Sweep(_) | Part::Stage(_)) => Self::Render,
            Some(Part::Statistics(_)) => Self::Statistics,
            Some(Part::Shard(_)) => Self::Shard,
            Some(Part::Assemble(a)) => match v1::AssembleKind::try_from(a.kind) {
                Ok(v1::AssembleKind::Lockstep) => Self::Driver,
                Ok(v1::AssembleKind::ContactSheet) => Self::Sheet,
                Ok(v1::AssembleKind::Unspecified) | Err(_) => {
                    return Err(CoordinatorError::Internal(
                        "an assemble task of no known kind".into(),
                    ))
                }
            },
        })
    }

    /// Whether the coordinator runs the task itself (it is never leased to a worker).
    pub(crate) fn is_own(self) -> bool {
        match self {
            Self::Driver | Self::Sheet => true,
            Self::Render | Self::Statistics | Self::Shard => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assemble(kind: i32) -> v1::TaskSpec {
        v1::TaskSpec {
            part: Some(Part::Assemble(v1::Assemble {
                kind,
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn each_part_has_its_kind_and_an_unknown_assembly_none() {
        assert_eq!(
            TaskKind::of(&v1::TaskSpec::default()).unwrap(),
            TaskKind::Render
        );
        let driver = TaskKind::of(&assemble(v1::AssembleKind::Lockstep as i32)).unwrap();
        assert_eq!(driver, TaskKind::Driver);
        assert!(driver.is_own());
        let sheet = TaskKind::of(&assemble(v1::AssembleKind::ContactSheet as i32)).unwrap();
        assert_eq!(sheet, TaskKind::Sheet);
        assert!(TaskKind::of(&assemble(v1::AssembleKind::Unspecified as i32)).is_err());
        assert!(TaskKind::of(&assemble(99)).is_err());
    }
}
