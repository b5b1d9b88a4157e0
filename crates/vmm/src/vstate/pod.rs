//! KVM's state structures as bytes in serialized state: raw bytes in a binary format (the
//! snapshot state and the migration stream, postcard), one hex string each in a
//! human-readable one (JSON).
//!
//! kvm-bindings serializes its structures field by field, or as byte sequences that JSON spells
//! as arrays of numbers (the 4 KiB XSAVE area alone would become 4096 numbers). As one byte
//! string each, a machine state decodes with little more than a copy, which counts during a
//! migration's downtime and a restore.

use kvm_bindings::kvm_fpu;
use serde::{Deserialize, Deserializer, Serializer};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// A KVM ABI structure seen as its bytes. kvm-bindings (its `serde` feature) derives
/// zerocopy's traits for the structures a machine state holds, which checks at compile time
/// that they have no padding and that any bytes are a valid value; `kvm_fpu`, the one it
/// leaves out, goes through [`Fpu`].
pub trait Pod: IntoBytes + FromBytes + Immutable {}

impl<T: IntoBytes + FromBytes + Immutable> Pod for T {}

/// The bytes of `v`, exactly as KVM lays it out.
pub fn bytes<T: Pod>(v: &T) -> &[u8] {
    v.as_bytes()
}

/// The value whose bytes are `b`; None when the length is not exactly the structure's (a
/// wrong length is refused, never truncated or padded).
pub fn from_bytes<T: Pod>(b: &[u8]) -> Option<T> {
    T::read_from_bytes(b).ok()
}

/// `kvm_fpu` field for field, with the derives kvm-bindings does not give it: the same
/// `repr(C)` layout (416 bytes, no padding: the derive checks that), so its bytes are
/// `kvm_fpu`'s bytes.
#[derive(IntoBytes, FromBytes, Immutable)]
#[repr(C)]
struct Fpu {
    fpr: [[u8; 16]; 8],
    fcw: u16,
    fsw: u16,
    ftwx: u8,
    pad1: u8,
    last_opcode: u16,
    last_ip: u64,
    last_dp: u64,
    xmm: [[u8; 16]; 16],
    mxcsr: u32,
    pad2: u32,
}

const _: () = assert!(std::mem::size_of::<Fpu>() == std::mem::size_of::<kvm_fpu>());

/// `From` between `kvm_fpu` and [`Fpu`] both ways: the field list is written once, so the two
/// conversions cannot drift apart.
macro_rules! fpu_conversion {
    ($from:ty => $to:ident) => {
        impl From<$from> for $to {
            fn from(f: $from) -> $to {
                $to {
                    fpr: f.fpr,
                    fcw: f.fcw,
                    fsw: f.fsw,
                    ftwx: f.ftwx,
                    pad1: f.pad1,
                    last_opcode: f.last_opcode,
                    last_ip: f.last_ip,
                    last_dp: f.last_dp,
                    xmm: f.xmm,
                    mxcsr: f.mxcsr,
                    pad2: f.pad2,
                }
            }
        }
    };
}

fpu_conversion!(&kvm_fpu => Fpu);
fpu_conversion!(Fpu => kvm_fpu);

fn to_hex(b: &[u8], out: &mut String) {
    const D: &[u8; 16] = b"0123456789abcdef";
    for &x in b {
        out.push(D[usize::from(x >> 4)] as char);
        out.push(D[usize::from(x & 15)] as char);
    }
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    s.chunks(2)
        .map(|p| Some((nib(p[0])? << 4) | nib(p[1])?))
        .collect()
}

/// `#[serde(with = "pod_bytes")]` for one Pod value.
pub mod pod_bytes {
    use super::*;

    pub fn serialize<T: Pod, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        serialize_raw(bytes(v), s)
    }

    pub fn deserialize<'de, T: Pod, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
        let b = deserialize_raw(d)?;
        from_bytes(&b).ok_or_else(|| serde::de::Error::custom("wrong length for a KVM structure"))
    }
}

