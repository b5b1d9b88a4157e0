//! Instance metadata options: RunInstances `MetadataOptions.*`, ModifyInstanceMetadataOptions
//! and the `metadataOptions` DescribeInstances shows (what the metadata service,
//! [`crate::imds`], lets an instance do).

use vireo_ec2_api::query::Params;
use vireo_ec2_api::xml::Response;
use vireo_ec2_api::Ec2Error;

use super::params::{allow, dry_run, one_instance_id};
use crate::error::ApiError;
use crate::model::MetadataOptions;
use crate::service::{MetadataChange, Service};

/// The options, as InstanceMetadataOptionsRequest names them.
const OPTIONS: [&str; 5] = [
    "HttpTokens",
    "HttpPutResponseHopLimit",
    "HttpEndpoint",
    "HttpProtocolIpv6",
    "InstanceMetadataTags",
];

/// `value` of option `name`, which must be one of `yes` (→ true) and `no` (→ false).
fn two_way(name: &str, value: &str, yes: &str, no: &str) -> Result<bool, Ec2Error> {
    if value == yes {
        Ok(true)
    } else if value == no {
        Ok(false)
    } else {
        Err(Ec2Error::invalid_parameter_value(format!(
            "Invalid value '{value}' for {name}: it must be '{no}' or '{yes}'"
        )))
    }
}

/// The change the options under `prefix` (`MetadataOptions.` or nothing) ask for.
fn change(p: &Params, prefix: &str) -> Result<MetadataChange, Ec2Error> {
    let get = |name: &str| p.get(&format!("{prefix}{name}"));
    let full = |name: &str| format!("{prefix}{name}");
    let mut c = MetadataChange::default();
    if let Some(v) = get("HttpTokens") {
        c.tokens_required = Some(two_way(&full("HttpTokens"), v, "required", "optional")?);
    }
    if let Some(v) = get("HttpPutResponseHopLimit") {
        let range = MetadataOptions::HOP_LIMITS;
        c.hop_limit = Some(
            v.parse::<u8>()
                .ok()
                .filter(|n| range.contains(n))
                .ok_or_else(|| {
                    Ec2Error::invalid_parameter_value(format!(
                        "Invalid value '{v}' for {}: it must be an integer from {} to {}",
                        full("HttpPutResponseHopLimit"),
                        range.start(),
                        range.end()
                    ))
                })?,
        );
    }
    if let Some(v) = get("HttpEndpoint") {
        c.endpoint_enabled = Some(two_way(&full("HttpEndpoint"), v, "enabled", "disabled")?);
    }
    if let Some(v) = get("InstanceMetadataTags") {
        c.tags_enabled = Some(two_way(
            &full("InstanceMetadataTags"),
            v,
            "enabled",
            "disabled",
        )?);
    }
    if let Some(v) = get("HttpProtocolIpv6") {
        if two_way(&full("HttpProtocolIpv6"), v, "enabled", "disabled")? {
            return Err(ApiError::new(
                "UnsupportedOperation",
                "vireod's VPCs are IPv4 only: the metadata service has no IPv6 endpoint \
                 (HttpProtocolIpv6 can only be 'disabled')",
            )
            .into());
        }
    }
    Ok(c)
}

/// RunInstances' `MetadataOptions.*`: the new instances' options (EC2's defaults where not
/// given). A name under `MetadataOptions.` that is not an option: `UnknownParameter`.
pub(super) fn launch_options(p: &Params) -> Result<MetadataOptions, Ec2Error> {
    for (name, _) in p.iter() {
        if let Some(sub) = name.strip_prefix("MetadataOptions.") {
            if !OPTIONS.contains(&sub) {
                return Err(Ec2Error::new(
                    "UnknownParameter",
                    format!("The parameter {name} is not recognized"),
                    400,
                ));
            }
        }
    }
    let c = change(p, "MetadataOptions.")?;
    let d = MetadataOptions::default();
    Ok(MetadataOptions {
        tokens_required: c.tokens_required.unwrap_or(d.tokens_required),
        hop_limit: c.hop_limit.unwrap_or(d.hop_limit),
        endpoint_enabled: c.endpoint_enabled.unwrap_or(d.endpoint_enabled),
        tags_enabled: c.tags_enabled.unwrap_or(d.tags_enabled),
    })
}

/// `<name>` with the options' fields (DescribeInstances' `metadataOptions`,
/// ModifyInstanceMetadataOptions' `instanceMetadataOptions`). `state` is always `applied`:
/// the metadata service reads the options for every request, so a change is in force once it
/// is committed, before the API answers.
pub(super) fn options_xml(r: &mut Response, name: &str, m: &MetadataOptions) {
    r.nest(name, |r| {
        r.elem("state", "applied")
            .elem("httpTokens", m.http_tokens())
            .elem("httpPutResponseHopLimit", m.hop_limit)
            .elem("httpEndpoint", m.http_endpoint())
            .elem("httpProtocolIpv6", "disabled")
            .elem("instanceMetadataTags", m.instance_metadata_tags());
    });
}

/// ModifyInstanceMetadataOptions: at least one option; the others keep their values.
pub(super) async fn modify(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    let mut allowed = vec!["InstanceId", "DryRun"];
    allowed.extend(OPTIONS);
    allow(p, &allowed)?;
    let id = one_instance_id(p)?;
    let c = change(p, "")?;
    if !OPTIONS.iter().any(|o| p.get(o).is_some()) {
        return Err(Ec2Error::missing_parameter(
            "HttpTokens, HttpPutResponseHopLimit, HttpEndpoint, HttpProtocolIpv6 or InstanceMetadataTags",
        ));
    }
    dry_run(p)?;
    let m = svc.modify_instance_metadata_options(&id, c).await?;
    r.elem("instanceId", &id);
    options_xml(r, "instanceMetadataOptions", &m);
    Ok(())
}
