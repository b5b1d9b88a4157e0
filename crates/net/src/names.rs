//! Every name the data plane gives a namespace, link, VNI or file. All of them derive from ids
//! and from a per-data-directory tag, so two vireods on one machine never collide, and a
//! restarted vireod finds (adopts or removes) what it made by name alone.
//!
//! | what | name |
//! |---|---|
//! | VPC namespace of VPC v on host h | `vireo-<tag>-<vpc id>-h<h>` |
//! | edge namespace of host h | `vireo-<tag>-edge-h<h>` |
//! | an interface's TAP (in the VPC namespace) | `vt` + 10 hex of the ENI id's hash |
//! | that TAP's MAC (the same on every host) | `06:` + 5 bytes of the ENI id's hash |
//! | the VPC namespace's uplink (veth) | `uplink`, its peer in the edge `ve` + 10 hex of the VPC id's hash |
//! | the VPC namespace's VXLAN device | `vxlan0` (made as `vx<tag><8 hex>` in the host namespace) |
//! | dnsmasq's files | `<dir>/<vpc id>-h<h>/` |

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::model::Mac;

/// The name of the VPC namespace's uplink to the edge.
pub const UPLINK: &str = "uplink";
/// The name of the VPC namespace's VXLAN device.
pub const VXLAN: &str = "vxlan0";
/// The UDP port of VXLAN (IANA's).
pub const VXLAN_PORT: u16 = 4789;
/// The edge side of every uplink.
pub const EDGE_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 1);
/// The VPC side of every uplink.
pub const UPLINK_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 2);
/// The instance metadata service's address, on the VPC namespace's loopback (vireod listens
/// on it there, docs/metadata.md).
pub const METADATA_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// The instance metadata service's port.
pub const METADATA_PORT: u16 = 80;

fn hash(parts: &[&str]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    h.finalize().into()
}

/// What one vireod's data plane is called on this machine: the tag that prefixes its names, and
/// the directory its dnsmasq files live in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    tag: String,
    dir: PathBuf,
}

impl Scope {
    /// The scope of the vireod whose data directory is `data_dir`: the tag is the same 4 hex
    /// digits crates/control's migration hosts use (`vireo-<tag>-h<N>`), files go to
    /// `data_dir/net`.
    pub fn for_data_dir(data_dir: &Path) -> Scope {
        let h = Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
        Scope {
            tag: hex::encode(&h[..2]),
            dir: data_dir.join("net"),
        }
    }

