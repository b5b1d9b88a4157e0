//! The records vireod keeps: images, instances and tags, as stored in SQLite and as the API
//! shows them.

use std::fmt;
use std::str::FromStr;

/// EC2's instance states, with EC2's state codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InstanceState {
    Pending,
    Running,
    ShuttingDown,
    Terminated,
    Stopping,
    Stopped,
}

impl InstanceState {
    pub const ALL: [InstanceState; 6] = [
        Self::Pending,
        Self::Running,
        Self::ShuttingDown,
        Self::Terminated,
        Self::Stopping,
        Self::Stopped,
    ];

    pub fn code(self) -> u32 {
        match self {
            Self::Pending => 0,
            Self::Running => 16,
            Self::ShuttingDown => 32,
            Self::Terminated => 48,
            Self::Stopping => 64,
            Self::Stopped => 80,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::ShuttingDown => "shutting-down",
            Self::Terminated => "terminated",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
        }
    }

    /// States in which the instance has a VMM process and holds host capacity.
    pub fn has_vmm(self) -> bool {
        matches!(
            self,
            Self::Pending | Self::Running | Self::Stopping | Self::ShuttingDown
        )
    }
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for InstanceState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|st| st.name() == s)
            .ok_or_else(|| format!("unknown instance state {s:?}"))
    }
}

/// EC2's state reason: why an instance is in its state (shown for stopped and terminated ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateReason {
    pub code: String,
    pub message: String,
}

impl StateReason {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_string(),
            message: message.into(),
        }
    }
    pub fn user_stop() -> Self {
        Self::new(
            "Client.UserInitiatedShutdown",
            "Client.UserInitiatedShutdown: User initiated shutdown",
        )
    }
    pub fn user_hibernate() -> Self {
        Self::new(
            "Client.UserInitiatedHibernate",
            "Client.UserInitiatedHibernate: User initiated hibernate",
        )
    }
    pub fn guest_shutdown() -> Self {
        Self::new(
            "Client.InstanceInitiatedShutdown",
            "Client.InstanceInitiatedShutdown: Instance initiated shutdown",
        )
    }
    pub fn internal(detail: &str) -> Self {
        Self::new(
            "Server.InternalError",
            format!("Server.InternalError: {detail}"),
        )
    }
}

/// A registered image (AMI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub image_id: String,
    pub name: String,
    pub description: String,
    pub owner_id: String,
    /// `available`, `pending` (CreateImage still copying) or `failed`.
    pub state: String,
    pub architecture: String,
    pub boot_mode: String,
    /// Host paths of the image's files, all inside vireod's data directory (read-only copies).
    pub kernel: String,
    pub initrd: Option<String>,
    pub root_disk: Option<String>,
    pub cmdline: String,
    pub creation_date: String,
    pub source_instance_id: Option<String>,
    pub tags: Vec<(String, String)>,
}

/// An instance, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Insertion order; pagination follows it.
    pub seq: i64,
    pub instance_id: String,
    pub reservation_id: String,
    pub owner_id: String,
    pub image_id: String,
    pub instance_type: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub state: InstanceState,
    pub state_reason: Option<StateReason>,
    pub launch_time: String,
    pub launch_index: u32,
    pub client_token: Option<String>,
    pub user_data: Vec<u8>,
    /// The instance's own directory (disk, console log, VMM socket and logs).
    pub dir: String,
    /// The VMM process while there is one: PID and its start time (clock ticks since boot,
    /// from /proc/PID/stat) so a recycled PID is never mistaken for our VMM.
    pub pid: Option<i32>,
    pub pid_start: Option<u64>,
    /// The migration host its VMM runs on (0: vireod's own network namespace).
    pub host: u32,
    pub tags: Vec<(String, String)>,
}
