//! `vireo top`: a live table of what each instance's VMM is doing, from vireod's `GET /metrics`.
//!
//! Counters only mean something as rates, so every table needs two scrapes: the rates are the
//! counters' differences divided by the time between the scrapes. A metric a VMM does not export
//! (an older VMM, a VM without a disk or network) shows as `-`, never as 0.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use serde::Serialize;
use vireo_promtext::{self as prom, Line};

use crate::commands::CliError;
use crate::config::Endpoint;
use crate::output::table;

/// The largest /metrics answer read: thousands of instances fit well inside it.
const MAX_METRICS_BYTES: u64 = 64 << 20;

/// One instance's values in one scrape; `None` where the metric was absent.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Counters {
    pub instance_type: String,
    pub state: Option<String>,
    pub up: Option<bool>,
    pub vcpu_seconds: Option<f64>,
    pub steal_seconds: Option<f64>,
    pub exits: Option<f64>,
    pub memory_bytes: Option<f64>,
    pub resident_bytes: Option<f64>,
    pub read_bytes: Option<f64>,
    pub write_bytes: Option<f64>,
    pub read_ops: Option<f64>,
    pub write_ops: Option<f64>,
    pub rx_packets: Option<f64>,
    pub tx_packets: Option<f64>,
    pub throttled: Option<f64>,
}

/// Adds `v` to a sum that may not have started yet.
fn add(slot: &mut Option<f64>, v: f64) {
    *slot = Some(slot.unwrap_or(0.0) + v);
}

/// Per-instance values of one scrape of vireod's /metrics, by instance ID.
pub fn parse(text: &str) -> BTreeMap<String, Counters> {
    let mut out: BTreeMap<String, Counters> = BTreeMap::new();
    for line in text.lines() {
        let Ok(Line::Sample(s)) = prom::parse_line(line) else {
            continue;
        };
        let Some(id) = s.label("instance_id") else {
            continue;
        };
        let c = out.entry(id.to_string()).or_default();
        if let Some(t) = s.label("instance_type") {
            if c.instance_type.is_empty() {
                c.instance_type = t.to_string();
            }
        }
        let v = s.value;
        match s.name {
            "vireod_instance_info" => c.state = s.label("state").map(str::to_string),
            "vireod_vmm_up" => c.up = Some(v == 1.0),
            "vireo_vcpu_seconds_total" => add(&mut c.vcpu_seconds, v),
            "vireo_vcpu_steal_seconds_total" => add(&mut c.steal_seconds, v),
            "vireo_vcpu_exits_total" => add(&mut c.exits, v),
            "vireo_memory_bytes" => add(&mut c.memory_bytes, v),
            "vireo_memory_resident_bytes" => add(&mut c.resident_bytes, v),
            "vireo_block_read_bytes_total" => add(&mut c.read_bytes, v),
            "vireo_block_write_bytes_total" => add(&mut c.write_bytes, v),
            "vireo_block_requests_total" => match s.label("op") {
                Some("read") => add(&mut c.read_ops, v),
                Some("write") => add(&mut c.write_ops, v),
                _ => {}
            },
            "vireo_net_rx_packets_total" => add(&mut c.rx_packets, v),
            "vireo_net_tx_packets_total" => add(&mut c.tx_packets, v),
            "vireo_ratelimit_throttled_total" => add(&mut c.throttled, v),
            _ => {}
        }
    }
    out
}

/// One row of the table (and of `--json`): rates over the interval, gauges from the later scrape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub instance_id: String,
    pub instance_type: String,
    pub state: Option<String>,
    /// Whether the VMM answered vireod's scrape.
    pub vmm_up: Option<bool>,
    /// vCPU time as a percentage of one host CPU (200 = two vCPUs busy all the time).
    pub vcpu_percent: Option<f64>,
    pub steal_percent: Option<f64>,
    pub exits_per_sec: Option<f64>,
    pub memory_resident_mib: Option<f64>,
    pub memory_mib: Option<f64>,
    pub disk_read_ops_per_sec: Option<f64>,
    pub disk_write_ops_per_sec: Option<f64>,
    pub disk_read_mb_per_sec: Option<f64>,
    pub disk_write_mb_per_sec: Option<f64>,
    pub net_rx_packets_per_sec: Option<f64>,
    pub net_tx_packets_per_sec: Option<f64>,
    pub throttled_per_sec: Option<f64>,
}

