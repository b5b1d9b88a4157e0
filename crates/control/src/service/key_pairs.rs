//! Key pairs: CreateKeyPair, ImportKeyPair, DescribeKeyPairs and DeleteKeyPair. The keys'
//! cryptography (generation, parsing, EC2's fingerprints) is [`crate::keys`]; only public keys
//! are stored.

use vireo_ec2_api::ids::{self, IdKind};
use zeroize::Zeroizing;

use super::filters::tag_filter;
use super::{blocking, now_iso, Service};
use crate::error::{ApiError, ApiResult};
use crate::filter::{Filter, FilterMatch};
use crate::keys;
use crate::model::{KeyPair, KeyType, Tag};

/// EC2's error for a key pair name or id that does not exist.
pub(super) fn key_pair_not_found(name_or_id: &str) -> ApiError {
    ApiError::new(
        "InvalidKeyPair.NotFound",
        format!("The key pair '{name_or_id}' does not exist"),
    )
}

fn duplicate(name: &str) -> ApiError {
    ApiError::new(
        "InvalidKeyPair.Duplicate",
        format!("The keypair '{name}' already exists."),
    )
}

/// EC2's rule for key pair names: 1 to 255 ASCII characters.
fn validate_name(name: &str) -> ApiResult<()> {
    if name.is_empty() || name.len() > 255 || !name.is_ascii() {
        return Err(ApiError::invalid_value(format!(
            "Key pair name '{name}' is invalid: use 1 to 255 ASCII characters"
        )));
    }
    Ok(())
}

/// Which key pair DeleteKeyPair names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPairRef {
    Name(String),
    Id(String),
}

impl Service {
    /// CreateKeyPair: a new key pair of `kind`; returns it with its private key, which is not
    /// kept anywhere.
    pub async fn create_key_pair(
        &self,
        name: &str,
        kind: KeyType,
        tags: Vec<Tag>,
    ) -> ApiResult<(KeyPair, Zeroizing<String>)> {
        validate_name(name)?;
        // Refused before the (slow, for RSA) key generation; the insert checks again.
        if self.db().key_pair_by_name(name)?.is_some() {
            return Err(duplicate(name));
        }
        let comment = name.to_string();
        let key =
            blocking(move || keys::generate(kind, &comment).map_err(|e| ApiError::internal(e.0)))
                .await?;
        let pair = KeyPair {
            key_pair_id: ids::new_id(IdKind::KeyPair),
            key_name: name.to_string(),
            key_type: kind,
            public_key: key.public_key,
            fingerprint: key.fingerprint,
            create_time: now_iso(),
            tags,
        };
        self.insert_key_pair(&pair)?;
        Ok((pair, key.private_key))
    }

    /// ImportKeyPair: `material` is the public key (OpenSSH or RFC 4716), base64-decoded.
    pub fn import_key_pair(
        &self,
        name: &str,
        material: &[u8],
        tags: Vec<Tag>,
    ) -> ApiResult<KeyPair> {
        validate_name(name)?;
        let key =
            keys::import(material, name).map_err(|e| ApiError::new("InvalidKey.Format", e.0))?;
        let pair = KeyPair {
            key_pair_id: ids::new_id(IdKind::KeyPair),
            key_name: name.to_string(),
            key_type: key.key_type,
            public_key: key.public_key,
            fingerprint: key.fingerprint,
            create_time: now_iso(),
            tags,
        };
        self.insert_key_pair(&pair)?;
        Ok(pair)
    }

    fn insert_key_pair(&self, pair: &KeyPair) -> ApiResult<()> {
        if self.db().insert_key_pair(pair)? {
            Ok(())
        } else {
            Err(duplicate(&pair.key_name))
        }
    }

    /// DescribeKeyPairs: the pairs named by `names` and `ids` (none of either: all) that match
    /// `filters`, oldest first. A name or id that does not exist is `InvalidKeyPair.NotFound`.
    pub fn describe_key_pairs(
        &self,
        names: &[String],
        key_ids: &[String],
        filters: &[Filter],
    ) -> ApiResult<Vec<KeyPair>> {
        for f in filters {
            let known = matches!(
                f.name.as_str(),
                "key-name" | "key-pair-id" | "fingerprint" | "key-type" | "tag-key" | "tag-value"
            ) || f.name.starts_with("tag:");
            if !known {
                return Err(ApiError::invalid_value(format!(
                    "The filter '{}' is invalid",
                    f.name
                )));
            }
        }
        let all = self.db().key_pairs()?;
        for n in names {
            if !all.iter().any(|k| &k.key_name == n) {
                return Err(key_pair_not_found(n));
            }
        }
        for id in key_ids {
            if !all.iter().any(|k| &k.key_pair_id == id) {
                return Err(key_pair_not_found(id));
            }
        }
        Ok(all
            .into_iter()
            .filter(|k| {
                names.is_empty() && key_ids.is_empty()
                    || names.contains(&k.key_name)
                    || key_ids.contains(&k.key_pair_id)
            })
            .filter(|k| filters.iter().all(|f| key_pair_matches(k, f)))
            .collect())
    }

    /// DeleteKeyPair: the id of the pair it deleted; one that does not exist is no error (as
    /// on EC2). Instances launched with the pair keep its public key.
    pub fn delete_key_pair(&self, which: &KeyPairRef) -> ApiResult<Option<String>> {
        let mut db = self.db();
        let pair = match which {
            KeyPairRef::Name(n) => db.key_pair_by_name(n)?,
            KeyPairRef::Id(id) => db.key_pair_by_id(id)?,
        };
        match pair {
            Some(k) => {
                db.delete_key_pair(&k.key_pair_id)?;
                Ok(Some(k.key_pair_id))
            }
            None => Ok(None),
        }
    }
}

fn key_pair_matches(k: &KeyPair, f: &Filter) -> bool {
    match f.name.as_str() {
        "key-name" => f.matches_any([k.key_name.as_str()]),
        "key-pair-id" => f.matches_any([k.key_pair_id.as_str()]),
        "fingerprint" => f.matches_any([k.fingerprint.as_str()]),
        "key-type" => f.matches_any([k.key_type.name()]),
        name => tag_filter(name, f, &k.tags),
    }
}
