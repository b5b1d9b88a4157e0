//! The real [`NetworkPlane`]: vireo-net's namespaces, TAPs, nftables and dnsmasq
//! (docs/networking.md), driven from the service's desired state.
//!
//! The service calls `apply`/`remove` on async threads after every committed change; the Linux
//! work (dozens of `ip`/`nft` runs, a dnsmasq restart) must not block them. So a single worker
//! thread owns all data plane work and takes jobs from a queue that keeps one job per VPC: a
//! newer state of a VPC replaces an older one not yet applied (each apply is total, so only the
//! latest matters). One worker also means two applies of one VPC never interleave. Where the
//! service needs the result (a VMM is about to start and its TAP must exist), it waits with
//! [`NetworkPlane::flush`] for the VPC's latest job; a security group change waits (bounded,
//! [`NetworkPlane::settle`]) until it is in force before the API answers.
//!
//! The worker remembers the plan it last carried out for each VPC on each host: a job whose
//! plan differs from it in the nftables ruleset alone (a rule, an interface's groups, a
//! group's members: every security group change) loads the ruleset and does nothing else
//! (`vireo_net::apply_since`: one `nft -f`, no `ip` command, no dnsmasq restart, no uplink
//! check), so such a change is in force in milliseconds, not after a dozen processes.
//!
//! A VPC lives on every host one of its interfaces is on: a VPC namespace there, peers joined
//! by VXLAN (underlay addresses from crates/control/src/hosts.rs). A host the VPC has left is
//! removed from; a VPC with no interfaces has no namespace at all.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use vireo_net::{
    Cidr, DnsSettings, HostPlace, Interface, Mac, PortRange, PublicIp, Rule, Scope, SecurityGroup,
    Subnet, VpcState,
};

use super::network::{NetworkPlane, PlaneError, RuleNetwork, RulePeer, VpcNetwork};
use crate::hosts::Host;
use crate::netmodel::Protocol;

fn plane_err(e: impl std::error::Error + Send + Sync + 'static) -> PlaneError {
    PlaneError {
        message: e.to_string(),
        source: Some(Box::new(e)),
    }
}

fn cidr(c: crate::cidr::Ipv4Cidr) -> Cidr {
    Cidr {
        addr: c.network(),
        prefix: c.prefix(),
    }
}

/// One EC2 rule as vireo-net's, or `None` for what the data plane cannot express (an IP
/// protocol other than TCP, UDP and ICMP by number): such a rule allows nothing.
fn rule(r: &RuleNetwork, groups: &BTreeSet<&str>) -> Option<Rule> {
    let ports = || {
        if r.from_port < 0 || r.to_port < 0 {
            PortRange::ALL
        } else {
            PortRange {
                from: u16::try_from(r.from_port).unwrap_or(0),
                to: u16::try_from(r.to_port).unwrap_or(u16::MAX),
            }
        }
    };
    let icmp_part = |v: i32| u8::try_from(v).ok();
    let protocol = match r.protocol {
        Protocol::All => vireo_net::Protocol::All,
        Protocol::Tcp | Protocol::Number(6) => vireo_net::Protocol::Tcp(ports()),
        Protocol::Udp | Protocol::Number(17) => vireo_net::Protocol::Udp(ports()),
        Protocol::Icmp | Protocol::Number(1) => vireo_net::Protocol::Icmp {
            icmp_type: icmp_part(r.from_port),
            code: icmp_part(r.to_port),
        },
        Protocol::Number(_) => return None,
    };
    let peer = match &r.peer {
        RulePeer::Cidr(c) => vireo_net::RulePeer::Cidr(cidr(*c)),
        // A group of another VPC has no members here: the rule allows nothing.
        RulePeer::Group(g) if groups.contains(g.as_str()) => vireo_net::RulePeer::Group(g.clone()),
        RulePeer::Group(_) => return None,
    };
    Some(Rule { protocol, peer })
}

/// Where each host is and how the others reach it.
#[derive(Debug, Clone)]
struct Hosts(Vec<Host>);

impl Hosts {
    fn place(&self, index: u32) -> HostPlace {
        HostPlace {
            index,
            netns: self
                .0
                .iter()
                .find(|h| h.index == index)
                .and_then(|h| h.netns.clone()),
        }
    }

