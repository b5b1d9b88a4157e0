//! DescribeInstanceTypes: the catalogue of instance types this host offers.

use vireo_ec2_api::query::Params;
use vireo_ec2_api::xml::Response;
use vireo_ec2_api::Ec2Error;

use super::params::allow;
use crate::service;

pub(super) fn describe(p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(
        p,
        &[
            "InstanceType",
            "Filter",
            "MaxResults",
            "NextToken",
            "DryRun",
        ],
    )?;
    let names: Vec<String> = p
        .list("InstanceType")?
        .into_iter()
        .map(str::to_string)
        .collect();
    let filters = p.filters()?;
    for f in &filters {
        if !matches!(
            f.name.as_str(),
            "instance-type" | "vcpu-info.default-vcpus" | "memory-info.size-in-mib"
        ) {
            return Err(Ec2Error::invalid_parameter_value(format!(
                "The filter '{}' is invalid",
                f.name
            )));
        }
    }
    use crate::filter::FilterMatch;
    let types = service::instance_types(&names)?;
    let types = types.into_iter().filter(|t| {
        filters.iter().all(|f| match f.name.as_str() {
            "instance-type" => f.matches_any([t.name]),
            "vcpu-info.default-vcpus" => f.matches_any([t.vcpus.to_string().as_str()]),
            _ => f.matches_any([t.memory_mib.to_string().as_str()]),
        })
    });
    r.list("instanceTypeSet", types, |r, t| {
        r.elem("instanceType", t.name)
            .bool_elem("currentGeneration", true)
            .bool_elem("freeTierEligible", false)
            .nest("supportedUsageClasses", |r| {
                r.elem("item", "on-demand");
            })
            .nest("supportedRootDeviceTypes", |r| {
                r.elem("item", "ebs");
            })
            .nest("supportedVirtualizationTypes", |r| {
                r.elem("item", "hvm");
            })
            .bool_elem("bareMetal", false)
            .elem("hypervisor", "kvm")
            .nest("processorInfo", |r| {
                r.nest("supportedArchitectures", |r| {
                    r.elem("item", "x86_64");
                });
            })
            .nest("vCpuInfo", |r| {
                r.elem("defaultVCpus", t.vcpus)
                    .elem("defaultCores", t.cores())
                    .elem("defaultThreadsPerCore", t.threads_per_core());
            })
            .nest("memoryInfo", |r| {
                r.elem("sizeInMiB", t.memory_mib);
            })
            .bool_elem("instanceStorageSupported", false)
            .bool_elem("burstablePerformanceSupported", t.burstable)
            .bool_elem("hibernationSupported", false)
            .nest("supportedBootModes", |r| {
                r.elem("item", "legacy-bios");
            });
    });
    Ok(())
}
