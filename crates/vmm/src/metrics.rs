//! A machine's metrics as Prometheus text (format 0.0.4, written with vireo-promtext) for
//! `GET /metrics`: vCPU times and exits, memory, balloon, drives and net devices
//! (docs/api.md lists every family), and the process-level readings behind them that are not
//! device counters (resident memory).

use devices::metrics::{HistogramSnapshot, LATENCY_BOUNDS_NS};
use devices::rate_limiter::ThrottleCounters;
use devices::virtio::net::NetCounters;
use vireo_promtext::{Exposition, Kind};
use vm_memory::{GuestMemoryBackend as _, GuestMemoryRegion as _, MemoryRegionAddress};

use crate::handle::MachineHandle;

/// A counter family read from each device's counters `T`: its name, help and reading.
type CounterFamily<T> = (&'static str, &'static str, fn(&T) -> u64);

/// The project's one writer of the format (vireo-promtext), fed the values as the counters
/// hold them.
#[derive(Default)]
pub(crate) struct Writer(Exposition);

/// A sample's value: counters are u64, times and ratios f64.
pub(crate) trait SampleValue {
    fn into_f64(self) -> f64;
}

impl SampleValue for u64 {
    fn into_f64(self) -> f64 {
        // Exact, and written with the same digits as the integer, below 2^53 (9 PB, or 104
        // days of nanoseconds: counters here are bytes, requests and seconds).
        self as f64
    }
}

impl SampleValue for f64 {
    fn into_f64(self) -> f64 {
        self
    }
}

impl Writer {
    pub(crate) fn family(&mut self, name: &str, kind: Kind, help: &str) {
        self.0.family(name, kind, help);
    }

    pub(crate) fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl SampleValue) {
        self.0.sample(name, labels, value.into_f64());
    }

    /// A latency histogram: buckets at [`LATENCY_BOUNDS_NS`], in seconds.
    pub(crate) fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
        let buckets = LATENCY_BOUNDS_NS
            .iter()
            .zip(&h.cumulative)
            .map(|(bound, n)| (*bound as f64 / 1e9, *n));
        self.0
            .histogram(name, labels, buckets, h.count, h.sum_seconds);
    }

    /// A family of one sample without labels.
    pub(crate) fn single(&mut self, name: &str, kind: Kind, help: &str, value: impl SampleValue) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// Counter families read the same way from each of a set of devices: `table` holds each
    /// family's name, help and reading of a device's counters `T`; `labels(i)` names device `i`.
    pub(crate) fn device_counters<'l, T>(
        &mut self,
        table: &[CounterFamily<T>],
        devices: &[std::sync::Arc<T>],
        labels: impl Fn(usize) -> Vec<(&'l str, &'l str)>,
    ) {
        for (name, help, get) in table {
            self.family(name, Kind::Counter, help);
            for (i, d) in devices.iter().enumerate() {
                self.sample(name, &labels(i), get(d));
            }
        }
    }

    /// The two rate-limiter families of a kind of device (`{prefix}_throttled_total` and
    /// `{prefix}_throttled_seconds_total`, helped by `help`): one sample for each limiter,
    /// labelled as given.
    pub(crate) fn throttle_counters(
        &mut self,
        [total, seconds]: [(&str, &str); 2],
        limiters: &[(Vec<(&str, &str)>, &ThrottleCounters)],
    ) {
        self.family(total.0, Kind::Counter, total.1);
        for (l, t) in limiters {
            self.sample(total.0, l, t.throttled.get());
        }
        self.family(seconds.0, Kind::Counter, seconds.1);
        for (l, t) in limiters {
            self.sample(seconds.0, l, secs(t.throttled_ns.get()));
        }
    }

    pub(crate) fn finish(self) -> String {
        self.0.finish()
    }
}

/// The machine's metrics, every family in docs/api.md's order.
pub fn render(m: &MachineHandle) -> String {
    let mut e = Writer::default();
    vcpu_metrics(m, &mut e);
    memory_metrics(m, &mut e);
    block_metrics(m, &mut e);
    net_metrics(m, &mut e);
    e.finish()
}

