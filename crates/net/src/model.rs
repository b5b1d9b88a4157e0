//! The desired state of one VPC on one host, as plain typed input: what vireod reads from its
//! database and hands to [`crate::plan`] / [`crate::apply`]. Nothing here touches the system.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An IPv4 network in CIDR form (`10.0.1.0/24`). The address is kept as given; [`Cidr::network`]
/// gives the masked one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

/// Why a CIDR or MAC address does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("invalid CIDR {0:?}: want A.B.C.D/N with N from 0 to 32")]
    Cidr(String),
    #[error("invalid MAC address {0:?}: want six hex bytes separated by ':'")]
    Mac(String),
}

impl Cidr {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, ParseError> {
        if prefix > 32 {
            return Err(ParseError::Cidr(format!("{addr}/{prefix}")));
        }
        Ok(Cidr { addr, prefix })
    }

    /// The netmask as a number (`/24` -> 0xffffff00).
    pub fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    /// The network address (host bits cleared).
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    /// The last address of the network (its broadcast address).
    pub fn last(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()) | !self.mask())
    }

    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.mask())
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }

    /// Whether `other` lies wholly inside `self`.
    pub fn covers(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.network())
    }

    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.covers(other) || other.covers(self)
    }

    /// The VPC router's address in this subnet: the network address + 1 (EC2's convention).
    pub fn router(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()).wrapping_add(1))
    }

    /// The same network with its host bits cleared (`10.0.1.7/24` -> `10.0.1.0/24`).
    pub fn normalized(&self) -> Cidr {
        Cidr {
            addr: self.network(),
            prefix: self.prefix,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let bad = || ParseError::Cidr(s.to_string());
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        Cidr::new(addr, prefix).map_err(|_| bad())
    }
}

/// The `String` conversions serde's `try_from = "String", into = "String"` uses for a type
/// written as its `Display` text and read back with its `FromStr`.
macro_rules! via_string {
    ($t:ty) => {
        impl TryFrom<String> for $t {
            type Error = ParseError;
            fn try_from(s: String) -> Result<Self, ParseError> {
                s.parse()
            }
        }

        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.to_string()
            }
        }
    };
}

via_string!(Cidr);

/// An Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// A unicast address (the I/G bit clear): the only kind an interface may own.
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for Mac {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in out.iter_mut() {
            let p = parts.next().ok_or_else(|| ParseError::Mac(s.to_string()))?;
            if p.len() != 2 {
                return Err(ParseError::Mac(s.to_string()));
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| ParseError::Mac(s.to_string()))?;
        }
        if parts.next().is_some() {
            return Err(ParseError::Mac(s.to_string()));
        }
        Ok(Mac(out))
    }
}

via_string!(Mac);

/// Where one host's own network lives on this machine (crates/control's migration hosts):
/// host 0 is the namespace vireod runs in (`netns: None`), host N a named namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPlace {
    pub index: u32,
    pub netns: Option<String>,
}

/// Another host of a multi-host VPC, as seen from this host: the address its namespace has on
/// the underlay (the link between hosts), reachable from this host's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub host: u32,
    pub underlay: Ipv4Addr,
}

/// The desired state of one VPC as far as one host is concerned. `interfaces` lists every
/// interface of the VPC, on every host: the local ones get TAPs, the remote ones routes over
/// VXLAN, and all of them count as members of their security groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VpcState {
    /// `vpc-…`: lower-case letters, digits and '-' only (it goes into names).
    pub vpc_id: String,
    pub cidr: Cidr,
    /// Goes into DNS names: `ip-10-0-1-5.<region>.compute.internal`.
    pub region: String,
    /// The host this state is applied on.
    pub host: HostPlace,
    pub subnets: Vec<Subnet>,
    pub interfaces: Vec<Interface>,
    pub security_groups: Vec<SecurityGroup>,
    /// An internet gateway is attached (with a route to it): the VPC namespace gets an uplink
    /// into the host's edge namespace, and public IPs are reachable.
    pub internet_gateway: bool,
    /// Public (and Elastic) IPs: 1:1 NAT to a private IP of an interface.
    pub public_ips: Vec<PublicIp>,
    pub dns: DnsSettings,
    /// The other hosts that interfaces of this VPC live on.
    pub peers: Vec<Peer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet {
    /// `subnet-…`
    pub id: String,
    pub cidr: Cidr,
}

