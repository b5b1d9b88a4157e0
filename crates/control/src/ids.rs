//! EC2-style resource IDs: a prefix and 17 lowercase hex digits (`i-0123456789abcdef0`).

pub fn new_id(prefix: &str) -> String {
    let hi: u64 = rand::random();
    let lo: u8 = rand::random();
    // 17 hex digits: 64 bits plus one more nibble.
    format!("{prefix}-{hi:016x}{:x}", lo & 0xf)
}

/// Whether `id` has the shape of an ID with `prefix` (8 or 17 hex digits, as EC2 accepts).
pub fn is_well_formed(prefix: &str, id: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('-'))
        .is_some_and(|hex| {
            (hex.len() == 17 || hex.len() == 8)
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_well_formed_and_distinct() {
        let a = new_id("i");
        assert!(is_well_formed("i", &a), "{a}");
        assert_eq!(a.len(), 19);
        assert_ne!(a, new_id("i"));
        assert!(!is_well_formed("i", "i-xyz"));
        assert!(!is_well_formed("ami", &a));
        assert!(is_well_formed("ami", "ami-12345678"));
    }
}
