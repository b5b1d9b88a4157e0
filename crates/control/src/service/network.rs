//! The seam between the EC2 API's VPC resources and the data plane that makes them real
//! (namespaces, TAPs, nftables, dnsmasq: see docs/networking.md and `crates/net`).
//!
//! The service never does Linux networking itself and the data plane never reads the database:
//! after every committed change the service computes the *desired state* of each VPC the change
//! touched ([`VpcNetwork`]: everything the data plane needs, derived from the database alone) and
//! hands it to a [`NetworkPlane`]. `apply` is idempotent and total: it makes what is missing and
//! removes what is no longer wanted, so calling it again after a restart (with
//! [`Service::desired_networks`]) adopts whatever exists. A VPC that was deleted is passed to
//! `remove`.
//!
//! `vireod serve` uses [`super::dataplane::LinuxPlane`] (vireo-net); with `--no-network`
//! [`NoNetworkPlane`] stands in: the API and its state are complete, nothing is plumbed and
//! instances get no NIC.

use std::net::Ipv4Addr;
use std::sync::Arc;

use super::Service;
use crate::cidr::{host_name, Ipv4Cidr};
use crate::db::network::NetState;
use crate::error::ApiResult;
use crate::model::Instance;
use crate::netmodel::{Protocol, RouteTarget, RuleSource};

/// How long a security group change waits for the data plane before its API call answers
/// with an error (the data plane's worker may first finish another VPC's apply: dozens of
/// commands, seconds on a loaded host; a change of rules alone is one `nft -f`).
pub const IN_FORCE_BOUND: std::time::Duration = std::time::Duration::from_secs(20);

/// What the data plane is asked to make of one VPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VpcNetwork {
    pub vpc_id: String,
    pub cidr: Ipv4Cidr,
    /// dnsmasq answers DNS at the router addresses (enableDnsSupport).
    pub enable_dns_support: bool,
    /// Instances' private names (`ip-10-0-1-5.<domain>`) resolve inside the VPC.
    pub enable_dns_hostnames: bool,
    /// The region (DNS names are `ip-10-0-1-5.<region>.compute.internal`).
    pub region: String,
    /// The DHCP domain: `<region>.compute.internal`.
    pub dns_domain: String,
    pub subnets: Vec<SubnetNetwork>,
    pub interfaces: Vec<InterfaceNetwork>,
    pub groups: Vec<GroupNetwork>,
    /// The internet gateway attached to the VPC, if any: the VPC gets an uplink into the edge.
    pub internet_gateway: Option<String>,
    /// 1:1 NAT at the edge: public address ↔ private address. Only addresses whose interface's
    /// subnet routes to the attached internet gateway are listed (others cannot be reached).
    pub nat: Vec<NatMapping>,
}

/// A subnet: the TAPs of its interfaces carry its router address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetNetwork {
    pub subnet_id: String,
    pub cidr: Ipv4Cidr,
    /// The VPC router's address in the subnet (its first address after the network's).
    pub router: Ipv4Addr,
    /// The routes of the subnet's route table beyond the VPC's `local` one, each to the
    /// internet gateway attached to the VPC (routes to a detached gateway are left out).
    pub internet_routes: Vec<Ipv4Cidr>,
}

/// A network interface: one TAP, one DHCP host entry, anti-spoofing on MAC and IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceNetwork {
    pub eni_id: String,
    pub mac: String,
    pub private_ip: Ipv4Addr,
    pub subnet_id: String,
    /// DHCP host name (`ip-10-0-1-5`).
    pub host_name: String,
    /// The instance it is attached to, and that instance's host (0: vireod's namespace, 1..N:
    /// the migration hosts) and whether it has a VMM now.
    pub instance_id: Option<String>,
    pub host: u32,
    pub instance_running: bool,
    pub device_index: Option<u32>,
    /// Its security groups, in order.
    pub groups: Vec<String>,
    pub public_ip: Option<Ipv4Addr>,
}

/// A security group: its rules and the private addresses of its members (for the referenced-
/// group sets of other groups' rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupNetwork {
    pub group_id: String,
    pub ingress: Vec<RuleNetwork>,
    pub egress: Vec<RuleNetwork>,
    pub members: Vec<Ipv4Addr>,
}

