//! `GET /metrics`: vireod's Prometheus endpoint. It scrapes the control socket of every
//! instance whose VMM should be up, labels each sample with the instance's ID and type, and adds
//! vireod's own gauges (instances by state, capacity, which VMMs answered).
//!
//! A VMM's answer is untrusted input (the VMM sits next to a guest): it is parsed line by line
//! with a strict parser, lines that are not valid samples or metadata are dropped, the answer's
//! size is capped, names in vireod's own `vireod_` namespace and labels vireod sets itself are
//! refused, and every sample is written back from its parsed parts.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use vireo_promtext::{self as prom, Kind, Line};

use crate::error::ApiError;
use crate::model::InstanceState;
use crate::process::VmmFiles;
use crate::service::vmm::{self, VmmError};
use crate::service::Service;

/// How long one VMM gets to answer; a scrape of vireod must not hang on one stuck VMM.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest VMM answer taken; today's VMM writes a few KiB even with many vCPUs.
pub const MAX_SCRAPE_BYTES: usize = 1 << 20;

/// Labels vireod attaches; a VMM may not set them itself.
const INSTANCE_ID: &str = "instance_id";
const INSTANCE_TYPE: &str = "instance_type";

/// States in which the instance is expected to have a VMM answering on its socket.
fn scraped(state: InstanceState) -> bool {
    matches!(
        state,
        InstanceState::Pending | InstanceState::Running | InstanceState::Stopping
    )
}

/// Metric families in the order first seen, each with one HELP and one TYPE at most, so the
/// output is valid however many instances report the same metric.
#[derive(Default)]
pub struct Families {
    order: Vec<String>,
    by_name: HashMap<String, Family>,
}

#[derive(Default)]
struct Family {
    help: Option<String>,
    kind: Option<Kind>,
    samples: String,
}

impl Families {
    fn family(&mut self, name: &str) -> &mut Family {
        if !self.by_name.contains_key(name) {
            self.order.push(name.to_string());
        }
        self.by_name.entry(name.to_string()).or_default()
    }

    /// The family a sample belongs to: a histogram's or summary's `_bucket`, `_sum` and `_count`
    /// series belong to the declared base name.
    fn family_of<'a>(&self, sample: &'a str) -> &'a str {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = sample.strip_suffix(suffix) {
                if matches!(
                    self.by_name.get(base).and_then(|f| f.kind),
                    Some(Kind::Histogram | Kind::Summary)
                ) {
                    return base;
                }
            }
        }
        sample
    }

    /// Adds one VMM's answer, every sample labelled with `labels` before its own. Returns how
    /// many lines were dropped.
    pub fn add_relabelled(&mut self, text: &str, labels: &[(&str, &str)]) -> usize {
        // A VMM's own HELP/TYPE apply to its own samples; they are only kept for the output
        // when the family has none yet, and a sample whose family another VMM typed
        // differently is dropped rather than mixed in.
        let mut own_kinds: HashMap<&str, Kind> = HashMap::new();
        let mut dropped = 0;
        for line in text.lines() {
            let ok = match prom::parse_line(line) {
                Ok(Line::Ignored) => true,
                Ok(Line::Help { name, text }) => {
                    if reserved(name) {
                        false
                    } else {
                        let f = self.family(name);
                        f.help.get_or_insert_with(|| text.to_string());
                        true
                    }
                }
                Ok(Line::Type { name, kind }) => {
                    if reserved(name) {
                        false
                    } else {
                        own_kinds.insert(name, kind);
                        let f = self.family(name);
                        f.kind.get_or_insert(kind);
                        true
                    }
                }
                Ok(Line::Sample(s)) => {
                    let family = self.family_of(s.name).to_string();
                    let conflict = s
                        .labels
                        .iter()
                        .any(|(k, _)| labels.iter().any(|(l, _)| l == k));
                    let agrees = match (own_kinds.get(family.as_str()), self.by_name.get(&family)) {
                        (Some(mine), Some(f)) => f.kind.is_none_or(|k| k == *mine),
                        // Untyped here: the family's TYPE, wherever it came from, covers it.
                        (None, _) | (_, None) => true,
                    };
                    if reserved(s.name) || conflict || !agrees {
                        false
                    } else {
                        let all = labels
                            .iter()
                            .copied()
                            .chain(s.labels.iter().map(|(k, v)| (*k, v.as_str())));
                        let f = self.family(&family);
                        prom::write_sample(&mut f.samples, s.name, all, s.value, s.timestamp);
                        true
                    }
                }
                Err(_) => false,
            };
            if !ok {
                dropped += 1;
            }
        }
        dropped
    }

    /// One gauge sample of vireod's own.
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        let f = self.family(name);
        f.help.get_or_insert_with(|| help.to_string());
        f.kind.get_or_insert(Kind::Gauge);
        prom::write_sample(&mut f.samples, name, labels.iter().copied(), value, None);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for name in &self.order {
            let f = &self.by_name[name];
            if let Some(h) = &f.help {
                out.push_str(&format!("# HELP {name} {h}\n"));
            }
            if let Some(k) = f.kind {
                out.push_str(&format!("# TYPE {name} {}\n", k.as_str()));
            }
            out.push_str(&f.samples);
        }
        out
    }
}