fn vcpu_metrics(m: &MachineHandle, e: &mut Writer) {
    let counters = m.exit_counters();
    let ids: Vec<String> = (0..counters.len()).map(|i| i.to_string()).collect();
    let times: Vec<(u64, u64)> = counters.iter().map(|c| c.thread_times()).collect();
    e.family(
        "vireo_vcpu_seconds_total",
        Kind::Counter,
        "CPU time (user and system, guest mode included) of each vCPU thread.",
    );
    for (id, (cpu, _)) in ids.iter().zip(&times) {
        e.sample("vireo_vcpu_seconds_total", &[("vcpu", id)], secs(*cpu));
    }
    e.family(
        "vireo_vcpu_steal_seconds_total",
        Kind::Counter,
        "Time each vCPU thread was runnable but waiting for a host CPU (the steal time \
         KVM reports to the guest).",
    );
    for (id, (_, wait)) in ids.iter().zip(&times) {
        e.sample(
            "vireo_vcpu_steal_seconds_total",
            &[("vcpu", id)],
            secs(*wait),
        );
    }
    e.family(
        "vireo_vcpu_exits_total",
        Kind::Counter,
        "VM exits handled by the VMM, by vCPU and reason.",
    );
    let mut all = 0u64;
    for (id, c) in ids.iter().zip(counters) {
        let s = c.snapshot();
        for (reason, n) in [
            ("io_in", s.io_in),
            ("io_out", s.io_out),
            ("mmio_read", s.mmio_read),
            ("mmio_write", s.mmio_write),
            ("hlt", s.hlt),
            ("interrupted", s.interrupted),
            ("other", s.other),
        ] {
            all += n;
            e.sample(
                "vireo_vcpu_exits_total",
                &[("vcpu", id), ("reason", reason)],
                n,
            );
        }
    }
    e.single(
        "vireo_vm_exits_total",
        Kind::Counter,
        "VM exits handled by the VMM, every vCPU and reason together.",
        all,
    );
}

fn memory_metrics(m: &MachineHandle, e: &mut Writer) {
    e.single(
        "vireo_memory_bytes",
        Kind::Gauge,
        "Guest memory size.",
        m.memory_mib() << 20,
    );
    let guest: Vec<(usize, usize)> = m
        .machine()
        .mem
        .iter()
        .filter_map(|r| {
            let host = r.get_host_address(MemoryRegionAddress(0)).ok()?;
            Some((host as usize, r.len() as usize))
        })
        .collect();
    if let Some((guest_rss, vmm_rss)) = resident_bytes(&guest) {
        e.single(
            "vireo_memory_resident_bytes",
            Kind::Gauge,
            "Guest memory backed by host RAM (resident in the VMM process).",
            guest_rss,
        );
        e.single(
            "vireo_vmm_resident_bytes",
            Kind::Gauge,
            "Resident memory of the VMM process other than guest memory.",
            vmm_rss,
        );
    }
    if let Some(b) = &m.devices().balloon {
        let s = b.status();
        e.single(
            "vireo_balloon_target_bytes",
            Kind::Gauge,
            "Memory the balloon asks the guest to give back.",
            u64::from(s.target_pages) * 4096,
        );
        e.single(
            "vireo_balloon_actual_bytes",
            Kind::Gauge,
            "Memory the guest has given back to the balloon.",
            u64::from(s.actual_pages) * 4096,
        );
        if let Some(free) = s.stats.and_then(|st| st.free_memory) {
            e.single(
                "vireo_guest_free_memory_bytes",
                Kind::Gauge,
                "Free memory the guest last reported through the balloon.",
                free,
            );
        }
    }
}

