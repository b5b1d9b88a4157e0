//! What a VM is made of, as given in a JSON file or on the command line, and its validation.

use std::path::PathBuf;

use devices::rate_limiter::BucketConfig;
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
    /// virtio-blk drives on raw image files, in order: /dev/vda, /dev/vdb, ...
    #[serde(default)]
    pub drives: Vec<DriveConfig>,
    /// virtio-net devices on existing TAP interfaces, in order: eth0, eth1, ...
    #[serde(default)]
    pub net: Vec<NetConfig>,
    /// A virtio-vsock device whose host side is Unix sockets.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// Back guest RAM with transparent huge pages where the host has them.
    #[serde(default = "default_huge_pages")]
    pub huge_pages: bool,
}

/// virtio-vsock: the guest's CID and the Unix socket the VMM listens on for host processes
/// (`CONNECT <port>\n`); guest connections to host port P go to `<uds_path>_<P>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// At least 3 (0-2 are reserved), below 2^32-1.
    pub guest_cid: u64,
    pub uds_path: PathBuf,
}

impl VsockConfig {
    /// Parses `cid=N,uds=PATH`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (mut cid, mut uds) = (None, None);
        for part in s.split(',').filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                Some(("cid", v)) => {
                    cid = Some(v.parse::<u64>().map_err(|_| {
                        format!("invalid --vsock {part:?}: the CID must be a number")
                    })?)
                }
                Some(("uds", v)) if !v.is_empty() => uds = Some(PathBuf::from(v)),
                _ => return Err(format!("invalid --vsock {part:?}: use cid=N,uds=PATH")),
            }
        }
        match (cid, uds) {
            (Some(guest_cid), Some(uds_path)) => Ok(VsockConfig {
                guest_cid,
                uds_path,
            }),
            _ => Err(format!("invalid --vsock {s:?}: use cid=N,uds=PATH")),
        }
    }
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

/// A virtio-blk drive: a raw image file (or block device), or a qcow2 image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveConfig {
    pub path: PathBuf,
    /// The image's format. Without it the format is detected from the file's first bytes: a
    /// convenience for people, never for software that starts VMs from guest-written disks (a
    /// guest can put a qcow2 header at the start of a raw disk, and a qcow2 header names a
    /// backing file that the VMM then reads), so such software always gives it.
    #[serde(default)]
    pub format: Option<DriveFormat>,
    /// Guest writes fail and the file is opened read-only.
    #[serde(default)]
    pub read_only: bool,
    /// I/O bypasses the host's page cache (O_DIRECT): guest data is not cached a second time
    /// by the host, and moves once between the device and guest memory. Raw images only.
    #[serde(default)]
    pub direct: bool,
    /// What the guest reads as the drive's serial (GET_ID), at most 20 bytes.
    #[serde(default)]
    pub serial: Option<String>,
    #[serde(default)]
    pub rate_limiter: Option<RateLimiterConfig>,
    /// Request queues offered to the guest, 1 to 16. Linux uses one per vCPU at most, plus
    /// the poll queues its `virtio_blk.poll_queues` asks for.
    #[serde(default = "one_queue")]
    pub queues: u16,
    /// Busy polling: after a request the I/O thread keeps looking at the drive's queues for
    /// this many microseconds (0 to 10000), with the guest's notifications off, so that a
    /// busy guest's requests cost it no VM exit. 0 (the default): the drive waits for
    /// notifications.
    #[serde(default)]
    pub poll_us: u32,
    /// How reads and writes reach the file: "sync" (the default), one request after the
    /// other, "io_uring", those queued together as one batch in flight at once (raw images
    /// only), or "null", no I/O at all (a benchmark's baseline: the file gives the size and is
    /// never read or written).
    #[serde(default)]
    pub io_engine: DriveIoEngine,
}

/// How a drive's reads and writes reach its file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriveIoEngine {
    #[default]
    Sync,
    IoUring,
    Null,
}

fn one_queue() -> u16 {
    1
}

/// The format of a drive's image file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriveFormat {
    Raw,
    Qcow2,
}

/// Limits on a device's operations/s and bytes/s (token buckets).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    #[serde(default)]
    pub ops: Option<TokenBucketConfig>,
    #[serde(default)]
    pub bytes: Option<TokenBucketConfig>,
}