    /// Host `other`'s underlay address as seen from host `from`: a migration host is reached
    /// at its own address, host 0 at the root side of the asking host's link.
    fn underlay(&self, from: u32, other: u32) -> Option<Ipv4Addr> {
        let find = |i: u32| self.0.iter().find(|h| h.index == i);
        if other == 0 {
            find(from).map(|h| h.peer)
        } else {
            find(other).map(|h| h.addr)
        }
    }
}

/// What the worker is asked to do for one VPC.
#[derive(Debug, Clone)]
enum Job {
    Apply(Box<VpcNetwork>),
    Remove,
}

/// A live migration's move of one interface: it has a TAP on both hosts; its traffic goes to
/// `from` until the switch-over, to `to` after it (vireo-net's `Interface::standby`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Move {
    from: u32,
    to: u32,
    switched: bool,
}

impl Move {
    /// (the host that owns the interface now, the host that stands by).
    fn hosts(&self) -> (u32, u32) {
        if self.switched {
            (self.to, self.from)
        } else {
            (self.from, self.to)
        }
    }
}

#[derive(Default)]
struct Queue {
    /// The newest job of each VPC not yet started, with its number.
    pending: HashMap<String, (u64, Job)>,
    /// The VPCs of `pending` in the order they were first queued (a VPC changed again and
    /// again does not hold the others back).
    order: VecDeque<String>,
    /// The number of each VPC's newest job.
    queued: HashMap<String, u64>,
    /// The number and outcome of each VPC's last finished job.
    done: HashMap<String, (u64, Result<(), String>)>,
    /// Interfaces being moved by a live migration, until the move ends.
    moving: HashMap<String, Move>,
    /// The last state applied per VPC (a move re-applies it with the moving interface).
    last: HashMap<String, VpcNetwork>,
    stop: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    changed: Condvar,
    /// Held by the worker while it runs a job and by a migration's switch-over: an apply that
    /// began before the switch-over (with the interface still routed to the source) never
    /// runs beside it, and one that begins after it sees it.
    busy: Mutex<()>,
    /// The metadata service, told when a VPC's namespace on a host is in place or goes.
    imds: OnceLock<Arc<crate::imds::Registry>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `vireod serve --uplink-netns NAME`: an existing network namespace standing for the
/// internet, joined to host 0's edge by a veth pair; it routes the public CIDR to the edge.
#[derive(Debug, Clone)]
pub struct Uplink {
    pub netns: String,
    pub public_cidr: crate::cidr::Ipv4Cidr,
}

/// The edge side and the outside side of the uplink's veth pair (a /30 of its own, apart from
/// the edge's 169.254.0.x links to the VPCs).
const UPLINK_EDGE: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
const UPLINK_OUTSIDE: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 2);
const UPLINK_EDGE_LINK: &str = "internet";

/// The data plane on this machine's Linux networking (vireo-net).
pub struct LinuxPlane {
    scope: Scope,
    hosts: Hosts,
    shared: Arc<Shared>,
}

impl LinuxPlane {
    /// The plane of the vireod whose data directory is `data_dir`, over `hosts` (host 0 and
    /// the migration hosts); its worker thread starts here.
    pub fn new(
        data_dir: &std::path::Path,
        hosts: Vec<Host>,
        uplink: Option<Uplink>,
    ) -> std::io::Result<Arc<LinuxPlane>> {
        let plane = Arc::new(LinuxPlane {
            scope: Scope::for_data_dir(data_dir),
            hosts: Hosts(hosts),
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue::default()),
                changed: Condvar::new(),
                busy: Mutex::new(()),
                imds: OnceLock::new(),
            }),
        });
        let worker = Worker {
            uplink,
            scope: plane.scope.clone(),
            hosts: plane.hosts.clone(),
            shared: plane.shared.clone(),
            applied: HashMap::new(),
        };
        std::thread::Builder::new()
            .name("vireo-net".into())
            .spawn(move || worker.run())?;
        Ok(plane)
    }

    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The metadata service to listen in each VPC namespace this plane makes (set once,
    /// before the first apply).
    pub fn set_metadata_service(&self, imds: Arc<crate::imds::Registry>) {
        let _ = self.shared.imds.set(imds);
    }

    fn enqueue(&self, vpc_id: &str, job: Job) {
        let mut q = self.shared.lock();
        let n = q.queued.get(vpc_id).copied().unwrap_or(0) + 1;
        q.queued.insert(vpc_id.to_string(), n);
        if let Job::Apply(d) = &job {
            q.last.insert(vpc_id.to_string(), (**d).clone());
        } else {
            q.last.remove(vpc_id);
        }
        if q.pending.insert(vpc_id.to_string(), (n, job)).is_none() {
            q.order.push_back(vpc_id.to_string());
        }
        self.shared.changed.notify_all();
    }
}

