//! Key pairs' cryptography: making a key pair (CreateKeyPair), reading a public key a user
//! imports (ImportKeyPair), and EC2's fingerprints.
//!
//! EC2 fingerprints a key pair by its kind and by who made it, and clients compare against
//! exactly that, so vireod computes the same:
//!
//! | kind | made by CreateKeyPair | imported |
//! |---|---|---|
//! | RSA | SHA-1 of the private key's PKCS#8 DER, colon hex | MD5 of the public key's DER (SubjectPublicKeyInfo), colon hex |
//! | Ed25519 | SHA-256 of the OpenSSH public key blob, base64 with padding | the same |
//!
//! (`openssl pkcs8 -topk8 -nocrypt -outform DER | openssl sha1 -c`, `openssl pkey -pubout
//! -outform DER | openssl md5 -c`, and `ssh-keygen -l`, which prints the Ed25519 digest without
//! the `=` padding EC2 adds.) The private key of a pair vireod makes is returned in EC2's
//! formats: PKCS#1 PEM (`BEGIN RSA PRIVATE KEY`) for RSA, OpenSSH's own for Ed25519; it is
//! never stored. Public keys are kept in OpenSSH's one-line format.

use base64::Engine;
use md5::Md5;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey};
use sha1::{Digest, Sha1};
use sha2::Sha256;
use ssh_key::public::KeyData;
use ssh_key::rand_core::OsRng;
use ssh_key::{Algorithm, HashAlg, PrivateKey, PublicKey};
use zeroize::Zeroizing;

use crate::model::KeyType;

/// The size of the RSA keys CreateKeyPair makes (EC2's).
pub const RSA_BITS: usize = 2048;
/// The RSA sizes ImportKeyPair takes, in bits.
pub const RSA_IMPORT_BITS: std::ops::RangeInclusive<usize> = 1024..=16384;

/// Why a key could not be made or read; the message is for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub String);

fn err(what: impl Into<String>) -> KeyError {
    KeyError(what.into())
}

/// A key pair CreateKeyPair made: the private key (returned once), the public key and its
/// fingerprint.
pub struct NewKey {
    pub private_key: Zeroizing<String>,
    pub public_key: String,
    pub fingerprint: String,
}

/// A public key ImportKeyPair read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedKey {
    pub key_type: KeyType,
    pub public_key: String,
    pub fingerprint: String,
}

/// Makes a key pair of `kind`; `comment` (the key pair's name) is the public key's comment.
pub fn generate(kind: KeyType, comment: &str) -> Result<NewKey, KeyError> {
    match kind {
        KeyType::Rsa => {
            let key = rsa::RsaPrivateKey::new(&mut OsRng, RSA_BITS)
                .map_err(|e| err(format!("RSA key generation failed: {e}")))?;
            let pem = key
                .to_pkcs1_pem(rsa::pkcs8::LineEnding::LF)
                .map_err(|e| err(format!("cannot encode the RSA key: {e}")))?;
            let pkcs8 = key
                .to_pkcs8_der()
                .map_err(|e| err(format!("cannot encode the RSA key: {e}")))?;
            let public = ssh_key::public::RsaPublicKey::try_from(key.to_public_key())
                .map_err(|e| err(format!("cannot encode the RSA public key: {e}")))?;
            Ok(NewKey {
                private_key: pem,
                public_key: openssh_line(&PublicKey::new(KeyData::Rsa(public), comment))?,
                fingerprint: colon_hex(&Sha1::digest(pkcs8.as_bytes())),
            })
        }
        KeyType::Ed25519 => {
            let mut key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519)
                .map_err(|e| err(format!("Ed25519 key generation failed: {e}")))?;
            key.set_comment(comment);
            let pem = key
                .to_openssh(ssh_key::LineEnding::LF)
                .map_err(|e| err(format!("cannot encode the Ed25519 key: {e}")))?;
            Ok(NewKey {
                private_key: pem,
                public_key: openssh_line(key.public_key())?,
                fingerprint: sha256_fingerprint(key.public_key()),
            })
        }
    }
}

/// Reads a public key as ImportKeyPair's PublicKeyMaterial carries it (already base64-decoded):
/// one OpenSSH line (`ssh-rsa AAAA… comment`) or an RFC 4716 block (`---- BEGIN SSH2 PUBLIC KEY
/// ----`). RSA and Ed25519 only. Without a comment, `name` becomes the key's comment.
pub fn import(material: &[u8], name: &str) -> Result<ImportedKey, KeyError> {
    let text = std::str::from_utf8(material)
        .map_err(|_| err("Key is not in valid OpenSSH public key format: it is not text"))?
        .trim();
    let mut key = if text.starts_with("---- BEGIN SSH2 PUBLIC KEY ----") {
        rfc4716(text)?
    } else {
        if text.lines().count() != 1 {
            return Err(err(
                "Key is not in valid OpenSSH public key format: give exactly one key",
            ));
        }
        let algorithm = text.split_whitespace().next().unwrap_or_default();
        if algorithm.starts_with("ecdsa-") || algorithm.starts_with("sk-") || algorithm == "ssh-dss"
        {
            return Err(unsupported(algorithm));
        }
        PublicKey::from_openssh(text).map_err(|e| {
            err(format!(
                "Key is not in valid OpenSSH public key format: {e}"
            ))
        })?
    };
    if key.comment().is_empty() {
        key.set_comment(name);
    }
    let (key_type, fingerprint) = match key.key_data() {
        KeyData::Rsa(k) => (KeyType::Rsa, rsa_import_fingerprint(k)?),
        KeyData::Ed25519(_) => (KeyType::Ed25519, sha256_fingerprint(&key)),
        other => return Err(unsupported(other.algorithm().as_str())),
    };
    Ok(ImportedKey {
        key_type,
        public_key: openssh_line(&key)?,
        fingerprint,
    })
}

