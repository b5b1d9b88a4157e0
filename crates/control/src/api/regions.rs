//! DescribeRegions and DescribeAvailabilityZones: vireod is one region with one zone.

use vireo_ec2_api::xml::Response;

use crate::service::Service;

pub(super) fn describe_regions(svc: &Service, r: &mut Response) {
    let region = svc.config().region.clone();
    r.list("regionInfo", [region], |r, name| {
        r.elem("regionName", name)
            .elem("regionEndpoint", "localhost");
    });
}

pub(super) fn describe_availability_zones(svc: &Service, r: &mut Response) {
    let cfg = svc.config();
    r.list(
        "availabilityZoneInfo",
        [cfg.availability_zone()],
        |r, zone| {
            r.elem("zoneName", zone)
                .elem("zoneState", "available")
                .elem("regionName", &cfg.region);
        },
    );
}
