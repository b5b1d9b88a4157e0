//! The instance metadata service (IMDS) at 169.254.169.254, answered by vireod itself: one
//! HTTP listener per VPC namespace per host (docs/metadata.md says why there and not in each
//! VMM).
//!
//! - [`Registry`] keeps one listener per (VPC, host). The data plane's worker calls
//!   [`Registry::namespace_ready`] after every apply of a VPC on a host (the namespace, its
//!   TAPs, the address 169.254.169.254 on its loopback and the nftables rule that lets local
//!   interfaces reach it are in place) and [`Registry::namespace_removed`] when the VPC leaves
//!   the host. A namespace made again under the same name (deleted while vireod ran) is a new
//!   namespace: its listener is made again.
//! - A connection's instance is the one whose interface in that VPC has the connection's source
//!   address ([`Lookup`]): the data plane's anti-spoofing lets a TAP send only from its own
//!   interface's address, and only TAPs reach the listener, so the source address is proof.
//! - [`handler`] answers (pure, unit-tested); [`server`] does HTTP within [`server::Limits`];
//!   [`token`] makes and checks IMDSv2 tokens; [`view`] is what an instance's metadata shows.

pub mod handler;
pub mod server;
pub mod token;
pub mod view;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex, OnceLock};

pub use server::{Limits, ADDRESS, PORT};
pub use token::TokenKey;
pub use view::{InstanceView, InterfaceView};

/// Where the metadata service finds the instance behind an address.
pub trait Lookup: Send + Sync + 'static {
    /// The instance one of whose interfaces in `vpc_id` has the private address `ip`, as its
    /// metadata shows it now; `None` when no instance has it. Blocking (reads the database).
    fn instance_at(&self, vpc_id: &str, ip: Ipv4Addr) -> Result<Option<InstanceView>, String>;
}

/// A namespace's identity: its nsfs device and inode. A namespace deleted and made again under
/// the same name has another.
type NetnsId = (u64, u64);

fn netns_id(netns: &str) -> Result<NetnsId, String> {
    let m = std::fs::metadata(std::path::Path::new("/run/netns").join(netns))
        .map_err(|e| format!("network namespace {netns}: {e}"))?;
    Ok((m.dev(), m.ino()))
}

struct Listener {
    netns: NetnsId,
    task: tokio::task::AbortHandle,
}

/// The metadata service's listeners, one per VPC namespace per host.
pub struct Registry {
    rt: tokio::runtime::Handle,
    limits: Limits,
    /// Set once the service exists ([`Registry::serve`]); namespaces made before serve nothing.
    source: OnceLock<(Arc<dyn Lookup>, TokenKey)>,
    listeners: Mutex<HashMap<(String, u32), Listener>>,
}

impl Registry {
    /// A registry whose listeners run on `rt`.
    pub fn new(rt: tokio::runtime::Handle, limits: Limits) -> Arc<Registry> {
        Arc::new(Registry {
            rt,
            limits,
            source: OnceLock::new(),
            listeners: Mutex::new(HashMap::new()),
        })
    }

    /// Answers from `lookup` with tokens made with `key` (once; later calls change nothing).
    pub fn serve(&self, lookup: Arc<dyn Lookup>, key: TokenKey) {
        let _ = self.source.set((lookup, key));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u32), Listener>> {
        self.listeners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// VPC `vpc_id`'s namespace `netns` on host `host` is in place: it gets its listener if it
    /// has none (or its namespace is a new one).
    pub fn namespace_ready(&self, vpc_id: &str, host: u32, netns: &str) -> Result<(), String> {
        let Some((lookup, key)) = self.source.get() else {
            return Ok(());
        };
        let id = netns_id(netns)?;
        let k = (vpc_id.to_string(), host);
        let mut map = self.lock();
        if let Some(l) = map.get(&k) {
            if l.netns == id && !l.task.is_finished() {
                return Ok(());
            }
        }
        if let Some(old) = map.remove(&k) {
            old.task.abort();
        }
        let listener = server::bind_in(netns)?;
        let _rt = self.rt.enter();
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| format!("metadata listener in {netns}: {e}"))?;
        let ctx = Arc::new(server::Context::new(
            vpc_id,
            lookup.clone(),
            key.clone(),
            self.limits.clone(),
        ));
        let task = self.rt.spawn(server::accept_loop(listener, ctx));
        map.insert(
            k,
            Listener {
                netns: id,
                task: task.abort_handle(),
            },
        );
        tracing::debug!("metadata service listening in {netns}");
        Ok(())
    }

    /// VPC `vpc_id` left host `host` (its namespace is gone): its listener closes.
    pub fn namespace_removed(&self, vpc_id: &str, host: u32) {
        if let Some(l) = self.lock().remove(&(vpc_id.to_string(), host)) {
            l.task.abort();
        }
    }

    /// The (VPC, host) pairs with a listener.
    pub fn listening(&self) -> Vec<(String, u32)> {
        let mut v: Vec<_> = self.lock().keys().cloned().collect();
        v.sort();
        v
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        for l in self.lock().values() {
            l.task.abort();
        }
    }
}
