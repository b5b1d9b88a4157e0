//! The contract between `vireo-vmm` and whoever drives it (vireod, the tests): the request and
//! response bodies of every endpoint of the VMM's control API (docs/api.md), the exit summary
//! the VMM writes with `--summary-json`, the VM configuration file vireod writes for a
//! migration's destination ([`config`]), the machine identity its SMBIOS tables give the guest
//! ([`smbios`], vireod's `--smbios`), and an async [`Client`] for the API socket.
//!
//! The wire format is what the VMM wrote before these types existed: JSON objects whose keys
//! come out in alphabetical order (serde_json's map), `null` for an absent optional value. So
//! every struct here declares its fields in alphabetical order, and optional values are written
//! as `null` unless the field says otherwise. What a side parses refuses unknown fields: a
//! misspelt field is an error, not a silently ignored one.

#![forbid(unsafe_code)]

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

mod client;
pub mod config;
pub mod smbios;

pub use client::{Client, Error, DEFAULT_TIMEOUT};

/// The content type of `GET /metrics` (Prometheus text format 0.0.4).
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// What every endpoint answers with an error status: `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub error: String,
}

/// Whether the VM runs (`GET /vm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmState {
    Running,
    Paused,
    /// A VMM started with only `--api-sock`, waiting for `PUT /vm/snapshot/load`.
    NotLoaded,
}

/// `GET /vm`. A VMM that has no VM yet answers only the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    pub state: VmState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u64>,
}

/// `GET /balloon`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonInfo {
    /// What the guest says it has given back.
    pub actual_mib: u64,
    pub deflated_pages: u64,
    pub inflated_pages: u64,
    /// Page numbers the guest gave that lie outside its RAM.
    pub invalid_pfns: u64,
    /// The guest's last statistics report; null until it sent one.
    pub stats: Option<BalloonStats>,
    /// What the balloon asks the guest to give back.
    pub target_mib: u64,
}

/// The guest's memory statistics, as its balloon driver reported them (bytes or counts; null
/// where the guest did not report that one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonStats {
    pub available_memory: Option<u64>,
    pub disk_caches: Option<u64>,
    pub free_memory: Option<u64>,
    pub major_faults: Option<u64>,
    pub minor_faults: Option<u64>,
    pub swap_in: Option<u64>,
    pub swap_out: Option<u64>,
    pub total_memory: Option<u64>,
}

/// `PATCH /balloon`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonTarget {
    pub target_mib: u64,
}

/// Limits on a device's operations/s and bytes/s; an absent or null bucket is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiter {
    #[serde(default)]
    pub bytes: Option<TokenBucket>,
    #[serde(default)]
    pub ops: Option<TokenBucket>,
}

/// A token bucket: `size` tokens, refilled every `refill_time_ms`, plus a one-time burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucket {
    #[serde(default)]
    pub one_time_burst: u64,
    pub refill_time_ms: u64,
    pub size: u64,
}

/// `GET /drives/{i}` (always has the limiter) and `PATCH /drives/{i}` (an absent field leaves
/// the limits as they are; `null` is refused: `{"ops": null, "bytes": null}` lifts them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveLimits {
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub rate_limiter: Option<RateLimiter>,
}

/// `GET /net/{i}` and `PATCH /net/{i}`: the limits on what the guest receives (rx) and sends
/// (tx), each as in [`DriveLimits`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetLimits {
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub rx_rate_limiter: Option<RateLimiter>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub tx_rate_limiter: Option<RateLimiter>,
}

/// A field that, when present, must hold a value (not `null`); absent, it is `None`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// `PUT /vm/snapshot`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    /// The directory to write (created if needed).
    pub path: PathBuf,
}

/// `PUT /vm/snapshot`'s answer: what the snapshot cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotStats {
    pub memory_bytes: u64,
    /// Bytes of pages that are not all zero (what the sparse file really holds).
    pub memory_data_bytes: u64,
    pub millis: u64,
}

/// `PUT /vm/snapshot/load`: what a VMM started with only `--api-sock` is asked to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadRequest {
    /// The snapshot directory (`PUT /vm/snapshot`'s `path`).
    pub path: PathBuf,
    /// Run the vCPUs at once; otherwise the VM waits, paused, for `PUT /vm/resume`.
    #[serde(default)]
    pub resume: bool,
    /// Check the memory file's checksum too (reads every data page of it).
    #[serde(default = "yes")]
    pub verify_memory: bool,
}

fn yes() -> bool {
    true
}

/// The downtime a migration aims for when the request names none.
pub const DEFAULT_DOWNTIME_MS: u64 = 50;
/// The downtimes a migration request may ask for.
pub const DOWNTIME_MS_RANGE: std::ops::RangeInclusive<u64> = 1..=60_000;

/// `PUT /vm/migrate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateRequest {
    /// `HOST:PORT` of a `vireo-vmm --incoming`.
    pub destination: String,
    /// The longest the guest may stand still ([`DOWNTIME_MS_RANGE`]; absent or null:
    /// [`DEFAULT_DOWNTIME_MS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
}

/// Where a migration stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrationState {
    #[default]
    None,
    Active,
    Completed,
    Failed,
}