fn block_metrics(m: &MachineHandle, e: &mut Writer) {
    let drives = &m.devices().drive_stats;
    if drives.is_empty() {
        return;
    }
    let config = &m.machine().config.drives;
    let ids: Vec<String> = (0..drives.len()).map(|i| i.to_string()).collect();
    let labels = |i: usize| -> Vec<(&str, &str)> {
        let mut l = vec![("drive", ids[i].as_str())];
        if let Some(serial) = config.get(i).and_then(|d| d.serial.as_deref()) {
            l.push(("serial", serial));
        }
        l
    };
    e.family(
        "vireo_block_requests_total",
        Kind::Counter,
        "Requests a drive completed, by operation (failed ones too).",
    );
    for (i, s) in drives.iter().enumerate() {
        for (op, c) in [
            ("read", &s.reads),
            ("write", &s.writes),
            ("flush", &s.flushes),
            ("discard", &s.discards),
            ("other", &s.other),
        ] {
            let mut l = labels(i);
            l.push(("op", op));
            e.sample("vireo_block_requests_total", &l, c.get());
        }
    }
    let simple: [CounterFamily<devices::virtio::block::Stats>; 7] = [
        (
            "vireo_block_read_bytes_total",
            "Bytes a drive read for the guest.",
            |s| s.read_bytes.get(),
        ),
        (
            "vireo_block_written_bytes_total",
            "Bytes the guest wrote to a drive.",
            |s| s.written_bytes.get(),
        ),
        (
            "vireo_block_errors_total",
            "Requests that failed or were malformed.",
            |s| s.errors.get(),
        ),
        (
            "vireo_block_notifications_total",
            "Queue notifications from the guest (each a VM exit handled in the kernel).",
            |s| s.notifications.get(),
        ),
        (
            "vireo_block_interrupts_total",
            "Interrupts the drive raised in the guest.",
            |s| s.interrupts.get(),
        ),
        (
            "vireo_block_batches_total",
            "Groups of two or more reads and writes handed to the disk together (io_engine=io_uring).",
            |s| s.batches.get(),
        ),
        (
            "vireo_block_batched_requests_total",
            "Requests in those groups.",
            |s| s.batched.get(),
        ),
    ];
    e.device_counters(&simple, drives, labels);
    e.family(
        "vireo_block_request_seconds",
        Kind::Histogram,
        "Time to serve a request once taken off the queue (after any rate-limit wait).",
    );
    for (i, s) in drives.iter().enumerate() {
        e.histogram(
            "vireo_block_request_seconds",
            &labels(i),
            &s.latency.snapshot(),
        );
    }
    let throttle: Vec<_> = m.devices().drives.iter().map(|h| h.counters()).collect();
    let limiters: Vec<_> = throttle
        .iter()
        .enumerate()
        .map(|(i, t)| (labels(i), &**t))
        .collect();
    e.throttle_counters(
        [
            (
                "vireo_block_throttled_total",
                "Times a drive's rate limiter held its queue back.",
            ),
            (
                "vireo_block_throttled_seconds_total",
                "Time a drive's queue was held back by its rate limiter (counted as each wait ends).",
            ),
        ],
        &limiters,
    );
}

