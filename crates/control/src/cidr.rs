//! IPv4 CIDR blocks and the address arithmetic VPC networking needs: parsing EC2's
//! `a.b.c.d/n` (which must name the network address itself, as EC2 insists), containment,
//! overlap, and the addresses of a subnet that instances may use (EC2 reserves the first four
//! and the last).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network: its first address and prefix length, `addr` always aligned to the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    addr: u32,
    prefix: u8,
}

/// Why a text is not a CIDR block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("'{0}' is not an IPv4 CIDR block (a.b.c.d/n)")]
    Syntax(String),
    #[error("'{0}' has host bits set: the block starts at {1}")]
    NotAligned(String, Ipv4Cidr),
}

impl Ipv4Cidr {
    /// The block of `prefix` bits starting at `addr`, which must be aligned.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Ipv4Cidr> {
        let c = Ipv4Cidr {
            addr: u32::from(addr),
            prefix,
        };
        (prefix <= 32 && c.addr & !c.mask() == 0).then_some(c)
    }

    fn mask(self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    pub fn network(self) -> Ipv4Addr {
        Ipv4Addr::from(self.addr)
    }

    pub fn prefix(self) -> u8 {
        self.prefix
    }

    /// The number of addresses in the block.
    pub fn size(self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    /// The last address of the block (its broadcast address).
    pub fn last(self) -> Ipv4Addr {
        Ipv4Addr::from(self.addr | !self.mask())
    }

    /// The `n`th address of the block (0 is the network address), if the block has one.
    pub fn nth(self, n: u64) -> Option<Ipv4Addr> {
        (n < self.size()).then(|| Ipv4Addr::from(self.addr + n as u32))
    }

    /// The offset of `ip` in the block, if it is inside.
    pub fn offset(self, ip: Ipv4Addr) -> Option<u64> {
        self.contains_addr(ip)
            .then(|| u64::from(u32::from(ip) - self.addr))
    }

    pub fn contains_addr(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == self.addr
    }

    /// Whether all of `other` lies inside this block.
    pub fn contains(self, other: Ipv4Cidr) -> bool {
        other.prefix >= self.prefix && self.contains_addr(other.network())
    }

    /// Whether the two blocks share any address (blocks are nested or disjoint).
    pub fn overlaps(self, other: Ipv4Cidr) -> bool {
        self.contains(other) || other.contains(self)
    }

    /// The subnet's router: the first address after the network's (EC2's "VPC router" at .1).
    pub fn router(self) -> Ipv4Addr {
        Ipv4Addr::from(self.addr.wrapping_add(1))
    }

    /// Whether an instance may have `ip` in this subnet: EC2 reserves the network address, the
    /// next three (router, DNS, future use) and the broadcast address.
    pub fn is_assignable(self, ip: Ipv4Addr) -> bool {
        match self.offset(ip) {
            Some(n) => n >= SUBNET_RESERVED_LOW && n + 1 < self.size(),
            None => false,
        }
    }

    /// How many addresses of the subnet instances may have (its size less EC2's five).
    pub fn assignable_count(self) -> u64 {
        self.size().saturating_sub(SUBNET_RESERVED_LOW + 1)
    }

    /// The lowest assignable address not in `used`.
    pub fn lowest_free(self, used: &[Ipv4Addr]) -> Option<Ipv4Addr> {
        let last = self.size().checked_sub(1)?;
        (SUBNET_RESERVED_LOW..last)
            .filter_map(|n| self.nth(n))
            .find(|ip| !used.contains(ip))
    }
}

/// Addresses EC2 reserves at the start of every subnet: network, router, DNS, future use.
pub const SUBNET_RESERVED_LOW: u64 = 4;

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, CidrError> {
        let bad = || CidrError::Syntax(s.to_string());
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        // Strict dotted quad and a plain decimal prefix: no leading '+', no spaces.
        if p.is_empty() || p.len() > 2 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        };
        let net = Ipv4Cidr {
            addr: u32::from(addr) & mask,
            prefix,
        };
        if net.addr != u32::from(addr) {
            return Err(CidrError::NotAligned(s.to_string(), net));
        }
        Ok(net)
    }
}

