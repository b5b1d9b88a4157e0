//! MigrateInstance, vireo's own action (`vireo migrate`): live-migrates a running instance to
//! another migration host.

use vireo_ec2_api::query::Params;
use vireo_ec2_api::xml::Response;
use vireo_ec2_api::Ec2Error;

use super::params::{allow, one_instance_id};
use crate::service::Service;

pub(super) async fn migrate_instance(
    svc: &Service,
    p: &Params,
    r: &mut Response,
) -> Result<(), Ec2Error> {
    allow(p, &["InstanceId", "TargetHost", "DowntimeMs"])?;
    let id = one_instance_id(p)?;
    let target = p.int("TargetHost", 0..=8)?.map(|t| t as u32);
    let downtime = p.int("DowntimeMs", 1..=60_000)?.unwrap_or(50) as u64;
    let m = svc.migrate_instance(&id, target, downtime).await?;
    r.elem("instanceId", &id)
        .elem("sourceHost", m.from)
        .elem("targetHost", m.to)
        .opt_elem("downtimeMs", m.report.downtime_ms)
        .opt_elem("totalMs", m.report.total_ms)
        .opt_elem("rounds", m.report.rounds);
    Ok(())
}
