//! The instance attributes a user sets (ModifyInstanceAttribute): termination and stop
//! protection and what a guest's own shutdown does. What they do is elsewhere: Terminate and
//! StopInstances ask [`Service::check_protection`] first ([`super::lifecycle`]), and a guest
//! that powers off is stopped or terminated by its shutdown behaviour ([`super::monitor`]).

use super::state::Operation;
use super::Service;
use crate::error::{ApiError, ApiResult};
use crate::model::{Instance, InstanceState, ShutdownBehavior};

/// One attribute ModifyInstanceAttribute changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttributeChange {
    DisableApiTermination(bool),
    DisableApiStop(bool),
    ShutdownBehavior(ShutdownBehavior),
}

/// What an API call would do to an instance that a protection guards against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protected {
    Termination,
    Stop,
}

impl Service {
    /// ModifyInstanceAttribute of a protection or the shutdown behaviour, in force at once
    /// (also on a running instance); not on a terminated or shutting-down one.
    pub async fn modify_instance_attribute(
        &self,
        id: &str,
        change: AttributeChange,
    ) -> ApiResult<()> {
        let _g = self.lock(id).await;
        let inst = self.instance(id)?;
        Operation::ModifyAttribute.check(id, inst.state)?;
        let mut a = inst.attributes;
        match change {
            AttributeChange::DisableApiTermination(on) => a.disable_api_termination = on,
            AttributeChange::DisableApiStop(on) => a.disable_api_stop = on,
            AttributeChange::ShutdownBehavior(b) => a.shutdown_behavior = b,
        }
        self.db().set_instance_attributes(id, &a)?;
        Ok(())
    }

    /// ModifyInstanceAttribute userData: only while stopped (as on EC2); the next start boots
    /// with it (the busybox image's init runs it, the metadata service answers it).
    pub async fn modify_user_data(&self, id: &str, user_data: &[u8]) -> ApiResult<()> {
        if user_data.len() > super::MAX_USER_DATA {
            return Err(ApiError::invalid_value(format!(
                "User data is limited to {} bytes, not {}",
                super::MAX_USER_DATA,
                user_data.len()
            )));
        }
        let _g = self.lock(id).await;
        let inst = self.instance(id)?;
        Operation::ModifyType.check(id, inst.state)?;
        let dir = inst.dir.clone();
        let data = user_data.to_vec();
        super::blocking(move || super::files::replace_user_data(&dir, &data)).await?;
        self.db().set_user_data(id, user_data)?;
        Ok(())
    }

    /// EC2's `OperationNotPermitted` if any of `ids` is protected against `what`, so that a
    /// call naming a protected instance changes none of them.
    pub(super) fn check_protection(&self, ids: &[String], what: Protected) -> ApiResult<()> {
        for id in ids {
            let inst = self.instance(id)?;
            if let Some(e) = refusal(&inst, what) {
                return Err(e);
            }
        }
        Ok(())
    }
}

/// The refusal `what` meets on `inst`, in EC2's words.
fn refusal(inst: &Instance, what: Protected) -> Option<ApiError> {
    let (on, verb, attribute) = match what {
        // A terminated instance (a guest's own shutdown terminates even a protected one)
        // is terminated again without complaint.
        Protected::Termination => (
            inst.attributes.disable_api_termination && inst.state != InstanceState::Terminated,
            "terminated",
            "disableApiTermination",
        ),
        Protected::Stop => (
            inst.attributes.disable_api_stop,
            "stopped",
            "disableApiStop",
        ),
    };
    on.then(|| {
        ApiError::new(
            "OperationNotPermitted",
            format!(
                "The instance '{}' may not be {verb}. Modify its '{attribute}' instance attribute and try again.",
                inst.instance_id
            ),
        )
    })
}