/// `GET /vm/migrate`, and `PUT /vm/migrate`'s answer when the migration succeeded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationProgress {
    pub bytes_sent: u64,
    pub destination: String,
    /// Dirty pages found by the last round.
    pub dirty_pages: u64,
    /// From pausing the vCPUs here to the destination's RUNNING: how long the guest stood
    /// still.
    pub downtime_ms: u64,
    /// From pausing the vCPUs here to the last byte sent.
    pub downtime_source_ms: u64,
    pub error: Option<String>,
    pub pages_sent: u64,
    pub rounds: u32,
    pub state: MigrationState,
    pub total_ms: u64,
}

/// VM exits handled by the VMM, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitCounts {
    pub hlt: u64,
    pub interrupted: u64,
    pub io_in: u64,
    pub io_out: u64,
    pub mmio_read: u64,
    pub mmio_write: u64,
    pub other: u64,
}

/// How a VM ended, as the summary spells it: `poweroff`, `reboot`, `host`, `migrated` or
/// `fault: WHY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The guest powered off.
    PowerOff,
    /// The guest asked for a reboot.
    Reboot,
    /// The host stopped it (`PUT /vm/stop`).
    Host,
    /// It was migrated away.
    Migrated,
    /// The guest failed (triple fault, emulation failure).
    Fault(String),
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::PowerOff => f.write_str("poweroff"),
            Stop::Reboot => f.write_str("reboot"),
            Stop::Host => f.write_str("host"),
            Stop::Migrated => f.write_str("migrated"),
            Stop::Fault(why) => write!(f, "fault: {why}"),
        }
    }
}

impl std::str::FromStr for Stop {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "poweroff" => Stop::PowerOff,
            "reboot" => Stop::Reboot,
            "host" => Stop::Host,
            "migrated" => Stop::Migrated,
            _ => match s.strip_prefix("fault: ") {
                Some(why) => Stop::Fault(why.to_string()),
                None => return Err(format!("unknown stop reason {s:?}")),
            },
        })
    }
}