/// vireod's own namespace: a VMM cannot forge vireod's gauges.
fn reserved(name: &str) -> bool {
    name.starts_with("vireod_")
}

/// Why one VMM's metrics are missing from a scrape (logged; the VMM counts as down).
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("no answer within {SCRAPE_TIMEOUT:?}")]
    Timeout,
    #[error("{0}")]
    Io(#[source] std::io::Error),
    #[error("HTTP {0}")]
    Status(u16),
    #[error("answer of {0} bytes is over the {MAX_SCRAPE_BYTES}-byte limit")]
    TooLarge(usize),
}

/// Asks one VMM for its metrics, waiting at most [`SCRAPE_TIMEOUT`].
async fn scrape(sock: PathBuf) -> Result<String, ScrapeError> {
    match vmm::metrics(&sock, SCRAPE_TIMEOUT).await {
        Err(VmmError::Io { source, .. }) if source.kind() == std::io::ErrorKind::TimedOut => {
            Err(ScrapeError::Timeout)
        }
        Err(VmmError::Io { source, .. }) => Err(ScrapeError::Io(source)),
        Err(VmmError::Status { status, .. }) => Err(ScrapeError::Status(status)),
        Ok(body) if body.len() > MAX_SCRAPE_BYTES => Err(ScrapeError::TooLarge(body.len())),
        Ok(body) => Ok(body),
    }
}

/// The whole `/metrics` answer.
pub async fn collect(svc: &Service) -> Result<String, ApiError> {
    let (instances, _) = svc.describe_instances(&[], &[], None, None)?;
    let (capacity, used) = svc.capacity()?;

    let targets: Vec<_> = instances.iter().filter(|i| scraped(i.state)).collect();
    let answers = futures_join(
        targets
            .iter()
            .map(|i| scrape(VmmFiles::api_socket(&i.dir)))
            .collect(),
    )
    .await;

    let mut fam = Families::default();
    let mut up = Vec::new();
    for (i, answer) in targets.iter().zip(answers) {
        let labels = [
            (INSTANCE_ID, i.instance_id.as_str()),
            (INSTANCE_TYPE, i.instance_type.as_str()),
        ];
        match answer {
            Ok(text) => {
                let dropped = fam.add_relabelled(&text, &labels);
                if dropped > 0 {
                    tracing::warn!(
                        "metrics of {}: dropped {dropped} lines that are not valid Prometheus text",
                        i.instance_id
                    );
                }
                up.push((i, 1.0));
            }
            Err(e) => {
                tracing::info!("metrics of {}: VMM did not answer: {e}", i.instance_id);
                up.push((i, 0.0));
            }
        }
    }

    for i in &targets {
        fam.gauge(
            "vireod_instance_info",
            "Always 1: the state of each instance that has a VMM (for joins and `vireo top`).",
            &[
                (INSTANCE_ID, &i.instance_id),
                (INSTANCE_TYPE, &i.instance_type),
                ("state", i.state.name()),
            ],
            1.0,
        );
    }
    for (i, v) in up {
        fam.gauge(
            "vireod_vmm_up",
            "Whether the instance's VMM answered this scrape (1) or not (0).",
            &[
                (INSTANCE_ID, &i.instance_id),
                (INSTANCE_TYPE, &i.instance_type),
            ],
            v,
        );
    }
    for st in InstanceState::ALL {
        let n = instances.iter().filter(|i| i.state == st).count();
        fam.gauge(
            "vireod_instances",
            "Instances vireod knows, by state.",
            &[("state", st.name())],
            n as f64,
        );
    }
    fam.gauge(
        "vireod_capacity_vcpus",
        "vCPUs this host lends (host CPUs times the overcommit ratio, or fixed).",
        &[],
        capacity.vcpus as f64,
    );
    fam.gauge(
        "vireod_capacity_memory_mib",
        "Guest memory this host lends, in MiB.",
        &[],
        capacity.memory_mib as f64,
    );
    fam.gauge(
        "vireod_used_vcpus",
        "vCPUs held by instances that have a VMM.",
        &[],
        used.vcpus as f64,
    );
    fam.gauge(
        "vireod_used_memory_mib",
        "Guest memory held by instances that have a VMM, in MiB.",
        &[],
        used.memory_mib as f64,
    );
    Ok(fam.render())
}

