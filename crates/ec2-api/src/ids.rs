//! EC2-style resource ids: a kind prefix, a dash, and lowercase hex.
//!
//! EC2 issues 17 hex digits today and issued 8 before 2016; both are still well-formed, so both
//! are accepted. An id of the right kind but the wrong shape is *malformed* (for instances:
//! `InvalidInstanceID.Malformed`), which EC2 reports before it looks anything up; a well-formed id
//! that names nothing is the caller's `.NotFound` to report.

use rand::Rng;

use crate::error::Ec2Error;

/// The kinds of id Vireo issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdKind {
    Instance,
    Image,
    Reservation,
    Volume,
    Snapshot,
    Vpc,
    Subnet,
    SecurityGroup,
    SecurityGroupRule,
    NetworkInterface,
    NetworkInterfaceAttachment,
    InternetGateway,
    RouteTable,
    RouteTableAssociation,
    NetworkAcl,
    NetworkAclAssociation,
    Allocation,
    ElasticIpAssociation,
    KeyPair,
}

impl IdKind {
    pub fn prefix(self) -> &'static str {
        match self {
            IdKind::Instance => "i",
            IdKind::Image => "ami",
            IdKind::Reservation => "r",
            IdKind::Volume => "vol",
            IdKind::Snapshot => "snap",
            IdKind::Vpc => "vpc",
            IdKind::Subnet => "subnet",
            IdKind::SecurityGroup => "sg",
            IdKind::SecurityGroupRule => "sgr",
            IdKind::NetworkInterface => "eni",
            IdKind::NetworkInterfaceAttachment => "eni-attach",
            IdKind::InternetGateway => "igw",
            IdKind::RouteTable => "rtb",
            IdKind::RouteTableAssociation => "rtbassoc",
            IdKind::NetworkAcl => "acl",
            IdKind::NetworkAclAssociation => "aclassoc",
            IdKind::Allocation => "eipalloc",
            IdKind::ElasticIpAssociation => "eipassoc",
            IdKind::KeyPair => "key",
        }
    }

    /// The error EC2 returns for a malformed id of this kind.
    pub fn malformed(self, id: &str) -> Ec2Error {
        match self {
            IdKind::Instance => Ec2Error::invalid_instance_id_malformed(id),
            IdKind::Image => Ec2Error::invalid_ami_id_malformed(id),
            IdKind::Volume => Ec2Error::new(
                "InvalidVolumeID.Malformed",
                format!("Invalid id: \"{id}\""),
                400,
            ),
            IdKind::Snapshot => Ec2Error::new(
                "InvalidSnapshotID.Malformed",
                format!("Invalid id: \"{id}\""),
                400,
            ),
            IdKind::Reservation
            | IdKind::NetworkInterfaceAttachment
            | IdKind::RouteTableAssociation
            | IdKind::NetworkAclAssociation => Ec2Error::invalid_id(id),
            IdKind::Vpc => malformed("InvalidVpcID.Malformed", "VPC", id),
            IdKind::Subnet => malformed("InvalidSubnetID.Malformed", "subnet", id),
            IdKind::SecurityGroup => malformed("InvalidGroupId.Malformed", "security group", id),
            IdKind::SecurityGroupRule => malformed(
                "InvalidSecurityGroupRuleId.Malformed",
                "security group rule",
                id,
            ),
            IdKind::NetworkInterface => malformed(
                "InvalidNetworkInterfaceID.Malformed",
                "network interface",
                id,
            ),
            IdKind::InternetGateway => {
                malformed("InvalidInternetGatewayID.Malformed", "internet gateway", id)
            }
            IdKind::RouteTable => malformed("InvalidRouteTableID.Malformed", "route table", id),
            IdKind::NetworkAcl => malformed("InvalidNetworkAclID.Malformed", "network ACL", id),
            IdKind::Allocation => malformed("InvalidAllocationID.Malformed", "allocation", id),
            IdKind::ElasticIpAssociation => {
                malformed("InvalidAssociationID.Malformed", "association", id)
            }
            IdKind::KeyPair => malformed("InvalidKeyPairId.Malformed", "key pair", id),
        }
    }
}

fn malformed(code: &str, what: &str, id: &str) -> Ec2Error {
    Ec2Error::new(code, format!("Invalid {what} id: \"{id}\""), 400)
}

/// Digits in the ids Vireo issues (EC2's long-id format).
pub const ID_HEX_DIGITS: usize = 17;