/// A network interface (ENI).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// `eni-…`
    pub id: String,
    pub mac: Mac,
    pub ip: Ipv4Addr,
    /// The id of its subnet (one of [`VpcState::subnets`]).
    pub subnet: String,
    /// Its security groups' ids (each one of [`VpcState::security_groups`]).
    pub groups: Vec<String>,
    /// The host whose VMM owns it: its traffic is routed there.
    pub host: u32,
    /// During a live migration, the other host that has its TAP too (with its anti-spoofing
    /// and security group chains), standing by: the destination before the switch-over, the
    /// source after it. The standby host routes the interface's traffic over VXLAN to
    /// `host`; `host` has the VXLAN entries for the standby host ready. So the switch-over is
    /// one route (and neighbour) change per host ([`crate::switch_interface`]). `None` outside
    /// a migration.
    #[serde(default)]
    pub standby: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroup {
    /// `sg-…`
    pub id: String,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
}

/// One security group rule: traffic of `protocol` from (ingress) or to (egress) `peer` is
/// allowed. Rules only allow; what no rule allows is dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub protocol: Protocol,
    pub peer: RulePeer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    /// EC2's `-1`.
    All,
    Tcp(PortRange),
    Udp(PortRange),
    /// EC2's FromPort/ToPort for ICMP: type and code, `None` for `-1` (any).
    Icmp {
        icmp_type: Option<u8>,
        code: Option<u8>,
    },
}

/// An inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRange {
    pub from: u16,
    pub to: u16,
}

impl PortRange {
    pub const ALL: PortRange = PortRange { from: 0, to: 65535 };

    pub fn single(port: u16) -> Self {
        PortRange {
            from: port,
            to: port,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RulePeer {
    Cidr(Cidr),
    /// A security group id: the private IPs of the interfaces that are its members.
    Group(String),
}

/// A public or Elastic IP mapped 1:1 onto an interface's private IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicIp {
    pub public: Ipv4Addr,
    pub private: Ipv4Addr,
}

/// The VPC's DNS attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsSettings {
    /// enableDnsSupport: the router answers DNS.
    pub support: bool,
    /// enableDnsHostnames: instances' private names resolve.
    pub hostnames: bool,
}

/// The private DNS host name of an address: `ip-10-0-1-5`.
pub fn host_name(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("ip-{}-{}-{}-{}", o[0], o[1], o[2], o[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_math() {
        let c: Cidr = "10.0.1.7/24".parse().unwrap();
        assert_eq!(c.network(), Ipv4Addr::new(10, 0, 1, 0));
        assert_eq!(c.last(), Ipv4Addr::new(10, 0, 1, 255));
        assert_eq!(c.router(), Ipv4Addr::new(10, 0, 1, 1));
        assert_eq!(c.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert!(c.contains(Ipv4Addr::new(10, 0, 1, 200)));
        assert!(!c.contains(Ipv4Addr::new(10, 0, 2, 1)));
        let vpc: Cidr = "10.0.0.0/16".parse().unwrap();
        assert!(vpc.covers(&c));
        assert!(!c.covers(&vpc));
        assert!(c.overlaps(&vpc));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(all.mask(), 0);
        for bad in ["10.0.0.0", "10.0.0.0/33", "x/8", "10.0.0/8"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn mac_round_trip() {
        let m: Mac = "02:AB:00:00:00:05".parse().unwrap();
        assert_eq!(m.to_string(), "02:ab:00:00:00:05");
        assert!(m.is_unicast());
        assert!(!"01:00:5e:00:00:01".parse::<Mac>().unwrap().is_unicast());
        for bad in [
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "2:00:00:00:00:00",
            "zz:00:00:00:00:00",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }

    #[test]
    fn host_names() {
        assert_eq!(host_name(Ipv4Addr::new(10, 0, 1, 5)), "ip-10-0-1-5");
    }
}
