//! Instances: RunInstances, DescribeInstances, Start/Stop/Reboot/TerminateInstances,
//! GetConsoleOutput, DescribeInstanceStatus and Modify/DescribeInstanceAttribute (every attribute
//! EC2 lists; the protections and the shutdown behaviour are [`crate::service`]'s attributes).

use base64::Engine;
use vireo_ec2_api::ids::{self, IdKind};
use vireo_ec2_api::query::Params;
use vireo_ec2_api::xml::Response;
use vireo_ec2_api::Ec2Error;

use super::network_interfaces;
use super::params::{
    allow, dry_run, instance_ids, one_instance_id, state, state_changes, tag_specifications,
};
use crate::db::network::NetState;
use crate::error::ApiError;
use crate::model::{Instance, InstanceAttributes, InstanceState, ShutdownBehavior};
use crate::service::{self, AttributeChange, RunRequest, Service};

pub(super) async fn run(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(
        p,
        &[
            "ImageId",
            "InstanceType",
            "MinCount",
            "MaxCount",
            "UserData",
            "TagSpecification",
            "ClientToken",
            "DryRun",
            "InstanceInitiatedShutdownBehavior",
            "SubnetId",
            "SecurityGroupId",
            "SecurityGroup",
            "PrivateIpAddress",
            "NetworkInterface",
            "KeyName",
            "DisableApiTermination",
            "DisableApiStop",
            "MetadataOptions",
        ],
    )?;
    dry_run(p)?;
    let image_id = p.required("ImageId")?.to_string();
    ids::validate(IdKind::Image, &image_id)?;
    let min = p
        .int("MinCount", 1..=1000)?
        .ok_or_else(|| Ec2Error::missing_parameter("MinCount"))?;
    let max = p
        .int("MaxCount", 1..=1000)?
        .ok_or_else(|| Ec2Error::missing_parameter("MaxCount"))?;
    let user_data = match p.get("UserData") {
        Some(b64) => decode_user_data(b64)?,
        None => Vec::new(),
    };
    let attributes = InstanceAttributes {
        disable_api_termination: p.bool("DisableApiTermination")?.unwrap_or(false),
        disable_api_stop: p.bool("DisableApiStop")?.unwrap_or(false),
        shutdown_behavior: match p.get("InstanceInitiatedShutdownBehavior") {
            Some(b) => b.parse().map_err(Ec2Error::invalid_parameter_value)?,
            None => ShutdownBehavior::Stop,
        },
    };
    let key_name = p.get("KeyName").map(str::to_string);
    let client_token = p.get("ClientToken").map(str::to_string);
    if let Some(t) = &client_token {
        if t.len() > 64 || !t.is_ascii() {
            return Err(Ec2Error::invalid_parameter_value(
                "ClientToken must be at most 64 ASCII characters",
            ));
        }
    }
    let req = RunRequest {
        image_id,
        instance_type: p.get("InstanceType").unwrap_or("t3.micro").to_string(),
        min_count: min as u32,
        max_count: max as u32,
        user_data,
        tags: tag_specifications(p, "instance")?,
        client_token,
        interfaces: super::network_interfaces::launch_interfaces(p)?,
        key_name,
        attributes,
        metadata_options: super::metadata_options::launch_options(p)?,
    };
    let instances = svc.run_instances(req).await?;
    let first = instances.first();
    r.elem(
        "reservationId",
        first.map(|i| i.reservation_id.as_str()).unwrap_or(""),
    )
    .elem("ownerId", svc.owner_id())
    .list("groupSet", std::iter::empty::<()>(), |_, _| {});
    let cfg = svc.config();
    let net = svc.instance_networks()?;
    r.list("instancesSet", &instances, |r, i| {
        instance_xml(r, svc, &net, i, &cfg.availability_zone())
    });
    Ok(())
}

pub(super) fn describe(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(
        p,
        &["InstanceId", "Filter", "MaxResults", "NextToken", "DryRun"],
    )?;
    let ids = instance_ids(p, false)?;
    let max = p.int("MaxResults", 5..=1000)?;
    if max.is_some() && !ids.is_empty() {
        return Err(Ec2Error::invalid_parameter_combination(
            "The parameter instancesSet cannot be used with the parameter maxResults",
        ));
    }
    let (page, next) = instance_page(svc, p, &ids, max)?;
    let zone = svc.config().availability_zone();
    let net = svc.instance_networks()?;
    r.list(
        "reservationSet",
        service::by_reservation(page),
        |r, (rid, owner, list)| {
            r.elem("reservationId", rid)
                .elem("ownerId", owner)
                .list("groupSet", std::iter::empty::<()>(), |_, _| {})
                .list("instancesSet", &list, |r, i| {
                    instance_xml(r, svc, &net, i, &zone)
                });
        },
    );
    r.opt_elem("nextToken", next);
    Ok(())
}

