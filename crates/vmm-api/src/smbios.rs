//! The identity a VM's firmware tables (SMBIOS, which Linux reads as DMI) give the guest: its
//! system UUID, serial number, asset tag and the names of its maker and product
//! (docs/vmm.md, "SMBIOS").
//!
//! vireod gives each instance's VMM one as `--smbios KEY=VALUE,...` ([`Smbios::to_flag`]); the
//! VMM reads that flag ([`Smbios::parse_flag`]) or the `smbios` object of its JSON
//! configuration, and keeps it in its configuration, which snapshots and migration streams
//! carry (postcard: every field is always written, absent ones included). Every value is
//! checked where it is made, so a [`Smbios`] always holds values the tables can carry: strings
//! of 1 to [`MAX_STRING_LEN`] bytes without control characters, and a well-formed UUID.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The longest string accepted (SMBIOS itself has no limit; 64 bytes is what firmware setup
/// tools commonly allow, and more than any identity needs).
pub const MAX_STRING_LEN: usize = 64;

/// A value that an SMBIOS string or UUID cannot be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("{0:?} is not a UUID: want 32 hex digits grouped 8-4-4-4-12")]
    Uuid(String),
    #[error("{len} bytes long; at most {MAX_STRING_LEN} bytes")]
    TooLong { len: usize },
    #[error("{0:?} holds a NUL or another control character")]
    Control(String),
    #[error("empty (leave the key out instead)")]
    Empty,
}

