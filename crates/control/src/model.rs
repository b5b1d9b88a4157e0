//! The records vireod keeps: images, instances, key pairs and tags, as stored in SQLite and as
//! the API shows them.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::process::ProcessId;

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
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub root_disk: Option<PathBuf>,
    pub cmdline: String,
    pub creation_date: String,
    pub source_instance_id: Option<String>,
    pub tags: Vec<Tag>,
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
    pub dir: PathBuf,
    /// The VMM process while there is one: PID and its start time (clock ticks since boot,
    /// from /proc/PID/stat) so a recycled PID is never mistaken for our VMM.
    pub pid: Option<ProcessId>,
    /// The migration host its VMM runs on (0: vireod's own network namespace).
    pub host: u32,
    pub tags: Vec<Tag>,
    /// The key pair it was launched with (RunInstances KeyName) and that pair's public key in
    /// OpenSSH format, kept with the instance: deleting the key pair later does not take the
    /// key away from instances that have it, as on EC2.
    pub key_name: Option<String>,
    pub public_key: Option<String>,
    /// ModifyInstanceAttribute's protections and shutdown behaviour.
    pub attributes: InstanceAttributes,
    /// RunInstances MetadataOptions / ModifyInstanceMetadataOptions: what the instance
    /// metadata service ([`crate::imds`]) lets this instance do.
    pub metadata_options: MetadataOptions,
}

/// EC2's instance metadata options (InstanceMetadataOptionsRequest), with EC2's defaults for
/// an image that says nothing about IMDS: tokens optional, hop limit 1, endpoint enabled, no
/// IPv6 endpoint, no tags in the metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetadataOptions {
    /// HttpTokens `required`: IMDSv1 (a GET without a token) is refused with 401.
    pub tokens_required: bool,
    /// HttpPutResponseHopLimit (1–64): the IP TTL of the token PUT's response.
    pub hop_limit: u8,
    /// HttpEndpoint: `disabled` makes the service answer 403 to everything.
    pub endpoint_enabled: bool,
    /// InstanceMetadataTags: the instance's tags under `meta-data/tags/instance/`.
    pub tags_enabled: bool,
}

impl Default for MetadataOptions {
    fn default() -> Self {
        Self {
            tokens_required: false,
            hop_limit: 1,
            endpoint_enabled: true,
            tags_enabled: false,
        }
    }
}

impl MetadataOptions {
    /// HttpPutResponseHopLimit's range.
    pub const HOP_LIMITS: std::ops::RangeInclusive<u8> = 1..=64;

    pub fn http_tokens(&self) -> &'static str {
        if self.tokens_required {
            "required"
        } else {
            "optional"
        }
    }
    pub fn http_endpoint(&self) -> &'static str {
        enabled(self.endpoint_enabled)
    }
    pub fn instance_metadata_tags(&self) -> &'static str {
        enabled(self.tags_enabled)
    }
}

fn enabled(on: bool) -> &'static str {
    if on {
        "enabled"
    } else {
        "disabled"
    }
}

/// The instance attributes a user sets at launch or with ModifyInstanceAttribute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InstanceAttributes {
    /// TerminateInstances is refused (`OperationNotPermitted`) while set.
    pub disable_api_termination: bool,
    /// StopInstances is refused while set.
    pub disable_api_stop: bool,
    /// What a shutdown from inside the guest does.
    pub shutdown_behavior: ShutdownBehavior,
}

/// EC2's InstanceInitiatedShutdownBehavior: what a guest powering itself off does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ShutdownBehavior {
    #[default]
    Stop,
    Terminate,
}

impl ShutdownBehavior {
    pub fn name(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Terminate => "terminate",
        }
    }
}

impl FromStr for ShutdownBehavior {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stop" => Ok(Self::Stop),
            "terminate" => Ok(Self::Terminate),
            _ => Err(format!(
                "Value ({s}) for parameter instanceInitiatedShutdownBehavior is invalid: stop or terminate"
            )),
        }
    }
}

/// A key pair's kind (EC2's KeyType).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Rsa,
    Ed25519,
}

impl KeyType {
    pub fn name(self) -> &'static str {
        match self {
            Self::Rsa => "rsa",
            Self::Ed25519 => "ed25519",
        }
    }
}

impl FromStr for KeyType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rsa" => Ok(Self::Rsa),
            "ed25519" => Ok(Self::Ed25519),
            _ => Err(format!(
                "Value ({s}) for parameter KeyType is invalid: rsa or ed25519"
            )),
        }
    }
}

/// A key pair: the public half only (the private key of a pair CreateKeyPair made is returned
/// once and never stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPair {
    /// `key-…`.
    pub key_pair_id: String,
    pub key_name: String,
    pub key_type: KeyType,
    /// One line in OpenSSH's format (`ssh-ed25519 AAAA… comment`), as authorized_keys and the
    /// instance metadata's `public-keys/0/openssh-key` carry it.
    pub public_key: String,
    /// Computed the way EC2 computes it for the pair's kind and origin ([`crate::keys`]).
    pub fingerprint: String,
    pub create_time: String,
    pub tags: Vec<Tag>,
}

/// One tag of a resource (EC2: at most one value per key).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

impl Tag {
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
        }
    }
}

/// A tag with the resource it is on, as DescribeTags lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceTag {
    pub resource_id: String,
    /// `instance` or `image`.
    pub resource_type: &'static str,
    pub tag: Tag,
}
