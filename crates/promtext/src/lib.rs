//! The Prometheus text exposition format (version 0.0.4), one line at a time.
//!
//! vireod relabels text written by VMMs it does not trust, and `vireo top` reads vireod's
//! answer, so the parser is strict: a line is a `# HELP`, a `# TYPE`, another comment, a blank
//! line or a well-formed sample, and anything else is rejected rather than passed on. Samples are
//! written back from their parsed parts, never by splicing the original text, so whatever comes
//! out is well-formed whatever went in.

#![forbid(unsafe_code)]

use std::fmt::Write;

/// One parsed line.
#[derive(Debug, Clone, PartialEq)]
pub enum Line<'a> {
    /// `# HELP name text` (the text keeps its `\\` and `\n` escapes).
    Help {
        name: &'a str,
        text: &'a str,
    },
    /// `# TYPE name kind`.
    Type {
        name: &'a str,
        kind: Kind,
    },
    /// Any other comment, or a blank line: carries nothing.
    Ignored,
    Sample(Sample<'a>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
            Kind::Summary => "summary",
            Kind::Untyped => "untyped",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "counter" => Kind::Counter,
            "gauge" => Kind::Gauge,
            "histogram" => Kind::Histogram,
            "summary" => Kind::Summary,
            "untyped" => Kind::Untyped,
            _ => return None,
        })
    }
}

/// A sample: `name{label="value",…} value [timestamp]`, label values unescaped.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    pub labels: Vec<(&'a str, String)>,
    pub value: f64,
    /// Milliseconds since the epoch, when the exporter gave one.
    pub timestamp: Option<i64>,
}

impl Sample<'_> {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a line was rejected (for logs and tests; callers usually just drop the line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid(pub &'static str);

pub fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

pub fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses one line (without its newline).
pub fn parse_line(line: &str) -> Result<Line<'_>, Invalid> {
    let line = line.trim_matches(|c| c == ' ' || c == '\t');
    if line.is_empty() {
        return Ok(Line::Ignored);
    }
    if let Some(comment) = line.strip_prefix('#') {
        let comment = comment.trim_start_matches([' ', '\t']);
        let (keyword, rest) = split_token(comment);
        return match keyword {
            "HELP" => {
                let (name, text) = split_token(rest);
                if !is_metric_name(name) {
                    return Err(Invalid("HELP names no valid metric"));
                }
                Ok(Line::Help { name, text })
            }
            "TYPE" => {
                let (name, kind) = split_token(rest);
                if !is_metric_name(name) {
                    return Err(Invalid("TYPE names no valid metric"));
                }
                let kind = Kind::parse(kind).ok_or(Invalid("unknown metric type"))?;
                Ok(Line::Type { name, kind })
            }
            _ => Ok(Line::Ignored),
        };
    }
    parse_sample(line).map(Line::Sample)
}

/// The first whitespace-separated token and the rest, trimmed.
fn split_token(s: &str) -> (&str, &str) {
    match s.find([' ', '\t']) {
        Some(i) => (&s[..i], s[i..].trim_matches([' ', '\t'])),
        None => (s, ""),
    }
}

fn parse_sample(line: &str) -> Result<Sample<'_>, Invalid> {
    let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err(Invalid("not a valid metric name"));
    }
    let mut rest = &line[name_end..];
    let mut labels: Vec<(&str, String)> = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    let mut fields = rest.split([' ', '\t']).filter(|f| !f.is_empty());
    let value = parse_value(fields.next().ok_or(Invalid("no value"))?)?;
    let timestamp = match fields.next() {
        Some(t) => Some(t.parse::<i64>().map_err(|_| Invalid("bad timestamp"))?),
        None => None,
    };
    if fields.next().is_some() {
        return Err(Invalid("text after the timestamp"));
    }
    Ok(Sample {
        name,
        labels,
        value,
        timestamp,
    })
}