/// The page of instances DescribeInstances and DescribeInstanceStatus show: `ids` (none: all)
/// that match the call's filters, at most `max` from its NextToken on.
fn instance_page(
    svc: &Service,
    p: &Params,
    ids: &[String],
    max: Option<i64>,
) -> Result<(Vec<Instance>, Option<String>), Ec2Error> {
    let filters = p.filters()?;
    Ok(svc.describe_instances(ids, &filters, max.map(|m| m as u32), p.get("NextToken"))?)
}

fn instance_xml(r: &mut Response, svc: &Service, net: &NetState, i: &Instance, zone: &str) {
    let ty = crate::types::lookup(&i.instance_type);
    let enis = net.interfaces_of(&i.instance_id);
    let primary = enis
        .iter()
        .find(|e| e.attachment.as_ref().is_some_and(|a| a.device_index == 0));
    let public = primary.and_then(|e| net.public_ip_of(&e.eni_id));
    r.elem("instanceId", &i.instance_id)
        .elem("imageId", &i.image_id);
    state(r, "instanceState", i.state);
    r.elem(
        "privateDnsName",
        primary
            .map(|e| network_interfaces::private_dns(svc, e))
            .unwrap_or_default(),
    )
    .elem(
        "dnsName",
        public
            .map(|a| network_interfaces::public_dns(svc, a.public_ip))
            .unwrap_or_default(),
    );
    if let Some(e) = primary {
        r.elem("vpcId", &e.vpc_id)
            .elem("subnetId", &e.subnet_id)
            .elem("privateIpAddress", e.private_ip)
            .bool_elem("sourceDestCheck", e.source_dest_check);
        network_interfaces::groups_xml(r, net, &e.groups);
    }
    r.opt_elem("ipAddress", public.map(|a| a.public_ip));
    r.list("networkInterfaceSet", &enis, |r, e| {
        network_interfaces::instance_interface_xml(r, svc, net, e)
    });
    r.elem(
        "reason",
        i.state_reason
            .as_ref()
            .map(|s| s.message.as_str())
            .unwrap_or(""),
    )
    .opt_elem("keyName", i.key_name.as_deref())
    .elem("amiLaunchIndex", i.launch_index)
    .elem("instanceType", &i.instance_type)
    .elem("launchTime", &i.launch_time)
    .nest("placement", |r| {
        r.elem("availabilityZone", zone).elem("tenancy", "default");
    })
    .nest("monitoring", |r| {
        r.elem("state", "disabled");
    })
    .elem("architecture", "x86_64")
    .elem("rootDeviceType", "ebs")
    .elem("rootDeviceName", "/dev/vda")
    .elem("virtualizationType", "hvm")
    .elem("hypervisor", "kvm")
    .elem("bootMode", "legacy-bios")
    .opt_elem("clientToken", i.client_token.as_deref());
    super::metadata_options::options_xml(r, "metadataOptions", &i.metadata_options);
    if let Some(s) = &i.state_reason {
        r.nest("stateReason", |r| {
            r.elem("code", &s.code).elem("message", &s.message);
        });
    }
    r.nest("cpuOptions", |r| {
        let (cores, threads) = ty
            .map(|t| (t.cores(), t.threads_per_core()))
            .unwrap_or((i.vcpus, 1));
        r.elem("coreCount", cores).elem("threadsPerCore", threads);
    });
    r.tag_set(i.tags.iter().map(|t| (t.key.as_str(), t.value.as_str())));
}

