//! Migration hosts: network namespaces standing for other hosts on this machine, each joined to
//! the root namespace (host 0, where vireod runs) by a veth pair. A VMM started in host N's
//! namespace can only be reached through that pair, so a live migration between hosts crosses
//! a real network link. `vireod serve --migration-hosts N` creates them (idempotently; they
//! outlive vireod, as the VMMs inside them do) and lists them in DATA/hosts.json so that they
//! can be removed (`vireod remove-hosts`).

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

/// One migration host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Host {
    pub index: u32,
    /// The network namespace (`None`: the root namespace, host 0).
    pub netns: Option<String>,
    /// The root side of its veth pair.
    pub veth: Option<String>,
    /// Where a VMM in this host listens for an incoming migration.
    pub addr: Ipv4Addr,
    /// The root namespace's address on this host's link (for migrations back to host 0).
    pub peer: Ipv4Addr,
}

pub const MAX_HOSTS: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("at most {MAX_HOSTS} migration hosts")]
    TooMany,
    #[error("cannot set up migration host {0}: `{1}` failed: {2}")]
    Command(u32, String, String),
    #[error("cannot record the migration hosts in {0}: {1}")]
    Record(String, std::io::Error),
}

fn run(index: u32, args: &[&str]) -> Result<(), HostError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| HostError::Command(index, format!("ip {}", args.join(" ")), e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(HostError::Command(
            index,
            format!("ip {}", args.join(" ")),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// The hosts of the vireod whose data directory is `data_dir`: host 0 plus `count` namespaces.
/// Names and the 10.214.X.0/24 subnet derive from the data directory, so two vireods on one
/// machine do not collide.
pub fn plan(data_dir: &Path, count: u32) -> Result<Vec<Host>, HostError> {
    if count > MAX_HOSTS {
        return Err(HostError::TooMany);
    }
    let h = Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
    let tag = hex::encode(&h[..2]);
    let subnet = h[2] % 250;
    let mut hosts = vec![Host {
        index: 0,
        netns: None,
        veth: None,
        addr: Ipv4Addr::LOCALHOST,
        peer: Ipv4Addr::LOCALHOST,
    }];
    for i in 1..=count {
        let base = (i * 4) as u8;
        hosts.push(Host {
            index: i,
            netns: Some(format!("vireo-{tag}-h{i}")),
            veth: Some(format!("vr{tag}h{i}")),
            addr: Ipv4Addr::new(10, 214, subnet, base + 2),
            peer: Ipv4Addr::new(10, 214, subnet, base + 1),
        });
    }
    Ok(hosts)
}

/// Creates the namespaces and links of `hosts` that do not exist yet, and records them.
pub fn ensure(data_dir: &Path, hosts: &[Host]) -> Result<(), HostError> {
    for h in hosts {
        let (Some(ns), Some(veth)) = (&h.netns, &h.veth) else {
            continue;
        };
        if Path::new("/run/netns").join(ns).exists() {
            continue;
        }
        let inner = format!("{veth}p");
        let i = h.index;
        run(i, &["netns", "add", ns])?;
        let rest = (|| {
            run(
                i,
                &["link", "add", veth, "type", "veth", "peer", "name", &inner],
            )?;
            run(i, &["link", "set", &inner, "netns", ns])?;
            run(i, &["addr", "add", &format!("{}/30", h.peer), "dev", veth])?;
            run(i, &["link", "set", veth, "up"])?;
            run(
                i,
                &[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{}/30", h.addr),
                    "dev",
                    &inner,
                ],
            )?;
            run(i, &["-n", ns, "link", "set", &inner, "up"])?;
            run(i, &["-n", ns, "link", "set", "lo", "up"])
        })();
        if let Err(e) = rest {
            let _ = run(i, &["link", "del", veth]);
            let _ = run(i, &["netns", "del", ns]);
            return Err(e);
        }
    }
    let path = data_dir.join("hosts.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(hosts).expect("serializable"),
    )
    .map_err(|e| HostError::Record(path.display().to_string(), e))
}

/// Removes the namespaces and links recorded in DATA/hosts.json.
pub fn remove(data_dir: &Path) -> Result<(), HostError> {
    let path = data_dir.join("hosts.json");
    let hosts: Vec<Host> = match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
        Err(_) => return Ok(()),
    };
    for h in hosts {
        if let (Some(ns), Some(veth)) = (&h.netns, &h.veth) {
            let _ = run(h.index, &["link", "del", veth]);
            let _ = run(h.index, &["netns", "del", ns]);
        }
    }
    let _ = std::fs::remove_file(path);
    Ok(())
}

/// Whether process `pid` has a TCP socket listening on `port` in its network namespace.
pub fn listening(pid: i32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")) else {
        return false;
    };
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3
            && f[3] == "0A"
            && f[1]
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                == Some(port)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_distinct_names_and_links() {
        let a = plan(Path::new("/var/lib/vireo-a"), 2).unwrap();
        let b = plan(Path::new("/var/lib/vireo-b"), 2).unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!(a[0].netns, None);
        assert_ne!(a[1].netns, b[1].netns);
        assert_ne!(a[1].addr, a[2].addr);
        assert!(
            a[1].veth.as_ref().unwrap().len() <= 15,
            "interface names fit IFNAMSIZ"
        );
        assert!(plan(Path::new("/x"), MAX_HOSTS + 1).is_err());
    }

    #[test]
    fn finds_a_listening_socket() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(listening(std::process::id() as i32, port));
        drop(l);
        assert!(!listening(std::process::id() as i32, port));
    }
}