/// Parses `name="value",…}` and returns what follows the `}`.
fn parse_labels<'a>(mut s: &'a str, out: &mut Vec<(&'a str, String)>) -> Result<&'a str, Invalid> {
    loop {
        s = s.trim_start_matches([' ', '\t']);
        if let Some(after) = s.strip_prefix('}') {
            return Ok(after);
        }
        let eq = s.find('=').ok_or(Invalid("label without '='"))?;
        let name = s[..eq].trim_end_matches([' ', '\t']);
        if !is_label_name(name) {
            return Err(Invalid("not a valid label name"));
        }
        if out.iter().any(|(n, _)| *n == name) {
            return Err(Invalid("a label given twice"));
        }
        let after_eq = s[eq + 1..].trim_start_matches([' ', '\t']);
        let quoted = after_eq
            .strip_prefix('"')
            .ok_or(Invalid("label value not quoted"))?;
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(Invalid("unterminated label value")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    _ => return Err(Invalid("bad escape in a label value")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        out.push((name, value));
        s = quoted[end + 1..].trim_start_matches([' ', '\t']);
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err(Invalid("labels not separated by ','"));
        }
    }
}

/// A sample value as Go's ParseFloat reads it in this format: decimal floats, `NaN`, `+Inf`,
/// `-Inf`. Rust's parser also takes `inf`, `infinity` and `nan` in any case, which exporters do
/// not write; they are refused so only the format's own spellings pass.
fn parse_value(s: &str) -> Result<f64, Invalid> {
    match s {
        "NaN" => return Ok(f64::NAN),
        "+Inf" | "Inf" => return Ok(f64::INFINITY),
        "-Inf" => return Ok(f64::NEG_INFINITY),
        _ => {}
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
    {
        return Err(Invalid("bad sample value"));
    }
    s.parse::<f64>().map_err(|_| Invalid("bad sample value"))
}

/// A label value escaped for the format (`\\`, `\"`, `\n`).
pub fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A value the way the format spells it.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        // Display gives the shortest text that reads back as the same f64.
        format!("{v}")
    }
}

/// Writes one sample line (with its newline). Label names must be valid (they are checked by
/// the parser, and constants elsewhere); values are escaped here.
pub fn write_sample<'l>(
    out: &mut String,
    name: &str,
    labels: impl IntoIterator<Item = (&'l str, &'l str)>,
    value: f64,
    timestamp: Option<i64>,
) {
    out.push_str(name);
    let mut first = true;
    for (k, v) in labels {
        out.push(if first { '{' } else { ',' });
        first = false;
        let _ = write!(out, "{k}=\"{}\"", escape_label_value(v));
    }
    if !first {
        out.push('}');
    }
    out.push(' ');
    out.push_str(&format_value(value));
    if let Some(t) = timestamp {
        let _ = write!(out, " {t}");
    }
    out.push('\n');
}

/// `help` escaped for a `# HELP` line (`\\` and `\n`).
pub fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Writes a `# HELP` line; `text` must already be escaped ([`escape_help`], or as parsed).
pub fn write_help(out: &mut String, name: &str, text: &str) {
    let _ = writeln!(out, "# HELP {name} {text}");
}

/// Writes a `# TYPE` line.
pub fn write_type(out: &mut String, name: &str, kind: Kind) {
    let _ = writeln!(out, "# TYPE {name} {}", kind.as_str());
}

