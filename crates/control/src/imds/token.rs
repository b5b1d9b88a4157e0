//! IMDSv2 session tokens: what `PUT /latest/api/token` hands out and every GET may carry.
//!
//! A token is not stored anywhere: it is its own expiry time and an HMAC-SHA256, under a key
//! only vireod knows, over the instance id it was issued to and that expiry. So a token is
//! good for one instance only (another instance presenting it fails the HMAC, whatever its
//! address), it cannot be extended or forged without the key, and checking it costs no
//! table. The key is kept in the state database (`settings`), so tokens survive a vireod
//! restart as they survive nothing on EC2's side either. Text form: URL-safe base64 without
//! padding of `version (1) | expiry in Unix seconds, big-endian (8) | HMAC (32)`: 55
//! characters, all of them safe in an HTTP header.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The token format's version byte.
const VERSION: u8 = 1;
/// Version, expiry, HMAC.
const RAW_LEN: usize = 1 + 8 + 32;
/// The length of a token's text.
pub const TOKEN_LEN: usize = 55;
/// What an HMAC input starts with, so that no other use of the key can produce a token.
const CONTEXT: &[u8] = b"vireo-imds-token\0";

/// The TTLs a token may be asked for (`X-aws-ec2-metadata-token-ttl-seconds`), in seconds.
pub const TTL_SECONDS: std::ops::RangeInclusive<u64> = 1..=21600;

/// The key tokens are made and checked with (32 random bytes).
#[derive(Clone)]
pub struct TokenKey([u8; 32]);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Not a token at all (length, alphabet, version).
    Malformed,
    /// Made for another instance, or not made with this key.
    Forged,
    Expired,
}

impl TokenKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A fresh random key.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// The key as hex (how the state database keeps it).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        let v = hex::decode(s).ok()?;
        Some(Self(v.try_into().ok()?))
    }

    fn mac(&self, instance_id: &str, expiry: u64) -> HmacSha256 {
        let mut m = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        m.update(CONTEXT);
        m.update(instance_id.as_bytes());
        m.update(&[0]);
        m.update(&expiry.to_be_bytes());
        m
    }

    /// A token for `instance_id` that expires `ttl` seconds after `now` (Unix seconds).
    pub fn issue(&self, instance_id: &str, now: u64, ttl: u64) -> String {
        let expiry = now.saturating_add(ttl);
        let mut raw = Vec::with_capacity(RAW_LEN);
        raw.push(VERSION);
        raw.extend_from_slice(&expiry.to_be_bytes());
        raw.extend_from_slice(&self.mac(instance_id, expiry).finalize().into_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    /// Whether `token` was issued by this key to `instance_id` and is still good at `now`;
    /// when it is, the seconds it has left.
    pub fn check(&self, token: &str, instance_id: &str, now: u64) -> Result<u64, Invalid> {
        if token.len() != TOKEN_LEN {
            return Err(Invalid::Malformed);
        }
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| Invalid::Malformed)?;
        if raw.len() != RAW_LEN || raw[0] != VERSION {
            return Err(Invalid::Malformed);
        }
        let expiry = u64::from_be_bytes(raw[1..9].try_into().expect("8 bytes"));
        // Constant time: the HMAC is compared by `verify_slice`.
        self.mac(instance_id, expiry)
            .verify_slice(&raw[9..])
            .map_err(|_| Invalid::Forged)?;
        if expiry <= now {
            return Err(Invalid::Expired);
        }
        Ok(expiry - now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "i-0123456789abcdef0";
    const B: &str = "i-0fedcba9876543210";

    #[test]
    fn a_token_is_good_for_its_instance_until_it_expires() {
        let k = TokenKey::random();
        let t = k.issue(A, 1000, 60);
        assert_eq!(t.len(), TOKEN_LEN);
        assert!(t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(k.check(&t, A, 1000), Ok(60));
        assert_eq!(k.check(&t, A, 1059), Ok(1));
        assert_eq!(k.check(&t, A, 1060), Err(Invalid::Expired));
        assert_eq!(
            k.check(&t, B, 1000),
            Err(Invalid::Forged),
            "another instance"
        );
        let other = TokenKey::random();
        assert_eq!(
            other.check(&t, A, 1000),
            Err(Invalid::Forged),
            "another key"
        );
    }

    #[test]
    fn tampered_and_garbage_tokens_are_refused() {
        let k = TokenKey::random();
        let t = k.issue(A, 1000, 21600);
        // A later expiry written into the token breaks its HMAC.
        let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&t)
            .unwrap();
        raw[8] ^= 1;
        let moved = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw);
        assert_eq!(k.check(&moved, A, 1000), Err(Invalid::Forged));
        raw[8] ^= 1;
        raw[0] = 2;
        let version = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw);
        assert_eq!(k.check(&version, A, 1000), Err(Invalid::Malformed));
        for bad in [
            "",
            "x",
            &"A".repeat(TOKEN_LEN),
            &"=".repeat(TOKEN_LEN),
            &format!("{}!", "A".repeat(TOKEN_LEN - 1)),
            &format!("é{}", "A".repeat(TOKEN_LEN - 2)),
            &t[1..],
            &format!("{t}A"),
        ] {
            assert!(k.check(bad, A, 1000).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_key_round_trips_through_hex() {
        let k = TokenKey::random();
        let back = TokenKey::from_hex(&k.to_hex()).unwrap();
        let t = k.issue(A, 5, 5);
        assert_eq!(back.check(&t, A, 5), Ok(5));
        assert!(TokenKey::from_hex("abcd").is_none());
        assert!(TokenKey::from_hex("zz").is_none());
    }
}