impl LinuxPlane {
    /// Waits until the newest job of `vpc_id` queued so far is done (for at most `bound`), and
    /// returns its outcome.
    fn wait_done(&self, vpc_id: &str, bound: Option<Duration>) -> Result<(), PlaneError> {
        let deadline = bound.map(|b| Instant::now() + b);
        let mut q = self.shared.lock();
        let Some(want) = q.queued.get(vpc_id).copied() else {
            return Ok(());
        };
        loop {
            if let Some((n, result)) = q.done.get(vpc_id) {
                if *n >= want {
                    return result.clone().map_err(|message| PlaneError {
                        message,
                        source: None,
                    });
                }
            }
            q = match deadline {
                None => self
                    .shared
                    .changed
                    .wait(q)
                    .unwrap_or_else(|p| p.into_inner()),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(PlaneError {
                            message: format!(
                                "{vpc_id}: not applied within {:?} (the data plane is still \
                                 busy; the change goes into force when it gets to it)",
                                bound.unwrap_or_default()
                            ),
                            source: None,
                        });
                    }
                    self.shared
                        .changed
                        .wait_timeout(q, deadline - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }
}

impl Drop for LinuxPlane {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
    }
}

impl NetworkPlane for LinuxPlane {
    fn apply(&self, desired: &VpcNetwork) -> Result<(), PlaneError> {
        self.enqueue(&desired.vpc_id, Job::Apply(Box::new(desired.clone())));
        Ok(())
    }

    fn remove(&self, vpc_id: &str) -> Result<(), PlaneError> {
        self.enqueue(vpc_id, Job::Remove);
        Ok(())
    }

    fn flush(&self, vpc_id: &str) -> Result<(), PlaneError> {
        self.wait_done(vpc_id, None)
    }

    fn settle(&self, vpc_id: &str, bound: Duration) -> Result<(), PlaneError> {
        self.wait_done(vpc_id, Some(bound))
    }

    fn open_tap(
        &self,
        vpc_id: &str,
        host: u32,
        eni_id: &str,
    ) -> Result<Option<OwnedFd>, PlaneError> {
        vireo_net::open_tap(
            &self.scope.vpc_netns(vpc_id, host),
            &vireo_net::tap_name(eni_id),
        )
        .map(Some)
        .map_err(plane_err)
    }

    fn begin_move(&self, vpc_id: &str, eni_id: &str, from: u32, to: u32) {
        let last = {
            let mut q = self.shared.lock();
            q.moving.insert(
                eni_id.to_string(),
                Move {
                    from,
                    to,
                    switched: false,
                },
            );
            q.last.get(vpc_id).cloned()
        };
        if let Some(d) = last {
            self.enqueue(vpc_id, Job::Apply(Box::new(d)));
        }
    }