/// A token bucket: `size` tokens, refilled every `refill_time_ms`, plus a one-time burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketConfig {
    pub size: u64,
    #[serde(default)]
    pub one_time_burst: u64,
    pub refill_time_ms: u64,
}

impl RateLimiterConfig {
    /// The (ops, bytes) buckets the device's limiter is built from.
    pub fn buckets(&self) -> (Option<BucketConfig>, Option<BucketConfig>) {
        let bucket = |b: &TokenBucketConfig| BucketConfig {
            size: b.size,
            one_time_burst: b.one_time_burst,
            refill_time_ms: b.refill_time_ms,
        };
        (
            self.ops.as_ref().map(bucket),
            self.bytes.as_ref().map(bucket),
        )
    }

    /// The configuration a limiter's current buckets correspond to.
    pub fn from_buckets(ops: Option<BucketConfig>, bytes: Option<BucketConfig>) -> Self {
        let cfg = |b: BucketConfig| TokenBucketConfig {
            size: b.size,
            one_time_burst: b.one_time_burst,
            refill_time_ms: b.refill_time_ms,
        };
        Self {
            ops: ops.map(cfg),
            bytes: bytes.map(cfg),
        }
    }
}

impl DriveConfig {
    /// Parses `path=FILE[,format=raw|qcow2][,ro][,direct][,serial=S][,iops=N][,bps=N]
    /// [,queues=N][,poll_us=N][,io_engine=sync|io_uring|null]` (iops/bps: buckets of that size
    /// refilled every second).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut path = None;
        let mut d = DriveConfig {
            path: PathBuf::new(),
            format: None,
            read_only: false,
            direct: false,
            serial: None,
            rate_limiter: None,
            queues: 1,
            poll_us: 0,
            io_engine: DriveIoEngine::Sync,
        };
        let per_second = |part: &str, v: &str| match v.parse::<u64>() {
            Ok(n) if n > 0 => Ok(TokenBucketConfig {
                size: n,
                one_time_burst: 0,
                refill_time_ms: 1000,
            }),
            _ => Err(format!("invalid --drive {part:?}: want a positive number")),
        };
        for part in s.split(',').filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                Some(("path", v)) if !v.is_empty() => path = Some(PathBuf::from(v)),
                Some(("serial", v)) => d.serial = Some(v.to_string()),
                Some(("format", "raw")) => d.format = Some(DriveFormat::Raw),
                Some(("format", "qcow2")) => d.format = Some(DriveFormat::Qcow2),
                Some(("format", v)) => {
                    return Err(format!(
                        "invalid --drive format {v:?}: use format=raw or format=qcow2"
                    ))
                }
                Some(("iops", v)) => {
                    d.rate_limiter.get_or_insert_with(Default::default).ops =
                        Some(per_second(part, v)?)
                }
                Some(("bps", v)) => {
                    d.rate_limiter.get_or_insert_with(Default::default).bytes =
                        Some(per_second(part, v)?)
                }
                Some(("queues", v)) => {
                    d.queues = v
                        .parse()
                        .map_err(|_| format!("invalid --drive {part:?}: want a number of queues"))?
                }
                Some(("poll_us", v)) => {
                    d.poll_us = v
                        .parse()
                        .map_err(|_| format!("invalid --drive {part:?}: want microseconds"))?
                }
                Some(("io_engine", "sync")) => d.io_engine = DriveIoEngine::Sync,
                Some(("io_engine", "io_uring")) => d.io_engine = DriveIoEngine::IoUring,
                Some(("io_engine", "null")) => d.io_engine = DriveIoEngine::Null,
                Some(("io_engine", v)) => {
                    return Err(format!(
                        "invalid --drive io_engine {v:?}: use io_engine=sync, io_uring or null"
                    ))
                }
                None if part == "ro" => d.read_only = true,
                None if part == "direct" => d.direct = true,
                _ => {
                    return Err(format!(
                        "invalid --drive {part:?}: use path=FILE[,format=raw|qcow2][,ro][,direct][,serial=S][,iops=N][,bps=N][,queues=N][,poll_us=N][,io_engine=sync|io_uring|null]"
                    ))
                }
            }
        }
        d.path = path.ok_or_else(|| format!("invalid --drive {s:?}: no path=FILE"))?;
        d.check()?;
        Ok(d)
    }

    /// Checks what can be checked without opening the file.
    pub fn check(&self) -> Result<(), String> {
        let path = self.path.display();
        match &self.serial {
            Some(s) if s.len() > 20 => {
                return Err(format!(
                    "drive {path}: serial {s:?} is longer than 20 bytes"
                ))
            }
            _ => {}
        }
        if !(1..=devices::virtio::block::MAX_QUEUES).contains(&self.queues) {
            return Err(format!(
                "drive {path}: queues={} is out of range (1 to {})",
                self.queues,
                devices::virtio::block::MAX_QUEUES
            ));
        }
        if self.poll_us > devices::virtio::block::MAX_POLL_US {
            return Err(format!(
                "drive {path}: poll_us={} is out of range (0 to {})",
                self.poll_us,
                devices::virtio::block::MAX_POLL_US
            ));
        }
        Ok(())
    }
}