fn unsupported(algorithm: &str) -> KeyError {
    err(format!(
        "{algorithm} keys are not supported: import an RSA or ED25519 key"
    ))
}

/// An RFC 4716 public key: header lines (`Tag: value`, continued by a trailing `\`), then the
/// base64 body; the `Comment` header becomes the key's comment.
fn rfc4716(text: &str) -> Result<PublicKey, KeyError> {
    let bad = |why: &str| err(format!("Key is not in valid SSH2 public key format: {why}"));
    let mut lines = text.lines().map(str::trim);
    lines.next(); // the BEGIN line
    let (mut comment, mut body, mut ended) = (String::new(), String::new(), false);
    let mut continued = false;
    for line in lines.by_ref() {
        if line == "---- END SSH2 PUBLIC KEY ----" {
            ended = true;
            break;
        }
        if continued {
            continued = line.ends_with('\\');
            continue;
        }
        if body.is_empty() {
            if let Some((tag, value)) = line.split_once(':') {
                continued = value.ends_with('\\');
                if tag.trim().eq_ignore_ascii_case("comment") && !continued {
                    comment = value.trim().trim_matches('"').to_string();
                }
                continue;
            }
        }
        body.push_str(line);
    }
    if !ended || lines.next().is_some() {
        return Err(bad("one BEGIN ... END block"));
    }
    let blob = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| bad("its body is not base64"))?;
    let mut key = PublicKey::from_bytes(&blob).map_err(|e| bad(&e.to_string()))?;
    key.set_comment(comment);
    Ok(key)
}

/// An imported RSA key's fingerprint: MD5 of its SubjectPublicKeyInfo DER, colon hex.
fn rsa_import_fingerprint(k: &ssh_key::public::RsaPublicKey) -> Result<String, KeyError> {
    let bad = || err("Key is not in valid OpenSSH public key format: a bad RSA key");
    let n = k.n.as_positive_bytes().ok_or_else(bad)?;
    let e = k.e.as_positive_bytes().ok_or_else(bad)?;
    let n = rsa::BigUint::from_bytes_be(n);
    let bits = n.bits();
    if !RSA_IMPORT_BITS.contains(&bits) {
        return Err(err(format!(
            "RSA keys of {} to {} bits are supported; this one has {bits}",
            RSA_IMPORT_BITS.start(),
            RSA_IMPORT_BITS.end()
        )));
    }
    let key = rsa::RsaPublicKey::new_with_max_size(
        n,
        rsa::BigUint::from_bytes_be(e),
        *RSA_IMPORT_BITS.end(),
    )
    .map_err(|e| {
        err(format!(
            "Key is not in valid OpenSSH public key format: {e}"
        ))
    })?;
    let der = key
        .to_public_key_der()
        .map_err(|e| err(format!("cannot encode the RSA public key: {e}")))?;
    Ok(colon_hex(&Md5::digest(der.as_bytes())))
}

/// SHA-256 of the key's OpenSSH blob, base64 with padding (EC2's Ed25519 fingerprint).
fn sha256_fingerprint(key: &PublicKey) -> String {
    let fp = key.fingerprint(HashAlg::Sha256);
    debug_assert_eq!(
        fp.as_bytes(),
        Sha256::digest(key.to_bytes().unwrap_or_default()).as_slice()
    );
    base64::engine::general_purpose::STANDARD.encode(fp.as_bytes())
}

fn openssh_line(key: &PublicKey) -> Result<String, KeyError> {
    key.to_openssh()
        .map_err(|e| err(format!("cannot encode the public key: {e}")))
}