/// One rule: allow `protocol` (ports: TCP/UDP range; ICMP type and code, -1 any) from (ingress)
/// or to (egress) `peer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleNetwork {
    pub rule_id: String,
    pub protocol: Protocol,
    pub from_port: i32,
    pub to_port: i32,
    pub peer: RulePeer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RulePeer {
    Cidr(Ipv4Cidr),
    /// The members of this group (its [`GroupNetwork::members`]; a group of another VPC has none).
    Group(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatMapping {
    pub public_ip: Ipv4Addr,
    pub private_ip: Ipv4Addr,
    pub eni_id: String,
}

/// Why the data plane could not apply a VPC's state.
#[derive(Debug, thiserror::Error)]
#[error("network data plane: {message}")]
pub struct PlaneError {
    pub message: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// The data plane, as the service sees it.
pub trait NetworkPlane: Send + Sync {
    /// Makes the VPC's data plane what `desired` says (idempotent; removes what is not wanted).
    fn apply(&self, desired: &VpcNetwork) -> Result<(), PlaneError>;
    /// Removes everything of a VPC that no longer exists.
    fn remove(&self, vpc_id: &str) -> Result<(), PlaneError>;
    /// Waits until what was last asked of `vpc_id` is done, and says whether it worked (a
    /// plane that works in the background; before a VMM starts on the VPC's TAP).
    fn flush(&self, _vpc_id: &str) -> Result<(), PlaneError> {
        Ok(())
    }
    /// [`NetworkPlane::flush`] for at most `bound`: an API call that changes what is enforced
    /// (a security group rule, an interface's groups) answers once the change is in force, or
    /// with an error that says it is not (yet).
    fn settle(&self, vpc_id: &str, _bound: std::time::Duration) -> Result<(), PlaneError> {
        self.flush(vpc_id)
    }
    /// The attached TAP of interface `eni_id` of `vpc_id` on `host`, for its VMM
    /// (`--net tap-fd=N`); `None` from a plane that plumbs nothing (the VMM gets no NIC).
    fn open_tap(
        &self,
        _vpc_id: &str,
        _host: u32,
        _eni_id: &str,
    ) -> Result<Option<std::os::fd::OwnedFd>, PlaneError> {
        Ok(None)
    }
    /// A live migration moves `eni_id` from host `from` to host `to`: until
    /// [`NetworkPlane::end_move`] it has a TAP on both hosts (made on `to`, kept on `from`);
    /// its traffic goes to `from` until [`NetworkPlane::switch_move`], to `to` after it.
    fn begin_move(&self, _vpc_id: &str, _eni_id: &str, _from: u32, _to: u32) {}
    /// The migration's destination runs the guest: every host sends `eni_id`'s traffic to the
    /// destination from now on (at once, on the caller's thread: one route per host).
    fn switch_move(&self, _vpc_id: &str, _eni_id: &str) -> Result<(), PlaneError> {
        Ok(())
    }
    /// The move of `eni_id` is over (done or given up): it is where the database says.
    fn end_move(&self, _eni_id: &str) {}
    /// Removes whatever the plane finds of VPCs other than `keep` (restart adoption: VPCs
    /// deleted while vireod was down, or by a crash between commit and removal).
    fn remove_others(&self, _keep: &[String]) -> Result<(), PlaneError> {
        Ok(())
    }
}

/// The stand-in for `vireod serve --no-network` (and unit tests): the API's state is
/// complete, nothing is plumbed.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoNetworkPlane;

impl NetworkPlane for NoNetworkPlane {
    fn apply(&self, _desired: &VpcNetwork) -> Result<(), PlaneError> {
        Ok(())
    }
    fn remove(&self, _vpc_id: &str) -> Result<(), PlaneError> {
        Ok(())
    }
}

/// The shared plane handle the service holds.
pub type Plane = Arc<dyn NetworkPlane>;

/// The desired state of `vpc_id` from the database's records, or `None` when it does not exist.
pub fn desired_state(
    net: &NetState,
    instances: &[Instance],
    vpc_id: &str,
    region: &str,
) -> Option<VpcNetwork> {
    let vpc = net.vpc(vpc_id)?;
    let igw = net
        .gateways
        .iter()
        .find(|g| g.vpc_id.as_deref() == Some(vpc_id))
        .map(|g| g.igw_id.clone());
    let subnets: Vec<SubnetNetwork> = net
        .subnets
        .iter()
        .filter(|s| s.vpc_id == vpc_id)
        .map(|s| SubnetNetwork {
            subnet_id: s.subnet_id.clone(),
            cidr: s.cidr,
            router: s.cidr.router(),
            internet_routes: net
                .route_table_of_subnet(s)
                .map(|t| {
                    t.routes
                        .iter()
                        .filter(|r| match &r.target {
                            RouteTarget::Gateway(g) => igw.as_deref() == Some(g.as_str()),
                            RouteTarget::Local => false,
                        })
                        .map(|r| r.destination)
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect();
    let interfaces: Vec<InterfaceNetwork> = net
        .interfaces
        .iter()
        .filter(|e| e.vpc_id == vpc_id)
        .map(|e| {
            let inst = e
                .attachment
                .as_ref()
                .and_then(|a| instances.iter().find(|i| i.instance_id == a.instance_id));
            InterfaceNetwork {
                eni_id: e.eni_id.clone(),
                mac: e.mac.clone(),
                private_ip: e.private_ip,
                subnet_id: e.subnet_id.clone(),
                host_name: host_name(e.private_ip),
                instance_id: e.attachment.as_ref().map(|a| a.instance_id.clone()),
                host: inst.map(|i| i.host).unwrap_or(0),
                instance_running: inst.is_some_and(|i| i.state.has_vmm()),
                device_index: e.attachment.as_ref().map(|a| a.device_index),
                groups: e.groups.clone(),
                public_ip: net.public_ip_of(&e.eni_id).map(|a| a.public_ip),
            }
        })
        .collect();
    let groups = net
        .groups
        .iter()
        .filter(|g| g.vpc_id == vpc_id)
        .map(|g| {
            let rules = |egress: bool| {
                net.rules
                    .iter()
                    .filter(|r| r.group_id == g.group_id && r.egress == egress)
                    .map(|r| RuleNetwork {
                        rule_id: r.rule_id.clone(),
                        protocol: r.protocol,
                        from_port: r.from_port,
                        to_port: r.to_port,
                        peer: match &r.source {
                            RuleSource::Cidr(c) => RulePeer::Cidr(*c),
                            RuleSource::Group(id) => RulePeer::Group(id.clone()),
                        },
                    })
                    .collect()
            };
            GroupNetwork {
                group_id: g.group_id.clone(),
                ingress: rules(false),
                egress: rules(true),
                members: interfaces
                    .iter()
                    .filter(|e| e.groups.contains(&g.group_id))
                    .map(|e| e.private_ip)
                    .collect(),
            }
        })
        .collect();
    let nat = interfaces
        .iter()
        .filter_map(|e| {
            let public_ip = e.public_ip?;
            let subnet = subnets.iter().find(|s| s.subnet_id == e.subnet_id)?;
            (!subnet.internet_routes.is_empty()).then(|| NatMapping {
                public_ip,
                private_ip: e.private_ip,
                eni_id: e.eni_id.clone(),
            })
        })
        .collect();
    Some(VpcNetwork {
        vpc_id: vpc.vpc_id.clone(),
        cidr: vpc.cidr,
        enable_dns_support: vpc.enable_dns_support,
        enable_dns_hostnames: vpc.enable_dns_hostnames,
        region: region.to_string(),
        dns_domain: format!("{region}.compute.internal"),
        subnets,
        interfaces,
        groups,
        internet_gateway: igw,
        nat,
    })
}

impl Service {
    /// Every network record (one read).
    pub(super) fn net(&self) -> ApiResult<NetState> {
        Ok(self.db().net_state()?)
    }

    /// The DHCP and DNS domain of instances' private names.
    pub fn dns_domain(&self) -> String {
        format!("{}.compute.internal", self.inner.cfg.region)
    }

    /// The desired state of every VPC (for the data plane's adoption at start).
    pub fn desired_networks(&self) -> ApiResult<Vec<VpcNetwork>> {
        let net = self.net()?;
        let instances = self.db().instances()?;
        let region = self.inner.cfg.region.clone();
        Ok(net
            .vpcs
            .iter()
            .filter_map(|v| desired_state(&net, &instances, &v.vpc_id, &region))
            .collect())
    }

    /// Tells the data plane about committed changes to `vpc_ids` (deleted ones are removed).
    /// The change is already durable: a plane that fails is logged, and the next change or
    /// restart applies the whole state again.
    pub(super) fn network_changed<S: AsRef<str>>(&self, vpc_ids: &[S]) {
        let instances = self.db().instances().map_err(crate::error::ApiError::from);
        let (net, instances) = match (self.net(), instances) {
            (Ok(n), Ok(i)) => (n, i),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!("network state not passed to the data plane: {}", e.message);
                return;
            }
        };
        let region = self.inner.cfg.region.clone();
        let mut done: Vec<&str> = Vec::new();
        for id in vpc_ids {
            let id = id.as_ref();
            if done.contains(&id) {
                continue;
            }
            done.push(id);
            let result = match desired_state(&net, &instances, id, &region) {
                Some(d) => self.inner.plane.apply(&d),
                None => self.inner.plane.remove(id),
            };
            if let Err(e) = result {
                tracing::warn!("{id}: {e}");
            }
        }
    }

    /// [`Service::network_changed`], then waits until the data plane has put the change in
    /// force (at most [`IN_FORCE_BOUND`]): for the calls that change what security groups
    /// enforce, whose answer means "in force" (a revoke's next connection is refused). The
    /// change is committed either way; an error says that it is not in force, and why.
    pub(super) async fn network_in_force<S: AsRef<str>>(&self, vpc_ids: &[S]) -> ApiResult<()> {
        self.network_changed(vpc_ids);
        let plane = self.inner.plane.clone();
        let ids: Vec<String> = vpc_ids.iter().map(|v| v.as_ref().to_string()).collect();
        super::blocking(move || {
            for id in &ids {
                plane.settle(id, IN_FORCE_BOUND).map_err(|e| {
                    crate::error::ApiError::internal(format!(
                        "the change is saved but not in force in {id}: {e}"
                    ))
                })?;
            }
            Ok(())
        })
        .await
    }

    /// At start: makes every VPC's data plane what the database says and removes what it no
    /// longer has; waits for all of it. A VPC that cannot be applied is logged (its instances'
    /// launches will say why), not fatal.
    pub async fn adopt_network(&self) -> ApiResult<()> {
        let desired = self.desired_networks()?;
        for d in &desired {
            if let Err(e) = self.inner.plane.apply(d) {
                tracing::warn!("{}: {e}", d.vpc_id);
            }
        }
        let plane = self.inner.plane.clone();
        let keep: Vec<String> = desired.iter().map(|d| d.vpc_id.clone()).collect();
        super::blocking(move || {
            for id in &keep {
                if let Err(e) = plane.flush(id) {
                    tracing::warn!("{id}: {e}");
                }
            }
            plane
                .remove_others(&keep)
                .map_err(|e| crate::error::ApiError::internal(e.to_string()))
        })
        .await
    }

    /// Makes the instance's VPCs what the database says (their TAPs on `host` included, and
    /// for a live migration `moving` to `host` while the instance still runs elsewhere), waits
    /// for it, and opens the instance's TAPs for its VMM, in device order. Empty with a plane
    /// that plumbs nothing.
    pub(super) async fn attach_network(
        &self,
        id: &str,
        host: u32,
    ) -> ApiResult<Vec<crate::process::NetAttachment>> {
        let net = self.net()?;
        let enis: Vec<(String, String, String)> = net
            .interfaces_of(id)
            .iter()
            .map(|e| (e.vpc_id.clone(), e.eni_id.clone(), e.mac.clone()))
            .collect();
        if enis.is_empty() {
            return Ok(Vec::new());
        }
        let vpcs: Vec<String> = enis.iter().map(|(v, _, _)| v.clone()).collect();
        self.network_changed(&vpcs);
        let plane = self.inner.plane.clone();
        super::blocking(move || {
            let mut out = Vec::new();
            for (vpc, eni, mac) in &enis {
                let fail = |e: PlaneError| {
                    crate::error::ApiError::internal(format!("network interface {eni}: {e}"))
                };
                plane.flush(vpc).map_err(fail)?;
                match plane.open_tap(vpc, host, eni).map_err(fail)? {
                    Some(fd) => out.push(crate::process::NetAttachment {
                        fd: Arc::new(fd),
                        tap: vireo_net::tap_name(eni),
                        mac: mac.clone(),
                    }),
                    None => return Ok(Vec::new()),
                }
            }
            Ok(out)
        })
        .await
    }

    /// The VPCs an instance's interfaces are in.
    pub(super) fn vpcs_of_instance(&self, instance_id: &str) -> ApiResult<Vec<String>> {
        Ok(self
            .net()?
            .interfaces_of(instance_id)
            .iter()
            .map(|e| e.vpc_id.clone())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::network::{self as netdb, allow_all_egress};
    use crate::db::Db;
    use crate::netmodel::{EniAttachment, NetworkInterface};

    /// The desired state carries what the data plane needs: the default VPC's subnet and router,
    /// an interface with its MAC, address, host name and groups, group members, and NAT only
    /// once the subnet routes to an attached gateway.
    #[test]
    fn desired_state_of_the_default_vpc() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("state.db")).unwrap();
        let vpc = db.ensure_default_vpc("r-1a").unwrap().unwrap();
        assert_eq!(db.ensure_default_vpc("r-1a").unwrap(), None, "made once");
        let net = db.net_state().unwrap();
        let subnet = net.subnets[0].clone();
        let sg = net.default_group(&vpc).unwrap().group_id.clone();
        let eni = NetworkInterface {
            seq: 0,
            eni_id: "eni-0123456789abcdef0".into(),
            subnet_id: subnet.subnet_id.clone(),
            vpc_id: vpc.clone(),
            availability_zone: "r-1a".into(),
            mac: "02:00:00:00:00:01".into(),
            private_ip: subnet
                .cidr
                .lowest_free(&net.used_ips(&subnet.subnet_id))
                .unwrap(),
            description: String::new(),
            source_dest_check: true,
            attachment: Some(EniAttachment {
                attachment_id: "eni-attach-0123456789abcdef0".into(),
                instance_id: "i-0123456789abcdef0".into(),
                device_index: 0,
                delete_on_termination: true,
                attach_time: "2024-01-01T00:00:00.000Z".into(),
            }),
            groups: vec![sg.clone()],
            tags: Vec::new(),
        };
        let tx = db.transaction().unwrap();
        netdb::insert_interface(&tx, &eni).unwrap();
        netdb::insert_address(
            &tx,
            &crate::netmodel::PublicAddress {
                seq: 0,
                public_ip: Ipv4Addr::new(198, 51, 100, 2),
                allocation_id: None,
                association_id: None,
                eni_id: Some(eni.eni_id.clone()),
                tags: Vec::new(),
            },
        )
        .unwrap();
        tx.commit().unwrap();
        let d = desired_state(&db.net_state().unwrap(), &[], &vpc, "r-1").unwrap();
        assert_eq!(d.cidr.to_string(), "172.31.0.0/16");
        assert_eq!(d.dns_domain, "r-1.compute.internal");
        assert_eq!(d.subnets[0].router, Ipv4Addr::new(172, 31, 0, 1));
        let i = &d.interfaces[0];
        assert_eq!(i.private_ip, Ipv4Addr::new(172, 31, 0, 4));
        assert_eq!(i.host_name, "ip-172-31-0-4");
        assert_eq!(i.public_ip, Some(Ipv4Addr::new(198, 51, 100, 2)));
        assert!(!i.instance_running, "no such instance runs");
        let g = d.groups.iter().find(|g| g.group_id == sg).unwrap();
        assert_eq!(g.members, vec![i.private_ip]);
        assert_eq!(g.ingress[0].peer, RulePeer::Group(sg.clone()));
        assert_eq!(g.egress.len(), 1);
        assert!(d.nat.is_empty(), "no gateway, no NAT");
        // A gateway attached and a default route: the public address is NATed.
        let tx = db.transaction().unwrap();
        netdb::insert_gateway(&tx, "igw-0123456789abcdef0", &[]).unwrap();
        netdb::set_gateway_vpc(&tx, "igw-0123456789abcdef0", Some(&vpc)).unwrap();
        let rtb = db_main_table(&tx, &vpc);
        netdb::insert_route(
            &tx,
            &rtb,
            "0.0.0.0/0".parse().unwrap(),
            &RouteTarget::Gateway("igw-0123456789abcdef0".into()),
        )
        .unwrap();
        tx.commit().unwrap();
        let d = desired_state(&db.net_state().unwrap(), &[], &vpc, "r-1").unwrap();
        assert_eq!(d.internet_gateway.as_deref(), Some("igw-0123456789abcdef0"));
        assert_eq!(d.subnets[0].internet_routes.len(), 1);
        assert_eq!(d.nat.len(), 1);
        assert_eq!(d.nat[0].private_ip, Ipv4Addr::new(172, 31, 0, 4));
        // Rules are kept apart from the allow-all egress a new group gets.
        assert!(allow_all_egress(&sg).egress);
    }

    fn db_main_table(conn: &rusqlite::Connection, vpc: &str) -> String {
        conn.query_row(
            "SELECT rtb_id FROM rtb_associations WHERE vpc_id = ?1 AND subnet_id IS NULL",
            [vpc],
            |r| r.get(0),
        )
        .unwrap()
    }
}