    /// Routes the moving interface to its destination on every host, destination first (its
    /// instances reach the guest at once), then the source (whose instances' traffic would
    /// otherwise go to the old TAP, which nobody reads any more), then the VPC's other hosts:
    /// one `ip -batch` per host, the rest of the data plane having been made ready by the
    /// apply of `begin_move`; then copies its conntrack entries from the source's namespace to
    /// the destination's (two `conntrack` runs). A host whose switch fails is left to the
    /// apply queued then.
    fn switch_move(&self, vpc_id: &str, eni_id: &str) -> Result<(), PlaneError> {
        let _busy = self.shared.busy.lock().unwrap_or_else(|p| p.into_inner());
        let (last, moving, m) = {
            let mut q = self.shared.lock();
            let Some(m) = q.moving.get_mut(eni_id) else {
                return Ok(());
            };
            m.switched = true;
            let m = *m;
            (q.last.get(vpc_id).cloned(), q.moving.clone(), m)
        };
        let Some(d) = last else { return Ok(()) };
        let t0 = std::time::Instant::now();
        let states = states(&self.hosts, &d, &moving);
        let others = states.keys().filter(|&&h| h != m.to && h != m.from);
        let order: Vec<u32> = [m.to, m.from].into_iter().chain(others.copied()).collect();
        let mut failed = None;
        for h in order {
            let Some(state) = states.get(&h) else {
                continue;
            };
            if let Err(e) = vireo_net::switch_interface(&self.scope, state, eni_id) {
                tracing::warn!("{vpc_id}: switch-over of {eni_id} on host {h}: {e}");
                failed.get_or_insert(e);
            }
        }
        let routed = t0.elapsed();
        // Then its tracked connections, so that the destination lets through what belongs to
        // them (stateful groups); a connection whose packet came first was dropped there and
        // goes on with its next retransmission.
        let carried =
            d.interfaces.iter().find(|i| i.eni_id == eni_id).map(|i| {
                vireo_net::carry_conntrack(&self.scope, vpc_id, i.private_ip, m.from, m.to)
            });
        let carried = match carried {
            Some(Ok(n)) => n.to_string(),
            Some(Err(e)) => {
                tracing::warn!("{vpc_id}: {eni_id}'s tracked connections not carried: {e}");
                "no".into()
            }
            None => "no".into(),
        };
        tracing::info!(
            "{vpc_id}: {eni_id} routed to host {} on {} hosts in {} ms, {carried} tracked \
             connections carried in {} ms",
            m.to,
            states.len(),
            routed.as_millis(),
            (t0.elapsed() - routed).as_millis()
        );
        match failed {
            None => Ok(()),
            Some(e) => {
                drop(_busy);
                self.enqueue(vpc_id, Job::Apply(Box::new(d)));
                Err(plane_err(e))
            }
        }
    }

    fn end_move(&self, eni_id: &str) {
        self.shared.lock().moving.remove(eni_id);
    }

    /// Removes every VPC namespace of this data directory that `keep` does not name, and the
    /// edges of hosts left without VPCs.
    fn remove_others(&self, keep: &[String]) -> Result<(), PlaneError> {
        let stale: BTreeSet<String> = vireo_net::list_vpcs(&self.scope)
            .map_err(plane_err)?
            .into_iter()
            .map(|(vpc, _)| vpc)
            .filter(|vpc| !keep.contains(vpc))
            .collect();
        for vpc in stale {
            self.enqueue(&vpc, Job::Remove);
            self.flush(&vpc)?;
        }
        Ok(())
    }
}

struct Worker {
    uplink: Option<Uplink>,
    scope: Scope,
    hosts: Hosts,
    shared: Arc<Shared>,
    /// The plan last carried out for each VPC on each host, as long as the system is known to
    /// match it (dropped when an apply fails or the VPC leaves the host): the next apply that
    /// differs from it in the ruleset alone loads only that.
    applied: HashMap<(String, u32), vireo_net::Plan>,
}

impl Worker {
    fn run(mut self) {
        loop {
            let (vpc, n, job) = {
                let mut q = self.shared.lock();
                loop {
                    if q.stop {
                        return;
                    }
                    if let Some(vpc) = q.order.pop_front() {
                        if let Some((n, job)) = q.pending.remove(&vpc) {
                            break (vpc, n, job);
                        }
                        continue;
                    }
                    q = self
                        .shared
                        .changed
                        .wait(q)
                        .unwrap_or_else(|p| p.into_inner());
                }
            };
            let result = {
                let shared = self.shared.clone();
                let _busy = shared.busy.lock().unwrap_or_else(|p| p.into_inner());
                // A switch-over may have happened while this job waited: take the moves as
                // they are now.
                let moving = self.shared.lock().moving.clone();
                match &job {
                    Job::Apply(d) => self.apply(d, &moving),
                    Job::Remove => self.remove(&vpc, &BTreeSet::new()),
                }
            };
            if let Err(e) = &result {
                tracing::warn!("{vpc}: network data plane: {e}");
                self.applied.retain(|(v, _), _| *v != vpc);
            }
            let mut q = self.shared.lock();
            q.done.insert(vpc, (n, result));
            self.shared.changed.notify_all();
        }
    }