fn net_metrics(m: &MachineHandle, e: &mut Writer) {
    let ifaces = &m.devices().net_stats;
    if ifaces.is_empty() {
        return;
    }
    let config = &m.machine().config.net;
    let ids: Vec<String> = (0..ifaces.len()).map(|i| i.to_string()).collect();
    let labels = |i: usize| -> Vec<(&str, &str)> {
        let mut l = vec![("iface", ids[i].as_str())];
        if let Some(n) = config.get(i) {
            l.push(("tap", n.tap.as_str()));
        }
        l
    };
    let families: [CounterFamily<NetCounters>; 6] = [
        (
            "vireo_net_rx_packets_total",
            "Frames delivered to the guest.",
            |c| NetCounters::get(&c.rx_packets),
        ),
        (
            "vireo_net_rx_bytes_total",
            "Bytes delivered to the guest (Ethernet frames, no virtio header).",
            |c| NetCounters::get(&c.rx_bytes),
        ),
        (
            "vireo_net_rx_dropped_total",
            "Frames from the TAP not delivered: malformed, or the guest's buffers unusable.",
            |c| NetCounters::get(&c.rx_dropped),
        ),
        (
            "vireo_net_tx_packets_total",
            "Frames the guest sent to the TAP.",
            |c| NetCounters::get(&c.tx_packets),
        ),
        (
            "vireo_net_tx_bytes_total",
            "Bytes the guest sent (Ethernet frames, no virtio header).",
            |c| NetCounters::get(&c.tx_bytes),
        ),
        (
            "vireo_net_tx_dropped_total",
            "Guest frames not sent: malformed, oversize, or refused by the TAP.",
            |c| NetCounters::get(&c.tx_dropped),
        ),
    ];
    e.device_counters(&families, ifaces, labels);
    let throttle: Vec<_> = m
        .devices()
        .net
        .iter()
        .map(|(rx, tx)| (rx.counters(), tx.counters()))
        .collect();
    let mut limiters = Vec::new();
    for (i, (rx, tx)) in throttle.iter().enumerate() {
        for (dir, t) in [("rx", rx), ("tx", tx)] {
            let mut l = labels(i);
            l.push(("direction", dir));
            limiters.push((l, &**t));
        }
    }
    e.throttle_counters(
        [
            (
                "vireo_net_throttled_total",
                "Times an interface's rate limiter held a direction back.",
            ),
            (
                "vireo_net_throttled_seconds_total",
                "Time an interface's direction was held back by its rate limiter.",
            ),
        ],
        &limiters,
    );
}

/// Nanoseconds as the seconds Prometheus expects.
fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Resident memory, from /proc/self/smaps: (guest RAM, everything else the process maps), in
/// bytes. `guest` lists the host address ranges of guest RAM as (start, length).
///
/// smaps rather than mincore: it counts exactly the pages mapped into this process (mincore
/// reports page-cache residency for the untouched pages of a snapshot's file mapping), and
/// one read covers the VMM's own memory too. It walks the page tables of every mapping, which
/// for a scrape every few seconds is cheap next to the guest's own use of them.
pub fn resident_bytes(guest: &[(usize, usize)]) -> Option<(u64, u64)> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    Some(split_rss(&smaps, guest))
}

fn split_rss(smaps: &str, guest: &[(usize, usize)]) -> (u64, u64) {
    let (mut in_guest, mut other) = (0u64, 0u64);
    let mut current_is_guest = false;
    for line in smaps.lines() {
        if let Some(kb) = line.strip_prefix("Rss:") {
            let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            if current_is_guest {
                in_guest += kb * 1024;
            } else {
                other += kb * 1024;
            }
        } else if let Some((start, end)) = vma_range(line) {
            // A guest RAM mapping may be split into several VMAs (madvise, mprotect); each lies
            // inside one of the ranges.
            current_is_guest = guest
                .iter()
                .any(|&(s, len)| start >= s && end <= s.saturating_add(len));
        }
    }
    (in_guest, other)
}

/// The address range of an smaps mapping header (`start-end perms offset dev inode path`).
fn vma_range(line: &str) -> Option<(usize, usize)> {
    let range = line.split_ascii_whitespace().next()?;
    let (s, e) = range.split_once('-')?;
    Some((
        usize::from_str_radix(s, 16).ok()?,
        usize::from_str_radix(e, 16).ok()?,
    ))
}

/// A parsed sample: name, labels, value.
#[cfg(test)]
pub(crate) type Sample = (String, Vec<(String, String)>, f64);

