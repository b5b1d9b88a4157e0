//! Host capacity: how many vCPUs and MiB of guest memory this host lends out, and how much of
//! it the instances that have a VMM hold.

use super::Service;
use crate::error::ApiResult;

/// How many vCPUs and MiB of guest memory this host lends out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capacity {
    pub vcpus: u64,
    pub memory_mib: u64,
}

impl Capacity {
    /// The host's CPUs and memory (less a reserve for the host itself) times the overcommit ratios.
    pub fn of_host(cpu_ratio: f64, mem_ratio: f64, reserve_mib: u64) -> Capacity {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as f64;
        let mem_mib = host_memory_mib().saturating_sub(reserve_mib) as f64;
        Capacity {
            vcpus: (cpus * cpu_ratio).floor() as u64,
            memory_mib: (mem_mib * mem_ratio).floor() as u64,
        }
    }
}

pub(super) fn host_memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map(|kib| kib / 1024)
        .unwrap_or(0)
}

impl Service {
    pub(super) fn free_capacity(&self) -> ApiResult<(u64, u64)> {
        let (v, m) = self.db().used_capacity()?;
        let c = self.inner.cfg.capacity;
        Ok((c.vcpus.saturating_sub(v), c.memory_mib.saturating_sub(m)))
    }

    /// Host capacity: (total, used) as (vcpus, MiB).
    pub fn capacity(&self) -> ApiResult<(Capacity, Capacity)> {
        let (v, m) = self.db().used_capacity()?;
        Ok((
            self.inner.cfg.capacity,
            Capacity {
                vcpus: v,
                memory_mib: m,
            },
        ))
    }
}