/// Runs the scrapes side by side and returns their results in order.
async fn futures_join<F>(futures: Vec<F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        match h.await {
            Ok(v) => out.push(v),
            // The scrape futures catch their own failures; a panic inside one is a bug.
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [(&str, &str); 2] = [(INSTANCE_ID, "i-0a"), (INSTANCE_TYPE, "t3.micro")];
    const B: [(&str, &str); 2] = [(INSTANCE_ID, "i-0b"), (INSTANCE_TYPE, "c5.large")];

    const VMM: &str = "\
# HELP vireo_vcpu_exits_total VM exits by vCPU and reason.
# TYPE vireo_vcpu_exits_total counter
vireo_vcpu_exits_total{vcpu=\"0\",reason=\"hlt\"} 12
# HELP vireo_memory_bytes Guest memory size.
# TYPE vireo_memory_bytes gauge
vireo_memory_bytes 536870912
";

    #[test]
    fn labels_go_first_on_labelled_and_unlabelled_samples() {
        let mut f = Families::default();
        assert_eq!(f.add_relabelled(VMM, &A), 0);
        assert_eq!(
            f.render(),
            "\
# HELP vireo_vcpu_exits_total VM exits by vCPU and reason.
# TYPE vireo_vcpu_exits_total counter
vireo_vcpu_exits_total{instance_id=\"i-0a\",instance_type=\"t3.micro\",vcpu=\"0\",reason=\"hlt\"} 12
# HELP vireo_memory_bytes Guest memory size.
# TYPE vireo_memory_bytes gauge
vireo_memory_bytes{instance_id=\"i-0a\",instance_type=\"t3.micro\"} 536870912
"
        );
    }

    #[test]
    fn help_and_type_once_and_samples_grouped_across_instances() {
        let mut f = Families::default();
        f.add_relabelled(VMM, &A);
        f.add_relabelled(VMM, &B);
        let out = f.render();
        for meta in [
            "# HELP vireo_vcpu_exits_total ",
            "# TYPE vireo_vcpu_exits_total ",
            "# TYPE vireo_memory_bytes ",
        ] {
            assert_eq!(out.matches(meta).count(), 1, "{meta} in\n{out}");
        }
        let lines: Vec<&str> = out.lines().collect();
        // Both instances' exits come right after the family's TYPE, before the next family.
        assert!(lines[2].starts_with("vireo_vcpu_exits_total{instance_id=\"i-0a\""));
        assert!(lines[3]
            .starts_with("vireo_vcpu_exits_total{instance_id=\"i-0b\",instance_type=\"c5.large\""));
        assert!(lines[4].starts_with("# HELP vireo_memory_bytes"));
        assert_eq!(lines.len(), 8);
    }

    #[test]
    fn junk_and_forgeries_are_dropped() {
        let text = "\
<html>not metrics</html>
vireo_ok 1
vireo_bad{x=\"unterminated} 1
vireo_two_values 1 2 3
# TYPE vireo_ok wibble
vireod_vmm_up{instance_id=\"i-other\"} 1
# TYPE vireod_used_vcpus gauge
vireo_spoof{instance_id=\"i-other\"} 1
vireo_spoof2{instance_type=\"x\"} 1
# a comment is not an error
";
        let mut f = Families::default();
        assert_eq!(f.add_relabelled(text, &A), 8);
        assert_eq!(
            f.render(),
            "vireo_ok{instance_id=\"i-0a\",instance_type=\"t3.micro\"} 1\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut f = Families::default();
        f.add_relabelled(
            "m{path=\"a\\\\b\\\"c\\nd\"} 1\n",
            &[(INSTANCE_ID, "i-\"q\"\\"), (INSTANCE_TYPE, "t\n")],
        );
        assert_eq!(
            f.render(),
            "m{instance_id=\"i-\\\"q\\\"\\\\\",instance_type=\"t\\n\",path=\"a\\\\b\\\"c\\nd\"} 1\n"
        );
    }

    #[test]
    fn a_family_typed_differently_by_another_vmm_is_not_mixed() {
        let mut f = Families::default();
        f.add_relabelled("# TYPE m counter\nm 1\n", &A);
        assert_eq!(f.add_relabelled("# TYPE m gauge\nm 2\n", &B), 1);
        let out = f.render();
        assert_eq!(
            out,
            "# TYPE m counter\nm{instance_id=\"i-0a\",instance_type=\"t3.micro\"} 1\n"
        );
    }

    #[test]
    fn histogram_series_stay_in_their_family() {
        let mut f = Families::default();
        f.add_relabelled(
            "# TYPE lat histogram\nlat_bucket{le=\"+Inf\"} 3\nlat_sum 0.5\nlat_count 3\n",
            &A,
        );
        f.add_relabelled("# TYPE lat histogram\nlat_count 4\n", &B);
        let out = f.render();
        assert_eq!(out.matches("# TYPE").count(), 1);
        assert!(
            out.ends_with("lat_count{instance_id=\"i-0b\",instance_type=\"c5.large\"} 4\n"),
            "{out}"
        );
    }
}