    fn apply(&mut self, d: &VpcNetwork, moving: &HashMap<String, Move>) -> Result<(), String> {
        let states = states(&self.hosts, d, moving);
        for state in states.values() {
            let t0 = Instant::now();
            let key = (d.vpc_id.clone(), state.host.index);
            let previous = self.applied.remove(&key);
            let done = vireo_net::apply_since(&self.scope, previous.as_ref(), state)
                .map_err(|e| e.to_string())?;
            if done.rules_only {
                // Nothing but the ruleset changed: the namespace, its listener and the uplink
                // are as the last apply left them.
                tracing::info!(
                    "{}: security groups in force on host {} in {} ms (ruleset only)",
                    d.vpc_id,
                    state.host.index,
                    t0.elapsed().as_millis()
                );
                self.applied.insert(key, done.plan);
                continue;
            }
            // The namespace is in place: the metadata service listens in it. Its failure
            // leaves the VPC working without metadata, so it is logged, not returned.
            if let Some(imds) = self.shared.imds.get() {
                let ns = self.scope.vpc_netns(&d.vpc_id, state.host.index);
                if let Err(e) = imds.namespace_ready(&d.vpc_id, state.host.index, &ns) {
                    tracing::warn!("{}: metadata service: {e}", d.vpc_id);
                }
            }
            if state.host.index == 0 && state.internet_gateway {
                if let Some(u) = &self.uplink {
                    self.ensure_uplink(u).map_err(|e| e.to_string())?;
                }
            }
            tracing::debug!(
                "{}: applied on host {} in {} ms",
                d.vpc_id,
                state.host.index,
                t0.elapsed().as_millis()
            );
            self.applied.insert(key, done.plan);
        }
        self.remove(&d.vpc_id, &states.keys().copied().collect())
    }

    /// Joins host 0's edge (which `apply` has made) to the uplink namespace, if not yet:
    /// a veth pair, the edge's default route out, the public CIDR routed in.
    fn ensure_uplink(&self, u: &Uplink) -> Result<(), vireo_net::NetError> {
        let edge = self.scope.edge_netns(0);
        let outside = format!("vireo-{}", self.scope.tag());
        let ip = |ns: &str, args: &[&str]| -> Result<String, vireo_net::NetError> {
            let mut a = vec!["-n", ns];
            a.extend_from_slice(args);
            let out = std::process::Command::new("ip")
                .args(&a)
                .output()
                .map_err(|source| vireo_net::NetError::Spawn {
                    command: format!("ip {}", a.join(" ")),
                    source,
                })?;
            if out.status.success() {
                Ok(String::from_utf8_lossy(&out.stdout).into_owned())
            } else {
                Err(vireo_net::NetError::Command {
                    command: format!("ip {}", a.join(" ")),
                    stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                })
            }
        };
        let edge_addr = format!("{UPLINK_EDGE}/30");
        let out_addr = format!("{UPLINK_OUTSIDE}/30");
        let public_edge = format!("{}/32", u.public_cidr.router());
        let cidr = u.public_cidr.to_string();
        // This runs after every apply of a VPC with a gateway: what is in place costs four
        // reads and no change (each command is a process, ~0.5 s in the loaded lab).
        let json = |ns: &str, args: &[&str]| -> Vec<serde_json::Value> {
            ip(ns, args)
                .ok()
                .and_then(|o| serde_json::from_str(&o).ok())
                .unwrap_or_default()
        };
        let up_with = |ns: &str, dev: &str, want: &[&str]| {
            json(ns, &["-j", "addr", "show", "dev", dev])
                .first()
                .is_some_and(|l| {
                    let up = l["flags"]
                        .as_array()
                        .is_some_and(|f| f.iter().any(|x| x == "UP"));
                    let have: Vec<String> = l["addr_info"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|a| {
                            Some(format!("{}/{}", a["local"].as_str()?, a["prefixlen"]))
                        })
                        .collect();
                    up && want.iter().all(|w| have.iter().any(|h| h == w))
                })
        };
        let routed = |ns: &str, dst: &str, via: Ipv4Addr, dev: &str| {
            json(ns, &["-j", "route", "show", dst])
                .iter()
                .any(|r| r["gateway"] == via.to_string().as_str() && r["dev"] == dev)
        };
        if up_with(&edge, UPLINK_EDGE_LINK, &[&edge_addr, &public_edge])
            && up_with(&u.netns, &outside, &[&out_addr])
            && routed(&edge, "default", UPLINK_OUTSIDE, UPLINK_EDGE_LINK)
            && routed(&u.netns, &cidr, UPLINK_EDGE, &outside)
        {
            return Ok(());
        }
        if ip(&edge, &["link", "show", "dev", UPLINK_EDGE_LINK]).is_err() {
            // A leftover outside end (its edge went with an emptied edge namespace) goes first.
            let _ = ip(&u.netns, &["link", "del", "dev", &outside]);
            ip(
                &edge,
                &[
                    "link",
                    "add",
                    UPLINK_EDGE_LINK,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &outside,
                    "netns",
                    &u.netns,
                ],
            )?;
        }
        for (ns, dev, addr) in [
            (edge.as_str(), UPLINK_EDGE_LINK, edge_addr.as_str()),
            (edge.as_str(), UPLINK_EDGE_LINK, public_edge.as_str()),
            (u.netns.as_str(), outside.as_str(), out_addr.as_str()),
        ] {
            ip(ns, &["addr", "replace", addr, "dev", dev])?;
            ip(ns, &["link", "set", "dev", dev, "up"])?;
        }
        ip(
            &edge,
            &[
                "route",
                "replace",
                "default",
                "via",
                &UPLINK_OUTSIDE.to_string(),
            ],
        )?;
        ip(
            &u.netns,
            &[
                "route",
                "replace",
                &cidr,
                "via",
                &UPLINK_EDGE.to_string(),
                "dev",
                &outside,
            ],
        )?;
        Ok(())
    }