pub(super) fn describe_status(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(
        p,
        &[
            "InstanceId",
            "IncludeAllInstances",
            "Filter",
            "MaxResults",
            "NextToken",
            "DryRun",
        ],
    )?;
    let ids = instance_ids(p, false)?;
    let all = p.bool("IncludeAllInstances")?.unwrap_or(false);
    let max = p.int("MaxResults", 5..=1000)?;
    let (page, next) = instance_page(svc, p, &ids, max)?;
    let zone = svc.config().availability_zone();
    let shown = page
        .into_iter()
        .filter(|i| all || i.state == InstanceState::Running);
    r.list("instanceStatusSet", shown, |r, i| {
        let status = if i.state == InstanceState::Running {
            "ok"
        } else {
            "not-applicable"
        };
        r.elem("instanceId", &i.instance_id)
            .elem("availabilityZone", &zone);
        state(r, "instanceState", i.state);
        for name in ["systemStatus", "instanceStatus"] {
            r.nest(name, |r| {
                r.elem("status", status).list("details", [()], |r, _| {
                    r.elem("name", "reachability").elem(
                        "status",
                        if status == "ok" {
                            "passed"
                        } else {
                            "not-applicable"
                        },
                    );
                });
            });
        }
    });
    r.opt_elem("nextToken", next);
    Ok(())
}

/// User data as the SDKs send it (base64); 16 KiB is EC2's limit on the decoded bytes.
fn decode_user_data(b64: &str) -> Result<Vec<u8>, Ec2Error> {
    if b64.len() > service::MAX_USER_DATA.div_ceil(3) * 4 + 4 {
        return Err(ApiError::invalid_value(format!(
            "User data is limited to {} bytes",
            service::MAX_USER_DATA
        ))
        .into());
    }
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| Ec2Error::invalid_parameter_value("Invalid BASE64 encoding of user data"))
}