/// `#[serde(with = "fpu_bytes")]` for a `kvm_fpu`: its bytes, as [`pod_bytes`] writes the others.
pub mod fpu_bytes {
    use super::*;

    pub fn serialize<S: Serializer>(v: &kvm_fpu, s: S) -> Result<S::Ok, S::Error> {
        serialize_raw(Fpu::from(v).as_bytes(), s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<kvm_fpu, D::Error> {
        let b = deserialize_raw(d)?;
        from_bytes::<Fpu>(&b)
            .map(kvm_fpu::from)
            .ok_or_else(|| serde::de::Error::custom("wrong length for a KVM structure"))
    }
}

/// `#[serde(with = "pod_vec")]` for a vector of Pod values: one byte string.
pub mod pod_vec {
    use super::*;

    pub fn serialize<T: Pod, S: Serializer>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
        serialize_raw(v.as_bytes(), s)
    }

    pub fn deserialize<'de, T: Pod, D: Deserializer<'de>>(d: D) -> Result<Vec<T>, D::Error> {
        let b = deserialize_raw(d)?;
        let n = std::mem::size_of::<T>();
        if b.len() % n != 0 {
            return Err(serde::de::Error::custom(
                "length not a whole number of entries",
            ));
        }
        Ok(b.chunks(n).filter_map(from_bytes).collect())
    }
}

fn serialize_raw<S: Serializer>(raw: &[u8], s: S) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() {
        let mut out = String::with_capacity(raw.len() * 2);
        to_hex(raw, &mut out);
        s.serialize_str(&out)
    } else {
        s.serialize_bytes(raw)
    }
}