/// A MAC address for a new network interface: locally administered, unicast, `02:` first like
/// EC2's, the rest random.
pub fn random_mac() -> String {
    let b: [u8; 5] = rand::random();
    format!(
        "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[0], b[1], b[2], b[3], b[4]
    )
}

/// EC2's private host name of an address: `ip-10-0-1-5`.
pub fn host_name(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("ip-{}-{}-{}-{}", o[0], o[1], o[2], o[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_prints() {
        assert_eq!(c("10.0.0.0/16").to_string(), "10.0.0.0/16");
        assert_eq!(c("0.0.0.0/0").size(), 1 << 32);
        assert_eq!(c("10.0.1.7/32").size(), 1);
        for bad in [
            "10.0.0.0",
            "10.0.0.0/",
            "10.0.0.0/33",
            "10.0.0/16",
            "10.0.0.0/+8",
            "10.0.0.0/016",
            "a.b.c.d/8",
            " 10.0.0.0/8",
            "10.0.0.256/24",
        ] {
            assert!(
                matches!(bad.parse::<Ipv4Cidr>(), Err(CidrError::Syntax(_))),
                "{bad}"
            );
        }
        assert_eq!(
            "10.0.1.0/16".parse::<Ipv4Cidr>(),
            Err(CidrError::NotAligned(
                "10.0.1.0/16".into(),
                c("10.0.0.0/16")
            ))
        );
    }

    #[test]
    fn containment_and_overlap() {
        let vpc = c("10.0.0.0/16");
        assert!(vpc.contains(c("10.0.1.0/24")));
        assert!(vpc.contains(vpc));
        assert!(!vpc.contains(c("10.1.0.0/24")));
        assert!(!c("10.0.1.0/24").contains(vpc));
        assert!(c("10.0.0.0/20").overlaps(c("10.0.15.0/24")));
        assert!(!c("10.0.0.0/20").overlaps(c("10.0.16.0/24")));
        assert!(c("10.0.16.0/24").overlaps(c("10.0.0.0/16")));
        assert!(c("0.0.0.0/0").contains_addr(Ipv4Addr::new(1, 2, 3, 4)));
    }

    #[test]
    fn subnet_addresses_skip_the_reserved_five() {
        let s = c("10.0.1.0/24");
        assert_eq!(s.router(), Ipv4Addr::new(10, 0, 1, 1));
        assert_eq!(s.assignable_count(), 251);
        assert_eq!(c("10.0.0.0/28").assignable_count(), 11);
        assert!(!s.is_assignable(Ipv4Addr::new(10, 0, 1, 3)));
        assert!(s.is_assignable(Ipv4Addr::new(10, 0, 1, 4)));
        assert!(s.is_assignable(Ipv4Addr::new(10, 0, 1, 254)));
        assert!(!s.is_assignable(Ipv4Addr::new(10, 0, 1, 255)));
        assert!(!s.is_assignable(Ipv4Addr::new(10, 0, 2, 4)));
        assert_eq!(s.lowest_free(&[]), Some(Ipv4Addr::new(10, 0, 1, 4)));
        let used = [Ipv4Addr::new(10, 0, 1, 4), Ipv4Addr::new(10, 0, 1, 6)];
        assert_eq!(s.lowest_free(&used), Some(Ipv4Addr::new(10, 0, 1, 5)));
        let t = c("10.0.0.0/28");
        let all: Vec<Ipv4Addr> = (4..15).map(|n| t.nth(n).unwrap()).collect();
        assert_eq!(t.lowest_free(&all), None, "a full /28 has nothing left");
        assert_eq!(t.lowest_free(&all[1..]), Some(Ipv4Addr::new(10, 0, 0, 4)));
    }

    #[test]
    fn macs_and_host_names() {
        let m = random_mac();
        assert!(m.starts_with("02:"), "{m}");
        assert_eq!(m.len(), 17);
        assert_eq!(host_name(Ipv4Addr::new(10, 0, 1, 5)), "ip-10-0-1-5");
    }
}