impl Serialize for Stop {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Stop {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The file `vireo-vmm --summary-json FILE` writes when the VM has ended (one line of JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitSummary {
    /// Each vCPU's exits, vCPU 0 first.
    pub exits_per_vcpu: Vec<ExitCounts>,
    /// The sum over every vCPU.
    pub exits_total: ExitCounts,
    pub stop: Stop,
}

impl ExitSummary {
    /// The file's text: the JSON and a newline.
    pub fn to_file_text(&self) -> String {
        let mut text = serde_json::to_string(self).expect("a summary always serializes");
        text.push('\n');
        text
    }

    /// Reads the file's text.
    pub fn from_file_text(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T>(value: &T, wire: &str)
    where
        T: Serialize + for<'de> Deserialize<'de> + PartialEq + fmt::Debug,
    {
        assert_eq!(serde_json::to_string(value).unwrap(), wire);
        assert_eq!(&serde_json::from_str::<T>(wire).unwrap(), value);
    }

    #[test]
    fn bodies_are_written_as_before_and_read_back() {
        round_trip(
            &VmInfo {
                memory_mib: Some(64),
                state: VmState::Paused,
                vcpus: Some(2),
            },
            r#"{"memory_mib":64,"state":"paused","vcpus":2}"#,
        );
        round_trip(
            &VmInfo {
                memory_mib: None,
                state: VmState::NotLoaded,
                vcpus: None,
            },
            r#"{"state":"not-loaded"}"#,
        );
        round_trip(
            &ErrorBody {
                error: "no such resource: /x".into(),
            },
            r#"{"error":"no such resource: /x"}"#,
        );
        round_trip(
            &BalloonInfo {
                actual_mib: 1,
                deflated_pages: 2,
                inflated_pages: 3,
                invalid_pfns: 4,
                stats: Some(BalloonStats {
                    free_memory: Some(5),
                    ..Default::default()
                }),
                target_mib: 6,
            },
            r#"{"actual_mib":1,"deflated_pages":2,"inflated_pages":3,"invalid_pfns":4,"stats":{"available_memory":null,"disk_caches":null,"free_memory":5,"major_faults":null,"minor_faults":null,"swap_in":null,"swap_out":null,"total_memory":null},"target_mib":6}"#,
        );
        round_trip(
            &DriveLimits {
                rate_limiter: Some(RateLimiter {
                    bytes: None,
                    ops: Some(TokenBucket {
                        one_time_burst: 0,
                        refill_time_ms: 1000,
                        size: 100,
                    }),
                }),
            },
            r#"{"rate_limiter":{"bytes":null,"ops":{"one_time_burst":0,"refill_time_ms":1000,"size":100}}}"#,
        );
        round_trip(
            &NetLimits {
                rx_rate_limiter: Some(RateLimiter::default()),
                tx_rate_limiter: None,
            },
            r#"{"rx_rate_limiter":{"bytes":null,"ops":null}}"#,
        );
        round_trip(
            &MigrationProgress {
                state: MigrationState::Failed,
                error: Some("refused".into()),
                rounds: 3,
                ..Default::default()
            },
            r#"{"bytes_sent":0,"destination":"","dirty_pages":0,"downtime_ms":0,"downtime_source_ms":0,"error":"refused","pages_sent":0,"rounds":3,"state":"failed","total_ms":0}"#,
        );
        round_trip(
            &MigrateRequest {
                destination: "10.0.0.2:7070".into(),
                downtime_ms: Some(50),
            },
            r#"{"destination":"10.0.0.2:7070","downtime_ms":50}"#,
        );
        round_trip(
            &SnapshotStats {
                memory_bytes: 1,
                memory_data_bytes: 2,
                millis: 3,
            },
            r#"{"memory_bytes":1,"memory_data_bytes":2,"millis":3}"#,
        );
        round_trip(
            &LoadRequest {
                path: "/s".into(),
                resume: true,
                verify_memory: false,
            },
            r#"{"path":"/s","resume":true,"verify_memory":false}"#,
        );
    }

    #[test]
    fn defaults_fill_what_a_request_leaves_out() {
        let load: LoadRequest = serde_json::from_str(r#"{"path": "/s"}"#).unwrap();
        assert!(!load.resume && load.verify_memory);
        let m: MigrateRequest = serde_json::from_str(r#"{"destination": "h:1"}"#).unwrap();
        assert_eq!(m.downtime_ms, None);
        let m: MigrateRequest =
            serde_json::from_str(r#"{"destination": "h:1", "downtime_ms": null}"#).unwrap();
        assert_eq!(m.downtime_ms, None);
        let b: TokenBucket = serde_json::from_str(r#"{"size": 5, "refill_time_ms": 9}"#).unwrap();
        assert_eq!(b.one_time_burst, 0);
        let d: DriveLimits = serde_json::from_str("{}").unwrap();
        assert_eq!(d.rate_limiter, None, "an absent field changes nothing");
        let d: DriveLimits = serde_json::from_str(r#"{"rate_limiter": {}}"#).unwrap();
        assert_eq!(
            d.rate_limiter,
            Some(RateLimiter::default()),
            "{{}}: unlimited"
        );
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_refused() {
        assert!(serde_json::from_str::<BalloonTarget>(r#"{"target_mib": 1, "x": 2}"#).is_err());
        assert!(serde_json::from_str::<BalloonTarget>(r#""x""#).is_err());
        assert!(serde_json::from_str::<DriveLimits>(r#"{"rx_rate_limiter": {}}"#).is_err());
        assert!(serde_json::from_str::<DriveLimits>(r#"{"rate_limiter": null}"#).is_err());
        assert!(serde_json::from_str::<NetLimits>(r#"{"rate_limiter": {}}"#).is_err());
        assert!(serde_json::from_str::<RateLimiter>(r#"{"iops": null}"#).is_err());
        assert!(serde_json::from_str::<TokenBucket>(r#"{"size": 1}"#).is_err());
        assert!(serde_json::from_str::<SnapshotRequest>(r#"{"path": "/s", "x": 1}"#).is_err());
        assert!(serde_json::from_str::<LoadRequest>(r#"{"path": "/s", "resum": true}"#).is_err());
        assert!(
            serde_json::from_str::<MigrateRequest>(r#"{"destination": "h:1", "downtime": 5}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<VmInfo>(r#"{"state": "asleep"}"#).is_err());
        assert!(serde_json::from_str::<ExitCounts>(r#"{"hlt": 1, "io": 2}"#).is_err());
        assert!(serde_json::from_str::<MigrationProgress>(r#"{"state": "none"}"#).is_err());
    }

    #[test]
    fn the_exit_summary_reads_back_what_the_vmm_wrote() {
        let summary = ExitSummary {
            exits_per_vcpu: vec![ExitCounts {
                io_in: 2,
                ..Default::default()
            }],
            exits_total: ExitCounts {
                io_in: 2,
                ..Default::default()
            },
            stop: Stop::Fault("triple fault".into()),
        };
        let text = summary.to_file_text();
        assert_eq!(
            text,
            "{\"exits_per_vcpu\":[{\"hlt\":0,\"interrupted\":0,\"io_in\":2,\"io_out\":0,\"mmio_read\":0,\"mmio_write\":0,\"other\":0}],\"exits_total\":{\"hlt\":0,\"interrupted\":0,\"io_in\":2,\"io_out\":0,\"mmio_read\":0,\"mmio_write\":0,\"other\":0},\"stop\":\"fault: triple fault\"}\n"
        );
        assert_eq!(ExitSummary::from_file_text(&text).unwrap(), summary);
        for stop in [Stop::PowerOff, Stop::Reboot, Stop::Host, Stop::Migrated] {
            assert_eq!(stop.to_string().parse::<Stop>().unwrap(), stop);
        }
        assert!("sleeping".parse::<Stop>().is_err());
        assert!(ExitSummary::from_file_text(
            r#"{"exits_per_vcpu":[],"exits_total":{"hlt":0,"interrupted":0,"io_in":0,"io_out":0,"mmio_read":0,"mmio_write":0,"other":0},"stop":"poweroff","extra":1}"#
        )
        .is_err());
    }
}