/// A small parser of the exposition format, for tests here and in the API's: checks every
/// line and returns the samples as (name, labels, value).
#[cfg(test)]
pub(crate) fn parse(text: &str) -> Result<Vec<Sample>, String> {
    use std::collections::{HashMap, HashSet};

    fn valid_name(n: &str) -> bool {
        let mut c = n.chars();
        matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
            && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
    }
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helped = HashSet::new();
    let mut samples = Vec::new();
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("the text does not end with a newline".into());
    }
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or("");
            if !valid_name(name) || !helped.insert(name.to_string()) {
                return Err(format!("bad or repeated HELP: {line}"));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let (name, kind) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
            if !valid_name(name)
                || !["counter", "gauge", "histogram"].contains(&kind)
                || it.next().is_some()
                || types.insert(name.to_string(), kind.to_string()).is_some()
            {
                return Err(format!("bad or repeated TYPE: {line}"));
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            return Err(format!("unexpected line: {line:?}"));
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => return Err(format!("no value: {line}")),
        };
        if !valid_name(name) {
            return Err(format!("bad metric name: {line}"));
        }
        let mut labels = Vec::new();
        let rest = if let Some(mut r) = rest.strip_prefix('{') {
            loop {
                let Some((k, after)) = r.split_once("=\"") else {
                    return Err(format!("bad labels: {line}"));
                };
                if !valid_name(k) || k.contains(':') {
                    return Err(format!("bad label name {k:?}: {line}"));
                }
                let mut value = String::new();
                let mut chars = after.char_indices();
                let end = loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c @ ('\\' | '"'))) => value.push(c),
                            _ => return Err(format!("bad escape: {line}")),
                        },
                        Some((i, '"')) => break i,
                        Some((_, c)) => value.push(c),
                        None => return Err(format!("unterminated label value: {line}")),
                    }
                };
                labels.push((k.to_string(), value));
                r = &after[end + 1..];
                if let Some(more) = r.strip_prefix(',') {
                    r = more;
                } else if let Some(done) = r.strip_prefix('}') {
                    break done;
                } else {
                    return Err(format!("bad labels: {line}"));
                }
            }
        } else {
            rest
        };
        let Some(value) = rest.strip_prefix(' ') else {
            return Err(format!("no space before the value: {line}"));
        };
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| format!("bad value: {line}"))?,
        };
        // Every sample belongs to a family declared before it.
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name);
        if !types.contains_key(family) || !helped.contains(family) {
            return Err(format!("sample without HELP and TYPE: {line}"));
        }
        if types[family] == "counter" && (value < 0.0 || !name.ends_with("_total")) {
            return Err(format!("bad counter: {line}"));
        }
        samples.push((name.to_string(), labels, value));
    }
    check_histograms(&samples, &types)?;
    Ok(samples)
}

