//! What a VM is made of, as given in a JSON file or on the command line, and its validation.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::arch::layout::{MIB, MIN_MEMORY};

/// Default kernel command line: console on COM1, reboot (and exit) rather than hang on panic.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 panic=-1";
pub const DEFAULT_MEMORY_MIB: u64 = 256;
/// Local APIC IDs in the MADT are one byte; 255 is the broadcast ID.
pub const MAX_VCPUS: u8 = 254;

/// Where the serial console's output goes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum SerialConfig {
    #[default]
    Stdout,
    /// Appended to this file, created if missing.
    File(PathBuf),
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// ELF vmlinux (PVH or 64-bit entry) or bzImage.
    pub kernel: PathBuf,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    #[serde(default = "default_memory")]
    pub memory_mib: u64,
    #[serde(default)]
    pub serial: SerialConfig,
    /// A virtio-rng device fed by the host's getrandom(2).
    #[serde(default)]
    pub rng: bool,
    /// A virtio-balloon device.
    #[serde(default)]
    pub balloon: Option<BalloonConfig>,
    /// Back guest RAM with transparent huge pages where the host has them.
    #[serde(default = "default_huge_pages")]
    pub huge_pages: bool,
}

/// The balloon: how much memory the guest is asked to give back at start, and how often it
/// reports its memory statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonConfig {
    #[serde(default)]
    pub target_mib: u32,
    /// Let the guest take pages back from the balloon when it runs out of memory.
    #[serde(default)]
    pub deflate_on_oom: bool,
    /// Seconds between statistics requests; 0 turns statistics off.
    #[serde(default)]
    pub stats_interval_s: u32,
}

impl BalloonConfig {
    /// Parses `target=MIB[,deflate-on-oom][,stats=SECONDS]`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut c = BalloonConfig::default();
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let num = |v: &str| {
                v.parse::<u32>()
                    .map_err(|_| format!("invalid --balloon {part:?}: not a number"))
            };
            match part.split_once('=') {
                Some(("target", v)) => c.target_mib = num(v)?,
                Some(("stats", v)) => c.stats_interval_s = num(v)?,
                None if part == "deflate-on-oom" => c.deflate_on_oom = true,
                _ => {
                    return Err(format!(
                        "invalid --balloon {part:?}: use target=MIB,stats=SECONDS,deflate-on-oom"
                    ))
                }
            }
        }
        Ok(c)
    }
}

fn default_cmdline() -> String {
    DEFAULT_CMDLINE.to_string()
}
fn default_huge_pages() -> bool {
    true
}
fn default_vcpus() -> u8 {
    1
}
fn default_memory() -> u64 {
    DEFAULT_MEMORY_MIB
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("vcpus must be at least 1")]
    NoVcpus,
    #[error("{asked} vCPUs asked for; this host's KVM allows at most {max}")]
    TooManyVcpus { asked: u64, max: u64 },
    #[error("memory must be at least {min} MiB (asked for {asked} MiB)")]
    TooLittleMemory { asked: u64, min: u64 },
    #[error("{asked} MiB of guest memory asked for; this host has only {host} MiB")]
    TooMuchMemory { asked: u64, host: u64 },
    #[error("invalid memory size {0:?}: give MiB as a number, or a number with M or G")]
    BadMemorySize(String),
}