/// A counter's rate between two scrapes `secs` apart. None when either side lacks it or it went
/// down (the VMM restarted, as on a reboot: its counters start again from zero).
pub fn rate(before: Option<f64>, after: Option<f64>, secs: f64) -> Option<f64> {
    match (before, after) {
        (Some(a), Some(b)) if b >= a && secs > 0.0 => Some((b - a) / secs),
        _ => None,
    }
}

/// Rows for the instances in the later scrape, rates against the earlier one.
pub fn rows(
    before: &BTreeMap<String, Counters>,
    after: &BTreeMap<String, Counters>,
    secs: f64,
) -> Vec<Row> {
    const MIB: f64 = 1024.0 * 1024.0;
    const MB: f64 = 1e6;
    let empty = Counters::default();
    after
        .iter()
        .map(|(id, b)| {
            let a = before.get(id).unwrap_or(&empty);
            let r = |f: fn(&Counters) -> Option<f64>| rate(f(a), f(b), secs);
            Row {
                instance_id: id.clone(),
                instance_type: b.instance_type.clone(),
                state: b.state.clone(),
                vmm_up: b.up,
                vcpu_percent: r(|c| c.vcpu_seconds).map(|x| x * 100.0),
                steal_percent: r(|c| c.steal_seconds).map(|x| x * 100.0),
                exits_per_sec: r(|c| c.exits),
                memory_resident_mib: b.resident_bytes.map(|x| x / MIB),
                memory_mib: b.memory_bytes.map(|x| x / MIB),
                disk_read_ops_per_sec: r(|c| c.read_ops),
                disk_write_ops_per_sec: r(|c| c.write_ops),
                disk_read_mb_per_sec: r(|c| c.read_bytes).map(|x| x / MB),
                disk_write_mb_per_sec: r(|c| c.write_bytes).map(|x| x / MB),
                net_rx_packets_per_sec: r(|c| c.rx_packets),
                net_tx_packets_per_sec: r(|c| c.tx_packets),
                throttled_per_sec: r(|c| c.throttled),
            }
        })
        .collect()
}

fn num(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x:.decimals$}"))
}

fn pair(a: Option<f64>, b: Option<f64>, decimals: usize) -> String {
    format!("{}/{}", num(a, decimals), num(b, decimals))
}

pub fn render(rows: &[Row]) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.instance_id.clone(),
                r.instance_type.clone(),
                match (&r.state, r.vmm_up) {
                    (Some(s), Some(false)) => format!("{s} (no answer)"),
                    (Some(s), _) => s.clone(),
                    (None, _) => "-".into(),
                },
                num(r.vcpu_percent, 1),
                num(r.steal_percent, 1),
                num(r.exits_per_sec, 0),
                pair(r.memory_resident_mib, r.memory_mib, 0),
                pair(r.disk_read_ops_per_sec, r.disk_write_ops_per_sec, 0),
                pair(r.disk_read_mb_per_sec, r.disk_write_mb_per_sec, 2),
                pair(r.net_rx_packets_per_sec, r.net_tx_packets_per_sec, 0),
                num(r.throttled_per_sec, 0),
            ]
        })
        .collect();
    table(
        &[
            "INSTANCE",
            "TYPE",
            "STATE",
            "VCPU%",
            "STEAL%",
            "EXITS/S",
            "MEM RSS/SIZE MIB",
            "DISK R/W OPS/S",
            "DISK R/W MB/S",
            "NET RX/TX PKT/S",
            "THROTTLED/S",
        ],
        &body,
    )
}

