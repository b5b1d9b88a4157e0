//! KVM's state structures as bytes in serialized state: raw bytes in a binary format (the
//! snapshot state and the migration stream, postcard), one hex string each in a
//! human-readable one (JSON).
//!
//! kvm-bindings serializes its structures field by field, or as byte sequences that JSON spells
//! as arrays of numbers (the 4 KiB XSAVE area alone would become 4096 numbers). As one byte
//! string each, a machine state decodes with little more than a copy, which counts during a
//! migration's downtime and a restore.

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_fpu, kvm_irqchip, kvm_lapic_state,
    kvm_mp_state, kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave,
};
use serde::{Deserialize, Deserializer, Serializer};

/// A plain-old-data KVM ABI structure.
///
/// # Safety
/// Implement only for `repr(C)` structures of integers (and arrays and unions of them) without
/// padding that matters: every byte is initialised when KVM fills one, and every bit pattern is
/// a valid value.
pub unsafe trait Pod: 'static {}

// SAFETY: each is a bindgen-generated repr(C) KVM ABI structure of integers.
unsafe impl Pod for kvm_regs {}
// SAFETY: as above.
unsafe impl Pod for kvm_sregs {}
// SAFETY: as above.
unsafe impl Pod for kvm_fpu {}
// SAFETY: as above.
unsafe impl Pod for kvm_xsave {}
// SAFETY: as above.
unsafe impl Pod for kvm_xcrs {}
// SAFETY: as above.
unsafe impl Pod for kvm_debugregs {}
// SAFETY: as above.
unsafe impl Pod for kvm_lapic_state {}
// SAFETY: as above.
unsafe impl Pod for kvm_mp_state {}
// SAFETY: as above.
unsafe impl Pod for kvm_vcpu_events {}
// SAFETY: as above.
unsafe impl Pod for kvm_msr_entry {}
// SAFETY: as above.
unsafe impl Pod for kvm_cpuid_entry2 {}
// SAFETY: as above.
unsafe impl Pod for kvm_irqchip {}
// SAFETY: as above.
unsafe impl Pod for kvm_pit_state2 {}
// SAFETY: as above.
unsafe impl Pod for kvm_clock_data {}

pub fn bytes<T: Pod>(v: &T) -> &[u8] {
    // SAFETY: T is Pod: all size_of::<T>() bytes are initialised and readable.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

/// The value whose bytes are `b`; None when the length is wrong.
pub fn from_bytes<T: Pod>(b: &[u8]) -> Option<T> {
    if b.len() != std::mem::size_of::<T>() {
        return None;
    }
    let mut v = std::mem::MaybeUninit::<T>::uninit();
    // SAFETY: `b` has exactly size_of::<T>() bytes, and T is Pod, so any bytes are a valid T.
    unsafe {
        std::ptr::copy_nonoverlapping(b.as_ptr(), v.as_mut_ptr().cast::<u8>(), b.len());
        Some(v.assume_init())
    }
}

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

/// `#[serde(with = "pod_vec")]` for a vector of Pod values: one byte string.
pub mod pod_vec {
    use super::*;

    pub fn serialize<T: Pod, S: Serializer>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
        let mut raw = Vec::with_capacity(std::mem::size_of_val(v));
        for x in v {
            raw.extend_from_slice(bytes(x));
        }
        serialize_raw(&raw, s)
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
        // Wrong length, odd length, not hex.
        for bad in ["\"00\"", "\"0\"", "\"zz\""] {
            let j = format!("{{\"regs\": {bad}, \"msrs\": \"\"}}");
            assert!(serde_json::from_str::<T>(&j).is_err(), "{bad}");
        }
    }
}