/// Buckets cumulative with increasing `le`, ending at `+Inf` equal to `_count`.
#[cfg(test)]
fn check_histograms(
    samples: &[Sample],
    types: &std::collections::HashMap<String, String>,
) -> Result<(), String> {
    use std::collections::BTreeMap;
    type Key = (String, Vec<(String, String)>);
    let mut buckets: BTreeMap<Key, Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts: BTreeMap<Key, f64> = BTreeMap::new();
    for (name, labels, v) in samples {
        if let Some(f) = name.strip_suffix("_bucket") {
            if types.get(f).map(String::as_str) != Some("histogram") {
                continue;
            }
            let mut rest = labels.clone();
            let Some(i) = rest.iter().position(|(k, _)| k == "le") else {
                return Err(format!("{name} without le"));
            };
            let le = rest.remove(i).1;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().map_err(|_| format!("bad le {le}"))?
            };
            buckets
                .entry((f.to_string(), rest))
                .or_default()
                .push((le, *v));
        } else if let Some(f) = name.strip_suffix("_count") {
            if types.get(f).map(String::as_str) == Some("histogram") {
                counts.insert((f.to_string(), labels.clone()), *v);
            }
        }
    }
    for (key, b) in &buckets {
        if !b.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1) {
            return Err(format!("{key:?}: buckets not cumulative"));
        }
        match b.last() {
            Some(&(le, n)) if le.is_infinite() && Some(&n) == counts.get(key) => {}
            _ => return Err(format!("{key:?}: +Inf bucket missing or not the count")),
        }
    }
    if buckets.len() != counts.len() {
        return Err("a histogram has a _count without buckets".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use devices::metrics::LatencyHistogram;

    use super::*;

    #[test]
    fn exposition_is_valid_and_escapes_labels() {
        let h = LatencyHistogram::default();
        for us in [10, 60, 700, 3_000, 2_000_000] {
            h.observe(Duration::from_micros(us));
        }
        let mut e = Writer::default();
        e.family("vireo_x_total", Kind::Counter, "An x.\nSecond line.");
        e.sample(
            "vireo_x_total",
            &[("drive", "0"), ("serial", "a\"b\\c\nd")],
            7u64,
        );
        e.sample("vireo_x_total", &[], 0u64);
        e.family("vireo_y_seconds", Kind::Histogram, "A y.");
        e.histogram("vireo_y_seconds", &[("drive", "0")], &h.snapshot());
        e.family("vireo_z_bytes", Kind::Gauge, "A z.");
        e.sample("vireo_z_bytes", &[], 0.5);
        let text = e.finish();
        let samples = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(samples[0].1[1].1, "a\"b\\c\nd", "the serial round-trips");
        let inf = samples
            .iter()
            .find(|(n, l, _)| n == "vireo_y_seconds_bucket" && l.iter().any(|(_, v)| v == "+Inf"))
            .unwrap();
        assert_eq!(inf.2, 5.0);
        let first = samples
            .iter()
            .find(|(n, l, _)| n == "vireo_y_seconds_bucket" && l[1].1 == "0.00005")
            .unwrap();
        assert_eq!(first.2, 1.0, "only the 10 us request is under 50 us");
    }

    #[test]
    fn the_parser_rejects_what_prometheus_would() {
        let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 3\n";
        assert!(parse(ok).is_ok());
        for bad in [
            "a_total 3\n",                                                        // no TYPE
            "# HELP a_total A.\n# TYPE a_total counter\n1a_total 3\n",             // name
            "# HELP a_total A.\n# TYPE a_total counter\na_total{x=1} 3\n",         // quotes
            "# HELP a_total A.\n# TYPE a_total counter\na_total 3",                // newline
            "# HELP a_total A.\n# TYPE a_total counter\na_total -1\n",             // negative
            "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"}3\n",      // space
            "# HELP h A.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\nh_sum 0\n",
            "# HELP h A.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_count 2\nh_sum 0\n",
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn rss_is_split_between_guest_ram_and_the_rest() {
        let smaps = "\
7f0000000000-7f0000200000 rw-p 00000000 00:00 0
Size:               2048 kB
Rss:                1024 kB
7f0000200000-7f0000400000 rw-p 00000000 00:00 0
Size:               2048 kB
Rss:                   8 kB
55aef2cf4000-55aef2cf6000 r--p 00000000 fe:00 247282                     /usr/bin/vireo-vmm
Size:                  8 kB
Rss:                   4 kB
7fff00000000-7fff00001000 rw-p 00000000 00:00 0                          [stack]
Rss:                   4 kB
";
        let guest = [(0x7f00_0000_0000, 0x40_0000)];
        assert_eq!(split_rss(smaps, &guest), ((1024 + 8) * 1024, 8 * 1024));
        assert_eq!(split_rss(smaps, &[]), (0, (1024 + 8 + 8) * 1024));
    }

    #[test]
    fn this_process_has_resident_memory() {
        let buf = vec![1u8; 1 << 20];
        let range = [(buf.as_ptr() as usize, buf.len())];
        let (_, total) = resident_bytes(&[]).expect("smaps");
        assert!(total > 1 << 20, "{total}");
        // A heap buffer shares its VMA with other allocations, so it is never counted as
        // "guest" unless a whole VMA lies inside it.
        let (g, _) = resident_bytes(&range).unwrap();
        assert!(g <= 1 << 20);
        std::hint::black_box(buf);
    }
}
