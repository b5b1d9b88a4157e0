//! EC2's instance state machine, written once: which operation may start from which state,
//! where it takes the instance, and what `IncorrectInstanceState` says otherwise. Every
//! operation on an instance asks [`Operation::check`] before it acts.
//!
//! The states an operation passes through after it starts (`stopping` → `stopped`,
//! `shutting-down` → `terminated`, `pending` → `running`) follow from its VMM, see
//! [`super::monitor`].

use crate::error::{ApiError, ApiResult};
use crate::model::InstanceState::{self, *};

/// An operation that depends on an instance's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Start,
    Stop,
    Hibernate,
    Reboot,
    Terminate,
    /// ModifyInstanceAttribute(InstanceType).
    ModifyType,
    CreateImage,
    Migrate,
    /// ModifyInstanceAttribute of the protections and the shutdown behaviour.
    ModifyAttribute,
}

/// What an allowed operation does to the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The instance moves to this state (and its VMM is started, asked or stopped).
    To(InstanceState),
    /// The state stays: the operation has nothing to do (StartInstances of a running
    /// instance), or it acts without changing the state (CreateImage, MigrateInstance).
    Stays,
}

use Step::{Stays, To};

impl Operation {
    pub const ALL: [Operation; 9] = [
        Self::Start,
        Self::Stop,
        Self::Hibernate,
        Self::Reboot,
        Self::Terminate,
        Self::ModifyType,
        Self::CreateImage,
        Self::Migrate,
        Self::ModifyAttribute,
    ];

    /// The transition table: the step from `from`, or None where the operation is refused.
    pub fn step(self, from: InstanceState) -> Option<Step> {
        match (self, from) {
            (Self::Start, Stopped) => Some(To(Pending)),
            (Self::Start, Pending | Running) => Some(Stays),

            (Self::Stop | Self::Hibernate, Running) => Some(To(Stopping)),
            // Stopping again (Force kills the VMM at once) or stopped already: no change.
            (Self::Stop | Self::Hibernate, Stopping | Stopped) => Some(Stays),

            // A hard reset: a new VMM on the same disk.
            (Self::Reboot, Running) => Some(To(Pending)),
            (Self::Reboot, Pending) => Some(Stays),

            (Self::Terminate, Stopped) => Some(To(Terminated)),
            // A launch that has no VMM yet goes straight to terminated (see TerminateInstances).
            (Self::Terminate, Pending | Running | Stopping) => Some(To(ShuttingDown)),
            (Self::Terminate, ShuttingDown | Terminated) => Some(Stays),

            (Self::ModifyType, Stopped) => Some(Stays),
            (Self::CreateImage, Running | Stopped) => Some(Stays),
            (Self::Migrate, Running) => Some(Stays),
            (Self::ModifyAttribute, Pending | Running | Stopping | Stopped) => Some(Stays),
            _ => None,
        }
    }

    /// The states the operation may start from.
    pub fn allowed_from(self) -> Vec<InstanceState> {
        InstanceState::ALL
            .into_iter()
            .filter(|s| self.step(*s).is_some())
            .collect()
    }

    /// How `IncorrectInstanceState` names the operation: "… from which it can be {verb}".
    pub fn verb(self) -> &'static str {
        match self {
            Self::Start => "started",
            Self::Stop | Self::Hibernate => "stopped",
            Self::Reboot => "rebooted",
            Self::Terminate => "terminated",
            Self::ModifyType | Self::ModifyAttribute => "modified",
            Self::CreateImage => "imaged",
            Self::Migrate => "migrated",
        }
    }

    /// The step instance `id` in state `from` takes, or EC2's `IncorrectInstanceState`.
    pub fn check(self, id: &str, from: InstanceState) -> ApiResult<Step> {
        self.step(from)
            .ok_or_else(|| ApiError::incorrect_state(id, from.name(), self.verb()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_operation_starts_only_from_its_states() {
        let table = [
            (Operation::Start, vec![Pending, Running, Stopped]),
            (Operation::Stop, vec![Running, Stopping, Stopped]),
            (Operation::Hibernate, vec![Running, Stopping, Stopped]),
            (Operation::Reboot, vec![Pending, Running]),
            (Operation::Terminate, InstanceState::ALL.to_vec()),
            (Operation::ModifyType, vec![Stopped]),
            (Operation::CreateImage, vec![Running, Stopped]),
            (Operation::Migrate, vec![Running]),
            (
                Operation::ModifyAttribute,
                vec![Pending, Running, Stopping, Stopped],
            ),
        ];
        assert_eq!(table.len(), Operation::ALL.len());
        for (op, allowed) in table {
            assert_eq!(op.allowed_from(), allowed, "{op:?}");
        }
    }

    #[test]
    fn steps_lead_where_ec2_goes() {
        assert_eq!(Operation::Start.step(Stopped), Some(To(Pending)));
        assert_eq!(Operation::Start.step(Running), Some(Stays));
        assert_eq!(Operation::Stop.step(Running), Some(To(Stopping)));
        assert_eq!(Operation::Hibernate.step(Running), Some(To(Stopping)));
        assert_eq!(Operation::Reboot.step(Running), Some(To(Pending)));
        assert_eq!(Operation::Reboot.step(Pending), Some(Stays));
        assert_eq!(Operation::Terminate.step(Stopped), Some(To(Terminated)));
        assert_eq!(Operation::Terminate.step(Running), Some(To(ShuttingDown)));
        assert_eq!(Operation::Terminate.step(Terminated), Some(Stays));
        // Nothing leaves `terminated` except a repeated terminate.
        for op in Operation::ALL {
            if op != Operation::Terminate {
                assert_eq!(op.step(Terminated), None, "{op:?}");
            }
        }
    }

    #[test]
    fn refusals_say_what_ec2_says() {
        let e = Operation::Stop.check("i-1", Terminated).unwrap_err();
        assert_eq!(e.code, "IncorrectInstanceState");
        assert_eq!(
            e.message,
            "The instance 'i-1' is not in a state from which it can be stopped: it is terminated."
        );
        for (op, verb) in [
            (Operation::Start, "started"),
            (Operation::Hibernate, "stopped"),
            (Operation::Reboot, "rebooted"),
            (Operation::ModifyType, "modified"),
            (Operation::CreateImage, "imaged"),
            (Operation::Migrate, "migrated"),
            (Operation::ModifyAttribute, "modified"),
        ] {
            let e = op.check("i-2", ShuttingDown).unwrap_err();
            assert!(
                e.message
                    .contains(&format!("can be {verb}: it is shutting-down.")),
                "{op:?}: {}",
                e.message
            );
        }
        assert_eq!(Operation::Terminate.check("i-3", ShuttingDown), Ok(Stays));
    }
}
