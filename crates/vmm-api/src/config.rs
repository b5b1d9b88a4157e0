//! The VM configuration file (`vireo-vmm --config FILE`, docs/vmm.md) as vireod writes it for a
//! migration's destination: the kernel and the drives the destination may open, and nothing
//! else the incoming stream names.
//!
//! The VMM reads the file as its whole `VmConfig` (crates/vmm/src/config.rs), whose other fields
//! all have defaults; every key written here is one of its keys (it refuses unknown ones), and
//! the VMM's tests check that the file written from a [`DestinationConfig`] parses to the
//! configuration it describes. The full `VmConfig` stays in the VMM: it is also the machine
//! state's configuration in snapshots and migration streams (postcard, a format without field
//! names), so it cannot leave out the defaults this file leaves out.
//!
//! Unlike the API's bodies, the fields come in the file's own order, not alphabetical: the file
//! reads as it did before this type existed.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The format of a drive's image file (`"raw"` or `"qcow2"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriveFormat {
    Raw,
    Qcow2,
}

/// A migration destination's configuration: what it may open of what the source names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// The kernel the VM booted (the file must name one; the destination does not load it).
    pub kernel: PathBuf,
    /// The drives, in the VM's order.
    pub drives: Vec<DestinationDrive>,
    /// The network devices, in the VM's order (left out when there are none, so the file of
    /// a VM without them reads as before).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub net: Vec<DestinationNet>,
}

/// One network device of a [`DestinationConfig`]: the TAP the source names (compared with it)
/// and the fd of that TAP, already attached, which the destination inherits from vireod and
/// uses instead of opening the name (the TAP lives in a VPC's network namespace, not the
/// destination VMM's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationNet {
    pub tap: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap_fd: Option<i32>,
}

/// One drive of a [`DestinationConfig`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationDrive {
    pub path: PathBuf,
    /// Always given: a format detected from a guest-written disk's first bytes is the
    /// guest's choice, not the host's.
    pub format: DriveFormat,
}

impl DestinationConfig {
    /// The file's text (one line of JSON).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("paths and strings serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_reads_as_before_and_back() {
        let cfg = DestinationConfig {
            kernel: "/d/k".into(),
            drives: vec![DestinationDrive {
                path: "/d/root.qcow2".into(),
                format: DriveFormat::Qcow2,
            }],
            net: Vec::new(),
        };
        let text = cfg.to_json();
        assert_eq!(
            text,
            r#"{"kernel":"/d/k","drives":[{"path":"/d/root.qcow2","format":"qcow2"}]}"#
        );
        assert_eq!(
            serde_json::from_str::<DestinationConfig>(&text).unwrap(),
            cfg
        );
        assert!(
            serde_json::from_str::<DestinationConfig>(r#"{"kernel":"/k","drives":[],"x":1}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<DriveFormat>(r#""vmdk""#).is_err());
    }
}