impl VmConfig {
    pub fn new(kernel: PathBuf) -> Self {
        Self {
            kernel,
            initrd: None,
            cmdline: default_cmdline(),
            vcpus: default_vcpus(),
            memory_mib: default_memory(),
            serial: SerialConfig::default(),
            huge_pages: default_huge_pages(),
            rng: false,
            balloon: None,
        }
    }

    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib.saturating_mul(MIB)
    }

    /// Checks the limits that do not depend on files: vCPU count against KVM's limit and
    /// memory against the host's RAM.
    pub fn check_limits(&self, kvm_max_vcpus: u64, host_mem_mib: u64) -> Result<(), ConfigError> {
        if self.vcpus == 0 {
            return Err(ConfigError::NoVcpus);
        }
        let max = kvm_max_vcpus.min(u64::from(MAX_VCPUS));
        if u64::from(self.vcpus) > max {
            return Err(ConfigError::TooManyVcpus {
                asked: self.vcpus.into(),
                max,
            });
        }
        let min = MIN_MEMORY / MIB;
        if self.memory_mib < min {
            return Err(ConfigError::TooLittleMemory {
                asked: self.memory_mib,
                min,
            });
        }
        if self.memory_mib > host_mem_mib {
            return Err(ConfigError::TooMuchMemory {
                asked: self.memory_mib,
                host: host_mem_mib,
            });
        }
        Ok(())
    }
}

/// Parses "512", "512M", "512MiB", "2G", "2GiB" into MiB.
pub fn parse_memory_mib(s: &str) -> Result<u64, ConfigError> {
    let bad = || ConfigError::BadMemorySize(s.to_string());
    let t = s.trim();
    let (num, mult) = if let Some(n) = t.strip_suffix("GiB").or_else(|| t.strip_suffix('G')) {
        (n, 1024)
    } else if let Some(n) = t.strip_suffix("MiB").or_else(|| t.strip_suffix('M')) {
        (n, 1)
    } else {
        (t, 1)
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(bad)
}

/// The host's physical memory in MiB, from /proc/meminfo.
pub fn host_memory_mib() -> std::io::Result<u64> {
    let info = std::fs::read_to_string("/proc/meminfo")?;
    info.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib / 1024)
        .ok_or_else(|| std::io::Error::other("MemTotal missing from /proc/meminfo"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_config_with_defaults_and_unknown_fields() {
        let c: VmConfig = serde_json::from_str(r#"{"kernel": "/k"}"#).unwrap();
        assert_eq!(c, VmConfig::new("/k".into()));
        let c: VmConfig = serde_json::from_str(
            r#"{"kernel":"/k","initrd":"/i","cmdline":"x","vcpus":2,"memory_mib":512,
                "serial":{"file":"/tmp/console.log"}}"#,
        )
        .unwrap();
        assert_eq!(c.serial, SerialConfig::File("/tmp/console.log".into()));
        assert_eq!((c.vcpus, c.memory_mib), (2, 512));
        let c: VmConfig = serde_json::from_str(r#"{"kernel":"/k","serial":"none"}"#).unwrap();
        assert_eq!(c.serial, SerialConfig::None);
        assert!(serde_json::from_str::<VmConfig>(r#"{"kernel":"/k","vcpu":2}"#).is_err());
        assert!(serde_json::from_str::<VmConfig>(r#"{"kernel":"/k","vcpus":300}"#).is_err());
    }

    #[test]
    fn limits() {
        let mut c = VmConfig::new("/k".into());
        c.check_limits(8, 1024).unwrap();
        c.vcpus = 0;
        assert_eq!(c.check_limits(8, 1024), Err(ConfigError::NoVcpus));
        c.vcpus = 9;
        assert!(matches!(
            c.check_limits(8, 1024),
            Err(ConfigError::TooManyVcpus { max: 8, .. })
        ));
        c.vcpus = 1;
        c.memory_mib = 2048;
        assert!(matches!(
            c.check_limits(8, 1024),
            Err(ConfigError::TooMuchMemory { .. })
        ));
        c.memory_mib = 1;
        assert!(matches!(
            c.check_limits(8, 1024),
            Err(ConfigError::TooLittleMemory { .. })
        ));
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory_mib("512"), Ok(512));
        assert_eq!(parse_memory_mib("512M"), Ok(512));
        assert_eq!(parse_memory_mib("16G"), Ok(16384));
        assert_eq!(parse_memory_mib("2GiB"), Ok(2048));
        assert!(parse_memory_mib("lots").is_err());
        assert!(parse_memory_mib("-1").is_err());
        assert!(parse_memory_mib("99999999999999999999G").is_err());
    }
}