/// A virtio-net device on an existing host TAP interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The TAP's name; it must exist in the VMM's network namespace.
    pub tap: String,
    /// The guest's MAC address; a random locally administered one when absent.
    #[serde(default)]
    pub mac: Option<String>,
    /// Limits on what the guest receives (TAP to guest).
    #[serde(default)]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// Limits on what the guest sends (guest to TAP).
    #[serde(default)]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

impl NetConfig {
    /// Parses `tap=NAME[,mac=MAC][,rx_pps=N][,rx_bps=N][,tx_pps=N][,tx_bps=N]` (pps/bps:
    /// buckets of that size refilled every second).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut n = NetConfig {
            tap: String::new(),
            mac: None,
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        };
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let per_second = |v: &str| match v.parse::<u64>() {
                Ok(n) if n > 0 => Ok(TokenBucketConfig {
                    size: n,
                    one_time_burst: 0,
                    refill_time_ms: 1000,
                }),
                _ => Err(format!("invalid --net {part:?}: want a positive number")),
            };
            match part.split_once('=') {
                Some(("tap", v)) => n.tap = v.to_string(),
                Some(("mac", v)) => n.mac = Some(v.to_string()),
                Some(("rx_pps", v)) => {
                    n.rx_rate_limiter.get_or_insert_with(Default::default).ops =
                        Some(per_second(v)?)
                }
                Some(("rx_bps", v)) => {
                    n.rx_rate_limiter.get_or_insert_with(Default::default).bytes =
                        Some(per_second(v)?)
                }
                Some(("tx_pps", v)) => {
                    n.tx_rate_limiter.get_or_insert_with(Default::default).ops =
                        Some(per_second(v)?)
                }
                Some(("tx_bps", v)) => {
                    n.tx_rate_limiter.get_or_insert_with(Default::default).bytes =
                        Some(per_second(v)?)
                }
                _ => {
                    return Err(format!(
                        "invalid --net {part:?}: use tap=NAME[,mac=MAC][,rx_pps=N][,rx_bps=N][,tx_pps=N][,tx_bps=N]"
                    ))
                }
            }
        }
        if n.tap.is_empty() {
            return Err(format!("invalid --net {s:?}: no tap=NAME"));
        }
        n.check()?;
        Ok(n)
    }

    /// Checks what can be checked without opening the TAP.
    pub fn check(&self) -> Result<(), String> {
        if let Some(mac) = &self.mac {
            mac.parse::<devices::virtio::net::MacAddr>()
                .map_err(|e| format!("net {}: {e}", self.tap))?;
        }
        Ok(())
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
            drives: Vec::new(),
            net: Vec::new(),
            vsock: None,
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
    fn drives_from_json_and_flags() {
        let c: VmConfig = serde_json::from_str(
            r#"{"kernel":"/k","drives":[{"path":"/a.img"},
                {"path":"/b.img","read_only":true,"serial":"disk-b",
                 "rate_limiter":{"ops":{"size":100,"refill_time_ms":1000},
                                 "bytes":{"size":1048576,"one_time_burst":5,"refill_time_ms":500}}}]}"#,
        )
        .unwrap();
        assert_eq!(c.drives.len(), 2);
        assert_eq!(c.drives[0], DriveConfig::parse("path=/a.img").unwrap());
        let b = &c.drives[1];
        assert!(b.read_only);
        assert_eq!(b.serial.as_deref(), Some("disk-b"));
        let rl = b.rate_limiter.as_ref().unwrap();
        assert_eq!(rl.ops.unwrap().size, 100);
        assert_eq!(rl.bytes.unwrap().one_time_burst, 5);
        assert!(serde_json::from_str::<VmConfig>(
            r#"{"kernel":"/k","drives":[{"path":"/a","readonly":true}]}"#
        )
        .is_err());

        assert!(!c.drives[0].direct);
        let d = DriveConfig::parse("path=/x.img,ro,direct,serial=s1,iops=50,bps=4096").unwrap();
        assert_eq!(d.path, PathBuf::from("/x.img"));
        assert!(d.read_only);
        assert!(d.direct);
        assert_eq!(d.serial.as_deref(), Some("s1"));
        let rl = d.rate_limiter.unwrap();
        let per_s = |n| TokenBucketConfig {
            size: n,
            one_time_burst: 0,
            refill_time_ms: 1000,
        };
        assert_eq!((rl.ops, rl.bytes), (Some(per_s(50)), Some(per_s(4096))));
        for bad in [
            "ro",
            "path=",
            "path=/x,rw",
            "path=/x,iops=0",
            "path=/x,iops=many",
            "path=/x,queues=0",
            "path=/x,queues=17",
            "path=/x,queues=-1",
            "path=/x,poll_us=10001",
            "path=/x,poll_us=soon",
            "path=/x,io_engine=aio",
            "path=/x,io_engine",
        ] {
            assert!(DriveConfig::parse(bad).is_err(), "{bad}");
        }
        let long = format!("path=/x,serial={}", "s".repeat(21));
        assert!(DriveConfig::parse(&long).is_err());

        assert_eq!((c.drives[0].queues, c.drives[0].poll_us), (1, 0));
        let d = DriveConfig::parse("path=/x,queues=4,poll_us=500").unwrap();
        assert_eq!((d.queues, d.poll_us), (4, 500));
        let c: VmConfig = serde_json::from_str(
            r#"{"kernel":"/k","drives":[{"path":"/a","queues":2,"poll_us":2000}]}"#,
        )
        .unwrap();
        assert_eq!((c.drives[0].queues, c.drives[0].poll_us), (2, 2000));
        let e = DriveConfig::parse("path=/x,queues=17").unwrap_err();
        assert_eq!(e, "drive /x: queues=17 is out of range (1 to 16)");
    }

    #[test]
    fn drive_io_engines() {
        assert_eq!(
            DriveConfig::parse("path=/a").unwrap().io_engine,
            DriveIoEngine::Sync
        );
        let d = DriveConfig::parse("path=/a,io_engine=io_uring").unwrap();
        assert_eq!(d.io_engine, DriveIoEngine::IoUring);
        let d = DriveConfig::parse("path=/a,io_engine=io_uring,io_engine=sync").unwrap();
        assert_eq!(d.io_engine, DriveIoEngine::Sync);
        let d = DriveConfig::parse("path=/a,io_engine=null").unwrap();
        assert_eq!(d.io_engine, DriveIoEngine::Null);
        let e = DriveConfig::parse("path=/a,io_engine=aio").unwrap_err();
        assert_eq!(
            e,
            "invalid --drive io_engine \"aio\": use io_engine=sync, io_uring or null"
        );
        let c: VmConfig = serde_json::from_str(
            r#"{"kernel":"/k","drives":[{"path":"/a","io_engine":"io_uring"},{"path":"/b"},
                {"path":"/c","io_engine":"null"}]}"#,
        )
        .unwrap();
        assert_eq!(c.drives[0].io_engine, DriveIoEngine::IoUring);
        assert_eq!(c.drives[1].io_engine, DriveIoEngine::Sync);
        assert_eq!(c.drives[2].io_engine, DriveIoEngine::Null);
        assert!(serde_json::from_str::<VmConfig>(
            r#"{"kernel":"/k","drives":[{"path":"/a","io_engine":"aio"}]}"#
        )
        .is_err());
    }

    #[test]
    fn drive_formats() {
        assert_eq!(DriveConfig::parse("path=/a").unwrap().format, None);
        assert_eq!(
            DriveConfig::parse("path=/a,format=qcow2").unwrap().format,
            Some(DriveFormat::Qcow2)
        );
        assert_eq!(
            DriveConfig::parse("format=raw,path=/a").unwrap().format,
            Some(DriveFormat::Raw)
        );
        assert_eq!(
            DriveConfig::parse("path=/a,format=vmdk").unwrap_err(),
            "invalid --drive format \"vmdk\": use format=raw or format=qcow2"
        );
        let c: VmConfig = serde_json::from_str(
            r#"{"kernel":"/k","drives":[{"path":"/a","format":"qcow2"},{"path":"/b","format":"raw"}]}"#,
        )
        .unwrap();
        assert_eq!(c.drives[0].format, Some(DriveFormat::Qcow2));
        assert_eq!(c.drives[1].format, Some(DriveFormat::Raw));
        assert!(serde_json::from_str::<VmConfig>(
            r#"{"kernel":"/k","drives":[{"path":"/a","format":"QCOW2"}]}"#
        )
        .is_err());
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

    #[test]
    fn vsock_flag_and_json() {
        let v = VsockConfig::parse("cid=3,uds=/tmp/v.sock").unwrap();
        assert_eq!((v.guest_cid, v.uds_path.to_str()), (3, Some("/tmp/v.sock")));
        assert_eq!(VsockConfig::parse("uds=/x,cid=7").unwrap().guest_cid, 7);
        for bad in [
            "",
            "cid=3",
            "uds=/x",
            "cid=x,uds=/x",
            "cid=3,uds=",
            "cid=3,uds=/x,y=1",
        ] {
            assert!(VsockConfig::parse(bad).is_err(), "{bad}");
        }
        let c: VmConfig = serde_json::from_str(
            r#"{"kernel":"/k","vsock":{"guest_cid":5,"uds_path":"/run/v.sock"}}"#,
        )
        .unwrap();
        assert_eq!(c.vsock.unwrap().guest_cid, 5);
        assert!(serde_json::from_str::<VmConfig>(
            r#"{"kernel":"/k","vsock":{"guest_cid":5,"uds_path":"/v","port":1}}"#
        )
        .is_err());
    }

    #[test]
    fn net_flag_and_json() {
        let n = NetConfig::parse("tap=vtap0,mac=02:00:00:00:00:02,rx_bps=1000,tx_pps=10").unwrap();
        assert_eq!(n.tap, "vtap0");
        assert_eq!(n.mac.as_deref(), Some("02:00:00:00:00:02"));
        assert_eq!(
            n.rx_rate_limiter.as_ref().unwrap().bytes.unwrap().size,
            1000
        );
        assert_eq!(n.tx_rate_limiter.as_ref().unwrap().ops.unwrap().size, 10);
        assert!(NetConfig::parse("mac=02:00:00:00:00:02").is_err(), "no tap");
        assert!(
            NetConfig::parse("tap=t,mac=01:00:00:00:00:02").is_err(),
            "multicast"
        );
        assert!(NetConfig::parse("tap=t,speed=9").is_err());
        assert!(NetConfig::parse("tap=t,rx_pps=0").is_err());
        let c: VmConfig = serde_json::from_str(
            r#"{"kernel":"/k","net":[{"tap":"t0","tx_rate_limiter":
                {"bytes":{"size":100,"one_time_burst":5,"refill_time_ms":10}}}]}"#,
        )
        .unwrap();
        assert_eq!(c.net[0].tap, "t0");
        assert_eq!(
            c.net[0]
                .tx_rate_limiter
                .as_ref()
                .unwrap()
                .bytes
                .unwrap()
                .one_time_burst,
            5
        );
        assert!(
            serde_json::from_str::<VmConfig>(r#"{"kernel":"/k","net":[{"tap":"t","x":1}]}"#)
                .is_err()
        );
    }
}
