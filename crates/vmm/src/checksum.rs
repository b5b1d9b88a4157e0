//! The checksum of snapshot files and migration frames: XXH64 (seed 0).
//!
//! It guards against damage (a truncated or flipped file, a corrupted stream), not against an
//! adversary, who could compute any checksum. XXH64 was chosen over CRC-64 because it is plain
//! 64-bit integer arithmetic: as fast as a vectorised CRC on hardware, and about 15 times faster
//! where the CPU is emulated (the lab's TCG host: 2.8 GB/s against 0.18 GB/s), which shortens a
//! migration's stop-and-copy and a verified restore there.

use xxhash_rust::xxh64::Xxh64;

/// A streaming checksum.
#[derive(Clone)]
pub struct Digest(Xxh64);

impl Default for Digest {
    fn default() -> Self {
        Self(Xxh64::new(0))
    }
}

impl Digest {
    pub fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    pub fn sum64(&self) -> u64 {
        self.0.digest()
    }
}

/// The checksum of `bytes`.
pub fn of(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh64::xxh64(bytes, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_matches_one_shot_and_detects_a_flipped_bit() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let mut d = Digest::default();
        for part in data.chunks(333) {
            d.write(part);
        }
        assert_eq!(d.sum64(), of(&data));
        // The published XXH64 value of the empty input (seed 0).
        assert_eq!(of(b""), 0xef46_db37_51d8_e999);
        let mut flipped = data.clone();
        flipped[5000] ^= 1;
        assert_ne!(of(&flipped), of(&data));
    }
}