/// The metrics URL beside the EC2 endpoint (same host, same base path).
pub fn metrics_url(endpoint: &Endpoint) -> String {
    format!(
        "http://{}{}/metrics",
        endpoint.host,
        endpoint.path.trim_end_matches('/')
    )
}

fn fetch(agent: &ureq::Agent, url: &str) -> Result<(Instant, String), CliError> {
    let mut resp = agent.get(url).call().map_err(|e| {
        CliError::Failed(format!(
            "cannot reach vireod's metrics at {url}: {e} (is vireod running, without --no-metrics?)"
        ))
    })?;
    let at = Instant::now();
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .with_config()
        .limit(MAX_METRICS_BYTES)
        .read_to_string()
        .map_err(|e| CliError::Failed(format!("reading {url}: {e}")))?;
    if status != 200 {
        let first = text
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(200)
            .collect::<String>();
        return Err(CliError::Failed(format!(
            "{url} answered HTTP {status}: {first} (is vireod serving metrics? see --no-metrics)"
        )));
    }
    Ok((at, text))
}

/// Runs `vireo top`.
pub fn run(endpoint: &Endpoint, interval: f64, once: bool, json: bool) -> Result<(), CliError> {
    if !(interval.is_finite() && interval > 0.0) {
        return Err(CliError::Usage(format!(
            "--interval must be a positive number of seconds, not {interval}"
        )));
    }
    let url = metrics_url(endpoint);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .http_status_as_error(false)
        // vireod is local; a proxy from the environment must not see its traffic.
        .proxy(None)
        .user_agent(concat!("vireo/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let tty = std::io::stdout().is_terminal();
    let (mut at, text) = fetch(&agent, &url)?;
    let mut before = parse(&text);
    loop {
        std::thread::sleep(Duration::from_secs_f64(interval));
        let (now, text) = fetch(&agent, &url)?;
        let after = parse(&text);
        let rows = rows(&before, &after, now.duration_since(at).as_secs_f64());
        let mut out = std::io::stdout().lock();
        let shown = if json {
            let s = serde_json::to_string_pretty(&rows)
                .map_err(|e| CliError::Failed(format!("cannot write JSON: {e}")))?;
            writeln!(out, "{s}")
        } else {
            // Clearing only makes sense on a screen; piped output keeps every table.
            if tty && !once {
                write!(out, "\x1b[H\x1b[2J")
                    .map_err(|e| CliError::Failed(format!("writing to stdout: {e}")))?;
            }
            if rows.is_empty() {
                writeln!(out, "no instances with a running VMM")
            } else {
                write!(out, "{}", render(&rows))
            }
        };
        shown
            .and_then(|_| out.flush())
            .map_err(|e| CliError::Failed(format!("writing to stdout: {e}")))?;
        if once {
            return Ok(());
        }
        before = after;
        at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: &str = r#"
# TYPE vireo_vcpu_seconds_total counter
vireo_vcpu_seconds_total{instance_id="i-a",instance_type="t3.micro",vcpu="0"} 10
vireo_vcpu_seconds_total{instance_id="i-a",instance_type="t3.micro",vcpu="1"} 20
vireo_vcpu_exits_total{instance_id="i-a",instance_type="t3.micro",vcpu="0",reason="hlt"} 100
vireo_vcpu_exits_total{instance_id="i-a",instance_type="t3.micro",vcpu="1",reason="io_in"} 50
vireo_block_requests_total{instance_id="i-a",instance_type="t3.micro",drive="root",op="read"} 10
vireo_block_requests_total{instance_id="i-a",instance_type="t3.micro",drive="root",op="flush"} 3
vireo_block_read_bytes_total{instance_id="i-a",instance_type="t3.micro",drive="root"} 0
vireo_memory_bytes{instance_id="i-a",instance_type="t3.micro"} 536870912
vireo_net_rx_packets_total{instance_id="i-a",instance_type="t3.micro",iface="eth0"} 1000
vireod_instance_info{instance_id="i-a",instance_type="t3.micro",state="running"} 1
vireod_vmm_up{instance_id="i-a",instance_type="t3.micro"} 1
vireod_instances{state="running"} 1
"#;

    const SECOND: &str = r#"
vireo_vcpu_seconds_total{instance_id="i-a",instance_type="t3.micro",vcpu="0"} 11
vireo_vcpu_seconds_total{instance_id="i-a",instance_type="t3.micro",vcpu="1"} 20.5
vireo_vcpu_exits_total{instance_id="i-a",instance_type="t3.micro",vcpu="0",reason="hlt"} 400
vireo_vcpu_exits_total{instance_id="i-a",instance_type="t3.micro",vcpu="1",reason="io_in"} 50
vireo_block_requests_total{instance_id="i-a",instance_type="t3.micro",drive="root",op="read"} 30
vireo_block_requests_total{instance_id="i-a",instance_type="t3.micro",drive="root",op="flush"} 90
vireo_block_read_bytes_total{instance_id="i-a",instance_type="t3.micro",drive="root"} 4000000
vireo_memory_bytes{instance_id="i-a",instance_type="t3.micro"} 536870912
vireo_net_rx_packets_total{instance_id="i-a",instance_type="t3.micro",iface="eth0"} 10
vireod_instance_info{instance_id="i-a",instance_type="t3.micro",state="running"} 1
vireod_vmm_up{instance_id="i-a",instance_type="t3.micro"} 1
vireod_instance_info{instance_id="i-b",instance_type="c5.large",state="pending"} 1
vireod_vmm_up{instance_id="i-b",instance_type="c5.large"} 0
"#;

    #[test]
    fn rates_are_differences_over_the_interval() {
        let rows = rows(&parse(FIRST), &parse(SECOND), 2.0);
        assert_eq!(rows.len(), 2);
        let a = &rows[0];
        assert_eq!(a.instance_id, "i-a");
        assert_eq!(a.instance_type, "t3.micro");
        assert_eq!(a.state.as_deref(), Some("running"));
        // (1 + 0.5) vCPU-seconds over 2 s, summed over vCPUs.
        assert_eq!(a.vcpu_percent, Some(75.0));
        assert_eq!(a.exits_per_sec, Some(150.0));
        // Flushes are neither reads nor writes.
        assert_eq!(a.disk_read_ops_per_sec, Some(10.0));
        assert_eq!(a.disk_read_mb_per_sec, Some(2.0));
        assert_eq!(a.memory_mib, Some(512.0));
        // A counter that went down (the VMM restarted) has no rate.
        assert_eq!(a.net_rx_packets_per_sec, None);
        // Metrics the VMM does not export stay unknown.
        assert_eq!(a.steal_percent, None);
        assert_eq!(a.disk_write_ops_per_sec, None);
        assert_eq!(a.memory_resident_mib, None);
        assert_eq!(a.throttled_per_sec, None);

        let b = &rows[1];
        assert_eq!(b.instance_id, "i-b");
        assert_eq!(b.vmm_up, Some(false));
        assert_eq!(b.vcpu_percent, None, "no earlier scrape, no rate");
        let table = render(&rows);
        assert!(table.contains("pending (no answer)"), "{table}");
        assert!(table.lines().nth(1).unwrap().contains("75.0"), "{table}");
    }

    #[test]
    fn rate_edges() {
        assert_eq!(rate(Some(1.0), Some(3.0), 0.5), Some(4.0));
        assert_eq!(rate(Some(3.0), Some(3.0), 1.0), Some(0.0));
        assert_eq!(rate(None, Some(3.0), 1.0), None);
        assert_eq!(rate(Some(3.0), None, 1.0), None);
        assert_eq!(rate(Some(1.0), Some(3.0), 0.0), None);
    }

    #[test]
    fn metrics_url_follows_the_endpoint() {
        let e = Endpoint::parse("http://127.0.0.1:8787").unwrap();
        assert_eq!(metrics_url(&e), "http://127.0.0.1:8787/metrics");
        let e = Endpoint::parse("http://h/api/").unwrap();
        assert_eq!(metrics_url(&e), "http://h/api/metrics");
    }
}