/// `ab:cd:…`, as `openssl … -c` prints a digest.
fn colon_hex(bytes: &[u8]) -> String {
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    hex.join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An RSA key and its fingerprint as `ssh-keygen -t rsa -b 2048` made it and `ssh-keygen
    /// -e -m PKCS8 | openssl pkey -pubin -outform DER | openssl md5 -c` computed it.
    const RSA_PUB: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQDOujkDa8tlr3M/7UUV0+ruOxt2hctxAXEczT/qj9GrCGwjAjipIGfbO2aQRcWYEkkr313CnAHRuTADevnZ6PKFbEN3moV/4l7ADKx8ns6RCScPtKZJR+ZzD/VYozkiY4Nmh+ZzfztusnIlaxXlh6juBKV0Magow4oTsD9jaso4wraEpGM0KFRtQedLtUhS7GiDjHabRJ99PazG75tacrTQWe9HF1X2PdZag7SvKlrAGZn8XH9g3fDaiKW59uyfWAuAGZI85YZh+Qo4gWxxOHbIxO7g2iOoMlaJl6LJ1jZi0lozQdq34Au3pQn874+Mb6Y4dN22gyCxuDy6N7EQafsz test@vireo";

    #[test]
    fn created_keys_have_ec2s_formats_and_fingerprints() {
        let k = generate(KeyType::Ed25519, "k1").unwrap();
        assert!(k
            .private_key
            .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\n"));
        assert!(k.public_key.starts_with("ssh-ed25519 ") && k.public_key.ends_with(" k1"));
        // base64 of 32 bytes with its padding.
        assert_eq!(k.fingerprint.len(), 44);
        assert!(k.fingerprint.ends_with('='));
        // The private key names the same public key.
        let private = PrivateKey::from_openssh(k.private_key.as_bytes()).unwrap();
        assert_eq!(openssh_line(private.public_key()).unwrap(), k.public_key);
        // Importing the public half gives the same fingerprint (EC2 uses SHA-256 both ways).
        let imported = import(k.public_key.as_bytes(), "k2").unwrap();
        assert_eq!(imported.fingerprint, k.fingerprint);
        assert_eq!(imported.key_type, KeyType::Ed25519);

        let k = generate(KeyType::Rsa, "k3").unwrap();
        assert!(k
            .private_key
            .starts_with("-----BEGIN RSA PRIVATE KEY-----\n"));
        assert!(k.public_key.starts_with("ssh-rsa "));
        // SHA-1 in colon hex: 20 bytes.
        assert_eq!(k.fingerprint.len(), 20 * 3 - 1);
        // Imported, the same RSA key has the other (MD5) fingerprint.
        let imported = import(k.public_key.as_bytes(), "k4").unwrap();
        assert_eq!(imported.fingerprint.len(), 16 * 3 - 1);
        assert_ne!(imported.fingerprint, k.fingerprint);
    }

    #[test]
    fn imported_rsa_fingerprint_is_md5_of_the_der_public_key() {
        let k = import(RSA_PUB.as_bytes(), "x").unwrap();
        assert_eq!(k.key_type, KeyType::Rsa);
        assert_eq!(k.public_key, RSA_PUB);
        assert_eq!(
            k.fingerprint,
            "57:fa:b9:d3:f9:db:6d:e9:81:26:2a:9e:d2:24:fb:f0"
        );
    }

    #[test]
    fn rfc4716_blocks_are_read_with_their_comment() {
        let blob = RSA_PUB.split(' ').nth(1).unwrap();
        let mut body = String::new();
        for chunk in blob.as_bytes().chunks(70) {
            body.push_str(std::str::from_utf8(chunk).unwrap());
            body.push('\n');
        }
        let block = format!(
            "---- BEGIN SSH2 PUBLIC KEY ----\nComment: \"2048-bit RSA, converted\"\nx-note: a long\\\n header\n{body}---- END SSH2 PUBLIC KEY ----\n"
        );
        let k = import(block.as_bytes(), "x").unwrap();
        let plain = import(RSA_PUB.as_bytes(), "x").unwrap();
        assert_eq!(k.fingerprint, plain.fingerprint);
        assert!(k.public_key.ends_with(" 2048-bit RSA, converted"));
    }

    #[test]
    fn bad_material_is_refused() {
        for bad in [
            &b""[..],
            b"not a key",
            b"ssh-rsa",
            b"ssh-rsa !!!!",
            b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA== short",
            b"\xff\xfe",
            // Two keys.
            b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDfH0XvYqI5uBq6YdWZ3H4m3NqH3sX3VQn2Mf7mGzZ1Q a\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDfH0XvYqI5uBq6YdWZ3H4m3NqH3sX3VQn2Mf7mGzZ1Q b",
            b"---- BEGIN SSH2 PUBLIC KEY ----\nAAAA\n",
        ] {
            assert!(import(bad, "x").is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        // A well-formed key of a kind EC2 does not take.
        let ecdsa = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBB1VH4V8xhBciBuHoxGsshZmJU0Qjf1rWsSr4vQpYiyC203TDRaHnnrbp1rkninVbjuwMsuMW3Lu9nj3io3UGGk= e";
        let e = import(ecdsa.as_bytes(), "x").unwrap_err();
        assert!(e.0.contains("not supported"), "{e}");
    }

    #[test]
    fn a_key_without_comment_takes_the_pairs_name() {
        let bare = RSA_PUB.rsplit_once(' ').unwrap().0;
        let k = import(bare.as_bytes(), "my-key").unwrap();
        assert_eq!(k.public_key, format!("{bare} my-key"));
    }
}