    /// Removes the VPC from every host but `keep`, and the edge of any host left without VPCs.
    fn remove(&mut self, vpc_id: &str, keep: &BTreeSet<u32>) -> Result<(), String> {
        self.applied
            .retain(|(v, h), _| v != vpc_id || keep.contains(h));
        let existing = vireo_net::list_vpcs(&self.scope).map_err(|e| e.to_string())?;
        let mut emptied = BTreeSet::new();
        for (vpc, host) in &existing {
            if vpc == vpc_id && !keep.contains(host) {
                if let Some(imds) = self.shared.imds.get() {
                    imds.namespace_removed(vpc_id, *host);
                }
                vireo_net::remove_vpc(&self.scope, vpc_id, &self.hosts.place(*host))
                    .map_err(|e| e.to_string())?;
                emptied.insert(*host);
            }
        }
        // An edge serves the VPCs of its host; with none left it goes too.
        let left = vireo_net::list_vpcs(&self.scope).map_err(|e| e.to_string())?;
        for host in emptied {
            if !left.iter().any(|(_, h)| *h == host) {
                vireo_net::remove_edge(&self.scope, host).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }
}

mod states;
use states::states;

/// Removes everything of the data plane of the vireod whose data directory is `data_dir`:
/// every VPC namespace (TAPs, rules, dnsmasq) and edge (`vireod remove-hosts`). The uplink's
/// outside end goes with its edge end.
pub fn remove_all(data_dir: &std::path::Path, hosts: &[Host]) -> Result<(), PlaneError> {
    let scope = Scope::for_data_dir(data_dir);
    if !std::path::Path::new("/run/netns").exists() {
        return Ok(());
    }
    let h = Hosts(hosts.to_vec());
    let mut edges = BTreeSet::new();
    for (vpc, host) in vireo_net::list_vpcs(&scope).map_err(plane_err)? {
        vireo_net::remove_vpc(&scope, &vpc, &h.place(host)).map_err(plane_err)?;
        edges.insert(host);
    }
    for host in edges.into_iter().chain(h.0.iter().map(|h| h.index)) {
        vireo_net::remove_edge(&scope, host).map_err(plane_err)?;
    }
    Ok(())
}

/// What `vireod serve` needs on this machine for the data plane, or the one line that says
/// what is missing.
pub fn check_host() -> Result<(), String> {
    // SAFETY: geteuid only reads the process's credentials.
    if unsafe { libc::geteuid() } != 0 {
        return Err(
            "the VPC data plane needs root (network namespaces, TAPs, nftables): run vireod \
             serve as root, or give --no-network"
                .into(),
        );
    }
    let missing: Vec<&str> = ["ip", "nft", "dnsmasq"]
        .into_iter()
        .filter(|tool| {
            !std::env::var_os("PATH")
                .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(tool).is_file()))
                && !["/usr/sbin", "/sbin"]
                    .iter()
                    .any(|d| std::path::Path::new(d).join(tool).is_file())
        })
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the VPC data plane needs {} (scripts/install-deps.sh installs iproute2, nftables, \
             dnsmasq-base), or give --no-network",
            missing.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests;