fn deserialize_raw<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<std::borrow::Cow<'de, [u8]>, D::Error> {
    if d.is_human_readable() {
        let s = <&str>::deserialize(d)?;
        from_hex(s)
            .map(std::borrow::Cow::Owned)
            .ok_or_else(|| serde::de::Error::custom("bad hex"))
    } else {
        <&[u8]>::deserialize(d).map(std::borrow::Cow::Borrowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::{kvm_msr_entry, kvm_regs};

    #[derive(serde::Serialize, serde::Deserialize)]
    struct T {
        #[serde(with = "pod_bytes")]
        regs: kvm_regs,
        #[serde(with = "pod_vec")]
        msrs: Vec<kvm_msr_entry>,
    }

    #[test]
    fn round_trip_and_bad_input() {
        let t = T {
            regs: kvm_regs {
                rax: 0x1122_3344_5566_7788,
                rip: 42,
                ..Default::default()
            },
            msrs: vec![
                kvm_msr_entry {
                    index: 0x10,
                    data: 7,
                    ..Default::default()
                };
                3
            ],
        };
        let j = serde_json::to_string(&t).unwrap();
        let back: T = serde_json::from_str(&j).unwrap();
        assert_eq!(back.regs.rax, 0x1122_3344_5566_7788);
        assert_eq!(back.regs.rip, 42);
        assert_eq!(back.msrs.len(), 3);
        assert_eq!(back.msrs[2].data, 7);
        // The binary encoding carries the raw bytes: a little more than their size.
        let b = postcard::to_allocvec(&t).unwrap();
        let raw = std::mem::size_of::<kvm_regs>() + 3 * std::mem::size_of::<kvm_msr_entry>();
        assert!(b.len() >= raw && b.len() < raw + 8, "{} bytes", b.len());
        let back: T = postcard::from_bytes(&b).unwrap();
        assert_eq!(back.regs.rax, 0x1122_3344_5566_7788);
        assert_eq!(back.msrs[2].data, 7);
        assert!(postcard::from_bytes::<T>(&b[..b.len() - 1]).is_err());
        // Wrong length (one byte short, one byte over), odd length, not hex.
        let hex = |n: usize| format!("\"{}\"", "00".repeat(n));
        let n = std::mem::size_of::<kvm_regs>();
        for bad in [hex(n - 1), hex(n + 1)] {
            let j = format!("{{\"regs\": {bad}, \"msrs\": \"\"}}");
            assert!(serde_json::from_str::<T>(&j).is_err());
        }
        let j = format!("{{\"regs\": {}, \"msrs\": {}}}", hex(n), hex(7));
        assert!(
            serde_json::from_str::<T>(&j).is_err(),
            "7 bytes of 16-byte entries"
        );
        // Wrong length, odd length, not hex.
        for bad in ["\"00\"", "\"0\"", "\"zz\""] {
            let j = format!("{{\"regs\": {bad}, \"msrs\": \"\"}}");
            assert!(serde_json::from_str::<T>(&j).is_err(), "{bad}");
        }
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    struct F {
        #[serde(with = "fpu_bytes")]
        fpu: kvm_fpu,
    }

    #[test]
    fn kvm_fpu_keeps_its_abi_layout() {
        let mut fpu = kvm_fpu {
            fcw: 0x037f,
            fsw: 0x1234,
            ftwx: 0xab,
            last_opcode: 0x0bcd,
            last_ip: 0x1122_3344_5566_7788,
            last_dp: 0x99aa_bbcc_ddee_ff00,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        fpu.fpr[7][15] = 0x5a;
        fpu.xmm[15][0] = 0xa5;
        let b = postcard::to_allocvec(&F { fpu }).unwrap();
        // postcard writes a byte string as its length (416, a two-byte varint), then the bytes.
        assert_eq!(&b[..2], &[0xa0, 0x03]);
        let raw = &b[2..];
        assert_eq!(raw.len(), 416);
        // The offsets of kvm_fpu's fields in the KVM ABI (bindgen's layout assertions).
        assert_eq!(raw[127], 0x5a);
        assert_eq!(&raw[128..130], &0x037fu16.to_le_bytes());
        assert_eq!(&raw[130..132], &0x1234u16.to_le_bytes());
        assert_eq!(raw[132], 0xab);
        assert_eq!(&raw[134..136], &0x0bcdu16.to_le_bytes());
        assert_eq!(&raw[136..144], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&raw[144..152], &0x99aa_bbcc_ddee_ff00u64.to_le_bytes());
        assert_eq!(raw[152 + 15 * 16], 0xa5);
        assert_eq!(&raw[408..412], &0x1f80u32.to_le_bytes());
        let back: F = postcard::from_bytes(&b).unwrap();
        assert_eq!(back.fpu, fpu);
        let j = serde_json::to_string(&F { fpu }).unwrap();
        assert_eq!(serde_json::from_str::<F>(&j).unwrap().fpu, fpu);
        for n in [415, 417] {
            let j = format!("{{\"fpu\": \"{}\"}}", "00".repeat(n));
            assert!(serde_json::from_str::<F>(&j).is_err(), "{n} bytes");
        }
    }

    #[test]
    fn kvm_regs_bytes_are_its_fields_in_order() {
        let regs = kvm_regs {
            rax: 0x0102_0304_0506_0708,
            rip: 0xffff_ffff_8100_0000,
            rflags: 2,
            ..Default::default()
        };
        let b = bytes(&regs);
        assert_eq!(b.len(), 144);
        assert_eq!(&b[..8], &0x0102_0304_0506_0708u64.to_le_bytes());
        // rip and rflags are the last two of its eighteen u64s.
        assert_eq!(&b[128..136], &0xffff_ffff_8100_0000u64.to_le_bytes());
        assert_eq!(&b[136..144], &2u64.to_le_bytes());
        assert_eq!(from_bytes::<kvm_regs>(b), Some(regs));
        assert_eq!(from_bytes::<kvm_regs>(&b[1..]), None);
    }
}