    /// A scope with an explicit tag (4 lower-case hex digits) and file directory.
    pub fn new(tag: &str, dir: PathBuf) -> Option<Scope> {
        (tag.len() == 4
            && tag
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
        .then(|| Scope {
            tag: tag.to_string(),
            dir,
        })
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The namespace of VPC `vpc_id` on host `host`.
    pub fn vpc_netns(&self, vpc_id: &str, host: u32) -> String {
        format!("vireo-{}-{vpc_id}-h{host}", self.tag)
    }

    /// The edge namespace of host `host`.
    pub fn edge_netns(&self, host: u32) -> String {
        format!("vireo-{}-edge-h{host}", self.tag)
    }

    /// Parses a namespace name of ours back into (VPC id, host); `None` for anything else
    /// (edge namespaces, migration hosts, other vireods').
    pub fn parse_vpc_netns(&self, name: &str) -> Option<(String, u32)> {
        let rest = name.strip_prefix(&format!("vireo-{}-", self.tag))?;
        let (vpc, host) = rest.rsplit_once("-h")?;
        if !vpc.starts_with("vpc-") || !crate::plan::valid_id(vpc) {
            return None;
        }
        Some((vpc.to_string(), host.parse().ok()?))
    }

    /// Where the dnsmasq of VPC `vpc_id` on host `host` keeps its files.
    pub fn dnsmasq_dir(&self, vpc_id: &str, host: u32) -> PathBuf {
        self.dir.join(format!("{vpc_id}-h{host}"))
    }

    /// The VXLAN network identifier of a VPC (24 bits, never 0).
    pub fn vni(&self, vpc_id: &str) -> u32 {
        let h = hash(&["vni", &self.tag, vpc_id]);
        let v = u32::from_be_bytes([0, h[0], h[1], h[2]]);
        if v == 0 {
            1
        } else {
            v
        }
    }

    /// The MAC of VPC `vpc_id`'s VXLAN device on host `host` (locally administered, unicast):
    /// every host computes every other host's, so no learning or flooding is needed.
    pub fn vxlan_mac(&self, vpc_id: &str, host: u32) -> Mac {
        let h = hash(&["vxlan-mac", &self.tag, vpc_id, &host.to_string()]);
        Mac([0x02, h[0], h[1], h[2], h[3], h[4]])
    }

    /// The name the VXLAN device has in the host namespace before it moves into the VPC's.
    pub fn vxlan_temp_name(&self, vpc_id: &str, host: u32) -> String {
        let h = hash(&["vxlan", vpc_id, &host.to_string()]);
        format!("vx{}{}", self.tag, hex::encode(&h[..4]))
    }
}

/// The TAP of interface `eni_id` (in its VPC namespace).
pub fn tap_name(eni_id: &str) -> String {
    let h = hash(&["tap", eni_id]);
    format!("vt{}", &hex::encode(&h[..5]))
}

/// The MAC of interface `eni_id`'s TAP, the same on every host: the guest's neighbour entries
/// for its router and the VPC's other addresses (proxy ARP answers with the TAP's MAC) stay
/// valid when a live migration moves it to its TAP on another host (with a random MAC per
/// TAP, the new TAP dropped the guest's frames until it asked again: seconds). Locally
/// administered, unicast, `06:` first (the interfaces' own MACs start with `02:`).
pub fn tap_mac(eni_id: &str) -> Mac {
    let h = hash(&["tap-mac", eni_id]);
    Mac([0x06, h[0], h[1], h[2], h[3], h[4]])
}

/// The edge side of VPC `vpc_id`'s uplink (in the edge namespace).
pub fn edge_link_name(vpc_id: &str) -> String {
    let h = hash(&["edge", vpc_id]);
    format!("ve{}", &hex::encode(&h[..5]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_and_differ() {
        let a = Scope::for_data_dir(Path::new("/var/lib/vireo"));
        let b = Scope::for_data_dir(Path::new("/tmp/other"));
        assert_ne!(a.tag(), b.tag());
        assert_eq!(a.dir(), Path::new("/var/lib/vireo/net"));
        let t = tap_name("eni-0123456789abcdef0");
        assert_eq!(t.len(), 12);
        assert!(t.starts_with("vt"));
        assert_ne!(t, tap_name("eni-0123456789abcdef1"));
        let m = tap_mac("eni-0123456789abcdef0");
        assert!(m.is_unicast() && m.0[0] & 2 != 0, "{m}");
        assert_eq!(m, tap_mac("eni-0123456789abcdef0"));
        assert_ne!(m, tap_mac("eni-0123456789abcdef1"));
        assert!(edge_link_name("vpc-1").len() < libc::IFNAMSIZ);
        assert!(a.vxlan_temp_name("vpc-1", 3).len() < libc::IFNAMSIZ);
        assert_ne!(a.vxlan_temp_name("vpc-1", 3), b.vxlan_temp_name("vpc-1", 3));
        assert_ne!(a.vni("vpc-1"), a.vni("vpc-2"));
        assert!(a.vni("vpc-1") < 1 << 24);
        assert!(a.vxlan_mac("vpc-1", 1).is_unicast());
        assert_ne!(a.vxlan_mac("vpc-1", 1), a.vxlan_mac("vpc-1", 2));
    }

    #[test]
    fn namespace_names_parse_back() {
        let s = Scope::new("ab12", PathBuf::from("/d")).unwrap();
        let n = s.vpc_netns("vpc-0a1b", 2);
        assert_eq!(n, "vireo-ab12-vpc-0a1b-h2");
        assert_eq!(s.parse_vpc_netns(&n), Some(("vpc-0a1b".to_string(), 2)));
        assert_eq!(s.parse_vpc_netns(&s.edge_netns(2)), None);
        assert_eq!(s.parse_vpc_netns("vireo-ab12-h1"), None);
        assert_eq!(s.parse_vpc_netns("vireo-ffff-vpc-0a1b-h2"), None);
        assert!(Scope::new("AB12", PathBuf::new()).is_none());
    }
}
