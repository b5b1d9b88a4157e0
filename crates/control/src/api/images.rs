//! Images: RegisterImage, DescribeImages, DeregisterImage and CreateImage.

use std::path::Path;

use vireo_ec2_api::ids::{self, IdKind};
use vireo_ec2_api::query::Params;
use vireo_ec2_api::xml::Response;
use vireo_ec2_api::Ec2Error;

use super::params::{allow, dry_run, one_instance_id, tag_specifications};
use crate::model::Image;
use crate::service::{RegisterRequest, Service};

pub(super) fn register(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(
        p,
        &[
            "Name",
            "Description",
            "Architecture",
            "BootMode",
            "ImageLocation",
            "KernelId",
            "RamdiskId",
            "RootDeviceName",
            "VirtualizationType",
            "TagSpecification",
            "DryRun",
            // vireo's own parameters (the `vireo` CLI sends them; EC2's model has no place for them)
            "RootDisk",
            "KernelCommandLine",
        ],
    )?;
    dry_run(p)?;
    let name = p.required("Name")?.to_string();
    // Only files in the import directories: vireod copies them as root into an image, and
    // the image's guests can read them.
    let importable = |what: &'static str, path: &Path| {
        crate::import::importable(&svc.config().import_dirs, what, path)
            .map_err(|e| Ec2Error::invalid_parameter_value(e.to_string()))
    };
    let mut req = RegisterRequest {
        name,
        description: p.get("Description").unwrap_or("").to_string(),
        architecture: p.get("Architecture").unwrap_or("x86_64").to_string(),
        boot_mode: p.get("BootMode").unwrap_or("legacy-bios").to_string(),
        tags: tag_specifications(p, "image")?,
        ..Default::default()
    };
    if let Some(vt) = p.get("VirtualizationType") {
        if vt != "hvm" {
            return Err(Ec2Error::invalid_parameter_value(format!(
                "VirtualizationType '{vt}' is not supported: use hvm"
            )));
        }
    }
    // An image is described either by a manifest (ImageLocation naming a JSON file on this host,
    // as EC2's ImageLocation once named an image manifest) or by its parts.
    if let Some(loc) = p.get("ImageLocation") {
        for clash in ["KernelId", "RamdiskId", "RootDisk", "KernelCommandLine"] {
            if p.get(clash).is_some() {
                return Err(Ec2Error::invalid_parameter_combination(format!(
                    "ImageLocation (an image manifest) cannot be combined with {clash}"
                )));
            }
        }
        let manifest = importable("image manifest", Path::new(loc))?;
        let m = crate::manifest::Manifest::load(&manifest)
            .map_err(|e| Ec2Error::invalid_parameter_value(e.to_string()))?;
        req.kernel = importable("kernel", &m.kernel)?;
        req.initrd = m.initrd.map(|p| importable("initrd", &p)).transpose()?;
        req.root_disk = m
            .root_disk
            .map(|p| importable("root disk", &p))
            .transpose()?;
        req.cmdline = m.cmdline;
    } else {
        req.kernel = importable("kernel", Path::new(p.required("KernelId")?))?;
        req.initrd = p
            .get("RamdiskId")
            .map(|p| importable("initrd", Path::new(p)))
            .transpose()?;
        req.root_disk = p
            .get("RootDisk")
            .map(|p| importable("root disk", Path::new(p)))
            .transpose()?;
        req.cmdline = p.get("KernelCommandLine").unwrap_or("").to_string();
    }
    if let Some(dev) = p.get("RootDeviceName") {
        if dev != "/dev/vda" {
            return Err(Ec2Error::invalid_parameter_value(format!(
                "RootDeviceName '{dev}' is not supported: the root disk is /dev/vda"
            )));
        }
    }
    let id = svc.register_image(req)?;
    r.elem("imageId", id);
    Ok(())
}

pub(super) fn describe(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(
        p,
        &[
            "ImageId",
            "Owner",
            "ExecutableBy",
            "Filter",
            "IncludeDeprecated",
            "IncludeDisabled",
            "MaxResults",
            "NextToken",
            "DryRun",
        ],
    )?;
    let ids: Vec<String> = p.list("ImageId")?.into_iter().map(str::to_string).collect();
    for id in &ids {
        ids::validate(IdKind::Image, id)?;
    }
    let owners: Vec<String> = p.list("Owner")?.into_iter().map(str::to_string).collect();
    let images = svc.describe_images(&ids, &owners, &p.filters()?)?;
    r.list("imagesSet", &images, image_xml);
    Ok(())
}

fn image_xml(r: &mut Response, i: &Image) {
    r.elem("imageId", &i.image_id)
        .elem("imageLocation", format!("{}/{}", i.owner_id, i.name))
        .elem("imageState", &i.state)
        .elem("imageOwnerId", &i.owner_id)
        .elem("creationDate", &i.creation_date)
        .bool_elem("isPublic", false)
        .elem("architecture", &i.architecture)
        .elem("imageType", "machine")
        .elem("name", &i.name)
        .elem("description", &i.description)
        .elem("rootDeviceType", "ebs")
        .elem("rootDeviceName", "/dev/vda")
        .elem("virtualizationType", "hvm")
        .elem("hypervisor", "kvm")
        .elem("bootMode", &i.boot_mode)
        .opt_elem("sourceInstanceId", i.source_instance_id.as_deref());
    r.list("blockDeviceMapping", i.root_disk.iter(), |r, disk| {
        let size_gib = std::fs::metadata(disk)
            .map(|m| m.len().div_ceil(1 << 30))
            .unwrap_or(1);
        r.elem("deviceName", "/dev/vda").nest("ebs", |r| {
            r.elem("volumeSize", size_gib)
                .bool_elem("deleteOnTermination", true)
                .elem("volumeType", "standard");
        });
    });
    r.tag_set(i.tags.iter().map(|t| (t.key.as_str(), t.value.as_str())));
}

pub(super) fn deregister(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(p, &["ImageId", "DeleteAssociatedSnapshots", "DryRun"])?;
    dry_run(p)?;
    let id = p.required("ImageId")?;
    ids::validate(IdKind::Image, id)?;
    svc.deregister_image(id)?;
    r.bool_elem("return", true);
    Ok(())
}

pub(super) async fn create(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(
        p,
        &[
            "InstanceId",
            "Name",
            "Description",
            "NoReboot",
            "TagSpecification",
            "BlockDeviceMapping",
            "DryRun",
        ],
    )?;
    dry_run(p)?;
    let id = one_instance_id(p)?;
    let name = p.required("Name")?.to_string();
    let tags = tag_specifications(p, "image")?;
    let image = svc
        .create_image(
            &id,
            &name,
            p.get("Description").unwrap_or(""),
            p.bool("NoReboot")?.unwrap_or(false),
            tags,
        )
        .await?;
    r.elem("imageId", image);
    Ok(())
}