/// Builds an exposition family by family: [`Exposition::family`] writes a family's `# HELP`
/// and `# TYPE`, then its samples follow. Whoever writes text here (the VMM's `GET /metrics`,
/// vireod's) writes it through this module, so there is one spelling of the format.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// Starts a family; `help` is plain text, escaped here.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        write_help(&mut self.out, name, &escape_help(help));
        write_type(&mut self.out, name, kind);
    }

    /// One sample. Counters kept as `u64` are passed as `f64`: exact, and written the same
    /// digits, below 2^53.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        write_sample(&mut self.out, name, labels.iter().copied(), value, None);
    }

    /// A histogram's samples: `_bucket` for each (upper bound in the family's unit,
    /// cumulative count) given, then `+Inf` (the count), `_sum` and `_count`. The family
    /// must have been started with [`Kind::Histogram`].
    pub fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        buckets: impl IntoIterator<Item = (f64, u64)>,
        count: u64,
        sum: f64,
    ) {
        let bucket = format!("{name}_bucket");
        let bucket_sample = |out: &mut String, le: &str, n: u64| {
            let all = labels.iter().copied().chain([("le", le)]);
            write_sample(out, &bucket, all, n as f64, None);
        };
        for (le, n) in buckets {
            bucket_sample(&mut self.out, &format_value(le), n);
        }
        bucket_sample(&mut self.out, "+Inf", count);
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, count as f64);
    }

    /// The text written so far.
    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(line: &str) -> Sample<'_> {
        match parse_line(line) {
            Ok(Line::Sample(s)) => s,
            other => panic!("{line:?}: {other:?}"),
        }
    }

    #[test]
    fn samples_with_and_without_labels() {
        let s = sample("vireo_memory_bytes 536870912");
        assert_eq!(s.name, "vireo_memory_bytes");
        assert!(s.labels.is_empty());
        assert_eq!(s.value, 536870912.0);
        let s = sample(r#"x_total{vcpu="0", reason="a\"b\\c\nd",} 7 1700000000000"#);
        assert_eq!(s.label("vcpu"), Some("0"));
        assert_eq!(s.label("reason"), Some("a\"b\\c\nd"));
        assert_eq!(s.timestamp, Some(1700000000000));
        assert!(sample("a{} +Inf").value.is_infinite());
        assert!(sample("a NaN").value.is_nan());
        assert_eq!(sample("a -1.5e3").value, -1500.0);
    }

    #[test]
    fn comments() {
        assert_eq!(
            parse_line("# HELP a_total Things\\n done."),
            Ok(Line::Help {
                name: "a_total",
                text: "Things\\n done."
            })
        );
        assert_eq!(
            parse_line("# TYPE a_total counter"),
            Ok(Line::Type {
                name: "a_total",
                kind: Kind::Counter
            })
        );
        assert_eq!(parse_line("# just words"), Ok(Line::Ignored));
        assert_eq!(parse_line("   "), Ok(Line::Ignored));
        assert!(parse_line("# TYPE a_total wibble").is_err());
        assert!(parse_line("# HELP 9bad x").is_err());
    }

    #[test]
    fn junk_is_rejected() {
        for bad in [
            "9abc 1",
            "abc",
            "abc{",
            "abc{x=1} 1",
            "abc{x=\"1} 1",
            "abc{x=\"1\" y=\"2\"} 1",
            "abc{x=\"1\",x=\"2\"} 1",
            "abc{9x=\"1\"} 1",
            "abc{x=\"\\q\"} 1",
            "abc one",
            "abc 1 2 3",
            "abc 1 1.5",
            "abc inf",
            "abc 0x10",
            "abc{x=\"1\"}1}",
            "<html>",
        ] {
            assert!(parse_line(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn an_exposition_writes_families_and_histograms() {
        let mut e = Exposition::default();
        e.family("a_total", Kind::Counter, "A \\ thing.\nSecond line.");
        e.sample("a_total", &[("x", "1")], 7.0);
        e.sample("a_total", &[], 16777216.0);
        e.family("h_seconds", Kind::Histogram, "H.");
        e.histogram(
            "h_seconds",
            &[("d", "0")],
            [(0.00005, 1), (0.0001, 2)],
            3,
            0.25,
        );
        assert_eq!(
            e.finish(),
            "# HELP a_total A \\\\ thing.\\nSecond line.\n\
             # TYPE a_total counter\n\
             a_total{x=\"1\"} 7\n\
             a_total 16777216\n\
             # HELP h_seconds H.\n\
             # TYPE h_seconds histogram\n\
             h_seconds_bucket{d=\"0\",le=\"0.00005\"} 1\n\
             h_seconds_bucket{d=\"0\",le=\"0.0001\"} 2\n\
             h_seconds_bucket{d=\"0\",le=\"+Inf\"} 3\n\
             h_seconds_sum{d=\"0\"} 0.25\n\
             h_seconds_count{d=\"0\"} 3\n"
        );
    }

    #[test]
    fn written_samples_parse_back_the_same() {
        let mut out = String::new();
        write_sample(
            &mut out,
            "m",
            [("a", "x\"y\\z\nw"), ("b", "")],
            f64::NEG_INFINITY,
            Some(5),
        );
        assert_eq!(out, "m{a=\"x\\\"y\\\\z\\nw\",b=\"\"} -Inf 5\n");
        let s = sample(out.trim_end());
        assert_eq!(s.label("a"), Some("x\"y\\z\nw"));
        assert_eq!(s.value, f64::NEG_INFINITY);
        out.clear();
        write_sample(&mut out, "m", [], 0.1, None);
        assert_eq!(out, "m 0.1\n");
    }
}
