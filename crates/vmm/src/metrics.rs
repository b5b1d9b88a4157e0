//! Prometheus text exposition (format 0.0.4) for `GET /metrics`, and the process-level readings
//! behind it that are not device counters (resident memory).

use std::fmt::Write as _;

use devices::metrics::{HistogramSnapshot, LATENCY_BOUNDS_NS};

/// Builds the exposition: each metric family once, `# HELP` and `# TYPE` before its samples.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

/// A sample's labels, in order.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

impl Exposition {
    /// Starts a family; `kind` is counter, gauge or histogram.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    pub fn sample(&mut self, name: &str, labels: Labels<'_>, value: impl std::fmt::Display) {
        self.out.push_str(name);
        write_labels(&mut self.out, labels, None);
        let _ = writeln!(self.out, " {value}");
    }

    /// A histogram's `_bucket` (cumulative, `le` in seconds, then `+Inf`), `_sum` and `_count`
    /// samples; the family must have been started with kind histogram.
    pub fn histogram(&mut self, name: &str, labels: Labels<'_>, h: &HistogramSnapshot) {
        for (bound, n) in LATENCY_BOUNDS_NS.iter().zip(&h.cumulative) {
            let le = format!("{}", *bound as f64 / 1e9);
            self.bucket(name, labels, &le, *n);
        }
        self.bucket(name, labels, "+Inf", h.count);
        self.sample(&format!("{name}_sum"), labels, h.sum_seconds);
        self.sample(&format!("{name}_count"), labels, h.count);
    }

    fn bucket(&mut self, name: &str, labels: Labels<'_>, le: &str, n: u64) {
        self.out.push_str(name);
        self.out.push_str("_bucket");
        write_labels(&mut self.out, labels, Some(le));
        let _ = writeln!(self.out, " {n}");
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn write_labels(out: &mut String, labels: Labels<'_>, le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (k, v) in labels.iter().copied().chain(le.map(|l| ("le", l))) {
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(out, "{k}=\"{}\"", escape_label(v));
    }
    out.push('}');
}

/// Label values may hold anything (a drive's serial is whatever the operator wrote); the format
/// escapes backslash, double quote and newline.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
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
        let mut e = Exposition::default();
        e.family("vireo_x_total", "counter", "An x.\nSecond line.");
        e.sample(
            "vireo_x_total",
            &[("drive", "0"), ("serial", "a\"b\\c\nd")],
            7,
        );
        e.sample("vireo_x_total", &[], 0);
        e.family("vireo_y_seconds", "histogram", "A y.");
        e.histogram("vireo_y_seconds", &[("drive", "0")], &h.snapshot());
        e.family("vireo_z_bytes", "gauge", "A z.");
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