/// One change ModifyInstanceAttribute asks for.
enum Modification {
    InstanceType(String),
    Groups(Vec<String>),
    SourceDestCheck(bool),
    UserData(Vec<u8>),
    Attribute(AttributeChange),
    /// An attribute EC2 can change that vireod cannot (its name).
    Unsupported(&'static str),
}

/// The attributes ModifyInstanceAttribute changes, as `Attribute=…` names them.
const MODIFIABLE: &str = "instanceType, userData, groupSet (GroupId.N), sourceDestCheck, \
     disableApiTermination, disableApiStop and instanceInitiatedShutdownBehavior";

/// The parameters of attributes vireod cannot change, with their attribute names.
const UNSUPPORTED: [(&str, &str); 7] = [
    ("Kernel", "kernel"),
    ("Ramdisk", "ramdisk"),
    ("EbsOptimized", "ebsOptimized"),
    ("EnaSupport", "enaSupport"),
    ("SriovNetSupport", "sriovNetSupport"),
    ("BlockDeviceMapping", "blockDeviceMapping"),
    ("EnclaveOptions", "enclaveOptions"),
];

fn bool_value(name: &str, v: &str) -> Result<bool, Ec2Error> {
    match v {
        _ if v.eq_ignore_ascii_case("true") => Ok(true),
        _ if v.eq_ignore_ascii_case("false") => Ok(false),
        _ => Err(Ec2Error::invalid_parameter_value(format!(
            "Value ({v}) for parameter {name} is invalid: true or false"
        ))),
    }
}

fn unknown_attribute(name: &str) -> Ec2Error {
    Ec2Error::invalid_parameter_value(format!(
        "Value ({name}) for parameter attribute is invalid: vireod modifies {MODIFIABLE}"
    ))
}

/// The changes a ModifyInstanceAttribute request names, in either of EC2's forms: the SDKs'
/// `Name.Value=…` (`GroupId.N` for groups) or the older `Attribute=name&Value=…`.
fn modifications(p: &Params) -> Result<Vec<Modification>, Ec2Error> {
    let mut mods = Vec::new();
    if let Some(t) = p.get("InstanceType.Value") {
        mods.push(Modification::InstanceType(t.to_string()));
    }
    let groups = super::netparams::id_list(p, "GroupId", IdKind::SecurityGroup)?;
    if !groups.is_empty() {
        mods.push(Modification::Groups(groups));
    }
    if let Some(on) = super::netparams::attr_bool(p, "SourceDestCheck")? {
        mods.push(Modification::SourceDestCheck(on));
    }
    if let Some(b64) = p.get("UserData.Value") {
        mods.push(Modification::UserData(decode_user_data(b64)?));
    }
    if let Some(on) = super::netparams::attr_bool(p, "DisableApiTermination")? {
        mods.push(Modification::Attribute(
            AttributeChange::DisableApiTermination(on),
        ));
    }
    if let Some(on) = super::netparams::attr_bool(p, "DisableApiStop")? {
        mods.push(Modification::Attribute(AttributeChange::DisableApiStop(on)));
    }
    if let Some(b) = p.get("InstanceInitiatedShutdownBehavior.Value") {
        let b = b.parse().map_err(Ec2Error::invalid_parameter_value)?;
        mods.push(Modification::Attribute(AttributeChange::ShutdownBehavior(
            b,
        )));
    }
    for (param, attr) in UNSUPPORTED {
        let prefix = format!("{param}.");
        if p.iter().any(|(n, _)| n.starts_with(&prefix)) {
            mods.push(Modification::Unsupported(attr));
        }
    }
    match (p.get("Attribute"), p.get("Value")) {
        (None, None) => {}
        (None, Some(_)) => return Err(Ec2Error::missing_parameter("Attribute")),
        (Some(_), None) => return Err(Ec2Error::missing_parameter("Value")),
        (Some(a), Some(v)) => mods.push(match a {
            "instanceType" => Modification::InstanceType(v.to_string()),
            "sourceDestCheck" => Modification::SourceDestCheck(bool_value(a, v)?),
            "userData" => Modification::UserData(decode_user_data(v)?),
            "disableApiTermination" => {
                Modification::Attribute(AttributeChange::DisableApiTermination(bool_value(a, v)?))
            }
            "disableApiStop" => {
                Modification::Attribute(AttributeChange::DisableApiStop(bool_value(a, v)?))
            }
            "instanceInitiatedShutdownBehavior" => {
                Modification::Attribute(AttributeChange::ShutdownBehavior(
                    v.parse().map_err(Ec2Error::invalid_parameter_value)?,
                ))
            }
            _ => match UNSUPPORTED.iter().find(|(_, name)| *name == a) {
                Some((_, name)) => Modification::Unsupported(name),
                None => return Err(unknown_attribute(a)),
            },
        }),
    }
    Ok(mods)
}

pub(super) async fn modify_attribute(
    svc: &Service,
    p: &Params,
    r: &mut Response,
) -> Result<(), Ec2Error> {
    let mut allowed = vec![
        "InstanceId",
        "InstanceType",
        "UserData",
        "Attribute",
        "Value",
        "GroupId",
        "SourceDestCheck",
        "DisableApiTermination",
        "DisableApiStop",
        "InstanceInitiatedShutdownBehavior",
        "DryRun",
    ];
    allowed.extend(UNSUPPORTED.iter().map(|(param, _)| *param));
    allow(p, &allowed)?;
    dry_run(p)?;
    let id = one_instance_id(p)?;
    let mut mods = modifications(p)?;
    if mods.len() > 1 {
        return Err(Ec2Error::invalid_parameter_combination(
            "Only one attribute can be modified at a time",
        ));
    }
    let Some(m) = mods.pop() else {
        return Err(Ec2Error::missing_parameter("Attribute"));
    };
    match m {
        Modification::InstanceType(t) => svc.modify_instance_type(&id, &t).await?,
        // The primary interface's groups, in force at once on a running instance.
        Modification::Groups(groups) => svc.modify_instance_groups(&id, &groups).await?,
        Modification::SourceDestCheck(on) => svc.set_source_dest_check(&id, on)?,
        Modification::UserData(data) => svc.modify_user_data(&id, &data).await?,
        Modification::Attribute(change) => svc.modify_instance_attribute(&id, change).await?,
        Modification::Unsupported(name) => {
            return Err(ApiError::new(
                "UnsupportedOperation",
                format!("Modifying the attribute '{name}' is not supported by vireod: it modifies {MODIFIABLE}"),
            )
            .into())
        }
    }
    r.bool_elem("return", true);
    Ok(())
}

/// `<name><value>…</value></name>` (EC2's AttributeValue and AttributeBooleanValue).
fn attribute_value(r: &mut Response, name: &str, value: impl std::fmt::Display) {
    r.nest(name, |r| {
        r.elem("value", value);
    });
}

pub(super) fn describe_attribute(
    svc: &Service,
    p: &Params,
    r: &mut Response,
) -> Result<(), Ec2Error> {
    allow(p, &["InstanceId", "Attribute", "DryRun"])?;
    dry_run(p)?;
    let id = one_instance_id(p)?;
    let attr = p.required("Attribute")?;
    let (list, _) = svc.describe_instances(std::slice::from_ref(&id), &[], None, None)?;
    let inst = list
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::instance_not_found(&id))?;
    r.elem("instanceId", &id);
    let a = inst.attributes;
    match attr {
        "instanceType" => attribute_value(r, "instanceType", &inst.instance_type),
        "userData" => {
            let data = svc.user_data(&id)?;
            r.nest("userData", |r| {
                if !data.is_empty() {
                    r.elem(
                        "value",
                        base64::engine::general_purpose::STANDARD.encode(&data),
                    );
                }
            });
        }
        "disableApiTermination" => {
            attribute_value(r, "disableApiTermination", a.disable_api_termination)
        }
        "disableApiStop" => attribute_value(r, "disableApiStop", a.disable_api_stop),
        "instanceInitiatedShutdownBehavior" => attribute_value(
            r,
            "instanceInitiatedShutdownBehavior",
            a.shutdown_behavior.name(),
        ),
        // An image's kernel and initrd are files, not AKI/ARI ids; EC2 answers these empty for
        // HVM instances too.
        "kernel" | "ramdisk" | "sriovNetSupport" => {
            r.nest(attr, |_| {});
        }
        "rootDeviceName" => attribute_value(r, "rootDeviceName", "/dev/vda"),
        // The root disk is the instance's own file, not an EBS volume with an id: no mappings,
        // as DescribeInstances shows none.
        "blockDeviceMapping" | "productCodes" => {
            r.list(attr, std::iter::empty::<()>(), |_, _| {});
        }
        // virtio devices: not EBS-optimized, no ENA; no Nitro Enclaves.
        "ebsOptimized" | "enaSupport" => attribute_value(r, attr, false),
        "enclaveOptions" => {
            r.nest("enclaveOptions", |r| {
                r.bool_elem("enabled", false);
            });
        }
        "groupSet" | "sourceDestCheck" => {
            let net = svc.instance_networks()?;
            let primary = net
                .interfaces_of(&id)
                .into_iter()
                .find(|e| e.attachment.as_ref().is_some_and(|a| a.device_index == 0));
            if attr == "groupSet" {
                let groups = primary.map(|e| e.groups.clone()).unwrap_or_default();
                network_interfaces::groups_xml(r, &net, &groups);
            } else {
                r.nest("sourceDestCheck", |r| {
                    r.bool_elem("value", primary.is_none_or(|e| e.source_dest_check));
                });
            }
        }
        other => {
            return Err(Ec2Error::invalid_parameter_value(format!(
                "Value ({other}) for parameter attribute is invalid. Unknown attribute."
            )))
        }
    }
    Ok(())
}