/// A fresh random id of `kind`, e.g. `i-0a1b2c3d4e5f60718`.
pub fn new_id(kind: IdKind) -> String {
    let mut rng = rand::rng();
    let mut s = String::with_capacity(kind.prefix().len() + 1 + ID_HEX_DIGITS);
    s.push_str(kind.prefix());
    s.push('-');
    for _ in 0..ID_HEX_DIGITS {
        let d: u32 = rng.random_range(0..16);
        s.push(char::from_digit(d, 16).unwrap_or('0'));
    }
    s
}

/// Whether `id` is a well-formed id of `kind` (8 or 17 lowercase hex digits after the prefix).
pub fn is_well_formed(kind: IdKind, id: &str) -> bool {
    let Some(hex) = id
        .strip_prefix(kind.prefix())
        .and_then(|rest| rest.strip_prefix('-'))
    else {
        return false;
    };
    (hex.len() == 8 || hex.len() == ID_HEX_DIGITS)
        && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `Ok(())` for a well-formed id of `kind`, else the kind's `.Malformed` error.
pub fn validate(kind: IdKind, id: &str) -> Result<(), Ec2Error> {
    if is_well_formed(kind, id) {
        Ok(())
    } else {
        Err(kind.malformed(id))
    }
}

/// A request id in the UUID form EC2 uses (random, version 4).
pub fn request_id() -> String {
    let mut b: [u8; 16] = rand::rng().random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_are_well_formed_and_distinct() {
        for kind in [
            IdKind::Instance,
            IdKind::Image,
            IdKind::Reservation,
            IdKind::Volume,
            IdKind::Snapshot,
            IdKind::Vpc,
            IdKind::SecurityGroupRule,
            IdKind::NetworkInterfaceAttachment,
            IdKind::RouteTableAssociation,
            IdKind::Allocation,
            IdKind::KeyPair,
        ] {
            let a = new_id(kind);
            let b = new_id(kind);
            assert!(is_well_formed(kind, &a), "{a}");
            assert_eq!(a.len(), kind.prefix().len() + 1 + 17);
            assert_ne!(a, b);
        }
    }

    #[test]
    fn well_formed_and_malformed() {
        assert!(is_well_formed(IdKind::Instance, "i-0123456789abcdef0"));
        assert!(is_well_formed(IdKind::Instance, "i-1234abcd"));
        assert!(is_well_formed(IdKind::Image, "ami-0123456789abcdef0"));
        for bad in [
            "",
            "i-",
            "i-0123456789ABCDEF0",
            "i-0123456789abcdef",
            "i-0123456789abcdef01",
            "ami-0123456789abcdef0",
            "i_0123456789abcdef0",
            "i-0123456789abcdefg",
            "x-1234abcd",
            " i-1234abcd",
        ] {
            assert!(!is_well_formed(IdKind::Instance, bad), "{bad:?}");
        }
        // "i-" must not be satisfied by an image id that merely starts with "i".
        assert!(!is_well_formed(IdKind::Image, "i-1234abcd"));
    }

    #[test]
    fn validate_gives_the_kind_specific_code() {
        for (kind, id, code) in [
            (IdKind::Instance, "i-nope", "InvalidInstanceID.Malformed"),
            (IdKind::Image, "ami-nope", "InvalidAMIID.Malformed"),
            (IdKind::Volume, "vol-x", "InvalidVolumeID.Malformed"),
            (IdKind::Reservation, "r-x", "InvalidID"),
            (IdKind::Vpc, "vpc-nope", "InvalidVpcID.Malformed"),
            (IdKind::SecurityGroup, "sg-x", "InvalidGroupId.Malformed"),
        ] {
            assert_eq!(validate(kind, id).unwrap_err().code, code, "{id}");
        }
        assert!(validate(IdKind::Snapshot, "snap-1234abcd").is_ok());
        // "sg-" must not accept a rule id, nor "eni-" an attachment id.
        assert!(!is_well_formed(
            IdKind::SecurityGroup,
            "sgr-0123456789abcdef0"
        ));
        assert!(!is_well_formed(
            IdKind::NetworkInterface,
            "eni-attach-0123456789abcdef0"
        ));
    }

    #[test]
    fn request_ids_are_uuid_v4() {
        let id = request_id();
        assert_eq!(id.len(), 36);
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'));
        assert!(matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'));
        assert_ne!(request_id(), id);
    }
}
