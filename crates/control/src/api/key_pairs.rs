//! Key pairs: CreateKeyPair, ImportKeyPair, DescribeKeyPairs and DeleteKeyPair.

use base64::Engine;
use vireo_ec2_api::ids::{self, IdKind};
use vireo_ec2_api::query::Params;
use vireo_ec2_api::xml::Response;
use vireo_ec2_api::Ec2Error;

use super::netparams::tags_xml;
use super::params::{allow, dry_run, tag_specifications};
use crate::model::{KeyPair, KeyType};
use crate::service::{KeyPairRef, Service};

/// The largest PublicKeyMaterial taken (a 16384-bit RSA key in RFC 4716 form is under 3 KiB).
const MAX_MATERIAL: usize = 16 * 1024;

pub(super) async fn create(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(
        p,
        &[
            "KeyName",
            "KeyType",
            "KeyFormat",
            "TagSpecification",
            "DryRun",
        ],
    )?;
    dry_run(p)?;
    let name = p.required("KeyName")?;
    let kind = match p.get("KeyType") {
        None => KeyType::Rsa,
        Some(t) => t
            .parse::<KeyType>()
            .map_err(Ec2Error::invalid_parameter_value)?,
    };
    match p.get("KeyFormat") {
        None | Some("pem") => {}
        Some("ppk") => {
            return Err(Ec2Error::unsupported_operation(
                "KeyFormat ppk (PuTTY) is not supported by vireod: use pem",
            ))
        }
        Some(f) => {
            return Err(Ec2Error::invalid_parameter_value(format!(
                "Value ({f}) for parameter KeyFormat is invalid: pem or ppk"
            )))
        }
    }
    let tags = tag_specifications(p, "key-pair")?;
    let (pair, private_key) = svc.create_key_pair(name, kind, tags).await?;
    r.elem("keyName", &pair.key_name)
        .elem("keyFingerprint", &pair.fingerprint)
        .elem("keyMaterial", private_key.as_str())
        .elem("keyPairId", &pair.key_pair_id);
    tags_xml(r, &pair.tags);
    Ok(())
}

pub(super) fn import(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(
        p,
        &["KeyName", "PublicKeyMaterial", "TagSpecification", "DryRun"],
    )?;
    dry_run(p)?;
    let name = p.required("KeyName")?;
    let given = p.required("PublicKeyMaterial")?;
    if given.len() > MAX_MATERIAL {
        return Err(Ec2Error::new(
            "InvalidKey.Format",
            format!("The public key material is longer than {MAX_MATERIAL} bytes"),
            400,
        ));
    }
    let tags = tag_specifications(p, "key-pair")?;
    let pair = svc.import_key_pair(name, &material(given), tags)?;
    r.elem("keyFingerprint", &pair.fingerprint)
        .elem("keyName", &pair.key_name)
        .elem("keyPairId", &pair.key_pair_id);
    tags_xml(r, &pair.tags);
    Ok(())
}

/// PublicKeyMaterial is a blob: the SDKs and the AWS CLI send it base64-encoded. A client that
/// sends the key's text itself (which is never valid base64: it has spaces) is understood too.
fn material(given: &str) -> Vec<u8> {
    let trimmed = given.trim();
    base64::engine::general_purpose::STANDARD
        .decode(trimmed)
        .unwrap_or_else(|_| trimmed.as_bytes().to_vec())
}

pub(super) fn describe(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(
        p,
        &[
            "KeyName",
            "KeyPairId",
            "Filter",
            "IncludePublicKey",
            "DryRun",
        ],
    )?;
    dry_run(p)?;
    let names: Vec<String> = p.list("KeyName")?.into_iter().map(str::to_string).collect();
    let key_ids: Vec<String> = p
        .list("KeyPairId")?
        .into_iter()
        .map(str::to_string)
        .collect();
    for id in &key_ids {
        ids::validate(IdKind::KeyPair, id)?;
    }
    let with_public = p.bool("IncludePublicKey")?.unwrap_or(false);
    let list = svc.describe_key_pairs(&names, &key_ids, &p.filters()?)?;
    r.list("keySet", &list, |r, k| key_pair_xml(r, k, with_public));
    Ok(())
}

fn key_pair_xml(r: &mut Response, k: &KeyPair, with_public: bool) {
    r.elem("keyPairId", &k.key_pair_id)
        .elem("keyName", &k.key_name)
        .elem("keyFingerprint", &k.fingerprint)
        .elem("keyType", k.key_type.name());
    tags_xml(r, &k.tags);
    if with_public {
        r.elem("publicKey", &k.public_key);
    }
    r.elem("createTime", &k.create_time);
}

pub(super) fn delete(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(p, &["KeyName", "KeyPairId", "DryRun"])?;
    dry_run(p)?;
    let which = match (p.get("KeyName"), p.get("KeyPairId")) {
        (Some(_), Some(_)) => {
            return Err(Ec2Error::invalid_parameter_combination(
                "Give KeyName or KeyPairId, not both",
            ))
        }
        (Some(n), None) => KeyPairRef::Name(n.to_string()),
        (None, Some(id)) => {
            ids::validate(IdKind::KeyPair, id)?;
            KeyPairRef::Id(id.to_string())
        }
        (None, None) => return Err(Ec2Error::missing_parameter("KeyName")),
    };
    let deleted = svc.delete_key_pair(&which)?;
    r.bool_elem("return", true)
        .opt_elem("keyPairId", deleted.as_deref());
    Ok(())
}