pub(super) async fn start(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(p, &["InstanceId", "AdditionalInfo", "DryRun"])?;
    dry_run(p)?;
    let changes = svc.start_instances(&instance_ids(p, true)?).await?;
    state_changes(r, "instancesSet", &changes);
    Ok(())
}

pub(super) async fn stop(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(p, &["InstanceId", "Force", "Hibernate", "DryRun"])?;
    dry_run(p)?;
    let ids = instance_ids(p, true)?;
    let hibernate = p.bool("Hibernate")?.unwrap_or(false);
    let force = p.bool("Force")?.unwrap_or(false);
    if hibernate && force {
        return Err(Ec2Error::invalid_parameter_combination(
            "Hibernate and Force cannot be combined",
        ));
    }
    let changes = svc.stop_instances(&ids, force, hibernate).await?;
    state_changes(r, "instancesSet", &changes);
    Ok(())
}

pub(super) async fn reboot(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(p, &["InstanceId", "DryRun"])?;
    dry_run(p)?;
    svc.reboot_instances(&instance_ids(p, true)?).await?;
    r.bool_elem("return", true);
    Ok(())
}

pub(super) async fn terminate(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(p, &["InstanceId", "DryRun"])?;
    dry_run(p)?;
    let changes = svc.terminate_instances(&instance_ids(p, true)?).await?;
    state_changes(r, "instancesSet", &changes);
    Ok(())
}

pub(super) fn console_output(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(p, &["InstanceId", "Latest", "DryRun"])?;
    let id = one_instance_id(p)?;
    let (bytes, stamp) = svc.console_output(&id)?;
    r.elem("instanceId", &id).elem("timestamp", stamp).elem(
        "output",
        base64::engine::general_purpose::STANDARD.encode(bytes),
    );
    Ok(())
}