/// An `--smbios` flag that cannot be used, or a [`Smbios`] the flag cannot carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlagError {
    #[error("invalid --smbios {key}: {source}")]
    Value {
        key: &'static str,
        #[source]
        source: ValueError,
    },
    #[error("invalid --smbios {0:?}: use {FLAG_KEYS}")]
    Syntax(String),
    #[error("invalid --smbios: {0} given twice")]
    Twice(&'static str),
    #[error("the SMBIOS {key} {value:?} holds a comma, which --smbios cannot carry (use the JSON configuration)")]
    Comma { key: &'static str, value: String },
}

const FLAG_KEYS: &str = "uuid=UUID,serial=S,asset-tag=S,manufacturer=S,product=S,version=S,\
                         sku=S,family=S";

/// A string of an SMBIOS structure: 1 to [`MAX_STRING_LEN`] bytes, no control characters
/// (a NUL would end it early; the others would garble what the guest shows).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SmbiosString(String);

impl SmbiosString {
    pub fn new(s: impl Into<String>) -> Result<Self, ValueError> {
        let s = s.into();
        if s.is_empty() {
            return Err(ValueError::Empty);
        }
        if s.len() > MAX_STRING_LEN {
            return Err(ValueError::TooLong { len: s.len() });
        }
        if s.chars().any(char::is_control) {
            return Err(ValueError::Control(s));
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SmbiosString {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Self, ValueError> {
        Self::new(s)
    }
}

impl From<SmbiosString> for String {
    fn from(s: SmbiosString) -> String {
        s.0
    }
}

impl fmt::Display for SmbiosString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A system UUID, its 16 bytes in the order of its text (`00112233-4455-...` is
/// `[0x00, 0x11, 0x22, ...]`). SMBIOS stores the first three fields little-endian
/// ([`SystemUuid::smbios_bytes`]), and Linux undoes that when it shows the UUID
/// (`/sys/class/dmi/id/product_uuid`), so the guest reads the text given here, in lower case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SystemUuid(pub [u8; 16]);

impl SystemUuid {
    /// The bytes of SMBIOS's type 1 UUID field (SMBIOS 2.6 and later): time_low, time_mid and
    /// time_hi_and_version little-endian, the rest as written.
    pub fn smbios_bytes(&self) -> [u8; 16] {
        let mut b = self.0;
        b[0..4].reverse();
        b[4..6].reverse();
        b[6..8].reverse();
        b
    }
}

impl FromStr for SystemUuid {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let bad = || ValueError::Uuid(s.to_string());
        let groups: Vec<&str> = s.split('-').collect();
        let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        if lens != [8, 4, 4, 4, 12] {
            return Err(bad());
        }
        let hex: String = groups.concat();
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            let pair = hex.get(2 * i..2 * i + 2).ok_or_else(bad)?;
            // from_str_radix takes a leading '+', which is no hex digit.
            if !pair.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(Self(out))
    }
}

impl TryFrom<String> for SystemUuid {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Self, ValueError> {
        s.parse()
    }
}

impl From<SystemUuid> for String {
    fn from(u: SystemUuid) -> String {
        u.to_string()
    }
}

impl fmt::Display for SystemUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// What the SMBIOS tables say about the machine. Every field is optional; the VMM's defaults
/// stand in for those left out (docs/vmm.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Smbios {
    /// The chassis's (type 3) and baseboard's (type 2) asset tag; EC2 puts the instance id
    /// there.
    #[serde(default)]
    pub asset_tag: Option<SmbiosString>,
    /// The system's family (type 1).
    #[serde(default)]
    pub family: Option<SmbiosString>,
    /// The maker of the system, baseboard and chassis, and the firmware's vendor.
    #[serde(default)]
    pub manufacturer: Option<SmbiosString>,
    /// The system's (and baseboard's) product name.
    #[serde(default)]
    pub product: Option<SmbiosString>,
    /// The system's (and chassis's) serial number.
    #[serde(default)]
    pub serial: Option<SmbiosString>,
    /// The system's SKU number.
    #[serde(default)]
    pub sku: Option<SmbiosString>,
    /// The system UUID.
    #[serde(default)]
    pub uuid: Option<SystemUuid>,
    /// The system's version.
    #[serde(default)]
    pub version: Option<SmbiosString>,
}

impl Smbios {
    /// Parses the value of `--smbios`: `KEY=VALUE` pairs separated by commas, each key at most
    /// once, keys `uuid`, `serial`, `asset-tag`, `manufacturer`, `product`, `version`, `sku`,
    /// `family`.
    pub fn parse_flag(s: &str) -> Result<Self, FlagError> {
        let mut out = Smbios::default();
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let Some((key, value)) = part.split_once('=') else {
                return Err(FlagError::Syntax(part.to_string()));
            };
            let (key, slot): (&'static str, &mut Option<SmbiosString>) = match key {
                "uuid" => {
                    if out.uuid.is_some() {
                        return Err(FlagError::Twice("uuid"));
                    }
                    let uuid = value.parse().map_err(|source| FlagError::Value {
                        key: "uuid",
                        source,
                    })?;
                    out.uuid = Some(uuid);
                    continue;
                }
                "serial" => ("serial", &mut out.serial),
                "asset-tag" => ("asset-tag", &mut out.asset_tag),
                "manufacturer" => ("manufacturer", &mut out.manufacturer),
                "product" => ("product", &mut out.product),
                "version" => ("version", &mut out.version),
                "sku" => ("sku", &mut out.sku),
                "family" => ("family", &mut out.family),
                _ => return Err(FlagError::Syntax(part.to_string())),
            };
            if slot.is_some() {
                return Err(FlagError::Twice(key));
            }
            *slot =
                Some(SmbiosString::new(value).map_err(|source| FlagError::Value { key, source })?);
        }
        Ok(out)
    }

    /// The `--smbios` value that [`Smbios::parse_flag`] reads back as `self`; an error when a
    /// string holds a comma, which the flag cannot carry.
    pub fn to_flag(&self) -> Result<String, FlagError> {
        let mut parts = Vec::new();
        if let Some(u) = &self.uuid {
            parts.push(format!("uuid={u}"));
        }
        for (key, value) in [
            ("serial", &self.serial),
            ("asset-tag", &self.asset_tag),
            ("manufacturer", &self.manufacturer),
            ("product", &self.product),
            ("version", &self.version),
            ("sku", &self.sku),
            ("family", &self.family),
        ] {
            if let Some(v) = value {
                if v.as_str().contains(',') {
                    return Err(FlagError::Comma {
                        key,
                        value: v.to_string(),
                    });
                }
                parts.push(format!("{key}={v}"));
            }
        }
        Ok(parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_parse_print_and_swap_their_first_three_fields() {
        let u: SystemUuid = "EC2A1B2C-3D4E-5F60-7182-93a4b5c6d7e8".parse().unwrap();
        assert_eq!(u.0[..4], [0xec, 0x2a, 0x1b, 0x2c]);
        assert_eq!(u.to_string(), "ec2a1b2c-3d4e-5f60-7182-93a4b5c6d7e8");
        assert_eq!(
            u.smbios_bytes(),
            [
                0x2c, 0x1b, 0x2a, 0xec, 0x4e, 0x3d, 0x60, 0x5f, 0x71, 0x82, 0x93, 0xa4, 0xb5, 0xc6,
                0xd7, 0xe8
            ]
        );
        for bad in [
            "",
            "ec2a1b2c3d4e5f60718293a4b5c6d7e8",
            "ec2a1b2c-3d4e-5f60-7182-93a4b5c6d7e",
            "ec2a1b2c-3d4e-5f60-7182-93a4b5c6d7e8a",
            "ec2a1b2g-3d4e-5f60-7182-93a4b5c6d7e8",
            "ec2a1b2c-3d4e-5f60-7182+93a4b5c6d7e8",
            "+c2a1b2c-3d4e-5f60-7182-93a4b5c6d7e8",
            "ec2a1b2c-3d4e-5f607-182-93a4b5c6d7e8",
            "éc2a1b2-3d4e-5f60-7182-93a4b5c6d7e8",
        ] {
            assert!(bad.parse::<SystemUuid>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_flag_reads_back_what_it_writes() {
        let s = Smbios::parse_flag(
            "uuid=ec2a1b2c-3d4e-5f60-7182-93a4b5c6d7e8,asset-tag=i-0123456789abcdef0,\
             serial=ec2a1b2c-3d4e-5f60-7182-93a4b5c6d7e8,manufacturer=Amazon EC2,product=t3.micro",
        )
        .unwrap();
        assert_eq!(
            s.asset_tag.as_ref().unwrap().as_str(),
            "i-0123456789abcdef0"
        );
        assert_eq!(s.manufacturer.as_ref().unwrap().as_str(), "Amazon EC2");
        assert_eq!(s.sku, None);
        assert_eq!(Smbios::parse_flag(&s.to_flag().unwrap()).unwrap(), s);
        assert_eq!(Smbios::parse_flag("").unwrap(), Smbios::default());
        let all = "uuid=00000000-0000-0000-0000-000000000001,serial=s,asset-tag=a,\
                   manufacturer=m,product=p,version=v,sku=k,family=f";
        assert_eq!(Smbios::parse_flag(all).unwrap().to_flag().unwrap(), all);
        // JSON (the VMM's configuration) carries the same, and refuses what the flag refuses.
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Smbios>(&json).unwrap(), s);
        assert!(serde_json::from_str::<Smbios>(r#"{"uuid":"ec2"}"#).is_err());
        assert!(serde_json::from_str::<Smbios>(r#"{"serial":"a\u0000b"}"#).is_err());
        assert!(serde_json::from_str::<Smbios>(r#"{"owner":"x"}"#).is_err());
        let long = format!(r#"{{"product":"{}"}}"#, "p".repeat(65));
        assert!(serde_json::from_str::<Smbios>(&long).is_err());
    }

    #[test]
    fn bad_flags_are_refused_with_one_clear_line() {
        let long = format!("serial={}", "s".repeat(65));
        for (flag, want) in [
            (
                "uuid=ec2-not-a-uuid",
                "invalid --smbios uuid: \"ec2-not-a-uuid\" is not a UUID: want 32 hex digits \
                 grouped 8-4-4-4-12",
            ),
            (
                long.as_str(),
                "invalid --smbios serial: 65 bytes long; at most 64 bytes",
            ),
            (
                "product=a\0b",
                "invalid --smbios product: \"a\\0b\" holds a NUL or another control character",
            ),
            (
                "asset-tag=",
                "invalid --smbios asset-tag: empty (leave the key out instead)",
            ),
            (
                "owner=me",
                "invalid --smbios \"owner=me\": use uuid=UUID,serial=S,asset-tag=S,\
                 manufacturer=S,product=S,version=S,sku=S,family=S",
            ),
            (
                "serial",
                "invalid --smbios \"serial\": use uuid=UUID,serial=S,asset-tag=S,\
                 manufacturer=S,product=S,version=S,sku=S,family=S",
            ),
            ("sku=a,sku=b", "invalid --smbios: sku given twice"),
            (
                "uuid=00000000-0000-0000-0000-000000000000,uuid=00000000-0000-0000-0000-000000000000",
                "invalid --smbios: uuid given twice",
            ),
        ] {
            let e = Smbios::parse_flag(flag).unwrap_err();
            assert_eq!(e.to_string(), want, "{flag:?}");
            assert!(!e.to_string().contains('\n'));
        }
        // Exactly 64 bytes is fine.
        assert!(Smbios::parse_flag(&format!("serial={}", "s".repeat(64))).is_ok());
        let with_comma = Smbios {
            manufacturer: Some(SmbiosString::new("Vireo, Inc.").unwrap()),
            ..Smbios::default()
        };
        assert!(matches!(
            with_comma.to_flag(),
            Err(FlagError::Comma {
                key: "manufacturer",
                ..
            })
        ));
    }
}
