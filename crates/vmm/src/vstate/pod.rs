//! KVM's state structures as bytes, and as hex strings in serialized state.
//!
//! kvm-bindings serializes its structures as byte sequences, which JSON spells as arrays of
//! numbers: the 4 KiB XSAVE area alone becomes 4096 numbers. As one hex string each, a
//! machine state parses several times faster, which counts during a migration's downtime.

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

/// `#[serde(with = "hex")]` for one Pod value.
pub mod hex {
    use super::*;

    pub fn serialize<T: Pod, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        let mut out = String::with_capacity(std::mem::size_of::<T>() * 2);
        to_hex(bytes(v), &mut out);
        s.serialize_str(&out)
    }

    pub fn deserialize<'de, T: Pod, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
        let s = <&str>::deserialize(d)?;
        from_hex(s)
            .and_then(|b| from_bytes(&b))
            .ok_or_else(|| serde::de::Error::custom("bad hex or length for a KVM structure"))
    }
}

/// `#[serde(with = "hex_vec")]` for a vector of Pod values: one string.
pub mod hex_vec {
    use super::*;

    pub fn serialize<T: Pod, S: Serializer>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
        let mut out = String::with_capacity(std::mem::size_of_val(v) * 2);
        for x in v {
            to_hex(bytes(x), &mut out);
        }
        s.serialize_str(&out)
    }

    pub fn deserialize<'de, T: Pod, D: Deserializer<'de>>(d: D) -> Result<Vec<T>, D::Error> {
        let s = <&str>::deserialize(d)?;
        let b = from_hex(s).ok_or_else(|| serde::de::Error::custom("bad hex"))?;
        let n = std::mem::size_of::<T>();
        if b.len() % n != 0 {
            return Err(serde::de::Error::custom(
                "length not a whole number of entries",
            ));
        }
        Ok(b.chunks(n).filter_map(from_bytes).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct T {
        #[serde(with = "hex")]
        regs: kvm_regs,
        #[serde(with = "hex_vec")]
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
        // Wrong length, odd length, not hex.
        for bad in ["\"00\"", "\"0\"", "\"zz\""] {
            let j = format!("{{\"regs\": {bad}, \"msrs\": \"\"}}");
            assert!(serde_json::from_str::<T>(&j).is_err(), "{bad}");
        }
    }
}
